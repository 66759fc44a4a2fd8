//! The dense kernels (embed, mixing_forward, mixing_forward_last, mixing_backward) from their CUDA
//! source, emulated on the CPU by tools/kernel-emu, against an f64 reference, alone and in
//! clusters, with the cluster exchange's protocol checked, one layout also under ThreadSanitizer
//! where it runs (tools/kernel-emu/README.md says what that does and does not check). About a
//! minute on two cores. Needs a C++20 compiler and python3, no GPU: CI sets
//! MDRUN_REQUIRE_EMULATION=1 (`.ci/run`), which turns a missing compiler into a failure instead
//! of a skip.

mod emulation;

use emulation::{compiler_or_skip, one_per_core, report};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One build of the harness: the kernels' compile-time sizes, and whether ThreadSanitizer
/// watches it (it reports any shared-memory access that no barrier orders against another
/// thread's: a missing __syncthreads, whatever the interleaving that run happened to take).
#[derive(Clone, Copy)]
struct Layout {
    features: usize,
    tile: usize,
    cluster: usize,
    thread_sanitizer: bool,
    /// Built as for a block alone on its SM (DENSE_ALONE: more weights held ahead, perf-notes v57).
    alone: bool,
    /// The last mixing without its update network's a_vv third (LAST_WITHOUT_A_VV, perf-notes
    /// v68; the harness gives it the layer without those rows).
    without_a_vv: bool,
}

impl Layout {
    /// The student's proportions: readout hidden width F/2, SPLIT = F/32 (a 64-wide model gets
    /// 128 threads per block, the student 512).
    fn hidden(&self) -> usize {
        self.features / 2
    }
    fn split(&self) -> usize {
        self.features / 32
    }
    fn name(&self) -> String {
        let sanitizer = if self.thread_sanitizer { "_tsan" } else { "" };
        let alone = if self.alone { "_alone" } else { "" };
        let without_a_vv = if self.without_a_vv { "_no_avv" } else { "" };
        format!(
            "f{}_t{}_c{}{sanitizer}{alone}{without_a_vv}",
            self.features, self.tile, self.cluster
        )
    }
}

const fn layout(features: usize, tile: usize, cluster: usize, thread_sanitizer: bool) -> Layout {
    Layout {
        features,
        tile,
        cluster,
        thread_sanitizer,
        alone: false,
        without_a_vv: false,
    }
}

const fn alone(layout: Layout) -> Layout {
    Layout { alone: true, ..layout }
}

const fn without_a_vv(layout: Layout) -> Layout {
    Layout {
        without_a_vv: true,
        ..layout
    }
}

/// The student's width at its default layouts (clusters of 4; alone on their SMs, as up to 33
/// atoms on an H100; clusters of 8 alone, up to 5 atoms; three atoms per block in clusters of 2
/// alone, from 128 atoms; perf-notes v69, v72), the last three without the a_vv third; a
/// 64-wide model at the tiles and clusters that take each path of the kernels (three atoms per
/// block, whose μ rows take a matvec each, also under ThreadSanitizer; one, with and without
/// clusters; two, reading early; the largest cluster), half of them with the last mixing
/// without its a_vv third (v68): with and without clusters, under ThreadSanitizer too. The longest
/// runs first: the layouts share the cores.
const LAYOUTS: [Layout; 10] = [
    layout(128, 1, 4, false),
    without_a_vv(alone(layout(128, 1, 4, false))),
    without_a_vv(alone(layout(128, 1, 8, false))),
    without_a_vv(alone(layout(128, 3, 2, false))),
    without_a_vv(layout(64, 3, 2, true)),
    without_a_vv(layout(64, 1, 1, false)),
    layout(64, 1, 4, false),
    without_a_vv(layout(64, 2, 2, false)),
    layout(64, 3, 2, false),
    layout(64, 2, 8, false),
];

/// Whether programs built with -fsanitize=thread run here: its runtime may be missing, or refuse
/// the address-space layout of some kernels (strong mmap randomisation).
fn thread_sanitizer_runs(cxx: &str, dir: &Path) -> bool {
    let source = dir.join("tsan_probe.cpp");
    std::fs::write(
        &source,
        "#include <thread>\nint main() { std::thread t([] {}); t.join(); }\n",
    )
    .unwrap();
    let binary = dir.join("tsan_probe");
    let built = Command::new(cxx)
        .args(["-std=c++20", "-pthread", "-fsanitize=thread"])
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .output()
        .is_ok_and(|o| o.status.success());
    built && Command::new(&binary).output().is_ok_and(|o| o.status.success())
}

/// Builds and runs the harness for one layout; Err with its output when either fails.
fn build_and_run(
    cxx: &str,
    root: &Path,
    dense: &Path,
    dir: &Path,
    layout: Layout,
    seed: usize,
) -> Result<String, String> {
    let tools = root.join("tools/kernel-emu");
    let binary = dir.join(layout.name());
    let build = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w", "-DKERNEL_CHECKS"])
        .arg(format!("-DNF={}", layout.features))
        .arg(format!("-DNH={}", layout.hidden()))
        .arg(format!("-DSPLIT={}", layout.split()))
        .arg(format!("-DTILE={}", layout.tile))
        .arg(format!("-DEMU_CLUSTER={}", layout.cluster))
        .arg(format!("-DDENSE_ALONE={}", u8::from(layout.alone)))
        .arg(format!("-DLAST_WITHOUT_A_VV={}", u8::from(layout.without_a_vv)))
        .arg(format!("-DDENSE_INC=\"{}\"", dense.display()))
        .args(if layout.thread_sanitizer {
            &["-g", "-fsanitize=thread"][..]
        } else {
            &[]
        })
        .arg(tools.join("harness.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .map_err(|e| format!("{}: cannot run {cxx}: {e}", layout.name()))?;
    if !build.status.success() {
        return Err(report(&format!("{} build", layout.name()), &build));
    }
    let run = Command::new(&binary)
        .args(["--atoms", "7", "--jitter", "--seed"])
        .arg(seed.to_string())
        .output()
        .map_err(|e| format!("{}: cannot run the harness: {e}", layout.name()))?;
    if run.status.success() {
        Ok(String::from_utf8_lossy(&run.stdout).into_owned())
    } else {
        Err(report(&format!("{} run", layout.name()), &run))
    }
}

#[test]
fn dense_kernels_match_the_f64_reference_in_emulation() {
    let Some(cxx) = compiler_or_skip("dense kernel emulation") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dense-emulation");
    std::fs::create_dir_all(&dir).unwrap();
    let dense = dir.join("dense.inc");
    let extract = Command::new("python3")
        .arg(root.join("tools/kernel-emu/extract_dense.py"))
        .arg(root.join("kernels/common.cuh"))
        .arg(root.join("kernels/painn.cu"))
        .arg(&dense)
        .output()
        .unwrap();
    assert!(extract.status.success(), "{}", report("extract_dense.py", &extract));

    let sanitizer = thread_sanitizer_runs(&cxx, &dir);
    if !sanitizer {
        eprintln!("ThreadSanitizer does not build or run here: its layout is skipped");
    }
    let layouts: Vec<Layout> = LAYOUTS
        .into_iter()
        .filter(|layout| sanitizer || !layout.thread_sanitizer)
        .collect();

    // Layouts in parallel, one per core: each is a compile and then a run of many OS threads.
    let results = one_per_core(&layouts, |index, &layout| {
        build_and_run(&cxx, root, &dense, &dir, layout, index + 1)
    });
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(output) => print!("{output}"),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
