#!/usr/bin/env bash
# One call on the GPU machine: build (sm_90), run every test suite, gradcheck on CUDA, the
# benchmarks, and the PyTorch peers, all logged under $OUT; a short table is printed last.
# Run from the repository root after unpacking the carried Debian headers (see DEVELOPERS.md):
#   cp -rn .carry/deps/usr/. /usr/ && ldconfig && bash bench/gpu_run.sh [quick]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1
cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
ctest --test-dir build-gpu --output-on-failure > "$OUT/ctest.log" 2>&1
ctest_rc=$?
build-gpu/nala gradcheck --device cuda > "$OUT/gradcheck_cuda.log" 2>&1
gc_rc=$?
{
  build-gpu/nala bench copy --device cuda
  build-gpu/nala bench matmul --device cuda
  build-gpu/nala bench attention --device cuda
} > "$OUT/bench_nala.log" 2>&1
PYTHONUNBUFFERED=1 timeout 300 python3 tools/bench_attention_torch.py --device cuda > "$OUT/bench_torch.log" 2>&1
echo "==== ctest (rc $ctest_rc)"; grep -E "tests passed|Failed|\*\*\*" "$OUT/ctest.log" | head -20
grep -B2 -A12 "ERROR" "$OUT/ctest.log" | head -60
echo "==== gradcheck cuda (rc $gc_rc)"; grep -E "FAIL|failed" "$OUT/gradcheck_cuda.log"
echo "==== nala"; cat "$OUT/bench_nala.log"
echo "==== torch"; cat "$OUT/bench_torch.log" | tail -40
