/* gemm_lt_cuda.c — the products on cuBLASLt (gemm_lt_cuda.h): a plan per shape (descriptors, layouts and an
 * algorithm), made on first use and kept. The heuristic's first algorithm is often not the fastest it offers
 * (bench/RESULTS.md, dev/cuda/gemm.cu), so a new shape's candidates are timed on the call's own operands and
 * the fastest kept; only those that split no sum over K are candidates, which gave the same bits as one
 * another wherever measured (dev/cuda/gemm.cu), so which one wins does not change a result. */
#include "model/gemm_lt_cuda.h"

#include <cublasLt.h>
#include <stdlib.h>

#define LT_WORKSPACE (32 << 20) /* bytes the heuristic may give an algorithm */
#define LT_PLANS 64             /* distinct shapes of a model's step: a dozen or so */
#define LT_CANDIDATES 8         /* algorithms the heuristic is asked for */

typedef struct lt_plan {
    int ta, tb, d16, beta0;
    int64_t M, N, K, lda, ldb, ldc;
    unsigned align; /* the smallest alignment of the pointers the plan was made for */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    int ncand; /* the candidates, until the first call times them (pick) and keeps one in algo */
    cublasLtMatmulAlgo_t cand[LT_CANDIDATES];
} lt_plan;

struct lasp_lt {
    cublasLtHandle_t h;
    cudaStream_t stream;
    void *ws;
    cudaEvent_t ev[2];
    int n;
    lt_plan plan[LT_PLANS];
};

lasp_status lasp_lt_create(cudaStream_t stream, lasp_lt **out, lasp_err *err) {
    lasp_lt *lt = calloc(1, sizeof *lt);
    if (!lt) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the cuBLASLt handle");
    lt->stream = stream;
    if (cublasLtCreate(&lt->h) != CUBLAS_STATUS_SUCCESS) {
        free(lt);
        return lasp_fail(err, LASP_ERR_CUDA, "cuBLASLt would not start");
    }
    if (cudaEventCreate(&lt->ev[0]) != cudaSuccess || cudaEventCreate(&lt->ev[1]) != cudaSuccess) {
        cudaGetLastError();
        lasp_lt_free(lt);
        return lasp_fail(err, LASP_ERR_CUDA, "no CUDA events for timing the products");
    }
    if (cudaMalloc(&lt->ws, LT_WORKSPACE) != cudaSuccess) {
        cudaGetLastError();
        lasp_lt_free(lt);
        return lasp_fail(err, LASP_ERR_NOMEM, "no GPU memory for cuBLASLt's workspace (%d MiB)", LT_WORKSPACE >> 20);
    }
    *out = lt;
    return LASP_OK;
}

void lasp_lt_free(lasp_lt *lt) {
    if (!lt) return;
    for (int i = 0; i < lt->n; i++) {
        lt_plan *p = &lt->plan[i];
        cublasLtMatrixLayoutDestroy(p->a), cublasLtMatrixLayoutDestroy(p->b), cublasLtMatrixLayoutDestroy(p->c);
        cublasLtMatmulDescDestroy(p->op);
    }
    cudaFree(lt->ws);
    for (int i = 0; i < 2; i++)
        if (lt->ev[i]) cudaEventDestroy(lt->ev[i]);
    if (lt->h) cublasLtDestroy(lt->h);
    free(lt);
}

static unsigned alignment(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && a % al) al /= 2;
    return al;
}

static int whole_sums(const cublasLtMatmulAlgo_t *algo);

/* Whether two plans are of one shape (transposes, output type, sizes, strides, alignment), beta aside */
static int same_shape(const lt_plan *a, const lt_plan *b) {
    return a->ta == b->ta && a->tb == b->tb && a->d16 == b->d16 && a->M == b->M && a->N == b->N && a->K == b->K &&
           a->lda == b->lda && a->ldb == b->ldb && a->ldc == b->ldc && a->align == b->align;
}

static cublasStatus_t make_plan(lasp_lt *lt, lt_plan *p) {
    const cublasOperation_t ta = (cublasOperation_t)p->ta, tb = (cublasOperation_t)p->tb;
    const cudaDataType_t ct = p->d16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasStatus_t s = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)(ta == CUBLAS_OP_N ? p->M : p->K),
                                       (uint64_t)(ta == CUBLAS_OP_N ? p->K : p->M), p->lda);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)(tb == CUBLAS_OP_N ? p->K : p->N),
                                       (uint64_t)(tb == CUBLAS_OP_N ? p->N : p->K), p->ldb);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&p->c, ct, (uint64_t)p->M, (uint64_t)p->N, p->ldc);
    cublasLtMatmulPreference_t pref = NULL;
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulPreferenceCreate(&pref);
    const size_t ws = LT_WORKSPACE;
    const uint32_t al = p->align;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    const cublasLtMatmulPreferenceAttributes_t aligns[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && s == CUBLAS_STATUS_SUCCESS; i++)
        s = cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &al, sizeof al);
    cublasLtMatmulHeuristicResult_t res[LT_CANDIDATES];
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(lt->h, p->op, p->a, p->b, p->c, p->c, pref, LT_CANDIDATES, res, &found);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && !found) s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    p->algo = res[0].algo;
    for (int i = 0; i < found; i++)
        if (whole_sums(&res[i].algo)) p->cand[p->ncand++] = res[i].algo;
    return s;
}

/* Whether an algorithm sums each output over the whole of K in one place (no split of K, no reduction after),
 * as the heuristic's usual first choice does: a split sums in another order, and so to other bits */
static int whole_sums(const cublasLtMatmulAlgo_t *algo) {
    int32_t split = 1;
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_NONE;
    size_t w;
    if (cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split, &w) !=
        CUBLAS_STATUS_SUCCESS)
        return 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &w) !=
        CUBLAS_STATUS_SUCCESS)
        return 0;
    return split <= 1 && red == CUBLASLT_REDUCTION_SCHEME_NONE;
}

/* The plan's algorithm: the fastest candidate, each run once and then timed over two runs, where running the
 * call more than once changes nothing (D does not add to itself); else that of the plan of the same shape that
 * was timed, or the heuristic's first. The host waits for the timing: once a shape, in a run's first step. */
static void pick(lasp_lt *lt, lt_plan *p, const void *A, const void *B, float beta, const void *C, void *D) {
    const int n = p->ncand;
    p->ncand = 0;
    if (beta != 0 && C == D) {
        for (int i = 0; i < lt->n; i++) {
            const lt_plan *q = &lt->plan[i];
            if (q != p && !q->ncand && same_shape(q, p) && whole_sums(&q->algo)) {
                p->algo = q->algo;
                return;
            }
        }
        return;
    }
    if (n < 2) {
        if (n == 1) p->algo = p->cand[0];
        return;
    }
    const float one = 1.0f;
    float best = 0;
    int failed = 0;
    for (int i = 0; i < n; i++) {
        float ms = 0;
        int ok = 1;
        for (int r = 0; r < 3 && ok; r++) {
            if (r == 1) ok = cudaEventRecord(lt->ev[0], lt->stream) == cudaSuccess;
            ok = ok && cublasLtMatmul(lt->h, p->op, &one, A, p->a, B, p->b, &beta, C, p->c, D, p->c, &p->cand[i],
                                      lt->ws, LT_WORKSPACE, lt->stream) == CUBLAS_STATUS_SUCCESS;
        }
        ok = ok && cudaEventRecord(lt->ev[1], lt->stream) == cudaSuccess &&
             cudaEventSynchronize(lt->ev[1]) == cudaSuccess &&
             cudaEventElapsedTime(&ms, lt->ev[0], lt->ev[1]) == cudaSuccess;
        if (ok && (best == 0 || ms < best)) best = ms, p->algo = p->cand[i];
        failed |= !ok;
    }
    if (failed) cudaGetLastError(); /* a candidate that would not run is not kept, and leaves no error behind */
}

cublasStatus_t lasp_lt_gemm(lasp_lt *lt, cublasOperation_t ta, cublasOperation_t tb, int64_t M, int64_t N, int64_t K,
                            const void *A, int64_t lda, const void *B, int64_t ldb, float beta, const void *C, void *D,
                            int64_t ldc, int d16) {
    if (!C) C = D;
    unsigned al = alignment(A), x;
    if ((x = alignment(B)) < al) al = x;
    if ((x = alignment(C)) < al) al = x;
    if ((x = alignment(D)) < al) al = x;
    const lt_plan key = {.ta = ta, .tb = tb, .d16 = d16, .beta0 = beta == 0, .M = M, .N = N, .K = K, .lda = lda,
                         .ldb = ldb, .ldc = ldc, .align = al};
    lt_plan *p = NULL;
    for (int i = 0; i < lt->n && !p; i++) {
        const lt_plan *q = &lt->plan[i];
        if (same_shape(q, &key) && q->beta0 == key.beta0) p = &lt->plan[i];
    }
    if (!p) {
        if (lt->n == LT_PLANS) return CUBLAS_STATUS_ALLOC_FAILED;
        p = &lt->plan[lt->n];
        *p = key;
        const cublasStatus_t s = make_plan(lt, p);
        if (s != CUBLAS_STATUS_SUCCESS) {
            cublasLtMatrixLayoutDestroy(p->a), cublasLtMatrixLayoutDestroy(p->b), cublasLtMatrixLayoutDestroy(p->c);
            cublasLtMatmulDescDestroy(p->op);
            return s;
        }
        lt->n++;
    }
    if (p->ncand) pick(lt, p, A, B, beta, C, D);
    const float one = 1.0f;
    return cublasLtMatmul(lt->h, p->op, &one, A, p->a, B, p->b, &beta, C, p->c, D, p->c, &p->algo, lt->ws,
                          LT_WORKSPACE, lt->stream);
}
