/* lasp.c — the command-line tool: `lasp <command> [options]`. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "lasp.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command;

static const command COMMANDS[] = {
    {"attn", cmd_attn, "run the linear-attention op on .npy files (forward, backward, --check)"},
    {"bench", cmd_bench, "benchmarks: attn (the op), sp (sequence parallelism), train (a training step)"},
    {"info", cmd_info, "build features, devices, version"},
    {"train", cmd_train, "train the linear-attention LM (dp × sp under mpirun, ZeRO 0–3)"},
    {"generate", cmd_generate, "generate text from a checkpoint (recurrent form)"},
    {"export", cmd_export, "write a checkpoint's weights as safetensors + config.json"},
};

static void usage(void) {
    printf("lasp %s — linear attention with LASP sequence parallelism\n\nusage: lasp <command> [options]\n\n"
           "commands:\n", LASP_VERSION_STRING);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        printf("  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].what);
    printf("\n`lasp <command> --help` describes each command.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("lasp %s\n", LASP_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 2, argv + 2);
    fprintf(stderr, "error: unknown command '%s' (hint: `lasp --help` lists the commands)\n", argv[1]);
    return 2;
}
