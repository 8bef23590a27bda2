/* sp_shim_train.c — TEMPORARY stand-in on branch `train` until branch `sp` lands src/sp/sp.c:
 * only the symbols the model links against, refusing sp > 1. Deleted at the merge of `sp`. */
#include <stdlib.h>

#include "sp/sp.h"

lasp_status lasp_sp_attn_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const float *kv_in, float *o, float *kv_out,
                             lasp_sp_cache *cache) {
    (void)sp, (void)a, (void)q, (void)k, (void)v, (void)slopes, (void)kv_in, (void)o, (void)kv_out, (void)cache;
    return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "sequence parallelism is not in this build yet");
}

lasp_status lasp_sp_attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const float *q, const float *k,
                             const float *v, const float *slopes, const lasp_sp_cache *cache, const float *do_,
                             const float *dkv_out, float *dq, float *dk, float *dv, float *dkv_in) {
    (void)sp, (void)a, (void)q, (void)k, (void)v, (void)slopes, (void)cache, (void)do_, (void)dkv_out, (void)dq;
    (void)dk, (void)dv, (void)dkv_in;
    return lasp_fail(&ctx->err, LASP_ERR_UNSUPPORTED, "sequence parallelism is not in this build yet");
}

void lasp_sp_cache_free(lasp_sp_cache *c) {
    free(c->kv_in);
    c->kv_in = NULL, c->n = 0;
}
