#!/usr/bin/env bash
# scripts/scaling.sh — the multi-GPU scaling runs (4 and 8 GPUs; proven on 2) in one call: every dp × sp
# layout checked against one GPU on every rank, weak scaling at T_local 32768 and 65536 for the chain and
# LASP-2 with the time split, and the longest sequence one layer fwd+bwd fits. A short table last.
#   usage: scripts/scaling.sh            (one process per GPU of this machine)
set -u
OUT=${OUT:-build/gpu-logs}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ngpu=$(nvidia-smi -L | grep -c '^GPU')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
make -j16 all build/tests/gpu_mpi_sp CUDA_ARCH="-gencode arch=compute_90a,code=sm_90a" >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
timeout 600 mpirun --bind-to none -np "$ngpu" build/tests/gpu_mpi_sp >"$OUT/correctness.log" 2>&1
echo "correctness: rc=$? $(grep -c '^PASS' "$OUT/correctness.log") passed, $(grep -c '^FAIL' "$OUT/correctness.log") failed" |
    tee "$OUT/summary.txt"
grep '^FAIL' "$OUT/correctness.log" | head
timeout 600 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 --t-local 32768,65536 \
    >"$OUT/weak.txt" 2>&1
timeout 600 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 --longest \
    >"$OUT/longest.txt" 2>&1
echo "# ---- summary ($ngpu GPUs) ----"
cat "$OUT/summary.txt" "$OUT/weak.txt" "$OUT/longest.txt"
