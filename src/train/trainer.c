/* trainer.c — see trainer.h. */
#include "train/trainer.h"

#include "train/adamw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* A value in [lo, hi], finite (NaN fails every comparison). */
static int in_range(double x, double lo, double hi) { return x >= lo && x <= hi; }

lasp_status lasp_train_params_check(const lasp_train_params *o, lasp_err *err) {
    LASP_TRY(lasp_model_config_check(&o->model, err));
    if (o->zero < 0 || o->zero > 3)
        return lasp_fail(err, LASP_ERR_ARG, "--zero %d: the stages are 0 (DDP), 1, 2 and 3", o->zero);
    if (o->batch < 1 || o->batch > (1LL << 30))
        return lasp_fail(err, LASP_ERR_ARG, "--batch %lld is outside 1 .. 2^30 (sequences per step)", (long long)o->batch);
    if (o->seq_len < 1 || o->seq_len > (1LL << 40))
        return lasp_fail(err, LASP_ERR_ARG, "--seq-len %lld is outside 1 .. 2^40 (tokens per sequence)",
                         (long long)o->seq_len);
    if (o->steps < 1 || o->steps > (1LL << 40))
        return lasp_fail(err, LASP_ERR_ARG, "--steps %lld is outside 1 .. 2^40", (long long)o->steps);
    if (o->warmup < 0 || o->warmup > (1LL << 40))
        return lasp_fail(err, LASP_ERR_ARG, "--warmup %lld is outside 0 .. 2^40", (long long)o->warmup);
    if (!in_range(o->lr, 1e-12, 1e3))
        return lasp_fail(err, LASP_ERR_ARG, "--lr %g is not a learning rate (hint: a finite value > 0, e.g. 3e-3)", o->lr);
    if (!in_range(o->min_lr, 0, o->lr))
        return lasp_fail(err, LASP_ERR_ARG, "--min-lr %g is outside 0 .. --lr %g (the cosine decays from --lr down to "
                         "it)", o->min_lr, o->lr);
    if (!in_range(o->weight_decay, 0, 1e3))
        return lasp_fail(err, LASP_ERR_ARG, "--wd %g must be a finite value ≥ 0", o->weight_decay);
    if (!in_range(o->clip, 0, 1e30))
        return lasp_fail(err, LASP_ERR_ARG, "--clip %g must be a finite value ≥ 0 (0 = off)", o->clip);
    if (!in_range(o->beta1, 0, 0.999999) || !in_range(o->beta2, 0, 0.999999999) || !in_range(o->eps, 1e-30, 1))
        return lasp_fail(err, LASP_ERR_ARG, "AdamW betas %g, %g must be in [0, 1) and eps %g in (0, 1]", o->beta1,
                         o->beta2, o->eps);
    if (o->device != LASP_DEVICE_CPU && o->device != LASP_DEVICE_CUDA)
        return lasp_fail(err, LASP_ERR_ARG, "device %d: LASP_DEVICE_CPU or LASP_DEVICE_CUDA", (int)o->device);
    if (o->dtype != LASP_F32 && (o->device == LASP_DEVICE_CPU || o->dtype != LASP_BF16))
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "--dtype %s: %s", lasp_dtype_name(o->dtype),
                         o->device == LASP_DEVICE_CPU ? "the CPU trains in f32 (hint: --dtype f32, or --device cuda)"
                                                      : "a GPU trains in bf16 or f32");
    if (o->recompute != LASP_RECOMPUTE_NONE && o->recompute != LASP_RECOMPUTE_ATTN &&
        o->recompute != LASP_RECOMPUTE_BLOCK)
        return lasp_fail(err, LASP_ERR_ARG, "recompute %d: none (0), attn (1) or block (2)", (int)o->recompute);
    if (o->recompute != LASP_RECOMPUTE_NONE && o->device == LASP_DEVICE_CPU)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "--recompute %s: the CPU model keeps every activation (hint: "
                         "--chunk N bounds them on the CPU, or --device cuda)", lasp_recompute_name(o->recompute));
    if (o->chunk < 0 || o->chunk > o->seq_len)
        return lasp_fail(err, LASP_ERR_ARG, "--chunk %lld is outside 0 (off) .. --seq-len %lld", (long long)o->chunk,
                         (long long)o->seq_len);
    if (o->val_batches < 0 || o->val_batches > (1LL << 30))
        return lasp_fail(err, LASP_ERR_ARG, "--val-batches %lld is outside 0 .. 2^30", (long long)o->val_batches);
    return LASP_OK;
}

lasp_train_params lasp_train_default_params(void) {
    lasp_train_params o = {0};
    o.batch = 8, o.seq_len = 256, o.steps = 100, o.warmup = 10;
    o.lr = 3e-3, o.min_lr = 3e-4, o.weight_decay = 0.1, o.beta1 = 0.9, o.beta2 = 0.95, o.eps = 1e-8, o.clip = 1.0;
    o.zero = 0, o.seed = 1337, o.val_batches = 4, o.device = LASP_DEVICE_CPU, o.dtype = LASP_F32;
    return o;
}

/* ---- collectives, timed ------------------------------------------------------------------------ */

static lasp_status allreduce(lasp_trainer *t, void *buf, size_t n, lasp_dtype dt) {
    if (t->W == 1) return LASP_OK;
    const double t0 = now_ms();
    lasp_status s = lasp_comm_allreduce(t->world, buf, buf, n, dt, LASP_REDUCE_SUM, &t->ctx->err);
    t->comm_ms += now_ms() - t0;
    return s;
}

/* Unit u of the full layout from every rank's chunk, into dst[unit size]. */
static lasp_status gather_unit(lasp_trainer *t, int u, const float *shard, float *dst) {
    const size_t n = t->m.lay.unit_off[u + 1] - t->m.lay.unit_off[u], c = t->chunk[u];
    if (t->W == 1) {
        memcpy(dst, shard + t->soff[u], n * sizeof(float));
        return LASP_OK;
    }
    const double t0 = now_ms();
    lasp_status s = lasp_comm_allgather(t->world, shard + t->soff[u], t->wscratch, c, LASP_F32, &t->ctx->err);
    t->comm_ms += now_ms() - t0;
    if (s == LASP_OK && dst != t->wscratch) memcpy(dst, t->wscratch, n * sizeof(float));
    return s;
}

lasp_status lasp_trainer_shard_layout(lasp_trainer *t, lasp_err *err) {
    const lasp_layout *lay = &t->m.lay;
    const int U = lay->n_units;
    t->chunk = malloc((size_t)U * sizeof(size_t)), t->soff = malloc((size_t)U * sizeof(size_t));
    if (!t->chunk || !t->soff) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the shards' layout");
    t->S = 0, t->max_chunk = 0;
    for (int u = 0; u < U; u++) {
        const size_t n = lay->unit_off[u + 1] - lay->unit_off[u];
        t->chunk[u] = (n + (size_t)t->W - 1) / (size_t)t->W;
        t->soff[u] = t->S;
        t->S += t->chunk[u];
        if (t->chunk[u] > t->max_chunk) t->max_chunk = t->chunk[u];
    }
    return LASP_OK;
}

void lasp_trainer_chunk_range(const lasp_trainer *t, int u, size_t *a, size_t *b) {
    const size_t c = t->chunk[u], hi = t->m.lay.unit_off[u + 1];
    *a = t->m.lay.unit_off[u] + (size_t)t->rank * c;
    *b = *a + c < hi ? *a + c : hi;
}

void lasp_trainer_shard_decay(const lasp_trainer *t, uint8_t *mask) {
    for (int u = 0; u < t->m.lay.n_units; u++) {
        size_t a, b;
        lasp_trainer_chunk_range(t, u, &a, &b);
        for (size_t j = 0; j < t->chunk[u]; j++)
            mask[t->soff[u] + j] = a + j < b && lasp_layout_decays(&t->m.lay, a + j);
    }
}

/* This rank's chunk of unit u, copied out of a full array (zero padding past the unit's end). */
static void slice_unit(const lasp_trainer *t, int u, const float *full, float *shard) {
    size_t a, b;
    lasp_trainer_chunk_range(t, u, &a, &b);
    float *dst = shard + t->soff[u];
    memset(dst, 0, t->chunk[u] * sizeof(float));
    if (a < b) memcpy(dst, full + a, (b - a) * sizeof(float));
}

/* ---- the model's access to sharded parameters and gradients ----------------------------------- */

static lasp_status zero_get(void *user, int u, const float **w, lasp_err *err) {
    (void)err;
    lasp_trainer *t = user;
    LASP_TRY(gather_unit(t, u, t->pshard, t->wscratch));
    *w = t->wscratch;
    return LASP_OK;
}

static lasp_status zero_grad(void *user, int u, float **g, lasp_err *err) {
    (void)err;
    lasp_trainer *t = user;
    memset(t->gscratch, 0, (size_t)t->W * t->chunk[u] * sizeof(float));
    *g = t->gscratch;
    return LASP_OK;
}

static lasp_status zero_grad_done(void *user, int u, lasp_err *err) {
    (void)err;
    lasp_trainer *t = user;
    const size_t c = t->chunk[u];
    if (t->W == 1) {
        memcpy(t->gshard + t->soff[u], t->gscratch, c * sizeof(float));
        return LASP_OK;
    }
    const double t0 = now_ms();
    lasp_status s = lasp_comm_reduce_scatter(t->world, t->gscratch, t->gshard + t->soff[u], c, LASP_F32,
                                             LASP_REDUCE_SUM, &t->ctx->err);
    t->comm_ms += now_ms() - t0;
    return s;
}

/* ---- init / free ------------------------------------------------------------------------------- */

void lasp_trainer_release(lasp_trainer *t) {
    lasp_trainer_gpu_release(t);
    lasp_model_free(&t->m);
    free(t->chunk), free(t->soff), free(t->params), free(t->grads), free(t->pshard), free(t->gshard);
    free(t->mom), free(t->vel), free(t->decay), free(t->wscratch), free(t->gscratch);
    free(t->tok), free(t->tgt), free(t->mask);
    free(t->carry), free(t->ctok), free(t->ctgt), free(t->cmask);
    memset(t, 0, sizeof *t);
}

/* What --chunk asks of a run, named in the error (checked before either device's set-up). */
static lasp_status chunk_check(const lasp_trainer *t, const lasp_sp *sp, lasp_err *err) {
    const lasp_train_params *o = &t->o;
    if (!o->chunk) return LASP_OK;
    const int64_t K1 = o->model.conv ? o->model.conv - 1 : 0;
    const char *why = o->zero > 1 ? "needs ZeRO 0 or 1 for now (2 and 3 reduce each unit's gradients as its "
                                    "backward ends, once a chunk)"
                      : t->Tl % o->chunk ? "must divide the tokens a rank holds"
                      : o->chunk < K1    ? "is shorter than the short convolution reaches back"
                                         : NULL;
    if (!why) return LASP_OK;
    return lasp_fail(err, LASP_ERR_ARG, "--chunk %lld %s (--seq-len %lld, --sp %d, --zero %d, conv %d)",
                     (long long)o->chunk, why, (long long)o->seq_len, sp->sp_size, o->zero, o->model.conv);
}

/* The CPU model's activations for a rank's piece, with the chunks' carried states when the piece runs in chunks:
 * what lasp_model_reserve and the chunk buffers allocate. */
static double cpu_activation_bytes(const lasp_trainer *t) {
    const lasp_train_params *o = &t->o;
    if (!o->chunk) return lasp_model_activation_bytes(&o->model, t->Bl, t->Tl);
    return lasp_model_activation_bytes(&o->model, t->Bl, o->chunk) +
           4.0 * (double)(t->Tl / o->chunk + LASP_CARRY_EXTRA) *
               (double)lasp_model_carry_floats(&o->model, t->Bl);
}

const char *lasp_recompute_name(lasp_recompute r) {
    return r == LASP_RECOMPUTE_NONE ? "none" : r == LASP_RECOMPUTE_ATTN ? "attn" : r == LASP_RECOMPUTE_BLOCK ? "block"
                                                                                                              : "?";
}

lasp_status lasp_trainer_init(lasp_trainer *t, lasp_ctx *ctx, lasp_sp *sp, const lasp_data *data,
                              const lasp_train_params *o) {
    memset(t, 0, sizeof *t);
    lasp_err *err = &ctx->err;
    t->o = *o, t->ctx = ctx, t->sp = sp, t->world = sp->world, t->data = data;
    t->W = sp->world_size, t->rank = sp->world_rank;
    LASP_TRY(lasp_train_params_check(o, err));
    if (o->batch % sp->dp_size)
        return lasp_fail(err, LASP_ERR_ARG,
                         "--batch %lld is not divisible by dp = %d (world %d / sp %d) (hint: a multiple of %d)",
                         (long long)o->batch, sp->dp_size, sp->world_size, sp->sp_size, sp->dp_size);
    if (o->seq_len % sp->sp_size)
        return lasp_fail(err, LASP_ERR_ARG,
                         "--seq-len %lld is not divisible by --sp %d: every rank holds an equal piece "
                         "(hint: a multiple of %d)", (long long)o->seq_len, sp->sp_size, sp->sp_size);
    LASP_TRY(lasp_data_check(data, o->seq_len, err));
    if (data->max_token >= o->model.vocab)
        return lasp_fail(err, LASP_ERR_ARG, "the data holds token %d but the model's vocab is %d (hint: --vocab %d)",
                         data->max_token, o->model.vocab, data->max_token + 1);
    LASP_TRY(lasp_model_create(&o->model, &t->m, err));
    t->Bl = o->batch / sp->dp_size, t->Tl = o->seq_len / sp->sp_size;
    if (chunk_check(t, sp, err) != LASP_OK) {
        lasp_trainer_release(t);
        return LASP_ERR_ARG;
    }
    if (o->device == LASP_DEVICE_CUDA) {
        const size_t N = (size_t)(t->Bl * t->Tl);
        lasp_status s = (t->mask = malloc(N)) ? lasp_trainer_gpu_init(t)
                                              : lasp_fail(err, LASP_ERR_NOMEM, "no memory for a batch's mask");
        if (s == LASP_OK) lasp_rng_seed(&t->rng, o->seed);
        else lasp_trainer_release(t);
        return s;
    }
    /* what a rank needs, against what the machine has: refused here rather than failing (or being killed)
     * once the allocations are touched */
    const double need = cpu_activation_bytes(t) + 16.0 * (double)t->m.lay.n_params;
    const double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
    if (have > 0 && need > have) {
        const long long Bl = (long long)t->Bl, Tl = (long long)t->Tl;
        lasp_trainer_release(t);
        return lasp_fail(err, LASP_ERR_NOMEM, "a rank needs %.1f GiB (activations of %lld × %lld tokens, parameters and "
                         "optimizer state) but this machine has %.1f GiB (hint: a smaller --batch or --seq-len, or more "
                         "ranks: --sp splits each sequence, dp the batch)", need / 1073741824.0, Bl, Tl,
                         have / 1073741824.0);
    }
    if (o->chunk) {
        const int64_t nc = t->Tl / o->chunk;
        const size_t cf = lasp_model_carry_floats(&o->model, t->Bl), N = (size_t)(t->Bl * o->chunk);
        t->carry = malloc((size_t)(nc + LASP_CARRY_EXTRA) * cf * sizeof(float));
        t->ctok = malloc(N * sizeof(int32_t)), t->ctgt = malloc(N * sizeof(int32_t)), t->cmask = malloc(N);
        if (!t->carry || !t->ctok || !t->ctgt || !t->cmask) {
            lasp_trainer_release(t);
            return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the chunks' carried states (%lld chunks)",
                             (long long)nc);
        }
    }
    lasp_status s = lasp_model_reserve(&t->m, t->Bl, o->chunk ? o->chunk : t->Tl, err);
    if (s != LASP_OK) {
        lasp_trainer_release(t);
        return s;
    }

    const lasp_layout *lay = &t->m.lay;
    const int U = lay->n_units;
    t->P = lay->n_params;
    if (lasp_trainer_shard_layout(t, err) != LASP_OK) goto nomem;
    const size_t N = (size_t)(t->Bl * t->Tl), scratch = (size_t)t->W * t->max_chunk;
    const size_t dom = o->zero == 0 ? t->P : t->S;
    t->tok = malloc(N * sizeof(int32_t)), t->tgt = malloc(N * sizeof(int32_t)), t->mask = malloc(N);
    t->mom = calloc(dom, sizeof(float)), t->vel = calloc(dom, sizeof(float)), t->decay = calloc(dom, 1);
    if (!t->tok || !t->tgt || !t->mask || !t->mom || !t->vel || !t->decay) goto nomem;
    if (o->zero <= 2 && !(t->params = malloc(t->P * sizeof(float)))) goto nomem;
    if (o->zero <= 1 && !(t->grads = malloc(t->P * sizeof(float)))) goto nomem;
    if (o->zero >= 1 && (!(t->pshard = calloc(t->S, sizeof(float))) || !(t->gshard = calloc(t->S, sizeof(float)))))
        goto nomem;
    if (!(t->wscratch = malloc(scratch * sizeof(float)))) goto nomem;
    if (o->zero >= 2 && !(t->gscratch = malloc(scratch * sizeof(float)))) goto nomem;

    /* the weight-decay mask over the optimizer's domain */
    if (o->zero == 0) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < t->P; i++) t->decay[i] = (uint8_t)lasp_layout_decays(lay, i);
    } else {
        lasp_trainer_shard_decay(t, t->decay);
    }

    t->m.params = t->params, t->m.grads = t->grads;
    if (o->zero >= 2) {
        t->m.access.user = t;
        t->m.access.grad = zero_grad, t->m.access.grad_done = zero_grad_done;
        if (o->zero == 3) t->m.access.get = zero_get;
    }
    lasp_rng_seed(&t->rng, o->seed);

    float *init = o->zero <= 2 ? t->params : malloc(t->P * sizeof(float));
    if (!init) goto nomem;
    lasp_model_init_params(&o->model, lay, o->seed, init);
    if (o->zero >= 1)
        for (int u = 0; u < U; u++) slice_unit(t, u, init, t->pshard);
    if (init != t->params) free(init);
    return LASP_OK;
nomem:
    lasp_trainer_release(t);
    return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the trainer (hint: a higher --zero stage shards it)");
}

/* ---- schedule, step ---------------------------------------------------------------------------- */

double lasp_trainer_lr(const lasp_train_params *o, int64_t step) {
    if (step < o->warmup) return o->lr * (double)(step + 1) / (double)o->warmup;
    const int64_t span = o->steps - o->warmup;
    if (span <= 1) return o->lr;
    double f = (double)(step - o->warmup) / (double)(span - 1);
    if (f > 1) f = 1;
    return o->min_lr + 0.5 * (o->lr - o->min_lr) * (1 + cos(M_PI * f));
}

/* ---- a batch chunk by chunk (o.chunk) ---------------------------------------------------------- */

/* Chunk c of every sequence of the batch in t->tok / tgt / mask into t->ctok / ctgt / cmask. */
static void take_chunk(lasp_trainer *t, int64_t c) {
    const int64_t B = t->Bl, T = t->Tl, Tc = t->o.chunk;
    for (int64_t b = 0; b < B; b++) {
        memcpy(t->ctok + b * Tc, t->tok + b * T + c * Tc, (size_t)Tc * sizeof(int32_t));
        memcpy(t->ctgt + b * Tc, t->tgt + b * T + c * Tc, (size_t)Tc * sizeof(int32_t));
        memcpy(t->cmask + b * Tc, t->mask + b * T + c * Tc, (size_t)Tc);
    }
}

/* Over an SP group (--sp > 1 with --chunk) the chunks of the whole sequence are relayed: rank r's first chunk
 * starts from the state rank r − 1's last one left, and its last chunk's gradient comes from rank r + 1's
 * first. The carried state crosses between neighbours (send to `dst`, receive from `src`, either -1: none);
 * the device's pending work is waited for before a send, and a receive is complete when this returns. */
static lasp_status relay(lasp_trainer *t, const float *send, int dst, float *recv, int src, size_t n) {
    if (dst < 0 && src < 0) return LASP_OK;
    lasp_err *err = &t->ctx->err;
    if (send && t->gpu) LASP_TRY(lasp_trainer_gpu_wait(t));
    LASP_TRY(lasp_comm_sendrecv(t->sp->sp, send, send ? n : 0, dst, recv, recv ? n : 0, src, LASP_F32, err));
    return lasp_comm_sync(t->sp->sp, err);
}

/* The batch in t->tok chunk by chunk, on either device (`run` takes one chunk through its model): a forward
 * through the chunks, each starting from the state the one before left (kept in carry for the backward); then,
 * backward from the last chunk, each chunk's forward again from its kept state and its backward, the gradient
 * of the carried state handed to the chunk before. Training, the first pass only carries the state (no loss,
 * and not the last chunk, whose state nothing reads but the next rank); without grad_scale it is the only pass
 * and sums the loss. Over an SP group the ranks relay the state (relay above): every rank holds its piece's
 * chunks, and the whole sequence goes through the ranks one after the other, which trades their parallelism
 * for length. carry: nc + LASP_CARRY_EXTRA carries (lasp_model_carry_floats each) in the device's memory. out:
 * mean loss, hits, count, as one forward's. */
lasp_status lasp_trainer_chunks(lasp_trainer *t, float *carry, lasp_chunk_fn run, float grad_scale, double out[3]) {
    const int64_t nc = t->Tl / t->o.chunk;
    const size_t cf = lasp_model_carry_floats(&t->o.model, t->Bl);
#define CARRY(i) lasp_model_carry_in(&t->o.model, t->Bl, carry + (size_t)(i) * cf)
    double loss_sum = 0, l;
    int64_t hits = 0, count = 0, h, n;
    lasp_model_carry cin[2], dc[2], out_carry = CARRY(nc + 2);
    lasp_status s = LASP_OK;
    const int train = grad_scale > 0;
    /* the group's neighbours: the state comes in from prev and goes on to next (-1: none) */
    const int r = t->sp->sp_rank, W = t->sp->sp_size, prev = r > 0 ? r - 1 : -1, next = r + 1 < W ? r + 1 : -1;
    if (prev >= 0) s = relay(t, NULL, -1, carry, prev, cf); /* chunk 0's state: CARRY(0) */
    for (int64_t c = 0; c < nc - (train && next < 0) && s == LASP_OK; c++) {
        take_chunk(t, c);
        cin[0] = CARRY(c), cin[1] = CARRY(c + 1);
        lasp_model_carry *cout = c + 1 < nc ? &cin[1] : next >= 0 ? &out_carry : NULL;
        s = run(t, c || prev >= 0 ? &cin[0] : NULL, cout, NULL, NULL, 0, train ? NULL : &l, &h, &n);
        if (s == LASP_OK && !train) loss_sum += l, hits += h, count += n;
    }
    if (s == LASP_OK && next >= 0) s = relay(t, carry + (size_t)(nc + 2) * cf, next, NULL, -1, cf);
    /* the gradient of the state leaving this piece, from the next rank's first chunk */
    const int64_t last = nc - 1;
    if (s == LASP_OK && train && next >= 0) s = relay(t, NULL, -1, carry + (size_t)(nc + (last + 1) % 2) * cf, next, cf);
    for (int64_t c = last; train && c >= 0 && s == LASP_OK; c--) {
        take_chunk(t, c);
        cin[0] = CARRY(c), dc[c % 2] = CARRY(nc + c % 2), dc[(c + 1) % 2] = CARRY(nc + (c + 1) % 2);
        /* the loss is the mean over the whole sequence: each chunk's mean weighs 1/nc */
        s = run(t, c || prev >= 0 ? &cin[0] : NULL, NULL, c + 1 < nc || next >= 0 ? &dc[(c + 1) % 2] : NULL,
                c || prev >= 0 ? &dc[c % 2] : NULL, grad_scale / (float)nc, &l, &h, &n);
        if (s == LASP_OK) loss_sum += l, hits += h, count += n;
    }
    if (s == LASP_OK && train && prev >= 0) s = relay(t, carry + (size_t)nc * cf, prev, NULL, -1, cf);
#undef CARRY
    out[0] = loss_sum / (double)nc, out[1] = (double)hits, out[2] = (double)count;
    return s;
}

/* One chunk through the CPU model (lasp_chunk_fn) */
static lasp_status cpu_chunk(lasp_trainer *t, const lasp_model_carry *cin, lasp_model_carry *cout,
                             const lasp_model_carry *dcout, lasp_model_carry *dcin, float scale, double *loss,
                             int64_t *hits, int64_t *count) {
    lasp_model *m = &t->m;
    m->cin = cin, m->cout = cout, m->dcout = dcout, m->dcin = dcin;
    double l;
    int64_t h, n;
    /* without targets the forward stops before the head: a pass that only carries the state */
    lasp_status s = lasp_model_forward(m, t->ctx, NULL, t->ctok, loss ? t->ctgt : NULL, t->cmask, scale, &l, &h, &n);
    if (s == LASP_OK && scale > 0) s = lasp_model_backward(m, t->ctx, NULL, t->ctok);
    m->cin = NULL, m->cout = NULL, m->dcout = NULL, m->dcin = NULL;
    if (s == LASP_OK && loss) *loss = l, *hits = h, *count = n;
    return s;
}

/* Forward + backward of the training batch at the cursor; gradients reduced over the world. */
static lasp_status forward_backward(lasp_trainer *t, double out[3]) {
    lasp_err *err = &t->ctx->err;
    const lasp_sp *sp = t->sp;
    LASP_TRY(lasp_data_batch(t->data, LASP_SPLIT_TRAIN, t->cursor, t->o.batch, t->o.seq_len, sp->dp_rank,
                             sp->dp_size, sp->sp_rank, sp->sp_size, t->tok, t->tgt, t->mask, err));
    if (t->grads) memset(t->grads, 0, t->P * sizeof(float));
    double loss;
    int64_t correct, count;
    if (t->o.chunk) {
        double r[3];
        LASP_TRY(lasp_trainer_chunks(t, t->carry, cpu_chunk, 1.0f / (float)t->W, r));
        loss = r[0], correct = (int64_t)r[1], count = (int64_t)r[2];
    } else {
        LASP_TRY(lasp_model_forward(&t->m, t->ctx, t->sp, t->tok, t->tgt, t->mask, 1.0f / (float)t->W, &loss,
                                    &correct, &count));
        LASP_TRY(lasp_model_backward(&t->m, t->ctx, t->sp, t->tok));
    }
    if (t->o.zero <= 1) LASP_TRY(allreduce(t, t->grads, t->P, LASP_F32));
    if (t->o.zero == 1)
        for (int u = 0; u < t->m.lay.n_units; u++) slice_unit(t, u, t->grads, t->gshard);
    out[0] = loss, out[1] = (double)correct, out[2] = (double)count;
    return allreduce(t, out, 3, LASP_F64);
}

lasp_status lasp_trainer_step(lasp_trainer *t, lasp_step_stats *st) {
    if (t->gpu) return lasp_trainer_gpu_step(t, st);
    const double t0 = now_ms();
    t->comm_ms = 0;
    /* the sequence-parallel traffic inside the model (LASP states, the convolution's halo) is timed by
     * the SP communicator itself */
    const double sp_wait0 = lasp_comm_get_stats(t->sp->sp).wait_ms;
    double red[3];
    lasp_status fs = forward_backward(t, red);
    if (fs == LASP_ERR_NONFINITE) { /* the op refuses NaN and Inf inputs: what produced them is the update */
        char why[sizeof t->ctx->err.msg];
        snprintf(why, sizeof why, "%s", t->ctx->err.msg);
        return lasp_fail(&t->ctx->err, fs, "step %lld: the activations became non-finite (%s): the parameters hold "
                         "NaN or Inf after the last update (hint: a lower --lr, --clip on)", (long long)t->step + 1,
                         why);
    }
    LASP_TRY(fs);
    if (!isfinite(red[0]))
        return lasp_fail(&t->ctx->err, LASP_ERR_NONFINITE, "step %lld: the loss is %g (hint: a lower --lr, --clip on)",
                         (long long)t->step + 1, red[0] / t->W);

    /* the optimizer's domain: everything (stage 0) or this rank's shard */
    const int z = t->o.zero;
    const size_t n = z == 0 ? t->P : t->S;
    float *p = z == 0 ? t->params : t->pshard, *g = z == 0 ? t->grads : t->gshard;
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    if (z >= 1) LASP_TRY(allreduce(t, &ss, 1, LASP_F64));
    const double norm = sqrt(ss);
    if (!isfinite(norm))
        return lasp_fail(&t->ctx->err, LASP_ERR_NONFINITE, "step %lld: the gradient norm is %g (hint: a lower --lr, "
                         "--clip on)", (long long)t->step + 1, norm);
    const double lr = lasp_trainer_lr(&t->o, t->step);
    const lasp_adamw_step h = lasp_adamw_make(&t->o, t->step, lr);
    lasp_adamw_cpu(p, g, t->mom, t->vel, t->decay, n, &h, lasp_adamw_clip_factor(t->o.clip, norm));
    if (z == 1 || z == 2)
        for (int u = 0; u < t->m.lay.n_units; u++)
            LASP_TRY(gather_unit(t, u, t->pshard, t->params + t->m.lay.unit_off[u]));

    t->step++;
    t->cursor += (uint64_t)t->o.batch;
    if (st) {
        memset(st, 0, sizeof *st);
        st->loss = red[0] / t->W;
        st->acc = red[2] > 0 ? red[1] / red[2] : 0;
        st->grad_norm = norm, st->lr = lr;
        st->ms = now_ms() - t0;
        st->comm_ms = t->comm_ms + (lasp_comm_get_stats(t->sp->sp).wait_ms - sp_wait0);
    }
    return LASP_OK;
}

lasp_status lasp_trainer_eval(lasp_trainer *t, double *loss, double *acc) {
    lasp_err *err = &t->ctx->err;
    const lasp_sp *sp = t->sp;
    const int split = t->data->kind != LASP_DATA_RECALL && t->data->n_train == t->data->n_tokens ? LASP_SPLIT_TRAIN
                                                                                                : LASP_SPLIT_VAL;
    if (t->gpu) return lasp_trainer_gpu_eval(t, split, loss, acc);
    double red[3] = {0, 0, 0};
    for (int64_t k = 0; k < t->o.val_batches; k++) {
        LASP_TRY(lasp_data_batch(t->data, split, (uint64_t)(k * t->o.batch), t->o.batch, t->o.seq_len, sp->dp_rank,
                                 sp->dp_size, sp->sp_rank, sp->sp_size, t->tok, t->tgt, t->mask, err));
        double l, r[3];
        int64_t c, n;
        if (t->o.chunk) {
            LASP_TRY(lasp_trainer_chunks(t, t->carry, cpu_chunk, 0, r));
            l = r[0], c = (int64_t)r[1], n = (int64_t)r[2];
        } else {
            LASP_TRY(lasp_model_forward(&t->m, t->ctx, t->sp, t->tok, t->tgt, t->mask, 0, &l, &c, &n));
        }
        red[0] += l, red[1] += (double)c, red[2] += (double)n;
    }
    LASP_TRY(allreduce(t, red, 3, LASP_F64));
    *loss = t->o.val_batches ? red[0] / ((double)t->W * (double)t->o.val_batches) : 0;
    *acc = red[2] > 0 ? red[1] / red[2] : 0;
    return LASP_OK;
}

lasp_status lasp_trainer_grad(lasp_trainer *t, double *loss, float *grad_out) {
    if (t->gpu) return lasp_trainer_gpu_grad(t, loss, grad_out);
    double red[3];
    LASP_TRY(forward_backward(t, red));
    *loss = red[0] / t->W;
    if (t->o.zero <= 1) {
        memcpy(grad_out, t->grads, t->P * sizeof(float));
        return LASP_OK;
    }
    for (int u = 0; u < t->m.lay.n_units; u++)
        LASP_TRY(gather_unit(t, u, t->gshard, grad_out + t->m.lay.unit_off[u]));
    return LASP_OK;
}

/* Full arrays of the optimizer's domain (params, moments) from shards, on every rank. */
static lasp_status gather_full(lasp_trainer *t, const float *dom, float *full) {
    if (t->o.zero == 0) {
        memcpy(full, dom, t->P * sizeof(float));
        return LASP_OK;
    }
    for (int u = 0; u < t->m.lay.n_units; u++)
        LASP_TRY(gather_unit(t, u, dom, full + t->m.lay.unit_off[u]));
    return LASP_OK;
}

lasp_status lasp_trainer_gather(lasp_trainer *t, float *params, float *mom, float *vel) {
    if (t->gpu) return lasp_trainer_gpu_gather(t, params, mom, vel);
    if (params) {
        if (t->params) memcpy(params, t->params, t->P * sizeof(float));
        else LASP_TRY(gather_full(t, t->pshard, params));
    }
    if (mom) LASP_TRY(gather_full(t, t->mom, mom));
    if (vel) LASP_TRY(gather_full(t, t->vel, vel));
    return LASP_OK;
}

lasp_status lasp_trainer_scatter(lasp_trainer *t, const float *params, const float *mom, const float *vel) {
    if (t->gpu) return lasp_trainer_gpu_scatter(t, params, mom, vel);
    const int z = t->o.zero, U = t->m.lay.n_units;
    if (t->params) memcpy(t->params, params, t->P * sizeof(float));
    const float *src[3] = {params, mom, vel};
    float *dst[3] = {t->pshard, t->mom, t->vel};
    for (int k = 0; k < 3; k++) {
        if (!dst[k]) continue;
        const size_t n = z == 0 ? t->P : t->S;
        if (!src[k]) memset(dst[k], 0, n * sizeof(float));
        else if (z == 0) memcpy(dst[k], src[k], n * sizeof(float));
        else
            for (int u = 0; u < U; u++) slice_unit(t, u, src[k], dst[k]);
    }
    return LASP_OK;
}

/* ---- lasp.h's trainer ------------------------------------------------------------------------- */

lasp_status lasp_trainer_create(lasp_ctx *ctx, lasp_sp *sp, const lasp_data *data, const lasp_train_params *p,
                                lasp_trainer **out) {
    if (!ctx) return LASP_ERR_ARG;
    if (!sp || !data || !p || !out)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "lasp_trainer_create: sp, data, params or out is NULL");
    *out = NULL;
    lasp_trainer *t = calloc(1, sizeof *t);
    if (!t) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for a trainer");
    lasp_status s = lasp_trainer_init(t, ctx, sp, data, p);
    if (s != LASP_OK) {
        free(t);
        return s;
    }
    *out = t;
    return LASP_OK;
}

void lasp_trainer_free(lasp_trainer *t) {
    if (!t) return;
    lasp_trainer_release(t);
    free(t);
}

int64_t lasp_trainer_steps_done(const lasp_trainer *t) { return t ? t->step : 0; }
size_t lasp_trainer_n_params(const lasp_trainer *t) { return t ? t->P : 0; }
lasp_train_memory lasp_trainer_memory(const lasp_trainer *t) {
    if (t->gpu) return lasp_trainer_gpu_memory(t);
    lasp_train_memory m;
    memset(&m, 0, sizeof m);
    const int z = t->o.zero;
    m.params = 4.0 * (double)(z <= 2 ? t->P : 0) + 4.0 * (double)(z >= 1 ? t->S : 0);
    m.grads = 4.0 * (double)(z <= 1 ? t->P : 0) + 4.0 * (double)(z >= 1 ? t->S : 0);
    m.optimizer = 9.0 * (double)(z == 0 ? t->P : t->S);
    m.activations = cpu_activation_bytes(t);
    snprintf(m.device, sizeof m.device, "CPU");
    return m;
}

lasp_status lasp_trainer_set_profile(lasp_trainer *t, int on) {
    if (!t) return LASP_ERR_ARG;
    if (t->gpu) return lasp_trainer_gpu_profile(t, on);
    return lasp_fail(&t->ctx->err, LASP_ERR_UNSUPPORTED, "the time split is measured on a GPU only");
}

int lasp_trainer_profile_sites(const lasp_trainer *t, lasp_profile_site *out, int max) {
    return t && t->gpu && out && max > 0 ? lasp_trainer_gpu_sites(t, out, max) : 0;
}

void lasp_trainer_local_shape(const lasp_trainer *t, int64_t *batch, int64_t *tokens) {
    if (batch) *batch = t ? t->Bl : 0;
    if (tokens) *tokens = t ? t->Tl : 0;
}
