/* test_sp.c — the conformance suite of LASP's public interface (lasp_sp_* in lasp.h), one set of cases for
 * both schedules:
 *
 *     test_sp  |  mpirun -np N test_sp            the CPU schedule (sp.c): host f32 over MPI (alone: one rank)
 *     mpirun -np N test_sp --device cuda          the GPU schedule (sp_cuda*.cu): device f32 and bf16 over
 *                                                 NCCL, one process per GPU
 *
 * What it proves, for every dp × sp layout the world fits, every mode (the chain, LASP-2, and the baselines
 * Ulysses and the all-gather of keys and values), ragged pieces,
 * slopes from 0 to past underflow (λ^T = 0 in fp32), with and without kv_in / dkv_out:
 *   - every rank's o, dq, dk, dv and boundary states (kv_out on the last piece, dkv_in on the first; the other
 *     ranks' stay unwritten) equal the single-process op on the whole tensors: CPU 1e-6 relative, GPU f32
 *     1e-4, bf16 1e-2 (bf16 inputs rounded first, so that the reference sees what the GPU sees);
 *   - on small shapes the gathered tensors equal the fp64 reference (CPU 1e-5, GPU as above);
 *   - the SP communicator's counters show the schedule: the chain sends one state per hop and direction (the
 *     backward runs no second forward chain), LASP-2 one gather per direction, the baselines the collectives
 *     and bytes of docs/SP.md's formulas; Ulysses with heads not divisible by sp is refused on every rank
 *     before any message;
 *   - three forward+backward calls in a row on one cache (other inputs first) end right, and the trace
 *     (params.trace) reports ordered phases on GPUs (the chain and LASP-2) and nothing on host communicators
 *     or for the baselines;
 *   - lasp_sp_create's parameter checks, lasp_sp_get_layout, lasp_sp_halo both ways, lasp_sp_cache_free(NULL),
 *     and a backward without a forward of its shape refused with a hint.
 * On GPUs every configuration the library keeps runs at sp = world: transfer auto (one-sided puts where the
 * GPUs share NVLink, else send/receive) and send, comm_sms 4 and 0, each mode and dtype — which also covers
 * the forward's finish in one launch (the chain with puts; LASP-2 with puts over 2 ranks) and in two parts
 * (send/receive; LASP-2 with puts over ≥ 3 ranks), the library's own choice. Outputs are NaN-poisoned before
 * every run. Verdicts are reduced over the ranks (mpi_test.h); rank 0 prints them. */
#include <ctype.h>
#include <math.h>
#include <string.h>

#include "mpi_test.h"

#if defined(LASP_HAVE_CUDA) && defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
#define SP_GPU 1
#else
#define SP_GPU 0
#endif

static lasp_ctx *ctx;
static lasp_comm *world; /* what the SP groups are split from: the host world, or the NCCL world on GPUs */
static int gpu;          /* --device cuda */
static uint64_t seed;

#define GPU_TIMEOUT_S 60.0 /* a peer's state takes milliseconds: a lost one fails the run instead of hanging it */

static void die(const char *what, const char *msg) {
    char line[1200];
    snprintf(line, sizeof line, "%s: %s", what, msg);
    lasp_comm_abort(mpi_test_world_, line);
}

/* ---- buffers where the schedule under test reads them: host f32 (CPU) or device memory (GPU) ---- */

static void buf_poison(void *p, size_t n, lasp_dtype t) {
    if (gpu) {
#if SP_GPU
        if (cudaMemset(p, 0xff, n * lasp_dtype_size(t)) != cudaSuccess) die("poisoning a device buffer", "failed");
#endif
        return;
    }
    (void)t; /* host tensors are f32 */
    for (size_t i = 0; i < n; i++) ((float *)p)[i] = NAN;
}

/* n elements of dtype t from host f32 x; x NULL: poisoned with NaN, so that an element the schedule should
 * write and does not stays visible */
static void *buf_new(const float *x, size_t n, lasp_dtype t) {
    void *p = NULL;
    if (gpu) {
#if SP_GPU
        p = test_to_dev(x, n, t);
#endif
    } else if ((p = malloc((n ? n : 1) * sizeof(float)))) {
        if (x) memcpy(p, x, n * sizeof(float));
        else buf_poison(p, n, t);
    }
    if (!p) die("a test buffer", "no memory");
    return p;
}

/* Everything the group enqueued has finished (GPU calls are asynchronous); an asynchronous failure ends the
 * job, since the peers would wait for this rank. */
static void settle(lasp_sp *sp) {
    lasp_err err = {0};
    if (lasp_comm_sync(lasp_sp_group(sp), &err) != LASP_OK) die("synchronising the SP group", err.msg);
#if SP_GPU
    if (gpu) {
        const cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) die("synchronising the GPU", cudaGetErrorString(e));
    }
#endif
}

static const lasp_dtype DTYPES_CPU[] = {LASP_F32}, DTYPES_GPU[] = {LASP_F32, LASP_BF16};
static int n_dtypes(void) { return gpu ? 2 : 1; }
static lasp_dtype dtype_at(int i) { return gpu ? DTYPES_GPU[i] : DTYPES_CPU[i]; }

/* tolerances of today's tests: vs the single-process op, and vs the fp64 reference */
static double tol_single(lasp_dtype t) { return !gpu ? 1e-6 : t == LASP_F32 ? 1e-4 : 1e-2; }
static double tol_fp64(lasp_dtype t) { return !gpu ? 1e-5 : t == LASP_F32 ? 1e-4 : 1e-2; }

/* the largest of x over the host world, for a case's name */
static double world_max(double x) {
    double m = 0;
    lasp_err err = {0};
    if (lasp_comm_allreduce(mpi_test_world_, &x, &m, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK)
        die("reducing over the world", err.msg);
    return m;
}

/* ---- the problems ------------------------------------------------------------------------------ */

typedef struct shape {
    const char *name;
    int64_t Bl, Tl, H, d, e; /* batch per dp rank, tokens per piece */
    int block;
    float slopes[4];
    int states;              /* kv_in and dkv_out given */
    int fp64;                /* also against the fp64 reference (O(T²): small shapes only) */
    int gpu_only;
} shape;

static const shape SHAPES[] = {
    {"ragged pieces (T 37), slopes 0..12, kv_in + dkv_out", 2, 37, 4, 16, 32, 16, {0.0f, 0.05f, 1.0f, 12.0f}, 1, 1, 0},
    {"full blocks, slopes up to 30 (λ^T underflows), no states", 3, 64, 2, 32, 32, 0, {0.3f, 30.0f}, 0, 1, 0},
    /* several of the GPU's 256-token segments per piece, so that a two-part finish has blocks the state cannot
     * reach (slope 8) and blocks it can; d ≠ e at the Hopper kernels' head dims */
    {"long ragged pieces (T 1000), d 64 e 128, slopes 0..8, kv_in + dkv_out", 1, 1000, 4, 64, 128, 0,
     {0.0f, 0.02f, 1.0f, 8.0f}, 1, 0, 1},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

enum { O, DQ, DK, DV, KV_OUT, DKV_IN, N_OUT };
static const char *OUT_NAMES[N_OUT] = {"o", "dq", "dk", "dv", "kv_out", "dkv_in"};

/* One shape in one dtype over one layout: this rank's piece of the inputs and outputs where the schedule
 * reads and writes them, and the references. */
typedef struct problem {
    const shape *sh;
    lasp_dtype t;
    lasp_attn_desc full, loc; /* the whole problem; this rank's piece */
    int64_t b0, t0;           /* where the piece starts: batch entry, token */
    size_t n[N_OUT], ln[N_OUT]; /* elements of each output: whole, this rank's */
    int first, last;          /* this rank holds the sequence's first / last piece */
    void *q, *k, *v, *dO;
    void *v2, *dO2;           /* other inputs, for the calls before the one checked */
    float *slopes, *kv_in, *dkv_out; /* where they are read (first / last piece) the sequence's, else junk */
    void *out[N_OUT];         /* every rank passes kv_out and dkv_in; only the last / first may write them */
    float *ref[N_OUT];        /* this rank's slices of the single-process run (boundary states where written) */
    double *ref64[N_OUT];     /* world rank 0, shapes with fp64: the whole fp64 run */
} problem;

/* rows [t0, t0+Tp) of batch entries [b0, b0+Bp) of a [B, T, R] tensor */
static void slice(float *dst, const float *src, int64_t b0, int64_t Bp, int64_t t0, int64_t Tp, int64_t T, int64_t R) {
    for (int64_t b = 0; b < Bp; b++)
        memcpy(dst + b * Tp * R, src + ((b0 + b) * T + t0) * R, (size_t)(Tp * R) * sizeof *dst);
}

/* the inverse: a piece into its place in a zeroed whole tensor (gathered by a sum) */
static void place(float *dst, const float *src, int64_t b0, int64_t Bp, int64_t t0, int64_t Tp, int64_t T, int64_t R) {
    for (int64_t b = 0; b < Bp; b++)
        memcpy(dst + ((b0 + b) * T + t0) * R, src + b * Tp * R, (size_t)(Tp * R) * sizeof *dst);
}

/* per-token row width of each output ([B, T, R]); 0 for the states ([B, H, d, e]) */
static int64_t row_of(const problem *P, int i) {
    return i == O || i == DV ? P->full.H * P->full.e : i == DQ || i == DK ? P->full.H * P->full.d : 0;
}

static void problem_make(problem *P, const shape *sh, int si, lasp_dtype t, const lasp_sp_layout *L) {
    memset(P, 0, sizeof *P);
    P->sh = sh, P->t = t;
    const int64_t Bl = sh->Bl, Tl = sh->Tl, H = sh->H, d = sh->d, e = sh->e;
    const int64_t B = Bl * L->dp_size, T = Tl * L->sp_size;
    P->full = (lasp_attn_desc){.B = B, .T = T, .H = H, .d = d, .e = e, .block = sh->block, .dtype = t};
    P->loc = P->full;
    P->loc.B = Bl, P->loc.T = Tl;
    P->b0 = L->dp_rank * Bl, P->t0 = L->sp_rank * Tl;
    P->first = L->sp_rank == 0, P->last = L->sp_rank == L->sp_size - 1;
    const size_t nq = (size_t)(B * T * H * d), nv = (size_t)(B * T * H * e), ns = (size_t)(B * H * d * e);
    const size_t lq = (size_t)(Bl * Tl * H * d), lv = (size_t)(Bl * Tl * H * e), ls = (size_t)(Bl * H * d * e);
    const size_t n[N_OUT] = {nv, nq, nq, nv, ns, ns}, ln[N_OUT] = {lv, lq, lq, lv, ls, ls};
    memcpy(P->n, n, sizeof n), memcpy(P->ln, ln, sizeof ln);

    /* the same whole inputs on every rank, rounded to t so that the reference sees what the schedule sees */
    lasp_rng rng;
    lasp_rng_seed(&rng, seed + 1000003u * (uint64_t)si + 7919u * (uint64_t)L->sp_size);
    float *q = test_randn(&rng, nq, 1 / sqrt((double)d)), *k = test_randn(&rng, nq, 1), *v = test_randn(&rng, nv, 1);
    float *dO = test_randn(&rng, nv, 1), *kvi = sh->states ? test_randn(&rng, ns, 1) : NULL;
    float *dkvo = sh->states ? test_randn(&rng, ns, 1) : NULL, *junk = test_randn(&rng, ls, 1);
    test_round(q, nq, t), test_round(k, nq, t), test_round(v, nv, t), test_round(dO, nv, t);

    /* the single-process op on the whole tensors, on this device */
    float *full[N_OUT];
    for (int i = 0; i < N_OUT; i++) full[i] = malloc(n[i] * sizeof(float));
    const lasp_device dev = gpu ? LASP_DEVICE_CUDA : LASP_DEVICE_CPU;
    lasp_status s = lasp_attn_fwd_host(ctx, &P->full, dev, q, k, v, sh->slopes, kvi, full[O], full[KV_OUT]);
    if (s == LASP_OK)
        s = lasp_attn_bwd_host(ctx, &P->full, dev, q, k, v, sh->slopes, kvi, dO, dkvo, full[DQ], full[DK], full[DV],
                               full[DKV_IN]);
    if (s != LASP_OK) die("the single-process reference", lasp_ctx_error(ctx));

    /* this rank's piece */
    float *piece = malloc((lq > lv ? lq : lv) * sizeof *piece);
    void **in[4] = {&P->q, &P->k, &P->v, &P->dO};
    const float *src[4] = {q, k, v, dO};
    const int64_t R[4] = {H * d, H * d, H * e, H * e};
    for (int i = 0; i < 4; i++) {
        slice(piece, src[i], P->b0, Bl, P->t0, Tl, T, R[i]);
        *in[i] = buf_new(piece, i < 2 ? lq : lv, t);
    }
    /* other inputs: v doubled, dO negated (exact in any dtype), so that a stale state of an earlier call shows */
    slice(piece, v, P->b0, Bl, P->t0, Tl, T, H * e);
    for (size_t j = 0; j < lv; j++) piece[j] *= 2;
    P->v2 = buf_new(piece, lv, t);
    slice(piece, dO, P->b0, Bl, P->t0, Tl, T, H * e);
    for (size_t j = 0; j < lv; j++) piece[j] = -piece[j];
    P->dO2 = buf_new(piece, lv, t);
    free(piece);
    P->slopes = buf_new(sh->slopes, (size_t)H, LASP_F32);
    /* the ranks that must not read kv_in / dkv_out get junk, which would show if they did */
    if (sh->states) {
        P->kv_in = buf_new(P->first ? kvi + P->b0 * H * d * e : junk, ls, LASP_F32);
        P->dkv_out = buf_new(P->last ? dkvo + P->b0 * H * d * e : junk, ls, LASP_F32);
    }
    for (int i = 0; i < N_OUT; i++) P->out[i] = buf_new(NULL, ln[i], i < KV_OUT ? t : LASP_F32);

    for (int i = 0; i < N_OUT; i++) {
        P->ref[i] = malloc(ln[i] * sizeof(float));
        if (i < KV_OUT) slice(P->ref[i], full[i], P->b0, Bl, P->t0, Tl, T, row_of(P, i));
        else memcpy(P->ref[i], full[i] + P->b0 * H * d * e, ls * sizeof(float));
    }
    if (sh->fp64 && lasp_comm_rank(mpi_test_world_) == 0) {
        double *q8 = test_widen(q, nq), *k8 = test_widen(k, nq), *v8 = test_widen(v, nv), *do8 = test_widen(dO, nv);
        double *kvi8 = test_widen(kvi, ns), *dkvo8 = test_widen(dkvo, ns), *sl8 = test_widen(sh->slopes, (size_t)H);
        for (int i = 0; i < N_OUT; i++) P->ref64[i] = malloc(n[i] * sizeof(double));
        s = lasp_attn_ref_fwd(ctx, &P->full, q8, k8, v8, sl8, kvi8, P->ref64[O], P->ref64[KV_OUT]);
        if (s == LASP_OK)
            s = lasp_attn_ref_bwd(ctx, &P->full, q8, k8, v8, sl8, kvi8, do8, dkvo8, P->ref64[DQ], P->ref64[DK],
                                  P->ref64[DV], P->ref64[DKV_IN]);
        if (s != LASP_OK) die("the fp64 reference", lasp_ctx_error(ctx));
        free(q8), free(k8), free(v8), free(do8), free(kvi8), free(dkvo8), free(sl8);
    }
    for (int i = 0; i < N_OUT; i++) free(full[i]);
    free(q), free(k), free(v), free(dO), free(kvi), free(dkvo), free(junk);
}

static void problem_free(problem *P) {
    void *dev[] = {P->q, P->k, P->v, P->dO, P->v2, P->dO2, P->slopes, P->kv_in, P->dkv_out};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) test_free(dev[i], gpu);
    for (int i = 0; i < N_OUT; i++) test_free(P->out[i], gpu), free(P->ref[i]), free(P->ref64[i]);
}

/* ---- one run and its checks ---------------------------------------------------------------------- */

/* A forward and a backward of P over sp, outputs poisoned first; `other`: P's other inputs and no boundary
 * outputs asked for. st gets the SP communicator's counters of each direction. */
static void sp_run(lasp_sp *sp, problem *P, int other, lasp_sp_cache **cache, lasp_comm_stats st[2]) {
    lasp_comm *g = lasp_sp_group(sp);
    for (int i = 0; i < N_OUT; i++) buf_poison(P->out[i], P->ln[i], i < KV_OUT ? P->t : LASP_F32);
    settle(sp); /* the poison is in place before the group's streams write */
    const void *v = other ? P->v2 : P->v, *dO = other ? P->dO2 : P->dO;
    lasp_comm_reset_stats(g);
    lasp_status s = lasp_sp_attn_fwd(ctx, sp, &P->loc, P->q, P->k, v, P->slopes, P->kv_in, P->out[O],
                                     other ? NULL : P->out[KV_OUT], cache);
    if (s != LASP_OK) die("the SP forward", lasp_ctx_error(ctx)); /* the peers wait for this rank */
    st[0] = lasp_comm_get_stats(g);
    lasp_comm_reset_stats(g);
    s = lasp_sp_attn_bwd(ctx, sp, &P->loc, P->q, P->k, v, P->slopes, *cache, dO, P->dkv_out, P->out[DQ], P->out[DK],
                         P->out[DV], other ? NULL : P->out[DKV_IN]);
    if (s != LASP_OK) die("the SP backward", lasp_ctx_error(ctx));
    st[1] = lasp_comm_get_stats(g);
    settle(sp);
}

static int all_nan(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isnan(x[i])) return 0;
    return 1;
}

/* This rank's outputs against the single-process op; the boundary states only where written, and unwritten
 * (still NaN) elsewhere. Returns the rank's worst error; got[] keeps the outputs (host f32). */
static double check_single(const lasp_sp_layout *L, const problem *P, float *got[N_OUT]) {
    const double tol = tol_single(P->t);
    double worst = 0;
    for (int i = 0; i < N_OUT; i++) {
        got[i] = test_down(P->out[i], P->ln[i], i < KV_OUT ? P->t : LASP_F32, gpu);
        const int mine = i < KV_OUT || (i == KV_OUT && P->last) || (i == DKV_IN && P->first);
        if (!mine) {
            CHECK(all_nan(got[i], P->ln[i]), "rank %d (sp rank %d): %s written on a rank that does not own it",
                  L->world_rank, L->sp_rank, OUT_NAMES[i]);
            continue;
        }
        const double e = test_rel(got[i], P->ref[i], P->ln[i]);
        worst = e > worst ? e : worst;
        CHECK(e <= tol, "rank %d (dp %d, sp %d): %s rel error %.3e vs the single-process op > %.0e", L->world_rank,
              L->dp_rank, L->sp_rank, OUT_NAMES[i], e, tol);
    }
    return worst;
}

/* The pieces gathered over the world (each element written by one rank, so the sum is exact) against the
 * fp64 reference of the whole problem. */
static void check_fp64(const problem *P, float *const got[N_OUT]) {
    const double tol = tol_fp64(P->t);
    for (int i = 0; i < N_OUT; i++) {
        float *all = calloc(P->n[i], sizeof *all);
        if (i < KV_OUT) place(all, got[i], P->b0, P->loc.B, P->t0, P->loc.T, P->full.T, row_of(P, i));
        else if ((i == KV_OUT && P->last) || (i == DKV_IN && P->first))
            memcpy(all + P->b0 * P->full.H * P->full.d * P->full.e, got[i], P->ln[i] * sizeof *all);
        lasp_err err = {0};
        if (lasp_comm_allreduce(mpi_test_world_, all, all, P->n[i], LASP_F32, LASP_REDUCE_SUM, &err) != LASP_OK)
            die("gathering over the world", err.msg);
        if (lasp_comm_rank(mpi_test_world_) == 0) {
            const double e = lasp_rel_error_f32(all, P->ref64[i], P->n[i]);
            CHECK(e <= tol, "gathered %s: rel error %.3e vs fp64 > %.0e", OUT_NAMES[i], e, tol);
        }
        free(all);
    }
}

/* What this rank's SP communicator sent in direction dir (0 forward, 1 backward), from the schedule: the chain
 * hands one state to its neighbour (r + 1 forward, r − 1 backward; with puts the receiver acknowledges with an
 * empty put); LASP-2 gathers every state: a collective on host communicators, W − 1 send/receive pairs on GPUs,
 * or with puts a state to each rank after this one in the direction of travel and an empty acknowledgement
 * to each before it. */
static void check_msgs(const lasp_sp_layout *L, const problem *P, lasp_sp_mode mode, int puts, int dir,
                       lasp_comm_stats s) {
    const int W = L->sp_size, r = L->sp_rank;
    const uint64_t state = (uint64_t)P->ln[KV_OUT] * sizeof(float);
    const int ahead = dir == 0 ? W - 1 - r : r; /* ranks after this one in the direction of travel */
    uint64_t msgs, bytes, colls = 0, coll_bytes = 0;
    /* the baselines (docs/SP.md's formulas, in the bytes the counters count: what this rank sends) */
    const lasp_attn_desc *a = &P->loc;
    const uint64_t Hl = (uint64_t)(a->H / W), bt = (uint64_t)(a->B * a->T), f = sizeof(float), w1 = (uint64_t)(W - 1);
    /* tensors move in their dtype (f32 on host communicators), states in fp32 */
    const uint64_t ft = gpu ? (uint64_t)lasp_dtype_size(P->t) : f;
    const uint64_t qkv = bt * Hl * (uint64_t)(2 * a->d + a->e) * ft, ob = bt * Hl * (uint64_t)a->e * ft;
    const uint64_t slice = (uint64_t)a->B * Hl * (uint64_t)(a->d * a->e) * f;
    const uint64_t kv = bt * (uint64_t)a->H * (uint64_t)(a->d + a->e) * ft;
    if (mode == LASP_SP_ULYSSES) {
        /* all-to-all of q | k | v (backward: dq | dk | dv) and of o (dO), a boundary state broadcast from the
         * first rank (backward: the last), the other's slices gathered */
        const int root = dir == 0 ? 0 : W - 1;
        msgs = 0, bytes = 0, colls = 4;
        coll_bytes = w1 * qkv + w1 * ob + w1 * slice + (r == root && W > 1 ? state : 0);
    } else if (mode == LASP_SP_ALLGATHER) {
        /* forward: k | v all-gathered, kv_in broadcast; backward: dk | dv reduce-scattered, dkv_in all-reduced */
        msgs = 0, bytes = 0, colls = 2;
        coll_bytes = dir == 0 ? w1 * kv + (r == 0 && W > 1 ? state : 0)
                              : w1 * kv + (uint64_t)(2.0 * (double)w1 / W * (double)state + 0.5);
    } else if (mode == LASP_SP_CHAIN) {
        msgs = (ahead > 0) + (uint64_t)(puts && ahead < W - 1), bytes = ahead > 0 ? state : 0;
    } else if (!gpu) {
        msgs = 0, bytes = 0, colls = 1, coll_bytes = (uint64_t)(W - 1) * state;
    } else {
        msgs = (uint64_t)(W - 1), bytes = (uint64_t)(puts ? ahead : W - 1) * state;
    }
    CHECK(s.p2p_msgs == msgs && s.p2p_bytes == bytes && s.coll_calls == colls && s.coll_bytes == coll_bytes,
          "rank %d (sp %d of %d) %s: %llu messages of %llu bytes, %llu collectives of %llu bytes; want %llu, %llu, "
          "%llu, %llu", L->world_rank, r, W, dir ? "backward" : "forward", (unsigned long long)s.p2p_msgs,
          (unsigned long long)s.p2p_bytes, (unsigned long long)s.coll_calls, (unsigned long long)s.coll_bytes,
          (unsigned long long)msgs, (unsigned long long)bytes, (unsigned long long)colls,
          (unsigned long long)coll_bytes);
}

static const char *mode_name(lasp_sp_mode m) { return lasp_sp_mode_name(m); }

/* whether this group's states travel by one-sided puts (decided by its first GPU call) */
static int uses_puts(const lasp_sp *sp) { return !strncmp(lasp_sp_transfer_name(sp), "one-sided", 9); }

/* ---- the cases ------------------------------------------------------------------------------------ */

typedef struct config {
    lasp_sp_mode mode;
    lasp_sp_transfer transfer;
    int comm_sms;
} config;

static lasp_sp *sp_make(int size, const config *c, int trace) {
    lasp_sp_params p = lasp_sp_default_params();
    p.size = size, p.mode = c->mode, p.transfer = c->transfer, p.comm_sms = c->comm_sms, p.trace = trace;
    if (gpu) p.timeout_s = GPU_TIMEOUT_S;
    lasp_sp *sp = NULL;
    lasp_err err = {0};
    if (lasp_sp_create(world, &p, &sp, &err) != LASP_OK) die("lasp_sp_create", err.msg);
    return sp;
}

/* A config's label: on GPUs the transport it asked for and got, the SMs left to it, and the forward's finish
 * that the library picks for it (one launch where the one state comes by puts from one rank) */
static void config_label(char *buf, size_t len, const lasp_sp *sp, const config *c) {
    const lasp_sp_layout L = lasp_sp_get_layout(sp);
    if (!gpu) {
        snprintf(buf, len, "cpu %s", mode_name(c->mode));
        return;
    }
    const int puts = uses_puts(sp), one = puts && (c->mode == LASP_SP_CHAIN || L.sp_size == 2);
    snprintf(buf, len, "gpu %s, transfer %s%s, comm_sms %d%s", mode_name(c->mode),
             c->transfer == LASP_SP_TRANSFER_AUTO ? "auto" : "send",
             L.sp_size == 1 || c->transfer != LASP_SP_TRANSFER_AUTO ? "" : puts ? " (puts)" : " (send/receive)",
             c->comm_sms, L.sp_size == 1 ? "" : one ? ", finish in one launch" : ", finish in two parts");
}

/* Every problem through one config's group, one cache for all (it grows to the largest shape). */
static void config_cases(int size, const config *c, problem *probs, int n_probs) {
    lasp_sp *sp = sp_make(size, c, 0);
    const lasp_sp_layout L = lasp_sp_get_layout(sp);
    lasp_sp_cache *cache = NULL;
    for (int pi = 0; pi < n_probs; pi++) {
        problem *P = &probs[pi];
        if (c->mode == LASP_SP_ULYSSES && P->loc.H % L.sp_size) continue; /* ulysses_refusal_case */
        lasp_comm_stats st[2];
        sp_run(sp, P, 0, &cache, st);
        if (pi == 0 && gpu && lasp_comm_rank(mpi_test_world_) == 0)
            printf("# dp %d × sp %d, %s: states travel by %s\n", L.dp_size, L.sp_size, mode_name(c->mode),
                   lasp_sp_transfer_name(sp));
        char label[300];
        config_label(label, sizeof label, sp, c);
        float *got[N_OUT];
        const double worst = world_max(check_single(&L, P, got));
        mpi_case("sp %s, dp %d × sp %d, %s, %s: every rank = single process (rel ≤ %.0e, worst %.1e)", label,
                 L.dp_size, L.sp_size, P->sh->name, lasp_dtype_name(P->t), tol_single(P->t), worst);
        if (P->sh->fp64) {
            check_fp64(P, got);
            mpi_case("sp %s, dp %d × sp %d, %s, %s: gathered outputs, grads, states = fp64 reference (rel ≤ %.0e)",
                     label, L.dp_size, L.sp_size, P->sh->name, lasp_dtype_name(P->t), tol_fp64(P->t));
        }
        for (int i = 0; i < N_OUT; i++) free(got[i]);
        check_msgs(&L, P, c->mode, uses_puts(sp), 0, st[0]);
        check_msgs(&L, P, c->mode, uses_puts(sp), 1, st[1]);
        static const char *how[4] = {"one state a hop, no second forward chain", "one gather",
                                     "all-to-all of q k v and o, boundary states", "k v gathered, dk dv reduce-scattered"};
        mpi_case("sp %s, dp %d × sp %d, %s, %s: messages per direction as the schedule says (%s)", label, L.dp_size,
                 L.sp_size, P->sh->name, lasp_dtype_name(P->t), how[c->mode]);
    }
    lasp_sp_cache_free(cache);
    lasp_sp_free(sp);
}

/* Three forward+backward calls in a row on one cache (the first two with other inputs and no boundary outputs)
 * end with the right result: slots and buffers reused after each call must not hand on a stale state. With
 * trace on, a GPU group reports every layer and phases in the order its events are recorded in (each phase
 * is recorded after the one before it on its stream, or on a stream made to wait for it); a host group
 * reports nothing. */
static void repeat_cases(int size, const config *c, problem *probs, int n_probs) {
    lasp_sp *sp = sp_make(size, c, 1);
    const lasp_sp_layout L = lasp_sp_get_layout(sp);
    lasp_sp_cache *cache = NULL;
    int64_t layers = 0;
    for (int pi = 0; pi < n_probs; pi++) {
        problem *P = &probs[pi];
        if (P->t != LASP_F32 || (c->mode == LASP_SP_ULYSSES && P->loc.H % L.sp_size)) continue;
        lasp_comm_stats st[2];
        for (int i = 0; i < 3; i++) sp_run(sp, P, i < 2, &cache, st);
        layers += 3;
        float *got[N_OUT];
        const double worst = world_max(check_single(&L, P, got));
        for (int i = 0; i < N_OUT; i++) free(got[i]);
        const lasp_sp_trace tr = lasp_sp_get_trace(sp);
        const double ph[7] = {tr.fwd_local_ms, tr.fwd_state_ms, tr.fwd_end_ms, tr.bwd_start_ms,
                              tr.bwd_local_ms, tr.bwd_state_ms, tr.bwd_end_ms};
        if (gpu && c->mode <= LASP_SP_LASP2) { /* the baselines trace nothing: their phases are the collectives' */
            int ordered = ph[0] >= 0;
            for (int i = 1; i < 7; i++) ordered &= ph[i] >= ph[i - 1];
            CHECK(tr.layers == layers && ordered && isfinite(ph[6]),
                  "rank %d trace: %lld layers (want %lld), phases %.4f %.4f %.4f | %.4f %.4f %.4f %.4f ms (want "
                  "0 ≤ each ≤ the next)", L.world_rank, (long long)tr.layers, (long long)layers, ph[0], ph[1], ph[2],
                  ph[3], ph[4], ph[5], ph[6]);
        } else {
            int zero = tr.layers == 0;
            for (int i = 0; i < 7; i++) zero &= ph[i] == 0;
            CHECK(zero, "rank %d: a host group (or a baseline) traced %lld layers", L.world_rank, (long long)tr.layers);
        }
        char label[300];
        config_label(label, sizeof label, sp, c);
        mpi_case("sp %s, dp %d × sp %d, %s: 3 calls in a row on one cache, the last = single process (worst %.1e); "
                 "trace %s", label, L.dp_size, L.sp_size, P->sh->name, worst,
                 gpu && c->mode <= LASP_SP_LASP2 ? "layers counted, phases ordered" : "empty");
    }
    lasp_sp_cache_free(cache);
    lasp_sp_free(sp);
}

/* The layout a group reports and its communicators. */
static void layout_case(int size) {
    const config c = {LASP_SP_CHAIN, LASP_SP_TRANSFER_AUTO, 4};
    lasp_sp *sp = sp_make(size, &c, 0);
    const lasp_sp_layout L = lasp_sp_get_layout(sp);
    const int n = lasp_comm_size(world), r = lasp_comm_rank(world);
    CHECK(L.world_size == n && L.world_rank == r && L.sp_size == size && L.sp_rank == r % size &&
              L.dp_size == n / size && L.dp_rank == r / size,
          "rank %d: layout world %d/%d sp %d/%d dp %d/%d", r, L.world_rank, L.world_size, L.sp_rank, L.sp_size,
          L.dp_rank, L.dp_size);
    const lasp_comm *g = lasp_sp_group(sp), *dp = lasp_sp_dp_group(sp);
    CHECK(g && dp && lasp_comm_size(g) == size && lasp_comm_rank(g) == L.sp_rank && lasp_comm_size(dp) == n / size &&
              lasp_comm_rank(dp) == L.dp_rank,
          "rank %d: the SP group or the DP group disagrees with the layout", r);
    lasp_sp_free(sp);
    mpi_case("sp %s, dp %d × sp %d: lasp_sp_get_layout and the groups (SP contiguous, DP strided)", gpu ? "gpu" : "cpu",
             n / size, size);
}

/* Rows across piece boundaries: forward from the previous piece, backward from the next; the sequence's first
 * (forward) and last (backward) piece keep what their recv held. Values exact in every dtype, naming the
 * sender. */
static void halo_case(int size) {
    const config c = {LASP_SP_CHAIN, LASP_SP_TRANSFER_AUTO, 4};
    lasp_sp *sp = sp_make(size, &c, 0);
    const lasp_sp_layout L = lasp_sp_get_layout(sp);
    enum { N = 24 };
    for (int ti = 0; ti < n_dtypes(); ti++) {
        const lasp_dtype t = dtype_at(ti);
        for (int bwd = 0; bwd < 2; bwd++) {
            float send[N], keep[N];
            for (int i = 0; i < N; i++) send[i] = (float)(L.world_rank % 16 + 1) + 0.25f * (i % 4), keep[i] = -0.5f;
            void *s = buf_new(send, N, t), *rcv = buf_new(keep, N, t);
            lasp_err err = {0};
            const lasp_status st = lasp_sp_halo(sp, bwd, s, rcv, N, t, &err);
            CHECK(st == LASP_OK, "rank %d: lasp_sp_halo: %s", L.world_rank, err.msg);
            settle(sp);
            float *got = test_down(rcv, N, t, gpu);
            const int has = bwd ? L.sp_rank < L.sp_size - 1 : L.sp_rank > 0;
            const int from = L.world_rank + (bwd ? 1 : -1);
            int bad = 0;
            for (int i = 0; i < N; i++)
                bad += got[i] != (has ? (float)(from % 16 + 1) + 0.25f * (i % 4) : -0.5f);
            CHECK(!bad, "rank %d (sp %d) %s halo in %s: %d of %d elements wrong (first %g)", L.world_rank, L.sp_rank,
                  bwd ? "backward" : "forward", lasp_dtype_name(t), bad, N, (double)got[0]);
            free(got), test_free(s, gpu), test_free(rcv, gpu);
        }
    }
    lasp_sp_free(sp);
    mpi_case("sp %s, dp %d × sp %d: lasp_sp_halo forward (from the previous piece) and backward (from the next)",
             gpu ? "gpu" : "cpu", L.dp_size, L.sp_size);
}

/* whether msg holds v as a token of its own (not part of a longer number or word) */
static int names_value(const char *msg, const char *v) {
    const size_t n = strlen(v);
    for (const char *p = strstr(msg, v); p; p = strstr(p + 1, v)) {
        const char before = p > msg ? p[-1] : ' ', after = p[n];
        if (!isalnum((unsigned char)before) && before != '.' && !isalnum((unsigned char)after) && after != '.')
            return 1;
    }
    return 0;
}

/* lasp_sp_create refuses what it cannot run, on every rank alike (before any collective), naming the value. */
static void params_case(void) {
    const int n = lasp_comm_size(world);
    char not_div[16];
    snprintf(not_div, sizeof not_div, "%d", n + 1);
    const lasp_sp_params d = lasp_sp_default_params();
    struct { const char *what, *value; lasp_sp_params p; } bad[9];
    for (int i = 0; i < 9; i++) bad[i].p = d;
    bad[0].what = "size 0", bad[0].value = "0", bad[0].p.size = 0;
    bad[1].what = "a size that does not divide the world", bad[1].value = not_div, bad[1].p.size = n + 1;
    bad[2].what = "mode 7", bad[2].value = "7", bad[2].p.mode = (lasp_sp_mode)7;
    bad[3].what = "transfer 5", bad[3].value = "5", bad[3].p.transfer = (lasp_sp_transfer)5;
    bad[4].what = "comm_sms -1", bad[4].value = "-1", bad[4].p.comm_sms = -1;
    bad[5].what = "comm_sms 33", bad[5].value = "33", bad[5].p.comm_sms = 33;
    bad[6].what = "timeout 0", bad[6].value = "0", bad[6].p.timeout_s = 0;
    bad[7].what = "timeout NaN", bad[7].value = "nan", bad[7].p.timeout_s = NAN;
    bad[8].what = "trace 2", bad[8].value = "2", bad[8].p.trace = 2;
    for (int i = 0; i < 9; i++) {
        lasp_sp *sp = NULL;
        lasp_err err = {0};
        const lasp_status s = lasp_sp_create(world, &bad[i].p, &sp, &err);
        CHECK(s == LASP_ERR_ARG && !sp && names_value(err.msg, bad[i].value),
              "%s: status %d, message '%s' (want LASP_ERR_ARG naming %s)", bad[i].what, (int)s, err.msg, bad[i].value);
        lasp_sp_free(sp); /* only if it was wrongly made; collective then, as the make was */
    }
    mpi_case("sp %s: lasp_sp_create refuses size 0 / not dividing, unknown mode / transfer, comm_sms -1 / 33, "
             "timeout 0 / NaN, trace 2 (LASP_ERR_ARG naming the value)", gpu ? "gpu" : "cpu");
}

/* A backward needs its forward's cache: none, or one of a smaller shape, is refused (every rank alike, before
 * any transfer); freeing no cache is fine. */
static void misuse_case(void) {
    const int n = lasp_comm_size(world);
    const config c = {LASP_SP_CHAIN, LASP_SP_TRANSFER_AUTO, 4};
    lasp_sp *sp = sp_make(n, &c, 0);
    lasp_attn_desc a = {.B = 1, .T = 8, .H = 1, .d = 16, .e = 16, .dtype = LASP_F32}, a2 = a;
    a2.H = 2;
    const size_t len = (size_t)(a2.B * a2.T * a2.H * a2.d);
    lasp_rng rng;
    lasp_rng_seed(&rng, seed);
    float *hx = test_randn(&rng, len, 1), sl[2] = {0.1f, 0.5f};
    void *x = buf_new(hx, len, LASP_F32), *y = buf_new(NULL, len, LASP_F32);
    float *slopes = buf_new(sl, 2, LASP_F32);
    lasp_sp_cache_free(NULL);

    lasp_status s = lasp_sp_attn_bwd(ctx, sp, &a, x, x, x, slopes, NULL, x, NULL, y, y, y, NULL);
    CHECK(s == LASP_ERR_ARG && strstr(lasp_ctx_error(ctx), "cache"), "backward with no cache: status %d, '%s'",
          (int)s, lasp_ctx_error(ctx));
    s = lasp_sp_attn_fwd(ctx, sp, &a, x, x, x, slopes, NULL, y, NULL, NULL);
    CHECK(s == LASP_ERR_ARG, "forward with no place for a cache: status %d", (int)s);
    lasp_sp_cache *cache = NULL;
    s = lasp_sp_attn_fwd(ctx, sp, &a, x, x, x, slopes, NULL, y, NULL, &cache);
    if (s != LASP_OK) die("the SP forward", lasp_ctx_error(ctx));
    s = lasp_sp_attn_bwd(ctx, sp, &a2, x, x, x, slopes, cache, x, NULL, y, y, y, NULL);
    CHECK(s == LASP_ERR_ARG && strstr(lasp_ctx_error(ctx), "hint"),
          "backward of 2 heads after a forward of 1: status %d, '%s' (want LASP_ERR_ARG with a hint)", (int)s,
          lasp_ctx_error(ctx));
    if (!gpu) {
        lasp_sp_cache *c2 = NULL;
        a.dtype = LASP_BF16;
        s = lasp_sp_attn_fwd(ctx, sp, &a, x, x, x, slopes, NULL, y, NULL, &c2);
        CHECK(s == LASP_ERR_UNSUPPORTED, "bf16 on the CPU schedule: status %d", (int)s);
        lasp_sp_cache_free(c2);
    }
    settle(sp);
    lasp_sp_cache_free(cache);
    test_free(x, gpu), test_free(y, gpu), test_free(slopes, gpu), free(hx);
    lasp_sp_free(sp);
    mpi_case("sp %s: a backward with no cache, or a cache of a smaller shape, is refused (with a hint); no cache, "
             "no forward; lasp_sp_cache_free(NULL)%s", gpu ? "gpu" : "cpu", gpu ? "" : "; bf16 on the CPU refused");
}

/* Ulysses over more ranks than a shape has heads (or a number that does not divide them): every rank refuses
 * the forward and the backward alike, naming the heads and the ranks, before anything is sent. */
static void ulysses_refusal_case(int size, problem *probs, int n_probs) {
    const config c = {LASP_SP_ULYSSES, LASP_SP_TRANSFER_AUTO, 4};
    lasp_sp *sp = sp_make(size, &c, 0);
    const lasp_sp_layout L = lasp_sp_get_layout(sp);
    lasp_comm *g = lasp_sp_group(sp);
    int tried = 0;
    for (int pi = 0; pi < n_probs; pi++) {
        problem *P = &probs[pi];
        if (P->loc.H % size == 0) continue;
        tried++;
        lasp_sp_cache *cache = NULL;
        lasp_comm_reset_stats(g);
        const lasp_status s = lasp_sp_attn_fwd(ctx, sp, &P->loc, P->q, P->k, P->v, P->slopes, P->kv_in, P->out[O],
                                               P->out[KV_OUT], &cache);
        CHECK(s == LASP_ERR_ARG && strstr(lasp_ctx_error(ctx), "does not divide") && strstr(lasp_ctx_error(ctx), "hint"),
              "rank %d: ulysses with H %lld over %d ranks: status %d, '%s'", L.world_rank, (long long)P->loc.H, size,
              (int)s, lasp_ctx_error(ctx));
        const lasp_comm_stats st = lasp_comm_get_stats(g);
        CHECK(st.p2p_msgs == 0 && st.coll_calls == 0, "rank %d: the refused forward communicated", L.world_rank);
        lasp_sp_cache_free(cache);
    }
    lasp_sp_free(sp);
    if (tried)
        mpi_case("sp cpu ulysses, dp %d × sp %d: heads not divisible by sp refused on every rank before any message "
                 "(with a hint)", L.dp_size, L.sp_size);
}

/* Every case over the group of `size` ranks (and dp = world / size of them). On GPUs the full matrix of
 * configurations runs where the group is the whole world; the other layouts run each mode with the defaults. */
static void layout_cases(int size) {
    layout_case(size);
    halo_case(size);
    const lasp_sp_layout L = {.world_size = lasp_comm_size(world), .world_rank = lasp_comm_rank(world),
                              .sp_size = size, .sp_rank = lasp_comm_rank(world) % size,
                              .dp_size = lasp_comm_size(world) / size, .dp_rank = lasp_comm_rank(world) / size};
    problem probs[N_SHAPES * 2];
    int n_probs = 0;
    for (int si = 0; si < N_SHAPES; si++)
        for (int ti = 0; ti < n_dtypes(); ti++)
            if (gpu || !SHAPES[si].gpu_only) problem_make(&probs[n_probs++], &SHAPES[si], si, dtype_at(ti), &L);
    const int whole = size == L.world_size, modes = 4;
    if (!gpu) ulysses_refusal_case(size, probs, n_probs);
    for (int mode = 0; mode < modes; mode++)
        for (int tr = 0; tr < (gpu && whole ? 2 : 1); tr++)
            for (int sms = 0; sms < (gpu && whole ? 2 : 1); sms++) {
                const config c = {(lasp_sp_mode)mode, (lasp_sp_transfer)tr, sms ? 0 : 4};
                config_cases(size, &c, probs, n_probs);
            }
    if (whole)
        for (int mode = 0; mode < modes; mode++)
            for (int tr = 0; tr < (gpu ? 2 : 1); tr++) {
                const config c = {(lasp_sp_mode)mode, (lasp_sp_transfer)tr, 4};
                repeat_cases(size, &c, probs, n_probs);
            }
    for (int i = 0; i < n_probs; i++) problem_free(&probs[i]);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc && (!strcmp(argv[i + 1], "cpu") || !strcmp(argv[i + 1], "cuda")))
            gpu = !strcmp(argv[++i], "cuda");
        else {
            printf("FAIL sp: unknown argument '%s' (usage: [mpirun -np N] test_sp [--device cpu|cuda])\n", argv[i]);
            return 2;
        }
    }
    if (gpu && !SP_GPU) {
        printf("FAIL sp --device cuda: this build has no CUDA + NCCL + MPI (hint: install them and rebuild; `lasp info` "
               "shows the build features)\n");
        return 2;
    }
    lasp_err err = {0};
    /* verdicts and agreement travel over the host world; on GPUs the SP groups are split from an NCCL world.
     * One process needs no MPI on the CPU. */
    const lasp_comm_backend host = gpu || lasp_comm_launcher_size() > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    if (lasp_comm_world(host, &argc, &argv, &mpi_test_world_, &err) != LASP_OK) {
        printf("FAIL sp world: %s\n", err.msg);
        return 1;
    }
    world = mpi_test_world_;
    if (gpu && lasp_comm_world(LASP_COMM_NCCL, &argc, &argv, &world, &err) != LASP_OK) {
        printf("FAIL sp nccl world: %s\n", err.msg);
        lasp_comm_free(mpi_test_world_);
        return 1;
    }
    lasp_ctx_params p = lasp_ctx_default_params();
    if (lasp_ctx_create(&p, &ctx) != LASP_OK) die("lasp_ctx_create", "failed");
    seed = mpi_test_seed();
    const int n = lasp_comm_size(world);
    for (int size = 1; size <= n; size++)
        if (n % size == 0) layout_cases(size);
    params_case();
    misuse_case();
    const int rc = mpi_test_exit();
    lasp_ctx_free(ctx);
    if (world != mpi_test_world_) lasp_comm_free(world);
    lasp_comm_free(mpi_test_world_);
    return rc;
}
