/* layers_cpu.c — the model's layers on the CPU (layers.h): plain loops, the spec the CUDA versions are
 * tested against. */
#include "model/layers.h"

#include <math.h>
#include <string.h>

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void lasp_rms_fwd_cpu(float *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        double ss = 0;
        for (int64_t c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        const float r = 1.0f / sqrtf((float)(ss / C) + LASP_RMS_EPS);
        if (rstd) rstd[n] = r;
        for (int64_t c = 0; c < C; c++) out[n * C + c] = xr[c] * r * g[c];
    }
}

/* with n̂ = x·rstd: dx = rstd·(dy·g − n̂·mean(dy·g·n̂)), dg = Σ_n dy·n̂ */
void lasp_rms_bwd_cpu(float *dx, float *dg, const float *dy, const float *x, const float *rstd, const float *g,
                      int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C, *dr = dy + n * C, r = rstd[n];
        double dot = 0;
        for (int64_t c = 0; c < C; c++) dot += (double)dr[c] * g[c] * xr[c] * r;
        const float mean = (float)(dot / C);
        for (int64_t c = 0; c < C; c++) {
            const float nh = xr[c] * r;
            dx[n * C + c] += r * (dr[c] * g[c] - nh * mean);
            dg[c] += dr[c] * nh;
        }
    }
}

void lasp_qkv_fwd_cpu(float *q, float *k, float *v, const float *p, int64_t sp, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *r = p + n * sp;
            q[n * C + c] = r[c] * sigmoidf(r[c]);
            k[n * C + c] = r[C + c] * sigmoidf(r[C + c]);
            v[n * C + c] = r[2 * C + c];
        }
}

/* silu'(x) = σ(x)·(1 + x·(1 − σ(x))) */
void lasp_qkv_bwd_cpu(float *dp, int64_t sp, const float *dq, const float *dk, const float *dv, const float *p,
                      int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *r = p + n * sp;
            const float sq = sigmoidf(r[c]), sk = sigmoidf(r[C + c]);
            dp[n * sp + c] = dq[n * C + c] * sq * (1 + r[c] * (1 - sq));
            dp[n * sp + C + c] = dk[n * C + c] * sk * (1 + r[C + c] * (1 - sk));
            dp[n * sp + 2 * C + c] = dv[n * C + c];
        }
}

void lasp_gate_fwd_cpu(float *y, const float *u, int64_t su, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) y[n * C + c] *= sigmoidf(u[n * su + c]);
}

void lasp_gate_bwd_cpu(float *dy, float *du, int64_t sdu, const float *o, const float *rstd, const float *g,
                       const float *u, int64_t su, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float s = sigmoidf(u[n * su + c]);
            const float oh = o[n * C + c] * rstd[n] * g[c];
            const float d = dy[n * C + c];
            du[n * sdu + c] = d * oh * s * (1 - s);
            dy[n * C + c] = d * s;
        }
}

void lasp_glu_fwd_cpu(float *a, const float *h, int64_t N, int64_t F) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t f = 0; f < F; f++) a[n * F + f] = h[n * 2 * F + f] * h[n * 2 * F + F + f];
}

void lasp_glu_bwd_cpu(float *dh, const float *da, const float *h, int64_t N, int64_t F) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t f = 0; f < F; f++) {
            const float d = da[n * F + f];
            dh[n * 2 * F + f] = d * h[n * 2 * F + F + f];
            dh[n * 2 * F + F + f] = d * h[n * 2 * F + f];
        }
}

/* Row t of sequence b before the convolution; t < 0 reaches into the halo (NULL: zeros). */
static inline const float *conv_row(const float *x, int64_t sx, const float *halo, int64_t b, int64_t t,
                                    int64_t T, int64_t K1, int64_t W) {
    return t >= 0 ? x + (b * T + t) * sx : halo ? halo + (b * K1 + K1 + t) * W : NULL;
}

/* rows outside, channels inside, so the inner loop is contiguous and vectorises */
void lasp_conv_fwd_cpu(float *y, const float *x, int64_t sx, const float *halo, const float *wc, int64_t B,
                       int64_t T, int64_t W, int64_t K) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            float *yr = y + (b * T + t) * W;
            memset(yr, 0, (size_t)W * sizeof *yr);
            for (int64_t j = 0; j < K; j++) {
                const float *xr = conv_row(x, sx, halo, b, t - j, T, K - 1, W), *w = wc + j * W;
                if (xr)
                    for (int64_t c = 0; c < W; c++) yr[c] += w[c] * xr[c];
            }
        }
}

void lasp_conv_bwd_w_cpu(float *dwc, const float *dy, const float *x, int64_t sx, const float *halo, int64_t B,
                         int64_t T, int64_t W, int64_t K) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            const float *g = dy + (b * T + t) * W;
            for (int64_t j = 0; j < K; j++) {
                const float *xr = conv_row(x, sx, halo, b, t - j, T, K - 1, W);
                float *dw = dwc + j * W;
                if (xr)
                    for (int64_t c = 0; c < W; c++) dw[c] += g[c] * xr[c];
            }
        }
}

/* ∂/∂x[b,s] = Σ_j wc[j] · dy[b,s+j]: s ≥ 0 are the piece's rows, s < 0 the halo's */
void lasp_conv_bwd_x_cpu(float *dx, int64_t sdx, float *dhalo, const float *dy, const float *wc, int64_t B,
                         int64_t T, int64_t W, int64_t K) {
    const int64_t K1 = K - 1;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = dhalo ? -K1 : 0; s < T; s++) {
            float *d = s >= 0 ? dx + (b * T + s) * sdx : dhalo + (b * K1 + K1 + s) * W;
            memset(d, 0, (size_t)W * sizeof *d);
            for (int64_t j = s < 0 ? -s : 0; j < K && s + j < T; j++) {
                const float *g = dy + (b * T + s + j) * W, *w = wc + j * W;
                for (int64_t c = 0; c < W; c++) d[c] += w[c] * g[c];
            }
        }
}

void lasp_xent_cpu(float *z, const int32_t *targets, int64_t N, int64_t V, float scale, double *loss, int32_t *hit) {
    for (int64_t n = 0; n < N; n++) {
        float *zr = z + n * V;
        const int32_t t = targets[n];
        int64_t arg = 0;
        for (int64_t v = 1; v < V; v++)
            if (zr[v] > zr[arg]) arg = v;
        hit[n] = arg == t;
        const float mx = zr[arg];
        double sum = 0;
        for (int64_t v = 0; v < V; v++) sum += exp((double)(zr[v] - mx));
        loss[n] = log(sum) - (double)(zr[t] - mx);
        if (scale > 0) {
            const float inv = (float)(1.0 / sum);
            for (int64_t v = 0; v < V; v++) zr[v] = expf(zr[v] - mx) * inv * scale;
            zr[t] -= scale;
        }
    }
}

void lasp_embed_fwd_cpu(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++) memcpy(x + n * C, wte + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void lasp_embed_bwd_cpu(float *dwte, const float *dx, const int32_t *tokens, int64_t N, int64_t C) {
    for (int64_t n = 0; n < N; n++) {
        float *g = dwte + (int64_t)tokens[n] * C;
        const float *d = dx + n * C;
        for (int64_t c = 0; c < C; c++) g[c] += d[c];
    }
}

/* a counting sort: the positions of each token stay in increasing order, as the CPU's loop adds them */
int64_t lasp_embed_index(const int32_t *tokens, int64_t N, int64_t V, int32_t *order, int32_t *starts, int32_t *uniq,
                         int32_t *count) {
    memset(count, 0, (size_t)(V + 1) * sizeof *count);
    for (int64_t n = 0; n < N; n++) count[tokens[n] + 1]++;
    int64_t u = 0;
    for (int64_t v = 0; v < V; v++) {
        if (count[v + 1]) uniq[u] = (int32_t)v, starts[u] = count[v], u++;
        count[v + 1] += count[v];
    }
    starts[u] = (int32_t)N;
    for (int64_t n = 0; n < N; n++) order[count[tokens[n]]++] = (int32_t)n;
    return u;
}
