/* test.h — the smallest useful harness. A test binary prints one line per case:
 *     PASS name            or            FAIL name
 * with the failed checks above it, and exits non-zero if any case failed. tests/run.sh counts
 * these lines over every binary and run, so the suite's total is the sum of its cases. */
#ifndef LASP_TEST_H
#define LASP_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

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

#endif
