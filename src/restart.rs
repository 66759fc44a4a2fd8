//! Restart files: everything a run needs to continue from a step as if it had never stopped.
//!
//! JSON, versioned. f64 values round-trip exactly (serde_json's `float_roundtrip` parser), so a
//! CPU run continued from a restart file is bit for bit the uninterrupted one. The random state
//! is the seed alone: the Langevin noise is counter-based (Philox, src/rng.rs), a pure function of
//! (seed, step, atom), so seed + step is the whole generator state.
//!
//! Written atomically: to `FILE.tmp`, fsync, rename over `FILE`, fsync the directory; a run killed
//! at any moment leaves either the old restart file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cell::Vec3;
use crate::engine::Snapshot;

pub const FORMAT: &str = "mdrun-restart";
pub const VERSION: u32 = 1;

/// What identifies the run a restart file belongs to (FNV-1a 64-bit hashes, hex). Not a
/// cryptographic hash: it catches the wrong input, model or structure, not an adversary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The input TOML as parsed, with comments, layout, `md.steps`, `model.device` and `[gpu]`
    /// ignored: a run can be extended by raising `md.steps`, and continued on another device.
    pub input: String,
    /// The model file's bytes.
    pub model: String,
    /// The structure file's bytes (masses, elements and cell come from it on a restart).
    pub structure: String,
}

/// The CPU neighbor list between builds: the candidate pairs (and so the pair order) follow
/// from the positions of the last build, and the next build from the displacements since then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborState {
    /// Positions (Å, wrapped into the cell) at the last build.
    pub reference: Vec<Vec3>,
    pub rebuilds: u64,
}

/// Byte length of an output file when the restart file was written (after a flush): a restart
/// truncates the file back to it, so frames written after the checkpoint are not duplicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLength {
    pub file: PathBuf,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub format: String,
    pub version: u32,
    pub fingerprint: Fingerprint,
    /// `cpu` or `cuda`: a restart continues on either, but only CPU → CPU is bit for bit.
    pub device: String,
    pub step: u64,
    pub seed: u64,
    /// Positions in Å (wrapped at neighbor builds only, as in the run), velocities in Å/fs.
    pub positions: Vec<Vec3>,
    pub velocities: Vec<Vec3>,
    /// Forces (eV/Å) and potential energy (eV) at `step`: velocity Verlet continues with them
    /// without recomputing.
    pub forces: Vec<Vec3>,
    pub potential: f64,
    /// Energy the thermostat removed since step 0 (eV).
    pub thermostat_work: f64,
    /// The conserved energy of the run's first logged step (eV): the energy log's drift column
    /// is measured from it.
    pub energy_reference: Option<f64>,
    /// CPU runs only: the neighbor list state (the GPU rebuilds its list on a restart).
    pub neighbors: Option<NeighborState>,
    /// Trajectories and the energy log, in the input's order.
    pub outputs: Vec<OutputLength>,
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl Fingerprint {
    /// Hashes the input file (parsed, `md.steps` removed), the model file and the structure file.
    pub fn of(input_path: &Path, model_path: &Path, structure_path: &Path) -> Result<Fingerprint> {
        let text =
            std::fs::read_to_string(input_path).with_context(|| format!("{}: cannot read", input_path.display()))?;
        let mut value: toml::Table = toml::from_str(&text).with_context(|| format!("{}", input_path.display()))?;
        if let Some(toml::Value::Table(md)) = value.get_mut("md") {
            md.remove("steps");
        }
        // The device may change: a restart continues on the CPU or the GPU alike.
        if let Some(toml::Value::Table(model)) = value.get_mut("model") {
            model.remove("device");
        }
        value.remove("gpu");
        let canonical = toml::to_string(&value).context("re-serializing the input")?;
        let bytes = |p: &Path| std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()));
        Ok(Fingerprint {
            input: fnv1a(canonical.as_bytes()),
            model: fnv1a(&bytes(model_path)?),
            structure: fnv1a(&bytes(structure_path)?),
        })
    }
}

impl Restart {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fingerprint: Fingerprint,
        device: &str,
        seed: u64,
        snapshot: &Snapshot,
        energy_reference: Option<f64>,
        neighbors: Option<NeighborState>,
        outputs: Vec<OutputLength>,
    ) -> Restart {
        Restart {
            format: FORMAT.into(),
            version: VERSION,
            fingerprint,
            device: device.into(),
            step: snapshot.step,
            seed,
            positions: snapshot.positions.clone(),
            velocities: snapshot.velocities.clone(),
            forces: snapshot.forces.clone(),
            potential: snapshot.potential,
            thermostat_work: snapshot.thermostat_work,
            energy_reference,
            neighbors,
            outputs,
        }
    }

    /// The state as a snapshot (the kinetic energy is left for the engine to compute).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            step: self.step,
            positions: self.positions.clone(),
            velocities: self.velocities.clone(),
            forces: self.forces.clone(),
            potential: self.potential,
            kinetic: 0.0,
            thermostat_work: self.thermostat_work,
        }
    }

    /// Reads a restart file and checks its format, version and array sizes.
    pub fn read(path: &Path) -> Result<Restart> {
        let file = path.display();
        let text = std::fs::read_to_string(path).with_context(|| format!("{file}: cannot read the restart file"))?;
        let restart: Restart =
            serde_json::from_str(&text).with_context(|| format!("{file}: not a readable mdrun restart file"))?;
        if restart.format != FORMAT {
            bail!("{file}: not an mdrun restart file (format `{}`)", restart.format);
        }
        if restart.version != VERSION {
            bail!(
                "{file}: restart format version {} is not the version this mdrun reads ({VERSION})",
                restart.version
            );
        }
        let n = restart.positions.len();
        if restart.velocities.len() != n || restart.forces.len() != n {
            bail!("{file}: positions, velocities and forces have different lengths");
        }
        if let Some(nl) = &restart.neighbors {
            if nl.reference.len() != n {
                bail!(
                    "{file}: the neighbor-list state has {} atoms, the positions {n}",
                    nl.reference.len()
                );
            }
        }
        Ok(restart)
    }

    /// Refuses a restart file written for another input, model or structure.
    pub fn check(&self, path: &Path, expected: &Fingerprint, n_atoms: usize) -> Result<()> {
        let file = path.display();
        let (mine, want) = (&self.fingerprint, expected);
        for (what, a, b) in [
            ("input file", &mine.input, &want.input),
            ("model file", &mine.model, &want.model),
            ("structure file", &mine.structure, &want.structure),
        ] {
            if a != b {
                bail!("{file}: this restart file was written for another {what} (hash {a}, now {b})");
            }
        }
        if self.positions.len() != n_atoms {
            bail!(
                "{file}: the restart file has {} atoms, the structure {n_atoms}",
                self.positions.len()
            );
        }
        Ok(())
    }

    /// Writes atomically: a temporary file beside `path`, fsync, rename, fsync of the directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        let file = path.display();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_string(self).context("serializing the restart state")?;
        {
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("{file}: cannot rename {} over it", tmp.display()))?;
        // The rename itself is durable only once the directory is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Cuts an output back to its length at the checkpoint. A file shorter than that was replaced or
/// damaged since: refused, as continuing it would leave a hole in the trajectory.
pub fn truncate_output(restart_file: &Path, path: &Path, bytes: u64) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| {
            format!(
                "{}: cannot continue {}: it is missing",
                restart_file.display(),
                path.display()
            )
        })?
        .len();
    if len < bytes {
        bail!(
            "{}: cannot continue {}: it has {len} bytes, fewer than the {bytes} it had at the checkpoint",
            restart_file.display(),
            path.display(),
        );
    }
    if len > bytes {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("{}: cannot open to truncate", path.display()))?;
        f.set_len(bytes)
            .with_context(|| format!("{}: cannot truncate", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f64_values_round_trip_exactly_through_json() {
        let values = [
            0.1,
            1.0 / 3.0,
            -2.5e-300,
            1.7976931348623157e300,
            5e-324,
            -0.0,
            123456.78901234568,
        ];
        let state = NeighborState {
            reference: values.iter().map(|x| [*x, x * 7.1, -x / 3.3]).collect(),
            rebuilds: 3,
        };
        let back: NeighborState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        for (a, b) in state.reference.iter().flatten().zip(back.reference.iter().flatten()) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), "cbf29ce484222325");
        assert_eq!(fnv1a(b"a"), "af63dc4c8601ec8c");
    }
}
