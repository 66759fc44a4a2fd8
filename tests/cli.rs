//! The command line: bad input gets one line naming file, key and reason and a non-zero exit,
//! before any existing output is touched; `mdrun eval` prints energy and forces as JSON.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mdrun::model::PainnModel;

const SENTINEL: &str = "an earlier run's output, which a refused input must not touch\n";

/// The binary under test: cargo's, or the device bundle's when the tests run from a bundle on
/// the GPU machine (where cargo's target directory does not exist).
fn mdrun() -> Command {
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_mdrun"));
    if built.exists() {
        Command::new(built)
    } else {
        Command::new(".device/bin/mdrun")
    }
}

struct Case {
    dir: std::path::PathBuf,
}

impl Case {
    /// A directory with a model, benzene, and an output file from an "earlier run".
    fn new(tag: &str) -> Case {
        let dir = temp_dir(tag);
        // F = 32: small, and within what the GPU kernels take.
        let mut config = small_config(4.0);
        config.n_atom_basis = 32;
        PainnModel::random(config, 1)
            .save(&dir.join("model.safetensors"), true)
            .unwrap();

        std::fs::copy(project_file("systems/benzene.xyz"), dir.join("benzene.xyz")).unwrap();
        std::fs::write(dir.join("energy.csv"), SENTINEL).unwrap();
        Case { dir }
    }

    fn input(system: &str, md: &str, extra: &str) -> String {
        format!(
            "[system]\n{system}\n[model]\nfile = \"model.safetensors\"\n[md]\n{md}\n{extra}\n[output.energy]\nfile = \"energy.csv\"\ninterval = 1\n"
        )
    }

    /// Runs mdrun on `input`; returns (exit code, stderr). Asserts the earlier output survived.
    fn run(&self, input: &str) -> (i32, String) {
        let path = self.dir.join("input.toml");
        std::fs::write(&path, input).unwrap();
        let out = mdrun().arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let energy = std::fs::read_to_string(self.dir.join("energy.csv")).unwrap();
        assert_eq!(energy, SENTINEL, "the existing output was touched; stderr: {stderr}");
        (out.status.code().unwrap_or(-1), stderr)
    }

    fn expect_refusal(&self, input: &str, needles: &[&str]) {
        let (code, stderr) = self.run(input);
        assert_ne!(code, 0, "must fail: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
        }
    }
}

const MD: &str = "ensemble = \"nve\"\ntimestep_fs = 0.5\nsteps = 10\ntemperature_k = 300.0\nseed = 1";
const SYSTEM: &str = "file = \"benzene.xyz\"";

#[test]
fn unknown_and_mistyped_keys_are_refused() {
    let case = Case::new("keys");
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("timestep_fs", "timestep"), ""),
        &["input.toml", "timestep"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, MD, "thermostat = \"nose\""),
        &["input.toml", "thermostat"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("steps = 10", "steps = \"ten\""), ""),
        &["input.toml", "line"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("\"nve\"", "\"npt\""), ""),
        &["input.toml", "npt"],
    );
}

#[test]
fn bad_values_are_refused_with_their_key() {
    let case = Case::new("values");
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("0.5", "0.0"), ""),
        &["md.timestep_fs", "positive"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("0.5", "-1.0"), ""),
        &["md.timestep_fs"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("nve", "nvt"), ""),
        &["md.friction_per_ps"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, &MD.replace("300.0", "-5.0"), ""),
        &["md.temperature_k"],
    );
    case.expect_refusal(
        &Case::input(SYSTEM, MD, "[gpu]\ngraph_steps = 0"),
        &["gpu.graph_steps", "≥ 1"],
    );
    // device = "cuda" is refused where no GPU can be used, and runs where one can.
    let device = Case::input(SYSTEM, MD, "").replace("[md]", "device = \"cuda\"\n[md]");
    if mdrun::gpu::Gpu::available() {
        let path = case.dir.join("cuda.toml");
        std::fs::write(&path, &device).unwrap();
        let out = mdrun().arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(case.dir.join("energy.csv"), SENTINEL).unwrap();
    } else {
        case.expect_refusal(&device, &["model.device", "cuda"]);
    }
}

#[test]
fn missing_and_unreadable_files_are_refused() {
    let case = Case::new("files");
    case.expect_refusal(
        &Case::input("file = \"nowhere.xyz\"", MD, ""),
        &["system.file", "nowhere.xyz"],
    );
    std::fs::write(case.dir.join("broken.xyz"), "this is not\nan xyz file\n").unwrap();
    case.expect_refusal(&Case::input("file = \"broken.xyz\"", MD, ""), &["broken.xyz"]);
    std::fs::write(case.dir.join("notamodel.safetensors"), "garbage").unwrap();
    let input = Case::input(SYSTEM, MD, "").replace("model.safetensors", "notamodel.safetensors");
    case.expect_refusal(&input, &["notamodel.safetensors"]);
}

fn write_xyz(dir: &Path, name: &str, atoms: &[(&str, [f64; 3])], comment: &str) {
    let mut text = format!("{}\n{comment}\n", atoms.len());
    for (s, r) in atoms {
        text += &format!("{s} {} {} {}\n", r[0], r[1], r[2]);
    }
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn structures_the_model_cannot_run_are_refused() {
    let case = Case::new("structures");
    write_xyz(
        &case.dir,
        "si.xyz",
        &[("C", [0.0, 0.0, 0.0]), ("Si", [2.0, 0.0, 0.0])],
        "",
    );
    case.expect_refusal(&Case::input("file = \"si.xyz\"", MD, ""), &["si.xyz", "atom 1", "Si"]);
    write_xyz(
        &case.dir,
        "close.xyz",
        &[("C", [0.0, 0.0, 0.0]), ("H", [0.3, 0.0, 0.0]), ("H", [3.0, 0.0, 0.0])],
        "",
    );
    case.expect_refusal(
        &Case::input("file = \"close.xyz\"", MD, ""),
        &["close.xyz", "atoms 0 and 1", "0.300"],
    );
    write_xyz(
        &case.dir,
        "nan.xyz",
        &[("C", [0.0, 0.0, 0.0]), ("H", [f64::NAN, 0.0, 0.0])],
        "",
    );
    case.expect_refusal(&Case::input("file = \"nan.xyz\"", MD, ""), &["nan.xyz", "NaN"]);
    // A periodic cell narrower than the 4 Å cutoff, from the input and from the file.
    case.expect_refusal(
        &Case::input(&format!("{SYSTEM}\ncell = [3.5, 20.0, 20.0]"), MD, ""),
        &["benzene.xyz", "cutoff"],
    );
    let lattice = "Lattice=\"20 0 0 0 3.0 0 0 0 20\" Properties=species:S:1:pos:R:3";
    write_xyz(
        &case.dir,
        "thin.xyz",
        &[("C", [1.0, 1.0, 1.0]), ("H", [2.1, 1.0, 1.0])],
        lattice,
    );
    case.expect_refusal(&Case::input("file = \"thin.xyz\"", MD, ""), &["thin.xyz", "cutoff"]);
    // The cell in the input must not be combined with periodic = false.
    case.expect_refusal(
        &Case::input(
            &format!("{SYSTEM}\ncell = [30.0, 30.0, 30.0]\nperiodic = false"),
            MD,
            "",
        ),
        &["system.cell"],
    );
}

#[test]
fn a_good_input_runs_and_replaces_the_old_output() {
    let case = Case::new("good");
    let path = case.dir.join("input.toml");
    std::fs::write(&path, Case::input(SYSTEM, MD, "")).unwrap();
    let out = mdrun().arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let energy = read_energy_csv(&case.dir.join("energy.csv"));
    assert_eq!(energy["step"].len(), 11);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("steps/s") && stdout.contains("meV/atom/ps") && stdout.contains("no NaN"),
        "{stdout}"
    );
}

#[test]
fn eval_prints_energy_and_forces_as_json_matching_the_library() {
    let case = Case::new("eval");
    let out = mdrun()
        .args([
            "eval",
            &case.dir.join("benzene.xyz").display().to_string(),
            "--device",
            "cpu",
            "--model",
        ])
        .arg(case.dir.join("model.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let model = PainnModel::load(&case.dir.join("model.safetensors")).unwrap();
    let system = mdrun::system::System::read(&case.dir.join("benzene.xyz"), None).unwrap();
    let pairs = mdrun::neighbors::brute_force_pairs(&system.positions, None, model.cutoff());
    let reference = mdrun::forcefield::cpu::evaluate(&model, &system.numbers, &pairs);
    assert_eq!(json["energy_ev"].as_f64().unwrap(), reference.energy);
    let forces = json["forces_ev_per_angstrom"].as_array().unwrap();
    assert_eq!(forces.len(), 12);
    assert_eq!(forces[3][1].as_f64().unwrap(), reference.forces[3][1]);
}

#[test]
#[ignore = "needs a CUDA device"]
fn eval_on_the_gpu_agrees_with_the_cpu() {
    let case = Case::new("eval-gpu");
    let run = |device: &str| -> serde_json::Value {
        let out = mdrun()
            .args([
                "eval",
                &case.dir.join("benzene.xyz").display().to_string(),
                "--device",
                device,
                "--model",
            ])
            .arg(case.dir.join("model.safetensors"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (cpu, gpu) = (run("cpu"), run("cuda"));
    assert!(gpu["device"].as_str().unwrap().starts_with("cuda"));
    let (e_cpu, e_gpu) = (cpu["energy_ev"].as_f64().unwrap(), gpu["energy_ev"].as_f64().unwrap());
    assert!((e_cpu - e_gpu).abs() <= 1e-5 * e_cpu.abs(), "{e_cpu} vs {e_gpu}");
}

#[test]
fn precompile_refuses_a_missing_folder_and_a_stray_record_in_one_line() {
    let dir = temp_dir("precompile");
    let precompile = |records: &Path| {
        let out = mdrun()
            .arg("precompile")
            .arg("--records")
            .arg(records)
            .arg("--cache")
            .arg(dir.join("cache"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let empty = dir.join("records");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, stderr) = precompile(&empty);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("0 launch shapes compiled, 0 already cached"),
        "{stderr}"
    );

    let (code, stderr) = precompile(&dir.join("nowhere"));
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nowhere") && stderr.contains("cannot read the folder"),
        "{stderr}"
    );

    std::fs::write(empty.join("stray.options"), "-DNF=32\n").unwrap();
    let (code, stderr) = precompile(&empty);
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("stray.options: not an mdrun kernel cache record"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn precompile_for_an_input_needs_the_gpus_architecture_and_multiprocessors() {
    let case = Case::new("precompile-input");
    let input = case.dir.join("input.toml");
    std::fs::write(&input, Case::input(SYSTEM, MD, "")).unwrap();
    for (extra, needle) in [
        (
            vec![],
            "--input needs the GPU's --arch (e.g. sm_90) and --sms (e.g. 132)",
        ),
        (
            vec!["--arch", "sm_9x", "--sms", "132"],
            "--arch sm_9x: not an sm_XY architecture",
        ),
    ] {
        let out = mdrun()
            .args(["precompile", "--cache"])
            .arg(case.dir.join("cache"))
            .arg("--input")
            .arg(&input)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "`{needle}` missing from: {stderr}");
    }
}
