#!/usr/bin/env bash
# tests/run_gpu.sh — `make test-gpu`, on a machine with a GPU: the CUDA op's tests on both kernel families
# (Hopper's where they apply, and the portable mma.sync ones everywhere), the model's layers against their CPU
# versions, the whole model against the CPU's, then the comm and SP conformance
# suites on the GPU under mpirun, one process per GPU of this machine (and a single-rank run besides, on a
# machine of several). Prints one total, "N passed, N failed", counting PASS/FAIL lines as tests/run.sh
# does; a run that dies, hangs or exits non-zero without a FAIL line counts as one failure.
set -u
BUILD=${BUILD:-build}
TIMEOUT=${LASP_TEST_TIMEOUT:-900}
passed=0 failed=0
logdir=$BUILD/test-logs
mkdir -p "$logdir"

export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
echo "# lasp GPU tests ($BUILD, $ngpu GPUs)"
. "$(dirname "$0")/counted.sh"
counted "gpu_attn (kernels auto)" "$TIMEOUT" "$BUILD/tests/gpu_attn" --kernels auto "$@"
counted "gpu_attn (kernels sm80)" "$TIMEOUT" "$BUILD/tests/gpu_attn" --kernels sm80 "$@"
counted "gpu_layers" "$TIMEOUT" "$BUILD/tests/gpu_layers"
counted "gpu_model" "$TIMEOUT" "$BUILD/tests/gpu_model"
counted "gpu_train" "$TIMEOUT" "$BUILD/tests/gpu_train"
counted "gpu_cli" "$TIMEOUT" bash "$(dirname "$0")/gpu_cli.sh" "$BUILD"
# the Python package's tests, CUDA tensors included, with a python3 that has PyTorch and pytest
py=
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c "import torch, pytest, numpy" 2>/dev/null; then py=$p; break; fi
done
if [ -n "$py" ]; then
    counted "python (pytest)" "$TIMEOUT" env OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 "$py" -m pytest -q -p no:cacheprovider \
        "$(dirname "$0")/../python/tests"
else
    echo "  skip  python: no python3 with torch, pytest and numpy"
fi
nps=$((ngpu > 0 ? ngpu : 1))
[ "$nps" -gt 1 ] && nps="1 $nps"
for np in $nps; do
    counted "test_comm --backend nccl -np $np" "$TIMEOUT" mpirun --bind-to none -np "$np" "$BUILD/tests/test_comm" --backend nccl
    counted "test_sp --device cuda -np $np" "$TIMEOUT" mpirun --bind-to none -np "$np" "$BUILD/tests/test_sp" --device cuda
done
[ "$ngpu" -lt 2 ] && echo "  note  one GPU: the suites ran over one rank; the multi-GPU schedules need a machine of several"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
