#!/usr/bin/env python3
"""The student's force (and energy) error against the GFN2-xTB teacher along a trajectory written
by mdrun (multi-frame XYZ: element x y z in Å; extended XYZ with Lattice="..." for periodic runs,
whose wrapped coordinates are handled by minimum image in both the student and the teacher).

    python3 tools/distill/trajectory_error.py traj.xyz --model models/painn-hcno-f128.safetensors \
        --every 100 --json traj-error.json

Teacher: tblite GFN2-xTB (periodic with the lattice when the comment line has one, unless --open).
Student: the exported model in tools/baseline/torch_painn.py (float64, CPU; verified against
`mdrun eval` to 1e-15), or `mdrun eval` itself with --use-mdrun. Reports per sampled frame and
overall force MAE / RMSE / max |error| (eV/Å), the energy error per atom (absolute, and relative to
the first sampled frame: (E_s - E_s0) - (E_t - E_t0), which is what matters for dynamics).
Needs tblite, numpy, torch, safetensors.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HARTREE_EV = 27.211386245988
BOHR_A = 0.529177210903
SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8}
NAMES = {v: k for k, v in SYMBOLS.items()}


def read_xyz_frames(path):
    """Yield (numbers, positions [N,3] Å, cell [3,3] or None, comment) for each frame."""
    with open(path) as fh:
        while True:
            line = fh.readline()
            if not line:
                return
            if not line.strip():
                continue
            n = int(line.split()[0])
            comment = fh.readline().rstrip("\n")
            m = re.search(r'Lattice="([^"]+)"', comment)
            cell = np.array([float(x) for x in m.group(1).split()]).reshape(3, 3) if m else None
            z, x = [], []
            for _ in range(n):
                f = fh.readline().split()
                z.append(SYMBOLS[f[0].capitalize()])
                x.append([float(v) for v in f[1:4]])
            yield np.array(z), np.array(x, dtype=np.float64), cell, comment


class Teacher:
    def __init__(self, numbers, cell):
        from tblite.interface import Calculator

        self.Calculator, self.numbers, self.cell = Calculator, numbers, cell
        self.calc, self.res = None, None

    def __call__(self, pos):
        kw = {}
        if self.cell is not None:
            kw = dict(lattice=self.cell / BOHR_A, periodic=np.array([True, True, True]))
        if self.calc is None:
            self.calc = self.Calculator("GFN2-xTB", self.numbers, pos / BOHR_A, **kw)
            self.calc.set("verbosity", 0)
            self.res = self.calc.singlepoint()
        else:
            self.calc.update(pos / BOHR_A, **({"lattice": kw["lattice"]} if kw else {}))
            self.res = self.calc.singlepoint(self.res)
        return float(self.res.get("energy")) * HARTREE_EV, -np.array(self.res.get("gradient")) * (HARTREE_EV / BOHR_A)


class Student:
    def __init__(self, model, use_mdrun, mdrun):
        self.model_path, self.use_mdrun, self.mdrun = model, use_mdrun, mdrun
        if not use_mdrun:
            import torch

            sys.path.insert(0, os.path.join(ROOT, "tools", "baseline"))
            import torch_painn

            self.torch, self.tp = torch, torch_painn
            self.model = torch_painn.PaiNN(model, torch.float64, "cpu")

    def __call__(self, numbers, pos, cell):
        if self.use_mdrun:
            with tempfile.NamedTemporaryFile("w", suffix=".xyz", delete=False) as fh:
                fh.write(f"{len(numbers)}\n")
                if cell is not None:
                    fh.write('Lattice="' + " ".join(repr(float(v)) for v in cell.ravel()) + '" Properties=species:S:1:pos:R:3 pbc="T T T"\n')
                else:
                    fh.write("frame\n")
                for z, p in zip(numbers, pos):
                    fh.write(f"{NAMES[int(z)]} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}\n")
            try:
                out = json.loads(subprocess.run([self.mdrun, "eval", fh.name, "--model", self.model_path, "--device", "cpu"],
                                                check=True, capture_output=True, text=True).stdout)
            finally:
                os.unlink(fh.name)
            return float(out["energy_ev"]), np.array(out["forces_ev_per_angstrom"], dtype=np.float64)
        t = self.torch
        c = None if cell is None else t.tensor(cell, dtype=t.float64)
        e, f = self.tp.energy_forces(self.model, t.tensor(numbers), t.tensor(pos, dtype=t.float64), c)
        return float(e), f.numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traj")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "painn-hcno-f128.safetensors"))
    ap.add_argument("--every", type=int, default=1, help="use every K-th frame")
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    ap.add_argument("--open", action="store_true", help="ignore the lattice (treat frames as open clusters)")
    ap.add_argument("--use-mdrun", action="store_true", help="student forces from `mdrun eval` instead of torch")
    ap.add_argument("--mdrun", default=os.path.join(ROOT, "target", "release", "mdrun"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    student = Student(args.model, args.use_mdrun, args.mdrun)
    teacher = None
    rows = []
    abs_sum = sq_sum = 0.0
    ncomp = 0
    fmax = 0.0
    t0 = time.time()
    print("| frame | atoms | F MAE (eV/Å) | F RMSE | F max | ΔE/atom abs (meV) | ΔE/atom rel. to first (meV) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for k, (z, x, cell, _) in enumerate(read_xyz_frames(args.traj)):
        if k % args.every:
            continue
        if args.max_frames and len(rows) >= args.max_frames:
            break
        cell = None if args.open else cell
        if teacher is None:
            teacher = Teacher(z, cell)
        else:
            teacher.cell = cell
        et, ft = teacher(x)
        es, fs = student(z, x, cell)
        err = fs - ft
        n = len(z)
        r = {"frame": k, "atoms": n, "force_mae": float(np.abs(err).mean()), "force_rmse": float(np.sqrt((err**2).mean())),
             "force_max": float(np.abs(err).max()), "energy_teacher_ev": et, "energy_student_ev": es,
             "energy_err_per_atom_mev": (es - et) / n * 1000}
        if rows:
            r0 = rows[0]
            r["energy_err_rel_per_atom_mev"] = ((es - r0["energy_student_ev"]) - (et - r0["energy_teacher_ev"])) / n * 1000
        else:
            r["energy_err_rel_per_atom_mev"] = 0.0
        rows.append(r)
        abs_sum += np.abs(err).sum()
        sq_sum += (err**2).sum()
        ncomp += err.size
        fmax = max(fmax, r["force_max"])
        print(f"| {k} | {n} | {r['force_mae']:.4f} | {r['force_rmse']:.4f} | {r['force_max']:.3f} | "
              f"{r['energy_err_per_atom_mev']:.3f} | {r['energy_err_rel_per_atom_mev']:.3f} |", flush=True)
    if not rows:
        sys.exit("no frames read")
    rel = np.array([r["energy_err_rel_per_atom_mev"] for r in rows[1:]] or [0.0])
    summary = {"trajectory": args.traj, "model": args.model, "frames_sampled": len(rows), "every": args.every,
               "periodic": rows and not args.open and cell is not None,
               "student": "mdrun eval" if args.use_mdrun else "tools/baseline/torch_painn.py (float64, CPU)",
               "teacher": "GFN2-xTB (tblite)", "force_mae": abs_sum / ncomp, "force_rmse": float(np.sqrt(sq_sum / ncomp)), "force_max": fmax,
               "energy_err_per_atom_mev_mean_abs": float(np.mean([abs(r["energy_err_per_atom_mev"]) for r in rows])),
               "energy_err_rel_per_atom_mev_mae": float(np.abs(rel).mean()), "seconds": time.time() - t0}
    print(f"\noverall ({len(rows)} frames): force MAE {summary['force_mae']:.4f} eV/Å, RMSE {summary['force_rmse']:.4f} eV/Å, "
          f"max {fmax:.3f} eV/Å; energy error per atom: mean |abs| {summary['energy_err_per_atom_mev_mean_abs']:.3f} meV, "
          f"relative-to-first MAE {summary['energy_err_rel_per_atom_mev_mae']:.3f} meV")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "frames": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
