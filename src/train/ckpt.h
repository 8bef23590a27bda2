/* ckpt.h — checkpoints: one file DIR/model.ckpt, written to a temporary name, fsync'd and renamed, so
 * a crash leaves the previous checkpoint or the new one, never half of one.
 *
 * Layout (little-endian): a 256-byte header — magic "LASPCKPT", version, header size, model config
 * (vocab, d_model, layers, heads, ffn, convolution taps), step, samples consumed, seed, RNG state,
 * data kind and recall pairs, batch and sequence length, the dp × sp × ZeRO layout that wrote it (informational: any layout can load it), the parameter
 * count, a checksum of the payload and one of the header — then the payload: parameters, AdamW
 * first and second moments, each [n_params] fp32 in the model's flat layout. Full arrays, never
 * shards, which is what makes a checkpoint loadable under another layout or ZeRO stage. */
#ifndef LASP_CKPT_H
#define LASP_CKPT_H

#include <stdint.h>

#include "core/rng.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LASP_CKPT_MAGIC "LASPCKPT"
#define LASP_CKPT_VERSION 2  /* 2: the model config holds the short convolution's taps */
#define LASP_CKPT_FILE "model.ckpt"

typedef struct lasp_ckpt_meta {
    lasp_model_config model;
    int64_t step;
    uint64_t cursor, seed;
    lasp_rng rng;
    int32_t data_kind, n_pairs;
    int64_t batch, seq_len;
    int32_t dp, sp, zero;
    uint64_t n_params;
} lasp_ckpt_meta;

/* Writes DIR/model.ckpt (DIR is created if missing). */
lasp_status lasp_ckpt_save(const char *dir, const lasp_ckpt_meta *meta, const float *params, const float *mom,
                           const float *vel, lasp_err *err);
/* Reads and validates DIR/model.ckpt; *params (and *mom, *vel when those pointers are given) are
 * malloc'd [n_params]. */
lasp_status lasp_ckpt_load(const char *dir, lasp_ckpt_meta *meta, float **params, float **mom, float **vel,
                           lasp_err *err);

#ifdef __cplusplus
}
#endif

#endif
