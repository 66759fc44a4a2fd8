#!/usr/bin/env python3
"""Per-kernel times from an ncu raw CSV (`ncu --csv --page raw --metrics gpu__time_duration.sum`).

Prints, per kernel name: calls profiled, median and min-max µs per call, and the calls' share of
the profiled time, longest first. ncu serializes kernels, so these are plain-launch times: a
programmatic-launch graph overlaps part of each (perf-notes).

    python3 tools/device/ncu_table.py results/ncu-benzene.csv
"""
import csv
import statistics
import sys

METRIC = "gpu__time_duration.sum"
TO_MICROSECONDS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def read_times(lines):
    """{kernel name: [µs per call]} from the CSV's lines (ncu's own messages before it are skipped)."""
    rows = list(csv.reader(line for line in lines if line.startswith('"')))
    if not rows:
        raise ValueError("no CSV rows (was ncu run with --csv --page raw?)")
    header = rows[0]
    try:
        name_at, value_at = header.index("Kernel Name"), header.index(METRIC)
    except ValueError as missing:
        raise ValueError(f"the CSV has no {missing} column") from None
    scale = 1.0
    times = {}
    for row in rows[1:]:
        value = row[value_at].replace(",", "")
        try:
            number = float(value)
        except ValueError:
            # The units row, right under the header.
            if value not in TO_MICROSECONDS:
                raise ValueError(f"unknown unit {value!r} of {METRIC}") from None
            scale = TO_MICROSECONDS[value]
            continue
        name = row[name_at].split("(")[0].strip()
        times.setdefault(name, []).append(number * scale)
    return times


def table(times):
    total = sum(sum(calls) for calls in times.values())
    lines = ["| kernel | calls | median µs | min–max µs | share |", "|---|---:|---:|---:|---:|"]
    for name, calls in sorted(times.items(), key=lambda item: -sum(item[1])):
        lines.append(
            f"| {name} | {len(calls)} | {statistics.median(calls):.2f} | "
            f"{min(calls):.2f}–{max(calls):.2f} | {100 * sum(calls) / total:.1f}% |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8", errors="replace") as f:
            print(table(read_times(f)))
    except (OSError, ValueError) as error:
        print(f"ncu_table: {argv[1]}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
