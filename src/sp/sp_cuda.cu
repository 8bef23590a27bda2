/* sp_cuda.cu — the LASP chain and LASP-2 on GPUs (MATH.md §3–4), the device twin of sp.c.
 *
 * Two streams per rank: the op's compute stream S and the SP communicator's stream C. The states travel
 * by one-sided puts into the peer's memory where the ranks share NVLink (window_for), else by NCCL
 * send/receive.
 *
 *   forward (chain), rank r of W
 *     S: local half of the op → m (the piece's own state)   (segment states + scan from zero)
 *     C: after S's event, wait for KV_in from r−1 (take_state; or its receive, started by that event:
 *        after_send says why)
 *     C: then S may go on; KV_out = γ KV_in + m, put (send) to r+1
 *        (rank 0 without a kv_in sends m as it is: nothing but the message on the critical path)
 *     S: after C's event: finishing half with KV_in → o     (outputs, KV_in added as the states are read;
 *        outside the chain with puts a rank waiting for KV_in first runs the blocks KV_in cannot reach:
 *        split_finish)
 *   backward mirrored: the piece's g first, handed to C at once; S computes dq (it needs only the
 *     forward's segment states, kept in the cache, and the cached KV_in) while C receives dKV_out from
 *     r+1, forms dKV_in = γ dKV_out + g and sends it to r−1; then dk, dv, adding dKV_out as they read
 *     the states. The message's latency hides behind dq.
 *   LASP-2: the local states are gathered on C (gather_states) and combined by Horner, same halves
 *     around it.
 *
 * The output passes are persistent (a CTA an SM to the pass's end) and transfers are kernels (NCCL's on
 * both sides, a put on the sender's): the halves leave lasp_sp_comm_ctas() SMs free and the SP
 * communicator's kernels use at most that many CTAs (sp.h), else a transfer enqueued beside a pass waits
 * for all of it.
 *
 * The chain can pipeline groups of heads (LASP_SP_GROUPS=n; default 1): the halves above run per group,
 * so that group 0's state travels while group 1's local half computes. Measured on 2 × H200 (bench sp,
 * T_local 32768, 2026-11-26): 2 groups 1.092 × one GPU, 4 groups 1.228, against 1.062 with one — NCCL's
 * kernels then spin beside compute kernels that want every SM, and the halved grids add tails.
 * With one group, a rank that sent a state starts its finishing half once the send is done (after_send:
 * NCCL's kernel would otherwise wait for SMs behind it). The next call's local half waits for the sends
 * before it writes the buffer again, so one layer's transfers never race the next layer's work. Every
 * state and message is fp32. */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "attn/attn_cuda.h"
#include "attn/attn_cuda_sp.h"
#include "core/dtype.h"
#include "sp/sp_cuda.h"

/* Head groups the chain pipelines (LASP_SP_GROUPS, 1 .. MAX_GROUPS): one event pair each */
#define MAX_GROUPS 8

typedef struct gpu_events {
    cudaEvent_t local_done[MAX_GROUPS];   /* S: the local half of group i has produced its m (or g) */
    cudaEvent_t state_ready[MAX_GROUPS];  /* C: group i's KV_in (dKV_out) is here */
    cudaEvent_t sent;                     /* C: the outgoing states have left; their buffer may be written again */
    int sent_pending;                     /* `sent` was recorded and no call has waited for it yet */
    int fwd_has_in;                       /* the forward's piece had an incoming state (else kv_in is zero) */
    cudaStream_t S2;                      /* LASP_SP_SPLIT=2: the finish's part 2 beside part 1 (made on first use) */
    cudaEvent_t part2_done;               /* S2: part 2 is done; S waits for it */
    unsigned *ready;                      /* LASP_SP_SPLIT=3: a flag a group on the device, its state is here */
    unsigned epoch;                       /* ... once it reads this call's epoch (made on first use) */
    /* LASP_SP_TRACE=1: timing events at the phases of a layer, printed after each backward (stderr):
     * fwd start, local done, state here, end; the same for the bwd (of the last group where there are several) */
    cudaEvent_t tr[8];
    int trace;
} gpu_events;

static lasp_status cu_fail(lasp_ctx *ctx, cudaError_t e, const char *what) {
    return lasp_fail(&ctx->err, LASP_ERR_CUDA, "SP on the GPU: %s: %s", what, cudaGetErrorString(e));
}

#define CU_TRY(ctx, call, what)                                   \
    do {                                                          \
        cudaError_t cu_e_ = (call);                               \
        if (cu_e_ != cudaSuccess) return cu_fail(ctx, cu_e_, what); \
    } while (0)

/* The two state kernels below run on the communicator's stream, beside output passes that leave it a few
 * SMs (lasp_sp_comm_ctas): few blocks, each thread over several float4s (a state is d·e floats, a multiple
 * of 4, and every buffer here starts 16-byte aligned), so that their time is the bytes, not the waves. */
#define STATE_BLOCKS 64

/* out = exp(−s_h·n) · in + local over [BH][de] from element `first` on (in = NULL: zero). out may alias
 * local. */
__global__ static void k_combine(float4 *out, const float4 *in, const float4 *local, const float *slopes, int64_t n,
                                 int H, int64_t de, int64_t first, int64_t total) {
    for (int64_t i = first / 4 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total / 4;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = expf(-slopes[(int)((4 * i / de) % H)] * (float)n);
        const float4 l = local[i], x = in ? in[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        out[i] = make_float4(g * x.x + l.x, g * x.y + l.y, g * x.z + l.z, g * x.w + l.w);
    }
}

/* P = Σ over pieces s from `from` towards `to` (exclusive, step ±1) of γ^{distance} G[s], by Horner. */
__global__ static void k_horner(float4 *P, const float4 *G, const float *slopes, int64_t n, int from, int to, int step,
                                int H, int64_t de, int64_t total) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total / 4;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = expf(-slopes[(int)((4 * i / de) % H)] * (float)n);
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int s = from; s != to; s += step) {
            const float4 x = G[(size_t)s * (total / 4) + i];
            acc = make_float4(g * acc.x + x.x, g * acc.y + x.y, g * acc.z + x.z, g * acc.w + x.w);
        }
        P[i] = acc;
    }
}

static const lasp_heads ALL = {0, 0};

static dim3 grid_of(int64_t total) {
    const int64_t b = (total / 4 + 255) / 256;
    return dim3((unsigned)(b < STATE_BLOCKS ? b : STATE_BLOCKS));
}

/* the combine of the heads hs ({0, 0}: all) */
static lasp_status combine(lasp_ctx *ctx, cudaStream_t st, const lasp_attn_desc *a, lasp_heads hs,
                           const float *slopes, const float *in, const float *local, float *out) {
    const int64_t de = a->d * a->e, n = hs.n ? hs.n : a->B * a->H;
    if (lasp_misaligned16(out) || lasp_misaligned16(in) || lasp_misaligned16(local))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: a state buffer is not 16-byte aligned");
    k_combine<<<grid_of(n * de), 256, 0, st>>>((float4 *)out, (const float4 *)in, (const float4 *)local, slopes, a->T,
                                               (int)a->H, de, hs.bh0 * de, (hs.bh0 + n) * de);
    CU_TRY(ctx, cudaGetLastError(), "the state combine kernel");
    return LASP_OK;
}

static lasp_status horner(lasp_ctx *ctx, cudaStream_t st, const lasp_attn_desc *a, const float *slopes,
                          const float *G, int from, int to, int step, float *P) {
    const int64_t de = a->d * a->e, total = a->B * a->H * de;
    if (lasp_misaligned16(P) || lasp_misaligned16(G))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: a state buffer is not 16-byte aligned");
    k_horner<<<grid_of(total), 256, 0, st>>>((float4 *)P, (const float4 *)G, slopes, a->T, from, to, step, (int)a->H,
                                             de, total);
    CU_TRY(ctx, cudaGetLastError(), "the Horner kernel");
    return LASP_OK;
}

extern "C" void lasp_sp_cache_free_cuda(lasp_sp_cache *c) {
    if (c->kv_in) cudaFree(c->kv_in);
    if (c->work) cudaFree(c->work);
    if (c->seg) cudaFree(c->seg);
    gpu_events *ev = (gpu_events *)c->gpu;
    if (ev) {
        for (int i = 0; i < MAX_GROUPS; i++) {
            if (ev->local_done[i]) cudaEventDestroy(ev->local_done[i]);
            if (ev->state_ready[i]) cudaEventDestroy(ev->state_ready[i]);
        }
        if (ev->sent) cudaEventDestroy(ev->sent);
        if (ev->part2_done) cudaEventDestroy(ev->part2_done);
        if (ev->ready) cudaFree(ev->ready);
        if (ev->S2) cudaStreamDestroy(ev->S2);
        for (int i = 0; i < 8; i++)
            if (ev->tr[i]) cudaEventDestroy(ev->tr[i]);
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

/* Streams, events and buffers of this call; check what the CPU path checks. */
typedef struct sched {
    cudaStream_t S, C;
    gpu_events *ev;
    size_t ns;   /* elements of the states of all heads */
    int64_t de;  /* elements of one head's state */
    int r, W;
    int ng;      /* head groups the chain pipelines */
    int put;     /* the states travel by one-sided puts (window_for), else send/receive */
    int lasp2;   /* the mode is LASP-2 (else the chain) */
    int64_t BH;
} sched;

/* Group i of s->ng: heads BH·i/ng .. BH·(i+1)/ng − 1 */
static lasp_heads group(const sched *s, int i) {
    const int64_t b0 = s->BH * i / s->ng, b1 = s->BH * (i + 1) / s->ng;
    lasp_heads hs = {b0, b1 - b0};
    return hs;
}

/* How many head groups the chain pipelines: LASP_SP_GROUPS (default DEFAULT_GROUPS), at most one a head.
 * With one group a state travels while its receiver waits; with two, group 0's travels while group 1's
 * local half runs, and group 1's while group 0 finishes — slower in practice (the file's header). */
#define DEFAULT_GROUPS 1
static int n_groups(int64_t BH) {
    const char *env = getenv("LASP_SP_GROUPS");
    int ng = env && atoi(env) > 0 ? atoi(env) : DEFAULT_GROUPS;
    if (ng > MAX_GROUPS) ng = MAX_GROUPS;
    return ng > BH ? (int)BH : ng;
}

static lasp_status prepare(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, lasp_sp_cache *cache, int for_bwd,
                           sched *s) {
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    if (!cache) return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: the state cache is NULL");
    if (cache->n && !cache->on_device)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: the cache holds host buffers of a CPU run");
    s->ns = (size_t)(a->B * a->H * a->d * a->e);
    s->de = a->d * a->e, s->BH = a->B * a->H;
    s->r = sp->sp_rank, s->W = sp->sp_size;
    s->ng = sp->mode == LASP_SP_CHAIN ? n_groups(s->BH) : 1;
    s->lasp2 = sp->mode == LASP_SP_LASP2;
    const size_t work = (sp->mode == LASP_SP_LASP2 ? (size_t)s->W + 1 : 2) * s->ns;
    size_t seg_bytes = 0;
    LASP_TRY(lasp_attn_cuda_saved_bytes(ctx, a, &seg_bytes));
    if (for_bwd) {
        if (!cache->gpu || cache->n < s->ns || cache->work_n < work || cache->seg_n * sizeof(float) < seg_bytes)
            return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: the cache does not hold a forward of this shape "
                             "(hint: run the forward with the same desc and mode first)");
    } else {
        cache->on_device = 1;
        LASP_TRY(grow(ctx, &cache->kv_in, &cache->n, s->ns));
        LASP_TRY(grow(ctx, &cache->work, &cache->work_n, work));
        LASP_TRY(grow(ctx, &cache->seg, &cache->seg_n, seg_bytes / sizeof(float)));
        if (!cache->gpu) {
            gpu_events *ev = (gpu_events *)calloc(1, sizeof *ev);
            if (!ev) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "SP on the GPU: no memory for events");
            cache->gpu = ev; /* freed with the cache, whatever below fails */
            for (int i = 0; i < MAX_GROUPS; i++) {
                CU_TRY(ctx, cudaEventCreateWithFlags(&ev->local_done[i], cudaEventDisableTiming), "cudaEventCreate");
                CU_TRY(ctx, cudaEventCreateWithFlags(&ev->state_ready[i], cudaEventDisableTiming), "cudaEventCreate");
            }
            CU_TRY(ctx, cudaEventCreateWithFlags(&ev->sent, cudaEventDisableTiming), "cudaEventCreate");
            const char *tr = getenv("LASP_SP_TRACE");
            if ((ev->trace = tr && tr[0] == '1'))
                for (int i = 0; i < 8; i++) CU_TRY(ctx, cudaEventCreate(&ev->tr[i]), "cudaEventCreate");
        }
    }
    s->ev = (gpu_events *)cache->gpu;
    LASP_TRY(lasp_attn_cuda_sp_leave_sms(ctx, lasp_sp_comm_ctas()));
    void *st = NULL;
    LASP_TRY(lasp_attn_cuda_stream(ctx, &st));
    s->S = (cudaStream_t)st;
    s->C = (cudaStream_t)lasp_comm_stream(sp->sp);
    if (!s->C) return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU needs NCCL communicators");
    /* the previous call's send may still read the buffer this call's local half writes */
    if (s->ev->sent_pending) {
        CU_TRY(ctx, cudaStreamWaitEvent(s->S, s->ev->sent, 0), "cudaStreamWaitEvent");
        s->ev->sent_pending = 0;
    }
    return LASP_OK;
}

static void trace(const sched *s, int i, cudaStream_t st) {
    if (s->ev->trace) cudaEventRecord(s->ev->tr[i], st);
}

/* S's local half of group i is done: C may use its result. */
static lasp_status hand_to_comm(lasp_ctx *ctx, const sched *s, int fwd, int i) {
    if (i == s->ng - 1) trace(s, fwd ? 1 : 5, s->S);
    CU_TRY(ctx, cudaEventRecord(s->ev->local_done[i], s->S), "cudaEventRecord");
    CU_TRY(ctx, cudaStreamWaitEvent(s->C, s->ev->local_done[i], 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* C has group i's incoming state: S (or S2) may finish that group (wait_for_state, just before it does). */
static lasp_status state_here(lasp_ctx *ctx, const sched *s, int fwd, int i) {
    if (i == s->ng - 1) trace(s, fwd ? 2 : 6, s->C);
    CU_TRY(ctx, cudaEventRecord(s->ev->state_ready[i], s->C), "cudaEventRecord");
    return LASP_OK;
}
static lasp_status wait_for_state(lasp_ctx *ctx, const sched *s, int i, cudaStream_t st) {
    CU_TRY(ctx, cudaStreamWaitEvent(st, s->ev->state_ready[i], 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* After the send: remembered, so that the next call waits for it before reusing the buffer. */
static lasp_status mark_sent(lasp_ctx *ctx, const sched *s) {
    CU_TRY(ctx, cudaEventRecord(s->ev->sent, s->C), "cudaEventRecord");
    s->ev->sent_pending = 1;
    return LASP_OK;
}

/* LASP_SP_SPLIT (default 0 with puts where a rank's KV_in comes from one rank — the chain, LASP-2 at W 2 —
 * else 2; any of 0–3 to compare): 0 runs the finish in one
 * launch once the state is here. Otherwise a rank waiting for KV_in first runs the finishing half's
 * blocks that KV_in cannot reach — at the usual slopes the decay to most segments of a long piece is
 * exactly 0 in fp32, so the hop hides behind them; the output equals the one-launch result up to rounding
 * (k_out_tma carries the state from segment to segment along runs, which are cut differently for one
 * launch and for two). Then no sender needs to wait for its send in the forward either (after_send).
 * 2: part 2 on a stream of its own (highest priority), launched as the state arrives, so that its CTAs
 * take SMs as part 1's free them instead of starting after part 1's last one: one tail, not two. With the
 * persistent output pass (a CTA an SM, each over a run of segments) that is what pays: on 2 × H100
 * (2026-11-26, T_local 32768, chain, 2 SMs left and NCCL on 2 CTAs, one launch of the bench each) 1 → 2
 * took the layer from 1.112 to 1.080 × one GPU; with one CTA a block (before the runs) 2 was no faster
 * than 1.
 * 3: both parts in one launch, each CTA running part 2's blocks after its part 1's once a flag the
 * communicator's stream sets after the state says it is here (lasp_attn_fwd_cuda_finish_when): the one
 * tail of a single launch. Needs SMs left to the transfer (lasp_sp_comm_ctas() ≥ 1, else 2) and the
 * sm_90a output pass (else 2).
 * Measured (bench/RESULTS.md, 2 × and 4 × H100, T_local 32768): with puts the chain is fastest in one
 * launch (W 2: 0 1.033, 2 1.053, 3 1.064; W 4: 0 1.092, 3 1.177, 2 1.224) — while part 1 holds the SMs
 * the state's own kernels on C run slower, and with puts the state comes early enough to wait for; LASP-2
 * at W 4, whose states come later, gains from the split (2 1.096, 0 1.125–1.139), but at W 2, where its one
 * state comes as the chain's does, loses by it (2 × H100, alternating rounds: 0 1.025 / 1.027, 2 1.062 /
 * 1.060); with send/receive the state is late and 2 pays (W 2 chain 1.065–1.072 against 1.113 for 1). */
static int split_finish(const sched *s) {
    const char *e = getenv("LASP_SP_SPLIT");
    if (!e) return s->put && (!s->lasp2 || s->W == 2) ? 0 : 2;
    return e[0] == '0' ? 0 : e[0] == '1' ? 1 : e[0] == '3' ? 3 : 2;
}

/* the flags of LASP_SP_SPLIT=3, made on first use (zero: no epoch yet) */
static lasp_status ready_flags(lasp_ctx *ctx, gpu_events *ev) {
    if (ev->ready) return LASP_OK;
    CU_TRY(ctx, cudaMalloc((void **)&ev->ready, MAX_GROUPS * sizeof(unsigned)), "cudaMalloc of the ready flags");
    CU_TRY(ctx, cudaMemset(ev->ready, 0, MAX_GROUPS * sizeof(unsigned)), "zeroing the ready flags");
    return LASP_OK;
}

/* the stream and event of LASP_SP_SPLIT=2, made on first use */
static lasp_status second_stream(lasp_ctx *ctx, gpu_events *ev) {
    if (ev->S2) return LASP_OK;
    int lo = 0, hi = 0;
    CU_TRY(ctx, cudaDeviceGetStreamPriorityRange(&lo, &hi), "cudaDeviceGetStreamPriorityRange");
    CU_TRY(ctx, cudaStreamCreateWithPriority(&ev->S2, cudaStreamNonBlocking, hi), "cudaStreamCreateWithPriority");
    CU_TRY(ctx, cudaEventCreateWithFlags(&ev->part2_done, cudaEventDisableTiming), "cudaEventCreate");
    return LASP_OK;
}

/* NCCL runs a send or a receive as a kernel on the communication stream, and it holds its SMs from launch
 * to completion. Measured on 2 H100s (LASP_SP_TRACE): a receive launched at the start of the layer spun
 * through the whole local half and slowed that half by 10-20 %, and a send queued behind a finishing half
 * that fills every SM waited for SMs to free. So a receive is enqueued after the local half's event (its
 * kernel starts when the local half is done, the time the sender's state is due), and a rank that sent
 * starts its finishing half once the send is done (LASP_SP_WAIT_SEND=0: without that wait, to compare).
 * With head groups the last send runs beside the first group's finishing half, and the next rank needs
 * that state only once its own first group is finished; with the forward's finish split (split_finish)
 * the next rank has its first part to run meanwhile: no wait then unless asked for. */
static lasp_status after_send(lasp_ctx *ctx, const sched *s, int sent, int fwd) {
    /* LASP_SP_WAIT_SEND: 1 both passes, f the forward only, 0 never; unset: with one group, the backward,
     * and the forward where the finish is not split */
    const char *w = getenv("LASP_SP_WAIT_SEND");
    const int wait = w ? !(w[0] == '0' || (w[0] == 'f' && !fwd)) : s->ng == 1 && !(fwd && split_finish(s));
    if (sent && wait) CU_TRY(ctx, cudaStreamWaitEvent(s->S, s->ev->sent, 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* after the backward: the phases of the layer on this rank, in ms from the forward's start */
static void trace_print(const sched *s) {
    if (!s->ev->trace || cudaEventSynchronize(s->ev->tr[7]) != cudaSuccess) return;
    float t[8] = {0};
    for (int i = 1; i < 8; i++) cudaEventElapsedTime(&t[i], s->ev->tr[0], s->ev->tr[i]);
    fprintf(stderr,
            "sp-trace rank %d: fwd local %.3f state %.3f end %.3f | bwd start %.3f local %.3f state %.3f end %.3f ms\n",
            s->r, t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

/* LASP_SP_XFER: how the states travel. `put` (the default where the machine allows it): one-sided, into
 * the peer's memory through a window of NCCL symmetric memory (lasp_comm_put_signal), the peer waiting on
 * a counter; `send`: NCCL send/receive, each a kernel on both sides. A receive is a kernel that must find a
 * free SM while the output pass holds all but lasp_sp_comm_ctas() of them, and NCCL moves a 1 MB state
 * on the few CTAs it is allowed: on 2 × H100 (LASP_SP_TRACE, T_local 32768) the state took ~85 µs from the
 * sender's combine to the receiver's stream, on the forward's critical path. A put is the sender's kernel
 * alone. Where no window can be made (ranks not all on NVLink, no symmetric memory) it is send/receive. */
enum { FWD = 0, BWD = 1 };

static int put_wanted(void) {
    const char *e = getenv("LASP_SP_XFER");
    return !(e && !strcmp(e, "send"));
}

/* The window, per direction W slots of a state (slot p: what rank p sent), then the counters: data[dir][p]
 * (raised by p after its put into slot p) and ack[dir][q] (raised by q once it has read our slot there).
 * Made (collectively: every rank reaches its first call of a shape together) for this shape's states. */
static lasp_status window_for(lasp_ctx *ctx, lasp_sp *sp, sched *s) {
    s->put = 0;
    if (!put_wanted() || sp->win_why[0] || s->W < 2) return LASP_OK;
    if (sp->win && sp->win_states == s->ns) return s->put = 1, LASP_OK;
    lasp_comm_window_free(sp->win);
    sp->win = NULL, sp->calls[FWD] = sp->calls[BWD] = 0; /* a new window's counters start at zero */
    lasp_status st = lasp_comm_window_make(sp->sp, 2 * (size_t)s->W * s->ns * sizeof(float), 4 * s->W, &sp->win,
                                           &ctx->err);
    if (st == LASP_ERR_UNSUPPORTED) { /* send/receive from now on, and the reason kept for reports */
        snprintf(sp->win_why, sizeof sp->win_why, "NCCL send/receive (%.170s)", ctx->err.msg);
        return LASP_OK;
    }
    LASP_TRY(st);
    sp->win_states = s->ns;
    return s->put = 1, LASP_OK;
}
static size_t slot_bytes(const sched *s, int dir, int p) { return ((size_t)dir * s->W + p) * s->ns * sizeof(float); }
static float *slot(const lasp_sp *sp, const sched *s, int dir, int p) {
    return (float *)((char *)lasp_comm_window_base(sp->win) + slot_bytes(s, dir, p));
}
/* Whether rank p's piece follows ours in the direction of travel (forward: later in the sequence) */
static int later(const sched *s, int dir, int p) { return dir == FWD ? p > s->r : p < s->r; }
static int data_flag(const sched *s, int dir, int p) { return dir * 2 * s->W + p; }
static int ack_flag(const sched *s, int dir, int q) { return dir * 2 * s->W + s->W + q; }

/* The transfers of a direction are numbered: seq = this call's number · groups + group + 1, the same on every
 * rank (every rank makes every call). A slot may be written again once its reader acknowledged the
 * transfer one call back (seq − per_call). */
static unsigned seq_of(const lasp_sp *sp, int dir, int per_call, int i) {
    return (sp->calls[dir] - 1) * (unsigned)per_call + (unsigned)i + 1;
}

/* Elements [off, off + cnt) of x into rank `to`'s slot of ours (after `to` read the last transfer there). */
static lasp_status put_state(lasp_ctx *ctx, lasp_sp *sp, const sched *s, int dir, int per_call, int i,
                             const float *x, size_t off, size_t cnt, int to) {
    const unsigned seq = seq_of(sp, dir, per_call, i);
    if (seq > (unsigned)per_call)
        LASP_TRY(lasp_comm_wait_signal(sp->win, ack_flag(s, dir, to), seq - per_call, &ctx->err));
    return lasp_comm_put_signal(sp->win, x + off, cnt * sizeof(float), slot_bytes(s, dir, s->r) + off * sizeof(float),
                                to, data_flag(s, dir, s->r), seq, &ctx->err);
}

/* Wait for rank `from`'s transfer into our window; with dst, copy it out and acknowledge at once. */
static lasp_status take_state(lasp_ctx *ctx, lasp_sp *sp, const sched *s, int dir, int per_call, int i, int from,
                              float *dst, size_t off, size_t cnt) {
    const unsigned seq = seq_of(sp, dir, per_call, i);
    LASP_TRY(lasp_comm_wait_signal(sp->win, data_flag(s, dir, from), seq, &ctx->err));
    if (!dst) return LASP_OK;
    CU_TRY(ctx, cudaMemcpyAsync(dst + off, slot(sp, s, dir, from) + off, cnt * sizeof(float),
                                cudaMemcpyDeviceToDevice, s->C), "state copy");
    return lasp_comm_put_signal(sp->win, NULL, 0, 0, from, ack_flag(s, dir, s->r), seq, &ctx->err);
}

/* LASP-2 read the gathered slots in place: acknowledge them to their senders. */
static lasp_status release_slots(lasp_ctx *ctx, lasp_sp *sp, const sched *s, int dir) {
    for (int p = 0; p < s->W; p++)
        if (p != s->r && !later(s, dir, p))
            LASP_TRY(lasp_comm_put_signal(sp->win, NULL, 0, 0, p, ack_flag(s, dir, s->r), seq_of(sp, dir, 1, 0),
                                          &ctx->err));
    return LASP_OK;
}

/* LASP-2's gather of the states x into G ([W][ns]) on C. With puts (s->put): a rank's state goes only to
 * the ranks whose pieces follow its own in the direction of travel — the only ones whose Horner sums read
 * it — straight into their windows, and it waits for the earlier ranks' (G is then the window's slots,
 * read in place and acknowledged by release_slots); half the traffic of an all-gather. Otherwise all of
 * them, by W − 1 grouped send/receive pairs, in
 * step k rank r sending to r + k and receiving from r − k (every pair of a step matches, so no step can
 * wait on another), and its own state copied in place; LASP_SP_GATHER=coll uses NCCL's all-gather, to
 * compare. Beside the output pass on the 4 SMs left to the communicator, on 2 × H100 (2026-11-26, T_local
 * 32768): the all-gather's state arrived ~210 µs after the local half, the pairs' as fast as the chain's
 * send, and the layer went 1.130–1.133 → 1.072–1.082 × one GPU (bench/RESULTS.md); at W 4 (4 × H100)
 * the pairs gave 1.37 × one GPU, the puts 1.10. */
static lasp_status gather_states(lasp_ctx *ctx, lasp_sp *sp, const sched *s, int dir, const float *x, float **Gp) {
    float *G = *Gp;
    if (s->put) { /* G is our window's slots of this direction (our own unused: the boundary states come from a
                * combine) */
        G = *Gp = slot(sp, s, dir, 0);
        for (int p = 0; p < s->W; p++)
            if (later(s, dir, p)) LASP_TRY(put_state(ctx, sp, s, dir, 1, 0, x, 0, s->ns, p));
        for (int p = 0; p < s->W; p++)
            if (p != s->r && !later(s, dir, p)) LASP_TRY(take_state(ctx, sp, s, dir, 1, 0, p, NULL, 0, 0));
        return LASP_OK;
    }
    const char *e = getenv("LASP_SP_GATHER");
    if (e && !strcmp(e, "coll")) return lasp_comm_allgather(sp->sp, x, G, s->ns, LASP_F32, &ctx->err);
    CU_TRY(ctx, cudaMemcpyAsync(G + (size_t)s->r * s->ns, x, s->ns * sizeof(float), cudaMemcpyDeviceToDevice, s->C),
           "state copy");
    for (int k = 1; k < s->W; k++) {
        const int to = (s->r + k) % s->W, from = (s->r - k + s->W) % s->W;
        LASP_TRY(lasp_comm_sendrecv(sp->sp, x, s->ns, to, G + (size_t)from * s->ns, s->ns, from, LASP_F32, &ctx->err));
    }
    return LASP_OK;
}

static lasp_status copy_state(lasp_ctx *ctx, float *dst, const float *src, size_t ns, cudaStream_t st) {
    if (src) CU_TRY(ctx, cudaMemcpyAsync(dst, src, ns * sizeof(float), cudaMemcpyDeviceToDevice, st), "state copy");
    else CU_TRY(ctx, cudaMemsetAsync(dst, 0, ns * sizeof(float), st), "state zero");
    return LASP_OK;
}

extern "C" lasp_status lasp_sp_attn_fwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q,
                                             const void *k, const void *v, const float *slopes, const float *kv_in,
                                             void *o, float *kv_out, lasp_sp_cache *cache) {
    lasp_err *err = &ctx->err;
    sched s;
    LASP_TRY(prepare(ctx, sp, a, cache, 0, &s));
    LASP_TRY(window_for(ctx, sp, &s));
    const int put = s.put;
    sp->calls[FWD]++;
    trace(&s, 0, s.S);
    float *KV = cache->kv_in, *m = cache->work;
    const int r = s.r, W = s.W;
    const int has_in = r > 0 || kv_in != NULL;
    s.ev->fwd_has_in = has_in;
    /* A rank whose KV_in comes from another first finishes the segments KV_in cannot reach (split_finish) */
    int split = r > 0 ? split_finish(&s) : 0;
    if (split == 3 && lasp_sp_comm_ctas() < 1) split = 2;
    if (split == 3) {
        LASP_TRY(ready_flags(ctx, s.ev));
        s.ev->epoch++;
    }

    if (sp->mode == LASP_SP_CHAIN) {
        /* group by group: the local half, then (on C) its state in, combined, out; S goes on to the next
         * group's local half while that state travels */
        for (int i = 0; i < s.ng; i++) {
            const lasp_heads hs = group(&s, i);
            const size_t off = (size_t)(hs.bh0 * s.de), cnt = (size_t)(hs.n * s.de);
            lasp_comm_req *rx = NULL, *tx = NULL;
            LASP_TRY(lasp_attn_fwd_cuda_local(ctx, a, hs, q, k, v, slopes, m, cache->seg));
            LASP_TRY(hand_to_comm(ctx, &s, 1, i));
            if (r > 0 && put) {
                LASP_TRY(take_state(ctx, sp, &s, FWD, s.ng, i, r - 1, KV, off, cnt));
            } else if (r > 0) { /* the receive starts after S's event: after_send says why */
                LASP_TRY(lasp_comm_irecv(sp->sp, KV + off, cnt, r - 1, LASP_F32, &rx, err));
                LASP_TRY(lasp_comm_wait(sp->sp, rx, err));
            } else {
                LASP_TRY(copy_state(ctx, KV + off, kv_in ? kv_in + off : NULL, cnt, s.C));
            }
            LASP_TRY(state_here(ctx, &s, 1, i)); /* S may finish group i while C serves the next rank */
            if (split == 3) LASP_TRY(lasp_attn_cuda_signal(ctx, s.ev->ready + i, s.ev->epoch, s.C));
            if (has_in) LASP_TRY(combine(ctx, s.C, a, hs, slopes, KV, m, m)); /* KV_out = γ KV_in + m (else m) */
            if (r < W - 1 && put) {
                LASP_TRY(put_state(ctx, sp, &s, FWD, s.ng, i, m, off, cnt, r + 1));
            } else if (r < W - 1) {
                LASP_TRY(lasp_comm_isend(sp->sp, m + off, cnt, r + 1, LASP_F32, &tx, err));
                LASP_TRY(lasp_comm_wait(sp->sp, tx, err));
            } else if (kv_out) {
                LASP_TRY(copy_state(ctx, kv_out + off, m + off, cnt, s.C));
            }
        }
        LASP_TRY(mark_sent(ctx, &s));
        LASP_TRY(after_send(ctx, &s, r < W - 1, 1));
    } else {
        /* LASP-2: rank 0 folds the sequence's kv_in into its contribution (MATH.md §4); its own KV_in is
         * the sequence's, so its finishing half need not wait for the all-gather */
        float *G = m + s.ns;
        LASP_TRY(lasp_attn_fwd_cuda_local(ctx, a, ALL, q, k, v, slopes, m, cache->seg));
        LASP_TRY(hand_to_comm(ctx, &s, 1, 0));
        if (r == 0) {
            LASP_TRY(copy_state(ctx, KV, kv_in, s.ns, s.C));
            LASP_TRY(state_here(ctx, &s, 1, 0));
            if (kv_in) LASP_TRY(combine(ctx, s.C, a, ALL, slopes, kv_in, m, m));
        }
        LASP_TRY(gather_states(ctx, sp, &s, FWD, m, &G));
        if (r > 0) LASP_TRY(horner(ctx, s.C, a, slopes, G, 0, r, 1, KV));
        if (r > 0) LASP_TRY(state_here(ctx, &s, 1, 0));
        /* the sequence's KV_out: with puts γ KV_in + m (G has no slot of ours), else the sum over G */
        if (r == W - 1 && kv_out && put) LASP_TRY(combine(ctx, s.C, a, ALL, slopes, KV, m, kv_out));
        else if (r == W - 1 && kv_out) LASP_TRY(horner(ctx, s.C, a, slopes, G, 0, W, 1, kv_out));
        if (put) LASP_TRY(release_slots(ctx, sp, &s, FWD));
        if (split == 3) LASP_TRY(lasp_attn_cuda_signal(ctx, s.ev->ready, s.ev->epoch, s.C));
        LASP_TRY(mark_sent(ctx, &s));
        LASP_TRY(after_send(ctx, &s, put ? r < W - 1 : W > 1, 1));
    }
    if (split == 3) {
        /* one launch a group, enqueued now: its CTAs wait on the device for the flag, not S for C */
        lasp_status st = LASP_OK;
        for (int i = 0; st == LASP_OK && i < s.ng; i++)
            st = lasp_attn_fwd_cuda_finish_when(ctx, a, group(&s, i), q, k, v, slopes, KV, o, cache->seg,
                                                s.ev->ready + i, s.ev->epoch);
        if (st == LASP_ERR_UNSUPPORTED) split = 2; /* refused before anything was enqueued (same for every group) */
        else if (st != LASP_OK) return st;
        /* what S runs next (the backward's dq) reads KV_in, which a launch with no block in part 2 never waited for */
        for (int i = 0; split == 3 && i < s.ng; i++) LASP_TRY(wait_for_state(ctx, &s, i, s.S));
    }
    if (split == 2) LASP_TRY(second_stream(ctx, s.ev));
    for (int i = 0; split && split != 3 && i < s.ng; i++)
        LASP_TRY(lasp_attn_fwd_cuda_finish(ctx, a, group(&s, i), 1, q, k, v, slopes, NULL, o, cache->seg, NULL));
    for (int i = 0; split != 3 && i < s.ng; i++) {
        /* part 2 (or the whole finish) once the state is here: on S, or beside part 1 on S2 (state_ready
         * follows the local half on C, so S2 needs no other order) */
        cudaStream_t st = split == 2 ? s.ev->S2 : s.S;
        LASP_TRY(wait_for_state(ctx, &s, i, st));
        LASP_TRY(lasp_attn_fwd_cuda_finish(ctx, a, group(&s, i), split ? 2 : 0, q, k, v, slopes, has_in ? KV : NULL,
                                           o, cache->seg, split == 2 ? (void *)st : NULL));
    }
    if (split == 2) {
        CU_TRY(ctx, cudaEventRecord(s.ev->part2_done, s.ev->S2), "cudaEventRecord");
        CU_TRY(ctx, cudaStreamWaitEvent(s.S, s.ev->part2_done, 0), "cudaStreamWaitEvent");
    }
    trace(&s, 3, s.S);
    return LASP_OK;
}

extern "C" lasp_status lasp_sp_attn_bwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q,
                                             const void *k, const void *v, const float *slopes,
                                             const lasp_sp_cache *cache, const void *do_, const float *dkv_out,
                                             void *dq, void *dk, void *dv, float *dkv_in) {
    lasp_err *err = &ctx->err;
    sched s;
    LASP_TRY(prepare(ctx, sp, a, (lasp_sp_cache *)cache, 1, &s));
    LASP_TRY(window_for(ctx, sp, &s));
    const int put = s.put;
    sp->calls[BWD]++;
    trace(&s, 4, s.S);
    float *g = cache->work, *dKV = cache->work + s.ns;
    const int r = s.r, W = s.W;
    const float *in = dkv_out;  /* dKV_out of this piece */
    const float *kv_in = s.ev->fwd_has_in ? cache->kv_in : NULL; /* none: dq adds nothing */
    /* the finishing half adds dKV_out as it reads the states (the output pass reads a state once a run);
     * LASP_SP_FOLD=1 folds it into the segment states on C beside dq instead, to compare: that moves every
     * segment state through DRAM on the few SMs the communicator is left (lasp_sp_comm_ctas) */
    const char *fe = getenv("LASP_SP_FOLD");
    const int fold = fe && fe[0] == '1';

    if (sp->mode == LASP_SP_CHAIN) {
        /* group by group: the piece's g first, handed to C at once; C receives that group's dKV_out (folds
         * it into the reverse segment states under LASP_SP_FOLD=1), forms dKV_in and sends it, all while S
         * computes */
        if (r < W - 1) in = dKV;
        for (int i = 0; i < s.ng; i++) {
            const lasp_heads hs = group(&s, i);
            const size_t off = (size_t)(hs.bh0 * s.de), cnt = (size_t)(hs.n * s.de);
            lasp_comm_req *rx = NULL, *tx = NULL;
            LASP_TRY(lasp_attn_bwd_cuda_local(ctx, a, hs, q, k, v, slopes, do_, g));
            LASP_TRY(hand_to_comm(ctx, &s, 0, i));
            if (r < W - 1 && put) {
                LASP_TRY(take_state(ctx, sp, &s, BWD, s.ng, i, r + 1, dKV, off, cnt));
            } else if (r < W - 1) {
                LASP_TRY(lasp_comm_irecv(sp->sp, dKV + off, cnt, r + 1, LASP_F32, &rx, err));
                LASP_TRY(lasp_comm_wait(sp->sp, rx, err));
            }
            if (in && fold) LASP_TRY(lasp_attn_bwd_cuda_fold(ctx, a, hs, q, k, do_, slopes, in, s.C)); /* beside S */
            LASP_TRY(state_here(ctx, &s, 0, i)); /* S may finish group i while C serves the next rank */
            if (in) LASP_TRY(combine(ctx, s.C, a, hs, slopes, in, g, g)); /* dKV_in = γ dKV_out + g (else g) */
            if (r > 0 && put) {
                LASP_TRY(put_state(ctx, sp, &s, BWD, s.ng, i, g, off, cnt, r - 1));
            } else if (r > 0) {
                LASP_TRY(lasp_comm_isend(sp->sp, g + off, cnt, r - 1, LASP_F32, &tx, err));
                LASP_TRY(lasp_comm_wait(sp->sp, tx, err));
            } else if (dkv_in) {
                LASP_TRY(copy_state(ctx, dkv_in + off, g + off, cnt, s.C));
            }
        }
        /* dq needs only the forward's segment states and the cached KV_in: it hides the states' travel */
        LASP_TRY(lasp_attn_bwd_cuda_dq(ctx, a, ALL, k, v, slopes, kv_in, do_, dq, cache->seg));
        LASP_TRY(mark_sent(ctx, &s));
        LASP_TRY(after_send(ctx, &s, r > 0, 0));
    } else {
        float *G = cache->work + s.ns;
        LASP_TRY(lasp_attn_bwd_cuda_local(ctx, a, ALL, q, k, v, slopes, do_, g));
        LASP_TRY(hand_to_comm(ctx, &s, 0, 0));
        LASP_TRY(lasp_attn_bwd_cuda_dq(ctx, a, ALL, k, v, slopes, kv_in, do_, dq, cache->seg)); /* while G gathers */
        if (r == W - 1 && dkv_out) LASP_TRY(combine(ctx, s.C, a, ALL, slopes, dkv_out, g, g));
        float *dKVo = put ? cache->work + s.ns : g; /* dKV_out: with puts G is the window and work is free */
        LASP_TRY(gather_states(ctx, sp, &s, BWD, g, &G));
        if (r == 0 && dkv_in && !put) LASP_TRY(horner(ctx, s.C, a, slopes, G, W - 1, -1, -1, dkv_in));
        if (r < W - 1) {
            LASP_TRY(horner(ctx, s.C, a, slopes, G, W - 1, r, -1, dKVo)); /* without puts g is free by now */
            in = dKVo;
        }
        if (in && fold) LASP_TRY(lasp_attn_bwd_cuda_fold(ctx, a, ALL, q, k, do_, slopes, in, s.C)); /* beside dq */
        LASP_TRY(state_here(ctx, &s, 0, 0));
        /* with puts the sequence's dKV_in = γ dKV_out + g, after the state S waits for */
        if (r == 0 && dkv_in && put) LASP_TRY(combine(ctx, s.C, a, ALL, slopes, in, g, dkv_in));
        if (put) LASP_TRY(release_slots(ctx, sp, &s, BWD));
        LASP_TRY(mark_sent(ctx, &s));
    }
    for (int i = 0; i < s.ng; i++) { /* dKV_out folded in, or added here */
        LASP_TRY(wait_for_state(ctx, &s, i, s.S));
        LASP_TRY(lasp_attn_bwd_cuda_finish(ctx, a, group(&s, i), q, k, v, slopes, do_, fold ? NULL : in, dk, dv));
    }
    trace(&s, 7, s.S);
    trace_print(&s);
    return LASP_OK;
}
