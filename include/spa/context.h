/* spa: one sequence's context (runtime/context.c): its KV cache, the activations of its steps
 * and what its last step left (the final norm, the residual record, the gate), on a backend,
 * over a model that many contexts share.
 *
 * The model (include/spa/model.h) is the weights, read-only, loaded once; under a memory
 * budget its weight stream (include/spa/wstream.h) is the model's too. A context holds what
 * one sequence needs, allocated at create, so that a step never allocates
 * (include/spa/engine.h runs the steps). Many contexts over one model may be used from
 * different threads at once, each thread with its own backend (a backend runs its own pool);
 * one context is used by one thread at a time. */
#ifndef SPA_CONTEXT_H
#define SPA_CONTEXT_H

#include <stdint.h>

#include "backend.h"
#include "error.h"
#include "model.h"
#include "plugin.h"

struct spa_context;

/* n_ctx: positions the KV cache holds; max_batch: most positions per step of this context
 * alone (spa_engine_forward). be: the backend to compute on (borrowed; NULL: the CPU on the
 * calling thread alone, one such backend per context). Returns 0, -ENOMEM, -SPA_EUSAGE (a size
 * of 0, a batch above n_ctx, n_ctx above SPA_KV_CACHE_MAX_CTX), or -SPA_EUNSUPPORTED (a backend
 * whose memory the host cannot see: the engine's device paths come with the CUDA backend).
 * Not on the hot path. */
int spa_context_create(struct spa_context **out, const struct spa_model *m,
		       struct spa_backend *be, uint32_t n_ctx, uint32_t max_batch);
/* The same on a CPU backend of the context's own over pool (borrowed, may be NULL: the calling
 * thread alone), freed with it: the common case of one context per pool. */
int spa_context_create_cpu(struct spa_context **out, const struct spa_model *m,
			   struct spa_pool *pool, uint32_t n_ctx, uint32_t max_batch);
/* Free the context (its own CPU backend too, when it made one). NULL does nothing. */
void spa_context_destroy(struct spa_context *c);
/* Forget the sequence (position back to 0). */
void spa_context_reset(struct spa_context *c);
/* Positions in the cache. */
uint32_t spa_context_pos(const struct spa_context *c);
uint32_t spa_context_n_ctx(const struct spa_context *c);
const struct spa_model *spa_context_model(const struct spa_context *c);
struct spa_backend *spa_context_backend(const struct spa_context *c);

/* After a step, for the LAST position this context had in it (host memory, valid until its
 * next step):
 *   spa_context_final(c):  f = RMSNorm_final(y_{L-1})           (H floats)
 *   spa_context_resid(c):  e, y_0, ..., y_{L-1}                  ((L+1) x H floats) */
const float *spa_context_final(const struct spa_context *c);
const float *spa_context_resid(const struct spa_context *c);

/* Every position's outputs, for scoring a text (spa-perplexity): from the next step on, each
 * step writes, for the context's row j (0 <= j < its n_tok), f_j = RMSNorm_final(y_{L-1}) into
 * final_rows + j H and, when resid_rows is not NULL, the row's residual record (e, y_0, ...,
 * y_{L-1}) into resid_rows + j (L + 1) H: each row with the bits its own step would give it
 * (spa_context_final, spa_context_resid). Buffers borrowed, host memory for max_batch rows.
 * NULL, NULL turns it off (the default; a step then pays nothing for it). Returns 0, or
 * -SPA_EUSAGE for resid_rows without final_rows. Not thread-safe against a step. */
int spa_context_set_outputs(struct spa_context *c, float *final_rows, float *resid_rows);

/* Fuse the side plugin's cloud-linear maps into this context's steps (RUNTIME.md §3). From
 * the next step on, for its last position:
 *   - when taps is not NULL (and cp holds in/tap weights): t_in = W_in e + b_in is written to
 *     taps[0..r) as soon as the embedding is read, and t_i = W_tap_i y_i + b_tap_i to
 *     taps[(i+1) r ..) in block i's epilogue, so the TAPS payload ((L+1) x r floats, the wire's
 *     F32) is complete when the last block ends. Same calls as spa_plugin_side_taps, so the
 *     same bits.
 *   - when cp holds the classifier: the gate W_c f + b_c right after the final RMSNorm
 *     (spa_context_gate), bit-identical to spa_plugin_gate.
 * cp and taps are borrowed (taps: (L+1) x r floats, host memory: the caller's outgoing
 * buffer). cp NULL turns both off. Returns 0, or -SPA_EUSAGE when cp is not a side plugin for
 * this model. */
int spa_context_set_side(struct spa_context *c, const struct spa_plugin *cp, float *taps);
/* After a step with the classifier fused: sigma = argmax(W_c f + b_c) (0 or 1), the logit
 * difference l1 - l0 in *margin when not NULL; -SPA_EUSAGE when no classifier is set. */
int spa_context_gate(const struct spa_context *c, float *margin);

/* Why the last step of this context failed: the weights' stream (a read error, a model file
 * that shrank or vanished: the message names the file and what to do; the stream stays
 * ended), or a key or value beyond the half KV cache's range (-SPA_EUNSUPPORTED); ""
 * otherwise. */
const char *spa_context_error(const struct spa_context *c);

#endif
