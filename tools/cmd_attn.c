/* cmd_attn.c — `lasp attn`: the op on .npy files. Reads q, k, v, slopes (and optionally kv_in, dO,
 * dkv_out), runs forward (and backward), writes f4 outputs into DIR, and with --check compares every
 * output with the fp64 reference. Outputs are written only after everything succeeded. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "core/npy.h"
#include "core/rng.h"
#include "lasp.h"
#include "opts.h"
#include "attn_io.h"
#include "comm/comm.h"


void attn_files_free(attn_files *f) {
    lasp_npy *all[] = {&f->q, &f->k, &f->v, &f->slopes, &f->kv_in, &f->do_, &f->dkv_out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) lasp_npy_free(all[i]);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

/* Read one f4 file of `ndim` dimensions; `name` is the option it came from. */
static int load(const char *name, const char *path, int ndim, lasp_npy *out) {
    lasp_err err = {0};
    if (lasp_npy_read(path, out, &err) != LASP_OK) return fail("%s", err.msg);
    char shp[128];
    if (out->dtype != LASP_F32) {
        fprintf(stderr,
                "error: %s: %s holds float64; lasp attn reads float32 ('<f4') files "
                "(hint: np.save(path, x.astype('<f4')))\n", name, path);
        return 1;
    }
    if (out->ndim != ndim) {
        fprintf(stderr, "error: %s: %s has shape %s, expected %d dimensions (%s)\n", name, path,
                lasp_shape_str(shp, sizeof shp, out->ndim, out->shape), ndim,
                ndim == 4 && strcmp(name, "--kv-in") && strcmp(name, "--dkv-out") ? "[B, T, H, D]"
                : ndim == 4                                                       ? "[B, H, d, e]"
                                                                                  : "[H]");
        return 1;
    }
    return 0;
}

static int same_dims(const char *na, const lasp_npy *x, const char *nb, const lasp_npy *y, const int *axes, int n) {
    for (int i = 0; i < n; i++)
        if (x->shape[axes[i]] != y->shape[axes[i]]) {
            char sx[128], sy[128];
            static const char *names = "BTHD";
            fprintf(stderr, "error: shapes disagree: %s is %s but %s is %s (axis %c must match)\n", na,
                    lasp_shape_str(sx, sizeof sx, x->ndim, x->shape), nb,
                    lasp_shape_str(sy, sizeof sy, y->ndim, y->shape), names[axes[i]]);
            return 1;
        }
    return 0;
}

static int state_shape_ok(const char *name, const lasp_npy *s, const lasp_attn_desc *a) {
    if (s->shape[0] == a->B && s->shape[1] == a->H && s->shape[2] == a->d && s->shape[3] == a->e) return 0;
    char sh[128];
    fprintf(stderr, "error: %s has shape %s, expected [B, H, d, e] = [%lld, %lld, %lld, %lld]\n", name,
            lasp_shape_str(sh, sizeof sh, s->ndim, s->shape), (long long)a->B, (long long)a->H, (long long)a->d,
            (long long)a->e);
    return 1;
}

int attn_load_all(const attn_args *o, attn_files *f) {
    static const int BTH[] = {0, 1, 2}, BTHD[] = {0, 1, 2, 3};
    if (load("--q", o->q, 4, &f->q) || load("--k", o->k, 4, &f->k) || load("--v", o->v, 4, &f->v) ||
        load("--slopes", o->slopes, 1, &f->slopes))
        return 1;
    if (same_dims("--q", &f->q, "--k", &f->k, BTHD, 4) || same_dims("--q", &f->q, "--v", &f->v, BTH, 3)) return 1;
    f->a = (lasp_attn_desc){.B = f->q.shape[0], .T = f->q.shape[1], .H = f->q.shape[2], .d = f->q.shape[3],
                            .e = f->v.shape[3], .block = (int)o->block, .dtype = LASP_F32};
    if (f->slopes.shape[0] != f->a.H) {
        fprintf(stderr, "error: --slopes has %lld entries but q has H = %lld heads (one slope per head)\n",
                (long long)f->slopes.shape[0], (long long)f->a.H);
        return 1;
    }
    if (o->kv_in && (load("--kv-in", o->kv_in, 4, &f->kv_in) || state_shape_ok("--kv-in", &f->kv_in, &f->a)))
        return 1;
    if (o->do_ && (load("--do", o->do_, 4, &f->do_) || same_dims("--v", &f->v, "--do", &f->do_, BTHD, 4))) return 1;
    if (o->dkv_out) {
        if (!o->do_) return fail("--dkv-out needs --do (the backward pass runs only with dO)");
        if (load("--dkv-out", o->dkv_out, 4, &f->dkv_out) || state_shape_ok("--dkv-out", &f->dkv_out, &f->a))
            return 1;
    }
    return 0;
}

/* --random B,T,H,d,e: inputs drawn here instead of read (q ~ N(0, 1/d), k, v, dO ~ N(0, 1), slopes of
 * MATH.md §1), and saved next to the outputs so that the run can be repeated from files. */
static int fill(lasp_npy *x, int ndim, const int64_t *shape, lasp_rng *r, double scale) {
    x->dtype = LASP_F32, x->ndim = ndim, x->count = 1;
    for (int i = 0; i < ndim; i++) x->shape[i] = shape[i], x->count *= (size_t)shape[i];
    float *p = malloc(x->count * sizeof *p);
    if (!p) return fail("no memory for %zu random floats", x->count);
    for (size_t i = 0; i < x->count; i++) p[i] = (float)(scale * lasp_rng_normal(r));
    x->data = p;
    return 0;
}

int attn_make_random(const attn_args *o, attn_files *f) {
    long long s[5];
    char tail;
    if (sscanf(o->random, "%lld,%lld,%lld,%lld,%lld%c", &s[0], &s[1], &s[2], &s[3], &s[4], &tail) != 5 ||
        s[0] < 1 || s[1] < 1 || s[2] < 1 || s[3] < 1 || s[4] < 1 || s[0] * s[1] * s[2] * (s[3] + s[4]) > (1LL << 32))
        return fail("--random '%s' is not a shape B,T,H,d,e of positive sizes (e.g. 2,1000,4,64,64)", o->random);
    lasp_rng r;
    lasp_rng_seed(&r, (uint64_t)o->seed);
    const int64_t qs[4] = {s[0], s[1], s[2], s[3]}, vs[4] = {s[0], s[1], s[2], s[4]}, hs[1] = {s[2]};
    if (fill(&f->q, 4, qs, &r, 1.0 / sqrt((double)s[3])) || fill(&f->k, 4, qs, &r, 1) || fill(&f->v, 4, vs, &r, 1) ||
        fill(&f->do_, 4, vs, &r, 1) || fill(&f->slopes, 1, hs, &r, 0))
        return 1;
    for (int64_t h = 0; h < s[2]; h++) ((float *)f->slopes.data)[h] = (float)pow(2.0, -8.0 * (h + 1) / (double)s[2]);
    f->a = (lasp_attn_desc){.B = s[0], .T = s[1], .H = s[2], .d = s[3], .e = s[4], .block = (int)o->block};
    return 0;
}

static int parse_device(const attn_args *o, lasp_device *dev, lasp_dtype *dt) {
    if (!strcmp(o->device, "cpu")) *dev = LASP_DEVICE_CPU;
    else if (!strcmp(o->device, "cuda")) *dev = LASP_DEVICE_CUDA;
    else return fail("--device '%s' is not known (hint: cpu or cuda)", o->device);
    if (!strcmp(o->dtype, "f32")) *dt = LASP_F32;
    else if (!strcmp(o->dtype, "bf16")) *dt = LASP_BF16;
    else if (!strcmp(o->dtype, "f16")) *dt = LASP_F16;
    else return fail("--dtype '%s' is not known (hint: f32, bf16 or f16)", o->dtype);
    if (*dev == LASP_DEVICE_CPU && *dt != LASP_F32)
        return fail("--dtype %s runs on the GPU only (hint: --device cuda, or --dtype f32 on the CPU)", o->dtype);
    return 0;
}

int attn_make_dir(const char *dir) {
    if (mkdir(dir, 0755) == 0 || errno == EEXIST) {
        struct stat sb;
        if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)) return 0;
        return fail("--out %s exists and is not a directory", dir);
    }
    return fail("cannot create --out directory %s: %s", dir, strerror(errno));
}

static double *widen(const lasp_npy *x) {
    if (!x->data) return NULL;
    double *y = malloc(x->count * sizeof *y);
    if (!y) return NULL;
    for (size_t i = 0; i < x->count; i++) y[i] = ((const float *)x->data)[i];
    return y;
}

/* The fp64 reference on the same inputs; prints one row per output; returns 1 if any is above tol. */
int attn_check(lasp_ctx *ctx, const attn_files *f, int bwd, const float *const outs[6], double tol) {
    const lasp_attn_desc *a = &f->a;
    const size_t nq = f->q.count, nv = f->v.count, ns = (size_t)(a->B * a->H * a->d * a->e);
    double *q = widen(&f->q), *k = widen(&f->k), *v = widen(&f->v), *sl = widen(&f->slopes);
    double *kv = widen(&f->kv_in), *dO = widen(&f->do_), *dkv = widen(&f->dkv_out);
    double *r[6] = {malloc(nv * 8), malloc(ns * 8), NULL, NULL, NULL, NULL};
    if (bwd) r[2] = malloc(nq * 8), r[3] = malloc(nq * 8), r[4] = malloc(nv * 8), r[5] = malloc(ns * 8);
    int bad = -1;
    if (!q || !k || !v || !sl || !r[0] || !r[1] || (bwd && (!dO || !r[2] || !r[3] || !r[4] || !r[5]))) {
        fprintf(stderr, "error: no memory for the fp64 reference\n");
        goto done;
    }
    if (a->T > 8192) fprintf(stderr, "note: the fp64 reference is O(T²); T = %lld takes a while\n", (long long)a->T);
    lasp_status s = lasp_attn_ref_fwd(ctx, a, q, k, v, sl, kv, r[0], r[1]);
    if (s == LASP_OK && bwd) s = lasp_attn_ref_bwd(ctx, a, q, k, v, sl, kv, dO, dkv, r[2], r[3], r[4], r[5]);
    if (s != LASP_OK) {
        fprintf(stderr, "error: reference: %s\n", lasp_ctx_error(ctx));
        goto done;
    }
    static const char *names[6] = {"o", "kv_out", "dq", "dk", "dv", "dkv_in"};
    const size_t counts[6] = {nv, ns, nq, nq, nv, ns};
    printf("# check against the fp64 reference: relative error ‖x − ref‖ / ‖ref‖, tolerance %.0e\n", tol);
    printf("# %-8s %12s %s\n", "output", "rel error", "verdict");
    bad = 0;
    for (int i = 0; i < (bwd ? 6 : 2); i++) {
        double e = lasp_rel_error_f32(outs[i], r[i], counts[i]);
        int ok = e <= tol;
        bad |= !ok;
        printf("  %-8s %12.3e %s\n", names[i], e, ok ? "ok" : "ABOVE TOLERANCE");
    }
done:
    free(q), free(k), free(v), free(sl), free(kv), free(dO), free(dkv);
    for (int i = 0; i < 6; i++) free(r[i]);
    return bad != 0;
}

int attn_write_out(const char *dir, const char *name, int ndim, const int64_t *shape, const float *x) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    lasp_err err = {0};
    if (lasp_npy_write(path, LASP_F32, ndim, shape, x, &err) != LASP_OK) return fail("%s", err.msg);
    return 0;
}

int cmd_attn(int argc, char **argv) {
    attn_args o = {.device = "cpu", .dtype = "f32", .tol = 0};
    const opt opts[] = {
        {"--q", OPT_STR, &o.q, "FILE", "queries [B, T, H, d], float32 .npy", 0},
        {"--k", OPT_STR, &o.k, "FILE", "keys [B, T, H, d]", 0},
        {"--v", OPT_STR, &o.v, "FILE", "values [B, T, H, e]", 0},
        {"--slopes", OPT_STR, &o.slopes, "FILE", "decay rates [H], ≥ 0 (λ = exp(−slope); 0 = no decay)", 0},
        {"--kv-in", OPT_STR, &o.kv_in, "FILE", "state entering the sequence [B, H, d, e] (default zero)", 0},
        {"--do", OPT_STR, &o.do_, "FILE", "gradient of the output [B, T, H, e]: also run the backward pass", 0},
        {"--dkv-out", OPT_STR, &o.dkv_out, "FILE", "gradient of kv_out [B, H, d, e] (default zero; needs --do)", 0},
        {"--out", OPT_STR, &o.out, "DIR", "directory for o.npy, kv_out.npy (+ dq, dk, dv, dkv_in.npy)", 1},
        {"--random", OPT_STR, &o.random, "B,T,H,d,e", "instead of --q/--k/--v/--slopes/--do: random inputs, saved in DIR", 0},
        {"--seed", OPT_INT, &o.seed, "N", "seed of --random", 0},
        {"--block", OPT_INT, &o.block, "N", "chunk size of the blocked algorithm (0 = the default, 64)", 0},
        {"--device", OPT_STR, &o.device, "cpu|cuda", "where to run", 0},
        {"--dtype", OPT_STR, &o.dtype, "f32|bf16|f16", "I/O type on the device (bf16/f16 on cuda only)", 0},
        {"--threads", OPT_INT, &o.threads, "N", "CPU threads (0 = all)", 0},
        {"--check", OPT_FLAG, &o.check, NULL, "also run the fp64 reference and report relative errors", 0},
        {"--tol", OPT_DOUBLE, &o.tol, "X", "tolerance of --check (default 1e-5 f32 on the CPU, 1e-4 on the GPU, 1e-2 bf16/f16)", 0},
        {"--sp", OPT_INT, &o.sp, "N", "under mpirun: ranks per sequence; world = dp × sp (default 1 under mpirun)", 0},
        {"--sp-mode", OPT_STR, &o.sp_mode, "lasp|lasp2", "SP schedule: the LASP chain (default) or the LASP-2 all-gather", 0},
    };
    const cmd_spec spec = {
        "lasp attn --q Q.npy --k K.npy --v V.npy --slopes S.npy [--kv-in KV.npy] [--do DO.npy] "
        "[--dkv-out G.npy] [--block N] [--check] --out DIR\n       lasp attn --random B,T,H,d,e [--seed N] [--check] --out DIR\n"
        "       mpirun -np N lasp attn ... --sp S [--sp-mode lasp|lasp2] --out DIR",
        "Runs decayed causal linear attention o_t = Σ_{j≤t} λ^{t−j} (q_t·k_j) v_j + λ^t q_t KV_in on .npy files\n"
        "and writes DIR/o.npy and DIR/kv_out.npy; with --do also the gradients DIR/dq.npy, dk.npy, dv.npy and\n"
        "dkv_in.npy. All files are little-endian float32, C order. Exit status: 0 ok, 1 error or --check above\n"
        "tolerance, 2 bad usage.\n\n"
        "Under mpirun each rank reads the full inputs and takes its batch slice (dp = ranks / sp) and its piece of\n"
        "the sequence (sp); only fp32 states cross ranks (LASP). Rank 0 gathers and writes the same files as one\n"
        "process would. T must divide by sp and B by dp.",
        "lasp attn --q q.npy --k k.npy --v v.npy --slopes s.npy --do do.npy --check --out out/",
        opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    lasp_device dev = LASP_DEVICE_CPU;
    lasp_dtype dt = LASP_F32;
    if (parse_device(&o, &dev, &dt)) return 2;
    if (o.block < 0 || o.block > 4096) {
        fprintf(stderr, "error: --block %lld is out of range (hint: 0 for the default, or 1..4096)\n", o.block);
        return 2;
    }
    if (o.threads < 0) {
        fprintf(stderr, "error: --threads %lld must be ≥ 0\n", o.threads);
        return 2;
    }
    /* the GPU's f32 path runs on tensor cores (bf16 splits): 1e-4 there, as its tests use */
    if (o.tol == 0) o.tol = dt != LASP_F32 ? 1e-2 : dev == LASP_DEVICE_CUDA ? 1e-4 : 1e-5;

    if (o.random && (o.q || o.k || o.v || o.slopes || o.do_ || o.kv_in || o.dkv_out)) {
        fprintf(stderr, "error: --random replaces the input files; give one or the other\n");
        return 2;
    }
    if (!o.random && (!o.q || !o.k || !o.v || !o.slopes)) {
        fprintf(stderr, "error: --q, --k, --v and --slopes are required (or --random B,T,H,d,e; see --help)\n");
        return 2;
    }
    /* several ranks writing the same files would race: under mpirun the SP path runs, with sp = 1 (pure
     * data parallel) unless --sp says otherwise */
    if (o.sp || o.sp_mode || lasp_comm_launcher_size() > 1) return attn_sp(&o);

    attn_files f = {0};
    lasp_ctx *ctx = NULL;
    float *out[6] = {0};
    int rc = 1;
    if (o.random) {
        o.do_ = "(random)";
        if (attn_make_random(&o, &f)) goto done;
    } else if (attn_load_all(&o, &f)) {
        goto done;
    }
    f.a.dtype = dt;
    lasp_ctx_params cp = lasp_ctx_default_params();
    cp.n_threads = (int)o.threads;
    if (lasp_ctx_create(&cp, &ctx) != LASP_OK) {
        fprintf(stderr, "error: cannot create a lasp context\n");
        goto done;
    }
    const lasp_attn_desc *a = &f.a;
    const size_t nq = f.q.count, nv = f.v.count, ns = (size_t)(a->B * a->H * a->d * a->e);
    const int bwd = o.do_ != NULL;
    const size_t counts[6] = {nv, ns, nq, nq, nv, ns};
    for (int i = 0; i < (bwd ? 6 : 2); i++)
        if (!(out[i] = malloc(counts[i] * sizeof(float)))) {
            fprintf(stderr, "error: no memory for the outputs (%zu floats)\n", counts[i]);
            goto done;
        }
    lasp_status s = lasp_attn_fwd_host(ctx, a, dev, f.q.data, f.k.data, f.v.data, f.slopes.data, f.kv_in.data,
                                       out[0], out[1]);
    if (s == LASP_OK && bwd)
        s = lasp_attn_bwd_host(ctx, a, dev, f.q.data, f.k.data, f.v.data, f.slopes.data, f.kv_in.data, f.do_.data,
                               f.dkv_out.data, out[2], out[3], out[4], out[5]);
    if (s != LASP_OK) {
        fprintf(stderr, "error: %s: %s\n", lasp_status_string(s), lasp_ctx_error(ctx));
        goto done;
    }
    if (attn_make_dir(o.out)) goto done;
    const int64_t st_shape[4] = {a->B, a->H, a->d, a->e};
    if (attn_write_out(o.out, "o", 4, f.v.shape, out[0]) || attn_write_out(o.out, "kv_out", 4, st_shape, out[1])) goto done;
    if (o.random && (attn_write_out(o.out, "q", 4, f.q.shape, f.q.data) || attn_write_out(o.out, "k", 4, f.k.shape, f.k.data) ||
                     attn_write_out(o.out, "v", 4, f.v.shape, f.v.data) || attn_write_out(o.out, "do", 4, f.do_.shape, f.do_.data) ||
                     attn_write_out(o.out, "slopes", 1, f.slopes.shape, f.slopes.data)))
        goto done;
    if (bwd && (attn_write_out(o.out, "dq", 4, f.q.shape, out[2]) || attn_write_out(o.out, "dk", 4, f.k.shape, out[3]) ||
                attn_write_out(o.out, "dv", 4, f.v.shape, out[4]) || attn_write_out(o.out, "dkv_in", 4, st_shape, out[5])))
        goto done;
    printf("lasp attn: B=%lld T=%lld H=%lld d=%lld e=%lld on %s (%s): wrote %s/{o,kv_out%s}.npy\n", (long long)a->B,
           (long long)a->T, (long long)a->H, (long long)a->d, (long long)a->e, o.device, o.dtype, o.out,
           bwd ? ",dq,dk,dv,dkv_in" : "");
    rc = o.check ? attn_check(ctx, &f, bwd, (const float *const *)out, o.tol) : 0;
done:
    for (int i = 0; i < 6; i++) free(out[i]);
    attn_files_free(&f);
    lasp_ctx_free(ctx);
    return rc;
}
