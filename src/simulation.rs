//! A run from an input file: set-up with every check done before any output exists, then the
//! MD loop, which stops cleanly (logs flushed, last good frame written) when something breaks.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::cell::{Cell, Vec3};
use crate::engine::{check, force_norms, CpuEngine, Engine, Failure, GpuEngine, Snapshot};
use crate::gpu::forces::kernel_sizes;
use crate::gpu::Gpu;
use crate::input::{CellSpec, Device, Ensemble, InitialVelocities, Input};
use crate::integrate::{maxwell_boltzmann, temperature, Integrator};
use crate::model::PainnModel;
use crate::neighbors::closest_pair_below;
use crate::output::{check_trajectory_format, EnergyLog, EnergyRecord, Summary, TrajectoryWriter};
use crate::system::System;
use crate::units::FS_PER_PS;

/// Atoms closer than this (Å) are refused: no ML potential is trained there, and it is almost
/// always a broken structure or a wrong unit.
pub const MIN_INTERATOMIC_DISTANCE: f64 = 0.5;

/// Everything a run needs, checked. Building it reads and writes nothing but the inputs.
pub struct Prepared {
    pub input: Input,
    pub system: System,
    pub model: PainnModel,
    pub integrator: Integrator,
    pub velocities: Vec<Vec3>,
    pub trajectory_formats: Vec<String>,
    /// Run on the GPU (resolved from `model.device`).
    pub use_gpu: bool,
}

/// Resolves `model.device`: `cuda` must work or the input is refused; `auto` takes the GPU when
/// one is usable and the model fits the kernels, else the CPU.
pub fn resolve_device(device: Device, model: &PainnModel) -> Result<bool, String> {
    match device {
        Device::Cpu => Ok(false),
        Device::Cuda => {
            kernel_sizes(model, 1).map_err(|e| e.to_string())?;
            if Gpu::available() {
                Ok(true)
            } else {
                Err("\"cuda\" was asked for, but no CUDA device or driver is available".into())
            }
        }
        Device::Auto => Ok(kernel_sizes(model, 1).is_ok() && Gpu::available()),
    }
}

/// Model-dependent checks of a structure: elements, finite coordinates, close contacts, cell.
pub fn check_structure(system: &System, model: &PainnModel, model_path: &Path, source: &str) -> Result<()> {
    for (index, z) in system.numbers.iter().enumerate() {
        if !model.knows_element(*z) {
            let known: Vec<String> = model.config.elements.iter().map(|z| z.to_string()).collect();
            bail!(
                "{source}: atom {index} is {} (Z = {z}), an element the model {} does not know (it knows Z = {})",
                system.symbols[index],
                model_path.display(),
                known.join(", ")
            );
        }
    }
    if let Some(index) = system.positions.iter().position(|r| !r.iter().all(|x| x.is_finite())) {
        bail!("{source}: atom {index} has a NaN or infinite coordinate");
    }
    if let Some(cell) = &system.cell {
        let widths = cell.perpendicular_widths();
        let narrowest = widths.iter().cloned().fold(f64::INFINITY, f64::min);
        if narrowest < model.cutoff() {
            bail!(
                "{source}: the periodic cell is {narrowest:.3} Å across, smaller than the model cutoff {} Å: an atom would interact with its own image",
                model.cutoff()
            );
        }
    }
    if let Some((i, j, d)) = closest_pair_below(&system.positions, system.cell.as_ref(), MIN_INTERATOMIC_DISTANCE) {
        bail!("{source}: atoms {i} and {j} are {d:.3} Å apart, closer than {MIN_INTERATOMIC_DISTANCE} Å");
    }
    Ok(())
}

/// Applies the input's cell settings to a structure read from a file.
fn apply_cell(input: &Input, system: &mut System) -> Result<()> {
    let file = input.path.display();
    if let Some(spec) = &input.system.cell {
        let cell = match spec {
            CellSpec::Lengths(l) => Cell::orthorhombic(*l),
            CellSpec::Vectors(v) => Cell::new(*v),
        };
        system.cell = Some(cell.map_err(|e| anyhow!("{file}: system.cell: {e}"))?);
    }
    match input.system.periodic {
        Some(false) => system.cell = None,
        Some(true) if system.cell.is_none() => {
            bail!("{file}: system.periodic: true, but neither system.cell nor the structure file gives a cell")
        }
        _ => {}
    }
    Ok(())
}

impl Prepared {
    pub fn from_input_file(path: &Path) -> Result<Prepared> {
        let input = Input::read(path)?;
        let file = input.path.display().to_string();
        let system_path = input.resolve(&input.system.file);
        let mut system = System::read(&system_path, input.system.format.as_deref()).map_err(|e| anyhow!(e))?;
        apply_cell(&input, &mut system)?;
        let model_path = input.resolve(&input.model.file);
        let model = PainnModel::load(&model_path)?;
        let use_gpu = resolve_device(input.model.device, &model).map_err(|e| anyhow!("{file}: model.device: {e}"))?;
        check_structure(&system, &model, &model_path, &system_path.display().to_string())?;
        let md = &input.md;
        let integrator = match md.ensemble {
            Ensemble::Nve => Integrator::VelocityVerlet {
                timestep_fs: md.timestep_fs,
            },
            Ensemble::Nvt => Integrator::Langevin {
                timestep_fs: md.timestep_fs,
                temperature_k: md.temperature_k,
                friction_per_ps: md.friction_per_ps.expect("validated"),
                seed: md.seed,
            },
        };
        let velocities = match md.initial_velocities {
            InitialVelocities::MaxwellBoltzmann => maxwell_boltzmann(
                &system.masses,
                md.temperature_k,
                integrator.degrees_of_freedom(system.len()),
                md.seed,
            ),
            InitialVelocities::File => system.velocities.clone().ok_or_else(|| {
                anyhow!(
                    "{file}: md.initial_velocities: \"file\", but {} has no velocities",
                    system_path.display()
                )
            })?,
        };
        let mut trajectory_formats = Vec::new();
        for (index, t) in input.output.trajectory.iter().enumerate() {
            let format = check_trajectory_format(&input.resolve(&t.file), t.format.as_deref())
                .map_err(|e| anyhow!("{file}: output.trajectory[{index}].file: {e}"))?;
            trajectory_formats.push(format);
        }
        Ok(Prepared {
            input,
            system,
            model,
            integrator,
            velocities,
            trajectory_formats,
            use_gpu,
        })
    }
}

/// The plain-text run log; lines also go to stdout when no progress bar owns the terminal.
struct RunLog {
    file: Option<BufWriter<File>>,
    echo: bool,
}

impl RunLog {
    fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            // A log that cannot be written must not kill the run it describes.
            let _ = writeln!(f, "{text}").and_then(|_| f.flush());
        }
        if self.echo {
            println!("{text}");
        }
    }
}

/// Outcome of a run: its summary, or the reason it stopped (after the summary was written).
pub struct RunReport {
    pub summary: Summary,
    pub failure: Option<String>,
    pub outputs: Vec<PathBuf>,
    pub device: String,
}

/// Everything a run writes, and when.
struct Outputs {
    trajectories: Vec<TrajectoryWriter>,
    energy_log: Option<EnergyLog>,
    log: RunLog,
    records: Vec<EnergyRecord>,
    cell: Option<Cell>,
    masses_dof: usize,
    timestep_fs: f64,
}

impl Outputs {
    /// The first step after `step` at which any output is due (or `last`).
    fn next_due(&self, step: u64, last: u64) -> u64 {
        let intervals = self
            .trajectories
            .iter()
            .map(|t| t.interval)
            .chain(self.energy_log.as_ref().map(|e| e.interval));
        intervals.map(|i| (step / i + 1) * i).min().unwrap_or(last).min(last)
    }

    /// Writes what is due at this snapshot's step (everything when `force`).
    fn write(&mut self, snap: &Snapshot, force: bool) -> Result<()> {
        let (max_force, rms_force) = force_norms(&snap.forces);
        let record = EnergyRecord {
            step: snap.step,
            time_ps: snap.step as f64 * self.timestep_fs / FS_PER_PS,
            potential: snap.potential,
            kinetic: snap.kinetic,
            temperature: temperature(snap.kinetic, self.masses_dof),
            thermostat_work: snap.thermostat_work,
            max_force,
            rms_force,
        };
        let due = self.energy_log.as_ref().is_some_and(|l| l.is_due(snap.step));
        let already = self.records.last().is_some_and(|r| r.step == snap.step);
        if (due || force || self.records.is_empty()) && !already {
            self.records.push(record);
            if let Some(l) = &mut self.energy_log {
                l.write(&record).map_err(|e| anyhow!(e))?;
            }
            self.log.line(&format!(
                "step {:>10}  t = {:>10.4} ps  E_pot = {:>16.8} eV  E_kin = {:>12.6} eV  E_tot = {:>16.8} eV  T = {:>8.2} K  max|F| = {:.3} eV/Å",
                record.step,
                record.time_ps,
                record.potential,
                record.kinetic,
                record.total(),
                record.temperature,
                record.max_force
            ));
        }
        for t in self.trajectories.iter_mut() {
            if force || t.is_due(snap.step) {
                t.write(snap.step, &snap.positions, self.cell.as_ref())
                    .map_err(|e| anyhow!(e))?;
            }
        }
        Ok(())
    }
}

pub fn run(prepared: Prepared) -> Result<RunReport> {
    let Prepared {
        input,
        system,
        model,
        integrator,
        velocities,
        trajectory_formats,
        use_gpu,
    } = prepared;
    let n = system.len();
    let show_progress = std::io::stderr().is_terminal();
    let md = &input.md;

    // The engine first: a GPU that fails to start must not cost the user their old outputs.
    let skin = input.neighbors.skin_angstrom;
    let trained = model.trained;
    let model_summary = format!(
        "model: {} (F = {}, T = {}, K = {}, cutoff {} Å){}",
        input.resolve(&input.model.file).display(),
        model.config.n_atom_basis,
        model.config.n_interactions,
        model.config.n_rbf,
        model.cutoff(),
        if trained {
            ""
        } else {
            " — UNTRAINED (random weights): the dynamics are not physical"
        }
    );
    let mut engine: Box<dyn Engine> = if use_gpu {
        Box::new(
            GpuEngine::new(&model, &system, &velocities, &integrator, skin, input.gpu)
                .context("starting the GPU engine")?,
        )
    } else {
        Box::new(CpuEngine::new(model, &system, velocities, integrator.clone(), skin))
    };

    // Outputs: created only now, after every check has passed.
    for path in input.output_paths() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
    }
    let mut paths = Vec::new();
    let mut trajectories = Vec::new();
    for (t, format) in input.output.trajectory.iter().zip(&trajectory_formats) {
        let path = input.resolve(&t.file);
        let explicit = t.format.as_deref().map(|_| format.as_str());
        trajectories
            .push(TrajectoryWriter::create(&path, explicit, t.interval, &system.symbols).map_err(|e| anyhow!(e))?);
        paths.push(path);
    }
    let energy_log = match &input.output.energy {
        Some(e) => {
            let path = input.resolve(&e.file);
            paths.push(path.clone());
            Some(EnergyLog::create(&path, e.interval, n).map_err(|e| anyhow!(e))?)
        }
        None => None,
    };
    let mut log = RunLog {
        file: None,
        echo: !show_progress,
    };
    if let Some(path) = &input.output.log {
        let path = input.resolve(path);
        let file = File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
        log.file = Some(BufWriter::new(file));
        paths.push(path);
    }
    let dof = integrator.degrees_of_freedom(n);
    log.line(&format!(
        "mdrun {} — input {}",
        env!("CARGO_PKG_VERSION"),
        input.path.display()
    ));
    log.line(&format!(
        "system: {} atoms from {}, {}",
        n,
        input.resolve(&input.system.file).display(),
        match &system.cell {
            Some(c) => format!("periodic cell {:?} Å", c.vectors()),
            None => "open boundaries".into(),
        }
    ));
    log.line(&model_summary);
    log.line(&format!(
        "md: {:?}, dt = {} fs, {} steps, T = {} K, seed = {}, {} degrees of freedom, skin {} Å",
        md.ensemble, md.timestep_fs, md.steps, md.temperature_k, md.seed, dof, skin
    ));
    log.line(&format!("device: {}", engine.description()));
    if !trained && show_progress {
        eprintln!(
            "warning: {} is an untrained model (random weights): the dynamics are not physical",
            input.model.file.display()
        );
    }
    let mut outputs = Outputs {
        trajectories,
        energy_log,
        log,
        records: Vec::new(),
        cell: system.cell,
        masses_dof: dof,
        timestep_fs: md.timestep_fs,
    };

    let progress = if show_progress {
        let bar = indicatif::ProgressBar::new(md.steps);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} steps {per_sec} {msg} (eta {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let start = engine.snapshot()?;
    let mut failure: Option<Failure> = check(&start, md.max_force_ev_per_angstrom).map(|why| Failure {
        reason: format!("the starting structure is not usable: {}", why.reason),
        ..why
    });
    let started = Instant::now();
    if failure.is_none() {
        outputs.write(&start, false)?;
        // Chunks end at output steps, and at least every 1,000 steps for the progress bar.
        while engine.step() < md.steps {
            let step = engine.step();
            let target = outputs.next_due(step, md.steps).min(step + 1000);
            failure = engine.advance(target - step, md.max_force_ev_per_angstrom)?;
            let snap = engine.snapshot()?;
            if failure.is_some() {
                break;
            }
            outputs.write(&snap, false)?;
            progress.set_position(snap.step);
            if let Some(r) = outputs.records.last() {
                progress.set_message(format!("E_tot {:.6} eV, T {:.1} K", r.total(), r.temperature));
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    // The last good state always ends the trajectories and the energy log.
    let last_good = engine.snapshot()?;
    outputs.write(&last_good, true)?;
    if let Some(why) = &failure {
        outputs.log.line(&format!(
            "STOPPED: {}; the last good frame (step {}) was written",
            why.reason, last_good.step
        ));
    }
    let non_finite = failure.as_ref().is_some_and(|f| f.non_finite);
    let summary = Summary::new(
        &outputs.records,
        n,
        md.timestep_fs,
        wall,
        non_finite,
        engine.neighbor_rebuilds(),
    );
    for line in summary.lines() {
        outputs.log.line(&line);
    }
    if outputs.log.file.is_some() && !outputs.log.echo {
        for line in summary.lines() {
            println!("{line}");
        }
    }
    Ok(RunReport {
        summary,
        failure: failure.map(|f| f.reason),
        outputs: paths,
        device: engine.description(),
    })
}
