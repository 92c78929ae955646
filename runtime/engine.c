/* The engine: the step of the Llama forward pass of RUNTIME.md §2, in the manner of llama2.c's
 * run.c, over contexts (runtime/context.c allocates everything; a step only computes) and the
 * ops of their backend (include/spa/drv/backend.h).
 *
 * Determinism: the backend's products give bit-identical results for any thread count and for
 * a batch versus single vectors, and attention gives each (row, head) pair to exactly one
 * thread with a fixed summation order, so a step is bit-identical across thread counts, across
 * batched prefill versus token-by-token decoding, and across a step of several sequences versus
 * one step each. The split runtime (cloud + edge must equal the local reference) relies on it. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "context_impl.h"
#include "spa/engine.h"
#include "spa/kernels.h"
#include "spa/pin.h"
#include "spa/wstream.h"

/* ---------------------------------------------------------------- weights */

/* Rows r0.. of Y[n][rows] = W X[n], from w (those rows of the matrix); for one vector, x
 * made ready once by matvec_prepare (mmw). */
static void part_mm(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_tensor *w,
		    uint64_t r0, const float *x, float *y, uint64_t rows, uint32_t n)
{
	if (n == 1) {
		spa_backend_matvec_prepared(be, w, y + r0);
		return;
	}
	be->ops->matmul(be, w, x, sb->part_y, n);
	for (uint32_t j = 0; j < n; j++) /* host-visible: the scratch is host memory */
		memcpy(y + j * rows + r0, sb->part_y + (uint64_t)j * w->rows,
		       w->rows * sizeof(float));
}

/* Y[n] = W X[n] with block l's matrix k: resident, or its resident rows and then its streamed
 * pieces as they arrive (each row has the bits of the whole product: rows do not depend on
 * each other). */
static int mmw(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_model *m,
	       uint32_t l, int k, const float *x, float *y, uint32_t n)
{
	const struct spa_tensor *t = spa_layer_mat(&m->layers[l], k);
	if (t->data) {
		be->ops->matmul(be, t, x, y, n);
		return 0;
	}
	const struct spa_tensor *res = &m->res_part[(size_t)l * SPA_LAYER_MATS + k];
	if (n == 1) /* x quantized once for the resident part and every piece */
		spa_backend_matvec_prepare(be, x, t->cols, t->type);
	if (res->rows)
		part_mm(be, sb, res, 0, x, y, t->rows, n);
	for (uint64_t r = res->rows; r < t->rows;) {
		struct spa_tensor w;
		uint32_t r0, r1;
		int rc = spa_wstream_piece_get(m->stream, l, k, &w, &r0, &r1);
		if (rc < 0)
			return rc;
		part_mm(be, sb, &w, r0, x, y, t->rows, n);
		r = r1;
		spa_wstream_piece_put(m->stream);
	}
	return 0;
}

/* Y[n] += b, the bias of a matrix (rows floats) on each of n rows: y = (W x) + b, the bits of
 * spa_matvec_items' bias on one row. */
static void add_bias(struct spa_backend *be, float *y, const float *b, uint64_t rows, uint32_t n)
{
	for (uint32_t j = 0; b && j < n; j++)
		be->ops->add(be, y + j * rows, b, rows);
}

/* ---------------------------------------------------------------- side taps */

/* Side tap i (0: W_in, i > 0: W_down of block i - 1) of context c as a product item on x: the
 * bits of spa_matvec_f32(W, b, x, taps + i r, r, H). */
static void tap_item(const struct spa_context *c, uint32_t i, const float *x,
		     struct spa_tensor *t, struct spa_matvec_item *it)
{
	const struct spa_plugin *sp = c->side;
	const uint32_t r = sp->rank, H = c->m->hp.n_embd;
	*t = (struct spa_tensor){ SPA_TYPE_F32, H, r,
				  i ? sp->tap_w + (size_t)(i - 1) * r * H : sp->in_w, 0 };
	*it = (struct spa_matvec_item){ t, x, i ? sp->tap_b + (size_t)(i - 1) * r : sp->in_b,
					c->taps + (size_t)i * r };
}

/* The pending tap of c, if any, on this thread alone. */
static void tap_alone(struct spa_backend *be, const struct spa_context *c, int *pending,
		      const float *x)
{
	if (*pending < 0)
		return;
	struct spa_tensor t;
	struct spa_matvec_item it;
	tap_item(c, (uint32_t)*pending, x, &t, &it);
	be->ops->matvec_f32(be, it.w->data, it.b, x, it.y, (uint32_t)t.rows, (uint32_t)t.cols);
	*pending = -1;
}

/* ---------------------------------------------------------------- the step */

/* Sequence s's error words. */
static void seq_error(const struct spa_seq *s, const char *msg)
{
	snprintf(s->ctx->errmsg, sizeof s->ctx->errmsg, "%s", msg);
}

/* Check the step's sequences and lay out their rows: -SPA_EUSAGE when they do not fit. */
static int step_check(const struct spa_model *m, struct spa_backend *be, struct spa_step_buf *sb,
		      const struct spa_seq *seqs, uint32_t n_seq, uint32_t *n_rows)
{
	uint64_t rows = 0;
	if (!seqs || n_seq == 0 || n_seq > sb->max_seqs)
		return -SPA_EUSAGE;
	for (uint32_t s = 0; s < n_seq; s++) {
		const struct spa_seq *q = &seqs[s];
		const struct spa_context *c = q->ctx;
		if (!c || c->m != m || c->be != be || !q->tokens || q->n_tok == 0 ||
		    q->n_tok > c->n_ctx - c->pos)
			return -SPA_EUSAGE;
		for (uint32_t t = 0; t < s; t++)
			if (seqs[t].ctx == c)
				return -SPA_EUSAGE;
		for (uint32_t j = 0; j < q->n_tok; j++)
			if (q->tokens[j] < 0 || (uint32_t)q->tokens[j] >= m->hp.n_vocab)
				return -SPA_EUSAGE;
		rows += q->n_tok;
	}
	if (rows > sb->max_rows)
		return -SPA_EUSAGE;
	*n_rows = (uint32_t)rows;
	return 0;
}

/* The embedding rows of every sequence into x: resident rows in one call, or under a memory
 * budget each row read from the file. */
static int step_embed(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_model *m,
		      const struct spa_seq *seqs, uint32_t n_seq, uint32_t n_rows)
{
	const uint64_t H = m->hp.n_embd;
	uint32_t row = 0;
	for (uint32_t s = 0; s < n_seq; s++)
		for (uint32_t j = 0; j < seqs[s].n_tok; j++, row++) {
			sb->ids[row] = seqs[s].tokens[j];
			sb->pos[row] = seqs[s].ctx->pos + j;
		}
	if (m->tok_embd.data) {
		be->ops->get_rows(be, &m->tok_embd, sb->ids, n_rows, sb->x);
		return 0;
	}
	/* Under a memory budget the embedding stays on disk: one row per token. */
	struct spa_tensor one = m->tok_embd;
	const int32_t id0 = 0;
	one.rows = 1;
	one.data = sb->embd_row;
	for (uint32_t r = 0; r < n_rows; r++) {
		int rc = spa_wstream_embd_row(m->stream, sb->ids[r], sb->embd_row);
		if (rc < 0)
			return rc;
		be->ops->get_rows(be, &one, &id0, 1, sb->x + r * H);
	}
	return 0;
}

/* Sequence s's LoRA hook on block l: its rows of xb out, its deltas of q and v in. */
static int step_lora(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_seq *q,
		     uint32_t row0, uint32_t l, uint32_t H, uint32_t kv_dim)
{
	const uint64_t nq = (uint64_t)q->n_tok * H, nv = (uint64_t)q->n_tok * kv_dim;
	float *dq = sb->h_out, *dv = sb->h_out + nq;
	be->ops->download(be, sb->h_in, sb->xb + (uint64_t)row0 * H, nq * sizeof(float));
	memset(sb->h_out, 0, (nq + nv) * sizeof(float));
	int rc = q->hooks->lora(q->hooks->ctx, l, q->n_tok, sb->h_in, dq, dv);
	if (rc != 0)
		return rc < 0 ? rc : -EINVAL;
	be->ops->upload(be, sb->dq, dq, nq * sizeof(float));
	be->ops->upload(be, sb->dv, dv, nv * sizeof(float));
	be->ops->add(be, sb->q + (uint64_t)row0 * H, sb->dq, nq);
	be->ops->add(be, sb->vb + (uint64_t)row0 * kv_dim, sb->dv, nv);
	return 0;
}

/* Sequence s's adapter hook (which: 0 after attention, 1 after the FFN) on its rows of proj. */
static int step_adapter(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_seq *q,
			uint32_t row0, uint32_t l, uint32_t which, uint32_t H)
{
	const uint64_t n = (uint64_t)q->n_tok * H;
	float *h = sb->proj + (uint64_t)row0 * H;
	be->ops->download(be, sb->h_in, h, n * sizeof(float));
	memset(sb->h_out, 0, n * sizeof(float));
	int rc = q->hooks->adapter(q->hooks->ctx, l, which, q->n_tok, sb->h_in, sb->h_out);
	if (rc != 0)
		return rc < 0 ? rc : -EINVAL;
	be->ops->upload(be, sb->delta, sb->h_out, n * sizeof(float));
	be->ops->add(be, h, sb->delta, n);
	return 0;
}

static int hooks_adapter(struct spa_backend *be, struct spa_step_buf *sb,
			 const struct spa_seq *seqs, uint32_t n_seq, uint32_t l, uint32_t which,
			 uint32_t H)
{
	for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok) {
		if (!seqs[s].hooks || !seqs[s].hooks->adapter)
			continue;
		int rc = step_adapter(be, sb, &seqs[s], row0, l, which, H);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Every sequence's last row of x into its context's residual record, slot i (and every row
 * into the record of its row when the context asks for every position's: out_resid). */
static void record_resid(struct spa_backend *be, struct spa_step_buf *sb,
			 const struct spa_seq *seqs, uint32_t n_seq, uint32_t i, uint32_t H,
			 uint32_t L)
{
	for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok) {
		const struct spa_context *c = seqs[s].ctx;
		be->ops->download(be, c->resid + (uint64_t)i * H,
				  sb->x + (uint64_t)(row0 + seqs[s].n_tok - 1) * H, H * sizeof(float));
		for (uint32_t j = 0; c->out_resid && j < seqs[s].n_tok; j++)
			be->ops->download(be, c->out_resid + ((uint64_t)j * (L + 1) + i) * H,
					  sb->x + (uint64_t)(row0 + j) * H, H * sizeof(float));
	}
}

/* The step's blocks and final norm; the caller holds the model's stream. */
static int step_run(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_model *m,
		    const struct spa_seq *seqs, uint32_t n_seq, uint32_t N)
{
	const struct spa_hparams *hp = &m->hp;
	const uint32_t H = hp->n_embd, L = hp->n_layers, F = hp->n_ff;
	const uint32_t kv_dim = hp->n_kv_heads * hp->head_dim;
	int rc;

	if ((rc = step_embed(be, sb, m, seqs, n_seq, N)) < 0)
		goto stream_failed;
	record_resid(be, sb, seqs, n_seq, 0, H, L);
	/* The TAPS payload of a sequence with fused side maps fills up while the blocks run
	 * (spa_plugin_side_taps' products on its last row): tap i (0: t_in = W_in e, i > 0:
	 * block i-1's W_down y) becomes pending when its input is in the row, and is computed
	 * in the next block's q, k, v job (the row does not change before that block's
	 * attention) when the step is that one row, or alone before the block's products
	 * otherwise; the last block's tap is all that is left after the blocks end. */
	for (uint32_t s = 0; s < n_seq; s++)
		sb->pending_tap[s] = seqs[s].ctx->taps ? 0 : -1;

	/* the rotary angles of the rows' positions, once for every block */
	be->ops->rope_table(be, sb->rope_cs, sb->pos, N, &m->rope);
	for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok)
		sb->attn[s] = (struct spa_attn_seq){ &seqs[s].ctx->kv, seqs[s].ctx->pos,
						     seqs[s].n_tok, sb->q + (uint64_t)row0 * H,
						     sb->att + (uint64_t)row0 * H };
	for (uint32_t l = 0; l < L; l++) {
		const struct spa_layer *ly = &m->layers[l];
		const bool one = N == 1 && !spa_wstream_block_streamed(m->stream, l);

		/* attention */
		be->ops->rmsnorm(be, sb->xb, sb->x, ly->attn_norm, N, H, hp->rms_eps);
		if (one) { /* resident: q, k, v (+ a tap), one job */
			struct spa_tensor tap;
			struct spa_matvec_item it[4] = { { &ly->wq, sb->xb, ly->bias[0], sb->q },
							  { &ly->wk, sb->xb, ly->bias[1], sb->kb },
							  { &ly->wv, sb->xb, ly->bias[2], sb->vb } };
			unsigned n_it = 3;
			if (sb->pending_tap[0] >= 0)
				tap_item(seqs[0].ctx, (uint32_t)sb->pending_tap[0], sb->x, &tap,
					 &it[n_it++]);
			sb->pending_tap[0] = -1;
			spa_backend_matvec_items(be, n_it, it);
		} else {
			for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok)
				tap_alone(be, seqs[s].ctx, &sb->pending_tap[s],
					  sb->x + (uint64_t)(row0 + seqs[s].n_tok - 1) * H);
			if ((rc = mmw(be, sb, m, l, 0, sb->xb, sb->q, N)) < 0 ||
			    (rc = mmw(be, sb, m, l, 1, sb->xb, sb->kb, N)) < 0 ||
			    (rc = mmw(be, sb, m, l, 2, sb->xb, sb->vb, N)) < 0)
				goto stream_failed;
			add_bias(be, sb->q, ly->bias[0], H, N);
			add_bias(be, sb->kb, ly->bias[1], kv_dim, N);
			add_bias(be, sb->vb, ly->bias[2], kv_dim, N);
		}
		for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok) {
			if (!seqs[s].hooks || !seqs[s].hooks->lora)
				continue;
			if ((rc = step_lora(be, sb, &seqs[s], row0, l, H, kv_dim)) < 0)
				return rc;
		}
		be->ops->rope(be, sb->q, N, H, hp->n_heads, &m->rope, sb->rope_cs);
		be->ops->rope(be, sb->kb, N, kv_dim, hp->n_kv_heads, &m->rope, sb->rope_cs);
		for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok) {
			struct spa_context *c = seqs[s].ctx;
			rc = be->ops->kv_store(be, &c->kv, l, c->pos, seqs[s].n_tok,
					       sb->kb + (uint64_t)row0 * kv_dim,
					       sb->vb + (uint64_t)row0 * kv_dim);
			if (rc < 0) {
				snprintf(c->errmsg, sizeof c->errmsg, "block %u at position %u: a "
					 "key or value is beyond 65504, the largest IEEE half the KV "
					 "cache holds; this model's activations are out of the range "
					 "this engine supports (check the model file: its weights may "
					 "be corrupt or wrongly scaled)", l, c->pos);
				return rc;
			}
		}
		be->ops->attention(be, sb->attn, n_seq, l, hp->n_heads);
		if ((rc = mmw(be, sb, m, l, 3, sb->att, sb->proj, N)) < 0)
			goto stream_failed;
		add_bias(be, sb->proj, ly->bias[3], H, N);
		if ((rc = hooks_adapter(be, sb, seqs, n_seq, l, 0, H)) < 0)
			return rc;
		be->ops->add(be, sb->x, sb->proj, (uint64_t)N * H);

		/* SwiGLU feed-forward */
		be->ops->rmsnorm(be, sb->xb, sb->x, ly->ffn_norm, N, H, hp->rms_eps);
		if (one && !ly->bias[4] && !ly->bias[5]) { /* gate, up and SwiGLU in one job */
			spa_backend_matvec_swiglu(be, &ly->w_gate, &ly->w_up, sb->xb, sb->hb, sb->hb2);
		} else {
			if ((rc = mmw(be, sb, m, l, 4, sb->xb, sb->hb, N)) < 0 ||
			    (rc = mmw(be, sb, m, l, 5, sb->xb, sb->hb2, N)) < 0)
				goto stream_failed;
			add_bias(be, sb->hb, ly->bias[4], F, N);
			add_bias(be, sb->hb2, ly->bias[5], F, N);
			be->ops->swiglu(be, sb->hb, sb->hb, sb->hb2, (uint64_t)N * F);
		}
		if ((rc = mmw(be, sb, m, l, 6, sb->hb, sb->proj, N)) < 0)
			goto stream_failed;
		add_bias(be, sb->proj, ly->bias[6], H, N);
		if ((rc = hooks_adapter(be, sb, seqs, n_seq, l, 1, H)) < 0)
			return rc;
		be->ops->add(be, sb->x, sb->proj, (uint64_t)N * H);

		record_resid(be, sb, seqs, n_seq, l + 1, H, L);
		/* block l's epilogue: its tap, into the outgoing payload with the next block */
		for (uint32_t s = 0; s < n_seq; s++)
			if (seqs[s].ctx->taps)
				sb->pending_tap[s] = (int)l + 1;
	}
	for (uint32_t s = 0, row0 = 0; s < n_seq; row0 += seqs[s++].n_tok) {
		struct spa_context *c = seqs[s].ctx;
		const float *x_last = sb->x + (uint64_t)(row0 + seqs[s].n_tok - 1) * H;
		tap_alone(be, c, &sb->pending_tap[s], x_last);
		be->ops->rmsnorm(be, c->f, x_last, m->output_norm, 1, H, hp->rms_eps);
		if (c->out_final) /* every row's f (each row the bits of its own) */
			be->ops->rmsnorm(be, c->out_final, sb->x + (uint64_t)row0 * H,
					 m->output_norm, seqs[s].n_tok, H, hp->rms_eps);
		if (c->gate_on)
			be->ops->matvec_f32(be, c->side->cls_w, c->side->cls_b, c->f, c->gate, 2, H);
	}
	return 0;
stream_failed:
	for (uint32_t s = 0; s < n_seq; s++)
		seq_error(&seqs[s], spa_wstream_error(m->stream));
	return rc;
}

static int step(struct spa_backend *be, struct spa_step_buf *sb, const struct spa_model *m,
		const struct spa_seq *seqs, uint32_t n_seq)
{
	uint32_t n_rows = 0;
	int rc = step_check(m, be, sb, seqs, n_seq, &n_rows);
	if (rc < 0)
		return rc;
	for (uint32_t s = 0; s < n_seq; s++)
		seqs[s].ctx->errmsg[0] = '\0'; /* a message left is an earlier step's */
	struct spa_wstream *st = m->stream;
	if (st) {
		spa_wstream_lock(st);
		if ((rc = spa_wstream_err(st)) < 0) { /* the stream ended earlier: say why again */
			for (uint32_t s = 0; s < n_seq; s++)
				seq_error(&seqs[s], spa_wstream_error(st));
			spa_wstream_unlock(st);
			return rc;
		}
	}
	rc = step_run(be, sb, m, seqs, n_seq, n_rows);
	if (st) {
		if (rc == 0)
			spa_wstream_step_done(st);
		spa_wstream_unlock(st);
	}
	if (rc < 0)
		return rc;
	for (uint32_t s = 0; s < n_seq; s++)
		seqs[s].ctx->pos += seqs[s].n_tok;
	return 0;
}

int spa_engine_forward(struct spa_context *c, const int32_t *tokens, uint32_t n_tok,
		       const struct spa_engine_hooks *hooks)
{
	const struct spa_seq one = { c, tokens, n_tok, hooks };
	return step(c->be, &c->sb, c->m, &one, 1);
}

int spa_engine_step(struct spa_batch *b, const struct spa_seq *seqs, uint32_t n_seq)
{
	return step(b->be, &b->sb, b->m, seqs, n_seq);
}

/* ---------------------------------------------------------------- the LM head */

void spa_engine_logits(struct spa_context *c, const float *z, float *logits)
{
	c->be->ops->matmul(c->be, &c->m->output, z, logits, 1);
}

void spa_engine_logits_rows(struct spa_context *c, const float *z, uint32_t n, float *logits)
{
	if (n)
		c->be->ops->matmul(c->be, &c->m->output, z, logits, n);
}

void spa_engine_head_argmax(struct spa_context *c, const float *z, int32_t *tok)
{
	c->be->ops->head_argmax(c->be, &c->m->output, z ? z : c->f, 1, tok);
}

void spa_batch_head_argmax(struct spa_batch *b, struct spa_context *const *ctxs,
			   const float *const *z, uint32_t n, int32_t *tok)
{
	const uint32_t H = b->m->hp.n_embd, most = b->sb.max_seqs;
	for (uint32_t i0 = 0; i0 < n; i0 += most) { /* in batches of what the scratch holds */
		const uint32_t k = n - i0 < most ? n - i0 : most;
		for (uint32_t i = 0; i < k; i++) /* host-visible: gathered on the host */
			memcpy(b->sb.z + (uint64_t)i * H,
			       z && z[i0 + i] ? z[i0 + i] : ctxs[i0 + i]->f, H * sizeof(float));
		b->be->ops->head_argmax(b->be, &b->m->output, b->sb.z, k, tok + i0);
	}
}

int spa_engine_default_threads(const struct spa_model *m)
{
	int n = spa_pin_n_cores();
	if (n <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n = c > 0 ? (int)c : 1;
	}
	/* the block rows' reads have a kernel worker to give a core to (the embedding's one row
	 * a token is read in the compute thread) */
	bool streams = false;
	for (uint32_t l = 0; m && l < m->hp.n_layers && !streams; l++)
		streams |= spa_wstream_block_streamed(m->stream, l);
	if (streams && n > 1)
		n--;
	return n;
}
