/* cmd_attn_sp.c — `lasp attn` under mpirun: world = dp × sp, each rank runs the op on its batch slice
 * (dp) and its piece of the sequence (sp) through src/sp, and rank 0 gathers and writes the files
 * that one process would write.
 *
 * Failure behaviour: everything that can go wrong on one rank alone before the run (reading, shapes,
 * memory) is agreed on by one all-reduce, so every rank stops with exit 1 and nobody waits in a
 * receive. Past that point a failing rank ends the whole job through lasp_comm_abort (MPI_Abort) with a
 * message naming it. LASP_TEST_FAIL_RANK=R (a test hook) makes rank R fail inside the run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn_io.h"
#include "clock.h"
#include "lasp.h"
#include "opts.h"
#include "worlds.h"

typedef struct layout {
    int n, rank;
    int sp, dp;
    int64_t B, T, Bl, Tl;
} layout;

static int64_t b0_of(const layout *L, int r) { return (int64_t)(r / L->sp) * L->Bl; }
static int64_t t0_of(const layout *L, int r) { return (int64_t)(r % L->sp) * L->Tl; }

/* Rows [t0, t0+Tl) of batch entries [b0, b0+Bl) of a [B, T, R] tensor ↔ a [Bl, Tl, R] piece. */
static void take(float *piece, const float *full, const layout *L, int r, int64_t R) {
    for (int64_t b = 0; b < L->Bl; b++)
        memcpy(piece + b * L->Tl * R, full + ((b0_of(L, r) + b) * L->T + t0_of(L, r)) * R,
               (size_t)(L->Tl * R) * sizeof *piece);
}

static void put(float *full, const float *piece, const layout *L, int r, int64_t R) {
    for (int64_t b = 0; b < L->Bl; b++)
        memcpy(full + ((b0_of(L, r) + b) * L->T + t0_of(L, r)) * R, piece + b * L->Tl * R,
               (size_t)(L->Tl * R) * sizeof *piece);
}

static void die(lasp_comm *w, const char *what, const char *msg) {
    char line[1200];
    snprintf(line, sizeof line, "lasp attn: %s: %s", what, msg);
    lasp_comm_abort(w, line);
}

/* Rank 0 collects every rank's piece into full; the others send theirs. */
static void gather_pieces(lasp_comm *w, const layout *L, const float *piece, float *full, int64_t R, float *tmp) {
    lasp_err err = {0};
    const size_t cnt = (size_t)(L->Bl * L->Tl * R);
    if (L->rank != 0) {
        if (lasp_comm_sendrecv(w, piece, cnt, 0, NULL, 0, -1, LASP_F32, &err) != LASP_OK) die(w, "gather", err.msg);
        return;
    }
    put(full, piece, L, 0, R);
    for (int src = 1; src < L->n; src++) {
        if (lasp_comm_sendrecv(w, NULL, 0, -1, tmp, cnt, src, LASP_F32, &err) != LASP_OK) die(w, "gather", err.msg);
        put(full, tmp, L, src, R);
    }
}

/* Rank 0 collects the states [Bl, H, d, e] of the ranks at SP position `pos` (one per DP group). */
static void gather_states(lasp_comm *w, const layout *L, int pos, const float *state, float *full, size_t ls) {
    lasp_err err = {0};
    for (int r = pos; r < L->n; r += L->sp) {
        float *dst = full + (size_t)(r / L->sp) * ls;
        if (r == 0 && L->rank == 0) memcpy(dst, state, ls * sizeof *dst);
        else if (L->rank == r && lasp_comm_sendrecv(w, state, ls, 0, NULL, 0, -1, LASP_F32, &err) != LASP_OK)
            die(w, "gather", err.msg);
        else if (L->rank == 0 && lasp_comm_sendrecv(w, NULL, 0, -1, dst, ls, r, LASP_F32, &err) != LASP_OK)
            die(w, "gather", err.msg);
    }
}

/* Sum of `mine` over the world; a failure here leaves the ranks in disagreement, so it aborts. */
static int agree(lasp_comm *w, int mine) {
    float x = (float)mine, sum = 0;
    lasp_err err = {0};
    if (lasp_comm_allreduce(w, &x, &sum, 1, LASP_F32, LASP_REDUCE_SUM, &err) != LASP_OK) die(w, "agree", err.msg);
    return (int)sum;
}

static int fault_here(int rank) {
    const char *e = getenv("LASP_TEST_FAIL_RANK");
    return e && *e && atoi(e) == rank;
}

int attn_sp(attn_args *o) {
    const int m = o->sp_mode ? opts_sp_mode(o->sp_mode, "--sp-mode", 0) : 0;
    if (m < 0) return 2;
    const lasp_sp_mode mode = (lasp_sp_mode)m;
    const int gpu = !strcmp(o->device, "cuda");
    lasp_dtype dt = LASP_F32;
    if (!strcmp(o->dtype, "bf16")) dt = LASP_BF16;
    else if (!strcmp(o->dtype, "f16")) dt = LASP_F16;
    if ((!gpu && strcmp(o->device, "cpu")) || (!gpu && dt != LASP_F32)) {
        fprintf(stderr, "error: --device %s --dtype %s with --sp (hint: --device cpu runs f32; bf16 and f16 run on "
                "--device cuda)\n", o->device, o->dtype);
        return 2;
    }
    lasp_err err = {0};
    lasp_comm *world = NULL, *gworld = NULL;
    /* MPI only when a launcher started us: one process needs no MPI (the GPU path always uses it) */
    const lasp_comm_backend be = gpu || lasp_comm_launcher_size() > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    /* on GPUs the states travel over NCCL; the host world still agrees, gathers and aborts */
    if (tools_open_worlds(be, NULL, NULL, gpu, &world, &gworld)) return 1;
    layout L = {.n = lasp_comm_size(world), .rank = lasp_comm_rank(world), .sp = o->sp ? (int)o->sp : 1};
    if (o->sp < 0 || o->sp > L.n || L.n % L.sp) {
        fprintf(stderr, "error: rank %d: --sp %lld does not divide the %d ranks of this job (world = dp × sp; hint: "
                "mpirun -np a multiple of %lld, or an --sp that divides %d)\n", L.rank, o->sp, L.n, o->sp, L.n);
        lasp_comm_free(world);
        return 2;
    }
    L.dp = L.n / L.sp;
    lasp_sp *sp = NULL;
    lasp_sp_params spp = lasp_sp_default_params();
    spp.size = L.sp, spp.mode = mode;
    if (lasp_sp_create(gpu ? gworld : world, &spp, &sp, &err) != LASP_OK) die(world, "layout", err.msg);
    const lasp_sp_layout lay = lasp_sp_get_layout(sp);

    /* ---- before the run: everything that can fail on one rank alone, then one agreement ---- */
    attn_files f = {0};
    int bad = o->random ? attn_make_random(o, &f) : attn_load_all(o, &f);
    if (o->random) o->do_ = "(random)";
    if (bad) fprintf(stderr, "lasp attn: rank %d: cannot use the inputs (error above)\n", L.rank);
    const lasp_attn_desc *a = &f.a;
    if (!bad && a->T % L.sp) {
        fprintf(stderr, "error: rank %d: T = %lld tokens do not split into --sp %d equal pieces (hint: a T that "
                "divides by %d, or another --sp)\n", L.rank, (long long)a->T, L.sp, L.sp);
        bad = 1;
    }
    if (!bad && a->B % L.dp) {
        fprintf(stderr, "error: rank %d: batch B = %lld does not split over dp = %d (= %d ranks / --sp %d) (hint: a B "
                "that divides by %d, or a larger --sp)\n", L.rank, (long long)a->B, L.dp, L.n, L.sp, L.dp);
        bad = 1;
    }
    L.B = a->B, L.T = a->T, L.Bl = L.B / L.dp, L.Tl = L.T / L.sp;
    const int64_t H = a->H, d = a->d, e = a->e;
    const int bwd = o->do_ != NULL;
    const size_t lq = (size_t)(L.Bl * L.Tl * H * d), lv = (size_t)(L.Bl * L.Tl * H * e), ls = (size_t)(L.Bl * H * d * e);
    float *q = NULL, *k = NULL, *v = NULL, *dO = NULL, *o_ = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *kvo = NULL,
          *dkvi = NULL, *tmp = NULL, *full[6] = {0};
    lasp_ctx *ctx = NULL;
    lasp_sp_cache *cache = NULL;
    if (!bad) {
        q = malloc(lq * 4), k = malloc(lq * 4), v = malloc(lv * 4), o_ = malloc(lv * 4);
        kvo = calloc(ls, 4), dkvi = calloc(ls, 4), tmp = malloc((lq > lv ? lq : lv) * 4);
        if (bwd) dO = malloc(lv * 4), dq = malloc(lq * 4), dk = malloc(lq * 4), dv = malloc(lv * 4);
        const size_t counts[6] = {f.v.count, (size_t)(L.B * H * d * e), f.q.count, f.q.count, f.v.count,
                                  (size_t)(L.B * H * d * e)};
        int nomem = !q || !k || !v || !o_ || !kvo || !dkvi || !tmp || (bwd && (!dO || !dq || !dk || !dv));
        for (int i = 0; L.rank == 0 && i < (bwd ? 6 : 2); i++) nomem |= !(full[i] = malloc(counts[i] * 4));
        lasp_ctx_params cp = lasp_ctx_default_params();
        cp.n_threads = (int)o->threads;
        if (nomem || lasp_ctx_create(&cp, &ctx) != LASP_OK) {
            fprintf(stderr, "error: rank %d: no memory for this rank's piece (%zu + %zu floats)\n", L.rank, lq, lv);
            bad = 1;
        }
    }
    const int n_bad = agree(world, bad);
    int rc = 1;
    if (n_bad) {
        if (L.rank == 0) fprintf(stderr, "lasp attn: %d of %d ranks failed before the run; nothing was written\n",
                                 n_bad, L.n);
        goto done;
    }

    /* ---- the run: from here a failing rank ends the job ---- */
    take(q, f.q.data, &L, L.rank, H * d), take(k, f.k.data, &L, L.rank, H * d), take(v, f.v.data, &L, L.rank, H * e);
    if (bwd) take(dO, f.do_.data, &L, L.rank, H * e);
    const int first = lay.sp_rank == 0, last = lay.sp_rank == L.sp - 1;
    const float *kvi = first && f.kv_in.data ? (const float *)f.kv_in.data + lay.dp_rank * ls : NULL;
    const float *dkvo = last && f.dkv_out.data ? (const float *)f.dkv_out.data + lay.dp_rank * ls : NULL;
    lasp_attn_desc al = *a;
    al.B = L.Bl, al.T = L.Tl;
    if (fault_here(L.rank)) die(world, "forward", "failing on purpose (LASP_TEST_FAIL_RANK)");
    const double t0 = tool_now_ms();
    if (gpu) {
        al.dtype = dt;
        const attn_piece p = {q, k, v, f.slopes.data, kvi, bwd ? dO : NULL, dkvo, o_, last ? kvo : NULL, dq, dk, dv,
                              first ? dkvi : NULL};
        char msg[1200];
        if (attn_sp_piece_cuda(ctx, sp, &al, &p, msg, sizeof msg)) die(world, "on the GPU", msg);
    } else {
        if (lasp_sp_attn_fwd(ctx, sp, &al, q, k, v, f.slopes.data, kvi, o_, last ? kvo : NULL, &cache) != LASP_OK)
            die(world, "forward", lasp_ctx_error(ctx));
        if (bwd && lasp_sp_attn_bwd(ctx, sp, &al, q, k, v, f.slopes.data, cache, dO, dkvo, dq, dk, dv,
                                    first ? dkvi : NULL) != LASP_OK)
            die(world, "backward", lasp_ctx_error(ctx));
    }
    const double ms = tool_now_ms() - t0;

    gather_pieces(world, &L, o_, full[0], H * e, tmp);
    gather_states(world, &L, L.sp - 1, kvo, full[1], ls);
    if (bwd) {
        gather_pieces(world, &L, dq, full[2], H * d, tmp);
        gather_pieces(world, &L, dk, full[3], H * d, tmp);
        gather_pieces(world, &L, dv, full[4], H * e, tmp);
        gather_states(world, &L, 0, dkvi, full[5], ls);
    }

    rc = 0;
    if (L.rank == 0) {
        const int64_t st_shape[4] = {L.B, H, d, e};
        const size_t counts[6] = {f.v.count, (size_t)(L.B * H * d * e), f.q.count, f.q.count, f.v.count,
                                  (size_t)(L.B * H * d * e)};
        rc = attn_check_finite((const float *const *)full, counts, bwd ? 6 : 2) || attn_make_dir(o->out) ||
             attn_write_out(o->out, "o", 4, f.v.shape, full[0]) ||
             attn_write_out(o->out, "kv_out", 4, st_shape, full[1]);
        if (!rc && o->random)
            rc = attn_write_out(o->out, "q", 4, f.q.shape, f.q.data) || attn_write_out(o->out, "k", 4, f.k.shape, f.k.data) ||
                 attn_write_out(o->out, "v", 4, f.v.shape, f.v.data) ||
                 attn_write_out(o->out, "do", 4, f.do_.shape, f.do_.data) ||
                 attn_write_out(o->out, "slopes", 1, f.slopes.shape, f.slopes.data);
        if (!rc && bwd)
            rc = attn_write_out(o->out, "dq", 4, f.q.shape, full[2]) || attn_write_out(o->out, "dk", 4, f.k.shape, full[3]) ||
                 attn_write_out(o->out, "dv", 4, f.v.shape, full[4]) ||
                 attn_write_out(o->out, "dkv_in", 4, st_shape, full[5]);
        if (!rc) {
            printf("lasp attn: B=%lld T=%lld H=%lld d=%lld e=%lld on %d ranks (dp %d × sp %d, %s, %s %s): %.2f ms on rank 0; "
                   "wrote %s/{o,kv_out%s}.npy\n", (long long)L.B, (long long)L.T, (long long)H, (long long)d,
                   (long long)e, L.n, L.dp, L.sp, lasp_sp_mode_name(mode), o->device, o->dtype, ms, o->out,
                   bwd ? ",dq,dk,dv,dkv_in" : "");
            fflush(stdout);
            rc = o->check ? attn_check(ctx, &f, bwd, (const float *const *)full, o->tol) : 0;
        }
    }
    /* one exit status for the whole job */
    rc = agree(world, rc != 0) ? 1 : 0;
done:
    free(q), free(k), free(v), free(dO), free(o_), free(dq), free(dk), free(dv), free(kvo), free(dkvi), free(tmp);
    for (int i = 0; i < 6; i++) free(full[i]);
    lasp_sp_cache_free(cache);
    lasp_ctx_free(ctx);
    attn_files_free(&f);
    lasp_sp_free(sp);
    lasp_comm_free(gworld);
    lasp_comm_free(world);
    return rc;
}
