/* dev/cuda/rms.cu — playground for the RMSNorm backward (dx and the gain's gradient): the library's two
 * passes (src/model/layers_cuda.cu, included here: the dx pass, then the gain's column sums) against its
 * fused pass (a block's warps each keep a row of gain sums in shared memory) with fewer rows a block, so
 * that more blocks share the GPU, on the presets' shapes (f32 in, dx and its bf16 copy out).
 *
 *   build/dev/rms
 *
 * dx must be the same bits in every variant; the gain's gradient is summed in another order (relative
 * difference printed). Median of 20 CUDA-event-timed runs after 3 warm-ups; GB/s counts dy, x, dx read and
 * written and dx16 once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../../src/model/layers_cuda.cu"
#include "dev_check.h"

static float *dev_rand(size_t n, uint64_t seed, float lo) {
    std::vector<float> h(n);
    for (size_t i = 0; i < n; i++) h[i] = lo + dev_rnd(seed);
    float *d;
    CU(cudaMalloc(&d, n * 4));
    CU(cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice));
    return d;
}

static std::vector<float> host(const float *d, size_t n) {
    std::vector<float> h(n);
    CU(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
    return h;
}

int main(void) {
    const int64_t shapes[][2] = {{8192, 2048}, {16384, 1024}, {32768, 2048}};
    CU(cudaFuncSetAttribute(k_rms_bwd_fused<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, 8 * 2048 * 4));
    for (const auto &sh : shapes) {
        const int64_t N = sh[0], C = sh[1];
        float *dy = dev_rand(N * C, 1, 0), *x = dev_rand(N * C, 2, 0), *rstd = dev_rand(N, 3, 1.0f);
        float *g = dev_rand(C, 4, 1.0f), *dx0 = dev_rand(N * C, 5, 0), *dx, *dg, *work;
        __nv_bfloat16 *d16;
        CU(cudaMalloc(&dx, N * C * 4));
        CU(cudaMalloc(&dg, C * 4));
        CU(cudaMalloc(&d16, N * C * 2));
        CU(cudaMalloc(&work, (size_t)MAX_PARTS * 4 * C * 4));
        const double bytes = N * C * (4.0 + 4.0 + 8.0 + 2.0);
        std::vector<float> ref_dx, ref_dg;
        printf("# N %lld C %lld\n", (long long)N, (long long)C);
        for (int rows = 0; rows <= 64; rows = rows ? rows * 2 : 4) {
            /* each run starts from the same dx (the pass adds to it) */
            auto run = [&] {
                CU(cudaMemcpyAsync(dx, dx0, N * C * 4, cudaMemcpyDeviceToDevice));
                if (!rows) {
                    k_rms_bwd_x<4><<<row_blocks(N), THREADS>>>(dx, d16, dy, x, rstd, g, N, C);
                    rms_dg(dg, 0, dy, x, rstd, N, C, work, 0);
                } else {
                    const int64_t want = (N + 4 * MAX_PARTS - 1) / (4 * MAX_PARTS), r = want > rows ? want : rows;
                    const int64_t blocks = (N + r - 1) / r;
                    k_rms_bwd_fused<4><<<(unsigned)blocks, THREADS, 8 * C * 4>>>(dx, d16, work, dy, x, rstd, g, N,
                                                                                  C, r);
                    sum_parts(dg, work, blocks, C, 0, 0);
                }
            };
            auto copy_ms = dev_median_ms([&] { CU(cudaMemcpyAsync(dx, dx0, N * C * 4, cudaMemcpyDeviceToDevice)); });
            const float ms = dev_median_ms(run) - copy_ms;
            run();
            CU(cudaDeviceSynchronize());
            std::vector<float> hdx = host(dx, N * C), hdg = host(dg, C);
            if (!rows) ref_dx = hdx, ref_dg = hdg;
            double num = 0, den = 0;
            for (int64_t c = 0; c < C; c++)
                num += (hdg[c] - ref_dg[c]) * (double)(hdg[c] - ref_dg[c]), den += ref_dg[c] * (double)ref_dg[c];
            const int same = !memcmp(hdx.data(), ref_dx.data(), N * C * 4);
            if (!rows) printf("  two passes          %.4f ms  %5.0f GB/s\n", ms, bytes / ms * 1e-6);
            else printf("  fused, %2d rows a block  %.4f ms  %5.0f GB/s  dx %s, dg rel %.1e\n", rows, ms,
                        bytes / ms * 1e-6, same ? "same bits" : "DIFFERENT", std::sqrt(num / den));
        }
        cudaFree(dy), cudaFree(x), cudaFree(rstd), cudaFree(g), cudaFree(dx0), cudaFree(dx), cudaFree(dg);
        cudaFree(d16), cudaFree(work);
    }
    CU(cudaGetLastError());
    return 0;
}
