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
#include "lasp.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LASP_SPLIT_TRAIN = 0, LASP_SPLIT_VAL = 1 };

/* The data behind lasp.h's opaque lasp_data: the recall task (kind RECALL), a text file (TEXT, one token
 * per byte, vocab 256) or an llm.c token shard (SHARD, uint16 or uint32 tokens). */
struct lasp_data {
    lasp_data_kind kind;
    uint64_t seed;
    int32_t n_pairs;         /* recall: key-value pairs stated at the start of each sample */
    int32_t *tokens;         /* files: all tokens */
    size_t n_tokens, n_train;  /* the first n_train tokens train, the rest validate */
    int32_t max_token;       /* largest token in the data (the model's vocab must exceed it) */
};

/* lasp_data_recall, lasp_data_open, lasp_data_get_info, lasp_data_free and lasp_data_kind_name are
 * lasp.h's. The recall task's samples state n_pairs (key, value) pairs, then ask random keys again
 * ("k v k v …") to the end; the values after the repeated keys are what `mask` marks. */

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
