/* Contexts and batches: the memory of one sequence's steps and of a step over several
 * (include/spa/context.h, include/spa/engine.h). Everything a step needs is allocated here. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "context_impl.h"
#include "spa/wstream.h"

/* ---------------------------------------------------------------- step buffers */

static int dev_alloc(struct spa_backend *be, uint64_t n_floats, float **out)
{
	void *p = NULL;
	if (n_floats > SIZE_MAX / sizeof(float))
		return -ENOMEM;
	int rc = be->ops->buffer_alloc(be, (size_t)n_floats * sizeof(float), false, &p);
	*out = p;
	return rc;
}

static void *host_alloc(uint64_t size)
{
	return size > SIZE_MAX ? NULL : calloc(1, size ? (size_t)size : 1);
}

int spa_step_buf_init(struct spa_step_buf *sb, const struct spa_model *m, struct spa_backend *be,
		      uint32_t max_rows, uint32_t max_seqs)
{
	const struct spa_hparams *hp = &m->hp;
	const uint64_t H = hp->n_embd, B = max_rows, KV = (uint64_t)hp->n_kv_heads * hp->head_dim;
	memset(sb, 0, sizeof *sb);
	sb->be = be;
	sb->max_rows = max_rows;
	sb->max_seqs = max_seqs;
	const uint64_t most = spa_wstream_most_rows(m->stream);
	const uint64_t embd_row = spa_wstream_embd_row_size(m->stream);
	if (dev_alloc(be, B * H, &sb->x) < 0 || dev_alloc(be, B * H, &sb->xb) < 0 ||
	    dev_alloc(be, B * H, &sb->q) < 0 || dev_alloc(be, B * H, &sb->att) < 0 ||
	    dev_alloc(be, B * H, &sb->proj) < 0 || dev_alloc(be, B * KV, &sb->kb) < 0 ||
	    dev_alloc(be, B * KV, &sb->vb) < 0 || dev_alloc(be, B * hp->n_ff, &sb->hb) < 0 ||
	    dev_alloc(be, B * hp->n_ff, &sb->hb2) < 0 || dev_alloc(be, B * H, &sb->dq) < 0 ||
	    dev_alloc(be, B * KV, &sb->dv) < 0 || dev_alloc(be, B * H, &sb->delta) < 0 ||
	    dev_alloc(be, B * hp->head_dim, &sb->rope_cs) < 0 ||
	    (most && dev_alloc(be, B * most, &sb->part_y) < 0) ||
	    !(sb->pos = host_alloc(B * sizeof *sb->pos)) ||
	    !(sb->ids = host_alloc(B * sizeof *sb->ids)) ||
	    !(sb->h_in = host_alloc(B * H * sizeof(float))) ||
	    !(sb->h_out = host_alloc(B * (H + KV) * sizeof(float))) ||
	    (embd_row && !(sb->embd_row = host_alloc(embd_row))) ||
	    !(sb->attn = host_alloc(max_seqs * sizeof *sb->attn)) ||
	    !(sb->pending_tap = host_alloc(max_seqs * sizeof *sb->pending_tap)) ||
	    !(sb->z = host_alloc((uint64_t)max_seqs * H * sizeof(float))) ||
	    be->ops->reserve(be, 1, max_rows) < 0) {
		spa_step_buf_fini(sb);
		return -ENOMEM;
	}
	return 0;
}

void spa_step_buf_fini(struct spa_step_buf *sb)
{
	struct spa_backend *be = sb->be;
	if (!be)
		return;
	float *dev[] = { sb->x, sb->xb, sb->q, sb->att, sb->proj, sb->kb, sb->vb, sb->hb,
			 sb->hb2, sb->dq, sb->dv, sb->delta, sb->rope_cs, sb->part_y };
	for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
		if (dev[i])
			be->ops->buffer_free(be, dev[i]);
	free(sb->pos);
	free(sb->ids);
	free(sb->h_in);
	free(sb->h_out);
	free(sb->embd_row);
	free(sb->attn);
	free(sb->pending_tap);
	free(sb->z);
	memset(sb, 0, sizeof *sb);
}

/* The CPUs a CPU backend's threads run on, for the stream's reads to keep off. */
static void spread_stream(const struct spa_model *m, struct spa_backend *be)
{
	if (!m->stream || !be->ops->busy_cpus)
		return;
	int busy[1024];
	unsigned n = be->ops->busy_cpus(be, busy, 1024);
	spa_wstream_spread(m->stream, busy, n);
}

/* ---------------------------------------------------------------- contexts */

int spa_context_create(struct spa_context **out, const struct spa_model *m,
		       struct spa_backend *be, uint32_t n_ctx, uint32_t max_batch)
{
	*out = NULL;
	if (!m || n_ctx == 0 || n_ctx > SPA_KV_CACHE_MAX_CTX || max_batch == 0 || max_batch > n_ctx)
		return -SPA_EUSAGE;
	if (be && !be->host_visible)
		return -SPA_EUNSUPPORTED;
	const struct spa_hparams *hp = &m->hp;
	struct spa_context *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->m = m;
	c->n_ctx = n_ctx;
	c->max_batch = max_batch;
	int rc = 0;
	if (!be && (rc = spa_backend_cpu_create(&c->own_be, NULL)) < 0)
		goto fail;
	c->be = be ? be : c->own_be;
	float *resid = NULL, *f = NULL;
	if ((rc = spa_kv_cache_init(&c->kv, c->be, hp->n_layers, hp->n_kv_heads, n_ctx,
				    hp->head_dim)) < 0 ||
	    (rc = spa_step_buf_init(&c->sb, m, c->be, max_batch, 1)) < 0 ||
	    (rc = dev_alloc(c->be, (hp->n_layers + 1ull) * hp->n_embd, &resid)) < 0 ||
	    (rc = dev_alloc(c->be, hp->n_embd, &f)) < 0 ||
	    (rc = c->be->ops->reserve(c->be, n_ctx, max_batch)) < 0) {
		c->resid = resid;
		c->f = f;
		goto fail;
	}
	c->resid = resid; /* host-visible: the host reads them where the step writes them */
	c->f = f;
	spread_stream(m, c->be);
	*out = c;
	return 0;
fail:
	spa_context_destroy(c);
	return rc;
}

int spa_context_create_cpu(struct spa_context **out, const struct spa_model *m,
			   struct spa_pool *pool, uint32_t n_ctx, uint32_t max_batch)
{
	struct spa_backend *be = NULL;
	int rc = spa_backend_cpu_create(&be, pool);
	if (rc < 0)
		return rc;
	if ((rc = spa_context_create(out, m, be, n_ctx, max_batch)) < 0) {
		spa_backend_destroy(be);
		return rc;
	}
	(*out)->own_be = be;
	return 0;
}

void spa_context_destroy(struct spa_context *c)
{
	if (!c)
		return;
	if (c->be) {
		if (c->resid)
			c->be->ops->buffer_free(c->be, c->resid);
		if (c->f)
			c->be->ops->buffer_free(c->be, c->f);
	}
	spa_step_buf_fini(&c->sb);
	spa_kv_cache_fini(&c->kv);
	spa_backend_destroy(c->own_be);
	free(c);
}

void spa_context_reset(struct spa_context *c)
{
	c->pos = 0;
}

uint32_t spa_context_pos(const struct spa_context *c)
{
	return c->pos;
}

uint32_t spa_context_n_ctx(const struct spa_context *c)
{
	return c->n_ctx;
}

const struct spa_model *spa_context_model(const struct spa_context *c)
{
	return c->m;
}

struct spa_backend *spa_context_backend(const struct spa_context *c)
{
	return c->be;
}

const float *spa_context_final(const struct spa_context *c)
{
	return c->f;
}

const float *spa_context_resid(const struct spa_context *c)
{
	return c->resid;
}

const char *spa_context_error(const struct spa_context *c)
{
	return c ? c->errmsg : "";
}

int spa_context_set_side(struct spa_context *c, const struct spa_plugin *cp, float *taps)
{
	c->side = NULL;
	c->taps = NULL;
	c->gate_on = false;
	if (!cp)
		return 0;
	if (cp->kind != SPA_PLUGIN_SIDE || cp->n_layers != c->m->hp.n_layers ||
	    cp->n_embd != c->m->hp.n_embd)
		return -SPA_EUSAGE;
	if (taps && (!cp->in_w || !cp->in_b || !cp->tap_w || !cp->tap_b))
		return -SPA_EUSAGE;
	c->side = cp;
	c->taps = taps;
	c->gate_on = cp->cls_w && cp->cls_b;
	return 0;
}

int spa_context_set_outputs(struct spa_context *c, float *final_rows, float *resid_rows)
{
	if (resid_rows && !final_rows)
		return -SPA_EUSAGE;
	c->out_final = final_rows;
	c->out_resid = resid_rows;
	return 0;
}

int spa_context_gate(const struct spa_context *c, float *margin)
{
	if (!c->gate_on)
		return -SPA_EUSAGE;
	if (margin)
		*margin = c->gate[1] - c->gate[0];
	return c->gate[1] > c->gate[0] ? 1 : 0; /* spa_plugin_gate's rule */
}

/* ---------------------------------------------------------------- batches */

int spa_batch_create(struct spa_batch **out, const struct spa_model *m, struct spa_backend *be,
		     uint32_t max_rows, uint32_t max_seqs)
{
	*out = NULL;
	if (!m || !be || max_rows == 0 || max_seqs == 0 || max_seqs > max_rows)
		return -SPA_EUSAGE;
	if (!be->host_visible)
		return -SPA_EUNSUPPORTED;
	struct spa_batch *b = calloc(1, sizeof *b);
	if (!b)
		return -ENOMEM;
	b->m = m;
	b->be = be;
	int rc = spa_step_buf_init(&b->sb, m, be, max_rows, max_seqs);
	if (rc < 0) {
		free(b);
		return rc;
	}
	spread_stream(m, be);
	*out = b;
	return 0;
}

void spa_batch_destroy(struct spa_batch *b)
{
	if (!b)
		return;
	spa_step_buf_fini(&b->sb);
	free(b);
}
