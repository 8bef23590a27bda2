/* test_comm.c — the self backend (one rank, no MPI): every operation is a copy, a send to oneself
 * meets a receive from oneself in either order, and waiting on an unmatched half is an error, not
 * a hang. Without MPI in the build, asking for the mpi backend must fail with a hint. */
#include <string.h>

#include "comm/comm.h"
#include "test.h"

int main(void) {
    lasp_err err = {0};
    lasp_comm *c = NULL;
    CHECK(lasp_comm_world(LASP_COMM_SELF, NULL, NULL, &c, &err) == LASP_OK, "%s", err.msg);
    if (!c) return 1;
    CHECK(lasp_comm_size(c) == 1 && lasp_comm_rank(c) == 0, "self world is rank %d of %d", lasp_comm_rank(c),
          lasp_comm_size(c));
    test_case("self world: one rank");

    enum { N = 257 };
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = (float)i, y[i] = -1;
    size_t wrong = 0;
#define SAME()                                        \
    do {                                              \
        for (int i = 0; i < N; i++) wrong += y[i] != x[i]; \
        for (int i = 0; i < N; i++) y[i] = -1;        \
    } while (0)
    CHECK(lasp_comm_allreduce(c, x, y, N, LASP_F32, LASP_REDUCE_SUM, &err) == LASP_OK, "%s", err.msg);
    SAME();
    CHECK(lasp_comm_reduce_scatter(c, x, y, N, LASP_F32, LASP_REDUCE_MAX, &err) == LASP_OK, "%s", err.msg);
    SAME();
    CHECK(lasp_comm_allgather(c, x, y, N, LASP_F32, &err) == LASP_OK, "%s", err.msg);
    SAME();
    CHECK(lasp_comm_alltoall(c, x, y, N, LASP_F32, &err) == LASP_OK, "%s", err.msg);
    SAME();
    CHECK(lasp_comm_sendrecv(c, x, N, 0, y, N, 0, LASP_F32, &err) == LASP_OK, "%s", err.msg);
    SAME();
    CHECK(lasp_comm_bcast(c, x, N, LASP_F32, 0, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_barrier(c, &err) == LASP_OK, "%s", err.msg);
    CHECK(wrong == 0, "%zu wrong elements", wrong);
    lasp_comm_stats st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 6 && st.p2p_msgs == 1 && st.coll_bytes == 0, "stats: %llu calls, %llu msgs, %llu bytes",
          (unsigned long long)st.coll_calls, (unsigned long long)st.p2p_msgs, (unsigned long long)st.coll_bytes);
    test_case("self: every collective is a copy, 0 wrong elements, counters");

    for (int order = 0; order < 2; order++) {
        lasp_comm_req *rx = NULL, *tx = NULL;
        lasp_status s = order ? lasp_comm_isend(c, x, N, 0, LASP_F32, &tx, &err)
                              : lasp_comm_irecv(c, y, N, 0, LASP_F32, &rx, &err);
        if (s == LASP_OK)
            s = order ? lasp_comm_irecv(c, y, N, 0, LASP_F32, &rx, &err) : lasp_comm_isend(c, x, N, 0, LASP_F32, &tx, &err);
        if (s == LASP_OK) s = lasp_comm_wait(c, rx, &err);
        if (s == LASP_OK) s = lasp_comm_wait(c, tx, &err);
        CHECK(s == LASP_OK, "%s", err.msg);
        SAME();
    }
    CHECK(wrong == 0, "%zu wrong elements", wrong);
    lasp_comm_req *lone = NULL;
    CHECK(lasp_comm_irecv(c, y, N, 0, LASP_F32, &lone, &err) == LASP_OK, "%s", err.msg);
    lasp_status s = lasp_comm_wait(c, lone, &err);
    CHECK(s == LASP_ERR_COMM && strstr(err.msg, "wait forever"), "unmatched receive: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_sendrecv(c, x, N, 1, y, N, -1, LASP_F32, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "outside [0, 1)"), "send to rank 1 of 1: status %d, '%s'", (int)s,
          err.msg);
    test_case("self: send to oneself in both orders; unmatched wait and bad peer are errors");

    lasp_comm *sub = NULL;
    CHECK(lasp_comm_split(c, 3, 0, &sub, &err) == LASP_OK && sub && lasp_comm_size(sub) == 1, "%s", err.msg);
    lasp_comm_free(sub);
    sub = NULL;
    CHECK(lasp_comm_split_lean(c, 0, 0, 2, &sub, &err) == LASP_OK && sub && lasp_comm_size(sub) == 1, "%s", err.msg);
    lasp_comm_free(sub);
    sub = NULL;
    s = lasp_comm_split_lean(c, 0, 0, -1, &sub, &err);
    CHECK(s == LASP_ERR_ARG && !sub && strstr(err.msg, "max_ctas -1"), "max_ctas -1: status %d, '%s'", (int)s, err.msg);
    test_case("self: split; a lean split (its CTA cap ignored off the GPU), a negative cap an error");

    lasp_comm_window *w = (lasp_comm_window *)&c; /* not NULL: must be cleared */
    s = lasp_comm_window_make(c, 1024, 2, &w, &err);
    CHECK(s == LASP_ERR_UNSUPPORTED && !w && strstr(err.msg, "one-sided") && strstr(err.msg, "hint"),
          "a window on the self backend: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_put_signal(NULL, x, 16, 0, 0, 0, 1, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "NULL"), "a put into no window: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_wait_signal(NULL, 0, 1, &err);
    CHECK(s == LASP_ERR_ARG, "a wait on no window: status %d", (int)s);
    lasp_comm_window_free(NULL);
    CHECK(lasp_comm_window_base(NULL) == NULL && lasp_comm_window_bytes(NULL) == 0, "no window, no base");
    test_case("self: no one-sided windows (a clear error with a hint); a NULL window refused");
    lasp_comm_free(c);

#ifndef LASP_HAVE_MPI
    lasp_comm *m = NULL;
    s = lasp_comm_world(LASP_COMM_MPI, NULL, NULL, &m, &err);
    CHECK(s == LASP_ERR_UNSUPPORTED && strstr(err.msg, "without MPI") && strstr(err.msg, "hint"),
          "mpi world without MPI: status %d, '%s'", (int)s, err.msg);
    test_case("mpi backend in a build without MPI: a clear error with a hint");
#endif
    s = lasp_comm_world(LASP_COMM_NCCL, NULL, NULL, &c, &err);
#if defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
    /* a GPU machine gets a one-rank NCCL world; one without a GPU a clear error, never a hang */
    if (s == LASP_OK) {
        CHECK(lasp_comm_size(c) == 1 && lasp_comm_stream(c) != NULL, "one-rank nccl world");
        lasp_comm_free(c);
    } else {
        CHECK(s == LASP_ERR_CUDA && strstr(err.msg, "GPU"), "nccl world without a GPU: status %d, '%s'", (int)s,
              err.msg);
    }
    test_case("nccl backend: a one-rank world, or a clear error without a GPU");
#else
    CHECK(s == LASP_ERR_UNSUPPORTED && strstr(err.msg, "NCCL"), "nccl world: status %d, '%s'", (int)s, err.msg);
    test_case("nccl backend in a build without NCCL: a clear error");
#endif
    return test_exit();
}
