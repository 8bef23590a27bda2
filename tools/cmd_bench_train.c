/* cmd_bench_train.c — `lasp bench train`: tokens per second of full training steps (forward, backward,
 * gradient reduction, AdamW) of the given presets on the recall task's tokens. On the CPU at the --sp of
 * the launch (run it once plainly and once under `mpirun -np 2 … --sp 2`); on GPUs with MFU and the GPU
 * memory in use, one GPU a rank under mpirun (dp × sp over NCCL, as lasp train), tokens/s per GPU too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "commands.h"
#include "lasp.h"
#include "opts.h"
#include "worlds.h"

int lasp_bench_train(int argc, char **argv) {
    const char *device_name = "cpu", *models = NULL, *dtype = "bf16", *sp_mode = "chain", *recompute = "none";
    long long sp_size = 0, steps = 10, batch = 0, seq = 0, zero = 0, vocab = 0, chunk = 0, max_seq = 1LL << 24;
    int longest = 0;
    const opt opts[] = {
        {"--device", OPT_STR, &device_name, "cpu|cuda", "where to train: the CPU or GPUs (one a rank of the launch)", 0},
        {"--models", OPT_STR, &models, "A,B", "presets to time (default: tiny,small on the CPU, 400m,1b on a GPU)", 0},
        {"--dtype", OPT_STR, &dtype, "bf16|f32", "GPU: the products' and attention's operands", 0},
        {"--recompute", OPT_STR, &recompute, "none|attn|block", "GPU: what a layer keeps for its backward (lasp train "
                                                                 "--help)", 0},
        {"--vocab", OPT_INT, &vocab, "N", "vocabulary (default: 256 on the CPU, 64000 on a GPU)", 0},
        {"--sp", OPT_INT, &sp_size, "N", "sequence-parallel ranks (0 = the whole world)", 0},
        {"--sp-mode", OPT_STR, &sp_mode, "MODE", "chain, lasp2, ulysses or allgather", 0},
        {"--zero", OPT_INT, &zero, "N", "ZeRO stage", 0},
        {"--steps", OPT_INT, &steps, "N", "timed steps (after 2 warm-up steps); the median is reported", 0},
        {"--batch", OPT_INT, &batch, "N", "global batch (default: 8 on the CPU, 1 on a GPU)", 0},
        {"--seq-len", OPT_INT, &seq, "N", "tokens per sequence (default: 256 on the CPU, 8192 on a GPU)", 0},
        {"--chunk", OPT_INT, &chunk, "N", "run each sequence N tokens at a time, the state carried (0 = off)", 0},
        {"--longest", OPT_FLAG, &longest, NULL, "instead: double --seq-len at batch 1 until a step no longer fits "
                                                "(or --max-seq), and name the longest that trained", 0},
        {"--max-seq", OPT_INT, &max_seq, "N", "with --longest: the longest sequence to try", 0},
    };
    const cmd_spec spec = {"lasp bench train [--device cpu|cuda] [--models A,B] [--seq-len T] [--batch B] [--steps N]",
                           "Times training steps (median ms, tokens/s; on a GPU also MFU and memory) of the given\n"
                           "presets on the recall task's tokens. MFU counts 6 × the matrix parameters per token plus\n"
                           "the attention's 14·H·D·(D + 64) per layer, against the GPU's dense bf16 peak.",
                           "lasp bench train --device cuda --models 1b --seq-len 8192 --batch 1", opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    const int device = opts_device(device_name, "--device");
    if (device < 0) return 2;
    const int gpu = device == LASP_DEVICE_CUDA;
    if (!models) models = gpu ? "400m,1b" : "tiny,small";
    if (!vocab) vocab = gpu ? 64000 : 256;
    if (!batch) batch = gpu ? 1 : 8;
    if (!seq) seq = gpu ? 8192 : 256;
    if (steps < 1 || steps > 1000 || sp_size < 0 || sp_size > 1 << 20) {
        fprintf(stderr, "error: --steps %lld out of range 1..1000, or --sp %lld below 0\n", steps, sp_size);
        return 2;
    }
    const int rc_mode = opts_recompute(recompute, "--recompute");
    if (rc_mode < 0) return 2;
    if (strcmp(dtype, "bf16") && strcmp(dtype, "f32")) {
        fprintf(stderr, "error: --dtype '%s' is not known (hint: bf16 or f32)\n", dtype);
        return 2;
    }
    if (vocab < 2 || vocab > 1 << 24) {
        fprintf(stderr, "error: --vocab %lld is outside 2 .. 16777216\n", vocab);
        return 2;
    }
    lasp_err err = {0};
    lasp_comm *world;
    /* MPI only when a launcher started us: one process needs no MPI */
    const lasp_comm_backend be = lasp_comm_launcher_size() > 0 ? LASP_COMM_MPI : LASP_COMM_SELF;
    /* several ranks on GPUs: the model's traffic over an NCCL world beside the host one, as lasp train */
    lasp_comm *gworld = NULL;
    if (tools_open_worlds(be, &argc, &argv, gpu && lasp_comm_launcher_size() > 1, &world, &gworld)) return 1;
    const int W = lasp_comm_size(world), rank = lasp_comm_rank(world);
    lasp_ctx *ctx = NULL;
    lasp_sp *sp = NULL;
    lasp_data *data = NULL;
    lasp_sp_params spp = lasp_sp_default_params();
    spp.size = sp_size ? (int)sp_size : W;
    const int mode = opts_sp_mode(sp_mode, "--sp-mode", 0);
    if (mode < 0) {
        lasp_comm_free(gworld);
        lasp_comm_free(world);
        return 2;
    }
    spp.mode = (lasp_sp_mode)mode;
    int rc = 1;
    if (lasp_ctx_create(NULL, &ctx) != LASP_OK || lasp_sp_create(gworld ? gworld : world, &spp, &sp, &err) != LASP_OK ||
        lasp_data_recall(1, 8, &data, &err) != LASP_OK) {
        if (rank == 0) fprintf(stderr, "error: %s\n", err.msg[0] ? err.msg : "cannot create a lasp context");
        goto done;
    }
    const lasp_sp_layout lay = lasp_sp_get_layout(sp);
    if (rank == 0 && !longest) { /* --longest prints its own header */
        if (gpu && W > 1)
            printf("# lasp bench train — %d GPUs = dp %d × sp %d (%s), %s, batch %lld × seq %lld, vocab %lld, recall "
                   "task's tokens, median of %lld steps after 2\n# MFU: (6 × matrix parameters + 14·L·H·D·(D+64)) "
                   "FLOPs per token against the dense bf16 peak, per GPU\n", W, lay.dp_size, lay.sp_size,
                   lasp_sp_mode_name(spp.mode), strcmp(dtype, "f32") ? "bf16" : "f32 (TF32 off)", batch, seq, vocab,
                   steps);
        else if (gpu)
            printf("# lasp bench train — one GPU, %s, batch %lld × seq %lld, vocab %lld, recall task's "
                   "tokens, median of %lld steps after 2\n# MFU: (6 × matrix parameters + 14·L·H·D·(D+64)) FLOPs per "
                   "token against the dense bf16 peak\n", strcmp(dtype, "f32") ? "bf16" : "f32 (TF32 off)", batch, seq,
                   vocab, steps);
        else
            printf("# lasp bench train — device cpu, world %d = dp %d × sp %d (%s), ZeRO-%lld, batch %lld × seq %lld, "
                   "recall task, median of %lld steps, matrix products on %s\n", W, lay.dp_size, lay.sp_size,
                   lasp_sp_mode_name(spp.mode), zero, batch, seq, steps,
                   lasp_get_build_info().has_blas ? "BLAS" : "plain loops");
        if (rc_mode) printf("# --recompute %s: %s\n", recompute, rc_mode == LASP_RECOMPUTE_BLOCK ? "each layer's "
                            "input kept, its forward run again in the backward" : "q, k, v and the attention's "
                            "output made again in the backward");
        if (gpu) printf("# %-6s %9s %10s %12s %7s %10s %12s %8s\n", "model", "params", "step ms", "tokens/s", "MFU %",
                        "GPU GiB", "tok/s a GPU", "comm %");
        else printf("# %-6s %9s %10s %12s %8s\n", "model", "params", "step ms", "tokens/s", "comm %");
    }
    char list[256];
    snprintf(list, sizeof list, "%s", models);
    rc = 0;
    /* what every timed run shares; each model's preset and shape go on top */
    lasp_train_params base = lasp_train_default_params();
    base.zero = (int)zero, base.device = (lasp_device)device, base.chunk = chunk;
    base.dtype = gpu && strcmp(dtype, "f32") ? LASP_BF16 : LASP_F32;
    base.recompute = (lasp_recompute)rc_mode;
    if (longest) {
        if (lay.dp_size > 1) { /* batch 1: one sequence, split over every rank */
            if (rank == 0)
                fprintf(stderr, "error: --longest trains one sequence at batch 1: the %d ranks must be one SP group "
                        "(hint: --sp %d)\n", W, W);
            rc = 2;
            goto done;
        }
        for (char *save = NULL, *name = strtok_r(list, ",", &save); name && !rc; name = strtok_r(NULL, ",", &save)) {
            lasp_train_params o = base;
            if (lasp_model_preset(name, (int32_t)vocab, &o.model, &err) != LASP_OK) {
                fprintf(stderr, "error: %s\n", err.msg);
                rc = 2;
                break;
            }
            o.batch = 1, o.steps = 3;
            long long fit = 0;
            char where[64];
            if (W > 1 && chunk) snprintf(where, sizeof where, "%d %s, the chunks' state relayed through them", W,
                                         gpu ? "GPUs" : "ranks");
            else if (W > 1) snprintf(where, sizeof where, "%d %s, the sequence split over them (%s)", W,
                                     gpu ? "GPUs" : "ranks", lasp_sp_mode_name(spp.mode));
            else snprintf(where, sizeof where, "%s", gpu ? "one GPU" : "the CPU");
            if (rank == 0)
                printf("# lasp bench train --longest %s on %s, batch 1%s, %s: one warm-up and one timed step at each "
                       "length, doubling from %lld\n# %-6s %10s %10s %12s %s\n", name, where,
                       chunk ? ", in chunks" : "", gpu && strcmp(dtype, "f32") ? "bf16" : "f32", seq, "model", "T",
                       "step ms", "tokens/s", gpu ? "   GPU GiB" : "");
            for (long long T = seq; T <= max_seq; T *= 2) {
                o.seq_len = T;
                lasp_trainer *t = NULL;
                lasp_step_stats st = {0};
                lasp_status s = lasp_trainer_create(ctx, sp, data, &o, &t);
                /* over ranks every one goes on only if all can: a rank that cannot fit its piece stops them all
                 * before a step's collectives (the worst status: NOMEM ends the search, others fail it) */
                double worst = s == LASP_OK ? 0 : s == LASP_ERR_NOMEM ? 1 : 2;
                if (W > 1 && lasp_comm_allreduce(world, &worst, &worst, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK)
                    worst = 2;
                for (int k = 0; k < 2 && worst == 0; k++) {
                    s = lasp_trainer_step(t, &st);
                    worst = s == LASP_OK ? 0 : s == LASP_ERR_NOMEM ? 1 : 2;
                    if (W > 1 && lasp_comm_allreduce(world, &worst, &worst, 1, LASP_F64, LASP_REDUCE_MAX, &err) != LASP_OK)
                        worst = 2;
                }
                lasp_trainer_free(t);
                if (worst != 0) {
                    if (rank == 0)
                        printf("  %-6s %10lld does not train: %s\n", name, T,
                               s != LASP_OK ? lasp_ctx_error(ctx) : "another rank could not (its error above)");
                    if (s != LASP_OK && rank != 0) fprintf(stderr, "rank %d: %s\n", rank, lasp_ctx_error(ctx));
                    if (worst > 1) rc = 1;
                    break;
                }
                if (rank == 0) {
                    printf("  %-6s %10lld %10.1f %12.0f", name, T, st.ms, (double)T / (st.ms / 1e3));
                    if (gpu) printf(" %10.1f", st.mem_bytes / 1073741824.0);
                    printf("\n");
                    fflush(stdout);
                }
                fit = T;
            }
            if (rank == 0) printf("# longest %s at batch 1%s: %lld tokens\n", name, chunk ? " (chunks)" : "", fit);
        }
        goto done;
    }
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name && !rc; name = strtok_r(NULL, ",", &save)) {
        lasp_train_params o = base;
        if (lasp_model_preset(name, (int32_t)vocab, &o.model, &err) != LASP_OK) {
            if (rank == 0) fprintf(stderr, "error: %s\n", err.msg);
            rc = 2;
            break;
        }
        o.batch = batch, o.seq_len = seq, o.steps = steps + 2;
        lasp_trainer *t = NULL;
        if (lasp_trainer_create(ctx, sp, data, &o, &t) != LASP_OK) {
            if (rank == 0) fprintf(stderr, "error: %s\n", lasp_ctx_error(ctx));
            rc = 1;
            break;
        }
        if (gpu && lasp_trainer_set_profile(t, 1) != LASP_OK) {
            if (rank == 0) fprintf(stderr, "error: %s\n", lasp_ctx_error(ctx));
            rc = 1;
        }
        double *ms = malloc((size_t)steps * sizeof(double)), comm = 0, total = 0, mem = 0, mfu_ms = 0;
        double split[5] = {0, 0, 0, 0, 0};
        for (long long s = -2; s < steps && !rc; s++) {
            lasp_step_stats st;
            if (lasp_trainer_step(t, &st) != LASP_OK) {
                fprintf(stderr, "error: rank %d: %s\n", rank, lasp_ctx_error(ctx));
                rc = 1;
            }
            if (s >= 0 && !rc) {
                ms[s] = st.ms, comm += st.comm_ms, total += st.ms;
                mfu_ms = st.mfu * st.ms; /* MFU × ms is the same every step: scaled to the median below */
                if (st.mem_bytes > mem) mem = st.mem_bytes;
                for (int k = 0; k < 5; k++) split[k] += st.split_ms[k] / (double)steps;
            }
        }
        if (!rc && rank == 0) {
            const double med = tool_median(ms, (int)steps);
            if (gpu) {
                const double tps = (double)batch * (double)seq / (med / 1e3);
                printf("  %-6s %8.2fM %10.1f %12.0f %7.1f %10.1f %12.0f %8.1f\n", name, lasp_trainer_n_params(t) / 1e6,
                       med, tps, 100 * mfu_ms / med, mem / 1073741824.0, tps / W, 100 * comm / total);
                static const char *part[5] = {"matrix products", "attention", "norms and element-wise",
                                              "cross-entropy", "optimizer"};
                double gpu_ms = 0;
                for (int k = 0; k < 5; k++) gpu_ms += split[k];
                printf("    where a step's GPU time goes (CUDA events, mean; %.1f ms of the %.1f ms step):\n", gpu_ms, med);
                for (int k = 0; k < 5; k++)
                    printf("      %-24s %8.1f ms %5.1f%%\n", part[k], split[k], gpu_ms > 0 ? 100 * split[k] / gpu_ms : 0);
                lasp_profile_site site[16];
                const int ns = lasp_trainer_profile_sites(t, site, 16);
                if (ns) printf("    the places that take the most of it (mean ms a step; the products as one kind):\n");
                for (int k = 0; k < ns; k++)
                    if (site[k].part != 0)
                        printf("      %-28s %-22s %8.2f ms\n", site[k].where, part[site[k].part],
                               site[k].ms / (double)(steps + 2));
            }
            else
                printf("  %-6s %8.2fM %10.1f %12.0f %8.1f\n", name, lasp_trainer_n_params(t) / 1e6, med,
                       (double)batch * (double)seq / (med / 1e3), 100 * comm / total);
            fflush(stdout);
        }
        free(ms);
        lasp_trainer_free(t);
    }
done:
    /* a failing rank ends the job before anything collective (freeing the SP group may be) */
    if (rc == 1 && W > 1) lasp_comm_abort(world, "lasp bench train failed");
    lasp_data_free(data);
    lasp_sp_free(sp);
    lasp_ctx_free(ctx);
    lasp_comm_free(gworld);
    lasp_comm_free(world);
    return rc;
}
