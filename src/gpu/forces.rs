//! PaiNN energy and forces on the GPU: the weights in f32 and every per-layer activation the
//! hand-written backward pass needs, in buffers sized once per system (memory linear in atoms).

use anyhow::{bail, Result};
use cudarc::driver::{CudaFunction, PushKernelArg};

use super::neighbors::GpuNeighbors;
use super::params::{
    ContextBackParams, FilterParams, IntegrationParams, LastLayerParams, MixingBackParams, MixingCacheParams,
    MixingParams, NextLayerParams, PairRecordParams, ReadoutParams,
};
use super::{block_per_item, grid_for, Buffer, Gpu, KernelSizes};
use crate::model::{Dense, PainnModel, RadialBasis};

/// The power of two that brings `max`, the largest magnitude of an operand, to between 2¹³ and
/// 2¹⁴: split into two halves (largest finite 65,504; normal from 2⁻¹⁴), such an operand keeps
/// 22 significant bits down to values 2⁻¹³ of its largest (perf-notes, review of v31–v33).
fn half_range_scale(max: f64) -> f32 {
    if max > 0.0 && max.is_finite() {
        2f64.powi((14.0 - max.log2()).floor() as i32) as f32
    } else {
        1.0
    }
}

pub(crate) fn f32s(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

/// A dense layer on the device: W [out, in] and Wᵀ [in, out] row-major, and the bias.
pub(crate) struct DenseOnGpu {
    pub(crate) w: Buffer<f32>,
    pub(crate) wt: Buffer<f32>,
    pub(crate) bias: Option<Buffer<f32>>,
}

impl DenseOnGpu {
    pub(crate) fn new(gpu: &Gpu, dense: &Dense) -> Result<DenseOnGpu> {
        // nalgebra is column-major: the storage of W is Wᵀ row-major, and that of Wᵀ is W.
        Ok(DenseOnGpu {
            w: gpu.upload(&f32s(dense.weight_t.as_slice()))?,
            wt: gpu.upload(&f32s(dense.weight.as_slice()))?,
            bias: dense
                .bias
                .as_ref()
                .map(|b| gpu.upload(&f32s(b.as_slice())))
                .transpose()?,
        })
    }
    pub(crate) fn b(&self) -> u64 {
        self.bias.as_ref().map_or(0, |b| b.ptr)
    }
}

/// One interaction and mixing block on the device: weights, and the activations of the layer
/// that the backward pass needs (shared by the fused and the unfused kernels).
pub(crate) struct Layer {
    pub(crate) context1: DenseOnGpu,
    pub(crate) context2: DenseOnGpu,
    pub(crate) mix: DenseOnGpu,
    pub(crate) mix1: DenseOnGpu,
    pub(crate) mix2: DenseOnGpu,
    /// Activations of this layer (inputs of layer t are q[t], mu[t]).
    pub(crate) q_mid: Buffer<f32>,
    pub(crate) mu_mid: Buffer<f32>,
    pub(crate) x: Buffer<f32>,
    pub(crate) pre_context: Buffer<f32>,
    pub(crate) vu: Buffer<f32>,
    pub(crate) norm: Buffer<f32>,
    pub(crate) pre_mix: Buffer<f32>,
    pub(crate) a_mix: Buffer<f32>,
}

impl Layer {
    /// Interaction `t` of `model` for `n` atoms of F features.
    pub(crate) fn new(gpu: &Gpu, model: &PainnModel, t: usize, n: usize) -> Result<Layer> {
        let f = gpu.sizes.features;
        let (i, m) = (&model.interactions[t], &model.mixings[t]);
        Ok(Layer {
            context1: DenseOnGpu::new(gpu, &i.context1)?,
            context2: DenseOnGpu::new(gpu, &i.context2)?,
            mix: DenseOnGpu::new(gpu, &m.channel_mix)?,
            mix1: DenseOnGpu::new(gpu, &m.context1)?,
            mix2: DenseOnGpu::new(gpu, &m.context2)?,
            q_mid: gpu.zeros(n * f)?,
            mu_mid: gpu.zeros(n * 3 * f)?,
            x: gpu.zeros(n * 3 * f)?,
            pre_context: gpu.zeros(n * f)?,
            vu: gpu.zeros(n * 6 * f)?,
            norm: gpu.zeros(n * f)?,
            pre_mix: gpu.zeros(n * f)?,
            a_mix: gpu.zeros(n * 3 * f)?,
        })
    }
}

/// The model on the device in f32, shared by the fused and the unfused kernels: weights of
/// every layer (with the activations the backward pass keeps), filter network, radial basis,
/// readout, energy offsets, the atoms' elements, and the features q[t], μ[t] entering layer t
/// (q[T], μ[T] the final ones).
pub(crate) struct DeviceModel {
    pub(crate) n_atoms: usize,
    pub(crate) cutoff: f32,
    pub(crate) epsilon: f32,
    pub(crate) filter_offset: Vec<i32>,
    /// Per interaction, the power of two the tensor-core kernels scale its filter rows by.
    pub(crate) filter_weight_scale: Vec<f32>,
    /// The same for the radial basis (≤ 1) and its derivative (≤ max_k 1/(w_k √e) in Å⁻¹).
    pub(crate) phi_scale: f32,
    pub(crate) dphi_scale: f32,
    pub(crate) filter_w: Buffer<f32>,
    pub(crate) filter_b: Buffer<f32>,
    pub(crate) rbf_offsets: Buffer<f32>,
    pub(crate) rbf_coeffs: Buffer<f32>,
    pub(crate) readout1: DenseOnGpu,
    pub(crate) readout_w2: Buffer<f32>,
    pub(crate) readout_b2: f32,
    pub(crate) scale: f32,
    pub(crate) mean_per_atom: f32,
    pub(crate) atomref: Buffer<f32>,
    pub(crate) numbers: Buffer<i32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) q: Vec<Buffer<f32>>,
    pub(crate) mu: Vec<Buffer<f32>>,
}

impl DeviceModel {
    pub(crate) fn new(gpu: &Gpu, model: &PainnModel, numbers: &[u8]) -> Result<DeviceModel> {
        let f = gpu.sizes.features;
        let n = numbers.len();
        let t_count = model.config.n_interactions;
        let RadialBasis::Gaussian { offsets, widths } = &model.radial_basis else {
            unreachable!("checked by kernel_sizes")
        };
        let coeffs: Vec<f64> = widths.iter().map(|w| -0.5 / (w * w)).collect();
        let layers = (0..t_count)
            .map(|t| Layer::new(gpu, model, t, n))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceModel {
            n_atoms: n,
            cutoff: model.cutoff() as f32,
            epsilon: model.epsilon as f32,
            filter_offset: (0..t_count).map(|t| model.filter_offset(t) as i32).collect(),
            filter_weight_scale: (0..t_count)
                .map(|t| half_range_scale(model.filter.weight.rows(model.filter_offset(t), 3 * f).amax()))
                .collect(),
            phi_scale: half_range_scale(1.0),
            dphi_scale: half_range_scale(
                widths
                    .iter()
                    .map(|w| 1.0 / (w * std::f64::consts::E.sqrt()))
                    .fold(0.0, f64::max),
            ),
            filter_w: gpu.upload(&f32s(model.filter.weight_t.as_slice()))?,
            filter_b: gpu.upload(&f32s(
                model.filter.bias.as_ref().expect("filter_net has a bias").as_slice(),
            ))?,
            rbf_offsets: gpu.upload(&f32s(offsets))?,
            rbf_coeffs: gpu.upload(&f32s(&coeffs))?,
            readout1: DenseOnGpu::new(gpu, &model.readout1)?,
            readout_w2: gpu.upload(&f32s(model.readout2.weight.as_slice()))?,
            readout_b2: model.readout2.bias.as_ref().map_or(0.0, |b| b[0] as f32),
            scale: model.energy_scale as f32,
            mean_per_atom: model.mean_per_atom as f32,
            atomref: gpu.upload(&f32s(&model.atomref))?,
            numbers: gpu.upload(&numbers.iter().map(|&z| i32::from(z)).collect::<Vec<_>>())?,
            layers,
            q: (0..=t_count).map(|_| gpu.zeros(n * f)).collect::<Result<_>>()?,
            mu: (0..=t_count).map(|_| gpu.zeros(n * 3 * f)).collect::<Result<_>>()?,
        })
    }

    /// The filter network and radial basis as kernel parameters, at interaction `t`'s block.
    pub(crate) fn filter(&self, t: usize) -> FilterParams {
        FilterParams {
            weight: self.filter_w.ptr,
            bias: self.filter_b.ptr,
            offsets: self.rbf_offsets.ptr,
            coeffs: self.rbf_coeffs.ptr,
            offset: self.filter_offset[t],
            cutoff: self.cutoff,
            fragments: 0,
            weight_scale: self.filter_weight_scale[t],
            phi_scale: self.phi_scale,
            dphi_scale: self.dphi_scale,
            cutoff_slope: -0.5 * std::f32::consts::PI / self.cutoff,
        }
    }

    pub(crate) fn readout(&self) -> ReadoutParams {
        ReadoutParams {
            w1t: self.readout1.wt.ptr,
            b1: self.readout1.b(),
            w1: self.readout1.w.ptr,
            w2: self.readout_w2.ptr,
            b2: self.readout_b2,
            scale: self.scale,
            mean_per_atom: self.mean_per_atom,
            atomref: self.atomref.ptr,
            numbers: self.numbers.ptr,
        }
    }
}

/// Embedding and the first interaction's context network: they depend on the elements only, so
/// they run once per system (into `net.q[0]`, and layer 0's `x` and `pre_context`).
pub(crate) fn embed(gpu: &Gpu, model: &PainnModel, net: &DeviceModel) -> Result<()> {
    let sizes = gpu.sizes;
    let n = net.n_atoms;
    let embedding = gpu.upload(&f32s(model.embedding.as_slice()))?;
    let l0 = &net.layers[0];
    let embed = gpu.function("embed")?;
    unsafe {
        gpu.stream
            .launch_builder(&embed)
            .arg(&net.numbers.ptr)
            .arg(&embedding.ptr)
            .arg(&l0.context1.wt.ptr)
            .arg(&l0.context1.b())
            .arg(&l0.context2.wt.ptr)
            .arg(&l0.context2.b())
            .arg(&net.q[0].ptr)
            .arg(&l0.pre_context.ptr)
            .arg(&l0.x.ptr)
            .arg(&(n as i32))
            .launch(block_per_item(sizes.dense_blocks(n), sizes.dense_threads()))
            .map_err(|e| anyhow::anyhow!("embed: {e:?}"))?;
    }
    gpu.synchronize()
}

/// Per interaction, the filter rows split into the half-precision fragments the tensor-core
/// message kernels hold in registers (kernels/message_mma.cu, `message_mma_pack`), once per system.
fn pack_filter_fragments(gpu: &Gpu, net: &DeviceModel) -> Result<Vec<Buffer<u32>>> {
    let sizes = gpu.sizes;
    let groups = sizes.features / 16;
    // 3 parts × 2 rows × (hi, lo) × ⌈K / 8⌉ words per lane, 32 lanes per group.
    let words = groups * 32 * 12 * sizes.rbf.div_ceil(8);
    let pack = gpu.function("message_mma_pack")?;
    (0..net.layers.len())
        .map(|t| {
            let fragments = gpu.zeros::<u32>(words)?;
            let filter = net.filter(t);
            unsafe {
                gpu.stream
                    .launch_builder(&pack)
                    .arg(&filter)
                    .arg(&fragments.ptr)
                    .launch(block_per_item(groups, 32))
                    .map_err(|e| anyhow::anyhow!("message_mma_pack: {e:?}"))?;
            }
            Ok(fragments)
        })
        .collect()
}

/// Where the tensor-core message kernels keep an evaluation's pairs within the cutoff
/// (kernels/message_mma.cu, `PairRecord`): per atom a row of the neighbor capacity rounded up to
/// whole 8-pair tiles.
struct PairRecord {
    count: Buffer<i32>,
    pair: Buffer<i32>,
    r_inv: Buffer<f32>,
    r_d: Buffer<f32>,
    cut: Buffer<f32>,
    basis: Buffer<u32>,
    stride: usize,
}

impl PairRecord {
    /// For `n_atoms` rows of `pair_capacity` neighbors, where `sizes` asks for one.
    fn new(gpu: &Gpu, sizes: &KernelSizes, n_atoms: usize, pair_capacity: usize) -> Result<Option<PairRecord>> {
        if !(sizes.pair_record && sizes.message_mma) {
            return Ok(None);
        }
        let stride = pair_capacity.max(1).next_multiple_of(8);
        let pairs = n_atoms * stride;
        // Four rows (Φ and ∂Φ/∂d, hi and lo halves) of the basis padded to the mma's k
        // granularity of 8, two halves to a word (K_WORDS in the kernel).
        let words_per_row = sizes.rbf.next_multiple_of(8) / 2;
        Ok(Some(PairRecord {
            count: gpu.zeros(n_atoms)?,
            pair: gpu.zeros(2 * pairs)?,
            r_inv: gpu.zeros(4 * pairs)?,
            r_d: gpu.zeros(4 * pairs)?,
            cut: gpu.zeros(2 * pairs)?,
            basis: gpu.zeros(4 * words_per_row * pairs)?,
            stride,
        }))
    }

    fn params(&self) -> PairRecordParams {
        PairRecordParams {
            count: self.count.ptr,
            pair: self.pair.ptr,
            r_inv: self.r_inv.ptr,
            r_d: self.r_d.ptr,
            cut: self.cut.ptr,
            basis: self.basis.ptr,
            stride: self.stride as i32,
        }
    }
}

pub struct GpuPainn {
    pub sizes: KernelSizes,
    net: DeviceModel,
    pub atom_energy: Buffer<f32>,
    grad_q: [Buffer<f32>; 2],
    grad_mu: [Buffer<f32>; 2],
    grad_x: Buffer<f32>,
    pair_grad: Buffer<f32>,
    pub forces: Buffer<f32>,
    /// Per interaction, the filter rows as the tensor-core message kernels' fragments (empty
    /// for the scalar kernels).
    filter_fragments: Vec<Buffer<u32>>,
    /// The evaluation's pairs within the cutoff, written by its first message kernel for the
    /// others (`KernelSizes::pair_record`; None without it).
    pair_record: Option<PairRecord>,
    /// The last interaction's update network, second layer, without its a_vv third: what
    /// mixing_forward_last reads with `KernelSizes::last_without_a_vv` (kernels/painn.cu,
    /// UPDATE_PARTS; perf-notes v68), None without it.
    last_update: Option<DenseOnGpu>,
    first_message_forward: CudaFunction,
    message_forward: CudaFunction,
    mixing_forward: CudaFunction,
    mixing_forward_last: CudaFunction,
    mixing_backward: CudaFunction,
    message_backward: CudaFunction,
    first_message_backward: CudaFunction,
    pair_forces: CudaFunction,
    pair_forces_and_second_half: CudaFunction,
    pair_forces_kick_and_first_half: CudaFunction,
}

/// What an MD step's closing half kick needs, where the fused kernels give it in their last
/// launch (`pair_forces_and_second_half`, perf-notes v49): the velocities (Å/fs), the integrator
/// and the step counter it advances.
pub struct ClosingKick<'a> {
    pub velocities: &'a Buffer<f64>,
    pub integration: &'a IntegrationParams,
    pub step: &'a Buffer<u64>,
    /// Inside a graph of several steps, the next step's first half (and the evaluation's
    /// neighbor list's one-block rebuild) in the same launch (`pair_forces_kick_and_first_half`,
    /// perf-notes v63).
    pub then_first_half: bool,
}

/// Most atoms for which the fused kernels' last launch also takes the next step's first half
/// (one block, a warp per atom: the kernel takes up to 32). Measured on the H200 (perf-notes
/// v63): −0.4 µs per MD step at 9 atoms, −0.5 at 12, +0.2 at 22 (the forces of 22 atoms on one
/// SM instead of six).
pub const JOINED_STEP_MAX_ATOMS: usize = 16;

/// An update network's second layer (outputs a_ss, a_vv, a_sv of F each) without a_vv, the last
/// interaction's as mixing_forward_last takes it: ∂E/∂μ at the last mixing's output is 0, which
/// makes the a_vv third's every use a product with zeros (kernels/painn.cu, UPDATE_PARTS). Without
/// the bias: the kernel reads the whole layer's.
fn without_a_vv(update: &Dense, f: usize) -> Dense {
    let rows: Vec<usize> = (0..f).chain(2 * f..3 * f).collect();
    Dense::new(update.weight.select_rows(rows.iter()), None)
}

/// The kernel sizes a model needs, or why the GPU path cannot run it.
pub fn kernel_sizes(model: &PainnModel, n_atoms: usize) -> Result<KernelSizes> {
    let f = model.config.n_atom_basis;
    let h = model.readout1.n_out();
    let sizes = KernelSizes::for_system(f, model.config.n_rbf, h, n_atoms);
    // Blocks of split·F threads; past 512 the dense kernels run out of registers per block.
    if !f.is_multiple_of(32) || sizes.split * f > 512 {
        bail!("the GPU path needs n_atom_basis a multiple of 32 with n_atom_basis × {} ≤ 512 (set MDRUN_DENSE_SPLIT=2 for up to 256), the model has {f}", sizes.split);
    }
    if h > f {
        bail!("the GPU path needs the readout hidden width ({h}) to be at most n_atom_basis ({f})");
    }
    if model.config.n_rbf > 64 {
        bail!(
            "the GPU path supports up to 64 radial functions, the model has {}",
            model.config.n_rbf
        );
    }
    if !matches!(model.radial_basis, RadialBasis::Gaussian { .. }) {
        bail!("the GPU path supports the Gaussian radial basis only; run this model with device = \"cpu\"");
    }
    Ok(sizes)
}

impl GpuPainn {
    pub fn new(gpu: &Gpu, model: &PainnModel, numbers: &[u8], pair_capacity: usize) -> Result<GpuPainn> {
        let sizes = gpu.sizes;
        let f = sizes.features;
        let n = numbers.len();
        let kernels = sizes.message_kernels();
        let mut painn = GpuPainn {
            sizes,
            net: DeviceModel::new(gpu, model, numbers)?,
            atom_energy: gpu.zeros(n)?,
            grad_q: [gpu.zeros(n * f)?, gpu.zeros(n * f)?],
            grad_mu: [gpu.zeros(n * 3 * f)?, gpu.zeros(n * 3 * f)?],
            grad_x: gpu.zeros(n * 3 * f)?,
            pair_grad: gpu.zeros(4 * n * pair_capacity * sizes.channel_slices)?,
            forces: gpu.zeros(3 * n)?,
            filter_fragments: Vec::new(),
            pair_record: PairRecord::new(gpu, &sizes, n, pair_capacity)?,
            last_update: sizes
                .last_without_a_vv
                .then(|| DenseOnGpu::new(gpu, &without_a_vv(&model.mixings[model.mixings.len() - 1].context2, f)))
                .transpose()?,
            first_message_forward: gpu.function(kernels.first_forward)?,
            message_forward: gpu.function(kernels.forward)?,
            mixing_forward: gpu.function("mixing_forward")?,
            mixing_forward_last: gpu.function("mixing_forward_last")?,
            mixing_backward: gpu.function("mixing_backward")?,
            message_backward: gpu.function(kernels.backward)?,
            first_message_backward: gpu.function(kernels.first_backward)?,
            pair_forces: gpu.function("pair_forces")?,
            pair_forces_and_second_half: gpu.function("pair_forces_and_second_half")?,
            pair_forces_kick_and_first_half: gpu.function("pair_forces_kick_and_first_half")?,
        };
        embed(gpu, model, &painn.net)?;
        if sizes.message_mma {
            painn.filter_fragments = pack_filter_fragments(gpu, &painn.net)?;
        }
        Ok(painn)
    }

    /// The filter network at interaction `t`, with the fragments where the kernels take them.
    fn filter(&self, t: usize) -> FilterParams {
        FilterParams {
            fragments: self.filter_fragments.get(t).map_or(0, |b| b.ptr),
            ..self.net.filter(t)
        }
    }

    /// ∂E/∂q at interaction `t`'s output alternates between the two buffers: mixing_backward
    /// reads the next interaction's and must not write over it (the blocks of a cluster write
    /// the same atoms).
    fn grad_q_at(&self, t: usize) -> &Buffer<f32> {
        &self.grad_q[(self.net.layers.len() - t) % 2]
    }

    /// Interaction `t`'s update network, second layer, as its mixing kernels read it: the last
    /// one's without a_vv where `last_update` holds it.
    fn update_second(&self, t: usize) -> &DenseOnGpu {
        match &self.last_update {
            Some(update) if t + 1 == self.net.layers.len() => update,
            _ => &self.net.layers[t].mix2,
        }
    }

    /// Interaction `t`'s mixing weights as its backward reads them.
    fn mixing_back(&self, t: usize) -> MixingBackParams {
        let layer = &self.net.layers[t];
        MixingBackParams {
            mix: layer.mix.w.ptr,
            a1: layer.mix1.w.ptr,
            a2: self.update_second(t).w.ptr,
        }
    }

    /// What interaction `t`'s mixing forward writes for its backward, and the backward reads.
    fn mixing_cache(&self, t: usize) -> MixingCacheParams {
        let layer = &self.net.layers[t];
        MixingCacheParams {
            vu: layer.vu.ptr,
            norm: layer.norm.ptr,
            pre: layer.pre_mix.ptr,
            a: layer.a_mix.ptr,
        }
    }

    /// Grows the per-pair buffer to a new neighbor capacity.
    pub fn resize_pairs(&mut self, gpu: &Gpu, capacity: usize) -> Result<()> {
        self.pair_grad = gpu.zeros(4 * self.net.n_atoms * capacity * self.sizes.channel_slices)?;
        self.pair_record = PairRecord::new(gpu, &self.sizes, self.net.n_atoms, capacity)?;
        Ok(())
    }

    /// Launches the whole evaluation: per-atom energies into `atom_energy`, forces into `forces`.
    pub fn enqueue(&mut self, gpu: &Gpu, positions: &Buffer<f64>, neighbors: &GpuNeighbors) -> Result<()> {
        self.enqueue_with(gpu, positions, neighbors, None)
    }

    /// The evaluation, then with `kick` the MD step's closing half kick in the same last launch.
    pub fn enqueue_with(
        &mut self,
        gpu: &Gpu,
        positions: &Buffer<f64>,
        neighbors: &GpuNeighbors,
        kick: Option<&ClosingKick>,
    ) -> Result<()> {
        let n = self.net.n_atoms;
        let t_count = self.net.layers.len();
        let per_atom = block_per_item(self.sizes.message_blocks(n), self.sizes.message_threads());
        let per_atom_dense = block_per_item(self.sizes.dense_blocks(n), self.sizes.dense_threads());
        let n_atoms = n as i32;
        let nb = neighbors.params();
        let cell = neighbors.cell;
        let err = |what: &'static str| move |e: cudarc::driver::DriverError| anyhow::anyhow!("{what}: {e:?}");
        let readout = self.net.readout();
        let null = 0u64;
        let record = self.pair_record.as_ref().map(PairRecord::params);
        for t in 0..t_count {
            let layer = &self.net.layers[t];
            let filter = self.filter(t);
            let kernel = if t == 0 {
                &self.first_message_forward
            } else {
                &self.message_forward
            };
            unsafe {
                let launch = gpu
                    .launch(kernel)
                    .arg(&positions.ptr)
                    .arg(&cell)
                    .arg(&nb)
                    .arg(&filter)
                    .arg(&self.net.q[t].ptr)
                    .arg(&self.net.mu[t].ptr)
                    .arg(&layer.x.ptr)
                    .arg(&layer.q_mid.ptr)
                    .arg(&layer.mu_mid.ptr)
                    .arg(if t == 0 { &self.pair_grad.ptr } else { &null });
                match &record {
                    Some(record) => launch.arg(record).launch(per_atom),
                    None => launch.launch(per_atom),
                }
                .map_err(err("message_forward"))?;
            }
            let mixing = MixingParams {
                mix_t: layer.mix.wt.ptr,
                a1t: layer.mix1.wt.ptr,
                b1: layer.mix1.b(),
                a2t: self.update_second(t).wt.ptr,
                b2: layer.mix2.b(),
                epsilon: self.net.epsilon,
            };
            match self.net.layers.get(t + 1) {
                Some(next) => {
                    let next = NextLayerParams {
                        w1t: next.context1.wt.ptr,
                        b1: next.context1.b(),
                        w2t: next.context2.wt.ptr,
                        b2: next.context2.b(),
                        pre: next.pre_context.ptr,
                        x: next.x.ptr,
                        q_out: self.net.q[t + 1].ptr,
                        mu_out: self.net.mu[t + 1].ptr,
                    };
                    unsafe {
                        gpu.launch(&self.mixing_forward)
                            .arg(&layer.q_mid.ptr)
                            .arg(&layer.mu_mid.ptr)
                            .arg(&mixing)
                            .arg(&self.mixing_cache(t))
                            .arg(&next)
                            .arg(&n_atoms)
                            .launch(per_atom_dense)
                            .map_err(err("mixing_forward"))?;
                    }
                }
                None => {
                    // The readout, the energies and the last layer's mixing backward in one
                    // kernel (perf-notes v55): ∂E/∂(q, μ) at its mixing input.
                    let last = LastLayerParams {
                        readout,
                        atom_energy: self.atom_energy.ptr,
                        back: self.mixing_back(t),
                        grad_q_in: self.grad_q_at(t).ptr,
                        grad_mu_in: self.grad_mu[1].ptr,
                    };
                    unsafe {
                        gpu.launch(&self.mixing_forward_last)
                            .arg(&layer.q_mid.ptr)
                            .arg(&layer.mu_mid.ptr)
                            .arg(&mixing)
                            .arg(&last)
                            .arg(&n_atoms)
                            .launch(per_atom_dense)
                            .map_err(err("mixing_forward_last"))?;
                    }
                }
            }
        }
        for t in (0..t_count).rev() {
            let layer = &self.net.layers[t];
            let filter = self.filter(t);
            // Below the last interaction (whose mixing backward ran in mixing_forward_last), the
            // mixing backward with the next interaction's context-network backward first
            // (perf-notes v38).
            if let Some(next) = self.net.layers.get(t + 1) {
                let next_context = ContextBackParams {
                    w1: next.context1.w.ptr,
                    w2: next.context2.w.ptr,
                    pre: next.pre_context.ptr,
                    grad_x: self.grad_x.ptr,
                    grad_q: self.grad_q_at(t + 1).ptr,
                };
                unsafe {
                    // ∂μ at the next interaction's input ([0], from its message backward) and ∂q
                    // through its context network → (∂q, ∂μ) at this interaction's output.
                    gpu.launch(&self.mixing_backward)
                        .arg(&self.mixing_back(t))
                        .arg(&self.mixing_cache(t))
                        .arg(&next_context)
                        .arg(&self.grad_mu[0].ptr)
                        .arg(&self.grad_q_at(t).ptr)
                        .arg(&self.grad_mu[1].ptr)
                        .arg(&n_atoms)
                        .launch(per_atom_dense)
                        .map_err(err("mixing_backward"))?;
                }
            }
            unsafe {
                // Through the messages: ∂μ at the layer input → [0]; ∂x and the pair gradients.
                let kernel = if t == 0 {
                    &self.first_message_backward
                } else {
                    &self.message_backward
                };
                let launch = gpu
                    .launch(kernel)
                    .arg(&positions.ptr)
                    .arg(&cell)
                    .arg(&nb)
                    .arg(&filter)
                    .arg(&self.net.mu[t].ptr)
                    .arg(&layer.x.ptr)
                    .arg(&self.grad_q_at(t).ptr)
                    .arg(&self.grad_mu[1].ptr)
                    .arg(&self.grad_x.ptr)
                    .arg(&self.grad_mu[0].ptr)
                    .arg(&self.pair_grad.ptr);
                match &record {
                    Some(record) => launch.arg(record).launch(per_atom),
                    None => launch.launch(per_atom),
                }
                .map_err(err("message_backward"))?;
                // The first layer's q is the embedding: no context backward below it.
            }
        }
        let then_first_half = kick.is_some_and(|k| k.then_first_half);
        let kernel = match kick {
            Some(_) if then_first_half => &self.pair_forces_kick_and_first_half,
            Some(_) => &self.pair_forces_and_second_half,
            None => &self.pair_forces,
        };
        let launch = gpu
            .launch(kernel)
            .arg(&positions.ptr)
            .arg(&cell)
            .arg(&nb)
            .arg(&self.net.cutoff)
            .arg(&self.pair_grad.ptr)
            .arg(&self.forces.ptr)
            .arg(&n_atoms);
        let launch = match kick {
            Some(kick) => launch
                .arg(&kick.velocities.ptr)
                .arg(kick.integration)
                .arg(&kick.step.ptr),
            None => launch,
        };
        let (launch, grid) = if then_first_half {
            debug_assert!(n <= JOINED_STEP_MAX_ATOMS && neighbors.rebuilds_in_first_half());
            (
                neighbors.push_one_block_rebuild_args(launch),
                block_per_item(1, 32 * n as u32),
            )
        } else {
            (launch, grid_for(32 * n, 128))
        };
        unsafe { launch.launch(grid) }.map_err(err("pair_forces"))?;
        Ok(())
    }
}
