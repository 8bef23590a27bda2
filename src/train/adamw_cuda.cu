/* adamw_cuda.cu — the optimizer's update on the GPU (adamw.h): the gradient's sum of squares in two passes
 * of fixed shape (deterministic), and the element-wise update, which reads that sum from device memory. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "train/adamw.h"

namespace {

constexpr int THREADS = 256;

/* work[b] = Σ x² over block b's grid-strided elements */
__global__ void k_sumsq_parts(double *work, const float *x, size_t n) {
    __shared__ double part[THREADS];
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS)
        s += (double)x[i] * x[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = THREADS / 2; w; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) work[blockIdx.x] = part[0];
}

/* *out = Σ work[0 .. parts), in order */
__global__ void k_sum_parts(double *out, const double *work, int parts) {
    double s = 0;
    for (int i = 0; i < parts; i++) s += work[i];
    *out = s;
}

/* One element's update, the CPU's (adamw.c) operations in its order, each rounded as there */
__device__ __forceinline__ float adamw_one(float p, float g, float &m, float &v, uint8_t decay,
                                           const lasp_adamw_step &h, float clip) {
    const float gi = __fmul_rn(g, clip);
    m = __fadd_rn(__fmul_rn(h.beta1, m), __fmul_rn(1 - h.beta1, gi));
    v = __fadd_rn(__fmul_rn(h.beta2, v), __fmul_rn(__fmul_rn(1 - h.beta2, gi), gi));
    const float upd = __fadd_rn(__fdiv_rn(__fdiv_rn(m, h.bc1), __fadd_rn(__fsqrt_rn(__fdiv_rn(v, h.bc2)), h.eps)),
                                decay ? __fmul_rn(h.wd, p) : 0.0f);
    return __fsub_rn(p, __fmul_rn(h.lr, upd));
}

/* The update, four elements a thread with 16-byte loads (vec4: every array aligned for them), the rest one at
 * a time; nothing when the gradient's norm is not finite. */
__global__ void k_adamw(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, const uint8_t *decay, size_t n,
                        lasp_adamw_step h, const double *sumsq, int vec4) {
    const double norm = sqrt(*sumsq);
    if (!isfinite(norm)) return;
    const float clip = h.clip > 0 && norm > h.clip ? (float)(h.clip / norm) : 1.0f;
    const size_t stride = (size_t)gridDim.x * THREADS, first = blockIdx.x * (size_t)THREADS + threadIdx.x;
    const size_t n4 = vec4 ? n / 4 : 0;
    for (size_t i = first; i < n4; i += stride) {
        float4 P = ((const float4 *)p)[i], M = ((const float4 *)m)[i], V = ((const float4 *)v)[i];
        const float4 G = ((const float4 *)g)[i];
        const uchar4 D = ((const uchar4 *)decay)[i];
        P.x = adamw_one(P.x, G.x, M.x, V.x, D.x, h, clip);
        P.y = adamw_one(P.y, G.y, M.y, V.y, D.y, h, clip);
        P.z = adamw_one(P.z, G.z, M.z, V.z, D.z, h, clip);
        P.w = adamw_one(P.w, G.w, M.w, V.w, D.w, h, clip);
        ((float4 *)p)[i] = P, ((float4 *)m)[i] = M, ((float4 *)v)[i] = V;
        if (p16) {
            __nv_bfloat162 *q = (__nv_bfloat162 *)p16 + 2 * i;
            q[0] = __floats2bfloat162_rn(P.x, P.y), q[1] = __floats2bfloat162_rn(P.z, P.w);
        }
    }
    for (size_t i = 4 * n4 + first; i < n; i += stride) {
        const float pi = adamw_one(p[i], g[i], m[i], v[i], decay[i], h, clip);
        p[i] = pi;
        if (p16) p16[i] = __float2bfloat16_rn(pi);
    }
}

int blocks_for(size_t n, int cap) {
    const size_t b = (n + THREADS - 1) / THREADS;
    return (int)(b < 1 ? 1 : b > (size_t)cap ? (size_t)cap : b);
}

}  // namespace

extern "C" void lasp_sumsq_cuda(const float *x, size_t n, double *out, double *work, cudaStream_t stream) {
    const int parts = blocks_for(n, LASP_SUMSQ_PARTS);
    k_sumsq_parts<<<parts, THREADS, 0, stream>>>(work, x, n);
    k_sum_parts<<<1, 1, 0, stream>>>(out, work, parts);
}

extern "C" void lasp_adamw_cuda(float *p, void *p16, const float *g, float *m, float *v, const uint8_t *decay,
                                size_t n, const lasp_adamw_step *h, const double *sumsq, cudaStream_t stream) {
    const uintptr_t a16 = (uintptr_t)p | (uintptr_t)g | (uintptr_t)m | (uintptr_t)v;
    const int vec4 = a16 % 16 == 0 && (uintptr_t)decay % 4 == 0 && (uintptr_t)p16 % 8 == 0;
    k_adamw<<<blocks_for(vec4 ? (n + 3) / 4 : n, 65535 * 8), THREADS, 0, stream>>>(p, (__nv_bfloat16 *)p16, g, m, v,
                                                                                    decay, n, *h, sumsq, vec4);
}
