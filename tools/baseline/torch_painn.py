#!/usr/bin/env python3
"""The PyTorch baseline for `mdrun bench`: the same PaiNN, with the same weights (an mdrun-painn
safetensors file), computed the way the planning document's Python code base does it: plain
PyTorch ops, an O(N^2) radius graph rebuilt at every force call, forces by autograd.

    python tools/baseline/torch_painn.py --model models/painn-random-hcno-f128.safetensors \
        --systems systems/benzene.xyz systems/waterbox_64.xyz@4 --json torch.json
    python tools/baseline/torch_painn.py --check --device cpu --model M --systems S ...  # vs mdrun eval

Rows use the JSON schema of `mdrun bench`. Only stock PyTorch is used (no torch-cluster,
torch_scatter or ASE), so it runs on any CUDA PyTorch install.
"""
import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time

import torch
from safetensors import safe_open


def read_structure(spec):
    """(name, numbers, positions [N,3] Å, cell rows or None) from .xyz / extended .xyz / .pdb;
    FILE@N replicates a periodic system N×N×N."""
    path, copies = (spec.split("@") + ["1"])[:2]
    copies = int(copies)
    symbols, pos, cell = [], [], None
    if path.endswith(".pdb"):
        for line in open(path):
            if line.startswith(("ATOM", "HETATM")):
                pos.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
                symbols.append(line[76:78].strip() or line[12:16].strip()[0])
    else:
        lines = open(path).read().splitlines()
        n = int(lines[0])
        m = re.search(r'Lattice="([^"]+)"', lines[1])
        if m:
            v = [float(x) for x in m.group(1).split()]
            cell = [v[0:3], v[3:6], v[6:9]]
        for line in lines[2 : 2 + n]:
            f = line.split()
            symbols.append(f[0])
            pos.append([float(x) for x in f[1:4]])
    table = {"H": 1, "C": 6, "N": 7, "O": 8}
    numbers = [table[s.capitalize()] for s in symbols]
    name = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if copies > 1:
        assert cell is not None, "only periodic systems can be replicated"
        big_pos, big_num = [], []
        for a in range(copies):
            for b in range(copies):
                for c in range(copies):
                    shift = [a * cell[0][k] + b * cell[1][k] + c * cell[2][k] for k in range(3)]
                    big_pos += [[p[k] + shift[k] for k in range(3)] for p in pos]
                    big_num += numbers
        pos, numbers = big_pos, big_num
        cell = [[x * copies for x in row] for row in cell]
        name += f"×{copies}³"
    return name, numbers, pos, cell


class PaiNN(torch.nn.Module):
    """PaiNN as schnetpack 2.x computes it (docs/model-format.md), from an mdrun model file."""

    def __init__(self, path, dtype, device):
        super().__init__()
        with safe_open(path, "pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k).to(dtype=dtype, device=device) for k in f.keys()}
        assert meta.get("radial_basis", "gaussian") == "gaussian", "this baseline implements the Gaussian basis"
        self.F = int(meta["n_atom_basis"])
        self.T = int(meta["n_interactions"])
        self.cutoff = float(meta["cutoff"])
        self.eps = float(meta.get("epsilon", "1e-8"))
        self.shared = meta.get("shared_filters", "false") == "true"
        self.t = t
        self.scale = float(t["energy.scale"][0]) if "energy.scale" in t else 1.0
        self.mean = float(t["energy.mean_per_atom"][0]) if "energy.mean_per_atom" in t else 0.0
        self.atomref = t.get("energy.atomref")

    def lin(self, name, x, bias=True):
        y = x @ self.t[name + ".weight"].T
        return y + self.t[name + ".bias"] if bias else y

    def forward(self, numbers, pos, i, j, shift):
        t, F = self.t, self.F
        r = pos[j] - pos[i] + shift
        d = torch.linalg.norm(r, dim=1)
        u = r / d[:, None]
        offsets, widths = t["representation.radial_basis.offsets"], t["representation.radial_basis.widths"]
        phi = torch.exp(-0.5 * (d[:, None] - offsets) ** 2 / widths**2)
        fc = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0) * (d < self.cutoff)
        W = self.lin("representation.filter_net", phi) * fc[:, None]
        n = numbers.shape[0]
        q = t["representation.embedding.weight"][numbers]
        mu = torch.zeros(n, 3, F, dtype=pos.dtype, device=pos.device)
        silu = torch.nn.functional.silu
        for k in range(self.T):
            p = f"representation.interactions.{k}.interatomic_context_net"
            x = self.lin(p + ".1", silu(self.lin(p + ".0", q)))
            off = 0 if self.shared else 3 * F * k
            m = W[:, off : off + 3 * F] * x[j]
            s, R, v = torch.split(m, F, dim=1)
            q = q + torch.zeros_like(q).index_add(0, i, s)
            mu = mu + torch.zeros_like(mu).index_add(0, i, R[:, None, :] * u[:, :, None] + v[:, None, :] * mu[j])
            p = f"representation.mixing.{k}"
            mixed = self.lin(p + ".mu_channel_mix", mu, bias=False)
            V, U = torch.split(mixed, F, dim=2)
            norm = torch.sqrt((V**2).sum(1) + self.eps)
            a = self.lin(p + ".intraatomic_context_net.1", silu(self.lin(p + ".intraatomic_context_net.0", torch.cat([q, norm], 1))))
            a_ss, a_vv, a_sv = torch.split(a, F, dim=1)
            q = q + a_ss + a_sv * (V * U).sum(1)
            mu = mu + a_vv[:, None, :] * U
        y = self.lin("output_modules.0.outnet.1", silu(self.lin("output_modules.0.outnet.0", q)))
        energy = self.scale * y.sum() + self.mean * n
        if self.atomref is not None:
            energy = energy + self.atomref[numbers].sum()
        return energy


def radius_graph(pos, cell, cutoff):
    """All pairs within `cutoff` by an N×N distance matrix per lattice image (O(N²))."""
    n = pos.shape[0]
    shifts = [torch.zeros(3, dtype=pos.dtype, device=pos.device)]
    if cell is not None:
        inv = torch.linalg.inv(cell)
        frac = pos @ inv
        pos = (frac - torch.floor(frac)) @ cell
        vol = torch.abs(torch.det(cell))
        widths = [vol / torch.linalg.norm(torch.cross(cell[(a + 1) % 3], cell[(a + 2) % 3], dim=0)) for a in range(3)]
        reach = [int(math.ceil(cutoff / float(w))) for w in widths]
        shifts = [
            a * cell[0] + b * cell[1] + c * cell[2]
            for a in range(-reach[0], reach[0] + 1)
            for b in range(-reach[1], reach[1] + 1)
            for c in range(-reach[2], reach[2] + 1)
        ]
    ii, jj, ss = [], [], []
    for shift in shifts:
        dist = torch.cdist(pos, pos + shift)
        mask = dist < cutoff
        if float(torch.abs(shift).sum()) == 0.0:
            mask.fill_diagonal_(False)
        i, j = mask.nonzero(as_tuple=True)
        ii.append(i)
        jj.append(j)
        ss.append(shift.expand(i.shape[0], 3))
    return pos, torch.cat(ii), torch.cat(jj), torch.cat(ss)


def energy_forces(model, numbers, pos, cell):
    pos = pos.detach()
    wrapped, i, j, shift = radius_graph(pos, cell, model.cutoff)
    wrapped = wrapped.detach().requires_grad_(True)
    energy = model(numbers, wrapped, i, j, shift)
    (grad,) = torch.autograd.grad(energy, wrapped)
    return energy.detach(), -grad


def timed(fn, repeats, device):
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


def row(name, atoms, config, device_text, samples, steps_per_sample=1):
    per_step = sorted(s / steps_per_sample for s in samples)
    med = statistics.median(per_step)
    return {
        "system": name,
        "atoms": atoms,
        "config": config,
        "device": device_text,
        "steps_timed": len(samples) * steps_per_sample,
        "median_us_per_step": med,
        "min_us_per_step": per_step[0],
        "max_us_per_step": per_step[-1],
        "mean_us_per_step": statistics.mean(per_step),
        "std_us_per_step": statistics.pstdev(per_step),
        "steps_per_second": 1e6 / med,
        "ns_per_day": 1e6 / med * 0.5 * 86400e-6,
        "atom_steps_per_second": 1e6 / med * atoms,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--systems", nargs="+", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (default for timing) or float64 (default for --check)")
    ap.add_argument("--json")
    ap.add_argument("--check", action="store_true", help="compare with `mdrun eval --device cpu` and exit")
    ap.add_argument("--mdrun", default="target/release/mdrun")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype or ("float64" if args.check else "float32"))
    model = PaiNN(args.model, dtype, args.device)
    masses_table = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
    rows, worst = [], 0
    for spec in args.systems:
        name, numbers, pos, cell = read_structure(spec)
        z = torch.tensor(numbers, device=args.device)
        x = torch.tensor(pos, dtype=dtype, device=args.device)
        c = None if cell is None else torch.tensor(cell, dtype=dtype, device=args.device)
        if args.check:
            energy, forces = energy_forces(model, z, x, c)
            ref = json.loads(subprocess.run([args.mdrun, "eval", spec, "--model", args.model, "--device", "cpu"], check=True, capture_output=True, text=True).stdout)
            e_err = abs(float(energy) - ref["energy_ev"]) / abs(ref["energy_ev"])
            f_err = float((forces.cpu().double() - torch.tensor(ref["forces_ev_per_angstrom"], dtype=torch.float64)).abs().max())
            print(f"{name}: energy rel err {e_err:.1e}, force max abs err {f_err:.1e} eV/Å")
            worst = worst or (e_err > 1e-10 or f_err > 1e-8)
            continue
        n = len(numbers)
        dev_text = f"{args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}), torch {torch.__version__}, {str(dtype).split('.')[-1]}"
        repeats = 30 if n < 1000 else 7
        for _ in range(3):
            energy_forces(model, z, x, c)  # warm-up
        rows.append(row(name, n, "torch-eager-force-call", dev_text, timed(lambda: energy_forces(model, z, x, c), repeats, args.device)))
        # The planning document's MD harness in torch: velocity Verlet, force call every step.
        inv_m = torch.tensor([9.648533e-3 / masses_table[k] for k in numbers], dtype=dtype, device=args.device)[:, None]
        v = torch.zeros_like(x)
        state = {"x": x.clone(), "f": energy_forces(model, z, x, c)[1]}

        def md_steps(steps=5):
            for _ in range(steps):
                v.add_(0.25 * state["f"] * inv_m)
                state["x"] = state["x"] + 0.5 * v
                state["f"] = energy_forces(model, z, state["x"], c)[1]
                v.add_(0.25 * state["f"] * inv_m)

        rows.append(row(name, n, "torch-md-step", dev_text, timed(md_steps, max(3, repeats // 2), args.device), 5))
        print(f"{name} ({n} atoms): eager {rows[-2]['median_us_per_step']:.0f} µs, md step {rows[-1]['median_us_per_step']:.0f} µs", flush=True)
    if args.check:
        sys.exit(1 if worst else 0)
    print("| system | atoms | config | median µs/step | steps/s |\n|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['system']} | {r['atoms']} | {r['config']} | {r['median_us_per_step']:.1f} | {r['steps_per_second']:.1f} |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
