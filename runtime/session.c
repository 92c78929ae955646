/* Generation with a plugin on one side or across a link: the runner (cloud), the edge's
 * responder, the in-process exchange of spa-run, and the cloud and edge session loops.
 * Message payloads are specified in docs/wire-protocol.md ("Message payloads"). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spa/drv/link.h"
#include "spa/kernels.h"
#include "spa/session.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the wire carries little-endian floats: a big-endian port must swap them");

#define DEFAULT_BATCH 64u
#define HELLO_SIZE 56u
#define HELLO_OK_SIZE 64u
#define PROMPT_HDR 32u
#define DONE_HDR 144u

static uint64_t now_ns(void)
{
	return (uint64_t)spa_now_ns();
}

/* ---------------------------------------------------------------- runner (cloud) */

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
	uint64_t edge_ns = 0, t0 = now_ns();
	int rc = r->x->call(r->x->ctx, req, layer, n_rows, r->pos, out, n_out, in, n_in, &edge_ns);
	if (r->cur) {
		r->cur->xchg_ns += now_ns() - t0;
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

static bool is_side(enum spa_method m)
{
	return m == SPA_METHOD_LST || m == SPA_METHOD_SPA;
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
	if (is_side(cfg->method)) {
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
		max_batch = DEFAULT_BATCH;
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
	if (is_side(cfg->method) && !(cfg->unfused & SPA_UNFUSED_TAPS)) {
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
	uint64_t t0 = now_ns();
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
	st->wall_ns = now_ns() - t0;
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
	uint64_t t0 = now_ns();
	struct spa_engine_hooks hb;
	const struct spa_engine_hooks *h = runner_hooks(r, &hb);
	r->cur = st;
	r->pos = spa_context_pos(r->eng);
	int rc = spa_engine_forward(r->eng, &r->pending, 1, h);
	if (rc < 0)
		goto out;

	const float *f = spa_context_final(r->eng);
	const float *z = f;
	if (is_side(r->cfg.method)) {
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
	st->wall_ns = now_ns() - t0;
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
	const bool side = is_side(r->cfg.method);
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
	uint64_t t0 = now_ns();
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
	st->wall_ns = now_ns() - t0;
	return rc;
}

/* ---------------------------------------------------------------- edge compute */

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
	e->max_batch = max_batch ? max_batch : DEFAULT_BATCH;
	/* The plain chain by default: bench/decode measured the fused one slower here (it
	 * reloads its r-wide accumulators per tile); spa_edge_set_unfused(e, false) selects it. */
	e->unfused = true;
	size_t n = (size_t)(p->n_layers + 1) * p->rank + p->rank + p->n_embd + p->rank + 16;
	if (p->kind == SPA_PLUGIN_SIDE && spa_engine_side_chain_scratch(p) > n)
		n = spa_engine_side_chain_scratch(p);
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
			spa_engine_side_chain(p, in, out, e->scratch);
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
	uint64_t t0 = now_ns();
	int rc = spa_edge_respond(lx->edge, req, layer, n_rows, out, n_out, in, n_in, &got, &reply,
				  &lx->err);
	*edge_ns = now_ns() - t0;
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

/* ---------------------------------------------------------------- payload encoding */

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void put_f32(uint8_t *p, float v) { memcpy(p, &v, 4); }
static float get_f32(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

static bool is_fp(const char *s)
{
	for (int i = 0; i < 16; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

uint64_t spa_percentile_u64(const uint64_t *v, uint32_t n, double pct)
{
	if (n == 0)
		return 0;
	uint64_t *s = malloc(sizeof *s * n);
	if (!s)
		return 0;
	memcpy(s, v, sizeof *s * n);
	/* insertion sort: n is a token count */
	for (uint32_t i = 1; i < n; i++) {
		uint64_t x = s[i];
		uint32_t j = i;
		for (; j > 0 && s[j - 1] > x; j--)
			s[j] = s[j - 1];
		s[j] = x;
	}
	/* nearest rank */
	double rank = pct / 100.0 * n;
	uint32_t k = (uint32_t)rank;
	if ((double)k < rank)
		k++;
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	uint64_t r = s[k - 1];
	free(s);
	return r;
}

/* ---------------------------------------------------------------- cloud */

struct link_xchg {
	struct spa_xchg x;
	struct spa_link *l;
	uint32_t session;
	int64_t timeout_ns;
	struct spa_errbuf *err;
};

static int link_call(void *ctx, enum spa_msg_type req, uint32_t layer, uint32_t n_rows,
		     uint32_t pos, const float *out, size_t n_out, float *in, size_t n_in,
		     uint64_t *edge_ns)
{
	struct link_xchg *lx = ctx;
	struct spa_msg m = {.type = (uint8_t)req, .dtype = SPA_WIRE_F32, .session = lx->session,
			    .pos = pos, .layer = (uint16_t)layer, .n_rows = (uint16_t)n_rows};
	int rc = spa_link_send(lx->l, &m, out, n_out * sizeof(float));
	if (rc < 0)
		return spa_err(lx->err, rc, "sending %s: %s", spa_msg_type_name(req),
			       spa_link_error(lx->l));
	struct spa_msg r;
	rc = spa_link_recv(lx->l, &r, in, n_in * sizeof(float), lx->timeout_ns);
	if (rc == -ETIMEDOUT)
		return spa_err(lx->err, rc, "the edge did not answer %s within %.1f s",
			       spa_msg_type_name(req), lx->timeout_ns / 1e9);
	if (rc == -SPA_ETOOBIG)
		return spa_err(lx->err, -SPA_EPROTO, "the edge's reply to %s is too long",
			       spa_msg_type_name(req));
	if (rc < 0)
		return spa_err(lx->err, rc, "waiting for the reply to %s: %s",
			       spa_msg_type_name(req), spa_link_error(lx->l));
	if (r.type == SPA_MSG_ERROR)
		return spa_err(lx->err, -SPA_EPEER, "the edge reported: %.*s",
			       (int)(r.len > 300 ? 300 : r.len), (const char *)r.payload);
	enum spa_msg_type want = req == SPA_MSG_TAPS ? SPA_MSG_SIDE_OUT
			       : req == SPA_MSG_RESID ? SPA_MSG_SIDE_G
			       : req == SPA_MSG_LORA_X ? SPA_MSG_LORA_D : SPA_MSG_ADAPTER_D;
	if (r.type != want || r.len != n_in * sizeof(float) || r.dtype != SPA_WIRE_F32 ||
	    r.pos != pos || r.layer != layer)
		return spa_err(lx->err, -SPA_EPROTO,
			       "expected %s (%zu bytes, pos %u, layer %u), got %s (%u bytes, pos "
			       "%u, layer %u)", spa_msg_type_name(want), n_in * sizeof(float), pos,
			       layer, spa_msg_type_name(r.type), r.len, r.pos, r.layer);
	*edge_ns = r.aux;
	return 0;
}

static void send_error(struct spa_link *l, uint32_t session, int code, const char *msg)
{
	struct spa_msg m = {.type = SPA_MSG_ERROR, .dtype = SPA_WIRE_BYTES, .session = session,
			    .aux = (uint32_t)(code < 0 ? -code : code)};
	spa_link_send(l, &m, msg, strlen(msg));
}

static int recv_ctl(struct spa_link *l, struct spa_msg *m, void *buf, size_t cap,
		    enum spa_msg_type want, int64_t timeout_ns, struct spa_errbuf *err)
{
	int rc = spa_link_recv(l, m, buf, cap, timeout_ns);
	if (rc == -ETIMEDOUT)
		return spa_err(err, rc, "no %s from the peer within %.1f s", spa_msg_type_name(want),
			       timeout_ns / 1e9);
	if (rc < 0)
		return spa_err(err, rc, "waiting for %s: %s", spa_msg_type_name(want),
			       *spa_link_error(l) ? spa_link_error(l) : spa_strerror(rc));
	if (m->type == SPA_MSG_ERROR)
		return spa_err(err, -SPA_EPEER, "the peer reported: %.*s",
			       (int)(m->len > 400 ? 400 : m->len), (const char *)m->payload);
	if (m->type != want)
		return spa_err(err, -SPA_EPROTO, "expected %s, got %s", spa_msg_type_name(want),
			       spa_msg_type_name(m->type));
	return 0;
}

struct hello {
	uint8_t method, split, merge, kind;
	uint32_t rank, n_layers, n_embd, kv_dim;
	char base_fp[17], plugin_fp[17];
};

static void hello_encode(const struct hello *h, uint8_t b[HELLO_SIZE])
{
	memset(b, 0, HELLO_SIZE);
	b[0] = h->method;
	b[1] = h->split;
	b[2] = h->merge;
	b[3] = h->kind;
	put_u32(b + 4, h->rank);
	put_u32(b + 8, h->n_layers);
	put_u32(b + 12, h->n_embd);
	put_u32(b + 16, h->kv_dim);
	memcpy(b + 24, h->base_fp, 16);
	memcpy(b + 40, h->plugin_fp, 16);
}

static int hello_decode(const uint8_t *b, size_t len, struct hello *h, struct spa_errbuf *err)
{
	if (len != HELLO_SIZE)
		return spa_err(err, -SPA_EPROTO, "HELLO of %zu bytes, expected %u", len, HELLO_SIZE);
	h->method = b[0];
	h->split = b[1];
	h->merge = b[2];
	h->kind = b[3];
	h->rank = get_u32(b + 4);
	h->n_layers = get_u32(b + 8);
	h->n_embd = get_u32(b + 12);
	h->kv_dim = get_u32(b + 16);
	memcpy(h->base_fp, b + 24, 16);
	memcpy(h->plugin_fp, b + 40, 16);
	h->base_fp[16] = h->plugin_fp[16] = 0;
	if (h->method >= SPA_METHOD_COUNT || h->split >= SPA_SPLIT_COUNT ||
	    h->merge >= SPA_MERGE_COUNT || h->kind >= SPA_PLUGIN_KIND_COUNT || get_u32(b + 20))
		return spa_err(err, -SPA_EPROTO, "HELLO has an unknown method, split, merge or kind");
	if (!is_fp(h->base_fp) || !is_fp(h->plugin_fp))
		return spa_err(err, -SPA_EPROTO, "HELLO carries a malformed fingerprint");
	if (h->method != SPA_METHOD_BASE && spa_method_plugin_kind(h->method) != h->kind)
		return spa_err(err, -SPA_EPROTO, "HELLO: method %s with a %s plugin",
			       spa_method_name(h->method), spa_plugin_kind_name(h->kind));
	if (h->rank == 0 || h->rank > 4096)
		return spa_err(err, -SPA_EPROTO, "HELLO: plugin rank %u out of range", h->rank);
	return 0;
}

struct cloud_sess {
	const struct spa_model *m;
	struct spa_backend *be;
	const struct spa_cloud_opts *o;
	struct spa_link *l;
	uint32_t sid;
	struct spa_plugin *cp;
	struct spa_runner *run;
	uint8_t *buf;
	uint64_t *step_ns;
	bool accepted;       /* HELLO_OK sent: the edge knows the session id */
};

/* A failed prefill or step: the engine's message when it has one (the weights could not be
 * read, a key or value left the KV cache's range), else the code's words; an exchange's own
 * message already in err is kept. */
static int runner_failed(const struct spa_runner *r, int rc, struct spa_errbuf *err,
			 const char *what)
{
	if (*spa_runner_error(r))
		return spa_err(err, rc, "computing %s: %s", what, spa_runner_error(r));
	if (!*err->msg)
		return spa_err(err, rc, "computing %s: %s", what, spa_strerror(rc));
	return rc;
}

static int cloud_session(struct cloud_sess *s, struct spa_errbuf *err)
{
	const struct spa_model *m = s->m;
	const struct spa_hparams *hp = &m->hp;
	uint8_t small[1024]; /* HELLO, BYE, or an ERROR's message */
	struct spa_msg msg;
	int rc = recv_ctl(s->l, &msg, small, sizeof small, SPA_MSG_HELLO, s->o->timeout_ns, err);
	if (rc < 0)
		return rc;
	struct hello h;
	if ((rc = hello_decode(msg.payload, msg.len, &h, err)) < 0)
		return rc;
	if (strcmp(h.base_fp, m->fingerprint) != 0)
		return spa_err(err, -SPA_EMISMATCH,
			       "the plugin was made for base model %s, this cloud serves %s: make "
			       "the plugin for this base (spa-gen plugin --base)", h.base_fp,
			       m->fingerprint);
	uint32_t kv = hp->n_kv_heads * hp->head_dim;
	if (h.n_layers != hp->n_layers || h.n_embd != hp->n_embd || h.kv_dim != kv)
		return spa_err(err, -SPA_EMISMATCH, "the plugin is for L=%u H=%u kv=%u, the base "
			       "has L=%u H=%u kv=%u", h.n_layers, h.n_embd, h.kv_dim, hp->n_layers,
			       hp->n_embd, kv);
	uint32_t max_batch = s->o->max_batch ? s->o->max_batch : DEFAULT_BATCH;
	uint8_t ok[HELLO_OK_SIZE] = {0};
	put_u32(ok + 0, s->sid);
	put_u32(ok + 4, hp->n_layers);
	put_u32(ok + 8, hp->n_embd);
	put_u32(ok + 12, kv);
	put_u32(ok + 16, hp->n_vocab);
	put_u32(ok + 20, hp->n_ctx);
	put_u32(ok + 24, max_batch);
	memcpy(ok + 32, m->fingerprint, 16);
	put_u64(ok + 48, m->n_params);
	struct spa_msg om = {.type = SPA_MSG_HELLO_OK, .session = s->sid};
	if ((rc = spa_link_send(s->l, &om, ok, sizeof ok)) < 0)
		return spa_err(err, rc, "sending HELLO_OK: %s", spa_link_error(s->l));
	s->accepted = true;

	if (is_side((enum spa_method)h.method)) {
		/* Bound what an UPLOAD of this rank can justify before accepting it. */
		uint64_t floats = (uint64_t)(hp->n_layers + 2) * h.rank * (hp->n_embd + 1) +
				  3ull * hp->n_embd + 2;
		uint64_t cap = floats * 4 + (1u << 20);
		if (cap > SPA_WIRE_MAX_MSG)
			cap = SPA_WIRE_MAX_MSG;
		if (!(s->buf = malloc(cap)))
			return spa_err(err, -ENOMEM, "no memory for the plugin upload");
		rc = recv_ctl(s->l, &msg, s->buf, cap, SPA_MSG_UPLOAD, s->o->timeout_ns, err);
		if (rc < 0)
			return rc;
		struct spa_errbuf perr;
		if ((rc = spa_plugin_load_mem(&s->cp, msg.payload, msg.len, &perr)) < 0)
			return spa_err(err, rc, "the uploaded plugin part is not valid: %s",
				       perr.msg);
		if (s->cp->part != SPA_PART_CLOUD || s->cp->rank != h.rank ||
		    strcmp(s->cp->fingerprint, h.plugin_fp) != 0)
			return spa_err(err, -SPA_EPROTO, "the uploaded plugin part does not match "
				       "the HELLO (part, rank or plugin fingerprint)");
		if ((rc = spa_plugin_check_base(s->cp, m, &perr)) < 0)
			return spa_err(err, rc, "%s", perr.msg);
		free(s->buf);
		s->buf = NULL;
	}

	/* PROMPT: bounded by the model's context. */
	size_t cap = PROMPT_HDR + 4ull * hp->n_ctx;
	if (!(s->buf = malloc(cap)))
		return spa_err(err, -ENOMEM, "no memory for the prompt");
	rc = recv_ctl(s->l, &msg, s->buf, cap, SPA_MSG_PROMPT, s->o->timeout_ns, err);
	if (rc == -SPA_ETOOBIG)
		return spa_err(err, -SPA_ETOOBIG, "the prompt is longer than the context (%u)",
			       hp->n_ctx);
	if (rc < 0)
		return rc;
	const uint8_t *p = msg.payload;
	if (msg.len < PROMPT_HDR)
		return spa_err(err, -SPA_EPROTO, "PROMPT of %u bytes is too short", msg.len);
	uint32_t n_prompt = get_u32(p), n_gen = get_u32(p + 4);
	struct spa_gen_cfg cfg = {.method = h.method, .split = h.split, .merge = h.merge};
	cfg.sp.temp = get_f32(p + 8);
	cfg.sp.top_k = get_u32(p + 12);
	cfg.sp.top_p = get_f32(p + 16);
	cfg.sp.seed = get_u64(p + 24);
	if (msg.len != PROMPT_HDR + 4ull * n_prompt || n_prompt == 0)
		return spa_err(err, -SPA_EPROTO, "PROMPT length %u does not match its %u tokens",
			       msg.len, n_prompt);
	if ((uint64_t)n_prompt + n_gen > hp->n_ctx)
		return spa_err(err, -SPA_ETOOBIG, "prompt (%u) + tokens (%u) exceed the model's "
			       "context of %u: ask for fewer tokens", n_prompt, n_gen, hp->n_ctx);
	int32_t *ids = (int32_t *)(s->buf + PROMPT_HDR);
	for (uint32_t i = 0; i < n_prompt; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= hp->n_vocab)
			return spa_err(err, -SPA_EPROTO, "prompt token %u is %d, outside the "
				       "vocabulary of %u", i, ids[i], hp->n_vocab);

	struct link_xchg lx = {.x = {.ctx = &lx, .call = link_call}, .l = s->l, .session = s->sid,
			       .timeout_ns = s->o->timeout_ns, .err = err};
	rc = spa_runner_create(&s->run, m, s->cp, &cfg, n_prompt + n_gen, max_batch, s->be,
			       &lx.x, err);
	if (rc < 0)
		return rc;
	if (!(s->step_ns = calloc(n_gen ? n_gen : 1, sizeof *s->step_ns)))
		return spa_err(err, -ENOMEM, "no memory for statistics");

	struct spa_gen_stats gs = {.n_prompt = n_prompt, .n_layers = hp->n_layers,
				   .base_params = m->n_params,
				   .plugin_params = s->cp ? s->cp->n_params : 0};
	struct spa_step_stats st;
	if ((rc = spa_runner_prefill(s->run, ids, n_prompt, &st)) < 0)
		return runner_failed(s->run, rc, err, "the prompt");
	gs.prefill_ns = st.wall_ns;
	gs.prefill_xchg = st.n_xchg;
	const struct spa_link_stats *ls = spa_link_stats(s->l);
	uint64_t out0 = ls->bytes_tx, in0 = ls->bytes_rx;
	uint64_t tok_bytes = 0;
	for (uint32_t i = 0; i < n_gen; i++) {
		int32_t tok;
		if ((rc = spa_runner_next(s->run, &tok, &st)) < 0)
			return runner_failed(s->run, rc, err, "a token");
		s->step_ns[i] = st.wall_ns;
		gs.wall_ns += st.wall_ns;
		gs.xchg_ns += st.xchg_ns;
		gs.edge_ns += st.edge_ns;
		gs.n_xchg += st.n_xchg;
		gs.n_side += st.sigma;
		/* TOKEN is streamed: the cloud never waits for the edge here. */
		struct spa_msg tm = {.type = SPA_MSG_TOKEN, .dtype = SPA_WIRE_I32,
				     .session = s->sid, .pos = n_prompt + i};
		uint64_t b0 = ls->bytes_tx;
		if ((rc = spa_link_send(s->l, &tm, &tok, sizeof tok)) < 0)
			return spa_err(err, rc, "sending TOKEN: %s", spa_link_error(s->l));
		tok_bytes += ls->bytes_tx - b0;
	}
	gs.n_tokens = n_gen;
	/* Bytes of the method's exchanges; the streamed TOKENs are the same for every method. */
	gs.bytes_out = ls->bytes_tx - out0 - tok_bytes;
	gs.bytes_in = ls->bytes_rx - in0;

	size_t dlen = DONE_HDR + 8ull * n_gen;
	uint8_t *d = realloc(s->buf, dlen);
	if (!d)
		return spa_err(err, -ENOMEM, "no memory for DONE");
	s->buf = d;
	memset(d, 0, DONE_HDR);
	put_u32(d + 0, gs.n_tokens);
	put_u32(d + 4, gs.n_prompt);
	put_u32(d + 8, gs.n_xchg);
	put_u32(d + 12, gs.n_side);
	put_u64(d + 16, gs.prefill_ns);
	put_u64(d + 24, gs.prefill_xchg);
	put_u64(d + 32, gs.wall_ns);
	put_u64(d + 40, gs.xchg_ns);
	put_u64(d + 48, gs.edge_ns);
	put_u64(d + 56, gs.bytes_out);
	put_u64(d + 64, gs.bytes_in);
	put_u64(d + 72, gs.base_params);
	put_u64(d + 80, gs.plugin_params);
	put_u32(d + 88, gs.n_layers);
	/* The cloud's side of the copy accounting (the edge has its own link's). */
	put_u64(d + 96, ls->copied_tx);
	put_u64(d + 104, ls->copied_rx);
	put_u64(d + 112, ls->msgs_tx + 1); /* + this DONE */
	put_u64(d + 120, ls->msgs_rx);
	memcpy(d + DONE_HDR, s->step_ns, 8ull * n_gen);
	struct spa_msg dm = {.type = SPA_MSG_DONE, .session = s->sid};
	if ((rc = spa_link_send(s->l, &dm, d, dlen)) < 0)
		return spa_err(err, rc, "sending DONE: %s", spa_link_error(s->l));
	rc = recv_ctl(s->l, &msg, small, sizeof small, SPA_MSG_BYE, s->o->timeout_ns, err);
	if (rc < 0)
		return rc;
	if (!s->o->quiet)
		fprintf(stderr, "spa-cloud: session %u done: %s, %u prompt + %u tokens, %u "
			"exchanges, %.1f ms\n", s->sid, spa_method_name(h.method), n_prompt, n_gen,
			gs.n_xchg, gs.wall_ns / 1e6);
	return 0;
}

int spa_cloud_serve(const struct spa_model *m, struct spa_backend *be,
		    const struct spa_cloud_opts *o, struct spa_errbuf *err)
{
	struct spa_listener *lis = NULL;
	int rc = spa_link_listen(&lis, o->uri, &o->link, err);
	if (rc < 0)
		return rc;
	if (!o->quiet)
		fprintf(stderr, "spa-cloud: serving %s (L=%u H=%u V=%u, fingerprint %s) on %s\n",
			m->gguf ? m->gguf->path : "model", m->hp.n_layers, m->hp.n_embd,
			m->hp.n_vocab, m->fingerprint, o->uri);
	uint32_t sid = 0;
	for (uint32_t n = 0; o->max_sessions == 0 || n < o->max_sessions; n++) {
		struct cloud_sess s = {.m = m, .be = be, .o = o, .sid = ++sid};
		struct spa_errbuf aerr;
		rc = spa_link_accept(lis, &s.l, -1, &aerr);
		if (rc < 0) {
			spa_err(err, rc, "accept on %s: %s", o->uri, aerr.msg);
			break;
		}
		struct spa_errbuf serr = {{0}};
		rc = cloud_session(&s, &serr);
		if (rc < 0) {
			fprintf(stderr, "spa-cloud: session %u ended: %s\n", s.sid, serr.msg);
			if (rc != -SPA_ECLOSED && rc != -SPA_EPEER)
				send_error(s.l, s.accepted ? s.sid : 0, rc, serr.msg);
		}
		spa_runner_destroy(s.run);
		spa_plugin_destroy(s.cp);
		free(s.buf);
		free(s.step_ns);
		spa_link_destroy(s.l);
		rc = 0;
	}
	spa_listener_destroy(lis);
	return rc;
}

/* ---------------------------------------------------------------- edge */

int spa_edge_run(const struct spa_plugin *p, const int32_t *prompt, uint32_t n_prompt,
		 const struct spa_edge_opts *o, struct spa_edge_result *res, struct spa_errbuf *err)
{
	memset(res, 0, sizeof *res);
	const struct spa_gen_cfg *cfg = &o->cfg;
	if (cfg->method != SPA_METHOD_BASE && (int)p->kind != spa_method_plugin_kind(cfg->method))
		return spa_err(err, -SPA_EUSAGE, "method %s needs a %s plugin, this one is %s",
			       spa_method_name(cfg->method),
			       spa_plugin_kind_name(spa_method_plugin_kind(cfg->method)),
			       spa_plugin_kind_name(p->kind));
	if (n_prompt == 0)
		return spa_err(err, -SPA_EUSAGE, "the prompt is empty");
	struct spa_link *l = NULL;
	struct spa_edge *edge = NULL;
	uint8_t *rx = NULL, *tx = NULL;
	void *up = NULL;
	int rc = spa_link_connect(&l, o->uri, &o->link, o->timeout_ns, err);
	if (rc < 0)
		return rc;

	struct hello h = {.method = cfg->method, .split = cfg->split, .merge = cfg->merge,
			  .kind = p->kind, .rank = p->rank, .n_layers = p->n_layers,
			  .n_embd = p->n_embd, .kv_dim = p->kv_dim};
	memcpy(h.base_fp, p->base_fingerprint, 17);
	memcpy(h.plugin_fp, p->fingerprint, 17);
	uint8_t hb[1024]; /* HELLO, then HELLO_OK or an ERROR's message */
	hello_encode(&h, hb);
	struct spa_msg m = {.type = SPA_MSG_HELLO};
	if ((rc = spa_link_send(l, &m, hb, HELLO_SIZE)) < 0) {
		spa_err(err, rc, "sending HELLO: %s", spa_link_error(l));
		goto out;
	}
	struct spa_msg r;
	struct spa_errbuf cerr;
	rc = recv_ctl(l, &r, hb, sizeof hb, SPA_MSG_HELLO_OK, o->timeout_ns, &cerr);
	if (rc < 0) {
		spa_err(err, rc, "the cloud refused the session: %s", cerr.msg);
		goto out;
	}
	if (r.len != HELLO_OK_SIZE) {
		rc = spa_err(err, -SPA_EPROTO, "HELLO_OK of %u bytes, expected %u", r.len,
			     HELLO_OK_SIZE);
		goto out;
	}
	uint32_t sid = get_u32(hb), max_batch = get_u32(hb + 24), n_vocab = get_u32(hb + 16);
	res->session = sid;
	if (get_u32(hb + 4) != p->n_layers || get_u32(hb + 8) != p->n_embd ||
	    get_u32(hb + 12) != p->kv_dim || max_batch == 0 || max_batch > 4096 ||
	    memcmp(hb + 32, p->base_fingerprint, 16) != 0 || sid != r.session) {
		rc = spa_err(err, -SPA_EPROTO, "HELLO_OK does not match this plugin's base");
		goto out;
	}
	if (is_side(cfg->method)) {
		size_t up_size;
		if ((rc = spa_plugin_write_cloud_part(p, cfg->split, &up, &up_size, err)) < 0)
			goto out;
		m = (struct spa_msg){.type = SPA_MSG_UPLOAD, .session = sid};
		if ((rc = spa_link_send(l, &m, up, up_size)) < 0) {
			spa_err(err, rc, "sending UPLOAD: %s", spa_link_error(l));
			goto out;
		}
	}
	size_t plen = PROMPT_HDR + 4ull * n_prompt;
	size_t max_req = (size_t)max_batch * p->n_embd;
	size_t L1H = (size_t)(p->n_layers + 1) * p->n_embd;
	if (L1H > max_req)
		max_req = L1H;
	size_t rx_cap = sizeof(float) * max_req + DONE_HDR + 8ull * o->n_gen + 512;
	size_t tx_cap = (size_t)max_batch * (p->n_embd + p->kv_dim) + p->n_embd;
	rx = aligned_alloc(64, (rx_cap + 63) & ~(size_t)63);
	tx = aligned_alloc(64, ((sizeof(float) * tx_cap > plen ? sizeof(float) * tx_cap : plen) +
				63) & ~(size_t)63);
	res->tokens = malloc(sizeof(int32_t) * (o->n_gen ? o->n_gen : 1));
	if (!rx || !tx || !res->tokens || spa_edge_create(&edge, p, max_batch) < 0) {
		rc = spa_err(err, -ENOMEM, "out of memory");
		goto out;
	}
	memset(tx, 0, PROMPT_HDR);
	put_u32(tx, n_prompt);
	put_u32(tx + 4, o->n_gen);
	put_f32(tx + 8, cfg->sp.temp);
	put_u32(tx + 12, cfg->sp.top_k);
	put_f32(tx + 16, cfg->sp.top_p);
	put_u64(tx + 24, cfg->sp.seed);
	memcpy(tx + PROMPT_HDR, prompt, 4ull * n_prompt);
	m = (struct spa_msg){.type = SPA_MSG_PROMPT, .session = sid};
	uint64_t t0 = now_ns();
	if ((rc = spa_link_send(l, &m, tx, plen)) < 0) {
		spa_err(err, rc, "sending PROMPT: %s", spa_link_error(l));
		goto out;
	}
	for (;;) {
		rc = spa_link_recv(l, &r, rx, rx_cap, o->timeout_ns);
		if (rc == -ETIMEDOUT) {
			spa_err(err, rc, "the cloud sent nothing for %.1f s", o->timeout_ns / 1e9);
			goto out;
		}
		if (rc < 0) {
			spa_err(err, rc, "receiving from the cloud: %s", spa_link_error(l));
			goto out;
		}
		if (r.type == SPA_MSG_TOKEN) {
			int32_t id;
			if (r.len != 4 || res->n_tokens >= o->n_gen) {
				rc = spa_err(err, -SPA_EPROTO, "unexpected TOKEN message");
				goto out;
			}
			memcpy(&id, r.payload, 4);
			if (id < 0 || (uint32_t)id >= n_vocab) {
				rc = spa_err(err, -SPA_EPROTO, "TOKEN %d outside the vocabulary", id);
				goto out;
			}
			if (res->n_tokens == 0)
				res->first_token_ns = now_ns() - t0;
			res->tokens[res->n_tokens++] = id;
			if (o->on_token)
				o->on_token(o->ctx, id);
			continue;
		}
		if (r.type == SPA_MSG_ERROR) {
			rc = spa_err(err, -SPA_EPEER, "the cloud ended the session: %.*s",
				     (int)(r.len > 400 ? 400 : r.len), (const char *)r.payload);
			goto out;
		}
		if (r.type == SPA_MSG_DONE)
			break;
		if (r.dtype != SPA_WIRE_F32 || r.len % 4) {
			rc = spa_err(err, -SPA_EPROTO, "%s request with dtype %u and %u bytes",
				     spa_msg_type_name(r.type), r.dtype, r.len);
			goto out;
		}
		size_t n_out;
		enum spa_msg_type reply;
		uint64_t c0 = now_ns();
		rc = spa_edge_respond(edge, (enum spa_msg_type)r.type, r.layer, r.n_rows,
				      (const float *)r.payload, r.len / 4, (float *)tx, tx_cap,
				      &n_out, &reply, err);
		uint64_t c = now_ns() - c0;
		if (rc < 0) {
			char msg[600];
			snprintf(msg, sizeof msg, "edge: %s", err->msg);
			send_error(l, sid, rc, msg);
			goto out;
		}
		res->edge_compute_ns += c;
		m = (struct spa_msg){.type = (uint8_t)reply, .dtype = SPA_WIRE_F32, .session = sid,
				     .pos = r.pos, .layer = r.layer, .n_rows = r.n_rows,
				     .aux = c > UINT32_MAX ? UINT32_MAX : (uint32_t)c};
		if ((rc = spa_link_send(l, &m, tx, n_out * sizeof(float))) < 0) {
			spa_err(err, rc, "sending %s: %s", spa_msg_type_name(reply),
				spa_link_error(l));
			goto out;
		}
	}
	res->wall_ns = now_ns() - t0;
	const uint8_t *d = r.payload;
	struct spa_gen_stats *gs = &res->cloud;
	if (r.len < DONE_HDR || r.len != DONE_HDR + 8ull * get_u32(d) ||
	    get_u32(d) != res->n_tokens || res->n_tokens != o->n_gen) {
		rc = spa_err(err, -SPA_EPROTO, "DONE after %u of %u tokens, or malformed",
			     res->n_tokens, o->n_gen);
		goto out;
	}
	gs->n_tokens = get_u32(d);
	gs->n_prompt = get_u32(d + 4);
	gs->n_xchg = get_u32(d + 8);
	gs->n_side = get_u32(d + 12);
	gs->prefill_ns = get_u64(d + 16);
	gs->prefill_xchg = get_u64(d + 24);
	gs->wall_ns = get_u64(d + 32);
	gs->xchg_ns = get_u64(d + 40);
	gs->edge_ns = get_u64(d + 48);
	gs->bytes_out = get_u64(d + 56);
	gs->bytes_in = get_u64(d + 64);
	gs->base_params = get_u64(d + 72);
	gs->plugin_params = get_u64(d + 80);
	if (!gs->plugin_params && cfg->method != SPA_METHOD_BASE)
		gs->plugin_params = p->n_params; /* lora/adapter: nothing of it is on the cloud */
	gs->n_layers = get_u32(d + 88);
	gs->cloud_copied_tx = get_u64(d + 96);
	gs->cloud_copied_rx = get_u64(d + 104);
	gs->cloud_msgs_tx = get_u64(d + 112);
	gs->cloud_msgs_rx = get_u64(d + 120);
	gs->step_ns = malloc(8ull * (gs->n_tokens ? gs->n_tokens : 1));
	if (!gs->step_ns) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(gs->step_ns, d + DONE_HDR, 8ull * gs->n_tokens);
	m = (struct spa_msg){.type = SPA_MSG_BYE, .session = sid};
	spa_link_send(l, &m, NULL, 0);
	res->link = *spa_link_stats(l);
	rc = 0;
out:
	if (rc < 0) {
		free(res->tokens);
		res->tokens = NULL;
	}
	spa_edge_destroy(edge);
	free(up);
	free(rx);
	free(tx);
	spa_link_destroy(l);
	return rc;
}
