/* test_attn.c — the chunked CPU op against the fp64 reference (MATH.md §1–2, metric of §6):
 * forward, backward and boundary states over a matrix of lengths, blocks, head dims and slopes;
 * the state hand-over between two calls; the reference's gradients against finite differences. */
#include <math.h>
#include <string.h>

#include "core/rng.h"
#include "lasp.h"
#include "test.h"

#define TOL 1e-5

static lasp_rng rng;
static lasp_ctx *ctx;

/* One problem: f32 inputs for the fast path, the same values in f64 for the reference. */
typedef struct prob {
    lasp_attn_desc a;
    size_t nq, nv, ns;
    float *q, *k, *v, *kv, *dO, *dkv, *slopes;
    double *q8, *k8, *v8, *kv8, *dO8, *dkv8, *slopes8;
} prob;

static float *randn(size_t n, double scale) { return test_randn(&rng, n, scale); }

static prob prob_make(int64_t B, int64_t T, int64_t H, int64_t d, int64_t e, const float *slopes) {
    prob p = {.a = {.B = B, .T = T, .H = H, .d = d, .e = e, .dtype = LASP_F32}};
    p.nq = (size_t)(B * T * H * d), p.nv = (size_t)(B * T * H * e), p.ns = (size_t)(B * H * d * e);
    /* q·k ~ 1 per token keeps outputs O(1)-ish whatever d is */
    p.q = randn(p.nq, 1.0 / sqrt((double)d)), p.k = randn(p.nq, 1.0), p.v = randn(p.nv, 1.0);
    p.kv = randn(p.ns, 1.0), p.dO = randn(p.nv, 1.0), p.dkv = randn(p.ns, 1.0);
    p.slopes = malloc((size_t)H * sizeof(float));
    memcpy(p.slopes, slopes, (size_t)H * sizeof(float));
    p.q8 = test_widen(p.q, p.nq), p.k8 = test_widen(p.k, p.nq), p.v8 = test_widen(p.v, p.nv);
    p.kv8 = test_widen(p.kv, p.ns), p.dO8 = test_widen(p.dO, p.nv), p.dkv8 = test_widen(p.dkv, p.ns);
    p.slopes8 = test_widen(p.slopes, (size_t)H);
    return p;
}

static void prob_free(prob *p) {
    void *all[] = {p->q, p->k, p->v, p->kv, p->dO, p->dkv, p->slopes,
                   p->q8, p->k8, p->v8, p->kv8, p->dO8, p->dkv8, p->slopes8};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* The reference outputs of a problem (with or without the incoming states). */
typedef struct ref {
    double *o, *kv_out, *dq, *dk, *dv, *dkv_in;
} ref;

static ref ref_run(prob *p, int with_states) {
    ref r = {malloc(p->nv * 8), malloc(p->ns * 8), malloc(p->nq * 8), malloc(p->nq * 8), malloc(p->nv * 8),
             malloc(p->ns * 8)};
    lasp_status s = lasp_attn_ref_fwd(ctx, &p->a, p->q8, p->k8, p->v8, p->slopes8, with_states ? p->kv8 : NULL,
                                      r.o, r.kv_out);
    CHECK(s == LASP_OK, "ref fwd: %s", lasp_ctx_error(ctx));
    s = lasp_attn_ref_bwd(ctx, &p->a, p->q8, p->k8, p->v8, p->slopes8, with_states ? p->kv8 : NULL, p->dO8,
                          with_states ? p->dkv8 : NULL, r.dq, r.dk, r.dv, r.dkv_in);
    CHECK(s == LASP_OK, "ref bwd: %s", lasp_ctx_error(ctx));
    return r;
}

static void ref_free(ref *r) {
    free(r->o), free(r->kv_out), free(r->dq), free(r->dk), free(r->dv), free(r->dkv_in);
}

static double worst;  /* largest error seen, for the summary line */

static void expect_close(const char *what, const float *x, const double *r, size_t n) {
    double err = lasp_rel_error_f32(x, r, n);
    if (err > worst || err != err) worst = err;
    CHECK(err <= TOL, "%s: relative error %.3e > %.0e", what, err, TOL);
}

/* Run the CPU op with `block` and compare every output with the reference. */
static void check_against_ref(prob *p, const ref *r, int block, int with_states) {
    p->a.block = block;
    float *o = malloc(p->nv * 4), *kvo = malloc(p->ns * 4), *dq = malloc(p->nq * 4), *dk = malloc(p->nq * 4),
          *dv = malloc(p->nv * 4), *dkvi = malloc(p->ns * 4);
    /* poison: every element must be written */
    memset(o, 0xff, p->nv * 4), memset(kvo, 0xff, p->ns * 4), memset(dq, 0xff, p->nq * 4);
    memset(dk, 0xff, p->nq * 4), memset(dv, 0xff, p->nv * 4), memset(dkvi, 0xff, p->ns * 4);
    lasp_status s = lasp_attn_fwd(ctx, &p->a, p->q, p->k, p->v, p->slopes, with_states ? p->kv : NULL, o, kvo);
    CHECK(s == LASP_OK, "fwd: %s", lasp_ctx_error(ctx));
    s = lasp_attn_bwd(ctx, &p->a, p->q, p->k, p->v, p->slopes, with_states ? p->kv : NULL, p->dO,
                      with_states ? p->dkv : NULL, dq, dk, dv, dkvi);
    CHECK(s == LASP_OK, "bwd: %s", lasp_ctx_error(ctx));
    expect_close("o", o, r->o, p->nv);
    expect_close("kv_out", kvo, r->kv_out, p->ns);
    expect_close("dq", dq, r->dq, p->nq);
    expect_close("dk", dk, r->dk, p->nq);
    expect_close("dv", dv, r->dv, p->nv);
    expect_close("dkv_in", dkvi, r->dkv_in, p->ns);
    free(o), free(kvo), free(dq), free(dk), free(dv), free(dkvi);
}

static void test_matrix(void) {
    const int64_t Ts[] = {1, 7, 63, 64, 65, 1000};
    const int blocks[] = {16, 64, 256};
    const int64_t dims[][2] = {{16, 16}, {64, 64}, {128, 128}, {256, 256}, {64, 128}};
    /* two heads per problem; over the matrix every slope kind meets every shape */
    const float slope_sets[][2] = {{0.0f, 8.0f}, {1e-5f, 0.3f}, {8.0f, 1e-5f}, {0.05f, 0.0f}};
    int n = 0;
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++, n++) {
            const int64_t T = Ts[ti], d = dims[di][0], e = dims[di][1];
            const float *sl = slope_sets[n % 4];
            const int with_states = n % 3 != 2;  /* mostly with kv_in / dkv_out, sometimes without */
            prob p = prob_make(2, T, 2, d, e, sl);
            ref r = ref_run(&p, with_states);
            for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++) {
                worst = 0;
                check_against_ref(&p, &r, blocks[bi], with_states);
                test_case("attn B2 T%lld H2 d%lld e%lld block %d slopes {%g, %g}%s (worst %.1e)", (long long)T,
                          (long long)d, (long long)e, blocks[bi], sl[0], sl[1],
                          with_states ? " kv_in dkv_out" : "", worst);
            }
            ref_free(&r);
            prob_free(&p);
        }
}

/* [0, T) at once equals [0, t) then [t, T) with the state handed over (forward), and the backward
 * run the other way: dkv_in of the second piece is dkv_out of the first. */
static void test_handover(void) {
    const int64_t B = 2, T = 200, H = 3, d = 32, e = 64;
    const float slopes[3] = {0.0f, 0.02f, 8.0f};
    prob p = prob_make(B, T, H, d, e, slopes);
    ref r = ref_run(&p, 1);
    const int64_t cuts[] = {1, 37, 64, 100, 199};
    for (size_t ci = 0; ci < sizeof cuts / sizeof cuts[0]; ci++)
        for (int block = 16; block <= 64; block *= 4) {
            const int64_t t = cuts[ci];
            const int64_t len[2] = {t, T - t}, off[2] = {0, t};
            /* split the token-major tensors into two contiguous pieces per batch */
            float *piece[2][5];
            for (int s = 0; s < 2; s++) {
                const float *src[5] = {p.q, p.k, p.v, p.dO, NULL};
                const int64_t D[5] = {d, d, e, e, 0};
                for (int x = 0; x < 4; x++) {
                    piece[s][x] = malloc((size_t)(B * len[s] * H * D[x]) * 4);
                    for (int64_t b = 0; b < B; b++)
                        memcpy(piece[s][x] + b * len[s] * H * D[x], src[x] + (b * T + off[s]) * H * D[x],
                               (size_t)(len[s] * H * D[x]) * 4);
                }
            }
            lasp_attn_desc a0 = p.a, a1 = p.a;
            a0.T = len[0], a1.T = len[1], a0.block = a1.block = block;
            float *mid = malloc(p.ns * 4), *kvo = malloc(p.ns * 4), *dmid = malloc(p.ns * 4), *dkvi = malloc(p.ns * 4);
            float *o[2], *dq[2], *dk[2], *dv[2];
            for (int s = 0; s < 2; s++) {
                o[s] = malloc((size_t)(B * len[s] * H * e) * 4), dv[s] = malloc((size_t)(B * len[s] * H * e) * 4);
                dq[s] = malloc((size_t)(B * len[s] * H * d) * 4), dk[s] = malloc((size_t)(B * len[s] * H * d) * 4);
            }
            CHECK(lasp_attn_fwd(ctx, &a0, piece[0][0], piece[0][1], piece[0][2], p.slopes, p.kv, o[0], mid) == LASP_OK,
                  "fwd 1: %s", lasp_ctx_error(ctx));
            CHECK(lasp_attn_fwd(ctx, &a1, piece[1][0], piece[1][1], piece[1][2], p.slopes, mid, o[1], kvo) == LASP_OK,
                  "fwd 2: %s", lasp_ctx_error(ctx));
            CHECK(lasp_attn_bwd(ctx, &a1, piece[1][0], piece[1][1], piece[1][2], p.slopes, mid, piece[1][3], p.dkv,
                                dq[1], dk[1], dv[1], dmid) == LASP_OK, "bwd 2: %s", lasp_ctx_error(ctx));
            CHECK(lasp_attn_bwd(ctx, &a0, piece[0][0], piece[0][1], piece[0][2], p.slopes, p.kv, piece[0][3], dmid,
                                dq[0], dk[0], dv[0], dkvi) == LASP_OK, "bwd 1: %s", lasp_ctx_error(ctx));
            /* reassemble and compare with the reference of the whole */
            float *O = malloc(p.nv * 4), *DQ = malloc(p.nq * 4), *DK = malloc(p.nq * 4), *DV = malloc(p.nv * 4);
            for (int s = 0; s < 2; s++)
                for (int64_t b = 0; b < B; b++) {
                    memcpy(O + (b * T + off[s]) * H * e, o[s] + b * len[s] * H * e, (size_t)(len[s] * H * e) * 4);
                    memcpy(DV + (b * T + off[s]) * H * e, dv[s] + b * len[s] * H * e, (size_t)(len[s] * H * e) * 4);
                    memcpy(DQ + (b * T + off[s]) * H * d, dq[s] + b * len[s] * H * d, (size_t)(len[s] * H * d) * 4);
                    memcpy(DK + (b * T + off[s]) * H * d, dk[s] + b * len[s] * H * d, (size_t)(len[s] * H * d) * 4);
                }
            worst = 0;
            expect_close("o", O, r.o, p.nv);
            expect_close("kv_out", kvo, r.kv_out, p.ns);
            expect_close("dq", DQ, r.dq, p.nq);
            expect_close("dk", DK, r.dk, p.nq);
            expect_close("dv", DV, r.dv, p.nv);
            expect_close("dkv_in", dkvi, r.dkv_in, p.ns);
            test_case("hand-over T%lld split at %lld, block %d (worst %.1e)", (long long)T, (long long)t, block, worst);
            free(O), free(DQ), free(DK), free(DV), free(mid), free(kvo), free(dmid), free(dkvi);
            for (int s = 0; s < 2; s++) {
                free(o[s]), free(dq[s]), free(dk[s]), free(dv[s]);
                for (int x = 0; x < 4; x++) free(piece[s][x]);
            }
        }
    ref_free(&r);
    prob_free(&p);
}

/* L = Σ o·W + Σ kv_out·G is linear in each input, so its central differences are exact up to
 * rounding: the reference's gradients (with dO = W, dkv_out = G) must match them to ~1e-10. */
static double loss(prob *p, double *o, double *kvo) {
    lasp_attn_ref_fwd(ctx, &p->a, p->q8, p->k8, p->v8, p->slopes8, p->kv8, o, kvo);
    double L = 0;
    for (size_t i = 0; i < p->nv; i++) L += o[i] * p->dO8[i];
    for (size_t i = 0; i < p->ns; i++) L += kvo[i] * p->dkv8[i];
    return L;
}

static void test_finite_differences(void) {
    const float slopes[2] = {0.0f, 0.4f};
    prob p = prob_make(1, 6, 2, 16, 32, slopes);
    ref r = ref_run(&p, 1);
    double *o = malloc(p.nv * 8), *kvo = malloc(p.ns * 8);
    struct { const char *name; double *x; const double *g; size_t n; } in[] = {
        {"q", p.q8, r.dq, p.nq}, {"k", p.k8, r.dk, p.nq}, {"v", p.v8, r.dv, p.nv}, {"kv_in", p.kv8, r.dkv_in, p.ns}};
    const double h = 1e-4;
    for (size_t i = 0; i < 4; i++) {
        double num2 = 0, den2 = 0;
        for (size_t j = 0; j < in[i].n; j++) {
            const double x0 = in[i].x[j];
            in[i].x[j] = x0 + h;
            double lp = loss(&p, o, kvo);
            in[i].x[j] = x0 - h;
            double lm = loss(&p, o, kvo);
            in[i].x[j] = x0;
            double fd = (lp - lm) / (2 * h);
            num2 += (fd - in[i].g[j]) * (fd - in[i].g[j]);
            den2 += in[i].g[j] * in[i].g[j];
        }
        double err = sqrt(num2 / den2);
        CHECK(err <= 1e-6, "d%s: reference gradient vs central differences %.3e > 1e-6", in[i].name, err);
        test_case("reference gradient d%s vs finite differences (rel %.1e)", in[i].name, err);
    }
    free(o), free(kvo);
    ref_free(&r);
    prob_free(&p);
}

/* The library refuses what it cannot compute rightly, with a message. */
static void test_rejects(void) {
    const float slopes[2] = {0.1f, -0.5f};
    prob p = prob_make(1, 8, 2, 16, 16, slopes);
    float o[8 * 2 * 16];
    lasp_status s = lasp_attn_fwd(ctx, &p.a, p.q, p.k, p.v, p.slopes, NULL, o, NULL);
    CHECK(s == LASP_ERR_ARG && strstr(lasp_ctx_error(ctx), "-0.5"), "negative slope: %s / %s",
          lasp_status_string(s), lasp_ctx_error(ctx));
    p.slopes[1] = 0.5f;
    p.q[17] = NAN;
    s = lasp_attn_fwd(ctx, &p.a, p.q, p.k, p.v, p.slopes, NULL, o, NULL);
    CHECK(s == LASP_ERR_NONFINITE && strstr(lasp_ctx_error(ctx), "17"), "NaN in q: %s / %s",
          lasp_status_string(s), lasp_ctx_error(ctx));
    p.q[17] = 0.5f;
    lasp_attn_desc bad = p.a;
    bad.d = 48;
    s = lasp_attn_fwd(ctx, &bad, p.q, p.k, p.v, p.slopes, NULL, o, NULL);
    CHECK(s == LASP_ERR_UNSUPPORTED && strstr(lasp_ctx_error(ctx), "48"), "head dim 48: %s / %s",
          lasp_status_string(s), lasp_ctx_error(ctx));
    bad = p.a, bad.dtype = LASP_BF16;
    s = lasp_attn_fwd(ctx, &bad, p.q, p.k, p.v, p.slopes, NULL, o, NULL);
    CHECK(s == LASP_ERR_UNSUPPORTED, "bf16 on the CPU: %s", lasp_status_string(s));
    bad = p.a, bad.T = 0;
    s = lasp_attn_fwd(ctx, &bad, p.q, p.k, p.v, p.slopes, NULL, o, NULL);
    CHECK(s == LASP_ERR_SHAPE, "T = 0: %s", lasp_status_string(s));
    for (int64_t dd = 1; dd <= 512; dd++)
        CHECK(lasp_head_dim_supported(dd) == (dd == 16 || dd == 32 || dd == 64 || dd == 128 || dd == 256),
              "head dim %lld", (long long)dd);
    test_case("bad arguments are refused with a message");
    prob_free(&p);
}

/* The saving forms (lasp_attn_fwd_saving / lasp_attn_bwd_saved) on host tensors are the plain op: the
 * CPU path keeps nothing, and the buffer is neither read nor written. */
static void test_saving_on_host(void) {
    const float slopes[2] = {0.05f, 0.5f};
    prob p = prob_make(1, 100, 2, 32, 64, slopes);
    float *o[2], *kvo[2], *dq[2], *dk[2], *dv[2], *dkvi[2];
    float canary[4] = {1.5f, 2.5f, 3.5f, 4.5f};
    for (int i = 0; i < 2; i++) {
        o[i] = malloc(p.nv * 4), kvo[i] = malloc(p.ns * 4), dq[i] = malloc(p.nq * 4), dk[i] = malloc(p.nq * 4);
        dv[i] = malloc(p.nv * 4), dkvi[i] = malloc(p.ns * 4);
    }
    lasp_status s = lasp_attn_fwd(ctx, &p.a, p.q, p.k, p.v, p.slopes, p.kv, o[0], kvo[0]);
    if (s == LASP_OK)
        s = lasp_attn_bwd(ctx, &p.a, p.q, p.k, p.v, p.slopes, p.kv, p.dO, p.dkv, dq[0], dk[0], dv[0], dkvi[0]);
    CHECK(s == LASP_OK, "plain: %s", lasp_ctx_error(ctx));
    s = lasp_attn_fwd_saving(ctx, &p.a, p.q, p.k, p.v, p.slopes, p.kv, o[1], kvo[1], canary);
    if (s == LASP_OK)
        s = lasp_attn_bwd_saved(ctx, &p.a, p.q, p.k, p.v, p.slopes, p.kv, p.dO, p.dkv, dq[1], dk[1], dv[1], dkvi[1],
                                canary);
    CHECK(s == LASP_OK, "saving: %s", lasp_ctx_error(ctx));
    CHECK(!memcmp(o[0], o[1], p.nv * 4) && !memcmp(kvo[0], kvo[1], p.ns * 4) && !memcmp(dq[0], dq[1], p.nq * 4) &&
              !memcmp(dk[0], dk[1], p.nq * 4) && !memcmp(dv[0], dv[1], p.nv * 4) && !memcmp(dkvi[0], dkvi[1], p.ns * 4),
          "the saving forms differ from the plain op on host tensors");
    CHECK(canary[0] == 1.5f && canary[3] == 4.5f, "the saved-states buffer was written on the CPU");
    for (int i = 0; i < 2; i++) free(o[i]), free(kvo[i]), free(dq[i]), free(dk[i]), free(dv[i]), free(dkvi[i]);
    test_case("lasp_attn_fwd_saving / lasp_attn_bwd_saved on host tensors: the plain op, the buffer untouched");
    prob_free(&p);
}

int main(void) {
    lasp_rng_seed(&rng, test_seed());
    lasp_ctx_params cp = lasp_ctx_default_params();
    if (lasp_ctx_create(&cp, &ctx) != LASP_OK) return 1;
    test_rejects();
    test_saving_on_host();
    test_finite_differences();
    test_handover();
    test_matrix();
    lasp_ctx_free(ctx);
    return test_exit();
}
