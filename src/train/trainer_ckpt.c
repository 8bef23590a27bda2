/* trainer_ckpt.c — a run's checkpoints (lasp.h's lasp_trainer_save and lasp_trainer_resume): full arrays
 * gathered from whatever the ZeRO stage keeps and written by rank 0 (ckpt.c), or read by every rank,
 * checked against this run, and sliced into the stage's shards. Every rank returns the same status. */
#include <stdlib.h>
#include <string.h>

#include "train/ckpt.h"
#include "train/trainer.h"

lasp_status lasp_trainer_save(lasp_trainer *t, const char *dir) {
    if (!t) return LASP_ERR_ARG;
    lasp_err *err = &t->ctx->err;
    if (!dir) return lasp_fail(err, LASP_ERR_ARG, "lasp_trainer_save: dir is NULL");
    float *p = malloc(t->P * 4), *m = malloc(t->P * 4), *v = malloc(t->P * 4);
    lasp_status s = (!p || !m || !v) ? lasp_fail(err, LASP_ERR_NOMEM, "no memory to gather a checkpoint (%zu "
                                                 "parameters)", t->P)
                                     : LASP_OK;
    s = lasp_comm_agree(t->world, s, err);
    if (s == LASP_OK) s = lasp_trainer_gather(t, p, m, v);
    if (s == LASP_OK && t->rank == 0) {
        const lasp_ckpt_meta meta = {.model = t->o.model, .step = t->step, .cursor = t->cursor, .seed = t->o.seed,
                                     .rng = t->rng, .data_kind = t->data->kind, .n_pairs = t->data->n_pairs,
                                     .batch = t->o.batch, .seq_len = t->o.seq_len, .dp = t->sp->dp_size,
                                     .sp = t->sp->sp_size, .zero = t->o.zero, .n_params = t->P};
        s = lasp_ckpt_save(dir, &meta, p, m, v, err);
    }
    s = lasp_comm_agree(t->world, s, err);
    free(p), free(m), free(v);
    return s;
}

/* Whether the checkpoint's model and data are this run's; the message says what differs. */
static lasp_status check_match(lasp_trainer *t, const char *dir, const lasp_ckpt_meta *meta) {
    lasp_err *err = &t->ctx->err;
    const lasp_model_config *c = &meta->model, *o = &t->o.model;
    if (memcmp(c, o, sizeof *c))
        return lasp_fail(err, LASP_ERR_ARG, "checkpoint %s holds another model (d_model %d, layers %d, heads %d, ffn "
                         "%d, vocab %d, conv %d) than this run's (d_model %d, layers %d, heads %d, ffn %d, vocab %d, "
                         "conv %d) (hint: the --model, --vocab and --conv it was trained with)", dir, c->d_model,
                         c->n_layers, c->n_heads, c->ffn_dim, c->vocab, c->conv, o->d_model, o->n_layers, o->n_heads,
                         o->ffn_dim, o->vocab, o->conv);
    const lasp_data *d = t->data;
    if (meta->data_kind != (int32_t)d->kind || (d->kind == LASP_DATA_RECALL && meta->n_pairs != d->n_pairs))
        return lasp_fail(err, LASP_ERR_ARG, "checkpoint %s was trained on %s data%s, this run reads %s (hint: the "
                         "same --data / --recall-pairs)", dir, lasp_data_kind_name((lasp_data_kind)meta->data_kind),
                         meta->data_kind == LASP_DATA_RECALL ? " (recall task)" : "", lasp_data_kind_name(d->kind));
    return LASP_OK;
}

lasp_status lasp_trainer_resume(lasp_trainer *t, const char *dir) {
    if (!t) return LASP_ERR_ARG;
    lasp_err *err = &t->ctx->err;
    if (!dir) return lasp_fail(err, LASP_ERR_ARG, "lasp_trainer_resume: dir is NULL");
    lasp_ckpt_meta meta = {0};
    float *p = NULL, *m = NULL, *v = NULL;
    lasp_status s = lasp_ckpt_load(dir, &meta, &p, &m, &v, err);
    if (s == LASP_OK) s = check_match(t, dir, &meta);
    s = lasp_comm_agree(t->world, s, err);
    if (s == LASP_OK) s = lasp_trainer_scatter(t, p, m, v);
    if (s == LASP_OK) t->step = meta.step, t->cursor = meta.cursor, t->rng = meta.rng;
    free(p), free(m), free(v);
    return s;
}
