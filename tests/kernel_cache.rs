//! The kernel cache without a GPU: start-up's cubins are whole ELF files, compiled the same way
//! every time, and `precompile` rebuilds a cache from another cache's records under the names a
//! start-up looks for, replacing entries that were cut short. Needs only the NVRTC library, as
//! kernels_compile does (MDRUN_REQUIRE_NVRTC=1 turns a missing library into a failure).

mod common;

use common::temp_dir;
use mdrun::gpu::compile::{compile_into, is_whole_cubin, precompile, supported_archs, Precompiled, Target};
use mdrun::gpu::{compile, compile_cubin, KernelSizes};

fn nvrtc_loads() -> bool {
    let present = mdrun::gpu::compile::nvrtc_present();
    assert!(
        present || std::env::var_os("MDRUN_REQUIRE_NVRTC").is_none(),
        "MDRUN_REQUIRE_NVRTC is set but the NVRTC library cannot be loaded (LD_LIBRARY_PATH?)"
    );
    if !present {
        eprintln!("NVRTC not found: kernel cache test skipped (set MDRUN_REQUIRE_NVRTC=1 to require it)");
    }
    present
}

/// A narrow model's shape (the compile takes as long as the student's: the source is the same).
fn narrow(tile: usize) -> KernelSizes {
    KernelSizes {
        features: 32,
        rbf: 8,
        readout_hidden: 16,
        split: 4,
        tile,
        cluster: 1,
        pair_split: 2,
        channel_slices: 1,
        message_mma: true,
        mma_backward_divides: true,
        pair_record: false,
        first_layer: false,
        last_without_a_vv: false,
        cluster_matvec_products: 8,
        pdl_early_trigger: true,
        dense_alone: false,
        atoms: 7,
        checks: false,
    }
}

#[test]
fn precompile_rebuilds_a_cache_from_its_records_under_the_names_start_up_looks_for() {
    if !nvrtc_loads() {
        return;
    }
    // A "GPU machine's" cache with two launch shapes.
    let gpu_cache = temp_dir("gpu-cache");
    let first = compile_into(&gpu_cache, narrow(1), "sm_90").unwrap();
    let second = compile_into(&gpu_cache, narrow(3), "sm_90").unwrap();
    assert_ne!(first, second, "two shapes, two entries");
    for cubin in [&first, &second] {
        let bytes = std::fs::read(cubin).unwrap();
        assert!(is_whole_cubin(&bytes), "{}", cubin.display());
        // Cut short anywhere past the header, an entry no longer passes as whole.
        assert!(!is_whole_cubin(&bytes[..bytes.len() - 1]));
        assert!(!is_whole_cubin(&bytes[..bytes.len() / 2]));
        assert!(!is_whole_cubin(&bytes[..40]));
        let record = std::fs::read_to_string(cubin.with_extension("options")).unwrap();
        assert!(record.lines().any(|l| l == "--gpu-architecture=sm_90"), "{record}");
    }

    // Its records alone (what a device call brings back) into an empty cache: the same files,
    // byte for byte (NVRTC's output is deterministic), under the same names.
    let records = temp_dir("records");
    for cubin in [&first, &second] {
        let record = cubin.with_extension("options");
        std::fs::copy(&record, records.join(record.file_name().unwrap())).unwrap();
    }
    let host_cache = temp_dir("host-cache");
    assert_eq!(
        precompile(&records, &host_cache, 2).unwrap(),
        Precompiled {
            compiled: 2,
            cached: 0,
            foreign: 0
        }
    );
    for cubin in [&first, &second] {
        let rebuilt = host_cache.join(cubin.file_name().unwrap());
        assert_eq!(std::fs::read(&rebuilt).unwrap(), std::fs::read(cubin).unwrap());
        assert!(rebuilt.with_extension("options").exists());
    }
    assert_eq!(
        precompile(&records, &host_cache, 2).unwrap(),
        Precompiled {
            compiled: 0,
            cached: 2,
            foreign: 0
        }
    );

    // An entry cut short is compiled again.
    let cut = host_cache.join(first.file_name().unwrap());
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    assert_eq!(
        precompile(&records, &host_cache, 1).unwrap(),
        Precompiled {
            compiled: 1,
            cached: 1,
            foreign: 0
        }
    );
    assert_eq!(std::fs::read(&cut).unwrap(), bytes);

    // A record with an option this build does not write (another version of mdrun's) is
    // counted and skipped: start-up would never ask for its shape.
    let record = std::fs::read_to_string(first.with_extension("options")).unwrap();
    std::fs::write(records.join("other-version.options"), record + "-DSOMETHING_NEW=1\n").unwrap();
    assert_eq!(
        precompile(&records, &host_cache, 1).unwrap(),
        Precompiled {
            compiled: 0,
            cached: 2,
            foreign: 1
        }
    );

    // A virtual architecture gives PTX, not machine code: refused, not cached as an empty file.
    let error = compile_cubin(narrow(1), "compute_90").unwrap_err().to_string();
    assert!(error.contains("no cubin"), "{error}");

    // A file that is not a record is refused by name.
    std::fs::write(records.join("stray.options"), "-DNF=32\n").unwrap();
    let error = precompile(&records, &host_cache, 1).unwrap_err().to_string();
    assert!(
        error.contains("stray.options") && error.contains("not an mdrun kernel cache record"),
        "{error}"
    );
    for dir in [gpu_cache, records, host_cache] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_gpu_newer_than_nvrtc_gets_ptx_for_the_newest_architecture_nvrtc_knows() {
    if !nvrtc_loads() {
        return;
    }
    let supported = supported_archs().unwrap();
    // The H100's and H200's architecture: machine code.
    assert_eq!(
        Target::choose((9, 0), &supported),
        Some(Target::Machine(9, 0)),
        "{supported:?}"
    );
    // A GPU beyond NVRTC's list: PTX for its newest architecture, at the shape that capability
    // allows, compiles (what the driver then compiles forward).
    let newest = *supported.iter().max().unwrap();
    let target = Target::choose((newest / 10 + 1, 0), &supported).unwrap();
    let (major, minor) = target.capability();
    assert_eq!(target, Target::Ptx(major, minor));
    assert_eq!(10 * major + minor, newest);
    let sizes = KernelSizes::for_system(128, 20, 64, 12).on_device((major, minor), 132);
    compile(sizes, &format!("compute_{major}{minor}")).unwrap_or_else(|e| panic!("{sizes:?}: {e}"));
}
