//! Restart files: a CPU run continued from one is bit for bit the uninterrupted run (state,
//! energy log, trajectories); a SIGTERM leaves a restart file and whole outputs; a restart file
//! from another input is refused; on a GPU, a continued run carries on correctly.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mdrun::model::PainnModel;
use mdrun::restart::Restart;
use mdrun::simulation::{run, run_with, Prepared, RunControl};

/// The binary under test (cargo's, or the device bundle's on the GPU machine).
fn mdrun() -> Command {
    let built = Path::new(env!("CARGO_BIN_EXE_mdrun"));
    if built.exists() {
        Command::new(built)
    } else {
        Command::new(".device/bin/mdrun")
    }
}

/// An input with every kind of output and a restart file every `restart_interval` steps.
fn input(system: &str, device: &str, md: &str, steps: u64, skin: f64, restart_interval: u64) -> String {
    format!(
        r#"[system]
file = "{system}"
[model]
file = "model.safetensors"
device = "{device}"
[md]
{md}
steps = {steps}
[neighbors]
skin_angstrom = {skin}
[output]
log = "out/run.log"
[[output.trajectory]]
file = "out/traj.xyz"
interval = 5
[[output.trajectory]]
file = "out/traj.dcd"
interval = 10
[output.energy]
file = "out/energy.csv"
interval = 1
[output.restart]
file = "out/restart.json"
interval = {restart_interval}
"#
    )
}

fn setup(tag: &str, model: &PainnModel) -> PathBuf {
    let dir = temp_dir(tag);
    model.save(&dir.join("model.safetensors"), false).unwrap();
    dir
}

fn run_file(path: &Path, restart: Option<PathBuf>) -> mdrun::simulation::RunReport {
    let prepared = Prepared::from_input_file(path).unwrap();
    run_with(
        prepared,
        RunControl {
            restart,
            ..RunControl::default()
        },
    )
    .unwrap()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `steps` uninterrupted, and `half` + a restart (extending md.steps) + the rest, and again
/// from the step-`half` restart file over the finished outputs (which must be cut back); every
/// output and the final restart state must be the same bytes.
fn continued_run_is_bit_for_bit(tag: &str, system: &str, md: &str, steps: u64, skin: f64) {
    let model = PainnModel::random(small_config(4.0), 11);
    let half = steps / 2;
    let whole = setup(&format!("{tag}-whole"), &model);
    let split = temp_dir(&format!("{tag}-split"));
    // The same model bytes (a saved file records when it was written).
    std::fs::copy(whole.join("model.safetensors"), split.join("model.safetensors")).unwrap();
    std::fs::write(whole.join("in.toml"), input(system, "cpu", md, steps, skin, half)).unwrap();
    let report = run(Prepared::from_input_file(&whole.join("in.toml")).unwrap()).unwrap();
    assert!(report.failure.is_none());

    let input_path = split.join("in.toml");
    std::fs::write(&input_path, input(system, "cpu", md, half, skin, half)).unwrap();
    run_file(&input_path, None);
    let at_half = split.join("restart-half.json");
    std::fs::copy(split.join("out/restart.json"), &at_half).unwrap();
    assert_eq!(Restart::read(&at_half).unwrap().step, half);
    std::fs::write(&input_path, input(system, "cpu", md, steps, skin, half)).unwrap();
    let report = run_file(&input_path, Some(at_half.clone()));
    assert!(report.failure.is_none());

    let compare = |label: &str| {
        for file in ["energy.csv", "traj.xyz", "traj.dcd"] {
            assert!(
                read(&whole.join("out").join(file)) == read(&split.join("out").join(file)),
                "{tag} ({label}): out/{file} differs from the uninterrupted run's"
            );
        }
        // The restart files differ only in the directory of the outputs they name.
        let state = |dir: &Path| {
            let mut r = Restart::read(&dir.join("out/restart.json")).unwrap();
            r.outputs.iter_mut().for_each(|o| o.file = PathBuf::new());
            serde_json::to_string(&r).unwrap()
        };
        assert!(
            state(&whole) == state(&split),
            "{tag} ({label}): the final states differ"
        );
    };
    compare("continued");
    let restart = Restart::read(&split.join("out/restart.json")).unwrap();
    assert!(
        restart.neighbors.as_ref().unwrap().rebuilds > 1,
        "the test must cross neighbor rebuilds"
    );

    // Outputs that ran past the restart point are cut back to it, not appended to twice.
    run_file(&input_path, Some(at_half));
    compare("restarted over finished outputs");
}

#[test]
fn a_continued_cpu_run_is_bit_for_bit_the_uninterrupted_one_open_langevin() {
    let md = "ensemble = \"nvt\"\ntimestep_fs = 0.5\ntemperature_k = 600.0\nfriction_per_ps = 5.0\nseed = 9";
    continued_run_is_bit_for_bit("restart-open", &project_file("systems/benzene.xyz"), md, 200, 0.1);
}

#[test]
fn a_continued_cpu_run_is_bit_for_bit_the_uninterrupted_one_periodic_verlet() {
    let md = "ensemble = \"nve\"\ntimestep_fs = 0.5\ntemperature_k = 600.0\nseed = 4";
    continued_run_is_bit_for_bit("restart-pbc", &project_file("systems/waterbox_64.xyz"), md, 40, 0.05);
}

/// Steps of the energy log's lines.
fn logged_steps(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "{}: the last line is not whole", path.display());
    text.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn sigterm_leaves_a_restart_file_and_whole_outputs_and_the_run_continues() {
    let dir = setup("sigterm", &PainnModel::random(full_config(), 3));
    let md = "ensemble = \"nve\"\ntimestep_fs = 0.5\ntemperature_k = 300.0\nseed = 2";
    let benzene = project_file("systems/benzene.xyz");
    let input_path = dir.join("in.toml");
    std::fs::write(&input_path, input(&benzene, "cpu", md, 10_000_000, 1.0, 100_000)).unwrap();
    let child = mdrun()
        .arg(&input_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let energy = dir.join("out/energy.csv");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&energy).map_or(0, |t| t.lines().count()) < 150 {
        assert!(started.elapsed().as_secs() < 120, "the run wrote nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");

    let restart = Restart::read(&dir.join("out/restart.json")).unwrap();
    let stopped = restart.step;
    assert!(stopped > 100 && stopped < 10_000_000);
    let steps = logged_steps(&energy);
    assert_eq!(steps, (0..=stopped).collect::<Vec<_>>());
    // Every frame reads back whole: one per 5 steps up to the stop.
    for (file, interval) in [("traj.xyz", 5), ("traj.dcd", 10)] {
        let mut trajectory = chemfiles::Trajectory::open(dir.join("out").join(file), 'r').unwrap();
        let frames = trajectory.nsteps();
        assert_eq!(frames as u64, stopped / interval + 1, "{file}");
        let mut frame = chemfiles::Frame::new();
        for i in 0..frames {
            trajectory.read_step(i, &mut frame).unwrap();
            assert_eq!(frame.size(), 12);
        }
    }

    // Continued a little further (md.steps may change), it ends like the uninterrupted run.
    let end = stopped + 37;
    std::fs::write(&input_path, input(&benzene, "cpu", md, end, 1.0, 100_000)).unwrap();
    let out = mdrun()
        .arg(&input_path)
        .arg("--restart")
        .arg(dir.join("out/restart.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(logged_steps(&energy), (0..=end).collect::<Vec<_>>());

    let whole = setup("sigterm-whole", &PainnModel::random(full_config(), 3));
    std::fs::write(whole.join("in.toml"), input(&benzene, "cpu", md, end, 1.0, 100_000)).unwrap();
    let out = mdrun().arg(whole.join("in.toml")).output().unwrap();
    assert!(out.status.success());
    for file in ["energy.csv", "traj.xyz", "traj.dcd"] {
        assert!(
            read(&whole.join("out").join(file)) == read(&dir.join("out").join(file)),
            "out/{file}: interrupted + continued differs from uninterrupted"
        );
    }
}

#[test]
fn a_restart_file_of_another_input_or_model_is_refused_with_one_line() {
    let dir = setup("refuse", &PainnModel::random(small_config(4.0), 5));
    let md = "ensemble = \"nve\"\ntimestep_fs = 0.5\ntemperature_k = 300.0\nseed = 2";
    let benzene = project_file("systems/benzene.xyz");
    let input_path = dir.join("in.toml");
    std::fs::write(&input_path, input(&benzene, "cpu", md, 20, 1.0, 10)).unwrap();
    assert!(mdrun().arg(&input_path).status().unwrap().success());
    let restart = dir.join("out/restart.json");
    let energy_before = read(&dir.join("out/energy.csv"));

    let expect_refusal = |needle: &str| {
        let out = mdrun()
            .arg(&input_path)
            .arg("--restart")
            .arg(&restart)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("restart.json") && stderr.contains(needle), "{stderr}");
        assert!(
            read(&dir.join("out/energy.csv")) == energy_before,
            "a refused restart touched the outputs"
        );
    };
    std::fs::write(
        &input_path,
        input(&benzene, "cpu", &md.replace("300.0", "310.0"), 20, 1.0, 10),
    )
    .unwrap();
    expect_refusal("another input file");
    std::fs::write(&input_path, input(&benzene, "cpu", md, 20, 1.0, 10)).unwrap();
    PainnModel::random(small_config(4.0), 6)
        .save(&dir.join("model.safetensors"), false)
        .unwrap();
    expect_refusal("another model file");
    std::fs::write(&restart, "{\"format\": \"something else\"}").unwrap();
    expect_refusal("not a readable mdrun restart file");
}

#[test]
#[ignore = "needs a CUDA device"]
fn a_continued_gpu_run_carries_on_from_the_restart_state() {
    // Not bit for bit: the device recomputes the forces in f32 after a restart, and its float
    // sums are not ordered. It must go on from the same state and conserve energy as before.
    let model = PainnModel::load(Path::new(&project_file("models/painn-random-hcno-f128.safetensors"))).unwrap();
    let md = "ensemble = \"nve\"\ntimestep_fs = 0.5\ntemperature_k = 300.0\nseed = 8";
    let benzene = project_file("systems/benzene.xyz");
    let whole = setup("gpu-whole", &model);
    std::fs::write(whole.join("in.toml"), input(&benzene, "cuda", md, 400, 1.0, 200)).unwrap();
    run_file(&whole.join("in.toml"), None);

    let split = setup("gpu-split", &model);
    let input_path = split.join("in.toml");
    std::fs::write(&input_path, input(&benzene, "cuda", md, 200, 1.0, 200)).unwrap();
    run_file(&input_path, None);
    let at_half = Restart::read(&split.join("out/restart.json")).unwrap();
    assert_eq!(at_half.device, "cuda");
    assert!(at_half.neighbors.is_none());
    std::fs::write(&input_path, input(&benzene, "cuda", md, 400, 1.0, 200)).unwrap();
    let report = run_file(&input_path, Some(split.join("out/restart.json")));
    assert!(report.failure.is_none());
    assert_eq!(
        logged_steps(&split.join("out/energy.csv")),
        (0..=400).collect::<Vec<_>>()
    );

    let a = Restart::read(&whole.join("out/restart.json")).unwrap();
    let b = Restart::read(&split.join("out/restart.json")).unwrap();
    assert_eq!((a.step, b.step), (400, 400));
    let worst = a
        .positions
        .iter()
        .flatten()
        .zip(b.positions.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    eprintln!("GPU restart: max position difference after 200 continued steps {worst:.2e} Å");
    assert!(worst < 1e-3, "{worst:e} Å");
    let e = read_energy_csv(&split.join("out/energy.csv"));
    let total = &e["e_tot_ev"];
    let drift = total.iter().map(|x| (x - total[0]).abs()).fold(0.0, f64::max);
    assert!(drift / total[0].abs() < 1e-4, "max |ΔE| {drift:e} eV");
    // And a CPU run takes the GPU's restart file (forces recomputed in f64).
    std::fs::write(&input_path, input(&benzene, "cpu", md, 420, 1.0, 200)).unwrap();
    let report = run_file(&input_path, Some(split.join("out/restart.json")));
    assert!(report.failure.is_none());
}
