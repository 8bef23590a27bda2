/* generate.c — lasp.h's generator: a checkpoint's parameters, the model's layout, and the recurrent-form
 * decoder over them, on the CPU (model.c) or a GPU (decoder_cuda.c). */
#include <stdlib.h>

#include "train/ckpt.h"
#ifdef LASP_HAVE_CUDA
#include "model/decoder_cuda.h"
#endif

struct lasp_generator {
    float *params;
    lasp_model m;
    lasp_decoder d;
    lasp_ctx *ctx;      /* GPU: the context the decoder runs on */
    void *gd;           /* GPU: the lasp_gdecoder (NULL on the CPU) */
};

void lasp_generator_free(lasp_generator *g) {
    if (!g) return;
    if (g->d.cfg) lasp_decoder_free(&g->d);
#ifdef LASP_HAVE_CUDA
    lasp_gdecoder_free(g->gd);
#endif
    lasp_ctx_free(g->ctx);
    lasp_model_free(&g->m);
    free(g->params);
    free(g);
}

lasp_status lasp_generator_open(const char *ckpt_dir, lasp_device device, lasp_generator **out, lasp_err *err) {
    if (!ckpt_dir || !out) return lasp_fail(err, LASP_ERR_ARG, "lasp_generator_open: ckpt_dir or out is NULL");
    if (device != LASP_DEVICE_CPU && device != LASP_DEVICE_CUDA)
        return lasp_fail(err, LASP_ERR_ARG, "device %d: LASP_DEVICE_CPU or LASP_DEVICE_CUDA", (int)device);
#ifndef LASP_HAVE_CUDA
    if (device == LASP_DEVICE_CUDA)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "this lasp was built without CUDA, so it cannot decode on a GPU "
                         "(hint: --device cpu; `lasp info` lists the build's features)");
#endif
    *out = NULL;
    lasp_generator *g = calloc(1, sizeof *g);
    if (!g) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a generator");
    lasp_ckpt_meta meta;
    lasp_status s = lasp_ckpt_load(ckpt_dir, &meta, &g->params, NULL, NULL, err);
    if (s == LASP_OK) s = lasp_model_create(&meta.model, &g->m, err);
    if (s == LASP_OK && device == LASP_DEVICE_CPU) s = lasp_decoder_create(&g->m, g->params, &g->d, err);
#ifdef LASP_HAVE_CUDA
    if (s == LASP_OK && device == LASP_DEVICE_CUDA) {
        s = lasp_ctx_create(NULL, &g->ctx);
        if (s == LASP_OK) {
            lasp_gdecoder *gd = NULL;
            s = lasp_gdecoder_create(g->ctx, &meta.model, g->params, &gd);
            g->gd = gd;
            if (s != LASP_OK) lasp_fail(err, s, "%s", lasp_ctx_error(g->ctx));
        } else {
            lasp_fail(err, s, "no memory for a lasp context");
        }
    }
#endif
    if (s != LASP_OK) {
        lasp_generator_free(g);
        return s;
    }
    *out = g;
    return LASP_OK;
}

lasp_status lasp_generator_load(const char *ckpt_dir, lasp_generator **out, lasp_err *err) {
    return lasp_generator_open(ckpt_dir, LASP_DEVICE_CPU, out, err);
}

lasp_model_config lasp_generator_config(const lasp_generator *g) {
    lasp_model_config c = {0};
    return g ? g->m.cfg : c;
}

const float *lasp_generator_feed(lasp_generator *g, int32_t token) {
    if (!g || token < 0 || token >= g->m.cfg.vocab) return NULL;
#ifdef LASP_HAVE_CUDA
    if (g->gd) {
        const float *logits = NULL;
        return lasp_gdecoder_step(g->gd, token, &logits) == LASP_OK ? logits : NULL;
    }
#endif
    lasp_decoder_step(&g->d, token);
    return g->d.logits;
}
