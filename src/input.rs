//! The TOML input file: schema, defaults and validation, with one-line errors naming the file,
//! the key and the reason. Paths in an input are relative to the input file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct InputError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub system: SystemSection,
    pub model: ModelSection,
    pub md: MdSection,
    #[serde(default)]
    pub neighbors: NeighborSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    /// Switches of the GPU path (ignored on the CPU).
    pub gpu: crate::gpu::md::GpuOptions,
    /// Where this input was read from; paths resolve against its directory.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSection {
    /// Structure file, any format chemfiles reads.
    pub file: PathBuf,
    /// chemfiles format name (`XYZ`, `PDB`, ...), when the extension does not tell.
    pub format: Option<String>,
    /// Periodic cell in Å: `[a, b, c]` (orthorhombic) or three lattice vectors. Overrides the file.
    pub cell: Option<CellSpec>,
    /// `false` makes the system open even when the file has a cell. Default: periodic when a cell
    /// is given here or in the file.
    pub periodic: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CellSpec {
    Lengths([f64; 3]),
    Vectors([[f64; 3]; 3]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// mdrun-painn safetensors file (docs/model-format.md).
    pub file: PathBuf,
    #[serde(default)]
    pub device: Device,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensemble {
    Nve,
    Nvt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InitialVelocities {
    #[default]
    MaxwellBoltzmann,
    File,
}

fn default_max_force() -> f64 {
    1000.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdSection {
    pub ensemble: Ensemble,
    pub timestep_fs: f64,
    pub steps: u64,
    /// Initial (Maxwell–Boltzmann) and, for NVT, thermostat temperature in K.
    pub temperature_k: f64,
    /// Langevin friction γ in 1/ps (NVT only).
    pub friction_per_ps: Option<f64>,
    pub seed: u64,
    #[serde(default)]
    pub initial_velocities: InitialVelocities,
    /// The run stops (an explosion) when any force exceeds this, in eV/Å.
    #[serde(default = "default_max_force")]
    pub max_force_ev_per_angstrom: f64,
}

fn default_skin() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborSection {
    /// Verlet skin in Å: pairs within cutoff + skin are kept, rebuilt after a move of skin/2.
    #[serde(default = "default_skin")]
    pub skin_angstrom: f64,
}

impl Default for NeighborSection {
    fn default() -> Self {
        NeighborSection {
            skin_angstrom: default_skin(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Trajectory files; the format follows the extension (`.xyz`, `.dcd`, ...) unless given.
    #[serde(default)]
    pub trajectory: Vec<TrajectoryOutput>,
    pub energy: Option<EnergyOutput>,
    /// Plain-text run log (progress lines and the closing summary).
    pub log: Option<PathBuf>,
    /// Restart file: written every `interval` steps, at the end, and on SIGINT/SIGTERM.
    pub restart: Option<RestartOutput>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartOutput {
    pub file: PathBuf,
    /// Steps between restart files; none: only at the end (and on a signal).
    pub interval: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrajectoryOutput {
    pub file: PathBuf,
    pub interval: u64,
    pub format: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyOutput {
    pub file: PathBuf,
    pub interval: u64,
}

impl Input {
    /// Reads and checks an input file: syntax, unknown keys, types and value ranges. Files it
    /// names are checked for existence here; their contents are checked by their readers.
    pub fn read(path: &Path) -> Result<Input, InputError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| InputError {
            file: file.clone(),
            key: "(file)".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Input::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Input, InputError> {
        let file = path.display().to_string();
        let mut input: Input = toml::from_str(text).map_err(|e| {
            let location = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(document)".into());
            InputError {
                file: file.clone(),
                key: location,
                reason: crate::system::one_line(e.message()),
            }
        })?;
        input.path = path.to_path_buf();
        input.validate()?;
        Ok(input)
    }

    fn error(&self, key: &str, reason: impl Into<String>) -> InputError {
        InputError {
            file: self.path.display().to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A path named in this input, resolved against the input file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(path)
        }
    }

    /// Every output file this input names, resolved.
    pub fn output_paths(&self) -> Vec<PathBuf> {
        let out = &self.output;
        out.trajectory
            .iter()
            .map(|t| &t.file)
            .chain(out.energy.as_ref().map(|e| &e.file))
            .chain(out.log.as_ref())
            .chain(out.restart.as_ref().map(|r| &r.file))
            .map(|p| self.resolve(p))
            .collect()
    }

    fn validate(&self) -> Result<(), InputError> {
        if self.gpu.graph_steps == 0 {
            return Err(self.error("gpu.graph_steps", "must be ≥ 1 step"));
        }
        let md = &self.md;
        let positive = |key: &str, value: f64| -> Result<(), InputError> {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(self.error(key, format!("must be a positive number, got {value}")))
            }
        };
        positive("md.timestep_fs", md.timestep_fs)?;
        if md.timestep_fs > 10.0 {
            return Err(self.error(
                "md.timestep_fs",
                format!("{} fs is far beyond a stable MD timestep (≤ 10 fs)", md.timestep_fs),
            ));
        }
        if !(md.temperature_k.is_finite() && md.temperature_k >= 0.0) {
            return Err(self.error("md.temperature_k", format!("must be ≥ 0 K, got {}", md.temperature_k)));
        }
        positive("md.max_force_ev_per_angstrom", md.max_force_ev_per_angstrom)?;
        match (md.ensemble, md.friction_per_ps) {
            (Ensemble::Nvt, None) => {
                return Err(self.error(
                    "md.friction_per_ps",
                    "is required for ensemble = \"nvt\" (Langevin friction in 1/ps)",
                ))
            }
            (Ensemble::Nvt, Some(gamma)) => positive("md.friction_per_ps", gamma)?,
            (Ensemble::Nve, Some(_)) => {
                return Err(self.error(
                    "md.friction_per_ps",
                    "applies to ensemble = \"nvt\" only; remove it for NVE",
                ))
            }
            (Ensemble::Nve, None) => {}
        }
        if !(self.neighbors.skin_angstrom.is_finite() && self.neighbors.skin_angstrom >= 0.0) {
            return Err(self.error(
                "neighbors.skin_angstrom",
                format!("must be ≥ 0 Å, got {}", self.neighbors.skin_angstrom),
            ));
        }
        match &self.system.cell {
            Some(CellSpec::Lengths(l)) if l.iter().any(|x| !(x.is_finite() && *x > 0.0)) => {
                return Err(self.error("system.cell", format!("lengths must be positive, got {l:?}")));
            }
            Some(_) if self.system.periodic == Some(false) => {
                return Err(self.error("system.cell", "is given but system.periodic = false"));
            }
            _ => {}
        }
        for (key, file) in [("system.file", &self.system.file), ("model.file", &self.model.file)] {
            if !self.resolve(file).is_file() {
                return Err(self.error(key, format!("no such file: {}", self.resolve(file).display())));
            }
        }
        let mut outputs: Vec<(String, PathBuf)> = Vec::new();
        for (index, t) in self.output.trajectory.iter().enumerate() {
            let key = format!("output.trajectory[{index}]");
            if t.interval == 0 {
                return Err(self.error(&format!("{key}.interval"), "must be ≥ 1 step"));
            }
            outputs.push((format!("{key}.file"), self.resolve(&t.file)));
        }
        if let Some(e) = &self.output.energy {
            if e.interval == 0 {
                return Err(self.error("output.energy.interval", "must be ≥ 1 step"));
            }
            outputs.push(("output.energy.file".into(), self.resolve(&e.file)));
        }
        if let Some(log) = &self.output.log {
            outputs.push(("output.log".into(), self.resolve(log)));
        }
        if let Some(r) = &self.output.restart {
            if r.interval == Some(0) {
                return Err(self.error("output.restart.interval", "must be ≥ 1 step"));
            }
            outputs.push(("output.restart.file".into(), self.resolve(&r.file)));
        }
        for (index, (key, path)) in outputs.iter().enumerate() {
            if outputs[..index].iter().any(|(_, other)| other == path) {
                return Err(self.error(key, format!("{} is named twice among the outputs", path.display())));
            }
            for (input_key, input_file) in [("system.file", &self.system.file), ("model.file", &self.model.file)] {
                if self.resolve(input_file) == *path {
                    return Err(self.error(key, format!("would overwrite the input {input_key}")));
                }
            }
            if path.is_dir() {
                return Err(self.error(key, format!("{} is a directory", path.display())));
            }
            // Missing directories are created at the start of the run; an existing ancestor must
            // be a directory.
            if let Some(existing) = path.ancestors().skip(1).find(|a| a.exists()) {
                if !existing.is_dir() {
                    return Err(self.error(key, format!("{} is not a directory", existing.display())));
                }
            }
        }
        Ok(())
    }
}
