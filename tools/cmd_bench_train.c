/* cmd_bench_train.c — `lasp bench train --device cpu`: tokens per second of full training steps
 * (forward, backward, gradient reduction, AdamW) for the tiny and small presets on the recall task,
 * at the --sp of the launch (run it once plainly and once under `mpirun -np 2 … --sp 2`). With
 * BLAS builds it also times the plain loops, to show what BLAS buys. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "commands.h"
#include "comm/comm.h"
#include "opts.h"
#include "sp/sp.h"
#include "train/trainer.h"

int lasp_bench_train(int argc, char **argv) {
    const char *device = "cpu", *models = "tiny,small";
    long long sp_size = 0, steps = 10, batch = 8, seq = 256, zero = 0;
    int no_loops = 0;
    const opt opts[] = {
        {"--device", OPT_STR, &device, "cpu", "where to train (the CPU for now)", 0},
        {"--models", OPT_STR, &models, "A,B", "presets to time", 0},
        {"--sp", OPT_INT, &sp_size, "N", "sequence-parallel ranks (0 = the whole world)", 0},
        {"--zero", OPT_INT, &zero, "N", "ZeRO stage", 0},
        {"--steps", OPT_INT, &steps, "N", "timed steps (after 2 warm-up steps); the median is reported", 0},
        {"--batch", OPT_INT, &batch, "N", "global batch", 0},
        {"--seq-len", OPT_INT, &seq, "N", "tokens per sequence", 0},
        {"--no-loops", OPT_FLAG, &no_loops, NULL, "skip timing the plain-loop (non-BLAS) matrix products", 0},
    };
    const cmd_spec spec = {"lasp bench train --device cpu [--models tiny,small] [--sp N] [--steps N]",
                           "Times training steps (median ms, tokens/s) of the given presets on the recall task.",
                           "mpirun -np 2 lasp bench train --device cpu --sp 2", opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    if (strcmp(device, "cpu")) {
        fprintf(stderr, "error: --device %s: the training bench runs on the CPU for now (hint: --device cpu)\n", device);
        return 2;
    }
    if (steps < 1 || steps > 1000) {
        fprintf(stderr, "error: --steps %lld out of range 1..1000\n", steps);
        return 2;
    }
    lasp_err err = {0};
    lasp_comm *world;
    /* MPI only when a launcher started us: one process needs no MPI (DESIGN.md) */
    const lasp_comm_backend be = lasp_comm_launcher_size() > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    if (lasp_comm_world(be, &argc, &argv, &world, &err) != LASP_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    const int W = lasp_comm_size(world), rank = lasp_comm_rank(world);
    if (!sp_size) sp_size = W;
    lasp_ctx *ctx;
    lasp_ctx_params cp = lasp_ctx_default_params();
    lasp_ctx_create(&cp, &ctx);
    lasp_sp sp;
    int rc = 0;
    if (lasp_sp_init(world, (int)sp_size, LASP_SP_CHAIN, &sp, &ctx->err) != LASP_OK) {
        if (rank == 0) fprintf(stderr, "error: %s\n", ctx->err.msg);
        lasp_ctx_free(ctx);
        lasp_comm_free(world);
        return 1;
    }
    lasp_data data;
    lasp_data_recall(1, 8, &data, &err);
    if (rank == 0) {
        printf("# lasp bench train — device cpu, world %d = dp %d × sp %d, ZeRO-%lld, batch %lld × seq %lld, "
               "recall task, median of %lld steps\n", W, sp.dp_size, sp.sp_size, zero, batch, seq, steps);
        printf("# %-6s %9s %6s %10s %12s %8s\n", "model", "params", "gemm", "step ms", "tokens/s", "comm %");
    }
    char list[256];
    snprintf(list, sizeof list, "%s", models);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name && !rc; name = strtok_r(NULL, ",", &save)) {
        for (int loops = 0; loops <= 1 && !rc; loops++) {
#ifndef LASP_HAVE_BLAS
            if (!loops) continue;
#endif
            if (loops && no_loops) continue;
            lasp_train_opts o = lasp_train_default_opts();
            if (lasp_model_preset(name, 256, &o.model, &ctx->err) != LASP_OK) {
                if (rank == 0) fprintf(stderr, "error: %s\n", ctx->err.msg);
                rc = 2;
                break;
            }
            o.batch = batch, o.seq_len = seq, o.zero = (int)zero, o.steps = steps + 2;
            lasp_trainer t;
            if (lasp_trainer_init(&t, ctx, &sp, &data, &o) != LASP_OK) {
                if (rank == 0) fprintf(stderr, "error: %s\n", ctx->err.msg);
                rc = 1;
                break;
            }
            t.m.no_blas = loops;
            double *ms = malloc((size_t)steps * sizeof(double)), comm = 0, total = 0;
            for (long long s = -2; s < steps && !rc; s++) {
                lasp_step_stats st;
                if (lasp_trainer_step(&t, &st) != LASP_OK) {
                    fprintf(stderr, "error: rank %d: %s\n", rank, ctx->err.msg);
                    rc = 1;
                }
                if (s >= 0) ms[s] = st.ms, comm += st.comm_ms, total += st.ms;
            }
            if (!rc && rank == 0) {
                const double med = tool_median(ms, (int)steps);
                printf("  %-6s %8.2fM %6s %10.1f %12.0f %8.1f\n", name, t.P / 1e6, loops ? "loops" : "blas", med,
                       (double)batch * (double)seq / (med / 1e3), 100 * comm / total);
                fflush(stdout);
            }
            free(ms);
            lasp_trainer_free(&t);
        }
    }
    lasp_sp_free(&sp);
    lasp_ctx_free(ctx);
    lasp_comm_free(world);
    return rc;
}
