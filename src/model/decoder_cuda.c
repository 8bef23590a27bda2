/* decoder_cuda.c — see decoder_cuda.h: lasp_decoder_step (model.c) pass for pass, on the context's stream. */
#include "model/decoder_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "model/layers.h"

struct lasp_gdecoder {
    lasp_ctx *ctx;
    lasp_model_config cfg;
    lasp_layout lay;
    cudaStream_t stream;
    cublasHandle_t blas;
    float *params, *slopes;           /* device [n_params], [L, H] */
    float *state, *win;               /* device [L, H, D, D], [L, K−1, 3C] */
    float *x, *xn, *pre, *cq, *o, *y, *h, *a, *logits; /* device, one token's */
    float *h_logits;                  /* pinned [V] */
};

static const float ONE = 1.0f, ZERO = 0.0f;

void lasp_gdecoder_free(lasp_gdecoder *d) {
    if (!d) return;
    if (d->stream) cudaStreamSynchronize(d->stream);
    float *dev[] = {d->params, d->slopes, d->state, d->win, d->x, d->xn, d->pre, d->cq, d->o, d->y, d->h, d->a,
                    d->logits};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    cudaFreeHost(d->h_logits);
    if (d->blas) cublasDestroy(d->blas);
    lasp_layout_free(&d->lay);
    free(d);
}

lasp_status lasp_gdecoder_create(lasp_ctx *ctx, const lasp_model_config *c, const float *params, lasp_gdecoder **out) {
    *out = NULL;
    void *stream = NULL;
    LASP_TRY(lasp_ctx_cuda_stream(ctx, &stream));
    lasp_gdecoder *d = calloc(1, sizeof *d);
    if (!d) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for the GPU decoder");
    d->ctx = ctx, d->cfg = *c, d->stream = (cudaStream_t)stream;
    lasp_status s = lasp_layout_make(c, &d->lay, &ctx->err);
    if (s == LASP_OK && (cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS ||
                         cublasSetStream(d->blas, d->stream) != CUBLAS_STATUS_SUCCESS ||
                         cublasSetMathMode(d->blas, CUBLAS_PEDANTIC_MATH) != CUBLAS_STATUS_SUCCESS))
        s = lasp_fail(&ctx->err, LASP_ERR_CUDA, "cuBLAS would not start (hint: `lasp info` checks the GPU)");
    const size_t C = (size_t)c->d_model, F = (size_t)c->ffn_dim, V = (size_t)c->vocab, L = (size_t)c->n_layers;
    const size_t H = (size_t)c->n_heads, D = C / H, K1 = c->conv ? (size_t)c->conv - 1 : 0;
    float *slopes = malloc(L * H * sizeof *slopes);
    cudaError_t e = s == LASP_OK && slopes ? cudaSuccess : cudaErrorMemoryAllocation;
#define DEV(p, n) \
    if (e == cudaSuccess) e = cudaMalloc((void **)&(p), ((n) > 0 ? (size_t)(n) : 1) * sizeof(float))
    DEV(d->params, d->lay.n_params); DEV(d->slopes, L * H); DEV(d->state, L * H * D * D); DEV(d->win, L * K1 * 3 * C);
    DEV(d->x, C); DEV(d->xn, C); DEV(d->pre, 4 * C); DEV(d->cq, 3 * C); DEV(d->o, C); DEV(d->y, C);
    DEV(d->h, 2 * F); DEV(d->a, F); DEV(d->logits, V);
#undef DEV
    if (e == cudaSuccess) e = cudaMallocHost((void **)&d->h_logits, V * sizeof(float));
    if (e == cudaSuccess) {
        for (size_t l = 0; l < L; l++) lasp_model_slopes(c, (int)l, slopes + l * H);
        e = cudaMemcpy(d->params, params, d->lay.n_params * 4, cudaMemcpyHostToDevice);
    }
    if (e == cudaSuccess) e = cudaMemcpy(d->slopes, slopes, L * H * 4, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemset(d->state, 0, L * H * D * D * 4);
    if (e == cudaSuccess && K1) e = cudaMemset(d->win, 0, L * K1 * 3 * C * 4);
    free(slopes);
    if (s == LASP_OK && e != cudaSuccess)
        s = lasp_fail(&ctx->err, e == cudaErrorMemoryAllocation ? LASP_ERR_NOMEM : LASP_ERR_CUDA,
                      "the GPU decoder (%.2f GiB of parameters): %s", 4.0 * d->lay.n_params / 1073741824.0,
                      cudaGetErrorString(e));
    if (s != LASP_OK) {
        cudaGetLastError();
        lasp_gdecoder_free(d);
        return s;
    }
    *out = d;
    return LASP_OK;
}

/* y[O] = x[K] · W[K, O] (+ y when acc): W row-major is the column-major O × K matrix Wᵀ */
static cublasStatus_t vm(const lasp_gdecoder *d, float *y, const float *x, const float *W, int64_t K, int64_t O,
                         int acc) {
    return cublasSgemv(d->blas, CUBLAS_OP_N, (int)O, (int)K, &ONE, W, (int)O, x, 1, acc ? &ONE : &ZERO, y, 1);
}

lasp_status lasp_gdecoder_step(lasp_gdecoder *d, int32_t token, const float **logits) {
    const int64_t C = d->cfg.d_model, H = d->cfg.n_heads, D = C / H, F = d->cfg.ffn_dim, V = d->cfg.vocab;
    const int64_t K = d->cfg.conv, K1 = K ? K - 1 : 0;
    const lasp_block_off *bo = &d->lay.blk;
    cudaStream_t st = d->stream;
    cublasStatus_t b = CUBLAS_STATUS_SUCCESS;
    cudaMemcpyAsync(d->x, d->params + (int64_t)token * C, (size_t)C * 4, cudaMemcpyDeviceToDevice, st);
    for (int l = 0; l < d->cfg.n_layers && b == CUBLAS_STATUS_SUCCESS; l++) {
        const float *w = d->params + d->lay.unit_off[1 + l];
        lasp_rms_fwd_cuda(d->xn, NULL, d->x, w + bo->ln1, 1, C, st);
        b = vm(d, d->pre, d->xn, w + bo->wqkvu, C, 4 * C, 0);
        const float *qkv = d->pre;
        if (K) {
            lasp_conv_step_cuda(d->cq, d->win + (int64_t)l * K1 * 3 * C, d->pre, w + bo->conv, 3 * C, K, st);
            qkv = d->cq;
        }
        lasp_recur_step_cuda(d->state + (int64_t)l * H * D * D, d->o, qkv, d->slopes + (int64_t)l * H, H, D, st);
        lasp_onorm_gate_fwd_cuda(d->y, NULL, d->o, w + bo->onorm, d->pre + 3 * C, 4 * C, 1, C, st);
        if (b == CUBLAS_STATUS_SUCCESS) b = vm(d, d->x, d->y, w + bo->wo, C, C, 1);
        lasp_rms_fwd_cuda(d->xn, NULL, d->x, w + bo->ln2, 1, C, st);
        if (b == CUBLAS_STATUS_SUCCESS) b = vm(d, d->h, d->xn, w + bo->w12, C, 2 * F, 0);
        lasp_glu_fwd_cuda(d->a, d->h, 1, F, st);
        if (b == CUBLAS_STATUS_SUCCESS) b = vm(d, d->x, d->a, w + bo->w3, F, C, 1);
    }
    const float *w = d->params + d->lay.unit_off[d->cfg.n_layers + 1];
    lasp_rms_fwd_cuda(d->xn, NULL, d->x, w + d->lay.head_lnf, 1, C, st);
    if (b == CUBLAS_STATUS_SUCCESS) b = vm(d, d->logits, d->xn, w + d->lay.head_w, C, V, 0);
    if (b != CUBLAS_STATUS_SUCCESS)
        return lasp_fail(&d->ctx->err, LASP_ERR_CUDA, "cuBLAS failed (status %d) in the decoder", (int)b);
    cudaMemcpyAsync(d->h_logits, d->logits, (size_t)V * 4, cudaMemcpyDeviceToHost, st);
    const cudaError_t e = cudaStreamSynchronize(st);
    if (e != cudaSuccess)
        return lasp_fail(&d->ctx->err, LASP_ERR_CUDA, "the decoder's step: %s", cudaGetErrorString(e));
    *logits = d->h_logits;
    return LASP_OK;
}
