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
    format: Option<String>,
    /// Always Some, except for the moment `sync` closes and reopens it.
    trajectory: Option<chemfiles::Trajectory>,
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
        TrajectoryWriter::open(path, format, interval, symbols, None)
    }

    /// Continues an existing trajectory (a restart) whose last frame is `last_step`'s.
    pub fn append(
        path: &Path,
        format: Option<&str>,
        interval: u64,
        symbols: &[String],
        last_step: u64,
    ) -> Result<TrajectoryWriter, String> {
        TrajectoryWriter::open(path, format, interval, symbols, Some(last_step))
    }

    fn open_file(path: &Path, format: Option<&str>, mode: char) -> Result<chemfiles::Trajectory, String> {
        match format {
            Some(f) => chemfiles::Trajectory::open_with_format(path, mode, f),
            None => chemfiles::Trajectory::open(path, mode),
        }
        .map_err(|e| format!("{}: cannot open: {}", path.display(), one_line(&e.to_string())))
    }

    fn open(
        path: &Path,
        format: Option<&str>,
        interval: u64,
        symbols: &[String],
        last_step: Option<u64>,
    ) -> Result<TrajectoryWriter, String> {
        let mode = if last_step.is_some() { 'a' } else { 'w' };
        let trajectory = TrajectoryWriter::open_file(path, format, mode)?;
        let mut frame = chemfiles::Frame::new();
        for symbol in symbols {
            frame.add_atom(&chemfiles::Atom::new(symbol.as_str()), [0.0; 3], None);
        }
        Ok(TrajectoryWriter {
            path: path.to_path_buf(),
            format: format.map(str::to_string),
            trajectory: Some(trajectory),
            frame,
            interval,
            last_step,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts every frame written so far on disk (chemfiles buffers and has no flush: the file is
    /// closed and opened again to append) and returns the file's length in bytes.
    pub fn sync(&mut self) -> Result<u64, String> {
        drop(self.trajectory.take());
        self.trajectory = Some(TrajectoryWriter::open_file(&self.path, self.format.as_deref(), 'a')?);
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", self.path.display()))
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
        let trajectory = self.trajectory.as_mut().expect("open between calls");
        trajectory.write(&self.frame).map_err(|e| {
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
