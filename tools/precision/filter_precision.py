#!/usr/bin/env python3
"""Accuracy study for tensor-core filter products (docs/perf-notes.md, "What the 50 µs 200-atom
target needs"): how far do energies and forces move when the filter network's product
φ(d) · Wᵀ runs in reduced-precision arithmetic, the rest of PaiNN staying in f32?

The reference is the same model in f64 (tools/baseline/torch_painn.py's PaiNN, which follows
schnetpack). Emulated on the CPU, no GPU needed:
  f32      every product and sum in f32 (what mdrun's kernels do today);
  tf32     φ and W rounded to TF32 (10 explicit mantissa bits) before the product, f32 sums
           (one tensor-core pass);
  3xtf32   a = hi + lo split of both operands into TF32, hi·hi + hi·lo + lo·hi in f32 (three
           passes, the usual split-precision trick);
  bf16     φ and W rounded to bf16 (7 bits), f32 sums;
  3xbf16   the same split with bf16 parts.
Forces come from autograd; the rounding is straight-through (its derivative is taken as 1), so
the backward product uses the same rounded weights but an unrounded ∂φ/∂d: a lower bound on the
force error of a tensor-core backward pass.

Usage: python3 tools/precision/filter_precision.py [--model M] [--systems S ...]
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "baseline"))
from torch_painn import PaiNN, radius_graph, read_structure  # noqa: E402


def round_mantissa(x, bits):
    """x rounded to nearest (ties away) with `bits` explicit mantissa bits, as f32."""
    x = x.to(torch.float32)
    i = x.view(torch.int32)
    drop = 23 - bits
    half = 1 << (drop - 1)
    mask = ~((1 << drop) - 1)
    r = ((i + half) & mask).view(torch.float32)
    return torch.where(torch.isfinite(x), r, x)


class StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits):
        return round_mantissa(x, bits)

    @staticmethod
    def backward(ctx, g):
        return g, None


def rounded(x, bits):
    return StraightThrough.apply(x, bits)


def product(a, b, mode):
    """a @ b in the emulated arithmetic (inputs f32, result f32)."""
    if mode == "f32":
        return a @ b
    bits = {"tf32": 10, "3xtf32": 10, "bf16": 7, "3xbf16": 7}[mode]
    a_hi, b_hi = rounded(a, bits), rounded(b, bits)
    if not mode.startswith("3x"):
        return a_hi @ b_hi
    a_lo, b_lo = rounded(a - a_hi, bits), rounded(b - b_hi, bits)
    return a_hi @ b_hi + (a_hi @ b_lo + a_lo @ b_hi)


class EmulatedPaiNN(PaiNN):
    """PaiNN in f32 whose filter-network product runs in `mode`."""

    def __init__(self, path, mode):
        super().__init__(path, torch.float32, "cpu")
        self.mode = mode

    def lin(self, name, x, bias=True):
        if name != "representation.filter_net":
            return super().lin(name, x, bias)
        y = product(x, self.t[name + ".weight"].T.contiguous(), self.mode)
        return y + self.t[name + ".bias"] if bias else y


def energy_forces(model, numbers, pos, cell, dtype):
    pos = torch.tensor(pos, dtype=dtype)
    c = torch.tensor(cell, dtype=dtype) if cell is not None else None
    wrapped, i, j, shift = radius_graph(pos, c, model.cutoff)
    wrapped = wrapped.detach().requires_grad_(True)
    e = model(torch.tensor(numbers), wrapped, i, j, shift)
    (g,) = torch.autograd.grad(e, wrapped)
    return float(e), (-g).double()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/painn-hcno-f128.safetensors")
    p.add_argument("--systems", nargs="+", default=[
        "systems/water.xyz", "systems/benzene.xyz", "systems/alanine_dipeptide.pdb",
        "systems/water_cluster_33.xyz", "systems/waterbox_64.xyz"])
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    reference = PaiNN(a.model, torch.float64, "cpu")
    modes = ["f32", "tf32", "3xtf32", "bf16", "3xbf16"]
    models = {m: EmulatedPaiNN(a.model, m) for m in modes}
    print("| system | atoms | arithmetic of the filter product | |ΔE|/|E| | |ΔE|/atom (eV) | max |ΔF| (eV/Å) | force RMSE (eV/Å) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for spec in a.systems:
        name, numbers, pos, cell = read_structure(spec)
        e_ref, f_ref = energy_forces(reference, numbers, pos, cell, torch.float64)
        for m in modes:
            e, f = energy_forces(models[m], numbers, pos, cell, torch.float32)
            d = f - f_ref
            print(f"| {name} | {len(numbers)} | {m} | {abs(e - e_ref) / abs(e_ref):.2e} | "
                  f"{abs(e - e_ref) / len(numbers):.2e} | {float(d.abs().max()):.2e} | "
                  f"{float(d.pow(2).mean().sqrt()):.2e} |", flush=True)


if __name__ == "__main__":
    main()
