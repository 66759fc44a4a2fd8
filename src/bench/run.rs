//! Measuring one system under each configuration: force-call latency (one evaluation, waited
//! for), full MD step latency (chunks of steps, waited for), device memory, accuracy against the
//! f64 reference at the starting positions.

use std::time::Instant;

use anyhow::Result;

use super::{Config, Row};
use crate::cell::Vec3;
use crate::engine::{CpuEngine, Engine};
use crate::forcefield::cpu::{evaluate, Evaluation};
use crate::forcefield::{CpuPainn, ForceField};
use crate::gpu::md::GpuMd;
use crate::gpu::naive::KernelVariant;
use crate::gpu::neighbors::NeighborSearch;
use crate::gpu::KernelSizes;
use crate::integrate::{maxwell_boltzmann, Integrator};
use crate::model::PainnModel;
use crate::neighbors::{brute_force_pairs, NeighborList, PairList};
use crate::system::System;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub configs: Vec<Config>,
    pub timestep_fs: f64,
    pub skin: f64,
    pub temperature_k: f64,
    /// Largest system the `cpu` configuration times.
    pub cpu_max_atoms: usize,
    /// Largest system the f64 reference is computed for (accuracy columns null above).
    pub reference_max_atoms: usize,
    /// Wall-clock budget of one measurement (s): sampling stops once it is spent and
    /// `min_samples` were taken, or at `max_samples`.
    pub budget_s: f64,
    pub min_samples: usize,
    pub max_samples: usize,
    /// Target duration of one MD-step sample (µs): the chunk of steps per sample follows from it
    /// (1 to 200 steps), so that short steps are not dominated by the host's synchronisation.
    pub sample_us: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            configs: Config::ALL.to_vec(),
            timestep_fs: 0.5,
            skin: 1.0,
            temperature_k: 300.0,
            cpu_max_atoms: 250,
            reference_max_atoms: 2000,
            budget_s: 3.0,
            min_samples: 5,
            max_samples: 50,
            sample_us: 20_000.0,
        }
    }
}

/// Samples of `once` (each returns µs) until the budget is spent (at least `min_samples`, at
/// most `max_samples`).
fn sample(options: &BenchOptions, mut once: impl FnMut() -> Result<f64>) -> Result<Vec<f64>> {
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < options.max_samples.max(1)
        && (samples.len() < options.min_samples.max(1) || start.elapsed().as_secs_f64() < options.budget_s)
    {
        samples.push(once()?);
    }
    Ok(samples)
}

fn micros(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

/// Steps per MD-step sample, from the duration of one step.
fn chunk_for(options: &BenchOptions, us_per_step: f64) -> u64 {
    (options.sample_us / us_per_step.max(1e-3)).round().clamp(1.0, 200.0) as u64
}

/// Energy error per atom, force RMSE over the 3N components and the largest component error.
fn set_accuracy(row: &mut Row, energy: f64, forces: &[Vec3], reference: &Result<Evaluation, String>) {
    match reference {
        Ok(r) => {
            let n = forces.len().max(1) as f64;
            let mut sum = 0.0;
            let mut max: f64 = 0.0;
            for (a, b) in forces.iter().zip(&r.forces) {
                for k in 0..3 {
                    let d = a[k] - b[k];
                    sum += d * d;
                    max = max.max(d.abs());
                }
            }
            row.energy_error_per_atom_ev = Some((energy - r.energy).abs() / n);
            row.force_rmse_ev_per_angstrom = Some((sum / (3.0 * n)).sqrt());
            row.force_max_error_ev_per_angstrom = Some(max);
        }
        Err(why) => row.accuracy_note = Some(why.clone()),
    }
}

fn measure_cpu(
    row: &mut Row,
    system: &System,
    model: &PainnModel,
    velocities: &[Vec3],
    integrator: &Integrator,
    reference: &Result<Evaluation, String>,
    options: &BenchOptions,
) -> Result<()> {
    row.device = "cpu (f64 reference)".into();
    row.neighbor_search = Some("cell-list (CPU)".into());
    // Force call: the reference PaiNN on a fixed pair list (neighbor search not included, as on
    // the GPU).
    let mut list = NeighborList::new(model.cutoff(), options.skin);
    let mut positions = system.positions.clone();
    list.update(&mut positions, system.cell.as_ref());
    let mut pairs = PairList::default();
    list.pairs(&positions, system.cell.as_ref(), &mut pairs);
    let mut forcefield = CpuPainn::new(model.clone());
    let mut forces = vec![[0.0; 3]; system.len()];
    let energy = forcefield.compute(&system.numbers, &pairs, &mut forces);
    set_accuracy(row, energy, &forces, reference);
    let calls = sample(options, || {
        let t = Instant::now();
        forcefield.compute(&system.numbers, &pairs, &mut forces);
        Ok(micros(t))
    })?;
    row.set_force_call(&calls, calls.len() as u64);
    let mut engine = CpuEngine::new(
        model.clone(),
        system,
        velocities.to_vec(),
        integrator.clone(),
        options.skin,
    );
    let t = Instant::now();
    engine.advance(1, f64::INFINITY)?;
    let chunk = chunk_for(options, micros(t));
    let samples = sample(options, || {
        let t = Instant::now();
        engine.advance(chunk, f64::INFINITY)?;
        Ok(micros(t) / chunk as f64)
    })?;
    row.set_step(&samples, chunk * samples.len() as u64, options.timestep_fs);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure_gpu(
    row: &mut Row,
    config: Config,
    system: &System,
    model: &PainnModel,
    velocities: &[Vec3],
    integrator: &Integrator,
    reference: &Result<Evaluation, String>,
    options: &BenchOptions,
) -> Result<()> {
    let gpu_options = config.gpu_options().expect("a GPU configuration");
    let periodic = system.cell.is_some();
    row.neighbor_search = Some(
        match (gpu_options.neighbor_search, periodic) {
            (NeighborSearch::AllPairs, _) | (NeighborSearch::Auto, false) => "all-pairs",
            _ => "cell-list",
        }
        .into(),
    );
    row.kernels = Some(
        match gpu_options.kernels {
            KernelVariant::Fused | KernelVariant::Auto => "fused",
            KernelVariant::Cluster => "cluster",
            KernelVariant::Naive => "naive",
        }
        .into(),
    );
    let mut md = GpuMd::new(model, system, velocities, integrator, options.skin, gpu_options)?;
    md.initialize()?;
    row.device = format!("cuda ({}, f32)", md.device_name());
    let start = md.snapshot()?;
    set_accuracy(row, start.potential, &start.forces, reference);
    for _ in 0..3 {
        md.force_call()?; // warm-up (and the force graph's capture)
    }
    let calls = sample(options, || {
        let t = Instant::now();
        md.force_call()?;
        Ok(micros(t))
    })?;
    row.set_force_call(&calls, calls.len() as u64);
    // Warm-up: the first chunk captures the step graph; the second times a step for the chunk size.
    md.advance(2)?;
    let t = Instant::now();
    md.advance(2)?;
    let chunk = chunk_for(options, micros(t) / 2.0);
    md.advance(chunk)?;
    let samples = sample(options, || {
        let t = Instant::now();
        // advance() returns after the device finished: the chunk's wall time is the work.
        md.advance(chunk)?;
        Ok(micros(t) / chunk as f64)
    })?;
    row.set_step(&samples, chunk * samples.len() as u64, options.timestep_fs);
    row.cuda_graph = Some(md.use_graph);
    row.integrate_in_kernel = Some(md.integrate_in_kernel());
    row.programmatic_launch = Some(md.programmatic_launch());
    row.one_block_rebuild = Some(md.one_block_rebuild());
    // What the fused kernels were built with; false and absent for the other kernel sets.
    let sizes = md.fused_sizes();
    let flag = |f: fn(&KernelSizes) -> bool| Some(sizes.is_some_and(f));
    row.message_mma = flag(|s| s.message_mma);
    row.mma_backward_divides = flag(|s| s.message_mma && s.mma_backward_divides);
    row.pair_record = flag(|s| s.pair_record);
    row.first_layer = flag(|s| s.first_layer);
    row.last_without_a_vv = flag(|s| s.last_without_a_vv);
    row.dense_alone = flag(|s| s.dense_alone);
    row.early_trigger = flag(|s| s.pdl_early_trigger);
    row.dense_tile = sizes.map(|s| s.tile);
    row.dense_cluster = sizes.map(|s| s.cluster);
    row.dense_split = sizes.map(|s| s.split);
    row.pair_split = sizes.map(|s| s.pair_split);
    row.channel_slices = sizes.map(|s| s.channel_slices);
    row.graph_steps = Some(md.graph_steps());
    row.joined_steps = Some(md.graph_steps() > 1 && md.joins_steps());
    row.gpu_memory_bytes = Some(md.device_memory_bytes()?);
    Ok(())
}

/// Every configuration of `options` on one system. A configuration that cannot run (no GPU, out
/// of memory, not applicable) gives a row with its status and reason instead of failing the run.
pub fn bench_system(name: &str, system: &System, model: &PainnModel, options: &BenchOptions) -> Result<Vec<Row>> {
    let n = system.len();
    let integrator = Integrator::VelocityVerlet {
        timestep_fs: options.timestep_fs,
    };
    let velocities: Vec<Vec3> = maxwell_boltzmann(
        &system.masses,
        options.temperature_k,
        integrator.degrees_of_freedom(n),
        1,
    );
    let reference = if n <= options.reference_max_atoms {
        let pairs = brute_force_pairs(&system.positions, system.cell.as_ref(), model.cutoff());
        Ok(evaluate(model, &system.numbers, &pairs))
    } else {
        Err(format!(
            "no f64 reference above {} atoms (--reference-max-atoms; its memory grows with the pairs)",
            options.reference_max_atoms
        ))
    };
    let gpu_present = crate::gpu::Gpu::available();
    let mut rows = Vec::new();
    for &config in &options.configs {
        let mut row = Row::new(name, n, config.name());
        row.periodic = Some(system.cell.is_some());
        row.timestep_fs = Some(options.timestep_fs);
        let gpu_options = config.gpu_options();
        if config == Config::Cpu && n > options.cpu_max_atoms {
            rows.push(row.skip(
                "skipped",
                format!("larger than --cpu-max-atoms {}", options.cpu_max_atoms),
            ));
            continue;
        }
        if let Some(g) = gpu_options {
            if g.neighbor_search == NeighborSearch::CellList && system.cell.is_none() {
                rows.push(row.skip(
                    "not-applicable",
                    "the GPU cell list needs a periodic cell; open systems use all pairs in every GPU configuration",
                ));
                continue;
            }
            if config == Config::OneCluster {
                if let Some(reason) = crate::gpu::cluster::unsupported(model, n, system.cell.is_some()) {
                    rows.push(row.skip("not-applicable", format!("the one-cluster kernel: {reason}")));
                    continue;
                }
            }
            if !gpu_present {
                rows.push(row.skip("skipped", "no CUDA driver or device found"));
                continue;
            }
        }
        eprintln!("bench: {name} ({n} atoms), {}", config.name());
        let measured = match config {
            Config::Cpu => measure_cpu(&mut row, system, model, &velocities, &integrator, &reference, options),
            _ => measure_gpu(
                &mut row,
                config,
                system,
                model,
                &velocities,
                &integrator,
                &reference,
                options,
            ),
        };
        rows.push(match measured {
            Ok(()) => row,
            Err(e) => {
                let why = crate::system::one_line(&format!("{e:#}"));
                eprintln!("bench: {name}, {}: skipped: {why}", config.name());
                row.skip("skipped", why)
            }
        });
    }
    Ok(rows)
}
