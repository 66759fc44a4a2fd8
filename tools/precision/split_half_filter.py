"""How exact is the tensor-core message kernels' filter product (kernels/message_mma.cu)?

The kernels compute each filter value w·φ(d) + b (w one row of the filter network, φ the
Gaussian radial basis at distance d) as lo·hi + hi·lo + hi·hi in f32, with every operand split
into IEEE half hi = fp16(a) and lo = fp16(a − hi) (cvt.rn: round to nearest even, as numpy's
float16). Where |a| < 2⁻³ the lo half is subnormal and the split keeps a fixed ~3e-8 absolute
error instead of 22 significant bits (docs/perf-notes.md, review of v31–v33). This script
measures, per filter part and over a dense grid of distances, the error against f64 of:

  f32       Σ_k w_k φ_k in f32 (what the scalar kernels do)
  split     the kernels' split as built (v31–v33)
  scaled    the same with w and φ (and ∂φ/∂d) first scaled by exact powers of two that put their
            largest magnitude near 2¹⁴, the result scaled back (the planned fix)

for the filter values and their d-derivatives (∂φ/∂d in place of φ, no bias), the two products
the kernels run. No GPU: the arithmetic is emulated exactly (f16 rounding, f32 accumulation in
the kernels' order: lo·hi, hi·lo, hi·hi per k-step; within an mma the k-sum order is the
hardware's, emulated here as sequential f32 sums, which bounds the same rounding).

Usage: python3 tools/precision/split_half_filter.py [--model models/painn-hcno-f128.safetensors]
Needs numpy.
"""

import argparse
import json
import struct

import numpy as np


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]

    def tensor(name):
        t = header[name]
        dtype = {"F64": np.float64, "F32": np.float32}[t["dtype"]]
        a, b = t["data_offsets"]
        return np.frombuffer(body[a:b], dtype=dtype).reshape(t["shape"]).astype(np.float64)

    meta = header["__metadata__"]
    return (
        tensor("representation.filter_net.weight"),
        tensor("representation.filter_net.bias"),
        tensor("representation.radial_basis.offsets"),
        tensor("representation.radial_basis.widths"),
        float(meta["cutoff"]),
    )


def split(a):
    """hi, lo halves of f32 values, as the kernels' split_half2 (cvt.rn.f16x2.f32)."""
    a = a.astype(np.float32)
    hi = a.astype(np.float16)
    lo = (a - hi.astype(np.float32)).astype(np.float16)
    return hi.astype(np.float32), lo.astype(np.float32)


def split_product(w, phi):
    """w [rows, K] · phi [points, K]ᵀ as the kernels do: lo·hi + hi·lo + hi·hi, f32 sums."""
    w_hi, w_lo = split(w)
    p_hi, p_lo = split(phi)
    acc = np.zeros((w.shape[0], phi.shape[0]), dtype=np.float32)
    for a, b in ((w_lo, p_hi), (w_hi, p_lo), (w_hi, p_hi)):
        for k in range(w.shape[1]):
            acc = (acc + np.outer(a[:, k], b[:, k]).astype(np.float32)).astype(np.float32)
    return acc.astype(np.float64)


def power_of_two_scale(a, target=2.0**14):
    """Exact power of two s with max |a · s| ≤ target (a scale the kernels can undo exactly)."""
    m = np.max(np.abs(a))
    return 2.0 ** np.floor(np.log2(target / m)) if m > 0 else 1.0


def f32_product(w, phi):
    w32, p32 = w.astype(np.float32), phi.astype(np.float32)
    acc = np.zeros((w.shape[0], phi.shape[0]), dtype=np.float32)
    for k in range(w.shape[1]):
        acc = (acc + np.outer(w32[:, k], p32[:, k]).astype(np.float32)).astype(np.float32)
    return acc.astype(np.float64)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/painn-hcno-f128.safetensors")
    p.add_argument("--points", type=int, default=2000, help="distances in (0.5 Å, cutoff)")
    p.add_argument("--weight-scale", type=float, default=1.0,
                   help="multiply the filter network (weights and bias) by this: a model with smaller weights")
    a = p.parse_args()
    weight, bias, offsets, widths, cutoff = load(a.model)
    weight, bias = weight * a.weight_scale, bias * a.weight_scale
    coeffs = -0.5 / widths**2
    d = np.linspace(0.5, cutoff, a.points, endpoint=False)[:, None]
    phi = np.exp(coeffs * (d - offsets) ** 2)
    dphi = 2 * coeffs * (d - offsets) * phi
    small = np.mean(np.abs(weight) < 0.125)
    print(f"{a.model}: filter weights {weight.shape}, |w| median {np.median(np.abs(weight)):.3g}, "
          f"{100 * small:.0f}% below 2^-3 (lo subnormal); max |dphi/dd| {np.max(np.abs(dphi)):.3g} 1/Å")
    for label, basis, b in (("filter w·φ + b", phi, bias), ("derivative w·∂φ/∂d", dphi, 0 * bias)):
        exact = weight @ basis.T + b[:, None]
        scale_w, scale_p = power_of_two_scale(weight), power_of_two_scale(basis)
        results = {
            "f32": f32_product(weight, basis) + b[:, None],
            "split": split_product(weight, basis) + b[:, None],
            "scaled": split_product(weight * scale_w, basis * scale_p) / (scale_w * scale_p) + b[:, None],
        }
        size = np.max(np.abs(exact))
        print(f"  {label}: max |value| {size:.3g}; scales 2^{np.log2(scale_w):.0f} (w), 2^{np.log2(scale_p):.0f} (basis)")
        for name, value in results.items():
            err = np.abs(value - exact)
            print(f"    {name:7s} max abs error {np.max(err):.2e}, relative to the largest value {np.max(err) / size:.2e}, "
                  f"RMS {np.sqrt(np.mean(err**2)):.2e}")


if __name__ == "__main__":
    main()
