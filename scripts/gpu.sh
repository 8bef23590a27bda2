#!/usr/bin/env bash
# scripts/gpu.sh — everything the CUDA op needs on a GPU machine, in one call:
#   build (sm_90a), `make test-gpu`, compute-sanitizer memcheck + racecheck on small shapes, the bench;
# a short summary table last. Logs go to $OUT (the device tool's folder) or build/gpu-logs.
#   usage: scripts/gpu.sh [build] [test] [test-mma] [san] [dev] [bench] [bench-mma] [quickbench] [sweep] [ncu]
#                         [pair]
#   pair:  the backward's dv and dk output passes side by side (LASP_CUDA_PAIR=1): its tests, then the bench
#          rows with and without it in alternating rounds
#   ncu:   per-kernel time, bytes and throughputs of one fwd and one fwd+bwd of each of $NCU_SHAPES
#   sweep: the D128 rows under LASP_CUDA_BLOCKS_PER_SM ∈ $SWEEP (default 4 6 8 12 16), one table
#          (default: build test test-mma san bench-mma bench)
#   *-mma: the same with LASP_CUDA_WGMMA=0, the mma.sync output pass that GPUs before Hopper run
set -u
steps=${*:-build test test-mma san bench-mma bench}
OUT=${OUT:-build/gpu-logs}
mkdir -p "$OUT"
ARCH=${CUDA_ARCH_OVERRIDE:--gencode arch=compute_90a,code=sm_90a}
summary=()
has() { case " $steps " in *" $1 "*) return 0 ;; esac; return 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/device.txt"
if has build; then
    t0=$SECONDS
    make -j16 all build/tests/gpu_attn CUDA_ARCH="$ARCH" >"$OUT/build.log" 2>&1
    rc=$?
    summary+=("build            rc=$rc  $((SECONDS - t0)) s")
    [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
fi
if has test; then
    t0=$SECONDS
    make test-gpu CUDA_ARCH="$ARCH" 2>&1 | tee "$OUT/test-gpu.log" | tail -40
    cp build/test-logs/gpu_attn.log "$OUT/" 2>/dev/null
    summary+=("test-gpu         $(tail -1 "$OUT/test-gpu.log")  $((SECONDS - t0)) s")
fi
if has test-mma; then
    t0=$SECONDS
    LASP_CUDA_WGMMA=0 build/tests/gpu_attn >"$OUT/test-mma.log" 2>&1
    rc=$?
    summary+=("test (mma.sync)  rc=$rc  $(grep -c '^PASS' "$OUT/test-mma.log") passed  $((SECONDS - t0)) s")
fi
if has san; then
    for tool in memcheck racecheck; do
        t0=$SECONDS
        compute-sanitizer --tool $tool --error-exitcode 3 build/tests/gpu_attn --quick >"$OUT/san-$tool.log" 2>&1
        rc=$?
        summary+=("sanitizer $tool  rc=$rc  $(grep -c '^PASS' "$OUT/san-$tool.log") passed  $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san-$tool.log" | tail -1)  $((SECONDS - t0)) s")
    done
fi
# the bench in alternating rounds under each setting (VAR=value ...), one table sorted by shape: $1 names it
env_ab() {
    local label=$1 r s
    shift
    : >"$OUT/$label.txt"
    for r in 1 2; do
        for s in "$@"; do
            env "$s" build/lasp bench attn --device cuda --dtype bf16 --repeat 30 2>&1 | grep -E '^ +[0-9]' |
                sed "s|^|$s r$r |" >>"$OUT/$label.txt"
        done
    done
    summary+=("$label A/B (B H T D type fwd ms ... f+b ms ...):")
    while IFS= read -r line; do summary+=("$line"); done < <(sort -s -b -k3,7 "$OUT/$label.txt")
}
if has pair; then
    t0=$SECONDS
    LASP_CUDA_PAIR=1 build/tests/gpu_attn >"$OUT/test-pair.log" 2>&1
    rc=$?
    summary+=("test (pair)      rc=$rc  $(grep -c '^PASS' "$OUT/test-pair.log") passed  $((SECONDS - t0)) s")
    env_ab pair LASP_CUDA_PAIR=0 LASP_CUDA_PAIR=1
fi
if has dev; then
    for t in build/dev/*; do [ -x "$t" ] && "$t" 2>&1 | tee "$OUT/$(basename "$t").txt"; done
fi
if has quickbench; then
    build/lasp bench attn --device cuda --dtype bf16 --repeat 20 2>&1 | tee "$OUT/bench.txt"
fi
if has sweep; then
    # how finely the sequence is cut (segments per SM) against the waves' tails and the state traffic
    : >"$OUT/sweep.txt"
    for n in ${SWEEP:-4 6 8 12 16}; do
        LASP_CUDA_BLOCKS_PER_SM=$n build/lasp bench attn --device cuda --dtype bf16 --dim 128 --repeat 20 2>&1 |
            grep -E '^ +[0-9]' | sed "s|^|blocks/SM $n |" >>"$OUT/sweep.txt"
    done
    summary+=("sweep (LASP_CUDA_BLOCKS_PER_SM; B H T D type fwd ms ... f+b ms ...):")
    while IFS= read -r line; do summary+=("$line"); done <"$OUT/sweep.txt"
fi
if has bench-mma; then
    echo "# output pass on mma.sync (LASP_CUDA_WGMMA=0)" >"$OUT/bench-mma.txt"
    LASP_CUDA_WGMMA=0 build/lasp bench attn --device cuda --dtype bf16 --repeat 20 2>&1 | tee -a "$OUT/bench-mma.txt"
fi
if has bench; then
    build/lasp bench attn --device cuda --dtype bf16 2>&1 | tee "$OUT/bench.txt"
fi
if has ncu; then
    # one fwd and one fwd+bwd of each shape of $NCU_SHAPES (B,H,T,D; default B1 H16 T32768 D128): per
    # kernel its time, DRAM bytes, L2 bytes and DRAM / L2 / SM throughput; totals per pass against the time
    # the bytes take at the copy bandwidth (measured first)
    bw=$(build/lasp bench attn --device cuda --dtype bf16 --shape 1,1,64,64 --repeat 1 --warmup 0 2>/dev/null |
        sed -n 's/.*copy bandwidth \([0-9]*\) GB.*/\1/p')
    m=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
    m+=,lts__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_bytes.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed
    for shape in ${NCU_SHAPES:-1,16,32768,128}; do
        f=$OUT/ncu-${shape//,/-}
        ncu --clock-control none --print-units base -k 'regex:k_(state|scan|out)' --launch-count 11 --csv \
            --metrics "$m" build/lasp bench attn --device cuda --shape "$shape" --repeat 1 --warmup 0 \
            >"$f.csv" 2>"$f.err"
        echo "# ncu, B,H,T,D = $shape, copy bandwidth ${bw:-?} GB/s" | tee "$f.txt"
        python3 scripts/ncu_table.py "$f.csv" "${bw:-0}" | tee -a "$f.txt"
        summary+=("$(cat "$f.txt")")
    done
fi
echo "# ---- summary ----"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench-mma.txt" ] && cat "$OUT/bench-mma.txt"
[ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
exit 0
