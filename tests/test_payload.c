/* Control payloads (runtime/payload.c): HELLO, HELLO_OK, PROMPT and DONE with random fields
 * land at the offsets docs/wire-protocol.md gives ("Message payloads"), read back unchanged,
 * and every malformed field or length is refused with a message. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"

/* Little-endian fields read by hand: the reference for the documented layout. */
static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static float lef32(const uint8_t *p)
{
	uint32_t u = le32(p);
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static void random_fp(struct spa_rng *r, char fp[17])
{
	for (int i = 0; i < 16; i++)
		fp[i] = "0123456789abcdef"[spa_rng_next(r) % 16];
	fp[16] = 0;
}

/* A HELLO the decoder accepts: a method with its plugin kind (any kind for base). */
static struct spa_hello random_hello(struct spa_rng *r)
{
	struct spa_hello h = {
		.method = (uint8_t)(spa_rng_next(r) % SPA_METHOD_COUNT),
		.split = (uint8_t)(spa_rng_next(r) % SPA_SPLIT_COUNT),
		.merge = (uint8_t)(spa_rng_next(r) % SPA_MERGE_COUNT),
		.rank = 1 + (uint32_t)(spa_rng_next(r) % 4096),
		.n_layers = (uint32_t)spa_rng_next(r),
		.n_embd = (uint32_t)spa_rng_next(r),
		.kv_dim = (uint32_t)spa_rng_next(r),
	};
	h.kind = h.method == SPA_METHOD_BASE
		 ? (uint8_t)(spa_rng_next(r) % SPA_PLUGIN_KIND_COUNT)
		 : (uint8_t)spa_method_plugin_kind((enum spa_method)h.method);
	random_fp(r, h.base_fp);
	random_fp(r, h.plugin_fp);
	return h;
}

Test(payload, hello_lays_out_its_fields_and_round_trips)
{
	struct spa_rng r;
	spa_rng_seed(&r, 11);
	for (int it = 0; it < 500; it++) {
		struct spa_hello h = random_hello(&r), back;
		uint8_t b[SPA_PAYLOAD_HELLO_SIZE];
		memset(b, 0xa5, sizeof b);
		spa_payload_encode_hello(&h, b);
		cr_assert_eq(b[0], h.method);
		cr_assert_eq(b[1], h.split);
		cr_assert_eq(b[2], h.merge);
		cr_assert_eq(b[3], h.kind);
		cr_assert_eq(le32(b + 4), h.rank);
		cr_assert_eq(le32(b + 8), h.n_layers);
		cr_assert_eq(le32(b + 12), h.n_embd);
		cr_assert_eq(le32(b + 16), h.kv_dim);
		cr_assert(all_zero(b + 20, 4), "reserved bytes 20..23");
		cr_assert_eq(memcmp(b + 24, h.base_fp, 16), 0);
		cr_assert_eq(memcmp(b + 40, h.plugin_fp, 16), 0);
		struct spa_errbuf err = {{0}};
		cr_assert_eq(spa_payload_decode_hello(b, sizeof b, &back, &err), 0, "%s", err.msg);
		cr_assert(back.method == h.method && back.split == h.split &&
			  back.merge == h.merge && back.kind == h.kind && back.rank == h.rank &&
			  back.n_layers == h.n_layers && back.n_embd == h.n_embd &&
			  back.kv_dim == h.kv_dim && !strcmp(back.base_fp, h.base_fp) &&
			  !strcmp(back.plugin_fp, h.plugin_fp), "iteration %d", it);
	}
}

/* Decode b after f has spoiled one field: refused with a message containing `needle`. */
static void hello_refused(const struct spa_hello *good, size_t len, void (*f)(uint8_t *),
			  const char *needle)
{
	uint8_t b[SPA_PAYLOAD_HELLO_SIZE + 1] = {0};
	spa_payload_encode_hello(good, b);
	if (f)
		f(b);
	struct spa_hello h;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_payload_decode_hello(b, len, &h, &err), -SPA_EPROTO, "%s", needle);
	cr_assert(strstr(err.msg, needle), "expected \"%s\" in \"%s\"", needle, err.msg);
}

static void bad_method(uint8_t *b) { b[0] = SPA_METHOD_COUNT; }
static void bad_split(uint8_t *b) { b[1] = SPA_SPLIT_COUNT; }
static void bad_merge(uint8_t *b) { b[2] = SPA_MERGE_COUNT; }
static void bad_kind(uint8_t *b) { b[3] = SPA_PLUGIN_KIND_COUNT; }
static void bad_reserved(uint8_t *b) { b[22] = 1; }
static void bad_base_fp(uint8_t *b) { b[24 + 7] = 'G'; }
static void bad_plugin_fp(uint8_t *b) { b[40 + 15] = 0; }
static void wrong_kind(uint8_t *b) { b[3] = SPA_PLUGIN_LORA; }
static void rank_0(uint8_t *b) { memset(b + 4, 0, 4); }
static void rank_4097(uint8_t *b) { b[4] = 0x01, b[5] = 0x10, b[6] = b[7] = 0; }

Test(payload, hello_refuses_each_bad_field_with_a_message)
{
	struct spa_hello good = {.method = SPA_METHOD_SPA, .split = SPA_SPLIT_EDGE_ALL,
				 .merge = SPA_MERGE_REPLACE, .kind = SPA_PLUGIN_SIDE, .rank = 4096,
				 .n_layers = 2, .n_embd = 64, .kv_dim = 32};
	memcpy(good.base_fp, "0123456789abcdef", 17);
	memcpy(good.plugin_fp, "fedcba9876543210", 17);
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE - 1, NULL, "HELLO of 55 bytes, expected 56");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE + 1, NULL, "HELLO of 57 bytes, expected 56");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_method, "unknown method");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_split, "unknown method, split");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_merge, "unknown method, split, merge");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_kind, "or kind");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_reserved, "unknown method");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_base_fp, "malformed fingerprint");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, bad_plugin_fp, "malformed fingerprint");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, wrong_kind, "method spa with a lora plugin");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, rank_0, "plugin rank 0 out of range");
	hello_refused(&good, SPA_PAYLOAD_HELLO_SIZE, rank_4097, "plugin rank 4097 out of range");
}

Test(payload, hello_ok_lays_out_its_fields_and_round_trips)
{
	struct spa_rng r;
	spa_rng_seed(&r, 12);
	for (int it = 0; it < 500; it++) {
		struct spa_hello_ok h = {
			.session = (uint32_t)spa_rng_next(&r), .n_layers = (uint32_t)spa_rng_next(&r),
			.n_embd = (uint32_t)spa_rng_next(&r), .kv_dim = (uint32_t)spa_rng_next(&r),
			.n_vocab = (uint32_t)spa_rng_next(&r), .n_ctx = (uint32_t)spa_rng_next(&r),
			.max_batch = (uint32_t)spa_rng_next(&r), .n_params = spa_rng_next(&r),
		}, back;
		random_fp(&r, h.base_fp);
		uint8_t b[SPA_PAYLOAD_HELLO_OK_SIZE];
		memset(b, 0xa5, sizeof b);
		spa_payload_encode_hello_ok(&h, b);
		const uint32_t want[7] = {h.session, h.n_layers, h.n_embd, h.kv_dim, h.n_vocab,
					  h.n_ctx, h.max_batch};
		for (int k = 0; k < 7; k++)
			cr_assert_eq(le32(b + 4 * k), want[k], "field at %d", 4 * k);
		cr_assert(all_zero(b + 28, 4), "reserved bytes 28..31");
		cr_assert_eq(memcmp(b + 32, h.base_fp, 16), 0);
		cr_assert_eq(le64(b + 48), h.n_params);
		cr_assert(all_zero(b + 56, 8), "reserved bytes 56..63");
		struct spa_errbuf err = {{0}};
		cr_assert_eq(spa_payload_decode_hello_ok(b, sizeof b, &back, &err), 0, "%s", err.msg);
		cr_assert(back.session == h.session && back.n_layers == h.n_layers &&
			  back.n_embd == h.n_embd && back.kv_dim == h.kv_dim &&
			  back.n_vocab == h.n_vocab && back.n_ctx == h.n_ctx &&
			  back.max_batch == h.max_batch && back.n_params == h.n_params &&
			  !strcmp(back.base_fp, h.base_fp), "iteration %d", it);
	}
	uint8_t b[SPA_PAYLOAD_HELLO_OK_SIZE + 1] = {0};
	struct spa_hello_ok h;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_payload_decode_hello_ok(b, 63, &h, &err), -SPA_EPROTO);
	cr_assert_str_eq(err.msg, "HELLO_OK of 63 bytes, expected 64");
	cr_assert_eq(spa_payload_decode_hello_ok(b, 65, &h, &err), -SPA_EPROTO);
	cr_assert_str_eq(err.msg, "HELLO_OK of 65 bytes, expected 64");
}

Test(payload, prompt_lays_out_its_fields_and_round_trips)
{
	struct spa_rng r;
	spa_rng_seed(&r, 13);
	int32_t ids[301];
	uint8_t *b = malloc(spa_payload_prompt_size(301));
	cr_assert_not_null(b);
	for (uint32_t n = 1; n <= 301; n += 20) {
		for (uint32_t i = 0; i < n; i++)
			ids[i] = (int32_t)spa_rng_next(&r);
		struct spa_prompt p = {.n_prompt = n, .n_gen = (uint32_t)spa_rng_next(&r),
				       .sp = {.temp = spa_rng_uniform(&r) + 1.0f,
					      .top_k = (uint32_t)spa_rng_next(&r),
					      .top_p = spa_rng_uniform(&r),
					      .seed = spa_rng_next(&r)},
				       .ids = ids}, back;
		size_t len = spa_payload_prompt_size(n);
		cr_assert_eq(len, 32 + 4 * (size_t)n);
		memset(b, 0xa5, len);
		spa_payload_encode_prompt(&p, b);
		cr_assert_eq(le32(b), n);
		cr_assert_eq(le32(b + 4), p.n_gen);
		cr_assert_eq(lef32(b + 8), p.sp.temp);
		cr_assert_eq(le32(b + 12), p.sp.top_k);
		cr_assert_eq(lef32(b + 16), p.sp.top_p);
		cr_assert(all_zero(b + 20, 4), "reserved bytes 20..23");
		cr_assert_eq(le64(b + 24), p.sp.seed);
		for (uint32_t i = 0; i < n; i++)
			cr_assert_eq((int32_t)le32(b + 32 + 4 * i), ids[i]);
		struct spa_errbuf err = {{0}};
		cr_assert_eq(spa_payload_decode_prompt(b, len, &back, &err), 0, "%s", err.msg);
		cr_assert_eq(back.n_prompt, n);
		cr_assert_eq(back.n_gen, p.n_gen);
		cr_assert(back.sp.temp == p.sp.temp && back.sp.top_k == p.sp.top_k &&
			  back.sp.top_p == p.sp.top_p && back.sp.seed == p.sp.seed);
		cr_assert_eq(back.ids, (const int32_t *)(b + 32), "ids point into the payload");
		/* one byte less or more, and a header alone with no ids, are refused */
		cr_assert_eq(spa_payload_decode_prompt(b, len - 1, &back, &err), -SPA_EPROTO);
		cr_assert(strstr(err.msg, "does not match its"), "%s", err.msg);
		cr_assert_eq(spa_payload_decode_prompt(b, len + 1, &back, &err), -SPA_EPROTO);
	}
	struct spa_prompt p;
	struct spa_errbuf err = {{0}};
	memset(b, 0, 32);
	cr_assert_eq(spa_payload_decode_prompt(b, 32, &p, &err), -SPA_EPROTO, "no tokens");
	cr_assert_str_eq(err.msg, "PROMPT length 32 does not match its 0 tokens");
	cr_assert_eq(spa_payload_decode_prompt(b, 31, &p, &err), -SPA_EPROTO);
	cr_assert_str_eq(err.msg, "PROMPT of 31 bytes is too short");
	free(b);
}

Test(payload, done_lays_out_its_fields_and_round_trips)
{
	struct spa_rng r;
	spa_rng_seed(&r, 14);
	uint64_t steps[77];
	uint8_t *b = malloc(spa_payload_done_size(77));
	cr_assert_not_null(b);
	for (uint32_t n = 0; n <= 77; n += 7) {
		for (uint32_t i = 0; i < n; i++)
			steps[i] = spa_rng_next(&r);
		uint64_t v[18];
		for (int k = 0; k < 18; k++)
			v[k] = spa_rng_next(&r);
		struct spa_gen_stats s = {
			.n_tokens = n, .n_prompt = (uint32_t)v[0], .n_xchg = (uint32_t)v[1],
			.n_side = (uint32_t)v[2], .prefill_ns = v[3], .prefill_xchg = v[4],
			.wall_ns = v[5], .xchg_ns = v[6], .edge_ns = v[7], .bytes_out = v[8],
			.bytes_in = v[9], .base_params = v[10], .plugin_params = v[11],
			.n_layers = (uint32_t)v[12], .step_ns = steps, .cloud_copied_tx = v[13],
			.cloud_copied_rx = v[14], .cloud_msgs_tx = v[15], .cloud_msgs_rx = v[16],
		};
		size_t len = spa_payload_done_size(n);
		cr_assert_eq(len, 144 + 8 * (size_t)n);
		memset(b, 0xa5, len);
		spa_payload_encode_done(&s, b);
		const uint32_t w32[4] = {n, s.n_prompt, s.n_xchg, s.n_side};
		for (int k = 0; k < 4; k++)
			cr_assert_eq(le32(b + 4 * k), w32[k], "field at %d", 4 * k);
		const uint64_t w64[9] = {s.prefill_ns, s.prefill_xchg, s.wall_ns, s.xchg_ns,
					 s.edge_ns, s.bytes_out, s.bytes_in, s.base_params,
					 s.plugin_params};
		for (int k = 0; k < 9; k++)
			cr_assert_eq(le64(b + 16 + 8 * k), w64[k], "field at %d", 16 + 8 * k);
		cr_assert_eq(le32(b + 88), s.n_layers);
		cr_assert(all_zero(b + 92, 4), "reserved bytes 92..95");
		cr_assert_eq(le64(b + 96), s.cloud_copied_tx);
		cr_assert_eq(le64(b + 104), s.cloud_copied_rx);
		cr_assert_eq(le64(b + 112), s.cloud_msgs_tx);
		cr_assert_eq(le64(b + 120), s.cloud_msgs_rx);
		cr_assert(all_zero(b + 128, 16), "reserved bytes 128..143");
		for (uint32_t i = 0; i < n; i++)
			cr_assert_eq(le64(b + 144 + 8 * i), steps[i]);
		struct spa_gen_stats back;
		memset(&back, 0x5a, sizeof back);
		uint64_t *marker = back.step_ns;
		struct spa_errbuf err = {{0}};
		cr_assert_eq(spa_payload_decode_done(b, len, &back, &err), 0, "%s", err.msg);
		cr_assert_eq(back.step_ns, marker, "decode leaves step_ns alone");
		const uint64_t got[18] = {back.n_tokens, back.n_prompt, back.n_xchg, back.n_side,
					  back.prefill_ns, back.prefill_xchg, back.wall_ns,
					  back.xchg_ns, back.edge_ns, back.bytes_out, back.bytes_in,
					  back.base_params, back.plugin_params, back.n_layers,
					  back.cloud_copied_tx, back.cloud_copied_rx,
					  back.cloud_msgs_tx, back.cloud_msgs_rx};
		const uint64_t sent[18] = {s.n_tokens, s.n_prompt, s.n_xchg, s.n_side,
					   s.prefill_ns, s.prefill_xchg, s.wall_ns, s.xchg_ns,
					   s.edge_ns, s.bytes_out, s.bytes_in, s.base_params,
					   s.plugin_params, s.n_layers, s.cloud_copied_tx,
					   s.cloud_copied_rx, s.cloud_msgs_tx, s.cloud_msgs_rx};
		for (int k = 0; k < 18; k++)
			cr_assert_eq(got[k], sent[k], "field %d of %u tokens", k, n);
		cr_assert_eq(spa_payload_decode_done(b, len - 8, &back, &err), -SPA_EPROTO);
		cr_assert_eq(spa_payload_decode_done(b, len + 1, &back, &err), -SPA_EPROTO);
		cr_assert(strstr(err.msg, "does not match its token count"), "%s", err.msg);
	}
	struct spa_gen_stats back;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_payload_decode_done(b, 143, &back, &err), -SPA_EPROTO, "short header");
	free(b);
}
