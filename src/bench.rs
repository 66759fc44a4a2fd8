//! `mdrun bench`: full MD step latency per system and configuration, medians over repeated
//! timed chunks, all measured in one run so that ratios compare like with like.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::cell::{Cell, Vec3};
use crate::engine::{CpuEngine, Engine, GpuEngine};
use crate::gpu::md::GpuOptions;
use crate::gpu::neighbors::NeighborSearch;

use crate::integrate::{maxwell_boltzmann, Integrator};
use crate::model::PainnModel;
use crate::system::System;
use crate::units::NS_PER_DAY_PER_FS_PER_S;

/// `copies` × `copies` × `copies` periodic images of a periodic system, as one system.
pub fn replicate(system: &System, copies: usize) -> Result<System> {
    let cell = system
        .cell
        .ok_or_else(|| anyhow!("only a periodic system can be replicated"))?;
    let v = cell.vectors();
    let mut out = System {
        positions: Vec::new(),
        numbers: Vec::new(),
        symbols: Vec::new(),
        masses: Vec::new(),
        velocities: None,
        cell: None,
    };
    for a in 0..copies {
        for b in 0..copies {
            for c in 0..copies {
                let shift = cell.translation([a as i32, b as i32, c as i32]);
                for i in 0..system.len() {
                    let r = system.positions[i];
                    out.positions.push([r[0] + shift[0], r[1] + shift[1], r[2] + shift[2]]);
                    out.numbers.push(system.numbers[i]);
                    out.symbols.push(system.symbols[i].clone());
                    out.masses.push(system.masses[i]);
                }
            }
        }
    }
    let k = copies as f64;
    out.cell = Some(Cell::new(v.map(|row| row.map(|x| x * k))).map_err(|e| anyhow!(e))?);
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    pub atoms: usize,
    pub config: String,
    pub device: String,
    pub steps_timed: u64,
    pub median_us_per_step: f64,
    pub min_us_per_step: f64,
    pub max_us_per_step: f64,
    pub mean_us_per_step: f64,
    pub std_us_per_step: f64,
    pub steps_per_second: f64,
    pub ns_per_day: f64,
    pub atom_steps_per_second: f64,
}

fn stats(samples: &mut [f64]) -> (f64, f64, f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let std = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    (
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
        mean,
        std,
    )
}

/// Times `engine`: `warmup` steps, then `samples` chunks of `chunk` steps each.
fn time_engine(engine: &mut dyn Engine, warmup: u64, chunk: u64, samples: usize) -> Result<Vec<f64>> {
    engine.advance(warmup, f64::INFINITY)?;
    let mut per_step = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        // advance() returns after the device finished: the chunk's wall time is the work.
        engine.advance(chunk, f64::INFINITY)?;
        per_step.push(t0.elapsed().as_secs_f64() * 1e6 / chunk as f64);
    }
    Ok(per_step)
}

pub struct BenchOptions {
    pub timestep_fs: f64,
    pub skin: f64,
    pub cpu_max_atoms: usize,
    pub gpu: bool,
}

pub fn bench_system(name: &str, system: &System, model: &PainnModel, options: &BenchOptions) -> Result<Vec<Row>> {
    let n = system.len();
    let integrator = Integrator::VelocityVerlet {
        timestep_fs: options.timestep_fs,
    };
    let velocities: Vec<Vec3> = maxwell_boltzmann(&system.masses, 300.0, integrator.degrees_of_freedom(n), 1);
    let mut rows = Vec::new();
    let mut record = |config: &str, device: String, mut samples: Vec<f64>, chunk: u64| {
        let (median, min, max, mean, std) = stats(&mut samples);
        let steps_per_second = 1e6 / median;
        rows.push(Row {
            system: name.into(),
            atoms: n,
            config: config.into(),
            device,
            steps_timed: chunk * samples.len() as u64,
            median_us_per_step: median,
            min_us_per_step: min,
            max_us_per_step: max,
            mean_us_per_step: mean,
            std_us_per_step: std,
            steps_per_second,
            ns_per_day: steps_per_second * options.timestep_fs * NS_PER_DAY_PER_FS_PER_S,
            atom_steps_per_second: steps_per_second * n as f64,
        });
    };
    if n <= options.cpu_max_atoms {
        let mut cpu = CpuEngine::new(
            model.clone(),
            system,
            velocities.clone(),
            integrator.clone(),
            options.skin,
        );
        let chunk = (20_000 / n.max(1)).clamp(1, 200) as u64;
        let samples = time_engine(&mut cpu, chunk, chunk, 7)?;
        record("cpu", cpu.description(), samples, chunk);
    }
    if options.gpu {
        let all_pairs = GpuOptions {
            cuda_graph: false,
            neighbor_search: NeighborSearch::AllPairs,
        };
        let mut configs = vec![("gpu-all-pairs-plain", all_pairs)];
        if system.cell.is_some() {
            configs.push((
                "gpu-cell-list-plain",
                GpuOptions {
                    neighbor_search: NeighborSearch::CellList,
                    ..all_pairs
                },
            ));
        }
        configs.push(("gpu-cuda-graph", GpuOptions::default()));
        for (config, gpu_options) in configs {
            let mut gpu = GpuEngine::new(model, system, &velocities, &integrator, options.skin, gpu_options)?;

            let chunk = if n > 5000 { 20 } else { 200 };
            let samples = time_engine(&mut gpu, 2 * chunk, chunk, 15)?;
            record(config, gpu.description(), samples, chunk);
        }
    }
    Ok(rows)
}

pub fn markdown(rows: &[Row]) -> String {
    let mut text = String::from("| system | atoms | config | median µs/step | min | max | steps/s | ns/day (0.5 fs) | atom-steps/s |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        text += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {:.3e} |\n",
            r.system,
            r.atoms,
            r.config,
            r.median_us_per_step,
            r.min_us_per_step,
            r.max_us_per_step,
            r.steps_per_second,
            r.ns_per_day,
            r.atom_steps_per_second
        );
    }
    text
}

/// Loads a system by path; `path@N` replicates a periodic one N×N×N.
pub fn load_system(spec: &str) -> Result<(String, System)> {
    let (path, copies) = match spec.split_once('@') {
        Some((p, c)) => (
            p,
            c.parse::<usize>()
                .map_err(|_| anyhow!("{spec}: `@N` needs a whole number"))?,
        ),
        None => (spec, 1),
    };
    let system = System::read(Path::new(path), None).map_err(|e| anyhow!(e))?;
    let name = Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if copies > 1 {
        Ok((format!("{name}×{copies}³"), replicate(&system, copies)?))
    } else {
        Ok((name, system))
    }
}
