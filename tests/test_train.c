/* test_train.c — SP and ZeRO invariance (run under mpirun -np 1, 2, 4 by tests/run.sh).
 * For every (dp, sp) layout the world allows among {(1,1), (1,2), (1,4), (2,1), (2,2)} and every
 * ZeRO stage 0–3: the loss and every parameter gradient of one fixed batch equal those of a
 * single process (each rank computes that reference itself, on a one-rank world) within 1e-5
 * relative per parameter tensor group (unit), and a 20-step loss curve agrees within 1e-4.
 * Verdicts are reduced over the ranks; rank 0 prints them. */
#include <math.h>
#include <string.h>

#include "train/trainer.h"
#include "test.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static lasp_comm *world;
static int rank;

/* Ends a case with the verdict of every rank. */
static void case_all(const char *fmt, const char *a, int b, int c) {
    double bad = test_failed_checks_, red;
    lasp_err err = {0};
    lasp_comm_allreduce(world, &bad, &red, 1, LASP_F64, LASP_REDUCE_MAX, &err);
    if (rank == 0) {
        test_failed_checks_ = red > 0;
        test_case(fmt, a, b, c);
    } else {
        test_failed_checks_ = 0;
    }
}

static lasp_train_params opts(int zero) {
    lasp_train_params o = lasp_train_default_params();
    lasp_err err = {0};
    lasp_model_preset("tiny", 256, &o.model, &err);
    o.batch = 4, o.seq_len = 64, o.steps = 20, o.warmup = 2, o.lr = 1e-2, o.min_lr = 1e-3, o.zero = zero;
    o.seed = 42;
    return o;
}

typedef struct result {
    double loss;
    float *grad;
    double curve[20];
} result;

static int64_t chunk_tokens; /* o.chunk of the next run() */

static int run(lasp_comm *w, int sp_size, lasp_sp_mode mode, int zero, const lasp_data *d, lasp_ctx *ctx, result *r) {
    lasp_sp *sp = NULL;
    lasp_err err = {0};
    lasp_sp_params spp = lasp_sp_default_params();
    spp.size = sp_size, spp.mode = mode;
    if (lasp_sp_create(w, &spp, &sp, &err) != LASP_OK) {
        CHECK(0, "sp create: %s", err.msg);
        return 1;
    }
    lasp_train_params o = opts(zero);
    o.chunk = chunk_tokens;
    lasp_trainer t;
    int bad = 0;
    if (lasp_trainer_init(&t, ctx, sp, d, &o) != LASP_OK) {
        CHECK(0, "trainer init: %s", lasp_ctx_error(ctx));
        lasp_sp_free(sp);
        return 1;
    }
    r->grad = malloc(t.P * sizeof(float));
    if (lasp_trainer_grad(&t, &r->loss, r->grad) != LASP_OK) {
        CHECK(0, "grad: %s", lasp_ctx_error(ctx));
        bad = 1;
    }
    lasp_trainer_release(&t);
    if (!bad && lasp_trainer_init(&t, ctx, sp, d, &o) == LASP_OK) {
        for (int s = 0; s < 20 && !bad; s++) {
            lasp_step_stats st;
            if (lasp_trainer_step(&t, &st) != LASP_OK) {
                CHECK(0, "step: %s", lasp_ctx_error(ctx));
                bad = 1;
            }
            r->curve[s] = st.loss;
        }
        lasp_trainer_release(&t);
    }
    lasp_sp_free(sp);
    return bad;
}

int main(int argc, char **argv) {
    lasp_err err = {0};
#ifdef _OPENMP
    omp_set_num_threads(1);  /* ranks share the cores: one thread each, as under the launcher in docs */
#endif
    if (lasp_comm_world(LASP_COMM_MPI, &argc, &argv, &world, &err) != LASP_OK) {
        printf("FAIL comm world: %s\n", err.msg);
        return 1;
    }
    rank = lasp_comm_rank(world);
    const int W = lasp_comm_size(world);
    lasp_comm *self;
    lasp_comm_world(LASP_COMM_SELF, &argc, &argv, &self, &err);
    lasp_ctx *ctx;
    lasp_ctx_params cp = lasp_ctx_default_params();
    lasp_ctx_create(&cp, &ctx);
    lasp_data *d = NULL;
    lasp_data_recall(7, 8, &d, &err);
    if (rank == 0) printf("# world of %d ranks\n", W);

    result ref;
    CHECK(run(self, 1, LASP_SP_CHAIN, 0, d, ctx, &ref) == 0, "single-process reference failed");
    lasp_train_params o = opts(0);
    lasp_layout lay;
    lasp_layout_make(&o.model, &lay, &err);

    /* one process, the sequence run in chunks that carry the attention state and the convolution's halo: the
     * same loss, gradients and curve as the whole sequence at once */
    if (rank == 0)
        for (int64_t chunk = 32; chunk >= 4; chunk /= 8) {
            result r;
            chunk_tokens = chunk;
            if (run(self, 1, LASP_SP_CHAIN, 0, d, ctx, &r) == 0) {
                const double le = fabs(r.loss - ref.loss) / fabs(ref.loss);
                double num = 0, den = 0, cw = 0;
                for (size_t i = 0; i < lay.n_params; i++)
                    num += pow(r.grad[i] - ref.grad[i], 2), den += pow(ref.grad[i], 2);
                for (int s = 0; s < 20; s++)
                    if (fabs(r.curve[s] - ref.curve[s]) / fabs(ref.curve[s]) > cw)
                        cw = fabs(r.curve[s] - ref.curve[s]) / fabs(ref.curve[s]);
                CHECK(le < 1e-5 && sqrt(num / den) < 1e-5 && cw < 1e-4, "chunks of %lld: loss rel %.2e, gradient rel "
                      "%.2e, curve rel %.2e", (long long)chunk, le, sqrt(num / den), cw);
                printf("# chunks of %lld tokens: loss rel %.1e, gradient rel %.1e, curve rel %.1e\n", (long long)chunk,
                       le, sqrt(num / den), cw);
                free(r.grad);
            }
            test_case("one process, the sequence in chunks of %lld tokens (state and halo carried): loss, gradients "
                      "and 20-step curve = the whole sequence", (long long)chunk);
        }
    chunk_tokens = 0;

    for (int sp = 1; sp <= W; sp *= 2) {
        if (W % sp || (W / sp == 4)) continue;  /* the layouts of the issue: dp ≤ 2 */
        /* the chain with every ZeRO stage; over split sequences the other modes too, each with a stage (the
         * tiny preset's 2 heads: Ulysses up to sp 2); and each piece in two chunks, the state relayed from rank
         * to rank (ZeRO 0 and 1, which chunks take) */
        const struct { lasp_sp_mode mode; int zero, chunked; } cfg[] = {
            {LASP_SP_CHAIN, 0, 0}, {LASP_SP_CHAIN, 1, 0}, {LASP_SP_CHAIN, 2, 0}, {LASP_SP_CHAIN, 3, 0},
            {LASP_SP_LASP2, 1, 0}, {LASP_SP_ULYSSES, 0, 0}, {LASP_SP_ALLGATHER, 2, 0},
            {LASP_SP_CHAIN, 0, 1}, {LASP_SP_CHAIN, 1, 1}};
        for (size_t ci = 0; ci < sizeof cfg / sizeof cfg[0]; ci++) {
            const lasp_sp_mode mode = cfg[ci].mode;
            const int zero = cfg[ci].zero;
            chunk_tokens = cfg[ci].chunked ? o.seq_len / sp / 2 : 0;
            if (mode != LASP_SP_CHAIN && (sp == 1 || (mode == LASP_SP_ULYSSES && o.model.n_heads % sp))) continue;
            result r;
            if (run(world, sp, mode, zero, d, ctx, &r) == 0) {
                const double le = fabs(r.loss - ref.loss) / fabs(ref.loss);
                CHECK(le < 1e-5, "loss %.9g vs single-process %.9g: rel %.2e", r.loss, ref.loss, le);
                double worst = 0;
                int wu = 0;
                for (int u = 0; u < lay.n_units; u++) {
                    double num = 0, den = 0;
                    for (size_t i = lay.unit_off[u]; i < lay.unit_off[u + 1]; i++)
                        num += pow(r.grad[i] - ref.grad[i], 2), den += pow(ref.grad[i], 2);
                    const double e = sqrt(num / (den + 1e-300));
                    if (e > worst) worst = e, wu = u;
                }
                CHECK(worst < 1e-5, "gradient of unit %d: rel error %.2e", wu, worst);
                /* the convolution taps on their own: a few hundred numbers that a unit's norm would hide,
                 * and the ones the SP halo exchange feeds */
                double cworst = 0;
                for (int l = 0; l < o.model.n_layers; l++) {
                    const size_t a = lay.unit_off[1 + l] + lay.blk.conv, b = lay.unit_off[1 + l] + lay.blk.onorm;
                    double num = 0, den = 0;
                    for (size_t i = a; i < b; i++) num += pow(r.grad[i] - ref.grad[i], 2), den += pow(ref.grad[i], 2);
                    if (sqrt(num / (den + 1e-300)) > cworst) cworst = sqrt(num / (den + 1e-300));
                }
                CHECK(cworst < 1e-5, "gradient of the convolution taps: rel error %.2e", cworst);
                double cw = 0;
                for (int s = 0; s < 20; s++) {
                    const double e = fabs(r.curve[s] - ref.curve[s]) / fabs(ref.curve[s]);
                    if (e > cw) cw = e;
                }
                CHECK(cw < 1e-4, "20-step loss curve differs: worst rel %.2e (last %.6f vs %.6f)", cw, r.curve[19],
                      ref.curve[19]);
                if (rank == 0)
                    printf("# dp %d sp %d %s zero %d: loss rel %.1e, worst gradient unit rel %.1e, conv taps rel %.1e, "
                           "curve rel %.1e (final loss %.4f)\n", W / sp, sp, lasp_sp_mode_name(mode), zero, le, worst,
                           cworst, cw, r.curve[19]);
                free(r.grad);
            }
            char lay_s[96];
            snprintf(lay_s, sizeof lay_s, "dp %d × sp %d %s%s", W / sp, sp, lasp_sp_mode_name(mode),
                     !chunk_tokens ? "" : sp > 1 ? ", each piece in 2 chunks, the state relayed" : ", in 2 chunks");
            chunk_tokens = 0;
            case_all("%s, ZeRO-%d: loss, gradients and 20-step curve match one process (%d ranks)", lay_s, zero, W);
        }
    }
    free(ref.grad);
    lasp_data_free(d);
    lasp_layout_free(&lay);
    lasp_ctx_free(ctx);
    int failed = test_cases_failed_;
    lasp_comm_free(self);
    lasp_comm_free(world);
    if (rank == 0) return test_exit();
    return failed ? 1 : 0;
}
