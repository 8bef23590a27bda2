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
 * The header in four parts, each building on the one before:
 *   the op          lasp_attn_*: one layer's attention, forward and backward, on a CPU or a GPU
 *   communicators   lasp_comm_*: the ranks of a job (one process, MPI on host memory, NCCL on GPUs)
 *   LASP            lasp_sp_*: one layer's attention over a sequence split across the ranks of a group
 *   training        lasp_data_*, lasp_trainer_*: the language model of docs/MODEL.md, trained dp × sp
 *
 * Every function returns a status. Functions that take a context leave a message in it on failure
 * (lasp_ctx_error); the others take a lasp_err. A message names the bad value and, where there is
 * one, gives a hint. Nothing here exits or prints on its own, but lasp_comm_abort, which ends the job.
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

/* A status with its message, for the calls that take no context (communicators, LASP groups, data). */
typedef struct lasp_err {
    lasp_status status;
    char msg[1024];
} lasp_err;

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

/* Which CUDA kernels run the op. AUTO: on Hopper (sm_90) the wgmma and TMA kernels where they apply
 * (bf16, head dims 64 and 128), the portable mma.sync kernels everywhere else; SM80: the portable ones
 * everywhere, on any GPU (to test and compare them on Hopper). */
typedef enum lasp_kernels {
    LASP_KERNELS_AUTO = 0,
    LASP_KERNELS_SM80 = 1,
} lasp_kernels;

typedef struct lasp_ctx_params {
    int n_threads;         /* CPU threads for the op: 0 = OpenMP's default, else 1 .. LASP_MAX_THREADS */
    int log_level;         /* 0 errors, 1 warnings, 2 info, 3 debug */
    lasp_kernels kernels;  /* GPU: which kernels run the op */
} lasp_ctx_params;

#define LASP_MAX_THREADS 1024

lasp_ctx_params lasp_ctx_default_params(void);
lasp_status lasp_ctx_create(const lasp_ctx_params *params, lasp_ctx **out);
void lasp_ctx_free(lasp_ctx *ctx);
/* The message of the last failed call on this context ("" if none). */
const char *lasp_ctx_error(const lasp_ctx *ctx);
/* The CUDA stream (a cudaStream_t) the context's GPU work runs on, on the current device (made on first
 * use): synchronise it, or order other work after it with an event. LASP_ERR_UNSUPPORTED without CUDA. */
lasp_status lasp_ctx_cuda_stream(lasp_ctx *ctx, void **stream);
/* Run the context's GPU work on the current device on `stream` from now on (a cudaStream_t the caller made and
 * keeps alive while the context uses it), so that it is ordered with the caller's work on that stream without
 * a wait; NULL: back to the context's own stream. The legacy default stream is cudaStreamLegacy ((void *)1),
 * since NULL means the context's own. Work already enqueued on the previous stream is waited for first. */
lasp_status lasp_ctx_set_cuda_stream(lasp_ctx *ctx, void *stream);

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

/* ---- communicators --------------------------------------------------------------------------- */

/* The ranks of a job. Three backends behind one interface: self (one process, no MPI needed), mpi
 * (host memory, under mpirun or srun) and nccl (device memory, one GPU per process, bootstrapped over
 * MPI, or joined from an id that another launcher passes around). Counts are elements of a dtype, never
 * bytes. A failure names the rank it happened on. */
typedef struct lasp_comm lasp_comm;

typedef enum lasp_comm_backend {
    LASP_COMM_SELF = 0,
    LASP_COMM_MPI = 1,
    LASP_COMM_NCCL = 2,
} lasp_comm_backend;

typedef enum lasp_reduce_op {
    LASP_REDUCE_SUM = 0,
    LASP_REDUCE_MAX = 1,
    LASP_REDUCE_MIN = 2,
} lasp_reduce_op;

/* Traffic a communicator originated (sends of point-to-point calls, contributions to collectives). */
typedef struct lasp_comm_stats {
    uint64_t p2p_msgs;    /* point-to-point messages sent (one-sided puts included) */
    uint64_t p2p_bytes;   /* bytes in them */
    uint64_t coll_calls;  /* collectives entered */
    uint64_t coll_bytes;  /* bytes this rank sent in collectives (the least any algorithm needs) */
    double wait_ms;       /* time inside this communicator's calls (device backends: enqueueing, and
                           * waiting in lasp_comm_sync) — what communication cost this rank */
} lasp_comm_stats;

/* The world: every process the launcher started (MPI is initialised here if needed), or this process
 * alone for LASP_COMM_SELF. argc and argv may be NULL. */
lasp_status lasp_comm_world(lasp_comm_backend backend, int *argc, char ***argv, lasp_comm **out, lasp_err *err);
/* Ranks a process launcher (mpirun, srun) says this job has, from its environment; 0 if none started
 * this process: a tool asks for the mpi backend only then, so that one process needs no MPI. */
int lasp_comm_launcher_size(void);
/* An NCCL world without MPI, for processes another launcher started that can pass bytes among themselves
 * (torchrun and torch.distributed, a scheduler's key-value store): one process makes the id, every process
 * gets it by the launcher's means and joins with its rank, the world's size and its GPU (a CUDA device
 * index). Joining is collective: it returns once all size ranks have joined. The world's host-side
 * agreement then goes through NCCL, and lasp_comm_abort ends this process (its launcher ends the rest). */
#define LASP_NCCL_ID_BYTES 128
lasp_status lasp_comm_nccl_id(unsigned char id[LASP_NCCL_ID_BYTES], lasp_err *err);
lasp_status lasp_comm_nccl_join(const unsigned char id[LASP_NCCL_ID_BYTES], int rank, int size, int device,
                                lasp_comm **out, lasp_err *err);
/* Ranks of c with equal color (≥ 0) form a new communicator, ordered by key (collective over c). */
lasp_status lasp_comm_split(lasp_comm *c, int color, int key, lasp_comm **out, lasp_err *err);
void lasp_comm_free(lasp_comm *c); /* the world last; it finalises MPI if it initialised it */

int lasp_comm_rank(const lasp_comm *c);
int lasp_comm_size(const lasp_comm *c);
lasp_comm_backend lasp_comm_backend_of(const lasp_comm *c);
lasp_comm_stats lasp_comm_get_stats(const lasp_comm *c);
void lasp_comm_reset_stats(lasp_comm *c);

/* The longest a device backend waits for a peer (a collective in lasp_comm_sync, a one-sided transfer)
 * before it gives up with an error rather than hang: 0 < seconds ≤ 1e7, default LASP_COMM_TIMEOUT_S. */
#define LASP_COMM_TIMEOUT_S 300.0
lasp_status lasp_comm_set_timeout(lasp_comm *c, double seconds, lasp_err *err);

/* Send to `dst` and receive from `src` at once (either −1: none), so that a chain of neighbours never
 * deadlocks. */
lasp_status lasp_comm_sendrecv(lasp_comm *c, const void *sendbuf, size_t send_count, int dst, void *recvbuf,
                               size_t recv_count, int src, lasp_dtype dtype, lasp_err *err);
/* Collectives; sendbuf == recvbuf reduces in place. */
lasp_status lasp_comm_allreduce(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t count, lasp_dtype dtype,
                                lasp_reduce_op op, lasp_err *err);
/* recvbuf = the concatenation over ranks of send_count elements each */
lasp_status lasp_comm_allgather(lasp_comm *c, const void *sendbuf, void *recvbuf, size_t send_count, lasp_dtype dtype,
                                lasp_err *err);
lasp_status lasp_comm_bcast(lasp_comm *c, void *buf, size_t count, lasp_dtype dtype, int root, lasp_err *err);
lasp_status lasp_comm_barrier(lasp_comm *c, lasp_err *err);
/* The worst of every rank's status s, so that all stop together when one fails: s itself where it is a failure,
 * else that of another rank ("another rank failed"). A host value on every backend (NCCL's agree over MPI). */
lasp_status lasp_comm_agree(lasp_comm *c, lasp_status s, lasp_err *err);
/* Device backends enqueue on a CUDA stream and return at once; this waits until everything enqueued has
 * finished and turns an asynchronous failure into a status. A no-op on host backends. */
lasp_status lasp_comm_sync(lasp_comm *c, lasp_err *err);
/* Ends the whole job now (MPI_Abort, ncclCommAbort) after printing "lasp: rank R: message". */
void lasp_comm_abort(lasp_comm *c, const char *message) __attribute__((noreturn));

/* ---- LASP: one layer's attention over a sequence split across ranks ------------------------- */

/* World = dp × sp ranks. An SP group of sp contiguous ranks holds each sequence in sp contiguous
 * pieces, rank r of the group piece r; the dp groups (ranks r, r + sp, …) hold different sequences.
 * Only one fp32 state of d × e per head crosses between the ranks of a group, whatever the length:
 *   CHAIN  the LASP chain: rank r receives the state entering its piece from r − 1 and sends the one
 *          leaving it to r + 1 (the backward mirrors it); the forward keeps what it received for the
 *          backward (KV state caching)
 *   LASP2  every rank gathers the others' local states and combines them itself: one gather instead of
 *          sp − 1 hops in a row
 * On GPUs (NCCL communicators) the states travel by one-sided puts into the peers' memory where the
 * GPUs reach each other by NVLink, else by NCCL send/receive. docs/SP.md has the schedule. */
typedef struct lasp_sp lasp_sp;

typedef enum lasp_sp_mode {
    LASP_SP_CHAIN = 0,     /* LASP: the state handed from piece to piece (docs/SP.md) */
    LASP_SP_LASP2 = 1,     /* LASP-2: every piece's state all-gathered */
    /* the baselines LASP is compared against (docs/SP.md "The baselines"): */
    LASP_SP_ULYSSES = 2,   /* DeepSpeed-Ulysses: all-to-all to a head split and back (H divisible by sp) */
    LASP_SP_ALLGATHER = 3, /* Megatron-style: keys and values all-gathered, their gradients reduce-scattered */
} lasp_sp_mode;
/* "chain", "lasp2", "ulysses", "allgather" */
const char *lasp_sp_mode_name(lasp_sp_mode m);

typedef enum lasp_sp_transfer {
    LASP_SP_TRANSFER_AUTO = 0, /* one-sided puts where every rank of the group can, else send/receive */
    LASP_SP_TRANSFER_SEND = 1, /* NCCL send/receive always */
} lasp_sp_transfer;

typedef struct lasp_sp_params {
    int size;                   /* ranks per sequence (sp); it must divide the world's size */
    lasp_sp_mode mode;
    /* GPU only (ignored on host communicators): */
    lasp_sp_transfer transfer;
    int comm_sms;               /* SMs the attention kernels leave to the transfers, which NCCL may run on
                                 * at most this many thread blocks: 0 .. 32, default 4 (a transfer beside
                                 * a kernel that holds every SM waits for its end) */
    double timeout_s;           /* longest wait for a peer's state, then an error: > 0, default 300 */
    int trace;                  /* 1: time each layer's phases (lasp_sp_get_trace; costs a synchronisation
                                 * after every backward) */
} lasp_sp_params;

lasp_sp_params lasp_sp_default_params(void);
/* Splits world into SP and DP groups (collective over world). world must outlive the group. */
lasp_status lasp_sp_create(lasp_comm *world, const lasp_sp_params *p, lasp_sp **out, lasp_err *err);
/* Collective over the world once a GPU call has run (the one-sided window is freed by every rank). */
void lasp_sp_free(lasp_sp *sp);

typedef struct lasp_sp_layout {
    int world_size, world_rank;
    int sp_size, sp_rank; /* sp_rank: which piece of the sequence this rank holds */
    int dp_size, dp_rank; /* dp_rank: which slice of the batch */
} lasp_sp_layout;
lasp_sp_layout lasp_sp_get_layout(const lasp_sp *sp);
lasp_comm *lasp_sp_group(const lasp_sp *sp);   /* the SP group's communicator (its traffic counters) */
lasp_comm *lasp_sp_dp_group(const lasp_sp *sp);
/* How this group's GPU states travel: "one-sided puts …", or "NCCL send/receive" and why. */
const char *lasp_sp_transfer_name(const lasp_sp *sp);

/* What the forward keeps for the backward: the state that entered this rank's piece and, on GPUs, the
 * piece's segment states. Made by the first forward (*cache NULL), reused by later ones of any shape,
 * freed with lasp_sp_cache_free. One cache per layer whose backward is still to come. */
typedef struct lasp_sp_cache lasp_sp_cache;
void lasp_sp_cache_free(lasp_sp_cache *c);
/* Bytes the cache holds (host or device): what the modes keep from the forward for the backward — states
 * for LASP, the head split's q | k | v for Ulysses, every piece's keys and values for the all-gather. */
size_t lasp_sp_cache_bytes(const lasp_sp_cache *c);

/* One attention layer over the group. `a` describes this rank's piece (a->T tokens of the piece, a->B
 * the local batch); q, k, v, o are the piece's tensors in the op's layouts. kv_in is read only on SP
 * rank 0 (the state entering the whole sequence; NULL = zero), kv_out written only on the last SP rank
 * (NULL = not wanted); in the backward dkv_out is read on the last rank and dkv_in written on rank 0.
 * Host communicators: host f32 tensors. NCCL communicators: device tensors of a->dtype (f32, bf16,
 * f16), states and slopes fp32, the calls asynchronous on the context's CUDA stream. */
lasp_status lasp_sp_attn_fwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                             const void *v, const float *slopes, const float *kv_in, void *o, float *kv_out,
                             lasp_sp_cache **cache);
lasp_status lasp_sp_attn_bwd(lasp_ctx *ctx, lasp_sp *sp, const lasp_attn_desc *a, const void *q, const void *k,
                             const void *v, const float *slopes, const lasp_sp_cache *cache, const void *do_,
                             const float *dkv_out, void *dq, void *dk, void *dv, float *dkv_in);

/* Rows that cross a piece boundary, such as a short convolution's last K − 1 tokens: forward sends
 * `send` to the rank of the next piece and receives the previous piece's into `recv`; backward sends to
 * the previous piece and receives from the next. recv is left as it is where no piece comes (the
 * sequence's first piece forward, its last backward). */
lasp_status lasp_sp_halo(lasp_sp *sp, int backward, const void *send, void *recv, size_t count, lasp_dtype dtype,
                         lasp_err *err);

/* With params.trace: the phases of the last layer whose backward has run, in ms from its forward's
 * start on this rank (local half done, incoming state here, end; the same for the backward), and how
 * many layers were traced. All zero otherwise, and on host communicators. */
typedef struct lasp_sp_trace {
    int64_t layers;
    double fwd_local_ms, fwd_state_ms, fwd_end_ms;
    double bwd_start_ms, bwd_local_ms, bwd_state_ms, bwd_end_ms;
} lasp_sp_trace;
lasp_sp_trace lasp_sp_get_trace(const lasp_sp *sp);

/* ---- training -------------------------------------------------------------------------------- */

/* The model (docs/MODEL.md): a TransNormerLLM-style decoder of L blocks, each a linear-attention
 * layer with per-head decay and a short causal convolution on q, k, v, then a GLU feed-forward. */
typedef struct lasp_model_config {
    int32_t vocab;    /* V */
    int32_t d_model;  /* C */
    int32_t n_layers; /* L */
    int32_t n_heads;  /* H; C / H must be a head dim the op supports */
    int32_t ffn_dim;  /* F */
    int32_t conv;     /* taps of the short convolution (0 = none) */
} lasp_model_config;

/* tiny | small | 400m | 1b, with the given vocab */
lasp_status lasp_model_preset(const char *name, int32_t vocab, lasp_model_config *out, lasp_err *err);
lasp_status lasp_model_config_check(const lasp_model_config *c, lasp_err *err);
/* Training FLOPs per token, the count MFU is quoted against: 6 × the matrix parameters (the blocks' products
 * and the output head; the embedding is a lookup) plus the attention's forward and backward, 14·H·D·(D + 64)
 * per layer (docs/MODEL.md). */
double lasp_model_flops_per_token(const lasp_model_config *c);

/* What a run trains on: the built-in recall task (generated from a seed, nothing to download), a text
 * file (one token per byte) or an llm.c token shard, split into training and validation tokens. */
typedef struct lasp_data lasp_data;

typedef enum lasp_data_kind {
    LASP_DATA_RECALL = 0,
    LASP_DATA_TEXT = 1,
    LASP_DATA_SHARD = 2,
} lasp_data_kind;

typedef struct lasp_data_info {
    lasp_data_kind kind;
    int32_t n_pairs;         /* recall: key-value pairs per sample */
    size_t n_tokens, n_train; /* files: all tokens; the first n_train train, the rest validate */
    int32_t max_token;       /* the largest token (the vocab must exceed it) */
} lasp_data_info;

/* The recall task: each sample states n_pairs (key, value) pairs, then asks keys again to the end. Keys
 * and values are disjoint ranges of tokens, so a model that only learnt the format still has to guess
 * among LASP_RECALL_N_VALUES values: chance accuracy 1/64. */
#define LASP_RECALL_KEY0 16
#define LASP_RECALL_N_KEYS 64
#define LASP_RECALL_VAL0 128
#define LASP_RECALL_N_VALUES 64
lasp_status lasp_data_recall(uint64_t seed, int32_t n_pairs, lasp_data **out, lasp_err *err);
/* How lasp_data_open reads a file: AUTO tells an llm.c shard (its header: magic 20240520 with version 1 and
 * uint16 tokens, 20240801 with version 7 and uint32) from text; a file whose header looks like a shard's but
 * is not a valid one is an error under AUTO, not text. TEXT and SHARD force one. */
typedef enum lasp_data_format {
    LASP_DATA_FORMAT_AUTO = 0,
    LASP_DATA_FORMAT_TEXT = 1,
    LASP_DATA_FORMAT_SHARD = 2,
} lasp_data_format;
/* A text file (one token per byte) or an llm.c token shard; val_frac (in [0, 1)) of the tokens validate. */
lasp_status lasp_data_open(const char *path, lasp_data_format format, double val_frac, lasp_data **out,
                           lasp_err *err);
lasp_data_info lasp_data_get_info(const lasp_data *d);
const char *lasp_data_kind_name(lasp_data_kind k);
void lasp_data_free(lasp_data *d);

/* What the GPU model keeps of a layer for its backward, and what it computes again there instead. */
typedef enum lasp_recompute {
    LASP_RECOMPUTE_NONE = 0,  /* everything kept */
    LASP_RECOMPUTE_ATTN = 1,  /* q, k, v and the op's output are not kept: the features and the op's forward
                               * run again in the backward (2 × 4·T·C elements a layer saved) */
    LASP_RECOMPUTE_BLOCK = 2, /* only each layer's input is kept: the layer's forward runs again in the
                               * backward, into one layer's buffers shared by all */
} lasp_recompute;

const char *lasp_recompute_name(lasp_recompute r);

typedef struct lasp_train_params {
    lasp_model_config model;
    int64_t batch;    /* sequences per step, over all dp ranks (a multiple of dp) */
    int64_t seq_len;  /* tokens per sequence, over all sp ranks (a multiple of sp) */
    int64_t steps, warmup;
    double lr, min_lr, weight_decay, beta1, beta2, eps, clip; /* AdamW, warm-up then cosine to min_lr */
    int zero;         /* 0 DDP; 1 sharded optimizer state; 2 + sharded gradients; 3 + sharded parameters */
    uint64_t seed;    /* data order, initialisation */
    int64_t val_batches; /* batches of the validation split per lasp_trainer_eval */
    int64_t chunk;       /* tokens of each sequence run through the model at a time (0: the whole piece): the
                          * attention state and the convolution's halo carried from chunk to chunk, each
                          * chunk's forward redone in the backward, so that activations are those of one chunk
                          * whatever the length. sp = 1 and ZeRO 0–1 for now */
    lasp_device device;  /* where the model trains: the CPU, or CUDA (one GPU; one rank for now) */
    lasp_dtype dtype;    /* GPU: operands of the matrix products and the attention, LASP_BF16 (tensor cores,
                          * fp32 accumulation and master weights) or LASP_F32 (compares with the CPU, which
                          * computes in f32 only) */
    lasp_recompute recompute; /* GPU: what a layer keeps for its backward (the CPU keeps everything; its
                               * activations are bounded by chunk) */
} lasp_train_params;

lasp_train_params lasp_train_default_params(void);
/* Every field in range (lasp_trainer_create checks them too, and the layout's divisibility). */
lasp_status lasp_train_params_check(const lasp_train_params *p, lasp_err *err);

/* One training run over the ranks of an SP layout (every rank of sp's world calls every function
 * here: they are collective). */
typedef struct lasp_trainer lasp_trainer;

typedef struct lasp_step_stats {
    double loss;        /* mean over every token of the global batch */
    double grad_norm;   /* before clipping */
    double lr;
    double ms, comm_ms; /* wall time of the step, and of it in communication (GPUs over ranks: the gradients'
                         * reduction left exposed after the backward, from CUDA events) */
    double acc;         /* recall accuracy on the batch (the answer positions) */
    double mfu;         /* GPU: model FLOPs (lasp_model_flops_per_token) per second over the GPU's dense bf16
                         * peak; 0 on the CPU or a GPU whose peak is not known */
    double mem_bytes;   /* GPU: device memory in use */
    double split_ms[5]; /* GPU with lasp_trainer_set_profile on: where the step's GPU time went, by CUDA events:
                         * matrix products, attention, norms and element-wise, cross-entropy, optimizer */
} lasp_step_stats;

/* Checks the params against the layout and the data (batch % dp, seq_len % sp, the vocab) and builds
 * the model, its optimizer state and its buffers; parameters start from the seed. ctx, sp and data
 * must outlive the trainer. */
lasp_status lasp_trainer_create(lasp_ctx *ctx, lasp_sp *sp, const lasp_data *data, const lasp_train_params *p,
                                lasp_trainer **out);
void lasp_trainer_free(lasp_trainer *t);
lasp_status lasp_trainer_step(lasp_trainer *t, lasp_step_stats *st);
/* Loss and recall accuracy on val_batches batches of the validation split. */
lasp_status lasp_trainer_eval(lasp_trainer *t, double *loss, double *acc);
int64_t lasp_trainer_steps_done(const lasp_trainer *t);
size_t lasp_trainer_n_params(const lasp_trainer *t);
/* The local batch and piece of each rank. */
void lasp_trainer_local_shape(const lasp_trainer *t, int64_t *batch, int64_t *tokens);

/* What one rank holds, for the start-up table. */
typedef struct lasp_train_memory {
    double params, grads, optimizer, activations; /* bytes (optimizer: the AdamW moments and the decay mask) */
    double device_total, device_free;             /* GPU runs: the GPU's memory, and what was free at start-up */
    char device[160];                             /* "GPU 0: NVIDIA H200 (sm_90, …)", or "CPU" */
} lasp_train_memory;
lasp_train_memory lasp_trainer_memory(const lasp_trainer *t);
/* GPU runs: record where each step's time goes (lasp_step_stats.split_ms), at the cost of an event where
 * the kind of work changes. LASP_ERR_UNSUPPORTED on the CPU. */
lasp_status lasp_trainer_set_profile(lasp_trainer *t, int on);
/* With the profile on: the GPU time of each place in the library where work of one kind begins, summed over
 * the steps since it was turned on, the largest first (at most max; returns how many). To find what to
 * optimise: `where` names the source file and line. */
typedef struct lasp_profile_site {
    char where[96];
    int part;   /* the index into lasp_step_stats.split_ms */
    double ms;
} lasp_profile_site;
int lasp_trainer_profile_sites(const lasp_trainer *t, lasp_profile_site *out, int max);

/* Checkpoints: DIR/model.ckpt, written whole to a temporary name and renamed, so a crash leaves the old
 * checkpoint or the new one. It holds full arrays whatever the layout, so any dp × sp × ZeRO layout can
 * continue any checkpoint. */
lasp_status lasp_trainer_save(lasp_trainer *t, const char *dir);
/* Whether DIR can take checkpoints (it is a writable directory, or does not exist yet, and no directory
 * stands where model.ckpt goes): for a run to check before it trains, not at its first save. */
lasp_status lasp_ckpt_dir_check(const char *dir, lasp_err *err);
/* Continues the run from DIR/model.ckpt: the model config and the data it was trained on must be this
 * run's (an error names what differs); parameters, optimizer state, step, data position and random
 * state become the checkpoint's. */
lasp_status lasp_trainer_resume(lasp_trainer *t, const char *dir);

/* A checkpoint's weights for other tools: OUT/model.safetensors, one fp32 tensor per weight (embed.weight [V, C];
 * blocks.L.{ln1, wqkvu [C, 4C], conv [K, 3C], onorm, wo [C, C], ln2, w12 [C, 2F], w3 [F, C]}; head.norm,
 * head.weight [C, V]; products are y = x · W), and OUT/config.json (the model config, the norms' epsilon and every
 * layer's decay slopes). */
lasp_status lasp_export_safetensors(const char *ckpt_dir, const char *out_dir, lasp_err *err);

/* Decoding from a checkpoint with the recurrent form (docs/MATH.md §1): one d × d state per layer and
 * head and the convolution's last few projections, so memory does not grow with the length. */
typedef struct lasp_generator lasp_generator;
lasp_status lasp_generator_load(const char *ckpt_dir, lasp_generator **out, lasp_err *err);
/* The same on `device`: LASP_DEVICE_CUDA decodes on the current GPU, in f32 like the CPU. */
lasp_status lasp_generator_open(const char *ckpt_dir, lasp_device device, lasp_generator **out, lasp_err *err);
lasp_model_config lasp_generator_config(const lasp_generator *g);
/* Feeds one token (0 ≤ token < vocab); returns the logits [vocab] of the next one (host memory), valid until
 * the next call; NULL for a token out of range or a GPU that failed. */
const float *lasp_generator_feed(lasp_generator *g, int32_t token);
void lasp_generator_free(lasp_generator *g);

#ifdef __cplusplus
}
#endif

#endif /* LASP_H */
