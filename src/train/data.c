/* data.c — see data.h. */
#include "train/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/rng.h"

/* llm.c's token shards: a header of 256 int32 (magic, version, token count, …), then the tokens */
#define SHARD_MAGIC_U16 20240520
#define SHARD_VERSION_U16 1
#define SHARD_MAGIC_U32 20240801
#define SHARD_VERSION_U32 7
#define SHARD_HEADER_BYTES (256 * 4)

const char *lasp_data_kind_name(lasp_data_kind k) {
    switch (k) {
    case LASP_DATA_RECALL: return "recall";
    case LASP_DATA_TEXT: return "text";
    case LASP_DATA_SHARD: return "shard";
    }
    return "?";
}

static lasp_status recall_init(uint64_t seed, int32_t n_pairs, lasp_data *out, lasp_err *err) {
    if (n_pairs < 1 || n_pairs > LASP_RECALL_N_KEYS)
        return lasp_fail(err, LASP_ERR_ARG, "--recall-pairs %d is out of range 1..%d (the task has %d distinct keys)",
                         n_pairs, LASP_RECALL_N_KEYS, LASP_RECALL_N_KEYS);
    out->kind = LASP_DATA_RECALL, out->seed = seed, out->n_pairs = n_pairs;
    out->max_token = LASP_RECALL_VAL0 + LASP_RECALL_N_VALUES - 1;
    return LASP_OK;
}

void lasp_data_free(lasp_data *d) {
    if (!d) return;
    free(d->tokens);
    free(d);
}

lasp_data_info lasp_data_get_info(const lasp_data *d) {
    lasp_data_info i = {0};
    if (d) i = (lasp_data_info){d->kind, d->n_pairs, d->n_tokens, d->n_train, d->max_token};
    return i;
}

/* Whether a file's first bytes look like a shard's header, valid or not: a date-like magic, or a token count
 * that, with a width of 2 or 4 bytes, is the file's size. Text (ASCII or UTF-8) is neither. */
static int looks_like_shard(const int32_t *hdr, size_t size) {
    const int64_t n = hdr[2];
    return (hdr[0] >= 20000000 && hdr[0] <= 20991231) ||
           (n > 0 && (SHARD_HEADER_BYTES + 2 * n == (int64_t)size || SHARD_HEADER_BYTES + 4 * n == (int64_t)size));
}

/* The shard's token width (2 or 4), or 0 with the reason in err. */
static size_t shard_width(const char *path, const int32_t *hdr, size_t size, int forced, lasp_err *err) {
    const size_t width = hdr[0] == SHARD_MAGIC_U16 ? 2 : hdr[0] == SHARD_MAGIC_U32 ? 4 : 0;
    if (!width) {
        lasp_fail(err, LASP_ERR_FORMAT, "%s %s but its magic is %d, not %d (uint16 tokens) or %d (uint32) (hint: %s)",
                  path, forced ? "was read as an llm.c token shard (--data-format shard)"
                               : "looks like an llm.c token shard",
                  hdr[0], SHARD_MAGIC_U16, SHARD_MAGIC_U32,
                  forced ? "--data-format auto or text for a text file"
                         : "a damaged shard; --data-format text reads any file as bytes");
        return 0;
    }
    const int32_t version = width == 2 ? SHARD_VERSION_U16 : SHARD_VERSION_U32;
    if (hdr[1] != version) {
        lasp_fail(err, LASP_ERR_FORMAT, "token shard %s: version %d with magic %d, expected version %d", path, hdr[1],
                  hdr[0], version);
        return 0;
    }
    const int64_t n = hdr[2];
    if (n < 1 || (size - SHARD_HEADER_BYTES) / width != (size_t)n || (size - SHARD_HEADER_BYTES) % width) {
        lasp_fail(err, LASP_ERR_FORMAT, "token shard %s: header says %lld tokens of %zu bytes but the file holds %zu "
                  "bytes after the header (hint: truncated or not an llm.c shard)", path, (long long)n, width,
                  size - SHARD_HEADER_BYTES);
        return 0;
    }
    return width;
}

static lasp_status open_init(const char *path, lasp_data_format format, double val_frac, lasp_data *out,
                             lasp_err *err) {
    if (format != LASP_DATA_FORMAT_AUTO && format != LASP_DATA_FORMAT_TEXT && format != LASP_DATA_FORMAT_SHARD)
        return lasp_fail(err, LASP_ERR_ARG, "unknown data format %d (hint: auto, text or shard)", (int)format);
    if (!(val_frac >= 0 && val_frac < 1))
        return lasp_fail(err, LASP_ERR_ARG, "validation fraction %g is out of range [0, 1)", val_frac);
    FILE *f = fopen(path, "rb");
    if (!f) return lasp_fail(err, LASP_ERR_IO, "cannot open data file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return lasp_fail(err, LASP_ERR_IO, "data file %s is not a regular file", path);
    }
    const size_t size = (size_t)st.st_size;
    if (size == 0) {
        fclose(f);
        return lasp_fail(err, LASP_ERR_FORMAT, "data file %s is empty (hint: a text file or an llm.c .bin shard)", path);
    }
    uint8_t *bytes = malloc(size);
    if (!bytes) {
        fclose(f);
        return lasp_fail(err, LASP_ERR_NOMEM, "no memory for data file %s (%zu bytes)", path, size);
    }
    const size_t got = fread(bytes, 1, size, f);
    fclose(f);
    if (got != size) {
        free(bytes);
        return lasp_fail(err, LASP_ERR_IO, "short read of %s: %zu of %zu bytes", path, got, size);
    }
    int32_t hdr[3] = {0, 0, 0};
    if (size >= SHARD_HEADER_BYTES) memcpy(hdr, bytes, sizeof hdr);
    const int shard = format == LASP_DATA_FORMAT_SHARD ||
                      (format == LASP_DATA_FORMAT_AUTO && size >= SHARD_HEADER_BYTES && looks_like_shard(hdr, size));
    if (shard && size < SHARD_HEADER_BYTES) {
        free(bytes);
        return lasp_fail(err, LASP_ERR_FORMAT, "%s has %zu bytes, less than a token shard's header of %d", path, size,
                         SHARD_HEADER_BYTES);
    }
    if (shard) {
        const size_t width = shard_width(path, hdr, size, format == LASP_DATA_FORMAT_SHARD, err);
        if (!width) {
            free(bytes);
            return err ? err->status : LASP_ERR_FORMAT;
        }
        const int64_t n = hdr[2];
        out->kind = LASP_DATA_SHARD;
        out->n_tokens = (size_t)n;
        out->tokens = malloc((size_t)n * sizeof(int32_t));
        if (!out->tokens) {
            free(bytes);
            return lasp_fail(err, LASP_ERR_NOMEM, "no memory for %lld tokens", (long long)n);
        }
        const uint8_t *p = bytes + SHARD_HEADER_BYTES;
        for (int64_t i = 0; i < n; i++) {
            uint32_t t;
            if (width == 2) {
                uint16_t u;
                memcpy(&u, p + i * 2, 2);
                t = u;
            } else {
                memcpy(&t, p + i * 4, 4);
            }
            if (t > (1u << 24)) {
                free(bytes), free(out->tokens), out->tokens = NULL;
                return lasp_fail(err, LASP_ERR_FORMAT, "token shard %s: token %u at index %lld is implausibly large",
                                 path, t, (long long)i);
            }
            out->tokens[i] = (int32_t)t;
        }
    } else {
        out->kind = LASP_DATA_TEXT;
        out->n_tokens = size;
        out->tokens = malloc(size * sizeof(int32_t));
        if (!out->tokens) {
            free(bytes);
            return lasp_fail(err, LASP_ERR_NOMEM, "no memory for %zu tokens", size);
        }
        for (size_t i = 0; i < size; i++) out->tokens[i] = bytes[i];
    }
    free(bytes);
    for (size_t i = 0; i < out->n_tokens; i++)
        if (out->tokens[i] > out->max_token) out->max_token = out->tokens[i];
    out->n_train = out->n_tokens - (size_t)((double)out->n_tokens * val_frac);
    return LASP_OK;
}

/* a zeroed lasp_data filled by init; freed again if init fails */
static lasp_status make(lasp_data **out, lasp_status init_status, lasp_data *d) {
    if (init_status != LASP_OK) {
        lasp_data_free(d);
        return init_status;
    }
    *out = d;
    return LASP_OK;
}

lasp_status lasp_data_recall(uint64_t seed, int32_t n_pairs, lasp_data **out, lasp_err *err) {
    if (!out) return lasp_fail(err, LASP_ERR_ARG, "lasp_data_recall: out is NULL");
    *out = NULL;
    lasp_data *d = calloc(1, sizeof *d);
    if (!d) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the data");
    return make(out, recall_init(seed, n_pairs, d, err), d);
}

lasp_status lasp_data_open(const char *path, lasp_data_format format, double val_frac, lasp_data **out,
                           lasp_err *err) {
    if (!out || !path) return lasp_fail(err, LASP_ERR_ARG, "lasp_data_open: path or out is NULL");
    *out = NULL;
    lasp_data *d = calloc(1, sizeof *d);
    if (!d) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for the data");
    return make(out, open_init(path, format, val_frac, d, err), d);
}

lasp_status lasp_data_check(const lasp_data *d, int64_t T, lasp_err *err) {
    if (T < 1) return lasp_fail(err, LASP_ERR_ARG, "sequence length %lld must be ≥ 1", (long long)T);
    if (d->kind == LASP_DATA_RECALL) {
        if (T < 4 * (int64_t)d->n_pairs)
            return lasp_fail(err, LASP_ERR_ARG,
                             "--seq-len %lld is too short for %d recall pairs (hint: at least 4 × pairs = %d, so that "
                             "as many tokens ask as state)", (long long)T, d->n_pairs, 4 * d->n_pairs);
        return LASP_OK;
    }
    const size_t n_val = d->n_tokens - d->n_train;
    if (d->n_train < (size_t)T + 1)
        return lasp_fail(err, LASP_ERR_ARG,
                         "the data has %zu training tokens, fewer than one sample of --seq-len %lld + 1 "
                         "(hint: a shorter --seq-len or a larger file)", d->n_train, (long long)T);
    if (n_val > 0 && n_val < (size_t)T + 1)
        return lasp_fail(err, LASP_ERR_ARG,
                         "the validation split has %zu tokens, fewer than one sample of --seq-len %lld + 1 "
                         "(hint: a larger --val-frac, or --val-frac 0 for none)", n_val, (long long)T);
    return LASP_OK;
}

static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Recall sample g of a split, T+1 tokens: pairs "k1 v1 … kP vP", then "k v" questions to the end. */
static void recall_sample(const lasp_data *d, int split, uint64_t g, int64_t T, int32_t *s) {
    lasp_rng r;
    lasp_rng_seed(&r, mix(d->seed ^ mix((uint64_t)split * 0x100000001b3ULL ^ mix(g))));
    const int P = d->n_pairs;
    int32_t keys[LASP_RECALL_N_KEYS], vals[LASP_RECALL_N_KEYS];
    for (int i = 0; i < LASP_RECALL_N_KEYS; i++) keys[i] = LASP_RECALL_KEY0 + i;
    for (int i = 0; i < P; i++) {  /* P distinct keys: a partial Fisher–Yates shuffle */
        const int j = i + (int)lasp_rng_below(&r, (uint64_t)(LASP_RECALL_N_KEYS - i));
        const int32_t t = keys[i];
        keys[i] = keys[j], keys[j] = t;
        vals[i] = LASP_RECALL_VAL0 + (int32_t)lasp_rng_below(&r, LASP_RECALL_N_VALUES);
        s[2 * i] = keys[i], s[2 * i + 1] = vals[i];
    }
    for (int64_t p = 2 * P; p + 1 <= T; p += 2) {
        const int i = (int)lasp_rng_below(&r, (uint64_t)P);
        s[p] = keys[i], s[p + 1] = vals[i];
    }
    if ((T + 1 - 2 * P) % 2) s[T] = keys[lasp_rng_below(&r, (uint64_t)P)];
}

lasp_status lasp_data_batch(const lasp_data *d, int split, uint64_t first, int64_t B, int64_t T, int dp_rank,
                            int dp_size, int sp_rank, int sp_size, int32_t *tok, int32_t *tgt, uint8_t *mask,
                            lasp_err *err) {
    if (B % dp_size)
        return lasp_fail(err, LASP_ERR_ARG, "batch %lld is not divisible by dp = %d", (long long)B, dp_size);
    if (T % sp_size)
        return lasp_fail(err, LASP_ERR_ARG, "sequence length %lld is not divisible by sp = %d", (long long)T, sp_size);
    const int64_t Bl = B / dp_size, Tl = T / sp_size, t0 = (int64_t)sp_rank * Tl;
    int32_t *s = NULL;
    if (d->kind == LASP_DATA_RECALL && !(s = malloc((size_t)(T + 1) * sizeof *s)))
        return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a sample of %lld tokens", (long long)T);
    size_t a = 0, b = d->n_train;
    if (split == LASP_SPLIT_VAL) a = d->n_train, b = d->n_tokens;
    for (int64_t i = 0; i < Bl; i++) {
        const uint64_t g = first + (uint64_t)(dp_rank * Bl + i);
        const int32_t *src;
        if (d->kind == LASP_DATA_RECALL) {
            recall_sample(d, split, g, T, s);
            src = s;
        } else {
            if (b - a < (size_t)T + 1) {
                free(s);
                return lasp_fail(err, LASP_ERR_ARG, "the %s split is shorter than one sample of %lld tokens",
                                 split == LASP_SPLIT_VAL ? "validation" : "training", (long long)T + 1);
            }
            const uint64_t windows = (b - a - 1) / (uint64_t)T;  /* windows of T+1 overlapping by one token */
            src = d->tokens + a + (g % windows) * (uint64_t)T;
        }
        for (int64_t t = 0; t < Tl; t++) {
            tok[i * Tl + t] = src[t0 + t];
            tgt[i * Tl + t] = src[t0 + t + 1];
            if (mask) {
                const int64_t p = t0 + t, q = p - 2 * (int64_t)d->n_pairs;
                mask[i * Tl + t] = d->kind != LASP_DATA_RECALL || (q >= 0 && q % 2 == 0);
            }
        }
    }
    free(s);
    return LASP_OK;
}
