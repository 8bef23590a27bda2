/* prof_cuda.h — where a GPU step's time goes: a CUDA event is recorded on the stream wherever the kind of
 * work changes (lasp_gprof_mark), and once the stream has passed the last one, the time between each event
 * and the next is added to the kind that began there. Profiling is off where the profile is NULL, which
 * costs a test per mark. Events on the stream do not synchronise it; reading does, so a step with a
 * profile waits where it would wait anyway, at its end. */
#ifndef LASP_MODEL_PROF_CUDA_H
#define LASP_MODEL_PROF_CUDA_H

#include "core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lasp_part {
    LASP_PART_MATMUL = 0,  /* the matrix products (cuBLAS) */
    LASP_PART_ATTN,        /* the attention op */
    LASP_PART_ELEMWISE,    /* norms, gates, the convolution, embedding, residual copies, bf16 roundings */
    LASP_PART_XENT,        /* the cross-entropy (the head's products are matrix products) */
    LASP_PART_OPTIM,       /* the gradient's norm and the AdamW update */
    LASP_PART_COUNT
} lasp_part;

typedef struct lasp_gprof lasp_gprof;

/* stream: the cudaStream_t the profiled work is enqueued on. */
lasp_status lasp_gprof_create(void *stream, lasp_gprof **out, lasp_err *err);
void lasp_gprof_free(lasp_gprof *p);
/* The work enqueued from here on is of kind `part` (nothing when p is NULL or the kind is the current). */
void lasp_gprof_mark(lasp_gprof *p, lasp_part part);
/* The same, begun at a place in the code (file, line: a string literal's pointer is kept): a new region
 * wherever the place changes, so that the time of each place adds up apart (lasp_gprof_sites). */
void lasp_gprof_mark_at(lasp_gprof *p, lasp_part part, const char *file, int line);
/* The places' time summed over every read so far, the largest first: at most max of them. */
typedef struct lasp_gprof_site {
    const char *file;
    int line, part;
    double ms;
} lasp_gprof_site;
int lasp_gprof_sites(const lasp_gprof *p, lasp_gprof_site *out, int max);
/* Closes the last region, waits for it, adds each region's ms to ms[its kind] and starts over. */
lasp_status lasp_gprof_read(lasp_gprof *p, double ms[LASP_PART_COUNT], lasp_err *err);

#ifdef __cplusplus
}
#endif

#endif
