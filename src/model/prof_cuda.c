/* prof_cuda.c — see prof_cuda.h. */
#include "model/prof_cuda.h"

#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MARKS 8192 /* a step marks a few dozen changes a layer; past this, the rest is not split */
#define MAX_SITES 256

struct lasp_gprof {
    cudaStream_t stream;
    cudaEvent_t ev[MAX_MARKS + 1];
    int part[MAX_MARKS + 1];
    int site[MAX_MARKS + 1];  /* index into sites, or −1 */
    int n, made;  /* events recorded this step; events created so far */
    lasp_gprof_site sites[MAX_SITES];
    int n_sites;
};

lasp_status lasp_gprof_create(void *stream, lasp_gprof **out, lasp_err *err) {
    lasp_gprof *p = calloc(1, sizeof *p);
    if (!p) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a profile");
    p->stream = (cudaStream_t)stream;
    *out = p;
    return LASP_OK;
}

void lasp_gprof_free(lasp_gprof *p) {
    if (!p) return;
    for (int i = 0; i < p->made; i++) cudaEventDestroy(p->ev[i]);
    free(p);
}

static void record(lasp_gprof *p, int part, int site) {
    if (p->n == p->made) {
        if (cudaEventCreate(&p->ev[p->n]) != cudaSuccess) return;
        p->made++;
    }
    cudaEventRecord(p->ev[p->n], p->stream);
    p->site[p->n] = site;
    p->part[p->n++] = part;
}

void lasp_gprof_mark(lasp_gprof *p, lasp_part part) {
    if (!p || (p->n && p->part[p->n - 1] == (int)part) || p->n >= MAX_MARKS) return;
    record(p, (int)part, -1);
}

void lasp_gprof_mark_at(lasp_gprof *p, lasp_part part, const char *file, int line) {
    if (!p || p->n >= MAX_MARKS) return;
    int s = 0;
    while (s < p->n_sites && !(p->sites[s].file == file && p->sites[s].line == line)) s++;
    if (s == p->n_sites) {
        if (s == MAX_SITES) s = -1;
        else p->sites[p->n_sites++] = (lasp_gprof_site){file, line, (int)part, 0};
    }
    if (p->n && p->part[p->n - 1] == (int)part && p->site[p->n - 1] == s) return;
    record(p, (int)part, s);
}

static int by_ms(const void *a, const void *b) {
    const double x = ((const lasp_gprof_site *)a)->ms, y = ((const lasp_gprof_site *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

int lasp_gprof_sites(const lasp_gprof *p, lasp_gprof_site *out, int max) {
    if (!p) return 0;
    lasp_gprof_site all[MAX_SITES];
    memcpy(all, p->sites, (size_t)p->n_sites * sizeof *all);
    qsort(all, (size_t)p->n_sites, sizeof *all, by_ms);
    const int n = p->n_sites < max ? p->n_sites : max;
    memcpy(out, all, (size_t)n * sizeof *out);
    return n;
}

lasp_status lasp_gprof_read(lasp_gprof *p, double ms[LASP_PART_COUNT], lasp_err *err) {
    if (!p || !p->n) return LASP_OK;
    record(p, -1, -1);
    cudaError_t e = cudaEventSynchronize(p->ev[p->n - 1]);
    for (int i = 0; e == cudaSuccess && i + 1 < p->n; i++) {
        float t = 0;
        e = cudaEventElapsedTime(&t, p->ev[i], p->ev[i + 1]);
        if (e == cudaSuccess && p->part[i] >= 0) ms[p->part[i]] += t;
        if (e == cudaSuccess && p->site[i] >= 0) p->sites[p->site[i]].ms += t;
    }
    p->n = 0;
    return e == cudaSuccess ? LASP_OK : lasp_fail(err, LASP_ERR_CUDA, "reading the profile's events: %s",
                                                  cudaGetErrorString(e));
}
