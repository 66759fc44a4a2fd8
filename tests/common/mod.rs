//! Shared helpers for the integration tests: random models, random structures, rotations.
#![allow(dead_code)]

use mdrun::cell::{Cell, Vec3};
use mdrun::engine::Snapshot;
use mdrun::forcefield::cpu::evaluate;
use mdrun::gpu::md::{evaluate_with, GpuMd, GpuOptions};
use mdrun::gpu::naive::KernelVariant;
use mdrun::integrate::{maxwell_boltzmann, Integrator};
use mdrun::model::{PainnConfig, PainnModel};
use mdrun::neighbors::brute_force_pairs;
use mdrun::system::System;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

pub const ELEMENTS: [u8; 4] = [1, 6, 7, 8];

pub fn small_config(cutoff: f64) -> PainnConfig {
    PainnConfig {
        n_atom_basis: 16,
        n_interactions: 2,
        n_rbf: 8,
        cutoff,
        shared_filters: false,
        elements: ELEMENTS.to_vec(),
    }
}

pub fn full_config() -> PainnConfig {
    PainnConfig {
        n_atom_basis: 128,
        n_interactions: 3,
        n_rbf: 20,
        cutoff: 5.0,
        shared_filters: false,
        elements: ELEMENTS.to_vec(),
    }
}

/// A random model whose offsets and references are non-zero too, so every term is exercised.
pub fn random_model(config: PainnConfig, seed: u64) -> PainnModel {
    let mut model = PainnModel::random(config, seed);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    model.energy_scale = rng.random_range(0.5..1.5);
    model.mean_per_atom = rng.random_range(-2.0..2.0);
    for z in ELEMENTS {
        model.atomref[usize::from(z)] = rng.random_range(-50.0..-1.0);
    }
    model
}

/// `n` atoms of random H/C/N/O placed in a cube of edge `edge` Å (relative to `origin`),
/// no two closer than `min_distance` (periodic images included when `cell` is given).
pub fn random_structure(
    n: usize,
    edge: f64,
    min_distance: f64,
    cell: Option<&Cell>,
    seed: u64,
) -> (Vec<u8>, Vec<Vec3>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut positions: Vec<Vec3> = Vec::new();
    let mut numbers = Vec::new();
    let mut attempts = 0;
    while positions.len() < n {
        attempts += 1;
        assert!(attempts < 1_000_000, "cannot place {n} atoms in {edge} Å");
        let r = [0, 1, 2].map(|_| rng.random_range(0.0..edge));
        let ok = positions.iter().all(|p| {
            let mut d = [r[0] - p[0], r[1] - p[1], r[2] - p[2]];
            if let Some(cell) = cell {
                // minimum image by brute force over neighbouring images
                let mut best = f64::INFINITY;
                for a in -1..=1 {
                    for b in -1..=1 {
                        for c in -1..=1 {
                            let t = cell.translation([a, b, c]);
                            let e = [d[0] + t[0], d[1] + t[1], d[2] + t[2]];
                            best = best.min(e[0] * e[0] + e[1] * e[1] + e[2] * e[2]);
                        }
                    }
                }
                return best.sqrt() >= min_distance;
            }
            d = d.map(|x| x * x);
            (d[0] + d[1] + d[2]).sqrt() >= min_distance
        });
        if ok {
            positions.push(r);
            numbers.push(ELEMENTS[rng.random_range(0..4)]);
        }
    }
    (numbers, positions)
}

/// A random proper rotation matrix (rows), from a random unit quaternion.
pub fn random_rotation(seed: u64) -> [[f64; 3]; 3] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut q = [0.0f64; 4];
    loop {
        for x in q.iter_mut() {
            *x = rng.random_range(-1.0..1.0);
        }
        let n = q.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 0.1 && n < 1.0 {
            q.iter_mut().for_each(|x| *x /= n);
            break;
        }
    }
    let [w, x, y, z] = q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

pub fn rotate(m: &[[f64; 3]; 3], r: &Vec3) -> Vec3 {
    [0, 1, 2].map(|i| m[i][0] * r[0] + m[i][1] * r[1] + m[i][2] * r[2])
}

/// Benzene (Å), planar, C–C 1.39 Å, C–H 1.09 Å.
pub fn benzene() -> (Vec<&'static str>, Vec<Vec3>) {
    let mut symbols = Vec::new();
    let mut positions = Vec::new();
    for (symbol, radius) in [("C", 1.39), ("H", 2.48)] {
        for k in 0..6 {
            let angle = std::f64::consts::PI / 3.0 * k as f64;
            symbols.push(symbol);
            positions.push([radius * angle.cos(), radius * angle.sin(), 0.0]);
        }
    }
    (symbols, positions)
}

/// A fresh temporary directory per call (tests run in parallel).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("mdrun-{tag}-{}-{unique}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The project root (tests run from it under cargo and on the device machine).
pub fn project_file(relative: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(relative)
        .display()
        .to_string()
}

/// Columns of the energy CSV by header name.
pub fn read_energy_csv(path: &std::path::Path) -> std::collections::HashMap<String, Vec<f64>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let mut columns: std::collections::HashMap<String, Vec<f64>> =
        header.iter().map(|h| (h.clone(), Vec::new())).collect();
    for line in lines {
        for (h, v) in header.iter().zip(line.split(',')) {
            columns.get_mut(h).unwrap().push(v.parse().unwrap());
        }
    }
    columns
}

// ---- the GPU path against the f64 reference

pub const SYMBOLS: [&str; 9] = ["", "H", "", "", "", "", "C", "N", "O"];

/// The largest |a − b| over the Cartesian components of two lists of vectors.
pub fn max_deviation(a: &[Vec3], b: &[Vec3]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| (0..3).map(move |k| (x[k] - y[k]).abs()))
        .fold(0.0, f64::max)
}

pub fn system_of(numbers: &[u8], positions: Vec<Vec3>, cell: Option<Cell>) -> System {
    let symbols: Vec<&str> = numbers.iter().map(|&z| SYMBOLS[z as usize]).collect();
    System::from_symbols(&symbols, positions, cell).unwrap()
}

/// `n` random atoms at uniform fractional positions of `cell`, less every atom within 0.9 Å
/// (minimum image) of an earlier one: where the cell is small, a neighbor has several images.
pub fn random_periodic_system(n: usize, cell: Cell, seed: u64) -> System {
    let (numbers, frac) = random_structure(n, 1.0, 0.0, None, seed);
    let positions: Vec<Vec3> = frac.iter().map(|s| cell.to_cartesian(s)).collect();
    let pairs = brute_force_pairs(&positions, Some(&cell), 0.9);
    let keep: Vec<usize> = (0..positions.len())
        .filter(|&i| !(0..pairs.len()).any(|p| pairs.first[p] == i && pairs.second[p] < i))
        .collect();
    let numbers: Vec<u8> = keep.iter().map(|&i| numbers[i]).collect();
    let positions: Vec<Vec3> = keep.iter().map(|&i| positions[i]).collect();
    system_of(&numbers, positions, Some(cell))
}

/// The shipped trained student (models/painn-hcno-f128.safetensors).
pub fn trained_model() -> PainnModel {
    PainnModel::load(std::path::Path::new(&project_file(
        "models/painn-hcno-f128.safetensors",
    )))
    .unwrap()
}

/// Langevin BAOAB at 0.5 fs, 300 K and 5 ps⁻¹ friction with noise seed `seed`: the GPU tests'
/// thermostat.
pub fn langevin(seed: u64) -> Integrator {
    Integrator::Langevin {
        timestep_fs: 0.5,
        temperature_k: 300.0,
        friction_per_ps: 5.0,
        seed,
    }
}

/// A shipped structure, `systems/<name>`.
pub fn shipped_system(name: &str) -> System {
    System::read(std::path::Path::new(&project_file(&format!("systems/{name}"))), None).unwrap()
}

/// Two GPU engines' states, bit for bit: positions, velocities, forces and the thermostat's work.
pub fn assert_same_state(a: &Snapshot, b: &Snapshot, case: &str) {
    assert_eq!(a.positions, b.positions, "{case}");
    assert_eq!(a.velocities, b.velocities, "{case}");
    assert_eq!(a.forces, b.forces, "{case}");
    assert_eq!(a.thermostat_work, b.thermostat_work, "{case}");
}

/// A GPU MD engine with `options`, initialized, then advanced by each of `chunks` steps in turn.
pub fn advanced_gpu_md(
    model: &PainnModel,
    system: &System,
    velocities: &[Vec3],
    integrator: &Integrator,
    skin: f64,
    options: GpuOptions,
    chunks: &[u64],
) -> GpuMd {
    let mut md = GpuMd::new(model, system, velocities, integrator, skin, options).unwrap();
    md.initialize().unwrap();
    for &chunk in chunks {
        md.advance(chunk).unwrap();
    }
    md
}

/// (relative energy error, max abs force error in eV/Å) of the GPU against the CPU reference.
pub fn compare_gpu_with_cpu(model: &PainnModel, system: &System) -> (f64, f64) {
    let options = GpuOptions {
        cuda_graph: false,
        ..GpuOptions::default()
    };
    compare_gpu_with_cpu_using(model, system, options)
}

/// [`compare_gpu_with_cpu`] with the given GPU switches (kernel variant, neighbor search).
pub fn compare_gpu_with_cpu_using(model: &PainnModel, system: &System, options: GpuOptions) -> (f64, f64) {
    let pairs = brute_force_pairs(&system.positions, system.cell.as_ref(), model.cutoff());
    let reference = evaluate(model, &system.numbers, &pairs);
    let (energy, forces) = evaluate_with(model, system, options).unwrap();
    let e_err = (energy - reference.energy).abs() / reference.energy.abs().max(1e-12);
    let f_err = max_deviation(&forces, &reference.forces);
    assert!(forces.iter().flatten().all(|x| x.is_finite()));
    (e_err, f_err)
}

/// 40 MD steps with programmatic dependent launches against ordinary launches, bit for bit, graph
/// and plain: the water box (cell list, tensor-core messages) under Langevin and a random open
/// molecule (all-pairs search, scalar messages, clusters of dense blocks) under NVE, with a skin
/// small enough that the neighbor rows are rebuilt inside the run. Needs a CUDA device.
pub fn assert_programmatic_launches_follow_ordinary_launches() {
    let trained = trained_model();
    let water = System::read(std::path::Path::new(&project_file("systems/waterbox_64_eq.xyz")), None).unwrap();
    let random = random_model(full_config(), 61);
    let (numbers, positions) = random_structure(20, 6.0, 0.9, None, 62);
    let molecule = system_of(&numbers, positions, None);
    let langevin = langevin(63);
    let nve = Integrator::VelocityVerlet { timestep_fs: 0.5 };
    for (model, system, integrator, what) in [
        (&trained, &water, &langevin, "water box, Langevin"),
        (&random, &molecule, &nve, "random molecule, NVE"),
    ] {
        let velocities = maxwell_boltzmann(&system.masses, 300.0, integrator.degrees_of_freedom(system.len()), 64);
        let run = |programmatic_launch: bool, cuda_graph: bool| {
            let options = GpuOptions {
                kernels: KernelVariant::Fused,
                programmatic_launch,
                cuda_graph,
                ..GpuOptions::default()
            };
            let md = advanced_gpu_md(model, system, &velocities, integrator, 0.05, options, &[1, 7, 1, 31]);
            // A failed capture falls back to plain launches: the graph case must be a graph.
            assert_eq!(md.use_graph, cuda_graph, "{what}: graph capture");
            (md.programmatic_launch(), md.snapshot().unwrap())
        };
        let (off, ordinary) = run(false, true);
        assert!(!off);
        for cuda_graph in [true, false] {
            let (on, programmatic) = run(true, cuda_graph);
            if !on {
                eprintln!("{what}: no programmatic launches below compute capability 9.0; nothing to compare");
                return;
            }
            assert_eq!(programmatic.step, 40);
            assert_eq!(programmatic.positions, ordinary.positions, "{what}, graph {cuda_graph}");
            assert_eq!(
                programmatic.velocities, ordinary.velocities,
                "{what}, graph {cuda_graph}"
            );
            assert_eq!(programmatic.forces, ordinary.forces, "{what}, graph {cuda_graph}");
            assert_eq!(programmatic.potential, ordinary.potential, "{what}, graph {cuda_graph}");
            let moved = max_deviation(&programmatic.positions, &system.positions);
            assert!(moved > 1e-3, "{what}: the trajectory moved ({moved:e} Å)");
            eprintln!("{what}, graph {cuda_graph}: bit for bit after 40 steps (max displacement {moved:.2e} Å)");
        }
    }
}
