/* test.h — the smallest useful harness, and the helpers every test shares. A test binary prints one line
 * per case:
 *     PASS name            or            FAIL name
 * with the failed checks above it, and exits non-zero if any case failed. tests/run.sh counts
 * these lines over every binary and run, so the suite's total is the sum of its cases. */
#ifndef LASP_TEST_H
#define LASP_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifdef LASP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"

static int test_failed_checks_;  /* in the current case */
static int test_cases_failed_, test_cases_passed_;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            test_failed_checks_++;                                          \
            printf("  check failed at %s:%d: ", __FILE__, __LINE__);        \
            printf(__VA_ARGS__);                                            \
            printf("\n");                                                   \
            fflush(stdout);                                                 \
        }                                                                   \
    } while (0)

/* Ends the current case: prints PASS/FAIL and resets the check counter. Returns 1 if it passed. */
static inline int test_case(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static inline int test_case(const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int ok = test_failed_checks_ == 0;
    printf("%s %s\n", ok ? "PASS" : "FAIL", name);
    fflush(stdout);
    if (ok) test_cases_passed_++;
    else test_cases_failed_++;
    test_failed_checks_ = 0;
    return ok;
}

/* Fresh inputs every run; LASP_TEST_SEED=N repeats one. The seed is printed so a failure can be replayed. */
static inline uint64_t test_seed(void) {
    const char *env = getenv("LASP_TEST_SEED");
    uint64_t s = env ? strtoull(env, NULL, 10) : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)getpid();
    printf("# seed %llu (repeat with LASP_TEST_SEED=%llu)\n", (unsigned long long)s, (unsigned long long)s);
    return s;
}

static inline int test_exit(void) {
    printf("# %d passed, %d failed\n", test_cases_passed_, test_cases_failed_);
    return test_cases_failed_ ? 1 : 0;
}

/* ---- inputs and errors, shared by every test (C and CUDA C++) ---------------------------------- */

/* n normal values × scale (never zeros: they would hide unwritten outputs) */
static inline float *test_randn(lasp_rng *r, size_t n, double scale) {
    float *x = (float *)malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * lasp_rng_normal(r));
    return x;
}

/* a double copy of x (NULL stays NULL), for the fp64 reference */
static inline double *test_widen(const float *x, size_t n) {
    if (!x) return NULL;
    double *y = (double *)malloc((n ? n : 1) * sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

/* ‖x − ref‖ / ‖ref‖ between two f32 arrays (+inf on NaN or Inf), the metric of docs/MATH.md §6 */
static inline double test_rel(const float *x, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)x[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
    }
    if (!(num < INFINITY)) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* x rounded to dtype t in place, so that a reference sees the values a device of that dtype sees */
static inline void test_round(float *x, size_t n, lasp_dtype t) {
    if (t == LASP_F32 || !n) return;
    void *tmp = malloc(n * lasp_dtype_size(t));
    lasp_convert(tmp, t, x, LASP_F32, n);
    lasp_convert(x, LASP_F32, tmp, t, n);
    free(tmp);
}

#ifdef LASP_HAVE_CUDA
/* a device copy of host f32 x in dtype t; x NULL: poisoned with NaN (0xff bytes), so that every element
 * the code under test should write must be written. NULL if the GPU refuses. */
static inline void *test_to_dev(const float *x, size_t n, lasp_dtype t) {
    const size_t bytes = (n ? n : 1) * lasp_dtype_size(t);
    void *d = NULL;
    if (cudaMalloc(&d, bytes) != cudaSuccess) return NULL;
    if (!x) return cudaMemset(d, 0xff, bytes) == cudaSuccess ? d : NULL;
    void *h = malloc(bytes);
    lasp_convert(h, t, x, LASP_F32, n);
    const cudaError_t e = cudaMemcpy(d, h, n * lasp_dtype_size(t), cudaMemcpyHostToDevice);
    free(h);
    return e == cudaSuccess ? d : NULL;
}

/* 1 if a GPU is there; otherwise a FAIL line saying so (a GPU test on a machine without one fails) */
static inline int test_have_gpu(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return 1;
    printf("FAIL no CUDA device: run the GPU tests on a machine with one\n");
    return 0;
}

/* host f32 of n device elements of dtype t (NaN-filled if the copy fails) */
static inline float *test_from_dev(const void *d, size_t n, lasp_dtype t) {
    void *h = malloc((n ? n : 1) * lasp_dtype_size(t));
    float *x = (float *)malloc((n ? n : 1) * sizeof(float));
    if (cudaMemcpy(h, d, n * lasp_dtype_size(t), cudaMemcpyDeviceToHost) == cudaSuccess)
        lasp_convert(x, LASP_F32, h, t, n);
    else
        for (size_t i = 0; i < n; i++) x[i] = NAN;
    free(h);
    return x;
}
#endif

/* For suites that run on the host or on the GPU (on_dev; always 0 without CUDA): host f32 of the n
 * elements of dtype t at p, and freeing p */
static inline float *test_down(const void *p, size_t n, lasp_dtype t, int on_dev) {
#ifdef LASP_HAVE_CUDA
    if (on_dev) return test_from_dev(p, n, t);
#endif
    (void)on_dev;
    float *x = (float *)malloc((n ? n : 1) * sizeof *x);
    lasp_convert(x, LASP_F32, p, t, n);
    return x;
}

static inline void test_free(void *p, int on_dev) {
#ifdef LASP_HAVE_CUDA
    if (on_dev) {
        cudaFree(p);
        return;
    }
#endif
    (void)on_dev;
    free(p);
}

#endif
