#!/usr/bin/env bash
# Several variants of a change measured side by side in one call on the GPU machine (timings
# compare only within one call). Each variant is a tree under .carry/NAME, made here before the
# call, e.g.
#   mkdir -p .carry/base && git archive HEAD | tar -x -C .carry/base      # then copy and edit
# and "wt" names the working tree itself (built in full in build-gpu, gpu_run.sh's directory;
# the others build nala_cli only). Then, on the GPU machine:
#   VARIANTS="base v1 v2" bash bench/gpu_variants.sh
#   BENCH='nala bench attention --device cuda --kind nala --repeats 20'    (the default)
# Each variant's NaLa output and gradients are checked against the CPU (`nala attn --grad-out`,
# float32, d = 32 and 64, B = H = 2, N = 256; check.txt: max |cuda - cpu| / max |cpu|, 4-6e-4
# with the TF32 products in this session's calls), then BENCH runs twice per variant,
# alternating. Logs under $OUT; the benchmark's output is printed last. No test suite runs:
# bench/gpu_compare.sh is the one for a change to commit.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
VARIANTS=${VARIANTS:-base wt}
BENCH=${BENCH:-"nala bench attention --device cuda --kind nala --repeats 20"}
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
jobs=$((16 / $(echo $VARIANTS | wc -w)))
for v in $VARIANTS; do
  if [ "$v" = wt ]; then
    src=.; target=(); mkdir -p build-gpu; ln -sfn build-gpu build-wt
  else
    src=.carry/$v; target=(--target nala_cli)
  fi
  (cmake -S $src -B build-$v -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure_$v.log" 2>&1 &&
    cmake --build build-$v -j$jobs "${target[@]}" > "$OUT/build_$v.log" 2>&1 || echo "BUILD FAILED $v") &
done
wait
python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
for d in (32, 64):
    for name in ("q", "k", "v", "g"):
        np.save(f"/tmp/{name}{d}.npy", rng.standard_normal((2, 2, 256, d)).astype(np.float32))
PY
for v in $VARIANTS; do
  for d in 32 64; do
    for dev in cpu cuda; do
      build-$v/nala attn --kind nala --q /tmp/q$d.npy --k /tmp/k$d.npy --v /tmp/v$d.npy --grid 16 16 \
        --grad-out /tmp/g$d.npy --device $dev --out /tmp/attn_${v}_${d}_$dev > /dev/null 2>&1 ||
        echo "attn failed: $v d $d $dev"
    done
  done
done
python3 - $VARIANTS <<'PY' | tee "$OUT/check.txt"
import sys
import numpy as np
for v in sys.argv[1:]:
    for d in (32, 64):
        errs = []
        for f in ("out", "dq", "dk", "dv"):
            a = np.load(f"/tmp/attn_{v}_{d}_cpu/{f}.npy")
            b = np.load(f"/tmp/attn_{v}_{d}_cuda/{f}.npy")
            errs.append(f"{f} {np.abs(a - b).max() / np.abs(a).max():.1e}")
        print(v, "d", d, "max |cuda - cpu| / max |cpu|:", ", ".join(errs))
PY
for i in 1 2; do
  for v in $VARIANTS; do
    echo "==== $v ($i)"
    timeout 120 build-$v/$BENCH
  done
done > "$OUT/compare.log" 2>&1
cat "$OUT/compare.log"
