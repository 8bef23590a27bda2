/* test_npy.c — .npy reading and writing: round trips, and every malformed file refused with a
 * message that names the file and what was wrong. */
#include <math.h>
#include <string.h>

#include "core/npy.h"
#include "test.h"

static char dir[] = "/tmp/lasp-test-npy-XXXXXX";

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

/* Write raw bytes: a header dict (padded to the v1 rules) followed by `data_bytes` bytes. */
static void write_raw(const char *name, int version, const char *dict, size_t data_bytes, int bad_magic) {
    char path[512];
    path_of(path, sizeof path, name);
    FILE *f = fopen(path, "wb");
    size_t pre = version == 1 ? 10 : 12, len = strlen(dict) + 1, pad = (64 - (pre + len) % 64) % 64;
    size_t hlen = len + pad;
    fwrite(bad_magic ? "\x93NUMPZ" : "\x93NUMPY", 1, 6, f);
    unsigned char v[2] = {(unsigned char)version, 0};
    fwrite(v, 1, 2, f);
    if (version == 1) {
        unsigned char l[2] = {(unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
        fwrite(l, 1, 2, f);
    } else {
        unsigned char l[4] = {(unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8), 0, 0};
        fwrite(l, 1, 4, f);
    }
    fwrite(dict, 1, strlen(dict), f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    for (size_t i = 0; i < data_bytes; i++) fputc((int)(i * 7), f);
    fclose(f);
}

static void expect_reject(const char *name, lasp_status want, const char *needle) {
    char path[512];
    path_of(path, sizeof path, name);
    lasp_npy a;
    lasp_err err = {0};
    lasp_status s = lasp_npy_read(path, &a, &err);
    CHECK(s == want, "%s: status %s, expected %s (%s)", name, lasp_status_string(s), lasp_status_string(want), err.msg);
    CHECK(strstr(err.msg, needle) != NULL, "%s: message '%s' does not mention '%s'", name, err.msg, needle);
    CHECK(strstr(err.msg, name) != NULL, "%s: message '%s' does not name the file", name, err.msg);
    CHECK(a.data == NULL, "%s: data left allocated after a failure", name);
    test_case("npy rejects %s (%s)", name, needle);
}

int main(void) {
    test_seed();
    if (!mkdtemp(dir)) return 1;
    char path[512];

    /* round trips */
    const int64_t shape[4] = {2, 3, 1, 5};
    float x[30];
    double y[30];
    for (int i = 0; i < 30; i++) x[i] = (float)i * 0.25f - 3.0f, y[i] = sin(i) * 1e300;
    lasp_err err = {0};
    path_of(path, sizeof path, "x.npy");
    CHECK(lasp_npy_write(path, LASP_F32, 4, shape, x, &err) == LASP_OK, "%s", err.msg);
    lasp_npy a;
    CHECK(lasp_npy_read(path, &a, &err) == LASP_OK, "%s", err.msg);
    CHECK(a.dtype == LASP_F32 && a.ndim == 4 && a.count == 30 && a.shape[3] == 5, "shape/dtype");
    CHECK(a.data && !memcmp(a.data, x, sizeof x), "data differs");
    lasp_npy_free(&a);
    path_of(path, sizeof path, "x.npy.tmp");
    CHECK(access(path, F_OK) != 0, "temporary file left behind");
    test_case("npy f4 round trip");

    path_of(path, sizeof path, "y.npy");
    CHECK(lasp_npy_write(path, LASP_F64, 1, (int64_t[]){30}, y, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_npy_read(path, &a, &err) == LASP_OK, "%s", err.msg);
    CHECK(a.dtype == LASP_F64 && a.ndim == 1 && a.count == 30 && a.data && !memcmp(a.data, y, sizeof y), "f8");
    lasp_npy_free(&a);
    test_case("npy f8 round trip");

    path_of(path, sizeof path, "s.npy");
    CHECK(lasp_npy_write(path, LASP_F32, 0, NULL, x, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_npy_read(path, &a, &err) == LASP_OK && a.ndim == 0 && a.count == 1, "scalar: %s", err.msg);
    lasp_npy_free(&a);
    test_case("npy 0-d round trip");

    write_raw("v2.npy", 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 12, 0);
    path_of(path, sizeof path, "v2.npy");
    CHECK(lasp_npy_read(path, &a, &err) == LASP_OK && a.count == 3, "version 2 header: %s", err.msg);
    lasp_npy_free(&a);
    test_case("npy reads format version 2");

    /* rejections */
    write_raw("i4.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", 12, 0);
    expect_reject("i4.npy", LASP_ERR_FORMAT, "'<i4' is not supported");
    write_raw("be.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }", 12, 0);
    expect_reject("be.npy", LASP_ERR_FORMAT, "'>f4' is not supported");
    write_raw("fortran.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }", 24, 0);
    expect_reject("fortran.npy", LASP_ERR_FORMAT, "Fortran");
    write_raw("short.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 5), }", 79, 0);
    expect_reject("short.npy", LASP_ERR_FORMAT, "truncated");
    write_raw("long.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 5), }", 81, 0);
    expect_reject("long.npy", LASP_ERR_FORMAT, "unexpected bytes");
    write_raw("magic.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 12, 1);
    expect_reject("magic.npy", LASP_ERR_FORMAT, "not a .npy");
    write_raw("noshape.npy", 1, "{'descr': '<f4', 'fortran_order': False, }", 12, 0);
    expect_reject("noshape.npy", LASP_ERR_FORMAT, "shape");
    write_raw("badshape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, x), }", 12, 0);
    expect_reject("badshape.npy", LASP_ERR_FORMAT, "shape");
    path_of(path, sizeof path, "empty.npy");
    fclose(fopen(path, "wb"));
    expect_reject("empty.npy", LASP_ERR_FORMAT, "not a .npy");
    expect_reject("missing.npy", LASP_ERR_IO, "cannot open");

    path_of(path, sizeof path, "no-such-dir/x.npy");
    CHECK(lasp_npy_write(path, LASP_F32, 4, shape, x, &err) == LASP_ERR_IO, "write into a missing directory");
    test_case("npy write into a missing directory fails cleanly");

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    return test_exit();
}
