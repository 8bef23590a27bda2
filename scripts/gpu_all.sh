#!/usr/bin/env bash
# scripts/gpu_all.sh — the whole GPU check in one call: the op (scripts/gpu.sh: build, `make test-gpu`, which
# runs the multi-GPU suites too when there are several GPUs, the sanitizers, both benches) and, with two or
# more GPUs, LASP across them (scripts/gpu_sp.sh: the CLI runs and the SP bench). Logs in $OUT (the device
# tool's folder) or build/gpu-logs; both summaries last.
#   usage: scripts/gpu_all.sh            OP_STEPS / SP_STEPS override the steps of each script
set -u
export OUT=${OUT:-build/gpu-logs} NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"
bash scripts/gpu.sh ${OP_STEPS:-build test san bench-sm80 bench} >"$OUT/op.txt" 2>&1
ngpu=$(nvidia-smi -L | grep -c '^GPU')
if [ "$ngpu" -ge 2 ]; then
    bash scripts/gpu_sp.sh ${SP_STEPS:-build cli bench} >"$OUT/sp.txt" 2>&1
fi
echo "# ==== the op (scripts/gpu.sh; full log $OUT/op.txt) ===="
sed -n '/^# ---- summary ----/,$p' "$OUT/op.txt"
if [ -f "$OUT/sp.txt" ]; then
    echo "# ==== LASP across $ngpu GPUs (scripts/gpu_sp.sh; full log $OUT/sp.txt) ===="
    sed -n '/^# ---- summary ----/,$p' "$OUT/sp.txt"
fi
