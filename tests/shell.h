/* shell.h — run a shell command from a test and keep what it printed: how the CLI tests drive
 * `lasp` (and mpirun) as a user would. */
#ifndef LASP_TEST_SHELL_H
#define LASP_TEST_SHELL_H

#include <stdio.h>
#include <sys/wait.h>

/* Runs cmd (stdout and stderr together, as the command line redirects them) into out[n]; returns the
 * exit status, −signo if a signal ended it, −1001 if `timeout` ended it (status 124). */
static inline int test_shell(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1000;
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    while (fgetc(p) != EOF) {}
    int st = pclose(p);
    if (WIFSIGNALED(st)) return -WTERMSIG(st);
    int rc = WEXITSTATUS(st);
    return rc == 124 ? -1001 : rc;
}

/* How a test_shell run ended, for a failure message: "exit status 2", "killed by signal 9", or "timed out
 * after 300 s" (limit_s: the `timeout` it ran under). One buffer: print it before the next call. */
static inline const char *test_shell_ended(int rc, int limit_s) {
    static char s[64];
    if (rc == -1001) snprintf(s, sizeof s, "timed out after %d s", limit_s);
    else if (rc == -1000) snprintf(s, sizeof s, "could not start the shell");
    else if (rc < 0) snprintf(s, sizeof s, "killed by signal %d", -rc);
    else snprintf(s, sizeof s, "exit status %d", rc);
    return s;
}

#endif
