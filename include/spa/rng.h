/* spa: the project's random numbers (runtime/rng.c): xoshiro256** (Blackman & Vigna), its
 * state seeded by splitmix64. Deterministic: a seed gives the same sequence on every machine
 * (the sampler's draws, the generators' weights, the links' fault injection, the tests'
 * inputs). A struct spa_rng is caller memory, used by one thread at a time; no function here
 * allocates, locks or blocks (fine on the hot path). */
#ifndef SPA_RNG_H
#define SPA_RNG_H

#include <stdint.h>

struct spa_rng { uint64_t s[4]; };

/* Seed r: its four state words are splitmix64's first four outputs from seed (never all
 * zero). */
void spa_rng_seed(struct spa_rng *r, uint64_t seed);
/* The next 64 random bits. */
uint64_t spa_rng_next(struct spa_rng *r);
/* Uniform float in [-1, 1): the top 24 bits of spa_rng_next, k * 2^-23 - 1. */
float spa_rng_uniform(struct spa_rng *r);

#endif
