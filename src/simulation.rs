//! A run from an input file: set-up with every check done before any output exists, then the
//! MD loop, which stops cleanly (logs flushed, last good frame written) when something breaks.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::cell::{Cell, Vec3};
use crate::forcefield::{CpuPainn, ForceField};
use crate::input::{CellSpec, Device, Ensemble, InitialVelocities, Input};
use crate::integrate::{kinetic_energy, maxwell_boltzmann, temperature, Integrator};
use crate::model::PainnModel;
use crate::neighbors::{closest_pair_below, NeighborList, PairList};
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
}

/// Model-dependent checks of a structure: elements, finite coordinates, close contacts, cell.
pub fn check_structure(
    system: &System,
    model: &PainnModel,
    model_path: &Path,
    source: &str,
) -> Result<()> {
    for (index, z) in system.numbers.iter().enumerate() {
        if !model.knows_element(*z) {
            let known: Vec<String> = model
                .config
                .elements
                .iter()
                .map(|z| z.to_string())
                .collect();
            bail!(
                "{source}: atom {index} is {} (Z = {z}), an element the model {} does not know (it knows Z = {})",
                system.symbols[index],
                model_path.display(),
                known.join(", ")
            );
        }
    }
    if let Some(index) = system
        .positions
        .iter()
        .position(|r| !r.iter().all(|x| x.is_finite()))
    {
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
    if let Some((i, j, d)) = closest_pair_below(
        &system.positions,
        system.cell.as_ref(),
        MIN_INTERATOMIC_DISTANCE,
    ) {
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
        let mut system =
            System::read(&system_path, input.system.format.as_deref()).map_err(|e| anyhow!(e))?;
        apply_cell(&input, &mut system)?;
        let model_path = input.resolve(&input.model.file);
        let model = PainnModel::load(&model_path)?;
        if input.model.device == Device::Cuda {
            bail!("{file}: model.device: \"cuda\" is not available in this build yet; use \"cpu\" or \"auto\"");
        }
        check_structure(
            &system,
            &model,
            &model_path,
            &system_path.display().to_string(),
        )?;
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

/// MD state at the end of a step.
#[derive(Clone)]
struct State {
    step: u64,
    positions: Vec<Vec3>,
    velocities: Vec<Vec3>,
    forces: Vec<Vec3>,
    potential: f64,
    thermostat_work: f64,
}

fn force_norms(forces: &[Vec3]) -> (f64, f64) {
    let mut max: f64 = 0.0;
    let mut sum = 0.0;
    for f in forces {
        let n2 = f[0] * f[0] + f[1] * f[1] + f[2] * f[2];
        max = max.max(n2.sqrt());
        sum += n2;
    }
    (max, (sum / forces.len().max(1) as f64).sqrt())
}

/// Why a step is not acceptable, if it is not.
struct StepFailure {
    reason: String,
    non_finite: bool,
}

fn check_step(state: &State, limit: f64) -> Option<StepFailure> {
    let non_finite = |reason: &str| {
        Some(StepFailure {
            reason: reason.into(),
            non_finite: true,
        })
    };
    if !state.potential.is_finite() {
        return non_finite("the potential energy is NaN or infinite");
    }
    if state.forces.iter().flatten().any(|x| !x.is_finite()) {
        return non_finite("a force is NaN or infinite");
    }
    if state
        .positions
        .iter()
        .flatten()
        .chain(state.velocities.iter().flatten())
        .any(|x| !x.is_finite())
    {
        return non_finite("a position or velocity is NaN or infinite");
    }
    let max_force = force_norms(&state.forces).0;
    if max_force > limit {
        return Some(StepFailure {
            reason: format!("a force of {max_force:.1} eV/Å exceeds md.max_force_ev_per_angstrom = {limit} (the system exploded)"),
            non_finite: false,
        });
    }
    None
}

/// Outcome of a run: its summary, or the error that stopped it after the summary was written.
pub struct RunReport {
    pub summary: Summary,
    pub failure: Option<String>,
    pub outputs: Vec<PathBuf>,
}

pub fn run(prepared: Prepared) -> Result<RunReport> {
    let Prepared {
        input,
        system,
        model,
        integrator,
        velocities,
        trajectory_formats,
    } = prepared;
    let n = system.len();
    let cell = system.cell;
    let show_progress = std::io::stderr().is_terminal();

    // Outputs: created only now, after every check has passed.
    for path in input.output_paths() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the directory {}", dir.display()))?;
        }
    }
    let mut outputs = Vec::new();
    let mut trajectories = Vec::new();
    for (t, format) in input.output.trajectory.iter().zip(&trajectory_formats) {
        let path = input.resolve(&t.file);
        let explicit = t.format.as_deref().map(|_| format.as_str());
        trajectories.push(
            TrajectoryWriter::create(&path, explicit, t.interval, &system.symbols)
                .map_err(|e| anyhow!(e))?,
        );
        outputs.push(path);
    }
    let mut energy_log = match &input.output.energy {
        Some(e) => {
            let path = input.resolve(&e.file);
            outputs.push(path.clone());
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
        let file =
            File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
        log.file = Some(BufWriter::new(file));
        outputs.push(path);
    }

    let md = &input.md;
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
        match &cell {
            Some(c) => format!("periodic cell {:?} Å", c.vectors()),
            None => "open boundaries".into(),
        }
    ));
    log.line(&format!(
        "model: {} (F = {}, T = {}, K = {}, cutoff {} Å){}",
        input.resolve(&input.model.file).display(),
        model.config.n_atom_basis,
        model.config.n_interactions,
        model.config.n_rbf,
        model.cutoff(),
        if model.trained {
            ""
        } else {
            " — UNTRAINED (random weights): the dynamics are not physical"
        }
    ));
    log.line(&format!(
        "md: {:?}, dt = {} fs, {} steps, T = {} K, seed = {}, {} degrees of freedom, device cpu (f64 reference)",
        md.ensemble, md.timestep_fs, md.steps, md.temperature_k, md.seed, dof
    ));
    if !model.trained && show_progress {
        eprintln!(
            "warning: {} is an untrained model (random weights): the dynamics are not physical",
            input.model.file.display()
        );
    }

    let mut forcefield = CpuPainn::new(model);
    let mut neighbors = NeighborList::new(forcefield.cutoff(), input.neighbors.skin_angstrom);
    let mut pairs = PairList::default();
    let mut state = State {
        step: 0,
        positions: system.positions.clone(),
        velocities,
        forces: vec![[0.0; 3]; n],
        potential: 0.0,
        thermostat_work: 0.0,
    };
    let mut evaluate = |state: &mut State| {
        neighbors.update(&mut state.positions, cell.as_ref());
        neighbors.pairs(&state.positions, cell.as_ref(), &mut pairs);
        state.potential = forcefield.compute(&system.numbers, &pairs, &mut state.forces);
        neighbors.rebuilds()
    };
    let mut rebuilds = evaluate(&mut state);

    let mut records = Vec::new();
    let record_of = |state: &State| {
        let kinetic = kinetic_energy(&state.velocities, &system.masses);
        let (max_force, rms_force) = force_norms(&state.forces);
        EnergyRecord {
            step: state.step,
            time_ps: state.step as f64 * md.timestep_fs / FS_PER_PS,
            potential: state.potential,
            kinetic,
            temperature: temperature(kinetic, dof),
            thermostat_work: state.thermostat_work,
            max_force,
            rms_force,
        }
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

    let mut failure = check_step(&state, md.max_force_ev_per_angstrom).map(|why| StepFailure {
        reason: format!("the starting structure is not usable: {}", why.reason),
        non_finite: why.non_finite,
    });
    let mut last_good = state.clone();
    let mut write_outputs = |state: &State,
                             force: bool,
                             records: &mut Vec<EnergyRecord>,
                             log: &mut RunLog|
     -> Result<()> {
        let record = record_of(state);
        let log_due = energy_log.as_ref().is_some_and(|l| l.is_due(state.step));
        let already = records
            .last()
            .is_some_and(|r: &EnergyRecord| r.step == state.step);
        if (log_due || force || records.is_empty()) && !already {
            records.push(record);
            if let Some(l) = &mut energy_log {
                l.write(&record).map_err(|e| anyhow!(e))?;
            }
            log.line(&format!(
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
        for t in trajectories.iter_mut() {
            if force || t.is_due(state.step) {
                t.write(state.step, &state.positions, cell.as_ref())
                    .map_err(|e| anyhow!(e))?;
            }
        }
        Ok(())
    };

    let started = Instant::now();
    if failure.is_none() {
        write_outputs(&state, false, &mut records, &mut log)?;
        for step in 1..=md.steps {
            state.step = step;
            state.thermostat_work -= integrator.first_half(
                step,
                &mut state.positions,
                &mut state.velocities,
                &state.forces,
                &system.masses,
            );
            rebuilds = evaluate(&mut state);
            integrator.second_half(&mut state.velocities, &state.forces, &system.masses);
            if let Some(why) = check_step(&state, md.max_force_ev_per_angstrom) {
                failure = Some(StepFailure {
                    reason: format!("step {step}: {}", why.reason),
                    non_finite: why.non_finite,
                });
                break;
            }
            write_outputs(&state, false, &mut records, &mut log)?;
            last_good.clone_from(&state);
            progress.inc(1);
            if step % 100 == 0 {
                if let Some(r) = records.last() {
                    progress.set_message(format!(
                        "E_tot {:.6} eV, T {:.1} K",
                        r.total(),
                        r.temperature
                    ));
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    // The last good state is always in the trajectories and the energy log.
    write_outputs(&last_good, true, &mut records, &mut log)?;
    if let Some(why) = &failure {
        log.line(&format!(
            "STOPPED: {}; the last good frame (step {}) was written",
            why.reason, last_good.step
        ));
    }
    let non_finite = failure.as_ref().is_some_and(|f| f.non_finite);
    let summary = Summary::new(&records, n, md.timestep_fs, wall, non_finite, rebuilds);
    for line in summary.lines() {
        log.line(&line);
    }
    if log.file.is_some() && !log.echo {
        for line in summary.lines() {
            println!("{line}");
        }
    }
    Ok(RunReport {
        summary,
        failure: failure.map(|f| f.reason),
        outputs,
    })
}
