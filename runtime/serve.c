/* Serving (see include/spa/serve.h): the cloud's serve loop and the edge's session loop.
 * Message payloads are specified in docs/wire-protocol.md ("Message payloads") and coded by
 * payload.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/clock.h"
#include "spa/drv/link.h"
#include "spa/edge.h"
#include "spa/serve.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the wire carries little-endian floats: a big-endian port must swap them");

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

/* One line to the caller's log (none when it gave no log). */
static void serve_log(const struct spa_cloud_opts *o, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void serve_log(const struct spa_cloud_opts *o, const char *fmt, ...)
{
	if (!o->log)
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	o->log(o->log_ctx, line);
}

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
	struct spa_msg m = {.type = (uint8_t)req, .dtype = SPA_WIRE_F32,
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
	(void)session; /* the link carries the connection's id */
	struct spa_msg m = {.type = SPA_MSG_ERROR, .dtype = SPA_WIRE_BYTES,
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
	struct spa_hello h;
	if ((rc = spa_payload_decode_hello(msg.payload, msg.len, &h, err)) < 0)
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
	uint32_t max_batch = s->o->max_batch ? s->o->max_batch : SPA_RUNNER_DEFAULT_BATCH;
	struct spa_hello_ok hok = {.session = s->sid, .n_layers = hp->n_layers,
				   .n_embd = hp->n_embd, .kv_dim = kv, .n_vocab = hp->n_vocab,
				   .n_ctx = hp->n_ctx, .max_batch = max_batch,
				   .n_params = m->n_params};
	memcpy(hok.base_fp, m->fingerprint, 17);
	uint8_t ok[SPA_PAYLOAD_HELLO_OK_SIZE];
	spa_payload_encode_hello_ok(&hok, ok);
	struct spa_msg om = {.type = SPA_MSG_HELLO_OK};
	if ((rc = spa_link_send(s->l, &om, ok, sizeof ok)) < 0)
		return spa_err(err, rc, "sending HELLO_OK: %s", spa_link_error(s->l));
	s->accepted = true;

	if (spa_method_is_side((enum spa_method)h.method)) {
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
	size_t cap = spa_payload_prompt_size(hp->n_ctx);
	if (!(s->buf = malloc(cap)))
		return spa_err(err, -ENOMEM, "no memory for the prompt");
	rc = recv_ctl(s->l, &msg, s->buf, cap, SPA_MSG_PROMPT, s->o->timeout_ns, err);
	if (rc == -SPA_ETOOBIG)
		return spa_err(err, -SPA_ETOOBIG, "the prompt is longer than the context (%u)",
			       hp->n_ctx);
	if (rc < 0)
		return rc;
	struct spa_prompt pr;
	if ((rc = spa_payload_decode_prompt(msg.payload, msg.len, &pr, err)) < 0)
		return rc;
	uint32_t n_prompt = pr.n_prompt, n_gen = pr.n_gen;
	struct spa_gen_cfg cfg = {.method = h.method, .split = h.split, .merge = h.merge,
				  .sp = pr.sp};
	if ((uint64_t)n_prompt + n_gen > hp->n_ctx)
		return spa_err(err, -SPA_ETOOBIG, "prompt (%u) + tokens (%u) exceed the model's "
			       "context of %u: ask for fewer tokens", n_prompt, n_gen, hp->n_ctx);
	const int32_t *ids = pr.ids;
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
				     .pos = n_prompt + i};
		uint64_t b0 = ls->bytes_tx;
		if ((rc = spa_link_send(s->l, &tm, &tok, sizeof tok)) < 0)
			return spa_err(err, rc, "sending TOKEN: %s", spa_link_error(s->l));
		tok_bytes += ls->bytes_tx - b0;
	}
	gs.n_tokens = n_gen;
	/* Bytes of the method's exchanges; the streamed TOKENs are the same for every method. */
	gs.bytes_out = ls->bytes_tx - out0 - tok_bytes;
	gs.bytes_in = ls->bytes_rx - in0;

	gs.step_ns = s->step_ns;
	/* The cloud's side of the copy accounting (the edge has its own link's). */
	gs.cloud_copied_tx = ls->copied_tx;
	gs.cloud_copied_rx = ls->copied_rx;
	gs.cloud_msgs_tx = ls->msgs_tx + 1; /* + this DONE */
	gs.cloud_msgs_rx = ls->msgs_rx;
	size_t dlen = spa_payload_done_size(n_gen);
	uint8_t *d = realloc(s->buf, dlen);
	if (!d)
		return spa_err(err, -ENOMEM, "no memory for DONE");
	s->buf = d;
	spa_payload_encode_done(&gs, d);
	struct spa_msg dm = {.type = SPA_MSG_DONE};
	if ((rc = spa_link_send(s->l, &dm, d, dlen)) < 0)
		return spa_err(err, rc, "sending DONE: %s", spa_link_error(s->l));
	rc = recv_ctl(s->l, &msg, small, sizeof small, SPA_MSG_BYE, s->o->timeout_ns, err);
	if (rc < 0)
		return rc;
	if (!s->o->quiet)
		serve_log(s->o, "session %u done: %s, %u prompt + %u tokens, %u exchanges, %.1f ms",
			  s->sid, spa_method_name(h.method), n_prompt, n_gen, gs.n_xchg,
			  gs.wall_ns / 1e6);
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
		serve_log(o, "serving %s (L=%u H=%u V=%u, fingerprint %s) on %s",
			  m->gguf ? m->gguf->path : "model", m->hp.n_layers, m->hp.n_embd,
			  m->hp.n_vocab, m->fingerprint, o->uri);
	for (uint32_t n = 0; o->max_sessions == 0 || n < o->max_sessions; n++) {
		struct cloud_sess s = {.m = m, .be = be, .o = o};
		struct spa_errbuf aerr;
		rc = spa_link_accept(lis, &s.l, -1, &aerr);
		if (rc < 0) {
			spa_err(err, rc, "accept on %s: %s", o->uri, aerr.msg);
			break;
		}
		/* The session is named by its connection's random id (its low 32 bits). */
		s.sid = (uint32_t)spa_link_conn_id(s.l);
		struct spa_errbuf serr = {{0}};
		rc = cloud_session(&s, &serr);
		if (rc < 0) {
			serve_log(o, "session %u ended: %s", s.sid, serr.msg);
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

	struct spa_hello h = {.method = cfg->method, .split = cfg->split, .merge = cfg->merge,
			      .kind = p->kind, .rank = p->rank, .n_layers = p->n_layers,
			      .n_embd = p->n_embd, .kv_dim = p->kv_dim};
	memcpy(h.base_fp, p->base_fingerprint, 17);
	memcpy(h.plugin_fp, p->fingerprint, 17);
	uint8_t hb[1024]; /* HELLO, then HELLO_OK or an ERROR's message */
	spa_payload_encode_hello(&h, hb);
	struct spa_msg m = {.type = SPA_MSG_HELLO};
	if ((rc = spa_link_send(l, &m, hb, SPA_PAYLOAD_HELLO_SIZE)) < 0) {
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
	struct spa_hello_ok ok;
	if ((rc = spa_payload_decode_hello_ok(r.payload, r.len, &ok, err)) < 0)
		goto out;
	uint32_t sid = ok.session, max_batch = ok.max_batch, n_vocab = ok.n_vocab;
	res->session = sid;
	if (ok.n_layers != p->n_layers || ok.n_embd != p->n_embd ||
	    ok.kv_dim != p->kv_dim || max_batch == 0 || max_batch > 4096 ||
	    memcmp(ok.base_fp, p->base_fingerprint, 16) != 0) {
		rc = spa_err(err, -SPA_EPROTO, "HELLO_OK does not match this plugin's base");
		goto out;
	}
	if (spa_method_is_side(cfg->method)) {
		size_t up_size;
		if ((rc = spa_plugin_write_cloud_part(p, cfg->split, &up, &up_size, err)) < 0)
			goto out;
		m = (struct spa_msg){.type = SPA_MSG_UPLOAD};
		if ((rc = spa_link_send(l, &m, up, up_size)) < 0) {
			spa_err(err, rc, "sending UPLOAD: %s", spa_link_error(l));
			goto out;
		}
	}
	size_t plen = spa_payload_prompt_size(n_prompt);
	size_t max_req = (size_t)max_batch * p->n_embd;
	size_t L1H = (size_t)(p->n_layers + 1) * p->n_embd;
	if (L1H > max_req)
		max_req = L1H;
	size_t rx_cap = sizeof(float) * max_req + spa_payload_done_size(o->n_gen) + 512;
	size_t tx_cap = (size_t)max_batch * (p->n_embd + p->kv_dim) + p->n_embd;
	rx = aligned_alloc(64, (rx_cap + 63) & ~(size_t)63);
	tx = aligned_alloc(64, ((sizeof(float) * tx_cap > plen ? sizeof(float) * tx_cap : plen) +
				63) & ~(size_t)63);
	res->tokens = malloc(sizeof(int32_t) * (o->n_gen ? o->n_gen : 1));
	if (!rx || !tx || !res->tokens || spa_edge_create(&edge, p, max_batch) < 0) {
		rc = spa_err(err, -ENOMEM, "out of memory");
		goto out;
	}
	struct spa_prompt pr = {.n_prompt = n_prompt, .n_gen = o->n_gen, .sp = cfg->sp,
				.ids = prompt};
	spa_payload_encode_prompt(&pr, tx);
	m = (struct spa_msg){.type = SPA_MSG_PROMPT};
	uint64_t t0 = spa_clock_ns();
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
				res->first_token_ns = spa_clock_ns() - t0;
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
		uint64_t c0 = spa_clock_ns();
		rc = spa_edge_respond(edge, (enum spa_msg_type)r.type, r.layer, r.n_rows,
				      (const float *)r.payload, r.len / 4, (float *)tx, tx_cap,
				      &n_out, &reply, err);
		uint64_t c = spa_clock_ns() - c0;
		if (rc < 0) {
			char msg[600];
			snprintf(msg, sizeof msg, "edge: %s", err->msg);
			send_error(l, sid, rc, msg);
			goto out;
		}
		res->edge_compute_ns += c;
		m = (struct spa_msg){.type = (uint8_t)reply, .dtype = SPA_WIRE_F32,
				     .pos = r.pos, .layer = r.layer, .n_rows = r.n_rows,
				     .aux = c > UINT32_MAX ? UINT32_MAX : (uint32_t)c};
		if ((rc = spa_link_send(l, &m, tx, n_out * sizeof(float))) < 0) {
			spa_err(err, rc, "sending %s: %s", spa_msg_type_name(reply),
				spa_link_error(l));
			goto out;
		}
	}
	res->wall_ns = spa_clock_ns() - t0;
	struct spa_gen_stats *gs = &res->cloud;
	if (spa_payload_decode_done(r.payload, r.len, gs, NULL) < 0 ||
	    gs->n_tokens != res->n_tokens || res->n_tokens != o->n_gen) {
		rc = spa_err(err, -SPA_EPROTO, "DONE after %u of %u tokens, or malformed",
			     res->n_tokens, o->n_gen);
		goto out;
	}
	if (!gs->plugin_params && cfg->method != SPA_METHOD_BASE)
		gs->plugin_params = p->n_params; /* lora/adapter: nothing of it is on the cloud */
	gs->step_ns = malloc(8ull * (gs->n_tokens ? gs->n_tokens : 1));
	if (!gs->step_ns) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(gs->step_ns, (const uint8_t *)r.payload + SPA_PAYLOAD_DONE_HDR,
	       8ull * gs->n_tokens);
	m = (struct spa_msg){.type = SPA_MSG_BYE};
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
