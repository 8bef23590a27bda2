/* attn_cuda_dir.h — the interface between the CUDA driver (attn_cuda.cu) and the kernels, which are
 * instantiated per I/O dtype (attn_cuda_{bf16,f16,f32}.cu). docs/CUDA.md describes the kernels. */
#ifndef LASP_ATTN_CUDA_DIR_H
#define LASP_ATTN_CUDA_DIR_H

#include <cuda_runtime.h>
#include <stdint.h>

namespace lasp_cu {

/* One directed op (docs/CUDA.md): out = op(x, y, z) with state S_in, over positions p of the sequence
 * read forwards (rev = 0) or backwards (rev = 1). */
struct DirParams {
    const void *x, *y, *z;  /* [B,T,H,dx], [B,T,H,dx], [B,T,H,ezt] in the I/O dtype */
    void *out;              /* [B,T,H,ezt] */
    const float *slopes;    /* [H], device */
    float *ws;              /* [BH][ns][dx][ezt] fp32 segment states */
    const float *s_in;      /* [BH][dx][ezt] (or [BH][ezt][dx] when s_in_trans), NULL = 0 */
    float *s_end;           /* [BH][dx][ezt], NULL = not wanted */
    int64_t T;
    int H, BH;
    int dx, ezt;
    int seg, ns;  /* segment length (a multiple of 64) and count */
    int rev, sigma, s_in_trans;
    int out_only;  /* skip kernels 1–2: the workspace already holds the states entering each segment */
    int ws_trans;  /* ... as [dx'=ezt][ezt'=dx], the transposes of this op's (the output pass reads them so) */
    int states_only;  /* run kernels 1–2 only: the segment states, for the SP schedule (attn_cuda_sp.h) */
    int wgmma;        /* run the sm_90a kernels where they apply (bf16, dx 64 or 128, 64-column slices) */
    /* The SP schedule's finishing half (attn_cuda_sp.h): a state S that arrived for the whole piece, added
     * by the output kernel as λ^(σ + k·seg) S to the state entering segment k (what the scan would have
     * folded in), so that no extra pass over the workspace sits on the critical path. */
    const float *s_add;  /* [BH][dx][ezt] (or [BH][ezt][dx] when s_add_trans), NULL = none */
    int s_add_trans;
    /* The finishing half in two launches, so that a rank need not wait for the state to start: part 1 runs
     * only the (head, segment) blocks whose decay λ^(σ + k·seg) is exactly 0 in fp32 (the arriving state
     * cannot change them; s_add NULL), part 2 only the others (with s_add); 0 runs all. The parts write
     * disjoint outputs and may run on two streams at once. */
    int part;
    int n_sm; /* the SMs the op may use (the TMA output pass runs one persistent CTA on each) */
};

/* Which kernels a launch ran, for reports and tests (static names). */
struct Ran {
    const char *state_pass, *out_pass;
};

/* The z-slice width EZ that the kernels use: the widest whose fp32 state fits 64 registers a thread
 * (dx·EZ ≤ 8192, EZ ≤ 64) and whose split (f16, f32) tiles fit shared memory (EZ = 32 at dx = 256). */
inline int slice_cap(bool split, int dx) { return (split && dx == 256) ? 32 : (8192 / dx < 64 ? 8192 / dx : 64); }
inline int slice_width(bool split, int dx, int ezt) {
    const int cap = slice_cap(split, dx);
    return ezt >= cap ? cap : ezt >= 32 ? 32 : 16;
}

/* kernel 2 of a directed op: the scan over segment states (attn_cuda_scan.cu) */
cudaError_t launch_scan(const DirParams &P, cudaStream_t st);
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
/* this block is not in part `part` (1 or 2; 0: every block is) of a finishing half */
__host__ __device__ __forceinline__ bool not_in_part(int part, const DirParams &P, int seg, float slope) {
    return part && (s_add_decay(P, seg, slope) == 0.f) != (part == 1);
}

/* kernels 1–3 of a directed op for one I/O dtype; *ran says which ran */
cudaError_t launch_bf16(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran);
cudaError_t launch_f16(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran);
cudaError_t launch_f32(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran);

}  // namespace lasp_cu

#endif
