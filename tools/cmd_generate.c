/* cmd_generate.c — `lasp generate`: loads a checkpoint and samples from the model with the recurrent
 * form (docs/MATH.md §1): one state per layer and head, so memory per token is constant. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "core/rng.h"
#include "core/npy.h"
#include "lasp.h"
#include "opts.h"

int cmd_generate(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = NULL, *prompt_ids = NULL, *device_name = "cpu", *logits_out = NULL;
    long long n = 200, top_k = 0, seed = 1337;
    double temp = 1.0;
    int ids = 0;
    const opt opts[] = {
        {"--ckpt", OPT_STR, &ckpt, "DIR", "checkpoint directory written by lasp train --ckpt", 1},
        {"--prompt", OPT_STR, &prompt, "TEXT", "prompt text (one token per byte)", 0},
        {"--prompt-ids", OPT_STR, &prompt_ids, "I,J,..", "prompt as token ids instead of text", 0},
        {"--tokens", OPT_INT, &n, "N", "tokens to generate", 0},
        {"--temperature", OPT_DOUBLE, &temp, "T", "sampling temperature (0 = greedy)", 0},
        {"--top-k", OPT_INT, &top_k, "K", "sample among the K most likely tokens (0 = all)", 0},
        {"--seed", OPT_INT, &seed, "N", "seed of the sampler", 0},
        {"--ids", OPT_FLAG, &ids, NULL, "print token ids instead of bytes", 0},
        {"--device", OPT_STR, &device_name, "cpu|cuda", "where to decode (f32 on either)", 0},
        {"--logits-out", OPT_STR, &logits_out, "FILE", "also write the logits after each prompt token, [prompt, vocab] "
                                                   "f32 .npy", 0},
    };
    const cmd_spec spec = {
        "lasp generate --ckpt DIR [--prompt TEXT | --prompt-ids I,J,..] [--tokens N] [--temperature T] [--top-k K]",
        "Feeds the prompt through the recurrent form of the model one token at a time, then samples --tokens\n"
        "more. Memory does not grow with the length: each layer keeps one D×D state per head.",
        "lasp generate --ckpt runs/demo/ckpt --prompt 'ROMEO:' --tokens 100 --temperature 0.8 --top-k 40", opts,
        N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    if (n < 0 || n > (1LL << 40) || top_k < 0 || seed < 0 || !(temp >= 0 && temp <= 1e6)) {
        fprintf(stderr, "error: --tokens %lld (0 .. 2^40), --top-k %lld (≥ 0), --temperature %g (0 .. 1e6) or --seed "
                "%lld (≥ 0) is out of range\n", n, top_k, temp, seed);
        return 2;
    }
    if (prompt && prompt_ids) {
        fprintf(stderr, "error: --prompt and --prompt-ids both given (hint: the text, or its token ids: one of them)\n");
        return 2;
    }
    lasp_err err = {0};
    lasp_generator *g = NULL;
    const int device = opts_device(device_name, "--device");
    if (device < 0) return 2;
    if (lasp_generator_open(ckpt, (lasp_device)device, &g, &err) != LASP_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    const int V = lasp_generator_config(g).vocab;
    int32_t *pr = malloc((strlen(prompt ? prompt : "") + (prompt_ids ? strlen(prompt_ids) : 0) + 1) * sizeof(int32_t));
    int np = 0, rc = 1;
    if (prompt_ids) {
        for (const char *s = prompt_ids; *s;) {
            char *end;
            long v = strtol(s, &end, 10);
            if (end == s || v < 0 || v >= V) {
                fprintf(stderr, "error: --prompt-ids: '%s' is not a token id in 0..%d\n", s, V - 1);
                goto out;
            }
            pr[np++] = (int32_t)v;
            s = *end == ',' ? end + 1 : end;
        }
    } else if (prompt) {
        for (const unsigned char *s = (const unsigned char *)prompt; *s; s++) pr[np++] = *s;
    }
    if (np == 0) {
        fprintf(stderr, "error: give a prompt with --prompt TEXT or --prompt-ids I,J,.. (at least one token)\n");
        goto out;
    }
    lasp_rng rng;
    lasp_rng_seed(&rng, (uint64_t)seed);
    float *p = malloc((size_t)V * sizeof(float));
    int *order = malloc((size_t)V * sizeof(int));
    const int bytes = !ids && V <= 256;
    const float *logits = NULL;
    float *all = logits_out ? malloc((size_t)np * (size_t)V * sizeof *all) : NULL;
    if (logits_out && !all) {
        fprintf(stderr, "error: no memory for the prompt's logits\n");
        goto out;
    }
    for (int i = 0; i < np; i++) {
        if (!(logits = lasp_generator_feed(g, pr[i]))) break;
        if (all) memcpy(all + (size_t)i * (size_t)V, logits, (size_t)V * sizeof *all);
        if (bytes) putchar(pr[i]);
        else printf("%s%d", i ? "," : "", pr[i]);
    }
    const int bold = bytes && isatty(fileno(stdout)); /* the generated part in bold, on a terminal only */
    if (bold) printf("\x1b[1m");
    for (long long i = 0; i < n && logits; i++) {
        int next = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[next]) next = v;
        if (temp > 0) {
            /* softmax over the top-k (or all) logits at temperature T, then one draw */
            int K = top_k && top_k < V ? (int)top_k : V;
            for (int v = 0; v < V; v++) order[v] = v;
            for (int j = 0; j < K; j++)  /* partial selection sort: K is small or K = V (then unused order) */
                if (K < V) {
                    int b = j;
                    for (int v = j + 1; v < V; v++)
                        if (logits[order[v]] > logits[order[b]]) b = v;
                    const int tmp = order[j];
                    order[j] = order[b], order[b] = tmp;
                }
            double sum = 0;
            for (int j = 0; j < K; j++) sum += (p[j] = (float)exp((logits[order[j]] - logits[next]) / temp));
            double u = lasp_rng_uniform(&rng) * sum;
            next = order[K - 1];
            for (int j = 0; j < K; j++)
                if ((u -= p[j]) <= 0) {
                    next = order[j];
                    break;
                }
        }
        if (bytes) putchar(next);
        else printf(",%d", next);
        fflush(stdout);
        if (i + 1 < n) logits = lasp_generator_feed(g, next);
    }
    if (bold) printf("\x1b[0m");
    printf("\n");
    if (!logits) {
        fprintf(stderr, "error: the decoder failed on the GPU\n");
        free(all), free(p), free(order);
        goto out;
    }
    free(p), free(order);
    if (all) {
        lasp_err e2 = {0};
        const int64_t shape[2] = {np, V};
        const lasp_status ws = lasp_npy_write(logits_out, LASP_F32, 2, shape, all, &e2);
        free(all);
        if (ws != LASP_OK) {
            fprintf(stderr, "error: %s\n", e2.msg);
            goto out;
        }
    }
    rc = 0;
out:
    free(pr);
    lasp_generator_free(g);
    return rc;
}
