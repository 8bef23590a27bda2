/* npy.h — NumPy .npy files: little-endian f4 / f8, C order, format versions 1–3. Anything else is
 * rejected with a message that says what the file holds and what would be accepted. */
#ifndef LASP_CORE_NPY_H
#define LASP_CORE_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LASP_NPY_MAX_DIMS 8

typedef struct lasp_npy {
    lasp_dtype dtype;                 /* LASP_F32 or LASP_F64 */
    int ndim;
    int64_t shape[LASP_NPY_MAX_DIMS];
    size_t count;                     /* product of shape */
    void *data;                       /* count elements, malloc'd */
} lasp_npy;

lasp_status lasp_npy_read(const char *path, lasp_npy *out, lasp_err *err);
void lasp_npy_free(lasp_npy *a);

/* Writes to "path.tmp" and renames, so a failure never leaves a half-written file at path. */
lasp_status lasp_npy_write(const char *path, lasp_dtype dtype, int ndim, const int64_t *shape,
                           const void *data, lasp_err *err);

/* "[2, 64, 4, 32]" into buf. */
const char *lasp_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);

#ifdef __cplusplus
}
#endif

#endif
