/* trainer_cuda.c — the trainer on GPUs (trainer.h's lasp_trainer_gpu_*): the model of model_cuda.h, the
 * optimizer state on the device beside it, and a step that goes from the batch's tokens to the updated
 * parameters without waiting for the GPU until the loss and the gradient norm are read at its end.
 *
 * Over several GPUs (a job of W = dp × sp ranks on an NCCL world, one GPU each): each rank a slice of the
 * batch and a piece of its sequences (the model's attention and halo through the SP group: lasp_gmodel_set_sp),
 * its loss scaled by 1/W, the gradients summed over the world unit by unit as the backward completes them, on
 * a stream of their own beside the rest of the backward (unit_done), and the loss, hits and count summed too,
 * so that every rank takes the same step; what of the reductions outlasts the backward is the step's comm
 * time. ZeRO 1 and 2 shard the optimizer over the world as the CPU trainer does (each unit cut in W chunks,
 * this rank's chunk of every unit in its shard): stage 1 sums each unit whole and keeps its chunk, stage 2
 * reduce-scatters it; AdamW updates the shard and the parameters are all-gathered unit by unit after it.
 * Stage 3 keeps no whole copy of the parameters: the model asks for each unit's as it comes to it (fetch_unit),
 * which are all-gathered from the shards into one of two unit buffers while the unit before computes.
 *
 * Memory is checked before anything is allocated: parameters, gradients, the two AdamW moments and the
 * activations (lasp_gmodel_activation_bytes, the same list the model allocates) against what the GPU has
 * free, so that a run that cannot fit is refused with the sizes and a hint, not by a failed allocation
 * in the middle of a step. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "core/cuda_check.h"
#include "model/layers.h"
#include "model/model_cuda.h"
#include "train/adamw.h"
#include "train/trainer.h"

/* Room left for what is allocated outside the list: cuBLAS's workspace, the op's state workspace, the
 * CUDA context's own growth. */
#define HEADROOM_BYTES (768.0 * 1048576.0)

struct lasp_trainer_gpu {
    lasp_gmodel *m;
    cudaStream_t stream;
    float *mom, *vel;          /* device [P] */
    uint8_t *decay;            /* device [P]: 1 where weight decay applies */
    double *sumsq, *work;      /* device: the gradient's Σ g², and its scratch */
    double *h_sumsq;           /* pinned host copy of *sumsq */
    double *red, *h_red;       /* ranks: device and pinned host [4], sums over the ranks of host values */
    double peak_flops;         /* dense bf16 peak of this GPU (0: not known) */
    double flops_per_token;
    lasp_train_memory mem;
    lasp_gprof *prof;          /* where the time goes (NULL: not measured) */
    float *carry;              /* o.chunk: device [n_chunks + 2][carry floats], as trainer.c's host ones */
    int ranks;                 /* the world is NCCL's (a launched job, one rank or more): the ranks' machinery on */
    float *pshard, *gshard;    /* ZeRO ≥ 1: device [S], this rank's chunks of the parameters and gradients */
    cudaStream_t cstream;      /* ranks: where the gradients' reductions run beside the backward */
    cudaEvent_t ev_unit, ev_bwd, ev_red; /* a unit's gradients made; the backward's end; the reductions' end */
    int reducing;              /* this backward's units are reduced as they complete (unit_done) */
    float *scratch;            /* ZeRO ≥ 1: device [W × max chunk], a unit padded to W whole chunks */
    int written;               /* this step's gradients hold a backward's (the next one of the step adds to them) */
    /* ZeRO 3: two units' parameters gathered (fp32, and bf16 for the bf16 model), which unit each holds (-1:
     * none), which the model reads now, and when each gather is done */
    float *slot32[2];
    uint16_t *slot16[2];
    int slot_unit[2], cur_slot;
    cudaEvent_t ev_slot[2], ev_free;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

#define CU(call, what) LASP_CU(&t->ctx->err, call, what)

/* The dense bf16 tensor-core peak MFU is quoted against: the datasheet figure of the SXM parts (H100 and
 * H200 989.4 TFLOP/s, A100 312); 0 for a GPU not listed, whose MFU is then not reported. */
static double peak_bf16_flops(const struct cudaDeviceProp *p) {
    if (p->major == 9 && p->minor == 0) return 989.4e12;
    if (p->major == 8 && p->minor == 0) return 312e12;
    return 0;
}

static double gib(double b) { return b / 1073741824.0; }

/* ---- ZeRO 1 and 2: this rank's chunks of full device arrays, and full arrays from every rank's ---------- */

/* dst's chunk of unit u = this rank's chunk of it in full [P] (device or host memory; zero past the unit's end),
 * on stream st */
static lasp_status slice_unit(lasp_trainer *t, int u, const float *full, float *dst, cudaStream_t st) {
    size_t a, b;
    lasp_trainer_chunk_range(t, u, &a, &b);
    CU(cudaMemsetAsync(dst + t->soff[u], 0, t->chunk[u] * 4, st), "a shard");
    if (a < b) CU(cudaMemcpyAsync(dst + t->soff[u], full + a, (b - a) * 4, cudaMemcpyDefault, st), "a shard");
    return LASP_OK;
}

/* dst's chunks [S] = this rank's chunk of every unit of full [P], on the model's stream */
static lasp_status slice_all(lasp_trainer *t, const float *full, float *dst) {
    for (int u = 0; u < t->m.lay.n_units; u++) LASP_TRY(slice_unit(t, u, full, dst, t->gpu->stream));
    return LASP_OK;
}

/* full [P] (device, or with host a host array, every rank's) = every rank's chunks of every unit, all-gathered
 * unit by unit through the scratch (collective over the world) */
static lasp_status gather_all(lasp_trainer *t, const float *shard, float *full, int host) {
    lasp_trainer_gpu *G = t->gpu;
    const lasp_layout *lay = &t->m.lay;
    for (int u = 0; u < lay->n_units; u++) {
        const size_t n = lay->unit_off[u + 1] - lay->unit_off[u];
        LASP_TRY(lasp_comm_allgather(t->world, shard + t->soff[u], G->scratch, t->chunk[u], LASP_F32, &t->ctx->err));
        CU(cudaMemcpyAsync(full + lay->unit_off[u], G->scratch, n * 4,
                           host ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice, G->stream), "gathering a unit");
    }
    return LASP_OK;
}

/* ---- ZeRO 3: a unit's parameters gathered from every rank's chunk as the model comes to it ---------------- */

/* Unit u into slot k on the communication stream (where the gradients' reductions go too: one stream keeps the
 * world's operations in the order every rank issues them), once the model's stream has passed what it has
 * been given so far (the slot's last reader among it); ev_slot[k] marks it done. */
static lasp_status gather_unit(lasp_trainer *t, int u, int k) {
    lasp_trainer_gpu *G = t->gpu;
    lasp_err *err = &t->ctx->err;
    CU(cudaEventRecord(G->ev_free, G->stream), "ordering a unit's gather");
    CU(cudaStreamWaitEvent(G->cstream, G->ev_free, 0), "ordering a unit's gather");
    LASP_TRY(lasp_comm_set_stream(t->world, G->cstream, err));
    const lasp_status s = lasp_comm_allgather(t->world, G->pshard + t->soff[u], G->slot32[k], t->chunk[u], LASP_F32,
                                              err);
    lasp_err e2 = {0};
    lasp_comm_set_stream(t->world, G->stream, &e2); /* the world's other collectives stay on the model's stream */
    LASP_TRY(s);
    const size_t n = t->m.lay.unit_off[u + 1] - t->m.lay.unit_off[u];
    if (G->slot16[k]) lasp_to_bf16_cuda(G->slot16[k], G->slot32[k], (int64_t)n, G->cstream);
    CU(cudaEventRecord(G->ev_slot[k], G->cstream), "a unit's gather");
    G->slot_unit[k] = u;
    return LASP_OK;
}

/* lasp_gmodel_fetch_fn: unit u from the slot that holds it (made ahead by the last call), or gathered now into
 * the slot the model does not read; then `next` into the other slot, whose unit the model has just left,
 * while u computes */
static lasp_status fetch_unit(void *user, int u, int next, const float **p32, const uint16_t **p16) {
    lasp_trainer *t = (lasp_trainer *)user;
    lasp_trainer_gpu *G = t->gpu;
    int k = G->slot_unit[0] == u ? 0 : G->slot_unit[1] == u ? 1 : -1;
    if (k < 0) LASP_TRY(gather_unit(t, u, k = 1 - G->cur_slot));
    CU(cudaStreamWaitEvent(G->stream, G->ev_slot[k], 0), "waiting for a unit's parameters");
    G->cur_slot = k;
    if (next >= 0 && G->slot_unit[1 - k] != next) LASP_TRY(gather_unit(t, next, 1 - k));
    *p32 = G->slot32[k], *p16 = G->slot16[k];
    return LASP_OK;
}

/* The slots hold parameters from before an update, or none yet */
static void slots_stale(lasp_trainer_gpu *G) { G->slot_unit[0] = G->slot_unit[1] = -1; }

/* ZeRO 3: the shards are the only copy of the parameters (the model fetches each unit's) */
static int params_sharded(const lasp_trainer *t) { return t->gpu->pshard && t->o.zero >= 3; }

/* ---- the gradients' reduction over the world, unit by unit as the backward completes them ------------- */

/* lasp_gmodel_unit_fn: unit u's gradients are enqueued whole on the model's stream. Its reduction goes on the
 * communication stream once the model's stream gets there, while the rest of the backward runs: ZeRO 0 an
 * all-reduce in place; 1 the same, then this rank's chunk kept; 2 the unit padded to W whole chunks in the
 * scratch and reduce-scattered into the shard (the scratch's reuse ordered by the one stream). Every rank's
 * backward calls this for the same units in the same order, so the collectives match. */
static lasp_status unit_done(void *user, int u) {
    lasp_trainer *t = (lasp_trainer *)user;
    lasp_trainer_gpu *G = t->gpu;
    if (!G->reducing) return LASP_OK;
    lasp_err *err = &t->ctx->err;
    const lasp_layout *lay = &t->m.lay;
    float *g = lasp_gmodel_grads(G->m) + lay->unit_off[u];
    const size_t n = lay->unit_off[u + 1] - lay->unit_off[u];
    CU(cudaEventRecord(G->ev_unit, G->stream), "ordering a unit's reduction");
    CU(cudaStreamWaitEvent(G->cstream, G->ev_unit, 0), "ordering a unit's reduction");
    LASP_TRY(lasp_comm_set_stream(t->world, G->cstream, err));
    lasp_status s;
    if (t->o.zero >= 2) {
        const size_t c = t->chunk[u];
        CU(cudaMemcpyAsync(G->scratch, g, n * 4, cudaMemcpyDeviceToDevice, G->cstream), "a unit's gradients");
        if ((size_t)t->W * c > n) CU(cudaMemsetAsync(G->scratch + n, 0, ((size_t)t->W * c - n) * 4, G->cstream), "padding");
        s = lasp_comm_reduce_scatter(t->world, G->scratch, G->gshard + t->soff[u], c, LASP_F32, LASP_REDUCE_SUM, err);
    } else {
        s = lasp_comm_allreduce(t->world, g, g, n, LASP_F32, LASP_REDUCE_SUM, err);
        if (s == LASP_OK && t->o.zero == 1) s = slice_unit(t, u, lasp_gmodel_grads(G->m), G->gshard, G->cstream);
    }
    lasp_err e2 = {0};
    lasp_comm_set_stream(t->world, G->stream, &e2); /* the world's other collectives stay on the model's stream */
    return s;
}

void lasp_trainer_gpu_release(lasp_trainer *t) {
    lasp_trainer_gpu *G = t->gpu;
    if (!G) return;
    if (G->stream) cudaStreamSynchronize(G->stream);
    if (G->red) { /* the world outlives this stream: back to its own */
        lasp_err e = {0};
        lasp_comm_set_stream(t->world, NULL, &e);
    }
    lasp_gmodel_free(G->m);
    lasp_gprof_free(G->prof);
    cudaFree(G->mom), cudaFree(G->vel), cudaFree(G->decay), cudaFree(G->sumsq), cudaFree(G->work), cudaFree(G->carry);
    cudaFree(G->red), cudaFreeHost(G->h_red);
    cudaFree(G->pshard), cudaFree(G->gshard), cudaFree(G->scratch);
    for (int k = 0; k < 2; k++) {
        cudaFree(G->slot32[k]), cudaFree(G->slot16[k]);
        if (G->ev_slot[k]) cudaEventDestroy(G->ev_slot[k]);
    }
    if (G->ev_free) cudaEventDestroy(G->ev_free);
    if (G->ev_unit) cudaEventDestroy(G->ev_unit);
    if (G->ev_bwd) cudaEventDestroy(G->ev_bwd);
    if (G->ev_red) cudaEventDestroy(G->ev_red);
    if (G->cstream) cudaStreamDestroy(G->cstream);
    cudaFreeHost(G->h_sumsq), cudaFreeHost(t->tok), cudaFreeHost(t->tgt), cudaFreeHost(t->ctok), cudaFreeHost(t->ctgt);
    t->tok = t->tgt = t->ctok = t->ctgt = NULL;
    free(G);
    t->gpu = NULL;
}

lasp_status lasp_trainer_gpu_init(lasp_trainer *t) {
    lasp_err *err = &t->ctx->err;
    const lasp_train_params *o = &t->o;
    /* over an NCCL world (mpirun, even of one rank: the same code as over many), dp × sp */
    const int ranks = lasp_comm_backend_of(t->world) == LASP_COMM_NCCL;
    if (t->W > 1 && !ranks)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "--device cuda over %d ranks needs them on an NCCL world (hint: "
                         "a build with NCCL, one GPU a rank)", t->W);
    void *stream = NULL;
    LASP_TRY(lasp_ctx_cuda_stream(t->ctx, &stream)); /* "no usable GPU" when there is none */
    lasp_trainer_gpu *G = calloc(1, sizeof *G);
    if (!G) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the GPU trainer");
    t->gpu = G;
    G->stream = (cudaStream_t)stream;
    G->ranks = ranks;
    const size_t P = t->P = t->m.lay.n_params;
    t->S = P;
    const int shard = ranks && o->zero >= 1, zero3 = shard && o->zero >= 3;
    if (shard) LASP_TRY(lasp_trainer_shard_layout(t, err)); /* the CPU trainer's shards */
    const size_t S = t->S; /* the optimizer's domain: every parameter, or this rank's shard */

    /* what the run needs, against what the GPU has */
    int dev = 0;
    struct cudaDeviceProp prop;
    size_t free_b = 0, total_b = 0;
    CU(cudaGetDevice(&dev), "the current GPU");
    CU(cudaGetDeviceProperties(&prop, dev), "the GPU's properties");
    CU(cudaMemGetInfo(&free_b, &total_b), "the GPU's memory");
    G->peak_flops = peak_bf16_flops(&prop);
    G->flops_per_token = lasp_model_flops_per_token(&o->model);
    lasp_train_memory *mem = &G->mem;
    const double per = o->dtype == LASP_BF16 ? 6.0 : 4.0; /* fp32 master weights, and their bf16 copy */
    const double unit = (double)t->W * (double)t->max_chunk; /* ZeRO ≥ 1: a unit padded to W whole chunks */
    mem->params = zero3 ? 2.0 * per * unit : per * (double)P; /* ZeRO 3: two units gathered, no whole copy */
    mem->grads = 4.0 * (double)P, mem->optimizer = 9.0 * (double)S;
    if (shard) mem->params += 4.0 * (double)S + 4.0 * unit, mem->grads += 4.0 * (double)S;
    const int64_t Tc = o->chunk ? o->chunk : t->Tl, nc = t->Tl / Tc;
    const size_t cf = lasp_model_carry_floats(&o->model, t->Bl);
    const int split_seq = !o->chunk && t->sp->sp_size > 1; /* in chunks the model runs unsplit */
    mem->activations = lasp_gmodel_activation_bytes(t->ctx, &o->model, o->dtype, o->recompute, t->Bl, Tc, split_seq) +
                       (o->chunk ? 4.0 * (double)(nc + LASP_CARRY_EXTRA) * (double)cf : 0); /* the carried states */
    mem->device_total = (double)total_b, mem->device_free = (double)free_b;
    snprintf(mem->device, sizeof mem->device, "GPU %d: %s (sm_%d%d, %d SMs, %.0f GiB)", dev, prop.name, prop.major,
             prop.minor, prop.multiProcessorCount, gib((double)total_b));
    const double need = mem->params + mem->grads + mem->optimizer + mem->activations + HEADROOM_BYTES;
    if (need > (double)free_b)
        return lasp_fail(err, LASP_ERR_NOMEM, "the run needs %.2f GiB of GPU memory but %s has %.2f GiB free: "
                         "parameters and gradients %.2f, optimizer state %.2f, activations of %lld × %lld tokens %.2f, "
                         "workspace %.2f (hint: %sa smaller --batch or --seq-len, or --chunk N)", gib(need), prop.name,
                         gib((double)free_b), gib(mem->params + mem->grads), gib(mem->optimizer),
                         (long long)t->Bl, (long long)t->Tl, gib(mem->activations), gib(HEADROOM_BYTES),
                         o->recompute == LASP_RECOMPUTE_BLOCK ? "" : "--recompute block, ");

    LASP_TRY(lasp_gmodel_create(t->ctx, &o->model, o->dtype, &G->m));
    /* ZeRO 3: the model's parameters through fetch_unit, its own copies freed before the activations come */
    if (zero3) lasp_gmodel_set_fetch(G->m, fetch_unit, t);
    lasp_gmodel_set_recompute(G->m, o->recompute);
    /* the sequence split through the model's SP layer (before the activations: the op's kept states are the SP
     * layer's then); in chunks the trainer relays the state instead */
    if (split_seq) LASP_TRY(lasp_gmodel_set_sp(G->m, t->sp));
    LASP_TRY(lasp_gmodel_reserve(G->m, t->Bl, Tc));
    if (o->chunk) {
        const size_t Nc = (size_t)(t->Bl * Tc);
        CU(cudaMalloc((void **)&G->carry, (size_t)(nc + LASP_CARRY_EXTRA) * cf * sizeof(float)),
           "the chunks' carried states");
        CU(cudaMallocHost((void **)&t->ctok, Nc * sizeof(int32_t)), "a chunk's tokens");
        CU(cudaMallocHost((void **)&t->ctgt, Nc * sizeof(int32_t)), "a chunk's tokens");
        if (!(t->cmask = malloc(Nc))) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a chunk's mask");
    }
    const size_t N = (size_t)(t->Bl * t->Tl);
    CU(cudaMalloc((void **)&G->mom, S * 4), "the AdamW moments");
    CU(cudaMalloc((void **)&G->vel, S * 4), "the AdamW moments");
    CU(cudaMalloc((void **)&G->decay, S), "the weight-decay mask");
    if (shard) {
        CU(cudaMalloc((void **)&G->pshard, S * 4), "the parameters' shard");
        CU(cudaMalloc((void **)&G->gshard, S * 4), "the gradients' shard");
        CU(cudaMalloc((void **)&G->scratch, (size_t)t->W * t->max_chunk * 4), "the shards' scratch");
    }
    CU(cudaMalloc((void **)&G->sumsq, sizeof(double)), "the gradient norm");
    CU(cudaMalloc((void **)&G->work, LASP_SUMSQ_PARTS * sizeof(double)), "the gradient norm");
    CU(cudaMallocHost((void **)&G->h_sumsq, sizeof(double)), "the gradient norm");
    if (ranks) {
        CU(cudaMalloc((void **)&G->red, 4 * sizeof(double)), "the sums over ranks");
        CU(cudaMallocHost((void **)&G->h_red, 4 * sizeof(double)), "the sums over ranks");
        /* the world's collectives on the model's stream (after the backward, before the update), but for the
         * gradients' reductions, on a stream of their own as each unit completes */
        LASP_TRY(lasp_comm_set_stream(t->world, G->stream, err));
        CU(cudaStreamCreateWithFlags(&G->cstream, cudaStreamNonBlocking), "the reductions' stream");
        CU(cudaEventCreateWithFlags(&G->ev_unit, cudaEventDisableTiming), "an event");
        CU(cudaEventCreate(&G->ev_bwd), "an event");
        CU(cudaEventCreate(&G->ev_red), "an event");
        lasp_gmodel_set_unit_done(G->m, unit_done, t);
    }
    /* the batch in pinned memory, so that its copy to the GPU does not wait */
    free(t->tok), free(t->tgt);
    t->tok = t->tgt = NULL;
    CU(cudaMallocHost((void **)&t->tok, N * sizeof(int32_t)), "the batch's tokens");
    CU(cudaMallocHost((void **)&t->tgt, N * sizeof(int32_t)), "the batch's tokens");
    CU(cudaMemsetAsync(G->mom, 0, S * 4, G->stream), "zeroing the moments");
    CU(cudaMemsetAsync(G->vel, 0, S * 4, G->stream), "zeroing the moments");
    if (zero3) { /* the two units' buffers fetch_unit gathers into */
        for (int k = 0; k < 2; k++) {
            CU(cudaMalloc((void **)&G->slot32[k], (size_t)unit * 4), "a gathered unit's parameters");
            if (o->dtype == LASP_BF16)
                CU(cudaMalloc((void **)&G->slot16[k], (size_t)unit * 2), "a gathered unit's parameters");
            CU(cudaEventCreateWithFlags(&G->ev_slot[k], cudaEventDisableTiming), "an event");
        }
        CU(cudaEventCreateWithFlags(&G->ev_free, cudaEventDisableTiming), "an event");
        slots_stale(G);
    }

    /* the weight-decay mask and the initial parameters, made on the host as the CPU trainer makes them */
    uint8_t *decay = malloc(S);
    float *init = malloc(P * 4);
    lasp_status s = decay && init ? LASP_OK : lasp_fail(err, LASP_ERR_NOMEM, "no host memory to initialise %zu "
                                                        "parameters", P);
    if (s == LASP_OK) {
        /* the mask of the optimizer's domain: of every parameter, or of this rank's chunks (padding: none) */
        if (!shard) {
#pragma omp parallel for schedule(static)
            for (size_t i = 0; i < P; i++) decay[i] = (uint8_t)lasp_layout_decays(&t->m.lay, i);
        } else {
            lasp_trainer_shard_decay(t, decay);
        }
        lasp_model_init_params(&o->model, &t->m.lay, o->seed, init);
        const cudaError_t e = cudaMemcpy(G->decay, decay, S, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) s = lasp_cuda_fail(&t->ctx->err, e, "copying the mask in");
        else if (zero3) s = slice_all(t, init, G->pshard); /* the shard straight from the host */
        else s = lasp_gmodel_set_params(G->m, init);
    }
    if (s == LASP_OK && shard && !zero3) s = slice_all(t, lasp_gmodel_params(G->m), G->pshard);
    if (s == LASP_OK && zero3) { /* the copies out of init, which is freed below, done */
        const cudaError_t e = cudaStreamSynchronize(G->stream);
        if (e != cudaSuccess) s = lasp_cuda_fail(&t->ctx->err, e, "the shards");
    }
    free(decay), free(init);
    return s;
}

lasp_train_memory lasp_trainer_gpu_memory(const lasp_trainer *t) { return t->gpu->mem; }

lasp_status lasp_trainer_gpu_wait(lasp_trainer *t) {
    CU(cudaStreamSynchronize(t->gpu->stream), "the GPU's work");
    return LASP_OK;
}

int lasp_trainer_gpu_sites(const lasp_trainer *t, lasp_profile_site *out, int max) {
    lasp_gprof_site s[64];
    const int n = lasp_gprof_sites(t->gpu->prof, s, max < 64 ? max : 64);
    for (int i = 0; i < n; i++) {
        const char *f = strrchr(s[i].file, '/');
        snprintf(out[i].where, sizeof out[i].where, "%s:%d", f ? f + 1 : s[i].file, s[i].line);
        out[i].part = s[i].part, out[i].ms = s[i].ms;
    }
    return n;
}

lasp_status lasp_trainer_gpu_profile(lasp_trainer *t, int on) {
    lasp_trainer_gpu *G = t->gpu;
    if (on && !G->prof) LASP_TRY(lasp_gprof_create(G->stream, &G->prof, &t->ctx->err));
    if (!on) lasp_gprof_free(G->prof), G->prof = NULL;
    lasp_gmodel_set_profile(G->m, G->prof);
    return LASP_OK;
}

/* ---- a batch chunk by chunk (o.chunk): trainer.c's lasp_trainer_chunks, on the device ---------------- */

/* One chunk through the GPU model (lasp_chunk_fn); reading its loss waits for the GPU. The step's first chunk with
 * a backward writes the gradients, the later ones add theirs. */
static lasp_status gpu_chunk(lasp_trainer *t, const lasp_model_carry *cin, lasp_model_carry *cout,
                             const lasp_model_carry *dcout, lasp_model_carry *dcin, float scale, double *loss,
                             int64_t *hits, int64_t *count) {
    lasp_trainer_gpu *G = t->gpu;
    lasp_gmodel *m = G->m;
    lasp_gmodel_set_carry(m, cin, cout, dcout, dcin);
    if (scale > 0) lasp_gmodel_set_accumulate(m, G->written);
    lasp_status s = lasp_gmodel_forward(m, t->ctok, t->ctgt, scale);
    if (s == LASP_OK && scale > 0) {
        s = lasp_gmodel_backward(m);
        G->written = 1;
    }
    if (s == LASP_OK && loss) s = lasp_gmodel_loss(m, t->cmask, loss, hits, count);
    lasp_gmodel_set_carry(m, NULL, NULL, NULL, NULL);
    return s;
}

/* This rank's slice of the batch at the cursor of `split`, its forward (and with grad_scale, its backward, which
 * writes the gradients: nothing zeroes them first) enqueued. In chunks (o.chunk) the loss is read here: r and
 * *have = 1; otherwise the caller reads it with lasp_gmodel_loss when it is ready to wait. */
static lasp_status forward(lasp_trainer *t, int split, uint64_t first, float grad_scale, double r[3], int *have) {
    lasp_trainer_gpu *G = t->gpu;
    LASP_TRY(lasp_data_batch(t->data, split, first, t->o.batch, t->o.seq_len, t->sp->dp_rank, t->sp->dp_size,
                             t->sp->sp_rank, t->sp->sp_size, t->tok, t->tgt, t->mask, &t->ctx->err));
    G->written = 0;
    *have = t->o.chunk > 0;
    if (*have) {
        LASP_TRY(lasp_trainer_chunks(t, G->carry, gpu_chunk, grad_scale, r));
        if (grad_scale > 0 && G->ranks) { /* every chunk's gradients in: the units reduced as a backward would */
            G->reducing = 1;
            lasp_status s = LASP_OK;
            for (int u = t->m.lay.n_units - 1; u >= 0 && s == LASP_OK; u--) s = unit_done(t, u);
            G->reducing = 0;
            LASP_TRY(s);
        }
        return LASP_OK;
    }
    if (grad_scale > 0) lasp_gmodel_set_accumulate(G->m, 0);
    LASP_TRY(lasp_gmodel_forward(G->m, t->tok, t->tgt, grad_scale));
    if (grad_scale > 0) {
        G->reducing = G->ranks;
        const lasp_status s = lasp_gmodel_backward(G->m);
        G->reducing = 0;
        LASP_TRY(s);
    }
    return LASP_OK;
}

/* Over ranks: x[0 .. n) summed over the ranks, through device memory (the NCCL world moves device buffers); waits */
static lasp_status sum_over_ranks(lasp_trainer *t, double *x, int n) {
    lasp_trainer_gpu *G = t->gpu;
    memcpy(G->h_red, x, (size_t)n * sizeof *x);
    CU(cudaMemcpyAsync(G->red, G->h_red, (size_t)n * sizeof *x, cudaMemcpyHostToDevice, G->stream), "the sums");
    LASP_TRY(lasp_comm_allreduce(t->world, G->red, G->red, (size_t)n, LASP_F64, LASP_REDUCE_SUM, &t->ctx->err));
    CU(cudaMemcpyAsync(G->h_red, G->red, (size_t)n * sizeof *x, cudaMemcpyDeviceToHost, G->stream), "the sums");
    /* the world's wait (its stream is the model's): bounded by its timeout, and a peer's failure a status, so that
     * a rank that stalls or dies ends the job rather than leaving this one waiting */
    LASP_TRY(lasp_comm_sync(t->world, &t->ctx->err));
    memcpy(x, G->h_red, (size_t)n * sizeof *x);
    return LASP_OK;
}

/* Over ranks, after the backward: every rank's gradients summed (each rank's loss was scaled by 1/W, so the sum is
 * the batch's mean) on the model's stream, and the loss, hits and count of r (this rank's, or read here when
 * *have is 0) summed, the loss over the ranks' means: r then holds the batch's, and *have = 1 */
static lasp_status reduce_step(lasp_trainer *t, int grads, double r[3], int *have) {
    lasp_trainer_gpu *G = t->gpu;
    if (grads) { /* the units' reductions (enqueued by the backward) joined: the model's stream waits for them */
        CU(cudaEventRecord(G->ev_bwd, G->stream), "the backward's end");
        CU(cudaEventRecord(G->ev_red, G->cstream), "the reductions' end");
        CU(cudaStreamWaitEvent(G->stream, G->ev_red, 0), "waiting for the reductions");
    }
    if (!*have) {
        int64_t c = 0, n = 0;
        const lasp_status ls = lasp_gmodel_loss(G->m, t->mask, &r[0], &c, &n);
        if (ls == LASP_ERR_NONFINITE) r[0] = NAN; /* summed, it stops every rank alike */
        else LASP_TRY(ls);
        r[1] = (double)c, r[2] = (double)n;
    }
    LASP_TRY(sum_over_ranks(t, r, 3));
    r[0] /= t->W;
    *have = 1;
    return LASP_OK;
}

lasp_status lasp_trainer_gpu_step(lasp_trainer *t, lasp_step_stats *st) {
    lasp_trainer_gpu *G = t->gpu;
    lasp_err *err = &t->ctx->err;
    const double t0 = now_ms();
    double r[3] = {NAN, 0, 0};
    int have = 0;
    lasp_status fs = forward(t, LASP_SPLIT_TRAIN, t->cursor, 1.0f / (float)t->W, r, &have);
    if (fs != LASP_ERR_NONFINITE) LASP_TRY(fs); /* a non-finite chunk's loss: reported below, nothing updated */
    if (G->ranks) { /* the same gradients and loss on every rank before the update, which they all then skip or take */
        LASP_TRY(reduce_step(t, 1, r, &have));
        if (!isfinite(r[0])) fs = LASP_ERR_NONFINITE;
    }
    /* the norm and the update on the device: the update reads the norm there, and skips itself when the
     * gradients are not finite, so the parameters stay those of the last good step */
    float *p = lasp_gmodel_params(G->m), *g = lasp_gmodel_grads(G->m);
    const double lr = lasp_trainer_lr(&t->o, t->step);
    double loss = fs == LASP_OK ? r[0] : NAN;
    int64_t correct = (int64_t)r[1], count = (int64_t)r[2];
    *G->h_sumsq = NAN;
    if (fs == LASP_OK) {
        /* over the optimizer's domain [S]: every parameter, or (ZeRO 1 and 2) this rank's chunks, whose sums of
         * squares (padding adds nothing) are summed over the world for the norm, and which are gathered into
         * the parameters and their bf16 copy after the update */
        float *dp = G->pshard ? G->pshard : p, *dg = G->pshard ? G->gshard : g;
        lasp_gprof_mark_at(G->prof, LASP_PART_OPTIM, __FILE__, __LINE__);
        lasp_sumsq_cuda(dg, t->S, G->sumsq, G->work, G->stream);
        if (G->pshard) LASP_TRY(lasp_comm_allreduce(t->world, G->sumsq, G->sumsq, 1, LASP_F64, LASP_REDUCE_SUM, err));
        const lasp_adamw_step h = lasp_adamw_make(&t->o, t->step, lr);
        lasp_adamw_cuda(dp, G->pshard ? NULL : lasp_gmodel_params16(G->m), dg, G->mom, G->vel, G->decay, t->S, &h,
                        G->sumsq, G->stream);
        CU(cudaGetLastError(), "the optimizer's kernels");
        if (params_sharded(t)) {
            slots_stale(G); /* the next pass gathers the updated units */
        } else if (G->pshard) {
            LASP_TRY(gather_all(t, G->pshard, p, 0));
            if (lasp_gmodel_params16(G->m)) lasp_to_bf16_cuda(lasp_gmodel_params16(G->m), p, (int64_t)t->P, G->stream);
        }
        CU(cudaMemcpyAsync(G->h_sumsq, G->sumsq, sizeof(double), cudaMemcpyDeviceToHost, G->stream), "the norm");
    }
    if (have) {
        CU(cudaStreamSynchronize(G->stream), "the step");
    } else {
        const lasp_status ls = lasp_gmodel_loss(G->m, t->mask, &loss, &correct, &count); /* the step's one wait */
        if (ls == LASP_ERR_NONFINITE) loss = NAN;
        else LASP_TRY(ls);
    }
    const double norm = sqrt(*G->h_sumsq);
    if (!isfinite(loss) || !isfinite(norm))
        return lasp_fail(err, LASP_ERR_NONFINITE, "step %lld: the %s is %g; the parameters were left as they were "
                         "after step %lld (hint: a lower --lr, --clip on)", (long long)t->step + 1,
                         isfinite(loss) ? "gradient norm" : "loss", isfinite(loss) ? norm : loss, (long long)t->step);
    t->step++;
    t->cursor += (uint64_t)t->o.batch;
    double split[LASP_PART_COUNT] = {0};
    LASP_TRY(lasp_gprof_read(G->prof, split, err));
    if (st) {
        memset(st, 0, sizeof *st);
        for (int k = 0; k < LASP_PART_COUNT; k++) st->split_ms[k] = split[k];
        st->loss = loss, st->acc = count > 0 ? (double)correct / (double)count : 0;
        st->grad_norm = norm, st->lr = lr;
        st->ms = now_ms() - t0;
        const double tokens = (double)t->Bl * (double)t->Tl; /* this GPU's: MFU is per GPU */
        st->mfu = G->peak_flops > 0 ? G->flops_per_token * tokens / (st->ms / 1e3) / G->peak_flops : 0;
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) st->mem_bytes = (double)(tot - fr);
        /* over ranks: how long the update waited for the gradients' reductions after the backward's end */
        float exposed = 0;
        if (G->ranks && cudaEventElapsedTime(&exposed, G->ev_bwd, G->ev_red) == cudaSuccess && exposed > 0)
            st->comm_ms = exposed;
    }
    return LASP_OK;
}

lasp_status lasp_trainer_gpu_eval(lasp_trainer *t, int split, double *loss, double *acc) {
    double sum = 0;
    int64_t hits = 0, n = 0;
    lasp_gmodel_set_profile(t->gpu->m, NULL); /* the profile times training steps only */
    lasp_status s = LASP_OK;
    for (int64_t k = 0; k < t->o.val_batches && s == LASP_OK; k++) {
        double l, r[3];
        int64_t c, m;
        int have = 0;
        s = forward(t, split, (uint64_t)(k * t->o.batch), 0, r, &have);
        if (s == LASP_OK && t->gpu->ranks) s = reduce_step(t, 0, r, &have);
        if (s == LASP_OK && have) l = r[0], c = (int64_t)r[1], m = (int64_t)r[2];
        else if (s == LASP_OK) s = lasp_gmodel_loss(t->gpu->m, t->mask, &l, &c, &m);
        if (s == LASP_OK) sum += l, hits += c, n += m;
    }
    lasp_gmodel_set_profile(t->gpu->m, t->gpu->prof);
    LASP_TRY(s);
    *loss = t->o.val_batches ? sum / (double)t->o.val_batches : 0;
    *acc = n > 0 ? (double)hits / (double)n : 0;
    return LASP_OK;
}

lasp_status lasp_trainer_gpu_grad(lasp_trainer *t, double *loss, float *grad_out) {
    double r[3];
    int have = 0;
    LASP_TRY(forward(t, LASP_SPLIT_TRAIN, t->cursor, 1.0f / (float)t->W, r, &have));
    if (t->gpu->ranks) LASP_TRY(reduce_step(t, 1, r, &have));
    if (have) *loss = r[0];
    else LASP_TRY(lasp_gmodel_loss(t->gpu->m, t->mask, loss, NULL, NULL));
    if (t->gpu->pshard && t->o.zero >= 2) { /* the summed gradients live in the ranks' chunks */
        LASP_TRY(gather_all(t, t->gpu->gshard, grad_out, 1));
        return lasp_comm_sync(t->world, &t->ctx->err);
    }
    return lasp_gmodel_get_grads(t->gpu->m, grad_out);
}

/* Sharded (ZeRO ≥ 1), the moments come from every rank's chunks: collective over the world then. */
lasp_status lasp_trainer_gpu_gather(lasp_trainer *t, float *params, float *mom, float *vel) {
    lasp_trainer_gpu *G = t->gpu;
    if (params && params_sharded(t)) LASP_TRY(gather_all(t, G->pshard, params, 1));
    else if (params) LASP_TRY(lasp_gmodel_get_params(G->m, params));
    CU(cudaStreamSynchronize(G->stream), "the GPU's work");
    if (G->pshard) {
        if (mom) LASP_TRY(gather_all(t, G->mom, mom, 1));
        if (vel) LASP_TRY(gather_all(t, G->vel, vel, 1));
        LASP_TRY(lasp_comm_sync(t->world, &t->ctx->err));
        return LASP_OK;
    }
    if (mom) CU(cudaMemcpy(mom, G->mom, t->P * 4, cudaMemcpyDeviceToHost), "copying the moments out");
    if (vel) CU(cudaMemcpy(vel, G->vel, t->P * 4, cudaMemcpyDeviceToHost), "copying the moments out");
    return LASP_OK;
}

lasp_status lasp_trainer_gpu_scatter(lasp_trainer *t, const float *params, const float *mom, const float *vel) {
    lasp_trainer_gpu *G = t->gpu;
    if (params_sharded(t)) { /* this rank's chunks from the host array; the units gathered again */
        LASP_TRY(slice_all(t, params, G->pshard));
        slots_stale(G);
    } else {
        LASP_TRY(lasp_gmodel_set_params(G->m, params));
        if (G->pshard) LASP_TRY(slice_all(t, lasp_gmodel_params(G->m), G->pshard));
    }
    float *dst[2] = {G->mom, G->vel};
    const float *src[2] = {mom, vel};
    for (int k = 0; k < 2; k++) {
        /* all on the model's stream, in order: the zeroing before the copies that land on it */
        if (!src[k]) {
            CU(cudaMemsetAsync(dst[k], 0, t->S * 4, G->stream), "zeroing the moments");
        } else if (!G->pshard) {
            CU(cudaMemcpyAsync(dst[k], src[k], t->P * 4, cudaMemcpyHostToDevice, G->stream), "copying the moments in");
        } else { /* this rank's chunk of each unit (zero past its end), from the host arrays */
            LASP_TRY(slice_all(t, src[k], dst[k]));
        }
    }
    CU(cudaStreamSynchronize(G->stream), "the shards");
    return LASP_OK;
}
