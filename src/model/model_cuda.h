/* model_cuda.h — the model of model.h on one GPU (docs/MODEL.md "On the GPU"): the same parameter layout
 * and order of operations, its layers from layers_cuda.cu, the matrix products on cuBLAS, attention on
 * the project's CUDA op. In f32 every pass is fp32 (no TF32), to be compared with the CPU; in bf16 the
 * products and the op read bf16 operands (fp32 accumulation, fp32 states), which the layers that make them
 * write in bf16, and the rest stays fp32: the residual stream, norms, the softmax, weights and gradients.
 *
 * Parameters and gradients live on the device as one flat fp32 buffer each, laid out as lasp_layout says,
 * so they copy to and from the CPU model's (and a checkpoint's) buffers as they are. All work goes on the
 * context's CUDA stream; only lasp_gmodel_loss and the copies to and from the host wait for it. */
#ifndef LASP_MODEL_CUDA_H
#define LASP_MODEL_CUDA_H

#include <stdint.h>

#include "core/ctx.h"
#include "model/model.h"
#include "model/prof_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_gmodel lasp_gmodel;

/* dtype: LASP_F32 or LASP_BF16, of the products' and the op's operands. */
lasp_status lasp_gmodel_create(lasp_ctx *ctx, const lasp_model_config *c, lasp_dtype dtype, lasp_gmodel **out);
void lasp_gmodel_free(lasp_gmodel *m);
/* (Re)size the activations for a batch of B sequences of T tokens. */
lasp_status lasp_gmodel_reserve(lasp_gmodel *m, int64_t B, int64_t T);
/* What a layer keeps for the backward and what is made again there (lasp.h's lasp_recompute; default none);
 * the next lasp_gmodel_reserve lays the buffers out for it. */
void lasp_gmodel_set_recompute(lasp_gmodel *m, lasp_recompute r);
/* The device bytes lasp_gmodel_reserve allocates for B × T (a double: asked-for sizes may not fit); ctx's
 * GPU plans the op's kept states, which a model whose sequence is split over GPUs (split_seq) leaves to the
 * SP layer. */
double lasp_gmodel_activation_bytes(lasp_ctx *ctx, const lasp_model_config *c, lasp_dtype dtype, lasp_recompute r,
                                    int64_t B, int64_t T, int split_seq);

/* Copies between the device's buffers and host arrays of n_params floats (synchronous). */
lasp_status lasp_gmodel_set_params(lasp_gmodel *m, const float *host);
lasp_status lasp_gmodel_get_params(lasp_gmodel *m, float *host);
lasp_status lasp_gmodel_get_grads(lasp_gmodel *m, float *host);
lasp_status lasp_gmodel_zero_grads(lasp_gmodel *m);
/* Whether the next forwards (with grad_scale > 0) and backwards add their gradients to the gradients (1, the
 * default: zero them first for one pass's) or write them (0): every element, the embedding's zeroed where no
 * token of the batch reaches it, so nothing needs zeroing before. A step's first backward writes and the later
 * ones of the same step (chunks of a longer sequence) add. */
void lasp_gmodel_set_accumulate(lasp_gmodel *m, int accumulate);
/* The device buffers themselves [n_params], for the optimizer; params16 is the bf16 copy the products read
 * (NULL in f32), which whoever changes params must refresh (lasp_gmodel_set_params does). */
float *lasp_gmodel_params(lasp_gmodel *m);
float *lasp_gmodel_grads(lasp_gmodel *m);
void *lasp_gmodel_params16(lasp_gmodel *m);
lasp_dtype lasp_gmodel_dtype(const lasp_gmodel *m);

/* Parameters kept elsewhere (ZeRO 3): before the model reads unit u's parameters it asks fn for them, and fn
 * says where they are (device memory: fp32 in *p32 and, in the bf16 model, their bf16 copy in *p16), made or
 * to be made on the model's stream before its next work. They must stay there until the model's stream has
 * passed the work of the call after the next one (two units in use: the one computed and the one made for
 * it). `next` is the unit the model expects to ask for after u in this pass (-1: none), so that fn can make
 * it ahead. A pass asks once a unit; a new forward asks again. */
typedef lasp_status (*lasp_gmodel_fetch_fn)(void *user, int unit, int next, const float **p32, const uint16_t **p16);
/* From here on the model asks fn for its parameters and frees its own copies (lasp_gmodel_params and _params16
 * give NULL; _set_params and _get_params refuse). */
void lasp_gmodel_set_fetch(lasp_gmodel *m, lasp_gmodel_fetch_fn fn, void *user);

/* Forward over host tokens and targets [B, T] (read before it returns), enqueued. With grad_scale > 0 the
 * head's backward is done in the same pass, a chunk of rows at a time (the logits never exist whole): its
 * weight gradient is added to the gradients or written (lasp_gmodel_set_accumulate), and lasp_gmodel_backward
 * goes on from it. */
lasp_status lasp_gmodel_forward(lasp_gmodel *m, const int32_t *tokens, const int32_t *targets, float grad_scale);
/* Waits for the GPU, then the forward's loss_out = mean cross-entropy; correct_out and count_out as
 * lasp_model_forward's (mask NULL = every position). */
lasp_status lasp_gmodel_loss(lasp_gmodel *m, const uint8_t *mask, double *loss_out, int64_t *correct_out,
                             int64_t *count_out);
/* The rest of the backward after a forward with grad_scale > 0: adds to the gradients or writes them, as the
 * forward did (lasp_gmodel_set_accumulate). */
lasp_status lasp_gmodel_backward(lasp_gmodel *m);
/* A chunk of a longer sequence (model.h's lasp_model_carry, in device memory, the same layout): the forward
 * starts from cin and writes cout, the backward reads dcout and writes dcin (each NULL: none). Borrowed
 * until the next call. */
void lasp_gmodel_set_carry(lasp_gmodel *m, const lasp_model_carry *cin, lasp_model_carry *cout,
                           const lasp_model_carry *dcout, lasp_model_carry *dcin);
/* The sequence split over the GPUs of sp's SP group (NCCL communicators; borrowed, NULL or one rank: not
 * split): this rank holds piece sp_rank of each sequence, each layer's attention goes through the SP layer
 * (lasp_sp_attn_fwd and _bwd, the forward kept for the backward) and the short convolution's halo comes from
 * the previous rank (lasp_sp_halo, its gradient going back). With --recompute the backward's recompute of a layer
 * goes through the SP layer again (the halo kept from the forward). Not with chunks (refused): in chunks the
 * trainer relays the carried state between the ranks instead (lasp_trainer_chunks), the model unsplit. Set it
 * before lasp_gmodel_reserve: a change of split frees the activations (the op's kept states are the SP layer's
 * under a split), and the next reserve lays them out again. */
lasp_status lasp_gmodel_set_sp(lasp_gmodel *m, lasp_sp *sp);
/* fn(user, u) is called on the host as the backward finishes enqueueing unit u's gradients (the units of
 * lasp_layout: the head L + 1 first, then the blocks L … 1, the embedding 0 last): once the model's stream
 * gets there they are whole, so their reduction over ranks may start on another stream while the rest of
 * the backward runs. A failing fn fails the backward. NULL: none. */
typedef lasp_status (*lasp_gmodel_unit_fn)(void *user, int unit);
void lasp_gmodel_set_unit_done(lasp_gmodel *m, lasp_gmodel_unit_fn fn, void *user);
/* Marks the forward's and backward's work by kind in prof (borrowed; NULL: off). */
void lasp_gmodel_set_profile(lasp_gmodel *m, lasp_gprof *prof);

#ifdef __cplusplus
}
#endif

#endif
