/* sp_cuda_impl.h — what the GPU schedule's files share (C++, private to src/sp): one call's schedule
 * (streams, events, sizes), the transport that moves a state between ranks (sp_cuda_xfer.cu) and the
 * kernels that combine states (sp_cuda_states.cu). */
#ifndef LASP_SP_CUDA_IMPL_H
#define LASP_SP_CUDA_IMPL_H

#include <cuda_runtime.h>

#include "sp/sp.h"

namespace lasp_sp_cu {

enum { FWD = 0, BWD = 1 }; /* the directions states travel: forward along the sequence, backward against it */

/* A cache's CUDA events and second stream, made by its first forward. */
struct Events {
    cudaEvent_t local_done;  /* S: the local half has produced its m (or g) */
    cudaEvent_t state_ready; /* C: KV_in (dKV_out) is here */
    cudaEvent_t sent;        /* C: the outgoing states have left; their buffer may be written again */
    int sent_pending;        /* `sent` was recorded and no call has waited for it yet */
    int fwd_has_in;          /* the forward's piece had an incoming state (else kv_in is zero) */
    cudaStream_t S2;         /* a split finish's part 2, beside part 1 (made on first use) */
    cudaEvent_t part2_done;  /* S2: part 2 is done; S waits for it */
    /* the SP group's trace: fwd start, local done, state here, end; the same for the bwd (timing events) */
    cudaEvent_t tr[8];
    int trace;
};

/* One call: the op's compute stream S, the SP communicator's stream C, the cache's events, the sizes. */
struct Sched {
    cudaStream_t S, C;
    Events *ev;
    size_t ns;  /* elements of the states of all heads */
    int64_t de; /* elements of one head's state */
    int r, W;
    int put;    /* the states travel by one-sided puts (xfer_prepare), else send/receive */
    int lasp2;  /* the mode is LASP-2 (else the chain) */
};

lasp_status cu_fail(lasp_ctx *ctx, cudaError_t e, const char *what);
#define CU_TRY(ctx, call, what)                                     \
    do {                                                            \
        cudaError_t cu_e_ = (call);                                 \
        if (cu_e_ != cudaSuccess) return cu_fail(ctx, cu_e_, what); \
    } while (0)

/* ---- the transport (sp_cuda_xfer.cu) ---- */
/* Picks how this call's states travel (s->put) and, for puts, makes the group's window for this shape
 * (collective: every rank reaches its first call of a shape together); numbers the call in direction dir. */
lasp_status xfer_prepare(lasp_ctx *ctx, lasp_sp *sp, Sched *s, int dir);
/* On C: this call's state of direction dir from rank `from` into dst (ns elements). */
lasp_status xfer_recv(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir, int from, float *dst);
/* On C: x (ns elements) to rank `to`, once it has read the previous call's state. */
lasp_status xfer_send(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir, const float *x, int to);
/* LASP-2: every rank's state of this call into G ([W][ns]) on C. With puts only the states of the ranks
 * before this one in the direction of travel arrive (the only ones its Horner sums read), and *G becomes
 * the window's slots, read in place: xfer_release once they are read. */
lasp_status xfer_gather(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir, const float *x, float **G);
lasp_status xfer_release(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir);

/* ---- state kernels on a stream (sp_cuda_states.cu), every head's state [B·H][d·e] ---- */
/* out = λ^T · in + local (in NULL: zero); out may alias local */
lasp_status state_combine(lasp_ctx *ctx, cudaStream_t st, const lasp_attn_desc *a, const float *slopes,
                          const float *in, const float *local, float *out);
/* P = Σ over pieces s from `from` towards `to` (exclusive, step ±1) of γ^{distance} G[s], by Horner */
lasp_status state_horner(lasp_ctx *ctx, cudaStream_t st, const lasp_attn_desc *a, const float *slopes,
                         const float *G, int from, int to, int step, float *P);
/* dst = src (src NULL: zero) */
lasp_status state_copy(lasp_ctx *ctx, float *dst, const float *src, size_t ns, cudaStream_t st);

}  // namespace lasp_sp_cu

#endif
