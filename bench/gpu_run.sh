#!/usr/bin/env bash
# One call on the GPU machine: build (sm_90), run every test suite, gradcheck on CUDA, the
# benchmarks with their PyTorch peers, and a CIFAR-10 training run; logs under $OUT, a short
# summary printed last. From the repository root, after unpacking the carried Debian packages
# (DEVELOPERS.md):
#   cp -rn .carry/deps/usr/. /usr/ && ldconfig && bash bench/gpu_run.sh [TRAIN_SECONDS] [EPOCHS]
set -uo pipefail
OUT=${OUT:-/tmp/out}
TRAIN_SECONDS=${1:-120}
EPOCHS=${2:-30}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
(mkdir -p /tmp/data && tar xzf .carry/cifar10-jpg.tar.gz -C /tmp/data) &
untar=$!
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1
cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
timeout 120 ctest --test-dir build-gpu --output-on-failure > "$OUT/ctest.log" 2>&1
ctest_rc=$?
timeout 60 build-gpu/nala gradcheck --device cuda > "$OUT/gradcheck_cuda.log" 2>&1
gc_rc=$?
timeout 70 bash -c 'build-gpu/nala bench copy --device cuda; build-gpu/nala bench matmul --device cuda;
  build-gpu/nala bench attention --device cuda' > "$OUT/bench_nala.log" 2>&1
PYTHONUNBUFFERED=1 timeout 100 python3 tools/bench_attention_torch.py --device cuda > "$OUT/bench_torch.log" 2>&1
wait $untar
timeout "$TRAIN_SECONDS" build-gpu/nala train --model xt-cifar --data folder=/tmp/data/cifar10 --device cuda \
  --epochs "$EPOCHS" --batch-size 256 --lr 3e-3 --workers 12 --out "$OUT/run" > "$OUT/train.log" 2>&1
echo "==== ctest (rc $ctest_rc)"; grep -E "tests passed|Failed|\*\*\*|test cases|skip" "$OUT/ctest.log" | head -20
grep -B3 -A10 "ERROR" "$OUT/ctest.log" | head -50
echo "==== gradcheck cuda (rc $gc_rc)"; grep -E "FAIL|failed" "$OUT/gradcheck_cuda.log"
echo "==== nala"; cat "$OUT/bench_nala.log"
echo "==== torch"; tail -30 "$OUT/bench_torch.log"
echo "==== train"; tr '\r' '\n' < "$OUT/train.log" | grep -E "^epoch [0-9]+:|model|error|done" | tail -12
tr '\r' '\n' < "$OUT/train.log" | tail -2
