// The message kernels on the CPU, from their source (extract_message.py), against an f64
// reference of the message passing and its backward: the tensor-core ones (kernels/message_mma.cu)
// or, built with MMA_PAIR_SPLIT=0, the scalar ones (painn.cu's message_forward, message_backward).
// One build is one kernel shape and variant (-D sizes as src/gpu/compile.rs passes them, with
// PAIR_RECORD and FIRST_LAYER); one run is one random system. It runs what an evaluation runs of
// two interactions: the first's forward (which clears the pair gradients and, with the record,
// writes it), the second's forward and backward, then the first's backward, and checks every
// output. Prints one line per array: its largest error against the reference, relative to the
// array's largest value, and a hash of its bytes (tests/message_emulation.rs compares those
// across variants). Exit status 1 when a check fails.
//
//   python3 tools/kernel-emu/extract_message.py kernels/common.cuh kernels/painn.cu \
//       kernels/message_mma.cu /tmp/message.inc
//   g++ -std=c++20 -O1 -pthread -w -DNF=128 -DNK=20 -DNH=64 -DSPLIT=4 -DTILE=1 -DCLUSTER=1 \
//       -DPAIR_SPLIT=4 -DCHANNEL_SLICES=4 -DMMA_PAIR_SPLIT=4 -DMMA_BACKWARD_DIVIDES=1 \
//       -DPAIR_RECORD=1 -DFIRST_LAYER=1 -DCLUSTER_MATVEC_W=8 -DPDL_EARLY_TRIGGER=0 -DDENSE_ALONE=0 \
//       -DMESSAGE_INC='"/tmp/message.inc"' tools/kernel-emu/message_harness.cpp -o /tmp/message-emu
//   /tmp/message-emu --atoms 12 --edge 5 --seed 1 [--cell 9] [--cutoff 5]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shim.h"
#include MESSAGE_INC

#ifndef PAIR_RECORD
#error "PAIR_RECORD must be defined (0 or 1)"
#endif
#if MMA_PAIR_SPLIT == 0 && (PAIR_RECORD || FIRST_LAYER)
#error "the pair record and the first-layer kernels are tensor-core variants"
#endif

// Linker-provided bounds of every __shared__ array (shim.h puts them in one section).
extern char __start_emushm[], __stop_emushm[];

// One launch: `blocks` blocks of `threads` threads, one block at a time (blocks share only
// global memory), every CUDA thread an OS thread; shared memory is NaN when a block starts.
template <class Body>
static void launch(int blocks, int threads, Body body) {
    if (threads % 32 != 0 || threads / 32 > EMU_MAX_WARPS) emu_fatal("a block is whole warps, at most 1,024 threads");
    E.block_barrier[0].expected = threads;
    for (int w = 0; w < threads / 32; ++w) E.warp_barrier[0][w].expected = 32;
    std::vector<std::thread> pool;
    for (int b = 0; b < blocks; ++b) {
        memset(__start_emushm, 0xff, __stop_emushm - __start_emushm);
        pool.clear();
        for (int t = 0; t < threads; ++t)
            pool.emplace_back([=] {
                emu.thread_idx.x = t;
                emu.block_idx.x = b;
                emu.block_dim.x = threads;
                emu.grid_dim.x = blocks;
                emu.rank = 0;
                body();
            });
        for (std::thread& t : pool) t.join();
    }
}

// ---- The problem ----------------------------------------------------------------------------

struct Options {
    int atoms = 12;
    double edge = 5.0;    // random positions in [0, edge)³ (Å), at least 0.9 Å apart
    double cell = 0.0;    // > 0: periodic, a sheared cell of about this edge (Å)
    double cutoff = 5.0;  // Å; the neighbor rows hold the pairs within cutoff + 0.5 Å
    unsigned seed = 1;
};

struct System {
    int n;
    std::vector<double> pos;  // [n, 3] Å
    Cell cell{};
    double lattice[3][3] = {};
    bool periodic = false;
};

static System random_system(const Options& o, std::mt19937_64& rng) {
    System s;
    s.n = o.atoms;
    s.periodic = o.cell > 0.0;
    if (s.periodic) {
        const double a = o.cell;
        const double v[3][3] = {{a, 0, 0}, {0.15 * a, 0.95 * a, 0}, {-0.1 * a, 0.12 * a, 0.98 * a}};
        memcpy(s.lattice, v, sizeof v);
    }
    std::uniform_real_distribution<double> u(0.0, 1.0);
    auto image_distance = [&](const double* a, const double* b) {
        double best = INFINITY;
        const int m = s.periodic ? 1 : 0;
        for (int i = -m; i <= m; ++i)
            for (int j = -m; j <= m; ++j)
                for (int k = -m; k <= m; ++k) {
                    double d2 = 0;
                    for (int x = 0; x < 3; ++x) {
                        const double t = b[x] - a[x] + i * s.lattice[0][x] + j * s.lattice[1][x] + k * s.lattice[2][x];
                        d2 += t * t;
                    }
                    best = std::min(best, d2);
                }
        return std::sqrt(best);
    };
    for (int tries = 0; (int)s.pos.size() < 3 * s.n; ++tries) {
        if (tries > 1000000) emu_fatal("cannot place the atoms");
        double p[3];
        const double f[3] = {u(rng), u(rng), u(rng)};
        for (int x = 0; x < 3; ++x)
            p[x] = s.periodic ? f[0] * s.lattice[0][x] + f[1] * s.lattice[1][x] + f[2] * s.lattice[2][x] : o.edge * f[x];
        bool ok = true;
        for (size_t a = 0; a < s.pos.size() && ok; a += 3) ok = image_distance(&s.pos[a], p) >= 0.9;
        if (ok) s.pos.insert(s.pos.end(), p, p + 3);
    }
    memcpy(s.cell.v, s.lattice, sizeof s.lattice);
    s.cell.periodic = s.periodic;  // the message kernels use v only (image shifts)
    return s;
}

// Full neighbor rows (every pair both ways) within cutoff + skin, each image its own entry,
// with the reverse index; `capacity` a few entries past the longest row.
struct NeighborRows {
    int capacity = 0;
    std::vector<int> count, j, reverse;
    std::vector<int3> image;
};

static NeighborRows neighbor_rows(const System& s, double reach) {
    std::vector<std::vector<std::pair<int, int3>>> rows(s.n);
    const int m = s.periodic ? 2 : 0;
    for (int i = 0; i < s.n; ++i)
        for (int j = 0; j < s.n; ++j)
            for (int a = -m; a <= m; ++a)
                for (int b = -m; b <= m; ++b)
                    for (int c = -m; c <= m; ++c) {
                        if (i == j && a == 0 && b == 0 && c == 0) continue;
                        double d2 = 0;
                        for (int x = 0; x < 3; ++x) {
                            const double t = s.pos[3 * j + x] - s.pos[3 * i + x] + a * s.lattice[0][x] +
                                             b * s.lattice[1][x] + c * s.lattice[2][x];
                            d2 += t * t;
                        }
                        if (d2 < reach * reach) rows[i].push_back({j, make_int3(a, b, c)});
                    }
    NeighborRows nb;
    for (auto& row : rows) nb.capacity = std::max(nb.capacity, (int)row.size());
    nb.capacity += 5;
    nb.count.assign(s.n, 0);
    nb.j.assign((size_t)s.n * nb.capacity, 0);
    nb.reverse.assign((size_t)s.n * nb.capacity, 0);
    nb.image.assign((size_t)s.n * nb.capacity, make_int3(0, 0, 0));
    for (int i = 0; i < s.n; ++i) {
        nb.count[i] = (int)rows[i].size();
        for (size_t k = 0; k < rows[i].size(); ++k) {
            nb.j[i * nb.capacity + k] = rows[i][k].first;
            nb.image[i * nb.capacity + k] = rows[i][k].second;
        }
    }
    for (int i = 0; i < s.n; ++i)
        for (int k = 0; k < nb.count[i]; ++k) {
            const int j = nb.j[i * nb.capacity + k];
            const int3 n = nb.image[i * nb.capacity + k];
            int found = -1;
            for (int r = 0; r < nb.count[j] && found < 0; ++r) {
                const int3 m2 = nb.image[j * nb.capacity + r];
                if (nb.j[j * nb.capacity + r] == i && m2.x == -n.x && m2.y == -n.y && m2.z == -n.z) found = r;
            }
            if (found < 0) emu_fatal("neighbor rows not symmetric");
            nb.reverse[i * nb.capacity + k] = j * nb.capacity + found;
        }
    return nb;
}

// The filter network of two interactions (rows [2 · 3F, K], part-major within each) and the
// Gaussian radial basis, as the model stores them.
struct FilterNet {
    std::vector<float> weight, bias, offsets, coeffs;
    float cutoff;
};

static float half_range_scale(double max) {  // src/gpu/forces.rs
    return max > 0 && std::isfinite(max) ? (float)std::pow(2.0, std::floor(14.0 - std::log2(max))) : 1.f;
}

static std::vector<float> normal(std::mt19937_64& rng, size_t n, double scale) {
    std::normal_distribution<double> d(0.0, scale);
    std::vector<float> v(n);
    for (float& x : v) x = (float)d(rng);
    return v;
}

// ---- The f64 reference (from PaiNN's definition, not from the kernels) ------------------------

struct Pair {
    int i, j, entry;  // i receives from j; entry: the row entry i · capacity + k
    double r[3], d;
};

static std::vector<Pair> pairs_within(const System& s, const NeighborRows& nb, double cutoff) {
    std::vector<Pair> pairs;
    for (int i = 0; i < s.n; ++i)
        for (int k = 0; k < nb.count[i]; ++k) {
            const int e = i * nb.capacity + k, j = nb.j[e];
            const int3 n = nb.image[e];
            Pair p{i, j, e, {}, 0};
            for (int x = 0; x < 3; ++x)
                p.r[x] = s.pos[3 * j + x] - s.pos[3 * i + x] + n.x * s.lattice[0][x] + n.y * s.lattice[1][x] +
                         n.z * s.lattice[2][x];
            p.d = std::sqrt(p.r[0] * p.r[0] + p.r[1] * p.r[1] + p.r[2] * p.r[2]);
            if (p.d < cutoff) pairs.push_back(p);
        }
    return pairs;
}

// Filter values W_p,c(d) · f_c(d) of parts p = s, R, v and their d-derivatives.
struct PairFilter {
    std::vector<double> w, dw;  // [3F]
};

static PairFilter pair_filter(const FilterNet& net, int layer, double d) {
    const int rows = 3 * NF;
    std::vector<double> phi(NK), dphi(NK);
    for (int k = 0; k < NK; ++k) {
        const double u = d - net.offsets[k];
        phi[k] = std::exp(net.coeffs[k] * u * u);
        dphi[k] = 2.0 * net.coeffs[k] * u * phi[k];
    }
    const double fc = 0.5 * (std::cos(M_PI * d / net.cutoff) + 1.0);
    const double dfc = -0.5 * M_PI / net.cutoff * std::sin(M_PI * d / net.cutoff);
    PairFilter f{std::vector<double>(rows), std::vector<double>(rows)};
    for (int r = 0; r < rows; ++r) {
        const float* w = &net.weight[(size_t)(layer * rows + r) * NK];
        double value = net.bias[layer * rows + r], derivative = 0;
        for (int k = 0; k < NK; ++k) {
            value += w[k] * phi[k];
            derivative += w[k] * dphi[k];
        }
        f.w[r] = value * fc;
        f.dw[r] = derivative * fc + value * dfc;
    }
    return f;
}

struct Reference {
    std::vector<double> q_out, mu_out, grad_x, grad_mu_in;
    std::vector<double> pair_grad;  // [n · capacity, 4]
};

// One interaction's messages and, for ∂E/∂q_out = gq and ∂E/∂μ_out = gm, their backward.
static Reference reference(const System& s, const NeighborRows& nb, const std::vector<Pair>& pairs,
                           const FilterNet& net, int layer, const std::vector<float>& q, const std::vector<float>& mu,
                           const std::vector<float>& x, const std::vector<float>& gq, const std::vector<float>& gm) {
    const int F = NF;
    Reference ref;
    ref.q_out.assign(q.begin(), q.end());
    ref.mu_out.assign(mu.begin(), mu.end());
    ref.grad_x.assign((size_t)s.n * 3 * F, 0.0);
    ref.grad_mu_in.assign(gm.begin(), gm.end());
    ref.pair_grad.assign((size_t)s.n * nb.capacity * 4, 0.0);
    for (const Pair& p : pairs) {
        const PairFilter f = pair_filter(net, layer, p.d);
        const double u[3] = {p.r[0] / p.d, p.r[1] / p.d, p.r[2] / p.d};
        double* pg = &ref.pair_grad[(size_t)p.entry * 4];
        for (int c = 0; c < F; ++c) {
            const double xs = x[(size_t)p.j * 3 * F + c], xr = x[(size_t)p.j * 3 * F + F + c],
                         xv = x[(size_t)p.j * 3 * F + 2 * F + c];
            const double A = f.w[c], B = f.w[F + c], C = f.w[2 * F + c];
            const double dA = f.dw[c], dB = f.dw[F + c], dC = f.dw[2 * F + c];
            ref.q_out[(size_t)p.i * F + c] += A * xs;
            double g_r = 0, g_v = 0;
            for (int k = 0; k < 3; ++k) {
                const double mj = mu[(size_t)p.j * 3 * F + k * F + c], g = gm[(size_t)p.i * 3 * F + k * F + c];
                ref.mu_out[(size_t)p.i * 3 * F + k * F + c] += B * xr * u[k] + C * xv * mj;
                g_r += g * u[k];
                g_v += g * mj;
                ref.grad_mu_in[(size_t)p.j * 3 * F + k * F + c] += g * C * xv;
                pg[1 + k] += g * B * xr;
            }
            const double g_q = gq[(size_t)p.i * F + c];
            ref.grad_x[(size_t)p.j * 3 * F + c] += g_q * A;
            ref.grad_x[(size_t)p.j * 3 * F + F + c] += g_r * B;
            ref.grad_x[(size_t)p.j * 3 * F + 2 * F + c] += g_v * C;
            pg[0] += g_q * xs * dA + g_r * xr * dB + g_v * xv * dC;
        }
    }
    return ref;
}

// ---- Checks -----------------------------------------------------------------------------------

static int failures = 0;

static uint64_t fnv(const void* data, size_t bytes) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; ++i) h = (h ^ ((const unsigned char*)data)[i]) * 1099511628211ull;
    return h;
}

// out against ref: the largest error relative to the largest |ref| (1e-5 allowed: f32 sums and the
// split half-precision filter products stay near 1e-6); every value finite.
static void check(const char* name, const std::vector<float>& out, const std::vector<double>& ref) {
    double scale = 1e-30, error = 0;
    bool finite = true;
    for (size_t k = 0; k < ref.size(); ++k) {
        scale = std::max(scale, std::abs(ref[k]));
        error = std::max(error, std::abs(out[k] - ref[k]));
        finite = finite && std::isfinite(out[k]);
    }
    const double relative = error / scale;
    const bool ok = finite && relative <= 1e-5;
    printf("%-14s %8zu values  max error %.2e of max %.3e  hash %016llx%s\n", name, out.size(), relative, scale,
           (unsigned long long)fnv(out.data(), out.size() * sizeof(float)), ok ? "" : "  FAILED");
    if (!ok) failures++;
}

int main(int argc, char** argv) {
    Options o;
    for (int a = 1; a + 1 < argc; a += 2) {
        const std::string k = argv[a];
        const double v = atof(argv[a + 1]);
        if (k == "--atoms") o.atoms = (int)v;
        else if (k == "--edge") o.edge = v;
        else if (k == "--cell") o.cell = v;
        else if (k == "--cutoff") o.cutoff = v;
        else if (k == "--seed") o.seed = (unsigned)v;
        else {
            fprintf(stderr, "unknown option %s\n", k.c_str());
            return 2;
        }
    }
    std::mt19937_64 rng(o.seed);
    const int F = NF, rows = 3 * NF;
    const System sys = random_system(o, rng);
    const NeighborRows nb = neighbor_rows(sys, o.cutoff + 0.5);
    const std::vector<Pair> pairs = pairs_within(sys, nb, o.cutoff);
    int longest = 0;
    for (int i = 0; i < sys.n; ++i) {
        int inside = 0;
        for (const Pair& p : pairs) inside += p.i == i;
        longest = std::max(longest, inside);
    }
    printf("%d atoms, %s, %zu pairs within %.1f Å, longest row %d pairs, capacity %d; PAIR_RECORD %d, FIRST_LAYER %d, "
           "MMA_PAIR_SPLIT %d, CHANNEL_SLICES %d\n",
           sys.n, sys.periodic ? "periodic" : "open", pairs.size(), o.cutoff, longest, nb.capacity, PAIR_RECORD,
           FIRST_LAYER, MMA_PAIR_SPLIT, CHANNEL_SLICES);

    // Two interactions' filters and the basis (schnetpack's Gaussians: centres 0..cutoff).
    FilterNet net;
    net.cutoff = (float)o.cutoff;
    net.weight = normal(rng, (size_t)2 * rows * NK, 1.0 / std::sqrt((double)NK));
    net.bias = normal(rng, (size_t)2 * rows, 0.1);
    const double width = o.cutoff / (NK - 1);
    double dphi_max = 0;
    for (int k = 0; k < NK; ++k) {
        net.offsets.push_back((float)(k * width));
        net.coeffs.push_back((float)(-0.5 / (width * width)));
        dphi_max = std::max(dphi_max, 1.0 / (width * std::sqrt(M_E)));
    }
    auto filter_of = [&](int layer, const uint4* fragments) {
        double wmax = 0;
        for (size_t k = (size_t)layer * rows * NK; k < (size_t)(layer + 1) * rows * NK; ++k)
            wmax = std::max(wmax, (double)std::abs(net.weight[k]));
        Filter f{};
        f.weight = net.weight.data();
        f.bias = net.bias.data();
        f.offsets = net.offsets.data();
        f.coeffs = net.coeffs.data();
        f.offset = layer * rows;
        f.cutoff = net.cutoff;
        f.fragments = fragments;
        f.weight_scale = half_range_scale(wmax);
        f.phi_scale = half_range_scale(1.0);
        f.dphi_scale = half_range_scale(dphi_max);
        f.cutoff_slope = -0.5f * (float)M_PI / net.cutoff;
        return f;
    };
#if MMA_PAIR_SPLIT > 0
    // The fragments, packed by the kernel the host runs once per system.
    const int groups = F / 16;
    std::vector<std::vector<uint4>> fragments(2, std::vector<uint4>((size_t)groups * FRAGMENT_VECTORS * 32));
    for (int layer = 0; layer < 2; ++layer) {
        const Filter f = filter_of(layer, nullptr);
        uint4* out = fragments[layer].data();
        launch(groups, 32, [=] { message_mma_pack(f, out); });
    }
    const Filter filter[2] = {filter_of(0, fragments[0].data()), filter_of(1, fragments[1].data())};
    const int threads = MMA_THREADS;
#define FORWARD message_forward_mma
#define BACKWARD message_backward_mma
#else
    const Filter filter[2] = {filter_of(0, nullptr), filter_of(1, nullptr)};
    const int threads = MSG_THREADS;
#define FORWARD message_forward
#define BACKWARD message_backward
#endif

    // Inputs: the first interaction's μ is zero (as schnetpack starts it), the second's random.
    const size_t nf = (size_t)sys.n * F, n3f = 3 * nf;
    const std::vector<float> q0 = normal(rng, nf, 1.0), x0 = normal(rng, n3f, 1.0), mu0(n3f, 0.f);
    const std::vector<float> q1 = normal(rng, nf, 1.0), x1 = normal(rng, n3f, 1.0), mu1 = normal(rng, n3f, 0.5);
    const std::vector<float> gq0 = normal(rng, nf, 1.0), gm0 = normal(rng, n3f, 1.0);
    const std::vector<float> gq1 = normal(rng, nf, 1.0), gm1 = normal(rng, n3f, 1.0);

    const Neighbors neighbors{nb.count.data(), nb.j.data(), nb.image.data(), nb.reverse.data(), nb.capacity};
    const int blocks = sys.n * CHANNEL_SLICES;
    // The pair gradients, NaN before the first forward kernel clears them.
    std::vector<float4> pair_grad((size_t)CHANNEL_SLICES * sys.n * nb.capacity, make_float4(NAN, NAN, NAN, NAN));
    std::vector<float> q0_out(nf), mu0_out(n3f), q1_out(nf), mu1_out(n3f);
    std::vector<float> gx1(n3f), gmu1(n3f), gx0(n3f, 0.f), gmu0(n3f, 0.f);
    const double* pos = sys.pos.data();
    const Cell cell = sys.cell;
    float4* pg = pair_grad.data();
#if PAIR_RECORD
    const int stride = (nb.capacity + 7) / 8 * 8;
    std::vector<int> r_count(sys.n, 0);
    std::vector<int2> r_pair((size_t)sys.n * stride, make_int2(0, 0));
    std::vector<float4> r_inv((size_t)sys.n * stride, make_float4(0, 0, 0, 0)), r_d(r_inv);
    std::vector<float2> r_cut((size_t)sys.n * stride, make_float2(0, 0));
    std::vector<uint4> r_basis((size_t)sys.n * stride * 4 * RECORD_ROW_VECTORS, make_uint4(0, 0, 0, 0));
    const PairRecord record{r_count.data(), r_pair.data(), r_inv.data(), r_d.data(), r_cut.data(), r_basis.data(), stride};
#define RECORD , record
#else
#define RECORD
#endif
#if PAIR_RECORD || FIRST_LAYER
#define FIRST_FORWARD message_forward_mma_first
#else
#define FIRST_FORWARD FORWARD
#endif
#if FIRST_LAYER
#define FIRST_BACKWARD message_backward_mma_first
#else
#define FIRST_BACKWARD BACKWARD
#endif
    {
        const float *q = q0.data(), *m = mu0.data(), *x = x0.data();
        float *qo = q0_out.data(), *mo = mu0_out.data();
        launch(blocks, threads, [&, q, m, x, qo, mo] { FIRST_FORWARD(pos, cell, neighbors, filter[0], q, m, x, qo, mo, pg RECORD); });
    }
    {
        const float *q = q1.data(), *m = mu1.data(), *x = x1.data();
        float *qo = q1_out.data(), *mo = mu1_out.data();
        launch(blocks, threads,
               [&, q, m, x, qo, mo] { FORWARD(pos, cell, neighbors, filter[1], q, m, x, qo, mo, nullptr RECORD); });
    }
    {
        const float *m = mu1.data(), *x = x1.data(), *gq = gq1.data(), *gm = gm1.data();
        float *gx = gx1.data(), *gmu = gmu1.data();
        launch(blocks, threads,
               [&, m, x, gq, gm, gx, gmu] { BACKWARD(pos, cell, neighbors, filter[1], m, x, gq, gm, gx, gmu, pg RECORD); });
    }
    {
        const float *m = mu0.data(), *x = x0.data(), *gq = gq0.data(), *gm = gm0.data();
        float *gx = gx0.data(), *gmu = gmu0.data();
        launch(blocks, threads,
               [&, m, x, gq, gm, gx, gmu] { FIRST_BACKWARD(pos, cell, neighbors, filter[0], m, x, gq, gm, gx, gmu, pg RECORD); });
    }

    const Reference ref0 = reference(sys, nb, pairs, net, 0, q0, mu0, x0, gq0, gm0);
    const Reference ref1 = reference(sys, nb, pairs, net, 1, q1, mu1, x1, gq1, gm1);
    check("q out 0", q0_out, ref0.q_out);
    check("mu out 0", mu0_out, ref0.mu_out);
    check("q out 1", q1_out, ref1.q_out);
    check("mu out 1", mu1_out, ref1.mu_out);
    check("grad x 1", gx1, ref1.grad_x);
    check("grad mu in 1", gmu1, ref1.grad_mu_in);
    if (!FIRST_LAYER) {  // the first-layer backward computes the pair gradients only
        check("grad x 0", gx0, ref0.grad_x);
        check("grad mu in 0", gmu0, ref0.grad_mu_in);
    }
    // The pair gradients of both interactions, summed over the channel slices in order (as
    // pair_forces does); entries outside the cutoff and past each row's count stay zero.
    std::vector<float> total((size_t)sys.n * nb.capacity * 4);
    std::vector<double> expected(total.size());
    for (size_t e = 0; e < (size_t)sys.n * nb.capacity; ++e) {
        float4 g = pair_grad[e];
        for (int s = 1; s < CHANNEL_SLICES; ++s) {
            const float4 h = pair_grad[(size_t)s * sys.n * nb.capacity + e];
            g = make_float4(g.x + h.x, g.y + h.y, g.z + h.z, g.w + h.w);
        }
        const int row_entry = (int)(e % nb.capacity), atom = (int)(e / nb.capacity);
        if (row_entry >= nb.count[atom]) g = make_float4(0, 0, 0, 0);  // never cleared nor read
        const float v[4] = {g.x, g.y, g.z, g.w};
        for (int k = 0; k < 4; ++k) {
            total[e * 4 + k] = v[k];
            expected[e * 4 + k] = ref0.pair_grad[e * 4 + k] + ref1.pair_grad[e * 4 + k];
        }
    }
    check("pair grad", total, expected);
#if PAIR_RECORD
    int recorded = 0;
    for (int c : r_count) recorded += c;
    const bool counted = recorded == (int)pairs.size();
    printf("record         %d pairs recorded of %zu%s\n", recorded, pairs.size(), counted ? "" : "  FAILED");
    if (!counted) failures++;
#endif
    const long violations = E.violations.load();
    if (violations) printf("%ld violations\n", violations);
    printf("%s\n", failures || violations ? "FAILED" : "ok");
    return failures || violations ? 1 : 0;
}
