/* sp.h — sequence parallelism (docs/MATH.md §3–5), the internals of lasp.h's lasp_sp_*: world = dp × sp,
 * each SP group holds one set of sequences cut into sp contiguous pieces, and only fp32 states cross
 * between its ranks.
 *
 * Process layout: SP groups are contiguous ranks [i·sp, (i+1)·sp), DP groups strided {j, j+sp, …}.
 * The communicators are made once, by splitting the world, in lasp_sp_create. On host communicators the
 * schedule is sp.c's; on NCCL communicators sp_cuda.cu's (the same steps, on device memory). */
#ifndef LASP_SP_H
#define LASP_SP_H

#include "comm/comm.h"
#include "core/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lasp_sp {
    lasp_comm *world, *sp, *dp;   /* sp and dp are owned (split from world), world is borrowed */
    int world_size, world_rank;
    int sp_size, sp_rank;         /* piece index within the sequence */
    int dp_size, dp_rank;         /* which slice of the batch */
    lasp_sp_params p;
    lasp_sp_trace trace;          /* p.trace: the last layer traced (sp_cuda.cu) */
    void *gpu;                    /* the GPU transport's state (sp_cuda_xfer.cu), made on first use */
};

/* What the forward keeps for the backward (KV state caching): the state received from the previous
 * piece, so the backward runs no second forward chain; scratch that the backward needs too (it gets the
 * cache const); on GPUs the piece's segment states and the schedule's events. Buffers grow to the
 * largest shape seen. */
struct lasp_sp_cache {
    lasp_attn_desc fwd; /* the shape of the last forward, which the backward must match */
    int on_device;    /* the buffers are GPU memory (the SP communicators are NCCL) */
    float *kv_in;     /* [B, H, d, e]: state entering this rank's piece */
    size_t n;         /* elements allocated */
    float *work;      /* local states and receive buffers ((sp + 1) states for LASP-2) */
    size_t work_n;
    float *seg;       /* GPU: the forward's segment states of the piece, for the backward's dq */
    size_t seg_n;
    void *gpu;        /* GPU: the schedule's CUDA events (sp_cuda.cu) */
    float *base;      /* the baselines: the head split's q | k | v (ulysses), every piece's k | v and states
                       * (allgather) */
    size_t base_n;
};

/* *p grown (realloc'd) to at least `want` floats; an error names `what` (host buffers of the cache). */
lasp_status lasp_sp_grow(float **p, size_t *have, size_t want, lasp_err *err, const char *what);

/* Whether a backward of shape a may use the cache: its forward had the same shape (the block aside). */
int lasp_sp_cache_matches(const lasp_sp_cache *c, const lasp_attn_desc *a);

/* The baselines' schedules on host communicators (sp_baselines.c), which lasp_sp_attn_fwd / _bwd hand the
 * modes ulysses and allgather to after their common checks; check: what these modes ask of a shape
 * (every rank decides alike, before any communication). */
lasp_status lasp_sp_base_check(const lasp_sp *sp, const lasp_attn_desc *a, lasp_err *err);
lasp_status lasp_sp_base_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                             lasp_sp_cache *c);
lasp_status lasp_sp_base_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const lasp_sp_cache *c, const float *do_,
                             const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in);

#ifdef __cplusplus
}
#endif

#endif
