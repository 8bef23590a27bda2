/* sp.c — LASP over an SP group (docs/MATH.md §3–5): the group itself (made by splitting the world), and
 * its schedule on host communicators: the chain with KV_in cached, and the LASP-2 all-gather (the
 * baselines ulysses and allgather are sp_baselines.c's).
 *
 * Both modes share the local work: lasp_attn_fwd_cpu with no incoming state gives O_intra (with the
 * piece's own block-to-block inter terms) and the piece's state m; lasp_attn_bwd_cpu with the cached
 * KV_in and no incoming gradient gives the complete dQ, the intra parts of dK, dV and the piece's g.
 * What crosses ranks is only a [B, H, d, e] fp32 state; the mode decides how. */
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "sp/sp.h"
#include "sp/sp_cuda.h"

lasp_sp_params lasp_sp_default_params(void) {
    lasp_sp_params p = {.size = 1, .mode = LASP_SP_CHAIN, .transfer = LASP_SP_TRANSFER_AUTO, .comm_sms = 4,
                        .timeout_s = LASP_COMM_TIMEOUT_S, .trace = 0};
    return p;
}

const char *lasp_sp_mode_name(lasp_sp_mode m) {
    static const char *names[] = {"chain", "lasp2", "ulysses", "allgather"};
    return m >= LASP_SP_CHAIN && m <= LASP_SP_ALLGATHER ? names[m] : "unknown";
}

static int is_baseline(lasp_sp_mode m) { return m == LASP_SP_ULYSSES || m == LASP_SP_ALLGATHER; }

static lasp_status check_params(const lasp_sp_params *p, int n, lasp_err *err) {
    if (p->mode < LASP_SP_CHAIN || p->mode > LASP_SP_ALLGATHER)
        return lasp_fail(err, LASP_ERR_ARG, "unknown SP mode %d (hint: chain, lasp2, ulysses or allgather)",
                         (int)p->mode);
    if (p->size < 1 || n % p->size)
        return lasp_fail(err, LASP_ERR_ARG,
                         "--sp %d does not divide the %d ranks of the job (world = dp × sp; hint: an sp that divides "
                         "%d)", p->size, n, n);
    if (p->transfer != LASP_SP_TRANSFER_AUTO && p->transfer != LASP_SP_TRANSFER_SEND)
        return lasp_fail(err, LASP_ERR_ARG, "unknown SP transfer %d (hint: auto or send)", (int)p->transfer);
    if (p->comm_sms < 0 || p->comm_sms > 32)
        return lasp_fail(err, LASP_ERR_ARG, "%d SMs left to the SP transfers (hint: 0 .. 32; the default is 4)",
                         p->comm_sms);
    if (!(p->timeout_s > 0) || p->timeout_s > 1e7)
        return lasp_fail(err, LASP_ERR_ARG, "an SP timeout of %g s (hint: seconds > 0)", p->timeout_s);
    if (p->trace != 0 && p->trace != 1) return lasp_fail(err, LASP_ERR_ARG, "trace %d (hint: 0 or 1)", p->trace);
    return LASP_OK;
}

lasp_status lasp_sp_create(lasp_comm *world, const lasp_sp_params *p, lasp_sp **out, lasp_err *err) {
    if (!world || !out) return lasp_fail(err, LASP_ERR_ARG, "lasp_sp_create: world or out is NULL");
    *out = NULL;
    const lasp_sp_params prm = p ? *p : lasp_sp_default_params();
    const int n = lasp_comm_size(world), r = lasp_comm_rank(world);
    LASP_TRY(check_params(&prm, n, err));
    lasp_sp *sp = calloc(1, sizeof *sp);
    if (!sp) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for an SP group");
    sp->world = world, sp->p = prm;
    sp->world_size = n, sp->world_rank = r;
    sp->sp_size = prm.size, sp->sp_rank = r % prm.size;
    sp->dp_size = n / prm.size, sp->dp_rank = r / prm.size;
    /* SP groups contiguous (neighbours in the chain are neighbours in rank order, usually on one node),
     * DP groups strided. Both splits are collective over the world, in the same order on every rank. The SP
     * group's device transfers run on the SMs the attention leaves them (comm_sms thread blocks at most). */
    lasp_status s = lasp_comm_split_lean(world, sp->dp_rank, sp->sp_rank, prm.comm_sms, &sp->sp, err);
    if (s == LASP_OK) s = lasp_comm_set_timeout(sp->sp, prm.timeout_s, err);
    if (s == LASP_OK) s = lasp_comm_split(world, sp->sp_rank, sp->dp_rank, &sp->dp, err);
    if (s != LASP_OK) {
        lasp_comm_free(sp->sp);
        free(sp);
        return s;
    }
    *out = sp;
    return LASP_OK;
}

void lasp_sp_free(lasp_sp *sp) {
    if (!sp) return;
#ifdef LASP_HAVE_CUDA
    lasp_sp_gpu_free(sp);
#endif
    lasp_comm_free(sp->sp);
    lasp_comm_free(sp->dp);
    free(sp);
}

lasp_sp_layout lasp_sp_get_layout(const lasp_sp *sp) {
    lasp_sp_layout l = {1, 0, 1, 0, 1, 0};
    if (sp)
        l = (lasp_sp_layout){sp->world_size, sp->world_rank, sp->sp_size, sp->sp_rank, sp->dp_size, sp->dp_rank};
    return l;
}

lasp_comm *lasp_sp_group(const lasp_sp *sp) { return sp ? sp->sp : NULL; }
lasp_comm *lasp_sp_dp_group(const lasp_sp *sp) { return sp ? sp->dp : NULL; }
lasp_sp_trace lasp_sp_get_trace(const lasp_sp *sp) { return sp ? sp->trace : (lasp_sp_trace){0}; }

const char *lasp_sp_transfer_name(const lasp_sp *sp) {
#ifdef LASP_HAVE_CUDA
    if (sp && lasp_comm_backend_of(sp->sp) == LASP_COMM_NCCL) return lasp_sp_gpu_transfer(sp);
#endif
    return sp && lasp_comm_backend_of(sp->sp) == LASP_COMM_MPI ? "MPI send/receive" : "none (one process)";
}

lasp_status lasp_sp_halo(lasp_sp *sp, int backward, const void *send, void *recv, size_t count, lasp_dtype dtype,
                         lasp_err *err) {
    if (!sp) return lasp_fail(err, LASP_ERR_ARG, "lasp_sp_halo: sp is NULL");
    const int r = sp->sp_rank, last = sp->sp_size - 1;
    const int next = r < last ? r + 1 : -1, prev = r > 0 ? r - 1 : -1;
    if (sp->sp_size == 1) return LASP_OK;
    return lasp_comm_sendrecv(sp->sp, send, count, backward ? prev : next, recv, count, backward ? next : prev, dtype,
                              err);
}

void lasp_sp_cache_free(lasp_sp_cache *c) {
    if (!c) return;
#ifdef LASP_HAVE_CUDA
    if (c->on_device) {
        lasp_sp_cache_free_cuda(c);
        free(c);
        return;
    }
#endif
    free(c->kv_in);
    free(c->work);
    free(c->base);
    free(c);
}

size_t lasp_sp_cache_bytes(const lasp_sp_cache *c) {
    return c ? (c->n + c->work_n + c->seg_n + c->base_n) * sizeof(float) : 0;
}

/* The cache of a forward: made on first use. */
static lasp_status cache_of(lasp_sp_cache **cache, lasp_err *err) {
    if (!cache) return lasp_fail(err, LASP_ERR_ARG, "lasp_sp_attn_fwd: cache is NULL (the backward needs it)");
    if (!*cache && !(*cache = calloc(1, sizeof **cache)))
        return lasp_fail(err, LASP_ERR_NOMEM, "no memory for an SP cache");
    return LASP_OK;
}

static size_t state_count(const lasp_attn_desc *a) {
    return (size_t)(a->B * a->H * a->d * a->e);
}

/* Scratch the backward needs too (it cannot grow a const cache): chain m/g + a receive buffer;
 * LASP-2 the local state + the gathered states of the group. */
static size_t work_states(const lasp_sp *sp) {
    return sp->p.mode == LASP_SP_LASP2 ? (size_t)sp->sp_size + 1 : 2;
}

/* Whether a backward's shape is that of the forward the cache holds (the block size aside). */
int lasp_sp_cache_matches(const lasp_sp_cache *c, const lasp_attn_desc *a) {
    const lasp_attn_desc *f = &c->fwd;
    return f->B == a->B && f->T == a->T && f->H == a->H && f->d == a->d && f->e == a->e && f->dtype == a->dtype;
}

static lasp_status check_args(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *slopes,
                              const char *fn) {
    if (!ctx) return LASP_ERR_ARG;
    lasp_err *err = &ctx->err;
    if (!sp || !sp->sp || !a || !slopes) return lasp_fail(err, LASP_ERR_ARG, "%s: sp, desc or slopes is NULL", fn);
    if (a->dtype != LASP_F32)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "%s: dtype %s; the CPU SP path is f32 (hint: --dtype f32)", fn,
                         lasp_dtype_name(a->dtype));
    LASP_TRY(lasp_attn_check_desc(a, err));
    return lasp_attn_check_slopes(slopes, a->H, err);
}

lasp_status lasp_sp_grow(float **p, size_t *have, size_t want, lasp_err *err, const char *what) {
    if (*have >= want) return LASP_OK;
    float *n = realloc(*p, want * sizeof *n);
    if (!n) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the SP %s (%zu floats)", what, want);
    *p = n, *have = want;
    return LASP_OK;
}

/* LASP-2: P = Σ over the pieces in [from, to) (in chain order, `step` ±1) of γ^{distance} G[s],
 * by Horner: P ← γ P + G[s]. G holds the group's gathered states, ns floats each. */
static void horner(const lasp_attn_desc *a, const float *slopes, const float *G, size_t ns, int from, int to,
                   int step, float *P) {
    memset(P, 0, ns * sizeof *P);
    for (int s = from; s != to; s += step) lasp_state_combine_cpu(a->B, a->H, a->d, a->e, slopes, a->T, P, G + s * ns, P);
}

lasp_status lasp_sp_attn_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q_, const void *k_,
                             const void *v_, const float *slopes, const float *kv_in, void *o_, float *kv_out,
                             lasp_sp_cache **cachep) {
    if (!ctx) return LASP_ERR_ARG;
    LASP_TRY(cache_of(cachep, &ctx->err));
    lasp_sp_cache *cache = *cachep;
#ifdef LASP_HAVE_CUDA
    if (sp && sp->sp && lasp_comm_backend_of(sp->sp) == LASP_COMM_NCCL)
        return lasp_sp_attn_fwd_cuda(ctx, sp, a, q_, k_, v_, slopes, kv_in, o_, kv_out, cache);
#endif
    LASP_TRY(check_args(ctx, sp, a, slopes, "lasp_sp_attn_fwd"));
    lasp_err *err = &ctx->err;
    if (cache->on_device)
        return lasp_fail(err, LASP_ERR_ARG, "lasp_sp_attn_fwd: the cache holds GPU buffers of a run on NCCL");
    const float *q = q_, *k = k_, *v = v_;
    float *o = o_;
    if (is_baseline(sp->p.mode)) return lasp_sp_base_fwd(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, cache);
    const size_t ns = state_count(a);
    const int W = sp->sp_size, r = sp->sp_rank;
    LASP_TRY(lasp_sp_grow(&cache->kv_in, &cache->n, ns, err, "state cache"));
    LASP_TRY(lasp_sp_grow(&cache->work, &cache->work_n, work_states(sp) * ns, err, "state buffers"));
    cache->fwd = *a;
    float *KV = cache->kv_in, *m = cache->work;

    if (sp->p.mode == LASP_SP_CHAIN) {
        /* post the receive before the local work, so the state can land while we compute */
        lasp_comm_req *rx = NULL, *tx = NULL;
        if (r > 0) LASP_TRY(lasp_comm_irecv(sp->sp, KV, ns, r - 1, LASP_F32, &rx, err));
        lasp_status s = lasp_attn_fwd_cpu(ctx, a, q, k, v, slopes, NULL, o, m);
        if (s != LASP_OK) return s;  /* the caller aborts the job: the neighbours wait on us */
        if (r > 0) LASP_TRY(lasp_comm_wait(sp->sp, rx, err));
        else if (kv_in) memcpy(KV, kv_in, ns * sizeof *KV);
        else memset(KV, 0, ns * sizeof *KV);
        /* the critical path: one d×e axpy per (b, h), then the message */
        lasp_state_combine_cpu(a->B, a->H, a->d, a->e, slopes, a->T, KV, m, m);
        if (r < W - 1) LASP_TRY(lasp_comm_isend(sp->sp, m, ns, r + 1, LASP_F32, &tx, err));
        else if (kv_out) memcpy(kv_out, m, ns * sizeof *m);
        if (r > 0 || kv_in) lasp_attn_fwd_inter_cpu(ctx, a, q, slopes, KV, o);
        return lasp_comm_wait(sp->sp, tx, err);
    }

    /* LASP-2: every rank contributes its piece's state; the first folds in the sequence's kv_in, so
     * that the gathered G[s] are exactly the terms of KV_in(r) = Σ_{s<r} γ^{r−1−s} G[s] (MATH.md §4). */
    float *G = m + ns;
    LASP_TRY(lasp_attn_fwd_cpu(ctx, a, q, k, v, slopes, NULL, o, m));
    if (r == 0 && kv_in) lasp_state_combine_cpu(a->B, a->H, a->d, a->e, slopes, a->T, kv_in, m, m);
    LASP_TRY(lasp_comm_allgather(sp->sp, m, G, ns, LASP_F32, err));
    if (r == 0) {
        if (kv_in) memcpy(KV, kv_in, ns * sizeof *KV);
        else memset(KV, 0, ns * sizeof *KV);
    } else {
        horner(a, slopes, G, ns, 0, r, 1, KV);
    }
    if (r == W - 1 && kv_out) horner(a, slopes, G, ns, 0, W, 1, kv_out);
    if (r > 0 || kv_in) lasp_attn_fwd_inter_cpu(ctx, a, q, slopes, KV, o);
    return LASP_OK;
}

lasp_status lasp_sp_attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q_, const void *k_,
                             const void *v_, const float *slopes, const lasp_sp_cache *cache, const void *do__,
                             const float *dkv_out, void *dq_, void *dk_, void *dv_, float *dkv_in) {
#ifdef LASP_HAVE_CUDA
    if (sp && sp->sp && lasp_comm_backend_of(sp->sp) == LASP_COMM_NCCL)
        return lasp_sp_attn_bwd_cuda(ctx, sp, a, q_, k_, v_, slopes, cache, do__, dkv_out, dq_, dk_, dv_, dkv_in);
#endif
    const float *q = q_, *k = k_, *v = v_, *do_ = do__;
    float *dq = dq_, *dk = dk_, *dv = dv_;
    LASP_TRY(check_args(ctx, sp, a, slopes, "lasp_sp_attn_bwd"));
    lasp_err *err = &ctx->err;
    const size_t ns = state_count(a);
    const int W = sp->sp_size, r = sp->sp_rank;
    const int base = is_baseline(sp->p.mode);
    if (!cache || cache->on_device || !cache->kv_in || !lasp_sp_cache_matches(cache, a) ||
        (base ? !cache->base : cache->work_n < work_states(sp) * ns))
        return lasp_fail(err, LASP_ERR_ARG,
                         "lasp_sp_attn_bwd: the cache does not hold a forward of this shape (hint: run "
                         "lasp_sp_attn_fwd with the same desc and mode first)");
    if (base) return lasp_sp_base_bwd(ctx, sp, a, q, k, v, slopes, cache, do_, dkv_out, dq, dk, dv, dkv_in);
    float *g = cache->work, *dKV = cache->work + ns;

    if (sp->p.mode == LASP_SP_CHAIN) {
        lasp_comm_req *rx = NULL, *tx = NULL;
        if (r < W - 1) LASP_TRY(lasp_comm_irecv(sp->sp, dKV, ns, r + 1, LASP_F32, &rx, err));
        /* dQ needs only KV_in, which the forward cached: no second forward chain */
        LASP_TRY(lasp_attn_bwd_cpu(ctx, a, q, k, v, slopes, cache->kv_in, do_, NULL, dq, dk, dv, g));
        const float *in = dkv_out;
        if (r < W - 1) {
            LASP_TRY(lasp_comm_wait(sp->sp, rx, err));
            in = dKV;
        }
        lasp_state_combine_cpu(a->B, a->H, a->d, a->e, slopes, a->T, in, g, g);
        if (r > 0) LASP_TRY(lasp_comm_isend(sp->sp, g, ns, r - 1, LASP_F32, &tx, err));
        else if (dkv_in) memcpy(dkv_in, g, ns * sizeof *g);
        if (in) lasp_attn_bwd_inter_cpu(ctx, a, k, v, slopes, in, dk, dv);
        return lasp_comm_wait(sp->sp, tx, err);
    }

    /* LASP-2 mirrored: the last rank folds in the sequence's dkv_out, then
     * dKV_out(r) = Σ_{s>r} γ^{s−r−1} G[s], dkv_in = the same sum over every piece. */
    float *G = cache->work + ns;
    LASP_TRY(lasp_attn_bwd_cpu(ctx, a, q, k, v, slopes, cache->kv_in, do_, NULL, dq, dk, dv, g));
    if (r == W - 1 && dkv_out) lasp_state_combine_cpu(a->B, a->H, a->d, a->e, slopes, a->T, dkv_out, g, g);
    LASP_TRY(lasp_comm_allgather(sp->sp, g, G, ns, LASP_F32, err));
    if (r == 0 && dkv_in) horner(a, slopes, G, ns, W - 1, -1, -1, dkv_in);
    /* g is free again: it takes this rank's dKV_out */
    const float *in = dkv_out;
    if (r < W - 1) {
        horner(a, slopes, G, ns, W - 1, r, -1, g);
        in = g;
    }
    if (in) lasp_attn_bwd_inter_cpu(ctx, a, k, v, slopes, in, dk, dv);
    return LASP_OK;
}
