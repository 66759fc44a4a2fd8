//! Every dense-layer launch shape (atoms per block, split dot products, thread-block clusters)
//! and every pair split of the message kernels (scalar and tensor-core) held against the f64
//! reference, always on the multi-kernel path (small molecules would otherwise take the
//! one-cluster kernel and skip the message kernels). The shape is chosen by system size and can be forced through
//! MDRUN_DENSE_* variables, which are process-wide: these tests live in their own test binary and
//! run one after another, so that no other GPU test sees the variables (so does the
//! programmatic-launch test with the early trigger). Needs a CUDA device.

mod common;

use common::*;
use mdrun::cell::Cell;
use mdrun::gpu::forces::kernel_sizes;
use mdrun::gpu::md::{GpuMd, GpuOptions};
use mdrun::gpu::naive::KernelVariant;
use mdrun::gpu::MMA_MAX_RBF;
use mdrun::integrate::maxwell_boltzmann;
use mdrun::model::PainnModel;
use mdrun::neighbors::brute_force_pairs;
use mdrun::system::System;
use std::sync::Mutex;

static ENVIRONMENT: Mutex<()> = Mutex::new(());

/// (tile, split, cluster, pair split, channel slices, tensor-core messages, tensor-core backward
/// dividing by d) shapes: the defaults below 64 atoms, from 64, from 128 and from 512, odd tiles,
/// clusters of 2, 4 and 8 blocks (blocks owning 16 to 64 channels of a layer, some with idle
/// warps; the largest tiles whose partial sums fit the dense kernels' shared memory), the
/// tensor-core backward with 1/d and with d, message kernels with 1, 2 and 4 threads (or warp
/// groups) per channel and 1, 2 and 4 blocks per atom, with the filter products on tensor cores
/// and in scalar f32 at each size band, and both matvec paths for μ's Cartesian rows (one matvec
/// over 3·tile rows where they fit in the accumulators, tiles 1 and 2; one per row, tiles 3 and
/// 4, with clusters at tile 3: the default from 128 atoms where its blocks fit the device, v69;
/// clusters of 8 at one atom per block, the default up to 5 atoms where they fit the device, v72, v73);
/// two thirds of them, the defaults of the first two bands and the 192-atom one among them, with
/// the last mixing without its a_vv third (the default since v69; perf-notes v68).
type Layout = [&'static str; 8];
const LAYOUTS: [Layout; 16] = [
    ["1", "4", "4", "4", "4", "1", "0", "1"],
    ["2", "4", "1", "1", "2", "1", "1", "1"],
    ["1", "4", "4", "4", "4", "0", "0", "0"],
    ["2", "4", "1", "4", "4", "1", "0", "1"],
    ["2", "4", "1", "2", "2", "1", "0", "0"],
    ["2", "4", "1", "2", "2", "0", "0", "1"],
    ["2", "4", "1", "1", "1", "1", "0", "0"],
    ["2", "4", "1", "1", "1", "0", "0", "1"],
    ["1", "4", "4", "2", "4", "1", "0", "1"],
    ["1", "4", "1", "4", "1", "0", "0", "1"],
    ["4", "4", "1", "1", "4", "1", "0", "0"],
    ["3", "2", "1", "2", "2", "0", "0", "1"],
    ["3", "4", "2", "1", "2", "1", "1", "1"],
    ["2", "2", "2", "2", "1", "1", "0", "1"],
    ["2", "4", "8", "2", "2", "0", "0", "0"],
    ["1", "4", "8", "4", "4", "1", "0", "1"],
];

const VARIABLES: [&str; 8] = [
    "MDRUN_DENSE_TILE",
    "MDRUN_DENSE_SPLIT",
    "MDRUN_DENSE_CLUSTER",
    "MDRUN_PAIR_SPLIT",
    "MDRUN_CHANNEL_SLICES",
    "MDRUN_MESSAGE_MMA",
    "MDRUN_MMA_BACKWARD_DIVIDES",
    "MDRUN_LAST_WITHOUT_A_VV",
];

/// One evaluation through the fused kernels, without a graph: what these tests compare.
fn fused_evaluation() -> GpuOptions {
    GpuOptions {
        cuda_graph: false,
        kernels: KernelVariant::Fused,
        ..GpuOptions::default()
    }
}

fn check_layouts(model: &PainnModel, system: &System, what: &str) {
    check_layouts_within(model, system, what, 1e-4);
}

/// As check_layouts, with the force tolerance (max abs error, eV/Å) given.
fn check_layouts_within(model: &PainnModel, system: &System, what: &str, force_tolerance: f64) {
    let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    run_layouts(model, system, what, force_tolerance, |_| true);
}

/// The layouts that `keep` accepts, the caller holding ENVIRONMENT.
fn run_layouts(model: &PainnModel, system: &System, what: &str, force_tolerance: f64, keep: impl Fn(&Layout) -> bool) {
    for layout in LAYOUTS.into_iter().filter(|l| keep(l)) {
        let [_, _, cluster, .., mma, divides, without_a_vv] = layout;
        for (name, value) in VARIABLES.iter().zip(layout) {
            std::env::set_var(name, value);
        }
        // The layout asked for is the one that runs (tensor cores where the basis allows them).
        let sizes = kernel_sizes(model, system.len()).unwrap();
        assert_eq!(
            sizes.message_mma,
            mma == "1" && model.config.n_rbf <= MMA_MAX_RBF,
            "{what} {layout:?}"
        );
        assert_eq!(sizes.mma_backward_divides, divides == "1", "{what} {layout:?}");
        assert_eq!(sizes.cluster.to_string(), cluster, "{what} {layout:?}");
        assert_eq!(sizes.last_without_a_vv, without_a_vv == "1", "{what} {layout:?}");
        let fused = fused_evaluation();
        let (e, f) = compare_gpu_with_cpu_using(model, system, fused);
        eprintln!(
            "{what}: (tile, split, cluster, pair split, channel slices, mma, divides, without a_vv) {layout:?}: \
             energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å"
        );
        assert!(e <= 1e-5 && f <= force_tolerance, "{what} {layout:?}: {e:e} {f:e}");
    }
    for name in VARIABLES {
        std::env::remove_var(name);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn every_dense_layout_matches_the_cpu_on_the_water_box() {
    let model = PainnModel::load(std::path::Path::new(&project_file(
        "models/painn-random-hcno-f128.safetensors",
    )))
    .unwrap();
    let system = System::read(std::path::Path::new(&project_file("systems/waterbox_64.xyz")), None).unwrap();
    check_layouts(&model, &system, "water box, F = 128");
}

// The cluster exchanges run without a cluster barrier between one exchange's sends and the
// next's (perf-notes v39, v54): a block may receive the next exchange's partial sums while it
// still works between the two. Compiled with MDRUN_KERNEL_CHECKS=1, every exchange holds back
// one block of each cluster after its wait, a different one each time, so that the others run
// ahead: every cluster layout must still match the f64 reference.
#[test]
#[ignore = "needs a CUDA device"]
fn every_cluster_layout_matches_the_cpu_with_blocks_held_back_after_each_matvec() {
    let model = PainnModel::load(std::path::Path::new(&project_file(
        "models/painn-random-hcno-f128.safetensors",
    )))
    .unwrap();
    let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MDRUN_KERNEL_CHECKS", "1");
    for seed in 0..2u64 {
        let (numbers, positions) = random_structure(9 + 14 * seed as usize, 6.0, 0.9, None, 90 + seed);
        run_layouts(
            &model,
            &system_of(&numbers, positions, None),
            &format!("blocks held back, F = 128, seed {seed}"),
            1e-4,
            |&[_, _, cluster, ..]| cluster != "1",
        );
    }
    std::env::remove_var("MDRUN_KERNEL_CHECKS");
}

#[test]
#[ignore = "needs a CUDA device"]
fn every_dense_layout_matches_the_cpu_for_a_narrow_model_on_random_molecules() {
    let mut config = full_config();
    config.n_atom_basis = 32;
    config.cutoff = 4.0;
    for seed in 0..3u64 {
        let model = random_model(config.clone(), 70 + seed);
        let (numbers, positions) = random_structure(7 + 6 * seed as usize, 5.0, 0.9, None, 80 + seed);
        check_layouts(
            &model,
            &system_of(&numbers, positions, None),
            &format!("F = 32, seed {seed}"),
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn every_message_layout_matches_the_cpu_on_a_random_periodic_geometry() {
    // The student's width on fresh random positions in a sheared cell smaller than two cutoffs
    // (several images of a neighbor): the message kernels' pair tiles, channel groups and chunks
    // at every split, scalar and on tensor cores.
    let model = random_model(full_config(), 90);
    let cell = Cell::new([[9.0, 0.0, 0.0], [1.5, 8.5, 0.0], [-1.0, 1.2, 8.8]]).unwrap();
    check_layouts(
        &model,
        &random_periodic_system(48, cell, 91),
        "random periodic, F = 128",
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn every_message_layout_matches_the_cpu_with_filter_weights_a_thousand_times_smaller() {
    // The tensor-core kernels split the filter weights into half-precision hi and lo parts; with
    // small weights the lo parts would fall below half precision's normal range without the
    // power-of-two scale (perf-notes v34). Weights and biases of the filter ×1e-3: every force
    // term goes through the filter, so the forces and their f32 errors shrink 1000× with it, and
    // so does the tolerance (a lost lo half, ~5e-4 relative, would exceed it).
    let scale = 1e-3;
    let mut model = random_model(full_config(), 95);
    model.filter.weight *= scale;
    model.filter.weight_t *= scale;
    if let Some(bias) = model.filter.bias.as_mut() {
        *bias *= scale;
    }
    let cell = Cell::new([[8.5, 0.0, 0.0], [0.0, 8.5, 0.0], [1.0, -0.5, 8.5]]).unwrap();
    check_layouts_within(
        &model,
        &random_periodic_system(36, cell, 96),
        "filter weights ×1e-3, F = 128",
        1e-4 * scale,
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn programmatic_launches_with_the_early_trigger_follow_ordinary_launches_bit_for_bit() {
    // The early trigger (each kernel lets the next launch as it starts: MDRUN_PDL_EARLY_TRIGGER,
    // process-wide, hence here) is where a wait that comes too late would show.
    let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("MDRUN_PDL_EARLY_TRIGGER", "1");
    assert_programmatic_launches_follow_ordinary_launches();
    std::env::remove_var("MDRUN_PDL_EARLY_TRIGGER");
}

/// The tensor-core message kernels' variants (pair record, first interaction with μ = 0), as
/// (MDRUN_PAIR_RECORD, MDRUN_FIRST_LAYER): the plain kernels first (neither; the default before
/// perf-notes v67), then each alone and both.
const MESSAGE_VARIANTS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// `run(variant)` for each of MESSAGE_VARIANTS, with the tensor-core message kernels forced at
/// every size; the caller holds ENVIRONMENT.
fn for_message_variants<T>(run: impl Fn((bool, bool)) -> T) -> Vec<T> {
    std::env::set_var("MDRUN_MESSAGE_MMA", "1");
    let results = MESSAGE_VARIANTS
        .iter()
        .map(|&(record, first)| {
            std::env::set_var("MDRUN_PAIR_RECORD", if record { "1" } else { "0" });
            std::env::set_var("MDRUN_FIRST_LAYER", if first { "1" } else { "0" });
            run((record, first))
        })
        .collect();
    for name in ["MDRUN_PAIR_RECORD", "MDRUN_FIRST_LAYER", "MDRUN_MESSAGE_MMA"] {
        std::env::remove_var(name);
    }
    results
}

// The pair record (perf-notes v65: the first message kernel writes each row's pairs within the
// cutoff, their geometry and basis; the other five copy them) and the first interaction's
// kernels with μ = 0 (v66: no filter v part, no reads of x_v and μ, pair gradients only), each
// alone and together, against the plain kernels and the f64 reference. Where every row fits one
// chunk the recorded kernels see the very tiles the computing ones build, so the record alone
// gives the same bits; the first-layer kernels drop terms that are exact zeros, which may change
// how the compiler contracts the rest: within 1e-5 eV/Å of the default (a tenth of the CPU
// tolerance). A dense sheared cell at a 6 Å cutoff has rows past one chunk in the writer's
// candidate chunks and in the readers' recorded ones, and several images of a neighbor.
#[test]
#[ignore = "needs a CUDA device"]
fn message_kernel_variants_follow_the_plain_kernels_and_match_the_cpu() {
    let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    let random = random_model(full_config(), 97);
    let (numbers, positions) = random_structure(12, 5.0, 0.9, None, 98);
    let molecule = system_of(&numbers, positions, None);
    let sheared = Cell::new([[9.0, 0.0, 0.0], [1.5, 8.5, 0.0], [-1.0, 1.2, 8.8]]).unwrap();
    let periodic = random_periodic_system(48, sheared, 99);
    // 64–127 atoms: the tensor-core kernels' middle band (2 warp groups a pair loop, 4 slices).
    let middle_cell = Cell::new([[10.5, 0.0, 0.0], [1.0, 10.0, 0.0], [-0.8, 0.6, 10.2]]).unwrap();
    let middle = random_periodic_system(90, middle_cell, 104);
    let waterbox = System::read(std::path::Path::new(&project_file("systems/waterbox_64.xyz")), None).unwrap();
    let mut wide = full_config();
    wide.cutoff = 6.0;
    let wide = random_model(wide, 100);
    let dense_cell = Cell::new([[10.5, 0.0, 0.0], [1.0, 10.2, 0.0], [-0.8, 0.6, 10.4]]).unwrap();
    let dense = random_periodic_system(260, dense_cell, 101);
    let fused = fused_evaluation();
    for (model, system, what, one_chunk) in [
        (&random, &molecule, "random molecule, 12 atoms", true),
        (&random, &periodic, "random sheared cell, 48 atoms", true),
        (&random, &middle, "random sheared cell, 64–127 atoms", true),
        (&random, &waterbox, "water box, 192 atoms", true),
        (&wide, &dense, "dense sheared cell, 6 Å cutoff", false),
    ] {
        // The longest row within the cutoff, and within it plus evaluate_with's 0.5 Å skin (the
        // neighbor rows): one chunk is 128 candidates in these kernels' shapes (mma_chunk).
        let longest = |cutoff: f64| {
            let pairs = brute_force_pairs(&system.positions, system.cell.as_ref(), cutoff);
            (0..system.len())
                .map(|i| pairs.first.iter().filter(|&&a| a == i).count())
                .max()
                .unwrap()
        };
        let (inside, candidates) = (longest(model.cutoff()), longest(model.cutoff() + 0.5));
        if one_chunk {
            assert!(candidates <= 128, "{what}: {candidates} candidates in a row");
        } else {
            assert!(inside > 128, "{what}: only {inside} pairs in the longest row");
        }
        let results = for_message_variants(|(record, first)| {
            let sizes = kernel_sizes(model, system.len()).unwrap();
            assert_eq!((sizes.pair_record, sizes.first_layer), (record, first), "{what}");
            (
                mdrun::gpu::md::evaluate_with(model, system, fused).unwrap(),
                compare_gpu_with_cpu_using(model, system, fused),
            )
        });
        let (default, _) = &results[0];
        for (&(record, first), ((energy, forces), (e, f))) in MESSAGE_VARIANTS.iter().zip(&results) {
            let case = format!(
                "{what} (longest row {inside} pairs, {candidates} candidates), record {record}, first layer {first}"
            );
            let apart = max_deviation(forces, &default.1);
            eprintln!(
                "{case}: energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å; against the plain kernels: \
                 energy {:.2e} eV, forces {apart:.2e} eV/Å",
                (energy - default.0).abs()
            );
            assert!(*e <= 1e-5 && *f <= 1e-4, "{case}: {e:e} {f:e}");
            if one_chunk && !first {
                assert_eq!(*energy, default.0, "{case}: energy");
                assert_eq!(*forces, default.1, "{case}: forces");
            }
            assert!(apart <= 1e-5, "{case}: forces {apart:e} eV/Å from the plain kernels'");
            assert!((energy - default.0).abs() <= 1e-6 * default.0.abs(), "{case}: energy");
        }
    }
}

// Over an MD run whose neighbor rows are rebuilt (a 0.05 Å skin) and outgrow their capacity
// inside a graph of 8 steps (cut to 40 entries after the first 5 steps, below the ~69 candidates
// of the longest row: the steps are redone with grown rows, the record reallocated with them and
// the graphs captured again): with the pair record the trajectory is the plain kernels' bit for
// bit (the water box's rows fit one chunk); with the first-layer kernels as well it stays within
// 1e-4 Å over the 62 steps.
#[test]
#[ignore = "needs a CUDA device"]
fn md_with_the_message_kernel_variants_follows_the_plain_kernels() {
    let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    let model = trained_model();
    let system = System::read(std::path::Path::new(&project_file("systems/waterbox_64_eq.xyz")), None).unwrap();
    let integrator = langevin(102);
    let velocities = maxwell_boltzmann(&system.masses, 300.0, integrator.degrees_of_freedom(system.len()), 103);
    let runs = for_message_variants(|(record, first)| {
        let mut md = GpuMd::new(&model, &system, &velocities, &integrator, 0.05, GpuOptions::default()).unwrap();
        md.initialize().unwrap();
        let sizes = md.fused_sizes().unwrap();
        assert_eq!((sizes.pair_record, sizes.first_layer), (record, first));
        md.advance(5).unwrap();
        md.set_neighbor_capacity(40).unwrap();
        let grown = md.neighbor_growths();
        for chunk in [20, 37] {
            md.advance(chunk).unwrap();
        }
        assert!(
            md.neighbor_growths() > grown,
            "the rows outgrew 40 entries inside the run"
        );
        md.snapshot().unwrap()
    });
    let default = &runs[0];
    let moved = max_deviation(&default.positions, &system.positions);
    assert!(moved > 0.05, "atoms moved past the skin ({moved:e} Å)");
    for (&(record, first), run) in MESSAGE_VARIANTS.iter().zip(&runs).skip(1) {
        let case = format!("water box, Langevin, record {record}, first layer {first}");
        let apart = max_deviation(&run.positions, &default.positions);
        eprintln!("{case}: {apart:.2e} Å from the plain kernels after {} steps", run.step);
        if !first {
            assert_same_state(run, default, &case);
        }
        assert!(apart <= 1e-4, "{case}: {apart:e} Å");
    }
}

// The last mixing without its update network's a_vv third (perf-notes v68: the host drops those
// rows, the kernel's update matvec is F → 2F and its first backward matvec 2F → F) against the
// whole layer: the dropped terms are products with ∂E/∂μ = 0, so only the order of the sums
// moves; within 1e-5 eV/Å of each other and both against the f64 reference, in the device's
// default layouts for a random 12-atom molecule and the 192-atom water box (on an H100 clusters
// of 4 with the early trigger since perf-notes v72, and three atoms a block in clusters of 2
// since v69; the layouts without clusters run with and without a_vv in the tests above).
#[test]
#[ignore = "needs a CUDA device"]
fn the_last_mixing_without_a_vv_follows_the_whole_layer_and_matches_the_cpu() {
    let _guard = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    let random = random_model(full_config(), 105);
    let (numbers, positions) = random_structure(12, 5.0, 0.9, None, 106);
    let molecule = system_of(&numbers, positions, None);
    let trained = trained_model();
    let waterbox = System::read(std::path::Path::new(&project_file("systems/waterbox_64.xyz")), None).unwrap();
    let fused = fused_evaluation();
    for (model, system, what) in [
        (&random, &molecule, "random molecule, 12 atoms"),
        (&trained, &waterbox, "water box, 192 atoms"),
    ] {
        let [whole, without] = [false, true].map(|without_a_vv| {
            std::env::set_var("MDRUN_LAST_WITHOUT_A_VV", if without_a_vv { "1" } else { "0" });
            let sizes = kernel_sizes(model, system.len()).unwrap();
            assert_eq!(sizes.last_without_a_vv, without_a_vv, "{what}");
            let (e, f) = compare_gpu_with_cpu_using(model, system, fused);
            eprintln!("{what}, without a_vv {without_a_vv}: energy rel err {e:.2e}, force max abs err {f:.2e} eV/Å");
            assert!(
                e <= 1e-5 && f <= 1e-4,
                "{what}, without a_vv {without_a_vv}: {e:e} {f:e}"
            );
            mdrun::gpu::md::evaluate_with(model, system, fused).unwrap()
        });
        std::env::remove_var("MDRUN_LAST_WITHOUT_A_VV");
        let apart = max_deviation(&without.1, &whole.1);
        eprintln!(
            "{what}: without a_vv against the whole layer: energy {:.2e} eV, forces {apart:.2e} eV/Å",
            (without.0 - whole.0).abs()
        );
        assert!(apart <= 1e-5, "{what}: forces {apart:e} eV/Å apart");
        assert!((without.0 - whole.0).abs() <= 1e-6 * whole.0.abs(), "{what}: energy");
    }
}
