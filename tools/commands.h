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

#endif
