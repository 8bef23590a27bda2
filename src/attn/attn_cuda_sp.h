/* attn_cuda_sp.h — the CUDA op in halves, for the sequence-parallel schedule of docs/MATH.md §3: the
 * local half needs nothing from other ranks, the finishing half takes the state that arrived.
 *
 *   forward   local:  segment states of the piece, scanned from a zero state, into `seg` (the caller's
 *                     buffer of lasp_attn_cuda_saved_bytes) → m (the piece's own state)
 *             finish: the outputs (intra + inter), adding kv_in to the segment states in `seg` → o; in two
 *                     parts if wanted: the segments kv_in cannot reach (their decay underflows to 0 in
 *                     fp32: most of a long piece at the usual slopes) before kv_in has arrived
 *   backward  local:  the reverse segment states of the piece from a zero gradient → g (the piece's own
 *                     dKV_in contribution), first, so that g travels while dq is computed
 *             dq:     complete on its own from the forward's `seg` and the cached kv_in (no state pass)
 *             finish: dv and dk, adding dkv_out as they read the states
 *
 * So the SP critical path holds only KV_out = γ KV_in + m (a d×e axpy) and the message; no input is read
 * twice beyond what the one-device op reads. Between the backward's halves the context's workspace holds
 * the piece's reverse segment states: run nothing else on this context in between but dq. `seg` must stay
 * untouched from the forward's local half to the backward's dq. All pointers are device memory; work is
 * enqueued on the context's stream (lasp_ctx_cuda_stream) unless a call names another. */
#ifndef LASP_ATTN_CUDA_SP_H
#define LASP_ATTN_CUDA_SP_H

#include "core/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How many SMs the halves' persistent kernels (the output passes) leave free, for the communicator's
 * kernels that run beside them (default 0: all SMs are the op's). A transfer's kernel holds an SM from its
 * launch to its end, and a persistent kernel holds every SM it got to its own end: without room, a send or
 * a receive enqueued beside an output pass waits for the whole pass. */
lasp_status lasp_attn_cuda_sp_leave_sms(lasp_ctx *ctx, int n);

lasp_status lasp_attn_fwd_cuda_local(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                     const void *v, const float *slopes, float *m, float *seg);
/* part: 0 the whole finish; 1 only the segments that kv_in cannot reach in fp32 (its decay to them is
 * exactly 0: kv_in is not read, and may still be in flight), 2 the rest. The two parts write disjoint
 * outputs: part 2 may run after part 1 on the context's stream or beside it on another (`stream`, NULL:
 * the context's), ordered after the local half by the caller. */
lasp_status lasp_attn_fwd_cuda_finish(lasp_ctx *ctx, const lasp_attn_desc *a, int part, const void *q, const void *k,
                                      const void *v, const float *slopes, const float *kv_in, void *o,
                                      const float *seg, void *stream);
lasp_status lasp_attn_bwd_cuda_local(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                     const void *v, const float *slopes, const void *do_, float *g);
lasp_status lasp_attn_bwd_cuda_dq(lasp_ctx *ctx, const lasp_attn_desc *a, const void *k, const void *v,
                                  const float *slopes, const float *kv_in, const void *do_, void *dq,
                                  const float *seg);
lasp_status lasp_attn_bwd_cuda_finish(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                      const void *v, const float *slopes, const void *do_, const float *dkv_out,
                                      void *dk, void *dv);

#ifdef __cplusplus
}
#endif

#endif
