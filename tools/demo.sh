#!/usr/bin/env bash
# tools/demo.sh — what `make demo` runs: trains the small preset on the built-in recall task with
# LASP over 2 ranks (`mpirun -np 2 lasp train --sp 2`: every sequence is split in two, and only the
# attention states cross between the ranks), shows the loss falling and the recall accuracy rising,
# then generates from the checkpoint with the recurrent form. A few minutes on 2 CPU cores; OpenBLAS
# (installed here when missing) makes the training several times faster (bench/RESULTS.md). Where the
# build has CUDA and a GPU is usable, the same training runs on the GPU instead (one process, bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
LASP=${1:-build/lasp}
out=runs/demo
train_args=(--model small --recall-pairs 4 --seq-len 128 --batch 16 --steps 600 --warmup 30 --lr 1e-3 --min-lr 1e-4
            --val-every 100 --seed 1 --out "$out" --ckpt "$out/ckpt")
every25() { awk '/^step / { n++; if (n % 25 && n != 1) next } { print; fflush() }'; }
generate() {
    echo
    echo "# generating from the checkpoint (recurrent form, constant memory per token):"
    echo "# prompt: pairs 20→130 33→150 41→170 57→190, then the keys 41 and 20 — the model should answer 170, 130"
    "$LASP" generate --ckpt "$out/ckpt" --prompt-ids 20,130,33,150,41,170,57,190,41 --tokens 1 --temperature 0 --ids
    "$LASP" generate --ckpt "$out/ckpt" --prompt-ids 20,130,33,150,41,170,57,190,20 --tokens 1 --temperature 0 --ids
    echo "# log: $out/train.jsonl   checkpoint: $out/ckpt/model.ckpt"
}

if "$LASP" info 2>/dev/null | grep -qE '^  GPU 0 '; then
    rm -rf "$out"
    echo "# lasp demo on the GPU (lasp train --device cuda, bf16; without a GPU it runs on 2 CPU ranks with LASP):"
    echo "# the small TransNormerLLM-style model learns multi-query associative recall, sequences of 128 tokens."
    echo "# Chance recall accuracy is 1/64 = 1.6%. Knowing which 4 values a sample holds but not which key"
    echo "# each belongs to gives ~1/4 = 25%: only binding values to keys (associative recall) goes beyond."
    "$LASP" train --device cuda "${train_args[@]}" | every25
    generate
    exit 0
fi

# apt-get install PKG... (Debian/Ubuntu), as root or through sudo
apt_install() {
    local sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# MPI is what runs 2 ranks: install it if missing.
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
    echo "# installing OpenMPI (openmpi-bin libopenmpi-dev) for the 2-rank demo"
    if ! apt_install openmpi-bin libopenmpi-dev; then
        echo "error: could not install OpenMPI (hint: install openmpi-bin and libopenmpi-dev with your package" >&2
        echo "       manager, then run make demo again; or train on one process: $LASP train --model small)" >&2
        exit 1
    fi
fi
# OpenBLAS makes the training several times faster; without it lasp's own matrix products run it. The
# build's probe says whether it links (the reference BLAS's cblas.h does not count).
if [[ $(make -s features) == *"no OpenBLAS"* ]]; then
    echo "# installing OpenBLAS (libopenblas-dev): the demo trains several times faster with it"
    apt_install libopenblas-dev || echo "# could not install OpenBLAS: the demo runs without it, slower" \
        "(hint: install libopenblas-dev with your package manager, then run make demo again)"
fi
# rebuild so lasp links what is installed now
features=$("$LASP" info 2>/dev/null || true)
if ! grep -qE 'MPI +yes' <<<"$features" || ! grep -qE 'BLAS +yes' <<<"$features"; then
    make -s all >/dev/null
fi

# OpenMPI refuses root unless told it is on purpose; one OpenMP thread per rank on 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
rm -rf "$out"
echo "# lasp demo: the small TransNormerLLM-style model learns multi-query associative recall,"
echo "# each sequence of 128 tokens split over 2 ranks (LASP, --sp 2)."
echo "# Chance recall accuracy is 1/64 = 1.6%. Knowing which 4 values a sample holds but not which key"
echo "# each belongs to gives ~1/4 = 25%: only binding values to keys (associative recall) goes beyond."
mpirun --oversubscribe --bind-to none -np 2 "$LASP" train --sp 2 "${train_args[@]}" | every25
generate
