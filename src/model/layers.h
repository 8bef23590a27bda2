/* layers.h — the model's layers other than the matrix products and attention, one function per pass,
 * on plain row-major fp32 arrays (docs/MODEL.md). The CPU versions (layers_cpu.c) are the spec; the CUDA
 * versions (layers_cuda.cu) take the same arguments as device pointers, plus the stream they are
 * enqueued on and, where a sum over rows is needed, a scratch buffer (lasp_layers_cuda_work_floats),
 * so that every gradient is summed in a fixed order (the same inputs give the same bits), and a flag that
 * says whether the sum is added to the gradient or written.
 *
 * Letters as in model.h: N rows (tokens), C channels, F feed-forward width, V vocabulary; B sequences of
 * T tokens, K convolution taps, W the convolved channels (3C). Strides are in elements. "+=" marks a
 * gradient that is accumulated; every other output is overwritten. */
#ifndef LASP_MODEL_LAYERS_H
#define LASP_MODEL_LAYERS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LASP_RMS_EPS 1e-6f

/* out = x · rstd · g per row, rstd = 1/√(mean(x²) + ε) (rstd may be NULL) */
void lasp_rms_fwd_cpu(float *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C);
/* dx += ∂/∂x, dg += ∂/∂g of lasp_rms_fwd given dy */
void lasp_rms_bwd_cpu(float *dx, float *dg, const float *dy, const float *x, const float *rstd, const float *g,
                      int64_t N, int64_t C);

/* The attention's features from the (convolved) projections p, rows of stride sp: q = SiLU(p[0, C)),
 * k = SiLU(p[C, 2C)), v = p[2C, 3C); q, k, v [N, C] each. */
void lasp_qkv_fwd_cpu(float *q, float *k, float *v, const float *p, int64_t sp, int64_t N, int64_t C);
/* dp[0, 3C) of each row (stride sp) from dq, dk, dv */
void lasp_qkv_bwd_cpu(float *dp, int64_t sp, const float *dq, const float *dk, const float *dv, const float *p,
                      int64_t N, int64_t C);

/* The output gate in place: y ← y ⊙ σ(u), u rows of stride su (y holds the normed attention output ô) */
void lasp_gate_fwd_cpu(float *y, const float *u, int64_t su, int64_t N, int64_t C);
/* Given dy = ∂/∂y: du (stride sdu) = dy · ô · σ'(u), and dy ← dy · σ(u) = ∂/∂ô in place. ô is recomputed
 * from the attention output o, its rstd and the norm's gain g. */
void lasp_gate_bwd_cpu(float *dy, float *du, int64_t sdu, const float *o, const float *rstd, const float *g,
                       const float *u, int64_t su, int64_t N, int64_t C);

/* The feed-forward's gated linear unit: a [N, F] = h1 ⊙ h2, h = h1 | h2 [N, 2F] */
void lasp_glu_fwd_cpu(float *a, const float *h, int64_t N, int64_t F);
/* dh [N, 2F] from da */
void lasp_glu_bwd_cpu(float *dh, const float *da, const float *h, int64_t N, int64_t F);

/* The short causal depthwise convolution over W channels: y[b,t] = Σ_{j<K} wc[j] ⊙ x[b,t−j], x rows of
 * stride sx; t − j < 0 reads halo [B, K−1, W] (the K−1 rows before the piece, oldest first; NULL: zeros).
 * y [B·T, W]. */
void lasp_conv_fwd_cpu(float *y, const float *x, int64_t sx, const float *halo, const float *wc, int64_t B,
                       int64_t T, int64_t W, int64_t K);
/* dwc [K, W] += Σ_{b,t} dy[b,t] ⊙ x[b,t−j] */
void lasp_conv_bwd_w_cpu(float *dwc, const float *dy, const float *x, int64_t sx, const float *halo, int64_t B,
                         int64_t T, int64_t W, int64_t K);
/* dx (rows of stride sdx, W columns each) = ∂/∂x; dhalo [B, K−1, W] = ∂/∂halo (may be NULL) */
void lasp_conv_bwd_x_cpu(float *dx, int64_t sdx, float *dhalo, const float *dy, const float *wc, int64_t B,
                         int64_t T, int64_t W, int64_t K);

/* Cross-entropy over rows of logits z [N, V] and their targets (checked by the caller to be in 0 .. V−1):
 * loss[n] = logsumexp(z[n]) − z[n, target], hit[n] = (argmax z[n] == target). With scale > 0, z becomes
 * scale · (softmax(z) − onehot(target)) in place: the gradient of scale · Σ loss. */
void lasp_xent_cpu(float *z, const int32_t *targets, int64_t N, int64_t V, float scale, double *loss, int32_t *hit);

/* The token embedding: x[n] = wte[tokens[n]]; its backward dwte[tokens[n]] += dx[n] */
void lasp_embed_fwd_cpu(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C);
void lasp_embed_bwd_cpu(float *dwte, const float *dx, const int32_t *tokens, int64_t N, int64_t C);

/* ---- the same on the GPU: device pointers, enqueued on `stream`, nothing synchronised ------------ */

struct CUstream_st;

/* Floats of scratch the _cuda functions that sum over rows want (`work`): enough for N rows of `width`
 * columns (C for the norms, K·W for the convolution's taps). Those sums (dg, dwc) take a flag, dg_add or
 * dwc_add: 1 adds to the gradient (+=, as the CPU's), 0 writes it (=), so that a step's first backward needs no
 * zeroed gradients before it. */
int64_t lasp_layers_cuda_work_floats(int64_t N, int64_t width);

/* The recurrent form's steps for one token (the decoder; model.c's lasp_decoder_step is their spec).
 * conv_step: cq [W] = Σ_j wc[j] ⊙ (j = 0: p, else win[j − 1]), then the window win [K−1, W] (newest first)
 * moves on by one, p entering it. recur_step: per head h, S_h [D, D] ← λ_h S_h + kᵀv and o = q S_h, with
 * q = SiLU(p[0, C)), k = SiLU(p[C, 2C)), v = p[2C, 3C), λ_h = exp(−slopes[h]); state [H, D, D], o [C]. */
void lasp_conv_step_cuda(float *cq, float *win, const float *p, const float *wc, int64_t W, int64_t K,
                         struct CUstream_st *stream);
void lasp_recur_step_cuda(float *state, float *o, const float *p, const float *slopes, int64_t H, int64_t D,
                          struct CUstream_st *stream);

/* A bf16 copy (round to nearest even), of the weights the bf16 products read */
void lasp_to_bf16_cuda(void *y, const float *x, int64_t n, struct CUstream_st *stream);

void lasp_rms_fwd_cuda(float *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C,
                       struct CUstream_st *stream);
void lasp_rms_bwd_cuda(float *dx, float *dg, int dg_add, const float *dy, const float *x, const float *rstd,
                       const float *g, int64_t N, int64_t C, float *work, struct CUstream_st *stream);
/* The attention output's RMSNorm (gain g, rstd kept unless NULL) and gate in one pass: y = RMSNorm(o) ⊙ σ(u),
 * u rows of stride su (the CPU model runs it as rms_fwd then gate_fwd). Its backward from dy, which becomes
 * ∂/∂ô as in gate_bwd: du (stride sdu) = ∂/∂u, dox = ∂/∂o (written, not accumulated), dg += ∂/∂g (dg_add). */
void lasp_onorm_gate_fwd_cuda(float *y, float *rstd, const float *o, const float *g, const float *u, int64_t su,
                              int64_t N, int64_t C, struct CUstream_st *stream);
void lasp_onorm_gate_bwd_cuda(float *dox, float *du, int64_t sdu, float *dg, int dg_add, float *dy, const float *o,
                              const float *rstd, const float *g, const float *u, int64_t su, int64_t N, int64_t C,
                              float *work, struct CUstream_st *stream);
void lasp_glu_fwd_cuda(float *a, const float *h, int64_t N, int64_t F, struct CUstream_st *stream);
void lasp_glu_bwd_cuda(float *dh, const float *da, const float *h, int64_t N, int64_t F, struct CUstream_st *stream);
/* The attention's features straight from the projections: the short convolution and SiLU in one pass, so
 * that the convolved projections cp are never stored (the backward recomputes them): q = SiLU(cp[0, C)),
 * k = SiLU(cp[C, 2C)), v = cp[2C, 3C), cp = lasp_conv_fwd_cpu of p (rows of stride sp, halo and taps wc as
 * there; K = 0: no convolution, cp = p). q, k, v [B·T, C]. The CPU model runs it as conv then qkv. */
void lasp_feat_fwd_cuda(float *q, float *k, float *v, const float *p, int64_t sp, const float *halo, const float *wc,
                        int64_t B, int64_t T, int64_t C, int64_t K, struct CUstream_st *stream);
/* Its backward from dq, dk, dv: dp[0, 3C) of each row (stride sdp) = ∂/∂p, with dnext [B, K−1, 3C] (the
 * gradient the next chunk's halo got; NULL: none) added to each sequence's last K−1 rows; dwc [K, 3C] += ∂/∂wc
 * (dwc_add); dhalo [B, K−1, 3C] = ∂/∂halo (NULL: not wanted). work: lasp_feat_cuda_work_floats(B, C, K) floats. */
void lasp_feat_bwd_cuda(float *dp, int64_t sdp, float *dwc, int dwc_add, float *dhalo, const float *dnext,
                        const float *dq, const float *dk, const float *dv, const float *p, int64_t sp,
                        const float *halo, const float *wc, int64_t B, int64_t T, int64_t C, int64_t K, float *work,
                        struct CUstream_st *stream);
int64_t lasp_feat_cuda_work_floats(int64_t B, int64_t C, int64_t K);
/* dp's last K1 rows of each of B sequences of T (columns [0, W), stride sdp) += src [B, K1, W]: the gradient
 * the next SP rank's halo sends back, added after the features' backward (the chunks' dnext, arriving later) */
void lasp_add_last_rows_cuda(float *dp, int64_t sdp, const float *src, int64_t B, int64_t T, int64_t K1, int64_t W,
                             struct CUstream_st *stream);
void lasp_xent_cuda(float *z, const int32_t *targets, int64_t N, int64_t V, float scale, double *loss, int32_t *hit,
                    struct CUstream_st *stream);
void lasp_embed_fwd_cuda(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C,
                         struct CUstream_st *stream);
/* The same passes with their bf16 side (void *: __nv_bfloat16, rounded to nearest even) for the bf16 model,
 * where they feed or come out of the matrix products and the attention op: the outputs of rms_fwd, feat_fwd and
 * onorm_gate_fwd, the op's output o that onorm_gate reads, the GLU's h and da (products' outputs) and its a and
 * dh, the gradients feat_bwd reads and writes (dp), onorm_gate_bwd's du and dox, and the gradient xent writes to
 * dz instead of in place. Everything else (the residual stream, the norms' rstd, the gains' and taps' gradients,
 * the projections p) stays fp32. */
void lasp_rms_fwd_bf16_cuda(void *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C,
                            struct CUstream_st *stream);
/* rms_bwd, and the accumulated dx rounded into dx16 (NULL: not), the operand of the products that read it next */
void lasp_rms_bwd_bf16_cuda(float *dx, void *dx16, float *dg, int dg_add, const float *dy, const float *x,
                            const float *rstd, const float *g, int64_t N, int64_t C, float *work,
                            struct CUstream_st *stream);
void lasp_feat_fwd_bf16_cuda(void *q, void *k, void *v, const float *p, int64_t sp, const float *halo,
                             const float *wc, int64_t B, int64_t T, int64_t C, int64_t K, struct CUstream_st *stream);
void lasp_feat_bwd_bf16_cuda(void *dp, int64_t sdp, float *dwc, int dwc_add, float *dhalo, const float *dnext,
                             const void *dq, const void *dk, const void *dv, const float *p, int64_t sp,
                             const float *halo, const float *wc, int64_t B, int64_t T, int64_t C, int64_t K,
                             float *work, struct CUstream_st *stream);
void lasp_add_last_rows_bf16_cuda(void *dp, int64_t sdp, const float *src, int64_t B, int64_t T, int64_t K1,
                                  int64_t W, struct CUstream_st *stream);
void lasp_onorm_gate_fwd_bf16_cuda(void *y, float *rstd, const void *o, const float *g, const float *u, int64_t su,
                                   int64_t N, int64_t C, struct CUstream_st *stream);
void lasp_onorm_gate_bwd_bf16_cuda(void *dox, void *du, int64_t sdu, float *dg, int dg_add, float *dy, const void *o,
                                   const float *rstd, const float *g, const float *u, int64_t su, int64_t N, int64_t C,
                                   float *work, struct CUstream_st *stream);
void lasp_glu_fwd_bf16_cuda(void *a, const void *h, int64_t N, int64_t F, struct CUstream_st *stream);
void lasp_glu_bwd_bf16_cuda(void *dh, const void *da, const void *h, int64_t N, int64_t F, struct CUstream_st *stream);
void lasp_xent_bf16_cuda(const float *z, void *dz, const int32_t *targets, int64_t N, int64_t V, float scale,
                         double *loss, int32_t *hit, struct CUstream_st *stream);

/* The backward without atomics, so that it is deterministic: the caller groups the positions by token on
 * the host (lasp_embed_index), and each token's row sums its positions in order. */
void lasp_embed_bwd_cuda(float *dwte, const float *dx, const int32_t *order, const int32_t *starts,
                         const int32_t *uniq, int64_t n_uniq, int64_t C, struct CUstream_st *stream);
/* order [N]: the positions sorted by token (stable); uniq [n_uniq]: the distinct tokens in increasing
 * order; starts [n_uniq + 1]: where each one's positions begin in order. Returns n_uniq. count is scratch
 * of V + 1 ints. */
int64_t lasp_embed_index(const int32_t *tokens, int64_t N, int64_t V, int32_t *order, int32_t *starts, int32_t *uniq,
                         int32_t *count);

#ifdef __cplusplus
}
#endif

#endif
