/* cmd_bench_sp.c — `lasp bench sp` under mpirun: one attention layer forward+backward over an SP group of
 * W ranks (the first W of the job; the others wait), for W = 1, 2, 4, … up to the job's size, at fixed
 * tokens per rank (weak scaling) and at fixed total tokens (strong scaling), for the LASP chain, LASP-2
 * and the baselines (Ulysses, all-gather of keys and values). Time is the slowest rank's, median over
 * repeats; bytes are what one rank sent (the most over the group), counted by the communicator. */
#include <math.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "core/rng.h"
#include "lasp.h"
#include "opts.h"

int lasp_bench_sp(int argc, char **argv);
#if defined(LASP_HAVE_CUDA) && defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
int lasp_bench_sp_cuda(int argc, char **argv); /* bench_sp_cuda.c */
#endif

typedef struct bench_cfg {
    long long B, H, D, t_local, t_total, repeat, threads, block;
} bench_cfg;

typedef struct bench_row {
    double ms;        /* slowest rank, median */
    double sent;      /* bytes the busiest rank sent per fwd+bwd */
    double kept;      /* bytes the largest SP cache holds from the forward for the backward */
} bench_row;

/* One layer on the first W ranks of world with T_local tokens each. Collective over world. */
static int run_one(lasp_comm *world, const bench_cfg *c, int W, int64_t Tl, lasp_sp_mode mode, lasp_ctx *ctx,
                   bench_row *row) {
    lasp_err err = {0};
    const int r = lasp_comm_rank(world);
    lasp_comm *g = NULL;
    if (lasp_comm_split(world, r < W ? 0 : 1, r, &g, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
    int rc = 0;
    double sent = 0, med = 0, kept = 0;
    if (r < W) {
        lasp_sp *sp = NULL;
        lasp_sp_params spp = lasp_sp_default_params();
        spp.size = W, spp.mode = mode;
        if (lasp_sp_create(g, &spp, &sp, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
        lasp_comm *group = lasp_sp_group(sp);
        lasp_attn_desc a = {.B = c->B, .T = Tl, .H = c->H, .d = c->D, .e = c->D, .block = (int)c->block,
                            .dtype = LASP_F32};
        const size_t n = (size_t)(c->B * Tl * c->H * c->D), ns = (size_t)(c->B * c->H * c->D * c->D);
        float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *dO = malloc(n * 4), *o = malloc(n * 4);
        float *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4), *st = malloc(ns * 4);
        float *sl = malloc((size_t)c->H * 4);
        if (!q || !k || !v || !dO || !o || !dq || !dk || !dv || !st || !sl) lasp_comm_abort(world, "bench sp: no memory");
        lasp_rng rng;
        lasp_rng_seed(&rng, 1234 + (uint64_t)r);
        for (size_t i = 0; i < n; i++)
            q[i] = 0.1f * (float)lasp_rng_normal(&rng), k[i] = (float)lasp_rng_normal(&rng),
            v[i] = (float)lasp_rng_normal(&rng), dO[i] = (float)lasp_rng_normal(&rng);
        for (int h = 0; h < c->H; h++) sl[h] = (float)pow(2.0, -8.0 * (h + 1) / (double)c->H);
        lasp_sp_cache *cache = NULL;
        const int reps = (int)c->repeat;
        double *t = malloc(sizeof(double) * (size_t)reps);
        for (int it = -1; it < reps; it++) {  /* −1: warm-up (allocations, page faults) */
            if (lasp_comm_barrier(group, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
            lasp_comm_reset_stats(group);
            const double t0 = tool_now_ms();
            if (lasp_sp_attn_fwd(ctx, sp, &a, q, k, v, sl, NULL, o, st, &cache) != LASP_OK ||
                lasp_sp_attn_bwd(ctx, sp, &a, q, k, v, sl, cache, dO, NULL, dq, dk, dv, st) != LASP_OK)
                lasp_comm_abort(world, lasp_ctx_error(ctx));
            double dt = tool_now_ms() - t0, slowest = 0;
            const lasp_comm_stats s = lasp_comm_get_stats(group);
            double mine = (double)(s.p2p_bytes + s.coll_bytes), most = 0;
            if (lasp_comm_allreduce(group, &dt, &slowest, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK ||
                lasp_comm_allreduce(group, &mine, &most, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK)
                lasp_comm_abort(world, err.msg);
            if (it >= 0) t[it] = slowest;
            sent = most;
        }
        med = tool_median(t, reps);
        double mine = (double)lasp_sp_cache_bytes(cache);
        if (lasp_comm_allreduce(group, &mine, &kept, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK)
            lasp_comm_abort(world, err.msg);
        free(t), free(q), free(k), free(v), free(dO), free(o), free(dq), free(dk), free(dv), free(st), free(sl);
        lasp_sp_cache_free(cache);
        lasp_sp_free(sp);
    }
    lasp_comm_free(g);
    /* rank 0 is always in the group; the waiting ranks join here */
    if (lasp_comm_barrier(world, &err) != LASP_OK) lasp_comm_abort(world, err.msg);
    row->ms = med, row->sent = sent, row->kept = kept;
    return rc;
}

/* What the busiest rank of a group of W sends in one layer's forward + backward, by docs/SP.md's formulas
 * (s = one d × e state per head, B·H·D²·4 bytes): the chain 2s (s for W = 2), LASP-2 2(W−1)s, Ulysses
 * 2(W−1)·(q k v + o slabs + a state slice) + s, the all-gather 2(W−1)·(k v of a piece) + s + 2(W−1)/W·s. */
static double formula_bytes(lasp_sp_mode m, int W, const bench_cfg *c, int64_t Tl) {
    const double f = 4, s = (double)(c->B * c->H * c->D * c->D) * f, w1 = W - 1, bt = (double)(c->B * Tl);
    if (W == 1) return 0;
    switch (m) {
    case LASP_SP_CHAIN: return W == 2 ? s : 2 * s;
    case LASP_SP_LASP2: return 2 * w1 * s;
    case LASP_SP_ULYSSES: {
        const double hl = (double)c->H / W, slab = bt * hl * (double)c->D * f;
        return 2 * w1 * (3 * slab + slab + s / W) + s;
    }
    default: return 2 * w1 * bt * (double)c->H * 2 * (double)c->D * f + s + 2 * w1 / W * s;
    }
}

int lasp_bench_sp(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if ((!strcmp(argv[i], "--device") && i + 1 < argc && !strcmp(argv[i + 1], "cuda")) ||
            !strcmp(argv[i], "--device=cuda")) {
#if defined(LASP_HAVE_CUDA) && defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
            return lasp_bench_sp_cuda(argc, argv);
#else
            fprintf(stderr, "error: this build has no CUDA + NCCL + MPI, which the GPU SP bench needs (hint: `lasp "
                    "info` lists the features)\n");
            return 1;
#endif
        }
    bench_cfg c = {.B = 1, .H = 8, .D = 64, .t_local = 2048, .t_total = 8192, .repeat = 5, .threads = 0,
                   .block = LASP_ATTN_DEFAULT_BLOCK};
    const char *device = "cpu", *mode = "both";
    int quick = 0, longest = 0;
    long long mem_mib = 1024;
    const opt opts[] = {
        {"--device", OPT_STR, &device, "cpu|cuda", "where to run (cuda: its own options, see --device cuda --help)", 0},
        {"--mode", OPT_STR, &mode, "MODE", "SP schedules to time: chain, lasp2, ulysses, allgather, both (chain and "
                                           "lasp2) or all", 0},
        {"--B", OPT_INT, &c.B, "N", "batch", 0},
        {"--H", OPT_INT, &c.H, "N", "heads", 0},
        {"--D", OPT_INT, &c.D, "N", "head dim (d = e)", 0},
        {"--t-local", OPT_INT, &c.t_local, "N", "tokens per rank in the weak-scaling rows", 0},
        {"--t-total", OPT_INT, &c.t_total, "N", "tokens of the whole sequence in the strong-scaling rows", 0},
        {"--block", OPT_INT, &c.block, "N", "chunk size C", 0},
        {"--repeat", OPT_INT, &c.repeat, "N", "timed runs per row (the median is reported)", 0},
        {"--threads", OPT_INT, &c.threads, "N", "OpenMP threads per rank (0 = OpenMP's default)", 0},
        {"--quick", OPT_FLAG, &quick, NULL, "tiny shapes, one repeat: a smoke test", 0},
        {"--longest", OPT_FLAG, &longest, NULL, "instead: double the tokens a rank holds (from --t-local) until a "
                                                "rank's peak memory passes --mem-mib; one --mode per process", 0},
        {"--mem-mib", OPT_INT, &mem_mib, "N", "with --longest: the memory a rank may use, MiB", 0},
    };
    const cmd_spec spec = {
        "mpirun -np N lasp bench sp [--device cpu] [--mode chain|lasp2|ulysses|allgather|both|all] [--t-local N] ...",
        "Times one linear-attention layer forward+backward over an SP group of W = 1, 2, 4, … ranks (the first\n"
        "W ranks of the job), weak scaling (T = W · t-local) and strong scaling (T = t-total), for the LASP chain,\n"
        "LASP-2, Ulysses and the all-gather of keys and values, with the bytes one rank sent. Time is the slowest rank's; eff is t(1)/t(W) for weak and\n"
        "t(1)/(W·t(W)) for strong scaling.",
        "OMP_NUM_THREADS=1 mpirun -np 2 lasp bench sp --device cpu", opts, N_OPTS(opts)};
    int pr = opts_parse(&spec, argc, argv);
    if (pr) return pr > 0 ? 0 : 2;
    if (strcmp(device, "cpu")) {
        fprintf(stderr, "error: --device '%s': the SP bench runs on the CPU for now (hint: --device cpu)\n", device);
        return 2;
    }
    const int which = opts_sp_mode(mode, "--mode", 1);
    if (which < 0) return 2;
    if (quick) c.B = 1, c.H = 2, c.D = 16, c.t_local = 128, c.t_total = 256, c.repeat = 1;
    if (c.B < 1 || c.H < 1 || c.t_local < 1 || c.t_total < 1 || c.repeat < 1 || c.threads < 0 || c.block < 1 ||
        !lasp_head_dim_supported(c.D)) {
        fprintf(stderr, "error: sizes must be ≥ 1 and --D one of 16, 32, 64, 128, 256\n");
        return 2;
    }
    if (longest && (which > LASP_SP_ALLGATHER || mem_mib < 1)) {
        fprintf(stderr, "error: --longest measures one mode a process (a process's peak memory only grows): --mode "
                "chain, lasp2, ulysses or allgather, and --mem-mib ≥ 1 (got %lld)\n", mem_mib);
        return 2;
    }
    lasp_err err = {0};
    lasp_comm *world = NULL;
    const lasp_comm_backend be = lasp_comm_launcher_size() > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    if (lasp_comm_world(be, NULL, NULL, &world, &err) != LASP_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    const int n = lasp_comm_size(world), rank = lasp_comm_rank(world);
    lasp_ctx *ctx = NULL;
    lasp_ctx_params cp = lasp_ctx_default_params();
    cp.n_threads = (int)c.threads;
    if (lasp_ctx_create(&cp, &ctx) != LASP_OK) lasp_comm_abort(world, "bench sp: cannot create a context");
    if (longest) {
        /* the peak resident memory of the busiest rank after each size: the high-water mark of the process,
         * which the larger run sets (sizes only grow) */
        const lasp_sp_mode m = (lasp_sp_mode)which;
        c.repeat = 1;
        long long fit = 0;
        double fit_peak = 0;
        if (rank == 0)
            printf("# --longest %s over %d ranks: T_local doubled until a rank's peak resident memory passes %lld "
                   "MiB (the process's own, MPI included)\n# %-9s %3s %10s %10s %12s %10s\n", lasp_sp_mode_name(m), n,
                   mem_mib, "mode", "W", "T_local", "T", "peak MiB", "ms");
        for (long long tl = c.t_local; tl <= (1LL << 26); tl *= 2) {
            if (m == LASP_SP_ULYSSES && c.H % n) break;
            bench_row row;
            run_one(world, &c, n, tl, m, ctx, &row);
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            double peak = (double)ru.ru_maxrss / 1024.0, most = 0; /* KiB on Linux */
            if (lasp_comm_allreduce(world, &peak, &most, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK)
                lasp_comm_abort(world, err.msg);
            if (rank == 0) {
                printf("  %-9s %3d %10lld %10lld %12.1f %10.1f\n", lasp_sp_mode_name(m), n, tl, tl * n, most, row.ms);
                fflush(stdout);
            }
            if (most > (double)mem_mib) break;
            fit = tl * n, fit_peak = most;
        }
        if (rank == 0)
            printf("# longest %s over %d ranks within %lld MiB a rank: T = %lld (peak %.1f MiB)\n",
                   lasp_sp_mode_name(m), n, mem_mib, fit, fit_peak);
        lasp_ctx_free(ctx);
        lasp_comm_free(world);
        return 0;
    }
    const char *omp = getenv("OMP_NUM_THREADS");
    if (rank == 0) {
        printf("# lasp bench sp — device cpu, %d ranks, f32, B %lld H %lld D %lld, block %lld, median of %lld, "
               "OpenMP threads per rank: %s\n", n, c.B, c.H, c.D, c.block, c.repeat,
               c.threads ? "--threads" : omp ? omp : "default");
        printf("# state message: B·H·D²·4 = %lld bytes; time = slowest rank; sent = bytes of the busiest rank per "
               "fwd+bwd (counted), formula = docs/SP.md's\n", c.B * c.H * c.D * c.D * 4);
        printf("# kept = what the SP layer holds from the forward for the backward on its largest rank, beside the "
               "piece's own q, k, v, o\n");
        printf("# %-7s %-9s %3s %8s %8s %11s %12s %12s %12s %10s %6s\n", "scaling", "mode", "W", "T_local", "T",
               "fwd+bwd ms", "Mtokens/s", "sent bytes", "formula", "kept MiB", "eff");
    }
    for (int weak = 1; weak >= 0; weak--)
        for (int m = LASP_SP_CHAIN; m <= LASP_SP_ALLGATHER; m++) {
            if (!(which == m || which == OPTS_SP_ALL || (which == OPTS_SP_BOTH && m <= LASP_SP_LASP2))) continue;
            double base = 0;
            for (int W = 1; W <= n; W *= 2) {
                const int64_t T = weak ? c.t_local * W : c.t_total;
                if (T % W || (m == LASP_SP_ULYSSES && c.H % W)) continue; /* ulysses: heads split over W */
                bench_row row;
                run_one(world, &c, W, T / W, (lasp_sp_mode)m, ctx, &row);
                if (W == 1) base = row.ms;
                const double eff = weak ? base / row.ms : base / (W * row.ms);
                if (rank == 0) {
                    printf("  %-7s %-9s %3d %8lld %8lld %11.2f %12.3f %12.0f %12.0f %10.2f %6.2f\n",
                           weak ? "weak" : "strong", lasp_sp_mode_name((lasp_sp_mode)m), W, (long long)(T / W),
                           (long long)T, row.ms, (double)(c.B * T) / row.ms * 1e-3, row.sent,
                           formula_bytes((lasp_sp_mode)m, W, &c, T / W), row.kept / 1048576.0, eff);
                    fflush(stdout);
                }
            }
        }
    if (rank == 0 && n < 2)
        printf("# one rank: run under `mpirun -np N` to see W > 1\n");
    lasp_ctx_free(ctx);
    lasp_comm_free(world);
    return 0;
}
