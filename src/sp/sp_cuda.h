/* sp_cuda.h — LASP on GPUs: the schedule of sp.c on device memory (sp_cuda.cu), reached through
 * lasp_sp_attn_fwd/bwd when the SP communicators are NCCL. */
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
/* *p (device) grown to at least want floats, zeroed when made */
lasp_status lasp_sp_grow_device(lasp_ctx *ctx, float **p, size_t *have, size_t want);
/* The baselines Ulysses and the all-gather on GPUs (sp_baselines_cuda.c), which the two above hand them to */
lasp_status lasp_sp_base_fwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                                  const void *v, const float *slopes, const float *kv_in, void *o, float *kv_out,
                                  lasp_sp_cache *cache);
lasp_status lasp_sp_base_bwd_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                                  const void *v, const float *slopes, const lasp_sp_cache *cache, const void *do_,
                                  const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in);
/* the transport's state (collective: its one-sided window), and how the states travelled */
void lasp_sp_gpu_free(lasp_sp *sp);
const char *lasp_sp_gpu_transfer(const lasp_sp *sp);
#endif

#ifdef __cplusplus
}
#endif

#endif
