/* model.c — the TransNormerLLM-style LM on the CPU: layout, init, forward, backward (docs/MODEL.md).
 * Plain loops are the spec; the matrix products go to BLAS when the build has it (and m->no_blas
 * is 0). Letters as in model.h: N = B·T tokens of this rank's piece, C, H, D = C/H, F, V, L. */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "model/layers.h"
#include "core/rng.h"

#ifdef LASP_HAVE_BLAS
#include <cblas.h>
#endif

/* ---- config, presets, layout ------------------------------------------------------------------ */

lasp_status lasp_model_preset(const char *name, int32_t vocab, lasp_model_config *out, lasp_err *err) {
    static const struct {
        const char *name;
        int32_t C, L, H, F;
    } presets[] = {  /* all with a short convolution of 4 taps (docs/MODEL.md: recall needs it) */
        {"tiny", 32, 2, 2, 64},        /* seconds on a laptop core: tests, finite differences */
        {"small", 128, 4, 4, 256},     /* the demo: learns the recall task in minutes on 2 cores */
        {"400m", 1024, 24, 8, 2816},   /* ~0.4 B with a GPT-2 vocab */
        {"1b", 2048, 16, 16, 5632},    /* ~1.1 B with a GPT-2 vocab */
    };
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(name, presets[i].name)) {
            *out = (lasp_model_config){vocab, presets[i].C, presets[i].L, presets[i].H, presets[i].F, 4};
            return lasp_model_config_check(out, err);
        }
    return lasp_fail(err, LASP_ERR_ARG, "unknown model preset '%s' (hint: tiny, small, 400m or 1b)", name);
}

lasp_status lasp_model_config_check(const lasp_model_config *c, lasp_err *err) {
    if (c->vocab < 2 || c->vocab > (1 << 24))
        return lasp_fail(err, LASP_ERR_ARG, "vocab %d is out of range 2..16777216", c->vocab);
    if (c->n_layers < 1 || c->n_layers > 1024 || c->n_heads < 1 || c->d_model < 1 || c->ffn_dim < 1 ||
        c->d_model > 65536 || c->ffn_dim > 262144)
        return lasp_fail(err, LASP_ERR_ARG, "model config out of range: d_model %d, layers %d, heads %d, ffn %d",
                         c->d_model, c->n_layers, c->n_heads, c->ffn_dim);
    if (c->conv != 0 && (c->conv < 2 || c->conv > 16))
        return lasp_fail(err, LASP_ERR_ARG, "short convolution of %d taps: 0 (none) or 2..16 (hint: 4)", c->conv);
    if (c->d_model % c->n_heads || !lasp_head_dim_supported(c->d_model / c->n_heads))
        return lasp_fail(err, LASP_ERR_UNSUPPORTED,
                         "d_model %d / heads %d does not give a supported head dim (hint: 16, 32, 64, 128 or 256)",
                         c->d_model, c->n_heads);
    return LASP_OK;
}

double lasp_model_flops_per_token(const lasp_model_config *c) {
    const double C = c->d_model, F = c->ffn_dim, V = c->vocab, L = c->n_layers, H = c->n_heads, D = C / H;
    const double matrix = L * (4 * C * C + C * C + 3 * C * F) + C * V;
    return 6 * matrix + L * 14 * H * D * (D + 64);
}

lasp_status lasp_layout_make(const lasp_model_config *c, lasp_layout *out, lasp_err *err) {
    LASP_TRY(lasp_model_config_check(c, err));
    const size_t C = (size_t)c->d_model, F = (size_t)c->ffn_dim, V = (size_t)c->vocab, L = (size_t)c->n_layers;
    lasp_layout l = {0};
    lasp_block_off *b = &l.blk;
    size_t o = 0;
    b->ln1 = o, o += C;
    b->wqkvu = o, o += C * 4 * C;
    b->conv = o, o += (size_t)c->conv * 3 * C;
    b->onorm = o, o += C;
    b->wo = o, o += C * C;
    b->ln2 = o, o += C;
    b->w12 = o, o += C * 2 * F;
    b->w3 = o, o += F * C;
    b->size = o;
    l.head_lnf = 0, l.head_w = C;
    l.n_units = (int)L + 2;
    l.unit_off = malloc(((size_t)l.n_units + 1) * sizeof *l.unit_off);
    if (!l.unit_off) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the parameter layout");
    l.unit_off[0] = 0;
    l.unit_off[1] = V * C;
    for (size_t i = 0; i < L; i++) l.unit_off[2 + i] = l.unit_off[1 + i] + b->size;
    l.unit_off[L + 2] = l.unit_off[L + 1] + C + C * V;
    l.n_params = l.unit_off[L + 2];
    for (int u = 0; u < l.n_units; u++)
        if (l.unit_off[u + 1] - l.unit_off[u] > l.max_unit) l.max_unit = l.unit_off[u + 1] - l.unit_off[u];
    *out = l;
    return LASP_OK;
}

void lasp_layout_free(lasp_layout *l) {
    free(l->unit_off);
    l->unit_off = NULL;
}

int lasp_layout_decays(const lasp_layout *l, size_t i) {
    const int L = l->n_units - 2;
    if (i < l->unit_off[1]) return 1;                                    /* embedding */
    if (i >= l->unit_off[L + 1]) return i - l->unit_off[L + 1] >= l->head_w; /* head yes, final gain no */
    const size_t r = (i - l->unit_off[1]) % l->blk.size;
    const lasp_block_off *b = &l->blk;
    /* convolution taps are a per-channel filter like the gains, not a matrix: not decayed */
    return !((r >= b->ln1 && r < b->wqkvu) || (r >= b->conv && r < b->wo) || (r >= b->ln2 && r < b->w12));
}

/* The standard deviation of the parameters from flat index i to *end (one tensor, or the part of one that is
 * left); 0 for the gains, which start at 1. */
static double init_sd(const lasp_model_config *c, const lasp_layout *l, size_t i, size_t *end) {
    const int L = c->n_layers;
    const double sd = 0.02, sd_out = 0.02 / sqrt(2.0 * L);  /* residual branches add up over depth */
    /* convolution taps N(0, 1/K): the sum of K taps keeps q, k, v at the scale of the projections.
     * Starting from the identity (tap 0 = 1, the rest ~0) was tried: its loss curves were chaotic
     * (20-step curves of 1 and 2 ranks drifted 1e-3 apart from 1e-10 at step 1) and learnt slower */
    const double sd_conv = 1.0 / sqrt((double)(c->conv ? c->conv : 1));
    const size_t head = l->unit_off[L + 1];
    if (i < l->unit_off[1] || i >= head + l->head_w) {  /* embedding, output head */
        *end = i < l->unit_off[1] ? l->unit_off[1] : l->n_params;
        return sd;
    }
    if (i >= head) {  /* final gain */
        *end = head + l->head_w;
        return 0;
    }
    const lasp_block_off *b = &l->blk;
    const size_t at = l->unit_off[1] + (i - l->unit_off[1]) / b->size * b->size, r = i - at;
    /* the tensors of a block in layout order (without a convolution, conv ends where wqkvu does: skipped) */
    const size_t stop[] = {b->wqkvu, b->conv, b->onorm, b->wo, b->ln2, b->w12, b->w3, b->size};
    const double sds[] = {0, sd, sd_conv, 0, sd_out, 0, sd, sd_out};  /* ln1 wqkvu conv onorm wo ln2 w12 w3 */
    int k = 0;
    while (r >= stop[k]) k++;
    *end = at + stop[k];
    return sds[k];
}

/* Blocks of this many parameters each draw from a stream of their own, in parallel: the same values
 * whatever the number of threads. */
#define INIT_BLOCK 65536

void lasp_model_init_params(const lasp_model_config *c, const lasp_layout *l, uint64_t seed, float *p) {
    const size_t nb = (l->n_params + INIT_BLOCK - 1) / INIT_BLOCK;
#pragma omp parallel for schedule(static)
    for (size_t blk = 0; blk < nb; blk++) {
        lasp_rng r;
        lasp_rng_seed_stream(&r, seed ^ 0x5eed1a5bULL, blk);
        const size_t first = blk * INIT_BLOCK, last = first + INIT_BLOCK < l->n_params ? first + INIT_BLOCK : l->n_params;
        for (size_t i = first, end; i < last; i = end) {
            const double sd = init_sd(c, l, i, &end);
            if (end > last) end = last;
            if (sd > 0) lasp_rng_fill_normal(&r, p + i, end - i, sd);
            else
                for (size_t j = i; j < end; j++) p[j] = 1.0f;
        }
    }
}

void lasp_model_slopes(const lasp_model_config *c, int layer, float *s) {
    const int H = c->n_heads, L = c->n_layers;
    const double scale = L > 1 ? 1.0 - (double)layer / (L - 1) + 1e-5 : 1.0;
    for (int h = 0; h < H; h++) s[h] = (float)(pow(2.0, -8.0 * (h + 1) / H) * scale);
}

/* ---- create / reserve / free ------------------------------------------------------------------- */

lasp_status lasp_model_create(const lasp_model_config *c, lasp_model *m, lasp_err *err) {
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    LASP_TRY(lasp_layout_make(c, &m->lay, err));
    m->slopes = malloc((size_t)c->n_layers * c->n_heads * sizeof(float));
    m->acts = calloc((size_t)c->n_layers, sizeof *m->acts);
    if (!m->slopes || !m->acts) {
        lasp_model_free(m);
        return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the model");
    }
    for (int l = 0; l < c->n_layers; l++) lasp_model_slopes(c, l, m->slopes + (size_t)l * c->n_heads);
    return LASP_OK;
}

static void acts_free(lasp_model *m) {
    for (int l = 0; m->acts && l < m->cfg.n_layers; l++) {
        lasp_layer_acts *a = &m->acts[l];
        free(a->x), free(a->rstd1), free(a->xn1), free(a->pre), free(a->q), free(a->k), free(a->v), free(a->o);
        free(a->rstdo), free(a->y), free(a->xm), free(a->rstd2), free(a->xn2), free(a->h), free(a->a);
        free(a->cpre), free(a->halo);
        lasp_sp_cache_free(a->cache);
        memset(a, 0, sizeof *a);
    }
    free(m->xL), free(m->rstdf), free(m->xf), free(m->logits), free(m->dres), free(m->dbuf), free(m->dbig);
    free(m->dq), free(m->dk), free(m->dv), free(m->dob), free(m->dconv), free(m->halo_tx), free(m->halo_rx);
    free(m->row_loss), free(m->row_hit);
    m->row_loss = NULL, m->row_hit = NULL;
    m->xL = m->rstdf = m->xf = m->logits = m->dres = m->dbuf = m->dbig = m->dq = m->dk = m->dv = m->dob = NULL;
    m->dconv = m->halo_tx = m->halo_rx = NULL;
    m->B = m->T = 0;
}

/* One layer's carried state and halo, in floats (B sequences) */
static size_t carry_kv_floats(const lasp_model_config *c, int64_t B) {
    const size_t H = (size_t)c->n_heads, D = (size_t)c->d_model / H;
    return (size_t)B * H * D * D;
}

static size_t carry_halo_floats(const lasp_model_config *c, int64_t B) {
    return c->conv ? (size_t)B * (size_t)(c->conv - 1) * 3 * (size_t)c->d_model : 0;
}

size_t lasp_model_carry_floats(const lasp_model_config *c, int64_t B) {
    return (size_t)c->n_layers * (carry_kv_floats(c, B) + carry_halo_floats(c, B));
}

lasp_model_carry lasp_model_carry_in(const lasp_model_config *c, int64_t B, float *block) {
    return (lasp_model_carry){block, block + (size_t)c->n_layers * carry_kv_floats(c, B)};
}

double lasp_model_activation_bytes(const lasp_model_config *c, int64_t B, int64_t T) {
    const double N = (double)B * (double)T, C = c->d_model, F = c->ffn_dim, V = c->vocab, K = c->conv;
    const double big = 4 * C > 3 * F ? 4 * C : 3 * F, halo = K ? (double)B * (K - 1) * 3 * C : 0;
    /* the floats lasp_model_reserve allocates, buffer by buffer */
    const double layer = N * (C + 1 + C + 4 * C + 4 * C + 1 + C + C + 1 + C + 2 * F + F) + (K ? N * 3 * C + halo : 0);
    const double rest = (K ? N * 3 * C + 2 * halo : 0) + N * (C + 1 + C + V) + N * (2 * C + big) + N * 4 * C +
                        N * 3 /* a row's loss (double) and hit (int) */;
    return 4.0 * ((double)c->n_layers * layer + rest);
}

lasp_status lasp_model_reserve(lasp_model *m, int64_t B, int64_t T, lasp_err *err) {
    if (B == m->B && T == m->T) return LASP_OK;
    acts_free(m);
    if (B < 1 || T < 1) return lasp_fail(err, LASP_ERR_ARG, "batch %lld and tokens %lld must be ≥ 1", (long long)B,
                                         (long long)T);
    const size_t N = (size_t)(B * T), C = (size_t)m->cfg.d_model, F = (size_t)m->cfg.ffn_dim;
    const size_t V = (size_t)m->cfg.vocab, big = 4 * C > 3 * F ? 4 * C : 3 * F, K = (size_t)m->cfg.conv;
    const size_t halo = K ? (size_t)B * (K - 1) * 3 * C : 0;
    int bad = 0;
#define ALLOC(p, n) bad |= !((p) = malloc((n) * sizeof(float)))
    for (int l = 0; l < m->cfg.n_layers; l++) {
        lasp_layer_acts *a = &m->acts[l];
        ALLOC(a->x, N * C), ALLOC(a->rstd1, N), ALLOC(a->xn1, N * C), ALLOC(a->pre, N * 4 * C);
        ALLOC(a->q, N * C), ALLOC(a->k, N * C), ALLOC(a->v, N * C), ALLOC(a->o, N * C), ALLOC(a->rstdo, N);
        ALLOC(a->y, N * C), ALLOC(a->xm, N * C), ALLOC(a->rstd2, N), ALLOC(a->xn2, N * C);
        ALLOC(a->h, N * 2 * F), ALLOC(a->a, N * F);
        if (K) ALLOC(a->cpre, N * 3 * C), ALLOC(a->halo, halo);
    }
    if (K) ALLOC(m->dconv, N * 3 * C), ALLOC(m->halo_tx, halo), ALLOC(m->halo_rx, halo);
    ALLOC(m->xL, N * C), ALLOC(m->rstdf, N), ALLOC(m->xf, N * C), ALLOC(m->logits, N * V);
    ALLOC(m->dres, N * C), ALLOC(m->dbuf, N * C), ALLOC(m->dbig, N * big);
    ALLOC(m->dq, N * C), ALLOC(m->dk, N * C), ALLOC(m->dv, N * C), ALLOC(m->dob, N * C);
#undef ALLOC
    bad |= !(m->row_loss = malloc(N * sizeof *m->row_loss)) || !(m->row_hit = malloc(N * sizeof *m->row_hit));
    if (bad) {
        acts_free(m);
        return lasp_fail(err, LASP_ERR_NOMEM, "no memory for activations of B=%lld T=%lld (%.2f GiB; hint: smaller "
                         "--batch or --seq-len, or more ranks)", (long long)B, (long long)T,
                         lasp_model_activation_bytes(&m->cfg, B, T) / 1073741824.0);
    }
    m->B = B, m->T = T;
    return LASP_OK;
}

void lasp_model_free(lasp_model *m) {
    acts_free(m);
    free(m->acts), free(m->slopes);
    lasp_layout_free(&m->lay);
    m->acts = NULL, m->slopes = NULL;
}

/* ---- parameter access ------------------------------------------------------------------------- */

static lasp_status get_w(lasp_model *m, int u, const float **w, lasp_err *err) {
    if (m->access.get) return m->access.get(m->access.user, u, w, err);
    *w = m->params + m->lay.unit_off[u];
    return LASP_OK;
}

static lasp_status get_g(lasp_model *m, int u, float **g, lasp_err *err) {
    if (m->access.grad) return m->access.grad(m->access.user, u, g, err);
    *g = m->grads + m->lay.unit_off[u];
    return LASP_OK;
}

static lasp_status grad_done(lasp_model *m, int u, lasp_err *err) {
    return m->access.grad_done ? m->access.grad_done(m->access.user, u, err) : LASP_OK;
}

/* ---- building blocks -------------------------------------------------------------------------- */

/* out[N,O] = in[N,K] · W[K,O] */
static void mm_fwd(const lasp_model *m, float *out, const float *in, const float *W, int64_t N, int64_t K, int64_t O) {
#ifdef LASP_HAVE_BLAS
    if (!m->no_blas) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)O, (int)K, 1.0f, in, (int)K, W, (int)O,
                    0.0f, out, (int)O);
        return;
    }
#endif
    (void)m;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *y = out + n * O;
        memset(y, 0, (size_t)O * sizeof *y);
        for (int64_t i = 0; i < K; i++) {
            const float a = in[n * K + i], *w = W + i * O;
            for (int64_t o = 0; o < O; o++) y[o] += a * w[o];
        }
    }
}

/* din[N,K] = dout[N,O] · Wᵀ (if din), dW[K,O] += inᵀ · dout */
static void mm_bwd(const lasp_model *m, float *din, float *dW, const float *dout, const float *in, const float *W,
                   int64_t N, int64_t K, int64_t O) {
#ifdef LASP_HAVE_BLAS
    if (!m->no_blas) {
        if (din)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)K, (int)O, 1.0f, dout, (int)O, W,
                        (int)O, 0.0f, din, (int)K);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)O, (int)N, 1.0f, in, (int)K, dout, (int)O,
                    1.0f, dW, (int)O);
        return;
    }
#endif
    (void)m;
    if (din) {
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < K; i++) {
                const float *g = dout + n * O, *w = W + i * O;
                float s = 0;
                for (int64_t o = 0; o < O; o++) s += g[o] * w[o];
                din[n * K + i] = s;
            }
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < K; i++) {
        float *dw = dW + i * O;
        for (int64_t n = 0; n < N; n++) {
            const float a = in[n * K + i], *g = dout + n * O;
            for (int64_t o = 0; o < O; o++) dw[o] += a * g[o];
        }
    }
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Where a layer's incoming state and the convolution's halo come from: the previous SP rank (sp split), the
 * previous chunk of the same sequence (m->cin set: lasp_model_carry), or nothing (zeros). */
static size_t carry_state(const lasp_model *m) { return carry_kv_floats(&m->cfg, m->B); }
static size_t carry_halo(const lasp_model *m) { return carry_halo_floats(&m->cfg, m->B); }

/* The op, through the SP layer when the sequence is split over ranks, from the carried state of the
 * previous chunk when there is one. */
static lasp_status attn_fwd(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, lasp_layer_acts *A,
                            int64_t l) {
    const float *slopes = m->slopes + l * m->cfg.n_heads;
    if (sp && sp->sp_size > 1)
        return lasp_sp_attn_fwd(ctx, sp, a, A->q, A->k, A->v, slopes, NULL, A->o, NULL, &A->cache);
    const size_t ns = carry_state(m);
    return lasp_attn_fwd(ctx, a, A->q, A->k, A->v, slopes, m->cin ? m->cin->kv + l * ns : NULL, A->o,
                         m->cout ? m->cout->kv + l * ns : NULL);
}

static lasp_status attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, lasp_model *m,
                            const lasp_layer_acts *A, int64_t l) {
    const float *slopes = m->slopes + l * m->cfg.n_heads;
    if (sp && sp->sp_size > 1)
        return lasp_sp_attn_bwd(ctx, sp, a, A->q, A->k, A->v, slopes, A->cache, m->dob, NULL, m->dq, m->dk, m->dv,
                                NULL);
    const size_t ns = carry_state(m);
    return lasp_attn_bwd(ctx, a, A->q, A->k, A->v, slopes, m->cin ? m->cin->kv + l * ns : NULL, m->dob,
                         m->dcout ? m->dcout->kv + l * ns : NULL, m->dq, m->dk, m->dv,
                         m->dcin ? m->dcin->kv + l * ns : NULL);
}

/* ---- the short convolution ------------------------------------------------------------------- */

/* The q | k | v projections of the piece's last K−1 tokens, [B, K−1, 3C], into dst. */
static void last_rows(const lasp_model *m, const lasp_layer_acts *A, float *dst) {
    const int64_t B = m->B, T = m->T, C = m->cfg.d_model, K1 = m->cfg.conv - 1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < K1; i++)
            memcpy(dst + (b * K1 + i) * 3 * C, A->pre + (b * T + T - K1 + i) * 4 * C, (size_t)(3 * C) * sizeof(float));
}

/* Fills A->halo with the q | k | v projections of the K−1 tokens before this piece: the previous SP
 * rank's last K−1 (each rank sends its own to the next), the previous chunk's (m->cin), or zeros at the
 * start of the sequence. (K−1)·B·3C floats per layer against the B·H·D·D of LASP's state message: 3(K−1)/D
 * of it, 28% at D = 32, 7% at 128. With m->cout, this chunk's own last K−1 go there for the next. */
static lasp_status conv_halo_fwd(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, lasp_layer_acts *A, int64_t l) {
    const size_t n = carry_halo(m);
    if (m->cout) last_rows(m, A, m->cout->halo + l * n);
    if (m->cin) {
        memcpy(A->halo, m->cin->halo + l * n, n * sizeof(float));
        return LASP_OK;
    }
    memset(A->halo, 0, n * sizeof(float));
    if (!sp || sp->sp_size == 1) return LASP_OK;
    last_rows(m, A, m->halo_tx);
    return lasp_sp_halo(sp, 0, m->halo_tx, A->halo, n, LASP_F32, &ctx->err);
}

/* Backward of the convolution, given dy = ∂/∂cpre in m->dconv: dwc += Σ dy·x; ∂/∂pre into dpre's q | k | v
 * columns (stride 4C). The gradient of the halo goes back to where the halo came from, which adds it to its
 * last K−1 tokens: the previous SP rank (sendrecv to r−1, from r+1: the forward's exchange, reversed), or
 * the previous chunk (m->dcin), whose own comes from the next chunk (m->dcout). */
static lasp_status conv_bwd(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, const lasp_layer_acts *A, const float *wc,
                            float *dwc, float *dpre, int64_t l) {
    const int64_t B = m->B, T = m->T, C = m->cfg.d_model, K = m->cfg.conv, K1 = K - 1, W3 = 3 * C;
    const int split = sp && sp->sp_size > 1;
    const size_t n = (size_t)(B * K1 * W3);
    lasp_conv_bwd_w_cpu(dwc, m->dconv, A->pre, 4 * C, A->halo, B, T, W3, K);
    float *dhalo = split ? m->halo_tx : m->dcin ? m->dcin->halo + l * n : NULL;
    lasp_conv_bwd_x_cpu(dpre, 4 * C, dhalo, m->dconv, wc, B, T, W3, K);
    const float *from_next = NULL;
    if (split) {
        LASP_TRY(lasp_sp_halo(sp, 1, m->halo_tx, m->halo_rx, n, LASP_F32, &ctx->err));
        if (sp->sp_rank < sp->sp_size - 1) from_next = m->halo_rx;
    } else if (m->dcout) {
        from_next = m->dcout->halo + l * n;
    }
    if (from_next)
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < K1; i++)
                for (int64_t c = 0; c < W3; c++)
                    dpre[(b * T + T - K1 + i) * 4 * C + c] += from_next[(b * K1 + i) * W3 + c];
    return LASP_OK;
}

/* ---- forward ---------------------------------------------------------------------------------- */

lasp_status lasp_model_forward(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, const int32_t *tokens,
                               const int32_t *targets, const uint8_t *mask, float grad_scale, double *loss_out,
                               int64_t *correct_out, int64_t *count_out) {
    lasp_err *err = &ctx->err;
    const int64_t B = m->B, T = m->T, N = B * T, C = m->cfg.d_model, H = m->cfg.n_heads, D = C / H;
    const int64_t F = m->cfg.ffn_dim, V = m->cfg.vocab, L = m->cfg.n_layers;
    const lasp_block_off *bo = &m->lay.blk;
    if (N == 0) return lasp_fail(err, LASP_ERR_ARG, "model has no activation buffers (hint: lasp_model_reserve)");
    const float *w;

    /* embedding: x[n] = wte[token[n]]   wte [V, C] */
    LASP_TRY(get_w(m, 0, &w, err));
    LASP_TRY(lasp_model_check_ids(tokens, targets, N, V, err));
    lasp_embed_fwd_cpu(m->acts[0].x, w, tokens, N, C);

    const int64_t K = m->cfg.conv;
    if (K && (m->cin || m->cout) && T < K - 1)
        return lasp_fail(err, LASP_ERR_ARG, "a chunk of %lld tokens is shorter than the %lld the short convolution "
                         "reaches back (hint: longer chunks)", (long long)T, (long long)K - 1);
    if (K && sp && sp->sp_size > 1 && T < K - 1)
        return lasp_fail(err, LASP_ERR_ARG, "each SP rank holds %lld tokens, fewer than the %lld the short "
                         "convolution reaches back (hint: a longer --seq-len or fewer --sp ranks)", (long long)T,
                         (long long)K - 1);
    const lasp_attn_desc ad = {.B = B, .T = T, .H = H, .d = D, .e = D, .dtype = LASP_F32};
    for (int64_t l = 0; l < L; l++) {
        lasp_layer_acts *A = &m->acts[l];
        float *xout = l + 1 < L ? m->acts[l + 1].x : m->xL;
        LASP_TRY(get_w(m, 1 + (int)l, &w, err));
        /* attention branch: xn1 = RMSNorm(x); pre [N,4C] = xn1 · wqkvu; the convolution mixes q | k | v
         * over the last K tokens (qkv: where they are read from, stride sq) */
        lasp_rms_fwd_cpu(A->xn1, A->rstd1, A->x, w + bo->ln1, N, C);
        mm_fwd(m, A->pre, A->xn1, w + bo->wqkvu, N, C, 4 * C);
        const float *qkv = A->pre;
        int64_t sq = 4 * C;
        if (K) {
            LASP_TRY(conv_halo_fwd(m, ctx, sp, A, l));
            lasp_conv_fwd_cpu(A->cpre, A->pre, 4 * C, A->halo, w + bo->conv, B, T, 3 * C, K);
            qkv = A->cpre, sq = 3 * C;
        }
        /* q = SiLU, k = SiLU, v as is — each [N, C] = [B, T, H, D] */
        lasp_qkv_fwd_cpu(A->q, A->k, A->v, qkv, sq, N, C);
        LASP_TRY(attn_fwd(m, ctx, sp, &ad, A, l));
        /* y = RMSNorm(o) ⊙ σ(u): the output norm keeps the un-normalised linear attention in scale */
        lasp_rms_fwd_cpu(A->y, A->rstdo, A->o, w + bo->onorm, N, C);
        lasp_gate_fwd_cpu(A->y, A->pre + 3 * C, 4 * C, N, C);
        /* xm = x + y · wo */
        mm_fwd(m, A->xm, A->y, w + bo->wo, N, C, C);
        for (int64_t i = 0; i < N * C; i++) A->xm[i] += A->x[i];
        /* GLU FFN: h [N,2F] = RMSNorm(xm) · w12; a = h1 ⊙ h2; xout = xm + a · w3 */
        lasp_rms_fwd_cpu(A->xn2, A->rstd2, A->xm, w + bo->ln2, N, C);
        mm_fwd(m, A->h, A->xn2, w + bo->w12, N, C, 2 * F);
        lasp_glu_fwd_cpu(A->a, A->h, N, F);
        mm_fwd(m, xout, A->a, w + bo->w3, N, F, C);
        for (int64_t i = 0; i < N * C; i++) xout[i] += A->xm[i];
    }

    /* head: xf = RMSNorm(xL); logits [N,V] = xf · wh */
    LASP_TRY(get_w(m, (int)L + 1, &w, err));
    lasp_rms_fwd_cpu(m->xf, m->rstdf, m->xL, w + m->lay.head_lnf, N, C);
    mm_fwd(m, m->logits, m->xf, w + m->lay.head_w, N, C, V);
    if (!targets) return LASP_OK;

    /* cross-entropy, and (training) dlogits = grad_scale · (softmax − onehot) / N in place */
    lasp_xent_cpu(m->logits, targets, N, V, grad_scale > 0 ? grad_scale / (float)N : 0, m->row_loss, m->row_hit);
    return lasp_model_sum_rows(m->row_loss, m->row_hit, mask, N, loss_out, correct_out, count_out, err);
}

lasp_status lasp_model_check_ids(const int32_t *tokens, const int32_t *targets, int64_t N, int64_t V, lasp_err *err) {
    for (int64_t n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V)
            return lasp_fail(err, LASP_ERR_ARG, "token %d at position %lld is outside the vocab 0..%lld", tokens[n],
                             (long long)n, (long long)V - 1);
        if (targets && (targets[n] < 0 || targets[n] >= V))
            return lasp_fail(err, LASP_ERR_ARG, "target %d at position %lld is outside the vocab 0..%lld", targets[n],
                             (long long)n, (long long)V - 1);
    }
    return LASP_OK;
}

lasp_status lasp_model_sum_rows(const double *row_loss, const int32_t *row_hit, const uint8_t *mask, int64_t N,
                                double *loss_out, int64_t *correct_out, int64_t *count_out, lasp_err *err) {
    double loss = 0;
    int64_t correct = 0, count = 0;
    for (int64_t n = 0; n < N; n++) {
        loss += row_loss[n];
        if (!mask || mask[n]) correct += row_hit[n], count++;
    }
    if (!isfinite(loss))
        return lasp_fail(err, LASP_ERR_NONFINITE, "the loss is not finite (hint: lower --lr, or check the data)");
    if (loss_out) *loss_out = loss / N;
    if (correct_out) *correct_out = correct;
    if (count_out) *count_out = count;
    return LASP_OK;
}

/* ---- backward --------------------------------------------------------------------------------- */

lasp_status lasp_model_backward(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, const int32_t *tokens) {
    lasp_err *err = &ctx->err;
    const int64_t B = m->B, T = m->T, N = B * T, C = m->cfg.d_model, H = m->cfg.n_heads, D = C / H;
    const int64_t F = m->cfg.ffn_dim, V = m->cfg.vocab, L = m->cfg.n_layers, K = m->cfg.conv;
    const lasp_block_off *bo = &m->lay.blk;
    const float *w;
    float *g;

    /* head: dxf = dlogits · whᵀ, dwh += xfᵀ · dlogits; dres = ∂/∂xL through the final norm */
    LASP_TRY(get_w(m, (int)L + 1, &w, err));
    LASP_TRY(get_g(m, (int)L + 1, &g, err));
    mm_bwd(m, m->dbuf, g + m->lay.head_w, m->logits, m->xf, w + m->lay.head_w, N, C, V);
    memset(m->dres, 0, (size_t)(N * C) * sizeof(float));
    lasp_rms_bwd_cpu(m->dres, g + m->lay.head_lnf, m->dbuf, m->xL, m->rstdf, w + m->lay.head_lnf, N, C);
    LASP_TRY(grad_done(m, (int)L + 1, err));

    const lasp_attn_desc ad = {.B = B, .T = T, .H = H, .d = D, .e = D, .dtype = LASP_F32};
    for (int64_t l = L - 1; l >= 0; l--) {
        lasp_layer_acts *A = &m->acts[l];
        LASP_TRY(get_w(m, 1 + (int)l, &w, err));
        LASP_TRY(get_g(m, 1 + (int)l, &g, err));
        /* dres = ∂/∂xout. FFN: da [N,F] = dres · w3ᵀ; dh1 = da ⊙ h2, dh2 = da ⊙ h1 */
        float *dh = m->dbig, *da = m->dbig + N * 2 * F;
        mm_bwd(m, da, g + bo->w3, m->dres, A->a, w + bo->w3, N, F, C);
        lasp_glu_bwd_cpu(dh, da, A->h, N, F);
        mm_bwd(m, m->dbuf, g + bo->w12, dh, A->xn2, w + bo->w12, N, C, 2 * F);
        lasp_rms_bwd_cpu(m->dres, g + bo->ln2, m->dbuf, A->xm, A->rstd2, w + bo->ln2, N, C);  /* dres = ∂/∂xm */

        /* attention: dy = dres · woᵀ; y = ô·σ(u) with ô = RMSNorm(o) */
        mm_bwd(m, m->dbuf, g + bo->wo, m->dres, A->y, w + bo->wo, N, C, C);
        float *dpre = m->dbig;  /* [N, 4C] */
        const float *go = w + bo->onorm;
        lasp_gate_bwd_cpu(m->dbuf, dpre + 3 * C, 4 * C, A->o, A->rstdo, go, A->pre + 3 * C, 4 * C, N, C); /* dbuf: ∂/∂ô */
        memset(m->dob, 0, (size_t)(N * C) * sizeof(float));
        lasp_rms_bwd_cpu(m->dob, g + bo->onorm, m->dbuf, A->o, A->rstdo, go, N, C);
        LASP_TRY(attn_bwd(ctx, sp, &ad, m, A, l));
        /* through SiLU (q, k) into the projections, or into the convolution's output first (both of
         * stride sq): silu'(x) = σ(x)·(1 + x·(1 − σ(x))) */
        const float *qkv = K ? A->cpre : A->pre;
        float *dqkv = K ? m->dconv : dpre;
        const int64_t sq = K ? 3 * C : 4 * C;
        lasp_qkv_bwd_cpu(dqkv, sq, m->dq, m->dk, m->dv, qkv, N, C);
        if (K) LASP_TRY(conv_bwd(m, ctx, sp, A, w + bo->conv, g + bo->conv, dpre, l));
        mm_bwd(m, m->dbuf, g + bo->wqkvu, dpre, A->xn1, w + bo->wqkvu, N, C, 4 * C);
        lasp_rms_bwd_cpu(m->dres, g + bo->ln1, m->dbuf, A->x, A->rstd1, w + bo->ln1, N, C);  /* dres = ∂/∂x */
        LASP_TRY(grad_done(m, 1 + (int)l, err));
    }

    /* embedding: dwte[token[n]] += dres[n] */
    LASP_TRY(get_g(m, 0, &g, err));
    lasp_embed_bwd_cpu(g, m->dres, tokens, N, C);
    return grad_done(m, 0, err);
}

/* ---- recurrent decoding ------------------------------------------------------------------------ */

lasp_status lasp_decoder_create(const lasp_model *m, const float *params, lasp_decoder *d, lasp_err *err) {
    memset(d, 0, sizeof *d);
    const size_t C = (size_t)m->cfg.d_model, F = (size_t)m->cfg.ffn_dim, H = (size_t)m->cfg.n_heads, D = C / H;
    d->cfg = &m->cfg, d->lay = &m->lay, d->params = params, d->slopes = m->slopes;
    d->state = calloc((size_t)m->cfg.n_layers * H * D * D, sizeof(float));
    const size_t K = (size_t)m->cfg.conv;
    if (K) {
        d->win = calloc((size_t)m->cfg.n_layers * (K - 1) * 3 * C, sizeof(float));
        d->cq = malloc(3 * C * sizeof(float));
        if (!d->win || !d->cq) {
            lasp_decoder_free(d);
            return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the decoder");
        }
    }
    d->x = malloc(C * 4), d->xn = malloc(C * 4), d->pre = malloc(4 * C * 4), d->o = malloc(C * 4);
    d->y = malloc(C * 4), d->h = malloc(2 * F * 4), d->a = malloc(F * 4);
    d->logits = malloc((size_t)m->cfg.vocab * 4);
    if (!d->state || !d->x || !d->xn || !d->pre || !d->o || !d->y || !d->h || !d->a || !d->logits) {
        lasp_decoder_free(d);
        return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the decoder");
    }
    return LASP_OK;
}

void lasp_decoder_free(lasp_decoder *d) {
    free(d->state), free(d->x), free(d->xn), free(d->pre), free(d->o), free(d->y), free(d->h), free(d->a);
    free(d->logits), free(d->win), free(d->cq);
    memset(d, 0, sizeof *d);
}

/* y[O] = x[K] · W[K,O] for one token */
static void vm(float *y, const float *x, const float *W, int64_t K, int64_t O) {
    memset(y, 0, (size_t)O * sizeof *y);
    for (int64_t i = 0; i < K; i++)
        for (int64_t o = 0; o < O; o++) y[o] += x[i] * W[i * O + o];
}

void lasp_decoder_step(lasp_decoder *d, int32_t token) {
    const int64_t C = d->cfg->d_model, H = d->cfg->n_heads, D = C / H, F = d->cfg->ffn_dim, V = d->cfg->vocab;
    const int64_t K = d->cfg->conv;
    const lasp_layout *lay = d->lay;
    const lasp_block_off *bo = &lay->blk;
    memcpy(d->x, d->params + (int64_t)token * C, (size_t)C * sizeof(float));
    float rstd;
    for (int l = 0; l < d->cfg->n_layers; l++) {
        const float *w = d->params + lay->unit_off[1 + l];
        lasp_rms_fwd_cpu(d->xn, &rstd, d->x, w + bo->ln1, 1, C);
        vm(d->pre, d->xn, w + bo->wqkvu, C, 4 * C);
        /* the convolution over this token and the window of the K−1 before it (newest first), then
         * the window moves on by one */
        const float *qkv = d->pre;
        if (K) {
            float *win = d->win + (int64_t)l * (K - 1) * 3 * C;
            const float *wc = w + bo->conv;
            for (int64_t c = 0; c < 3 * C; c++) {
                float s = wc[c] * d->pre[c];
                for (int64_t j = 1; j < K; j++) s += wc[j * 3 * C + c] * win[(j - 1) * 3 * C + c];
                d->cq[c] = s;
            }
            memmove(win + 3 * C, win, (size_t)((K - 2) * 3 * C) * sizeof(float));
            memcpy(win, d->pre, (size_t)(3 * C) * sizeof(float));
            qkv = d->cq;
        }
        /* S = λ S + kᵀ v, o = q S per head (the state convention of MATH.md §1's recurrent form) */
        for (int64_t h = 0; h < H; h++) {
            float *S = d->state + ((int64_t)l * H + h) * D * D;
            const float lam = expf(-d->slopes[(int64_t)l * H + h]);
            const float *pq = qkv + h * D, *pk = qkv + C + h * D, *pv = qkv + 2 * C + h * D;
            for (int64_t i = 0; i < D; i++) {
                const float k = pk[i] * sigmoidf(pk[i]);
                for (int64_t j = 0; j < D; j++) S[i * D + j] = lam * S[i * D + j] + k * pv[j];
            }
            for (int64_t j = 0; j < D; j++) d->o[h * D + j] = 0;
            for (int64_t i = 0; i < D; i++) {
                const float q = pq[i] * sigmoidf(pq[i]);
                for (int64_t j = 0; j < D; j++) d->o[h * D + j] += q * S[i * D + j];
            }
        }
        lasp_rms_fwd_cpu(d->y, &rstd, d->o, w + bo->onorm, 1, C);
        lasp_gate_fwd_cpu(d->y, d->pre + 3 * C, 4 * C, 1, C);
        vm(d->xn, d->y, w + bo->wo, C, C);
        for (int64_t c = 0; c < C; c++) d->x[c] += d->xn[c];
        lasp_rms_fwd_cpu(d->xn, &rstd, d->x, w + bo->ln2, 1, C);
        vm(d->h, d->xn, w + bo->w12, C, 2 * F);
        lasp_glu_fwd_cpu(d->a, d->h, 1, F);
        vm(d->xn, d->a, w + bo->w3, F, C);
        for (int64_t c = 0; c < C; c++) d->x[c] += d->xn[c];
    }
    const float *w = d->params + lay->unit_off[d->cfg->n_layers + 1];
    lasp_rms_fwd_cpu(d->xn, &rstd, d->x, w + lay->head_lnf, 1, C);
    vm(d->logits, d->xn, w + lay->head_w, C, V);
}
