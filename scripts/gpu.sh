#!/usr/bin/env bash
# scripts/gpu.sh — what the CUDA op needs on a GPU machine, in one call: build (sm_90a), `make test-gpu`,
# compute-sanitizer memcheck + racecheck on small shapes (both kernel families), the bench; a short summary
# last. Logs go to $OUT (the device tool's folder) or build/gpu-logs.
#   usage: scripts/gpu.sh [build] [test] [san] [dev] [bench] [bench-sm80] [quickbench] [ncu] [train] [longest] [py]
#          (default: build test san bench-sm80 bench)
#   bench-sm80: the bench on the portable mma.sync kernels (--kernels sm80), as GPUs before Hopper run them
#   longest:    the 1B preset in chunks of 16384, doubling from 262144 tokens up to $LONGEST_MAX (4194304)
#   train:      `lasp bench train --device cuda` on the training table's shapes (TRAIN_ARGS adds options,
#               e.g. "--dtype f32")
#   py:         lasp.linear_attention from PyTorch against the C bench (scripts/py_bench.py), when python3 has torch
#   ncu:        per-kernel time, bytes and throughputs of one fwd and one fwd+bwd of each of $NCU_SHAPES
set -u
steps=${*:-build test san bench-sm80 bench}
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
    cp build/test-logs/gpu_*.log "$OUT/" 2>/dev/null
    summary+=("test-gpu         $(tail -1 "$OUT/test-gpu.log")  $((SECONDS - t0)) s")
fi
if has san; then
    for kernels in auto sm80; do
        for tool in memcheck racecheck; do
            t0=$SECONDS
            log=$OUT/san-$tool-$kernels.log
            compute-sanitizer --tool $tool --error-exitcode 3 build/tests/gpu_attn --quick --kernels $kernels >"$log" 2>&1
            rc=$?
            summary+=("sanitizer $tool ($kernels)  rc=$rc  $(grep -c '^PASS' "$log") passed  $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)  $((SECONDS - t0)) s")
        done
    done
fi
if has dev; then
    for t in build/dev/*; do [ -x "$t" ] && "$t" 2>&1 | tee "$OUT/$(basename "$t").txt"; done
fi
if has quickbench; then
    build/lasp bench attn --device cuda --dtype bf16 --repeat 20 2>&1 | tee "$OUT/bench.txt"
fi
if has bench-sm80; then
    build/lasp bench attn --device cuda --dtype bf16 --repeat 20 --kernels sm80 2>&1 | tee "$OUT/bench-sm80.txt"
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
if has train; then
    t0=$SECONDS
    # the rows of the issue's table: 1B 8192 × 1, 400m 8192 × 2, 1B 32768 × 1 (vocab 64000), the last also with
    # block recompute as the peer ran it
    for shape in "1b 8192 1" "400m 8192 2" "1b 32768 1" "1b 32768 1 --recompute block"; do
        set -- $shape
        build/lasp bench train --device cuda --models "$1" --seq-len "$2" --batch "$3" --steps 5 "${@:4}" ${TRAIN_ARGS:-} 2>&1
    done | tee "$OUT/bench-train.txt"
    summary+=("bench train      $((SECONDS - t0)) s")
fi
if has longest; then
    t0=$SECONDS
    build/lasp bench train --device cuda --models 1b --seq-len 262144 --chunk 16384 --longest --max-seq ${LONGEST_MAX:-4194304} \
        2>&1 | tee "$OUT/longest.txt"
    summary+=("longest          $(grep '^# longest' "$OUT/longest.txt")  $((SECONDS - t0)) s")
fi
if has py; then
    python3 scripts/py_bench.py 2>&1 | tee "$OUT/py-bench.txt"
    summary+=("$(cat "$OUT/py-bench.txt")")
fi
echo "# ---- summary ----"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench-sm80.txt" ] && { echo "# --kernels sm80"; grep -E '^ +[0-9]' "$OUT/bench-sm80.txt"; }
[ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
[ -f "$OUT/bench-train.txt" ] && grep -vE '^step ' "$OUT/bench-train.txt" | tail -20
exit 0
