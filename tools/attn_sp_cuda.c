/* attn_sp_cuda.c — the GPU half of `lasp attn --device cuda` under mpirun: this rank's piece goes to
 * its GPU in the chosen dtype, runs through the SP layer over NCCL, and comes back as host f32 for
 * the gather on rank 0 (cmd_attn_sp.c). */
#include "attn_io.h"

#if defined(LASP_HAVE_CUDA) && defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

typedef struct dev_bufs {
    void *p[16];
    int n;
} dev_bufs;

/* A device buffer of n elements of t, from host f32 x (converted) or uninitialised if x is NULL. */
static void *up(dev_bufs *b, const float *x, size_t n, lasp_dtype t) {
    void *d = NULL;
    if (cudaMalloc(&d, (n ? n : 1) * lasp_dtype_size(t)) != cudaSuccess) return NULL;
    b->p[b->n++] = d;
    if (!x) return d;
    void *h = malloc(n * lasp_dtype_size(t));
    if (!h) return NULL;
    lasp_convert(h, t, x, LASP_F32, n);
    cudaError_t e = cudaMemcpy(d, h, n * lasp_dtype_size(t), cudaMemcpyHostToDevice);
    free(h);
    return e == cudaSuccess ? d : NULL;
}

static int down(float *x, const void *d, size_t n, lasp_dtype t) {
    void *h = malloc(n * lasp_dtype_size(t));
    if (!h) return 1;
    cudaError_t e = cudaMemcpy(h, d, n * lasp_dtype_size(t), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) lasp_convert(x, LASP_F32, h, t, n);
    free(h);
    return e != cudaSuccess;
}

int attn_sp_piece_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const attn_piece *p, char *msg,
                       size_t msg_n) {
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e),
                 ns = (size_t)(a->B * a->H * a->d * a->e);
    const lasp_dtype t = a->dtype;
    dev_bufs b = {{0}, 0};
    int rc = 1;
    void *q = up(&b, p->q, nq, t), *k = up(&b, p->k, nq, t), *v = up(&b, p->v, nv, t), *o = up(&b, NULL, nv, t);
    float *sl = up(&b, p->slopes, (size_t)a->H, LASP_F32);
    float *kvi = p->kv_in ? up(&b, p->kv_in, ns, LASP_F32) : NULL, *kvo = p->kv_out ? up(&b, NULL, ns, LASP_F32) : NULL;
    void *dO = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    float *dkvo = NULL, *dkvi = NULL;
    if (p->do_) {
        dO = up(&b, p->do_, nv, t), dq = up(&b, NULL, nq, t), dk = up(&b, NULL, nq, t), dv = up(&b, NULL, nv, t);
        dkvo = p->dkv_out ? up(&b, p->dkv_out, ns, LASP_F32) : NULL;
        dkvi = p->dkv_in ? up(&b, NULL, ns, LASP_F32) : NULL;
    }
    lasp_sp_cache *cache = NULL;
    lasp_err err = {0};
    if (!q || !k || !v || !o || !sl || (p->kv_in && !kvi) || (p->kv_out && !kvo) ||
        (p->do_ && (!dO || !dq || !dk || !dv || (p->dkv_out && !dkvo) || (p->dkv_in && !dkvi)))) {
        snprintf(msg, msg_n, "no GPU memory for this rank's piece (%zu + %zu elements of %s)", nq, nv,
                 lasp_dtype_name(t));
        goto done;
    }
    if (lasp_sp_attn_fwd(ctx, sp, a, q, k, v, sl, kvi, o, kvo, &cache) != LASP_OK ||
        (p->do_ && lasp_sp_attn_bwd(ctx, sp, a, q, k, v, sl, cache, dO, dkvo, dq, dk, dv, dkvi) != LASP_OK)) {
        snprintf(msg, msg_n, "%s", lasp_ctx_error(ctx));
        goto done;
    }
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess || lasp_comm_sync(lasp_sp_group(sp), &err) != LASP_OK) {
        snprintf(msg, msg_n, "%s", e != cudaSuccess ? cudaGetErrorString(e) : err.msg);
        goto done;
    }
    if (down(p->o, o, nv, t) || (kvo && down(p->kv_out, kvo, ns, LASP_F32)) ||
        (p->do_ && (down(p->dq, dq, nq, t) || down(p->dk, dk, nq, t) || down(p->dv, dv, nv, t) ||
                    (dkvi && down(p->dkv_in, dkvi, ns, LASP_F32))))) {
        snprintf(msg, msg_n, "copying the results from the GPU failed");
        goto done;
    }
    rc = 0;
done:
    lasp_sp_cache_free(cache);
    for (int i = 0; i < b.n; i++) cudaFree(b.p[i]);
    return rc;
}

#else

#include <stdio.h>

int attn_sp_piece_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const attn_piece *p, char *msg,
                       size_t msg_n) {
    (void)ctx, (void)sp, (void)a, (void)p;
    snprintf(msg, msg_n, "this build has no CUDA + NCCL + MPI (hint: `lasp info` lists the features)");
    return 1;
}

#endif
