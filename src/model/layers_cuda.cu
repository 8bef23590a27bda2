/* layers_cuda.cu — the model's layers on the GPU (layers.h), fp32, and their bf16 variants (one template
 * each). Rows go to warps (norms) or blocks (cross-entropy, the row-wise element-wise passes); flat passes
 * are grid-strided. Sums over rows (the gains' and the taps'
 * gradients) are never atomic: each block sums a fixed range of rows into `work`, and a second pass adds
 * the partial sums in order, so that a step's gradients are the same bits on every run. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <initializer_list>
#include <utility>

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

/* out[col] += Σ_p work[p, col], or with add 0 out[col] = the sum (a step's first backward writes its gradients
 * rather than adding to zeros). A block takes 32 columns and its warps every SUM_WARPS-th partial, so that
 * many loads are in flight (one thread walking every partial waits on each in turn); warp 0 then adds the
 * warps' sums in order: the same bits on every run. */
constexpr int SUM_WARPS = 8;
__global__ void __launch_bounds__(32 * SUM_WARPS) k_sum_parts(float *out, const float *work, int64_t parts,
                                                              int64_t width, int add) {
    __shared__ float part[SUM_WARPS][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t c = blockIdx.x * 32ll + lane;
    float s = 0;
    if (c < width)
#pragma unroll 4
        for (int64_t p = w; p < parts; p += SUM_WARPS) s += work[p * width + c];
    part[w][lane] = s;
    __syncthreads();
    if (w == 0 && c < width) {
        float t = 0;
#pragma unroll
        for (int j = 0; j < SUM_WARPS; j++) t += part[j][lane];
        out[c] = add ? out[c] + t : t;
    }
}

void sum_parts(float *out, const float *work, int64_t parts, int64_t width, int add, cudaStream_t st) {
    k_sum_parts<<<(unsigned)((width + 31) / 32), 32 * SUM_WARPS, 0, st>>>(out, work, parts, width, add);
}

/* ---- V consecutive elements as floats ------------------------------------------------------------ */

/* Read from and written to fp32 or bf16 rows in one access for V = 2 or 4 (the pointer aligned for V of its
 * elements), so that a lane moves 8 or 16 bytes at once; the arithmetic stays per element, the same for any V. */
template <int V>
struct vf {
    float v[V];
};

template <int V>
__device__ __forceinline__ vf<V> ld(const float *p) {
    vf<V> r;
    if constexpr (V == 4) {
        const float4 a = *(const float4 *)p;
        r.v[0] = a.x, r.v[1] = a.y, r.v[2] = a.z, r.v[3] = a.w;
    } else if constexpr (V == 2) {
        const float2 a = *(const float2 *)p;
        r.v[0] = a.x, r.v[1] = a.y;
    } else {
        r.v[0] = *p;
    }
    return r;
}

template <int V>
__device__ __forceinline__ vf<V> ld(const __nv_bfloat16 *p) {
    vf<V> r;
    if constexpr (V == 1) {
        r.v[0] = __bfloat162float(*p);
    } else {
#pragma unroll
        for (int j = 0; j < V; j += 2) {
            const float2 a = __bfloat1622float2(((const __nv_bfloat162 *)p)[j / 2]);
            r.v[j] = a.x, r.v[j + 1] = a.y;
        }
    }
    return r;
}

template <int V>
__device__ __forceinline__ void st(float *p, const vf<V> &x) {
    if constexpr (V == 4) *(float4 *)p = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
    else if constexpr (V == 2) *(float2 *)p = make_float2(x.v[0], x.v[1]);
    else *p = x.v[0];
}

template <int V>
__device__ __forceinline__ void st(__nv_bfloat16 *p, const vf<V> &x) {
    if constexpr (V == 1) {
        *p = __float2bfloat16_rn(x.v[0]);
    } else {
#pragma unroll
        for (int j = 0; j < V; j += 2) ((__nv_bfloat162 *)p)[j / 2] = __floats2bfloat162_rn(x.v[j], x.v[j + 1]);
    }
}

template <int V>
__device__ __forceinline__ vf<V> vzero() {
    vf<V> z;
#pragma unroll
    for (int i = 0; i < V; i++) z.v[i] = 0.0f;
    return z;
}

/* 1 if each pointer is aligned for V of its elements (NULL is) */
template <int V>
bool aligned_for(std::initializer_list<std::pair<const void *, size_t>> ps) {
    for (const auto &p : ps)
        if ((uintptr_t)p.first % (V * p.second)) return false;
    return true;
}
#define AL(p) std::pair<const void *, size_t>((p), sizeof *(p))

/* ---- row passes: a warp per row, V columns a lane (4 where C is a multiple of 128 and the rows are aligned
 * for it, else 1) ---------------------------------------------------------------------------------- */

#define ROW_OF_WARP(n, N)                                                    \
    const int64_t n = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32; \
    const int lane = threadIdx.x & 31;                                       \
    if (n >= N) return
#define LANE_COLS(c, C, V) for (int64_t c = (V) * lane; c < (C); c += 32 * (V))

unsigned row_blocks(int64_t N) { return (unsigned)((N + THREADS / 32 - 1) / (THREADS / 32)); }

/* y = RMSNorm(x) · g, and with u (rows of stride su) ⊙ σ(u): the output gate in the same pass (rstd may be
 * NULL) */
template <int V, typename TX, typename TY>
__global__ void k_norm_fwd(TY *y, float *rstd, const TX *x, const float *g, const float *u, int64_t su, int64_t N,
                           int64_t C) {
    ROW_OF_WARP(n, N);
    const TX *xr = x + n * C;
    float ss = 0;
#pragma unroll 4
    LANE_COLS(c, C, V) {
        const vf<V> a = ld<V>(xr + c);
#pragma unroll
        for (int j = 0; j < V; j++) ss += a.v[j] * a.v[j];
    }
    const float r = rsqrtf(warp_sum(ss) / (float)C + LASP_RMS_EPS);
    if (rstd && lane == 0) rstd[n] = r;
#pragma unroll 4
    LANE_COLS(c, C, V) {
        const vf<V> a = ld<V>(xr + c), w = ld<V>(g + c);
        vf<V> o;
#pragma unroll
        for (int j = 0; j < V; j++) o.v[j] = a.v[j] * r * w.v[j];
        if (u) {
            const vf<V> uu = ld<V>(u + n * su + c);
#pragma unroll
            for (int j = 0; j < V; j++) o.v[j] *= sigmoid(uu.v[j]);
        }
        st<V>(y + n * C + c, o);
    }
}

/* k_norm_fwd without the gate, for rows of at most 32·V·IT columns, a lane's columns read once into registers:
 * all of a row's loads are in flight together, and the normalising pass does not read the row again. The same
 * columns a lane and the same order of sums as k_norm_fwd: the same bits. */
template <int V, int IT, typename TX, typename TY>
__global__ void k_norm_fwd_row(TY *y, float *rstd, const TX *x, const float *g, int64_t N, int64_t C) {
    ROW_OF_WARP(n, N);
    const TX *xr = x + n * C;
    vf<V> a[IT];
    float ss = 0;
#pragma unroll
    for (int i = 0; i < IT; i++) {
        const int64_t c = (int64_t)(i * 32 + lane) * V;
        a[i] = c < C ? ld<V>(xr + c) : vzero<V>();
    }
#pragma unroll
    for (int i = 0; i < IT; i++)
#pragma unroll
        for (int j = 0; j < V; j++) ss += a[i].v[j] * a[i].v[j];
    const float r = rsqrtf(warp_sum(ss) / (float)C + LASP_RMS_EPS);
    if (rstd && lane == 0) rstd[n] = r;
#pragma unroll
    for (int i = 0; i < IT; i++) {
        const int64_t c = (int64_t)(i * 32 + lane) * V;
        if (c >= C) break;
        const vf<V> w = ld<V>(g + c);
        vf<V> o;
#pragma unroll
        for (int j = 0; j < V; j++) o.v[j] = a[i].v[j] * r * w.v[j];
        st<V>(y + n * C + c, o);
    }
}

/* Row n of the RMSNorm backward by one warp: dx += ∂/∂x given dy; dx16 (may be NULL) the accumulated dx rounded,
 * as the next products read it; with sums, the row's dy·x·rstd added into sums[0, C) (the gain's gradient) */
template <int V>
__device__ __forceinline__ void rms_bwd_row(float *dx, __nv_bfloat16 *dx16, float *sums, const float *dy,
                                            const float *x, const float *rstd, const float *g, int64_t n, int64_t C,
                                            int lane) {
    const float *xr = x + n * C, *dr = dy + n * C, r = rstd[n];
    float dot = 0;
#pragma unroll 4
    LANE_COLS(c, C, V) {
        const vf<V> a = ld<V>(xr + c), d = ld<V>(dr + c), w = ld<V>(g + c);
#pragma unroll
        for (int j = 0; j < V; j++) dot += d.v[j] * w.v[j] * a.v[j] * r;
    }
    const float mean = warp_sum(dot) / (float)C;
#pragma unroll 4
    LANE_COLS(c, C, V) {
        const vf<V> a = ld<V>(xr + c), d = ld<V>(dr + c), w = ld<V>(g + c);
        vf<V> o = ld<V>(dx + n * C + c);
#pragma unroll
        for (int j = 0; j < V; j++) {
            o.v[j] = o.v[j] + r * (d.v[j] * w.v[j] - a.v[j] * r * mean);
            if (sums) sums[c + j] += d.v[j] * a.v[j] * r;
        }
        st<V>(dx + n * C + c, o);
        if (dx16) st<V>(dx16 + n * C + c, o);
    }
}

template <int V>
__global__ void k_rms_bwd_x(float *dx, __nv_bfloat16 *dx16, const float *dy, const float *x, const float *rstd,
                            const float *g, int64_t N, int64_t C) {
    ROW_OF_WARP(n, N);
    rms_bwd_row<V>(dx, dx16, nullptr, dy, x, rstd, g, n, C, lane);
}

/* Row n of the output norm and gate's backward by one warp: du, dy ← ∂/∂ô = dy ⊙ σ(u) (kept for the gain's
 * sums), and do through the norm (written; each lane reads back only the dy it wrote); with sums, the row's
 * ∂/∂ô·o·rstd added into sums[0, C) (the gain's gradient) */
template <int V, typename TO, typename TD>
__device__ __forceinline__ void onorm_gate_bwd_row(TD *dox, TD *du, int64_t sdu, float *dy, float *sums,
                                                   const TO *o, const float *rstd, const float *g, const float *u,
                                                   int64_t su, int64_t n, int64_t C, int lane) {
    const float r = rstd[n];
    float dot = 0;
#pragma unroll 4
    LANE_COLS(c, C, V) {
        const int64_t i = n * C + c;
        const vf<V> x = ld<V>(o + i), d = ld<V>(dy + i), w = ld<V>(g + c), uu = ld<V>(u + n * su + c);
        vf<V> dun, dh;
#pragma unroll
        for (int j = 0; j < V; j++) {
            const float sg = sigmoid(uu.v[j]);
            dh.v[j] = d.v[j] * sg;
            dun.v[j] = d.v[j] * (x.v[j] * r * w.v[j]) * sg * (1 - sg);
            dot += dh.v[j] * w.v[j] * x.v[j] * r;
            if (sums) sums[c + j] += dh.v[j] * x.v[j] * r;
        }
        st<V>(du + n * sdu + c, dun);
        st<V>(dy + i, dh);
    }
    const float mean = warp_sum(dot) / (float)C;
#pragma unroll 4
    LANE_COLS(c, C, V) {
        const int64_t i = n * C + c;
        const vf<V> x = ld<V>(o + i), h = ld<V>(dy + i), w = ld<V>(g + c);
        vf<V> out;
#pragma unroll
        for (int j = 0; j < V; j++) out.v[j] = r * (h.v[j] * w.v[j] - x.v[j] * r * mean);
        st<V>(dox + i, out);
    }
}

template <int V, typename TO, typename TD>
__global__ void k_onorm_gate_bwd(TD *dox, TD *du, int64_t sdu, float *dy, const TO *o, const float *rstd,
                                 const float *g, const float *u, int64_t su, int64_t N, int64_t C) {
    ROW_OF_WARP(n, N);
    onorm_gate_bwd_row<V>(dox, du, sdu, dy, nullptr, o, rstd, g, u, su, n, C, lane);
}

/* A norm's backward (k_rms_bwd_x, k_onorm_gate_bwd) and its gain's partial sums in one pass, for rows short
 * enough (FUSED_RMS_MAX_C) that a block's warps each keep a row of sums in shared memory: a block takes `rows`
 * consecutive rows, a warp one at a time, each warp adding its rows' terms into its own row (no two warps touch
 * one word: no atomics, the same bits every run), and the block adds its warps' rows in order into
 * work[block]. The rows are read from memory once, not again for the sums; longer rows would leave too little
 * shared memory for blocks to overlap.
 * FUSED_RMS_ROWS rows a block at least: fewer blocks than a few an SM leave the pass waiting on memory. */
constexpr int FUSED_RMS_MAX_C = 2048, FUSED_RMS_ROWS = 32;

/* A block's rows [blockIdx·rows, +rows), each warp's by `row(n, its row of sums, lane)`, then the warps' sums
 * added in order into work[block] */
template <typename Row>
__device__ __forceinline__ void rows_with_sums(float *work, int64_t N, int64_t C, int64_t rows, Row row) {
    extern __shared__ float acc[]; /* [THREADS / 32][C] */
    const int w = threadIdx.x / 32, lane = threadIdx.x & 31;
    float *mine = acc + (int64_t)w * C;
    for (int64_t c = lane; c < C; c += 32) mine[c] = 0;
    __syncwarp(); /* a lane's columns in the rows below are not the ones it zeroed */
    const int64_t n0 = blockIdx.x * rows, n1 = n0 + rows < N ? n0 + rows : N;
    for (int64_t n = n0 + w; n < n1; n += THREADS / 32) row(n, mine, lane);
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += THREADS) {
        float s = 0;
#pragma unroll
        for (int k = 0; k < THREADS / 32; k++) s += acc[(int64_t)k * C + c];
        work[blockIdx.x * C + c] = s;
    }
}

template <int V>
__global__ void __launch_bounds__(THREADS) k_rms_bwd_fused(float *dx, __nv_bfloat16 *dx16, float *work,
                                                           const float *dy, const float *x, const float *rstd,
                                                           const float *g, int64_t N, int64_t C, int64_t rows) {
    rows_with_sums(work, N, C, rows, [&](int64_t n, float *mine, int lane) {
        rms_bwd_row<V>(dx, dx16, mine, dy, x, rstd, g, n, C, lane);
    });
}

template <int V, typename TO, typename TD>
__global__ void __launch_bounds__(THREADS)
    k_onorm_gate_bwd_fused(TD *dox, TD *du, int64_t sdu, float *dy, float *work, const TO *o, const float *rstd,
                           const float *g, const float *u, int64_t su, int64_t N, int64_t C, int64_t rows) {
    rows_with_sums(work, N, C, rows, [&](int64_t n, float *mine, int lane) {
        onorm_gate_bwd_row<V>(dox, du, sdu, dy, mine, o, rstd, g, u, su, n, C, lane);
    });
}

/* The fused passes' blocks: at least FUSED_RMS_ROWS rows each, and no more blocks than work has partials for;
 * a block's rows of sums in shared memory, above the default a launch may ask for where rows are long (set
 * each time: the limit is the device's) */
struct fused_plan {
    int64_t rows, blocks;
    size_t smem;
};
template <typename K>
fused_plan fused_rows(K kernel, int64_t N, int64_t C) {
    const int64_t want = (N + MAX_PARTS - 1) / MAX_PARTS, rows = want > FUSED_RMS_ROWS ? want : FUSED_RMS_ROWS;
    const size_t smem = (size_t)(THREADS / 32) * (size_t)C * sizeof(float);
    if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    return {rows, (N + rows - 1) / rows, smem};
}

/* work[p, c] = Σ over part p's rows of dy·x·rstd */
template <typename TX>
__global__ void k_rms_bwd_g(float *work, const float *dy, const TX *x, const float *rstd, int64_t N, int64_t C,
                            int64_t rows) {
    const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, p = blockIdx.y;
    if (c >= C) return;
    const int64_t n1 = (p + 1) * rows < N ? (p + 1) * rows : N;
    float s = 0;
    for (int64_t n = p * rows; n < n1; n++) s += dy[n * C + c] * get(x + n * C + c) * rstd[n];
    work[p * C + c] = s;
}

/* dg += Σ_n dy·x·rstd over every row (dg = with add 0), in two passes of fixed shape */
template <typename TX>
void rms_dg(float *dg, int add, const float *dy, const TX *x, const float *rstd, int64_t N, int64_t C, float *work,
            cudaStream_t st) {
    const int64_t parts = parts_for(N), per = (N + parts - 1) / parts;
    const dim3 grid((unsigned)((C + THREADS - 1) / THREADS), (unsigned)parts);
    k_rms_bwd_g<<<grid, THREADS, 0, st>>>(work, dy, x, rstd, N, C, per);
    sum_parts(dg, work, parts, C, add, st);
}

template <typename TX, typename TY>
void norm_fwd(TY *y, float *rstd, const TX *x, const float *g, const float *u, int64_t su, int64_t N, int64_t C,
              cudaStream_t st) {
    if (!N) return;
    /* the gated norm reads u after the row's sum: the register-held rows' fewer warps leave those loads exposed,
     * so it keeps the kernel that reads the row twice */
    const bool vec = C % 128 == 0 && su % 4 == 0 && aligned_for<4>({AL(y), AL(x), AL(g), AL(u)});
    if (vec && u)
        k_norm_fwd<4><<<row_blocks(N), THREADS, 0, st>>>(y, rstd, x, g, u, su, N, C);
    else if (vec && C <= 512)
        k_norm_fwd_row<4, 4><<<row_blocks(N), THREADS, 0, st>>>(y, rstd, x, g, N, C);
    else if (vec && C <= 1024)
        k_norm_fwd_row<4, 8><<<row_blocks(N), THREADS, 0, st>>>(y, rstd, x, g, N, C);
    else if (vec && C <= 2048)
        k_norm_fwd_row<4, 16><<<row_blocks(N), THREADS, 0, st>>>(y, rstd, x, g, N, C);
    else if (vec)
        k_norm_fwd<4><<<row_blocks(N), THREADS, 0, st>>>(y, rstd, x, g, u, su, N, C);
    else
        k_norm_fwd<1><<<row_blocks(N), THREADS, 0, st>>>(y, rstd, x, g, u, su, N, C);
}

template <typename TO, typename TD>
void onorm_gate_bwd(TD *dox, TD *du, int64_t sdu, float *dg, int dg_add, float *dy, const TO *o, const float *rstd,
                    const float *g, const float *u, int64_t su, int64_t N, int64_t C, float *work, cudaStream_t st) {
    if (!N) return;
    const bool vec = C % 128 == 0 && su % 4 == 0 && sdu % 4 == 0 &&
                     aligned_for<4>({AL(dox), AL(du), AL(dy), AL(o), AL(g), AL(u)});
    if (vec && C <= FUSED_RMS_MAX_C) {
        const fused_plan f = fused_rows(k_onorm_gate_bwd_fused<4, TO, TD>, N, C);
        k_onorm_gate_bwd_fused<4><<<(unsigned)f.blocks, THREADS, f.smem, st>>>(dox, du, sdu, dy, work, o, rstd, g, u,
                                                                               su, N, C, f.rows);
        sum_parts(dg, work, f.blocks, C, dg_add, st);
        return;
    }
    if (vec)
        k_onorm_gate_bwd<4><<<row_blocks(N), THREADS, 0, st>>>(dox, du, sdu, dy, o, rstd, g, u, su, N, C);
    else
        k_onorm_gate_bwd<1><<<row_blocks(N), THREADS, 0, st>>>(dox, du, sdu, dy, o, rstd, g, u, su, N, C);
    rms_dg(dg, dg_add, dy, o, rstd, N, C, work, st);
}

/* ---- element-wise -------------------------------------------------------------------------------- */

/* The GLU, V columns a thread (2 where F is even and the rows aligned for it) */
#define THREAD_COLS(f, F, V) for (int64_t f = (V) * (int64_t)threadIdx.x; f < (F); f += (V) * (int64_t)blockDim.x)

template <int V, typename T>
__global__ void k_glu_fwd(T *a, const T *h, int64_t N, int64_t F) {
    ROWS(n, N) THREAD_COLS(f, F, V) {
        const vf<V> x = ld<V>(h + n * 2 * F + f), y = ld<V>(h + n * 2 * F + F + f);
        vf<V> o;
#pragma unroll
        for (int j = 0; j < V; j++) o.v[j] = x.v[j] * y.v[j];
        st<V>(a + n * F + f, o);
    }
}

template <int V, typename T>
__global__ void k_glu_bwd(T *dh, const T *da, const T *h, int64_t N, int64_t F) {
    ROWS(n, N) THREAD_COLS(f, F, V) {
        const vf<V> d = ld<V>(da + n * F + f), x = ld<V>(h + n * 2 * F + f), y = ld<V>(h + n * 2 * F + F + f);
        vf<V> d1, d2;
#pragma unroll
        for (int j = 0; j < V; j++) d1.v[j] = d.v[j] * y.v[j], d2.v[j] = d.v[j] * x.v[j];
        st<V>(dh + n * 2 * F + f, d1);
        st<V>(dh + n * 2 * F + F + f, d2);
    }
}

template <typename T>
void glu_fwd(T *a, const T *h, int64_t N, int64_t F, cudaStream_t st) {
    if (F % 2 == 0 && aligned_for<2>({AL(a), AL(h)})) k_glu_fwd<2><<<rows_grid(N), THREADS, 0, st>>>(a, h, N, F);
    else k_glu_fwd<1><<<rows_grid(N), THREADS, 0, st>>>(a, h, N, F);
}

template <typename T>
void glu_bwd(T *dh, const T *da, const T *h, int64_t N, int64_t F, cudaStream_t st) {
    if (F % 2 == 0 && aligned_for<2>({AL(dh), AL(da), AL(h)}))
        k_glu_bwd<2><<<rows_grid(N), THREADS, 0, st>>>(dh, da, h, N, F);
    else
        k_glu_bwd<1><<<rows_grid(N), THREADS, 0, st>>>(dh, da, h, N, F);
}

/* ---- the short convolution and the SiLU features in one pass -------------------------------------- */

/* A thread walks V adjacent columns down a tile of rows, the last KM inputs in registers (KM ≥ K taps, the
 * taps beyond K zero), so each input is read once; the convolved projections are never stored. V = 2 where
 * the rows are aligned for it: each load moves twice the bytes for the same count of instructions and
 * threads in flight (the passes wait on memory). */
constexpr int FEAT_ROWS = 64;    /* rows a tile has at least */
constexpr int FEAT_PARTS = 1024; /* tiles, and so partial sums of the taps' gradient, about this many at most */
/* Elements (rows × V) whose loads a thread issues together before it computes and stores them: its stores
 * could alias the next rows' inputs as far as the compiler knows, so without the batch each row's load would
 * wait for the last. The backward holds more per row; its registers are capped so that MINB blocks share an
 * SM (taps up to 4): more warps in flight pay more than a longer batch (bench/RESULTS.md). */
constexpr int FEAT_FWD_BATCH = 8, FEAT_BWD_BATCH = 4, FEAT_BWD_MINB = 4;

/* V columns from c of projection row t of sequence b; t < 0 reads the halo (the K1 rows before the piece);
 * before the halo, or without one, zeros */
template <int V>
__device__ __forceinline__ vf<V> proj(const float *p, int64_t sp, const float *halo, int64_t b, int64_t t, int64_t T,
                                      int K1, int W, int c) {
    if (t >= 0) return ld<V>(p + (b * T + t) * sp + c);
    return halo && t >= -K1 ? ld<V>(halo + (b * K1 + K1 + t) * W + c) : vzero<V>();
}

template <int KM, int V>
__device__ __forceinline__ void load_taps(float (&w)[KM][V], const float *wc, int K, int W, int c) {
#pragma unroll
    for (int j = 0; j < KM; j++)
#pragma unroll
        for (int i = 0; i < V; i++) w[j][i] = !wc ? (j == 0 ? 1.0f : 0.0f) : j < K ? wc[j * W + c + i] : 0.0f;
}

template <int KM, int V>
__device__ __forceinline__ void shift_in(float (&x)[KM][V], const float (&v)[V]) {
#pragma unroll
    for (int j = KM - 1; j > 0; j--)
#pragma unroll
        for (int i = 0; i < V; i++) x[j][i] = x[j - 1][i];
#pragma unroll
    for (int i = 0; i < V; i++) x[0][i] = v[i];
}

/* grid: x = B · tiles (tile i of sequence b covers rows s0 + i·rows ..), y = the 3C columns in blocks of
 * THREADS · V */
template <int KM, int V, typename T, int BATCH = FEAT_FWD_BATCH / V>
__global__ void __launch_bounds__(THREADS) k_feat_fwd(T *q, T *k, T *v, const float *p, int64_t sp,
                                                      const float *halo, const float *wc, int64_t T_, int C, int K,
                                                      int64_t rows, int64_t tiles) {
    const int W = 3 * C, c = (blockIdx.y * THREADS + threadIdx.x) * V;
    if (c >= W) return;
    const int64_t b = blockIdx.x / tiles, t0 = blockIdx.x % tiles * rows, t1 = t0 + rows < T_ ? t0 + rows : T_;
    const int part = c / C, K1 = K ? K - 1 : 0; /* C % V == 0: a thread's columns are of one part */
    T *dst = (part == 0 ? q : part == 1 ? k : v) + (c - part * C);
    float w[KM][V], x[KM][V];
    load_taps(w, wc, K, W, c);
#pragma unroll
    for (int j = 0; j + 1 < KM; j++) {
        const vf<V> h = proj<V>(p, sp, halo, b, t0 - 1 - j, T_, K1, W, c);
#pragma unroll
        for (int i = 0; i < V; i++) x[j][i] = h.v[i];
    }
    for (int64_t tb = t0; tb < t1; tb += BATCH) {
        vf<V> pv[BATCH];
#pragma unroll
        for (int u = 0; u < BATCH; u++) pv[u] = tb + u < t1 ? ld<V>(p + (b * T_ + tb + u) * sp + c) : vzero<V>();
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int64_t t = tb + u;
            if (t >= t1) break;
            shift_in(x, pv[u].v);
            vf<V> o;
#pragma unroll
            for (int i = 0; i < V; i++) {
                float s = 0;
#pragma unroll
                for (int j = 0; j < KM; j++) s += w[j][i] * x[j][i];
                o.v[i] = part < 2 ? s * sigmoid(s) : s;
            }
            st<V>(dst + (b * T_ + t) * C, o);
        }
    }
}

/* The gradient of row t of the convolved projections, dc[t], from the features' (t inside the piece, and
 * < the tile's end + K1); ∂/∂p[s] = Σ_j w[j]·dc[s + j] is complete KM − 1 rows later, s < 0 going to the
 * halo's gradient; the taps' gradient Σ_t dc[t]·p[t − j] is summed over the tile's own rows into work. */
template <int KM, int V, typename T, int BATCH = FEAT_BWD_BATCH / V, int MINB = FEAT_BWD_MINB>
__global__ void __launch_bounds__(THREADS, KM <= 4 ? MINB : 1)
    k_feat_bwd(T *dp, int64_t sdp, float *work, float *dhalo, const float *dnext, const T *dq, const T *dk, const T *dv,
               const float *p, int64_t sp, const float *halo, const float *wc, int64_t T_, int C, int K, int64_t s0,
               int64_t rows, int64_t tiles) {
    const int W = 3 * C, c = (blockIdx.y * THREADS + threadIdx.x) * V;
    if (c >= W) return;
    const int64_t b = blockIdx.x / tiles, sa = s0 + blockIdx.x % tiles * rows;
    const int64_t sb = sa + rows < T_ ? sa + rows : T_;
    const int part = c / C, K1 = K ? K - 1 : 0;
    const int64_t tend = sb + K1 < T_ ? sb + K1 : T_;
    const T *g = (part == 0 ? dq : part == 1 ? dk : dv) + (c - part * C);
    float w[KM][V], x[KM][V], d[KM][V], acc[KM][V];
    load_taps(w, wc, K, W, c);
#pragma unroll
    for (int j = 0; j < KM; j++)
#pragma unroll
        for (int i = 0; i < V; i++) d[j][i] = 0, acc[j][i] = 0;
#pragma unroll
    for (int j = 0; j + 1 < KM; j++) {
        const vf<V> h = proj<V>(p, sp, halo, b, sa - 1 - j, T_, K1, W, c);
#pragma unroll
        for (int i = 0; i < V; i++) x[j][i] = h.v[i];
    }
    const int64_t tlast = sb + KM - 1;
    for (int64_t tb = sa; tb < tlast; tb += BATCH) {
        vf<V> pv[BATCH], gv[BATCH];
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int64_t t = tb + u;
            pv[u] = t < tend ? proj<V>(p, sp, halo, b, t, T_, K1, W, c) : vzero<V>();
            gv[u] = t >= 0 && t < tend ? ld<V>(g + (b * T_ + t) * C) : vzero<V>();
        }
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int64_t t = tb + u;
            if (t >= tlast) break;
            shift_in(x, pv[u].v);
            float dc[V];
#pragma unroll
            for (int i = 0; i < V; i++) dc[i] = 0;
            if (t >= 0 && t < tend) {
#pragma unroll
                for (int i = 0; i < V; i++) {
                    float s = 0;
#pragma unroll
                    for (int j = 0; j < KM; j++) s += w[j][i] * x[j][i];
                    if (part < 2) {
                        const float sg = sigmoid(s);
                        dc[i] = gv[u].v[i] * sg * (1 + s * (1 - sg));
                    } else {
                        dc[i] = gv[u].v[i];
                    }
                }
                if (t < sb) {
#pragma unroll
                    for (int j = 0; j < KM; j++)
#pragma unroll
                        for (int i = 0; i < V; i++) acc[j][i] += dc[i] * x[j][i];
                }
            }
            shift_in(d, dc);
            const int64_t s = t - (KM - 1);
            if (s < sa) continue;
            vf<V> a;
#pragma unroll
            for (int i = 0; i < V; i++) {
                a.v[i] = 0;
#pragma unroll
                for (int j = 0; j < KM; j++) a.v[i] += w[j][i] * d[KM - 1 - j][i];
            }
            if (s >= 0) {
                if (dnext && s >= T_ - K1) {
                    const vf<V> n = ld<V>(dnext + (b * K1 + s - (T_ - K1)) * W + c);
#pragma unroll
                    for (int i = 0; i < V; i++) a.v[i] += n.v[i];
                }
                st<V>(dp + (b * T_ + s) * sdp + c, a);
            } else {
                st<V>(dhalo + (b * K1 + K1 + s) * W + c, a);
            }
        }
    }
    if (work)
#pragma unroll
        for (int j = 0; j < KM; j++)
            if (j < K) {
                vf<V> o;
#pragma unroll
                for (int i = 0; i < V; i++) o.v[i] = acc[j][i];
                st<V>(work + (int64_t)blockIdx.x * K * W + j * W + c, o);
            }
}

struct feat_tiling {
    int64_t s0, rows, tiles;
};

/* tiles of the rows s0 .. T − 1 of each of B sequences: at least FEAT_ROWS rows each, about FEAT_PARTS in
 * all at most (B · tiles ≤ FEAT_PARTS + B: lasp_feat_cuda_work_floats) */
feat_tiling feat_tiles(int64_t B, int64_t T, int64_t s0) {
    const int64_t S = T - s0, want = (B * S + FEAT_PARTS - 1) / FEAT_PARTS;
    const int64_t rows = want > FEAT_ROWS ? want : FEAT_ROWS;
    return {s0, rows, (S + rows - 1) / rows};
}

/* the taps a thread keeps: K = 0 (no convolution) is one tap of 1 */
int feat_km(int64_t K) { return K == 0 ? 1 : K <= 4 ? 4 : K <= 8 ? 8 : 16; }

/* the columns a thread takes: 2 where every row a pass touches is aligned for two of its elements */
int feat_v(int64_t C, int64_t sp, int64_t sdp, std::initializer_list<std::pair<const void *, size_t>> ps) {
    return C % 2 == 0 && sp % 2 == 0 && sdp % 2 == 0 && aligned_for<2>(ps) ? 2 : 1;
}

dim3 feat_grid(int64_t B, const feat_tiling &f, int64_t C, int V) {
    return dim3((unsigned)(B * f.tiles), (unsigned)((3 * C / V + THREADS - 1) / THREADS));
}

template <typename T>
void feat_fwd(T *q, T *k, T *v, const float *p, int64_t sp, const float *halo, const float *wc, int64_t B, int64_t T_,
              int64_t C, int64_t K, cudaStream_t st) {
    if (B * T_ == 0) return;
    if (!K) halo = wc = nullptr;
    const feat_tiling f = feat_tiles(B, T_, 0);
    const int V = feat_v(C, sp, 0, {AL(q), AL(k), AL(v), AL(p), AL(halo), AL(wc)});
    const dim3 grid = feat_grid(B, f, C, V);
#define FEAT_FWD(KM, V) \
    k_feat_fwd<KM, V, T><<<grid, THREADS, 0, st>>>(q, k, v, p, sp, halo, wc, T_, (int)C, (int)K, f.rows, f.tiles)
#define FEAT_FWD_V(KM) \
    if (V == 2) FEAT_FWD(KM, 2); else FEAT_FWD(KM, 1)
    switch (feat_km(K)) {
    case 1: FEAT_FWD_V(1); break;
    case 4: FEAT_FWD_V(4); break;
    case 8: FEAT_FWD_V(8); break;
    default: FEAT_FWD_V(16); break;
    }
#undef FEAT_FWD_V
#undef FEAT_FWD
}

template <typename T>
void feat_bwd(T *dp, int64_t sdp, float *dwc, int dwc_add, float *dhalo, const float *dnext, const T *dq, const T *dk,
              const T *dv, const float *p, int64_t sp, const float *halo, const float *wc, int64_t B, int64_t T_,
              int64_t C, int64_t K, float *work, cudaStream_t st) {
    if (B * T_ == 0) return;
    if (!K) dwc = dhalo = nullptr, dnext = halo = wc = nullptr;
    const feat_tiling f = feat_tiles(B, T_, dhalo ? -(K - 1) : 0);
    float *wk = dwc ? work : nullptr;
    const int V = feat_v(C, sp, sdp, {AL(dp), AL(wk), AL(dhalo), AL(dnext), AL(dq), AL(dk), AL(dv), AL(p), AL(halo),
                                      AL(wc)});
    const dim3 grid = feat_grid(B, f, C, V);
#define FEAT_BWD(KM, V)                                                                                            \
    k_feat_bwd<KM, V, T><<<grid, THREADS, 0, st>>>(dp, sdp, wk, dhalo, dnext, dq, dk, dv, p, sp, halo, wc, T_,      \
                                                   (int)C, (int)K, f.s0, f.rows, f.tiles)
#define FEAT_BWD_V(KM) \
    if (V == 2) FEAT_BWD(KM, 2); else FEAT_BWD(KM, 1)
    switch (feat_km(K)) {
    case 1: FEAT_BWD_V(1); break;
    case 4: FEAT_BWD_V(4); break;
    case 8: FEAT_BWD_V(8); break;
    default: FEAT_BWD_V(16); break;
    }
#undef FEAT_BWD_V
#undef FEAT_BWD
    if (dwc) sum_parts(dwc, work, B * f.tiles, K * 3 * C, dwc_add, st);
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

/* A thread's running max m (its first index in arg) and s = Σ exp(z − m) over the logits it has seen: a larger
 * logit rescales the sum, so the row is read once for both (online softmax) */
__device__ __forceinline__ void online_add(float &m, float &s, int64_t &arg, int64_t V, float z, int64_t v) {
    if (z > m || arg == V) {
        s = s * expf(m - z) + 1.0f;
        m = z, arg = v;
    } else {
        s += expf(z - m);
    }
}

/* A block per row: the loss, whether the argmax is the target, and with scale the gradient into dz (which may be
 * z itself), in two reads of the row; VEC logits a thread at a time where the rows are aligned for it */
template <int VEC, typename T>
__global__ void __launch_bounds__(THREADS) k_xent(const float *z, T *dz, const int32_t *targets, int64_t V,
                                                  float scale, double *loss, int32_t *hit) {
    const int64_t n = blockIdx.x;
    const float *zr = z + n * V;
    T *dr = dz + n * V;
    float m = -INFINITY, s = 0;
    int64_t arg = V;
    for (int64_t v = VEC * (int64_t)threadIdx.x; v < V; v += VEC * THREADS) {
        const vf<VEC> x = ld<VEC>(zr + v);
#pragma unroll
        for (int j = 0; j < VEC; j++) online_add(m, s, arg, V, x.v[j], v + j);
    }
    float mx = m;
    block_argmax(mx, arg);
    const float sum = block_sum(s * expf(m - mx)); /* each thread's sum rescaled to the row's max */
    const int32_t t = targets[n];
    if (threadIdx.x == 0) {
        loss[n] = log((double)sum) - (double)(zr[t] - mx);
        hit[n] = arg == t;
    }
    if (scale > 0) {
        __syncthreads(); /* zr[t] read above before it is overwritten */
        const float inv = 1.0f / sum;
        for (int64_t v = VEC * (int64_t)threadIdx.x; v < V; v += VEC * THREADS) {
            vf<VEC> x = ld<VEC>(zr + v);
#pragma unroll
            for (int j = 0; j < VEC; j++) x.v[j] = expf(x.v[j] - mx) * inv * scale - (v + j == t ? scale : 0);
            st<VEC>(dr + v, x);
        }
    }
}

template <typename T>
void xent(const float *z, T *dz, const int32_t *targets, int64_t N, int64_t V, float scale, double *loss,
          int32_t *hit, cudaStream_t st) {
    if (!N) return;
    if (V % 4 == 0 && aligned_for<4>({AL(z), AL(dz)}))
        k_xent<4><<<(unsigned)N, THREADS, 0, st>>>(z, dz, targets, V, scale, loss, hit);
    else
        k_xent<1><<<(unsigned)N, THREADS, 0, st>>>(z, dz, targets, V, scale, loss, hit);
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

/* ---- a piece's last rows, from the next piece's halo gradient ------------------------------------ */

/* dp[b, T − K1 + r, c] += src[b, r, c] for c < W (rows of stride sdp): in f32 the sum the features' backward
 * makes with dnext, in bf16 that sum of its rounded value */
template <typename T>
__global__ void k_add_last_rows(T *dp, int64_t sdp, const float *src, int64_t B, int64_t T_, int K1, int W) {
    GRID_STRIDE(i, B * K1 * W) {
        const int64_t c = i % W, r = i / W % K1, b = i / W / K1;
        T *p = dp + (b * T_ + T_ - K1 + r) * sdp + c;
        put(p, get(p) + src[i]);
    }
}

/* ---- bf16 copies ---------------------------------------------------------------------------------- */

__global__ void k_to_bf16(__nv_bfloat16 *y, const float *x, int64_t n) {
    GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

/* ---- embedding ----------------------------------------------------------------------------------- */

__global__ void k_embed_fwd(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C) {
    ROWS(n, N) COLS(c, C) x[n * C + c] = wte[(int64_t)tokens[n] * C + c];
}

/* block (u, j): columns j·blockDim .. of token uniq[u]'s row, its positions summed in order; a batch of rows
 * loaded before it is added, so that a frequent token's long run does not wait on each load in turn */
constexpr int EMBED_BATCH = 8;
__global__ void k_embed_bwd(float *dwte, const float *dx, const int32_t *order, const int32_t *starts,
                            const int32_t *uniq, int64_t C) {
    const int64_t u = blockIdx.x, c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *g = dwte + (int64_t)uniq[u] * C;
    float s = g[c];
    const int32_t p1 = starts[u + 1];
    int32_t p = starts[u];
    for (; p + EMBED_BATCH <= p1; p += EMBED_BATCH) {
        float r[EMBED_BATCH];
#pragma unroll
        for (int j = 0; j < EMBED_BATCH; j++) r[j] = dx[(int64_t)order[p + j] * C + c];
#pragma unroll
        for (int j = 0; j < EMBED_BATCH; j++) s += r[j];
    }
    for (; p < p1; p++) s += dx[(int64_t)order[p] * C + c];
    g[c] = s;
}

}  // namespace

/* ---- the C interface ------------------------------------------------------------------------------ */

extern "C" {

int64_t lasp_layers_cuda_work_floats(int64_t N, int64_t width) { return parts_for(N) * width; }

void lasp_conv_step_cuda(float *cq, float *win, const float *p, const float *wc, int64_t W, int64_t K,
                         cudaStream_t st) {
    k_conv_step<<<grid_for(W), THREADS, 0, st>>>(cq, win, p, wc, W, K);
}

void lasp_recur_step_cuda(float *state, float *o, const float *p, const float *slopes, int64_t H, int64_t D,
                          cudaStream_t st) {
    k_recur_step<<<(unsigned)H, (unsigned)D, 2 * D * sizeof(float), st>>>(state, o, p, slopes, H * D, D);
}

void lasp_add_last_rows_cuda(float *dp, int64_t sdp, const float *src, int64_t B, int64_t T, int64_t K1, int64_t W,
                             cudaStream_t st) {
    if (B * K1 * W > 0) k_add_last_rows<<<grid_for(B * K1 * W), THREADS, 0, st>>>(dp, sdp, src, B, T, (int)K1, (int)W);
}

void lasp_add_last_rows_bf16_cuda(void *dp, int64_t sdp, const float *src, int64_t B, int64_t T, int64_t K1,
                                  int64_t W, cudaStream_t st) {
    if (B * K1 * W > 0)
        k_add_last_rows<<<grid_for(B * K1 * W), THREADS, 0, st>>>((__nv_bfloat16 *)dp, sdp, src, B, T, (int)K1,
                                                                  (int)W);
}

void lasp_to_bf16_cuda(void *y, const float *x, int64_t n, cudaStream_t st) {
    k_to_bf16<<<grid_for(n), THREADS, 0, st>>>((__nv_bfloat16 *)y, x, n);
}

void lasp_rms_fwd_cuda(float *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C,
                       cudaStream_t st) {
    norm_fwd(out, rstd, x, g, (const float *)NULL, 0, N, C, st);
}

void lasp_rms_fwd_bf16_cuda(void *out, float *rstd, const float *x, const float *g, int64_t N, int64_t C,
                            cudaStream_t st) {
    norm_fwd((__nv_bfloat16 *)out, rstd, x, g, (const float *)NULL, 0, N, C, st);
}

void lasp_rms_bwd_cuda(float *dx, float *dg, int dg_add, const float *dy, const float *x, const float *rstd,
                       const float *g, int64_t N, int64_t C, float *work, cudaStream_t st) {
    lasp_rms_bwd_bf16_cuda(dx, NULL, dg, dg_add, dy, x, rstd, g, N, C, work, st);
}

void lasp_rms_bwd_bf16_cuda(float *dx, void *dx16, float *dg, int dg_add, const float *dy, const float *x,
                            const float *rstd, const float *g, int64_t N, int64_t C, float *work, cudaStream_t st) {
    if (!N) return;
    __nv_bfloat16 *d16 = (__nv_bfloat16 *)dx16;
    const bool vec = C % 128 == 0 && aligned_for<4>({AL(dx), AL(d16), AL(dy), AL(x), AL(g)});
    if (vec && C <= FUSED_RMS_MAX_C) {
        const fused_plan f = fused_rows(k_rms_bwd_fused<4>, N, C);
        k_rms_bwd_fused<4><<<(unsigned)f.blocks, THREADS, f.smem, st>>>(dx, d16, work, dy, x, rstd, g, N, C, f.rows);
        sum_parts(dg, work, f.blocks, C, dg_add, st);
        return;
    }
    if (vec)
        k_rms_bwd_x<4><<<row_blocks(N), THREADS, 0, st>>>(dx, d16, dy, x, rstd, g, N, C);
    else
        k_rms_bwd_x<1><<<row_blocks(N), THREADS, 0, st>>>(dx, d16, dy, x, rstd, g, N, C);
    rms_dg(dg, dg_add, dy, x, rstd, N, C, work, st);
}

void lasp_onorm_gate_fwd_cuda(float *y, float *rstd, const float *o, const float *g, const float *u, int64_t su,
                              int64_t N, int64_t C, cudaStream_t st) {
    norm_fwd(y, rstd, o, g, u, su, N, C, st);
}

void lasp_onorm_gate_fwd_bf16_cuda(void *y, float *rstd, const void *o, const float *g, const float *u, int64_t su,
                                   int64_t N, int64_t C, cudaStream_t st) {
    norm_fwd((__nv_bfloat16 *)y, rstd, (const __nv_bfloat16 *)o, g, u, su, N, C, st);
}

void lasp_onorm_gate_bwd_cuda(float *dox, float *du, int64_t sdu, float *dg, int dg_add, float *dy, const float *o,
                              const float *rstd, const float *g, const float *u, int64_t su, int64_t N, int64_t C,
                              float *work, cudaStream_t st) {
    onorm_gate_bwd(dox, du, sdu, dg, dg_add, dy, o, rstd, g, u, su, N, C, work, st);
}

void lasp_onorm_gate_bwd_bf16_cuda(void *dox, void *du, int64_t sdu, float *dg, int dg_add, float *dy, const void *o,
                                   const float *rstd, const float *g, const float *u, int64_t su, int64_t N, int64_t C,
                                   float *work, cudaStream_t st) {
    onorm_gate_bwd((__nv_bfloat16 *)dox, (__nv_bfloat16 *)du, sdu, dg, dg_add, dy, (const __nv_bfloat16 *)o, rstd, g, u,
                   su, N, C, work, st);
}

int64_t lasp_feat_cuda_work_floats(int64_t B, int64_t C, int64_t K) { return (FEAT_PARTS + B) * K * 3 * C; }

void lasp_feat_fwd_cuda(float *q, float *k, float *v, const float *p, int64_t sp, const float *halo, const float *wc,
                        int64_t B, int64_t T, int64_t C, int64_t K, cudaStream_t st) {
    feat_fwd(q, k, v, p, sp, halo, wc, B, T, C, K, st);
}

void lasp_feat_fwd_bf16_cuda(void *q, void *k, void *v, const float *p, int64_t sp, const float *halo,
                             const float *wc, int64_t B, int64_t T, int64_t C, int64_t K, cudaStream_t st) {
    feat_fwd((__nv_bfloat16 *)q, (__nv_bfloat16 *)k, (__nv_bfloat16 *)v, p, sp, halo, wc, B, T, C, K, st);
}

void lasp_feat_bwd_cuda(float *dp, int64_t sdp, float *dwc, int dwc_add, float *dhalo, const float *dnext,
                        const float *dq, const float *dk, const float *dv, const float *p, int64_t sp,
                        const float *halo, const float *wc, int64_t B, int64_t T, int64_t C, int64_t K, float *work,
                        cudaStream_t st) {
    feat_bwd(dp, sdp, dwc, dwc_add, dhalo, dnext, dq, dk, dv, p, sp, halo, wc, B, T, C, K, work, st);
}

void lasp_feat_bwd_bf16_cuda(void *dp, int64_t sdp, float *dwc, int dwc_add, float *dhalo, const float *dnext,
                             const void *dq, const void *dk, const void *dv, const float *p, int64_t sp,
                             const float *halo, const float *wc, int64_t B, int64_t T, int64_t C, int64_t K,
                             float *work, cudaStream_t st) {
    feat_bwd((__nv_bfloat16 *)dp, sdp, dwc, dwc_add, dhalo, dnext, (const __nv_bfloat16 *)dq,
             (const __nv_bfloat16 *)dk, (const __nv_bfloat16 *)dv, p, sp, halo, wc, B, T, C, K, work, st);
}

void lasp_glu_fwd_cuda(float *a, const float *h, int64_t N, int64_t F, cudaStream_t st) { glu_fwd(a, h, N, F, st); }

void lasp_glu_fwd_bf16_cuda(void *a, const void *h, int64_t N, int64_t F, cudaStream_t st) {
    glu_fwd((__nv_bfloat16 *)a, (const __nv_bfloat16 *)h, N, F, st);
}

void lasp_glu_bwd_cuda(float *dh, const float *da, const float *h, int64_t N, int64_t F, cudaStream_t st) {
    glu_bwd(dh, da, h, N, F, st);
}

void lasp_glu_bwd_bf16_cuda(void *dh, const void *da, const void *h, int64_t N, int64_t F, cudaStream_t st) {
    glu_bwd((__nv_bfloat16 *)dh, (const __nv_bfloat16 *)da, (const __nv_bfloat16 *)h, N, F, st);
}

void lasp_xent_cuda(float *z, const int32_t *targets, int64_t N, int64_t V, float scale, double *loss, int32_t *hit,
                    cudaStream_t st) {
    xent(z, z, targets, N, V, scale, loss, hit, st);
}

void lasp_xent_bf16_cuda(const float *z, void *dz, const int32_t *targets, int64_t N, int64_t V, float scale,
                         double *loss, int32_t *hit, cudaStream_t st) {
    xent(z, (__nv_bfloat16 *)dz, targets, N, V, scale, loss, hit, st);
}

void lasp_embed_fwd_cuda(float *x, const float *wte, const int32_t *tokens, int64_t N, int64_t C, cudaStream_t st) {
    k_embed_fwd<<<rows_grid(N), THREADS, 0, st>>>(x, wte, tokens, N, C);
}

void lasp_embed_bwd_cuda(float *dwte, const float *dx, const int32_t *order, const int32_t *starts,
                         const int32_t *uniq, int64_t n_uniq, int64_t C, cudaStream_t st) {
    const unsigned threads = C < THREADS ? 32 * (unsigned)((C + 31) / 32) : THREADS;
    if (n_uniq) k_embed_bwd<<<dim3((unsigned)n_uniq, (unsigned)((C + threads - 1) / threads)), threads, 0, st>>>(
        dwte, dx, order, starts, uniq, C);
}

}  // extern "C"
