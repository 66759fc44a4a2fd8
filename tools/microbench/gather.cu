// What does a neighbor gather cost the L1 data pipe, as a function of how a warp's load spreads
// over the neighbors? The message kernels read, per pair and channel, six floats of the neighbor
// (x: s, R, v; μ: x, y, z): 3 KB per pair at F = 128. Their layouts differ only in how one load
// instruction of a warp maps onto pairs (docs/perf-notes.md, v31–v32):
//   scalar     1 pair  × 128 B per instruction (lane = channel; kernels/painn.cu)
//   mma-v31    4 pairs ×  64 B (float2 per lane; kernels/message_mma.cu)
//   packed     4 pairs × 128 B (float4 per lane, x and μ packed per 16 channels; v32, not kept)
//   pair-rows  8 pairs ×  32 B (float2 per lane, pairs as the mma rows; v31's first layout)
//   wide       1 pair  × 512 B (float4 per lane)
// Every pattern reads the same bytes per pair from a table that fits in L2 (1,536 atoms × 3 KB),
// with the same random neighbor indices; 16 warps per SM as in the kernels. Prints ns per pair
// per SM; run under ncu with --metrics l1tex__data_pipe_lsu_wavefronts.sum,
// l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum
// to see what the pipe counts.
//
// nvcc -O3 -arch=sm_90 -std=c++17 gather.cu -o gather && ./gather
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>

#include "check.cuh"

constexpr int ATOMS = 1536, FLOATS_PER_ATOM = 6 * 128, PAIRS_PER_WARP = 512;

// PAIRS pairs per instruction, BYTES contiguous bytes of each, VEC floats per lane.
template <int PAIRS, int VEC>
__global__ void __launch_bounds__(256) gather(const float* __restrict__ table, const int* __restrict__ neighbors,
                                              float* out) {
    constexpr int LANES_PER_PAIR = 32 / PAIRS;
    constexpr int FLOATS_PER_LOAD = LANES_PER_PAIR * VEC;  // of one pair
    constexpr int LOADS = FLOATS_PER_ATOM / FLOATS_PER_LOAD;  // per pair, per warp
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    const int which = lane / LANES_PER_PAIR, sub = lane % LANES_PER_PAIR;
    const int* nb = neighbors + (size_t)warp * PAIRS_PER_WARP;
    float acc = 0.f;
    for (int p = 0; p < PAIRS_PER_WARP; p += PAIRS) {
        const float* row = table + (size_t)nb[p + which] * FLOATS_PER_ATOM + sub * VEC;
#pragma unroll 8
        for (int l = 0; l < LOADS; ++l) {
            const float* at = row + l * FLOATS_PER_LOAD;
            if constexpr (VEC == 4) {
                const float4 v = *reinterpret_cast<const float4*>(at);
                acc += v.x + v.y + v.z + v.w;
            } else if constexpr (VEC == 2) {
                const float2 v = *reinterpret_cast<const float2*>(at);
                acc += v.x + v.y;
            } else {
                acc += *at;
            }
        }
    }
    if (acc == 12345.f) out[0] = acc;  // keeps the loads
}

template <int PAIRS, int VEC>
void run(const char* name, const float* table, const int* neighbors, float* out, int blocks) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    gather<PAIRS, VEC><<<blocks, 256>>>(table, neighbors, out);  // warm-up: the table into L2
    CHECK(cudaEventRecord(a));
    const int reps = 20;
    for (int r = 0; r < reps; ++r) gather<PAIRS, VEC><<<blocks, 256>>>(table, neighbors, out);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    int sms;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const double pairs = (double)blocks * 8 * PAIRS_PER_WARP;
    printf("%-10s %d pairs x %3d B per load: %7.2f ns per pair per SM, %6.1f B/clk/SM at 1.98 GHz\n", name, PAIRS,
           32 / PAIRS * VEC * 4, ms * 1e6 / reps / pairs * sms, pairs * FLOATS_PER_ATOM * 4 / (ms * 1e-3 / reps) / sms / 1.98e9);
}

int main() {
    int sms;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int blocks = 2 * sms;  // 16 warps per SM
    std::vector<float> table((size_t)ATOMS * FLOATS_PER_ATOM, 1.f);
    std::vector<int> neighbors((size_t)blocks * 8 * PAIRS_PER_WARP);
    srand(1);
    for (auto& n : neighbors) n = rand() % ATOMS;
    float *d_table, *d_out;
    int* d_nb;
    CHECK(cudaMalloc(&d_table, table.size() * 4));
    CHECK(cudaMalloc(&d_nb, neighbors.size() * 4));
    CHECK(cudaMalloc(&d_out, 4));
    CHECK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_nb, neighbors.data(), neighbors.size() * 4, cudaMemcpyHostToDevice));
    run<1, 1>("scalar", d_table, d_nb, d_out, blocks);
    run<4, 2>("mma-v31", d_table, d_nb, d_out, blocks);
    run<4, 4>("packed", d_table, d_nb, d_out, blocks);
    run<8, 2>("pair-rows", d_table, d_nb, d_out, blocks);
    run<1, 4>("wide", d_table, d_nb, d_out, blocks);
    return 0;
}
