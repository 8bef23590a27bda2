/* comm_nccl.c — the NCCL backend: device memory, one process per GPU, bootstrapped over MPI or joined
 * from an id.
 *
 * World: MPI is initialised (through the mpi backend's world), the node-local rank picks the GPU
 * (cudaSetDevice before any NCCL call), rank 0's ncclUniqueId is broadcast over MPI, and every rank
 * joins with ncclCommInitRank. Sub-communicators come from ncclCommSplit, each with an MPI twin for
 * host-side agreement (barrier, the bootstrap of nothing else). A world joined from an id
 * (lasp_comm_nccl_join: processes another launcher started, torchrun) has no MPI twin: its host-side
 * agreement is a reduction of one value through NCCL itself, waited for.
 *
 * Every operation is enqueued on the communicator's stream (a dedicated non-blocking stream unless
 * the caller sets one) and returns at once: no host synchronisation on the critical path. Ordering
 * with compute is the caller's, by CUDA events. lasp_comm_sync waits while polling
 * ncclCommGetAsyncError, so that a peer that died or a network error becomes a status (and the tools
 * then abort the whole job: ncclCommAbort, then MPI_Abort) instead of a hang. */
#ifdef LASP_HAVE_MPI

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"

typedef struct nccl_state {
    ncclComm_t nccl;
    MPI_Comm mpi;          /* same ranks, for host-side agreement */
    cudaStream_t stream;   /* where operations are enqueued */
    cudaStream_t own;      /* the communicator's own stream */
    double *scratch;       /* without an MPI twin: device memory for a host value's reduction */
    int device;
} nccl_state;

#define ST(c) ((nccl_state *)(c)->impl)

static ncclDataType_t nccl_type(lasp_dtype t) {
    switch (t) {
    case LASP_F64: return ncclFloat64;
    case LASP_BF16: return ncclBfloat16;
    case LASP_F16: return ncclFloat16;
    default: return ncclFloat32;
    }
}

static ncclRedOp_t nccl_op(lasp_reduce_op op) {
    return op == LASP_REDUCE_MAX ? ncclMax : op == LASP_REDUCE_MIN ? ncclMin : ncclSum;
}

static lasp_status nccl_fail(lasp_comm *c, ncclResult_t r, const char *what, lasp_err *err) {
    const char *last = c && c->impl ? ncclGetLastError(ST(c)->nccl) : NULL;
    return lasp_fail(err, LASP_ERR_COMM, "rank %d: %s failed: %s%s%s", c ? c->world_rank : -1, what,
                     ncclGetErrorString(r), last && *last ? ": " : "", last ? last : "");
}

static lasp_status cuda_fail(lasp_comm *c, cudaError_t e, const char *what, lasp_err *err) {
    return lasp_fail(err, LASP_ERR_CUDA, "rank %d: %s failed: %s", c->world_rank, what, cudaGetErrorString(e));
}

#define NCCL_TRY(c, call, what)                                      \
    do {                                                             \
        ncclResult_t nccl_r_ = (call);                               \
        if (nccl_r_ != ncclSuccess) return nccl_fail(c, nccl_r_, what, err); \
    } while (0)

/* NCCL reports failures of enqueued work (a peer that vanished, a broken link) only through here. */
static lasp_status check_async(lasp_comm *c, lasp_err *err) {
    ncclResult_t r = ncclSuccess;
    if (ncclCommGetAsyncError(ST(c)->nccl, &r) != ncclSuccess || (r != ncclSuccess && r != ncclInProgress))
        return nccl_fail(c, r, "an asynchronous NCCL operation", err);
    return LASP_OK;
}

static lasp_status make_state(lasp_comm *c, int device, lasp_err *err) {
    nccl_state *s = calloc(1, sizeof *s);
    if (!s) return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a communicator", c->world_rank);
    s->device = device;
    s->mpi = MPI_COMM_NULL;
    /* the highest priority: a transfer's kernel gets the next free SM ahead of the compute kernels
     * that fill the GPU meanwhile, so the chain's hop is not queued behind a whole kernel */
    int lo = 0, hi = 0;
    cudaDeviceGetStreamPriorityRange(&lo, &hi);
    cudaError_t e = cudaStreamCreateWithPriority(&s->own, cudaStreamNonBlocking, hi);
    if (e != cudaSuccess) {
        free(s);
        return cuda_fail(c, e, "cudaStreamCreateWithPriority", err);
    }
    s->stream = s->own;
    c->impl = s;
    return LASP_OK;
}

static void nccl_free(lasp_comm *c) {
    nccl_state *s = ST(c);
    if (!s) return;
    if (s->nccl) {
        cudaStreamSynchronize(s->stream);
        ncclCommDestroy(s->nccl);
    }
    if (s->own) cudaStreamDestroy(s->own);
    if (s->scratch) cudaFree(s->scratch);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && s->mpi != MPI_COMM_NULL) MPI_Comm_free(&s->mpi);
    if (!finalized && c->owns_init) MPI_Finalize();
    free(s);
    c->impl = NULL;
}

static lasp_status nccl_split(lasp_comm *c, int color, int key, lasp_comm *out, lasp_err *err) {
    LASP_TRY(make_state(out, ST(c)->device, err));
    nccl_state *n = ST(out);
    if (ST(c)->mpi != MPI_COMM_NULL) {
        if (MPI_Comm_split(ST(c)->mpi, color, key, &n->mpi) != MPI_SUCCESS) {
            nccl_free(out);
            return lasp_fail(err, LASP_ERR_COMM, "rank %d: MPI_Comm_split failed", c->world_rank);
        }
        MPI_Comm_set_errhandler(n->mpi, MPI_ERRORS_RETURN);
        MPI_Comm_rank(n->mpi, &out->rank);
        MPI_Comm_size(n->mpi, &out->size);
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    /* and no thread-block clusters: on Hopper NCCL launches some kernels (the collectives) in clusters of
     * CTAs that must share a GPC, which the few SMs left free, scattered over the GPCs, may never offer */
    if (out->max_ctas > 0) cfg.minCTAs = 1, cfg.maxCTAs = out->max_ctas, cfg.cgaClusterSize = 1;
    ncclResult_t r = ncclCommSplit(ST(c)->nccl, color, key, &n->nccl, out->max_ctas > 0 ? &cfg : NULL);
    if (r == ncclSuccess && n->mpi == MPI_COMM_NULL) { /* no twin to say where this rank landed: NCCL says */
        r = ncclCommUserRank(n->nccl, &out->rank);
        if (r == ncclSuccess) r = ncclCommCount(n->nccl, &out->size);
    }
    if (r != ncclSuccess) {
        lasp_status s = nccl_fail(c, r, "ncclCommSplit", err);
        nccl_free(out);
        return s;
    }
    return LASP_OK;
}

static lasp_status nccl_sendrecv(lasp_comm *c, const void *sbuf, size_t scount, int dst, void *rbuf, size_t rcount,
                                 int src, lasp_dtype t, lasp_err *err) {
    nccl_state *s = ST(c);
    /* one group: both halves progress together, so a chain or a ring of them cannot deadlock */
    NCCL_TRY(c, ncclGroupStart(), "ncclGroupStart");
    if (dst >= 0) NCCL_TRY(c, ncclSend(sbuf, scount, nccl_type(t), dst, s->nccl, s->stream), "ncclSend");
    if (src >= 0) NCCL_TRY(c, ncclRecv(rbuf, rcount, nccl_type(t), src, s->nccl, s->stream), "ncclRecv");
    NCCL_TRY(c, ncclGroupEnd(), "ncclGroupEnd");
    return check_async(c, err);
}

/* The halves are stream-ordered: posting enqueues, waiting only checks for errors. */
static lasp_status nccl_irecv(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype t, lasp_comm_req *req,
                              lasp_err *err) {
    req->buf = buf, req->bytes = count * lasp_dtype_size(t);
    NCCL_TRY(c, ncclRecv(buf, count, nccl_type(t), src, ST(c)->nccl, ST(c)->stream), "ncclRecv");
    return LASP_OK;
}

static lasp_status nccl_isend(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype t, lasp_comm_req *req,
                              lasp_err *err) {
    req->is_send = 1, req->buf = (void *)buf, req->bytes = count * lasp_dtype_size(t);
    NCCL_TRY(c, ncclSend(buf, count, nccl_type(t), dst, ST(c)->nccl, ST(c)->stream), "ncclSend");
    return LASP_OK;
}

static lasp_status nccl_wait(lasp_comm *c, lasp_comm_req *req, lasp_err *err) {
    req->done = 1;
    return check_async(c, err);
}

static lasp_status nccl_allreduce(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                  lasp_reduce_op op, lasp_err *err) {
    NCCL_TRY(c, ncclAllReduce(sbuf, rbuf, count, nccl_type(t), nccl_op(op), ST(c)->nccl, ST(c)->stream),
             "ncclAllReduce");
    return check_async(c, err);
}

static lasp_status nccl_reduce_scatter(lasp_comm *c, const void *sbuf, void *rbuf, size_t rcount, lasp_dtype t,
                                       lasp_reduce_op op, lasp_err *err) {
    /* NCCL's in place is recvbuf = sendbuf + rank·rcount: reduce there, then move this rank's block to the front */
    const size_t bytes = rcount * lasp_dtype_size(t);
    void *dst = sbuf == rbuf ? (char *)rbuf + (size_t)c->rank * bytes : rbuf;
    NCCL_TRY(c, ncclReduceScatter(sbuf, dst, rcount, nccl_type(t), nccl_op(op), ST(c)->nccl, ST(c)->stream),
             "ncclReduceScatter");
    if (dst != rbuf) {
        cudaError_t e = cudaMemcpyAsync(rbuf, dst, bytes, cudaMemcpyDeviceToDevice, ST(c)->stream);
        if (e != cudaSuccess) return cuda_fail(c, e, "cudaMemcpyAsync of the reduced block", err);
    }
    return check_async(c, err);
}

static lasp_status nccl_allgather(lasp_comm *c, const void *sbuf, void *rbuf, size_t scount, lasp_dtype t,
                                  lasp_err *err) {
    NCCL_TRY(c, ncclAllGather(sbuf, rbuf, scount, nccl_type(t), ST(c)->nccl, ST(c)->stream), "ncclAllGather");
    return check_async(c, err);
}

static lasp_status nccl_alltoall(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                                 lasp_err *err) {
    const size_t bytes = count * lasp_dtype_size(t);
    NCCL_TRY(c, ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < c->size; p++) {
        NCCL_TRY(c, ncclSend((const char *)sbuf + p * bytes, count, nccl_type(t), p, ST(c)->nccl, ST(c)->stream),
                 "ncclSend");
        NCCL_TRY(c, ncclRecv((char *)rbuf + p * bytes, count, nccl_type(t), p, ST(c)->nccl, ST(c)->stream),
                 "ncclRecv");
    }
    NCCL_TRY(c, ncclGroupEnd(), "ncclGroupEnd");
    return check_async(c, err);
}

static lasp_status nccl_bcast(lasp_comm *c, void *buf, size_t count, lasp_dtype t, int root, lasp_err *err) {
    NCCL_TRY(c, ncclBroadcast(buf, buf, count, nccl_type(t), root, ST(c)->nccl, ST(c)->stream), "ncclBroadcast");
    return check_async(c, err);
}

/* Waits for everything enqueued, polling for asynchronous errors; the communicator's timeout bounds the
 * wait, so a dead peer ends in an error rather than a hang. */
static lasp_status nccl_sync(lasp_comm *c, lasp_err *err) {
    const double limit = c->timeout_s;
    struct timespec t0, now, nap = {0, 100000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        cudaError_t e = cudaStreamQuery(ST(c)->stream);
        if (e == cudaSuccess) return check_async(c, err);
        if (e != cudaErrorNotReady) return cuda_fail(c, e, "waiting for the communication stream", err);
        LASP_TRY(check_async(c, err));
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - t0.tv_sec) + 1e-9 * (now.tv_nsec - t0.tv_nsec) > limit)
            return lasp_fail(err, LASP_ERR_COMM, "rank %d: NCCL operations did not finish within %.0f s (a peer "
                             "stopped or is far behind; hint: a longer timeout, lasp_comm_set_timeout or --timeout)", c->world_rank,
                             limit);
        nanosleep(&nap, NULL);
    }
}

static lasp_status nccl_host_max(lasp_comm *c, double *x, lasp_err *err);

static lasp_status nccl_barrier(lasp_comm *c, lasp_err *err) {
    LASP_TRY(nccl_sync(c, err));
    if (ST(c)->mpi == MPI_COMM_NULL) { /* a reduction every rank must enter */
        double x = 0;
        return nccl_host_max(c, &x, err);
    }
    if (MPI_Barrier(ST(c)->mpi) != MPI_SUCCESS)
        return lasp_fail(err, LASP_ERR_COMM, "rank %d: MPI_Barrier failed", c->world_rank);
    return LASP_OK;
}

/* Without MPI (a joined world) the process's exit, which lasp_comm_abort makes next, is what its launcher
 * sees and ends the others for */
static void nccl_abort(lasp_comm *c, int code) {
    if (c->impl && ST(c)->nccl) ncclCommAbort(ST(c)->nccl);
    int mpi_up = 0, mpi_down = 0;
    MPI_Initialized(&mpi_up);
    MPI_Finalized(&mpi_down);
    if (mpi_up && !mpi_down) MPI_Abort(MPI_COMM_WORLD, code);
}

static lasp_status nccl_set_stream(lasp_comm *c, void *stream, lasp_err *err) {
    (void)err;
    ST(c)->stream = stream ? (cudaStream_t)stream : ST(c)->own;
    return LASP_OK;
}

static void *nccl_stream(const lasp_comm *c) { return ST(c)->stream; }

/* ---- one-sided transfers: windows of NCCL symmetric memory --------------------------------------
 * The window is ncclMemAlloc'd and registered with NCCL_WIN_COLL_SYMMETRIC, so every rank of a load/store
 * team (NVLink) maps every other rank's: a put is then a kernel of this rank's storing straight into the
 * peer's memory and raising its counter (comm_nccl_window.cu), and no kernel of the peer's (a receive that
 * needs an SM, beside compute that holds them all) stands between the data and its use. Layout: the
 * caller's bytes, then the counters (n_flags unsigned). */
typedef struct nccl_window {
    ncclWindow_t win;    /* NULL for a window over one rank: plain device memory, no peer to map it */
    void **peer;         /* [size]: each rank's window base as this GPU addresses it */
    size_t flag_off;     /* the counters' offset in every window */
    unsigned *arrived;   /* a put's blocks counted, so that its last one raises the counter */
} nccl_window;

#define WIN(w) ((nccl_window *)(w)->impl)

/* The largest of a host value over the ranks (lasp_comm_agree's): through the communicator's MPI twin, or
 * without one through NCCL, waited for within the communicator's timeout */
static lasp_status nccl_host_max(lasp_comm *c, double *x, lasp_err *err) {
    nccl_state *s = ST(c);
    if (s->mpi == MPI_COMM_NULL) {
        if (!s->scratch && cudaMalloc((void **)&s->scratch, sizeof(double)) != cudaSuccess) {
            s->scratch = NULL;
            return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no device memory for the ranks' agreement", c->world_rank);
        }
        cudaError_t e = cudaMemcpyAsync(s->scratch, x, sizeof(double), cudaMemcpyHostToDevice, s->stream);
        if (e != cudaSuccess) return cuda_fail(c, e, "copying a value to agree on", err);
        NCCL_TRY(c, ncclAllReduce(s->scratch, s->scratch, 1, ncclFloat64, ncclMax, s->nccl, s->stream),
                 "ncclAllReduce (the ranks' agreement)");
        e = cudaMemcpyAsync(x, s->scratch, sizeof(double), cudaMemcpyDeviceToHost, s->stream);
        if (e != cudaSuccess) return cuda_fail(c, e, "copying the agreed value back", err);
        return nccl_sync(c, err);
    }
    double y = 0;
    if (MPI_Allreduce(x, &y, 1, MPI_DOUBLE, MPI_MAX, ST(c)->mpi) != MPI_SUCCESS)
        return lasp_fail(err, LASP_ERR_COMM, "rank %d: the ranks' host-side agreement failed", c->world_rank);
    *x = y;
    return LASP_OK;
}

/* Whether every rank says ok; a failed agreement counts as no. */
static int all_agree(lasp_comm *c, int ok) {
    double not_ok = !ok;
    lasp_err e = {0};
    return nccl_host_max(c, &not_ok, &e) == LASP_OK && not_ok == 0;
}

static void window_release(lasp_comm_window *w, int registered) {
    nccl_window *n = WIN(w);
    if (!n) return;
    if (registered) ncclCommWindowDeregister(ST(w->comm)->nccl, n->win);
    if (w->base && w->comm->size == 1) cudaFree(w->base);
    else if (w->base) ncclMemFree(w->base);
    if (n->arrived) cudaFree(n->arrived);
    free(n->peer);
    free(n);
    w->impl = NULL, w->base = NULL;
}

static lasp_status nccl_window_make(lasp_comm *c, lasp_comm_window *w, lasp_err *err) {
    nccl_window *n = calloc(1, sizeof *n);
    void **peer = calloc((size_t)c->size, sizeof *peer);
    if (!n || !peer) {
        free(n), free(peer);
        return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no memory for a window", c->world_rank);
    }
    n->peer = peer;
    w->impl = n;
    n->flag_off = (w->bytes + 255) / 256 * 256;
    const size_t total = n->flag_off + (size_t)w->n_flags * sizeof(unsigned);
    if (c->size == 1) { /* no peer: plain memory, which a put to oneself stores into */
        if (cudaMalloc(&w->base, total) != cudaSuccess || cudaMemset(w->base, 0, total) != cudaSuccess ||
            cudaMalloc((void **)&n->arrived, sizeof(unsigned)) != cudaSuccess ||
            cudaMemset(n->arrived, 0, sizeof(unsigned)) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
            window_release(w, 0);
            return lasp_fail(err, LASP_ERR_NOMEM, "rank %d: no device memory for a window of %zu bytes", c->world_rank,
                             total);
        }
        peer[0] = w->base;
        return LASP_OK;
    }
    /* zeroed before it is registered: once registration returns anywhere, a peer may already raise our
     * counters */
    int ok = lasp_nccl_lsa_size(ST(c)->nccl) == c->size && ncclMemAlloc(&w->base, total) == ncclSuccess &&
             cudaMemset(w->base, 0, total) == cudaSuccess && cudaMalloc((void **)&n->arrived, sizeof(unsigned)) ==
             cudaSuccess && cudaMemset(n->arrived, 0, sizeof(unsigned)) == cudaSuccess &&
             cudaDeviceSynchronize() == cudaSuccess;
    if (!all_agree(c, ok)) {
        window_release(w, 0);
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "rank %d: no one-sided window over %d ranks: %s", c->world_rank,
                         c->size, ok ? "another rank cannot make one" : "the ranks are not all reachable by loads and "
                         "stores (NVLink), or symmetric memory is unavailable (hint: NCCL_CUMEM_ENABLE=1)");
    }
    ncclResult_t r = ncclCommWindowRegister(ST(c)->nccl, w->base, total, &n->win, NCCL_WIN_COLL_SYMMETRIC);
    ok = r == ncclSuccess && n->win && lasp_nccl_peer_bases(n->win, c->size, n->peer) == 0;
    if (!all_agree(c, ok)) {
        /* every rank goes on without a window; where the registration did succeed the memory stays (leaked):
         * deregistering is collective, and a rank whose registration failed would never join */
        const char *last = ncclGetLastError(ST(c)->nccl);
        lasp_fail(err, LASP_ERR_UNSUPPORTED, "rank %d: no one-sided window: %s%s%s", c->world_rank,
                  r != ncclSuccess ? ncclGetErrorString(r) : ok ? "it failed on another rank" : "no peer addresses",
                  r != ncclSuccess && last && *last ? ": " : "", r != ncclSuccess && last ? last : "");
        if (r != ncclSuccess) window_release(w, 0);
        else free(n->peer), free(n), w->impl = NULL, w->base = NULL;
        return LASP_ERR_UNSUPPORTED;
    }
    return LASP_OK;
}

static void nccl_window_free(lasp_comm_window *w) {
    lasp_comm *c = w->comm;
    /* nothing of ours in flight, and no peer still writing into this window */
    cudaStreamSynchronize(ST(c)->stream);
    lasp_err e = {0};
    if (c->size > 1) nccl_barrier(c, &e);
    window_release(w, WIN(w)->win != NULL);
}

static lasp_status nccl_put_signal(lasp_comm_window *w, const void *src, size_t bytes, size_t offset, int peer,
                                   int flag, unsigned value, lasp_err *err) {
    nccl_window *n = WIN(w);
    char *base = (char *)n->peer[peer];
    int e = lasp_nccl_put(src, base + offset, bytes, (unsigned *)(base + n->flag_off) + flag, value, n->arrived,
                          ST(w->comm)->stream);
    if (e) return cuda_fail(w->comm, (cudaError_t)e, "launching a put", err);
    return LASP_OK;
}

static lasp_status nccl_wait_signal(lasp_comm_window *w, int flag, unsigned value, lasp_err *err) {
    const unsigned *mine = (const unsigned *)((const char *)w->base + WIN(w)->flag_off) + flag;
    int e = lasp_nccl_wait(mine, value, w->comm->timeout_s, ST(w->comm)->stream);
    if (e) return cuda_fail(w->comm, (cudaError_t)e, "launching a wait", err);
    return LASP_OK;
}

static const lasp_comm_ops NCCL_OPS = {
    .name = "nccl",
    .split = nccl_split,
    .free = nccl_free,
    .sendrecv = nccl_sendrecv,
    .irecv = nccl_irecv,
    .isend = nccl_isend,
    .wait = nccl_wait,
    .allreduce = nccl_allreduce,
    .reduce_scatter = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .alltoall = nccl_alltoall,
    .bcast = nccl_bcast,
    .barrier = nccl_barrier,
    .abort = nccl_abort,
    .set_stream = nccl_set_stream,
    .stream = nccl_stream,
    .sync = nccl_sync,
    .host_max = nccl_host_max,
    .window_make = nccl_window_make,
    .window_free = nccl_window_free,
    .put_signal = nccl_put_signal,
    .wait_signal = nccl_wait_signal,
};

/* One GPU per process: the rank among the processes of this node picks it. */
static lasp_status pick_device(lasp_comm *c, MPI_Comm world, int *device, lasp_err *err) {
    MPI_Comm node;
    int local = 0, n_local = 1, n_dev = 0;
    if (MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_rank(node, &local);
        MPI_Comm_size(node, &n_local);
        MPI_Comm_free(&node);
    }
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0)
        return lasp_fail(err, LASP_ERR_CUDA, "rank %d: no usable GPU (%s) (hint: the nccl backend needs one GPU per "
                         "process)", c->rank, e != cudaSuccess ? cudaGetErrorString(e) : "none found");
    if (n_local > n_dev)
        return lasp_fail(err, LASP_ERR_ARG, "rank %d: %d processes on this node but %d GPUs (hint: mpirun -np at "
                         "most the number of GPUs per node)", c->rank, n_local, n_dev);
    *device = local;
    e = cudaSetDevice(local);
    if (e != cudaSuccess) return cuda_fail(c, e, "cudaSetDevice", err);
    return LASP_OK;
}

static lasp_status nccl_world_init(lasp_comm *out, MPI_Comm mpi, lasp_err *err) {
    int device = 0;
    lasp_status s = pick_device(out, mpi, &device, err);
    /* every rank must agree before NCCL init, or the others would wait in it forever */
    int ok = s == LASP_OK, all_ok = 0;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, mpi);
    if (!all_ok)
        return s != LASP_OK ? s : lasp_fail(err, LASP_ERR_COMM, "rank %d: another rank has no usable GPU", out->rank);
    LASP_TRY(make_state(out, device, err));
    ST(out)->mpi = mpi;
    ncclUniqueId id;
    if (out->rank == 0) NCCL_TRY(out, ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi) != MPI_SUCCESS)
        return lasp_fail(err, LASP_ERR_COMM, "rank %d: broadcasting the NCCL id failed", out->rank);
    NCCL_TRY(out, ncclCommInitRank(&ST(out)->nccl, out->size, id, out->rank), "ncclCommInitRank");
    return LASP_OK;
}

lasp_status lasp_comm_nccl_world(int *argc, char ***argv, lasp_comm *out, lasp_err *err) {
    /* the MPI world first: it initialises MPI and gives rank and size */
    LASP_TRY(lasp_comm_mpi_world(argc, argv, out, err));
    MPI_Comm mpi;
    MPI_Comm_dup(MPI_COMM_WORLD, &mpi);
    MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
    const int owns_init = out->owns_init;
    out->owns_init = 0;  /* keep MPI initialised: only the mpi backend's handle goes */
    out->ops->free(out);
    out->impl = NULL;
    out->owns_init = owns_init;
    out->ops = &NCCL_OPS;
    out->backend = LASP_COMM_NCCL;
    out->world_rank = out->rank;
    lasp_status s = nccl_world_init(out, mpi, err);
    if (s != LASP_OK) {
        MPI_Comm_free(&mpi);
        if (out->impl) {
            ST(out)->mpi = MPI_COMM_NULL;
            nccl_free(out);  /* finalises MPI if it was ours */
        } else if (owns_init) {
            MPI_Finalize();
        }
    }
    return s;
}

/* ---- a world joined from an id: no MPI ------------------------------------------------------------ */

_Static_assert(sizeof(ncclUniqueId) == LASP_NCCL_ID_BYTES, "lasp.h's id size is NCCL's");

lasp_status lasp_comm_nccl_make_id(unsigned char *id, lasp_err *err) {
    ncclUniqueId u;
    const ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) return lasp_fail(err, LASP_ERR_COMM, "ncclGetUniqueId failed: %s", ncclGetErrorString(r));
    memcpy(id, &u, sizeof u);
    return LASP_OK;
}

lasp_status lasp_comm_nccl_join_world(const unsigned char *id, int rank, int size, int device, lasp_comm *out,
                                      lasp_err *err) {
    out->ops = &NCCL_OPS, out->backend = LASP_COMM_NCCL;
    out->rank = rank, out->size = size, out->world_rank = rank;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return lasp_fail(err, LASP_ERR_CUDA, "rank %d: GPU %d: %s (hint: one GPU per process, a device this process "
                         "sees)", rank, device, cudaGetErrorString(e));
    LASP_TRY(make_state(out, device, err));
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    const ncclResult_t r = ncclCommInitRank(&ST(out)->nccl, size, u, rank);
    if (r != ncclSuccess) {
        const lasp_status s = nccl_fail(out, r, "ncclCommInitRank", err);
        nccl_free(out);
        return s;
    }
    return LASP_OK;
}

#endif /* LASP_HAVE_MPI */
