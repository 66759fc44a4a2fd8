//! The one-cluster kernel (kernels/painn_cluster.cu) held against the f64 CPU reference on fresh
//! random molecules, and against the multi-kernel path. Needs a CUDA device with thread-block
//! clusters (Hopper): ignored elsewhere (`.device/run-tests` runs them on the GPU machine).
//! The kernels here are compiled with their self-checks (MDRUN_KERNEL_CHECKS=1): the one-cluster
//! kernel traps if the bytes it sends in any phase differ from its phase plan.

mod common;

use common::*;
use mdrun::cell::Cell;
use mdrun::gpu::cluster::MAX_ATOMS;
use mdrun::gpu::md::{evaluate_with, GpuMd, GpuOptions};
use mdrun::gpu::naive::KernelVariant;
use mdrun::integrate::{maxwell_boltzmann, Integrator};
use mdrun::system::System;

static CHECKS: std::sync::Once = std::sync::Once::new();

/// Every test calls this first, before any kernel is compiled (the variable is process-wide).
fn with_kernel_checks() {
    CHECKS.call_once(|| std::env::set_var("MDRUN_KERNEL_CHECKS", "1"));
}

fn with(kernels: KernelVariant) -> GpuOptions {
    GpuOptions {
        cuda_graph: false,
        kernels,
        ..GpuOptions::default()
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn one_cluster_kernel_matches_cpu_on_random_molecules() {
    with_kernel_checks();
    // Every size from 1 to MAX_ATOMS atoms over the seeds; student width, a narrow model with a
    // shorter cutoff and shared filters, and dense clumps where every pair is inside the cutoff.
    for seed in 0..12u64 {
        let mut config = full_config();
        if seed % 3 == 1 {
            config.n_atom_basis = 32;
            config.cutoff = 4.0;
            config.shared_filters = true;
        }
        let model = random_model(config, 300 + seed);
        let n = [1, 2, 3, 5, 8, 12, 16, 7, 16, 11, 4, 14][seed as usize];
        let edge = if seed % 4 == 0 { 4.0 } else { 3.0 + seed as f64 };
        let (numbers, positions) = random_structure(n, edge, 0.8, None, 400 + seed);
        let system = system_of(&numbers, positions, None);
        let (e, f) = compare_gpu_with_cpu_using(&model, &system, with(KernelVariant::Cluster));
        eprintln!("seed {seed}, {n} atoms: energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å");
        assert!(e <= 1e-5, "seed {seed}: energy relative error {e:e}");
        assert!(f <= 1e-4, "seed {seed}: force max abs error {f:e}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn one_cluster_kernel_agrees_with_the_fused_kernels_on_shipped_molecules() {
    with_kernel_checks();
    let model = trained_model();
    for name in ["water.xyz", "ethanol.xyz", "benzene.xyz"] {
        let system = System::read(std::path::Path::new(&project_file(&format!("systems/{name}"))), None).unwrap();
        let (e_cl, f_cl) = evaluate_with(&model, &system, with(KernelVariant::Cluster)).unwrap();
        let (e_fu, f_fu) = evaluate_with(&model, &system, with(KernelVariant::Fused)).unwrap();
        let df = max_deviation(&f_cl, &f_fu);
        eprintln!("{name}: |ΔE| {:.2e} eV, max |ΔF| {df:.2e} eV/Å", (e_cl - e_fu).abs());
        assert!((e_cl - e_fu).abs() <= 1e-5 * e_fu.abs(), "{name}: {e_cl} vs {e_fu}");
        assert!(df <= 1e-4, "{name}: max force difference {df:e}");
        // Fixed-order sums: the same positions give the same bits.
        let again = evaluate_with(&model, &system, with(KernelVariant::Cluster)).unwrap();
        assert_eq!(again.0.to_bits(), e_cl.to_bits(), "{name}: not deterministic");
        assert!(
            again.1.iter().zip(&f_cl).all(|(a, b)| a == b),
            "{name}: forces not deterministic"
        );
    }
}

/// The MD step fused into the one-cluster kernel against the same kernel between the integrator
/// kernels: the same integrator functions and the same evaluation, so the trajectories must
/// agree to rounding (they agree bit for bit on the H200), NVE and Langevin, replayed as graphs
/// and launched plainly, over chunks of 1 to 31 steps.
#[test]
#[ignore = "needs a CUDA device"]
fn md_step_fused_into_the_kernel_follows_the_integrator_kernels() {
    with_kernel_checks();
    let model = random_model(full_config(), 21);
    for (seed, n) in [(0u64, 3usize), (1, 9), (2, 16)] {
        let (numbers, positions) = random_structure(n, 5.0, 0.9, None, 500 + seed);
        let system = system_of(&numbers, positions, None);
        let integrator = if seed == 1 {
            langevin(77)
        } else {
            Integrator::VelocityVerlet { timestep_fs: 0.5 }
        };
        let velocities = maxwell_boltzmann(&system.masses, 300.0, integrator.degrees_of_freedom(n), seed);
        let run = |integrate_in_kernel: bool, cuda_graph: bool| {
            let options = GpuOptions {
                kernels: KernelVariant::Cluster,
                integrate_in_kernel,
                cuda_graph,
                ..GpuOptions::default()
            };
            advanced_gpu_md(&model, &system, &velocities, &integrator, 1.0, options, &[1, 7, 1, 31])
                .snapshot()
                .unwrap()
        };
        let launched = run(false, true);
        for (inside, how) in [(run(true, true), "graph"), (run(true, false), "plain launches")] {
            assert_eq!(inside.step, 40);
            let dr = max_deviation(&inside.positions, &launched.positions);
            let dv = max_deviation(&inside.velocities, &launched.velocities);
            let de = (inside.potential - launched.potential).abs();
            let bitwise = dr == 0.0 && dv == 0.0 && de == 0.0;
            eprintln!(
                "{n} atoms, {how}: max |Δr| {dr:.1e} Å, max |Δv| {dv:.1e} Å/fs, |ΔE| {de:.1e} eV (bitwise: {bitwise})"
            );
            assert!(dr <= 1e-9, "{n} atoms: positions differ by {dr:e} Å after 40 steps");
            assert!(dv <= 1e-10, "{n} atoms: velocities differ by {dv:e} Å/fs");
            assert!(
                de <= 1e-9 * launched.potential.abs().max(1.0),
                "{n} atoms: energies {} vs {}",
                inside.potential,
                launched.potential
            );
            let dw = (inside.thermostat_work - launched.thermostat_work).abs();
            assert!(dw <= 1e-9, "{n} atoms: thermostat work differs by {dw:e} eV");
            // The trajectory moved: the comparison is not between two copies of the start.
            assert!(max_deviation(&inside.positions, &system.positions) > 1e-4);
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn cluster_kernel_runs_where_it_applies_and_refuses_the_rest() {
    with_kernel_checks();
    let model = random_model(full_config(), 7);
    let engine_with = |kernels: KernelVariant, n: usize, cell: Option<Cell>| {
        let (numbers, positions) = random_structure(n, 6.0, 0.9, cell.as_ref(), 8);
        let system = system_of(&numbers, positions, cell);
        let velocities = vec![[0.0; 3]; n];
        let integrator = Integrator::VelocityVerlet { timestep_fs: 0.5 };
        GpuMd::new(&model, &system, &velocities, &integrator, 1.0, with(kernels)).map(|md| md.kernels())
    };
    let engine = |n: usize, cell: Option<Cell>| engine_with(KernelVariant::Cluster, n, cell);
    assert_eq!(engine(MAX_ATOMS, None).unwrap(), KernelVariant::Cluster);
    // The default never picks it (perf-notes v64: the fused graph is the faster from 3 atoms on);
    // asked for, it takes up to MAX_ATOMS.
    let box12 = Cell::orthorhombic([12.0, 12.0, 12.0]).unwrap();
    for n in [3, MAX_ATOMS] {
        assert_eq!(
            engine_with(KernelVariant::Auto, n, None).unwrap(),
            KernelVariant::Fused,
            "{n} atoms"
        );
    }
    assert_eq!(
        engine_with(KernelVariant::Auto, 8, Some(box12)).unwrap(),
        KernelVariant::Fused
    );
    // Asked for where it does not apply: a clear error, not a silent fallback.
    let too_many = engine(MAX_ATOMS + 1, None).unwrap_err();
    assert!(too_many.to_string().contains("atoms"), "{too_many}");
    let periodic = engine(8, Some(Cell::orthorhombic([12.0, 12.0, 12.0]).unwrap())).unwrap_err();
    assert!(periodic.to_string().contains("open boundaries"), "{periodic}");
    // A radial basis too wide for the per-pair arrays in shared memory: a clear refusal.
    let mut wide = full_config();
    wide.n_rbf = 64;
    let wide = random_model(wide, 9);
    let (numbers, positions) = random_structure(8, 6.0, 0.9, None, 10);
    let system = system_of(&numbers, positions, None);
    let integrator = Integrator::VelocityVerlet { timestep_fs: 0.5 };
    let refused = GpuMd::new(
        &wide,
        &system,
        &[[0.0; 3]; 8],
        &integrator,
        1.0,
        with(KernelVariant::Cluster),
    )
    .err()
    .expect("n_rbf = 64 should not fit the one-cluster kernel's shared memory");
    assert!(refused.to_string().contains("shared memory"), "{refused}");
}
