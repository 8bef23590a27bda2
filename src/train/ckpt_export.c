/* ckpt_export.c — lasp.h's lasp_export_safetensors: a checkpoint's parameters as one named tensor per weight
 * in the safetensors format (an 8-byte little-endian header length, a JSON header naming each tensor's
 * dtype, shape and byte range, then the data), beside a config.json, so that tools outside lasp (and the
 * Python package) read the model without knowing lasp's flat layout. Weights keep lasp's orientation:
 * a product is y = x · W with W [in, out]. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fs.h"
#include "model/layers.h"
#include "train/ckpt.h"

typedef struct tensor {
    char name[48];
    int ndim;
    int64_t shape[2];
    size_t off; /* in the flat parameters */
} tensor;

/* The weights of a layout, in the order of the flat buffer. */
static int list_tensors(const lasp_model_config *c, const lasp_layout *l, tensor *t) {
    const int64_t C = c->d_model, F = c->ffn_dim, V = c->vocab, K = c->conv;
    const lasp_block_off *b = &l->blk;
    int n = 0;
#define T1(nm, a, o) (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].ndim = 1, t[n].shape[0] = (a), t[n].off = (o), n++)
#define T2(nm, a, b2, o) (snprintf(t[n].name, sizeof t[n].name, "%s", nm), t[n].ndim = 2, t[n].shape[0] = (a), t[n].shape[1] = (b2), t[n].off = (o), n++)
    T2("embed.weight", V, C, l->unit_off[0]);
    for (int i = 0; i < c->n_layers; i++) {
        const size_t u = l->unit_off[1 + i];
        char nm[48];
#define NAME(s) (snprintf(nm, sizeof nm, "blocks.%d.%s", i, s), nm)
        T1(NAME("ln1"), C, u + b->ln1);
        T2(NAME("wqkvu"), C, 4 * C, u + b->wqkvu);
        if (K) T2(NAME("conv"), K, 3 * C, u + b->conv);
        T1(NAME("onorm"), C, u + b->onorm);
        T2(NAME("wo"), C, C, u + b->wo);
        T1(NAME("ln2"), C, u + b->ln2);
        T2(NAME("w12"), C, 2 * F, u + b->w12);
        T2(NAME("w3"), F, C, u + b->w3);
#undef NAME
    }
    const size_t h = l->unit_off[c->n_layers + 1];
    T1("head.norm", C, h + l->head_lnf);
    T2("head.weight", C, V, h + l->head_w);
#undef T1
#undef T2
    return n;
}

lasp_status lasp_export_safetensors(const char *ckpt_dir, const char *out_dir, lasp_err *err) {
    if (!ckpt_dir || !out_dir) return lasp_fail(err, LASP_ERR_ARG, "lasp_export_safetensors: a directory is NULL");
    lasp_ckpt_meta meta;
    float *p = NULL;
    LASP_TRY(lasp_ckpt_load(ckpt_dir, &meta, &p, NULL, NULL, err));
    lasp_layout lay;
    lasp_status s = lasp_layout_make(&meta.model, &lay, err);
    if (s != LASP_OK) {
        free(p);
        return s;
    }
    const lasp_model_config *c = &meta.model;
    tensor *t = calloc((size_t)c->n_layers * 8 + 4, sizeof *t);
    size_t cap = 256 + (size_t)c->n_layers * 8 * 128, len = 0;
    char *json = malloc(cap);
    if (!t || !json) s = lasp_fail(err, LASP_ERR_NOMEM, "no memory to export %s", ckpt_dir);
    const int n = s == LASP_OK ? list_tensors(c, &lay, t) : 0;
    /* the header: each tensor's byte range in the data that follows it, in flat-buffer order */
    size_t data = 0;
    if (s == LASP_OK) {
        len += (size_t)snprintf(json + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\",\"producer\":\"lasp\","
                                "\"step\":\"%lld\"}", (long long)meta.step);
        for (int i = 0; i < n; i++) {
            const size_t bytes = (size_t)(t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1)) * 4;
            if (t[i].ndim == 1)
                len += (size_t)snprintf(json + len, cap - len, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld],"
                                        "\"data_offsets\":[%zu,%zu]}", t[i].name, (long long)t[i].shape[0], data,
                                        data + bytes);
            else
                len += (size_t)snprintf(json + len, cap - len, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],"
                                        "\"data_offsets\":[%zu,%zu]}", t[i].name, (long long)t[i].shape[0],
                                        (long long)t[i].shape[1], data, data + bytes);
            data += bytes;
        }
        len += (size_t)snprintf(json + len, cap - len, "}");
        while (len % 8) json[len++] = ' '; /* the data starts 8-byte aligned */
    }
    if (s == LASP_OK) s = lasp_mkdir_p(out_dir, err);
    char path[4200];
    if (s == LASP_OK) {
        snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
        FILE *f = fopen(path, "wb");
        const uint64_t hl = len;
        int ok = f && fwrite(&hl, 8, 1, f) == 1 && fwrite(json, 1, len, f) == len;
        for (int i = 0; ok && i < n; i++) {
            const size_t cnt = (size_t)(t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1));
            ok = fwrite(p + t[i].off, 4, cnt, f) == cnt;
        }
        if (f && fclose(f) != 0) ok = 0;
        if (!ok) s = lasp_fail(err, LASP_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    if (s == LASP_OK) {
        snprintf(path, sizeof path, "%s/config.json", out_dir);
        FILE *f = fopen(path, "w");
        int ok = f && fprintf(f, "{\n  \"model_type\": \"lasp-transnormer\",\n  \"vocab\": %d,\n  \"d_model\": %d,\n"
                              "  \"n_layers\": %d,\n  \"n_heads\": %d,\n  \"ffn_dim\": %d,\n  \"conv\": %d,\n"
                              "  \"rms_eps\": %.9g,\n  \"step\": %lld,\n"
                              "  \"weights\": \"[in, out]: a product is y = x · W\",\n"
                              "  \"slopes_rule\": \"layer l, head h: 2^(-8 (h+1) / H) * (1 - l / (L - 1) + 1e-5), "
                              "L > 1; 2^(-8 (h+1) / H) for L = 1\",\n  \"slopes\": [",
                              c->vocab, c->d_model, c->n_layers, c->n_heads, c->ffn_dim, c->conv, (double)LASP_RMS_EPS,
                              (long long)meta.step) > 0;
        /* every layer's decay rates as the model makes them (lasp_model_slopes), so readers need not */
        float *sl = malloc((size_t)c->n_heads * sizeof *sl);
        ok = ok && sl;
        for (int l = 0; ok && l < c->n_layers; l++) {
            lasp_model_slopes(c, l, sl);
            ok = fprintf(f, "%s[", l ? ", " : "") > 0;
            for (int h = 0; ok && h < c->n_heads; h++) ok = fprintf(f, "%s%.9g", h ? ", " : "", (double)sl[h]) > 0;
            ok = ok && fprintf(f, "]") > 0;
        }
        ok = ok && fprintf(f, "]\n}\n") > 0;
        free(sl);
        if (f && fclose(f) != 0) ok = 0;
        if (!ok) s = lasp_fail(err, LASP_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    }
    free(t), free(json), free(p);
    lasp_layout_free(&lay);
    return s;
}
