/* spa: the CPU decode engine (runtime/engine.c): the Llama forward pass of RUNTIME.md §2.
 *
 * An engine owns the KV cache and every activation buffer, allocated at create, so that
 * spa_engine_forward never allocates. One sequence at a time; not thread-safe (the pool runs
 * inside it). Hooks let the methods of RUNTIME.md §4 change the forward pass (LoRA deltas on
 * q and v, adapter deltas after attention and after the FFN); they are called on the hot path. */
#ifndef SPA_ENGINE_H
#define SPA_ENGINE_H

#include <stdint.h>

#include "model.h"
#include "pool.h"

struct spa_engine_hooks {
	void *ctx;
	/* LoRA: x = attention RMSNorm output of block `layer` for n_tok positions (n_tok x H,
	 * row-major). Fill dq (n_tok x H) and dv (n_tok x kv_dim); they are added to the q and v
	 * projections before RoPE. NULL: no LoRA. Return 0 or a negative code (aborts forward). */
	int (*lora)(void *ctx, uint32_t layer, uint32_t n_tok, const float *x, float *dq, float *dv);
	/* Adapter: h = output of the attention (after attn_output, which = 0) or of the FFN (after
	 * ffn_down, which = 1) of block `layer`, n_tok x H. Fill delta (n_tok x H), added to h
	 * before the residual add. NULL: no adapter. */
	int (*adapter)(void *ctx, uint32_t layer, uint32_t which, uint32_t n_tok, const float *h,
		       float *delta);
};

struct spa_engine;

/* n_ctx: positions the KV cache holds; max_batch: most positions per forward call. pool may be
 * NULL (single thread) and is borrowed. Returns 0, -ENOMEM, or -SPA_EUSAGE. */
int spa_engine_create(struct spa_engine **out, const struct spa_model *m, uint32_t n_ctx,
		      uint32_t max_batch, struct spa_pool *pool);
void spa_engine_destroy(struct spa_engine *e);
/* Forget the sequence (position back to 0). */
void spa_engine_reset(struct spa_engine *e);
/* Positions in the cache. */
uint32_t spa_engine_pos(const struct spa_engine *e);

/* Run n_tok tokens (1..max_batch) at positions pos..pos+n_tok-1, pos = spa_engine_pos(e), and
 * advance. hooks may be NULL. Returns 0, -SPA_EUSAGE (batch too big, cache full, token id out
 * of range), or a hook's error. After it, for the LAST position of the batch:
 *   spa_engine_final(e):  f = RMSNorm_final(y_{L-1})           (H floats)
 *   spa_engine_resid(e):  e, y_0, ..., y_{L-1}                  ((L+1) x H floats)
 * Both stay valid until the next forward. */
int spa_engine_forward(struct spa_engine *e, const int32_t *tokens, uint32_t n_tok,
		       const struct spa_engine_hooks *hooks);
const float *spa_engine_final(const struct spa_engine *e);
const float *spa_engine_resid(const struct spa_engine *e);

/* logits[V] = LM_head z[H]. */
void spa_engine_logits(struct spa_engine *e, const float *z, float *logits);

#endif
