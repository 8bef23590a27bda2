/* error.c — status strings and the error message buffer. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *lasp_status_string(lasp_status s) {
    switch (s) {
    case LASP_OK: return "ok";
    case LASP_ERR_ARG: return "invalid argument";
    case LASP_ERR_SHAPE: return "shape mismatch";
    case LASP_ERR_UNSUPPORTED: return "unsupported";
    case LASP_ERR_IO: return "i/o error";
    case LASP_ERR_FORMAT: return "bad file format";
    case LASP_ERR_NOMEM: return "out of memory";
    case LASP_ERR_NONFINITE: return "non-finite input";
    case LASP_ERR_COMM: return "communication error";
    case LASP_ERR_CUDA: return "cuda error";
    case LASP_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

lasp_status lasp_fail(lasp_err *err, lasp_status s, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = s;
    }
    return s;
}

lasp_status lasp_fail_prefix(lasp_err *err, const char *fmt, ...) {
    if (!err) return LASP_ERR_INTERNAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s%s", prefix, old);
    return err->status;
}

void lasp_err_clear(lasp_err *err) {
    if (!err) return;
    err->status = LASP_OK;
    err->msg[0] = '\0';
}
