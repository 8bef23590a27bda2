/* sp_cuda.cu — the LASP chain and LASP-2 on GPUs (docs/MATH.md §3–4), the device twin of sp.c.
 *
 * Two streams per rank: the op's compute stream S and the SP communicator's stream C, ordered by CUDA
 * events only (no host synchronisation on the critical path). How a state travels is the transport's
 * (sp_cuda_xfer.cu); the state arithmetic is sp_cuda_states.cu's.
 *
 *   forward (chain), rank r of W
 *     S: local half of the op → m (the piece's own state)   (segment states + scan from zero)
 *     C: after S's event, KV_in from r−1 (rank 0: the sequence's kv_in, or zero)
 *     C: then S may go on; KV_out = γ KV_in + m, to r+1     (the critical path: a d×e axpy and the message)
 *     S: after C's event: finishing half with KV_in → o     (outputs, KV_in added as the states are read)
 *   backward mirrored: the piece's g first, handed to C at once; S computes dq (it needs only the forward's
 *     segment states, kept in the cache, and the cached KV_in) while C receives dKV_out from r+1, forms
 *     dKV_in = γ dKV_out + g and sends it to r−1; then dk, dv, adding dKV_out as they read the states.
 *   LASP-2: the local states are gathered on C and combined by Horner, same halves around it.
 *
 * The output passes are persistent (a CTA an SM to the pass's end) and transfers are kernels: the halves
 * leave the group's comm_sms SMs free and the SP communicator's NCCL kernels use at most that many CTAs,
 * else a transfer enqueued beside a pass waits for all of it. The next call's local half waits for this
 * call's sends before it writes their buffer again, so one layer's transfers never race the next layer's
 * work. Every state and message is fp32. */
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "attn/attn_cuda.h"
#include "attn/attn_cuda_sp.h"
#include "sp/sp_cuda.h"
#include "sp/sp_cuda_impl.h"

using namespace lasp_sp_cu;

extern "C" void lasp_sp_cache_free_cuda(lasp_sp_cache *c) {
    if (c->base) cudaFree(c->base);
    if (c->kv_in) cudaFree(c->kv_in);
    if (c->work) cudaFree(c->work);
    if (c->seg) cudaFree(c->seg);
    Events *ev = (Events *)c->gpu;
    if (ev) {
        cudaEvent_t all[] = {ev->local_done, ev->state_ready, ev->sent, ev->part2_done};
        for (cudaEvent_t e : all)
            if (e) cudaEventDestroy(e);
        for (cudaEvent_t e : ev->tr)
            if (e) cudaEventDestroy(e);
        if (ev->S2) cudaStreamDestroy(ev->S2);
        free(ev);
    }
    memset(c, 0, sizeof *c);
}

static lasp_status grow(lasp_ctx *ctx, float **p, size_t *have, size_t want) {
    if (*have >= want) return LASP_OK;
    if (*p) cudaFree(*p);
    *p = NULL, *have = 0;
    cudaError_t e = cudaMalloc((void **)p, want * sizeof(float));
    if (e != cudaSuccess)
        return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "SP on the GPU: cudaMalloc of %zu state floats: %s", want,
                         cudaGetErrorString(e));
    *have = want;
    /* zeroed once: a state buffer never holds garbage that a decay could turn into NaN */
    CU_TRY(ctx, cudaMemset(*p, 0, want * sizeof(float)), "zeroing the state buffers");
    return LASP_OK;
}

extern "C" lasp_status lasp_sp_grow_device(lasp_ctx *ctx, float **p, size_t *have, size_t want) {
    return grow(ctx, p, have, want);
}

static lasp_status make_events(lasp_ctx *ctx, const lasp_sp *sp, lasp_sp_cache *cache) {
    Events *ev = (Events *)calloc(1, sizeof *ev);
    if (!ev) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "SP on the GPU: no memory for events");
    cache->gpu = ev; /* freed with the cache, whatever below fails */
    CU_TRY(ctx, cudaEventCreateWithFlags(&ev->local_done, cudaEventDisableTiming), "cudaEventCreate");
    CU_TRY(ctx, cudaEventCreateWithFlags(&ev->state_ready, cudaEventDisableTiming), "cudaEventCreate");
    CU_TRY(ctx, cudaEventCreateWithFlags(&ev->sent, cudaEventDisableTiming), "cudaEventCreate");
    if ((ev->trace = sp->p.trace))
        for (cudaEvent_t &e : ev->tr) CU_TRY(ctx, cudaEventCreate(&e), "cudaEventCreate");
    return LASP_OK;
}

/* Streams, events and buffers of this call; check what the CPU path checks. */
static lasp_status prepare(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, lasp_sp_cache *cache, int dir,
                           Sched *s) {
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    if (!cache)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: the state cache is NULL (hint: the cache the "
                         "forward made, lasp_sp_attn_fwd's last argument)");
    if (cache->n && !cache->on_device)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: the cache holds host buffers of a CPU run");
    s->ns = (size_t)(a->B * a->H * a->d * a->e);
    s->de = a->d * a->e;
    s->r = sp->sp_rank, s->W = sp->sp_size;
    s->lasp2 = sp->p.mode == LASP_SP_LASP2;
    const size_t work = (s->lasp2 ? (size_t)s->W + 1 : 2) * s->ns;
    size_t seg_bytes = 0;
    LASP_TRY(lasp_attn_cuda_saved_bytes(ctx, a, &seg_bytes));
    if (dir == BWD) {
        if (!cache->gpu || !lasp_sp_cache_matches(cache, a) || cache->work_n < work ||
            cache->seg_n * sizeof(float) < seg_bytes)
            return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: the cache does not hold a forward of this shape "
                             "(hint: run the forward with the same desc and mode first)");
    } else {
        cache->on_device = 1;
        LASP_TRY(grow(ctx, &cache->kv_in, &cache->n, s->ns));
        LASP_TRY(grow(ctx, &cache->work, &cache->work_n, work));
        LASP_TRY(grow(ctx, &cache->seg, &cache->seg_n, seg_bytes / sizeof(float)));
        if (!cache->gpu) LASP_TRY(make_events(ctx, sp, cache));
        cache->fwd = *a;
    }
    s->ev = (Events *)cache->gpu;
    LASP_TRY(lasp_attn_cuda_sp_leave_sms(ctx, sp->p.comm_sms));
    void *st = NULL;
    LASP_TRY(lasp_ctx_cuda_stream(ctx, &st));
    s->S = (cudaStream_t)st;
    s->C = (cudaStream_t)lasp_comm_stream(sp->sp);
    if (!s->C) return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU needs NCCL communicators");
    /* the previous call's send may still read the buffer this call's local half writes */
    if (s->ev->sent_pending) {
        CU_TRY(ctx, cudaStreamWaitEvent(s->S, s->ev->sent, 0), "cudaStreamWaitEvent");
        s->ev->sent_pending = 0;
    }
    return xfer_prepare(ctx, sp, s, dir);
}

/* the trace's phase i (0–3 forward, 4–7 backward), where the group traces */
static void trace(const Sched *s, int i, cudaStream_t st) {
    if (s->ev->trace) cudaEventRecord(s->ev->tr[i], st);
}

/* S's local half is done: C may use its result. */
static lasp_status hand_to_comm(lasp_ctx *ctx, const Sched *s, int dir) {
    trace(s, dir == FWD ? 1 : 5, s->S);
    CU_TRY(ctx, cudaEventRecord(s->ev->local_done, s->S), "cudaEventRecord");
    CU_TRY(ctx, cudaStreamWaitEvent(s->C, s->ev->local_done, 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* C has the incoming state: S (or S2) may finish (wait_for_state, just before it does). */
static lasp_status state_here(lasp_ctx *ctx, const Sched *s, int dir) {
    trace(s, dir == FWD ? 2 : 6, s->C);
    CU_TRY(ctx, cudaEventRecord(s->ev->state_ready, s->C), "cudaEventRecord");
    return LASP_OK;
}
static lasp_status wait_for_state(lasp_ctx *ctx, const Sched *s, cudaStream_t st) {
    CU_TRY(ctx, cudaStreamWaitEvent(st, s->ev->state_ready, 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* After the sends: remembered, so that the next call waits for them before reusing the buffer. */
static lasp_status mark_sent(lasp_ctx *ctx, const Sched *s) {
    CU_TRY(ctx, cudaEventRecord(s->ev->sent, s->C), "cudaEventRecord");
    s->ev->sent_pending = 1;
    return LASP_OK;
}

/* Whether the forward's finish runs in two parts (bench/RESULTS.md has the measurements): a rank waiting
 * for KV_in first runs the finishing half's blocks that KV_in cannot reach (at the usual slopes the decay to
 * most segments of a long piece is exactly 0 in fp32) and then, on a stream of its own once the state is
 * here, the rest, whose CTAs take SMs as the first part's free them. That hides a late state. A state that
 * comes early — by puts, from one rank (the chain; LASP-2 over 2 ranks) — is better waited for by one
 * launch: while part 1 holds the SMs, the state's own kernels on C run slower. */
static int split_finish(const Sched *s) { return !(s->put && (!s->lasp2 || s->W == 2)); }

/* a split finish's second stream (highest priority) and its event, made on first use */
static lasp_status second_stream(lasp_ctx *ctx, Events *ev) {
    if (ev->S2) return LASP_OK;
    int lo = 0, hi = 0;
    CU_TRY(ctx, cudaDeviceGetStreamPriorityRange(&lo, &hi), "cudaDeviceGetStreamPriorityRange");
    CU_TRY(ctx, cudaStreamCreateWithPriority(&ev->S2, cudaStreamNonBlocking, hi), "cudaStreamCreateWithPriority");
    CU_TRY(ctx, cudaEventCreateWithFlags(&ev->part2_done, cudaEventDisableTiming), "cudaEventCreate");
    return LASP_OK;
}

/* A transfer's kernel holds its SMs from launch to completion, and a send queued behind a finishing half
 * that fills every SM waits for SMs to free: so a rank that sent starts its finishing half once its send is
 * done. Not in a split forward, where the next rank has its first part to run meanwhile. */
static lasp_status after_send(lasp_ctx *ctx, const Sched *s, int sent, int dir) {
    if (sent && !(dir == FWD && split_finish(s)))
        CU_TRY(ctx, cudaStreamWaitEvent(s->S, s->ev->sent, 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* After the backward, with the group's trace on: this layer's phases, in ms from its forward's start. */
static lasp_status trace_done(lasp_ctx *ctx, lasp_sp *sp, const Sched *s) {
    if (!s->ev->trace) return LASP_OK;
    CU_TRY(ctx, cudaEventSynchronize(s->ev->tr[7]), "waiting for the traced layer");
    float t[8] = {0};
    for (int i = 1; i < 8; i++) CU_TRY(ctx, cudaEventElapsedTime(&t[i], s->ev->tr[0], s->ev->tr[i]), "trace");
    lasp_sp_trace *tr = &sp->trace;
    tr->layers++;
    tr->fwd_local_ms = t[1], tr->fwd_state_ms = t[2], tr->fwd_end_ms = t[3];
    tr->bwd_start_ms = t[4], tr->bwd_local_ms = t[5], tr->bwd_state_ms = t[6], tr->bwd_end_ms = t[7];
    return LASP_OK;
}

extern "C" lasp_status lasp_sp_attn_fwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q,
                                             const void *k, const void *v, const float *slopes, const float *kv_in,
                                             void *o, float *kv_out, lasp_sp_cache *cache) {
    if (sp->p.mode == LASP_SP_ULYSSES || sp->p.mode == LASP_SP_ALLGATHER)
        return lasp_sp_base_fwd_cuda(ctx, sp, a, q, k, v, slopes, kv_in, o, kv_out, cache);
    Sched s;
    LASP_TRY(prepare(ctx, sp, a, cache, FWD, &s));
    trace(&s, 0, s.S);
    float *KV = cache->kv_in, *m = cache->work;
    const int r = s.r, W = s.W;
    const int has_in = r > 0 || kv_in != NULL;
    s.ev->fwd_has_in = has_in;
    LASP_TRY(lasp_attn_fwd_cuda_local(ctx, a, q, k, v, slopes, m, cache->seg));
    LASP_TRY(hand_to_comm(ctx, &s, FWD));
    if (sp->p.mode == LASP_SP_CHAIN) {
        if (r > 0) LASP_TRY(xfer_recv(ctx, sp, &s, FWD, r - 1, KV));
        else LASP_TRY(state_copy(ctx, KV, kv_in, s.ns, s.C));
        LASP_TRY(state_here(ctx, &s, FWD)); /* S may finish while C serves the next rank */
        if (has_in) LASP_TRY(state_combine(ctx, s.C, a, slopes, KV, m, m)); /* KV_out = γ KV_in + m (else m) */
        if (r < W - 1) LASP_TRY(xfer_send(ctx, sp, &s, FWD, m, r + 1));
        else if (kv_out) LASP_TRY(state_copy(ctx, kv_out, m, s.ns, s.C));
        LASP_TRY(mark_sent(ctx, &s));
        LASP_TRY(after_send(ctx, &s, r < W - 1, FWD));
    } else {
        /* LASP-2: rank 0 folds the sequence's kv_in into its contribution (docs/MATH.md §4); its own KV_in is
         * the sequence's, so its finishing half need not wait for the gather */
        float *G = m + s.ns;
        if (r == 0) {
            LASP_TRY(state_copy(ctx, KV, kv_in, s.ns, s.C));
            LASP_TRY(state_here(ctx, &s, FWD));
            if (kv_in) LASP_TRY(state_combine(ctx, s.C, a, slopes, kv_in, m, m));
        }
        LASP_TRY(xfer_gather(ctx, sp, &s, FWD, m, &G));
        if (r > 0) {
            LASP_TRY(state_horner(ctx, s.C, a, slopes, G, 0, r, 1, KV));
            LASP_TRY(state_here(ctx, &s, FWD));
        }
        /* the sequence's KV_out: with puts γ KV_in + m (G has no slot of ours), else the sum over G */
        if (r == W - 1 && kv_out && s.put) LASP_TRY(state_combine(ctx, s.C, a, slopes, KV, m, kv_out));
        else if (r == W - 1 && kv_out) LASP_TRY(state_horner(ctx, s.C, a, slopes, G, 0, W, 1, kv_out));
        LASP_TRY(xfer_release(ctx, sp, &s, FWD));
        LASP_TRY(mark_sent(ctx, &s));
        LASP_TRY(after_send(ctx, &s, s.put ? r < W - 1 : W > 1, FWD));
    }
    const float *in = has_in ? KV : NULL;
    if (r > 0 && split_finish(&s)) {
        /* part 1 on S at once; part 2 beside it on S2 once the state is here (state_ready follows the local
         * half on C, so S2 needs no other order) */
        LASP_TRY(second_stream(ctx, s.ev));
        LASP_TRY(lasp_attn_fwd_cuda_finish(ctx, a, 1, q, k, v, slopes, NULL, o, cache->seg, NULL));
        LASP_TRY(wait_for_state(ctx, &s, s.ev->S2));
        LASP_TRY(lasp_attn_fwd_cuda_finish(ctx, a, 2, q, k, v, slopes, in, o, cache->seg, s.ev->S2));
        CU_TRY(ctx, cudaEventRecord(s.ev->part2_done, s.ev->S2), "cudaEventRecord");
        CU_TRY(ctx, cudaStreamWaitEvent(s.S, s.ev->part2_done, 0), "cudaStreamWaitEvent");
    } else {
        LASP_TRY(wait_for_state(ctx, &s, s.S));
        LASP_TRY(lasp_attn_fwd_cuda_finish(ctx, a, 0, q, k, v, slopes, in, o, cache->seg, NULL));
    }
    trace(&s, 3, s.S);
    return LASP_OK;
}

extern "C" lasp_status lasp_sp_attn_bwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q,
                                             const void *k, const void *v, const float *slopes,
                                             const lasp_sp_cache *cache, const void *do_, const float *dkv_out,
                                             void *dq, void *dk, void *dv, float *dkv_in) {
    if (sp->p.mode == LASP_SP_ULYSSES || sp->p.mode == LASP_SP_ALLGATHER)
        return lasp_sp_base_bwd_cuda(ctx, sp, a, q, k, v, slopes, cache, do_, dkv_out, dq, dk, dv, dkv_in);
    Sched s;
    LASP_TRY(prepare(ctx, sp, a, (lasp_sp_cache *)cache, BWD, &s));
    trace(&s, 4, s.S);
    float *g = cache->work, *dKV = cache->work + s.ns;
    const int r = s.r, W = s.W;
    const float *in = dkv_out;                                   /* dKV_out of this piece */
    const float *kv_in = s.ev->fwd_has_in ? cache->kv_in : NULL; /* none: dq adds nothing */
    LASP_TRY(lasp_attn_bwd_cuda_local(ctx, a, q, k, v, slopes, do_, g));
    LASP_TRY(hand_to_comm(ctx, &s, BWD));
    if (sp->p.mode == LASP_SP_CHAIN) {
        /* C receives dKV_out, forms dKV_in and sends it while S computes dq */
        if (r < W - 1) {
            in = dKV;
            LASP_TRY(xfer_recv(ctx, sp, &s, BWD, r + 1, dKV));
        }
        LASP_TRY(state_here(ctx, &s, BWD)); /* S may finish while C serves the previous rank */
        if (in) LASP_TRY(state_combine(ctx, s.C, a, slopes, in, g, g)); /* dKV_in = γ dKV_out + g (else g) */
        if (r > 0) LASP_TRY(xfer_send(ctx, sp, &s, BWD, g, r - 1));
        else if (dkv_in) LASP_TRY(state_copy(ctx, dkv_in, g, s.ns, s.C));
        /* dq needs only the forward's segment states and the cached KV_in: it hides the states' travel */
        LASP_TRY(lasp_attn_bwd_cuda_dq(ctx, a, k, v, slopes, kv_in, do_, dq, cache->seg));
        LASP_TRY(mark_sent(ctx, &s));
        LASP_TRY(after_send(ctx, &s, r > 0, BWD));
    } else {
        float *G = cache->work + s.ns;
        LASP_TRY(lasp_attn_bwd_cuda_dq(ctx, a, k, v, slopes, kv_in, do_, dq, cache->seg)); /* while G gathers */
        if (r == W - 1 && dkv_out) LASP_TRY(state_combine(ctx, s.C, a, slopes, dkv_out, g, g));
        float *dKVo = s.put ? cache->work + s.ns : g; /* dKV_out: with puts G is the window and work is free */
        LASP_TRY(xfer_gather(ctx, sp, &s, BWD, g, &G));
        if (r == 0 && dkv_in && !s.put) LASP_TRY(state_horner(ctx, s.C, a, slopes, G, W - 1, -1, -1, dkv_in));
        if (r < W - 1) {
            LASP_TRY(state_horner(ctx, s.C, a, slopes, G, W - 1, r, -1, dKVo)); /* without puts g is free by now */
            in = dKVo;
        }
        LASP_TRY(state_here(ctx, &s, BWD));
        /* with puts the sequence's dKV_in = γ dKV_out + g, after the state S waits for */
        if (r == 0 && dkv_in && s.put) LASP_TRY(state_combine(ctx, s.C, a, slopes, in, g, dkv_in));
        LASP_TRY(xfer_release(ctx, sp, &s, BWD));
        LASP_TRY(mark_sent(ctx, &s));
    }
    LASP_TRY(wait_for_state(ctx, &s, s.S));
    LASP_TRY(lasp_attn_bwd_cuda_finish(ctx, a, q, k, v, slopes, do_, in, dk, dv)); /* adds dKV_out */
    trace(&s, 7, s.S);
    return trace_done(ctx, sp, &s);
}
