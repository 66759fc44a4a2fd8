"""Batched, trainable PaiNN (schnetpack 2.x semantics, docs/model-format.md) and the writer of
mdrun's safetensors format. Needs only torch, numpy and safetensors.

Parameter names are schnetpack's state_dict names, so the export is a rename-free copy. The math
is the one of tools/baseline/torch_painn.py (verified against mdrun), batched over molecules:
atoms of a batch are concatenated, `i`, `j` index the pairs (j -> i messages, r_ij = R_j - R_i),
`atom_frame` maps atoms to their molecule.
"""
import math
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/
from export_schnetpack import write_safetensors  # noqa: E402  (one deterministic writer for both exporters)

N_EMBED = 100


class PaiNNEnergy(nn.Module):
    def __init__(self, F=128, T=3, K=20, cutoff=5.0, eps=1e-8):
        super().__init__()
        self.F, self.T, self.K, self.cutoff, self.eps = F, T, K, float(cutoff), float(eps)
        rep = nn.Module()
        rep.embedding = nn.Embedding(N_EMBED, F, padding_idx=0)
        rb = nn.Module()
        offsets = torch.linspace(0, cutoff, K)  # float32, as schnetpack's GaussianRBF
        widths = torch.abs(offsets[1] - offsets[0]) * torch.ones_like(offsets)
        rb.register_buffer("offsets", offsets)
        rb.register_buffer("widths", widths)
        rep.radial_basis = rb
        rep.filter_net = nn.Linear(K, T * 3 * F)
        rep.interactions = nn.ModuleList()
        rep.mixing = nn.ModuleList()
        for _ in range(T):
            it = nn.Module()
            it.interatomic_context_net = nn.Sequential(nn.Linear(F, F), nn.Linear(F, 3 * F))
            rep.interactions.append(it)
            mx = nn.Module()
            mx.intraatomic_context_net = nn.Sequential(nn.Linear(2 * F, F), nn.Linear(F, 3 * F))
            mx.mu_channel_mix = nn.Linear(F, 2 * F, bias=False)
            rep.mixing.append(mx)
        self.representation = rep
        head = nn.Module()
        head.outnet = nn.Sequential(nn.Linear(F, F // 2), nn.Linear(F // 2, 1))
        self.output_modules = nn.ModuleList([head])
        # energy = scale * sum_i y_i + N * mean_per_atom + sum_i atomref[Z_i]
        self.register_buffer("energy_scale", torch.ones(1, dtype=torch.float64))
        self.register_buffer("energy_mean_per_atom", torch.zeros(1, dtype=torch.float64))
        self.register_buffer("energy_atomref", torch.zeros(N_EMBED, dtype=torch.float64))
        # schnetpack's Dense init: xavier_uniform weights, zero biases
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def atomwise(self, numbers, pos, i, j):
        """Per-atom outputs y_i (before scale/offsets)."""
        silu = nn.functional.silu
        rep, F = self.representation, self.F
        r = pos[j] - pos[i]
        d = torch.linalg.norm(r, dim=1)
        u = r / d[:, None]
        offsets, widths = rep.radial_basis.offsets.to(pos.dtype), rep.radial_basis.widths.to(pos.dtype)
        phi = torch.exp(-0.5 * (d[:, None] - offsets) ** 2 / widths**2)
        fc = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0) * (d < self.cutoff)
        W = rep.filter_net(phi) * fc[:, None]
        n = numbers.shape[0]
        q = rep.embedding(numbers)
        mu = None
        for t in range(self.T):
            ctx = rep.interactions[t].interatomic_context_net
            x = ctx[1](silu(ctx[0](q)))
            m = W[:, 3 * F * t : 3 * F * (t + 1)] * x[j]
            s, R, v = torch.split(m, F, dim=1)
            q = q.index_add(0, i, s)
            dmu = R[:, None, :] * u[:, :, None]
            if mu is not None:  # mu = 0 before the first interaction
                dmu = dmu + v[:, None, :] * mu[j]
            else:
                mu = torch.zeros(n, 3, F, dtype=pos.dtype, device=pos.device)
            mu = mu.index_add(0, i, dmu)
            mix = rep.mixing[t]
            mixed = mix.mu_channel_mix(mu)
            V, U = torch.split(mixed, F, dim=2)
            norm = torch.sqrt((V**2).sum(1) + self.eps)
            ic = mix.intraatomic_context_net
            a = ic[1](silu(ic[0](torch.cat([q, norm], 1))))
            a_ss, a_vv, a_sv = torch.split(a, F, dim=1)
            q = q + a_ss + a_sv * (V * U).sum(1)
            mu = mu + a_vv[:, None, :] * U
        out = self.output_modules[0].outnet
        return out[1](silu(out[0](q)))[:, 0]

    def forward(self, numbers, pos, i, j, atom_frame, n_frames, with_offsets=True):
        """Energies per frame [n_frames] in pos.dtype (offsets included when with_offsets)."""
        y = self.atomwise(numbers, pos, i, j) * self.energy_scale.to(pos.dtype)
        if with_offsets:
            y = y + (self.energy_mean_per_atom.to(pos.dtype) + self.energy_atomref.to(pos.dtype)[numbers])
        return torch.zeros(n_frames, dtype=pos.dtype, device=pos.device).index_add(0, atom_frame, y)


def energy_forces(model, numbers, pos, i, j, atom_frame, n_frames, create_graph=False, with_offsets=True):
    pos = pos.detach().requires_grad_(True)
    e = model(numbers, pos, i, j, atom_frame, n_frames, with_offsets)
    (g,) = torch.autograd.grad(e.sum(), pos, create_graph=create_graph)
    return e, -g


def radius_pairs(pos, cutoff):
    """All ordered pairs (i, j), i != j, with |R_j - R_i| < cutoff of one open-boundary molecule."""
    d = torch.cdist(pos, pos)
    mask = d < cutoff
    mask.fill_diagonal_(False)
    i, j = mask.nonzero(as_tuple=True)
    return i, j


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def model_tensors(model):
    """The mdrun tensors (name -> float64 numpy array)."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("energy_"):
            continue
        out[k] = v.detach().cpu().double().numpy()
    out["energy.scale"] = model.energy_scale.detach().cpu().double().numpy().reshape(1)
    out["energy.mean_per_atom"] = model.energy_mean_per_atom.detach().cpu().double().numpy().reshape(1)
    out["energy.atomref"] = model.energy_atomref.detach().cpu().double().numpy().reshape(N_EMBED)
    return out


def export_mdrun(model, path, elements, description, extra_meta=None, dtype="float64"):
    """Write `model` in the mdrun-painn format (docs/model-format.md)."""
    np_dtype = {"float64": np.float64, "float32": np.float32}[dtype]
    arrays = {k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in model_tensors(model).items()}
    for k, v in arrays.items():
        if not np.all(np.isfinite(v)):
            raise RuntimeError(f"tensor {k} is not finite")
    meta = {
        "format": "mdrun-painn",
        "format_version": "1",
        "n_atom_basis": str(model.F),
        "n_interactions": str(model.T),
        "n_rbf": str(model.K),
        "cutoff": repr(float(model.cutoff)),
        "radial_basis": "gaussian",
        "shared_filters": "false",
        "elements": ",".join(str(z) for z in sorted(set(int(z) for z in elements))),
        "energy_unit": "eV",
        "length_unit": "Angstrom",
        "epsilon": repr(float(model.eps)),
        "trained": "true",
        "description": description,
    }
    meta.update(extra_meta or {})
    write_safetensors(path, arrays, meta)


def load_mdrun(path, dtype=torch.float64, device="cpu"):
    """A PaiNNEnergy holding the weights of an mdrun-painn file (gaussian basis, per-layer filters)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    assert meta.get("radial_basis", "gaussian") == "gaussian" and meta.get("shared_filters", "false") == "false"
    F, T = int(meta["n_atom_basis"]), int(meta["n_interactions"])
    K = int(meta["n_rbf"])
    model = PaiNNEnergy(F, T, K, float(meta["cutoff"]), float(meta.get("epsilon", "1e-8")))
    H = t["output_modules.0.outnet.0.weight"].shape[0]
    model.output_modules[0].outnet = nn.Sequential(nn.Linear(F, H), nn.Linear(H, 1))
    sd = {k: v for k, v in t.items() if not k.startswith("energy.")}
    sd["energy_scale"] = t.get("energy.scale", torch.ones(1)).double().reshape(1)
    sd["energy_mean_per_atom"] = t.get("energy.mean_per_atom", torch.zeros(1)).double().reshape(1)
    sd["energy_atomref"] = t.get("energy.atomref", torch.zeros(N_EMBED)).double().reshape(N_EMBED)
    model.load_state_dict(sd)
    return model.to(device=device, dtype=dtype), meta
