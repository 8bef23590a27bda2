/* trainer.h — one training run: the model, the optimizer (AdamW with ZeRO 0–3 over the whole
 * world), the data loader's position and the schedule. The CLI drives it step by step and prints;
 * nothing here prints or exits.
 *
 * Parallelism (MATH.md §5): world = dp × sp ranks. Every rank runs the model on its piece of its
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

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_train_opts {
    lasp_model_config model;
    int64_t batch;        /* global batch (sequences per step, over all dp ranks) */
    int64_t seq_len;      /* tokens per sequence (over all sp ranks) */
    int64_t steps, warmup;
    double lr, min_lr, weight_decay, beta1, beta2, eps, clip;
    int zero;             /* 0..3 */
    uint64_t seed;
    int64_t val_batches;  /* batches of the validation split per evaluation */
} lasp_train_opts;

lasp_train_opts lasp_train_default_opts(void);

typedef struct lasp_step_stats {
    double loss;          /* mean over every token of the global batch */
    double grad_norm;     /* before clipping */
    double lr;
    double ms, comm_ms;   /* wall time of the step, and of it in the trainer's collectives */
    double acc;           /* recall accuracy on the batch (masked positions), over the world */
} lasp_step_stats;

typedef struct lasp_trainer {
    lasp_train_opts o;
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
} lasp_trainer;

/* Checks the options against the layout (batch % dp, seq_len % sp, …) and builds everything;
 * parameters start from lasp_model_init_params(seed). */
lasp_status lasp_trainer_init(lasp_trainer *t, lasp_ctx *ctx, lasp_sp *sp, const lasp_data *data,
                              const lasp_train_opts *o);
void lasp_trainer_free(lasp_trainer *t);

double lasp_trainer_lr(const lasp_train_opts *o, int64_t step);
lasp_status lasp_trainer_step(lasp_trainer *t, lasp_step_stats *st);
/* Loss and recall accuracy on val_batches batches of the validation split (training split if
 * the data has none). */
lasp_status lasp_trainer_eval(lasp_trainer *t, double *loss, double *acc);

/* Loss and every gradient of one batch, without an update (tests): the full gradient lands in
 * grad_out[P] on every rank. */
lasp_status lasp_trainer_grad(lasp_trainer *t, double *loss, float *grad_out);

/* Full parameters / moments on every rank, from whatever the stage keeps (collective). */
lasp_status lasp_trainer_gather(lasp_trainer *t, float *params, float *mom, float *vel);
/* Replace parameters and moments (full arrays, e.g. from a checkpoint); mom/vel NULL = zero. */
lasp_status lasp_trainer_scatter(lasp_trainer *t, const float *params, const float *mom, const float *vel);

#ifdef __cplusplus
}
#endif

#endif
