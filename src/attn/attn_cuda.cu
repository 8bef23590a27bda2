/* attn_cuda.cu — the op on NVIDIA GPUs: validation, per-context GPU state, the segment scan
 * (kernel 2 of attn_cuda_kern.h) and the forward/backward as directed ops:
 *
 *     forward   o,  kv_out  = op(q,  k,  v;  kv_in,       forwards)
 *     backward  dq          = op(dO, v,  k;  kv_inᵀ,      forwards)
 *               dv, dkv_in  = op(k,  q,  dO; dkv_out,     backwards, σ = 1)
 *               dk          = op(v,  dO, q;  dkv_outᵀ,    backwards, σ = 1)
 *
 * Calls are asynchronous on the context's stream (created blocking, so work on the legacy default
 * stream orders with it); the _host variants synchronise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "attn/attn.h"
#include "attn/attn_cuda.h"
#include "attn/attn_cuda_impl.h"
#include "attn/attn_cuda_sp.h"
#include "core/dtype.h"

/* Per-context GPU state: the device it was made on, its stream and a growing workspace. */
typedef struct cuda_state {
    int device, n_sm, max_smem;
    int wgmma; /* the sm_90a kernels run here (attn_cuda_wgmma.h) */
    int sp_leave; /* SMs the halves' persistent kernels leave to the communicator's (lasp_attn_cuda_sp_leave_sms) */
    cudaStream_t stream;
    /* a second stream and two events for the backward's paired output passes (LASP_CUDA_PAIR), made on first use */
    cudaStream_t side;
    cudaEvent_t fork, join;
    /* the segment-state workspace of every op but those given a buffer (the forward's saved states) */
    float *ws;
    size_t ws_bytes;
} cuda_state;

extern "C" int lasp_cuda_is_device_ptr(const void *p) {
    if (!p) return 0;
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

extern "C" void lasp_attn_cuda_ctx_free(void *p) {
    cuda_state *cs = (cuda_state *)p;
    if (!cs) return;
    int cur = -1;
    cudaGetDevice(&cur);
    cudaSetDevice(cs->device);
    if (cs->ws) cudaFree(cs->ws);
    if (cs->side) cudaStreamDestroy(cs->side);
    if (cs->fork) cudaEventDestroy(cs->fork);
    if (cs->join) cudaEventDestroy(cs->join);
    if (cs->stream) cudaStreamDestroy(cs->stream);
    if (cur >= 0) cudaSetDevice(cur);
    free(cs);
}

static lasp_status cuda_fail(lasp_ctx *ctx, cudaError_t e, const char *what) {
    return lasp_fail(&ctx->err, LASP_ERR_CUDA, "%s: %s", what, cudaGetErrorString(e));
}

#define CU_TRY(ctx, call, what)                                       \
    do {                                                              \
        cudaError_t cu_e_ = (call);                                   \
        if (cu_e_ != cudaSuccess) return cuda_fail(ctx, cu_e_, what); \
    } while (0)

namespace lasp_cu {
/* 1 if the code the driver picked for this device holds the wgmma kernels (an sm_90a build on an sm_90) */
__global__ void k_has_wgmma(int *out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    *out = 1;
#else
    *out = 0;
#endif
}
}  // namespace lasp_cu

static cudaError_t probe_wgmma(cudaStream_t st, int *has) {
    int *d = NULL;
    cudaError_t e = cudaMalloc((void **)&d, sizeof *d);
    if (e != cudaSuccess) return e;
    lasp_cu::k_has_wgmma<<<1, 1, 0, st>>>(d);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(has, d, sizeof *has, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    cudaFree(d);
    return e;
}

/* The context's GPU state for the current device, made on first use. */
static lasp_status get_state(lasp_ctx *ctx, cuda_state **out) {
    int dev;
    CU_TRY(ctx, cudaGetDevice(&dev), "cudaGetDevice");
    cuda_state *cs = (cuda_state *)ctx->cuda;
    if (cs && cs->device != dev) {
        lasp_attn_cuda_ctx_free(cs);
        ctx->cuda = cs = NULL;
    }
    if (!cs) {
        cs = (cuda_state *)calloc(1, sizeof *cs);
        if (!cs) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no memory for the CUDA context state");
        cs->device = dev;
        cudaError_t e = cudaDeviceGetAttribute(&cs->n_sm, cudaDevAttrMultiProcessorCount, dev);
        if (e == cudaSuccess) e = cudaDeviceGetAttribute(&cs->max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (e == cudaSuccess) e = cudaStreamCreate(&cs->stream);
        if (e == cudaSuccess) e = probe_wgmma(cs->stream, &cs->wgmma);
        if (e != cudaSuccess) {
            free(cs);
            return cuda_fail(ctx, e, "setting up the CUDA context state");
        }
        ctx->cuda = cs;
    }
    *out = cs;
    return LASP_OK;
}

static lasp_status reserve_ws(lasp_ctx *ctx, cuda_state *cs, size_t bytes) {
    if (bytes <= cs->ws_bytes) return LASP_OK;
    if (cs->ws) {
        CU_TRY(ctx, cudaStreamSynchronize(cs->stream), "waiting for the stream before growing the workspace");
        cudaFree(cs->ws);
        cs->ws = NULL, cs->ws_bytes = 0;
    }
    cudaError_t e = cudaMalloc((void **)&cs->ws, bytes);
    if (e != cudaSuccess)
        return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "cudaMalloc of %zu bytes of state workspace: %s", bytes,
                         cudaGetErrorString(e));
    cs->ws_bytes = bytes;
    return LASP_OK;
}

/* ---- kernel 2: the scan over segment states (MATH.md §4, Horner form) ------------------------ */

namespace lasp_cu {

__global__ void __launch_bounds__(256, 8) k_scan(DirParams P) {
    const int64_t n = (int64_t)P.dx * P.ezt;
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int bh = P.bh0 + blockIdx.y;
    if (idx >= n) return;
    const float s = P.slopes[bh % P.H];
    float H = 0.f;
    if (P.s_in) {
        const int64_t r = idx / P.ezt, c = idx % P.ezt;
        H = P.s_in[(size_t)bh * n + (P.s_in_trans ? c * P.dx + r : idx)];
    }
    const float lam_sigma = expf(-s * (float)P.sigma), gam = expf(-s * (float)P.seg);
    float *w = P.ws + (size_t)bh * P.ns * n + idx;
    /* 16 independent loads in flight before the serial Horner steps, in 32 registers, so that a whole
     * grid of 8 blocks an SM is resident at once: latency, not bandwidth, bounds this kernel. With 32
     * loads unrolled ptxas took 142 registers (one block an SM, ~8 waves): 32.6 µs at B1 H16 T32768 D128
     * on an H200 (ncu), 24% of DRAM bandwidth for 34 MB read. */
    for (int k0 = 0; k0 < P.ns; k0 += 16) {
        float m[16];
#pragma unroll
        for (int j = 0; j < 16; j++) m[j] = k0 + j < P.ns ? w[(size_t)(k0 + j) * n] : 0.f;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int k = k0 + j;
            if (k < P.ns) {
                w[(size_t)k * n] = lam_sigma * H;
                const int64_t len = (k + 1 < P.ns) ? P.seg : P.T - (int64_t)k * P.seg;
                H = (len == P.seg ? gam : expf(-s * (float)len)) * H + m[j];
            }
        }
    }
    if (P.s_end) P.s_end[(size_t)bh * n + idx] = H;
}

/* ws[bh][k] += λ^(σ + k·seg) S[bh] for every segment k: a state that arrived, folded into the segment
 * states the scan left (what a scan from S would have given), so that the output kernels need no s_add */
__global__ void k_fold(DirParams P, const float *S) {
    const int64_t n = (int64_t)P.dx * P.ezt;
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    const int bh = P.bh0 + blockIdx.y;
    if (idx >= n) return;
    const float s = P.slopes[bh % P.H], v = S[(size_t)bh * n + idx];
    float *w = P.ws + (size_t)bh * P.ns * n + idx;
    /* the decay falls with k: from the first segment it underflows to 0 in fp32 on, S adds exactly nothing
     * (most segments of a long piece at the usual slopes), and those states are neither read nor written */
    for (int k = 0; k < P.ns; k++) {
        const float f = s_add_decay(P, k, s);
        if (f == 0.f) break;
        w[(size_t)k * n] += f * v;
    }
}

/* k_scan and k_fold: a thread per element of a state (256 a block), blockIdx.y the head */
static dim3 state_grid(const DirParams &P) {
    return dim3((unsigned)(((int64_t)P.dx * P.ezt + 255) / 256), (unsigned)P.nbh);
}

cudaError_t lasp_cu_scan(const DirParams &P, cudaStream_t st) {
    k_scan<<<state_grid(P), 256, 0, st>>>(P);
    return cudaGetLastError();
}

static cudaError_t lasp_cu_fold(const DirParams &P, const float *S, cudaStream_t st) {
    k_fold<<<state_grid(P), 256, 0, st>>>(P, S);
    return cudaGetLastError();
}

}  // namespace lasp_cu

/* ---- the directed op -------------------------------------------------------------------------- */

/* Segment length: enough (b, h, slice, segment) blocks for ~8 per SM, segments of ≥ 4 chunks so the
 * state traffic stays small, and a multiple of the 64-token chunk. */
static int pick_seg(const cuda_state *cs, int64_t T, int64_t BH, int slices) {
    const int64_t nc = (T + 63) / 64;
    const char *env = getenv("LASP_CUDA_BLOCKS_PER_SM"); /* to measure other splits */
    const int64_t want = (env && atoi(env) > 0 ? atoi(env) : 8) * (int64_t)cs->n_sm;
    int64_t ns = (want + BH * slices - 1) / (BH * slices);
    if (ns > (nc + 3) / 4) ns = (nc + 3) / 4;
    /* k_out_tma (attn_cuda_tma.h, work_of) cuts each head's segments into R runs, R = (SMs / slices) / BH:
     * a multiple of R makes them equal. (B1 H16 T131072 D128 on an H200, 2026-11-26: with 33 segments, runs
     * of 8, 8, 8, 9, fwd+bwd measured 7% slower than before runs; with 32, 2% slower — bench/RESULTS.md) */
    const int64_t R = (cs->n_sm / slices) / BH;
    if (R > 1 && ns > R) ns -= ns % R;
    if (ns < 1) ns = 1;
    int64_t chunks = (nc + ns - 1) / ns;
    return (int)(chunks * 64);
}

/* One directed op. P.seg = 0 picks the segment length; P.out_only reuses the segment states already in
 * the workspace (read transposed when P.ws_trans), with P.seg as the op that left them there. */
static void plan_dir(const cuda_state *cs, const lasp_attn_desc *a, lasp_cu::DirParams &P) {
    P.T = a->T, P.H = (int)a->H, P.BH = (int)(a->B * a->H);
    if (!P.nbh) P.nbh = P.BH - P.bh0;
    const int slices = P.ezt / lasp_cu::slice_width(a->dtype != LASP_BF16, P.dx, P.ezt);
    if (!P.seg) P.seg = pick_seg(cs, a->T, (int64_t)P.BH, slices);
    P.ns = (int)((a->T + P.seg - 1) / P.seg);
}

/* ... on the context's stream, or on `st` where given (the SP schedule's second finishing stream) */
static lasp_status run_dir(lasp_ctx *ctx, cuda_state *cs, const lasp_attn_desc *a, lasp_cu::DirParams &P,
                           cudaStream_t st = nullptr) {
    if (!st) st = cs->stream;
    plan_dir(cs, a, P);
    if (P.n_sm <= 0 || P.n_sm > cs->n_sm) P.n_sm = cs->n_sm; /* else the caller's share of the SMs */
    if (!P.ws) { /* else the caller's buffer (the forward's saved states) */
        if (!P.out_only) LASP_TRY(reserve_ws(ctx, cs, (size_t)P.BH * P.ns * P.dx * P.ezt * sizeof(float)));
        P.ws = cs->ws;
    }
    /* LASP_CUDA_WGMMA=0 runs the mma.sync output pass where the wgmma one would run (to compare them) */
    const char *env = getenv("LASP_CUDA_WGMMA");
    P.wgmma = cs->wgmma && !(env && env[0] == '0');
    /* LASP_CUDA_TMA=0 runs k_out_wg where k_out_tma would run, 1 k_out_tma with per-thread stores (to
     * compare them) */
    const char *env_tma = getenv("LASP_CUDA_TMA");
    P.tma = !P.wgmma ? 0 : env_tma && (env_tma[0] == '0' || env_tma[0] == '1') ? env_tma[0] - '0' : 2;
    cudaError_t e;
    switch (a->dtype) {
    case LASP_BF16: e = lasp_cu::launch_bf16(P, st, cs->max_smem); break;
    case LASP_F16: e = lasp_cu::launch_f16(P, st, cs->max_smem); break;
    default: e = lasp_cu::launch_f32(P, st, cs->max_smem); break;
    }
    if (e == cudaErrorNotSupported && P.part == 3) /* launch_dir refuses it before launching anything */
        return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "the finish in one launch needs the sm_90a output pass "
                         "(bf16, d 64 or 128, e ≥ 64; hint: finish in two parts)");
    if (e != cudaSuccess) return cuda_fail(ctx, e, "launching the attention kernels");
    return LASP_OK;
}

static lasp_status check_args(lasp_ctx *ctx, const lasp_attn_desc *a, const void *const *t, const char *const *names,
                              int n) {
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    if (a->dtype != LASP_F32 && a->dtype != LASP_BF16 && a->dtype != LASP_F16)
        return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "dtype %s on the GPU (hint: f32, bf16 or f16)",
                         lasp_dtype_name(a->dtype));
    if (a->B * a->H > 65535)
        return lasp_fail(&ctx->err, LASP_ERR_SHAPE, "B·H = %lld is more than the 65535 the CUDA kernels take",
                         (long long)(a->B * a->H));
    for (int i = 0; i < n; i++) {
        if (!t[i]) return lasp_fail(&ctx->err, LASP_ERR_ARG, "%s must not be NULL", names[i]);
        if (lasp_misaligned16(t[i]))
            return lasp_fail(&ctx->err, LASP_ERR_ARG, "%s is not 16-byte aligned (the CUDA kernels load 16 bytes)",
                             names[i]);
    }
    return LASP_OK;
}

/* An entry point's start: the arguments checked, then the context's GPU state. */
static lasp_status enter(lasp_ctx *ctx, const lasp_attn_desc *a, const void *const *t, const char *const *names, int n,
                         cuda_state **cs) {
    LASP_TRY(check_args(ctx, a, t, names, n));
    return get_state(ctx, cs);
}

/* The four directed ops of attn_cuda_kern.h, each written once: the forward, and the backward's dq, dv
 * (with dkv_in as its end state) and dk (out of dv's segment states, transposed). */
static lasp_cu::DirParams dir_fwd(const lasp_attn_desc *a, const void *q, const void *k, const void *v,
                                  const float *slopes, const float *kv_in) {
    lasp_cu::DirParams P = {};
    P.x = q, P.y = k, P.z = v, P.slopes = slopes, P.s_in = kv_in;
    P.dx = (int)a->d, P.ezt = (int)a->e;
    return P;
}
/* dq = op(dO, v, k; kv_inᵀ) */
static lasp_cu::DirParams dir_dq(const lasp_attn_desc *a, const void *k, const void *v, const void *do_,
                                 const float *slopes, const float *kv_in) {
    lasp_cu::DirParams P = {};
    P.x = do_, P.y = v, P.z = k, P.slopes = slopes, P.s_in = kv_in, P.s_in_trans = 1;
    P.dx = (int)a->e, P.ezt = (int)a->d;
    return P;
}
/* dv, dkv_in = op(k, q, dO; dkv_out), backwards */
static lasp_cu::DirParams dir_dv(const lasp_attn_desc *a, const void *q, const void *k, const void *do_,
                                 const float *slopes, const float *dkv_out) {
    lasp_cu::DirParams P = {};
    P.x = k, P.y = q, P.z = do_, P.slopes = slopes, P.s_in = dkv_out;
    P.dx = (int)a->d, P.ezt = (int)a->e, P.rev = 1, P.sigma = 1;
    return P;
}
/* dk = op(v, dO, q; dkv_outᵀ), backwards: its segment states are the transposes of those the dv op `dv`
 * left in the workspace, so only its output kernel runs */
static lasp_cu::DirParams dir_dk(const lasp_attn_desc *a, const void *q, const void *v, const void *do_,
                                 const float *slopes, const lasp_cu::DirParams &dv) {
    lasp_cu::DirParams P = {};
    P.x = v, P.y = do_, P.z = q, P.slopes = slopes;
    P.dx = (int)a->e, P.ezt = (int)a->d, P.rev = 1, P.sigma = 1, P.seg = dv.seg, P.out_only = 1, P.ws_trans = 1;
    return P;
}

/* How the forward splits a problem: its segment length and count */
static lasp_cu::DirParams fwd_plan(const cuda_state *cs, const lasp_attn_desc *a) {
    lasp_cu::DirParams F = dir_fwd(a, NULL, NULL, NULL, NULL, NULL);
    plan_dir(cs, a, F);
    return F;
}

/* The forward's segment states (those a saving forward leaves in `saved`): count and layout of the
 * forward's workspace, [BH][ns][d][e] */
extern "C" lasp_status lasp_attn_cuda_saved_bytes(lasp_ctx *ctx, const lasp_attn_desc *a, size_t *bytes) {
    cuda_state *cs = NULL;
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    LASP_TRY(get_state(ctx, &cs));
    const lasp_cu::DirParams F = fwd_plan(cs, a);
    *bytes = (size_t)F.BH * F.ns * F.dx * F.ezt * sizeof(float);
    return LASP_OK;
}

/* dq from the forward's segment states `saved` (Σ kᵀv; dq's are their transposes, Σ vᵀk), split as the
 * forward split them: its output kernel only */
static lasp_cu::DirParams dir_dq_saved(const cuda_state *cs, const lasp_attn_desc *a, const void *k, const void *v,
                                       const void *do_, const float *slopes, const float *kv_in,
                                       const float *saved) {
    lasp_cu::DirParams P = dir_dq(a, k, v, do_, slopes, kv_in);
    P.ws = const_cast<float *>(saved), P.seg = fwd_plan(cs, a).seg, P.out_only = 1, P.ws_trans = 1;
    return P;
}

extern "C" lasp_status lasp_attn_fwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                          const void *v, const float *slopes, const float *kv_in, void *o,
                                          float *kv_out, float *saved) {
    const void *t[] = {q, k, v, slopes, o};
    const char *names[] = {"q", "k", "v", "slopes", "o"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 5, &cs));
    lasp_cu::DirParams P = dir_fwd(a, q, k, v, slopes, kv_in);
    P.out = o, P.s_end = kv_out, P.ws = saved;
    return run_dir(ctx, cs, a, P);
}

/* LASP_CUDA_PAIR=1: the backward's dv and dk output passes side by side on two streams (to compare; off by
 * default until measured) */
static int pair_outputs(void) {
    const char *env = getenv("LASP_CUDA_PAIR");
    return env && env[0] == '1';
}

/* the context's second stream and its two events, made on first use */
static lasp_status side_stream(lasp_ctx *ctx, cuda_state *cs) {
    if (cs->side) return LASP_OK;
    cudaError_t e = cudaStreamCreate(&cs->side);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&cs->fork, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&cs->join, cudaEventDisableTiming);
    if (e != cudaSuccess) return cuda_fail(ctx, e, "creating the second stream");
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_bwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                          const void *v, const float *slopes, const float *kv_in, const void *do_,
                                          const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in,
                                          const float *saved) {
    const void *t[] = {q, k, v, slopes, do_, dq, dk, dv};
    const char *names[] = {"q", "k", "v", "slopes", "do", "dq", "dk", "dv"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 8, &cs));
    /* the forward's states already hold kv_in */
    lasp_cu::DirParams P = saved ? dir_dq_saved(cs, a, k, v, do_, slopes, kv_in, saved)
                                 : dir_dq(a, k, v, do_, slopes, kv_in);
    P.out = dq;
    LASP_TRY(run_dir(ctx, cs, a, P));
    lasp_cu::DirParams V = dir_dv(a, q, k, do_, slopes, dkv_out);
    V.out = dv, V.s_end = dkv_in;
    /* LASP_CUDA_PAIR: dv's states first, then dv's and dk's output passes side by side, each on half the SMs:
     * both read q and dO, the same tokens of the same heads at about the same time, so the L2 serves one of
     * the two reads */
    const int pair = pair_outputs();
    V.states_only = pair;
    LASP_TRY(run_dir(ctx, cs, a, V));
    lasp_cu::DirParams K = dir_dk(a, q, v, do_, slopes, V); /* dkv_outᵀ is in dv's states already */
    K.out = dk;
    if (!pair) return run_dir(ctx, cs, a, K);
    V.states_only = 0, V.out_only = 1, V.s_end = NULL;
    V.n_sm = K.n_sm = cs->n_sm / 2;
    LASP_TRY(side_stream(ctx, cs));
    CU_TRY(ctx, cudaEventRecord(cs->fork, cs->stream), "cudaEventRecord");
    CU_TRY(ctx, cudaStreamWaitEvent(cs->side, cs->fork, 0), "cudaStreamWaitEvent");
    LASP_TRY(run_dir(ctx, cs, a, K, cs->side));
    LASP_TRY(run_dir(ctx, cs, a, V));
    CU_TRY(ctx, cudaEventRecord(cs->join, cs->side), "cudaEventRecord");
    CU_TRY(ctx, cudaStreamWaitEvent(cs->stream, cs->join, 0), "cudaStreamWaitEvent");
    return LASP_OK;
}

/* ---- the op in halves, for the sequence-parallel schedule (attn_cuda_sp.h) -------------------- */

extern "C" lasp_status lasp_attn_cuda_stream(lasp_ctx *ctx, void **stream) {
    cuda_state *cs = NULL;
    LASP_TRY(get_state(ctx, &cs));
    *stream = cs->stream;
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_cuda_sp_leave_sms(lasp_ctx *ctx, int n) {
    cuda_state *cs = NULL;
    LASP_TRY(get_state(ctx, &cs));
    if (n < 0 || n > cs->n_sm / 2)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "leaving %d of %d SMs to the communicator (hint: 0 .. %d)", n,
                         cs->n_sm, cs->n_sm / 2);
    cs->sp_leave = n;
    return LASP_OK;
}

/* The group of heads a half runs (attn_cuda_sp.h): {0, 0} all, else a range inside B·H; its persistent
 * kernels on the SMs the communicator is not left */
static lasp_status set_heads(lasp_ctx *ctx, const cuda_state *cs, const lasp_attn_desc *a, lasp_heads hs,
                             lasp_cu::DirParams &P) {
    P.n_sm = cs->n_sm - cs->sp_leave;
    const int64_t BH = a->B * a->H;
    if (hs.n == 0 && hs.bh0 == 0) hs.n = BH;
    if (hs.bh0 < 0 || hs.n < 1 || hs.bh0 + hs.n > BH)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "heads %lld .. %lld of an op with B·H = %lld (hint: 0 ≤ bh0, "
                         "bh0 + n ≤ B·H)", (long long)hs.bh0, (long long)(hs.bh0 + hs.n - 1), (long long)BH);
    P.bh0 = (int)hs.bh0, P.nbh = (int)hs.n;
    return LASP_OK;
}

/* The second half of a directed op whose first half (states_only) left the segment states of a zero
 * incoming state in the workspace: the output kernel, adding the state that arrived (P.s_in) to each
 * segment's entering state as it reads it. */
static lasp_status finish_dir(lasp_ctx *ctx, cuda_state *cs, const lasp_attn_desc *a, lasp_cu::DirParams &P,
                              cudaStream_t st = nullptr) {
    P.s_add = P.s_in, P.s_add_trans = P.s_in_trans;
    P.s_in = NULL, P.out_only = 1;
    return run_dir(ctx, cs, a, P, st);
}

extern "C" lasp_status lasp_attn_fwd_cuda_local(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, const void *q, const void *k,
                                                const void *v, const float *slopes, float *m, float *seg) {
    const void *t[] = {q, k, v, slopes, m, seg};
    const char *names[] = {"q", "k", "v", "slopes", "m", "seg"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    lasp_cu::DirParams P = dir_fwd(a, q, k, v, slopes, NULL);
    P.s_end = m, P.states_only = 1, P.ws = seg;
    LASP_TRY(set_heads(ctx, cs, a, hs, P));
    return run_dir(ctx, cs, a, P);
}

/* The forward's finishing half, part `part` (DirParams.part; 3 with ready and epoch), on `stream` (NULL:
 * the context's) */
static lasp_status fwd_finish(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, int part, const void *q,
                              const void *k, const void *v, const float *slopes, const float *kv_in, void *o,
                              const float *seg, void *stream, const unsigned *ready, unsigned epoch) {
    const void *t[] = {q, k, v, slopes, o, seg};
    const char *names[] = {"q", "k", "v", "slopes", "o", "seg"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    lasp_cu::DirParams P = dir_fwd(a, q, k, v, slopes, kv_in);
    P.out = o, P.ws = const_cast<float *>(seg);
    LASP_TRY(set_heads(ctx, cs, a, hs, P));
    P.part = part, P.ready = ready, P.epoch = epoch;
    if (part == 1) P.s_in = NULL; /* its blocks are those the state cannot reach */
    return finish_dir(ctx, cs, a, P, (cudaStream_t)stream);
}

extern "C" lasp_status lasp_attn_fwd_cuda_finish(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, int part,
                                                 const void *q, const void *k, const void *v, const float *slopes,
                                                 const float *kv_in, void *o, const float *seg, void *stream) {
    if (part < 0 || part > 2)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "finishing part %d (hint: 0 all, 1 before the state, 2 after)", part);
    return fwd_finish(ctx, a, hs, part, q, k, v, slopes, kv_in, o, seg, stream, NULL, 0);
}

namespace lasp_cu {
__global__ void k_signal(unsigned *ready, unsigned epoch) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(ready), "r"(epoch) : "memory");
}
}  // namespace lasp_cu

extern "C" lasp_status lasp_attn_fwd_cuda_finish_when(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs,
                                                      const void *q, const void *k, const void *v, const float *slopes,
                                                      const float *kv_in, void *o, const float *seg,
                                                      const unsigned *ready, unsigned epoch) {
    if (!kv_in || !ready) return lasp_fail(&ctx->err, LASP_ERR_ARG, "kv_in and ready must not be NULL");
    if (lasp_misaligned16(kv_in))
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "kv_in is not 16-byte aligned (the CUDA kernels load 16 bytes)");
    cuda_state *cs = NULL;
    LASP_TRY(get_state(ctx, &cs));
    if (cs->sp_leave < 1)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "the finish in one launch waits on every SM it holds for a "
                         "state that a transfer brings: it needs SMs left to that transfer (hint: "
                         "lasp_attn_cuda_sp_leave_sms ≥ 1)");
    /* the signal's kernel loaded now: CUDA loads a kernel at its first launch (lazy loading), and a load may
     * wait for the whole device — for this kernel's CTAs, which wait for that signal */
    cudaFuncAttributes fa;
    CU_TRY(ctx, cudaFuncGetAttributes(&fa, lasp_cu::k_signal), "loading the signal kernel");
    return fwd_finish(ctx, a, hs, 3, q, k, v, slopes, kv_in, o, seg, NULL, ready, epoch);
}

extern "C" lasp_status lasp_attn_cuda_signal(lasp_ctx *ctx, unsigned *ready, unsigned epoch, void *stream) {
    if (!ready) return lasp_fail(&ctx->err, LASP_ERR_ARG, "ready must not be NULL");
    lasp_cu::k_signal<<<1, 1, 0, (cudaStream_t)stream>>>(ready, epoch);
    CU_TRY(ctx, cudaGetLastError(), "launching the signal");
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_bwd_cuda_local(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, const void *q, const void *k,
                                                const void *v, const float *slopes, const void *do_, float *g) {
    const void *t[] = {q, k, v, slopes, do_, g};
    const char *names[] = {"q", "k", "v", "slopes", "do", "g"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    /* the reverse segment states of the dv op from a zero gradient; their total is the piece's g */
    lasp_cu::DirParams V = dir_dv(a, q, k, do_, slopes, NULL);
    V.s_end = g, V.states_only = 1;
    LASP_TRY(set_heads(ctx, cs, a, hs, V));
    return run_dir(ctx, cs, a, V);
}

extern "C" lasp_status lasp_attn_bwd_cuda_dq(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, const void *k, const void *v,
                                             const float *slopes, const float *kv_in, const void *do_, void *dq,
                                             const float *seg) {
    const void *t[] = {k, v, slopes, do_, dq, seg};
    const char *names[] = {"k", "v", "slopes", "do", "dq", "seg"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    /* the forward's local segment states (from a zero state): kv_in added as the forward's finish added it */
    lasp_cu::DirParams P = dir_dq_saved(cs, a, k, v, do_, slopes, kv_in, seg);
    P.out = dq;
    LASP_TRY(set_heads(ctx, cs, a, hs, P));
    return finish_dir(ctx, cs, a, P);
}

extern "C" lasp_status lasp_attn_bwd_cuda_fold(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, const void *q,
                                               const void *k, const void *do_, const float *slopes,
                                               const float *dkv_out, void *stream) {
    const void *t[] = {q, k, do_, slopes, dkv_out};
    const char *names[] = {"q", "k", "do", "slopes", "dkv_out"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 5, &cs));
    lasp_cu::DirParams V = dir_dv(a, q, k, do_, slopes, dkv_out);
    LASP_TRY(set_heads(ctx, cs, a, hs, V));
    plan_dir(cs, a, V);
    V.ws = cs->ws;
    CU_TRY(ctx, lasp_cu::lasp_cu_fold(V, dkv_out, (cudaStream_t)stream), "launching the state fold");
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_bwd_cuda_finish(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_heads hs, const void *q,
                                                 const void *k, const void *v, const float *slopes, const void *do_,
                                                 const float *dkv_out, void *dk, void *dv) {
    const void *t[] = {q, k, v, slopes, do_, dk, dv};
    const char *names[] = {"q", "k", "v", "slopes", "do", "dk", "dv"};
    cuda_state *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 7, &cs));
    lasp_cu::DirParams V = dir_dv(a, q, k, do_, slopes, dkv_out);
    V.out = dv;
    LASP_TRY(set_heads(ctx, cs, a, hs, V));
    LASP_TRY(finish_dir(ctx, cs, a, V));
    lasp_cu::DirParams K = dir_dk(a, q, v, do_, slopes, V); /* adds dkv_outᵀ as dv adds dkv_out */
    K.out = dk, K.s_add = dkv_out, K.s_add_trans = 1;
    LASP_TRY(set_heads(ctx, cs, a, hs, K));
    return run_dir(ctx, cs, a, K);
}

/* ---- host f32 in, host f32 out ---------------------------------------------------------------- */

/* Device copies of host f32 tensors in the I/O dtype; freed together. */
typedef struct dbufs {
    void *p[16];
    int n;
} dbufs;

static void dbufs_free(dbufs *b) {
    for (int i = 0; i < b->n; i++) cudaFree(b->p[i]);
    b->n = 0;
}

/* A device buffer of n elements of type t, filled from host f32 x (converted) if x is not NULL. */
static lasp_status upload(lasp_ctx *ctx, dbufs *b, void **out, const float *x, size_t n, lasp_dtype t) {
    const size_t bytes = n * lasp_dtype_size(t);
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e != cudaSuccess)
        return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(e));
    b->p[b->n++] = d;
    *out = d;
    if (!x) return LASP_OK;
    if (t == LASP_F32) {
        CU_TRY(ctx, cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
        return LASP_OK;
    }
    void *h = malloc(bytes);
    if (!h) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no host memory for %zu bytes", bytes);
    lasp_convert(h, t, x, LASP_F32, n);
    e = cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    free(h);
    if (e != cudaSuccess) return cuda_fail(ctx, e, "cudaMemcpy to the device");
    return LASP_OK;
}

static lasp_status download(lasp_ctx *ctx, float *x, const void *d, size_t n, lasp_dtype t) {
    const size_t bytes = n * lasp_dtype_size(t);
    if (t == LASP_F32) {
        CU_TRY(ctx, cudaMemcpy(x, d, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy from the device");
        return LASP_OK;
    }
    void *h = malloc(bytes);
    if (!h) return lasp_fail(&ctx->err, LASP_ERR_NOMEM, "no host memory for %zu bytes", bytes);
    cudaError_t e = cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost);
    if (e == cudaSuccess) lasp_convert(x, LASP_F32, h, t, n);
    free(h);
    if (e != cudaSuccess) return cuda_fail(ctx, e, "cudaMemcpy from the device");
    return LASP_OK;
}

static lasp_status check_host_finite(lasp_ctx *ctx, const char *name, const float *x, size_t n) {
    if (!x) return LASP_OK;
    size_t i = lasp_find_nonfinite(x, LASP_F32, n);
    if (i == n) return LASP_OK;
    return lasp_fail(&ctx->err, LASP_ERR_NONFINITE, "%s holds a non-finite value at flat index %zu", name, i);
}

static lasp_status host_checks(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q, const float *k, const float *v,
                               const float *slopes, const float *kv_in) {
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    if (!q || !k || !v) return lasp_fail(&ctx->err, LASP_ERR_ARG, "q, k and v must not be NULL");
    LASP_TRY(lasp_attn_check_slopes(slopes, a->H, &ctx->err));
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e);
    LASP_TRY(check_host_finite(ctx, "q", q, nq));
    LASP_TRY(check_host_finite(ctx, "k", k, nq));
    LASP_TRY(check_host_finite(ctx, "v", v, nv));
    LASP_TRY(check_host_finite(ctx, "kv_in", kv_in, (size_t)(a->B * a->H * a->d * a->e)));
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_fwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q,
                                               const float *k, const float *v, const float *slopes,
                                               const float *kv_in, float *o, float *kv_out) {
    lasp_err_clear(&ctx->err);
    LASP_TRY(host_checks(ctx, a, q, k, v, slopes, kv_in));
    if (!o) return lasp_fail(&ctx->err, LASP_ERR_ARG, "o must not be NULL");
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e),
                 ns = (size_t)(a->B * a->H * a->d * a->e);
    dbufs b = {{0}, 0};
    void *dq = NULL, *dk = NULL, *dv = NULL, *dsl = NULL, *dkv = NULL, *dout = NULL, *dkvo = NULL;
    lasp_status s;
    if ((s = upload(ctx, &b, &dq, q, nq, a->dtype)) || (s = upload(ctx, &b, &dk, k, nq, a->dtype)) ||
        (s = upload(ctx, &b, &dv, v, nv, a->dtype)) || (s = upload(ctx, &b, &dsl, slopes, (size_t)a->H, LASP_F32)) ||
        (kv_in && (s = upload(ctx, &b, &dkv, kv_in, ns, LASP_F32))) ||
        (s = upload(ctx, &b, &dout, NULL, nv, a->dtype)) ||
        (kv_out && (s = upload(ctx, &b, &dkvo, NULL, ns, LASP_F32))))
        goto done;
    if ((s = lasp_attn_fwd_cuda(ctx, a, dq, dk, dv, (const float *)dsl, (const float *)dkv, dout, (float *)dkvo, NULL)))
        goto done;
    if ((s = download(ctx, o, dout, nv, a->dtype))) goto done;
    if (kv_out) s = download(ctx, kv_out, dkvo, ns, LASP_F32);
done:
    dbufs_free(&b);
    return s;
}

extern "C" lasp_status lasp_attn_bwd_host_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const float *q,
                                               const float *k, const float *v, const float *slopes,
                                               const float *kv_in, const float *do_, const float *dkv_out,
                                               float *dq, float *dk, float *dv, float *dkv_in) {
    lasp_err_clear(&ctx->err);
    LASP_TRY(host_checks(ctx, a, q, k, v, slopes, kv_in));
    if (!do_ || !dq || !dk || !dv) return lasp_fail(&ctx->err, LASP_ERR_ARG, "do, dq, dk and dv must not be NULL");
    const size_t nq = (size_t)(a->B * a->T * a->H * a->d), nv = (size_t)(a->B * a->T * a->H * a->e),
                 ns = (size_t)(a->B * a->H * a->d * a->e);
    LASP_TRY(check_host_finite(ctx, "do", do_, nv));
    LASP_TRY(check_host_finite(ctx, "dkv_out", dkv_out, ns));
    dbufs b = {{0}, 0};
    void *gq = NULL, *gk = NULL, *gv = NULL, *gsl = NULL, *gkv = NULL, *gdo = NULL, *gdkvo = NULL, *gdq = NULL,
         *gdk = NULL, *gdv = NULL, *gdkvi = NULL;
    lasp_status s;
    if ((s = upload(ctx, &b, &gq, q, nq, a->dtype)) || (s = upload(ctx, &b, &gk, k, nq, a->dtype)) ||
        (s = upload(ctx, &b, &gv, v, nv, a->dtype)) || (s = upload(ctx, &b, &gsl, slopes, (size_t)a->H, LASP_F32)) ||
        (kv_in && (s = upload(ctx, &b, &gkv, kv_in, ns, LASP_F32))) ||
        (s = upload(ctx, &b, &gdo, do_, nv, a->dtype)) ||
        (dkv_out && (s = upload(ctx, &b, &gdkvo, dkv_out, ns, LASP_F32))) ||
        (s = upload(ctx, &b, &gdq, NULL, nq, a->dtype)) || (s = upload(ctx, &b, &gdk, NULL, nq, a->dtype)) ||
        (s = upload(ctx, &b, &gdv, NULL, nv, a->dtype)) ||
        (dkv_in && (s = upload(ctx, &b, &gdkvi, NULL, ns, LASP_F32))))
        goto done;
    if ((s = lasp_attn_bwd_cuda(ctx, a, gq, gk, gv, (const float *)gsl, (const float *)gkv, gdo,
                                (const float *)gdkvo, gdq, gdk, gdv, (float *)gdkvi, NULL)))
        goto done;
    if ((s = download(ctx, dq, gdq, nq, a->dtype)) || (s = download(ctx, dk, gdk, nq, a->dtype)) ||
        (s = download(ctx, dv, gdv, nv, a->dtype)))
        goto done;
    if (dkv_in) s = download(ctx, dkv_in, gdkvi, ns, LASP_F32);
done:
    dbufs_free(&b);
    return s;
}
