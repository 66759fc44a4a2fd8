// How long does one exchange phase of a thread-block cluster take on Hopper, as a function of
// the bytes exchanged and how they are stored? The one-cluster PaiNN kernel (kernels/
// painn_cluster.cu) is a chain of ~28 such phases per force call; this measures its floor.
//
// Each phase: every block produces `values` floats that depend on what it received in the
// previous phase, pushes them into every block of the cluster (st.async counted on the receiver's
// mbarrier), and waits for all blocks' values. Barriers and buffers are double-buffered, so
// phases chain without any cluster barrier (the same protocol the kernels use).
//
// nvcc -O3 -arch=sm_90 -std=c++17 cluster_phase.cu -o cluster_phase && ./cluster_phase
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include "check.cuh"
#include "cluster.cuh"

#define MAXV 1024  // values per block per phase
#define MAXCL 16

// MODE 0: scalar st.async, a thread per value sends it to every block (what painn_cluster did
//         before perf-notes v25: acquire at cluster scope).
// MODE 1: values staged locally, then 16-byte st.async, a thread per (4 values, receiver).
// MODE 2: scalar st.async, a thread per (value, receiver).
// MODE 3: no data: a relaxed cluster barrier per phase (the floor of any cluster-wide phase).
// MODE 4: values staged locally, receivers pull them with ld.shared::cluster.v4 after a cluster
//         barrier (and a second barrier before the buffers are reused).
// MODE 5: MODE 0 with the wait at CTA scope (acquire.cta: no L1 invalidation; what the kernels do
//         since v25).
// MODE 6: MODE 5 with one warp waiting and the block released by a block barrier.
template <int MODE>
__global__ void __launch_bounds__(512, 1) phases_kernel(int phases, int values, u64* out, float* sink, const float* __restrict__ weights) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* bar = reinterpret_cast<u64*>(smem);                     // [2]
    float* stage = reinterpret_cast<float*>(smem + 16);          // [MAXV]
    float* buf = reinterpret_cast<float*>(smem + 16 + 4 * MAXV);  // [2][MAXCL * MAXV]
    const u32 t = threadIdx.x, rank = rank_in_cluster(), ncl = nblocks_in_cluster();
    const u32 bytes = 4u * values * ncl;
    for (int k = t; k < 2 * MAXCL * MAXV; k += blockDim.x) buf[k] = 0.f;
    if (t == 0) {
        for (int s = 0; s < 2; ++s) asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(saddr(&bar[s])) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_sync_all();
    u64 t0 = 0;
    if (t == 0) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    float carry = 0.f;
    for (int p = 0; p < phases; ++p) {
        const int slot = p & 1;
        const u32 parity = (p >> 1) & 1;
        float* in = buf + (slot ^ 1) * MAXCL * MAXV;
        float* dst = buf + slot * MAXCL * MAXV;
        // The value depends on the previous phase's data (a true chain).
        // ... and on one global load, as a kernel's bias or weight load after a phase would.
        float v = in[((t + p) % (ncl * values + 1)) % (MAXCL * MAXV)] + weights[(t * 7 + p * 131) % 16384] + 1.f;
        if (MODE != 3 && MODE != 4 && t == 0)
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(saddr(&bar[slot])), "r"(bytes)
                         : "memory");
        if (MODE == 0 || MODE == 5 || MODE == 6) {
            for (u32 i = t; i < (u32)values; i += blockDim.x) {
                u32 a = saddr(dst + rank * values + i), b = saddr(&bar[slot]);
                float w = v + (float)i;
                for (u32 r = 0; r < ncl; ++r)
                    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                                     mapa(a, r)),
                                 "r"(__float_as_uint(w)), "r"(mapa(b, r))
                                 : "memory");
            }
        } else if (MODE == 2) {
            for (u32 k = t; k < values * ncl; k += blockDim.x) {
                u32 r = k % ncl, i = k / ncl;
                float w = v + (float)i;
                asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(
                                 mapa(saddr(dst + rank * values + i), r)),
                             "r"(__float_as_uint(w)), "r"(mapa(saddr(&bar[slot]), r))
                             : "memory");
            }
        } else if (MODE == 1 || MODE == 4) {
            for (u32 i = t; i < (u32)values; i += blockDim.x) stage[i] = v + (float)i;
            __syncthreads();
            if (MODE == 1) {
                for (u32 k = t; k < values / 4 * ncl; k += blockDim.x) {
                    u32 r = k % ncl, i = 4 * (k / ncl);
                    float4 w = *reinterpret_cast<float4*>(stage + i);
                    asm volatile(
                        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(
                            mapa(saddr(dst + rank * values + i), r)),
                        "r"(__float_as_uint(w.x)), "r"(__float_as_uint(w.y)), "r"(__float_as_uint(w.z)),
                        "r"(__float_as_uint(w.w)), "r"(mapa(saddr(&bar[slot]), r))
                        : "memory");
                }
            } else {
                asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
                for (u32 k = t; k < values / 4 * ncl; k += blockDim.x) {
                    u32 r = k % ncl, i = 4 * (k / ncl);
                    float4 w;
                    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                                 : "=f"(w.x), "=f"(w.y), "=f"(w.z), "=f"(w.w)
                                 : "r"(mapa(saddr(stage + i), r))
                                 : "memory");
                    *reinterpret_cast<float4*>(dst + r * values + i) = w;
                }
                asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
            }
        }
        if (MODE == 3) {
            asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
        } else if (MODE == 5) {
            wait_parity<false>(&bar[slot], parity);
        } else if (MODE == 6) {
            if (t < 32) wait_parity<false>(&bar[slot], parity);
        } else if (MODE != 4) {
            wait_parity<true>(&bar[slot], parity);
        }
        __syncthreads();
        carry += v;
    }
    if (t == 0) {
        u64 t1;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
        if (rank == 0) out[blockIdx.x / ncl] = t1 - t0;
    }
    if (carry == -1.f) sink[0] = carry;
    cluster_sync_all();
}

template <int MODE>
double run(int cluster, int values, int phases) {
    auto kernel = phases_kernel<MODE>;
    const size_t shared = 16 + 4 * MAXV + 2 * 4 * MAXCL * MAXV;
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
    CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    u64* out;
    float *sink, *weights;
    CHECK(cudaMalloc(&out, sizeof(u64)));
    CHECK(cudaMalloc(&sink, sizeof(float)));
    CHECK(cudaMalloc(&weights, 16384 * sizeof(float)));
    CHECK(cudaMemset(weights, 0, 16384 * sizeof(float)));
    const ClusterLaunch launch(cluster, 512, shared, 0, cluster);
    double best = 1e30;
    for (int rep = 0; rep < 7; ++rep) {
        CHECK(cudaLaunchKernelEx(&launch.cfg, kernel, phases, values, out, sink, weights));
        CHECK(cudaDeviceSynchronize());
        u64 ns;
        CHECK(cudaMemcpy(&ns, out, sizeof(u64), cudaMemcpyDeviceToHost));
        if (rep > 0 && ns < best) best = (double)ns;  // min over reps after a warm-up
    }
    CHECK(cudaFree(out));
    CHECK(cudaFree(sink));
    CHECK(cudaFree(weights));
    return best / phases * 1e-3;  // µs per phase
}

int main() {
    const int phases = 2000;
    printf("# µs per exchange phase (min of 6 launches of %d phases), 512 threads per block\n", phases);
    printf("%8s %8s %10s %10s %10s %10s %10s %10s %10s\n", "cluster", "values", "scalar", "v4-spread", "scalar-spr",
           "barrier", "pull-v4", "scalar-cta", "warp-cta");
    const int clusters[] = {16, 8, 4};
    const int vals[] = {4, 24, 96, 192, 384, 576, 768};
    for (int c : clusters)
        for (int v : vals) {
            if (v > MAXV) continue;
            printf("%8d %8d %10.3f %10.3f %10.3f %10.3f %10.3f %10.3f %10.3f\n", c, v, run<0>(c, v, phases),
                   run<1>(c, v, phases), run<2>(c, v, phases), run<3>(c, v, phases), run<4>(c, v, phases),
                   run<5>(c, v, phases), run<6>(c, v, phases));
            fflush(stdout);
        }
    return 0;
}
