/* rng.c — xoshiro256** seeded through splitmix64 (both public-domain algorithms by Vigna). */
#include "core/rng.h"

#include <math.h>

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

uint64_t lasp_rng_u64(lasp_rng *r) {
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

double lasp_rng_uniform(lasp_rng *r) { return (double)(lasp_rng_u64(r) >> 11) * 0x1.0p-53; }

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
