/* gemm_lt_cuda.h — the GPU model's matrix products on cuBLASLt (bf16 operands, fp32 accumulation), each shape's
 * algorithm chosen on its first call (the fastest of the heuristic's candidates that sum over K in one
 * place, which gave the same bits wherever measured) and kept, so that a step's products are the same bits
 * every time.
 * Unlike cublasGemmEx, the output D may be another buffer than the added C: a residual add needs no copy first.
 * The bf16 model's products all run here (f32: cublasSgemm). */
#ifndef LASP_MODEL_GEMM_LT_CUDA_H
#define LASP_MODEL_GEMM_LT_CUDA_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_lt lasp_lt;

/* A handle on `stream` with its workspace */
lasp_status lasp_lt_create(cudaStream_t stream, lasp_lt **out, lasp_err *err);
void lasp_lt_free(lasp_lt *lt);

/* D[M, N] = op(A) · op(B) + beta · C, column-major as cuBLAS's gemm: A and B bf16, C and D fp32 or (d16) bf16,
 * C NULL or D itself for none other (beta then applies to D) */
cublasStatus_t lasp_lt_gemm(lasp_lt *lt, cublasOperation_t ta, cublasOperation_t tb, int64_t M, int64_t N, int64_t K,
                            const void *A, int64_t lda, const void *B, int64_t ldb, float beta, const void *C, void *D,
                            int64_t ldc, int d16);

#ifdef __cplusplus
}
#endif

#endif
