/* test_mpi_comm.c — the communicator under mpirun (1, 2, 4 ranks): every operation with values whose
 * answer is exact (integers in floats), on the world and on sub-communicators, counting wrong elements
 * (nccl-tests style); the traffic counters; and argument errors. Usage: mpirun -np N test_mpi_comm */
#include <string.h>

#include "mpi_test.h"
#include "sp/sp.h"

enum { N = 1000 };  /* elements per block: small, but more than one cache line and not a power of two */

static size_t wrong;  /* wrong elements in the current case */

static void expect(float got, double want) {
    if ((double)got != want) {
        if (wrong < 3) printf("  rank %d: got %.1f, expected %.1f\n", lasp_comm_rank(mpi_test_world_), got, want);
        wrong++;
    }
}

static void end_case(const char *comm_name, const char *what) {
    CHECK(wrong == 0, "%zu wrong elements", wrong);
    mpi_case("comm %s %s: 0 wrong elements", comm_name, what);
    wrong = 0;
}

/* Every operation on one communicator. Values stay below 2^24, so float sums are exact. */
static void test_ops(lasp_comm *c, const char *cn) {
    const int n = lasp_comm_size(c), r = lasp_comm_rank(c);
    const size_t bytes = N * sizeof(float);
    float *x = calloc((size_t)n * N, sizeof *x), *y = calloc((size_t)n * N, sizeof *y);
    double *xd = calloc(N, sizeof *xd);
    lasp_err err = {0};
    lasp_status s;

    /* all-reduce: sum, max, min; out of place, in place; f32 and f64 */
    for (int i = 0; i < N; i++) x[i] = (float)(r * 1000 + i);
    lasp_comm_reset_stats(c);
    s = lasp_comm_allreduce(c, x, y, N, LASP_F32, LASP_REDUCE_SUM, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect(y[i], 1000.0 * n * (n - 1) / 2 + (double)n * i);
    lasp_comm_stats st = lasp_comm_get_stats(c);
    CHECK(st.coll_calls == 1 && st.p2p_msgs == 0, "stats after one all-reduce: %llu calls, %llu messages",
          (unsigned long long)st.coll_calls, (unsigned long long)st.p2p_msgs);
    CHECK(st.coll_bytes == (uint64_t)(2.0 * (n - 1) / n * bytes + 0.5), "all-reduce counted %llu bytes",
          (unsigned long long)st.coll_bytes);
    s = lasp_comm_allreduce(c, x, x, N, LASP_F32, LASP_REDUCE_MAX, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect(x[i], 1000.0 * (n - 1) + i);
    for (int i = 0; i < N; i++) x[i] = (float)(r * 1000 + i);
    s = lasp_comm_allreduce(c, x, y, N, LASP_F32, LASP_REDUCE_MIN, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect(y[i], i);
    for (int i = 0; i < N; i++) xd[i] = r + 0.5 * i;
    s = lasp_comm_allreduce(c, xd, xd, N, LASP_F64, LASP_REDUCE_SUM, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect((float)xd[i], n * (n - 1) / 2.0 + n * 0.5 * i);
    end_case(cn, "all-reduce sum/max/min f32, f64, in place");

    /* reduce-scatter: block b of every rank's input is b·N + i + rank; rank r gets block r summed */
    for (int b = 0; b < n; b++)
        for (int i = 0; i < N; i++) x[b * N + i] = (float)(b * N + i + r);
    lasp_comm_reset_stats(c);
    s = lasp_comm_reduce_scatter(c, x, y, N, LASP_F32, LASP_REDUCE_SUM, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect(y[i], (double)n * (r * N + i) + n * (n - 1) / 2.0);
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_bytes == (uint64_t)(n - 1) * bytes, "reduce-scatter counted %llu bytes",
          (unsigned long long)st.coll_bytes);
    s = lasp_comm_reduce_scatter(c, x, x, N, LASP_F32, LASP_REDUCE_MAX, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect(x[i], (double)(r * N + i) + n - 1);
    end_case(cn, "reduce-scatter sum, max in place");

    /* all-gather: block j of the result is rank j's i + 7j; also MPI-style in place */
    for (int i = 0; i < N; i++) x[i] = (float)(i + 7 * r);
    memset(y, 0, (size_t)n * bytes);
    lasp_comm_reset_stats(c);
    s = lasp_comm_allgather(c, x, y, N, LASP_F32, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(y[j * N + i], i + 7 * j);
    st = lasp_comm_get_stats(c);
    CHECK(st.coll_bytes == (uint64_t)(n - 1) * bytes, "all-gather counted %llu bytes",
          (unsigned long long)st.coll_bytes);
    memset(y, 0, (size_t)n * bytes);
    for (int i = 0; i < N; i++) y[r * N + i] = (float)(i - 3 * r);
    s = lasp_comm_allgather(c, y + r * N, y, N, LASP_F32, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(y[j * N + i], i - 3 * j);
    end_case(cn, "all-gather, in place");

    /* all-to-all: rank r sends to rank j the block 100000·r + 1000·j + i */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) x[j * N + i] = (float)(100000 * r + 1000 * j + i % 1000);
    s = lasp_comm_alltoall(c, x, y, N, LASP_F32, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(y[j * N + i], 100000.0 * j + 1000.0 * r + i % 1000);
    /* 16-bit types move as bits: the pattern must survive exactly */
    uint16_t *hx = (uint16_t *)x, *hy = (uint16_t *)y;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) hx[j * N + i] = (uint16_t)(r * 4099 + j * 257 + i);
    s = lasp_comm_alltoall(c, hx, hy, N, LASP_BF16, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < N; i++) expect(hy[j * N + i], (uint16_t)(j * 4099 + r * 257 + i));
    end_case(cn, "all-to-all f32, bf16 bits");

    /* broadcast from every root */
    for (int root = 0; root < n; root++) {
        for (int i = 0; i < N; i++) x[i] = r == root ? (float)(root * 10 + i) : -1.0f;
        s = lasp_comm_bcast(c, x, N, LASP_F32, root, &err);
        CHECK(s == LASP_OK, "%s", err.msg);
        for (int i = 0; i < N; i++) expect(x[i], root * 10 + i);
    }
    CHECK(lasp_comm_barrier(c, &err) == LASP_OK, "%s", err.msg);
    end_case(cn, "broadcast from every root, barrier");

    /* point to point: a chain (no wrap) with sendrecv, then a ring with irecv/isend in both orders */
    lasp_comm_reset_stats(c);
    for (int i = 0; i < N; i++) x[i] = (float)(r * 3 + i), y[i] = -1;
    const int next = r + 1 < n ? r + 1 : -1, prev = r - 1;
    s = lasp_comm_sendrecv(c, x, N, next, y, N, prev, LASP_F32, &err);
    CHECK(s == LASP_OK, "%s", err.msg);
    for (int i = 0; i < N; i++) expect(y[i], r > 0 ? (r - 1) * 3 + i : -1);
    st = lasp_comm_get_stats(c);
    CHECK(st.p2p_msgs == (uint64_t)(next >= 0) && st.p2p_bytes == (next >= 0 ? bytes : 0) && st.coll_calls == 0,
          "chain counted %llu messages, %llu bytes", (unsigned long long)st.p2p_msgs,
          (unsigned long long)st.p2p_bytes);
    for (int order = 0; order < 2; order++) {
        lasp_comm_req *rx = NULL, *tx = NULL;
        for (int i = 0; i < N; i++) x[i] = (float)(r * 5 + i + order), y[i] = -1;
        const int to = (r + 1) % n, from = (r + n - 1) % n;
        if (order == 0) {
            s = lasp_comm_irecv(c, y, N, from, LASP_F32, &rx, &err);
            if (s == LASP_OK) s = lasp_comm_isend(c, x, N, to, LASP_F32, &tx, &err);
        } else {
            s = lasp_comm_isend(c, x, N, to, LASP_F32, &tx, &err);
            if (s == LASP_OK) s = lasp_comm_irecv(c, y, N, from, LASP_F32, &rx, &err);
        }
        if (s == LASP_OK) s = lasp_comm_wait(c, rx, &err);
        if (s == LASP_OK) s = lasp_comm_wait(c, tx, &err);
        CHECK(s == LASP_OK, "%s", err.msg);
        for (int i = 0; i < N; i++) expect(y[i], from * 5 + i + order);
    }
    end_case(cn, "sendrecv chain, isend/irecv ring both orders, counters");

    /* zero counts and bad arguments: a status and a message, never a crash or a hang */
    CHECK(lasp_comm_allreduce(c, x, y, 0, LASP_F32, LASP_REDUCE_SUM, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_comm_allgather(c, x, y, 0, LASP_F32, &err) == LASP_OK, "%s", err.msg);
    s = lasp_comm_sendrecv(c, x, N, n, y, N, -1, LASP_F32, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "outside"), "bad destination: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_bcast(c, x, N, LASP_F32, n, &err);
    CHECK(s == LASP_ERR_ARG && strstr(err.msg, "root"), "bad root: status %d, '%s'", (int)s, err.msg);
    s = lasp_comm_allreduce(c, x, y, N, LASP_BF16, LASP_REDUCE_SUM, &err);
    CHECK(s == LASP_ERR_UNSUPPORTED, "bf16 reduction on the host: status %d", (int)s);
    end_case(cn, "zero counts; bad peer, root, dtype refused");

    free(x), free(y), free(xd);
}

int main(int argc, char **argv) {
    lasp_err err = {0};
    lasp_comm *world;
    if (lasp_comm_world(LASP_COMM_MPI, &argc, &argv, &world, &err) != LASP_OK) {
        printf("FAIL comm world: %s\n", err.msg);
        return 1;
    }
    mpi_test_world_ = world;
    const int n = lasp_comm_size(world), r = lasp_comm_rank(world);
    if (r == 0) printf("# test_mpi_comm on %d ranks\n", n);
    CHECK(lasp_comm_backend_of(world) == LASP_COMM_MPI, "backend %d", (int)lasp_comm_backend_of(world));
    mpi_case("comm world: %d ranks over MPI", n);

    test_ops(world, "world");

    /* halves by parity, ordered backwards by key: ranks and sizes must follow color and key */
    lasp_comm *half = NULL;
    CHECK(lasp_comm_split(world, r % 2, -r, &half, &err) == LASP_OK, "%s", err.msg);
    if (half) {
        const int hn = (n + 1 - r % 2) / 2;
        CHECK(lasp_comm_size(half) == hn, "half of %d ranks has %d", n, lasp_comm_size(half));
        CHECK(lasp_comm_rank(half) == hn - 1 - r / 2, "world rank %d is rank %d of its half", r, lasp_comm_rank(half));
    }
    mpi_case("comm split by parity, reversed keys");
    if (half) test_ops(half, "parity-half");
    lasp_comm_free(half);

    /* the SP and DP groups of every layout that fits */
    for (int sp_size = 1; sp_size <= n; sp_size++) {
        if (n % sp_size) continue;
        lasp_sp sp;
        lasp_status s = lasp_sp_init(world, sp_size, LASP_SP_CHAIN, &sp, &err);
        CHECK(s == LASP_OK, "%s", err.msg);
        if (s == LASP_OK) {
            CHECK(lasp_comm_size(sp.sp) == sp_size && lasp_comm_rank(sp.sp) == r % sp_size, "sp group: rank %d of %d",
                  lasp_comm_rank(sp.sp), lasp_comm_size(sp.sp));
            CHECK(lasp_comm_size(sp.dp) == n / sp_size && lasp_comm_rank(sp.dp) == r / sp_size,
                  "dp group: rank %d of %d", lasp_comm_rank(sp.dp), lasp_comm_size(sp.dp));
            /* contiguous SP groups: the sum of world ranks in a group is known */
            float wr = (float)r, sum = 0;
            CHECK(lasp_comm_allreduce(sp.sp, &wr, &sum, 1, LASP_F32, LASP_REDUCE_SUM, &err) == LASP_OK, "%s", err.msg);
            const int g0 = r / sp_size * sp_size;
            CHECK(sum == (float)(sp_size * g0 + sp_size * (sp_size - 1) / 2), "sp group of rank %d sums ranks to %.0f",
                  r, sum);
            CHECK(lasp_comm_allreduce(sp.dp, &wr, &sum, 1, LASP_F32, LASP_REDUCE_SUM, &err) == LASP_OK, "%s", err.msg);
            const int dpn = n / sp_size, j = r % sp_size;
            CHECK(sum == (float)(dpn * j + sp_size * dpn * (dpn - 1) / 2), "dp group of rank %d sums ranks to %.0f", r,
                  sum);
        }
        mpi_case("layout dp %d × sp %d: contiguous SP groups, strided DP groups", n / sp_size, sp_size);
        if (s == LASP_OK) {
            char name[64];
            snprintf(name, sizeof name, "sp-group(sp=%d)", sp_size);
            if (sp_size > 1 && sp_size < n) test_ops(sp.sp, name);
            snprintf(name, sizeof name, "dp-group(sp=%d)", sp_size);
            if (sp_size > 1 && sp_size < n) test_ops(sp.dp, name);
            lasp_sp_free(&sp);
        }
    }
    if (n > 1 && n % 3) {
        lasp_sp sp;
        lasp_status s = lasp_sp_init(world, 3, LASP_SP_CHAIN, &sp, &err);
        CHECK(s == LASP_ERR_ARG && strstr(err.msg, "does not divide"), "sp 3 of %d ranks: status %d, '%s'", n, (int)s,
              err.msg);
        mpi_case("layout sp 3 on %d ranks refused", n);
    }
    int rc = mpi_test_exit();
    lasp_comm_free(world);
    return rc;
}
