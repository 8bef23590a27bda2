/* dev/cuda/attn_fwd.cu — kernel playground for the op's forward (llm.c style): numbered versions, a CPU
 * check, a benchmark with napkin-math bandwidth.
 *
 *   build/dev/attn_fwd [version] [B H T D]        (default: every version, B1 H16 T8192 D64)
 *
 *   version 1  the recurrent form, one thread per (b, h, value column), the state column in registers:
 *              S_t = λ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t. Simple, exact, serial in T: slow.
 *   version 2  the library's portable kernels (src/attn/attn_kern_sm80.h: segment states, scan, chunked
 *              outputs on tensor cores, mma.sync m16n8k16), through lasp_attn_fwd on a context with
 *              kernels = LASP_KERNELS_SM80.
 *   version 3  the library as it runs by default: on Hopper the state pass on wgmma from swizzled shared
 *              memory (attn_kern_sm90.h) and the output pass pipelined with mbarriers, TMA loads and
 *              stores, two output warpgroups on alternate chunks (attn_kern_sm90_out.h); elsewhere the
 *              same as version 2.
 * (A wgmma output pass whose two warpgroups ran in lock-step sat between versions 2 and 3; the TMA pass
 * replaced it, and git history keeps it.)
 *
 * The check compares each version against the CPU chunked fp32 path (itself tested against fp64) on the
 * same bf16-rounded inputs; tolerance 1e-2. Times: median of 20 CUDA-event-timed runs after 3 warm-ups. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"
#include "dev_check.h"

/* version 1: q, k, v, o [B,T,H,D] bf16; one thread per (b, h, column c) */
template <int D>
__global__ void attn_fwd_v1(const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                            const float *slopes, __nv_bfloat16 *o, int B, int T, int H) {
    const int c = threadIdx.x, bh = blockIdx.x, b = bh / H, h = bh % H;
    const float lam = expf(-slopes[h]);
    float S[D];
#pragma unroll
    for (int r = 0; r < D; r++) S[r] = 0.f;
    for (int t = 0; t < T; t++) {
        const size_t row = ((size_t)b * T + t) * H + h;
        const float vc = __bfloat162float(v[row * D + c]);
        float acc = 0.f;
#pragma unroll
        for (int r = 0; r < D; r++) {
            S[r] = lam * S[r] + __bfloat162float(k[row * D + r]) * vc;
            acc += __bfloat162float(q[row * D + r]) * S[r];
        }
        o[row * D + c] = __float2bfloat16(acc);
    }
}

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int only = argc > 1 ? atoi(argv[1]) : 0;
    const int B = argc > 5 ? atoi(argv[2]) : 1, H = argc > 5 ? atoi(argv[3]) : 16, T = argc > 5 ? atoi(argv[4]) : 8192,
              D = argc > 5 ? atoi(argv[5]) : 64;
    if (D != 64 && D != 128) {
        fprintf(stderr, "D must be 64 or 128 here\n");
        return 2;
    }
    const size_t n = (size_t)B * T * H * D;
    float *x[3], *sl = (float *)malloc(H * sizeof(float)), *ref = (float *)malloc(n * 4), *got = (float *)malloc(n * 4);
    void *hb = malloc(n * 2), *dx[3], *dout;
    float *dsl;
    lasp_rng rng;
    lasp_rng_seed(&rng, 1);
    for (int i = 0; i < 3; i++) {
        x[i] = (float *)malloc(n * 4);
        for (size_t j = 0; j < n; j++) x[i][j] = (float)lasp_rng_normal(&rng) * (i == 0 ? 0.1f : 1.0f);
        lasp_convert(hb, LASP_BF16, x[i], LASP_F32, n);
        lasp_convert(x[i], LASP_F32, hb, LASP_BF16, n);  /* the CPU sees the bf16 values too */
        CU(cudaMalloc(&dx[i], n * 2));
        CU(cudaMemcpy(dx[i], hb, n * 2, cudaMemcpyHostToDevice));
    }
    for (int h = 0; h < H; h++) sl[h] = (float)pow(2.0, -8.0 * (h + 1) / H);
    CU(cudaMalloc(&dout, n * 2));
    CU(cudaMalloc((void **)&dsl, H * 4));
    CU(cudaMemcpy(dsl, sl, H * 4, cudaMemcpyHostToDevice));

    lasp_ctx *ctx, *ctx80;
    lasp_ctx_params p = lasp_ctx_default_params(), p80 = p;
    p80.kernels = LASP_KERNELS_SM80;
    if (lasp_ctx_create(&p, &ctx) != LASP_OK || lasp_ctx_create(&p80, &ctx80) != LASP_OK) return 1;
    lasp_attn_desc a32 = {B, T, H, D, D, 0, LASP_F32}, a16 = {B, T, H, D, D, 0, LASP_BF16};
    if (lasp_attn_fwd(ctx, &a32, x[0], x[1], x[2], sl, NULL, ref, NULL) != LASP_OK) return 1;
    double *ref8 = (double *)malloc(n * 8);
    for (size_t j = 0; j < n; j++) ref8[j] = ref[j];

    printf("# attn_fwd B%d H%d T%d D%d bf16; ideal bytes 8·BHTD = %.1f MB\n", B, H, T, D, 8.0 * n / 1e6);
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    int wrong = 0;
    for (int ver = 1; ver <= 3; ver++) {
        if (only && ver != only) continue;
        lasp_ctx *c = ver == 2 ? ctx80 : ctx;
        float t[20];
        for (int it = -3; it < 20; it++) {
            CU(cudaMemset(dout, 0xff, n * 2));
            CU(cudaEventRecord(e0, 0));
            if (ver == 1) {
                if (D == 64) attn_fwd_v1<64><<<B * H, D>>>((const __nv_bfloat16 *)dx[0], (const __nv_bfloat16 *)dx[1],
                                                          (const __nv_bfloat16 *)dx[2], dsl, (__nv_bfloat16 *)dout, B, T, H);
                else attn_fwd_v1<128><<<B * H, D>>>((const __nv_bfloat16 *)dx[0], (const __nv_bfloat16 *)dx[1],
                                                    (const __nv_bfloat16 *)dx[2], dsl, (__nv_bfloat16 *)dout, B, T, H);
                CU(cudaGetLastError());
            } else if (lasp_attn_fwd(c, &a16, dx[0], dx[1], dx[2], dsl, NULL, dout, NULL) != LASP_OK) {
                fprintf(stderr, "%s\n", lasp_ctx_error(c));
                return 1;
            }
            CU(cudaEventRecord(e1, 0));
            CU(cudaEventSynchronize(e1));
            if (it >= 0) CU(cudaEventElapsedTime(&t[it], e0, e1));
        }
        qsort(t, 20, sizeof t[0], cmp);
        CU(cudaMemcpy(hb, dout, n * 2, cudaMemcpyDeviceToHost));
        lasp_convert(got, LASP_F32, hb, LASP_BF16, n);
        const double err = lasp_rel_error_f32(got, ref8, n), ms = 0.5 * (t[9] + t[10]);
        printf("version %d: %9.3f ms  %7.1f GB/s  rel error %.2e  %s\n", ver, ms, 8.0 * n / (ms * 1e6), err,
               err <= 1e-2 ? "ok" : "WRONG");
        wrong += !(err <= 1e-2);
    }
    lasp_ctx_free(ctx);
    lasp_ctx_free(ctx80);
    return wrong ? 1 : 0;
}
