/* model.h — the TransNormerLLM-style language model (docs/MODEL.md): parameter layout, presets,
 * forward and backward in fp32 on the CPU, and the recurrent (one token at a time) form for decoding.
 *
 * Letters: B batch (local), T tokens of this rank's piece, N = B·T, C d_model, H heads, D = C/H head
 * dim, F feed-forward width, V vocab, L layers.
 *
 * Parameters live in one flat fp32 buffer, cut into "units": unit 0 the embedding, units 1..L the
 * blocks, unit L+1 the final norm and the output head. A unit is contiguous, so ZeRO-3 gathers one
 * unit at a time and gradients are reduce-scattered unit by unit; all tensors of a block sit at the
 * same offsets inside it (lasp_block_off). */
#ifndef LASP_MODEL_H
#define LASP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/ctx.h"
#include "sp/sp.h"

#ifdef __cplusplus
extern "C" {
#endif

/* lasp_model_config, lasp_model_preset and lasp_model_config_check are lasp.h's. conv, the short causal
 * depthwise convolution on q, k, v, gives each position its predecessors' projections, which associative
 * recall needs (docs/MODEL.md). */

/* Offsets of the tensors inside one block (elements, from the block's start). */
typedef struct lasp_block_off {
    size_t ln1;     /* [C]       pre-attention RMSNorm gain */
    size_t wqkvu;   /* [C, 4C]   q | k | v | u (output gate) projections, fused into one product */
    size_t conv;    /* [K, 3C]   short convolution taps on q | k | v; row j weighs the token j back */
    size_t onorm;   /* [C]       RMSNorm gain of the attention output */
    size_t wo;      /* [C, C]    output projection */
    size_t ln2;     /* [C]       pre-FFN RMSNorm gain */
    size_t w12;     /* [C, 2F]   the two GLU branches, fused */
    size_t w3;      /* [F, C]    FFN down projection */
    size_t size;
} lasp_block_off;

typedef struct lasp_layout {
    int n_units;           /* L + 2 */
    size_t *unit_off;      /* [n_units + 1]: unit u is [unit_off[u], unit_off[u+1]) */
    lasp_block_off blk;    /* inside every block unit */
    size_t head_lnf;       /* inside the last unit: [C] final norm gain */
    size_t head_w;         /* inside the last unit: [C, V] */
    size_t n_params;
    size_t max_unit;       /* the largest unit */
} lasp_layout;

lasp_status lasp_layout_make(const lasp_model_config *c, lasp_layout *out, lasp_err *err);
void lasp_layout_free(lasp_layout *l);
/* 1 if the parameter at flat index i gets weight decay (matrices and embedding, not norm gains). */
int lasp_layout_decays(const lasp_layout *l, size_t i);

/* Initial values: N(0, 0.02) matrices, output projections scaled by 1/√(2L), gains 1, convolution
 * taps as in docs/MODEL.md. Depends only on the seed and the config (not on the number of threads that
 * draw it), so every rank (and every dp × sp layout) starts from the same model. */
void lasp_model_init_params(const lasp_model_config *c, const lasp_layout *l, uint64_t seed, float *params);

/* Per-layer decay slopes of docs/MATH.md §1: s_h = 2^(−8(h+1)/H) · (1 − l/(L−1) + 1e−5). */
void lasp_model_slopes(const lasp_model_config *c, int layer, float *slopes /* [H] */);

/* How the model reaches its parameters and gradients, unit by unit. With ZeRO-3 `get` gathers the
 * unit from the shards into a scratch buffer that stays valid until the next `get`; otherwise it
 * returns a pointer into the full buffer. `grad` returns where the unit's gradients accumulate
 * (zeroed by the provider before the backward); `grad_done` says they are complete (ZeRO-2/3
 * reduce-scatter them at once). NULL callbacks: the model uses `params`/`grads` of the struct. */
typedef struct lasp_param_access {
    void *user;
    lasp_status (*get)(void *user, int unit, const float **w, lasp_err *err);
    lasp_status (*grad)(void *user, int unit, float **g, lasp_err *err);
    lasp_status (*grad_done)(void *user, int unit, lasp_err *err);
} lasp_param_access;

/* Activations saved by the forward for the backward, for a fixed (B, T). */
typedef struct lasp_layer_acts {
    float *x;       /* [N, C]  block input (residual stream) */
    float *rstd1;   /* [N] */
    float *xn1;     /* [N, C]  normed input */
    float *pre;     /* [N, 4C] projections (q | k | v before the convolution, u before its sigmoid) */
    float *cpre;    /* [N, 3C] q | k | v after the short convolution, before SiLU (conv > 0 only) */
    float *halo;    /* [B, K−1, 3C] q | k | v projections of the K−1 tokens before this piece
                     * (the previous SP rank's last ones; zeros at the start of the sequence) */
    float *q, *k, *v; /* [N, C] each, contiguous [B, T, H, D] as the op wants them */
    float *o;       /* [N, C]  attention output */
    float *rstdo;   /* [N] */
    float *y;       /* [N, C]  RMSNorm(o)·gain·σ(u), input of wo */
    float *xm;      /* [N, C]  residual after attention */
    float *rstd2;   /* [N] */
    float *xn2;     /* [N, C] */
    float *h;       /* [N, 2F] */
    float *a;       /* [N, F]  h1 ⊙ h2 */
    lasp_sp_cache *cache; /* what the SP forward keeps for the backward (made by the first forward) */
} lasp_layer_acts;

/* What crosses from one chunk of a sequence to the next on the same rank, every layer's: the attention state
 * kv [L, B, H, D, D] (decayed to the chunk's first position, as the op's kv_in) and the convolution's halo
 * [L, B, K−1, 3C] (the q | k | v projections of the K−1 tokens before the chunk); in the backward, the
 * gradients of the same. lasp_model_carry_floats gives the size of one; lasp_model_carry_in lays one out in
 * `block` (host or device memory: it only computes the two pointers). */
typedef struct lasp_model_carry {
    float *kv, *halo;
} lasp_model_carry;
size_t lasp_model_carry_floats(const lasp_model_config *c, int64_t B);
lasp_model_carry lasp_model_carry_in(const lasp_model_config *c, int64_t B, float *block);

typedef struct lasp_model {
    lasp_model_config cfg;
    lasp_layout lay;
    float *params, *grads;          /* full buffers, used when access is NULL (may be NULL otherwise) */
    lasp_param_access access;
    float *slopes;                  /* [L, H] */
    int64_t B, T;                   /* activation buffers are sized for this */
    lasp_layer_acts *acts;          /* [L] */
    float *xL, *rstdf, *xf;         /* [N, C], [N], [N, C] */
    float *logits;                  /* [N, V]; after backward-ready forward: dloss/dlogits */
    float *dres, *dbuf, *dbig;      /* [N, C], [N, C], [N, max(4C, 3F)] */
    float *dq, *dk, *dv, *dob;      /* [N, C]: the op's gradients and its dO */
    float *dconv;                   /* [N, 3C]: gradient at the convolution's output (conv > 0) */
    float *halo_tx, *halo_rx;       /* [B, K−1, 3C]: the halo (or its gradient) sent / received */
    double *row_loss;               /* [N]: each token's cross-entropy */
    int32_t *row_hit;               /* [N]: 1 where the argmax is the target */
    int no_blas;                    /* force the plain loops (to measure what BLAS buys) */
    /* A sequence run chunk by chunk on one rank (no SP split): the forward starts from cin (NULL: zeros) and
     * writes cout (NULL: not wanted); the backward reads dcout, the gradient of cout (NULL: zero), and
     * writes dcin (NULL: not wanted). Set by the caller around each chunk's calls. */
    const lasp_model_carry *cin, *dcout;
    lasp_model_carry *cout, *dcin;
} lasp_model;

lasp_status lasp_model_create(const lasp_model_config *c, lasp_model *m, lasp_err *err);
/* The bytes lasp_model_reserve allocates for B sequences of T tokens (a double: asked-for sizes may not fit
 * an integer). */
double lasp_model_activation_bytes(const lasp_model_config *c, int64_t B, int64_t T);
/* (Re)size activation buffers for a local batch of B sequences of T tokens. */
lasp_status lasp_model_reserve(lasp_model *m, int64_t B, int64_t T, lasp_err *err);
void lasp_model_free(lasp_model *m);

/* Forward over this rank's piece: tokens, targets [B, T] (targets may be NULL: no loss). Attention
 * goes through the SP layer when sp is not NULL (sp of size 1 or NULL = the local op); so does the
 * short convolution's halo, which needs T ≥ K − 1 when the sequence is split.
 * loss_out: mean cross-entropy over this rank's tokens. With `grad_scale` > 0 the logits buffer
 * is turned into grad_scale · ∂(mean loss)/∂logits, ready for lasp_model_backward. correct_out
 * (optional): number of positions whose argmax equals the target, counted where mask is 1 (mask
 * NULL = everywhere); count_out: number of masked positions. */
lasp_status lasp_model_forward(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, const int32_t *tokens,
                               const int32_t *targets, const uint8_t *mask, float grad_scale, double *loss_out,
                               int64_t *correct_out, int64_t *count_out);
/* Both backends' checks and sums around the forward: every token and target in 0 .. V−1 (targets may be
 * NULL); then the mean of N per-row losses, and the hits and count where mask is 1 (NULL: everywhere). */
lasp_status lasp_model_check_ids(const int32_t *tokens, const int32_t *targets, int64_t N, int64_t V, lasp_err *err);
lasp_status lasp_model_sum_rows(const double *row_loss, const int32_t *row_hit, const uint8_t *mask, int64_t N,
                                double *loss_out, int64_t *correct_out, int64_t *count_out, lasp_err *err);
/* Backward after a forward with grad_scale > 0: accumulates into the gradients. */
lasp_status lasp_model_backward(lasp_model *m, lasp_ctx *ctx, lasp_sp *sp, const int32_t *tokens);

/* The recurrent form for decoding: one token at a time, state [L, H, D, D] plus the last K − 1
 * tokens' q | k | v projections per layer for the convolution (constant memory). */
typedef struct lasp_decoder {
    const lasp_model_config *cfg;
    const lasp_layout *lay;
    const float *params, *slopes;
    float *state;                       /* [L, H, D, D] */
    float *win;                         /* [L, K−1, 3C]: previous projections, newest first */
    float *cq;                          /* [3C]: q | k | v after the convolution */
    float *x, *xn, *pre, *o, *y, *h, *a; /* one token's activations */
    float *logits;                      /* [V] */
} lasp_decoder;

lasp_status lasp_decoder_create(const lasp_model *m, const float *params, lasp_decoder *d, lasp_err *err);
void lasp_decoder_free(lasp_decoder *d);
/* Feeds one token; logits of the next token in d->logits. */
void lasp_decoder_step(lasp_decoder *d, int32_t token);

#ifdef __cplusplus
}
#endif

#endif
