"""CPU check of the unfused GPU path's arithmetic: emulates kernels/naive.cu as src/gpu/naive.rs
launches it, kernel by kernel, in torch float64 with the same flat buffers, layouts and dense-call
arguments (each kernel's threads vectorised, atomics as index_add), and compares energy and forces
with the autograd model of tools/baseline/torch_painn.py. It checks the decomposition, not CUDA
itself (tests/gpu.rs `naive_*` do that on a GPU).

    python3 tools/naive_emulation.py systems/benzene.xyz systems/waterbox_64.xyz
"""
import math
import sys

import torch

sys.path.insert(0, "tools/baseline")
from torch_painn import PaiNN, energy_forces, radius_graph, read_structure  # noqa: E402

torch.set_default_dtype(torch.float64)
dt = torch.float64


def silu(x):
    return x / (1 + torch.exp(-x))


def silu_grad(x):
    s = 1 / (1 + torch.exp(-x))
    return s * (1 + x * (1 - s))


def run(spec, model_path="models/painn-random-hcno-f128.safetensors"):
    name, numbers, pos, cell = read_structure(spec)
    model = PaiNN(model_path, dt, "cpu")
    t = model.t
    F, T = model.F, model.T
    K = t["representation.radial_basis.offsets"].shape[0]
    H = t["output_modules.0.outnet.0.weight"].shape[0]
    N = len(numbers)
    z = torch.tensor(numbers)
    x0 = torch.tensor(pos, dtype=dt)
    c = None if cell is None else torch.tensor(cell, dtype=dt)
    e_ref, f_ref = energy_forces(model, z, x0, c)
    # Neighbor rows (cutoff + skin), as the GPU builds them; positions wrapped like the GPU.
    wrapped, ii, jj, ss = radius_graph(x0, c, model.cutoff + 1.0)
    order = torch.argsort(ii * 100000 + jj, stable=True)
    ii, jj, ss = ii[order], jj[order], ss[order]
    count = torch.bincount(ii, minlength=N)
    cap = int(count.max()) + 3
    P = N * cap
    nb_j = torch.zeros(P, dtype=torch.long)
    shift = torch.zeros(P, 3)
    start = torch.cumsum(count, 0) - count
    slot = torch.arange(len(ii)) - start[ii]
    p_of = ii * cap + slot
    nb_j[p_of] = jj
    shift[p_of] = ss
    valid_slot = torch.zeros(P, dtype=torch.bool)
    valid_slot[p_of] = True
    pos = wrapped

    # weights as uploaded: w = W [out,in] row-major, wt = W^T [in,out] row-major
    def W(n):
        return t[n + ".weight"].reshape(-1)

    def WT(n):
        return t[n + ".weight"].T.contiguous().reshape(-1)

    def B(n):
        return t.get(n + ".bias")

    def dense(m, bias, residual, n_in, n_out, inp, ld_in, out, ld_out, rows):
        M = m.reshape(n_out, n_in)
        X = torch.stack([inp[a * ld_in: a * ld_in + n_in] for a in range(rows)])
        Y = X @ M.T
        if bias is not None:
            Y = Y + bias
        for a in range(rows):
            seg = Y[a]
            if residual is not None:
                seg = seg + residual[a * ld_out: a * ld_out + n_out]
            out[a * ld_out: a * ld_out + n_out] = seg

    filter_w = t["representation.filter_net.weight"].reshape(-1)  # [rows, K]
    filter_b = t["representation.filter_net.bias"]
    offsets = t["representation.radial_basis.offsets"]
    widths = t["representation.radial_basis.widths"]
    coeffs = -0.5 / widths**2
    cutoff = model.cutoff
    eps = model.eps

    # naive_pair_basis
    i_of = torch.arange(P) // cap
    r = pos[nb_j] - pos[i_of] + shift
    d2 = (r * r).sum(1)
    d = torch.where(valid_slot & (d2 < cutoff * cutoff), d2.sqrt(), torch.full_like(d2, -1.0))
    geom = torch.cat([r, d[:, None]], 1)
    valid = d >= 0
    fc = torch.where(valid, 0.5 * (torch.cos(math.pi * d / cutoff) + 1), 0 * d)
    dfc = torch.where(valid, -0.5 * math.pi / cutoff * torch.sin(math.pi * d / cutoff), 0 * d)
    phi = torch.exp(coeffs * (d[:, None] - offsets) ** 2) * valid[:, None]  # [P, K]

    def pair_filter(tt):
        off = 0 if model.shared else 3 * F * tt
        Wf = filter_w.reshape(-1, K)[off: off + 3 * F]
        filt = (phi @ Wf.T + filter_b[off: off + 3 * F]) * valid[:, None]
        return filt  # [P, 3F]

    q = [torch.zeros(N * F) for _ in range(T + 1)]
    mu = [torch.zeros(N * 3 * F) for _ in range(T + 1)]
    L = []
    for tt in range(T):
        L.append({k: torch.zeros(N * s) for k, s in [("q_mid", F), ("mu_mid", 3 * F), ("x", 3 * F), ("pre_context", F), ("vu", 6 * F), ("norm", F), ("pre_mix", F), ("a_mix", 3 * F)]})
    ctx = torch.zeros(N * 2 * F)
    hidden = torch.zeros(N * F)
    # embed
    emb = t["representation.embedding.weight"]
    q[0][:] = emb[z].reshape(-1)

    def context(tt):
        p = f"representation.interactions.{tt}.interatomic_context_net"
        dense(W(p + ".0"), B(p + ".0"), None, F, F, q[tt], F, L[tt]["pre_context"], F, N)
        hidden[:] = silu(L[tt]["pre_context"])
        dense(W(p + ".1"), B(p + ".1"), None, F, 3 * F, hidden, F, L[tt]["x"], 3 * F, N)

    context(0)
    ar = torch.arange(P)
    for tt in range(T):
        lay = L[tt]
        filt = pair_filter(tt)
        lay["q_mid"][:] = q[tt]
        lay["mu_mid"][:] = mu[tt]
        # naive_message, per (pair, c)
        x = lay["x"].reshape(N, 3 * F)
        mj = mu[tt].reshape(N, 3, F)
        fcv = fc[:, None]
        s_ = filt[:, :F] * fcv * x[nb_j, :F]
        radial = filt[:, F:2 * F] * fcv * x[nb_j, F:2 * F]
        vector = filt[:, 2 * F:] * fcv * x[nb_j, 2 * F:]
        inv_d = torch.where(valid, 1 / d, 0 * d)
        m = radial[:, None, :] * (r * inv_d[:, None])[:, :, None] + vector[:, None, :] * mj[nb_j]
        s_ = s_ * valid[:, None]
        m = m * valid[:, None, None]
        qm = lay["q_mid"].reshape(N, F)
        qm.index_add_(0, i_of, s_)
        mm = lay["mu_mid"].reshape(N, 3, F)
        mm.index_add_(0, i_of, m)
        p = f"representation.mixing.{tt}"
        dense(W(p + ".mu_channel_mix"), None, None, F, 2 * F, lay["mu_mid"], F, lay["vu"], 2 * F, 3 * N)
        # norm_context
        v = lay["vu"].reshape(N, 6 * F)
        V = torch.stack([v[:, 0:F], v[:, 2 * F:3 * F], v[:, 4 * F:5 * F]], 1)
        U = torch.stack([v[:, F:2 * F], v[:, 3 * F:4 * F], v[:, 5 * F:6 * F]], 1)
        nrm = torch.sqrt((V * V).sum(1) + eps)
        lay["norm"][:] = nrm.reshape(-1)
        ctx.reshape(N, 2 * F)[:, :F] = qm
        ctx.reshape(N, 2 * F)[:, F:] = nrm
        dense(W(p + ".intraatomic_context_net.0"), B(p + ".intraatomic_context_net.0"), None, 2 * F, F, ctx, 2 * F, lay["pre_mix"], F, N)
        hidden[:] = silu(lay["pre_mix"])
        dense(W(p + ".intraatomic_context_net.1"), B(p + ".intraatomic_context_net.1"), None, F, 3 * F, hidden, F, lay["a_mix"], 3 * F, N)
        am = lay["a_mix"].reshape(N, 3 * F)
        vdotu = (V * U).sum(1)
        q[tt + 1][:] = (qm + am[:, :F] + am[:, 2 * F:] * vdotu).reshape(-1)
        mu[tt + 1][:] = (mm + am[:, None, F:2 * F] * U).reshape(-1)
        if tt + 1 < T:
            context(tt + 1)
    # readout
    ro = "output_modules.0.outnet"
    zr = torch.zeros(N * H)
    dense(W(ro + ".0"), B(ro + ".0"), None, F, H, q[T], F, zr, H, N)
    w2 = t[ro + ".1.weight"].reshape(-1)
    b2 = float(t[ro + ".1.bias"][0]) if ro + ".1.bias" in t else 0.0
    Z = zr.reshape(N, H)
    y = b2 + (w2 * silu(Z)).sum(1)
    atomref = model.atomref if model.atomref is not None else torch.zeros(100)
    atom_e = model.scale * y + model.mean + atomref[z]
    energy = float(atom_e.sum())
    gz_r = (model.scale * w2 * silu_grad(Z)).reshape(-1)
    gq_out = torch.zeros(N * F)
    dense(WT(ro + ".0"), None, None, H, F, gz_r, H, gq_out, F, N)
    gm_out = torch.zeros(N * 3 * F)
    pair_grad = torch.zeros(P, 4)
    gq_mid = torch.zeros(N * F)
    gm_mid = torch.zeros(N * 3 * F)
    ga = torch.zeros(N * 3 * F)
    gvu = torch.zeros(N * 6 * F)
    gz = torch.zeros(N * F)
    gctx = torch.zeros(N * 2 * F)
    for tt in reversed(range(T)):
        lay = L[tt]
        p = f"representation.mixing.{tt}"
        v = lay["vu"].reshape(N, 6 * F)
        am = lay["a_mix"].reshape(N, 3 * F)
        V = [v[:, 2 * k * F: (2 * k + 1) * F] for k in range(3)]
        U = [v[:, (2 * k + 1) * F: (2 * k + 2) * F] for k in range(3)]
        G = [gm_out.reshape(N, 3, F)[:, k] for k in range(3)]
        g = gq_out.reshape(N, F)
        a_vv, a_sv = am[:, F:2 * F], am[:, 2 * F:]
        vdotu = sum(V[k] * U[k] for k in range(3))
        gaa = ga.reshape(N, 3 * F)
        gaa[:, :F] = g
        gaa[:, F:2 * F] = sum(G[k] * U[k] for k in range(3))
        gaa[:, 2 * F:] = g * vdotu
        g_vdotu = g * a_sv
        gv = gvu.reshape(N, 6 * F)
        for k in range(3):
            gv[:, 2 * k * F: (2 * k + 1) * F] = g_vdotu * U[k]
            gv[:, (2 * k + 1) * F: (2 * k + 2) * F] = G[k] * a_vv + g_vdotu * V[k]
        dense(WT(p + ".intraatomic_context_net.1"), None, None, 3 * F, F, ga, 3 * F, gz, F, N)
        gz[:] = gz * silu_grad(lay["pre_mix"])
        dense(WT(p + ".intraatomic_context_net.0"), None, None, F, 2 * F, gz, F, gctx, 2 * F, N)
        gc = gctx.reshape(N, 2 * F)
        gq_mid[:] = (g + gc[:, :F]).reshape(-1)
        s = gc[:, F:] / lay["norm"].reshape(N, F)
        for k in range(3):
            gv[:, 2 * k * F: (2 * k + 1) * F] += s * V[k]
        dense(WT(p + ".mu_channel_mix"), None, gm_out.clone(), 2 * F, F, gvu, 2 * F, gm_mid, F, 3 * N)
        filt = pair_filter(tt)
        gm_out[:] = gm_mid
        gx = torch.zeros(N * 3 * F)
        # naive_message_backward
        x = lay["x"].reshape(N, 3 * F)
        mb = mu[tt].reshape(N, 3, F)[nb_j]
        gm_a = gm_mid.reshape(N, 3, F)[i_of]
        gq_a = gq_mid.reshape(N, F)[i_of]
        inv_d = torch.where(valid, 1 / d, 0 * d)
        u = r * inv_d[:, None]
        g_r = (gm_a * u[:, :, None]).sum(1)
        g_v = (gm_a * mb).sum(1)
        xb = x[nb_j]
        gw = torch.cat([gq_a * xb[:, :F], g_r * xb[:, F:2 * F], g_v * xb[:, 2 * F:]], 1) * valid[:, None]
        fcv = fc[:, None]
        gxb = torch.cat([gq_a * filt[:, :F] * fcv, g_r * filt[:, F:2 * F] * fcv, g_v * filt[:, 2 * F:] * fcv], 1) * valid[:, None]
        gx.reshape(N, 3 * F).index_add_(0, nb_j, gxb)
        vector_w = filt[:, 2 * F:] * fcv * xb[:, 2 * F:]
        gm_out.reshape(N, 3, F).index_add_(0, nb_j, gm_a * vector_w[:, None, :] * valid[:, None, None])
        # naive_filter_backward
        off = 0 if model.shared else 3 * F * tt
        Wf = filter_w.reshape(-1, K)[off: off + 3 * F]
        gphi = gw @ Wf  # [P, K]
        # naive_pair_grad
        dphi = 2 * coeffs * (d[:, None] - offsets) * phi
        g_phi = (gphi * dphi).sum(1)
        g_fc = (gw * filt).sum(1)
        radial = filt[:, F:2 * F] * fcv * xb[:, F:2 * F]
        gu = (gm_a * radial[:, None, :]).sum(2)
        add = torch.cat([(fc * g_phi + dfc * g_fc)[:, None], gu], 1) * valid[:, None]
        pair_grad += add
        if tt == 0:
            break
        pc = f"representation.interactions.{tt}.interatomic_context_net"
        dense(WT(pc + ".1"), None, None, 3 * F, F, gx, 3 * F, gz, F, N)
        gz[:] = gz * silu_grad(lay["pre_context"])
        dense(WT(pc + ".0"), None, gq_mid.clone(), F, F, gz, F, gq_out, F, N)
    # naive_pair_forces
    forces = torch.zeros(N, 3)
    inv_d = torch.where(valid, 1 / d, 0 * d)
    u = r * inv_d[:, None]
    gu = pair_grad[:, 1:]
    dot = (gu * u).sum(1, keepdim=True)
    de_dr = (pair_grad[:, :1] * u + (gu - dot * u) * inv_d[:, None]) * valid[:, None]
    forces.index_add_(0, i_of, de_dr)
    forces.index_add_(0, nb_j, -de_dr)
    e_err = abs(energy - float(e_ref)) / abs(float(e_ref))
    f_err = float((forces - f_ref).abs().max())
    print(f"{name}: N={N} cap={cap} energy rel err {e_err:.2e}, force max abs err {f_err:.2e}")
    return e_err, f_err


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        run(spec)
