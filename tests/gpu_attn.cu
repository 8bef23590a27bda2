/* gpu_attn.cu — the CUDA op against the fp64 reference (MATH.md §1–2, metric of §6), run on a GPU by
 * `make test-gpu`: forward, backward and boundary states, bf16/f16 (≤ 1e-2) and f32 (≤ 1e-4), every head
 * dim, lengths around the 64-token chunk, slopes 0 / 1e-5 / 8 in one problem (one per head), with and
 * without the incoming states; long sequences against the CPU chunked fp32 path (itself tested against
 * fp64 in test_attn); the op in the halves the SP schedule uses equals the op in one call. Outputs are
 * poisoned with NaN before each run, so every element must be written.
 * The reference sees the inputs rounded to the I/O dtype: the error measured is the kernels' own. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "attn/attn_cuda_sp.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"
#include "test.h"

static lasp_rng rng;
static lasp_ctx *ctx;
static double worst[4];  /* per dtype: largest error seen */

#define CUDA_OK(call)                                                                          \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            printf("FAIL cuda call %s: %s\n", #call, cudaGetErrorString(e_));                  \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static double tol_of(lasp_dtype t) { return t == LASP_F32 ? 1e-4 : 1e-2; }

/* n normal values × scale, rounded to dtype t (so host and device see the same numbers) */
static float *randn(size_t n, double scale, lasp_dtype t) {
    float *x = (float *)calloc(n ? n : 1, sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * lasp_rng_normal(&rng));
    if (t != LASP_F32) {
        void *tmp = malloc(n * 2);
        lasp_convert(tmp, t, x, LASP_F32, n);
        lasp_convert(x, LASP_F32, tmp, t, n);
        free(tmp);
    }
    return x;
}

static double *widen(const float *x, size_t n) {
    double *y = (double *)malloc((n ? n : 1) * sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* device copy of host f32 values in dtype t */
static void *to_dev(const float *x, size_t n, lasp_dtype t) {
    const size_t bytes = n * lasp_dtype_size(t);
    void *d, *h = malloc(bytes);
    lasp_convert(h, t, x, LASP_F32, n);
    CUDA_OK(cudaMalloc(&d, bytes));
    CUDA_OK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static void *poisoned(size_t n, lasp_dtype t) {
    void *d;
    CUDA_OK(cudaMalloc(&d, n * lasp_dtype_size(t)));
    CUDA_OK(cudaMemset(d, 0xff, n * lasp_dtype_size(t)));  /* NaN in every dtype */
    return d;
}

static float *from_dev(const void *d, size_t n, lasp_dtype t) {
    const size_t bytes = n * lasp_dtype_size(t);
    void *h = malloc(bytes);
    float *x = (float *)malloc(n * sizeof(float));
    CUDA_OK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost));
    lasp_convert(x, LASP_F32, h, t, n);
    free(h);
    return x;
}

/* A fresh random problem's inputs, on the host (rounded to t) and on the device: q scaled by 1/√d so
 * that q·k ~ 1 whatever d is, the states and slopes f32. */
typedef struct inputs {
    size_t nq, nv, ns;                 /* elements of q and k, of v and dO, of a state */
    float *q, *k, *v, *dO, *kv, *dkv;  /* host */
    void *gq, *gk, *gv, *gdo;          /* device, in dtype t */
    float *gsl, *gkv, *gdkv;           /* device */
} inputs;

static inputs inputs_make(lasp_dtype t, int64_t B, int64_t T, int64_t H, int64_t d, int64_t e, const float *sl) {
    inputs in;
    in.nq = (size_t)(B * T * H * d), in.nv = (size_t)(B * T * H * e), in.ns = (size_t)(B * H * d * e);
    in.q = randn(in.nq, 1.0 / sqrt((double)d), t), in.k = randn(in.nq, 1.0, t), in.v = randn(in.nv, 1.0, t);
    in.dO = randn(in.nv, 1.0, t), in.kv = randn(in.ns, 1.0, LASP_F32), in.dkv = randn(in.ns, 1.0, LASP_F32);
    in.gq = to_dev(in.q, in.nq, t), in.gk = to_dev(in.k, in.nq, t), in.gv = to_dev(in.v, in.nv, t);
    in.gdo = to_dev(in.dO, in.nv, t);
    in.gsl = (float *)to_dev(sl, (size_t)H, LASP_F32);
    in.gkv = (float *)to_dev(in.kv, in.ns, LASP_F32), in.gdkv = (float *)to_dev(in.dkv, in.ns, LASP_F32);
    return in;
}

static void inputs_free(inputs *in) {
    void *dev[] = {in->gq, in->gk, in->gv, in->gdo, in->gsl, in->gkv, in->gdkv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    free(in->q), free(in->k), free(in->v), free(in->dO), free(in->kv), free(in->dkv);
}

static void expect(const char *what, const float *x, const double *ref, size_t n, double tol, lasp_dtype t) {
    double err = lasp_rel_error_f32(x, ref, n);
    if (err > worst[t] || err != err) worst[t] = err;
    CHECK(err <= tol, "%s: relative error %.3g > %.3g", what, err, tol);
}

/* Two device results of n elements stored as `st` that must agree, `one` serving as the reference, within
 * the tolerance of the problem's I/O dtype t. */
static void expect_same(const char *what, const void *one, const void *two, size_t n, lasp_dtype st, lasp_dtype t) {
    float *x1 = from_dev(one, n, st), *x2 = from_dev(two, n, st);
    double *r = widen(x1, n);
    expect(what, x2, r, n, tol_of(t), t);
    free(x1), free(x2), free(r);
}

enum { REF_FP64, REF_CPU };

/* One problem on the GPU against a reference: fwd and bwd, states on or off. */
static void run_case(lasp_dtype t, int64_t B, int64_t T, int64_t H, int64_t d, int64_t e, int states, int ref_kind) {
    lasp_attn_desc a = {B, T, H, d, e, 0, t};
    float *sl = (float *)malloc((size_t)H * sizeof(float));
    const float kinds[] = {0.0f, 1e-5f, 8.0f, 0.5f, 0.03f};
    for (int64_t h = 0; h < H; h++) sl[h] = kinds[h % 5];
    inputs in = inputs_make(t, B, T, H, d, e, sl);
    const size_t nq = in.nq, nv = in.nv, ns = in.ns;
    const float *q = in.q, *k = in.k, *v = in.v, *dO = in.dO, *kv = in.kv, *dkv = in.dkv;
    void *gq = in.gq, *gk = in.gk, *gv = in.gv, *gdo = in.gdo;
    float *gsl = in.gsl, *gkv = states ? in.gkv : NULL, *gdkv = states ? in.gdkv : NULL;
    void *go = poisoned(nv, t), *gdq = poisoned(nq, t), *gdk = poisoned(nq, t), *gdv = poisoned(nv, t);
    float *gkvo = (float *)poisoned(ns, LASP_F32), *gdkvi = (float *)poisoned(ns, LASP_F32);

    lasp_status s = lasp_attn_fwd(ctx, &a, gq, gk, gv, gsl, gkv, go, gkvo);
    CHECK(s == LASP_OK, "fwd: %s", lasp_ctx_error(ctx));
    s = lasp_attn_bwd(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, gdq, gdk, gdv, gdkvi);
    CHECK(s == LASP_OK, "bwd: %s", lasp_ctx_error(ctx));
    CUDA_OK(cudaDeviceSynchronize());
    float *o = from_dev(go, nv, t), *kvo = from_dev(gkvo, ns, LASP_F32), *dq = from_dev(gdq, nq, t),
          *dk = from_dev(gdk, nq, t), *dv = from_dev(gdv, nv, t), *dkvi = from_dev(gdkvi, ns, LASP_F32);

    double *r_o = (double *)malloc(nv * 8), *r_kvo = (double *)malloc(ns * 8), *r_dq = (double *)malloc(nq * 8),
           *r_dk = (double *)malloc(nq * 8), *r_dv = (double *)malloc(nv * 8), *r_dkvi = (double *)malloc(ns * 8);
    if (ref_kind == REF_FP64) {
        double *q8 = widen(q, nq), *k8 = widen(k, nq), *v8 = widen(v, nv), *do8 = widen(dO, nv), *kv8 = widen(kv, ns),
               *dkv8 = widen(dkv, ns), *sl8 = widen(sl, (size_t)H);
        lasp_attn_desc a8 = a;
        a8.dtype = LASP_F64;
        s = lasp_attn_ref_fwd(ctx, &a8, q8, k8, v8, sl8, states ? kv8 : NULL, r_o, r_kvo);
        CHECK(s == LASP_OK, "ref fwd: %s", lasp_ctx_error(ctx));
        s = lasp_attn_ref_bwd(ctx, &a8, q8, k8, v8, sl8, states ? kv8 : NULL, do8, states ? dkv8 : NULL, r_dq, r_dk,
                              r_dv, r_dkvi);
        CHECK(s == LASP_OK, "ref bwd: %s", lasp_ctx_error(ctx));
        free(q8), free(k8), free(v8), free(do8), free(kv8), free(dkv8), free(sl8);
    } else {
        lasp_attn_desc a4 = a;
        a4.dtype = LASP_F32;
        float *c_o = (float *)malloc(nv * 4), *c_kvo = (float *)malloc(ns * 4), *c_dq = (float *)malloc(nq * 4),
              *c_dk = (float *)malloc(nq * 4), *c_dv = (float *)malloc(nv * 4), *c_dkvi = (float *)malloc(ns * 4);
        s = lasp_attn_fwd(ctx, &a4, q, k, v, sl, states ? kv : NULL, c_o, c_kvo);
        CHECK(s == LASP_OK, "cpu fwd: %s", lasp_ctx_error(ctx));
        s = lasp_attn_bwd(ctx, &a4, q, k, v, sl, states ? kv : NULL, dO, states ? dkv : NULL, c_dq, c_dk, c_dv, c_dkvi);
        CHECK(s == LASP_OK, "cpu bwd: %s", lasp_ctx_error(ctx));
        for (size_t i = 0; i < nv; i++) r_o[i] = c_o[i], r_dv[i] = c_dv[i];
        for (size_t i = 0; i < nq; i++) r_dq[i] = c_dq[i], r_dk[i] = c_dk[i];
        for (size_t i = 0; i < ns; i++) r_kvo[i] = c_kvo[i], r_dkvi[i] = c_dkvi[i];
        free(c_o), free(c_kvo), free(c_dq), free(c_dk), free(c_dv), free(c_dkvi);
    }
    const double tol = tol_of(t);
    expect("o", o, r_o, nv, tol, t);
    expect("kv_out", kvo, r_kvo, ns, tol, t);
    expect("dq", dq, r_dq, nq, tol, t);
    expect("dk", dk, r_dk, nq, tol, t);
    expect("dv", dv, r_dv, nv, tol, t);
    expect("dkv_in", dkvi, r_dkvi, ns, tol, t);

    void *dev[] = {go, gdq, gdk, gdv, gkvo, gdkvi};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    inputs_free(&in);
    void *host[] = {sl, o, kvo, dq, dk, dv, dkvi, r_o, r_kvo, r_dq, r_dk, r_dv, r_dkvi};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    test_case("%s B%lld T%lld H%lld d%lld e%lld %s vs %s", lasp_dtype_name(t), (long long)B, (long long)T,
              (long long)H, (long long)d, (long long)e, states ? "with states" : "no states",
              ref_kind == REF_FP64 ? "fp64" : "cpu f32");
}

/* kv_out = NULL and dkv_in = NULL are allowed: outputs still right. */
static void case_null_outputs(lasp_dtype t) {
    const int64_t B = 1, T = 100, H = 2, d = 32, e = 64;
    lasp_attn_desc a = {B, T, H, d, e, 0, t};
    float sl[2] = {0.1f, 0.0f};
    inputs in = inputs_make(t, B, T, H, d, e, sl);
    const size_t nq = in.nq, nv = in.nv;
    const float *q = in.q, *k = in.k, *v = in.v, *dO = in.dO;
    void *gq = in.gq, *gk = in.gk, *gv = in.gv, *gdo = in.gdo;
    float *gsl = in.gsl;
    void *go = poisoned(nv, t), *gdq = poisoned(nq, t), *gdk = poisoned(nq, t), *gdv = poisoned(nv, t);
    CHECK(lasp_attn_fwd(ctx, &a, gq, gk, gv, gsl, NULL, go, NULL) == LASP_OK, "fwd: %s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd(ctx, &a, gq, gk, gv, gsl, NULL, gdo, NULL, gdq, gdk, gdv, NULL) == LASP_OK, "bwd: %s",
          lasp_ctx_error(ctx));
    CUDA_OK(cudaDeviceSynchronize());
    double *q8 = widen(q, nq), *k8 = widen(k, nq), *v8 = widen(v, nv), *do8 = widen(dO, nv), sl8[2] = {sl[0], sl[1]};
    double *r_o = (double *)malloc(nv * 8), *r_dq = (double *)malloc(nq * 8), *r_dk = (double *)malloc(nq * 8),
           *r_dv = (double *)malloc(nv * 8);
    lasp_attn_desc a8 = a;
    a8.dtype = LASP_F64;
    lasp_attn_ref_fwd(ctx, &a8, q8, k8, v8, sl8, NULL, r_o, NULL);
    lasp_attn_ref_bwd(ctx, &a8, q8, k8, v8, sl8, NULL, do8, NULL, r_dq, r_dk, r_dv, NULL);
    float *o = from_dev(go, nv, t), *dq = from_dev(gdq, nq, t), *dk = from_dev(gdk, nq, t), *dv = from_dev(gdv, nv, t);
    expect("o", o, r_o, nv, tol_of(t), t);
    expect("dq", dq, r_dq, nq, tol_of(t), t);
    expect("dk", dk, r_dk, nq, tol_of(t), t);
    expect("dv", dv, r_dv, nv, tol_of(t), t);
    void *dev[] = {go, gdq, gdk, gdv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    inputs_free(&in);
    void *host[] = {q8, k8, v8, do8, r_o, r_dq, r_dk, r_dv, o, dq, dk, dv};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    test_case("%s kv_out and dkv_in NULL", lasp_dtype_name(t));
}

/* Running [0, T) at once equals [0, t) then [t, T) with the states handed over, both directions. */
static void case_handover(lasp_dtype t, int64_t T, int64_t t1, int64_t D) {
    const int64_t H = 3;
    lasp_attn_desc a = {1, T, H, D, D, 0, t};
    lasp_attn_desc a1 = {1, t1, H, D, D, 0, t}, a2 = {1, T - t1, H, D, D, 0, t};
    const float sl[3] = {0.0f, 0.05f, 1.0f};
    inputs in = inputs_make(t, 1, T, H, D, D, sl);
    const size_t n = in.nq, ns = in.ns, n1 = (size_t)(t1 * H * D);
    const size_t esz = lasp_dtype_size(t);
    void *gq = in.gq, *gk = in.gk, *gv = in.gv, *gdo = in.gdo;
    float *gsl = in.gsl, *gkv = in.gkv, *gdkv = in.gdkv;
    void *o1 = poisoned(n, t), *o2 = poisoned(n, t), *dq1 = poisoned(n, t), *dq2 = poisoned(n, t),
         *dk1 = poisoned(n, t), *dk2 = poisoned(n, t), *dv1 = poisoned(n, t), *dv2 = poisoned(n, t);
    float *kvo1 = (float *)poisoned(ns, LASP_F32), *kvo2 = (float *)poisoned(ns, LASP_F32),
          *kvmid = (float *)poisoned(ns, LASP_F32), *dkvi1 = (float *)poisoned(ns, LASP_F32),
          *dkvi2 = (float *)poisoned(ns, LASP_F32), *dkvmid = (float *)poisoned(ns, LASP_F32);
#define OFF(p) ((char *)(p) + n1 * esz)
    /* at once */
    CHECK(lasp_attn_fwd(ctx, &a, gq, gk, gv, gsl, gkv, o1, kvo1) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, dq1, dk1, dv1, dkvi1) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    /* in two pieces */
    CHECK(lasp_attn_fwd(ctx, &a1, gq, gk, gv, gsl, gkv, o2, kvmid) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_fwd(ctx, &a2, OFF(gq), OFF(gk), OFF(gv), gsl, kvmid, OFF(o2), kvo2) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd(ctx, &a2, OFF(gq), OFF(gk), OFF(gv), gsl, kvmid, OFF(gdo), gdkv, OFF(dq2), OFF(dk2), OFF(dv2),
                        dkvmid) == LASP_OK,
          "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd(ctx, &a1, gq, gk, gv, gsl, gkv, gdo, dkvmid, dq2, dk2, dv2, dkvi2) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
#undef OFF
    CUDA_OK(cudaDeviceSynchronize());
    struct {
        const char *name;
        void *one, *two;
        size_t n;
        lasp_dtype t;
    } cmp[] = {{"o", o1, o2, n, t},           {"kv_out", kvo1, kvo2, ns, LASP_F32}, {"dq", dq1, dq2, n, t},
               {"dk", dk1, dk2, n, t},        {"dv", dv1, dv2, n, t},             {"dkv_in", dkvi1, dkvi2, ns, LASP_F32}};
    for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++)
        expect_same(cmp[i].name, cmp[i].one, cmp[i].two, cmp[i].n, cmp[i].t, t);
    void *dev[] = {o1, o2, dq1, dq2, dk1, dk2, dv1, dv2, kvo1, kvo2, kvmid, dkvi1, dkvi2, dkvmid};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    inputs_free(&in);
    test_case("%s hand-over T%lld = %lld + %lld D%lld: two calls equal one", lasp_dtype_name(t), (long long)T,
              (long long)t1, (long long)(T - t1), (long long)D);
}

/* group i of two that split the BH heads at b0 */
static lasp_heads part(int64_t i, int64_t b0, int64_t BH) {
    lasp_heads hs = {i ? b0 : 0, i ? BH - b0 : b0};
    return hs;
}

/* The op in halves (attn_cuda_sp.h), in the SP schedule's order, equals the op in one call: forward
 * local → finish with kv_in, backward local (g) → dq from the forward's segment states → finish with dkv_out
 * (added by the output kernels, or folded into the states first); the
 * states the schedule forms, KV_out = λ^T kv_in + m and dKV_in = λ^T dkv_out + g, equal the op's. One GPU
 * exercises here what the multi-GPU schedule relies on: the arrived state added by the output kernels.
 * The backward from the forward's saved states (dq without its own state pass) must equal it too. */
/* --quick: small shapes only, for compute-sanitizer (which may run kernels one at a time) */
static int quick;

/* the output pass is k_out_tma here (attn_cuda.cu, out_pass_tma): bf16, d 64 or 128, e ≥ 64, a Hopper
 * GPU, neither LASP_CUDA_WGMMA=0 nor LASP_CUDA_TMA=0 */
static int out_pass_tma(lasp_dtype t, int64_t d, int64_t e) {
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    const char *w = getenv("LASP_CUDA_WGMMA"), *m = getenv("LASP_CUDA_TMA");
    return t == LASP_BF16 && (d == 64 || d == 128) && e >= 64 && major == 9 && !(w && w[0] == '0') &&
           !(m && m[0] == '0');
}

static void case_halves(lasp_dtype t, int64_t T, int64_t d, int64_t e, int64_t B = 2, int64_t H = 3) {
    lasp_attn_desc a = {B, T, H, d, e, 0, t};
    float sl[64];
    for (int64_t h = 0; h < H && h < 64; h++) sl[h] = h % 3 == 0 ? 0.0f : h % 3 == 1 ? 0.01f : 0.7f;
    inputs in = inputs_make(t, B, T, H, d, e, sl);
    const size_t nq = in.nq, nv = in.nv, ns = in.ns;
    const float *kv = in.kv, *dkv = in.dkv;
    void *gq = in.gq, *gk = in.gk, *gv = in.gv, *gdo = in.gdo;
    float *gsl = in.gsl, *gkv = in.gkv, *gdkv = in.gdkv;
    void *o1 = poisoned(nv, t), *o2 = poisoned(nv, t), *dq1 = poisoned(nq, t), *dq2 = poisoned(nq, t),
         *dk1 = poisoned(nq, t), *dk2 = poisoned(nq, t), *dv1 = poisoned(nv, t), *dv2 = poisoned(nv, t);
    float *kvo = (float *)poisoned(ns, LASP_F32), *dkvi = (float *)poisoned(ns, LASP_F32),
          *m = (float *)poisoned(ns, LASP_F32), *g = (float *)poisoned(ns, LASP_F32);
    CHECK(lasp_attn_fwd(ctx, &a, gq, gk, gv, gsl, gkv, o1, kvo) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, dq1, dk1, dv1, dkvi) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    size_t sb = 0;
    CHECK(lasp_attn_saved_bytes(ctx, &a, &sb) == LASP_OK && sb > 0, "saved bytes: %s", lasp_ctx_error(ctx));
    float *seg = (float *)poisoned(sb / sizeof(float), LASP_F32);
    /* each half in two groups of heads (as the SP chain pipelines them), split differently per half: a
     * group's halves touch only its heads of the whole problem's buffers */
    const lasp_heads all = {0, 0};
    for (int64_t i = 0, b0 = 2; i < 2; i++)
        CHECK(lasp_attn_fwd_cuda_local(ctx, &a, part(i, b0, B * H), gq, gk, gv, gsl, m, seg) == LASP_OK, "%s",
              lasp_ctx_error(ctx));
    /* the finish in two launches, each in two groups: the segments kv_in cannot reach on the context's
     * stream, and beside them the rest on a stream of its own (ordered after the local halves by an event) */
    void *cst = NULL;
    cudaStream_t side;
    cudaEvent_t ev_local, ev_side;
    CHECK(lasp_attn_cuda_stream(ctx, &cst) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CUDA_OK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreateWithFlags(&ev_local, cudaEventDisableTiming));
    CUDA_OK(cudaEventCreateWithFlags(&ev_side, cudaEventDisableTiming));
    CUDA_OK(cudaEventRecord(ev_local, (cudaStream_t)cst));
    CUDA_OK(cudaStreamWaitEvent(side, ev_local, 0));
    for (int p = 1; p <= 2; p++)
        for (int64_t i = 0, b0 = 4; i < 2; i++)
            CHECK(lasp_attn_fwd_cuda_finish(ctx, &a, part(i, b0, B * H), p, gq, gk, gv, gsl, p == 1 ? NULL : gkv, o2,
                                            seg, p == 2 ? (void *)side : NULL) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CUDA_OK(cudaEventRecord(ev_side, side));
    CUDA_OK(cudaStreamWaitEvent((cudaStream_t)cst, ev_side, 0));
    /* the finish in one launch, in two groups, waiting on the device for a flag that another stream sets a
     * while later (the SP schedule's LASP_SP_SPLIT=3): only with SMs left for the signal, only where the
     * output pass is k_out_tma */
    void *o5 = poisoned(nv, t);
    unsigned *ready = NULL;
    CUDA_OK(cudaMalloc((void **)&ready, sizeof(unsigned)));
    CUDA_OK(cudaMemset(ready, 0, sizeof(unsigned)));
    lasp_status s5 = lasp_attn_fwd_cuda_finish_when(ctx, &a, all, gq, gk, gv, gsl, gkv, o5, seg, ready, 1);
    CHECK(s5 == LASP_ERR_ARG || s5 == LASP_ERR_UNSUPPORTED, "the one-launch finish with no SMs left: status %d",
          (int)s5);
    CHECK(lasp_attn_cuda_sp_leave_sms(ctx, 4) == LASP_OK, "%s", lasp_ctx_error(ctx));
    /* under --quick the flag is set first: a sanitizer that runs one kernel at a time would never signal */
    if (quick) CHECK(lasp_attn_cuda_signal(ctx, ready, 1, cst) == LASP_OK, "%s", lasp_ctx_error(ctx));
    for (int64_t i = 0, b0 = 2; i < 2 && (i == 0 || s5 == LASP_OK); i++)
        s5 = lasp_attn_fwd_cuda_finish_when(ctx, &a, part(i, b0, B * H), gq, gk, gv, gsl, gkv, o5, seg, ready, 1);
    const int one_launch = s5 == LASP_OK;
    CHECK(one_launch || (s5 == LASP_ERR_UNSUPPORTED && !out_pass_tma(t, d, e)), "the one-launch finish: %s",
          lasp_ctx_error(ctx));
    if (one_launch && !quick) {
        usleep(2000); /* the kernel's part-2 CTAs are waiting by now */
        CHECK(lasp_attn_cuda_signal(ctx, ready, 1, side) == LASP_OK, "%s", lasp_ctx_error(ctx));
    }
    CUDA_OK(cudaStreamSynchronize((cudaStream_t)cst));
    CHECK(lasp_attn_cuda_sp_leave_sms(ctx, 0) == LASP_OK, "%s", lasp_ctx_error(ctx));
    for (int64_t i = 0, b0 = 1; i < 2; i++)
        CHECK(lasp_attn_bwd_cuda_local(ctx, &a, part(i, b0, B * H), gq, gk, gv, gsl, gdo, g) == LASP_OK, "%s",
              lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_cuda_dq(ctx, &a, all, gk, gv, gsl, gkv, gdo, dq2, seg) == LASP_OK, "%s", lasp_ctx_error(ctx));
    for (int64_t i = 0, b0 = 3; i < 2; i++)
        CHECK(lasp_attn_bwd_cuda_finish(ctx, &a, part(i, b0, B * H), gq, gk, gv, gsl, gdo, gdkv, dk2, dv2) == LASP_OK,
              "%s", lasp_ctx_error(ctx));
    /* the same finish with dkv_out folded into the states first (what the SP schedule does) */
    void *dk4 = poisoned(nq, t), *dv4 = poisoned(nv, t), *st = NULL;
    CHECK(lasp_attn_cuda_stream(ctx, &st) == LASP_OK, "%s", lasp_ctx_error(ctx));
    for (int64_t i = 0, b0 = 5; i < 2; i++)
        CHECK(lasp_attn_bwd_cuda_fold(ctx, &a, part(i, b0, B * H), gq, gk, gdo, gsl, gdkv, st) == LASP_OK, "%s",
              lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_cuda_finish(ctx, &a, all, gq, gk, gv, gsl, gdo, NULL, dk4, dv4) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    /* a group outside B·H is refused */
    const lasp_heads bad = {B * H - 1, 2};
    CHECK(lasp_attn_fwd_cuda_local(ctx, &a, bad, gq, gk, gv, gsl, m, seg) == LASP_ERR_ARG, "heads %lld..%lld of %lld "
          "accepted", (long long)bad.bh0, (long long)(bad.bh0 + bad.n - 1), (long long)(B * H));
    /* the backward from the forward's saved states (lasp_attn_fwd_saving / lasp_attn_bwd_saved) */
    float *saved = (float *)poisoned(sb / sizeof(float), LASP_F32), *dkvi3 = (float *)poisoned(ns, LASP_F32);
    void *o3 = poisoned(nv, t), *dq3 = poisoned(nq, t), *dk3 = poisoned(nq, t), *dv3 = poisoned(nv, t);
    CHECK(lasp_attn_fwd_saving(ctx, &a, gq, gk, gv, gsl, gkv, o3, NULL, saved) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_saved(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, dq3, dk3, dv3, dkvi3, saved) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    CUDA_OK(cudaDeviceSynchronize());
    cudaEventDestroy(ev_local), cudaEventDestroy(ev_side), cudaStreamDestroy(side);
    expect_same("o", o1, o2, nv, t, t);
    if (one_launch) expect_same("o (one launch, waiting for the state)", o1, o5, nv, t, t);
    cudaFree(o5), cudaFree(ready);
    expect_same("dq", dq1, dq2, nq, t, t);
    expect_same("dk", dk1, dk2, nq, t, t);
    expect_same("dv", dv1, dv2, nv, t, t);
    expect_same("dk (folded dkv_out)", dk1, dk4, nq, t, t);
    expect_same("dv (folded dkv_out)", dv1, dv4, nv, t, t);
    expect_same("o (saving)", o1, o3, nv, t, t);
    expect_same("dq (saved states)", dq1, dq3, nq, t, t);
    expect_same("dk (saved states)", dk1, dk3, nq, t, t);
    expect_same("dv (saved states)", dv1, dv3, nv, t, t);
    expect_same("dkv_in (saved states)", dkvi, dkvi3, ns, LASP_F32, t);
    void *dev3[] = {saved, seg, dkvi3, o3, dq3, dk3, dv3, dk4, dv4};
    for (size_t i = 0; i < sizeof dev3 / sizeof dev3[0]; i++) cudaFree(dev3[i]);
    /* the states the schedule forms from m and g */
    float *hm = from_dev(m, ns, LASP_F32), *hg = from_dev(g, ns, LASP_F32), *hkvo = from_dev(kvo, ns, LASP_F32),
          *hdkvi = from_dev(dkvi, ns, LASP_F32);
    const size_t de = (size_t)(d * e);
    for (size_t i = 0; i < ns; i++) {
        const float gam = expf(-sl[(i / de) % H] * (float)T);
        hm[i] += gam * kv[i], hg[i] += gam * dkv[i];
    }
    double *r_kvo = widen(hkvo, ns), *r_dkvi = widen(hdkvi, ns);
    expect("KV_out = λ^T kv_in + m", hm, r_kvo, ns, 1e-4, LASP_F32);
    expect("dKV_in = λ^T dkv_out + g", hg, r_dkvi, ns, 1e-4, LASP_F32);
    void *dev[] = {o1, o2, dq1, dq2, dk1, dk2, dv1, dv2, kvo, dkvi, m, g};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    inputs_free(&in);
    void *host[] = {hm, hg, hkvo, hdkvi, r_kvo, r_dkvi};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    test_case("%s halves T%lld d%lld e%lld: local + finish equal one call, with the arrived states; so does the "
              "backward from saved states",
              lasp_dtype_name(t), (long long)T, (long long)d, (long long)e);
}

/* The _host variants (host f32 in and out, run on the GPU) and the errors the GPU path gives. */
static void case_host_and_errors(void) {
    const int64_t B = 2, T = 77, H = 2, d = 64, e = 32;
    lasp_attn_desc a = {B, T, H, d, e, 0, LASP_BF16};
    const size_t nq = (size_t)(B * T * H * d), nv = (size_t)(B * T * H * e), ns = (size_t)(B * H * d * e);
    float *q = randn(nq, 0.125, LASP_BF16), *k = randn(nq, 1.0, LASP_BF16), *v = randn(nv, 1.0, LASP_BF16),
          *dO = randn(nv, 1.0, LASP_BF16), *kv = randn(ns, 1.0, LASP_F32), *dkv = randn(ns, 1.0, LASP_F32);
    float sl[2] = {0.2f, 0.7f};
    float *o = (float *)malloc(nv * 4), *kvo = (float *)malloc(ns * 4), *dq = (float *)malloc(nq * 4),
          *dk = (float *)malloc(nq * 4), *dv = (float *)malloc(nv * 4), *dkvi = (float *)malloc(ns * 4);
    CHECK(lasp_attn_fwd_host(ctx, &a, LASP_DEVICE_CUDA, q, k, v, sl, kv, o, kvo) == LASP_OK, "fwd_host: %s",
          lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_host(ctx, &a, LASP_DEVICE_CUDA, q, k, v, sl, kv, dO, dkv, dq, dk, dv, dkvi) == LASP_OK,
          "bwd_host: %s", lasp_ctx_error(ctx));
    double *q8 = widen(q, nq), *k8 = widen(k, nq), *v8 = widen(v, nv), *do8 = widen(dO, nv), *kv8 = widen(kv, ns),
           *dkv8 = widen(dkv, ns), sl8[2] = {sl[0], sl[1]};
    double *r_o = (double *)malloc(nv * 8), *r_kvo = (double *)malloc(ns * 8), *r_dq = (double *)malloc(nq * 8),
           *r_dk = (double *)malloc(nq * 8), *r_dv = (double *)malloc(nv * 8), *r_dkvi = (double *)malloc(ns * 8);
    lasp_attn_desc a8 = a;
    a8.dtype = LASP_F64;
    lasp_attn_ref_fwd(ctx, &a8, q8, k8, v8, sl8, kv8, r_o, r_kvo);
    lasp_attn_ref_bwd(ctx, &a8, q8, k8, v8, sl8, kv8, do8, dkv8, r_dq, r_dk, r_dv, r_dkvi);
    expect("o", o, r_o, nv, 1e-2, LASP_BF16);
    expect("kv_out", kvo, r_kvo, ns, 1e-2, LASP_BF16);
    expect("dq", dq, r_dq, nq, 1e-2, LASP_BF16);
    expect("dk", dk, r_dk, nq, 1e-2, LASP_BF16);
    expect("dv", dv, r_dv, nv, 1e-2, LASP_BF16);
    expect("dkv_in", dkvi, r_dkvi, ns, 1e-2, LASP_BF16);
    test_case("bf16 lasp_attn_fwd_host/bwd_host on the GPU vs fp64");

    /* errors: a bad dtype, a NULL output, a negative slope on the host path */
    void *gq = to_dev(q, nq, LASP_BF16);
    lasp_attn_desc bad = a;
    bad.dtype = LASP_F64;
    lasp_status s = lasp_attn_fwd(ctx, &bad, gq, gq, gq, (const float *)gq, NULL, gq, NULL);
    CHECK(s == LASP_ERR_UNSUPPORTED, "f64 on the GPU gave %s", lasp_status_string(s));
    s = lasp_attn_fwd(ctx, &a, gq, gq, gq, (const float *)gq, NULL, NULL, NULL);
    CHECK(s == LASP_ERR_ARG, "NULL o gave %s", lasp_status_string(s));
    bad = a;
    bad.d = 48;
    s = lasp_attn_fwd(ctx, &bad, gq, gq, gq, (const float *)gq, NULL, gq, NULL);
    CHECK(s == LASP_ERR_UNSUPPORTED, "d = 48 gave %s", lasp_status_string(s));
    float neg[2] = {0.1f, -1.0f};
    s = lasp_attn_fwd_host(ctx, &a, LASP_DEVICE_CUDA, q, k, v, neg, NULL, o, NULL);
    CHECK(s == LASP_ERR_ARG, "negative slope gave %s", lasp_status_string(s));
    cudaFree(gq);
    test_case("GPU path errors: dtype, NULL output, head dim, negative slope");
    void *host[] = {q, k, v, dO, kv, dkv, o, kvo, dq, dk, dv, dkvi, q8, k8, v8, do8, kv8, dkv8,
                    r_o, r_kvo, r_dq, r_dk, r_dv, r_dkvi};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

int main(int argc, char **argv) {
    quick = argc > 1 && !strcmp(argv[1], "--quick"); /* small shapes only (compute-sanitizer) */
    lasp_rng_seed(&rng, test_seed());
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < 1) {
        printf("FAIL no CUDA device: run the GPU tests on a machine with one\n");
        return 1;
    }
    lasp_ctx_params p = lasp_ctx_default_params();
    if (lasp_ctx_create(&p, &ctx) != LASP_OK) return 1;

    const lasp_dtype types[] = {LASP_BF16, LASP_F16, LASP_F32};
    const int64_t dims[][2] = {{16, 16},  {32, 32}, {64, 64}, {128, 128}, {256, 256},
                               {64, 128}, {128, 64}, {16, 256}, {256, 32}};
    const int64_t lens[] = {1, 63, 64, 65, 200};

    if (quick) {
        run_case(LASP_BF16, 1, 130, 3, 64, 64, 1, REF_FP64);
        run_case(LASP_F32, 1, 65, 3, 128, 32, 1, REF_FP64);
        case_handover(LASP_BF16, 200, 71, 32);
        case_halves(LASP_BF16, 300, 128, 128);
        return test_exit();
    }
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
                for (int st = 0; st < 2; st++)
                    run_case(types[ti], 1, lens[li], 3, dims[di][0], dims[di][1], st, REF_FP64);
    /* B·H up to 512 */
    run_case(LASP_BF16, 4, 65, 128, 32, 32, 1, REF_FP64);
    run_case(LASP_F32, 2, 130, 256, 16, 16, 0, REF_FP64);
    /* long sequences against the CPU chunked path */
    for (size_t ti = 0; ti < 3; ti++) {
        run_case(types[ti], 2, 4095, 5, 64, 64, 1, REF_CPU);
        run_case(types[ti], 1, 4095, 5, 128, 128, 1, REF_CPU);
    }
    run_case(LASP_BF16, 1, 4095, 3, 256, 256, 1, REF_CPU);
    run_case(LASP_BF16, 1, 32768, 5, 128, 128, 1, REF_CPU);
    run_case(LASP_F32, 1, 32768, 3, 128, 128, 1, REF_CPU);
    run_case(LASP_BF16, 1, 32768, 5, 64, 64, 0, REF_CPU);
    /* states */
    for (size_t ti = 0; ti < 3; ti++) {
        case_null_outputs(types[ti]);
        case_handover(types[ti], 1000, 333, 64);
        case_handover(types[ti], 4096, 2048, 128);
        case_halves(types[ti], 1000, 64, 64);
        case_halves(types[ti], 4096, 128, 128);
        /* 80 heads: a head group over 64 deals a split finish's segments round in k_out_tma */
        case_halves(types[ti], 1000, 128, 128, 2, 40);
        case_halves(types[ti], 500, 64, 128); /* d ≠ e: the transposed reads of dk */
    }
    case_halves(LASP_BF16, 777, 256, 256);
    case_host_and_errors();
    printf("# worst relative error: bf16 %.3g, f16 %.3g, f32 %.3g\n", worst[LASP_BF16], worst[LASP_F16],
           worst[LASP_F32]);
    lasp_ctx_free(ctx);
    return test_exit();
}
