/* spa: the engine (runtime/engine.c): the step of the Llama forward pass of RUNTIME.md §2 over
 * contexts (include/spa/context.h), computed by their backend (include/spa/backend.h).
 *
 * A step runs one or more sequences, each with its own context, tokens and hooks: a prefill
 * chunk of one sequence, one decode position of several at different positions (the batched
 * step of a server), or both at once. It reads every weight once for all of them. Each row's
 * result has the bits it would have in a step of its own (the kernels' products give the same
 * bits for a batch as for one vector, attention computes each (row, head) alone, whatever the
 * thread count): a batch changes the speed, never the tokens.
 *
 * Hooks let the methods of RUNTIME.md §4 change the forward pass (LoRA deltas on q and v,
 * adapter deltas after attention and after the FFN). They receive host copies at the points
 * documented below, never pointers into the backend's buffers, so a device backend honours
 * them as the CPU does; they run on the hot path, on the step's thread. */
#ifndef SPA_ENGINE_H
#define SPA_ENGINE_H

#include <stdint.h>

#include "context.h"
#include "error.h"
#include "model.h"
#include "plugin.h"

struct spa_engine_hooks {
	void *ctx;
	/* LoRA: x = the attention RMSNorm output of block `layer` for the sequence's n_tok
	 * positions (n_tok x H, row-major, a host copy). Fill dq (n_tok x H) and dv (n_tok x
	 * kv_dim), zeroed before the call (host memory); the step adds them to the q and v
	 * projections before RoPE. NULL: no LoRA. Return 0 or a negative code (fails the step). */
	int (*lora)(void *ctx, uint32_t layer, uint32_t n_tok, const float *x, float *dq, float *dv);
	/* Adapter: h = the output of the attention (after attn_output, which = 0) or of the FFN
	 * (after ffn_down, which = 1) of block `layer`, n_tok x H, a host copy. Fill delta (n_tok x
	 * H, zeroed before the call), added to h before the residual add. NULL: no adapter. */
	int (*adapter)(void *ctx, uint32_t layer, uint32_t which, uint32_t n_tok, const float *h,
		       float *delta);
};

/* Run n_tok tokens (1..max_batch of the context) at positions pos..pos+n_tok-1, pos =
 * spa_context_pos(c), and advance. hooks may be NULL. Returns 0, -SPA_EUSAGE (batch too big,
 * cache full, token id out of range), -SPA_EUNSUPPORTED (a key or value that the half KV cache
 * would hold as an infinity: 65520 or more in magnitude; nothing advances), a streaming error
 * (both with spa_context_error's words), or a hook's error. After it, spa_context_final and
 * spa_context_resid hold the LAST position's f and residual record. Hot path. */
int spa_engine_forward(struct spa_context *c, const int32_t *tokens, uint32_t n_tok,
		       const struct spa_engine_hooks *hooks);

/* ---- a step over several contexts ---- */

/* One sequence's part of a step: n_tok tokens (>= 1) at positions spa_context_pos(ctx).. */
struct spa_seq {
	struct spa_context *ctx;
	const int32_t *tokens;
	uint32_t n_tok;
	const struct spa_engine_hooks *hooks; /* may be NULL */
};

/* The memory of steps over several contexts: up to max_rows rows (all sequences' tokens
 * together) of up to max_seqs sequences, for contexts over m on be. Returns 0, -SPA_EUSAGE,
 * -SPA_EUNSUPPORTED (as spa_context_create), -ENOMEM. Not on the hot path. */
struct spa_batch;
int spa_batch_create(struct spa_batch **out, const struct spa_model *m, struct spa_backend *be,
		     uint32_t max_rows, uint32_t max_seqs);
void spa_batch_destroy(struct spa_batch *b);

/* One step of seqs[0..n_seq) (distinct contexts over the batch's model and backend): every
 * weight read once for all their rows; each context's rows, cache, outputs (final, resid,
 * taps, gate) as in a spa_engine_forward of its own, bit for bit. Hooks are called sequence
 * by sequence, in order. Returns 0, or the first failure: -SPA_EUSAGE (a context twice, or not
 * over this model and backend, more rows or sequences than the batch holds, a full cache, a
 * token out of range), -SPA_EUNSUPPORTED or a streaming error (the failing context's
 * spa_context_error says why), or a hook's error. On failure no context advances (their
 * caches may hold the step's rows, which the next step overwrites): the caller may run the
 * others again without the failing one. Hot path. */
int spa_engine_step(struct spa_batch *b, const struct spa_seq *seqs, uint32_t n_seq);

/* ---- the LM head ---- */

/* logits[V] = LM_head z[H] (z and logits host memory). */
void spa_engine_logits(struct spa_context *c, const float *z, float *logits);
/* The same for n rows at once, reading the head once for all of them: logits (n x V) of z
 * (n x H), each row the bits of spa_engine_logits (spa-perplexity scores every position of a
 * batch this way). Host memory. Hot path (no allocation). */
void spa_engine_logits_rows(struct spa_context *c, const float *z, uint32_t n, float *logits);

/* Greedy LM head: *tok = argmax_v (LM_head z)[v] without writing the V logits (the backend's
 * fused head where it has one). Exactly spa_argmax(spa_engine_logits(z)) (ties to the lowest
 * index, NaNs never win), for any thread count. z NULL: f of the last step. Hot path. */
void spa_engine_head_argmax(struct spa_context *c, const float *z, int32_t *tok);
/* The same for n contexts of one batch at once, reading the head once for up to the batch's
 * max_seqs of them: tok[i] for ctxs[i] with z[i] (z NULL, or z[i] NULL: its f). Hot path. */
void spa_batch_head_argmax(struct spa_batch *b, struct spa_context *const *ctxs,
			   const float *const *z, uint32_t n, int32_t *tok);

/* The compute threads to use by default for m: one per core, or, when m streams block rows
 * (loaded under a budget it does not fit), one per core but one, left to the reads' copies
 * (with every core computing, the reads and the products take turns: measured slower than
 * one thread fewer, docs/loading.md). At least 1. */
int spa_engine_default_threads(const struct spa_model *m);

#endif
