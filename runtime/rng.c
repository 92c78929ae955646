/* spa: the project's random numbers (see include/spa/rng.h): xoshiro256** (Blackman & Vigna),
 * its state seeded by splitmix64. */
#include "spa/rng.h"

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

void spa_rng_seed(struct spa_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x); /* never all zero: splitmix64 is a bijection of x */
}

uint64_t spa_rng_next(struct spa_rng *r)
{
	uint64_t *s = r->s;
	uint64_t res = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

float spa_rng_uniform(struct spa_rng *r)
{
	/* top 24 bits (the best ones of xoshiro), k * 2^-23 - 1 is exact in a float */
	return (float)(spa_rng_next(r) >> 40) * 0x1.0p-23f - 1.0f;
}
