/* rng.h — a small, fast, seedable generator (xoshiro256**): reproducible data, init and tests. */
#ifndef LASP_CORE_RNG_H
#define LASP_CORE_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lasp_rng {
    uint64_t s[4];
} lasp_rng;

void lasp_rng_seed(lasp_rng *r, uint64_t seed);
uint64_t lasp_rng_u64(lasp_rng *r);
double lasp_rng_uniform(lasp_rng *r);             /* [0, 1) */
double lasp_rng_normal(lasp_rng *r);              /* standard normal */
uint64_t lasp_rng_below(lasp_rng *r, uint64_t n); /* [0, n), n > 0 */

#ifdef __cplusplus
}
#endif

#endif
