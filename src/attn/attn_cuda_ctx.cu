/* attn_cuda_ctx.cu — the context's GPU state: made on first use on the current device (its stream, the
 * SMs and shared memory it has, whether it runs the sm_90a kernels), the segment-state workspace, and
 * the context's hook that frees it all. */
#include <stdlib.h>

#include "attn/attn_cuda.h"
#include "attn/attn_cuda_driver.h"

namespace lasp_cu {

lasp_status cuda_fail(lasp_ctx *ctx, cudaError_t e, const char *what) {
    return lasp_fail(&ctx->err, LASP_ERR_CUDA, "%s: %s", what, cudaGetErrorString(e));
}

/* 1 if the code the driver picked for this device holds the wgmma kernels (an sm_90a build on an sm_90) */
__global__ void k_has_wgmma(int *out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    *out = 1;
#else
    *out = 0;
#endif
}

static cudaError_t probe_wgmma(cudaStream_t st, int *has) {
    int *d = NULL;
    cudaError_t e = cudaMalloc((void **)&d, sizeof *d);
    if (e != cudaSuccess) return e;
    k_has_wgmma<<<1, 1, 0, st>>>(d);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(has, d, sizeof *has, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    cudaFree(d);
    return e;
}

static void state_free(void *p) {
    CudaState *cs = (CudaState *)p;
    if (!cs) return;
    int cur = -1;
    cudaGetDevice(&cur);
    cudaSetDevice(cs->device);
    if (cs->ws) cudaFree(cs->ws);
    if (cs->own) cudaStreamDestroy(cs->own);
    if (cur >= 0) cudaSetDevice(cur);
    free(cs);
}

lasp_status cuda_state(lasp_ctx *ctx, CudaState **out) {
    int dev, n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "no usable GPU: %s (hint: a machine with an NVIDIA GPU "
                         "and its driver, or --device cpu)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    }
    CU_TRY(ctx, cudaGetDevice(&dev), "cudaGetDevice");
    CudaState *cs = (CudaState *)ctx->cuda;
    if (cs && cs->device != dev) {
        state_free(cs);
        ctx->cuda = cs = NULL;
    }
    if (!cs) {
        cs = (CudaState *)calloc(1, sizeof *cs);
        if (!cs) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for the CUDA context state");
        cs->device = dev;
        int has_wgmma = 0;
        e = cudaDeviceGetAttribute(&cs->n_sm, cudaDevAttrMultiProcessorCount, dev);
        if (e == cudaSuccess) e = cudaDeviceGetAttribute(&cs->max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (e == cudaSuccess) e = cudaStreamCreate(&cs->own);
        cs->stream = cs->own;
        if (e == cudaSuccess) e = probe_wgmma(cs->stream, &has_wgmma);
        if (e != cudaSuccess) {
            if (cs->own) cudaStreamDestroy(cs->own);
            free(cs);
            return cuda_fail(ctx, e, "setting up the CUDA context state");
        }
        cs->wgmma = has_wgmma && ctx->params.kernels == LASP_KERNELS_AUTO;
        ctx->cuda = cs, ctx->cuda_free = state_free;
    }
    *out = cs;
    return LASP_OK;
}

lasp_status reserve_ws(lasp_ctx *ctx, CudaState *cs, size_t bytes) {
    if (bytes <= cs->ws_bytes) return LASP_OK;
    if (cs->ws) {
        CU_TRY(ctx, cudaStreamSynchronize(cs->stream), "waiting for the stream before growing the workspace");
        cudaFree(cs->ws);
        cs->ws = NULL, cs->ws_bytes = 0;
    }
    cudaError_t e = cudaMalloc((void **)&cs->ws, bytes);
    if (e != cudaSuccess)
        return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "cudaMalloc of %zu bytes of state workspace: %s", bytes,
                         cudaGetErrorString(e));
    cs->ws_bytes = bytes;
    return LASP_OK;
}

}  // namespace lasp_cu

using namespace lasp_cu;

extern "C" int lasp_cuda_is_device_ptr(const void *p) {
    if (!p) return 0;
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

extern "C" lasp_status lasp_ctx_cuda_stream(lasp_ctx *ctx, void **stream) {
    if (!ctx || !stream) return LASP_ERR_ARG;
    CudaState *cs = NULL;
    LASP_TRY(cuda_state(ctx, &cs));
    *stream = cs->stream;
    return LASP_OK;
}

extern "C" lasp_status lasp_ctx_set_cuda_stream(lasp_ctx *ctx, void *stream) {
    if (!ctx) return LASP_ERR_ARG;
    CudaState *cs = NULL;
    LASP_TRY(cuda_state(ctx, &cs));
    const cudaStream_t to = stream ? (cudaStream_t)stream : cs->own;
    if (to == cs->stream) return LASP_OK;
    /* the workspace may still be in use by the work enqueued on the stream left */
    CU_TRY(ctx, cudaStreamSynchronize(cs->stream), "waiting for the context's stream before changing it");
    cs->stream = to;
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_cuda_last_kernels(lasp_ctx *ctx, lasp_attn_cuda_kernels *out) {
    if (!out) return lasp_fail(&ctx->err, LASP_ERR_ARG, "lasp_attn_cuda_last_kernels: out is NULL");
    CudaState *cs = NULL;
    LASP_TRY(cuda_state(ctx, &cs));
    out->state_pass = cs->ran.state_pass, out->out_pass = cs->ran.out_pass;
    return LASP_OK;
}
