/* spa: the runner, generation with a plugin on the cloud (runtime/runner.c).
 *
 * The runner is the cloud's per-session state: engine, sampler, the cloud-resident part of the
 * plugin, and an exchange function through which it asks the edge (RUNTIME.md §3-4). The same
 * runner serves spa-cloud (the exchange goes over a link) and spa-run (the exchange calls the
 * edge's code in the same process): one code path, so a link can change latency, never tokens.
 *
 * Decoding: spa_runner_prefill takes the prompt and runs all of it but its last token as a batch
 * (LoRA/adapter exchanges happen batched, once per block step; the side network needs nothing
 * for positions whose logits are not needed). Each spa_runner_next then runs one position (the
 * last prompt token first), computes the logits with the method, and samples: N calls give N
 * tokens, and M = exchanges during those calls / N. */
#ifndef SPA_RUNNER_H
#define SPA_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "engine.h"
#include "model.h"
#include "plugin.h"
#include "pool.h"
#include "sampler.h"
#include "wire.h"

/* Positions per batch of a prefill (and rows per request the edge sizes for) when a caller
 * gives 0. */
#define SPA_RUNNER_DEFAULT_BATCH 64u

/* Blocking exchange with the edge: send req (TAPS, RESID, LORA_X, ADAPTER_Y) with out[n_out]
 * floats, wait for the reply's n_in floats into in. *edge_ns: the edge's compute time for it.
 * Returns 0 or a negative code (the session cannot go on). Hot path. */
struct spa_xchg {
	void *ctx;
	int (*call)(void *ctx, enum spa_msg_type req, uint32_t layer, uint32_t n_rows, uint32_t pos,
		    const float *out, size_t n_out, float *in, size_t n_in, uint64_t *edge_ns);
};

/* The fused kernels of RUNTIME.md §3 are the default; these flags select the reference
 * (unfused) paths instead, for bench/decode's side-by-side rows and the tests. Same tokens
 * either way. */
enum {
	SPA_UNFUSED_TAPS = 1u << 0,  /* taps and gate after the forward (spa_plugin_side_taps) */
	SPA_UNFUSED_HEAD = 1u << 1,  /* greedy: write the V logits, then spa_argmax */
};

struct spa_gen_cfg {
	enum spa_method method;
	enum spa_split split;
	enum spa_merge merge;
	struct spa_sampler_params sp;
	unsigned unfused;            /* SPA_UNFUSED_*; 0: fused (the default) */
};

/* Per-token accounting (decode steps). */
struct spa_step_stats {
	uint64_t wall_ns;      /* forward + exchanges + head + sampling */
	uint64_t xchg_ns;      /* wall time inside blocking exchanges */
	uint64_t edge_ns;      /* edge compute reported in the replies */
	uint32_t n_xchg;       /* blocking exchanges */
	uint32_t sigma;        /* spa/lst: 1 when the side path was taken */
};

struct spa_runner;

/* cloud_plugin: the plugin's cloud part (side methods), or NULL for base/lora/adapter. The
 * runner holds n_ctx positions and batches of up to max_batch, computed on be (NULL: the CPU on
 * the calling thread alone). Borrowed: m, cloud_plugin, be,
 * x (must outlive the runner). Returns 0, -ENOMEM, -SPA_EUSAGE, -SPA_EMISMATCH. */
int spa_runner_create(struct spa_runner **out, const struct spa_model *m,
		      const struct spa_plugin *cloud_plugin, const struct spa_gen_cfg *cfg,
		      uint32_t n_ctx, uint32_t max_batch, struct spa_backend *be,
		      const struct spa_xchg *x, struct spa_errbuf *err);
void spa_runner_destroy(struct spa_runner *r);
/* Feed the prompt (n >= 1 ids). Exchanges counted in *st (may be NULL). */
int spa_runner_prefill(struct spa_runner *r, const int32_t *ids, uint32_t n,
		       struct spa_step_stats *st);
/* One token. Returns 0 and *tok, or a negative code (-SPA_EUSAGE when the context is full). */
int spa_runner_next(struct spa_runner *r, int32_t *tok, struct spa_step_stats *st);
/* Score a text as the method sees it (spa-perplexity): run ids[0..n) from position 0 (the
 * runner forgets the sequence it held; prefill again before next) in batches of max_batch,
 * and write the logits of every position j in [first, n) into logits + (j - first) V (host
 * memory, (n - first) x V floats): the base model's, those of LoRA or the adapters (their
 * exchanges batched per block as in prefill), or for spa and lst z = f, f + g or g per
 * position, each side-path position with its own exchange as spa_runner_next makes it (the
 * side network has no state across positions), sigma from the gate of its own f (lst:
 * always 1). Exchanges and side-path positions (sigma) counted in *st (may be NULL). Each
 * row's logits are those spa_runner_next would sample from at that position, bit for bit.
 * The first call allocates the batch's rows (not on the hot path). Returns 0, -SPA_EUSAGE
 * (n of 0 or above the runner's context, first >= n), -ENOMEM, or a step's or exchange's
 * error (spa_runner_error). */
int spa_runner_score(struct spa_runner *r, const int32_t *ids, uint32_t n, uint32_t first,
		     float *logits, struct spa_step_stats *st);
/* After prefill or next failed: the engine's words for it when the model's weights could not
 * be read or its activations left the KV cache's range (spa_context_error), else "". */
const char *spa_runner_error(const struct spa_runner *r);

#endif
