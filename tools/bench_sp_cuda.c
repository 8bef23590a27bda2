/* bench_sp_cuda.c — `lasp bench sp --device cuda` under mpirun, one process per GPU: one attention
 * layer forward+backward through the LASP chain and LASP-2 on W GPUs (NCCL), against the same op on
 * one GPU at the same tokens per GPU. Weak scaling (T_local fixed) and strong scaling (T fixed).
 * "exposed" is the SP time minus the one-GPU time at T_local: what sequence parallelism costs beyond
 * the local attention. Times are the slowest rank's, median over repeats, host-timed around a barrier
 * and a stream synchronisation. The host world (MPI) agrees on times and memory; the GPU world (NCCL)
 * carries the states. */
#if defined(LASP_HAVE_CUDA) && defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"
#include "opts.h"

int lasp_bench_sp_cuda(int argc, char **argv);

/* Device tensors of one layer on one GPU. */
typedef struct layer {
    void *q, *k, *v, *dO, *o, *dq, *dk, *dv;
    float *slopes, *kv, *dkv;
} layer;

/* n random elements of t on the device (scale 0: zeros). One block of at most 4M values is drawn and
 * tiled: drawing hundreds of millions of normals on the host would take minutes at the longest T. */
static void *dev_rand(size_t n, lasp_dtype t, lasp_rng *r, float scale) {
    const size_t es = lasp_dtype_size(t), blk = n < ((size_t)1 << 22) ? n : ((size_t)1 << 22);
    void *d = NULL;
    if (cudaMalloc(&d, (n ? n : 1) * es) != cudaSuccess) return NULL;
    if (scale == 0) {
        cudaMemset(d, 0, n * es);
        return d;
    }
    float *h = malloc(blk * sizeof *h);
    void *c = malloc(blk * es);
    if (!h || !c) {
        free(h), free(c), cudaFree(d);
        return NULL;
    }
    for (size_t i = 0; i < blk; i++) h[i] = scale * (float)lasp_rng_normal(r);
    lasp_convert(c, t, h, LASP_F32, blk);
    for (size_t off = 0; off < n; off += blk)
        cudaMemcpy((char *)d + off * es, c, (n - off < blk ? n - off : blk) * es, cudaMemcpyHostToDevice);
    free(h), free(c);
    return d;
}

static int layer_alloc(layer *L, const lasp_attn_desc *a, uint64_t seed) {
    lasp_rng r;
    lasp_rng_seed(&r, seed);
    const size_t n = (size_t)(a->B * a->T * a->H * a->d), ns = (size_t)(a->B * a->H * a->d * a->e);
    const float s = 1.0f / sqrtf((float)a->d);
    L->q = dev_rand(n, a->dtype, &r, s), L->k = dev_rand(n, a->dtype, &r, 1), L->v = dev_rand(n, a->dtype, &r, 1);
    L->dO = dev_rand(n, a->dtype, &r, 1), L->o = dev_rand(n, a->dtype, &r, 0), L->dq = dev_rand(n, a->dtype, &r, 0);
    L->dk = dev_rand(n, a->dtype, &r, 0), L->dv = dev_rand(n, a->dtype, &r, 0);
    L->kv = dev_rand(ns, LASP_F32, &r, 0), L->dkv = dev_rand(ns, LASP_F32, &r, 0);
    float *sl = malloc((size_t)a->H * sizeof *sl);
    for (int64_t h = 0; h < a->H; h++) sl[h] = (float)pow(2.0, -8.0 * (h + 1) / (double)a->H);
    L->slopes = dev_rand((size_t)a->H, LASP_F32, &r, 0);
    if (L->slopes) cudaMemcpy(L->slopes, sl, (size_t)a->H * sizeof *sl, cudaMemcpyHostToDevice);
    free(sl);
    return L->q && L->k && L->v && L->dO && L->o && L->dq && L->dk && L->dv && L->kv && L->dkv && L->slopes;
}

static void layer_free(layer *L) {
    void *p[] = {L->q, L->k, L->v, L->dO, L->o, L->dq, L->dk, L->dv, L->slopes, L->kv, L->dkv};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) cudaFree(p[i]);
    memset(L, 0, sizeof *L);
}

/* x reduced over the host world (max or min); a failure of the host world itself ends the job */
static double host_reduce(lasp_comm *hw, double x, lasp_reduce_op op) {
    double y = 0;
    lasp_err err = {0};
    if (lasp_comm_allreduce(hw, &x, &y, 1, LASP_F64, op, &err) != LASP_OK) lasp_comm_abort(hw, err.msg);
    return y;
}

/* Median (over ranks: the slowest) ms of `reps` fwd+bwd; sp == NULL: the one-GPU op. */
static double time_layer(lasp_comm *hw, lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, layer *L, int reps,
                         int warm, int *failed) {
    void *stream = NULL;
    lasp_ctx_cuda_stream(ctx, &stream);
    lasp_sp_cache *cache = NULL;
    double *t = malloc((size_t)reps * sizeof *t);
    lasp_err err = {0};
    /* the one-GPU op at its best, as the SP schedule runs: the backward from the forward's saved states */
    float *saved = NULL;
    size_t sb = 0;
    int bad = !sp && (lasp_attn_saved_bytes(ctx, a, &sb) != LASP_OK || cudaMalloc((void **)&saved, sb) != cudaSuccess);
    bad = host_reduce(hw, bad, LASP_REDUCE_MAX) != 0; /* no rank left waiting */
    if (bad) {
        fprintf(stderr, "error: no room for the one-GPU op's saved states (%zu bytes)\n", sb);
        *failed = 1, reps = 0, warm = 0;
    }
    for (int it = -warm; it < reps; it++) {
        if (lasp_comm_barrier(hw, &err) != LASP_OK) lasp_comm_abort(hw, err.msg);
        const double t0 = tool_now_ms();
        lasp_status s;
        if (sp) {
            const lasp_sp_layout lay = lasp_sp_get_layout(sp);
            const int first = lay.sp_rank == 0, last = lay.sp_rank == lay.sp_size - 1;
            s = lasp_sp_attn_fwd(ctx, sp, a, L->q, L->k, L->v, L->slopes, NULL, L->o, last ? L->kv : NULL, &cache);
            if (s == LASP_OK)
                s = lasp_sp_attn_bwd(ctx, sp, a, L->q, L->k, L->v, L->slopes, cache, L->dO, NULL, L->dq, L->dk, L->dv,
                                     first ? L->dkv : NULL);
            if (s == LASP_OK) s = lasp_comm_sync(lasp_sp_group(sp), &err);
        } else {
            s = lasp_attn_fwd_saving(ctx, a, L->q, L->k, L->v, L->slopes, NULL, L->o, L->kv, saved);
            if (s == LASP_OK)
                s = lasp_attn_bwd_saved(ctx, a, L->q, L->k, L->v, L->slopes, NULL, L->dO, NULL, L->dq, L->dk, L->dv,
                                        L->dkv, saved);
        }
        if (s == LASP_OK && cudaStreamSynchronize((cudaStream_t)stream) != cudaSuccess) s = LASP_ERR_CUDA;
        if (s != LASP_OK) {
            fprintf(stderr, "error: %s%s\n", lasp_ctx_error(ctx), err.msg);
            *failed = 1;
            break;
        }
        const double worst = host_reduce(hw, tool_now_ms() - t0, LASP_REDUCE_MAX);
        if (it >= 0) t[it] = worst;
    }
    lasp_sp_cache_free(cache);
    cudaFree(saved);
    double med = 0;
    if (!*failed) {
        med = tool_median(t, reps);
    }
    free(t);
    return med;
}

/* The longest sequence one layer fwd+bwd runs with on W GPUs (LASP chain): T_local doubles from 65536
 * while every rank has room for the tensors with 2 GiB to spare for the workspace (a failed allocation
 * inside the SP run would leave the neighbours waiting, so memory is agreed on before each run). */
static int find_longest(lasp_comm *hw, lasp_comm *world, const lasp_sp_params *spp, lasp_ctx *ctx, long long B,
                        long long H, long long D, lasp_dtype dt) {
    const int W = lasp_comm_size(world), rank = lasp_comm_rank(world);
    lasp_err err = {0};
    lasp_sp *sp = NULL;
    lasp_sp_params p = *spp;
    p.size = W, p.mode = LASP_SP_CHAIN;
    if (lasp_sp_create(world, &p, &sp, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
    long long best = 0;
    double best_ms = 0, best_gib = 0, total_gib = 0;
    int failed = 0;
    for (long long Tl = 65536; !failed; Tl *= 2) {
        lasp_attn_desc a = {.B = B, .T = Tl, .H = H, .d = D, .e = D, .block = 0, .dtype = dt};
        layer L = {0};
        int ok = layer_alloc(&L, &a, 5 + (uint64_t)rank);
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        ok = ok && fr > ((size_t)2 << 30);
        if (host_reduce(hw, ok, LASP_REDUCE_MIN) == 0) {
            layer_free(&L);
            cudaGetLastError();
            break;
        }
        const double ms = time_layer(hw, ctx, sp, &a, &L, 1, 1, &failed);
        cudaMemGetInfo(&fr, &tot);
        const double most = host_reduce(hw, (double)(tot - fr) / 1073741824.0, LASP_REDUCE_MAX);
        if (!failed) {
            best = Tl, best_ms = ms, best_gib = most, total_gib = (double)tot / 1073741824.0;
            if (rank == 0) {
                printf("  longest %-6s %3d %8lld %8lld %10s %9.3f %7s %11s   %.1f GiB/GPU\n", "chain", W, Tl, Tl * W, "-", ms,
                       "-", "-", most);
                fflush(stdout);
            }
        }
        layer_free(&L);
    }
    if (rank == 0)
        printf("# longest: T_total %lld tokens (%lld per GPU) ran one layer fwd+bwd in %.1f ms, %.1f of %.1f GiB per "
               "GPU in use\n", best * W, best, best_ms, best_gib, total_gib);
    lasp_sp_free(sp);
    return failed;
}

/* --trace: each rank's phases of the last traced layer (rank 0 prints them all) */
/* Whether --mode (opts_sp_mode's: a mode, both = the LASP two, all) times mode m; Ulysses only where the heads
 * split over the ranks */
static int runs_mode(int which, int m, long long H, int W) {
    if (m == LASP_SP_ULYSSES && H % W) return 0;
    return which == OPTS_SP_ALL || (which == OPTS_SP_BOTH && m < 2) || which == m;
}

static void print_trace(lasp_comm *hw, const lasp_sp *sp, const char *mode) {
    const lasp_sp_trace t = lasp_sp_get_trace(sp);
    const int W = lasp_comm_size(hw);
    double mine[7] = {t.fwd_local_ms, t.fwd_state_ms, t.fwd_end_ms, t.bwd_start_ms, t.bwd_local_ms, t.bwd_state_ms,
                      t.bwd_end_ms};
    double *all = calloc((size_t)W * 7, sizeof *all);
    lasp_err err = {0};
    if (!all || lasp_comm_allgather(hw, mine, all, 7, LASP_F64, &err) != LASP_OK) lasp_comm_abort(hw, "bench sp: trace");
    for (int r = 0; lasp_comm_rank(hw) == 0 && r < W; r++) {
        const double *x = all + 7 * r;
        printf("# trace %-6s rank %d: fwd local %.3f state %.3f end %.3f | bwd start %.3f local %.3f state %.3f end "
               "%.3f ms\n", mode, r, x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
    }
    free(all);
}

int lasp_bench_sp_cuda(int argc, char **argv) {
    long long B = 1, H = 16, D = 128, repeat = 20, warmup = 3, t_total = 0, comm_sms = 4;
    double timeout = LASP_COMM_TIMEOUT_S;
    int longest = 0, trace = 0;
    const char *device = "cuda", *dtype = "bf16", *t_locals = "32768,65536", *mode = "both", *transfer = "auto";
    const opt opts[] = {
        {"--device", OPT_STR, &device, "cuda", "the GPU bench (cpu: see `lasp bench sp --device cpu --help`)", 0},
        {"--dtype", OPT_STR, &dtype, "bf16|f16|f32", "I/O type", 0},
        {"--mode", OPT_STR, &mode, "MODE", "which SP form: chain, lasp2, ulysses, allgather, both (the first two) or "
                                           "all", 0},
        {"--t-local", OPT_STR, &t_locals, "N[,N...]", "tokens per GPU for weak scaling", 0},
        {"--t-total", OPT_INT, &t_total, "N", "total tokens for strong scaling (0 = W × the first --t-local)", 0},
        {"--batch", OPT_INT, &B, "N", "sequences", 0},
        {"--heads", OPT_INT, &H, "N", "heads", 0},
        {"--dim", OPT_INT, &D, "N", "head dim d = e", 0},
        {"--repeat", OPT_INT, &repeat, "N", "timed runs (median reported)", 0},
        {"--warmup", OPT_INT, &warmup, "N", "untimed runs first", 0},
        {"--longest", OPT_FLAG, &longest, NULL, "instead: double T_local from 65536 while it fits; report the longest", 0},
        {"--transfer", OPT_STR, &transfer, "auto|send", "how states travel: one-sided puts where possible, or NCCL "
                                                         "send/receive", 0},
        {"--comm-sms", OPT_INT, &comm_sms, "N", "SMs the attention leaves to the transfers (0 .. 32)", 0},
        {"--timeout", OPT_DOUBLE, &timeout, "S", "longest wait for a peer, in seconds", 0},
        {"--trace", OPT_FLAG, &trace, NULL, "print each rank's phases of the last layer (ms from its start)", 0},
    };
    const cmd_spec spec = {
        "mpirun -np W lasp bench sp --device cuda [--dtype bf16] [--t-local N,...] [--mode chain|lasp2|both|all] ...",
        "One attention layer forward+backward over W GPUs (one process each, NCCL), LASP chain and LASP-2, against\n"
        "the same op on one GPU at the same tokens per GPU: weak scaling (T_local fixed) and strong scaling (T\n"
        "fixed). exposed = SP time − one-GPU time at T_local. Keep NCCL_NVLS_ENABLE=0 on NVLink machines.",
        "NCCL_NVLS_ENABLE=0 mpirun -np 2 lasp bench sp --device cuda", opts, N_OPTS(opts)};
    int pr = opts_parse(&spec, argc, argv);
    if (pr) return pr > 0 ? 0 : 2;
    lasp_dtype dt = !strcmp(dtype, "f32") ? LASP_F32 : !strcmp(dtype, "f16") ? LASP_F16 : LASP_BF16;
    if (strcmp(dtype, "bf16") && strcmp(dtype, "f16") && strcmp(dtype, "f32")) {
        fprintf(stderr, "error: --dtype '%s' (hint: bf16, f16 or f32)\n", dtype);
        return 2;
    }
    if (repeat < 1 || warmup < 0 || B < 1 || H < 1) {
        fprintf(stderr, "error: --repeat ≥ 1, --warmup ≥ 0, --batch and --heads ≥ 1\n");
        return 2;
    }
    const int which = opts_sp_mode(mode, "--mode", 1);
    if (which < 0) return 2;
    if (strcmp(transfer, "auto") && strcmp(transfer, "send")) {
        fprintf(stderr, "error: --transfer '%s' (hint: auto or send)\n", transfer);
        return 2;
    }
    if (comm_sms < 0 || comm_sms > 32 || !(timeout > 0)) {
        fprintf(stderr, "error: --comm-sms %lld, --timeout %g (hint: 0 .. 32 SMs, a timeout > 0 s)\n", comm_sms,
                timeout);
        return 2;
    }
    lasp_sp_params spp = lasp_sp_default_params();
    spp.transfer = !strcmp(transfer, "send") ? LASP_SP_TRANSFER_SEND : LASP_SP_TRANSFER_AUTO;
    spp.comm_sms = (int)comm_sms, spp.timeout_s = timeout, spp.trace = trace;
    lasp_err err = {0};
    lasp_comm *hw = NULL, *world = NULL;
    if (lasp_comm_world(LASP_COMM_MPI, NULL, NULL, &hw, &err) != LASP_OK ||
        lasp_comm_world(LASP_COMM_NCCL, NULL, NULL, &world, &err) != LASP_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        lasp_comm_free(hw);
        return 1;
    }
    const int W = lasp_comm_size(world), rank = lasp_comm_rank(world);
    lasp_ctx *ctx = NULL;
    lasp_ctx_create(NULL, &ctx);
    int dev = 0;
    cudaGetDevice(&dev);
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, dev);
    if (rank == 0) {
        printf("# lasp bench sp — device cuda (%d × %s), %s, B%lld H%lld D%lld, median of %lld (slowest rank)\n", W,
               prop.name, dtype, B, H, D, repeat);
        printf("# %-7s %-9s %3s %8s %8s %10s %9s %7s %11s %12s\n", "scaling", "mode", "W", "T_local", "T_total",
               "1-GPU ms", "SP ms", "ratio", "exposed ms", "sent B/rank");
    }
    int failed = 0;
    if (longest) {
        failed = find_longest(hw, world, &spp, ctx, B, H, D, dt);
        lasp_ctx_free(ctx);
        lasp_comm_free(world);
        lasp_comm_free(hw);
        return failed;
    }
    long long tl_first = 0;
    char xfer[256] = "";
    char *list = strdup(t_locals);
    for (char *tok = strtok(list, ","); tok && !failed; tok = strtok(NULL, ",")) {
        const long long Tl = atoll(tok);
        if (!tl_first) tl_first = Tl;
        lasp_attn_desc a = {.B = B, .T = Tl, .H = H, .d = D, .e = D, .block = 0, .dtype = dt};
        layer L = {0};
        if (!layer_alloc(&L, &a, 99 + (uint64_t)rank)) {
            fprintf(stderr, "error: rank %d: no GPU memory for T_local %lld\n", rank, Tl);
            failed = 1;
            break;
        }
        const double one = time_layer(hw, ctx, NULL, &a, &L, (int)repeat, (int)warmup, &failed);
        for (int m = 0; m < 4 && !failed; m++) {
            if (!runs_mode(which, m, H, W)) continue;
            lasp_sp *sp = NULL;
            lasp_sp_params p = spp;
            p.size = W, p.mode = (lasp_sp_mode)m;
            if (lasp_sp_create(world, &p, &sp, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
            lasp_comm_reset_stats(lasp_sp_group(sp));
            const double ms = time_layer(hw, ctx, sp, &a, &L, (int)repeat, (int)warmup, &failed);
            const lasp_comm_stats st = lasp_comm_get_stats(lasp_sp_group(sp));
            if (!xfer[0]) snprintf(xfer, sizeof xfer, "%s", lasp_sp_transfer_name(sp));
            const double most = host_reduce(hw, (double)(st.p2p_bytes + st.coll_bytes) / (double)(repeat + warmup),
                                            LASP_REDUCE_MAX);
            if (rank == 0 && !failed)
                printf("  %-7s %-9s %3d %8lld %8lld %10.3f %9.3f %7.3f %11.3f %12.0f\n", "weak",
                       lasp_sp_mode_name((lasp_sp_mode)m), W, Tl, Tl * W, one, ms, ms / one, ms - one, most);
            if (trace && !failed && m < 2) print_trace(hw, sp, lasp_sp_mode_name((lasp_sp_mode)m));
            lasp_sp_free(sp);
        }
        layer_free(&L);
    }
    free(list);
    /* strong scaling: T fixed; one GPU holds all of it, W GPUs a W-th each */
    const long long T = t_total ? t_total : tl_first * W;
    if (!failed && W > 1 && T % W == 0) {
        lasp_attn_desc a1 = {.B = B, .T = T, .H = H, .d = D, .e = D, .block = 0, .dtype = dt};
        layer L = {0};
        double one = 0;
        if (layer_alloc(&L, &a1, 7 + (uint64_t)rank))
            one = time_layer(hw, ctx, NULL, &a1, &L, (int)repeat, (int)warmup, &failed);
        layer_free(&L);
        lasp_attn_desc a = a1;
        a.T = T / W;
        if (!failed && layer_alloc(&L, &a, 8 + (uint64_t)rank)) {
            for (int m = 0; m < 4 && !failed; m++) {
                if (!runs_mode(which, m, H, W)) continue;
                lasp_sp *sp = NULL;
                lasp_sp_params p = spp;
                p.size = W, p.mode = (lasp_sp_mode)m;
                if (lasp_sp_create(world, &p, &sp, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
                const double ms = time_layer(hw, ctx, sp, &a, &L, (int)repeat, (int)warmup, &failed);
                if (rank == 0 && !failed)
                    printf("  %-7s %-9s %3d %8lld %8lld %10.3f %9.3f %7.3f %11s %12s\n", "strong",
                           lasp_sp_mode_name((lasp_sp_mode)m), W, T / W, T, one, ms, ms / one, "-", "-");
                lasp_sp_free(sp);
            }
        }
        layer_free(&L);
    }
    if (rank == 0) printf("# ratio = SP ms / 1-GPU ms (weak: at T_local; strong: 1 GPU holds all T; speed-up = 1/ratio)\n");
    if (rank == 0 && xfer[0]) printf("# the states travelled by %s\n", xfer);
    lasp_ctx_free(ctx);
    lasp_comm_free(world);
    lasp_comm_free(hw);
    return failed;
}

#endif
