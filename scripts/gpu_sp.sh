#!/usr/bin/env bash
# scripts/gpu_sp.sh — LASP across GPUs in one call on a multi-GPU machine: build (sm_90a), the NCCL comm
# test and the SP correctness test under mpirun (one process per GPU), the GPU SP bench; a short table
# last. Logs go to $OUT (the device tool's folder) or build/gpu-logs.
#   usage: scripts/gpu_sp.sh [build] [test] [cli] [bench] [variants]   (default: the first four)
#   variants: the weak-scaling rows under each setting of $SP_VARIANTS (space-separated, each
#   VAR=value[,VAR=value]), one process launch each, and each setting's last LASP_SP_TRACE line per rank;
#   SP_VARIANT_MODES: the modes benched (default lasp; lasp2 or both)
set -u
steps=${*:-build test cli bench}
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
    # the SP test also with the other transfer (send/receive, what runs where no window can be made) and
    # the opt-in schedules (their outputs must equal one GPU's as the default's do); $SP_TEST_RUNS
    # (test[:VAR=value,...] ...) narrows it, e.g. when `make test-gpu` ran the first two
    for run in ${SP_TEST_RUNS:-gpu_mpi_comm gpu_mpi_sp gpu_mpi_sp:LASP_SP_XFER=send gpu_mpi_sp:LASP_SP_SPLIT=3,LASP_SP_FOLD=1 gpu_mpi_sp:LASP_SP_XFER=send,LASP_SP_SPLIT=1,LASP_SP_LEAVE_SMS=0}; do
        t=${run%%:*} envs=; [ "$run" != "$t" ] && envs=${run#*:}
        log=$OUT/$t${envs:+-${envs//[=,]/-}}.log
        t0=$SECONDS
        env $envs timeout 300 mpirun --bind-to none -np "$ngpu" build/tests/$t >"$log" 2>&1
        rc=$?
        grep -E '^(PASS|FAIL|  check)' "$log" | head -40
        summary+=("$t${envs:+ ($envs)} -np $ngpu  rc=$rc  $(grep -c '^PASS' "$log") passed $(grep -c '^FAIL' "$log") failed  $((SECONDS - t0)) s")
    done
fi
if has cli; then
    # the CLI: the same files from W GPUs as from one (both checked against the fp64 reference), and a
    # rank that fails mid-run ends the whole job quickly
    d=$OUT/cli; mkdir -p "$d"
    build/lasp attn --random 2,2048,4,64,64 --seed 3 --out "$d/in" >/dev/null
    in="--q $d/in/q.npy --k $d/in/k.npy --v $d/in/v.npy --slopes $d/in/slopes.npy --do $d/in/do.npy"
    for dt in bf16 f32; do
        build/lasp attn $in --device cuda --dtype $dt --check --out "$d/one-$dt" >"$d/one-$dt.log" 2>&1
        r1=$?
        for mode in lasp lasp2; do
            timeout 120 mpirun --bind-to none -np "$ngpu" build/lasp attn $in --device cuda --dtype $dt --sp "$ngpu" \
                --sp-mode $mode --check --out "$d/sp-$dt-$mode" >"$d/sp-$dt-$mode.log" 2>&1
            r2=$?
            summary+=("cli $dt $mode: 1 GPU rc=$r1, $ngpu GPUs rc=$r2: $(grep -E '^  (o|dkv_in) ' "$d/sp-$dt-$mode.log" | tr -s ' ' | tr '\n' ' ')")
        done
    done
    t0=$SECONDS
    LASP_TEST_FAIL_RANK=1 timeout 120 mpirun --bind-to none -np "$ngpu" build/lasp attn $in --device cuda --sp "$ngpu" \
        --out "$d/fail" >"$d/fail.log" 2>&1
    rc=$?
    summary+=("cli failing rank 1: rc=$rc after $((SECONDS - t0)) s: $(grep -m1 'rank 1' "$d/fail.log")")
fi
if has bench; then
    timeout 300 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 2>&1 | tee "$OUT/bench_sp.txt"
fi
if has variants; then
    : >"$OUT/variants.txt"
    for var in ${SP_VARIANTS:-LASP_SP_XFER=put LASP_SP_XFER=send LASP_SP_SPLIT=2 LASP_SP_SPLIT=3}; do
        envs=$(echo "$var" | tr ',' ' ')
        env $envs timeout 200 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 \
            --mode "${SP_VARIANT_MODES:-lasp}" --t-local 32768,65536 >"$OUT/v.txt" 2>&1
        grep '^  weak' "$OUT/v.txt" | sed "s|^|$var |" >>"$OUT/variants.txt"
        for m in $(echo "${SP_VARIANT_MODES:-lasp}" | sed 's/both/lasp lasp2/'); do
            env $envs LASP_SP_TRACE=1 timeout 100 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda \
                --dtype bf16 --mode $m --t-local 32768 --repeat 5 --warmup 2 >"$OUT/v.txt" 2>&1
            for r in $(seq 0 $((ngpu - 1))); do grep "sp-trace rank $r:" "$OUT/v.txt" | tail -1 | sed "s|^|$var $m |"; done \
                >>"$OUT/variants.txt"
        done
    done
fi
echo "# ---- summary ----"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench_sp.txt" ] && cat "$OUT/bench_sp.txt"
[ -f "$OUT/variants.txt" ] && { echo "# variants (weak scaling, the modes of SP_VARIANT_MODES; trace: ms from the layer's start)"; cat "$OUT/variants.txt"; }
exit 0
