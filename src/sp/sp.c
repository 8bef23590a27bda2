/* sp.c — LASP over an SP group (MATH.md §3–5): the chain with KV_in cached, and the LASP-2 all-gather.
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

int lasp_sp_comm_ctas(void) {
    const char *e = getenv("LASP_SP_LEAVE_SMS");
    return e && atoi(e) >= 0 ? atoi(e) : LASP_SP_COMM_CTAS;
}

lasp_status lasp_sp_init(lasp_comm *world, int sp_size, lasp_sp_mode mode, lasp_sp *out, lasp_err *err) {
    if (!world || !out) return lasp_fail(err, LASP_ERR_ARG, "lasp_sp_init: world or out is NULL");
    memset(out, 0, sizeof *out);
    const int n = lasp_comm_size(world), r = lasp_comm_rank(world);
    if (mode != LASP_SP_CHAIN && mode != LASP_SP_LASP2)
        return lasp_fail(err, LASP_ERR_ARG, "unknown SP mode %d (hint: chain (lasp) or lasp2)", (int)mode);
    if (sp_size < 1 || n % sp_size)
        return lasp_fail(err, LASP_ERR_ARG,
                         "--sp %d does not divide the %d ranks of the job (world = dp × sp; hint: an sp that divides "
                         "%d)", sp_size, n, n);
    out->world = world;
    out->world_size = n, out->world_rank = r;
    out->sp_size = sp_size, out->sp_rank = r % sp_size;
    out->dp_size = n / sp_size, out->dp_rank = r / sp_size;
    out->mode = mode;
    /* SP groups contiguous (neighbours in the chain are neighbours in rank order, usually on one node),
     * DP groups strided. Both splits are collective over the world, in the same order on every rank. */
    LASP_TRY(lasp_comm_split_lean(world, out->dp_rank, out->sp_rank, lasp_sp_comm_ctas(), &out->sp, err));
    lasp_status s = lasp_comm_split(world, out->sp_rank, out->dp_rank, &out->dp, err);
    if (s != LASP_OK) {
        lasp_comm_free(out->sp);
        out->sp = NULL;
    }
    return s;
}

void lasp_sp_free(lasp_sp *sp) {
    if (!sp) return;
    lasp_comm_window_free(sp->win);
    sp->win = NULL;
    lasp_comm_free(sp->sp);
    lasp_comm_free(sp->dp);
    sp->sp = sp->dp = NULL;
}

const char *lasp_sp_transfer(const lasp_sp *sp) {
    if (sp->win) return "one-sided puts into the peers' memory";
    if (sp->win_why[0]) return sp->win_why;
    return "NCCL send/receive";
}

void lasp_sp_cache_free(lasp_sp_cache *c) {
    if (!c) return;
#ifdef LASP_HAVE_CUDA
    if (c->on_device) {
        lasp_sp_cache_free_cuda(c);
        return;
    }
#endif
    free(c->kv_in);
    free(c->work);
    memset(c, 0, sizeof *c);
}

static size_t state_count(const lasp_attn_desc *a) {
    return (size_t)(a->B * a->H * a->d * a->e);
}

/* Scratch the backward needs too (it cannot grow a const cache): chain m/g + a receive buffer;
 * LASP-2 the local state + the gathered states of the group. */
static size_t work_states(const lasp_sp *sp) {
    return sp->mode == LASP_SP_LASP2 ? (size_t)sp->sp_size + 1 : 2;
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

static lasp_status grow(float **p, size_t *have, size_t want, lasp_err *err, const char *what) {
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

lasp_status lasp_sp_attn_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                             lasp_sp_cache *cache) {
#ifdef LASP_HAVE_CUDA
    if (sp && sp->sp && lasp_comm_backend_of(sp->sp) == LASP_COMM_NCCL)
        return lasp_sp_attn_fwd_cuda(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, cache);
#endif
    LASP_TRY(check_args(ctx, sp, a, slopes, "lasp_sp_attn_fwd"));
    lasp_err *err = &ctx->err;
    if (!cache) return lasp_fail(err, LASP_ERR_ARG, "lasp_sp_attn_fwd: cache is NULL (the backward needs it)");
    const size_t ns = state_count(a);
    const int W = sp->sp_size, r = sp->sp_rank;
    LASP_TRY(grow(&cache->kv_in, &cache->n, ns, err, "state cache"));
    LASP_TRY(grow(&cache->work, &cache->work_n, work_states(sp) * ns, err, "state buffers"));
    float *KV = cache->kv_in, *m = cache->work;

    if (sp->mode == LASP_SP_CHAIN) {
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

lasp_status lasp_sp_attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const lasp_sp_cache *cache, const float *do_,
                             const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in) {
#ifdef LASP_HAVE_CUDA
    if (sp && sp->sp && lasp_comm_backend_of(sp->sp) == LASP_COMM_NCCL)
        return lasp_sp_attn_bwd_cuda(ctx, sp, a, q, k, v, slopes, cache, do_, dkv_out, dq, dk, dv, dkv_in);
#endif
    LASP_TRY(check_args(ctx, sp, a, slopes, "lasp_sp_attn_bwd"));
    lasp_err *err = &ctx->err;
    const size_t ns = state_count(a);
    const int W = sp->sp_size, r = sp->sp_rank;
    if (!cache || !cache->kv_in || cache->n < ns || cache->work_n < work_states(sp) * ns)
        return lasp_fail(err, LASP_ERR_ARG,
                         "lasp_sp_attn_bwd: the cache does not hold a forward of this shape (hint: run "
                         "lasp_sp_attn_fwd with the same desc and mode first)");
    float *g = cache->work, *dKV = cache->work + ns;

    if (sp->mode == LASP_SP_CHAIN) {
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
