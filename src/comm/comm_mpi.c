/* comm_mpi.c — the MPI backend: host memory, any MPI (tested with Debian's OpenMPI).
 *
 * Communicators use MPI_ERRORS_RETURN so that a failed call becomes a status with MPI's own message,
 * and the caller decides (the tools abort the whole job through lasp_comm_abort). MPI is called from
 * the main thread only; OpenMP threads compute in between (MPI_THREAD_FUNNELED). */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

#define COMM(c) (*(MPI_Comm *)(c)->impl)

/* MPI counts are int: larger transfers go in pieces of at most this many elements. */
#define MPI_CHUNK ((size_t)1 << 30)

static MPI_Datatype mpi_type(lasp_dtype t) {
    switch (t) {
    case LASP_F32: return MPI_FLOAT;
    case LASP_F64: return MPI_DOUBLE;
    default: return MPI_UINT16_T;  /* bf16, f16: moved as bits; reductions on them are refused earlier */
    }
}

static MPI_Op mpi_op(lasp_reduce_op op) {
    return op == LASP_REDUCE_MAX ? MPI_MAX : op == LASP_REDUCE_MIN ? MPI_MIN : MPI_SUM;
}

static lasp_status mpi_fail(lasp_comm *c, int rc, const char *what, lasp_err *err) {
    char msg[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(rc, msg, &n) != MPI_SUCCESS) snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return lasp_fail(err, LASP_ERR_COMM, "rank %d: %s failed: %s", c->world_rank, what, msg);
}

#define MPI_TRY(c, call, what)                                  \
    do {                                                        \
        int mpi_rc_ = (call);                                   \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(c, mpi_rc_, what, err); \
    } while (0)

static lasp_status too_big(lasp_comm *c, size_t count, const char *what, lasp_err *err) {
    return lasp_fail(err, LASP_ERR_UNSUPPORTED, "rank %d: %s of %zu elements exceeds MPI's int count (hint: split "
                     "the transfer)", c->world_rank, what, count);
}

static lasp_status wrap(lasp_comm *c, MPI_Comm m, lasp_comm *out, lasp_err *err) {
    MPI_Comm *h = malloc(sizeof *h);
    if (!h) {
        MPI_Comm_free(&m);
        return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a communicator", c->world_rank);
    }
    *h = m;
    MPI_Comm_set_errhandler(m, MPI_ERRORS_RETURN);
    MPI_Comm_rank(m, &out->rank);
    MPI_Comm_size(m, &out->size);
    out->impl = h;
    return LASP_OK;
}

static lasp_status mpi_split(lasp_comm *c, int color, int key, lasp_comm *out, lasp_err *err) {
    MPI_Comm m;
    MPI_TRY(c, MPI_Comm_split(COMM(c), color, key, &m), "MPI_Comm_split");
    return wrap(c, m, out, err);
}

static void mpi_free(lasp_comm *c) {
    if (!c->impl) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        MPI_Comm_free((MPI_Comm *)c->impl);
        if (c->owns_init) MPI_Finalize();
    }
    free(c->impl);
}

static lasp_status mpi_sendrecv(lasp_comm *c, const void *sbuf, size_t scount, int dst, void *rbuf, size_t rcount,
                                int src, lasp_dtype t, lasp_err *err) {
    if (scount > INT_MAX || rcount > INT_MAX) return too_big(c, scount > rcount ? scount : rcount, "sendrecv", err);
    MPI_TRY(c,
            MPI_Sendrecv(sbuf, (int)scount, mpi_type(t), dst < 0 ? MPI_PROC_NULL : dst, 0, rbuf, (int)rcount,
                         mpi_type(t), src < 0 ? MPI_PROC_NULL : src, 0, COMM(c), MPI_STATUS_IGNORE),
            "MPI_Sendrecv");
    return LASP_OK;
}

static lasp_status mpi_post(lasp_comm *c, int is_send, void *buf, size_t count, int peer, lasp_dtype t,
                            lasp_comm_req *req, lasp_err *err) {
    if (count > INT_MAX) return too_big(c, count, is_send ? "isend" : "irecv", err);
    MPI_Request *r = malloc(sizeof *r);
    if (!r) return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a request", c->world_rank);
    int rc = is_send ? MPI_Isend(buf, (int)count, mpi_type(t), peer, 0, COMM(c), r)
                     : MPI_Irecv(buf, (int)count, mpi_type(t), peer, 0, COMM(c), r);
    if (rc != MPI_SUCCESS) {
        free(r);
        return mpi_fail(c, rc, is_send ? "MPI_Isend" : "MPI_Irecv", err);
    }
    req->is_send = is_send, req->buf = buf, req->bytes = count * lasp_dtype_size(t), req->impl = r;
    return LASP_OK;
}

static lasp_status mpi_irecv(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype t, lasp_comm_req *req,
                             lasp_err *err) {
    return mpi_post(c, 0, buf, count, src, t, req, err);
}

static lasp_status mpi_isend(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype t, lasp_comm_req *req,
                             lasp_err *err) {
    return mpi_post(c, 1, (void *)buf, count, dst, t, req, err);
}

static lasp_status mpi_wait(lasp_comm *c, lasp_comm_req *req, lasp_err *err) {
    MPI_Request *r = req->impl;
    int rc = MPI_Wait(r, MPI_STATUS_IGNORE);
    free(r);
    req->impl = NULL;
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, req->is_send ? "MPI_Wait (send)" : "MPI_Wait (receive)", err);
    return LASP_OK;
}

static lasp_status mpi_allreduce(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                 lasp_reduce_op op, lasp_err *err) {
    /* elementwise, so large counts can go in pieces */
    const size_t es = lasp_dtype_size(t);
    size_t off = 0;
    do {
        const size_t n = count - off < MPI_CHUNK ? count - off : MPI_CHUNK;
        const void *s = sbuf == rbuf ? MPI_IN_PLACE : (const char *)sbuf + off * es;
        MPI_TRY(c, MPI_Allreduce(s, (char *)rbuf + off * es, (int)n, mpi_type(t), mpi_op(op), COMM(c)),
                "MPI_Allreduce");
        off += n;
    } while (off < count);
    return LASP_OK;
}

static lasp_status mpi_reduce_scatter(lasp_comm *c, const void *sbuf, void *rbuf, size_t rcount, lasp_dtype t,
                                      lasp_reduce_op op, lasp_err *err) {
    if (rcount > INT_MAX) return too_big(c, rcount, "reduce_scatter", err);
    /* in place: MPI wants MPI_IN_PLACE with the full input in rbuf, and the result at its start —
     * which is not this rank's block; so reduce into a copy instead */
    if (sbuf == rbuf && c->size > 1) {
        const size_t bytes = rcount * lasp_dtype_size(t);
        void *tmp = malloc(bytes ? bytes : 1);
        if (!tmp) return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for reduce_scatter", c->world_rank);
        int rc = MPI_Reduce_scatter_block(sbuf, tmp, (int)rcount, mpi_type(t), mpi_op(op), COMM(c));
        if (rc == MPI_SUCCESS && bytes) memcpy(rbuf, tmp, bytes);
        free(tmp);
        if (rc != MPI_SUCCESS) return mpi_fail(c, rc, "MPI_Reduce_scatter_block", err);
        return LASP_OK;
    }
    MPI_TRY(c, MPI_Reduce_scatter_block(sbuf == rbuf ? MPI_IN_PLACE : sbuf, rbuf, (int)rcount, mpi_type(t),
                                        mpi_op(op), COMM(c)),
            "MPI_Reduce_scatter_block");
    return LASP_OK;
}

static lasp_status mpi_allgather(lasp_comm *c, const void *sbuf, void *rbuf, size_t scount, lasp_dtype t,
                                 lasp_err *err) {
    if (scount > INT_MAX) return too_big(c, scount, "allgather", err);
    /* in place in the MPI sense: this rank's block already sits at its place in rbuf */
    const void *s = sbuf == (const char *)rbuf + (size_t)c->rank * scount * lasp_dtype_size(t) ? MPI_IN_PLACE : sbuf;
    MPI_TRY(c, MPI_Allgather(s, (int)scount, mpi_type(t), rbuf, (int)scount, mpi_type(t), COMM(c)), "MPI_Allgather");
    return LASP_OK;
}

static lasp_status mpi_alltoall(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                lasp_err *err) {
    if (count > INT_MAX) return too_big(c, count, "alltoall", err);
    MPI_TRY(c, MPI_Alltoall(sbuf, (int)count, mpi_type(t), rbuf, (int)count, mpi_type(t), COMM(c)), "MPI_Alltoall");
    return LASP_OK;
}

static lasp_status mpi_bcast(lasp_comm *c, void *buf, size_t count, lasp_dtype t, int root, lasp_err *err) {
    if (count > INT_MAX) return too_big(c, count, "bcast", err);
    MPI_TRY(c, MPI_Bcast(buf, (int)count, mpi_type(t), root, COMM(c)), "MPI_Bcast");
    return LASP_OK;
}

static lasp_status mpi_barrier(lasp_comm *c, lasp_err *err) {
    MPI_TRY(c, MPI_Barrier(COMM(c)), "MPI_Barrier");
    return LASP_OK;
}

static void mpi_abort(lasp_comm *c, int code) {
    (void)c;
    /* the world, whatever communicator failed: every rank of the job must stop, not only a group */
    MPI_Abort(MPI_COMM_WORLD, code);
}

static const lasp_comm_ops MPI_OPS = {
    .name = "mpi",
    .split = mpi_split,
    .free = mpi_free,
    .sendrecv = mpi_sendrecv,
    .irecv = mpi_irecv,
    .isend = mpi_isend,
    .wait = mpi_wait,
    .allreduce = mpi_allreduce,
    .reduce_scatter = mpi_reduce_scatter,
    .allgather = mpi_allgather,
    .alltoall = mpi_alltoall,
    .bcast = mpi_bcast,
    .barrier = mpi_barrier,
    .abort = mpi_abort,
};

lasp_status lasp_comm_mpi_world(int *argc, char ***argv, lasp_comm *out, lasp_err *err) {
    int inited = 0, finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized)
        return lasp_fail(err, LASP_ERR_COMM, "MPI was already finalised in this process (hint: create the world "
                         "communicator once and free it last)");
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return lasp_fail(err, LASP_ERR_COMM, "MPI_Init_thread failed (hint: run under mpirun, or check the MPI "
                             "installation with `mpirun -np 2 hostname`)");
        out->owns_init = 1;
    }
    out->ops = &MPI_OPS;
    out->backend = LASP_COMM_MPI;
    MPI_Comm m;
    /* a duplicate, so that lasp's messages never match a user's on MPI_COMM_WORLD */
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &m);
    if (rc != MPI_SUCCESS) return lasp_fail(err, LASP_ERR_COMM, "MPI_Comm_dup(MPI_COMM_WORLD) failed");
    lasp_status s = wrap(out, m, out, err);
    if (s != LASP_OK && out->owns_init) MPI_Finalize();
    return s;
}
