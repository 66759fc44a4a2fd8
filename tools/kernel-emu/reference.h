// The per-atom math of the dense kernels in plain f64, written from the model's definition
// (schnetpack 2.x PaiNN, as src/forcefield/cpu.rs computes it), not from the kernels: what the
// emulated kernels are checked against. Weights are the model's f32 values, W [out, in] row-major
// (y = W x + b); one atom at a time, μ and every vector quantity [3][F] (Cartesian row k at k·F).
#pragma once
#include <cmath>
#include <vector>

namespace reference {

using Vec = std::vector<double>;

struct Linear {
    int out, in;
    const float* w;  // [out, in]
    const float* b;  // [out], or nullptr: no bias
};

inline Vec apply(const Linear& l, const Vec& x) {
    Vec y(l.out);
    for (int o = 0; o < l.out; ++o) {
        double s = l.b ? l.b[o] : 0.0;
        for (int i = 0; i < l.in; ++i) s += (double)l.w[o * l.in + i] * x[i];
        y[o] = s;
    }
    return y;
}

// Wᵀ g: the gradient of W x with respect to x.
inline Vec apply_transposed(const Linear& l, const Vec& g) {
    Vec x(l.in, 0.0);
    for (int o = 0; o < l.out; ++o)
        for (int i = 0; i < l.in; ++i) x[i] += (double)l.w[o * l.in + i] * g[o];
    return x;
}

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }
inline double silu_grad(double x) {
    const double s = 1.0 / (1.0 + std::exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

// A context network x = W2 silu(W1 q + b1) + b2, F → F → 3F (interatomic_context_net).
struct ContextNet {
    Linear first, second;
};

struct ContextForward {
    Vec pre, x;  // W1 q + b1 [F], and x [3F]
};

inline ContextForward context_forward(const ContextNet& net, const Vec& q) {
    ContextForward f;
    f.pre = apply(net.first, q);
    Vec hidden(f.pre.size());
    for (size_t h = 0; h < hidden.size(); ++h) hidden[h] = silu(f.pre[h]);
    f.x = apply(net.second, hidden);
    return f;
}

// ∂L/∂q from ∂L/∂x.
inline Vec context_backward(const ContextNet& net, const Vec& pre, const Vec& grad_x) {
    Vec g = apply_transposed(net.second, grad_x);
    for (size_t h = 0; h < g.size(); ++h) g[h] *= silu_grad(pre[h]);
    return apply_transposed(net.first, g);
}

// PaiNN's mixing: (V, U) = mix μ per Cartesian row; ‖V‖ = sqrt(|V|² + ε); the update network
// a = A2 silu(A1 [q, ‖V‖] + b1) + b2 split into a_ss, a_vv, a_sv; q' = q + a_ss + a_sv ⊙ (V·U),
// μ' = μ + a_vv ⊙ U.
struct Mixing {
    int F;
    Linear mix;      // mu_channel_mix [2F, F], no bias
    Linear update1;  // intraatomic_context_net.0 [F, 2F]
    Linear update2;  // intraatomic_context_net.1 [3F, F]
    double epsilon;
};

struct MixingForward {
    Vec q, mu;       // the inputs [F], [3F]
    Vec vu;          // [3][2F]: V then U of each Cartesian row
    Vec norm;        // [F]
    Vec pre;         // A1 [q, ‖V‖] + b1 [F]
    Vec a;           // a_ss, a_vv, a_sv [3F]
    Vec q_out, mu_out;
};

inline MixingForward mixing_forward(const Mixing& m, const Vec& q, const Vec& mu) {
    const int F = m.F;
    MixingForward f;
    f.q = q;
    f.mu = mu;
    f.vu.resize(6 * F);
    for (int k = 0; k < 3; ++k) {
        const Vec row = apply(m.mix, Vec(mu.begin() + k * F, mu.begin() + (k + 1) * F));
        for (int j = 0; j < 2 * F; ++j) f.vu[k * 2 * F + j] = row[j];
    }
    auto V = [&](int k, int c) { return f.vu[k * 2 * F + c]; };
    auto U = [&](int k, int c) { return f.vu[k * 2 * F + F + c]; };
    f.norm.resize(F);
    Vec context(2 * F);
    for (int c = 0; c < F; ++c) {
        f.norm[c] = std::sqrt(V(0, c) * V(0, c) + V(1, c) * V(1, c) + V(2, c) * V(2, c) + m.epsilon);
        context[c] = q[c];
        context[F + c] = f.norm[c];
    }
    f.pre = apply(m.update1, context);
    Vec hidden(F);
    for (int h = 0; h < F; ++h) hidden[h] = silu(f.pre[h]);
    f.a = apply(m.update2, hidden);
    f.q_out.resize(F);
    f.mu_out.resize(3 * F);
    for (int c = 0; c < F; ++c) {
        const double vdotu = V(0, c) * U(0, c) + V(1, c) * U(1, c) + V(2, c) * U(2, c);
        f.q_out[c] = q[c] + f.a[c] + f.a[2 * F + c] * vdotu;
        for (int k = 0; k < 3; ++k) f.mu_out[k * F + c] = mu[k * F + c] + f.a[F + c] * U(k, c);
    }
    return f;
}

// The exact gradient through the mixing: (∂L/∂q, ∂L/∂μ) at its input from those at its output.
inline void mixing_backward(const Mixing& m, const MixingForward& f, const Vec& grad_q_out, const Vec& grad_mu_out,
                            Vec& grad_q_in, Vec& grad_mu_in) {
    const int F = m.F;
    auto V = [&](int k, int c) { return f.vu[k * 2 * F + c]; };
    auto U = [&](int k, int c) { return f.vu[k * 2 * F + F + c]; };
    Vec grad_a(3 * F), grad_vu(6 * F);
    for (int c = 0; c < F; ++c) {
        const double gq = grad_q_out[c];
        const double vdotu = V(0, c) * U(0, c) + V(1, c) * U(1, c) + V(2, c) * U(2, c);
        const double a_vv = f.a[F + c], a_sv = f.a[2 * F + c];
        grad_a[c] = gq;
        grad_a[2 * F + c] = gq * vdotu;
        grad_a[F + c] = 0.0;
        for (int k = 0; k < 3; ++k) grad_a[F + c] += grad_mu_out[k * F + c] * U(k, c);
        const double grad_vdotu = gq * a_sv;
        for (int k = 0; k < 3; ++k) {
            grad_vu[k * 2 * F + c] = grad_vdotu * U(k, c);
            grad_vu[k * 2 * F + F + c] = grad_mu_out[k * F + c] * a_vv + grad_vdotu * V(k, c);
        }
    }
    Vec grad_hidden = apply_transposed(m.update2, grad_a);
    for (int h = 0; h < F; ++h) grad_hidden[h] *= silu_grad(f.pre[h]);
    const Vec grad_context = apply_transposed(m.update1, grad_hidden);
    grad_q_in.resize(F);
    for (int c = 0; c < F; ++c) {
        grad_q_in[c] = grad_q_out[c] + grad_context[c];
        for (int k = 0; k < 3; ++k) grad_vu[k * 2 * F + c] += grad_context[F + c] * V(k, c) / f.norm[c];
    }
    grad_mu_in.resize(3 * F);
    for (int k = 0; k < 3; ++k) {
        const Vec g = apply_transposed(m.mix, Vec(grad_vu.begin() + k * 2 * F, grad_vu.begin() + (k + 1) * 2 * F));
        for (int c = 0; c < F; ++c) grad_mu_in[k * F + c] = grad_mu_out[k * F + c] + g[c];
    }
}

// The atomwise readout: E = scale · (w2 · silu(W1 q + b1) + b2) + mean + atomref[Z].
struct Readout {
    Linear first;     // [H, F]
    const float* w2;  // [H]
    double b2, scale, mean;
    const float* atomref;  // [100]
};

inline double readout_energy(const Readout& r, const Vec& q, int element, Vec* grad_q) {
    const Vec pre = apply(r.first, q);
    double y = r.b2;
    Vec grad_pre(pre.size());
    for (size_t h = 0; h < pre.size(); ++h) {
        y += r.w2[h] * silu(pre[h]);
        grad_pre[h] = r.scale * r.w2[h] * silu_grad(pre[h]);
    }
    if (grad_q) *grad_q = apply_transposed(r.first, grad_pre);
    return r.scale * y + r.mean + r.atomref[element];
}

}  // namespace reference
