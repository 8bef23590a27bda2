#!/usr/bin/env bash
# scripts/gpu.sh — everything the CUDA op needs on a GPU machine, in one call:
#   build (sm_90a), `make test-gpu`, compute-sanitizer memcheck + racecheck on small shapes, the bench;
# a short summary table last. Logs go to $OUT (the device tool's folder) or build/gpu-logs.
#   usage: scripts/gpu.sh [build] [test] [san] [bench] [quickbench] [ncu]    (default: build test san bench)
set -u
steps=${*:-build test san bench}
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
if has san; then
    for tool in memcheck racecheck; do
        t0=$SECONDS
        compute-sanitizer --tool $tool --error-exitcode 3 build/tests/gpu_attn --quick >"$OUT/san-$tool.log" 2>&1
        rc=$?
        summary+=("sanitizer $tool  rc=$rc  $(grep -c '^PASS' "$OUT/san-$tool.log") passed  $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san-$tool.log" | tail -1)  $((SECONDS - t0)) s")
    done
fi
if has quickbench; then
    build/lasp bench attn --device cuda --dtype bf16 --repeat 20 --dim 128 2>&1 | tee "$OUT/bench.txt"
fi
if has bench; then
    build/lasp bench attn --device cuda --dtype bf16 2>&1 | tee "$OUT/bench.txt"
fi
if has ncu; then
    ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
        --launch-skip 40 --launch-count 12 build/lasp bench attn --device cuda --dim 128 --repeat 3 --warmup 1 --quick \
        >"$OUT/ncu.txt" 2>&1
    grep -E "k_state|k_scan|k_out|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy" "$OUT/ncu.txt" | head -60
fi
echo "# ---- summary ----"
for s in "${summary[@]}"; do echo "$s"; done
[ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
exit 0
