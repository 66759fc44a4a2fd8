//! The energy log: one CSV line per logged step, flushed as written so a crash loses nothing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One logged step. Energies in eV, temperature in K, forces in eV/Å.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyRecord {
    pub step: u64,
    pub time_ps: f64,
    pub potential: f64,
    pub kinetic: f64,
    pub temperature: f64,
    /// Energy the thermostat removed so far (eV), zero in NVE: E_tot + this is conserved.
    pub thermostat_work: f64,
    pub max_force: f64,
    pub rms_force: f64,
}

impl EnergyRecord {
    pub fn total(&self) -> f64 {
        self.potential + self.kinetic
    }
    /// E_tot for NVE; E_tot plus the energy the thermostat took out for NVT.
    pub fn conserved(&self) -> f64 {
        self.total() + self.thermostat_work
    }
}

pub struct EnergyLog {
    path: PathBuf,
    writer: BufWriter<File>,
    pub interval: u64,
    n_atoms: usize,
    reference: Option<f64>,
}

pub const HEADER: &str = "step,time_ps,e_pot_ev,e_kin_ev,e_tot_ev,temperature_k,drift_per_atom_ev,e_conserved_ev,max_force_ev_per_a,rms_force_ev_per_a";

impl EnergyLog {
    pub fn create(path: &Path, interval: u64, n_atoms: usize) -> Result<EnergyLog, String> {
        let file = File::create(path).map_err(|e| format!("{}: cannot create: {e}", path.display()))?;
        let mut log = EnergyLog {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
            interval,
            n_atoms,
            reference: None,
        };
        log.line(HEADER)?;
        Ok(log)
    }

    /// Continues an existing log (a restart): no header; the drift column keeps measuring from
    /// `reference`, the conserved energy (eV) of the original first line.
    pub fn append(path: &Path, interval: u64, n_atoms: usize, reference: Option<f64>) -> Result<EnergyLog, String> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: cannot open to append: {e}", path.display()))?;
        Ok(EnergyLog {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
            interval,
            n_atoms,
            reference,
        })
    }

    /// The conserved energy the drift column is measured from, once a line was written.
    pub fn reference(&self) -> Option<f64> {
        self.reference
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk (every line is flushed as written).
    pub fn bytes_on_disk(&self) -> Result<u64, String> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    pub fn is_due(&self, step: u64) -> bool {
        step.is_multiple_of(self.interval)
    }

    fn line(&mut self, text: &str) -> Result<(), String> {
        writeln!(self.writer, "{text}")
            .and_then(|_| self.writer.flush())
            .map_err(|e| format!("{}: cannot write: {e}", self.path.display()))
    }

    /// Appends a record; `drift_per_atom_ev` is the conserved energy's change since the first
    /// record, per atom.
    pub fn write(&mut self, r: &EnergyRecord) -> Result<(), String> {
        let reference = *self.reference.get_or_insert(r.conserved());
        let drift = (r.conserved() - reference) / self.n_atoms as f64;
        let text = format!(
            "{},{:.6},{:.10e},{:.10e},{:.10e},{:.4},{:.6e},{:.10e},{:.6e},{:.6e}",
            r.step,
            r.time_ps,
            r.potential,
            r.kinetic,
            r.total(),
            r.temperature,
            drift,
            r.conserved(),
            r.max_force,
            r.rms_force
        );
        self.line(&text)
    }
}
