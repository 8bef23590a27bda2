#!/usr/bin/env bash
# tests/run.sh — runs every test of `make test` and prints one total: "N passed, N failed".
# Each run is a test binary (or an mpirun of one) under a timeout; it prints PASS/FAIL lines, which
# are counted here. A run that dies, hangs or exits non-zero without a FAIL line counts as one failure.
set -u
BUILD=${BUILD:-build}
HAVE_MPI=${HAVE_MPI:-}
TIMEOUT=${LASP_TEST_TIMEOUT:-900}
passed=0 failed=0
logdir=$BUILD/test-logs
mkdir -p "$logdir"

# run NAME CMD... — one run, counted
run() {
    local name=$1; shift
    local log="$logdir/${name//[^A-Za-z0-9_.-]/_}.log"
    local t0=$SECONDS
    timeout --kill-after=10 "$TIMEOUT" "$@" >"$log" 2>&1
    local rc=$?
    local p f
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "FAIL $name (timed out after ${TIMEOUT}s)" >>"$log"
        else
            echo "FAIL $name (exit status $rc)" >>"$log"
        fi
    fi
    passed=$((passed + p)) failed=$((failed + f))
    if [ "$f" -eq 0 ]; then
        printf '  ok    %-40s %4d passed  %4ds\n' "$name" "$p" $((SECONDS - t0))
    else
        printf '  FAIL  %-40s %4d passed %4d failed  %4ds  (log: %s)\n' "$name" "$p" "$f" $((SECONDS - t0)) "$log"
        grep -E '^(FAIL|  check failed|# seed)|rror' "$log" | head -20 | sed 's/^/        /'
    fi
}

echo "# lasp tests ($BUILD)"
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    case $name in
    test_mpi_*) continue ;;                     # multi-rank: below
    test_cli) run "$name" "$t" "$BUILD/lasp" ;;
    *) run "$name" "$t" ;;
    esac
done

# Multi-rank tests: each test_mpi_* binary under mpirun with 1, 2 and 4 ranks.
if [ "$HAVE_MPI" = 1 ]; then
    # Open MPI's own start-up allocations (in plugins it unloads, so no suppression can name them)
    # read as leaks to LeakSanitizer: leak checking is off for multi-rank runs; ASan stays on.
    [ "${SAN:-}" = 1 ] && export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
    for t in "$BUILD"/tests/test_mpi_*; do
        [ -x "$t" ] || continue
        for np in 1 2 4; do
            run "$(basename "$t") -np $np" mpirun --oversubscribe --bind-to none -np "$np" "$t" "$BUILD/lasp"
        done
    done
else
    echo "  skip  multi-rank tests: MPI not found (hint: apt-get install openmpi-bin libopenmpi-dev)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
