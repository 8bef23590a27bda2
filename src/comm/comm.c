/* comm.c — the communicator: argument checks, traffic counters and dispatch to a backend, plus the
 * self backend (one rank: every collective is a copy), which needs no MPI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"
#include "core/dtype.h"

static double clock_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* Calls a backend operation and adds the time it took to the communicator's wait_ms. */
#define TIMED(c, call)                                  \
    do {                                                \
        const double timed_t0_ = clock_ms();            \
        lasp_status timed_s_ = (call);                  \
        (c)->stats.wait_ms += clock_ms() - timed_t0_;   \
        return timed_s_;                                \
    } while (0)

/* ---- self backend ----------------------------------------------------------------------------- */

typedef struct self_state {
    lasp_comm_req *pending;  /* posted halves still waiting for their partner */
} self_state;

static lasp_status self_split(lasp_comm *c, int color, int key, lasp_comm *out, lasp_err *err) {
    (void)c, (void)color, (void)key;
    self_state *s = calloc(1, sizeof *s);
    if (!s) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a communicator");
    out->impl = s;
    return LASP_OK;
}

static void self_free(lasp_comm *c) {
    free(c->impl);
}

static void copy_if(void *dst, const void *src, size_t bytes) {
    if (dst != src && bytes) memcpy(dst, src, bytes);
}

static lasp_status self_sendrecv(lasp_comm *c, const void *sbuf, size_t scount, int dst, void *rbuf, size_t rcount,
                                 int src, lasp_dtype t, lasp_err *err) {
    (void)c;
    if ((dst < 0) != (src < 0) || scount != rcount)
        return lasp_fail(err, LASP_ERR_COMM,
                         "one-rank sendrecv: a send of %zu elements to rank %d needs a receive of as many from "
                         "rank %d, got %zu from %d (it would never complete)", scount, dst, dst, rcount, src);
    if (dst >= 0) copy_if(rbuf, sbuf, scount * lasp_dtype_size(t));
    return LASP_OK;
}

/* A send and a receive to oneself complete together, whichever was posted first. */
static lasp_status self_post(lasp_comm *c, lasp_comm_req *req, lasp_err *err) {
    self_state *s = c->impl;
    for (lasp_comm_req **p = &s->pending; *p; p = &(*p)->next) {
        lasp_comm_req *o = *p;
        if (o->is_send == req->is_send) continue;
        lasp_comm_req *snd = req->is_send ? req : o, *rcv = req->is_send ? o : req;
        if (snd->bytes != rcv->bytes)
            return lasp_fail(err, LASP_ERR_COMM, "one-rank send of %zu bytes meets a receive of %zu bytes",
                             snd->bytes, rcv->bytes);
        copy_if(rcv->buf, snd->buf, snd->bytes);
        *p = o->next;
        o->done = req->done = 1;
        o->next = NULL;
        return LASP_OK;
    }
    req->next = s->pending;
    s->pending = req;
    return LASP_OK;
}

static lasp_status self_irecv(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype t, lasp_comm_req *req,
                              lasp_err *err) {
    (void)src;
    req->buf = buf, req->bytes = count * lasp_dtype_size(t);
    return self_post(c, req, err);
}

static lasp_status self_isend(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype t, lasp_comm_req *req,
                              lasp_err *err) {
    (void)dst;
    req->is_send = 1, req->buf = (void *)buf, req->bytes = count * lasp_dtype_size(t);
    return self_post(c, req, err);
}

static lasp_status self_wait(lasp_comm *c, lasp_comm_req *req, lasp_err *err) {
    if (req->done) return LASP_OK;
    self_state *s = c->impl;
    for (lasp_comm_req **p = &s->pending; *p; p = &(*p)->next)
        if (*p == req) {
            *p = req->next;
            break;
        }
    return lasp_fail(err, LASP_ERR_COMM, "one-rank %s of %zu bytes has no matching %s: it would wait forever",
                     req->is_send ? "send" : "receive", req->bytes, req->is_send ? "receive" : "send");
}

static lasp_status self_allreduce(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                  lasp_reduce_op op, lasp_err *err) {
    (void)c, (void)op, (void)err;
    copy_if(rbuf, sbuf, count * lasp_dtype_size(t));
    return LASP_OK;
}

static lasp_status self_allgather(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                  lasp_err *err) {
    (void)c, (void)err;
    copy_if(rbuf, sbuf, count * lasp_dtype_size(t));
    return LASP_OK;
}

static lasp_status self_alltoall(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                 lasp_err *err) {
    return self_allgather(c, sbuf, rbuf, count, t, err);
}

static lasp_status self_bcast(lasp_comm *c, void *buf, size_t count, lasp_dtype t, int root, lasp_err *err) {
    (void)c, (void)buf, (void)count, (void)t, (void)root, (void)err;
    return LASP_OK;
}

static lasp_status self_barrier(lasp_comm *c, lasp_err *err) {
    (void)c, (void)err;
    return LASP_OK;
}

static void self_abort(lasp_comm *c, int code) {
    (void)c;
    exit(code);  /* one rank: the job is this process */
}

static const lasp_comm_ops SELF_OPS = {
    .name = "self",
    .split = self_split,
    .free = self_free,
    .sendrecv = self_sendrecv,
    .irecv = self_irecv,
    .isend = self_isend,
    .wait = self_wait,
    .allreduce = self_allreduce,
    .reduce_scatter = self_allreduce,  /* one block of recv_count: the whole reduction */
    .allgather = self_allgather,
    .alltoall = self_alltoall,
    .bcast = self_bcast,
    .barrier = self_barrier,
    .abort = self_abort,
};

static lasp_status check_comm(const lasp_comm *c, const char *fn, lasp_err *err) {
    if (!c) return lasp_fail(err, LASP_ERR_ARG, "%s: communicator is NULL", fn);
    return LASP_OK;
}

/* ---- dispatch --------------------------------------------------------------------------------- */

int lasp_comm_launcher_size(void) {
    /* OpenMPI's mpirun, then PMI (MPICH's hydra, srun --mpi=pmi2) */
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 0;
}

#if !(defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI))
/* The nccl backend's calls in a build that has none of it */
static lasp_status no_nccl(lasp_err *err) {
    return lasp_fail(err, LASP_ERR_UNSUPPORTED, "this lasp was built without NCCL or MPI (hint: install CUDA, NCCL "
                     "and OpenMPI and rebuild; `lasp info` shows the build features)");
}
#endif

lasp_status lasp_comm_world(lasp_comm_backend backend, int *argc, char ***argv, lasp_comm **out, lasp_err *err) {
    if (!out) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_world: out is NULL");
    *out = NULL;
    lasp_comm *c = calloc(1, sizeof *c);
    if (!c) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the world communicator");
    c->is_world = 1;
    c->backend = backend;
    lasp_status s;
    switch (backend) {
    case LASP_COMM_SELF:
        c->ops = &SELF_OPS, c->size = 1;
        s = self_split(NULL, 0, 0, c, err);
        break;
    case LASP_COMM_MPI:
#ifdef LASP_HAVE_MPI
        s = lasp_comm_mpi_world(argc, argv, c, err);
#else
        (void)argc, (void)argv;
        s = lasp_fail(err, LASP_ERR_UNSUPPORTED,
                      "this lasp was built without MPI, so it cannot run on several ranks%s (hint: apt-get install "
                      "openmpi-bin libopenmpi-dev, then rebuild; `lasp info` shows the build features)",
                      lasp_comm_launcher_size() > 1 ? " (mpirun started this process as one of several)" : "");
#endif
        break;
    case LASP_COMM_NCCL:
#if defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
        s = lasp_comm_nccl_world(argc, argv, c, err);
#else
        s = no_nccl(err);
#endif
        break;
    default:
        s = lasp_fail(err, LASP_ERR_ARG, "unknown communicator backend %d (hint: self, mpi or nccl)", (int)backend);
    }
    if (s != LASP_OK) {
        free(c);
        return s;
    }
    c->world_rank = c->rank;
    c->timeout_s = LASP_COMM_TIMEOUT_S;
    *out = c;
    return LASP_OK;
}

lasp_status lasp_comm_nccl_id(unsigned char id[LASP_NCCL_ID_BYTES], lasp_err *err) {
    if (!id) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_nccl_id: id is NULL");
#if defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
    return lasp_comm_nccl_make_id(id, err);
#else
    return no_nccl(err);
#endif
}

lasp_status lasp_comm_nccl_join(const unsigned char id[LASP_NCCL_ID_BYTES], int rank, int size, int device,
                                lasp_comm **out, lasp_err *err) {
    if (!out) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_nccl_join: out is NULL");
    *out = NULL;
    if (!id) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_nccl_join: id is NULL (hint: rank 0's lasp_comm_nccl_id)");
    if (size < 1 || rank < 0 || rank >= size)
        return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_nccl_join: rank %d of %d ranks (hint: 0 ≤ rank < size)", rank,
                         size);
    if (device < 0) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_nccl_join: GPU %d (hint: a CUDA device index)", device);
#if defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
    lasp_comm *c = calloc(1, sizeof *c);
    if (!c) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the world communicator");
    c->is_world = 1;
    const lasp_status s = lasp_comm_nccl_join_world(id, rank, size, device, c, err);
    if (s != LASP_OK) {
        free(c);
        return s;
    }
    c->timeout_s = LASP_COMM_TIMEOUT_S;
    *out = c;
    return LASP_OK;
#else
    return no_nccl(err);
#endif
}

lasp_status lasp_comm_split(lasp_comm *c, int color, int key, lasp_comm **out, lasp_err *err) {
    return lasp_comm_split_lean(c, color, key, 0, out, err);
}

lasp_status lasp_comm_split_lean(lasp_comm *c, int color, int key, int max_ctas, lasp_comm **out, lasp_err *err) {
    if (!c || !out) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_split: communicator or out is NULL");
    *out = NULL;
    if (color < 0) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_split: color %d must be ≥ 0", color);
    if (max_ctas < 0) return lasp_fail(err, LASP_ERR_ARG, "lasp_comm_split: max_ctas %d must be ≥ 0", max_ctas);
    *out = NULL;
    lasp_comm *n = calloc(1, sizeof *n);
    if (!n) return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a communicator", c->world_rank);
    n->ops = c->ops, n->backend = c->backend, n->world_rank = c->world_rank, n->size = 1, n->max_ctas = max_ctas;
    n->timeout_s = c->timeout_s;
    lasp_status s = c->ops->split(c, color, key, n, err);
    if (s != LASP_OK) {
        free(n);
        return s;
    }
    *out = n;
    return LASP_OK;
}

void lasp_comm_free(lasp_comm *c) {
    if (!c) return;
    c->ops->free(c);
    free(c);
}

lasp_status lasp_comm_set_timeout(lasp_comm *c, double seconds, lasp_err *err) {
    LASP_TRY(check_comm(c, "lasp_comm_set_timeout", err));
    if (!(seconds > 0) || seconds > 1e7)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: a timeout of %g s (hint: seconds > 0, e.g. %.0f)", c->world_rank,
                         seconds, LASP_COMM_TIMEOUT_S);
    c->timeout_s = seconds;
    return LASP_OK;
}

int lasp_comm_rank(const lasp_comm *c) { return c ? c->rank : 0; }
int lasp_comm_size(const lasp_comm *c) { return c ? c->size : 1; }
lasp_comm_backend lasp_comm_backend_of(const lasp_comm *c) { return c ? c->backend : LASP_COMM_SELF; }
lasp_comm_stats lasp_comm_get_stats(const lasp_comm *c) { return c ? c->stats : (lasp_comm_stats){0}; }
void lasp_comm_reset_stats(lasp_comm *c) {
    if (c) memset(&c->stats, 0, sizeof c->stats);
}

/* ---- argument checks shared by every backend -------------------------------------------------- */


static lasp_status check_dtype(const lasp_comm *c, lasp_dtype t, const char *fn, lasp_err *err) {
    if (t != LASP_F32 && t != LASP_F64 && t != LASP_BF16 && t != LASP_F16)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: unknown dtype %d", c->world_rank, fn, (int)t);
    return LASP_OK;
}

static lasp_status check_peer(const lasp_comm *c, int peer, const char *what, const char *fn, lasp_err *err) {
    if (peer < -1 || peer >= c->size)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: %s rank %d is outside [0, %d) (−1 = none)", c->world_rank,
                         fn, what, peer, c->size);
    return LASP_OK;
}

static lasp_status check_buf(const lasp_comm *c, const void *p, size_t count, const char *what, const char *fn,
                             lasp_err *err) {
    if (!p && count)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: %s is NULL with %zu elements", c->world_rank, fn, what,
                         count);
    return LASP_OK;
}

static lasp_status check_op(const lasp_comm *c, lasp_reduce_op op, lasp_dtype t, const char *fn, lasp_err *err) {
    if (op != LASP_REDUCE_SUM && op != LASP_REDUCE_MAX && op != LASP_REDUCE_MIN)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: unknown reduction %d (hint: sum, max, min)", c->world_rank,
                         fn, (int)op);
    /* host reductions need arithmetic on the element type; the 16-bit types get it on the GPU backend */
    if (c->backend != LASP_COMM_NCCL && t != LASP_F32 && t != LASP_F64)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "rank %d: %s: reductions of %s need the NCCL backend (hint: "
                         "reduce f32 on the host)", c->world_rank, fn, lasp_dtype_name(t));
    return LASP_OK;
}

/* Bytes this rank sends in a collective, independent of the algorithm: the least any algorithm needs
 * (ring all-reduce 2(n−1)/n, all-gather and reduce-scatter (n−1)/n of the whole, the root of bcast). */
static void count_coll(lasp_comm *c, double bytes) {
    c->stats.coll_calls++;
    c->stats.coll_bytes += (uint64_t)(bytes + 0.5);
}

/* ---- point to point --------------------------------------------------------------------------- */

lasp_status lasp_comm_sendrecv(lasp_comm *c, const void *sendbuf, size_t send_count, int dst, void *recvbuf,
                               size_t recv_count, int src, lasp_dtype dtype, lasp_err *err) {
    static const char fn[] = "lasp_comm_sendrecv";
    LASP_TRY(check_comm(c, fn, err));
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_peer(c, dst, "destination", fn, err));
    LASP_TRY(check_peer(c, src, "source", fn, err));
    if (dst >= 0) LASP_TRY(check_buf(c, sendbuf, send_count, "sendbuf", fn, err));
    if (src >= 0) LASP_TRY(check_buf(c, recvbuf, recv_count, "recvbuf", fn, err));
    if (dst >= 0) {
        c->stats.p2p_msgs++;
        c->stats.p2p_bytes += send_count * lasp_dtype_size(dtype);
    }
    if (dst < 0 && src < 0) return LASP_OK;
    TIMED(c, c->ops->sendrecv(c, sendbuf, send_count, dst, recvbuf, recv_count, src, dtype, err));
}

static lasp_status post(lasp_comm *c, int is_send, const void *buf, size_t count, int peer, lasp_dtype dtype,
                        lasp_comm_req **req, lasp_err *err) {
    const char *fn = is_send ? "lasp_comm_isend" : "lasp_comm_irecv";
    LASP_TRY(check_comm(c, fn, err));
    if (!req) return lasp_fail(err, LASP_ERR_ARG, "%s: req is NULL", fn);
    *req = NULL;
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_buf(c, buf, count, "buf", fn, err));
    if (peer < 0 || peer >= c->size)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: peer rank %d is outside [0, %d)", c->world_rank, fn, peer,
                         c->size);
    lasp_comm_req *r = calloc(1, sizeof *r);
    if (!r) return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a request", c->world_rank);
    lasp_status s = is_send ? c->ops->isend(c, buf, count, peer, dtype, r, err)
                            : c->ops->irecv(c, (void *)buf, count, peer, dtype, r, err);
    if (s != LASP_OK) {
        free(r);
        return s;
    }
    if (is_send) {
        c->stats.p2p_msgs++;
        c->stats.p2p_bytes += count * lasp_dtype_size(dtype);
    }
    *req = r;
    return LASP_OK;
}

lasp_status lasp_comm_irecv(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype dtype, lasp_comm_req **req,
                            lasp_err *err) {
    return post(c, 0, buf, count, src, dtype, req, err);
}

lasp_status lasp_comm_isend(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype dtype,
                            lasp_comm_req **req, lasp_err *err) {
    return post(c, 1, buf, count, dst, dtype, req, err);
}

lasp_status lasp_comm_wait(lasp_comm *c, lasp_comm_req *req, lasp_err *err) {
    LASP_TRY(check_comm(c, "lasp_comm_wait", err));
    if (!req) return LASP_OK;  /* waiting on nothing, like MPI_REQUEST_NULL */
    const double t0 = clock_ms();
    lasp_status s = c->ops->wait(c, req, err);
    c->stats.wait_ms += clock_ms() - t0;
    free(req);
    return s;
}

/* ---- collectives ------------------------------------------------------------------------------ */

lasp_status lasp_comm_allreduce(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t count, lasp_dtype dtype,
                                lasp_reduce_op op, lasp_err *err) {
    static const char fn[] = "lasp_comm_allreduce";
    LASP_TRY(check_comm(c, fn, err));
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_op(c, op, dtype, fn, err));
    LASP_TRY(check_buf(c, sendbuf, count, "sendbuf", fn, err));
    LASP_TRY(check_buf(c, recvbuf, count, "recvbuf", fn, err));
    count_coll(c, 2.0 * (c->size - 1) / c->size * (double)(count * lasp_dtype_size(dtype)));
    TIMED(c, c->ops->allreduce(c, sendbuf, recvbuf, count, dtype, op, err));
}

lasp_status lasp_comm_reduce_scatter(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t recv_count,
                                     lasp_dtype dtype, lasp_reduce_op op, lasp_err *err) {
    static const char fn[] = "lasp_comm_reduce_scatter";
    LASP_TRY(check_comm(c, fn, err));
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_op(c, op, dtype, fn, err));
    LASP_TRY(check_buf(c, sendbuf, recv_count * (size_t)c->size, "sendbuf", fn, err));
    LASP_TRY(check_buf(c, recvbuf, recv_count, "recvbuf", fn, err));
    count_coll(c, (double)(c->size - 1) * (double)(recv_count * lasp_dtype_size(dtype)));
    TIMED(c, c->ops->reduce_scatter(c, sendbuf, recvbuf, recv_count, dtype, op, err));
}

lasp_status lasp_comm_allgather(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t send_count, lasp_dtype dtype,
                                lasp_err *err) {
    static const char fn[] = "lasp_comm_allgather";
    LASP_TRY(check_comm(c, fn, err));
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_buf(c, sendbuf, send_count, "sendbuf", fn, err));
    LASP_TRY(check_buf(c, recvbuf, send_count * (size_t)c->size, "recvbuf", fn, err));
    count_coll(c, (double)(c->size - 1) * (double)(send_count * lasp_dtype_size(dtype)));
    TIMED(c, c->ops->allgather(c, sendbuf, recvbuf, send_count, dtype, err));
}

lasp_status lasp_comm_alltoall(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t count, lasp_dtype dtype,
                               lasp_err *err) {
    static const char fn[] = "lasp_comm_alltoall";
    LASP_TRY(check_comm(c, fn, err));
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_buf(c, sendbuf, count * (size_t)c->size, "sendbuf", fn, err));
    LASP_TRY(check_buf(c, recvbuf, count * (size_t)c->size, "recvbuf", fn, err));
    if (sendbuf == recvbuf && count && c->size > 1)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: in place is not supported (hint: separate buffers)",
                         c->world_rank, fn);
    count_coll(c, (double)(c->size - 1) * (double)(count * lasp_dtype_size(dtype)));
    TIMED(c, c->ops->alltoall(c, sendbuf, recvbuf, count, dtype, err));
}

lasp_status lasp_comm_bcast(lasp_comm *c, void *buf, size_t count, lasp_dtype dtype, int root, lasp_err *err) {
    static const char fn[] = "lasp_comm_bcast";
    LASP_TRY(check_comm(c, fn, err));
    LASP_TRY(check_dtype(c, dtype, fn, err));
    LASP_TRY(check_buf(c, buf, count, "buf", fn, err));
    if (root < 0 || root >= c->size)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: root %d is outside [0, %d)", c->world_rank, fn, root,
                         c->size);
    count_coll(c, c->rank == root && c->size > 1 ? (double)(count * lasp_dtype_size(dtype)) : 0.0);
    TIMED(c, c->ops->bcast(c, buf, count, dtype, root, err));
}

lasp_status lasp_comm_barrier(lasp_comm *c, lasp_err *err) {
    LASP_TRY(check_comm(c, "lasp_comm_barrier", err));
    count_coll(c, 0);
    TIMED(c, c->ops->barrier(c, err));
}

lasp_status lasp_comm_agree(lasp_comm *c, lasp_status s, lasp_err *err) {
    LASP_TRY(check_comm(c, "lasp_comm_agree", err));
    if (c->size == 1) return s;
    double x = s, y = s;
    lasp_err e2 = {0};
    const lasp_status r = c->ops->host_max ? c->ops->host_max(c, &y, &e2)
                                           : lasp_comm_allreduce(c, &x, &y, 1, LASP_F64, LASP_REDUCE_MAX, &e2);
    if (r != LASP_OK) return lasp_fail(err, LASP_ERR_COMM, "agreeing on how every rank fared: %s", e2.msg);
    if (s == LASP_OK && y != 0) return lasp_fail(err, (lasp_status)y, "another rank failed (see its message)");
    return s;
}

void lasp_comm_abort(lasp_comm *c, const char *message) {
    fprintf(stderr, "lasp: rank %d: %s\n", c ? c->world_rank : 0, message ? message : "aborting");
    fflush(stderr);
    fflush(stdout);
    if (c) c->ops->abort(c, 1);
    exit(1);
}

/* ---- device backends: the stream operations are ordered on ------------------------------------ */

lasp_status lasp_comm_set_stream(lasp_comm *c, void *cuda_stream, lasp_err *err) {
    LASP_TRY(check_comm(c, "lasp_comm_set_stream", err));
    if (!c->ops->set_stream)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "rank %d: the %s backend works on host memory and has no CUDA "
                         "stream (hint: the nccl backend)", c->world_rank, c->ops->name);
    return c->ops->set_stream(c, cuda_stream, err);
}

void *lasp_comm_stream(const lasp_comm *c) { return c && c->ops->stream ? c->ops->stream(c) : NULL; }

lasp_status lasp_comm_sync(lasp_comm *c, lasp_err *err) {
    LASP_TRY(check_comm(c, "lasp_comm_sync", err));
    if (!c->ops->sync) return LASP_OK;
    TIMED(c, c->ops->sync(c, err));
}

/* ---- one-sided transfers (device backends) ---------------------------------------------------- */

lasp_status lasp_comm_window_make(lasp_comm *c, size_t bytes, int n_flags, lasp_comm_window **out, lasp_err *err) {
    static const char fn[] = "lasp_comm_window_make";
    LASP_TRY(check_comm(c, fn, err));
    if (!out) return lasp_fail(err, LASP_ERR_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!c->ops->window_make)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "rank %d: the %s backend has no one-sided transfers (hint: the "
                         "nccl backend, on GPUs that reach each other by NVLink)", c->world_rank, c->ops->name);
    if (n_flags < 1 || bytes % 16)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: %zu bytes and %d flags (hint: a multiple of 16 bytes, at "
                         "least one flag)", c->world_rank, fn, bytes, n_flags);
    lasp_comm_window *w = calloc(1, sizeof *w);
    if (!w) return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a window", c->world_rank);
    w->comm = c, w->bytes = bytes, w->n_flags = n_flags;
    lasp_status s = c->ops->window_make(c, w, err);
    if (s != LASP_OK) {
        free(w);
        return s;
    }
    *out = w;
    return LASP_OK;
}

void *lasp_comm_window_base(const lasp_comm_window *w) { return w ? w->base : NULL; }
size_t lasp_comm_window_bytes(const lasp_comm_window *w) { return w ? w->bytes : 0; }

static lasp_status check_flag(const lasp_comm_window *w, int flag, const char *fn, lasp_err *err) {
    if (!w) return lasp_fail(err, LASP_ERR_ARG, "%s: the window is NULL", fn);
    if (flag < 0 || flag >= w->n_flags)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: flag %d is outside [0, %d)", w->comm->world_rank, fn, flag,
                         w->n_flags);
    return LASP_OK;
}

lasp_status lasp_comm_put_signal(lasp_comm_window *w, const void *src, size_t bytes, size_t offset, int peer, int flag,
                                 unsigned value, lasp_err *err) {
    static const char fn[] = "lasp_comm_put_signal";
    LASP_TRY(check_flag(w, flag, fn, err));
    lasp_comm *c = w->comm;
    if (peer < 0 || peer >= c->size)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: peer rank %d is outside [0, %d)", c->world_rank, fn, peer,
                         c->size);
    if (offset > w->bytes || bytes > w->bytes - offset)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: %zu bytes at offset %zu overrun the window's %zu",
                         c->world_rank, fn, bytes, offset, w->bytes);
    if (bytes % 16 || offset % 16 || lasp_misaligned16(src) || (bytes && !src))
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %s: %zu bytes at offset %zu from %p (hint: multiples of 16 "
                         "bytes, src 16-byte aligned)", c->world_rank, fn, bytes, offset, src);
    c->stats.p2p_msgs++;
    c->stats.p2p_bytes += bytes;
    TIMED(c, c->ops->put_signal(w, src, bytes, offset, peer, flag, value, err));
}

lasp_status lasp_comm_wait_signal(lasp_comm_window *w, int flag, unsigned value, lasp_err *err) {
    LASP_TRY(check_flag(w, flag, "lasp_comm_wait_signal", err));
    TIMED(w->comm, w->comm->ops->wait_signal(w, flag, value, err));
}

void lasp_comm_window_free(lasp_comm_window *w) {
    if (!w) return;
    w->comm->ops->window_free(w);
    free(w);
}
