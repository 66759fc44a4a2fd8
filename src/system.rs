//! Atoms, positions, velocities and the periodic cell; reading structures through chemfiles.

use std::path::Path;
use std::sync::{Mutex, Once};

use crate::cell::{Cell, Vec3};

/// The simulated system. Positions in Å, velocities in Å/fs, masses in amu.
#[derive(Debug, Clone)]
pub struct System {
    pub numbers: Vec<u8>,
    pub symbols: Vec<String>,
    pub masses: Vec<f64>,
    pub positions: Vec<Vec3>,
    /// Velocities read from the structure file, when it has them (Å/fs).
    pub velocities: Option<Vec<Vec3>>,
    /// `None` for an open (non-periodic) system.
    pub cell: Option<Cell>,
}

/// Atomic number and standard atomic mass (amu) of an element symbol, from chemfiles' tables.
pub fn element(symbol: &str) -> Option<(u8, f64)> {
    let atom = chemfiles::Atom::new(symbol);
    let z = atom.atomic_number();
    (z > 0 && z < 119).then(|| (z as u8, atom.mass()))
}

static CHEMFILES_WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Routes chemfiles' warnings into a buffer instead of stderr: the reason a file cannot be read
/// is usually in them, and it belongs in the one-line error that names the file.
fn capture_chemfiles_warnings() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        chemfiles::set_warning_callback(|message| {
            if let Ok(mut w) = CHEMFILES_WARNINGS.lock() {
                w.push(one_line(message));
            }
        })
    });
}

/// chemfiles warnings since the last call.
pub fn take_chemfiles_warnings() -> Vec<String> {
    capture_chemfiles_warnings();
    CHEMFILES_WARNINGS
        .lock()
        .map(|mut w| std::mem::take(&mut *w))
        .unwrap_or_default()
}

/// A chemfiles error on `what`, with the warnings that explain it.
fn chemfiles_error(name: &dyn std::fmt::Display, what: &str, error: &chemfiles::Error) -> String {
    let mut text = format!("{name}: {what}: {}", one_line(&error.to_string()));
    for warning in take_chemfiles_warnings() {
        text += &format!(" ({warning})");
    }
    text
}

impl System {
    /// A system from element symbols and positions (Å): for tests and generated structures.
    pub fn from_symbols(symbols: &[&str], positions: Vec<Vec3>, cell: Option<Cell>) -> Result<System, String> {
        assert_eq!(symbols.len(), positions.len());
        let mut numbers = Vec::new();
        let mut masses = Vec::new();
        for s in symbols {
            let (z, m) = element(s).ok_or_else(|| format!("`{s}` is not an element symbol"))?;
            numbers.push(z);
            masses.push(m);
        }
        Ok(System {
            numbers,
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            masses,
            positions,
            velocities: None,
            cell,
        })
    }

    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }

    /// Reads the first frame of any file chemfiles reads; `format` overrides the guess from the
    /// extension. Errors are one line naming the file.
    pub fn read(path: &Path, format: Option<&str>) -> Result<System, String> {
        let name = path.display();
        take_chemfiles_warnings();
        if !path.is_file() {
            return Err(format!("{name}: no such file"));
        }
        let mut trajectory = match format {
            Some(f) => chemfiles::Trajectory::open_with_format(path, 'r', f),
            None => chemfiles::Trajectory::open(path, 'r'),
        }
        .map_err(|e| chemfiles_error(&name, "chemfiles cannot open it", &e))?;
        let mut frame = chemfiles::Frame::new();
        trajectory
            .read(&mut frame)
            .map_err(|e| chemfiles_error(&name, "chemfiles cannot read a frame", &e))?;
        if frame.size() == 0 {
            return Err(format!("{name}: the structure has no atoms"));
        }
        let mut numbers = Vec::with_capacity(frame.size());
        let mut symbols = Vec::with_capacity(frame.size());
        let mut masses = Vec::with_capacity(frame.size());
        for (index, atom) in frame.iter_atoms().enumerate() {
            let z = atom.atomic_number();
            if z == 0 || z > 118 {
                return Err(format!(
                    "{name}: atom {index} has type `{}`, which is not a chemical element",
                    atom.atomic_type()
                ));
            }
            numbers.push(z as u8);
            symbols.push(atom.atomic_type());
            masses.push(atom.mass());
        }
        let cell = match frame.cell().shape() {
            chemfiles::CellShape::Infinite => None,
            _ => {
                // chemfiles stores the lattice vectors as the columns of its matrix.
                let m = frame.cell().matrix();
                let rows = [
                    [m[0][0], m[1][0], m[2][0]],
                    [m[0][1], m[1][1], m[2][1]],
                    [m[0][2], m[1][2], m[2][2]],
                ];
                Some(Cell::new(rows).map_err(|e| format!("{name}: unit cell: {e}"))?)
            }
        };
        Ok(System {
            numbers,
            symbols,
            masses,
            positions: frame.positions().to_vec(),
            velocities: frame.velocities().map(|v| v.to_vec()),
            cell,
        })
    }

    /// Total mass-weighted velocity removed: zero total momentum.
    pub fn remove_net_momentum(velocities: &mut [Vec3], masses: &[f64]) {
        let total_mass: f64 = masses.iter().sum();
        let mut momentum = [0.0; 3];
        for (v, m) in velocities.iter().zip(masses) {
            for a in 0..3 {
                momentum[a] += m * v[a];
            }
        }
        for v in velocities.iter_mut() {
            for a in 0..3 {
                v[a] -= momentum[a] / total_mass;
            }
        }
    }
}

/// chemfiles errors can span lines; keep error reports to one.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
