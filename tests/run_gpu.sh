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
. "$(dirname "$0")/counted.sh"
for t in "$BUILD"/tests/gpu_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    case $name in
    gpu_mpi_*) counted "$name" "$TIMEOUT" mpirun --bind-to none -np "$((ngpu > 0 ? ngpu : 1))" "$t" ;;
    *) counted "$name" "$TIMEOUT" "$t" "$@" ;;
    esac
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
