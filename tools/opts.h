/* opts.h — one option table per subcommand: it parses the arguments and it prints --help, so the
 * help text cannot drift from what is accepted. */
#ifndef LASP_TOOLS_OPTS_H
#define LASP_TOOLS_OPTS_H

typedef enum { OPT_STR, OPT_INT, OPT_DOUBLE, OPT_FLAG } opt_kind;

typedef struct opt {
    const char *name;   /* "--q" */
    opt_kind kind;
    void *dst;          /* const char **, long long *, double *, int * */
    const char *meta;   /* "FILE", "N" (ignored for flags) */
    const char *help;
    int required;
} opt;

typedef struct cmd_spec {
    const char *usage;    /* "lasp attn --q Q.npy ... --out DIR" */
    const char *summary;  /* one paragraph above the options */
    const char *example;  /* optional, printed last */
    const opt *opts;
    int n_opts;
} cmd_spec;

/* Returns 0 to go on, 1 if --help was printed (exit 0), −1 on a bad argument (message printed,
 * exit 2). Positional arguments are refused. */
int opts_parse(const cmd_spec *spec, int argc, char **argv);
void opts_help(const cmd_spec *spec);

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* An SP mode's name, as every command spells it: chain (the LASP chain), lasp2, ulysses or allgather; with
 * all_ok also "both" (chain and lasp2: OPTS_SP_BOTH) and "all" (the four: OPTS_SP_ALL). The chain's former
 * name "lasp" is taken with a note. Returns the lasp_sp_mode, or −1 for an unknown name (message printed,
 * naming `flag`). */
#define OPTS_SP_BOTH 10
#define OPTS_SP_ALL 11
int opts_sp_mode(const char *name, const char *flag, int all_ok);
/* "cpu" or "cuda" as a lasp_device; −1 for anything else (message printed, naming `flag`). */
int opts_device(const char *name, const char *flag);
/* "none", "attn" or "block" as a lasp_recompute; −1 for anything else (message printed, naming `flag`). */
int opts_recompute(const char *name, const char *flag);

#endif
