/* attn_cuda.h — the op on NVIDIA GPUs (fused CUDA kernels, docs/CUDA.md), same signatures as the CPU path.
 * Only built when nvcc is found (LASP_HAVE_CUDA). Tensors passed here live in device memory; calls are
 * asynchronous on the context's CUDA stream. */
#ifndef LASP_ATTN_CUDA_H
#define LASP_ATTN_CUDA_H

#include "core/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if p points to device (or managed) memory, 0 for host memory. */
int lasp_cuda_is_device_ptr(const void *p);

/* saved: NULL, or the forward's segment states kept for the backward (lasp.h, lasp_attn_saved_bytes) */
lasp_status lasp_attn_fwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                               const float *slopes, const float *kv_in, void *o, float *kv_out, float *saved);
lasp_status lasp_attn_bwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                               const float *slopes, const float *kv_in, const void *do_, const float *dkv_out,
                               void *dq, void *dk, void *dv, float *dkv_in, const float *saved);
lasp_status lasp_attn_cuda_saved_bytes(lasp_ctx *ctx, const lasp_attn_desc *a, size_t *bytes);

/* lasp_attn_fwd_host / _bwd_host for LASP_DEVICE_CUDA: upload host f32, convert to a->dtype, run, download. */
lasp_status lasp_attn_fwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k,
                                    const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out);
lasp_status lasp_attn_bwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k,
                                    const float *v, const float *slopes, const float *kv_in, const float *do_,
                                    const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in);

/* The kernels of the last pass this context launched (static names: "k_state_wg", "k_state"; "k_out_tma",
 * "k_out"; NULL for a pass that did not run), so that tests and reports need not guess the library's choice. */
typedef struct lasp_attn_cuda_kernels {
    const char *state_pass, *out_pass;
} lasp_attn_cuda_kernels;
lasp_status lasp_attn_cuda_last_kernels(lasp_ctx *ctx, lasp_attn_cuda_kernels *out);

#ifdef __cplusplus
}
#endif

#endif
