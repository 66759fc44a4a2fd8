//! GPU-resident MD: positions, velocities and forces stay on the device; a step (displacement
//! check, neighbor rebuild when needed, forces, integration) is captured once as a CUDA graph and
//! replayed. The host copies back a few numbers at output steps only.

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{sys, CudaFunction, CudaGraph, PushKernelArg};

use super::forces::{kernel_sizes, ClosingKick, JOINED_STEP_MAX_ATOMS};
use super::naive::{KernelVariant, PainnKernels};
use super::neighbors::{initial_capacity, GpuNeighbors, NeighborSearch};
use super::params::{ClusterMdParams, DisplacementCheckParams, IntegrationParams};
use super::{grid_for, Buffer, Gpu, KernelSizes};
use crate::cell::{Cell, Vec3};
use crate::engine::Snapshot;
use crate::integrate::Integrator;
use crate::model::PainnModel;
use crate::system::System;
use crate::units::{ACCELERATION_A_PER_FS2, AMU_A2_PER_FS2_IN_EV, BOLTZMANN_EV_PER_K, FS_PER_PS};

/// Switches of the GPU path (the `[gpu]` input section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuOptions {
    /// Capture the whole MD step as one CUDA graph and replay it (false: plain launches).
    #[serde(default = "default_true")]
    pub cuda_graph: bool,
    #[serde(default)]
    pub neighbor_search: NeighborSearch,
    /// Fused PaiNN kernels, or the plain unfused ones (the benchmark's `gpu-naive` baseline).
    #[serde(default)]
    pub kernels: KernelVariant,
    /// Where the one-cluster kernel runs (small open molecules), it also integrates: one launch
    /// per MD step instead of three (false: the integrator kernels around it).
    #[serde(default = "default_true")]
    pub integrate_in_kernel: bool,
    /// Launch the step's kernels as programmatic dependent launches where the GPU has them
    /// (compute capability 9.0 on): each kernel starts while the one before it finishes and
    /// waits in the kernel for its results (false: ordinary launches). MDRUN_PROGRAMMATIC_LAUNCH=0
    /// or 1 overrides, for experiments.
    #[serde(default = "default_true")]
    pub programmatic_launch: bool,
    /// For systems of at most 64 atoms with the all-pairs neighbor search, the first integrator
    /// half also runs the displacement check and the whole rebuild, in one kernel of one block
    /// where they took four (perf-notes v43; false: the separate kernels). MDRUN_ONE_BLOCK_REBUILD=0
    /// or 1 overrides, for experiments.
    #[serde(default = "default_true")]
    pub one_block_rebuild: bool,
    /// MD steps per replayed graph for runs of steps between outputs (perf-notes v62): the steps
    /// inside one graph overlap as programmatic launches, consecutive graph launches do not
    /// (1: one step per graph). MDRUN_GRAPH_STEPS overrides, for experiments.
    #[serde(default = "default_graph_steps")]
    pub graph_steps: u64,
    /// Inside a graph of several steps, each step's closing half kick and the next step's first
    /// half in one kernel (perf-notes v63: at most 16 atoms with the one-block rebuild; false:
    /// a kernel each). MDRUN_JOIN_STEPS=0 or 1 overrides, for experiments.
    #[serde(default = "default_true")]
    pub join_steps: bool,
}

fn default_graph_steps() -> u64 {
    8
}

impl GpuOptions {
    /// These options with the `MDRUN_*` experiment overrides applied (README), and checked.
    fn with_env_overrides(mut self) -> Result<GpuOptions> {
        let switch = |name: &str, value: bool| std::env::var(name).map_or(value, |v| v != "0");
        self.programmatic_launch = switch("MDRUN_PROGRAMMATIC_LAUNCH", self.programmatic_launch);
        self.one_block_rebuild = switch("MDRUN_ONE_BLOCK_REBUILD", self.one_block_rebuild);
        self.join_steps = switch("MDRUN_JOIN_STEPS", self.join_steps);
        if let Ok(v) = std::env::var("MDRUN_GRAPH_STEPS") {
            self.graph_steps = v
                .parse()
                .map_err(|_| anyhow!("MDRUN_GRAPH_STEPS: `{v}` is not a whole number of steps"))?;
        }
        if self.graph_steps == 0 {
            return Err(anyhow!("graph_steps ([gpu] or MDRUN_GRAPH_STEPS) must be ≥ 1 step"));
        }
        Ok(self)
    }
}

fn default_true() -> bool {
    true
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            cuda_graph: true,
            neighbor_search: NeighborSearch::Auto,
            kernels: KernelVariant::Auto,
            integrate_in_kernel: true,
            programmatic_launch: true,
            one_block_rebuild: true,
            graph_steps: default_graph_steps(),
            join_steps: true,
        }
    }
}

struct SavedState {
    step: u64,
    positions: Vec<f64>,
    velocities: Vec<f64>,
    forces: Vec<f32>,
    heat: Vec<f64>,
}

fn flatten(v: &[Vec3]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

fn unflatten<T: Copy + Into<f64>>(v: &[T]) -> Vec<Vec3> {
    v.chunks_exact(3)
        .map(|c| [c[0].into(), c[1].into(), c[2].into()])
        .collect()
}

pub struct GpuMd {
    pub gpu: Gpu,
    painn: PainnKernels,
    neighbors: GpuNeighbors,
    n_atoms: usize,
    cell: Option<Cell>,
    cutoff: f64,
    skin: f64,
    /// Positions (Å) and velocities (Å/fs) in f64: integration in double precision.
    positions: Buffer<f64>,
    velocities: Buffer<f64>,
    inv_mass: Buffer<f32>,
    half_mass: Buffer<f32>,
    heat: Buffer<f64>,
    thermal_sigma: Buffer<f32>,
    step: Buffer<u64>,
    sums: Buffer<f64>,
    /// The integrator's arrays and constants, as the kernels take them.
    integration: IntegrationParams,
    first_half: CudaFunction,
    second_half: CudaFunction,
    energy_sums: CudaFunction,
    graph: Option<CudaGraph>,
    /// `graph_steps` MD steps captured back to back as one graph, replayed for runs of steps
    /// (perf-notes v62: the steps inside it follow each other as programmatic launches, where
    /// consecutive graph launches each wait for the whole previous graph).
    graph_block: Option<CudaGraph>,
    graph_steps: u64,
    /// `[gpu] join_steps` (after MDRUN_JOIN_STEPS): the block graph joins its steps' boundary
    /// kernels where [`Self::joins_steps`] says it can.
    join_steps: bool,
    /// The force evaluation alone as a graph (`force_call`, for the benchmark).
    force_graph: Option<CudaGraph>,
    /// Device memory in use (bytes) once the context and kernels were loaded, before any buffer.
    pub use_graph: bool,
    search: NeighborSearch,
    /// The one-cluster kernel runs the whole MD step (`[gpu] integrate_in_kernel`, on by default
    /// where that kernel runs).
    integrate_in_kernel: bool,
    /// The first integrator half runs the whole all-pairs rebuild where it applies
    /// (`[gpu] one_block_rebuild`, perf-notes v43).
    one_block_rebuild: bool,
    host_step: u64,
    neighbor_capacity_grown: u32,
}

impl GpuMd {
    /// Uploads `system` (its positions, masses, cell) with `velocities` (Å/fs).
    pub fn new(
        model: &PainnModel,
        system: &System,
        velocities: &[Vec3],
        integrator: &Integrator,
        skin: f64,
        options: GpuOptions,
    ) -> Result<GpuMd> {
        let (numbers, masses, positions, cell) = (&system.numbers, &system.masses, &system.positions, system.cell);
        let options = options.with_env_overrides()?;
        let mut gpu = Gpu::open(0, kernel_sizes(model, system.len())?)?;
        gpu.programmatic = options.programmatic_launch && gpu.code_capability.0 >= 9;
        let n = numbers.len();
        let capacity = initial_capacity(positions, cell.as_ref(), model.cutoff() + skin);
        let neighbors = GpuNeighbors::new(
            &gpu,
            n,
            cell.as_ref(),
            model.cutoff(),
            skin,
            capacity,
            options.neighbor_search,
        )?;
        let painn = PainnKernels::new(&gpu, model, numbers, capacity, options.kernels, cell.is_some())?;
        let (langevin, damping, noise, seed, temperature) = match integrator {
            Integrator::VelocityVerlet { .. } => (0, 1.0, 0.0, 0, 0.0),
            Integrator::Langevin {
                timestep_fs,
                temperature_k,
                friction_per_ps,
                seed,
            } => {
                let damping = (-friction_per_ps / FS_PER_PS * timestep_fs).exp();
                (1, damping, (1.0 - damping * damping).sqrt(), *seed, *temperature_k)
            }
        };
        let kt = BOLTZMANN_EV_PER_K * temperature;
        let integrate_in_kernel = options.integrate_in_kernel && matches!(painn, PainnKernels::Cluster(_));
        let mut md = GpuMd {
            painn,
            neighbors,
            n_atoms: n,
            cell,
            cutoff: model.cutoff(),
            skin,
            positions: gpu.upload(&flatten(positions))?,
            velocities: gpu.upload(&flatten(velocities))?,
            inv_mass: gpu.upload(
                &masses
                    .iter()
                    .map(|m| (ACCELERATION_A_PER_FS2 / m) as f32)
                    .collect::<Vec<_>>(),
            )?,
            half_mass: gpu.upload(
                &masses
                    .iter()
                    .map(|m| (0.5 * m * AMU_A2_PER_FS2_IN_EV) as f32)
                    .collect::<Vec<_>>(),
            )?,
            heat: gpu.zeros(n)?,
            thermal_sigma: gpu.upload(
                &masses
                    .iter()
                    .map(|m| (kt * ACCELERATION_A_PER_FS2 / m).sqrt() as f32)
                    .collect::<Vec<_>>(),
            )?,
            step: gpu.zeros(1)?,
            sums: gpu.zeros(3)?,
            first_half: gpu.function("first_half")?,
            second_half: gpu.function("second_half")?,
            energy_sums: gpu.function("energy_sums")?,
            graph: None,
            graph_block: None,
            graph_steps: options.graph_steps,
            join_steps: options.join_steps,
            force_graph: None,
            use_graph: options.cuda_graph,
            search: options.neighbor_search,
            integrate_in_kernel,
            one_block_rebuild: options.one_block_rebuild,
            integration: IntegrationParams::default(),
            host_step: 0,
            neighbor_capacity_grown: 0,
            gpu,
        };
        // Device pointers: the buffers above live (and stay put) as long as the engine.
        md.integration = IntegrationParams {
            inv_mass: md.inv_mass.ptr,
            half_mass: md.half_mass.ptr,
            thermal_sigma: md.thermal_sigma.ptr,
            heat: md.heat.ptr,
            seed,
            dt: integrator.timestep_fs() as f32,
            damping: damping as f32,
            noise: noise as f32,
            langevin,
        };
        Ok(md)
    }

    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    /// Which PaiNN kernels evaluate the forces.
    pub fn kernels(&self) -> KernelVariant {
        self.painn.variant()
    }

    /// The fused kernels' launch shapes and build options (None where another kernel set runs).
    pub fn fused_sizes(&self) -> Option<&KernelSizes> {
        self.painn.fused_sizes()
    }

    /// Whether the MD step's first integrator half runs the whole rebuild (perf-notes v43).
    pub fn one_block_rebuild(&self) -> bool {
        self.one_block_rebuild && self.painn.uses_neighbor_list() && self.neighbors.rebuilds_in_first_half()
    }

    /// MD steps per graph launch in runs of steps (1 without graphs or without a block graph yet).
    pub fn graph_steps(&self) -> u64 {
        if self.use_graph && self.graph_block.is_some() {
            self.graph_steps
        } else {
            1
        }
    }

    /// Whether a graph of several steps runs each boundary between its steps as one kernel
    /// (perf-notes v63): asked for, fused kernels, the one-block rebuild, at most 16 atoms.
    pub fn joins_steps(&self) -> bool {
        self.join_steps
            && matches!(self.painn, PainnKernels::Fused(_))
            && self.one_block_rebuild()
            && self.n_atoms <= JOINED_STEP_MAX_ATOMS
    }

    /// Whether the step's kernels run as programmatic dependent launches.
    pub fn programmatic_launch(&self) -> bool {
        self.gpu.programmatic
    }

    /// Whether the one-cluster kernel runs the whole MD step, integration included.
    pub fn integrate_in_kernel(&self) -> bool {
        self.integrate_in_kernel
    }

    pub fn step(&self) -> u64 {
        self.host_step
    }

    pub fn neighbor_capacity(&self) -> usize {
        self.neighbors.capacity
    }

    /// Forces at the current positions (a forced neighbor rebuild first); needed before step 1.
    pub fn initialize(&mut self) -> Result<()> {
        loop {
            self.neighbors.request_rebuild(&self.gpu, self.host_step)?;
            self.neighbors.enqueue_rebuild(&self.gpu, &self.positions, &self.step)?;
            self.painn.enqueue(&self.gpu, &self.positions, &self.neighbors)?;
            self.gpu.synchronize()?;
            if !self.neighbors.overflowed(&self.gpu)? {
                break;
            }
            self.grow_neighbors()?;
        }
        self.neighbors.request_rebuild(&self.gpu, u64::MAX)?;
        Ok(())
    }

    fn enqueue_step(&mut self) -> Result<()> {
        let integration = self.integration;
        if let (true, PainnKernels::Cluster(cluster)) = (self.integrate_in_kernel, &mut self.painn) {
            let md = ClusterMdParams {
                integration,
                velocities: self.velocities.ptr,
                step_counter: self.step.ptr,
                integrate: 1,
                pad: 0,
            };
            return cluster.enqueue_with(&self.gpu, &self.positions, &md);
        }
        let n = self.n_atoms as i32;
        let err = |e: cudarc::driver::DriverError| anyhow!("integrator kernels: {e:?}");
        // The first half also runs the neighbor list's displacement check (perf-notes v41), and
        // for small systems with the all-pairs search the whole rebuild (v43).
        let uses_list = self.painn.uses_neighbor_list();
        if self.one_block_rebuild() {
            self.enqueue_first_half_and_rebuild()?;
            return self.enqueue_forces_and_second_half(&integration, false);
        }
        let check = if uses_list {
            self.neighbors.displacement_check()
        } else {
            DisplacementCheckParams::default()
        };
        unsafe {
            self.gpu
                .launch(&self.first_half)
                .arg(&self.positions.ptr)
                .arg(&self.velocities.ptr)
                .arg(&self.painn.forces().ptr)
                .arg(&integration)
                .arg(&self.step.ptr)
                .arg(&check)
                .arg(&n)
                .launch(grid_for(self.n_atoms, 128))
                .map_err(err)?;
        }
        if uses_list {
            self.neighbors.enqueue_rebuild(&self.gpu, &self.positions, &self.step)?;
        }
        self.enqueue_forces_and_second_half(&integration, false)
    }

    fn enqueue_first_half_and_rebuild(&self) -> Result<()> {
        self.neighbors.enqueue_first_half_and_rebuild(
            &self.gpu,
            &self.positions,
            &self.velocities,
            self.painn.forces(),
            &self.integration,
            &self.step,
        )
    }

    /// The forces at the new positions, then the closing half kick: with the fused kernels in
    /// their last launch (one kernel fewer per step, perf-notes v49), otherwise a kernel of its own.
    /// `then_first_half`: that launch also takes the next step's first half (perf-notes v63,
    /// where [`Self::joins_steps`]).
    fn enqueue_forces_and_second_half(&mut self, integration: &IntegrationParams, then_first_half: bool) -> Result<()> {
        if let PainnKernels::Fused(painn) = &mut self.painn {
            let kick = ClosingKick {
                velocities: &self.velocities,
                integration,
                step: &self.step,
                then_first_half,
            };
            return painn.enqueue_with(&self.gpu, &self.positions, &self.neighbors, Some(&kick));
        }
        if then_first_half {
            return Err(anyhow!("joined steps need the fused kernels"));
        }
        self.painn.enqueue(&self.gpu, &self.positions, &self.neighbors)?;
        self.enqueue_second_half(integration)
    }

    /// The closing half kick with the new forces; advances the step counter.
    fn enqueue_second_half(&self, integration: &IntegrationParams) -> Result<()> {
        let n = self.n_atoms as i32;
        unsafe {
            self.gpu
                .launch(&self.second_half)
                .arg(&self.velocities.ptr)
                .arg(&self.painn.forces().ptr)
                .arg(integration)
                .arg(&self.step.ptr)
                .arg(&n)
                .launch(grid_for(self.n_atoms, 128))
                .map_err(|e| anyhow!("integrator kernels: {e:?}"))?;
        }
        Ok(())
    }

    /// `steps` MD steps whose boundaries are one kernel each (perf-notes v63): the first half
    /// with the rebuild, then each step's forces, whose last kernel also takes the next step's
    /// first half, but the last step's, which ends as `enqueue_step` does.
    fn enqueue_joined_steps(&mut self, steps: u64) -> Result<()> {
        let integration = self.integration;
        self.enqueue_first_half_and_rebuild()?;
        (0..steps).try_for_each(|i| self.enqueue_forces_and_second_half(&integration, i + 1 < steps))
    }

    /// Captures `steps` MD steps as one graph.
    fn capture(&mut self, steps: u64) -> Result<CudaGraph> {
        let stream = self.gpu.stream.clone();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| anyhow!("begin capture: {e:?}"))?;
        let enqueued = if steps > 1 && self.joins_steps() {
            self.enqueue_joined_steps(steps)
        } else {
            (0..steps).try_for_each(|_| self.enqueue_step())
        };
        let graph = stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| anyhow!("end capture: {e:?}"))?;
        enqueued?;
        graph.ok_or_else(|| anyhow!("stream capture produced no graph"))
    }

    /// The one-step graph, and the `graph_steps`-step graph where runs of steps will use it.
    /// Where the one-step graph cannot be captured the engine falls back to plain launches;
    /// where only the longer one cannot, to one-step graphs.
    fn capture_graphs(&mut self, steps: u64) {
        if self.graph.is_none() {
            match self.capture(1) {
                Ok(graph) => self.graph = Some(graph),
                Err(e) => {
                    eprintln!("warning: CUDA graph capture failed ({e}); running with plain launches");
                    self.use_graph = false;
                    return;
                }
            }
        }
        let block = self.graph_steps;
        if block > 1 && steps >= block && self.graph_block.is_none() {
            match self.capture(block) {
                Ok(graph) => self.graph_block = Some(graph),
                Err(e) => {
                    eprintln!("warning: capture of a {block}-step CUDA graph failed ({e}); running one-step graphs");
                    self.graph_steps = 1;
                }
            }
        }
    }

    /// Replays `steps` MD steps: whole blocks of `graph_steps` from the block graph, the rest
    /// one graph launch each (or plain launches without graphs).
    fn launch_steps(&mut self, steps: u64) -> Result<()> {
        if !self.use_graph {
            return (0..steps).try_for_each(|_| self.enqueue_step());
        }
        let launch = |graph: &Option<CudaGraph>, times: u64| -> Result<()> {
            (0..times).try_for_each(|_| {
                let graph = graph
                    .as_ref()
                    .ok_or_else(|| anyhow!("graph launch: no graph captured"))?;
                graph.launch().map_err(|e| anyhow!("graph launch: {e:?}"))
            })
        };
        let blocks = if self.graph_block.is_some() {
            steps / self.graph_steps
        } else {
            0
        };
        launch(&self.graph_block, blocks)?;
        launch(&self.graph, steps - blocks * self.graph_steps)
    }

    /// Host copies of the state, to go back to when a chunk of steps has to be redone.
    fn backup(&self) -> Result<SavedState> {
        Ok(SavedState {
            step: self.host_step,
            positions: self.gpu.download(&self.positions)?,
            velocities: self.gpu.download(&self.velocities)?,
            forces: self.gpu.download(self.painn.forces())?,
            heat: self.gpu.download(&self.heat)?,
        })
    }

    fn restore(&mut self, saved: &SavedState) -> Result<()> {
        let s = &self.gpu.stream;
        let e = |e: cudarc::driver::DriverError| anyhow!("restore: {e:?}");
        s.memcpy_htod(&saved.positions, &mut self.positions.slice).map_err(e)?;
        s.memcpy_htod(&saved.velocities, &mut self.velocities.slice)
            .map_err(e)?;
        s.memcpy_htod(&saved.forces, &mut self.painn.forces_mut().slice)
            .map_err(e)?;
        s.memcpy_htod(&[saved.step], &mut self.step.slice).map_err(e)?;
        s.memcpy_htod(&saved.heat, &mut self.heat.slice).map_err(e)?;
        self.host_step = saved.step;
        Ok(())
    }

    /// Replaces the state with `state` (a restart): positions, velocities, step and the
    /// thermostat work are uploaded, then `initialize` rebuilds the neighbor list and recomputes
    /// the forces on the device (the file's f64 forces are not reused: the device's are f32).
    pub fn load_state(&mut self, state: &Snapshot) -> Result<()> {
        let n = self.n_atoms;
        if state.positions.len() != n || state.velocities.len() != n {
            return Err(anyhow!(
                "load_state: {} positions and {} velocities for {n} atoms",
                state.positions.len(),
                state.velocities.len()
            ));
        }
        // The device keeps the heat the thermostat added per atom; only the sum matters.
        let mut heat = vec![0.0; n];
        heat[0] = -state.thermostat_work;
        let saved = SavedState {
            step: state.step,
            positions: flatten(&state.positions),
            velocities: flatten(&state.velocities),
            // Recomputed by `initialize`; the buffer's own contents keep its exact length.
            forces: self.gpu.download(self.painn.forces())?,
            heat,
        };
        self.restore(&saved)?;
        self.initialize()
    }

    /// Replaces the neighbor rows with rows of `capacity` entries (takes effect at the next
    /// rebuild; `initialize` forces one).
    pub fn set_neighbor_capacity(&mut self, capacity: usize) -> Result<()> {
        self.neighbors = GpuNeighbors::new(
            &self.gpu,
            self.n_atoms,
            self.cell.as_ref(),
            self.cutoff,
            self.skin,
            capacity,
            self.search,
        )?;
        self.painn.resize_pairs(&self.gpu, capacity)?;
        self.graph = None;
        self.graph_block = None;
        self.force_graph = None;
        Ok(())
    }

    fn grow_neighbors(&mut self) -> Result<()> {
        self.set_neighbor_capacity(self.neighbors.capacity * 3 / 2 + 8)?;
        self.neighbor_capacity_grown += 1;
        Ok(())
    }

    /// Runs `steps` steps. A neighbor-row overflow anywhere in them restores the state from
    /// before, grows the rows and runs them again: never a silent truncation.
    pub fn advance(&mut self, steps: u64) -> Result<()> {
        if steps == 0 {
            return Ok(());
        }
        let start = self.host_step;
        let saved = self.backup()?;
        loop {
            if self.use_graph {
                self.capture_graphs(steps);
            }
            self.launch_steps(steps)?;
            self.gpu.synchronize()?;
            if !self.neighbors.overflowed(&self.gpu)? {
                self.host_step = start + steps;
                return Ok(());
            }
            self.grow_neighbors()?;
            self.restore(&saved)?;
            self.initialize()?;
        }
    }

    /// Energies and state at the current step.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let n = self.n_atoms as i32;
        unsafe {
            self.gpu
                .stream
                .launch_builder(&self.energy_sums)
                .arg(&self.painn.atom_energy().ptr)
                .arg(&self.velocities.ptr)
                .arg(&self.half_mass.ptr)
                .arg(&self.heat.ptr)
                .arg(&n)
                .arg(&self.sums.ptr)
                .launch(cudarc::driver::LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                })
                .map_err(|e| anyhow!("energy_sums: {e:?}"))?;
        }
        let sums = self.gpu.download(&self.sums).context("energies")?;
        Ok(Snapshot {
            step: self.host_step,
            positions: unflatten(&self.gpu.download(&self.positions)?),
            velocities: unflatten(&self.gpu.download(&self.velocities)?),
            forces: unflatten(&self.gpu.download(self.painn.forces())?),
            potential: sums[0],
            kinetic: sums[1],
            // The device accumulates the kinetic energy the thermostat added.
            thermostat_work: -sums[2],
        })
    }

    pub fn neighbor_growths(&self) -> u32 {
        self.neighbor_capacity_grown
    }

    /// One force evaluation at the current positions and neighbor rows, waited for: what the
    /// benchmark times as a force call. Replayed as a graph of its own when the engine uses graphs.
    pub fn force_call(&mut self) -> Result<()> {
        if self.use_graph && self.force_graph.is_none() {
            let stream = self.gpu.stream.clone();
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| anyhow!("begin capture: {e:?}"))?;
            let enqueued = self.painn.enqueue(&self.gpu, &self.positions, &self.neighbors);
            let graph = stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| anyhow!("end capture: {e:?}"))?;
            enqueued?;
            self.force_graph = graph;
        }
        match &self.force_graph {
            Some(graph) if self.use_graph => graph.launch().map_err(|e| anyhow!("graph launch: {e:?}"))?,
            _ => self.painn.enqueue(&self.gpu, &self.positions, &self.neighbors)?,
        }
        self.gpu.synchronize()
    }

    /// Peak device memory of this engine's buffers (bytes): positions, weights, activations,
    /// neighbor rows, per-pair buffers; not the CUDA context and module, which are the same for
    /// every system.
    pub fn device_memory_bytes(&self) -> Result<u64> {
        Ok(self.gpu.peak_buffer_bytes() as u64)
    }
}

/// Energy (eV) and forces (eV/Å) of one configuration on the GPU: for `mdrun eval` and tests.
pub fn evaluate(model: &PainnModel, system: &System) -> Result<(f64, Vec<Vec3>)> {
    let options = GpuOptions {
        cuda_graph: false,
        ..GpuOptions::default()
    };
    evaluate_with(model, system, options)
}

/// [`evaluate`] with the given GPU switches (kernel variant, neighbor search).
pub fn evaluate_with(model: &PainnModel, system: &System, options: GpuOptions) -> Result<(f64, Vec<Vec3>)> {
    let velocities = vec![[0.0; 3]; system.len()];
    let integrator = Integrator::VelocityVerlet { timestep_fs: 1.0 };
    let mut md = GpuMd::new(model, system, &velocities, &integrator, 0.5, options)?;
    md.initialize()?;
    let snap = md.snapshot()?;
    Ok((snap.potential, snap.forces))
}
