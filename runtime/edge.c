/* The edge's responder (see include/spa/edge.h): answers the cloud's requests (TAPS, RESID,
 * LORA_X, ADAPTER_Y) with the plugin's math; and the in-process exchange of spa-run, which
 * calls it directly. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "spa/clock.h"
#include "spa/edge.h"

struct spa_edge {
	const struct spa_plugin *p;
	uint32_t max_batch;
	bool unfused;
	float *scratch;
};

void spa_edge_set_unfused(struct spa_edge *e, bool unfused)
{
	e->unfused = unfused;
}

int spa_edge_create(struct spa_edge **out, const struct spa_plugin *p, uint32_t max_batch)
{
	struct spa_edge *e = calloc(1, sizeof *e);
	if (!e)
		return -ENOMEM;
	e->p = p;
	e->max_batch = max_batch ? max_batch : SPA_RUNNER_DEFAULT_BATCH;
	/* The plain chain by default: bench/decode measured the fused one slower here (it
	 * reloads its r-wide accumulators per tile); spa_edge_set_unfused(e, false) selects it. */
	e->unfused = true;
	size_t n = (size_t)(p->n_layers + 1) * p->rank + p->rank + p->n_embd + p->rank + 16;
	if (p->kind == SPA_PLUGIN_SIDE && spa_plugin_side_chain_fused_scratch(p) > n)
		n = spa_plugin_side_chain_fused_scratch(p);
	e->scratch = malloc(sizeof(float) * n);
	if (!e->scratch) {
		free(e);
		return -ENOMEM;
	}
	*out = e;
	return 0;
}

void spa_edge_destroy(struct spa_edge *e)
{
	if (!e)
		return;
	free(e->scratch);
	free(e);
}

size_t spa_edge_reply_len(const struct spa_plugin *p, enum spa_msg_type req, uint32_t n_rows)
{
	switch (req) {
	case SPA_MSG_TAPS: return p->rank;
	case SPA_MSG_RESID: return p->n_embd;
	case SPA_MSG_LORA_X: return (size_t)n_rows * (p->n_embd + p->kv_dim);
	case SPA_MSG_ADAPTER_Y: return (size_t)n_rows * p->n_embd;
	default: return 0;
	}
}

int spa_edge_respond(struct spa_edge *e, enum spa_msg_type req, uint32_t layer, uint32_t n_rows,
		     const float *in, size_t n_in, float *out, size_t out_cap, size_t *n_out,
		     enum spa_msg_type *reply, struct spa_errbuf *err)
{
	const struct spa_plugin *p = e->p;
	size_t L = p->n_layers, H = p->n_embd;
	enum spa_plugin_kind need;
	size_t want_in;
	switch (req) {
	case SPA_MSG_TAPS: need = SPA_PLUGIN_SIDE; want_in = (L + 1) * p->rank; break;
	case SPA_MSG_RESID: need = SPA_PLUGIN_SIDE; want_in = (L + 1) * H; break;
	case SPA_MSG_LORA_X: need = SPA_PLUGIN_LORA; want_in = (size_t)n_rows * H; break;
	case SPA_MSG_ADAPTER_Y: need = SPA_PLUGIN_ADAPTER; want_in = (size_t)n_rows * H; break;
	default:
		return spa_err(err, -SPA_EPROTO, "%s is not a request the edge answers",
			       spa_msg_type_name(req));
	}
	if (p->kind != need)
		return spa_err(err, -SPA_EPROTO, "%s request, but this edge holds a %s plugin",
			       spa_msg_type_name(req), spa_plugin_kind_name(p->kind));
	if ((req == SPA_MSG_TAPS || req == SPA_MSG_RESID) && n_rows != 1)
		return spa_err(err, -SPA_EPROTO, "%s carries %u rows, expected 1",
			       spa_msg_type_name(req), n_rows);
	if (n_rows == 0 || n_rows > e->max_batch)
		return spa_err(err, -SPA_EPROTO, "%s carries %u rows (1..%u allowed)",
			       spa_msg_type_name(req), n_rows, e->max_batch);
	if (n_in != want_in)
		return spa_err(err, -SPA_EPROTO, "%s carries %zu values, expected %zu",
			       spa_msg_type_name(req), n_in, want_in);
	if ((req == SPA_MSG_LORA_X && layer >= L) || (req == SPA_MSG_ADAPTER_Y && layer >= 2 * L) ||
	    ((req == SPA_MSG_TAPS || req == SPA_MSG_RESID) && layer != 0))
		return spa_err(err, -SPA_EPROTO, "%s for block %u, the plugin has %zu blocks",
			       spa_msg_type_name(req), layer, L);
	size_t need_out = spa_edge_reply_len(p, req, n_rows);
	if (need_out > out_cap)
		return spa_err(err, -SPA_ETOOBIG, "reply of %zu values exceeds the buffer", need_out);

	switch (req) {
	case SPA_MSG_TAPS:
		if (e->unfused)
			spa_plugin_side_chain(p, in, out, e->scratch);
		else
			spa_plugin_side_chain_fused(p, in, out, e->scratch);
		*reply = SPA_MSG_SIDE_OUT;
		break;
	case SPA_MSG_RESID:
		spa_plugin_side_full(p, in, out, e->scratch);
		*reply = SPA_MSG_SIDE_G;
		break;
	case SPA_MSG_LORA_X:
		spa_plugin_lora(p, layer, n_rows, in, out, out + (size_t)n_rows * H, e->scratch);
		*reply = SPA_MSG_LORA_D;
		break;
	default:
		spa_plugin_adapter(p, layer / 2, layer % 2, n_rows, in, out, e->scratch);
		*reply = SPA_MSG_ADAPTER_D;
		break;
	}
	*n_out = need_out;
	return 0;
}

static int local_call(void *ctx, enum spa_msg_type req, uint32_t layer, uint32_t n_rows,
		      uint32_t pos, const float *out, size_t n_out, float *in, size_t n_in,
		      uint64_t *edge_ns)
{
	(void)pos;
	struct spa_local_xchg *lx = ctx;
	size_t got = 0;
	enum spa_msg_type reply;
	uint64_t t0 = spa_clock_ns();
	int rc = spa_edge_respond(lx->edge, req, layer, n_rows, out, n_out, in, n_in, &got, &reply,
				  &lx->err);
	*edge_ns = spa_clock_ns() - t0;
	if (rc == 0 && got != n_in)
		rc = spa_err(&lx->err, -SPA_EPROTO, "edge reply has %zu values, expected %zu", got,
			     n_in);
	return rc;
}

void spa_local_xchg_init(struct spa_local_xchg *lx, struct spa_edge *edge)
{
	memset(lx, 0, sizeof *lx);
	lx->x.ctx = lx;
	lx->x.call = local_call;
	lx->edge = edge;
}
