/* dev/cuda/rms_bwd.cu — the RMSNorm backward (layers_cuda.cu) with its gain's gradient summed in the same
 * pass, against the library's two passes. To be measured; nothing of it is in the library yet.
 *
 *   build/dev/rms_bwd [N C]       (default: the three model shapes below)
 *
 *   version 1  the library: a warp per row adds ∂/∂x into dx (and its bf16 copy), then a second pass reads
 *              dy and x again for the gain's partial sums over 32-row parts, and a third adds the parts.
 *   version 2  one pass: a block of 8 warps takes RB consecutive rows, a warp per row at a time; each warp adds
 *              its rows' dy·x·rstd into its own row of shared memory (8 × C floats: no two warps touch one
 *              word, so no atomics and the same bits every run), the block then adds the 8 in order into
 *              its partial; the partials are added as in version 1. dy and x are read from DRAM once.
 *
 * Check: dx and dx16 the same bits as version 1 (the same arithmetic per element), dg within 1e-5 (the rows
 * are added in another order). Times: median of 20 CUDA-event-timed runs after 3 warm-ups, and the bytes
 * one pass needs (x, dy, dx read; dx, dx16 written) at that time. */
#include "model/layers_cuda.cu"

#include "dev_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

constexpr int RB = 64; /* rows a block of version 2 takes */

/* version 2: dx += ∂/∂x as k_rms_bwd_x, and work[block, c] = Σ over the block's rows of dy·x·rstd */
template <int V>
__global__ void __launch_bounds__(THREADS) k_rms_bwd_fused(float *dx, __nv_bfloat16 *dx16, float *work,
                                                           const float *dy, const float *x, const float *rstd,
                                                           const float *g, int64_t N, int64_t C) {
    extern __shared__ float acc[]; /* [THREADS / 32][C] */
    const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
    float *mine = acc + (int64_t)w * C;
    for (int64_t c = V * lane; c < C; c += 32 * V)
#pragma unroll
        for (int j = 0; j < V; j++) mine[c + j] = 0;
    const int64_t n0 = blockIdx.x * (int64_t)RB, n1 = n0 + RB < N ? n0 + RB : N;
    for (int64_t n = n0 + w; n < n1; n += THREADS / 32) {
        const float *xr = x + n * C, *dr = dy + n * C, r = rstd[n];
        float dot = 0;
#pragma unroll 4
        for (int64_t c = V * lane; c < C; c += 32 * V) {
            const vf<V> a = ld<V>(xr + c), d = ld<V>(dr + c), gg = ld<V>(g + c);
#pragma unroll
            for (int j = 0; j < V; j++) dot += d.v[j] * gg.v[j] * a.v[j] * r;
        }
        const float mean = warp_sum(dot) / (float)C;
#pragma unroll 4
        for (int64_t c = V * lane; c < C; c += 32 * V) {
            const vf<V> a = ld<V>(xr + c), d = ld<V>(dr + c), gg = ld<V>(g + c);
            vf<V> o = ld<V>(dx + n * C + c);
#pragma unroll
            for (int j = 0; j < V; j++) {
                o.v[j] = o.v[j] + r * (d.v[j] * gg.v[j] - a.v[j] * r * mean);
                mine[c + j] += d.v[j] * a.v[j] * r;
            }
            st<V>(dx + n * C + c, o);
            if (dx16) st<V>(dx16 + n * C + c, o);
        }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += THREADS) {
        float s = 0;
#pragma unroll
        for (int k = 0; k < THREADS / 32; k++) s += acc[(int64_t)k * C + c];
        work[blockIdx.x * C + c] = s;
    }
}

__global__ void k_fill(float *x, int64_t n, uint32_t seed, float lo, float hi) {
    GRID_STRIDE(i, n) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
        x[i] = lo + (hi - lo) * ((float)(h & 0xffffff) / 16777216.0f);
    }
}

static float median(float *t, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            const float s = t[j];
            t[j] = t[j - 1], t[j - 1] = s;
        }
    return t[n / 2];
}

struct bufs {
    int64_t N, C;
    float *dx, *dx0, *dy, *x, *rstd, *g, *dg, *work;
    __nv_bfloat16 *dx16;
};

static void v1(const bufs &b) {
    k_rms_bwd_x<4><<<row_blocks(b.N), THREADS>>>(b.dx, b.dx16, b.dy, b.x, b.rstd, b.g, b.N, b.C);
    rms_dg(b.dg, b.dy, b.x, b.rstd, b.N, b.C, b.work, 0);
}

static void v2(const bufs &b) {
    const int64_t blocks = (b.N + RB - 1) / RB;
    const size_t smem = (size_t)(THREADS / 32) * b.C * sizeof(float);
    k_rms_bwd_fused<4><<<(unsigned)blocks, THREADS, smem>>>(b.dx, b.dx16, b.work, b.dy, b.x, b.rstd, b.g, b.N, b.C);
    sum_parts(b.dg, b.work, blocks, b.C, 0);
}

/* time `run` (dx and dg reset first, outside the timing), and leave its dx, dx16, dg on the host */
static float timed(const bufs &b, void (*run)(const bufs &), uint16_t *h16, float *hdx, float *hdg) {
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    float t[20];
    for (int it = -3; it < 20; it++) {
        CU(cudaMemcpy(b.dx, b.dx0, b.N * b.C * 4, cudaMemcpyDeviceToDevice));
        CU(cudaMemset(b.dg, 0, b.C * 4));
        CU(cudaEventRecord(e0, 0));
        run(b);
        CU(cudaEventRecord(e1, 0));
        CU(cudaEventSynchronize(e1));
        if (it >= 0) CU(cudaEventElapsedTime(&t[it], e0, e1));
    }
    CU(cudaGetLastError());
    CU(cudaMemcpy(h16, b.dx16, b.N * b.C * 2, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hdx, b.dx, b.N * b.C * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hdg, b.dg, b.C * 4, cudaMemcpyDeviceToHost));
    return median(t, 20);
}

static void shape(int64_t N, int64_t C) {
    bufs b;
    b.N = N, b.C = C;
    const int64_t n = N * C, parts = (N + RB - 1) / RB > parts_for(N) ? (N + RB - 1) / RB : parts_for(N);
    CU(cudaMalloc(&b.dx, n * 4));
    CU(cudaMalloc(&b.dx0, n * 4));
    CU(cudaMalloc(&b.dy, n * 4));
    CU(cudaMalloc(&b.x, n * 4));
    CU(cudaMalloc(&b.rstd, N * 4));
    CU(cudaMalloc(&b.g, C * 4));
    CU(cudaMalloc(&b.dg, C * 4));
    CU(cudaMalloc(&b.work, parts * C * 4));
    CU(cudaMalloc(&b.dx16, n * 2));
    k_fill<<<1024, THREADS>>>(b.dx0, n, 1, -1, 1);
    k_fill<<<1024, THREADS>>>(b.dy, n, 2, -1, 1);
    k_fill<<<1024, THREADS>>>(b.x, n, 3, -2, 2);
    k_fill<<<1024, THREADS>>>(b.rstd, N, 4, 0.5f, 2);
    k_fill<<<1024, THREADS>>>(b.g, C, 5, 0.5f, 1.5f);
    CU(cudaFuncSetAttribute(k_rms_bwd_fused<4>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            (int)((THREADS / 32) * C * sizeof(float))));
    uint16_t *a16 = (uint16_t *)malloc(n * 2), *b16 = (uint16_t *)malloc(n * 2);
    float *adx = (float *)malloc(n * 4), *bdx = (float *)malloc(n * 4), *adg = (float *)malloc(C * 4),
          *bdg = (float *)malloc(C * 4);
    const float t1 = timed(b, v1, a16, adx, adg), t2 = timed(b, v2, b16, bdx, bdg);
    double num = 0, den = 0;
    for (int64_t c = 0; c < C; c++) num += (adg[c] - bdg[c]) * (double)(adg[c] - bdg[c]), den += adg[c] * (double)adg[c];
    const int same = !memcmp(a16, b16, n * 2) && !memcmp(adx, bdx, n * 4);
    const double bytes = (double)n * (4 + 4 + 4 + 4 + 2);
    printf("  %6lld %5lld   v1 %7.3f ms %5.0f GB/s   v2 %7.3f ms %5.0f GB/s   dx %s, dg rel %.1e%s\n", (long long)N,
           (long long)C, t1, bytes / (t1 * 1e-3) * 1e-9, t2, bytes / (t2 * 1e-3) * 1e-9, same ? "same bits" : "DIFFERENT",
           sqrt(num / den), same && sqrt(num / den) < 1e-5 ? "" : "   FAIL");
    free(a16), free(b16), free(adx), free(bdx), free(adg), free(bdg);
    cudaFree(b.dx), cudaFree(b.dx0), cudaFree(b.dy), cudaFree(b.x), cudaFree(b.rstd), cudaFree(b.g), cudaFree(b.dg);
    cudaFree(b.work), cudaFree(b.dx16);
}

int main(int argc, char **argv) {
    cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("# RMSNorm backward, f32 in, dx and its bf16 copy out, %s; median of 20\n", prop.name);
    printf("  %6s %5s\n", "N", "C");
    if (argc > 2) {
        shape(atoll(argv[1]), atoll(argv[2]));
        return 0;
    }
    shape(8192, 2048);  /* 1B, 8192 × 1 */
    shape(16384, 1024); /* 400m, 8192 × 2 */
    shape(32768, 2048); /* 1B, 32768 × 1 */
    return 0;
}
