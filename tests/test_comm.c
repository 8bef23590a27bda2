/* test_comm.c — the communicator's conformance suite: one set of cases, run on whichever backend is asked
 * for, proves that the backends keep one contract. Every operation on values whose answer is exact (small
 * integers in floats, 16-bit patterns moved as bits), on the world and on sub-communicators (split by parity
 * with keys reversed, a lean split, single ranks, the SP layout's groups), counting wrong elements
 * (nccl-tests style); the traffic counters' exact values; argument errors (a status and a message, never a
 * crash, a hang or a count); timeouts; one-sided windows (the puts on nccl, windows over one rank included;
 * a clear refusal on host backends). Each case's verdict is reduced over the ranks and printed once.
 *
 *     test_comm                                  self backend (one process, no MPI)
 *     mpirun -np N test_comm                     mpi backend, host memory
 *     mpirun -np N test_comm --backend nccl      nccl backend, device memory, one GPU per rank
 *     --backend self|mpi|nccl                    explicitly (nccl without a launcher: one rank)
 *
 * The self run also checks what the build says of the other backends. On nccl the verdicts travel over a
 * host MPI world beside the NCCL world under test, and every enqueued operation is synchronised before its
 * result is read (device backends are stream-ordered). LASP_TEST_ALLOW_NO_WINDOW=1 lets a machine whose
 * GPUs do not reach each other by loads and stores skip the multi-rank windows. */
#include <string.h>

#include "mpi_test.h"

#if defined(LASP_HAVE_CUDA) && defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)
#define TEST_NCCL 1
#else
#define TEST_NCCL 0
#endif

enum { N = 1001 }; /* elements per block: more than a cache line, of no round size (rows off 16-byte alignment) */

static const char *const BACKENDS[] = {"self", "mpi", "nccl"}; /* by lasp_comm_backend */
static int on_dev;    /* the backend under test moves device memory (nccl) */
static size_t wrong;  /* wrong elements in the current case */

/* ---- buffers where the backend under test reads them --------------------------------------------- */

/* n elements of dtype t (host memory, or device memory for nccl) converted from host f32 x; x NULL: NaN,
 * so that an element an operation should write but does not shows. */
static void *buf_up(const float *x, size_t n, lasp_dtype t) {
#if TEST_NCCL
    if (on_dev) {
        void *d = test_to_dev(x, n, t);
        /* its copy or poison ran on the legacy stream, which the communicator's stream does not wait for */
        if (d && cudaDeviceSynchronize() != cudaSuccess) {
            cudaFree(d);
            d = NULL;
        }
        return d;
    }
#endif
    const size_t bytes = (n ? n : 1) * lasp_dtype_size(t);
    void *h = malloc(bytes);
    if (x) lasp_convert(h, t, x, LASP_F32, n);
    else memset(h, 0xff, bytes);
    return h;
}

/* A call's status and, on device backends, the wait for what it enqueued: results are read only after it.
 * Needs `lasp_err err` in scope. */
#define RUN(c, call)                                                \
    do {                                                            \
        lasp_status run_s_ = (call);                                \
        if (run_s_ == LASP_OK) run_s_ = lasp_comm_sync((c), &err);  \
        CHECK(run_s_ == LASP_OK, "%s", err.msg);                    \
    } while (0)

/* n floats set to v */
static float *filled(size_t n, float v) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = v;
    return x;
}

static void expect(float got, double want) {
    if ((double)got != want) {
        if (wrong < 3) printf("  rank %d: got %.9g, expected %.9g\n", lasp_comm_rank(mpi_test_world_), got, want);
        wrong++;
    }
}

/* Ends a case whose elements expect() counted. */
static void end_case(const char *cn, const char *what) {
    CHECK(wrong == 0, "%zu wrong elements", wrong);
    mpi_case("%s: %s", cn, what);
    wrong = 0;
}

/* The sum over c of every rank's v, through the backend's memory (exact for small integers). */
static double sum_over(lasp_comm *c, float v) {
    lasp_err err = {0};
    void *x = buf_up(&v, 1, LASP_F32), *y = buf_up(NULL, 1, LASP_F32);
    RUN(c, lasp_comm_allreduce(c, x, y, 1, LASP_F32, LASP_REDUCE_SUM, &err));
    float *g = test_down(y, 1, LASP_F32, on_dev);
    const double s = g[0];
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    return s;
}

/* ---- every operation on one communicator ------------------------------------------------------------ */

/* Values stay below 2^24, so float sums are exact. Every case is entered on every rank of the job whatever
 * c's size, so that the verdicts, reduced over the job, pair up. */
static void test_ops(lasp_comm *c, const char *cn) {
    const int n = lasp_comm_size(c), r = lasp_comm_rank(c);
    const size_t nn = (size_t)n * N, bytes = N * sizeof(float);
    lasp_err err = {0};
    lasp_comm_stats st;
    lasp_status s;
    float *h = malloc(nn * sizeof *h), *g;
    void *x, *y;

    /* all-reduce: sum, max, min; out of place, in place; f32 and f64 */
    for (int i = 0; i < N; i++) h[i] = (float)(r * 1000 + i);
    x = buf_up(h, N, LASP_F32), y = buf_up(NULL, N, LASP_F32);
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_allreduce(c, x, y, N, LASP_F32, LASP_REDUCE_SUM, &err));
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 1 && st.p2p_msgs == 0, "stats after one all-reduce: %llu calls, %llu messages",
          (unsigned long long)st.coll_calls, (unsigned long long)st.p2p_msgs);
    CHECK(st.coll_bytes == (uint64_t)(2.0 * (n - 1) / n * bytes + 0.5), "all-reduce counted %llu bytes",
          (unsigned long long)st.coll_bytes);
    g = test_down(y, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], 1000.0 * n * (n - 1) / 2 + (double)n * i);
    free(g);
    RUN(c, lasp_comm_allreduce(c, x, x, N, LASP_F32, LASP_REDUCE_MAX, &err));
    g = test_down(x, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], 1000.0 * (n - 1) + i);
    free(g), test_free(x, on_dev);
    x = buf_up(h, N, LASP_F32);
    RUN(c, lasp_comm_allreduce(c, x, y, N, LASP_F32, LASP_REDUCE_MIN, &err));
    g = test_down(y, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], i);
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    for (int i = 0; i < N; i++) h[i] = (float)(r + 0.5 * i);
    x = buf_up(h, N, LASP_F64);
    RUN(c, lasp_comm_allreduce(c, x, x, N, LASP_F64, LASP_REDUCE_SUM, &err));
    g = test_down(x, N, LASP_F64, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], n * (n - 1) / 2.0 + n * 0.5 * i);
    free(g), test_free(x, on_dev);
    CHECK(lasp_comm_get_stats(c).coll_calls == 4, "4 all-reduces counted as %llu calls",
          (unsigned long long)lasp_comm_get_stats(c).coll_calls);
    end_case(cn, "all-reduce sum, max, min; f32, f64; in place");

    /* reduce-scatter: block b of every rank's input is b·N + i + rank; rank r gets block r reduced */
    for (int b = 0; b < n; b++)
        for (int i = 0; i < N; i++) h[b * N + i] = (float)(b * N + i + r);
    x = buf_up(h, nn, LASP_F32), y = buf_up(NULL, N, LASP_F32);
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_reduce_scatter(c, x, y, N, LASP_F32, LASP_REDUCE_SUM, &err));
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 1 && st.coll_bytes == (uint64_t)(n - 1) * bytes, "reduce-scatter counted %llu calls, "
          "%llu bytes", (unsigned long long)st.coll_calls, (unsigned long long)st.coll_bytes);
    g = test_down(y, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], (double)n * (r * N + i) + n * (n - 1) / 2.0);
    free(g);
    RUN(c, lasp_comm_reduce_scatter(c, x, x, N, LASP_F32, LASP_REDUCE_MAX, &err));
    g = test_down(x, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], (double)(r * N + i) + n - 1);
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    end_case(cn, "reduce-scatter sum, max in place");

    /* all-gather: block j of the result is rank j's i + 7j; then MPI-style in place (own block already there) */
    for (int i = 0; i < N; i++) h[i] = (float)(i + 7 * r);
    x = buf_up(h, N, LASP_F32), y = buf_up(NULL, nn, LASP_F32);
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_allgather(c, x, y, N, LASP_F32, &err));
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 1 && st.coll_bytes == (uint64_t)(n - 1) * bytes, "all-gather counted %llu calls, "
          "%llu bytes", (unsigned long long)st.coll_calls, (unsigned long long)st.coll_bytes);
    g = test_down(y, nn, LASP_F32, on_dev);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(g[j * N + i], i + 7 * j);
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    for (size_t i = 0; i < nn; i++) h[i] = NAN;
    for (int i = 0; i < N; i++) h[r * N + i] = (float)(i - 3 * r);
    y = buf_up(h, nn, LASP_F32);
    RUN(c, lasp_comm_allgather(c, (char *)y + r * bytes, y, N, LASP_F32, &err));
    g = test_down(y, nn, LASP_F32, on_dev);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(g[j * N + i], i - 3 * j);
    free(g), test_free(y, on_dev);
    end_case(cn, "all-gather, in place");

    /* all-to-all: rank r sends to rank j the block 100000·r + 1024·j + i */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) h[j * N + i] = (float)(100000 * r + 1024 * j + i);
    x = buf_up(h, nn, LASP_F32), y = buf_up(NULL, nn, LASP_F32);
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_alltoall(c, x, y, N, LASP_F32, &err));
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 1 && st.coll_bytes == (uint64_t)(n - 1) * bytes, "all-to-all counted %llu calls, "
          "%llu bytes", (unsigned long long)st.coll_calls, (unsigned long long)st.coll_bytes);
    g = test_down(y, nn, LASP_F32, on_dev);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(g[j * N + i], 100000.0 * j + 1024.0 * r + i);
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    /* 16-bit types move as bits: every pattern must arrive unchanged. The patterns stay below bf16's
     * infinity (0x7f80), so equal floats are equal bits. */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) h[j * N + i] = lasp_bf16_to_f32((uint16_t)((r * 4099 + j * 257 + i) % 0x7f80));
    x = buf_up(h, nn, LASP_BF16), y = buf_up(NULL, nn, LASP_BF16);
    RUN(c, lasp_comm_alltoall(c, x, y, N, LASP_BF16, &err));
    g = test_down(y, nn, LASP_BF16, on_dev);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(g[j * N + i], lasp_bf16_to_f32((uint16_t)((j * 4099 + r * 257 + i) % 0x7f80)));
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    end_case(cn, "all-to-all f32, bf16 bits");

    /* broadcast from every root; only the root counts the bytes */
    for (int root = 0; root < n; root++) {
        for (int i = 0; i < N; i++) h[i] = r == root ? (float)(root * 10 + i) : -1.0f;
        x = buf_up(h, N, LASP_F32);
        lasp_comm_reset_stats(c);
        RUN(c, lasp_comm_bcast(c, x, N, LASP_F32, root, &err));
        st = lasp_comm_get_stats(c);
        CHECK(st.coll_calls == 1 && st.coll_bytes == (r == root && n > 1 ? bytes : 0),
              "bcast from %d counted %llu calls, %llu bytes", root, (unsigned long long)st.coll_calls,
              (unsigned long long)st.coll_bytes);
        g = test_down(x, N, LASP_F32, on_dev);
        for (int i = 0; i < N; i++) expect(g[i], root * 10 + i);
        free(g), test_free(x, on_dev);
    }
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_barrier(c, &err));
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 1 && st.coll_bytes == 0, "barrier counted %llu calls, %llu bytes",
          (unsigned long long)st.coll_calls, (unsigned long long)st.coll_bytes);
    end_case(cn, "broadcast from every root, barrier");

    /* agreeing on statuses (device communicators through their host-side twin): all OK stays OK; one rank's
     * failure reaches every rank */
    {
        lasp_err e2 = {0};
        CHECK(lasp_comm_agree(c, LASP_OK, &e2) == LASP_OK, "every rank OK, yet: %s", e2.msg);
        const lasp_status got = lasp_comm_agree(c, r == n - 1 ? LASP_ERR_IO : LASP_OK, &e2);
        CHECK(got == LASP_ERR_IO, "rank %d of %d got status %d, not the last rank's %d", r, n, (int)got, LASP_ERR_IO);
        CHECK(r == n - 1 || strstr(e2.msg, "another rank failed"), "rank %d's message: %s", r, e2.msg);
        end_case(cn, "agreeing on statuses: one rank's failure reaches every rank");
    }

    /* point to point: a chain (no wrap) and a ring (with one rank: to oneself) with sendrecv */
    const int next = r + 1 < n ? r + 1 : -1, prev = r - 1, to = (r + 1) % n, from = (r + n - 1) % n;
    float *minus = filled(N, -1.0f);
    for (int i = 0; i < N; i++) h[i] = (float)(r * 3 + i);
    x = buf_up(h, N, LASP_F32), y = buf_up(minus, N, LASP_F32);
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_sendrecv(c, x, N, next, y, N, prev, LASP_F32, &err));
    st = lasp_comm_get_stats(c);
    CHECK(st.p2p_msgs == (uint64_t)(next >= 0) && st.p2p_bytes == (next >= 0 ? bytes : 0) && st.coll_calls == 0,
          "chain counted %llu messages, %llu bytes, %llu collectives", (unsigned long long)st.p2p_msgs,
          (unsigned long long)st.p2p_bytes, (unsigned long long)st.coll_calls);
    g = test_down(y, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], r > 0 ? (r - 1) * 3 + i : -1);
    free(g), test_free(y, on_dev);
    y = buf_up(minus, N, LASP_F32);
    RUN(c, lasp_comm_sendrecv(c, x, N, to, y, N, from, LASP_F32, &err));
    g = test_down(y, N, LASP_F32, on_dev);
    for (int i = 0; i < N; i++) expect(g[i], from * 3 + i);
    free(g), test_free(x, on_dev), test_free(y, on_dev);
    /* the non-blocking halves, receive first and send first: a ring on host backends; a chain on nccl, whose
     * halves are stream-ordered outside a group, so a ring of them would wait on itself */
    const int hto = on_dev ? next : to, hfrom = on_dev ? prev : from;
    lasp_comm_reset_stats(c);
    for (int order = 0; order < 2; order++) {
        for (int i = 0; i < N; i++) h[i] = (float)(r * 5 + i + order);
        x = buf_up(h, N, LASP_F32), y = buf_up(minus, N, LASP_F32);
        lasp_comm_req *rx = NULL, *tx = NULL;
        s = LASP_OK;
        for (int k = 0; k < 2 && s == LASP_OK; k++) {
            if (k == order && hfrom >= 0) s = lasp_comm_irecv(c, y, N, hfrom, LASP_F32, &rx, &err);
            if (k != order && hto >= 0) s = lasp_comm_isend(c, x, N, hto, LASP_F32, &tx, &err);
        }
        if (s == LASP_OK) s = lasp_comm_wait(c, rx, &err);
        if (s == LASP_OK) s = lasp_comm_wait(c, tx, &err);
        if (s == LASP_OK) s = lasp_comm_sync(c, &err);
        CHECK(s == LASP_OK, "%s", err.msg);
        g = test_down(y, N, LASP_F32, on_dev);
        for (int i = 0; i < N; i++) expect(g[i], hfrom >= 0 ? hfrom * 5 + i + order : -1);
        free(g), test_free(x, on_dev), test_free(y, on_dev);
    }
    st = lasp_comm_get_stats(c);
    CHECK(st.p2p_msgs == 2u * (hto >= 0) && st.p2p_bytes == 2 * (hto >= 0 ? bytes : 0),
          "isend counted %llu messages, %llu bytes", (unsigned long long)st.p2p_msgs,
          (unsigned long long)st.p2p_bytes);
    free(minus);
    end_case(cn, on_dev ? "sendrecv chain and ring; isend/irecv chain both orders; counters"
                        : "sendrecv chain and ring; isend/irecv ring both orders; counters");

    /* 16-bit reductions: arithmetic the GPU backend has, the host ones refuse (sums of small integers,
     * exact in bf16 up to 256) */
    const lasp_dtype half[2] = {LASP_BF16, LASP_F16};
    for (int t = 0; t < 2; t++) {
        for (int i = 0; i < N; i++) h[i] = (float)(i % 16 + r);
        x = buf_up(h, N, half[t]), y = buf_up(NULL, N, half[t]);
        s = lasp_comm_allreduce(c, x, y, N, half[t], LASP_REDUCE_SUM, &err);
        if (on_dev) {
            if (s == LASP_OK) s = lasp_comm_sync(c, &err);
            CHECK(s == LASP_OK, "%s all-reduce: %s", lasp_dtype_name(half[t]), err.msg);
            g = test_down(y, N, half[t], on_dev);
            for (int i = 0; i < N; i++) expect(g[i], (double)n * (i % 16) + n * (n - 1) / 2.0);
            free(g);
        } else {
            CHECK(s == LASP_ERR_UNSUPPORTED && strstr(err.msg, "NCCL") && strstr(err.msg, "hint"),
                  "%s reduction on the host: status %d, '%s'", lasp_dtype_name(half[t]), (int)s, err.msg);
        }
        test_free(x, on_dev), test_free(y, on_dev);
    }
    end_case(cn, on_dev ? "bf16, f16 all-reduce sums exact" : "bf16, f16 reductions refused with a hint");

    /* zero counts, and bad arguments: a status and a message, never a crash, a hang or a count */
    x = buf_up(h, nn, LASP_F32), y = buf_up(NULL, nn, LASP_F32);
    lasp_comm_reset_stats(c);
    RUN(c, lasp_comm_allreduce(c, x, y, 0, LASP_F32, LASP_REDUCE_SUM, &err));
    RUN(c, lasp_comm_allgather(c, x, y, 0, LASP_F32, &err));
    s = lasp_comm_sendrecv(c, x, N, n, y, N, -1, LASP_F32, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "outside"), "bad destination: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_sendrecv(c, x, N, -1, y, N, -2, LASP_F32, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "source rank -2"), "bad source: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_bcast(c, x, N, LASP_F32, n, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "root"), "bad root: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_allreduce(c, x, y, N, (lasp_dtype)7, LASP_REDUCE_SUM, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "dtype 7"), "bad dtype: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_allreduce(c, x, y, N, LASP_F32, (lasp_reduce_op)9, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "reduction 9"), "bad reduction: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_allreduce(c, NULL, y, N, LASP_F32, LASP_REDUCE_SUM, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "sendbuf is NULL"), "NULL sendbuf: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_allgather(c, x, NULL, N, LASP_F32, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "recvbuf is NULL"), "NULL recvbuf: status %d, '%s'", (int)s, err.msg);
    lasp_comm_req *req = (lasp_comm_req *)&c; /* not NULL: a refusal must clear it */
    s = lasp_comm_irecv(c, NULL, N, 0, LASP_F32, &req, &err);
    CHECK(s == LASP_ERR_ARG && !req && strstr(err.msg, "NULL"), "irecv into NULL: status %d, '%s'", (int)s, err.msg);
    req = (lasp_comm_req *)&c;
    s = lasp_comm_isend(c, x, N, n, LASP_F32, &req, &err);
    CHECK(s == LASP_ERR_ARG && !req && strstr(err.msg, "outside"), "isend to rank %d: status %d, '%s'", n, (int)s,
          err.msg);
    s = lasp_comm_irecv(c, y, N, 0, LASP_F32, NULL, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "req is NULL"), "no request: status %d, '%s'", (int)s, err.msg);
    if (n > 1) {
        s = lasp_comm_alltoall(c, x, x, N, LASP_F32, &err);
        CHECK(s == LASP_ERR_ARG && strstr(err.msg, "in place"), "all-to-all in place: status %d, '%s'", (int)s,
              err.msg);
    }
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 2 && st.coll_bytes == 0 && st.p2p_msgs == 0 && st.p2p_bytes == 0,
          "zero counts and refusals counted %llu calls, %llu bytes, %llu messages", (unsigned long long)st.coll_calls,
          (unsigned long long)st.coll_bytes, (unsigned long long)st.p2p_msgs);
    test_free(x, on_dev), test_free(y, on_dev);
    end_case(cn, "zero counts; a bad peer, root, dtype, reduction, NULL buffer or request refused, not counted");
    free(h);
}

/* ---- one-sided windows ----------------------------------------------------------------------------- */

#if TEST_NCCL
/* The transfers themselves: ROUNDS rounds in which every rank puts its vector of the round into every
 * peer's window (slot = its rank) and raises that peer's counter, waits for every peer's, copies the slots
 * out and acknowledges; a slot is written again only after its reader acknowledged the round before. No
 * host synchronisation between rounds, so a missing fence or a counter raised early shows as a wrong
 * element. A window over one rank is plain device memory: its rank puts to itself (a copy), which must
 * raise its own counter, or the wait ends in an error after the timeout. */
static void check_window(lasp_comm *c, const char *cn) {
    enum { ROUNDS = 40 };
    lasp_err err = {0};
    const int r = lasp_comm_rank(c), W = lasp_comm_size(c);
    const int d0 = W > 1, peers = W > 1 ? W - 1 : 1; /* distances put to: 1 .. W − 1, or 0 alone */
    const size_t n = 4096 * 3 + 4, slot = n * sizeof(float); /* floats a slot: a multiple of 4, not of a block's */
    lasp_comm_window *w = NULL;
    lasp_status s = lasp_comm_window_make(c, (size_t)W * slot, 2 * W, &w, &err);
    const char *allow = getenv("LASP_TEST_ALLOW_NO_WINDOW");
    /* every rank of c gets the same answer; a window over one rank needs no peer and must always work */
    if (s == LASP_ERR_UNSUPPORTED && W > 1 && allow && allow[0] == '1') {
        if (lasp_comm_rank(mpi_test_world_) == 0) printf("# %s: one-sided windows unsupported here: %s\n", cn, err.msg);
        return;
    }
    CHECK(s == LASP_OK && w, "window: %s", err.msg);
    CHECK(lasp_comm_window_bytes(w) == (size_t)W * slot, "window of %zu bytes", lasp_comm_window_bytes(w));
    if (!mpi_case("%s: a one-sided window over %d rank%s made", cn, W, W > 1 ? "s" : "")) {
        lasp_comm_window_free(w);
        return;
    }
    float *h = malloc((size_t)ROUNDS * slot);
    for (int k = 0; k < ROUNDS; k++)
        for (size_t i = 0; i < n; i++) h[(size_t)k * n + i] = (float)((int)(i % 97) + 100 * r + 10000 * k);
    float *x = buf_up(h, (size_t)ROUNDS * n, LASP_F32), *out = buf_up(NULL, (size_t)ROUNDS * W * n, LASP_F32);
    const float *base = lasp_comm_window_base(w);
    cudaStream_t cs = (cudaStream_t)lasp_comm_stream(c);
    lasp_comm_reset_stats(c);
    for (unsigned k = 1; k <= ROUNDS && !test_failed_checks_; k++) {
        for (int d = d0; d < d0 + peers; d++) {
            const int to = (r + d) % W;
            if (k > 1) CHECK(lasp_comm_wait_signal(w, W + to, k - 1, &err) == LASP_OK, "%s", err.msg);
            CHECK(lasp_comm_put_signal(w, x + (k - 1) * n, slot, (size_t)r * slot, to, r, k, &err) == LASP_OK, "%s",
                  err.msg);
        }
        for (int d = d0; d < d0 + peers; d++) {
            const int from = (r - d + W) % W;
            CHECK(lasp_comm_wait_signal(w, from, k, &err) == LASP_OK, "%s", err.msg);
            CHECK(cudaMemcpyAsync(out + ((size_t)(k - 1) * W + from) * n, base + (size_t)from * n, slot,
                                  cudaMemcpyDeviceToDevice, cs) == cudaSuccess, "copying a slot out");
            CHECK(lasp_comm_put_signal(w, NULL, 0, 0, from, W + r, k, &err) == LASP_OK, "%s", err.msg);
        }
    }
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    float *o = test_down(out, (size_t)ROUNDS * W * n, LASP_F32, on_dev);
    for (int k = 0; k < ROUNDS; k++)
        for (int d = d0; d < d0 + peers; d++) {
            const int p = (r - d + W) % W;
            for (size_t i = 0; i < n; i++)
                expect(o[((size_t)k * W + p) * n + i], (int)(i % 97) + 100 * p + 10000 * k);
        }
    const lasp_comm_stats st = lasp_comm_get_stats(c);
    CHECK(st.p2p_bytes == (uint64_t)ROUNDS * peers * slot && st.p2p_msgs == 2u * ROUNDS * peers,
          "puts counted %llu messages, %llu bytes", (unsigned long long)st.p2p_msgs, (unsigned long long)st.p2p_bytes);
    char what[128];
    snprintf(what, sizeof what, "one-sided put/wait, %d rounds %s, slots reused after acknowledgement", ROUNDS,
             W > 1 ? "to every peer" : "to oneself");
    end_case(cn, what);

    /* what a put, a wait or a window refuses, before anything is enqueued or agreed */
    CHECK(lasp_comm_put_signal(w, x, slot, 0, W, 0, 1, &err) == LASP_ERR_ARG, "peer W accepted");
    CHECK(lasp_comm_put_signal(w, x, slot, 0, 0, 2 * W, 1, &err) == LASP_ERR_ARG, "flag 2W accepted");
    CHECK(lasp_comm_put_signal(w, x, 2 * slot, (size_t)(W - 1) * slot, 0, 0, 1, &err) == LASP_ERR_ARG,
          "an overrun accepted");
    CHECK(lasp_comm_put_signal(w, x + 1, 16, 0, 0, 0, 1, &err) == LASP_ERR_ARG, "a misaligned source accepted");
    CHECK(lasp_comm_put_signal(w, x, 20, 0, 0, 0, 1, &err) == LASP_ERR_ARG, "20 bytes accepted");
    CHECK(lasp_comm_wait_signal(w, -1, 1, &err) == LASP_ERR_ARG && strstr(err.msg, "flag -1"), "flag -1: '%s'",
          err.msg);
    lasp_comm_window *bad = NULL;
    CHECK(lasp_comm_window_make(c, 1000, 1, &bad, &err) == LASP_ERR_ARG && !bad, "a window of 1000 bytes accepted");
    CHECK(lasp_comm_window_make(c, 1024, 0, &bad, &err) == LASP_ERR_ARG && !bad, "a window of no flags accepted");
    mpi_case("%s: one-sided transfers refuse a bad peer, flag, range or alignment", cn);
    lasp_comm_window_free(w);
    test_free(x, on_dev), test_free(out, on_dev);
    free(h), free(o);
}
#endif

/* On nccl the transfers (check_window); host backends have no windows and say so with a hint. Every
 * backend refuses a NULL window. */
static void test_windows(lasp_comm *c, const char *cn) {
    lasp_err err = {0};
    lasp_status s;
#if TEST_NCCL
    if (on_dev) check_window(c, cn);
#endif
    if (!on_dev) {
        lasp_comm_window *w = (lasp_comm_window *)&c; /* not NULL: must be cleared */
        s = lasp_comm_window_make(c, 1024, 2, &w, &err);
        CHECK(s == LASP_ERR_UNSUPPORTED && !w && strstr(err.msg, "one-sided") && strstr(err.msg, "hint"),
              "a window on a host backend: status %d, '%s'", (int)s, err.msg);
    }
    s = lasp_comm_window_make(c, 1024, 2, NULL, &err);
    CHECK(s == LASP_ERR_ARG, "a window made into NULL: status %d", (int)s);
    float src[4] __attribute__((aligned(16))) = {0};
    s = lasp_comm_put_signal(NULL, src, 16, 0, 0, 0, 1, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "NULL"), "a put into no window: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_wait_signal(NULL, 0, 1, &err);
    CHECK(s == LASP_ERR_ARG, "a wait on no window: status %d", (int)s);
    lasp_comm_window_free(NULL);
    CHECK(lasp_comm_window_base(NULL) == NULL && lasp_comm_window_bytes(NULL) == 0, "no window, no base");
    mpi_case("%s: %sa NULL window refused", cn, on_dev ? "" : "no one-sided windows (an error with a hint); ");
}

/* ---- the world, its timeout, its sub-communicators ------------------------------------------------- */

static void test_world(lasp_comm *world, lasp_comm_backend b) {
    const int n = lasp_comm_size(world), r = lasp_comm_rank(world), launched = lasp_comm_launcher_size();
    lasp_err err = {0};
    CHECK(lasp_comm_backend_of(world) == b, "backend %d, asked for %d", (int)lasp_comm_backend_of(world), (int)b);
    CHECK(r >= 0 && r < n, "rank %d of %d", r, n);
    /* self: one rank whatever started it; otherwise every rank the launcher started (one without it) */
    const int want = b == LASP_COMM_SELF || !launched ? 1 : launched;
    CHECK(n == want, "%d ranks, expected %d", n, want);
    CHECK((lasp_comm_stream(world) != NULL) == on_dev, "a CUDA stream: %p", lasp_comm_stream(world));
    if (!on_dev) {
        lasp_status s = lasp_comm_set_stream(world, NULL, &err);
        CHECK(s == LASP_ERR_UNSUPPORTED && strstr(err.msg, "hint"), "a stream on a host backend: status %d, '%s'",
              (int)s, err.msg);
    }
    mpi_case("%s world: %d rank%s", BACKENDS[b], n, n > 1 ? "s" : "");

    /* a wait bounded by a timeout of seconds > 0, the value named when refused; 60 s from here on, so that
     * a one-sided wait that is never satisfied fails this run within a minute */
    lasp_status s = lasp_comm_set_timeout(world, 60, &err);
    CHECK(s == LASP_OK, "a timeout of 60 s: %s", err.msg);
    const double bad[3] = {0, -1, NAN};
    const char *named[3] = {" 0 s", "-1 s", "nan s"};
    for (int i = 0; i < 3; i++) {
        s = lasp_comm_set_timeout(world, bad[i], &err);
        CHECK(s == LASP_ERR_ARG && strstr(err.msg, named[i]), "a timeout of %g s: status %d, '%s'", bad[i], (int)s,
              err.msg);
    }
    s = lasp_comm_set_timeout(NULL, 1, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "NULL"), "a timeout for no communicator: status %d, '%s'", (int)s,
          err.msg);
    mpi_case("%s world: a timeout of 60 s set; 0, -1, NaN and no communicator refused", BACKENDS[b]);
}

static void test_splits(lasp_comm *world, lasp_comm_backend b) {
    const int n = lasp_comm_size(world), r = lasp_comm_rank(world);
    const char *bn = BACKENDS[b];
    char cn[96];
    lasp_err err = {0};
    lasp_status s;

    /* halves by parity, ordered backwards by key: ranks and sizes must follow color and key */
    lasp_comm *half = NULL;
    CHECK(lasp_comm_split(world, r % 2, -r, &half, &err) == LASP_OK && half, "%s", err.msg);
    const int hn = (n + 1 - r % 2) / 2;
    CHECK(lasp_comm_size(half) == hn, "a half of %d ranks has %d", n, lasp_comm_size(half));
    CHECK(lasp_comm_rank(half) == hn - 1 - r / 2, "world rank %d is rank %d of its half", r, lasp_comm_rank(half));
    mpi_case("%s split by parity, keys reversed", bn);
    snprintf(cn, sizeof cn, "%s parity-half", bn);
    if (half) test_ops(half, cn);
    lasp_comm_free(half);

    /* a lean split (the SP layer's: device operations on at most 2 CTAs, host backends ignore the cap); a
     * negative cap or colour refused */
    lasp_comm *lean = NULL, *none = NULL;
    CHECK(lasp_comm_split_lean(world, 0, r, 2, &lean, &err) == LASP_OK && lean, "%s", err.msg);
    CHECK(lasp_comm_size(lean) == n && lasp_comm_rank(lean) == r, "lean split: rank %d of %d", lasp_comm_rank(lean),
          lasp_comm_size(lean));
    s = lasp_comm_split_lean(world, 0, r, -1, &none, &err);
    CHECK(s == LASP_ERR_ARG && !none && strstr(err.msg, "max_ctas -1"), "max_ctas -1: status %d, '%s'", (int)s,
          err.msg);
    s = lasp_comm_split(world, -1, r, &none, &err);
    CHECK(s == LASP_ERR_ARG && !none && strstr(err.msg, "color -1"), "color -1: status %d, '%s'", (int)s, err.msg);
    mpi_case("%s lean split (2 CTAs); a negative CTA cap or colour refused", bn);
    snprintf(cn, sizeof cn, "%s lean-split", bn);
    if (lean) test_ops(lean, cn), test_windows(lean, cn);
    lasp_comm_free(lean);

    /* every rank alone: one-rank sub-communicators of a bigger world (on nccl a window over one GPU) */
    lasp_comm *single = NULL;
    CHECK(lasp_comm_split(world, r, 0, &single, &err) == LASP_OK && single, "%s", err.msg);
    CHECK(lasp_comm_size(single) == 1 && lasp_comm_rank(single) == 0, "single: rank %d of %d",
          lasp_comm_rank(single), lasp_comm_size(single));
    mpi_case("%s split into single ranks", bn);
    snprintf(cn, sizeof cn, "%s single-rank", bn);
    if (single) test_ops(single, cn), test_windows(single, cn);
    lasp_comm_free(single);

    /* the SP and DP groups of every layout that fits: contiguous SP groups, strided DP groups */
    for (int sp_size = 1; sp_size <= n; sp_size++) {
        if (n % sp_size) continue;
        lasp_sp_params p = lasp_sp_default_params();
        p.size = sp_size;
        lasp_sp *sp = NULL;
        CHECK(lasp_sp_create(world, &p, &sp, &err) == LASP_OK && sp, "%s", err.msg);
        lasp_comm *g = lasp_sp_group(sp), *d = lasp_sp_dp_group(sp);
        const int dpn = n / sp_size, j = r % sp_size, g0 = r / sp_size * sp_size;
        if (sp) {
            const lasp_sp_layout l = lasp_sp_get_layout(sp);
            CHECK(l.world_size == n && l.world_rank == r && l.sp_size == sp_size && l.sp_rank == j &&
                      l.dp_size == dpn && l.dp_rank == r / sp_size,
                  "layout: world %d/%d, sp %d/%d, dp %d/%d", l.world_rank, l.world_size, l.sp_rank, l.sp_size,
                  l.dp_rank, l.dp_size);
            CHECK(lasp_comm_size(g) == sp_size && lasp_comm_rank(g) == j, "sp group: rank %d of %d",
                  lasp_comm_rank(g), lasp_comm_size(g));
            CHECK(lasp_comm_size(d) == dpn && lasp_comm_rank(d) == r / sp_size, "dp group: rank %d of %d",
                  lasp_comm_rank(d), lasp_comm_size(d));
            /* the sums of the world ranks in each group are known */
            double sum = sum_over(g, (float)r);
            CHECK(sum == sp_size * g0 + sp_size * (sp_size - 1) / 2, "sp group of rank %d sums ranks to %.0f", r,
                  sum);
            sum = sum_over(d, (float)r);
            CHECK(sum == dpn * j + sp_size * dpn * (dpn - 1) / 2, "dp group of rank %d sums ranks to %.0f", r, sum);
        }
        mpi_case("%s layout dp %d × sp %d: contiguous SP groups, strided DP groups", bn, dpn, sp_size);
        if (sp && sp_size > 1 && sp_size < n) {
            snprintf(cn, sizeof cn, "%s sp-group(sp=%d)", bn, sp_size);
            test_ops(g, cn);
            snprintf(cn, sizeof cn, "%s dp-group(sp=%d)", bn, sp_size);
            test_ops(d, cn);
        }
        lasp_sp_free(sp);
    }
    if (n > 1 && n % 3) {
        lasp_sp_params p = lasp_sp_default_params();
        p.size = 3;
        lasp_sp *sp = NULL;
        s = lasp_sp_create(world, &p, &sp, &err);
        CHECK(s == LASP_ERR_ARG && !sp && strstr(err.msg, "does not divide"), "sp 3 of %d ranks: status %d, '%s'",
              n, (int)s, err.msg);
        mpi_case("%s layout sp 3 on %d ranks refused", bn, n);
    }
}

#if TEST_NCCL
/* A world joined from an id (lasp_comm_nccl_join), as processes that torchrun started make one: no MPI in
 * its bootstrap (the id travels over the host test world here, as torch.distributed would pass it) nor in
 * its agreement, barrier, splits and windows. The same operations' cases run on it. */
static void test_joined(lasp_comm *world) {
    const int r = lasp_comm_rank(world), n = lasp_comm_size(world);
    lasp_err err = {0};
    unsigned char id[LASP_NCCL_ID_BYTES] __attribute__((aligned(4))) = {0};
    lasp_status s = r == 0 ? lasp_comm_nccl_id(id, &err) : LASP_OK;
    CHECK(s == LASP_OK, "lasp_comm_nccl_id: %s", err.msg);
    s = lasp_comm_bcast(mpi_test_world_, id, LASP_NCCL_ID_BYTES / 4, LASP_F32, 0, &err);
    CHECK(s == LASP_OK, "passing the id: %s", err.msg);
    int dev = 0;
    cudaGetDevice(&dev);
    lasp_comm *j = NULL, *bad = (lasp_comm *)&err;
    s = lasp_comm_nccl_join(id, r, n, dev, &j, &err);
    CHECK(s == LASP_OK && j && lasp_comm_rank(j) == r && lasp_comm_size(j) == n &&
              lasp_comm_backend_of(j) == LASP_COMM_NCCL && lasp_comm_stream(j) != NULL,
          "joining rank %d of %d on GPU %d: status %d, '%s'", r, n, dev, (int)s, err.msg);
    /* refused before NCCL sees anything (a bad rank would leave the others waiting in ncclCommInitRank) */
    s = lasp_comm_nccl_join(id, n, n, dev, &bad, &err);
    CHECK(s == LASP_ERR_ARG && !bad && strstr(err.msg, "rank") && strstr(err.msg, "hint"),
          "joining as rank %d of %d: status %d, '%s'", n, n, (int)s, err.msg);
    s = lasp_comm_nccl_join(NULL, r, n, dev, &bad, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "id"), "joining without an id: status %d, '%s'", (int)s, err.msg);
    if (!mpi_case("nccl joined world: made from an id passed by the caller, no MPI; bad rank or id refused") || !j) {
        lasp_comm_free(j);
        return;
    }
    test_ops(j, "nccl joined world");
    test_windows(j, "nccl joined world");
    /* a split with no MPI twin: NCCL says where each rank landed */
    lasp_comm *h = NULL;
    s = lasp_comm_split(j, r % 2, n - r, &h, &err);
    /* keys reversed: within a parity the higher world ranks come first */
    CHECK(s == LASP_OK && h && lasp_comm_size(h) == (n - r % 2 + 1) / 2 && lasp_comm_rank(h) == (n - 1 - r) / 2,
          "joined world split by parity: rank %d, size %d ('%s')", lasp_comm_rank(h), lasp_comm_size(h), err.msg);
    if (h) CHECK(lasp_comm_barrier(h, &err) == LASP_OK, "barrier of a joined world's split: %s", err.msg);
    lasp_comm_free(h);
    CHECK(lasp_comm_barrier(j, &err) == LASP_OK, "barrier of a joined world: %s", err.msg);
    mpi_case("nccl joined world: split by parity, barriers through NCCL");
    lasp_comm_free(j);
}
#endif

/* ---- what only the self backend does, and what this build says of the others ------------------------ */

static void test_self(lasp_comm *c) {
    lasp_err err = {0};
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = (float)i;
    for (int is_send = 0; is_send < 2; is_send++) {
        lasp_comm_req *lone = NULL;
        lasp_status s = is_send ? lasp_comm_isend(c, x, N, 0, LASP_F32, &lone, &err)
                                : lasp_comm_irecv(c, y, N, 0, LASP_F32, &lone, &err);
        CHECK(s == LASP_OK, "%s", err.msg);
        s = lasp_comm_wait(c, lone, &err);
        CHECK(s == LASP_ERR_COMM && strstr(err.msg, "wait forever"), "an unmatched %s: status %d, '%s'",
              is_send ? "send" : "receive", (int)s, err.msg);
    }
    mpi_case("self: waiting on an unmatched receive or send is an error, not a hang");

    lasp_comm *m = NULL;
    lasp_status s;
#ifndef LASP_HAVE_MPI
    s = lasp_comm_world(LASP_COMM_MPI, NULL, NULL, &m, &err);
    CHECK(s == LASP_ERR_UNSUPPORTED && !m && strstr(err.msg, "without MPI") && strstr(err.msg, "hint"),
          "mpi world without MPI: status %d, '%s'", (int)s, err.msg);
    mpi_case("mpi backend in a build without MPI: a clear error with a hint");
#endif
    s = lasp_comm_world(LASP_COMM_NCCL, NULL, NULL, &m, &err);
#if TEST_NCCL
    /* a GPU machine gets a one-rank NCCL world; one without a GPU a clear error, never a hang */
    if (s == LASP_OK) {
        CHECK(lasp_comm_size(m) == 1 && lasp_comm_stream(m) != NULL, "one-rank nccl world");
        lasp_comm_free(m);
    } else {
        CHECK(s == LASP_ERR_CUDA && strstr(err.msg, "GPU"), "nccl world without a GPU: status %d, '%s'", (int)s,
              err.msg);
    }
    mpi_case("nccl backend: a one-rank world, or a clear error without a GPU");
#else
    CHECK(s == LASP_ERR_UNSUPPORTED && !m && strstr(err.msg, "NCCL"), "nccl world: status %d, '%s'", (int)s, err.msg);
    mpi_case("nccl backend in a build without NCCL: a clear error");
#endif
}

/* The backend asked for: --backend self|mpi|nccl; else mpi under a launcher (mpirun, srun), self without. */
static int parse_backend(int argc, char **argv, lasp_comm_backend *b) {
    *b = lasp_comm_launcher_size() > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    if (argc == 1) return 1;
    if (argc != 3 || strcmp(argv[1], "--backend")) return 0;
    for (int i = 0; i < 3; i++)
        if (!strcmp(argv[2], BACKENDS[i])) {
            *b = (lasp_comm_backend)i;
            return 1;
        }
    return 0;
}

int main(int argc, char **argv) {
    lasp_comm_backend b;
    if (!parse_backend(argc, argv, &b)) {
        printf("FAIL test_comm: usage: [mpirun -np N] %s [--backend self|mpi|nccl]\n", argv[0]);
        return 2;
    }
    lasp_err err = {0};
    lasp_comm *world = NULL;
    lasp_status s;
    on_dev = b == LASP_COMM_NCCL;
    if (on_dev) {
        /* verdicts travel over host MPI; the NCCL world under test moves device memory only */
        s = lasp_comm_world(LASP_COMM_MPI, &argc, &argv, &mpi_test_world_, &err);
        if (s == LASP_OK) s = lasp_comm_world(LASP_COMM_NCCL, &argc, &argv, &world, &err);
    } else {
        s = lasp_comm_world(b, &argc, &argv, &world, &err);
        mpi_test_world_ = world;
    }
    if (s != LASP_OK) {
        printf("  %s\n", err.msg);
        if (lasp_comm_rank(mpi_test_world_) == 0) printf("FAIL %s world\n", BACKENDS[b]);
        lasp_comm_free(mpi_test_world_);
        return 1;
    }
    if (lasp_comm_rank(world) == 0)
        printf("# test_comm: the %s backend on %d rank(s)\n", BACKENDS[b], lasp_comm_size(world));
    char cn[32];
    snprintf(cn, sizeof cn, "%s world", BACKENDS[b]);
    test_world(world, b);
    test_ops(world, cn);
    test_windows(world, cn);
    test_splits(world, b);
    if (b == LASP_COMM_SELF) test_self(world);
#if TEST_NCCL
    if (on_dev) test_joined(world);
#endif
    const int rc = mpi_test_exit();
    if (world != mpi_test_world_) lasp_comm_free(world);
    lasp_comm_free(mpi_test_world_);
    return rc;
}
