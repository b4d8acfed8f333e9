#!/usr/bin/env bash
# A change measured against its baseline in one call on the GPU machine (timings compare only
# within one call): builds the baseline tree and the working tree side by side, runs all tests on
# the working tree, then a benchmark command twice per build, alternating.
#   git archive REV | (mkdir -p .carry/base && tar -x -C .carry/base)   # here, before the call
#   bash bench/gpu_compare.sh .carry/base 'BUILD/nala bench attention --device cuda --kind nala'
#   SKIP_TESTS=1 bash bench/gpu_compare.sh ...   (the same, without running the tests)
# BUILD in the command stands for the build directory (build-base, then build-gpu). Logs go
# under $OUT; the benchmark's output is printed last.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BASE=$1
COMMAND=$2
mkdir -p "$OUT"
cmake -S "$BASE" -B build-base -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure_base.log" 2>&1
(cmake --build build-base -j6 --target nala_cli > "$OUT/build_base.log" 2>&1) &
# The working tree: build, all tests and gradcheck on CUDA (gpu_run.sh's `tests`, logs in $OUT);
# with SKIP_TESTS=1 only the build (a quicker look at a variant that is not to be committed).
if [ -n "${SKIP_TESTS:-}" ]; then
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1
  cmake --build build-gpu -j8 --target nala_cli > "$OUT/build.log" 2>&1
else
  bash bench/gpu_run.sh tests
  echo "==== tests (rc $?)"
fi
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
