# tests/counted.sh — sourced by tests/run.sh and tests/run_gpu.sh: one test run, counted.
# A run prints PASS/FAIL lines; a run that dies, hangs or exits non-zero without a FAIL line counts as one
# failure. Needs $logdir and adds to $passed and $failed.

# counted NAME LIMIT CMD...
counted() {
    local name=$1 limit=$2; shift 2
    local log="$logdir/${name//[^A-Za-z0-9_.-]/_}.log"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local p f
    p=$(grep -c '^PASS ' "$log")
    f=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "FAIL $name (timed out after $limit s)" >>"$log"
        else
            echo "FAIL $name (exit status $rc)" >>"$log"
        fi
    fi
    passed=$((passed + p)) failed=$((failed + f))
    if [ "$f" -eq 0 ]; then
        printf '  ok    %-40s %4d passed  %4ds\n' "$name" "$p" $((SECONDS - t0))
    else
        printf '  FAIL  %-40s %4d passed %4d failed  %4ds  (log: %s)\n' "$name" "$p" "$f" $((SECONDS - t0)) "$log"
        grep -E '^(FAIL|  check failed|# seed)|rror' "$log" | head -30 | sed 's/^/        /'
    fi
    grep '^# worst' "$log" | sed 's/^/  /'
}
