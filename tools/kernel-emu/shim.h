// CPU emulation of the CUDA constructs used by the dense kernels (kernels/common.cuh and the
// per-atom kernels of kernels/painn.cu), so that their source runs unchanged under a host C++
// compiler (README.md in this directory says what that checks and what it cannot).
//
// Each CUDA thread is an OS thread, so threads of a block really interleave: a missing
// __syncthreads shows up as a wrong value (and, built with -fsanitize=thread, as a data race).
// Each block of a cluster is its own copy of the kernel code in its own C++ namespace, so it has
// its own __shared__ arrays; the harness fills all of them with NaN before every launch, so that
// a read of a shared value nobody wrote poisons the outputs.
//
// The cluster exchange (mbarrier transaction barriers and st.async into other blocks' shared
// memory) is emulated with the protocol checked on every call: which of the two barriers an
// exchange uses, that a sender's bytes land in the phase the receiver is waiting for, that the
// sums a block reads are those of the exchange it waited for (not yet overwritten by a later
// one, not left over from an earlier one). Each failed check counts as a violation.
#pragma once
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

constexpr int EMU_MAX_BLOCKS = 8;   // the largest cluster the kernels are built for
constexpr int EMU_MAX_WARPS = 32;   // 1,024 threads per block
// A barrier nobody completes within this time is a hang on the GPU (a miscounted transaction
// barrier traps after ~2 s there); here it ends the run instead of blocking the test forever.
constexpr auto EMU_HANG_TIMEOUT = std::chrono::seconds(60);

struct EmuDim {
    unsigned x = 0, y = 0, z = 0;
};

// What a CUDA thread knows about itself, and how many cluster exchanges it has taken part in
// (the index of the exchange a send or a read belongs to).
struct EmuThread {
    EmuDim thread_idx, block_idx, block_dim, grid_dim;
    unsigned rank = 0;
    long exchanges = 0;
    long cluster_generation = -1;  // the cluster barrier phase it arrived on (dense_kernel_start)
    bool cluster_ready = false;    // it has waited for that phase (cluster_ready): it may send
    unsigned rng = 1;
    // Warp-collective operations (shuffles, votes, mma) it has taken part in: every lane of a
    // warp runs the same sequence, so the parity picks the same of two slot sets in all of them.
    unsigned long collectives = 0;
};
inline thread_local EmuThread emu;

inline void emu_fatal(const char* what) {
    fprintf(stderr, "FATAL %s (block rank %u, thread %u)\n", what, emu.rank, emu.thread_idx.x);
    fflush(stderr);
    abort();
}

// A reusable barrier for a fixed number of threads (__syncthreads, a warp's shuffles, the
// cluster barrier at kernel start).
struct EmuBarrier {
    std::mutex m;
    std::condition_variable cv;
    int expected = 0, arrived = 0;
    std::atomic<long> generation{0};
    // Arrives; returns the phase, for wait_past.
    long arrive() {
        std::lock_guard<std::mutex> lock(m);
        const long g = generation;
        if (++arrived == expected) {
            arrived = 0;
            generation++;
            cv.notify_all();
        }
        return g;
    }
    void wait_past(long g) {
        // Yield a while before sleeping: with far more threads than cores the others usually
        // arrive within a few time slices, and each sleep and wake-up is a system call.
        for (int spin = 0; spin < 64; ++spin) {
            if (generation.load() != g) return;
            sched_yield();
        }
        std::unique_lock<std::mutex> lock(m);
        if (!cv.wait_for(lock, EMU_HANG_TIMEOUT, [&] { return generation != g; }))
            emu_fatal("barrier never completed (a thread skipped it: hang on the GPU)");
    }
    void wait() { wait_past(arrive()); }
};

// An mbarrier with a transaction count: a phase completes once every expected thread has arrived
// and every announced byte has landed (the count may go below zero when bytes land before the
// announcement).
struct EmuTransactionBarrier {
    std::mutex m;
    std::condition_variable cv;
    int expected = 0, pending = 0;
    long bytes = 0, phase = 0;
    void complete_if_done() {  // with m held
        if (pending == 0 && bytes == 0) {
            phase++;
            pending = expected;
            cv.notify_all();
        }
    }
};

// The state of the cluster being run (one launch of one cluster at a time).
struct EmuCluster {
    EmuBarrier block_barrier[EMU_MAX_BLOCKS];
    EmuBarrier warp_barrier[EMU_MAX_BLOCKS][EMU_MAX_WARPS];
    // Two sets, alternated by each warp's collective count: a lane writes set p, the warp meets,
    // each lane reads; a lane can only write set p again two collectives later, past the next
    // meeting, which every lane reaches after its read. One meeting per collective, not two.
    float warp_lanes[2][EMU_MAX_BLOCKS][EMU_MAX_WARPS][32];
    EmuBarrier cluster_barrier;
    EmuTransactionBarrier matvec_barrier[EMU_MAX_BLOCKS][2];
    // Each block's reduce_buffer (the exchanges' destination) and, per float of it, the exchange
    // whose sender wrote it last.
    float* reduce_buffer[EMU_MAX_BLOCKS] = {};
    size_t reduce_bytes = 0;
    std::vector<long> written_by_exchange[EMU_MAX_BLOCKS];
    // Per block and barrier: the latest exchange any sender has sent into it.
    std::atomic<long> latest_received[EMU_MAX_BLOCKS][2];
    std::atomic<long> violations{0};
    // Sends that reached a block before any of its threads had arrived at that exchange: the
    // run-ahead the double-buffered exchange allows, which the checks above are about.
    std::atomic<long> sends_ahead{0};
    bool jitter = false;
};
inline EmuCluster E;

inline void emu_violation(const char* what, long a, long b) {
    if (E.violations++ < 20)
        fprintf(stderr, "VIOLATION %s (block rank %u, thread %u): %ld %ld\n", what, emu.rank, emu.thread_idx.x, a, b);
}

inline unsigned emu_random() {
    emu.rng = emu.rng * 1103515245u + 12345u;
    return emu.rng >> 8;
}

// Random yields and short sleeps at the synchronisation points, so that the threads and blocks
// take many different interleavings (on the GPU a block may run far ahead of another).
inline void emu_jitter() {
    if (!E.jitter || emu_random() % 97 != 0) return;
    if (emu_random() % 4 == 0) usleep(emu_random() % 300);
    else sched_yield();
}

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
// Every shared array lives in one linker section, which the harness poisons before each launch.
#define __shared__ static __attribute__((section("emushm")))
#define threadIdx (::emu.thread_idx)
#define blockIdx (::emu.block_idx)
#define blockDim (::emu.block_dim)
#define gridDim (::emu.grid_dim)
#define __align__(n) alignas(n)

struct float2 {
    float x, y;
};
struct float3 {
    float x, y, z;
};
struct float4 {
    float x, y, z, w;
};
struct double3 {
    double x, y, z;
};
struct int3 {
    int x, y, z;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double3 make_double3(double x, double y, double z) { return {x, y, z}; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float __expf(float x) { return expf(x); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
// KERNEL_CHECKS makes one block of a cluster linger after each exchange (microseconds on the
// GPU). Emulated threads are far slower, so the linger is stretched 250 times (ns / 4 µs) to stay
// long against the other blocks' work.
inline void __nanosleep(unsigned ns) {
    if (ns) usleep(ns / 4);
}
inline void __trap() { emu_fatal("__trap"); }
inline long long clock64() { return 0; }

inline void __syncthreads() {
    emu_jitter();
    E.block_barrier[emu.rank].wait();
}

// A warp-wide exchange (every kernel uses the full mask): each lane publishes its value, the warp
// meets, and each may then read every lane's (EmuCluster::warp_lanes: why one meeting does).
inline const float* emu_warp_exchange(unsigned mask, float v, const char* what) {
    if (mask != 0xffffffffu) emu_violation(what, mask, 0);
    const unsigned warp = emu.thread_idx.x / 32, lane = emu.thread_idx.x % 32;
    float* lanes = E.warp_lanes[emu.collectives++ & 1][emu.rank][warp];
    lanes[lane] = v;
    E.warp_barrier[emu.rank][warp].wait();
    return lanes;
}

inline float emu_shuffle(unsigned mask, float v, unsigned source_lane) {
    return emu_warp_exchange(mask, v, "shuffle with a partial mask")[source_lane];
}
inline float __shfl_down_sync(unsigned mask, float v, int offset) {
    const unsigned lane = emu.thread_idx.x % 32;
    return emu_shuffle(mask, v, lane + offset < 32 ? lane + offset : lane);
}
inline float __shfl_xor_sync(unsigned mask, float v, int offset) {
    return emu_shuffle(mask, v, (emu.thread_idx.x % 32) ^ offset);
}

inline unsigned cluster_rank() { return emu.rank; }

// --- The cluster exchange (replaces the CLUSTER > 1 primitives of kernels/common.cuh) ---------

// dense_kernel_start: thread 0 of each block sets up its block's two barriers, then every thread
// arrives on the cluster barrier; cluster_ready waits for it, so that no block sends before its
// receivers are set up (kernels/common.cuh, perf-notes v61).
inline void emu_dense_kernel_start() {
    if (emu.thread_idx.x == 0) {
        for (int which = 0; which < 2; ++which) {
            EmuTransactionBarrier& b = E.matvec_barrier[emu.rank][which];
            std::lock_guard<std::mutex> lock(b.m);
            b.expected = b.pending = emu.block_dim.x;
            b.bytes = 0;
            b.phase = 0;
            E.latest_received[emu.rank][which] = -1;
        }
        E.written_by_exchange[emu.rank].assign(E.reduce_bytes / sizeof(float), -1);
    }
    emu.exchanges = 0;
    emu.cluster_ready = false;
    emu.cluster_generation = E.cluster_barrier.arrive();
}

inline void emu_cluster_ready() {
    if (emu.cluster_ready) emu_violation("waits on the kernel's cluster barrier twice", emu.cluster_generation, 0);
    E.cluster_barrier.wait_past(emu.cluster_generation);
    emu.cluster_ready = true;
}

// matvec_arrive: exchange n completes on barrier n mod 2; thread 0 announces the bytes.
inline unsigned long long emu_matvec_arrive(unsigned which, unsigned bytes) {
    if ((long)which != (emu.exchanges & 1)) emu_violation("arrives on the other exchange's barrier", which, emu.exchanges);
    EmuTransactionBarrier& b = E.matvec_barrier[emu.rank][which];
    unsigned long long state;
    {
        std::lock_guard<std::mutex> lock(b.m);
        if (emu.thread_idx.x == 0) b.bytes += bytes;
        b.pending--;
        state = b.phase;
        b.complete_if_done();
    }
    emu.exchanges++;
    emu_jitter();
    return state;
}

inline void emu_matvec_wait(unsigned which, unsigned long long state) {
    EmuTransactionBarrier& b = E.matvec_barrier[emu.rank][which];
    std::unique_lock<std::mutex> lock(b.m);
    if (!b.cv.wait_for(lock, EMU_HANG_TIMEOUT, [&] { return b.phase > (long)state; })) {
        fprintf(stderr, "outstanding bytes %ld, threads yet to arrive %d\n", b.bytes, b.pending);
        emu_fatal("transaction barrier never completed (miscounted bytes: hang on the GPU)");
    }
}

// send_to_block: the st.async of `value` to the place of `local` in block `rank`'s
// reduce_buffer, counted on that block's barrier `which`. Sent before the sender arrives, so it
// belongs to the sender's exchange number emu.exchanges.
inline void emu_send_to_block(float* local, unsigned rank, unsigned which, float value) {
    const long exchange = emu.exchanges;
    if (!emu.cluster_ready) emu_violation("sends before waiting on the kernel's cluster barrier", rank, exchange);
    if ((long)which != (exchange & 1)) emu_violation("sends on the other exchange's barrier", which, exchange);
    const size_t offset = (char*)local - (char*)E.reduce_buffer[emu.rank];
    if (offset + sizeof(float) > E.reduce_bytes) emu_fatal("sends from outside reduce_buffer");
    if (rank >= EMU_MAX_BLOCKS || !E.reduce_buffer[rank]) emu_fatal("sends to a block outside the cluster");
    emu_jitter();
    EmuTransactionBarrier& b = E.matvec_barrier[rank][which];
    std::lock_guard<std::mutex> lock(b.m);
    *(float*)((char*)E.reduce_buffer[rank] + offset) = value;
    E.written_by_exchange[rank][offset / sizeof(float)] = exchange;
    if (rank != emu.rank && b.pending == b.expected) E.sends_ahead++;
    if (b.phase != (exchange >> 1)) emu_violation("bytes land in another phase of the barrier", b.phase, exchange);
    if (exchange > E.latest_received[rank][which]) E.latest_received[rank][which] = exchange;
    b.bytes -= sizeof(float);
    b.complete_if_done();
}

// A read of reduce_buffer through Reduced (constructed right after the exchange's wait, so
// `exchange` is the one whose sums it reads): the value must have been sent in that exchange and
// not yet overwritten by the next exchange on the same half.
inline void emu_check_reduced_read(const float* p, long exchange) {
    if (!E.reduce_buffer[emu.rank]) return;
    const size_t offset = (const char*)p - (const char*)E.reduce_buffer[emu.rank];
    if (offset >= E.reduce_bytes) return;  // an Owned matvec's output in the block's own array
    if (exchange < 0) {
        emu_violation("reads reduce_buffer before any exchange", exchange, 0);
        return;
    }
    if ((long)(offset / (E.reduce_bytes / 2)) != (exchange & 1))
        emu_violation("reads the other exchange's half of reduce_buffer", (long)offset, exchange);
    const long latest = E.latest_received[emu.rank][exchange & 1].load();
    if (latest >= exchange + 2) emu_violation("reads sums already overwritten by a later exchange", exchange, latest);
    const long written = E.written_by_exchange[emu.rank][offset / sizeof(float)];
    if (written != exchange && latest < exchange + 2)
        emu_violation("reads a sum not sent in this exchange", exchange, written);
}

inline long emu_current_exchange() { return emu.exchanges - 1; }

// --- What the message kernels use besides (kernels/message_mma.cu and painn.cu's pair helpers) --

#define __launch_bounds__(...)
struct int2 {
    int x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int3 make_int3(int x, int y, int z) { return {x, y, z}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline void sincospif(float x, float* s, float* c) {
    const double a = M_PI * (double)x;
    *s = (float)std::sin(a);
    *c = (float)std::cos(a);
}

// A warp's vote: each lane publishes its predicate, the warp meets, each lane builds the mask.
inline unsigned __ballot_sync(unsigned mask, bool predicate) {
    const float* lanes = emu_warp_exchange(mask, predicate ? 1.f : 0.f, "ballot with a partial mask");
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l) bits |= (lanes[l] != 0.f ? 1u : 0u) << l;
    return bits;
}

// Half precision (IEEE binary16, round to nearest even: cvt.rn.f16.f32) in the low or high 16
// bits of a 32-bit register.
inline unsigned emu_half_bits(float v) {
    const _Float16 h = (_Float16)v;
    unsigned short bits;
    memcpy(&bits, &h, 2);
    return bits;
}
inline float emu_half_value(unsigned bits) {
    const unsigned short b = (unsigned short)bits;
    _Float16 h;
    memcpy(&h, &b, 2);
    return (float)h;
}
// cvt.rn.f16x2.f32 d, hi, lo: hi in the upper half, lo in the lower.
inline unsigned emu_half2(float lo, float hi) { return emu_half_bits(lo) | emu_half_bits(hi) << 16; }
inline float2 emu_float2_of(unsigned h) { return {emu_half_value(h & 0xffffu), emu_half_value(h >> 16)}; }

// mma.sync.aligned.m16n8k{16,8}.row.col.f32.f16.f16.f32, a warp-collective product: every lane
// publishes its A and B fragment registers, the warp meets, each lane computes its four
// accumulator elements from the whole tiles, the warp meets again before the slots are reused.
// Fragment layout (PTX ISA, lane = 4g + t): A rows g and g + 8, columns 2t, 2t + 1 (registers 0,
// 1) and 2t + 8, 2t + 9 (2, 3; k16 only); B column g, rows 2t, 2t + 1 (register 0) and 2t + 8,
// 2t + 9 (1; k16 only); C rows g (0, 1) and g + 8 (2, 3), columns 2t, 2t + 1. Products of halves
// are exact in f32; the emulation sums the k products in f64 and adds them to the accumulator
// once (the tensor cores' internal order and width are not specified: equal to rounding). The
// slots alternate like warp_lanes (one meeting per product).
struct EmuMmaSlots {
    unsigned a[32][4], b[32][2];
};
inline EmuMmaSlots emu_mma_slots[2][EMU_MAX_BLOCKS][EMU_MAX_WARPS];

template <int K>
inline void emu_mma(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned warp = emu.thread_idx.x / 32, lane = emu.thread_idx.x % 32;
    EmuMmaSlots& s = emu_mma_slots[emu.collectives++ & 1][emu.rank][warp];
    for (int r = 0; r < 4; ++r) s.a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) s.b[lane][r] = b[r];
    E.warp_barrier[emu.rank][warp].wait();
    auto a_at = [&](int row, int k) {  // A[row][k]
        const int g = row % 8, t = (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        const unsigned word = s.a[4 * g + t][reg];
        return emu_half_value(k % 2 ? word >> 16 : word & 0xffffu);
    };
    auto b_at = [&](int k, int col) {  // B[k][col]
        const int t = (k % 8) / 2, reg = k >= 8 ? 1 : 0;
        const unsigned word = s.b[4 * col + t][reg];
        return emu_half_value(k % 2 ? word >> 16 : word & 0xffffu);
    };
    const int g = lane / 4, t = lane % 4;
    float out[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + e % 2;
        double sum = 0.0;
        for (int k = 0; k < K; ++k) sum += (double)a_at(row, k) * (double)b_at(k, col);
        out[e] = (float)((double)c[e] + sum);
    }
    for (int e = 0; e < 4; ++e) c[e] = out[e];
}
inline void emu_mma_k16(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    const unsigned a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
    emu_mma<16>(c, a, b);
}
inline void emu_mma_k8(float (&c)[4], unsigned a0, unsigned a1, unsigned b0) {
    const unsigned a[4] = {a0, a1, 0u, 0u}, b[2] = {b0, 0u};
    emu_mma<8>(c, a, b);
}
