#!/usr/bin/env bash
# tools/demo.sh — what `make demo` runs: the op on generated inputs, checked against the fp64
# reference. (When the trainer lands, the demo trains a model instead.)
set -euo pipefail
LASP=${1:-build/lasp}
out=runs/demo-attn
echo "# lasp demo: decayed causal linear attention, B=2 T=4096 H=8 d=e=64, forward + backward, checked"
"$LASP" attn --random 2,4096,8,64,64 --seed 1 --check --out "$out"
echo "# inputs and outputs are in $out/ (.npy); rerun from files with:"
echo "#   $LASP attn --q $out/q.npy --k $out/k.npy --v $out/v.npy --slopes $out/slopes.npy --do $out/do.npy --check --out $out/again"
