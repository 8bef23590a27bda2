/* cmd_export.c — `lasp export`: a checkpoint's weights as safetensors with a config.json, for other tools. */
#include <stdio.h>

#include "commands.h"
#include "lasp.h"
#include "opts.h"

int cmd_export(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL;
    const opt opts[] = {
        {"--ckpt", OPT_STR, &ckpt, "DIR", "checkpoint directory written by lasp train --ckpt", 1},
        {"--safetensors", OPT_STR, &out, "DIR", "write DIR/model.safetensors and DIR/config.json", 1},
    };
    const cmd_spec spec = {
        "lasp export --ckpt DIR --safetensors OUT",
        "Writes a checkpoint's weights as one fp32 tensor per weight in the safetensors format, named\n"
        "embed.weight, blocks.L.{ln1,wqkvu,conv,onorm,wo,ln2,w12,w3}, head.norm, head.weight, oriented [in, out]\n"
        "(a product is y = x · W), with config.json giving the model's sizes, the norms' epsilon and every\n"
        "layer's decay slopes.",
        "lasp export --ckpt runs/x --safetensors runs/x/hf", opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    lasp_err err = {0};
    if (lasp_export_safetensors(ckpt, out, &err) != LASP_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    printf("lasp export: wrote %s/model.safetensors and %s/config.json\n", out, out);
    return 0;
}
