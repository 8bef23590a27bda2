/* cmd_bench.c — `lasp bench <what>`: benchmarks print tables (nccl-tests style: `#` comment lines,
 * fixed columns). `attn --device cpu` is here; the GPU, SP and training benches live in their own
 * files and are reached from the dispatch below. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "commands.h"
#include "core/rng.h"
#include "lasp.h"
#include "opts.h"

#ifdef _OPENMP
#include <omp.h>
#endif


typedef struct shape {
    int64_t B, H, T, D;
} shape;

/* Per-head slopes of docs/MATH.md §1 for the bottom layer: s_h = 2^(−8(h+1)/H). */
static void alibi_slopes(float *s, int64_t H) {
    for (int64_t h = 0; h < H; h++) s[h] = (float)pow(2.0, -8.0 * (double)(h + 1) / (double)H);
}

static float *randn(lasp_rng *r, size_t n, float scale) {
    float *x = malloc(n * sizeof *x);
    if (x)
        for (size_t i = 0; i < n; i++) x[i] = scale * (float)lasp_rng_normal(r);
    return x;
}

static int bench_attn_cpu(int argc, char **argv) {
    long long repeat = 5, threads = 0, block = LASP_ATTN_DEFAULT_BLOCK;
    int quick = 0;
    const char *device = "cpu";
    const opt opts[] = {
        {"--device", OPT_STR, &device, "cpu|cuda", "where to run", 0},
        {"--repeat", OPT_INT, &repeat, "N", "timed runs per shape (the median is reported)", 0},
        {"--threads", OPT_INT, &threads, "N", "CPU threads (0 = OpenMP's default; at most 1024)", 0},
        {"--block", OPT_INT, &block, "N", "chunk size C", 0},
        {"--quick", OPT_FLAG, &quick, NULL, "small shapes only, and no reference comparison", 0},
    };
    const cmd_spec spec = {
        "lasp bench attn [--device cpu|cuda] [--repeat N] [--threads N] [--block N] [--quick]",
        "Times the op forward and forward+backward for a few shapes: ms, GFLOP/s with the FLOPs of docs/MATH.md §7\n"
        "(fwd 4·B·H·T·D·(D+C), fwd+bwd 14·B·H·T·D·(D+C)) and GB/s of the ideal traffic (f32 I/O: fwd 16·B·H·T·D,\n"
        "fwd+bwd 44·B·H·T·D bytes). On the CPU it also times the fp64 O(T²) reference at T = 4096 and\n"
        "prints how much faster the chunked path is. --device cuda runs the GPU bench (its own options).",
        "lasp bench attn --device cpu", opts, N_OPTS(opts)};
    for (int i = 0; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--device") && !strcmp(argv[i + 1], "cuda")) device = "cuda";
        else if (!strcmp(argv[i], "--device=cuda")) device = "cuda";
    if (!strcmp(device, "cuda")) {
#ifdef LASP_HAVE_CUDA
        return lasp_bench_attn_cuda(argc, argv);
#else
        fprintf(stderr, "error: this build has no CUDA bench (hint: build with nvcc present; see `lasp info`)\n");
        return 1;
#endif
    }
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    if (strcmp(device, "cpu")) {
        fprintf(stderr, "error: --device '%s' is not known (hint: cpu or cuda)\n", device);
        return 2;
    }
    if (repeat < 1 || repeat > 100000 || threads < 0 || threads > LASP_MAX_THREADS || block < 1 || block > 4096) {
        fprintf(stderr, "error: --repeat %lld, --threads %lld, --block %lld: --repeat 1 .. 100000, --threads 0 .. %d, "
                "--block 1 .. 4096\n", repeat, threads, block, LASP_MAX_THREADS);
        return 2;
    }
    const shape full[] = {{1, 8, 1024, 64}, {1, 8, 4096, 64}, {1, 8, 16384, 64}, {1, 16, 4096, 128}, {4, 8, 4096, 64}};
    const shape small[] = {{1, 4, 1024, 64}, {1, 4, 1024, 128}};
    const shape *shapes = quick ? small : full;
    const int n_shapes = quick ? 2 : 5;

    lasp_ctx *ctx;
    lasp_ctx_params cp = lasp_ctx_default_params();
    cp.n_threads = (int)threads;
    if (lasp_ctx_create(&cp, &ctx) != LASP_OK) return 1;
    int nt = 1;
#ifdef _OPENMP
    nt = threads ? (int)threads : omp_get_max_threads();
#endif
    printf("# lasp bench attn — device cpu (%d threads), f32, block %lld, median of %lld runs\n", nt, block, repeat);
    printf("# %3s %4s %7s %4s %9s %9s %8s %9s %9s %8s\n", "B", "H", "T", "D", "fwd ms", "GFLOP/s", "GB/s", "f+b ms",
           "GFLOP/s", "GB/s");
    lasp_rng rng;
    lasp_rng_seed(&rng, 1234);
    int rc = 0;
    for (int si = 0; si < n_shapes && !rc; si++) {
        const shape s = shapes[si];
        lasp_attn_desc a = {.B = s.B, .T = s.T, .H = s.H, .d = s.D, .e = s.D, .block = (int)block, .dtype = LASP_F32};
        const size_t n = (size_t)(s.B * s.T * s.H * s.D), ns = (size_t)(s.B * s.H * s.D * s.D);
        float *q = randn(&rng, n, 0.1f), *k = randn(&rng, n, 1), *v = randn(&rng, n, 1), *dO = randn(&rng, n, 1);
        float *o = malloc(n * 4), *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4);
        float *kvo = malloc(ns * 4), *dkvi = malloc(ns * 4), *sl = malloc((size_t)s.H * 4);
        if (!q || !k || !v || !dO || !o || !dq || !dk || !dv || !kvo || !dkvi || !sl) {
            fprintf(stderr, "error: no memory for shape B%lld H%lld T%lld D%lld\n", (long long)s.B, (long long)s.H,
                    (long long)s.T, (long long)s.D);
            rc = 1;
        } else {
            alibi_slopes(sl, s.H);
            double tf[64], tb[64];
            const int reps = repeat > 64 ? 64 : (int)repeat;
            for (int it = -1; it < reps && !rc; it++) {  /* it = −1: warm-up */
                double t0 = tool_now_ms();
                rc |= lasp_attn_fwd(ctx, &a, q, k, v, sl, NULL, o, kvo) != LASP_OK;
                double t1 = tool_now_ms();
                rc |= lasp_attn_bwd(ctx, &a, q, k, v, sl, NULL, dO, NULL, dq, dk, dv, dkvi) != LASP_OK;
                double t2 = tool_now_ms();
                if (it >= 0) tf[it] = t1 - t0, tb[it] = t2 - t0;
            }
            if (rc) {
                fprintf(stderr, "error: %s\n", lasp_ctx_error(ctx));
            } else {
                const double mf = tool_median(tf, reps), mb = tool_median(tb, reps);
                const double C = (double)(block < s.T ? block : s.T), BHTD = (double)s.B * s.H * s.T * s.D;
                const double ff = 4 * BHTD * (s.D + C), fb = 14 * BHTD * (s.D + C);
                printf("  %3lld %4lld %7lld %4lld %9.2f %9.2f %8.2f %9.2f %9.2f %8.2f\n", (long long)s.B,
                       (long long)s.H, (long long)s.T, (long long)s.D, mf, ff / mf * 1e-6, 16 * BHTD / mf * 1e-6, mb,
                       fb / mb * 1e-6, 44 * BHTD / mb * 1e-6);
                fflush(stdout);
            }
        }
        free(q), free(k), free(v), free(dO), free(o), free(dq), free(dk), free(dv), free(kvo), free(dkvi), free(sl);
    }
    if (!rc && !quick) {
        /* chunked vs the O(T²) fp64 reference, forward, T = 4096 */
        const int64_t B = 1, H = 2, T = 4096, D = 64;
        lasp_attn_desc a = {.B = B, .T = T, .H = H, .d = D, .e = D, .block = (int)block, .dtype = LASP_F32};
        const size_t n = (size_t)(B * T * H * D);
        float *q = randn(&rng, n, 0.1f), *k = randn(&rng, n, 1), *v = randn(&rng, n, 1), *o = malloc(n * 4);
        double *q8 = malloc(n * 8), *k8 = malloc(n * 8), *v8 = malloc(n * 8), *o8 = malloc(n * 8), sl8[2];
        float sl[2];
        alibi_slopes(sl, H);
        for (size_t i = 0; i < n; i++) q8[i] = q[i], k8[i] = k[i], v8[i] = v[i];
        sl8[0] = sl[0], sl8[1] = sl[1];
        double t[9];
        for (int it = 0; it < 9; it++) {
            double t0 = tool_now_ms();
            lasp_attn_fwd(ctx, &a, q, k, v, sl, NULL, o, NULL);
            t[it] = tool_now_ms() - t0;
        }
        double tc = tool_median(t, 9), t0 = tool_now_ms();
        lasp_attn_ref_fwd(ctx, &a, q8, k8, v8, sl8, NULL, o8, NULL);
        double tr = tool_now_ms() - t0;
        printf("# reference vs chunked, forward, B1 H2 T4096 D64: fp64 reference %.1f ms, chunked %.2f ms: %.0fx faster\n",
               tr, tc, tr / tc);
        free(q), free(k), free(v), free(o), free(q8), free(k8), free(v8), free(o8);
    }
    lasp_ctx_free(ctx);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    const char *what = argc > 0 ? argv[0] : "";
    if (!strcmp(what, "attn")) return bench_attn_cpu(argc - 1, argv + 1);
    if (!strcmp(what, "sp")) return lasp_bench_sp(argc - 1, argv + 1);
    if (!strcmp(what, "train")) return lasp_bench_train(argc - 1, argv + 1);
    if (!strcmp(what, "--help") || !strcmp(what, "-h")) {
        printf("usage: lasp bench <attn|sp|train> [options]\n\n"
               "  attn   the op alone, forward and forward+backward (--device cpu|cuda)\n"
               "  sp     sequence parallelism under mpirun: LASP chain vs LASP-2, weak and strong scaling\n"
               "  train  training step throughput\n\n`lasp bench <what> --help` lists the options of each.\n");
        return 0;
    }
    fprintf(stderr, "error: unknown or unavailable benchmark '%s' (hint: `lasp bench --help`)\n", what);
    return 2;
}
