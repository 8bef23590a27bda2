/*
 * lasp.h — the public API of lasp: decayed causal linear attention and LASP sequence parallelism.
 *
 * The op (docs/MATH.md §1–2):
 *
 *     o_t = Σ_{j ≤ t} λ^{t−j} (q_t · k_j) v_j  +  λ^t q_t KV_in,        λ = exp(−slope_h)
 *     KV_out = λ^T KV_in + Σ_j λ^{T−j} k_jᵀ v_j
 *
 * State convention: a state is "decayed up to the first token after the piece" — KV_out equals
 * λ·S_{T−1} of the recurrent form S_t = λ S_{t−1} + k_tᵀ v_t. So running [0, T) at once equals
 * running [0, t) and then [t, T) with the first call's kv_out passed as the second call's kv_in.
 * In the backward pass dkv_out = ∂L/∂KV_out enters and dkv_in = ∂L/∂KV_in leaves, so the same
 * hand-over works backwards: the second call's dkv_in is the first call's dkv_out.
 *
 * Layouts (all contiguous, row-major):
 *     q, k        [B, T, H, d]      token-major, as a QKV projection produces them
 *     v, o        [B, T, H, e]
 *     states      [B, H, d, e]      always fp32
 *     slopes      [H]               fp32, ≥ 0 (0 = no decay)
 *
 * Tutorial:
 *     lasp_ctx *ctx;
 *     lasp_ctx_params p = lasp_ctx_default_params();
 *     if (lasp_ctx_create(&p, &ctx) != LASP_OK) ...;
 *     lasp_attn_desc a = { .B = 1, .T = 4096, .H = 8, .d = 64, .e = 64, .dtype = LASP_F32 };
 *     lasp_status s = lasp_attn_fwd(ctx, &a, q, k, v, slopes, NULL, o, kv_out);
 *     if (s != LASP_OK) fprintf(stderr, "%s: %s\n", lasp_status_string(s), lasp_ctx_error(ctx));
 *     lasp_ctx_free(ctx);
 *
 * Every function returns a status; on failure the context holds a message that names the bad
 * value and, where there is one, a hint. Nothing here exits or prints on its own.
 */
#ifndef LASP_H
#define LASP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LASP_VERSION_MAJOR 0
#define LASP_VERSION_MINOR 1
#define LASP_VERSION_PATCH 0
#define LASP_VERSION_STRING "0.1.0"

/* Status codes: explicit values, new ones only at the end. */
typedef enum lasp_status {
    LASP_OK = 0,
    LASP_ERR_ARG = 1,          /* invalid argument: null pointer, bad size, bad option */
    LASP_ERR_SHAPE = 2,        /* tensor shapes disagree */
    LASP_ERR_UNSUPPORTED = 3,  /* valid but not supported here: head dim, dtype, device */
    LASP_ERR_IO = 4,           /* a file could not be opened, read or written */
    LASP_ERR_FORMAT = 5,       /* a file's content is malformed or of the wrong kind */
    LASP_ERR_NOMEM = 6,        /* an allocation failed */
    LASP_ERR_NONFINITE = 7,    /* NaN or Inf in an input */
    LASP_ERR_COMM = 8,         /* communication failed (MPI, NCCL) */
    LASP_ERR_CUDA = 9,         /* a CUDA call failed */
    LASP_ERR_INTERNAL = 10,    /* a bug in lasp: please report it */
} lasp_status;

const char *lasp_status_string(lasp_status s);

/* Element types. Host (CPU) tensors are f32; GPU tensors may be bf16 or f16 with fp32 states. */
typedef enum lasp_dtype {
    LASP_F32 = 0,
    LASP_F64 = 1,
    LASP_BF16 = 2,
    LASP_F16 = 3,
} lasp_dtype;

const char *lasp_dtype_name(lasp_dtype t);
size_t lasp_dtype_size(lasp_dtype t);

/* ---- context ------------------------------------------------------------------------------ */

typedef struct lasp_ctx lasp_ctx;

typedef struct lasp_ctx_params {
    int n_threads;  /* CPU threads for the op; 0 = OpenMP's default */
    int log_level;  /* 0 errors, 1 warnings, 2 info, 3 debug */
} lasp_ctx_params;

lasp_ctx_params lasp_ctx_default_params(void);
lasp_status lasp_ctx_create(const lasp_ctx_params *params, lasp_ctx **out);
void lasp_ctx_free(lasp_ctx *ctx);
/* The message of the last failed call on this context ("" if none). */
const char *lasp_ctx_error(const lasp_ctx *ctx);

/* Build features, for `lasp info` and for programs that adapt to what is there. */
typedef struct lasp_build_info {
    int has_openmp, has_mpi, has_cuda, has_nccl, has_blas;
    const char *compiler;
    const char *version;
} lasp_build_info;

lasp_build_info lasp_get_build_info(void);

/* ---- the op: decayed causal linear attention ----------------------------------------------- */

/* Head dimensions supported for d and e (d may differ from e). */
#define LASP_HEAD_DIMS {16, 32, 64, 128, 256}
int lasp_head_dim_supported(int64_t dim);

typedef struct lasp_attn_desc {
    int64_t B, T, H;   /* batch, tokens (any T ≥ 1), heads */
    int64_t d, e;      /* key / value head dims, each in LASP_HEAD_DIMS */
    int block;         /* chunk size C of the blocked algorithm; 0 = the implementation's default */
    lasp_dtype dtype;  /* of q, k, v, o, do, dq, dk, dv; states and slopes are always f32 */
} lasp_attn_desc;

#define LASP_ATTN_DEFAULT_BLOCK 64

/* Forward. kv_in may be NULL (zero state); kv_out may be NULL (not wanted). */
lasp_status lasp_attn_fwd(lasp_ctx *ctx, const lasp_attn_desc *a,
                          const void *q, const void *k, const void *v, const float *slopes,
                          const float *kv_in, void *o, float *kv_out);

/* Backward: given the forward's inputs and dO (= do_), and optionally dkv_out = ∂L/∂KV_out
 * (NULL = zero), writes dq, dk, dv and, if not NULL, dkv_in = ∂L/∂KV_in. */
lasp_status lasp_attn_bwd(lasp_ctx *ctx, const lasp_attn_desc *a,
                          const void *q, const void *k, const void *v, const float *slopes,
                          const float *kv_in, const void *do_, const float *dkv_out,
                          void *dq, void *dk, void *dv, float *dkv_in);

/* Keeping the forward's states for the backward (GPU tensors). The backward needs the state entering
 * every block of the sequence, which the forward computed; on the GPU it otherwise recomputes them (one
 * more pass over k and v and a scan). lasp_attn_saved_bytes gives the size of the buffer (device memory,
 * 4-byte aligned) for a problem; lasp_attn_fwd_saving fills it, lasp_attn_bwd_saved reads it and must get
 * the same q, k, v, slopes and kv_in as that forward. saved = NULL, or host tensors: the plain op.
 * The size is B·H·d·e·4 bytes times the number of segments the current GPU splits T into (a few dozen);
 * a build without CUDA gives 0. */
lasp_status lasp_attn_saved_bytes(lasp_ctx *ctx, const lasp_attn_desc *a, size_t *bytes);
lasp_status lasp_attn_fwd_saving(lasp_ctx *ctx, const lasp_attn_desc *a,
                                 const void *q, const void *k, const void *v, const float *slopes,
                                 const float *kv_in, void *o, float *kv_out, float *saved);
lasp_status lasp_attn_bwd_saved(lasp_ctx *ctx, const lasp_attn_desc *a,
                                const void *q, const void *k, const void *v, const float *slopes,
                                const float *kv_in, const void *do_, const float *dkv_out,
                                void *dq, void *dk, void *dv, float *dkv_in, const float *saved);

/* Where an op runs. Tensors passed to lasp_attn_fwd/bwd are dispatched by where they live; the
 * _host variants below take host f32 buffers and run on the device named here. Host inputs are checked
 * for NaN/Inf and slopes for ≥ 0; device inputs (CUDA pointers) get the shape, NULL and alignment checks
 * only: scanning their values would need a copy back and a synchronisation on every call, which the
 * asynchronous GPU path (and the SP schedule built on it) exists to avoid. */
typedef enum lasp_device {
    LASP_DEVICE_CPU = 0,
    LASP_DEVICE_CUDA = 1,
} lasp_device;

/* Convenience for tools and tests: host f32 in and out, computed on `device` with a->dtype as the
 * I/O type there (inputs are rounded to it, outputs come back as f32). On the CPU a->dtype must be
 * f32. Without a CUDA build, LASP_DEVICE_CUDA returns LASP_ERR_UNSUPPORTED. */
lasp_status lasp_attn_fwd_host(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_device device,
                               const float *q, const float *k, const float *v, const float *slopes,
                               const float *kv_in, float *o, float *kv_out);
lasp_status lasp_attn_bwd_host(lasp_ctx *ctx, const lasp_attn_desc *a, lasp_device device,
                               const float *q, const float *k, const float *v, const float *slopes,
                               const float *kv_in, const float *do_, const float *dkv_out,
                               float *dq, float *dk, float *dv, float *dkv_in);

/* The fp64 reference of MATH.md §1, O(T²), written for clarity, not speed: the spec that the
 * fast paths are tested against. Same layouts and NULL rules as above, all doubles. */
lasp_status lasp_attn_ref_fwd(lasp_ctx *ctx, const lasp_attn_desc *a,
                              const double *q, const double *k, const double *v,
                              const double *slopes, const double *kv_in,
                              double *o, double *kv_out);
lasp_status lasp_attn_ref_bwd(lasp_ctx *ctx, const lasp_attn_desc *a,
                              const double *q, const double *k, const double *v,
                              const double *slopes, const double *kv_in, const double *do_,
                              const double *dkv_out,
                              double *dq, double *dk, double *dv, double *dkv_in);

/* The test metric of MATH.md §6: ‖x − ref‖₂ / ‖ref‖₂ (absolute ‖x‖ if ref is all zero);
 * +inf if x holds a NaN or Inf. */
double lasp_rel_error_f32(const float *x, const double *ref, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* LASP_H */
