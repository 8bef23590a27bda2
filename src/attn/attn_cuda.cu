/* attn_cuda.cu — the op on NVIDIA GPUs: argument checks, how a problem is cut into segments, and the
 * forward and backward as directed ops (docs/CUDA.md):
 *
 *     forward   o,  kv_out  = op(q,  k,  v;  kv_in,       forwards)
 *     backward  dq          = op(dO, v,  k;  kv_inᵀ,      forwards)
 *               dv, dkv_in  = op(k,  q,  dO; dkv_out,     backwards, σ = 1)
 *               dk          = op(v,  dO, q;  dkv_outᵀ,    backwards, σ = 1)
 *
 * Calls are asynchronous on the context's stream (created blocking, so work on the legacy default stream
 * orders with it). */
#include "attn/attn.h"
#include "attn/attn_cuda.h"
#include "attn/attn_cuda_driver.h"
#include "core/dtype.h"

namespace lasp_cu {

/* Segments per SM the op aims for: enough (b, h, slice, segment) blocks to fill the GPU with the state
 * traffic (one state per segment) still small. */
constexpr int SEGMENTS_PER_SM = 8;

/* Segment length: enough (b, h, slice, segment) blocks for ~8 per SM, segments of ≥ 4 chunks so the state
 * traffic stays small, and a multiple of the 64-token chunk. */
static int pick_seg(const CudaState *cs, int64_t T, int64_t BH, int slices) {
    const int64_t nc = (T + 63) / 64;
    const int64_t want = (int64_t)SEGMENTS_PER_SM * cs->n_sm;
    int64_t ns = (want + BH * slices - 1) / (BH * slices);
    if (ns > (nc + 3) / 4) ns = (nc + 3) / 4;
    /* the TMA output pass cuts each head's segments into R runs, R = (SMs / slices) / BH (work_for): a
     * multiple of R makes the runs equal, so that no CTA carries one segment more than the others */
    const int64_t R = (cs->n_sm / slices) / BH;
    if (R > 1 && ns > R) ns -= ns % R;
    if (ns < 1) ns = 1;
    int64_t chunks = (nc + ns - 1) / ns;
    return (int)(chunks * 64);
}

void plan_dir(const CudaState *cs, const lasp_attn_desc *a, DirParams &P) {
    P.T = a->T, P.H = (int)a->H, P.BH = (int)(a->B * a->H);
    const int slices = P.ezt / slice_width(a->dtype != LASP_BF16, P.dx, P.ezt);
    if (!P.seg) P.seg = pick_seg(cs, a->T, (int64_t)P.BH, slices);
    P.ns = (int)((a->T + P.seg - 1) / P.seg);
}

lasp_status run_dir(lasp_ctx *ctx, CudaState *cs, const lasp_attn_desc *a, DirParams &P, cudaStream_t st) {
    if (!st) st = cs->stream;
    plan_dir(cs, a, P);
    if (P.n_sm <= 0 || P.n_sm > cs->n_sm) P.n_sm = cs->n_sm; /* else the caller's share of the SMs */
    if (!P.ws) { /* else the caller's buffer (the forward's saved states) */
        if (!P.out_only) LASP_TRY(reserve_ws(ctx, cs, (size_t)P.BH * P.ns * P.dx * P.ezt * sizeof(float)));
        P.ws = cs->ws;
    }
    P.wgmma = cs->wgmma;
    cudaError_t e;
    switch (a->dtype) {
    case LASP_BF16: e = launch_bf16(P, st, cs->max_smem, &cs->ran); break;
    case LASP_F16: e = launch_f16(P, st, cs->max_smem, &cs->ran); break;
    default: e = launch_f32(P, st, cs->max_smem, &cs->ran); break;
    }
    if (e != cudaSuccess) return cuda_fail(ctx, e, "launching the attention kernels");
    return LASP_OK;
}

lasp_status finish_dir(lasp_ctx *ctx, CudaState *cs, const lasp_attn_desc *a, DirParams &P, cudaStream_t st) {
    P.s_add = P.s_in, P.s_add_trans = P.s_in_trans;
    P.s_in = NULL, P.out_only = 1;
    return run_dir(ctx, cs, a, P, st);
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

lasp_status enter(lasp_ctx *ctx, const lasp_attn_desc *a, const void *const *t, const char *const *names, int n,
                  CudaState **cs) {
    LASP_TRY(check_args(ctx, a, t, names, n));
    return cuda_state(ctx, cs);
}

DirParams dir_fwd(const lasp_attn_desc *a, const void *q, const void *k, const void *v, const float *slopes,
                  const float *kv_in) {
    DirParams P = {};
    P.x = q, P.y = k, P.z = v, P.slopes = slopes, P.s_in = kv_in;
    P.dx = (int)a->d, P.ezt = (int)a->e;
    return P;
}

DirParams dir_dq(const lasp_attn_desc *a, const void *k, const void *v, const void *do_, const float *slopes,
                 const float *kv_in) {
    DirParams P = {};
    P.x = do_, P.y = v, P.z = k, P.slopes = slopes, P.s_in = kv_in, P.s_in_trans = 1;
    P.dx = (int)a->e, P.ezt = (int)a->d;
    return P;
}

DirParams dir_dv(const lasp_attn_desc *a, const void *q, const void *k, const void *do_, const float *slopes,
                 const float *dkv_out) {
    DirParams P = {};
    P.x = k, P.y = q, P.z = do_, P.slopes = slopes, P.s_in = dkv_out;
    P.dx = (int)a->d, P.ezt = (int)a->e, P.rev = 1, P.sigma = 1;
    return P;
}

/* its segment states are the transposes of those the dv op left in the workspace: the output pass only */
DirParams dir_dk(const lasp_attn_desc *a, const void *q, const void *v, const void *do_, const float *slopes,
                 const DirParams &dv) {
    DirParams P = {};
    P.x = v, P.y = do_, P.z = q, P.slopes = slopes;
    P.dx = (int)a->e, P.ezt = (int)a->d, P.rev = 1, P.sigma = 1, P.seg = dv.seg, P.out_only = 1, P.ws_trans = 1;
    return P;
}

/* How the forward splits a problem: its segment length and count */
static DirParams fwd_plan(const CudaState *cs, const lasp_attn_desc *a) {
    DirParams F = dir_fwd(a, NULL, NULL, NULL, NULL, NULL);
    plan_dir(cs, a, F);
    return F;
}

/* The forward's states are Σ kᵀv; dq's are their transposes, Σ vᵀk. */
DirParams dir_dq_saved(const CudaState *cs, const lasp_attn_desc *a, const void *k, const void *v, const void *do_,
                       const float *slopes, const float *kv_in, const float *saved) {
    DirParams P = dir_dq(a, k, v, do_, slopes, kv_in);
    P.ws = const_cast<float *>(saved), P.seg = fwd_plan(cs, a).seg, P.out_only = 1, P.ws_trans = 1;
    return P;
}

}  // namespace lasp_cu

using namespace lasp_cu;

/* The forward's segment states (those a saving forward leaves in `saved`): the forward's workspace,
 * [BH][ns][d][e] */
extern "C" lasp_status lasp_attn_cuda_saved_bytes(lasp_ctx *ctx, const lasp_attn_desc *a, size_t *bytes) {
    CudaState *cs = NULL;
    LASP_TRY(lasp_attn_check_desc(a, &ctx->err));
    LASP_TRY(cuda_state(ctx, &cs));
    const DirParams F = fwd_plan(cs, a);
    *bytes = (size_t)F.BH * F.ns * F.dx * F.ezt * sizeof(float);
    return LASP_OK;
}

extern "C" lasp_status lasp_attn_fwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                          const void *v, const float *slopes, const float *kv_in, void *o,
                                          float *kv_out, float *saved) {
    const void *t[] = {q, k, v, slopes, o};
    const char *names[] = {"q", "k", "v", "slopes", "o"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 5, &cs));
    DirParams P = dir_fwd(a, q, k, v, slopes, kv_in);
    P.out = o, P.s_end = kv_out, P.ws = saved;
    return run_dir(ctx, cs, a, P);
}

extern "C" lasp_status lasp_attn_bwd_cuda(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                          const void *v, const float *slopes, const float *kv_in, const void *do_,
                                          const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in,
                                          const float *saved) {
    const void *t[] = {q, k, v, slopes, do_, dq, dk, dv};
    const char *names[] = {"q", "k", "v", "slopes", "do", "dq", "dk", "dv"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 8, &cs));
    /* the forward's states already hold kv_in */
    DirParams P = saved ? dir_dq_saved(cs, a, k, v, do_, slopes, kv_in, saved) : dir_dq(a, k, v, do_, slopes, kv_in);
    P.out = dq;
    LASP_TRY(run_dir(ctx, cs, a, P));
    DirParams V = dir_dv(a, q, k, do_, slopes, dkv_out);
    V.out = dv, V.s_end = dkv_in;
    LASP_TRY(run_dir(ctx, cs, a, V));
    DirParams K = dir_dk(a, q, v, do_, slopes, V); /* dkv_outᵀ is in dv's states already */
    K.out = dk;
    return run_dir(ctx, cs, a, K);
}
