/* attn.h — the op's internal interface: validation, the CPU chunked implementation and the pieces
 * the sequence-parallel layer schedules one by one (MATH.md §3: intra first, inter after the state
 * arrives). Layouts as in lasp.h: q, k [B,T,H,d]; v, o [B,T,H,e]; states [B,H,d,e]; slopes [H]. */
#ifndef LASP_ATTN_H
#define LASP_ATTN_H

#include "core/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Shape, head-dim and block checks shared by every implementation. */
lasp_status lasp_attn_check_desc(const lasp_attn_desc *a, lasp_err *err);
/* Slopes must be finite and ≥ 0: a negative slope means λ > 1, a state that grows without bound. */
lasp_status lasp_attn_check_slopes(const float *slopes, int64_t H, lasp_err *err);
int lasp_attn_block(const lasp_attn_desc *a);  /* a->block, or the default */

/* CPU, fp32, chunked (MATH.md §2); parallel over (b, h). Arguments as lasp_attn_fwd/bwd. */
lasp_status lasp_attn_fwd_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k,
                              const float *v, const float *slopes, const float *kv_in, float *o,
                              float *kv_out);
lasp_status lasp_attn_bwd_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k,
                              const float *v, const float *slopes, const float *kv_in, const float *do_,
                              const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in);

/* The inter terms alone, for a piece of T tokens (positions 0..T−1 local to the piece):
 *   fwd:  o_t += λ^t q_t KV_in
 *   bwd:  dk_j += λ^{T−j} v_j dKV_outᵀ,   dv_j += λ^{T−j} k_j dKV_out                              */
void lasp_attn_fwd_inter_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *slopes,
                             const float *kv_in, float *o);
void lasp_attn_bwd_inter_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *k, const float *v,
                             const float *slopes, const float *dkv_out, float *dk, float *dv);

/* out = λ^n · in + local per (b, h), λ = exp(−slope_h): the state hand-over across a piece of n
 * tokens (KV_out = γ KV_in + m; dKV_in = γ dKV_out + g). in may be NULL (zero). out may alias local. */
void lasp_state_combine_cpu(int64_t B, int64_t H, int64_t d, int64_t e, const float *slopes, int64_t n,
                            const float *in, const float *local, float *out);

#ifdef __cplusplus
}
#endif

#endif
