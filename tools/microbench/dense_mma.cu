// What would one link of the dense chain cost with tiles of 16 atoms on tensor cores? (perf-notes
// v69, "What the 50 µs 200-atom target needs".) At 192 atoms the per-atom dense kernels are
// bound by each block's own chain of weight loads and matvec arithmetic; the alternative is a
// block per tile of 16 atoms whose matvecs are mma.sync m16n8k8 in 3×TF32 (hi·hi + lo·hi + hi·lo,
// f32 accumulation), the weights read once per 16 atoms in fragment order.
//
// A block runs a chain of the mixing kernel's five link shapes (128 → 256, 256 → 128, 128 → 384,
// 128 → 128, 128 → 384; SiLU after each; a link's input is the first IN columns of the previous
// output) REPS times on its own tile, the weights shared by every block (713 KB, L2-resident), as
// in a dense kernel. Prints µs per link for 12 blocks (192 atoms), 48 and 132, for:
//   mma3  3×TF32 tensor cores (the candidate)
//   mma1  1×TF32 (for scale; not accurate enough for the 1e-5 tolerance, see the errors)
//   ffma  f32 FMA, one thread per output column over a group of rows (a plain SIMT matvec)
// and each variant's largest error after one chain against an f64 evaluation on the host,
// relative to the largest output.
//
// nvcc -O3 -arch=sm_90 -std=c++17 dense_mma.cu -o dense_mma && ./dense_mma
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
#include <cuda_runtime.h>

#include "check.cuh"

constexpr int ROWS = 16, THREADS = 512, WARPS = THREADS / 32, LINKS = 5, MAX_OUT = 384, PAD = 4;
constexpr int LD = MAX_OUT + PAD;  // shared-memory row stride: conflict-free A fragments
__host__ __device__ constexpr int in_of(int k) { return k == 1 ? 256 : 128; }
__host__ __device__ constexpr int out_of(int k) { return k == 0 ? 256 : k == 2 || k == 4 ? 384 : 128; }

struct Links {
    const float* w[LINKS];   // [IN, OUT] row-major: y = x · W
    const float* wp[LINKS];  // fragment order: [OUT/8][32 lanes][IN/8][2]
};

__device__ __forceinline__ float silu(float z) { return z / (1.f + __expf(-z)); }

__device__ __forceinline__ unsigned tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A 16-byte load that the compiler keeps in program order with the other asm volatile statements
// (the loads and the mma): left to itself, nvcc issued each float4 just before its first use, one
// dependent L2 round per two k-steps (seen in the SASS of the first version).
__device__ __forceinline__ float4 load_now(const float* p) {
    float4 v;
    asm volatile("ld.global.nc.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}

// A lane's weights of k-steps [kc·KC, (kc + 1)·KC) of n-tile nt (fragment order: [NT][32][KS][2]).
// A shared-memory load kept in program order too: otherwise ptxas hoists every k-step's A
// fragments ahead of the mma chain and spills.
__device__ __forceinline__ float lds_now(const float* p) {
    float v;
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"((unsigned)__cvta_generic_to_shared(p)));
    return v;
}

template <int KS, int KC>
__device__ __forceinline__ void load_chunk(float4 (&b)[KC / 2], const float* wp, int nt, int kc, int lane) {
    const float* src = wp + ((size_t)nt * 32 + lane) * 2 * KS + kc * 2 * KC;
#pragma unroll
    for (int i = 0; i < KC / 2; ++i) b[i] = load_now(src + 4 * i);
}

// One link on tensor cores: y[16, OUT_] = silu(x[16, IN_] · W). Warp w takes n-tiles w, w + 16, ...,
// each in chunks of 16 k-steps; a chunk's weights (32 floats a lane, one round) are in flight
// while the warp computes the chunk before.
template <int IN_, int OUT_, int TERMS>
__device__ __forceinline__ void mma_link(const float* __restrict__ wp, const float* x, float* y) {
    constexpr int KS = IN_ / 8, NT = OUT_ / 8, KC = KS < 16 ? KS : 16, CHUNKS = KS / KC;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    if (warp >= NT) return;
    const int mine = (NT - warp + WARPS - 1) / WARPS * CHUNKS;  // this warp's chunks
    float4 cur[KC / 2], next[KC / 2];
    load_chunk<KS, KC>(cur, wp, warp, 0, lane);
    // Three accumulators: the terms' chains run side by side.
    float acc[3][4] = {};
    for (int chunk = 0; chunk < mine; ++chunk) {
        const int nt = warp + chunk / CHUNKS * WARPS, kc = chunk % CHUNKS;
        if (chunk + 1 < mine)
            load_chunk<KS, KC>(next, wp, warp + (chunk + 1) / CHUNKS * WARPS, (chunk + 1) % CHUNKS, lane);
        const float* b = reinterpret_cast<const float*>(cur);
#pragma unroll
        for (int k = 0; k < KC; ++k) {
            const int col = (kc * KC + k) * 8 + t;
            const float av[4] = {lds_now(x + g * LD + col), lds_now(x + (g + 8) * LD + col),
                                 lds_now(x + g * LD + col + 4), lds_now(x + (g + 8) * LD + col + 4)};
            unsigned ah[4], al[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                ah[i] = tf32(av[i]);
                al[i] = tf32(av[i] - __uint_as_float(ah[i]));
            }
            const unsigned bh0 = tf32(b[2 * k]), bh1 = tf32(b[2 * k + 1]);
            mma(acc[0], ah, bh0, bh1);
            if constexpr (TERMS == 3) {
                const unsigned bl0 = tf32(b[2 * k] - __uint_as_float(bh0));
                const unsigned bl1 = tf32(b[2 * k + 1] - __uint_as_float(bh1));
                mma(acc[1], al, bh0, bh1);
                mma(acc[2], ah, bl0, bl1);
            }
        }
        if (kc == CHUNKS - 1) {
            const int c = nt * 8 + 2 * t;
            y[g * LD + c] = silu(acc[0][0] + (acc[1][0] + acc[2][0]));
            y[g * LD + c + 1] = silu(acc[0][1] + (acc[1][1] + acc[2][1]));
            y[(g + 8) * LD + c] = silu(acc[0][2] + (acc[1][2] + acc[2][2]));
            y[(g + 8) * LD + c + 1] = silu(acc[0][3] + (acc[1][3] + acc[2][3]));
#pragma unroll
            for (int j = 0; j < 3; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
        }
#pragma unroll
        for (int i = 0; i < KC / 2; ++i) cur[i] = next[i];
    }
}

// One link in f32 FMA: thread t computes column t % OUT_ for a group of 16 / (THREADS / OUT_) rows
// (all 16 rows for OUT_ = 384, whose last 128 threads idle), the weights read once per thread.
template <int IN_, int OUT_>
__device__ __forceinline__ void ffma_link(const float* __restrict__ w, const float* x, float* y) {
    constexpr int GROUPS = THREADS / OUT_ >= 1 ? THREADS / OUT_ : 1, R = ROWS / GROUPS;
    const int o = threadIdx.x % OUT_, group = threadIdx.x / OUT_;
    if (group >= GROUPS) return;
    float acc[R] = {};
    // 16 weights a round, issued together (as the engine's dense kernels do, perf-notes v18).
    for (int i0 = 0; i0 < IN_; i0 += 16) {
        float wi[16];
#pragma unroll
        for (int i = 0; i < 16; ++i)
            asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(wi[i]) : "l"(w + (size_t)(i0 + i) * OUT_ + o));
#pragma unroll
        for (int i = 0; i < 16; ++i)
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] = fmaf(x[(group * R + r) * LD + i0 + i], wi[i], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) y[(group * R + r) * LD + o] = silu(acc[r]);
}

template <int MODE>  // 3: mma3, 1: mma1, 0: ffma
__device__ __forceinline__ void link(const Links& l, int k, const float* x, float* y) {
#define LINK_CASE(K)                                                                \
    case K:                                                                         \
        if constexpr (MODE == 0)                                                    \
            ffma_link<in_of(K), out_of(K)>(l.w[K], x, y);                                 \
        else                                                                        \
            mma_link<in_of(K), out_of(K), MODE>(l.wp[K], x, y);                           \
        break;
    switch (k) { LINK_CASE(0) LINK_CASE(1) LINK_CASE(2) LINK_CASE(3) LINK_CASE(4) }
#undef LINK_CASE
}

template <int MODE>
__global__ void __launch_bounds__(THREADS) chain(Links l, const float* input, float* output, int reps) {
    extern __shared__ float sh[];
    float* buf[2] = {sh, sh + ROWS * LD};
    const float* in = input + (size_t)blockIdx.x * ROWS * in_of(0);
    for (int k = threadIdx.x; k < ROWS * in_of(0); k += THREADS) buf[0][k / in_of(0) * LD + k % in_of(0)] = in[k];
    __syncthreads();
    int cur = 0;
    for (int rep = 0; rep < reps; ++rep) {
#pragma unroll 1
        for (int k = 0; k < LINKS; ++k) {
            link<MODE>(l, k, buf[cur], buf[cur ^ 1]);
            __syncthreads();
            cur ^= 1;
        }
    }
    float* out = output + (size_t)blockIdx.x * ROWS * out_of(LINKS - 1);
    for (int k = threadIdx.x; k < ROWS * out_of(LINKS - 1); k += THREADS)
        out[k] = buf[cur][k / out_of(LINKS - 1) * LD + k % out_of(LINKS - 1)];
}

static double silu_host(double z) { return z / (1.0 + std::exp(-z)); }

int main() {
    std::mt19937 rng(2026);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<std::vector<double>> w(LINKS);
    std::vector<float*> dw(LINKS), dwp(LINKS);
    for (int k = 0; k < LINKS; ++k) {
        w[k].resize((size_t)in_of(k) * out_of(k));
        for (auto& v : w[k]) v = normal(rng) * 1.5 / std::sqrt((double)in_of(k));
        std::vector<float> f(w[k].begin(), w[k].end()), p(f.size());
        const int KS = in_of(k) / 8;
        for (int nt = 0; nt < out_of(k) / 8; ++nt)
            for (int lane = 0; lane < 32; ++lane)
                for (int ks = 0; ks < KS; ++ks)
                    for (int h = 0; h < 2; ++h)
                        p[(((size_t)nt * 32 + lane) * KS + ks) * 2 + h] =
                            f[(size_t)(ks * 8 + lane % 4 + 4 * h) * out_of(k) + nt * 8 + lane / 4];
        CHECK(cudaMalloc(&dw[k], f.size() * 4));
        CHECK(cudaMalloc(&dwp[k], p.size() * 4));
        CHECK(cudaMemcpy(dw[k], f.data(), f.size() * 4, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(dwp[k], p.data(), p.size() * 4, cudaMemcpyHostToDevice));
    }
    Links links;
    for (int k = 0; k < LINKS; ++k) links.w[k] = dw[k], links.wp[k] = dwp[k];
    const int max_blocks = 132;
    std::vector<float> x((size_t)max_blocks * ROWS * in_of(0));
    for (auto& v : x) v = (float)normal(rng);
    float *dx, *dy;
    CHECK(cudaMalloc(&dx, x.size() * 4));
    CHECK(cudaMalloc(&dy, (size_t)max_blocks * ROWS * out_of(LINKS - 1) * 4));
    CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    const size_t smem = 2 * ROWS * LD * sizeof(float);
    CHECK(cudaFuncSetAttribute(chain<3>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CHECK(cudaFuncSetAttribute(chain<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CHECK(cudaFuncSetAttribute(chain<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));

    // f64 reference of one chain for block 0's tile, with the weights as the GPU holds them (f32).
    std::vector<double> cur(ROWS * in_of(0));
    for (int i = 0; i < ROWS * in_of(0); ++i) cur[i] = x[i];
    int width = in_of(0);
    for (int k = 0; k < LINKS; ++k) {
        std::vector<double> next((size_t)ROWS * out_of(k));
        for (int r = 0; r < ROWS; ++r)
            for (int o = 0; o < out_of(k); ++o) {
                double s = 0;
                for (int i = 0; i < in_of(k); ++i)
                    s += cur[(size_t)r * width + i] * (double)(float)w[k][(size_t)i * out_of(k) + o];
                next[(size_t)r * out_of(k) + o] = silu_host(s);
            }
        cur = next;
        width = out_of(k);
    }
    double largest = 0;
    for (double v : cur) largest = std::fmax(largest, std::fabs(v));

    const char* names[3] = {"ffma", "mma1", "mma3"};
    auto launch = [&](int mode, int blocks, int reps) {
        if (mode == 3) chain<3><<<blocks, THREADS, smem>>>(links, dx, dy, reps);
        if (mode == 1) chain<1><<<blocks, THREADS, smem>>>(links, dx, dy, reps);
        if (mode == 0) chain<0><<<blocks, THREADS, smem>>>(links, dx, dy, reps);
        CHECK(cudaGetLastError());
    };
    for (int mode : {3, 1, 0}) {
        launch(mode, 1, 1);
        CHECK(cudaDeviceSynchronize());
        std::vector<float> y((size_t)ROWS * out_of(LINKS - 1));
        CHECK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
        double err = 0;
        for (size_t i = 0; i < y.size(); ++i) err = std::fmax(err, std::fabs(y[i] - cur[i]));
        printf("%s: max |error| after one chain %.2e of the largest output %.3f (%.2e relative)\n",
               names[mode == 3 ? 2 : mode], err, largest, err / largest);
    }
    cudaEvent_t start, stop;
    CHECK(cudaEventCreate(&start));
    CHECK(cudaEventCreate(&stop));
    const int reps = 200;
    printf("\nµs per link (median of 5 launches of %d chains of %d links; 512 threads, 16 rows a block)\n",
           reps, LINKS);
    printf("| blocks | mma3 | mma1 | ffma |\n|---:|---:|---:|---:|\n");
    for (int blocks : {1, 12, 48, 132}) {
        double us[4] = {};
        for (int mode : {3, 1, 0}) {
            std::vector<float> times;
            launch(mode, blocks, reps);  // warm-up
            for (int i = 0; i < 5; ++i) {
                CHECK(cudaEventRecord(start));
                launch(mode, blocks, reps);
                CHECK(cudaEventRecord(stop));
                CHECK(cudaEventSynchronize(stop));
                float ms;
                CHECK(cudaEventElapsedTime(&ms, start, stop));
                times.push_back(ms);
            }
            std::sort(times.begin(), times.end());
            us[mode] = times[2] * 1000.0 / (reps * LINKS);
        }
        printf("| %d | %.3f | %.3f | %.3f |\n", blocks, us[3], us[1], us[0]);
    }
    return 0;
}
