/* npy.c — reading and writing .npy files (the format NumPy documents as "NEP 1"). */
#include "core/npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char NPY_MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

const char *lasp_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

/* Find `'key':` in the header dict and return a pointer just past the colon. */
static const char *dict_value(const char *hdr, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static lasp_status parse_header(const char *hdr, lasp_npy *a, lasp_err *err) {
    const char *d = dict_value(hdr, "descr");
    if (!d || (*d != '\'' && *d != '"'))
        return lasp_fail(err, LASP_ERR_FORMAT, "header has no 'descr' string (header: %.120s)", hdr);
    char descr[32] = {0};
    const char *end = strchr(d + 1, *d);
    if (!end || end - d - 1 >= (long)sizeof descr)
        return lasp_fail(err, LASP_ERR_FORMAT, "malformed 'descr' in header: %.120s", hdr);
    memcpy(descr, d + 1, (size_t)(end - d - 1));
    if (!strcmp(descr, "<f4")) a->dtype = LASP_F32;
    else if (!strcmp(descr, "<f8")) a->dtype = LASP_F64;
    else
        return lasp_fail(err, LASP_ERR_FORMAT,
                         "dtype '%s' is not supported (hint: save as little-endian float32, e.g. "
                         "np.save(f, x.astype('<f4')))", descr);

    const char *f = dict_value(hdr, "fortran_order");
    if (!f) return lasp_fail(err, LASP_ERR_FORMAT, "header has no 'fortran_order' (header: %.120s)", hdr);
    if (strncmp(f, "False", 5) != 0)
        return lasp_fail(err, LASP_ERR_FORMAT,
                         "Fortran-ordered arrays are not supported (hint: np.ascontiguousarray(x))");

    const char *s = dict_value(hdr, "shape");
    if (!s || *s != '(') return lasp_fail(err, LASP_ERR_FORMAT, "header has no 'shape' tuple: %.120s", hdr);
    s++;
    a->ndim = 0;
    a->count = 1;
    for (;;) {
        while (*s == ' ' || *s == ',') s++;
        if (*s == ')') break;
        char *num_end;
        errno = 0;
        long long v = strtoll(s, &num_end, 10);
        if (num_end == s || errno || v < 0)
            return lasp_fail(err, LASP_ERR_FORMAT, "malformed 'shape' in header: %.120s", hdr);
        if (a->ndim == LASP_NPY_MAX_DIMS)
            return lasp_fail(err, LASP_ERR_FORMAT, "more than %d dimensions", LASP_NPY_MAX_DIMS);
        if (v > 0 && a->count > SIZE_MAX / 16 / (size_t)v)
            return lasp_fail(err, LASP_ERR_FORMAT, "shape too large: %.120s", hdr);
        a->shape[a->ndim++] = v;
        a->count *= (size_t)v;
        s = num_end;
        while (*s == ' ') s++;
        if (*s != ',' && *s != ')')
            return lasp_fail(err, LASP_ERR_FORMAT, "malformed 'shape' in header: %.120s", hdr);
    }
    return LASP_OK;
}

static lasp_status read_file(const char *path, lasp_npy *a, lasp_err *err, FILE *fp) {
    unsigned char pre[10];
    if (fread(pre, 1, 10, fp) != 10 || memcmp(pre, NPY_MAGIC, 6) != 0)
        return lasp_fail(err, LASP_ERR_FORMAT, "not a .npy file (no \\x93NUMPY magic)");
    int major = pre[6];
    size_t hlen, pos;
    if (major == 1) {
        hlen = pre[8] | (size_t)pre[9] << 8;
        pos = 10;
    } else if (major == 2 || major == 3) {
        unsigned char b[2];
        if (fread(b, 1, 2, fp) != 2) return lasp_fail(err, LASP_ERR_FORMAT, "truncated header");
        hlen = pre[8] | (size_t)pre[9] << 8 | (size_t)b[0] << 16 | (size_t)b[1] << 24;
        pos = 12;
    } else {
        return lasp_fail(err, LASP_ERR_FORMAT, "unknown .npy format version %d", major);
    }
    if (hlen == 0 || hlen > (1u << 20)) return lasp_fail(err, LASP_ERR_FORMAT, "bad header length %zu", hlen);
    char *hdr = malloc(hlen + 1);
    if (!hdr) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for a %zu-byte header", hlen);
    if (fread(hdr, 1, hlen, fp) != hlen) {
        free(hdr);
        return lasp_fail(err, LASP_ERR_FORMAT, "truncated header (expected %zu bytes)", hlen);
    }
    hdr[hlen] = '\0';
    lasp_status st = parse_header(hdr, a, err);
    free(hdr);
    if (st) return st;
    pos += hlen;

    size_t nbytes = a->count * lasp_dtype_size(a->dtype);
    struct stat sb;
    if (fstat(fileno(fp), &sb) == 0 && S_ISREG(sb.st_mode)) {
        size_t have = (size_t)sb.st_size > pos ? (size_t)sb.st_size - pos : 0;
        if (have < nbytes)
            return lasp_fail(err, LASP_ERR_FORMAT, "truncated: the header promises %zu data bytes, the file has %zu",
                             nbytes, have);
        if (have > nbytes)
            return lasp_fail(err, LASP_ERR_FORMAT, "%zu unexpected bytes after the data", have - nbytes);
    }
    a->data = malloc(nbytes ? nbytes : 1);
    if (!a->data) return lasp_fail(err, LASP_ERR_NOMEM, "no memory for %zu bytes of data", nbytes);
    if (fread(a->data, 1, nbytes, fp) != nbytes)
        return lasp_fail(err, LASP_ERR_FORMAT, "truncated: fewer than %zu data bytes", nbytes);
    (void)path;
    return LASP_OK;
}

lasp_status lasp_npy_read(const char *path, lasp_npy *a, lasp_err *err) {
    memset(a, 0, sizeof *a);
    FILE *fp = fopen(path, "rb");
    if (!fp) return lasp_fail(err, LASP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(fp);
        return lasp_fail(err, LASP_ERR_IO, "%s is a directory, not a .npy file", path);
    }
    lasp_status st = read_file(path, a, err, fp);
    fclose(fp);
    if (st) {
        lasp_npy_free(a);
        return lasp_fail_prefix(err, "%s: ", path);
    }
    return LASP_OK;
}

void lasp_npy_free(lasp_npy *a) {
    if (!a) return;
    free(a->data);
    a->data = NULL;
}

lasp_status lasp_npy_write(const char *path, lasp_dtype dtype, int ndim, const int64_t *shape,
                           const void *data, lasp_err *err) {
    if (dtype != LASP_F32 && dtype != LASP_F64)
        return lasp_fail(err, LASP_ERR_UNSUPPORTED, "%s: can only write f32 or f64", path);
    if (ndim < 0 || ndim > LASP_NPY_MAX_DIMS)
        return lasp_fail(err, LASP_ERR_ARG, "%s: bad ndim %d", path, ndim);
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype == LASP_F32 ? "<f4" : "<f8");
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i],
                      (i + 1 < ndim) ? " " : "");
        count *= (size_t)shape[i];
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* pad with spaces so that magic + length + header is a multiple of 64, ending in '\n' */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = (size_t)n + pad + 1;
    char hdr[512];
    memcpy(hdr, dict, (size_t)n);
    memset(hdr + n, ' ', pad);
    hdr[hlen - 1] = '\n';

    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return lasp_fail(err, LASP_ERR_ARG, "path too long: %s", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) return lasp_fail(err, LASP_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    size_t nbytes = count * lasp_dtype_size(dtype);
    int ok = fwrite(pre, 1, 10, fp) == 10 && fwrite(hdr, 1, hlen, fp) == hlen &&
             fwrite(data, 1, nbytes, fp) == nbytes;
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return lasp_fail(err, LASP_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return LASP_OK;
}
