/* gpu_attn.cu — the CUDA op against the fp64 reference (MATH.md §1–2, metric of §6), run on a GPU by
 * `make test-gpu`: forward, backward and boundary states, bf16/f16 (≤ 1e-2) and f32 (≤ 1e-4), every head
 * dim, lengths around the 64-token chunk, slopes 0 / 1e-5 / 8 in one problem (one per head), with and
 * without the incoming states; long sequences against the CPU chunked fp32 path (itself tested against
 * fp64 in test_attn); the op in the halves the SP schedule uses equals the op in one call. Outputs are
 * poisoned with NaN before each run, so every element must be written.
 * The reference sees the inputs rounded to the I/O dtype: the error measured is the kernels' own.
 *   gpu_attn [--kernels auto|sm80] [--quick]
 * runs every case on the kernels the context is given (auto: Hopper's where they apply), and checks with the
 * library, which reports the kernels each pass ran, that the choice was honoured. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime.h>

#include "attn/attn_cuda.h"
#include "attn/attn_cuda_sp.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"
#include "test.h"

static lasp_rng rng;
static lasp_ctx *ctx;
static double worst[4];  /* per dtype: largest error seen */
static int ran_tma, ran_mma; /* forwards whose output pass was k_out_tma, k_out (as the library reports) */

/* which output pass the last forward ran, counted */
static void note_kernels(void) {
    lasp_attn_cuda_kernels k = {NULL, NULL};
    CHECK(lasp_attn_cuda_last_kernels(ctx, &k) == LASP_OK && k.out_pass, "kernels: %s", lasp_ctx_error(ctx));
    if (k.out_pass && !strcmp(k.out_pass, "k_out_tma")) ran_tma++;
    else if (k.out_pass && !strcmp(k.out_pass, "k_out")) ran_mma++;
}

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
    float *x = test_randn(&rng, n, scale);
    test_round(x, n, t);
    return x;
}

static void *dev_or_die(void *d) {
    if (!d) {
        printf("FAIL no GPU memory for a test tensor\n");
        exit(1);
    }
    return d;
}
static void *to_dev(const float *x, size_t n, lasp_dtype t) { return dev_or_die(test_to_dev(x, n, t)); }
static void *poisoned(size_t n, lasp_dtype t) { return dev_or_die(test_to_dev(NULL, n, t)); }

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
    float *x1 = test_from_dev(one, n, st), *x2 = test_from_dev(two, n, st);
    double *r = test_widen(x1, n);
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
    note_kernels();
    s = lasp_attn_bwd(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, gdq, gdk, gdv, gdkvi);
    CHECK(s == LASP_OK, "bwd: %s", lasp_ctx_error(ctx));
    CUDA_OK(cudaDeviceSynchronize());
    float *o = test_from_dev(go, nv, t), *kvo = test_from_dev(gkvo, ns, LASP_F32), *dq = test_from_dev(gdq, nq, t),
          *dk = test_from_dev(gdk, nq, t), *dv = test_from_dev(gdv, nv, t), *dkvi = test_from_dev(gdkvi, ns, LASP_F32);

    double *r_o = (double *)malloc(nv * 8), *r_kvo = (double *)malloc(ns * 8), *r_dq = (double *)malloc(nq * 8),
           *r_dk = (double *)malloc(nq * 8), *r_dv = (double *)malloc(nv * 8), *r_dkvi = (double *)malloc(ns * 8);
    if (ref_kind == REF_FP64) {
        double *q8 = test_widen(q, nq), *k8 = test_widen(k, nq), *v8 = test_widen(v, nv), *do8 = test_widen(dO, nv), *kv8 = test_widen(kv, ns),
               *dkv8 = test_widen(dkv, ns), *sl8 = test_widen(sl, (size_t)H);
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
    double *q8 = test_widen(q, nq), *k8 = test_widen(k, nq), *v8 = test_widen(v, nv), *do8 = test_widen(dO, nv), sl8[2] = {sl[0], sl[1]};
    double *r_o = (double *)malloc(nv * 8), *r_dq = (double *)malloc(nq * 8), *r_dk = (double *)malloc(nq * 8),
           *r_dv = (double *)malloc(nv * 8);
    lasp_attn_desc a8 = a;
    a8.dtype = LASP_F64;
    lasp_attn_ref_fwd(ctx, &a8, q8, k8, v8, sl8, NULL, r_o, NULL);
    lasp_attn_ref_bwd(ctx, &a8, q8, k8, v8, sl8, NULL, do8, NULL, r_dq, r_dk, r_dv, NULL);
    float *o = test_from_dev(go, nv, t), *dq = test_from_dev(gdq, nq, t), *dk = test_from_dev(gdk, nq, t), *dv = test_from_dev(gdv, nv, t);
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

/* The op on a caller's stream (lasp_ctx_set_cuda_stream): the same bits as on the context's own, ordered after
 * the caller's work on that stream without a wait (its inputs are copied there just before), and NULL gives
 * the context its own stream back. */
static void case_caller_stream(lasp_dtype t) {
    const int64_t B = 1, T = 300, H = 2, d = 64, e = 64;
    lasp_attn_desc a = {B, T, H, d, e, 0, t};
    float sl[2] = {0.05f, 0.5f};
    inputs in = inputs_make(t, B, T, H, d, e, sl);
    const size_t es = lasp_dtype_size(t);
    void *own_stream = NULL, *cur = NULL;
    CHECK(lasp_ctx_cuda_stream(ctx, &own_stream) == LASP_OK, "%s", lasp_ctx_error(ctx));
    void *o1 = poisoned(in.nv, t), *o2 = poisoned(in.nv, t), *q2 = poisoned(in.nq, t);
    CHECK(lasp_attn_fwd(ctx, &a, in.gq, in.gk, in.gv, in.gsl, NULL, o1, NULL) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CUDA_OK(cudaDeviceSynchronize());
    cudaStream_t s;
    CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(lasp_ctx_set_cuda_stream(ctx, s) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_ctx_cuda_stream(ctx, &cur) == LASP_OK && cur == (void *)s, "the context's stream is not the caller's");
    CUDA_OK(cudaMemcpyAsync(q2, in.gq, in.nq * es, cudaMemcpyDeviceToDevice, s));
    CHECK(lasp_attn_fwd(ctx, &a, q2, in.gk, in.gv, in.gsl, NULL, o2, NULL) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CUDA_OK(cudaStreamSynchronize(s));
    float *h1 = test_from_dev(o1, in.nv, t), *h2 = test_from_dev(o2, in.nv, t);
    CHECK(!memcmp(h1, h2, in.nv * sizeof *h1), "the op on the caller's stream differs from the op on the context's");
    CHECK(lasp_ctx_set_cuda_stream(ctx, NULL) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_ctx_cuda_stream(ctx, &cur) == LASP_OK && cur == own_stream, "NULL did not give the own stream back");
    CUDA_OK(cudaStreamDestroy(s));
    free(h1), free(h2), cudaFree(o1), cudaFree(o2), cudaFree(q2);
    inputs_free(&in);
    test_case("%s on a caller's stream: the same bits, ordered after the caller's copy; NULL: the own stream back",
              lasp_dtype_name(t));
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

/* The op in halves (attn_cuda_sp.h), in the SP schedule's order, equals the op in one call: forward
 * local → finish with kv_in (in one launch, and in two parts on two streams), backward local (g) → dq from
 * the forward's segment states → finish with dkv_out, added by the output kernels; the states the schedule
 * forms, KV_out = λ^T kv_in + m and dKV_in = λ^T dkv_out + g, equal the op's. One GPU exercises here what the
 * multi-GPU schedule relies on. The backward from the forward's saved states (dq without its own state
 * pass) must equal it too. */
/* --quick: small shapes only, for compute-sanitizer (which may run kernels one at a time) */
static int quick;

static void case_halves(lasp_dtype t, int64_t T, int64_t d, int64_t e, int64_t B = 2, int64_t H = 3) {
    lasp_attn_desc a = {B, T, H, d, e, 0, t};
    float sl[64];
    for (int64_t h = 0; h < H && h < 64; h++) sl[h] = h % 3 == 0 ? 0.0f : h % 3 == 1 ? 0.01f : 0.7f;
    inputs in = inputs_make(t, B, T, H, d, e, sl);
    const size_t nq = in.nq, nv = in.nv, ns = in.ns;
    const float *kv = in.kv, *dkv = in.dkv;
    void *gq = in.gq, *gk = in.gk, *gv = in.gv, *gdo = in.gdo;
    float *gsl = in.gsl, *gkv = in.gkv, *gdkv = in.gdkv;
    void *o1 = poisoned(nv, t), *o2 = poisoned(nv, t), *o4 = poisoned(nv, t), *dq1 = poisoned(nq, t),
         *dq2 = poisoned(nq, t), *dk1 = poisoned(nq, t), *dk2 = poisoned(nq, t), *dv1 = poisoned(nv, t),
         *dv2 = poisoned(nv, t);
    float *kvo = (float *)poisoned(ns, LASP_F32), *dkvi = (float *)poisoned(ns, LASP_F32),
          *m = (float *)poisoned(ns, LASP_F32), *g = (float *)poisoned(ns, LASP_F32);
    CHECK(lasp_attn_fwd(ctx, &a, gq, gk, gv, gsl, gkv, o1, kvo) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, dq1, dk1, dv1, dkvi) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    size_t sb = 0;
    CHECK(lasp_attn_saved_bytes(ctx, &a, &sb) == LASP_OK && sb > 0, "saved bytes: %s", lasp_ctx_error(ctx));
    float *seg = (float *)poisoned(sb / sizeof(float), LASP_F32);
    /* the halves leave SMs to a communicator, as the SP schedule has them do */
    CHECK(lasp_attn_cuda_sp_leave_sms(ctx, 4) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_fwd_cuda_local(ctx, &a, gq, gk, gv, gsl, m, seg) == LASP_OK, "%s", lasp_ctx_error(ctx));
    /* the finish in one launch */
    CHECK(lasp_attn_fwd_cuda_finish(ctx, &a, 0, gq, gk, gv, gsl, gkv, o4, seg, NULL) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    /* and in two parts: the segments kv_in cannot reach on the context's stream, and beside them the rest on a
     * stream of its own (ordered after the local half by an event) */
    void *cst = NULL;
    cudaStream_t side;
    cudaEvent_t ev_local, ev_side;
    CHECK(lasp_ctx_cuda_stream(ctx, &cst) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CUDA_OK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreateWithFlags(&ev_local, cudaEventDisableTiming));
    CUDA_OK(cudaEventCreateWithFlags(&ev_side, cudaEventDisableTiming));
    CUDA_OK(cudaEventRecord(ev_local, (cudaStream_t)cst));
    CUDA_OK(cudaStreamWaitEvent(side, ev_local, 0));
    for (int p = 1; p <= 2; p++)
        CHECK(lasp_attn_fwd_cuda_finish(ctx, &a, p, gq, gk, gv, gsl, p == 1 ? NULL : gkv, o2, seg,
                                        p == 2 ? (void *)side : NULL) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CUDA_OK(cudaEventRecord(ev_side, side));
    CUDA_OK(cudaStreamWaitEvent((cudaStream_t)cst, ev_side, 0));
    CHECK(lasp_attn_fwd_cuda_finish(ctx, &a, 3, gq, gk, gv, gsl, gkv, o2, seg, NULL) == LASP_ERR_ARG,
          "finishing part 3 accepted");
    CHECK(lasp_attn_bwd_cuda_local(ctx, &a, gq, gk, gv, gsl, gdo, g) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_cuda_dq(ctx, &a, gk, gv, gsl, gkv, gdo, dq2, seg) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_cuda_finish(ctx, &a, gq, gk, gv, gsl, gdo, gdkv, dk2, dv2) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    CHECK(lasp_attn_cuda_sp_leave_sms(ctx, 0) == LASP_OK, "%s", lasp_ctx_error(ctx));
    /* the backward from the forward's saved states (lasp_attn_fwd_saving / lasp_attn_bwd_saved) */
    float *saved = (float *)poisoned(sb / sizeof(float), LASP_F32), *dkvi3 = (float *)poisoned(ns, LASP_F32);
    void *o3 = poisoned(nv, t), *dq3 = poisoned(nq, t), *dk3 = poisoned(nq, t), *dv3 = poisoned(nv, t);
    CHECK(lasp_attn_fwd_saving(ctx, &a, gq, gk, gv, gsl, gkv, o3, NULL, saved) == LASP_OK, "%s", lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_saved(ctx, &a, gq, gk, gv, gsl, gkv, gdo, gdkv, dq3, dk3, dv3, dkvi3, saved) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    CUDA_OK(cudaDeviceSynchronize());
    cudaEventDestroy(ev_local), cudaEventDestroy(ev_side), cudaStreamDestroy(side);
    expect_same("o (finish in one launch)", o1, o4, nv, t, t);
    expect_same("o (finish in two parts)", o1, o2, nv, t, t);
    expect_same("dq", dq1, dq2, nq, t, t);
    expect_same("dk", dk1, dk2, nq, t, t);
    expect_same("dv", dv1, dv2, nv, t, t);
    expect_same("o (saving)", o1, o3, nv, t, t);
    expect_same("dq (saved states)", dq1, dq3, nq, t, t);
    expect_same("dk (saved states)", dk1, dk3, nq, t, t);
    expect_same("dv (saved states)", dv1, dv3, nv, t, t);
    expect_same("dkv_in (saved states)", dkvi, dkvi3, ns, LASP_F32, t);
    void *dev3[] = {saved, seg, dkvi3, o3, dq3, dk3, dv3, o4};
    for (size_t i = 0; i < sizeof dev3 / sizeof dev3[0]; i++) cudaFree(dev3[i]);
    /* the states the schedule forms from m and g */
    float *hm = test_from_dev(m, ns, LASP_F32), *hg = test_from_dev(g, ns, LASP_F32), *hkvo = test_from_dev(kvo, ns, LASP_F32),
          *hdkvi = test_from_dev(dkvi, ns, LASP_F32);
    const size_t de = (size_t)(d * e);
    for (size_t i = 0; i < ns; i++) {
        const float gam = expf(-sl[(i / de) % H] * (float)T);
        hm[i] += gam * kv[i], hg[i] += gam * dkv[i];
    }
    double *r_kvo = test_widen(hkvo, ns), *r_dkvi = test_widen(hdkvi, ns);
    expect("KV_out = λ^T kv_in + m", hm, r_kvo, ns, 1e-4, LASP_F32);
    expect("dKV_in = λ^T dkv_out + g", hg, r_dkvi, ns, 1e-4, LASP_F32);
    void *dev[] = {o1, o2, dq1, dq2, dk1, dk2, dv1, dv2, kvo, dkvi, m, g};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    inputs_free(&in);
    void *host[] = {hm, hg, hkvo, hdkvi, r_kvo, r_dkvi};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    test_case("%s halves T%lld d%lld e%lld: local + finish (one launch, two parts) equal one call, with the "
              "arrived states; so does the backward from saved states",
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
    double *q8 = test_widen(q, nq), *k8 = test_widen(k, nq), *v8 = test_widen(v, nv), *do8 = test_widen(dO, nv), *kv8 = test_widen(kv, ns),
           *dkv8 = test_widen(dkv, ns), sl8[2] = {sl[0], sl[1]};
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

/* The kernels the library reports having run honour the context's choice: sm80 never runs Hopper's output
 * pass; auto runs it on an sm_90 device (the bf16 forwards at d 64 and 128 above) and nowhere else. */
static void case_kernel_choice(const lasp_ctx_params *p) {
    int dev = 0, major = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    printf("# output passes of the forwards: k_out_tma %d, k_out %d (compute capability %d.x)\n", ran_tma, ran_mma,
           major);
    CHECK(ran_mma > 0, "no forward ran k_out");
    if (p->kernels == LASP_KERNELS_SM80 || major != 9) CHECK(ran_tma == 0, "%d forwards ran k_out_tma", ran_tma);
    else CHECK(ran_tma > 0, "no forward ran k_out_tma on an sm_90 device with kernels auto");
    test_case("the kernels run are the context's choice (%s)", p->kernels == LASP_KERNELS_SM80 ? "sm80" : "auto");
}

int main(int argc, char **argv) {
    lasp_ctx_params p = lasp_ctx_default_params();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1; /* small shapes only (compute-sanitizer) */
        else if (!strcmp(argv[i], "--kernels") && i + 1 < argc && !strcmp(argv[i + 1], "sm80"))
            p.kernels = LASP_KERNELS_SM80, i++;
        else if (!strcmp(argv[i], "--kernels") && i + 1 < argc && !strcmp(argv[i + 1], "auto"))
            p.kernels = LASP_KERNELS_AUTO, i++;
        else {
            printf("FAIL usage: gpu_attn [--kernels auto|sm80] [--quick] (got '%s')\n", argv[i]);
            return 1;
        }
    }
    printf("# kernels: %s\n", p.kernels == LASP_KERNELS_SM80 ? "sm80 (mma.sync everywhere)" : "auto");
    lasp_rng_seed(&rng, test_seed());
    if (!test_have_gpu()) return 1;
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
        case_kernel_choice(&p);
        case_caller_stream(LASP_BF16);
        return test_exit();
    }
    case_caller_stream(LASP_BF16);
    case_caller_stream(LASP_F32);
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
        /* 80 heads: over 64, k_out_tma deals a split finish's segments round */
        case_halves(types[ti], 1000, 128, 128, 2, 40);
        case_halves(types[ti], 500, 64, 128); /* d ≠ e: the transposed reads of dk */
    }
    case_halves(LASP_BF16, 777, 256, 256);
    case_host_and_errors();
    case_kernel_choice(&p);
    printf("# worst relative error: bf16 %.3g, f16 %.3g, f32 %.3g\n", worst[LASP_BF16], worst[LASP_F16],
           worst[LASP_F32]);
    lasp_ctx_free(ctx);
    return test_exit();
}
