/* ctx.c — context lifetime and build information. */
#include "core/ctx.h"

#include <stdlib.h>

lasp_ctx_params lasp_ctx_default_params(void) {
    lasp_ctx_params p = {.n_threads = 0, .log_level = 1, .kernels = LASP_KERNELS_AUTO};
    return p;
}

lasp_status lasp_ctx_create(const lasp_ctx_params *params, lasp_ctx **out) {
    if (!out) return LASP_ERR_ARG;
    *out = NULL;
    const lasp_ctx_params p = params ? *params : lasp_ctx_default_params();
    if (p.n_threads < 0 || p.n_threads > LASP_MAX_THREADS || p.log_level < 0 || p.log_level > 3 ||
        (p.kernels != LASP_KERNELS_AUTO && p.kernels != LASP_KERNELS_SM80))
        return LASP_ERR_ARG;
    lasp_ctx *c = calloc(1, sizeof *c);
    if (!c) return LASP_ERR_NOMEM;
    c->params = p;
    *out = c;
    return LASP_OK;
}

void lasp_ctx_free(lasp_ctx *ctx) {
    if (!ctx) return;
    if (ctx->cuda && ctx->cuda_free) ctx->cuda_free(ctx->cuda);
    free(ctx);
}

const char *lasp_ctx_error(const lasp_ctx *ctx) { return ctx ? ctx->err.msg : ""; }

lasp_build_info lasp_get_build_info(void) {
    lasp_build_info b = {0};
#ifdef _OPENMP
    b.has_openmp = 1;
#endif
#ifdef LASP_HAVE_MPI
    b.has_mpi = 1;
#endif
#ifdef LASP_HAVE_CUDA
    b.has_cuda = 1;
#endif
#ifdef LASP_HAVE_NCCL
    b.has_nccl = 1;
#endif
#ifdef LASP_HAVE_BLAS
    b.has_blas = 1;
#endif
#if defined(__clang__)
    b.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
    b.compiler = "gcc " __VERSION__;
#else
    b.compiler = "unknown";
#endif
    b.version = LASP_VERSION_STRING;
    return b;
}
