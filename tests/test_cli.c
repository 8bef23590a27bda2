/* test_cli.c — `lasp attn` end to end: a good run, then every kind of bad input (every numeric flag out of
 * range, inputs whose outputs overflow fp32, no usable GPU) must give a clear message and a non-zero exit —
 * never a crash, a hang or a silently wrong answer — and leave no outputs behind; `lasp bench attn`'s flag
 * bounds likewise. Usage: test_cli path/to/lasp */
#include <math.h>
#include <string.h>

#include "core/npy.h"
#include "core/rng.h"
#include "shell.h"
#include "test.h"

static const char *lasp;
static char dir[] = "/tmp/lasp-test-cli-XXXXXX";
static lasp_rng rng;
static char out[4096];  /* combined stdout + stderr of the last run */

/* Every run takes well under a second: the limit only ends a hang. */
#define LIMIT_S 120

/* Runs `lasp ARGS` (file names relative to the temp dir) and returns its exit status; a signal is −signo. */
static int run(const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && timeout %d '%s' %s 2>&1", dir, LIMIT_S, lasp, args);
    return test_shell(cmd, out, sizeof out);
}

static const char *ended(int rc) { return test_shell_ended(rc, LIMIT_S); }

static void save(const char *name, lasp_dtype t, int ndim, const int64_t *shape, const void *x) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    lasp_err err = {0};
    if (lasp_npy_write(path, t, ndim, shape, x, &err) != LASP_OK) printf("# cannot write %s: %s\n", path, err.msg);
}

static void save_randn(const char *name, int ndim, const int64_t *shape, float scale) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = scale * (float)lasp_rng_normal(&rng);
    save(name, LASP_F32, ndim, shape, x);
    free(x);
}

static int exists(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* A failing run: exit status `want_rc` (1 = error, 2 = usage), `needle` in the message, no outputs. */
static void expect_fail(const char *what, const char *args, int want_rc, const char *needle) {
    int rc = run(args);
    CHECK(rc == want_rc, "%s, expected exit status %d; output:\n%s", ended(rc), want_rc, out);
    CHECK(strstr(out, needle) != NULL, "message does not mention '%s':\n%s", needle, out);
    CHECK(!exists("bad/o.npy") && !exists("bad/dq.npy"), "outputs were written despite the error");
    test_case("lasp attn refuses %s", what);
}

#define GOOD "attn --q q.npy --k k.npy --v v.npy --slopes s.npy"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_cli path/to/lasp\n");
        return 2;
    }
    lasp = argv[1];
    if (lasp[0] != '/') {  /* the runs cd into the temp dir */
        static char abs_path[4096];
        if (!realpath(argv[1], abs_path)) return 2;
        lasp = abs_path;
    }
    lasp_rng_seed(&rng, test_seed());
    if (!mkdtemp(dir)) return 1;

    const int64_t B = 2, T = 37, H = 3, d = 16, e = 32;
    const int64_t qs[4] = {B, T, H, d}, vs[4] = {B, T, H, e}, ss[4] = {B, H, d, e}, hs[1] = {H};
    save_randn("q.npy", 4, qs, 0.25f), save_randn("k.npy", 4, qs, 1), save_randn("v.npy", 4, vs, 1);
    save_randn("do.npy", 4, vs, 1), save_randn("kv.npy", 4, ss, 1), save_randn("g.npy", 4, ss, 1);
    const float slopes[3] = {0.0f, 0.1f, 8.0f}, neg[3] = {0.1f, -0.25f, 0.0f};
    save("s.npy", LASP_F32, 1, hs, slopes);
    save("neg.npy", LASP_F32, 1, hs, neg);

    /* the good run, checked against the reference, with every output written */
    int rc = run(GOOD " --kv-in kv.npy --do do.npy --dkv-out g.npy --block 16 --check --out good");
    CHECK(rc == 0, "%s:\n%s", ended(rc), out);
    CHECK(strstr(out, "dkv_in") && !strstr(out, "ABOVE"), "check table:\n%s", out);
    const char *files[] = {"good/o.npy", "good/kv_out.npy", "good/dq.npy", "good/dk.npy", "good/dv.npy",
                           "good/dkv_in.npy"};
    for (int i = 0; i < 6; i++) CHECK(exists(files[i]), "%s missing", files[i]);
    lasp_npy o;
    lasp_err err = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/good/dk.npy", dir);
    CHECK(lasp_npy_read(path, &o, &err) == LASP_OK && o.dtype == LASP_F32 && o.ndim == 4 && o.shape[1] == T &&
              o.shape[3] == d, "dk.npy: %s", err.msg);
    lasp_npy_free(&o);
    test_case("lasp attn forward + backward with states, --check passes, all outputs written");

    rc = run(GOOD " --check --tol 1e-12 --out tight");
    CHECK(rc == 1 && strstr(out, "ABOVE TOLERANCE"), "--check must fail above its tolerance (%s):\n%s", ended(rc), out);
    test_case("lasp attn --check fails when the error is above the tolerance");

    rc = run("attn --random 1,100,2,32,16 --seed 3 --check --out rnd");
    CHECK(rc == 0 && exists("rnd/q.npy") && exists("rnd/dkv_in.npy"), "--random (%s):\n%s", ended(rc), out);
    test_case("lasp attn --random writes its inputs and passes --check");

    /* inputs that must be refused */
    save_randn("k_T.npy", 4, (int64_t[]){B, T + 1, H, d}, 1);
    expect_fail("q and k of different T", "attn --q q.npy --k k_T.npy --v v.npy --slopes s.npy --out bad", 1,
                "shapes disagree");
    save_randn("v_H.npy", 4, (int64_t[]){B, T, H + 1, e}, 1);
    expect_fail("v with other heads", "attn --q q.npy --k k.npy --v v_H.npy --slopes s.npy --out bad", 1,
                "shapes disagree");
    save_randn("do_e.npy", 4, (int64_t[]){B, T, H, d}, 1);
    expect_fail("dO of the wrong shape", GOOD " --do do_e.npy --out bad", 1, "shapes disagree");
    save_randn("s4.npy", 1, (int64_t[]){H + 1}, 0.1f);
    expect_fail("one slope too many", "attn --q q.npy --k k.npy --v v.npy --slopes s4.npy --out bad", 1, "slopes has 4");
    save_randn("kv_bad.npy", 4, (int64_t[]){B, H, e, d}, 1);
    expect_fail("kv_in of the wrong shape", GOOD " --kv-in kv_bad.npy --out bad", 1, "expected [B, H, d, e]");
    save_randn("q3.npy", 3, (int64_t[]){B, T, H}, 1);
    expect_fail("a 3-D q", "attn --q q3.npy --k k.npy --v v.npy --slopes s.npy --out bad", 1, "expected 4 dimensions");
    save_randn("q48.npy", 4, (int64_t[]){B, T, H, 48}, 1), save_randn("k48.npy", 4, (int64_t[]){B, T, H, 48}, 1);
    expect_fail("head dim 48", "attn --q q48.npy --k k48.npy --v v.npy --slopes s.npy --out bad", 1, "d=48");
    {
        double x[B * T * H * d];
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = 0.5;
        save("q8.npy", LASP_F64, 4, qs, x);
    }
    expect_fail("an f8 .npy", "attn --q q8.npy --k k.npy --v v.npy --slopes s.npy --out bad", 1, "float64");
    if (system("true") == 0) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "cd '%s' && head -c 500 q.npy > trunc.npy && printf 'garbage!' > junk.npy", dir);
        if (system(cmd) != 0) printf("# could not make the corrupt files\n");
    }
    expect_fail("a truncated .npy", "attn --q trunc.npy --k k.npy --v v.npy --slopes s.npy --out bad", 1, "truncated");
    expect_fail("a corrupt .npy", "attn --q junk.npy --k k.npy --v v.npy --slopes s.npy --out bad", 1, "not a .npy");
    expect_fail("negative slopes", "attn --q q.npy --k k.npy --v v.npy --slopes neg.npy --out bad", 1, "-0.25");
    expect_fail("a missing file", "attn --q nope.npy --k k.npy --v v.npy --slopes s.npy --out bad", 1, "nope.npy");
    {
        size_t n = (size_t)(B * T * H * e);
        float *x = malloc(n * sizeof *x);
        for (size_t i = 0; i < n; i++) x[i] = 1.0f;
        x[123] = NAN;
        save("vnan.npy", LASP_F32, 4, vs, x);
        x[123] = INFINITY;
        save("donan.npy", LASP_F32, 4, vs, x);
        free(x);
    }
    expect_fail("NaN in v", "attn --q q.npy --k k.npy --v vnan.npy --slopes s.npy --out bad", 1, "non-finite");
    expect_fail("Inf in dO", GOOD " --do donan.npy --out bad", 1, "non-finite");
    expect_fail("--dkv-out without --do", GOOD " --dkv-out g.npy --out bad", 1, "needs --do");
    expect_fail("bf16 on the CPU", GOOD " --dtype bf16 --out bad", 2, "GPU only");
    expect_fail("an unknown option", GOOD " --frobnicate --out bad", 2, "unknown option '--frobnicate'");
    expect_fail("a missing --out", GOOD, 2, "--out is required");
    expect_fail("a bad --block", GOOD " --block -3 --out bad", 2, "--block -3");
    expect_fail("a non-integer --block", GOOD " --block 1x --out bad", 2, "expects an integer");
    expect_fail("a bad --random shape", "attn --random 2,3,x --out bad", 1, "not a shape");
    /* every numeric flag out of range, the value named */
    expect_fail("--threads -1", GOOD " --threads -1 --out bad", 2, "--threads -1");
    expect_fail("--threads 100000", GOOD " --threads 100000 --out bad", 2, "--threads 100000");
    expect_fail("--threads 99999999999", GOOD " --threads 99999999999 --out bad", 2, "--threads 99999999999");
    expect_fail("--block 5000", GOOD " --block 5000 --out bad", 2, "--block 5000");
    expect_fail("--tol nan", GOOD " --check --tol nan --out bad", 2, "--tol nan");
    expect_fail("--tol -1", GOOD " --check --tol -1 --out bad", 2, "--tol -1");
    expect_fail("--tol 1", GOOD " --check --tol 1 --out bad", 2, "--tol 1");
    /* finite inputs whose products overflow fp32 (1e20 · 1e20): the outputs are NaN and Inf. With v and dO
     * that large, o stays finite (q·k is small) but dq = Σ (dO·v) k overflows: the backward's outputs count too */
    save_randn("qbig.npy", 4, qs, 1e20f), save_randn("kbig.npy", 4, qs, 1e20f);
    save_randn("vbig.npy", 4, vs, 1e20f), save_randn("dobig.npy", 4, vs, 1e20f);
    expect_fail("inputs whose outputs overflow fp32", "attn --q qbig.npy --k kbig.npy --v v.npy --slopes s.npy --out bad",
                1, "o holds a non-finite value");
    expect_fail("inputs whose gradients overflow fp32",
                "attn --q q.npy --k k.npy --v vbig.npy --slopes s.npy --do dobig.npy --out bad", 1,
                "dq holds a non-finite value");
    CHECK(!exists("bad/kv_out.npy") && !exists("bad"), "a file or the --out directory was written");
    test_case("lasp attn writes nothing, not even --out, when an output is non-finite");
    if (system("true") == 0) {
        char mk[1200];
        snprintf(mk, sizeof mk, "mkdir -p '%s/dir.npy'", dir);
        if (system(mk) != 0) printf("# could not make dir.npy\n");
    }
    expect_fail("a directory given as a .npy file", "attn --q dir.npy --k k.npy --v v.npy --slopes s.npy --out bad", 1,
                "dir.npy is a directory");

    /* one word for the LASP chain everywhere (`lasp train` says chain): the old word runs it, with a note */
    rc = run("attn --random 1,64,2,16,16 --sp-mode lasp --out spmode");
    CHECK(rc == 0 && exists("spmode/o.npy"), "%s:\n%s", ended(rc), out);
    CHECK(strstr(out, "note: --sp-mode lasp is now called chain"), "no note naming chain:\n%s", out);
    test_case("lasp attn --sp-mode lasp runs the chain, with a note naming it");

    /* --device cuda where no GPU is usable (or CUDA is not built) says so; where one is, it runs */
    rc = run("info");
    const int gpu = strstr(out, "  GPU 0 ") != NULL;
    rc = run("attn --random 1,64,2,16,16 --device cuda --out cuda");
    if (gpu) {
        CHECK(rc == 0 && exists("cuda/o.npy"), "%s:\n%s", ended(rc), out);
    } else {
        CHECK(rc == 1, "%s, expected exit status 1:\n%s", ended(rc), out);
        CHECK(strstr(out, "no usable GPU") || strstr(out, "no CUDA support"), "the message does not say that no GPU "
              "is usable (or that CUDA is not built):\n%s", out);
        CHECK(!exists("cuda/o.npy"), "outputs were written despite the error");
    }
    test_case("lasp attn --device cuda %s", gpu ? "runs on the GPU" : "without a usable GPU: a message saying so");

    /* lasp bench attn (cpu): its flags' bounds, and --device cuda without a GPU */
    static const struct {
        const char *args, *needle;
    } bench_bad[] = {
        {"--threads -1", "--threads -1"},         {"--threads 100000", "--threads 100000"},
        {"--threads 99999999999", "--threads 99999999999"}, {"--repeat 0", "--repeat 0"},
        {"--repeat -5", "--repeat -5"},           {"--block 0", "--block 0"},
        {"--block 5000", "--block 5000"},
    };
    for (size_t i = 0; i < sizeof bench_bad / sizeof bench_bad[0]; i++) {
        char args[256];
        snprintf(args, sizeof args, "bench attn --quick %s", bench_bad[i].args);
        rc = run(args);
        CHECK(rc == 2, "%s, expected exit status 2:\n%s", ended(rc), out);
        CHECK(strstr(out, bench_bad[i].needle), "message does not mention '%s':\n%s", bench_bad[i].needle, out);
        test_case("lasp bench attn refuses %s", bench_bad[i].args);
    }
    if (!gpu) {
        rc = run("bench attn --quick --device cuda");
        CHECK(rc == 1 && (strstr(out, "no usable GPU") || strstr(out, "no CUDA bench")), "%s:\n%s", ended(rc), out);
        test_case("lasp bench attn --device cuda without a usable GPU: a message saying so");
    }

    save_randn("bad", 1, hs, 1);  /* a file where the output directory should be */
    expect_fail("--out naming a file", GOOD " --out bad", 1, "not a directory");

    /* every subcommand has --help, from the same table that parses it */
    const char *cmds[] = {"attn", "info", "bench attn", "bench"};
    for (int i = 0; i < 4; i++) {
        char args[64];
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        rc = run(args);
        CHECK(rc == 0 && strstr(out, "usage: lasp"), "lasp %s --help (%s):\n%s", cmds[i], ended(rc), out);
        test_case("lasp %s --help", cmds[i]);
    }
    rc = run("frobnicate");
    CHECK(rc == 2 && strstr(out, "unknown command"), "unknown command (%s):\n%s", ended(rc), out);
    rc = run("info");
    CHECK(rc == 0 && strstr(out, "OpenMP"), "lasp info (%s):\n%s", ended(rc), out);
    test_case("lasp with an unknown command, lasp info");

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    return test_exit();
}
