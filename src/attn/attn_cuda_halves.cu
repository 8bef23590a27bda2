/* attn_cuda_halves.cu — the CUDA op in the halves the SP schedule runs (attn_cuda_sp.h): each half is
 * one or two of the directed ops of attn_cuda.cu, run with only its states (local) or only its outputs
 * (finish, adding the state that arrived). */
#include "attn/attn_cuda_driver.h"
#include "attn/attn_cuda_sp.h"

using namespace lasp_cu;

extern "C" lasp_status lasp_attn_cuda_sp_leave_sms(lasp_ctx *ctx, int n) {
    CudaState *cs = NULL;
    LASP_TRY(cuda_state(ctx, &cs));
    if (n < 0 || n > cs->n_sm / 2)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "leaving %d of %d SMs to the communicator (hint: 0 .. %d)", n,
                         cs->n_sm, cs->n_sm / 2);
    cs->sp_leave = n;
    return LASP_OK;
}

/* a half's persistent kernels run on the SMs the communicator is not left */
static void leave_sms(const CudaState *cs, DirParams &P) { P.n_sm = cs->n_sm - cs->sp_leave; }

extern "C" lasp_status lasp_attn_fwd_cuda_local(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                                const void *v, const float *slopes, float *m, float *seg) {
    const void *t[] = {q, k, v, slopes, m, seg};
    const char *names[] = {"q", "k", "v", "slopes", "m", "seg"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    DirParams P = dir_fwd(a, q, k, v, slopes, NULL);
    P.s_end = m, P.states_only = 1, P.ws = seg;
    leave_sms(cs, P);
    return run_dir(ctx, cs, a, P);
}

extern "C" lasp_status lasp_attn_fwd_cuda_finish(lasp_ctx *ctx, const lasp_attn_desc *a, int part, const void *q,
                                                 const void *k, const void *v, const float *slopes,
                                                 const float *kv_in, void *o, const float *seg, void *stream) {
    if (part < 0 || part > 2)
        return lasp_fail(&ctx->err, LASP_ERR_ARG, "finishing part %d (hint: 0 all, 1 before the state, 2 after)", part);
    const void *t[] = {q, k, v, slopes, o, seg};
    const char *names[] = {"q", "k", "v", "slopes", "o", "seg"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    DirParams P = dir_fwd(a, q, k, v, slopes, part == 1 ? NULL : kv_in); /* part 1: blocks kv_in cannot reach */
    P.out = o, P.ws = const_cast<float *>(seg), P.part = part;
    leave_sms(cs, P);
    return finish_dir(ctx, cs, a, P, (cudaStream_t)stream);
}

extern "C" lasp_status lasp_attn_bwd_cuda_local(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                                const void *v, const float *slopes, const void *do_, float *g) {
    const void *t[] = {q, k, v, slopes, do_, g};
    const char *names[] = {"q", "k", "v", "slopes", "do", "g"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    /* the reverse segment states of the dv op from a zero gradient; their total is the piece's g */
    DirParams V = dir_dv(a, q, k, do_, slopes, NULL);
    V.s_end = g, V.states_only = 1;
    leave_sms(cs, V);
    return run_dir(ctx, cs, a, V);
}

extern "C" lasp_status lasp_attn_bwd_cuda_dq(lasp_ctx *ctx, const lasp_attn_desc *a, const void *k, const void *v,
                                             const float *slopes, const float *kv_in, const void *do_, void *dq,
                                             const float *seg) {
    const void *t[] = {k, v, slopes, do_, dq, seg};
    const char *names[] = {"k", "v", "slopes", "do", "dq", "seg"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 6, &cs));
    /* the forward's local segment states (from a zero state): kv_in added as the forward's finish added it */
    DirParams P = dir_dq_saved(cs, a, k, v, do_, slopes, kv_in, seg);
    P.out = dq;
    leave_sms(cs, P);
    return finish_dir(ctx, cs, a, P);
}

extern "C" lasp_status lasp_attn_bwd_cuda_finish(lasp_ctx *ctx, const lasp_attn_desc *a, const void *q, const void *k,
                                                 const void *v, const float *slopes, const void *do_,
                                                 const float *dkv_out, void *dk, void *dv) {
    const void *t[] = {q, k, v, slopes, do_, dk, dv};
    const char *names[] = {"q", "k", "v", "slopes", "do", "dk", "dv"};
    CudaState *cs = NULL;
    LASP_TRY(enter(ctx, a, t, names, 7, &cs));
    DirParams V = dir_dv(a, q, k, do_, slopes, dkv_out);
    V.out = dv;
    leave_sms(cs, V);
    LASP_TRY(finish_dir(ctx, cs, a, V));
    DirParams K = dir_dk(a, q, v, do_, slopes, V); /* adds dkv_outᵀ as dv adds dkv_out */
    K.out = dk, K.s_add = dkv_out, K.s_add_trans = 1;
    leave_sms(cs, K);
    return run_dir(ctx, cs, a, K);
}
