#!/usr/bin/env bash
# scripts/ab.sh — an A/B of the CUDA op on one machine: other revisions against the working tree, built
# side by side and benched in alternating rounds, so that machine-to-machine spread (up to 7% between two
# H200s, bench/RESULTS.md) cannot pass for a change. A short table last.
#   here:       scripts/ab.sh prepare REV...   (copies each revision's tree into .ab/REV, ignored by git)
#   GPU box:    scripts/ab.sh run [ROUNDS]     (builds .ab/* and the working tree; device tool: carry .ab)
# AB_CMD overrides the command run in each tree (default: the op bench, every shape, bf16, 30 runs each;
# e.g. 'NCCL_NVLS_ENABLE=0 mpirun -np 2 build/lasp bench sp --device cuda --dtype bf16'), AB_ROWS the
# regex of its rows to keep (default: lines starting with a number; for the SP bench '^  (weak|strong)').
set -u
cmd=${1:-}
shift || true
case $cmd in
prepare)
    [ $# -ge 1 ] || { echo "usage: scripts/ab.sh prepare REV..." >&2; exit 2; }
    for rev in "$@"; do
        short=$(git rev-parse --short "$rev") || exit 2
        rm -rf ".ab/$short" && mkdir -p ".ab/$short" && git archive "$short" | tar -x -C ".ab/$short" || exit 1
        echo ".ab/$short  $(git log -1 --format=%s "$short" | cut -c1-80)"
    done
    ;;
run)
    rounds=${1:-2}
    ARCH=${CUDA_ARCH_OVERRIDE:--gencode arch=compute_90a,code=sm_90a}
    OUT=${OUT:-build/gpu-logs}
    mkdir -p "$OUT"
    builds=(.)
    for d in .ab/*/; do [ -d "$d" ] && builds+=("${d%/}"); done
    # the builds share the cores; each one's log in its build folder
    for b in "${builds[@]}"; do
        (
            cd "$b" && mkdir -p build
            if ! make -j"$(($(nproc) / ${#builds[@]} + 1))" all CUDA_ARCH="$ARCH" >build/ab-build.log 2>&1; then
                echo "build of $b failed:"
                tail -5 build/ab-build.log
            fi
        ) &
    done
    wait
    : >"$OUT/ab.txt"
    for r in $(seq 1 "$rounds"); do
        for b in "${builds[@]}"; do
            [ -x "$b/build/lasp" ] || continue
            name="head"
            [ "$b" = . ] || name=$(basename "$b")
            (cd "$b" && eval "${AB_CMD:-build/lasp bench attn --device cuda --dtype bf16 --repeat 30}") 2>&1 |
                grep -E "${AB_ROWS:-^ +[0-9]}" | sed "s|^|$name r$r |" >>"$OUT/ab.txt"
        done
    done
    echo "# A/B on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(date -u +%F): build, round," \
        "then the rows of: ${AB_CMD:-build/lasp bench attn --device cuda --dtype bf16 --repeat 30}"
    sort -s -b -k3,7 "$OUT/ab.txt"   # the rows of one shape together
    ;;
*)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
