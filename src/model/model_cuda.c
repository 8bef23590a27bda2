/* model_cuda.c — the model on one GPU (model_cuda.h): buffers, the forward and the backward, pass for pass
 * the CPU's of model.c, with layers_cuda.cu for the layers, cuBLAS for the matrix products (fp32, no
 * TF32) and the CUDA attention op. Letters as in model.h. */
#include "model/model_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda_check.h"
#include "model/gemm_lt_cuda.h"
#include "model/layers.h"
#include "model/prof_cuda.h"
#include "comm/comm.h"
#include "sp/sp.h"

/* The head's logits are made this many bytes of rows at a time (docs/MODEL.md: never [N × V] whole). */
#define LOGIT_CHUNK_BYTES (256 << 20)

/* A layer's saved activations. xn1, y, xn2, a (the products' inputs), q, k, v (the op's), o (the op's output)
 * and h (a product's output, the GLU's input) are kept in the model's dtype (f32 or bf16); the residual stream,
 * the projections and the norms' rstd are fp32. */
typedef struct gacts {
    float *x, *rstd1, *pre, *rstdo, *xm, *rstd2;
    void *xn1, *q, *k, *v, *o, *y, *xn2, *h, *a;
    float *saved; /* the op's forward states, kept for its backward (lasp_attn_fwd_saving), or NULL */
} gacts;

struct lasp_gmodel {
    lasp_ctx *ctx;
    lasp_model_config cfg;
    lasp_layout lay;
    cudaStream_t stream;
    cublasHandle_t blas;
    lasp_lt *lt;                        /* bf16: the products on cuBLASLt (f32: NULL, cublasSgemm) */
    lasp_dtype dtype;                   /* of the matrix products' operands and the attention: f32 or bf16 */
    float *params, *grads, *slopes;     /* device: [n_params], [n_params], [L, slope_stride] */
    uint16_t *params16;                 /* bf16: the parameters rounded to bf16 [n_params] (else NULL) */
    uint16_t *out16;                    /* bf16: a gradient rounded for the products or the op that read it */
    int64_t slope_stride;               /* H rounded up to 4: each layer's slopes 16-byte aligned, as the op loads them */
    int accumulate;                     /* 1: the gradients' passes add to them; 0: they write them (set_accumulate) */
    int64_t B, T, chunk;                /* activations sized for B × T; rows of logits a chunk */
    gacts *acts;                        /* [L]; what a layer does not keep (recompute) points into shared */
    gacts shared;                       /* the buffers every layer shares, made again in the backward */
    lasp_recompute recompute;
    float *xL, *rstdf, *logits;         /* [N, C], [N], [chunk, V] */
    void *xf;                           /* [N, C] the final norm's output, in the dtype */
    lasp_gprof *prof;                   /* where the time goes (NULL: not measured) */
    const lasp_model_carry *cin, *dcout; /* a chunk of a longer sequence: model.h's carry, device memory */
    lasp_model_carry *cout, *dcin;
    float *dres, *dbuf, *dbig, *dq, *dk, *dv, *dob, *work;
    double *loss;                       /* [N] per-row losses */
    int32_t *hit, *tok, *tgt;           /* [N] each */
    int32_t *order, *starts, *uniq;     /* device copies of the embedding's index */
    int32_t *h_hit, *h_order, *h_starts, *h_uniq, *h_count; /* host */
    double *h_loss;
    int64_t n_uniq;
    /* a sequence split over GPUs (lasp_gmodel_set_sp): each layer's attention through the SP layer, which
     * keeps its forward for the backward in spc[l]; the convolution's halo from the previous rank */
    lasp_sp *sp;
    lasp_sp_cache **spc;                /* [L] */
    float *sp_halo, *halo_tx, *halo_rx; /* [L, nh] the halos received; [nh] this rank's last rows, or its halo's
                                         * gradient; [nh] the next rank's halo gradient */
    cudaEvent_t sp_ev;                  /* orders the halo's exchange between the model's and the group's stream */
    lasp_gmodel_unit_fn unit_done;      /* told as each unit's gradients are enqueued whole (set_unit_done) */
    void *unit_user;
    lasp_gmodel_fetch_fn fetch;         /* ZeRO 3: where a unit's parameters come from (set_fetch), or NULL */
    void *fetch_user;
    int cur;                            /* the unit whose parameters the passes now read (use_unit), or -1 */
    const float *u32;                   /* its fp32 parameters, and (bf16) their bf16 copy */
    const uint16_t *u16;
};

/* The sequence is split over SP ranks (more than one) */
static int split(const lasp_gmodel *m) { return m->sp && m->sp->sp_size > 1; }
static lasp_status sp_alloc(lasp_gmodel *m);

#define CU(call, what) LASP_CU(&m->ctx->err, call, what)
#define BLAS(call)                                                                                    \
    do {                                                                                              \
        const cublasStatus_t s_ = (call);                                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                              \
            return lasp_fail(&m->ctx->err, LASP_ERR_CUDA, "cuBLAS failed (status %d) in %s", (int)s_, #call); \
    } while (0)

/* The work enqueued from here on is of this kind (prof_cuda.h) */
#define PART(kind) lasp_gprof_mark_at(m->prof, LASP_PART_##kind, __FILE__, __LINE__)

/* ---- matrix products, row-major as the CPU's (cuBLAS is column-major: each is the transposed product) -- */

static const float ONE = 1.0f, ZERO = 0.0f;

/* C[M,N] (column-major) = op(A) · op(B) + beta·C; A and B fp32, or bf16 (fp32 accumulation); C fp32, or with
 * c16 in the bf16 model bf16 (a product whose output only ever feeds bf16 work) */
static cublasStatus_t gemm(const lasp_gmodel *m, cublasOperation_t ta, cublasOperation_t tb, int64_t M, int64_t N,
                           int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb, const float *beta,
                           void *C, int64_t ldc, int c16) {
    lasp_gprof_mark(m->prof, LASP_PART_MATMUL); /* the products' time is theirs as a kind, not a place's */
    if (m->lt) return lasp_lt_gemm(m->lt, ta, tb, M, N, K, A, lda, B, ldb, *beta, C, C, ldc, c16);
    return cublasSgemm(m->blas, ta, tb, (int)M, (int)N, (int)K, &ONE, (const float *)A, (int)lda, (const float *)B,
                       (int)ldb, beta, (float *)C, (int)ldc);
}

/* out[N,O] = in[N,K] · W[K,O] + beta · out; fp32 out, or (mm_fwd_op) out in the model's dtype */
static cublasStatus_t mm_fwd(const lasp_gmodel *m, float *out, const void *in, const void *W, int64_t N, int64_t K,
                             int64_t O, const float *beta) {
    return gemm(m, CUBLAS_OP_N, CUBLAS_OP_N, O, N, K, W, O, in, K, beta, out, O, 0);
}

static cublasStatus_t mm_fwd_op(const lasp_gmodel *m, void *out, const void *in, const void *W, int64_t N, int64_t K,
                                int64_t O) {
    return gemm(m, CUBLAS_OP_N, CUBLAS_OP_N, O, N, K, W, O, in, K, &ZERO, out, O, 1);
}

/* out[N,O] = resid[N,O] + in[N,K] · W[K,O] (out not resid): on cuBLASLt in one product, else a copy and a
 * product that adds */
static lasp_status mm_fwd_res(lasp_gmodel *m, float *out, const float *resid, const void *in, const void *W,
                              int64_t N, int64_t K, int64_t O) {
    if (m->lt) {
        lasp_gprof_mark(m->prof, LASP_PART_MATMUL);
        BLAS(lasp_lt_gemm(m->lt, CUBLAS_OP_N, CUBLAS_OP_N, O, N, K, W, O, in, K, 1.0f, resid, out, O, 0));
        return LASP_OK;
    }
    lasp_gprof_mark_at(m->prof, LASP_PART_ELEMWISE, __FILE__, __LINE__);
    CU(cudaMemcpyAsync(out, resid, (size_t)(N * O) * 4, cudaMemcpyDeviceToDevice, m->stream), "the residual");
    BLAS(mm_fwd(m, out, in, W, N, K, O, &ONE));
    return LASP_OK;
}

/* din[N,K] = dout[N,O] · Wᵀ; fp32 din, or (mm_bwd_in_op) din in the model's dtype */
static cublasStatus_t mm_bwd_in(const lasp_gmodel *m, float *din, const void *dout, const void *W, int64_t N,
                                int64_t K, int64_t O) {
    return gemm(m, CUBLAS_OP_T, CUBLAS_OP_N, K, N, O, W, O, dout, O, &ZERO, din, K, 0);
}

static cublasStatus_t mm_bwd_in_op(const lasp_gmodel *m, void *din, const void *dout, const void *W, int64_t N,
                                   int64_t K, int64_t O) {
    return gemm(m, CUBLAS_OP_T, CUBLAS_OP_N, K, N, O, W, O, dout, O, &ZERO, din, K, 1);
}

/* dW[K,O] += in[N,K]ᵀ · dout[N,O], or with beta 0 dW = the product */
static cublasStatus_t mm_bwd_w(const lasp_gmodel *m, float *dW, const void *in, const void *dout, int64_t N,
                               int64_t K, int64_t O, const float *beta) {
    return gemm(m, CUBLAS_OP_N, CUBLAS_OP_T, O, K, N, dout, O, in, K, beta, dW, O, 0);
}

/* The beta of a gradient's product: 1 adds to the gradients (lasp_gmodel_set_accumulate), 0 writes them */
static const float *grad_beta(const lasp_gmodel *m) { return m->accumulate ? &ONE : &ZERO; }

/* Unit u's parameters for the passes that follow (*w its fp32 ones): the model's own, or (ZeRO 3) where the
 * fetch puts them, asked for once a pass; `next` the unit the pass goes on to (-1: none). */
static lasp_status use_unit(lasp_gmodel *m, int u, int next, const float **w) {
    if (m->cur != u) {
        if (m->fetch) {
            LASP_TRY(m->fetch(m->fetch_user, u, next, &m->u32, &m->u16));
        } else {
            m->u32 = m->params + m->lay.unit_off[u];
            m->u16 = m->params16 ? m->params16 + m->lay.unit_off[u] : NULL;
        }
        m->cur = u;
    }
    *w = m->u32;
    return LASP_OK;
}

/* A weight of the current unit as the products take it: the fp32 parameter, or its bf16 copy at the same
 * offset. */
static const void *weight(const lasp_gmodel *m, const float *w) {
    return m->dtype == LASP_F32 ? (const void *)w : (const void *)(m->u16 + (w - m->u32));
}

/* ---- sizes, create, reserve, free ----------------------------------------------------------------- */

static int64_t logit_rows(const lasp_model_config *c, int64_t N) {
    int64_t r = LOGIT_CHUNK_BYTES / (4 * (int64_t)c->vocab);
    if (r >= 256) r -= r % 256; /* whole tiles of the head's products, and no short last chunk at T a power of 2 */
    return r < 1 ? 1 : r > N ? N : r;
}

static int64_t work_floats(const lasp_model_config *c, int64_t B, int64_t T) {
    const int64_t norms = lasp_layers_cuda_work_floats(B * T, c->d_model);
    const int64_t taps = lasp_feat_cuda_work_floats(B, c->d_model, c->conv);
    return norms > taps ? norms : taps;
}

/* The buffers of a layer's activations, in one list: those a gacts points to */
#define GACTS_PTRS(g) {(g)->x, (g)->rstd1, (g)->xn1, (g)->pre, (g)->q, (g)->k, (g)->v, (g)->o, (g)->rstdo, (g)->y, \
                       (g)->xm, (g)->rstd2, (g)->xn2, (g)->h, (g)->a, (g)->saved}

static int is_shared(const lasp_gmodel *m, const void *p) {
    const void *s[] = GACTS_PTRS(&m->shared);
    for (size_t i = 0; p && i < sizeof s / sizeof s[0]; i++)
        if (s[i] == p) return 1;
    return 0;
}

static void acts_free(lasp_gmodel *m) {
    for (int l = 0; m->acts && l < m->cfg.n_layers; l++) {
        gacts *a = &m->acts[l];
        void *all[] = GACTS_PTRS(a);
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (!is_shared(m, all[i])) cudaFree(all[i]);
        memset(a, 0, sizeof *a);
    }
    void *sh[] = GACTS_PTRS(&m->shared);
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) cudaFree(sh[i]);
    memset(&m->shared, 0, sizeof m->shared);
    void *dev[] = {m->xL, m->rstdf, m->xf, m->logits, m->dres, m->dbuf, m->dbig, m->dq, m->dk, m->dv, m->dob,
                   m->work, m->loss, m->hit, m->tok, m->tgt, m->order, m->starts, m->uniq, m->out16};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    cudaFreeHost(m->h_hit), cudaFreeHost(m->h_order), cudaFreeHost(m->h_starts), cudaFreeHost(m->h_uniq);
    cudaFreeHost(m->h_loss), free(m->h_count);
    m->xL = m->rstdf = m->logits = m->dres = m->dbuf = m->dbig = m->dq = m->dk = m->dv = m->dob = NULL;
    m->xf = NULL, m->work = NULL, m->loss = NULL, m->out16 = NULL;
    m->hit = m->tok = m->tgt = m->order = m->starts = m->uniq = NULL;
    m->h_hit = m->h_order = m->h_starts = m->h_uniq = m->h_count = NULL, m->h_loss = NULL;
    m->B = m->T = 0;
}

/* the SP caches and halo buffers (m->sp stays) */
static void sp_free(lasp_gmodel *m) {
    for (int l = 0; m->spc && l < m->cfg.n_layers; l++) lasp_sp_cache_free(m->spc[l]);
    free(m->spc);
    cudaFree(m->sp_halo), cudaFree(m->halo_tx), cudaFree(m->halo_rx);
    if (m->sp_ev) cudaEventDestroy(m->sp_ev);
    m->spc = NULL, m->sp_halo = m->halo_tx = m->halo_rx = NULL, m->sp_ev = NULL;
}

void lasp_gmodel_free(lasp_gmodel *m) {
    if (!m) return;
    if (m->stream) cudaStreamSynchronize(m->stream);
    sp_free(m);
    acts_free(m);
    free(m->acts);
    cudaFree(m->params), cudaFree(m->grads), cudaFree(m->slopes), cudaFree(m->params16);
    if (m->blas) cublasDestroy(m->blas);
    lasp_lt_free(m->lt);
    lasp_layout_free(&m->lay);
    free(m);
}

lasp_status lasp_gmodel_create(lasp_ctx *ctx, const lasp_model_config *c, lasp_dtype dtype, lasp_gmodel **out) {
    *out = NULL;
    LASP_TRY(lasp_model_config_check(c, &ctx->err));
    if (dtype != LASP_F32 && dtype != LASP_BF16)
        return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "the GPU model computes in f32 or bf16, not %s",
                         lasp_dtype_name(dtype));
    void *stream = NULL;
    LASP_TRY(lasp_ctx_cuda_stream(ctx, &stream));
    lasp_gmodel *m = calloc(1, sizeof *m);
    if (!m) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for the GPU model");
    m->ctx = ctx, m->cfg = *c, m->stream = (cudaStream_t)stream, m->dtype = dtype, m->accumulate = 1, m->cur = -1;
    lasp_status s = lasp_layout_make(c, &m->lay, &ctx->err);
    if (s == LASP_OK && !(m->acts = calloc((size_t)c->n_layers, sizeof *m->acts)))
        s = lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for the GPU model");
    if (s == LASP_OK && cublasCreate(&m->blas) != CUBLAS_STATUS_SUCCESS)
        s = lasp_fail(&ctx->err, LASP_ERR_CUDA, "cuBLAS would not start (hint: `lasp info` checks the GPU)");
    /* f32: no TF32 or other reduced-precision shortcut, so that it compares with the CPU */
    const cublasMath_t math = dtype == LASP_F32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH;
    if (s == LASP_OK && (cublasSetStream(m->blas, m->stream) != CUBLAS_STATUS_SUCCESS ||
                         cublasSetMathMode(m->blas, math) != CUBLAS_STATUS_SUCCESS))
        s = lasp_fail(&ctx->err, LASP_ERR_CUDA, "cuBLAS refused its stream or math mode");
    if (s == LASP_OK && dtype == LASP_BF16) s = lasp_lt_create(m->stream, &m->lt, &ctx->err);
    m->slope_stride = (c->n_heads + 3) / 4 * 4;
    const size_t P = m->lay.n_params, LH = (size_t)c->n_layers * m->slope_stride;
    float *slopes = s == LASP_OK ? calloc(LH, sizeof *slopes) : NULL;
    if (s == LASP_OK && !slopes) s = lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for the slopes");
    cudaError_t e = cudaSuccess;
    if (s == LASP_OK) {
        for (int l = 0; l < c->n_layers; l++) lasp_model_slopes(c, l, slopes + (size_t)l * m->slope_stride);
        e = cudaMalloc((void **)&m->params, P * 4);
        if (e == cudaSuccess) e = cudaMalloc((void **)&m->grads, P * 4);
        if (e == cudaSuccess) e = cudaMalloc((void **)&m->slopes, LH * 4);
        if (e == cudaSuccess && dtype == LASP_BF16) e = cudaMalloc((void **)&m->params16, P * 2);
        if (e == cudaSuccess) e = cudaMemcpy(m->slopes, slopes, LH * 4, cudaMemcpyHostToDevice);
        if (e != cudaSuccess)
            s = lasp_fail(&ctx->err, e == cudaErrorMemoryAllocation ? LASP_ERR_NOMEM : LASP_ERR_CUDA,
                          "the GPU model's parameters and gradients (%.2f GiB): %s", (dtype == LASP_BF16 ? 10.0 : 8.0) * P / 1073741824.0,
                          cudaGetErrorString(e));
    }
    free(slopes);
    if (s != LASP_OK) {
        lasp_gmodel_free(m);
        return s;
    }
    *out = m;
    return LASP_OK;
}

/* Every activation buffer with its size, in one list: lasp_gmodel_reserve allocates them (alloc = 1) and
 * lasp_gmodel_activation_bytes adds them up (alloc = 0, m only holds the config), so the estimate printed
 * before a run is what the run allocates. Returns the bytes; *e the first allocation's failure. */
static double plan(lasp_gmodel *m, int64_t B, int64_t T, int split_seq, int alloc, cudaError_t *e) {
    const lasp_model_config *c = &m->cfg;
    const size_t N = (size_t)(B * T), C = (size_t)c->d_model, F = (size_t)c->ffn_dim, V = (size_t)c->vocab;
    const size_t big = 4 * C > 3 * F ? 4 * C : 3 * F, es = m->dtype == LASP_BF16 ? 2 : 4;
    const int64_t chunk = logit_rows(c, (int64_t)N);
    double bytes = 0;
    gacts scratch;
    /* the op's states from its forward, so that its backward need not make them again (a few dozen of d × e
     * per head: the GPU's plan, not T, sets how many); under a sequence split the SP layer keeps its own */
    size_t saved = 0;
    const lasp_attn_desc ad = {.B = B, .T = T, .H = c->n_heads, .d = C / c->n_heads, .e = C / c->n_heads,
                               .dtype = m->dtype};
    if (split_seq || lasp_attn_saved_bytes(m->ctx, &ad, &saved) != LASP_OK) saved = 0;
#define BYTES(p, n)                                                                       \
    do {                                                                                  \
        bytes += (double)(n);                                                             \
        if (alloc && *e == cudaSuccess) *e = cudaMalloc((void **)&(p), (size_t)(n));      \
    } while (0)
#define DEV(p, n) BYTES(p, (n) * sizeof *(p))   /* n elements of p's type */
#define OPD(p, n) BYTES(p, (n) * es)            /* n elements of the dtype */
    /* a layer's input, always kept; the rest of a block's activations; the attention's q, k, v and o */
#define BLOCK_ACTS(g)                                                                                          \
    do {                                                                                                       \
        DEV((g)->rstd1, N); OPD((g)->xn1, N * C); DEV((g)->pre, N * 4 * C); DEV((g)->rstdo, N);                \
        OPD((g)->y, N * C); DEV((g)->xm, N * C); DEV((g)->rstd2, N); OPD((g)->xn2, N * C);                     \
        OPD((g)->h, N * 2 * F); OPD((g)->a, N * F);                                                            \
    } while (0)
#define ATTN_ACTS(g)                                                                                     \
    do {                                                                                                 \
        OPD((g)->q, N * C); OPD((g)->k, N * C); OPD((g)->v, N * C); OPD((g)->o, N * C);                  \
        if (saved) BYTES((g)->saved, saved);                                                             \
    } while (0)
    const int keep_block = m->recompute != LASP_RECOMPUTE_BLOCK, keep_attn = m->recompute == LASP_RECOMPUTE_NONE;
    for (int l = 0; l < c->n_layers; l++) {
        gacts *a = alloc ? &m->acts[l] : &scratch;
        DEV(a->x, N * C);
        if (keep_block) BLOCK_ACTS(a);
        if (keep_attn) ATTN_ACTS(a);
    }
    gacts *sh = alloc ? &m->shared : &scratch;
    if (!keep_block) BLOCK_ACTS(sh);
    if (!keep_attn) ATTN_ACTS(sh);
    for (int l = 0; alloc && l < c->n_layers; l++) { /* what a layer does not keep, it finds in the shared set */
        gacts *a = &m->acts[l];
        if (!keep_block) {
            float *x = a->x;
            *a = m->shared, a->x = x;
        } else if (!keep_attn) {
            a->q = sh->q, a->k = sh->k, a->v = sh->v, a->o = sh->o, a->saved = sh->saved;
        }
    }
#undef BLOCK_ACTS
#undef ATTN_ACTS
    DEV(m->xL, N * C); DEV(m->rstdf, N); OPD(m->xf, N * C); DEV(m->logits, (size_t)chunk * V);
    DEV(m->dres, N * C); DEV(m->dbuf, N * C); DEV(m->dbig, N * big);
    if (m->dtype == LASP_F32) { /* bf16: in out16 */
        DEV(m->dq, N * C); DEV(m->dk, N * C); DEV(m->dv, N * C); DEV(m->dob, N * C);
    }
    DEV(m->work, (size_t)work_floats(c, B, T));
    DEV(m->loss, N); DEV(m->hit, N); DEV(m->tok, N); DEV(m->tgt, N);
    DEV(m->order, N); DEV(m->starts, N + 1); DEV(m->uniq, N);
    if (m->dtype == LASP_BF16) { /* a gradient rounded for the products or the op: see the backward */
        const size_t g = N * (4 * C > 2 * F ? 4 * C : 2 * F);
        DEV(m->out16, g > (size_t)chunk * V ? g : (size_t)chunk * V);
    }
#undef OPD
#undef DEV
#undef BYTES
    return bytes;
}

double lasp_gmodel_activation_bytes(lasp_ctx *ctx, const lasp_model_config *c, lasp_dtype dtype, lasp_recompute r,
                                    int64_t B, int64_t T, int split_seq) {
    lasp_gmodel m;
    memset(&m, 0, sizeof m);
    m.ctx = ctx, m.cfg = *c, m.dtype = dtype, m.recompute = r;
    cudaError_t e = cudaSuccess;
    return plan(&m, B, T, split_seq, 0, &e);
}

void lasp_gmodel_set_recompute(lasp_gmodel *m, lasp_recompute r) {
    if (r == m->recompute) return;
    acts_free(m); /* the next reserve lays the buffers out anew */
    m->recompute = r;
}

lasp_status lasp_gmodel_reserve(lasp_gmodel *m, int64_t B, int64_t T) {
    if (B == m->B && T == m->T) return LASP_OK;
    acts_free(m);
    if (B < 1 || T < 1)
        return lasp_fail(&m->ctx->err, LASP_ERR_ARG, "batch %lld and tokens %lld must be ≥ 1", (long long)B,
                         (long long)T);
    const size_t N = (size_t)(B * T), V = (size_t)m->cfg.vocab;
    cudaError_t e = cudaSuccess;
    const double bytes = plan(m, B, T, split(m), 1, &e);
    /* pinned, so that the copies of a step's index and losses are asynchronous */
#define PIN(p, n) \
    if (e == cudaSuccess) e = cudaMallocHost((void **)&(p), (n) * sizeof *(p))
    PIN(m->h_hit, N); PIN(m->h_loss, N); PIN(m->h_order, N); PIN(m->h_starts, N + 1); PIN(m->h_uniq, N);
#undef PIN
    m->h_count = malloc((V + 1) * sizeof *m->h_count);
    if (e != cudaSuccess || !m->h_count) {
        acts_free(m);
        cudaGetLastError(); /* a failed cudaMalloc leaves nothing behind: clear it */
        return lasp_fail(&m->ctx->err, LASP_ERR_NOMEM, "the GPU has no room for the activations of batch %lld × "
                         "%lld tokens (%.2f GiB) (hint: a smaller --batch or --seq-len)", (long long)B, (long long)T,
                         bytes / 1073741824.0);
    }
    m->B = B, m->T = T, m->chunk = logit_rows(&m->cfg, (int64_t)N);
    return m->sp ? sp_alloc(m) : LASP_OK; /* the halos are sized by the batch */
}

static lasp_status no_params(lasp_gmodel *m) {
    return lasp_fail(&m->ctx->err, LASP_ERR_UNSUPPORTED, "the GPU model's parameters are kept by its fetch (ZeRO 3), "
                     "not by the model");
}

lasp_status lasp_gmodel_set_params(lasp_gmodel *m, const float *host) {
    if (m->fetch) return no_params(m);
    CU(cudaStreamSynchronize(m->stream), "the GPU's work");
    CU(cudaMemcpy(m->params, host, m->lay.n_params * 4, cudaMemcpyHostToDevice), "copying the parameters in");
    if (m->params16) lasp_to_bf16_cuda(m->params16, m->params, (int64_t)m->lay.n_params, m->stream);
    CU(cudaStreamSynchronize(m->stream), "rounding the parameters to bf16");
    return LASP_OK;
}

lasp_status lasp_gmodel_get_params(lasp_gmodel *m, float *host) {
    if (m->fetch) return no_params(m);
    CU(cudaStreamSynchronize(m->stream), "the GPU's work");
    CU(cudaMemcpy(host, m->params, m->lay.n_params * 4, cudaMemcpyDeviceToHost), "copying the parameters out");
    return LASP_OK;
}

float *lasp_gmodel_params(lasp_gmodel *m) { return m->params; }
float *lasp_gmodel_grads(lasp_gmodel *m) { return m->grads; }
void *lasp_gmodel_params16(lasp_gmodel *m) { return m->params16; }
lasp_dtype lasp_gmodel_dtype(const lasp_gmodel *m) { return m->dtype; }

lasp_status lasp_gmodel_get_grads(lasp_gmodel *m, float *host) {
    CU(cudaStreamSynchronize(m->stream), "the GPU's work");
    CU(cudaMemcpy(host, m->grads, m->lay.n_params * 4, cudaMemcpyDeviceToHost), "copying the gradients out");
    return LASP_OK;
}

lasp_status lasp_gmodel_zero_grads(lasp_gmodel *m) {
    CU(cudaMemsetAsync(m->grads, 0, m->lay.n_params * 4, m->stream), "zeroing the gradients");
    return LASP_OK;
}

void lasp_gmodel_set_accumulate(lasp_gmodel *m, int accumulate) { m->accumulate = accumulate != 0; }

void lasp_gmodel_set_fetch(lasp_gmodel *m, lasp_gmodel_fetch_fn fn, void *user) {
    if (m->stream) cudaStreamSynchronize(m->stream); /* nothing still reads the model's own copies */
    m->fetch = fn, m->fetch_user = user, m->cur = -1;
    if (fn) {
        cudaFree(m->params), cudaFree(m->params16);
        m->params = NULL, m->params16 = NULL;
    }
}

void lasp_gmodel_set_unit_done(lasp_gmodel *m, lasp_gmodel_unit_fn fn, void *user) {
    m->unit_done = fn, m->unit_user = user;
}

#define UNIT_DONE(u)                                                            \
    do {                                                                        \
        if (m->unit_done) LASP_TRY(m->unit_done(m->unit_user, (int)(u)));       \
    } while (0)

/* The SP caches and the halos for batches of m->B */
static lasp_status sp_alloc(lasp_gmodel *m) {
    lasp_err *err = &m->ctx->err;
    sp_free(m);
    const int64_t L = m->cfg.n_layers, K = m->cfg.conv;
    const size_t nh = K ? (size_t)(m->B * (K - 1) * 3 * m->cfg.d_model) : 0;
    if (!(m->spc = calloc((size_t)L, sizeof *m->spc))) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for SP caches");
    if (cudaEventCreateWithFlags(&m->sp_ev, cudaEventDisableTiming) != cudaSuccess) {
        m->sp_ev = NULL;
        sp_free(m);
        return lasp_fail(err, LASP_ERR_CUDA, "no CUDA event for the sequence split");
    }
    if (nh) {
        /* zeroed: the first rank receives no halo, and reads these zeros as the start of the sequence */
        cudaError_t e = cudaMalloc((void **)&m->sp_halo, (size_t)L * nh * 4);
        if (e == cudaSuccess) e = cudaMalloc((void **)&m->halo_tx, nh * 4);
        if (e == cudaSuccess) e = cudaMalloc((void **)&m->halo_rx, nh * 4);
        if (e == cudaSuccess) e = cudaMemsetAsync(m->sp_halo, 0, (size_t)L * nh * 4, m->stream);
        if (e != cudaSuccess) {
            sp_free(m);
            cudaGetLastError();
            return lasp_fail(err, LASP_ERR_NOMEM, "no GPU memory for the sequence split's halos (%zu bytes)",
                             (size_t)(L + 2) * nh * 4);
        }
    }
    return LASP_OK;
}

lasp_status lasp_gmodel_set_sp(lasp_gmodel *m, lasp_sp *sp) {
    lasp_err *err = &m->ctx->err;
    const int was = split(m);
    sp_free(m);
    m->sp = NULL;
    if (sp && sp->sp_size > 1 && lasp_comm_backend_of(sp->sp) != LASP_COMM_NCCL)
        return lasp_fail(err, LASP_ERR_ARG, "the GPU model's sequence split needs NCCL communicators (hint: the "
                         "nccl backend, one GPU a rank)");
    if (sp && sp->sp_size > 1) m->sp = sp;
    if (split(m) != was) acts_free(m); /* the op's kept states come and go with the split: reserve anew */
    return m->B && split(m) ? sp_alloc(m) : LASP_OK;
}

/* The halo's exchange with the neighbouring SP ranks (lasp_sp_halo) on the group's stream, where the SP
 * layer's own NCCL transfers go too (one stream keeps a communicator's operations in the order every rank
 * issues them): after the model's stream has made what it sends, and before it uses what arrives. */
static lasp_status halo_exchange(lasp_gmodel *m, int backward, const float *send, float *recv, size_t n) {
    lasp_err *err = &m->ctx->err;
    cudaStream_t c = (cudaStream_t)lasp_comm_stream(m->sp->sp);
    CU(cudaEventRecord(m->sp_ev, m->stream), "ordering the halo");
    CU(cudaStreamWaitEvent(c, m->sp_ev, 0), "ordering the halo");
    LASP_TRY(lasp_sp_halo(m->sp, backward, send, recv, n, LASP_F32, err));
    CU(cudaEventRecord(m->sp_ev, c), "ordering the halo");
    CU(cudaStreamWaitEvent(m->stream, m->sp_ev, 0), "ordering the halo");
    return LASP_OK;
}

/* ---- forward -------------------------------------------------------------------------------------- */

/* The sizes a layer's passes take */
typedef struct dims {
    int64_t B, T, N, C, H, D, F, L, K;
    size_t ns, nh; /* floats of a layer's carried state and halo */
} dims;

static dims dims_of(const lasp_gmodel *m) {
    dims d = {.B = m->B, .T = m->T, .C = m->cfg.d_model, .H = m->cfg.n_heads, .F = m->cfg.ffn_dim,
              .L = m->cfg.n_layers, .K = m->cfg.conv};
    d.N = d.B * d.T, d.D = d.C / d.H;
    d.ns = (size_t)(d.B * d.H * d.D * d.D), d.nh = d.K ? (size_t)(d.B * (d.K - 1) * 3 * d.C) : 0;
    return d;
}

/* The projections before layer l's piece that its convolution reads: the previous chunk's, or the previous SP
 * rank's (received in the forward), or none (the sequence's start, or no convolution) */
static const float *halo_of(const lasp_gmodel *m, int64_t l) {
    const dims d = dims_of(m);
    return !d.K ? NULL : m->cin ? m->cin->halo + l * d.nh : split(m) ? m->sp_halo + l * d.nh : NULL;
}

/* Layer l's q, k, v (the convolution and SiLU) and the op's output o, from its projections; with `out` the
 * state handed to the next chunk too (a recompute in the backward leaves it). Unit 1 + l is the current one. */
static lasp_status layer_attn(lasp_gmodel *m, int64_t l, int out) {
    const dims d = dims_of(m);
    const gacts *A = &m->acts[l];
    const float *w = m->u32; /* unit 1 + l's (use_unit) */
    const float *halo = halo_of(m, l), *wc = d.K ? w + m->lay.blk.conv : NULL;
    PART(ELEMWISE);
    if (m->dtype == LASP_BF16)
        lasp_feat_fwd_bf16_cuda(A->q, A->k, A->v, A->pre, 4 * d.C, halo, wc, d.B, d.T, d.C, d.K, m->stream);
    else
        lasp_feat_fwd_cuda(A->q, A->k, A->v, A->pre, 4 * d.C, halo, wc, d.B, d.T, d.C, d.K, m->stream);
    /* the op (its output in the dtype), its states in fp32 */
    PART(ATTN);
    const lasp_attn_desc ad = {.B = d.B, .T = d.T, .H = d.H, .d = d.D, .e = d.D, .dtype = m->dtype};
    if (split(m))
        return lasp_sp_attn_fwd(m->ctx, m->sp, &ad, A->q, A->k, A->v, m->slopes + l * m->slope_stride, NULL, A->o,
                                NULL, &m->spc[l]);
    return lasp_attn_fwd_saving(m->ctx, &ad, A->q, A->k, A->v, m->slopes + l * m->slope_stride,
                                m->cin ? m->cin->kv + l * d.ns : NULL, A->o,
                                out && m->cout ? m->cout->kv + l * d.ns : NULL, A->saved);
}

/* Layer l's forward from its input acts[l].x: every activation its backward reads and, with `out`, its output
 * (the next layer's input, or xL) and what the next chunk takes (the halo and the state). Without `out` it is
 * the backward's recompute (--recompute block): the activations alone. Unit 1 + l is the current one. */
static lasp_status layer_fwd(lasp_gmodel *m, int64_t l, int out) {
    const dims d = dims_of(m);
    const int64_t B = d.B, T = d.T, N = d.N, C = d.C, F = d.F, K = d.K;
    const lasp_block_off *bo = &m->lay.blk;
    cudaStream_t st = m->stream;
    const int bf16 = m->dtype == LASP_BF16;
    gacts *A = &m->acts[l];
    const float *w = m->u32; /* unit 1 + l's (use_unit) */
    /* attention branch: xn1 = RMSNorm(x); pre = xn1 · wqkvu; the convolution; SiLU features; the op */
    PART(ELEMWISE);
    if (bf16) lasp_rms_fwd_bf16_cuda(A->xn1, A->rstd1, A->x, w + bo->ln1, N, C, st);
    else lasp_rms_fwd_cuda(A->xn1, A->rstd1, A->x, w + bo->ln1, N, C, st);
    BLAS(mm_fwd(m, A->pre, A->xn1, weight(m, w + bo->wqkvu), N, C, 4 * C, &ZERO));
    /* this chunk's last K − 1 projections: the next chunk's halo */
    PART(ELEMWISE);
    float *last = !out || !K ? NULL : m->cout ? m->cout->halo + l * d.nh : split(m) ? m->halo_tx : NULL;
    if (last)
        for (int64_t b = 0; b < B; b++)
            CU(cudaMemcpy2DAsync(last + b * (K - 1) * 3 * C, 3 * C * 4, A->pre + (b * T + T - (K - 1)) * 4 * C,
                                 4 * C * 4, 3 * C * 4, K - 1, cudaMemcpyDeviceToDevice, st), "the halo");
    /* split over ranks: this piece's last K − 1 projections to the next rank, the previous rank's into sp_halo */
    if (last && !m->cout) LASP_TRY(halo_exchange(m, 0, m->halo_tx, m->sp_halo + l * d.nh, d.nh));
    LASP_TRY(layer_attn(m, l, out));
    /* y = RMSNorm(o) ⊙ σ(u); xm = x + y · wo (the residual added by the product: beta = 1) */
    PART(ELEMWISE);
    if (bf16) lasp_onorm_gate_fwd_bf16_cuda(A->y, A->rstdo, A->o, w + bo->onorm, A->pre + 3 * C, 4 * C, N, C, st);
    else lasp_onorm_gate_fwd_cuda(A->y, A->rstdo, A->o, w + bo->onorm, A->pre + 3 * C, 4 * C, N, C, st);
    LASP_TRY(mm_fwd_res(m, A->xm, A->x, A->y, weight(m, w + bo->wo), N, C, C));
    /* GLU FFN: h = RMSNorm(xm) · w12; a = h1 ⊙ h2; xout = xm + a · w3 */
    PART(ELEMWISE);
    if (bf16) lasp_rms_fwd_bf16_cuda(A->xn2, A->rstd2, A->xm, w + bo->ln2, N, C, st);
    else lasp_rms_fwd_cuda(A->xn2, A->rstd2, A->xm, w + bo->ln2, N, C, st);
    BLAS(mm_fwd_op(m, A->h, A->xn2, weight(m, w + bo->w12), N, C, 2 * F));
    PART(ELEMWISE);
    if (bf16) lasp_glu_fwd_bf16_cuda(A->a, A->h, N, F, st);
    else lasp_glu_fwd_cuda(A->a, A->h, N, F, st);
    if (!out) return LASP_OK;
    float *xout = l + 1 < d.L ? m->acts[l + 1].x : m->xL;
    return mm_fwd_res(m, xout, A->xm, A->a, weight(m, w + bo->w3), N, F, C);
}

lasp_status lasp_gmodel_forward(lasp_gmodel *m, const int32_t *tokens, const int32_t *targets, float grad_scale) {
    lasp_ctx *ctx = m->ctx;
    lasp_err *err = &ctx->err;
    const int64_t B = m->B, T = m->T, N = B * T, C = m->cfg.d_model;
    const int64_t V = m->cfg.vocab, L = m->cfg.n_layers, K = m->cfg.conv;
    cudaStream_t st = m->stream;
    if (N == 0) return lasp_fail(err, LASP_ERR_ARG, "the GPU model has no activations (hint: lasp_gmodel_reserve)");
    if (!targets) return lasp_fail(err, LASP_ERR_ARG, "the GPU model's forward needs targets");
    LASP_TRY(lasp_model_check_ids(tokens, targets, N, V, err));
    /* the tokens, and the embedding backward's index of them (a counting sort, done here on the host) */
    m->n_uniq = lasp_embed_index(tokens, N, V, m->h_order, m->h_starts, m->h_uniq, m->h_count);
    CU(cudaMemcpyAsync(m->tok, tokens, N * 4, cudaMemcpyHostToDevice, st), "copying the tokens in");
    CU(cudaMemcpyAsync(m->tgt, targets, N * 4, cudaMemcpyHostToDevice, st), "copying the targets in");
    CU(cudaMemcpyAsync(m->order, m->h_order, N * 4, cudaMemcpyHostToDevice, st), "copying the index in");
    CU(cudaMemcpyAsync(m->starts, m->h_starts, (m->n_uniq + 1) * 4, cudaMemcpyHostToDevice, st), "copying the index in");
    CU(cudaMemcpyAsync(m->uniq, m->h_uniq, m->n_uniq * 4, cudaMemcpyHostToDevice, st), "copying the index in");

    if (K && (m->cin || m->cout) && T < K - 1)
        return lasp_fail(err, LASP_ERR_ARG, "a chunk of %lld tokens is shorter than the %lld the short convolution "
                         "reaches back (hint: longer chunks)", (long long)T, (long long)K - 1);
    if (K && split(m) && T < K - 1)
        return lasp_fail(err, LASP_ERR_ARG, "each SP rank holds %lld tokens, fewer than the %lld the short "
                         "convolution reaches back (hint: a longer --seq-len or fewer --sp ranks)", (long long)T,
                         (long long)K - 1);
    if (split(m) && (m->cin || m->cout))
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "the GPU model takes either carried chunks or a sequence split "
                         "over GPUs, not both (hint: in chunks over ranks the trainer relays the carry, the model "
                         "unsplit)");
    m->cur = -1; /* the parameters may have changed since the last pass */
    const float *w;
    LASP_TRY(use_unit(m, 0, 1, &w));
    PART(ELEMWISE);
    lasp_embed_fwd_cuda(m->acts[0].x, w, m->tok, N, C, st);
    for (int64_t l = 0; l < L; l++) {
        LASP_TRY(use_unit(m, (int)(1 + l), (int)(2 + l), &w));
        LASP_TRY(layer_fwd(m, l, 1));
    }
    const int bf16 = m->dtype == LASP_BF16;

    /* head, a chunk of rows at a time: logits = xf · wh; their loss; with grad_scale their gradient (in place,
     * or rounded into out16), then ∂xf (into dbuf) and ∂wh at once: the first chunk's ∂wh written or added as the
     * gradients' passes are (set_accumulate), the later chunks' added to it */
    LASP_TRY(use_unit(m, (int)(L + 1), -1, &w));
    float *gh = m->grads + m->lay.unit_off[L + 1] + m->lay.head_w;
    PART(ELEMWISE);
    if (bf16) lasp_rms_fwd_bf16_cuda(m->xf, m->rstdf, m->xL, w + m->lay.head_lnf, N, C, st);
    else lasp_rms_fwd_cuda(m->xf, m->rstdf, m->xL, w + m->lay.head_lnf, N, C, st);
    const float scale = grad_scale > 0 ? grad_scale / (float)N : 0;
    const size_t row = (size_t)C * (bf16 ? 2 : 4);
    for (int64_t r0 = 0; r0 < N; r0 += m->chunk) {
        const int64_t rows = N - r0 < m->chunk ? N - r0 : m->chunk;
        const void *xf = (const char *)m->xf + r0 * row;
        BLAS(mm_fwd(m, m->logits, xf, weight(m, w + m->lay.head_w), rows, C, V, &ZERO));
        PART(XENT);
        if (bf16) lasp_xent_bf16_cuda(m->logits, m->out16, m->tgt + r0, rows, V, scale, m->loss + r0, m->hit + r0, st);
        else lasp_xent_cuda(m->logits, m->tgt + r0, rows, V, scale, m->loss + r0, m->hit + r0, st);
        if (scale > 0) {
            const void *dz = bf16 ? (const void *)m->out16 : (const void *)m->logits;
            BLAS(mm_bwd_in(m, m->dbuf + r0 * C, dz, weight(m, w + m->lay.head_w), rows, C, V));
            BLAS(mm_bwd_w(m, gh, xf, dz, rows, C, V, r0 ? &ONE : grad_beta(m)));
        }
    }
    PART(ELEMWISE);
    CU(cudaMemcpyAsync(m->h_loss, m->loss, N * sizeof *m->h_loss, cudaMemcpyDeviceToHost, st), "the loss");
    CU(cudaMemcpyAsync(m->h_hit, m->hit, N * sizeof *m->h_hit, cudaMemcpyDeviceToHost, st), "the loss");
    CU(cudaGetLastError(), "the forward's kernels");
    return LASP_OK;
}

lasp_status lasp_gmodel_loss(lasp_gmodel *m, const uint8_t *mask, double *loss_out, int64_t *correct_out,
                             int64_t *count_out) {
    CU(cudaStreamSynchronize(m->stream), "the GPU's work");
    return lasp_model_sum_rows(m->h_loss, m->h_hit, mask, m->B * m->T, loss_out, correct_out, count_out, &m->ctx->err);
}

/* ---- backward ------------------------------------------------------------------------------------- */

lasp_status lasp_gmodel_backward(lasp_gmodel *m) {
    lasp_ctx *ctx = m->ctx;
    const dims d = dims_of(m);
    const int64_t B = d.B, T = d.T, N = d.N, C = d.C, F = d.F, L = d.L, K = d.K;
    const size_t ns = d.ns, nh = d.nh;
    const lasp_block_off *bo = &m->lay.blk;
    cudaStream_t st = m->stream;

    /* the head's ∂xf is in dbuf (the forward did it); dres = ∂/∂xL through the final norm */
    const float *w;
    LASP_TRY(use_unit(m, (int)(L + 1), (int)L, &w));
    float *g = m->grads + m->lay.unit_off[L + 1];
    const int bf16 = m->dtype == LASP_BF16;
    PART(ELEMWISE);
    CU(cudaMemsetAsync(m->dres, 0, N * C * 4, st), "zeroing");
    PART(ELEMWISE);
    /* dres rounded into out16 too (bf16), where the next products read it: here and after each block's norms */
    void *dres16 = bf16 ? (void *)m->out16 : NULL;
    /* every gradient's pass adds to the gradients or writes them (set_accumulate): each element once */
    const int add = m->accumulate;
    const float *beta = grad_beta(m);
    lasp_rms_bwd_bf16_cuda(m->dres, dres16, g + m->lay.head_lnf, add, m->dbuf, m->xL, m->rstdf, w + m->lay.head_lnf,
                           N, C, m->work, st);
    UNIT_DONE(L + 1); /* the head: its weight's gradient came with the forward, its norm's just now */

    const lasp_attn_desc ad = {.B = B, .T = T, .H = d.H, .d = d.D, .e = d.D, .dtype = m->dtype};
    for (int64_t l = L - 1; l >= 0; l--) {
        /* what the layer did not keep, made again into the buffers the layers share (the last layer's are still
         * there from the forward: the head touches none of them) */
        LASP_TRY(use_unit(m, (int)(1 + l), l > 0 ? (int)l : -1, &w));
        if (l < L - 1 && m->recompute == LASP_RECOMPUTE_BLOCK) LASP_TRY(layer_fwd(m, l, 0));
        if (l < L - 1 && m->recompute == LASP_RECOMPUTE_ATTN) LASP_TRY(layer_attn(m, l, 0));
        const gacts *A = &m->acts[l];
        g = m->grads + m->lay.unit_off[1 + l];
        /* FFN: da = dres · w3ᵀ (in the dtype); dh from the GLU (bf16: into out16); dbuf = dh · w12ᵀ; dres +=
         * through the norm → ∂/∂xm */
        float *da = m->dbig + N * 2 * F;
        const void *dout = bf16 ? dres16 : (const void *)m->dres;
        BLAS(mm_bwd_in_op(m, da, dout, weight(m, w + bo->w3), N, F, C));
        BLAS(mm_bwd_w(m, g + bo->w3, A->a, dout, N, F, C, beta));
        PART(ELEMWISE);
        if (bf16) lasp_glu_bwd_bf16_cuda(m->out16, da, A->h, N, F, st);
        else lasp_glu_bwd_cuda(m->dbig, da, A->h, N, F, st);
        dout = bf16 ? (const void *)m->out16 : (const void *)m->dbig;
        BLAS(mm_bwd_in(m, m->dbuf, dout, weight(m, w + bo->w12), N, C, 2 * F));
        BLAS(mm_bwd_w(m, g + bo->w12, A->xn2, dout, N, C, 2 * F, beta));
        PART(ELEMWISE);
        lasp_rms_bwd_bf16_cuda(m->dres, dres16, g + bo->ln2, add, m->dbuf, A->xm, A->rstd2, w + bo->ln2, N, C, m->work,
                               st);

        /* attention: dy = dres · woᵀ; through the gate (du into dpre's u columns) and the output norm */
        float *dpre = m->dbig; /* [N, 4C]; bf16: dpre16, the products' operand, in the same memory */
        uint16_t *dpre16 = (uint16_t *)m->dbig;
        dout = bf16 ? dres16 : (const void *)m->dres;
        BLAS(mm_bwd_in(m, m->dbuf, dout, weight(m, w + bo->wo), N, C, C));
        BLAS(mm_bwd_w(m, g + bo->wo, A->y, dout, N, C, C, beta));
        /* through the gate and the output norm: du into dpre's u columns, dO for the op (bf16: into out16) */
        const float *slopes = m->slopes + l * m->slope_stride;
        uint16_t *dob16 = m->out16, *dq16 = dob16 + N * C, *dk16 = dq16 + N * C, *dv16 = dk16 + N * C;
        PART(ELEMWISE);
        if (bf16)
            lasp_onorm_gate_bwd_bf16_cuda(dob16, dpre16 + 3 * C, 4 * C, g + bo->onorm, add, m->dbuf, A->o, A->rstdo,
                                          w + bo->onorm, A->pre + 3 * C, 4 * C, N, C, m->work, st);
        else
            lasp_onorm_gate_bwd_cuda(m->dob, dpre + 3 * C, 4 * C, g + bo->onorm, add, m->dbuf, A->o, A->rstdo,
                                     w + bo->onorm, A->pre + 3 * C, 4 * C, N, C, m->work, st);
        PART(ATTN);
        const float *kvi = m->cin ? m->cin->kv + l * ns : NULL, *dkvo = m->dcout ? m->dcout->kv + l * ns : NULL;
        float *dkvi = m->dcin ? m->dcin->kv + l * ns : NULL;
        if (split(m) && bf16)
            LASP_TRY(lasp_sp_attn_bwd(ctx, m->sp, &ad, A->q, A->k, A->v, slopes, m->spc[l], dob16, NULL, dq16, dk16,
                                      dv16, NULL));
        else if (split(m))
            LASP_TRY(lasp_sp_attn_bwd(ctx, m->sp, &ad, A->q, A->k, A->v, slopes, m->spc[l], m->dob, NULL, m->dq, m->dk,
                                      m->dv, NULL));
        else if (bf16)
            LASP_TRY(lasp_attn_bwd_saved(ctx, &ad, A->q, A->k, A->v, slopes, kvi, dob16, dkvo, dq16, dk16, dv16, dkvi,
                                         A->saved));
        else
            LASP_TRY(lasp_attn_bwd_saved(ctx, &ad, A->q, A->k, A->v, slopes, kvi, m->dob, dkvo, m->dq, m->dk, m->dv,
                                         dkvi, A->saved));
        /* back through SiLU and the convolution into the projections' q | k | v columns; the halo came from the
         * chunk or the SP rank before (its gradient goes back there), and the next one's halo gradient comes in */
        PART(ELEMWISE);
        const float *halo = halo_of(m, l);
        float *dhalo = !K ? NULL : m->dcin ? m->dcin->halo + l * nh : split(m) ? m->halo_tx : NULL;
        const float *wc = K ? w + bo->conv : NULL, *dnext = K && m->dcout ? m->dcout->halo + l * nh : NULL;
        float *dwc = K ? g + bo->conv : NULL;
        if (bf16)
            lasp_feat_bwd_bf16_cuda(dpre16, 4 * C, dwc, add, dhalo, dnext, dq16, dk16, dv16, A->pre, 4 * C, halo, wc,
                                    B, T, C, K, m->work, st);
        else
            lasp_feat_bwd_cuda(dpre, 4 * C, dwc, add, dhalo, dnext, m->dq, m->dk, m->dv, A->pre, 4 * C, halo, wc, B,
                               T, C, K, m->work, st);
        if (K && split(m)) {
            /* the halo's gradient to the previous rank, and the next rank's into this piece's last rows: added
             * after the pass, so that no rank waits for the next one's features before its own */
            LASP_TRY(halo_exchange(m, 1, m->halo_tx, m->halo_rx, nh));
            if (m->sp->sp_rank < m->sp->sp_size - 1) {
                if (bf16) lasp_add_last_rows_bf16_cuda(dpre16, 4 * C, m->halo_rx, B, T, K - 1, 3 * C, st);
                else lasp_add_last_rows_cuda(dpre, 4 * C, m->halo_rx, B, T, K - 1, 3 * C, st);
            }
        }
        dout = bf16 ? (const void *)dpre16 : (const void *)dpre;
        BLAS(mm_bwd_in(m, m->dbuf, dout, weight(m, w + bo->wqkvu), N, C, 4 * C));
        BLAS(mm_bwd_w(m, g + bo->wqkvu, A->xn1, dout, N, C, 4 * C, beta));
        PART(ELEMWISE);
        lasp_rms_bwd_bf16_cuda(m->dres, dres16, g + bo->ln1, add, m->dbuf, A->x, A->rstd1, w + bo->ln1, N, C, m->work,
                               st);
        UNIT_DONE(1 + l);
    }
    /* embedding: dwte[token] += dres, each token's positions in order. The one gradient a backward does not write
     * whole (absent tokens' rows): zeroed first where the gradients are written */
    PART(ELEMWISE);
    if (!add) CU(cudaMemsetAsync(m->grads, 0, m->lay.unit_off[1] * 4, st), "zeroing the embedding's gradient");
    lasp_embed_bwd_cuda(m->grads, m->dres, m->order, m->starts, m->uniq, m->n_uniq, C, st);
    UNIT_DONE(0);
    CU(cudaGetLastError(), "the backward's kernels");
    return LASP_OK;
}

void lasp_gmodel_set_profile(lasp_gmodel *m, lasp_gprof *prof) { m->prof = prof; }

void lasp_gmodel_set_carry(lasp_gmodel *m, const lasp_model_carry *cin, lasp_model_carry *cout,
                           const lasp_model_carry *dcout, lasp_model_carry *dcin) {
    m->cin = cin, m->cout = cout, m->dcout = dcout, m->dcin = dcin;
}
