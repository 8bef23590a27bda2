/* attn_kern_sm90_out.h — kernel 3 (the outputs) on Hopper, pipelined and persistent: k_out_tma, the output
 * pass wherever the wgmma kernels run. Tiles come in by TMA (cp.async.bulk.tensor, 128-byte swizzle: the
 * layout the wgmma descriptors read) into a ring of stages; one state warpgroup runs ahead carrying the fp32
 * state, two output warpgroups take the chunks in turn; mbarriers, not CTA-wide barriers, hold each role to
 * the data it needs; one CTA an SM walks a run of segments, carrying the state from one into the next;
 * whole output rows go out by TMA stores. docs/CUDA.md explains the roles, the barriers and the work split.
 *
 * SYNCHRONISATION (mbarriers; no CTA-wide barrier after the set-up)
 *   full[s]   TMA bytes of stage s landed (the issuing thread's arrive.expect_tx + the copies' complete_tx)
 *   empty[s]  stage s read by its output warpgroup and by the state warpgroup (256 arrivals)
 *   kvfull[k] KV slot k written and fenced into the async proxy (128 arrivals of the state warpgroup)
 *   kvempty[k] KV slot k read by its output warpgroup (128 arrivals)
 * Chunk g (of the CTA's run) uses stage g mod NS (phase ⌊g/NS⌋) and KV slot g mod 2 (phase ⌊g/2⌋);
 * output warpgroup k takes the chunks g ≡ k (mod 2), so it always reads KV slot k. Each segment's decay
 * tables go into a ring of 4, written by the state warpgroup before its first KV and read after it. The
 * tiles written by TMA are read by wgmma (both the async proxy) and by ldmatrix (made visible by the
 * mbarrier's completion): no proxy fence on the loads; only the state warpgroup's st.shared of KV needs
 * one, and it has no copies in flight for that fence to wait on.
 *
 * DIRECTION
 * TMA copies rows in memory order. Forwards, row r of a chunk's tile is position c0 + r; backwards
 * (rev), the box starts at token T − 64 − c0 (negative at the end of the sequence: TMA fills rows
 * outside the tensor with zeros), so row r is position c0 + 63 − r. The causal mask, the decays and the
 * state weights read position indices i(r) = r or 63 − r; an output row is always token tok0 + r. */
#ifndef LASP_ATTN_KERN_SM90_OUT_H
#define LASP_ATTN_KERN_SM90_OUT_H

#include <cuda.h>
#include <cudaTypedefs.h>

#include "attn/attn_kern_sm90.h"

namespace lasp_cu {

/* the tensor maps of x, y and z (bf16 [B,T,H,width]), boxes of 64 columns × 64 tokens, and the op */
struct TmaParams {
    CUtensorMap x, y, z, out; /* 64-byte aligned, first: TMA reads them from the kernel's parameter space */
    DirParams P;
};

namespace tma {

constexpr int NTHR = 384; /* warpgroups 0, 1: outputs (even, odd chunks); 2: the state */

template <int DX>
struct Smem {
    static constexpr int NS = 4; /* tile stages; even, so that a stage's chunks go to one output warpgroup */
    static constexpr uint32_t X = CH * DX * 2, Z = CH * wg::EZ * 2, STAGE = 2 * X + Z, KV = DX * wg::EZ * 2;
    static constexpr uint32_t OUT = CH * wg::EZ * 2; /* a staging tile for the outputs, per output warpgroup */
    /* decay tables (floats: λ^n for n = 0..64, then λ^{C−j}), one per segment in flight: a slot is written
     * again 4 segments later, when every chunk of its old segment is done (k_out_tma's state warpgroup) */
    static constexpr int TAB = 2 * CH + 8, NTAB = 4;
    static constexpr uint32_t KVOFF = NS * STAGE, OUTOFF = KVOFF + 2 * KV, TABOFF = OUTOFF + 2 * OUT,
                              BAROFF = TABOFF + NTAB * TAB * 4;
    static constexpr size_t bytes = BAROFF + 128 + 1024; /* + room to align the base to 1024 */
};

__device__ __forceinline__ void bar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void bar_expect(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bar_wait(uint32_t bar, uint32_t parity) {
    asm volatile("{\n.reg .pred done;\nWAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}
/* one 64 × 64 box of shared memory to a [B,T,H,W] tensor, columns col.., head h, tokens tok.., batch b */
__device__ __forceinline__ void store_box(const CUtensorMap *m, uint32_t src, int col, int h, int tok, int b) {
    asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
                     (uint64_t)m),
                 "r"(col), "r"(h), "r"(tok), "r"(b), "r"(src)
                 : "memory");
}
__device__ __forceinline__ void st_shared32(uint32_t addr, uint32_t v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
/* the 128 threads of output warpgroup `role` (named barriers 1 and 2; 0 is __syncthreads) */
__device__ __forceinline__ void wg_sync(int role) { asm volatile("bar.sync %0, 128;\n" ::"r"(role + 1) : "memory"); }
/* one 64 × 64 box of a [B,T,H,W] tensor: columns col.., head h, tokens tok.., batch b */
__device__ __forceinline__ void load_box(uint32_t dst, const CUtensorMap *m, int col, int h, int tok, int b,
                                         uint32_t bar) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
                 "l"((uint64_t)m), "r"(col), "r"(h), "r"(tok), "r"(b), "r"(bar)
                 : "memory");
}

}  // namespace tma

/* k_out_tma's work: the (z-slice, segment, head) blocks of the op. The CTAs come in groups of one per
 * z-slice; group p takes a contiguous run of the positions u = seg + ns·head (segments of a head in
 * order, then the next head), each CTA of the group its slice of them: the group's CTAs read the same x
 * and y tiles at about the same time (the second from the L2), and along a run the state the state
 * warpgroup holds at the end of a segment is the state entering the next one, so only a run's first
 * segment (and each new head's) reads its state from the workspace. Blocks of the other part of a split
 * finish (DirParams.part) are skipped. */
struct Item {
    int i; /* position u; ≥ end: past the run */
    int slice, seg, bh, nch;
    float s; /* the head's slope */
};
struct Work {
    int begin, end, slice, step; /* positions begin, begin + step, … < end */
    /* the first item to run at or after position u */
    __host__ __device__ __forceinline__ Item at(const DirParams &P, int u) const {
        Item t;
        for (; u < end; u += step) {
            t.seg = u % P.ns, t.bh = u / P.ns;
            t.s = P.slopes[t.bh % P.H];
            if (not_in_part(P.part, P, t.seg, t.s)) continue;
            const int64_t p0 = (int64_t)t.seg * P.seg, p1 = p0 + P.seg < P.T ? p0 + P.seg : P.T;
            t.nch = (int)((p1 - p0 + CH - 1) / CH);
            t.i = u, t.slice = slice;
            return t;
        }
        t.i = end, t.nch = 0, t.slice = slice, t.seg = t.bh = 0, t.s = 0.f;
        return t;
    }
    /* chunk c of item t, moved on by k chunks along the run */
    __host__ __device__ __forceinline__ void advance(const DirParams &P, Item &t, int &c, int k) const {
        c += k;
        while (t.i < end && c >= t.nch) c -= t.nch, t = at(P, t.i + step);
    }
    /* u the segment after t's, of the same head */
    __host__ __device__ __forceinline__ static bool follows(const Item &t, const Item &u) {
        return u.i == t.i + 1 && u.seg != 0;
    }
};
/* A part of a split finish (DirParams.part) runs a prefix of every head's segments (part 2: those that
 * the arrived state reaches, the decay falling with the segment) or the rest (part 1). part_run: warp 0
 * counts the segments the state reaches per head (cnt: shared scratch, 64 heads at most), then
 * part_bounds cuts the part's segments into equal runs in order and gives group grp of groups its run as
 * positions, run[0..1]. Work::at skips the other part's positions. */
__host__ __device__ __forceinline__ int part_count(const DirParams &P, const int *cnt, int part, int hh) {
    return part == 2 ? cnt[hh] : P.ns - cnt[hh];
}
/* the position of the v-th segment of part `part` (v = the part's total: n = BH·ns, the end) */
__host__ __device__ __forceinline__ int part_pos(const DirParams &P, const int *cnt, int part, int64_t v) {
    for (int hh = 0; hh < P.BH; hh++) {
        const int c = part_count(P, cnt, part, hh);
        if (v < c) return hh * P.ns + (part == 2 ? 0 : P.ns - c) + (int)v;
        v -= c;
    }
    return P.BH * P.ns;
}
__host__ __device__ __forceinline__ void part_bounds(const DirParams &P, const int *cnt, int groups, int grp,
                                                     int *run) {
    int64_t total = 0; /* the part's segments */
    for (int hh = 0; hh < P.BH; hh++) total += part_count(P, cnt, P.part, hh);
    for (int e = 0; e < 2; e++) run[e] = part_pos(P, cnt, P.part, total * (grp + e) / groups);
}
__device__ __forceinline__ void part_run(const DirParams &P, int *cnt, int *run) {
    const int lane = threadIdx.x & 31;
    const int slices = P.ezt / wg::EZ;
    for (int hh = 0; hh < P.BH; hh++) {
        const float s = P.slopes[hh % P.H];
        int reach = 0;
        for (int k0 = 0; k0 < P.ns; k0 += 32)
            reach += __popc(__ballot_sync(0xffffffffu, k0 + lane < P.ns && s_add_decay(P, k0 + lane, s) != 0.f));
        if (lane == 0) cnt[hh] = reach;
    }
    __syncwarp();
    if (lane == 0) part_bounds(P, cnt, (int)gridDim.x / slices, (int)blockIdx.x / slices, run);
}
constexpr int PART_RUN_HEADS = 64; /* above: a part's segments dealt round */

/* this CTA's run (gridDim.x a multiple of the slices). Where the groups divide among the heads with at most
 * a tenth of them idle, R runs a head, the heads side by side (group p: head p mod BH, run ⌊p/BH⌋): at any
 * moment the groups read the same tokens of neighbouring heads, which share the tensors' rows ([B,T,H,D]:
 * a token's heads are adjacent in memory). Otherwise the positions in order, cut in equal runs. */
__host__ __device__ __forceinline__ Work work_for(const DirParams &P, const int *run, int groups, int grp, int slice) {
    const int64_t n = (int64_t)P.ns * P.BH;
    /* a part of a split finish runs the first (or the last) segments of every head: runs of positions would
     * leave most groups idle, so its segments are counted and cut evenly (part_run), or with many heads
     * dealt round (no state carried) */
    if (P.part) return P.BH <= PART_RUN_HEADS ? Work{run[0], run[1], slice, 1} : Work{grp, (int)n, slice, groups};
    const int R = groups / P.BH < P.ns ? groups / P.BH : P.ns;
    if (R >= 1 && 10 * R * P.BH >= 9 * groups) {
        if (grp >= R * P.BH) return {0, 0, slice, 1};
        const int h = grp % P.BH, r = grp / P.BH;
        return {h * P.ns + P.ns * r / R, h * P.ns + P.ns * (r + 1) / R, slice, 1};
    }
    return {(int)(n * grp / groups), (int)(n * (grp + 1) / groups), slice, 1};
}
__device__ __forceinline__ Work work_of(const DirParams &P, const int *run) {
    const int slices = P.ezt / wg::EZ;
    return work_for(P, run, (int)gridDim.x / slices, (int)blockIdx.x / slices, (int)blockIdx.x % slices);
}
/* k_out_tma's grid: groups of one CTA per z-slice, as many as the runs or the SMs (of n_sm) allow */
inline int out_tma_ctas(int slices, int64_t runs, int n_sm) {
    const int64_t groups = runs < n_sm / slices ? runs : n_sm / slices;
    return slices * (int)(groups > 0 ? groups : 1);
}

template <int DX>
__global__ void __launch_bounds__(tma::NTHR, 1) k_out_tma(const __grid_constant__ TmaParams A) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using namespace wg;
    using namespace tma;
    typedef tma::Smem<DX> S;
    constexpr int NS = S::NS;
    const DirParams &P = A.P;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const uint32_t sb = aligned_base(smem_raw);
    unsigned char *smem = smem_raw + (sb - smem_u32(smem_raw));
    /* the decay tables of the items in flight, a ring of S::NTAB: pw[n] = λ^n (n = 0..64), wt[j] = λ^{C−j} */
    auto pw_of = [&](int q) { return (float *)(smem + S::TABOFF) + (q % S::NTAB) * S::TAB; };
    auto xt = [&](int s) { return sb + s * S::STAGE; };
    auto yt = [&](int s) { return sb + s * S::STAGE + S::X; };
    auto zt = [&](int s) { return sb + s * S::STAGE + 2 * S::X; };
    auto kvt = [&](int k) { return sb + S::KVOFF + k * S::KV; };
    const uint32_t bars = sb + S::BAROFF;
    auto full = [&](int s) { return bars + 8 * s; };
    auto empty = [&](int s) { return bars + 8 * (NS + s); };
    auto kvfull = [&](int k) { return bars + 8 * (2 * NS + k); };
    auto kvempty = [&](int k) { return bars + 8 * (2 * NS + 2 + k); };

    int *run = (int *)(smem + S::BAROFF + 96); /* a part's run (part_run), beside the 12 barriers */
    static_assert(S::TAB * S::NTAB >= PART_RUN_HEADS, "part_run's counts fit the decay tables' room");
    if (P.part && P.BH <= PART_RUN_HEADS && threadIdx.x < 32) part_run(P, (int *)(smem + S::TABOFF), run);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool rev = P.rev != 0;
    /* chunk c of item t: the first token of its box (row r of the tile is token tok0 + r) */
    auto tok0 = [&](const Item &t, int c) {
        const int64_t p = (int64_t)t.seg * P.seg + (int64_t)c * CH;
        return (int)(rev ? P.T - CH - p : p);
    };
    if (threadIdx.x == 0) {
        for (int i = 0; i < NS; i++) bar_init(full(i), 1), bar_init(empty(i), 256);
        for (int k = 0; k < 2; k++) bar_init(kvfull(k), 128), bar_init(kvempty(k), 128);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads(); /* the barriers and a part's run; no CTA-wide barrier from here on */
    const Work W = work_of(P, run);

    /* The CTA's chunks are numbered g = 0, 1, … over its items: chunk g uses stage g mod NS (phase ⌊g/NS⌋)
     * and KV slot g mod 2 (phase ⌊g/2⌋), and output warpgroup g mod 2 computes it. Chunk c of item t into
     * stage st, by one thread: */
    auto issue = [&](const Item &t, int c, int st) {
        const int b = t.bh / P.H, h = t.bh % P.H, t0 = tok0(t, c);
        bar_expect(full(st), S::STAGE);
#pragma unroll
        for (int blk = 0; blk < DX / 64; blk++) {
            load_box(xt(st) + blk * CH * 128, &A.x, blk * 64, h, t0, b, full(st));
            load_box(yt(st) + blk * CH * 128, &A.y, blk * 64, h, t0, b, full(st));
        }
        load_box(zt(st), &A.z, t.slice * EZ, h, t0, b, full(st));
    };
    if (threadIdx.x == 0) {
        /* the first NS chunks; later, the output warpgroup done with chunk g asks for chunk g + NS, which
         * may belong to the next item: the loads run on across the CTA's items without a pause */
        Item t = W.at(P, W.begin);
        int c = 0;
        for (int g = 0; g < NS && t.i < W.end; g++, W.advance(P, t, c, 1)) issue(t, c, g);
    }

    const int role = __shfl_sync(0xffffffffu, warp / 4, 0);
    if (role < 2) {
        /* output warpgroup `role`: the outputs of the chunks g ≡ role (mod 2) from KV(g) in slot `role` */
        const int ra = (warp & 3) * 16 + (lane >> 2), rb = ra + 8;
        const int ia = rev ? CH - 1 - ra : ra, ib = rev ? CH - 1 - rb : rb; /* their position indices */
        /* the chunk this warpgroup asks for next (its thread 0 does): g + NS for its chunks g */
        Item nt = W.at(P, W.begin);
        int nc = 0;
        W.advance(P, nt, nc, NS + role);
        int g = 0, q = 0;
        for (Item t = W.at(P, W.begin); t.i < W.end; t = W.at(P, t.i + W.step), q++) {
            const int b = t.bh / P.H, h = t.bh % P.H;
            const int64_t p0 = (int64_t)t.seg * P.seg, p1 = min(p0 + P.seg, P.T);
            const float *pw = pw_of(q);
            /* λ^{i−j} where position j ≤ position i, else 0 (the exact causal mask) */
            auto maskf = [&](int i, int col) {
                const int j = rev ? CH - 1 - col : col;
                return j <= i ? pw[i - j] : 0.f;
            };
            for (int c = 0; c < t.nch; c++, g++) {
                if ((g & 1) != role) continue;
                const int st = g % NS;
                bar_wait(full(st), (g / NS) & 1);
                bar_wait(kvfull(role), (g / 2) & 1); /* also: the item's decay tables are written */
                float sc[32], o[32];
                scores_inter<DX>(sc, o, xt(st), yt(st), kvt(role));
                bar_arrive(kvempty(role));
                const float pa = pw[ia], pb = pw[ib];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    o[4 * j] *= pa, o[4 * j + 1] *= pa, o[4 * j + 2] *= pb, o[4 * j + 3] *= pb;
                    const int col = j * 8 + 2 * (lane & 3);
                    sc[4 * j] *= maskf(ia, col);
                    sc[4 * j + 1] *= maskf(ia, col + 1);
                    sc[4 * j + 2] *= maskf(ib, col);
                    sc[4 * j + 3] *= maskf(ib, col + 1);
                }
                intra(o, sc, zt(st));
                bar_arrive(empty(st));
                /* chunk g + NS into this stage (same parity: NS is even), once the state warpgroup is done
                 * with it too */
                if ((threadIdx.x & 127) == 0 && nt.i < W.end) {
                    bar_wait(empty(st), (g / NS) & 1);
                    issue(nt, nc, st);
                    W.advance(P, nt, nc, 2);
                }
                const int64_t c0 = p0 + (int64_t)c * CH, t0 = tok0(t, c);
                if (t0 >= 0 && t0 + CH <= P.T) {
                    /* through shared memory and one TMA store of whole rows: per-thread stores of bf16 pairs
                     * write half sectors, and the L2 is this kernel's busiest unit. The staging tile is free
                     * once the last store has read it. (A chunk that runs past either end of the sequence
                     * stores as below: a box starting at a negative token faults.) */
                    if ((threadIdx.x & 127) == 0) asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
                    wg_sync(role);
                    const uint32_t ot = sb + S::OUTOFF + role * S::OUT;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int col = j * 8 + 2 * (lane & 3);
                        st_shared32(ot + swz(CH, ra, col), pack_bf16(o[4 * j], o[4 * j + 1]));
                        st_shared32(ot + swz(CH, rb, col), pack_bf16(o[4 * j + 2], o[4 * j + 3]));
                    }
                    fence_async_smem();
                    wg_sync(role);
                    if ((threadIdx.x & 127) == 0) {
                        store_box(&A.out, ot, t.slice * EZ, h, (int)t0, b);
                        asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
                    }
                } else {
                    const bool oka = c0 + ia < p1, okb = c0 + ib < p1;
                    bf16 *outp = (bf16 *)P.out + ((int64_t)b * P.T * P.H + h) * (int64_t)P.ezt;
                    const int64_t ts = (int64_t)P.H * P.ezt;
                    bf16 *oa = outp + (t0 + ra) * ts, *ob = outp + (t0 + rb) * ts;
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int col = t.slice * EZ + j * 8 + 2 * (lane & 3);
                        if (oka) store2<bf16>(oa + col, o[4 * j], o[4 * j + 1]);
                        if (okb) store2<bf16>(ob + col, o[4 * j + 2], o[4 * j + 3]);
                    }
                }
            }
        }
        /* the shared memory must outlive the last store's reads */
        if ((threadIdx.x & 127) == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    } else {
        /* the state warpgroup: the fp32 state in registers, rows 64·hf + 16·sw + lane/4 (+8) of half hf */
        const int sw = warp & 3, tid = threadIdx.x & 127;
        float kv[DX / 64][32];
        /* an arrived state comes through the KV slots (2·KV bytes = dx·EZ fp32), free until the CTA's KV(0) */
        static_assert(2 * S::KV == DX * EZ * 4, "the staged s_add fills the two KV slots");
        int g = 0;
        bool carried = false; /* kv holds the state entering t already */
        Item t = W.at(P, W.begin);
        for (int q = 0; t.i < W.end; q++) {
            const Item next = W.at(P, t.i + W.step);
            const bool carry = next.i < W.end && Work::follows(t, next);
            if (!carried) {
                /* the state entering the segment from the workspace, plus an arrived state (P.s_add), which
                 * the carried state then holds, decayed, for the rest of the run */
                const bool add = P.s_add && s_add_decay(P, t.seg, t.s) != 0.f; /* as load_state decides it */
                const bool staged = add && q == 0;
                if (staged) stage_s_add<DX>(sb + S::KVOFF, P, t.bh, t.slice, tid);
                load_state<DX>(kv, P, t.bh, t.seg, t.slice, t.s, sw, lane,
                               staged ? (const float *)(smem + S::KVOFF) : nullptr);
            }
            float *pw = pw_of(q), *wt = pw + CH + 4, gammaC = 0.f;
            for (int c = 0; c < t.nch; c++, g++) {
                const int k = g & 1, st = g % NS;
                /* KV(g) as bf16 into slot k, once its last reader (chunk g − 2) is done with it */
                if (g >= 2) bar_wait(kvempty(k), ((g / 2) - 1) & 1);
                if (c == 0) {
                    /* the item's decay tables, into a slot of the ring that no chunk in flight reads: the
                     * output warpgroups are past chunk g − 4 in full (each is past the chunk before the one
                     * whose KV slot it freed), and the items before this one in the ring's other slots
                     * cover at least g − 3 .. g − 1 */
                    gammaC = decay_tables(pw, wt, t.s, tid);
                    asm volatile("bar.sync 3, 128;\n" ::: "memory"); /* the state warpgroup reads wt too */
                }
                store_kv<DX>(smem + S::KVOFF + k * S::KV, kv, sw, lane);
                fence_async_smem(); /* the stores, visible to the output warpgroup's wgmma (the async proxy) */
                bar_arrive(kvfull(k));
                if (c + 1 < t.nch || carry) {
                    /* KV(g+1) = λ^C KV(g) + (diag(λ^{C−j}) Y)ᵀ Z, Yᵀ scaled in registers (after a segment's
                     * last chunk: the state entering the next) */
                    bar_wait(full(st), (g / NS) & 1);
                    advance_state<DX>(kv, gammaC, yt(st), zt(st), [&](int r) { return wt[rev ? CH - 1 - r : r]; },
                                      sw, lane);
                }
                bar_arrive(empty(st));
            }
            carried = carry, t = next;
        }
    }
#else
    (void)A;
    __trap(); /* launched only where the sm_90a code exists (attn_cuda_ctx.cu probes it) */
#endif
}

/* ---- host: the tensor maps ------------------------------------------------------------------- */

/* cuTensorMapEncodeTiled from the driver the runtime loaded (no link against libcuda) */
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    if (!fn) {
        cudaDriverEntryPointQueryResult q;
        void *p = nullptr;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
                cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
    }
    return fn;
}

/* a bf16 [B,T,H,W] tensor in boxes of 64 columns × 1 head × 64 tokens × 1, 128-byte swizzle; rows
 * outside the tensor read as zeros */
inline bool tensor_map(CUtensorMap *m, const void *base, int64_t B, int64_t T, int64_t H, int64_t W) {
    PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
    if (!enc) return false;
    const cuuint64_t dims[4] = {(cuuint64_t)W, (cuuint64_t)H, (cuuint64_t)T, (cuuint64_t)B};
    const cuuint64_t strides[3] = {(cuuint64_t)W * 2, (cuuint64_t)(H * W * 2), (cuuint64_t)(T * H * W * 2)};
    const cuuint32_t box[4] = {64, 1, (cuuint32_t)CH, 1}, one[4] = {1, 1, 1, 1};
    return enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void *>(base), dims, strides, box, one,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* kernel 3 as k_out_tma: the op's tensor maps, then the launch */
template <int DX>
cudaError_t launch_out_tma(const DirParams &P, dim3 grid, cudaStream_t st) {
    TmaParams A;
    A.P = P;
    /* persistent: one CTA an SM (its shared memory allows no more), in groups of one per z-slice, each group
     * over a run of the segments (work_of) */
    grid = dim3((unsigned)out_tma_ctas((int)grid.x, (int64_t)grid.y * grid.z, P.n_sm));
    const int64_t B = P.BH / P.H;
    if (!tensor_map(&A.x, P.x, B, P.T, P.H, DX) || !tensor_map(&A.y, P.y, B, P.T, P.H, DX) ||
        !tensor_map(&A.z, P.z, B, P.T, P.H, P.ezt) || !tensor_map(&A.out, P.out, B, P.T, P.H, P.ezt))
        return cudaErrorInvalidValue;
    return launch(k_out_tma<DX>, grid, tma::NTHR, tma::Smem<DX>::bytes, st, A);
}

}  // namespace lasp_cu

#endif
