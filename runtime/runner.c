/* The runner: the cloud's side of a generation (see include/spa/runner.h). One forward per
 * position, the method's exchanges with the edge through a struct spa_xchg, the head and the
 * sampler. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "spa/clock.h"
#include "spa/runner.h"

struct spa_runner {
	const struct spa_model *m;
	const struct spa_plugin *cp;
	struct spa_gen_cfg cfg;
	const struct spa_xchg *x;
	struct spa_context *eng;
	struct spa_sampler *smp;
	uint32_t L, H, kv, r, max_batch;
	int32_t pending;
	bool have_pending;
	uint32_t pos;                 /* position of the forward in flight (hooks report it) */
	struct spa_step_stats *cur;   /* where the hooks account exchanges */
	float *logits, *z, *g, *taps, *relu_s, *lora_in;
	/* spa_runner_score's rows (max_batch of each), made on its first call */
	float *s_final, *s_resid, *s_z;
};

static int xcall(struct spa_runner *r, enum spa_msg_type req, uint32_t layer, uint32_t n_rows,
		 const float *out, size_t n_out, float *in, size_t n_in)
{
	uint64_t edge_ns = 0, t0 = spa_clock_ns();
	int rc = r->x->call(r->x->ctx, req, layer, n_rows, r->pos, out, n_out, in, n_in, &edge_ns);
	if (r->cur) {
		r->cur->xchg_ns += spa_clock_ns() - t0;
		r->cur->edge_ns += edge_ns;
		r->cur->n_xchg++;
	}
	return rc;
}

static int hook_lora(void *ctx, uint32_t layer, uint32_t n_tok, const float *x, float *dq,
		     float *dv)
{
	struct spa_runner *r = ctx;
	size_t nq = (size_t)n_tok * r->H, nv = (size_t)n_tok * r->kv;
	int rc = xcall(r, SPA_MSG_LORA_X, layer, n_tok, x, nq, r->lora_in, nq + nv);
	if (rc < 0)
		return rc;
	/* LORA_D carries the dq block then the dv block. */
	memcpy(dq, r->lora_in, nq * sizeof *dq);
	memcpy(dv, r->lora_in + nq, nv * sizeof *dv);
	return 0;
}

static int hook_adapter(void *ctx, uint32_t layer, uint32_t which, uint32_t n_tok,
			const float *h, float *delta)
{
	struct spa_runner *r = ctx;
	size_t n = (size_t)n_tok * r->H;
	return xcall(r, SPA_MSG_ADAPTER_Y, 2 * layer + which, n_tok, h, n, delta, n);
}

int spa_runner_create(struct spa_runner **out, const struct spa_model *m,
		      const struct spa_plugin *cp, const struct spa_gen_cfg *cfg, uint32_t n_ctx,
		      uint32_t max_batch, struct spa_backend *be, const struct spa_xchg *x,
		      struct spa_errbuf *err)
{
	*out = NULL;
	if (cfg->method >= SPA_METHOD_COUNT || cfg->split >= SPA_SPLIT_COUNT ||
	    cfg->merge >= SPA_MERGE_COUNT)
		return spa_err(err, -SPA_EUSAGE, "unknown method, split or merge");
	if (cfg->method != SPA_METHOD_BASE && !x)
		return spa_err(err, -SPA_EUSAGE, "method %s needs an exchange with the edge",
			       spa_method_name(cfg->method));
	if (spa_method_is_side(cfg->method)) {
		if (!cp || cp->kind != SPA_PLUGIN_SIDE || !cp->cls_w || !cp->cls_b)
			return spa_err(err, -SPA_EMISMATCH,
				       "method %s needs the side plugin's classifier on the cloud",
				       spa_method_name(cfg->method));
		if (cfg->split == SPA_SPLIT_CLOUD_LINEAR &&
		    (!cp->in_w || !cp->tap_w || !cp->out_w))
			return spa_err(err, -SPA_EMISMATCH,
				       "split cloud-linear needs the side plugin's linear maps on "
				       "the cloud (in, taps, out)");
		if (cp->n_layers != m->hp.n_layers || cp->n_embd != m->hp.n_embd)
			return spa_err(err, -SPA_EMISMATCH,
				       "side plugin is for L=%u H=%u, the model has L=%u H=%u",
				       cp->n_layers, cp->n_embd, m->hp.n_layers, m->hp.n_embd);
	}
	if (max_batch == 0)
		max_batch = SPA_RUNNER_DEFAULT_BATCH;
	if (max_batch > n_ctx)
		max_batch = n_ctx;

	struct spa_runner *r = calloc(1, sizeof *r);
	if (!r)
		return -ENOMEM;
	r->m = m;
	r->cp = cp;
	r->cfg = *cfg;
	r->x = x;
	r->L = m->hp.n_layers;
	r->H = m->hp.n_embd;
	r->kv = m->hp.n_kv_heads * m->hp.head_dim;
	r->r = cp ? cp->rank : 0;
	r->max_batch = max_batch;
	int rc = be ? spa_context_create(&r->eng, m, be, n_ctx, max_batch)
		    : spa_context_create_cpu(&r->eng, m, NULL, n_ctx, max_batch);
	if (rc < 0) {
		spa_err(err, rc, "cannot create the engine for %u positions: %s", n_ctx,
			spa_strerror(rc));
		goto fail;
	}
	rc = spa_sampler_create(&r->smp, m->hp.n_vocab, &cfg->sp);
	if (rc < 0) {
		spa_err(err, rc, "bad sampling parameters (temp %g, top-k %u, top-p %g)",
			(double)cfg->sp.temp, cfg->sp.top_k, (double)cfg->sp.top_p);
		goto fail;
	}
	r->logits = malloc(sizeof(float) * m->hp.n_vocab);
	r->z = malloc(sizeof(float) * r->H);
	r->g = malloc(sizeof(float) * r->H);
	r->taps = malloc(sizeof(float) * (r->L + 1) * (r->r ? r->r : 1));
	r->relu_s = malloc(sizeof(float) * (r->r ? r->r : 1));
	r->lora_in = malloc(sizeof(float) * max_batch * (r->H + r->kv));
	if (!r->logits || !r->z || !r->g || !r->taps || !r->relu_s || !r->lora_in) {
		rc = spa_err(err, -ENOMEM, "out of memory for the runner");
		goto fail;
	}
	/* Taps into the TAPS payload in each block's epilogue, the gate after the final norm. */
	if (spa_method_is_side(cfg->method) && !(cfg->unfused & SPA_UNFUSED_TAPS)) {
		rc = spa_context_set_side(r->eng, cp,
					 cfg->split == SPA_SPLIT_CLOUD_LINEAR ? r->taps : NULL);
		if (rc < 0) {
			spa_err(err, rc, "the side plugin does not fit the engine");
			goto fail;
		}
	}
	*out = r;
	return 0;
fail:
	spa_runner_destroy(r);
	return rc;
}

void spa_runner_destroy(struct spa_runner *r)
{
	if (!r)
		return;
	spa_context_destroy(r->eng);
	spa_sampler_destroy(r->smp);
	free(r->logits);
	free(r->z);
	free(r->g);
	free(r->taps);
	free(r->relu_s);
	free(r->lora_in);
	free(r->s_final);
	free(r->s_resid);
	free(r->s_z);
	free(r);
}

static const struct spa_engine_hooks *runner_hooks(struct spa_runner *r,
						   struct spa_engine_hooks *h)
{
	memset(h, 0, sizeof *h);
	h->ctx = r;
	if (r->cfg.method == SPA_METHOD_LORA)
		h->lora = hook_lora;
	else if (r->cfg.method == SPA_METHOD_ADAPTER)
		h->adapter = hook_adapter;
	else
		return NULL;
	return h;
}

int spa_runner_prefill(struct spa_runner *r, const int32_t *ids, uint32_t n,
		       struct spa_step_stats *st)
{
	if (n == 0)
		return -SPA_EUSAGE;
	struct spa_step_stats local = {0};
	if (!st)
		st = &local;
	memset(st, 0, sizeof *st);
	uint64_t t0 = spa_clock_ns();
	struct spa_engine_hooks hb;
	const struct spa_engine_hooks *h = runner_hooks(r, &hb);
	r->cur = st;
	for (uint32_t i = 0; i + 1 < n;) {
		uint32_t k = n - 1 - i;
		if (k > r->max_batch)
			k = r->max_batch;
		r->pos = spa_context_pos(r->eng);
		int rc = spa_engine_forward(r->eng, ids + i, k, h);
		if (rc < 0) {
			r->cur = NULL;
			return rc;
		}
		i += k;
	}
	r->cur = NULL;
	r->pending = ids[n - 1];
	r->have_pending = true;
	st->wall_ns = spa_clock_ns() - t0;
	return 0;
}

const char *spa_runner_error(const struct spa_runner *r)
{
	return r ? spa_context_error(r->eng) : "";
}

/* A side-path position (RUNTIME.md §3): g from the edge (TAPS out, relu(s) back, then W_out
 * on the cloud; or the whole record out and g back under edge-all), then z = f + g (merge add)
 * or g (replace) into z. taps_ready: the engine already wrote the TAPS payload (fused), else
 * it is computed here from the record. Returns 0 or the exchange's error. */
static int runner_side(struct spa_runner *r, const float *f, const float *resid, bool taps_ready,
		       float *z)
{
	int rc;
	if (r->cfg.split == SPA_SPLIT_CLOUD_LINEAR) {
		if (!taps_ready)
			spa_plugin_side_taps(r->cp, resid, r->taps);
		rc = xcall(r, SPA_MSG_TAPS, 0, 1, r->taps, (size_t)(r->L + 1) * r->r, r->relu_s,
			   r->r);
		if (rc < 0)
			return rc;
		spa_plugin_side_out(r->cp, r->relu_s, r->g);
	} else {
		rc = xcall(r, SPA_MSG_RESID, 0, 1, resid, (size_t)(r->L + 1) * r->H, r->g, r->H);
		if (rc < 0)
			return rc;
	}
	if (r->cfg.merge == SPA_MERGE_ADD)
		for (uint32_t i = 0; i < r->H; i++)
			z[i] = f[i] + r->g[i];
	else
		memcpy(z, r->g, sizeof(float) * r->H);
	return 0;
}

int spa_runner_next(struct spa_runner *r, int32_t *tok, struct spa_step_stats *st)
{
	if (!r->have_pending)
		return -SPA_EUSAGE;
	struct spa_step_stats local;
	if (!st)
		st = &local;
	memset(st, 0, sizeof *st);
	uint64_t t0 = spa_clock_ns();
	struct spa_engine_hooks hb;
	const struct spa_engine_hooks *h = runner_hooks(r, &hb);
	r->cur = st;
	r->pos = spa_context_pos(r->eng);
	int rc = spa_engine_forward(r->eng, &r->pending, 1, h);
	if (rc < 0)
		goto out;

	const float *f = spa_context_final(r->eng);
	const float *z = f;
	if (spa_method_is_side(r->cfg.method)) {
		const bool fused = !(r->cfg.unfused & SPA_UNFUSED_TAPS);
		int sigma = r->cfg.method == SPA_METHOD_LST ? 1
			  : fused ? spa_context_gate(r->eng, NULL) : spa_plugin_gate(r->cp, f, NULL);
		st->sigma = (uint32_t)sigma;
		/* fused: the engine already wrote the payload during the forward */
		if (sigma && (rc = runner_side(r, f, spa_context_resid(r->eng), fused, r->z)) < 0)
			goto out;
		z = sigma ? r->z : f;
	}
	if (r->cfg.sp.temp == 0 && !(r->cfg.unfused & SPA_UNFUSED_HEAD)) {
		/* greedy: the argmax without the V logits (the same token as the sampler's) */
		spa_engine_head_argmax(r->eng, z, tok);
	} else {
		spa_engine_logits(r->eng, z, r->logits);
		*tok = spa_sampler_sample(r->smp, r->logits);
	}
	r->pending = *tok;
out:
	r->cur = NULL;
	st->wall_ns = spa_clock_ns() - t0;
	return rc;
}

int spa_runner_score(struct spa_runner *r, const int32_t *ids, uint32_t n, uint32_t first,
		     float *logits, struct spa_step_stats *st)
{
	struct spa_step_stats local;
	if (!st)
		st = &local;
	memset(st, 0, sizeof *st);
	if (!ids || !logits || n == 0 || first >= n || n > spa_context_n_ctx(r->eng))
		return -SPA_EUSAGE;
	const uint32_t B = r->max_batch, H = r->H, V = r->m->hp.n_vocab;
	const bool side = spa_method_is_side(r->cfg.method);
	if (!r->s_final) { /* the rows of a batch, once */
		r->s_final = malloc(sizeof(float) * B * H);
		r->s_z = malloc(sizeof(float) * B * H);
		r->s_resid = side ? malloc(sizeof(float) * B * (r->L + 1) * H) : NULL;
		if (!r->s_final || !r->s_z || (side && !r->s_resid)) {
			free(r->s_final), free(r->s_z), free(r->s_resid);
			r->s_final = r->s_z = r->s_resid = NULL;
			return -ENOMEM;
		}
	}
	uint64_t t0 = spa_clock_ns();
	struct spa_engine_hooks hb;
	const struct spa_engine_hooks *h = runner_hooks(r, &hb);
	int rc = spa_context_set_outputs(r->eng, r->s_final, r->s_resid);
	spa_context_reset(r->eng);
	r->have_pending = false;
	r->cur = st;
	for (uint32_t i = 0; i < n && rc == 0;) {
		const uint32_t k = n - i < B ? n - i : B;
		r->pos = i;
		if ((rc = spa_engine_forward(r->eng, ids + i, k, h)) < 0)
			break;
		/* the positions of this batch that are scored, each as spa_runner_next would
		 * compute its z (the gate and taps unfused: the same bits as fused) */
		const uint32_t j0 = first > i ? first - i : 0;
		for (uint32_t j = j0; j < k && rc == 0; j++) {
			const float *f = r->s_final + (uint64_t)j * H;
			float *z = r->s_z + (uint64_t)(j - j0) * H;
			const int sigma = !side ? 0 : r->cfg.method == SPA_METHOD_LST ? 1
						: spa_plugin_gate(r->cp, f, NULL);
			st->sigma += (uint32_t)sigma;
			r->pos = i + j;
			if (sigma)
				rc = runner_side(r, f, r->s_resid + (uint64_t)j * (r->L + 1) * H,
						 false, z);
			else
				memcpy(z, f, sizeof(float) * H);
		}
		if (rc == 0 && j0 < k)
			spa_engine_logits_rows(r->eng, r->s_z, k - j0,
					       logits + (uint64_t)(i + j0 - first) * V);
		i += k;
	}
	r->cur = NULL;
	spa_context_set_outputs(r->eng, NULL, NULL);
	spa_context_reset(r->eng);
	st->wall_ns = spa_clock_ns() - t0;
	return rc;
}
