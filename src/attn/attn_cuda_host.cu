/* attn_cuda_host.cu — lasp_attn_fwd_host / _bwd_host on the GPU: host f32 tensors checked (values too),
 * copied to the device in the I/O dtype, run, and copied back as f32. Synchronous. */
#include <stdlib.h>

#include "attn/attn.h"
#include "attn/attn_cuda.h"
#include "attn/attn_cuda_driver.h"
#include "core/dtype.h"

using namespace lasp_cu;

/* Device copies of host f32 tensors in the I/O dtype; freed together. */
typedef struct dbufs {
    void *p[16];
    int n;
} dbufs;

static void dbufs_free(dbufs *b) {
    for (int i = 0; i < b->n; i++) cudaFree(b->p[i]);
    b->n = 0;
}

/* A device buffer of n elements of type t, filled from host f32 x (converted) if x is not NULL. */
static lasp_status upload(lasp_ctx *ctx, dbufs *b, void **out, const float *x, size_t n, lasp_dtype t) {
    const size_t bytes = n * lasp_dtype_size(t);
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e != cudaSuccess)
        return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(e));
    b->p[b->n++] = d;
    *out = d;
    if (!x) return LASP_OK;
    if (t == LASP_F32) {
        CU_TRY(ctx, cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
        return LASP_OK;
    }
    void *h = malloc(bytes);
    if (!h) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no host memory for %zu bytes", bytes);
    lasp_convert(h, t, x, LASP_F32, n);
    e = cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) return cuda_fail(ctx, e, "cudaMemcpy to the device");
    return LASP_OK;
}

static lasp_status download(lasp_ctx *ctx, float *x, const void *d, size_t n, lasp_dtype t) {
    const size_t bytes = n * lasp_dtype_size(t);
    if (t == LASP_F32) {
        CU_TRY(ctx, cudaMemcpy(x, d, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy from the device");
        return LASP_OK;
    }
    void *h = malloc(bytes);
    if (!h) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no host memory for %zu bytes", bytes);
    cudaError_t e = cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) lasp_convert(x, LASP_F32, h, t, n);
    free(h);
    if (e != cudaSuccess) return cuda_fail(ctx, e, "cudaMemcpy from the device");
    return LASP_OK;
}

static lasp_status check_host_finite(lasp_ctx *ctx, const char *name, const float *x, size_t n) {
    if (!x) return LASP_OK;
    size_t i = lasp_find_nonfinite(x, LASP_F32, n);
    if (i == n) return LASP_OK;
    return lasp_fail(&ctx->err, LASP_ERR_NONFINITE, "%s holds a non-finite value at flat index %zu", name, i);
}

/* The inputs' values (which the device path does not scan), then a usable GPU before any allocation. */
static lasp_status host_checks(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k, const float *v,
                               const float *slopes, const float *kv_in) {
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    if (!q || !k || !v) return lasp_fail(&ctx->err, LASP_ERR_ARG, "q, k and v must not be NULL");
    LASP_TRY(lasp_attn_check_slopes(slopes, a->H, &ctx->err));
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e);
    LASP_TRY(check_host_finite(ctx, "q", q, nq));
    LASP_TRY(check_host_finite(ctx, "k", k, nq));
    LASP_TRY(check_host_finite(ctx, "v", v, nv));
    LASP_TRY(check_host_finite(ctx, "kv_in", kv_in, (size_t)(a->B * a->H * a->d * a->e)));
    CudaState *cs = NULL;
    return cuda_state(ctx, &cs);
}

extern "C" lasp_status lasp_attn_fwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q,
                                               const float *k, const float *v, const float *slopes,
                                               const float *kv_in, float *o, float *kv_out) {
    lasp_err_clear(&ctx->err);
    LASP_TRY(host_checks(ctx, a, q, k, v, slopes, kv_in));
    if (!o) return lasp_fail(&ctx->err, LASP_ERR_ARG, "o must not be NULL");
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e),
                 ns = (size_t)(a->B * a->H * a->d * a->e);
    dbufs b = {{0}, 0};
    void *dq = NULL, *dk = NULL, *dv = NULL, *dsl = NULL, *dkv = NULL, *dout = NULL, *dkvo = NULL;
    lasp_status s;
    if ((s = upload(ctx, &b, &dq, q, nq, a->dtype)) || (s = upload(ctx, &b, &dk, k, nq, a->dtype)) ||
        (s = upload(ctx, &b, &dv, v, nv, a->dtype)) || (s = upload(ctx, &b, &dsl, slopes, (size_t)a->H, LASP_F32)) ||
        (kv_in && (s = upload(ctx, &b, &dkv, kv_in, ns, LASP_F32))) ||
        (s = upload(ctx, &b, &dout, NULL, nv, a->dtype)) ||
        (kv_out && (s = upload(ctx, &b, &dkvo, NULL, ns, LASP_F32))))
        goto done;
    if ((s = lasp_attn_fwd_cuda(ctx, a, dq, dk, dv, (const float *)dsl, (const float *)dkv, dout, (float *)dkvo, NULL)))
        goto done;
    if ((s = download(ctx, o, dout, nv, a->dtype))) goto done;
    if (kv_out) s = download(ctx, kv_out, dkvo, ns, LASP_F32);
done:
    dbufs_free(&b);
    return s;
}

extern "C" lasp_status lasp_attn_bwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q,
                                               const float *k, const float *v, const float *slopes,
                                               const float *kv_in, const float *do_, const float *dkv_out,
                                               float *dq, float *dk, float *dv, float *dkv_in) {
    lasp_err_clear(&ctx->err);
    LASP_TRY(host_checks(ctx, a, q, k, v, slopes, kv_in));
    if (!do_ || !dq || !dk || !dv) return lasp_fail(&ctx->err, LASP_ERR_ARG, "do, dq, dk and dv must not be NULL");
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e),
                 ns = (size_t)(a->B * a->H * a->d * a->e);
    LASP_TRY(check_host_finite(ctx, "do", do_, nv));
    LASP_TRY(check_host_finite(ctx, "dkv_out", dkv_out, ns));
    dbufs b = {{0}, 0};
    void *gq = NULL, *gk = NULL, *gv = NULL, *gsl = NULL, *gkv = NULL, *gdo = NULL, *gdkvo = NULL, *gdq = NULL,
         *gdk = NULL, *gdv = NULL, *gdkvi = NULL;
    lasp_status s;
    if ((s = upload(ctx, &b, &gq, q, nq, a->dtype)) || (s = upload(ctx, &b, &gk, k, nq, a->dtype)) ||
        (s = upload(ctx, &b, &gv, v, nv, a->dtype)) || (s = upload(ctx, &b, &gsl, slopes, (size_t)a->H, LASP_F32)) ||
        (kv_in && (s = upload(ctx, &b, &gkv, kv_in, ns, LASP_F32))) ||
        (s = upload(ctx, &b, &gdo, do_, nv, a->dtype)) ||
        (dkv_out && (s = upload(ctx, &b, &gdkvo, dkv_out, ns, LASP_F32))) ||
        (s = upload(ctx, &b, &gdq, NULL, nq, a->dtype)) || (s = upload(ctx, &b, &gdk, NULL, nq, a->dtype)) ||
        (s = upload(ctx, &b, &gdv, NULL, nv, a->dtype)) ||
        (dkv_in && (s = upload(ctx, &b, &gdkvi, NULL, ns, LASP_F32))))
        goto done;
    if ((s = lasp_attn_bwd_cuda(ctx, a, gq, gk, gv, (const float *)gsl, (const float *)gkv, gdo,
                                (const float *)gdkvo, gdq, gdk, gdv, (float *)gdkvi, NULL)))
        goto done;
    if ((s = download(ctx, dq, gdq, nq, a->dtype)) || (s = download(ctx, dk, gdk, nq, a->dtype)) ||
        (s = download(ctx, dv, gdv, nv, a->dtype)))
        goto done;
    if (dkv_in) s = download(ctx, dkv_in, gdkvi, ns, LASP_F32);
done:
    dbufs_free(&b);
    return s;
}
