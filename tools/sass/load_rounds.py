#!/usr/bin/env python3
"""Rounds of global-load latency per kernel, read from the machine code (no GPU needed).

The kernels that bound mdrun's small systems are latency-bound: what matters is how many times a
thread waits for global loads in a row, not how many loads it issues. This tool compiles the
kernels as mdrun does (common.cuh, then the sources in src/gpu/mod.rs's order, with NVRTC and the
same -D sizes) for sm_90, disassembles them with nvdisasm and, walking each kernel's instructions
in order, prints one token per wait: `W<n>` is an instruction that reads the result of a pending
global load, `n` the loads issued since the previous wait; `|` is a block or transaction
barrier, `(<n>)` loads still pending at a barrier. A chain like `W2 W2 W2 W2` is loads issued
two at a time, each pair waited for before the next goes out (perf-notes v44: a bound check per
load did that to a 128 -> 384 matvec); `W32` is one round. With --trace KERNEL it lists, from the
kernel's wait for the previous kernel (griddepcontrol.wait) to its first barrier, each load and
each wait with the loads it waits for (perf-notes v48).

It is a reading aid, not a timing: ptxas's order is what the hardware issues, but whether a wait
stalls depends on how long ago the load went out. Since session 23 mdrun loads the cubin NVRTC
compiles for sm_90 (src/gpu/compile.rs), so with the same NVRTC version this is the machine code
that runs.

Needs the NVRTC library (PyPI nvidia-cuda-nvrtc==13.0.88, as .ci/run installs) and nvdisasm
(PyPI nvidia-cuda-nvdisasm); give their paths with --nvrtc / --nvdisasm or let the tool look in
.ci-venv and on PATH. Example (benzene's layout: clusters of 4, one atom per block):

    python3 tools/sass/load_rounds.py --kernels 'mixing|message'
    python3 tools/sass/load_rounds.py -D TILE=2 -D CLUSTER=1 -D PAIR_SPLIT=1 -D CHANNEL_SLICES=2 \\
        -D MMA_PAIR_SPLIT=1 --trace message_forward_mma
"""
import argparse
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# mdrun's sizes for benzene on Hopper (KernelSizes::for_system, F = 128, 20 radial functions).
DEFAULTS = {
    "NF": "128", "NK": "20", "NH": "64", "SPLIT": "4", "TILE": "1", "CLUSTER": "4",
    "PAIR_SPLIT": "4", "CHANNEL_SLICES": "4", "MMA_PAIR_SPLIT": "4", "CLUSTER_MATVEC_W": "8",
    "PDL_EARLY_TRIGGER": "0",
}


def source():
    """The kernels as src/gpu/mod.rs's full_source() joins them."""
    mod = open(os.path.join(ROOT, "src/gpu/mod.rs")).read()
    names = re.findall(r'\("(\w+\.cu)", include_str!', mod)
    text = open(os.path.join(ROOT, "kernels/common.cuh")).read().replace("#pragma once", "")
    for name in names:
        text += f"\n// ---- {name}\n" + open(os.path.join(ROOT, "kernels", name)).read()
    return text


def find(explicit, patterns, what):
    if explicit:
        return explicit
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(ROOT, pattern), recursive=True))
        if hits:
            return hits[0]
    sys.exit(f"load_rounds: {what} not found; give its path ({'--nvrtc' if 'nvrtc' in what else '--nvdisasm'})")


def compile_cubin(nvrtc_path, defines):
    # NVRTC opens its builtins library by name at compile time: load it first, from beside it.
    for builtins in glob.glob(os.path.join(os.path.dirname(nvrtc_path), "libnvrtc-builtins.so*")):
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(nvrtc_path)
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source().encode(), b"mdrun.cu", 0, None, None) != 0:
        sys.exit("load_rounds: nvrtcCreateProgram failed")
    opts = [b"-arch=sm_90", b"--std=c++17", b"-Xptxas", b"-v"] + [f"-D{k}={v}".encode() for k, v in defines.items()]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    log = log.value.decode(errors="replace")
    if rc != 0:
        sys.exit(log)
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    usage, kernel = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            kernel = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m and kernel:
            usage.setdefault(kernel, []).append(f"{m.group(1)} registers")
        m = re.search(r"(\d+) bytes smem", line)
        if m and kernel:
            usage.setdefault(kernel, []).append(f"{m.group(1)} B shared")
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and kernel and m.group(1) != "0":
            usage.setdefault(kernel, []).append(f"{m.group(1)} B spilled")
    return cubin.raw, usage


def kernels(sass):
    """{name: [instruction text, ...]} from nvdisasm's output."""
    out, name = {}, None
    for line in sass.splitlines():
        m = re.match(r"\s*\.text\.(\w+):", line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(.*?)\s*;", line)
        if m and name:
            out[name].append(m.group(1))
    return out


def parse(ins):
    core = re.sub(r"^@!?U?P\w+\s+", "", ins)
    op = core.split()[0] if core.split() else ""
    return op, core, re.findall(r"\bR\d+\b", core[len(op):])


def is_barrier(op):
    return op.startswith("BAR") or "SYNCS" in op or "CGABAR" in op


def rounds(instructions):
    pending, issued, tokens = set(), 0, []
    for ins in instructions:
        op, core, regs = parse(ins)
        if op.startswith("LDG") and not op.startswith(("LDGSTS", "LDGDEPBAR")):  # cp.async: no register
            addr = re.findall(r"\bR\d+\b", core[core.index("["):]) if "[" in core else []
            if any(r in pending for r in addr):  # a load whose address is a pending load's value
                tokens.append(f"W{issued}")
                pending.clear()
                issued = 0
            pending.add(regs[0])
            issued += 1
            continue
        if is_barrier(op):
            if pending:
                tokens.append(f"({issued})")
            tokens.append("|")
            continue
        sources = regs if op.startswith("ST") else regs[1:]
        if any(r in pending for r in sources):
            tokens.append(f"W{issued}")
            pending.clear()
            issued = 0
        elif regs and not op.startswith("ST"):
            pending.discard(regs[0])  # overwritten before use
    return " ".join(tokens)


def trace(instructions):
    started, pending = False, {}
    for ins in instructions:
        op, core, regs = parse(ins)
        if op.startswith("ACQBULK"):
            started = True
            print("  griddepcontrol.wait")
            continue
        if not started:
            continue
        if is_barrier(op):
            print("  barrier:", ins)
            return
        if op.startswith("LDG") and not op.startswith(("LDGSTS", "LDGDEPBAR")):  # cp.async: no register
            pending[regs[0]] = ins
            print("    load", ins)
            continue
        sources = regs if op.startswith("ST") else regs[1:]
        hit = [pending[r] for r in sources if r in pending]
        if hit:
            print(f"  WAIT  {ins}   <- {'; '.join(h.split(',')[0] for h in hit)}")
            pending.clear()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-D", dest="define", action="append", default=[], help="NAME=VALUE over the benzene defaults")
    ap.add_argument("--kernels", default=".", help="regex of kernel names (default: all)")
    ap.add_argument("--trace", help="one kernel: its loads and waits up to its first barrier")
    ap.add_argument("--nvrtc", help="path of libnvrtc.so.13")
    ap.add_argument("--nvdisasm", help="path of nvdisasm")
    ap.add_argument("--dump", help="directory: write each selected kernel's instructions to <kernel>.sass (for diffs)")
    args = ap.parse_args()
    defines = dict(DEFAULTS)
    for d in args.define:
        k, _, v = d.partition("=")
        defines[k] = v
    nvrtc = find(args.nvrtc, [".ci-venv/**/libnvrtc.so.13"], "libnvrtc.so.13")
    nvdisasm = args.nvdisasm or shutil.which("nvdisasm") or find(None, [".ci-venv/**/bin/nvdisasm"], "nvdisasm")
    cubin, usage = compile_cubin(nvrtc, defines)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([nvdisasm, "-c", f.name], check=True, capture_output=True, text=True).stdout
    code = kernels(sass)
    if args.trace:
        if args.trace not in code:
            sys.exit(f"load_rounds: no kernel {args.trace!r}")
        trace(code[args.trace])
        return
    pattern = re.compile(args.kernels)
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    for name in sorted(code):
        if pattern.search(name):
            print(f"{name} ({', '.join(usage.get(name, []))}): {rounds(code[name])}")
            if args.dump:
                with open(os.path.join(args.dump, f"{name}.sass"), "w") as out:
                    out.write("\n".join(code[name]) + "\n")


if __name__ == "__main__":
    main()
