//! MD engines behind one interface: the f64 CPU reference and the GPU-resident path. The run
//! loop (outputs, checks, summary) is the same for both; only how steps are taken differs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::cell::{Cell, Vec3};
use crate::forcefield::{CpuPainn, ForceField};
use crate::gpu::md::{GpuMd, GpuOptions};
use crate::integrate::{kinetic_energy, Integrator};
use crate::model::PainnModel;
use crate::neighbors::{NeighborList, PairList};
use crate::restart::NeighborState;
use crate::system::System;

/// The state at the end of a step, as the run loop sees it. Energies in eV.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub step: u64,
    pub positions: Vec<Vec3>,
    pub velocities: Vec<Vec3>,
    pub forces: Vec<Vec3>,
    pub potential: f64,
    pub kinetic: f64,
    /// Energy the thermostat removed so far (E_tot + this is conserved).
    pub thermostat_work: f64,
}

/// Why a run stopped.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: String,
    pub non_finite: bool,
}

/// Largest and RMS force norm (eV/Å).
pub fn force_norms(forces: &[Vec3]) -> (f64, f64) {
    let mut max: f64 = 0.0;
    let mut sum = 0.0;
    for f in forces {
        let n2 = f[0] * f[0] + f[1] * f[1] + f[2] * f[2];
        max = max.max(n2.sqrt());
        sum += n2;
    }
    (max, (sum / forces.len().max(1) as f64).sqrt())
}

/// Why a state is not acceptable, if it is not.
pub fn check(snapshot: &Snapshot, max_force: f64) -> Option<Failure> {
    let non_finite = |reason: &str| {
        Some(Failure {
            reason: reason.into(),
            non_finite: true,
        })
    };
    if !snapshot.potential.is_finite() || !snapshot.kinetic.is_finite() {
        return non_finite("the energy is NaN or infinite");
    }
    if snapshot.forces.iter().flatten().any(|x| !x.is_finite()) {
        return non_finite("a force is NaN or infinite");
    }
    if snapshot
        .positions
        .iter()
        .flatten()
        .chain(snapshot.velocities.iter().flatten())
        .any(|x| !x.is_finite())
    {
        return non_finite("a position or velocity is NaN or infinite");
    }
    let largest = force_norms(&snapshot.forces).0;
    if largest > max_force {
        return Some(Failure {
            reason: format!(
                "a force of {largest:.1} eV/Å exceeds md.max_force_ev_per_angstrom = {max_force} (the system exploded)"
            ),
            non_finite: false,
        });
    }
    None
}

pub trait Engine {
    /// Steps taken so far.
    fn step(&self) -> u64;
    /// Takes up to `steps` steps. On a failure the engine stays at its last good state (the
    /// CPU checks every step; the GPU checks at the end of the chunk and goes back to its start).
    fn advance(&mut self, steps: u64, max_force: f64) -> Result<Option<Failure>>;
    fn snapshot(&mut self) -> Result<Snapshot>;
    fn neighbor_rebuilds(&self) -> Option<u64>;
    fn description(&self) -> String;
    /// The neighbor-list state a bit-for-bit restart needs (the CPU's; the GPU rebuilds).
    fn neighbor_state(&self) -> Option<NeighborState> {
        None
    }
    /// A flag that, once set (by a signal handler), makes `advance` return early at the end of
    /// the current step. Engines whose chunks are short may ignore it.
    fn set_stop(&mut self, _stop: Arc<AtomicBool>) {}
}

/// The f64 reference: neighbor list, PaiNN and integrator on the host.
pub struct CpuEngine {
    state: Snapshot,
    integrator: Integrator,
    forcefield: CpuPainn,
    neighbors: NeighborList,
    pairs: PairList,
    numbers: Vec<u8>,
    masses: Vec<f64>,
    cell: Option<Cell>,
    stop: Option<Arc<AtomicBool>>,
}

impl CpuEngine {
    pub fn new(
        model: PainnModel,
        system: &System,
        velocities: Vec<Vec3>,
        integrator: Integrator,
        skin: f64,
    ) -> CpuEngine {
        let n = system.len();
        let state = Snapshot {
            step: 0,
            positions: system.positions.clone(),
            velocities,
            forces: vec![[0.0; 3]; n],
            potential: 0.0,
            kinetic: 0.0,
            thermostat_work: 0.0,
        };
        let mut engine = CpuEngine::with_state(model, system, state, integrator, skin);
        engine.compute_forces();
        engine
    }

    /// The engine at `state`, with an empty neighbor list (built at the first force evaluation).
    fn with_state(model: PainnModel, system: &System, state: Snapshot, integrator: Integrator, skin: f64) -> CpuEngine {
        CpuEngine {
            state,
            integrator,
            neighbors: NeighborList::new(model.cutoff(), skin),
            forcefield: CpuPainn::new(model),
            pairs: PairList::default(),
            numbers: system.numbers.clone(),
            masses: system.masses.clone(),
            cell: system.cell,
            stop: None,
        }
    }

    /// Continues from a restart state. With the neighbor-list state (a CPU restart file) the
    /// forces of the file are used as they are and the list is put back as it was, so the run
    /// continues bit for bit; without it (a GPU restart file) the forces are computed anew.
    pub fn resume(
        model: PainnModel,
        system: &System,
        state: Snapshot,
        neighbors: Option<&NeighborState>,
        integrator: Integrator,
        skin: f64,
    ) -> Result<CpuEngine> {
        if state.positions.len() != system.len() {
            bail!(
                "the restart state has {} atoms, the system {}",
                state.positions.len(),
                system.len()
            );
        }
        let mut engine = CpuEngine::with_state(model, system, state, integrator, skin);
        match neighbors {
            Some(nl) => {
                engine
                    .neighbors
                    .restore(nl.reference.clone(), nl.rebuilds, engine.cell.as_ref());
                engine.state.kinetic = kinetic_energy(&engine.state.velocities, &engine.masses);
            }
            None => engine.compute_forces(),
        }
        Ok(engine)
    }

    fn compute_forces(&mut self) {
        let s = &mut self.state;
        self.neighbors.update(&mut s.positions, self.cell.as_ref());
        self.neighbors.pairs(&s.positions, self.cell.as_ref(), &mut self.pairs);
        s.potential = self.forcefield.compute(&self.numbers, &self.pairs, &mut s.forces);
        s.kinetic = kinetic_energy(&s.velocities, &self.masses);
    }
}

impl Engine for CpuEngine {
    fn step(&self) -> u64 {
        self.state.step
    }

    fn advance(&mut self, steps: u64, max_force: f64) -> Result<Option<Failure>> {
        for _ in 0..steps {
            if self.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                break;
            }
            let good = self.state.clone();
            let s = &mut self.state;
            s.step += 1;
            s.thermostat_work -=
                self.integrator
                    .first_half(s.step, &mut s.positions, &mut s.velocities, &s.forces, &self.masses);
            self.compute_forces();
            let s = &mut self.state;
            self.integrator.second_half(&mut s.velocities, &s.forces, &self.masses);
            s.kinetic = kinetic_energy(&s.velocities, &self.masses);
            if let Some(failure) = check(s, max_force) {
                let reason = format!("step {}: {}", s.step, failure.reason);
                self.state = good;
                return Ok(Some(Failure { reason, ..failure }));
            }
        }
        Ok(None)
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        Ok(self.state.clone())
    }

    fn neighbor_rebuilds(&self) -> Option<u64> {
        Some(self.neighbors.rebuilds())
    }

    fn description(&self) -> String {
        "cpu (f64 reference)".into()
    }

    fn neighbor_state(&self) -> Option<NeighborState> {
        self.neighbors
            .state()
            .map(|(reference, rebuilds)| NeighborState { reference, rebuilds })
    }

    fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop);
    }
}

/// The GPU-resident path: the host sees the state only at output steps.
pub struct GpuEngine {
    md: GpuMd,
    last_good: Snapshot,
}

impl GpuEngine {
    pub fn new(
        model: &PainnModel,
        system: &System,
        velocities: &[Vec3],
        integrator: &Integrator,
        skin: f64,
        options: GpuOptions,
    ) -> Result<GpuEngine> {
        let mut md = GpuMd::new(model, system, velocities, integrator, skin, options)?;
        md.initialize()?;
        let last_good = md.snapshot()?;
        Ok(GpuEngine { md, last_good })
    }

    /// Continues from a restart state: positions, velocities, step and thermostat work are
    /// uploaded and the forces recomputed on the device (in f32, so not bit for bit).
    pub fn resume(
        model: &PainnModel,
        system: &System,
        state: &Snapshot,
        integrator: &Integrator,
        skin: f64,
        options: GpuOptions,
    ) -> Result<GpuEngine> {
        let mut md = GpuMd::new(model, system, &state.velocities, integrator, skin, options)?;
        md.load_state(state)?;
        let last_good = md.snapshot()?;
        Ok(GpuEngine { md, last_good })
    }
}

impl Engine for GpuEngine {
    fn step(&self) -> u64 {
        self.md.step()
    }

    fn advance(&mut self, steps: u64, max_force: f64) -> Result<Option<Failure>> {
        self.md.advance(steps)?;
        let now = self.md.snapshot()?;
        if let Some(failure) = check(&now, max_force) {
            let reason = format!(
                "between steps {} and {}: {}",
                self.last_good.step, now.step, failure.reason
            );
            return Ok(Some(Failure { reason, ..failure }));
        }
        self.last_good = now;
        Ok(None)
    }

    /// The last good state (after a failure, the state before the failing chunk).
    fn snapshot(&mut self) -> Result<Snapshot> {
        Ok(self.last_good.clone())
    }

    fn neighbor_rebuilds(&self) -> Option<u64> {
        None
    }

    fn description(&self) -> String {
        let kernels = match (self.md.kernels(), self.md.fused_sizes()) {
            (_, Some(sizes)) => format!("{}, ", sizes.launch_shape()),
            (crate::gpu::naive::KernelVariant::Cluster, _) => "one-cluster kernel, ".into(),
            (crate::gpu::naive::KernelVariant::Naive, _) => "naive unfused kernels, ".into(),
            _ => String::new(),
        };
        format!(
            "cuda ({}, f32, {kernels}{})",
            self.md.device_name(),
            if self.md.use_graph {
                "whole step as one CUDA graph"
            } else {
                "plain launches"
            }
        )
    }
}
