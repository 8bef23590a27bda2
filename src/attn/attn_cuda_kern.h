/* attn_cuda_kern.h — the fused CUDA kernels of the op (MATH.md §1–2). Included by the per-dtype
 * attn_cuda_{bf16,f16,f32}.cu files, which instantiate them; attn_cuda.cu drives them.
 *
 * ONE DIRECTED OP, USED FOUR TIMES
 * Every pass of the forward and the backward is the same operator, per (b, h), over positions p of
 * a sequence read forwards or backwards (token t = p or T−1−p):
 *
 *     out_p = Σ_{p' ≤ p} λ^{p−p'} (x_p · y_p') z_p'  +  λ^{p+σ} x_p S_in          (σ ∈ {0, 1})
 *     S_end = λ^T S_in + Σ_p λ^{T−σ−p} y_pᵀ z_p
 *
 *     forward  o  = op(x=q,  y=k,  z=v,  S_in=kv_in,       forwards,  σ=0),  S_end = kv_out
 *     dq          = op(x=dO, y=v,  z=k,  S_in=kv_inᵀ,      forwards,  σ=0)
 *     dv          = op(x=k,  y=q,  z=dO, S_in=dkv_out,     backwards, σ=1),  S_end = dkv_in
 *     dk          = op(x=v,  y=dO, z=q,  S_in=dkv_outᵀ,    backwards, σ=1)
 *
 * (MATH.md §2's backward formulas, with the transposed masks read as causal masks of the reversed
 * sequence; λ^{T−j} = λ^{p+1} for j = T−1−p gives σ = 1.)
 *
 * THREE KERNELS PER OP (the scan over block states of MATH.md §4, inside one device)
 * The sequence is cut into segments of `seg` tokens (a multiple of the chunk C = 64), so that
 * (b, h, z-slice, segment) fills every SM even at B·H = 16:
 *   1. k_state  per segment s: m'_s = Σ_{l} λ^{L_s−σ−l} y_lᵀ z_l       (fp32, tensor cores, one pass
 *                over y, z)                                               → workspace [BH][NS][DX][EZt]
 *   2. k_scan   per state element, Horner over segments (MATH.md §4): H_0 = S_in, H_{s+1} = γ_s H_s + m'_s;
 *                the workspace's m'_s is replaced by the state entering segment s, λ^σ H_s; S_end = H_NS.
 *   3. k_out    per segment: the state in registers (fp32), chunk by chunk:
 *                out = [(X Yᵀ) ⊙ D] Z + diag(λ^i) X KV;   KV ← λ^C KV + (diag(λ^{C−j}) Y)ᵀ Z
 * Exponents are combined before exp (λ^{i−j}, λ^i, λ^{C−j}, λ^{L−σ−l} from integer n ≥ 0): no λ^{−j}.
 *
 * TILES AND MMA
 * A CTA is 4 warps over a chunk of 64 rows; warp w owns rows 16w..16w+15 of the scores (x·y, causal:
 * only the tiles left of the diagonal are computed, the diagonal tile gets the exact mask) and of the
 * output slice (64 × EZ). z is split into slices of EZ ≤ 64 columns (EZ·DX ≤ 8192 keeps the fp32 state
 * at 64 registers a thread). Products are mma.sync m16n8k16 bf16 → fp32 (sm_80+; ldmatrix from padded
 * smem rows, no bank conflicts). bf16 tiles are copied as they are (cp.async, double-buffered: the next
 * chunk lands while this one is computed). f16 and f32 inputs are split x = hi + lo (two bf16; exact for
 * f16) and every product is hi·hi + hi·lo + lo·hi: ~2^-16 relative, so these paths meet 1e-4 on the same
 * tensor-core code (3× the MMA work, loads through registers; bf16 is the fast path). The bf16 path rounds
 * the fp32 state and the scores to bf16 as MMA operands (measured error ~3e-3, tolerance 1e-2).
 * k_out runs 8 warps: 4 compute the chunk's outputs from KV(c) while 4 move the fp32 state to KV(c+1).
 *
 * COST per token and head (D = DX = EZt, C = 64; forward = 1 op, backward = 3 ops, the dk op reusing the dv
 * op's segment states since they are their transposes, and the dq op the forward's where the caller kept
 * them (lasp_attn_fwd_saving / lasp_attn_bwd_saved): 4 output passes, 2 state passes in all, else 3)
 *   FLOPs: state pass 2·D²; output pass 2·D² (inter) + 2·D² (state) + ~2·(5/8)·2·C·D (causal scores and
 *          intra, 16-row granularity) — 119 kFLOP per op at D = 128, plus the scores again per extra z-slice.
 *   DRAM bytes (bf16): state pass reads y, z (4·D); output pass reads x, y, z and writes out (8·D); fwd 12·D
 *          against the ideal 8·D of MATH.md §7, fwd+bwd 40·D (44·D recomputing) against 22·D. Segment states add
 *          ~3·4·D²/seg (≤ 5% at seg ≥ 1024). z-slices re-read x and y from L2, not DRAM (the slices of a
 *          segment are adjacent in the grid): ncu at B1 H16 T32768 D128 shows k_state reading 268 MB
 *          (= y + z once) and k_out 436 MB (x, y, z + states), writing 122 MB; 407 MB since k_out_tma
 *          carries the state along runs of segments and reads the workspace once a run.
 *   So the floor at D = 128 on an H200 (4.2 TB/s copy) is ~0.19 ms fwd, ~0.64 ms fwd+bwd (0.69 recomputing)
 *   for B1 H16 T32768.
 *   Measured (ncu on an H100, every pass of a fwd+bwd, bench/RESULTS.md "sixth session"): the passes move
 *   2.79 GB at B1 H16 T32768 D128 and take 1.19 × what those bytes need at the copy bandwidth (1.04 × at
 *   T131072, 1.26 × at D64), with the L2 78–85% busy carrying twice the DRAM bytes. The L2 is what an H200
 *   shares with an H100, and it runs these kernels only 2–4% faster: the speed targets need fewer passes
 *   over the tensors (dv and dk outputs fused, the forward's k and v read once), not faster passes.
 *
 * TWO IMPLEMENTATIONS OF KERNELS 1 AND 3
 * This file's k_state and k_out run mma.sync (sm_80+) for every dtype and head dim. On Hopper, bf16 with
 * DX ∈ {64, 128} and 64-column slices runs attn_cuda_wgmma.h instead (same grid, workspace and math;
 * wgmma from 128-byte-swizzled shared memory): k_out 311 → 245 µs, k_state 126 → 117 µs on an H100 at
 * B1 H16 T32768 D128 (bench/RESULTS.md). There the output pass is k_out_tma (attn_cuda_tma.h): the same
 * products, its roles decoupled by mbarriers, tiles in and outputs out by TMA: 256 → 225 µs on the H100,
 * now bound by DRAM (76%) and the L2 (83% busy), not by latency. Whether the device runs the sm_90a code
 * is probed once per context (k_has_wgmma); LASP_CUDA_WGMMA=0 forces mma.sync, LASP_CUDA_TMA=0 k_out_wg.
 * All are tested on the GPU (scripts/gpu.sh test, test-mma). Tried and dropped: the state pass on TMA
 * (one warpgroup, 4 stages, 2 CTAs an SM): fwd 0.387 → 0.400 ms on the H100, slower than k_state_wg's
 * 4 CTAs an SM with cp.async one chunk ahead.
 */
#ifndef LASP_ATTN_CUDA_KERN_H
#define LASP_ATTN_CUDA_KERN_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "attn/attn_cuda_impl.h"

namespace lasp_cu {

constexpr int CH = 64;     /* chunk rows */
constexpr int NTHR = 128;      /* k_state: 4 warps */
constexpr int NTHR_OUT = 256;  /* k_out: 4 output warps + 4 state warps */

typedef __nv_bfloat16 bf16;

/* ---- small device helpers ------------------------------------------------------------------ */

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* 16 bytes global → shared without registers; src_bytes = 0 writes zeros */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo_elem, float hi_elem) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo_elem, hi_elem);
    return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ float2 unpack_bf16(uint32_t u) {
    __nv_bfloat162 v = *reinterpret_cast<__nv_bfloat162 *>(&u);
    return __bfloat1622float2(v);
}
/* x = hi + lo, both bf16 pairs */
__device__ __forceinline__ void split_pack(float a, float b, uint32_t &hi, uint32_t &lo) {
    hi = pack_bf16(a, b);
    float2 h = unpack_bf16(hi);
    lo = pack_bf16(a - h.x, b - h.y);
}

/* A fragment (or a pair of B fragments) in one or two bf16 parts. */
template <bool SPLIT>
struct Frag {
    uint32_t hi[4];
    uint32_t lo[SPLIT ? 4 : 1];
};

/* c += a·b for one m16n8k16 tile; split operands give hi·hi + hi·lo + lo·hi. */
template <bool SPLIT>
__device__ __forceinline__ void mma_t(float c[4], const Frag<SPLIT> &a, const Frag<SPLIT> &b, int half) {
    mma_bf16(c, a.hi, b.hi[2 * half], b.hi[2 * half + 1]);
    if constexpr (SPLIT) {
        mma_bf16(c, a.hi, b.lo[2 * half], b.lo[2 * half + 1]);
        mma_bf16(c, a.lo, b.hi[2 * half], b.hi[2 * half + 1]);
    }
}

/* A smem tile of bf16 rows with a padded leading dimension; SPLIT tiles hold lo right after hi. */
template <bool SPLIT>
struct Tile {
    bf16 *p;
    int ld;    /* elements per row */
    int size;  /* elements of one part */
    __device__ __forceinline__ const bf16 *at(int r, int c) const { return p + r * ld + c; }
};

template <bool SPLIT>
__device__ __forceinline__ void ld_frag(Frag<SPLIT> &f, const Tile<SPLIT> &t, int r, int c) {
    ldsm_x4(f.hi, t.at(r, c));
    if constexpr (SPLIT) ldsm_x4(f.lo, t.at(r, c) + t.size);
}
template <bool SPLIT>
__device__ __forceinline__ void ld_frag_t(Frag<SPLIT> &f, const Tile<SPLIT> &t, int r, int c) {
    ldsm_x4_t(f.hi, t.at(r, c));
    if constexpr (SPLIT) ldsm_x4_t(f.lo, t.at(r, c) + t.size);
}

/* ---- global ↔ smem ------------------------------------------------------------------------- */

template <typename T>
struct IO;
template <>
struct IO<bf16> {
    static __device__ __forceinline__ void load8(float v[8], const bf16 *p) {
        uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 f = unpack_bf16(w[i]);
            v[2 * i] = f.x, v[2 * i + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void store8(bf16 *p, const float v[8]) {
        uint4 u;
        u.x = pack_bf16(v[0], v[1]), u.y = pack_bf16(v[2], v[3]);
        u.z = pack_bf16(v[4], v[5]), u.w = pack_bf16(v[6], v[7]);
        *reinterpret_cast<uint4 *>(p) = u;
    }
};
template <>
struct IO<__half> {
    static __device__ __forceinline__ void load8(float v[8], const __half *p) {
        uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            __half2 h = *reinterpret_cast<const __half2 *>(&w[i]);
            float2 f = __half22float2(h);
            v[2 * i] = f.x, v[2 * i + 1] = f.y;
        }
    }
    static __device__ __forceinline__ void store8(__half *p, const float v[8]) {
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            __half2 h = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
            w[i] = *reinterpret_cast<uint32_t *>(&h);
        }
        *reinterpret_cast<uint4 *>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    }
};
template <>
struct IO<float> {
    static __device__ __forceinline__ void load8(float v[8], const float *p) {
        float4 a = __ldg(reinterpret_cast<const float4 *>(p)), b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    }
    static __device__ __forceinline__ void store8(float *p, const float v[8]) {
        reinterpret_cast<float4 *>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4 *>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
};

/* Rows [pos0, pos0+64) of one head, columns [col0, col0+W), into a smem tile; rows at or past `end`
 * are zero. Row p of the tile is token p (forwards) or T−1−p (backwards). */
template <typename T, int W, bool SPLIT>
__device__ __forceinline__ void load_tile(const Tile<SPLIT> &t, const T *base, const DirParams &P, int64_t b,
                                          int h, int D, int col0, int64_t pos0, int64_t end) {
    constexpr int VPR = W / 8;  /* 8-element vectors per row */
#pragma unroll 4
    for (int v = threadIdx.x; v < CH * VPR; v += blockDim.x) {
        const int r = v / VPR, c = (v % VPR) * 8;
        const int64_t pos = pos0 + r;
        float x[8];
        if (pos < end) {
            const int64_t tk = P.rev ? P.T - 1 - pos : pos;
            IO<T>::load8(x, base + ((b * P.T + tk) * P.H + h) * (int64_t)D + col0 + c);
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) x[i] = 0.f;
        }
        uint4 hi, lo;
        uint32_t *hp = &hi.x, *lp = &lo.x;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if constexpr (SPLIT) split_pack(x[2 * i], x[2 * i + 1], hp[i], lp[i]);
            else hp[i] = pack_bf16(x[2 * i], x[2 * i + 1]);
        }
        bf16 *dst = t.p + r * t.ld + c;
        *reinterpret_cast<uint4 *>(dst) = hi;
        if constexpr (SPLIT) *reinterpret_cast<uint4 *>(dst + t.size) = lo;
    }
}

/* load_tile for bf16 I/O, asynchronously (cp.async, 16 bytes a thread, no conversion needed). */
template <int W>
__device__ __forceinline__ void load_tile_async(const Tile<false> &t, const bf16 *base, const DirParams &P, int64_t b,
                                                int h, int D, int col0, int64_t pos0, int64_t end) {
    constexpr int VPR = W / 8;
#pragma unroll
    for (int v = threadIdx.x; v < CH * VPR; v += blockDim.x) {
        const int r = v / VPR, c = (v % VPR) * 8;
        const int64_t pos = pos0 + r;
        const bool ok = pos < end;
        const int64_t tk = ok ? (P.rev ? P.T - 1 - pos : pos) : 0;
        cp_async16(t.p + r * t.ld + c, base + ((b * P.T + tk) * P.H + h) * (int64_t)D + col0 + c, ok ? 16 : 0);
    }
}

/* Stores two adjacent output elements. */
template <typename T>
__device__ __forceinline__ void store2(T *p, float a, float b);
template <>
__device__ __forceinline__ void store2<bf16>(bf16 *p, float a, float b) {
    *reinterpret_cast<uint32_t *>(p) = pack_bf16(a, b);
}
template <>
__device__ __forceinline__ void store2<__half>(__half *p, float a, float b) {
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
}
template <>
__device__ __forceinline__ void store2<float>(float *p, float a, float b) {
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}

/* ---- the state product: acc[DX×EZ] += (diag(w) Y)ᵀ Z over one chunk ------------------------- */

/* How the DX×EZ state is spread over the 4 warps: WM × WN warps, each MTW × NTW tiles of 16×8. */
template <int DX, int EZ>
struct StateLayout {
    static constexpr int MT = DX / 16, NT = EZ / 8;
    static constexpr int WM = MT < 4 ? MT : 4;
    static constexpr int WN0 = 4 / WM;
    static constexpr int WN = WN0 < NT / 2 ? WN0 : NT / 2;
    static constexpr int MTW = MT / WM, NTW = NT / WN;
    static __device__ __forceinline__ bool active(int w) { return w < WM * WN; }
    static __device__ __forceinline__ int m0(int w) { return (w % WM) * MTW; }
    static __device__ __forceinline__ int n0(int w) { return (w / WM) * NTW; }
};

template <int DX, int EZ, bool SPLIT>
__device__ __forceinline__ void state_mma(float (&acc)[StateLayout<DX, EZ>::MTW][StateLayout<DX, EZ>::NTW][4],
                                          const Tile<SPLIT> &Ys, const Tile<SPLIT> &Zs, const float *wt, int warp,
                                          int lane) {
    typedef StateLayout<DX, EZ> L;
    const int g = lane >> 3, i8 = lane & 7;
    const int m0 = L::m0(warp), n0 = L::n0(warp);
#pragma unroll
    for (int ks = 0; ks < CH / 16; ks++) {
        const int k0 = ks * 16 + 2 * (lane & 3);
        const float w0 = wt[k0], w1 = wt[k0 + 1], w8 = wt[k0 + 8], w9 = wt[k0 + 9];
        Frag<SPLIT> bz[L::NTW / 2];
#pragma unroll
        for (int np = 0; np < L::NTW / 2; np++)
            ld_frag_t(bz[np], Zs, ks * 16 + i8 + (g & 1) * 8, (n0 + 2 * np) * 8 + (g >> 1) * 8);
#pragma unroll
        for (int mi = 0; mi < L::MTW; mi++) {
            Frag<SPLIT> a;
            ld_frag_t(a, Ys, ks * 16 + i8 + (g >> 1) * 8, (m0 + mi) * 16 + (g & 1) * 8);
            /* the token weights scale A's columns (k): regs 0,1 hold k0,k0+1; regs 2,3 hold k0+8,k0+9 */
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const float wa = r < 2 ? w0 : w8, wb = r < 2 ? w1 : w9;
                float2 v = unpack_bf16(a.hi[r]);
                if constexpr (SPLIT) {
                    float2 u = unpack_bf16(a.lo[r]);
                    v.x += u.x, v.y += u.y;
                    split_pack(v.x * wa, v.y * wb, a.hi[r], a.lo[r]);
                } else {
                    a.hi[r] = pack_bf16(v.x * wa, v.y * wb);
                }
            }
#pragma unroll
            for (int np = 0; np < L::NTW / 2; np++) {
                mma_t<SPLIT>(acc[mi][2 * np], a, bz[np], 0);
                mma_t<SPLIT>(acc[mi][2 * np + 1], a, bz[np], 1);
            }
        }
    }
}

/* ---- kernel 1: per-segment states ---------------------------------------------------------- */

template <typename T, int DX, int EZ>
struct Smem {
    /* bf16: tiles as they come, cp.async, double buffer; f16 and f32: split into bf16 hi + lo (exact for f16) */
    static constexpr bool ASYNC = __is_same(T, bf16);
    static constexpr bool SPLIT = !ASYNC;
    static constexpr int NBUF = ASYNC ? 2 : 1;
    static constexpr int P = SPLIT ? 2 : 1;
    static constexpr int LDX = DX + 8, LDZ = EZ + 8;
    static constexpr size_t X = (size_t)CH * LDX * P * 2, Y = X, Z = (size_t)CH * LDZ * P * 2,
                            KV = (size_t)DX * LDZ * P * 2, TAB = 2 * (CH + 8) * 4;
    static constexpr size_t state_bytes = NBUF * (Y + Z) + TAB;
    static constexpr size_t out_bytes = NBUF * (X + Y + Z) + KV + TAB;
};

/* Chunk [pos0, pos0+64) of y (and x) and the z slice into buffer `buf`: asynchronously for bf16 (the
 * caller commits and waits), else through registers with the conversion. */
template <typename T, int DX, int EZ, bool SPLIT>
__device__ __forceinline__ void load_chunk(const Tile<SPLIT> *xs, const Tile<SPLIT> &ys, const Tile<SPLIT> &zs,
                                           const DirParams &P, int64_t b, int h, int slice, int64_t pos0,
                                           int64_t end) {
    if constexpr (Smem<T, DX, EZ>::ASYNC) {
        if (xs) load_tile_async<DX>(*xs, (const bf16 *)P.x, P, b, h, DX, 0, pos0, end);
        load_tile_async<DX>(ys, (const bf16 *)P.y, P, b, h, DX, 0, pos0, end);
        load_tile_async<EZ>(zs, (const bf16 *)P.z, P, b, h, P.ezt, slice * EZ, pos0, end);
        cp_async_commit();
    } else {
        if (xs) load_tile<T, DX, SPLIT>(*xs, (const T *)P.x, P, b, h, DX, 0, pos0, end);
        load_tile<T, DX, SPLIT>(ys, (const T *)P.y, P, b, h, DX, 0, pos0, end);
        load_tile<T, EZ, SPLIT>(zs, (const T *)P.z, P, b, h, P.ezt, slice * EZ, pos0, end);
    }
}

/* ---- kernel 1: per-segment states ---------------------------------------------------------- */

template <typename T, int DX, int EZ>
__global__ void __launch_bounds__(NTHR) k_state(DirParams P) {
    typedef Smem<T, DX, EZ> S;
    constexpr bool SPLIT = S::SPLIT;
    typedef StateLayout<DX, EZ> L;
    extern __shared__ __align__(16) unsigned char smem[];
    const int slice = blockIdx.x, seg = blockIdx.y, bh = P.bh0 + blockIdx.z;
    const int64_t b = bh / P.H;
    const int h = bh % P.H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* buffer i's tiles (computed, not indexed: an indexed array of tiles would go to local memory) */
    auto Yt = [&](int i) { return Tile<SPLIT>{(bf16 *)(smem + i * (S::Y + S::Z)), S::LDX, CH * S::LDX}; };
    auto Zt = [&](int i) { return Tile<SPLIT>{(bf16 *)(smem + i * (S::Y + S::Z) + S::Y), S::LDZ, CH * S::LDZ}; };
    float *wt = (float *)(smem + S::NBUF * (S::Y + S::Z));

    const float s = P.slopes[h];
    const int64_t p0 = (int64_t)seg * P.seg, p1 = min(p0 + P.seg, P.T);
    const int64_t L_s = p1 - p0;
    const int nch = (int)((L_s + CH - 1) / CH);

    float acc[L::MTW][L::NTW][4];
#pragma unroll
    for (int a = 0; a < L::MTW; a++)
#pragma unroll
        for (int c = 0; c < L::NTW; c++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[a][c][r] = 0.f;

    if constexpr (S::ASYNC) load_chunk<T, DX, EZ, SPLIT>(nullptr, Yt(0), Zt(0), P, b, h, slice, p0, p1);
    for (int ci = 0; ci < nch; ci++) {
        const int64_t c0 = p0 + (int64_t)ci * CH;
        const int buf = S::NBUF == 2 ? (ci & 1) : 0;
        if constexpr (S::ASYNC) {
            if (ci + 1 < nch) {
                load_chunk<T, DX, EZ, SPLIT>(nullptr, Yt(buf ^ 1), Zt(buf ^ 1), P, b, h, slice, c0 + CH, p1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
        } else {
            load_chunk<T, DX, EZ, SPLIT>(nullptr, Yt(0), Zt(0), P, b, h, slice, c0, p1);
        }
        if (threadIdx.x < CH) {
            const int64_t n = L_s - P.sigma - (c0 - p0 + threadIdx.x); /* λ^{L−σ−l}, n ≥ 0 for valid rows */
            wt[threadIdx.x] = n >= 0 ? expf(-s * (float)n) : 0.f;
        }
        __syncthreads();
        if (L::active(warp)) state_mma<DX, EZ, SPLIT>(acc, Yt(buf), Zt(buf), wt, warp, lane);
        __syncthreads();
    }
    if (!L::active(warp)) return;
    float *out = P.ws + ((size_t)bh * P.ns + seg) * DX * P.ezt + slice * EZ;
    const int m0 = L::m0(warp), n0 = L::n0(warp);
#pragma unroll
    for (int mi = 0; mi < L::MTW; mi++)
#pragma unroll
        for (int ni = 0; ni < L::NTW; ni++) {
            const int r = (m0 + mi) * 16 + (lane >> 2), c = (n0 + ni) * 8 + 2 * (lane & 3);
            *reinterpret_cast<float2 *>(out + (size_t)r * P.ezt + c) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
            *reinterpret_cast<float2 *>(out + (size_t)(r + 8) * P.ezt + c) =
                make_float2(acc[mi][ni][2], acc[mi][ni][3]);
        }
}

/* ---- kernel 3: outputs, chunk by chunk with the state on chip -------------------------------- */

/* λ^n (n = 0..64) into pw and λ^{C−j} (j < 64) into wt, in shared memory, by the threads t = 0..64 of
 * the caller's (t: threadIdx.x, or the index in a warpgroup; read after the caller's next barrier);
 * returns λ^C */
__device__ __forceinline__ float decay_tables(float *pw, float *wt, float s, int t) {
    if (t <= CH) pw[t] = expf(-s * (float)t);
    if (t < CH) wt[t] = expf(-s * (float)(CH - t));
    return expf(-s * (float)CH);
}

template <typename T, int DX, int EZ>
__global__ void __launch_bounds__(NTHR_OUT, 2) k_out(DirParams P) {
    typedef Smem<T, DX, EZ> S;
    constexpr bool SPLIT = S::SPLIT;
    constexpr int NT = EZ / 8;
    typedef StateLayout<DX, EZ> L;
    extern __shared__ __align__(16) unsigned char smem[];
    const int slice = blockIdx.x, seg = blockIdx.y, bh = P.bh0 + blockIdx.z;
    const int64_t b = bh / P.H;
    const int h = bh % P.H;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 3, i8 = lane & 7;
    constexpr size_t BUF = S::X + S::Y + S::Z;
    auto Xt = [&](int i) { return Tile<SPLIT>{(bf16 *)(smem + i * BUF), S::LDX, CH * S::LDX}; };
    auto Yt = [&](int i) { return Tile<SPLIT>{(bf16 *)(smem + i * BUF + S::X), S::LDX, CH * S::LDX}; };
    auto Zt = [&](int i) { return Tile<SPLIT>{(bf16 *)(smem + i * BUF + S::X + S::Y), S::LDZ, CH * S::LDZ}; };
    Tile<SPLIT> KVs{(bf16 *)(smem + S::NBUF * (S::X + S::Y + S::Z)), S::LDZ, DX * S::LDZ};
    float *pw = (float *)(smem + S::NBUF * (S::X + S::Y + S::Z) + S::KV); /* pw[n] = λ^n, n = 0..64 */
    float *wt = pw + CH + 4;                                              /* wt[j] = λ^{C−j} */

    const float s = P.slopes[h];
    if (other_part(P, seg, s)) return; /* the whole CTA, before any barrier */
    const float gammaC = decay_tables(pw, wt, s, threadIdx.x);

    const int64_t p0 = (int64_t)seg * P.seg, p1 = min(p0 + P.seg, P.T);
    const int nch = (int)((p1 - p0 + CH - 1) / CH);
    if constexpr (S::ASYNC) {
        const Tile<SPLIT> x0 = Xt(0);
        load_chunk<T, DX, EZ, SPLIT>(&x0, Yt(0), Zt(0), P, b, h, slice, p0, p1);
    }

    /* Warps 0–3 compute the outputs of chunk c with the state KV(c) (bf16 in smem) while warps 4–7
     * (sw = warp − 4) move the fp32 state, in their registers, on to KV(c+1): the chunk's critical path
     * is the longer of the two instead of their sum. */
    const bool outw = warp < 4;
    const int sw = warp - 4;
    const bool act = !outw && L::active(sw);
    const int m0 = act ? L::m0(sw) : 0, n0 = act ? L::n0(sw) : 0;
    const int r0 = warp * 16;
    T *outp = (T *)P.out;
    /* chunk ci's tiles: start the copy of chunk ci+1, wait for this thread's copies of chunk ci, barrier */
    auto tiles_ready = [&](int ci, int64_t c0, int buf) {
        if constexpr (S::ASYNC) {
            if (ci + 1 < nch) {
                const Tile<SPLIT> xn = Xt(buf ^ 1);
                load_chunk<T, DX, EZ, SPLIT>(&xn, Yt(buf ^ 1), Zt(buf ^ 1), P, b, h, slice, c0 + CH, p1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
        } else {
            const Tile<SPLIT> x0 = Xt(0);
            load_chunk<T, DX, EZ, SPLIT>(&x0, Yt(0), Zt(0), P, b, h, slice, c0, p1);
        }
        __syncthreads();
    };
    /* The two roles run separate loops with the same barriers, so that the state's registers are live
     * only in the state warps. */
    if (outw) {
        for (int ci = 0; ci < nch; ci++) {
            const int64_t c0 = p0 + (int64_t)ci * CH;
            const int buf = S::NBUF == 2 ? (ci & 1) : 0;
            tiles_ready(ci, c0, buf);
            const Tile<SPLIT> X = Xt(buf), Y = Yt(buf), Z = Zt(buf);
            /* scores X Yᵀ (causal tiles only) and the inter term X·KV, sharing X's fragments */
            float sc[8][4], o[NT][4];
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) sc[j][r] = 0.f;
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) o[j][r] = 0.f;
#pragma unroll
            for (int ks = 0; ks < DX / 16; ks++) {
                Frag<SPLIT> a;
                ld_frag(a, X, r0 + (lane & 15), ks * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int jp = 0; jp < 4; jp++) {
                    if (jp <= warp) {
                        Frag<SPLIT> by;
                        ld_frag(by, Y, jp * 16 + i8 + (g >> 1) * 8, ks * 16 + (g & 1) * 8);
                        mma_t<SPLIT>(sc[2 * jp], a, by, 0);
                        mma_t<SPLIT>(sc[2 * jp + 1], a, by, 1);
                    }
                }
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    Frag<SPLIT> bk;
                    ld_frag_t(bk, KVs, ks * 16 + i8 + (g & 1) * 8, np * 16 + (g >> 1) * 8);
                    mma_t<SPLIT>(o[2 * np], a, bk, 0);
                    mma_t<SPLIT>(o[2 * np + 1], a, bk, 1);
                }
            }
            /* inter rows decay λ^i; the exact causal mask with λ^{i−j} on the scores */
            const int ra = r0 + (lane >> 2), rb = ra + 8;
            const float pa = pw[ra], pb = pw[rb];
#pragma unroll
            for (int j = 0; j < NT; j++) o[j][0] *= pa, o[j][1] *= pa, o[j][2] *= pb, o[j][3] *= pb;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int c = j * 8 + 2 * (lane & 3);
                sc[j][0] *= c <= ra ? pw[ra - c] : 0.f;
                sc[j][1] *= c + 1 <= ra ? pw[ra - c - 1] : 0.f;
                sc[j][2] *= c <= rb ? pw[rb - c] : 0.f;
                sc[j][3] *= c + 1 <= rb ? pw[rb - c - 1] : 0.f;
            }
            /* intra: o += S Z, S from registers as the A operand */
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                if (kk <= warp) {
                    Frag<SPLIT> a;
                    if constexpr (SPLIT) {
                        split_pack(sc[2 * kk][0], sc[2 * kk][1], a.hi[0], a.lo[0]);
                        split_pack(sc[2 * kk][2], sc[2 * kk][3], a.hi[1], a.lo[1]);
                        split_pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1], a.hi[2], a.lo[2]);
                        split_pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3], a.hi[3], a.lo[3]);
                    } else {
                        a.hi[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
                        a.hi[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
                        a.hi[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                        a.hi[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
                    }
#pragma unroll
                    for (int np = 0; np < NT / 2; np++) {
                        Frag<SPLIT> bz;
                        ld_frag_t(bz, Z, kk * 16 + i8 + (g & 1) * 8, np * 16 + (g >> 1) * 8);
                        mma_t<SPLIT>(o[2 * np], a, bz, 0);
                        mma_t<SPLIT>(o[2 * np + 1], a, bz, 1);
                    }
                }
            }
            /* outputs straight from the accumulators: 4 lanes write 8 contiguous elements of a row */
            {
                const int64_t pa_ = c0 + ra, pb_ = c0 + rb;
                T *oa =
                    pa_ < p1 ? outp + ((b * P.T + (P.rev ? P.T - 1 - pa_ : pa_)) * P.H + h) * (int64_t)P.ezt : nullptr;
                T *ob =
                    pb_ < p1 ? outp + ((b * P.T + (P.rev ? P.T - 1 - pb_ : pb_)) * P.H + h) * (int64_t)P.ezt : nullptr;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    const int c = slice * EZ + j * 8 + 2 * (lane & 3);
                    if (oa) store2<T>(oa + c, o[j][0], o[j][1]);
                    if (ob) store2<T>(ob + c, o[j][2], o[j][3]);
                }
            }
            __syncthreads();
        }
    } else {
        float kv[L::MTW][L::NTW][4];
        {
            const float *src = P.ws + ((size_t)bh * P.ns + seg) * DX * P.ezt + slice * EZ;
            const float f_add = P.s_add ? s_add_decay(P, seg, s) : 0.f; /* the arrived state, if any */
#pragma unroll
            for (int mi = 0; mi < L::MTW; mi++)
#pragma unroll
                for (int ni = 0; ni < L::NTW; ni++) {
                    const int r = (m0 + mi) * 16 + (lane >> 2), c = (n0 + ni) * 8 + 2 * (lane & 3);
                    float2 u = make_float2(0.f, 0.f), v = make_float2(0.f, 0.f);
                    if (act && !P.ws_trans) {
                        u = *reinterpret_cast<const float2 *>(src + (size_t)r * P.ezt + c);
                        v = *reinterpret_cast<const float2 *>(src + (size_t)(r + 8) * P.ezt + c);
                    } else if (act) {
                        const float *t = src - slice * EZ + (size_t)(slice * EZ + c) * DX;
                        u = make_float2(t[r], t[DX + r]);
                        v = make_float2(t[r + 8], t[DX + r + 8]);
                    }
                    if (act && f_add != 0.f) { /* 0: the state cannot reach this segment in fp32 */
                        const float *A = s_add_of(P, bh);
                        const int cs = slice * EZ + c;
                        const bool tr = P.s_add_trans;
                        u.x += f_add * state_at(A, tr, DX, P.ezt, r, cs);
                        u.y += f_add * state_at(A, tr, DX, P.ezt, r, cs + 1);
                        v.x += f_add * state_at(A, tr, DX, P.ezt, r + 8, cs);
                        v.y += f_add * state_at(A, tr, DX, P.ezt, r + 8, cs + 1);
                    }
                    kv[mi][ni][0] = u.x, kv[mi][ni][1] = u.y, kv[mi][ni][2] = v.x, kv[mi][ni][3] = v.y;
                }
        }

        for (int ci = 0; ci < nch; ci++) {
            const int64_t c0 = p0 + (int64_t)ci * CH;
            const int buf = S::NBUF == 2 ? (ci & 1) : 0;
            /* the state as a bf16 (hi, lo) operand; every warp is past the last chunk's reads */
            if (act) {
#pragma unroll
                for (int mi = 0; mi < L::MTW; mi++)
#pragma unroll
                    for (int ni = 0; ni < L::NTW; ni++) {
                        const int r = (m0 + mi) * 16 + (lane >> 2), c = (n0 + ni) * 8 + 2 * (lane & 3);
                        uint32_t h0, l0, h1, l1;
                        if constexpr (SPLIT) {
                            split_pack(kv[mi][ni][0], kv[mi][ni][1], h0, l0);
                            split_pack(kv[mi][ni][2], kv[mi][ni][3], h1, l1);
                            *reinterpret_cast<uint32_t *>(KVs.p + KVs.size + r * KVs.ld + c) = l0;
                            *reinterpret_cast<uint32_t *>(KVs.p + KVs.size + (r + 8) * KVs.ld + c) = l1;
                        } else {
                            h0 = pack_bf16(kv[mi][ni][0], kv[mi][ni][1]);
                            h1 = pack_bf16(kv[mi][ni][2], kv[mi][ni][3]);
                        }
                        *reinterpret_cast<uint32_t *>(KVs.p + r * KVs.ld + c) = h0;
                        *reinterpret_cast<uint32_t *>(KVs.p + (r + 8) * KVs.ld + c) = h1;
                    }
            }
            tiles_ready(ci, c0, buf);
            if (ci + 1 < nch && act) {
                const Tile<SPLIT> Y = Yt(buf), Z = Zt(buf);
                /* the state moves on to the next chunk (not needed after the segment's last one) */
#pragma unroll
                for (int mi = 0; mi < L::MTW; mi++)
#pragma unroll
                    for (int ni = 0; ni < L::NTW; ni++)
#pragma unroll
                        for (int r = 0; r < 4; r++) kv[mi][ni][r] *= gammaC;
                state_mma<DX, EZ, SPLIT>(kv, Y, Z, wt, sw, lane);
            }
            __syncthreads();
        }
    }
}

/* one kernel with its dynamic shared memory (Params: DirParams, or TmaParams for attn_cuda_tma.h) */
template <typename Params>
inline cudaError_t launch(void (*kernel)(Params), dim3 grid, int threads, size_t bytes, cudaStream_t st,
                          const Params &P) {
    cudaError_t e = cudaFuncSetAttribute((const void *)kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
    kernel<<<grid, threads, bytes, st>>>(P);
    return cudaGetLastError();
}

}  // namespace lasp_cu

#include "attn/attn_cuda_wgmma.h"
#include "attn/attn_cuda_tma.h"

namespace lasp_cu {

/* ---- launch of one directed op for one (dtype, DX, EZ) ------------------------------------- */

template <typename T, int DX, int EZ>
cudaError_t launch_dir(const DirParams &P, cudaStream_t st, int max_smem) {
    typedef Smem<T, DX, EZ> S;
    /* kernels 1 and 3: mma.sync, or wgmma (attn_cuda_wgmma.h) for bf16 at DX 64/128 in 64-column slices
     * where the device runs the sm_90a code */
    void (*k1)(DirParams) = k_state<T, DX, EZ>, (*k3)(DirParams) = k_out<T, DX, EZ>;
    int t1 = NTHR, t3 = NTHR_OUT;
    size_t b1 = S::state_bytes, b3 = S::out_bytes;
    if constexpr (__is_same(T, bf16) && EZ == wg::EZ && (DX == 64 || DX == 128)) {
        if (P.wgmma) {
            k1 = k_state_wg<DX>, t1 = 128, b1 = wg::Smem<DX>::state_bytes;
            k3 = k_out_wg<DX>, t3 = wg::NTHR, b3 = wg::Smem<DX>::bytes;
            if (P.tma) b3 = tma::Smem<DX>::bytes;
        }
    }
    if ((int)b3 > max_smem) return cudaErrorInvalidConfiguration;
    const dim3 grid(P.ezt / EZ, P.ns, P.nbh);
    cudaError_t e;
    if (!P.out_only) {
        if ((e = launch(k1, grid, t1, b1, st, P)) != cudaSuccess) return e;
        if ((e = lasp_cu_scan(P, st)) != cudaSuccess) return e;
        if (P.states_only) return cudaSuccess;
    }
    if constexpr (__is_same(T, bf16) && EZ == wg::EZ && (DX == 64 || DX == 128)) {
        if (P.wgmma && P.tma) return launch_out_tma<DX>(P, grid, st);
    }
    if (P.part == 3) return cudaErrorNotSupported; /* both parts in one launch: k_out_tma only */
    return launch(k3, grid, t3, b3, st, P);
}

/* EZ as slice_width() (attn_cuda_impl.h) picks it. */
constexpr int EZ_ANY = 16;
template <typename T, int DX>
cudaError_t launch_dx(const DirParams &P, cudaStream_t st, int max_smem) {
    constexpr int CAP = (Smem<T, DX, EZ_ANY>::SPLIT && DX == 256) ? 32 : (8192 / DX < 64 ? 8192 / DX : 64);
    static_assert(CAP == 32 || CAP == 64, "slice widths");
    if (P.ezt >= CAP) return launch_dir<T, DX, CAP>(P, st, max_smem);
    if constexpr (CAP > 32) {
        if (P.ezt >= 32) return launch_dir<T, DX, 32>(P, st, max_smem);
    }
    return launch_dir<T, DX, 16>(P, st, max_smem);
}

template <typename T>
cudaError_t launch_any(const DirParams &P, cudaStream_t st, int max_smem) {
    switch (P.dx) {
    case 16: return launch_dx<T, 16>(P, st, max_smem);
    case 32: return launch_dx<T, 32>(P, st, max_smem);
    case 64: return launch_dx<T, 64>(P, st, max_smem);
    case 128: return launch_dx<T, 128>(P, st, max_smem);
    case 256: return launch_dx<T, 256>(P, st, max_smem);
    default: return cudaErrorInvalidValue;
    }
}

}  // namespace lasp_cu

#endif
