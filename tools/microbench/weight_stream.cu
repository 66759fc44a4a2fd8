// How fast can one SM take in a model's weights from L2? This prices the one route to the
// benzene target that needs no exchange inside the dense layers: a block (or a cluster) per atom
// that runs every MLP of its atom alone, so that each SM streams every weight of the network,
// forward and backward (benzene's model: ~4.3 MB of f32 a step in its 30 matvec links). perf-notes v2 guessed
// ~100–200 GB/s per SM; nothing has measured it.
//
// Each block streams `mb` MB of a buffer (L2-resident after a warm-up: 2.4 MB, read `reps`
// times) through a ring of `stages` shared-memory buffers of `chunk` bytes, and its threads read
// every byte once out of shared memory (as a one-atom matvec would use each weight once).
// Modes:
//   bulk:  thread 0 issues cp.async.bulk (TMA, no tensor map) per chunk, counted on the stage's
//          mbarrier; the block waits, consumes, and re-issues into the stage it freed.
//   mcast: a cluster of C blocks shares the stream: chunk i is issued by block i mod C with
//          .multicast::cluster into every block of the cluster (one L2 read, C deliveries).
//   ldg:   every thread loads its share with ld.global.v4 (8 or 16 in flight), no shared memory.
// Prints GB/s received per block (the slowest block) for 1, 12, 16 and 132 blocks.
//
//   burst: thread 0 issues a burst of bulk copies on one mbarrier and the block waits for them.
//
// nvcc -O3 -gencode arch=compute_90a,code=sm_90a -std=c++17 weight_stream.cu -o weight_stream
// ./weight_stream (every table) or ./weight_stream burst (the ldg and burst tables alone)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include "check.cuh"
#include "cluster.cuh"

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes, u64* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(saddr(dst)),
        "l"(src), "r"(bytes), "r"(saddr(bar))
        : "memory");
}
__device__ __forceinline__ void bulk_copy_multicast(void* dst, const void* src, u32 bytes, u64* bar, unsigned short mask) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], %4;" ::"r"(
            saddr(dst)),
        "l"(src), "r"(bytes), "r"(saddr(bar)), "h"(mask)
        : "memory");
}
// Arrive once on the mbarrier at `bar`'s offset in block `rank` of the cluster.
__device__ __forceinline__ void remote_arrive(u64* bar, u32 rank) {
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(mapa(saddr(bar), rank)) : "memory");
}

#define MAX_STAGES 16

// Consumes a stage: every thread reads its float4s once (the data must reach the registers).
__device__ __forceinline__ float consume(const float4* stage, u32 n4) {
    float s = 0.f;
    for (u32 k = threadIdx.x; k < n4; k += blockDim.x) {
        float4 v = stage[k];
        s += v.x + v.y + v.z + v.w;
    }
    return s;
}

// MULTICAST: chunk i is issued by block (i mod C) into every block; stages is a multiple of C, so
// each stage has one issuer, which waits on its `empty` barrier for every block's release.
template <bool MULTICAST>
__global__ void __launch_bounds__(512, 1)
    bulk_kernel(const char* __restrict__ src, u32 src_bytes, u32 chunk, u32 stages, u32 chunks, u64* ns, float* sink) {
    extern __shared__ __align__(128) unsigned char smem[];
    u64* full = reinterpret_cast<u64*>(smem);
    u64* empty = full + MAX_STAGES;
    unsigned char* ring = smem + 1024;
    const u32 t = threadIdx.x;
    u32 ncl = 1, rank = 0;
    if (MULTICAST) {
        asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(ncl));
        rank = rank_in_cluster();
    }
    const unsigned short mask = (unsigned short)((1u << ncl) - 1u);
    const u32 per_pass = src_bytes / chunk;
    if (t == 0) {
        for (u32 s = 0; s < stages; ++s) {
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(saddr(&full[s])) : "memory");
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(saddr(&empty[s])), "r"(ncl) : "memory");
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    if (MULTICAST) cluster_sync_all();
    __syncthreads();
    u64 t0 = 0;
    if (t == 0) {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
        for (u32 s = 0; s < stages && s < chunks; ++s) arm(&full[s], chunk);
    }
    if (MULTICAST) cluster_sync_all();  // every block armed before any delivery lands
    if (t == 0) {
        for (u32 s = 0; s < stages && s < chunks; ++s) {
            const char* from = src + (size_t)(s % per_pass) * chunk;
            if (!MULTICAST)
                bulk_copy(ring + (size_t)s * chunk, from, chunk, &full[s]);
            else if (s % ncl == rank)
                bulk_copy_multicast(ring + (size_t)s * chunk, from, chunk, &full[s], mask);
        }
    }
    float acc = 0.f;
    for (u32 i = 0; i < chunks; ++i) {
        const u32 s = i % stages, round = i / stages;
        wait_parity<true>(&full[s], round & 1);
        acc += consume(reinterpret_cast<const float4*>(ring + (size_t)s * chunk), chunk / 16);
        __syncthreads();
        const u32 next = i + stages;
        if (t == 0 && next < chunks) {
            arm(&full[s], chunk);
            const char* from = src + (size_t)(next % per_pass) * chunk;
            if (!MULTICAST) {
                bulk_copy(ring + (size_t)s * chunk, from, chunk, &full[s]);
            } else {
                const u32 issuer = s % ncl;
                remote_arrive(&empty[s], issuer);
                if (issuer == rank) {
                    wait_parity<true>(&empty[s], round & 1);
                    bulk_copy_multicast(ring + (size_t)s * chunk, from, chunk, &full[s], mask);
                }
            }
        }
    }
    if (t == 0) {
        u64 t1;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
        ns[blockIdx.x] = t1 - t0;
    }
    if (acc == -1.f) sink[0] = acc;
    if (MULTICAST) cluster_sync_all();  // no block leaves while deliveries into it are pending
}

template <int U>
__global__ void __launch_bounds__(512, 1)
    ldg_kernel(const float4* __restrict__ src, u32 src_n4, u32 total_n4, u64* ns, float* sink) {
    const u32 t = threadIdx.x;
    u64 t0 = 0;
    if (t == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    float acc = 0.f;
    for (u32 base = 0; base < total_n4; base += U * blockDim.x) {
        float4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = src[(base + u * blockDim.x + t) % src_n4];
#pragma unroll
        for (int u = 0; u < U; ++u) acc += v[u].x + v[u].y + v[u].z + v[u].w;
    }
    __syncthreads();
    if (t == 0) {
        u64 t1;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
        ns[blockIdx.x] = t1 - t0;
    }
    if (acc == -1.f) sink[0] = acc;
}


// A burst: thread 0 issues `ncopies` bulk copies of `copy_bytes` at once, all counted on one
// mbarrier, and the block waits for the lot; `reps` bursts back to back. Separates the copy
// engine's own rate and latency from the ring's issue–wait–consume loop above.
__global__ void __launch_bounds__(512, 1)
    burst_kernel(const char* __restrict__ src, u32 src_bytes, u32 copy_bytes, u32 ncopies, u32 reps, u64* ns) {
    extern __shared__ __align__(128) unsigned char smem[];
    u64* bar = reinterpret_cast<u64*>(smem);
    unsigned char* ring = smem + 1024;
    const u32 t = threadIdx.x;
    if (t == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(saddr(bar)) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    u64 t0 = 0;
    if (t == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    const u32 slots = src_bytes / copy_bytes;
    for (u32 r = 0; r < reps; ++r) {
        if (t == 0) {
            arm(bar, copy_bytes * ncopies);
            for (u32 c = 0; c < ncopies; ++c)
                bulk_copy(ring + (size_t)c * copy_bytes, src + (size_t)((r * ncopies + c) % slots) * copy_bytes, copy_bytes, bar);
        }
        wait_parity<true>(bar, r & 1);
        __syncthreads();
    }
    if (t == 0) {
        u64 t1;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
        ns[blockIdx.x] = t1 - t0;
    }
}

struct Result {
    double gbps_slowest, gbps_median;
};

// GB/s received per block: the bytes one block consumed over its own elapsed time; the slowest
// block and the median block, best of 5 launches after a warm-up.
template <typename Launch>
Result measure(int blocks, double bytes_per_block, u64* ns, Launch launch) {
    Result best = {0, 0};
    for (int rep = 0; rep < 6; ++rep) {
        launch();
        CHECK(cudaDeviceSynchronize());
        u64 host[256];
        CHECK(cudaMemcpy(host, ns, blocks * sizeof(u64), cudaMemcpyDeviceToHost));
        std::sort(host, host + blocks);
        Result r = {bytes_per_block / host[blocks - 1], bytes_per_block / host[blocks / 2]};
        if (rep > 0 && r.gbps_slowest > best.gbps_slowest) best = r;
    }
    return best;
}

int main(int argc, char** argv) {
    const bool burst_only = argc > 1;
    const u32 src_bytes = 2400 * 1024;  // benzene's model, forward: ~0.6 M f32 weights
    const double mb_per_block = 48.0;   // 20 passes over it
    char* src;
    u64* ns;
    float* sink;
    CHECK(cudaMalloc(&src, src_bytes));
    CHECK(cudaMemset(src, 0, src_bytes));
    CHECK(cudaMalloc(&ns, 256 * sizeof(u64)));
    CHECK(cudaMalloc(&sink, sizeof(float)));
    int dev = 0, sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, dev));
    printf("# %s, %d SMs; GB/s received per block (slowest / median block), %.0f MB per block from a %.1f MB\n"
           "# L2-resident buffer, best of 5 launches; 512 threads per block\n",
           prop.name, sms, mb_per_block, src_bytes / 1048576.0);
    const int grids[] = {1, 12, 16, 132};
    const size_t max_shared = 1024 + 8 * 24 * 1024;  // 8 stages of 24 KB, 16 of 12 KB, 3 of 64 KB, ...
    CHECK(cudaFuncSetAttribute(bulk_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_shared));
    CHECK(cudaFuncSetAttribute(bulk_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_shared));
    CHECK(cudaFuncSetAttribute(bulk_kernel<true>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));

    printf("%-8s %6s %7s %7s %8s %18s\n", "mode", "blocks", "cluster", "chunk", "stages", "GB/s slow / median");
    for (int g : grids) {
        const u32 n4 = src_bytes / 16, total4 = (u32)(mb_per_block * 1048576.0 / 16);
        Result r = measure(g, total4 * 16.0, ns, [&] { ldg_kernel<8><<<g, 512>>>((const float4*)src, n4, total4, ns, sink); });
        printf("%-8s %6d %7d %7s %8s %9.1f / %6.1f\n", "ldg", g, 1, "-", "8/thr", r.gbps_slowest, r.gbps_median);
        r = measure(g, total4 * 16.0, ns, [&] { ldg_kernel<16><<<g, 512>>>((const float4*)src, n4, total4, ns, sink); });
        printf("%-8s %6d %7d %7s %8s %9.1f / %6.1f\n", "ldg", g, 1, "-", "16/thr", r.gbps_slowest, r.gbps_median);
    }
    CHECK(cudaFuncSetAttribute(burst_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)max_shared));
    printf("%-8s %6s %8s %8s %18s %12s\n", "mode", "blocks", "copy", "copies", "GB/s slow / median", "µs a burst");
    for (int g : {1, 12, 132})
        for (u32 ckb : {4u, 16u, 64u})
            for (u32 total_kb : {16u, 64u, 192u}) {
                if (total_kb < ckb) continue;
                const u32 copy = ckb * 1024, n = total_kb / ckb, reps = (u32)(mb_per_block * 1024 / total_kb);
                Result r = measure(g, (double)reps * n * copy, ns, [&] {
                    burst_kernel<<<g, 512, 1024 + (size_t)n * copy>>>(src, src_bytes, copy, n, reps, ns);
                });
                printf("%-8s %6d %7uK %8u %9.1f / %6.1f %12.2f\n", "burst", g, ckb, n, r.gbps_slowest, r.gbps_median,
                       (double)n * copy / r.gbps_slowest * 1e-3);
            }
    if (burst_only) return 0;
    const u32 chunks_kb[] = {8, 16, 24};
    const u32 stage_counts[] = {4, 8};
    for (int g : grids)
        for (u32 ckb : chunks_kb)
            for (u32 st : stage_counts) {
                const u32 chunk = ckb * 1024;
                if (1024 + (size_t)st * chunk > max_shared) continue;
                const u32 chunks = (u32)(mb_per_block * 1048576.0 / chunk);
                const size_t shared = 1024 + (size_t)st * chunk;
                Result r = measure(g, (double)chunks * chunk, ns, [&] {
                    bulk_kernel<false><<<g, 512, shared>>>(src, src_bytes - src_bytes % chunk, chunk, st, chunks, ns, sink);
                });
                printf("%-8s %6d %7d %6uK %8u %9.1f / %6.1f\n", "bulk", g, 1, ckb, st, r.gbps_slowest, r.gbps_median);
            }
    const int clusters[] = {2, 4, 8, 16};
    for (int c : clusters)
        for (int g : {c, 16, 128}) {
            if (g < c || g % c) continue;
            for (u32 ckb : {8u, 12u, 16u, 24u}) {
                const u32 chunk = ckb * 1024, stages = c > 8 ? 16 : 8;  // a multiple of the cluster
                const size_t shared = 1024 + (size_t)stages * chunk;
                if (shared > max_shared) continue;
                const u32 chunks = (u32)(mb_per_block * 1048576.0 / chunk);
                ClusterLaunch launch(g, 512, shared, 0, c);
                Result r = measure(g, (double)chunks * chunk, ns, [&] {
                    CHECK(cudaLaunchKernelEx(&launch.cfg, bulk_kernel<true>, (const char*)src, src_bytes - src_bytes % chunk,
                                             chunk, stages, chunks, ns, sink));
                });
                printf("%-8s %6d %7d %6uK %8u %9.1f / %6.1f\n", "mcast", g, c, ckb, stages, r.gbps_slowest, r.gbps_median);
            }
        }
    return 0;
}
