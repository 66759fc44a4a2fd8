#!/usr/bin/env python3
"""The PyTorch baseline for `mdrun bench`: the same PaiNN, with the same weights (an mdrun-painn
safetensors file), computed the way the planning document's Python code base does it: plain
PyTorch ops, an O(N^2) radius graph rebuilt at every force call, forces by autograd.

    python tools/baseline/torch_painn.py --model models/painn-random-hcno-f128.safetensors \
        --systems systems/benzene.xyz systems/waterbox_64.xyz@4 --json torch.json
    python tools/baseline/torch_painn.py --check --device cpu --model M --systems S ...  # vs mdrun eval

Rows use the JSON schema of `mdrun bench` (docs/bench-schema.md), one per system and
configuration: `torch-eager` (force call: radius graph + energy + autograd forces; MD step: velocity
Verlet in torch around it), `torch-compile` (the same with the model's forward through
torch.compile, default mode; skipped with the reason if compiling fails), `torch-ase-md` (ASE's
VelocityVerlet with this model as the calculator; skipped with the reason when ASE is missing).
Only stock PyTorch is needed (no torch-cluster or torch_scatter), so the O(N^2) radius graph is
the one a stock install can build.
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


SCHEMA = "mdrun-bench/2"
ROW_FIELDS = [
    "system", "atoms", "periodic", "config", "device", "status", "reason", "neighbor_search", "kernels",
    "cuda_graph", "timestep_fs", "steps_timed", "median_us_per_step", "mean_us_per_step", "std_us_per_step",
    "min_us_per_step", "max_us_per_step", "steps_per_second", "ns_per_day", "atom_steps_per_second",
    "force_calls_timed", "median_us_per_force_call", "mean_us_per_force_call", "std_us_per_force_call",
    "min_us_per_force_call", "max_us_per_force_call", "gpu_memory_bytes", "energy_error_per_atom_ev",
    "force_rmse_ev_per_angstrom", "force_max_error_ev_per_angstrom", "accuracy_note",
]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def sampled(fn, device, budget_s, min_samples, max_samples, per_sample=1):
    """µs per repetition of `fn` (which runs `per_sample` repetitions), one value per sample, until
    the budget is spent (at least min_samples, at most max_samples); synchronised around each."""
    samples, start = [], time.perf_counter()
    while len(samples) < max_samples and (len(samples) < min_samples or time.perf_counter() - start < budget_s):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e6 / per_sample)
    return samples


def stats(samples):
    s = sorted(samples)
    return {
        "median": statistics.median(s),
        "mean": statistics.mean(s),
        "std": statistics.pstdev(s),
        "min": s[0],
        "max": s[-1],
    }


def new_row(name, atoms, periodic, config, device_text, timestep_fs):
    r = {k: None for k in ROW_FIELDS}
    r.update(system=name, atoms=atoms, periodic=periodic, config=config, device=device_text, status="ok",
             neighbor_search="all-pairs (torch.cdist per image, every call)", kernels="pytorch", cuda_graph=False,
             timestep_fs=timestep_fs,
             accuracy_note="not computed here: the baseline is held to mdrun's f64 reference with --check")
    return r


def set_force_call(r, samples):
    st = stats(samples)
    r["force_calls_timed"] = len(samples)
    for k in ("median", "mean", "std", "min", "max"):
        r[f"{k}_us_per_force_call"] = st[k]


def set_step(r, samples, per_sample):
    st = stats(samples)
    r["steps_timed"] = len(samples) * per_sample
    for k in ("median", "mean", "std", "min", "max"):
        r[f"{k}_us_per_step"] = st[k]
    per_second = 1e6 / st["median"]
    r["steps_per_second"] = per_second
    r["ns_per_day"] = per_second * r["timestep_fs"] * 86400e-6
    r["atom_steps_per_second"] = per_second * r["atoms"]


def skip(r, why):
    r["status"] = "skipped"
    r["reason"] = " ".join(str(why).split())[:500]
    return r


def reset_memory(device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def peak_memory(device, before):
    return torch.cuda.max_memory_allocated() - before if device == "cuda" else None


MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
ACCELERATION = 9.648533e-3  # (eV/Å)/amu in Å/fs²


def torch_md(model_fn, z, x, c, numbers, dt, dtype, device):
    """The planning document's MD harness in torch: velocity Verlet on the device, one force call
    per step. Returns a function running `steps` steps."""
    inv_m = torch.tensor([ACCELERATION / MASSES[k] for k in numbers], dtype=dtype, device=device)[:, None]
    v = torch.zeros_like(x)
    state = {"x": x.clone(), "f": model_fn(z, x, c)[1]}

    def steps(n):
        for _ in range(n):
            v.add_(0.5 * dt * state["f"] * inv_m)
            state["x"] = state["x"] + dt * v
            state["f"] = model_fn(z, state["x"], c)[1]
            v.add_(0.5 * dt * state["f"] * inv_m)

    return steps


def bench_force_and_md(r, model_fn, z, x, c, numbers, args, dtype, per_sample):
    before = reset_memory(args.device)
    for _ in range(3):
        model_fn(z, x, c)  # warm-up (and, for torch.compile, the compilation)
    set_force_call(r, sampled(lambda: model_fn(z, x, c), args.device, args.budget, args.min_samples, args.max_samples))
    md = torch_md(model_fn, z, x, c, numbers, args.timestep, dtype, args.device)
    md(per_sample)  # warm-up: new pair counts recompile under torch.compile
    set_step(r, sampled(lambda: md(per_sample), args.device, args.budget, args.min_samples, args.max_samples, per_sample), per_sample)
    r["gpu_memory_bytes"] = peak_memory(args.device, before)


def ase_md(r, model, numbers, pos, cell, args, dtype, per_sample):
    """ASE's VelocityVerlet with this model as its calculator: the planning document's harness
    (positions to the device and forces back every step)."""
    try:
        from ase import Atoms, units
        from ase.calculators.calculator import Calculator, all_changes
        from ase.md.verlet import VelocityVerlet
    except ImportError as e:
        return skip(r, f"ASE is not installed ({e}); pip install ase")
    z = torch.tensor(numbers, device=args.device)
    c = None if cell is None else torch.tensor(cell, dtype=dtype, device=args.device)

    class TorchPaiNN(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            x = torch.tensor(self.atoms.positions, dtype=dtype, device=args.device)
            energy, forces = energy_forces(model, z, x, c)
            self.results = {"energy": float(energy), "forces": forces.detach().cpu().double().numpy()}

    atoms = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=cell is not None)
    atoms.calc = TorchPaiNN()
    dyn = VelocityVerlet(atoms, timestep=args.timestep * units.fs)
    before = reset_memory(args.device)
    dyn.run(per_sample)  # warm-up
    set_step(r, sampled(lambda: dyn.run(per_sample), args.device, args.budget, args.min_samples, args.max_samples, per_sample), per_sample)
    r["gpu_memory_bytes"] = peak_memory(args.device, before)
    r["neighbor_search"] += "; ASE VelocityVerlet on the host"
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--systems", nargs="+", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (default for timing) or float64 (default for --check)")
    ap.add_argument("--json")
    ap.add_argument("--configs", default="torch-eager,torch-compile,torch-ase-md",
                    help="comma-separated: torch-eager, torch-compile, torch-ase-md")
    ap.add_argument("--timestep", type=float, default=0.5, help="fs, as mdrun bench's default")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement (at least --min-samples)")
    ap.add_argument("--min-samples", type=int, default=5)
    ap.add_argument("--max-samples", type=int, default=30)
    ap.add_argument("--check", action="store_true", help="compare with `mdrun eval --device cpu` and exit")
    ap.add_argument("--mdrun", default="target/release/mdrun")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype or ("float64" if args.check else "float32"))
    model = PaiNN(args.model, dtype, args.device)
    configs = [s.strip() for s in args.configs.split(",") if s.strip()]
    unknown = set(configs) - {"torch-eager", "torch-compile", "torch-ase-md"}
    if unknown:
        sys.exit(f"unknown --configs: {sorted(unknown)}")
    rows, worst = [], 0
    compiled = None
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
        per_sample = 5 if n < 5000 else 1
        for config in configs:
            r = new_row(name, n, cell is not None, config, dev_text, args.timestep)
            try:
                if config == "torch-eager":
                    bench_force_and_md(r, lambda z, x, c: energy_forces(model, z, x, c), z, x, c, numbers, args, dtype, per_sample)
                elif config == "torch-compile":
                    r["kernels"] = "pytorch, torch.compile (default mode) of the model's forward"
                    if compiled is None:
                        compiled = torch.compile(model)
                    bench_force_and_md(r, lambda z, x, c: energy_forces(compiled, z, x, c), z, x, c, numbers, args, dtype, per_sample)
                else:
                    ase_md(r, model, numbers, pos, cell, args, dtype, per_sample)
            except Exception as e:  # a failed compile or an out-of-memory is recorded, not fatal
                skip(r, f"{type(e).__name__}: {e}")
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(r)
            if r["status"] == "ok":
                fc = r["median_us_per_force_call"]
                print(f"{name} ({n} atoms) {config}: force call {fc:.0f} µs, " if fc else f"{name} ({n} atoms) {config}: ", end="")
                print(f"MD step {r['median_us_per_step']:.0f} µs", flush=True)
            else:
                print(f"{name} ({n} atoms) {config}: skipped: {r['reason']}", flush=True)
    if args.check:
        sys.exit(1 if worst else 0)
    print("| system | atoms | config | force call µs | MD step µs |\n|---|---:|---|---:|---:|")
    for r in rows:
        fmt = lambda v: "—" if v is None else f"{v:.1f}"
        print(f"| {r['system']} | {r['atoms']} | {r['config']} | {fmt(r['median_us_per_force_call'])} | {fmt(r['median_us_per_step'])} |")
    if args.json:
        report = {
            "schema": SCHEMA,
            "mdrun_version": None,
            "commit": None,
            "created_unix_s": int(time.time()),
            "host_cpu": None,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
            "model": {"file": args.model, "features": model.F, "interactions": model.T,
                      "rbf": int(model.t["representation.radial_basis.offsets"].shape[0]), "cutoff_angstrom": model.cutoff},
            "timestep_fs": args.timestep,
            "skin_angstrom": 0.0,
            "temperature_k": 0.0,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
