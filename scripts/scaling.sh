#!/usr/bin/env bash
# scripts/scaling.sh — the multi-GPU scaling runs (4 and 8 GPUs; proven on 2) in one call: every dp × sp
# layout checked against one GPU on every rank, weak scaling at T_local 32768 and 65536 for the chain and
# LASP-2 with the time split, the longest sequence one layer fwd+bwd fits, and the trainer's weak scaling:
# the 1B preset at T_local 32768 (batch 1, --sp W) on 1, 2, 4, … GPUs, and its longest sequence over them all
# (in chunks, the state relayed). A short table last.
#   usage: scripts/scaling.sh            (one process per GPU of this machine)
set -u
OUT=${OUT:-build/gpu-logs}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ngpu=$(nvidia-smi -L | grep -c '^GPU')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
make -j16 all build/tests/test_sp CUDA_ARCH="-gencode arch=compute_90a,code=sm_90a" >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
timeout 600 mpirun --bind-to none -np "$ngpu" build/tests/test_sp --device cuda >"$OUT/correctness.log" 2>&1
echo "correctness: rc=$? $(grep -c '^PASS' "$OUT/correctness.log") passed, $(grep -c '^FAIL' "$OUT/correctness.log") failed" |
    tee "$OUT/summary.txt"
grep '^FAIL' "$OUT/correctness.log" | head
# weak and strong scaling at W = 2, 4, 8, … up to this machine's GPUs, one launch each (each row has its
# one-GPU time beside it), in one table
: >"$OUT/weak.txt"
for ((w = 2; w <= ngpu; w *= 2)); do
    timeout 300 mpirun --bind-to none -np "$w" build/lasp bench sp --device cuda --dtype bf16 --t-local 32768,65536 \
        >"$OUT/w.txt" 2>&1
    [ -s "$OUT/weak.txt" ] || grep '^# scaling' "$OUT/w.txt" >>"$OUT/weak.txt"   # the column names
    grep -E '^  (weak|strong)|error' "$OUT/w.txt" >>"$OUT/weak.txt"
done
timeout 600 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 --longest \
    >"$OUT/longest.txt" 2>&1
# the trainer: the 1B preset, each GPU a piece of 32768 tokens of one sequence (bf16, vocab 64000)
: >"$OUT/train.txt"
for ((w = 1; w <= ngpu; w *= 2)); do
    timeout 300 mpirun --bind-to none -np "$w" build/lasp bench train --device cuda --models 1b --batch 1 \
        --seq-len $((32768 * w)) --sp "$w" --steps 5 >"$OUT/t.txt" 2>&1
    [ -s "$OUT/train.txt" ] || grep '^# model' "$OUT/t.txt" | sed 's/^# model/# GPUs  model/' >>"$OUT/train.txt"
    grep -E '^  1b |error' "$OUT/t.txt" | sed "s/^/  $w   /" >>"$OUT/train.txt"
done
# the trainer's longest sequence of the 1B preset at batch 1 over every GPU: chunks of 16384, the state relayed
# from GPU to GPU (the ranks run one after the other), up to 2M tokens a GPU
timeout 600 mpirun --bind-to none -np "$ngpu" build/lasp bench train --device cuda --models 1b --sp "$ngpu" \
    --chunk 16384 --zero 1 --longest --seq-len $((262144 * ngpu)) --max-seq $((2097152 * ngpu)) \
    >"$OUT/train_longest.txt" 2>&1
echo "# ---- summary ($ngpu GPUs) ----"
cat "$OUT/summary.txt" "$OUT/weak.txt" "$OUT/longest.txt" "$OUT/train.txt"
grep -E '^  1b|^# longest|error' "$OUT/train_longest.txt"
