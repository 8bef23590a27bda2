/* sp_cuda.h — LASP on GPUs (sp_cuda.cu): the chain and LASP-2 of sp.c on device memory, with the
 * transfers on the NCCL communicator's stream and the op's halves (attn/attn_cuda_sp.h) on the
 * compute stream, ordered by CUDA events only — no host synchronisation on the critical path.
 * Reached through lasp_sp_attn_fwd/bwd when the SP communicators are NCCL. */
#ifndef LASP_SP_CUDA_H
#define LASP_SP_CUDA_H

#include "sp/sp.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef LASP_HAVE_CUDA
lasp_status lasp_sp_attn_fwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                                  const void *v, const float *slopes, const float *kv_in, void *o, float *kv_out,
                                  lasp_sp_cache *cache);
lasp_status lasp_sp_attn_bwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                                  const void *v, const float *slopes, const lasp_sp_cache *cache, const void *do_,
                                  const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in);
void lasp_sp_cache_free_cuda(lasp_sp_cache *c);
#endif

#ifdef __cplusplus
}
#endif

#endif
