/* rng.h — a small, fast, seedable generator (xoshiro256**): reproducible data, init and tests. */
#ifndef LASP_CORE_RNG_H
#define LASP_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_rng {
    uint64_t s[4];
} lasp_rng;

void lasp_rng_seed(lasp_rng *r, uint64_t seed);
/* Stream `stream` of `seed`: unrelated to every other (seed, stream) pair, so that the pieces of one
 * buffer can be drawn in parallel and still give the same numbers whatever the number of threads. */
void lasp_rng_seed_stream(lasp_rng *r, uint64_t seed, uint64_t stream);
uint64_t lasp_rng_u64(lasp_rng *r);
double lasp_rng_uniform(lasp_rng *r);             /* [0, 1) */
double lasp_rng_normal(lasp_rng *r);              /* standard normal */
uint64_t lasp_rng_below(lasp_rng *r, uint64_t n); /* [0, n), n > 0 */
/* out[i] = sd · N(0, 1) for i < n, by the ziggurat method: exact, and mostly one draw per value
 * (lasp_rng_normal costs two draws, a log and a cos). Not the same numbers as lasp_rng_normal. */
void lasp_rng_fill_normal(lasp_rng *r, float *out, size_t n, double sd);

#ifdef __cplusplus
}
#endif

#endif
