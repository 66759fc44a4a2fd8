#!/usr/bin/env python3
"""Print the model card's markdown (per-molecule test/val table and training facts) from the
metrics JSON written by train.py, for pasting into models/README.md.

    python3 tools/distill/model_card.py models/painn-hcno-f128.metrics.json
    python3 tools/distill/model_card.py --data tools/distill/data/hcno-gfn2.npz   # the data table
"""
import json
import sys

TARGET_F_MAE = 0.03  # eV/Å
TARGET_E_MAE = 1.0  # meV/atom


def table(m, split="test"):
    rows = m[split]
    out = [f"**{split}** split (held-out trajectories), student vs GFN2-xTB teacher:", "",
           "| molecule | frames | atoms | energy MAE (meV/atom) | force MAE (eV/Å) | force RMSE (eV/Å) | max force error (eV/Å) | target met |",
           "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for name, r in rows.items():
        atoms = r.get("atoms_per_frame") or []
        a = "" if not atoms else (str(atoms[0]) if len(atoms) == 1 else f"{atoms[0]}–{atoms[-1]}")
        ok = r["force_mae_ev_per_a"] <= TARGET_F_MAE and r["energy_mae_mev_per_atom"] <= TARGET_E_MAE
        label = f"**{name}**" if name == "all" else name
        out.append(f"| {label} | {r['frames']} | {a} | {r['energy_mae_mev_per_atom']:.3f} | {r['force_mae_ev_per_a']:.4f} | "
                   f"{r['force_rmse_ev_per_a']:.4f} | {r['force_max_abs_err_ev_per_a']:.3f} | {'yes' if ok else 'no'} |")
    return "\n".join(out)


def facts(m):
    t = m["training"]
    h = m["hyperparameters"]
    eq = m.get("equivalence_check", {})
    lines = [
        f"- Training: {t['train_seconds'] / 60:.1f} min on {t['device']} (torch {t['torch']}), {t['epochs']} epochs, {t['steps']} steps, "
        f"batch {h['batch_molecules']} molecules; best validation force MAE {t['best']['force_mae']:.4f} eV/Å at {t['best']['time_s']:.0f} s.",
        f"- Parameters: {m['parameters']:,}; frames train/val/test: {m['frames']['train']}/{m['frames']['val']}/{m['frames']['test']}.",
        f"- Energy offsets: atomref (eV) " + ", ".join(f"{k} {v:.4f}" for k, v in m["atomref_ev"].items())
        + f"; scale {m['energy_scale_ev']:.4f} eV; mean_per_atom 0.",
        f"- Export check (tools/baseline/torch_painn.py on the exported file vs the trained model, float64): "
        f"worst |ΔE|, max|ΔF| {eq.get('worst_f64', float('nan')):.1e}"
        + (f"; mdrun eval: {eq['worst_mdrun']:.1e}" if eq.get("worst_mdrun") is not None else "") + ".",
    ]
    return "\n".join(lines)


def data_table(path):
    """Frames per molecule and split, trajectories and temperatures, from the data set npz."""
    import numpy as np

    d = np.load(path)
    names = [str(s) for s in d["molecule_names"]]
    out = ["| molecule | atoms | trajectories (train/val/test) | temperatures (K) train; val; test | frames train | val | test |",
           "|---|---:|---:|---|---:|---:|---:|"]
    for m, name in enumerate(names):
        tr = np.where(d["traj_molecule"] == m)[0]
        atoms = sorted(set(int(v) for v in d["traj_n_atoms"][tr]))
        a = str(atoms[0]) if len(atoms) == 1 else f"{atoms[0]}–{atoms[-1]}"
        nt = [int((d["traj_split"][tr] == s).sum()) for s in range(3)]
        temps = "; ".join(",".join(str(int(t)) for t in sorted(set(d["traj_temperature"][tr][d["traj_split"][tr] == s]))) for s in range(3))
        fr = [int(((d["molecule"] == m) & (d["split"] == s)).sum()) for s in range(3)]
        out.append(f"| {name} | {a} | {nt[0]}/{nt[1]}/{nt[2]} | {temps} | {fr[0]} | {fr[1]} | {fr[2]} |")
    n = [int((d["split"] == s).sum()) for s in range(3)]
    out.append(f"| **all** | | {len(d['traj_split'])} | | {n[0]} | {n[1]} | {n[2]} |")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] == "--data":
        print(data_table(sys.argv[2]))
        return
    m = json.load(open(sys.argv[1]))
    print(facts(m))
    print()
    print(table(m, "test"))
    print()
    print(table(m, "val"))


if __name__ == "__main__":
    main()
