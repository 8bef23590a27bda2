/* attn_ref.c — the fp64 reference of MATH.md §1: the definition, summed directly in O(T²).
 * It is the spec the fast paths are tested against, so it is written to be obviously right:
 * every decay is exp(−s·k) for an integer distance k, never a product of powers. */
#include <math.h>
#include <stdlib.h>

#include "attn/attn.h"

/* index helpers for [B,T,H,D] and [B,H,d,e] */
#define TOK(x, D) ((x) + (((size_t)b * T + t) * H + h) * (D))
#define ROW(x, D, tt) ((x) + (((size_t)b * T + (tt)) * H + h) * (D))
#define STATE(x) ((x) + ((size_t)b * H + h) * d * e)

static double dot(const double *x, const double *y, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

static lasp_status check(lasp_ctx *ctx, const lasp_attn_desc *a, const double *slopes) {
    if (!ctx) return LASP_ERR_ARG;
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    for (int64_t h = 0; h < a->H; h++)
        if (!(slopes[h] >= 0) || !isfinite(slopes[h]))
            return lasp_fail(&ctx->err, LASP_ERR_ARG, "slope of head %lld is %g; slopes must be finite and >= 0",
                             (long long)h, slopes[h]);
    return LASP_OK;
}

lasp_status lasp_attn_ref_fwd(lasp_ctx *ctx, const lasp_attn_desc *a, const double *q, const double *k,
                              const double *v, const double *slopes, const double *kv_in, double *o,
                              double *kv_out) {
    LASP_TRY(check(ctx, a, slopes));
    if (!q || !k || !v || !o) return lasp_fail(&ctx->err, LASP_ERR_ARG, "q, k, v and o must not be NULL");
    const int64_t B = a->B, T = a->T, H = a->H, d = a->d, e = a->e;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const double s = slopes[h];
            for (int64_t t = 0; t < T; t++) {
                double *ot = TOK(o, e);
                const double *qt = TOK(q, d);
                for (int64_t c = 0; c < e; c++) ot[c] = 0;
                for (int64_t j = 0; j <= t; j++) {
                    double w = exp(-s * (double)(t - j)) * dot(qt, ROW(k, d, j), d);
                    const double *vj = ROW(v, e, j);
                    for (int64_t c = 0; c < e; c++) ot[c] += w * vj[c];
                }
                if (kv_in) {
                    const double *S = STATE(kv_in);
                    double w = exp(-s * (double)t);
                    for (int64_t r = 0; r < d; r++)
                        for (int64_t c = 0; c < e; c++) ot[c] += w * qt[r] * S[r * e + c];
                }
            }
            if (kv_out) {
                double *S = STATE(kv_out);
                double g = exp(-s * (double)T);
                for (int64_t i = 0; i < d * e; i++) S[i] = kv_in ? g * STATE(kv_in)[i] : 0.0;
                for (int64_t t = 0; t < T; t++) {
                    double w = exp(-s * (double)(T - t));
                    const double *kt = TOK(k, d), *vt = TOK(v, e);
                    for (int64_t r = 0; r < d; r++)
                        for (int64_t c = 0; c < e; c++) S[r * e + c] += w * kt[r] * vt[c];
                }
            }
        }
    return LASP_OK;
}

lasp_status lasp_attn_ref_bwd(lasp_ctx *ctx, const lasp_attn_desc *a, const double *q, const double *k,
                              const double *v, const double *slopes, const double *kv_in, const double *do_,
                              const double *dkv_out, double *dq, double *dk, double *dv, double *dkv_in) {
    LASP_TRY(check(ctx, a, slopes));
    if (!q || !k || !v || !do_ || !dq || !dk || !dv)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "q, k, v, do, dq, dk and dv must not be NULL");
    const int64_t B = a->B, T = a->T, H = a->H, d = a->d, e = a->e;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const double s = slopes[h];
            for (int64_t t = 0; t < T; t++) {
                for (int64_t c = 0; c < d; c++) TOK(dq, d)[c] = TOK(dk, d)[c] = 0;
                for (int64_t c = 0; c < e; c++) TOK(dv, e)[c] = 0;
            }
            /* o_t = Σ_{j≤t} w(t−j) (q_t·k_j) v_j: each pair (t, j) feeds dq_t, dk_j, dv_j */
            for (int64_t t = 0; t < T; t++) {
                const double *qt = TOK(q, d), *dot_ = TOK(do_, e);
                for (int64_t j = 0; j <= t; j++) {
                    double w = exp(-s * (double)(t - j));
                    double qk = dot(qt, ROW(k, d, j), d), dov = dot(dot_, ROW(v, e, j), e);
                    for (int64_t c = 0; c < d; c++) {
                        TOK(dq, d)[c] += w * dov * ROW(k, d, j)[c];
                        ROW(dk, d, j)[c] += w * dov * qt[c];
                    }
                    for (int64_t c = 0; c < e; c++) ROW(dv, e, j)[c] += w * qk * dot_[c];
                }
            }
            /* o_t += w(t) q_t KV_in */
            if (kv_in) {
                const double *S = STATE(kv_in);
                for (int64_t t = 0; t < T; t++) {
                    double w = exp(-s * (double)t);
                    for (int64_t r = 0; r < d; r++) TOK(dq, d)[r] += w * dot(TOK(do_, e), S + r * e, e);
                }
            }
            /* KV_out = w(T) KV_in + Σ_j w(T−j) k_jᵀ v_j */
            if (dkv_out) {
                const double *G = STATE(dkv_out);
                for (int64_t t = 0; t < T; t++) {
                    double w = exp(-s * (double)(T - t));
                    for (int64_t r = 0; r < d; r++) TOK(dk, d)[r] += w * dot(TOK(v, e), G + r * e, e);
                    for (int64_t r = 0; r < d; r++)
                        for (int64_t c = 0; c < e; c++) TOK(dv, e)[c] += w * TOK(k, d)[r] * G[r * e + c];
                }
            }
            if (dkv_in) {
                double *S = STATE(dkv_in);
                double g = exp(-s * (double)T);
                for (int64_t i = 0; i < d * e; i++) S[i] = dkv_out ? g * STATE(dkv_out)[i] : 0.0;
                for (int64_t t = 0; t < T; t++) {
                    double w = exp(-s * (double)t);
                    for (int64_t r = 0; r < d; r++)
                        for (int64_t c = 0; c < e; c++) S[r * e + c] += w * TOK(q, d)[r] * TOK(do_, e)[c];
                }
            }
        }
    return LASP_OK;
}

double lasp_rel_error_f32(const float *x, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) return INFINITY;
        double diff = (double)x[i] - ref[i];
        num += diff * diff;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
