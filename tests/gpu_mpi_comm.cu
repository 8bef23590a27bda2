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
    lasp_comm_free(lean);
    lasp_comm_free(world);
    const int rc = mpi_test_exit();
    lasp_comm_free(mpi_test_world_);
    return rc;
}
