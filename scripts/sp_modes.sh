#!/usr/bin/env bash
# scripts/sp_modes.sh [W] [T_LOCALS] [DEVICE] — the LASP paper's comparison in one engine: `lasp bench sp
# --mode all` (the chain, LASP-2, Ulysses, the all-gather of keys and values) over W ranks for each number
# of tokens a rank holds in T_LOCALS, then two PNGs in bench/: the bytes one rank sends per layer
# (forward + backward, counted by the communicator) and the forward + backward time, both against the
# sequence's length T = W · T_local, a line per mode; then, with MEM_MIB set, the longest sequence each mode
# fits when a rank may use MEM_MIB of memory (`--longest`, one process per mode: peak memory is a high-water
# mark). Needs MPI and gnuplot (apt-get install gnuplot-nox).
#   scripts/sp_modes.sh 4 "1024 2048 4096 8192"          MEM_MIB=768 scripts/sp_modes.sh 4 "1024"
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-2}
TLS=${2:-"1024 2048 4096 8192"}
DEVICE=${3:-cpu}
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
command -v gnuplot >/dev/null || { echo "error: gnuplot is missing (hint: apt-get install gnuplot-nox)" >&2; exit 1; }
data=$(mktemp)
trap 'rm -f "$data"' EXIT
for tl in $TLS; do
    # the weak-scaling rows at W: T = W · T_local
    mpirun --oversubscribe --bind-to none -np "$W" build/lasp bench sp --device "$DEVICE" --mode all --t-local "$tl" \
        --t-total $((W * tl)) --repeat 3 | tee /dev/stderr | awk -v w="$W" '$1 == "weak" && $3 == w { print $2, $5, $8, $6, $10 }' >>"$data"
done
echo "# mode T sent_bytes fwd+bwd_ms kept_MiB"
sort -k1,1 -k2,2n "$data" | tee "$data.sorted"
plot() { # plot FILE YCOL YLABEL
    gnuplot <<GP
set terminal pngcairo size 900,600 font ",11"
set output "$1"
set logscale xy
set xlabel "sequence length T (tokens, W = $W ranks of T/W)"
set ylabel "$3"
set key top left
set grid
set title "one linear-attention layer, forward + backward, W = $W ($DEVICE)"
plot for [m in "chain lasp2 ulysses allgather"] "< grep '^".m." ' $data.sorted" using 2:$2 with linespoints title m
GP
}
plot "bench/sp_modes_bytes_w$W.png" 3 "bytes one rank sends"
plot "bench/sp_modes_time_w$W.png" 4 "ms"
rm -f "$data.sorted"
echo "# wrote bench/sp_modes_bytes_w$W.png and bench/sp_modes_time_w$W.png"
if [ -n "${MEM_MIB:-}" ]; then
    for mode in chain lasp2 ulysses allgather; do
        mpirun --oversubscribe --bind-to none -np "$W" build/lasp bench sp --device "$DEVICE" --longest --mode "$mode" \
            --mem-mib "$MEM_MIB" --t-local "${TLS%% *}" | grep '^# longest'
    done
fi
