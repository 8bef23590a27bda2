/* layers_cuda.cu — the model's layers on the GPU (layers.h), fp32, and their bf16 variants (one template
 * each). Rows go to warps (norms) or blocks (cross-entropy, the row-wise element-wise passes); flat passes
 * are grid-strided. Sums over rows (the gains' and the taps'
 * gradients) are never atomic: each block sums a fixed range of rows into `work`, and a second pass adds
 * the partial sums in order, so that a step's gradients are the same bits on every run. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "model/layers.h"

namespace {

constexpr int THREADS = 256;
constexpr int ROWS_PER_PART = 32;  /* rows one block sums for a column-sum's partial */
constexpr int MAX_PARTS = 1024;    /* at most this many partials per column: the second pass stays short */

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* stores and loads of either element type: bf16 rounded to nearest even */
__device__ __forceinline__ void put(float *p, float x) { *p = x; }
__device__ __forceinline__ void put(__nv_bfloat16 *p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ float get(const float *p) { return *p; }
__device__ __forceinline__ float get(const __nv_bfloat16 *p) { return __bfloat162float(*p); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

int grid_for(int64_t n) {
    const int64_t g = (n + THREADS - 1) / THREADS;
    return (int)(g < 65535 * 16 ? (g ? g : 1) : 65535 * 16);
}

int64_t parts_for(int64_t N) {
    const int64_t p = (N + ROWS_PER_PART - 1) / ROWS_PER_PART;
    return p < 1 ? 1 : p > MAX_PARTS ? MAX_PARTS : p;
}

/* Row-wise passes: a block per row (grid-strided over rows), its threads over the columns, so that no
 * thread divides a 64-bit index (slow on a GPU) to find its row and column. */
int rows_grid(int64_t N) { return (int)(N < 1 ? 1 : N < (1 << 20) ? N : (1 << 20)); }
#define ROWS(n, N) for (int64_t n = blockIdx.x; n < (N); n += gridDim.x)
#define COLS(c, C) for (int64_t c = threadIdx.x; c < (C); c += blockDim.x)

#define GRID_STRIDE(i, n) for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
                               i += (int64_t)gridDim.x * blockDim.x)

/* ---- column sums in two passes: partials over row ranges, then the partials in order -------------- */

/* out[col] += Σ_p work[p, col] */
__global__ void k_sum_parts(float *out, const float *work, int64_t parts, int64_t width) {
    GRID_STRIDE(c, width) {
        float s = 0;
        for (int64_t p = 0; p < parts; p++) s += work[p * width + c];
        out[c] += s;
    }
}

/* ---- RMSNorm: a warp per row --------------------------------------------------------------------- */

template <typename T>
__global__ void k_rms_fwd(T *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C) {
    const int64_t n = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *xr = x + n * C;
    float ss = 0;
    for (int64_t c = lane; c < C; c += 32) ss += xr[c] * xr[c];
    const float r = rsqrtf(warp_sum(ss) / (float)C + LASP_RMS_EPS);
    if (rstd && lane == 0) rstd[n] = r;
    for (int64_t c = lane; c < C; c += 32) put(out + n * C + c, xr[c] * r * g[c]);
}

__global__ void k_rms_bwd_x(float *dx, const float *dy, const float *x, const float *rstd, const float *g, int64_t N,
                            int64_t C) {
    const int64_t n = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (n >= N) return;
    const float *xr = x + n * C, *dr = dy + n * C, r = rstd[n];
    float dot = 0;
    for (int64_t c = lane; c < C; c += 32) dot += dr[c] * g[c] * xr[c] * r;
    const float mean = warp_sum(dot) / (float)C;
    for (int64_t c = lane; c < C; c += 32) dx[n * C + c] += r * (dr[c] * g[c] - xr[c] * r * mean);
}

/* work[p, c] = Σ over part p's rows of dy·x·rstd */
__global__ void k_rms_bwd_g(float *work, const float *dy, const float *x, const float *rstd, int64_t N, int64_t C,
                            int64_t rows) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, p = blockIdx.y;
    if (c >= C) return;
    const int64_t n1 = (p + 1) * rows < N ? (p + 1) * rows : N;
    float s = 0;
    for (int64_t n = p * rows; n < n1; n++) s += dy[n * C + c] * x[n * C + c] * rstd[n];
    work[p * C + c] = s;
}

/* ---- element-wise -------------------------------------------------------------------------------- */

template <typename T>
__global__ void k_qkv_fwd(T *q, T *k, T *v, const float *p, int64_t sp, int64_t N, int64_t C) {
    ROWS(n, N) {
        const float *r = p + n * sp;
        COLS(c, C) {
            const int64_t i = n * C + c;
            const float a = r[c], b = r[C + c];
            put(q + i, a * sigmoid(a)), put(k + i, b * sigmoid(b)), put(v + i, r[2 * C + c]);
        }
    }
}

template <typename T>
__global__ void k_qkv_bwd(float *dp, int64_t sp, const T *dq, const T *dk, const T *dv, const float *p,
                          int64_t N, int64_t C) {
    ROWS(n, N) {
        const float *r = p + n * sp;
        COLS(c, C) {
            const int64_t i = n * C + c;
            const float a = r[c], b = r[C + c], sa = sigmoid(a), sb = sigmoid(b);
            dp[n * sp + c] = get(dq + i) * sa * (1 + a * (1 - sa));
            dp[n * sp + C + c] = get(dk + i) * sb * (1 + b * (1 - sb));
            dp[n * sp + 2 * C + c] = get(dv + i);
        }
    }
}

/* y = yin ⊙ σ(u) (y may be yin) */
template <typename T>
__global__ void k_gate_fwd(T *y, const float *yin, const float *u, int64_t su, int64_t N, int64_t C) {
    ROWS(n, N) COLS(c, C) put(y + n * C + c, yin[n * C + c] * sigmoid(u[n * su + c]));
}

__global__ void k_gate_bwd(float *dy, float *du, int64_t sdu, const float *o, const float *rstd, const float *g,
                           const float *u, int64_t su, int64_t N, int64_t C) {
    ROWS(n, N) COLS(c, C) {
        const int64_t i = n * C + c;
        const float s = sigmoid(u[n * su + c]), oh = o[i] * rstd[n] * g[c], d = dy[i];
        du[n * sdu + c] = d * oh * s * (1 - s);
        dy[i] = d * s;
    }
}

template <typename T>
__global__ void k_glu_fwd(T *a, const float *h, int64_t N, int64_t F) {
    ROWS(n, N) COLS(f, F) put(a + n * F + f, h[n * 2 * F + f] * h[n * 2 * F + F + f]);
}

template <typename T>
__global__ void k_glu_bwd(T *dh, const float *da, const float *h, int64_t N, int64_t F) {
    ROWS(n, N) COLS(f, F) {
        const float d = da[n * F + f];
        put(dh + n * 2 * F + f, d * h[n * 2 * F + F + f]);
        put(dh + n * 2 * F + F + f, d * h[n * 2 * F + f]);
    }
}

/* ---- the short convolution ----------------------------------------------------------------------- */

/* row t of sequence b before the convolution; t < 0 reaches into the halo (NULL: zeros) */
__device__ __forceinline__ const float *conv_row(const float *x, int64_t sx, const float *halo, int64_t b,
                                                 int64_t t, int64_t T, int64_t K1, int64_t W) {
    return t >= 0 ? x + (b * T + t) * sx : halo ? halo + (b * K1 + K1 + t) * W : nullptr;
}

__global__ void k_conv_fwd(float *y, const float *x, int64_t sx, const float *halo, const float *wc, int64_t B,
                           int64_t T, int64_t W, int64_t K) {
    ROWS(n, B * T) {
        const int64_t b = n / T, t = n % T;
        COLS(c, W) {
            float s = 0;
            for (int64_t j = 0; j < K; j++) {
                const float *xr = conv_row(x, sx, halo, b, t - j, T, K - 1, W);
                if (xr) s += wc[j * W + c] * xr[c];
            }
            y[n * W + c] = s;
        }
    }
}

/* work[p, j·W + c] = Σ over part p's rows (b, t) of dy[b,t,c]·x[b,t−j,c] */
__global__ void k_conv_bwd_w(float *work, const float *dy, const float *x, int64_t sx, const float *halo, int64_t B,
                             int64_t T, int64_t W, int64_t K, int64_t rows) {
    const int64_t col = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, p = blockIdx.y, N = B * T;
    if (col >= K * W) return;
    const int64_t j = col / W, c = col % W;
    const int64_t n1 = (p + 1) * rows < N ? (p + 1) * rows : N;
    float s = 0;
    int64_t b = p * rows / T, t = p * rows % T; /* row n's sequence and position, moved along with n */
    for (int64_t n = p * rows; n < n1; n++) {
        const float *xr = conv_row(x, sx, halo, b, t - j, T, K - 1, W);
        if (xr) s += dy[n * W + c] * xr[c];
        if (++t == T) t = 0, b++;
    }
    work[p * K * W + col] = s;
}

/* ∂/∂x[b,s] = Σ_j wc[j] · dy[b,s+j]; s from −(K−1) when the halo's gradient is wanted */
__global__ void k_conv_bwd_x(float *dx, int64_t sdx, float *dhalo, const float *dy, const float *wc, int64_t B,
                             int64_t T, int64_t W, int64_t K) {
    const int64_t K1 = K - 1, s0 = dhalo ? -K1 : 0, S = T - s0;
    ROWS(r, B * S) {
        const int64_t s = r % S + s0, b = r / S;
        COLS(c, W) {
            float acc = 0;
            for (int64_t j = s < 0 ? -s : 0; j < K && s + j < T; j++) acc += wc[j * W + c] * dy[(b * T + s + j) * W + c];
            if (s >= 0) dx[(b * T + s) * sdx + c] = acc;
            else dhalo[(b * K1 + K1 + s) * W + c] = acc;
        }
    }
}

/* ---- cross-entropy: a block per row ------------------------------------------------------------- */

/* block-wide reduction of (value, index): the larger value, the lower index on ties (the CPU's argmax) */
__device__ void block_argmax(float &v, int64_t &i) {
    __shared__ float sv[THREADS / 32];
    __shared__ int64_t si[THREADS / 32];
    for (int o = 16; o; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
    }
    const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (lane == 0) sv[w] = v, si[w] = i;
    __syncthreads();
    v = sv[0], i = si[0];
    for (int k = 1; k < THREADS / 32; k++)
        if (sv[k] > v || (sv[k] == v && si[k] < i)) v = sv[k], i = si[k];
    __syncthreads();
}

__device__ float block_sum(float s) {
    __shared__ float ss[THREADS / 32];
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) ss[threadIdx.x / 32] = s;
    __syncthreads();
    float t = 0;
    for (int k = 0; k < THREADS / 32; k++) t += ss[k];
    __syncthreads();
    return t;
}

/* the gradient goes to dz (which may be z itself) */
template <typename T>
__global__ void __launch_bounds__(THREADS) k_xent(const float *z, T *dz, const int32_t *targets, int64_t V,
                                                  float scale, double *loss, int32_t *hit) {
    const int64_t n = blockIdx.x;
    const float *zr = z + n * V;
    T *dr = dz + n * V;
    float mx = -INFINITY;
    int64_t arg = V;
    for (int64_t v = threadIdx.x; v < V; v += THREADS)
        if (zr[v] > mx || arg == V) mx = zr[v], arg = v;
    block_argmax(mx, arg);
    float s = 0;
    for (int64_t v = threadIdx.x; v < V; v += THREADS) s += expf(zr[v] - mx);
    const float sum = block_sum(s);
    const int32_t t = targets[n];
    if (threadIdx.x == 0) {
        loss[n] = log((double)sum) - (double)(zr[t] - mx);
        hit[n] = arg == t;
    }
    if (scale > 0) {
        __syncthreads();  /* zr[t] read above before it is overwritten */
        const float inv = 1.0f / sum;
        for (int64_t v = threadIdx.x; v < V; v += THREADS) put(dr + v, expf(zr[v] - mx) * inv * scale - (v == t ? scale : 0));
    }
}

/* dx's last K−1 rows of every sequence (stride sdx, W columns) += dh [B, K−1, W] */
__global__ void k_rows_add(float *dx, int64_t sdx, const float *dh, int64_t B, int64_t T, int64_t K1, int64_t W) {
    ROWS(r, B * K1) {
        const int64_t b = r / K1, i = r % K1;
        COLS(c, W) dx[(b * T + T - K1 + i) * sdx + c] += dh[r * W + c];
    }
}

/* ---- the recurrent form, one token (the decoder) --------------------------------------------------- */

/* cq = the convolution of the token's projections p with the window (newest first), then the window moves
 * on by one: a thread per channel, so the shift is in place */
__global__ void k_conv_step(float *cq, float *win, const float *p, const float *wc, int64_t W, int64_t K) {
    GRID_STRIDE(c, W) {
        float s = wc[c] * p[c];
        for (int64_t j = 1; j < K; j++) s += wc[j * W + c] * win[(j - 1) * W + c];
        cq[c] = s;
        for (int64_t j = K - 2; j > 0; j--) win[j * W + c] = win[(j - 1) * W + c];
        if (K > 1) win[c] = p[c];
    }
}

/* a block per head, a thread per column j of its D × D state: S = λS + kᵀv, o = q S, q and k through SiLU */
__global__ void k_recur_step(float *state, float *o, const float *p, const float *slopes, int64_t C, int64_t D) {
    extern __shared__ float qk[]; /* [2D] */
    const int64_t h = blockIdx.x, j = threadIdx.x;
    const float *pq = p + h * D, *pk = p + C + h * D, *pv = p + 2 * C + h * D;
    for (int64_t i = j; i < D; i += blockDim.x) {
        qk[i] = pq[i] * sigmoid(pq[i]);
        qk[D + i] = pk[i] * sigmoid(pk[i]);
    }
    __syncthreads();
    if (j >= D) return;
    float *S = state + h * D * D;
    const float lam = expf(-slopes[h]), v = pv[j];
    float acc = 0;
    for (int64_t i = 0; i < D; i++) {
        const float sij = lam * S[i * D + j] + qk[D + i] * v;
        S[i * D + j] = sij;
        acc += qk[i] * sij;
    }
    o[h * D + j] = acc;
}

/* ---- bf16 copies ---------------------------------------------------------------------------------- */

__global__ void k_to_bf16(__nv_bfloat16 *y, const float *x, int64_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void k_from_bf16(float *y, const __nv_bfloat16 *x, int64_t n) {
    GRID_STRIDE(i, n) y[i] = __bfloat162float(x[i]);
}

/* ---- embedding ----------------------------------------------------------------------------------- */

__global__ void k_embed_fwd(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C) {
    ROWS(n, N) COLS(c, C) x[n * C + c] = wte[(int64_t)tokens[n] * C + c];
}

/* block u: the rows of token uniq[u], its positions summed in order */
__global__ void k_embed_bwd(float *dwte, const float *dx, const int32_t *order, const int32_t *starts,
                            const int32_t *uniq, int64_t C) {
    const int64_t u = blockIdx.x;
    float *g = dwte + (int64_t)uniq[u] * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float s = g[c];
        for (int32_t p = starts[u]; p < starts[u + 1]; p++) s += dx[(int64_t)order[p] * C + c];
        g[c] = s;
    }
}

}  // namespace

/* ---- the C interface ------------------------------------------------------------------------------ */

extern "C" {

int64_t lasp_layers_cuda_work_floats(int64_t N, int64_t width) { return parts_for(N) * width; }

void lasp_rows_add_cuda(float *dx, int64_t sdx, const float *dh, int64_t B, int64_t T, int64_t K1, int64_t W,
                        cudaStream_t st) {
    if (B > 0 && K1 > 0) k_rows_add<<<rows_grid(B * K1), THREADS, 0, st>>>(dx, sdx, dh, B, T, K1, W);
}

void lasp_conv_step_cuda(float *cq, float *win, const float *p, const float *wc, int64_t W, int64_t K,
                         cudaStream_t st) {
    k_conv_step<<<grid_for(W), THREADS, 0, st>>>(cq, win, p, wc, W, K);
}

void lasp_recur_step_cuda(float *state, float *o, const float *p, const float *slopes, int64_t H, int64_t D,
                          cudaStream_t st) {
    k_recur_step<<<(unsigned)H, (unsigned)D, 2 * D * sizeof(float), st>>>(state, o, p, slopes, H * D, D);
}

void lasp_to_bf16_cuda(void *y, const float *x, int64_t n, cudaStream_t st) {
    k_to_bf16<<<grid_for(n), THREADS, 0, st>>>((__nv_bfloat16 *)y, x, n);
}

void lasp_from_bf16_cuda(float *y, const void *x, int64_t n, cudaStream_t st) {
    k_from_bf16<<<grid_for(n), THREADS, 0, st>>>(y, (const __nv_bfloat16 *)x, n);
}

void lasp_rms_fwd_cuda(float *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C,
                       cudaStream_t st) {
    const int rows = THREADS / 32;
    if (N) k_rms_fwd<<<(unsigned)((N + rows - 1) / rows), THREADS, 0, st>>>(out, rstd, x, g, N, C);
}

void lasp_rms_fwd_bf16_cuda(void *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C,
                            cudaStream_t st) {
    const int rows = THREADS / 32;
    if (N) k_rms_fwd<<<(unsigned)((N + rows - 1) / rows), THREADS, 0, st>>>((__nv_bfloat16 *)out, rstd, x, g, N, C);
}

void lasp_rms_bwd_cuda(float *dx, float *dg, const float *dy, const float *x, const float *rstd, const float *g,
                       int64_t N, int64_t C, float *work, cudaStream_t st) {
    if (!N) return;
    const int rows = THREADS / 32;
    k_rms_bwd_x<<<(unsigned)((N + rows - 1) / rows), THREADS, 0, st>>>(dx, dy, x, rstd, g, N, C);
    const int64_t parts = parts_for(N), per = (N + parts - 1) / parts;
    const dim3 grid((unsigned)((C + THREADS - 1) / THREADS), (unsigned)parts);
    k_rms_bwd_g<<<grid, THREADS, 0, st>>>(work, dy, x, rstd, N, C, per);
    k_sum_parts<<<grid_for(C), THREADS, 0, st>>>(dg, work, parts, C);
}

void lasp_qkv_fwd_cuda(float *q, float *k, float *v, const float *p, int64_t sp, int64_t N, int64_t C,
                       cudaStream_t st) {
    k_qkv_fwd<<<rows_grid(N), THREADS, 0, st>>>(q, k, v, p, sp, N, C);
}

void lasp_qkv_fwd_bf16_cuda(void *q, void *k, void *v, const float *p, int64_t sp, int64_t N, int64_t C,
                            cudaStream_t st) {
    k_qkv_fwd<<<rows_grid(N), THREADS, 0, st>>>((__nv_bfloat16 *)q, (__nv_bfloat16 *)k, (__nv_bfloat16 *)v, p,
                                                   sp, N, C);
}

void lasp_qkv_bwd_cuda(float *dp, int64_t sp, const float *dq, const float *dk, const float *dv, const float *p,
                       int64_t N, int64_t C, cudaStream_t st) {
    k_qkv_bwd<<<rows_grid(N), THREADS, 0, st>>>(dp, sp, dq, dk, dv, p, N, C);
}

void lasp_qkv_bwd_bf16_cuda(float *dp, int64_t sp, const void *dq, const void *dk, const void *dv, const float *p,
                            int64_t N, int64_t C, cudaStream_t st) {
    k_qkv_bwd<<<rows_grid(N), THREADS, 0, st>>>(dp, sp, (const __nv_bfloat16 *)dq, (const __nv_bfloat16 *)dk,
                                                   (const __nv_bfloat16 *)dv, p, N, C);
}

void lasp_gate_fwd_cuda(float *y, const float *u, int64_t su, int64_t N, int64_t C, cudaStream_t st) {
    k_gate_fwd<<<rows_grid(N), THREADS, 0, st>>>(y, y, u, su, N, C);
}

void lasp_gate_fwd_bf16_cuda(void *y, const float *yin, const float *u, int64_t su, int64_t N, int64_t C,
                             cudaStream_t st) {
    k_gate_fwd<<<rows_grid(N), THREADS, 0, st>>>((__nv_bfloat16 *)y, yin, u, su, N, C);
}

void lasp_gate_bwd_cuda(float *dy, float *du, int64_t sdu, const float *o, const float *rstd, const float *g,
                        const float *u, int64_t su, int64_t N, int64_t C, cudaStream_t st) {
    k_gate_bwd<<<rows_grid(N), THREADS, 0, st>>>(dy, du, sdu, o, rstd, g, u, su, N, C);
}

void lasp_glu_fwd_cuda(float *a, const float *h, int64_t N, int64_t F, cudaStream_t st) {
    k_glu_fwd<<<rows_grid(N), THREADS, 0, st>>>(a, h, N, F);
}

void lasp_glu_fwd_bf16_cuda(void *a, const float *h, int64_t N, int64_t F, cudaStream_t st) {
    k_glu_fwd<<<rows_grid(N), THREADS, 0, st>>>((__nv_bfloat16 *)a, h, N, F);
}

void lasp_glu_bwd_cuda(float *dh, const float *da, const float *h, int64_t N, int64_t F, cudaStream_t st) {
    k_glu_bwd<<<rows_grid(N), THREADS, 0, st>>>(dh, da, h, N, F);
}

void lasp_glu_bwd_bf16_cuda(void *dh, const float *da, const float *h, int64_t N, int64_t F, cudaStream_t st) {
    k_glu_bwd<<<rows_grid(N), THREADS, 0, st>>>((__nv_bfloat16 *)dh, da, h, N, F);
}

void lasp_conv_fwd_cuda(float *y, const float *x, int64_t sx, const float *halo, const float *wc, int64_t B,
                        int64_t T, int64_t W, int64_t K, cudaStream_t st) {
    k_conv_fwd<<<rows_grid(B * T), THREADS, 0, st>>>(y, x, sx, halo, wc, B, T, W, K);
}

void lasp_conv_bwd_w_cuda(float *dwc, const float *dy, const float *x, int64_t sx, const float *halo, int64_t B,
                          int64_t T, int64_t W, int64_t K, float *work, cudaStream_t st) {
    const int64_t N = B * T;
    if (!N) return;
    const int64_t parts = parts_for(N), per = (N + parts - 1) / parts;
    const dim3 grid((unsigned)((K * W + THREADS - 1) / THREADS), (unsigned)parts);
    k_conv_bwd_w<<<grid, THREADS, 0, st>>>(work, dy, x, sx, halo, B, T, W, K, per);
    k_sum_parts<<<grid_for(K * W), THREADS, 0, st>>>(dwc, work, parts, K * W);
}

void lasp_conv_bwd_x_cuda(float *dx, int64_t sdx, float *dhalo, const float *dy, const float *wc, int64_t B,
                          int64_t T, int64_t W, int64_t K, cudaStream_t st) {
    const int64_t S = T + (dhalo ? K - 1 : 0);
    k_conv_bwd_x<<<rows_grid(B * S), THREADS, 0, st>>>(dx, sdx, dhalo, dy, wc, B, T, W, K);
}

void lasp_xent_cuda(float *z, const int32_t *targets, int64_t N, int64_t V, float scale, double *loss, int32_t *hit,
                    cudaStream_t st) {
    if (N) k_xent<<<(unsigned)N, THREADS, 0, st>>>(z, z, targets, V, scale, loss, hit);
}

void lasp_xent_bf16_cuda(const float *z, void *dz, const int32_t *targets, int64_t N, int64_t V, float scale,
                         double *loss, int32_t *hit, cudaStream_t st) {
    if (N) k_xent<<<(unsigned)N, THREADS, 0, st>>>(z, (__nv_bfloat16 *)dz, targets, V, scale, loss, hit);
}

void lasp_embed_fwd_cuda(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C, cudaStream_t st) {
    k_embed_fwd<<<rows_grid(N), THREADS, 0, st>>>(x, wte, tokens, N, C);
}

void lasp_embed_bwd_cuda(float *dwte, const float *dx, const int32_t *order, const int32_t *starts,
                         const int32_t *uniq, int64_t n_uniq, int64_t C, cudaStream_t st) {
    if (n_uniq) k_embed_bwd<<<(unsigned)n_uniq, C < THREADS ? 32 * (unsigned)((C + 31) / 32) : THREADS, 0, st>>>(
        dwte, dx, order, starts, uniq, C);
}

}  // extern "C"
