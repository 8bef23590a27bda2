/* sp.h — sequence parallelism (MATH.md §3–5): world = dp × sp, each SP group holds one set of
 * sequences cut into sp contiguous pieces, and only fp32 states cross between its ranks.
 *
 * Process layout: SP groups are contiguous ranks [i·sp, (i+1)·sp), DP groups strided {j, j+sp, …}.
 * The communicators are made once, by splitting the world, in lasp_sp_init. */
#ifndef LASP_SP_H
#define LASP_SP_H

#include "comm/comm.h"
#include "core/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lasp_sp_mode {
    LASP_SP_CHAIN = 0,  /* LASP: point-to-point chain r → r+1 (fwd) and back (bwd), KV_in cached */
    LASP_SP_LASP2 = 1,  /* LASP-2: all-gather of the local states, combined locally (MATH.md §4) */
} lasp_sp_mode;

typedef struct lasp_sp {
    lasp_comm *world, *sp, *dp;   /* sp and dp are owned (split from world), world is borrowed */
    int world_size, world_rank;
    int sp_size, sp_rank;         /* piece index within the sequence */
    int dp_size, dp_rank;         /* which slice of the batch */
    lasp_sp_mode mode;
    /* GPU: the one-sided window the states travel through (sp_cuda.cu, made on first use; none where
     * the machine cannot), and the calls made so far in each direction, which number the transfers */
    lasp_comm_window *win;
    size_t win_states;            /* elements of one state slot */
    char win_why[200];            /* set: no window could be made (send/receive), and why */
    unsigned calls[2];            /* forward, backward */
} lasp_sp;

/* SMs the GPU schedule's compute leaves to the SP communicator, and the thread blocks that communicator's
 * transfers may use (NCCL): LASP_SP_LEAVE_SMS, default LASP_SP_COMM_CTAS; 0 gives NCCL its default and the
 * compute every SM. Persistent kernels hold their SMs to their end, so a transfer beside one needs SMs of
 * its own (the header of sp_cuda.cu). */
#define LASP_SP_COMM_CTAS 4
int lasp_sp_comm_ctas(void);

/* Splits world into SP and DP groups; error (with the numbers) if sp does not divide the world. */
lasp_status lasp_sp_init(lasp_comm *world, int sp_size, lasp_sp_mode mode, lasp_sp *out, lasp_err *err);
void lasp_sp_free(lasp_sp *sp);  /* collective once a GPU call made the window: every rank frees together */
/* How this group's GPU states travelled (for reports): one-sided puts, or send/receive and why. */
const char *lasp_sp_transfer(const lasp_sp *sp);

/* What the forward keeps for the backward (KV state caching): the state received from the
 * previous piece, so the backward runs no second forward chain. Owned by the caller; reused
 * across calls of the same shape. */
typedef struct lasp_sp_cache {
    float *kv_in;     /* [B, H, d, e]: state entering this rank's piece */
    size_t n;         /* elements allocated */
    float *work;      /* scratch: local states and receive buffers ((sp + 1) states for LASP-2) */
    size_t work_n;    /* elements allocated */
    float *seg;       /* GPU: the forward's segment states of the piece, for the backward's dq */
    size_t seg_n;     /* elements allocated */
    int on_device;    /* the buffers are GPU memory (the SP communicators are NCCL) */
    void *gpu;        /* the GPU schedule's CUDA events */
} lasp_sp_cache;
void lasp_sp_cache_free(lasp_sp_cache *c);

/* One attention layer over the SP group. With NCCL communicators (lasp_comm_world(LASP_COMM_NCCL))
 * every tensor, slopes and the states are device memory, and q, k, v, o (dq, dk, dv, do) are of
 * a->dtype (f32, bf16 or f16) despite the float* below; the calls are then asynchronous on the
 * op's CUDA stream (src/attn/attn_cuda_sp.h), with the transfers on the communicator's stream. */
/* One attention layer over the SP group. `a` describes this rank's piece (a->T = T_local, a->B the
 * local batch); q, k, v, o are the piece's tensors. kv_in is read only on SP rank 0 (the state
 * entering the whole sequence; NULL = zero), kv_out written only on the last SP rank (NULL = not
 * wanted). The same in the backward: dkv_out is read on the last rank, dkv_in written on rank 0. */
lasp_status lasp_sp_attn_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                             lasp_sp_cache *cache);
lasp_status lasp_sp_attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const lasp_sp_cache *cache, const float *do_,
                             const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in);

#ifdef __cplusplus
}
#endif

#endif
