/* cuda_check.h — a failed CUDA runtime call as a lasp status, for the C files that call CUDA: out of memory as
 * LASP_ERR_NOMEM (the caller may offer a smaller run), anything else as LASP_ERR_CUDA, with what was being done
 * and CUDA's own words. */
#ifndef LASP_CORE_CUDA_CHECK_H
#define LASP_CORE_CUDA_CHECK_H

#include <cuda_runtime.h>

#include "core/error.h"

static inline lasp_status lasp_cuda_fail(lasp_err *err, cudaError_t e, const char *what) {
    return lasp_fail(err, e == cudaErrorMemoryAllocation ? LASP_ERR_NOMEM : LASP_ERR_CUDA, "%s: %s", what,
                     cudaGetErrorString(e));
}

/* Return the failure of `call` from the enclosing function, recorded in err */
#define LASP_CU(err, call, what)                                     \
    do {                                                             \
        const cudaError_t e_ = (call);                               \
        if (e_ != cudaSuccess) return lasp_cuda_fail((err), e_, what); \
    } while (0)

#endif
