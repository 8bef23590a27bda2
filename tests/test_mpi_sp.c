/* test_mpi_sp.c — LASP under mpirun (1, 2, 4 ranks): for every dp × sp layout that fits and both modes,
 * every rank's outputs, gradients and boundary states equal the single-process op within 1e-6 relative
 * error, the gathered tensors equal the fp64 reference within 1e-5, and the message counters prove the
 * schedule: the chain sends one state per hop and direction, the backward runs no second forward chain,
 * and LASP-2 makes one all-gather per direction. Usage: mpirun -np N test_mpi_sp */
#include <math.h>
#include <string.h>

#include "attn/attn.h"
#include "core/rng.h"
#include "mpi_test.h"
#include "sp/sp.h"

typedef struct cfg {
    const char *name;
    int64_t Bl, Tl, H, d, e;  /* local batch, tokens per piece */
    int block;
    float slopes[4];
    int states;               /* kv_in and dkv_out given */
} cfg;

static const cfg CFGS[] = {
    {"ragged pieces, slopes 0..12, kv_in + dkv_out", 2, 37, 4, 16, 32, 16, {0.0f, 0.05f, 1.0f, 12.0f}, 1},
    {"full blocks, slopes up to 30 (λ^T underflows)", 3, 64, 2, 32, 32, 0, {0.3f, 30.0f}, 0},
};

/* Rows [t0, t0+Tp) of batch entries [b0, b0+Bp) of a [B, T, R] tensor (R = H·D per token). */
static void slice(float *dst, const float *src, int64_t b0, int64_t Bp, int64_t t0, int64_t Tp, int64_t T, int64_t R) {
    for (int64_t b = 0; b < Bp; b++)
        memcpy(dst + b * Tp * R, src + ((b0 + b) * T + t0) * R, (size_t)(Tp * R) * sizeof *dst);
}

/* The inverse: put a piece into its place in a zeroed full tensor (for gathering by a sum). */
static void place(float *dst, const float *src, int64_t b0, int64_t Bp, int64_t t0, int64_t Tp, int64_t T, int64_t R) {
    for (int64_t b = 0; b < Bp; b++)
        memcpy(dst + ((b0 + b) * T + t0) * R, src + b * Tp * R, (size_t)(Tp * R) * sizeof *dst);
}

static double rel32(const float *x, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double dlt = (double)x[i] - ref[i];
        num += dlt * dlt, den += (double)ref[i] * ref[i];
    }
    if (!isfinite(num)) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static float *randn(lasp_rng *r, size_t n, double scale) {
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * lasp_rng_normal(r));
    return x;
}

static double *widen(const float *x, size_t n) {
    if (!x) return NULL;
    double *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

static lasp_ctx *ctx;

static void gather_sum(float *full, size_t n) {
    lasp_err err = {0};
    if (lasp_comm_allreduce(mpi_test_world_, full, full, n, LASP_F32, LASP_REDUCE_SUM, &err) != LASP_OK)
        lasp_comm_abort(mpi_test_world_, err.msg);
}

static void run(const cfg *c, int ci, int sp_size, lasp_sp_mode mode, uint64_t seed) {
    lasp_err err = {0};
    lasp_sp sp;
    if (lasp_sp_init(mpi_test_world_, sp_size, mode, &sp, &err) != LASP_OK) lasp_comm_abort(mpi_test_world_, err.msg);
    const char *mname = mode == LASP_SP_CHAIN ? "lasp" : "lasp2";
    const int W = sp.sp_size, r = sp.sp_rank;
    const int64_t B = c->Bl * sp.dp_size, T = c->Tl * W, H = c->H, d = c->d, e = c->e;
    const int64_t Bl = c->Bl, Tl = c->Tl, b0 = sp.dp_rank * Bl, t0 = r * Tl;
    const size_t nq = (size_t)(B * T * H * d), nv = (size_t)(B * T * H * e), ns = (size_t)(B * H * d * e);
    const size_t lq = (size_t)(Bl * Tl * H * d), lv = (size_t)(Bl * Tl * H * e), ls = (size_t)(Bl * H * d * e);

    /* the same global inputs on every rank */
    lasp_rng rng;
    lasp_rng_seed(&rng, seed + 1000003u * (uint64_t)ci);
    float *q = randn(&rng, nq, 1 / sqrt((double)d)), *k = randn(&rng, nq, 1), *v = randn(&rng, nv, 1);
    float *dO = randn(&rng, nv, 1), *kvi = c->states ? randn(&rng, ns, 1) : NULL;
    float *dkvo = c->states ? randn(&rng, ns, 1) : NULL;
    float slopes[4];
    memcpy(slopes, c->slopes, sizeof slopes);

    /* single process, the whole sequence */
    lasp_attn_desc a = {.B = B, .T = T, .H = H, .d = d, .e = e, .block = c->block, .dtype = LASP_F32};
    float *o1 = malloc(nv * 4), *kvo1 = malloc(ns * 4), *dq1 = malloc(nq * 4), *dk1 = malloc(nq * 4);
    float *dv1 = malloc(nv * 4), *dkvi1 = malloc(ns * 4);
    CHECK(lasp_attn_fwd_cpu(ctx, &a, q, k, v, slopes, kvi, o1, kvo1) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_cpu(ctx, &a, q, k, v, slopes, kvi, dO, dkvo, dq1, dk1, dv1, dkvi1) == LASP_OK, "%s",
          lasp_ctx_error(ctx));

    /* this rank's piece */
    lasp_attn_desc al = a;
    al.B = Bl, al.T = Tl;
    float *ql = malloc(lq * 4), *kl = malloc(lq * 4), *vl = malloc(lv * 4), *dol = malloc(lv * 4);
    slice(ql, q, b0, Bl, t0, Tl, T, H * d), slice(kl, k, b0, Bl, t0, Tl, T, H * d);
    slice(vl, v, b0, Bl, t0, Tl, T, H * e), slice(dol, dO, b0, Bl, t0, Tl, T, H * e);
    const float *kvil = kvi && r == 0 ? kvi + b0 * H * d * e : NULL;
    const float *dkvol = dkvo && r == W - 1 ? dkvo + b0 * H * d * e : NULL;
    float *o = malloc(lv * 4), *dq = malloc(lq * 4), *dk = malloc(lq * 4), *dv = malloc(lv * 4);
    float *kvo = calloc(ls, 4), *dkvi = calloc(ls, 4);
    lasp_sp_cache cache = {0};

    lasp_comm_reset_stats(sp.sp);
    lasp_status s = lasp_sp_attn_fwd(ctx, &sp, &al, ql, kl, vl, slopes, kvil, o, r == W - 1 ? kvo : NULL, &cache);
    if (s != LASP_OK) lasp_comm_abort(mpi_test_world_, lasp_ctx_error(ctx));
    const lasp_comm_stats sf = lasp_comm_get_stats(sp.sp);
    lasp_comm_reset_stats(sp.sp);
    s = lasp_sp_attn_bwd(ctx, &sp, &al, ql, kl, vl, slopes, &cache, dol, dkvol, dq, dk, dv, r == 0 ? dkvi : NULL);
    if (s != LASP_OK) lasp_comm_abort(mpi_test_world_, lasp_ctx_error(ctx));
    const lasp_comm_stats sb = lasp_comm_get_stats(sp.sp);

    /* every rank against the single-process run */
    const double tol = 1e-6;
    float *ref = malloc((nq > nv ? nq : nv) * 4);
    double err_max = 0;
#define VS_SINGLE(name, x, full, n, R)                                                   \
    do {                                                                                 \
        slice(ref, full, b0, Bl, t0, Tl, T, R);                                          \
        const double e_ = rel32(x, ref, n);                                              \
        err_max = e_ > err_max ? e_ : err_max;                                           \
        CHECK(e_ <= tol, "rank %d (dp %d, sp %d): %s rel error %.3e vs single process", \
              sp.world_rank, sp.dp_rank, r, name, e_);                                   \
    } while (0)
    VS_SINGLE("o", o, o1, lv, H * e);
    VS_SINGLE("dq", dq, dq1, lq, H * d);
    VS_SINGLE("dk", dk, dk1, lq, H * d);
    VS_SINGLE("dv", dv, dv1, lv, H * e);
    if (r == W - 1) {
        const double e_ = rel32(kvo, kvo1 + b0 * H * d * e, ls);
        CHECK(e_ <= tol, "rank %d: kv_out rel error %.3e", sp.world_rank, e_);
    }
    if (r == 0) {
        const double e_ = rel32(dkvi, dkvi1 + b0 * H * d * e, ls);
        CHECK(e_ <= tol, "rank %d: dkv_in rel error %.3e", sp.world_rank, e_);
    }
    /* the cached KV_in: the state of the prefix [0, t0) run on one process */
    float *want = calloc(ls, 4);
    if (t0 > 0) {
        lasp_attn_desc ap = a;
        ap.B = Bl, ap.T = t0;
        float *qp = malloc((size_t)(Bl * t0 * H * d) * 4), *kp = malloc((size_t)(Bl * t0 * H * d) * 4);
        float *vp = malloc((size_t)(Bl * t0 * H * e) * 4), *op = malloc((size_t)(Bl * t0 * H * e) * 4);
        slice(qp, q, b0, Bl, 0, t0, T, H * d), slice(kp, k, b0, Bl, 0, t0, T, H * d), slice(vp, v, b0, Bl, 0, t0, T, H * e);
        CHECK(lasp_attn_fwd_cpu(ctx, &ap, qp, kp, vp, slopes, kvi ? kvi + b0 * H * d * e : NULL, op, want) == LASP_OK,
              "%s", lasp_ctx_error(ctx));
        free(qp), free(kp), free(vp), free(op);
    } else if (kvi) {
        memcpy(want, kvi + b0 * H * d * e, ls * 4);
    }
    const double ec = rel32(cache.kv_in, want, ls);
    CHECK(ec <= tol, "rank %d: cached KV_in rel error %.3e vs the prefix's state", sp.world_rank, ec);
    free(want);
    mpi_case("sp %s dp %d × sp %d, %s: every rank = single process (rel ≤ 1e-6, max %.1e), incl. cached KV_in",
             mname, sp.dp_size, W, c->name, err_max);

    /* gathered over the world (each element written by one rank: the sum is exact) vs fp64 */
    float *go = calloc(nv, 4), *gdq = calloc(nq, 4), *gdk = calloc(nq, 4), *gdv = calloc(nv, 4);
    float *gkvo = calloc(ns, 4), *gdkvi = calloc(ns, 4);
    place(go, o, b0, Bl, t0, Tl, T, H * e), place(gdq, dq, b0, Bl, t0, Tl, T, H * d);
    place(gdk, dk, b0, Bl, t0, Tl, T, H * d), place(gdv, dv, b0, Bl, t0, Tl, T, H * e);
    if (r == W - 1) memcpy(gkvo + b0 * H * d * e, kvo, ls * 4);
    if (r == 0) memcpy(gdkvi + b0 * H * d * e, dkvi, ls * 4);
    gather_sum(go, nv), gather_sum(gdq, nq), gather_sum(gdk, nq), gather_sum(gdv, nv);
    gather_sum(gkvo, ns), gather_sum(gdkvi, ns);
    if (sp.world_rank == 0) {
        double *q8 = widen(q, nq), *k8 = widen(k, nq), *v8 = widen(v, nv), *do8 = widen(dO, nv);
        double *kvi8 = widen(kvi, ns), *dkvo8 = widen(dkvo, ns), sl8[4];
        for (int h = 0; h < H; h++) sl8[h] = slopes[h];
        double *ro = malloc(nv * 8), *rkvo = malloc(ns * 8), *rdq = malloc(nq * 8), *rdk = malloc(nq * 8);
        double *rdv = malloc(nv * 8), *rdkvi = malloc(ns * 8);
        CHECK(lasp_attn_ref_fwd(ctx, &a, q8, k8, v8, sl8, kvi8, ro, rkvo) == LASP_OK, "%s", lasp_ctx_error(ctx));
        CHECK(lasp_attn_ref_bwd(ctx, &a, q8, k8, v8, sl8, kvi8, do8, dkvo8, rdq, rdk, rdv, rdkvi) == LASP_OK, "%s",
              lasp_ctx_error(ctx));
        const float *got[6] = {go, gkvo, gdq, gdk, gdv, gdkvi};
        const double *want8[6] = {ro, rkvo, rdq, rdk, rdv, rdkvi};
        const size_t cnt[6] = {nv, ns, nq, nq, nv, ns};
        static const char *names[6] = {"o", "kv_out", "dq", "dk", "dv", "dkv_in"};
        for (int i = 0; i < 6; i++) {
            const double e_ = lasp_rel_error_f32(got[i], want8[i], cnt[i]);
            CHECK(e_ <= 1e-5, "gathered %s: rel error %.3e vs fp64", names[i], e_);
        }
        free(q8), free(k8), free(v8), free(do8), free(kvi8), free(dkvo8);
        free(ro), free(rkvo), free(rdq), free(rdk), free(rdv), free(rdkvi);
    }
    mpi_case("sp %s dp %d × sp %d, %s: gathered outputs, grads, states = fp64 reference (rel ≤ 1e-5)", mname,
             sp.dp_size, W, c->name);

    /* the schedule, from the counters of the SP communicator */
    const uint64_t state_bytes = (uint64_t)ls * 4;
    if (mode == LASP_SP_CHAIN) {
        CHECK(sf.p2p_msgs == (uint64_t)(r < W - 1) && sf.p2p_bytes == (r < W - 1 ? state_bytes : 0) &&
                  sf.coll_calls == 0,
              "rank %d forward: %llu messages, %llu bytes, %llu collectives (want %d, %llu, 0)", r,
              (unsigned long long)sf.p2p_msgs, (unsigned long long)sf.p2p_bytes,
              (unsigned long long)sf.coll_calls, r < W - 1, (unsigned long long)(r < W - 1 ? state_bytes : 0));
        /* rank r sends only to r−1 in the backward: rank 0 sending anything would be a forward hop */
        CHECK(sb.p2p_msgs == (uint64_t)(r > 0) && sb.p2p_bytes == (r > 0 ? state_bytes : 0) && sb.coll_calls == 0,
              "rank %d backward: %llu messages, %llu bytes, %llu collectives (want %d, 0 collectives)", r,
              (unsigned long long)sb.p2p_msgs, (unsigned long long)sb.p2p_bytes,
              (unsigned long long)sb.coll_calls, r > 0);
        float m[2] = {(float)sf.p2p_msgs, (float)sb.p2p_msgs}, tot[2] = {0, 0};
        CHECK(lasp_comm_allreduce(sp.sp, m, tot, 2, LASP_F32, LASP_REDUCE_SUM, &err) == LASP_OK, "%s", err.msg);
        CHECK(tot[0] == W - 1 && tot[1] == W - 1, "SP group sent %.0f forward, %.0f backward messages; want %d each",
              tot[0], tot[1], W - 1);
        mpi_case("sp lasp dp %d × sp %d, %s: W−1 = %d messages of %llu bytes per direction, no second forward chain",
                 sp.dp_size, W, c->name, W - 1, (unsigned long long)state_bytes);
    } else {
        const uint64_t want = (uint64_t)(W - 1) * state_bytes;
        CHECK(sf.p2p_msgs == 0 && sf.coll_calls == 1 && sf.coll_bytes == want && sb.p2p_msgs == 0 &&
                  sb.coll_calls == 1 && sb.coll_bytes == want,
              "rank %d: fwd %llu msgs %llu colls %llu bytes, bwd %llu msgs %llu colls %llu bytes; want 0, 1, %llu",
              r, (unsigned long long)sf.p2p_msgs, (unsigned long long)sf.coll_calls,
              (unsigned long long)sf.coll_bytes, (unsigned long long)sb.p2p_msgs, (unsigned long long)sb.coll_calls,
              (unsigned long long)sb.coll_bytes, (unsigned long long)want);
        mpi_case("sp lasp2 dp %d × sp %d, %s: one all-gather per direction, %llu bytes sent by each rank", sp.dp_size,
                 W, c->name, (unsigned long long)want);
    }

    free(q), free(k), free(v), free(dO), free(kvi), free(dkvo), free(o1), free(kvo1), free(dq1), free(dk1), free(dv1);
    free(dkvi1), free(ql), free(kl), free(vl), free(dol), free(o), free(dq), free(dk), free(dv), free(kvo), free(dkvi);
    free(ref), free(go), free(gdq), free(gdk), free(gdv), free(gkvo), free(gdkvi);
    lasp_sp_cache_free(&cache);
    lasp_sp_free(&sp);
}

/* A backward without its forward, or with a cache of another shape, is refused on every rank alike. */
static void misuse(void) {
    lasp_err err = {0};
    lasp_sp sp;
    if (lasp_sp_init(mpi_test_world_, lasp_comm_size(mpi_test_world_), LASP_SP_CHAIN, &sp, &err) != LASP_OK)
        lasp_comm_abort(mpi_test_world_, err.msg);
    lasp_attn_desc a = {.B = 1, .T = 8, .H = 1, .d = 16, .e = 16, .dtype = LASP_F32};
    float x[8 * 16] = {0}, y[8 * 16], sl[1] = {0.1f};
    lasp_sp_cache empty = {0};
    lasp_status s = lasp_sp_attn_bwd(ctx, &sp, &a, x, x, x, sl, &empty, x, NULL, y, y, y, NULL);
    CHECK(s == LASP_ERR_ARG && strstr(lasp_ctx_error(ctx), "cache"), "bwd without fwd: status %d, '%s'", (int)s,
          lasp_ctx_error(ctx));
    lasp_sp_cache c1 = {0};
    a.dtype = LASP_BF16;
    s = lasp_sp_attn_fwd(ctx, &sp, &a, x, x, x, sl, NULL, y, NULL, &c1);
    CHECK(s == LASP_ERR_UNSUPPORTED, "bf16 on the CPU SP path: status %d", (int)s);
    lasp_sp_cache_free(&c1);
    lasp_sp_free(&sp);
    mpi_case("sp misuse refused on every rank: backward without forward, bf16 on the CPU");
}

int main(int argc, char **argv) {
    lasp_err err = {0};
    lasp_comm *world;
    if (lasp_comm_world(LASP_COMM_MPI, &argc, &argv, &world, &err) != LASP_OK) {
        printf("FAIL sp world: %s\n", err.msg);
        return 1;
    }
    mpi_test_world_ = world;
    lasp_ctx_params p = lasp_ctx_default_params();
    if (lasp_ctx_create(&p, &ctx) != LASP_OK) lasp_comm_abort(world, "cannot create a context");
    const uint64_t seed = mpi_test_seed();
    const int n = lasp_comm_size(world);
    for (int sp_size = 1; sp_size <= n; sp_size++) {
        if (n % sp_size) continue;
        for (int mode = 0; mode < 2; mode++)
            for (int ci = 0; ci < (int)(sizeof CFGS / sizeof CFGS[0]); ci++)
                run(&CFGS[ci], ci, sp_size, (lasp_sp_mode)mode, seed);
    }
    misuse();
    int rc = mpi_test_exit();
    lasp_ctx_free(ctx);
    lasp_comm_free(world);
    return rc;
}
