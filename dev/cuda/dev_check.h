/* dev/cuda/dev_check.h — what the kernel playgrounds share: a failed CUDA call ends the program, naming it;
 * the median time of a launch sequence; a small deterministic source of inputs. */
#ifndef LASP_DEV_CHECK_H
#define LASP_DEV_CHECK_H

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#define CU(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

/* uniform in [-0.5, 0.5), from a 64-bit LCG state */
static inline float dev_rnd(uint64_t &s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* the median ms of 20 CUDA-event-timed runs of run() on the default stream, after 3 warm-ups */
template <typename F>
static float dev_median_ms(F run) {
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) run();
    std::vector<float> t;
    for (int i = 0; i < 20; i++) {
        CU(cudaEventRecord(a));
        run();
        CU(cudaEventRecord(b));
        CU(cudaEventSynchronize(b));
        float ms;
        CU(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    cudaEventDestroy(a), cudaEventDestroy(b);
    return t[t.size() / 2];
}

#endif
