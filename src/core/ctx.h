/* ctx.h — the context every op call takes: settings and the last error. No globals anywhere. */
#ifndef LASP_CORE_CTX_H
#define LASP_CORE_CTX_H

#include "core/error.h"

struct lasp_ctx {
    lasp_ctx_params params;
    lasp_err err;
    /* GPU state (stream, workspace), made and owned by the CUDA op, which sets the function that frees
     * it: the context itself knows nothing of CUDA. NULL on the CPU. */
    void *cuda;
    void (*cuda_free)(void *cuda);
};

#endif
