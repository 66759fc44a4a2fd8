#!/usr/bin/env python3
"""Teacher data for distilling GFN2-xTB into PaiNN: teacher MD (Langevin, BAOAB, 0.5 fs) with
tblite GFN2-xTB at 300-1000 K plus Gaussian displacements of the sampled frames, for water,
ethanol, benzene, alanine dipeptide, small water clusters and pieces of liquid water (open
clusters cut from the periodic box systems/waterbox_64.xyz; GFN2 is run with open boundaries
throughout).

    OMP_NUM_THREADS=1 python3 tools/distill/make_dataset.py --seed 2025 --out tools/distill/data/hcno-gfn2.npz

The output is bit-for-bit reproducible from the seed (same tblite/numpy versions, one thread:
the script sets OMP_NUM_THREADS=1 itself before importing tblite). `--scale 0.05` gives a tiny
data set for smoke tests.

Units stored: positions Å, energy eV, forces eV/Å. tblite returns Hartree and Hartree/Bohr
gradients; converted with CODATA 2018 (1 Eh = 27.211386245988 eV, 1 Bohr = 0.529177210903 Å),
forces = -gradient.

npz layout (ragged arrays flattened, frame f owns atoms offsets[f]:offsets[f+1]):
  numbers [A] int8, positions [A,3] f64, forces [A,3] f64, offsets [n_frames+1] int64,
  energy [n_frames] f64, n_atoms [n_frames] int32, molecule [n_frames] int16 (index into
  molecule_names), traj [n_frames] int32 (index into traj_* arrays), split [n_frames] int8
  (0 train, 1 val, 2 test), kind [n_frames] int8 (0 MD frame, 1 Gaussian displacement of an MD
  frame), temperature [n_frames] f64 (K, of the trajectory), sigma [n_frames] f64 (Å, the
  displacement; 0 for MD frames), md_step [n_frames] int32;
  molecule_names [M] str, split_names [3] str, traj_molecule/traj_temperature/traj_split/
  traj_seed/traj_n_atoms [n_traj], traj_label [n_traj] str, info (JSON string).
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"  # before tblite is imported: bit-reproducible labels
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import io
import json
import sys
import time
import zipfile

import numpy as np

HARTREE_EV = 27.211386245988
BOHR_A = 0.529177210903
KB_EV = 8.617333262e-5  # eV/K
ACC = 9.648533212e-3  # 1 eV/(Å·amu) in Å/fs²
MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPLITS = ["train", "val", "test"]


def read_structure(path):
    """(numbers, positions Å, cell or None) from .xyz / extended .xyz / .pdb: the reader of the
    PyTorch baseline (tools/baseline/torch_painn.py), as arrays."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "baseline"))
    from torch_painn import read_structure as read_lists

    _, numbers, positions, cell = read_lists(path)
    return (
        np.array(numbers),
        np.array(positions, dtype=np.float64),
        None if cell is None else np.array(cell, dtype=np.float64).reshape(3, 3),
    )


class Teacher:
    """GFN2-xTB through tblite.interface; energy eV, forces eV/Å."""

    def __init__(self, numbers):
        from tblite.interface import Calculator

        self.numbers = np.asarray(numbers)
        self.Calculator = Calculator
        self.calc = None
        self.res = None
        self.calls = 0

    def __call__(self, pos, restart=True):
        if self.calc is None or not restart:
            calc = self.Calculator("GFN2-xTB", self.numbers, pos / BOHR_A)
            calc.set("verbosity", 0)
            res = calc.singlepoint()
            if restart:
                self.calc, self.res = calc, res
        else:
            self.calc.update(pos / BOHR_A)
            res = self.calc.singlepoint(self.res)
            self.res = res
        self.calls += 1
        e = float(res.get("energy")) * HARTREE_EV
        f = -np.array(res.get("gradient")) * (HARTREE_EV / BOHR_A)
        return e, f


# --------------------------------------------------------------------------------------------
# structures


def water_molecules(pos):
    return pos.reshape(-1, 3, 3)  # files are ordered O H H


def cut_cluster(numbers, pos, cell, n_mol, centre_mol):
    """n_mol water molecules nearest (O-O, minimum image) to molecule centre_mol, unwrapped around it."""
    mols = water_molecules(pos).copy()
    if cell is not None:
        inv = np.linalg.inv(cell)
        # make each molecule whole (H by minimum image to its O)
        for k in range(1, 3):
            d = mols[:, k] - mols[:, 0]
            d -= np.round(d @ inv) @ cell
            mols[:, k] = mols[:, 0] + d
        d = mols[:, 0] - mols[centre_mol, 0]
        shift = -np.round(d @ inv) @ cell
        mols = mols + shift[:, None, :]
    d = np.linalg.norm(mols[:, 0] - mols[centre_mol, 0], axis=1)
    order = np.argsort(d, kind="stable")[:n_mol]
    sel = mols[np.sort(order)]
    sel = sel - sel.reshape(-1, 3).mean(0)
    return np.tile([8, 1, 1], n_mol), sel.reshape(-1, 3)


def build_trajectories(seed):
    """The fixed list of teacher trajectories (split by trajectory)."""
    rng = np.random.default_rng([seed, 0])
    trajs = []
    small = [
        ("water", "systems/water.xyz"),
        ("ethanol", "systems/ethanol.xyz"),
        ("benzene", "systems/benzene.xyz"),
        ("alanine_dipeptide", "systems/alanine_dipeptide.pdb"),
    ]
    # per small molecule: 7 trajectories, 1 ps each; 500 K -> val, 450 K -> test
    temps = [300, 400, 600, 800, 1000, 500, 450]
    splits = [0, 0, 0, 0, 0, 1, 2]
    for name, path in small:
        z, x, _ = read_structure(os.path.join(ROOT, path))
        for t, s in zip(temps, splits):
            trajs.append(dict(molecule=name, label=f"{name}-{t}K", numbers=z, positions=x, temperature=t,
                              split=s, steps=2000, stride=10, sigma=0.02))
    # small water clusters (3-20 molecules) cut from the 33-molecule droplet around random molecules
    zc, xc, _ = read_structure(os.path.join(ROOT, "systems/water_cluster_33.xyz"))
    sizes = [3, 4, 5, 6, 8, 10, 12, 14, 17, 20]
    ctemps = [300, 400, 500, 350, 450, 300, 400, 350, 300, 500]
    csplit = {5: 2, 14: 2, 8: 1}
    for n, t in zip(sizes, ctemps):
        c = int(rng.integers(33))
        z, x = cut_cluster(zc, xc, None, n, c)
        trajs.append(dict(molecule="water_cluster", label=f"water_cluster-{n}-{t}K", numbers=z, positions=x,
                          temperature=t, split=csplit.get(n, 0), steps=600, stride=10, sigma=0.02))
    # pieces of liquid water: the n nearest molecules (20-40, i.e. within ~6-6.5 Å) of a random
    # molecule of the periodic 64-water box, as open clusters
    zb, xb, cb = read_structure(os.path.join(ROOT, "systems/waterbox_64.xyz"))
    lsizes = [24, 28, 32, 36, 40, 26, 30, 34]
    ltemps = [300, 350, 300, 400, 300, 350, 450, 300]
    lsplit = [0, 0, 0, 0, 0, 0, 1, 2]
    centres = rng.permutation(64)[: len(lsizes)]
    for n, t, s, c in zip(lsizes, ltemps, lsplit, centres):
        z, x = cut_cluster(zb, xb, cb, n, int(c))
        trajs.append(dict(molecule="liquid_water", label=f"liquid_water-{n}-{t}K-c{int(c)}", numbers=z,
                          positions=x, temperature=t, split=s, steps=400, stride=10, sigma=0.02))
    for k, tr in enumerate(trajs):
        tr["seed"] = [seed, 1, k]
    return trajs


# --------------------------------------------------------------------------------------------
# teacher MD


def run_trajectory(tr, scale, log):
    rng = np.random.default_rng(tr["seed"])
    z = tr["numbers"]
    m = np.array([MASSES[int(a)] for a in z])[:, None]
    kT = KB_EV * tr["temperature"]
    dt, gamma = 0.5, 0.01  # fs, 1/fs
    c1 = np.exp(-gamma * dt)
    c2 = np.sqrt(1 - c1 * c1)
    vth = np.sqrt(kT / m * ACC)  # Å/fs
    steps = max(tr["stride"], int(round(tr["steps"] * scale)))
    teacher = Teacher(z)
    x = tr["positions"].copy()
    v = rng.standard_normal(x.shape) * vth
    v -= (m * v).sum(0) / m.sum()
    e, f = teacher(x)
    frames = []

    def keep(step, x, e, f):
        frames.append((0, step, 0.0, x.copy(), e, f.copy()))

    keep(0, x, e, f)
    for step in range(1, steps + 1):
        v += 0.5 * dt * ACC * f / m
        x += 0.5 * dt * v
        v = c1 * v + c2 * vth * rng.standard_normal(x.shape)
        x += 0.5 * dt * v
        try:
            e, f = teacher(x)
        except Exception as err:  # SCF failure: end the trajectory here
            log(f"  {tr['label']}: teacher failed at step {step} ({err}); trajectory ends")
            break
        v += 0.5 * dt * ACC * f / m
        if step % tr["stride"] == 0:
            keep(step, x, e, f)
    # Gaussian displacements of every sampled MD frame (fresh SCF, no restart)
    disp = []
    for (_, step, _, xf, _, _) in list(frames):
        xd = xf + rng.standard_normal(xf.shape) * tr["sigma"]
        try:
            ed, fd = teacher(xd, restart=False)
        except Exception as err:
            log(f"  {tr['label']}: teacher failed on a displaced frame ({err}); skipped")
            continue
        disp.append((1, step, tr["sigma"], xd, ed, fd))
    frames += disp
    # drop broken frames (none expected): |F| > 50 eV/Å
    good = [fr for fr in frames if np.abs(fr[5]).max() < 50.0]
    if len(good) < len(frames):
        log(f"  {tr['label']}: dropped {len(frames) - len(good)} frames with |F| > 50 eV/Å")
    return good, teacher.calls


def save_npz_deterministic(path, arrays):
    """np.savez_compressed with fixed zip timestamps (bit-for-bit reproducible file), written atomically."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--out", default=os.path.join(HERE, "data", "hcno-gfn2.npz"))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply all MD lengths (0.05: smoke test)")
    ap.add_argument("--only", default=None, help="comma-separated molecule names (debugging)")
    args = ap.parse_args()
    t_start = time.time()

    def log(msg):
        print(f"[{time.time() - t_start:7.1f} s] {msg}", flush=True)

    trajs = build_trajectories(args.seed)
    if args.only:
        keep = set(args.only.split(","))
        trajs = [t for t in trajs if t["molecule"] in keep]
    names = []
    for t in trajs:
        if t["molecule"] not in names:
            names.append(t["molecule"])
    cols = {k: [] for k in ["numbers", "positions", "forces", "energy", "n_atoms", "molecule", "traj", "split",
                            "kind", "temperature", "sigma", "md_step"]}
    total_calls = 0
    for k, tr in enumerate(trajs):
        t0 = time.time()
        frames, calls = run_trajectory(tr, args.scale, log)
        total_calls += calls
        for kind, step, sigma, x, e, f in frames:
            cols["numbers"].append(tr["numbers"].astype(np.int8))
            cols["positions"].append(x)
            cols["forces"].append(f)
            cols["energy"].append(e)
            cols["n_atoms"].append(len(x))
            cols["molecule"].append(names.index(tr["molecule"]))
            cols["traj"].append(k)
            cols["split"].append(tr["split"])
            cols["kind"].append(kind)
            cols["temperature"].append(tr["temperature"])
            cols["sigma"].append(sigma)
            cols["md_step"].append(step)
        log(f"traj {k + 1}/{len(trajs)} {tr['label']} ({len(tr['numbers'])} atoms, {SPLITS[tr['split']]}): "
            f"{len(frames)} frames, {calls} teacher calls, {time.time() - t0:.1f} s")
    n_atoms = np.array(cols["n_atoms"], dtype=np.int32)
    arrays = {
        "numbers": np.concatenate(cols["numbers"]).astype(np.int8),
        "positions": np.concatenate(cols["positions"]).astype(np.float64),
        "forces": np.concatenate(cols["forces"]).astype(np.float64),
        "offsets": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
        "energy": np.array(cols["energy"], dtype=np.float64),
        "n_atoms": n_atoms,
        "molecule": np.array(cols["molecule"], dtype=np.int16),
        "traj": np.array(cols["traj"], dtype=np.int32),
        "split": np.array(cols["split"], dtype=np.int8),
        "kind": np.array(cols["kind"], dtype=np.int8),
        "temperature": np.array(cols["temperature"], dtype=np.float64),
        "sigma": np.array(cols["sigma"], dtype=np.float64),
        "md_step": np.array(cols["md_step"], dtype=np.int32),
        "molecule_names": np.array(names),
        "split_names": np.array(SPLITS),
        "traj_label": np.array([t["label"] for t in trajs]),
        "traj_molecule": np.array([names.index(t["molecule"]) for t in trajs], dtype=np.int16),
        "traj_temperature": np.array([t["temperature"] for t in trajs], dtype=np.float64),
        "traj_split": np.array([t["split"] for t in trajs], dtype=np.int8),
        "traj_seed": np.array([t["seed"] for t in trajs], dtype=np.int64),
        "traj_n_atoms": np.array([len(t["numbers"]) for t in trajs], dtype=np.int32),
    }
    import tblite  # noqa: F401  (version for the record)
    from importlib.metadata import version

    info = {
        "seed": args.seed, "scale": args.scale, "teacher": "GFN2-xTB (tblite %s), open boundaries, neutral singlet"
        % version("tblite"), "numpy": np.__version__, "units": "positions Angstrom, energy eV, forces eV/Angstrom",
        "conversion": "CODATA 2018: 1 Eh = 27.211386245988 eV, 1 bohr = 0.529177210903 Angstrom, F = -gradient",
        "md": "BAOAB Langevin, dt 0.5 fs, friction 0.01/fs, Maxwell-Boltzmann start; frame every `stride` steps; "
              "each sampled frame also displaced by N(0, sigma^2) per coordinate and relabelled",
        "teacher_calls": total_calls,
    }
    arrays["info"] = np.array(json.dumps(info, sort_keys=True))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_npz_deterministic(args.out, arrays)
    log(f"wrote {args.out}: {len(n_atoms)} frames, {int(n_atoms.sum())} atoms, "
        f"{os.path.getsize(args.out) / 1e6:.2f} MB, {total_calls} teacher calls")
    for i, nm in enumerate(names):
        sel = arrays["molecule"] == i
        counts = [int((sel & (arrays["split"] == s)).sum()) for s in range(3)]
        log(f"  {nm:18s} train/val/test frames {counts}")


if __name__ == "__main__":
    sys.exit(main())
