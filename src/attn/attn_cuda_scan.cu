/* attn_cuda_scan.cu — kernel 2 of a directed op (docs/CUDA.md): the scan over the segment states, by
 * Horner's rule (docs/MATH.md §4), replacing each segment's own state with the state entering it. */
#include "attn/attn_cuda_dir.h"

namespace lasp_cu {

/* a thread per element of a state (256 a block), blockIdx.y the head */
__global__ void __launch_bounds__(256, 8) k_scan(DirParams P) {
    const int64_t n = (int64_t)P.dx * P.ezt;
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int bh = blockIdx.y;
    if (idx >= n) return;
    const float s = P.slopes[bh % P.H];
    float H = 0.f;
    if (P.s_in) {
        const int64_t r = idx / P.ezt, c = idx % P.ezt;
        H = P.s_in[(size_t)bh * n + (P.s_in_trans ? c * P.dx + r : idx)];
    }
    const float lam_sigma = expf(-s * (float)P.sigma), gam = expf(-s * (float)P.seg);
    float *w = P.ws + (size_t)bh * P.ns * n + idx;
    /* 16 independent loads in flight before the serial Horner steps, in 32 registers, so that a whole grid
     * of 8 blocks an SM is resident at once: latency, not bandwidth, bounds this kernel (more loads
     * unrolled take more registers, fewer blocks fit, and the grid runs in waves) */
    for (int k0 = 0; k0 < P.ns; k0 += 16) {
        float m[16];
#pragma unroll
        for (int j = 0; j < 16; j++) m[j] = k0 + j < P.ns ? w[(size_t)(k0 + j) * n] : 0.f;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int k = k0 + j;
            if (k < P.ns) {
                w[(size_t)k * n] = lam_sigma * H;
                const int64_t len = (k + 1 < P.ns) ? P.seg : P.T - (int64_t)k * P.seg;
                H = (len == P.seg ? gam : expf(-s * (float)len)) * H + m[j];
            }
        }
    }
    if (P.s_end) P.s_end[(size_t)bh * n + idx] = H;
}

cudaError_t launch_scan(const DirParams &P, cudaStream_t st) {
    const dim3 grid((unsigned)(((int64_t)P.dx * P.ezt + 255) / 256), (unsigned)P.BH);
    k_scan<<<grid, 256, 0, st>>>(P);
    return cudaGetLastError();
}

}  // namespace lasp_cu
