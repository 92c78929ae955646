/* One sequence's KV cache in backend memory (include/spa/kv_cache.h has the layout). */
#include <errno.h>
#include <string.h>

#include "spa/drv/backend.h"
#include "spa/error.h"
#include "spa/kv_cache.h"

int spa_kv_cache_init(struct spa_kv_cache *kv, struct spa_backend *be, uint32_t n_layers,
		      uint32_t n_kv_heads, uint32_t n_ctx, uint32_t head_dim)
{
	memset(kv, 0, sizeof *kv);
	if (!be || !n_layers || !n_kv_heads || !n_ctx || !head_dim || n_ctx > SPA_KV_CACHE_MAX_CTX)
		return -SPA_EUSAGE;
	*kv = (struct spa_kv_cache){ .be = be, .n_layers = n_layers, .n_kv_heads = n_kv_heads,
				     .n_ctx = n_ctx, .head_dim = head_dim };
	const uint64_t half = spa_kv_cache_size(kv) / 2;
	void *k = NULL, *v = NULL;
	if (half > SIZE_MAX || be->ops->buffer_alloc(be, (size_t)half, false, &k) < 0 ||
	    be->ops->buffer_alloc(be, (size_t)half, false, &v) < 0) {
		if (k)
			be->ops->buffer_free(be, k);
		memset(kv, 0, sizeof *kv);
		return -ENOMEM;
	}
	kv->k = k;
	kv->v = v;
	return 0;
}

void spa_kv_cache_fini(struct spa_kv_cache *kv)
{
	if (!kv || !kv->be)
		return;
	if (kv->k)
		kv->be->ops->buffer_free(kv->be, kv->k);
	if (kv->v)
		kv->be->ops->buffer_free(kv->be, kv->v);
	memset(kv, 0, sizeof *kv);
}

uint64_t spa_kv_cache_size(const struct spa_kv_cache *kv)
{
	return 2ull * kv->n_layers * kv->n_kv_heads * kv->n_ctx * kv->head_dim * sizeof(uint16_t);
}
