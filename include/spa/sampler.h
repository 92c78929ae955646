/* spa: token sampling (runtime/sampler.c): greedy, or temperature / top-k / top-p with a seed.
 * Deterministic: the same logits, parameters and seed give the same tokens on every machine. */
#ifndef SPA_SAMPLER_H
#define SPA_SAMPLER_H

#include <stdint.h>

struct spa_sampler_params {
	float temp;      /* 0: greedy (argmax, lowest index on ties) */
	uint32_t top_k;  /* 0: off */
	float top_p;     /* 1.0 (or >= 1): off */
	uint64_t seed;
};

struct spa_sampler;

/* Allocates scratch for n_vocab; returns 0, -ENOMEM or -SPA_EUSAGE (bad parameters). */
int spa_sampler_create(struct spa_sampler **out, uint32_t n_vocab,
		       const struct spa_sampler_params *p);
void spa_sampler_destroy(struct spa_sampler *s);
/* Pick a token from logits[n_vocab] (logits may be overwritten). Hot path: no allocation. */
int32_t spa_sampler_sample(struct spa_sampler *s, float *logits);

#endif
