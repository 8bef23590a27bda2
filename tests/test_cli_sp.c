/* test_cli_sp.c — `lasp attn --sp` under mpirun, end to end: for 1, 2 and 4 ranks, every dp × sp layout
 * and both modes, the files rank 0 writes equal the one-process files (rel ≤ 1e-6) and pass --check;
 * bad layouts and outputs that overflow fail on every rank with a message naming them; the chain's former
 * name runs it with a note; a rank failing inside the run ends the job
 * (no hang) with its rank named; nothing is written on failure. Usage: test_cli_sp path/to/lasp */
#include <math.h>
#include <string.h>

#include "core/npy.h"
#include "core/rng.h"
#include "shell.h"
#include "test.h"

static const char *lasp;
static char dir[] = "/tmp/lasp-test-cli-sp-XXXXXX";
static char out[1 << 16];

/* Every run takes a few seconds at most: the limit only ends a hang (a rank waiting for a failed one). */
#define LIMIT_S 60

/* Runs CMD in the temp dir with a timeout; returns the exit status, −1001 on timeout. */
static int sh(const char *cmd) {
    char full[8192];
    snprintf(full, sizeof full, "cd '%s' && OMP_NUM_THREADS=1 timeout -k 5 %d %s 2>&1", dir, LIMIT_S, cmd);
    return test_shell(full, out, sizeof out);
}

static const char *ended(int rc) { return test_shell_ended(rc, LIMIT_S); }

static int mpirun(int np, const char *env, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "env %s mpirun --oversubscribe --bind-to none -np %d '%s' attn %s", env, np, lasp, args);
    return sh(cmd);
}

static void save(const char *name, int ndim, const int64_t *shape, const float *x) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    lasp_err err = {0};
    if (lasp_npy_write(path, LASP_F32, ndim, shape, x, &err) != LASP_OK) printf("# cannot write %s: %s\n", path, err.msg);
}

static int exists(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* ‖a − b‖ / ‖b‖ of two files of the same shape; +inf if either is missing or the shapes differ. */
static double file_err(const char *a, const char *b) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s", dir, a), snprintf(pb, sizeof pb, "%s/%s", dir, b);
    lasp_npy x = {0}, y = {0};
    lasp_err err = {0};
    double r = INFINITY;
    if (lasp_npy_read(pa, &x, &err) == LASP_OK && lasp_npy_read(pb, &y, &err) == LASP_OK && x.ndim == y.ndim &&
        !memcmp(x.shape, y.shape, sizeof x.shape) && x.dtype == LASP_F32 && y.dtype == LASP_F32) {
        double num = 0, den = 0;
        for (size_t i = 0; i < x.count; i++) {
            const double u = ((float *)x.data)[i], w = ((float *)y.data)[i];
            num += (u - w) * (u - w), den += w * w;
        }
        r = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!isfinite(r)) r = INFINITY;
    }
    lasp_npy_free(&x), lasp_npy_free(&y);
    return r;
}

#define INPUTS "--q q.npy --k k.npy --v v.npy --slopes s.npy --kv-in kvi.npy --do do.npy --dkv-out dkvo.npy"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_cli_sp path/to/lasp\n");
        return 2;
    }
    static char abs_path[4096];
    if (!realpath(argv[1], abs_path)) return 2;
    lasp = abs_path;
    lasp_rng rng;
    lasp_rng_seed(&rng, test_seed());
    if (!mkdtemp(dir)) return 1;

    /* B = 4 splits over dp ∈ {1, 2, 4}, T = 76 into sp ∈ {1, 2, 4} pieces of 76, 38, 19 tokens */
    const int64_t B = 4, T = 76, H = 4, d = 16, e = 32;
    const int64_t qs[4] = {B, T, H, d}, vs[4] = {B, T, H, e}, ss[4] = {B, H, d, e}, hs[1] = {H};
    const size_t nq = (size_t)(B * T * H * d), nv = (size_t)(B * T * H * e), ns = (size_t)(B * H * d * e);
    float *x = malloc(nv * sizeof *x);
    const char *names[6] = {"q.npy", "k.npy", "v.npy", "do.npy", "kvi.npy", "dkvo.npy"};
    const size_t counts[6] = {nq, nq, nv, nv, ns, ns};
    const int64_t *shapes[6] = {qs, qs, vs, vs, ss, ss};
    for (int i = 0; i < 6; i++) {
        for (size_t j = 0; j < counts[i]; j++) x[j] = (float)((i == 0 ? 0.25 : 1.0) * lasp_rng_normal(&rng));
        save(names[i], 4, shapes[i], x);
    }
    const float slopes[4] = {0.0f, 0.1f, 3.0f, 25.0f};  /* no decay .. λ^19 underflowing */
    save("s.npy", 1, hs, slopes);
    /* finite q and k whose products overflow fp32 (1e20 · 1e20): o is NaN and Inf */
    for (size_t j = 0; j < nq; j++) x[j] = (float)(1e20 * lasp_rng_normal(&rng));
    save("qbig.npy", 4, qs, x), save("kbig.npy", 4, qs, x);
    free(x);

    int rc;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' attn " INPUTS " --out single", lasp);
    rc = sh(cmd);
    CHECK(rc == 0, "one-process run: %s\n%s", ended(rc), out);
    test_case("lasp attn one process: reference files written");

    static const char *outs[6] = {"o", "kv_out", "dq", "dk", "dv", "dkv_in"};
    for (int np = 1; np <= 4; np *= 2)
        for (int sp = 1; sp <= np; sp *= 2)
            for (int m = LASP_SP_CHAIN; m <= LASP_SP_ALLGATHER; m++) { /* the LASP modes and the baselines */
                const char *mode = lasp_sp_mode_name((lasp_sp_mode)m);
                char args[2048], od[64];
                snprintf(od, sizeof od, "np%d_sp%d_%s", np, sp, mode);
                snprintf(args, sizeof args, INPUTS " --sp %d --sp-mode %s --check --out %s", sp, mode, od);
                rc = mpirun(np, "", args);
                CHECK(rc == 0, "mpirun -np %d --sp %d --sp-mode %s: %s\n%s", np, sp, mode, ended(rc), out);
                CHECK(strstr(out, "dkv_in ") && !strstr(out, "ABOVE"), "--check did not pass:\n%s", out);
                double worst = 0;
                for (int i = 0; i < 6; i++) {
                    char a[128], b[128];
                    snprintf(a, sizeof a, "%s/%s.npy", od, outs[i]), snprintf(b, sizeof b, "single/%s.npy", outs[i]);
                    const double er = file_err(a, b);
                    worst = er > worst ? er : worst;
                    CHECK(er <= 1e-6, "%s: rel error %.3e vs the one-process file", a, er);
                }
                test_case("mpirun -np %d lasp attn --sp %d --sp-mode %s (dp %d): files = one process (max %.1e), "
                          "--check passes", np, sp, mode, np / sp, worst);
            }

    /* the chain's former name runs the chain, with a note */
    rc = mpirun(2, "", INPUTS " --sp 2 --sp-mode lasp --out np2_lasp");
    CHECK(rc == 0, "%s\n%s", ended(rc), out);
    CHECK(strstr(out, "note: --sp-mode lasp is now called chain"), "no note naming chain:\n%s", out);
    CHECK(file_err("np2_lasp/dq.npy", "single/dq.npy") <= 1e-6, "dq differs");
    test_case("mpirun -np 2 lasp attn --sp 2 --sp-mode lasp: the chain, with a note naming it");

    rc = mpirun(2, "", INPUTS " --out np2_default");
    CHECK(rc == 0, "%s\n%s", ended(rc), out);
    CHECK(file_err("np2_default/dq.npy", "single/dq.npy") <= 1e-6, "dq differs");
    test_case("mpirun -np 2 lasp attn without --sp: data parallel (sp 1), same files");

    /* bad layouts: every rank says so, naming itself, and nothing is written */
    static const struct {
        int np;
        const char *args, *needle, *what;
    } bad[] = {
        {4, INPUTS " --sp 3 --out bad", "does not divide the 4 ranks", "--sp 3 on 4 ranks"},
        {2, "--random 2,75,2,16,16 --sp 2 --out bad", "do not split into --sp 2", "T = 75 with --sp 2"},
        {4, "--random 3,64,2,16,16 --sp 2 --out bad", "does not split over dp = 2", "B = 3 with dp 2"},
        {2, "--q nothere.npy --k k.npy --v v.npy --slopes s.npy --sp 2 --out bad", "nothere.npy", "a missing file"},
        {2, INPUTS " --sp 2 --sp-mode ring --out bad", "--sp-mode 'ring'", "an unknown --sp-mode"},
        {2, "--q qbig.npy --k kbig.npy --v v.npy --slopes s.npy --sp 2 --out bad", "o holds a non-finite value",
         "outputs that overflow fp32"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = mpirun(bad[i].np, "", bad[i].args);
        CHECK(rc > 0, "%s, expected a failure; output:\n%s", ended(rc), out);
        CHECK(strstr(out, bad[i].needle) != NULL, "message does not mention '%s':\n%s", bad[i].needle, out);
        if (strstr(bad[i].needle, "split") || strstr(bad[i].needle, "divide"))
            for (int r = 0; r < bad[i].np; r++) {
                char who[32];
                snprintf(who, sizeof who, "rank %d:", r);
                CHECK(strstr(out, who) != NULL, "no message from %s\n%s", who, out);
            }
        CHECK(!exists("bad/o.npy"), "outputs were written despite the error");
        test_case("mpirun lasp attn refuses %s on every rank", bad[i].what);
    }

    /* a rank that fails inside the run, while the others wait for its state: the job ends, naming it */
    for (int m = 0; m < 2; m++) {
        char args[1024];
        snprintf(args, sizeof args, INPUTS " --sp 4 --sp-mode %s --out bad", m ? "lasp2" : "chain");
        rc = mpirun(4, "LASP_TEST_FAIL_RANK=2", args);
        CHECK(rc > 0, "%s, expected a failure; output:\n%s", ended(rc), out);
        CHECK(strstr(out, "rank 2: lasp attn: forward") != NULL, "the message does not name rank 2:\n%s", out);
        CHECK(!exists("bad/o.npy"), "outputs were written despite the failure");
        test_case("a rank failing inside the %s run ends the whole job, naming the rank, no hang",
                  m ? "lasp2" : "lasp");
    }
    /* the SP bench runs end to end, reports every mode at W = 2, and the bytes it counts are its formula's */
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe --bind-to none -np 2 '%s' bench sp --device cpu --mode all --quick",
             lasp);
    rc = sh(cmd);
    CHECK(rc == 0, "%s\n%s", ended(rc), out);
    int rows = 0, at2[4] = {0, 0, 0, 0};
    for (const char *line = out; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        char scaling[16], mode[16];
        int W;
        long long tl, t;
        double ms, mtok, sent, formula;
        if (sscanf(line, " %15s %15s %d %lld %lld %lf %lf %lf %lf", scaling, mode, &W, &tl, &t, &ms, &mtok, &sent,
                   &formula) != 9 || (strcmp(scaling, "weak") && strcmp(scaling, "strong")))
            continue;
        rows++;
        CHECK(sent == formula, "%s %s W %d: %.0f bytes sent, the formula says %.0f", scaling, mode, W, sent, formula);
        for (int m = 0; m < 4; m++)
            if (W == 2 && !strcmp(mode, lasp_sp_mode_name((lasp_sp_mode)m))) at2[m] = 1;
    }
    CHECK(rows >= 8 && at2[0] && at2[1] && at2[2] && at2[3], "rows missing (%d rows):\n%s", rows, out);
    test_case("mpirun -np 2 lasp bench sp --mode all --quick: every mode at W = 2, bytes sent = docs/SP.md's formula");

    /* the training bench over a split sequence in a baseline mode */
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe --bind-to none -np 2 '%s' bench train --device cpu --sp 2 "
             "--sp-mode ulysses --models tiny --steps 1", lasp);
    rc = sh(cmd);
    CHECK(rc == 0 && strstr(out, "sp 2 (ulysses)") && strstr(out, "  tiny "), "%s\n%s", ended(rc), out);
    test_case("mpirun -np 2 lasp bench train --sp 2 --sp-mode ulysses: the trainer in a baseline mode");

    /* the training bench's longest sequence over a split: every rank doubles together; dp > 1 refused */
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe --bind-to none -np 2 '%s' bench train --device cpu --sp 2 "
             "--models tiny --longest --seq-len 128 --max-seq 512", lasp);
    rc = sh(cmd);
    CHECK(rc == 0 && strstr(out, "on 2 ranks, the sequence split") && strstr(out, "# longest tiny at batch 1: 512 tokens"),
          "%s\n%s", ended(rc), out);
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe --bind-to none -np 2 '%s' bench train --device cpu --sp 1 "
             "--models tiny --longest --seq-len 128 --max-seq 512", lasp);
    rc = sh(cmd);
    CHECK(rc != 0 && strstr(out, "must be one SP group (hint: --sp 2)"), "--longest with dp 2: %s\n%s", ended(rc), out);
    test_case("mpirun -np 2 lasp bench train --longest --sp 2: the longest sequence over the split; dp > 1 refused");

    /* --longest: doubles until the cap, names the longest that fit; one mode a process */
    snprintf(cmd, sizeof cmd, "mpirun --oversubscribe --bind-to none -np 2 '%s' bench sp --device cpu --longest --mode "
             "chain --mem-mib 260 --t-local 1024", lasp);
    rc = sh(cmd);
    const char *l = strstr(out, "# longest chain over 2 ranks within 260 MiB a rank: T = ");
    CHECK(rc == 0 && l && atoll(l + strlen("# longest chain over 2 ranks within 260 MiB a rank: T = ")) >= 2048,
          "%s\n%s", ended(rc), out);
    snprintf(cmd, sizeof cmd, "'%s' bench sp --device cpu --longest --mode all", lasp);
    rc = sh(cmd);
    CHECK(rc == 2 && strstr(out, "one mode a process"), "--longest --mode all: %s\n%s", ended(rc), out);
    test_case("lasp bench sp --longest: the longest T under a memory cap; one mode a process");

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    return test_exit();
}
