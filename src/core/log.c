/* log.c — see log.h. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>

void lasp_log(const lasp_ctx *ctx, int level, const char *fmt, ...) {
    int max = ctx ? ctx->params.log_level : LASP_LOG_WARN;
    if (level > max) return;
    static const char *tag[] = {"error", "warning", "info", "debug"};
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one fprintf per line keeps lines from several ranks or threads whole */
    fprintf(stderr, "lasp %s: %s\n", tag[level < 0 ? 0 : level > 3 ? 3 : level], line);
}
