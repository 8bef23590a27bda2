/* cmd_train.c — `lasp train`: trains the model on the built-in recall task or a token file, on one
 * process or under mpirun with dp × sp ranks. Rank 0 prints the configuration, one line per step,
 * validation and progress, and writes DIR/train.jsonl (each line as it is printed); checkpoints go to
 * --ckpt DIR, every --ckpt-every steps or --ckpt-minutes minutes, at the end, and when a signal stops
 * the run. Everything that can be refused (options, data, checkpoint, layout) is checked before any file
 * is written, so a bad invocation leaves the run and checkpoint directories as they were.
 *
 * SIGINT or SIGTERM (Ctrl-C, a scheduler's preemption): the step in progress finishes, every rank agrees
 * to stop after it (the signal may reach only some ranks), the checkpoint is written, the log closed, and
 * the run exits with 128 + the signal's number and a line saying how to resume. A second signal ends the
 * process at once. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "lasp.h"
#include "opts.h"
#include "worlds.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fmt_dur(char *b, size_t n, double s) {
    if (s < 60) snprintf(b, n, "%.0fs", s);
    else if (s < 3600) snprintf(b, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static void fmt_rate(char *b, size_t n, double x) {
    if (x >= 1e6) snprintf(b, n, "%.2fM", x / 1e6);
    else if (x >= 1e3) snprintf(b, n, "%.1fk", x / 1e3);
    else snprintf(b, n, "%.0f", x);
}

/* "512.0 MiB", "4.21 GiB" */
static const char *fmt_bytes(char *b, size_t n, double x) {
    if (x < 1073741824.0) snprintf(b, n, "%.1f MiB", x / 1048576.0);
    else snprintf(b, n, "%.2f GiB", x / 1073741824.0);
    return b;
}

/* The first SIGINT or SIGTERM asks the loop to stop after its step; a second ends the process now. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) {
    if (stop_signal) {
        static const char msg[] = "lasp train: second signal, stopping now without a checkpoint\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(128 + sig);
    }
    stop_signal = sig;
}

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* After each step, what every rank does next, decided together: stop (a signal reached some rank: the
 * number of the first one seen) and whether to checkpoint now (rank 0's clock says --ckpt-minutes have
 * passed). One small all-reduce a step. */
typedef struct next_step {
    int stop_signal;
    int save;
} next_step;

static lasp_status decide(lasp_comm *w, int save_due, next_step *out, lasp_err *err) {
    double x[2] = {(double)stop_signal, save_due ? 1.0 : 0.0}, y[2] = {0, 0};
    LASP_TRY(lasp_comm_allreduce(w, x, y, 2, LASP_F64, LASP_REDUCE_MAX, err));
    out->stop_signal = (int)y[0], out->save = y[1] > 0;
    return LASP_OK;
}

typedef struct train_args {
    const char *model, *data, *data_format, *ckpt, *out, *sp_mode, *device, *dtype, *recompute;
    long long vocab, recall_pairs, batch, seq_len, steps, warmup, sp, zero, seed, val_every, val_batches, ckpt_every;
    long long threads, stop_after, conv, chunk;
    double lr, min_lr, wd, clip, val_frac, ckpt_minutes;
    int resume, quiet;
} train_args;

/* The options' ranges that the library does not check itself (it checks the training params). */
static int check_args(const train_args *a, int W) {
    const char *bad = NULL;
    char why[160] = "";
    if (a->threads < 0 || a->threads > LASP_MAX_THREADS)
        bad = "--threads", snprintf(why, sizeof why, "%lld: 0 (OpenMP's default) or 1 .. %d", a->threads,
                                    LASP_MAX_THREADS);
    else if (a->sp < 1 || W % a->sp)
        bad = "--sp", snprintf(why, sizeof why, "%lld does not divide the %d ranks of the job (hint: mpirun -np a "
                               "multiple of --sp)", a->sp, W);
    else if (a->vocab < 0 || a->vocab > (1 << 24))
        bad = "--vocab", snprintf(why, sizeof why, "%lld: 0 (the data's default) or 2 .. %d", a->vocab, 1 << 24);
    else if (a->conv < -1 || a->conv > 16)
        bad = "--conv", snprintf(why, sizeof why, "%lld: -1 (the preset's), 0 (none) or 2 .. 16 taps", a->conv);
    else if (!(a->val_frac >= 0 && a->val_frac < 1))
        bad = "--val-frac", snprintf(why, sizeof why, "%g: a fraction in [0, 1)", a->val_frac);
    else if (a->recall_pairs < 1 || a->recall_pairs > LASP_RECALL_N_KEYS)
        bad = "--recall-pairs", snprintf(why, sizeof why, "%lld: 1 .. %d", a->recall_pairs, LASP_RECALL_N_KEYS);
    else if (a->seed < 0)
        bad = "--seed", snprintf(why, sizeof why, "%lld must be ≥ 0", a->seed);
    else if (a->val_every < 0)
        bad = "--val-every", snprintf(why, sizeof why, "%lld must be ≥ 0 (0: no validation)", a->val_every);
    else if (a->ckpt_every < 0)
        bad = "--ckpt-every", snprintf(why, sizeof why, "%lld must be ≥ 0 (0: by --ckpt-minutes and at the end)",
                                       a->ckpt_every);
    else if (a->stop_after < 0)
        bad = "--stop-after", snprintf(why, sizeof why, "%lld must be ≥ 0 (0: run to --steps)", a->stop_after);
    else if (!(a->ckpt_minutes >= 0 && a->ckpt_minutes <= 1e6))
        bad = "--ckpt-minutes", snprintf(why, sizeof why, "%g must be ≥ 0 (0: only by --ckpt-every and at the end)",
                                         a->ckpt_minutes);
    else if (a->resume && !a->ckpt)
        bad = "--resume", snprintf(why, sizeof why, "needs --ckpt DIR (the directory of the checkpoint to continue)");
    else if (*a->dtype && strcmp(a->dtype, "f32") && strcmp(a->dtype, "bf16"))
        bad = "--dtype", snprintf(why, sizeof why, "'%s' (hint: bf16 or f32)", a->dtype);
    else if (strcmp(a->data_format, "auto") && strcmp(a->data_format, "text") && strcmp(a->data_format, "shard"))
        bad = "--data-format", snprintf(why, sizeof why, "'%s' (hint: auto, text or shard)", a->data_format);
    if (!bad) return 0;
    fprintf(stderr, "error: %s %s\n", bad, why);
    return 1;
}

int cmd_train(int argc, char **argv) {
    train_args a = {.model = "small", .sp_mode = "chain", .out = "runs/train", .recall_pairs = 8, .batch = 8, .conv = -1,
                    .seq_len = 256, .steps = 200, .warmup = 20, .sp = 1, .seed = 1337, .val_every = 50,
                    .val_batches = 4, .lr = 3e-3, .min_lr = 3e-4, .wd = 0.1, .clip = 1.0, .val_frac = 0.1,
                    .ckpt_minutes = 10, .data_format = "auto", .device = "cpu", .dtype = "", .recompute = "none"};
    const opt opts[] = {
        {"--model", OPT_STR, &a.model, "NAME", "preset: tiny, small, 400m, 1b", 0},
        {"--device", OPT_STR, &a.device, "cpu|cuda", "where to train: the CPU, or GPUs (one a rank; over several, "
                                                     "dp × sp)", 0},
        {"--dtype", OPT_STR, &a.dtype, "bf16|f32", "GPU: the matrix products' and attention's operands (default bf16; "
                                                   "f32 compares with the CPU)", 0},
        {"--recompute", OPT_STR, &a.recompute, "none|attn|block", "GPU: what a layer keeps for its backward: "
                                                                   "everything, all but q, k, v and the attention's "
                                                                   "output, or only its input (the rest made again "
                                                                   "in the backward)", 0},
        {"--data", OPT_STR, &a.data, "FILE", "text file (bytes) or llm.c token shard; default: the built-in recall task", 0},
        {"--data-format", OPT_STR, &a.data_format, "auto|text|shard", "how to read --data (auto: a shard's header "
                                                                       "tells it from text)", 0},
        {"--conv", OPT_INT, &a.conv, "K", "taps of the short convolution on q, k, v (-1: the preset's, 4; 0: none)", 0},
        {"--vocab", OPT_INT, &a.vocab, "N", "vocabulary size (0 = 256 for text and recall, 50304 for shards)", 0},
        {"--val-frac", OPT_DOUBLE, &a.val_frac, "F", "fraction of a data file held out for validation", 0},
        {"--recall-pairs", OPT_INT, &a.recall_pairs, "N", "key-value pairs per sample of the recall task", 0},
        {"--batch", OPT_INT, &a.batch, "N", "sequences per step, over all dp ranks", 0},
        {"--seq-len", OPT_INT, &a.seq_len, "N", "tokens per sequence, over all sp ranks", 0},
        {"--chunk", OPT_INT, &a.chunk, "N", "run each sequence N tokens at a time, the attention state carried: "
                                            "activations of N tokens whatever --seq-len (--sp 1; 0 = off)", 0},
        {"--steps", OPT_INT, &a.steps, "N", "optimizer steps", 0},
        {"--warmup", OPT_INT, &a.warmup, "N", "linear warm-up steps, then cosine decay to --min-lr", 0},
        {"--lr", OPT_DOUBLE, &a.lr, "X", "peak learning rate (AdamW, betas 0.9/0.95)", 0},
        {"--min-lr", OPT_DOUBLE, &a.min_lr, "X", "learning rate at the end of the cosine", 0},
        {"--wd", OPT_DOUBLE, &a.wd, "X", "weight decay (matrices and embedding)", 0},
        {"--clip", OPT_DOUBLE, &a.clip, "X", "clip the global gradient norm to X (0 = off)", 0},
        {"--sp", OPT_INT, &a.sp, "N", "sequence-parallel ranks per sequence; dp = world / sp", 0},
        {"--sp-mode", OPT_STR, &a.sp_mode, "MODE", "chain (LASP), lasp2 (states all-gathered), or the baselines ulysses "
                                                   "(all-to-all) and allgather (keys and values)", 0},
        {"--zero", OPT_INT, &a.zero, "N", "0 DDP, 1 sharded optimizer, 2 + sharded gradients, 3 + sharded params", 0},
        {"--seed", OPT_INT, &a.seed, "N", "seed of data, initialisation and everything random", 0},
        {"--val-every", OPT_INT, &a.val_every, "N", "validation (loss, recall accuracy) every N steps", 0},
        {"--val-batches", OPT_INT, &a.val_batches, "N", "batches per validation", 0},
        {"--ckpt", OPT_STR, &a.ckpt, "DIR", "write checkpoints to DIR (periodically, at the end, and on SIGINT/SIGTERM)", 0},
        {"--ckpt-every", OPT_INT, &a.ckpt_every, "N", "also checkpoint every N steps (0 = by time only)", 0},
        {"--ckpt-minutes", OPT_DOUBLE, &a.ckpt_minutes, "M", "checkpoint when M minutes have passed since the last "
                                                             "(0 = not by time)", 0},
        {"--resume", OPT_FLAG, &a.resume, NULL, "continue from the checkpoint in --ckpt DIR", 0},
        {"--out", OPT_STR, &a.out, "DIR", "run directory for the log train.jsonl", 0},
        {"--threads", OPT_INT, &a.threads, "N", "CPU threads per rank (0 = OpenMP's default; at most 1024)", 0},
        {"--stop-after", OPT_INT, &a.stop_after, "N", "stop after N steps of this invocation (as if interrupted)", 0},
        {"--quiet", OPT_FLAG, &a.quiet, NULL, "only the summary and errors", 0},
    };
    const cmd_spec spec = {
        "lasp train [--model tiny|small|400m|1b] [--data FILE] [--sp N] [--zero N] [--steps N] [--ckpt DIR] ...",
        "Trains the TransNormerLLM-style linear-attention model (docs/MODEL.md). Without --data it learns the\n"
        "built-in multi-query associative recall task, generated from --seed: no download needed. Under\n"
        "`mpirun -np W` the world is dp × sp ranks (dp = W / --sp); each sp group splits every sequence\n"
        "into pieces (LASP), and gradients are reduced over the whole world. With --device cuda each rank\n"
        "takes one GPU and the ranks train dp × sp over NCCL. With --chunk and --sp > 1 the ranks relay the\n"
        "carried state: the sequence goes through them one after the other, longer but not faster.",
        "mpirun -np 2 lasp train --model small --sp 2 --steps 300 --ckpt runs/demo/ckpt", opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;

    catch_stop_signals(); /* from here a signal stops the run between steps, or before the first */
    /* MPI only when a launcher started us: one process needs no MPI */
    const int launched = lasp_comm_launcher_size();
    if (check_args(&a, launched > 0 ? launched : 1)) return 2;
    lasp_err err = {0};
    lasp_comm *world = NULL;
    const lasp_comm_backend be = launched > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    /* ranks on GPUs (under a launcher, even one): the model's traffic (gradients, states) over NCCL, one GPU a
     * rank; the host world still decides each step's stop and checkpoint, and aborts */
    lasp_comm *gworld = NULL;
    if (tools_open_worlds(be, &argc, &argv, launched > 0 && !strcmp(a.device, "cuda"), &world, &gworld)) return 1;
    const int rank = lasp_comm_rank(world), W = lasp_comm_size(world);
    int rc = 1;
    lasp_ctx *ctx = NULL;
    lasp_sp *sp = NULL;
    lasp_data *data = NULL;
    lasp_trainer *t = NULL;
    FILE *log = NULL;
    lasp_ctx_params cpar = lasp_ctx_default_params();
    cpar.n_threads = (int)a.threads;
    if (lasp_ctx_create(&cpar, &ctx) != LASP_OK) {
        if (rank == 0) fprintf(stderr, "error: no memory for a lasp context\n");
        goto done;
    }
    lasp_err *e = &err;
#define BAIL(...)                                       \
    do {                                                \
        if (rank == 0) fprintf(stderr, "error: " __VA_ARGS__); \
        goto done;                                      \
    } while (0)

    const int mode = opts_sp_mode(a.sp_mode, "--sp-mode", 0);
    const int device = opts_device(a.device, "--device"), recompute = opts_recompute(a.recompute, "--recompute");
    if (mode < 0 || device < 0 || recompute < 0) goto done;
    lasp_sp_params spp = lasp_sp_default_params();
    spp.size = (int)a.sp, spp.mode = (lasp_sp_mode)mode;
    if (lasp_sp_create(gworld ? gworld : world, &spp, &sp, e) != LASP_OK) BAIL("%s\n", e->msg);
    const lasp_sp_layout lay = lasp_sp_get_layout(sp);

    /* data and model */
    const lasp_data_format fmt = !strcmp(a.data_format, "text")    ? LASP_DATA_FORMAT_TEXT
                                 : !strcmp(a.data_format, "shard") ? LASP_DATA_FORMAT_SHARD
                                                                   : LASP_DATA_FORMAT_AUTO;
    lasp_status s = a.data ? lasp_data_open(a.data, fmt, a.val_frac, &data, e)
                           : lasp_data_recall((uint64_t)a.seed, (int32_t)a.recall_pairs, &data, e);
    if (s != LASP_OK) BAIL("%s\n", e->msg);
    const lasp_data_info di = lasp_data_get_info(data);
    const int32_t vocab = a.vocab ? (int32_t)a.vocab : di.kind == LASP_DATA_SHARD ? 50304 : 256;
    lasp_train_params o = lasp_train_default_params();
    if (lasp_model_preset(a.model, vocab, &o.model, e) != LASP_OK) BAIL("%s\n", e->msg);
    if (a.conv >= 0) {
        o.model.conv = (int32_t)a.conv;
        if (lasp_model_config_check(&o.model, e) != LASP_OK) BAIL("--conv %lld: %s\n", a.conv, e->msg);
    }
    o.batch = a.batch, o.seq_len = a.seq_len, o.steps = a.steps, o.warmup = a.warmup, o.lr = a.lr;
    o.min_lr = a.min_lr, o.weight_decay = a.wd, o.clip = a.clip, o.zero = (int)a.zero, o.seed = (uint64_t)a.seed;
    o.val_batches = a.val_batches, o.device = (lasp_device)device, o.chunk = a.chunk;
    /* bf16 by default on a GPU; asked for on the CPU, the library refuses it with a hint */
    o.dtype = !strcmp(a.dtype, "bf16") || (!*a.dtype && device == LASP_DEVICE_CUDA) ? LASP_BF16 : LASP_F32;
    o.recompute = (lasp_recompute)recompute;
    if (lasp_train_params_check(&o, e) != LASP_OK) BAIL("%s\n", e->msg);

    if (lasp_trainer_create(ctx, sp, data, &o, &t) != LASP_OK) BAIL("%s\n", lasp_ctx_error(ctx));
    /* the checkpoint to resume, validated against what was asked */
    if (a.resume) {
        if (lasp_trainer_resume(t, a.ckpt) != LASP_OK) BAIL("%s\n", lasp_ctx_error(ctx));
        if (lasp_trainer_steps_done(t) >= a.steps) {
            if (rank == 0) printf("# checkpoint %s is at step %lld of --steps %lld: nothing to do\n", a.ckpt,
                                  (long long)lasp_trainer_steps_done(t), a.steps);
            rc = 0;
            goto done;
        }
    }
    int64_t Bl = 0, Tl = 0;
    lasp_trainer_local_shape(t, &Bl, &Tl);
    const size_t n_params = lasp_trainer_n_params(t);
    const int64_t resumed_at = lasp_trainer_steps_done(t);

    /* from here on files are written */
    s = LASP_OK;
    if (rank == 0) {
        s = a.ckpt ? lasp_ckpt_dir_check(a.ckpt, e) : LASP_OK;
        if (s == LASP_OK) s = lasp_mkdir_p(a.out, e);
        if (s == LASP_OK) {
            char path[4200];
            snprintf(path, sizeof path, "%s/train.jsonl", a.out);
            if (!(log = fopen(path, a.resume ? "a" : "w")))
                s = lasp_fail(e, LASP_ERR_IO, "cannot write %s: %s", path, strerror(errno));
            else
                setvbuf(log, NULL, _IOLBF, 0); /* every line reaches the file as it is written */
        }
    }
    if (lasp_comm_agree(world, s, e) != LASP_OK) BAIL("%s\n", e->msg);

    const double tokens_per_step = (double)o.batch * (double)o.seq_len;
    if (rank == 0 && !a.quiet) {
        printf("# lasp train\n");
        printf("#   %-14s %s (d_model %d, layers %d, heads %d × %d, ffn %d, vocab %d, conv %d): %.2fM parameters\n",
               "model", a.model, o.model.d_model, o.model.n_layers, o.model.n_heads, o.model.d_model / o.model.n_heads,
               o.model.ffn_dim, o.model.vocab, o.model.conv, n_params / 1e6);
        if (di.kind == LASP_DATA_RECALL)
            printf("#   %-14s recall task: %d key-value pairs, then questions (chance accuracy 1/%d; knowing the "
                   "values but not their keys: ~1/%d)\n", "data", di.n_pairs, LASP_RECALL_N_VALUES, di.n_pairs);
        else
            printf("#   %-14s %s (%s): %zu tokens, %zu train / %zu validation\n", "data", a.data,
                   lasp_data_kind_name(di.kind), di.n_tokens, di.n_train, di.n_tokens - di.n_train);
        printf("#   %-14s world %d = dp %d × sp %d (%s), ZeRO-%d\n", "parallelism", W, lay.dp_size, lay.sp_size,
               lasp_sp_mode_name((lasp_sp_mode)mode), o.zero);
        printf("#   %-14s batch %lld × seq %lld = %.0f tokens/step; each rank: %lld × %lld", "batch",
               (long long)o.batch, (long long)o.seq_len, tokens_per_step, (long long)Bl, (long long)Tl);
        if (o.chunk) printf(", in %lld chunks of %lld (state carried)", (long long)(Tl / o.chunk), (long long)o.chunk);
        printf("\n");
        const lasp_train_memory mem = lasp_trainer_memory(t);
        char b1[32], b2[32], b3[32], b4[32];
        printf("#   %-14s %s%s", "device", mem.device, device == LASP_DEVICE_CPU ? "" : o.dtype == LASP_BF16
                   ? ", bf16 products and attention (fp32 accumulation, master weights and states)" : ", f32 (TF32 off)");
        if (o.recompute) printf("; --recompute %s", lasp_recompute_name(o.recompute));
        printf("\n");
        printf("#   %-14s parameters %s, gradients %s, optimizer %s, activations %s", "memory/rank",
               fmt_bytes(b1, 32, mem.params), fmt_bytes(b2, 32, mem.grads), fmt_bytes(b3, 32, mem.optimizer),
               fmt_bytes(b4, 32, mem.activations));
        if (device == LASP_DEVICE_CUDA)
            printf(" (the GPU has %s of %s free)", fmt_bytes(b1, 32, mem.device_free), fmt_bytes(b2, 32, mem.device_total));
        printf("\n");
        printf("#   %-14s AdamW lr %.1e → %.1e (warmup %lld, cosine), betas %.2f/%.2f, wd %.2f, clip %.2f\n",
               "optimizer", o.lr, o.min_lr, (long long)o.warmup, o.beta1, o.beta2, o.weight_decay, o.clip);
        printf("#   %-14s %lld%s, seed %lld\n", "steps", (long long)o.steps,
               a.resume ? " (resumed)" : "", a.seed);
        if (a.resume) printf("#   %-14s resumed from %s at step %lld\n", "checkpoint", a.ckpt, (long long)resumed_at);
        else if (a.ckpt) printf("#   %-14s %s/model.ckpt\n", "checkpoint", a.ckpt);
        printf("#   %-14s %s/train.jsonl\n", "log", a.out);
        fflush(stdout);
    }
    if (log && !a.resume)
        fprintf(log, "{\"config\":{\"model\":\"%s\",\"d_model\":%d,\"layers\":%d,\"heads\":%d,\"ffn\":%d,\"vocab\":%d,\"conv\":%d,"
                     "\"params\":%zu,\"data\":\"%s\",\"world\":%d,\"dp\":%d,\"sp\":%d,\"zero\":%d,\"batch\":%lld,"
                     "\"seq_len\":%lld,\"steps\":%lld,\"lr\":%g,\"seed\":%lld,\"device\":\"%s\"}}\n",
                a.model, o.model.d_model, o.model.n_layers, o.model.n_heads, o.model.ffn_dim, o.model.vocab, o.model.conv,
                n_params, a.data ? a.data : "recall", W, lay.dp_size, lay.sp_size, o.zero, (long long)o.batch,
                (long long)o.seq_len, (long long)o.steps, o.lr, a.seed, a.device);

    const double t_start = now_s();
    double last_save = t_start;
    const int64_t first = resumed_at;
    double vloss = 0, vacc = 0, last_loss = 0;
    int64_t step = first;
    next_step next = {0, 0};
    if (decide(world, 0, &next, e) != LASP_OK) BAIL("%s\n", e->msg); /* a signal during the start-up */
    while (step < o.steps && !(a.stop_after && step - first >= a.stop_after) && !next.stop_signal) {
        lasp_step_stats st;
        if (lasp_trainer_step(t, &st) != LASP_OK) BAIL("%s\n", lasp_ctx_error(ctx)); /* it names the step */
        step = lasp_trainer_steps_done(t);
        last_loss = st.loss;
        const int by_time = a.ckpt && a.ckpt_minutes > 0 && rank == 0 && now_s() - last_save >= 60 * a.ckpt_minutes;
        if (decide(world, by_time, &next, e) != LASP_OK) BAIL("%s\n", e->msg);
        if (rank == 0) {
            char rate[32];
            fmt_rate(rate, sizeof rate, tokens_per_step / (st.ms / 1e3));
            if (!a.quiet) {
                printf("step %lld/%lld | loss %.4f | lr %.1e | norm %.2f | %.0f ms | %s tok/s", (long long)step,
                       (long long)o.steps, st.loss, st.lr, st.grad_norm, st.ms, rate);
                if (device == LASP_DEVICE_CUDA) {
                    if (st.mfu > 0) printf(" | MFU %.1f%%", 100 * st.mfu);
                    if (W > 1) printf(" | comm %.0f%%", 100.0 * st.comm_ms / st.ms);
                    printf(" | GPU mem %.1f GiB\n", st.mem_bytes / 1073741824.0);
                } else {
                    printf(" | comm %.0f%%\n", 100.0 * st.comm_ms / st.ms);
                }
            }
            fflush(stdout);
            if (log)
                fprintf(log, "{\"step\":%lld,\"loss\":%.17g,\"lr\":%.6e,\"norm\":%.6f,\"ms\":%.3f,\"tok_s\":%.1f,"
                             "\"comm_ms\":%.3f,\"train_acc\":%.6f,\"mfu\":%.4f,\"mem_bytes\":%.0f}\n",
                        (long long)step, st.loss, st.lr, st.grad_norm, st.ms, tokens_per_step / (st.ms / 1e3),
                        st.comm_ms, st.acc, st.mfu, st.mem_bytes);
        }
        const int last = step == o.steps || (a.stop_after && step - first >= a.stop_after) || next.stop_signal;
        if ((a.val_every && step % a.val_every == 0) || last) {
            if (a.val_batches && lasp_trainer_eval(t, &vloss, &vacc) != LASP_OK)
                BAIL("validation: %s\n", lasp_ctx_error(ctx));
            if (rank == 0) {
                const double el = now_s() - t_start, f = (double)(step - first) / (double)(o.steps - first);
                char els[32], eta[32], bar[32];
                fmt_dur(els, sizeof els, el), fmt_dur(eta, sizeof eta, f > 0 ? el / f - el : 0);
                const int fill = (int)(f * 20 + 0.5);
                for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
                bar[20] = 0;
                if (!a.quiet && a.val_batches) {
                    if (di.kind == LASP_DATA_RECALL)  /* beside the two levels it must beat (docs/MODEL.md) */
                        printf("val  step %lld | loss %.4f | recall accuracy %.1f%% (chance %.1f%%, values without "
                               "keys %.1f%%)\n", (long long)step, vloss, 100 * vacc, 100.0 / LASP_RECALL_N_VALUES,
                               100.0 / di.n_pairs);
                    else
                        printf("val  step %lld | loss %.4f\n", (long long)step, vloss);
                }
                if (!a.quiet) printf("progress [%s] %3.0f%% | elapsed %s | eta %s\n", bar, 100 * f, els, eta);
                if (log && a.val_batches)
                    fprintf(log, "{\"step\":%lld,\"val_loss\":%.6f,\"val_acc\":%.6f}\n", (long long)step, vloss, vacc);
                if (log) fflush(log);
                fflush(stdout);
            }
        }
        if (a.ckpt && (last || next.save || (a.ckpt_every && step % a.ckpt_every == 0))) {
            if (lasp_trainer_save(t, a.ckpt) != LASP_OK) BAIL("%s\n", lasp_ctx_error(ctx));
            last_save = now_s();
        }
    }
    if (next.stop_signal) {
        if (rank == 0) {
            printf("# stopped by %s after step %lld of %lld", strsignal(next.stop_signal), (long long)step,
                   (long long)o.steps);
            if (step == first) printf(": before this run's first step, nothing new to save\n");
            else if (a.ckpt) printf(": checkpoint in %s (continue with the same command and --resume)\n", a.ckpt);
            else printf(" (no --ckpt: nothing was saved)\n");
            fflush(stdout);
        }
        rc = 128 + next.stop_signal;
        goto done;
    }
    if (rank == 0) {
        printf("# done: %lld of %lld steps, final loss %.4f", (long long)step, (long long)o.steps, last_loss);
        if (a.val_batches)
            printf(di.kind == LASP_DATA_RECALL ? ", validation loss %.4f, recall accuracy %.1f%%" : ", validation loss %.4f",
                   vloss, 100 * vacc);
        printf(", %.1f s%s%s\n", now_s() - t_start, a.ckpt ? ", checkpoint in " : "", a.ckpt ? a.ckpt : "");
    }
    rc = 0;
done:
#undef BAIL
    if (log) fclose(log);
    /* a failing rank ends the job before anything collective (freeing the SP group may be); a stop by a
     * signal was agreed on, and every rank goes on to free its part */
    if (rc && rc < 128 && W > 1) lasp_comm_abort(world, "lasp train failed");
    lasp_trainer_free(t);
    lasp_data_free(data);
    lasp_sp_free(sp);
    lasp_ctx_free(ctx);
    lasp_comm_free(gworld);
    lasp_comm_free(world);
    return rc;
}
