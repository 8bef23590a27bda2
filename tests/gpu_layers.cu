/* gpu_layers.cu — every layer of the model on the GPU (src/model/layers_cuda.cu) against its CPU version
 * (layers_cpu.c, the spec), forward and backward, on fresh random inputs: relative error (MATH.md §6)
 * ≤ 1e-5 in f32, and ≤ 2e-2 for the bf16 variants (their bf16 side rounded, the rest fp32). Outputs start poisoned with NaN, so an element the GPU forgets fails; accumulated gradients start
 * from the same random values on both sides, and the sums over rows are also written (dg_add, dwc_add 0) over
 * NaN against the CPU's added to zeros. The passes that sum over rows run twice and must give the same bits (no
 * atomics). Needs a GPU. */
#include <string.h>

#include "model/layers.h"
#include "test.h"

static lasp_rng rng;
static const double TOL = 1e-5;

/* a device copy of host x (n floats); x NULL: NaN-poisoned */
static float *up(const float *x, size_t n) { return (float *)test_to_dev(x, n, LASP_F32); }
static float *down(const float *d, size_t n) { return test_from_dev(d, n, LASP_F32); }

static int32_t *up_i(const int32_t *x, size_t n) {
    int32_t *d = NULL;
    if (cudaMalloc(&d, (n ? n : 1) * sizeof *d) != cudaSuccess) return NULL;
    cudaMemcpy(d, x, n * sizeof *d, cudaMemcpyHostToDevice);
    return d;
}

/* the GPU result d (n floats) against the CPU's ref: relative error within TOL */
static void expect_close(const char *what, const float *d, const float *ref, size_t n) {
    cudaError_t e = cudaDeviceSynchronize();
    CHECK(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
    float *h = down(d, n);
    const double r = test_rel(h, ref, n);
    CHECK(r <= TOL, "%s: relative error %.3g > %.0e", what, r, TOL);
    free(h);
}

/* two device results must be the same bits */
static void expect_same_bits(const char *what, const float *a, const float *b, size_t n) {
    float *x = down(a, n), *y = down(b, n);
    CHECK(!memcmp(x, y, n * sizeof *x), "%s: two runs differ", what);
    free(x), free(y);
}

static float *copy(const float *x, size_t n) {
    float *y = (float *)malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    return y;
}

static void case_rms(int64_t N, int64_t C) {
    float *x = test_randn(&rng, N * C, 1.5), *g = test_randn(&rng, C, 1), *dy = test_randn(&rng, N * C, 1);
    float *dx0 = test_randn(&rng, N * C, 1), *dg0 = test_randn(&rng, C, 1);
    float *out = (float *)malloc(N * C * 4), *rstd = (float *)malloc(N * 4), *dx = copy(dx0, N * C), *dg = copy(dg0, C);
    lasp_rms_fwd_cpu(out, rstd, x, g, N, C);
    lasp_rms_bwd_cpu(dx, dg, dy, x, rstd, g, N, C);

    float *d_x = up(x, N * C), *d_g = up(g, C), *d_dy = up(dy, N * C), *d_out = up(NULL, N * C), *d_rstd = up(NULL, N);
    float *d_dx = up(dx0, N * C), *d_dg = up(dg0, C), *d_dg2 = up(dg0, C);
    float *work = up(NULL, lasp_layers_cuda_work_floats(N, C));
    lasp_rms_fwd_cuda(d_out, d_rstd, d_x, d_g, N, C, 0);
    expect_close("out", d_out, out, N * C);
    expect_close("rstd", d_rstd, rstd, N);
    lasp_rms_bwd_cuda(d_dx, d_dg, 1, d_dy, d_x, d_rstd, d_g, N, C, work, 0);
    expect_close("dx (accumulated)", d_dx, dx, N * C);
    expect_close("dg (accumulated)", d_dg, dg, C);
    lasp_rms_bwd_cuda(d_dx, d_dg2, 1, d_dy, d_x, d_rstd, d_g, N, C, work, 0);
    expect_same_bits("dg", d_dg, d_dg2, C);
    /* dg written over NaN (a step's first backward): the CPU's added to zeros */
    float *dgw = (float *)calloc(C, 4), *dxw = copy(dx0, N * C), *d_dgw = up(NULL, C);
    lasp_rms_bwd_cpu(dxw, dgw, dy, x, rstd, g, N, C);
    lasp_rms_bwd_cuda(d_dx, d_dgw, 0, d_dy, d_x, d_rstd, d_g, N, C, work, 0);
    expect_close("dg (written)", d_dgw, dgw, C);
    free(dgw), free(dxw), cudaFree(d_dgw);
    /* the variant that also rounds the accumulated dx for the products: the same fp32 dx, and its bf16 copy */
    void *d_dx16 = test_to_dev(NULL, N * C, LASP_BF16);
    cudaMemcpy(d_dx, dx0, N * C * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_dg2, dg0, C * 4, cudaMemcpyHostToDevice);
    lasp_rms_bwd_bf16_cuda(d_dx, d_dx16, d_dg2, 1, d_dy, d_x, d_rstd, d_g, N, C, work, 0);
    expect_close("dx (accumulated, with its bf16 copy)", d_dx, dx, N * C);
    expect_same_bits("dg (with dx's bf16 copy)", d_dg, d_dg2, C);
    float *h16 = test_from_dev(d_dx16, N * C, LASP_BF16);
    CHECK(test_rel(h16, dx, N * C) <= 2e-2, "dx's bf16 copy: relative %.3g", test_rel(h16, dx, N * C));
    free(h16), cudaFree(d_dx16);
    test_case("RMSNorm forward and backward, N %lld C %lld", (long long)N, (long long)C);
    free(x), free(g), free(dy), free(dx0), free(dg0), free(out), free(rstd), free(dx), free(dg);
    cudaFree(d_x), cudaFree(d_g), cudaFree(d_dy), cudaFree(d_out), cudaFree(d_rstd), cudaFree(d_dx), cudaFree(d_dg);
    cudaFree(d_dg2), cudaFree(work);
}

/* the output norm and gate in one pass, against the CPU model's rms_fwd then gate_fwd (and back) */
static void case_onorm_gate(int64_t N, int64_t C) {
    const int64_t S = 4 * C;
    float *o = test_randn(&rng, N * C, 1.5), *g = test_randn(&rng, C, 1), *p = test_randn(&rng, N * S, 2);
    float *dy = test_randn(&rng, N * C, 1), *dy0 = copy(dy, N * C), *dg = test_randn(&rng, C, 1), *dg0 = copy(dg, C);
    float *dp = test_randn(&rng, N * S, 1), *dp0 = copy(dp, N * S);
    float *y = (float *)malloc(N * C * 4), *rstd = (float *)malloc(N * 4), *dox = (float *)calloc(N * C, 4);
    lasp_rms_fwd_cpu(y, rstd, o, g, N, C);
    lasp_gate_fwd_cpu(y, p + 3 * C, S, N, C);
    lasp_gate_bwd_cpu(dy, dp + 3 * C, S, o, rstd, g, p + 3 * C, S, N, C);
    lasp_rms_bwd_cpu(dox, dg, dy, o, rstd, g, N, C);

    float *d_o = up(o, N * C), *d_g = up(g, C), *d_p = up(p, N * S), *d_dy = up(dy0, N * C), *d_dg = up(dg0, C);
    float *d_dg2 = up(dg0, C), *d_dp = up(dp0, N * S), *d_y = up(NULL, N * C), *d_rstd = up(NULL, N);
    float *d_dox = up(NULL, N * C), *work = up(NULL, lasp_layers_cuda_work_floats(N, C));
    lasp_onorm_gate_fwd_cuda(d_y, d_rstd, d_o, d_g, d_p + 3 * C, S, N, C, 0);
    lasp_onorm_gate_bwd_cuda(d_dox, d_dp + 3 * C, S, d_dg, 1, d_dy, d_o, d_rstd, d_g, d_p + 3 * C, S, N, C, work, 0);
    expect_close("y", d_y, y, N * C);
    expect_close("rstd", d_rstd, rstd, N);
    expect_close("dô (in dy)", d_dy, dy, N * C);
    expect_close("du (u columns written, q | k | v's kept)", d_dp, dp, N * S);
    expect_close("do (written)", d_dox, dox, N * C);
    expect_close("dg (accumulated)", d_dg, dg, C);
    cudaMemcpy(d_dy, dy0, N * C * 4, cudaMemcpyHostToDevice);
    lasp_onorm_gate_bwd_cuda(d_dox, d_dp + 3 * C, S, d_dg2, 1, d_dy, d_o, d_rstd, d_g, d_p + 3 * C, S, N, C, work, 0);
    expect_same_bits("dg", d_dg, d_dg2, C);
    /* dg written over NaN: the CPU's added to zeros */
    float *dyw = copy(dy0, N * C), *dpw = copy(dp0, N * S), *doxw = (float *)calloc(N * C, 4);
    float *dgw = (float *)calloc(C, 4), *d_dgw = up(NULL, C);
    lasp_gate_bwd_cpu(dyw, dpw + 3 * C, S, o, rstd, g, p + 3 * C, S, N, C);
    lasp_rms_bwd_cpu(doxw, dgw, dyw, o, rstd, g, N, C);
    cudaMemcpy(d_dy, dy0, N * C * 4, cudaMemcpyHostToDevice);
    lasp_onorm_gate_bwd_cuda(d_dox, d_dp + 3 * C, S, d_dgw, 0, d_dy, d_o, d_rstd, d_g, d_p + 3 * C, S, N, C, work, 0);
    expect_close("dg (written)", d_dgw, dgw, C);
    free(dyw), free(dpw), free(doxw), free(dgw), cudaFree(d_dgw);
    test_case("output norm and gate in one pass, forward and backward, N %lld C %lld", (long long)N, (long long)C);
    free(o), free(g), free(p), free(dy), free(dy0), free(dg), free(dg0), free(dp), free(dp0), free(y), free(rstd);
    free(dox);
    cudaFree(d_o), cudaFree(d_g), cudaFree(d_p), cudaFree(d_dy), cudaFree(d_dg), cudaFree(d_dg2), cudaFree(d_dp);
    cudaFree(d_y), cudaFree(d_rstd), cudaFree(d_dox), cudaFree(work);
}

static void case_glu(int64_t N, int64_t F) {
    float *h = test_randn(&rng, N * 2 * F, 1), *da = test_randn(&rng, N * F, 1);
    float *a = (float *)malloc(N * F * 4), *dh = (float *)malloc(N * 2 * F * 4);
    lasp_glu_fwd_cpu(a, h, N, F);
    lasp_glu_bwd_cpu(dh, da, h, N, F);
    float *d_h = up(h, N * 2 * F), *d_da = up(da, N * F), *d_a = up(NULL, N * F), *d_dh = up(NULL, N * 2 * F);
    lasp_glu_fwd_cuda(d_a, d_h, N, F, 0);
    lasp_glu_bwd_cuda(d_dh, d_da, d_h, N, F, 0);
    expect_close("a", d_a, a, N * F);
    expect_close("dh", d_dh, dh, N * 2 * F);
    test_case("gated linear unit, forward and backward, N %lld F %lld", (long long)N, (long long)F);
    free(h), free(da), free(a), free(dh);
    cudaFree(d_h), cudaFree(d_da), cudaFree(d_a), cudaFree(d_dh);
}

/* The features as the CPU model makes them (the spec of the fused GPU pass): the convolution of the
 * projections p (rows of stride S; K = 0: none), then SiLU; and their backward, with the next chunk's halo
 * gradient dnext added to the last K − 1 rows as the CPU model does it inline */
static void feat_fwd_cpu(float *q, float *k, float *v, const float *p, int64_t S, const float *halo, const float *wc,
                         int64_t B, int64_t T, int64_t C, int64_t K) {
    const int64_t N = B * T, W = 3 * C;
    if (!K) return lasp_qkv_fwd_cpu(q, k, v, p, S, N, C);
    float *cp = (float *)malloc(N * W * 4);
    lasp_conv_fwd_cpu(cp, p, S, halo, wc, B, T, W, K);
    lasp_qkv_fwd_cpu(q, k, v, cp, W, N, C);
    free(cp);
}

static void feat_bwd_cpu(float *dp, float *dwc, float *dhalo, const float *dnext, const float *dq, const float *dk,
                         const float *dv, const float *p, int64_t S, const float *halo, const float *wc, int64_t B,
                         int64_t T, int64_t C, int64_t K) {
    const int64_t N = B * T, W = 3 * C, K1 = K - 1;
    if (!K) return lasp_qkv_bwd_cpu(dp, S, dq, dk, dv, p, N, C);
    float *cp = (float *)malloc(N * W * 4), *dcp = (float *)malloc(N * W * 4);
    lasp_conv_fwd_cpu(cp, p, S, halo, wc, B, T, W, K);
    lasp_qkv_bwd_cpu(dcp, W, dq, dk, dv, cp, N, C);
    lasp_conv_bwd_w_cpu(dwc, dcp, p, S, halo, B, T, W, K);
    lasp_conv_bwd_x_cpu(dp, S, dhalo, dcp, wc, B, T, W, K);
    for (int64_t b = 0; dnext && b < B; b++)
        for (int64_t i = 0; i < K1; i++)
            for (int64_t c = 0; c < W; c++) dp[(b * T + T - K1 + i) * S + c] += dnext[(b * K1 + i) * W + c];
    free(cp), free(dcp);
}

/* The features read rows of stride 4C (the projections) and, with a halo, the rows before the piece; with
 * `next`, the gradient of the next chunk's halo comes in */
static void case_feat(int64_t B, int64_t T, int64_t C, int64_t K, int with_halo, int next) {
    const int64_t W = 3 * C, S = 4 * C, N = B * T, K1 = K ? K - 1 : 0;
    with_halo = with_halo && K, next = next && K && T >= K1; /* the model refuses shorter chunks */
    float *p = test_randn(&rng, N * S, 1), *wc = K ? test_randn(&rng, K * W, 0.5) : NULL;
    float *dq = test_randn(&rng, N * C, 1), *dk = test_randn(&rng, N * C, 1), *dv = test_randn(&rng, N * C, 1);
    float *halo = with_halo ? test_randn(&rng, B * K1 * W, 1) : NULL, *dnext = next ? test_randn(&rng, B * K1 * W, 1) : NULL;
    float *dw0 = K ? test_randn(&rng, K * W, 1) : NULL, *dw = K ? copy(dw0, K * W) : NULL;
    float *q = (float *)malloc(N * C * 4), *k = (float *)malloc(N * C * 4), *v = (float *)malloc(N * C * 4);
    float *dp = test_randn(&rng, N * S, 1), *dp0 = copy(dp, N * S);
    float *dhalo = with_halo ? (float *)malloc(B * K1 * W * 4) : NULL;
    feat_fwd_cpu(q, k, v, p, S, halo, wc, B, T, C, K);
    feat_bwd_cpu(dp, dw, dhalo, dnext, dq, dk, dv, p, S, halo, wc, B, T, C, K);

    float *d_p = up(p, N * S), *d_wc = K ? up(wc, K * W) : NULL, *d_q = up(NULL, N * C), *d_k = up(NULL, N * C);
    float *d_v = up(NULL, N * C), *d_dq = up(dq, N * C), *d_dk = up(dk, N * C), *d_dv = up(dv, N * C);
    float *d_halo = with_halo ? up(halo, B * K1 * W) : NULL, *d_dhalo = with_halo ? up(NULL, B * K1 * W) : NULL;
    float *d_dnext = next ? up(dnext, B * K1 * W) : NULL, *d_dp = up(dp0, N * S);
    float *d_dw = K ? up(dw0, K * W) : NULL, *d_dw2 = K ? up(dw0, K * W) : NULL;
    float *work = up(NULL, lasp_feat_cuda_work_floats(B, C, K) + 1);
    lasp_feat_fwd_cuda(d_q, d_k, d_v, d_p, S, d_halo, d_wc, B, T, C, K, 0);
    lasp_feat_bwd_cuda(d_dp, S, d_dw, 1, d_dhalo, d_dnext, d_dq, d_dk, d_dv, d_p, S, d_halo, d_wc, B, T, C, K, work, 0);
    expect_close("q", d_q, q, N * C);
    expect_close("k", d_k, k, N * C);
    expect_close("v", d_v, v, N * C);
    expect_close("dp (q | k | v columns written, u's kept)", d_dp, dp, N * S);
    if (K) expect_close("dwc (accumulated)", d_dw, dw, K * W);
    if (with_halo) expect_close("dhalo", d_dhalo, dhalo, B * K1 * W);
    if (K) {
        lasp_feat_bwd_cuda(d_dp, S, d_dw2, 1, d_dhalo, d_dnext, d_dq, d_dk, d_dv, d_p, S, d_halo, d_wc, B, T, C, K,
                           work, 0);
        expect_same_bits("dwc", d_dw, d_dw2, K * W);
        /* dwc written over NaN: the CPU's added to zeros */
        float *dww = (float *)calloc(K * W, 4), *dpw = copy(dp0, N * S), *d_dww = up(NULL, K * W);
        feat_bwd_cpu(dpw, dww, NULL, dnext, dq, dk, dv, p, S, halo, wc, B, T, C, K);
        lasp_feat_bwd_cuda(d_dp, S, d_dww, 0, d_dhalo, d_dnext, d_dq, d_dk, d_dv, d_p, S, d_halo, d_wc, B, T, C, K,
                           work, 0);
        expect_close("dwc (written)", d_dww, dww, K * W);
        free(dww), free(dpw), cudaFree(d_dww);
    }
    test_case("SiLU features through the short convolution, forward and backward, B %lld T %lld C %lld K %lld, %s%s",
              (long long)B, (long long)T, (long long)C, (long long)K,
              with_halo ? "with a halo" : "zeros before the piece", next ? ", the next chunk's halo gradient in" : "");
    free(p), free(wc), free(dq), free(dk), free(dv), free(halo), free(dnext), free(dw0), free(dw), free(q), free(k);
    free(v), free(dp), free(dp0), free(dhalo);
    cudaFree(d_p), cudaFree(d_wc), cudaFree(d_q), cudaFree(d_k), cudaFree(d_v), cudaFree(d_dq), cudaFree(d_dk);
    cudaFree(d_dv), cudaFree(d_halo), cudaFree(d_dhalo), cudaFree(d_dnext), cudaFree(d_dp), cudaFree(d_dw);
    cudaFree(d_dw2), cudaFree(work);
}

static void case_xent(int64_t N, int64_t V, float logit_scale) {
    float *z = test_randn(&rng, N * V, logit_scale);
    int32_t *t = (int32_t *)malloc(N * 4), *hit = (int32_t *)malloc(N * 4), *d_hit_h = (int32_t *)malloc(N * 4);
    for (int64_t n = 0; n < N; n++) t[n] = (int32_t)(lasp_rng_u64(&rng) % (uint64_t)V);
    if (N > 1) z[1 * V + t[1]] = 1e3f;  /* a row the model already gets right */
    double *loss = (double *)malloc(N * 8), *d_loss_h = (double *)malloc(N * 8);
    float *zg = copy(z, N * V);
    const float scale = 0.37f;
    lasp_xent_cpu(zg, t, N, V, scale, loss, hit);

    float *d_z = up(z, N * V);
    int32_t *d_t = up_i(t, N), *d_hit = NULL;
    double *d_loss = NULL;
    cudaMalloc(&d_hit, N * 4), cudaMalloc(&d_loss, N * 8);
    lasp_xent_cuda(d_z, d_t, N, V, scale, d_loss, d_hit, 0);
    expect_close("dlogits", d_z, zg, N * V);
    cudaMemcpy(d_loss_h, d_loss, N * 8, cudaMemcpyDeviceToHost);
    cudaMemcpy(d_hit_h, d_hit, N * 4, cudaMemcpyDeviceToHost);
    double num = 0, den = 0;
    int hits_differ = 0;
    for (int64_t n = 0; n < N; n++)
        num += (d_loss_h[n] - loss[n]) * (d_loss_h[n] - loss[n]), den += loss[n] * loss[n], hits_differ += d_hit_h[n] != hit[n];
    CHECK(sqrt(num / (den > 0 ? den : 1)) <= TOL, "loss: relative error %.3g", sqrt(num / (den > 0 ? den : 1)));
    CHECK(!hits_differ, "%d rows' argmax differs from the CPU's", hits_differ);
    test_case("cross-entropy rows and their gradient, N %lld V %lld, logits × %g", (long long)N, (long long)V,
              logit_scale);
    free(z), free(t), free(hit), free(d_hit_h), free(loss), free(d_loss_h), free(zg);
    cudaFree(d_z), cudaFree(d_t), cudaFree(d_hit), cudaFree(d_loss);
}

static void case_embed(int64_t N, int64_t V, int64_t C) {
    float *wte = test_randn(&rng, V * C, 1), *dx = test_randn(&rng, N * C, 1), *dw0 = test_randn(&rng, V * C, 1);
    int32_t *tok = (int32_t *)malloc(N * 4);
    for (int64_t n = 0; n < N; n++) tok[n] = (int32_t)(lasp_rng_u64(&rng) % (uint64_t)(n % 3 ? V : 4)); /* repeats */
    float *x = (float *)malloc(N * C * 4), *dw = copy(dw0, V * C);
    lasp_embed_fwd_cpu(x, wte, tok, N, C);
    lasp_embed_bwd_cpu(dw, dx, tok, N, C);

    int32_t *order = (int32_t *)malloc(N * 4), *starts = (int32_t *)malloc((N + 1) * 4);
    int32_t *uniq = (int32_t *)malloc(N * 4), *count = (int32_t *)malloc((V + 1) * 4);
    const int64_t nu = lasp_embed_index(tok, N, V, order, starts, uniq, count);
    float *d_wte = up(wte, V * C), *d_dx = up(dx, N * C), *d_x = up(NULL, N * C);
    float *d_dw = up(dw0, V * C), *d_dw2 = up(dw0, V * C);
    int32_t *d_tok = up_i(tok, N), *d_order = up_i(order, N), *d_starts = up_i(starts, nu + 1), *d_uniq = up_i(uniq, nu);
    lasp_embed_fwd_cuda(d_x, d_wte, d_tok, N, C, 0);
    lasp_embed_bwd_cuda(d_dw, d_dx, d_order, d_starts, d_uniq, nu, C, 0);
    lasp_embed_bwd_cuda(d_dw2, d_dx, d_order, d_starts, d_uniq, nu, C, 0);
    expect_close("x", d_x, x, N * C);
    expect_close("dwte (accumulated)", d_dw, dw, V * C);
    expect_same_bits("dwte", d_dw, d_dw2, V * C);
    test_case("embedding, forward and backward, N %lld V %lld C %lld (%lld distinct tokens)", (long long)N,
              (long long)V, (long long)C, (long long)nu);
    free(wte), free(dx), free(dw0), free(tok), free(x), free(dw), free(order), free(starts), free(uniq), free(count);
    cudaFree(d_wte), cudaFree(d_dx), cudaFree(d_x), cudaFree(d_dw), cudaFree(d_dw2), cudaFree(d_tok);
    cudaFree(d_order), cudaFree(d_starts), cudaFree(d_uniq);
}

/* the bf16 variants: what they write in bf16 within 2e-2 of the CPU's fp32, what they write in fp32 as the
 * f32 passes' (1e-5) */
static void expect_bf16(const char *what, const void *d, const float *ref, size_t n) {
    cudaError_t e = cudaDeviceSynchronize();
    CHECK(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
    float *h = test_from_dev(d, n, LASP_BF16);
    const double r = test_rel(h, ref, n);
    CHECK(r <= 2e-2, "%s (bf16): relative error %.3g > 2e-2", what, r);
    free(h);
}

static void case_bf16(int64_t N, int64_t C, int64_t F, int64_t V) {
    const int64_t S = 4 * C;
    float *x = test_randn(&rng, N * C, 1.5), *g = test_randn(&rng, C, 1), *p = test_randn(&rng, N * S, 2);
    float *dq = test_randn(&rng, N * C, 1), *dk = test_randn(&rng, N * C, 1), *dv = test_randn(&rng, N * C, 1);
    float *h = test_randn(&rng, N * 2 * F, 1), *da = test_randn(&rng, N * F, 1), *z = test_randn(&rng, N * V, 3);
    int32_t *t = (int32_t *)malloc(N * 4), *hit = (int32_t *)malloc(N * 4);
    for (int64_t n = 0; n < N; n++) t[n] = (int32_t)(lasp_rng_u64(&rng) % (uint64_t)V);
    /* the CPU's */
    float *xn = (float *)malloc(N * C * 4), *rstd = (float *)malloc(N * 4), *q = (float *)malloc(N * C * 4);
    float *k = (float *)malloc(N * C * 4), *v = (float *)malloc(N * C * 4), *y = copy(x, N * C);
    float *dp = test_randn(&rng, N * S, 1), *dp0 = copy(dp, N * S), *a = (float *)malloc(N * F * 4);
    float *dh = (float *)malloc(N * 2 * F * 4), *dz = copy(z, N * V);
    double *loss = (double *)malloc(N * 8), *loss_g = (double *)malloc(N * 8);
    const int64_t K = 4, W = 3 * C;
    float *wc = test_randn(&rng, K * W, 0.5), *halo = test_randn(&rng, (K - 1) * W, 1), *dw = test_randn(&rng, K * W, 1);
    float *dw0 = copy(dw, K * W), *o = test_randn(&rng, N * C, 1), *rstdo = (float *)malloc(N * 4);
    float *dy = test_randn(&rng, N * C, 1), *dy0 = copy(dy, N * C), *dox = (float *)calloc(N * C, 4);
    float *dgo = test_randn(&rng, C, 1), *dgo0 = copy(dgo, C);
    lasp_rms_fwd_cpu(xn, rstd, x, g, N, C);
    feat_fwd_cpu(q, k, v, p, S, halo, wc, 1, N, C, K);
    feat_bwd_cpu(dp, dw, NULL, NULL, dq, dk, dv, p, S, halo, wc, 1, N, C, K);
    lasp_rms_fwd_cpu(y, rstdo, o, g, N, C); /* the output norm and gate */
    lasp_gate_fwd_cpu(y, p + 3 * C, S, N, C);
    lasp_gate_bwd_cpu(dy, dp + 3 * C, S, o, rstdo, g, p + 3 * C, S, N, C);
    lasp_rms_bwd_cpu(dox, dgo, dy, o, rstdo, g, N, C);
    lasp_glu_fwd_cpu(a, h, N, F);
    lasp_glu_bwd_cpu(dh, da, h, N, F);
    lasp_xent_cpu(dz, t, N, V, 0.37f, loss, hit);
    /* the GPU's */
    float *d_x = up(x, N * C), *d_g = up(g, C), *d_p = up(p, N * S), *d_rstd = up(NULL, N);
    void *d_dp = test_to_dev(dp0, N * S, LASP_BF16);
    float *d_wc = up(wc, K * W), *d_halo = up(halo, (K - 1) * W), *d_dw = up(dw0, K * W), *d_o = up(o, N * C);
    float *d_rstdo = up(NULL, N), *d_dy = up(dy0, N * C), *d_dgo = up(dgo0, C), *d_z = up(z, N * V);
    const int64_t nw = lasp_feat_cuda_work_floats(1, C, K), nw2 = lasp_layers_cuda_work_floats(N, C);
    float *work = up(NULL, nw > nw2 ? nw : nw2);
    void *d_o16 = test_to_dev(o, N * C, LASP_BF16), *d_dox = test_to_dev(NULL, N * C, LASP_BF16);
    void *d_h = test_to_dev(h, N * 2 * F, LASP_BF16), *d_da = test_to_dev(da, N * F, LASP_BF16);
    void *d_xn = test_to_dev(NULL, N * C, LASP_BF16), *d_q = test_to_dev(NULL, N * C, LASP_BF16);
    void *d_k = test_to_dev(NULL, N * C, LASP_BF16), *d_v = test_to_dev(NULL, N * C, LASP_BF16);
    void *d_dq = test_to_dev(dq, N * C, LASP_BF16), *d_dk = test_to_dev(dk, N * C, LASP_BF16);
    void *d_dv = test_to_dev(dv, N * C, LASP_BF16), *d_y = test_to_dev(NULL, N * C, LASP_BF16);
    void *d_a = test_to_dev(NULL, N * F, LASP_BF16), *d_dh = test_to_dev(NULL, N * 2 * F, LASP_BF16);
    void *d_dz = test_to_dev(NULL, N * V, LASP_BF16);
    int32_t *d_t = up_i(t, N), *d_hit = NULL;
    double *d_loss = NULL;
    cudaMalloc(&d_hit, N * 4), cudaMalloc(&d_loss, N * 8);
    lasp_rms_fwd_bf16_cuda(d_xn, d_rstd, d_x, d_g, N, C, 0);
    lasp_feat_fwd_bf16_cuda(d_q, d_k, d_v, d_p, S, d_halo, d_wc, 1, N, C, K, 0);
    lasp_feat_bwd_bf16_cuda(d_dp, S, d_dw, 1, NULL, NULL, d_dq, d_dk, d_dv, d_p, S, d_halo, d_wc, 1, N, C, K, work, 0);
    lasp_onorm_gate_fwd_bf16_cuda(d_y, d_rstdo, d_o16, d_g, d_p + 3 * C, S, N, C, 0);
    lasp_onorm_gate_bwd_bf16_cuda(d_dox, (uint16_t *)d_dp + 3 * C, S, d_dgo, 1, d_dy, d_o16, d_rstdo, d_g, d_p + 3 * C,
                                  S, N, C, work, 0);
    lasp_glu_fwd_bf16_cuda(d_a, d_h, N, F, 0);
    lasp_glu_bwd_bf16_cuda(d_dh, d_da, d_h, N, F, 0);
    lasp_xent_bf16_cuda(d_z, d_dz, d_t, N, V, 0.37f, d_loss, d_hit, 0);
    expect_bf16("rms out", d_xn, xn, N * C);
    expect_close("rms rstd", d_rstd, rstd, N);
    expect_bf16("q", d_q, q, N * C), expect_bf16("k", d_k, k, N * C), expect_bf16("v", d_v, v, N * C);
    expect_bf16("dp (q | k | v from the features, u from the gate)", d_dp, dp, N * S);
    expect_bf16("dO through the output gate and norm", d_dox, dox, N * C);
    /* what stays fp32, with the bf16 inputs' rounding in it: the taps' and the gain's gradients, dô, rstd */
    float *hdw = down(d_dw, K * W), *hdy = down(d_dy, N * C), *hdg = down(d_dgo, C), *hro = down(d_rstdo, N);
    CHECK(test_rel(hdw, dw, K * W) <= 2e-2, "dwc from bf16 gradients: relative %.3g", test_rel(hdw, dw, K * W));
    CHECK(test_rel(hdy, dy, N * C) <= 2e-2, "dô: relative %.3g", test_rel(hdy, dy, N * C));
    CHECK(test_rel(hdg, dgo, C) <= 2e-2, "the output norm's dg: relative %.3g", test_rel(hdg, dgo, C));
    CHECK(test_rel(hro, rstdo, N) <= 2e-2, "the output norm's rstd: relative %.3g", test_rel(hro, rstdo, N));
    expect_bf16("normed and gated y", d_y, y, N * C);
    expect_bf16("glu a", d_a, a, N * F);
    expect_bf16("glu dh", d_dh, dh, N * 2 * F);
    expect_bf16("dlogits", d_dz, dz, N * V);
    expect_close("logits kept", d_z, z, N * V);
    cudaMemcpy(loss_g, d_loss, N * 8, cudaMemcpyDeviceToHost);
    double num = 0, den = 0;
    for (int64_t n = 0; n < N; n++) num += (loss_g[n] - loss[n]) * (loss_g[n] - loss[n]), den += loss[n] * loss[n];
    CHECK(sqrt(num / den) <= TOL, "cross-entropy loss: relative %.3g", sqrt(num / den));
    test_case("bf16 variants within 2e-2 (norm, features through the convolution, output norm and gate, GLU, "
              "dlogits, and their gradients), N %lld C %lld F %lld V %lld", (long long)N, (long long)C, (long long)F, (long long)V);
    free(x), free(g), free(p), free(dq), free(dk), free(dv), free(h), free(da), free(z), free(t), free(hit);
    free(xn), free(rstd), free(q), free(k), free(v), free(y), free(dp), free(dp0), free(a), free(dh), free(dz);
    free(loss), free(loss_g), free(hdw), free(hdy), free(hdg), free(hro), free(wc), free(halo), free(dw), free(dw0);
    free(o), free(rstdo), free(dy), free(dy0), free(dox), free(dgo), free(dgo0);
    cudaFree(d_wc), cudaFree(d_halo), cudaFree(d_dw), cudaFree(d_o16), cudaFree(d_rstdo), cudaFree(d_dy);
    cudaFree(d_dgo), cudaFree(d_dox), cudaFree(work);
    cudaFree(d_x), cudaFree(d_g), cudaFree(d_p), cudaFree(d_rstd), cudaFree(d_dp), cudaFree(d_h), cudaFree(d_da);
    cudaFree(d_z), cudaFree(d_xn), cudaFree(d_q), cudaFree(d_k), cudaFree(d_v), cudaFree(d_dq), cudaFree(d_dk);
    cudaFree(d_dv), cudaFree(d_y), cudaFree(d_a), cudaFree(d_dh), cudaFree(d_dz), cudaFree(d_t), cudaFree(d_hit);
    cudaFree(d_loss);
}

/* A piece's last K1 rows += the next SP rank's halo gradient (lasp_add_last_rows_cuda): in f32 exactly the CPU's
 * sums and every other element untouched; in bf16 the rounded rows plus it, rounded */
static void case_last_rows(int64_t B, int64_t T, int64_t K1, int64_t W, int64_t sdp) {
    const size_t n = (size_t)(B * T * sdp), ns = (size_t)(B * K1 * W);
    float *dp = test_randn(&rng, n, 1), *src = test_randn(&rng, ns, 1), *ref = copy(dp, n);
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < K1; r++)
            for (int64_t c = 0; c < W; c++) ref[(b * T + T - K1 + r) * sdp + c] += src[(b * K1 + r) * W + c];
    float *d_dp = up(dp, n), *d_src = up(src, ns);
    lasp_add_last_rows_cuda(d_dp, sdp, d_src, B, T, K1, W, 0);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "the kernel");
    float *h = down(d_dp, n);
    CHECK(!memcmp(h, ref, n * sizeof *h), "f32: not the CPU's sums bit for bit (or another element changed)");
    free(h);
    void *d16 = test_to_dev(dp, n, LASP_BF16);
    float *r16 = test_from_dev(d16, n, LASP_BF16); /* dp as bf16 holds it */
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < K1; r++)
            for (int64_t c = 0; c < W; c++) r16[(b * T + T - K1 + r) * sdp + c] += src[(b * K1 + r) * W + c];
    lasp_add_last_rows_bf16_cuda(d16, sdp, d_src, B, T, K1, W, 0);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "the kernel");
    float *h16 = test_from_dev(d16, n, LASP_BF16);
    const double r = test_rel(h16, r16, n);
    CHECK(r <= 1e-2, "bf16: relative error %.3g", r);
    free(h16), free(r16), free(dp), free(src), free(ref);
    cudaFree(d_dp), cudaFree(d_src), cudaFree(d16);
    test_case("a piece's last %lld rows plus the next rank's halo gradient, B %lld T %lld W %lld (rows of %lld), f32 "
              "and bf16", (long long)K1, (long long)B, (long long)T, (long long)W, (long long)sdp);
}

int main(void) {
    lasp_rng_seed(&rng, test_seed());
    if (!test_have_gpu()) return 1;
    const int64_t rc[][2] = {{1, 16}, {37, 32}, {300, 96}, {1000, 1024}, {257, 2048}};
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++) {
        case_rms(rc[i][0], rc[i][1]);
        case_onorm_gate(rc[i][0], rc[i][1]);
        case_feat(1, rc[i][0], rc[i][1], 4, 1, 1);
        case_glu(rc[i][0], 2 * rc[i][1] + 3);
    }
    case_feat(1, 1, 16, 4, 0, 0);
    case_feat(2, 1, 16, 4, 1, 0);   /* a piece shorter than the taps: every row reaches into the halo */
    case_feat(3, 37, 32, 4, 0, 0);
    case_feat(3, 37, 32, 4, 1, 1);
    case_feat(2, 300, 64, 2, 1, 1);
    case_feat(1, 2000, 128, 4, 0, 0);
    case_feat(3, 37, 32, 0, 0, 0);  /* no convolution */
    case_feat(2, 100, 32, 5, 1, 1); /* taps kept 8 at a time, the last 3 zero */
    case_feat(2, 37, 33, 4, 1, 1);  /* an odd width: a column a thread (else two) */
    case_feat(2, 90, 16, 16, 1, 1);
    case_feat(2, 20000, 16, 4, 1, 1); /* tiles longer than the shortest, so that the partial sums stay few */
    case_xent(1, 256, 1);
    case_xent(33, 256, 3);
    case_xent(40, 64000, 2);
    case_xent(7, 50304, 10);
    case_xent(5, 1001, 2); /* a row not a multiple of four: one logit a thread */
    case_embed(1, 256, 16);
    case_embed(500, 256, 32);
    case_embed(3000, 64000, 128);
    case_embed(2000, 7, 300); /* long runs of each token, and a partial block of columns */
    case_bf16(37, 64, 96, 300);
    case_bf16(1000, 128, 256, 50304);
    case_last_rows(2, 37, 3, 96, 128);
    case_last_rows(1, 3, 3, 48, 64); /* a piece no longer than the halo: every row */
    return test_exit();
}
