/* attn.c — the op's front door: validate once, then dispatch by where the tensors live.
 * Host tensors go to the CPU path; device tensors (CUDA builds) to the fused kernels. */
#include <math.h>
#include <stdio.h>

#include "attn/attn.h"
#include "core/dtype.h"

#ifdef LASP_HAVE_CUDA
#include "attn/attn_cuda.h"
#else
lasp_status lasp_ctx_cuda_stream(lasp_ctx *ctx, void **stream) {
    (void)stream;
    if (!ctx) return LASP_ERR_ARG;
    return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "this lasp was built without CUDA (hint: `lasp info` lists "
                     "the build features)");
}

lasp_status lasp_ctx_set_cuda_stream(lasp_ctx *ctx, void *stream) {
    void *unused;
    return stream ? lasp_ctx_cuda_stream(ctx, &unused) : LASP_OK; /* NULL: the context's own, which it has */
}
#endif

int lasp_head_dim_supported(int64_t dim) {
    static const int64_t dims[] = LASP_HEAD_DIMS;
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i] == dim) return 1;
    return 0;
}

int lasp_attn_block(const lasp_attn_desc *a) {
    int C = a->block > 0 ? a->block : LASP_ATTN_DEFAULT_BLOCK;
    return (int64_t)C > a->T ? (int)a->T : C;
}

lasp_status lasp_attn_check_desc(const lasp_attn_desc *a, lasp_err *err) {
    if (!a) return lasp_fail(err, LASP_ERR_ARG, "attention descriptor is NULL");
    if (a->B < 1 || a->T < 1 || a->H < 1)
        return lasp_fail(err, LASP_ERR_SHAPE, "B, T, H must be ≥ 1 (got B=%lld T=%lld H=%lld)", (long long)a->B,
                         (long long)a->T, (long long)a->H);
    if (!lasp_head_dim_supported(a->d) || !lasp_head_dim_supported(a->e))
        return lasp_fail(err, LASP_ERR_UNSUPPORTED,
                         "head dims d=%lld, e=%lld: each must be one of 16, 32, 64, 128, 256", (long long)a->d,
                         (long long)a->e);
    if (a->block < 0 || a->block > 4096)
        return lasp_fail(err, LASP_ERR_ARG, "block %d is out of range (hint: 0 for the default, or 1..4096)",
                         a->block);
    if ((double)a->B * a->T * a->H * (a->d > a->e ? a->d : a->e) > 9.0e18)
        return lasp_fail(err, LASP_ERR_SHAPE, "tensor of B=%lld T=%lld H=%lld is too large to index",
                         (long long)a->B, (long long)a->T, (long long)a->H);
    return LASP_OK;
}

lasp_status lasp_attn_check_slopes(const float *slopes, int64_t H, lasp_err *err) {
    if (!slopes) return lasp_fail(err, LASP_ERR_ARG, "slopes is NULL (hint: pass H zeros for no decay)");
    for (int64_t h = 0; h < H; h++) {
        if (!isfinite(slopes[h]))
            return lasp_fail(err, LASP_ERR_NONFINITE, "slope of head %lld is %g", (long long)h, (double)slopes[h]);
        if (slopes[h] < 0)
            return lasp_fail(err, LASP_ERR_ARG,
                             "slope of head %lld is %g < 0: the state would grow without bound "
                             "(hint: slopes are decay rates, λ = exp(−slope), use ≥ 0)",
                             (long long)h, (double)slopes[h]);
    }
    return LASP_OK;
}

/* NaN or Inf in an input would spread over every later token of the sequence: refuse it up front. */
static lasp_status check_finite(const char *name, const void *x, lasp_dtype t, size_t n, lasp_err *err) {
    if (!x) return LASP_OK;
    size_t i = lasp_find_nonfinite(x, t, n);
    if (i == n) return LASP_OK;
    return lasp_fail(err, LASP_ERR_NONFINITE, "%s holds a non-finite value at flat index %zu", name, i);
}

static lasp_status check_common(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                                const float *slopes, const float *kv_in) {
    lasp_err *err = &ctx->err;
    LASP_TRY(lasp_attn_check_desc(a, err));
    if (!q || !k || !v) return lasp_fail(err, LASP_ERR_ARG, "q, k and v must not be NULL");
    LASP_TRY(lasp_attn_check_slopes(slopes, a->H, err));
    const size_t nqk = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e);
    LASP_TRY(check_finite("q", q, a->dtype, nqk, err));
    LASP_TRY(check_finite("k", k, a->dtype, nqk, err));
    LASP_TRY(check_finite("v", v, a->dtype, nv, err));
    LASP_TRY(check_finite("kv_in", kv_in, LASP_F32, (size_t)(a->B * a->H * a->d * a->e), err));
    return LASP_OK;
}

static lasp_status require_f32(lasp_ctx *ctx, const lasp_attn_desc *a) {
    if (a->dtype == LASP_F32) return LASP_OK;
    return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED,
                     "dtype %s on the CPU: host tensors must be f32 (hint: bf16/f16 run on the GPU)",
                     lasp_dtype_name(a->dtype));
}

lasp_status lasp_attn_fwd_saving(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                                 const float *slopes, const float *kv_in, void *o, float *kv_out, float *saved) {
    (void)saved; /* host tensors: the CPU path keeps nothing for the backward */
    if (!ctx) return LASP_ERR_ARG;
    lasp_err_clear(&ctx->err);
#ifdef LASP_HAVE_CUDA
    if (lasp_cuda_is_device_ptr(q)) return lasp_attn_fwd_cuda(ctx, a, q, k, v, slopes, kv_in, o, kv_out, saved);
#endif
    LASP_TRY(require_f32(ctx, a));
    LASP_TRY(check_common(ctx, a, q, k, v, slopes, kv_in));
    if (!o) return lasp_fail(&ctx->err, LASP_ERR_ARG, "o must not be NULL");
    return lasp_attn_fwd_cpu(ctx, a, q, k, v, slopes, kv_in, o, kv_out);
}

lasp_status lasp_attn_fwd(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                          const float *slopes, const float *kv_in, void *o, float *kv_out) {
    return lasp_attn_fwd_saving(ctx, a, q, k, v, slopes, kv_in, o, kv_out, NULL);
}

lasp_status lasp_attn_bwd_saved(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                                const float *slopes, const float *kv_in, const void *do_, const float *dkv_out,
                                void *dq, void *dk, void *dv, float *dkv_in, const float *saved) {
    (void)saved;
    if (!ctx) return LASP_ERR_ARG;
    lasp_err_clear(&ctx->err);
#ifdef LASP_HAVE_CUDA
    if (lasp_cuda_is_device_ptr(q))
        return lasp_attn_bwd_cuda(ctx, a, q, k, v, slopes, kv_in, do_, dkv_out, dq, dk, dv, dkv_in, saved);
#endif
    LASP_TRY(require_f32(ctx, a));
    LASP_TRY(check_common(ctx, a, q, k, v, slopes, kv_in));
    if (!do_ || !dq || !dk || !dv) return lasp_fail(&ctx->err, LASP_ERR_ARG, "do, dq, dk and dv must not be NULL");
    const size_t nv = (size_t)(a->B * a->T * a->H * a->e);
    LASP_TRY(check_finite("do", do_, a->dtype, nv, &ctx->err));
    LASP_TRY(check_finite("dkv_out", dkv_out, LASP_F32, (size_t)(a->B * a->H * a->d * a->e), &ctx->err));
    return lasp_attn_bwd_cpu(ctx, a, q, k, v, slopes, kv_in, do_, dkv_out, dq, dk, dv, dkv_in);
}

lasp_status lasp_attn_bwd(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                          const float *slopes, const float *kv_in, const void *do_, const float *dkv_out, void *dq,
                          void *dk, void *dv, float *dkv_in) {
    return lasp_attn_bwd_saved(ctx, a, q, k, v, slopes, kv_in, do_, dkv_out, dq, dk, dv, dkv_in, NULL);
}

lasp_status lasp_attn_saved_bytes(lasp_ctx *ctx, const lasp_attn_desc *a, size_t *bytes) {
    if (!ctx || !bytes) return LASP_ERR_ARG;
    lasp_err_clear(&ctx->err);
    *bytes = 0;
#ifdef LASP_HAVE_CUDA
    return lasp_attn_cuda_saved_bytes(ctx, a, bytes);
#else
    return lasp_attn_check_desc(a, &ctx->err);
#endif
}

#ifndef LASP_HAVE_CUDA
static lasp_status no_cuda(lasp_ctx *ctx) {
    return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED,
                     "this build of lasp has no CUDA support (hint: install the CUDA toolkit and rebuild; "
                     "`lasp info` lists the features that were found)");
}
#endif

lasp_status lasp_attn_fwd_host(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_device device, const float *q,
                               const float *k, const float *v, const float *slopes, const float *kv_in, float *o,
                               float *kv_out) {
    if (!ctx) return LASP_ERR_ARG;
    if (device == LASP_DEVICE_CPU) return lasp_attn_fwd(ctx, a, q, k, v, slopes, kv_in, o, kv_out);
    if (device != LASP_DEVICE_CUDA) return lasp_fail(&ctx->err, LASP_ERR_ARG, "unknown device %d", (int)device);
#ifdef LASP_HAVE_CUDA
    return lasp_attn_fwd_host_cuda(ctx, a, q, k, v, slopes, kv_in, o, kv_out);
#else
    return no_cuda(ctx);
#endif
}

lasp_status lasp_attn_bwd_host(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_device device, const float *q,
                               const float *k, const float *v, const float *slopes, const float *kv_in,
                               const float *do_, const float *dkv_out, float *dq, float *dk, float *dv,
                               float *dkv_in) {
    if (!ctx) return LASP_ERR_ARG;
    if (device == LASP_DEVICE_CPU)
        return lasp_attn_bwd(ctx, a, q, k, v, slopes, kv_in, do_, dkv_out, dq, dk, dv, dkv_in);
    if (device != LASP_DEVICE_CUDA) return lasp_fail(&ctx->err, LASP_ERR_ARG, "unknown device %d", (int)device);
#ifdef LASP_HAVE_CUDA
    return lasp_attn_bwd_host_cuda(ctx, a, q, k, v, slopes, kv_in, do_, dkv_out, dq, dk, dv, dkv_in);
#else
    return no_cuda(ctx);
#endif
}
