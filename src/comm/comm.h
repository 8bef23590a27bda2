/* comm.h — one communicator interface, three backends (DESIGN.md "Communication and launch"):
 *   self  one rank, no MPI needed (every collective is a copy)
 *   mpi   host memory over MPI (Debian's OpenMPI)
 *   nccl  device memory over NCCL, bootstrapped by MPI (GPU builds; a later issue)
 * Counts are in elements of `dtype`, never bytes. Every call returns a status; a failure records a
 * message naming the rank. Each communicator counts what it sends, so tests can assert on it. */
#ifndef LASP_COMM_H
#define LASP_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lasp_comm_backend {
    LASP_COMM_SELF = 0,
    LASP_COMM_MPI = 1,
    LASP_COMM_NCCL = 2,
} lasp_comm_backend;

typedef enum lasp_reduce_op {
    LASP_REDUCE_SUM = 0,
    LASP_REDUCE_MAX = 1,
    LASP_REDUCE_MIN = 2,
} lasp_reduce_op;

typedef struct lasp_comm lasp_comm;

/* Traffic this communicator originated (sends of p2p, contributions to collectives). */
typedef struct lasp_comm_stats {
    uint64_t p2p_msgs;      /* point-to-point messages sent */
    uint64_t p2p_bytes;     /* bytes in them */
    uint64_t coll_calls;    /* collectives entered */
    uint64_t coll_bytes;    /* bytes this rank sent in collectives (algorithm-independent estimate) */
    double wait_ms;         /* time spent inside this communicator's calls (for device backends: enqueueing,
                               and waiting in lasp_comm_sync) — what communication cost this rank */
} lasp_comm_stats;

/* The world: MPI_COMM_WORLD when lasp runs under mpirun (MPI initialised here if needed), else self.
 * `backend` LASP_COMM_SELF forces one rank. */
lasp_status lasp_comm_world(lasp_comm_backend backend, int *argc, char ***argv, lasp_comm **out, lasp_err *err);
/* Ranks with equal color form a new communicator, ordered by key (collective over c). */
lasp_status lasp_comm_split(lasp_comm *c, int color, int key, lasp_comm **out, lasp_err *err);
/* The same, for messages that travel while compute kernels fill the GPU: a device backend runs each of the
 * new communicator's operations on at most max_ctas thread blocks (NCCL's maxCTAs; 0: its default), so that
 * they fit on the SMs the compute leaves free (lasp_attn_cuda_sp_leave_sms). Host backends ignore it. */
lasp_status lasp_comm_split_lean(lasp_comm *c, int color, int key, int max_ctas, lasp_comm **out, lasp_err *err);
void lasp_comm_free(lasp_comm *c);  /* the world last; finalises MPI if lasp initialised it */

/* Ranks a process launcher (mpirun, srun) says this job has, from its environment; 0 if none
 * started this process. Lets a tool choose the mpi backend only when it runs under one. */
int lasp_comm_launcher_size(void);

int lasp_comm_rank(const lasp_comm *c);
int lasp_comm_size(const lasp_comm *c);
lasp_comm_backend lasp_comm_backend_of(const lasp_comm *c);
lasp_comm_stats lasp_comm_get_stats(const lasp_comm *c);
void lasp_comm_reset_stats(lasp_comm *c);

/* Point-to-point, grouped: send to `dst` and receive from `src` at once (either may be −1 = none),
 * so a chain of neighbours never deadlocks. Blocking. */
lasp_status lasp_comm_sendrecv(lasp_comm *c, const void *sendbuf, size_t send_count, int dst, void *recvbuf,
                               size_t recv_count, int src, lasp_dtype dtype, lasp_err *err);

/* Non-blocking halves, for overlapping a transfer with computation (MATH.md §3). */
typedef struct lasp_comm_req lasp_comm_req;
lasp_status lasp_comm_irecv(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype dtype, lasp_comm_req **req,
                            lasp_err *err);
lasp_status lasp_comm_isend(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype dtype,
                            lasp_comm_req **req, lasp_err *err);
lasp_status lasp_comm_wait(lasp_comm *c, lasp_comm_req *req, lasp_err *err);  /* frees req */

/* Collectives (sendbuf == recvbuf means in place where MPI allows it). */
lasp_status lasp_comm_allreduce(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t count, lasp_dtype dtype,
                                lasp_reduce_op op, lasp_err *err);
/* recvbuf gets this rank's block of recv_count elements of the reduction of size·recv_count. */
lasp_status lasp_comm_reduce_scatter(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t recv_count,
                                     lasp_dtype dtype, lasp_reduce_op op, lasp_err *err);
/* recvbuf = concatenation over ranks of send_count elements each. */
lasp_status lasp_comm_allgather(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t send_count, lasp_dtype dtype,
                                lasp_err *err);
/* Block i of sendbuf (count elements) goes to rank i; block j of recvbuf comes from rank j. */
lasp_status lasp_comm_alltoall(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t count, lasp_dtype dtype,
                               lasp_err *err);
lasp_status lasp_comm_bcast(lasp_comm *c, void *buf, size_t count, lasp_dtype dtype, int root, lasp_err *err);
lasp_status lasp_comm_barrier(lasp_comm *c, lasp_err *err);

/* Device backends (nccl) are stream-ordered, like NCCL itself: a call returns once the operation is
 * enqueued on the communicator's CUDA stream, and work enqueued after it on that stream sees its
 * result; lasp_comm_wait only checks for errors. lasp_comm_sync blocks until everything enqueued
 * has finished (and turns NCCL's asynchronous errors into a status). Host backends (self, mpi) are
 * complete when a call returns: for them these are no-ops. */
lasp_status lasp_comm_set_stream(lasp_comm *c, void *cuda_stream, lasp_err *err);  /* NULL = own stream */
void *lasp_comm_stream(const lasp_comm *c);
lasp_status lasp_comm_sync(lasp_comm *c, lasp_err *err);

/* One-sided transfers, for states that must arrive with no kernel of the receiver's in the way (device
 * backends whose ranks reach each other's memory by loads and stores: NVLink). A window is `bytes` of
 * device memory on every rank plus n_flags counters, made collectively (zeroed); a put copies `bytes`
 * from src into the peer's window at `offset` and then raises the peer's counter `flag` to `value`; a wait
 * holds the communicator's stream until this rank's counter `flag` has reached `value`. Both are
 * stream-ordered on the communicator's stream and need no host synchronisation. Counters compare modulo
 * 2^32 (reached: (int)(counter − value) ≥ 0), so a sequence number may wrap. A put's src, offset and bytes
 * are multiples of 16 bytes (bytes may be 0: the counter alone). Reusing a window region is the caller's
 * to order (the receiver acknowledges with a put of its own). LASP_ERR_UNSUPPORTED where the backend or the
 * machine cannot (host backends; peers without load/store access; NCCL without symmetric memory): use
 * send/receive then. A wait that is never satisfied ends in a kernel error after LASP_NCCL_TIMEOUT seconds
 * (default 300), not a hang. */
typedef struct lasp_comm_window lasp_comm_window;
lasp_status lasp_comm_window_make(lasp_comm *c, size_t bytes, int n_flags, lasp_comm_window **out, lasp_err *err);
void *lasp_comm_window_base(const lasp_comm_window *w);  /* this rank's `bytes` (device memory) */
size_t lasp_comm_window_bytes(const lasp_comm_window *w);
lasp_status lasp_comm_put_signal(lasp_comm_window *w, const void *src, size_t bytes, size_t offset, int peer, int flag,
                                 unsigned value, lasp_err *err);
lasp_status lasp_comm_wait_signal(lasp_comm_window *w, int flag, unsigned value, lasp_err *err);
/* Collective too: waits for what this rank enqueued and for every rank to stop writing into it. */
void lasp_comm_window_free(lasp_comm_window *w);

/* End the whole job now (MPI_Abort / ncclCommAbort), after printing "rank R: message". Never returns. */
void lasp_comm_abort(lasp_comm *c, const char *message) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif
