#!/usr/bin/env bash
# tests/gpu_cli.sh BUILD — `lasp train --device cuda` as a user runs it, on a machine with a GPU: the small
# model learns the recall task as on the CPU (the threshold of test_train_cli.c), a stopped run resumes
# and its checkpoint decodes on the CPU, a run that cannot fit is refused before anything is written,
# and a diverging run stops naming the step with the last checkpoint still loadable; where there are two
# GPUs, dp 2, sp 2, ZeRO 1 and 2 against one GPU, and a killed rank ending the job. One PASS or FAIL line
# each (counted by tests/run_gpu.sh).
set -u
lasp=$(realpath "$1/lasp")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch" || exit 1

result() { # result OK NAME [LOG]
    if [ "$1" -eq 0 ]; then echo "PASS $2"; else echo "FAIL $2"; [ -n "${3:-}" ] && tail -20 "$3" | sed 's/^/  | /'; fi
}

# learning: test_train_cli.c's command, on the GPU
"$lasp" train --device cuda --model small --recall-pairs 4 --seq-len 64 --batch 16 --steps 400 --warmup 30 \
    --lr 1e-3 --min-lr 1e-4 --seed 1 --val-every 0 --val-batches 8 --quiet --out learn >learn.log 2>&1
acc=$(sed -n 's/.*recall accuracy \([0-9.]*\)%.*/\1/p' learn.log | tail -1)
echo "# recall accuracy after 400 steps on the GPU: ${acc:-none}% (threshold 50%)"
ok=1; [ -n "$acc" ] && awk "BEGIN{exit !($acc >= 50)}" && ok=0
result $ok "the small model learns associative recall on the GPU (accuracy ≥ 50%)" learn.log

# stop after 5 steps, resume to 10; the step lines name MFU-less f32 runs' GPU memory; generate on the CPU
"$lasp" train --device cuda --model tiny --steps 10 --stop-after 5 --ckpt ck --out run >a.log 2>&1
ra=$?
"$lasp" train --device cuda --model tiny --steps 10 --ckpt ck --out run --resume >b.log 2>&1
rb=$?
"$lasp" generate --ckpt ck --prompt-ids 20,130,33 --tokens 4 --temperature 0 --ids >g.log 2>&1
rg=$?
"$lasp" generate --ckpt ck --prompt-ids 20,130,33 --tokens 4 --temperature 0 --ids --device cuda >gg.log 2>&1
rgg=$?
ok=1
[ $ra -eq 0 ] && [ $rb -eq 0 ] && [ $rg -eq 0 ] && grep -q '^step 10/10 .*GPU mem' b.log && grep -q 'resumed from ck at step 5' b.log &&
    grep -q 'device .*GPU 0' a.log && ok=0
result $ok "--device cuda: stopped at step 5, resumed to 10, the checkpoint decodes on the CPU" b.log
ok=1; [ $rgg -eq 0 ] && cmp -s g.log gg.log && ok=0
result $ok "lasp generate --device cuda: the CPU's tokens ($(cat gg.log))" gg.log

# make demo on a GPU machine trains there
bash "$(dirname "$lasp")/../tools/demo.sh" "$lasp" >demo.log 2>&1
rc=$?
acc=$(sed -n 's/.*recall accuracy \([0-9.]*\)%.*/\1/p' demo.log | tail -1)
echo "# make demo on the GPU: recall accuracy ${acc:-none}%, answers $(grep -E '^[0-9]+(,[0-9]+)+$' demo.log | sed 's/.*,//' | tr '\n' ' ')"
ok=1; [ $rc -eq 0 ] && grep -q 'demo on the GPU' demo.log && [ -n "$acc" ] && awk "BEGIN{exit !($acc >= 50)}" && ok=0
result $ok "make demo trains on the GPU when there is one (recall accuracy ≥ 50%)" demo.log

# too big: refused with the sizes, before any file is written
"$lasp" train --device cuda --model 1b --batch 1 --seq-len 16777216 --out big --ckpt big/ck >big.log 2>&1
rc=$?
ok=1
[ $rc -eq 1 ] && grep -q 'GiB of GPU memory' big.log && grep -q 'hint' big.log && [ ! -e big ] && ok=0
result $ok "a run that cannot fit is refused before the first step and writes nothing" big.log
sed -n 's/^error: /# /p' big.log

# a long sequence in chunks that carry the state: activations of one chunk
"$lasp" train --device cuda --model small --seq-len 65536 --batch 1 --chunk 8192 --recompute block --steps 2 \
    --val-batches 0 \
    --out long >long.log 2>&1
rc=$?
ok=1; [ $rc -eq 0 ] && grep -q 'in 8 chunks of 8192 (state carried)' long.log && grep -q -- '--recompute block' long.log &&
    grep -q '^step 2/2' long.log && ok=0
result $ok "lasp train --device cuda --seq-len 65536 --chunk 8192 --recompute block: the sequence in 8 chunks" long.log
grep -E 'memory/rank|^step 2' long.log | sed 's/^/# /'

# divergence: stops naming the step; the last checkpoint (every step) still loads
"$lasp" train --device cuda --model tiny --steps 200 --lr 1000 --clip 0 --warmup 1 --ckpt-every 1 --ckpt dv \
    --out dv >dv.log 2>&1
rc=$?
"$lasp" generate --ckpt dv --prompt-ids 20,130 --tokens 1 --temperature 0 --ids >dvg.log 2>&1
rg=$?
ok=1
[ $rc -eq 1 ] && grep -qE '^error: step [0-9]+: ' dv.log && grep -q 'hint: a lower --lr' dv.log && [ $rg -eq 0 ] && ok=0
result $ok "a diverging run on the GPU stops naming the step; the last checkpoint still loads" dv.log
grep '^error' dv.log | sed 's/^error: /# /'

# Runs under mpirun against one plain run on one GPU (f32, the tiny model, batch 4, 10 steps): the largest
# relative difference of the 10 losses, and a line. worst REF RUN prints it ("none" if a log lacks steps).
args1="--device cuda --dtype f32 --model tiny --batch 4 --steps 10 --val-every 5 --val-batches 2 --quiet"
"$lasp" train $args1 --out one >one.log 2>&1
r1=$?
loss() { sed -n 's/.*"step":\([0-9]*\),"loss":\([0-9.eE+-]*\).*/\1 \2/p' "$1/train.jsonl"; }
worst() {
    paste <(loss "$1") <(loss "$2") | awk '{d = $2 - $4; d = d < 0 ? -d : d; r = d / $2; if (r > w) w = r; n++}
        END {if (n != 10) print "none"; else printf "%.2e", w}'
}
# versus NP TOL NAME [OPTIONS...]: mpirun -np NP lasp train with args1 and OPTIONS into NAME; its losses within TOL
# of the plain run's; with --ckpt among the options, its checkpoint resumed in a plain run to step 12
versus() {
    local np=$1 tol=$2 name=$3
    shift 3
    timeout 300 mpirun --bind-to none -np "$np" "$lasp" train $args1 "$@" --out "$name" >"$name.log" 2>&1
    local r2=$? rr=0 ck="" resumed=1
    case " $* " in *" --ckpt "*) ck=$(echo " $* " | sed 's/.* --ckpt \([^ ]*\) .*/\1/') ;; esac
    if [ -n "$ck" ]; then
        local rargs=${args1/--steps 10/--steps 12}
        "$lasp" train ${rargs/ --quiet/} --ckpt "$ck" --resume --out "${name}r" >"${name}r.log" 2>&1
        rr=$?
        grep -q "resumed from $ck at step 10" "${name}r.log" && resumed=0
    else
        resumed=0
    fi
    local w
    w=$(worst one "$name")
    echo "# mpirun -np $np lasp train $* against one GPU's plain run: largest relative difference of the 10 losses $w"
    local ok=1
    [ $r1 -eq 0 ] && [ $r2 -eq 0 ] && [ $rr -eq 0 ] && [ $resumed -eq 0 ] && [ "$w" != none ] &&
        awk "BEGIN{exit !($w <= $tol)}" && ok=0
    result $ok "mpirun -np $np lasp train --device cuda $*: the losses of one GPU${ck:+; its checkpoint resumes there}" \
        "$name.log"
}

# the ranks' code on one GPU: under mpirun, even of one rank, the trainer runs over an NCCL world (the gradients
# reduced unit by unit beside the backward, the sums over ranks, at ZeRO 1 to 3 the shards, their gathers and
# the checkpoint's, at 3 each unit's parameters gathered as the model comes to it), and one rank must train
# what the plain run trains, to round-off (its sums are the same)
for z in 0 1 2 3; do versus 1 1e-6 np1z$z --zero $z --ckpt np1z$z/ck; done
# in chunks under the launcher: the chunks' gradients reduced once after the last (chunks round differently
# from the whole sequence: 1e-3 over the curve, as gpu_train allows)
versus 1 1e-3 np1chunk --chunk 32 --zero 1 --ckpt np1chunk/ck

# over two GPUs, in f32 the losses are one GPU's (the sums in another order: 1e-4): data parallel (each rank half
# of the batch), the sequence split (--sp 2, both schedules: the states and the convolution's halo between the
# ranks), ZeRO 1 to 3 (the checkpoint the two ranks wrote, gathered from their shards, resumed on one GPU)
if [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -ge 2 ]; then
    versus 2 1e-4 dp2 --ckpt dp2/ck
    "$lasp" generate --ckpt dp2/ck --prompt-ids 20,130 --tokens 1 --temperature 0 --ids >dpg.log 2>&1
    result $? "lasp generate decodes the checkpoint of mpirun -np 2 lasp train --device cuda" dpg.log
    for mode in chain lasp2; do versus 2 1e-4 sp2$mode --sp 2 --sp-mode $mode; done
    # each layer recomputed in the backward through the SP layer again (block: the chain; attn: LASP-2)
    versus 2 1e-4 sp2block --sp 2 --recompute block
    versus 2 1e-4 sp2attn --sp 2 --sp-mode lasp2 --recompute attn
    # each piece in chunks, the carried state relayed from rank to rank (ZeRO 1: the chunks' gradients reduced once)
    versus 2 1e-4 sp2chunk --sp 2 --chunk 32 --zero 1
    for z in 1 2 3; do versus 2 1e-4 np2z$z --zero $z --ckpt np2z$z/ck; done
    # a rank killed mid-run (SIGKILL, in the middle of its steps) ends the whole job within seconds, never a hang
    timeout 300 mpirun --bind-to none -np 2 bash -c 'echo $$ >pid.$OMPI_COMM_WORLD_RANK; exec "$0" "$@"' "$lasp" \
        train --device cuda --model small --sp 2 --steps 100000 --out kill >kill.log 2>&1 &
    job=$!
    for _ in $(seq 120); do grep -q '^step ' kill.log 2>/dev/null && break; sleep 1; done
    t0=$SECONDS
    kill -9 "$(cat pid.1 2>/dev/null)" 2>/dev/null
    wait $job
    rk=$? took=$((SECONDS - t0))
    echo "# a rank killed at step $(grep -c '^step ' kill.log): the job ended in $took s (exit $rk)"
    ok=1; [ $rk -ne 0 ] && [ $rk -ne 124 ] && [ $took -le 30 ] && ok=0
    result $ok "mpirun -np 2 lasp train --device cuda --sp 2: a rank killed mid-run ends the job within 30 s" kill.log
else
    echo "  skip  data parallel, --sp 2, --zero 1 to 3 and a killed rank over GPUs: one GPU here (mpirun -np 2 lasp train --device cuda needs two)"
fi
exit 0
