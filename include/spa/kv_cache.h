/* spa: one sequence's KV cache (runtime/kv_cache.c), in backend memory.
 *
 * IEEE half, as llama.cpp keeps it: half the memory and half the reads of attention, which at
 * 2048 positions reads more bytes a token than the default shape's weights. Each KV head's
 * positions are contiguous, (block, KV head, position, head_dim), so attention reads one
 * head's keys, then its values, as one sequential stream (rows a whole cache row apart left it
 * waiting on memory latency). A key or value of 65520 or more in magnitude would be an
 * infinity in half and turn attention, and every later token, to NaN: the backend's kv_store
 * reports it and the step fails instead. */
#ifndef SPA_KV_CACHE_H
#define SPA_KV_CACHE_H

#include <stdint.h>

struct spa_backend;

struct spa_kv_cache {
	struct spa_backend *be;  /* where k and v live (borrowed) */
	uint16_t *k;             /* (n_layers, n_kv_heads, n_ctx, head_dim): backend address */
	uint16_t *v;             /* the same for the values */
	uint32_t n_layers, n_kv_heads, n_ctx, head_dim;
};

/* The cache's largest length: keeps every size product far from overflow. */
#define SPA_KV_CACHE_MAX_CTX (1u << 24)

/* Allocate a zeroed cache of n_ctx positions on be. Returns 0, -SPA_EUSAGE (a size of 0 or
 * n_ctx above SPA_KV_CACHE_MAX_CTX) or -ENOMEM (kv is then zeroed: fini is safe). Not on the
 * hot path. */
int spa_kv_cache_init(struct spa_kv_cache *kv, struct spa_backend *be, uint32_t n_layers,
		      uint32_t n_kv_heads, uint32_t n_ctx, uint32_t head_dim);
/* Free what init allocated; a zeroed kv does nothing. */
void spa_kv_cache_fini(struct spa_kv_cache *kv);
/* Bytes of both halves. */
uint64_t spa_kv_cache_size(const struct spa_kv_cache *kv);

/* Block l's KV head h in base (kv->k or kv->v): its n_ctx rows of head_dim halves. A backend
 * address. Hot path. */
static inline uint16_t *spa_kv_cache_head(const struct spa_kv_cache *kv, uint16_t *base,
					  uint32_t l, uint32_t h)
{
	return base + ((uint64_t)l * kv->n_kv_heads + h) * kv->n_ctx * kv->head_dim;
}

#endif
