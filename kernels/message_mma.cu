// The message kernels with the filter products on tensor cores (sm_80 and later). Per chunk of
// pairs, the filter network's product is the matrix product W [3F × K] · Φᵀ [K × pairs]; here it
// runs as mma.sync tiles of 16 channels × 8 pairs in split half precision: each operand a = hi +
// lo with hi = fp16(a), lo = fp16(a − hi), and W·Φᵀ ≈ lo·hi + hi·lo + hi·hi summed in f32 (22
// significant bits where lo is a normal half, i.e. |a| ≥ 2⁻³; below, a fixed ~3e-8 absolute:
// docs/perf-notes.md, v23, v31 and its review). Everything after the filter (message, its
// backward, the sums) is the same device code as the scalar kernels in painn.cu, in f32.
//
// Layout: one block per atom and channel slice (as in painn.cu); each warp owns 16 channels of the
// slice and walks the chunk's 8-pair tiles, computing per filter part the product W [16 channels ×
// K] · Φᵀ [K × 8 pairs] (the weights are the A operand, in registers for the whole kernel; the
// basis the B operand, from shared memory); MMA_PAIR_SPLIT warp groups share an atom's tiles. Tile
// rows g and g + 8 are channels c0 + 2g and c0 + 2g + 1, so that in the accumulator layout of
// mma.m16n8k* lane (g = lane / 4, t = lane % 4) holds channels c0 + 2g, c0 + 2g + 1 of pairs 2t and
// 2t + 1: its loads of a neighbor's features are float2, and a warp's load covers 64 contiguous
// bytes of each of 4 pairs (docs/perf-notes.md, v31: with pairs as the rows, 32 bytes of 8 pairs,
// and the gathers cost twice the L1 wavefronts). The sums over a lane's pairs run over the 4 lanes
// of equal g at the end (fixed order: deterministic).

#ifndef MMA_BACKWARD_DIVIDES
#define MMA_BACKWARD_DIVIDES 0  // 1: the backward kernel's chunk keeps d, not 1/d (the host's default)
#endif
#ifndef MMA_PAIR_SPLIT
#define MMA_PAIR_SPLIT 0  // 0: the tensor-core message kernels are not built
#endif
#ifndef PAIR_RECORD
#define PAIR_RECORD 0  // 1: the evaluation's first message kernel records its pairs for the others (PairRecord)
#endif
#ifndef FIRST_LAYER
#define FIRST_LAYER 0  // 1: the first interaction's kernels use μ = 0 and skip its input gradients (perf-notes v66)
#endif

// Radial basis padded to the mma's k granularity (8), as 32-bit words of two halves.
#define KP ((NK + 7) / 8 * 8)
#define K_WORDS (KP / 2)
// Registers per operand row (a filter row, or one pair's basis): two per k16 step, one for a k8
// tail.
#define K_REGS (KP / 8)
#define K16_STEPS (KP / 16)
#define K8_TAIL (KP % 16 != 0)
// Row stride of the Φ tiles in shared memory (words): ≡ 4 (mod 8), so the 8 rows × 4 words of a
// B-fragment load hit 32 different banks.
#define A_STRIDE (K_WORDS % 8 == 0 ? K_WORDS + 4 : K_WORDS)

#if MMA_PAIR_SPLIT > 0 && KP <= 32 && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

#define MMA_WARPS (MSG_CHANNELS / 16)
#define MMA_THREADS (MMA_PAIR_SPLIT * MMA_WARPS * 32)
// Row of message_backward_mma's per-pair partials: one float4 per channel warp, plus one. Unpadded,
// a row of 2, 4 or 8 float4 puts the rows that a quarter-warp touches (the 8 pairs summed in
// add_pair_gradients, the pairs 2 apart stored by a warp's 4 columns) in the same banks: 2- to
// 8-way conflicts. A row of 3, 5 or 9 float4 spreads them over all 32 banks (perf-notes v36).
#define WARP_PART_ROW (MMA_WARPS + 1)
#if MMA_THREADS > 1024
#error "tensor-core message blocks over 1,024 threads (the host caps MMA_PAIR_SPLIT)"
#endif
// Blocks per SM the register budget must allow: 16 warps (at most 128 registers per thread).
#define MMA_MIN_BLOCKS ((512 + MMA_THREADS - 1) / MMA_THREADS)

// Two floats as a word of two halves (lo in the low half: element k, k + 1 of a fragment).
__device__ __forceinline__ u32 half2_of(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float2 float2_of(u32 h) {
    float2 v;
    asm("{\n\t.reg .f16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;\n\t}"
        : "=f"(v.x), "=f"(v.y)
        : "r"(h));
    return v;
}

// The split of (a, b) into hi + lo halves, as two words.
__device__ __forceinline__ void split_half2(float a, float b, u32& hi, u32& lo) {
    hi = half2_of(a, b);
    float2 h = float2_of(hi);
    lo = half2_of(a - h.x, b - h.y);
}

__device__ __forceinline__ void mma_k16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_k8(float (&c)[4], u32 a0, u32 a1, u32 b0) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(b0));
}

// Word index within a row of fragment register r of lane group t: k16 step s = r / 2 holds words
// 8s + t (r even) and 8s + t + 4 (r odd); a k8 tail, words 8s + t. The same for the A rows and
// the B columns of m16n8k16 and m16n8k8.
__device__ __forceinline__ int fragment_word(int r, int t) { return 8 * (r >> 1) + 4 * (r & 1) + t; }

// One row of a tile in halves: hi and lo words per fragment register.
struct Halves {
    u32 hi[K_REGS], lo[K_REGS];
    // Row `row` of a tile stored as words of halves (hi and lo tiles of A_STRIDE words per row).
    __device__ __forceinline__ void load(const u32 (*hi_rows)[A_STRIDE], const u32 (*lo_rows)[A_STRIDE], int row, int t) {
#pragma unroll
        for (int r = 0; r < K_REGS; ++r) {
            hi[r] = hi_rows[row][fragment_word(r, t)];
            lo[r] = lo_rows[row][fragment_word(r, t)];
        }
    }
};

// The A rows g and g + 8 of a 16-row operand.
struct RowPair {
    Halves g0, g8;
};

// c += a · b over the padded basis, with a (rows g, g + 8) and b one half each.
__device__ __forceinline__ void mma_tile(float (&c)[4], const u32 (&a0)[K_REGS], const u32 (&a8)[K_REGS],
                                         const u32 (&b)[K_REGS]) {
#pragma unroll
    for (int s = 0; s < K16_STEPS; ++s)
        mma_k16(c, a0[2 * s], a8[2 * s], a0[2 * s + 1], a8[2 * s + 1], b[2 * s], b[2 * s + 1]);
    if (K8_TAIL) mma_k8(c, a0[K_REGS - 1], a8[K_REGS - 1], b[K_REGS - 1]);
}

// c += a · b in split precision: the small products first.
__device__ __forceinline__ void mma_split(float (&c)[4], const RowPair& a, const Halves& b) {
    mma_tile(c, a.g0.lo, a.g8.lo, b.hi);
    mma_tile(c, a.g0.hi, a.g8.hi, b.lo);
    mma_tile(c, a.g0.hi, a.g8.hi, b.hi);
}

// 16-byte vectors of a lane's filter fragments (3 parts × 2 rows × hi, lo × K_REGS words).
#define FRAGMENT_VECTORS (3 * K_REGS)

// The warp's filter rows as A fragments: part p (s, R, v), rows g and g + 8 = channels c, c + 1
// (c = c0 + 2g), and the biases of those channels.
struct WarpFilter {
    __align__(16) RowPair part[3];  // read and written as 16-byte vectors
    float2 bias[3];
    // From the filter network's rows (f32, row-major): what message_mma_pack does once per system.
    __device__ void split_rows(const Filter& f, int c, int t) {
#pragma unroll
        for (int p = 0; p < 3; ++p) {
            const float* row = f.weight + (size_t)(f.offset + p * NF + c) * NK;
#pragma unroll
            for (int r = 0; r < K_REGS; ++r) {
                const int k = 2 * fragment_word(r, t);
                auto w = [&](int channel, int m) { return m < NK ? row[channel * NK + m] * f.weight_scale : 0.f; };
                split_half2(w(0, k), w(0, k + 1), part[p].g0.hi[r], part[p].g0.lo[r]);
                split_half2(w(1, k), w(1, k + 1), part[p].g8.hi[r], part[p].g8.lo[r]);
            }
        }
    }
    // From the packed fragments (f.fragments, see message_mma_pack): 16-byte loads, a warp's
    // contiguous; the rows' scattered 4-byte loads were a third of the kernels' L1 traffic at
    // 1,536 atoms (docs/perf-notes.md, v33).
    __device__ void load(const Filter& f, int c, int lane) {
        const uint4* src = f.fragments + (size_t)(c >> 4) * FRAGMENT_VECTORS * 32 + lane;
        u32* words = reinterpret_cast<u32*>(part);
#pragma unroll
        for (int v = 0; v < FRAGMENT_VECTORS; ++v) {
            const uint4 q = src[v * 32];
            words[4 * v] = q.x;
            words[4 * v + 1] = q.y;
            words[4 * v + 2] = q.z;
            words[4 * v + 3] = q.w;
        }
#pragma unroll
        for (int p = 0; p < 3; ++p) {
            const float* b = f.bias + f.offset + p * NF + c;
            bias[p] = make_float2(b[0], b[1]);
        }
    }
};

static_assert(sizeof(RowPair[3]) == FRAGMENT_VECTORS * 16, "fragments are whole 16-byte vectors");

// The filter fragments of interaction `filter.offset` for the tensor-core message kernels, once per
// system: block = one 16-channel group, thread = lane; vector v of lane L of group G at
// out[(G · FRAGMENT_VECTORS + v) · 32 + L].
extern "C" __global__ void message_mma_pack(Filter filter, uint4* out) {
    const int group = blockIdx.x, lane = threadIdx.x;
    WarpFilter w;
    w.split_rows(filter, 16 * group + 2 * (lane >> 2), lane & 3);
    const uint4* words = reinterpret_cast<const uint4*>(w.part);
    for (int v = 0; v < FRAGMENT_VECTORS; ++v) out[(group * FRAGMENT_VECTORS + v) * 32 + lane] = words[v];
}

// A chunk's pairs as the tensor-core kernels read them: as in ChunkGeometry, with Φ (and ∂Φ/∂d)
// in hi and lo halves, padded with zero rows (cutoff 0: no contribution) to whole 8-pair tiles.
template <int CHUNK, bool BACKWARD>
struct MmaChunk : ChunkPairs<CHUNK> {
    __align__(16) u32 phi_hi[CHUNK][A_STRIDE];
    __align__(16) u32 phi_lo[CHUNK][A_STRIDE];
    __align__(16) u32 dphi_hi[BACKWARD ? CHUNK : 1][A_STRIDE];
    __align__(16) u32 dphi_lo[BACKWARD ? CHUNK : 1][A_STRIDE];
    int warp_count[CHUNK / 32];
};

__host__ __device__ constexpr int mma_shared_bytes(int chunk, bool backward) {
    int per_pair = 4 + 4 + 16 + 8 + (backward ? 4 : 2) * A_STRIDE * 4;
    int partial = (MMA_PAIR_SPLIT > 1 ? MMA_PAIR_SPLIT - 1 : 1) * (backward ? 6 : 4) * MSG_CHANNELS * 4;
    int warp_part = backward ? chunk * WARP_PART_ROW * 16 : 0;
    // The basis' parameters (ChunkPairs::copy_basis, ≤ 512 bytes) fit in the 3 KB margin, as in
    // message_shared_bytes.
    return chunk * per_pair + 4 * (chunk / 32) + 64 + (warp_part > partial ? warp_part : partial);
}

// Candidates per chunk: one per thread, at most 128, fewer (whole warps) to stay within 45 KB.
__host__ __device__ constexpr int mma_chunk(bool backward) {
    return chunk_within_shared_memory(MMA_THREADS < 128 ? MMA_THREADS : 128,
                                      [=](int chunk) { return mma_shared_bytes(chunk, backward); });
}

// The pairs within the cutoff of every atom's neighbor row in one evaluation, compacted in row
// order with their geometry and radial basis (perf-notes v65): the evaluation's first message
// kernel (message_forward_mma_first, built with PAIR_RECORD) computes them as every message
// kernel does and writes them here; the other five copy them into their chunks instead of
// reading the neighbor row and the positions and evaluating the basis again, which took two of
// their three dependent rounds of global loads after the wait (perf-notes, "What the 25 µs
// benzene target needs"). Rows of `stride` pairs per atom, the neighbor capacity rounded up to
// whole 8-pair tiles; the rows from an atom's count to its next multiple of 8 are tile padding as
// load_mma_chunk pads (the atom itself, cutoff 0, Φ = 0).
struct PairRecord {
    int* count;     // [atoms] pairs within the cutoff
    int2* pair;     // (neighbor, position in the neighbor row: entry − row start)
    float4* r_inv;  // (r (Å), 1/d (Å⁻¹)): what the forward kernel keeps
    float4* r_d;    // (r (Å), d (Å)): what the backward kernel keeps when it divides
    float2* cut;    // cosine cutoff and its derivative in d (Å⁻¹)
    // Φ hi, Φ lo, ∂Φ/∂d hi, ∂Φ/∂d lo: 4 rows of K_WORDS words a pair, as 16-byte vectors v of
    // row w of atom i's pair k at ((i · 4 + w) · RECORD_ROW_VECTORS + v) · stride + k, so that a
    // warp's copies of one vector of consecutive pairs are consecutive (coalesced).
    uint4* basis;
    int stride;
};

// 16-byte vectors per basis row of a record.
#define RECORD_ROW_VECTORS (K_WORDS / 4)
static_assert(K_WORDS % 4 == 0, "a record's basis rows are whole 16-byte vectors");

// Where a message kernel's pairs come from.
enum PairSource {
    PAIRS_COMPUTED = 0,   // from the neighbor row and the positions
    PAIRS_RECORDING = 1,  // so, and written to the PairRecord (channel slice 0 of each atom)
    PAIRS_RECORDED = 2,   // copied from the PairRecord
};

// A row of words of halves, stored 16 bytes at a time (rows of A_STRIDE ≡ 4 (mod 8) words: a
// quarter warp's 16-byte stores of 8 consecutive rows hit 32 different banks).
__device__ __forceinline__ void store_row(u32* dst, const u32 (&words)[K_WORDS]) {
#pragma unroll
    for (int w = 0; w < K_WORDS; w += 4)
        *reinterpret_cast<uint4*>(dst + w) = make_uint4(words[w], words[w + 1], words[w + 2], words[w + 3]);
}

// 16 bytes from global to shared memory without passing through registers (cp.async, L2 only:
// what another kernel wrote), and the waits for them: this thread's copies committed so far have
// landed (visible to the block after the next barrier).
__device__ __forceinline__ void copy_async_16(void* shared_dst, const void* global_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((u32)__cvta_generic_to_shared(shared_dst)),
                 "l"(global_src));
}
__device__ __forceinline__ void commit_async_copies() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void wait_async_copies() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Pair k of atom i's record row.
__device__ __forceinline__ void write_record(const PairRecord& record, int i, int k, int j, int position, float3 r,
                                             float d, float2 cut, const u32 (&hi)[K_WORDS], const u32 (&lo)[K_WORDS],
                                             const u32 (&dhi)[K_WORDS], const u32 (&dlo)[K_WORDS]) {
    const size_t at = (size_t)i * record.stride + k;
    record.pair[at] = make_int2(j, position);
    // 1/d as ChunkPairs::store computes it, so that the recorded kernels see the same bits.
    record.r_inv[at] = make_float4(r.x, r.y, r.z, 1.0f / d);
    record.r_d[at] = make_float4(r.x, r.y, r.z, d);
    record.cut[at] = cut;
    uint4* rows = record.basis + (size_t)i * 4 * RECORD_ROW_VECTORS * record.stride + k;
    auto row = [&](int which, const u32(&words)[K_WORDS]) {
#pragma unroll
        for (int v = 0; v < RECORD_ROW_VECTORS; ++v)
            rows[(size_t)(which * RECORD_ROW_VECTORS + v) * record.stride] =
                make_uint4(words[4 * v], words[4 * v + 1], words[4 * v + 2], words[4 * v + 3]);
    };
    row(0, hi);
    row(1, lo);
    row(2, dhi);
    row(3, dlo);
}

// With RECORD, the block that `writes` also writes each pair to `record` after the `recorded`
// pairs of atom i's earlier chunks, with the basis' derivative the backward kernels need.
template <int CHUNK, bool BACKWARD, bool RECORD = false>
__device__ __forceinline__ int load_mma_chunk(MmaChunk<CHUNK, BACKWARD>& g, const double* pos, const Cell& cell,
                                              const Neighbors& nb, const Filter& filter, int i, int chunk, int end,
                                              float cutoff2, const PairRecord& record = PairRecord{},
                                              int recorded = 0, bool writes = false) {
    constexpr bool WITH_DPHI = BACKWARD || RECORD;
    auto store = [&](int k, int j, int slot, float3 r, float d) {
        // The backward kernel keeps d and divides per pair by default (MMA_BACKWARD_DIVIDES; perf-notes
        // v50 read 1/d below 512 atoms, v59 divides everywhere once v52 removed that form's spills).
        g.template store<!(BACKWARD && MMA_BACKWARD_DIVIDES)>(k, j, slot, r, d, filter.cutoff,
                                                              filter.cutoff_slope);
        u32 hi[K_WORDS], lo[K_WORDS], dhi[K_WORDS], dlo[K_WORDS];
#pragma unroll
        for (int w = 0; w < K_WORDS; ++w) {
            float phi[2] = {0.f, 0.f}, dphi[2] = {0.f, 0.f};
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int m = 2 * w + e;
                if (m < NK) {
                    const float value = rbf_gaussian(d, g.basis_offset[m], g.basis_coeff[m]);
                    phi[e] = value * filter.phi_scale;
                    if constexpr (WITH_DPHI)
                        dphi[e] = rbf_derivative(d, value, g.basis_coeff[m], g.basis_offset[m]) * filter.dphi_scale;
                }
            }
            split_half2(phi[0], phi[1], hi[w], lo[w]);
            if constexpr (WITH_DPHI) split_half2(dphi[0], dphi[1], dhi[w], dlo[w]);
        }
        store_row(g.phi_hi[k], hi);
        store_row(g.phi_lo[k], lo);
        if constexpr (BACKWARD) {
            store_row(g.dphi_hi[k], dhi);
            store_row(g.dphi_lo[k], dlo);
        }
        if constexpr (RECORD)
            if (writes)
                write_record(record, i, recorded + k, j, chunk - i * nb.capacity + slot, r, d, g.cut[k], hi, lo, dhi,
                             dlo);
    };
    // A padding row: the receiving atom itself at zero cutoff weight, Φ = 0 (finite everywhere).
    auto pad = [&](int k) {
        g.j[k] = i;
        g.slot[k] = 0;
        g.r[k] = make_float4(0.f, 0.f, 0.f, 1.f);
        g.cut[k] = make_float2(0.f, 0.f);
        u32 zero[K_WORDS] = {};
        store_row(g.phi_hi[k], zero);
        store_row(g.phi_lo[k], zero);
        if constexpr (BACKWARD) {
            store_row(g.dphi_hi[k], zero);
            store_row(g.dphi_lo[k], zero);
        }
    };
    return compact_chunk<CHUNK, 8>(g, pos, cell, nb, i, chunk, end, cutoff2, store, pad);
}

// After the last chunk of a recording block: the tile padding after atom i's `recorded` pairs,
// and their count. Every thread of the block calls it.
__device__ __forceinline__ void finish_record(const PairRecord& record, int i, int recorded) {
    const int padded = (recorded + 7) / 8 * 8;
    for (int k = recorded + threadIdx.x; k < padded; k += blockDim.x) {
        const u32 zero[K_WORDS] = {};
        write_record(record, i, k, i, 0, make_float3(0.f, 0.f, 0.f), 1.f, make_float2(0.f, 0.f), zero, zero, zero,
                     zero);
    }
    if (threadIdx.x == 0) record.count[i] = recorded;
}

// Pairs [start, start + CHUNK) of atom i's record into g, tile padding included; the first call
// (start 0) also reads the record's count into `total`. Returns the pairs of the chunk. Every
// thread must call it; ends with a barrier. The basis rows go by cp.async, straight to shared
// memory: held in registers, the backward kernel's 48 words a pair would have to wait behind (or
// spill) its filter fragments. Everything is loaded before the count is known (a row holds
// `stride` pairs, so the loads stay in bounds), in the round of the count's load.
template <int CHUNK, bool BACKWARD>
__device__ __forceinline__ int load_recorded_chunk(MmaChunk<CHUNK, BACKWARD>& g, const PairRecord& record, int i,
                                                   int start, int& total) {
    const int t = threadIdx.x;
    const size_t p = (size_t)i * record.stride + start + t;
    const bool mine = t < CHUNK && start + t < record.stride;
    if (mine) {
        const uint4* rows = record.basis + (size_t)i * 4 * RECORD_ROW_VECTORS * record.stride + start + t;
        auto copy_row = [&](u32* dst, int row) {
#pragma unroll
            for (int v = 0; v < RECORD_ROW_VECTORS; ++v)
                copy_async_16(dst + 4 * v, rows + (size_t)(row * RECORD_ROW_VECTORS + v) * record.stride);
        };
        copy_row(g.phi_hi[t], 0);
        copy_row(g.phi_lo[t], 1);
        if constexpr (BACKWARD) {
            copy_row(g.dphi_hi[t], 2);
            copy_row(g.dphi_lo[t], 3);
        }
    }
    commit_async_copies();
    if (start == 0) total = record.count[i];
    if (mine) {
        const int2 pair = record.pair[p];
        g.j[t] = pair.x;
        g.slot[t] = pair.y;
        g.r[t] = BACKWARD && MMA_BACKWARD_DIVIDES ? record.r_d[p] : record.r_inv[p];
        g.cut[t] = record.cut[p];
    }
    wait_async_copies();
    __syncthreads();
    const int left = total - start;
    return left < CHUNK ? left : CHUNK;
}

// 1/x for x an exact power of two with a normal reciprocal (the filter's scales): the exponent
// negated in the bits, exact and without the branch of an IEEE division, whose slow path kept the
// loads after it from going out with those before (perf-notes v48).
__device__ __forceinline__ float power_of_two_reciprocal(float x) { return __int_as_float((254 << 23) - __float_as_int(x)); }

// The filter parts (s, R, v) of channel c + ch (accumulator row g + 8·ch) at the lane's pair e
// (column 2t + e): the scaled product times `unscale`, plus `bias` (of channels c, c + 1).
__device__ __forceinline__ float3 tile_filter(const float (&acc)[3][4], int ch, int e, float unscale,
                                              const float2 (&bias)[3]) {
    auto part = [&](int p) { return fmaf(acc[p][2 * ch + e], unscale, ch ? bias[p].y : bias[p].x); };
    return make_float3(part(0), part(1), part(2));
}

__device__ __forceinline__ float2 load2(const float* p) { return *reinterpret_cast<const float2*>(p); }

// Sum over the lanes of equal g (the 4 lanes t, each with its own pairs): all end with the total.
__device__ __forceinline__ float sum_over_pairs(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// Filter accumulators of one tile, at zero (the scaled products are added, the bias after).
__device__ __forceinline__ void zero(float (&acc)[3][4]) {
#pragma unroll
    for (int p = 0; p < 3; ++p) acc[p][0] = acc[p][1] = acc[p][2] = acc[p][3] = 0.f;
}

// message_forward (painn.cu) with the filter on tensor cores; its pairs from SOURCE (PairSource).
// FIRST: the first interaction, whose input μ is zero (schnetpack starts every atom at μ = 0): the
// filter's v part and the neighbors' x_v and μ, which only multiply that zero, are neither
// computed nor read (the zeros stand in for them, so the arithmetic is the general kernel's).
template <int SOURCE, bool FIRST>
__device__ __forceinline__ void message_forward_mma_body(const double* pos, const Cell& cell, const Neighbors& nb,
                                                         const Filter& filter, const float* q_in, const float* mu_in,
                                                         const float* x, float* q_out, float* mu_out,
                                                         float4* pair_grad_to_clear, const PairRecord& record) {
    launch_next_kernel();
    constexpr int CHUNK = mma_chunk(false);
    __shared__ MmaChunk<CHUNK, false> g;
    __shared__ float partial[MMA_PAIR_SPLIT > 1 ? MMA_PAIR_SPLIT - 1 : 1][4][MSG_CHANNELS];
    static_assert(sizeof(g) + sizeof(partial) <= 48 * 1024, "message_forward_mma: static shared memory over 48 KB");
    const int i = blockIdx.x / CHANNEL_SLICES, slice = blockIdx.x % CHANNEL_SLICES;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
    const int cw = warp % MMA_WARPS, ps = warp / MMA_WARPS;
    const int local = 16 * cw + 2 * gr, c = slice * MSG_CHANNELS + local;  // the lane's channels c, c + 1
    WarpFilter w;
    w.load(filter, c, lane);
    g.copy_basis(filter);
    wait_for_previous_kernels();
    const int count = SOURCE == PAIRS_RECORDED ? 0 : nb.count[i];
    // Atom i's own features, read with the row (as in message_forward).
    const float2 qi = load2(q_in + (size_t)i * NF + c);
    float2 mi[3];
    for (int k = 0; k < 3; ++k) mi[k] = FIRST ? make_float2(0.f, 0.f) : load2(mu_in + (size_t)i * 3 * NF + k * NF + c);
    const float unscale = power_of_two_reciprocal(filter.weight_scale * filter.phi_scale);
    const float cutoff2 = filter.cutoff * filter.cutoff;
    constexpr int PARTS = FIRST ? 2 : 3;  // filter parts computed: (s, R) or (s, R, v)
    float dq[2] = {0.f, 0.f}, dm[2][3] = {{0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}};
    // The chunk's n pairs, from g.
    auto add_messages = [&](int n) {
        for (int tile = ps; tile < (n + 7) / 8; tile += MMA_PAIR_SPLIT) {
            Halves phi;
            phi.load(g.phi_hi, g.phi_lo, 8 * tile + gr, t);
            float acc[3][4];
            zero(acc);
#pragma unroll
            for (int p = 0; p < PARTS; ++p) mma_split(acc[p], w.part[p], phi);
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int q = 8 * tile + 2 * t + e;
                const float4 r = g.r[q];
                const float fc = g.cut[q].x;
                const float* xj = x + (size_t)g.j[q] * 3 * NF + c;
                const float* mj = mu_in + (size_t)g.j[q] * 3 * NF + c;
                const float2 zero2 = make_float2(0.f, 0.f);
                const float2 xs = load2(xj), xr = load2(xj + NF), xv = FIRST ? zero2 : load2(xj + 2 * NF);
                const float2 m0 = FIRST ? zero2 : load2(mj), m1 = FIRST ? zero2 : load2(mj + NF),
                             m2 = FIRST ? zero2 : load2(mj + 2 * NF);
                add_message(tile_filter(acc, 0, e, unscale, w.bias), fc, r, xs.x, xr.x, xv.x, m0.x, m1.x, m2.x, dq[0], dm[0]);
                add_message(tile_filter(acc, 1, e, unscale, w.bias), fc, r, xs.y, xr.y, xv.y, m0.y, m1.y, m2.y, dq[1], dm[1]);
            }
        }
    };
    if constexpr (SOURCE == PAIRS_RECORDED) {
        int total = 0;
        for (int start = 0; start == 0 || start < total; start += CHUNK) {
            add_messages(load_recorded_chunk(g, record, i, start, total));
            __syncthreads();  // before the next chunk overwrites g
        }
    } else {
        const bool writes = SOURCE == PAIRS_RECORDING && slice == 0;
        int recorded = 0;
        int begin = i * nb.capacity, end = begin + count;
        for (int chunk = begin; chunk == begin || chunk < end; chunk += CHUNK) {  // as in message_forward
            const int n = load_mma_chunk<CHUNK, false, SOURCE == PAIRS_RECORDING>(g, pos, cell, nb, filter, i, chunk,
                                                                                   end, cutoff2, record, recorded, writes);
            add_messages(n);
            recorded += n;
            __syncthreads();  // before the next chunk overwrites g
        }
        if (writes) finish_record(record, i, recorded);
    }
    clear_pair_gradients(pair_grad_to_clear, nb, i, slice, count);
#pragma unroll
    for (int ch = 0; ch < 2; ++ch) {
        dq[ch] = sum_over_pairs(dq[ch]);
        for (int k = 0; k < 3; ++k) dm[ch][k] = sum_over_pairs(dm[ch][k]);
    }
    if (MMA_PAIR_SPLIT > 1) {
        if (ps > 0 && t == 0)
            for (int ch = 0; ch < 2; ++ch) {
                partial[ps - 1][0][local + ch] = dq[ch];
                for (int k = 0; k < 3; ++k) partial[ps - 1][k + 1][local + ch] = dm[ch][k];
            }
        __syncthreads();
        if (ps > 0) return;
        for (int s = 0; s < MMA_PAIR_SPLIT - 1; ++s)
            for (int ch = 0; ch < 2; ++ch) {
                dq[ch] += partial[s][0][local + ch];
                for (int k = 0; k < 3; ++k) dm[ch][k] += partial[s][k + 1][local + ch];
            }
    }
    if (t != 0) return;
    *reinterpret_cast<float2*>(q_out + (size_t)i * NF + c) = make_float2(qi.x + dq[0], qi.y + dq[1]);
    for (int k = 0; k < 3; ++k) {
        const size_t at = (size_t)i * 3 * NF + k * NF + c;
        *reinterpret_cast<float2*>(mu_out + at) = make_float2(mi[k].x + dm[0][k], mi[k].y + dm[1][k]);
    }
}

#define MESSAGE_FORWARD_MMA_PARAMS                                                                           \
    const double *pos, Cell cell, Neighbors nb, Filter filter, const float *q_in, const float *mu_in,       \
        const float *x, float *q_out, float *mu_out, float4 *pair_grad_to_clear
#define MESSAGE_FORWARD_MMA_ARGS pos, cell, nb, filter, q_in, mu_in, x, q_out, mu_out, pair_grad_to_clear

// The kernels the host launches (src/gpu/mod.rs, KernelSizes::message_kernels): with PAIR_RECORD
// every one takes the PairRecord last, the first interaction's forward kernel writes it and the
// others read it; message_forward_mma_first and message_backward_mma_first, the first
// interaction's, exist where they differ from the others'.
#if PAIR_RECORD
#define RECORD_PARAM , PairRecord record
#define RECORD_ARG record
#define FIRST_PAIRS PAIRS_RECORDING
#define LATER_PAIRS PAIRS_RECORDED
#else
#define RECORD_PARAM
#define RECORD_ARG PairRecord{}
#define FIRST_PAIRS PAIRS_COMPUTED
#define LATER_PAIRS PAIRS_COMPUTED
#endif

extern "C" __global__ void __launch_bounds__(MMA_THREADS, MMA_MIN_BLOCKS)
    message_forward_mma(MESSAGE_FORWARD_MMA_PARAMS RECORD_PARAM) {
    message_forward_mma_body<LATER_PAIRS, false>(MESSAGE_FORWARD_MMA_ARGS, RECORD_ARG);
}

#if PAIR_RECORD || FIRST_LAYER
extern "C" __global__ void __launch_bounds__(MMA_THREADS, MMA_MIN_BLOCKS)
    message_forward_mma_first(MESSAGE_FORWARD_MMA_PARAMS RECORD_PARAM) {
    message_forward_mma_body<FIRST_PAIRS, FIRST_LAYER>(MESSAGE_FORWARD_MMA_ARGS, RECORD_ARG);
}
#endif

// What pair_backward needs of atom b at the lane's two channels c, c + 1.
// FIRST (the first interaction): μ and x_v as zeros, not read; of what is read, the kernel's
// dead-code elimination drops what it does not use (the neighbor's gradients, which only the
// input gradients need).
template <bool FIRST>
__device__ __forceinline__ void load_channel_pair(ChannelState (&s)[2], size_t b, int c, const float* grad_q,
                                                  const float* grad_mu, const float* mu, const float* x) {
    const float2 gq = load2(grad_q + b * NF + c);
    s[0].gq = gq.x;
    s[1].gq = gq.y;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const size_t at = b * 3 * NF + k * NF + c;
        const float2 zero2 = make_float2(0.f, 0.f);
        const float2 gm = load2(grad_mu + at), m = FIRST ? zero2 : load2(mu + at),
                     xv = FIRST && k == 2 ? zero2 : load2(x + at);
        s[0].gm[k] = gm.x;
        s[1].gm[k] = gm.y;
        s[0].mu[k] = m.x;
        s[1].mu[k] = m.y;
        s[0].x[k] = xv.x;
        s[1].x[k] = xv.y;
    }
}

// message_backward (painn.cu) with the filter and its d-derivative on tensor cores; its pairs
// computed or recorded (SOURCE: PAIRS_COMPUTED or PAIRS_RECORDED). FIRST: the first interaction,
// whose input μ is zero and whose input gradients nothing reads (its x comes from the embedding,
// its μ is the constant zero): only the pair gradients are computed, and of the neighbors only
// x_s and x_R are read (the terms with the filter's v part multiply μ = 0).
template <int SOURCE, bool FIRST>
__device__ __forceinline__ void message_backward_mma_body(const double* pos, const Cell& cell, const Neighbors& nb,
                                                          const Filter& filter, const float* mu_in, const float* x,
                                                          const float* grad_q, const float* grad_mu, float* grad_x,
                                                          float* grad_mu_in, float4* pair_grad,
                                                          const PairRecord& record) {
    static_assert(SOURCE != PAIRS_RECORDING, "the forward kernel records");
    launch_next_kernel();
    constexpr int CHUNK = mma_chunk(true);
    __shared__ MmaChunk<CHUNK, true> g;
    // Never live at the same time (the split partials come after the last chunk's barrier).
    __shared__ union {
        float4 warp_part[CHUNK][WARP_PART_ROW];  // per pair of the chunk, per channel warp: (∂E/∂d, ∂E/∂r̂)
        float partial[MMA_PAIR_SPLIT > 1 ? MMA_PAIR_SPLIT - 1 : 1][6][MSG_CHANNELS];
    } sh;
    static_assert(sizeof(g) + sizeof(sh) <= 48 * 1024, "message_backward_mma: static shared memory over 48 KB");
    const int a = blockIdx.x / CHANNEL_SLICES, slice = blockIdx.x % CHANNEL_SLICES;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3;
    const int cw = warp % MMA_WARPS, ps = warp / MMA_WARPS;
    const int local = 16 * cw + 2 * gr, c = slice * MSG_CHANNELS + local;
    pair_grad += (size_t)slice * (gridDim.x / CHANNEL_SLICES) * nb.capacity;
    WarpFilter w;
    w.load(filter, c, lane);
    g.copy_basis(filter);
    wait_for_previous_kernels();
    // Exact: powers of two. ∂(filter)/∂d has no bias.
    const float unscale = power_of_two_reciprocal(filter.weight_scale * filter.phi_scale);
    const float unscale_d = power_of_two_reciprocal(filter.weight_scale * filter.dphi_scale);
    const float2 no_bias[3] = {make_float2(0.f, 0.f), make_float2(0.f, 0.f), make_float2(0.f, 0.f)};
    const float cutoff2 = filter.cutoff * filter.cutoff;
    constexpr int PARTS = FIRST ? 2 : 3;  // filter parts computed: (s, R) or (s, R, v)
    ChannelState self[2];  // atom a, channels c and c + 1
    load_channel_pair<FIRST>(self, a, c, grad_q, grad_mu, mu_in, x);
    float gx[2][3] = {{0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}}, gmu[2][3] = {{0.f, 0.f, 0.f}, {0.f, 0.f, 0.f}};
    const int begin = a * nb.capacity, end = SOURCE == PAIRS_RECORDED ? begin : begin + nb.count[a];
    // The chunk's n pairs, from g; its pair gradients to the row entries at `base` + g.slot.
    auto add_pairs = [&](int n, int base) {
        for (int tile = ps; tile < (n + 7) / 8; tile += MMA_PAIR_SPLIT) {
            float f[3][4], df[3][4];
            {
                Halves phi, dphi;
                phi.load(g.phi_hi, g.phi_lo, 8 * tile + gr, t);
                dphi.load(g.dphi_hi, g.dphi_lo, 8 * tile + gr, t);
                zero(f);
                zero(df);
#pragma unroll
                for (int p = 0; p < PARTS; ++p) {
                    mma_split(f[p], w.part[p], phi);
                    mma_split(df[p], w.part[p], dphi);
                }
            }
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int q = 8 * tile + 2 * t + e;
                const float4 rv = g.r[q];
                const float inv_d = MMA_BACKWARD_DIVIDES ? 1.0f / rv.w : rv.w;
                const float u[3] = {rv.x * inv_d, rv.y * inv_d, rv.z * inv_d};
                ChannelState other[2];
                load_channel_pair<FIRST>(other, g.j[q], c, grad_q, grad_mu, mu_in, x);
                float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                for (int ch = 0; ch < 2; ++ch)
                    v = add4(v, pair_backward(u, tile_filter(f, ch, e, unscale, w.bias),
                                              tile_filter(df, ch, e, unscale_d, no_bias), g.cut[q], self[ch],
                                              other[ch], gx[ch], gmu[ch]));
                // The warp's 16 channels of pair q: over the 8 lanes of column t.
#pragma unroll
                for (int m = 4; m < 32; m <<= 1) {
                    v.x += __shfl_xor_sync(0xffffffffu, v.x, m);
                    v.y += __shfl_xor_sync(0xffffffffu, v.y, m);
                    v.z += __shfl_xor_sync(0xffffffffu, v.z, m);
                    v.w += __shfl_xor_sync(0xffffffffu, v.w, m);
                }
                if (gr == 0) sh.warp_part[q][cw] = v;
            }
        }
        add_pair_gradients<MMA_WARPS>(sh.warp_part, g.slot, n, base, pair_grad);
    };
    if constexpr (SOURCE == PAIRS_RECORDED) {
        int total = 0;
        for (int start = 0; start == 0 || start < total; start += CHUNK)
            add_pairs(load_recorded_chunk(g, record, a, start, total), begin);
    } else {
        for (int chunk = begin; chunk == begin || chunk < end; chunk += CHUNK)  // as in message_forward
            add_pairs(load_mma_chunk(g, pos, cell, nb, filter, a, chunk, end, cutoff2), chunk);
    }
    if constexpr (FIRST) return;  // every thread: past the last barrier
#pragma unroll
    for (int ch = 0; ch < 2; ++ch)
        for (int k = 0; k < 3; ++k) {
            gx[ch][k] = sum_over_pairs(gx[ch][k]);
            gmu[ch][k] = sum_over_pairs(gmu[ch][k]);
        }
    if (MMA_PAIR_SPLIT > 1) {
        if (ps > 0 && t == 0)
            for (int ch = 0; ch < 2; ++ch)
                for (int k = 0; k < 3; ++k) {
                    sh.partial[ps - 1][k][local + ch] = gx[ch][k];
                    sh.partial[ps - 1][k + 3][local + ch] = gmu[ch][k];
                }
        __syncthreads();
        if (ps > 0) return;
        for (int s = 0; s < MMA_PAIR_SPLIT - 1; ++s)
            for (int ch = 0; ch < 2; ++ch)
                for (int k = 0; k < 3; ++k) {
                    gx[ch][k] += sh.partial[s][k][local + ch];
                    gmu[ch][k] += sh.partial[s][k + 3][local + ch];
                }
    }
    if (t != 0) return;
    for (int k = 0; k < 3; ++k) {
        const size_t at = (size_t)a * 3 * NF + k * NF + c;
        *reinterpret_cast<float2*>(grad_x + at) = make_float2(gx[0][k], gx[1][k]);
        *reinterpret_cast<float2*>(grad_mu_in + at) =
            make_float2(self[0].gm[k] + gmu[0][k], self[1].gm[k] + gmu[1][k]);
    }
}

#define MESSAGE_BACKWARD_MMA_PARAMS                                                                          \
    const double *pos, Cell cell, Neighbors nb, Filter filter, const float *mu_in, const float *x,          \
        const float *grad_q, const float *grad_mu, float *grad_x, float *grad_mu_in, float4 *pair_grad
#define MESSAGE_BACKWARD_MMA_ARGS pos, cell, nb, filter, mu_in, x, grad_q, grad_mu, grad_x, grad_mu_in, pair_grad

extern "C" __global__ void __launch_bounds__(MMA_THREADS, MMA_MIN_BLOCKS)
    message_backward_mma(MESSAGE_BACKWARD_MMA_PARAMS RECORD_PARAM) {
    message_backward_mma_body<LATER_PAIRS, false>(MESSAGE_BACKWARD_MMA_ARGS, RECORD_ARG);
}

#if FIRST_LAYER
extern "C" __global__ void __launch_bounds__(MMA_THREADS, MMA_MIN_BLOCKS)
    message_backward_mma_first(MESSAGE_BACKWARD_MMA_PARAMS RECORD_PARAM) {
    message_backward_mma_body<LATER_PAIRS, true>(MESSAGE_BACKWARD_MMA_ARGS, RECORD_ARG);
}
#endif

#endif
