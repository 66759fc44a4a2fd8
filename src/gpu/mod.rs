//! The CUDA path: device context, NVRTC compilation of `kernels/*.cu` to machine code (`compile`:
//! cached on disk by source hash and architecture), device buffers, and the GPU force field and MD engine.
//!
//! cudarc loads the driver and NVRTC at run time, so this builds and links without CUDA; a
//! machine without a GPU gets a clear error when it asks for one.

pub mod cluster;
pub mod compile;
pub mod forces;
pub mod launch;
pub mod md;
pub mod naive;
pub mod neighbors;
pub mod params;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};

pub use compile::{compile, compile_cubin};

/// Kernel sources, embedded at build time. `common.cuh` is prepended to each.
pub const COMMON: &str = include_str!("../../kernels/common.cuh");
pub const SOURCES: [(&str, &str); 6] = [
    ("painn.cu", include_str!("../../kernels/painn.cu")),
    // After painn.cu: the tensor-core message kernels share its pair functions.
    ("message_mma.cu", include_str!("../../kernels/message_mma.cu")),
    // Before painn_cluster.cu: the one-cluster kernel's MD steps use the integrator's functions.
    ("integrate.cu", include_str!("../../kernels/integrate.cu")),
    ("painn_cluster.cu", include_str!("../../kernels/painn_cluster.cu")),
    ("neighbors.cu", include_str!("../../kernels/neighbors.cu")),
    ("naive.cu", include_str!("../../kernels/naive.cu")),
];

/// The largest radial basis the tensor-core message kernels take (their filter columns sit in
/// registers: 3 parts × 2 rows × K / 8 × 2 words per lane).
pub const MMA_MAX_RBF: usize = 32;

/// Below this many atoms the scalar message kernels are the default. v31 (H200) found them as
/// fast below 32 atoms; after v47–v63, on the H200 (perf-notes v64, MD step µs, tensor cores
/// against scalar): 3 atoms 51.0 / 49.9, 9: 52.8 / 52.3, 12: 53.7 / 54.8, 22: 57.2 / 60.8.
pub const MMA_MIN_ATOMS: usize = 12;

/// The pair record (KernelSizes::pair_record) by default below this many atoms: the band where
/// the message kernels are latency-bound (perf-notes v67, H200).
pub const PAIR_RECORD_MAX_ATOMS: usize = 64;

/// The dense layers' atoms per block and cluster size from 128 atoms where their blocks all fit
/// the device at once (KernelSizes::on_device; perf-notes v69).
pub const MID_BAND_TILE: usize = 3;
pub const MID_BAND_CLUSTER: usize = 2;

/// The dense layers' cluster size up to SMALL_BAND_MAX_ATOMS where its blocks all fit the device
/// at once (KernelSizes::on_device; perf-notes v69, v72, v73); 4 (KernelSizes::for_system)
/// elsewhere below 64 atoms. With the early trigger (below EARLY_TRIGGER_MAX_ATOMS) clusters of 8
/// won at 3, 4 and 5 atoms and lost at 6 and 9 (H100), so the band stops at 5.
pub const SMALL_BAND_CLUSTER: usize = 8;
pub const SMALL_BAND_MAX_ATOMS: usize = 5;

/// Each step kernel lets its successor launch as it starts (the early programmatic trigger) below
/// this many atoms, where the GPU is mostly idle: −1.5 to −4.7 µs per MD step at 3–51 atoms on
/// the H100, slower at 99 and 192 atoms, whose later blocks then crowd the SMs (perf-notes v36,
/// v72).
pub const EARLY_TRIGGER_MAX_ATOMS: usize = 64;

/// Threads per block of the tensor-core message kernels (kernels/message_mma.cu asks for 16 warps
/// per SM, which at most 512 threads per block keep at 128 registers).
pub const MMA_MAX_THREADS: usize = 512;

/// The most atoms a dense block can take for `features`: the dense kernels keep ~15 F floats per
/// tile atom in static shared memory (48 KB), at most 512 features × atoms per block.
fn max_dense_tile(features: usize) -> usize {
    (512 / features).max(1)
}

/// An `MDRUN_*` override of a kernel size, where it is set to a number.
fn env(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok())
}

/// Compile-time sizes of the kernels (NVRTC `-D` definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelSizes {
    pub features: usize,
    pub rbf: usize,
    pub readout_hidden: usize,
    /// Threads sharing one output of a per-atom dense layer (blocks of `split · F` threads).
    pub split: usize,
    /// Atoms per block in the dense layers: each weight load serves `tile` atoms (1 to 4).
    pub tile: usize,
    /// Blocks of a thread-block cluster sharing one tile's dense layers (1: no clusters; they
    /// need compute capability 9.0).
    pub cluster: usize,
    /// Threads per channel (scalar message kernels) or warp groups (tensor-core ones) sharing an
    /// atom's pair loop (blocks of `pair_split · F / channel_slices` threads, twice that with
    /// tensor cores).
    pub pair_split: usize,
    /// Blocks per atom in the message kernels, each with `F / channel_slices` of the channels
    /// (a multiple of 32).
    pub channel_slices: usize,
    /// The message kernels' filter products on tensor cores in split half precision
    /// (kernels/message_mma.cu; compute capability 8.0 on, radial bases up to 32 functions).
    pub message_mma: bool,
    /// The tensor-core backward kernel keeps d per pair and divides (true, the default) or reads
    /// 1/d (false). v50 read 1/d below 512 atoms, where its earlier loads won while its 104 B of
    /// spills did not matter; v52 removed those spills and then dividing measured as fast at 99
    /// atoms and faster from 192 on (H200, perf-notes v59). MDRUN_MMA_BACKWARD_DIVIDES=0 for A/B.
    pub mma_backward_divides: bool,
    /// The evaluation's first tensor-core message kernel records its pairs within the cutoff,
    /// their geometry and radial basis, and the other five copy them instead of computing them
    /// again (kernels/message_mma.cu, `PairRecord`; perf-notes v65). On below
    /// PAIR_RECORD_MAX_ATOMS, where it measured 3.2–3.9 µs faster per MD step at 12–22 atoms;
    /// from 64 atoms on, where the kernels are throughput-bound, copying the record cost more than
    /// computing (+4.4 µs at 99 atoms, +7.8 at 192; perf-notes v67). MDRUN_PAIR_RECORD=0/1
    /// overrides where the message kernels use tensor cores.
    pub pair_record: bool,
    /// The first interaction's tensor-core message kernels use its input μ = 0: no filter v
    /// part, no reads of the neighbors' x_v and μ, and a backward that computes the pair
    /// gradients only (perf-notes v66). On by default: faster at every size measured (−0.4 µs
    /// per MD step at 12 atoms to −9.5 µs at 192, v67); MDRUN_FIRST_LAYER=0 turns it off.
    pub first_layer: bool,
    /// The last interaction's mixing computes its update network without the a_vv third, whose
    /// every use there is a product with ∂E/∂μ = 0 (kernels/painn.cu, UPDATE_PARTS; perf-notes
    /// v68). On by default: 0.2 to 2.9 µs faster per MD step at 3–192 atoms on the H100 but at 99
    /// atoms (0.2–0.3 µs slower there in two calls; perf-notes v69); MDRUN_LAST_WITHOUT_A_VV=0
    /// turns it off.
    pub last_without_a_vv: bool,
    /// Products per thread and row in the one-cluster kernel's matvecs before the dot product
    /// is split further (0: split as far as the threads allow, the layout before perf-notes v25).
    pub cluster_matvec_products: usize,
    /// Under programmatic dependent launch, each kernel lets the next one launch as it starts
    /// (true, below EARLY_TRIGGER_MAX_ATOMS) or only as it completes (false, from there on:
    /// starting early, the next kernels' blocks crowd the SMs that the running one leaves free,
    /// +1 to +11 µs at 99–192 atoms; kernels/common.cuh, perf-notes v36, v72).
    /// MDRUN_PDL_EARLY_TRIGGER=0/1 overrides.
    pub pdl_early_trigger: bool,
    /// Every dense block has an SM to itself (its launch's blocks fit the device's SMs at once),
    /// so the dense kernels may take up to 128 registers a thread (DENSE_ALONE, perf-notes v57).
    /// Decided by Gpu::open against the device; MDRUN_DENSE_ALONE=0/1 overrides.
    pub dense_alone: bool,
    /// The atoms of the system the sizes are for (Gpu::open counts the dense launch's blocks).
    pub atoms: usize,
    /// Self-checks compiled into the kernels (KERNEL_CHECKS: the one-cluster kernel verifies its
    /// phase plan against its sends and traps on a mismatch). For tests: MDRUN_KERNEL_CHECKS=1.
    pub checks: bool,
}

impl KernelSizes {
    /// Dense-layer shape for a system of `n_atoms`: below 64 atoms one atom per block, with
    /// clusters of 4 blocks sharing each atom's layers (where the GPU has clusters); from 64
    /// atoms on two atoms per block, which fits both atoms' three Cartesian rows of μ in one
    /// round of weight loads (docs/perf-notes.md, v18), in clusters of 2 below 128 atoms and
    /// without clusters from 128 on (v22); `on_device` takes clusters of 8 up to 5 atoms and
    /// three atoms per block in clusters of 2 from 128 atoms where those blocks all fit the
    /// device at once (v69).
    /// The message kernels take the filter products on tensor cores from 32 atoms on where the
    /// radial basis fits (up to 32 functions; v31) and split each atom's pair tiles over 4 warp groups and its
    /// channels over 4 blocks below 64 atoms, over 2 and 4 below 128, 1 and 2 from 128 on. The scalar kernels (wider
    /// bases, MDRUN_MESSAGE_MMA=0) split the pairs over 4 threads per channel and the channels
    /// over 4 blocks below 128 atoms, over 2 and 2 below 512 (v13, v19). More warps hide the
    /// pair loop's latency while there are few atoms.
    /// The one-cluster kernel's matvecs give each thread 8 products per row (v25).
    /// MDRUN_DENSE_SPLIT, MDRUN_DENSE_TILE, MDRUN_DENSE_CLUSTER, MDRUN_PAIR_SPLIT,
    /// MDRUN_CHANNEL_SLICES, MDRUN_MESSAGE_MMA, MDRUN_MMA_BACKWARD_DIVIDES, MDRUN_CLUSTER_MATVEC_W
    /// and MDRUN_PDL_EARLY_TRIGGER override, for experiments (MDRUN_DENSE_ALONE too, in Gpu::open).
    pub fn for_system(features: usize, rbf: usize, readout_hidden: usize, n_atoms: usize) -> KernelSizes {
        let tile = env("MDRUN_DENSE_TILE")
            .unwrap_or(if n_atoms >= 64 { 2 } else { 1 })
            .clamp(1, 4)
            .min(max_dense_tile(features));
        let split = env("MDRUN_DENSE_SPLIT").unwrap_or(4).max(1);
        let wanted_cluster = env("MDRUN_DENSE_CLUSTER")
            .unwrap_or(match n_atoms {
                0..64 => 4,
                64..128 => 2,
                _ => 1,
            })
            .clamp(1, 8);
        let cluster = (1..=wanted_cluster)
            .rev()
            .find(|&c| dense_cluster_fits(features, readout_hidden, split, tile, c))
            .unwrap_or(1);
        // The message kernels' filter products on tensor cores where the basis fits their
        // registers (perf-notes v31); pair split and channel slices by size band, measured for
        // each kernel pair (scalar: perf-notes v13, v19; tensor cores: v31).
        let mma_wanted = env("MDRUN_MESSAGE_MMA").map_or(n_atoms >= MMA_MIN_ATOMS, |v| v != 0) && rbf <= MMA_MAX_RBF;
        let (split_band, slices_band) = match (mma_wanted, n_atoms) {
            (true, 0..64) => (4, 4),
            (true, 64..128) => (2, 4),
            (true, _) => (1, 2),
            (false, 0..128) => (4, 4),
            (false, 128..512) => (2, 2),
            (false, _) => (1, 1),
        };
        let mut pair_split = env("MDRUN_PAIR_SPLIT").unwrap_or(split_band).clamp(1, 4);
        let mut channel_slices = env("MDRUN_CHANNEL_SLICES").unwrap_or(slices_band).clamp(1, 4);
        while channel_slices > 1
            && !(features.is_multiple_of(channel_slices) && (features / channel_slices).is_multiple_of(32))
        {
            channel_slices -= 1;
        }
        // The tensor-core kernels' blocks have a warp per 16 channels of the slice, and at most
        // 512 threads (their 128 registers per thread; larger blocks would get 64 and spill).
        let message_mma = mma_wanted && 2 * features / channel_slices <= MMA_MAX_THREADS;
        let (lanes_per_channel, max_threads) = if message_mma { (2, MMA_MAX_THREADS) } else { (1, 1024) };
        while pair_split > 1 && lanes_per_channel * pair_split * features / channel_slices > max_threads {
            pair_split -= 1;
        }
        KernelSizes {
            features,
            rbf,
            readout_hidden,
            split,
            tile,
            cluster,
            pair_split,
            channel_slices,
            message_mma,
            mma_backward_divides: env("MDRUN_MMA_BACKWARD_DIVIDES") != Some(0),
            pair_record: message_mma && env("MDRUN_PAIR_RECORD").map_or(n_atoms < PAIR_RECORD_MAX_ATOMS, |v| v != 0),
            first_layer: message_mma && env("MDRUN_FIRST_LAYER") != Some(0),
            last_without_a_vv: env("MDRUN_LAST_WITHOUT_A_VV") != Some(0),
            cluster_matvec_products: env("MDRUN_CLUSTER_MATVEC_W").unwrap_or(8),
            pdl_early_trigger: env("MDRUN_PDL_EARLY_TRIGGER").map_or(n_atoms < EARLY_TRIGGER_MAX_ATOMS, |v| v != 0),
            // Needs the device's SM count: Gpu::open decides.
            dense_alone: false,
            atoms: n_atoms,
            checks: std::env::var_os("MDRUN_KERNEL_CHECKS").is_some_and(|v| v == "1"),
        }
    }

    /// Blocks of one dense-layer launch over `n_atoms`.
    /// These sizes as a device of compute capability `cc` with `sms` multiprocessors runs them
    /// (what `Gpu::open` compiles, and `mdrun precompile --input` without the device).
    pub fn on_device(mut self, cc: (i32, i32), sms: usize) -> KernelSizes {
        // Thread-block clusters need compute capability 9.0.
        if cc.0 < 9 {
            self.cluster = 1;
        }
        // Wider dense layouts where all their blocks fit the SMs at once (perf-notes v69), unless
        // MDRUN_DENSE_TILE or MDRUN_DENSE_CLUSTER choose:
        // - up to 5 atoms, clusters of 8 instead of 4: each block's share of every matvec halves.
        //   Without the early trigger that won at 3–12 atoms (−0.7 to −2.1 µs per MD step on the
        //   H100, v69); with it (the default there, v72) only at 3–5 atoms (−0.3 to −1.5 µs
        //   against clusters of 4, v72, v73), and it lost 0.8–2.5 µs at 6–12: the early-launched
        //   clusters of 8 must each find 8 free SMs of one GPC beside the running kernel's blocks;
        // - from 128 atoms, three atoms per block in clusters of 2 (up to 198 atoms on 132 SMs):
        //   each block streams half of every dense kernel's weights from L2 instead of all of
        //   them for two atoms, which binds the dense kernels there (−4.3 to −6.0 µs at 192 atoms
        //   on the H100; at 99 atoms, with 66 blocks, it lost 17 µs).
        let chosen = env("MDRUN_DENSE_TILE").is_some() || env("MDRUN_DENSE_CLUSTER").is_some();
        let wider = match self.atoms {
            0..=SMALL_BAND_MAX_ATOMS => Some((self.tile, SMALL_BAND_CLUSTER)),
            128.. => Some((MID_BAND_TILE, MID_BAND_CLUSTER)),
            _ => None,
        };
        if let Some((tile, cluster)) = wider.filter(|&(tile, cluster)| {
            !chosen
                && cc.0 >= 9
                && tile <= max_dense_tile(self.features)
                && self.atoms.div_ceil(tile) * cluster <= sms
                && dense_cluster_fits(self.features, self.readout_hidden, self.split, tile, cluster)
        }) {
            self.tile = tile;
            self.cluster = cluster;
        }
        // Each dense block alone on an SM where the launch's blocks all fit at once (v57);
        // MDRUN_DENSE_ALONE=0/1 overrides.
        self.dense_alone = env("MDRUN_DENSE_ALONE").map_or(self.dense_blocks(self.atoms) <= sms, |v| v != 0);
        // mma.sync with f16 operands in the shapes message_mma.cu uses needs sm_80 (the pair
        // split, capped for the tensor-core blocks, stays valid for the scalar ones).
        if cc.0 < 8 {
            self.message_mma = false;
            self.pair_record = false;
            self.first_layer = false;
        }
        self
    }

    /// The launch shape in words, for run logs: e.g. "dense layers 1 atom a block in clusters of
    /// 8, messages on tensor cores over 4 warp groups and 4 blocks an atom, each kernel launching
    /// the next as it starts".
    pub fn launch_shape(&self) -> String {
        let atoms = if self.tile == 1 {
            "1 atom".to_string()
        } else {
            format!("{} atoms", self.tile)
        };
        let clusters = if self.cluster > 1 {
            format!(" in clusters of {}", self.cluster)
        } else {
            String::new()
        };
        let messages = if self.message_mma {
            format!("on tensor cores over {} warp groups", self.pair_split)
        } else {
            format!("in f32 over {} threads a channel", self.pair_split)
        };
        format!(
            "dense layers {atoms} a block{clusters}, messages {messages} and {} blocks an atom{}",
            self.channel_slices,
            if self.pdl_early_trigger {
                ", each kernel launching the next as it starts"
            } else {
                ""
            }
        )
    }

    pub fn dense_blocks(&self, n_atoms: usize) -> usize {
        n_atoms.div_ceil(self.tile) * self.cluster
    }

    pub fn dense_threads(&self) -> u32 {
        (self.split * self.features) as u32
    }

    pub fn message_threads(&self) -> u32 {
        let lanes_per_channel = if self.message_mma { 2 } else { 1 };
        (lanes_per_channel * self.pair_split * self.features / self.channel_slices) as u32
    }

    /// The message kernels' names (scalar or tensor-core filter products), the first
    /// interaction's apart where they differ (kernels/message_mma.cu: with the pair record the
    /// first forward kernel writes it; with `first_layer` both use μ = 0).
    pub fn message_kernels(&self) -> MessageKernels {
        if !self.message_mma {
            return MessageKernels {
                first_forward: "message_forward",
                forward: "message_forward",
                first_backward: "message_backward",
                backward: "message_backward",
            };
        }
        MessageKernels {
            first_forward: if self.pair_record || self.first_layer {
                "message_forward_mma_first"
            } else {
                "message_forward_mma"
            },
            forward: "message_forward_mma",
            first_backward: if self.first_layer {
                "message_backward_mma_first"
            } else {
                "message_backward_mma"
            },
            backward: "message_backward_mma",
        }
    }

    /// Blocks of one message-kernel launch over `n_atoms`.
    pub fn message_blocks(&self, n_atoms: usize) -> usize {
        n_atoms * self.channel_slices
    }
}

/// Kernel names of an evaluation's message passing (`KernelSizes::message_kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageKernels {
    pub first_forward: &'static str,
    pub forward: &'static str,
    pub first_backward: &'static str,
    pub backward: &'static str,
}

/// Whether the dense kernels build with clusters of `cluster` blocks: each block owns
/// features / cluster channels of every layer and computes either its channels of a layer's
/// outputs or every output over its channels of the inputs, with a warp for every 32 outputs
/// (kernels/common.cuh, Slice), and the kernels' static shared memory stays within 48 KB.
fn dense_cluster_fits(features: usize, readout_hidden: usize, split: usize, tile: usize, cluster: usize) -> bool {
    if cluster == 1 {
        return true;
    }
    let warps = split * features / 32;
    let owned_widths = [features, 2 * features, 3 * features];
    let full_widths = [features, readout_hidden];
    features.is_multiple_of(cluster)
        && owned_widths.iter().all(|&w| (w / cluster).div_ceil(32) <= warps)
        && full_widths.iter().all(|&w| w.div_ceil(32) <= warps)
        && dense_shared_bytes(features, readout_hidden, split, tile, cluster) <= 48 * 1024
}

/// Static shared memory of the largest dense kernel, mixing_forward (kernels/painn.cu): 15 F
/// floats per tile atom, the matvec scratch (MATVEC_SCRATCH), 64 floats for its block sums, and
/// with clusters the two halves of reduce_buffer (REDUCE_FLOATS each) and two barriers.
pub fn dense_shared_bytes(features: usize, readout_hidden: usize, split: usize, tile: usize, cluster: usize) -> usize {
    let accumulators = if split * tile <= 8 { 6 } else { tile };
    let scratch = split * accumulators * features;
    let reduce = if cluster > 1 {
        2 * (cluster * tile * features.max(readout_hidden)).max(3 * tile * features)
    } else {
        0
    };
    4 * (15 * features * tile + scratch + 64 + reduce) + if cluster > 1 { 16 } else { 0 }
}

/// A device, its stream, and the compiled kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub module: Arc<CudaModule>,
    pub sizes: KernelSizes,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// The compute capability the kernels were compiled for: the device's, or an older one where
    /// NVRTC does not know the device (`compile::Target`). What the kernels' features depend on.
    pub code_capability: (i32, i32),
    /// Launch the MD step's kernels as programmatic dependent launches (`launch.rs`; compute
    /// capability 9.0 on, set by the engine from `[gpu] programmatic_launch`).
    pub programmatic: bool,
    memory: Arc<MemoryCount>,
}

/// Bytes held by the live buffers of one `Gpu`, and the most they ever held: exact, unlike
/// cuMemGetInfo, which moves in the driver's 2 MiB pages and sees every process on the device.
#[derive(Default)]
struct MemoryCount {
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl MemoryCount {
    fn add(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }
}

impl Gpu {
    /// Opens device `ordinal` and compiles the kernels for its architecture.
    pub fn open(ordinal: usize, sizes: KernelSizes) -> Result<Gpu> {
        if !Gpu::available() {
            return Err(anyhow!("no CUDA driver or device found"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("no usable CUDA device {ordinal}: {e:?}"))?;
        // Stream capture into a graph needs cudarc's per-buffer event tracking off; everything
        // here runs on one stream, in order. The legacy default stream cannot be captured.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| anyhow!("creating a CUDA stream: {e:?}"))?;
        let compute_capability = ctx.compute_capability().map_err(|e| anyhow!("{e:?}"))?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| anyhow!("{e:?}"))?;
        let (target, sizes) = compile::device_shape(sizes, compute_capability, sms.max(0) as usize)?;
        let code_capability = target.capability();
        if let compile::Target::Ptx(..) = target {
            let (major, minor) = compute_capability;
            eprintln!(
                "warning: NVRTC does not know this GPU's sm_{major}{minor}: its kernels are compiled as PTX for {}, which the driver compiles for the GPU (a newer NVRTC gives machine code for it and a kernel cache)",
                target.arch()
            );
        }
        let module = compile::load_kernels(&ctx, sizes, target)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(Gpu {
            ctx,
            stream,
            module,
            sizes,
            name,
            compute_capability,
            code_capability,
            programmatic: false,
            memory: Arc::default(),
        })
    }

    /// Whether a CUDA device can be opened at all (driver found, device present).
    pub fn available() -> bool {
        // Probe the driver library first: cudarc panics on first use when it is missing.
        let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
        driver_present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
    }

    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module
            .load_function(name)
            .map_err(|e| anyhow!("kernel `{name}` missing: {e:?}"))
    }

    /// A launch of one of the MD step's kernels on this GPU's stream (programmatic where the
    /// engine turned that on).
    pub fn launch<'a>(&'a self, function: &'a CudaFunction) -> launch::Launch<'a> {
        launch::Launch::new(&self.stream, function, self.programmatic)
    }

    pub fn upload<T: DeviceRepr + Clone>(&self, data: &[T]) -> Result<Buffer<T>> {
        let slice = self
            .stream
            .clone_htod(data)
            .map_err(|e| anyhow!("upload of {} elements: {e:?}", data.len()))?;
        Ok(self.buffer(slice))
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<Buffer<T>> {
        let slice = self
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| anyhow!("allocation of {len} elements: {e:?}"))?;
        Ok(self.buffer(slice))
    }

    fn buffer<T>(&self, slice: CudaSlice<T>) -> Buffer<T> {
        let bytes = slice.len() * std::mem::size_of::<T>();
        self.memory.add(bytes);
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        Buffer {
            slice,
            ptr,
            bytes,
            memory: Arc::clone(&self.memory),
        }
    }

    /// The most device memory (bytes) this GPU's buffers held at once so far.
    pub fn peak_buffer_bytes(&self) -> usize {
        self.memory.peak.load(Ordering::Relaxed)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, buffer: &Buffer<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(&buffer.slice).context("download from the GPU")
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("the GPU reported an error: {e:?}"))
    }
}

/// A device allocation with its raw address, passed to kernels inside parameter structs.
pub struct Buffer<T> {
    pub slice: CudaSlice<T>,
    pub ptr: u64,
    bytes: usize,
    memory: Arc<MemoryCount>,
}

impl<T> Buffer<T> {
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

impl<T> Drop for Buffer<T> {
    fn drop(&mut self) {
        self.memory.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Threads per block and blocks for one thread per item.
pub fn grid_for(items: usize, threads: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: ((items as u32).div_ceil(threads).max(1), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` per item.
pub fn block_per_item(items: usize, threads: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (items.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::KernelSizes;

    /// (tile, cluster, pair split, channel slices, tensor-core messages) chosen for `n_atoms` and
    /// a radial basis of `rbf` functions, with no overrides.
    fn shape(features: usize, rbf: usize, n_atoms: usize) -> (usize, usize, usize, usize, bool) {
        let s = KernelSizes::for_system(features, rbf, 64.min(features), n_atoms);
        (s.tile, s.cluster, s.pair_split, s.channel_slices, s.message_mma)
    }

    /// Whether the environment sets the dense layout these tests expect from the size rules.
    fn dense_layout_overridden() -> bool {
        ["MDRUN_DENSE_ALONE", "MDRUN_DENSE_TILE", "MDRUN_DENSE_CLUSTER"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    }

    #[test]
    fn a_device_without_clusters_or_tensor_cores_or_enough_multiprocessors_changes_the_shape() {
        if dense_layout_overridden() {
            return;
        }
        let benzene = KernelSizes::for_system(128, 20, 64, 12);
        assert_eq!((benzene.cluster, benzene.message_mma), (4, true));
        // H100: 12 clusters of 4 blocks on 132 multiprocessors, each block alone on one.
        let h100 = benzene.on_device((9, 0), 132);
        assert_eq!((h100.cluster, h100.message_mma, h100.dense_alone), (4, true, true));
        // The 48 blocks of clusters of 4 do not fit 47 multiprocessors.
        let small = benzene.on_device((9, 0), 47);
        assert_eq!(
            (small.cluster, small.dense_alone),
            (4, false),
            "48 blocks on 47 multiprocessors"
        );
        // Water: 3 clusters of 8 where 24 blocks fit, of 4 where they do not.
        let water = KernelSizes::for_system(128, 20, 64, 3);
        assert_eq!(water.on_device((9, 0), 132).cluster, 8);
        assert_eq!(water.on_device((9, 0), 23).cluster, 4);
        // Ampere: no clusters (12 blocks, alone on 108), tensor cores; Turing: neither.
        let a100 = benzene.on_device((8, 0), 108);
        assert_eq!((a100.cluster, a100.message_mma, a100.dense_alone), (1, true, true));
        let t4 = benzene.on_device((7, 5), 40);
        assert_eq!((t4.cluster, t4.message_mma), (1, false));
    }

    #[test]
    fn the_dense_layers_take_wider_layouts_up_to_5_and_from_128_atoms_where_they_fit_the_device() {
        if dense_layout_overridden() {
            return;
        }
        let on = |n_atoms: usize, cc: (i32, i32), sms: usize| {
            let s = KernelSizes::for_system(128, 20, 64, n_atoms).on_device(cc, sms);
            (s.tile, s.cluster, s.dense_alone)
        };
        // Clusters of 8 up to 5 atoms (40 blocks), of 4 from 6 on; 8 only where the blocks fit
        // (4 atoms on 31 SMs, 5 on 39: 4).
        assert_eq!(on(4, (9, 0), 132), (1, 8, true));
        assert_eq!(on(4, (9, 0), 31), (1, 4, true));
        assert_eq!(on(5, (9, 0), 132), (1, 8, true));
        assert_eq!(on(5, (9, 0), 40), (1, 8, true));
        assert_eq!(on(5, (9, 0), 39), (1, 4, true));
        assert_eq!(on(6, (9, 0), 132), (1, 4, true));
        assert_eq!(on(12, (9, 0), 132), (1, 4, true));
        assert_eq!(on(17, (9, 0), 132), (1, 4, true));
        assert_eq!(on(22, (9, 0), 132), (1, 4, true));
        // 192 atoms on an H100: 64 tiles × 2 = 128 blocks on 132 SMs.
        assert_eq!(on(192, (9, 0), 132), (3, 2, true));
        assert_eq!(on(128, (9, 0), 132), (3, 2, true));
        assert_eq!(on(198, (9, 0), 132), (3, 2, true));
        // 199 atoms would need 134 blocks: two atoms per block, no clusters (100 blocks, alone).
        assert_eq!(on(199, (9, 0), 132), (2, 1, true));
        // Below 128 atoms the v22 band; without clusters (Ampere) the plain shape.
        assert_eq!(on(127, (9, 0), 132), (2, 2, true));
        assert_eq!(on(192, (8, 0), 108), (2, 1, true));
        // A narrow model keeps the shape wherever its layers divide into the cluster.
        let narrow = KernelSizes::for_system(32, 20, 32, 192).on_device((9, 0), 132);
        assert_eq!((narrow.tile, narrow.cluster), (3, 2));
    }

    #[test]
    fn the_launch_shape_reads_as_words() {
        let mut s = KernelSizes::for_system(128, 20, 64, 12);
        (s.tile, s.cluster, s.pair_split, s.channel_slices, s.message_mma) = (1, 8, 4, 4, true);
        s.pdl_early_trigger = true;
        assert_eq!(
            s.launch_shape(),
            "dense layers 1 atom a block in clusters of 8, messages on tensor cores over 4 warp groups and 4 blocks \
             an atom, each kernel launching the next as it starts"
        );
        (s.tile, s.cluster, s.pair_split, s.channel_slices, s.message_mma) = (3, 1, 2, 2, false);
        s.pdl_early_trigger = false;
        assert_eq!(
            s.launch_shape(),
            "dense layers 3 atoms a block, messages in f32 over 2 threads a channel and 2 blocks an atom"
        );
    }

    #[test]
    fn launch_shapes_follow_the_measured_size_rules() {
        // perf-notes v18, v22, v31: the student's shapes at each size band; tensor-core messages
        // from 12 atoms since v64.
        assert_eq!(shape(128, 20, 9), (1, 4, 4, 4, false));
        assert_eq!(shape(128, 20, 12), (1, 4, 4, 4, true));
        assert_eq!(shape(128, 20, 51), (1, 4, 4, 4, true));
        assert_eq!(shape(128, 20, 100), (2, 2, 2, 4, true));
        assert_eq!(shape(128, 20, 192), (2, 1, 1, 2, true));
        assert_eq!(shape(128, 20, 12_288), (2, 1, 1, 2, true));
        // A basis too wide for the tensor-core kernels' registers: the scalar bands (v13, v19).
        assert_eq!(shape(128, 64, 12), (1, 4, 4, 4, false));
        assert_eq!(shape(128, 64, 100), (2, 2, 4, 4, false));
        assert_eq!(shape(128, 64, 192), (2, 1, 2, 2, false));
        assert_eq!(shape(128, 64, 12_288), (2, 1, 1, 1, false));
    }

    #[test]
    fn kernels_trigger_their_successors_early_below_64_atoms() {
        // perf-notes v72 (H100): −1.5 to −4.7 µs per MD step at 3–51 atoms, slower at 99 and 192.
        if std::env::var_os("MDRUN_PDL_EARLY_TRIGGER").is_some() {
            return;
        }
        let early = |n_atoms| KernelSizes::for_system(128, 20, 64, n_atoms).pdl_early_trigger;
        assert!([1, 3, 12, 22, 51, 63].into_iter().all(early));
        assert!(![64, 99, 192, 12_288].into_iter().any(early));
    }

    #[test]
    fn the_tensor_core_backward_divides_at_every_size() {
        // perf-notes v59: once v52 took the reciprocal form's spills away, dividing was never slower.
        let divides = |n_atoms| KernelSizes::for_system(128, 20, 64, n_atoms).mma_backward_divides;
        assert!([32, 51, 99, 192, 511, 512, 1_536, 12_288].into_iter().all(divides));
    }

    #[test]
    fn launch_shapes_respect_the_kernels_limits_at_every_width() {
        for features in (32..=512).step_by(32) {
            for (n_atoms, hidden) in [1, 12, 63, 64, 127, 128, 511, 512, 100_000]
                .into_iter()
                .flat_map(|n| [(n, 64.min(features)), (n, features / 2)])
            {
                // As chosen for the system, and as a Hopper GPU with few or many SMs runs it.
                let shapes = [20, 64].into_iter().flat_map(|rbf| {
                    let s = KernelSizes::for_system(features, rbf, hidden, n_atoms);
                    [
                        s,
                        s.on_device((9, 0), 16),
                        s.on_device((9, 0), 132),
                        s.on_device((9, 0), 100_000),
                    ]
                    .map(|s| (rbf, s))
                });
                for (rbf, s) in shapes {
                    let what = format!("F = {features}, {n_atoms} atoms: {s:?}");
                    // Message blocks: whole warps of channels, at most 1,024 threads.
                    assert!(features.is_multiple_of(s.channel_slices), "{what}");
                    assert!((features / s.channel_slices).is_multiple_of(32), "{what}");
                    assert!(s.message_threads() <= 1024, "{what}");
                    assert_eq!(s.message_blocks(n_atoms), n_atoms * s.channel_slices, "{what}");
                    // Dense blocks: at most 512 features × atoms (static shared memory).
                    assert!(s.tile * features <= 512 || s.tile == 1, "{what}");
                    // Cluster blocks: a warp for every 32 outputs of a layer they compute (their
                    // channels of it, or all of an F- or H-wide one), their shared memory
                    // within 48 KB.
                    let warps = s.dense_threads() as usize / 32;
                    assert!(features.is_multiple_of(s.cluster), "{what}");
                    for width in [features, 2 * features, 3 * features] {
                        assert!((width / s.cluster).div_ceil(32) <= warps, "{what}");
                    }
                    if s.cluster > 1 {
                        assert!(features.div_ceil(32) <= warps && hidden.div_ceil(32) <= warps, "{what}");
                        let bytes = super::dense_shared_bytes(features, hidden, s.split, s.tile, s.cluster);
                        assert!(bytes <= 48 * 1024, "{what}");
                    }
                    // Tensor-core messages only where their registers hold the basis, in blocks
                    // of at most 512 threads.
                    assert!(!s.message_mma || rbf <= super::MMA_MAX_RBF, "{what}");
                    assert!(!s.message_mma || s.message_threads() <= 512, "{what}");
                }
            }
        }
    }
}
