/* attn_io.h — what `lasp attn` shares between its one-process path (cmd_attn.c) and its SP path under
 * mpirun (cmd_attn_sp.c): the options, the inputs, and reading, checking and writing them. Each
 * function prints its own error message and returns non-zero on failure. */
#ifndef LASP_TOOLS_ATTN_IO_H
#define LASP_TOOLS_ATTN_IO_H

#include "core/npy.h"
#include "lasp.h"

typedef struct attn_args {
    const char *q, *k, *v, *slopes, *kv_in, *do_, *dkv_out, *out, *device, *dtype, *random;
    long long block, threads, seed;
    int check;
    long long sp;         /* ranks per sequence under mpirun (0 = not given) */
    const char *sp_mode;  /* lasp | lasp2 */
    double tol;
} attn_args;

/* Everything read from the files, and the shapes that follow from them. */
typedef struct attn_files {
    lasp_npy q, k, v, slopes, kv_in, do_, dkv_out;
    lasp_attn_desc a;
} attn_files;

void attn_files_free(attn_files *f);
int attn_load_all(const attn_args *o, attn_files *f);      /* the files named by --q ... --dkv-out */
int attn_make_random(const attn_args *o, attn_files *f);   /* --random B,T,H,d,e */
int attn_make_dir(const char *dir);
/* --device and --dtype as the op's enums; the CPU runs f32 only */
int attn_parse_device(const attn_args *o, lasp_device *dev, lasp_dtype *dt);
/* The fp64 reference on the full inputs; prints one row per output; 1 if any is above tol. */
int attn_check(lasp_ctx *ctx, const attn_files *f, int bwd, const float *const outs[6], double tol);
int attn_write_out(const char *dir, const char *name, int ndim, const int64_t *shape, const float *x);
/* 1 (message printed) if any of the first n outputs (o, kv_out, dq, dk, dv, dkv_in; NULL: absent) holds a NaN
 * or an Inf: finite inputs of a large magnitude can overflow, and such outputs are never written. */
int attn_check_finite(const float *const outs[6], const size_t counts[6], int n);

/* cmd_attn_sp.c: the SP path, for `--sp` or a job started by mpirun. Returns the exit status. */
int attn_sp(attn_args *o);

/* One rank's piece as host f32 (inputs may be NULL where absent: kv_in, do_, dkv_out; outputs NULL
 * where this rank does not produce them: kv_out off the last piece, dkv_in off the first). */
typedef struct attn_piece {
    const float *q, *k, *v, *slopes, *kv_in, *do_, *dkv_out;
    float *o, *kv_out, *dq, *dk, *dv, *dkv_in;
} attn_piece;

/* attn_sp_cuda.c: run the piece on this rank's GPU through an NCCL SP layer; 1 + msg on failure. */
int attn_sp_piece_cuda(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const attn_piece *p, char *msg,
                       size_t msg_n);

#endif
