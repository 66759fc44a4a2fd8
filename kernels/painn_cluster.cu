// The whole PaiNN force evaluation of a small open system (N ≤ NMAX atoms) in one launch: one
// thread-block cluster of SCL blocks, phases chained by transaction barriers instead of kernel
// boundaries (the multi-kernel path pays ~1 µs per kernel and per dependent weight load, which
// dominates below ~50 atoms; docs/perf-notes.md, v10 and v12). Same math as painn.cu, same f64
// reference.
//
// Work split: block `rank` owns the feature channels c ∈ [rank·CB, (rank + 1)·CB). Everything
// element-wise per channel (messages, gates, their gradients) is done by the owner alone, on its
// own channels, for all atoms. A dense layer's outputs are computed by their owners, each reading
// its slice of the weights from L2, and pushed into every block's shared memory (distributed shared
// memory) when the next dense layer needs all channels. Activations the backward pass needs are
// written to the same global buffers as the multi-kernel path (DeviceModel), by their owners.
//
// Pairs: all j ≠ i within the cutoff, from the positions (open boundaries: no images), so this path
// needs no neighbor list. Sums run in a fixed order: results are deterministic.

#ifndef SCL
#define SCL 16
#endif
#ifndef NMAX
#define NMAX 16
#endif
#define CB (NF / SCL)  // channels owned by one block
#define HB (NH / SCL)  // readout hidden units owned by one block
#define STHREADS 512
#define TMAX 3         // interactions whose activations fit in shared memory
#define RB 16          // rows of X per matvec pass (accumulators per thread)
#define PSPLIT (STHREADS / (CB * NMAX))  // threads sharing one (atom, channel) pair loop

// Built where the path applies (src/gpu/cluster.rs, `unsupported`): Hopper or newer, and widths
// whose per-block share (F / SCL, H / SCL) divides a warp. Elsewhere the kernel does not exist.
#if __CUDA_ARCH__ >= 900 && NF % SCL == 0 && NH % SCL == 0 && 32 % (NF / SCL) == 0 && 32 % (NH / SCL) == 0 && \
    NMAX <= 32

struct ClusterLayer {
    // forward (Wᵀ, [in, out]) and backward (W, [out, in]) weights, biases
    const float *c1t, *c1, *c1b;  // interatomic context net 0: F → F
    const float *c2t, *c2, *c2b;  // interatomic context net 1: F → 3F
    const float *mixt, *mix;      // mu_channel_mix: F → 2F, no bias
    const float *m1t, *m1, *m1b;  // intraatomic context net 0: 2F → F
    const float *m2t, *m2, *m2b;  // intraatomic context net 1: F → 3F
    int filter_offset, pad;
};

// What the backward pass needs of one interaction, owned channels only (kept in shared memory:
// no global-memory round trip on the critical path).
struct LayerCache {
    float x[NMAX][3][CB];       // context output (x_s, x_r, x_v)
    float mu_in[NMAX][3][CB];   // μ entering the interaction
    float vu[NMAX * 3][2][CB];  // V, U per (atom, k)
    float norm[NMAX][CB];
    float pre_mix[NMAX][CB];
    float a[NMAX][3][CB];       // a_ss, a_vv, a_sv
    float pre_ctx[NMAX][CB];
};

#define NPHASE (10 * TMAX)  // mbarrier-separated phases of one evaluation (28 for 3 layers)

// Rows of OwnedParams::bias per interaction.
enum BiasRow { BIAS_C1 = 0, BIAS_C2 = 1, BIAS_M1 = 4, BIAS_M2 = 5, BIAS_ROWS = 8 };

// The model parameters one block reads outside its matvecs: its channels' filter rows and
// biases, its readout units, the radial basis. Gathered once per model (`painn_cluster_pack`)
// into one record per block, so that an evaluation copies them in one round of 16-byte loads:
// gathered in the evaluation they were chains of dependent loads (the layer's pointers, then the
// values), and read in the matvec epilogues they put an L2 round trip after a wait (perf-notes v27).
struct alignas(16) OwnedParams {
    float filter_w[TMAX][3][CB][NK];  // filter rows (s, R, v) of the owned channels
    float filter_b[TMAX][3][CB];
    float bias[TMAX][BIAS_ROWS][CB];  // c1, c2 (s, R, v), m1, m2 (s, R, v)
    float ro_b1[HB], ro_w2[HB];       // readout hidden layer: owned units' biases and output weights
    float rbf_offset[NK], rbf_coeff[NK];
};
static_assert(sizeof(OwnedParams) % 16 == 0, "copied 16 bytes at a time");

struct ClusterShared {
    u64 phase_bar[NPHASE];          // one transaction barrier per phase, each used once per launch
    // Positions, velocities and thermostat heat of every atom: at the start of the MD step, after
    // the first half once it has run (in every block).
    double spos[NMAX * 3], svel[NMAX * 3], sheat[NMAX];
#ifdef KERNEL_CHECKS
    u32 planned[NPHASE], sent[NPHASE];  // bytes the plan expects per phase; this block's sends
    int planned_phases;
#endif
    float4 pr[NMAX][NMAX];          // pair (i, slot): r (Å) and d
    float2 pcut[NMAX][NMAX];        // its cosine cutoff and the cutoff's derivative
    float4 pg[NMAX][NMAX];          // this block's (∂E/∂d, ∂E/∂r̂) per pair, its channels, all layers
    alignas(16) float pphi[NMAX][NMAX][NK];   // radial basis per pair
    alignas(16) float pdphi[NMAX][NMAX][NK];  // its derivative in d (Å⁻¹), for the backward pass
    int pj[NMAX][NMAX], prev[NMAX][NMAX], pcount[NMAX];
    // replicated (every channel, pushed by the owners)
    alignas(16) float ctx[NMAX][2 * NF];      // q | ‖V‖
    alignas(16) float mu[NMAX * 3][NF];       // μ, rows (atom, Cartesian k)
    alignas(16) float hid[NMAX][NF];          // hidden layer / its gradient
    alignas(16) float gh[NMAX][NH];           // readout: ∂E/∂hidden
    alignas(16) float g3[NMAX][3 * NF];       // ∂E/∂a (mixing) or ∂E/∂x (context)
    union {                           // never live at the same time
        alignas(16) float gvu[NMAX * 3][2 * NF];      // ∂E/∂(V, U), mixing backward
        float4 pstage[NMAX][NMAX][CB];    // per-channel pair gradients before the channel sum
    };
    // owned channels only
    LayerCache cache[TMAX];
    OwnedParams own;
    float vdotu[NMAX][CB];
    float gq[2][NMAX][CB];
    float gm[NMAX][3][CB];
    float ep[NMAX][HB];
    float scratch[STHREADS / 32 * CB * RB];  // matvec: per warp, its columns' partial sums
};

extern "C" __global__ void painn_cluster_shared_bytes(int* out) {
    out[0] = (int)sizeof(ClusterShared);
    out[1] = (int)sizeof(OwnedParams);
}

// Channel jc's filter rows (s, R, v) of one interaction, held in registers through a pair loop:
// read from shared memory per pair they were most of the message phases' shared-memory loads
// (perf-notes v27).
__device__ __forceinline__ ChannelFilter owned_filter(const ClusterShared& S, int layer, int jc) {
    ChannelFilter w;
    w.load_shared(S.own.filter_w[layer][0][jc], S.own.filter_w[layer][1][jc], S.own.filter_w[layer][2][jc],
                  make_float3(S.own.filter_b[layer][0][jc], S.own.filter_b[layer][1][jc], S.own.filter_b[layer][2][jc]));
    return w;
}

namespace cl {

// Phases are chained by transaction barriers (common.cuh) instead of cluster barriers: each
// block's barrier of phase p expects the bytes that all blocks send it in phase p, and completes
// when the last of them lands. No release fence drains the sender's stores and no block waits for
// the slowest one to arrive (a cluster barrier cost ≈ 0.7 µs + 0.8 µs of store drain per phase:
// docs/perf-notes.md, v10 and v12).
__device__ __forceinline__ void phase_init(u64* bar, u32 bytes) {
    barrier_init(bar, 1);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
                 : "memory");
}

// Waits until every byte of the phase has arrived (CTA-scope acquire: common.cuh says why).
__device__ __forceinline__ void phase_wait(u64* bar) {
    const u32 address = shared_address(bar);
    wait_or_trap([&] {
        u32 done;
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], 0; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(address)
            : "memory");
        return done != 0;
    });
}

// Stores `v` at the place of `local` in every block of the cluster (this one included) and
// counts its 4 bytes on that block's barrier `bar`.
__device__ __forceinline__ void send(float* local, float v, u64* bar) {
    const u32 address = shared_address(local), bar_address = shared_address(bar);
#pragma unroll
    for (u32 r = 0; r < SCL; ++r) store_counted(remote_address(address, r), v, remote_address(bar_address, r));
}

__device__ __forceinline__ float4 load_remote(const float4* local, u32 r) {
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(remote_address(local, r))
                 : "memory");
    return v;
}

__device__ __forceinline__ float load_remote(const float* local, u32 r) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote_address(local, r)) : "memory");
    return v;
}

// Y = X · M on this block's output columns, with every size known at compile time (no guards in
// the inner loops): M row-major [K, MB·B] in global memory, X in shared memory (row stride ld).
// The block owns columns {b·B + rank·BC + j : b < MB, j < BC}. Threads: j in the lowest bits (a
// warp's weight loads are contiguous), then the split of the k loop into KS contiguous runs of W
// (vector loads of X), then RG groups of rows, then the block b.
// The k loop is split only until each thread has CLUSTER_MATVEC_W products per row (-D from the
// host, KernelSizes; 0: as far as the threads allow, the layout before perf-notes v25); threads
// left over take a share of the rows instead. A deep split costs a shuffle round and cross-warp partials per row for a few
// products each (v25).
template <int K, int MB, int B, int BC>
struct Matvec {
    static_assert(32 % BC == 0, "columns per block must divide a warp");
    static constexpr int KPW = 32 / BC;  // k-splits per warp
    __host__ __device__ static constexpr int pow2_floor(int v) { return v >= 64 ? 64 : v >= 32 ? 32 : v >= 16 ? 16 : v >= 8 ? 8 : v >= 4 ? 4 : v >= 2 ? 2 : 1; }
    static constexpr int KS_THREADS = pow2_floor(STHREADS / (BC * MB));  // k-splits the threads allow
    static constexpr int KS_PRODUCTS = CLUSTER_MATVEC_W > 0 ? pow2_floor(K / CLUSTER_MATVEC_W) : 64;
    static constexpr int KS_CAPPED = KS_PRODUCTS < KS_THREADS ? KS_PRODUCTS : KS_THREADS;
    static constexpr int KS = KS_CAPPED < KPW ? KPW : KS_CAPPED;
    static constexpr int W = (K + KS - 1) / KS;  // k values per thread
    static constexpr int WPB = KS / KPW;         // warps per (row group, output block b)
    static constexpr int RG_THREADS = pow2_floor(STHREADS / (BC * KS * MB));
    static constexpr int RG = RG_THREADS < RB ? RG_THREADS : RB;  // row groups
    static constexpr int RPT = RB / RG;                             // rows per thread and pass
    static_assert(RB % RG == 0, "whole rows per group");
    static_assert(BC * KS * RG * MB <= STHREADS, "one pass of threads");

    int j, ks, g, b, col;
    bool active;
    float w[W];  // this thread's weights, loaded ahead (prefetch) so that their latency overlaps

    __device__ __forceinline__ Matvec(const float* __restrict__ M) {
        int t = threadIdx.x;
        j = t % BC;
        ks = (t / BC) % KS;
        g = (t / (BC * KS)) % RG;
        b = t / (BC * KS * RG);
        active = b < MB;
        col = b * B + (int)cluster_rank() * BC + j;
#pragma unroll
        for (int u = 0; u < W; ++u) {
            int i = ks * W + u;
            w[u] = active && (K % KS == 0 || i < K) ? M[(size_t)i * MB * B + col] : 0.f;
        }
    }

    // The `rows` rows of X, RB at a time (rows past `rows` are computed and dropped: X has room);
    // partial sums reduced by warp shuffles, then across warps in a fixed order; epi(row, b, j, v)
    // gets every owned output once. Ends with a block barrier (not a cluster one).
    template <class Epi>
    __device__ __forceinline__ void run(const float* X, int ld, int rows, float* scratch, Epi epi) const {
        const int t = threadIdx.x;
        for (int r0 = 0; r0 < rows; r0 += RB) {
            float acc[RPT];
#pragma unroll
            for (int rr = 0; rr < RPT; ++rr) {
                const float* x = X + (r0 + g * RPT + rr) * ld + ks * W;
                float sum = 0.f;
                if constexpr (K % KS == 0 && W % 4 == 0) {  // vector loads need whole runs
#pragma unroll
                    for (int u = 0; u < W; u += 4) {
                        float4 v = *reinterpret_cast<const float4*>(x + u);
                        sum += w[u] * v.x + w[u + 1] * v.y + w[u + 2] * v.z + w[u + 3] * v.w;
                    }
                } else if constexpr (K % KS == 0 && W % 2 == 0) {
#pragma unroll
                    for (int u = 0; u < W; u += 2) {
                        float2 v = *reinterpret_cast<const float2*>(x + u);
                        sum += w[u] * v.x + w[u + 1] * v.y;
                    }
                } else {
#pragma unroll
                    for (int u = 0; u < W; ++u) sum += (K % KS == 0 || ks * W + u < K) ? w[u] * x[u] : 0.f;
                }
                acc[rr] = sum;
            }
#pragma unroll
            for (int offset = BC; offset < 32; offset <<= 1) {
#pragma unroll
                for (int rr = 0; rr < RPT; ++rr) acc[rr] += __shfl_xor_sync(0xffffffffu, acc[rr], offset);
            }
            if (active && (t & 31) < BC) {
#pragma unroll
                for (int rr = 0; rr < RPT; ++rr)
                    scratch[((b * WPB + ks / KPW) * RB + g * RPT + rr) * BC + j] = acc[rr];
            }
            __syncthreads();
            // Channel-fastest: a warp's epilogue stores (local or to every block) are contiguous.
            for (int o = t; o < MB * BC * RB; o += STHREADS) {
                int jj = o % BC, r = (o / BC) % RB, bb = o / (RB * BC);
                if (r0 + r >= rows) continue;
                float total = 0.f;
#pragma unroll
                for (int w2 = 0; w2 < WPB; ++w2) total += scratch[((bb * WPB + w2) * RB + r) * BC + jj];
                epi(r0 + r, bb, jj, total);
            }
            __syncthreads();
        }
    }
};

}  // namespace cl

// Gathers each block's OwnedParams (block `rank` of the grid writes out[rank]); run once per
// model, SCL blocks.
extern "C" __global__ void painn_cluster_pack(const ClusterLayer* __restrict__ layers, int t_count, Filter filter,
                                              Readout ro, OwnedParams* __restrict__ out) {
    OwnedParams& P = out[blockIdx.x];
    const int c0 = (int)blockIdx.x * CB;
    for (int k = threadIdx.x; k < t_count * 3 * CB * NK; k += blockDim.x) {
        int l = k / (3 * CB * NK), g = (k / (CB * NK)) % 3, j = (k / NK) % CB, kk = k % NK;
        int row = layers[l].filter_offset + g * NF + c0 + j;
        P.filter_w[l][g][j][kk] = filter.weight[(size_t)row * NK + kk];
        if (kk == 0) P.filter_b[l][g][j] = filter.bias[row];
    }
    for (int k = threadIdx.x; k < t_count * BIAS_ROWS * CB; k += blockDim.x) {
        const int l = k / (BIAS_ROWS * CB), row = (k / CB) % BIAS_ROWS, j = k % CB;
        const ClusterLayer& L = layers[l];
        const float* b = row == BIAS_C1   ? L.c1b
                         : row < BIAS_M1  ? L.c2b + (row - BIAS_C2) * NF
                         : row == BIAS_M1 ? L.m1b
                                          : L.m2b + (row - BIAS_M2) * NF;
        P.bias[l][row][j] = b[c0 + j];
    }
    for (int k = threadIdx.x; k < HB; k += blockDim.x) {
        P.ro_b1[k] = ro.b1[(int)blockIdx.x * HB + k];
        P.ro_w2[k] = ro.w2[(int)blockIdx.x * HB + k];
    }
    for (int k = threadIdx.x; k < NK; k += blockDim.x) {
        P.rbf_offset[k] = filter.offsets[k];
        P.rbf_coeff[k] = filter.coeffs[k];
    }
}

// The MD step fused into the evaluation (perf-notes v28): with `integrate` set, a launch is one
// whole velocity-Verlet or BAOAB step. Every block runs the first half of every atom itself (the
// same arithmetic on the same values: identical positions for its pair search, no cluster
// barrier), evaluates the forces, and the block that owns atom a (a ≡ rank mod SCL, the thread
// that computes its force) applies the closing half kick and writes the state back. The same
// integrator functions as first_half/second_half (integrate.cu): the same trajectory as the
// three launches per step. Without `integrate`: one evaluation at `pos`.
struct ClusterMd {
    Integration in;
    double* vel;
    u64* step_counter;  // steps done so far; the launch takes step *step_counter + 1
    int integrate;
};

#define TRACE_MARKS 128  // MDRUN_CLUSTER_TRACE: time stamps kept (src/gpu/cluster.rs)

// Forces and per-atom energies of `n` atoms (open boundaries): launched as one cluster of SCL
// blocks of STHREADS threads, with sizeof(ClusterShared) bytes of dynamic shared memory. `q0` and
// `x0` are the embedding and the first context network's output (setup kernel `embed`). With
// md.integrate, `forces` is also an input (the forces at the start of the step, for the first
// half), and `pos`, md.vel, the heat and the step counter are advanced in place.
extern "C" __global__ void __cluster_dims__(SCL, 1, 1) __launch_bounds__(STHREADS, 1)
    painn_cluster(const ClusterLayer* __restrict__ layers, int t_count, Filter filter, Readout ro,
                  double* __restrict__ pos, const float* __restrict__ q0, const float* __restrict__ x0,
                  const OwnedParams* __restrict__ owned, float* __restrict__ forces, float* __restrict__ atom_energy,
                  int n, float epsilon, ClusterMd md, unsigned long long* __restrict__ trace) {
    extern __shared__ float4 shared_raw[];
    ClusterShared& S = *reinterpret_cast<ClusterShared*>(shared_raw);
    // Optional timeline (MDRUN_CLUSTER_TRACE): block 0's clock (ns) at the start of each phase.
    int mark = 0;
    auto stamp = [&]() {
        if (trace != nullptr && mark < TRACE_MARKS && threadIdx.x == 0 && cluster_rank() == 0) {
            unsigned long long now;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
            trace[mark] = now;
        }
        ++mark;
    };
    stamp();
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int c0 = (int)cluster_rank() * CB;
    const float cutoff = filter.cutoff, cutoff2 = cutoff * cutoff;

    // This block's parameters (painn_cluster_pack), in the same round of loads as the inputs and
    // the positions.
    for (int k = t; k < (int)(sizeof(OwnedParams) / 16); k += STHREADS)
        reinterpret_cast<float4*>(&S.own)[k] = reinterpret_cast<const float4*>(owned + cluster_rank())[k];
    for (int k = t; k < NMAX * 3 * CB; k += STHREADS) {
        int a = k / (3 * CB), m = (k / CB) % 3, j = k % CB;
        S.cache[0].x[a][m][j] = a < n ? x0[a * 3 * NF + m * NF + c0 + j] : 0.f;
    }
    // The phase plan: the bytes every block receives in each phase, in the order the phases run
    // below (each send() reaches all SCL blocks, so a block receives what the cluster sends).
    // Every lane of warp 0 walks the plan and initializes the barriers p ≡ lane (mod 32): one
    // thread initializing all of them was a chain of ~60 barrier operations.
    if (warp == 0) {
        int p = 0;
        const u32 f = 4u * (u32)(n * NF);  // one float per (atom, channel)
        auto plan = [&](u32 bytes) {
            if (p % 32 == lane) {
#ifdef KERNEL_CHECKS
                S.planned[p] = bytes;
#endif
                cl::phase_init(&S.phase_bar[p], bytes);
            }
            ++p;
        };
        for (int l = 0; l < t_count; ++l) {
            plan(4 * f);          // messages: q and μ
            plan(f);              // mixing: ‖V‖
            plan(f);              // mixing network's hidden layer
            plan(4 * f);          // gated update: q and μ
            if (l + 1 < t_count)  // next context network's hidden layer
                plan(f);
        }
        plan(4u * (u32)(n * NH));  // readout: ∂E/∂hidden
        for (int l = t_count - 1; l >= 0; --l) {
            plan(3 * f);  // ∂E/∂a
            plan(f);      // mixing network: ∂E/∂hidden
            plan(6 * f);  // ∂E/∂(V, U)
            if (l == 0) break;
            plan(3 * f);  // messages: ∂E/∂x
            plan(f);      // context network: ∂E/∂hidden
        }
#ifdef KERNEL_CHECKS
        if (lane == 0) S.planned_phases = p;
#endif
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    // Layer-0 inputs: q = embedding, μ = 0 (x, from the setup kernel, was loaded above), and the
    // rows past n that enter matvecs at zero.
    for (int k = t; k < NMAX * NF; k += STHREADS) {
        int a = k / NF, c = k % NF;
        S.ctx[a][c] = a < n ? q0[a * NF + c] : 0.f;
        S.ctx[a][NF + c] = 0.f;
        S.hid[a][c] = 0.f;
        for (int m = 0; m < 3; ++m) {
            S.mu[a * 3 + m][c] = 0.f;
            S.g3[a][m * NF + c] = 0.f;
            S.gvu[a * 3 + m][c] = S.gvu[a * 3 + m][NF + c] = 0.f;
        }
    }
    for (int k = t; k < NMAX * NH; k += STHREADS) S.gh[k / NH][k % NH] = 0.f;
    // The step being taken, when this launch integrates: every block reads the counter before
    // block 0 advances it, after the last cluster barrier.
    const u64 md_step = md.integrate ? *md.step_counter + 1 : 0;
    // The state at the start of the step, every atom in every block; with `integrate` each
    // block runs the first half of every atom itself (ClusterMd says why).
    for (int k = t; k < 3 * n; k += STHREADS) {
        S.spos[k] = pos[k];
        if (md.integrate) S.svel[k] = md.vel[k];
    }
    if (md.integrate)
        for (int k = t; k < n; k += STHREADS) S.sheat[k] = md.in.heat[k];
    for (int k = t; k < NMAX * NMAX; k += STHREADS) S.pg[k / NMAX][k % NMAX] = make_float4(0.f, 0.f, 0.f, 0.f);
#ifdef KERNEL_CHECKS
    for (int p = t; p < NPHASE; p += STHREADS) S.sent[p] = 0;
#endif
    __syncthreads();
    if (md.integrate && t < n) first_half_atom(t, S.spos, S.svel, S.sheat, forces, md.in, md_step);
    __syncthreads();
    // Pair geometry (every block the same): warp per receiving atom, lane per candidate; the
    // radial basis and its derivative once per pair, shared by every channel of both passes.
    const OwnedParams& rbf = S.own;
    for (int i = warp; i < NMAX; i += STHREADS / 32) {
        bool inside = false;
        float3 r = make_float3(0.f, 0.f, 0.f);
        float d2 = 0.f;
        if (i < n && lane < n && lane != i) {
            const double* p = S.spos;
            r = make_float3((float)(p[3 * lane] - p[3 * i]), (float)(p[3 * lane + 1] - p[3 * i + 1]),
                            (float)(p[3 * lane + 2] - p[3 * i + 2]));
            d2 = r.x * r.x + r.y * r.y + r.z * r.z;
            inside = d2 < cutoff2;
        }
        u32 ballot = __ballot_sync(0xffffffffu, inside);
        if (lane == 0) S.pcount[i] = __popc(ballot);
        if (inside) {
            int s = __popc(ballot & ((1u << lane) - 1u));
            float d = sqrtf(d2);
            S.pj[i][s] = lane;
            S.pr[i][s] = make_float4(r.x, r.y, r.z, d);
            float fc, dfc;
            cosine_cutoff(d, cutoff, cosine_cutoff_slope(cutoff), fc, dfc);
            S.pcut[i][s] = make_float2(fc, dfc);
#pragma unroll
            for (int k = 0; k < NK; ++k) {
                const float phi = rbf_gaussian(d, rbf.rbf_offset[k], rbf.rbf_coeff[k]);
                S.pphi[i][s][k] = phi;
                S.pdphi[i][s][k] = rbf_derivative(d, phi, rbf.rbf_coeff[k], rbf.rbf_offset[k]);
            }
        }
    }
    __syncthreads();
    for (int k = t; k < NMAX * NMAX; k += STHREADS) {
        int i = k / NMAX, s = k % NMAX;
        if (i < n && s < S.pcount[i]) {
            int j = S.pj[i][s];
            for (int s2 = 0; s2 < S.pcount[j]; ++s2)
                if (S.pj[j][s2] == i) S.prev[i][s] = s2;
        }
    }
    // Every block has started and initialized its shared memory and its barriers before anyone
    // writes into it.
    cluster_sync();
    stamp();
    int phase = 0;
    // Sends `v` to every block as part of the current phase.
    auto put = [&](float* local, float v) {
#ifdef KERNEL_CHECKS
        atomicAdd(&S.sent[phase], 1u);
#endif
        cl::send(local, v, &S.phase_bar[phase]);
    };
    // The next phase starts when this block has received all of the current phase's data.
    // KERNEL_CHECKS (tests): every block sends the same number of values in a phase, so what this
    // block sent, times the SCL receivers, must be what the plan has every block expect.
    auto next_phase = [&]() {
#ifdef KERNEL_CHECKS
        __syncthreads();
        if (t == 0 && (phase >= S.planned_phases || S.sent[phase] * 4u * SCL != S.planned[phase])) __trap();
#endif
        cl::phase_wait(&S.phase_bar[phase++]);
        __syncthreads();
        stamp();
    };

    // Thread roles in the channel-local phases: PSPLIT threads per (atom, owned channel). The
    // item's values are sent by all of its threads, a share each: one sender per item left 3 of
    // 4 lanes of every st.async idle, and a phase's cost follows its st.async instructions
    // (perf-notes v27).
    const int ps = t % PSPLIT, jc = (t / PSPLIT) % CB, ia = t / (PSPLIT * CB);
    static_assert(PSPLIT >= 1 && PSPLIT <= 32 && (PSPLIT & (PSPLIT - 1)) == 0, "whole (atom, channel) groups per warp");
    const bool item = ia < n;
    const int c = c0 + jc;

    // Matvec epilogues shared by the interaction and mixing networks. A hidden layer: z = v + b
    // kept for the backward pass, σ(z) to every block. Its gradient: σ'(z) ⊙ v to every block.
    auto hidden_layer = [&](const float* bias, float (*pre)[CB]) {
        return [&, bias, pre](int a, int, int j, float v) {
            float z = v + bias[j];
            pre[a][j] = z;
            put(&S.hid[a][c0 + j], silu(z));
        };
    };
    auto hidden_gradient = [&](float (*pre)[CB]) {
        return [&, pre](int a, int, int j, float v) { put(&S.hid[a][c0 + j], v * silu_grad(pre[a][j])); };
    };

    // ---------------------------------------------------------------------------------------
    // Forward
    for (int layer = 0; layer < t_count; ++layer) {
        const ClusterLayer& L = layers[layer];
        LayerCache& C = S.cache[layer];
        cl::Matvec<NF, 2, NF, CB> w_mix(L.mixt);
        // Messages (channel-local): q += Σ_j φ_s x_j; μ += Σ_j (φ_r x_j r̂ + φ_v x_j μ_j).
        float dq = 0.f, dm[3] = {0.f, 0.f, 0.f};
        if (item) {
            const ChannelFilter w = owned_filter(S, layer, jc);
            for (int s = ps; s < S.pcount[ia]; s += PSPLIT) {
                // add_message takes (r, 1/d); this kernel's pair table keeps d (its backward and
                // pair forces read it).
                const float4 rd = S.pr[ia][s];
                const float4 r = make_float4(rd.x, rd.y, rd.z, 1.0f / rd.w);
                int j = S.pj[ia][s];
                const float fc = S.pcut[ia][s].x;
                float phi[NK];
                load_row(phi, S.pphi[ia][s]);
                float3 f = filter_at(w.ws, w.wr, w.wv, w.bias(), phi);
                add_message(f, fc, r, C.x[j][0][jc], C.x[j][1][jc], C.x[j][2][jc], S.mu[j * 3][c], S.mu[j * 3 + 1][c],
                            S.mu[j * 3 + 2][c], dq, dm);
            }
        }
#pragma unroll
        for (int offset = 1; offset < PSPLIT; offset <<= 1) {
            dq += __shfl_xor_sync(0xffffffffu, dq, offset);
            for (int k = 0; k < 3; ++k) dm[k] += __shfl_xor_sync(0xffffffffu, dm[k], offset);
        }
        __syncthreads();  // every read of this block's channels done before they are updated
        if (item) {
            // The item's PSPLIT threads all hold the sums; each sends a share of the 4 values.
            for (int v = ps; v < 4; v += PSPLIT) {
                if (v == 0) {
                    put(&S.ctx[ia][c], S.ctx[ia][c] + dq);
                    continue;
                }
                const int k = v - 1;
                float mu = S.mu[ia * 3 + k][c];
                C.mu_in[ia][k][jc] = mu;
                put(&S.mu[ia * 3 + k][c], mu + (k == 0 ? dm[0] : k == 1 ? dm[1] : dm[2]));
            }
        }
        next_phase();

        // Mixing: (V, U) = μ · mixᵀ on owned channels; ‖V‖ to every block.
        w_mix.run(&S.mu[0][0], NF, 3 * n, S.scratch,
                       [&](int row, int b, int j, float v) { C.vu[row][b][j] = v; });
        if (item && ps == 0) {
            float norm2 = 0.f, vdotu = 0.f;
            for (int k = 0; k < 3; ++k) {
                float V = C.vu[ia * 3 + k][0][jc], U = C.vu[ia * 3 + k][1][jc];
                norm2 += V * V;
                vdotu += V * U;
            }
            float norm = sqrtf(norm2 + epsilon);
            C.norm[ia][jc] = norm;
            S.vdotu[ia][jc] = vdotu;
            put(&S.ctx[ia][NF + c], norm);
        }
        cl::Matvec<2 * NF, 1, NF, CB> w_m1(L.m1t);
        next_phase();
        // hidden = σ(W1 [q, ‖V‖] + b1)
        w_m1.run(&S.ctx[0][0], 2 * NF, n, S.scratch, hidden_layer(S.own.bias[layer][BIAS_M1], C.pre_mix));
        cl::Matvec<NF, 3, NF, CB> w_m2(L.m2t);
        next_phase();
        // (a_ss, a_vv, a_sv) = W2 hidden + b2, then the gated update, owned channels.
        w_m2.run(&S.hid[0][0], NF, n, S.scratch,
                       [&](int a, int b, int j, float v) { C.a[a][b][j] = v + S.own.bias[layer][BIAS_M2 + b][j]; });
        if (item) {
            float a_ss = C.a[ia][0][jc], a_vv = C.a[ia][1][jc], a_sv = C.a[ia][2][jc];
            for (int v = ps; v < 4; v += PSPLIT) {  // a share of the values per thread of the item
                if (v == 0) {
                    put(&S.ctx[ia][c], S.ctx[ia][c] + a_ss + a_sv * S.vdotu[ia][jc]);
                    continue;
                }
                const int k = v - 1;
                put(&S.mu[ia * 3 + k][c], S.mu[ia * 3 + k][c] + a_vv * C.vu[ia * 3 + k][1][jc]);
            }
        }
        if (layer + 1 < t_count) {
            // The next interaction's context network: x = W2 σ(W1 q + b1) + b2.
            const ClusterLayer& nl = layers[layer + 1];
            LayerCache& NC = S.cache[layer + 1];
            cl::Matvec<NF, 1, NF, CB> w_c1(nl.c1t);
            next_phase();
            w_c1.run(&S.ctx[0][0], 2 * NF, n, S.scratch, hidden_layer(S.own.bias[layer + 1][BIAS_C1], NC.pre_ctx));
            cl::Matvec<NF, 3, NF, CB> w_c2(nl.c2t);
            next_phase();
            w_c2.run(&S.hid[0][0], NF, n, S.scratch,
                           [&](int a, int b, int j, float v) { NC.x[a][b][j] = v + S.own.bias[layer + 1][BIAS_C2 + b][j]; });
            // The messages that follow read owned channels only: no cluster barrier needed.
        }
    }

    // Readout: per-atom energy contributions w2·σ(W1 q + b1), and ∂E/∂hidden to every block.
    cl::Matvec<NF, 1, NH, HB> w_r1(ro.w1t);
    next_phase();
    w_r1.run(&S.ctx[0][0], 2 * NF, n, S.scratch, [&](int a, int, int j, float v) {
        int h = (int)cluster_rank() * HB + j;
        float z = v + S.own.ro_b1[j];
        S.ep[a][j] = S.own.ro_w2[j] * silu(z);
        put(&S.gh[a][h], ro.scale * S.own.ro_w2[j] * silu_grad(z));
    });
    cl::Matvec<NH, 1, NF, CB> w_r2(ro.w1);
    next_phase();
    w_r2.run(&S.gh[0][0], NH, n, S.scratch, [&](int a, int, int j, float v) {
        S.gq[0][a][j] = v;
        for (int k = 0; k < 3; ++k) S.gm[a][k][j] = 0.f;
    });

    // ---------------------------------------------------------------------------------------
    // Backward
    int cur = 0;  // S.gq[cur]: ∂E/∂q at the current point of the backward pass
    for (int layer = t_count - 1; layer >= 0; --layer) {
        const ClusterLayer& L = layers[layer];
        LayerCache& C = S.cache[layer];
        cl::Matvec<3 * NF, 1, NF, CB> w_m2(L.m2);
        // Mixing backward, element-wise part: ∂E/∂a to every block.
        if (item) {
            float gq = S.gq[cur][ia][jc], gmu = 0.f, vdotu = 0.f;
            for (int k = 0; k < 3; ++k) {
                float V = C.vu[ia * 3 + k][0][jc], U = C.vu[ia * 3 + k][1][jc];
                gmu += S.gm[ia][k][jc] * U;
                vdotu += V * U;
            }
            for (int v = ps; v < 3; v += PSPLIT)  // a share of the values per thread of the item
                put(&S.g3[ia][v * NF + c], v == 0 ? gq : v == 1 ? gmu : gq * vdotu);
        }
        next_phase();
        // ∂E/∂z = σ'(z) ⊙ W2ᵀ ∂E/∂a
        w_m2.run(&S.g3[0][0], 3 * NF, n, S.scratch, hidden_gradient(C.pre_mix));
        cl::Matvec<NF, 2, NF, CB> w_m1(L.m1);
        next_phase();
        // ∂E/∂[q, ‖V‖] = W1ᵀ ∂E/∂z: q's part is added to ∂E/∂q; ‖V‖'s goes into ∂E/∂(V, U).
        const int next = 1 - cur;
        w_m1.run(&S.hid[0][0], NF, n, S.scratch, [&](int a, int b, int j, float v) {
            if (b == 0) {
                S.gq[next][a][j] = S.gq[cur][a][j] + v;
                return;
            }
            float a_vv = C.a[a][1][j], g_vdotu = S.gq[cur][a][j] * C.a[a][2][j];
            float g_norm = v / C.norm[a][j];
            for (int k = 0; k < 3; ++k) {
                float V = C.vu[a * 3 + k][0][j], U = C.vu[a * 3 + k][1][j];
                put(&S.gvu[a * 3 + k][c0 + j], g_vdotu * U + g_norm * V);
                put(&S.gvu[a * 3 + k][NF + c0 + j], S.gm[a][k][j] * a_vv + g_vdotu * V);
            }
        });
        cur = next;
        cl::Matvec<2 * NF, 1, NF, CB> w_mix(L.mix);
        next_phase();
        // ∂E/∂μ at the mixing input = ∂E/∂μ + mixᵀ ∂E/∂(V, U)
        w_mix.run(&S.gvu[0][0], 2 * NF, 3 * n, S.scratch,
                       [&](int row, int, int j, float v) { S.gm[row / 3][row % 3][j] += v; });

        // Messages backward (channel-local): per pair, a receives from b and a sends to b.
        float gx[3] = {0.f, 0.f, 0.f}, gmu[3] = {0.f, 0.f, 0.f};
        if (item) {
            const ChannelFilter w = owned_filter(S, layer, jc);
            // This block's channel jc of atom i in this layer's backward pass.
            auto state = [&](int i) {
                ChannelState st;
                st.gq = S.gq[cur][i][jc];
                for (int k = 0; k < 3; ++k) {
                    st.gm[k] = S.gm[i][k][jc];
                    st.mu[k] = C.mu_in[i][k][jc];
                    st.x[k] = C.x[i][k][jc];
                }
                return st;
            };
            const ChannelState self = state(ia);
            for (int s = ps; s < S.pcount[ia]; s += PSPLIT) {
                float4 rv = S.pr[ia][s];
                float inv_d = 1.0f / rv.w;
                float u[3] = {rv.x * inv_d, rv.y * inv_d, rv.z * inv_d};
                float phi[NK], dphi[NK];
                load_row(phi, S.pphi[ia][s]);
                load_row(dphi, S.pdphi[ia][s]);
                S.pstage[ia][s][jc] = pair_backward(u, phi, dphi, S.pcut[ia][s], w.ws, w.wr, w.wv, w.bias(), self,
                                                    state(S.pj[ia][s]), gx, gmu);
            }
        }
#pragma unroll
        for (int offset = 1; offset < PSPLIT; offset <<= 1) {
            for (int k = 0; k < 3; ++k) {
                gx[k] += __shfl_xor_sync(0xffffffffu, gx[k], offset);
                gmu[k] += __shfl_xor_sync(0xffffffffu, gmu[k], offset);
            }
        }
        cl::Matvec<3 * NF, 1, NF, CB> w_c2(L.c2);
        __syncthreads();  // every read of ∂E/∂μ done before it moves to the layer input
        if (item && ps == 0)
            for (int k = 0; k < 3; ++k) S.gm[ia][k][jc] += gmu[k];
        if (item && layer > 0)
            for (int k = ps; k < 3; k += PSPLIT)  // a share of the values per thread of the item
                put(&S.g3[ia][k * NF + c], k == 0 ? gx[0] : k == 1 ? gx[1] : gx[2]);
        for (int k = t; k < NMAX * NMAX; k += STHREADS) {
            int i = k / NMAX, s = k % NMAX;
            if (i < n && s < S.pcount[i]) {
                float4 total = S.pg[i][s];
                for (int j = 0; j < CB; ++j) {
                    float4 p = S.pstage[i][s][j];
                    total.x += p.x;
                    total.y += p.y;
                    total.z += p.z;
                    total.w += p.w;
                }
                S.pg[i][s] = total;
            }
        }
        if (layer == 0) break;  // the first layer's q is the embedding: no gradient past it
        next_phase();
        // Context backward: ∂E/∂q += W1ᵀ (σ'(z) ⊙ W2ᵀ ∂E/∂x)
        w_c2.run(&S.g3[0][0], 3 * NF, n, S.scratch, hidden_gradient(C.pre_ctx));
        cl::Matvec<NF, 1, NF, CB> w_c1(L.c1);
        next_phase();
        w_c1.run(&S.hid[0][0], NF, n, S.scratch,
                       [&](int a, int, int j, float v) { S.gq[cur][a][j] += v; });
    }
#ifdef KERNEL_CHECKS
    if (phase != S.planned_phases) __trap();  // the plan above and the phases run must agree
#endif
    cluster_sync();  // every block's pair gradients and energy contributions complete
    stamp();

    // Forces: F_a = Σ_{p = a→b} [∂E/∂r(p) − ∂E/∂r(reverse p)], pair gradients summed over the
    // blocks in rank order. Block `rank` takes atoms a ≡ rank (mod SCL), a warp per atom, a lane
    // per pair.
    for (int i = warp; i < NMAX; i += STHREADS / 32) {
        if (i % SCL != (int)cluster_rank() || i >= n) continue;  // whole warps
        float3 f = make_float3(0.f, 0.f, 0.f);
        if (lane < S.pcount[i]) {
            float4 g = make_float4(0.f, 0.f, 0.f, 0.f), h = g;
            int b = S.pj[i][lane], s2 = S.prev[i][lane];
            for (u32 r = 0; r < SCL; ++r) {
                float4 p = cl::load_remote(&S.pg[i][lane], r), q = cl::load_remote(&S.pg[b][s2], r);
                g = add4(g, p);
                h = add4(h, q);
            }
            f = pair_force(g, h, S.pr[i][lane]);
        }
        for (int offset = 16; offset > 0; offset >>= 1) {
            f.x += __shfl_down_sync(0xffffffffu, f.x, offset);
            f.y += __shfl_down_sync(0xffffffffu, f.y, offset);
            f.z += __shfl_down_sync(0xffffffffu, f.z, offset);
        }
        if (lane == 0) {
            forces[3 * i] = f.x;
            forces[3 * i + 1] = f.y;
            forces[3 * i + 2] = f.z;
            if (md.integrate) {  // this block owns atom i: the closing half kick, the state back
                second_half_atom(i, S.svel, forces, md.in);
                for (int k = 0; k < 3; ++k) {
                    pos[3 * i + k] = S.spos[3 * i + k];
                    md.vel[3 * i + k] = S.svel[3 * i + k];
                }
                md.in.heat[i] = S.sheat[i];
            }
        }
    }
    // Energies: readout contributions of every block, in rank order.
    if (cluster_rank() == 0 && t < n) {
        float sum = 0.f;
        for (u32 r = 0; r < SCL; ++r)
            for (int j = 0; j < HB; ++j) sum += cl::load_remote(&S.ep[t][j], r);
        atom_energy[t] = ro.scale * (sum + ro.b2) + ro.mean_per_atom + ro.atomref[ro.numbers[t]];
    }
    cluster_sync();  // no block leaves while others may still read its shared memory
    stamp();
    if (md.integrate && t == 0 && cluster_rank() == 0) *md.step_counter = md_step;
}

#endif
