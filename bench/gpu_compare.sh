#!/usr/bin/env bash
# A change measured against its baseline in one call on the GPU machine (timings compare only
# within one call): the baseline tree and the working tree built side by side, all tests and
# gradcheck on CUDA on the working tree, both trees' NaLa checked against the CPU, then a
# benchmark command twice per build, alternating (bench/gpu_variants.sh with these two trees).
#   rm -rf .carry/base && mkdir -p .carry/base && git archive REV | tar -x -C .carry/base   # here
#   bash bench/gpu_compare.sh .carry/base 'BUILD/nala bench attention --device cuda --kind nala'
#   SKIP_TESTS=1 bash bench/gpu_compare.sh ...   (the same without the tests, the working tree
#                                                 built as nala_cli only)
# BUILD in the command stands for the build directory (build-NAME for a baseline tree whose last
# path component is NAME, build-base for .carry/base; then build-gpu). Logs go
# under $OUT; the benchmark's output is printed last; the exit status is nonzero when a build,
# the tests, a check or a benchmark failed.
set -uo pipefail
RUN_TESTS=$([ -n "${SKIP_TESTS:-}" ] || echo 1) exec bash bench/gpu_variants.sh "$2" "$1" .
