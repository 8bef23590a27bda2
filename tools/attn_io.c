/* attn_io.c — what `lasp attn` shares between its one-process path (cmd_attn.c) and its SP path under
 * mpirun (cmd_attn_sp.c): reading, drawing, checking and writing the op's tensors. Each function prints its
 * own error message and returns non-zero on failure. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_io.h"
#include "core/dtype.h"
#include "core/fs.h"
#include "core/rng.h"

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

int attn_parse_device(const attn_args *o, lasp_device *dev, lasp_dtype *dt) {
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

/* --out DIR and the directories above it */
int attn_make_dir(const char *dir) {
    lasp_err err;
    memset(&err, 0, sizeof err);
    return lasp_mkdir_p(dir, &err) != LASP_OK ? fail("--out: %s", err.msg) : 0;
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


int attn_check_finite(const float *const outs[6], const size_t counts[6], int n) {
    static const char *names[6] = {"o", "kv_out", "dq", "dk", "dv", "dkv_in"};
    for (int i = 0; i < n; i++) {
        if (!outs[i]) continue;
        const size_t at = lasp_find_nonfinite(outs[i], LASP_F32, counts[i]);
        if (at < counts[i])
            return fail("%s holds a non-finite value (%g at flat index %zu): the inputs overflow fp32 in the op; "
                        "nothing was written (hint: inputs of a smaller magnitude)", names[i], (double)outs[i][at], at);
    }
    return 0;
}
