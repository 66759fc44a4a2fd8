// Unfused PaiNN: the `gpu-naive` ablation of `mdrun bench` (and `kernels = "naive"` in [gpu]).
// The same energy and forces as painn.cu, computed the plain way a first CUDA port would: every
// stage its own kernel, one thread per output element, every per-pair intermediate (radial
// basis, cutoff, the dense K → 3F filter, the filter gradients) written to global memory and read
// back, messages scattered into the receiving atoms with atomicAdd, dense per-atom layers as one
// thread per output walking a row of W. Nothing here is tuned: it is the baseline that the fused
// kernels' speed-up is measured against. Self-contained on purpose (own structs, no helpers from
// painn.cu) so that the fused kernels can change freely.
//
// Layouts as in painn.cu: q [N, F], μ [N, 3, F] (= [3N, F]), context x [N, 3F], mixing V/U
// [N, 3, 2F]. Pair slot p = i·capacity + s of the neighbor rows; P = N·capacity slots. Indices that
// run over P·3F elements exceed 2³¹ at 10⁵ atoms: 64-bit throughout.

struct NaiveNeighbors {  // same layout as NeighborParams (src/gpu/params.rs)
    const int* count;
    const int* j;
    const int3* image;
    const int* reverse;  // unused here: pair forces are scattered instead of gathered
    int capacity;
};

__device__ __forceinline__ u64 naive_index() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }

// Per pair slot: r (Å) and d in `geom` (d < 0: empty slot or beyond the cutoff), the cosine cutoff
// and its derivative in `cut`, and the Gaussian basis φ_k(d) in `phi` [P, NK].
extern "C" __global__ void naive_pair_basis(const double* pos, Cell cell, NaiveNeighbors nb, const float* offsets,
                                            const float* coeffs, float cutoff, float4* geom, float2* cut, float* phi,
                                            int n_atoms) {
    u64 p = naive_index();
    if (p >= (u64)n_atoms * nb.capacity) return;
    int i = (int)(p / nb.capacity), s = (int)(p % nb.capacity);
    float3 r = make_float3(0.f, 0.f, 0.f);
    float d = -1.f;
    if (s < nb.count[i]) {
        r = pair_vector(pos, i, nb.j[p], cell, nb.image[p]);
        float d2 = r.x * r.x + r.y * r.y + r.z * r.z;
        if (d2 < cutoff * cutoff) d = sqrtf(d2);
    }
    geom[p] = make_float4(r.x, r.y, r.z, d);
    if (d < 0.f) {
        cut[p] = make_float2(0.f, 0.f);
        return;  // φ left as it was: every reader checks d first
    }
    float sn, co;
    sincospif(d / cutoff, &sn, &co);
    cut[p] = make_float2(0.5f * (co + 1.0f), -0.5f * 3.14159265358979f / cutoff * sn);
    for (int k = 0; k < NK; ++k) phi[p * NK + k] = rbf_gaussian(d, offsets[k], coeffs[k]);
}

// Filter of interaction t per pair and output o < 3F (s, R, v blocks of F): filter[p, o] =
// b[offset + o] + Σ_k W[offset + o, k] φ_k(p), without the cutoff.
extern "C" __global__ void naive_pair_filter(const float4* geom, const float* phi, const float* weight,
                                             const float* bias, int offset, float* filter, u64 n_pairs) {
    u64 t = naive_index();
    if (t >= n_pairs * 3 * NF) return;
    u64 p = t / (3 * NF);
    int o = (int)(t % (3 * NF));
    if (geom[p].w < 0.f) return;
    const float* w = weight + (size_t)(offset + o) * NK;
    float acc = bias[offset + o];
    for (int k = 0; k < NK; ++k) acc += w[k] * phi[p * NK + k];
    filter[t] = acc;
}

extern "C" __global__ void naive_copy(const float* in, float* out, u64 n) {
    u64 t = naive_index();
    if (t < n) out[t] = in[t];
}

extern "C" __global__ void naive_silu(const float* in, float* out, u64 n) {
    u64 t = naive_index();
    if (t < n) out[t] = silu(in[t]);
}

// g *= σ'(pre), element-wise.
extern "C" __global__ void naive_mul_silu_grad(float* g, const float* pre, u64 n) {
    u64 t = naive_index();
    if (t < n) g[t] *= silu_grad(pre[t]);
}

// One thread per output: out[a·ld_out + o] = bias[o] + Σ_i m[o·n_in + i] · in[a·ld_in + i]
// (+ residual[a·ld_out + o]), o < n_out, for `rows` rows a. m row-major [n_out, n_in]: W for a
// forward layer, Wᵀ (stored [in, out]) for a backward one. bias and residual may be null.
extern "C" __global__ void naive_dense(const float* m, const float* bias, const float* residual, int n_in, int n_out,
                                       const float* in, int ld_in, float* out, int ld_out, int rows) {
    u64 t = naive_index();
    if (t >= (u64)rows * n_out) return;
    u64 a = t / n_out;
    int o = (int)(t % n_out);
    const float* w = m + (size_t)o * n_in;
    const float* x = in + a * ld_in;
    float acc = bias ? bias[o] : 0.f;
    for (int i = 0; i < n_in; ++i) acc += w[i] * x[i];
    if (residual) acc += residual[a * ld_out + o];
    out[a * ld_out + o] = acc;
}

// q0 = embedding[Z], per (atom, channel).
extern "C" __global__ void naive_embed(const int* numbers, const float* embedding, float* q0, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * NF) return;
    u64 a = t / NF;
    int c = (int)(t % NF);
    q0[t] = embedding[(size_t)numbers[a] * NF + c];
}

// Messages per (pair, channel), scattered into the receiving atom i: q_out, mu_out hold q, μ
// beforehand (the residual) and gain Σ_j of the messages.
extern "C" __global__ void naive_message(NaiveNeighbors nb, const float4* geom, const float2* cut, const float* filter,
                                         const float* x, const float* mu_in, float* q_out, float* mu_out, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * nb.capacity * NF) return;
    u64 p = t / NF;
    int c = (int)(t % NF);
    float4 g = geom[p];
    if (g.w < 0.f) return;
    int i = (int)(p / nb.capacity), j = nb.j[p];
    float fc = cut[p].x, inv_d = 1.0f / g.w;
    const float* f = filter + p * 3 * NF;
    const float* xj = x + (size_t)j * 3 * NF;
    const float* mj = mu_in + (size_t)j * 3 * NF;
    atomicAdd(&q_out[(size_t)i * NF + c], f[c] * fc * xj[c]);
    float radial = f[NF + c] * fc * xj[NF + c], vector = f[2 * NF + c] * fc * xj[2 * NF + c];
    float* mo = mu_out + (size_t)i * 3 * NF;
    atomicAdd(&mo[c], radial * g.x * inv_d + vector * mj[c]);
    atomicAdd(&mo[NF + c], radial * g.y * inv_d + vector * mj[NF + c]);
    atomicAdd(&mo[2 * NF + c], radial * g.z * inv_d + vector * mj[2 * NF + c]);
}

// ‖V‖ per (atom, channel) and the mixing context [q, ‖V‖] [N, 2F].
extern "C" __global__ void naive_norm_context(const float* q, const float* vu, float epsilon, float* norm, float* ctx,
                                              int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * NF) return;
    u64 a = t / NF;
    int c = (int)(t % NF);
    const float* v = vu + a * 6 * NF;
    float n = sqrtf(v[c] * v[c] + v[2 * NF + c] * v[2 * NF + c] + v[4 * NF + c] * v[4 * NF + c] + epsilon);
    norm[t] = n;
    ctx[a * 2 * NF + c] = q[t];
    ctx[a * 2 * NF + NF + c] = n;
}

// Mixing update per (atom, channel): q' = q + a_ss + a_sv (V·U), μ' = μ + a_vv U.
extern "C" __global__ void naive_mixing_update(const float* q_in, const float* mu_in, const float* vu, const float* a_mix,
                                               float* q_out, float* mu_out, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * NF) return;
    u64 a = t / NF;
    int c = (int)(t % NF);
    const float* v = vu + a * 6 * NF;
    const float* am = a_mix + a * 3 * NF;
    float vdotu = 0.f;
    for (int k = 0; k < 3; ++k) vdotu += v[k * 2 * NF + c] * v[k * 2 * NF + NF + c];
    q_out[t] = q_in[t] + am[c] + am[2 * NF + c] * vdotu;
    for (int k = 0; k < 3; ++k)
        mu_out[a * 3 * NF + k * NF + c] = mu_in[a * 3 * NF + k * NF + c] + am[NF + c] * v[k * 2 * NF + NF + c];
}

// Atom energies from the readout's hidden pre-activations z [N, NH]: one thread per atom.
extern "C" __global__ void naive_readout_energy(const float* z, const float* w2, float b2, float scale,
                                                float mean_per_atom, const float* atomref, const int* numbers,
                                                float* atom_energy, int n_atoms) {
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n_atoms) return;
    float y = b2;
    for (int h = 0; h < NH; ++h) y += w2[h] * silu(z[(size_t)a * NH + h]);
    atom_energy[a] = scale * y + mean_per_atom + atomref[numbers[a]];
}

// ∂E/∂z of the readout's hidden layer, element-wise: scale · w2[h] · σ'(z).
extern "C" __global__ void naive_readout_grad(const float* z, const float* w2, float scale, float* gz, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * NH) return;
    gz[t] = scale * w2[t % NH] * silu_grad(z[t]);
}

// Mixing backward, first element-wise part, per (atom, channel): from (∂q', ∂μ') at the mixing
// output, ∂a = (∂a_ss, ∂a_vv, ∂a_sv) [N, 3F] and the direct part of ∂(V, U) [N, 3, 2F].
extern "C" __global__ void naive_mixing_back_a(const float* gq, const float* gm, const float* vu, const float* a_mix,
                                               float* ga, float* gvu, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * NF) return;
    u64 a = t / NF;
    int c = (int)(t % NF);
    const float* v = vu + a * 6 * NF;
    const float* am = a_mix + a * 3 * NF;
    float V[3], U[3], G[3];
    for (int k = 0; k < 3; ++k) {
        V[k] = v[k * 2 * NF + c];
        U[k] = v[k * 2 * NF + NF + c];
        G[k] = gm[a * 3 * NF + k * NF + c];
    }
    float g = gq[t], a_vv = am[NF + c], a_sv = am[2 * NF + c];
    float vdotu = V[0] * U[0] + V[1] * U[1] + V[2] * U[2];
    ga[a * 3 * NF + c] = g;
    ga[a * 3 * NF + NF + c] = G[0] * U[0] + G[1] * U[1] + G[2] * U[2];
    ga[a * 3 * NF + 2 * NF + c] = g * vdotu;
    float g_vdotu = g * a_sv;
    for (int k = 0; k < 3; ++k) {
        gvu[a * 6 * NF + k * 2 * NF + c] = g_vdotu * U[k];
        gvu[a * 6 * NF + k * 2 * NF + NF + c] = G[k] * a_vv + g_vdotu * V[k];
    }
}

// Mixing backward, second element-wise part: ∂q at the mixing input (q passes through, plus the
// context's q half), and the ‖V‖ half of the context's gradient added to ∂V.
extern "C" __global__ void naive_mixing_back_b(const float* gq, const float* gctx, const float* vu, const float* norm,
                                               float* gq_in, float* gvu, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * NF) return;
    u64 a = t / NF;
    int c = (int)(t % NF);
    gq_in[t] = gq[t] + gctx[a * 2 * NF + c];
    float s = gctx[a * 2 * NF + NF + c] / norm[t];
    for (int k = 0; k < 3; ++k) gvu[a * 6 * NF + k * 2 * NF + c] += s * vu[a * 6 * NF + k * 2 * NF + c];
}

// Message backward per (pair a → b, channel): ∂E/∂(filter · fc) of the pair into `gw` [P, 3F],
// and the sender's gradients scattered into grad_x[b] and grad_mu[b] (which holds ∂μ' beforehand:
// μ passes through the residual).
extern "C" __global__ void naive_message_backward(NaiveNeighbors nb, const float4* geom, const float2* cut,
                                                  const float* filter, const float* x, const float* mu_in,
                                                  const float* gq, const float* gm, float* gw, float* grad_x,
                                                  float* grad_mu, int n_atoms) {
    u64 t = naive_index();
    if (t >= (u64)n_atoms * nb.capacity * NF) return;
    u64 p = t / NF;
    int c = (int)(t % NF);
    float4 g = geom[p];
    if (g.w < 0.f) return;
    int a = (int)(p / nb.capacity), b = nb.j[p];
    float fc = cut[p].x, inv_d = 1.0f / g.w;
    float u[3] = {g.x * inv_d, g.y * inv_d, g.z * inv_d};
    const float* f = filter + p * 3 * NF;
    const float* xb = x + (size_t)b * 3 * NF;
    const float* mb = mu_in + (size_t)b * 3 * NF;
    float gm_a[3];
    for (int k = 0; k < 3; ++k) gm_a[k] = gm[(size_t)a * 3 * NF + k * NF + c];
    float gq_a = gq[(size_t)a * NF + c];
    float g_r = gm_a[0] * u[0] + gm_a[1] * u[1] + gm_a[2] * u[2];
    float g_v = gm_a[0] * mb[c] + gm_a[1] * mb[NF + c] + gm_a[2] * mb[2 * NF + c];
    float* w = gw + p * 3 * NF;
    w[c] = gq_a * xb[c];
    w[NF + c] = g_r * xb[NF + c];
    w[2 * NF + c] = g_v * xb[2 * NF + c];
    float* gx = grad_x + (size_t)b * 3 * NF;
    atomicAdd(&gx[c], gq_a * f[c] * fc);
    atomicAdd(&gx[NF + c], g_r * f[NF + c] * fc);
    atomicAdd(&gx[2 * NF + c], g_v * f[2 * NF + c] * fc);
    float vector_w = f[2 * NF + c] * fc * xb[2 * NF + c];
    float* gmb = grad_mu + (size_t)b * 3 * NF;
    for (int k = 0; k < 3; ++k) atomicAdd(&gmb[k * NF + c], gm_a[k] * vector_w);
}

// Through the filter's dense layer, per (pair, k): ∂E/∂φ_k = Σ_o ∂E/∂filter_o · W[offset + o, k]
// (∂E/∂filter_o = gw_o · fc; the fc is applied in naive_pair_grad). Into `gphi` [P, NK].
extern "C" __global__ void naive_filter_backward(const float4* geom, const float* gw, const float* weight, int offset,
                                                 float* gphi, u64 n_pairs) {
    u64 t = naive_index();
    if (t >= n_pairs * NK) return;
    u64 p = t / NK;
    int k = (int)(t % NK);
    if (geom[p].w < 0.f) return;
    const float* g = gw + p * 3 * NF;
    float acc = 0.f;
    for (int o = 0; o < 3 * NF; ++o) acc += g[o] * weight[(size_t)(offset + o) * NK + k];
    gphi[t] = acc;
}

// Per pair: ∂E/∂d (through φ and the cutoff) and ∂E/∂r̂ (the radial messages), added to
// pair_grad [P] (x: ∂E/∂d, yzw: ∂E/∂r̂; summed over interactions). One thread per pair.
extern "C" __global__ void naive_pair_grad(NaiveNeighbors nb, const float4* geom, const float2* cut, const float* phi,
                                           const float* offsets, const float* coeffs, const float* filter,
                                           const float* gw, const float* gphi, const float* x, const float* gm,
                                           float4* pair_grad, u64 n_pairs) {
    u64 p = naive_index();
    if (p >= n_pairs) return;
    float4 g = geom[p];
    if (g.w < 0.f) return;
    int a = (int)(p / nb.capacity), b = nb.j[p];
    float d = g.w, fc = cut[p].x, dfc = cut[p].y;
    float g_phi = 0.f;
    for (int k = 0; k < NK; ++k) {
        float dphi = 2.0f * coeffs[k] * (d - offsets[k]) * phi[p * NK + k];
        g_phi += gphi[p * NK + k] * dphi;
    }
    const float* f = filter + p * 3 * NF;
    const float* w = gw + p * 3 * NF;
    float g_fc = 0.f;
    for (int o = 0; o < 3 * NF; ++o) g_fc += w[o] * f[o];
    const float* xb = x + (size_t)b * 3 * NF;
    const float* gma = gm + (size_t)a * 3 * NF;
    float gu[3] = {0.f, 0.f, 0.f};
    for (int c = 0; c < NF; ++c) {
        float radial = f[NF + c] * fc * xb[NF + c];
        for (int k = 0; k < 3; ++k) gu[k] += gma[k * NF + c] * radial;
    }
    float4 acc = pair_grad[p];
    pair_grad[p] = make_float4(acc.x + fc * g_phi + dfc * g_fc, acc.y + gu[0], acc.z + gu[1], acc.w + gu[2]);
}

// Forces from the pair gradients, scattered: for the pair a → b with r = R_b − R_a,
// ∂E/∂r = g_d r̂ + (g_u − (g_u·r̂) r̂)/d; F_a += ∂E/∂r, F_b −= ∂E/∂r. `forces` zeroed beforehand.
extern "C" __global__ void naive_pair_forces(NaiveNeighbors nb, const float4* geom, const float4* pair_grad,
                                             float* forces, u64 n_pairs) {
    u64 p = naive_index();
    if (p >= n_pairs) return;
    float4 g = geom[p];
    if (g.w < 0.f) return;
    int a = (int)(p / nb.capacity), b = nb.j[p];
    float inv_d = 1.0f / g.w;
    float u[3] = {g.x * inv_d, g.y * inv_d, g.z * inv_d};
    float4 pg = pair_grad[p];
    float gu[3] = {pg.y, pg.z, pg.w};
    float dot = gu[0] * u[0] + gu[1] * u[1] + gu[2] * u[2];
    for (int k = 0; k < 3; ++k) {
        float de_dr = pg.x * u[k] + (gu[k] - dot * u[k]) * inv_d;
        atomicAdd(&forces[3 * a + k], de_dr);
        atomicAdd(&forces[3 * b + k], -de_dr);
    }
}
