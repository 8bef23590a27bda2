/* wait_cuda.h — a device thread's wait for a counter that another stream, kernel or GPU raises (CUDA code
 * only). Shared by the attention's one-launch finish (attn_cuda_tma.h, a counter set on this GPU) and the
 * comm layer's one-sided transfers (comm_nccl_window.cu, a counter set by a peer GPU over NVLink). */
#ifndef LASP_WAIT_CUDA_H
#define LASP_WAIT_CUDA_H

#include <stdint.h>

/* Until *counter has reached value (modulo 2^32: (int)(*counter − value) ≥ 0), polling with acquire loads
 * at system scope (they pair with a release of this GPU or of a peer's), so that what the writer stored
 * before its release is visible after the return. A counter that never gets there is a kernel error (trap)
 * after limit_ns, not a hang. Not inlined: the poll's registers stay out of the caller's loops (ptxas, the
 * output pass at DX = 128: 24 → 82 bytes of spills when inlined). */
static __device__ __noinline__ void lasp_wait_counter(const unsigned *counter, unsigned value, uint64_t limit_ns) {
    uint64_t t0, now;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t0));
    for (;;) {
        unsigned v;
        asm volatile("ld.acquire.sys.global.u32 %0, [%1];\n" : "=r"(v) : "l"(counter) : "memory");
        if ((int)(v - value) >= 0) return;
        __nanosleep(200);
        asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
        if (now - t0 > limit_ns) __trap();
    }
}

#endif
