/* decoder_cuda.h — the recurrent form (model.h's lasp_decoder) on one GPU: one token at a time, fp32 (the
 * CPU decoder's arithmetic; cuBLAS without TF32 for the matrix-vector products), memory constant in the
 * length: a D × D state per layer and head and the convolution's last K − 1 projections. */
#ifndef LASP_MODEL_DECODER_CUDA_H
#define LASP_MODEL_DECODER_CUDA_H

#include <stdint.h>

#include "core/ctx.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_gdecoder lasp_gdecoder;

/* params: the host's flat parameters (lasp_layout), copied to the context's GPU. */
lasp_status lasp_gdecoder_create(lasp_ctx *ctx, const lasp_model_config *c, const float *params, lasp_gdecoder **out);
void lasp_gdecoder_free(lasp_gdecoder *d);
/* Feeds one token (0 ≤ token < vocab, checked by the caller); *logits: the next token's [vocab] in host
 * memory, valid until the next call. */
lasp_status lasp_gdecoder_step(lasp_gdecoder *d, int32_t token, const float **logits);

#ifdef __cplusplus
}
#endif

#endif
