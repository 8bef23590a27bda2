/* rng.c — xoshiro256** seeded through splitmix64 (both public-domain algorithms by Vigna). */
#include "core/rng.h"

#include <math.h>
#include <pthread.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void lasp_rng_seed(lasp_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

void lasp_rng_seed_stream(lasp_rng *r, uint64_t seed, uint64_t stream) {
    /* the seed is hashed before the stream goes in: seed ^ stream alone would give (s, 1) and (s ^ 1, 0)
     * the same numbers */
    uint64_t x = seed;
    x = splitmix64(&x) ^ stream;
    lasp_rng_seed(r, splitmix64(&x));
}

/* static, so that lasp_rng_fill_normal inlines it (the exported functions of a -fPIC build are not) */
static uint64_t next(lasp_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

static double uniform(lasp_rng *r) { return (double)(next(r) >> 11) * 0x1.0p-53; }

uint64_t lasp_rng_u64(lasp_rng *r) { return next(r); }

double lasp_rng_uniform(lasp_rng *r) { return uniform(r); }

double lasp_rng_normal(lasp_rng *r) {
    double u1 = lasp_rng_uniform(r), u2 = lasp_rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

uint64_t lasp_rng_below(lasp_rng *r, uint64_t n) {
    /* rejection keeps the draw unbiased */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = lasp_rng_u64(r);
    while (x >= limit);
    return x % n;
}

/* The ziggurat of Marsaglia and Tsang (2000), 256 layers of equal area v under the half-normal density
 * f(x) = exp(−x²/2): layer 0 is [0, R] × [0, f(R)] with the tail beyond R, layer i ≥ 1 is
 * [0, x_i] × [f(x_i), f(x_{i+1})]. A point uniform in a random layer lies under the curve for certain
 * when x < x_{i+1} (~99% of draws); otherwise it is tested against f, or drawn from the tail. */
#define ZIG_R 3.6541528853610088  /* where the tail starts with 256 layers (Marsaglia and Tsang's value) */
static double zig_x[257], zig_f[257];
static pthread_once_t zig_once = PTHREAD_ONCE_INIT;

/* x_i from R alone: v is the area of the base layer, each next x_i gives its layer area v too */
static void zig_tables(void) {
    const double fR = exp(-0.5 * ZIG_R * ZIG_R), v = ZIG_R * fR + sqrt(M_PI / 2) * erfc(ZIG_R / sqrt(2.0));
    zig_x[0] = v / fR, zig_x[1] = ZIG_R, zig_x[256] = 0;
    for (int i = 1; i < 255; i++) zig_x[i + 1] = sqrt(-2.0 * log(v / zig_x[i] + exp(-0.5 * zig_x[i] * zig_x[i])));
    for (int i = 0; i < 257; i++) zig_f[i] = exp(-0.5 * zig_x[i] * zig_x[i]);
}

void lasp_rng_fill_normal(lasp_rng *r, float *out, size_t n, double sd) {
    pthread_once(&zig_once, zig_tables);
    lasp_rng g = *r;  /* a local copy stays in registers */
    for (size_t k = 0; k < n; k++) {
        double z;
        for (;;) {
            /* disjoint bits of one draw: layer 0..7, sign 8, position 11..63 */
            const uint64_t u = next(&g);
            const int i = (int)(u & 255);
            const double s = (double)(1 - (int)((u >> 7) & 2)), x = (double)(int64_t)(u >> 11) * 0x1.0p-53 * zig_x[i];
            if (x < zig_x[i + 1]) {
                z = s * x;
                break;
            }
            if (i == 0) {  /* the tail beyond R (Marsaglia 1964) */
                double a, b;
                do {
                    a = -log(1.0 - uniform(&g)) / ZIG_R;
                    b = -log(1.0 - uniform(&g));
                } while (2 * b < a * a);
                z = s * (ZIG_R + a);
                break;
            }
            if (zig_f[i] + uniform(&g) * (zig_f[i + 1] - zig_f[i]) < exp(-0.5 * x * x)) {
                z = s * x;
                break;
            }
        }
        out[k] = (float)(sd * z);
    }
    *r = g;
}
