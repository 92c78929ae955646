/* spa: the payloads of a session's control messages (see include/spa/payload.h and
 * docs/wire-protocol.md, "Message payloads"). */
#include <string.h>

#include "spa/payload.h"
#include "spa/plugin.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "payload fields are copied as little-endian bytes: a big-endian port must swap them");

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

/* ---------------------------------------------------------------- HELLO */

void spa_payload_encode_hello(const struct spa_hello *h, uint8_t b[SPA_PAYLOAD_HELLO_SIZE])
{
	memset(b, 0, SPA_PAYLOAD_HELLO_SIZE);
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

int spa_payload_decode_hello(const uint8_t *b, size_t len, struct spa_hello *h,
			     struct spa_errbuf *err)
{
	if (len != SPA_PAYLOAD_HELLO_SIZE)
		return spa_err(err, -SPA_EPROTO, "HELLO of %zu bytes, expected %u", len, SPA_PAYLOAD_HELLO_SIZE);
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

/* ---------------------------------------------------------------- HELLO_OK */

void spa_payload_encode_hello_ok(const struct spa_hello_ok *h,
				 uint8_t ok[SPA_PAYLOAD_HELLO_OK_SIZE])
{
	memset(ok, 0, SPA_PAYLOAD_HELLO_OK_SIZE);
	put_u32(ok + 0, h->session);
	put_u32(ok + 4, h->n_layers);
	put_u32(ok + 8, h->n_embd);
	put_u32(ok + 12, h->kv_dim);
	put_u32(ok + 16, h->n_vocab);
	put_u32(ok + 20, h->n_ctx);
	put_u32(ok + 24, h->max_batch);
	memcpy(ok + 32, h->base_fp, 16);
	put_u64(ok + 48, h->n_params);
}

int spa_payload_decode_hello_ok(const uint8_t *hb, size_t len, struct spa_hello_ok *h,
				struct spa_errbuf *err)
{
	if (len != SPA_PAYLOAD_HELLO_OK_SIZE)
		return spa_err(err, -SPA_EPROTO, "HELLO_OK of %zu bytes, expected %u", len,
			       SPA_PAYLOAD_HELLO_OK_SIZE);
	h->session = get_u32(hb);
	h->n_layers = get_u32(hb + 4);
	h->n_embd = get_u32(hb + 8);
	h->kv_dim = get_u32(hb + 12);
	h->n_vocab = get_u32(hb + 16);
	h->n_ctx = get_u32(hb + 20);
	h->max_batch = get_u32(hb + 24);
	memcpy(h->base_fp, hb + 32, 16);
	h->base_fp[16] = 0;
	h->n_params = get_u64(hb + 48);
	return 0;
}

/* ---------------------------------------------------------------- PROMPT */

size_t spa_payload_prompt_size(uint32_t n_prompt)
{
	return SPA_PAYLOAD_PROMPT_HDR + 4ull * n_prompt;
}

void spa_payload_encode_prompt(const struct spa_prompt *p, uint8_t *tx)
{
	memset(tx, 0, SPA_PAYLOAD_PROMPT_HDR);
	put_u32(tx, p->n_prompt);
	put_u32(tx + 4, p->n_gen);
	put_f32(tx + 8, p->sp.temp);
	put_u32(tx + 12, p->sp.top_k);
	put_f32(tx + 16, p->sp.top_p);
	put_u64(tx + 24, p->sp.seed);
	memcpy(tx + SPA_PAYLOAD_PROMPT_HDR, p->ids, 4ull * p->n_prompt);
}

int spa_payload_decode_prompt(const uint8_t *b, size_t len, struct spa_prompt *p,
			      struct spa_errbuf *err)
{
	if (len < SPA_PAYLOAD_PROMPT_HDR)
		return spa_err(err, -SPA_EPROTO, "PROMPT of %zu bytes is too short", len);
	p->n_prompt = get_u32(b);
	p->n_gen = get_u32(b + 4);
	p->sp.temp = get_f32(b + 8);
	p->sp.top_k = get_u32(b + 12);
	p->sp.top_p = get_f32(b + 16);
	p->sp.seed = get_u64(b + 24);
	p->ids = (const int32_t *)(b + SPA_PAYLOAD_PROMPT_HDR);
	if (len != SPA_PAYLOAD_PROMPT_HDR + 4ull * p->n_prompt || p->n_prompt == 0)
		return spa_err(err, -SPA_EPROTO, "PROMPT length %zu does not match its %u tokens",
			       len, p->n_prompt);
	return 0;
}

/* ---------------------------------------------------------------- DONE */

size_t spa_payload_done_size(uint32_t n_tokens)
{
	return SPA_PAYLOAD_DONE_HDR + 8ull * n_tokens;
}

void spa_payload_encode_done(const struct spa_gen_stats *gs, uint8_t *d)
{
	memset(d, 0, SPA_PAYLOAD_DONE_HDR);
	put_u32(d + 0, gs->n_tokens);
	put_u32(d + 4, gs->n_prompt);
	put_u32(d + 8, gs->n_xchg);
	put_u32(d + 12, gs->n_side);
	put_u64(d + 16, gs->prefill_ns);
	put_u64(d + 24, gs->prefill_xchg);
	put_u64(d + 32, gs->wall_ns);
	put_u64(d + 40, gs->xchg_ns);
	put_u64(d + 48, gs->edge_ns);
	put_u64(d + 56, gs->bytes_out);
	put_u64(d + 64, gs->bytes_in);
	put_u64(d + 72, gs->base_params);
	put_u64(d + 80, gs->plugin_params);
	put_u32(d + 88, gs->n_layers);
	put_u64(d + 96, gs->cloud_copied_tx);
	put_u64(d + 104, gs->cloud_copied_rx);
	put_u64(d + 112, gs->cloud_msgs_tx);
	put_u64(d + 120, gs->cloud_msgs_rx);
	memcpy(d + SPA_PAYLOAD_DONE_HDR, gs->step_ns, 8ull * gs->n_tokens);
}

int spa_payload_decode_done(const uint8_t *d, size_t len, struct spa_gen_stats *gs,
			    struct spa_errbuf *err)
{
	if (len < SPA_PAYLOAD_DONE_HDR || len != SPA_PAYLOAD_DONE_HDR + 8ull * get_u32(d))
		return spa_err(err, -SPA_EPROTO, "DONE of %zu bytes does not match its token count",
			       len);
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
	gs->n_layers = get_u32(d + 88);
	gs->cloud_copied_tx = get_u64(d + 96);
	gs->cloud_copied_rx = get_u64(d + 104);
	gs->cloud_msgs_tx = get_u64(d + 112);
	gs->cloud_msgs_rx = get_u64(d + 120);
	return 0;
}
