/* test_cuda_sched.cu — how k_out_tma (attn_cuda_tma.h) shares out its work, checked on the host (no GPU
 * needed; built where nvcc is). Over random shapes, slopes, head groups and SM counts, and for the whole op
 * and both parts of a split finish (in two launches or one): every (slice, segment, head) block the launch
 * must run is run by
 * exactly one CTA and no block of the other part is; each CTA's load cursor, moved on chunk by chunk,
 * meets its items' chunks in the order its loops take them; a state is carried only into the next segment
 * of the same head; and at the bench's shape the runs are as even as intended. */
#include <math.h>
#include <stdint.h>
#include <vector>

#include "attn/attn_cuda_kern.h"
#include "test.h"

using namespace lasp_cu;

static uint64_t rng_state;
static uint32_t rnd(uint32_t n) { /* xorshift64*, uniform enough for picking shapes */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 33) % n;
}

/* the segments of head bh the arrived state reaches (decay not 0 in fp32): part 2 of a split finish */
static int reach(const DirParams &P, int bh) {
    int k = 0;
    while (k < P.ns && s_add_decay(P, k, P.slopes[bh % P.H]) != 0.f) k++;
    return k;
}

/* One launch's split. Returns the most items a CTA runs (for the balance checks); failures go to CHECK. */
static int check_launch(const DirParams &P, int n_sm) {
    const int slices = P.ezt / wg::EZ;
    const int ctas = out_tma_ctas(slices, (int64_t)P.ns * P.nbh, n_sm), groups = ctas / slices;
    CHECK(ctas % slices == 0 && ctas <= (n_sm > slices ? n_sm : slices), "%d CTAs for %d slices on %d SMs", ctas,
          slices, n_sm);
    std::vector<int> cnt(P.nbh > 0 ? P.nbh : 1);
    for (int hh = 0; hh < P.nbh; hh++) cnt[hh] = reach(P, P.bh0 + hh);
    std::vector<int> seen((size_t)slices * P.ns * P.nbh, 0);
    const int n = P.ns * P.nbh; /* part 3 numbers part 2's positions from n on */
    int most = 0;
    for (int b = 0; b < ctas; b++) {
        int run[4] = {0, 0, 0, 0};
        if (P.part && P.nbh <= PART_RUN_HEADS) part_bounds(P, cnt.data(), groups, b / slices, run);
        const Work W = work_for(P, run, groups, b / slices, b % slices);
        Item cur = W.at(P, W.begin), prev = cur;
        int cc = 0, items = 0;
        for (Item t = W.at(P, W.begin); t.i < W.end; t = W.at(P, t.i + W.step)) {
            CHECK(t.slice == b % slices && t.bh >= P.bh0 && t.bh < P.bh0 + P.nbh && t.seg >= 0 && t.seg < P.ns,
                  "CTA %d: item slice %d head %d segment %d", b, t.slice, t.bh, t.seg);
            CHECK(!other_part(P, t.seg, t.s), "CTA %d runs head %d segment %d of the other part", b, t.bh, t.seg);
            if (P.part == 3) /* part 1's blocks first, then part 2's, each where it belongs */
                CHECK(!not_in_part(t.i >= n ? 2 : 1, P, t.seg, t.s) && (items == 0 || t.i >= n || prev.i < n),
                      "CTA %d: head %d segment %d as part %d, after position %d", b, t.bh, t.seg, t.i >= n ? 2 : 1,
                      prev.i);
            seen[((size_t)(t.bh - P.bh0) * P.ns + t.seg) * slices + t.slice]++;
            if (items > 0 && Work::follows(prev, t))
                CHECK(t.bh == prev.bh && t.seg == prev.seg + 1 && (t.i >= n) == (prev.i >= n),
                      "CTA %d carries head %d seg %d into head %d seg %d", b, prev.bh, prev.seg, t.bh, t.seg);
            for (int c = 0; c < t.nch; c++) { /* the load cursor (Work::advance) meets the same chunks */
                CHECK(cur.i == t.i && cc == c, "CTA %d: cursor at %d/%d, loops at %d/%d", b, cur.i, cc, t.i, c);
                W.advance(P, cur, cc, 1);
            }
            prev = t, items++;
        }
        CHECK(cur.i >= W.end, "CTA %d: its cursor has chunks left after its last item", b);
        most = items > most ? items : most;
    }
    for (int hh = 0; hh < P.nbh; hh++)
        for (int k = 0; k < P.ns; k++)
            for (int sl = 0; sl < slices; sl++) {
                const int want = other_part(P, k, P.slopes[(P.bh0 + hh) % P.H]) ? 0 : 1;
                const int got = seen[((size_t)hh * P.ns + k) * slices + sl];
                CHECK(got == want, "head %d segment %d slice %d run %d times, not %d (part %d, %d heads, %d segments, "
                      "%d CTAs)", P.bh0 + hh, k, sl, got, want, P.part, P.nbh, P.ns, ctas);
            }
    return most;
}

int main(void) {
    rng_state = test_seed() | 1;
    const float kinds[5] = {0.0f, 1e-6f, 0.01f, 0.7f, 8.0f};
    for (int part = 0; part <= 3; part++) {
        for (int trial = 0; trial < 400; trial++) {
            const int H = 1 + (int)rnd(40), B = 1 + (int)rnd(3), BH = B * H;
            std::vector<float> sl(H);
            for (int h = 0; h < H; h++)
                sl[h] = rnd(2) ? kinds[rnd(5)] : (float)pow(2.0, -8.0 * (h + 1) / H);
            DirParams P = {};
            P.slopes = sl.data(), P.H = H, P.BH = BH;
            P.bh0 = (int)rnd(BH), P.nbh = 1 + (int)rnd(BH - P.bh0); /* a head group, as the SP chain runs them */
            P.seg = 64 * (1 + (int)rnd(64)), P.ns = 1 + (int)rnd(70);
            P.T = (int64_t)P.ns * P.seg - rnd(P.seg); /* the last segment may be short */
            P.ezt = 64 * (1 + (int)rnd(2)), P.dx = 128, P.sigma = (int)rnd(2), P.part = part;
            const int sms[6] = {132, 114, 78, 16, 3, 1};
            check_launch(P, sms[rnd(6)]);
        }
        const char *what[4] = {"the whole op", "part 1 of a split finish", "part 2 of a split finish",
                               "both parts in one launch"};
        test_case("k_out_tma's work split, %s: 400 random launches (shapes, slopes, head groups, SM counts)",
                  what[part]);
    }
    /* the bench's shape on an H200 (B1 H16 T32768 D128: 32 segments of 1024, 2 slices, 132 SMs): runs of 8
     * for the whole op, and a split finish's part 2 (every head's first segments) at most 2 a group */
    std::vector<float> sl(16);
    for (int h = 0; h < 16; h++) sl[h] = (float)pow(2.0, -8.0 * (h + 1) / 16);
    DirParams P = {};
    P.slopes = sl.data(), P.H = 16, P.BH = 16, P.nbh = 16, P.seg = 1024, P.ns = 32, P.T = 32768, P.ezt = 128,
    P.dx = 128;
    const int whole = check_launch(P, 132);
    P.part = 2;
    const int part2 = check_launch(P, 132);
    CHECK(whole == 8 && part2 <= 2, "most items a CTA: %d for the whole op (want 8), %d for part 2 (want ≤ 2)", whole,
          part2);
    /* both parts in one launch on the 128 SMs the SP schedule leaves its output passes: 8 each, as one launch */
    P.part = 3;
    const int both = check_launch(P, 128), both132 = check_launch(P, 132);
    CHECK(both == 8 && both132 == 8, "most items a CTA with both parts in one launch: %d on 128 SMs, %d on 132 "
          "(want 8)", both, both132);
    test_case("k_out_tma's work split at B1 H16 T32768 D128 on 132 SMs: runs of %d, part 2 at most %d a CTA, both "
              "parts in one launch %d", whole, part2, both);
    return test_exit();
}
