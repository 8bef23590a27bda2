/* dtype.h — element types and host-side conversions between f32 and the 16-bit formats. */
#ifndef LASP_CORE_DTYPE_H
#define LASP_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Round-to-nearest-even conversions; NaN stays NaN. */
uint16_t lasp_f32_to_bf16(float x);
float lasp_bf16_to_f32(uint16_t h);
uint16_t lasp_f32_to_f16(float x);
float lasp_f16_to_f32(uint16_t h);

/* Convert n elements between host buffers of any two dtypes. */
void lasp_convert(void *dst, lasp_dtype dst_t, const void *src, lasp_dtype src_t, size_t n);

/* Whether p is not 16-byte aligned: the GPU code moves 16 bytes a load (float4s, TMA, one-sided puts). */
static inline int lasp_misaligned16(const void *p) { return ((uintptr_t)p & 15) != 0; }

/* Index of the first non-finite element of a host buffer, or n if all are finite. */
size_t lasp_find_nonfinite(const void *x, lasp_dtype t, size_t n);

#ifdef __cplusplus
}
#endif

#endif
