// What would a layer of the dense chain cost as a tensor-core kernel over tiles of 16 atoms, with
// the weights split by output columns across a thread-block cluster? (perf-notes v70; the design
// of "What the 50 µs 200-atom target needs".) dense_mma.cu priced one block per tile running the
// whole chain alone: that block streams every weight (~1 MB a layer) through its one SM. Here a
// cluster of C blocks shares a tile: block `rank` owns OUT / C output columns of each link, copies
// only its slice of the weights into shared memory (cp.async, the next link's slice in flight
// while the current one computes), runs mma.sync m16n8k8 in 3×TF32 (hi·hi + lo·hi + hi·lo, f32
// accumulation), stores its activated columns once to L2, and after one cluster barrier per link
// every block copies the next link's input from L2 into shared memory (cp.async). The weights
// are split into hi and lo on the host; activations at use, by truncation (two instructions).
// (v70's earlier versions, in git history and docs/bench/v70: operands split by cvt.rna at every
// use, one n-tile per warp item, outputs pushed into every block through distributed shared
// memory or through L2: 21–26 µs for the five links at 192 atoms; split once while staging: 19.4.)
//
// The chain is the forward mixing kernel's five links with their row counts: 128 → 256 on the 48
// (atom, Cartesian) rows of μ, then 256 → 128, 128 → 384, 128 → 128, 128 → 384 on the 16 atoms'
// rows; SiLU after each; a link's input is the first rows and columns of the previous output. One
// launch is one chain on fresh weights, as one kernel of an MD step is; launches are timed in a
// CUDA graph of GRAPH launches (each pays the graph's per-kernel cost, ~1 µs, as in mdrun).
//
// Prints, for C in {8, 16} blocks and W in {4, 8} warps a block, and for one block per tile
// without a cluster (C = 1, W in {8, 16}: every weight read from L2 by that block as it is used),
// µs per launch for 1 tile (16 atoms) and 12 tiles (192 atoms), with the five links, the first
// link only, and none (the launch, the input's staging and a cluster barrier: the floor); and each
// variant's largest error after one chain against an f64 evaluation on the host, relative to the
// largest output.
//
// nvcc -O3 -arch=sm_90 -std=c++17 dense_cluster_mma.cu -o dense_cluster_mma && ./dense_cluster_mma
// ncu -k regex:chain ./dense_cluster_mma profile   (one launch of each variant on 12 tiles)
#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include <cuda_runtime.h>

#include "check.cuh"
#include "cluster.cuh"

constexpr int LINKS = 5, ATOMS = 16, GRAPH = 50;
__host__ __device__ constexpr int rows_of(int k) { return k == 0 ? 3 * ATOMS : ATOMS; }
__host__ __device__ constexpr int in_of(int k) { return k == 1 ? 256 : 128; }
__host__ __device__ constexpr int out_of(int k) { return k == 0 ? 256 : k == 2 || k == 4 ? 384 : 128; }
// One activation buffer: each link's input, copied raw from L2 (cp.async) after the previous
// link's cluster barrier. The mma's k-slots are permuted within each k-step: slots t and t + 4 of
// lane t take input columns 2t and 2t + 1, so a lane's A-fragment pair is one 8-byte load of
// adjacent columns (the weights are packed with the same permutation). Row strides ≡ 8 (mod 32)
// words: a warp's 8-byte loads of rows g, pairs t cover the 32 banks twice, no conflict.
__host__ __device__ constexpr int ld_of(int width) { return width + 8; }
__host__ __device__ constexpr int plane_floats(int k) { return rows_of(k) * ld_of(in_of(k)); }
__host__ __device__ constexpr int max_plane() {
    int most = 0;
    for (int k = 0; k < LINKS; ++k) most = most > plane_floats(k) ? most : plane_floats(k);
    return most;
}

struct Weights {
    const uint4* w[LINKS];  // per link: C slices, slice r = [NTL][KS][32 lanes] of {hi b0, hi b1, lo b0, lo b1}
};

// A reciprocal instead of a division: no FCHK slow-path test (1 / ∞ = 0 for z ≪ 0).
__device__ __forceinline__ float silu(float z) { return z * __frcp_rn(1.f + __expf(-z)); }

// The 3×TF32 split by truncation: hi keeps the top 19 bits (what a tf32 mma reads of a register),
// lo = x − hi is exact in f32 and the mma reads its top 19 bits. Two instructions; cvt.rna.tf32
// compiled to ~6 (v70's fourth run).
__device__ __forceinline__ void split(float x, unsigned& hi, unsigned& lo) {
    hi = __float_as_uint(x) & 0xffffe000u;
    lo = __float_as_uint(x - __uint_as_float(hi));
}

// Not volatile: ptxas may then move the next k-step's loads above it (as volatile it kept program
// order: one shared-memory round per k-step).
__device__ __forceinline__ void mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                    unsigned b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void copy16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src)
                 : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait_groups() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Link k's weight slice into shared memory: this block's [NTL][KS][32] uint4, contiguous.
template <int C, int K>
__device__ __forceinline__ void fetch_weights(const Weights& w, uint4* dst, unsigned rank) {
    constexpr int N = in_of(K) * out_of(K) / C / 2;  // uint4 per slice: two weights each
    const uint4* src = w.w[K] + (size_t)rank * N;
    for (int i = threadIdx.x; i < N; i += blockDim.x) copy16(dst + i, src + i);
}
template <int C>
__device__ __forceinline__ void fetch_weights(const Weights& w, uint4* dst, unsigned rank, int k) {
    switch (k) {
    case 0: fetch_weights<C, 0>(w, dst, rank); break;
    case 1: fetch_weights<C, 1>(w, dst, rank); break;
    case 2: fetch_weights<C, 2>(w, dst, rank); break;
    case 3: fetch_weights<C, 3>(w, dst, rank); break;
    case 4: fetch_weights<C, 4>(w, dst, rank); break;
    }
}

// Link K's input ([rows_of(K), in_of(K)], the first rows and columns of `src`, row stride
// src_ld, in L2 or global memory) into shared memory, row stride ld_of(in_of(K)).
template <int K>
__device__ __forceinline__ void stage_input(float* x, const float* src, int src_ld) {
    constexpr int ROWS = rows_of(K), COLS = in_of(K), LD = ld_of(COLS);
    for (int i = threadIdx.x * 4; i < ROWS * COLS; i += blockDim.x * 4)
        copy16(x + i / COLS * LD + i % COLS, src + (size_t)(i / COLS) * src_ld + i % COLS);
}

constexpr int SCRATCH_FLOATS = 16 * 256;  // KSPLIT·M·OUTB = KSPLIT·GROUPS·NB·128 ≤ W·256 with the split below, W ≤ 16

// Link K on this block's columns: gout[:, rank·OUTB + j] = silu(in · W)[:, ...], stored once to
// L2 (the next link's input for every block of the cluster, after the cluster barrier).
// Work items: (k part, m-tile, NB n-tiles), round robin over the warps: A fragments are read once
// per item and k-step for NB n-tiles, each with three accumulators (hi·hi, lo·hi, hi·lo) so that
// 3·NB mma chains run side by side. The k loop is split only as far as it takes to give every warp
// an item; split items meet in `scratch`, summed in a fixed order.
//
// ALONE (C = 1, no cluster): the block holds the whole tile; its weights are read from L2 as raw
// f32 pairs at use (`wg`, [NT][KS][32] float2, split like the activations), its input is the
// previous link's output in shared memory (row stride of that output), and its output goes to
// shared memory (`gout`, row stride ld_of(OUT)).
template <int C, int W, int K, bool ALONE = false>
__device__ __forceinline__ void link(const uint4* wsh, const float* x, float* gout, float* scratch, unsigned rank,
                                     const float2* __restrict__ wg = nullptr) {
    constexpr int M = rows_of(K), IN = in_of(K), OUT = out_of(K), OUTB = OUT / C;
    constexpr int LD = ALONE ? (K == 0 ? ld_of(in_of(0)) : ld_of(out_of(K - 1))) : ld_of(IN);
    constexpr int LDO = ALONE ? ld_of(OUT) : OUT;  // the output's row stride
    constexpr int MT = M / 16, NTL = OUTB / 8, KS = IN / 8, NB = NTL % 2 == 0 ? 2 : 1, GROUPS = MT * NTL / NB;
    constexpr int WANT = GROUPS >= W ? 1 : W / GROUPS;
    constexpr int KSPLIT = WANT >= 8 ? 8 : WANT >= 4 ? 4 : WANT >= 2 ? 2 : 1;
    constexpr int KSW = KS / KSPLIT, ITEMS = GROUPS * KSPLIT;
    static_assert(OUTB % 8 == 0 && KS % KSPLIT == 0, "the slice is whole n-tiles, the split whole k-steps");
    static_assert(KSPLIT == 1 || KSPLIT * M * OUTB <= SCRATCH_FLOATS, "the split's partial sums fit the scratch");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int item = warp; item < ITEMS; item += W) {
        const int group = item % GROUPS, part = item / GROUPS, m = group / (NTL / NB), n0 = group % (NTL / NB) * NB;
        float acc[NB][3][4] = {};
        const int a_at = (m * 16 + g) * LD + 2 * t;
        const uint4* b = wsh + (size_t)n0 * KS * 32 + lane;
        // Unrolled deeper when alone: eight k-steps' weight loads in flight before their mma.
#pragma unroll(ALONE ? 8 : 4)
        for (int s = 0; s < KSW; ++s) {
            const int ks = part * KSW + s;
            const float2 r0 = *reinterpret_cast<const float2*>(x + a_at + ks * 8);
            const float2 r1 = *reinterpret_cast<const float2*>(x + a_at + 8 * LD + ks * 8);
            // a0 = (g, slot t), a1 = (g + 8, slot t), a2 = (g, slot t + 4), a3 = (g + 8, slot t + 4).
            unsigned ah0, ah1, ah2, ah3, al0, al1, al2, al3;
            split(r0.x, ah0, al0);
            split(r1.x, ah1, al1);
            split(r0.y, ah2, al2);
            split(r1.y, ah3, al3);
#pragma unroll
            for (int j = 0; j < NB; ++j) {
                uint4 bv;
                if constexpr (ALONE) {
                    const float2 raw = __ldg(wg + ((size_t)(n0 + j) * KS + ks) * 32 + lane);
                    split(raw.x, bv.x, bv.z);
                    split(raw.y, bv.y, bv.w);
                } else {
                    bv = b[((size_t)j * KS + ks) * 32];
                }
                mma(acc[j][0], ah0, ah1, ah2, ah3, bv.x, bv.y);
                mma(acc[j][1], al0, al1, al2, al3, bv.x, bv.y);
                mma(acc[j][2], ah0, ah1, ah2, ah3, bv.z, bv.w);
            }
        }
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            float v[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) v[i] = acc[j][0][i] + (acc[j][1][i] + acc[j][2][i]);
            const int row = m * 16 + g, col = (n0 + j) * 8 + 2 * t;  // within this block's slice
            if constexpr (KSPLIT == 1) {
                *reinterpret_cast<float2*>(gout + row * LDO + rank * OUTB + col) = make_float2(silu(v[0]), silu(v[1]));
                *reinterpret_cast<float2*>(gout + (row + 8) * LDO + rank * OUTB + col) =
                    make_float2(silu(v[2]), silu(v[3]));
            } else {
                float* s = scratch + (size_t)part * M * OUTB;
                *reinterpret_cast<float2*>(s + row * OUTB + col) = make_float2(v[0], v[1]);
                *reinterpret_cast<float2*>(s + (row + 8) * OUTB + col) = make_float2(v[2], v[3]);
            }
        }
    }
    if constexpr (KSPLIT > 1) {
        __syncthreads();
        for (int e = threadIdx.x; e < M * OUTB / 2; e += blockDim.x) {
            const int row = e / (OUTB / 2), col = 2 * (e % (OUTB / 2));
            float2 sum = make_float2(0.f, 0.f);
#pragma unroll
            for (int p = 0; p < KSPLIT; ++p) {
                const float2 x = *reinterpret_cast<const float2*>(scratch + (size_t)p * M * OUTB + row * OUTB + col);
                sum.x += x.x;
                sum.y += x.y;
            }
            *reinterpret_cast<float2*>(gout + row * LDO + rank * OUTB + col) = make_float2(silu(sum.x), silu(sum.y));
        }
    }
}

// Offsets of each link's [M, OUT] output in a tile's global region.
__host__ __device__ constexpr int act_offset(int k) { return k == 0 ? 0 : act_offset(k - 1) + rows_of(k - 1) * out_of(k - 1); }
constexpr int ACT_FLOATS = act_offset(LINKS);

template <int C, int W>
__device__ __forceinline__ void run_link(int k, const uint4* wsh, const float* x, float* act, float* scratch,
                                         unsigned rank) {
    switch (k) {
    case 0: link<C, W, 0>(wsh, x, act + act_offset(0), scratch, rank); break;
    case 1: link<C, W, 1>(wsh, x, act + act_offset(1), scratch, rank); break;
    case 2: link<C, W, 2>(wsh, x, act + act_offset(2), scratch, rank); break;
    case 3: link<C, W, 3>(wsh, x, act + act_offset(3), scratch, rank); break;
    case 4: link<C, W, 4>(wsh, x, act + act_offset(4), scratch, rank); break;
    }
}
__device__ __forceinline__ void stage_next(int k, float* x, const float* act) {
    switch (k) {
    case 0: stage_input<1>(x, act + act_offset(0), out_of(0)); break;
    case 1: stage_input<2>(x, act + act_offset(1), out_of(1)); break;
    case 2: stage_input<3>(x, act + act_offset(2), out_of(2)); break;
    case 3: stage_input<4>(x, act + act_offset(3), out_of(3)); break;
    }
}

template <int C>
__host__ __device__ constexpr int slice_uint4() {
    int most = 0;
    for (int k = 0; k < LINKS; ++k) most = most > in_of(k) * out_of(k) / C / 2 ? most : in_of(k) * out_of(k) / C / 2;
    return most;
}

template <int C>
constexpr size_t shared_bytes() {
    return 16 * 2 * slice_uint4<C>() + sizeof(float) * (max_plane() + SCRATCH_FLOATS);
}

// One chain (links = LINKS), its first `links` links, or none (links = 0: the floor) on tile
// blockIdx.x / C.
template <int C, int W>
__global__ void __launch_bounds__(32 * W) chain(Weights w, const float* input, float* output, float* activations,
                                                int links) {
    extern __shared__ __align__(16) float sh[];
    uint4* wbuf = reinterpret_cast<uint4*>(sh);
    float* x = sh + 4 * 2 * slice_uint4<C>();
    float* scratch = x + max_plane();
    const unsigned rank = rank_in_cluster();
    const int tile = blockIdx.x / C;
    float* act = activations + (size_t)tile * ACT_FLOATS;
    stage_input<0>(x, input + (size_t)tile * rows_of(0) * in_of(0), in_of(0));
    if (links > 0) fetch_weights<C, 0>(w, wbuf, rank);
    commit();
    if (links > 1) fetch_weights<C, 1>(w, wbuf + slice_uint4<C>(), rank);
    commit();
    for (int k = 0; k < links; ++k) {
        wait_groups<1>();  // link k's input and slice landed; link k + 1's slice may be in flight
        __syncthreads();
        run_link<C, W>(k, wbuf + (k % 2) * slice_uint4<C>(), x, act, scratch, rank);
        cluster_sync_all();  // every block's columns of link k in L2; link k's weight buffer and x free
        if (k + 1 < links) stage_next(k, x, act);
        commit();
        if (k + 2 < links) fetch_weights<C>(w, wbuf + (k % 2) * slice_uint4<C>(), rank, k + 2);
        commit();
    }
    wait_groups<0>();
    if (links == 0) cluster_sync_all();  // the floor keeps one cluster barrier
    if (rank == 0 && links == LINKS) {
        constexpr int M = rows_of(LINKS - 1), OUT = out_of(LINKS - 1);
        for (int i = threadIdx.x; i < M * OUT; i += blockDim.x)
            output[(size_t)tile * M * OUT + i] = __ldcg(act + act_offset(LINKS - 1) + i);
    }
}

struct RawWeights {
    const float2* w[LINKS];  // per link [NT][KS][32 lanes]: the permuted slot pair (2t, 2t + 1), raw f32
};

template <int W>
__device__ __forceinline__ void run_alone(int k, const RawWeights& w, float* a, float* b, float* scratch) {
    switch (k) {
    case 0: link<1, W, 0, true>(nullptr, a, b, scratch, 0, w.w[0]); break;
    case 1: link<1, W, 1, true>(nullptr, b, a, scratch, 0, w.w[1]); break;
    case 2: link<1, W, 2, true>(nullptr, a, b, scratch, 0, w.w[2]); break;
    case 3: link<1, W, 3, true>(nullptr, b, a, scratch, 0, w.w[3]); break;
    case 4: link<1, W, 4, true>(nullptr, a, b, scratch, 0, w.w[4]); break;
    }
}
constexpr int ALONE_A = rows_of(0) * ld_of(128);  // the input, links 1 and 3's outputs
constexpr int ALONE_B = rows_of(0) * ld_of(256) > ATOMS * ld_of(384) ? rows_of(0) * ld_of(256) : ATOMS * ld_of(384);
constexpr size_t ALONE_BYTES = sizeof(float) * (ALONE_A + ALONE_B + SCRATCH_FLOATS);

// One block per tile, no cluster: no exchange at all, every weight through this block's SM.
template <int W>
__global__ void __launch_bounds__(32 * W) alone(RawWeights w, const float* input, float* output, int links) {
    extern __shared__ __align__(16) float sh[];
    float* a = sh;
    float* b = a + ALONE_A;
    float* scratch = b + ALONE_B;
    const int tile = blockIdx.x;
    stage_input<0>(a, input + (size_t)tile * rows_of(0) * in_of(0), in_of(0));
    commit();
    wait_groups<0>();
    __syncthreads();
    for (int k = 0; k < links; ++k) {
        run_alone<W>(k, w, a, b, scratch);
        __syncthreads();
    }
    if (links == LINKS) {
        constexpr int M = rows_of(LINKS - 1), OUT = out_of(LINKS - 1);
        for (int i = threadIdx.x; i < M * OUT; i += blockDim.x)
            output[(size_t)tile * M * OUT + i] = b[i / OUT * ld_of(OUT) + i % OUT];
    }
}

static double silu_host(double z) { return z / (1.0 + std::exp(-z)); }
static float as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// The device's split (`split`): hi truncated to tf32's 19 bits.
static unsigned tf32_host(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u & 0xffffe000u;
}

struct Problem {
    std::vector<std::vector<float>> w;  // [IN, OUT] row-major per link
    std::vector<float> x;               // [tiles][48][128]
    std::vector<double> reference;      // tile 0's output, f64
    double largest = 0;
    float *dx = nullptr, *dy = nullptr, *act = nullptr;
};

// Accuracy on one tile, then µs per launch for 1 and all tiles with 5, 1 and 0 links; one row.
template <class Launch>
void time_variant(const Problem& p, int tiles_max, bool profile, cudaStream_t stream, Launch& launch, int C, int W,
                  size_t smem) {
    if (profile) {
        launch(tiles_max, LINKS);
        CHECK(cudaStreamSynchronize(stream));
        return;
    }
    launch(1, LINKS);
    CHECK(cudaStreamSynchronize(stream));
    std::vector<float> y((size_t)rows_of(LINKS - 1) * out_of(LINKS - 1));
    CHECK(cudaMemcpy(y.data(), p.dy, y.size() * 4, cudaMemcpyDeviceToHost));
    double err = 0;
    for (size_t i = 0; i < y.size(); ++i) err = std::fmax(err, std::fabs(y[i] - p.reference[i]));

    double us[2][3];  // [1 tile, all tiles][no link, one link, five]
    const int tile_counts[2] = {1, tiles_max};
    for (int ti = 0; ti < 2; ++ti)
        for (int li = 0; li < 3; ++li) {
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < GRAPH; ++i) launch(tile_counts[ti], li == 2 ? LINKS : li);
            CHECK(cudaStreamEndCapture(stream, &graph));
            CHECK(cudaGraphInstantiate(&exec, graph, 0));
            CHECK(cudaGraphLaunch(exec, stream));  // warm-up
            CHECK(cudaStreamSynchronize(stream));
            cudaEvent_t start, stop;
            CHECK(cudaEventCreate(&start));
            CHECK(cudaEventCreate(&stop));
            std::vector<float> times;
            for (int rep = 0; rep < 9; ++rep) {
                CHECK(cudaEventRecord(start, stream));
                CHECK(cudaGraphLaunch(exec, stream));
                CHECK(cudaEventRecord(stop, stream));
                CHECK(cudaEventSynchronize(stop));
                float ms;
                CHECK(cudaEventElapsedTime(&ms, start, stop));
                times.push_back(ms);
            }
            std::sort(times.begin(), times.end());
            us[ti][li] = times[4] * 1000.0 / GRAPH;
            CHECK(cudaGraphExecDestroy(exec));
            CHECK(cudaGraphDestroy(graph));
        }
    printf("| %d | %d | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2e |\n", C, W,
           smem / 1024.0, us[0][2], us[0][1], us[0][0], us[1][2], us[1][1], us[1][0], err / p.largest);
}

// With `profile`, one plain launch of the whole chain on every tile (for ncu), nothing timed.
template <int C, int W>
void measure(const Problem& p, int tiles_max, bool profile) {
    // Weights in this C's slice order, split into tf32 hi and lo on the host (they are constants).
    Weights w;
    std::vector<uint4*> allocations;
    for (int k = 0; k < LINKS; ++k) {
        const int IN = in_of(k), OUT = out_of(k), KS = IN / 8, NTL = OUT / C / 8;
        std::vector<uint4> packed((size_t)IN * OUT / 2);
        size_t at = 0;
        for (int r = 0; r < C; ++r)
            for (int nl = 0; nl < NTL; ++nl)
                for (int ks = 0; ks < KS; ++ks)
                    for (int lane = 0; lane < 32; ++lane) {
                        unsigned hl[2][2];
                        for (int h = 0; h < 2; ++h) {  // slot lane % 4 + 4h takes column 2 (lane % 4) + h
                            const float v = p.w[k][(size_t)(ks * 8 + 2 * (lane % 4) + h) * OUT + (r * NTL + nl) * 8 + lane / 4];
                            hl[0][h] = tf32_host(v);
                            hl[1][h] = tf32_host(v - as_float(hl[0][h]));
                        }
                        packed[at++] = make_uint4(hl[0][0], hl[0][1], hl[1][0], hl[1][1]);
                    }
        uint4* d;
        CHECK(cudaMalloc(&d, packed.size() * 16));
        CHECK(cudaMemcpy(d, packed.data(), packed.size() * 16, cudaMemcpyHostToDevice));
        w.w[k] = d;
        allocations.push_back(d);
    }
    const size_t smem = shared_bytes<C>();
    CHECK(cudaFuncSetAttribute(chain<C, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (C > 8) CHECK(cudaFuncSetAttribute(chain<C, W>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    auto launch = [&](int tiles, int links) {
        const ClusterLaunch cl(tiles * C, 32 * W, smem, stream, C);
        CHECK(cudaLaunchKernelEx(&cl.cfg, chain<C, W>, w, (const float*)p.dx, p.dy, p.act, links));
    };
    time_variant(p, tiles_max, profile, stream, launch, C, W, smem);
    for (uint4* d : allocations) CHECK(cudaFree(d));
    CHECK(cudaStreamDestroy(stream));
}

// One block per tile (C = 1 in the table), W warps.
template <int W>
void measure_alone(const Problem& p, int tiles_max, bool profile) {
    RawWeights w;
    std::vector<float2*> allocations;
    for (int k = 0; k < LINKS; ++k) {
        const int IN = in_of(k), OUT = out_of(k), KS = IN / 8, NT = OUT / 8;
        std::vector<float2> packed((size_t)IN * OUT / 2);
        size_t at = 0;
        for (int nt = 0; nt < NT; ++nt)
            for (int ks = 0; ks < KS; ++ks)
                for (int lane = 0; lane < 32; ++lane) {
                    const size_t row = ks * 8 + 2 * (lane % 4), col = nt * 8 + lane / 4;
                    packed[at++] = make_float2(p.w[k][row * OUT + col], p.w[k][(row + 1) * OUT + col]);
                }
        float2* d;
        CHECK(cudaMalloc(&d, packed.size() * 8));
        CHECK(cudaMemcpy(d, packed.data(), packed.size() * 8, cudaMemcpyHostToDevice));
        w.w[k] = d;
        allocations.push_back(d);
    }
    CHECK(cudaFuncSetAttribute(alone<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)ALONE_BYTES));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    auto launch = [&](int tiles, int links) {
        alone<W><<<tiles, 32 * W, ALONE_BYTES, stream>>>(w, p.dx, p.dy, links);
        CHECK(cudaGetLastError());
    };
    time_variant(p, tiles_max, profile, stream, launch, 1, W, ALONE_BYTES);
    for (float2* d : allocations) CHECK(cudaFree(d));
    CHECK(cudaStreamDestroy(stream));
}

int main(int argc, char**) {
    const bool profile = argc > 1;  // any argument: one launch per variant, for ncu
    const int tiles_max = 12;
    std::mt19937 rng(2026);
    std::normal_distribution<double> normal(0.0, 1.0);
    Problem p;
    p.w.resize(LINKS);
    for (int k = 0; k < LINKS; ++k) {
        p.w[k].resize((size_t)in_of(k) * out_of(k));
        for (auto& v : p.w[k]) v = (float)(normal(rng) * 1.5 / std::sqrt((double)in_of(k)));
    }
    p.x.resize((size_t)tiles_max * rows_of(0) * in_of(0));
    for (auto& v : p.x) v = (float)normal(rng);
    CHECK(cudaMalloc(&p.dx, p.x.size() * 4));
    CHECK(cudaMalloc(&p.dy, (size_t)tiles_max * rows_of(LINKS - 1) * out_of(LINKS - 1) * 4));
    CHECK(cudaMemcpy(p.dx, p.x.data(), p.x.size() * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMalloc(&p.act, (size_t)tiles_max * ACT_FLOATS * 4));

    // f64 reference of tile 0's chain, with the weights as the GPU holds them (f32).
    std::vector<double> cur(p.x.begin(), p.x.begin() + rows_of(0) * in_of(0));
    int width = in_of(0);
    for (int k = 0; k < LINKS; ++k) {
        std::vector<double> next((size_t)rows_of(k) * out_of(k));
        for (int r = 0; r < rows_of(k); ++r)
            for (int o = 0; o < out_of(k); ++o) {
                double s = 0;
                for (int i = 0; i < in_of(k); ++i) s += cur[(size_t)r * width + i] * (double)p.w[k][(size_t)i * out_of(k) + o];
                next[(size_t)r * out_of(k) + o] = silu_host(s);
            }
        cur = next;
        width = out_of(k);
    }
    p.reference = cur;
    for (double v : cur) p.largest = std::fmax(p.largest, std::fabs(v));

    printf("µs per launch (median of 9 replays of a graph of %d launches); chain: five links, 3×TF32\n", GRAPH);
    printf("| C | W | smem KB | 16 atoms: 5 links | 1 link | none | %d atoms: 5 links | 1 link | none | rel. error |\n",
           16 * tiles_max);
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    measure_alone<8>(p, tiles_max, profile);
    measure_alone<16>(p, tiles_max, profile);
    measure<8, 4>(p, tiles_max, profile);
    measure<8, 8>(p, tiles_max, profile);
    measure<16, 4>(p, tiles_max, profile);
    measure<16, 8>(p, tiles_max, profile);
    return 0;
}
