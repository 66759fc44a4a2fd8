//! `mdrun bench`: the benchmark suite. Every system runs under configurations that are ablations
//! of one another (`cpu`, `gpu-naive`, `+cell-list`, `+fused`, `+cuda-graph`, `+one-cluster`), all
//! measured in one
//! run so that ratios compare like with like: force-call and MD-step latency, throughput, device
//! memory, and accuracy against the f64 reference. Reports (JSON, markdown, SVG plots) go to one
//! folder; `--compare` flags regressions and `--baseline` sets the PyTorch rows beside ours.
//! The JSON schema is documented in docs/bench-schema.md.

pub mod command;
pub mod compare;
pub mod plot;
pub mod report;
pub mod run;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cell::Cell;
use crate::gpu::md::GpuOptions;
use crate::gpu::naive::KernelVariant;
use crate::gpu::neighbors::NeighborSearch;
use crate::system::System;

pub use run::{bench_system, BenchOptions};

/// Schema tag of bench.json (docs/bench-schema.md).
pub const SCHEMA: &str = "mdrun-bench/2";

/// The shipped systems of the default set: molecules and clusters of about 10 to 200 atoms, then
/// the periodic water box replicated to about 1,000, 10,000 and 100,000 atoms.
pub const SMALL_SYSTEMS: [&str; 5] = [
    "benzene.xyz",
    "alanine_dipeptide.pdb",
    "water_cluster_17.xyz",
    "water_cluster_33.xyz",
    "waterbox_64.xyz",
];
pub const SCALING_SYSTEMS: [&str; 3] = ["waterbox_64.xyz@2", "waterbox_64.xyz@4", "waterbox_64.xyz@8"];

/// The default system list for `--sizes small|all`, as paths under `dir`.
pub fn default_systems(dir: &Path, all: bool) -> Vec<String> {
    let names = SMALL_SYSTEMS.iter().chain(if all { &SCALING_SYSTEMS[..] } else { &[] });
    names.map(|n| dir.join(n).display().to_string()).collect()
}

/// A configuration of the benchmark: each one adds one optimization to the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// The f64 CPU reference engine.
    Cpu,
    /// Unfused kernels, O(N²) all-pairs neighbor search, plain launches.
    GpuNaive,
    /// `gpu-naive` with the cell list (periodic systems only).
    CellList,
    /// The fused kernels (cell list where periodic, all pairs for open systems).
    Fused,
    /// The fused kernels with the whole step as one CUDA graph (the default of `mdrun`).
    CudaGraph,
    /// `[gpu] kernels = "cluster"`: small open molecules evaluate their forces in one launch of
    /// one thread-block cluster, inside the step's graph (the default of `mdrun` for them).
    OneCluster,
}

impl Config {
    pub const ALL: [Config; 6] = [
        Config::Cpu,
        Config::GpuNaive,
        Config::CellList,
        Config::Fused,
        Config::CudaGraph,
        Config::OneCluster,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Cpu => "cpu",
            Config::GpuNaive => "gpu-naive",
            Config::CellList => "+cell-list",
            Config::Fused => "+fused",
            Config::CudaGraph => "+cuda-graph",
            Config::OneCluster => "+one-cluster",
        }
    }

    pub fn parse(name: &str) -> Result<Config> {
        Config::ALL
            .into_iter()
            .find(|c| c.name() == name.trim())
            .ok_or_else(|| {
                anyhow!(
                    "unknown configuration `{name}` (known: {})",
                    Config::ALL.map(Config::name).join(", ")
                )
            })
    }

    /// The `[gpu]` input options this configuration stands for (None: the CPU engine).
    pub fn gpu_options(self) -> Option<GpuOptions> {
        let naive = GpuOptions {
            cuda_graph: false,
            neighbor_search: NeighborSearch::AllPairs,
            kernels: KernelVariant::Naive,
            integrate_in_kernel: true,
            programmatic_launch: false,
            one_block_rebuild: false,
            // Without graphs these do nothing; the input file's defaults, so that the options
            // read back as this configuration.
            graph_steps: GpuOptions::default().graph_steps,
            join_steps: GpuOptions::default().join_steps,
        };
        match self {
            Config::Cpu => None,
            Config::GpuNaive => Some(naive),
            Config::CellList => Some(GpuOptions {
                neighbor_search: NeighborSearch::CellList,
                ..naive
            }),
            Config::Fused => Some(GpuOptions {
                neighbor_search: NeighborSearch::Auto,
                kernels: KernelVariant::Fused,
                ..naive
            }),
            Config::CudaGraph => Some(GpuOptions {
                kernels: KernelVariant::Fused,
                ..GpuOptions::default()
            }),
            Config::OneCluster => Some(GpuOptions {
                kernels: KernelVariant::Cluster,
                ..GpuOptions::default()
            }),
        }
    }
}

/// Parses a comma-separated configuration list (`all` for every one).
pub fn parse_configs(list: &str) -> Result<Vec<Config>> {
    if list.trim() == "all" {
        return Ok(Config::ALL.to_vec());
    }
    let configs = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Config::parse)
        .collect::<Result<Vec<_>>>()?;
    if configs.is_empty() {
        bail!("--configs: no configuration given");
    }
    Ok(configs)
}

/// Latency statistics of one measurement, in µs, over `samples` samples (each the mean of
/// `per_sample` repetitions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `samples` (population standard deviation). Empty: all zero.
    pub fn of(samples: &[f64]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len() as f64;
        let mean = s.iter().sum::<f64>() / n;
        let std = (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let median = if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            0.5 * (s[s.len() / 2 - 1] + s[s.len() / 2])
        };
        Stats {
            mean,
            median,
            std,
            min: s[0],
            max: s[s.len() - 1],
        }
    }
}

/// One row: a system under one configuration. Every measured field is optional (null in JSON)
/// so that skipped rows and older or foreign files (the PyTorch baseline) share the schema.
/// Field meanings and units: docs/bench-schema.md.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Row {
    pub system: String,
    pub atoms: usize,
    pub periodic: Option<bool>,
    pub config: String,
    pub device: String,
    /// `ok`, `skipped` (see `reason`) or `not-applicable`.
    pub status: String,
    pub reason: Option<String>,
    pub neighbor_search: Option<String>,
    pub kernels: Option<String>,
    pub cuda_graph: Option<bool>,
    /// The one-cluster kernel ran the whole MD step, integration included.
    pub integrate_in_kernel: Option<bool>,
    /// The step's kernels ran as programmatic dependent launches (Hopper on).
    pub programmatic_launch: Option<bool>,
    /// The first integrator half ran the whole all-pairs rebuild (perf-notes v43).
    pub one_block_rebuild: Option<bool>,
    /// The message kernels' filter products ran on tensor cores (split half precision).
    pub message_mma: Option<bool>,
    /// The tensor-core backward kernel divided by each pair's distance instead of reading 1/d
    /// (perf-notes v50: from 512 atoms, MDRUN_MMA_BACKWARD_DIVIDES).
    pub mma_backward_divides: Option<bool>,
    /// The first message kernel of each evaluation recorded the pairs within the cutoff for the
    /// other five (perf-notes v65, MDRUN_PAIR_RECORD).
    pub pair_record: Option<bool>,
    /// The first interaction's message kernels used its input μ = 0 (perf-notes v66,
    /// MDRUN_FIRST_LAYER).
    pub first_layer: Option<bool>,
    /// The last mixing ran without its update network's a_vv third (perf-notes v68,
    /// MDRUN_LAST_WITHOUT_A_VV).
    pub last_without_a_vv: Option<bool>,
    /// Every dense block had an SM to itself, with up to 128 registers a thread (perf-notes v57:
    /// where the dense launch's blocks fit the GPU's SMs; MDRUN_DENSE_ALONE).
    pub dense_alone: Option<bool>,
    /// Each step kernel let its successor launch as it started (the early programmatic trigger:
    /// below 64 atoms since perf-notes v72; MDRUN_PDL_EARLY_TRIGGER).
    pub early_trigger: Option<bool>,
    /// The fused kernels' launch shape: atoms per dense block, blocks per dense cluster, threads
    /// per dense output, warp groups (or threads) per channel on an atom's pairs, and blocks per
    /// atom in the message kernels (KernelSizes; by size band and device, perf-notes v69;
    /// MDRUN_DENSE_TILE, MDRUN_DENSE_CLUSTER, MDRUN_DENSE_SPLIT, MDRUN_PAIR_SPLIT,
    /// MDRUN_CHANNEL_SLICES).
    pub dense_tile: Option<usize>,
    pub dense_cluster: Option<usize>,
    pub dense_split: Option<usize>,
    pub pair_split: Option<usize>,
    pub channel_slices: Option<usize>,
    /// MD steps per graph launch in the timed chunks (perf-notes v62: `[gpu] graph_steps`,
    /// MDRUN_GRAPH_STEPS; 1 without graphs).
    pub graph_steps: Option<u64>,
    /// Inside those graphs each boundary between steps was one kernel (perf-notes v63:
    /// `[gpu] join_steps`, MDRUN_JOIN_STEPS).
    pub joined_steps: Option<bool>,
    pub timestep_fs: Option<f64>,
    // Full MD step (µs).
    pub steps_timed: Option<u64>,
    pub median_us_per_step: Option<f64>,
    pub mean_us_per_step: Option<f64>,
    pub std_us_per_step: Option<f64>,
    pub min_us_per_step: Option<f64>,
    pub max_us_per_step: Option<f64>,
    pub steps_per_second: Option<f64>,
    pub ns_per_day: Option<f64>,
    pub atom_steps_per_second: Option<f64>,
    // One force evaluation (µs).
    pub force_calls_timed: Option<u64>,
    pub median_us_per_force_call: Option<f64>,
    pub mean_us_per_force_call: Option<f64>,
    pub std_us_per_force_call: Option<f64>,
    pub min_us_per_force_call: Option<f64>,
    pub max_us_per_force_call: Option<f64>,
    // Memory and accuracy.
    pub gpu_memory_bytes: Option<u64>,
    pub energy_error_per_atom_ev: Option<f64>,
    pub force_rmse_ev_per_angstrom: Option<f64>,
    pub force_max_error_ev_per_angstrom: Option<f64>,
    pub accuracy_note: Option<String>,
}

impl Row {
    pub fn new(system: &str, atoms: usize, config: &str) -> Row {
        Row {
            system: system.into(),
            atoms,
            config: config.into(),
            status: "ok".into(),
            ..Row::default()
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok" || self.status.is_empty()
    }

    pub fn set_step(&mut self, samples: &[f64], steps: u64, timestep_fs: f64) {
        let s = Stats::of(samples);
        self.steps_timed = Some(steps);
        self.median_us_per_step = Some(s.median);
        self.mean_us_per_step = Some(s.mean);
        self.std_us_per_step = Some(s.std);
        self.min_us_per_step = Some(s.min);
        self.max_us_per_step = Some(s.max);
        let per_second = 1e6 / s.median;
        self.timestep_fs = Some(timestep_fs);
        self.steps_per_second = Some(per_second);
        self.ns_per_day = Some(per_second * timestep_fs * crate::units::NS_PER_DAY_PER_FS_PER_S);
        self.atom_steps_per_second = Some(per_second * self.atoms as f64);
    }

    pub fn set_force_call(&mut self, samples: &[f64], calls: u64) {
        let s = Stats::of(samples);
        self.force_calls_timed = Some(calls);
        self.median_us_per_force_call = Some(s.median);
        self.mean_us_per_force_call = Some(s.mean);
        self.std_us_per_force_call = Some(s.std);
        self.min_us_per_force_call = Some(s.min);
        self.max_us_per_force_call = Some(s.max);
    }

    /// Marks the row as not measured, with the reason.
    pub fn skip(mut self, status: &str, reason: impl Into<String>) -> Row {
        self.status = status.into();
        self.reason = Some(reason.into());
        self
    }

    /// Same system, atoms and configuration.
    pub fn key(&self) -> (String, usize, String) {
        (self.system.clone(), self.atoms, self.config.clone())
    }
}

/// What bench.json holds: the run's settings and its rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub schema: String,
    pub mdrun_version: Option<String>,
    pub commit: Option<String>,
    pub created_unix_s: u64,
    pub host_cpu: Option<String>,
    pub gpu: Option<String>,
    pub model: Option<ModelInfo>,
    pub timestep_fs: f64,
    pub skin_angstrom: f64,
    pub temperature_k: f64,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelInfo {
    pub file: String,
    pub features: usize,
    pub interactions: usize,
    pub rbf: usize,
    pub cutoff_angstrom: f64,
}

impl Report {
    /// Reads bench.json, or a bare array of rows (the schema-1 files of earlier runs).
    pub fn read(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let report = if value.is_array() {
            Report {
                schema: "mdrun-bench/1".into(),
                rows: serde_json::from_value(value).with_context(|| format!("{}: rows", path.display()))?,
                ..Report::default()
            }
        } else {
            serde_json::from_value(value).with_context(|| format!("{}: not a bench report", path.display()))?
        };
        Ok(report)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

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
