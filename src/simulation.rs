//! A run from an input file: set-up with every check done before any output exists, then the
//! MD loop, which stops cleanly (logs flushed, last good frame written) when something breaks.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
use crate::restart::{truncate_output, Fingerprint, OutputLength, Restart};
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
    /// Stopped early by the stop flag (SIGINT/SIGTERM); the restart file, if any, was written.
    pub interrupted: bool,
}

/// How a run is started and stopped from outside: a restart file to continue from, and a flag a
/// signal handler sets to stop it cleanly.
#[derive(Default, Clone)]
pub struct RunControl {
    pub restart: Option<PathBuf>,
    pub stop: Option<Arc<AtomicBool>>,
    /// No progress bar and nothing on stdout (the log file still gets everything): for runs
    /// driven by another command, such as `mdrun validate`.
    pub quiet: bool,
}

/// The energy-log line of a snapshot.
fn record_of(snap: &Snapshot, timestep_fs: f64, dof: usize) -> EnergyRecord {
    let (max_force, rms_force) = force_norms(&snap.forces);
    EnergyRecord {
        step: snap.step,
        time_ps: snap.step as f64 * timestep_fs / FS_PER_PS,
        potential: snap.potential,
        kinetic: snap.kinetic,
        temperature: temperature(snap.kinetic, dof),
        thermostat_work: snap.thermostat_work,
        max_force,
        rms_force,
    }
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
    restart: Option<RestartTarget>,
}

/// Where and how often restart files are written, and what identifies the run in them.
struct RestartTarget {
    path: PathBuf,
    interval: Option<u64>,
    fingerprint: Fingerprint,
    device: &'static str,
    seed: u64,
    /// Conserved energy of the run's first logged step, for the energy log's drift column.
    energy_reference: Option<f64>,
}

impl Outputs {
    /// The first step after `step` at which any output is due (or `last`).
    fn next_due(&self, step: u64, last: u64) -> u64 {
        let intervals = self
            .trajectories
            .iter()
            .map(|t| t.interval)
            .chain(self.energy_log.as_ref().map(|e| e.interval))
            .chain(self.restart.as_ref().and_then(|r| r.interval));
        intervals.map(|i| (step / i + 1) * i).min().unwrap_or(last).min(last)
    }

    /// Writes what is due at this snapshot's step (everything when `force`).
    fn write(&mut self, snap: &Snapshot, force: bool) -> Result<()> {
        let record = record_of(snap, self.timestep_fs, self.masses_dof);
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

    fn restart_due(&self, step: u64) -> bool {
        self.restart
            .as_ref()
            .and_then(|r| r.interval)
            .is_some_and(|i| step.is_multiple_of(i))
    }

    /// Puts the outputs on disk, notes their lengths, and writes the restart file atomically:
    /// a restart from it truncates the outputs back to these lengths.
    fn write_restart(&mut self, snap: &Snapshot, engine: &dyn Engine) -> Result<()> {
        let Some(target) = &self.restart else {
            return Ok(());
        };
        let mut lengths = Vec::new();
        for t in self.trajectories.iter_mut() {
            let bytes = t.sync().map_err(|e| anyhow!(e))?;
            lengths.push(OutputLength {
                file: t.path().to_path_buf(),
                bytes,
            });
        }
        let mut reference = target.energy_reference;
        if let Some(log) = &self.energy_log {
            lengths.push(OutputLength {
                file: log.path().to_path_buf(),
                bytes: log.bytes_on_disk().map_err(|e| anyhow!(e))?,
            });
            reference = reference.or(log.reference());
        }
        let reference = reference.or(self.records.first().map(EnergyRecord::conserved));
        let restart = Restart::new(
            target.fingerprint.clone(),
            target.device,
            target.seed,
            snap,
            reference,
            engine.neighbor_state(),
            lengths,
        );
        restart
            .write(&target.path)
            .with_context(|| format!("writing the restart file at step {}", snap.step))
    }
}

/// Runs without a restart file or a stop flag.
pub fn run(prepared: Prepared) -> Result<RunReport> {
    run_with(prepared, RunControl::default())
}

/// Runs, continuing from `control.restart` when given and stopping early (with a restart file
/// and flushed outputs) once `control.stop` is set.
pub fn run_with(prepared: Prepared, control: RunControl) -> Result<RunReport> {
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
    let show_progress = std::io::stderr().is_terminal() && !control.quiet;
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
    let system_path = input.resolve(&input.system.file);
    let model_path = input.resolve(&input.model.file);
    let fingerprint = Fingerprint::of(&input.path, &model_path, &system_path)?;
    let restart = match &control.restart {
        Some(path) => {
            let restart = Restart::read(path)?;
            restart.check(path, &fingerprint, n)?;
            if restart.step > md.steps {
                bail!(
                    "{}: the restart file is at step {}, beyond md.steps = {} of {}",
                    path.display(),
                    restart.step,
                    md.steps,
                    input.path.display()
                );
            }
            Some((path.clone(), restart))
        }
        None => None,
    };
    let mut engine: Box<dyn Engine> = match (&restart, use_gpu) {
        (None, true) => Box::new(
            GpuEngine::new(&model, &system, &velocities, &integrator, skin, input.gpu)
                .context("starting the GPU engine")?,
        ),
        (None, false) => Box::new(CpuEngine::new(model, &system, velocities, integrator.clone(), skin)),
        (Some((_, r)), true) => Box::new(
            GpuEngine::resume(&model, &system, &r.snapshot(), &integrator, skin, input.gpu)
                .context("starting the GPU engine from the restart state")?,
        ),
        (Some((_, r)), false) => Box::new(CpuEngine::resume(
            model,
            &system,
            r.snapshot(),
            r.neighbors.as_ref(),
            integrator.clone(),
            skin,
        )?),
    };
    if let Some(stop) = &control.stop {
        engine.set_stop(Arc::clone(stop));
    }
    // A restart continues the outputs: each is cut back to its length at the checkpoint (frames
    // written after it would otherwise appear twice) and then appended to.
    if let Some((path, r)) = &restart {
        // Matched by position, not by the recorded name: a run directory may have been moved.
        let current: Vec<PathBuf> = input
            .output
            .trajectory
            .iter()
            .map(|t| input.resolve(&t.file))
            .chain(input.output.energy.as_ref().map(|e| input.resolve(&e.file)))
            .collect();
        if current.len() != r.outputs.len() {
            bail!(
                "{}: the restart file records {} outputs, the input names {}",
                path.display(),
                r.outputs.len(),
                current.len()
            );
        }
        for (file, output) in current.iter().zip(&r.outputs) {
            truncate_output(path, file, output.bytes)?;
        }
    }
    let resumed_at = restart.as_ref().map(|(_, r)| r.step);

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
        let writer = match resumed_at {
            Some(step) => TrajectoryWriter::append(&path, explicit, t.interval, &system.symbols, step),
            None => TrajectoryWriter::create(&path, explicit, t.interval, &system.symbols),
        };
        trajectories.push(writer.map_err(|e| anyhow!(e))?);
        paths.push(path);
    }
    let energy_log = match &input.output.energy {
        Some(e) => {
            let path = input.resolve(&e.file);
            paths.push(path.clone());
            let log = match &restart {
                Some((_, r)) => EnergyLog::append(&path, e.interval, n, r.energy_reference),
                None => EnergyLog::create(&path, e.interval, n),
            };
            Some(log.map_err(|e| anyhow!(e))?)
        }
        None => None,
    };
    let mut log = RunLog {
        file: None,
        echo: !show_progress && !control.quiet,
    };
    if let Some(path) = &input.output.log {
        let path = input.resolve(path);
        let file = if resumed_at.is_some() {
            std::fs::OpenOptions::new().create(true).append(true).open(&path)
        } else {
            File::create(&path)
        }
        .with_context(|| format!("{}: cannot create", path.display()))?;
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
    if let Some((path, r)) = &restart {
        log.line(&format!(
            "restart: continuing from step {} of {} (written on {})",
            r.step,
            path.display(),
            r.device
        ));
    }
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
        restart: input.output.restart.as_ref().map(|r| RestartTarget {
            path: input.resolve(&r.file),
            interval: r.interval,
            fingerprint: fingerprint.clone(),
            device: if use_gpu { "cuda" } else { "cpu" },
            seed: md.seed,
            energy_reference: restart.as_ref().and_then(|(_, r)| r.energy_reference),
        }),
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
    progress.set_position(start.step);
    let mut failure: Option<Failure> = check(&start, md.max_force_ev_per_angstrom).map(|why| Failure {
        reason: format!("the starting structure is not usable: {}", why.reason),
        ..why
    });
    let stop_requested = || control.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
    let mut interrupted = false;
    let started = Instant::now();
    if failure.is_none() {
        match resumed_at {
            // The restart step's outputs were written by the run that wrote the restart file.
            Some(_) => outputs.records.push(record_of(&start, md.timestep_fs, dof)),
            None => outputs.write(&start, false)?,
        }
        // Chunks end at output and restart steps, and at least every 1,000 steps for the
        // progress bar (and for the stop flag on engines that do not watch it).
        while engine.step() < md.steps {
            if stop_requested() {
                interrupted = true;
                break;
            }
            let step = engine.step();
            let target = outputs.next_due(step, md.steps).min(step + 1000);
            failure = engine.advance(target - step, md.max_force_ev_per_angstrom)?;
            let snap = engine.snapshot()?;
            if failure.is_some() {
                break;
            }
            outputs.write(&snap, false)?;
            if outputs.restart_due(snap.step) && snap.step < md.steps {
                outputs.write_restart(&snap, engine.as_ref())?;
            }
            progress.set_position(snap.step);
            if let Some(r) = outputs.records.last() {
                progress.set_message(format!("E_tot {:.6} eV, T {:.1} K", r.total(), r.temperature));
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let last_good = engine.snapshot()?;
    if interrupted {
        // Outputs stay as the uninterrupted run would have them at this step (no extra frame),
        // so that a continued run writes exactly the frames and lines the uninterrupted one would.
        outputs.write_restart(&last_good, engine.as_ref())?;
        let restart_note = match &outputs.restart {
            Some(r) => format!("restart file {} written", r.path.display()),
            None => "no restart file (the input has no [output.restart])".into(),
        };
        outputs.log.line(&format!(
            "INTERRUPTED by a signal at step {}; {restart_note}",
            last_good.step
        ));
    } else {
        // The last good state always ends the trajectories and the energy log.
        outputs.write(&last_good, true)?;
        match &failure {
            Some(why) => outputs.log.line(&format!(
                "STOPPED: {}; the last good frame (step {}) was written",
                why.reason, last_good.step
            )),
            // A failed run keeps its last interval restart file: the end state is not worth one.
            None => outputs.write_restart(&last_good, engine.as_ref())?,
        }
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
    if outputs.log.file.is_some() && !outputs.log.echo && !control.quiet {
        for line in summary.lines() {
            println!("{line}");
        }
    }
    Ok(RunReport {
        summary,
        failure: failure.map(|f| f.reason),
        outputs: paths,
        device: engine.description(),
        interrupted,
    })
}
