//! `mdrun bench` end to end, so that the command cannot rot: the `cpu` configuration on benzene
//! (no GPU needed) writes every report with the documented fields, and `--compare` exits 1 on a
//! doctored slower run and 0 on itself. The GPU configurations: an ignored test.

use std::path::Path;
use std::process::Command;

fn mdrun() -> Command {
    let built = Path::new(env!("CARGO_BIN_EXE_mdrun"));
    // Run from the project root (cargo's working directory for tests, and the bundle's).
    if built.exists() {
        Command::new(built)
    } else {
        Command::new(".device/bin/mdrun")
    }
}

/// Fields docs/bench-schema.md documents for every row (null allowed where it says so).
const ROW_FIELDS: [&str; 31] = [
    "system",
    "atoms",
    "periodic",
    "config",
    "device",
    "status",
    "reason",
    "neighbor_search",
    "kernels",
    "cuda_graph",
    "timestep_fs",
    "steps_timed",
    "median_us_per_step",
    "mean_us_per_step",
    "std_us_per_step",
    "min_us_per_step",
    "max_us_per_step",
    "steps_per_second",
    "ns_per_day",
    "atom_steps_per_second",
    "force_calls_timed",
    "median_us_per_force_call",
    "mean_us_per_force_call",
    "std_us_per_force_call",
    "min_us_per_force_call",
    "max_us_per_force_call",
    "gpu_memory_bytes",
    "energy_error_per_atom_ev",
    "force_rmse_ev_per_angstrom",
    "force_max_error_ev_per_angstrom",
    "accuracy_note",
];

const REPORT_FIELDS: [&str; 11] = [
    "schema",
    "mdrun_version",
    "commit",
    "created_unix_s",
    "host_cpu",
    "gpu",
    "model",
    "timestep_fs",
    "skin_angstrom",
    "temperature_k",
    "rows",
];

fn run(args: &[&str]) -> (i32, String) {
    let out = mdrun().args(args).output().expect("running mdrun");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bench_cpu_on_benzene_writes_every_report_and_compare_flags_a_slowdown() {
    let dir = std::env::temp_dir().join(format!("mdrun-bench-ci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("report");
    let (code, text) = run(&[
        "bench",
        "systems/benzene.xyz",
        "--configs",
        "cpu,gpu-naive",
        "--budget",
        "0.2",
        "--min-samples",
        "3",
        "--max-samples",
        "5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    for file in [
        "bench.json",
        "bench.md",
        "latency.svg",
        "force_latency.svg",
        "speedup.svg",
    ] {
        let path = out.join(file);
        assert!(
            path.is_file() && std::fs::metadata(&path).unwrap().len() > 0,
            "{file} missing\n{text}"
        );
    }
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("cpu"), "{svg}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    for field in REPORT_FIELDS {
        assert!(json.get(field).is_some(), "bench.json lacks `{field}`");
    }
    assert_eq!(json["schema"], "mdrun-bench/2");
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    for row in rows {
        for field in ROW_FIELDS {
            assert!(row.get(field).is_some(), "row lacks `{field}`: {row}");
        }
    }
    let cpu = &rows[0];
    assert_eq!(cpu["config"], "cpu");
    assert_eq!(cpu["status"], "ok");
    assert_eq!(cpu["atoms"], 12);
    for field in [
        "median_us_per_step",
        "median_us_per_force_call",
        "steps_per_second",
        "ns_per_day",
        "atom_steps_per_second",
    ] {
        assert!(cpu[field].as_f64().unwrap() > 0.0, "{field}: {cpu}");
    }
    let (min, med, max) = (
        cpu["min_us_per_step"].as_f64().unwrap(),
        cpu["median_us_per_step"].as_f64().unwrap(),
        cpu["max_us_per_step"].as_f64().unwrap(),
    );
    assert!(min <= med && med <= max);
    // The f64 engine against the f64 reference: the same numbers up to summation order.
    assert!(cpu["force_max_error_ev_per_angstrom"].as_f64().unwrap() < 1e-9, "{cpu}");
    assert!(cpu["gpu_memory_bytes"].is_null());
    // Without a GPU the GPU row is recorded, not measured (on a GPU machine it is measured).
    assert!(
        ["ok", "skipped"].contains(&rows[1]["status"].as_str().unwrap()),
        "{}",
        rows[1]
    );
    let md = std::fs::read_to_string(out.join("bench.md")).unwrap();
    assert!(md.contains("| benzene | 12 | cpu |"), "{md}");

    // --compare: the run against itself passes, against a doctored faster "old" run it fails.
    let json_path = out.join("bench.json");
    let (code, text) = run(&[
        "bench",
        "--results",
        json_path.to_str().unwrap(),
        "--compare",
        json_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 slowed"), "{text}");
    let mut faster = json.clone();
    for row in faster["rows"].as_array_mut().unwrap() {
        for field in ["median_us_per_step", "median_us_per_force_call"] {
            if let Some(v) = row[field].as_f64() {
                row[field] = serde_json::json!(v / 1.2);
            }
        }
    }
    let old = dir.join("old.json");
    std::fs::write(&old, serde_json::to_string(&faster).unwrap()).unwrap();
    let (code, text) = run(&[
        "bench",
        "--results",
        json_path.to_str().unwrap(),
        "--compare",
        old.to_str().unwrap(),
        "--threshold",
        "5",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("SLOWER"), "{text}");
    // A 20% slowdown passes a 25% threshold.
    let (code, text) = run(&[
        "bench",
        "--results",
        json_path.to_str().unwrap(),
        "--compare",
        old.to_str().unwrap(),
        "--threshold",
        "25",
    ]);
    assert_eq!(code, 0, "{text}");

    // --baseline with a torch-style file (schema 1: a bare array of rows) prints the speed-up.
    let torch = dir.join("torch.json");
    std::fs::write(
        &torch,
        r#"[{"system": "benzene", "atoms": 12, "config": "torch-eager-force-call", "device": "x",
            "median_us_per_step": 8000.0}]"#,
    )
    .unwrap();
    let (code, text) = run(&[
        "bench",
        "--results",
        json_path.to_str().unwrap(),
        "--baseline",
        torch.to_str().unwrap(),
        "--out",
        dir.join("again").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("torch-eager-force-call"), "{text}");
    assert!(dir.join("again/speedup.svg").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_refuses_unknown_configurations() {
    let (code, text) = run(&["bench", "systems/benzene.xyz", "--configs", "cpu,turbo"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unknown configuration `turbo`"), "{text}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn bench_measures_every_gpu_configuration() {
    let dir = std::env::temp_dir().join(format!("mdrun-bench-gpu-{}", std::process::id()));
    let (code, text) = run(&[
        "bench",
        "systems/benzene.xyz",
        "systems/waterbox_64.xyz",
        "--configs",
        "all",
        "--budget",
        "0.5",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    for row in json["rows"].as_array().unwrap() {
        let open_only = row["config"] == "+cell-list" && row["system"] == "benzene";
        let molecules_only = row["config"] == "+one-cluster" && row["system"] == "waterbox_64";
        let expected = if open_only || molecules_only {
            "not-applicable"
        } else {
            "ok"
        };
        assert_eq!(row["status"], expected, "{row}");
        if expected == "ok" && row["config"] != "cpu" {
            assert!(row["gpu_memory_bytes"].as_u64().unwrap() > 0, "{row}");
            assert!(
                row["force_max_error_ev_per_angstrom"].as_f64().unwrap() <= 1e-4,
                "{row}"
            );
        }
        // The fused kernels' rows say which launch shape ran (it depends on the device).
        if expected == "ok" && row["kernels"] == "fused" {
            for field in [
                "dense_tile",
                "dense_cluster",
                "dense_split",
                "pair_split",
                "channel_slices",
            ] {
                assert!(row[field].as_u64().is_some_and(|v| v >= 1), "{field}: {row}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpu_kernels_is_an_input_option() {
    use mdrun::gpu::naive::KernelVariant;
    use mdrun::input::Input;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let input = |gpu: &str| {
        format!(
            "[system]\nfile = \"systems/benzene.xyz\"\n[model]\nfile = \"models/painn-random-hcno-f128.safetensors\"\n\
             [md]\nensemble = \"nve\"\ntimestep_fs = 0.5\nsteps = 10\ntemperature_k = 300\nseed = 1\n[gpu]\n{gpu}\n"
        )
    };
    let path = root.join("bench-input.toml");
    let parsed = Input::parse(
        &input(
            "kernels = \"naive\"\nneighbor_search = \"all-pairs\"\ncuda_graph = false\nprogrammatic_launch = false\n\
             one_block_rebuild = false",
        ),
        &path,
    )
    .unwrap();
    assert_eq!(parsed.gpu.kernels, KernelVariant::Naive);
    assert_eq!(parsed.gpu, mdrun::bench::Config::GpuNaive.gpu_options().unwrap());
    let default = Input::parse(&input(""), &path).unwrap();
    assert_eq!(default.gpu.kernels, KernelVariant::Auto);
    let fused = Input::parse(&input("kernels = \"fused\""), &path).unwrap();
    assert_eq!(fused.gpu, mdrun::bench::Config::CudaGraph.gpu_options().unwrap());
    let cluster = Input::parse(&input("kernels = \"cluster\""), &path).unwrap();
    assert_eq!(cluster.gpu, mdrun::bench::Config::OneCluster.gpu_options().unwrap());
    let refused = Input::parse(&input("kernels = \"turbo\""), &path).unwrap_err();
    assert!(refused.to_string().contains("turbo"), "{refused}");
}
