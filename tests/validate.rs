//! `mdrun validate` on a campaign small enough for CI: the report (markdown, JSON, SVG plots),
//! the exit status when every check passes and when a threshold fails, and refusals.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn mdrun() -> Command {
    let built = Path::new(env!("CARGO_BIN_EXE_mdrun"));
    if built.exists() {
        Command::new(built)
    } else {
        Command::new(".device/bin/mdrun")
    }
}

const CAMPAIGN: &str = "tests/fixtures/validate_ci.toml";

fn validate(campaign: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let output = mdrun()
        .arg("validate")
        .arg(campaign)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn a_cpu_campaign_writes_markdown_json_and_plots_and_passes() {
    let out = temp_dir("validate-pass");
    let (code, stderr) = validate(Path::new(&project_file(CAMPAIGN)), &out, &["--device", "cpu"]);
    assert_eq!(code, 0, "{stderr}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], true);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "3 NVE timesteps + 1 NVT, CPU only");
    for run in runs {
        let m = &run["measures"];
        for key in [
            "drift_percent",
            "drift_mev_per_atom_ps",
            "drift_over_sigma_ekin",
            "max_abs_delta_e_ev",
            "temperature_mean_k",
            "temperature_std_k",
            "max_force_ev_per_a",
        ] {
            assert!(m[key].as_f64().unwrap().is_finite(), "{key} in {run}");
        }
        assert_eq!(m["non_finite_values"], 0);
        assert!(m["drift_percent"].as_f64().unwrap().abs() < 1.0);
        let dir = out.join(run["directory"].as_str().unwrap());
        let svg = std::fs::read_to_string(dir.join("plot.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("E_pot") && svg.contains("T (K)"));
    }
    let nvt = runs.iter().find(|r| r["ensemble"] == "nvt").unwrap();
    let expected = 300.0 * (2.0f64 / 36.0).sqrt();
    assert!((nvt["measures"]["temperature_std_expected_k"].as_f64().unwrap() - expected).abs() < 1e-9);
    // The target checks apply to the NVE run at 0.5 fs only.
    let target_runs = runs
        .iter()
        .filter(|r| {
            r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"].as_str().unwrap().contains("target"))
        })
        .count();
    assert_eq!(target_runs, 1);

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## Thresholds",
        "## benzene (12 atoms)",
        "drift meV/atom/ps",
        "Untrained model",
        "not run",
        "drift_vs_timestep.svg",
    ] {
        assert!(md.contains(needle), "`{needle}` missing from report.md");
    }
    let drift = std::fs::read_to_string(out.join("drift_vs_timestep.svg")).unwrap();
    assert!(drift.contains("benzene (cpu)"));
}

#[test]
fn a_failed_threshold_exits_non_zero_and_says_which() {
    let out = temp_dir("validate-fail");
    let text = std::fs::read_to_string(project_file(CAMPAIGN))
        .unwrap()
        .replace("max_drift_percent = 1.0", "max_drift_percent = 1e-12")
        .replace("../../", &format!("{}/", project_file("")));
    let campaign = out.join("strict.toml");
    std::fs::write(&campaign, text).unwrap();
    let teacher = out.join("teacher");
    std::fs::create_dir_all(&teacher).unwrap();
    std::fs::write(
        teacher.join("benzene.json"),
        r#"{"summary": {"force_rmse": 0.0421, "force_mae": 0.03, "frames_sampled": 7}}"#,
    )
    .unwrap();
    let (code, stderr) = validate(
        &campaign,
        &out.join("report"),
        &[
            "--device",
            "cpu",
            "--only",
            "benzene",
            "--teacher-dir",
            teacher.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 4, "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap()).unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["systems"][0]["teacher"]["force_rmse_ev_per_a"], 0.0421);
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("**FAIL**") && md.contains("4.21e-2"), "{md}");
}

#[test]
fn a_campaign_naming_an_unknown_system_is_refused() {
    let out = temp_dir("validate-refuse");
    let (code, stderr) = validate(Path::new(&project_file(CAMPAIGN)), &out, &["--only", "nosuch"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");
}
