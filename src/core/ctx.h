/* ctx.h — the context every call takes: settings and the last error. No globals anywhere. */
#ifndef LASP_CORE_CTX_H
#define LASP_CORE_CTX_H

#include "core/error.h"

struct lasp_ctx {
    lasp_ctx_params params;
    lasp_err err;
    void *cuda;  /* GPU state (stream, workspace), owned by the CUDA attention code; NULL on CPU */
};

#endif
