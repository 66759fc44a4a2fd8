//! bench.md: the rows as a markdown table, then the ablation read-out (speed-up of each
//! configuration over the one before it, per system).

use std::fmt::Write;

use super::{Config, Report, Row};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |x| format!("{x:.digits$}"))
}

fn sci(v: Option<f64>) -> String {
    v.map_or("—".into(), |x| format!("{x:.1e}"))
}

/// Systems in order of first appearance, with their atom counts.
pub fn systems(rows: &[Row]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !out.iter().any(|(s, n)| *s == r.system && *n == r.atoms) {
            out.push((r.system.clone(), r.atoms));
        }
    }
    out
}

/// Configurations in order of first appearance.
pub fn configs(rows: &[Row]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        if !out.contains(&r.config) {
            out.push(r.config.clone());
        }
    }
    out
}

pub fn find<'a>(rows: &'a [Row], system: &str, atoms: usize, config: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system == system && r.atoms == atoms && r.config == config && r.is_ok())
}

/// The whole bench.md.
pub fn markdown(report: &Report) -> String {
    let mut text = String::from("# mdrun bench\n\n");
    let _ = writeln!(
        text,
        "mdrun {}, commit {}, GPU {}, host CPU {}.",
        report.mdrun_version.as_deref().unwrap_or("unknown"),
        report.commit.as_deref().unwrap_or("unknown"),
        report.gpu.as_deref().unwrap_or("none"),
        report.host_cpu.as_deref().unwrap_or("unknown")
    );
    if let Some(m) = &report.model {
        let _ = writeln!(
            text,
            "Model {} (F = {}, {} interactions, {} radial functions, cutoff {} Å); velocity Verlet, \
             dt {} fs, skin {} Å, {} K start.",
            m.file,
            m.features,
            m.interactions,
            m.rbf,
            m.cutoff_angstrom,
            report.timestep_fs,
            report.skin_angstrom,
            report.temperature_k
        );
    }
    text += "\nLatencies in µs: median (mean ± std, min–max) after warm-up; an MD step is the full \
             step (displacement check, neighbor rebuild when due, forces, integration), a force call \
             one evaluation at fixed neighbor rows, both waited for on the device. Accuracy against \
             the f64 reference at the starting positions.\n\n";
    text += &table(&report.rows, report.timestep_fs);
    text += "\n";
    text += &ablation(&report.rows);
    let notes: Vec<&Row> = report.rows.iter().filter(|r| !r.is_ok()).collect();
    if !notes.is_empty() {
        text += "\nRows not measured:\n\n";
        for r in notes {
            let _ = writeln!(
                text,
                "- {} ({} atoms), `{}`: {}: {}",
                r.system,
                r.atoms,
                r.config,
                r.status,
                r.reason.as_deref().unwrap_or("")
            );
        }
    }
    text
}

/// The main table, one line per row.
pub fn table(rows: &[Row], timestep_fs: f64) -> String {
    let mut text = format!(
        "| system | atoms | config | force call µs | MD step µs | mean ± std | min–max | steps/s | ns/day ({timestep_fs} fs) | atom-steps/s | GPU MiB | ΔE/atom eV | F RMSE eV/Å | max ΔF eV/Å |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        if !r.is_ok() {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | | | | | | | | | | |",
                r.system, r.atoms, r.config, r.status
            );
            continue;
        }
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} ± {} | {}–{} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.atoms,
            r.config,
            opt(r.median_us_per_force_call, 1),
            opt(r.median_us_per_step, 1),
            opt(r.mean_us_per_step, 1),
            opt(r.std_us_per_step, 1),
            opt(r.min_us_per_step, 1),
            opt(r.max_us_per_step, 1),
            opt(r.steps_per_second, 0),
            opt(r.ns_per_day, 2),
            sci(r.atom_steps_per_second),
            opt(r.gpu_memory_bytes.map(|b| b as f64 / (1024.0 * 1024.0)), 1),
            sci(r.energy_error_per_atom_ev),
            sci(r.force_rmse_ev_per_angstrom),
            sci(r.force_max_error_ev_per_angstrom),
        );
    }
    text
}

/// Speed-up of each GPU configuration over the one before it in the ablation chain (MD step
/// medians), and overall (`gpu-naive` and `cpu` → the last configuration present). A configuration
/// missing for a system (e.g. `+cell-list` on open systems) is skipped: the next one is compared
/// with the last one present.
pub fn ablation(rows: &[Row]) -> String {
    let chain = [
        Config::GpuNaive,
        Config::CellList,
        Config::Fused,
        Config::CudaGraph,
        Config::OneCluster,
    ];
    let mut text = String::from(
        "Ablation (MD step, median): speed-up of each configuration over the previous one present\n\n\
         | system | atoms | +cell-list | +fused | +cuda-graph | +one-cluster | overall vs gpu-naive | vs cpu |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (system, atoms) in systems(rows) {
        let step = |c: Config| find(rows, &system, atoms, c.name()).and_then(|r| r.median_us_per_step);
        let mut previous = step(Config::GpuNaive);
        let mut cells = Vec::new();
        for &c in &chain[1..] {
            let now = step(c);
            cells.push(match (previous, now) {
                (Some(p), Some(t)) => format!("{:.2}×", p / t),
                _ => "—".into(),
            });
            if now.is_some() {
                previous = now;
            }
        }
        let best = step(Config::OneCluster).or(step(Config::CudaGraph));
        let ratio = |base: Option<f64>| match (base, best) {
            (Some(b), Some(t)) => format!("{:.2}×", b / t),
            _ => "—".into(),
        };
        let _ = writeln!(
            text,
            "| {system} | {atoms} | {} | {} | {} | {} | {} | {} |",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            ratio(step(Config::GpuNaive)),
            ratio(step(Config::Cpu))
        );
    }
    text
}
