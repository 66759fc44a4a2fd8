#!/usr/bin/env bash
# One device call: what a session needs from the GPU, in one command (the device tool lends
# about 30 minutes a session, and each machine start costs a minute or more).
#
# Here, without a GPU:
#   ../shared/tools/device-bundle          # release binary and test executables into .device/
#   # only the test executables with GPU tests (carry takes 64 MiB in all):
#   rm .device/tests/{dense_emulation,kernels_compile,kernel_cache,md,mdrun,model_format,neighbors,painn_cpu,schnetpack_reference,validate}-*
#   # optional: the kernel cache records an earlier call brought back (records/*.options), so
#   # that the device loads compiled kernels instead of compiling ~100 launch shapes (~3 s each;
#   # xz takes a cubin's 650 KB to ~65 KB):
#   rm -rf /tmp/kc && .device/bin/mdrun precompile --records RECORDS --cache /tmp/kc &&
#     tar cJf .device/kernel-cache.tar.xz -C /tmp/kc .
#   # the carry takes 64 MiB with the tracked tree (~24 MB): for a bench call move .device/tests
#   # out, for a tests call .device/baseline.
#   # optional: another commit's binary, benched against this one round by round:
#   mkdir -p .device/baseline && cp OTHER/mdrun .device/baseline/mdrun
#   # optional: in-binary variants (VARIANTS, default the last mixing with its a_vv third and the
#   # pair record at every size: "noavv:MDRUN_LAST_WITHOUT_A_VV=0 record:MDRUN_PAIR_RECORD=1"; ""
#   # for none):
#   # space-separated NAME:VAR=VALUE[,VAR=VALUE], benched round by round beside main and run
#   # under ncu at benzene; BASELINE_VARIANTS the same for the baseline binary (each benched as
#   # baseline_NAME; default none: the baseline as it is); NCU_VARIANTS the names of those
#   # profiled by ncu (default all); SYSTEMS the bench's systems (default the seven below);
#   # VALIDATE_ONLY the validation campaign's systems (default waterbox,benzene).
# There (device tool, carry [".device"]), from the repository root:
#   LIMIT=540 bash tools/device/call.sh [bench] [tests] [validate] [ncu]   # default: all four
#   tar xzf $OUT/results.tgz -O results/progress.txt
# Results: $OUT/results.tgz (one file: the device tool brings back at most 8): progress.txt
# (each part's exit code and clock time), bench JSONs, test logs, the validation report, the
# ncu per-kernel CSVs at benzene and the 192-atom water box and their tables
# (tools/device/ncu_table.py, also printed last),
# and the kernel cache's records for the next precompile. A
# watchdog tars what exists LIMIT − 15 s after the start, so a call stopped at the device
# tool's limit still brings back what it measured. Exits 1 when a part failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
parts=${*:-bench tests validate ncu}
for part in $parts; do
  case $part in
  bench | tests | validate | ncu) ;;
  *) echo "call.sh: unknown part '$part' (bench, tests, validate, ncu)" >&2 && exit 2 ;;
  esac
done
limit=${LIMIT:-540}
out=${OUT:-/tmp/mdrun-call}
results=$(mktemp -d)/results
mkdir -p "$results/tests" "$out"
export MDRUN_KERNEL_CACHE=$PWD/.device/kernel-cache
mkdir -p "$MDRUN_KERNEL_CACHE"
[ -f .device/kernel-cache.tar.xz ] && tar xJf .device/kernel-cache.tar.xz -C "$MDRUN_KERNEL_CACHE"
mdrun=.device/bin/mdrun
progress() { echo "$* $(date +%H:%M:%S)" | tee -a "$results/progress.txt"; }
pack() {  # a temporary archive per writer: the watchdog's and the last pack may overlap
  cp "$MDRUN_KERNEL_CACHE"/*.options "$results/records/" 2>/dev/null
  tar czf "$out/results.tgz.$BASHPID" -C "$(dirname "$results")" results &&
    mv "$out/results.tgz.$BASHPID" "$out/results.tgz"
}
mkdir -p "$results/records"
# Its output to /dev/null: a sleeping child holding stdout open would hold the call open too.
(sleep $((limit - 15)) && progress "watchdog: packing at the limit" && pack) >/dev/null 2>&1 &
watchdog=$!

progress "start: parts [$parts], $(ls "$MDRUN_KERNEL_CACHE"/*.cubin 2>/dev/null | wc -l) cubins precompiled"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader \
  >>"$results/progress.txt" 2>&1
git rev-parse HEAD >"$results/COMMIT" 2>/dev/null || true

# The small systems, one molecule to the 192-atom water box: the MD step in the CUDA graph.
# SYSTEMS overrides (space-separated paths), e.g. for a sweep of launch shapes over a few sizes.
systems=${SYSTEMS:-"systems/water.xyz systems/ethanol.xyz systems/benzene.xyz systems/alanine_dipeptide.pdb
systems/water_cluster_17.xyz systems/water_cluster_33.xyz systems/waterbox_64.xyz"}
variants=${VARIANTS-noavv:MDRUN_LAST_WITHOUT_A_VV=0 record:MDRUN_PAIR_RECORD=1}
# The baseline's runs, the same way (none: the baseline as it is).
baseline_variants=${BASELINE_VARIANTS-}
# The environment assignments of variant NAME in the list $2 (as `env` arguments).
variant_env() {
  for v in ${2-$variants}; do [ "${v%%:*}" = "$1" ] && echo "${v#*:}" | tr ',' ' '; done
}
bench() {  # name binary round [VAR=VALUE ...]
  # shellcheck disable=SC2086
  env "${@:4}" "$2" bench $systems --configs +cuda-graph --reference-max-atoms 200 --json "$results/bench-$1-$3.json" \
    >"$results/bench-$1-$3.log" 2>&1
  progress "bench $1 round $3 rc $?"
}
if [[ " $parts " == *" bench "* ]]; then
  for round in 1 2; do
    bench main "$mdrun" "$round"
    for v in $variants; do
      # shellcheck disable=SC2046
      bench "${v%%:*}" "$mdrun" "$round" $(variant_env "${v%%:*}")
    done
    if [ -x .device/baseline/mdrun ] && [ -z "$baseline_variants" ]; then
      bench baseline .device/baseline/mdrun "$round"
    elif [ -x .device/baseline/mdrun ]; then
      for v in $baseline_variants; do
        # shellcheck disable=SC2046
        bench "baseline_${v%%:*}" .device/baseline/mdrun "$round" $(variant_env "${v%%:*}" "$baseline_variants")
      done
    fi
  done
fi

# Every test executable with GPU tests, ignored ones included; gpu_dense_layouts (the longest)
# beside the others, one copy (two at once ran past 330 s on an H200).
run_tests() {
  for name in "$@"; do
    for t in .device/tests/"$name"-*; do
      [ -x "$t" ] || { progress "test $name rc 127 (no test executable in .device/tests)" && continue; }
      # --nocapture: the tests' figures (errors against the references) come back too.
      "$t" --include-ignored --nocapture >"$results/tests/$name.log" 2>&1
      progress "test $name rc $? ($(grep -h '^test result' "$results/tests/$name.log" | tail -1))"
    done
  done
}
if [[ " $parts " == *" tests "* ]]; then
  run_tests gpu_dense_layouts &
  layouts=$!
  run_tests gpu gpu_cluster gpu_naive restart bench cli
fi

if [[ " $parts " == *" validate "* ]]; then
  "$mdrun" validate inputs/validate.toml --device cuda --only "${VALIDATE_ONLY:-waterbox,benzene}" --out "$results/validate" \
    >"$results/validate.log" 2>&1
  progress "validate rc $?"
  rm -f "$results"/validate/*.xyz "$results"/validate/*.dcd
fi

if [[ " $parts " == *" ncu "* ]] && ! command -v ncu >/dev/null; then
  progress "ncu rc 127 (no ncu on this machine)"
elif [[ " $parts " == *" ncu "* ]]; then
  # Per-kernel times with plain launches (ncu serializes the kernels): 600 launches after 3,000
  # (past start-up and the first force calls), at benzene and at the 192-atom water box (the
  # issue's two small-system targets).
  ncu_at() {  # name system [VAR=VALUE ...]
    timeout 150 env "${@:3}" ncu --csv --page raw --metrics gpu__time_duration.sum --launch-skip 3000 \
      --launch-count 600 "$mdrun" bench "systems/$2" --configs +fused --reference-max-atoms 0 --budget 0.5 \
      >"$results/ncu-$1.csv" 2>"$results/ncu-$1.log"
    progress "ncu $1 rc $?"
    python3 tools/device/ncu_table.py "$results/ncu-$1.csv" >"$results/ncu-$1.md"
  }
  for system in benzene.xyz waterbox_64.xyz; do
    ncu_at "${system%.*}" "$system"
  done
  # NCU_VARIANTS: the variants profiled (names from VARIANTS; default all of them).
  for v in $variants; do
    [ -n "${NCU_VARIANTS+x}" ] && [[ " $NCU_VARIANTS " != *" ${v%%:*} "* ]] && continue
    # shellcheck disable=SC2046
    ncu_at "benzene-${v%%:*}" benzene.xyz $(variant_env "${v%%:*}" "$variants")
    # shellcheck disable=SC2046
    ncu_at "waterbox_64-${v%%:*}" waterbox_64.xyz $(variant_env "${v%%:*}" "$variants")
  done
fi

[ -n "${layouts:-}" ] && wait "$layouts"
pkill -P "$watchdog" 2>/dev/null
kill "$watchdog" 2>/dev/null
progress "done"
pack
cat "$results"/ncu-*.md 2>/dev/null
if grep -h "rc [^0]" "$results/progress.txt"; then
  echo "SOME PART FAILED"
  exit 1
fi
echo "every part passed"
