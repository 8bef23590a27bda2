/* attn_kern_sm80.h — kernels 1 and 3 of a directed op on mma.sync (sm_80 and later, every dtype and head
 * dim): k_state, the segment states, and k_out, the outputs with the state on chip (docs/CUDA.md). */
#ifndef LASP_ATTN_KERN_SM80_H
#define LASP_ATTN_KERN_SM80_H

#include "attn/attn_kern_common.h"

namespace lasp_cu {

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

/* ---- shared memory and chunk copies of k_state and k_out ----------------------------------- */

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
    const int slice = blockIdx.x, seg = blockIdx.y, bh = blockIdx.z;
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

template <typename T, int DX, int EZ>
__global__ void __launch_bounds__(NTHR_OUT, 2) k_out(DirParams P) {
    typedef Smem<T, DX, EZ> S;
    constexpr bool SPLIT = S::SPLIT;
    constexpr int NT = EZ / 8;
    typedef StateLayout<DX, EZ> L;
    extern __shared__ __align__(16) unsigned char smem[];
    const int slice = blockIdx.x, seg = blockIdx.y, bh = blockIdx.z;
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
    if (not_in_part(P.part, P, seg, s)) return; /* the whole CTA, before any barrier */
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

}  // namespace lasp_cu

#endif
