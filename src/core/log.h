/* log.h — leveled messages to stderr, filtered by the context's log level. The library logs only
 * through these; it never prints on its own otherwise. */
#ifndef LASP_CORE_LOG_H
#define LASP_CORE_LOG_H

#include "core/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LASP_LOG_ERROR = 0, LASP_LOG_WARN = 1, LASP_LOG_INFO = 2, LASP_LOG_DEBUG = 3 };

void lasp_log(const lasp_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif

#endif
