//! The unfused `naive` kernels (kernels/naive.cu, the benchmark's `gpu-naive` configuration)
//! held against the f64 CPU reference and against the fused kernels. Needs a CUDA device:
//! ignored elsewhere (`.device/run-tests naive` runs them on the GPU machine).

mod common;

use common::*;
use mdrun::cell::{Cell, Vec3};
use mdrun::gpu::md::{GpuMd, GpuOptions};
use mdrun::gpu::naive::KernelVariant;
use mdrun::gpu::neighbors::NeighborSearch;
use mdrun::integrate::{maxwell_boltzmann, Integrator};
use mdrun::model::PainnModel;
use mdrun::neighbors::brute_force_pairs;
use mdrun::system::System;

fn naive(neighbor_search: NeighborSearch) -> GpuOptions {
    GpuOptions {
        cuda_graph: false,
        neighbor_search,
        kernels: KernelVariant::Naive,
        integrate_in_kernel: false,
        programmatic_launch: false,
        one_block_rebuild: false,
        graph_steps: 1,
        join_steps: false,
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn naive_kernels_match_cpu_on_random_open_geometries() {
    for seed in 0..6 {
        let mut config = full_config();
        if seed % 2 == 1 {
            config.n_atom_basis = 32;
            config.cutoff = 4.0;
        }
        if seed == 4 {
            config.shared_filters = true;
        }
        let model = random_model(config, 110 + seed);
        let (numbers, positions) = random_structure(6 + 5 * seed as usize, 5.0 + seed as f64, 0.9, None, 120 + seed);
        let system = system_of(&numbers, positions, None);
        let (e, f) = compare_gpu_with_cpu_using(&model, &system, naive(NeighborSearch::AllPairs));
        eprintln!("naive, open seed {seed}: energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å");
        assert!(e <= 1e-5, "energy relative error {e:e}");
        assert!(f <= 1e-4, "force max abs error {f:e}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn naive_kernels_match_cpu_on_random_periodic_geometries_with_both_searches() {
    let cells = [
        Cell::orthorhombic([9.0, 10.0, 11.0]).unwrap(),
        Cell::new([[7.0, 0.0, 0.0], [1.5, 6.5, 0.0], [-1.0, 1.2, 6.8]]).unwrap(),
        Cell::new([[5.5, 0.0, 0.0], [2.0, 5.2, 0.0], [0.7, -1.5, 5.4]]).unwrap(),
    ];
    for (index, cell) in cells.iter().enumerate() {
        let model = random_model(full_config(), 140 + index as u64);
        let (numbers, frac) = random_structure(12 + 4 * index, 1.0, 0.0, None, 150 + index as u64);
        let positions: Vec<Vec3> = frac.iter().map(|s| cell.to_cartesian(s)).collect();
        let pairs = brute_force_pairs(&positions, Some(cell), 0.9);
        let keep: Vec<usize> = (0..positions.len())
            .filter(|&i| !(0..pairs.len()).any(|p| pairs.first[p] == i && pairs.second[p] < i))
            .collect();
        let numbers: Vec<u8> = keep.iter().map(|&i| numbers[i]).collect();
        let positions: Vec<Vec3> = keep.iter().map(|&i| positions[i]).collect();
        let system = system_of(&numbers, positions, Some(*cell));
        for search in [NeighborSearch::AllPairs, NeighborSearch::CellList] {
            let (e, f) = compare_gpu_with_cpu_using(&model, &system, naive(search));
            eprintln!(
                "naive, periodic cell {index}, {search:?}: energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å"
            );
            assert!(e <= 1e-5, "energy relative error {e:e}");
            assert!(f <= 1e-4, "force max abs error {f:e}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn naive_kernels_match_cpu_on_shipped_systems_and_run_md_like_the_fused_ones() {
    let model = PainnModel::load(std::path::Path::new(&project_file(
        "models/painn-random-hcno-f128.safetensors",
    )))
    .unwrap();
    for name in ["benzene.xyz", "alanine_dipeptide.pdb", "waterbox_64.xyz"] {
        let system = System::read(std::path::Path::new(&project_file(&format!("systems/{name}"))), None).unwrap();
        let (e, f) = compare_gpu_with_cpu_using(&model, &system, naive(NeighborSearch::Auto));
        eprintln!("naive, {name}: energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å");
        assert!(e <= 1e-5, "{name}: energy relative error {e:e}");
        assert!(f <= 1e-4, "{name}: force max abs error {f:e}");
        // 50 MD steps, naive (graph and plain launches) against fused: same trajectory to 1e-4 Å.
        let velocities = maxwell_boltzmann(&system.masses, 300.0, 3 * system.len() - 3, 4);
        let integrator = Integrator::VelocityVerlet { timestep_fs: 0.5 };
        let mut finals = Vec::new();
        for options in [
            GpuOptions::default(),
            naive(NeighborSearch::Auto),
            GpuOptions {
                cuda_graph: true,
                ..naive(NeighborSearch::Auto)
            },
        ] {
            let mut md = GpuMd::new(&model, &system, &velocities, &integrator, 1.0, options).unwrap();
            md.initialize().unwrap();
            md.advance(50).unwrap();
            md.force_call().unwrap();
            assert!(md.device_memory_bytes().unwrap() > 0);
            finals.push(md.snapshot().unwrap().positions);
        }
        for other in &finals[1..] {
            let dev = max_deviation(&finals[0], other);
            eprintln!("{name}: max |Δr| naive vs fused after 50 steps = {dev:.2e} Å");
            assert!(dev <= 1e-4, "{name}: {dev:e}");
        }
    }
}
