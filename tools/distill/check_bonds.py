#!/usr/bin/env python3
"""Checks that an MD trajectory kept its covalent bonds: the bond graph (pairs closer than
`factor` × the sum of covalent radii, minimum image when the XYZ comment line holds an extended-XYZ
`Lattice=`) of every frame must equal that of the first frame. Prints one line per trajectory and
exits 1 when a bond broke or formed.

    python3 tools/distill/check_bonds.py run-output/benzene_nve/benzene_nve.xyz [more.xyz ...]

Covalent radii (Å): Cordero et al., Dalton Trans. 2008 (H 0.31, C 0.76, N 0.71, O 0.66).
"""
import argparse
import re
import sys

import numpy as np

RADII = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66}


def frames(path):
    with open(path) as f:
        while True:
            head = f.readline()
            if not head.strip():
                return
            n = int(head)
            comment = f.readline()
            lattice = re.search(r'Lattice="([^"]+)"', comment)
            cell = np.array([float(x) for x in lattice.group(1).split()]).reshape(3, 3) if lattice else None
            symbols, pos = [], []
            for _ in range(n):
                parts = f.readline().split()
                symbols.append(parts[0].capitalize())
                pos.append([float(x) for x in parts[1:4]])
            yield symbols, np.array(pos), cell


def bonds(symbols, pos, cell, factor):
    r = np.array([RADII[s] for s in symbols])
    d = pos[None, :, :] - pos[:, None, :]
    if cell is not None:
        frac = d @ np.linalg.inv(cell)
        d = (frac - np.round(frac)) @ cell
    dist = np.linalg.norm(d, axis=-1)
    limit = factor * (r[:, None] + r[None, :])
    i, j = np.nonzero(np.triu(dist < limit, k=1))
    return set(zip(i.tolist(), j.tolist()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trajectories", nargs="+")
    ap.add_argument("--factor", type=float, default=1.25, help="bond if d < factor × (r_i + r_j)")
    args = ap.parse_args()
    failed = False
    for path in args.trajectories:
        reference, count, changes = None, 0, []
        for index, (symbols, pos, cell) in enumerate(frames(path)):
            graph = bonds(symbols, pos, cell, args.factor)
            if reference is None:
                reference = graph
            elif graph != reference:
                changes.append((index, sorted(reference - graph), sorted(graph - reference)))
            count += 1
        if changes:
            failed = True
            index, broken, formed = changes[0]
            print(f"{path}: {count} frames, {len(reference)} bonds; CHANGED in {len(changes)} frames "
                  f"(first: frame {index}, broken {broken[:5]}, formed {formed[:5]})")
        else:
            print(f"{path}: {count} frames, {len(reference)} bonds, all intact")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
