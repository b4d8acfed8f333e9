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
base_build=$!
# The working tree, built beside it; a failed build of either stops here (a warm machine keeps
# build directories, so an old binary must not stand in for a tree that did not compile).
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1
cmake --build build-gpu -j10 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
wait "$base_build" || { tail -40 "$OUT/build_base.log"; exit 1; }
# Then, with nothing else running, all tests and gradcheck on CUDA on the working tree
# (gpu_run.sh's `tests`, whose build is now up to date; logs in $OUT); SKIP_TESTS=1 skips them
# (a quicker look at a variant that is not to be committed).
if [ -z "${SKIP_TESTS:-}" ]; then
  bash bench/gpu_run.sh tests
  echo "==== tests (rc $?)"
fi
for i in 1 2; do
  for build in build-base build-gpu; do
    echo "==== $build ($i)"
    timeout 120 bash -c "${COMMAND//BUILD/$build}"
  done
done > "$OUT/compare.log" 2>&1
cat "$OUT/compare.log"
