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
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1
cmake -S "$BASE" -B build-base -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure_base.log" 2>&1
(cmake --build build-base -j6 --target nala_cli > "$OUT/build_base.log" 2>&1) &
cmake --build build-gpu -j10 > "$OUT/build.log" 2>&1 || { grep -B2 -A10 error "$OUT/build.log" | head -40; exit 1; }
wait
[ -x build-base/nala ] || { tail -20 "$OUT/build_base.log"; exit 1; }
timeout 150 ctest --test-dir build-gpu -V > "$OUT/ctest.log" 2>&1
echo "==== ctest (rc $?)"; grep -E "tests passed|Failed|\[doctest\] (test cases|assertions)" "$OUT/ctest.log" | head -12
timeout 60 build-gpu/nala gradcheck --device cuda > "$OUT/gradcheck_cuda.log" 2>&1
echo "==== gradcheck cuda (rc $?)"; grep -E "FAIL|failed" "$OUT/gradcheck_cuda.log"
for i in 1 2; do
  for build in build-base build-gpu; do
    echo "==== $build ($i)"
    timeout 120 bash -c "${COMMAND//BUILD/$build}"
  done
done > "$OUT/compare.log" 2>&1
cat "$OUT/compare.log"
