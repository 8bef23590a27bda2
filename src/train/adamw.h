/* adamw.h — the optimizer's update, one function per device: AdamW with decoupled weight decay and bias
 * correction, applied to gradients scaled down to a global norm (clipping). The CPU's is the spec; the GPU's
 * does the same arithmetic per element and takes the norm from device memory, so that a step needs no
 * round trip to the host between the backward and the update. */
#ifndef LASP_TRAIN_ADAMW_H
#define LASP_TRAIN_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One step's constants. */
typedef struct lasp_adamw_step {
    float lr, beta1, beta2, eps, wd;
    float bc1, bc2;  /* bias corrections 1 − β₁ᵗ, 1 − β₂ᵗ of step t (1-based) */
    double clip;     /* the largest global gradient norm let through (0: no clipping) */
} lasp_adamw_step;

/* The constants of step `step` (0-based, steps done before it) at learning rate lr. */
lasp_adamw_step lasp_adamw_make(const lasp_train_params *o, int64_t step, double lr);

/* The factor the gradients are scaled by: clip / norm when the norm exceeds clip, else 1. */
float lasp_adamw_clip_factor(double clip, double norm);

/* p, m, v [n] updated from g [n] · clip_factor; decay[i] = 1 where weight decay applies. */
void lasp_adamw_cpu(float *p, const float *g, float *m, float *v, const uint8_t *decay, size_t n,
                    const lasp_adamw_step *h, float clip_factor);

/* ---- the same on the GPU: device pointers, enqueued on `stream` ---------------------------------- */

struct CUstream_st;

/* Doubles of scratch lasp_sumsq_cuda wants. */
#define LASP_SUMSQ_PARTS 1024

/* *out (device) = Σ x², in a fixed order (the same bits every run); work: LASP_SUMSQ_PARTS doubles. */
void lasp_sumsq_cuda(const float *x, size_t n, double *out, double *work, struct CUstream_st *stream);
/* lasp_adamw_cpu with the clip factor made from √(*sumsq) (device); where that norm is not finite, nothing
 * is written: a step whose gradients hold NaN or Inf leaves parameters and moments as they were. p16 (may
 * be NULL): a bf16 copy of p [n], rewritten from the updated values in the same pass. */
void lasp_adamw_cuda(float *p, void *p16, const float *g, float *m, float *v, const uint8_t *decay, size_t n,
                     const lasp_adamw_step *h, const double *sumsq, struct CUstream_st *stream);

#ifdef __cplusplus
}
#endif

#endif
