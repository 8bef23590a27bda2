/* attn_cpu.c — the chunked fp32 op on the CPU (MATH.md §2), parallel over (b, h) with OpenMP.
 *
 * Per (b, h) the sequence is cut into blocks of C tokens. Each block gathers its rows of Q, K, V
 * (token-major input, stride H·D) into small contiguous tiles, computes the intra term with the exact
 * causal decay mask, adds the inter term from the carried state, and folds its own state in.
 * All products are written as row axpys (C[i,:] += a·B[k,:]) so that the compiler vectorises the
 * innermost loop without reassociating sums. Decays are read from a table pw[n] = exp(−s·n) for
 * integer n ∈ [0, C]: exponents are combined before exp, and λ^(−j) is never formed (MATH.md §6).
 *
 * The backward makes two passes per (b, h) so that no per-block state is stored:
 *   forward sweep   dQ = [(dO Vᵀ) ⊙ D] K + diag(a) dO KV_inᵀ   (KV carried as in the forward)
 *   reverse sweep   dK, dV with dKV carried from the end:  dKV ← γ dKV + Σ_i λ^i q_iᵀ do_i        */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"

#ifdef _OPENMP
#include <omp.h>
#else
#define omp_get_max_threads() 1
#endif

typedef struct tiles {
    int C;
    int64_t d, e;
    float *Q, *K, *V, *dO;  /* [C][d], [C][d], [C][e], [C][e] gathered rows */
    float *Kt, *Vt;         /* [d][C], [e][C] transposes */
    float *S, *P;           /* [C][C] decayed scores (Q Kᵀ ⊙ D), (dO Vᵀ ⊙ D) */
    float *X, *Y;           /* [C][max(d,e)] per-block outputs */
    float *KV, *M, *KVt;    /* [d][e] carried state, block state, [e][d] transpose */
    float *pw;              /* [C+1] exp(−s·n) */
    float *w;               /* [C] per-row weights */
} tiles;

static void tiles_free(tiles *t) {
    free(t->Q);
    memset(t, 0, sizeof *t);
}

/* One allocation for all tiles of one thread. */
static int tiles_alloc(tiles *t, int C, int64_t d, int64_t e) {
    int64_t m = d > e ? d : e;
    size_t n = (size_t)C * (2 * d + 2 * e) + (size_t)(d + e) * C + 2 * (size_t)C * C + 2 * (size_t)C * m +
               3 * (size_t)d * e + 2 * (size_t)C + 1;
    float *p = malloc(n * sizeof(float));
    if (!p) return 0;
    t->C = C, t->d = d, t->e = e;
    t->Q = p, p += (size_t)C * d;
    t->K = p, p += (size_t)C * d;
    t->V = p, p += (size_t)C * e;
    t->dO = p, p += (size_t)C * e;
    t->Kt = p, p += (size_t)d * C;
    t->Vt = p, p += (size_t)e * C;
    t->S = p, p += (size_t)C * C;
    t->P = p, p += (size_t)C * C;
    t->X = p, p += (size_t)C * m;
    t->Y = p, p += (size_t)C * m;
    t->KV = p, p += (size_t)d * e;
    t->M = p, p += (size_t)d * e;
    t->KVt = p, p += (size_t)d * e;
    t->pw = p, p += (size_t)C + 1;
    t->w = p;
    return 1;
}

static void decay_table(float *pw, int C, float s) {
    for (int n = 0; n <= C; n++) pw[n] = (float)exp(-(double)s * n);
}

/* rows [t0, t0+c) of head (b, h) of a [B,T,H,D] tensor ↔ a [c][D] tile */
static void gather(float *dst, const float *src, int64_t b, int64_t h, int64_t t0, int c, int64_t T, int64_t H,
                   int64_t D) {
    for (int i = 0; i < c; i++) memcpy(dst + i * D, src + ((b * T + t0 + i) * H + h) * D, (size_t)D * sizeof(float));
}

static void scatter(float *dst, const float *src, int64_t b, int64_t h, int64_t t0, int c, int64_t T, int64_t H,
                    int64_t D) {
    for (int i = 0; i < c; i++) memcpy(dst + ((b * T + t0 + i) * H + h) * D, src + i * D, (size_t)D * sizeof(float));
}

static void transpose(float *dst, const float *src, int rows, int64_t cols, int ld_dst) {
    for (int i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * ld_dst + i] = src[i * cols + j];
}

/* S[i][j] = pw[i−j] · (A_i · B_j) for j ≤ i, 0 above the diagonal; Bt is B transposed, [D][C]. */
static void decayed_scores(float *S, const float *A, const float *Bt, int c, int C, int64_t D, const float *pw) {
    for (int i = 0; i < c; i++) {
        float *Si = S + (size_t)i * C;
        for (int j = 0; j <= i; j++) Si[j] = 0;
        for (int64_t r = 0; r < D; r++) {
            const float a = A[i * D + r], *Br = Bt + r * C;
            for (int j = 0; j <= i; j++) Si[j] += a * Br[j];
        }
        for (int j = 0; j <= i; j++) Si[j] *= pw[i - j];
        for (int j = i + 1; j < c; j++) Si[j] = 0;
    }
}

/* Y[i,:] (+)= Σ_j S[i][j] X[j,:]  over the lower triangle (transposed = 0), or
 * Y[j,:] (+)= Σ_{i≥j} S[i][j] X[i,:] (transposed = 1). Y is [c][D]. */
static void tri_apply(float *Y, const float *S, const float *X, int c, int C, int64_t D, int transposed) {
    memset(Y, 0, (size_t)c * D * sizeof(float));
    for (int i = 0; i < c; i++)
        for (int j = 0; j <= i; j++) {
            const float s = S[(size_t)i * C + j];
            float *y = transposed ? Y + j * D : Y + i * D;
            const float *x = transposed ? X + i * D : X + j * D;
            for (int64_t r = 0; r < D; r++) y[r] += s * x[r];
        }
}

/* Y[i,:] += w_i · A_i M   for A [c][m], M [m][n] */
static void rows_times(float *Y, const float *A, const float *M, int c, int64_t m, int64_t n, const float *w) {
    for (int i = 0; i < c; i++) {
        float *y = Y + i * n;
        for (int64_t r = 0; r < m; r++) {
            const float a = w[i] * A[i * m + r], *Mr = M + r * n;
            for (int64_t col = 0; col < n; col++) y[col] += a * Mr[col];
        }
    }
}

/* M = Σ_i w_i A_iᵀ X_i   (A [c][m], X [c][n], M [m][n]) — a block's own state */
static void outer_sum(float *M, const float *A, const float *X, int c, int64_t m, int64_t n, const float *w) {
    memset(M, 0, (size_t)m * n * sizeof(float));
    for (int i = 0; i < c; i++)
        for (int64_t r = 0; r < m; r++) {
            const float a = w[i] * A[i * m + r], *x = X + i * n;
            float *Mr = M + r * n;
            for (int64_t col = 0; col < n; col++) Mr[col] += a * x[col];
        }
}

/* dst = this head's state from src [B,H,d,e], or zero when there is none */
static void load_state(float *dst, const float *src, int64_t bh, size_t de) {
    if (src) memcpy(dst, src + bh * de, de * sizeof(float));
    else memset(dst, 0, de * sizeof(float));
}

/* KV = γ KV + M */
static void state_step(float *KV, const float *M, float g, size_t n) {
    for (size_t i = 0; i < n; i++) KV[i] = g * KV[i] + M[i];
}

/* weights of the block's key rows: w[j] = pw[c − j] */
static void key_weights(float *w, const float *pw, int c) {
    for (int j = 0; j < c; j++) w[j] = pw[c - j];
}

static int n_threads(const lasp_ctx *ctx) {
#ifdef _OPENMP
    return ctx->params.n_threads > 0 ? ctx->params.n_threads : 0;
#else
    (void)ctx;
    return 1;
#endif
}

#define FOR_EACH_HEAD_PARALLEL(ctx, a, body)                                                        \
    do {                                                                                            \
        int alloc_failed_ = 0;                                                                      \
        int nt_ = n_threads(ctx);                                                                   \
        _Pragma("omp parallel num_threads(nt_ ? nt_ : omp_get_max_threads())")                      \
        {                                                                                           \
            tiles tl_ = {0};                                                                        \
            int ok_ = tiles_alloc(&tl_, lasp_attn_block(a), (a)->d, (a)->e);                        \
            if (!ok_) {                                                                             \
                _Pragma("omp atomic write") alloc_failed_ = 1;                                      \
            }                                                                                       \
            _Pragma("omp for schedule(dynamic)")                                                    \
            for (int64_t bh_ = 0; bh_ < (a)->B * (a)->H; bh_++) {                                   \
                if (!ok_) continue;                                                                 \
                const int64_t b = bh_ / (a)->H, h = bh_ % (a)->H;                                   \
                tiles *tl = &tl_;                                                                   \
                body;                                                                               \
            }                                                                                       \
            tiles_free(&tl_);                                                                       \
        }                                                                                           \
        if (alloc_failed_)                                                                          \
            return lasp_fail(&(ctx)->err, LASP_ERR_NOMEM, "no memory for the attention tiles (block %d)", \
                             lasp_attn_block(a));                                                   \
    } while (0)

static void fwd_head(tiles *tl, const lasp_attn_desc *a, int64_t b, int64_t h, const float *q, const float *k,
                     const float *v, float s, const float *kv_in, float *o, float *kv_out) {
    const int64_t T = a->T, H = a->H, d = a->d, e = a->e;
    const int C = tl->C;
    const size_t de = (size_t)d * e;
    float *pw = tl->pw, *w = tl->w;
    decay_table(pw, C, s);
    load_state(tl->KV, kv_in, b * H + h, de);
    for (int64_t t0 = 0; t0 < T; t0 += C) {
        const int c = (int)(T - t0 < C ? T - t0 : C);
        gather(tl->Q, q, b, h, t0, c, T, H, d);
        gather(tl->K, k, b, h, t0, c, T, H, d);
        gather(tl->V, v, b, h, t0, c, T, H, e);
        transpose(tl->Kt, tl->K, c, d, C);
        decayed_scores(tl->S, tl->Q, tl->Kt, c, C, d, pw);
        tri_apply(tl->X, tl->S, tl->V, c, C, e, 0);              /* O_intra */
        if (kv_in || t0 > 0) rows_times(tl->X, tl->Q, tl->KV, c, d, e, pw);  /* + diag(a) Q KV */
        scatter(o, tl->X, b, h, t0, c, T, H, e);
        key_weights(w, pw, c);
        outer_sum(tl->M, tl->K, tl->V, c, d, e, w);              /* m = (diag(b) K)ᵀ V */
        state_step(tl->KV, tl->M, pw[c], de);
    }
    if (kv_out) memcpy(kv_out + (b * H + h) * de, tl->KV, de * sizeof(float));
}

lasp_status lasp_attn_fwd_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k,
                              const float *v, const float *slopes, const float *kv_in, float *o,
                              float *kv_out) {
    FOR_EACH_HEAD_PARALLEL(ctx, a, fwd_head(tl, a, b, h, q, k, v, slopes[h], kv_in, o, kv_out));
    return LASP_OK;
}

static void bwd_head(tiles *tl, const lasp_attn_desc *a, int64_t b, int64_t h, const float *q, const float *k,
                     const float *v, float s, const float *kv_in, const float *do_, const float *dkv_out, float *dq,
                     float *dk, float *dv, float *dkv_in) {
    const int64_t T = a->T, H = a->H, d = a->d, e = a->e;
    const int C = tl->C;
    const size_t de = (size_t)d * e;
    float *pw = tl->pw, *w = tl->w;
    decay_table(pw, C, s);

    /* forward sweep: dQ, with the state carried as in the forward pass */
    load_state(tl->KV, kv_in, b * H + h, de);
    for (int64_t t0 = 0; t0 < T; t0 += C) {
        const int c = (int)(T - t0 < C ? T - t0 : C);
        gather(tl->K, k, b, h, t0, c, T, H, d);
        gather(tl->V, v, b, h, t0, c, T, H, e);
        gather(tl->dO, do_, b, h, t0, c, T, H, e);
        transpose(tl->Vt, tl->V, c, e, C);
        decayed_scores(tl->P, tl->dO, tl->Vt, c, C, e, pw);
        tri_apply(tl->X, tl->P, tl->K, c, C, d, 0);              /* [(dO Vᵀ) ⊙ D] K */
        if (kv_in || t0 > 0) {
            transpose(tl->KVt, tl->KV, (int)d, e, (int)d);       /* KVᵀ [e][d] */
            rows_times(tl->X, tl->dO, tl->KVt, c, e, d, pw);     /* + diag(a) dO KVᵀ */
        }
        scatter(dq, tl->X, b, h, t0, c, T, H, d);
        if (t0 + c < T) {
            key_weights(w, pw, c);
            outer_sum(tl->M, tl->K, tl->V, c, d, e, w);
            state_step(tl->KV, tl->M, pw[c], de);
        }
    }

    /* reverse sweep: dK, dV, with dKV carried from the end of the piece */
    load_state(tl->KV, dkv_out, b * H + h, de);
    int have_dkv = dkv_out != NULL;
    const int64_t last = ((T - 1) / C) * C;
    for (int64_t t0 = last; t0 >= 0; t0 -= C) {
        const int c = (int)(T - t0 < C ? T - t0 : C);
        gather(tl->Q, q, b, h, t0, c, T, H, d);
        gather(tl->K, k, b, h, t0, c, T, H, d);
        gather(tl->V, v, b, h, t0, c, T, H, e);
        gather(tl->dO, do_, b, h, t0, c, T, H, e);
        transpose(tl->Kt, tl->K, c, d, C);
        transpose(tl->Vt, tl->V, c, e, C);
        decayed_scores(tl->S, tl->Q, tl->Kt, c, C, d, pw);
        decayed_scores(tl->P, tl->dO, tl->Vt, c, C, e, pw);
        key_weights(w, pw, c);
        tri_apply(tl->X, tl->P, tl->Q, c, C, d, 1);              /* dK = [(dO Vᵀ) ⊙ D]ᵀ Q */
        tri_apply(tl->Y, tl->S, tl->dO, c, C, e, 1);             /* dV = [(Q Kᵀ) ⊙ D]ᵀ dO */
        if (have_dkv) {
            transpose(tl->KVt, tl->KV, (int)d, e, (int)d);
            rows_times(tl->X, tl->V, tl->KVt, c, e, d, w);       /* + diag(b) V dKVᵀ */
            rows_times(tl->Y, tl->K, tl->KV, c, d, e, w);        /* + diag(b) K dKV */
        }
        scatter(dk, tl->X, b, h, t0, c, T, H, d);
        scatter(dv, tl->Y, b, h, t0, c, T, H, e);
        if (t0 > 0 || dkv_in) {
            outer_sum(tl->M, tl->Q, tl->dO, c, d, e, pw);         /* g = (diag(a) Q)ᵀ dO */
            state_step(tl->KV, tl->M, pw[c], de);
            have_dkv = 1;
        }
    }
    if (dkv_in) memcpy(dkv_in + (b * H + h) * de, tl->KV, de * sizeof(float));
}

lasp_status lasp_attn_bwd_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k,
                              const float *v, const float *slopes, const float *kv_in, const float *do_,
                              const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in) {
    FOR_EACH_HEAD_PARALLEL(ctx, a, bwd_head(tl, a, b, h, q, k, v, slopes[h], kv_in, do_, dkv_out, dq, dk, dv, dkv_in));
    return LASP_OK;
}

/* ---- the inter terms and the state hand-over, for the sequence-parallel schedule ---------- */

void lasp_attn_fwd_inter_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *slopes,
                             const float *kv_in, float *o) {
    const int64_t T = a->T, H = a->H, d = a->d, e = a->e;
    int nt = n_threads(ctx);
#pragma omp parallel for schedule(static) num_threads(nt ? nt : omp_get_max_threads())
    for (int64_t bh = 0; bh < a->B * H; bh++) {
        const int64_t b = bh / H, h = bh % H;
        const float *S = kv_in + bh * d * e;
        for (int64_t t = 0; t < T; t++) {
            const float w = (float)exp(-(double)slopes[h] * (double)t);
            if (w == 0.0f) break;  /* λ^t only shrinks with t */
            const float *qt = q + ((b * T + t) * H + h) * d;
            float *ot = o + ((b * T + t) * H + h) * e;
            for (int64_t r = 0; r < d; r++) {
                const float x = w * qt[r];
                for (int64_t c = 0; c < e; c++) ot[c] += x * S[r * e + c];
            }
        }
    }
}

void lasp_attn_bwd_inter_cpu(lasp_ctx *ctx, const lasp_attn_desc *a, const float *k, const float *v,
                             const float *slopes, const float *dkv_out, float *dk, float *dv) {
    const int64_t T = a->T, H = a->H, d = a->d, e = a->e;
    int nt = n_threads(ctx);
#pragma omp parallel for schedule(static) num_threads(nt ? nt : omp_get_max_threads())
    for (int64_t bh = 0; bh < a->B * H; bh++) {
        const int64_t b = bh / H, h = bh % H;
        const float *G = dkv_out + bh * d * e;
        for (int64_t t = T - 1; t >= 0; t--) {
            const float w = (float)exp(-(double)slopes[h] * (double)(T - t));
            if (w == 0.0f) break;  /* λ^(T−t) only shrinks as t moves back */
            const float *kt = k + ((b * T + t) * H + h) * d, *vt = v + ((b * T + t) * H + h) * e;
            float *dkt = dk + ((b * T + t) * H + h) * d, *dvt = dv + ((b * T + t) * H + h) * e;
            for (int64_t r = 0; r < d; r++) {
                float acc = 0;
                for (int64_t c = 0; c < e; c++) acc += G[r * e + c] * vt[c];
                dkt[r] += w * acc;
                const float x = w * kt[r];
                for (int64_t c = 0; c < e; c++) dvt[c] += x * G[r * e + c];
            }
        }
    }
}

void lasp_state_combine_cpu(int64_t B, int64_t H, int64_t d, int64_t e, const float *slopes, int64_t n,
                            const float *in, const float *local, float *out) {
    const size_t de = (size_t)d * e;
    for (int64_t bh = 0; bh < B * H; bh++) {
        const float g = (float)exp(-(double)slopes[bh % H] * (double)n);
        for (size_t i = 0; i < de; i++) out[bh * de + i] = (in ? g * in[bh * de + i] : 0.0f) + local[bh * de + i];
    }
}
