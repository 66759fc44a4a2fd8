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
#ifndef PAIR_SPLIT
#define PAIR_SPLIT 1  // threads per channel sharing an atom's pair loop in the message kernels
#endif
#ifndef CHANNEL_SLICES
#define CHANNEL_SLICES 1  // blocks per atom in the message kernels, each with NF / CHANNEL_SLICES channels
#endif
#define MSG_CHANNELS (NF / CHANNEL_SLICES)
#define MSG_THREADS (PAIR_SPLIT * MSG_CHANNELS)
#if MSG_CHANNELS % 32 != 0
#error "a message block's channels must be whole warps"
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
    const uint4* fragments;  // the tensor-core message kernels' copy (message_mma_pack), or null
    // Exact powers of two the tensor-core kernels scale the weights, the basis and its derivative
    // by before splitting them into halves, so that both halves stay normal (message_mma.cu).
    float weight_scale, phi_scale, dphi_scale;
    float cutoff_slope;  // −π / (2 r_c) (Å⁻¹): cosine_cutoff_slope(cutoff), computed on the host
};

struct Neighbors {
    const int* count;
    const int* j;
    const int3* image;
    const int* reverse;  // index of the pair (j → i, −image)
    int capacity;
};

// A row of N floats from shared memory into registers, 16 bytes at a time where the row allows
// (rows of NK floats start 16-byte aligned when NK % 4 == 0).
template <int N>
__device__ __forceinline__ void load_row(float (&dst)[N], const float* src) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int k = 0; k < N; k += 4) {
            float4 v = *reinterpret_cast<const float4*>(src + k);
            dst[k] = v.x;
            dst[k + 1] = v.y;
            dst[k + 2] = v.z;
            dst[k + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; ++k) dst[k] = src[k];
    }
}

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
    // The same rows from a copy in shared memory (the one-cluster kernel's, rows 16-byte aligned).
    __device__ __forceinline__ void load_shared(const float* s, const float* r, const float* v, float3 bias) {
        load_row(ws, s);
        load_row(wr, r);
        load_row(wv, v);
        bs = bias.x;
        br = bias.y;
        bv = bias.z;
    }
    __device__ __forceinline__ float3 bias() const { return make_float3(bs, br, bv); }
};

// Cosine cutoff and its derivative; d < cutoff is checked by the caller.
// ∂f_c/∂d = slope · sin(π d / r_c): slope = −π / (2 r_c) (Å⁻¹). The message kernels take it from
// the host (Filter::cutoff_slope, the same f32 bits): computed in the kernel, the division is
// hoisted to the kernel's start, and its slow-path branch there held the row's loads back
// (perf-notes v52).
__device__ __forceinline__ float cosine_cutoff_slope(float cutoff) { return -0.5f * 3.14159265358979f / cutoff; }

__device__ __forceinline__ void cosine_cutoff(float d, float cutoff, float slope, float& fc, float& dfc) {
    float s, co;
    sincospif(d / cutoff, &s, &co);
    fc = 0.5f * (co + 1.0f);
    dfc = slope * s;
}

// Filter values (s, R, v) of one channel at one pair: bias + Σ_k W_k φ_k, with the channel's
// rows ws, wr, wv of the filter network and the pair's radial basis φ.
__device__ __forceinline__ float3 filter_at(const float* ws, const float* wr, const float* wv, float3 bias,
                                            const float* phi) {
    float3 f = bias;
#pragma unroll
    for (int k = 0; k < NK; ++k) {
        f.x += ws[k] * phi[k];
        f.y += wr[k] * phi[k];
        f.z += wv[k] * phi[k];
    }
    return f;
}

// One pair's message to channel c of the receiver (filter f, cutoff fc, r = (r_ij, 1/d)): the
// scalar part onto dq, the vector part φ_R x_R r̂ + φ_v x_v μ_j onto dm.
__device__ __forceinline__ void add_message(float3 f, float fc, float4 r, float xs, float xr, float xv, float mu0,
                                            float mu1, float mu2, float& dq, float dm[3]) {
    const float inv_d = r.w;
    dq += f.x * fc * xs;
    float radial = f.y * fc * xr * inv_d, vector = f.z * fc * xv;
    dm[0] += radial * r.x + vector * mu0;
    dm[1] += radial * r.y + vector * mu1;
    dm[2] += radial * r.z + vector * mu2;
}

// What the backward pass of one interaction needs of one atom, channel c: ∂E/∂q and ∂E/∂μ at the
// interaction output, μ at its input, and the context x (s, R, v).
struct ChannelState {
    float gq, gm[3], mu[3], x[3];
};

// The Gaussian radial basis φ_k(d) = exp(coeff_k (d − offset_k)²), coeff_k = −1 / (2 w_k²).
__device__ __forceinline__ float rbf_gaussian(float d, float offset, float coeff) {
    const float u = d - offset;
    return __expf(coeff * u * u);
}

// ∂φ_k/∂d of the Gaussian radial basis φ_k = exp(coeff_k (d − offset_k)²).
__device__ __forceinline__ float rbf_derivative(float d, float phi, float coeff, float offset) {
    return 2.0f * coeff * (d - offset) * phi;
}

// Backward of the two pairs between atoms a and b (same distance, so one filter serves), channel
// c. Returns the term of pair a → b (a receives) in (∂E/∂d, ∂E/∂r̂); adds those of pair b → a (a
// sends) to ∂E/∂x_a (gx) and ∂E/∂μ_a (gmu). u = r̂ of a → b; f the channel's filter values
// (s, R, v) at the pair and df their derivatives in d (without the cutoff); cut the pair's cosine
// cutoff and the cutoff's derivative.
__device__ __forceinline__ float4 pair_backward(const float u[3], float3 f, float3 df, float2 cut,
                                                const ChannelState& a, const ChannelState& b, float gx[3],
                                                float gmu[3]) {
    const float fc = cut.x, dfc = cut.y;
    // Pair a → b: a receives.
    float g_r = a.gm[0] * u[0] + a.gm[1] * u[1] + a.gm[2] * u[2];
    float g_v = a.gm[0] * b.mu[0] + a.gm[1] * b.mu[1] + a.gm[2] * b.mu[2];
    float gw_s = a.gq * b.x[0], gw_r = g_r * b.x[1], gw_v = g_v * b.x[2];  // ∂E/∂w (cutoff included)
    float radial = f.y * fc * b.x[1];
    float g_phi_dot = gw_s * df.x + gw_r * df.y + gw_v * df.z;
    // Pair b → a: a sends; its unit vector is −u.
    float h_r = -(b.gm[0] * u[0] + b.gm[1] * u[1] + b.gm[2] * u[2]);
    float h_v = b.gm[0] * a.mu[0] + b.gm[1] * a.mu[1] + b.gm[2] * a.mu[2];
    gx[0] += b.gq * f.x * fc;
    gx[1] += h_r * f.y * fc;
    gx[2] += h_v * f.z * fc;
    float vector_w = f.z * fc * a.x[2];
    for (int k = 0; k < 3; ++k) gmu[k] += b.gm[k] * vector_w;
    return make_float4(fc * g_phi_dot + dfc * (gw_s * f.x + gw_r * f.y + gw_v * f.z), a.gm[0] * radial,
                       a.gm[1] * radial, a.gm[2] * radial);
}

// The same with the filter computed here from the channel's rows (ws, wr, wv, bias) and the
// pair's radial basis phi and its derivative dphi (computed once per pair, not per channel).
__device__ __forceinline__ float4 pair_backward(const float u[3], const float* phi, const float* dphi, float2 cut,
                                                const float* ws, const float* wr, const float* wv, float3 bias,
                                                const ChannelState& a, const ChannelState& b, float gx[3],
                                                float gmu[3]) {
    float3 f = filter_at(ws, wr, wv, bias, phi);
    // ∂(filter − bias)/∂d, per filter part.
    float3 df = filter_at(ws, wr, wv, make_float3(0.f, 0.f, 0.f), dphi);
    return pair_backward(u, f, df, cut, a, b, gx, gmu);
}

// Force on atom a from its pair a → b and the reverse b → a: ∂E/∂r(a → b) − ∂E/∂r(b → a), with
// ∂E/∂r = g_d r̂ + (g_u − (g_u·r̂) r̂)/d; g, h the pairs' (∂E/∂d, ∂E/∂r̂), r = (r_ab, d).
__device__ __forceinline__ float3 pair_force(float4 g, float4 h, float4 r) {
    float inv_d = 1.0f / r.w;
    float3 u = make_float3(r.x * inv_d, r.y * inv_d, r.z * inv_d);
    float gu = g.y * u.x + g.z * u.y + g.w * u.z;
    float hu = -(h.y * u.x + h.z * u.y + h.w * u.z);
    // The reverse pair's r̂ is −u.
    return make_float3((g.x * u.x + (g.y - gu * u.x) * inv_d) - (-h.x * u.x + (h.y + hu * u.x) * inv_d),
                       (g.x * u.y + (g.z - gu * u.y) * inv_d) - (-h.x * u.y + (h.z + hu * u.y) * inv_d),
                       (g.x * u.z + (g.w - gu * u.z) * inv_d) - (-h.x * u.z + (h.w + hu * u.z) * inv_d));
}

// ---------------------------------------------------------------------------------------------
// Forward

// A context network's biases as the threads use them: b1 [F] of hidden unit t mod F, b2 [3F] of
// this block's channel (the threads of the element-wise steps: t < OWNED). Weights only: no kernel
// of the step writes them, so the reads may come before wait_for_previous_kernels
// (DENSE_EARLY_READS).
struct ContextBias {
    float b1, b2[3];
};

__device__ __forceinline__ ContextBias context_bias(const float* b1, const float* b2) {
    const int h = threadIdx.x % NF, c = owned_first() + threadIdx.x % OWNED;
    return ContextBias{b1[h], {b2[c], b2[NF + c], b2[2 * NF + c]}};
}

// Whether channel (or hidden unit) c is this block's to write: every block of a cluster computes
// the full hidden layers, one block writes each value.
__device__ __forceinline__ bool owns(int c) { return (unsigned)(c - owned_first()) < (unsigned)OWNED; }

// A later matvec's weights, read as soon as the matvec before it ends (perf-notes v53, v56), so
// that their latency passes during the element-wise step between the two, never during an
// exchange (v45): held in registers where MatvecWeights would hold a kernel's first matvec's and
// the model is at most 128 wide (wider, holding them took mixing_forward past 64 registers: one
// block of 512 threads per SM instead of two); otherwise read where the matvec runs.
// Held up to 16 weights per thread where blocks share SMs, 32 where each has its own (v57).
#define AHEAD_CHUNK (DENSE_ALONE ? 32 : 16)
#if CLUSTER > 1
template <int IN, int OUT, Slice KIND, int PARTS = 1>
using AheadWeights = MatvecWeights<IN, OUT, KIND, PARTS,
                                   NF <= 128 && MatvecLayout<IN, OUT, KIND, PARTS>::HELD &&
                                       MatvecLayout<IN, OUT, KIND, PARTS>::CHUNK <= AHEAD_CHUNK>;
#else
template <int IN, int OUT, Slice KIND, int PARTS = 1>
using AheadWeights = MatvecWeights<IN, OUT, KIND, PARTS>;
#endif

// x = W2 σ(W1 q + b1) + b2 for the block's TILE atoms (first atom a0), q in shared `q_sh` (row
// stride ld_q; this block's channels are enough); `hidden` [TILE][F] and `x_sh` [TILE][3F] are
// shared scratch. Saves the pre-activation for the backward pass. W1 is split over the
// cluster by inputs and W2 by outputs: one exchange (Slice).
template <class FirstWeights>
__device__ void context_mlp(const float* q_sh, int ld_q, float* hidden, float* x_sh, MatvecScratch& scratch,
                            const FirstWeights& w1, const float* w2t, ContextBias bias, float* pre_out, float* x_out,
                            int a0, int n_atoms) {
    const int t = threadIdx.x;
    const Reduced z1 = reduced_matvec<TILE, NF, NF>(w1, q_sh, ld_q, hidden, NF, scratch);
    const AheadWeights<NF, 3 * NF, Slice::Owned, 3> w2(w2t);
    if (t < NF) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float z = z1(a, t) + bias.b1;
            if (a0 + a < n_atoms && owns(t)) pre_out[(size_t)(a0 + a) * NF + t] = z;
            hidden[a * NF + t] = silu(z);
        }
    }
    __syncthreads();
    owned_matvec<TILE, NF, 3 * NF, 3>(w2, hidden, NF, x_sh, 3 * NF, scratch);
    if (t < OWNED) {
        const int c = owned_first() + t;
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            if (a0 + a >= n_atoms) continue;
            float* x = x_out + (size_t)(a0 + a) * 3 * NF;
#pragma unroll
            for (int m = 0; m < 3; ++m) x[m * NF + c] = x_sh[a * 3 * NF + m * NF + c] + bias.b2[m];
        }
    }
}

// Embedding and the first interaction's context: depend on the elements only, run once.
DENSE_KERNEL embed(const int* numbers, const float* embedding, const float* w1t, const float* b1,
                                 const float* w2t, const float* b2, float* q0, float* pre0, float* x0, int n_atoms) {
    const ContextBias bias = context_bias(b1, b2);
    const MatvecWeights<NF, NF, Slice::Reduced> w1(w1t);  // before the wait (perf-notes v46)
    dense_kernel_start();
    __shared__ float q_sh[TILE * NF], hidden[TILE * NF], x_sh[TILE * 3 * NF], partials[MATVEC_SCRATCH];
    MatvecScratch scratch{partials, 0};
    const int a0 = DENSE_TILE_INDEX * TILE, t = threadIdx.x;
    if (t < OWNED) {
        const int c = owned_first() + t;
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float q = a0 + a < n_atoms ? embedding[numbers[a0 + a] * NF + c] : 0.f;
            if (a0 + a < n_atoms) q0[(size_t)(a0 + a) * NF + c] = q;
            q_sh[a * NF + c] = q;
        }
    }
    __syncthreads();
    context_mlp(q_sh, NF, hidden, x_sh, scratch, w1, w2t, bias, pre0, x0, a0, n_atoms);
}

// What every message kernel keeps of a chunk's pairs: the neighbor, where the pair sits in the
// chunk, its geometry and cutoff.
template <int CHUNK>
struct ChunkPairs {
    int j[CHUNK];
    int slot[CHUNK];    // position of the pair in the chunk (its neighbor-row entry − chunk start)
    float4 r[CHUNK];    // r (Å) and 1/d (Å⁻¹; d where RECIPROCAL is false): one division per pair, not per pair and channel
    float2 cut[CHUNK];  // cosine cutoff and its derivative at d
    // The radial basis' centres (Å) and −0.5 / w_k², copied from the model's weights as the
    // kernel starts, before it waits for the previous one (no kernel writes them): read in the
    // geometry phase instead, after the row's loads and the chunk's barrier, they took one to three
    // more rounds of latency per message kernel (perf-notes v52). From sm_80 the copy is
    // asynchronous (cp.async), so that it holds no registers and no load waits for it;
    // compact_chunk waits for it before its first barrier.
    float basis_offset[NK], basis_coeff[NK];
    __device__ __forceinline__ void copy_basis(const Filter& filter) {
        for (int m = threadIdx.x; m < NK; m += blockDim.x) {
#if __CUDA_ARCH__ >= 800
            const u32 offset_at = (u32)__cvta_generic_to_shared(basis_offset + m),
                      coeff_at = (u32)__cvta_generic_to_shared(basis_coeff + m);
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(offset_at), "l"(filter.offsets + m));
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(coeff_at), "l"(filter.coeffs + m));
#else
            basis_offset[m] = filter.offsets[m];
            basis_coeff[m] = filter.coeffs[m];
#endif
        }
#if __CUDA_ARCH__ >= 800
        asm volatile("cp.async.commit_group;\n" ::);
#endif
    }
    // This thread's part of the copy has landed (visible to the block after the next barrier).
    __device__ __forceinline__ void basis_copied() const {
#if __CUDA_ARCH__ >= 800
        asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
    }
    template <bool RECIPROCAL = true>
    __device__ __forceinline__ void store(int k, int neighbor, int position, float3 v, float d, float cutoff,
                                          float cutoff_slope) {
        j[k] = neighbor;
        slot[k] = position;
        r[k] = make_float4(v.x, v.y, v.z, RECIPROCAL ? 1.0f / d : d);
        float fc, dfc;
        cosine_cutoff(d, cutoff, cutoff_slope, fc, dfc);
        cut[k] = make_float2(fc, dfc);
    }
};

// Geometry of up to CHUNK candidates of a row, computed by the block at once (one round of
// global-load latency per chunk instead of one per pair) and compacted to the pairs within the
// cutoff, so that the pair loops that follow have no branches and can keep several pairs' loads in
// flight. Everything here depends on the pair alone and is shared by all channels; WITH_DPHI adds
// the radial basis' derivative for the backward pass (per channel it cost two global loads and
// four operations per radial function and pair: docs/perf-notes.md, v17).
template <int CHUNK, bool WITH_DPHI>
struct ChunkGeometry : ChunkPairs<CHUNK> {
    static_assert(CHUNK % 32 == 0 && CHUNK <= MSG_THREADS, "a chunk is whole warps of the block's threads");
    float phi[CHUNK][NK];  // radial basis φ_k(d), computed once per pair for all channels
    float dphi[WITH_DPHI ? CHUNK : 1][NK];  // ∂φ_k/∂d (Å⁻¹)
    int warp_count[CHUNK / 32];
};

// Candidates per chunk in the message kernels: one per thread, at most NF, fewer (in whole warps)
// while the kernel's static shared memory (the chunk's geometry and the per-pair or per-split
// partial sums) would pass 45 KB of the 48 KB limit: wide models and large radial bases.
__host__ __device__ constexpr int message_shared_bytes(int chunk, bool backward) {
    int per_pair = 4 + 4 + 16 + 8 + (backward ? 2 : 1) * NK * 4;  // j, slot, r, cut, φ (and ∂φ/∂d)
    // The basis' parameters (ChunkPairs::copy_basis, 8·NK ≤ 512 bytes) fit in the 3 KB margin
    // below 48 KB; not counted here, so that the chunk sizes (and the sums' order) stay as they were.
    int geometry = chunk * per_pair + 4 * (chunk / 32);
    int partial = (PAIR_SPLIT > 1 ? PAIR_SPLIT - 1 : 1) * (backward ? 6 : 4) * MSG_CHANNELS * 4;
    int warp_part = backward ? chunk * (MSG_CHANNELS / 32) * 16 : 0;
    return geometry + (warp_part > partial ? warp_part : partial);
}

// The largest chunk, at most `limit` candidates and whole warps, whose kernel's static shared
// memory bytes(chunk) stays within 45 KB of the 48 KB a block may have (both message kernel pairs).
template <class Bytes>
__host__ __device__ constexpr int chunk_within_shared_memory(int limit, Bytes bytes) {
    int chunk = limit;
    while (chunk > 32 && bytes(chunk) > 45 * 1024) chunk -= 32;
    return chunk;
}

__host__ __device__ constexpr int message_chunk(bool backward) {
    return chunk_within_shared_memory(MSG_THREADS < NF ? MSG_THREADS : NF,
                                      [=](int chunk) { return message_shared_bytes(chunk, backward); });
}
#define FORWARD_CHUNK message_chunk(false)
#define BACKWARD_CHUNK message_chunk(true)

// Compacts candidates [chunk, chunk + CHUNK) of row `i` (row end `end`) to the pairs within the
// cutoff, in row order, so that the pair loops that follow have no branches: the thread of the
// k-th pair inside calls store(k, j, slot, r, d) (slot: its position in the chunk), then thread k
// calls pad(k) for k from the count up to the next multiple of PAD. The block's first CHUNK
// threads take one candidate each; every thread must call it. Ends with a barrier; returns the
// number of pairs inside. The candidate's neighbor index and image, and atom i's position, are
// read before the row's count is needed: a row holds nb.capacity entries, so those reads stay in
// bounds, and they go out in the same round of latency as the count's, not one after it
// (perf-notes v48); entries past `end` are not used.
// Before its first barrier it waits for this thread's part of the basis copy (ChunkPairs::copy_basis).
template <int CHUNK, int PAD, class Chunk, class Store, class Pad>
__device__ __forceinline__ int compact_chunk(Chunk& g, const double* pos, const Cell& cell,
                                             const Neighbors& nb, int i, int chunk, int end, float cutoff2,
                                             Store store, Pad pad) {
    static_assert(CHUNK % 32 == 0 && CHUNK % PAD == 0, "a chunk is whole warps and whole pads");
    int t = threadIdx.x, p = chunk + t, lane = t & 31, warp = t >> 5;
    bool inside = false;
    int j = 0;
    int3 image = make_int3(0, 0, 0);
    if (t < CHUNK && p < (i + 1) * nb.capacity) {
        j = nb.j[p];
        image = nb.image[p];
    }
    const double3 pos_i = make_double3(pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]);
    float3 r = make_float3(0.f, 0.f, 0.f);
    float d2 = 0.f;
    if (t < CHUNK && p < end) {
        r = pair_vector(pos_i, pos, j, cell, image);
        d2 = r.x * r.x + r.y * r.y + r.z * r.z;
        inside = d2 < cutoff2;
    }
    u32 ballot = __ballot_sync(0xffffffffu, inside);
    if (lane == 0 && t < CHUNK) g.warp_count[warp] = __popc(ballot);
    g.basis_copied();
    __syncthreads();
    int offset = 0, total = 0;
#pragma unroll
    for (int w = 0; w < CHUNK / 32; ++w) {
        offset += w < warp ? g.warp_count[w] : 0;
        total += g.warp_count[w];
    }
    if (inside) store(offset + __popc(ballot & ((1u << lane) - 1u)), j, t, r, sqrtf(d2));
    if (PAD > 1 && t >= total && t < (total + PAD - 1) / PAD * PAD) pad(t);
    __syncthreads();
    return total;
}

// Fills `g` with the pairs within the cutoff among candidates [chunk, chunk + CHUNK) of row `i`
// (row end `end`), in row order; returns how many. The block's first CHUNK threads do it; every
// thread must call it. Ends with a barrier.
template <int CHUNK, bool WITH_DPHI>
__device__ __forceinline__ int load_chunk(ChunkGeometry<CHUNK, WITH_DPHI>& g, const double* pos, const Cell& cell,
                                          const Neighbors& nb, const Filter& filter, int i, int chunk, int end,
                                          float cutoff2) {
    auto store = [&](int k, int j, int slot, float3 r, float d) {
        g.store(k, j, slot, r, d, filter.cutoff, filter.cutoff_slope);
#pragma unroll
        for (int m = 0; m < NK; ++m) {
            const float phi = rbf_gaussian(d, g.basis_offset[m], g.basis_coeff[m]);
            g.phi[k][m] = phi;
            if constexpr (WITH_DPHI) g.dphi[k][m] = rbf_derivative(d, phi, g.basis_coeff[m], g.basis_offset[m]);
        }
    };
    return compact_chunk<CHUNK, 1>(g, pos, cell, nb, i, chunk, end, cutoff2, store, [](int) {});
}

// The first interaction's message kernel zeroes the pair-gradient rows that the backward
// message kernels then accumulate into (atom i's `count` neighbors, in this block's channel
// slice), so the step has no memset between its kernels (a memset node would cut the chain of
// programmatic launches; perf-notes v36). Null: nothing to clear. Called after the pair loop:
// before it, its stores (which might alias the neighbor rows, for all the compiler knows) kept
// the row's loads from going out early (perf-notes v48).
__device__ __forceinline__ void clear_pair_gradients(float4* pair_grad, const Neighbors& nb, int i, int slice,
                                                     int count) {
    if (pair_grad == nullptr) return;
    float4* row = pair_grad + ((size_t)slice * (gridDim.x / CHANNEL_SLICES) + i) * nb.capacity;
    for (int k = threadIdx.x; k < count; k += blockDim.x) row[k] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// Interaction: radial basis, cutoff, filter, message and aggregation over the neighbors of
// atom i, fused; nothing per pair is written to memory. CHANNEL_SLICES blocks per atom, each with
// MSG_CHANNELS of the channels and PAIR_SPLIT·MSG_CHANNELS threads: thread (ps, c) takes channel c
// of the pairs q ≡ ps (mod PAIR_SPLIT), and the PAIR_SPLIT partial sums are added in a fixed order.
// Both splits put more warps on an atom while atoms are few (the pair loop is latency-bound).
extern "C" __global__ void __launch_bounds__(MSG_THREADS)
    message_forward(const double* pos, Cell cell, Neighbors nb, Filter filter, const float* q_in,
                    const float* mu_in, const float* x, float* q_out,
                    float* mu_out, float4* pair_grad_to_clear) {
    launch_next_kernel();
    __shared__ ChunkGeometry<FORWARD_CHUNK, false> g;
    __shared__ float partial[PAIR_SPLIT > 1 ? PAIR_SPLIT - 1 : 1][4][MSG_CHANNELS];
    static_assert(sizeof(g) + sizeof(partial) <= 48 * 1024, "message_forward: static shared memory over 48 KB");
    const int i = blockIdx.x / CHANNEL_SLICES, local = threadIdx.x % MSG_CHANNELS, ps = threadIdx.x / MSG_CHANNELS;
    const int c = (blockIdx.x % CHANNEL_SLICES) * MSG_CHANNELS + local;
    ChannelFilter w;
    w.load(filter, c);
    g.copy_basis(filter);
    wait_for_previous_kernels();
    const int count = nb.count[i];
    // Atom i's own features, read with the row (not after the pair loop, a round of their own).
    const float q_old = q_in[i * NF + c];
    float mu_old[3];
    for (int k = 0; k < 3; ++k) mu_old[k] = mu_in[(size_t)i * 3 * NF + k * NF + c];
    float cutoff2 = filter.cutoff * filter.cutoff;
    float dq = 0.f, dm[3] = {0.f, 0.f, 0.f};
    const float3 bias = w.bias();
    int begin = i * nb.capacity, end = begin + count;
    // The first chunk runs whatever the count (an empty row has no pairs inside), so that its
    // loads need not wait for the count (compact_chunk).
    for (int chunk = begin; chunk == begin || chunk < end; chunk += FORWARD_CHUNK) {
        int n = load_chunk(g, pos, cell, nb, filter, i, chunk, end, cutoff2);
#pragma unroll 4
        for (int q = ps; q < n; q += PAIR_SPLIT) {
            float4 r = g.r[q];
            const float fc = g.cut[q].x;
            float3 f = filter_at(w.ws, w.wr, w.wv, bias, g.phi[q]);
            const float* xj = x + (size_t)g.j[q] * 3 * NF;
            const float* mj = mu_in + (size_t)g.j[q] * 3 * NF;
            add_message(f, fc, r, xj[c], xj[NF + c], xj[2 * NF + c], mj[c], mj[NF + c], mj[2 * NF + c], dq, dm);
        }
        __syncthreads();  // before the next chunk overwrites g
    }
    clear_pair_gradients(pair_grad_to_clear, nb, i, blockIdx.x % CHANNEL_SLICES, count);
    if (PAIR_SPLIT > 1) {
        if (ps > 0) {
            partial[ps - 1][0][local] = dq;
            for (int k = 0; k < 3; ++k) partial[ps - 1][k + 1][local] = dm[k];
        }
        __syncthreads();
        if (ps > 0) return;
        for (int s = 0; s < PAIR_SPLIT - 1; ++s) {
            dq += partial[s][0][local];
            for (int k = 0; k < 3; ++k) dm[k] += partial[s][k + 1][local];
        }
    }
    q_out[i * NF + c] = q_old + dq;
    float* mo = mu_out + (size_t)i * 3 * NF;
    for (int k = 0; k < 3; ++k) mo[k * NF + c] = mu_old[k] + dm[k];
}

struct MixingWeights {
    const float* mix_t;  // mu_channel_mix ᵀ [F, 2F]
    const float* a1t;    // intraatomic_context_net.0 ᵀ [2F, F]
    const float* b1;
    const float* a2t;    // intraatomic_context_net.1 ᵀ [F, 3F]; the last layer's [F, 2F] (UPDATE_PARTS)
    const float* b2;     // [3F], the last layer's too
    float epsilon;
};

// The update network's (a_ss, a_vv, a_sv) parts that a mixing computes. The last layer's μ has no
// reader (the readout takes q), so ∂E/∂μ at its output is 0, and with it ∂E/∂a_vv = ∂E/∂μ·U and
// the a_vv term of ∂E/∂U = ∂E/∂μ·a_vv: its a_vv third is computed only to be multiplied by zeros.
// With LAST_WITHOUT_A_VV, mixing_forward_last takes the second layer without it (the host drops
// those F rows of W, F columns of Wᵀ): a_ss and a_sv are its parts 0 and 1 (perf-notes v68).
#ifndef LAST_WITHOUT_A_VV
#define LAST_WITHOUT_A_VV 0
#endif
template <bool LAST>
constexpr int UPDATE_PARTS = LAST && LAST_WITHOUT_A_VV ? 2 : 3;

struct Readout {
    const float* w1t;  // [F, H]
    const float* b1;   // [H]
    const float* w1;   // [H, F]
    const float* w2;   // [H]
    float b2, scale, mean_per_atom;
    const float* atomref;  // [100]
    const int* numbers;
};

struct MixingCache {
    float* vu;    // [N, 3, 2F]: V (first F) and U per Cartesian row
    float* norm;  // [N, F]
    float* pre;   // [N, F]
    float* a;     // [N, 3F]
};

// The mixing backward below the per-atom inputs, shared by mixing_backward and (last layer)
// mixing_forward_last: from ∂E/∂q, ∂E/∂μ at mixing t's output to its input. The threads split
// the element-wise work as in the forward: channel c = owned_first() + t for t < OWNED, hidden
// unit t for t < F. Each network's backward mirrors its forward (a layer split by outputs there
// is split by inputs here, and the other way round), and mixᵀ sends each block only the sums of
// the channels it owns (Scattered): two exchanges (Slice, perf-notes v54).
struct MixingBackWeights {
    const float* mix;  // mu_channel_mix [2F, F]
    const float* a1;   // intraatomic_context_net.0 [F, 2F]
    const float* a2;   // intraatomic_context_net.1 [3F, F]; the last layer's [2F, F] (UPDATE_PARTS)
};

// One thread's per-atom inputs: of its channel (gq: ∂E/∂q and gm: ∂E/∂μ at the mixing output,
// V and U, a_vv and a_sv of the update network, the norm ‖V‖), and the update network's
// pre-activation of its hidden unit.
struct MixingBackInputs {
    float gq[TILE], gm[TILE][3], V[TILE][3], U[TILE][3], a_vv[TILE], a_sv[TILE], pre[TILE], norm[TILE];
};

// One matvec over the 3·TILE (atom, Cartesian) rows of ∂E/∂(V, U) where the accumulators allow.
#define MIX_ROWS (3 * TILE <= MATVEC_ACC)

// Shared arrays: ga [TILE·3F], gz [TILE·F], gctx [TILE·2F], gvu [TILE·6F], out [TILE·F, 3× that
// where MIX_ROWS]. Its first step writes ga and gvu: the caller's reads of those (and of gz,
// gctx and out) must be behind a barrier. LAST: ∂E/∂μ at the output is 0 (in.gm are zeros, in.a_vv
// is not read), and with UPDATE_PARTS<LAST> = 2 m.a2 has no a_vv rows.
template <bool LAST>
__device__ __forceinline__ void mixing_backward_tail(const MixingBackInputs& in, const MixingBackWeights& m,
                                                     float* ga, float* gz, float* gctx, float* gvu, float* out,
                                                     MatvecScratch& scratch, float* grad_q_in, float* grad_mu_in,
                                                     int a0, int n_atoms) {
    const int t = threadIdx.x, c = owned_first() + t % OWNED;
    constexpr int PARTS = UPDATE_PARTS<LAST>;
    const AheadWeights<PARTS * NF, NF, Slice::Reduced, PARTS> w_a2(m.a2);
#pragma unroll
    for (int a = 0; a < TILE; ++a) {
        if (t >= OWNED || a0 + a >= n_atoms) {
            if (t < OWNED) {
                for (int k = 0; k < 3; ++k) ga[a * 3 * NF + k * NF + c] = 0.f;
                for (int k = 0; k < 6; ++k) gvu[a * 6 * NF + k * NF + c] = 0.f;
            }
            continue;
        }
        const float gq = in.gq[a];
        float vdotu = in.V[a][0] * in.U[a][0] + in.V[a][1] * in.U[a][1] + in.V[a][2] * in.U[a][2];
        ga[a * 3 * NF + c] = gq;
        if constexpr (PARTS == 3)
            ga[a * 3 * NF + NF + c] = in.gm[a][0] * in.U[a][0] + in.gm[a][1] * in.U[a][1] + in.gm[a][2] * in.U[a][2];
        ga[a * 3 * NF + (PARTS - 1) * NF + c] = gq * vdotu;
        float g_vdotu = gq * in.a_sv[a];
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            gvu[a * 6 * NF + k * 2 * NF + c] = g_vdotu * in.U[a][k];
            gvu[a * 6 * NF + k * 2 * NF + NF + c] = LAST ? g_vdotu * in.V[a][k] : in.gm[a][k] * in.a_vv[a] + g_vdotu * in.V[a][k];
        }
    }
    __syncthreads();
    const Reduced ha = reduced_matvec<TILE, PARTS * NF, NF, PARTS>(w_a2, ga, 3 * NF, gz, NF, scratch);
    const AheadWeights<NF, 2 * NF, Slice::Owned, 2> w_a1(m.a1);
    if (t < NF) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) gz[a * NF + t] = ha(a, t) * (a0 + a < n_atoms ? silu_grad(in.pre[a]) : 0.f);
    }
    __syncthreads();
    owned_matvec<TILE, NF, 2 * NF, 2>(w_a1, gz, NF, gctx, 2 * NF, scratch);
    const AheadWeights<2 * NF, NF, Slice::Scattered, 2> w_mix(m.mix);
    if (t < OWNED) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            if (a0 + a >= n_atoms) continue;
            size_t atom = a0 + a;
            grad_q_in[atom * NF + c] = in.gq[a] + gctx[a * 2 * NF + c];
#pragma unroll
            for (int k = 0; k < 3; ++k)
                gvu[a * 6 * NF + k * 2 * NF + c] += gctx[a * 2 * NF + NF + c] * in.V[a][k] / in.norm[a];
        }
    }
    __syncthreads();
    // ∂E/∂μ_in = ∂E/∂μ_out + mixᵀ ∂E/∂(V, U), per (atom, Cartesian) row 3a + k.
    if constexpr (MIX_ROWS) {
        const Reduced gmix = scattered_matvec<3 * TILE, 2 * NF, NF, 2>(w_mix, gvu, 2 * NF, out, NF, scratch);
        if (t < OWNED) {
#pragma unroll
            for (int a = 0; a < TILE; ++a)
                if (a0 + a < n_atoms)
                    for (int k = 0; k < 3; ++k)
                        grad_mu_in[(size_t)(a0 + a) * 3 * NF + k * NF + c] = in.gm[a][k] + gmix(3 * a + k, c);
        }
    } else {
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const Reduced gmix = scattered_matvec<TILE, 2 * NF, NF, 2>(w_mix, gvu + k * 2 * NF, 6 * NF, out, NF, scratch);
            if (t < OWNED) {
#pragma unroll
                for (int a = 0; a < TILE; ++a)
                    if (a0 + a < n_atoms) grad_mu_in[(size_t)(a0 + a) * 3 * NF + k * NF + c] = in.gm[a][k] + gmix(a, c);
            }
        }
    }
}

// What the last layer's mixing kernel does after the mixing: the atomwise readout, the atoms'
// energies, and the whole mixing backward (∂E/∂μ at the output is 0), so that the step needs no
// mixing_backward launch for the last layer (perf-notes v55).
struct LastLayer {
    Readout ro;
    float* atom_energy;  // [N]
    MixingBackWeights back;
    float* grad_q_in;   // ∂E/∂q at the last mixing's input [N, F]
    float* grad_mu_in;  // ∂E/∂μ there [N, 3F]
    __device__ const float* first_weights() const { return ro.w1t; }  // of what follows the mixing
};

// What a mixing kernel of a layer below the last does after the mixing: the next interaction's
// context network, and the cache that this layer's mixing_backward reads.
struct NextLayer {
    const float* w1t, *b1, *w2t, *b2;  // interatomic_context_net.{0,1} of interaction t + 1
    float* pre;                         // its pre-activations [N, F]
    float* x;                           // its context x [N, 3F]
    float* q_out;                       // q and μ after the mixing [N, F], [N, 3F]
    float* mu_out;
    __device__ const float* first_weights() const { return w1t; }  // of what follows the mixing
};

// Mixing, fused with what follows on the same atoms (NextLayer or LastLayer). blockDim = SPLIT·NF,
// TILE atoms per block. The element-wise work on channels is done by the threads t < OWNED, for
// channel owned_first() + t; on hidden units by the threads t < F (H), in every block of a
// cluster. Three exchanges per layer became one (Slice, perf-notes v54): V and U, and the update
// network's second layer, are Owned (this block's channels only: what its element-wise steps
// need); the update network's first layer is Reduced.
template <bool LAST, class After>
__device__ __forceinline__ void mixing_forward_body(const float* q_in, const float* mu_in, const MixingWeights& m,
                                                    const MixingCache& cache, const After& after, int n_atoms) {
    const int a0 = DENSE_TILE_INDEX * TILE, t = threadIdx.x, first = owned_first(), c = first + t % OWNED;
    // Biases, the readout's second layer and the atoms' reference energies (weights and elements
    // only: before the wait where DENSE_EARLY_READS).
    ContextBias update_bias, next_bias{};
    float readout_b1 = 0.f, readout_w2 = 0.f, atomref[TILE];
    auto read_update_bias = [&] { update_bias = context_bias(m.b1, m.b2); };
    auto read_next_bias = [&] {
        if constexpr (LAST) {
            if (t < NH) {
                readout_b1 = after.ro.b1[t];
                readout_w2 = after.ro.w2[t];
            }
#pragma unroll
            for (int a = 0; a < TILE; ++a)
                atomref[a] = t == 0 && a0 + a < n_atoms ? after.ro.atomref[after.ro.numbers[a0 + a]] : 0.f;
        } else {
            next_bias = context_bias(after.b1, after.b2);
        }
    };
    if constexpr (DENSE_EARLY_READS) {
        read_update_bias();
        read_next_bias();
    }
    // The first matvec's weights before the wait (perf-notes v46).
    const MatvecWeights<NF, 2 * NF, Slice::Owned, 2> w_mix(m.mix_t);
    dense_kernel_start();
    __shared__ float mu_sh[TILE * 3 * NF], ctx[TILE * 2 * NF], hidden[TILE * NF], vu[TILE * 6 * NF],
        out3[TILE * 3 * NF], partials[MATVEC_SCRATCH], red[64];
    MatvecScratch scratch{partials, 0};
    for (int k = t; k < TILE * 3 * NF; k += blockDim.x) {
        int a = k / (3 * NF);
        mu_sh[k] = a0 + a < n_atoms ? mu_in[(size_t)a0 * 3 * NF + k] : 0.f;
    }
    float q[TILE], vdotu[TILE], pre[TILE];
#pragma unroll
    for (int a = 0; a < TILE; ++a) {
        pre[a] = 0.f;
        q[a] = a0 + a < n_atoms ? q_in[(size_t)(a0 + a) * NF + c] : 0.f;
        if (t < OWNED) ctx[a * 2 * NF + c] = q[a];
    }
    __syncthreads();
    // V and U of this block's channels for every (atom, Cartesian) row: row 3a + k of μ is at
    // (3a + k)·NF, of vu at (3a + k)·2NF.
    if constexpr (3 * TILE <= MATVEC_ACC) {
        owned_matvec<3 * TILE, NF, 2 * NF, 2>(w_mix, mu_sh, NF, vu, 2 * NF, scratch);
    } else {
#pragma unroll
        for (int k = 0; k < 3; ++k)
            owned_matvec<TILE, NF, 2 * NF, 2>(w_mix, mu_sh + k * NF, 3 * NF, vu + k * 2 * NF, 6 * NF, scratch);
    }
    const AheadWeights<2 * NF, NF, Slice::Reduced, 2> w_a1(m.a1t);
    if (t < OWNED) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            const float* v = vu + a * 6 * NF;
            float V0 = v[c], V1 = v[2 * NF + c], V2 = v[4 * NF + c];
            float U0 = v[NF + c], U1 = v[3 * NF + c], U2 = v[5 * NF + c];
            float norm = sqrtf(V0 * V0 + V1 * V1 + V2 * V2 + m.epsilon);
            ctx[a * 2 * NF + NF + c] = norm;
            vdotu[a] = V0 * U0 + V1 * U1 + V2 * U2;
            if (!LAST && a0 + a < n_atoms) {
                float* cv = cache.vu + (size_t)(a0 + a) * 6 * NF;
                for (int k = 0; k < 6; ++k) cv[k * NF + c] = v[k * NF + c];
                cache.norm[(size_t)(a0 + a) * NF + c] = norm;
            }
        }
    }
    __syncthreads();
    const Reduced z1 = reduced_matvec<TILE, 2 * NF, NF, 2>(w_a1, ctx, 2 * NF, hidden, NF, scratch);
    constexpr int PARTS = UPDATE_PARTS<LAST>;
    const AheadWeights<NF, PARTS * NF, Slice::Owned, PARTS> w_a2(m.a2t);
    if constexpr (!DENSE_EARLY_READS) read_update_bias();
    if (t < NF) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            pre[a] = z1(a, t) + update_bias.b1;
            if (!LAST && a0 + a < n_atoms && owns(t)) cache.pre[(size_t)(a0 + a) * NF + t] = pre[a];
            hidden[a * NF + t] = silu(pre[a]);
        }
    }
    __syncthreads();
    owned_matvec<TILE, NF, PARTS * NF, PARTS>(w_a2, hidden, NF, out3, 3 * NF, scratch);
    // The next interaction's context network's or the readout's first weights.
    const AheadWeights<NF, LAST ? NH : NF, Slice::Reduced> w_next(after.first_weights());
    if (t < OWNED) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            float* o = out3 + a * 3 * NF;
            float a_ss = o[c] + update_bias.b2[0], a_sv = o[(PARTS - 1) * NF + c] + update_bias.b2[2];
            float q_new = q[a] + a_ss + a_sv * vdotu[a];
            ctx[a * 2 * NF + c] = q_new;
            if constexpr (LAST) {
                // a_sv, kept for the backward below: the readout writes only the first H columns.
                static_assert(NH <= NF, "the readout's ∂E/∂q columns stay clear of a_sv's");
                o[NF + c] = a_sv;
            } else {
                const float a_vv = o[NF + c] + update_bias.b2[1];
                if (a0 + a >= n_atoms) continue;
                size_t atom = a0 + a;
                float* ca = cache.a + atom * 3 * NF;
                ca[c] = a_ss;
                ca[NF + c] = a_vv;
                ca[2 * NF + c] = a_sv;
                after.q_out[atom * NF + c] = q_new;
                const float* v = vu + a * 6 * NF;
                float* mo = after.mu_out + atom * 3 * NF;
#pragma unroll
                for (int k = 0; k < 3; ++k)
                    mo[k * NF + c] = mu_sh[a * 3 * NF + k * NF + c] + a_vv * v[k * 2 * NF + NF + c];
            }
        }
    }
    __syncthreads();
    if constexpr (!DENSE_EARLY_READS) read_next_bias();
    if constexpr (!LAST) {
        context_mlp(ctx, 2 * NF, hidden, out3, scratch, w_next, after.w2t, next_bias, after.pre, after.x, a0, n_atoms);
    } else {
        // Readout y = w2 · σ(W1 q + b1) + b2, energies, and ∂E/∂q = scale · W1ᵀ (w2 ⊙ σ'(z)): W1
        // by inputs, W1ᵀ by outputs, one exchange.
        const Reduced zr = reduced_matvec<TILE, NF, NH>(w_next, ctx, 2 * NF, hidden, NF, scratch);
        const AheadWeights<NH, NF, Slice::Owned> w_back(after.ro.w1);
        float contribution[4] = {0.f, 0.f, 0.f, 0.f};
        if (t < NH) {
#pragma unroll
            for (int a = 0; a < TILE; ++a) {
                float z = zr(a, t) + readout_b1;
                contribution[a] = readout_w2 * silu(z);
                out3[a * 3 * NF + t] = after.ro.scale * readout_w2 * silu_grad(z);
            }
        }
        float4 total = block_sum4(make_float4(contribution[0], contribution[1], contribution[2], contribution[3]), red);
        if (t == 0 && first == 0) {
            float sums[4] = {total.x, total.y, total.z, total.w};
#pragma unroll
            for (int a = 0; a < TILE; ++a)
                if (a0 + a < n_atoms)
                    after.atom_energy[a0 + a] = after.ro.scale * (sums[a] + after.ro.b2) + after.ro.mean_per_atom + atomref[a];
        }
        // ∂E/∂q at the mixing output into hidden (the Reduced sums above, read before
        // block_sum4's barriers).
        owned_matvec<TILE, NH, NF>(w_back, out3, 3 * NF, hidden, NF, scratch);
        // The backward's inputs from shared memory (∂E/∂μ at the output is 0), then its arrays
        // over the forward's: every read above happens before the barrier.
        MixingBackInputs in;
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            in.pre[a] = pre[a];
            in.gq[a] = t < OWNED ? hidden[a * NF + c] : 0.f;
            in.a_sv[a] = out3[a * 3 * NF + NF + c];
            in.norm[a] = ctx[a * 2 * NF + NF + c];
#pragma unroll
            for (int k = 0; k < 3; ++k) {
                in.gm[a][k] = 0.f;
                in.V[a][k] = vu[a * 6 * NF + k * 2 * NF + c];
                in.U[a][k] = vu[a * 6 * NF + k * 2 * NF + NF + c];
            }
        }
        __syncthreads();
        mixing_backward_tail<true>(in, after.back, mu_sh, hidden, ctx, vu, out3, scratch, after.grad_q_in, after.grad_mu_in,
                             a0, n_atoms);
    }
}

DENSE_KERNEL mixing_forward(const float* q_in, const float* mu_in, MixingWeights m, MixingCache cache, NextLayer next,
                            int n_atoms) {
    mixing_forward_body<false>(q_in, mu_in, m, cache, next, n_atoms);
}

DENSE_KERNEL mixing_forward_last(const float* q_in, const float* mu_in, MixingWeights m, LastLayer last, int n_atoms) {
    mixing_forward_body<true>(q_in, mu_in, m, MixingCache{}, last, n_atoms);
}

// ---------------------------------------------------------------------------------------------
// Backward

// The next interaction's context-network backward, fused into mixing_backward (perf-notes v38):
// ∂E/∂q at this mixing's output is grad_q + W1ᵀ(σ'(pre) ⊙ W2ᵀ grad_x) of interaction t + 1,
// all per atom.
struct ContextBack {
    const float* w1;      // interatomic_context_net.0 of interaction t + 1 [F, F]
    const float* w2;      // interatomic_context_net.1 [3F, F]
    const float* pre;     // its pre-activations [N, F]
    const float* grad_x;  // ∂E/∂x of interaction t + 1 [N, 3F]
    const float* grad_q;  // ∂E/∂q at interaction t + 1's output [N, F]
};

// Gradients through mixing t < T − 1 (the last layer's run in mixing_forward_last), with the
// next interaction's context backward first: three exchanges (perf-notes v54).
DENSE_KERNEL mixing_backward(MixingBackWeights m, MixingCache cache, ContextBack next_context,
                                           const float* grad_mu_out, float* grad_q_in, float* grad_mu_in,
                                           int n_atoms) {
    // The first matvec's weights before the wait (perf-notes v46), where they are held (v57).
    const AheadWeights<3 * NF, NF, Slice::Reduced, 3> w2(next_context.w2);
    dense_kernel_start();
    __shared__ float ga[TILE * 3 * NF], gz[TILE * NF], gctx[TILE * 2 * NF], gvu[TILE * 6 * NF],
        out[(MIX_ROWS ? 3 : 1) * TILE * NF], partials[MATVEC_SCRATCH];
    MatvecScratch scratch{partials, 0};
    const int a0 = DENSE_TILE_INDEX * TILE, t = threadIdx.x, first = owned_first(), c = first + t % OWNED;
    // What this kernel reads of earlier kernels' per-atom outputs: of channel c (threads
    // t < OWNED), and the pre-activations of hidden unit t (t < F). Where DENSE_EARLY_READS, all of
    // it right after the wait, ahead of the context backward's matvecs; otherwise just before the
    // mixing backward, as one round.
    MixingBackInputs in;
    float next_pre[TILE];
    auto read_inputs = [&] {
#pragma unroll
        for (int a = 0; a < TILE; ++a) {
            in.gq[a] = in.a_vv[a] = in.a_sv[a] = in.pre[a] = in.norm[a] = 0.f;
#pragma unroll
            for (int k = 0; k < 3; ++k) in.gm[a][k] = in.V[a][k] = in.U[a][k] = 0.f;
            if (t >= NF || a0 + a >= n_atoms) continue;
            const size_t atom = a0 + a;
            in.pre[a] = cache.pre[atom * NF + t];
            if (t >= OWNED) continue;
            in.gq[a] = next_context.grad_q[atom * NF + c];
            const float* vu = cache.vu + atom * 6 * NF;
#pragma unroll
            for (int k = 0; k < 3; ++k) {
                in.gm[a][k] = grad_mu_out[atom * 3 * NF + k * NF + c];
                in.V[a][k] = vu[k * 2 * NF + c];
                in.U[a][k] = vu[k * 2 * NF + NF + c];
            }
            in.a_vv[a] = cache.a[atom * 3 * NF + NF + c];
            in.a_sv[a] = cache.a[atom * 3 * NF + 2 * NF + c];
            in.norm[a] = cache.norm[atom * NF + c];
        }
    };
    auto read_next_pre = [&] {
#pragma unroll
        for (int a = 0; a < TILE; ++a)
            next_pre[a] = t < NF && a0 + a < n_atoms ? next_context.pre[(size_t)(a0 + a) * NF + t] : 0.f;
    };
    if constexpr (DENSE_EARLY_READS) {
        read_inputs();
        read_next_pre();
    }
    // The next interaction's context backward: W2ᵀ ∂E/∂x (ga holds this block's channels of ∂E/∂x
    // until the mixing overwrites it), σ', then W1ᵀ into the first F columns of gctx.
    for (int k = t; k < TILE * 3 * OWNED; k += blockDim.x) {
        const int a = k / (3 * OWNED), part = k % (3 * OWNED) / OWNED;
        const int at = a * 3 * NF + part * NF + first + k % OWNED;
        ga[at] = a0 + a < n_atoms ? next_context.grad_x[(size_t)a0 * 3 * NF + at] : 0.f;
    }
    __syncthreads();
    const Reduced gx = reduced_matvec<TILE, 3 * NF, NF, 3>(w2, ga, 3 * NF, gz, NF, scratch);
    const AheadWeights<NF, NF, Slice::Owned> w_next1(next_context.w1);
    if constexpr (!DENSE_EARLY_READS) read_next_pre();
    if (t < NF) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) gz[a * NF + t] = gx(a, t) * (a0 + a < n_atoms ? silu_grad(next_pre[a]) : 0.f);
    }
    __syncthreads();
    owned_matvec<TILE, NF, NF>(w_next1, gz, NF, gctx, 2 * NF, scratch);
    if constexpr (!DENSE_EARLY_READS) read_inputs();
    if (t < OWNED) {
#pragma unroll
        for (int a = 0; a < TILE; ++a) in.gq[a] += gctx[a * 2 * NF + c];
    }
    mixing_backward_tail<false>(in, m, ga, gz, gctx, gvu, out, scratch, grad_q_in, grad_mu_in, a0, n_atoms);
}

// Adds a chunk's per-pair gradients to pair_grad: one thread per pair sums the pair's WARPS
// channel-warp partials (warp_part[pair][warp]; rows of ROW ≥ WARPS, padded where a row of WARPS
// float4 would put the pairs that a quarter-warp reads in the same banks) in a fixed order.
// Starts and ends with a barrier.
template <int WARPS, int ROW>
__device__ __forceinline__ void add_pair_gradients(const float4 (*warp_part)[ROW], const int* slot, int n,
                                                   int chunk, float4* pair_grad) {
    __syncthreads();
    if (threadIdx.x < n) {
        const int q = threadIdx.x;
        float4 total = warp_part[q][0];
        for (int k = 1; k < WARPS; ++k) total = add4(total, warp_part[q][k]);
        int p = chunk + slot[q];
        pair_grad[p] = add4(pair_grad[p], total);
    }
    __syncthreads();
}

// Gradients through interaction t, gathered per atom a: for every neighbor b, the pair a→b
// (a receives: per-pair ∂E/∂d and ∂E/∂r̂, accumulated over layers in pair_grad) and the pair
// b→a (a sends: ∂E/∂x_a and ∂E/∂μ_a). Both pairs have the same distance, so one filter serves.
// Blocks, threads and splits as in message_forward. Each channel slice accumulates its own pair
// gradients (pair_grad slice s at s · rows · capacity), summed in a fixed order by pair_forces.
extern "C" __global__ void __launch_bounds__(MSG_THREADS)
    message_backward(const double* pos, Cell cell, Neighbors nb, Filter filter, const float* mu_in,
                     const float* x, const float* grad_q,
                     const float* grad_mu, float* grad_x, float* grad_mu_in,
                     float4* pair_grad) {
    launch_next_kernel();
    __shared__ ChunkGeometry<BACKWARD_CHUNK, true> g;
    // Never live at the same time (the split partials come after the last chunk's barrier).
    __shared__ union {
        float4 warp_part[BACKWARD_CHUNK][MSG_CHANNELS / 32];  // per pair of the chunk, per warp: (∂E/∂d, ∂E/∂r̂)
        float partial[PAIR_SPLIT > 1 ? PAIR_SPLIT - 1 : 1][6][MSG_CHANNELS];
    } sh;
    static_assert(sizeof(g) + sizeof(sh) <= 48 * 1024, "message_backward: static shared memory over 48 KB");
    const int a = blockIdx.x / CHANNEL_SLICES, slice = blockIdx.x % CHANNEL_SLICES;
    const int local = threadIdx.x % MSG_CHANNELS, ps = threadIdx.x / MSG_CHANNELS, warp = local >> 5, lane = local & 31;
    const int c = slice * MSG_CHANNELS + local;
    pair_grad += (size_t)slice * (gridDim.x / CHANNEL_SLICES) * nb.capacity;
    ChannelFilter w;
    w.load(filter, c);
    g.copy_basis(filter);
    wait_for_previous_kernels();
    float cutoff2 = filter.cutoff * filter.cutoff;
    ChannelState self;  // atom a, channel c
    self.gq = grad_q[a * NF + c];
    for (int k = 0; k < 3; ++k) {
        self.gm[k] = grad_mu[(size_t)a * 3 * NF + k * NF + c];
        self.mu[k] = mu_in[(size_t)a * 3 * NF + k * NF + c];
        self.x[k] = x[(size_t)a * 3 * NF + k * NF + c];
    }
    const float3 bias = w.bias();
    float gx[3] = {0.f, 0.f, 0.f}, gmu[3] = {0.f, 0.f, 0.f};
    int begin = a * nb.capacity, end = begin + nb.count[a];
    for (int chunk = begin; chunk == begin || chunk < end; chunk += BACKWARD_CHUNK) {  // as in message_forward
        int n = load_chunk(g, pos, cell, nb, filter, a, chunk, end, cutoff2);
        // Pair q of the chunk; returns its (∂E/∂d, ∂E/∂r̂) term of this thread's channel.
        auto pair = [&](int q) {
            float4 rv = g.r[q];
            float inv_d = rv.w;
            float u[3] = {rv.x * inv_d, rv.y * inv_d, rv.z * inv_d};
            size_t b = g.j[q];
            ChannelState other;
            other.gq = grad_q[b * NF + c];
            for (int k = 0; k < 3; ++k) {
                other.gm[k] = grad_mu[b * 3 * NF + k * NF + c];
                other.mu[k] = mu_in[b * 3 * NF + k * NF + c];
                other.x[k] = x[b * 3 * NF + k * NF + c];
            }
            return pair_backward(u, g.phi[q], g.dphi[q], g.cut[q], w.ws, w.wr, w.wv, bias, self, other, gx, gmu);
        };
        // Two pairs at a time, so that their warp sums share one transposed reduction.
        for (int q = ps; q < n; q += 2 * PAIR_SPLIT) {
            const int q2 = q + PAIR_SPLIT;  // uniform over the warp, like q
            float4 v = pair(q), v2 = q2 < n ? pair(q2) : make_float4(0.f, 0.f, 0.f, 0.f);
            float sum = warp_sum_two_float4(v, v2, lane);
            const int which = lane >> 4, component = (lane >> 2) & 3;
            if ((lane & 3) == 0 && (which == 0 || q2 < n))
                reinterpret_cast<float*>(&sh.warp_part[which ? q2 : q][warp])[component] = sum;
        }
        add_pair_gradients<MSG_CHANNELS / 32>(sh.warp_part, g.slot, n, chunk, pair_grad);
    }
    if (PAIR_SPLIT > 1) {
        if (ps > 0)
            for (int k = 0; k < 3; ++k) {
                sh.partial[ps - 1][k][local] = gx[k];
                sh.partial[ps - 1][k + 3][local] = gmu[k];
            }
        __syncthreads();
        if (ps > 0) return;
        for (int s = 0; s < PAIR_SPLIT - 1; ++s)
            for (int k = 0; k < 3; ++k) {
                gx[k] += sh.partial[s][k][local];
                gmu[k] += sh.partial[s][k + 3][local];
            }
    }
    for (int k = 0; k < 3; ++k) {
        grad_x[(size_t)a * 3 * NF + k * NF + c] = gx[k];
        grad_mu_in[(size_t)a * 3 * NF + k * NF + c] = self.gm[k] + gmu[k];
    }
}

// Forces from the per-pair gradients: F_a = Σ_{p = a→b} [∂E/∂r(p) − ∂E/∂r(reverse p)], with
// ∂E/∂r = g_d r̂ + (g_u − (g_u·r̂) r̂)/d, each gradient the sum of the CHANNEL_SLICES slices in a
// fixed order. One warp per atom, lanes over its pairs (one round of load latency per 32 pairs
// instead of one per pair), summed in a fixed order.
// Atom a's force from its pairs' gradients (the pair and its reverse, over the channel slices):
// one warp per atom, the total in lane 0. Shared by pair_forces and, in an MD step, the kernel that
// also gives the closing half kick (integrate.cu).
__device__ __forceinline__ float3 force_from_pairs(int a, int lane, const double* pos, const Cell& cell,
                                                   const Neighbors& nb, float cutoff, const float4* pair_grad,
                                                   int n_atoms) {
    float cutoff2 = cutoff * cutoff;
    float fx = 0.f, fy = 0.f, fz = 0.f;
    const double3 pos_a = make_double3(pos[3 * a], pos[3 * a + 1], pos[3 * a + 2]);
    const size_t slice = (size_t)n_atoms * nb.capacity;
    int begin = a * nb.capacity, end = begin + nb.count[a];
    for (int p = begin + lane; p < end; p += 32) {
        // Every load of the pair before the cutoff test (perf-notes v51): behind its branch the
        // reverse index waited for the positions and the gradients for the reverse index, three
        // rounds of latency where the entry's fields and the pair's own gradients take one and the
        // neighbor's position and the reverse gradients a second. Entries past the cutoff read
        // gradients they do not use (in bounds: p and its reverse are entries of the list).
        const int j = nb.j[p], reverse = nb.reverse[p];
        const int3 image = nb.image[p];
        float4 g = pair_grad[p];
#pragma unroll
        for (int s = 1; s < CHANNEL_SLICES; ++s) g = add4(g, pair_grad[s * slice + p]);
        float4 h = pair_grad[reverse];
#pragma unroll
        for (int s = 1; s < CHANNEL_SLICES; ++s) h = add4(h, pair_grad[s * slice + reverse]);
        float3 r = pair_vector(pos_a, pos, j, cell, image);
        float d2 = r.x * r.x + r.y * r.y + r.z * r.z;
        const float3 f = pair_force(g, h, make_float4(r.x, r.y, r.z, sqrtf(d2)));
        if (d2 >= cutoff2) continue;
        fx += f.x;
        fy += f.y;
        fz += f.z;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        fx += __shfl_down_sync(0xffffffffu, fx, offset);
        fy += __shfl_down_sync(0xffffffffu, fy, offset);
        fz += __shfl_down_sync(0xffffffffu, fz, offset);
    }
    return make_float3(fx, fy, fz);
}

extern "C" __global__ void pair_forces(const double* pos, Cell cell, Neighbors nb, float cutoff,
                                       const float4* pair_grad, float* forces, int n_atoms) {
    follow_previous_kernels();
    int a = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (a >= n_atoms) return;  // whole warps leave together
    const float3 f = force_from_pairs(a, lane, pos, cell, nb, cutoff, pair_grad, n_atoms);
    if (lane == 0) {
        forces[3 * a] = f.x;
        forces[3 * a + 1] = f.y;
        forces[3 * a + 2] = f.z;
    }
}
