/* sp_cuda_xfer.cu — how the GPU schedule's states travel between the ranks of an SP group.
 *
 * By default one-sided: a window of symmetric memory on every rank (lasp_comm_window_make), a put is a
 * kernel of the sender's that stores the state straight into the peer's slot over NVLink and raises its
 * counter, and the receiver's stream waits on that counter. No kernel of the receiver's stands between the
 * data and its use: a receive (NCCL's is a kernel) would need a free SM beside output passes that hold all
 * but a few. Where no window can be made (ranks not all on NVLink, no symmetric memory) or the group's
 * params ask for it (LASP_SP_TRANSFER_SEND), NCCL send/receive.
 *
 * The window holds, per direction, a slot of a state for each rank (slot p: what rank p sent), then the
 * counters data[dir][p] (raised by p after its put into slot p) and ack[dir][q] (raised by q once it has
 * read our slot there). The calls of a direction are numbered, the same on every rank (every rank makes
 * every call): a slot is written again only once its reader acknowledged the previous call's state. */
#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "sp/sp_cuda.h"
#include "sp/sp_cuda_impl.h"

namespace lasp_sp_cu {

/* An SP group's transport state (lasp_sp.gpu). */
struct Transport {
    lasp_comm_window *win; /* made on first use; none where the group cannot have one */
    size_t win_states;     /* elements of one state slot */
    char why[200];         /* set: no window could be made (send/receive), and why */
    unsigned calls[2];     /* calls made so far in each direction, which number the transfers */
};

static Transport *transport(lasp_ctx *ctx, lasp_sp *sp) {
    if (!sp->gpu) sp->gpu = calloc(1, sizeof(Transport));
    if (!sp->gpu) lasp_fail(&ctx->err, LASP_ERR_NOMEM, "SP on the GPU: no memory for the transport's state");
    return (Transport *)sp->gpu;
}

lasp_status xfer_prepare(lasp_ctx *ctx, lasp_sp *sp, Sched *s, int dir) {
    Transport *t = transport(ctx, sp);
    if (!t) return LASP_ERR_NOMEM;
    s->put = 0;
    if (sp->p.transfer == LASP_SP_TRANSFER_AUTO && !t->why[0] && s->W > 1) {
        if (!t->win || t->win_states != s->ns) {
            lasp_comm_window_free(t->win);
            t->win = NULL, t->calls[FWD] = t->calls[BWD] = 0; /* a new window's counters start at zero */
            lasp_status st = lasp_comm_window_make(sp->sp, 2 * (size_t)s->W * s->ns * sizeof(float), 4 * s->W, &t->win,
                                                   &ctx->err);
            if (st == LASP_ERR_UNSUPPORTED) { /* send/receive from now on, and the reason kept for reports */
                snprintf(t->why, sizeof t->why, "NCCL send/receive (%.170s)", ctx->err.msg);
                lasp_log(ctx, LASP_LOG_INFO, "SP states travel by %s", t->why);
            } else {
                LASP_TRY(st);
                t->win_states = s->ns;
            }
        }
        s->put = t->win != NULL;
    }
    t->calls[dir]++;
    return LASP_OK;
}

static size_t slot_bytes(const Sched *s, int dir, int p) { return ((size_t)dir * s->W + p) * s->ns * sizeof(float); }
static float *slot(const Transport *t, const Sched *s, int dir, int p) {
    return (float *)((char *)lasp_comm_window_base(t->win) + slot_bytes(s, dir, p));
}
/* Whether rank p's piece follows ours in the direction of travel (forward: later in the sequence) */
static int later(const Sched *s, int dir, int p) { return dir == FWD ? p > s->r : p < s->r; }
static int data_flag(const Sched *s, int dir, int p) { return dir * 2 * s->W + p; }
static int ack_flag(const Sched *s, int dir, int q) { return dir * 2 * s->W + s->W + q; }

/* x into rank `to`'s slot of ours, after `to` read the previous call's state there */
static lasp_status put_state(lasp_ctx *ctx, const Transport *t, const Sched *s, int dir, const float *x, int to) {
    const unsigned seq = t->calls[dir];
    if (seq > 1) LASP_TRY(lasp_comm_wait_signal(t->win, ack_flag(s, dir, to), seq - 1, &ctx->err));
    return lasp_comm_put_signal(t->win, x, s->ns * sizeof(float), slot_bytes(s, dir, s->r), to, data_flag(s, dir, s->r),
                                seq, &ctx->err);
}

/* Wait for rank `from`'s state in our window; with dst, copy it out and acknowledge at once. */
static lasp_status take_state(lasp_ctx *ctx, const Transport *t, const Sched *s, int dir, int from, float *dst) {
    const unsigned seq = t->calls[dir];
    LASP_TRY(lasp_comm_wait_signal(t->win, data_flag(s, dir, from), seq, &ctx->err));
    if (!dst) return LASP_OK;
    CU_TRY(ctx, cudaMemcpyAsync(dst, slot(t, s, dir, from), s->ns * sizeof(float), cudaMemcpyDeviceToDevice, s->C),
           "state copy");
    return lasp_comm_put_signal(t->win, NULL, 0, 0, from, ack_flag(s, dir, s->r), seq, &ctx->err);
}

lasp_status xfer_recv(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir, int from, float *dst) {
    if (s->put) return take_state(ctx, (const Transport *)sp->gpu, s, dir, from, dst);
    lasp_comm_req *rx = NULL;
    LASP_TRY(lasp_comm_irecv(sp->sp, dst, s->ns, from, LASP_F32, &rx, &ctx->err));
    return lasp_comm_wait(sp->sp, rx, &ctx->err);
}

lasp_status xfer_send(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir, const float *x, int to) {
    if (s->put) return put_state(ctx, (const Transport *)sp->gpu, s, dir, x, to);
    lasp_comm_req *tx = NULL;
    LASP_TRY(lasp_comm_isend(sp->sp, x, s->ns, to, LASP_F32, &tx, &ctx->err));
    return lasp_comm_wait(sp->sp, tx, &ctx->err);
}

lasp_status xfer_release(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir) {
    const Transport *t = (const Transport *)sp->gpu;
    for (int p = 0; s->put && p < s->W; p++)
        if (p != s->r && !later(s, dir, p))
            LASP_TRY(lasp_comm_put_signal(t->win, NULL, 0, 0, p, ack_flag(s, dir, s->r), t->calls[dir], &ctx->err));
    return LASP_OK;
}

/* With puts a rank's state goes only to the ranks whose pieces follow its own in the direction of travel,
 * straight into their windows: half an all-gather's traffic. Otherwise all of them, by W − 1 grouped
 * send/receive pairs, in step k rank r sending to r + k and receiving from r − k (every pair of a step
 * matches, so no step can wait on another), and its own state copied in place: NCCL's all-gather would
 * launch in thread-block clusters that the few SMs left free may not offer. */
lasp_status xfer_gather(lasp_ctx *ctx, lasp_sp *sp, const Sched *s, int dir, const float *x, float **Gp) {
    if (s->put) {
        const Transport *t = (const Transport *)sp->gpu;
        *Gp = slot(t, s, dir, 0); /* our own slot stays unused: the boundary states come from a combine */
        for (int p = 0; p < s->W; p++)
            if (later(s, dir, p)) LASP_TRY(put_state(ctx, t, s, dir, x, p));
        for (int p = 0; p < s->W; p++)
            if (p != s->r && !later(s, dir, p)) LASP_TRY(take_state(ctx, t, s, dir, p, NULL));
        return LASP_OK;
    }
    float *G = *Gp;
    CU_TRY(ctx, cudaMemcpyAsync(G + (size_t)s->r * s->ns, x, s->ns * sizeof(float), cudaMemcpyDeviceToDevice, s->C),
           "state copy");
    for (int k = 1; k < s->W; k++) {
        const int to = (s->r + k) % s->W, from = (s->r - k + s->W) % s->W;
        LASP_TRY(lasp_comm_sendrecv(sp->sp, x, s->ns, to, G + (size_t)from * s->ns, s->ns, from, LASP_F32, &ctx->err));
    }
    return LASP_OK;
}

}  // namespace lasp_sp_cu

using namespace lasp_sp_cu;

extern "C" void lasp_sp_gpu_free(lasp_sp *sp) {
    Transport *t = (Transport *)sp->gpu;
    if (!t) return;
    lasp_comm_window_free(t->win);
    free(t);
    sp->gpu = NULL;
}

extern "C" const char *lasp_sp_gpu_transfer(const lasp_sp *sp) {
    const Transport *t = (const Transport *)sp->gpu;
    if (t && t->win) return "one-sided puts into the peers' memory";
    if (t && t->why[0]) return t->why;
    if (sp->p.transfer == LASP_SP_TRANSFER_SEND) return "NCCL send/receive (asked for)";
    return sp->sp_size > 1 ? "not yet decided (no layer has run)" : "none (one rank a sequence)";
}
