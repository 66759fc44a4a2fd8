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

// Component-wise sum (per-pair gradients are float4: ∂E/∂d, ∂E/∂r̂).
__device__ __forceinline__ float4 add4(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }

// Programmatic dependent launch (compute capability 9.0 on; docs/perf-notes.md, v36). The MD
// step's kernels are launched so that each may start while its predecessor still runs: a kernel
// lets its successor launch (launch_next_kernel: at its start where PDL_EARLY_TRIGGER is 1,
// otherwise when it completes), may load what no kernel of the step writes (weights), and then
// waits until every kernel before it has finished and its writes are visible
// (wait_for_previous_kernels). Every kernel of the step waits, in every thread, before it touches
// the step's buffers and before any early return: one that exited without waiting could finish
// before its predecessor, and its successor's wait would no longer cover that predecessor.
// These kernels must not read the step's buffers through `const __restrict__` pointers: ptxas
// treats such (non-coherent) loads as free to move above the wait, and did (message_backward_mma
// read its own atom's gradients before them, stale: wrong forces). Weights may be read so.
// Launched the ordinary way, both are no-ops.
#ifndef PDL_EARLY_TRIGGER
#define PDL_EARLY_TRIGGER 0
#endif

__device__ __forceinline__ void launch_next_kernel() {
#if __CUDA_ARCH__ >= 900 && PDL_EARLY_TRIGGER
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_previous_kernels() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Both, for kernels with nothing to load before the wait.
__device__ __forceinline__ void follow_previous_kernels() {
    launch_next_kernel();
    wait_for_previous_kernels();
}

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
__device__ __forceinline__ float3 pair_vector(double3 pos_i, const double* pos, int j, const Cell& cell, int3 image) {
    double3 s = image_shift(cell, image);
    return make_float3((float)(pos[3 * j] - pos_i.x + s.x), (float)(pos[3 * j + 1] - pos_i.y + s.y),
                       (float)(pos[3 * j + 2] - pos_i.z + s.z));
}

__device__ __forceinline__ float3 pair_vector(const double* pos, int i, int j, const Cell& cell, int3 image) {
    return pair_vector(make_double3(pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]), pos, j, cell, image);
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

__device__ __forceinline__ u32 remote_address(u32 address, u32 rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(address), "r"(rank));
    return remote;
}

__device__ __forceinline__ u32 remote_address(const void* local, u32 rank) {
    return remote_address(shared_address(local), rank);
}

// Transaction barriers (mbarrier with a byte count), shared by the dense kernels' cluster matvecs
// and the one-cluster kernel: a phase completes when its arrivals are in and every announced byte
// has landed, so senders need no release fence (a cluster barrier's release is a GPU-wide MEMBAR:
// docs/perf-notes.md, v12 and v22).
// Waiters acquire at CTA scope, as for any transaction barrier (CUTLASS's
// ClusterTransactionBarrier waits the same way): what a wait guards is this block's own shared
// memory, written by the senders' st.async. A cluster-scope acquire compiles to an L1
// invalidation (CCTL.IVALL) in every thread after every wait (perf-notes v25).
__device__ __forceinline__ void barrier_init(u64* bar, u32 arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(arrivals) : "memory");
}

// Stores `v` at the shared::cluster address `remote` and counts its 4 bytes on the barrier at
// `remote_bar` (st.async: no fence, the barrier orders it).
__device__ __forceinline__ void store_counted(u32 remote, float v, u32 remote_bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote),
                 "r"(__float_as_uint(v)), "r"(remote_bar)
                 : "memory");
}

// Spins on `done()` (one try_wait on a barrier). A miscounted phase would hang the GPU: after
// ~2 s (4·10⁹ cycles of this SM's clock) the kernel traps instead (a launch failure the host
// reports). The clock is read only once the first try has failed, and it is the SM's cycle
// counter: reading %globaltimer stalls on a long scoreboard (perf-notes v25).
template <class TryWait>
__device__ __forceinline__ void wait_or_trap(TryWait done) {
    if (done()) return;
    const long long start = clock64();
    while (!done())
        if (clock64() - start > 4000000000ll) __trap();
}
#endif

// Where every dense block has an SM to itself (the launch's blocks fit the GPU's SMs at once:
// DENSE_ALONE, set by the host), ptxas may give a thread up to 128 registers: it then issues each
// matvec's weight loads in one round instead of two to four, and the kernels hold the next
// matvec's weights through the step before it (perf-notes v57). Elsewhere ptxas keeps near 64
// registers, so that two blocks share an SM.
#ifndef DENSE_ALONE
#define DENSE_ALONE 0
#endif
#if DENSE_ALONE
#define DENSE_BOUNDS __launch_bounds__(SPLIT * NF, 1)
#else
#define DENSE_BOUNDS
#endif

#if CLUSTER > 1
// Dense kernels are launched with CLUSTER consecutive blocks per tile of atoms.
#define DENSE_KERNEL extern "C" __global__ void DENSE_BOUNDS __cluster_dims__(CLUSTER, 1, 1)
#define DENSE_TILE_INDEX (blockIdx.x / CLUSTER)

// Each cluster matvec completes on one of this block's two transaction barriers, alternately: it
// expects the bytes of all the matvec's outputs (every block of the cluster sends its share to
// every block, st.async counting them), so no release fence has to drain the senders' stores (a
// cluster barrier's release is a GPU-wide MEMBAR: docs/perf-notes.md, v22). Two barriers, so that
// a block may send the next matvec's outputs while a slower block still waits for this one's
// (perf-notes v39): the next matvec's bytes count on the other barrier.
__shared__ u64 matvec_barrier[2];

// Called first by every dense kernel: thread 0 initializes the block's two transaction barriers,
// and the block arrives on the cluster barrier that tells the other blocks they may send to them.
// The wait for that barrier comes only before the block's own first send (cluster_ready, in
// cluster_matvec), so that the barrier's round trip between SMs passes under the kernel's wait for
// the previous ones, its early reads and its first matvec's products instead of after them
// (perf-notes v61). The barriers are this block's shared memory: set up before the wait for the
// previous kernels, which touches none of the step's buffers. Every clustered dense kernel must
// reach a cluster_matvec that sends (not Owned) on every path, once: its cluster_ready is the
// wait that pairs with this arrival.
__device__ __forceinline__ void dense_kernel_start() {
    if (threadIdx.x == 0) {
        barrier_init(&matvec_barrier[0], blockDim.x);
        barrier_init(&matvec_barrier[1], blockDim.x);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    // Relaxed: the fence above already orders the barriers' set-up before the arrival (the pattern
    // the PTX ISA gives for mbarrier initialization); a release would also drain every earlier
    // memory operation GPU-wide.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
    follow_previous_kernels();
}

// Every block of the cluster has set up its barriers: from here this block may send. Called once
// per kernel by every thread (cluster_matvec, at the kernel's first exchange; every clustered dense
// kernel has one).
__device__ __forceinline__ void cluster_ready() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }

// Every thread arrives on the current phase of barrier `which` (thread 0 also announces
// `bytes`); the returned state identifies the phase for matvec_wait. Senders' bytes may land
// before the announcement: the transaction count may go below zero, and the phase cannot complete
// before every thread, thread 0 included, has arrived.
__device__ __forceinline__ u64 matvec_arrive(u32 which, u32 bytes) {
    u64 state;
    const u32 bar = shared_address(&matvec_barrier[which]);
    if (threadIdx.x == 0)
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;" : "=l"(state) : "r"(bar), "r"(bytes) : "memory");
    else
        asm volatile("mbarrier.arrive.shared::cta.b64 %0, [%1];" : "=l"(state) : "r"(bar) : "memory");
    return state;
}

// Waits until every thread has arrived and every announced byte has landed (CTA-scope acquire,
// see the transaction barriers above).
__device__ __forceinline__ void matvec_wait(u32 which, u64 state) {
    const u32 bar = shared_address(&matvec_barrier[which]);
    wait_or_trap([&] {
        u32 done;
        asm volatile("{ .reg .pred p; mbarrier.try_wait.acquire.cta.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done)
                     : "r"(bar), "l"(state)
                     : "memory");
        return done != 0;
    });
}

// Stores `value` at the place of `local` (this block's shared memory) in block `rank`'s and
// counts its 4 bytes on that block's matvec barrier `which`.
__device__ __forceinline__ void send_to_block(float* local, u32 rank, u32 which, float value) {
    store_counted(remote_address(local, rank), value, remote_address(&matvec_barrier[which], rank));
}
#else
#define DENSE_KERNEL extern "C" __global__ void DENSE_BOUNDS
#define DENSE_TILE_INDEX (blockIdx.x)
__device__ __forceinline__ void dense_kernel_start() { follow_previous_kernels(); }
#endif

// Whether the dense kernels read their biases and what earlier kernels wrote per atom at their
// start (with clusters: one block per SM, bound by rounds of latency, where each such read after a
// matvec cost a round on the critical path) or where they use them (without clusters several
// blocks share an SM, and registers held through the matvecs would cost that occupancy; tiles
// of 4 atoms, never chosen by default, would pass the 128 registers of 512 threads).
// perf-notes v40.
#define DENSE_EARLY_READS (CLUSTER > 1 && TILE <= 2)

// Accumulators per thread in block_matvec: (row of x, column pass) pairs computed in one round of
// weight loads. The scratch array of a kernel that calls block_matvec holds MATVEC_SCRATCH floats.
#define MATVEC_ACC (SPLIT * TILE <= 8 ? 6 : TILE)
#define MATVEC_SCRATCH (SPLIT * MATVEC_ACC * NF)

// block_matvec's working state in a kernel: the partial sums' shared array (MATVEC_SCRATCH
// floats) and, with clusters, how many matvecs the kernel has run (which transaction barrier the
// next one completes on). One per kernel, passed to every block_matvec in order.
struct MatvecScratch {
    float* values;
    u32 calls;
};

// How the blocks of a dense cluster share a matvec (docs/perf-notes.md, v54). Block `rank` owns
// channels [rank·OWNED, (rank + 1)·OWNED) of every F-wide vector (and of each F-wide part of a
// wider one). A two-layer network runs its first layer Reduced and its second Owned, or the other
// way round, so that it exchanges once, not once per layer (as tensor-parallel transformer
// layers pair a column-split layer with a row-split one).
enum class Slice {
    Owned,      // the block's outputs (its channels of each of PARTS parts) over every input; no exchange
    Reduced,    // every output over the block's inputs (its channels of each of PARTS parts); the
                // partial sums go to every block and are summed there
    Scattered,  // as Reduced, but an output's partial sums go only to the block that owns it
};

#define OWNED (NF / CLUSTER)

// The first channel this block owns (0 without clusters).
__device__ __forceinline__ int owned_first() {
#if CLUSTER > 1
    return (int)cluster_rank() * OWNED;
#else
    return 0;
#endif
}

// An exchange's sums as a kernel reads them: output c of row a is the sum over ranks r, in rank
// order (so that every block gets the same bits), of p[r·rank_stride + a·ld + c − first]. c is
// the output's column in the matrix. Without clusters, the matvec's own output.
struct Reduced {
    const float* p;
    int rank_stride, ld, first;
    __device__ __forceinline__ float operator()(int a, int c) const {
        const float* v = p + a * ld + c - first;
        float total = v[0];
#pragma unroll
        for (int r = 1; r < CLUSTER; ++r) total += v[r * rank_stride];
        return total;
    }
};

// For each row a < ROWS of x: out[a·ld_out + o] = Σ_i m[i·OUT + o] · x[a·ld_x + i], o < OUT, with
// m row-major [IN, OUT] in global memory and x in shared memory (ROWS is TILE atoms, or 3·TILE
// atom-Cartesian rows where one matrix acts on each Cartesian component). Forward layers pass Wᵀ
// ([in, out]); backward passes W ([out, in]) to get Wᵀ·g. Each weight is loaded once for all
// ROWS rows. Results land in shared `out`. `scratch` holds
// MATVEC_SCRATCH floats. Every thread of the block must call it; it ends with a barrier.
#if CLUSTER == 1
// Thread (c, s) owns output columns c, c + NF, ... and the s-th of SPLIT slices of the dot
// products. The column passes of a round are loaded together: the kernels that call this are
// bound by rounds of dependent L2 loads below ~1,000 atoms, not by bandwidth (perf-notes, v18).
template <int ROWS, int IN, int OUT>
__device__ __forceinline__ void block_matvec(const float* __restrict__ m, const float* x, int ld_x, float* out,
                                             int ld_out, MatvecScratch& scratch) {
    static_assert(ROWS <= MATVEC_ACC, "more rows than matvec accumulators");
    constexpr int PASSES = (OUT + NF - 1) / NF;
    constexpr int GROUP = MATVEC_ACC / ROWS < PASSES ? MATVEC_ACC / ROWS : PASSES;  // passes per round
    constexpr int CHUNK = (IN + SPLIT - 1) / SPLIT;
    const int c = threadIdx.x % NF, s = threadIdx.x / NF;
    const int begin = s * CHUNK, end = min(IN, begin + CHUNK);
    // Rounds unrolled only when they hold several passes (one pass per round: the code of an
    // unrolled 4-atom matvec costs more in instruction fetch than it saves).
    constexpr int ROUNDS_UNROLLED = GROUP > 1 ? (PASSES + GROUP - 1) / GROUP : 1;
#pragma unroll ROUNDS_UNROLLED
    for (int base = 0; base < PASSES; base += GROUP) {
        const int passes = PASSES - base < GROUP ? PASSES - base : GROUP;  // compile-time once unrolled
        float acc[GROUP][ROWS];
        int column[GROUP];
#pragma unroll
        for (int p = 0; p < GROUP; ++p) {
            // Columns past OUT (OUT not a multiple of NF) load a valid weight and are not stored.
            column[p] = min((base + p) * NF + c, OUT - 1);
#pragma unroll
            for (int a = 0; a < ROWS; ++a) acc[p][a] = 0.f;
        }
        constexpr int UNROLL = 16;  // 16 · GROUP loads in flight per thread
        // A trip count known at compile time where the slices divide the inputs (every layer):
        // no remainder loop between the unrolled rounds (perf-notes v44).
        const int count = IN % SPLIT == 0 ? CHUNK : end - begin;
#pragma unroll UNROLL
        for (int k = 0; k < count; ++k) {
            const int i = begin + k;
#pragma unroll
            for (int p = 0; p < GROUP; ++p) {
                if (p >= passes) break;
                float w = m[i * OUT + column[p]];
#pragma unroll
                for (int a = 0; a < ROWS; ++a) acc[p][a] += w * x[a * ld_x + i];
            }
        }
#pragma unroll
        for (int p = 0; p < GROUP; ++p) {
            if (p >= passes) break;
#pragma unroll
            for (int a = 0; a < ROWS; ++a) scratch.values[((s * GROUP + p) * ROWS + a) * NF + c] = acc[p][a];
        }
        __syncthreads();
        // The passes × ROWS outputs of each column are summed over the SPLIT slices in a fixed
        // order, spread over the splits.
#pragma unroll
        for (int p = 0; p < GROUP; ++p) {
            if (p >= passes) break;
            const int o = (base + p) * NF + c;
#pragma unroll
            for (int a = 0; a < ROWS; ++a) {
                if ((p * ROWS + a) % SPLIT != s || o >= OUT) continue;
                float total = 0.f;
#pragma unroll
                for (int k = 0; k < SPLIT; ++k) total += scratch.values[((k * GROUP + p) * ROWS + a) * NF + c];
                out[a * ld_out + o] = total;
            }
        }
        __syncthreads();
    }
}

// Without clusters a kernel's first matvec loads its weights where it runs: several blocks share
// an SM, and registers held from the start would cost that occupancy (perf-notes v46).
template <int IN, int OUT, Slice KIND, int PARTS = 1, bool HELD = false>
struct MatvecWeights {
    const float* m;
    __device__ explicit MatvecWeights(const float* __restrict__ m) : m(m) {}
};

// Without clusters a block owns every channel: each kind is the whole matvec, and the sums are
// read where block_matvec left them.
template <int ROWS, int IN, int OUT, Slice KIND, int PARTS, bool HELD>
__device__ __forceinline__ Reduced dense_matvec(const MatvecWeights<IN, OUT, KIND, PARTS, HELD>& weights, const float* x,
                                                int ld_x, float* out, int ld_out, MatvecScratch& scratch) {
    block_matvec<ROWS, IN, OUT>(weights.m, x, ld_x, out, ld_out, scratch);
    return Reduced{out, 0, ld_out, 0};
}
#else
// The largest number of slices, at most `most`, that splits `n` inputs evenly into chunks that
// each lie within one run of `run` consecutive inputs or cover whole runs (a thread's inputs are
// then its first input plus compile-time offsets).
__host__ __device__ constexpr int even_slices(int n, int most, int run) {
    return most <= 1 ? 1
                     : n % most == 0 && (run % (n / most) == 0 || (n / most) % run == 0) ? most
                                                                                         : even_slices(n, most - 1, run);
}

// Which part of a matvec a block of a cluster computes (see Slice). A block computes NB outputs
// over KB inputs; its output j is column column(j) of the matrix, its input k row input(k). In
// groups of 32 outputs (a warp reads 128 contiguous bytes of a weight row), each group's dot
// products split over SPLITS warps; every warp issues its weight loads ahead of its products
// (ptxas sends them in one to three rounds, perf-notes v44).
template <int IN, int OUT, Slice KIND, int PARTS>
struct MatvecLayout {
    static constexpr bool BY_INPUT = KIND != Slice::Owned;
    static_assert((BY_INPUT ? IN : OUT) % (PARTS * CLUSTER) == 0, "each part splits evenly over the cluster");
    // The block's inputs (by input) or outputs (Owned) are its channels of F-wide parts, as
    // owned_first() says; a Scattered matvec's outputs are one F-wide vector, each channel's
    // partial sums sent to its owner.
    static_assert((BY_INPUT ? IN : OUT) == PARTS * NF, "a split side is PARTS vectors of F channels");
    static_assert(KIND != Slice::Scattered || OUT == NF, "a scattered matvec's outputs are F channels");
    static constexpr int NB = BY_INPUT ? OUT : OUT / CLUSTER;
    static constexpr int KB = BY_INPUT ? IN / CLUSTER : IN;
    // Owned outputs (and, by input, rows) come in runs of RUN consecutive columns, one per part.
    static constexpr int RUN = BY_INPUT ? IN / PARTS / CLUSTER : OUT / PARTS / CLUSTER;
    static constexpr int WARPS = SPLIT * NF / 32;
    static constexpr int GROUPS = (NB + 31) / 32;
    static_assert(GROUPS <= WARPS, "a cluster block's outputs need a warp per 32");
    // Warps per group: slices of the dot products, as many as divide KB evenly. A bound check
    // per load (128 inputs over 5 slices) made ptxas issue the loads two at a time, each pair
    // after the previous pair's products: 13 rounds of L2 latency instead of one (perf-notes v44).
    static constexpr int SPLITS = even_slices(KB, WARPS / GROUPS, BY_INPUT ? RUN : KB);
    static constexpr int CHUNK = KB / SPLITS;  // inputs per slice
    // Whether a kernel may hold a thread's weights in registers from before its wait for the
    // previous kernel (MatvecWeights): one atom per block and up to 32 weights per thread, the
    // layouts where it was measured (perf-notes v46); elsewhere the matvec loads where it runs.
    static constexpr bool HELD = TILE == 1 && CHUNK <= 32;

    __device__ static int column(int j) {
        if constexpr (BY_INPUT) return j;
        else return (j / RUN) * (OUT / PARTS) + (int)cluster_rank() * RUN + j % RUN;
    }
    // The first input of slice `slice`, and where its k-th input is from there.
    __device__ static int first_input(int slice) {
        const int k = slice * CHUNK;
        if constexpr (BY_INPUT) return (k / RUN) * (IN / PARTS) + (int)cluster_rank() * RUN + k % RUN;
        else return k;
    }
    __host__ __device__ static constexpr int offset(int k) {
        return !BY_INPUT || CHUNK <= RUN ? k : (k / RUN) * (IN / PARTS) + k % RUN;
    }
};

// Partial sums of a Reduced or Scattered matvec, one array per rank of the sender, in the
// receiver's shared memory; two, used alternately with the transaction barriers (the rule at
// cluster_matvec).
#define REDUCE_FLOATS (CLUSTER * TILE * (NF > NH ? NF : NH) > 3 * TILE * NF ? CLUSTER * TILE * (NF > NH ? NF : NH) : 3 * TILE * NF)
__shared__ float reduce_buffer[2][REDUCE_FLOATS];

// The matvec with the thread's weights from `load(wi, first input, column)`. Owned results land
// in this block's `out` (columns as in the matrix); Reduced and Scattered ones are returned as
// partial sums in reduce_buffer.
template <int ROWS, int IN, int OUT, Slice KIND, int PARTS, class Load>
__device__ __forceinline__ Reduced cluster_matvec(Load load, const float* x, int ld_x, float* out, int ld_out,
                                                  MatvecScratch& scratch) {
    using Layout = MatvecLayout<IN, OUT, KIND, PARTS>;
    constexpr int NB = Layout::NB, GROUPS = Layout::GROUPS, SPLITS = Layout::SPLITS, CHUNK = Layout::CHUNK;
    static_assert(ROWS <= MATVEC_ACC, "more rows than matvec accumulators");
    static_assert(SPLITS * ROWS * GROUPS * 32 <= MATVEC_SCRATCH, "matvec scratch too small");
    // What one block receives: every rank's partial sums of every output (Reduced), or of the
    // outputs it owns (Scattered).
    constexpr int RECEIVED = KIND == Slice::Reduced ? CLUSTER * ROWS * OUT : ROWS * OUT;
    static_assert(KIND == Slice::Owned || RECEIVED <= REDUCE_FLOATS, "reduce_buffer too small");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp % GROUPS, slice = warp / GROUPS, j = group * 32 + lane;
    const bool active = slice < SPLITS;
    float acc[ROWS];
#pragma unroll
    for (int a = 0; a < ROWS; ++a) acc[a] = 0.f;
    if (active && j < NB) {
        const int first = Layout::first_input(slice);
        float wi[CHUNK];
        load(wi, first, Layout::column(j));
#pragma unroll
        for (int k = 0; k < CHUNK; ++k) {
#pragma unroll
            for (int a = 0; a < ROWS; ++a) acc[a] += wi[k] * x[a * ld_x + first + Layout::offset(k)];
        }
    }
    // No cluster barrier before the sends (perf-notes v39): a block that has received all of the
    // previous exchange's partial sums sends this one's at once. That is safe because (1) its
    // bytes count on the other barrier, and land in the other half of reduce_buffer, than the
    // previous exchange's, and the next exchange's on this one's again only after every block has
    // sent this one's, i.e. has finished waiting for the previous one; (2) a kernel reads an
    // exchange's sums (Reduced) before its next matvec starts, so before its block sends into
    // the next exchange.
    const int call = KIND == Slice::Owned ? 0 : scratch.calls++;
    const u32 which = call & 1;
    if (active) {
#pragma unroll
        for (int a = 0; a < ROWS; ++a) scratch.values[(slice * ROWS + a) * (GROUPS * 32) + j] = acc[a];
    }
    __syncthreads();
    if (KIND != Slice::Owned && call == 0) cluster_ready();  // the kernel's first send (dense_kernel_start)
    const int rank = (int)cluster_rank();
    float* received = reduce_buffer[which];
    for (int e = threadIdx.x; e < ROWS * NB; e += blockDim.x) {
        const int a = e / NB, o = e % NB;
        float total = 0.f;
        for (int k = 0; k < SPLITS; ++k) total += scratch.values[(k * ROWS + a) * (GROUPS * 32) + o];  // fixed order
        if constexpr (KIND == Slice::Owned) {
            out[a * ld_out + Layout::column(o)] = total;
        } else if constexpr (KIND == Slice::Reduced) {
#pragma unroll
            for (u32 r = 0; r < CLUSTER; ++r) send_to_block(&received[(rank * ROWS + a) * OUT + o], r, which, total);
        } else {
            constexpr int PER = OUT / CLUSTER;
            send_to_block(&received[(rank * ROWS + a) * PER + o % PER], o / PER, which, total);
        }
    }
    if constexpr (KIND == Slice::Owned) {
        __syncthreads();
        return Reduced{out, 0, ld_out, 0};
    } else {
        // Arriving after the sums, the wait is also the block barrier that keeps the next
        // matvec's partial sums out of scratch until every thread has read this one's.
        matvec_wait(which, matvec_arrive(which, RECEIVED * sizeof(float)));
#ifdef KERNEL_CHECKS
        // Tests (MDRUN_KERNEL_CHECKS=1): after each exchange one block of every cluster more than
        // the last lingers (a different one each time, 0–2(CLUSTER−1) µs), so that the others run
        // ahead and send into the next exchange while it has yet to read this one's sums: a
        // kernel that broke the rule above would compute wrong values.
        __nanosleep(2000u * ((cluster_rank() + scratch.calls) % CLUSTER));
#endif
        if constexpr (KIND == Slice::Reduced) return Reduced{received, ROWS * OUT, OUT, 0};
        else return Reduced{received, ROWS * (OUT / CLUSTER), OUT / CLUSTER, rank * (OUT / CLUSTER)};
    }
}

// A matvec's weights for this thread. Constructed before a kernel's wait for the previous one
// (weights only: no kernel of the step writes them) where MatvecLayout::HELD, so that their L2
// latency passes during the wait (perf-notes v46); otherwise only the pointer, and the matvec
// loads where it runs.
template <int IN, int OUT, Slice KIND, int PARTS = 1, bool HELD = MatvecLayout<IN, OUT, KIND, PARTS>::HELD>
struct MatvecWeights {
    using Layout = MatvecLayout<IN, OUT, KIND, PARTS>;
    float w[Layout::CHUNK];
    __device__ explicit MatvecWeights(const float* __restrict__ m) {
        const int warp = threadIdx.x >> 5, slice = warp / Layout::GROUPS;
        const int j = (warp % Layout::GROUPS) * 32 + (threadIdx.x & 31);
        const bool used = m != nullptr && slice < Layout::SPLITS && j < Layout::NB;
        const float* col = m + (used ? Layout::first_input(slice) * OUT + Layout::column(j) : 0);
#pragma unroll
        for (int k = 0; k < Layout::CHUNK; ++k) w[k] = used ? col[Layout::offset(k) * OUT] : 0.f;
    }
};

template <int IN, int OUT, Slice KIND, int PARTS>
struct MatvecWeights<IN, OUT, KIND, PARTS, false> {
    const float* m;
    __device__ explicit MatvecWeights(const float* __restrict__ m) : m(m) {}
};

template <int ROWS, int IN, int OUT, Slice KIND, int PARTS>
__device__ __forceinline__ Reduced dense_matvec(const MatvecWeights<IN, OUT, KIND, PARTS, true>& weights,
                                                const float* x, int ld_x, float* out, int ld_out,
                                                MatvecScratch& scratch) {
    return cluster_matvec<ROWS, IN, OUT, KIND, PARTS>(
        [&](float (&wi)[MatvecLayout<IN, OUT, KIND, PARTS>::CHUNK], int, int) {
#pragma unroll
            for (int k = 0; k < MatvecLayout<IN, OUT, KIND, PARTS>::CHUNK; ++k) wi[k] = weights.w[k];
        },
        x, ld_x, out, ld_out, scratch);
}

template <int ROWS, int IN, int OUT, Slice KIND, int PARTS>
__device__ __forceinline__ Reduced dense_matvec(const MatvecWeights<IN, OUT, KIND, PARTS, false>& weights,
                                                const float* x, int ld_x, float* out, int ld_out,
                                                MatvecScratch& scratch) {
    using Layout = MatvecLayout<IN, OUT, KIND, PARTS>;
    const float* __restrict__ m = weights.m;
    // All of the slice's weights first, then the products: loads interleaved with products go
    // out in a second round once the first product has waited for its weight.
    return cluster_matvec<ROWS, IN, OUT, KIND, PARTS>(
        [&](float (&wi)[Layout::CHUNK], int first, int column) {
#pragma unroll
            for (int k = 0; k < Layout::CHUNK; ++k) wi[k] = m[(first + Layout::offset(k)) * OUT + column];
        },
        x, ld_x, out, ld_out, scratch);
}
#endif

// A kind's weights argument: a MatvecWeights of that kind, or the matrix (loaded where it runs).
template <int IN, int OUT, Slice KIND, int PARTS>
struct MatvecArg {
    __device__ static MatvecWeights<IN, OUT, KIND, PARTS, false> of(const float* m) {
        return MatvecWeights<IN, OUT, KIND, PARTS, false>(m);
    }
    template <bool HELD>
    __device__ static const MatvecWeights<IN, OUT, KIND, PARTS, HELD>& of(const MatvecWeights<IN, OUT, KIND, PARTS, HELD>& w) {
        return w;
    }
};

// The kernels' matvecs, by kind (Slice), with clusters and without. `weights` is a MatvecWeights
// or a pointer to the matrix. Owned: this block's outputs into `out`. Reduced: every output, as
// sums to read through the returned Reduced before the kernel's next matvec. Scattered: the
// outputs this block owns, the same way. Every thread of the block must call them; each ends
// with a barrier.
template <int ROWS, int IN, int OUT, int PARTS = 1, class Weights>
__device__ __forceinline__ void owned_matvec(const Weights& weights, const float* x, int ld_x, float* out, int ld_out,
                                             MatvecScratch& scratch) {
    dense_matvec<ROWS>(MatvecArg<IN, OUT, Slice::Owned, PARTS>::of(weights), x, ld_x, out, ld_out, scratch);
}

template <int ROWS, int IN, int OUT, int PARTS = 1, class Weights>
__device__ __forceinline__ Reduced reduced_matvec(const Weights& weights, const float* x, int ld_x, float* out,
                                                  int ld_out, MatvecScratch& scratch) {
    return dense_matvec<ROWS>(MatvecArg<IN, OUT, Slice::Reduced, PARTS>::of(weights), x, ld_x, out, ld_out, scratch);
}

template <int ROWS, int IN, int OUT, int PARTS = 1, class Weights>
__device__ __forceinline__ Reduced scattered_matvec(const Weights& weights, const float* x, int ld_x, float* out,
                                                    int ld_out, MatvecScratch& scratch) {
    return dense_matvec<ROWS>(MatvecArg<IN, OUT, Slice::Scattered, PARTS>::of(weights), x, ld_x, out, ld_out, scratch);
}

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
