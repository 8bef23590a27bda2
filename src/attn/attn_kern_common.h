/* attn_kern_common.h — what every kernel of the op shares (docs/CUDA.md): chunk size, mma.sync and
 * ldmatrix wrappers, bf16 packing and the hi + lo split of f16/f32 operands, shared-memory tiles, global ↔
 * shared copies, decay tables and the launch helper. Device code, included by the kernel headers. */
#ifndef LASP_ATTN_KERN_COMMON_H
#define LASP_ATTN_KERN_COMMON_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "attn/attn_cuda_dir.h"

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

/* ---- decay tables and launches ------------------------------------------------------------- */

/* λ^n (n = 0..64) into pw and λ^{C−j} (j < 64) into wt, in shared memory, by the threads t = 0..64 of
 * the caller's (t: threadIdx.x, or the index in a warpgroup; read after the caller's next barrier);
 * returns λ^C */
__device__ __forceinline__ float decay_tables(float *pw, float *wt, float s, int t) {
    if (t <= CH) pw[t] = expf(-s * (float)t);
    if (t < CH) wt[t] = expf(-s * (float)(CH - t));
    return expf(-s * (float)CH);
}

/* one kernel with its dynamic shared memory (Params: DirParams, or the TMA pass's TmaParams) */
template <typename Params>
inline cudaError_t launch(void (*kernel)(Params), dim3 grid, int threads, size_t bytes, cudaStream_t st,
                          const Params &P) {
    cudaError_t e = cudaFuncSetAttribute((const void *)kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
    kernel<<<grid, threads, bytes, st>>>(P);
    return cudaGetLastError();
}

}  // namespace lasp_cu

#endif
