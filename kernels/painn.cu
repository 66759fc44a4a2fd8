// PaiNN energy and forces, exactly as schnetpack 2.x computes it (see forcefield/cpu.rs, the f64
// reference these kernels are tested against). One block per atom, one thread per feature
// channel c (blockDim.x == NF). Per-atom vectors are stored atom-major: q [N, F], μ [N, 3, F],
// context x [N, 3F]. Dense weights come twice: W [out, in] (backward reads columns coalesced)
// and Wᵀ [in, out] (forward reads rows coalesced).
//
// Neighbors: fixed-capacity rows, row i = entries [i·cap, i·cap + count[i]), each (j, image);
// candidates within cutoff + skin, filtered against the cutoff here at the current positions.

#ifndef NK
#error "NK (radial basis size) must be defined"
#endif
#ifndef NH
#error "NH (readout hidden width) must be defined"
#endif
#if TILE > 4
#error "the readout packs per-atom energies into a float4: TILE must be at most 4"
#endif

struct Filter {
    const float* weight;   // [rows, K] row-major, this interaction's block starts at row `offset`
    const float* bias;     // [rows]
    const float* offsets;  // [K] Gaussian centres μ_k (Å)
    const float* coeffs;   // [K] −0.5 / w_k²
    int offset;
    float cutoff;
};

struct Neighbors {
    const int* count;
    const int* j;
    const int3* image;
    const int* reverse;  // index of the pair (j → i, −image)
    int capacity;
};

// Loads the three filter rows of channel c (s, R, v) for this interaction into registers.
struct ChannelFilter {
    float ws[NK], wr[NK], wv[NK];
    float bs, br, bv;
    __device__ void load(const Filter& f, int c) {
        const float* s = f.weight + (size_t)(f.offset + c) * NK;
        const float* r = f.weight + (size_t)(f.offset + NF + c) * NK;
        const float* v = f.weight + (size_t)(f.offset + 2 * NF + c) * NK;
#pragma unroll
        for (int k = 0; k < NK; ++k) {
            ws[k] = s[k];
            wr[k] = r[k];
            wv[k] = v[k];
        }
        bs = f.bias[f.offset + c];
        br = f.bias[f.offset + NF + c];
        bv = f.bias[f.offset + 2 * NF + c];
    }
};

// Cosine cutoff and its derivative; d < cutoff is checked by the caller.
__device__ __forceinline__ void cosine_cutoff(float d, float cutoff, float& fc, float& dfc) {
    float s, co;
    sincospif(d / cutoff, &s, &co);
    fc = 0.5f * (co + 1.0f);
    dfc = -0.5f * 3.14159265358979f / cutoff * s;
}

// ---------------------------------------------------------------------------------------------
// Forward

// x = W2 σ(W1 q + b1) + b2 for the block's TILE atoms (first atom a0), q in shared `q_sh`
// (row stride ld_q); `hidden` [TILE][F] and `x_sh` [TILE][3F] are shared scratch. Saves the
// pre-activation for the backward pass.
__device__ void context_mlp(const float* q_sh, int ld_q, float* hidden, float* x_sh, float* scratch, const float* w1t,
                            const float* b1, const float* w2t, const float* b2, float* pre_out, float* x_out, int a0,
                            int n_atoms) {
    int c = threadIdx.x % NF, s = threadIdx.x / NF;
    block_matvec(w1t, NF, NF, q_sh, ld_q, hidden, NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float z = hidden[a * NF + c] + b1[c];
            if (a0 + a < n_atoms) pre_out[(size_t)(a0 + a) * NF + c] = z;
            hidden[a * NF + c] = silu(z);
        }
    }
    __syncthreads();
    block_matvec(w2t, NF, 3 * NF, hidden, NF, x_sh, 3 * NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            if (a0 + a >= n_atoms) continue;
            float* x = x_out + (size_t)(a0 + a) * 3 * NF;
            for (int m = 0; m < 3; ++m) x[m * NF + c] = x_sh[a * 3 * NF + m * NF + c] + b2[m * NF + c];
        }
    }
}

// Embedding and the first interaction's context: depend on the elements only, run once.
DENSE_KERNEL embed(const int* numbers, const float* embedding, const float* w1t, const float* b1,
                                 const float* w2t, const float* b2, float* q0, float* pre0, float* x0, int n_atoms) {
    __shared__ float q_sh[TILE * NF], hidden[TILE * NF], x_sh[TILE * 3 * NF], scratch[SPLIT * TILE * NF];
    int a0 = DENSE_TILE_INDEX * TILE, c = threadIdx.x % NF, s = threadIdx.x / NF;
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float q = a0 + a < n_atoms ? embedding[numbers[a0 + a] * NF + c] : 0.f;
            if (a0 + a < n_atoms) q0[(size_t)(a0 + a) * NF + c] = q;
            q_sh[a * NF + c] = q;
        }
    }
    __syncthreads();
    context_mlp(q_sh, NF, hidden, x_sh, scratch, w1t, b1, w2t, b2, pre0, x0, a0, n_atoms);
}

// Geometry of up to NF candidates of a row, computed by the block at once (one round of global-load
// latency per chunk instead of one per pair) and compacted to the pairs within the cutoff, so that
// the pair loops that follow have no branches and can keep several pairs' loads in flight.
struct ChunkGeometry {
    int j[NF];
    int slot[NF];       // position of the pair in the chunk (its neighbor-row entry − chunk start)
    float4 r[NF];       // r (Å) and d
    float phi[NF][NK];  // radial basis φ_k(d), computed once per pair for all channels
    int warp_count[NF / 32];
};

// Fills `g` with the pairs within the cutoff among candidates [chunk, chunk + NF) of row `i` (row
// end `end`), in row order; returns how many. blockDim.x == NF. Ends with a barrier.
__device__ __forceinline__ int load_chunk(ChunkGeometry& g, const double* pos, const Cell& cell, const Neighbors& nb,
                                          const Filter& filter, int i, int chunk, int end, float cutoff2) {
    int t = threadIdx.x, p = chunk + t, lane = t & 31, warp = t >> 5;
    bool inside = false;
    int j = 0;
    float3 r = make_float3(0.f, 0.f, 0.f);
    float d2 = 0.f;
    if (p < end) {
        j = nb.j[p];
        r = pair_vector(pos, i, j, cell, nb.image[p]);
        d2 = r.x * r.x + r.y * r.y + r.z * r.z;
        inside = d2 < cutoff2;
    }
    u32 ballot = __ballot_sync(0xffffffffu, inside);
    if (lane == 0) g.warp_count[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0, total = 0;
#pragma unroll
    for (int w = 0; w < NF / 32; ++w) {
        offset += w < warp ? g.warp_count[w] : 0;
        total += g.warp_count[w];
    }
    if (inside) {
        int k = offset + __popc(ballot & ((1u << lane) - 1u));
        float d = sqrtf(d2);
        g.j[k] = j;
        g.slot[k] = t;
        g.r[k] = make_float4(r.x, r.y, r.z, d);
#pragma unroll
        for (int m = 0; m < NK; ++m) {
            float u = d - filter.offsets[m];
            g.phi[k][m] = __expf(filter.coeffs[m] * u * u);
        }
    }
    __syncthreads();
    return total;
}

// Interaction: radial basis, cutoff, filter, message and aggregation over the neighbors of
// atom i, fused; nothing per pair is written to memory.
extern "C" __global__ void message_forward(const double* pos, Cell cell, Neighbors nb, Filter filter,
                                           const float* __restrict__ q_in, const float* __restrict__ mu_in,
                                           const float* __restrict__ x, float* __restrict__ q_out,
                                           float* __restrict__ mu_out) {
    __shared__ ChunkGeometry g;
    int i = blockIdx.x, c = threadIdx.x;
    ChannelFilter w;
    w.load(filter, c);
    float cutoff2 = filter.cutoff * filter.cutoff;
    float dq = 0.f, dm0 = 0.f, dm1 = 0.f, dm2 = 0.f;
    int begin = i * nb.capacity, end = begin + nb.count[i];
    for (int chunk = begin; chunk < end; chunk += NF) {
        int n = load_chunk(g, pos, cell, nb, filter, i, chunk, end, cutoff2);
#pragma unroll 4
        for (int q = 0; q < n; ++q) {
            float4 r = g.r[q];
            float d = r.w;
            int j = g.j[q];
            float inv_d = 1.0f / d;
            float fc, dfc;
            cosine_cutoff(d, filter.cutoff, fc, dfc);
            float fs = w.bs, fr = w.br, fv = w.bv;
#pragma unroll
            for (int k = 0; k < NK; ++k) {
                float phi = g.phi[q][k];
                fs += w.ws[k] * phi;
                fr += w.wr[k] * phi;
                fv += w.wv[k] * phi;
            }
            const float* xj = x + (size_t)j * 3 * NF;
            const float* mj = mu_in + (size_t)j * 3 * NF;
            dq += fs * fc * xj[c];
            float radial = fr * fc * xj[NF + c];
            float vector = fv * fc * xj[2 * NF + c];
            dm0 += radial * r.x * inv_d + vector * mj[c];
            dm1 += radial * r.y * inv_d + vector * mj[NF + c];
            dm2 += radial * r.z * inv_d + vector * mj[2 * NF + c];
        }
        __syncthreads();  // before the next chunk overwrites g
    }
    q_out[i * NF + c] = q_in[i * NF + c] + dq;
    const float* mi = mu_in + (size_t)i * 3 * NF;
    float* mo = mu_out + (size_t)i * 3 * NF;
    mo[c] = mi[c] + dm0;
    mo[NF + c] = mi[NF + c] + dm1;
    mo[2 * NF + c] = mi[2 * NF + c] + dm2;
}

struct MixingWeights {
    const float* mix_t;  // mu_channel_mix ᵀ [F, 2F]
    const float* a1t;    // intraatomic_context_net.0 ᵀ [2F, F]
    const float* b1;
    const float* a2t;    // intraatomic_context_net.1 ᵀ [F, 3F]
    const float* b2;
    float epsilon;
};

struct MixingCache {
    float* vu;    // [N, 3, 2F]: V (first F) and U per Cartesian row
    float* norm;  // [N, F]
    float* pre;   // [N, F]
    float* a;     // [N, 3F]
};

struct Readout {
    const float* w1t;  // [F, H]
    const float* b1;   // [H]
    const float* w1;   // [H, F]
    const float* w2;   // [H]
    float b2, scale, mean_per_atom;
    const float* atomref;  // [100]
    const int* numbers;
};

// Mixing, fused with what follows on the same atoms: the next interaction's context network, or
// (last layer) the atomwise readout, the atoms' energies and the first gradient ∂E/∂q.
// blockDim = SPLIT·NF, TILE atoms per block; element-wise work is done by the threads of split 0.
DENSE_KERNEL mixing_forward(const float* q_in, const float* mu_in, MixingWeights m, MixingCache cache,
                                          float* q_out, float* mu_out, int last,
                                          // next interaction (last == 0)
                                          const float* n_w1t, const float* n_b1, const float* n_w2t, const float* n_b2,
                                          float* n_pre, float* n_x,
                                          // readout (last == 1)
                                          Readout ro, float* atom_energy, float* grad_q, float* grad_mu, int n_atoms) {
    __shared__ float mu_sh[TILE * 3 * NF], ctx[TILE * 2 * NF], hidden[TILE * NF], vu[TILE * 6 * NF],
        out3[TILE * 3 * NF], scratch[SPLIT * TILE * NF], red[64];
    int a0 = DENSE_TILE_INDEX * TILE, t = threadIdx.x, c = t % NF, s = t / NF;
    for (int k = t; k < TILE * 3 * NF; k += blockDim.x) {
        int a = k / (3 * NF);
        mu_sh[k] = a0 + a < n_atoms ? mu_in[(size_t)a0 * 3 * NF + k] : 0.f;
    }
    float q[TILE], vdotu[TILE];
#pragma unroll
    for (int a = 0; a < TILE; ++a) {
        q[a] = a0 + a < n_atoms ? q_in[(size_t)(a0 + a) * NF + c] : 0.f;
        if (s == 0) ctx[a * 2 * NF + c] = q[a];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 3; ++k) block_matvec(m.mix_t, NF, 2 * NF, mu_sh + k * NF, 3 * NF, vu + k * 2 * NF, 6 * NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            const float* v = vu + a * 6 * NF;
            float V0 = v[c], V1 = v[2 * NF + c], V2 = v[4 * NF + c];
            float U0 = v[NF + c], U1 = v[3 * NF + c], U2 = v[5 * NF + c];
            float norm = sqrtf(V0 * V0 + V1 * V1 + V2 * V2 + m.epsilon);
            ctx[a * 2 * NF + NF + c] = norm;
            vdotu[a] = V0 * U0 + V1 * U1 + V2 * U2;
            if (a0 + a < n_atoms) {
                float* cv = cache.vu + (size_t)(a0 + a) * 6 * NF;
                for (int k = 0; k < 6; ++k) cv[k * NF + c] = v[k * NF + c];
                cache.norm[(size_t)(a0 + a) * NF + c] = norm;
            }
        }
    }
    __syncthreads();
    block_matvec(m.a1t, 2 * NF, NF, ctx, 2 * NF, hidden, NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float z = hidden[a * NF + c] + m.b1[c];
            if (a0 + a < n_atoms) cache.pre[(size_t)(a0 + a) * NF + c] = z;
            hidden[a * NF + c] = silu(z);
        }
    }
    __syncthreads();
    block_matvec(m.a2t, NF, 3 * NF, hidden, NF, out3, 3 * NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            const float* o = out3 + a * 3 * NF;
            float a_ss = o[c] + m.b2[c], a_vv = o[NF + c] + m.b2[NF + c], a_sv = o[2 * NF + c] + m.b2[2 * NF + c];
            float q_new = q[a] + a_ss + a_sv * vdotu[a];
            ctx[a * 2 * NF + c] = q_new;
            if (a0 + a >= n_atoms) continue;
            size_t atom = a0 + a;
            float* ca = cache.a + atom * 3 * NF;
            ca[c] = a_ss;
            ca[NF + c] = a_vv;
            ca[2 * NF + c] = a_sv;
            q_out[atom * NF + c] = q_new;
            const float* v = vu + a * 6 * NF;
            float* mo = mu_out + atom * 3 * NF;
#pragma unroll
            for (int k = 0; k < 3; ++k) mo[k * NF + c] = mu_sh[a * 3 * NF + k * NF + c] + a_vv * v[k * 2 * NF + NF + c];
        }
    }
    __syncthreads();
    if (!last) {
        context_mlp(ctx, 2 * NF, hidden, out3, scratch, n_w1t, n_b1, n_w2t, n_b2, n_pre, n_x, a0, n_atoms);
        return;
    }
    // Readout y = w2 · σ(W1 q + b1) + b2, energies, and ∂E/∂q = scale · W1ᵀ (w2 ⊙ σ'(z)).
    block_matvec(ro.w1t, NF, NH, ctx, 2 * NF, hidden, NF, scratch);
    float contribution[4] = {0.f, 0.f, 0.f, 0.f};
    if (s == 0 && c < NH) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float zr = hidden[a * NF + c] + ro.b1[c];
            contribution[a] = ro.w2[c] * silu(zr);
            out3[a * 3 * NF + c] = ro.scale * ro.w2[c] * silu_grad(zr);
        }
    }
    float4 total = block_sum4(make_float4(contribution[0], contribution[1], contribution[2], contribution[3]), red);
    if (t == 0) {
        float sums[4] = {total.x, total.y, total.z, total.w};
        for (int a = 0; a < TILE && a0 + a < n_atoms; ++a)
            atom_energy[a0 + a] = ro.scale * (sums[a] + ro.b2) + ro.mean_per_atom + ro.atomref[ro.numbers[a0 + a]];
    }
    block_matvec(ro.w1, NH, NF, out3, 3 * NF, hidden, NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            if (a0 + a >= n_atoms) continue;
            size_t atom = a0 + a;
            grad_q[atom * NF + c] = hidden[a * NF + c];
            float* gm = grad_mu + atom * 3 * NF;
            gm[c] = 0.f;
            gm[NF + c] = 0.f;
            gm[2 * NF + c] = 0.f;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward

struct MixingBackWeights {
    const float* mix;  // mu_channel_mix [2F, F]
    const float* a1;   // intraatomic_context_net.0 [F, 2F]
    const float* a2;   // intraatomic_context_net.1 [3F, F]
};

// Gradients through mixing t: from (∂E/∂q, ∂E/∂μ) at its output to its input.
// blockDim = SPLIT·NF, TILE atoms per block.
DENSE_KERNEL mixing_backward(MixingBackWeights m, MixingCache cache, const float* grad_q_out,
                                           const float* grad_mu_out, float* grad_q_in, float* grad_mu_in,
                                           int n_atoms) {
    __shared__ float ga[TILE * 3 * NF], gz[TILE * NF], gctx[TILE * 2 * NF], gvu[TILE * 6 * NF], out[TILE * NF],
        scratch[SPLIT * TILE * NF];
    int a0 = DENSE_TILE_INDEX * TILE, c = threadIdx.x % NF, s = threadIdx.x / NF;
    float gq[TILE], gm[TILE][3], V[TILE][3];
#pragma unroll
    for (int a = 0; a < TILE; ++a) {
        gq[a] = 0.f;
        for (int k = 0; k < 3; ++k) gm[a][k] = V[a][k] = 0.f;
        if (s != 0 || a0 + a >= n_atoms) {
            if (s == 0) {
                for (int k = 0; k < 3; ++k) ga[a * 3 * NF + k * NF + c] = 0.f;
                for (int k = 0; k < 6; ++k) gvu[a * 6 * NF + k * NF + c] = 0.f;
            }
            continue;
        }
        size_t atom = a0 + a;
        gq[a] = grad_q_out[atom * NF + c];
        float U[3];
        const float* vu = cache.vu + atom * 6 * NF;
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            gm[a][k] = grad_mu_out[atom * 3 * NF + k * NF + c];
            V[a][k] = vu[k * 2 * NF + c];
            U[k] = vu[k * 2 * NF + NF + c];
        }
        const float* ca = cache.a + atom * 3 * NF;
        float a_vv = ca[NF + c], a_sv = ca[2 * NF + c];
        float vdotu = V[a][0] * U[0] + V[a][1] * U[1] + V[a][2] * U[2];
        ga[a * 3 * NF + c] = gq[a];
        ga[a * 3 * NF + NF + c] = gm[a][0] * U[0] + gm[a][1] * U[1] + gm[a][2] * U[2];
        ga[a * 3 * NF + 2 * NF + c] = gq[a] * vdotu;
        float g_vdotu = gq[a] * a_sv;
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            gvu[a * 6 * NF + k * 2 * NF + c] = g_vdotu * U[k];
            gvu[a * 6 * NF + k * 2 * NF + NF + c] = gm[a][k] * a_vv + g_vdotu * V[a][k];
        }
    }
    __syncthreads();
    block_matvec(m.a2, 3 * NF, NF, ga, 3 * NF, gz, NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a)
            gz[a * NF + c] *= a0 + a < n_atoms ? silu_grad(cache.pre[(size_t)(a0 + a) * NF + c]) : 0.f;
    }
    __syncthreads();
    block_matvec(m.a1, NF, 2 * NF, gz, NF, gctx, 2 * NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            if (a0 + a >= n_atoms) continue;
            size_t atom = a0 + a;
            grad_q_in[atom * NF + c] = gq[a] + gctx[a * 2 * NF + c];
            float norm = cache.norm[atom * NF + c];
#pragma unroll
            for (int k = 0; k < 3; ++k) gvu[a * 6 * NF + k * 2 * NF + c] += gctx[a * 2 * NF + NF + c] * V[a][k] / norm;
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        block_matvec(m.mix, 2 * NF, NF, gvu + k * 2 * NF, 6 * NF, out, NF, scratch);
        if (s == 0) {
#pragma unroll
            for (int a = 0; a < TILE; ++a)
                if (a0 + a < n_atoms) grad_mu_in[(size_t)(a0 + a) * 3 * NF + k * NF + c] = gm[a][k] + out[a * NF + c];
        }
    }
}

// Gradients through interaction t, gathered per atom a: for every neighbor b, the pair a→b
// (a receives: per-pair ∂E/∂d and ∂E/∂r̂, accumulated over layers in pair_grad) and the pair
// b→a (a sends: ∂E/∂x_a and ∂E/∂μ_a). Both pairs have the same distance, so one filter serves.
extern "C" __global__ void message_backward(const double* pos, Cell cell, Neighbors nb, Filter filter,
                                            const float* __restrict__ mu_in, const float* __restrict__ x,
                                            const float* __restrict__ grad_q, const float* __restrict__ grad_mu,
                                            float* __restrict__ grad_x, float* __restrict__ grad_mu_in,
                                            float4* __restrict__ pair_grad) {
    __shared__ ChunkGeometry g;
    __shared__ float4 warp_part[NF][NF / 32];  // per pair of the chunk, per warp: (∂E/∂d, ∂E/∂r̂)
    int a = blockIdx.x, c = threadIdx.x, warp = c >> 5, lane = c & 31;
    ChannelFilter w;
    w.load(filter, c);
    float cutoff2 = filter.cutoff * filter.cutoff;
    float gq_a = grad_q[a * NF + c];
    float gm_a[3], mu_a[3];
    for (int k = 0; k < 3; ++k) {
        gm_a[k] = grad_mu[(size_t)a * 3 * NF + k * NF + c];
        mu_a[k] = mu_in[(size_t)a * 3 * NF + k * NF + c];
    }
    const float* xa = x + (size_t)a * 3 * NF;
    float xa_v = xa[2 * NF + c];
    float gx_s = 0.f, gx_r = 0.f, gx_v = 0.f, gmu0 = 0.f, gmu1 = 0.f, gmu2 = 0.f;
    int begin = a * nb.capacity, end = begin + nb.count[a];
    for (int chunk = begin; chunk < end; chunk += NF) {
        int n = load_chunk(g, pos, cell, nb, filter, a, chunk, end, cutoff2);
#pragma unroll 2
        for (int q = 0; q < n; ++q) {
            float4 rv = g.r[q];
            float d = rv.w;
            int b = g.j[q];
            float inv_d = 1.0f / d;
            float u[3] = {rv.x * inv_d, rv.y * inv_d, rv.z * inv_d};
            float fc, dfc;
            cosine_cutoff(d, filter.cutoff, fc, dfc);
            float phi[NK], dphi[NK];
            float fs = w.bs, fr = w.br, fv = w.bv;
#pragma unroll
            for (int k = 0; k < NK; ++k) {
                float t = d - filter.offsets[k];
                phi[k] = g.phi[q][k];
                dphi[k] = 2.0f * filter.coeffs[k] * t * phi[k];
                fs += w.ws[k] * phi[k];
                fr += w.wr[k] * phi[k];
                fv += w.wv[k] * phi[k];
            }
            // Pair a → b: a receives.
            const float* xb = x + (size_t)b * 3 * NF;
            const float* mb = mu_in + (size_t)b * 3 * NF;
            float xb_s = xb[c], xb_r = xb[NF + c], xb_v = xb[2 * NF + c];
            float g_r = gm_a[0] * u[0] + gm_a[1] * u[1] + gm_a[2] * u[2];
            float g_v = gm_a[0] * mb[c] + gm_a[1] * mb[NF + c] + gm_a[2] * mb[2 * NF + c];
            float gw_s = gq_a * xb_s, gw_r = g_r * xb_r, gw_v = g_v * xb_v;  // ∂E/∂w (cutoff included)
            float radial = fr * fc * xb_r;
            float g_phi_dot = 0.f;
#pragma unroll
            for (int k = 0; k < NK; ++k) g_phi_dot += (gw_s * w.ws[k] + gw_r * w.wr[k] + gw_v * w.wv[k]) * dphi[k];
            float4 v = make_float4(fc * g_phi_dot + dfc * (gw_s * fs + gw_r * fr + gw_v * fv), gm_a[0] * radial,
                                   gm_a[1] * radial, gm_a[2] * radial);
            for (int offset = 16; offset > 0; offset >>= 1) {
                v.x += __shfl_down_sync(0xffffffffu, v.x, offset);
                v.y += __shfl_down_sync(0xffffffffu, v.y, offset);
                v.z += __shfl_down_sync(0xffffffffu, v.z, offset);
                v.w += __shfl_down_sync(0xffffffffu, v.w, offset);
            }
            if (lane == 0) warp_part[q][warp] = v;
            // Pair b → a: a sends; its unit vector is −u.
            const float* gmb = grad_mu + (size_t)b * 3 * NF;
            float gq_b = grad_q[b * NF + c];
            float gmb0 = gmb[c], gmb1 = gmb[NF + c], gmb2 = gmb[2 * NF + c];
            float h_r = -(gmb0 * u[0] + gmb1 * u[1] + gmb2 * u[2]);
            float h_v = gmb0 * mu_a[0] + gmb1 * mu_a[1] + gmb2 * mu_a[2];
            gx_s += gq_b * fs * fc;
            gx_r += h_r * fr * fc;
            gx_v += h_v * fv * fc;
            float vector_w = fv * fc * xa_v;
            gmu0 += gmb0 * vector_w;
            gmu1 += gmb1 * vector_w;
            gmu2 += gmb2 * vector_w;
        }
        __syncthreads();
        // One thread per pair of the chunk sums its warps' partials in a fixed order.
        if (c < n) {
            float4 total = warp_part[c][0];
            for (int k = 1; k < NF / 32; ++k) {
                float4 part = warp_part[c][k];
                total.x += part.x;
                total.y += part.y;
                total.z += part.z;
                total.w += part.w;
            }
            int p = chunk + g.slot[c];
            float4 acc = pair_grad[p];
            pair_grad[p] = make_float4(acc.x + total.x, acc.y + total.y, acc.z + total.z, acc.w + total.w);
        }
        __syncthreads();
    }
    float* gx = grad_x + (size_t)a * 3 * NF;
    gx[c] = gx_s;
    gx[NF + c] = gx_r;
    gx[2 * NF + c] = gx_v;
    float* gmi = grad_mu_in + (size_t)a * 3 * NF;
    gmi[c] = gm_a[0] + gmu0;
    gmi[NF + c] = gm_a[1] + gmu1;
    gmi[2 * NF + c] = gm_a[2] + gmu2;
}

// ∂E/∂q through the context network of interaction t: grad_q_in = grad_q + W1ᵀ(σ'(z) ⊙ W2ᵀ gx).
// blockDim = SPLIT·NF, TILE atoms per block.
DENSE_KERNEL context_backward(const float* w1, const float* w2, const float* pre, const float* grad_x,
                                            const float* grad_q, float* grad_q_in, int n_atoms) {
    __shared__ float gx[TILE * 3 * NF], gz[TILE * NF], out[TILE * NF], scratch[SPLIT * TILE * NF];
    int a0 = DENSE_TILE_INDEX * TILE, t = threadIdx.x, c = t % NF, s = t / NF;
    for (int k = t; k < TILE * 3 * NF; k += blockDim.x) {
        int a = k / (3 * NF);
        gx[k] = a0 + a < n_atoms ? grad_x[(size_t)a0 * 3 * NF + k] : 0.f;
    }
    __syncthreads();
    block_matvec(w2, 3 * NF, NF, gx, 3 * NF, gz, NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a)
            gz[a * NF + c] *= a0 + a < n_atoms ? silu_grad(pre[(size_t)(a0 + a) * NF + c]) : 0.f;
    }
    __syncthreads();
    block_matvec(w1, NF, NF, gz, NF, out, NF, scratch);
    if (s == 0) {
#pragma unroll
        for (int a = 0; a < TILE; ++a)
            if (a0 + a < n_atoms) grad_q_in[(size_t)(a0 + a) * NF + c] = grad_q[(size_t)(a0 + a) * NF + c] + out[a * NF + c];
    }
}

// Forces from the per-pair gradients: F_a = Σ_{p = a→b} [∂E/∂r(p) − ∂E/∂r(reverse p)], with
// ∂E/∂r = g_d r̂ + (g_u − (g_u·r̂) r̂)/d. One warp per atom, lanes over its pairs (one round of
// load latency per 32 pairs instead of one per pair), summed in a fixed order.
extern "C" __global__ void pair_forces(const double* pos, Cell cell, Neighbors nb, float cutoff,
                                       const float4* __restrict__ pair_grad, float* __restrict__ forces, int n_atoms) {
    int a = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (a >= n_atoms) return;  // whole warps leave together
    float cutoff2 = cutoff * cutoff;
    float fx = 0.f, fy = 0.f, fz = 0.f;
    int begin = a * nb.capacity, end = begin + nb.count[a];
    for (int p = begin + lane; p < end; p += 32) {
        float3 r = pair_vector(pos, a, nb.j[p], cell, nb.image[p]);
        float d2 = r.x * r.x + r.y * r.y + r.z * r.z;
        if (d2 >= cutoff2) continue;
        float d = sqrtf(d2), inv_d = 1.0f / d;
        float3 u = make_float3(r.x * inv_d, r.y * inv_d, r.z * inv_d);
        // This pair (a → b), direction u, and its reverse (b → a), direction −u.
        float4 g = pair_grad[p];
        float4 h = pair_grad[nb.reverse[p]];
        float gu = g.y * u.x + g.z * u.y + g.w * u.z;
        float hu = -(h.y * u.x + h.z * u.y + h.w * u.z);
        // ∂E/∂r for a→b minus ∂E/∂r for b→a (whose r̂ is −u):
        fx += (g.x * u.x + (g.y - gu * u.x) * inv_d) - (-h.x * u.x + (h.y + hu * u.x) * inv_d);
        fy += (g.x * u.y + (g.z - gu * u.y) * inv_d) - (-h.x * u.y + (h.z + hu * u.y) * inv_d);
        fz += (g.x * u.z + (g.w - gu * u.z) * inv_d) - (-h.x * u.z + (h.w + hu * u.z) * inv_d);
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        fx += __shfl_down_sync(0xffffffffu, fx, offset);
        fy += __shfl_down_sync(0xffffffffu, fy, offset);
        fz += __shfl_down_sync(0xffffffffu, fz, offset);
    }
    if (lane == 0) {
        forces[3 * a] = fx;
        forces[3 * a + 1] = fy;
        forces[3 * a + 2] = fz;
    }
}
