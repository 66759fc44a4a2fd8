//! The plots, as SVG through plotters (its SVG backend writes text as <text> elements: no font
//! files or system libraries needed): latency against atoms on log–log axes, one series per
//! configuration; speed-up against atoms over a base configuration and over baseline rows.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::compare::{baseline_times, Speedup};
use super::report::{configs, find, systems};
use super::Row;

/// A named series of (atoms, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn bounds(series: &[Series]) -> Option<((f64, f64), (f64, f64))> {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite())
        .collect();
    if all.is_empty() {
        return None;
    }
    let fold = |f: fn(&(f64, f64)) -> f64| {
        all.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let (x0, x1) = fold(|p| p.0);
    let (y0, y1) = fold(|p| p.1);
    // Log axes: pad by a factor each way, so single points and flat lines still get a range.
    Some(((x0 / 1.5, x1 * 1.5), (y0 / 2.0, y1 * 2.0)))
}

/// An axis label: as many decimals as a log axis needs.
fn tick(v: f64) -> String {
    match v.abs() {
        a if a >= 10.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.1}"),
        a if a >= 0.01 => format!("{v:.2}"),
        _ => format!("{v:.1e}"),
    }
}

/// A log–log line plot of `series` into an SVG file. An empty plot says so in its caption.
pub fn log_log(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{}: {e:?}", path.display());
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let Some(((x0, x1), (y0, y1))) = bounds(series) else {
        root.titled(&format!("{title}: no measured rows"), ("sans-serif", 22))
            .map_err(e)?;
        root.present().map_err(e)?;
        return Ok(());
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("atoms")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .draw()
        .map_err(e)?;
    for (index, s) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let mut points = s.points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Which latency a plot shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Step,
    ForceCall,
}

impl Metric {
    pub fn of(self, r: &Row) -> Option<f64> {
        match self {
            Metric::Step => r.median_us_per_step,
            Metric::ForceCall => r.median_us_per_force_call,
        }
    }
}

/// One series per configuration (median µs against atoms); baseline rows added when given.
pub fn latency_series(rows: &[Row], baseline: &[Row], metric: Metric) -> Vec<Series> {
    let mut out: Vec<Series> = configs(rows)
        .into_iter()
        .map(|config| Series {
            points: rows
                .iter()
                .filter(|r| r.config == config && r.is_ok())
                .filter_map(|r| metric.of(r).map(|v| (r.atoms as f64, v)))
                .collect(),
            name: config,
        })
        .collect();
    for config in configs(baseline) {
        let points = baseline
            .iter()
            .filter(|r| r.config == config && r.is_ok())
            .filter_map(|r| {
                let (force, step) = baseline_times(r);
                let v = match metric {
                    Metric::Step => step,
                    Metric::ForceCall => force,
                };
                v.map(|v| (r.atoms as f64, v))
            })
            .collect();
        out.push(Series { name: config, points });
    }
    out.retain(|s| !s.points.is_empty());
    out
}

/// Speed-up (MD step medians) of every configuration over `base`, per system; and of mdrun over
/// each baseline configuration.
pub fn speedup_series(rows: &[Row], base: &str, baseline: &[Speedup]) -> Vec<Series> {
    let mut out = Vec::new();
    for config in configs(rows).into_iter().filter(|c| c != base) {
        let points = systems(rows)
            .into_iter()
            .filter_map(|(system, atoms)| {
                let b = find(rows, &system, atoms, base)?.median_us_per_step?;
                let c = find(rows, &system, atoms, &config)?.median_us_per_step?;
                Some((atoms as f64, b / c))
            })
            .collect();
        out.push(Series {
            name: format!("{config} over {base}"),
            points,
        });
    }
    let mut names: Vec<String> = Vec::new();
    for s in baseline {
        if !names.contains(&s.1) {
            names.push(s.1.clone());
        }
    }
    for name in names {
        let rows: Vec<&Speedup> = baseline.iter().filter(|s| s.1 == name).collect();
        // The MD step where the baseline has it, else its force call.
        let (points, what): (Vec<(f64, f64)>, &str) = if rows.iter().any(|s| s.3.is_some()) {
            (
                rows.iter().filter_map(|s| s.3.map(|v| (s.0 as f64, v))).collect(),
                "MD step",
            )
        } else {
            (
                rows.iter().filter_map(|s| s.2.map(|v| (s.0 as f64, v))).collect(),
                "force call",
            )
        };
        out.push(Series {
            name: format!("mdrun over {name} ({what})"),
            points,
        });
    }
    out.retain(|s| !s.points.is_empty());
    out
}
