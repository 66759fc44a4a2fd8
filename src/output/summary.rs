//! The closing summary of a run: speed and energy conservation.

use super::EnergyRecord;
use crate::units::NS_PER_DAY_PER_FS_PER_S;

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub steps: u64,
    pub wall_seconds: f64,
    pub steps_per_second: f64,
    pub ns_per_day: f64,
    /// (E_end − E_0) / |E_0| · 100 of the conserved energy.
    pub drift_percent: f64,
    /// Slope of a least-squares line through the conserved energy, meV/atom/ps.
    pub drift_mev_per_atom_ps: f64,
    /// max |E(t) − E(0)| of the conserved energy, eV.
    pub max_abs_deviation: f64,
    pub non_finite_seen: bool,
    /// Neighbor-list builds (not counted on the GPU).
    pub neighbor_rebuilds: Option<u64>,
}

impl Summary {
    pub fn new(
        records: &[EnergyRecord],
        n_atoms: usize,
        timestep_fs: f64,
        wall_seconds: f64,
        non_finite_seen: bool,
        neighbor_rebuilds: Option<u64>,
    ) -> Summary {
        let steps = records.last().map_or(0, |r| r.step) - records.first().map_or(0, |r| r.step);
        let steps_per_second = if wall_seconds > 0.0 {
            steps as f64 / wall_seconds
        } else {
            0.0
        };
        let e0 = records.first().map_or(0.0, EnergyRecord::conserved);
        let e_end = records.last().map_or(0.0, EnergyRecord::conserved);
        let drift_percent = if e0 != 0.0 {
            (e_end - e0) / e0.abs() * 100.0
        } else {
            0.0
        };
        let max_abs_deviation = records.iter().map(|r| (r.conserved() - e0).abs()).fold(0.0, f64::max);
        let slope = linear_fit_slope(records.iter().map(|r| (r.time_ps, r.conserved())));
        Summary {
            steps,
            wall_seconds,
            steps_per_second,
            ns_per_day: steps_per_second * timestep_fs * NS_PER_DAY_PER_FS_PER_S,
            drift_percent,
            drift_mev_per_atom_ps: slope * 1000.0 / n_atoms.max(1) as f64,
            max_abs_deviation,
            non_finite_seen,
            neighbor_rebuilds,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "performance: {} steps in {:.3} s: {:.1} steps/s, {:.3} ns/day",
                self.steps, self.wall_seconds, self.steps_per_second, self.ns_per_day
            ),
            format!(
                "energy: drift {:+.3e} % of |E(0)|, {:+.4e} meV/atom/ps (linear fit), max |ΔE| {:.4e} eV",
                self.drift_percent, self.drift_mev_per_atom_ps, self.max_abs_deviation
            ),
            format!(
                "checks: {}{}",
                if self.non_finite_seen {
                    "NaN/Inf FOUND"
                } else {
                    "no NaN/Inf"
                },
                self.neighbor_rebuilds
                    .map(|r| format!("; neighbor list built {r} times"))
                    .unwrap_or_default()
            ),
        ]
    }
}

/// Least-squares slope of y against x (0 with fewer than two points).
pub fn linear_fit_slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.collect();
    if points.len() < 2 {
        return 0.0;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_is_exact() {
        let slope = linear_fit_slope((0..10).map(|i| (i as f64 * 0.1, 3.0 - 2.5 * i as f64 * 0.1)));
        assert!((slope + 2.5).abs() < 1e-12);
    }
}
