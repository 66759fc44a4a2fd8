#!/usr/bin/env python3
"""Train the PaiNN student (F=128, T=3, 20 Gaussians, 5 Å cosine cutoff, per-layer filters) on the
GFN2-xTB teacher data and export it in mdrun's format.

    PYTHONUNBUFFERED=1 python3 tools/distill/train.py --data tools/distill/data/hcno-gfn2.npz \
        --out models/painn-hcno-f128.safetensors --device cuda --minutes 9
    # smoke test on the CPU
    python3 tools/distill/train.py --device cpu --minutes 0.5 --max-frames 200 --out /tmp/smoke.safetensors

Energy model: E = scale * sum_i y_i + N * mean_per_atom + sum_i atomref[Z_i] with atomref fitted by
least squares on the training energies (per-element reference energies, eV), mean_per_atom = 0 and
scale = RMS of the training force components (eV/Å; the network then predicts O(1) numbers).
Loss: w_E * MSE(energy per atom) + w_F * MSE(force components) in eV units, AdamW, linear warm-up
then cosine decay of the learning rate over the time budget, exponential moving average (EMA) of
the weights; the EMA weights are validated every --val-seconds and the best (validation force MAE)
are kept, exported, and evaluated per molecule on val and test. Needs torch, numpy, safetensors.

Writes: --out (safetensors), --metrics (JSON, default OUT with .metrics.json) and a table on stdout.
At the end it checks that tools/baseline/torch_painn.py loading the exported file reproduces the
trained model (float64 on the CPU, and the float32 training model), and with --mdrun (or when
target/release/mdrun exists) that `mdrun eval` does too.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from painn_torch import PaiNNEnergy, count_parameters, energy_forces, export_mdrun, load_mdrun, radius_pairs  # noqa: E402

SYM = {1: "H", 6: "C", 7: "N", 8: "O"}


def log(msg):
    print(msg, flush=True)


class Data:
    """All frames of a split on the device, pairs precomputed once (open boundaries)."""

    def __init__(self, d, frames, cutoff, device, dtype):
        off = d["offsets"]
        self.frames = frames
        self.n_atoms = torch.tensor(d["n_atoms"][frames].astype(np.int64), device=device)
        atom_sel = np.concatenate([np.arange(off[f], off[f + 1]) for f in frames])
        self.numbers = torch.tensor(d["numbers"][atom_sel].astype(np.int64), device=device)
        self.pos = torch.tensor(d["positions"][atom_sel], dtype=dtype, device=device)
        self.forces = torch.tensor(d["forces"][atom_sel], dtype=dtype, device=device)
        self.energy64 = d["energy"][frames].astype(np.float64)
        self.molecule = d["molecule"][frames]
        self.atom_off = torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.cumsum(self.n_atoms, 0)])
        # pairs per frame, computed per trajectory chunk of equal-size frames
        traj = d["traj"][frames]
        ii, jj, counts = [], [], np.zeros(len(frames), dtype=np.int64)
        start = 0
        while start < len(frames):
            stop = start
            while stop < len(frames) and traj[stop] == traj[start] and d["n_atoms"][frames[stop]] == d["n_atoms"][frames[start]]:
                stop += 1
            n = int(d["n_atoms"][frames[start]])
            a0 = int(self.atom_off[start])
            x = self.pos[a0 : a0 + n * (stop - start)].reshape(stop - start, n, 3)
            dist = torch.cdist(x, x)
            mask = dist < cutoff
            mask &= ~torch.eye(n, dtype=torch.bool, device=device)[None]
            f, i, j = mask.nonzero(as_tuple=True)
            ii.append(i + a0 + f * n)
            jj.append(j + a0 + f * n)
            counts[start:stop] = mask.sum((1, 2)).cpu().numpy()
            start = stop
        self.pair_i = torch.cat(ii)
        self.pair_j = torch.cat(jj)
        self.n_pairs = torch.tensor(counts, device=device)
        self.pair_off = torch.cat([torch.zeros(1, dtype=torch.long, device=device), torch.cumsum(self.n_pairs, 0)])
        self.device = device

    def __len__(self):
        return len(self.frames)

    def batch(self, idx):
        """idx: LongTensor of frame positions (device). Returns batch tensors with local atom indices."""
        dev = self.device
        B = idx.shape[0]
        na = self.n_atoms[idx]
        npair = self.n_pairs[idx]
        tot_a, tot_p = [int(v) for v in torch.stack([na.sum(), npair.sum()]).cpu()]
        local_off = torch.cumsum(na, 0) - na
        a_start = self.atom_off[idx]
        atom_idx = torch.repeat_interleave(a_start - local_off, na, output_size=tot_a) + torch.arange(tot_a, device=dev)
        p_local_off = torch.cumsum(npair, 0) - npair
        pair_idx = torch.repeat_interleave(self.pair_off[idx] - p_local_off, npair, output_size=tot_p) + torch.arange(tot_p, device=dev)
        pf = torch.repeat_interleave(torch.arange(B, device=dev), npair, output_size=tot_p)
        shift = (local_off - a_start)[pf]
        i = self.pair_i[pair_idx] + shift
        j = self.pair_j[pair_idx] + shift
        atom_frame = torch.repeat_interleave(torch.arange(B, device=dev), na, output_size=tot_a)
        return self.numbers[atom_idx], self.pos[atom_idx], self.forces[atom_idx], i, j, atom_frame, na


def fit_atomrefs(d, frames, elements):
    """Least-squares per-element reference energies (eV) on the given frames."""
    off = d["offsets"]
    C = np.zeros((len(frames), len(elements)))
    for r, f in enumerate(frames):
        z = d["numbers"][off[f] : off[f + 1]]
        for c, e in enumerate(elements):
            C[r, c] = np.sum(z == e)
    coef, *_ = np.linalg.lstsq(C, d["energy"][frames], rcond=None)
    ref = np.zeros(100)
    for c, e in enumerate(elements):
        ref[e] = coef[c]
    return ref


def evaluate(model, data, target_e, batch_frames, dtype):
    """Per-frame predictions: returns dict of numpy arrays (energy error per atom, force abs errors per frame)."""
    model.eval()
    e_pred = np.zeros(len(data))
    f_abs_sum = np.zeros(len(data))
    f_sq_sum = np.zeros(len(data))
    f_max = np.zeros(len(data))
    for s in range(0, len(data), batch_frames):
        idx = torch.arange(s, min(s + batch_frames, len(data)), device=data.device)
        z, x, f_ref, i, j, af, na = data.batch(idx)
        e, f = energy_forces(model, z, x, i, j, af, len(idx), create_graph=False, with_offsets=False)
        e_pred[s : s + len(idx)] = e.detach().double().cpu().numpy()
        err = (f.detach() - f_ref).double()
        nb = len(idx)
        f_abs_sum[s : s + nb] = torch.zeros(nb, dtype=torch.float64, device=err.device).index_add(0, af, err.abs().sum(1)).cpu().numpy()
        f_sq_sum[s : s + nb] = torch.zeros(nb, dtype=torch.float64, device=err.device).index_add(0, af, (err**2).sum(1)).cpu().numpy()
        f_max[s : s + nb] = torch.zeros(nb, dtype=torch.float64, device=err.device).scatter_reduce(0, af, err.abs().amax(1), "amax", include_self=False).cpu().numpy()
    model.train()
    n = data.n_atoms.cpu().numpy()
    return {"e_err_per_atom": (e_pred - target_e) / n, "f_abs_sum": f_abs_sum, "f_sq_sum": f_sq_sum, "f_max": f_max, "n": n}


def summarize(ev, sel=None):
    sel = np.ones(len(ev["n"]), bool) if sel is None else sel
    ncomp = 3 * ev["n"][sel].sum()
    return {
        "frames": int(sel.sum()),
        "atoms_per_frame": sorted(set(int(v) for v in ev["n"][sel])) if sel.sum() < 100000 else None,
        "energy_mae_mev_per_atom": float(np.abs(ev["e_err_per_atom"][sel]).mean() * 1000),
        "energy_rmse_mev_per_atom": float(np.sqrt((ev["e_err_per_atom"][sel] ** 2).mean()) * 1000),
        "force_mae_ev_per_a": float(ev["f_abs_sum"][sel].sum() / ncomp),
        "force_rmse_ev_per_a": float(np.sqrt(ev["f_sq_sum"][sel].sum() / ncomp)),
        "force_max_abs_err_ev_per_a": float(ev["f_max"][sel].max()),
    }


def per_molecule(ev, data, names):
    out = {}
    for m, name in enumerate(names):
        sel = data.molecule == m
        if sel.any():
            out[str(name)] = summarize(ev, sel)
    out["all"] = summarize(ev)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data", "hcno-gfn2.npz"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "painn-hcno-f128.safetensors"))
    ap.add_argument("--metrics", default=None, help="default: OUT with .metrics.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=9.0, help="training wall-clock budget (excl. setup/eval)")
    ap.add_argument("--max-frames", type=int, default=None, help="subsample each split to this many frames (smoke tests)")
    ap.add_argument("--batch", type=int, default=32, help="molecules per batch")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-min", type=float, default=1e-5)
    ap.add_argument("--warmup", type=float, default=0.02, help="fraction of the budget with linear lr warm-up")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--w-energy", type=float, default=10.0, help="weight of MSE(energy per atom), (eV/atom)^2")
    ap.add_argument("--w-forces", type=float, default=1.0, help="weight of MSE(force components), (eV/A)^2")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--val-seconds", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--F", type=int, default=128)
    ap.add_argument("--T", type=int, default=3)
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on the GPU (faster, less precise)")
    ap.add_argument("--mdrun", default=os.path.join(ROOT, "target", "release", "mdrun"))
    args = ap.parse_args()
    metrics_path = args.metrics or (args.out.rsplit(".safetensors", 1)[0] + ".metrics.json")
    t_setup = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device(args.device)
    dtype = torch.float32
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine()) + f" CPU ({os.cpu_count()} cores)"

    d = dict(np.load(args.data))
    names = [str(s) for s in d["molecule_names"]]
    data_sha = hashlib.sha256(open(args.data, "rb").read()).hexdigest()
    split_frames = {}
    for s, sname in enumerate(["train", "val", "test"]):
        fr = np.where(d["split"] == s)[0]
        if args.max_frames and len(fr) > args.max_frames:
            fr = np.sort(rng.choice(fr, args.max_frames, replace=False))
        split_frames[sname] = fr
    elements = sorted(set(int(z) for z in d["numbers"]))
    atomref = fit_atomrefs(d, split_frames["train"], elements)
    tr_f = split_frames["train"]
    off = d["offsets"]
    f_train = np.concatenate([d["forces"][off[f] : off[f + 1]] for f in tr_f])
    scale = float(np.sqrt((f_train**2).mean()))
    model = PaiNNEnergy(args.F, args.T, args.K, args.cutoff).to(dev)
    model.energy_scale.fill_(scale)
    model.energy_atomref.copy_(torch.tensor(atomref))
    model.energy_mean_per_atom.fill_(0.0)
    n_params = count_parameters(model)

    def residual_energy(frames):
        e = d["energy"][frames].copy()
        for k, f in enumerate(frames):
            e[k] -= atomref[d["numbers"][off[f] : off[f + 1]]].sum()
        return e

    data = {s: Data(d, fr, args.cutoff, dev, dtype) for s, fr in split_frames.items()}
    target = {s: residual_energy(fr) for s, fr in split_frames.items()}
    train = data["train"]
    train_e = torch.tensor(target["train"], dtype=dtype, device=dev)
    log(f"data {args.data} (sha256 {data_sha[:12]}): " + ", ".join(f"{s} {len(v)} frames / {int(v.n_atoms.sum())} atoms / {len(v.pair_i)} pairs" for s, v in data.items()))
    log(f"elements {elements}; atomref (eV) " + ", ".join(f"{SYM.get(z, z)} {atomref[z]:.4f}" for z in elements)
        + f"; energy scale {scale:.4f} eV (train force RMS), mean_per_atom 0")
    resid = target["train"] / train.n_atoms.cpu().numpy()
    log(f"residual energy per atom after atomrefs: mean {resid.mean() * 1000:.2f} meV, std {resid.std() * 1000:.2f} meV")
    log(f"model PaiNN F={args.F} T={args.T} K={args.K} cutoff={args.cutoff}: {n_params} parameters; device {device_name}; setup {time.time() - t_setup:.1f} s")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=dev.type == "cuda")
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    budget = args.minutes * 60.0
    best = {"force_mae": float("inf")}
    best_state = copy.deepcopy(ema.state_dict())
    history = []
    step, epoch = 0, 0
    t0 = time.time()
    last_val = t0
    done = False
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def validate(tag):
        nonlocal best_state
        ev = evaluate(ema, data["val"], target["val"], 256 if dev.type == "cuda" else 64, dtype)
        s = summarize(ev)
        elapsed = time.time() - t0
        history.append({"time_s": elapsed, "step": step, "epoch": epoch, **{k: v for k, v in s.items() if k != "atoms_per_frame"}})
        mark = ""
        if s["force_mae_ev_per_a"] < best["force_mae"]:
            best.update(force_mae=s["force_mae_ev_per_a"], energy_mae=s["energy_mae_mev_per_atom"], step=step, epoch=epoch, time_s=elapsed)
            best_state = copy.deepcopy(ema.state_dict())
            mark = " *"
        log(f"[{elapsed:6.1f} s] {tag} epoch {epoch} step {step} lr {opt.param_groups[0]['lr']:.2e} | val(EMA) E MAE {s['energy_mae_mev_per_atom']:.3f} meV/atom, "
            f"F MAE {s['force_mae_ev_per_a']:.4f} RMSE {s['force_rmse_ev_per_a']:.4f} eV/A{mark}")

    model.train()
    while not done:
        perm = torch.randperm(len(train), device=dev)
        ep_loss, ep_n = 0.0, 0
        for s in range(0, len(train), args.batch):
            elapsed = time.time() - t0
            if elapsed >= budget:
                done = True
                break
            frac = elapsed / budget
            if frac < args.warmup:
                lr = args.lr * max(frac / args.warmup, 0.01)
            else:
                p = (frac - args.warmup) / (1 - args.warmup)
                lr = args.lr_min + 0.5 * (args.lr - args.lr_min) * (1 + math.cos(math.pi * p))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[s : s + args.batch]
            z, x, f_ref, i, j, af, na = train.batch(idx)
            e, f = energy_forces(model, z, x, i, j, af, len(idx), create_graph=True, with_offsets=False)
            loss_e = (((e - train_e[idx]) / na) ** 2).mean()
            loss_f = ((f - f_ref) ** 2).mean()
            loss = args.w_energy * loss_e + args.w_forces * loss_f
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                decay = min(args.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema_params, model_params, 1 - decay)
            step += 1
            if step % 50 == 0:
                ep_loss += float(loss)
                ep_n += 1
            if time.time() - last_val >= args.val_seconds:
                validate("val")
                last_val = time.time()
        epoch += 1
    sync()
    train_time = time.time() - t0
    validate("final")
    log(f"training done: {train_time:.1f} s, {epoch} epochs (last partial), {step} steps; best val F MAE {best['force_mae']:.4f} eV/A at {best['time_s']:.0f} s")

    # ---- best weights -> export -> evaluate
    ema.load_state_dict(best_state)
    best_model = ema
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    desc = (f"PaiNN F={args.F} T={args.T} K={args.K} (Gaussian) cutoff {args.cutoff} A, distilled from GFN2-xTB (tblite) "
            f"by tools/distill/train.py on {os.path.basename(args.data)} (sha256 {data_sha[:12]}); {train_time / 60:.1f} min on {device_name}")
    export_mdrun(best_model, args.out, elements, desc, {"teacher": "GFN2-xTB (tblite 0.8.0)", "source": f"tools/distill/train.py, torch {torch.__version__}"})
    log(f"exported {args.out}")
    results = {}
    for s in ["val", "test"]:
        ev = evaluate(best_model, data[s], target[s], 256 if dev.type == "cuda" else 64, dtype)
        results[s] = per_molecule(ev, data[s], names)

    # ---- equivalence: the exported file in tools/baseline/torch_painn.py vs the trained model
    check = equivalence_check(best_model, args.out, d, split_frames["test"], names, args.mdrun)

    metrics = {
        "model": os.path.relpath(os.path.abspath(args.out), ROOT),
        "data": os.path.relpath(os.path.abspath(args.data), ROOT), "data_sha256": data_sha,
        "frames": {s: int(len(v)) for s, v in data.items()},
        "atoms": {s: int(v.n_atoms.sum()) for s, v in data.items()},
        "elements": elements,
        "atomref_ev": {SYM.get(z, str(z)): float(atomref[z]) for z in elements},
        "energy_scale_ev": scale, "energy_mean_per_atom_ev": 0.0,
        "architecture": {"F": args.F, "T": args.T, "n_rbf": args.K, "radial_basis": "gaussian", "cutoff_angstrom": args.cutoff,
                         "cutoff_fn": "cosine", "shared_filters": False, "epsilon": 1e-8, "readout": f"{args.F}->{args.F // 2}->1 SiLU"},
        "parameters": n_params,
        "hyperparameters": {"batch_molecules": args.batch, "lr": args.lr, "lr_min": args.lr_min, "schedule": "linear warm-up then cosine (time-based)",
                            "warmup_fraction": args.warmup, "optimizer": "AdamW", "weight_decay": args.weight_decay,
                            "loss": "w_E*MSE(E/N) + w_F*MSE(F component)", "w_energy": args.w_energy, "w_forces": args.w_forces,
                            "ema_decay": args.ema, "dtype": "float32", "tf32": bool(args.tf32), "seed": args.seed, "minutes": args.minutes,
                            "max_frames": args.max_frames},
        "training": {"device": device_name, "torch": torch.__version__, "train_seconds": train_time, "epochs": epoch, "steps": step,
                     "best": best, "host": platform.node()},
        "history": history,
        "val": results["val"], "test": results["test"],
        "equivalence_check": check,
    }
    with open(metrics_path, "w") as fh:
        json.dump(metrics, fh, indent=1)
    log(f"wrote {metrics_path}")
    sys.path.insert(0, HERE)
    from model_card import table

    log(table(metrics, "test"))
    log(table(metrics, "val"))
    if not check["ok"]:
        log("EQUIVALENCE CHECK FAILED")
        sys.exit(2)


def equivalence_check(model, path, d, test_frames, names, mdrun):
    """Energies/forces of the exported file in tools/baseline/torch_painn.py (the mdrun-verified PaiNN)
    vs the trained model: in float64 (same weights cast) and vs the float32 training model."""
    sys.path.insert(0, os.path.join(ROOT, "tools", "baseline"))
    import torch_painn

    off = d["offsets"]
    picks = []
    for m in range(len(names)):
        fr = [f for f in test_frames if d["molecule"][f] == m]
        if fr:
            picks.append(fr[len(fr) // 2])
    ref = torch_painn.PaiNN(path, torch.float64, "cpu")
    m64 = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    m64.energy_scale.copy_(model.energy_scale.double().cpu())
    dev = next(model.parameters()).device
    rows, worst64, worst32, worst_md = [], 0.0, 0.0, None
    for f in picks:
        z = torch.tensor(d["numbers"][off[f] : off[f + 1]].astype(np.int64))
        x = torch.tensor(d["positions"][off[f] : off[f + 1]], dtype=torch.float64)
        e_ref, f_ref = torch_painn.energy_forces(ref, z, x, None)
        i, j = radius_pairs(x, model.cutoff)
        af = torch.zeros(len(z), dtype=torch.long)
        e64, f64 = energy_forces(m64, z, x, i, j, af, 1)
        e64 = e64.detach()
        e32, f32 = energy_forces(model, z.to(dev), x.float().to(dev), i.to(dev), j.to(dev), af.to(dev), 1)
        e32 = e32.detach()
        r = {"molecule": names[int(d["molecule"][f])], "frame": int(f), "atoms": len(z),
             "f64_energy_abs_diff_ev": abs(float(e64[0]) - float(e_ref)), "f64_force_max_abs_diff": float((f64 - f_ref).abs().max()),
             "f32_energy_abs_diff_ev": abs(float(e32[0]) - float(e_ref)), "f32_force_max_abs_diff": float((f32.double().cpu() - f_ref).abs().max())}
        if mdrun and os.path.exists(mdrun):
            with tempfile.NamedTemporaryFile("w", suffix=".xyz", delete=False) as fh:
                fh.write(f"{len(z)}\nequivalence check frame {f}\n")
                for zz, p in zip(d["numbers"][off[f] : off[f + 1]], d["positions"][off[f] : off[f + 1]]):
                    fh.write(f"{SYM[int(zz)]} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}\n")
            try:
                out = json.loads(subprocess.run([mdrun, "eval", fh.name, "--model", path, "--device", "cpu"], check=True,
                                                capture_output=True, text=True, timeout=120).stdout)
                r["mdrun_energy_abs_diff_ev"] = abs(out["energy_ev"] - float(e_ref))
                r["mdrun_force_max_abs_diff"] = float((torch.tensor(out["forces_ev_per_angstrom"], dtype=torch.float64) - f_ref).abs().max())
                worst_md = max(worst_md or 0.0, r["mdrun_energy_abs_diff_ev"], r["mdrun_force_max_abs_diff"])
            except Exception as err:  # mdrun missing/old: report, do not fail the training
                r["mdrun_error"] = str(err)[:300]
            finally:
                os.unlink(fh.name)
        worst64 = max(worst64, r["f64_energy_abs_diff_ev"], r["f64_force_max_abs_diff"])
        worst32 = max(worst32, r["f32_energy_abs_diff_ev"] / max(1.0, abs(float(e_ref))) * 1e2, r["f32_force_max_abs_diff"])
        rows.append(r)
        log(f"equivalence {r['molecule']:18s} ({len(z)} atoms): f64 |dE| {r['f64_energy_abs_diff_ev']:.1e} eV, max|dF| {r['f64_force_max_abs_diff']:.1e} eV/A; "
            f"f32 model |dE| {r['f32_energy_abs_diff_ev']:.1e} eV, max|dF| {r['f32_force_max_abs_diff']:.1e} eV/A"
            + (f"; mdrun eval |dE| {r['mdrun_energy_abs_diff_ev']:.1e}, max|dF| {r['mdrun_force_max_abs_diff']:.1e}" if "mdrun_energy_abs_diff_ev" in r else
               (f"; mdrun eval failed: {r['mdrun_error'][:120]}" if "mdrun_error" in r else "")))
    ok = worst64 < 1e-8 and worst32 < 1e-3 and (worst_md is None or worst_md < 1e-8)
    return {"ok": bool(ok), "worst_f64": worst64, "worst_mdrun": worst_md, "frames": rows,
            "criteria": "f64: |dE|, max|dF| < 1e-8; f32 training model: max|dF| < 1e-3 eV/A, |dE| < 1e-5 relative; mdrun eval (if present): < 1e-8"}


if __name__ == "__main__":
    main()
