/* attn_cuda_driver.h — what the CUDA op's host files share (C++, private to src/attn): the context's GPU
 * state (attn_cuda_ctx.cu) and the driver that plans and launches directed ops (attn_cuda.cu), used by
 * the whole op, its SP halves (attn_cuda_halves.cu) and the host wrappers (attn_cuda_host.cu). */
#ifndef LASP_ATTN_CUDA_DRIVER_H
#define LASP_ATTN_CUDA_DRIVER_H

#include <cuda_runtime.h>

#include "attn/attn_cuda_dir.h"
#include "core/ctx.h"

namespace lasp_cu {

/* Per-context GPU state: the device it was made on, its stream and a growing workspace. */
struct CudaState {
    int device, n_sm, max_smem;
    int wgmma;    /* the device runs the sm_90a kernels and the context allows them */
    int sp_leave; /* SMs the SP halves' persistent kernels leave to the communicator (lasp_attn_cuda_sp_leave_sms) */
    cudaStream_t stream; /* where the work goes: own, or the caller's (lasp_ctx_set_cuda_stream) */
    cudaStream_t own;
    float *ws; /* the segment states of every op but those given a buffer (the forward's saved states) */
    size_t ws_bytes;
    Ran ran; /* the kernels of the last launch */
};

lasp_status cuda_fail(lasp_ctx *ctx, cudaError_t e, const char *what);
#define CU_TRY(ctx, call, what)                                       \
    do {                                                              \
        cudaError_t cu_e_ = (call);                                   \
        if (cu_e_ != cudaSuccess) return cuda_fail(ctx, cu_e_, what); \
    } while (0)

/* The context's GPU state for the current device, made on first use (attn_cuda_ctx.cu). */
lasp_status cuda_state(lasp_ctx *ctx, CudaState **out);
lasp_status reserve_ws(lasp_ctx *ctx, CudaState *cs, size_t bytes);

/* An entry point's start: the desc, dtype, non-NULL and 16-byte-aligned tensors t[0..n) checked (names
 * for the messages), then the context's GPU state. */
lasp_status enter(lasp_ctx *ctx, const lasp_attn_desc *a, const void *const *t, const char *const *names, int n,
                  CudaState **cs);

/* Fills in the shape of P (T, H, BH) and, where P.seg is 0, its segment length and count. */
void plan_dir(const CudaState *cs, const lasp_attn_desc *a, DirParams &P);
/* One directed op, on the context's stream or on st. P.out_only reuses the segment states in P.ws
 * (the workspace where NULL), read transposed when P.ws_trans, with P.seg as the op that left them. */
lasp_status run_dir(lasp_ctx *ctx, CudaState *cs, const lasp_attn_desc *a, DirParams &P, cudaStream_t st = nullptr);
/* The output pass of an op whose states a states_only run left from a zero incoming state: the state that
 * arrived (P.s_in) is added to each segment's entering state as the kernel reads it. */
lasp_status finish_dir(lasp_ctx *ctx, CudaState *cs, const lasp_attn_desc *a, DirParams &P, cudaStream_t st = nullptr);

/* The four directed ops of docs/CUDA.md: the forward, and the backward's dq, dv (with dkv_in as its end
 * state) and dk (from dv's segment states, transposed). */
DirParams dir_fwd(const lasp_attn_desc *a, const void *q, const void *k, const void *v, const float *slopes,
                  const float *kv_in);
DirParams dir_dq(const lasp_attn_desc *a, const void *k, const void *v, const void *do_, const float *slopes,
                 const float *kv_in);
DirParams dir_dv(const lasp_attn_desc *a, const void *q, const void *k, const void *do_, const float *slopes,
                 const float *dkv_out);
DirParams dir_dk(const lasp_attn_desc *a, const void *q, const void *v, const void *do_, const float *slopes,
                 const DirParams &dv);
/* dq from the forward's segment states `saved`, split as the forward split them: its output pass only */
DirParams dir_dq_saved(const CudaState *cs, const lasp_attn_desc *a, const void *k, const void *v, const void *do_,
                       const float *slopes, const float *kv_in, const float *saved);

}  // namespace lasp_cu

#endif
