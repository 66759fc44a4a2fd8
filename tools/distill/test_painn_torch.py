#!/usr/bin/env python3
"""Check the batched PaiNN of painn_torch.py against tools/baseline/torch_painn.py (float64, CPU) on
the random-weight model and a batch of several molecules at once.

    python3 tools/distill/test_painn_torch.py [--model models/painn-random-hcno-f128.safetensors]
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "baseline"))
import torch_painn  # noqa: E402
from painn_torch import energy_forces, load_mdrun, radius_pairs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/painn-random-hcno-f128.safetensors"))
    ap.add_argument("--tol", type=float, default=1e-10)
    args = ap.parse_args()
    torch.manual_seed(0)
    systems = ["water.xyz", "ethanol.xyz", "benzene.xyz", "alanine_dipeptide.pdb", "water_cluster_17.xyz"]
    ref = torch_painn.PaiNN(args.model, torch.float64, "cpu")
    mine, _ = load_mdrun(args.model)
    Z, X, I, J, AF, E_ref, F_ref = [], [], [], [], [], [], []
    n0 = 0
    for k, s in enumerate(systems):
        _, numbers, pos, _ = torch_painn.read_structure(os.path.join(ROOT, "systems", s))
        z = torch.tensor(numbers)
        x = torch.tensor(pos, dtype=torch.float64) + 0.05 * torch.randn(len(numbers), 3, dtype=torch.float64)
        e, f = torch_painn.energy_forces(ref, z, x, None)
        E_ref.append(e.reshape(1))
        F_ref.append(f)
        i, j = radius_pairs(x, mine.cutoff)
        Z.append(z), X.append(x), I.append(i + n0), J.append(j + n0), AF.append(torch.full((len(z),), k))
        n0 += len(z)
    e, f = energy_forces(mine, torch.cat(Z), torch.cat(X), torch.cat(I), torch.cat(J), torch.cat(AF), len(systems))
    de = (e - torch.cat(E_ref)).abs().max().item()
    rel = ((e - torch.cat(E_ref)).abs() / torch.cat(E_ref).abs()).max().item()
    df = (f - torch.cat(F_ref)).abs().max().item()
    print(f"batched PaiNN vs tools/baseline/torch_painn.py (f64, {len(systems)} molecules in one batch): "
          f"max |dE| {de:.2e} eV (rel {rel:.1e}), max |dF| {df:.2e} eV/A")
    sys.exit(0 if (de < args.tol * max(1.0, torch.cat(E_ref).abs().max().item()) and df < args.tol) else 1)


if __name__ == "__main__":
    main()
