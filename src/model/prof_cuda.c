/* prof_cuda.c — see prof_cuda.h. */
#include "model/prof_cuda.h"

#include <cuda_runtime.h>
#include <stdlib.h>

#define MAX_MARKS 8192 /* a step marks a few dozen changes a layer; past this, the rest is not split */

struct lasp_gprof {
    cudaStream_t stream;
    cudaEvent_t ev[MAX_MARKS + 1];
    int part[MAX_MARKS + 1];
    int n, made;  /* events recorded this step; events created so far */
};

lasp_status lasp_gprof_create(void *stream, lasp_gprof **out, lasp_err *err) {
    lasp_gprof *p = calloc(1, sizeof *p);
    if (!p) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a profile");
    p->stream = (cudaStream_t)stream;
    *out = p;
    return LASP_OK;
}

void lasp_gprof_free(lasp_gprof *p) {
    if (!p) return;
    for (int i = 0; i < p->made; i++) cudaEventDestroy(p->ev[i]);
    free(p);
}

static void record(lasp_gprof *p, int part) {
    if (p->n == p->made) {
        if (cudaEventCreate(&p->ev[p->n]) != cudaSuccess) return;
        p->made++;
    }
    cudaEventRecord(p->ev[p->n], p->stream);
    p->part[p->n++] = part;
}

void lasp_gprof_mark(lasp_gprof *p, lasp_part part) {
    if (!p || (p->n && p->part[p->n - 1] == (int)part) || p->n >= MAX_MARKS) return;
    record(p, (int)part);
}

lasp_status lasp_gprof_read(lasp_gprof *p, double ms[LASP_PART_COUNT], lasp_err *err) {
    if (!p || !p->n) return LASP_OK;
    record(p, -1);
    cudaError_t e = cudaEventSynchronize(p->ev[p->n - 1]);
    for (int i = 0; e == cudaSuccess && i + 1 < p->n; i++) {
        float t = 0;
        e = cudaEventElapsedTime(&t, p->ev[i], p->ev[i + 1]);
        if (e == cudaSuccess && p->part[i] >= 0) ms[p->part[i]] += t;
    }
    p->n = 0;
    return e == cudaSuccess ? LASP_OK : lasp_fail(err, LASP_ERR_CUDA, "reading the profile's events: %s",
                                                  cudaGetErrorString(e));
}
