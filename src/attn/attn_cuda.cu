/* attn_cuda.cu — placeholder until the fused kernels land (issue: CUDA kernels). */
#include <cuda_runtime.h>

#include "attn/attn_cuda.h"

extern "C" int lasp_cuda_is_device_ptr(const void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

static lasp_status not_yet(lasp_ctx *ctx) {
    return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "the CUDA attention kernels are not built yet");
}

extern "C" lasp_status lasp_attn_fwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *, const void *, const void *,
                                          const void *, const float *, const float *, void *, float *) {
    return not_yet(ctx);
}
extern "C" lasp_status lasp_attn_bwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *, const void *, const void *,
                                          const void *, const float *, const float *, const void *, const float *,
                                          void *, void *, void *, float *) {
    return not_yet(ctx);
}
extern "C" lasp_status lasp_attn_fwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *, const float *, const float *,
                                               const float *, const float *, const float *, float *, float *) {
    return not_yet(ctx);
}
extern "C" lasp_status lasp_attn_bwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *, const float *, const float *,
                                               const float *, const float *, const float *, const float *,
                                               const float *, float *, float *, float *, float *) {
    return not_yet(ctx);
}
extern "C" void lasp_attn_cuda_ctx_free(void *) {}
