//! Whole runs through the input-file path: energy conservation, the order of the Verlet error,
//! Langevin temperature, reproducibility from the seed, and a clean stop when a run goes wrong.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mdrun::model::PainnModel;
use mdrun::simulation::{run, Prepared, RunReport};

struct Run {
    dir: PathBuf,
    report: RunReport,
}

impl Run {
    fn energy(&self) -> std::collections::HashMap<String, Vec<f64>> {
        read_energy_csv(&self.dir.join("energy.csv"))
    }
}

fn write_model(dir: &Path, model: &PainnModel) -> String {
    let path = dir.join("model.safetensors");
    model.save(&path, false).unwrap();
    path.display().to_string()
}

/// Runs `system` with `md` (the body of the [md] table) and the given model in a fresh directory.
fn run_md(tag: &str, system: &str, model: &PainnModel, md: &str, energy_interval: u64, traj_interval: u64) -> Run {
    let dir = temp_dir(tag);
    let model_path = write_model(&dir, model);
    let input = format!(
        r#"
[system]
file = "{system}"
[model]
file = "{model_path}"
device = "cpu"
[md]
{md}
[output]
log = "run.log"
[[output.trajectory]]
file = "traj.xyz"
interval = {traj_interval}
[output.energy]
file = "energy.csv"
interval = {energy_interval}
"#
    );
    let input_path = dir.join("input.toml");
    std::fs::write(&input_path, input).unwrap();
    let report = run(Prepared::from_input_file(&input_path).unwrap()).unwrap();
    Run { dir, report }
}

fn benzene_model() -> PainnModel {
    // Full student size, random weights: smooth, and all the machinery of the real model.
    PainnModel::random(full_config(), 2026)
}

#[test]
fn nve_benzene_conserves_energy_over_1000_steps_at_half_a_femtosecond() {
    let md = "ensemble = \"nve\"\ntimestep_fs = 0.5\nsteps = 1000\ntemperature_k = 300.0\nseed = 1";
    let run = run_md(
        "nve",
        &project_file("systems/benzene.xyz"),
        &benzene_model(),
        md,
        1,
        100,
    );
    assert!(run.report.failure.is_none());
    let e = run.energy();
    let total = &e["e_tot_ev"];
    assert_eq!(total.len(), 1001);
    let e0 = total[0];
    let max_dev = total.iter().map(|x| (x - e0).abs()).fold(0.0, f64::max);
    let relative_drift = (total[total.len() - 1] - e0).abs() / e0.abs();
    assert!(relative_drift < 1e-4, "relative drift {relative_drift:e}");
    // The kinetic energy moves by far more than the total: conservation is not trivial here.
    let kinetic = &e["e_kin_ev"];
    let k_range = kinetic.iter().cloned().fold(f64::MIN, f64::max) - kinetic.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        max_dev < 0.01 * k_range,
        "max |ΔE| {max_dev:e} vs E_kin range {k_range:e}"
    );
    assert!(!run.report.summary.non_finite_seen);
    assert!(total.iter().all(|x| x.is_finite()));
}

#[test]
fn verlet_energy_error_is_second_order_in_the_timestep() {
    // Same trajectory length (250 fs), two timesteps: the energy error should drop ~4×.
    let model = PainnModel::random(small_config(5.0), 77);
    let mut errors = Vec::new();
    for (dt, steps) in [(1.0, 250), (0.5, 500)] {
        let md = format!("ensemble = \"nve\"\ntimestep_fs = {dt}\nsteps = {steps}\ntemperature_k = 600.0\nseed = 5");
        let run = run_md("order", &project_file("systems/ethanol.xyz"), &model, &md, 1, 1000);
        let total = &run.energy()["e_tot_ev"];
        errors.push(total.iter().map(|x| (x - total[0]).abs()).fold(0.0, f64::max));
    }
    let ratio = errors[0] / errors[1];
    assert!((2.5..6.5).contains(&ratio), "error ratio {ratio} (errors {errors:?})");
}

#[test]
fn langevin_holds_the_target_temperature() {
    let model = PainnModel::random(small_config(5.0), 91);
    let md = "ensemble = \"nvt\"\ntimestep_fs = 0.5\nsteps = 40000\ntemperature_k = 300.0\nfriction_per_ps = 10.0\nseed = 12345";
    let run = run_md("nvt", &project_file("systems/benzene.xyz"), &model, md, 10, 100000);
    let t = &run.energy()["temperature_k"];
    // Discard the first 2 ps (400 records) as equilibration.
    let sample = &t[400..];
    let mean = sample.iter().sum::<f64>() / sample.len() as f64;
    assert!((mean - 300.0).abs() < 0.05 * 300.0, "mean temperature {mean} K");
    // Fluctuations of a canonical kinetic energy over 3N = 36 degrees of freedom: σ_T/T = √(2/36).
    let var = sample.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / sample.len() as f64;
    let relative_sigma = var.sqrt() / mean;
    assert!(
        (relative_sigma - (2.0f64 / 36.0).sqrt()).abs() < 0.05,
        "σ_T/T = {relative_sigma}"
    );
}

#[test]
fn runs_are_reproducible_from_the_seed_and_differ_between_seeds() {
    let model = PainnModel::random(small_config(5.0), 3);
    let mut finals = Vec::new();
    for seed in [42, 42, 43] {
        let md = format!("ensemble = \"nvt\"\ntimestep_fs = 0.5\nsteps = 200\ntemperature_k = 300.0\nfriction_per_ps = 5.0\nseed = {seed}");
        let run = run_md("seed", &project_file("systems/ethanol.xyz"), &model, &md, 200, 200);
        finals.push(std::fs::read_to_string(run.dir.join("traj.xyz")).unwrap());
    }
    assert_eq!(finals[0], finals[1], "same seed, same trajectory");
    assert_ne!(finals[0], finals[2], "another seed, another trajectory");
}

#[test]
fn an_explosion_stops_the_run_with_logs_flushed_and_the_last_good_frame_written() {
    let model = benzene_model();
    // Find the starting max force, then set the explosion threshold just above it: the run
    // passes a few steps and stops when the force first crosses it.
    let first = run_md(
        "probe",
        &project_file("systems/benzene.xyz"),
        &model,
        "ensemble = \"nve\"\ntimestep_fs = 0.5\nsteps = 1\ntemperature_k = 300.0\nseed = 1",
        1,
        1,
    );
    let f0 = first.energy()["max_force_ev_per_a"][0];
    let md = format!("ensemble = \"nve\"\ntimestep_fs = 0.5\nsteps = 5000\ntemperature_k = 300.0\nseed = 1\nmax_force_ev_per_angstrom = {}", f0 * 1.02);
    let run = run_md("explode", &project_file("systems/benzene.xyz"), &model, &md, 7, 5);
    let failure = run.report.failure.clone().expect("the run must stop");
    assert!(failure.contains("exceeds"), "{failure}");
    let stopped_at: u64 = failure
        .trim_start_matches("step ")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let last_good = stopped_at - 1;
    // The energy log ends at the last good step, and the trajectory's last frame is that step.
    let steps = &run.energy()["step"];
    assert_eq!(*steps.last().unwrap() as u64, last_good);
    let mut trajectory = chemfiles::Trajectory::open(run.dir.join("traj.xyz"), 'r').unwrap();
    let frames = trajectory.nsteps();
    let mut frame = chemfiles::Frame::new();
    trajectory.read_step(frames - 1, &mut frame).unwrap();
    assert_eq!(frame.size(), 12, "complete last frame");
    let log = std::fs::read_to_string(run.dir.join("run.log")).unwrap();
    assert!(
        log.contains("STOPPED") && log.contains(&format!("step {last_good})")),
        "{log}"
    );
}

#[test]
fn dcd_and_xyz_trajectories_read_back_with_the_cell() {
    let dir = temp_dir("dcd");
    let model_path = write_model(&dir, &PainnModel::random(small_config(5.0), 4));
    let input = format!(
        r#"
[system]
file = "{}"
[model]
file = "{model_path}"
device = "cpu"
[md]
ensemble = "nvt"
timestep_fs = 0.5
steps = 20
temperature_k = 300.0
friction_per_ps = 1.0
seed = 3
[[output.trajectory]]
file = "traj.dcd"
interval = 5
[[output.trajectory]]
file = "traj.xyz"
interval = 10
"#,
        project_file("systems/waterbox_64.xyz")
    );
    std::fs::write(dir.join("input.toml"), input).unwrap();
    let report = run(Prepared::from_input_file(&dir.join("input.toml")).unwrap()).unwrap();
    assert!(report.failure.is_none());
    let mut dcd = chemfiles::Trajectory::open(dir.join("traj.dcd"), 'r').unwrap();
    assert_eq!(dcd.nsteps(), 5, "steps 0, 5, 10, 15, 20");
    let mut frame = chemfiles::Frame::new();
    dcd.read_step(4, &mut frame).unwrap();
    assert_eq!(frame.size(), 192);
    let lengths = frame.cell().lengths();
    assert!(lengths.iter().all(|l| (l - 12.4171267).abs() < 1e-3), "{lengths:?}");
    let mut xyz = chemfiles::Trajectory::open(dir.join("traj.xyz"), 'r').unwrap();
    assert_eq!(xyz.nsteps(), 3);
}
