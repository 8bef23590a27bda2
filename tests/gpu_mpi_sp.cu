/* gpu_mpi_sp.cu — LASP across GPUs (one process per GPU, under mpirun): every rank's outputs,
 * gradients and boundary states of the chain and of LASP-2 against one GPU running the whole
 * sequence (1e-2 relative for bf16, 1e-4 for f32), and the gathered result against the fp64
 * reference on a small shape. Verdicts are reduced over the ranks (mpi_test.h); rank 0 prints them. */
#include <cuda_runtime.h>
#include <math.h>
#include <mpi.h>
#include <string.h>

#include "comm/comm.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "lasp.h"
#include "sp/sp.h"
#include "mpi_test.h"

static int world_rank;

/* n normals (× scale), the same on every rank: blocks of 2^20 drawn from streams seeded by (seed, block),
 * on up to 8 threads (drawing them one by one took most of this test's minutes on 4 GPUs) */
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float *randn(uint64_t seed, size_t n, double scale) {
    float *x = (float *)malloc(n * sizeof *x);
    const size_t blk = (size_t)1 << 20;
    const long nb = (long)((n + blk - 1) / blk);
#pragma omp parallel for num_threads(8) schedule(static)
    for (long b = 0; b < nb; b++) {
        lasp_rng r;
        lasp_rng_seed(&r, mix64(mix64(seed) + (uint64_t)b)); /* unrelated streams for near seeds */
        const size_t end = (size_t)(b + 1) * blk < n ? (size_t)(b + 1) * blk : n;
        for (size_t i = (size_t)b * blk; i < end; i++) x[i] = (float)(scale * lasp_rng_normal(&r));
    }
    return x;
}

/* A device copy of host f32 x in dtype t (rounded), or an empty device buffer if x is NULL. */
static void *up(const float *x, size_t n, lasp_dtype t) {
    void *d = NULL, *h = malloc(n * lasp_dtype_size(t));
    cudaMalloc(&d, n * lasp_dtype_size(t));
    if (x) {
        lasp_convert(h, t, x, LASP_F32, n);
        cudaMemcpy(d, h, n * lasp_dtype_size(t), cudaMemcpyHostToDevice);
    } else {
        cudaMemset(d, 0xff, n * lasp_dtype_size(t));  /* poison: every element must be written */
    }
    free(h);
    return d;
}

static float *down(const void *d, size_t n, lasp_dtype t) {
    void *h = malloc(n * lasp_dtype_size(t));
    float *x = (float *)malloc(n * sizeof(float));
    cudaMemcpy(h, d, n * lasp_dtype_size(t), cudaMemcpyDeviceToHost);
    lasp_convert(x, LASP_F32, h, t, n);
    free(h);
    return x;
}

/* rows [t0, t0+Tl) of every batch entry of a [B, T, R] tensor */
static float *slice(const float *full, int64_t B, int64_t T, int64_t t0, int64_t Tl, int64_t R) {
    float *p = (float *)malloc((size_t)(B * Tl * R) * sizeof(float));
    for (int64_t b = 0; b < B; b++) memcpy(p + b * Tl * R, full + (b * T + t0) * R, (size_t)(Tl * R) * sizeof(float));
    return p;
}

static double rel(const float *x, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* One configuration: the SP run on every rank against the whole sequence on one GPU. */
static void run_case(lasp_comm *world, lasp_sp *sp, lasp_ctx *ctx, uint64_t seed, int64_t B, int64_t Tl, int64_t H,
                     int64_t D, lasp_dtype t, int fp64) {
    const int W = sp->sp_size, r = sp->sp_rank;
    const int64_t T = Tl * W;
    /* the same inputs on every rank: tensor i from the streams of seed·8 + i */
    const size_t n = (size_t)(B * T * H * D), ns = (size_t)(B * H * D * D), nl = n / W;
    float *q = randn(seed * 8, n, 1.0 / sqrt((double)D)), *k = randn(seed * 8 + 1, n, 1), *v = randn(seed * 8 + 2, n, 1);
    float *dO = randn(seed * 8 + 3, n, 1), *kv = randn(seed * 8 + 4, ns, 1), *dkv = randn(seed * 8 + 5, ns, 1);
    float *sl = (float *)malloc((size_t)H * sizeof(float));
    for (int64_t h = 0; h < H; h++) sl[h] = h == 0 ? 0.0f : h == 1 ? 8.0f : (float)pow(2.0, -8.0 * (h + 1) / (double)H);
    /* round the inputs to the dtype first, so both runs see the same values */
    float *inputs[4] = {q, k, v, dO};
    for (int i = 0; i < 4; i++) {
        void *tmp = malloc(n * lasp_dtype_size(t));
        lasp_convert(tmp, t, inputs[i], LASP_F32, n);
        lasp_convert(inputs[i], LASP_F32, tmp, t, n);
        free(tmp);
    }
    lasp_attn_desc full = {.B = B, .T = T, .H = H, .d = D, .e = D, .block = 0, .dtype = t};
    lasp_attn_desc loc = full;
    loc.T = Tl;

    /* the whole sequence on this GPU */
    float *O = (float *)malloc(n * 4), *KVO = (float *)malloc(ns * 4), *DQ = (float *)malloc(n * 4),
          *DK = (float *)malloc(n * 4), *DV = (float *)malloc(n * 4), *DKVI = (float *)malloc(ns * 4);
    CHECK(lasp_attn_fwd_host(ctx, &full, LASP_DEVICE_CUDA, q, k, v, sl, kv, O, KVO) == LASP_OK, "one GPU fwd: %s",
          lasp_ctx_error(ctx));
    CHECK(lasp_attn_bwd_host(ctx, &full, LASP_DEVICE_CUDA, q, k, v, sl, kv, dO, dkv, DQ, DK, DV, DKVI) == LASP_OK,
          "one GPU bwd: %s", lasp_ctx_error(ctx));

    /* this rank's piece, through LASP */
    const int64_t t0 = (int64_t)r * Tl;
    float *pq = slice(q, B, T, t0, Tl, H * D), *pk = slice(k, B, T, t0, Tl, H * D), *pv = slice(v, B, T, t0, Tl, H * D),
          *pdo = slice(dO, B, T, t0, Tl, H * D);
    void *gq = up(pq, nl, t), *gk = up(pk, nl, t), *gv = up(pv, nl, t), *gdo = up(pdo, nl, t);
    void *go = up(NULL, nl, t), *gdq = up(NULL, nl, t), *gdk = up(NULL, nl, t), *gdv = up(NULL, nl, t);
    float *gsl = (float *)up(sl, (size_t)H, LASP_F32), *gkv = (float *)up(kv, ns, LASP_F32),
          *gdkv = (float *)up(dkv, ns, LASP_F32), *gkvo = (float *)up(NULL, ns, LASP_F32),
          *gdkvi = (float *)up(NULL, ns, LASP_F32);
    lasp_sp_cache cache = {};
    const int first = r == 0, last = r == W - 1;
    CHECK(lasp_sp_attn_fwd(ctx, sp, &loc, (const float *)gq, (const float *)gk, (const float *)gv, gsl,
                           first ? gkv : NULL, (float *)go, last ? gkvo : NULL, &cache) == LASP_OK,
          "SP fwd: %s", lasp_ctx_error(ctx));
    CHECK(lasp_sp_attn_bwd(ctx, sp, &loc, (const float *)gq, (const float *)gk, (const float *)gv, gsl, &cache,
                           (const float *)gdo, last ? gdkv : NULL, (float *)gdq, (float *)gdk, (float *)gdv,
                           first ? gdkvi : NULL) == LASP_OK,
          "SP bwd: %s", lasp_ctx_error(ctx));
    lasp_err err = {};
    CHECK(cudaDeviceSynchronize() == cudaSuccess && lasp_comm_sync(sp->sp, &err) == LASP_OK, "sync: %s", err.msg);

    const double tol = t == LASP_F32 ? 1e-4 : 1e-2;
    float *ho = down(go, nl, t), *hdq = down(gdq, nl, t), *hdk = down(gdk, nl, t), *hdv = down(gdv, nl, t);
    float *ro = slice(O, B, T, t0, Tl, H * D), *rdq = slice(DQ, B, T, t0, Tl, H * D),
          *rdk = slice(DK, B, T, t0, Tl, H * D), *rdv = slice(DV, B, T, t0, Tl, H * D);
    struct { const char *name; const float *x, *ref; size_t n; } outs[6] = {
        {"o", ho, ro, nl}, {"dq", hdq, rdq, nl}, {"dk", hdk, rdk, nl}, {"dv", hdv, rdv, nl}};
    int n_outs = 4;
    float *hkvo = NULL, *hdkvi = NULL;
    if (last) outs[n_outs++] = {"kv_out", hkvo = down(gkvo, ns, LASP_F32), KVO, ns};
    if (first) outs[n_outs++] = {"dkv_in", hdkvi = down(gdkvi, ns, LASP_F32), DKVI, ns};
    double worst = 0;
    for (int i = 0; i < n_outs; i++) {
        double e = rel(outs[i].x, outs[i].ref, outs[i].n);
        worst = e > worst ? e : worst;
        CHECK(e <= tol, "rank %d %s: relative error %.3e vs one GPU > %.0e", world_rank, outs[i].name, e, tol);
    }
    /* the fp64 reference of the whole sequence, on a small shape (it is O(T²)) */
    if (fp64) {
        double *d8[7];
        const float *src[7] = {q, k, v, dO, kv, dkv, sl};
        const size_t cnt[7] = {n, n, n, n, ns, ns, (size_t)H};
        for (int i = 0; i < 7; i++) {
            d8[i] = (double *)malloc(cnt[i] * 8);
            for (size_t j = 0; j < cnt[i]; j++) d8[i][j] = src[i][j];
        }
        double *ref_o = (double *)malloc(n * 8), *ref_dq = (double *)malloc(n * 8), *ref_dk = (double *)malloc(n * 8),
               *ref_dv = (double *)malloc(n * 8);
        lasp_attn_desc f64 = full;
        f64.dtype = LASP_F64;
        lasp_attn_ref_fwd(ctx, &f64, d8[0], d8[1], d8[2], d8[6], d8[4], ref_o, NULL);
        lasp_attn_ref_bwd(ctx, &f64, d8[0], d8[1], d8[2], d8[6], d8[4], d8[3], d8[5], ref_dq, ref_dk, ref_dv, NULL);
        /* this rank's rows of the reference */
        double *rows = (double *)malloc(nl * 8);
        const double *refs[4] = {ref_o, ref_dq, ref_dk, ref_dv};
        const float *mine[4] = {ho, hdq, hdk, hdv};
        for (int i = 0; i < 4; i++) {
            for (int64_t b = 0; b < B; b++)
                memcpy(rows + b * Tl * H * D, refs[i] + (b * T + t0) * H * D, (size_t)(Tl * H * D) * 8);
            double e = lasp_rel_error_f32(mine[i], rows, nl);
            CHECK(e <= tol, "rank %d output %d vs the fp64 reference: %.3e > %.0e", world_rank, i, e, tol);
        }
        free(rows), free(ref_o), free(ref_dq), free(ref_dk), free(ref_dv);
        for (int i = 0; i < 7; i++) free(d8[i]);
    }
    double all_worst = 0;
    MPI_Allreduce(&worst, &all_worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    char name[200];
    snprintf(name, sizeof name, "SP %s, dp %d × sp %d GPUs, %s, B%lld T_local %lld H%lld D%lld%s (worst vs one GPU %.1e)",
             sp->mode == LASP_SP_CHAIN ? "chain" : "lasp2", sp->dp_size, W, lasp_dtype_name(t), (long long)B, (long long)Tl,
             (long long)H, (long long)D, fp64 ? ", + fp64 reference" : "", all_worst);
    mpi_case("%s", name);
    (void)world;
    lasp_sp_cache_free(&cache);
    void *dev[] = {gq, gk, gv, gdo, go, gdq, gdk, gdv, gsl, gkv, gdkv, gkvo, gdkvi};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
    void *host[] = {q, k, v, dO, kv, dkv, sl, O, KVO, DQ, DK, DV, DKVI, pq, pk, pv, pdo, ho, hdq, hdk, hdv,
                    ro, rdq, rdk, rdv, hkvo, hdkvi};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

int main(int argc, char **argv) {
    lasp_comm *world = NULL;
    lasp_err err = {};
    /* verdicts travel over host MPI; the NCCL world under test moves device memory only */
    if (lasp_comm_world(LASP_COMM_MPI, &argc, &argv, &mpi_test_world_, &err) != LASP_OK ||
        lasp_comm_world(LASP_COMM_NCCL, &argc, &argv, &world, &err) != LASP_OK) {
        printf("FAIL nccl world: %s\n", err.msg);
        return 1;
    }
    world_rank = lasp_comm_rank(world);
    const uint64_t seed = mpi_test_seed();
    lasp_ctx *ctx = NULL;
    lasp_ctx_create(NULL, &ctx);
    const int W = lasp_comm_size(world);
    /* every dp × sp layout of the job: the full matrix at sp = W, two cases for the others. The full matrix
     * runs a whole sequence of 8192 tokens at every W (T_local 8192 / W): every rank draws and checks the
     * whole sequence on the host, so a fixed T_local would make the test grow with W (4 GPUs at T_local 4096
     * took over 4 minutes, mostly drawing normals) */
    for (int spn = W; spn >= 1; spn--) {
        if (W % spn) continue;
        for (int mode = 0; mode < 2; mode++) {
            lasp_sp sp;
            CHECK(lasp_sp_init(world, spn, (lasp_sp_mode)mode, &sp, &err) == LASP_OK, "%s", err.msg);
            run_case(world, &sp, ctx, seed + 1, 1, 256, 2, 64, LASP_F32, 1);
            run_case(world, &sp, ctx, seed + 2, 1, 256, 2, 64, LASP_BF16, 1);
            if (spn == W) {
                const lasp_dtype types[2] = {LASP_BF16, LASP_F32};
                const int64_t Bs[2] = {1, 4}, Ds[2] = {64, 128};
                for (int ti = 0; ti < 2; ti++)
                    for (int bi = 0; bi < 2; bi++)
                        for (int di = 0; di < 2; di++)
                            run_case(world, &sp, ctx, seed + 10 + ti * 4 + bi * 2 + di, Bs[bi], 8192 / W, 16, Ds[di],
                                     types[ti], 0);
            }
            lasp_sp_free(&sp);
        }
    }
    lasp_ctx_free(ctx);
    lasp_comm_free(world);
    const int rc = mpi_test_exit();
    lasp_comm_free(mpi_test_world_);
    return rc;
}
