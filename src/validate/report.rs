//! The campaign report: `report.md` (a table per system, the thresholds with the worst value and
//! its margin, plots, teacher comparison) and `report.json` (everything, machine-readable).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{CampaignResult, Check, RunResult};

fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.is_finite() {
        format!("{v:.2e}")
    } else {
        format!("{v}")
    }
}

fn run_row(r: &RunResult) -> String {
    let Some(m) = &r.measures else {
        return format!(
            "| {} | {} | {} | {} |{} **FAIL**: {} |",
            r.ensemble,
            r.steps,
            r.timestep_fs,
            r.device,
            " — |".repeat(9),
            r.failure.as_deref().unwrap_or("no energy log")
        );
    };
    let temperature = match m.temperature_std_expected_k {
        Some(e) => format!(
            "{:.1} ± {:.1} (σ exp. {:.1})",
            m.temperature_mean_k, m.temperature_std_k, e
        ),
        None => format!("{:.1} ± {:.1}", m.temperature_mean_k, m.temperature_std_k),
    };
    let force = r.force_check.as_ref().map_or("—".to_string(), |f| {
        format!("{} ({} fr.)", sci(f.rmse_ev_per_a), f.frames)
    });
    let failed: Vec<String> = r
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.replace('|', "\\|"))
        .collect();
    let status = match (&r.failure, failed.is_empty()) {
        (Some(f), _) => format!("**FAIL**: {f}"),
        (None, false) => format!("**FAIL**: {}", failed.join("; ")),
        (None, true) => "pass".into(),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {status} |",
        r.ensemble,
        r.steps,
        r.timestep_fs,
        r.device,
        sci(m.drift_percent),
        sci(m.drift_mev_per_atom_ps),
        sci(m.drift_over_sigma_ekin),
        sci(m.max_abs_delta_e_ev),
        temperature,
        format_args!("{:.3} / {:.3}", m.max_force_ev_per_a, m.rms_force_mean_ev_per_a),
        m.non_finite_values,
        force,
        r.steps_per_second,
    )
}

/// The worst value of each named check over all runs, with its threshold and margin.
fn threshold_rows(result: &CampaignResult) -> Vec<(String, String, f64, Option<f64>, usize, usize)> {
    let mut names: Vec<String> = Vec::new();
    let all: Vec<&Check> = result
        .runs
        .iter()
        .flat_map(|r| r.checks.iter())
        .chain(result.systems.iter().flat_map(|s| s.checks.iter()))
        .collect();
    for c in &all {
        if !names.contains(&c.name) {
            names.push(c.name.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mine: Vec<&&Check> = all.iter().filter(|c| c.name == name).collect();
            // Worst: the smallest margin where there is one, else the first failure, else any.
            let worst = mine
                .iter()
                .filter(|c| c.margin.is_some())
                .min_by(|a, b| a.margin.partial_cmp(&b.margin).unwrap_or(std::cmp::Ordering::Equal))
                .or_else(|| mine.iter().find(|c| !c.passed))
                .unwrap_or(&mine[0]);
            let passed = mine.iter().filter(|c| c.passed).count();
            (name, worst.limit.clone(), worst.value, worst.margin, passed, mine.len())
        })
        .collect()
}

pub fn markdown(result: &CampaignResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# mdrun validation campaign\n");
    let _ = writeln!(
        s,
        "Campaign `{}`, mdrun {}. Verdict: **{}**. Measures and thresholds are defined in \
         docs/validation.md; energies in eV, temperatures in K, forces in eV/Å, drift rates in meV/atom/ps.\n",
        result.campaign.display(),
        result.mdrun_version,
        if result.passed {
            "every check passed"
        } else {
            "a check FAILED"
        }
    );
    for m in &result.untrained_models {
        let _ = writeln!(
            s,
            "> **Untrained model** `{}` (random weights): the dynamics are not chemistry; the numbers test the integrator and the kernels only.\n",
            m.display()
        );
    }
    let d = &result.defaults;
    let _ = writeln!(
        s,
        "Settings: T₀ = {} K (Maxwell–Boltzmann start; NVT target), Langevin γ = {} /ps, seed {}, skin {} Å, \
         {} energy-log lines and {} frames per run, {} frames per GPU–CPU force check.\n",
        d.temperature_k,
        d.friction_per_ps,
        d.seed,
        d.skin_angstrom,
        d.energy_points,
        d.trajectory_frames,
        d.force_check_frames
    );

    let _ = writeln!(s, "## Thresholds\n");
    let _ = writeln!(
        s,
        "| check | threshold | worst value | margin (factor to the limit) | passed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (name, limit, value, margin, passed, total) in threshold_rows(result) {
        let _ = writeln!(
            s,
            "| {} | {limit} | {} | {} | {passed}/{total} |",
            name.replace('|', "\\|"),
            sci(value),
            margin.map_or("—".into(), |m| if m >= 100.0 {
                format!("{m:.3e}×")
            } else {
                format!("{m:.3}×")
            })
        );
    }
    let _ = writeln!(s);

    for sys in &result.systems {
        let _ = writeln!(s, "## {} ({} atoms)\n", sys.name, sys.n_atoms);
        let _ = writeln!(
            s,
            "Structure `{}`, model `{}`.\n",
            sys.structure.display(),
            sys.model.display()
        );
        let _ = writeln!(
            s,
            "| ensemble | steps | dt (fs) | device | drift % | drift meV/atom/ps | drift/σ(E_kin) | max \\|ΔE\\| (eV) | T (K) | max / mean rms \\|F\\| (eV/Å) | NaN/Inf | GPU–CPU RMSE (eV/Å) | steps/s | status |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in result.runs.iter().filter(|r| r.system == sys.name) {
            let _ = writeln!(s, "{}", run_row(r));
        }
        let _ = writeln!(s);
        for c in &sys.checks {
            let _ = writeln!(
                s,
                "{}: {} ({}): {}.\n",
                c.name,
                c.value,
                c.limit,
                if c.passed { "pass" } else { "**FAIL**" }
            );
        }
        let plots: Vec<String> = result
            .runs
            .iter()
            .filter(|r| r.system == sys.name && r.measures.is_some())
            .map(|r| format!("[{}]({})", r.name, r.directory.join("plot.svg").display()))
            .collect();
        if !plots.is_empty() {
            let _ = writeln!(
                s,
                "Plots (E_tot, E_pot, E_kin, T, force norms against time): {}\n",
                plots.join(", ")
            );
        }
    }

    let _ = writeln!(s, "## Drift against the timestep\n");
    let _ = writeln!(s, "![drift against timestep](drift_vs_timestep.svg)\n");

    let _ = writeln!(s, "## Student against the teacher (GFN2-xTB) along the trajectory\n");
    let _ = writeln!(
        s,
        "| system | trajectory | force RMSE (eV/Å) | force MAE (eV/Å) | frames |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for sys in &result.systems {
        let traj = sys
            .teacher_trajectory
            .as_ref()
            .map_or("—".into(), |p| format!("`{}`", p.display()));
        match &sys.teacher {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "| {} | {traj} | {} | {} | {} |",
                    sys.name,
                    t.force_rmse_ev_per_a.map_or("?".into(), sci),
                    t.force_mae_ev_per_a.map_or("?".into(), sci),
                    t.frames.map_or("?".into(), |f| f.to_string())
                );
            }
            None => {
                let _ = writeln!(s, "| {} | {traj} | not run | not run | — |", sys.name);
            }
        }
    }
    let _ = writeln!(
        s,
        "\nTo fill this table: for each system, `python tools/distill/trajectory_error.py OUT/<trajectory> \
         --model MODEL --json TEACHER_DIR/<system>.json`, then `mdrun validate ... --teacher-dir TEACHER_DIR`."
    );
    s
}

pub fn write(out: &Path, result: &CampaignResult) -> Result<()> {
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(result)?).with_context(|| format!("{}", json.display()))?;
    let md = out.join("report.md");
    std::fs::write(&md, markdown(result)).with_context(|| format!("{}", md.display()))?;
    Ok(())
}
