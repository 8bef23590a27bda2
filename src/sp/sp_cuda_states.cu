/* sp_cuda_states.cu — the GPU schedule's arithmetic on states (docs/MATH.md §3–4): the hand-over
 * KV_out = γ KV_in + m and LASP-2's Horner sums, over [B·H][d·e] fp32 states. They run on the SP
 * communicator's stream, beside output passes that leave it a few SMs: few blocks, each thread over several
 * float4s (a state is d·e floats, a multiple of 4, and every buffer here starts 16-byte aligned), so that
 * their time is the bytes, not the waves. */
#include "core/dtype.h"
#include "sp/sp_cuda_impl.h"

namespace lasp_sp_cu {

lasp_status cu_fail(lasp_ctx *ctx, cudaError_t e, const char *what) {
    return lasp_fail(&ctx->err, LASP_ERR_CUDA, "SP on the GPU: %s: %s", what, cudaGetErrorString(e));
}

constexpr int STATE_BLOCKS = 64;

/* out = exp(−s_h·n) · in + local over [BH][de] (in = NULL: zero). out may alias local. */
__global__ static void k_combine(float4 *out, const float4 *in, const float4 *local, const float *slopes, int64_t n,
                                 int H, int64_t de, int64_t total) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total / 4;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = expf(-slopes[(int)((4 * i / de) % H)] * (float)n);
        const float4 l = local[i], x = in ? in[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        out[i] = make_float4(g * x.x + l.x, g * x.y + l.y, g * x.z + l.z, g * x.w + l.w);
    }
}

__global__ static void k_horner(float4 *P, const float4 *G, const float *slopes, int64_t n, int from, int to, int step,
                                int H, int64_t de, int64_t total) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total / 4;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = expf(-slopes[(int)((4 * i / de) % H)] * (float)n);
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int s = from; s != to; s += step) {
            const float4 x = G[(size_t)s * (total / 4) + i];
            acc = make_float4(g * acc.x + x.x, g * acc.y + x.y, g * acc.z + x.z, g * acc.w + x.w);
        }
        P[i] = acc;
    }
}

static dim3 grid_of(int64_t total) {
    const int64_t b = (total / 4 + 255) / 256;
    return dim3((unsigned)(b < STATE_BLOCKS ? b : STATE_BLOCKS));
}

lasp_status state_combine(lasp_ctx *ctx, cudaStream_t st, const lasp_attn_desc *a, const float *slopes,
                          const float *in, const float *local, float *out) {
    const int64_t de = a->d * a->e, total = a->B * a->H * de;
    if (lasp_misaligned16(out) || lasp_misaligned16(in) || lasp_misaligned16(local))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: a state buffer is not 16-byte aligned");
    k_combine<<<grid_of(total), 256, 0, st>>>((float4 *)out, (const float4 *)in, (const float4 *)local, slopes, a->T,
                                              (int)a->H, de, total);
    CU_TRY(ctx, cudaGetLastError(), "the state combine kernel");
    return LASP_OK;
}

lasp_status state_horner(lasp_ctx *ctx, cudaStream_t st, const lasp_attn_desc *a, const float *slopes,
                         const float *G, int from, int to, int step, float *P) {
    const int64_t de = a->d * a->e, total = a->B * a->H * de;
    if (lasp_misaligned16(P) || lasp_misaligned16(G))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "SP on the GPU: a state buffer is not 16-byte aligned");
    k_horner<<<grid_of(total), 256, 0, st>>>((float4 *)P, (const float4 *)G, slopes, a->T, from, to, step, (int)a->H,
                                             de, total);
    CU_TRY(ctx, cudaGetLastError(), "the Horner kernel");
    return LASP_OK;
}

lasp_status state_copy(lasp_ctx *ctx, float *dst, const float *src, size_t ns, cudaStream_t st) {
    if (src) CU_TRY(ctx, cudaMemcpyAsync(dst, src, ns * sizeof(float), cudaMemcpyDeviceToDevice, st), "state copy");
    else CU_TRY(ctx, cudaMemsetAsync(dst, 0, ns * sizeof(float), st), "state zero");
    return LASP_OK;
}

}  // namespace lasp_sp_cu
