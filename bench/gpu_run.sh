#!/usr/bin/env bash
# The GPU machine's work in one script, logs under $OUT and a short summary printed last.
#   bash bench/gpu_run.sh check                 build (sm_90), all tests, gradcheck on CUDA,
#                                               benchmarks with their PyTorch peers
#   bash bench/gpu_run.sh tests                 build, all tests and gradcheck on CUDA only
#                                               (exit status 0 when all pass)
#   bash bench/gpu_run.sh attention             build nala and test_autograd only, its tests, then
#                                               nala bench attention (CUDA): a quick iteration
#   bash bench/gpu_run.sh train SECONDS EPOCHS [nala train options...]
#                                               build, then xt-cifar on CIFAR-10 (JPEG folder);
#                                               after SECONDS it is interrupted (SIGINT: it saves
#                                               and exits). With RUN_DIR set to a directory that
#                                               outlives the call (build-gpu/..., on a warm
#                                               machine), the next call resumes where it stopped.
#   bash bench/gpu_run.sh imagenette SECONDS EPOCHS SIZE   build, then xt on Imagenette
#   bash bench/gpu_run.sh ops                   build, then the memory-bound ops vs PyTorch eager
#   bash bench/gpu_run.sh profile               build, then xt-cifar training speed on synthetic data
#                                               and each kernel's GPU time over 3 steps (ncu)
#   bash bench/gpu_run.sh split                 build, then each linear-attention kernel's time per
#                                               launch (ncu, caches kept, clocks free) at d = 32,
#                                               N = 4096; d = 64, N = 4096 and 65536
#   bash bench/gpu_run.sh kernels [ops]         build, then ncu on the attention kernels (d = 64,
#                                               N = 16384; d = 32, N = 65536; not with `ops`) and
#                                               the ops' kernels
# Run from the repository root after unpacking the carried Debian packages (DEVELOPERS.md):
#   cp -rn .carry/deps/usr/. /usr/ && ldconfig && bash bench/gpu_run.sh check
set -uo pipefail
OUT=${OUT:-/tmp/out}
MODE=${1:-check}
# What ncu reports per kernel in `split` and `kernels`: time, DRAM and SM busy, warps active,
# grid size, registers per thread (tools/ncu_summary.py averages all but the first).
kernel_metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
kernel_metrics+=,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
kernel_metrics+=,launch__grid_size,launch__registers_per_thread
mkdir -p "$OUT"
export OMP_WAIT_POLICY=passive
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "$MODE" = train ] || [ "$MODE" = imagenette ]; then
  (mkdir -p /tmp/data && for a in .carry/*.tar.gz; do tar xzf "$a" -C /tmp/data; done) &
fi
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1
targets=()
[ "$MODE" = attention ] && targets=(--target nala_cli test_autograd)
cmake --build build-gpu -j16 "${targets[@]}" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }

if [ "$MODE" = check ] || [ "$MODE" = tests ]; then
  timeout 150 ctest --test-dir build-gpu -V > "$OUT/ctest.log" 2>&1
  ctest_rc=$?
  timeout 60 build-gpu/nala gradcheck --device cuda > "$OUT/gradcheck_cuda.log" 2>&1
  gc_rc=$?
  echo "==== ctest (rc $ctest_rc)"; grep -E "tests passed|Failed|\*\*\*|\[doctest\] (test cases|assertions)" "$OUT/ctest.log" | head -20
  grep -B3 -A10 "ERROR" "$OUT/ctest.log" | head -40
  echo "==== gradcheck cuda (rc $gc_rc)"; grep -E "FAIL|failed" "$OUT/gradcheck_cuda.log"
  [ "$MODE" = tests ] && exit $((ctest_rc | gc_rc))
  timeout 90 bash -c 'build-gpu/nala bench copy --device cuda; build-gpu/nala bench matmul --device cuda;
    build-gpu/nala bench attention --device cuda' > "$OUT/bench_nala.log" 2>&1
  # SDPA is quadratic: seconds per call from N = 16384 on, so it runs on the smaller grids only.
  [ -n "${SKIP_TORCH:-}" ] || PYTHONUNBUFFERED=1 timeout 240 bash -c 'python3 tools/bench_attention_torch.py \
    --device cuda --kinds eager,compile; python3 tools/bench_attention_torch.py --device cuda --kinds sdpa \
    --sides 32,64,128' > "$OUT/bench_torch.log" 2>&1
  echo "==== nala"; cat "$OUT/bench_nala.log"
  echo "==== torch"; grep -v Warn "$OUT/bench_torch.log" 2>/dev/null | tail -30
elif [ "$MODE" = attention ]; then
  timeout 120 build-gpu/test_autograd > "$OUT/test_autograd.log" 2>&1
  echo "==== test_autograd (rc $?)"; grep -E "^\[doctest\] (test cases|assertions)|ERROR|CHECK|MESSAGE|attention kind" "$OUT/test_autograd.log" | head -60
  build-gpu/nala bench attention --device cuda > "$OUT/bench_attention_nala.log" 2>&1
  echo "==== nala"; cat "$OUT/bench_attention_nala.log"
elif [ "$MODE" = ops ]; then
  build-gpu/nala bench ops --device cuda > "$OUT/bench_ops_nala.log" 2>&1
  PYTHONUNBUFFERED=1 timeout 100 python3 tools/bench_ops_torch.py --device cuda > "$OUT/bench_ops_torch.log" 2>&1
  cat "$OUT/bench_ops_nala.log" "$OUT/bench_ops_torch.log"
elif [ "$MODE" = profile ]; then
  # Throughput first (no profiler), then 3 training steps and one test batch under ncu, one
  # metric per kernel, summed by kernel name.
  build-gpu/nala train --model xt-cifar --device cuda --epochs 2 --limit-train 25600 --limit-test 256 \
    --batch-size 256 --workers 12 --out /tmp/prof_run > "$OUT/train_speed.log" 2>&1
  timeout 170 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
    build-gpu/nala train --model xt-cifar --device cuda --epochs 1 --limit-train 768 --limit-test 256 \
    --batch-size 256 --workers 4 --out /tmp/prof_ncu > /tmp/ncu.csv 2> "$OUT/ncu.err"
  python3 tools/ncu_summary.py /tmp/ncu.csv --top 40 > "$OUT/ncu_summary.txt"
  echo "==== speed"; tr '\r' '\n' < "$OUT/train_speed.log" | grep -E "^epoch [0-9]+:" | tail -2
  echo "==== ncu (3 steps + 1 test batch)"; head -25 "$OUT/ncu_summary.txt"
elif [ "$MODE" = split ]; then
  for shape in "32 4096" "64 4096" "64 65536"; do
    set -- $shape
    timeout 50 ncu --cache-control none --clock-control none --metrics "$kernel_metrics" --csv \
      --page raw build-gpu/nala bench attention --device cuda --kind nala --head-dim "$1" \
      --tokens "$2" --repeats 1 > /tmp/ncu_split.csv 2>> "$OUT/ncu_split.err"
    echo "==== d $1 N $2 (ncu rc $?)"
    python3 tools/ncu_summary.py /tmp/ncu_split.csv --top 12 --means "${kernel_metrics#*,}"
  done > "$OUT/attention_split.txt" 2>&1
  cat "$OUT/attention_split.txt"
elif [ "$MODE" = kernels ]; then
  [ "${2:-all}" = ops ] || for shape in "64 16384" "32 65536"; do
    set -- $shape
    timeout 120 ncu --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section ComputeWorkloadAnalysis -k regex:linear_ -c 12 build-gpu/nala bench attention \
      --device cuda --head-dim "$1" --tokens "$2" --repeats 1 > "$OUT/ncu_attention_d$1.txt" 2>&1
  done
  timeout 200 ncu --metrics "$kernel_metrics" --csv --page raw build-gpu/nala bench ops --device cuda \
    --repeats 1 > /tmp/ncu_ops.csv 2> "$OUT/ncu_ops.err"
  python3 tools/ncu_summary.py /tmp/ncu_ops.csv --top 30 --means "${kernel_metrics#*,}" > "$OUT/ncu_ops_summary.txt"
  echo "==== attention"; grep -hE "linear_|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Dynamic Shared|Theoretical Occ|Block Limit|FMA" \
    "$OUT"/ncu_attention_d*.txt | sed -E 's/.*(linear_[a-z_]+kernel<[^>]*>).*/\1/; s/  +/ /g' | head -150
  echo "==== ops"; cat "$OUT/ncu_ops_summary.txt"
elif [ "$MODE" = imagenette ]; then
  wait
  timeout "${2:-300}" build-gpu/nala train --model xt --data folder=/tmp/data/imagenette-128 --image-size "${4:-224}" \
    --device cuda --epochs "${3:-10}" --batch-size 128 --lr 2e-3 --warmup-epochs 1 --workers 14 --out "$OUT/run" > "$OUT/train.log" 2>&1
  cp "$OUT/run/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
  echo "==== train"; tr '\r' '\n' < "$OUT/train.log" | grep -E "^epoch [0-9]+:|model|error|done|warn|skipped" | tail -30
else
  wait
  # Options after EPOCHS go to nala train; these defaults fill in the ones not given.
  options=("${@:4}")
  defaults=(--batch-size 256 --lr 3e-3 --warmup-epochs 2)
  for ((i = 0; i < ${#defaults[@]}; i += 2)); do
    [[ " ${options[*]} " == *" ${defaults[i]} "* ]] || options+=("${defaults[i]}" "${defaults[i + 1]}")
  done
  run_dir=${RUN_DIR:-$OUT/run}
  [ -f "$run_dir/last.safetensors" ] && options+=(--resume "$run_dir/last.safetensors")
  timeout -s INT -k 60 "${2:-300}" build-gpu/nala train --model xt-cifar --data folder=/tmp/data/cifar10 \
    --device cuda --epochs "${3:-40}" --workers 12 --out "$run_dir" "${options[@]}" >> "$OUT/train.log" 2>&1
  cp "$run_dir/metrics.csv" "$run_dir/curves.png" "$OUT/" 2>/dev/null
  echo "==== train"; tr '\r' '\n' < "$OUT/train.log" | grep -E "^epoch [0-9]+:|model|error|done" | tail -50
fi
