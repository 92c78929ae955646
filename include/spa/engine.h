/* spa: the CPU decode engine (runtime/engine.c): the Llama forward pass of RUNTIME.md §2.
 *
 * An engine owns the KV cache and every activation buffer, allocated at create, so that
 * spa_engine_forward never allocates. One sequence at a time; not thread-safe (the pool runs
 * inside it). Hooks let the methods of RUNTIME.md §4 change the forward pass (LoRA deltas on
 * q and v, adapter deltas after attention and after the FFN); they are called on the hot path. */
#ifndef SPA_ENGINE_H
#define SPA_ENGINE_H

#include <stdint.h>

#include "error.h"
#include "model.h"
#include "plugin.h"
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
 * of range), -SPA_EUNSUPPORTED (a key or value that the half KV cache would hold as an infinity:
 * 65520 or more in magnitude, past half's largest 65504; nothing advances), a streaming error (both with spa_engine_error's words), or a hook's error.
 * After it, for the LAST position of the batch:
 *   spa_engine_final(e):  f = RMSNorm_final(y_{L-1})           (H floats)
 *   spa_engine_resid(e):  e, y_0, ..., y_{L-1}                  ((L+1) x H floats)
 * Both stay valid until the next forward. */
int spa_engine_forward(struct spa_engine *e, const int32_t *tokens, uint32_t n_tok,
		       const struct spa_engine_hooks *hooks);
const float *spa_engine_final(const struct spa_engine *e);
const float *spa_engine_resid(const struct spa_engine *e);

/* logits[V] = LM_head z[H]. */
void spa_engine_logits(struct spa_engine *e, const float *z, float *logits);

/* ---- fused kernels that shorten the cloud's critical path (RUNTIME.md §3) ---- */

/* Fuse the side plugin's cloud-linear maps into the forward pass. From the next forward on,
 * for the last position of each batch:
 *   - when taps is not NULL (and cp holds in/tap weights): t_in = W_in e + b_in is written to
 *     taps[0..r) as soon as the embedding is read, and t_i = W_tap_i y_i + b_tap_i to
 *     taps[(i+1) r ..) in block i's epilogue, so the TAPS payload ((L+1) x r floats, the wire's
 *     F32) is complete when the last block ends. Same calls as spa_plugin_side_taps, so the
 *     same bits.
 *   - when cp holds the classifier: the gate W_c f + b_c right after the final RMSNorm
 *     (spa_engine_gate), bit-identical to spa_plugin_gate.
 * cp and taps are borrowed (taps: (L+1) x r floats, the caller's outgoing buffer). cp NULL
 * turns both off. Returns 0, or -SPA_EUSAGE when cp is not a side plugin for this model. */
int spa_engine_set_side(struct spa_engine *e, const struct spa_plugin *cp, float *taps);
/* After a forward with the classifier fused: sigma = argmax(W_c f + b_c) (0 or 1), the logit
 * difference l1 - l0 in *margin when not NULL; -SPA_EUSAGE when no classifier is set. */
int spa_engine_gate(const struct spa_engine *e, float *margin);

/* Greedy LM head: *tok = argmax_v (LM_head z)[v] without writing the V logits: rows split
 * across the pool, each thread keeps its best (value, lowest index) over tiles of rows that
 * stay in L1, then the per-thread bests are merged in thread order. Exactly
 * spa_argmax(spa_engine_logits(z)) (ties to the lowest index, NaNs never win), for any thread
 * count. z NULL: f of the last forward. Hot path. */
void spa_engine_head_argmax(struct spa_engine *e, const float *z, int32_t *tok);

/* ---- streaming under a memory budget ---- */

/* Load a model for engines under a weight-memory budget of mem_budget bytes (0: no budget,
 * the same as spa_model_load). When the model does not fit, the norms and the LM head are
 * read once, and every block matrix keeps the same share of its rows resident (its first
 * rows, in m->res_part; the matrix's spa_tensor.data is NULL); every engine made from the
 * model streams the other rows per token with io_uring, in pieces of about 1 MiB through a
 * ring of about 8 MiB (8 to 64 piece buffers, counted in the budget, small enough to stay in
 * the last-level cache): a matrix's streamed pieces are read while its resident rows and the
 * pieces before them compute. The token embedding is read one row per token. Results are
 * bit-identical to a fully loaded model. $SPA_STREAM_PIECE_KIB sets the piece size (1-65536
 * KiB); under a tight budget the pieces shrink otherwise. Returns 0, or -SPA_EUSAGE when the
 * budget cannot hold the LM head, the norms and the ring (err says the least budget that
 * works) or the piece size is not valid, or the loader's errors. Free with
 * spa_model_destroy. */
int spa_engine_model_load(struct spa_model **out, const char *path, uint64_t mem_budget,
			  bool show_progress, struct spa_errbuf *err);

/* The compute threads to use by default for m: one per core, or, when m streams block rows
 * (loaded under a budget it does not fit), one per core but one, left to the reads' copies
 * (with every core computing, the reads and the products take turns: measured slower than
 * one thread fewer, docs/loading.md). At least 1. */
int spa_engine_default_threads(const struct spa_model *m);

/* Why the last forward failed, when it failed for the weights' stream (a read error, a model
 * file that shrank or vanished: the message names the file and what to do; the stream stays
 * ended) or for a key or value beyond the half KV cache's range (-SPA_EUNSUPPORTED); ""
 * otherwise. */
const char *spa_engine_error(const struct spa_engine *e);

struct spa_engine_stream_stats {
	uint32_t n_streamed_blocks;   /* blocks with rows read per token (0: all resident) */
	uint64_t resident_bytes;      /* weights held by the model */
	uint64_t buffer_bytes;        /* this engine's stream buffers (the ring) */
	uint64_t bytes_per_token;     /* streamed bytes per forward (embedding row included) */
	uint64_t bytes_read;          /* since create */
	uint64_t wait_ns;             /* compute blocked waiting for reads, since create */
	uint64_t n_forward;
};
void spa_engine_stream_stats(const struct spa_engine *e, struct spa_engine_stream_stats *st);
/* Read one token's worth of streamed matrices through the stream with nothing computing (the
 * I/O time alone, for bench/decode's "hidden" figure); *ns its wall time. The stream is left
 * where it was (next token's reads queued). 0, or the read error. Not on the hot path. */
int spa_engine_stream_probe(struct spa_engine *e, uint64_t *ns);

#endif
