/* gpu_mpi_comm.cu — the NCCL backend of the comm layer on device memory, under mpirun with one
 * process per GPU: every operation with values whose result is exactly predictable (small integers
 * in floats), on the world and on split sub-communicators; zero wrong elements on every rank. The
 * verdict of each case is reduced over the ranks (mpi_test.h, on a host MPI world), and rank 0 prints it. */
#include <cuda_runtime.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "mpi_test.h"

static int world_rank;

/* 1 if every rank passed the current case; prints the verdict on rank 0 only. */
static float *dev_fill(size_t n, float (*f)(size_t i, int rank), int rank) {
    float *h = (float *)malloc(n * sizeof(float)), *d = NULL;
    for (size_t i = 0; i < n; i++) h[i] = f(i, rank);
    cudaMalloc(&d, n * sizeof(float));
    cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    return d;
}

static float *host_copy(const float *d, size_t n) {
    float *h = (float *)malloc(n * sizeof(float));
    cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
}

static float val(size_t i, int rank) { return (float)((int)(i % 97) + 100 * rank); }
static float zero(size_t i, int rank) { (void)i, (void)rank; return -1.0f; }

static void check_collectives(lasp_comm *c, const char *label) {
    lasp_err err = {};
    const int r = lasp_comm_rank(c), W = lasp_comm_size(c);
    const size_t n = 1000 * (size_t)W + 3;  /* not a round number */
    char name[128];

    float *x = dev_fill(n, val, r), *y = dev_fill(n * W, zero, r);
    CHECK(lasp_comm_allreduce(c, x, y, n, LASP_F32, LASP_REDUCE_SUM, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    float *h = host_copy(y, n);
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += h[i] != (float)(W * (int)(i % 97) + 100 * (W * (W - 1) / 2));
    CHECK(wrong == 0, "allreduce: %zu wrong elements", wrong);
    free(h);
    snprintf(name, sizeof name, "nccl allreduce sum on %s (%d ranks)", label, W);
    mpi_case("%s", name);

    const size_t m = 1000;
    CHECK(lasp_comm_reduce_scatter(c, x, y, m, LASP_F32, LASP_REDUCE_MAX, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    h = host_copy(y, m);
    wrong = 0;
    for (size_t i = 0; i < m; i++) wrong += h[i] != val((size_t)r * m + i, W - 1);
    CHECK(wrong == 0, "reduce_scatter: %zu wrong elements", wrong);
    free(h);
    snprintf(name, sizeof name, "nccl reduce_scatter max on %s", label);
    mpi_case("%s", name);

    CHECK(lasp_comm_allgather(c, x, y, n, LASP_F32, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    h = host_copy(y, n * W);
    wrong = 0;
    for (int p = 0; p < W; p++)
        for (size_t i = 0; i < n; i++) wrong += h[p * n + i] != val(i, p);
    CHECK(wrong == 0, "allgather: %zu wrong elements", wrong);
    free(h);
    snprintf(name, sizeof name, "nccl allgather on %s", label);
    mpi_case("%s", name);

    CHECK(lasp_comm_alltoall(c, x, y, m, LASP_F32, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    h = host_copy(y, m * W);
    wrong = 0;
    for (int p = 0; p < W; p++)
        for (size_t i = 0; i < m; i++) wrong += h[p * m + i] != val((size_t)r * m + i, p);
    CHECK(wrong == 0, "alltoall: %zu wrong elements", wrong);
    free(h);
    snprintf(name, sizeof name, "nccl alltoall on %s", label);
    mpi_case("%s", name);

    cudaMemcpy(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice);
    CHECK(lasp_comm_bcast(c, y, n, LASP_F32, W - 1, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_barrier(c, &err) == LASP_OK, "%s", err.msg);
    h = host_copy(y, n);
    wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += h[i] != val(i, W - 1);
    CHECK(wrong == 0, "bcast: %zu wrong elements", wrong);
    free(h);
    snprintf(name, sizeof name, "nccl bcast from the last rank on %s", label);
    mpi_case("%s", name);

    /* the LASP chain's pattern: r → r+1, no wrap-around, both as one grouped call and as halves */
    cudaMemset(y, 0, n * sizeof(float));
    lasp_comm_reset_stats(c);
    CHECK(lasp_comm_sendrecv(c, x, n, r + 1 < W ? r + 1 : -1, y, n, r > 0 ? r - 1 : -1, LASP_F32, &err) == LASP_OK,
          "%s", err.msg);
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    h = host_copy(y, n);
    wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += h[i] != (r > 0 ? val(i, r - 1) : 0.0f);
    CHECK(wrong == 0, "chain sendrecv: %zu wrong elements", wrong);
    CHECK(lasp_comm_get_stats(c).p2p_msgs == (uint64_t)(r + 1 < W), "message counter %llu",
          (unsigned long long)lasp_comm_get_stats(c).p2p_msgs);
    free(h);
    cudaMemset(y, 0, n * sizeof(float));
    lasp_comm_req *rq = NULL, *sq = NULL;
    if (r > 0) CHECK(lasp_comm_irecv(c, y, n, r - 1, LASP_F32, &rq, &err) == LASP_OK, "%s", err.msg);
    if (r + 1 < W) CHECK(lasp_comm_isend(c, x, n, r + 1, LASP_F32, &sq, &err) == LASP_OK, "%s", err.msg);
    if (rq) CHECK(lasp_comm_wait(c, rq, &err) == LASP_OK, "%s", err.msg);
    if (sq) CHECK(lasp_comm_wait(c, sq, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    h = host_copy(y, n);
    wrong = 0;
    for (size_t i = 0; i < n; i++) wrong += h[i] != (r > 0 ? val(i, r - 1) : 0.0f);
    CHECK(wrong == 0, "chain isend/irecv: %zu wrong elements", wrong);
    free(h);
    snprintf(name, sizeof name, "nccl chain r -> r+1 (sendrecv, isend/irecv) on %s", label);
    mpi_case("%s", name);
    cudaFree(x), cudaFree(y);
}

/* One-sided transfers: ROUNDS rounds in which every rank puts its vector of the round into every peer's
 * window (slot = its rank) and raises the peer's counter, waits for every peer's, copies the slots out and
 * acknowledges; a slot is written again only after its reader acknowledged the round before. No host
 * synchronisation between rounds, so a missing fence or a counter raised early shows as a wrong element. */
static void check_window(lasp_comm *c, const char *label) {
    enum { ROUNDS = 40 };
    lasp_err err = {};
    const int r = lasp_comm_rank(c), W = lasp_comm_size(c);
    const size_t n = 4096 * 3 + 4; /* floats a slot: a multiple of 4, not of a block's */
    lasp_comm_window *w = NULL;
    lasp_status st = lasp_comm_window_make(c, (size_t)W * n * sizeof(float), 2 * W, &w, &err);
    const char *allow = getenv("LASP_TEST_ALLOW_NO_WINDOW");
    if (st == LASP_ERR_UNSUPPORTED && allow && allow[0] == '1') {
        if (world_rank == 0) printf("# one-sided windows unsupported here: %s\n", err.msg);
        return;
    }
    CHECK(st == LASP_OK && w, "window: %s", err.msg);
    mpi_case("nccl one-sided window made on %s", label);
    if (!w) return;
    CHECK(lasp_comm_window_bytes(w) == (size_t)W * n * sizeof(float), "window bytes");
    float *h = (float *)malloc((size_t)ROUNDS * n * sizeof(float)), *x = NULL, *out = NULL;
    for (int k = 0; k < ROUNDS; k++)
        for (size_t i = 0; i < n; i++) h[(size_t)k * n + i] = (float)((int)(i % 97) + 100 * r + 10000 * k);
    cudaMalloc(&x, (size_t)ROUNDS * n * sizeof(float));
    cudaMalloc(&out, (size_t)ROUNDS * W * n * sizeof(float));
    cudaMemcpy(x, h, (size_t)ROUNDS * n * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemset(out, 0, (size_t)ROUNDS * W * n * sizeof(float));
    const float *base = (const float *)lasp_comm_window_base(w);
    cudaStream_t cs = (cudaStream_t)lasp_comm_stream(c);
    lasp_comm_reset_stats(c);
    for (unsigned k = 1; k <= ROUNDS && !test_failed_checks_; k++) {
        for (int d = 1; d < W; d++) {
            const int to = (r + d) % W;
            if (k > 1) CHECK(lasp_comm_wait_signal(w, W + to, k - 1, &err) == LASP_OK, "%s", err.msg);
            CHECK(lasp_comm_put_signal(w, x + (k - 1) * n, n * sizeof(float), (size_t)r * n * sizeof(float), to, r, k,
                                       &err) == LASP_OK, "%s", err.msg);
        }
        for (int d = 1; d < W; d++) {
            const int from = (r - d + W) % W;
            CHECK(lasp_comm_wait_signal(w, from, k, &err) == LASP_OK, "%s", err.msg);
            cudaMemcpyAsync(out + ((size_t)(k - 1) * W + from) * n, base + (size_t)from * n, n * sizeof(float),
                            cudaMemcpyDeviceToDevice, cs);
            CHECK(lasp_comm_put_signal(w, NULL, 0, 0, from, W + r, k, &err) == LASP_OK, "%s", err.msg);
        }
    }
    CHECK(lasp_comm_sync(c, &err) == LASP_OK, "%s", err.msg);
    float *o = host_copy(out, (size_t)ROUNDS * W * n);
    size_t wrong = 0;
    for (int k = 0; k < ROUNDS; k++)
        for (int p = 0; p < W; p++)
            for (size_t i = 0; i < n && p != r; i++)
                wrong += o[((size_t)k * W + p) * n + i] != (float)((int)(i % 97) + 100 * p + 10000 * k);
    CHECK(wrong == 0, "%zu wrong elements over %d rounds", wrong, ROUNDS);
    const lasp_comm_stats cst = lasp_comm_get_stats(c);
    CHECK(cst.p2p_bytes == (uint64_t)ROUNDS * (W - 1) * n * sizeof(float), "bytes counted %llu",
          (unsigned long long)cst.p2p_bytes);
    mpi_case("nccl one-sided put/wait, %d rounds to every peer, slots reused after acknowledgement, on %s", ROUNDS,
             label);
    /* what a put or a wait refuses, before anything is enqueued */
    CHECK(lasp_comm_put_signal(w, x, n * sizeof(float), 0, W, 0, 1, &err) == LASP_ERR_ARG, "peer W accepted");
    CHECK(lasp_comm_put_signal(w, x, n * sizeof(float), 0, 0, 2 * W, 1, &err) == LASP_ERR_ARG, "flag 2W accepted");
    CHECK(lasp_comm_put_signal(w, x, 2 * n * sizeof(float), (size_t)(W - 1) * n * sizeof(float), 0, 0, 1, &err) ==
              LASP_ERR_ARG, "an overrun accepted");
    CHECK(lasp_comm_put_signal(w, x + 1, 16, 0, 0, 0, 1, &err) == LASP_ERR_ARG, "a misaligned source accepted");
    CHECK(lasp_comm_put_signal(w, x, 20, 0, 0, 0, 1, &err) == LASP_ERR_ARG, "20 bytes accepted");
    CHECK(lasp_comm_wait_signal(w, -1, 1, &err) == LASP_ERR_ARG, "flag -1 accepted");
    CHECK(strstr(err.msg, "flag -1") != NULL, "message: %s", err.msg);
    mpi_case("nccl one-sided transfers refuse a bad peer, flag, range or alignment on %s", label);
    lasp_comm_window_free(w);
    cudaFree(x), cudaFree(out);
    free(h), free(o);
}

int main(int argc, char **argv) {
    lasp_comm *world = NULL;
    lasp_err err = {};
    /* verdicts travel over host MPI; the NCCL world under test moves device memory only */
    if (lasp_comm_world(LASP_COMM_MPI, &argc, &argv, &mpi_test_world_, &err) != LASP_OK ||
        lasp_comm_world(LASP_COMM_NCCL, &argc, &argv, &world, &err) != LASP_OK) {
        printf("FAIL nccl world: %s\n", err.msg);
        return 1;
    }
    world_rank = lasp_comm_rank(world);
    mpi_test_seed();
    check_collectives(world, "the world");
    check_window(world, "the world");
    const int W = lasp_comm_size(world);
    if (W >= 2) {
        /* halves in reverse order: sub-communicator ranks differ from world ranks */
        lasp_comm *half = NULL;
        CHECK(lasp_comm_split(world, world_rank % 2, W - world_rank, &half, &err) == LASP_OK, "%s", err.msg);
        mpi_case("nccl split into even and odd ranks");
        if (half) check_collectives(half, "a split half");
        lasp_comm_free(half);
    }
    /* the SP layer's communicator: NCCL's kernels on at most 2 CTAs, no clusters (lasp_comm_split_lean) */
    lasp_comm *lean = NULL;
    CHECK(lasp_comm_split_lean(world, 0, world_rank, 2, &lean, &err) == LASP_OK, "%s", err.msg);
    mpi_case("nccl lean split (2 CTAs)");
    if (lean) check_collectives(lean, "a lean split");
    if (lean) check_window(lean, "a lean split");
    lasp_comm_free(lean);
    lasp_comm_free(world);
    const int rc = mpi_test_exit();
    lasp_comm_free(mpi_test_world_);
    return rc;
}
