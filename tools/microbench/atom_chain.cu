// The dense chain of one benzene MD step, per atom, in the designs that are left (perf-notes v73):
// a cluster of C blocks per atom (C = 1: one block runs every matvec of its atom alone; C = 2, 4:
// each block owns out/C rows of every matvec and pushes them into its partners), the weights
// streamed from L2 by bulk copies into a ring of shared-memory stages ahead of use (they do not
// depend on the data), the MD steps inside one launch. What it prices: the 30 dependent matvec
// links of a step (per interaction five forward, five backward) with the weight streaming, the
// arithmetic and the exchanges on the critical path, nothing else (no gathers between atoms, no
// pair forces, no integration). `resident` replaces the streaming by one stage read again (as
// if the weights sat in shared memory) to separate the chain's latency from the streaming.
//
// Link shapes (F = 128, PaiNN as schnetpack computes it): forward context 128→128 (silu),
// 128→384; U and V on μ's three rows 128→256; update 256→128 (silu), 128→384; backward their
// transposes. 4.33 MB (4.12 MiB) of f32 weights a step per atom, all of them per block at C = 1.
//
// The matvec: four rows a warp pass, each lane every 32nd input (the loop unrolled per input
// width), the rows reduced across the warp; a stage is released by each warp as it finishes it.
// Version 1 (docs/bench/v73/atom_chain-v1-h100.txt) had a block barrier per stage and a loop
// over the inputs of run-time length; this is version 2.
//
// nvcc -O3 -gencode arch=compute_90a,code=sm_90a -std=c++17 atom_chain.cu -o atom_chain && ./atom_chain
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>
#include "check.cuh"
#include "cluster.cuh"

#define THREADS 512
#define CONSUMER_WARPS 15  // warp 15 is the producer
#define STAGES 8
#define STAGE_BYTES (24 * 1024)
#define XMAX 384

struct LinkD {
    int in, rows, nvec, act;  // rows: this block's share of the outputs (out / C)
    int first_chunk, chunks;
};
struct ChunkD {
    int row0, rows;
    u32 bytes, offset;  // offset: bytes into this block's stream of the step
};

__device__ __forceinline__ void arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(saddr(bar)) : "memory");
}
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(CONSUMER_WARPS * 32) : "memory"); }
__device__ __forceinline__ float silu(float v) { return v / (1.f + __expf(-v)); }

// Four rows' partial sums across a warp's 32 lanes, reduced and scattered: lanes 0, 8, 16, 24
// end with rows 0, 1, 2, 3 (6 shuffles instead of 20).
__device__ __forceinline__ float reduce4(const float a[4], u32 lane) {
    const bool hi = lane & 16, hi8 = lane & 8;
    float k0 = hi ? a[2] : a[0], k1 = hi ? a[3] : a[1];
    const float s0 = hi ? a[0] : a[2], s1 = hi ? a[1] : a[3];
    k0 += __shfl_xor_sync(~0u, s0, 16);
    k1 += __shfl_xor_sync(~0u, s1, 16);
    float k = hi8 ? k1 : k0;
    k += __shfl_xor_sync(~0u, hi8 ? k0 : k1, 8);
    k += __shfl_xor_sync(~0u, k, 4);
    k += __shfl_xor_sync(~0u, k, 2);
    k += __shfl_xor_sync(~0u, k, 1);
    return k;
}


// One chunk of a link's rows, four rows a warp pass: each lane takes every 32nd input, the four
// rows' sums are reduced across the warp, and lanes 0, 8, 16, 24 write their row into this
// block's copy of the output and push it into every partner's.
template <int IN, int NVEC>
__device__ __forceinline__ void link_chunk(const float* W, const LinkD& L, const ChunkD& C, const float* xin, float* xout,
                                           u64* bar, u32 rank, u32 ncl, u32 warp, u32 lane) {
    for (int pass = warp; pass < C.rows / 4; pass += CONSUMER_WARPS) {
        float acc[NVEC][4] = {};
        const float* w = W + (size_t)pass * 4 * IN;
#pragma unroll
        for (int k = lane; k < IN; k += 32) {
            float wk[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) wk[j] = w[j * IN + k];
#pragma unroll
            for (int v = 0; v < NVEC; ++v) {
                const float xv = xin[v * XMAX + k];
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[v][j] = fmaf(wk[j], xv, acc[v][j]);
            }
        }
#pragma unroll
        for (int v = 0; v < NVEC; ++v) {
            float y = reduce4(acc[v], lane);
            if ((lane & 7) == 0) {
                if (L.act) y = silu(y);
                const u32 row = C.row0 + pass * 4 + (lane >> 3);
                float* dst = xout + v * XMAX + rank * L.rows + row;
                *dst = y;
                for (u32 p = 1; p < ncl; ++p) {
                    const u32 r = (rank + p) % ncl;
                    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                                     mapa(saddr(dst), r)),
                                 "r"(__float_as_uint(y)), "r"(mapa(saddr(bar), r))
                                 : "memory");
                }
            }
        }
    }
}

__global__ void __launch_bounds__(THREADS, 1)
    chain_kernel(const LinkD* __restrict__ links, int nlinks, const ChunkD* __restrict__ chunks, int nchunks,
                 const char* __restrict__ stream, u32 rank_bytes, int steps, int resident, u64* ns, float* out) {
    extern __shared__ __align__(128) unsigned char smem[];
    u64* full = reinterpret_cast<u64*>(smem);
    u64* empty = full + STAGES;
    u64* xbar = empty + STAGES;                            // [2]
    float* x = reinterpret_cast<float*>(smem + 1024);      // [2][3][XMAX]
    unsigned char* ring = smem + 1024 + 2 * 3 * XMAX * 4;  // [STAGES][STAGE_BYTES]
    const u32 t = threadIdx.x, warp = t / 32, lane = t % 32;
    u32 rank, ncl;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(ncl));
    for (u32 k = t; k < 2 * 3 * XMAX; k += THREADS) x[k] = 1.f;
    if (resident)
        for (u32 k = t; k < STAGES * STAGE_BYTES / 4; k += THREADS) reinterpret_cast<float*>(ring)[k] = 1e-3f;
    if (t == 0) {
        for (int s = 0; s < STAGES; ++s) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(saddr(&full[s])) : "memory");
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(saddr(&empty[s])), "n"(CONSUMER_WARPS) : "memory");
        }
        for (int b = 0; b < 2; ++b) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(saddr(&xbar[b])) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    cluster_sync_all();
    u64 t0 = 0;
    if (t == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    const char* my_stream = stream + (size_t)rank * rank_bytes;

    if (warp == CONSUMER_WARPS) {
        // The producer: every chunk of every step in order, as far ahead as the ring allows.
        if (lane == 0 && !resident) {
            const long total = (long)steps * nchunks;
            for (long qg = 0; qg < total; ++qg) {
                const ChunkD c = chunks[qg % nchunks];
                const u32 s = qg % STAGES;
                if (qg >= STAGES) wait_parity(&empty[s], (u32)((qg / STAGES - 1) & 1));
                arm(&full[s], c.bytes);
                asm volatile(
                    "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                        saddr(ring + (size_t)s * STAGE_BYTES)),
                    "l"(my_stream + c.offset), "r"(c.bytes), "r"(saddr(&full[s]))
                    : "memory");
            }
        }
        __syncwarp();
    } else {
        long qg = 0;  // chunks consumed so far
        for (int step = 0; step < steps; ++step) {
            for (int l = 0; l < nlinks; ++l) {
                const LinkD L = links[l];
                const long lg = (long)step * nlinks + l;
                const u32 in_buf = lg & 1, nb = in_buf ^ 1;
                const float* xin = x + in_buf * 3 * XMAX;
                float* xout = x + nb * 3 * XMAX;
                const u32 incoming = (ncl - 1) * L.rows * L.nvec * 4;
                if (t == 0 && ncl > 1) arm(&xbar[nb], incoming);
                for (int c = 0; c < L.chunks; ++c, ++qg) {
                    const ChunkD C = chunks[L.first_chunk + c];
                    const u32 s = qg % STAGES;
                    if (!resident) wait_parity(&full[s], (u32)((qg / STAGES) & 1));
                    const float* W = reinterpret_cast<const float*>(ring + (size_t)s * STAGE_BYTES);
                    if (L.nvec == 3 && L.in == 128)
                        link_chunk<128, 3>(W, L, C, xin, xout, &xbar[nb], rank, ncl, warp, lane);
                    else if (L.nvec == 3)
                        link_chunk<256, 3>(W, L, C, xin, xout, &xbar[nb], rank, ncl, warp, lane);
                    else if (L.in == 128)
                        link_chunk<128, 1>(W, L, C, xin, xout, &xbar[nb], rank, ncl, warp, lane);
                    else if (L.in == 256)
                        link_chunk<256, 1>(W, L, C, xin, xout, &xbar[nb], rank, ncl, warp, lane);
                    else
                        link_chunk<384, 1>(W, L, C, xin, xout, &xbar[nb], rank, ncl, warp, lane);
                    // Each warp releases the stage as it is done with it (no block barrier per chunk).
                    __syncwarp();
                    if (lane == 0 && !resident) arrive(&empty[s]);
                }
                consumers_sync();  // this block's own rows of the link are written
                if (ncl > 1) wait_parity(&xbar[nb], (u32)((lg >> 1) & 1));
            }
        }
    }
    __syncthreads();
    if (t == 0) {
        u64 t1;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
        ns[blockIdx.x] = t1 - t0;
    }
    if (t < 4) out[blockIdx.x * 4 + t] = x[t];
    cluster_sync_all();  // no block leaves while a partner may still push into it
}

int main() {
    struct Shape {
        int in, out, nvec, act;
    };
    // One interaction forward, then its backward (transposes); three interactions.
    const Shape fwd[5] = {{128, 128, 1, 1}, {128, 384, 1, 0}, {128, 256, 3, 0}, {256, 128, 1, 1}, {128, 384, 1, 0}};
    const Shape bwd[5] = {{384, 128, 1, 0}, {128, 256, 1, 1}, {256, 128, 3, 0}, {384, 128, 1, 0}, {128, 128, 1, 0}};
    std::vector<Shape> shapes;
    for (int layer = 0; layer < 3; ++layer)
        for (const Shape& s : fwd) shapes.push_back(s);
    for (int layer = 0; layer < 3; ++layer)
        for (const Shape& s : bwd) shapes.push_back(s);

    const int atoms = 12, steps = 50;
    u64* ns;
    float* out;
    CHECK(cudaMalloc(&ns, 256 * sizeof(u64)));
    CHECK(cudaMalloc(&out, 256 * 4 * sizeof(float)));
    const size_t shared = 1024 + 2 * 3 * XMAX * 4 + (size_t)STAGES * STAGE_BYTES;
    CHECK(cudaFuncSetAttribute(chain_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
    CHECK(cudaFuncSetAttribute(chain_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("# %s: the dense chain of a benzene MD step (30 matvec links, F = 128), %d atoms, one cluster of C\n"
           "# blocks per atom, %d steps a launch, min of 5 launches after a warm-up\n",
           prop.name, atoms, steps);
    printf("%3s %9s %12s %12s %10s\n", "C", "weights", "MiB a block", "µs a step", "µs a link");
    for (int C : {1, 2, 4, 8}) {
        std::vector<LinkD> links;
        std::vector<ChunkD> chunks;
        u32 offset = 0;
        for (const Shape& s : shapes) {
            LinkD L = {s.in, s.out / C, s.nvec, s.act, (int)chunks.size(), 0};
            const int max_rows = (STAGE_BYTES / (s.in * 4)) / 4 * 4;
            for (int r0 = 0; r0 < L.rows; r0 += max_rows) {
                const int rows = std::min(max_rows, L.rows - r0);
                chunks.push_back({r0, rows, (u32)(rows * s.in * 4), offset});
                offset += rows * s.in * 4;
                ++L.chunks;
            }
            links.push_back(L);
        }
        const u32 rank_bytes = offset;
        std::vector<float> host(rank_bytes / 4 * C);
        for (size_t i = 0; i < host.size(); ++i) host[i] = (float)((i * 2654435761u) % 1000) * 1e-6f - 5e-4f;
        char* stream;
        LinkD* dlinks;
        ChunkD* dchunks;
        CHECK(cudaMalloc(&stream, host.size() * 4));
        CHECK(cudaMemcpy(stream, host.data(), host.size() * 4, cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&dlinks, links.size() * sizeof(LinkD)));
        CHECK(cudaMemcpy(dlinks, links.data(), links.size() * sizeof(LinkD), cudaMemcpyHostToDevice));
        CHECK(cudaMalloc(&dchunks, chunks.size() * sizeof(ChunkD)));
        CHECK(cudaMemcpy(dchunks, chunks.data(), chunks.size() * sizeof(ChunkD), cudaMemcpyHostToDevice));
        for (int resident : {0, 1}) {
            const ClusterLaunch launch(atoms * C, THREADS, shared, 0, C);
            double best = 1e30;
            for (int rep = 0; rep < 6; ++rep) {
                CHECK(cudaLaunchKernelEx(&launch.cfg, chain_kernel, (const LinkD*)dlinks, (int)links.size(),
                                         (const ChunkD*)dchunks, (int)chunks.size(), (const char*)stream, rank_bytes,
                                         steps, resident, ns, out));
                CHECK(cudaDeviceSynchronize());
                u64 h[256];
                CHECK(cudaMemcpy(h, ns, atoms * C * sizeof(u64), cudaMemcpyDeviceToHost));
                u64 worst = 0;
                for (int b = 0; b < atoms * C; ++b) worst = h[b] > worst ? h[b] : worst;
                if (rep > 0 && worst < best) best = (double)worst;
            }
            const double us = best / steps * 1e-3;
            printf("%3d %9s %12.2f %12.2f %10.3f\n", C, resident ? "resident" : "streamed", rank_bytes / 1048576.0, us,
                   us / links.size());
        }
        CHECK(cudaFree(stream));
        CHECK(cudaFree(dlinks));
        CHECK(cudaFree(dchunks));
    }
    return 0;
}
