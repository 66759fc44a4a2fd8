//! SVG plots (plotters' SVG backend: text is left to the viewer's fonts, so no font files are
//! needed to draw them): energies, temperature and force norms against time per run, and the
//! drift against the timestep per system.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::measures::EnergySeries;
use super::{CampaignResult, RunResult};

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-12 * lo.abs().max(1.0)).max(1e-12);
    (lo - pad, hi + pad)
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One panel: several named series against time (ps).
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    time: &[f64],
    series: &[(&str, Vec<f64>)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot: {e:?}");
    let (x0, x1) = range(time.iter().copied());
    let (y0, y1) = range(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("t (ps)")
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{v:.3e}"))
        .draw()
        .map_err(err)?;
    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = time
            .iter()
            .copied()
            .zip(values.iter().copied())
            .filter(|(_, y)| y.is_finite());
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(1)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// `runs/NAME/plot.svg`: ΔE_tot, ΔE_pot, ΔE_kin (from their first values), T, and force norms
/// against time. Runs that wrote no energy log get no plot.
pub fn run_plot(out: &Path, run: &RunResult) -> Result<()> {
    let dir = out.join(&run.directory);
    let Ok(s) = EnergySeries::read(&dir.join("energy.csv")) else {
        return Ok(());
    };
    if s.is_empty() {
        return Ok(());
    }
    let delta = |v: &[f64]| v.iter().map(|x| x - v[0]).collect::<Vec<f64>>();
    let path = dir.join("plot.svg");
    let root = SVGBackend::new(&path, (900, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e:?}"))?;
    let areas = root.split_evenly((3, 1));
    let mut energies = vec![
        ("E_tot", delta(&s.total)),
        ("E_pot", delta(&s.potential)),
        ("E_kin", delta(&s.kinetic)),
    ];
    if run.ensemble == "nvt" {
        // E_tot plus the energy the thermostat removed: what NVT conserves.
        energies.push(("E_conserved", delta(&s.conserved)));
    }
    panel(
        &areas[0],
        &format!("{}: energies relative to t = 0", run.name),
        "ΔE (eV)",
        &s.time_ps,
        &energies,
    )?;
    panel(
        &areas[1],
        "temperature",
        "T (K)",
        &s.time_ps,
        &[("T", s.temperature.clone())],
    )?;
    panel(
        &areas[2],
        "force norms",
        "|F| (eV/Å)",
        &s.time_ps,
        &[("max |F|", s.max_force.clone()), ("rms |F|", s.rms_force.clone())],
    )?;
    root.present().map_err(|e| anyhow!("{}: {e:?}", path.display()))?;
    Ok(())
}

/// `drift_vs_timestep.svg`: |drift| (meV/atom/ps, log scale) of NVE runs against the timestep,
/// one line per system and device (the longest run at each timestep).
pub fn drift_plot(out: &Path, result: &CampaignResult) -> Result<()> {
    let mut lines: BTreeMap<(String, String), BTreeMap<u64, (u64, f64)>> = BTreeMap::new();
    for r in result
        .runs
        .iter()
        .filter(|r| r.ensemble == "nve" && r.failure.is_none())
    {
        let Some(m) = &r.measures else { continue };
        let key_dt = (r.timestep_fs * 1e6).round() as u64;
        let line = lines.entry((r.system.clone(), r.device.clone())).or_default();
        let slot = line.entry(key_dt).or_insert((0, 0.0));
        if r.steps >= slot.0 {
            *slot = (r.steps, m.drift_mev_per_atom_ps.abs());
        }
    }
    let path = out.join("drift_vs_timestep.svg");
    let root = SVGBackend::new(&path, (900, 600)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let floor = 1e-8;
    let all: Vec<f64> = lines
        .values()
        .flat_map(|l| l.values().map(|(_, d)| d.max(floor)))
        .collect();
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo / 3.0, hi * 3.0)
    } else {
        (1e-4, 1.0)
    };
    let target = result.thresholds.target_drift_mev_per_atom_ps;
    let (lo, hi) = (lo.min(target / 3.0), hi.max(target * 3.0));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "NVE energy drift against the timestep (|slope| of E_tot(t), meV/atom/ps)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0f64..1.25f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("timestep (fs)")
        .y_desc("|drift| (meV/atom/ps)")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, target), (1.25, target)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(err)?
        .label(format!("target {target} meV/atom/ps"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
    for (i, ((system, device), points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = points
            .iter()
            .map(|(dt, (_, d))| (*dt as f64 / 1e6, d.max(floor)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{system} ({device})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(|e| anyhow!("{}: {e:?}", path.display()))?;
    Ok(())
}
