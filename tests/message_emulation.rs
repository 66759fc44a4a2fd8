//! The message kernels from their CUDA source, emulated on the CPU by tools/kernel-emu
//! (message_harness.cpp: warp-collective mma.sync, shuffles and votes on OS threads), against an
//! f64 reference of the message passing and its backward: the scalar kernels (painn.cu) at two of
//! their launch shapes, and the tensor-core ones (message_mma.cu) at their three launch shapes
//! with each variant the host can build: the pair
//! record (perf-notes v65), the first interaction's kernels with μ = 0 (v66), both, and the
//! backward reading 1/d. Where every row fits one chunk a variant must give the default kernels'
//! bits (the record copies the very tiles the computing kernels build; the first-layer kernels
//! drop terms that are exact zeros); with rows longer than a chunk, in the writer's candidate
//! chunks and the readers' recorded ones, each must match the reference. About three and a half minutes on two
//! cores. Needs a C++20 compiler and python3, no GPU; CI sets MDRUN_REQUIRE_EMULATION=1.

mod emulation;

use emulation::{compiler_or_skip, one_per_core, report};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A launch shape of the message kernels (KernelSizes::for_system's bands).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    /// Scalar filter products, below 128 atoms: 4 threads a channel, 4 slices.
    ScalarSmall,
    /// Scalar, 128–511 atoms: 2 threads a channel, 2 slices.
    ScalarLarge,
    /// Below 64 atoms: 4 warp groups share an atom's pair tiles, 4 blocks (channel slices) per atom.
    Small,
    /// 64–127 atoms: 2 warp groups, 4 slices.
    Middle,
    /// From 128 atoms: 1 warp group, 2 slices.
    Large,
}

impl Shape {
    /// (PAIR_SPLIT, CHANNEL_SLICES, MMA_PAIR_SPLIT: 0 builds no tensor-core kernels)
    fn sizes(self) -> (usize, usize, usize) {
        match self {
            Shape::ScalarSmall => (4, 4, 0),
            Shape::ScalarLarge => (2, 2, 0),
            Shape::Small => (4, 4, 4),
            Shape::Middle => (2, 4, 2),
            Shape::Large => (1, 2, 1),
        }
    }
}

/// One build: a shape and a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Build {
    shape: Shape,
    pair_record: bool,
    first_layer: bool,
    divides: bool,
}

impl Build {
    fn name(&self) -> String {
        format!(
            "{:?}_r{}_f{}_d{}",
            self.shape,
            u8::from(self.pair_record),
            u8::from(self.first_layer),
            u8::from(self.divides)
        )
    }
    /// The same shape with the default kernels (the host's default: dividing by d).
    fn default_of(&self) -> Build {
        Build {
            pair_record: false,
            first_layer: false,
            ..*self
        }
    }
}

const fn build(shape: Shape, pair_record: bool, first_layer: bool, divides: bool) -> Build {
    Build {
        shape,
        pair_record,
        first_layer,
        divides,
    }
}

/// A random system: harness arguments, and whether every row fits one chunk (128 candidates).
struct System {
    name: &'static str,
    args: &'static [&'static str],
    one_chunk: bool,
}

const MOLECULE: System = System {
    name: "open molecule, 12 atoms",
    args: &["--atoms", "12", "--edge", "5", "--seed", "1"],
    one_chunk: true,
};
const IMAGES: System = System {
    name: "sheared cell of 7 Å, 20 atoms (several images of a neighbor)",
    args: &["--atoms", "20", "--cell", "7", "--seed", "2"],
    one_chunk: true,
};
const DENSE: System = System {
    name: "sheared cell of 6.2 Å, 24 atoms, 7 Å cutoff (rows past 128 pairs: several chunks)",
    args: &["--atoms", "24", "--cell", "6.2", "--cutoff", "7", "--seed", "4"],
    one_chunk: false,
};

/// Each shape's builds and the systems they run (the shape, not the atom count, sets the launch
/// here). The longest first: the builds share the cores.
fn plan() -> Vec<(Build, Vec<&'static System>)> {
    let small = || vec![&MOLECULE, &IMAGES];
    vec![
        (build(Shape::Large, false, false, true), vec![&IMAGES, &DENSE]),
        (build(Shape::Large, true, true, true), vec![&IMAGES, &DENSE]),
        (build(Shape::Large, false, false, false), vec![&IMAGES]),
        (build(Shape::Large, true, false, false), vec![&IMAGES]),
        (build(Shape::Small, false, false, true), small()),
        (build(Shape::Small, true, false, true), small()),
        (build(Shape::Small, false, true, true), small()),
        (build(Shape::Small, true, true, true), small()),
        (build(Shape::Middle, false, false, true), vec![&IMAGES]),
        (build(Shape::Middle, true, true, true), vec![&IMAGES]),
        (
            build(Shape::ScalarSmall, false, false, true),
            vec![&MOLECULE, &IMAGES, &DENSE],
        ),
        (build(Shape::ScalarLarge, false, false, true), vec![&IMAGES]),
    ]
}

/// The student's sizes (F = 128, K = 20) at `b`'s shape and variant, as src/gpu/compile.rs
/// passes them.
fn defines(b: &Build) -> Vec<String> {
    let (pair_split, slices, mma_split) = b.shape.sizes();
    [
        ("NF", 128),
        ("NK", 20),
        ("NH", 64),
        ("SPLIT", 4),
        ("TILE", 1),
        ("CLUSTER", 1),
        ("PAIR_SPLIT", pair_split),
        ("CHANNEL_SLICES", slices),
        ("MMA_PAIR_SPLIT", mma_split),
        ("MMA_BACKWARD_DIVIDES", usize::from(b.divides)),
        ("PAIR_RECORD", usize::from(b.pair_record)),
        ("FIRST_LAYER", usize::from(b.first_layer)),
        ("CLUSTER_MATVEC_W", 8),
        ("PDL_EARLY_TRIGGER", 0),
        ("DENSE_ALONE", 0),
    ]
    .iter()
    .map(|(name, value)| format!("-D{name}={value}"))
    .collect()
}

/// Builds `b`'s harness and runs it on each system: the outputs, or Err with what failed.
fn build_and_run(
    cxx: &str,
    root: &Path,
    inc: &Path,
    dir: &Path,
    b: Build,
    systems: &[&System],
) -> Result<Vec<String>, String> {
    let binary = dir.join(b.name());
    let compiled = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w"])
        .args(defines(&b))
        .arg(format!("-DMESSAGE_INC=\"{}\"", inc.display()))
        .arg(root.join("tools/kernel-emu/message_harness.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .map_err(|e| format!("{}: cannot run {cxx}: {e}", b.name()))?;
    if !compiled.status.success() {
        return Err(report(&format!("{} build", b.name()), &compiled));
    }
    systems
        .iter()
        .map(|system| {
            let run = Command::new(&binary)
                .args(system.args)
                .output()
                .map_err(|e| format!("{}: cannot run the harness: {e}", b.name()))?;
            if run.status.success() {
                Ok(String::from_utf8_lossy(&run.stdout).into_owned())
            } else {
                Err(report(&format!("{} on {}", b.name(), system.name), &run))
            }
        })
        .collect()
}

/// (longest row within the cutoff, longest row of candidates) from a harness output's first line
/// (`…, longest row N pairs, capacity C; …`: C is 5 past the longest row of candidates).
fn rows(output: &str) -> (usize, usize) {
    let number_after = |key: &str| {
        let at = output.find(key).unwrap_or_else(|| panic!("no `{key}` in {output}")) + key.len();
        output[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap()
    };
    (number_after("longest row "), number_after("capacity ") - 5)
}

/// Each checked array's hash in a harness output (`NAME  N values  max error …  hash H`).
fn hashes(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter(|line| line.contains(" values ") && line.len() > 14)
        .map(|line| {
            let name = line[..14].trim().to_string();
            let hash = line
                .split_whitespace()
                .skip_while(|w| *w != "hash")
                .nth(1)
                .unwrap_or("");
            (name, hash.to_string())
        })
        .collect()
}

#[test]
fn message_kernels_match_the_f64_reference_in_emulation() {
    let Some(cxx) = compiler_or_skip("message kernel emulation") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("message-emulation");
    std::fs::create_dir_all(&dir).unwrap();
    let inc = dir.join("message.inc");
    let extract = Command::new("python3")
        .arg(root.join("tools/kernel-emu/extract_message.py"))
        .arg(root.join("kernels/common.cuh"))
        .arg(root.join("kernels/painn.cu"))
        .arg(root.join("kernels/message_mma.cu"))
        .arg(&inc)
        .output()
        .unwrap();
    assert!(extract.status.success(), "{}", report("extract_message.py", &extract));

    let plan = plan();
    let results = one_per_core(&plan, |_, (b, systems)| {
        build_and_run(&cxx, root, &inc, &dir, *b, systems)
    });
    let mut failures = Vec::new();
    // (build, system name) → the arrays' hashes, for the comparisons between variants.
    let mut outputs: BTreeMap<(Build, &str), BTreeMap<String, String>> = BTreeMap::new();
    for ((b, systems), result) in plan.iter().zip(results) {
        match result {
            Ok(runs) => {
                for (system, output) in systems.iter().zip(runs) {
                    print!("{}, {}:\n{output}", b.name(), system.name);
                    // One chunk is 128 candidates in every shape here (mma_chunk, message_chunk).
                    let (inside, candidates) = rows(&output);
                    if system.one_chunk {
                        assert!(candidates <= 128, "{}: {candidates} candidates in a row", system.name);
                    } else {
                        assert!(inside > 128, "{}: only {inside} pairs in the longest row", system.name);
                    }
                    outputs.insert((*b, system.name), hashes(&output));
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // One-chunk rows: every variant's arrays are the default kernels' bits (the arrays both print:
    // the first-layer backward computes no input gradients).
    let mut compared = 0;
    for (b, systems) in &plan {
        for system in systems.iter().filter(|s| s.one_chunk) {
            if *b == b.default_of() {
                continue;
            }
            let variant = &outputs[&(*b, system.name)];
            let default = &outputs[&(b.default_of(), system.name)];
            for (array, hash) in variant {
                let expected = default.get(array).unwrap_or_else(|| panic!("{array} missing"));
                assert_eq!(
                    hash,
                    expected,
                    "{} on {}: {array} differs from the default kernels' bits",
                    b.name(),
                    system.name
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 50, "only {compared} arrays compared");
}
