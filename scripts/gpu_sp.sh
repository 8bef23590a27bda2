#!/usr/bin/env bash
# scripts/gpu_sp.sh — LASP across GPUs in one call on a multi-GPU machine: build (sm_90a), the comm and SP
# conformance suites under mpirun (one process per GPU), the CLI against one GPU, the GPU SP bench; a short
# table last. Logs go to $OUT (the device tool's folder) or build/gpu-logs.
#   usage: scripts/gpu_sp.sh [build] [test] [cli] [bench] [modes] [variants]   (default: the first four)
#   modes:    the paper's comparison on GPUs: every SP mode (chain, LASP-2, Ulysses, the all-gather) per layer
#             at several lengths (bytes, time, memory), and the trainer's tokens/s per mode (the 1B preset, each
#             GPU a piece of 32768 tokens of one sequence)
#   variants: the weak-scaling rows under each of $SP_VARIANTS (space-separated sets of `lasp bench sp` flags,
#   commas for spaces, e.g. "--transfer,send --comm-sms,2"), and each one's --trace of the last layer;
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
    make -j16 all build/tests/test_comm build/tests/test_sp CUDA_ARCH="$ARCH" >"$OUT/build.log" 2>&1
    rc=$?
    summary+=("build             rc=$rc  $((SECONDS - t0)) s")
    [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
fi
if has test; then
    for run in "test_comm --backend nccl" "test_sp --device cuda"; do
        log=$OUT/${run// /_}.log
        t0=$SECONDS
        timeout 600 mpirun --bind-to none -np "$ngpu" build/tests/$run >"$log" 2>&1
        rc=$?
        grep -E '^(FAIL|  check)' "$log" | head -40
        summary+=("$run -np $ngpu  rc=$rc  $(grep -c '^PASS' "$log") passed $(grep -c '^FAIL' "$log") failed  $((SECONDS - t0)) s")
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
        for mode in chain lasp2; do
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
if has modes; then
    t0=$SECONDS
    timeout 300 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 --mode all \
        --t-local 8192,32768 >"$OUT/modes.txt" 2>&1
    : >"$OUT/modes_train.txt"
    for mode in chain lasp2 ulysses allgather; do
        timeout 200 mpirun --bind-to none -np "$ngpu" build/lasp bench train --device cuda --models 1b --batch 1 \
            --seq-len $((32768 * ngpu)) --sp "$ngpu" --sp-mode $mode --steps 5 2>&1 | grep -E '^  1b|error' |
            sed "s|^|$mode |" >>"$OUT/modes_train.txt"
    done
    summary+=("modes            $((SECONDS - t0)) s")
fi
if has variants; then
    : >"$OUT/variants.txt"
    for var in ${SP_VARIANTS:---transfer,auto --transfer,send}; do
        flags=${var//,/ }
        timeout 200 mpirun --bind-to none -np "$ngpu" build/lasp bench sp --device cuda --dtype bf16 $flags \
            --mode "${SP_VARIANT_MODES:-lasp}" --t-local 32768,65536 --trace >"$OUT/v.txt" 2>&1
        grep -E '^  weak|^# trace' "$OUT/v.txt" | sed "s|^|$var |" >>"$OUT/variants.txt"
    done
fi
echo "# ---- summary ----"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench_sp.txt" ] && cat "$OUT/bench_sp.txt"
[ -f "$OUT/modes.txt" ] && { echo "# every SP mode (lasp bench sp --mode all)"; grep -vE '^#' "$OUT/modes.txt" | head -40; }
[ -f "$OUT/modes_train.txt" ] && { echo "# the trainer per SP mode (1B, T_local 32768)"; cat "$OUT/modes_train.txt"; }
[ -f "$OUT/variants.txt" ] && { echo "# variants (weak scaling; trace: ms from the layer's start)"; cat "$OUT/variants.txt"; }
exit 0
