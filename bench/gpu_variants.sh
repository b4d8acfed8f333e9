#!/usr/bin/env bash
# Variants of a change measured side by side in one call on the GPU machine (timings compare only
# within one call):
#   bash bench/gpu_variants.sh 'BUILD/nala bench attention --device cuda --kind nala' TREE...
# Each TREE is a source tree made here before the call, e.g.
#   rm -rf .carry/v1 && mkdir -p .carry/v1 && git archive HEAD | tar -x -C .carry/v1   (then edited)
# or `.`, the working tree. A tree builds in build-NAME, NAME its last path component (nala_cli
# only), the working tree in build-gpu, gpu_run.sh's directory (in full with RUN_TESTS=1). A failed
# build stops the script: a warm machine keeps build directories, and an old binary must not stand
# in for a tree that did not compile. Then:
# - with RUN_TESTS=1, all tests and gradcheck on CUDA on the working tree (gpu_run.sh tests);
# - each tree's NaLa output and gradients against the CPU's (`nala attn --grad-out`, float32,
#   d = 32 and 64, B = H = 2, N = 256; check.txt: max |cuda - cpu| / max |cpu|, 4-6e-4 with the
#   TF32 products in sessions 11 and 12; a check fails past 2e-3, the bound of the TF32 tests in
#   tests/autograd/test_attention.cpp);
# - the command twice per tree, alternating, BUILD/ standing for the tree's build directory (run
#   with pipefail: a pipeline fails when any part of it does, so leave out `| head`).
# Logs under $OUT, the GPU's name first in compare.log, the benchmark's output printed last. The
# exit status is nonzero when a build, the tests, a check or a benchmark failed.
# bench/gpu_compare.sh is this script for a baseline and the working tree, with the tests.
set -uo pipefail
OUT=${OUT:-/tmp/out}
[ $# -ge 2 ] || { echo "usage: gpu_variants.sh 'COMMAND' TREE..."; exit 2; }
COMMAND=$1
shift
TREES=("$@")
mkdir -p "$OUT"
build_dir() { if [ "$1" = . ]; then echo build-gpu; else echo "build-$(basename "$1")"; fi; }
# Each tree needs its own build directory (two trees named alike would build into one), and
# build-gpu is the working tree's (gpu_run.sh's), whether or not `.` is among the trees.
for tree in "${TREES[@]}"; do
  [ "$tree" = . ] || [ "$(basename "$tree")" != gpu ] || { echo "a tree may not be named gpu: $tree"; exit 2; }
done
dirs=$(for tree in "${TREES[@]}"; do build_dir "$tree"; done)
[ "$(sort <<< "$dirs" | uniq -d)" = "" ] || { echo "trees share a build directory: $dirs"; exit 2; }
# The device tool brings back at most 8 files from $OUT: on any exit the configure and build
# logs (and the GPU's name) travel as one archive, leaving compare.log, check.txt,
# attn_check.log, ctest.log, gradcheck_cuda.log and two files for the caller's own.
pack_logs() {
  local logs
  logs=$(cd "$OUT" && ls gpu.txt configure*.log build*.log 2>/dev/null)
  [ -z "$logs" ] || (cd "$OUT" && tar czf build_logs.tar.gz --remove-files $logs)
}
trap pack_logs EXIT
failed_builds=$(mktemp -d)  # a marker per tree whose build failed (not in $OUT)

jobs=$(( ${#TREES[@]} > 16 ? 1 : 16 / ${#TREES[@]} ))
for tree in "${TREES[@]}"; do
  dir=$(build_dir "$tree")
  # git archive dates a tree's files at its commit, which can be older than the objects a warm
  # machine kept from another tree in the same directory: make would call them up to date. So a
  # tree whose files changed since its directory was built is built afresh.
  if [ "$tree" != . ]; then
    stamp=$(cd "$tree" && find . -type f -print0 | sort -z | xargs -0 md5sum | md5sum)
    [ "$(cat "$dir/.tree_stamp" 2>/dev/null)" = "$stamp" ] || rm -rf "$dir"
    mkdir -p "$dir" && echo "$stamp" > "$dir/.tree_stamp"
  fi
  targets=(--target nala_cli)
  [ "$tree" = . ] && [ -n "${RUN_TESTS:-}" ] && targets=()
  (cmake -S "$tree" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure_${dir#build-}.log" 2>&1 &&
    cmake --build "$dir" -j$jobs "${targets[@]}" > "$OUT/build_${dir#build-}.log" 2>&1 ||
    touch "$failed_builds/${dir#build-}") &
done
wait
for failed in "$failed_builds"/*; do
  [ -e "$failed" ] || continue
  name=$(basename "$failed")
  tail -40 "$OUT/build_$name.log"
  echo "build of $name failed"
  exit 1
done

status=0
if [ -n "${RUN_TESTS:-}" ]; then
  bash bench/gpu_run.sh tests
  status=$?
  echo "==== tests (rc $status)"
fi

rm -rf /tmp/attn_check && mkdir -p /tmp/attn_check && : > "$OUT/attn_check.log"
python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
for d in (32, 64):
    for name in ("q", "k", "v", "g"):
        np.save(f"/tmp/attn_check/{name}{d}.npy", rng.standard_normal((2, 2, 256, d)).astype(np.float32))
PY
names=()
for tree in "${TREES[@]}"; do
  dir=$(build_dir "$tree")
  names+=("$dir")
  for d in 32 64; do
    for dev in cpu cuda; do
      data=/tmp/attn_check
      echo "==== $dir d $d $dev" >> "$OUT/attn_check.log"
      $dir/nala attn --kind nala --q $data/q$d.npy --k $data/k$d.npy --v $data/v$d.npy --grid 16 16 \
        --grad-out $data/g$d.npy --device $dev --out $data/${dir}_${d}_$dev \
        >> "$OUT/attn_check.log" 2>&1 || { echo "nala attn failed: $dir d $d $dev"; status=1; }
    done
  done
done
python3 - "${names[@]}" <<'PY' | tee "$OUT/check.txt" || status=1
import sys
import numpy as np
worst = 0.0
for name in sys.argv[1:]:
    for d in (32, 64):
        errs = []
        for f in ("out", "dq", "dk", "dv"):
            try:
                a = np.load(f"/tmp/attn_check/{name}_{d}_cpu/{f}.npy")
                b = np.load(f"/tmp/attn_check/{name}_{d}_cuda/{f}.npy")
                err = float(np.abs(a - b).max() / np.abs(a).max())
            except OSError:  # nala attn failed: no output
                err = float("inf")
            err = err if err == err else float("inf")  # NaN fails too
            worst = max(worst, err)
            errs.append(f"{f} {err:.1e}")
        print(name, "d", d, "max |cuda - cpu| / max |cpu|:", ", ".join(errs))
if worst > 2e-3:
    print(f"check failed: {worst:.1e} > 2e-3")
    sys.exit(1)
PY

{
  nvidia-smi --query-gpu=name --format=csv,noheader
  for i in 1 2; do
    for tree in "${TREES[@]}"; do
      dir=$(build_dir "$tree")
      echo "==== $dir ($i)"
      timeout 120 bash -o pipefail -c "${COMMAND//BUILD\//$dir/}" || echo "==== failed (rc $?)"
    done
  done
} > "$OUT/compare.log" 2>&1
grep -q "^==== failed" "$OUT/compare.log" && status=1
cat "$OUT/compare.log"
exit $status
