/* shim_train.c — TEMPORARY stand-in on branch `train` for src/comm and src/sp, which branch `sp`
 * implements: the subset of comm.h / sp.h that the trainer uses (self and MPI backends, a plain
 * LASP chain). Exists only so the trainer can be tested before `sp` lands; deleted at that merge. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "comm/comm.h"
#include "sp/sp.h"

#ifdef LASP_HAVE_MPI
#include <mpi.h>
#endif

struct lasp_comm {
    int rank, size, owns_mpi;
    lasp_comm_stats stats;
#ifdef LASP_HAVE_MPI
    MPI_Comm mc;
#endif
};

lasp_status lasp_comm_world(lasp_comm_backend backend, int *argc, char ***argv, lasp_comm **out, lasp_err *err) {
    lasp_comm *c = calloc(1, sizeof *c);
    if (!c) return lasp_fail(err, LASP_ERR_NOMEM, "no memory");
    c->size = 1;
#ifdef LASP_HAVE_MPI
    c->mc = MPI_COMM_NULL;
    if (backend != LASP_COMM_SELF && (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE"))) {
        int init;
        MPI_Initialized(&init);
        if (!init) MPI_Init(argc, argv), c->owns_mpi = 1;
        MPI_Comm_dup(MPI_COMM_WORLD, &c->mc);
        MPI_Comm_rank(c->mc, &c->rank);
        MPI_Comm_size(c->mc, &c->size);
    }
#else
    (void)backend, (void)argc, (void)argv;
#endif
    *out = c;
    return LASP_OK;
}

lasp_status lasp_comm_split(lasp_comm *c, int color, int key, lasp_comm **out, lasp_err *err) {
    lasp_comm *n = calloc(1, sizeof *n);
    if (!n) return lasp_fail(err, LASP_ERR_NOMEM, "no memory");
    n->size = 1;
#ifdef LASP_HAVE_MPI
    n->mc = MPI_COMM_NULL;
    if (c->mc != MPI_COMM_NULL) {
        MPI_Comm_split(c->mc, color, key, &n->mc);
        MPI_Comm_rank(n->mc, &n->rank);
        MPI_Comm_size(n->mc, &n->size);
    }
#else
    (void)c, (void)color, (void)key;
#endif
    *out = n;
    return LASP_OK;
}

void lasp_comm_free(lasp_comm *c) {
    if (!c) return;
#ifdef LASP_HAVE_MPI
    if (c->mc != MPI_COMM_NULL) MPI_Comm_free(&c->mc);
    if (c->owns_mpi) MPI_Finalize();
#endif
    free(c);
}

int lasp_comm_rank(const lasp_comm *c) { return c->rank; }
int lasp_comm_size(const lasp_comm *c) { return c->size; }

#ifdef LASP_HAVE_MPI
static MPI_Datatype mt(lasp_dtype t) { return t == LASP_F64 ? MPI_DOUBLE : MPI_FLOAT; }
#endif

lasp_status lasp_comm_allreduce(lasp_comm *c, const void *s, void *r, size_t n, lasp_dtype t, lasp_reduce_op op,
                                lasp_err *err) {
    (void)op, (void)err;
    if (c->size == 1) {
        if (s != r) memcpy(r, s, n * lasp_dtype_size(t));
        return LASP_OK;
    }
#ifdef LASP_HAVE_MPI
    MPI_Allreduce(s == r ? MPI_IN_PLACE : s, r, (int)n, mt(t), MPI_SUM, c->mc);
#endif
    return LASP_OK;
}

lasp_status lasp_comm_reduce_scatter(lasp_comm *c, const void *s, void *r, size_t n, lasp_dtype t, lasp_reduce_op op,
                                     lasp_err *err) {
    (void)op, (void)err;
    if (c->size == 1) {
        memcpy(r, s, n * lasp_dtype_size(t));
        return LASP_OK;
    }
#ifdef LASP_HAVE_MPI
    MPI_Reduce_scatter_block(s, r, (int)n, mt(t), MPI_SUM, c->mc);
#endif
    return LASP_OK;
}

lasp_status lasp_comm_allgather(lasp_comm *c, const void *s, void *r, size_t n, lasp_dtype t, lasp_err *err) {
    (void)err;
    if (c->size == 1) {
        memcpy(r, s, n * lasp_dtype_size(t));
        return LASP_OK;
    }
#ifdef LASP_HAVE_MPI
    MPI_Allgather(s, (int)n, mt(t), r, (int)n, mt(t), c->mc);
#endif
    return LASP_OK;
}

lasp_status lasp_comm_bcast(lasp_comm *c, void *buf, size_t n, lasp_dtype t, int root, lasp_err *err) {
    (void)err;
#ifdef LASP_HAVE_MPI
    if (c->size > 1) MPI_Bcast(buf, (int)n, mt(t), root, c->mc);
#else
    (void)c, (void)buf, (void)n, (void)t, (void)root;
#endif
    return LASP_OK;
}

lasp_status lasp_comm_barrier(lasp_comm *c, lasp_err *err) {
    (void)err;
#ifdef LASP_HAVE_MPI
    if (c->size > 1) MPI_Barrier(c->mc);
#else
    (void)c;
#endif
    return LASP_OK;
}

void lasp_comm_abort(lasp_comm *c, const char *message) {
    fprintf(stderr, "rank %d: %s\n", c ? c->rank : 0, message);
#ifdef LASP_HAVE_MPI
    if (c && c->size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    exit(1);
}

lasp_status lasp_sp_init(lasp_comm *world, int sp_size, lasp_sp_mode mode, lasp_sp *out, lasp_err *err) {
    memset(out, 0, sizeof *out);
    const int W = lasp_comm_size(world), r = lasp_comm_rank(world);
    if (sp_size < 1 || W % sp_size)
        return lasp_fail(err, LASP_ERR_ARG, "--sp %d does not divide the world of %d ranks", sp_size, W);
    out->world = world, out->world_size = W, out->world_rank = r, out->mode = mode;
    out->sp_size = sp_size, out->sp_rank = r % sp_size, out->dp_size = W / sp_size, out->dp_rank = r / sp_size;
    LASP_TRY(lasp_comm_split(world, r / sp_size, r, &out->sp, err));
    return lasp_comm_split(world, r % sp_size, r, &out->dp, err);
}

void lasp_sp_free(lasp_sp *sp) {
    lasp_comm_free(sp->sp), lasp_comm_free(sp->dp);
    sp->sp = sp->dp = NULL;
}

void lasp_sp_cache_free(lasp_sp_cache *c) {
    free(c->kv_in);
    c->kv_in = NULL, c->n = 0;
}

#ifdef LASP_HAVE_MPI
static void xfer(lasp_sp *sp, float *send, int dst, float *recv, int src, size_t n) {
    MPI_Sendrecv(send, send ? (int)n : 0, MPI_FLOAT, send ? dst : MPI_PROC_NULL, 7, recv, recv ? (int)n : 0, MPI_FLOAT,
                 recv ? src : MPI_PROC_NULL, 7, sp->sp->mc, MPI_STATUS_IGNORE);
}
#endif

lasp_status lasp_sp_attn_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                             lasp_sp_cache *cache) {
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e);
    if (cache->n != ns) {
        free(cache->kv_in);
        cache->kv_in = calloc(ns, sizeof(float)), cache->n = ns;
    }
    float *kvo = malloc(ns * sizeof(float));
    memset(cache->kv_in, 0, ns * sizeof(float));
    if (sp->sp_rank == 0 && kv_in) memcpy(cache->kv_in, kv_in, ns * sizeof(float));
#ifdef LASP_HAVE_MPI
    if (sp->sp_rank > 0) xfer(sp, NULL, 0, cache->kv_in, sp->sp_rank - 1, ns);
#endif
    lasp_status s = lasp_attn_fwd(ctx, a, q, k, v, slopes, cache->kv_in, o, kvo);
#ifdef LASP_HAVE_MPI
    if (sp->sp_rank + 1 < sp->sp_size) xfer(sp, kvo, sp->sp_rank + 1, NULL, 0, ns);
#endif
    if (kv_out && sp->sp_rank + 1 == sp->sp_size) memcpy(kv_out, kvo, ns * sizeof(float));
    free(kvo);
    return s;
}

lasp_status lasp_sp_attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const lasp_sp_cache *cache, const float *do_,
                             const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in) {
    const size_t ns = (size_t)(a->B * a->H * a->d * a->e);
    float *dko = calloc(ns, sizeof(float)), *dki = malloc(ns * sizeof(float));
    if (sp->sp_rank + 1 == sp->sp_size && dkv_out) memcpy(dko, dkv_out, ns * sizeof(float));
#ifdef LASP_HAVE_MPI
    if (sp->sp_rank + 1 < sp->sp_size) xfer(sp, NULL, 0, dko, sp->sp_rank + 1, ns);
#endif
    lasp_status s = lasp_attn_bwd(ctx, a, q, k, v, slopes, cache->kv_in, do_, dko, dq, dk, dv, dki);
#ifdef LASP_HAVE_MPI
    if (sp->sp_rank > 0) xfer(sp, dki, sp->sp_rank - 1, NULL, 0, ns);
#endif
    if (dkv_in && sp->sp_rank == 0) memcpy(dkv_in, dki, ns * sizeof(float));
    free(dko), free(dki);
    return s;
}
