/* comm_impl.h — what a backend provides to the dispatch in comm.c. Private to src/comm.
 *
 * comm.c validates arguments, counts traffic and calls through `ops`, so a backend only moves bytes.
 * A new backend is one more table and one more case in lasp_comm_world. */
#ifndef LASP_COMM_IMPL_H
#define LASP_COMM_IMPL_H

#include "comm/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_comm_ops {
    const char *name;
    lasp_status (*split)(lasp_comm *c, int color, int key, lasp_comm *out, lasp_err *err);
    void (*free)(lasp_comm *c);
    lasp_status (*sendrecv)(lasp_comm *c, const void *sbuf, size_t scount, int dst, void *rbuf, size_t rcount,
                            int src, lasp_dtype t, lasp_err *err);
    lasp_status (*irecv)(lasp_comm *c, void *buf, size_t count, int src, lasp_dtype t, lasp_comm_req *req,
                         lasp_err *err);
    lasp_status (*isend)(lasp_comm *c, const void *buf, size_t count, int dst, lasp_dtype t, lasp_comm_req *req,
                         lasp_err *err);
    lasp_status (*wait)(lasp_comm *c, lasp_comm_req *req, lasp_err *err);
    lasp_status (*allreduce)(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t,
                             lasp_reduce_op op, lasp_err *err);
    lasp_status (*reduce_scatter)(lasp_comm *c, const void *sbuf, void *rbuf, size_t rcount, lasp_dtype t,
                                  lasp_reduce_op op, lasp_err *err);
    lasp_status (*allgather)(lasp_comm *c, const void *sbuf, void *rbuf, size_t scount, lasp_dtype t, lasp_err *err);
    lasp_status (*alltoall)(lasp_comm *c, const void *sbuf, void *rbuf, size_t count, lasp_dtype t, lasp_err *err);
    lasp_status (*bcast)(lasp_comm *c, void *buf, size_t count, lasp_dtype t, int root, lasp_err *err);
    lasp_status (*barrier)(lasp_comm *c, lasp_err *err);
    void (*abort)(lasp_comm *c, int code);
    /* device backends only (NULL for host backends): the stream the operations are enqueued on */
    lasp_status (*set_stream)(lasp_comm *c, void *stream, lasp_err *err);
    void *(*stream)(const lasp_comm *c);
    lasp_status (*sync)(lasp_comm *c, lasp_err *err);
    /* the largest of a host value over the ranks, for lasp_comm_agree: device backends, whose collectives take
     * device memory, through their host-side twin (NULL: allreduce takes host memory) */
    lasp_status (*host_max)(lasp_comm *c, double *x, lasp_err *err);
    /* one-sided transfers (NULL where the backend has none): comm.c has checked the arguments */
    lasp_status (*window_make)(lasp_comm *c, lasp_comm_window *w, lasp_err *err);
    void (*window_free)(lasp_comm_window *w);
    lasp_status (*put_signal)(lasp_comm_window *w, const void *src, size_t bytes, size_t offset, int peer, int flag,
                              unsigned value, lasp_err *err);
    lasp_status (*wait_signal)(lasp_comm_window *w, int flag, unsigned value, lasp_err *err);
} lasp_comm_ops;

struct lasp_comm {
    const lasp_comm_ops *ops;
    lasp_comm_backend backend;
    int rank, size;
    int world_rank;       /* rank in the world, for messages that name a rank */
    int is_world;
    int owns_init;        /* the world initialised MPI, so freeing it finalises */
    int max_ctas;         /* device backends: thread blocks an operation may use (0: the library's default) */
    double timeout_s;     /* device backends: the longest wait for a peer (lasp_comm_set_timeout) */
    lasp_comm_stats stats;
    void *impl;           /* backend handle (an MPI_Comm for mpi) */
};

/* A window of one-sided transfers: `bytes` of this rank's device memory (base) and n_flags counters. */
struct lasp_comm_window {
    lasp_comm *comm;
    size_t bytes;
    int n_flags;
    void *base;
    void *impl;
};

/* A pending non-blocking transfer. `impl` belongs to the backend; the self backend pairs a send
 * with a receive through `peer`. */
struct lasp_comm_req {
    int is_send, done;
    void *buf;
    size_t bytes;
    lasp_comm_req *peer;   /* self: the matching half, once both are posted */
    lasp_comm_req *next;   /* self: unmatched requests of the communicator */
    void *impl;
};

#ifdef LASP_HAVE_MPI
/* comm_mpi.c */
lasp_status lasp_comm_mpi_world(int *argc, char ***argv, lasp_comm *out, lasp_err *err);
#endif

#if defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
/* comm_nccl.c */
lasp_status lasp_comm_nccl_world(int *argc, char ***argv, lasp_comm *out, lasp_err *err);
/* lasp_comm_nccl_id and lasp_comm_nccl_join (lasp.h), their arguments checked */
lasp_status lasp_comm_nccl_make_id(unsigned char *id, lasp_err *err);
lasp_status lasp_comm_nccl_join_world(const unsigned char *id, int rank, int size, int device, lasp_comm *out,
                                      lasp_err *err);
/* comm_nccl_window.cu: the device side of the nccl backend's windows (CUDA and NCCL types as void *) */
int lasp_nccl_lsa_size(void *nccl_comm);  /* ranks of the communicator's load/store team */
int lasp_nccl_peer_bases(void *nccl_window, int n, void **bases);  /* each rank's window base, as this GPU
                                                                    * addresses it; a cudaError_t */
int lasp_nccl_put(const void *src, void *dst, size_t bytes, unsigned *flag, unsigned value, unsigned *arrived,
                  void *stream);
int lasp_nccl_wait(const unsigned *flag, unsigned value, double timeout_s, void *stream);
#endif

#ifdef __cplusplus
}
#endif

#endif
