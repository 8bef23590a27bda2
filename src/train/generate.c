/* generate.c — lasp.h's generator: a checkpoint's parameters, the model's layout, and the recurrent-form
 * decoder over them (model.c). */
#include <stdlib.h>

#include "train/ckpt.h"

struct lasp_generator {
    float *params;
    lasp_model m;
    lasp_decoder d;
};

void lasp_generator_free(lasp_generator *g) {
    if (!g) return;
    if (g->d.cfg) lasp_decoder_free(&g->d);
    lasp_model_free(&g->m);
    free(g->params);
    free(g);
}

lasp_status lasp_generator_load(const char *ckpt_dir, lasp_generator **out, lasp_err *err) {
    if (!ckpt_dir || !out) return lasp_fail(err, LASP_ERR_ARG, "lasp_generator_load: ckpt_dir or out is NULL");
    *out = NULL;
    lasp_generator *g = calloc(1, sizeof *g);
    if (!g) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a generator");
    lasp_ckpt_meta meta;
    lasp_status s = lasp_ckpt_load(ckpt_dir, &meta, &g->params, NULL, NULL, err);
    if (s == LASP_OK) s = lasp_model_create(&meta.model, &g->m, err);
    if (s == LASP_OK) s = lasp_decoder_create(&g->m, g->params, &g->d, err);
    if (s != LASP_OK) {
        lasp_generator_free(g);
        return s;
    }
    *out = g;
    return LASP_OK;
}

lasp_model_config lasp_generator_config(const lasp_generator *g) {
    lasp_model_config c = {0};
    return g ? g->m.cfg : c;
}

const float *lasp_generator_feed(lasp_generator *g, int32_t token) {
    if (!g || token < 0 || token >= g->m.cfg.vocab) return NULL;
    lasp_decoder_step(&g->d, token);
    return g->d.logits;
}
