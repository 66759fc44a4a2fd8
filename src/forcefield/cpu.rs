//! The f64 reference PaiNN: energy and analytic forces, exactly as schnetpack 2.x computes them.
//!
//! Per-atom features are matrices with one column per atom ([F, N], column-major, so an atom's
//! features are contiguous); dense layers run as matrix products over all atoms or pairs at once.
//! Forces come from a hand-written reverse pass over the same quantities; every intermediate the
//! reverse pass needs is kept from the forward pass.

use nalgebra::DMatrix;

use crate::cell::Vec3;
use crate::model::{PainnModel, RadialBasis};
use crate::neighbors::PairList;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

fn silu_derivative(x: f64) -> f64 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// Contiguous features of atom (column) `i`.
fn col(m: &DMatrix<f64>, i: usize) -> &[f64] {
    let rows = m.nrows();
    &m.as_slice()[i * rows..(i + 1) * rows]
}

fn col_mut(m: &mut DMatrix<f64>, i: usize) -> &mut [f64] {
    let rows = m.nrows();
    &mut m.as_mut_slice()[i * rows..(i + 1) * rows]
}

type Vectorial = [DMatrix<f64>; 3];

fn zeros3(rows: usize, cols: usize) -> Vectorial {
    [
        DMatrix::zeros(rows, cols),
        DMatrix::zeros(rows, cols),
        DMatrix::zeros(rows, cols),
    ]
}

/// Geometry and radial terms of every pair.
struct PairTerms {
    distance: Vec<f64>,
    unit: Vec<Vec3>,
    cutoff: Vec<f64>,
    cutoff_derivative: Vec<f64>,
    basis_derivative: DMatrix<f64>,
    /// filter_net(φ(d)) before the cutoff is applied: [filter rows, P]. The filter of a pair is
    /// this column times `cutoff[pair]`, applied where it is used: the matrix is the largest
    /// thing in the evaluation, and one copy of it is enough.
    filter_raw: DMatrix<f64>,
}

impl PairTerms {
    /// Filter w_ij = filter_net(φ) · f_cut of `pair`, rows of interaction block `offset`.
    fn filter_into(&self, pair: usize, offset: usize, out: &mut [f64]) {
        let raw = &col(&self.filter_raw, pair)[offset..offset + out.len()];
        let fc = self.cutoff[pair];
        for (o, r) in out.iter_mut().zip(raw) {
            *o = r * fc;
        }
    }
}

struct InteractionCache {
    mu_in: Vectorial,
    context_pre: DMatrix<f64>,
    context: DMatrix<f64>,
}

struct MixingCache {
    /// Channel-mixed μ per Cartesian row: [2F, N], rows 0..F are V, F..2F are U.
    mixed: Vectorial,
    norm: DMatrix<f64>,
    context_pre: DMatrix<f64>,
    context: DMatrix<f64>,
    v_dot_u: DMatrix<f64>,
}

/// Energy (eV) and forces (eV/Å) of one configuration.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub energy: f64,
    pub forces: Vec<Vec3>,
}

/// Buffers for the per-pair filter matrices ([T·3F, P]: by far the largest objects), kept
/// between evaluations so that an MD step does not allocate and page-fault them anew.
#[derive(Debug, Default)]
pub struct Workspace {
    filter_raw: Vec<f64>,
    grad_filter: Vec<f64>,
}

/// A zeroed `rows × cols` matrix on the storage of `buffer` (reused when large enough).
fn matrix_on(buffer: &mut Vec<f64>, rows: usize, cols: usize) -> DMatrix<f64> {
    let mut storage = std::mem::take(buffer);
    storage.clear();
    storage.resize(rows * cols, 0.0);
    DMatrix::from_vec(rows, cols, storage)
}

/// Evaluates the model for atoms `numbers` with the directed pair list `pairs` (both i→j and
/// j→i, r_ij = R_j − R_i + shift). Pairs at or beyond the cutoff contribute exactly nothing.
pub fn evaluate(model: &PainnModel, numbers: &[u8], pairs: &PairList) -> Evaluation {
    evaluate_in(&mut Workspace::default(), model, numbers, pairs)
}

/// `evaluate`, with the large buffers taken from and returned to `workspace`.
pub fn evaluate_in(workspace: &mut Workspace, model: &PainnModel, numbers: &[u8], pairs: &PairList) -> Evaluation {
    let n = numbers.len();
    let f = model.config.n_atom_basis;
    let terms = pair_terms(
        model,
        pairs,
        matrix_on(&mut workspace.filter_raw, model.filter.n_out(), pairs.len()),
    );

    // Forward.
    let mut q = DMatrix::from_fn(f, n, |row, atom| model.embedding[(row, usize::from(numbers[atom]))]);
    let mut mu = zeros3(f, n);
    let mut interaction_caches = Vec::with_capacity(model.config.n_interactions);
    let mut mixing_caches = Vec::with_capacity(model.config.n_interactions);
    for t in 0..model.config.n_interactions {
        interaction_caches.push(interaction_forward(model, t, pairs, &terms, &mut q, &mut mu));
        mixing_caches.push(mixing_forward(model, t, &mut q, &mut mu));
    }
    let readout_pre = model.readout1.forward(&q);
    let atomwise = model.readout2.forward(&readout_pre.map(silu));
    let mut energy = model.energy_scale * atomwise.sum() + model.mean_per_atom * n as f64;
    energy += numbers.iter().map(|&z| model.atomref[usize::from(z)]).sum::<f64>();

    // Reverse: gradients of E with respect to q, μ, the filters and the pair unit vectors.
    let grad_atomwise = DMatrix::from_element(1, n, model.energy_scale);
    let grad_hidden = model
        .readout2
        .backward(&grad_atomwise)
        .component_mul(&readout_pre.map(silu_derivative));
    let mut grad_q = model.readout1.backward(&grad_hidden);
    let mut grad_mu = zeros3(f, n);
    let mut grad_filter = matrix_on(&mut workspace.grad_filter, terms.filter_raw.nrows(), pairs.len());
    let mut grad_unit = vec![[0.0; 3]; pairs.len()];
    for t in (0..model.config.n_interactions).rev() {
        mixing_backward(model, t, &mixing_caches[t], &mut grad_q, &mut grad_mu);
        interaction_backward(
            model,
            t,
            pairs,
            &terms,
            &interaction_caches[t],
            &mut grad_q,
            &mut grad_mu,
            &mut grad_filter,
            &mut grad_unit,
        );
    }
    let forces = pair_forces(model, n, pairs, &terms, &mut grad_filter, &grad_unit);
    workspace.grad_filter = grad_filter.data.into();
    workspace.filter_raw = terms.filter_raw.data.into();
    Evaluation { energy, forces }
}

fn pair_terms(model: &PainnModel, pairs: &PairList, mut filter_raw: DMatrix<f64>) -> PairTerms {
    let p = pairs.len();
    let k = model.config.n_rbf;
    let c = model.cutoff();
    let mut distance = Vec::with_capacity(p);
    let mut unit = Vec::with_capacity(p);
    let mut cutoff = Vec::with_capacity(p);
    let mut cutoff_derivative = Vec::with_capacity(p);
    let mut basis = DMatrix::zeros(k, p);
    let mut basis_derivative = DMatrix::zeros(k, p);
    for (pair, r) in pairs.vectors.iter().enumerate() {
        let d = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
        distance.push(d);
        unit.push([r[0] / d, r[1] / d, r[2] / d]);
        if d < c {
            let x = std::f64::consts::PI * d / c;
            cutoff.push(0.5 * (x.cos() + 1.0));
            cutoff_derivative.push(-0.5 * std::f64::consts::PI / c * x.sin());
        } else {
            cutoff.push(0.0);
            cutoff_derivative.push(0.0);
        }
        let phi = col_mut(&mut basis, pair);
        let dphi = &mut basis_derivative.as_mut_slice()[pair * k..(pair + 1) * k];
        match &model.radial_basis {
            RadialBasis::Gaussian { offsets, widths } => {
                for b in 0..k {
                    let coeff = -0.5 / (widths[b] * widths[b]);
                    let diff = d - offsets[b];
                    phi[b] = (coeff * diff * diff).exp();
                    dphi[b] = phi[b] * 2.0 * coeff * diff;
                }
            }
            RadialBasis::Bessel { freqs } => {
                for b in 0..k {
                    let (s, co) = (freqs[b] * d).sin_cos();
                    phi[b] = s / d;
                    dphi[b] = (freqs[b] * co * d - s) / (d * d);
                }
            }
        }
    }
    model.filter.forward_into(&basis, &mut filter_raw);
    PairTerms {
        distance,
        unit,
        cutoff,
        cutoff_derivative,
        basis_derivative,
        filter_raw,
    }
}

fn interaction_forward(
    model: &PainnModel,
    t: usize,
    pairs: &PairList,
    terms: &PairTerms,
    q: &mut DMatrix<f64>,
    mu: &mut Vectorial,
) -> InteractionCache {
    let f = model.config.n_atom_basis;
    let layer = &model.interactions[t];
    let offset = model.filter_offset(t);
    let context_pre = layer.context1.forward(q);
    let context = layer.context2.forward(&context_pre.map(silu));
    let n = q.ncols();
    let mut dq = DMatrix::zeros(f, n);
    let mut dmu = zeros3(f, n);
    let mut w = vec![0.0; 3 * f];
    for pair in 0..pairs.len() {
        let (i, j) = (pairs.first[pair], pairs.second[pair]);
        terms.filter_into(pair, offset, &mut w);
        let xj = col(&context, j);
        for (acc, (wc, xc)) in col_mut(&mut dq, i).iter_mut().zip(w[..f].iter().zip(&xj[..f])) {
            *acc += wc * xc;
        }
        for k in 0..3 {
            let u = terms.unit[pair][k];
            let mu_j = col(&mu[k], j);
            let out = col_mut(&mut dmu[k], i);
            for c in 0..f {
                out[c] += w[f + c] * xj[f + c] * u + w[2 * f + c] * xj[2 * f + c] * mu_j[c];
            }
        }
    }
    let mu_in = mu.clone();
    *q += dq;
    for k in 0..3 {
        mu[k] += &dmu[k];
    }
    InteractionCache {
        mu_in,
        context_pre,
        context,
    }
}

#[allow(clippy::too_many_arguments)]
fn interaction_backward(
    model: &PainnModel,
    t: usize,
    pairs: &PairList,
    terms: &PairTerms,
    cache: &InteractionCache,
    grad_q: &mut DMatrix<f64>,
    grad_mu: &mut Vectorial,
    grad_filter: &mut DMatrix<f64>,
    grad_unit: &mut [Vec3],
) {
    let f = model.config.n_atom_basis;
    let layer = &model.interactions[t];
    let offset = model.filter_offset(t);
    let n = grad_q.ncols();
    let mut grad_context = DMatrix::zeros(3 * f, n);
    // μ_out = μ_in + Σ messages: the gradient reaches μ_in directly and through v ⊙ μ_j.
    let mut grad_mu_in = grad_mu.clone();
    let mut grad_message = vec![0.0; 3 * f];
    let mut w = vec![0.0; 3 * f];
    for pair in 0..pairs.len() {
        let (i, j) = (pairs.first[pair], pairs.second[pair]);
        let u = terms.unit[pair];
        terms.filter_into(pair, offset, &mut w);
        let xj = col(&cache.context, j);
        let gmu_i = [col(&grad_mu[0], i), col(&grad_mu[1], i), col(&grad_mu[2], i)];
        let mu_j = [
            col(&cache.mu_in[0], j),
            col(&cache.mu_in[1], j),
            col(&cache.mu_in[2], j),
        ];
        // Message m = w ⊙ x_j split into (s, R, v): their gradients, in that order.
        grad_message[..f].copy_from_slice(col(grad_q, i));
        for c in 0..f {
            grad_message[f + c] = gmu_i[0][c] * u[0] + gmu_i[1][c] * u[1] + gmu_i[2][c] * u[2];
            grad_message[2 * f + c] = gmu_i[0][c] * mu_j[0][c] + gmu_i[1][c] * mu_j[1][c] + gmu_i[2][c] * mu_j[2][c];
        }
        for k in 0..3 {
            let radial = w[f..2 * f].iter().zip(&xj[f..2 * f]);
            grad_unit[pair][k] += gmu_i[k]
                .iter()
                .zip(radial)
                .map(|(g, (wc, xc))| g * wc * xc)
                .sum::<f64>();
            let out = col_mut(&mut grad_mu_in[k], j);
            for c in 0..f {
                out[c] += gmu_i[k][c] * w[2 * f + c] * xj[2 * f + c];
            }
        }
        let gw = &mut col_mut(grad_filter, pair)[offset..offset + 3 * f];
        for r in 0..3 * f {
            gw[r] += grad_message[r] * xj[r];
        }
        let gx = col_mut(&mut grad_context, j);
        for r in 0..3 * f {
            gx[r] += grad_message[r] * w[r];
        }
    }
    *grad_mu = grad_mu_in;
    let grad_pre = layer
        .context2
        .backward(&grad_context)
        .component_mul(&cache.context_pre.map(silu_derivative));
    *grad_q += layer.context1.backward(&grad_pre);
}

fn mixing_forward(model: &PainnModel, t: usize, q: &mut DMatrix<f64>, mu: &mut Vectorial) -> MixingCache {
    let f = model.config.n_atom_basis;
    let n = q.ncols();
    let layer = &model.mixings[t];
    let mixed = [
        layer.channel_mix.forward(&mu[0]),
        layer.channel_mix.forward(&mu[1]),
        layer.channel_mix.forward(&mu[2]),
    ];
    let mut norm = DMatrix::zeros(f, n);
    let mut v_dot_u = DMatrix::zeros(f, n);
    for atom in 0..n {
        let m = [col(&mixed[0], atom), col(&mixed[1], atom), col(&mixed[2], atom)];
        let norm_a = col_mut(&mut norm, atom);
        for c in 0..f {
            norm_a[c] = (m[0][c] * m[0][c] + m[1][c] * m[1][c] + m[2][c] * m[2][c] + model.epsilon).sqrt();
        }
        let vu = col_mut(&mut v_dot_u, atom);
        for c in 0..f {
            vu[c] = m[0][c] * m[0][f + c] + m[1][c] * m[1][f + c] + m[2][c] * m[2][f + c];
        }
    }
    let stacked = DMatrix::from_fn(
        2 * f,
        n,
        |row, atom| {
            if row < f {
                q[(row, atom)]
            } else {
                norm[(row - f, atom)]
            }
        },
    );
    let context_pre = layer.context1.forward(&stacked);
    let context = layer.context2.forward(&context_pre.map(silu));
    for atom in 0..n {
        let a = col(&context, atom);
        let (a_ss, a_vv, a_sv) = (&a[..f], &a[f..2 * f], &a[2 * f..]);
        let vu = col(&v_dot_u, atom);
        let qa = col_mut(q, atom);
        for c in 0..f {
            qa[c] += a_ss[c] + a_sv[c] * vu[c];
        }
        for k in 0..3 {
            let u_k = &col(&mixed[k], atom)[f..];
            let mu_a = col_mut(&mut mu[k], atom);
            for c in 0..f {
                mu_a[c] += a_vv[c] * u_k[c];
            }
        }
    }
    MixingCache {
        mixed,
        norm,
        context_pre,
        context,
        v_dot_u,
    }
}

fn mixing_backward(
    model: &PainnModel,
    t: usize,
    cache: &MixingCache,
    grad_q: &mut DMatrix<f64>,
    grad_mu: &mut Vectorial,
) {
    let f = model.config.n_atom_basis;
    let n = grad_q.ncols();
    let layer = &model.mixings[t];
    let mut grad_context = DMatrix::zeros(3 * f, n);
    let mut grad_mixed = zeros3(2 * f, n);
    for atom in 0..n {
        let a = col(&cache.context, atom);
        let gq = col(grad_q, atom);
        let vu = col(&cache.v_dot_u, atom);
        let ga = col_mut(&mut grad_context, atom);
        for c in 0..f {
            ga[c] = gq[c];
            ga[2 * f + c] = gq[c] * vu[c];
        }
        for k in 0..3 {
            let m = col(&cache.mixed[k], atom);
            let gmu = col(&grad_mu[k], atom);
            for c in 0..f {
                ga[f + c] += gmu[c] * m[f + c];
            }
            let gm = col_mut(&mut grad_mixed[k], atom);
            for c in 0..f {
                let grad_vu = gq[c] * a[2 * f + c];
                gm[c] = grad_vu * m[f + c];
                gm[f + c] = gmu[c] * a[f + c] + grad_vu * m[c];
            }
        }
    }
    let grad_pre = layer
        .context2
        .backward(&grad_context)
        .component_mul(&cache.context_pre.map(silu_derivative));
    let grad_stacked = layer.context1.backward(&grad_pre);
    for atom in 0..n {
        let gs = col(&grad_stacked, atom);
        let norm = col(&cache.norm, atom);
        for (g, extra) in col_mut(grad_q, atom).iter_mut().zip(&gs[..f]) {
            *g += extra;
        }
        for k in 0..3 {
            let m = col(&cache.mixed[k], atom);
            let gm = col_mut(&mut grad_mixed[k], atom);
            for c in 0..f {
                gm[c] += gs[f + c] * m[c] / norm[c];
            }
        }
    }
    for k in 0..3 {
        grad_mu[k] += layer.channel_mix.backward(&grad_mixed[k]);
    }
}

/// Chain rule from the filter and unit-vector gradients to the atoms: F = −∂E/∂R.
fn pair_forces(
    model: &PainnModel,
    n: usize,
    pairs: &PairList,
    terms: &PairTerms,
    grad_filter: &mut DMatrix<f64>,
    grad_unit: &[Vec3],
) -> Vec<Vec3> {
    let k = model.config.n_rbf;
    // w = raw · f_cut: the gradient splits into one for f_cut and one for raw (scaled in place).
    let mut grad_cutoff = vec![0.0; pairs.len()];
    for (pair, mut column) in grad_filter.column_iter_mut().enumerate() {
        grad_cutoff[pair] = column
            .iter()
            .zip(col(&terms.filter_raw, pair))
            .map(|(g, w)| g * w)
            .sum();
        column *= terms.cutoff[pair];
    }
    let grad_basis = model.filter.backward(grad_filter);
    let mut forces = vec![[0.0; 3]; n];
    for pair in 0..pairs.len() {
        let grad_cutoff = grad_cutoff[pair];
        let dphi = &terms.basis_derivative.as_slice()[pair * k..(pair + 1) * k];
        let grad_distance: f64 = col(&grad_basis, pair).iter().zip(dphi).map(|(g, d)| g * d).sum::<f64>()
            + grad_cutoff * terms.cutoff_derivative[pair];
        let u = terms.unit[pair];
        let gu = grad_unit[pair];
        let d = terms.distance[pair];
        let radial_part = gu[0] * u[0] + gu[1] * u[1] + gu[2] * u[2];
        let (i, j) = (pairs.first[pair], pairs.second[pair]);
        for x in 0..3 {
            let grad_r = grad_distance * u[x] + (gu[x] - radial_part * u[x]) / d;
            forces[j][x] -= grad_r;
            forces[i][x] += grad_r;
        }
    }
    forces
}
