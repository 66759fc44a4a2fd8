// Runs the dense kernels (embed, mixing_forward, mixing_forward_last, mixing_backward) on the CPU
// through shim.h, on fresh random weights and inputs, and checks them against reference.h (f64):
// each output array within TOLERANCE of its largest value, every output of every atom written and
// nothing past the last atom, no protocol violation in the cluster exchange, and the cluster's
// results equal to a single block's (CLUSTER 1) within f32 rounding. Exit status 0 when all holds.
//
// Built for one layout (README.md): g++ -std=c++20 -O1 -pthread -DNF=64 -DNH=32 -DSPLIT=2
// -DTILE=2 -DEMU_CLUSTER=2 -DLAST_WITHOUT_A_VV=1 [-DKERNEL_CHECKS] -DDENSE_INC='"dense.inc"' harness.cpp
//     ./harness [--atoms N] [--seed S] [--jitter] [--verbose]
#include <algorithm>
#include <cstdint>
#include <random>
#include <string>

#include "reference.h"
#include "shim.h"

#ifndef DENSE_INC
#define DENSE_INC "dense.inc"
#endif
#ifndef EMU_CLUSTER
#error "EMU_CLUSTER (blocks per cluster under test) must be defined"
#endif
#ifndef LAST_WITHOUT_A_VV
#error "LAST_WITHOUT_A_VV (the last mixing without its a_vv third: 0 or 1) must be defined"
#endif

// Largest error allowed against the f64 reference, relative to the array's largest value: f32
// rounding through up to five matvecs of 3F inputs stays an order of magnitude below it.
constexpr double TOLERANCE = 1e-5;
// Between the cluster and a single block only the order of the sums differs.
constexpr double CLUSTER_TOLERANCE = 4e-6;
// Rows past the last atom in every buffer (TILE ≤ 4): the kernels must neither write them nor
// use what they hold (the inputs' are NaN).
constexpr int GUARD_ATOMS = 4;
// Outputs start as this NaN; one left in an atom's rows was never written.
constexpr uint32_t UNWRITTEN = 0x7fedcba9u;

enum class Kernel { Embed, MixingForward, MixingForwardLast, MixingBackward };

// The kernels' arguments as host arrays standing in for device buffers.
struct EmbedArgs {
    const int* numbers;
    const float *embedding, *w1t, *b1, *w2t, *b2;
    float *q, *pre, *x;
};
struct MixingWeightArgs {
    const float *mix_t, *a1t, *b1, *a2t, *b2;  // forward: Wᵀ [in, out]
    float epsilon;
    const float *mix, *a1, *a2;  // backward: W [out, in]
};
struct ContextWeightArgs {
    const float *w1t, *b1, *w2t, *b2, *w1, *w2;
};
struct CacheArgs {
    float *vu, *norm, *pre, *a;
};
struct MixingForwardArgs {
    const float *q_in, *mu_in;
    MixingWeightArgs weights;
    CacheArgs cache;
    ContextWeightArgs next;
    float *next_pre, *next_x, *q_out, *mu_out;
};
struct ReadoutArgs {
    const float *w1t, *b1, *w1, *w2;
    float b2, scale, mean;
    const float* atomref;
    const int* numbers;
};
struct MixingForwardLastArgs {
    const float *q_in, *mu_in;
    MixingWeightArgs weights;
    ReadoutArgs readout;
    float *energy, *grad_q_in, *grad_mu_in;
};
struct MixingBackwardArgs {
    MixingWeightArgs weights;
    CacheArgs cache;  // what mixing_forward wrote
    ContextWeightArgs next;
    const float* next_pre;  // what mixing_forward wrote
    const float *grad_x, *grad_q, *grad_mu_out;
    float *grad_q_in, *grad_mu_in;
};
struct KernelArgs {
    int n_atoms;
    EmbedArgs embed;
    MixingForwardArgs forward;
    MixingForwardLastArgs last;
    MixingBackwardArgs backward;
};

// The kernel code once as a lone block (CLUSTER 1: the layout every cluster is compared with),
// and once per block of the cluster under test, each in its own namespace with its own shared
// memory.
#define CLUSTER 1
namespace single_block::rank0 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace single_block::rank0
#undef CLUSTER
#undef DENSE_KERNEL
#undef DENSE_TILE_INDEX
#define CLUSTER EMU_CLUSTER

namespace cluster::rank0 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank0
#if EMU_CLUSTER > 1
namespace cluster::rank1 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank1
#endif
#if EMU_CLUSTER > 2
namespace cluster::rank2 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank2
namespace cluster::rank3 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank3
#endif
#if EMU_CLUSTER > 4
namespace cluster::rank4 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank4
namespace cluster::rank5 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank5
namespace cluster::rank6 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank6
namespace cluster::rank7 {
#include DENSE_INC
#include "block_entry.inc"
}  // namespace cluster::rank7
#endif
#if EMU_CLUSTER != 1 && EMU_CLUSTER != 2 && EMU_CLUSTER != 4 && EMU_CLUSTER != 8
#error "EMU_CLUSTER must be 1, 2, 4 or 8"
#endif

using BlockEntry = void (*)(Kernel, const KernelArgs&);

// The blocks of one cluster: each one's copy of the kernels and its reduce_buffer.
struct EmulatedCluster {
    const char* name;
    int blocks;
    BlockEntry entry[EMU_MAX_BLOCKS];
    float* reduce_buffer[EMU_MAX_BLOCKS];
    size_t reduce_bytes;
};

static EmulatedCluster single_block_cluster() {
    return {"single block", 1, {single_block::rank0::run_block}, {nullptr}, 0};
}

static EmulatedCluster cluster_under_test() {
    EmulatedCluster c{"cluster", EMU_CLUSTER, {}, {}, cluster::rank0::block_reduce_bytes()};
#define BLOCK(R)                                                        \
    c.entry[R] = cluster::rank##R::run_block;                           \
    c.reduce_buffer[R] = cluster::rank##R::block_reduce_buffer();
    BLOCK(0)
#if EMU_CLUSTER > 1
    BLOCK(1)
#endif
#if EMU_CLUSTER > 2
    BLOCK(2) BLOCK(3)
#endif
#if EMU_CLUSTER > 4
    BLOCK(4) BLOCK(5) BLOCK(6) BLOCK(7)
#endif
#undef BLOCK
    return c;
}

// Linker-provided bounds of every __shared__ array (shim.h puts them in one section).
extern char __start_emushm[], __stop_emushm[];

struct ThreadStart {
    const EmulatedCluster* cluster;
    int rank, thread, block;
    Kernel kernel;
    const KernelArgs* args;
    unsigned seed;
};

static void* emulated_thread(void* p) {
    const ThreadStart& s = *(const ThreadStart*)p;
    emu.thread_idx.x = s.thread;
    emu.block_idx.x = s.block;
    emu.block_dim.x = SPLIT * NF;
    emu.rank = s.rank;
    emu.exchanges = 0;
    emu.rng = s.seed;
    s.cluster->entry[s.rank](s.kernel, *s.args);
    return nullptr;
}

// Runs `kernel` over every tile of atoms, one cluster at a time (clusters share nothing but
// global memory, which the kernels only read or write per atom).
static void launch(const EmulatedCluster& cluster, Kernel kernel, const KernelArgs& args, unsigned seed) {
    const int threads = SPLIT * NF, tiles = (args.n_atoms + TILE - 1) / TILE;
    static_assert(SPLIT * NF % 32 == 0 && SPLIT * NF / 32 <= EMU_MAX_WARPS, "a block is whole warps");
    for (int r = 0; r < cluster.blocks; ++r) {
        E.block_barrier[r].expected = threads;
        for (int w = 0; w < threads / 32; ++w) E.warp_barrier[r][w].expected = 32;
        E.reduce_buffer[r] = cluster.reduce_buffer[r];
    }
    for (int r = cluster.blocks; r < EMU_MAX_BLOCKS; ++r) E.reduce_buffer[r] = nullptr;
    E.reduce_bytes = cluster.reduce_bytes;
    E.cluster_barrier.expected = cluster.blocks * threads;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 512 * 1024);
    std::vector<pthread_t> handles(cluster.blocks * threads);
    std::vector<ThreadStart> starts(cluster.blocks * threads);
    for (int tile = 0; tile < tiles; ++tile) {
        memset(__start_emushm, 0xff, __stop_emushm - __start_emushm);  // NaN in every shared float
        for (int r = 0; r < cluster.blocks; ++r)
            for (int t = 0; t < threads; ++t) {
                ThreadStart& s = starts[r * threads + t];
                s = ThreadStart{&cluster, r, t, tile * cluster.blocks + r, kernel, &args,
                                seed * 7919u + r * 1000003u + t * 31u + tile * 104729u};
                if (pthread_create(&handles[r * threads + t], &attr, emulated_thread, &s)) emu_fatal("pthread_create");
            }
        for (pthread_t h : handles) pthread_join(h, nullptr);
    }
    pthread_attr_destroy(&attr);
}

// ---- The problem: random weights and inputs ----------------------------------------------------

struct Rng {
    std::mt19937_64 engine;
    std::vector<float> normal(size_t n, double scale) {
        std::normal_distribution<double> d(0.0, scale);
        std::vector<float> v(n);
        for (float& x : v) x = (float)d(engine);
        return v;
    }
};

// A dense layer as the model stores it (W [out, in]) and as the forward kernels read it (Wᵀ).
struct Layer {
    int out, in;
    std::vector<float> w, wt, b;
    Layer(Rng& rng, int out, int in, bool bias) : out(out), in(in), w(rng.normal((size_t)out * in, 1.0 / std::sqrt(in))) {
        wt.resize(w.size());
        for (int o = 0; o < out; ++o)
            for (int i = 0; i < in; ++i) wt[(size_t)i * out + o] = w[(size_t)o * in + i];
        if (bias) b = rng.normal(out, 0.1);
    }
    reference::Linear linear() const { return {out, in, w.data(), b.empty() ? nullptr : b.data()}; }
};

struct ContextLayers {
    Layer first, second;
    ContextLayers(Rng& rng, int F) : first(rng, F, F, true), second(rng, 3 * F, F, true) {}
    reference::ContextNet net() const { return {first.linear(), second.linear()}; }
    ContextWeightArgs args() const {
        return {.w1t = first.wt.data(),
                .b1 = first.b.data(),
                .w2t = second.wt.data(),
                .b2 = second.b.data(),
                .w1 = first.w.data(),
                .w2 = second.w.data()};
    }
};

struct MixingLayers {
    Layer mix, update1, update2;
    float epsilon = 1e-8f;
    // The update network's second layer without its a_vv third (W [2F, F], Wᵀ [F, 2F]), as the
    // host gives the last layer's to mixing_forward_last (src/gpu/forces.rs, without_a_vv).
    std::vector<float> update2_w_last, update2_wt_last;
    MixingLayers(Rng& rng, int F) : mix(rng, 2 * F, F, false), update1(rng, F, 2 * F, true), update2(rng, 3 * F, F, true) {
        for (int o = 0; o < 3 * F; ++o)
            if (o < F || o >= 2 * F)
                update2_w_last.insert(update2_w_last.end(), update2.w.begin() + (size_t)o * F, update2.w.begin() + (size_t)(o + 1) * F);
        update2_wt_last.resize(update2_w_last.size());
        for (int o = 0; o < 2 * F; ++o)
            for (int i = 0; i < F; ++i) update2_wt_last[(size_t)i * 2 * F + o] = update2_w_last[(size_t)o * F + i];
    }
    reference::Mixing net() const { return {mix.out / 2, mix.linear(), update1.linear(), update2.linear(), epsilon}; }
    MixingWeightArgs args() const {
        return {.mix_t = mix.wt.data(),
                .a1t = update1.wt.data(),
                .b1 = update1.b.data(),
                .a2t = update2.wt.data(),
                .b2 = update2.b.data(),
                .epsilon = epsilon,
                .mix = mix.w.data(),
                .a1 = update1.w.data(),
                .a2 = update2.w.data()};
    }
    // The last layer's weights as mixing_forward_last takes them (UPDATE_PARTS in painn.cu).
    MixingWeightArgs last_args() const {
        MixingWeightArgs a = args();
        if (LAST_WITHOUT_A_VV) {
            a.a2t = update2_wt_last.data();
            a.a2 = update2_w_last.data();
        }
        return a;
    }
};

// Per-atom arrays with GUARD_ATOMS rows past the last atom.
static std::vector<float> atom_input(Rng& rng, int n, int width) {
    std::vector<float> v = rng.normal((size_t)(n + GUARD_ATOMS) * width, 1.0);
    std::fill(v.begin() + (size_t)n * width, v.end(), NAN);
    return v;
}

struct Problem {
    int n, F = NF, H = NH;
    std::vector<int> numbers;
    std::vector<float> embedding;
    ContextLayers embed_context, next_context;
    MixingLayers mixing, last_mixing;
    Layer readout1;
    std::vector<float> readout_w2, atomref;
    float readout_b2 = 0.2f, scale = 1.3f, mean = -0.3f;
    std::vector<float> q_in, mu_in, q_last, mu_last, grad_x, grad_q, grad_mu_out;
    Problem(Rng& rng, int n)
        : n(n), embedding(rng.normal(100 * NF, 1.0)), embed_context(rng, NF), next_context(rng, NF), mixing(rng, NF),
          last_mixing(rng, NF), readout1(rng, NH, NF, true), readout_w2(rng.normal(NH, 1.0 / std::sqrt(NH))),
          atomref(rng.normal(100, 0.5)) {
        const int elements[] = {1, 6, 7, 8, 9, 16, 17};
        std::uniform_int_distribution<int> pick(0, 6);
        for (int a = 0; a < n + GUARD_ATOMS; ++a) numbers.push_back(a < n ? elements[pick(rng.engine)] : 0);
        q_in = atom_input(rng, n, F);
        mu_in = atom_input(rng, n, 3 * F);
        q_last = atom_input(rng, n, F);
        mu_last = atom_input(rng, n, 3 * F);
        grad_x = atom_input(rng, n, 3 * F);
        grad_q = atom_input(rng, n, F);
        grad_mu_out = atom_input(rng, n, 3 * F);
    }
    reference::Readout readout() const {
        return {readout1.linear(), readout_w2.data(), readout_b2, scale, mean, atomref.data()};
    }
};

// ---- Outputs, from the kernels and from the reference ------------------------------------------

struct Output {
    std::string kernel, name;
    int width;                 // floats per atom
    std::vector<float> got;    // (n + GUARD_ATOMS) · width
    std::vector<double> want;  // n · width
};

struct Outputs {
    std::vector<Output> all;
    Output& add(const char* kernel, const char* name, int n, int width) {
        all.push_back({kernel, name, width, {}, {}});
        Output& o = all.back();
        float unwritten;
        memcpy(&unwritten, &UNWRITTEN, 4);
        o.got.assign((size_t)(n + GUARD_ATOMS) * width, unwritten);
        return o;
    }
    Output& operator[](const std::string& name) {
        for (Output& o : all)
            if (o.name == name) return o;
        emu_fatal("no such output");
        __builtin_unreachable();
    }
    const Output& operator[](const std::string& name) const { return const_cast<Outputs&>(*this)[name]; }
};

static std::vector<double> slice(const std::vector<float>& v, int atom, int width) {
    return std::vector<double>(v.begin() + (size_t)atom * width, v.begin() + (size_t)(atom + 1) * width);
}

static void put(std::vector<double>& dst, int atom, const std::vector<double>& src) {
    if (dst.size() < (size_t)(atom + 1) * src.size()) dst.resize((size_t)(atom + 1) * src.size());
    std::copy(src.begin(), src.end(), dst.begin() + (size_t)atom * src.size());
}

// The outputs' arrays, in the order the kernels run (mixing_backward reads mixing_forward's).
static Outputs make_outputs(const Problem& p) {
    const int n = p.n, F = p.F;
    Outputs o;
    o.all.reserve(32);
    o.add("embed", "q0", n, F), o.add("embed", "pre0", n, F), o.add("embed", "x0", n, 3 * F);
    o.add("mixing_forward", "vu", n, 6 * F), o.add("mixing_forward", "norm", n, F);
    o.add("mixing_forward", "pre", n, F), o.add("mixing_forward", "a", n, 3 * F);
    o.add("mixing_forward", "q_out", n, F), o.add("mixing_forward", "mu_out", n, 3 * F);
    o.add("mixing_forward", "next_pre", n, F), o.add("mixing_forward", "next_x", n, 3 * F);
    o.add("mixing_backward", "grad_q_in", n, F), o.add("mixing_backward", "grad_mu_in", n, 3 * F);
    o.add("mixing_forward_last", "energy", n, 1), o.add("mixing_forward_last", "last_grad_q_in", n, F);
    o.add("mixing_forward_last", "last_grad_mu_in", n, 3 * F);
    return o;
}

// The f64 results of every output, atom by atom.
static void compute_reference(const Problem& p, Outputs& o) {
    const int F = p.F;
    const reference::ContextNet embed_net = p.embed_context.net(), next_net = p.next_context.net();
    const reference::Mixing mixing = p.mixing.net(), last_mixing = p.last_mixing.net();
    const reference::Readout readout = p.readout();
    for (int a = 0; a < p.n; ++a) {
        const std::vector<double> q0 = slice(p.embedding, p.numbers[a], F);
        const reference::ContextForward c0 = reference::context_forward(embed_net, q0);
        put(o["q0"].want, a, q0), put(o["pre0"].want, a, c0.pre), put(o["x0"].want, a, c0.x);

        const reference::MixingForward f = reference::mixing_forward(mixing, slice(p.q_in, a, F), slice(p.mu_in, a, 3 * F));
        const reference::ContextForward next = reference::context_forward(next_net, f.q_out);
        put(o["vu"].want, a, f.vu), put(o["norm"].want, a, f.norm), put(o["pre"].want, a, f.pre);
        put(o["a"].want, a, f.a), put(o["q_out"].want, a, f.q_out), put(o["mu_out"].want, a, f.mu_out);
        put(o["next_pre"].want, a, next.pre), put(o["next_x"].want, a, next.x);

        std::vector<double> grad_q_out = reference::context_backward(next_net, next.pre, slice(p.grad_x, a, 3 * F));
        for (int c = 0; c < F; ++c) grad_q_out[c] += p.grad_q[(size_t)a * F + c];
        std::vector<double> grad_q_in, grad_mu_in;
        reference::mixing_backward(mixing, f, grad_q_out, slice(p.grad_mu_out, a, 3 * F), grad_q_in, grad_mu_in);
        put(o["grad_q_in"].want, a, grad_q_in), put(o["grad_mu_in"].want, a, grad_mu_in);

        const reference::MixingForward last = reference::mixing_forward(last_mixing, slice(p.q_last, a, F), slice(p.mu_last, a, 3 * F));
        std::vector<double> grad_q_readout;
        const double energy = reference::readout_energy(readout, last.q_out, p.numbers[a], &grad_q_readout);
        reference::mixing_backward(last_mixing, last, grad_q_readout, std::vector<double>(3 * F, 0.0), grad_q_in, grad_mu_in);
        put(o["energy"].want, a, {energy}), put(o["last_grad_q_in"].want, a, grad_q_in);
        put(o["last_grad_mu_in"].want, a, grad_mu_in);
    }
}

// The reference's gradients against central differences of its own forward (in f64), along a
// random direction of every atom's q and μ: for mixing_backward, of the scalar
// Σ grad_x·x' + grad_q·q' + grad_mu_out·μ' whose gradient it returns; for mixing_forward_last, of
// the total energy. Makes sure the reference's backward is the exact derivative.
static bool reference_gradients_match_differences(const Problem& p, const Outputs& o, Rng& rng) {
    const int F = p.F;
    const std::vector<float> dq = rng.normal((size_t)p.n * F, 1.0), dmu = rng.normal((size_t)p.n * 3 * F, 1.0);
    auto shifted = [&](const std::vector<float>& v, const std::vector<float>& d, int a, int width, double h) {
        std::vector<double> x = slice(v, a, width);
        for (int i = 0; i < width; ++i) x[i] += h * d[(size_t)a * width + i];
        return x;
    };
    auto dot = [](const std::vector<double>& a, const std::vector<float>& b, size_t at) {
        double s = 0.0;
        for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[at + i];
        return s;
    };
    const reference::ContextNet next_net = p.next_context.net();
    auto backward_scalar = [&](double h) {
        double total = 0.0;
        for (int a = 0; a < p.n; ++a) {
            const auto f = reference::mixing_forward(p.mixing.net(), shifted(p.q_in, dq, a, F, h), shifted(p.mu_in, dmu, a, 3 * F, h));
            const auto next = reference::context_forward(next_net, f.q_out);
            total += dot(next.x, p.grad_x, (size_t)a * 3 * F) + dot(f.q_out, p.grad_q, (size_t)a * F) +
                     dot(f.mu_out, p.grad_mu_out, (size_t)a * 3 * F);
        }
        return total;
    };
    auto energy = [&](double h) {
        double total = 0.0;
        for (int a = 0; a < p.n; ++a) {
            const auto f = reference::mixing_forward(p.last_mixing.net(), shifted(p.q_last, dq, a, F, h),
                                                     shifted(p.mu_last, dmu, a, 3 * F, h));
            total += reference::readout_energy(p.readout(), f.q_out, p.numbers[a], nullptr);
        }
        return total;
    };
    auto directional = [&](const std::vector<double>& grad_q, const std::vector<double>& grad_mu) {
        double s = 0.0;
        for (size_t i = 0; i < grad_q.size(); ++i) s += grad_q[i] * dq[i];
        for (size_t i = 0; i < grad_mu.size(); ++i) s += grad_mu[i] * dmu[i];
        return s;
    };
    bool ok = true;
    const double h = 1e-5;  // truncation error ~h², rounding ~1e-16/h
    const struct {
        const char* what;
        double analytic, numeric;
    } checks[] = {
        {"mixing_backward", directional(o["grad_q_in"].want, o["grad_mu_in"].want),
         (backward_scalar(h) - backward_scalar(-h)) / (2 * h)},
        {"mixing_forward_last",
         directional(o["last_grad_q_in"].want, o["last_grad_mu_in"].want),
         (energy(h) - energy(-h)) / (2 * h)},
    };
    for (const auto& c : checks) {
        const double error = std::fabs(c.analytic - c.numeric) / std::max(1.0, std::fabs(c.numeric));
        if (error > 1e-7) ok = false;
        printf("reference %-20s gradient vs central difference: %.12g vs %.12g (%s)\n", c.what, c.analytic, c.numeric,
               error > 1e-7 ? "FAIL" : "ok");
    }
    return ok;
}

// ---- Running the kernels and checking what they wrote ------------------------------------------

static KernelArgs kernel_args(const Problem& p, Outputs& o) {
    KernelArgs k{};
    k.n_atoms = p.n;
    k.embed = {.numbers = p.numbers.data(),
               .embedding = p.embedding.data(),
               .w1t = p.embed_context.first.wt.data(),
               .b1 = p.embed_context.first.b.data(),
               .w2t = p.embed_context.second.wt.data(),
               .b2 = p.embed_context.second.b.data(),
               .q = o["q0"].got.data(),
               .pre = o["pre0"].got.data(),
               .x = o["x0"].got.data()};
    const CacheArgs cache{.vu = o["vu"].got.data(),
                          .norm = o["norm"].got.data(),
                          .pre = o["pre"].got.data(),
                          .a = o["a"].got.data()};
    k.forward = {.q_in = p.q_in.data(),
                 .mu_in = p.mu_in.data(),
                 .weights = p.mixing.args(),
                 .cache = cache,
                 .next = p.next_context.args(),
                 .next_pre = o["next_pre"].got.data(),
                 .next_x = o["next_x"].got.data(),
                 .q_out = o["q_out"].got.data(),
                 .mu_out = o["mu_out"].got.data()};
    k.backward = {.weights = p.mixing.args(),
                  .cache = cache,
                  .next = p.next_context.args(),
                  .next_pre = o["next_pre"].got.data(),
                  .grad_x = p.grad_x.data(),
                  .grad_q = p.grad_q.data(),
                  .grad_mu_out = p.grad_mu_out.data(),
                  .grad_q_in = o["grad_q_in"].got.data(),
                  .grad_mu_in = o["grad_mu_in"].got.data()};
    k.last = {.q_in = p.q_last.data(),
              .mu_in = p.mu_last.data(),
              .weights = p.last_mixing.last_args(),
              .readout = {.w1t = p.readout1.wt.data(),
                          .b1 = p.readout1.b.data(),
                          .w1 = p.readout1.w.data(),
                          .w2 = p.readout_w2.data(),
                          .b2 = p.readout_b2,
                          .scale = p.scale,
                          .mean = p.mean,
                          .atomref = p.atomref.data(),
                          .numbers = p.numbers.data()},
              .energy = o["energy"].got.data(),
              .grad_q_in = o["last_grad_q_in"].got.data(),
              .grad_mu_in = o["last_grad_mu_in"].got.data()};
    return k;
}

static void run_kernels(const EmulatedCluster& cluster, const KernelArgs& args, unsigned seed) {
    launch(cluster, Kernel::Embed, args, seed);
    launch(cluster, Kernel::MixingForward, args, seed + 1);
    launch(cluster, Kernel::MixingBackward, args, seed + 2);  // reads mixing_forward's cache
    launch(cluster, Kernel::MixingForwardLast, args, seed + 3);
}

static bool is_unwritten(float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return bits == UNWRITTEN;
}

// Every atom's values written and finite, the guard rows untouched; returns the largest error
// against `want` relative to its largest value (infinite where the checks fail).
static double check_output(const char* run, const Output& o, const std::vector<double>& want, int n, bool verbose) {
    size_t unwritten = 0, not_finite = 0, guard_written = 0;
    double err = 0.0, scale = 0.0;
    for (size_t i = 0; i < (size_t)n * o.width; ++i) {
        if (is_unwritten(o.got[i])) unwritten++;
        else if (!std::isfinite(o.got[i])) not_finite++;
        else err = std::max(err, std::fabs(o.got[i] - want[i]));
        scale = std::max(scale, std::fabs(want[i]));
    }
    for (size_t i = (size_t)n * o.width; i < o.got.size(); ++i) guard_written += !is_unwritten(o.got[i]);
    if (unwritten || not_finite || guard_written) {
        printf("  %-13s %-20s %-16s FAIL: %zu values not written, %zu not finite (NaN from shared memory nobody wrote?), "
               "%zu written past the last atom\n",
               run, o.kernel.c_str(), o.name.c_str(), unwritten, not_finite, guard_written);
        return INFINITY;
    }
    const double relative = err / std::max(scale, 1e-30);
    if (verbose) printf("  %-13s %-20s %-16s max |error| / max |value| = %.2e\n", run, o.kernel.c_str(), o.name.c_str(), relative);
    return relative;
}

int main(int argc, char** argv) {
    int atoms = 7;
    unsigned seed = 1;
    bool verbose = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--atoms" && i + 1 < argc) atoms = atoi(argv[++i]);
        else if (a == "--seed" && i + 1 < argc) seed = (unsigned)atoi(argv[++i]);
        else if (a == "--jitter") E.jitter = true;
        else if (a == "--verbose") verbose = true;
        else {
            fprintf(stderr, "usage: %s [--atoms N] [--seed S] [--jitter] [--verbose]\n", argv[0]);
            return 2;
        }
    }
#ifdef KERNEL_CHECKS
    const char* kernel_checks = ", KERNEL_CHECKS";
#else
    const char* kernel_checks = "";
#endif
#if defined(__SANITIZE_THREAD__)
    const char* sanitizer = ", ThreadSanitizer";
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
    const char* sanitizer = ", ThreadSanitizer";
#else
    const char* sanitizer = "";
#endif
#else
    const char* sanitizer = "";
#endif
    printf("dense kernels, emulated: F=%d H=%d SPLIT=%d TILE=%d CLUSTER=%d, %d atoms, seed %u%s%s%s\n", NF, NH, SPLIT,
           TILE, EMU_CLUSTER, atoms, seed, E.jitter ? ", jitter" : "", kernel_checks, sanitizer);
    Rng rng{std::mt19937_64(seed)};
    const Problem problem(rng, atoms);
    Outputs expected = make_outputs(problem);
    compute_reference(problem, expected);
    bool ok = reference_gradients_match_differences(problem, expected, rng);

    const EmulatedCluster runs[] = {single_block_cluster(), cluster_under_test()};
    std::vector<Outputs> results;
    for (const EmulatedCluster& cluster : runs) {
        results.push_back(make_outputs(problem));
        E.violations = 0;
        E.sends_ahead = 0;
        run_kernels(cluster, kernel_args(problem, results.back()), seed * 17);
        double worst = 0.0;
        for (size_t i = 0; i < results.back().all.size(); ++i) {
            const Output& o = results.back().all[i];
            const double err = check_output(cluster.name, o, expected.all[i].want, atoms, verbose);
            if (err > TOLERANCE) {
                ok = false;
                if (std::isfinite(err))
                    printf("  %-13s %-20s %-16s FAIL: error %.2e of the largest value (tolerance %.0e)\n", cluster.name,
                           o.kernel.c_str(), o.name.c_str(), err, TOLERANCE);
            }
            worst = std::max(worst, err);
        }
        const long violations = E.violations.load();
        if (violations) ok = false;
        printf("%-13s against f64: worst %.2e of an array's largest value; %ld protocol violations, %ld sends ahead of "
               "their receiver\n",
               cluster.name, worst, violations, E.sends_ahead.load());
    }
    // The cluster against the single block, array by array.
    double worst = 0.0;
    for (size_t i = 0; i < results[0].all.size(); ++i) {
        const Output &single = results[0].all[i], &clustered = results[1].all[i];
        double err = 0.0, scale = 0.0;
        for (size_t j = 0; j < (size_t)atoms * single.width; ++j) {
            err = std::max(err, (double)std::fabs(single.got[j] - clustered.got[j]));
            scale = std::max(scale, (double)std::fabs(single.got[j]));
        }
        const double relative = std::isfinite(err) ? err / std::max(scale, 1e-30) : INFINITY;
        if (!(relative <= CLUSTER_TOLERANCE)) {
            ok = false;
            printf("  %-20s %-16s FAIL: cluster differs from a single block by %.2e of the largest value\n",
                   single.kernel.c_str(), single.name.c_str(), relative);
        }
        worst = std::max(worst, relative);
    }
    printf("cluster against single block: worst %.2e of an array's largest value\n", worst);
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
