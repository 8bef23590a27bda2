/* mpi_test.h — the harness of test.h for multi-rank tests: every rank runs every check, the verdict
 * of a case is reduced over the world (it fails if any rank failed), and only rank 0 prints the
 * PASS/FAIL line, so tests/run.sh counts each case once whatever the number of ranks.
 * mpi_test_world_ is a host communicator over every process of the job: an mpi world, a self world
 * for one process, or, in a test of device communicators, an mpi world kept beside them. */
#ifndef LASP_MPI_TEST_H
#define LASP_MPI_TEST_H

#include <stdarg.h>

#include "comm/comm.h"
#include "test.h"

static lasp_comm *mpi_test_world_;
static int mpi_test_failed_;  /* cases failed, the same on every rank */

/* Ends the current case on every rank. A communication failure while reducing the verdict cannot be
 * survived (the ranks would disagree on what comes next), so it aborts the job. */
static inline int mpi_case(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int mpi_case(const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    float mine = (float)test_failed_checks_, any = 0;
    lasp_err err = {LASP_OK, {0}};
    if (lasp_comm_allreduce(mpi_test_world_, &mine, &any, 1, LASP_F32, LASP_REDUCE_MAX, &err) != LASP_OK)
        lasp_comm_abort(mpi_test_world_, err.msg);
    test_failed_checks_ = any > 0;
    int ok;
    if (lasp_comm_rank(mpi_test_world_) == 0) {
        ok = test_case("%s", name);
    } else {
        ok = !(any > 0);
        test_failed_checks_ = 0;
    }
    mpi_test_failed_ += !ok;
    return ok;
}

/* The seed of rank 0, so every rank draws the same inputs. */
static inline uint64_t mpi_test_seed(void) {
    double s = 0;
    if (lasp_comm_rank(mpi_test_world_) == 0) s = (double)(test_seed() % (1ull << 52));
    lasp_err err = {LASP_OK, {0}};
    if (lasp_comm_bcast(mpi_test_world_, &s, 1, LASP_F64, 0, &err) != LASP_OK)
        lasp_comm_abort(mpi_test_world_, err.msg);
    return (uint64_t)s;
}

static inline int mpi_test_exit(void) {
    if (lasp_comm_rank(mpi_test_world_) == 0)
        printf("# %d ranks: %d passed, %d failed\n", lasp_comm_size(mpi_test_world_), test_cases_passed_,
               test_cases_failed_);
    return mpi_test_failed_ ? 1 : 0;
}

#endif
