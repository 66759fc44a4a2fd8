//! Trajectory frames through chemfiles (XYZ, DCD, and every other format it writes).

use std::path::{Path, PathBuf};

use crate::cell::{Cell, Vec3};
use crate::system::one_line;

/// Checks, before anything is opened, that chemfiles can write `path` (with `format`, if set).
pub fn check_trajectory_format(path: &Path, format: Option<&str>) -> Result<String, String> {
    let name = match format {
        Some(f) => f.to_string(),
        None => chemfiles::guess_format(path).map_err(|e| {
            format!(
                "cannot tell the trajectory format from the extension: {}",
                one_line(&e.to_string())
            )
        })?,
    };
    // guess_format reports compression as "XYZ / GZ"; the format is the first word.
    let base = name.split('/').next().unwrap_or("").trim().to_string();
    match chemfiles::formats_list()
        .into_iter()
        .find(|m| m.name.eq_ignore_ascii_case(&base))
    {
        Some(m) if m.write => Ok(name),
        Some(_) => Err(format!("chemfiles cannot write the {base} format")),
        None => Err(format!("unknown trajectory format `{base}`")),
    }
}

/// Writes every `interval`-th step as a frame with the element names and the cell.
pub struct TrajectoryWriter {
    path: PathBuf,
    trajectory: chemfiles::Trajectory,
    frame: chemfiles::Frame,
    pub interval: u64,
    last_step: Option<u64>,
}

impl TrajectoryWriter {
    pub fn create(
        path: &Path,
        format: Option<&str>,
        interval: u64,
        symbols: &[String],
    ) -> Result<TrajectoryWriter, String> {
        let trajectory = match format {
            Some(f) => chemfiles::Trajectory::open_with_format(path, 'w', f),
            None => chemfiles::Trajectory::open(path, 'w'),
        }
        .map_err(|e| format!("{}: cannot create: {}", path.display(), one_line(&e.to_string())))?;
        let mut frame = chemfiles::Frame::new();
        for symbol in symbols {
            frame.add_atom(&chemfiles::Atom::new(symbol.as_str()), [0.0; 3], None);
        }
        Ok(TrajectoryWriter {
            path: path.to_path_buf(),
            trajectory,
            frame,
            interval,
            last_step: None,
        })
    }

    pub fn is_due(&self, step: u64) -> bool {
        step.is_multiple_of(self.interval)
    }

    /// Writes one frame unless this step was already written.
    pub fn write(&mut self, step: u64, positions: &[Vec3], cell: Option<&Cell>) -> Result<(), String> {
        if self.last_step == Some(step) {
            return Ok(());
        }
        self.frame.positions_mut().copy_from_slice(positions);
        let unit_cell = match cell {
            // chemfiles wants the lattice vectors as columns.
            Some(c) => {
                let v = c.vectors();
                chemfiles::UnitCell::from_matrix([
                    [v[0][0], v[1][0], v[2][0]],
                    [v[0][1], v[1][1], v[2][1]],
                    [v[0][2], v[1][2], v[2][2]],
                ])
            }
            None => chemfiles::UnitCell::infinite(),
        };
        self.frame.set_cell(&unit_cell);
        self.frame.set_step(step as usize);
        self.trajectory.write(&self.frame).map_err(|e| {
            format!(
                "{}: cannot write step {step}: {}",
                self.path.display(),
                one_line(&e.to_string())
            )
        })?;
        self.last_step = Some(step);
        Ok(())
    }
}
