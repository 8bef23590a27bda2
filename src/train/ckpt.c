/* ckpt.c — see ckpt.h. Every field is checked on load, with the value found in the message. */
#include "train/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fs.h"

#define HEADER_BYTES 256

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}
#define FNV0 0xcbf29ce484222325ULL

/* Field-by-field (de)serialisation at fixed offsets: no struct padding in the file format. */
typedef struct cursor {
    uint8_t *p;
    size_t off;
} cursor;
static void put(cursor *c, const void *x, size_t n) { memcpy(c->p + c->off, x, n), c->off += n; }
static void get(cursor *c, void *x, size_t n) { memcpy(x, c->p + c->off, n), c->off += n; }

static void header_io(cursor *c, lasp_ckpt_meta *m, uint64_t *payload_sum, int write) {
    void (*io)(cursor *, void *, size_t) = write ? (void (*)(cursor *, void *, size_t))put : get;
    io(c, &m->model.vocab, 4), io(c, &m->model.d_model, 4), io(c, &m->model.n_layers, 4);
    io(c, &m->model.n_heads, 4), io(c, &m->model.ffn_dim, 4), io(c, &m->model.conv, 4);
    io(c, &m->step, 8), io(c, &m->cursor, 8), io(c, &m->seed, 8), io(c, m->rng.s, 32);
    io(c, &m->data_kind, 4), io(c, &m->n_pairs, 4), io(c, &m->batch, 8), io(c, &m->seq_len, 8);
    io(c, &m->dp, 4), io(c, &m->sp, 4), io(c, &m->zero, 4), io(c, &m->n_params, 8), io(c, payload_sum, 8);
}

lasp_status lasp_ckpt_save(const char *dir, const lasp_ckpt_meta *meta, const float *params, const float *mom,
                           const float *vel, lasp_err *err) {
    LASP_TRY(lasp_mkdir_p(dir, err));
    const size_t n = (size_t)meta->n_params;
    const float *arrays[3] = {params, mom, vel};
    uint64_t sum = FNV0;
    for (int k = 0; k < 3; k++) sum = fnv1a(sum, arrays[k], n * sizeof(float));
    uint8_t hdr[HEADER_BYTES] = {0};
    cursor c = {hdr, 0};
    uint32_t version = LASP_CKPT_VERSION, hbytes = HEADER_BYTES;
    put(&c, LASP_CKPT_MAGIC, 8), put(&c, &version, 4), put(&c, &hbytes, 4);
    lasp_ckpt_meta m = *meta;
    header_io(&c, &m, &sum, 1);
    const uint64_t hsum = fnv1a(FNV0, hdr, HEADER_BYTES - 8);
    memcpy(hdr + HEADER_BYTES - 8, &hsum, 8);

    char tmp[4200], final[4200];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, LASP_CKPT_FILE);
    snprintf(final, sizeof final, "%s/%s", dir, LASP_CKPT_FILE);
    FILE *f = fopen(tmp, "wb");
    if (!f) return lasp_fail(err, LASP_ERR_IO, "cannot write checkpoint %s: %s", tmp, strerror(errno));
    int ok = fwrite(hdr, 1, HEADER_BYTES, f) == HEADER_BYTES;
    for (int k = 0; k < 3 && ok; k++) ok = fwrite(arrays[k], sizeof(float), n, f) == n;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, final) != 0) {
        const int e = errno;
        unlink(tmp);
        return lasp_fail(err, LASP_ERR_IO, "writing checkpoint %s failed: %s%s", final, strerror(e),
                         e == ENOSPC || e == EDQUOT ? " (hint: free some disk space, or --ckpt on another disk)" : "");
    }
    const int dfd = open(dir, O_RDONLY);  /* make the rename itself durable */
    if (dfd >= 0) fsync(dfd), close(dfd);
    return LASP_OK;
}

lasp_status lasp_ckpt_dir_check(const char *dir, lasp_err *err) {
    if (!dir || !*dir) return lasp_fail(err, LASP_ERR_ARG, "no checkpoint directory given");
    struct stat st;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, LASP_CKPT_FILE);
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return lasp_fail(err, LASP_ERR_IO, "checkpoint directory %s is not a directory", dir);
        if (access(dir, W_OK) != 0)
            return lasp_fail(err, LASP_ERR_IO, "checkpoint directory %s is not writable: %s", dir, strerror(errno));
        if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
            return lasp_fail(err, LASP_ERR_IO, "%s is not a file (a directory?): a checkpoint could never be written "
                             "there (hint: another --ckpt, or remove it)", path);
    }
    return LASP_OK;
}

lasp_status lasp_ckpt_load(const char *dir, lasp_ckpt_meta *meta, float **params, float **mom, float **vel,
                           lasp_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, LASP_CKPT_FILE);
    FILE *f = fopen(path, "rb");
    if (!f)
        return lasp_fail(err, LASP_ERR_IO, "cannot open checkpoint %s: %s (hint: --ckpt names the directory a "
                         "training run wrote)", path, strerror(errno));
    struct stat st;
    fstat(fileno(f), &st);
    if (S_ISDIR(st.st_mode)) {
        fclose(f);
        return lasp_fail(err, LASP_ERR_IO, "%s is a directory, not a checkpoint file (hint: --ckpt names the directory "
                         "that holds %s)", path, LASP_CKPT_FILE);
    }
    uint8_t hdr[HEADER_BYTES];
    lasp_status s = LASP_OK;
    float *arr[3] = {NULL, NULL, NULL};
    if (fread(hdr, 1, HEADER_BYTES, f) != HEADER_BYTES) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "checkpoint %s is truncated: %lld bytes, shorter than its %d-byte header",
                      path, (long long)st.st_size, HEADER_BYTES);
        goto out;
    }
    if (memcmp(hdr, LASP_CKPT_MAGIC, 8)) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "%s is not a lasp checkpoint (magic '%.8s', expected '%s')", path,
                      (const char *)hdr, LASP_CKPT_MAGIC);
        goto out;
    }
    cursor c = {hdr, 8};
    uint32_t version, hbytes;
    get(&c, &version, 4), get(&c, &hbytes, 4);
    if (version != LASP_CKPT_VERSION || hbytes != HEADER_BYTES) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "checkpoint %s has format version %u (header %u bytes); this build reads "
                      "version %d (hint: version 1 predates the short convolution; train again)", path, version,
                      hbytes, LASP_CKPT_VERSION);
        goto out;
    }
    uint64_t hsum;
    memcpy(&hsum, hdr + HEADER_BYTES - 8, 8);
    if (hsum != fnv1a(FNV0, hdr, HEADER_BYTES - 8)) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "checkpoint %s: the header is corrupt (checksum mismatch)", path);
        goto out;
    }
    uint64_t sum;
    header_io(&c, meta, &sum, 0);
    s = lasp_model_config_check(&meta->model, err);
    if (s != LASP_OK) {
        lasp_fail_prefix(err, "checkpoint %s: ", path);
        goto out;
    }
    lasp_layout lay;
    if ((s = lasp_layout_make(&meta->model, &lay, err)) != LASP_OK) goto out;
    const size_t n = lay.n_params;
    lasp_layout_free(&lay);
    if (meta->n_params != n || meta->step < 0 || meta->batch < 1 || meta->seq_len < 1 || meta->zero < 0 ||
        meta->zero > 3 || meta->dp < 1 || meta->sp < 1 || meta->data_kind < 0 || meta->data_kind > 2) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "checkpoint %s: inconsistent header (n_params %llu for a model of %zu, "
                      "step %lld, batch %lld, seq_len %lld, zero %d, dp %d, sp %d, data kind %d)", path,
                      (unsigned long long)meta->n_params, n, (long long)meta->step, (long long)meta->batch,
                      (long long)meta->seq_len, meta->zero, meta->dp, meta->sp, meta->data_kind);
        goto out;
    }
    const long long want = HEADER_BYTES + 3LL * (long long)n * 4;
    if ((long long)st.st_size != want) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "checkpoint %s is %s: %lld bytes, expected %lld for %zu parameters", path,
                      (long long)st.st_size < want ? "truncated" : "too long", (long long)st.st_size, want, n);
        goto out;
    }
    uint64_t got = FNV0;
    for (int k = 0; k < 3; k++) {
        if (!(arr[k] = malloc(n * sizeof(float)))) {
            s = lasp_fail(err, LASP_ERR_NOMEM, "no memory to load checkpoint %s", path);
            goto out;
        }
        if (fread(arr[k], sizeof(float), n, f) != n) {
            s = lasp_fail(err, LASP_ERR_IO, "short read of checkpoint %s", path);
            goto out;
        }
        got = fnv1a(got, arr[k], n * sizeof(float));
    }
    if (got != sum) {
        s = lasp_fail(err, LASP_ERR_FORMAT, "checkpoint %s is corrupt: payload checksum %016llx, header says %016llx",
                      path, (unsigned long long)got, (unsigned long long)sum);
        goto out;
    }
    *params = arr[0], arr[0] = NULL;
    if (mom) *mom = arr[1], arr[1] = NULL;
    if (vel) *vel = arr[2], arr[2] = NULL;
out:
    fclose(f);
    free(arr[0]), free(arr[1]), free(arr[2]);
    return s;
}
