/* test_train_cli.c — `lasp train` and `lasp generate` end to end: bit-identical resume, resume under
 * another layout, learning the recall task, every kind of bad input refused with a clear message, a
 * non-zero exit and nothing overwritten (every numeric flag's bounds, damaged token shards), a run stopped
 * by a signal (one process and one rank of an mpirun job) or by kill -9 losing nothing, and a diverging
 * run named as such. Uses $BUILD/lasp (default build/lasp). */
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "shell.h"
#include "test.h"

static char lasp[512];
static char dir[] = "/tmp/lasp-test-train-XXXXXX";
static char out[1 << 16];

/* Every run is bounded by its steps, not by time: a limit only ends a hang, far above a slow machine's time
 * (a tiny run takes about a second; the learning run ~35 s on one core with OpenBLAS, ~3 min without). */
#define QUICK_S 300
#define LEARN_S 1800
static int limit_s;  /* the last run's, for its message */

static const char *ended(int rc) { return test_shell_ended(rc, limit_s); }

static int run(int limit, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(int limit, const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    /* lasp initialises MPI whenever the build has it; Open MPI's start-up allocations read as leaks
     * under LeakSanitizer (SAN=1), so leak checking is off for these runs (ASan stays on) */
    const char *nolsan = "ASAN_OPTIONS=detect_leaks=0 ";
    snprintf(cmd, sizeof cmd,
             "cd '%s' && %sOMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout %d %s 2>&1",
             dir, nolsan, limit, args);
    limit_s = limit;
    return test_shell(cmd, out, sizeof out);
}

/* The "loss" values of the step lines of a train.jsonl, as printed (%.17g: the exact double). */
static int losses(const char *rel, char vals[][40], int max) {
    char path[1024], line[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    while (fgets(line, sizeof line, f) && n < max) {
        char *p = strstr(line, "\"loss\":");
        if (!p || strstr(line, "val_loss")) continue;
        sscanf(p + 7, "%39[^,]", vals[n++]);
    }
    fclose(f);
    return n;
}

static long long fsize(const char *rel) {
    char path[1024];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static unsigned long long fhash(const char *rel) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned long long h = 1469598103934665603ULL;
    int c;
    while ((c = fgetc(f)) != EOF) h = (h ^ (unsigned)c) * 1099511628211ULL;
    fclose(f);
    return h;
}

#define TINY "--model tiny --seq-len 64 --batch 4 --val-every 0 --val-batches 0"

static void test_resume(void) {
    char a[16][40], b[16][40];
    int rc = run(QUICK_S, "%s train " TINY " --steps 10 --out full", lasp);
    CHECK(rc == 0, "full run failed (%s):\n%s", ended(rc), out);
    rc = run(QUICK_S, "%s train " TINY " --steps 10 --stop-after 5 --out half --ckpt ck", lasp);
    CHECK(rc == 0, "first half failed (%s):\n%s", ended(rc), out);
    rc = run(QUICK_S, "%s train " TINY " --steps 10 --resume --out half --ckpt ck", lasp);
    CHECK(rc == 0, "resume failed (%s):\n%s", ended(rc), out);
    const int na = losses("full/train.jsonl", a, 16), nb = losses("half/train.jsonl", b, 16);
    CHECK(na == 10 && nb == 10, "expected 10 step losses in each log, got %d and %d", na, nb);
    for (int i = 0; i < na && i < nb; i++) CHECK(!strcmp(a[i], b[i]), "step %d: loss %s vs resumed %s", i + 1, a[i], b[i]);
    test_case("train 10 steps = train 5, stop, resume, train 5: bit-identical losses");

#ifdef LASP_HAVE_MPI
    /* the same checkpoint continued by 2 ranks (sp 2, ZeRO-3): losses equal up to fp32 summation order */
    rc = run(QUICK_S,
             "mpirun --oversubscribe --bind-to none -np 2 %s train " TINY " --steps 10 --stop-after 5 --out h2 --ckpt ck2",
             lasp);
    CHECK(rc == 0, "first half failed (%s):\n%s", ended(rc), out);
    rc = run(QUICK_S, "%s train " TINY " --steps 10 --resume --out h2 --ckpt ck2 --zero 3", lasp);
    CHECK(rc == 0, "resume on 1 rank with ZeRO-3 failed (%s):\n%s", ended(rc), out);
    rc = run(QUICK_S,
             "mpirun --oversubscribe --bind-to none -np 2 %s train " TINY " --sp 2 --zero 2 --steps 10 --stop-after 3 "
             "--out h3 --ckpt ck2 --resume", lasp);
    CHECK(rc == 0, "resume on dp 1 × sp 2 with ZeRO-2 failed (%s):\n%s", ended(rc), out);
    const int nc = losses("h2/train.jsonl", b, 16);
    CHECK(nc == 10, "expected 10 losses, got %d", nc);
    for (int i = 0; i < nc && i < na; i++)
        CHECK(fabs(atof(a[i]) - atof(b[i])) < 1e-4 * fabs(atof(a[i])), "step %d: %s vs %s", i + 1, a[i], b[i]);
    test_case("a checkpoint written by dp 2 continues under 1 rank / ZeRO-3 and under sp 2 / ZeRO-2");
#endif
}

/* A checkpoint of its own for a group of cases (5 steps of the tiny preset, about a second), so that they do not
 * fail with another case. A failure here fails the case that follows. */
static void make_ckpt(const char *ck) {
    int rc = run(QUICK_S, "%s train " TINY " --steps 5 --out %s-run --ckpt %s", lasp, ck, ck);
    CHECK(rc == 0, "training the checkpoint %s failed (%s):\n%s", ck, ended(rc), out);
}

/* Refused: status 1 or 2, the message names the problem (needle, and needle2 unless NULL), and the files
 * given are untouched. */
static void expect_fail2(const char *what, const char *needle, const char *needle2, const char *fmt,
                         const char *extra) {
    const long long sz = fsize("good/model.ckpt");
    const unsigned long long h = fhash("good/model.ckpt");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, lasp, extra);
    int rc = run(QUICK_S, "%s", cmd);
    CHECK(rc == 1 || rc == 2, "%s, expected exit status 1 or 2; output:\n%s", ended(rc), out);
    CHECK(strstr(out, needle) != NULL, "message does not mention '%s':\n%s", needle, out);
    CHECK(!needle2 || strstr(out, needle2) != NULL, "message does not mention '%s':\n%s", needle2, out);
    CHECK(fsize("good/model.ckpt") == sz && fhash("good/model.ckpt") == h, "the checkpoint was modified");
    CHECK(fsize("bad/train.jsonl") < 0, "a run directory was created despite the error");
    test_case("lasp train refuses %s", what);
}

static void expect_fail(const char *what, const char *needle, const char *fmt, const char *extra) {
    expect_fail2(what, needle, NULL, fmt, extra);
}

static void corrupt_copy(const char *to, long long trunc, long long flip) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/%s && cp %s/good/model.ckpt %s/%s/model.ckpt", dir, to, dir, dir, to);
    if (system(cmd) != 0) return;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/model.ckpt", dir, to);
    if (trunc >= 0) (void)!truncate(path, trunc);
    if (flip >= 0) {
        FILE *f = fopen(path, "r+b");
        fseek(f, flip, SEEK_SET);
        int c = fgetc(f);
        fseek(f, flip, SEEK_SET);
        fputc(c ^ 0x40, f);
        fclose(f);
    }
}

static void test_bad(void) {
    run(QUICK_S, "touch empty.txt");
    expect_fail("a missing data file", "nofile.txt", "%s train " TINY " --out bad %s", "--data nofile.txt");
    expect_fail("an empty data file", "empty", "%s train " TINY " --out bad %s", "--data empty.txt");
    make_ckpt("good");
    corrupt_copy("trunc", 1000, -1);
    expect_fail("a truncated checkpoint", "truncated", "%s train " TINY " --steps 20 --out bad %s",
                "--ckpt trunc --resume");
    corrupt_copy("flip", -1, 5000);
    expect_fail("a corrupt checkpoint", "corrupt", "%s train " TINY " --steps 20 --out bad %s", "--ckpt flip --resume");
    corrupt_copy("hdr", -1, 40);
    expect_fail("a checkpoint with a corrupt header", "corrupt", "%s train " TINY " --steps 20 --out bad %s",
                "--ckpt hdr --resume");
    expect_fail("a checkpoint of another model", "another model",
                "%s train --model small --seq-len 64 --batch 4 --steps 20 --out bad %s", "--ckpt good --resume");
    expect_fail("a checkpoint with the convolution resumed without it", "conv 4",
                "%s train " TINY " --steps 20 --out bad %s", "--ckpt good --resume --conv 0");
    corrupt_copy("ver", -1, 8);  /* the version field comes before the header checksum is checked */
    expect_fail("a checkpoint of another format version", "format version", "%s train " TINY " --steps 20 --out bad %s",
                "--ckpt ver --resume");
    expect_fail("a convolution of one tap", "2..16", "%s train " TINY " --out bad %s", "--conv 1");
    expect_fail("--resume without a checkpoint", "cannot open checkpoint", "%s train " TINY " --steps 20 --out bad %s",
                "--ckpt nockpt --resume");
    run(QUICK_S, "mkdir -p dck/model.ckpt");
    expect_fail("a directory where model.ckpt should be", "dck/model.ckpt is a directory",
                "%s train " TINY " --steps 20 --out bad %s", "--ckpt dck --resume");
    expect_fail("an unknown preset", "unknown model preset", "%s train --model huge --out bad %s", "");
    expect_fail("--sp that does not divide the world", "does not divide", "%s train " TINY " --out bad %s", "--sp 2");
#ifdef LASP_HAVE_MPI
    expect_fail("a sequence length not divisible by sp", "not divisible by --sp",
                "mpirun --oversubscribe --bind-to none -np 2 %s train --model tiny --batch 4 --seq-len 63 --out bad %s",
                "--sp 2");
    expect_fail("a batch not divisible by dp", "not divisible by dp",
                "mpirun --oversubscribe --bind-to none -np 2 %s train --model tiny --seq-len 64 --batch 3 --out bad %s",
                "--sp 1");
#endif
}

/* ---- flag bounds ------------------------------------------------------------------------------- */

/* Every numeric flag of `lasp train` out of range: refused before anything is written, naming the value. */
static void test_bounds(void) {
    static const struct {
        const char *flags, *needle, *needle2;
    } bad[] = {
        {"--threads -1", "--threads -1", NULL},
        {"--threads 100000", "--threads 100000", NULL},
        {"--threads 99999999999", "--threads 99999999999", NULL},
        {"--batch 0", "--batch 0", NULL},
        {"--batch 2000000000", "--batch 2000000000", NULL},
        {"--seq-len 0", "--seq-len 0", NULL},
        {"--steps 0", "--steps 0", NULL},
        {"--warmup -1", "--warmup -1", NULL},
        {"--vocab 3000000000", "--vocab 3000000000", NULL},
        {"--vocab -1", "--vocab -1", NULL},
        {"--stop-after -1", "--stop-after -1", NULL},
        {"--val-every -1", "--val-every -1", NULL},
        {"--ckpt-every -1", "--ckpt-every -1", NULL},
        {"--val-batches -1", "--val-batches -1", NULL},
        {"--conv -5", "--conv -5", NULL},
        {"--conv 17", "--conv 17", NULL},
        {"--lr 0.01 --min-lr 0.1", "--min-lr 0.1", "--lr 0.01"},
        {"--min-lr -1", "--min-lr -1", NULL},
        {"--val-frac 1.5", "--val-frac 1.5", NULL},
        {"--val-frac -0.1", "--val-frac -0.1", NULL},
        {"--val-frac nan", "--val-frac nan", NULL},
        {"--lr inf", "--lr inf", NULL},
        {"--lr nan", "--lr nan", NULL},
        {"--lr 0", "--lr 0", NULL},
        {"--lr -1", "--lr -1", NULL},
        {"--wd -1", "--wd -1", NULL},
        {"--wd nan", "--wd nan", NULL},
        {"--clip nan", "--clip nan", NULL},
        {"--clip -1", "--clip -1", NULL},
        {"--zero 4", "--zero 4", NULL},
        {"--zero -1", "--zero -1", NULL},
        {"--recall-pairs 0", "--recall-pairs 0", NULL},
        {"--recall-pairs 100", "--recall-pairs 100", NULL},
        {"--ckpt-minutes -1", "--ckpt-minutes -1", NULL},
        {"--ckpt-minutes nan", "--ckpt-minutes nan", NULL},
        {"--sp 0", "--sp 0", NULL},
        {"--seed -1", "--seed -1", NULL},
        {"--data-format bytes", "--data-format 'bytes'", NULL},
        {"--recompute most", "--recompute 'most'", "none, attn or block"},
        /* the CPU keeps every activation: --recompute is for the GPU, --chunk the CPU's way */
        {"--recompute block", "--recompute block", "--chunk"},
        /* 10^12 tokens a step: refused with what it needs, before any allocation is touched */
        {"--batch 100000 --seq-len 10000000", "needs", "GiB"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_fail2(bad[i].flags, bad[i].needle, bad[i].needle2, "%s train " TINY " --steps 3 --out bad %s",
                     bad[i].flags);

    /* one word for the chain everywhere (`lasp attn` called it lasp): the old word still runs it */
    int rc = run(QUICK_S, "%s train " TINY " --steps 2 --sp-mode lasp --out spmode", lasp);
    CHECK(rc == 0, "%s:\n%s", ended(rc), out);
    CHECK(strstr(out, "note: --sp-mode lasp is now called chain"), "no note naming chain:\n%s", out);
    test_case("lasp train --sp-mode lasp runs the chain, with a note naming it");
}

/* ---- token shards ------------------------------------------------------------------------------ */

/* An llm.c token shard: 256 int32 of header (magic, version, token count), then `have` tokens of `width`
 * bytes (fewer than `count`: a truncated file), cycling through 0..499. Little-endian, as llm.c writes. */
static void write_shard(const char *name, int32_t magic, int32_t version, int32_t count, int width, int32_t have) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    int32_t hdr[256] = {magic, version, count};
    fwrite(hdr, sizeof hdr[0], 256, f);
    for (int32_t i = 0; i < have; i++) {
        const uint32_t t = (uint32_t)(i * 7 % 500);
        const uint16_t u = (uint16_t)t;
        if (width == 2) fwrite(&u, 2, 1, f);
        else fwrite(&t, 4, 1, f);
    }
    fclose(f);
}

static void test_shards(void) {
    write_shard("s16.bin", 20240520, 1, 4096, 2, 4096);
    write_shard("s32.bin", 20240801, 7, 4096, 4, 4096);
    write_shard("magic.bin", 20240521, 1, 4096, 2, 4096);
    write_shard("version.bin", 20240520, 7, 4096, 2, 4096);
    write_shard("trunc.bin", 20240520, 1, 4096, 2, 4000);
    {
        char path[1024];
        snprintf(path, sizeof path, "%s/text.txt", dir);
        FILE *f = fopen(path, "w");
        for (int i = 0; f && i < 100; i++) fprintf(f, "line %03d: the quick brown fox jumps over the dog\n", i);
        if (f) fclose(f);
    }
    static const struct {
        const char *args, *kind;
    } good[] = {
        {"--data s16.bin --vocab 512", "s16.bin (shard): 4096 tokens"},
        {"--data s32.bin --vocab 512", "s32.bin (shard): 4096 tokens"},
        {"--data text.txt", "text.txt (text): 4900 tokens"},
        /* forced: the damaged shard's bytes, as text */
        {"--data magic.bin --data-format text", "magic.bin (text): 9216 tokens"},
        {"--data s16.bin --data-format shard --vocab 512", "s16.bin (shard): 4096 tokens"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int rc = run(QUICK_S, "%s train " TINY " --steps 2 %s --out shard%zu", lasp, good[i].args, i);
        CHECK(rc == 0, "%s:\n%s", ended(rc), out);
        CHECK(strstr(out, good[i].kind) != NULL, "the start-up table does not say '%s':\n%s", good[i].kind, out);
        test_case("lasp train %s trains, the start-up table naming its kind", good[i].args);
    }
    expect_fail("a shard whose magic is 20240521 (not trained as text)", "20240521", "%s train " TINY " --out bad %s",
                "--data magic.bin --vocab 512");
    expect_fail2("a shard of magic 20240520 with version 7", "version 7", "20240520", "%s train " TINY " --out bad %s",
                 "--data version.bin --vocab 512");
    expect_fail("a truncated shard", "truncated", "%s train " TINY " --out bad %s", "--data trunc.bin --vocab 512");
    expect_fail2("--data-format shard on a text file", "text.txt", "magic", "%s train " TINY " --out bad %s",
                 "--data text.txt --data-format shard");
}

/* ---- runs in the background: signals and kill -9 ----------------------------------------------- */

/* Starts `fmt` (in the temp dir, stdout and stderr into outfile) as a user's `lasp train ... > FILE &`
 * would, in a process group of its own; returns its pid (the command itself: sh execs it). */
static pid_t start(const char *outfile, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static pid_t start(const char *outfile, const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "exec %s > '%s' 2>&1", args, outfile);
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        if (chdir(dir) != 0) _exit(127);
        setenv("OMP_NUM_THREADS", "1", 1), setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1), setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits for a started run to end; its status as test_shell gives it (−signo, −1001 when `limit` ended it:
 * then its whole process group is killed). */
static int finish(pid_t pid, int limit) {
    limit_s = limit;
    if (pid <= 0) return -1000;
    for (long ms = 0;; ms += 10) {
        int st;
        const pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
        if (r < 0) return -1000;
        if (ms >= limit * 1000L) {
            kill(-pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1001;
        }
        usleep(10000);
    }
}

/* The file's first sizeof out − 1 bytes into out, NUL-terminated ("" if missing); returns how many. */
static size_t slurp(const char *rel) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    const size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = 0;
    fclose(f);
    return n;
}

/* the last ~3000 characters of out, for a message */
static const char *tail(void) {
    const size_t n = strlen(out);
    return n > 3000 ? out + n - 3000 : out;
}

/* Polls the started run's output file until it holds needle (1), or the run ended or `limit` passed (0). */
static int wait_for(pid_t pid, const char *rel, const char *needle, int limit) {
    for (long ms = 0; ms < limit * 1000L; ms += 5) {
        slurp(rel);
        if (strstr(out, needle)) return 1;
        siginfo_t si = {0};
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == pid) return 0;
        usleep(5000);
    }
    return 0;
}

/* Lines starting with "step " in s (the step lines of stdout). */
static int step_lines(const char *s) {
    int n = 0;
    for (const char *p = s; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (!strncmp(p, "step ", 5)) n++;
    return n;
}

/* A train.jsonl: its step lines (those with a "loss"), the last one's step, and whether every line is a
 * whole JSON object (ends with "}\n"). −1 if the file is missing. */
static int log_steps(const char *rel, long long *last, int *whole) {
    char path[1024], line[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "r");
    *last = -1, *whole = 1;
    if (!f) return -1;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        const size_t len = strlen(line);
        if (len < 2 || line[len - 1] != '\n' || line[len - 2] != '}') *whole = 0;
        if (strstr(line, "\"loss\":") && !strstr(line, "val_loss")) n++, *last = atoll(line + 8);
    }
    fclose(f);
    return n;
}

/* "resumed from CK at step N" of a --resume run's start-up table: N, or −1. */
static long long resumed_at(void) {
    const char *p = strstr(out, "resumed from ");
    p = p ? strstr(p, " at step ") : NULL;
    return p ? atoll(p + 9) : -1;
}

static char la[8192][40], lb[8192][40];

/* SIGTERM and SIGINT to one process: the step finishes, the checkpoint is written, exit 128 + signo with a
 * line naming the step; --resume continues it to the losses of a run never stopped, bit for bit. */
static void test_signals(void) {
    static const int sigs[2] = {SIGTERM, SIGINT};
    static const char *names[2] = {"Terminated", "Interrupt"};
    for (int i = 0; i < 2; i++) {
        const int sig = sigs[i];
        char so[64], od[64], ck[64], want[256];
        snprintf(so, sizeof so, "sig%d.out", sig), snprintf(od, sizeof od, "sig%d", sig);
        snprintf(ck, sizeof ck, "sig%d-ck", sig);
        const pid_t pid = start(so, "%s train " TINY " --steps 100000 --ckpt %s --out %s", lasp, ck, od);
        const int seen = wait_for(pid, so, "step 20/", QUICK_S);
        kill(pid, sig);
        int rc = finish(pid, QUICK_S);
        slurp(so);
        CHECK(seen, "no step 20 line before the signal:\n%s", tail());
        CHECK(rc == 128 + sig, "%s, expected exit status %d:\n%s", ended(rc), 128 + sig, tail());
        snprintf(want, sizeof want, "# stopped by %s after step ", names[i]);
        const char *p = strstr(out, want);
        const long long n = p ? atoll(p + strlen(want)) : -1;
        CHECK(p && n >= 20 && n < 8000, "no '%s' line with a step in 20 .. 8000:\n%s", want, tail());
        snprintf(want, sizeof want, " of 100000: checkpoint in %s (continue with the same command and --resume)", ck);
        CHECK(strstr(out, want), "the stop line does not say '%s':\n%s", want, tail());
        char ckf[128];
        snprintf(ckf, sizeof ckf, "%s/model.ckpt", ck);
        CHECK(fsize(ckf) > 0, "no checkpoint %s", ckf);
        char lg[128];
        snprintf(lg, sizeof lg, "%s/train.jsonl", od);
        long long last;
        int whole;
        const int nl = log_steps(lg, &last, &whole);
        CHECK(nl == n && last == n && whole, "%s: %d step lines, the last of step %lld (want %lld), %s", lg, nl,
              last, n, whole ? "all whole" : "a partial line");
        test_case("%s to one process: exit %d after the step, checkpoint written, the step named, the log whole",
                  names[i], 128 + sig);

        if (n < 20 || n >= 8000) continue;
        rc = run(QUICK_S, "%s train " TINY " --steps 100000 --ckpt %s --resume --stop-after 3 --out %s", lasp, ck, od);
        CHECK(rc == 0, "resume failed (%s):\n%s", ended(rc), tail());
        CHECK(resumed_at() == n, "resumed at step %lld, stopped at %lld:\n%s", resumed_at(), n, tail());
        rc = run(QUICK_S, "%s train " TINY " --steps 100000 --stop-after %lld --out %s-full", lasp, n + 3, od);
        CHECK(rc == 0, "the run without a stop failed (%s):\n%s", ended(rc), tail());
        char lf[128];
        snprintf(lf, sizeof lf, "%s-full/train.jsonl", od);
        const int na = losses(lf, la, 8192), nb = losses(lg, lb, 8192);
        CHECK(na == n + 3 && nb == n + 3, "expected %lld losses in each log, got %d and %d", n + 3, na, nb);
        for (int j = 0; j < na && j < nb; j++) CHECK(!strcmp(la[j], lb[j]), "step %d: loss %s vs %s", j + 1, la[j], lb[j]);
        test_case("stopped by %s, resumed: the losses of a run never stopped, bit-identical (%lld + 3 steps)",
                  names[i], n);
    }

    /* a second signal while the step runs (~0.7 s a step here): out at once, no checkpoint */
    const pid_t pid = start("twice.out", "%s train --model tiny --seq-len 1024 --batch 64 --val-every 0 --val-batches 0 "
                            "--steps 1000 --ckpt twice-ck --out twice", lasp);
    const int seen = wait_for(pid, "twice.out", "step 1/", QUICK_S);
    kill(pid, SIGTERM);
    /* the first must be taken before the second is sent (two pending SIGTERMs are one): wait until the
     * kernel no longer holds it pending */
    for (int ms = 0; ms < 5000; ms += 2) {
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
        FILE *f = fopen(path, "r");
        unsigned long long pend = 0;
        while (f && fgets(line, sizeof line, f))
            if (!strncmp(line, "ShdPnd:", 7)) pend = strtoull(line + 7, NULL, 16);
        if (f) fclose(f);
        if (!(pend & (1ULL << (SIGTERM - 1)))) break;
        usleep(2000);
    }
    kill(pid, SIGTERM);
    const int rc = finish(pid, QUICK_S);
    slurp("twice.out");
    CHECK(seen, "no step 1 line before the signals:\n%s", tail());
    CHECK(rc == 128 + SIGTERM, "%s, expected exit status %d:\n%s", ended(rc), 128 + SIGTERM, tail());
    CHECK(strstr(out, "second signal, stopping now without a checkpoint"), "no second-signal message:\n%s", tail());
    CHECK(!strstr(out, "# stopped by"), "it stopped after the step instead of at once:\n%s", tail());
    CHECK(fsize("twice-ck/model.ckpt") < 0, "a checkpoint was written");
    test_case("a second SIGTERM ends the run at once: exit 143, no checkpoint, a message saying so");
}

#ifdef LASP_HAVE_MPI
/* The pid of the process of MPI rank `rank` whose command line holds `arg` (its environment names the rank:
 * Open MPI's OMPI_COMM_WORLD_RANK, MPICH's PMI_RANK), or −1. */
static pid_t rank_pid(const char *arg, int rank) {
    char want[2][64];
    snprintf(want[0], sizeof want[0], "OMPI_COMM_WORLD_RANK=%d", rank);
    snprintf(want[1], sizeof want[1], "PMI_RANK=%d", rank);
    static char buf[1 << 18];  /* an MPI rank's environment is long */
    DIR *d = opendir("/proc");
    pid_t found = -1;
    for (struct dirent *e; d && found < 0 && (e = readdir(d));) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        int ok[2] = {0, 0};
        static const char *files[2] = {"cmdline", "environ"};
        for (int k = 0; k < 2; k++) {
            char path[300];
            snprintf(path, sizeof path, "/proc/%s/%s", e->d_name, files[k]);
            FILE *f = fopen(path, "rb");
            if (!f) break;
            const size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = 0;
            for (size_t at = 0; at < n; at += strlen(buf + at) + 1)  /* NUL-separated strings */
                if (k ? !strcmp(buf + at, want[0]) || !strcmp(buf + at, want[1]) : !strcmp(buf + at, arg)) ok[k] = 1;
        }
        if (ok[0] && ok[1]) found = (pid_t)atoi(e->d_name);
    }
    if (d) closedir(d);
    return found;
}

/* SIGTERM to rank 1 only of a dp 1 × sp 2 job: every rank stops after the same step (rank 0, which was not
 * signalled, reports it), the job ends non-zero without a hang, and the checkpoint resumes at that step. */
static void test_signal_mpi(void) {
    char od[1200];
    snprintf(od, sizeof od, "%s/mpsig", dir);  /* the temp dir's unique name finds this job's ranks */
    const pid_t pid = start("mpsig.out", "mpirun --oversubscribe --bind-to none -np 2 %s train " TINY " --sp 2 --steps "
                            "100000 --ckpt mpsig-ck --out %s", lasp, od);
    const int seen = wait_for(pid, "mpsig.out", "step 20/", QUICK_S);
    const pid_t r1 = seen ? rank_pid(od, 1) : -1;
    if (r1 > 0) kill(r1, SIGTERM);
    else kill(-pid, SIGKILL);  /* nothing to signal: end the job now rather than after its 100000 steps */
    const int job = finish(pid, QUICK_S);
    slurp("mpsig.out");
    CHECK(seen, "no step 20 line:\n%s", tail());
    CHECK(r1 > 0, "rank 1's process not found");
    CHECK(job > 0, "%s, expected a non-zero exit status:\n%s", ended(job), tail());
    const char *p = strstr(out, "# stopped by Terminated after step ");
    const long long n = p ? atoll(p + 35) : -1;
    CHECK(n >= 20, "rank 0 does not report the stop:\n%s", tail());
    long long last;
    int whole;
    const int nl = log_steps("mpsig/train.jsonl", &last, &whole);
    CHECK(nl == n && last == n && whole, "train.jsonl: %d step lines, the last of step %lld (stopped at %lld), %s", nl,
          last, n, whole ? "all whole" : "a partial line");
    const int rc = run(QUICK_S, "mpirun --oversubscribe --bind-to none -np 2 %s train " TINY " --sp 2 --steps 100000 "
                       "--ckpt mpsig-ck --resume --stop-after 2 --out mpsig-res", lasp);
    CHECK(rc == 0, "resume failed (%s):\n%s", ended(rc), tail());
    CHECK(resumed_at() == n, "resumed at step %lld, stopped at %lld:\n%s", resumed_at(), n, tail());
    test_case("SIGTERM to rank 1 of mpirun -np 2 --sp 2: every rank stops after step %lld, the job ends (status %d), "
              "the checkpoint resumes there", n, job);
}
#endif

/* kill -9 leaves every printed step in train.jsonl and in the redirected stdout; a checkpoint written by
 * time (--ckpt-minutes) survives it and resumes. */
static void test_kill9(void) {
    int rc = run(QUICK_S, "%s train --help", lasp);
    CHECK(rc == 0 && strstr(out, "--ckpt-minutes M") && strstr(strstr(out, "--ckpt-minutes M"), "(default 10)"),
          "--ckpt-minutes is not in --help with its default of 10 minutes (%s):\n%s", ended(rc), out);
    /* 0.002 minutes: a checkpoint every 0.12 s */
    const pid_t pid = start("k9.out", "%s train " TINY " --steps 100000 --ckpt k9-ck --ckpt-minutes 0.002 --out k9", lasp);
    int seen = wait_for(pid, "k9.out", "step 30/", QUICK_S);
    for (int ms = 0; seen && fsize("k9-ck/model.ckpt") < 0 && ms < QUICK_S * 1000; ms += 5) usleep(5000);
    slurp("k9.out");
    const int printed = step_lines(out);
    kill(pid, SIGKILL);
    rc = finish(pid, QUICK_S);
    CHECK(seen, "no step 30 line:\n%s", tail());
    CHECK(rc == -SIGKILL, "%s, expected killed by signal 9", ended(rc));
    long long last;
    int whole;
    const int nl = log_steps("k9/train.jsonl", &last, &whole);
    slurp("k9.out");
    const int after = step_lines(out);
    /* each step's log line follows its stdout line: a kill between the two leaves the log one behind */
    CHECK(nl >= printed - 1 && nl >= after - 1 && nl <= after, "train.jsonl holds %d step lines; stdout held %d "
          "before the kill and %d after", nl, printed, after);
    CHECK(whole && last == nl, "train.jsonl: %s, the last of step %lld", whole ? "whole lines" : "a partial line", last);
    CHECK(printed >= 30, "the redirected stdout held %d step lines before the kill", printed);
    test_case("kill -9: train.jsonl and the redirected stdout hold every step printed (%d lines)", nl);

    CHECK(fsize("k9-ck/model.ckpt") > 0, "no checkpoint written by time");
    rc = run(QUICK_S, "%s train " TINY " --steps 100000 --ckpt k9-ck --resume --stop-after 1 --out k9-res", lasp);
    CHECK(rc == 0, "resume failed (%s):\n%s", ended(rc), tail());
    CHECK(resumed_at() >= 1 && resumed_at() <= last, "resumed at step %lld; the log ends at %lld:\n%s", resumed_at(),
          last, tail());
    test_case("--ckpt-minutes: a checkpoint written by time survives kill -9 and resumes (at step %lld)",
              resumed_at());
}

/* A run that diverges says at which step and that the loss or gradients became non-finite. */
static void test_diverge(void) {
    int rc = run(QUICK_S, "%s train " TINY " --steps 50 --lr 1000 --clip 0 --warmup 0 --out diverge", lasp);
    long long last;
    int whole;
    log_steps("diverge/train.jsonl", &last, &whole);
    char want[64];
    snprintf(want, sizeof want, "error: step %lld: ", last + 1);
    CHECK(rc == 1, "%s, expected exit status 1:\n%s", ended(rc), tail());
    CHECK(last >= 0 && strstr(out, want), "the error does not name step %lld, the one after the last logged:\n%s",
          last + 1, tail());
    /* what became non-finite (not only the op's "q holds a non-finite value"), and what to change */
    CHECK((strstr(out, "the activations became non-finite") || strstr(out, "the loss is") ||
           strstr(out, "the gradient norm is")) && strstr(out, "hint: a lower --lr"),
          "the error does not say what became non-finite and why:\n%s", tail());
    test_case("--lr 1000 --clip 0 diverges: the error names step %lld and the non-finite values", last + 1);
}

/* Learning: small preset, 4 pairs, seq 64, batch 16, 400 steps at lr 1e-3 (docs/MODEL.md records its time
 * and the accuracy it reaches over seeds). Accuracy counts only the
 * values after a repeated key. Untrained, the model is at chance, 1/64 = 1.6%. A model that learnt
 * which values a sample holds but not which key each belongs to is capped near 1/P = 25% (a little
 * more when two pairs share a value) — the model without the short convolution plateaus there,
 * 25.4% after 1000 steps of the tiny preset. The threshold, 50% = twice that cap, is reached only
 * by binding values to keys. The tiny preset is faster but its learning depends on the seed
 * (5–90% after 600 steps), the small one's does not. */
static void test_learn(void) {
    int rc = run(LEARN_S,
                 "%s train --model small --recall-pairs 4 --seq-len 64 --batch 16 --steps 400 --warmup 30 --lr 1e-3 "
                 "--min-lr 1e-4 --seed 1 --val-every 0 --val-batches 8 --quiet --out learn --ckpt learn/ck", lasp);
    CHECK(rc == 0, "training failed (%s):\n%s", ended(rc), out);
    const char *p = strstr(out, "recall accuracy ");
    const double acc = p ? atof(p + 16) : 0;
    printf("# recall accuracy after 400 steps: %.1f%% (threshold 50%%; values without keys ~25%%, chance 1.6%%)\n",
           acc);
    CHECK(acc >= 50.0, "recall accuracy %.1f%% < 50%%:\n%s", acc, out);
    test_case("the small model learns associative recall (accuracy ≥ 50%% = 2 × the values-without-keys 25%%)");
}

/* Generation: state pairs, ask a key. From a checkpoint of its own, so that it does not fail with the
 * learning case; what this checks (the recurrent form runs, the prompt comes back) needs no trained model. */
/* The checkpoint for other tools: lasp export writes safetensors (a header length, a JSON header naming every
 * weight, the data: 8 + header + 4 · n_params bytes) and config.json; lasp generate --logits-out writes the
 * prompt's logits as [prompt, vocab] .npy. */
static void test_export(void) {
    make_ckpt("exp");
    int rc = run(QUICK_S, "%s export --ckpt exp --safetensors exp/hf", lasp);
    CHECK(rc == 0, "export failed (%s):\n%s", ended(rc), out);
    char path[1200];
    snprintf(path, sizeof path, "%s/exp/hf/model.safetensors", dir);
    FILE *f = fopen(path, "rb");
    uint64_t hl = 0;
    long size = 0;
    char head[64] = "";
    if (f) {
        CHECK(fread(&hl, 8, 1, f) == 1 && fread(head, 1, 16, f) == 16, "model.safetensors is too short");
        fseek(f, 0, SEEK_END), size = ftell(f), fclose(f);
    }
    CHECK(f && !strncmp(head, "{\"__metadata__\"", 15), "model.safetensors does not start with its JSON header");
    /* tiny, vocab 256: embedding and head 2·256·32, per block 32 + 4·32² + 4·3·32 + 32 + 32² + 32 + 2·32·64 + 64·32,
     * the final norm 32 */
    const long n_params = 2 * 256 * 32 + 2 * (32 + 4 * 32 * 32 + 4 * 96 + 32 + 32 * 32 + 32 + 2 * 32 * 64 + 64 * 32) + 32;
    CHECK(size == (long)(8 + hl) + 4 * n_params, "model.safetensors is %ld bytes, want 8 + %llu + 4 · %ld", size,
          (unsigned long long)hl, n_params);
    const size_t n = slurp("exp/hf/config.json");
    CHECK(n && strstr(out, "\"d_model\": 32") && strstr(out, "\"conv\": 4"), "config.json:\n%s", out);
    rc = run(QUICK_S, "%s generate --ckpt exp --prompt-ids 20,130,33 --tokens 1 --temperature 0 --ids --logits-out "
             "exp/l.npy", lasp);
    const size_t m = rc == 0 ? slurp("exp/l.npy") : 0;
    CHECK(rc == 0 && m > 0 && strstr(out + 10, "(3, 256,)"), "--logits-out did not write [3, 256] (%s)", ended(rc));
    rc = run(QUICK_S, "%s export --ckpt nowhere --safetensors exp/hf2", lasp);
    CHECK(rc == 1 && strstr(out, "nowhere"), "export of a missing checkpoint: %s\n%s", ended(rc), out);
    test_case("lasp export --safetensors (header, every weight's bytes, config.json); generate --logits-out");
}

/* --chunk: the sequence in chunks with the state carried trains as the whole sequence does (test_train proves
 * the numbers); the table says so; a chunk that does not divide the sequence is refused, naming it. */
static void test_chunk(void) {
    int rc = run(QUICK_S, "%s train --model tiny --seq-len 128 --chunk 32 --steps 3 --out chunk", lasp);
    CHECK(rc == 0 && strstr(out, "in 4 chunks of 32 (state carried)") && strstr(out, "step 3/3"), "%s:\n%s",
          ended(rc), out);
    rc = run(QUICK_S, "%s train --model tiny --seq-len 128 --chunk 48 --steps 3 --out chunk2", lasp);
    CHECK(rc == 1 && strstr(out, "--chunk 48 must divide"), "--chunk 48: %s\n%s", ended(rc), out);
    test_case("lasp train --chunk 32: 4 chunks of a 128-token sequence; --chunk 48 refused");
}

static void test_generate(void) {
    make_ckpt("gen");
    int rc = run(QUICK_S,
                 "%s generate --ckpt gen --prompt-ids 20,130,33,150,41,170,57,190,41 --tokens 1 --temperature 0 --ids",
                 lasp);
    CHECK(rc == 0, "generate failed (%s):\n%s", ended(rc), out);
    CHECK(strstr(out, "20,130,33,150,41,170,57,190,41,") != NULL, "prompt not echoed:\n%s", out);
    test_case("lasp generate runs from the checkpoint (recurrent form)");

    /* the bold of the generated part is for a terminal: a file gets the bytes only */
    rc = run(QUICK_S, "%s generate --ckpt gen --prompt ab --tokens 8 --temperature 0 > gen.txt", lasp);
    CHECK(rc == 0, "generate failed (%s):\n%s", ended(rc), out);
    const size_t n = slurp("gen.txt");  /* the generated bytes may hold a NUL: memmem, not strstr */
    CHECK(n == 2 + 8 + 1 && !strncmp(out, "ab", 2), "gen.txt does not hold the prompt, 8 bytes and a newline (%zu "
          "bytes)", n);
    CHECK(!memmem(out, n, "\x1b[1m", 4) && !memmem(out, n, "\x1b[0m", 4), "gen.txt holds ANSI escapes");
    test_case("lasp generate > file writes no ANSI escapes");

    static const struct {
        const char *args, *needle;
    } bad[] = {
        {"--prompt-ids 1,2 --temperature nan", "--temperature nan"},
        {"--prompt-ids 1,2 --temperature -1", "--temperature -1"},
        {"--prompt-ids 1,2 --temperature inf", "--temperature inf"},
        {"--prompt-ids 1,2 --tokens -1", "--tokens -1"},
        {"--prompt-ids 1,2 --top-k -1", "--top-k -1"},
        {"--prompt-ids 1,2 --seed -1", "--seed -1"},
        {"--prompt ab --prompt-ids 1,2", "--prompt and --prompt-ids both given"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = run(QUICK_S, "%s generate --ckpt gen %s", lasp, bad[i].args);
        CHECK(rc == 2, "%s, expected exit status 2:\n%s", ended(rc), out);
        CHECK(strstr(out, bad[i].needle) != NULL, "message does not mention '%s':\n%s", bad[i].needle, out);
        test_case("lasp generate refuses %s", bad[i].args);
    }
    rc = run(QUICK_S, "%s generate --ckpt dck --prompt ab", lasp);
    CHECK(rc == 1 && strstr(out, "dck/model.ckpt is a directory"), "%s:\n%s", ended(rc), out);
    test_case("lasp generate refuses a directory where model.ckpt should be");
}

int main(int argc, char **argv) {
    const char *b = getenv("BUILD");
    snprintf(lasp, sizeof lasp, "%s", argc > 1 ? argv[1] : "");
    if (!lasp[0]) {
        char cwd[400];
        if (!getcwd(cwd, sizeof cwd)) return 1;
        snprintf(lasp, sizeof lasp, "%s/%s/lasp", cwd, b ? b : "build");
    }
    if (!mkdtemp(dir)) return 1;
    test_resume();
    test_bad();
    test_bounds();
    test_shards();
    test_signals();
#ifdef LASP_HAVE_MPI
    test_signal_mpi();
#endif
    test_kill9();
    test_diverge();
    test_generate();
    test_export();
    test_chunk();
    test_learn();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (test_cases_failed_ == 0 && system(cmd) != 0) printf("# could not remove %s\n", dir);
    return test_exit();
}
