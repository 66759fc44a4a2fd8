//! The `mdrun bench` command: run (or read) the rows, write the reports into one folder,
//! compare with an earlier run and with the PyTorch baseline.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::compare::{baseline, compare};
use super::plot::{latency_series, log_log, speedup_series, Metric};
use super::report::markdown;
use super::{bench_system, load_system, BenchOptions, ModelInfo, Report, SCHEMA};
use crate::model::PainnModel;

pub struct BenchCommand {
    /// Structure specs (`FILE` or `FILE@N`); empty: the default set.
    pub systems: Vec<String>,
    /// Default set: the five small systems, or those and the three scaling sizes.
    pub all_sizes: bool,
    pub systems_dir: PathBuf,
    pub model: PathBuf,
    pub options: BenchOptions,
    /// Report folder: bench.json, bench.md, latency.svg, force_latency.svg, speedup.svg.
    pub out: Option<PathBuf>,
    /// bench.json written here too (as the earlier `--json`).
    pub json: Option<PathBuf>,
    /// Reports from these bench.json files (rows merged, settings of the first) instead of running.
    pub results: Vec<PathBuf>,
    pub compare: Option<PathBuf>,
    pub threshold_percent: f64,
    pub baseline: Option<PathBuf>,
    /// Configuration the speed-up plot divides by.
    pub speedup_base: String,
}

fn commit() -> Option<String> {
    if let Ok(c) = std::env::var("MDRUN_COMMIT") {
        return Some(c);
    }
    // The commit the binary was built from (build.rs), if the build saw a git tree.
    if !env!("MDRUN_BUILD_COMMIT").is_empty() {
        return Some(env!("MDRUN_BUILD_COMMIT").to_string());
    }
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn host_cpu() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let name = info.lines().find(|l| l.starts_with("model name"))?;
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    Some(format!("{} ({cores} threads)", name.split_once(':')?.1.trim()))
}

fn run(command: &BenchCommand) -> Result<Report> {
    let model = PainnModel::load(&command.model)?;
    let specs = if command.systems.is_empty() {
        super::default_systems(&command.systems_dir, command.all_sizes)
    } else {
        command.systems.clone()
    };
    let mut rows = Vec::new();
    for spec in &specs {
        let (name, system) = load_system(spec).with_context(|| format!("bench system {spec}"))?;
        rows.extend(bench_system(&name, &system, &model, &command.options)?);
    }
    let gpu = rows.iter().filter(|r| r.is_ok()).find_map(|r| {
        r.device
            .strip_prefix("cuda (")
            .map(|d| d.trim_end_matches(", f32)").to_string())
    });
    Ok(Report {
        schema: SCHEMA.into(),
        mdrun_version: Some(env!("CARGO_PKG_VERSION").into()),
        commit: commit(),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host_cpu: host_cpu(),
        gpu,
        model: Some(ModelInfo {
            file: command.model.display().to_string(),
            features: model.config.n_atom_basis,
            interactions: model.config.n_interactions,
            rbf: model.config.n_rbf,
            cutoff_angstrom: model.cutoff(),
        }),
        timestep_fs: command.options.timestep_fs,
        skin_angstrom: command.options.skin,
        temperature_k: command.options.temperature_k,
        rows,
    })
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs the command; Ok(true) when `--compare` found a row slower than the threshold.
pub fn execute(command: &BenchCommand) -> Result<bool> {
    let report = match command.results.split_first() {
        Some((first, more)) => {
            let mut report = Report::read(first)?;
            for path in more {
                let other = Report::read(path)?;
                report.gpu = report.gpu.or(other.gpu);
                report.rows.extend(other.rows);
            }
            report
        }
        None => run(command)?,
    };
    let mut text = markdown(&report);
    let torch = command.baseline.as_deref().map(Report::read).transpose()?;
    let speedups = match &torch {
        Some(torch) => {
            let (table, speedups) = baseline(&report, torch);
            text += "\n";
            text += &table;
            speedups
        }
        None => Vec::new(),
    };
    let mut regressed = false;
    if let Some(old) = &command.compare {
        let comparison = compare(&report, &Report::read(old)?, command.threshold_percent);
        text += "\n";
        text += &comparison.text;
        regressed = comparison.regressions > 0;
    }
    println!("{text}");
    if let Some(dir) = &command.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        report.write(&dir.join("bench.json"))?;
        write_text(&dir.join("bench.md"), &text)?;
        let baseline_rows = torch.as_ref().map_or(&[][..], |t| &t.rows[..]);
        log_log(
            &dir.join("latency.svg"),
            "MD step latency (median)",
            "µs per step",
            &latency_series(&report.rows, baseline_rows, Metric::Step),
        )?;
        log_log(
            &dir.join("force_latency.svg"),
            "Force call latency (median)",
            "µs per force call",
            &latency_series(&report.rows, baseline_rows, Metric::ForceCall),
        )?;
        log_log(
            &dir.join("speedup.svg"),
            &format!("Speed-up (MD step) over {} and over the baseline", command.speedup_base),
            "speed-up ×",
            &speedup_series(&report.rows, &command.speedup_base, &speedups),
        )?;
        eprintln!("bench: reports in {}", dir.display());
    }
    if let Some(path) = &command.json {
        report.write(path)?;
    }
    Ok(regressed)
}
