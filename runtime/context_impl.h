/* spa internals: what a context and a batch hold (runtime/context.c makes them,
 * runtime/engine.c runs their steps). Not installed. */
#ifndef SPA_CONTEXT_IMPL_H
#define SPA_CONTEXT_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "spa/context.h"
#include "spa/drv/backend.h"
#include "spa/engine.h"
#include "spa/kv_cache.h"

/* The activations of a step of up to max_rows rows of up to max_seqs sequences: backend
 * addresses (row-major), then the host memory the hooks and the head see. Allocated once, so
 * that a step never allocates. */
struct spa_step_buf {
	struct spa_backend *be;
	uint32_t max_rows, max_seqs;
	float *x;       /* (max_rows, H) residual stream */
	float *xb;      /* (max_rows, H) RMSNorm output */
	float *q;       /* (max_rows, H) queries */
	float *att;     /* (max_rows, H) attention output, before attn_output */
	float *proj;    /* (max_rows, H) attn_output / ffn_down output */
	float *kb;      /* (max_rows, kv_dim) the rows' keys, before they go to the caches */
	float *vb;      /* (max_rows, kv_dim) their values */
	float *hb;      /* (max_rows, n_ff) gate, then SwiGLU */
	float *hb2;     /* (max_rows, n_ff) up */
	float *dq;      /* (max_rows, H) LoRA delta of q, uploaded from the hook's */
	float *dv;      /* (max_rows, kv_dim) LoRA delta of v */
	float *delta;   /* (max_rows, H) adapter delta */
	float *rope_cs; /* (max_rows, n_rot) cos, sin of each row's position */
	float *part_y;  /* (max_rows, most rows of a streamed matrix): a piece's products; NULL
			   when the model streams nothing */
	/* host */
	uint32_t *pos;  /* (max_rows) each row's position */
	int32_t *ids;   /* (max_rows) each row's token */
	float *h_in;    /* (max_rows, H) a hook's input, copied out of the step */
	float *h_out;   /* (max_rows, H + kv_dim) a hook's output, copied into it */
	uint8_t *embd_row;             /* a streamed embedding row; NULL when resident */
	struct spa_attn_seq *attn;     /* (max_seqs) */
	int *pending_tap;              /* (max_seqs) each sequence's tap not yet computed */
	float *z;                      /* (max_seqs, H) the batched head's inputs */
};

struct spa_context {
	const struct spa_model *m;
	struct spa_backend *be;
	struct spa_backend *own_be;  /* the backend made at create when none was given */
	uint32_t n_ctx, max_batch, pos;
	struct spa_kv_cache kv;
	struct spa_step_buf sb;      /* this context's own steps (spa_engine_forward) */
	float *resid;   /* (L + 1, H) e, y_0 .. y_{L-1} of the last position: host */
	float *f;       /* (H) final RMSNorm of the last position: host */
	/* fused side maps (spa_context_set_side) */
	const struct spa_plugin *side;
	float *taps;    /* borrowed: (L + 1, r), host */
	bool gate_on;
	float gate[2];
	/* every position's outputs (spa_context_set_outputs): borrowed host memory, NULL: off */
	float *out_final;  /* (max_batch, H) */
	float *out_resid;  /* (max_batch, L + 1, H) */
	char errmsg[640];
};

struct spa_batch {
	const struct spa_model *m;
	struct spa_backend *be;
	struct spa_step_buf sb;
};

/* Allocate sb for max_rows rows of max_seqs sequences of m on be (and the model's stream's
 * scratch); 0 or -ENOMEM (then fini is safe). */
int spa_step_buf_init(struct spa_step_buf *sb, const struct spa_model *m, struct spa_backend *be,
		      uint32_t max_rows, uint32_t max_seqs);
void spa_step_buf_fini(struct spa_step_buf *sb);

#endif
