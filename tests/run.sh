#!/usr/bin/env bash
# tests/run.sh — runs every test of `make test` and prints one total: "N passed, N failed".
# Each run is a test binary (or an mpirun of one) under a timeout; it prints PASS/FAIL lines, which
# are counted here. A run that dies, hangs or exits non-zero without a FAIL line counts as one failure.
set -u
BUILD=${BUILD:-build}
HAVE_MPI=${HAVE_MPI:-}
TIMEOUT=${LASP_TEST_TIMEOUT:-900}
# Multi-rank runs get a shorter limit: a deadlock must fail quickly, not stall the suite.
MPI_TIMEOUT=${LASP_MPI_TEST_TIMEOUT:-180}
# The suites that run on every number of ranks (the conformance suites of the comm and SP layers, and the
# trainer's layout invariance): once as one process, then under mpirun with 1, 2 and 4 ranks.
MULTI="test_comm test_sp test_train"
# test_train_cli's learning run is bounded by its steps (~35 s with OpenBLAS, ~3 min on one core without);
# the binary's own limits end a hung run with its name, this one only a stuck binary, after them.
TRAIN_TIMEOUT=${LASP_TRAIN_TEST_TIMEOUT:-2400}
passed=0 failed=0

# OpenMPI refuses to run as root unless told that it is on purpose (CI containers run as root), and
# one OpenMP thread per rank keeps N ranks from fighting over a few cores.
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
if [ "${SAN:-}" = 1 ]; then
    # OpenMPI keeps memory until exit on purpose (its own caches, the PMIx client): LeakSanitizer reports
    # it as leaks inside libmpi/libopen-pal and plugins already unloaded at exit (so a suppression list
    # cannot name them); none has a lasp frame. Leak checking stays on for the single-process tests; the
    # multi-rank runs check addresses and undefined behaviour only.
    MPI_ASAN="ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
else
    MPI_ASAN=
fi
logdir=$BUILD/test-logs
mkdir -p "$logdir"

# counted NAME LIMIT CMD... — one run under a timeout, its PASS/FAIL lines counted (tests/counted.sh)
. "$(dirname "$0")/counted.sh"
run() {
    local limit=$TIMEOUT
    case $1 in
    *" -np "* | test_cli_sp) limit=$MPI_TIMEOUT ;;
    test_train_cli) limit=$TRAIN_TIMEOUT ;;
    esac
    counted "$1" "$limit" "${@:2}"
}

echo "# lasp tests ($BUILD)"
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    case $name in
    test_cli) run "$name" "$t" "$BUILD/lasp" ;;
    test_cli_sp)                                # `lasp attn --sp` under mpirun, from inside the test
        if [ "$HAVE_MPI" = 1 ]; then run "$name" env $MPI_ASAN OMP_NUM_THREADS=1 "$t" "$BUILD/lasp"; fi ;;
    test_comm | test_sp | test_train)           # one process (self, or a singleton MPI world)
        run "$name" env $MPI_ASAN OMP_NUM_THREADS=1 "$t" ;;
    *) run "$name" "$t" ;;
    esac
done

# The README's tour of the CLI, every command as written (mpirun among them: leak checks off, as below).
run tour env $MPI_ASAN bash "$(dirname "$0")/tour.sh" README.md "$BUILD"

# The Python package (python/), with a python3 that has PyTorch, pytest and numpy (Debian's python3-torch,
# python3-pytest, python3-numpy); not under SAN (the sanitised library cannot load into an interpreter).
py=
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c "import torch, pytest, numpy" 2>/dev/null; then py=$p; break; fi
done
if [ -n "$py" ] && [ "${SAN:-}" != 1 ] && [ "$BUILD" = build ]; then
    run "python (pytest)" env OMP_NUM_THREADS=1 "$py" -m pytest -q -p no:cacheprovider "$(dirname "$0")/../python/tests"
else
    echo "  skip  python: no python3 with torch, pytest and numpy, or a SAN build (hint: apt-get install python3-torch python3-pytest python3-numpy)"
fi

# Multi-rank: each suite under mpirun with 1, 2 and 4 ranks.
if [ "$HAVE_MPI" = 1 ]; then
    for name in $MULTI; do
        t=$BUILD/tests/$name
        [ -x "$t" ] || continue
        for np in 1 2 4; do
            run "$name -np $np" env $MPI_ASAN OMP_NUM_THREADS=1 \
                mpirun --oversubscribe --bind-to none -np "$np" "$t"
        done
    done
else
    echo "  skip  multi-rank tests: MPI not found (hint: apt-get install openmpi-bin libopenmpi-dev)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
