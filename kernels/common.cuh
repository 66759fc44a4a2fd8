// Shared definitions for mdrun's kernels. Compile-time sizes come from NVRTC options:
//   NF  features per atom (F), NK radial functions (K), NH readout hidden width (H).
#pragma once

#ifndef NF
#error "NF (features per atom) must be defined"
#endif

typedef unsigned int u32;
typedef unsigned long long u64;

// Positions and velocities are f64 on the device (mixed precision, as OpenMM's: integration and
// pair vectors in f64, the network in f32), so is the cell.
struct Cell {
    double v[3][3];    // rows: lattice vectors a, b, c (Å)
    double inv[3][3];  // inverse: fractional = cartesian · inv (row vectors)
    int periodic;      // 0: open boundaries
};

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

__device__ __forceinline__ float silu_grad(float x) {
    float s = 1.0f / (1.0f + __expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

// Cartesian translation of an integer lattice image.
__device__ __forceinline__ double3 image_shift(const Cell& cell, int3 n) {
    return make_double3(n.x * cell.v[0][0] + n.y * cell.v[1][0] + n.z * cell.v[2][0],
                       n.x * cell.v[0][1] + n.y * cell.v[1][1] + n.z * cell.v[2][1],
                       n.x * cell.v[0][2] + n.y * cell.v[1][2] + n.z * cell.v[2][2]);
}

// r_ij = R_j − R_i + shift, formed in f64 and rounded once.
__device__ __forceinline__ float3 pair_vector(const double* pos, int i, int j, const Cell& cell, int3 image) {
    double3 s = image_shift(cell, image);
    return make_float3((float)(pos[3 * j] - pos[3 * i] + s.x), (float)(pos[3 * j + 1] - pos[3 * i + 1] + s.y),
                       (float)(pos[3 * j + 2] - pos[3 * i + 2] + s.z));
}

// Threads per output in the per-atom dense layers: a block of SPLIT·NF threads computes NF outputs
// at a time, each output's dot product split SPLIT ways (shorter dependent-load chains: these
// layers are latency-bound for small systems).
#ifndef SPLIT
#error "SPLIT (threads per output in dense layers) must be defined"
#endif


#ifndef TILE
#error "TILE (atoms per block in dense layers) must be defined"
#endif

// Blocks of a thread-block cluster (Hopper on) that share the dense layers of the same TILE atoms:
// each computes 1/CLUSTER of every layer's outputs and pushes them into the shared memory of all
// the cluster's blocks. For small systems a lone block streams a whole layer's weights through one
// SM with long dependent-load chains; a cluster spreads one atom's layers over CLUSTER SMs.
#ifndef CLUSTER
#define CLUSTER 1
#endif

#if __CUDA_ARCH__ >= 900
// Thread-block cluster primitives (Hopper): the dense kernels' clusters (CLUSTER > 1) and the
// one-cluster kernel (painn_cluster.cu).
__device__ __forceinline__ u32 cluster_rank() {
    u32 rank;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    return rank;
}

// Barrier over every thread of every block of the cluster; orders shared-memory writes, remote
// ones included, before the reads that follow.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The 32-bit shared-memory address of `local`, and the address of the same place in block `rank`
// of the cluster (distributed shared memory).
__device__ __forceinline__ u32 shared_address(const void* local) {
    u32 address;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(address) : "l"(local));
    return address;
}

__device__ __forceinline__ u32 remote_address(const void* local, u32 rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(shared_address(local)), "r"(rank));
    return remote;
}
#endif

#if CLUSTER > 1
// Dense kernels are launched with CLUSTER consecutive blocks per tile of atoms.
#define DENSE_KERNEL extern "C" __global__ void __cluster_dims__(CLUSTER, 1, 1)
#define DENSE_TILE_INDEX (blockIdx.x / CLUSTER)

// Stores `value` at the place of `local` (this block's shared memory) in block `rank`'s.
__device__ __forceinline__ void store_in_block(float* local, u32 rank, float value) {
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(remote_address(local, rank)), "f"(value) : "memory");
}
#else
#define DENSE_KERNEL extern "C" __global__ void
#define DENSE_TILE_INDEX (blockIdx.x)
#endif

// For each of the block's TILE atoms a: out[a·ld_out + o] = Σ_i m[i·cols + o] · x[a·ld_x + i], o < cols,
// with m row-major [rows, cols] in global memory and x in shared memory. Forward layers pass Wᵀ
// ([in, out]); backward passes W ([out, in]) to get Wᵀ·g. Each weight is loaded once for the
// TILE atoms. Results land in shared `out` (of every block of the cluster). `scratch` holds
// SPLIT·TILE·NF floats. Every thread of the block must call it; it ends with a barrier.
#if CLUSTER == 1
__device__ __forceinline__ void block_matvec(const float* __restrict__ m, int rows, int cols, const float* x, int ld_x,
                                             float* out, int ld_out, float* scratch) {
    int c = threadIdx.x % NF, s = threadIdx.x / NF;
    int chunk = (rows + SPLIT - 1) / SPLIT;
    int begin = s * chunk, end = min(rows, begin + chunk);
    for (int base = 0; base < cols; base += NF) {
        int o = base + c;
        float acc[TILE];
#pragma unroll
        for (int a = 0; a < TILE; ++a) acc[a] = 0.f;
        if (o < cols) {
#pragma unroll 16
            for (int i = begin; i < end; ++i) {
                float w = m[i * cols + o];
#pragma unroll
                for (int a = 0; a < TILE; ++a) acc[a] += w * x[a * ld_x + i];
            }
        }
#pragma unroll
        for (int a = 0; a < TILE; ++a) scratch[(s * TILE + a) * NF + c] = acc[a];
        __syncthreads();
        if (s == 0 && o < cols) {
#pragma unroll
            for (int a = 0; a < TILE; ++a) {
                float total = 0.f;
#pragma unroll
                for (int k = 0; k < SPLIT; ++k) total += scratch[(k * TILE + a) * NF + c];
                out[a * ld_out + o] = total;
            }
        }
        __syncthreads();
    }
}
#else
// Cluster version: block `rank` owns outputs [rank·cols/CLUSTER, (rank + 1)·cols/CLUSTER), 32 at a
// time (a warp reads 128 contiguous bytes of a row), each dot product split over the block's warps
// (short, independent load chains), partial sums reduced in a fixed order.
__device__ __forceinline__ void block_matvec(const float* __restrict__ m, int rows, int cols, const float* x, int ld_x,
                                             float* out, int ld_out, float* scratch) {
    const int warps = SPLIT * NF / 32;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int per = cols / CLUSTER, first = cluster_rank() * per;
    int chunk = (rows + warps - 1) / warps;
    int begin = warp * chunk, end = min(rows, begin + chunk);
    // Every block of the cluster is past its reads of the previous phase (and has started) before
    // anyone writes into its `out`.
    cluster_sync();
    for (int base = first; base < first + per; base += 32) {
        int o = base + lane;
        bool mine = o < first + per;
        float acc[TILE];
#pragma unroll
        for (int a = 0; a < TILE; ++a) acc[a] = 0.f;
        if (mine) {
#pragma unroll 16
            for (int i = begin; i < end; ++i) {
                float w = m[i * cols + o];
#pragma unroll
                for (int a = 0; a < TILE; ++a) acc[a] += w * x[a * ld_x + i];
            }
        }
#pragma unroll
        for (int a = 0; a < TILE; ++a) scratch[(warp * TILE + a) * 32 + lane] = acc[a];
        __syncthreads();
        for (int a = warp; a < TILE; a += warps) {
            float total = 0.f;
            for (int k = 0; k < warps; ++k) total += scratch[(k * TILE + a) * 32 + lane];
            if (mine) {
#pragma unroll
                for (u32 r = 0; r < CLUSTER; ++r) store_in_block(&out[a * ld_out + o], r, total);
            }
        }
        __syncthreads();
    }
    cluster_sync();
}
#endif

// Warp sums of two float4 (a and b) with 9 shuffles instead of 40: at each step a lane keeps half
// of its values and adds its partner's copy of that half, so the values to exchange halve every
// step. Returns, in lane L, component (L >> 2) & 3 of the sum of a (L < 16) or of b (L ≥ 16);
// the four lanes 4m..4m+3 hold the same value. Fixed order: deterministic.
__device__ __forceinline__ float warp_sum_two_float4(float4 a, float4 b, int lane) {
    const u32 all = 0xffffffffu;
    bool upper = lane & 16;  // keeps b
    float k0 = upper ? b.x : a.x, k1 = upper ? b.y : a.y, k2 = upper ? b.z : a.z, k3 = upper ? b.w : a.w;
    k0 += __shfl_xor_sync(all, upper ? a.x : b.x, 16);
    k1 += __shfl_xor_sync(all, upper ? a.y : b.y, 16);
    k2 += __shfl_xor_sync(all, upper ? a.z : b.z, 16);
    k3 += __shfl_xor_sync(all, upper ? a.w : b.w, 16);
    upper = lane & 8;  // keeps components 2, 3
    float m0 = upper ? k2 : k0, m1 = upper ? k3 : k1;
    m0 += __shfl_xor_sync(all, upper ? k0 : k2, 8);
    m1 += __shfl_xor_sync(all, upper ? k1 : k3, 8);
    upper = lane & 4;  // keeps the odd component
    float r = upper ? m1 : m0;
    r += __shfl_xor_sync(all, upper ? m0 : m1, 4);
    r += __shfl_xor_sync(all, r, 2);
    r += __shfl_xor_sync(all, r, 1);
    return r;
}

// Sum over the block of four values per thread; the result is valid in thread 0 only.
// `scratch` holds 4 floats per warp. Every thread of the block must call it.
__device__ __forceinline__ float4 block_sum4(float4 v, float* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v.x += __shfl_down_sync(0xffffffffu, v.x, offset);
        v.y += __shfl_down_sync(0xffffffffu, v.y, offset);
        v.z += __shfl_down_sync(0xffffffffu, v.z, offset);
        v.w += __shfl_down_sync(0xffffffffu, v.w, offset);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        scratch[4 * warp] = v.x;
        scratch[4 * warp + 1] = v.y;
        scratch[4 * warp + 2] = v.z;
        scratch[4 * warp + 3] = v.w;
    }
    __syncthreads();
    float4 total = make_float4(0.f, 0.f, 0.f, 0.f);
    if (threadIdx.x == 0) {
        int warps = (blockDim.x + 31) >> 5;
        for (int w = 0; w < warps; ++w) {  // fixed order: deterministic
            total.x += scratch[4 * w];
            total.y += scratch[4 * w + 1];
            total.z += scratch[4 * w + 2];
            total.w += scratch[4 * w + 3];
        }
    }
    __syncthreads();
    return total;
}
