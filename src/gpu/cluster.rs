//! The one-launch force evaluation for small open molecules (`kernels/painn_cluster.cu`): the
//! whole PaiNN forward and backward pass in one thread-block cluster, phases chained by
//! transaction barriers instead of kernel boundaries, activations in shared memory. Same weights as the
//! multi-kernel path ([`DeviceModel`]); pairs come from the positions (all pairs, no images), so it needs no
//! neighbor list. It applies on Hopper or newer to open systems of at most [`MAX_ATOMS`] atoms,
//! where `kernels = "cluster"` asks for it. `kernels = "auto"` no longer picks it: after perf-notes
//! v61–v63 the multi-kernel graph is the faster on the H200 from 3 atoms (v64).

use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::CUfunction_attribute_enum as Attribute;
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

use super::forces::{embed, DeviceModel};
use super::params::ClusterMdParams;
use super::{Buffer, Gpu};
use crate::model::PainnModel;

/// [`unsupported`], and the GPU's side: thread-block clusters need compute capability 9.0, in the
/// device and in the code NVRTC compiled for it.
pub fn unsupported_on(gpu: &Gpu, model: &PainnModel, n_atoms: usize, periodic: bool) -> Option<String> {
    let (major, minor) = gpu.code_capability;
    if major < 9 {
        return Some(format!(
            "needs thread-block clusters (compute capability 9.0), the kernels are compiled for {major}.{minor}"
        ));
    }
    unsupported(model, n_atoms, periodic)
}

/// Blocks of the cluster (`SCL` in the kernel): each owns F / 16 feature channels.
pub const CLUSTER_BLOCKS: usize = 16;
/// Most atoms the kernel holds (`NMAX`): every activation of every atom lives in shared memory.
pub const MAX_ATOMS: usize = 16;
/// Most interactions (`TMAX`): what the backward pass needs of each stays in shared memory.
pub const MAX_INTERACTIONS: usize = 3;
const THREADS: u32 = 512;

/// Per-layer pointers, laid out as `ClusterLayer` in kernels/painn_cluster.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ClusterLayerParams {
    c1t: u64,
    c1: u64,
    c1b: u64,
    c2t: u64,
    c2: u64,
    c2b: u64,
    mixt: u64,
    mix: u64,
    m1t: u64,
    m1: u64,
    m1b: u64,
    m2t: u64,
    m2: u64,
    m2b: u64,
    filter_offset: i32,
    pad: i32,
}

// Safety: plain-old-data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for ClusterLayerParams {}

/// Whether the kernel is built for these widths (features, readout hidden units): each block's
/// share of them must divide a warp, i.e. 16 × a power of two up to 512 (the `#if` in
/// kernels/painn_cluster.cu).
pub fn supports_widths(features: usize, readout_hidden: usize) -> bool {
    let owned = |width: usize| {
        width.is_multiple_of(CLUSTER_BLOCKS)
            && (width / CLUSTER_BLOCKS).is_power_of_two()
            && width / CLUSTER_BLOCKS <= 32
    };
    owned(features) && owned(readout_hidden)
}

/// Why the one-cluster kernel cannot evaluate this model on this system, if it cannot (the GPU
/// aside: it also needs thread-block clusters, see [`unsupported_on`]).
pub fn unsupported(model: &PainnModel, n_atoms: usize, periodic: bool) -> Option<String> {
    let (f, h) = (model.config.n_atom_basis, model.readout1.n_out());
    if periodic {
        Some("open boundaries only".into())
    } else if n_atoms == 0 || n_atoms > MAX_ATOMS {
        Some(format!("1 to {MAX_ATOMS} atoms, the system has {n_atoms}"))
    } else if model.config.n_interactions > MAX_INTERACTIONS {
        Some(format!(
            "at most {MAX_INTERACTIONS} interactions, the model has {}",
            model.config.n_interactions
        ))
    } else if !supports_widths(f, h) {
        Some(format!(
            "n_atom_basis ({f}) and the readout width ({h}) must be 16 × a power of two"
        ))
    } else {
        None
    }
}

pub struct ClusterPainn {
    net: DeviceModel,
    layers: Buffer<ClusterLayerParams>,
    pub atom_energy: Buffer<f32>,
    pub forces: Buffer<f32>,
    function: CudaFunction,
    shared_bytes: u32,
    /// Each block's filter rows, biases and radial basis (`OwnedParams`), packed once by
    /// `painn_cluster_pack` so that an evaluation loads them in one round.
    owned: Buffer<f32>,
    /// MDRUN_CLUSTER_TRACE set: the kernel stamps the time at the start of each phase, and every
    /// evaluation prints the timeline (a diagnostic: it waits for the device, so no graphs).
    trace: Option<Buffer<u64>>,
}

/// `TRACE_MARKS` in the kernel.
const TRACE_MARKS: usize = 128;

impl ClusterPainn {
    /// The kernel for `numbers` (open boundaries unless `periodic`), or why it does not apply
    /// (`[gpu] kernels = "cluster"` reports that as is).
    pub fn new(gpu: &Gpu, model: &PainnModel, numbers: &[u8], periodic: bool) -> Result<ClusterPainn> {
        if let Some(reason) = unsupported_on(gpu, model, numbers.len(), periodic) {
            bail!("[gpu] kernels = \"cluster\" does not apply here: {reason}");
        }
        let n = numbers.len();
        let net = DeviceModel::new(gpu, model, numbers)?;
        let params: Vec<ClusterLayerParams> = net
            .layers
            .iter()
            .enumerate()
            .map(|(t, l)| ClusterLayerParams {
                c1t: l.context1.wt.ptr,
                c1: l.context1.w.ptr,
                c1b: l.context1.b(),
                c2t: l.context2.wt.ptr,
                c2: l.context2.w.ptr,
                c2b: l.context2.b(),
                mixt: l.mix.wt.ptr,
                mix: l.mix.w.ptr,
                m1t: l.mix1.wt.ptr,
                m1: l.mix1.w.ptr,
                m1b: l.mix1.b(),
                m2t: l.mix2.wt.ptr,
                m2: l.mix2.w.ptr,
                m2b: l.mix2.b(),
                filter_offset: net.filter_offset[t],
                pad: 0,
            })
            .collect();
        let layers = gpu.upload(&params)?;
        let function = gpu.function("painn_cluster")?;
        // The kernel reports its shared-memory layout's size (the device must grant it) and
        // that of one block's packed parameters.
        let probe = gpu.function("painn_cluster_shared_bytes")?;
        let bytes: Buffer<i32> = gpu.zeros(2)?;
        unsafe {
            gpu.stream
                .launch_builder(&probe)
                .arg(&bytes.ptr)
                .launch(LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (1, 1, 1),
                    shared_mem_bytes: 0,
                })
                .map_err(|e| anyhow!("painn_cluster_shared_bytes: {e:?}"))?;
        }
        let sizes = gpu.download(&bytes)?;
        let (shared_bytes, owned_bytes) = (sizes[0] as u32, sizes[1] as usize);
        // Every activation lives in shared memory, and the per-pair radial basis and its
        // derivative grow with n_rbf: wide bases do not fit (the shipped model, n_rbf = 20, takes
        // ~227 of the 227 KB a Hopper block may have).
        let granted = gpu
            .ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| anyhow!("painn_cluster: shared-memory limit query: {e:?}"))?;
        if shared_bytes as i64 > granted as i64 {
            bail!(
                "[gpu] kernels = \"cluster\" does not apply here: this model (n_atom_basis {}, n_rbf {}) needs {shared_bytes} bytes of shared memory per block, the GPU grants {granted}",
                model.config.n_atom_basis,
                model.config.n_rbf
            );
        }
        let owned: Buffer<f32> = gpu.zeros(CLUSTER_BLOCKS * owned_bytes / 4)?;
        let pack = gpu.function("painn_cluster_pack")?;
        let t_count = net.layers.len() as i32;
        unsafe {
            gpu.stream
                .launch_builder(&pack)
                .arg(&layers.ptr)
                .arg(&t_count)
                .arg(&net.filter(0))
                .arg(&net.readout())
                .arg(&owned.ptr)
                .launch(LaunchConfig {
                    grid_dim: (CLUSTER_BLOCKS as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                })
                .map_err(|e| anyhow!("painn_cluster_pack: {e:?}"))?;
        }
        let attribute = |what: Attribute, value: i32| {
            function
                .set_attribute(what, value)
                .map_err(|e| anyhow!("painn_cluster: setting {what:?} = {value}: {e:?}"))
        };
        attribute(
            Attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared_bytes as i32,
        )?;
        attribute(Attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)?;
        let painn = ClusterPainn {
            net,
            layers,
            atom_energy: gpu.zeros(n)?,
            forces: gpu.zeros(3 * n)?,
            function,
            shared_bytes,
            owned,
            trace: match std::env::var_os("MDRUN_CLUSTER_TRACE") {
                Some(_) => Some(gpu.zeros(TRACE_MARKS)?),
                None => None,
            },
        };
        let clusters = painn
            .function
            .occupancy_max_active_clusters(painn.launch_config(), &gpu.stream)
            .map_err(|e| anyhow!("painn_cluster: occupancy query: {e:?}"))?;
        if clusters == 0 {
            bail!(
                "painn_cluster: the device cannot run one cluster of {CLUSTER_BLOCKS} blocks with {} bytes of shared memory each",
                painn.shared_bytes
            );
        }
        embed(gpu, model, &painn.net)?;
        Ok(painn)
    }

    fn launch_config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (CLUSTER_BLOCKS as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: self.shared_bytes,
        }
    }

    /// Launches the whole evaluation: per-atom energies into `atom_energy`, forces into `forces`.
    pub fn enqueue(&mut self, gpu: &Gpu, positions: &Buffer<f64>) -> Result<()> {
        self.enqueue_with(gpu, positions, &ClusterMdParams::default())
    }

    /// With `md.integrate`: one whole MD step (first half, evaluation, closing half kick;
    /// positions, velocities and the step counter updated in place; `forces` must hold the
    /// forces at `positions`). Else one evaluation, as [`ClusterPainn::enqueue`].
    pub fn enqueue_with(&mut self, gpu: &Gpu, positions: &Buffer<f64>, md: &ClusterMdParams) -> Result<()> {
        // Every layer's filter offset travels in `layers` (and the filter rows in `owned`); the
        // kernel takes the cutoff from this.
        let filter = self.net.filter(0);
        let readout = self.net.readout();
        let t_count = self.net.layers.len() as i32;
        let n = self.net.n_atoms as i32;
        unsafe {
            gpu.stream
                .launch_builder(&self.function)
                .arg(&self.layers.ptr)
                .arg(&t_count)
                .arg(&filter)
                .arg(&readout)
                .arg(&positions.ptr)
                .arg(&self.net.q[0].ptr)
                .arg(&self.net.layers[0].x.ptr)
                .arg(&self.owned.ptr)
                .arg(&self.forces.ptr)
                .arg(&self.atom_energy.ptr)
                .arg(&n)
                .arg(&self.net.epsilon)
                .arg(md)
                .arg(&self.trace.as_ref().map_or(0, |b| b.ptr))
                .launch(self.launch_config())
                .map_err(|e| anyhow!("painn_cluster: {e:?}"))?;
        }
        if let Some(trace) = &self.trace {
            let marks = gpu.download(trace)?;
            let start = marks[0];
            let times: Vec<String> = marks
                .iter()
                .take_while(|&&t| t >= start && t > 0)
                .map(|&t| format!("{:.2}", (t - start) as f64 / 1e3))
                .collect();
            eprintln!("painn_cluster timeline (µs after start, block 0): {}", times.join(" "));
        }
        Ok(())
    }
}
