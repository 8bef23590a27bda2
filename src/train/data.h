/* data.h — what the trainer reads: the built-in recall task or a token file, split into train and
 * validation, served to each rank as its piece of its slice of the batch.
 *
 * A batch is a pure function of (data, split, first sample index): the loader's whole state is the
 * number of samples consumed, so a checkpoint stores one integer and resume is exact, under any
 * dp × sp layout. Sample g of a split is T+1 tokens; row i of the global batch is sample first+i;
 * dp rank r takes rows [r·B/dp, (r+1)·B/dp); sp rank s takes positions [s·T/sp, (s+1)·T/sp) of them
 * as inputs and the positions one further as targets, so the target of a piece's last token is the
 * first token of the next piece. */
#ifndef LASP_DATA_H
#define LASP_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum lasp_data_kind {
    LASP_DATA_RECALL = 0,  /* built-in multi-query associative recall, generated from the seed */
    LASP_DATA_TEXT = 1,    /* a text file, one token per byte (vocab 256) */
    LASP_DATA_SHARD = 2,   /* an llm.c token shard (uint16 or uint32 tokens) */
} lasp_data_kind;

enum { LASP_SPLIT_TRAIN = 0, LASP_SPLIT_VAL = 1 };

/* The recall task's vocabulary: keys and values are disjoint ranges, so a model that only learnt
 * the format still has to guess among RECALL_N_VALUES values: chance accuracy 1/64. */
#define LASP_RECALL_KEY0 16
#define LASP_RECALL_N_KEYS 64
#define LASP_RECALL_VAL0 128
#define LASP_RECALL_N_VALUES 64

typedef struct lasp_data {
    lasp_data_kind kind;
    uint64_t seed;
    int32_t n_pairs;         /* recall: key-value pairs stated at the start of each sample */
    int32_t *tokens;         /* files: all tokens */
    size_t n_tokens, n_train;  /* the first n_train tokens train, the rest validate */
    int32_t max_token;       /* largest token in the data (the model's vocab must exceed it) */
} lasp_data;

/* The recall task: each sample states n_pairs (key, value) pairs, then asks random keys again
 * ("k v k v …") to the end; the values after the repeated keys are what `mask` marks. */
lasp_status lasp_data_recall(uint64_t seed, int32_t n_pairs, lasp_data *out, lasp_err *err);
/* A text file or an llm.c shard (recognised by its magic); val_frac of the tokens validate. */
lasp_status lasp_data_open(const char *path, double val_frac, lasp_data *out, lasp_err *err);
void lasp_data_free(lasp_data *d);
const char *lasp_data_kind_name(lasp_data_kind k);

/* Checks that samples of T+1 tokens fit (both splits of a file; the recall format). */
lasp_status lasp_data_check(const lasp_data *d, int64_t T, lasp_err *err);

/* This rank's part of a batch: tok, tgt [B/dp, T/sp]; mask (optional) marks the positions whose
 * target is a recall answer (all ones for files). */
lasp_status lasp_data_batch(const lasp_data *d, int split, uint64_t first, int64_t B, int64_t T, int dp_rank,
                            int dp_size, int sp_rank, int sp_size, int32_t *tok, int32_t *tgt, uint8_t *mask,
                            lasp_err *err);

#ifdef __cplusplus
}
#endif

#endif
