//! Every kernel compiles with NVRTC, for the student size and for a small model, for the H100's
//! architecture, within its per-kernel resource limits, and for the older architectures the GPU
//! path runs on (sm_75, sm_80, sm_89). Needs only the NVRTC library, no GPU: CI installs it (`.ci/run`) and sets
//! MDRUN_REQUIRE_NVRTC=1, which turns a missing library into a failure instead of a skip.

use mdrun::gpu::cluster::supports_widths;
use mdrun::gpu::{compile, KernelSizes};

fn nvrtc_loads() -> bool {
    mdrun::gpu::compile::nvrtc_present()
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_loads() {
        assert!(
            std::env::var_os("MDRUN_REQUIRE_NVRTC").is_none(),
            "MDRUN_REQUIRE_NVRTC is set but the NVRTC library cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!("NVRTC not found: kernel compile check skipped (set MDRUN_REQUIRE_NVRTC=1 to require it)");
        return;
    }
    // The student at its small- and large-system launch shapes (one with the self-checks), the
    // largest radial basis the GPU path accepts at the largest pair split (the message kernels'
    // static shared memory must stay under 48 KB), the widest dense blocks, a width that is not a
    // power of two, a narrow model with odd tiles, and the one-cluster kernel's matvec layouts.
    let student = KernelSizes {
        features: 128,
        rbf: 20,
        readout_hidden: 64,
        split: 4,
        tile: 1,
        cluster: 4,
        pair_split: 4,
        channel_slices: 1,
        message_mma: false,
        mma_backward_divides: false,
        pair_record: false,
        first_layer: false,
        last_without_a_vv: false,
        cluster_matvec_products: 8,
        pdl_early_trigger: true,
        dense_alone: false,
        atoms: 12,
        checks: false,
    };
    // The student's dense and message shapes from 64 and from 128 atoms (KernelSizes::for_system).
    let from_64 = KernelSizes {
        tile: 2,
        cluster: 2,
        pair_split: 2,
        channel_slices: 4,
        ..student
    };
    let from_128 = KernelSizes {
        tile: 2,
        cluster: 1,
        pair_split: 1,
        channel_slices: 2,
        ..student
    };
    for sizes in [
        student,
        KernelSizes {
            tile: 4,
            cluster: 1,
            pair_split: 1,
            ..student
        },
        KernelSizes {
            checks: true,
            ..from_64
        },
        // The largest clusters (8 blocks, each owning 16 channels of every layer) at the largest
        // tile whose partial sums fit the 48 KB of static shared memory (dense_shared_bytes).
        KernelSizes {
            tile: 2,
            cluster: 8,
            pair_split: 2,
            channel_slices: 2,
            ..student
        },
        // Every dense block alone on its SM (up to 128 registers a thread, perf-notes v57) at the
        // student's three dense shapes.
        KernelSizes {
            dense_alone: true,
            ..student
        },
        KernelSizes {
            dense_alone: true,
            ..from_64
        },
        KernelSizes {
            dense_alone: true,
            ..from_128
        },
        // The defaults of perf-notes v69, v72 and v73 where the blocks fit the device: clusters
        // of 8 up to 5 atoms, three atoms a block in clusters of 2 from 128; alone, without a_vv.
        KernelSizes {
            cluster: 8,
            dense_alone: true,
            last_without_a_vv: true,
            ..student
        },
        KernelSizes {
            tile: 3,
            cluster: 2,
            dense_alone: true,
            last_without_a_vv: true,
            ..from_128
        },
        // Clusters with an odd tile whose μ rows take one matvec each (3 · TILE > MATVEC_ACC).
        KernelSizes {
            tile: 3,
            cluster: 2,
            ..student
        },
        KernelSizes { rbf: 64, ..student },
        KernelSizes {
            rbf: 64,
            pair_split: 2,
            channel_slices: 2,
            ..student
        },
        // The widest dense blocks the GPU path accepts (F = 256 at split 2, tile ≤ 512 / F) and
        // an odd width, split and tile: the dense kernels' shared memory grows with F × tile.
        KernelSizes {
            features: 256,
            split: 2,
            tile: 2,
            cluster: 1,
            pair_split: 2,
            channel_slices: 2,
            ..student
        },
        KernelSizes {
            features: 160,
            split: 3,
            tile: 3,
            cluster: 1,
            pair_split: 1,
            channel_slices: 1,
            ..student
        },
        // A width that is not a power of two, with the largest basis: the message kernels'
        // chunks shrink in whole warps to stay within 48 KB.
        KernelSizes {
            features: 96,
            rbf: 64,
            channel_slices: 3,
            ..student
        },
        KernelSizes {
            features: 32,
            rbf: 8,
            readout_hidden: 16,
            split: 2,
            tile: 3,
            cluster: 1,
            pair_split: 1,
            channel_slices: 1,
            message_mma: true,
            mma_backward_divides: false,
            pair_record: false,
            first_layer: false,
            // The last mixing without its a_vv third (perf-notes v68) without clusters, 3 atoms
            // a block.
            last_without_a_vv: true,
            cluster_matvec_products: 8,
            pdl_early_trigger: false,
            dense_alone: false,
            atoms: 12,
            checks: false,
        },
        // The tensor-core message kernels at the student's three size bands (4 × 4, 2 × 4,
        // 1 × 2), one block per atom, and the largest basis they take (K = 32: no k8 tail; the
        // student's K = 20 → 24 has one).
        KernelSizes {
            pair_split: 4,
            channel_slices: 4,
            message_mma: true,
            ..student
        },
        KernelSizes {
            pair_split: 2,
            channel_slices: 4,
            message_mma: true,
            ..student
        },
        KernelSizes {
            pair_split: 1,
            channel_slices: 2,
            message_mma: true,
            ..student
        },
        KernelSizes {
            pair_split: 1,
            channel_slices: 2,
            message_mma: true,
            mma_backward_divides: true,
            pair_record: false,
            first_layer: false,
            ..student
        },
        // The pair record and the first interaction's kernels (perf-notes v65, v66), each alone
        // and together, at the benzene and the 192-atom shapes and with the largest basis the
        // tensor-core kernels take; the first with the last mixing without a_vv (v68) in
        // clusters of 4.
        KernelSizes {
            channel_slices: 4,
            message_mma: true,
            mma_backward_divides: true,
            pair_record: true,
            last_without_a_vv: true,
            ..student
        },
        KernelSizes {
            channel_slices: 4,
            message_mma: true,
            mma_backward_divides: true,
            first_layer: true,
            ..student
        },
        KernelSizes {
            pair_split: 1,
            channel_slices: 2,
            message_mma: true,
            mma_backward_divides: true,
            pair_record: true,
            first_layer: true,
            ..student
        },
        KernelSizes {
            rbf: 32,
            pair_split: 4,
            channel_slices: 4,
            message_mma: true,
            pair_record: true,
            first_layer: true,
            ..student
        },
        KernelSizes {
            pair_split: 1,
            message_mma: true,
            ..student
        },
        KernelSizes {
            rbf: 32,
            pair_split: 2,
            channel_slices: 2,
            message_mma: true,
            ..student
        },
        // The one-cluster kernel's other matvec layouts (MDRUN_CLUSTER_MATVEC_W): the deepest
        // split (the layout before perf-notes v25) and the shallowest measured.
        KernelSizes {
            cluster_matvec_products: 0,
            ..student
        },
        KernelSizes {
            cluster_matvec_products: 16,
            checks: true,
            ..student
        },
    ] {
        // For the H100 itself (sm_90): NVRTC then runs the backend too, which enforces the
        // per-kernel limits (shared memory, registers) that PTX alone does not.
        compile(sizes, "sm_90").unwrap_or_else(|e| panic!("{sizes:?}, sm_90: {e}"));
        let ptx = compile(sizes, "compute_90").unwrap_or_else(|e| panic!("{sizes:?}: {e}"));
        let text = ptx.to_src();
        // The one-cluster kernel exists exactly for the widths the host side runs it at.
        let cluster_built = supports_widths(sizes.features, sizes.readout_hidden);
        let cluster_kernels = ["painn_cluster", "painn_cluster_shared_bytes", "painn_cluster_pack"];
        if !cluster_built {
            for kernel in cluster_kernels {
                assert!(
                    !text.contains(&format!(".entry {kernel}(")),
                    "{sizes:?}: {kernel} should not be built"
                );
            }
        }
        for kernel in [
            "embed",
            "message_forward",
            "mixing_forward",
            "mixing_forward_last",
            "mixing_backward",
            "message_backward",
            "pair_forces",
            "wrap_positions",
            "build_neighbors_all_pairs",
            "reverse_pairs",
            "first_half",
            "first_half_and_rebuild",
            "second_half",
            "energy_sums",
            // The unfused path (kernels/naive.cu).
            "naive_pair_basis",
            "naive_pair_filter",
            "naive_copy",
            "naive_silu",
            "naive_mul_silu_grad",
            "naive_dense",
            "naive_embed",
            "naive_message",
            "naive_norm_context",
            "naive_mixing_update",
            "naive_readout_energy",
            "naive_readout_grad",
            "naive_mixing_back_a",
            "naive_mixing_back_b",
            "naive_message_backward",
            "naive_filter_backward",
            "naive_pair_grad",
            "naive_pair_forces",
        ]
        .into_iter()
        .chain(cluster_kernels.into_iter().filter(|_| cluster_built))
        .chain(message_kernel_names(&sizes).into_iter().filter(|_| sizes.message_mma))
        {
            assert!(
                text.contains(&format!(".entry {kernel}(")),
                "{kernel} missing from the PTX for {sizes:?}"
            );
        }
        // Every kernel of the MD step (launched programmatically on Hopper) waits for its
        // predecessors (kernels/common.cuh).
        for kernel in [
            "first_half",
            "first_half_and_rebuild",
            "second_half",
            "wrap_positions",
            "build_neighbors_all_pairs",
            "bins_clear",
            "bins_assign",
            "bins_scan",
            "bins_fill",
            "bins_sort",
            "build_neighbors_cells",
            "reverse_pairs",
            "mixing_forward",
            "mixing_forward_last",
            "mixing_backward",
        ] {
            assert!(
                entry_body(&text, kernel).contains("griddepcontrol.wait"),
                "{kernel}: no griddepcontrol.wait ({sizes:?})"
            );
        }
        // Under programmatic dependent launch the kernels that read the step's buffers must not
        // read them through non-coherent loads, which ptxas moves above griddepcontrol.wait
        // (kernels/common.cuh; perf-notes v36). These kernels read only the step's buffers and the
        // filter weights, which they load plainly.
        for kernel in ["message_forward", "message_backward", "pair_forces"]
            .into_iter()
            .chain(message_kernel_names(&sizes).into_iter().filter(|_| sizes.message_mma))
        {
            let body = entry_body(&text, kernel);
            assert!(body.contains("griddepcontrol.wait"), "{kernel}: no griddepcontrol.wait");
            assert!(
                !body.contains("ld.global.nc"),
                "{kernel} reads through non-coherent loads, which may run before its griddepcontrol.wait ({sizes:?})"
            );
        }
    }
    // The older architectures the GPU path also opens (Gpu::open: thread-block clusters from 9.0,
    // tensor-core messages from 8.0): code under `__CUDA_ARCH__ >= 800` must not call what only
    // the sm_90 block of common.cuh defines (a helper's review found one such call, perf-notes v52).
    for (arch, message_mma) in [("compute_75", false), ("compute_80", true), ("compute_89", true)] {
        for sizes in [
            KernelSizes {
                cluster: 1,
                message_mma,
                ..student
            },
            KernelSizes {
                message_mma,
                mma_backward_divides: true,
                pair_record: false,
                first_layer: false,
                ..from_128
            },
        ] {
            compile(sizes, arch).unwrap_or_else(|e| panic!("{sizes:?}, {arch}: {e}"));
        }
    }
}

/// The PTX of one kernel: from its `.entry` to the next one.
fn entry_body<'a>(ptx: &'a str, kernel: &str) -> &'a str {
    let start = ptx
        .find(&format!(".entry {kernel}("))
        .unwrap_or_else(|| panic!("{kernel} missing"));
    let rest = &ptx[start + 1..];
    &ptx[start..start + 1 + rest.find(".entry ").unwrap_or(rest.len())]
}

/// The message kernels the host launches at `sizes` (each once).
fn message_kernel_names(sizes: &KernelSizes) -> Vec<&'static str> {
    let k = sizes.message_kernels();
    let mut names = vec![k.first_forward, k.forward, k.first_backward, k.backward];
    names.sort_unstable();
    names.dedup();
    names
}
