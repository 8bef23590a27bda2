#!/usr/bin/env bash
# tests/tour.sh README BUILD — runs every command of the README's tour of the CLI, as written, in a scratch
# directory whose build/ is BUILD: one PASS or FAIL line each (counted by tests/run.sh), so that the tour
# cannot rot. Commands on GPUs are skipped where this machine has fewer than they need, mpirun ones where
# the build has no MPI.
set -u
readme=$(realpath "$1")
build=$(realpath "$2")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ln -s "$build" "$scratch/build"
cd "$scratch" || exit 1
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
have_mpi=$("$build/lasp" info 2>/dev/null | grep -cE 'MPI +yes')

# the tour: the indented block after its heading, comments cut, continued lines joined
commands=$(awk '
    /^## A short tour of the CLI/ { on = 1; next }
    on && /^## / { exit }
    on && /^    / {
        line = substr($0, 5)
        sub(/[ ]+# .*$/, "", line)
        if (line ~ /^[ ]*$/ || line ~ /^#/) next
        if (cont != "") line = cont " " line
        if (line ~ /\\$/) { sub(/[ ]*\\$/, "", line); cont = line; next }
        cont = ""
        gsub(/[ ]+/, " ", line)
        print line
    }' "$readme")
[ -n "$commands" ] || { echo "FAIL the README has no tour to run"; exit 1; }

n=0
while IFS= read -r cmd; do
    n=$((n + 1))
    need=0
    case $cmd in *"--device cuda"*) need=1 ;; esac
    if [ "$need" = 1 ]; then
        np=$(echo "$cmd" | sed -n 's/.* -np \([0-9]*\).*/\1/p')
        need=${np:-1}
        if [ "$ngpu" -lt "$need" ]; then
            echo "# skip (needs $need GPUs, this machine has $ngpu): $cmd"
            continue
        fi
    fi
    case $cmd in mpirun*)
        if [ "$have_mpi" = 0 ]; then echo "# skip (no MPI in this build): $cmd"; continue; fi ;;
    esac
    if out=$(OMP_NUM_THREADS=1 timeout 300 bash -c "$cmd" 2>&1 </dev/null); then
        echo "PASS tour $n: $cmd"
    else
        rc=$?
        echo "$out" | tail -15 | sed 's/^/  /'
        echo "FAIL tour $n: $cmd (exit status $rc)"
    fi
done <<<"$commands"
