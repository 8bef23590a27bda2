/* dev/cuda/feat.cu — playground for the features' passes (the short convolution and SiLU, forward and
 * backward): the library's kernels (src/model/layers_cuda.cu, included here) instantiated with other
 * columns a thread (V), batches of rows and blocks an SM, on the 1B and 400m presets' shapes, bf16, K 4.
 *
 *   build/dev/feat
 *
 * Each variant's output is compared bit for bit with the first's (the arithmetic per element is the same
 * in every variant); times are the median of 20 CUDA-event-timed runs after 3 warm-ups, the backward with
 * its taps' column sum; GB/s counts each pass's bytes once (p and the features or their gradients). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "../../src/model/layers_cuda.cu"
#include "dev_check.h"

struct Shape {
    int64_t B, T, C;
};

typedef __nv_bfloat16 bf;

static void fill(float *d, size_t n, uint64_t seed) {
    std::vector<float> h(n);
    for (size_t i = 0; i < n; i++) h[i] = dev_rnd(seed);
    CU(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
}

static int same(const void *a, const void *b, size_t bytes) {
    std::vector<char> x(bytes), y(bytes);
    CU(cudaMemcpy(x.data(), a, bytes, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(y.data(), b, bytes, cudaMemcpyDeviceToHost));
    return !memcmp(x.data(), y.data(), bytes);
}

template <int V, int BATCH>
static void fwd(bf *q, bf *k, bf *v, const float *p, const float *wc, const Shape &s) {
    const feat_tiling f = feat_tiles(s.B, s.T, 0);
    k_feat_fwd<4, V, bf, BATCH><<<feat_grid(s.B, f, s.C, V), THREADS>>>(q, k, v, p, 4 * s.C, nullptr, wc, s.T,
                                                                          (int)s.C, 4, f.rows, f.tiles);
}

template <int V, int BATCH, int MINB>
static void bwd(bf *dp, float *dwc, const bf *dq, const bf *dk, const bf *dv, const float *p, const float *wc,
                float *work, const Shape &s) {
    const feat_tiling f = feat_tiles(s.B, s.T, 0);
    k_feat_bwd<4, V, bf, BATCH, MINB><<<feat_grid(s.B, f, s.C, V), THREADS>>>(
        dp, 4 * s.C, work, nullptr, nullptr, dq, dk, dv, p, 4 * s.C, nullptr, wc, s.T, (int)s.C, 4, f.s0, f.rows,
        f.tiles);
    sum_parts(dwc, work, s.B * f.tiles, 4 * 3 * s.C, 0, 0);
}

int main(void) {
    const Shape shapes[] = {{1, 8192, 2048}, {2, 8192, 1024}, {1, 32768, 2048}};
    for (const Shape &s : shapes) {
        const size_t N = s.B * s.T, C = s.C;
        float *p, *wc, *work, *dwc[2];
        bf *q[2], *g, *dp[2];
        CU(cudaMalloc(&p, N * 4 * C * 4));
        CU(cudaMalloc(&wc, 4 * 3 * C * 4));
        CU(cudaMalloc(&work, lasp_feat_cuda_work_floats(s.B, C, 4) * 4));
        CU(cudaMalloc(&g, N * 3 * C * 2));
        for (int i = 0; i < 2; i++) {
            CU(cudaMalloc(&q[i], N * 3 * C * 2));
            CU(cudaMalloc(&dp[i], N * 4 * C * 2));
            CU(cudaMalloc(&dwc[i], 4 * 3 * C * 4));
        }
        fill(p, N * 4 * C, 1);
        fill(wc, 4 * 3 * C, 2);
        uint64_t seed = 3;
        std::vector<bf> hb(N * 3 * C);
        for (size_t i = 0; i < hb.size(); i++) hb[i] = __float2bfloat16(dev_rnd(seed));
        CU(cudaMemcpy(g, hb.data(), hb.size() * 2, cudaMemcpyHostToDevice));
        const double fbytes = N * 3 * C * (4.0 + 2.0), bbytes = N * 3 * C * (4.0 + 2.0 + 2.0);
        printf("# B %lld T %lld C %lld, K 4, bf16\n", (long long)s.B, (long long)s.T, (long long)C);
#define FWD(V, BATCH, I)                                                                                          \
    do {                                                                                                          \
        bf *o = q[I];                                                                                             \
        const float ms = dev_median_ms([&] { fwd<V, BATCH>(o, o + N * C, o + 2 * N * C, p, wc, s); });              \
        CU(cudaDeviceSynchronize());                                                                              \
        printf("  fwd  V %d batch %d          %.4f ms  %5.0f GB/s  %s\n", V, BATCH, ms, fbytes / ms * 1e-6,   \
               I ? (same(q[0], q[1], N * 3 * C * 2) ? "same bits" : "DIFFERENT") : "");                      \
    } while (0)
        FWD(1, 8, 0);
        FWD(2, 8, 1);
        FWD(2, 4, 1);
        FWD(1, 4, 1);
#define BWD(V, BATCH, MINB, I)                                                                                    \
    do {                                                                                                          \
        bf *o = dp[I];                                                                                            \
        float *dw = dwc[I];                                                                                       \
        const float ms =                                                                                          \
            dev_median_ms([&] { bwd<V, BATCH, MINB>(o, dw, g, g + N * C, g + 2 * N * C, p, wc, work, s); });        \
        CU(cudaDeviceSynchronize());                                                                              \
        printf("  bwd  V %d batch %d minb %d   %.4f ms  %5.0f GB/s  %s\n", V, BATCH, MINB, ms, bbytes / ms * 1e-6, \
               I ? (same(dwc[0], dwc[1], 4 * 3 * C * 4) && same(dp[0], dp[1], N * 4 * C * 2) ? "same bits"       \
                                                                                            : "DIFFERENT")      \
                 : "");                                                                                           \
    } while (0)
        CU(cudaMemset(dp[0], 0, N * 4 * C * 2));
        CU(cudaMemset(dp[1], 0, N * 4 * C * 2));
        BWD(1, 4, 4, 0);
        BWD(2, 4, 4, 1);
        BWD(2, 4, 3, 1);
        BWD(2, 4, 2, 1);
        BWD(2, 2, 4, 1);
        BWD(2, 8, 2, 1);
        BWD(2, 2, 3, 1);
        BWD(1, 2, 4, 1);
        cudaFree(p), cudaFree(wc), cudaFree(work), cudaFree(g);
        for (int i = 0; i < 2; i++) cudaFree(q[i]), cudaFree(dp[i]), cudaFree(dwc[i]);
    }
    CU(cudaGetLastError());
    return 0;
}
