// What would a layer of the dense chain cost as a tensor-core kernel over tiles of 16 atoms, with
// the weights split by output columns across a thread-block cluster? (perf-notes v70; the design
// of "What the 50 µs 200-atom target needs".) dense_mma.cu priced one block per tile running the
// whole chain alone: that block streams every weight (~1 MB a layer) through its one SM. Here a
// cluster of C blocks shares a tile: block `rank` owns OUT / C output columns of each link, copies
// only its slice of the weights into shared memory (cp.async, the next link's slice in flight
// while the current one computes), runs its mma.sync m16n8k8 in 3×TF32 (hi·hi + lo·hi + hi·lo,
// f32 accumulation) and pushes its activated columns into every block of the cluster (distributed
// shared memory), then one cluster barrier per link.
//
// The chain is the forward mixing kernel's five links with their row counts: 128 → 256 on the 48
// (atom, Cartesian) rows of μ, then 256 → 128, 128 → 384, 128 → 128, 128 → 384 on the 16 atoms'
// rows; SiLU after each; a link's input is the first rows and columns of the previous output. One
// launch is one chain on fresh weights, as one kernel of an MD step is; launches are timed in a
// CUDA graph of GRAPH launches (each pays the graph's per-kernel cost, ~1 µs, as in mdrun).
//
// Prints, for two exchanges (push through distributed shared memory, or through L2), C in {4, 8,
// 16} blocks and W in {4, 8} warps a block, µs per launch for 1 tile (16 atoms) and 12 tiles (192
// atoms), with the five links, the first link only, and none (the launch, the input copy and a
// cluster barrier: the floor); and each variant's largest error after one chain against an f64
// evaluation on the host, relative to the largest output.
//
// nvcc -O3 -arch=sm_90 -std=c++17 dense_cluster_mma.cu -o dense_cluster_mma && ./dense_cluster_mma
// ncu -k regex:chain ./dense_cluster_mma profile   (one launch of each variant on 12 tiles)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>
#include <cuda_runtime.h>

#include "check.cuh"

constexpr int LINKS = 5, ATOMS = 16, GRAPH = 50;
__host__ __device__ constexpr int rows_of(int k) { return k == 0 ? 3 * ATOMS : ATOMS; }
__host__ __device__ constexpr int in_of(int k) { return k == 1 ? 256 : 128; }
__host__ __device__ constexpr int out_of(int k) { return k == 0 ? 256 : k == 2 || k == 4 ? 384 : 128; }
// Activation buffers: A holds the chain's input and links 1 and 3's outputs, B links 0, 2 and 4's.
// Row strides ≡ 4 (mod 32) words: a warp's A-fragment loads (rows g, columns t) hit 32 banks.
__host__ __device__ constexpr int ld_of(int width) { return width + 4; }
constexpr int A_FLOATS = 3 * ATOMS * ld_of(128);
constexpr int B_FLOATS = 3 * ATOMS * ld_of(256) > ATOMS * ld_of(384) ? 3 * ATOMS * ld_of(256) : ATOMS * ld_of(384);

struct Weights {
    const float* w[LINKS];  // per link: C slices, slice r = [NTL][KS][32 lanes][2] (fragment order)
};

__device__ __forceinline__ float silu(float z) { return z / (1.f + __expf(-z)); }

__device__ __forceinline__ unsigned tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// Not volatile: it has outputs, and ptxas may then hoist the next k-step's loads above it (as
// volatile it kept program order, one shared-memory round per k-step: v70's first run).
__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void copy16(float* dst, const float* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src)
                 : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait_groups() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// The address of `local` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ unsigned remote(const void* local, unsigned rank) {
    unsigned out;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                 : "=r"(out)
                 : "r"((unsigned)__cvta_generic_to_shared(local)), "r"(rank));
    return out;
}
__device__ __forceinline__ void store_remote(unsigned addr, float2 v) {
    asm volatile("st.shared::cluster.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(v.x), "f"(v.y) : "memory");
}

// Link k's weight slice into shared memory: this block's [NTL][KS][32][2] floats, contiguous.
template <int C, int K>
__device__ __forceinline__ void fetch_weights(const Weights& w, float* dst, unsigned rank) {
    constexpr int FLOATS = in_of(K) * out_of(K) / C;
    const float* src = w.w[K] + (size_t)rank * FLOATS;
    for (int i = threadIdx.x * 4; i < FLOATS; i += blockDim.x * 4) copy16(dst + i, src + i);
}
template <int C>
__device__ __forceinline__ void fetch_weights(const Weights& w, float* dst, unsigned rank, int k) {
    switch (k) {
    case 0: fetch_weights<C, 0>(w, dst, rank); break;
    case 1: fetch_weights<C, 1>(w, dst, rank); break;
    case 2: fetch_weights<C, 2>(w, dst, rank); break;
    case 3: fetch_weights<C, 3>(w, dst, rank); break;
    case 4: fetch_weights<C, 4>(w, dst, rank); break;
    }
}

// Link K on this block's columns: out[:, rank·OUTB + j] = silu(in · W)[:, ...] in every block.
// Work items: (k part, m-tile, n-tile), round robin over the warps; the k loop is split only as far
// as it takes to give every warp an item. Split items meet in `scratch`, summed in a fixed order.
// MODE 0 (push): every block stores its activated columns into every block's `out` (distributed
// shared memory). MODE 1 (through L2): it stores them once, to `gout` ([M, OUT] of this tile and
// link in global memory); after the cluster barrier each block copies the next link's input from
// there into shared memory (cp.async, L2 only).
template <int C, int W, int K, int MODE>
__device__ __forceinline__ void emit(float* out, float* gout, int row, int gc, float2 y) {
    if constexpr (MODE == 0) {
        for (unsigned r = 0; r < C; ++r) store_remote(remote(out + row * ld_of(out_of(K)) + gc, r), y);
    } else {
        *reinterpret_cast<float2*>(gout + row * out_of(K) + gc) = y;
    }
}

template <int C, int W, int K, int MODE>
__device__ __forceinline__ void link(const float* wsh, const float* in, float* out, float* gout, float* scratch,
                                     unsigned rank) {
    constexpr int M = rows_of(K), IN = in_of(K), OUT = out_of(K), OUTB = OUT / C;
    constexpr int MT = M / 16, NTL = OUTB / 8, KS = IN / 8, TILES = MT * NTL;
    constexpr int WANT = TILES >= W ? 1 : W / TILES;
    constexpr int KSPLIT = WANT >= 8 ? 8 : WANT >= 4 ? 4 : WANT >= 2 ? 2 : 1;
    constexpr int KSW = KS / KSPLIT, ITEMS = TILES * KSPLIT;
    // The input is the previous link's output (the chain's input for link 0), in its row stride.
    constexpr int LDI = K == 0 ? ld_of(in_of(0)) : ld_of(out_of(K - 1));
    static_assert(OUTB % 8 == 0 && KS % KSPLIT == 0, "the slice is whole n-tiles, the split whole k-steps");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int item = warp; item < ITEMS; item += W) {
        const int tile = item % TILES, part = item / TILES, m = tile / NTL, n = tile % NTL;
        float acc[3][4] = {};
        const float* a_row = in + (m * 16 + g) * LDI + t;
        const float2* b = reinterpret_cast<const float2*>(wsh) + ((size_t)n * KS) * 32 + lane;
#pragma unroll 4
        for (int ks = part * KSW; ks < (part + 1) * KSW; ++ks) {
            const float av[4] = {a_row[ks * 8], a_row[8 * LDI + ks * 8], a_row[ks * 8 + 4], a_row[8 * LDI + ks * 8 + 4]};
            const float2 bv = b[ks * 32];
            unsigned ah[4], al[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                ah[i] = tf32(av[i]);
                al[i] = tf32(av[i] - __uint_as_float(ah[i]));
            }
            const unsigned bh0 = tf32(bv.x), bh1 = tf32(bv.y);
            const unsigned bl0 = tf32(bv.x - __uint_as_float(bh0)), bl1 = tf32(bv.y - __uint_as_float(bh1));
            mma(acc[0], ah, bh0, bh1);
            mma(acc[1], al, bh0, bh1);
            mma(acc[2], ah, bl0, bl1);
        }
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = acc[0][i] + (acc[1][i] + acc[2][i]);
        const int row = m * 16 + g, col = n * 8 + 2 * t;  // within this block's slice
        if constexpr (KSPLIT == 1) {
            const int gc = rank * OUTB + col;
            emit<C, W, K, MODE>(out, gout, row, gc, make_float2(silu(v[0]), silu(v[1])));
            emit<C, W, K, MODE>(out, gout, row + 8, gc, make_float2(silu(v[2]), silu(v[3])));
        } else {
            float* s = scratch + (size_t)part * M * OUTB;
            *reinterpret_cast<float2*>(s + row * OUTB + col) = make_float2(v[0], v[1]);
            *reinterpret_cast<float2*>(s + (row + 8) * OUTB + col) = make_float2(v[2], v[3]);
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
            const float2 y = make_float2(silu(sum.x), silu(sum.y));
            emit<C, W, K, MODE>(out, gout, row, rank * OUTB + col, y);
        }
    }
}

// Offsets of each link's [M, OUT] output in a tile's global region (MODE 1).
__host__ __device__ constexpr int act_offset(int k) { return k == 0 ? 0 : act_offset(k - 1) + rows_of(k - 1) * out_of(k - 1); }
constexpr int ACT_FLOATS = act_offset(LINKS);

template <int C, int W, int MODE>
__device__ __forceinline__ void run_link(int k, const float* wsh, float* a, float* b, float* act, float* scratch,
                                         unsigned rank) {
    switch (k) {
    case 0: link<C, W, 0, MODE>(wsh, a, b, act + act_offset(0), scratch, rank); break;
    case 1: link<C, W, 1, MODE>(wsh, b, a, act + act_offset(1), scratch, rank); break;
    case 2: link<C, W, 2, MODE>(wsh, a, b, act + act_offset(2), scratch, rank); break;
    case 3: link<C, W, 3, MODE>(wsh, b, a, act + act_offset(3), scratch, rank); break;
    case 4: link<C, W, 4, MODE>(wsh, a, b, act + act_offset(4), scratch, rank); break;
    }
}

// MODE 1: link k + 1's input (the first rows and columns of link k's output) from L2 into the
// shared buffer that MODE 0 pushes link k's output into, in the same row stride.
template <int K>
__device__ __forceinline__ void stage_input(float* dst, const float* act) {
    constexpr int ROWS = rows_of(K + 1), COLS = in_of(K + 1), OUT = out_of(K);
    for (int i = threadIdx.x * 4; i < ROWS * COLS; i += blockDim.x * 4)
        copy16(dst + i / COLS * ld_of(OUT) + i % COLS, act + act_offset(K) + i / COLS * OUT + i % COLS);
}
__device__ __forceinline__ void stage_input(int k, float* a, float* b, const float* act) {
    switch (k) {
    case 0: stage_input<0>(b, act); break;
    case 1: stage_input<1>(a, act); break;
    case 2: stage_input<2>(b, act); break;
    case 3: stage_input<3>(a, act); break;
    }
}

template <int C>
__host__ __device__ constexpr int slice_floats() {
    int most = 0;
    for (int k = 0; k < LINKS; ++k) most = most > in_of(k) * out_of(k) / C ? most : in_of(k) * out_of(k) / C;
    return most;
}
constexpr int SCRATCH_FLOATS = 8 * 16 * 8;  // KSPLIT·M·OUTB = KSPLIT·TILES·128 ≤ W·128 with the split above

template <int C>
constexpr size_t shared_bytes() {
    return sizeof(float) * (2 * slice_floats<C>() + A_FLOATS + B_FLOATS + SCRATCH_FLOATS);
}

// One chain (links = LINKS) or none (links = 0: the floor) on tile blockIdx.x / C.
template <int C, int W, int MODE>
__global__ void __launch_bounds__(32 * W) chain(Weights w, const float* input, float* output, float* activations,
                                                int links) {
    extern __shared__ __align__(16) float sh[];
    float* a = sh + 2 * slice_floats<C>();
    float* b = a + A_FLOATS;
    float* scratch = b + B_FLOATS;
    const unsigned rank = cluster_rank();
    const int tile = blockIdx.x / C;
    float* act = activations + (size_t)tile * ACT_FLOATS;
    const float* x = input + (size_t)tile * rows_of(0) * in_of(0);
    for (int i = threadIdx.x * 4; i < rows_of(0) * in_of(0); i += blockDim.x * 4)
        copy16(a + i / in_of(0) * ld_of(in_of(0)) + i % in_of(0), x + i);
    if (links > 0) fetch_weights<C, 0>(w, sh, rank);
    commit();
    if (links > 1) fetch_weights<C, 1>(w, sh + slice_floats<C>(), rank);
    commit();
    // Every block's buffers are written by the others from link 0 on: all must have started.
    cluster_sync();
    for (int k = 0; k < links; ++k) {
        wait_groups<1>();  // link k's slice (and the input) landed; link k + 1's may be in flight
        __syncthreads();
        run_link<C, W, MODE>(k, sh + (k % 2) * slice_floats<C>(), a, b, act, scratch, rank);
        cluster_sync();  // every block's columns of link k everywhere; link k's weight buffer free
        if (MODE == 1 && k + 1 < links) {
            stage_input(k, a, b, act);
            commit();
        }
        if (k + 2 < links) fetch_weights<C>(w, sh + (k % 2) * slice_floats<C>(), rank, k + 2);
        commit();
    }
    wait_groups<0>();
    if (rank == 0 && links == LINKS) {
        constexpr int M = rows_of(LINKS - 1), OUT = out_of(LINKS - 1);
        for (int i = threadIdx.x; i < M * OUT; i += blockDim.x)
            output[(size_t)tile * M * OUT + i] = MODE == 0 ? b[i / OUT * ld_of(OUT) + i % OUT] : __ldcg(act + act_offset(LINKS - 1) + i);
    }
}

static double silu_host(double z) { return z / (1.0 + std::exp(-z)); }

struct Problem {
    std::vector<std::vector<float>> w;  // [IN, OUT] row-major per link
    std::vector<float> x;               // [tiles][48][128]
    std::vector<double> reference;      // tile 0's output, f64
    double largest = 0;
    float *dx = nullptr, *dy = nullptr, *act = nullptr;
};

// With `profile`, one plain launch of the whole chain on every tile (for ncu), nothing timed.
template <int C, int W, int MODE>
void measure(const Problem& p, int tiles_max, bool profile) {
    // Weights in this C's slice order.
    Weights w;
    std::vector<float*> allocations;
    for (int k = 0; k < LINKS; ++k) {
        const int IN = in_of(k), OUT = out_of(k), KS = IN / 8, NTL = OUT / C / 8;
        std::vector<float> packed((size_t)IN * OUT);
        size_t at = 0;
        for (int r = 0; r < C; ++r)
            for (int nl = 0; nl < NTL; ++nl)
                for (int ks = 0; ks < KS; ++ks)
                    for (int lane = 0; lane < 32; ++lane)
                        for (int h = 0; h < 2; ++h)
                            packed[at++] = p.w[k][(size_t)(ks * 8 + lane % 4 + 4 * h) * OUT + (r * NTL + nl) * 8 + lane / 4];
        float* d;
        CHECK(cudaMalloc(&d, packed.size() * 4));
        CHECK(cudaMemcpy(d, packed.data(), packed.size() * 4, cudaMemcpyHostToDevice));
        w.w[k] = d;
        allocations.push_back(d);
    }
    const size_t smem = shared_bytes<C>();
    CHECK(cudaFuncSetAttribute(chain<C, W, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (C > 8) CHECK(cudaFuncSetAttribute(chain<C, W, MODE>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    auto launch = [&](int tiles, int links) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(tiles * C);
        cfg.blockDim = dim3(32 * W);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cudaLaunchAttribute attr;
        attr.id = cudaLaunchAttributeClusterDimension;
        attr.val.clusterDim.x = C;
        attr.val.clusterDim.y = 1;
        attr.val.clusterDim.z = 1;
        cfg.attrs = &attr;
        cfg.numAttrs = 1;
        CHECK(cudaLaunchKernelEx(&cfg, chain<C, W, MODE>, w, (const float*)p.dx, p.dy, p.act, links));
    };
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
    printf("| %s | %d | %d | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2e |\n", MODE ? "L2" : "push", C, W,
           smem / 1024.0, us[0][2], us[0][1], us[0][0], us[1][2], us[1][1], us[1][0], err / p.largest);
    for (float* d : allocations) CHECK(cudaFree(d));
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
    printf("| exchange | C | W | smem KB | 16 atoms: 5 links | 1 link | none | %d atoms: 5 links | 1 link | none | rel. error |\n",
           16 * tiles_max);
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    measure<4, 8, 0>(p, tiles_max, profile);
    measure<8, 4, 0>(p, tiles_max, profile);
    measure<8, 8, 0>(p, tiles_max, profile);
    measure<16, 8, 0>(p, tiles_max, profile);
    measure<4, 8, 1>(p, tiles_max, profile);
    measure<8, 4, 1>(p, tiles_max, profile);
    measure<8, 8, 1>(p, tiles_max, profile);
    measure<16, 8, 1>(p, tiles_max, profile);
    return 0;
}
