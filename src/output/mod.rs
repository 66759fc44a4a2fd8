//! What a run writes: trajectories, the energy log, the plain-text run log and the summary.

mod energy_log;
pub mod summary;
mod trajectory;

pub use energy_log::{EnergyLog, EnergyRecord};
pub use summary::Summary;
pub use trajectory::{check_trajectory_format, TrajectoryWriter};
