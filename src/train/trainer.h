/* trainer.h — one training run, the internals of lasp.h's lasp_trainer_*: the model, the optimizer (AdamW
 * with ZeRO 0–3 over the whole world), the data loader's position and the schedule. The CLI drives it step
 * by step and prints; nothing here prints or exits.
 *
 * Parallelism (docs/MATH.md §5): world = dp × sp ranks. Every rank runs the model on its piece of its
 * slice of the batch; each rank's gradient is a partial sum (scaled by 1/world so that the sum is the
 * gradient of the global mean loss), reduced over the whole world.
 *
 * ZeRO: every unit of the parameter layout (model.h) is cut into `world` equal chunks (the last
 * padded with zeros); rank r owns chunk r of every unit, and its shard is their concatenation.
 *   0  DDP: full parameters, gradients and moments everywhere; gradients all-reduced.
 *   1  moments only for the shard; gradients all-reduced, the shard updated, parameters all-gathered.
 *   2  as 1, but each unit's gradients are reduce-scattered as soon as its backward is done.
 *   3  as 2, and parameters exist only as shards: each unit is all-gathered when the forward or
 *      the backward needs it, into a scratch buffer of one unit.
 * Every stage does the same arithmetic per element, so losses agree up to summation order. */
#ifndef LASP_TRAINER_H
#define LASP_TRAINER_H

#include <stdint.h>

#include "core/rng.h"
#include "model/model.h"
#include "sp/sp.h"
#include "train/data.h"
#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lasp_trainer {
    lasp_train_params o;
    lasp_ctx *ctx;
    lasp_sp *sp;          /* borrowed */
    lasp_comm *world;     /* sp->world */
    int W, rank;
    const lasp_data *data;
    lasp_model m;
    size_t P, S;          /* parameters; shard elements (padded) */
    size_t *chunk, *soff; /* per unit: chunk size, offset in the shard */
    size_t max_chunk;
    float *params;        /* [P] full (stages 0–2) */
    float *grads;         /* [P] full (stages 0–1) */
    float *pshard, *gshard;   /* [S] (stages 1–3) */
    float *mom, *vel;     /* [P] (stage 0) or [S] */
    uint8_t *decay;       /* weight-decay mask over the optimizer's domain */
    float *wscratch, *gscratch;  /* [W·max_chunk]: a gathered unit; a unit's gradients */
    int64_t step;         /* steps done */
    uint64_t cursor;      /* training samples consumed */
    lasp_rng rng;         /* the run's generator (saved in checkpoints) */
    int64_t Bl, Tl;       /* local batch and piece */
    int32_t *tok, *tgt;
    uint8_t *mask;
    double comm_ms;
    float *carry;         /* o.chunk: [n_chunks + 2][carry floats]: the state entering each chunk (kept by the
                           * first pass), and two gradients of it that the backward passes from chunk to chunk */
    int32_t *ctok, *ctgt; /* o.chunk: one chunk of the batch [B, chunk] */
    uint8_t *cmask;
    struct lasp_trainer_gpu *gpu; /* device CUDA: the model and optimizer on the GPU (trainer_cuda.c); the CPU
                                   * model above then holds only its layout */
};

/* lasp_trainer_create (lasp.h) in place: checks the params against the layout (batch % dp, seq_len % sp,
 * …) and builds everything; parameters start from lasp_model_init_params(seed). lasp_trainer_release
 * frees what it built, not t. */
lasp_status lasp_trainer_init(lasp_trainer *t, lasp_ctx *ctx, lasp_sp *sp, const lasp_data *data,
                              const lasp_train_params *o);
void lasp_trainer_release(lasp_trainer *t);

double lasp_trainer_lr(const lasp_train_params *o, int64_t step);

/* ZeRO's shards, one layout for both devices' trainers: per unit the chunk size and its offset in the shard,
 * the shard's size S and the largest chunk, for t->W ranks. */
lasp_status lasp_trainer_shard_layout(lasp_trainer *t, lasp_err *err);
/* [*a, *b) of the full layout: the elements of unit u that this rank's chunk holds (a ≥ b: none, all padding) */
void lasp_trainer_chunk_range(const lasp_trainer *t, int u, size_t *a, size_t *b);
/* mask [S] = the weight-decay mask of this rank's shard (padding 0) */
void lasp_trainer_shard_decay(const lasp_trainer *t, uint8_t *mask);

/* --chunk: one chunk (t->ctok, ctgt, cmask) through a device's model with the carries given (NULL: none), its
 * backward too with scale > 0, and its loss read when loss is not NULL (mean, hits, count) */
typedef lasp_status (*lasp_chunk_fn)(lasp_trainer *t, const lasp_model_carry *cin, lasp_model_carry *cout,
                                     const lasp_model_carry *dcout, lasp_model_carry *dcin, float scale, double *loss,
                                     int64_t *hits, int64_t *count);
/* The chunk schedule both devices run, with their carries in `carry` (trainer.c): nc + LASP_CARRY_EXTRA of them,
 * the chunks' own, two for the gradient handed back, one for the state handed to the next SP rank */
#define LASP_CARRY_EXTRA 3
lasp_status lasp_trainer_chunks(lasp_trainer *t, float *carry, lasp_chunk_fn run, float grad_scale, double out[3]);

/* Loss and every gradient of one batch, without an update (tests): the full gradient lands in
 * grad_out[P] on every rank. */
lasp_status lasp_trainer_grad(lasp_trainer *t, double *loss, float *grad_out);

/* Full parameters / moments on every rank, from whatever the stage keeps (collective). */
lasp_status lasp_trainer_gather(lasp_trainer *t, float *params, float *mom, float *vel);
/* Replace parameters and moments (full arrays, e.g. from a checkpoint); mom/vel NULL = zero. */
lasp_status lasp_trainer_scatter(lasp_trainer *t, const float *params, const float *mom, const float *vel);

/* The trainer on one GPU (trainer_cuda.c), which lasp_trainer_* hand over to when t->gpu is set: init after
 * the checks common to both devices, with t->m made (its layout) and t->Bl, t->Tl set. */
typedef struct lasp_trainer_gpu lasp_trainer_gpu;
#ifdef LASP_HAVE_CUDA
lasp_status lasp_trainer_gpu_init(lasp_trainer *t);
void lasp_trainer_gpu_release(lasp_trainer *t);
lasp_status lasp_trainer_gpu_step(lasp_trainer *t, lasp_step_stats *st);
lasp_status lasp_trainer_gpu_eval(lasp_trainer *t, int split, double *loss, double *acc);
lasp_status lasp_trainer_gpu_grad(lasp_trainer *t, double *loss, float *grad_out);
lasp_status lasp_trainer_gpu_gather(lasp_trainer *t, float *params, float *mom, float *vel);
lasp_status lasp_trainer_gpu_scatter(lasp_trainer *t, const float *params, const float *mom, const float *vel);
lasp_train_memory lasp_trainer_gpu_memory(const lasp_trainer *t);
lasp_status lasp_trainer_gpu_profile(lasp_trainer *t, int on);
int lasp_trainer_gpu_sites(const lasp_trainer *t, lasp_profile_site *out, int max);
/* Until the GPU has done the work enqueued so far (before its buffers are handed to a host-side transfer) */
lasp_status lasp_trainer_gpu_wait(lasp_trainer *t);
#else
static inline lasp_status lasp_trainer_gpu_init(lasp_trainer *t) {
    return lasp_fail(&t->ctx->err, LASP_ERR_UNSUPPORTED, "this lasp was built without CUDA, so it cannot train on a "
                     "GPU (hint: build it where nvcc is; `lasp info` lists the build's features)");
}
static inline void lasp_trainer_gpu_release(lasp_trainer *t) { (void)t; }
/* unreachable without CUDA (t->gpu stays NULL) */
static inline lasp_status lasp_trainer_gpu_step(lasp_trainer *t, lasp_step_stats *st) {
    (void)t, (void)st;
    return LASP_ERR_UNSUPPORTED;
}
static inline lasp_status lasp_trainer_gpu_eval(lasp_trainer *t, int split, double *loss, double *acc) {
    (void)t, (void)split, (void)loss, (void)acc;
    return LASP_ERR_UNSUPPORTED;
}
static inline lasp_status lasp_trainer_gpu_grad(lasp_trainer *t, double *loss, float *grad_out) {
    (void)t, (void)loss, (void)grad_out;
    return LASP_ERR_UNSUPPORTED;
}
static inline lasp_status lasp_trainer_gpu_gather(lasp_trainer *t, float *params, float *mom, float *vel) {
    (void)t, (void)params, (void)mom, (void)vel;
    return LASP_ERR_UNSUPPORTED;
}
static inline lasp_status lasp_trainer_gpu_scatter(lasp_trainer *t, const float *params, const float *mom,
                                                   const float *vel) {
    (void)t, (void)params, (void)mom, (void)vel;
    return LASP_ERR_UNSUPPORTED;
}
static inline lasp_status lasp_trainer_gpu_profile(lasp_trainer *t, int on) {
    (void)t, (void)on;
    return LASP_ERR_UNSUPPORTED;
}
static inline int lasp_trainer_gpu_sites(const lasp_trainer *t, lasp_profile_site *out, int max) {
    (void)t, (void)out, (void)max;
    return 0;
}
static inline lasp_train_memory lasp_trainer_gpu_memory(const lasp_trainer *t) {
    (void)t;
    lasp_train_memory m = {0};
    return m;
}
static inline lasp_status lasp_trainer_gpu_wait(lasp_trainer *t) {
    (void)t;
    return LASP_ERR_UNSUPPORTED;
}
#endif

#ifdef __cplusplus
}
#endif

#endif
