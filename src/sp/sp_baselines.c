/* sp_baselines.c — the two generic ways to split a sequence that the LASP paper compares against, behind
 * the same interface as the chain and LASP-2 (docs/SP.md "The baselines"), on host communicators:
 *
 *   ulysses    (DeepSpeed-Ulysses) an all-to-all turns the sequence split of q, k, v into a head split:
 *              every rank then runs the whole sequence for H/W of the heads, and a second all-to-all
 *              turns the output back. The backward mirrors it. Needs H divisible by W.
 *   allgather  (Megatron-style context parallelism) every rank gathers the keys and values of the whole
 *              sequence, builds the state of the pieces before its own from them, and runs its piece from
 *              that state; the backward reduce-scatters the keys' and values' gradients.
 *
 * Both move tensors that grow with T (the point of the comparison), where LASP moves one d × e state.
 * The sequence's boundary states travel by one small collective each way (kv_in broadcast from the first
 * rank, kv_out gathered to the last; in the backward the same reversed), always, so that every rank takes
 * part whether or not the first and last pass them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "sp/sp.h"

static lasp_status nomem(lasp_err *err, const char *what, size_t n) {
    return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the SP %s (%zu floats)", what, n);
}

lasp_status lasp_sp_base_check(const lasp_sp *sp, const lasp_attn_desc *a, lasp_err *err) {
    if (sp->p.mode == LASP_SP_ULYSSES && a->H % sp->sp_size)
        return lasp_fail(err, LASP_ERR_ARG, "--sp-mode ulysses splits the %lld heads over the %d ranks of a sequence, "
                         "and %d does not divide %lld (hint: an sp that divides the heads, or --sp-mode chain)",
                         (long long)a->H, sp->sp_size, sp->sp_size, (long long)a->H);
    return LASP_OK;
}

/* ---- Ulysses: the layouts ------------------------------------------------------------------------- */

/* piece [B, T, H, x] → W blocks [B, T, H/W, x], block j holding heads [j·H/W, (j+1)·H/W) */
static void heads_out(float *blk, const float *t, int64_t B, int64_t T, int64_t H, int64_t x, int W) {
    const int64_t Hl = H / W, row = Hl * x;
    for (int j = 0; j < W; j++)
        for (int64_t bt = 0; bt < B * T; bt++)
            memcpy(blk + ((int64_t)j * B * T + bt) * row, t + bt * H * x + j * row, (size_t)row * sizeof *t);
}

/* the inverse: W blocks [B, T, H/W, x] (block j: heads j) → piece [B, T, H, x] */
static void heads_in(float *t, const float *blk, int64_t B, int64_t T, int64_t H, int64_t x, int W) {
    const int64_t Hl = H / W, row = Hl * x;
    for (int j = 0; j < W; j++)
        for (int64_t bt = 0; bt < B * T; bt++)
            memcpy(t + bt * H * x + j * row, blk + ((int64_t)j * B * T + bt) * row, (size_t)row * sizeof *t);
}

/* W blocks [B, T, Hl, x] from the W pieces (block i: piece i's tokens) → the whole sequence [B, W·T, Hl, x] */
static void seq_in(float *s, const float *blk, int64_t B, int64_t T, int64_t Hl, int64_t x, int W) {
    const size_t piece = (size_t)(T * Hl * x);
    for (int i = 0; i < W; i++)
        for (int64_t b = 0; b < B; b++)
            memcpy(s + (b * W + i) * (int64_t)piece, blk + ((int64_t)i * B + b) * (int64_t)piece, piece * sizeof *s);
}

/* the inverse: [B, W·T, Hl, x] → W blocks, block i the tokens of piece i */
static void seq_out(float *blk, const float *s, int64_t B, int64_t T, int64_t Hl, int64_t x, int W) {
    const size_t piece = (size_t)(T * Hl * x);
    for (int i = 0; i < W; i++)
        for (int64_t b = 0; b < B; b++)
            memcpy(blk + ((int64_t)i * B + b) * (int64_t)piece, s + (b * W + i) * (int64_t)piece, piece * sizeof *s);
}

/* heads [h0, h0 + Hl) of a state [B, H, d, e] into / out of [B, Hl, d, e] */
static void state_slice(float *dst, const float *src, int64_t B, int64_t H, int64_t Hl, int64_t h0, int64_t de,
                        int out) {
    for (int64_t b = 0; b < B; b++) {
        float *x = out ? dst + b * Hl * de : dst + (b * H + h0) * de;
        const float *y = out ? src + (b * H + h0) * de : src + b * Hl * de;
        memcpy(x, y, (size_t)(Hl * de) * sizeof *x);
    }
}

/* One all-to-all of up to three tensors packed per destination ([x0 | x1 | x2] columns a block): with to_heads
 * the sequence split becomes the head split (each tensor's whole sequence for the local heads), else the
 * head split becomes the sequence split (each tensor's piece for every head). */
static lasp_status exchange(lasp_sp *sp, const lasp_attn_desc *a, const float *const *in, const int64_t *x, int n,
                            float *const *out, int to_heads, lasp_err *err) {
    const int W = sp->sp_size;
    const int64_t B = a->B, T = a->T, H = a->H, Hl = H / W;
    int64_t X = 0;
    for (int i = 0; i < n; i++) X += x[i];
    const size_t blk = (size_t)(B * T * Hl * X), all = blk * (size_t)W;
    float *send = malloc(all * sizeof *send), *recv = malloc(all * sizeof *recv);
    float *tmp = malloc((size_t)(B * T * H) * (size_t)X * sizeof *tmp);
    lasp_status s = send && recv && tmp ? LASP_OK : nomem(err, "all-to-all buffers", 2 * all);
    if (s == LASP_OK) {
        /* per tensor: its W blocks (by head group, or by piece), then interleaved per destination */
        int64_t off = 0;
        for (int i = 0; i < n; i++) {
            const size_t part = (size_t)(B * T * Hl * x[i]);
            if (to_heads) heads_out(tmp, in[i], B, T, H, x[i], W);
            else seq_out(tmp, in[i], B, T, Hl, x[i], W);
            for (int j = 0; j < W; j++)
                memcpy(send + (size_t)j * blk + (size_t)(B * T * Hl * off), tmp + (size_t)j * part, part * sizeof *send);
            off += x[i];
        }
        s = lasp_comm_alltoall(sp->sp, send, recv, blk, LASP_F32, err);
    }
    if (s == LASP_OK) {
        int64_t off = 0;
        for (int i = 0; i < n; i++) {
            const size_t part = (size_t)(B * T * Hl * x[i]);
            for (int j = 0; j < W; j++) /* from rank j: piece j's tokens (to_heads), or head group j */
                memcpy(tmp + (size_t)j * part, recv + (size_t)j * blk + (size_t)(B * T * Hl * off), part * sizeof *tmp);
            if (to_heads) seq_in(out[i], tmp, B, T, Hl, x[i], W);
            else heads_in(out[i], tmp, B, T, H, x[i], W);
            off += x[i];
        }
    }
    free(send), free(recv), free(tmp);
    return s;
}

/* A boundary state [B, H, d, e] held by rank `root` (NULL there: zeros), as every rank's slice of its heads. */
static lasp_status state_scatter(lasp_sp *sp, const lasp_attn_desc *a, const float *st, int root, float *mine,
                                 lasp_err *err) {
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e);
    float *all = calloc(ns, sizeof *all);
    if (!all) return nomem(err, "state", ns);
    if (sp->sp_rank == root && st) memcpy(all, st, ns * sizeof *all);
    lasp_status s = lasp_comm_bcast(sp->sp, all, ns, LASP_F32, root, err);
    const int64_t Hl = a->H / sp->sp_size;
    if (s == LASP_OK) state_slice(mine, all, a->B, a->H, Hl, sp->sp_rank * Hl, a->d * a->e, 1);
    free(all);
    return s;
}

/* Every rank's slice of a state gathered; rank `root` writes the whole state to st (if not NULL). */
static lasp_status state_gather(lasp_sp *sp, const lasp_attn_desc *a, const float *mine, int root, float *st,
                                lasp_err *err) {
    const int W = sp->sp_size;
    const int64_t Hl = a->H / W, de = a->d * a->e;
    const size_t nl = (size_t)(a->B * Hl * de);
    float *all = malloc(nl * (size_t)W * sizeof *all);
    if (!all) return nomem(err, "state", nl * (size_t)W);
    lasp_status s = lasp_comm_allgather(sp->sp, mine, all, nl, LASP_F32, err);
    if (s == LASP_OK && sp->sp_rank == root && st)
        for (int j = 0; j < W; j++) state_slice(st, all + (size_t)j * nl, a->B, a->H, Hl, j * Hl, de, 0);
    free(all);
    return s;
}

/* ---- Ulysses ------------------------------------------------------------------------------------- */

static lasp_status ulysses_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                               const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                               lasp_sp_cache *c) {
    lasp_err *err = &ctx->err;
    const int W = sp->sp_size, r = sp->sp_rank;
    const int64_t Hl = a->H / W, N = a->B * a->T * W * Hl; /* rows of the head split */
    const size_t nq = (size_t)(N * a->d), nv = (size_t)(N * a->e), nsl = (size_t)(a->B * Hl * a->d * a->e);
    /* the cache keeps the head split's q, k, v and the incoming state's slice for the backward */
    LASP_TRY(lasp_sp_grow(&c->base, &c->base_n, 2 * nq + nv, err, "head-split tensors"));
    LASP_TRY(lasp_sp_grow(&c->kv_in, &c->n, nsl, err, "state cache"));
    float *Q = c->base, *K = Q + nq, *V = K + nq;
    const float *in[3] = {q, k, v};
    float *hs[3] = {Q, K, V};
    const int64_t x[3] = {a->d, a->d, a->e};
    LASP_TRY(exchange(sp, a, in, x, 3, hs, 1, err));
    LASP_TRY(state_scatter(sp, a, kv_in, 0, c->kv_in, err));
    lasp_attn_desc hd = *a;
    hd.T = a->T * W, hd.H = Hl;
    float *O = malloc(nv * sizeof *O), *kvo = malloc(nsl * sizeof *kvo);
    lasp_status s = O && kvo ? LASP_OK : nomem(err, "head-split output", nv + nsl);
    if (s == LASP_OK) s = lasp_attn_fwd_cpu(ctx, &hd, Q, K, V, slopes + r * Hl, c->kv_in, O, kvo);
    if (s == LASP_OK) {
        const float *oin[1] = {O};
        float *oout[1] = {o};
        const int64_t xo[1] = {a->e};
        s = exchange(sp, a, oin, xo, 1, oout, 0, err);
    }
    if (s == LASP_OK) s = state_gather(sp, a, kvo, W - 1, kv_out, err);
    free(O), free(kvo);
    return s;
}

static lasp_status ulysses_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *slopes,
                               const lasp_sp_cache *c, const float *do_, const float *dkv_out, float *dq, float *dk,
                               float *dv, float *dkv_in) {
    lasp_err *err = &ctx->err;
    const int W = sp->sp_size, r = sp->sp_rank;
    const int64_t Hl = a->H / W, N = a->B * a->T * W * Hl;
    const size_t nq = (size_t)(N * a->d), nv = (size_t)(N * a->e), nsl = (size_t)(a->B * Hl * a->d * a->e);
    const float *Q = c->base, *K = Q + nq, *V = K + nq;
    float *buf = malloc((nv + 2 * nq + nv + 2 * nsl) * sizeof *buf);
    if (!buf) return nomem(err, "head-split gradients", nv + 2 * nq + nv + 2 * nsl);
    float *dO = buf, *dQ = dO + nv, *dK = dQ + nq, *dV = dK + nq, *dkvo = dV + nv, *dkvi = dkvo + nsl;
    const float *in[1] = {do_};
    float *hs[1] = {dO};
    const int64_t xo[1] = {a->e};
    lasp_status s = exchange(sp, a, in, xo, 1, hs, 1, err);
    if (s == LASP_OK) s = state_scatter(sp, a, dkv_out, W - 1, dkvo, err);
    lasp_attn_desc hd = *a;
    hd.T = a->T * W, hd.H = Hl;
    if (s == LASP_OK) s = lasp_attn_bwd_cpu(ctx, &hd, Q, K, V, slopes + r * Hl, c->kv_in, dO, dkvo, dQ, dK, dV, dkvi);
    if (s == LASP_OK) {
        const float *gin[3] = {dQ, dK, dV};
        float *gout[3] = {dq, dk, dv};
        const int64_t x[3] = {a->d, a->d, a->e};
        s = exchange(sp, a, gin, x, 3, gout, 0, err);
    }
    if (s == LASP_OK) s = state_gather(sp, a, dkvi, 0, dkv_in, err);
    free(buf);
    return s;
}

/* ---- all-gather of keys and values --------------------------------------------------------------- */

/* m [B, H, d, e] = the state a piece of T tokens leaves from a zero state, decayed to the next position:
 * Σ_t λ^{T−t} k_tᵀ v_t (the op's kv_out convention) */
static void piece_state(const lasp_attn_desc *a, const float *k, const float *v, const float *slopes, float *m) {
    const int64_t B = a->B, T = a->T, H = a->H, d = a->d, e = a->e;
    memset(m, 0, (size_t)(B * H * d * e) * sizeof *m);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *S = m + (b * H + h) * d * e;
            for (int64_t t = T - 1; t >= 0; t--) {
                const float w = (float)exp(-(double)slopes[h] * (double)(T - t));
                if (w == 0) break;
                const float *kt = k + ((b * T + t) * H + h) * d, *vt = v + ((b * T + t) * H + h) * e;
                for (int64_t i = 0; i < d; i++) {
                    const float ki = w * kt[i];
                    for (int64_t j = 0; j < e; j++) S[i * e + j] += ki * vt[j];
                }
            }
        }
}

/* x ← λ^n x per (b, h) */
static void decay(const lasp_attn_desc *a, const float *slopes, int64_t n, float *x) {
    const int64_t de = a->d * a->e;
    for (int64_t bh = 0; bh < a->B * a->H; bh++) {
        const float g = (float)exp(-(double)slopes[bh % a->H] * (double)n);
        for (int64_t i = 0; i < de; i++) x[bh * de + i] *= g;
    }
}

static lasp_status allgather_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q,
                                 const float *k, const float *v, const float *slopes, const float *kv_in, float *o,
                                 float *kv_out, lasp_sp_cache *c) {
    lasp_err *err = &ctx->err;
    const int W = sp->sp_size, r = sp->sp_rank;
    const size_t nk = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e);
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e), kv = nk + nv;
    /* the cache keeps what the backward needs: every piece's k | v (the method's memory), the states of the
     * pieces before this one, the incoming state */
    LASP_TRY(lasp_sp_grow(&c->base, &c->base_n, kv * (size_t)W + ns * (size_t)W, err, "gathered keys and values"));
    LASP_TRY(lasp_sp_grow(&c->kv_in, &c->n, ns, err, "state cache"));
    float *KV = c->base, *M = KV + kv * (size_t)W, *S = c->kv_in;
    float *mine = malloc(kv * sizeof *mine);
    if (!mine) return nomem(err, "keys and values", kv);
    memcpy(mine, k, nk * sizeof *mine), memcpy(mine + nk, v, nv * sizeof *mine);
    lasp_status s = lasp_comm_allgather(sp->sp, mine, KV, kv, LASP_F32, err);
    free(mine);
    LASP_TRY(s);
    /* the sequence's kv_in (first rank) everywhere: S starts from it */
    if (r == 0 && kv_in) memcpy(S, kv_in, ns * sizeof *S);
    else memset(S, 0, ns * sizeof *S);
    LASP_TRY(lasp_comm_bcast(sp->sp, S, ns, LASP_F32, 0, err));
    /* S ← λ^T S + m_s over the pieces before this one */
    for (int p = 0; p < r; p++) {
        float *m = M + (size_t)p * ns;
        piece_state(a, KV + (size_t)p * kv, KV + (size_t)p * kv + nk, slopes, m);
        lasp_state_combine_cpu(a->B, a->H, a->d, a->e, slopes, a->T, S, m, S);
    }
    return lasp_attn_fwd_cpu(ctx, a, q, k, v, slopes, S, o, r == W - 1 ? kv_out : NULL);
}

static lasp_status allgather_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q,
                                 const float *k, const float *v, const float *slopes, const lasp_sp_cache *c,
                                 const float *do_, const float *dkv_out, float *dq, float *dk, float *dv,
                                 float *dkv_in) {
    lasp_err *err = &ctx->err;
    const int W = sp->sp_size, r = sp->sp_rank;
    const size_t nk = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e);
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e), kv = nk + nv;
    const float *KV = c->base;
    float *G = calloc(kv * (size_t)W + kv + 2 * ns, sizeof *G);
    if (!G) return nomem(err, "key and value gradients", kv * (size_t)(W + 1) + 2 * ns);
    float *mine = G + kv * (size_t)W, *dS = mine + kv, *din = dS + ns;
    /* this piece from its incoming state: dq whole, dk dv of its own tokens, and ∂/∂S */
    lasp_status s = lasp_attn_bwd_cpu(ctx, a, q, k, v, slopes, c->kv_in, do_, r == W - 1 ? dkv_out : NULL, dq, dk, dv,
                                      dS);
    /* S = Σ_{p<r} λ^{(r−1−p)T} m_p + λ^{rT} kv_in: each earlier piece's keys and values get ∂/∂m_p, and
     * kv_in gets λ^{rT} ∂/∂S, summed over the ranks below */
    for (int p = r - 1; s == LASP_OK && p >= 0; p--) {
        float *g = G + (size_t)p * kv;
        lasp_attn_bwd_inter_cpu(ctx, a, KV + (size_t)p * kv, KV + (size_t)p * kv + nk, slopes, dS, g, g + nk);
        decay(a, slopes, a->T, dS);
    }
    if (s == LASP_OK) s = lasp_comm_reduce_scatter(sp->sp, G, mine, kv, LASP_F32, LASP_REDUCE_SUM, err);
    if (s == LASP_OK) {
        for (size_t i = 0; i < nk; i++) dk[i] += mine[i];
        for (size_t i = 0; i < nv; i++) dv[i] += mine[nk + i];
        s = lasp_comm_allreduce(sp->sp, dS, din, ns, LASP_F32, LASP_REDUCE_SUM, err);
    }
    if (s == LASP_OK && r == 0 && dkv_in) memcpy(dkv_in, din, ns * sizeof *din);
    free(G);
    return s;
}

/* ---- the interface sp.c hands these modes to ------------------------------------------------------ */

lasp_status lasp_sp_base_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                             lasp_sp_cache *c) {
    LASP_TRY(lasp_sp_base_check(sp, a, &ctx->err));
    c->fwd = *a;
    if (sp->p.mode == LASP_SP_ULYSSES) return ulysses_fwd(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, c);
    return allgather_fwd(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, c);
}

lasp_status lasp_sp_base_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const lasp_sp_cache *c, const float *do_,
                             const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in) {
    LASP_TRY(lasp_sp_base_check(sp, a, &ctx->err));
    if (sp->p.mode == LASP_SP_ULYSSES) return ulysses_bwd(ctx, sp, a, slopes, c, do_, dkv_out, dq, dk, dv, dkv_in);
    return allgather_bwd(ctx, sp, a, q, k, v, slopes, c, do_, dkv_out, dq, dk, dv, dkv_in);
}
