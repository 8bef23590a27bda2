/* dtype.c — element types and host conversions. */
#include "core/dtype.h"

#include <math.h>
#include <string.h>

const char *lasp_dtype_name(lasp_dtype t) {
    switch (t) {
    case LASP_F32: return "f32";
    case LASP_F64: return "f64";
    case LASP_BF16: return "bf16";
    case LASP_F16: return "f16";
    }
    return "?";
}

size_t lasp_dtype_size(lasp_dtype t) {
    switch (t) {
    case LASP_F32: return 4;
    case LASP_F64: return 8;
    case LASP_BF16:
    case LASP_F16: return 2;
    }
    return 0;
}

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t lasp_f32_to_bf16(float x) {
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float lasp_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t lasp_f32_to_f16(float x) {
    uint32_t u = f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);       /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);      /* overflow → inf (after rounding) */
    if (a < 0x38800000u) {                                         /* subnormal or zero in f16 */
        /* the value a·2^24 rounded to an integer is the subnormal's mantissa */
        float f = bits_f32(a) * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)lrintf(f));
    }
    uint32_t mant = a & 0x7fffffu;
    uint32_t exp = (a >> 23) - 112u;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float lasp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) return (sign ? -1.0f : 1.0f) * (float)mant * 5.9604644775390625e-8f;  /* 2^-24 */
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

static double load(const void *p, lasp_dtype t, size_t i) {
    switch (t) {
    case LASP_F32: return ((const float *)p)[i];
    case LASP_F64: return ((const double *)p)[i];
    case LASP_BF16: return lasp_bf16_to_f32(((const uint16_t *)p)[i]);
    case LASP_F16: return lasp_f16_to_f32(((const uint16_t *)p)[i]);
    }
    return NAN;
}

static void store(void *p, lasp_dtype t, size_t i, double x) {
    switch (t) {
    case LASP_F32: ((float *)p)[i] = (float)x; break;
    case LASP_F64: ((double *)p)[i] = x; break;
    case LASP_BF16: ((uint16_t *)p)[i] = lasp_f32_to_bf16((float)x); break;
    case LASP_F16: ((uint16_t *)p)[i] = lasp_f32_to_f16((float)x); break;
    }
}

void lasp_convert(void *dst, lasp_dtype dst_t, const void *src, lasp_dtype src_t, size_t n) {
    if (dst_t == src_t) {
        memmove(dst, src, n * lasp_dtype_size(src_t));
        return;
    }
    for (size_t i = 0; i < n; i++) store(dst, dst_t, i, load(src, src_t, i));
}

size_t lasp_find_nonfinite(const void *x, lasp_dtype t, size_t n) {
    if (t == LASP_F32) {
        const float *f = x;
        for (size_t i = 0; i < n; i++)
            if (!isfinite(f[i])) return i;
        return n;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(load(x, t, i))) return i;
    return n;
}
