/* gemm_lt_cuda.c — the products on cuBLASLt (gemm_lt_cuda.h): a plan per shape (descriptors, layouts and the
 * heuristic's algorithm), made on first use and kept. */
#include "model/gemm_lt_cuda.h"

#include <cublasLt.h>
#include <stdlib.h>

#define LT_WORKSPACE (32 << 20) /* bytes the heuristic may give an algorithm */
#define LT_PLANS 64             /* distinct shapes of a model's step: a dozen or so */

typedef struct lt_plan {
    int ta, tb, d16, beta0;
    int64_t M, N, K, lda, ldb, ldc;
    unsigned align; /* the smallest alignment of the pointers the plan was made for */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

struct lasp_lt {
    cublasLtHandle_t h;
    cudaStream_t stream;
    void *ws;
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
    if (lt->h) cublasLtDestroy(lt->h);
    free(lt);
}

static unsigned alignment(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && a % al) al /= 2;
    return al;
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
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(lt->h, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &found);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && !found) s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (s == CUBLAS_STATUS_SUCCESS) p->algo = res.algo;
    return s;
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
        if (q->ta == key.ta && q->tb == key.tb && q->d16 == key.d16 && q->beta0 == key.beta0 && q->M == M &&
            q->N == N && q->K == K && q->lda == lda && q->ldb == ldb && q->ldc == ldc && q->align == al)
            p = &lt->plan[i];
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
    const float one = 1.0f;
    return cublasLtMatmul(lt->h, p->op, &one, A, p->a, B, p->b, &beta, C, p->c, D, p->c, &p->algo, lt->ws,
                          LT_WORKSPACE, lt->stream);
}
