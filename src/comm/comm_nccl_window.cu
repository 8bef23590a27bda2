/* comm_nccl_window.cu — the device side of the nccl backend's one-sided transfers (comm_nccl.c has the
 * host side and says why they exist).
 *
 * A put is one small kernel on the communicator's stream: its blocks copy the bytes into the peer's window
 * over NVLink, each block fences (system scope) and counts itself, and the last one raises the peer's
 * counter with a release store — so the peer, which acquires the counter, sees every byte. A wait is one
 * thread polling this rank's counter with acquire loads; later work on the stream then reads the window.
 * Both fit on the few SMs that the compute leaves the communicator (the SP group's comm_sms). */
#if defined(LASP_HAVE_NCCL) && defined(LASP_HAVE_MPI)

#include <cuda_runtime.h>
#include <nccl.h>
/* NCCL's device headers leave parameters unused, which our warnings-as-errors would refuse */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include <nccl_device.h>
#pragma GCC diagnostic pop
#include <stdint.h>

#include "comm/comm_impl.h"

namespace {

/* the copy's blocks: 64 × 256 threads move a 1 MB state in four float4s each */
constexpr int PUT_BLOCKS = 64, PUT_THREADS = 256;

__global__ void k_peer_bases(ncclWindow_t w, int n, void **out) {
    for (int p = threadIdx.x; p < n; p += blockDim.x) out[p] = ncclGetPeerPointer(w, 0, p);
}

__global__ void k_put(const float4 *__restrict__ src, float4 *dst, size_t n4, unsigned *flag, unsigned value,
                      unsigned *arrived) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
    __syncthreads(); /* the block's stores before its thread 0's fence (cumulative) */
    if (threadIdx.x == 0) {
        __threadfence_system();
        if (atomicAdd(arrived, 1u) == gridDim.x - 1) {
            *arrived = 0; /* for the next put, which the stream starts after this one */
            __threadfence_system();
            asm volatile("st.release.sys.global.u32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
        }
    }
}

/* Until *flag has reached value (modulo 2^32: (int)(*flag − value) ≥ 0), polling with acquire loads at
 * system scope (they pair with the peer's release in k_put), so that what the peer stored before its release
 * is visible to the work after this kernel. A peer that never puts: a kernel error (trap) after limit_ns,
 * not a hang. */
__global__ void k_wait(const unsigned *flag, unsigned value, unsigned long long limit_ns) {
    uint64_t t0, now;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t0));
    for (;;) {
        unsigned v;
        asm volatile("ld.acquire.sys.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
        if ((int)(v - value) >= 0) return;
        __nanosleep(200);
        asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
        if (now - t0 > limit_ns) __trap();
    }
}

}  // namespace

extern "C" int lasp_nccl_lsa_size(void *nccl_comm) { return ncclTeamLsa((ncclComm_t)nccl_comm).nRanks; }

extern "C" int lasp_nccl_peer_bases(void *nccl_window, int n, void **bases) {
    void **d = NULL;
    cudaError_t e = cudaMalloc((void **)&d, (size_t)n * sizeof *d);
    if (e != cudaSuccess) return (int)e;
    k_peer_bases<<<1, 32>>>((ncclWindow_t)nccl_window, n, d);
    e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpy(bases, d, (size_t)n * sizeof *d, cudaMemcpyDeviceToHost);
    cudaFree(d);
    return (int)e;
}

extern "C" int lasp_nccl_put(const void *src, void *dst, size_t bytes, unsigned *flag, unsigned value,
                             unsigned *arrived, void *stream) {
    const size_t n4 = bytes / 16;
    const size_t want = (n4 + PUT_THREADS * 4 - 1) / (PUT_THREADS * 4); /* four float4s a thread, at most */
    const unsigned blocks = (unsigned)(want < 1 ? 1 : want > PUT_BLOCKS ? PUT_BLOCKS : want);
    k_put<<<blocks, PUT_THREADS, 0, (cudaStream_t)stream>>>((const float4 *)src, (float4 *)dst, n4, flag, value,
                                                            arrived);
    return (int)cudaGetLastError();
}

extern "C" int lasp_nccl_wait(const unsigned *flag, unsigned value, double timeout_s, void *stream) {
    k_wait<<<1, 1, 0, (cudaStream_t)stream>>>(flag, value, (unsigned long long)(timeout_s * 1e9));
    return (int)cudaGetLastError();
}

#endif
