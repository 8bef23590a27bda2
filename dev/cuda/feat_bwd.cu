/* dev/cuda/feat_bwd.cu — the features' backward (the short convolution and SiLU, layers_cuda.cu) at the 1B
 * preset's shape, in variants: rows whose loads a thread issues together (batch), the blocks an SM must
 * hold at once (min blocks: the register cap), and the rows of a tile. Each variant's dp must be the
 * library default's bits and its taps' gradient within 1e-5; times are the kernel and the column sum, median
 * of 20 CUDA-event-timed runs after 3 warm-ups, with the bytes they move at that time. Also the RMSNorm
 * backward's two passes (dx, then the gain's column sums) timed apart, to see what each costs.
 *
 *   build/dev/feat_bwd [N C]        (default 8192 2048: one sequence of 8192 tokens, K = 4, bf16)
 */
#include "model/layers_cuda.cu"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

__global__ void k_fill(float *x, int64_t n, uint32_t seed, float scale) {
    GRID_STRIDE(i, n) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
        x[i] = scale * ((float)(h & 0xffffff) / 16777216.0f - 0.5f);
    }
}

__global__ void k_fill16(__nv_bfloat16 *x, const float *f, int64_t n) {
    GRID_STRIDE(i, n) x[i] = __float2bfloat16_rn(f[i]);
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
    int64_t N, C, K;
    float *p, *wc, *work, *dwc;
    __nv_bfloat16 *dq, *dk, *dv, *dp;
};

template <int BATCH, int MINB>
static void run(const bufs &b, int64_t rows) {
    const int64_t W = 3 * b.C, tiles = (b.N + rows - 1) / rows;
    const dim3 grid((unsigned)tiles, (unsigned)((W + THREADS - 1) / THREADS));
    CK(cudaMemsetAsync(b.dwc, 0, b.K * W * 4, 0));
    k_feat_bwd<4, __nv_bfloat16, BATCH, MINB><<<grid, THREADS, 0, 0>>>(
        b.dp, 4 * b.C, b.work, nullptr, nullptr, b.dq, b.dk, b.dv, b.p, 4 * b.C, nullptr, b.wc, b.N, (int)b.C,
        (int)b.K, 0, rows, tiles);
    sum_parts(b.dwc, b.work, tiles, b.K * W, 0);
}

static __nv_bfloat16 *ref_dp;
static float *ref_dwc;

template <int BATCH, int MINB>
static void variant(const bufs &b, int64_t rows, double bytes) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float t[20];
    for (int it = -3; it < 20; it++) {
        CK(cudaEventRecord(e0, 0));
        run<BATCH, MINB>(b, rows);
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        if (it >= 0) CK(cudaEventElapsedTime(&t[it], e0, e1));
    }
    CK(cudaGetLastError());
    const int64_t W = 3 * b.C, ndp = b.N * 4 * b.C;
    const char *check = "reference";
    if (!ref_dp) {
        CK(cudaMalloc(&ref_dp, ndp * 2));
        CK(cudaMalloc(&ref_dwc, b.K * W * 4));
        CK(cudaMemcpy(ref_dp, b.dp, ndp * 2, cudaMemcpyDeviceToDevice));
        CK(cudaMemcpy(ref_dwc, b.dwc, b.K * W * 4, cudaMemcpyDeviceToDevice));
    } else {
        uint16_t *h0 = (uint16_t *)malloc(ndp * 2), *h1 = (uint16_t *)malloc(ndp * 2);
        float *g0 = (float *)malloc(b.K * W * 4), *g1 = (float *)malloc(b.K * W * 4);
        CK(cudaMemcpy(h0, ref_dp, ndp * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(h1, b.dp, ndp * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(g0, ref_dwc, b.K * W * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(g1, b.dwc, b.K * W * 4, cudaMemcpyDeviceToHost));
        int64_t bad = 0;
        for (int64_t i = 0; i < b.N; i++)
            for (int64_t c = 0; c < W; c++) bad += h0[i * 4 * b.C + c] != h1[i * 4 * b.C + c];
        double num = 0, den = 0;
        for (int64_t i = 0; i < b.K * W; i++) num += (g0[i] - g1[i]) * (g0[i] - g1[i]), den += g0[i] * g0[i];
        check = bad == 0 && sqrt(num / (den + 1e-30)) < 1e-5 ? "same" : "DIFFERENT";
        free(h0), free(h1), free(g0), free(g1);
    }
    const float ms = median(t, 20);
    printf("  %5d %5d %5lld %9.3f %9.0f   %s\n", BATCH, MINB, (long long)rows, ms, bytes / (ms * 1e-3) * 1e-9, check);
}

int main(int argc, char **argv) {
    bufs b;
    b.N = argc > 2 ? atoll(argv[1]) : 8192, b.C = argc > 2 ? atoll(argv[2]) : 2048, b.K = 4;
    const int64_t W = 3 * b.C, N = b.N, C = b.C;
    float *tmp;
    CK(cudaMalloc(&b.p, N * 4 * C * 4));
    CK(cudaMalloc(&tmp, N * C * 4));
    CK(cudaMalloc(&b.wc, b.K * W * 4));
    CK(cudaMalloc(&b.work, (N / 16 + 1) * b.K * W * 4));
    CK(cudaMalloc(&b.dwc, b.K * W * 4));
    CK(cudaMalloc(&b.dp, N * 4 * C * 2));
    CK(cudaMalloc(&b.dq, N * C * 2));
    CK(cudaMalloc(&b.dk, N * C * 2));
    CK(cudaMalloc(&b.dv, N * C * 2));
    k_fill<<<1024, THREADS>>>(b.p, N * 4 * C, 1, 2.0f);
    k_fill<<<1024, THREADS>>>(b.wc, b.K * W, 2, 1.0f);
    __nv_bfloat16 *g[3] = {b.dq, b.dk, b.dv};
    for (int i = 0; i < 3; i++) {
        k_fill<<<1024, THREADS>>>(tmp, N * C, 3 + i, 0.1f);
        k_fill16<<<1024, THREADS>>>(g[i], tmp, N * C);
    }
    CK(cudaDeviceSynchronize());
    /* p read (3C of 4C columns, f32), dq dk dv read and dp written (bf16), the partials written and read */
    const double bytes = (double)N * W * (4 + 2 + 2);
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# features' backward, N %lld C %lld K 4, bf16, %s; bytes %.0f MB (+ partials); median of 20\n",
           (long long)N, (long long)C, prop.name, bytes * 1e-6);
    printf("  batch  minb  rows        ms      GB/s   check\n");
    variant<8, 1>(b, 32, bytes); /* the library's default: the reference */
    variant<4, 1>(b, 32, bytes);
    variant<16, 1>(b, 32, bytes);
    variant<8, 2>(b, 32, bytes);
    variant<8, 3>(b, 32, bytes);
    variant<8, 4>(b, 32, bytes);
    variant<4, 3>(b, 32, bytes);
    variant<4, 4>(b, 32, bytes);
    variant<8, 1>(b, 64, bytes);
    variant<8, 3>(b, 64, bytes);
    variant<4, 4>(b, 64, bytes);
    variant<16, 2>(b, 64, bytes);
    variant<8, 1>(b, 128, bytes);
    variant<8, 3>(b, 128, bytes);

    /* RMSNorm backward at [N, C] in f32 (dx16 written): the dx pass, then the gain's sums */
    float *dx, *dy, *x, *rstd, *gg, *dg;
    __nv_bfloat16 *dx16;
    CK(cudaMalloc(&dx, N * C * 4));
    CK(cudaMalloc(&dy, N * C * 4));
    CK(cudaMalloc(&x, N * C * 4));
    CK(cudaMalloc(&rstd, N * 4));
    CK(cudaMalloc(&gg, C * 4));
    CK(cudaMalloc(&dg, C * 4));
    CK(cudaMalloc(&dx16, N * C * 2));
    k_fill<<<1024, THREADS>>>(dy, N * C, 7, 1.0f);
    k_fill<<<1024, THREADS>>>(x, N * C, 8, 1.0f);
    k_fill<<<1024, THREADS>>>(rstd, N, 9, 1.0f);
    k_fill<<<1024, THREADS>>>(gg, C, 10, 1.0f);
    cudaEvent_t e0, e1, e2;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventCreate(&e2));
    float ta[20], tb[20];
    for (int it = -3; it < 20; it++) {
        CK(cudaEventRecord(e0, 0));
        k_rms_bwd_x<4><<<row_blocks(N), THREADS>>>(dx, dx16, dy, x, rstd, gg, N, C);
        CK(cudaEventRecord(e1, 0));
        rms_dg(dg, dy, x, rstd, N, C, b.work, 0);
        CK(cudaEventRecord(e2, 0));
        CK(cudaEventSynchronize(e2));
        if (it >= 0) {
            CK(cudaEventElapsedTime(&ta[it], e0, e1));
            CK(cudaEventElapsedTime(&tb[it], e1, e2));
        }
    }
    CK(cudaGetLastError());
    const double ma = median(ta, 20), mb = median(tb, 20);
    printf("# RMSNorm backward, N %lld C %lld: dx pass %.3f ms (%.0f GB/s for x, dy, dx read + dx, dx16 written); "
           "gain's sums %.3f ms (%.0f GB/s for x, dy read)\n",
           (long long)N, (long long)C, ma, N * C * 18.0 / (ma * 1e-3) * 1e-9, mb, N * C * 8.0 / (mb * 1e-3) * 1e-9);
    return 0;
}
