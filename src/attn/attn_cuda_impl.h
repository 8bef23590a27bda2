/* attn_cuda_impl.h — internal interface between the CUDA driver (attn_cuda.cu) and the kernels
 * instantiated per dtype (attn_cuda_{bf16,f16,f32}.cu). See attn_cuda_kern.h for the design. */
#ifndef LASP_ATTN_CUDA_IMPL_H
#define LASP_ATTN_CUDA_IMPL_H

#include <cuda_runtime.h>
#include <stdint.h>

namespace lasp_cu {

/* One directed op (attn_cuda_kern.h): out = op(x, y, z) with state S_in, over positions p of the
 * sequence read forwards (rev = 0) or backwards (rev = 1). */
struct DirParams {
    const void *x, *y, *z;  /* [B,T,H,dx], [B,T,H,dx], [B,T,H,ezt] in the I/O dtype */
    void *out;              /* [B,T,H,ezt] */
    const float *slopes;    /* [H], device */
    float *ws;              /* [BH][ns][dx][ezt] fp32 segment states */
    const float *s_in;      /* [BH][dx][ezt] (or [BH][ezt][dx] when s_in_trans), NULL = 0 */
    float *s_end;           /* [BH][dx][ezt], NULL = not wanted */
    int64_t T;
    int H, BH;
    /* the heads this launch runs, bh0 .. bh0 + nbh − 1 of the BH (the SP schedule's head groups; plan_dir
     * sets nbh = BH when 0); every buffer above is indexed by the absolute head */
    int bh0, nbh;
    int dx, ezt;
    int seg, ns;  /* segment length (a multiple of 64) and count */
    int rev, sigma, s_in_trans;
    int out_only;  /* skip kernels 1–2: the workspace already holds the states entering each segment */
    int ws_trans;  /* ... as [dx'=ezt][ezt'=dx], the transposes of this op's (k_out reads them so) */
    int states_only;  /* run kernels 1–2 only: the segment states, for the SP schedule (attn_cuda_sp.h) */
    int wgmma;        /* the device runs the sm_90a kernels (attn_cuda_wgmma.h): bf16 passes on wgmma */
    int tma;          /* ... and the output pass as k_out_tma (attn_cuda_tma.h): 2, or 1 with per-thread stores */
    /* The SP schedule's finishing half (attn_cuda_sp.h): a state S that arrived for the whole piece, added
     * by the output kernel as λ^(σ + k·seg) S to the state entering segment k (what the scan would have
     * folded in), so that no extra pass over the workspace sits on the critical path. */
    const float *s_add;  /* [BH][dx][ezt] (or [BH][ezt][dx] when s_add_trans), NULL = none */
    int s_add_trans;
    /* The finishing half in two launches, so that a rank need not wait for the state to start: part 1 runs
     * only the (head, segment) blocks whose decay λ^(σ + k·seg) is exactly 0 in fp32 (the arriving state
     * cannot change them; s_add NULL), part 2 only the others (with s_add); 0 runs all. Every output
     * kernel (k_out, k_out_wg, k_out_tma) skips the other part's blocks, so that the parts write disjoint
     * outputs and may run on two streams at once. 3 (k_out_tma only): both parts in one launch, each CTA
     * running its share of part 1 first and then its share of part 2, whose first read of s_add waits until
     * *ready ≥ epoch (written on another stream once s_add is there): one tail instead of two. */
    int part;
    const unsigned *ready;
    unsigned epoch;
    int n_sm; /* the SMs the op may use (k_out_tma runs one persistent CTA on each): the device's, or fewer */
};

/* The z-slice width EZ that the kernels use: the widest whose fp32 state fits 64 registers a thread
 * (dx·EZ ≤ 8192, EZ ≤ 64) and whose split (f16, f32) tiles fit shared memory (EZ = 32 at dx = 256). */
inline int slice_cap(bool split, int dx) { return (split && dx == 256) ? 32 : (8192 / dx < 64 ? 8192 / dx : 64); }
inline int slice_width(bool split, int dx, int ezt) {
    const int cap = slice_cap(split, dx);
    return ezt >= cap ? cap : ezt >= 32 ? 32 : 16;
}

/* kernel 2 of a directed op (attn_cuda.cu) */
cudaError_t lasp_cu_scan(const DirParams &P, cudaStream_t st);
/* element (r, c) of a dx × ezt state m, stored as it is or (trans) as its ezt × dx transpose */
__host__ __device__ __forceinline__ float state_at(const float *m, bool trans, int dx, int ezt, int r, int c) {
    return trans ? m[(size_t)c * dx + r] : m[(size_t)r * ezt + c];
}
/* P.s_add of head bh, and the factor λ^(σ + seg·P.seg) that decays it to the start of segment seg */
__host__ __device__ __forceinline__ const float *s_add_of(const DirParams &P, int bh) {
    return P.s_add + (size_t)bh * P.dx * P.ezt;
}
__host__ __device__ __forceinline__ float s_add_decay(const DirParams &P, int seg, float slope) {
    return expf(-slope * ((float)P.sigma + (float)seg * (float)P.seg));
}
/* this block is not in part `part` (1 or 2; 0: all blocks are) of a finishing half */
__host__ __device__ __forceinline__ bool not_in_part(int part, const DirParams &P, int seg, float slope) {
    return part && (s_add_decay(P, seg, slope) == 0.f) != (part == 1);
}
/* this block belongs to the other launch of a finishing half in two parts (P.part 1 or 2) */
__host__ __device__ __forceinline__ bool other_part(const DirParams &P, int seg, float slope) {
    return P.part != 3 && not_in_part(P.part, P, seg, slope);
}

/* kernels 1–3 of a directed op for one I/O dtype */
cudaError_t launch_bf16(const DirParams &P, cudaStream_t st, int max_smem);
cudaError_t launch_f16(const DirParams &P, cudaStream_t st, int max_smem);
cudaError_t launch_f32(const DirParams &P, cudaStream_t st, int max_smem);

}  // namespace lasp_cu

#endif
