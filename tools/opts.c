/* opts.c — see opts.h. Accepts `--name value` and `--name=value`. */
#include "opts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lasp.h"

void opts_help(const cmd_spec *spec) {
    printf("usage: %s\n\n%s\n\noptions:\n", spec->usage, spec->summary);
    for (int i = 0; i < spec->n_opts; i++) {
        const opt *o = &spec->opts[i];
        char left[64];
        if (o->kind == OPT_FLAG) snprintf(left, sizeof left, "%s", o->name);
        else snprintf(left, sizeof left, "%s %s", o->name, o->meta ? o->meta : "X");
        printf("  %-24s %s", left, o->help);
        if (o->required) printf(" (required)");
        else if (o->kind == OPT_INT && *(long long *)o->dst) printf(" (default %lld)", *(long long *)o->dst);
        else if (o->kind == OPT_DOUBLE && *(double *)o->dst) printf(" (default %g)", *(double *)o->dst);
        else if (o->kind == OPT_STR && *(const char **)o->dst) printf(" (default %s)", *(const char **)o->dst);
        printf("\n");
    }
    printf("  %-24s %s\n", "--help", "show this help");
    if (spec->example) printf("\nexample:\n  %s\n", spec->example);
}

static const opt *find(const cmd_spec *spec, const char *name, size_t len) {
    for (int i = 0; i < spec->n_opts; i++)
        if (strlen(spec->opts[i].name) == len && !strncmp(spec->opts[i].name, name, len)) return &spec->opts[i];
    return NULL;
}

int opts_parse(const cmd_spec *spec, int argc, char **argv) {
    char seen[128] = {0};
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            opts_help(spec);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "error: unexpected argument '%s' (hint: options start with --; see --help)\n", arg);
            return -1;
        }
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        const opt *o = find(spec, arg, len);
        if (!o) {
            fprintf(stderr, "error: unknown option '%.*s' (hint: see --help for the options of this command)\n",
                    (int)len, arg);
            return -1;
        }
        seen[o - spec->opts] = 1;
        if (o->kind == OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "error: %s takes no value\n", o->name);
                return -1;
            }
            *(int *)o->dst = 1;
            continue;
        }
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val) {
            fprintf(stderr, "error: %s needs a value (%s)\n", o->name, o->meta ? o->meta : "X");
            return -1;
        }
        char *end;
        errno = 0;
        switch (o->kind) {
        case OPT_STR: *(const char **)o->dst = val; break;
        case OPT_INT: {
            long long v = strtoll(val, &end, 10);
            if (end == val || *end || errno) {
                fprintf(stderr, "error: %s expects an integer, got '%s'\n", o->name, val);
                return -1;
            }
            *(long long *)o->dst = v;
            break;
        }
        case OPT_DOUBLE: {
            double v = strtod(val, &end);
            if (end == val || *end || errno) {
                fprintf(stderr, "error: %s expects a number, got '%s'\n", o->name, val);
                return -1;
            }
            *(double *)o->dst = v;
            break;
        }
        case OPT_FLAG: break;
        }
    }
    for (int i = 0; i < spec->n_opts; i++)
        if (spec->opts[i].required && !seen[i]) {
            fprintf(stderr, "error: %s is required (hint: see --help)\n", spec->opts[i].name);
            return -1;
        }
    return 0;
}

int opts_sp_mode(const char *name, const char *flag, int all_ok) {
    for (int m = LASP_SP_CHAIN; m <= LASP_SP_ALLGATHER; m++)
        if (!strcmp(name, lasp_sp_mode_name((lasp_sp_mode)m))) return m;
    if (all_ok && !strcmp(name, "both")) return OPTS_SP_BOTH;
    if (all_ok && !strcmp(name, "all")) return OPTS_SP_ALL;
    if (!strcmp(name, "lasp")) {
        fprintf(stderr, "note: %s lasp is now called chain (the LASP chain); running chain\n", flag);
        return 0;
    }
    fprintf(stderr, "error: %s '%s' is not known (hint: chain, lasp2, ulysses or allgather%s)\n", flag, name,
            all_ok ? "; both = chain and lasp2, all = the four" : "");
    return -1;
}

int opts_recompute(const char *name, const char *flag) {
    for (int r = LASP_RECOMPUTE_NONE; r <= LASP_RECOMPUTE_BLOCK; r++)
        if (!strcmp(name, lasp_recompute_name((lasp_recompute)r))) return r;
    fprintf(stderr, "error: %s '%s' is not known (hint: none, attn or block)\n", flag, name);
    return -1;
}

int opts_device(const char *name, const char *flag) {
    if (!strcmp(name, "cpu")) return LASP_DEVICE_CPU;
    if (!strcmp(name, "cuda")) return LASP_DEVICE_CUDA;
    fprintf(stderr, "error: %s '%s' is not known (hint: cpu or cuda)\n", flag, name);
    return -1;
}
