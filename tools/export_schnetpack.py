#!/usr/bin/env python3
"""Export a saved schnetpack 2.x PaiNN energy model to mdrun's safetensors format.

    python tools/export_schnetpack.py MODEL_PATH OUT.safetensors
        [--dtype float64|float32] [--description TEXT] [--trained | --untrained]
        [--elements 1,6,7,8]

MODEL_PATH is a whole pickled schnetpack NeuralNetworkPotential (torch.save of the module,
e.g. the `best_model` that `spktrain` writes). The output follows docs/model-format.md
(format `mdrun-painn`, version 1): network tensors under schnetpack's own state_dict names,
plus `energy.scale`, `energy.mean_per_atom` and `energy.atomref` taken from the model's
AddOffsets postprocessors.

A model that mdrun cannot evaluate exactly as schnetpack does is refused with a one-line
message on stderr and exit code 2 (see tools/README-export.md for the list). Other failures
(unreadable file, missing packages) exit with code 1.

Needs: torch, schnetpack 2.x, safetensors, numpy (tools/requirements-export.txt).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Dict, List, Optional

import numpy as np

FORMAT = "mdrun-painn"
FORMAT_VERSION = "1"
N_EMBED = 100  # rows of representation.embedding.weight in the mdrun format
DEFAULT_ELEMENTS = [1, 6, 7, 8]


class Refuse(Exception):
    """The model is valid schnetpack but not representable in the mdrun format."""


def _import_stack():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import schnetpack as spk

    return torch, nn, F, spk


def load_saved_model(path: str):
    torch, _, _, _ = _import_stack()
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except TypeError:  # torch < 1.13 has no weights_only
        return torch.load(path, map_location="cpu")


# ---------------------------------------------------------------------------------------
# structural checks


def _is_silu(act) -> bool:
    _, nn, F, _ = _import_stack()
    return act is F.silu or isinstance(act, nn.SiLU)


def _is_identity(act) -> bool:
    _, nn, _, _ = _import_stack()
    return act is None or isinstance(act, nn.Identity)


def _act_name(act) -> str:
    if act is None:
        return "none"
    name = getattr(act, "__name__", None) or type(act).__name__
    mod = getattr(act, "__module__", "")
    return f"{mod}.{name}" if mod else name


def _check_dense(layer, where: str, activation: str, bias_required: Optional[bool]):
    """activation: 'silu' or 'none'. bias_required: True/False/None (None: either)."""
    _, nn, _, spk = _import_stack()
    if type(layer) is not spk.nn.Dense:
        raise Refuse(f"{where} is {type(layer).__module__}.{type(layer).__name__}, "
                     f"expected schnetpack.nn.Dense")
    act = layer.activation
    if activation == "silu" and not _is_silu(act):
        raise Refuse(f"{where} uses activation {_act_name(act)}; mdrun only supports SiLU here")
    if activation == "none" and not _is_identity(act):
        raise Refuse(f"{where} has activation {_act_name(act)}; expected none (linear layer)")
    if bias_required is True and layer.bias is None:
        pass  # handled by the caller (written as zeros)
    if bias_required is False and layer.bias is not None:
        raise Refuse(f"{where} has a bias; schnetpack's PaiNN has none here")


def _check_mlp2(seq, where: str):
    """Sequential(Dense(act=SiLU), Dense(act=None))."""
    _, nn, _, _ = _import_stack()
    if not isinstance(seq, nn.Sequential) or len(seq) != 2:
        n = len(seq) if isinstance(seq, nn.Sequential) else "?"
        raise Refuse(f"{where} must be a 2-layer nn.Sequential of schnetpack Dense layers "
                     f"(found {type(seq).__name__} with {n} layers)")
    _check_dense(seq[0], f"{where}.0", "silu", None)
    _check_dense(seq[1], f"{where}.1", "none", None)


def _np(t) -> np.ndarray:
    torch, _, _, _ = _import_stack()
    return t.detach().to(device="cpu", dtype=torch.float64).numpy().copy()


def _dense_tensors(layer, name: str, out: Dict[str, np.ndarray], with_bias: bool = True):
    out[f"{name}.weight"] = _np(layer.weight)
    if with_bias:
        if layer.bias is not None:
            out[f"{name}.bias"] = _np(layer.bias)
        else:  # y = xW^T with no bias is y = xW^T + 0
            out[f"{name}.bias"] = np.zeros(layer.weight.shape[0])


def _fmt_float(x: float) -> str:
    return repr(float(x))


# ---------------------------------------------------------------------------------------
# the export proper


def extract(model, elements: Optional[List[int]] = None) -> (Dict[str, np.ndarray], Dict[str, str], List[str]):
    """Return (tensors as float64 numpy, metadata without description/trained, notes)."""
    torch, nn, F, spk = _import_stack()
    from schnetpack.representation.painn import PaiNN, PaiNNInteraction, PaiNNMixing
    import schnetpack.properties as props

    notes: List[str] = []
    if isinstance(model, dict):
        raise Refuse("the file holds a dict (a state_dict or Lightning checkpoint), not a "
                     "pickled schnetpack NeuralNetworkPotential; export the model module "
                     "(e.g. `best_model`) instead")
    if isinstance(model, torch.jit.ScriptModule):
        raise Refuse("TorchScript models are not supported; export the pickled "
                     "NeuralNetworkPotential instead")
    if type(model) is not spk.model.NeuralNetworkPotential:
        raise Refuse(f"model is {type(model).__module__}.{type(model).__name__}; only "
                     f"schnetpack.model.NeuralNetworkPotential is supported")

    rep = model.representation
    if type(rep) is not PaiNN:
        raise Refuse(f"representation is {type(rep).__module__}.{type(rep).__name__}; "
                     f"mdrun only evaluates schnetpack.representation.PaiNN")
    F_ = int(rep.n_atom_basis)
    T = int(rep.n_interactions)

    # ---- cutoff function
    cfn = rep.cutoff_fn
    if type(cfn) is not spk.nn.CosineCutoff:
        raise Refuse(f"cutoff function is {type(cfn).__name__}; mdrun only supports CosineCutoff")
    cutoff = float(cfn.cutoff.detach().reshape(-1)[0])
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise Refuse(f"cutoff {cutoff} is not a positive length")

    # ---- input modules (run before the representation)
    n_pd = 0
    for k, m in enumerate(model.input_modules):
        if type(m) is spk.atomistic.PairwiseDistances:
            n_pd += 1
        elif type(m) is spk.atomistic.Strain:
            notes.append(f"input_modules.{k} is Strain (zero strain: identity for energy "
                         f"and forces; stress is not exported)")
        elif type(m) is spk.atomistic.FilterShortRange and float(m.short_range_cutoff) >= cutoff:
            notes.append(f"input_modules.{k} is FilterShortRange with cutoff "
                         f"{m.short_range_cutoff} >= {cutoff}: no effect on PaiNN")
        else:
            raise Refuse(f"input_modules.{k} is {type(m).__module__}.{type(m).__name__}; "
                         f"mdrun only reproduces PairwiseDistances (plus Strain, FilterShortRange >= cutoff)")
    if n_pd != 1:
        raise Refuse(f"expected exactly one PairwiseDistances input module, found {n_pd}")

    # ---- embeddings
    emb = rep.embedding
    if type(emb) is not nn.Embedding:
        raise Refuse(f"nuclear embedding is {type(emb).__module__}.{type(emb).__name__}; "
                     f"mdrun only supports a plain nn.Embedding table")
    if emb.max_norm is not None:
        raise Refuse("nn.Embedding with max_norm renormalises rows at lookup; not supported")
    if emb.embedding_dim != F_:
        raise Refuse(f"embedding width {emb.embedding_dim} != n_atom_basis {F_}")
    if len(getattr(rep, "electronic_embeddings", [])) > 0:
        raise Refuse("PaiNN with electronic (charge/spin) embeddings is not supported")

    # ---- radial basis
    rbf = rep.radial_basis
    K = int(rbf.n_rbf)
    tensors: Dict[str, np.ndarray] = {}
    if type(rbf) in (spk.nn.GaussianRBF, spk.nn.GaussianRBFCentered):
        radial = "gaussian"
        offsets = _np(rbf.offsets).reshape(-1)
        widths = _np(rbf.widths).reshape(-1)
        if offsets.shape != (K,) or widths.shape != (K,):
            raise Refuse(f"radial basis offsets/widths have shapes {offsets.shape}/{widths.shape}, "
                         f"expected ({K},)")
        if np.any(widths == 0):
            raise Refuse("Gaussian radial basis has a zero width")
        tensors["representation.radial_basis.offsets"] = offsets
        tensors["representation.radial_basis.widths"] = widths
        if type(rbf) is spk.nn.GaussianRBFCentered:
            notes.append("GaussianRBFCentered exported as gaussian (offsets 0, per-function widths)")
    elif type(rbf) is spk.nn.BesselRBF:
        radial = "bessel"
        freqs = _np(rbf.freqs).reshape(-1)
        if freqs.shape != (K,):
            raise Refuse(f"BesselRBF freqs has shape {freqs.shape}, expected ({K},)")
        tensors["representation.radial_basis.freqs"] = freqs
    else:
        raise Refuse(f"radial basis is {type(rbf).__module__}.{type(rbf).__name__}; mdrun "
                     f"supports GaussianRBF and BesselRBF")

    # ---- embedding table, padded / truncated to 100 rows
    W = _np(emb.weight)
    if W.shape[0] < N_EMBED:
        notes.append(f"embedding has {W.shape[0]} rows; padded with zero rows to {N_EMBED}")
        W = np.concatenate([W, np.zeros((N_EMBED - W.shape[0], F_))], axis=0)
    elif W.shape[0] > N_EMBED:
        W = W[:N_EMBED]
    tensors["representation.embedding.weight"] = W

    # ---- filters
    shared_filters = bool(rep.share_filters)
    _check_dense(rep.filter_net, "representation.filter_net", "none", None)
    n_filter = 3 * F_ if shared_filters else 3 * F_ * T
    if tuple(rep.filter_net.weight.shape) != (n_filter, K):
        raise Refuse(f"filter_net weight has shape {tuple(rep.filter_net.weight.shape)}, "
                     f"expected ({n_filter}, {K})")
    _dense_tensors(rep.filter_net, "representation.filter_net", tensors)

    # ---- interactions and mixing (shared modules are written T times)
    if len(rep.interactions) != T or len(rep.mixing) != T:
        raise Refuse(f"PaiNN has {len(rep.interactions)} interactions / {len(rep.mixing)} "
                     f"mixing blocks, n_interactions = {T}")
    if T > 1 and rep.interactions[0] is rep.interactions[1]:
        notes.append(f"shared_interactions: one block written out as {T} identical copies")
    eps_values = set()
    for t in range(T):
        inter, mix = rep.interactions[t], rep.mixing[t]
        if type(inter) is not PaiNNInteraction or type(mix) is not PaiNNMixing:
            raise Refuse(f"interaction block {t} is {type(inter).__name__}/{type(mix).__name__}, "
                         f"expected PaiNNInteraction/PaiNNMixing")
        p = f"representation.interactions.{t}.interatomic_context_net"
        _check_mlp2(inter.interatomic_context_net, p)
        _dense_tensors(inter.interatomic_context_net[0], f"{p}.0", tensors)
        _dense_tensors(inter.interatomic_context_net[1], f"{p}.1", tensors)
        p = f"representation.mixing.{t}.intraatomic_context_net"
        _check_mlp2(mix.intraatomic_context_net, p)
        _dense_tensors(mix.intraatomic_context_net[0], f"{p}.0", tensors)
        _dense_tensors(mix.intraatomic_context_net[1], f"{p}.1", tensors)
        _check_dense(mix.mu_channel_mix, f"representation.mixing.{t}.mu_channel_mix", "none", False)
        tensors[f"representation.mixing.{t}.mu_channel_mix.weight"] = _np(mix.mu_channel_mix.weight)
        eps_values.add(float(mix.epsilon))
    if len(eps_values) != 1:
        raise Refuse(f"mixing blocks use different epsilons {sorted(eps_values)}")
    epsilon = eps_values.pop()

    # ---- output modules: one Atomwise energy head (+ Forces / Response)
    heads = []
    for k, m in enumerate(model.output_modules):
        if type(m) is spk.atomistic.Atomwise:
            heads.append((k, m))
        elif type(m) in (spk.atomistic.Forces, spk.atomistic.Response):
            pass
        else:
            raise Refuse(f"output_modules.{k} is {type(m).__module__}.{type(m).__name__}; "
                         f"mdrun supports one Atomwise energy head plus Forces")
    if len(heads) != 1:
        raise Refuse(f"expected exactly one Atomwise output module, found {len(heads)}")
    k_head, head = heads[0]
    if k_head != 0:
        raise Refuse(f"the Atomwise head is output_modules.{k_head}; the mdrun format names "
                     f"it output_modules.0 (put Forces after it)")
    energy_key = head.output_key
    if head.aggregation_mode != "sum":
        raise Refuse(f"Atomwise aggregation_mode is {head.aggregation_mode!r}; mdrun needs 'sum'")
    if int(head.n_out) != 1:
        raise Refuse(f"Atomwise n_out is {head.n_out}; an energy head has n_out = 1")
    _check_mlp2(head.outnet, "output_modules.0.outnet")
    if int(head.outnet[1].weight.shape[0]) != 1 or int(head.outnet[0].weight.shape[1]) != F_:
        raise Refuse("Atomwise outnet shapes do not match (n_atom_basis -> H -> 1)")
    _dense_tensors(head.outnet[0], "output_modules.0.outnet.0", tensors)
    _dense_tensors(head.outnet[1], "output_modules.0.outnet.1", tensors)
    for k, m in enumerate(model.output_modules):
        if type(m) is spk.atomistic.Forces:
            if m.energy_key != energy_key:
                raise Refuse(f"output_modules.{k} (Forces) differentiates {m.energy_key!r}, "
                             f"but the Atomwise head writes {energy_key!r}")
        elif type(m) is spk.atomistic.Response:
            bad = [p for p in m.response_properties
                   if p not in (props.forces, props.stress, props.hessian)]
            if bad or m.energy_key != energy_key:
                raise Refuse(f"output_modules.{k} (Response) computes {bad or m.energy_key}; "
                             f"mdrun only reproduces energy derivatives of {energy_key!r}")

    # ---- postprocessors (applied only when model.do_postprocessing is true)
    mean_per_atom = 0.0
    atomref = np.zeros(N_EMBED)
    have_mean = have_atomref = False
    if not getattr(model, "do_postprocessing", True):
        if len(model.postprocessors) > 0:
            notes.append("model.do_postprocessing is False: its postprocessors (offsets) are "
                         "not applied by schnetpack and are not exported")
    else:
        for k, pp in enumerate(model.postprocessors):
            tp = type(pp)
            if tp in (spk.transform.CastTo32, spk.transform.CastTo64):
                continue
            if tp is not spk.transform.AddOffsets:
                raise Refuse(f"postprocessors.{k} is {tp.__module__}.{tp.__name__}; mdrun "
                             f"represents only AddOffsets and CastTo32/CastTo64")
            if pp._property != energy_key:
                raise Refuse(f"postprocessors.{k} (AddOffsets) acts on {pp._property!r}, "
                             f"not on the energy {energy_key!r}")
            if pp.add_mean:
                m = _np(pp.mean).reshape(-1)
                if m.shape != (1,):
                    raise Refuse(f"postprocessors.{k}.mean has shape {m.shape}, expected (1,)")
                if not pp.is_extensive and m[0] != 0.0:
                    raise Refuse(f"postprocessors.{k} (AddOffsets) is not extensive: its mean "
                                 f"is added once per structure, not per atom")
                mean_per_atom += float(m[0])
                have_mean = True
            if pp.add_atomrefs:
                a = _np(pp.atomref).reshape(-1)
                if not pp.is_extensive and np.any(a != 0.0):
                    raise Refuse(f"postprocessors.{k} (AddOffsets) is not extensive: its "
                                 f"atomref sum is divided by N")
                n = min(a.shape[0], N_EMBED)
                atomref[:n] += a[:n]
                have_atomref = True

    scale = 1.0
    tensors["energy.scale"] = np.array([scale])
    if have_mean:
        tensors["energy.mean_per_atom"] = np.array([mean_per_atom])
    if have_atomref:
        tensors["energy.atomref"] = atomref

    for name, v in tensors.items():
        if not np.all(np.isfinite(v)):
            raise Refuse(f"tensor {name} holds non-finite values")

    # ---- elements
    if elements is None:
        nz = [z for z in range(1, N_EMBED) if atomref[z] != 0.0]
        if have_atomref and nz:
            elements = nz
            notes.append(f"elements taken from the nonzero atomref entries: {nz}")
        else:
            elements = list(DEFAULT_ELEMENTS)
            notes.append(f"WARNING: elements not given (--elements) and not inferable; "
                         f"defaulting to {elements}")
    for z in elements:
        if not (1 <= z < N_EMBED):
            raise Refuse(f"element {z} outside 1..{N_EMBED - 1}")

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_atom_basis": str(F_),
        "n_interactions": str(T),
        "n_rbf": str(K),
        "cutoff": _fmt_float(cutoff),
        "radial_basis": radial,
        "shared_filters": "true" if shared_filters else "false",
        "elements": ",".join(str(z) for z in sorted(set(elements))),
        "energy_unit": "eV",
        "length_unit": "Angstrom",
        "epsilon": _fmt_float(epsilon),
        "source": f"schnetpack {getattr(model, 'spk_version', spk.__version__)}",
    }
    return tensors, meta, notes


def write_safetensors(path: str, arrays: Dict[str, np.ndarray], meta: Dict[str, str]) -> None:
    """Write a safetensors file with a deterministic (sorted) header, then read it back with
    the safetensors package to check it. (safetensors' own save_file orders the metadata
    through a hash map, so its bytes differ from run to run.)"""
    import json
    from safetensors.numpy import load_file

    codes = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32"}
    header: Dict[str, object] = {"__metadata__": dict(sorted(meta.items()))}
    blobs = []
    offset = 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(len(h).to_bytes(8, "little"))
        fh.write(h)
        for b in blobs:
            fh.write(b)
    back = load_file(path)
    if set(back) != set(arrays) or any(not np.array_equal(back[k], arrays[k]) for k in arrays):
        raise RuntimeError(f"read-back check of {path} failed")


def export(model, out_path: str, dtype: str = "float64", description: Optional[str] = None,
           trained: bool = False, elements: Optional[List[int]] = None,
           model_path: str = "") -> List[str]:
    torch, _, _, spk = _import_stack()

    tensors, meta, notes = extract(model, elements)
    np_dtype = {"float64": np.float64, "float32": np.float32}[dtype]
    arrays = {k: np.ascontiguousarray(v.astype(np_dtype, copy=True)) for k, v in tensors.items()}
    meta["trained"] = "true" if trained else "false"
    meta["description"] = description or (
        f"schnetpack PaiNN exported from {model_path or 'a saved model'} by "
        f"tools/export_schnetpack.py")
    meta["exporter"] = (f"tools/export_schnetpack.py (schnetpack {spk.__version__}, "
                        f"torch {torch.__version__})")
    write_safetensors(out_path, arrays, meta)
    return notes


def _parse_elements(s: str) -> List[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--elements wants comma-separated atomic numbers, got {s!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_path", help="torch.save'd schnetpack NeuralNetworkPotential")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="storage dtype of all tensors (default float64: lossless)")
    ap.add_argument("--description", default=None, help="free-text metadata `description`")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--trained", dest="trained", action="store_true",
                   help="mark the model as fitted to data (metadata trained=true)")
    g.add_argument("--untrained", dest="trained", action="store_false",
                   help="mark the model as untrained (the default)")
    ap.set_defaults(trained=False)
    ap.add_argument("--elements", type=_parse_elements, default=None,
                    help="comma-separated atomic numbers the model was trained on "
                         "(default: nonzero atomref entries, else 1,6,7,8)")
    args = ap.parse_args(argv)

    try:
        torch, _, _, _ = _import_stack()
        torch.set_num_threads(1)
    except ImportError as e:
        print(f"export_schnetpack: missing package ({e}); see tools/requirements-export.txt",
              file=sys.stderr)
        return 1
    try:
        model = load_saved_model(args.model_path)
    except Exception as e:  # noqa: BLE001
        print(f"export_schnetpack: cannot load {args.model_path}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    try:
        notes = export(model, args.out, args.dtype, args.description, args.trained,
                       args.elements, args.model_path)
    except Refuse as e:
        print(f"export_schnetpack: refusing {args.model_path}: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"export_schnetpack: note: {n}", file=sys.stderr)
    print(f"export_schnetpack: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
