/* test_cuda_sched.cu — how k_out_tma (attn_kern_sm90_out.h) shares out its work, checked on the host (no
 * GPU needed; built where nvcc is). Over random shapes, slopes and SM counts, and for the whole op and both
 * parts of a split finish: every (slice, segment, head) block the launch must run is run by exactly one CTA
 * and no block of the other part is; each CTA's load cursor, moved on chunk by chunk, meets its items' chunks
 * in the order its loops take them; a state is carried only into the next segment of the same head; and at
 * the bench's shape the runs are as even as intended. */
#include <math.h>
#include <stdint.h>
#include <vector>

#include "attn/attn_kern_launch.h"
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
    const int ctas = out_tma_ctas(slices, (int64_t)P.ns * P.BH, n_sm), groups = ctas / slices;
    CHECK(ctas % slices == 0 && ctas <= (n_sm > slices ? n_sm : slices), "%d CTAs for %d slices on %d SMs", ctas,
          slices, n_sm);
    std::vector<int> cnt(P.BH);
    for (int hh = 0; hh < P.BH; hh++) cnt[hh] = reach(P, hh);
    std::vector<int> seen((size_t)slices * P.ns * P.BH, 0);
    int most = 0;
    for (int b = 0; b < ctas; b++) {
        int run[2] = {0, 0};
        if (P.part && P.BH <= PART_RUN_HEADS) part_bounds(P, cnt.data(), groups, b / slices, run);
        const Work W = work_for(P, run, groups, b / slices, b % slices);
        Item cur = W.at(P, W.begin), prev = cur;
        int cc = 0, items = 0;
        for (Item t = W.at(P, W.begin); t.i < W.end; t = W.at(P, t.i + W.step)) {
            CHECK(t.slice == b % slices && t.bh >= 0 && t.bh < P.BH && t.seg >= 0 && t.seg < P.ns,
                  "CTA %d: item slice %d head %d segment %d", b, t.slice, t.bh, t.seg);
            CHECK(!not_in_part(P.part, P, t.seg, t.s), "CTA %d runs head %d segment %d of the other part", b, t.bh,
                  t.seg);
            seen[((size_t)t.bh * P.ns + t.seg) * slices + t.slice]++;
            if (items > 0 && Work::follows(prev, t))
                CHECK(t.bh == prev.bh && t.seg == prev.seg + 1, "CTA %d carries head %d seg %d into head %d seg %d", b,
                      prev.bh, prev.seg, t.bh, t.seg);
            for (int c = 0; c < t.nch; c++) { /* the load cursor (Work::advance) meets the same chunks */
                CHECK(cur.i == t.i && cc == c, "CTA %d: cursor at %d/%d, loops at %d/%d", b, cur.i, cc, t.i, c);
                W.advance(P, cur, cc, 1);
            }
            prev = t, items++;
        }
        CHECK(cur.i >= W.end, "CTA %d: its cursor has chunks left after its last item", b);
        most = items > most ? items : most;
    }
    for (int hh = 0; hh < P.BH; hh++)
        for (int k = 0; k < P.ns; k++)
            for (int sl = 0; sl < slices; sl++) {
                const int want = not_in_part(P.part, P, k, P.slopes[hh % P.H]) ? 0 : 1;
                const int got = seen[((size_t)hh * P.ns + k) * slices + sl];
                CHECK(got == want, "head %d segment %d slice %d run %d times, not %d (part %d, %d heads, %d segments, "
                      "%d CTAs)", hh, k, sl, got, want, P.part, P.BH, P.ns, ctas);
            }
    return most;
}

int main(void) {
    rng_state = test_seed() | 1;
    const float kinds[5] = {0.0f, 1e-6f, 0.01f, 0.7f, 8.0f};
    for (int part = 0; part <= 2; part++) {
        for (int trial = 0; trial < 400; trial++) {
            const int H = 1 + (int)rnd(40), B = 1 + (int)rnd(3), BH = B * H;
            std::vector<float> sl(H);
            for (int h = 0; h < H; h++)
                sl[h] = rnd(2) ? kinds[rnd(5)] : (float)pow(2.0, -8.0 * (h + 1) / H);
            DirParams P = {};
            P.slopes = sl.data(), P.H = H, P.BH = BH;
            P.seg = 64 * (1 + (int)rnd(64)), P.ns = 1 + (int)rnd(70);
            P.T = (int64_t)P.ns * P.seg - rnd(P.seg); /* the last segment may be short */
            P.ezt = 64 * (1 + (int)rnd(2)), P.dx = 128, P.sigma = (int)rnd(2), P.part = part;
            const int sms[6] = {132, 114, 78, 16, 3, 1};
            check_launch(P, sms[rnd(6)]);
        }
        const char *what[3] = {"the whole op", "part 1 of a split finish", "part 2 of a split finish"};
        test_case("k_out_tma's work split, %s: 400 random launches (shapes, slopes, SM counts)", what[part]);
    }
    /* the bench's shape on an H200 (B1 H16 T32768 D128: 32 segments of 1024, 2 slices, 132 SMs): runs of 8
     * for the whole op, and a split finish's part 2 (every head's first segments) at most 2 a group */
    std::vector<float> sl(16);
    for (int h = 0; h < 16; h++) sl[h] = (float)pow(2.0, -8.0 * (h + 1) / 16);
    DirParams P = {};
    P.slopes = sl.data(), P.H = 16, P.BH = 16, P.seg = 1024, P.ns = 32, P.T = 32768, P.ezt = 128,
    P.dx = 128;
    const int whole = check_launch(P, 132);
    P.part = 2;
    const int part2 = check_launch(P, 132);
    CHECK(whole == 8 && part2 <= 2, "most items a CTA: %d for the whole op (want 8), %d for part 2 (want ≤ 2)", whole,
          part2);
    test_case("k_out_tma's work split at B1 H16 T32768 D128 on 132 SMs: runs of %d, part 2 at most %d a CTA", whole,
              part2);
    return test_exit();
}
