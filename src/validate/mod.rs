//! `mdrun validate`: the stability campaign. Each run of the campaign's matrix is an ordinary
//! mdrun run (an input file written into its directory, then `simulation::run_with`); the
//! measures come from its energy log, the GPU–CPU force comparison from its trajectory, and
//! the teacher's force error from JSON files of tools/distill/trajectory_error.py.

pub mod campaign;
pub mod measures;
pub mod plots;
pub mod report;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::cell::Vec3;
use crate::forcefield::cpu::evaluate;
use crate::input::Ensemble;
use crate::model::PainnModel;
use crate::neighbors::brute_force_pairs;
use crate::simulation::{run_with, Prepared, RunControl};
use crate::system::System;
use campaign::{Campaign, DeviceName, Job, Thresholds};
use measures::{EnergySeries, Measures};

/// GPU forces against the f64 CPU reference on frames of a GPU trajectory (eV/Å).
#[derive(Debug, Clone, Serialize)]
pub struct ForceCheck {
    pub frames: usize,
    pub rmse_ev_per_a: f64,
    pub max_abs_ev_per_a: f64,
}

/// One pass/fail comparison with a threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub value: f64,
    /// The limit, in words (`< 1`, `≤ 0.05`, `in [0.5, 1.5]`).
    pub limit: String,
    /// limit / |value| for upper limits: how far below the threshold the run is.
    pub margin: Option<f64>,
    pub passed: bool,
}

/// A limit as the report prints it: at most three significant digits (limits computed from a
/// run, like the NVT ⟨T⟩ one, would otherwise print 16).
fn three_digits(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

impl Check {
    fn below(name: &str, value: f64, limit: f64, strict: bool) -> Check {
        let passed = value.is_finite()
            && if strict {
                value.abs() < limit
            } else {
                value.abs() <= limit
            };
        Check {
            name: name.into(),
            value,
            limit: format!("{} {}", if strict { "<" } else { "≤" }, three_digits(limit)),
            margin: (value != 0.0 && value.is_finite()).then(|| limit / value.abs()),
            passed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub name: String,
    pub system: String,
    pub ensemble: String,
    pub steps: u64,
    pub timestep_fs: f64,
    pub device: String,
    pub n_atoms: usize,
    pub degrees_of_freedom: usize,
    /// Relative to the campaign's output directory.
    pub directory: PathBuf,
    pub device_description: Option<String>,
    pub wall_seconds: f64,
    pub steps_per_second: f64,
    /// Why the run stopped early or could not start.
    pub failure: Option<String>,
    pub measures: Option<Measures>,
    pub force_check: Option<ForceCheck>,
    pub checks: Vec<Check>,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

/// The teacher's force error on frames of a system's trajectory (trajectory_error.py's summary).
#[derive(Debug, Clone, Serialize)]
pub struct TeacherResult {
    pub file: PathBuf,
    pub force_rmse_ev_per_a: Option<f64>,
    pub force_mae_ev_per_a: Option<f64>,
    pub frames: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    pub name: String,
    pub structure: PathBuf,
    pub model: PathBuf,
    pub n_atoms: usize,
    /// The trajectory to hand the teacher: the longest run's (NVT and GPU preferred).
    pub teacher_trajectory: Option<PathBuf>,
    pub teacher: Option<TeacherResult>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CampaignResult {
    pub campaign: PathBuf,
    pub mdrun_version: String,
    pub thresholds: Thresholds,
    pub defaults: campaign::Defaults,
    pub untrained_models: Vec<PathBuf>,
    pub systems: Vec<SystemResult>,
    pub runs: Vec<RunResult>,
    pub passed: bool,
}

pub struct Options {
    pub out: PathBuf,
    pub only: Vec<String>,
    pub devices: Vec<DeviceName>,
    pub teacher_dir: Option<PathBuf>,
}

/// The input file of one run: the settings, outputs in the run's directory.
fn input_text(campaign: &Campaign, job: &Job, structure: &Path, model: &Path) -> String {
    let d = &campaign.defaults;
    let energy_interval = (job.steps / d.energy_points.max(1)).max(1);
    let frame_interval = (job.steps / d.trajectory_frames.max(1)).max(1);
    let thermostat = match job.ensemble {
        Ensemble::Nve => String::new(),
        Ensemble::Nvt => format!("friction_per_ps = {:?}\n", d.friction_per_ps),
    };
    format!(
        "# Written by `mdrun validate` from {campaign}; runs as is with `mdrun input.toml`.\n\
         [system]\nfile = {structure:?}\n\
         [model]\nfile = {model:?}\ndevice = \"{device}\"\n\
         [md]\nensemble = \"{ensemble}\"\ntimestep_fs = {dt:?}\nsteps = {steps}\ntemperature_k = {t:?}\n{thermostat}seed = {seed}\n\
         [neighbors]\nskin_angstrom = {skin:?}\n\
         [output]\nlog = \"run.log\"\n\
         [[output.trajectory]]\nfile = \"traj.xyz\"\ninterval = {frame_interval}\n\
         [output.energy]\nfile = \"energy.csv\"\ninterval = {energy_interval}\n\
         [output.restart]\nfile = \"restart.json\"\n",
        campaign = campaign.path.display(),
        structure = structure.display().to_string(),
        model = model.display().to_string(),
        device = job.device.as_str(),
        ensemble = if job.ensemble == Ensemble::Nve { "nve" } else { "nvt" },
        dt = job.timestep_fs,
        steps = job.steps,
        t = d.temperature_k,
        seed = d.seed,
        skin = d.skin_angstrom,
    )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))
}

/// GPU against f64 CPU forces on `frames` evenly spread frames of a trajectory.
fn force_check(model: &PainnModel, system: &System, trajectory: &Path, frames: usize) -> Result<ForceCheck> {
    let mut t = chemfiles::Trajectory::open(trajectory, 'r')
        .map_err(|e| anyhow!("{}: {}", trajectory.display(), crate::system::one_line(&e.to_string())))?;
    let total = t.nsteps();
    let picks: Vec<usize> = match (total, frames) {
        (0, _) | (_, 0) => Vec::new(),
        (n, 1) => vec![n - 1],
        (n, k) => {
            let mut v: Vec<usize> = (0..k).map(|i| i * (n - 1) / (k - 1)).collect();
            v.dedup();
            v
        }
    };
    let mut frame = chemfiles::Frame::new();
    let (mut sum2, mut count, mut worst) = (0.0, 0usize, 0.0f64);
    for k in &picks {
        t.read_step(*k, &mut frame)
            .map_err(|e| anyhow!("{}: frame {k}: {}", trajectory.display(), e))?;
        let positions: Vec<Vec3> = frame.positions().to_vec();
        let mut at = system.clone();
        at.positions = positions;
        let pairs = brute_force_pairs(&at.positions, at.cell.as_ref(), model.cutoff());
        let cpu = evaluate(model, &at.numbers, &pairs).forces;
        let (_, gpu) = crate::gpu::md::evaluate(model, &at)?;
        for (a, b) in cpu.iter().flatten().zip(gpu.iter().flatten()) {
            sum2 += (a - b) * (a - b);
            worst = worst.max((a - b).abs());
            count += 1;
        }
    }
    Ok(ForceCheck {
        frames: picks.len(),
        rmse_ev_per_a: (sum2 / count.max(1) as f64).sqrt(),
        max_abs_ev_per_a: worst,
    })
}

fn checks_of(job: &Job, m: &Measures, force: Option<&ForceCheck>, t: &Thresholds, temperature_k: f64) -> Vec<Check> {
    let mut checks = vec![Check::below(
        "|drift| % of |E(0)| (floor)",
        m.drift_percent,
        t.max_drift_percent,
        true,
    )];
    let long = job.steps >= t.target_min_steps;
    if job.ensemble == Ensemble::Nve
        && long
        && (job.timestep_fs - t.target_timestep_fs).abs() < 1e-12
        && t.target_devices.contains(&job.device)
    {
        checks.push(Check::below(
            "|drift| meV/atom/ps (target)",
            m.drift_mev_per_atom_ps,
            t.target_drift_mev_per_atom_ps,
            false,
        ));
        checks.push(Check::below(
            "drift / σ(E_kin) (target)",
            m.drift_over_sigma_ekin,
            t.target_drift_over_sigma_ekin,
            true,
        ));
    }
    if job.ensemble == Ensemble::Nvt && long {
        let error = (m.temperature_mean_k - temperature_k) / temperature_k;
        // The run's own statistical uncertainty widens the limit where it exceeds the tolerance
        // (f64::max ignores a NaN standard error).
        let limit = t
            .nvt_temperature_mean_tolerance
            .max(t.nvt_temperature_mean_sigmas * m.temperature_mean_stderr_k / temperature_k);
        checks.push(Check::below("|⟨T⟩ − T₀| / T₀", error, limit, false));
        if let Some(expected) = m.temperature_std_expected_k {
            let ratio = m.temperature_std_k / expected;
            let [lo, hi] = t.nvt_temperature_std_ratio;
            checks.push(Check {
                name: "σ_T / (T₀ √(2/N_dof))".into(),
                value: ratio,
                limit: format!("in [{lo}, {hi}]"),
                // Distance to the nearer bound, as a factor (≥ 1 inside the range): the report's
                // worst value is then the run closest to either bound.
                margin: (ratio > 0.0 && lo > 0.0).then(|| (ratio / lo).min(hi / ratio)),
                passed: ratio >= lo && ratio <= hi,
            });
        }
    }
    if let Some(f) = force {
        checks.push(Check::below(
            "GPU–CPU force RMSE (eV/Å)",
            f.rmse_ev_per_a,
            t.max_force_rmse_gpu_cpu,
            false,
        ));
    }
    checks
}

/// Runs one job in `out/runs/NAME/`.
fn execute(campaign: &Campaign, job: &Job, out: &Path, force_frames: usize) -> Result<RunResult> {
    let spec = campaign.system(&job.system).expect("checked");
    let structure = absolute(&campaign.resolve(&spec.structure))?;
    let model_path = absolute(&campaign.model_of(spec))?;
    let relative = PathBuf::from("runs").join(job.name());
    let dir = out.join(&relative);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let input_path = dir.join("input.toml");
    std::fs::write(&input_path, input_text(campaign, job, &structure, &model_path))
        .with_context(|| format!("{}: cannot write", input_path.display()))?;
    let mut result = RunResult {
        name: job.name(),
        system: job.system.clone(),
        ensemble: if job.ensemble == Ensemble::Nve { "nve" } else { "nvt" }.into(),
        steps: job.steps,
        timestep_fs: job.timestep_fs,
        device: job.device.as_str().into(),
        n_atoms: 0,
        degrees_of_freedom: 0,
        directory: relative,
        device_description: None,
        wall_seconds: 0.0,
        steps_per_second: 0.0,
        failure: None,
        measures: None,
        force_check: None,
        checks: Vec::new(),
    };
    let prepared = match Prepared::from_input_file(&input_path) {
        Ok(p) => p,
        Err(e) => {
            result.failure = Some(format!(
                "could not start: {}",
                crate::system::one_line(&format!("{e:#}"))
            ));
            return Ok(result);
        }
    };
    let (model, system) = (prepared.model.clone(), prepared.system.clone());
    result.n_atoms = system.len();
    result.degrees_of_freedom = prepared.integrator.degrees_of_freedom(system.len());
    let control = RunControl {
        quiet: true,
        ..RunControl::default()
    };
    let report = match run_with(prepared, control) {
        Ok(r) => r,
        Err(e) => {
            result.failure = Some(format!("error: {}", crate::system::one_line(&format!("{e:#}"))));
            return Ok(result);
        }
    };
    result.device_description = Some(report.device.clone());
    result.wall_seconds = report.summary.wall_seconds;
    result.steps_per_second = report.summary.steps_per_second;
    result.failure = report.failure.clone();
    let series = EnergySeries::read(&dir.join("energy.csv"))?;
    let target_t = (job.ensemble == Ensemble::Nvt).then_some(campaign.defaults.temperature_k);
    let measures = Measures::new(&series, result.n_atoms, target_t, result.degrees_of_freedom)?;
    if job.device == DeviceName::Cuda && result.failure.is_none() {
        result.force_check = Some(force_check(&model, &system, &dir.join("traj.xyz"), force_frames)?);
    }
    let mut checks = checks_of(
        job,
        &measures,
        result.force_check.as_ref(),
        &campaign.thresholds,
        campaign.defaults.temperature_k,
    );
    checks.insert(
        0,
        Check {
            name: "finished, no NaN/Inf".into(),
            value: measures.non_finite_values as f64,
            limit: "= 0 non-finite values, no stop".into(),
            margin: None,
            passed: result.failure.is_none() && measures.non_finite_values == 0,
        },
    );
    result.checks = checks;
    result.measures = Some(measures);
    Ok(result)
}

/// Reads `DIR/<system>.json` of trajectory_error.py, when present.
fn read_teacher(dir: &Path, system: &str) -> Result<Option<TeacherResult>> {
    let path = dir.join(format!("{system}.json"));
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let summary = json.get("summary").unwrap_or(&json);
    Ok(Some(TeacherResult {
        file: path.clone(),
        force_rmse_ev_per_a: summary.get("force_rmse").and_then(|v| v.as_f64()),
        force_mae_ev_per_a: summary.get("force_mae").and_then(|v| v.as_f64()),
        frames: summary.get("frames_sampled").and_then(|v| v.as_u64()),
    }))
}

/// Runs the campaign, writes `report.md`, `report.json` and the plots into `options.out`, and
/// returns the result (its `passed` decides the exit status).
pub fn run_campaign(campaign: &Campaign, options: &Options) -> Result<CampaignResult> {
    let out = &options.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let jobs = campaign.jobs(&options.only, &options.devices);
    if jobs.is_empty() {
        anyhow::bail!("{}: no run matches --only/--device", campaign.path.display());
    }
    let mut runs = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        eprintln!("validate: [{}/{}] {} ...", i + 1, jobs.len(), job.name());
        let result = execute(campaign, job, out, campaign.defaults.force_check_frames)?;
        eprintln!(
            "validate:   {}{}",
            if result.passed() { "pass" } else { "FAIL" },
            result
                .measures
                .as_ref()
                .map(|m| format!(
                    " (drift {:+.2e} meV/atom/ps, {:+.2e} %, {:.0} steps/s)",
                    m.drift_mev_per_atom_ps, m.drift_percent, result.steps_per_second
                ))
                .or_else(|| result.failure.clone().map(|f| format!(": {f}")))
                .unwrap_or_default()
        );
        plots::run_plot(out, &result)?;
        runs.push(result);
    }

    let mut systems = Vec::new();
    let mut untrained = Vec::new();
    for spec in &campaign.systems {
        let mine: Vec<&RunResult> = runs.iter().filter(|r| r.system == spec.name).collect();
        if mine.is_empty() {
            continue;
        }
        let model = campaign.model_of(spec);
        if !untrained.contains(&model) && !PainnModel::load(&model).map(|m| m.trained).unwrap_or(true) {
            untrained.push(model.clone());
        }
        let longest = mine
            .iter()
            .filter(|r| r.failure.is_none())
            .max_by_key(|r| (r.steps, r.ensemble == "nvt", r.device == "cuda"));
        let stable = mine.iter().filter(|r| r.passed()).map(|r| r.steps).max().unwrap_or(0);
        let min = campaign.thresholds.min_stable_steps;
        systems.push(SystemResult {
            name: spec.name.clone(),
            structure: campaign.resolve(&spec.structure),
            model,
            n_atoms: mine[0].n_atoms,
            teacher_trajectory: longest.map(|r| r.directory.join("traj.xyz")),
            teacher: match &options.teacher_dir {
                Some(dir) => read_teacher(dir, &spec.name)?,
                None => None,
            },
            checks: vec![Check {
                name: "longest run passing every check (steps)".into(),
                value: stable as f64,
                limit: format!("≥ {min}"),
                margin: (min > 0).then(|| stable as f64 / min as f64),
                passed: stable >= min,
            }],
        });
    }
    let passed = runs.iter().all(RunResult::passed) && systems.iter().all(|s| s.checks.iter().all(|c| c.passed));
    let result = CampaignResult {
        campaign: campaign.path.clone(),
        mdrun_version: env!("CARGO_PKG_VERSION").into(),
        thresholds: campaign.thresholds.clone(),
        defaults: campaign.defaults.clone(),
        untrained_models: untrained,
        systems,
        runs,
        passed,
    };
    plots::drift_plot(out, &result)?;
    report::write(out, &result)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_print_with_three_significant_digits() {
        assert_eq!(super::three_digits(0.2230797413113371), "0.223");
        assert_eq!(super::three_digits(0.15), "0.15");
        assert_eq!(super::three_digits(1e-4), "0.0001");
        assert_eq!(super::three_digits(1.0), "1");
        assert_eq!(super::three_digits(1000.0), "1000");
    }
}
