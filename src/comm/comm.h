/* comm.h — the communicator's internal interface: what lasp.h declares (the world, its ranks, the
 * collectives a user needs, the traffic counters) plus what the layers above use: sub-communicators,
 * non-blocking halves, the rest of the collectives, the CUDA stream of device backends and one-sided
 * transfers. Three backends:
 *   self  one rank, no MPI needed (every collective is a copy)
 *   mpi   host memory over MPI
 *   nccl  device memory over NCCL, bootstrapped by MPI (GPU builds)
 * Counts are in elements of `dtype`, never bytes. Every call returns a status; a failure records a
 * message naming the rank. Each communicator counts what it sends, so tests can assert on it. */
#ifndef LASP_COMM_H
#define LASP_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* lasp_comm_split (lasp.h) for messages that travel while compute kernels fill the GPU: a device backend runs each of the
 * new communicator's operations on at most max_ctas thread blocks (NCCL's maxCTAs; 0: its default), so that
 * they fit on the SMs the compute leaves free (the SP layer's comm_sms). Host backends ignore it. The new
 * communicator waits as long as c does (lasp_comm_set_timeout). */
lasp_status lasp_comm_split_lean(lasp_comm *c, int color, int key, int max_ctas, lasp_comm **out, lasp_err *err);

/* Non-blocking halves, for overlapping a transfer with computation (docs/MATH.md §3). */
typedef struct lasp_comm_req lasp_comm_req;
lasp_status lasp_comm_irecv(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype dtype, lasp_comm_req **req,
                            lasp_err *err);
lasp_status lasp_comm_isend(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype dtype,
                            lasp_comm_req **req, lasp_err *err);
lasp_status lasp_comm_wait(lasp_comm *c, lasp_comm_req *req, lasp_err *err);  /* frees req */

/* recvbuf gets this rank's block of recv_count elements of the reduction of size·recv_count. */
lasp_status lasp_comm_reduce_scatter(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t recv_count,
                                     lasp_dtype dtype, lasp_reduce_op op, lasp_err *err);
/* Block i of sendbuf (count elements) goes to rank i; block j of recvbuf comes from rank j. */
lasp_status lasp_comm_alltoall(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t count, lasp_dtype dtype,
                               lasp_err *err);

/* Device backends (nccl) are stream-ordered, like NCCL itself: a call returns once the operation is
 * enqueued on the communicator's CUDA stream, and work enqueued after it on that stream sees its
 * result; lasp_comm_wait only checks for errors. lasp_comm_sync blocks until everything enqueued
 * has finished (and turns NCCL's asynchronous errors into a status). Host backends (self, mpi) are
 * complete when a call returns: for them these are no-ops. */
lasp_status lasp_comm_set_stream(lasp_comm *c, void *cuda_stream, lasp_err *err);  /* NULL = own stream */
void *lasp_comm_stream(const lasp_comm *c);

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
 * send/receive then. A window over one rank is plain device memory (a put to oneself is a copy). A wait
 * that is never satisfied ends in a kernel error after the communicator's timeout, not a hang. */
typedef struct lasp_comm_window lasp_comm_window;
lasp_status lasp_comm_window_make(lasp_comm *c, size_t bytes, int n_flags, lasp_comm_window **out, lasp_err *err);
void *lasp_comm_window_base(const lasp_comm_window *w);  /* this rank's `bytes` (device memory) */
size_t lasp_comm_window_bytes(const lasp_comm_window *w);
lasp_status lasp_comm_put_signal(lasp_comm_window *w, const void *src, size_t bytes, size_t offset, int peer, int flag,
                                 unsigned value, lasp_err *err);
lasp_status lasp_comm_wait_signal(lasp_comm_window *w, int flag, unsigned value, lasp_err *err);
/* Collective too: waits for what this rank enqueued and for every rank to stop writing into it. */
void lasp_comm_window_free(lasp_comm_window *w);

#ifdef __cplusplus
}
#endif

#endif
