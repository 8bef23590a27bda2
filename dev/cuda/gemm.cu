/* dev/cuda/gemm.cu — playground for the model's matrix products: each product of a 1B step (the shapes,
 * transposes and output types src/model/model_cuda.c asks cuBLASLt for) timed with the algorithm the
 * heuristic ranks first against the next ones it offers (the library times those that split no sum over K and
 * keeps the fastest), whether those give the same bits, and the head's chunk of rows as the library sized it
 * before (1048) against a multiple of 256.
 *
 *   build/dev/gemm [N ...]      (tokens a step; default 8192 32768)
 *
 * Each algorithm's time: the best of three rounds (the algorithms interleaved in each) of the median of 20
 * CUDA-event-timed runs after 3 warm-ups, on random bf16 operands; TFLOP/s = 2·M·N·K / time. */
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dev_check.h"

#define LT(call)                                                                          \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            fprintf(stderr, "%s:%d %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, (int)s_); \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

#define WS (32 << 20)
#define TOP 16

struct prod {
    const char *name;
    int ta, tb, c16;
    long M, N, K;
    float beta;
};

static cublasLtHandle_t h;
static void *ws;

/* random bf16 in about [-1, 1): the products' power, and so the clocks, depend on the data */
__global__ void k_fill(uint16_t *x, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t v = (uint32_t)i * 2654435761u ^ seed;
        v ^= v >> 15, v *= 2246822519u, v ^= v >> 13;
        const float f = (float)(v & 0xffff) / 32768.0f - 1.0f;
        x[i] = (uint16_t)(__float_as_uint(f) >> 16);
    }
}

/* one product: the heuristic's first TOP algorithms, each timed */
static void run(const prod &p, void *A, void *B, void *C) {
    const cublasOperation_t ta = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const long lda = p.ta ? p.K : p.M, ldb = p.tb ? p.N : p.K;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, p.ta ? p.K : p.M, p.ta ? p.M : p.K, lda));
    LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, p.tb ? p.N : p.K, p.tb ? p.K : p.N, ldb));
    LT(cublasLtMatrixLayoutCreate(&lc, p.c16 ? CUDA_R_16BF : CUDA_R_32F, p.M, p.N, p.M));
    cublasLtMatmulPreference_t pref;
    LT(cublasLtMatmulPreferenceCreate(&pref));
    const size_t wsb = WS;
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
    cublasLtMatmulHeuristicResult_t res[TOP];
    int found = 0;
    LT(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, TOP, res, &found));
    const double flop = 2.0 * p.M * p.N * p.K;
    const float one = 1.0f;
    const size_t cbytes = (size_t)p.M * p.N * (p.c16 ? 2 : 4);
    /* the outputs compared bit for bit (beta 0 for the check) */
    const float zero = 0;
    std::vector<char> ref(cbytes), out(cbytes);
    /* the best of three rounds, the algorithms interleaved within each round: the clocks drift as the GPU warms */
    std::vector<float> ms(found, 1e30f);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < found; i++) {
            const float t = dev_median_ms([&] {
                cublasLtMatmul(h, op, &one, A, la, B, lb, &p.beta, C, lc, C, lc, &res[i].algo, ws, WS, 0);
            });
            if (cudaGetLastError() == cudaSuccess) ms[i] = std::min(ms[i], t);
        }
    printf("  %-22s %6ld %6ld %6ld\n", p.name, p.M, p.N, p.K);
    int have_ref = 0;
    for (int i = 0; i < found; i++) {
        LT(cublasLtMatmul(h, op, &one, A, la, B, lb, &zero, C, lc, C, lc, &res[i].algo, ws, WS, 0));
        int tile = 0, splitk = 0, red = 0, stages = 0, cluster = 0, swz = 0;
        size_t w;
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster,
                                             sizeof cluster, &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof swz, &w);
        /* the bits of each algorithm that sums over the whole of K against the first such one */
        const char *bits = "(split K)";
        if (splitk <= 1 && red == 0) {
            CU(cudaMemcpy(have_ref ? out.data() : ref.data(), C, cbytes, cudaMemcpyDeviceToHost));
            bits = !have_ref++ || !memcmp(ref.data(), out.data(), cbytes) ? "same bits" : "OTHER BITS";
        }
        printf("    #%d %8.3f ms %5.0f TF/s  %5.2f x  tile %3d splitK %2d red %d stages %3d cluster %2d swz %d "
               "ws %7zu  %s\n",
               i, ms[i], flop / ms[i] / 1e9, ms[0] / ms[i], tile, splitk, red, stages, cluster, swz,
               res[i].workspaceSize, bits);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
}

int main(int argc, char **argv) {
    const long C = 2048, F = 5632, V = 64000;
    std::vector<long> Ns;
    for (int i = 1; i < argc; i++) Ns.push_back(atol(argv[i]));
    if (Ns.empty()) Ns = {8192, 32768};
    LT(cublasLtCreate(&h));
    CU(cudaMalloc(&ws, WS));
    const long chunk = (256l << 20) / (4 * V), chunk256 = chunk / 256 * 256;
    for (long N : Ns) {
        /* the library's calls (column-major: M is the output's columns, N the tokens) */
        const prod ps[] = {
            {"fwd wqkvu", 0, 0, 0, 4 * C, N, C, 0},      {"fwd wo (+res)", 0, 0, 0, C, N, C, 1},
            {"fwd w12 (bf16 out)", 0, 0, 1, 2 * F, N, C, 0}, {"fwd w3 (+res)", 0, 0, 0, C, N, F, 1},
            {"bwd_in w3 (bf16)", 1, 0, 1, F, N, C, 0},   {"bwd_in w12", 1, 0, 0, C, N, 2 * F, 0},
            {"bwd_in wo", 1, 0, 0, C, N, C, 0},           {"bwd_in wqkvu", 1, 0, 0, C, N, 4 * C, 0},
            {"bwd_w w3", 0, 1, 0, C, F, N, 0},            {"bwd_w w12", 0, 1, 0, 2 * F, C, N, 0},
            {"bwd_w wo", 0, 1, 0, C, C, N, 0},            {"bwd_w wqkvu", 0, 1, 0, 4 * C, C, N, 0},
            {"head fwd (1048 rows)", 0, 0, 0, V, chunk, C, 0}, {"head fwd (1024 rows)", 0, 0, 0, V, chunk256, C, 0},
            {"head bwd_in (1048)", 1, 0, 0, C, chunk, V, 0}, {"head bwd_in (1024)", 1, 0, 0, C, chunk256, V, 0},
            {"head bwd_w (1048)", 0, 1, 0, V, C, chunk, 1},  {"head bwd_w (1024)", 0, 1, 0, V, C, chunk256, 1},
        };
        size_t big = 0;
        for (const prod &p : ps) {
            const size_t a = p.M * p.K, b = p.K * p.N, c = p.M * p.N;
            big = std::max(big, std::max(a, std::max(b, c)));
        }
        void *A, *B, *Cc;
        CU(cudaMalloc(&A, big * 2));
        CU(cudaMalloc(&B, big * 2));
        CU(cudaMalloc(&Cc, big * 4));
        k_fill<<<1024, 256>>>((uint16_t *)A, big, 1);
        k_fill<<<1024, 256>>>((uint16_t *)B, big, 2);
        CU(cudaMemset(Cc, 0, big * 4));
        printf("# N %ld (1B preset: C %ld F %ld V %ld; the head's chunk of rows %ld before, %ld now)\n", N, C, F,
               V, chunk, chunk256);
        for (const prod &p : ps) run(p, A, B, Cc);
        cudaFree(A), cudaFree(B), cudaFree(Cc);
    }
    return 0;
}
