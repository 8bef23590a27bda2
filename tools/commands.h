/* commands.h — the subcommands of `lasp`. Each takes the arguments after its name and returns the
 * process exit status: 0 success, 1 failure of the work (e.g. --check above tolerance, I/O error),
 * 2 bad usage. */
#ifndef LASP_TOOLS_COMMANDS_H
#define LASP_TOOLS_COMMANDS_H

int cmd_info(int argc, char **argv);
int cmd_attn(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_export(int argc, char **argv);

/* the benches of `lasp bench`, each in its own file */
int lasp_bench_sp(int argc, char **argv);     /* cmd_bench_sp.c */
int lasp_bench_train(int argc, char **argv);  /* cmd_bench_train.c */
#ifdef LASP_HAVE_CUDA
int lasp_bench_attn_cuda(int argc, char **argv);  /* bench_attn_cuda.c */
#endif

#endif
