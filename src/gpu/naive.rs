//! The unfused PaiNN path (`[gpu] kernels = "naive"`, the `gpu-naive` configuration of
//! `mdrun bench`): thin launch wrappers around kernels/naive.cu. Same weights (the f32
//! [`DenseOnGpu`] buffers of the fused path), same neighbor rows, same outputs (`atom_energy`,
//! `forces`); every per-pair intermediate lives in global memory, which is the point: it is the
//! baseline the fused kernels are measured against. Per-pair memory is 2 · P · 3F floats (the
//! filter and its gradient, P = atoms × row capacity), recomputed per interaction.

use anyhow::{anyhow, Result};
use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use super::cluster::ClusterPainn;
use super::forces::{f32s, DeviceModel, GpuPainn};
use super::neighbors::GpuNeighbors;
use super::{Buffer, Gpu, KernelSizes};
use crate::model::PainnModel;

/// Which PaiNN kernels evaluate the forces (the `[gpu] kernels` input key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelVariant {
    /// `fused`. (Up to perf-notes v63 `cluster` for open systems of at most 6 atoms on Hopper;
    /// on the H200 the fused graph is now the faster from 3 atoms: v64.)
    #[default]
    Auto,
    /// Fused message passing and dense layers (kernels/painn.cu), a few kernels per layer.
    Fused,
    /// The whole evaluation in one launch of one thread-block cluster (kernels/painn_cluster.cu);
    /// refused where it does not apply.
    Cluster,
    /// Plain unfused kernels with per-pair intermediates in global memory (kernels/naive.cu).
    Naive,
}

/// The force kernels behind one interface, for the MD engine.
// One per engine: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum PainnKernels {
    Fused(GpuPainn),
    Cluster(ClusterPainn),
    Naive(NaivePainn),
}

impl PainnKernels {
    pub fn new(
        gpu: &Gpu,
        model: &PainnModel,
        numbers: &[u8],
        capacity: usize,
        variant: KernelVariant,
        periodic: bool,
    ) -> Result<PainnKernels> {
        Ok(match variant {
            KernelVariant::Auto | KernelVariant::Fused => {
                PainnKernels::Fused(GpuPainn::new(gpu, model, numbers, capacity)?)
            }
            KernelVariant::Cluster => PainnKernels::Cluster(ClusterPainn::new(gpu, model, numbers, periodic)?),
            KernelVariant::Naive => PainnKernels::Naive(NaivePainn::new(gpu, model, numbers, capacity)?),
        })
    }

    pub fn enqueue(&mut self, gpu: &Gpu, positions: &Buffer<f64>, neighbors: &GpuNeighbors) -> Result<()> {
        match self {
            PainnKernels::Fused(p) => p.enqueue(gpu, positions, neighbors),
            PainnKernels::Cluster(p) => p.enqueue(gpu, positions),
            PainnKernels::Naive(p) => p.enqueue(gpu, positions, neighbors),
        }
    }

    /// The kernels running.
    pub fn variant(&self) -> KernelVariant {
        match self {
            PainnKernels::Fused(_) => KernelVariant::Fused,
            PainnKernels::Cluster(_) => KernelVariant::Cluster,
            PainnKernels::Naive(_) => KernelVariant::Naive,
        }
    }

    /// The fused kernels' launch shapes and build options (None for the other kernel sets): what
    /// ran where the bench and the tests ask (tensor cores, pair record, dense layout, ...).
    pub fn fused_sizes(&self) -> Option<&KernelSizes> {
        match self {
            PainnKernels::Fused(painn) => Some(&painn.sizes),
            _ => None,
        }
    }

    /// Whether the evaluation reads the neighbor rows (the one-cluster kernel forms its pairs).
    pub fn uses_neighbor_list(&self) -> bool {
        !matches!(self, PainnKernels::Cluster(_))
    }

    pub fn resize_pairs(&mut self, gpu: &Gpu, capacity: usize) -> Result<()> {
        match self {
            PainnKernels::Fused(p) => p.resize_pairs(gpu, capacity),
            PainnKernels::Cluster(_) => Ok(()),
            PainnKernels::Naive(p) => p.resize_pairs(gpu, capacity),
        }
    }

    /// Forces (eV/Å, f32 [N, 3]) of the last evaluation.
    pub fn forces(&self) -> &Buffer<f32> {
        match self {
            PainnKernels::Fused(p) => &p.forces,
            PainnKernels::Cluster(p) => &p.forces,
            PainnKernels::Naive(p) => &p.forces,
        }
    }

    pub fn forces_mut(&mut self) -> &mut Buffer<f32> {
        match self {
            PainnKernels::Fused(p) => &mut p.forces,
            PainnKernels::Cluster(p) => &mut p.forces,
            PainnKernels::Naive(p) => &mut p.forces,
        }
    }

    /// Per-atom energies (eV, f32 [N]) of the last evaluation.
    pub fn atom_energy(&self) -> &Buffer<f32> {
        match self {
            PainnKernels::Fused(p) => &p.atom_energy,
            PainnKernels::Cluster(p) => &p.atom_energy,
            PainnKernels::Naive(p) => &p.atom_energy,
        }
    }
}

/// Blocks of `threads` for `items` threads, counted in 64 bits (P · 3F passes 2³² at 10⁵ atoms).
fn grid(items: usize, threads: u32) -> Result<LaunchConfig> {
    let blocks = items.div_ceil(threads as usize).max(1);
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b < i32::MAX as u32)
        .ok_or_else(|| anyhow!("naive kernels: {items} threads is more than one launch can hold"))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

const THREADS: u32 = 256;

/// One `naive_dense` launch: out = M · in (+ bias) (+ residual), row by row.
struct DenseCall {
    /// Row-major [n_out, n_in]: W forward, Wᵀ backward.
    m: u64,
    bias: u64,
    residual: u64,
    n_in: usize,
    n_out: usize,
    input: u64,
    ld_in: usize,
    out: u64,
    ld_out: usize,
    rows: usize,
}

/// Per-pair intermediates, P = atoms × capacity slots.
struct PairBuffers {
    capacity: usize,
    geom: Buffer<f32>,
    cut: Buffer<f32>,
    phi: Buffer<f32>,
    filter: Buffer<f32>,
    gw: Buffer<f32>,
    gphi: Buffer<f32>,
    pair_grad: Buffer<f32>,
}

impl PairBuffers {
    fn new(gpu: &Gpu, n_atoms: usize, capacity: usize, f: usize, k: usize) -> Result<PairBuffers> {
        let p = n_atoms * capacity;
        Ok(PairBuffers {
            capacity,
            geom: gpu.zeros(4 * p)?,
            cut: gpu.zeros(2 * p)?,
            phi: gpu.zeros(k * p)?,
            filter: gpu.zeros(3 * f * p)?,
            gw: gpu.zeros(3 * f * p)?,
            gphi: gpu.zeros(k * p)?,
            pair_grad: gpu.zeros(4 * p)?,
        })
    }
}

struct Kernels {
    pair_basis: CudaFunction,
    pair_filter: CudaFunction,
    copy: CudaFunction,
    silu: CudaFunction,
    mul_silu_grad: CudaFunction,
    dense: CudaFunction,
    message: CudaFunction,
    norm_context: CudaFunction,
    mixing_update: CudaFunction,
    readout_energy: CudaFunction,
    readout_grad: CudaFunction,
    mixing_back_a: CudaFunction,
    mixing_back_b: CudaFunction,
    message_backward: CudaFunction,
    filter_backward: CudaFunction,
    pair_grad: CudaFunction,
    pair_forces: CudaFunction,
}

pub struct NaivePainn {
    net: DeviceModel,
    features: usize,
    hidden: usize,
    ctx: Buffer<f32>,
    hidden_act: Buffer<f32>,
    readout_z: Buffer<f32>,
    readout_gz: Buffer<f32>,
    pub atom_energy: Buffer<f32>,
    pub forces: Buffer<f32>,
    /// Gradients: at a mixing output (later: at the interaction input), at the message output.
    gq_out: Buffer<f32>,
    gm_out: Buffer<f32>,
    gq_mid: Buffer<f32>,
    gm_mid: Buffer<f32>,
    ga: Buffer<f32>,
    gvu: Buffer<f32>,
    gz: Buffer<f32>,
    gctx: Buffer<f32>,
    gx: Buffer<f32>,
    pairs: PairBuffers,
    k: Kernels,
}

impl NaivePainn {
    pub fn new(gpu: &Gpu, model: &PainnModel, numbers: &[u8], capacity: usize) -> Result<NaivePainn> {
        let f = gpu.sizes.features;
        let h = gpu.sizes.readout_hidden;
        let n = numbers.len();
        let k = |name: &str| gpu.function(&format!("naive_{name}"));
        let kernels = Kernels {
            pair_basis: k("pair_basis")?,
            pair_filter: k("pair_filter")?,
            copy: k("copy")?,
            silu: k("silu")?,
            mul_silu_grad: k("mul_silu_grad")?,
            dense: k("dense")?,
            message: k("message")?,
            norm_context: k("norm_context")?,
            mixing_update: k("mixing_update")?,
            readout_energy: k("readout_energy")?,
            readout_grad: k("readout_grad")?,
            mixing_back_a: k("mixing_back_a")?,
            mixing_back_b: k("mixing_back_b")?,
            message_backward: k("message_backward")?,
            filter_backward: k("filter_backward")?,
            pair_grad: k("pair_grad")?,
            pair_forces: k("pair_forces")?,
        };
        let painn = NaivePainn {
            net: DeviceModel::new(gpu, model, numbers)?,
            features: f,
            hidden: h,
            ctx: gpu.zeros(n * 2 * f)?,
            hidden_act: gpu.zeros(n * f)?,
            readout_z: gpu.zeros(n * h)?,
            readout_gz: gpu.zeros(n * h)?,
            atom_energy: gpu.zeros(n)?,
            forces: gpu.zeros(3 * n)?,
            gq_out: gpu.zeros(n * f)?,
            gm_out: gpu.zeros(n * 3 * f)?,
            gq_mid: gpu.zeros(n * f)?,
            gm_mid: gpu.zeros(n * 3 * f)?,
            ga: gpu.zeros(n * 3 * f)?,
            gvu: gpu.zeros(n * 6 * f)?,
            gz: gpu.zeros(n * f)?,
            gctx: gpu.zeros(n * 2 * f)?,
            gx: gpu.zeros(n * 3 * f)?,
            pairs: PairBuffers::new(gpu, n, capacity, f, model.config.n_rbf)?,
            k: kernels,
        };
        // Embedding and the first context network depend on the elements only: once, as in
        // the fused path.
        let embedding = gpu.upload(&f32s(model.embedding.as_slice()))?;
        let embed = gpu.function("naive_embed")?;
        let n_atoms = n as i32;
        unsafe {
            gpu.stream
                .launch_builder(&embed)
                .arg(&painn.net.numbers.ptr)
                .arg(&embedding.ptr)
                .arg(&painn.net.q[0].ptr)
                .arg(&n_atoms)
                .launch(grid(n * f, THREADS)?)
                .map_err(|e| anyhow!("naive_embed: {e:?}"))?;
        }
        painn.context(gpu, 0)?;
        gpu.synchronize()?;
        Ok(painn)
    }

    pub fn resize_pairs(&mut self, gpu: &Gpu, capacity: usize) -> Result<()> {
        self.pairs = PairBuffers::new(gpu, self.net.n_atoms, capacity, self.features, self.k_rbf())?;
        Ok(())
    }

    fn k_rbf(&self) -> usize {
        self.net.rbf_offsets.len()
    }

    fn dense(&self, s: &CudaStream, call: DenseCall) -> Result<()> {
        let [n_in, n_out, ld_in, ld_out, rows] =
            [call.n_in, call.n_out, call.ld_in, call.ld_out, call.rows].map(|v| v as i32);
        unsafe {
            s.launch_builder(&self.k.dense)
                .arg(&call.m)
                .arg(&call.bias)
                .arg(&call.residual)
                .arg(&n_in)
                .arg(&n_out)
                .arg(&call.input)
                .arg(&ld_in)
                .arg(&call.out)
                .arg(&ld_out)
                .arg(&rows)
                .launch(grid(call.rows * call.n_out, THREADS)?)
                .map_err(|e| anyhow!("naive_dense: {e:?}"))?;
        }
        Ok(())
    }

    /// `function(in, out, n)` over n elements: copy, silu, mul_silu_grad.
    fn elementwise(&self, s: &CudaStream, function: &CudaFunction, a: u64, b: u64, n: usize) -> Result<()> {
        let count = n as u64;
        unsafe {
            s.launch_builder(function)
                .arg(&a)
                .arg(&b)
                .arg(&count)
                .launch(grid(n, THREADS)?)
                .map_err(|e| anyhow!("naive element-wise kernel: {e:?}"))?;
        }
        Ok(())
    }

    /// x[t] = W2 σ(W1 q[t] + b1) + b2, keeping the pre-activation for the backward pass.
    fn context(&self, gpu: &Gpu, t: usize) -> Result<()> {
        let (s, f, n) = (&gpu.stream, self.features, self.net.n_atoms);
        let layer = &self.net.layers[t];
        self.dense(
            s,
            DenseCall {
                m: layer.context1.w.ptr,
                bias: layer.context1.b(),
                residual: 0,
                n_in: f,
                n_out: f,
                input: self.net.q[t].ptr,
                ld_in: f,
                out: layer.pre_context.ptr,
                ld_out: f,
                rows: n,
            },
        )?;
        self.elementwise(s, &self.k.silu, layer.pre_context.ptr, self.hidden_act.ptr, n * f)?;
        self.dense(
            s,
            DenseCall {
                m: layer.context2.w.ptr,
                bias: layer.context2.b(),
                residual: 0,
                n_in: f,
                n_out: 3 * f,
                input: self.hidden_act.ptr,
                ld_in: f,
                out: layer.x.ptr,
                ld_out: 3 * f,
                rows: n,
            },
        )
    }

    /// The filter of interaction t for every pair slot, into `pairs.filter`.
    fn pair_filter(&self, s: &CudaStream, t: usize, n_pairs: usize) -> Result<()> {
        let p = n_pairs as u64;
        unsafe {
            s.launch_builder(&self.k.pair_filter)
                .arg(&self.pairs.geom.ptr)
                .arg(&self.pairs.phi.ptr)
                .arg(&self.net.filter_w.ptr)
                .arg(&self.net.filter_b.ptr)
                .arg(&self.net.filter_offset[t])
                .arg(&self.pairs.filter.ptr)
                .arg(&p)
                .launch(grid(n_pairs * 3 * self.features, THREADS)?)
                .map_err(|e| anyhow!("naive_pair_filter: {e:?}"))?;
        }
        Ok(())
    }

    /// Launches the whole evaluation: per-atom energies into `atom_energy`, forces into `forces`.
    pub fn enqueue(&mut self, gpu: &Gpu, positions: &Buffer<f64>, neighbors: &GpuNeighbors) -> Result<()> {
        if neighbors.capacity != self.pairs.capacity {
            return Err(anyhow!(
                "naive kernels: pair buffers sized for {} neighbors per atom, rows have {}",
                self.pairs.capacity,
                neighbors.capacity
            ));
        }
        let s = &gpu.stream;
        let (f, h, n) = (self.features, self.hidden, self.net.n_atoms);
        let n_atoms = n as i32;
        let n_pairs = n * neighbors.capacity;
        let p64 = n_pairs as u64;
        let nb = neighbors.params();
        let cell = neighbors.cell;
        let t_count = self.net.layers.len();
        let pr = &self.pairs;
        let err = |what: &'static str| move |e: cudarc::driver::DriverError| anyhow!("{what}: {e:?}");
        unsafe {
            s.launch_builder(&self.k.pair_basis)
                .arg(&positions.ptr)
                .arg(&cell)
                .arg(&nb)
                .arg(&self.net.rbf_offsets.ptr)
                .arg(&self.net.rbf_coeffs.ptr)
                .arg(&self.net.cutoff)
                .arg(&pr.geom.ptr)
                .arg(&pr.cut.ptr)
                .arg(&pr.phi.ptr)
                .arg(&n_atoms)
                .launch(grid(n_pairs, THREADS)?)
                .map_err(err("naive_pair_basis"))?;
        }
        for t in 0..t_count {
            let layer = &self.net.layers[t];
            self.pair_filter(s, t, n_pairs)?;
            self.elementwise(s, &self.k.copy, self.net.q[t].ptr, layer.q_mid.ptr, n * f)?;
            self.elementwise(s, &self.k.copy, self.net.mu[t].ptr, layer.mu_mid.ptr, n * 3 * f)?;
            unsafe {
                s.launch_builder(&self.k.message)
                    .arg(&nb)
                    .arg(&pr.geom.ptr)
                    .arg(&pr.cut.ptr)
                    .arg(&pr.filter.ptr)
                    .arg(&layer.x.ptr)
                    .arg(&self.net.mu[t].ptr)
                    .arg(&layer.q_mid.ptr)
                    .arg(&layer.mu_mid.ptr)
                    .arg(&n_atoms)
                    .launch(grid(n_pairs * f, THREADS)?)
                    .map_err(err("naive_message"))?;
            }
            // Mixing: (V, U) = W_mix μ per Cartesian row, context [q, ‖V‖], a = MLP(context).
            self.dense(
                s,
                DenseCall {
                    m: layer.mix.w.ptr,
                    bias: 0,
                    residual: 0,
                    n_in: f,
                    n_out: 2 * f,
                    input: layer.mu_mid.ptr,
                    ld_in: f,
                    out: layer.vu.ptr,
                    ld_out: 2 * f,
                    rows: 3 * n,
                },
            )?;
            unsafe {
                s.launch_builder(&self.k.norm_context)
                    .arg(&layer.q_mid.ptr)
                    .arg(&layer.vu.ptr)
                    .arg(&self.net.epsilon)
                    .arg(&layer.norm.ptr)
                    .arg(&self.ctx.ptr)
                    .arg(&n_atoms)
                    .launch(grid(n * f, THREADS)?)
                    .map_err(err("naive_norm_context"))?;
            }
            self.dense(
                s,
                DenseCall {
                    m: layer.mix1.w.ptr,
                    bias: layer.mix1.b(),
                    residual: 0,
                    n_in: 2 * f,
                    n_out: f,
                    input: self.ctx.ptr,
                    ld_in: 2 * f,
                    out: layer.pre_mix.ptr,
                    ld_out: f,
                    rows: n,
                },
            )?;
            self.elementwise(s, &self.k.silu, layer.pre_mix.ptr, self.hidden_act.ptr, n * f)?;
            self.dense(
                s,
                DenseCall {
                    m: layer.mix2.w.ptr,
                    bias: layer.mix2.b(),
                    residual: 0,
                    n_in: f,
                    n_out: 3 * f,
                    input: self.hidden_act.ptr,
                    ld_in: f,
                    out: layer.a_mix.ptr,
                    ld_out: 3 * f,
                    rows: n,
                },
            )?;
            unsafe {
                s.launch_builder(&self.k.mixing_update)
                    .arg(&layer.q_mid.ptr)
                    .arg(&layer.mu_mid.ptr)
                    .arg(&layer.vu.ptr)
                    .arg(&layer.a_mix.ptr)
                    .arg(&self.net.q[t + 1].ptr)
                    .arg(&self.net.mu[t + 1].ptr)
                    .arg(&n_atoms)
                    .launch(grid(n * f, THREADS)?)
                    .map_err(err("naive_mixing_update"))?;
            }
            if t + 1 < t_count {
                self.context(gpu, t + 1)?;
            }
        }
        // Readout: z = W1 q + b1, E_a = scale (w2 · σ(z) + b2) + mean + atomref; ∂E/∂q = W1ᵀ ∂E/∂z.
        self.dense(
            s,
            DenseCall {
                m: self.net.readout1.w.ptr,
                bias: self.net.readout1.b(),
                residual: 0,
                n_in: f,
                n_out: h,
                input: self.net.q[t_count].ptr,
                ld_in: f,
                out: self.readout_z.ptr,
                ld_out: h,
                rows: n,
            },
        )?;
        unsafe {
            s.launch_builder(&self.k.readout_energy)
                .arg(&self.readout_z.ptr)
                .arg(&self.net.readout_w2.ptr)
                .arg(&self.net.readout_b2)
                .arg(&self.net.scale)
                .arg(&self.net.mean_per_atom)
                .arg(&self.net.atomref.ptr)
                .arg(&self.net.numbers.ptr)
                .arg(&self.atom_energy.ptr)
                .arg(&n_atoms)
                .launch(grid(n, 128)?)
                .map_err(err("naive_readout_energy"))?;
            s.launch_builder(&self.k.readout_grad)
                .arg(&self.readout_z.ptr)
                .arg(&self.net.readout_w2.ptr)
                .arg(&self.net.scale)
                .arg(&self.readout_gz.ptr)
                .arg(&n_atoms)
                .launch(grid(n * h, THREADS)?)
                .map_err(err("naive_readout_grad"))?;
        }
        self.dense(
            s,
            DenseCall {
                m: self.net.readout1.wt.ptr,
                bias: 0,
                residual: 0,
                n_in: h,
                n_out: f,
                input: self.readout_gz.ptr,
                ld_in: h,
                out: self.gq_out.ptr,
                ld_out: f,
                rows: n,
            },
        )?;
        s.memset_zeros(&mut self.gm_out.slice).map_err(err("memset"))?;
        s.memset_zeros(&mut self.pairs.pair_grad.slice).map_err(err("memset"))?;
        for t in (0..t_count).rev() {
            self.backward_layer(gpu, t, neighbors)?;
        }
        s.memset_zeros(&mut self.forces.slice).map_err(err("memset"))?;
        let pr = &self.pairs;
        unsafe {
            s.launch_builder(&self.k.pair_forces)
                .arg(&nb)
                .arg(&pr.geom.ptr)
                .arg(&pr.pair_grad.ptr)
                .arg(&self.forces.ptr)
                .arg(&p64)
                .launch(grid(n_pairs, THREADS)?)
                .map_err(err("naive_pair_forces"))?;
        }
        Ok(())
    }

    /// Gradients through interaction t and mixing t: from (∂q, ∂μ) at the mixing output
    /// (`gq_out`, `gm_out`) to the interaction input (the same buffers), pair gradients added to
    /// `pair_grad`.
    fn backward_layer(&mut self, gpu: &Gpu, t: usize, neighbors: &GpuNeighbors) -> Result<()> {
        let s = &gpu.stream;
        let (f, n) = (self.features, self.net.n_atoms);
        let n_atoms = n as i32;
        let n_pairs = n * neighbors.capacity;
        let p64 = n_pairs as u64;
        let nb = neighbors.params();
        let err = |what: &'static str| move |e: cudarc::driver::DriverError| anyhow!("{what}: {e:?}");
        let layer = &self.net.layers[t];
        unsafe {
            s.launch_builder(&self.k.mixing_back_a)
                .arg(&self.gq_out.ptr)
                .arg(&self.gm_out.ptr)
                .arg(&layer.vu.ptr)
                .arg(&layer.a_mix.ptr)
                .arg(&self.ga.ptr)
                .arg(&self.gvu.ptr)
                .arg(&n_atoms)
                .launch(grid(n * f, THREADS)?)
                .map_err(err("naive_mixing_back_a"))?;
        }
        self.dense(
            s,
            DenseCall {
                m: layer.mix2.wt.ptr,
                bias: 0,
                residual: 0,
                n_in: 3 * f,
                n_out: f,
                input: self.ga.ptr,
                ld_in: 3 * f,
                out: self.gz.ptr,
                ld_out: f,
                rows: n,
            },
        )?;
        self.elementwise(s, &self.k.mul_silu_grad, self.gz.ptr, layer.pre_mix.ptr, n * f)?;
        self.dense(
            s,
            DenseCall {
                m: layer.mix1.wt.ptr,
                bias: 0,
                residual: 0,
                n_in: f,
                n_out: 2 * f,
                input: self.gz.ptr,
                ld_in: f,
                out: self.gctx.ptr,
                ld_out: 2 * f,
                rows: n,
            },
        )?;
        unsafe {
            s.launch_builder(&self.k.mixing_back_b)
                .arg(&self.gq_out.ptr)
                .arg(&self.gctx.ptr)
                .arg(&layer.vu.ptr)
                .arg(&layer.norm.ptr)
                .arg(&self.gq_mid.ptr)
                .arg(&self.gvu.ptr)
                .arg(&n_atoms)
                .launch(grid(n * f, THREADS)?)
                .map_err(err("naive_mixing_back_b"))?;
        }
        // ∂μ at the message output: μ passes through, plus W_mixᵀ ∂(V, U) per Cartesian row.
        self.dense(
            s,
            DenseCall {
                m: layer.mix.wt.ptr,
                bias: 0,
                residual: self.gm_out.ptr,
                n_in: 2 * f,
                n_out: f,
                input: self.gvu.ptr,
                ld_in: 2 * f,
                out: self.gm_mid.ptr,
                ld_out: f,
                rows: 3 * n,
            },
        )?;
        // Messages: the filter of this interaction again (later interactions overwrote it), the
        // per-pair gradients, and the senders' ∂x, ∂μ scattered (∂μ starts from the residual).
        self.pair_filter(s, t, n_pairs)?;
        self.elementwise(s, &self.k.copy, self.gm_mid.ptr, self.gm_out.ptr, n * 3 * f)?;
        s.memset_zeros(&mut self.gx.slice).map_err(err("memset"))?;
        let pr = &self.pairs;
        let layer = &self.net.layers[t];
        unsafe {
            s.launch_builder(&self.k.message_backward)
                .arg(&nb)
                .arg(&pr.geom.ptr)
                .arg(&pr.cut.ptr)
                .arg(&pr.filter.ptr)
                .arg(&layer.x.ptr)
                .arg(&self.net.mu[t].ptr)
                .arg(&self.gq_mid.ptr)
                .arg(&self.gm_mid.ptr)
                .arg(&pr.gw.ptr)
                .arg(&self.gx.ptr)
                .arg(&self.gm_out.ptr)
                .arg(&n_atoms)
                .launch(grid(n_pairs * f, THREADS)?)
                .map_err(err("naive_message_backward"))?;
            s.launch_builder(&self.k.filter_backward)
                .arg(&pr.geom.ptr)
                .arg(&pr.gw.ptr)
                .arg(&self.net.filter_w.ptr)
                .arg(&self.net.filter_offset[t])
                .arg(&pr.gphi.ptr)
                .arg(&p64)
                .launch(grid(n_pairs * self.k_rbf(), THREADS)?)
                .map_err(err("naive_filter_backward"))?;
            s.launch_builder(&self.k.pair_grad)
                .arg(&nb)
                .arg(&pr.geom.ptr)
                .arg(&pr.cut.ptr)
                .arg(&pr.phi.ptr)
                .arg(&self.net.rbf_offsets.ptr)
                .arg(&self.net.rbf_coeffs.ptr)
                .arg(&pr.filter.ptr)
                .arg(&pr.gw.ptr)
                .arg(&pr.gphi.ptr)
                .arg(&layer.x.ptr)
                .arg(&self.gm_mid.ptr)
                .arg(&pr.pair_grad.ptr)
                .arg(&p64)
                .launch(grid(n_pairs, THREADS)?)
                .map_err(err("naive_pair_grad"))?;
        }
        if t == 0 {
            // The first interaction's q is the embedding: no gradient needed past it.
            return Ok(());
        }
        // ∂q at the interaction input: q passes through, plus the context network's part.
        self.dense(
            s,
            DenseCall {
                m: layer.context2.wt.ptr,
                bias: 0,
                residual: 0,
                n_in: 3 * f,
                n_out: f,
                input: self.gx.ptr,
                ld_in: 3 * f,
                out: self.gz.ptr,
                ld_out: f,
                rows: n,
            },
        )?;
        self.elementwise(s, &self.k.mul_silu_grad, self.gz.ptr, layer.pre_context.ptr, n * f)?;
        self.dense(
            s,
            DenseCall {
                m: layer.context1.wt.ptr,
                bias: 0,
                residual: self.gq_mid.ptr,
                n_in: f,
                n_out: f,
                input: self.gz.ptr,
                ld_in: f,
                out: self.gq_out.ptr,
                ld_out: f,
                rows: n,
            },
        )
    }
}
