#!/usr/bin/env python3
"""Cuts the dense kernels (embed, mixing_forward, mixing_forward_last, mixing_backward and what they
use) out of kernels/common.cuh and kernels/painn.cu into one file that harness.cpp includes once
per emulated block, with the cluster-exchange primitives replaced by shim.h's emulation.

    python3 tools/kernel-emu/extract_dense.py kernels/common.cuh kernels/painn.cu OUT.inc

Everything else of the kernel source is kept as written. Where the source no longer looks the way
this script expects (a primitive added to the exchange, a kernel renamed), it stops with a message
rather than emulate something else than the GPU runs.
"""
import re
import sys

import source_cut

# The CLUSTER > 1 exchange primitives as shim.h emulates them: the same names and signatures.
EXCHANGE_EMULATION = """#if CLUSTER > 1
#define DENSE_KERNEL void
#define DENSE_TILE_INDEX (blockIdx.x / CLUSTER)
__shared__ u64 matvec_barrier[2];
__device__ __forceinline__ void dense_kernel_start() {
    ::emu_dense_kernel_start();
    follow_previous_kernels();
}
__device__ __forceinline__ void cluster_ready() { ::emu_cluster_ready(); }
__device__ __forceinline__ u64 matvec_arrive(u32 which, u32 bytes) { return ::emu_matvec_arrive(which, bytes); }
__device__ __forceinline__ void matvec_wait(u32 which, u64 state) { ::emu_matvec_wait(which, state); }
__device__ __forceinline__ void send_to_block(float* local, u32 rank, u32 which, float value) {
    ::emu_send_to_block(local, rank, which, value);
}"""
EMULATED_PRIMITIVES = {"dense_kernel_start", "cluster_ready", "matvec_arrive", "matvec_wait", "send_to_block"}


def fail(message):
    sys.exit(f"extract_dense.py: {message} (tools/kernel-emu needs updating to the kernel source)")


def replace_once(text, old, new, what):
    if text.count(old) != 1:
        fail(f"expected exactly one {what}: {old.strip()!r}")
    return text.replace(old, new)


def common(source):
    text = source.replace("#pragma once", "")
    lines = text.split("\n")
    # The dense exchange block: the first `#if CLUSTER > 1` at column 0 up to its `#else`.
    start = next((i for i, line in enumerate(lines) if line.startswith("#if CLUSTER > 1")), None)
    if start is None:
        fail("no `#if CLUSTER > 1` block in common.cuh")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("#else", "#endif")))
    block = "\n".join(lines[start:end])
    defined = set(re.findall(r"__device__ __forceinline__ \w+ (\w+)\(", block))
    if defined != EMULATED_PRIMITIVES:
        fail(f"the exchange block defines {sorted(defined)}, the emulation {sorted(EMULATED_PRIMITIVES)}")
    lines[start:end] = EXCHANGE_EMULATION.split("\n")
    text = "\n".join(lines)
    text = replace_once(text, '#define DENSE_KERNEL extern "C" __global__ void DENSE_BOUNDS', "#define DENSE_KERNEL void",
                        "single-block DENSE_KERNEL")
    # Every read of an exchange's sums goes through Reduced: it remembers the exchange it was made
    # after, and each read is checked against the protocol.
    text = replace_once(text, "    int rank_stride, ld, first;\n",
                        "    int rank_stride, ld, first;\n    long exchange = ::emu_current_exchange();\n",
                        "Reduced member list")
    text = replace_once(text, "        const float* v = p + a * ld + c - first;\n",
                        "        const float* v = p + a * ld + c - first;\n"
                        "        ::emu_check_reduced_read(v, exchange);\n", "Reduced read")
    text = replace_once(text, "        for (int r = 1; r < CLUSTER; ++r) total += v[r * rank_stride];\n",
                        "        for (int r = 1; r < CLUSTER; ++r) {\n"
                        "            ::emu_check_reduced_read(v + r * rank_stride, exchange);\n"
                        "            total += v[r * rank_stride];\n"
                        "        }\n", "Reduced sum over ranks")
    return text


def find_once(text, needle):
    if text.count(needle) != 1:
        fail(f"expected exactly one {needle!r} in painn.cu")
    return text.index(needle)


def painn(source):
    # The context network and embed, then everything from the mixing weights through
    # mixing_backward: the per-atom (dense) kernels and their helpers, no message kernels.
    first = find_once(source, "struct ContextBias {")
    first_end = source_cut.through_body(source, find_once(source, "DENSE_KERNEL embed("), "embed", fail)
    second = find_once(source, "struct MixingWeights {")
    second_end = source_cut.through_body(source, find_once(source, "DENSE_KERNEL mixing_backward("), "mixing_backward", fail)
    if not first_end < second:
        fail("embed is expected before the mixing kernels")
    return source[first:first_end] + "\n\n" + source[second:second_end] + "\n"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    common_path, painn_path, out_path = sys.argv[1:]
    with open(common_path, encoding="utf-8") as f:
        text = common(f.read())
    with open(painn_path, encoding="utf-8") as f:
        text += "\n// ---- kernels/painn.cu (dense kernels) ----\n" + painn(f.read())
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("// Generated by tools/kernel-emu/extract_dense.py: do not edit.\n" + text)


if __name__ == "__main__":
    main()
