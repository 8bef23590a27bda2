/* attn_kern_launch.h — one directed op's kernels for one I/O dtype: the choice between the portable
 * mma.sync kernels (attn_kern_sm80.h) and Hopper's (attn_kern_sm90.h, attn_kern_sm90_out.h), the grid,
 * and the launches of kernel 1, the scan and kernel 3. Included by attn_cuda_{bf16,f16,f32}.cu. */
#ifndef LASP_ATTN_KERN_LAUNCH_H
#define LASP_ATTN_KERN_LAUNCH_H

#include "attn/attn_kern_sm80.h"
#include "attn/attn_kern_sm90.h"
#include "attn/attn_kern_sm90_out.h"

namespace lasp_cu {

/* Hopper's kernels run bf16 at DX 64 and 128 in 64-column slices, where the driver asks for them (P.wgmma:
 * the device runs the sm_90a code and the context allows it) */
template <typename T, int DX, int EZ>
constexpr bool has_sm90 = __is_same(T, bf16) && EZ == wg::EZ && (DX == 64 || DX == 128);

template <typename T, int DX, int EZ>
cudaError_t launch_dir(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran) {
    typedef Smem<T, DX, EZ> S;
    bool sm90 = false;
    if constexpr (has_sm90<T, DX, EZ>) sm90 = P.wgmma != 0;
    size_t out_bytes = S::out_bytes;
    if constexpr (has_sm90<T, DX, EZ>) {
        if (sm90) out_bytes = tma::Smem<DX>::bytes;
    }
    if ((int)out_bytes > max_smem) return cudaErrorInvalidConfiguration;
    const dim3 grid(P.ezt / EZ, P.ns, P.BH);
    ran->state_pass = ran->out_pass = nullptr;
    cudaError_t e = cudaSuccess;
    if (!P.out_only) {
        if constexpr (has_sm90<T, DX, EZ>) {
            if (sm90) e = launch(k_state_wg<DX>, grid, 128, wg::Smem<DX>::state_bytes, st, P);
        }
        if (!sm90) e = launch(k_state<T, DX, EZ>, grid, NTHR, S::state_bytes, st, P);
        if (e != cudaSuccess) return e;
        if ((e = launch_scan(P, st)) != cudaSuccess) return e;
        ran->state_pass = sm90 ? "k_state_wg" : "k_state";
        if (P.states_only) return cudaSuccess;
    }
    if constexpr (has_sm90<T, DX, EZ>) {
        if (sm90) {
            ran->out_pass = "k_out_tma";
            return launch_out_tma<DX>(P, grid, st);
        }
    }
    ran->out_pass = "k_out";
    return launch(k_out<T, DX, EZ>, grid, NTHR_OUT, S::out_bytes, st, P);
}

/* EZ as slice_width() (attn_cuda_dir.h) picks it. */
constexpr int EZ_ANY = 16;
template <typename T, int DX>
cudaError_t launch_dx(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran) {
    constexpr int CAP = (Smem<T, DX, EZ_ANY>::SPLIT && DX == 256) ? 32 : (8192 / DX < 64 ? 8192 / DX : 64);
    static_assert(CAP == 32 || CAP == 64, "slice widths");
    if (P.ezt >= CAP) return launch_dir<T, DX, CAP>(P, st, max_smem, ran);
    if constexpr (CAP > 32) {
        if (P.ezt >= 32) return launch_dir<T, DX, 32>(P, st, max_smem, ran);
    }
    return launch_dir<T, DX, 16>(P, st, max_smem, ran);
}

template <typename T>
cudaError_t launch_any(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran) {
    switch (P.dx) {
    case 16: return launch_dx<T, 16>(P, st, max_smem, ran);
    case 32: return launch_dx<T, 32>(P, st, max_smem, ran);
    case 64: return launch_dx<T, 64>(P, st, max_smem, ran);
    case 128: return launch_dx<T, 128>(P, st, max_smem, ran);
    case 256: return launch_dx<T, 256>(P, st, max_smem, ran);
    default: return cudaErrorInvalidValue;
    }
}

}  // namespace lasp_cu

#endif
