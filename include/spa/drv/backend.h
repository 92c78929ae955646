/* spa: what a compute backend fills in (kernels/<name>/backend.c), in the manner of ggml's
 * ggml-backend-impl.h: control operations (buffers, copies, reservations) apart from the ops
 * of a decode or prefill step, and optional slots that may be NULL (the engine then takes a
 * generic path made of the required ops, with the same bits).
 *
 * Addresses. The step ops take and return "backend addresses": pointers into buffers from
 * buffer_alloc (a host pointer on a host-visible backend such as the CPU, a device pointer on
 * a GPU). The engine does arithmetic on them (row j of an activation is x + j * H) but reads or
 * writes them only through download and upload. Weights are struct spa_tensor whose data is a
 * backend address of the model's weights (the CPU computes on the host copy the loaders made;
 * a device backend mirrors them in weights_load).
 *
 * Threads. A backend instance is used by one thread at a time: its ops may keep scratch in the
 * instance (the CPU's quantized activations, its per-thread attention scores) and run its own
 * thread pool. Contexts used from several threads at once each take a backend of their own
 * over the same model (runtime/context.c).
 *
 * Errors. Ops on the hot path do not fail, except those documented to return a code (the KV
 * store's range check); a device backend keeps its faults in a sticky status that sync
 * returns. */
#ifndef SPA_DRV_BACKEND_H
#define SPA_DRV_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../backend.h"
#include "../error.h"
#include "../kernels.h"
#include "../kv_cache.h"

struct spa_model;

/* One sequence's rows of attention in a step: queries q (n_tok rows of n_heads * head_dim
 * floats) at positions pos..pos+n_tok-1 of cache, each attending to positions 0..its own (causal,
 * grouped-query), into out (the same layout). The keys and values of those positions are in
 * the cache already (kv_store). */
struct spa_attn_seq {
	const struct spa_kv_cache *cache;
	uint32_t pos;
	uint32_t n_tok;
	const float *q;
	float *out;
};

struct spa_backend_ops {
	const char *name; /* "cpu", "cuda" */

	/* ---- control (not on the hot path unless said) ---- */
	void (*destroy)(struct spa_backend *be);
	/* Memory for size bytes, zeroed, aligned to 64 bytes (2 MiB for huge, where the backend
	 * has such pages). *out is a backend address; NULL size gives a valid minimal buffer.
	 * Returns 0 or -ENOMEM. Paired with buffer_free. */
	int (*buffer_alloc)(struct spa_backend *be, size_t size, bool huge, void **out);
	void (*buffer_free)(struct spa_backend *be, void *buf);
	/* Copies between host memory and backend addresses, complete on return (a device backend
	 * synchronises). Hot path (the hooks' host copies, the taps). */
	void (*upload)(struct spa_backend *be, void *dst, const void *src, size_t size);
	void (*download)(struct spa_backend *be, void *dst, const void *src, size_t size);
	/* Get ready for contexts of up to n_ctx positions and steps of up to max_rows rows (the
	 * per-thread scratch of attention and of the greedy head). Grows, never shrinks.
	 * Returns 0 or -ENOMEM. */
	int (*reserve)(struct spa_backend *be, uint32_t n_ctx, uint32_t max_rows);
	/* Optional: mirror the model's weights into device memory (NULL: the backend computes on
	 * the host copy). */
	int (*weights_load)(struct spa_backend *be, struct spa_model *m, struct spa_errbuf *err);
	/* Optional: the logical CPUs the backend's threads are pinned to, into cpus[0..max);
	 * returns how many (a thread allowed on several CPUs counts none). The weight stream's
	 * reads keep off them. */
	unsigned (*busy_cpus)(struct spa_backend *be, int *cpus, unsigned max);
	/* Optional: wait for every op issued (NULL: ops are complete on return). Returns 0 or the
	 * sticky fault. */
	int (*sync)(struct spa_backend *be);

	/* ---- the ops of a step (hot path: no allocation, no system call) ---- */
	/* out (n rows of w->cols) = rows ids[0..n) of w, converted to float (the embedding). */
	void (*get_rows)(struct spa_backend *be, const struct spa_tensor *w, const int32_t *ids,
			 uint32_t n, float *out);
	/* Y[n][w->rows] = X[n][w->cols] W^T; each element with spa_matvec's bits. */
	void (*matmul)(struct spa_backend *be, const struct spa_tensor *w, const float *x,
		       float *y, uint32_t n);
	/* out (n_rows rows of n) = RMSNorm of x's rows times weight; out may alias x. */
	void (*rmsnorm)(struct spa_backend *be, float *out, const float *x, const float *weight,
			uint32_t n_rows, uint32_t n, float eps);
	/* cs (n_rows rows of cfg->n_rot) = the rotary cosines and sines of positions
	 * pos[0..n_rows) (pos: host memory; spa_rope_table_ext's), then rope rotates n_rows rows
	 * (row stride `stride` floats) of n_heads heads each with them (spa_rope_apply_ext's
	 * pairs: normal or neox, the first n_rot dimensions of each head). cfg: host memory, its
	 * freq_factors too. */
	void (*rope_table)(struct spa_backend *be, float *cs, const uint32_t *pos, uint32_t n_rows,
			   const struct spa_rope_cfg *cfg);
	void (*rope)(struct spa_backend *be, float *x, uint32_t n_rows, uint32_t stride,
		     uint32_t n_heads, const struct spa_rope_cfg *cfg, const float *cs);
	/* Keys and values k, v (n_tok rows of n_kv_heads * head_dim) into block `layer` of cache
	 * at positions pos.. . Returns 0, or -SPA_EUNSUPPORTED when one of them is beyond the
	 * cache's half range (65520 and up: it would be an infinity); the rows are stored anyway,
	 * and the caller fails the step. */
	int (*kv_store)(struct spa_backend *be, struct spa_kv_cache *cache, uint32_t layer,
			uint32_t pos, uint32_t n_tok, const float *k, const float *v);
	/* Causal attention of every sequence's rows over block `layer` of its cache, n_heads
	 * query heads of the cache's head_dim (a multiple of its n_kv_heads: grouped-query), one
	 * job for all: each (row, head) with the same bits whichever the thread or the batch. */
	void (*attention)(struct spa_backend *be, const struct spa_attn_seq *seqs, uint32_t n_seq,
			  uint32_t layer, uint32_t n_heads);
	/* out = silu(gate) * up, n elements (n_rows * n_ff); out may alias gate. */
	void (*swiglu)(struct spa_backend *be, float *out, const float *gate, const float *up,
		       uint64_t n);
	/* y += x, n elements. */
	void (*add)(struct spa_backend *be, float *y, const float *x, uint64_t n);
	/* y[rows] = W x + b (b may be NULL) for a small row-major F32 matrix (the plugin's taps,
	 * gate and side output): spa_matvec_f32's bits, on one thread. */
	void (*matvec_f32)(struct spa_backend *be, const float *w, const float *b, const float *x,
			   float *y, uint32_t rows, uint32_t cols);

	/* Greedy head: tok[i] = argmax over rows of (w z_i), z_i = z + i * w->cols, i < n, without
	 * writing the logits; ties to the lowest row, NaNs never win, all NaN gives 0: exactly
	 * spa_argmax of matmul's output. tok: host memory. */
	void (*head_argmax)(struct spa_backend *be, const struct spa_tensor *w, const float *z,
			    uint32_t n, int32_t *tok);

	/* ---- optional fused ops (NULL: the generic path, same bits) ---- */
	/* 1..SPA_MATVEC_MAX_ITEMS products of one vector each in one job (decode's q, k, v and
	 * a side tap; kernels.h's struct: y = W x, then + b when b is not NULL). y must not alias
	 * any x. Generic: matmul (n = 1) per item, then add b. */
	void (*matvec_items)(struct spa_backend *be, unsigned n, const struct spa_matvec_item *it);
	/* out = silu(W_gate x) * (W_up x) for one vector; up: scratch of w_up->rows floats.
	 * Generic: two matmuls and swiglu. */
	void (*matvec_swiglu)(struct spa_backend *be, const struct spa_tensor *w_gate,
			      const struct spa_tensor *w_up, const float *x, float *out, float *up);
	/* One vector x (cols floats) made ready for several products with matrices of type
	 * `type` (quantized once), then matvec_prepared(w) = matmul(w, x, n = 1)'s bits for any
	 * such w. Generic: matmul per product. */
	void (*matvec_prepare)(struct spa_backend *be, const float *x, uint64_t cols,
			       enum spa_dtype type);
	void (*matvec_prepared)(struct spa_backend *be, const struct spa_tensor *w, float *y);
};

/* Every backend instance begins with this (the backend's own state follows). */
struct spa_backend {
	const struct spa_backend_ops *ops;
	enum spa_backend_kind kind;
	bool host_visible;   /* backend addresses are host pointers */
	int n_threads;       /* compute threads (CPU) or streaming multiprocessors (GPU) */
	const float *prep_x; /* the generic matvec_prepare's input */
};

/* The ops with optional slots, as the engine calls them: the backend's slot when it has one,
 * else the generic path (runtime/backend.c), with the same bits. */
void spa_backend_matvec_items(struct spa_backend *be, unsigned n,
			      const struct spa_matvec_item *it);
void spa_backend_matvec_swiglu(struct spa_backend *be, const struct spa_tensor *w_gate,
			       const struct spa_tensor *w_up, const float *x, float *out,
			       float *up);
void spa_backend_matvec_prepare(struct spa_backend *be, const float *x, uint64_t cols,
				enum spa_dtype type);
void spa_backend_matvec_prepared(struct spa_backend *be, const struct spa_tensor *w, float *y);

/* The CPU backend over pool (borrowed; NULL: the calling thread alone). kernels/cpu/backend.c.
 * Returns 0 or -ENOMEM. */
int spa_backend_cpu_create(struct spa_backend **out, struct spa_pool *pool);

#endif
