/* bench_attn_cuda.c — `lasp bench attn --device cuda`: the fused CUDA op, forward and forward+backward,
 * timed with CUDA events (median of many runs after warm-up), inputs rotated over several sets so that
 * the L2 cache does not flatter the result. Reports TFLOP/s with the FLOPs of MATH.md §7 (C = 64) and
 * GB/s of the ideal DRAM traffic (fwd 4·s·BHTD, fwd+bwd 11·s·BHTD bytes for an s-byte dtype) against
 * the copy bandwidth measured on the same device. nccl-tests style: `#` lines, fixed columns. */
#ifdef LASP_HAVE_CUDA
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"
#include "opts.h"

int lasp_bench_attn_cuda(int argc, char **argv);

typedef struct shape {
    int64_t B, H, T, D;
} shape;

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median_f(float *x, int n) {
    qsort(x, (size_t)n, sizeof *x, cmp_float);
    return n % 2 ? x[n / 2] : 0.5f * (x[n / 2 - 1] + x[n / 2]);
}

#define CU(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "error: %s: %s\n", #call, cudaGetErrorString(e_));                \
            goto fail;                                                                        \
        }                                                                                     \
    } while (0)

/* Fill a device buffer with normal values × scale: a host pattern of up to 8M elements, tiled
 * (different offset per buffer), so the data is random-looking, never zeros, and fast to make. */
static int fill(void *d, size_t n, lasp_dtype t, const void *pat, size_t npat, size_t offset) {
    const size_t es = lasp_dtype_size(t);
    size_t done = 0;
    offset %= npat;
    while (done < n) {
        size_t m = npat - offset;
        if (m > n - done) m = n - done;
        if (cudaMemcpy((char *)d + done * es, (const char *)pat + offset * es, m * es, cudaMemcpyHostToDevice) !=
            cudaSuccess)
            return 1;
        done += m, offset = 0;
    }
    return 0;
}

/* Device-to-device copy bandwidth, bytes read + written, median of 10 copies of 1 GiB. */
static double copy_bandwidth(void) {
    const size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float t[10];
    double bw = 0;
    CU(cudaMalloc(&a, bytes));
    CU(cudaMalloc(&b, bytes));
    CU(cudaMemset(a, 1, bytes));
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    for (int i = -2; i < 10; i++) {
        CU(cudaEventRecord(e0, 0));
        CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        CU(cudaEventRecord(e1, 0));
        CU(cudaEventSynchronize(e1));
        if (i >= 0) CU(cudaEventElapsedTime(&t[i], e0, e1));
    }
    bw = 2.0 * (double)bytes / (median_f(t, 10) * 1e-3) * 1e-9;
fail:
    cudaFree(a), cudaFree(b);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    return bw;
}

enum { NT_IN = 4, NT_OUT = 4, MAX_SETS = 8 };

static int bench_shape(lasp_ctx *ctx, shape s, lasp_dtype t, int warmup, int repeat, double copy_bw,
                       const void *pat, size_t npat, size_t l2, int recompute) {
    const size_t n = (size_t)(s.B * s.T * s.H * s.D), es = lasp_dtype_size(t);
    const size_t set_bytes = NT_IN * n * es;
    int nsets = (int)((4 * l2 + set_bytes - 1) / set_bytes);
    if (nsets < 2) nsets = 2;
    if (nsets > MAX_SETS) nsets = MAX_SETS;
    void *in[MAX_SETS][NT_IN] = {{0}}, *out[NT_OUT] = {0};
    float *sl = NULL, *slh = NULL, *tf = NULL, *tb = NULL, *saved = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int rc = 1;
    lasp_attn_desc a = {.B = s.B, .T = s.T, .H = s.H, .d = s.D, .e = s.D, .block = 0, .dtype = t};
    for (int i = 0; i < nsets; i++)
        for (int j = 0; j < NT_IN; j++) {
            CU(cudaMalloc(&in[i][j], n * es));
            if (fill(in[i][j], n, t, pat, npat, (size_t)(i * NT_IN + j) * 7919)) goto fail;
        }
    for (int j = 0; j < NT_OUT; j++) CU(cudaMalloc(&out[j], n * es));
    slh = malloc((size_t)s.H * sizeof(float));
    tf = malloc((size_t)repeat * sizeof(float)), tb = malloc((size_t)repeat * sizeof(float));
    if (!slh || !tf || !tb) goto fail;
    for (int64_t h = 0; h < s.H; h++) slh[h] = (float)pow(2.0, -8.0 * (double)(h + 1) / (double)s.H);
    CU(cudaMalloc((void **)&sl, (size_t)s.H * sizeof(float)));
    /* --recompute: the backward recomputes the forward's states instead of reading the saved ones */
    if (!recompute) {
        size_t sb = 0;
        if (lasp_attn_saved_bytes(ctx, &a, &sb) != LASP_OK) goto lasp_fail;
        CU(cudaMalloc((void **)&saved, sb));
    }
    CU(cudaMemcpy(sl, slh, (size_t)s.H * sizeof(float), cudaMemcpyHostToDevice));
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    CU(cudaDeviceSynchronize());
    /* events on the legacy default stream order with the op's (blocking) stream */
    for (int pass = 0; pass < 2; pass++) {
        float *tt = pass ? tb : tf;
        for (int it = -warmup; it < repeat; it++) {
            void **x = in[(it + warmup) % nsets];
            CU(cudaEventRecord(e0, 0));
            /* fwd+bwd as training runs it: the forward keeps its states for the backward */
            float *keep = pass ? saved : NULL;
            if (lasp_attn_fwd_saving(ctx, &a, x[0], x[1], x[2], sl, NULL, out[0], NULL, keep) != LASP_OK)
                goto lasp_fail;
            if (pass && lasp_attn_bwd_saved(ctx, &a, x[0], x[1], x[2], sl, NULL, x[3], NULL, out[1], out[2], out[3],
                                            NULL, keep) != LASP_OK)
                goto lasp_fail;
            CU(cudaEventRecord(e1, 0));
            CU(cudaEventSynchronize(e1));
            if (it >= 0) CU(cudaEventElapsedTime(&tt[it], e0, e1));
        }
    }
    {
        const double mf = median_f(tf, repeat), mb = median_f(tb, repeat);
        const double C = 64, BHTD = (double)n;
        const double ff = 4 * BHTD * (s.D + C), fb = 14 * BHTD * (s.D + C);
        const double bf = 4.0 * es * BHTD, bb = 11.0 * es * BHTD;
        printf("  %2lld %3lld %7lld %4lld %5s %9.3f %8.1f %8.0f %5.0f%% %9.3f %8.1f %8.0f %5.0f%%\n", (long long)s.B,
               (long long)s.H, (long long)s.T, (long long)s.D, lasp_dtype_name(t), mf, ff / mf * 1e-9,
               bf / mf * 1e-6, 100 * bf / mf * 1e-6 / copy_bw, mb, fb / mb * 1e-9, bb / mb * 1e-6,
               100 * bb / mb * 1e-6 / copy_bw);
        fflush(stdout);
    }
    rc = 0;
    goto fail;
lasp_fail:
    fprintf(stderr, "error: %s\n", lasp_ctx_error(ctx));
fail:
    for (int i = 0; i < nsets; i++)
        for (int j = 0; j < NT_IN; j++) cudaFree(in[i][j]);
    for (int j = 0; j < NT_OUT; j++) cudaFree(out[j]);
    cudaFree(sl), cudaFree(saved);
    free(slh), free(tf), free(tb);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    return rc;
}

int lasp_bench_attn_cuda(int argc, char **argv) {
    const char *device = "cuda", *dtype = "bf16", *one = NULL;
    const char *kernels = "auto";
    long long repeat = 50, warmup = 10, dim = 0;
    int quick = 0, recompute = 0;
    const opt opts[] = {
        {"--device", OPT_STR, &device, "cuda", "where to run (this bench: cuda)", 0},
        {"--dtype", OPT_STR, &dtype, "bf16|f16|f32", "I/O type (states are fp32 always)", 0},
        {"--repeat", OPT_INT, &repeat, "N", "timed runs per shape (the median is reported)", 0},
        {"--warmup", OPT_INT, &warmup, "N", "untimed runs first", 0},
        {"--dim", OPT_INT, &dim, "D", "only shapes of head dim D (64 or 128; 0 = both)", 0},
        {"--quick", OPT_FLAG, &quick, NULL, "only B1 H16 T32768, per head dim", 0},
        {"--shape", OPT_STR, &one, "B,H,T,D", "only this shape (D 64 or 128; to profile one shape)", 0},
        {"--kernels", OPT_STR, &kernels, "auto|sm80", "the kernels: the fastest for the GPU, or the portable mma.sync "
                                                      "ones everywhere", 0},
        {"--recompute", OPT_FLAG, &recompute, NULL, "the backward recomputes the forward's states (not kept)", 0},
    };
    const cmd_spec spec = {
        "lasp bench attn --device cuda [--dtype bf16|f16|f32] [--repeat N] [--warmup N] [--dim D] [--quick]\n"
        "                              [--shape B,H,T,D] [--kernels auto|sm80] [--recompute]",
        "Times the fused CUDA op, forward and forward+backward, on eight reference shapes (D = 128 and\n"
        "D = 64), ALiBi slopes s_h = 2^(−8(h+1)/H): median of N CUDA-event-timed runs after warm-up, inputs\n"
        "rotated over several sets larger than L2 together. TFLOP/s with the FLOPs of docs/MATH.md §7 (C = 64),\n"
        "GB/s of the ideal traffic (each input read once, each output written once) and that as % of the\n"
        "measured device-to-device copy bandwidth.",
        "lasp bench attn --device cuda --dtype bf16", opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    lasp_dtype t;
    if (!strcmp(dtype, "bf16")) t = LASP_BF16;
    else if (!strcmp(dtype, "f16")) t = LASP_F16;
    else if (!strcmp(dtype, "f32")) t = LASP_F32;
    else {
        fprintf(stderr, "error: --dtype '%s' is not known (hint: bf16, f16 or f32)\n", dtype);
        return 2;
    }
    if (strcmp(device, "cuda") || repeat < 1 || repeat > 100000 || warmup < 0 || (dim && dim != 64 && dim != 128)) {
        fprintf(stderr, "error: need --device cuda, --repeat ≥ 1, --warmup ≥ 0, --dim 0, 64 or 128\n");
        return 2;
    }
    if (strcmp(kernels, "auto") && strcmp(kernels, "sm80")) {
        fprintf(stderr, "error: --kernels '%s' is not known (hint: auto or sm80)\n", kernels);
        return 2;
    }
    int dev = 0;
    struct cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, "error: no usable GPU (hint: a machine with an NVIDIA GPU and its driver; `lasp info` lists "
                "the devices)\n");
        return 1;
    }
    const shape full[] = {{1, 16, 32768, 128}, {1, 32, 32768, 128}, {4, 16, 8192, 128}, {1, 16, 131072, 128},
                          {1, 16, 32768, 64},  {1, 32, 32768, 64},  {4, 16, 8192, 64},  {1, 16, 131072, 64}};
    const shape small[] = {{1, 16, 32768, 128}, {1, 16, 32768, 64}};
    const shape *shapes = quick ? small : full;
    int n_shapes = quick ? 2 : 8;
    shape given;
    if (one) {
        long long v[4];
        char tail;
        if (sscanf(one, "%lld,%lld,%lld,%lld%c", &v[0], &v[1], &v[2], &v[3], &tail) != 4 || v[0] < 1 || v[1] < 1 ||
            v[2] < 1 || (v[3] != 64 && v[3] != 128) || v[0] * v[1] > 65535) {
            fprintf(stderr, "error: --shape '%s' is not B,H,T,D (hint: 1,16,32768,128; D is 64 or 128)\n", one);
            return 2;
        }
        given = (shape){v[0], v[1], v[2], v[3]};
        shapes = &given, n_shapes = 1;
    }

    /* the random pattern the inputs are tiled from */
    const size_t npat = (size_t)1 << 23;
    float *pf = malloc(npat * sizeof(float));
    void *pat = malloc(npat * lasp_dtype_size(t));
    if (!pf || !pat) {
        free(pf), free(pat);
        fprintf(stderr, "error: no host memory for the input pattern\n");
        return 1;
    }
    lasp_rng rng;
    lasp_rng_seed(&rng, 20261123);
    for (size_t i = 0; i < npat; i++) pf[i] = (float)lasp_rng_normal(&rng);
    lasp_convert(pat, t, pf, LASP_F32, npat);
    free(pf);

    lasp_ctx *ctx;
    lasp_ctx_params cp = lasp_ctx_default_params();
    cp.kernels = !strcmp(kernels, "sm80") ? LASP_KERNELS_SM80 : LASP_KERNELS_AUTO;
    if (lasp_ctx_create(&cp, &ctx) != LASP_OK) {
        free(pat);
        return 1;
    }
    const double bw = copy_bandwidth();
    printf("# lasp bench attn — device cuda: %s, %d SMs, %.0f MB L2; copy bandwidth %.0f GB/s (read + write)\n",
           prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, bw);
    printf("# %s I/O, fp32 states, slopes 2^(-8(h+1)/H), median of %lld runs after %lld warm-up, inputs rotated; "
           "kernels %s%s\n", dtype, repeat, warmup, kernels, recompute ? ", the backward recomputing the states" : "");
    printf("# FLOPs fwd 4·BHTD(D+64), fwd+bwd 14·BHTD(D+64); ideal bytes fwd 4·s·BHTD, fwd+bwd 11·s·BHTD\n");
    printf("# %2s %3s %7s %4s %5s %9s %8s %8s %6s %9s %8s %8s %6s\n", "B", "H", "T", "D", "type", "fwd ms", "TFLOP/s",
           "GB/s", "%copy", "f+b ms", "TFLOP/s", "GB/s", "%copy");
    int rc = 0;
    for (int i = 0; i < n_shapes && !rc; i++) {
        if (dim && shapes[i].D != dim) continue;
        rc = bench_shape(ctx, shapes[i], t, (int)warmup, (int)repeat, bw, pat, npat, (size_t)prop.l2CacheSize,
                         recompute);
    }
    lasp_ctx_free(ctx);
    free(pat);
    return rc;
}
#endif
