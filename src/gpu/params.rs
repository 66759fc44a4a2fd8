//! Kernel parameter structs, laid out exactly as their counterparts in `kernels/*.cu`
//! (`#[repr(C)]`, device pointers as u64).

use cudarc::driver::DeviceRepr;

use crate::cell::Cell;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CellParams {
    pub v: [[f64; 3]; 3],
    pub inv: [[f64; 3]; 3],
    pub periodic: i32,
}

impl CellParams {
    pub fn new(cell: Option<&Cell>) -> CellParams {
        match cell {
            None => CellParams::default(),
            Some(cell) => {
                let mut inv = [[0.0; 3]; 3];
                // Row b of the inverse: fractional coordinates of the unit vectors.
                for (axis, row) in inv.iter_mut().enumerate() {
                    let mut e = [0.0; 3];
                    e[axis] = 1.0;
                    *row = cell.to_fractional(&e);
                }
                CellParams {
                    v: cell.vectors(),
                    inv,
                    periodic: 1,
                }
            }
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FilterParams {
    pub weight: u64,
    pub bias: u64,
    pub offsets: u64,
    pub coeffs: u64,
    pub offset: i32,
    pub cutoff: f32,
    /// The filter rows as the tensor-core message kernels' fragments (`message_mma_pack`), or 0.
    pub fragments: u64,
    /// Exact powers of two applied to the weights, the basis and its derivative before the
    /// tensor-core kernels split them into halves (largest magnitude near 2¹⁴: both halves normal).
    pub weight_scale: f32,
    pub phi_scale: f32,
    pub dphi_scale: f32,
    /// −π / (2 r_c) (Å⁻¹), the cosine cutoff's ∂f_c/∂d = cutoff_slope · sin(π d / r_c), in the same
    /// f32 operations as the kernels' `cosine_cutoff_slope` (computed there, its division's slow
    /// path sat at the message kernels' start: perf-notes v52).
    pub cutoff_slope: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NeighborParams {
    pub count: u64,
    pub j: u64,
    pub image: u64,
    pub reverse: u64,
    pub capacity: i32,
}

/// An evaluation's pairs within the cutoff as its first tensor-core message kernel records them
/// for the other five (kernels/message_mma.cu, `PairRecord`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PairRecordParams {
    pub count: u64,
    pub pair: u64,
    pub r_inv: u64,
    pub r_d: u64,
    pub cut: u64,
    pub basis: u64,
    pub stride: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MixingParams {
    pub mix_t: u64,
    pub a1t: u64,
    pub b1: u64,
    pub a2t: u64,
    pub b2: u64,
    pub epsilon: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MixingCacheParams {
    pub vu: u64,
    pub norm: u64,
    pub pre: u64,
    pub a: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ReadoutParams {
    pub w1t: u64,
    pub b1: u64,
    pub w1: u64,
    pub w2: u64,
    pub b2: f32,
    pub scale: f32,
    pub mean_per_atom: f32,
    pub atomref: u64,
    pub numbers: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MixingBackParams {
    pub mix: u64,
    pub a1: u64,
    pub a2: u64,
}

/// What the last layer's mixing kernel does after the mixing (kernels/painn.cu `LastLayer`): the
/// readout, the atoms' energies and the whole mixing backward (perf-notes v55).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LastLayerParams {
    pub readout: ReadoutParams,
    pub atom_energy: u64,
    pub back: MixingBackParams,
    pub grad_q_in: u64,
    pub grad_mu_in: u64,
}

/// What a lower layer's mixing kernel does after the mixing (kernels/painn.cu `NextLayer`): the
/// next interaction's context network, and the layer's output q, μ.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NextLayerParams {
    pub w1t: u64,
    pub b1: u64,
    pub w2t: u64,
    pub b2: u64,
    pub pre: u64,
    pub x: u64,
    pub q_out: u64,
    pub mu_out: u64,
}

/// The next interaction's context-network backward, fused into mixing_backward (kernels/painn.cu
/// `ContextBack`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ContextBackParams {
    pub w1: u64,
    pub w2: u64,
    pub pre: u64,
    pub grad_x: u64,
    pub grad_q: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RebuildParams {
    pub step: u64,
    pub rebuild_step: u64,
    pub overflow: u64,
}

/// `DisplacementCheck` (kernels/integrate.cu): the Verlet list's displacement check, done by
/// the first integrator half (`reference` 0: no list).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DisplacementCheckParams {
    pub reference: u64,
    pub rebuild_step: u64,
    pub half_skin2: f32,
    pub pad: i32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Int3 {
    pub x: i32,
    pub y: i32,
    pub z: i32,
}

/// `Integration` (kernels/integrate.cu): the integrator's per-atom arrays and constants.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IntegrationParams {
    pub inv_mass: u64,
    pub half_mass: u64,
    pub thermal_sigma: u64,
    pub heat: u64,
    pub seed: u64,
    pub dt: f32,
    pub damping: f32,
    pub noise: f32,
    pub langevin: i32,
}

/// `ClusterMd` (kernels/painn_cluster.cu): the MD step fused into the one-cluster kernel
/// (`integrate` 0: one evaluation, the pointers unused).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterMdParams {
    pub integration: IntegrationParams,
    pub velocities: u64,
    pub step_counter: u64,
    pub integrate: i32,
    pub pad: i32,
}

// Safety: plain-old-data with the C layout of the kernels' structs.
unsafe impl DeviceRepr for IntegrationParams {}
unsafe impl DeviceRepr for ClusterMdParams {}
unsafe impl DeviceRepr for CellParams {}
unsafe impl DeviceRepr for FilterParams {}
unsafe impl DeviceRepr for NeighborParams {}
unsafe impl DeviceRepr for PairRecordParams {}
unsafe impl DeviceRepr for MixingParams {}
unsafe impl DeviceRepr for MixingCacheParams {}
unsafe impl DeviceRepr for ReadoutParams {}
unsafe impl DeviceRepr for MixingBackParams {}
unsafe impl DeviceRepr for ContextBackParams {}
unsafe impl DeviceRepr for LastLayerParams {}
unsafe impl DeviceRepr for NextLayerParams {}
unsafe impl DeviceRepr for RebuildParams {}
unsafe impl DeviceRepr for DisplacementCheckParams {}
unsafe impl DeviceRepr for Int3 {}
unsafe impl cudarc::driver::ValidAsZeroBits for Int3 {}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BinsParams {
    pub n: Int3,
    pub reach: Int3,
    pub count: u64,
    pub start: u64,
    pub atoms: u64,
    pub atom_bin: u64,
}

unsafe impl DeviceRepr for BinsParams {}
