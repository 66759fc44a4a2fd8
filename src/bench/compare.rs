//! `--compare OLD.json`: the change of every row against an earlier run, and whether any slowed
//! by more than the threshold. `--baseline torch.json`: mdrun's speed-up over the PyTorch rows.

use std::fmt::Write;

use super::plot::Metric;
use super::report::{find, systems};
use super::{Config, Report, Row};

/// Rows whose median slowed by more than the threshold.
pub struct Comparison {
    pub text: String,
    pub regressions: usize,
    pub compared: usize,
}

/// Compares the medians (MD step and force call) of every row present and measured in both.
pub fn compare(new: &Report, old: &Report, threshold_percent: f64) -> Comparison {
    let mut text = format!(
        "Change against the earlier run (positive: slower; flagged above +{threshold_percent}%)\n\n\
         | system | atoms | config | metric | old µs | new µs | change | |\n|---|---:|---|---|---:|---:|---:|---|\n"
    );
    let (mut regressions, mut compared) = (0, 0);
    for row in new.rows.iter().filter(|r| r.is_ok()) {
        let Some(before) = find(&old.rows, &row.system, row.atoms, &row.config) else {
            continue;
        };
        for (metric, which) in [("MD step", Metric::Step), ("force call", Metric::ForceCall)] {
            let (Some(a), Some(b)) = (which.of(before), which.of(row)) else {
                continue;
            };
            compared += 1;
            let change = (b - a) / a * 100.0;
            let slowed = change > threshold_percent;
            regressions += usize::from(slowed);
            let _ = writeln!(
                text,
                "| {} | {} | {} | {metric} | {a:.1} | {b:.1} | {change:+.1}% | {} |",
                row.system,
                row.atoms,
                row.config,
                if slowed { "SLOWER" } else { "" }
            );
        }
    }
    let _ = writeln!(
        text,
        "\n{compared} medians compared, {regressions} slowed by more than {threshold_percent}%."
    );
    Comparison {
        text,
        regressions,
        compared,
    }
}

/// Force-call and MD-step medians (µs) of a baseline row. Older files (schema 1) stored a force
/// call as its own configuration `…-force-call` in the step fields.
pub fn baseline_times(row: &Row) -> (Option<f64>, Option<f64>) {
    if row.config.ends_with("-force-call") && row.median_us_per_force_call.is_none() {
        (row.median_us_per_step, None)
    } else {
        (row.median_us_per_force_call, row.median_us_per_step)
    }
}

/// The mdrun row the baseline is held against: `+one-cluster` or `+cuda-graph` (everything on),
/// else the fastest measured GPU configuration, else `cpu`.
pub fn best_mdrun_row<'a>(rows: &'a [Row], system: &str, atoms: usize) -> Option<&'a Row> {
    find(rows, system, atoms, Config::OneCluster.name())
        .or_else(|| find(rows, system, atoms, Config::CudaGraph.name()))
        .or_else(|| {
            rows.iter()
                .filter(|r| r.system == system && r.atoms == atoms && r.is_ok() && r.config != "cpu")
                .filter(|r| r.median_us_per_step.is_some())
                .min_by(|a, b| a.median_us_per_step.unwrap().total_cmp(&b.median_us_per_step.unwrap()))
        })
        .or_else(|| find(rows, system, atoms, Config::Cpu.name()))
}

/// One speed-up of mdrun over a baseline row: (atoms, baseline config, force-call ×, MD-step ×).
pub type Speedup = (usize, String, Option<f64>, Option<f64>);

/// mdrun's speed-up over every baseline row of the same system and size, as a table.
pub fn baseline(report: &Report, torch: &Report) -> (String, Vec<Speedup>) {
    let mut text = String::from(
        "Speed-up of mdrun (+one-cluster or +cuda-graph, else its fastest GPU configuration, else cpu) over the baseline rows\n\n\
         | system | atoms | baseline | mdrun | baseline force call µs | mdrun force call µs | speed-up | baseline MD step µs | mdrun MD step µs | speed-up |\n\
         |---|---:|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut speedups = Vec::new();
    for (system, atoms) in systems(&report.rows) {
        let Some(ours) = best_mdrun_row(&report.rows, &system, atoms) else {
            continue;
        };
        for theirs in torch
            .rows
            .iter()
            .filter(|r| r.system == system && r.atoms == atoms && r.is_ok())
        {
            let (force, step) = baseline_times(theirs);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let f = ratio(force, ours.median_us_per_force_call);
            let s = ratio(step, ours.median_us_per_step);
            let cell = |v: Option<f64>, d: usize| v.map_or("—".into(), |x| format!("{x:.d$}"));
            let _ = writeln!(
                text,
                "| {system} | {atoms} | {} | {} | {} | {} | {} | {} | {} | {} |",
                theirs.config,
                ours.config,
                cell(force, 0),
                cell(ours.median_us_per_force_call, 0),
                f.map_or("—".into(), |x| format!("{x:.1}×")),
                cell(step, 0),
                cell(ours.median_us_per_step, 0),
                s.map_or("—".into(), |x| format!("{x:.1}×")),
            );
            speedups.push((atoms, theirs.config.clone(), f, s));
        }
        for skipped in torch
            .rows
            .iter()
            .filter(|r| r.system == system && r.atoms == atoms && !r.is_ok())
        {
            let _ = writeln!(
                text,
                "| {system} | {atoms} | {} | | {}: {} | | | | | |",
                skipped.config,
                skipped.status,
                skipped.reason.as_deref().unwrap_or("")
            );
        }
    }
    (text, speedups)
}
