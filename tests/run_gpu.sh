#!/usr/bin/env bash
# tests/run_gpu.sh — `make test-gpu`: runs every build/tests/gpu_* binary (on a machine with a GPU) and
# prints one total, "N passed, N failed", counting PASS/FAIL lines as tests/run.sh does. A binary that
# dies, hangs or exits non-zero without a FAIL line counts as one failure.
set -u
BUILD=${BUILD:-build}
TIMEOUT=${LASP_TEST_TIMEOUT:-900}
passed=0 failed=0
logdir=$BUILD/test-logs
mkdir -p "$logdir"

# Multi-GPU tests (gpu_mpi_*) run under mpirun with one process per GPU of this machine.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
echo "# lasp GPU tests ($BUILD, $ngpu GPUs)"
for t in "$BUILD"/tests/gpu_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    log="$logdir/$name.log"
    t0=$SECONDS
    run=("$t" "$@")
    case $name in gpu_mpi_*) run=(mpirun --bind-to none -np "$((ngpu > 0 ? ngpu : 1))" "$t") ;; esac
    timeout --kill-after=10 "$TIMEOUT" "${run[@]}" >"$log" 2>&1
    rc=$?
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        echo "FAIL $name (exit status $rc)" >>"$log"
    fi
    passed=$((passed + p)) failed=$((failed + f))
    if [ "$f" -eq 0 ]; then
        printf '  ok    %-40s %4d passed  %4ds\n' "$name" "$p" $((SECONDS - t0))
    else
        printf '  FAIL  %-40s %4d passed %4d failed  %4ds  (log: %s)\n' "$name" "$p" "$f" $((SECONDS - t0)) "$log"
        grep -E '^(FAIL|  check failed|# seed)|rror' "$log" | head -30 | sed 's/^/        /'
    fi
    grep '^# worst' "$log" | sed 's/^/  /'
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
