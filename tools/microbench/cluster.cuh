// Shared by the microbenchmarks: thread-block cluster and mbarrier primitives (sm_90), written
// as the kernels in kernels/common.cuh use them.
#pragma once
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u32 rank_in_cluster() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ u32 nblocks_in_cluster() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r));
    return r;
}
__device__ __forceinline__ u32 saddr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
// The address `a` of this block's shared memory, in block `r` of the cluster.
__device__ __forceinline__ u32 mapa(u32 a, u32 r) {
    u32 o;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(o) : "r"(a), "r"(r));
    return o;
}
__device__ __forceinline__ void cluster_sync_all() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Waits for the phase of `parity` to complete; traps after ~2 s rather than hang the device.
// CLUSTER_SCOPE: acquire at cluster scope (invalidates L1: what perf-notes v25 removed from the
// kernels); CTA scope is enough where only this block's shared memory was written.
template <bool CLUSTER_SCOPE = false>
__device__ __forceinline__ void wait_parity(u64* bar, u32 parity) {
    u32 done = 0;
    const long long start = clock64();
    while (!done) {
        if (clock64() - start > 4000000000ll) __trap();
        if (CLUSTER_SCOPE)
            asm volatile(
                "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                : "=r"(done)
                : "r"(saddr(bar)), "r"(parity)
                : "memory");
        else
            asm volatile(
                "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                : "=r"(done)
                : "r"(saddr(bar)), "r"(parity)
                : "memory");
    }
}
// This thread's arrival on `bar`, expecting `bytes` more of asynchronous transactions.
__device__ __forceinline__ void arm(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(saddr(bar)), "r"(bytes) : "memory");
}
