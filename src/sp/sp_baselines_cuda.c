/* sp_baselines_cuda.c — the baselines on GPUs: sp_baselines.c's schedules on device memory and an NCCL group,
 * in the tensors' dtype (states fp32), with the same collectives in the same order, so that the traffic
 * counters read as on host communicators.
 *
 * Ulysses
 *   forward   q | k | v all-to-all from the sequence split to the head split (each rank: the whole sequence
 *             of H/W heads), the sequence's kv_in broadcast from the first rank and this rank's heads of it
 *             kept, the op on the whole sequence for those heads, the output all-to-all back, and the
 *             heads' final states gathered to the last rank.
 *   backward  mirrored: dO to the head split, dkv_out from the last rank, the op's backward, dq | dk | dv back,
 *             the heads' dkv_in gathered to the first rank.
 * All-gather of keys and values
 *   forward   k | v all-gathered, the sequence's kv_in broadcast from the first rank; the state entering this
 *             piece made by running the op over each earlier piece in turn from it (the op's final state is
 *             the next piece's incoming one), then the op on this piece from that state.
 *   backward  this piece's backward (its own dk | dv into its slot of a buffer of every piece's), then for
 *             each earlier piece, from the last, the op's backward with a zero output gradient and the state's
 *             gradient as dkv_out: its keys' and values' share into their slot, and the state's gradient one
 *             piece further back; the buffer reduce-scattered (each rank gets its own piece's whole gradient)
 *             and the gradients entering the sequence all-reduced for the first rank's dkv_in.
 *
 * The layouts change with strided copies (cudaMemcpy2DAsync: a row of a head group is contiguous), and
 * every copy, collective and kernel goes on the context's stream, which the group's collectives are put on
 * for the call: stream order is the only synchronisation. The forward sizes everything the backward needs
 * into the cache (the backward gets it const). */
#include <cuda_runtime.h>
#include <string.h>

#include "attn/attn.h"
#include "comm/comm.h"
#include "core/cuda_check.h"
#include "sp/sp.h"
#include "sp/sp_cuda.h"

/* Byte offsets of a call's scratch in the cache's work buffer */
typedef struct ulayout {
    size_t send, recv, grads, full, all, mine, other, slopes, total;
} ulayout;

static size_t up256(size_t b) { return (b + 255) / 256 * 256; }

static ulayout layout_of(const lasp_sp *sp, const lasp_attn_desc *a) {
    const size_t es = lasp_dtype_size(a->dtype), W = (size_t)sp->sp_size, Hl = (size_t)a->H / W;
    const size_t rows = (size_t)(a->B * a->T * a->H), X = (size_t)(2 * a->d + a->e), E = (size_t)a->e;
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e), nsl = ns / W;
    ulayout L;
    size_t off = 0;
    L.send = off, off += up256(rows * X * es);            /* a piece's q | k | v (or gradients) by destination */
    L.recv = off, off += up256(rows * X * es);
    L.grads = off, off += up256(rows * (X + E) * es);     /* the head split's O, or dO | dQ | dK | dV */
    L.full = off, off += up256(ns * 4);                   /* a whole boundary state */
    L.all = off, off += up256(W * nsl * 4);               /* every rank's heads of a state */
    L.mine = off, off += up256(nsl * 4);                  /* this rank's heads of the final state (or dkv_in) */
    L.other = off, off += up256(nsl * 4);                 /* of dkv_out */
    L.slopes = off, off += up256(Hl * 4);                 /* this rank's heads' slopes, aligned as the op reads */
    L.total = off;
    return L;
}


/* One all-to-all of n tensors of one piece (x[i] columns a head; rows of stride H·x[i]): with to_heads the
 * sequence split becomes the head split (out[i]: [B, W·T, Hl, x[i]]), else the head split in in[i] becomes the
 * sequence split in out[i] ([B, T, H, x[i]]). Blocks per destination: [x0 | x1 | …] of B·T·Hl rows, as on the
 * host. */
static lasp_status exchange(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *const *in,
                            const int64_t *x, int n, void *const *out, int to_heads, char *send, char *recv,
                            cudaStream_t st) {
    const size_t es = lasp_dtype_size(a->dtype), W = (size_t)sp->sp_size, Hl = (size_t)a->H / W;
    const size_t B = (size_t)a->B, T = (size_t)a->T, H = (size_t)a->H;
    size_t X = 0;
    for (int i = 0; i < n; i++) X += (size_t)x[i];
    const size_t blk = B * T * Hl * X; /* elements a destination gets */
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const size_t xi = (size_t)x[i], row = Hl * xi * es, piece = T * Hl * xi * es;
        for (size_t j = 0; j < W; j++) {
            char *dst = send + (j * blk + B * T * Hl * off) * es;
            if (to_heads) /* head group j of every row */
                LASP_CU(&ctx->err, cudaMemcpy2DAsync(dst, row, (const char *)in[i] + j * row, H * xi * es, row, B * T,
                                          cudaMemcpyDeviceToDevice, st), "packing for the all-to-all");
            else          /* piece j's tokens of every sequence of the head split */
                LASP_CU(&ctx->err, cudaMemcpy2DAsync(dst, piece, (const char *)in[i] + j * piece, W * piece, piece, B,
                                          cudaMemcpyDeviceToDevice, st), "packing for the all-to-all");
        }
        off += xi;
    }
    LASP_TRY(lasp_comm_alltoall(sp->sp, send, recv, blk, a->dtype, &ctx->err));
    off = 0;
    for (int i = 0; i < n; i++) {
        const size_t xi = (size_t)x[i], row = Hl * xi * es, piece = T * Hl * xi * es;
        for (size_t j = 0; j < W; j++) {
            const char *src = recv + (j * blk + B * T * Hl * off) * es;
            if (to_heads) /* piece j's tokens, for every sequence */
                LASP_CU(&ctx->err, cudaMemcpy2DAsync((char *)out[i] + j * piece, W * piece, src, piece, piece, B,
                                          cudaMemcpyDeviceToDevice, st), "unpacking the all-to-all");
            else          /* head group j, into every row */
                LASP_CU(&ctx->err, cudaMemcpy2DAsync((char *)out[i] + j * row, H * xi * es, src, row, row, B * T,
                                          cudaMemcpyDeviceToDevice, st), "unpacking the all-to-all");
        }
        off += xi;
    }
    return LASP_OK;
}

/* The op's view of this rank's head group over the whole sequence (hd), and its heads' slopes copied into sl
 * (aligned as the op reads them) */
static lasp_status head_group(lasp_ctx *ctx, const lasp_sp *sp, const lasp_attn_desc *a, const float *slopes,
                              float *sl, lasp_attn_desc *hd, cudaStream_t st) {
    const int64_t Hl = a->H / sp->sp_size;
    *hd = *a;
    hd->T = a->T * sp->sp_size, hd->H = Hl;
    LASP_CU(&ctx->err, cudaMemcpyAsync(sl, slopes + sp->sp_rank * Hl, (size_t)Hl * 4, cudaMemcpyDeviceToDevice, st),
            "the heads' slopes");
    return LASP_OK;
}

/* heads [h0, h0 + Hl) of a state [B, H, d, e]: out of it (out = 1: dst [B, Hl, d, e]) or into it */
static lasp_status state_slice(lasp_ctx *ctx, float *dst, const float *src, const lasp_attn_desc *a, int64_t Hl,
                               int64_t h0, int out, cudaStream_t st) {
    const size_t de = (size_t)(a->d * a->e) * 4, wide = (size_t)a->H * de, narrow = (size_t)Hl * de;
    if (out)
        LASP_CU(&ctx->err, cudaMemcpy2DAsync(dst, narrow, (const char *)src + (size_t)h0 * de, wide, narrow,
                                             (size_t)a->B, cudaMemcpyDeviceToDevice, st), "a state's heads");
    else
        LASP_CU(&ctx->err, cudaMemcpy2DAsync((char *)dst + (size_t)h0 * de, wide, src, narrow, narrow, (size_t)a->B,
                                             cudaMemcpyDeviceToDevice, st), "a state's heads");
    return LASP_OK;
}

/* A boundary state held by rank root (NULL there: zeros) broadcast, and this rank's heads of it into mine */
static lasp_status state_scatter(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *state, int root,
                                 float *full, float *mine, cudaStream_t st) {
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e);
    const int64_t Hl = a->H / sp->sp_size;
    if (sp->sp_rank == root && state)
        LASP_CU(&ctx->err, cudaMemcpyAsync(full, state, ns * 4, cudaMemcpyDeviceToDevice, st), "a boundary state");
    else
        LASP_CU(&ctx->err, cudaMemsetAsync(full, 0, ns * 4, st), "a boundary state");
    LASP_TRY(lasp_comm_bcast(sp->sp, full, ns, LASP_F32, root, &ctx->err));
    return state_slice(ctx, mine, full, a, Hl, sp->sp_rank * Hl, 1, st);
}

/* Every rank's heads of a state gathered; rank root assembles the whole state into state (if not NULL) */
static lasp_status state_gather(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *mine, int root,
                                float *all, float *state, cudaStream_t st) {
    const int W = sp->sp_size;
    const int64_t Hl = a->H / W;
    const size_t nsl = (size_t)(a->B * Hl * a->d * a->e);
    LASP_TRY(lasp_comm_allgather(sp->sp, mine, all, nsl, LASP_F32, &ctx->err));
    if (sp->sp_rank == root && state)
        for (int j = 0; j < W; j++) LASP_TRY(state_slice(ctx, state, all + (size_t)j * nsl, a, Hl, j * Hl, 0, st));
    return LASP_OK;
}

/* The call's stream (the context's) for the group's collectives too; given back by the caller */
static lasp_status begin(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, cudaStream_t *st) {
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    LASP_TRY(lasp_sp_base_check(sp, a, &ctx->err));
    void *s = NULL;
    LASP_TRY(lasp_ctx_cuda_stream(ctx, &s));
    *st = (cudaStream_t)s;
    return lasp_comm_set_stream(sp->sp, s, &ctx->err);
}

static lasp_status end(lasp_sp *sp, lasp_status s) {
    lasp_err e = {0};
    lasp_comm_set_stream(sp->sp, NULL, &e);
    return s;
}

static lasp_status ul_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                          const void *v, const float *slopes, const float *kv_in, void *o, float *kv_out,
                          lasp_sp_cache *c, cudaStream_t st) {
    const int W = sp->sp_size;
    const int64_t Hl = a->H / W;
    const size_t es = lasp_dtype_size(a->dtype), rows = (size_t)(a->B * a->T * a->H);
    const size_t nq = rows * (size_t)a->d * es, nsl = (size_t)(a->B * Hl * a->d * a->e);
    const ulayout L = layout_of(sp, a);
    /* the cache: the head split's q | k | v and this rank's heads of the incoming state, for the backward;
     * the scratch of both directions */
    LASP_TRY(lasp_sp_grow_device(ctx, &c->base, &c->base_n, (2 * nq + rows * (size_t)a->e * es + 3) / 4));
    LASP_TRY(lasp_sp_grow_device(ctx, &c->kv_in, &c->n, nsl));
    LASP_TRY(lasp_sp_grow_device(ctx, &c->work, &c->work_n, L.total / 4));
    c->on_device = 1, c->fwd = *a;
    char *Q = (char *)c->base, *K = Q + nq, *V = K + nq, *w = (char *)c->work;
    const void *in[3] = {q, k, v};
    void *hs[3] = {Q, K, V};
    const int64_t x[3] = {a->d, a->d, a->e};
    LASP_TRY(exchange(ctx, sp, a, in, x, 3, hs, 1, w + L.send, w + L.recv, st));
    LASP_TRY(state_scatter(ctx, sp, a, kv_in, 0, (float *)(w + L.full), c->kv_in, st));
    float *sl = (float *)(w + L.slopes), *kvo = (float *)(w + L.mine);
    lasp_attn_desc hd;
    LASP_TRY(head_group(ctx, sp, a, slopes, sl, &hd, st));
    void *O = w + L.grads;
    LASP_TRY(lasp_attn_fwd(ctx, &hd, Q, K, V, sl, c->kv_in, O, kvo));
    const void *oin[1] = {O};
    void *oout[1] = {o};
    const int64_t xo[1] = {a->e};
    LASP_TRY(exchange(ctx, sp, a, oin, xo, 1, oout, 0, w + L.send, w + L.recv, st));
    return state_gather(ctx, sp, a, kvo, W - 1, (float *)(w + L.all), kv_out, st);
}

static lasp_status ul_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *slopes,
                          const lasp_sp_cache *c, const void *do_, const float *dkv_out, void *dq, void *dk, void *dv,
                          float *dkv_in, cudaStream_t st) {
    const int W = sp->sp_size;
    const size_t es = lasp_dtype_size(a->dtype), rows = (size_t)(a->B * a->T * a->H);
    const size_t nq = rows * (size_t)a->d * es, nv = rows * (size_t)a->e * es;
    const ulayout L = layout_of(sp, a);
    if (!c || !c->on_device || !c->base || !c->kv_in || c->work_n * 4 < L.total || !lasp_sp_cache_matches(c, a))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "lasp_sp_attn_bwd: the cache does not hold a forward of this shape "
                         "(hint: run lasp_sp_attn_fwd with the same desc and mode first)");
    const char *Q = (const char *)c->base, *K = Q + nq, *V = K + nq;
    char *w = (char *)c->work;
    char *dO = w + L.grads, *dQ = dO + nv, *dK = dQ + nq, *dV = dK + nq;
    const void *in[1] = {do_};
    void *hs[1] = {dO};
    const int64_t xo[1] = {a->e};
    LASP_TRY(exchange(ctx, sp, a, in, xo, 1, hs, 1, w + L.send, w + L.recv, st));
    float *dkvo = (float *)(w + L.other), *dkvi = (float *)(w + L.mine), *sl = (float *)(w + L.slopes);
    LASP_TRY(state_scatter(ctx, sp, a, dkv_out, W - 1, (float *)(w + L.full), dkvo, st));
    lasp_attn_desc hd;
    LASP_TRY(head_group(ctx, sp, a, slopes, sl, &hd, st));
    LASP_TRY(lasp_attn_bwd(ctx, &hd, Q, K, V, sl, c->kv_in, dO, dkvo, dQ, dK, dV, dkvi));
    const void *gin[3] = {dQ, dK, dV};
    void *gout[3] = {dq, dk, dv};
    const int64_t x[3] = {a->d, a->d, a->e};
    LASP_TRY(exchange(ctx, sp, a, gin, x, 3, gout, 0, w + L.send, w + L.recv, st));
    return state_gather(ctx, sp, a, dkvi, 0, (float *)(w + L.all), dkv_in, st);
}

/* ---- the all-gather of keys and values ---------------------------------------------------------------- */

/* Byte offsets of the all-gather's scratch in the cache's work buffer */
typedef struct glayout {
    size_t mine, scratch_o, zero_do, scratch_dq, grads, st_a, st_b, din, total;
} glayout;

static glayout glayout_of(const lasp_sp *sp, const lasp_attn_desc *a) {
    const size_t es = lasp_dtype_size(a->dtype), W = (size_t)sp->sp_size;
    const size_t nk = (size_t)(a->B * a->T * a->H * a->d) * es, nv = (size_t)(a->B * a->T * a->H * a->e) * es;
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e) * 4;
    glayout L;
    size_t off = 0;
    L.mine = off, off += up256(nk + nv);          /* this piece's k | v, and the reduce-scatter's result */
    L.scratch_o = off, off += up256(nv);          /* an earlier piece's outputs, not wanted */
    L.zero_do = off, off += up256(nv);            /* their gradient: zero */
    L.scratch_dq = off, off += up256(nk);         /* their dq, not wanted */
    L.grads = off, off += up256(W * (nk + nv));   /* every piece's dk | dv from this rank */
    L.st_a = off, off += up256(ns);
    L.st_b = off, off += up256(ns);
    L.din = off, off += up256(ns);
    L.total = off;
    return L;
}

static lasp_status ag_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                          const void *v, const float *slopes, const float *kv_in, void *o, float *kv_out,
                          lasp_sp_cache *c, cudaStream_t st) {
    const int W = sp->sp_size, r = sp->sp_rank;
    const size_t es = lasp_dtype_size(a->dtype), W_ = (size_t)W;
    const size_t nk = (size_t)(a->B * a->T * a->H * a->d) * es, nv = (size_t)(a->B * a->T * a->H * a->e) * es;
    const size_t kv = nk + nv, ns = (size_t)(a->B * a->H * a->d * a->e);
    const glayout L = glayout_of(sp, a);
    /* the cache: every piece's k | v and the state entering this piece, for the backward; the scratch */
    LASP_TRY(lasp_sp_grow_device(ctx, &c->base, &c->base_n, (W_ * kv + 3) / 4));
    LASP_TRY(lasp_sp_grow_device(ctx, &c->kv_in, &c->n, ns));
    LASP_TRY(lasp_sp_grow_device(ctx, &c->work, &c->work_n, L.total / 4));
    c->on_device = 1, c->fwd = *a;
    char *KV = (char *)c->base, *w = (char *)c->work;
    LASP_CU(&ctx->err, cudaMemcpyAsync(w + L.mine, k, nk, cudaMemcpyDeviceToDevice, st), "this piece's keys");
    LASP_CU(&ctx->err, cudaMemcpyAsync(w + L.mine + nk, v, nv, cudaMemcpyDeviceToDevice, st), "this piece's values");
    LASP_TRY(lasp_comm_allgather(sp->sp, w + L.mine, KV, kv / es, a->dtype, &ctx->err));
    /* the sequence's kv_in everywhere, then carried over the earlier pieces (ping-pong, ending in the cache) */
    float *cur = r % 2 ? (float *)(w + L.st_a) : c->kv_in, *nxt = r % 2 ? c->kv_in : (float *)(w + L.st_a);
    if (r == 0 && kv_in) LASP_CU(&ctx->err, cudaMemcpyAsync(cur, kv_in, ns * 4, cudaMemcpyDeviceToDevice, st), "kv_in");
    else LASP_CU(&ctx->err, cudaMemsetAsync(cur, 0, ns * 4, st), "a zero state");
    LASP_TRY(lasp_comm_bcast(sp->sp, cur, ns, LASP_F32, 0, &ctx->err));
    for (int p = 0; p < r; p++) {
        const char *Kp = KV + (size_t)p * kv, *Vp = Kp + nk;
        LASP_TRY(lasp_attn_fwd(ctx, a, Kp, Kp, Vp, slopes, cur, w + L.scratch_o, nxt));
        float *t = cur;
        cur = nxt, nxt = t;
    }
    return lasp_attn_fwd(ctx, a, q, k, v, slopes, c->kv_in, o, r == W - 1 ? kv_out : NULL);
}

static lasp_status ag_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                          const void *v, const float *slopes, const lasp_sp_cache *c, const void *do_,
                          const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in, cudaStream_t st) {
    const int W = sp->sp_size, r = sp->sp_rank;
    const size_t es = lasp_dtype_size(a->dtype), W_ = (size_t)W;
    const size_t nk = (size_t)(a->B * a->T * a->H * a->d) * es, nv = (size_t)(a->B * a->T * a->H * a->e) * es;
    const size_t kv = nk + nv, ns = (size_t)(a->B * a->H * a->d * a->e);
    const glayout L = glayout_of(sp, a);
    if (!c || !c->on_device || !c->base || c->base_n * 4 < W_ * kv || !c->kv_in || c->work_n * 4 < L.total ||
        !lasp_sp_cache_matches(c, a))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "lasp_sp_attn_bwd: the cache does not hold a forward of this shape "
                         "(hint: run lasp_sp_attn_fwd with the same desc and mode first)");
    const char *KV = (const char *)c->base;
    char *w = (char *)c->work, *G = w + L.grads;
    LASP_CU(&ctx->err, cudaMemsetAsync(G, 0, W_ * kv, st), "the keys' and values' gradients");
    LASP_CU(&ctx->err, cudaMemsetAsync(w + L.zero_do, 0, nv, st), "a zero output gradient");
    float *cur = (float *)(w + L.st_a), *nxt = (float *)(w + L.st_b);
    /* this piece from its incoming state: dq whole, its own dk | dv into its slot, and ∂/∂S */
    char *Gr = G + (size_t)r * kv;
    LASP_TRY(lasp_attn_bwd(ctx, a, q, k, v, slopes, c->kv_in, do_, r == W - 1 ? dkv_out : NULL, dq, Gr, Gr + nk,
                           cur));
    /* S = the earlier pieces carried from kv_in: each earlier piece's k | v get their share of ∂/∂S, which goes
     * on to the piece before as the op's dkv_in */
    for (int p = r - 1; p >= 0; p--) {
        const char *Kp = KV + (size_t)p * kv, *Vp = Kp + nk;
        char *Gp = G + (size_t)p * kv;
        LASP_TRY(lasp_attn_bwd(ctx, a, Kp, Kp, Vp, slopes, NULL, w + L.zero_do, cur, w + L.scratch_dq, Gp, Gp + nk,
                               nxt));
        float *t = cur;
        cur = nxt, nxt = t;
    }
    LASP_TRY(lasp_comm_reduce_scatter(sp->sp, G, w + L.mine, kv / es, a->dtype, LASP_REDUCE_SUM, &ctx->err));
    LASP_CU(&ctx->err, cudaMemcpyAsync(dk, w + L.mine, nk, cudaMemcpyDeviceToDevice, st), "the keys' gradient");
    LASP_CU(&ctx->err, cudaMemcpyAsync(dv, w + L.mine + nk, nv, cudaMemcpyDeviceToDevice, st), "the values' gradient");
    float *din = (float *)(w + L.din);
    LASP_TRY(lasp_comm_allreduce(sp->sp, cur, din, ns, LASP_F32, LASP_REDUCE_SUM, &ctx->err));
    if (r == 0 && dkv_in)
        LASP_CU(&ctx->err, cudaMemcpyAsync(dkv_in, din, ns * 4, cudaMemcpyDeviceToDevice, st), "dkv_in");
    return LASP_OK;
}

lasp_status lasp_sp_base_fwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                                  const void *v, const float *slopes, const float *kv_in, void *o, float *kv_out,
                                  lasp_sp_cache *cache) {
    cudaStream_t st;
    LASP_TRY(begin(ctx, sp, a, &st));
    if (sp->p.mode == LASP_SP_ULYSSES) return end(sp, ul_fwd(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, cache, st));
    return end(sp, ag_fwd(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, cache, st));
}

lasp_status lasp_sp_base_bwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                                  const void *v, const float *slopes, const lasp_sp_cache *cache, const void *do_,
                                  const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in) {
    cudaStream_t st;
    LASP_TRY(begin(ctx, sp, a, &st));
    if (sp->p.mode == LASP_SP_ULYSSES)
        return end(sp, ul_bwd(ctx, sp, a, slopes, cache, do_, dkv_out, dq, dk, dv, dkv_in, st));
    return end(sp, ag_bwd(ctx, sp, a, q, k, v, slopes, cache, do_, dkv_out, dq, dk, dv, dkv_in, st));
}
