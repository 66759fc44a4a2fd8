// Shared definitions for mdrun's kernels. Compile-time sizes come from NVRTC options:
//   NF  features per atom (F), NK radial functions (K), NH readout hidden width (H).
#pragma once

#ifndef NF
#error "NF (features per atom) must be defined"
#endif

typedef unsigned int u32;
typedef unsigned long long u64;

struct Cell {
    float v[3][3];    // rows: lattice vectors a, b, c (Å)
    float inv[3][3];  // inverse: fractional = cartesian · inv (row vectors)
    int periodic;     // 0: open boundaries
};

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

__device__ __forceinline__ float silu_grad(float x) {
    float s = 1.0f / (1.0f + __expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

// Cartesian translation of an integer lattice image.
__device__ __forceinline__ float3 image_shift(const Cell& cell, int3 n) {
    return make_float3(n.x * cell.v[0][0] + n.y * cell.v[1][0] + n.z * cell.v[2][0],
                       n.x * cell.v[0][1] + n.y * cell.v[1][1] + n.z * cell.v[2][1],
                       n.x * cell.v[0][2] + n.y * cell.v[1][2] + n.z * cell.v[2][2]);
}

// r_ij = R_j − R_i + shift.
__device__ __forceinline__ float3 pair_vector(const float* pos, int i, int j, const Cell& cell, int3 image) {
    float3 s = image_shift(cell, image);
    return make_float3(pos[3 * j] - pos[3 * i] + s.x, pos[3 * j + 1] - pos[3 * i + 1] + s.y,
                       pos[3 * j + 2] - pos[3 * i + 2] + s.z);
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
