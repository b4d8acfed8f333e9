#!/usr/bin/env bash
# A change measured against its baseline in one call on the GPU machine (timings compare only
# within one call): builds the baseline tree and the working tree side by side, runs all tests on
# the working tree, then a benchmark command twice per build, alternating.
#   git archive REV | (mkdir -p .carry/base && tar -x -C .carry/base)   # here, before the call
#   bash bench/gpu_compare.sh .carry/base 'BUILD/nala bench attention --device cuda --kind nala'
# BUILD in the command stands for the build directory (build-base, then build-gpu). Logs go
# under $OUT; the benchmark's output is printed last.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BASE=$1
COMMAND=$2
mkdir -p "$OUT"
cmake -S "$BASE" -B build-base -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure_base.log" 2>&1
(cmake --build build-base -j6 --target nala_cli > "$OUT/build_base.log" 2>&1) &
# The working tree: build, all tests and gradcheck on CUDA (gpu_run.sh's `tests`, logs in $OUT).
bash bench/gpu_run.sh tests
echo "==== tests (rc $?)"
wait
[ -x build-gpu/nala ] || exit 1
[ -x build-base/nala ] || { tail -20 "$OUT/build_base.log"; exit 1; }
for i in 1 2; do
  for build in build-base build-gpu; do
    echo "==== $build ($i)"
    timeout 120 bash -c "${COMMAND//BUILD/$build}"
  done
done > "$OUT/compare.log" 2>&1
cat "$OUT/compare.log"
