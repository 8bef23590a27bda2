/* cmd_attn.c — `lasp attn`: the op on .npy files. Reads q, k, v, slopes (and optionally kv_in, dO,
 * dkv_out), runs forward (and backward), writes f4 outputs into DIR, and with --check compares every
 * output with the fp64 reference. Outputs are written only after everything succeeded. */
#include <stdio.h>
#include <stdlib.h>

#include "attn_io.h"
#include "commands.h"
#include "lasp.h"
#include "opts.h"

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
        {"--threads", OPT_INT, &o.threads, "N", "CPU threads (0 = OpenMP's default; at most 1024)", 0},
        {"--check", OPT_FLAG, &o.check, NULL, "also run the fp64 reference and report relative errors", 0},
        {"--tol", OPT_DOUBLE, &o.tol, "X", "tolerance of --check (default 1e-5 f32 on the CPU, 1e-4 on the GPU, 1e-2 bf16/f16)", 0},
        {"--sp", OPT_INT, &o.sp, "N", "under mpirun: ranks per sequence; world = dp × sp (default 1 under mpirun)", 0},
        {"--sp-mode", OPT_STR, &o.sp_mode, "MODE", "SP schedule: the LASP chain (default), LASP-2, or the baselines "
                                                 "ulysses and allgather (CPU)", 0},
    };
    const cmd_spec spec = {
        "lasp attn --q Q.npy --k K.npy --v V.npy --slopes S.npy [--kv-in KV.npy] [--do DO.npy] "
        "[--dkv-out G.npy] [--block N] [--check] --out DIR\n       lasp attn --random B,T,H,d,e [--seed N] [--check] --out DIR\n"
        "       mpirun -np N lasp attn ... --sp S [--sp-mode chain|lasp2|ulysses|allgather] --out DIR",
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
    if (attn_parse_device(&o, &dev, &dt)) return 2;
    if (o.block < 0 || o.block > 4096) {
        fprintf(stderr, "error: --block %lld is out of range (hint: 0 for the default, or 1..4096)\n", o.block);
        return 2;
    }
    if (o.threads < 0 || o.threads > LASP_MAX_THREADS) {
        fprintf(stderr, "error: --threads %lld: 0 (OpenMP's default) or 1 .. %d\n", o.threads, LASP_MAX_THREADS);
        return 2;
    }
    if (o.seed < 0 || o.sp < 0 || o.sp > (1 << 20)) {
        fprintf(stderr, "error: --seed %lld and --sp %lld must be ≥ 0 (--sp 0: not given)\n", o.seed, o.sp);
        return 2;
    }
    if (!(o.tol >= 0 && o.tol < 1)) {
        fprintf(stderr, "error: --tol %g: a relative error in [0, 1) (0: the dtype's default)\n", o.tol);
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
    if (attn_check_finite((const float *const *)out, counts, bwd ? 6 : 2) || attn_make_dir(o.out)) goto done;
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
