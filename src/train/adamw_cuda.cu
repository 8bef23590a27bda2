/* adamw_cuda.cu — the optimizer's update on the GPU (adamw.h): the gradient's sum of squares in two passes
 * of fixed shape (deterministic), and the element-wise update, which reads that sum from device memory. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>

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

__global__ void k_adamw(float *p, __nv_bfloat16 *p16, const float *g, float *m, float *v, const uint8_t *decay, size_t n,
                        lasp_adamw_step h, const double *sumsq) {
    const double norm = sqrt(*sumsq);
    if (!isfinite(norm)) return;
    const float clip = h.clip > 0 && norm > h.clip ? (float)(h.clip / norm) : 1.0f;
    const float b1 = h.beta1, b2 = h.beta2;
    for (size_t i = blockIdx.x * (size_t)THREADS + threadIdx.x; i < n; i += (size_t)gridDim.x * THREADS) {
        const float gi = __fmul_rn(g[i], clip);
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1 - b1, gi));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(1 - b2, gi), gi));
        m[i] = mi, v[i] = vi;
        const float upd = __fadd_rn(__fdiv_rn(__fdiv_rn(mi, h.bc1), __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, h.bc2)), h.eps)),
                                    decay[i] ? __fmul_rn(h.wd, p[i]) : 0.0f);
        const float pi = __fsub_rn(p[i], __fmul_rn(h.lr, upd));
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
    k_adamw<<<blocks_for(n, 65535 * 8), THREADS, 0, stream>>>(p, (__nv_bfloat16 *)p16, g, m, v, decay, n, *h, sumsq);
}
