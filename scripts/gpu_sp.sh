#!/usr/bin/env bash
# scripts/gpu_sp.sh — LASP across GPUs in one call on a multi-GPU machine: build (sm_90a), the NCCL comm
# test and the SP correctness test under mpirun (one process per GPU), the GPU SP bench; a short table
# last. Logs go to $OUT (the device tool's folder) or build/gpu-logs.
#   usage: scripts/gpu_sp.sh [build] [test] [bench]      (default: all three)
set -u
steps=${*:-build test bench}
OUT=${OUT:-build/gpu-logs}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ARCH=${CUDA_ARCH_OVERRIDE:--gencode arch=compute_90a,code=sm_90a}
has() { case " $steps " in *" $1 "*) return 0 ;; esac; return 1; }
ngpu=$(nvidia-smi -L | grep -c '^GPU')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
summary=()
if has build; then
    t0=$SECONDS
    make -j16 all build/tests/gpu_mpi_comm build/tests/gpu_mpi_sp CUDA_ARCH="$ARCH" >"$OUT/build.log" 2>&1
    rc=$?
    summary+=("build             rc=$rc  $((SECONDS - t0)) s")
    [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
fi
if has test; then
    for t in gpu_mpi_comm gpu_mpi_sp; do
        t0=$SECONDS
        timeout 300 mpirun --bind-to none -np "$ngpu" build/tests/$t >"$OUT/$t.log" 2>&1
        rc=$?
        grep -E '^(PASS|FAIL|  check)' "$OUT/$t.log" | head -40
        summary+=("$t -np $ngpu  rc=$rc  $(grep -c '^PASS' "$OUT/$t.log") passed $(grep -c '^FAIL' "$OUT/$t.log") failed  $((SECONDS - t0)) s")
    done
fi
if has bench; then
    timeout 300 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 2>&1 | tee "$OUT/bench_sp.txt"
fi
echo "# ---- summary ----"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench_sp.txt" ] && cat "$OUT/bench_sp.txt"
exit 0
