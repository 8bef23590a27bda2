/* error.h — recording a failure in a lasp_err (lasp.h): a status plus a message that names the bad value,
 * how every layer reports failure. */
#ifndef LASP_CORE_ERROR_H
#define LASP_CORE_ERROR_H

#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Record a failure (printf-style message) and return its status, so callers write
 * `return lasp_fail(err, LASP_ERR_SHAPE, "q has T=%lld but k has T=%lld", ...)`. err may be NULL. */
lasp_status lasp_fail(lasp_err *err, lasp_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix the recorded message with context ("q.npy: " + message), keeping the status. */
lasp_status lasp_fail_prefix(lasp_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void lasp_err_clear(lasp_err *err);

#define LASP_TRY(expr)                          \
    do {                                        \
        lasp_status lasp_try_s_ = (expr);       \
        if (lasp_try_s_ != LASP_OK) return lasp_try_s_; \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
