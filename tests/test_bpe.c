/* Tests of the byte-level BPE tokenizers (runtime/tokenizer_bpe.c, tokenizer.c, the synthetic
 * vocabularies of tokenizer_gen.c) and of spa-tokenize.
 *
 * The reference is llama.cpp: tests/bpe_cases.h holds the ids its llama-tokenize gave for 31
 * texts on spa's synthetic vocabulary of each of 20 pre-tokenizers (the vocabularies are
 * made here again, at test time, from the same deterministic generator). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

#include "bpe_cases.h"

/* ---- helpers ---- */

typedef int (*keys_fn)(struct spa_gguf_writer *, const void *);

/* Load a tokenizer from a GGUF image holding what keys writes; rc of spa_tokenizer_load. */
static int load_keys(keys_fn keys, const void *arg, struct spa_tokenizer **t,
		     struct spa_errbuf *err)
{
	struct spa_gguf_writer *w;
	struct spa_gguf *g;
	void *buf;
	size_t size;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(keys(w, arg), 0);
	cr_assert_eq(spa_gguf_writer_write_mem(w, &buf, &size, err), 0, "%s", err->msg);
	spa_gguf_writer_destroy(w);
	cr_assert_eq(spa_gguf_open_mem(&g, buf, size, err), 0, "%s", err->msg);
	*t = (void *)1;
	int rc = spa_tokenizer_load(t, g, err);
	spa_gguf_close(g);
	free(buf);
	return rc;
}

static int synth_keys(struct spa_gguf_writer *w, const void *pre)
{
	struct spa_errbuf err = {{0}};
	int rc = spa_tokenizer_write_synthetic_bpe(w, pre, BPE_N_VOCAB, &err);
	cr_assert_eq(rc, 0, "%s", err.msg);
	return rc;
}

static struct spa_tokenizer *synth_tok(const char *pre)
{
	struct spa_tokenizer *t;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(load_keys(synth_keys, pre, &t, &err), 0, "%s: %s", pre, err.msg);
	return t;
}

/* As spa-tokenize and llama-tokenize: parse special tokens, the BOS the vocabulary wants. */
static unsigned tokenize_flags(const struct spa_tokenizer *t)
{
	return SPA_TOK_PARSE_SPECIAL | (spa_tokenizer_add_bos(t) ? SPA_TOK_ADD_SPECIAL : 0);
}

static char *decode_all(const struct spa_tokenizer *t, const int32_t *ids, uint32_t n,
			size_t *len)
{
	size_t cap = 16;
	char *s = malloc(cap);
	int rc;
	while ((rc = spa_tokenizer_decode(t, ids, n, s, cap, len)) == -SPA_ETOOBIG)
		s = realloc(s, cap = *len + 1);
	cr_assert_eq(rc, 0);
	return s;
}

/* ---- agreement with llama.cpp ---- */

Test(bpe, encodes_as_llama_cpp_for_every_pre_tokenizer)
{
	static int32_t ids[8192];
	for (size_t c = 0; c < sizeof bpe_cases / sizeof bpe_cases[0]; c++) {
		struct spa_tokenizer *t = synth_tok(bpe_cases[c].pre);
		cr_assert_str_eq(spa_tokenizer_model(t), "gpt2");
		cr_assert_str_eq(spa_tokenizer_pre(t), bpe_cases[c].pre);
		const int32_t *want = bpe_cases[c].ids;
		for (size_t i = 0; i < BPE_N_TEXTS; i++) {
			uint32_t n, nw = bpe_cases[c].n[i];
			cr_assert_eq(spa_tokenizer_encode(t, bpe_texts[i], tokenize_flags(t), ids,
							  8192, &n), 0);
			cr_assert_eq(n, nw, "%s, text %zu: %u tokens, llama.cpp %u",
				     bpe_cases[c].pre, i, n, nw);
			for (uint32_t k = 0; k < n; k++)
				cr_assert_eq(ids[k], want[k], "%s, text %zu, token %u: %d, llama.cpp "
					     "%d", bpe_cases[c].pre, i, k, ids[k], want[k]);
			want += nw;
		}
		spa_tokenizer_destroy(t);
	}
}

/* The flags do what they say on llama.cpp's ids: without PARSE_SPECIAL the control tokens'
 * text is text; without ADD_SPECIAL no BOS. */
Test(bpe, flags_parse_special_and_bos)
{
	struct spa_tokenizer *t = synth_tok("llama-bpe");
	int32_t a[256], b[256];
	uint32_t na, nb;
	const char *text = "<|begin_of_text|>hi<|eot_id|>";
	cr_assert_eq(spa_tokenizer_encode(t, text, SPA_TOK_PARSE_SPECIAL | SPA_TOK_ADD_SPECIAL, a,
					  256, &na), 0);
	int32_t bos = spa_tokenizer_bos(t);
	cr_assert(spa_tokenizer_add_bos(t));
	cr_assert(na >= 4 && a[0] == bos && a[1] == bos, "BOS, then the BOS of the text");
	cr_assert_eq(spa_tokenizer_encode(t, text, 0, b, 256, &nb), 0);
	cr_assert_gt(nb, na, "control tokens as text take more tokens");
	for (uint32_t i = 0; i < nb; i++)
		cr_assert_neq(b[i], bos);
	size_t len;
	char *back = decode_all(t, b, nb, &len);
	cr_assert_str_eq(back, text);
	free(back);
	/* User-defined tokens are found without PARSE_SPECIAL. */
	cr_assert_eq(spa_tokenizer_encode(t, "<tool>", 0, b, 256, &nb), 0);
	cr_assert_eq(nb, 1);
	cr_assert_str_eq(spa_tokenizer_piece(t, -1, b[0]), "<tool>");
	cr_assert_str_eq(spa_tokenizer_piece(t, -1, a[0]), "");
	cr_assert_str_eq(spa_tokenizer_token_text(t, a[0], SPA_TOK_SPECIAL, &len),
			 "<|begin_of_text|>");
	cr_assert_eq(len, 17);
	spa_tokenizer_destroy(t);

	/* gpt-2 adds no BOS: ADD_SPECIAL changes nothing. */
	t = synth_tok("gpt-2");
	cr_assert(!spa_tokenizer_add_bos(t));
	cr_assert_eq(spa_tokenizer_encode(t, "Hello", SPA_TOK_ADD_SPECIAL, a, 256, &na), 0);
	cr_assert_eq(spa_tokenizer_encode(t, "Hello", 0, b, 256, &nb), 0);
	cr_assert(na == nb && memcmp(a, b, na * sizeof *a) == 0);
	cr_assert_eq(spa_tokenizer_encode(t, "", SPA_TOK_ADD_SPECIAL, a, 256, &na), 0);
	cr_assert_eq(na, 0);
	cr_assert_eq(spa_tokenizer_encode(t, "Hello world, again", 0, a, 2, &na), -SPA_ETOOBIG);
	cr_assert_gt(na, 2);
	spa_tokenizer_destroy(t);
}

/* ---- decoding ---- */

Test(bpe, decode_gives_the_text_back)
{
	static int32_t ids[8192];
	for (size_t c = 0; c < sizeof bpe_cases / sizeof bpe_cases[0]; c++) {
		struct spa_tokenizer *t = synth_tok(bpe_cases[c].pre);
		for (size_t i = 0; i < BPE_N_TEXTS; i++) {
			const char *text = bpe_texts[i];
			uint32_t n;
			size_t len;
			/* Bad UTF-8 comes back as U+FFFD: that text is checked below. */
			if (strstr(text, "\xff"))
				continue;
			cr_assert_eq(spa_tokenizer_encode(t, text, 0, ids, 8192, &n), 0);
			char *back = decode_all(t, ids, n, &len);
			cr_assert_eq(len, strlen(text));
			cr_assert_str_eq(back, text, "%s, text %zu", bpe_cases[c].pre, i);
			free(back);
		}
		/* llama.cpp's reading of bad UTF-8: each byte that does not start a complete
		 * sequence is U+FFFD. */
		const char *bad = "a\xff" "b\xc3 \x80\xe2\x9c";
		const char *fixed = "a\xef\xbf\xbd" "b\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd";
		uint32_t n;
		size_t len;
		cr_assert_eq(spa_tokenizer_encode(t, bad, 0, ids, 8192, &n), 0);
		char *back = decode_all(t, ids, n, &len);
		cr_assert_str_eq(back, fixed);
		free(back);
		spa_tokenizer_destroy(t);
	}
}

/* A random codepoint from a mix that exercises every pre-tokenizer. */
static uint32_t rand_cpt(struct spa_rng *r)
{
	static const uint32_t pick[] = {
		' ', ' ', ' ', '\n', '\t', '\r', '\'', '\'', 's', 't', 'l', 'd', 'S', 'T', 'e', 'r',
		'0', '1', '9', '.', ',', '!', '?', '(', ')', '{', '}', '<', '|', '>', '$', '+', '~',
		0xe9, 0xdf, 0xa0, 0x3000, 0x2003, 0x85, 0x4e2d, 0x6587, 0x3053, 0xac00, 0x1f600,
		0x1f44d, 0x200d, 0xfe0f, 0x301, 0x660, 0xff21, 0x2014,
	};
	uint64_t v = spa_rng_next(r);
	if (v % 3 == 0)
		return 'a' + (uint32_t)(v >> 8) % 26;
	if (v % 7 == 1) /* anything, surrogates and U+0000 aside */
		for (uint32_t c = (uint32_t)(v >> 16) % 0x10ffff + 1;; c = c / 2 + 1)
			if (c < 0xd800 || c > 0xdfff)
				return c;
	return pick[(v >> 8) % (sizeof pick / sizeof pick[0])];
}

static size_t put_utf8(char *d, uint32_t c)
{
	if (c < 0x80)
		return (size_t)(d[0] = (char)c, 1);
	if (c < 0x800) {
		d[0] = (char)(0xc0 | c >> 6);
		d[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		d[0] = (char)(0xe0 | c >> 12);
		d[1] = (char)(0x80 | (c >> 6 & 0x3f));
		d[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	d[0] = (char)(0xf0 | c >> 18);
	d[1] = (char)(0x80 | (c >> 12 & 0x3f));
	d[2] = (char)(0x80 | (c >> 6 & 0x3f));
	d[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

Test(bpe, random_texts_round_trip)
{
	static const char *const pres[] = { "llama-bpe", "qwen2", "gpt-2", "falcon",
					     "deepseek-llm", "deepseek-coder", "starcoder" };
	static int32_t ids[8192];
	struct spa_rng r;
	spa_rng_seed(&r, 2024);
	for (size_t p = 0; p < sizeof pres / sizeof pres[0]; p++) {
		struct spa_tokenizer *t = synth_tok(pres[p]);
		for (int it = 0; it < 60; it++) {
			char text[1024];
			size_t len = 0, want = spa_rng_next(&r) % 200;
			for (size_t k = 0; k < want; k++)
				len += put_utf8(text + len, rand_cpt(&r));
			text[len] = 0;
			uint32_t n;
			size_t back_len;
			cr_assert_eq(spa_tokenizer_encode(t, text, 0, ids, 8192, &n), 0);
			for (uint32_t k = 0; k < n; k++)
				cr_assert(ids[k] >= 0 && (uint32_t)ids[k] < BPE_N_VOCAB);
			char *back = decode_all(t, ids, n, &back_len);
			cr_assert(back_len == len && memcmp(back, text, len) == 0,
				  "%s: random text %d does not come back", pres[p], it);
			free(back);
		}
		spa_tokenizer_destroy(t);
	}
}

/* ---- the synthetic vocabulary ---- */

Test(bpe, synthetic_vocab_is_a_byte_level_vocabulary)
{
	struct spa_gguf_writer *w;
	struct spa_gguf *g;
	struct spa_errbuf err = {{0}};
	void *a, *b;
	size_t na, nb;
	for (int k = 0; k < 2; k++) {
		cr_assert_eq(spa_gguf_writer_create(&w), 0);
		cr_assert_eq(spa_tokenizer_write_synthetic_bpe(w, "qwen2", 4096, &err), 0, "%s",
			     err.msg);
		cr_assert_eq(spa_gguf_writer_write_mem(w, k ? &b : &a, k ? &nb : &na, &err), 0);
		spa_gguf_writer_destroy(w);
	}
	cr_assert(na == nb && memcmp(a, b, na) == 0, "two synthetic vocabularies differ");
	free(b);
	cr_assert_eq(spa_gguf_open_mem(&g, a, na, &err), 0, "%s", err.msg);
	const struct spa_gguf_kv *tok = spa_gguf_find_kv(g, "tokenizer.ggml.tokens");
	const struct spa_gguf_kv *ty = spa_gguf_find_kv(g, "tokenizer.ggml.token_type");
	const struct spa_gguf_kv *mg = spa_gguf_find_kv(g, "tokenizer.ggml.merges");
	cr_assert(tok && ty && mg && tok->v.arr.n == 4096 && ty->v.arr.n == 4096);
	const struct spa_gguf_str *s = tok->v.arr.data;
	const int32_t *types = ty->v.arr.data;
	/* GPT-2's first tokens: '!' .. '~', then the Latin-1 letters as themselves. */
	cr_assert_str_eq(s[0].data, "!");
	cr_assert_str_eq(s[93].data, "~");
	cr_assert_str_eq(s[94].data, "\xc2\xa1");          /* ¡ */
	cr_assert_str_eq(s[188].data, "\xc4\x80");         /* Ā: byte 0 */
	cr_assert_str_eq(s[188 + 32].data, "\xc4\xa0");    /* Ġ: the space */
	/* Every merge is two tokens; merges and learned tokens come in step. */
	cr_assert_gt(mg->v.arr.n, 3000);
	cr_assert_str_eq(((const struct spa_gguf_str *)mg->v.arr.data)[0].data, "\xc4\xa0 t");
	for (uint32_t i = 0; i < 4096 - 5; i++)
		cr_assert_eq(types[i], 1);
	cr_assert_str_eq(s[4091].data, "<|endoftext|>");
	cr_assert_eq(types[4091], 3);
	cr_assert_str_eq(s[4094].data, "<tool_call>");
	cr_assert_eq(types[4094], 4);
	spa_gguf_close(g);
	free(a);

	struct spa_tokenizer *t;
	cr_assert_eq(load_keys(synth_keys, "llama-bpe", &t, &err), 0, "%s", err.msg);
	/* Words of the corpus are whole tokens; unseen words are few tokens. */
	int32_t ids[64];
	uint32_t n;
	cr_assert_eq(spa_tokenizer_encode(t, " the", 0, ids, 64, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_str_eq(spa_tokenizer_piece(t, -1, ids[0]), " the");
	cr_assert_eq(spa_tokenizer_encode(t, " qwfp", 0, ids, 64, &n), 0);
	cr_assert_lt(n, 3);
	spa_tokenizer_destroy(t);

	/* Refused: an unknown pre-tokenizer, a vocabulary too small. */
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_tokenizer_write_synthetic_bpe(w, "gpt2", 4096, &err), -SPA_EUSAGE);
	cr_assert(strstr(err.msg, "gpt-2"), "%s", err.msg);
	cr_assert_eq(spa_tokenizer_write_synthetic_bpe(w, "qwen2", 511, &err), -SPA_EUSAGE);
	cr_assert(strstr(err.msg, "512"), "%s", err.msg);
	spa_gguf_writer_destroy(w);
}

/* ---- malformed vocabularies ---- */

struct vocab {
	const char *model, *pre;
	const char *const *tokens;
	uint32_t n_tokens;
	const int32_t *types;
	const char *const *merges;
	uint32_t n_merges;
	int64_t bos;   /* < 0: key absent */
	int add_bos;   /* -1 absent, 0/1; 2: present as a string */
};

static int vocab_keys(struct spa_gguf_writer *w, const void *arg)
{
	const struct vocab *v = arg;
	int rc = 0;
	if (v->model)
		rc |= spa_gguf_writer_set_str(w, "tokenizer.ggml.model", v->model);
	if (v->pre)
		rc |= spa_gguf_writer_set_str(w, "tokenizer.ggml.pre", v->pre);
	if (v->tokens)
		rc |= spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", v->tokens,
						  v->n_tokens);
	if (v->types)
		rc |= spa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPA_GGUF_INT32,
					      v->types, v->n_tokens);
	if (v->merges)
		rc |= spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", v->merges,
						  v->n_merges);
	if (v->bos >= 0)
		rc |= spa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
	if (v->add_bos == 2)
		rc |= spa_gguf_writer_set_str(w, "tokenizer.ggml.add_bos_token", "yes");
	else if (v->add_bos >= 0)
		rc |= spa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos);
	return rc;
}

Test(bpe, malformed_vocabularies_are_refused)
{
	static const char *const tok[] = { "a", "b", "ab", "c", "abc", "<|endoftext|>" };
	static const char *const dup[] = { "a", "b", "ab", "a", "abc", "<|endoftext|>" };
	static const int32_t ty[] = { 1, 1, 1, 1, 1, 3 };
	static const char *const mg[] = { "a b", "ab c" };
	static const char *const no_space[] = { "a b", "abc" };
	static const char *const lead_space[] = { " ab", "ab c" };
	static const char *const trail_space[] = { "a b", "ab " };
	static const char *const missing_part[] = { "a b", "ab d" };
	static const char *const missing_result[] = { "a b", "b c" };
	const struct {
		struct vocab v;
		const char *want;
	} cases[] = {
		{ { "gpt2", NULL, tok, 6, ty, mg, 2, 5, -1 }, "tokenizer.ggml.pre is missing" },
		{ { "gpt2", "gpt2", tok, 6, ty, mg, 2, 5, -1 }, "'gpt2', a pre-tokenizer" },
		{ { "gpt2", "llama-bpe", tok, 6, ty, NULL, 0, 5, -1 },
		  "tokenizer.ggml.merges is missing" },
		{ { "gpt2", "qwen2", NULL, 0, NULL, mg, 2, -1, -1 }, "tokenizer.ggml.tokens" },
		{ { "gpt2", "qwen2", tok, 6, ty, no_space, 2, 5, -1 }, "merge 1 " },
		{ { "gpt2", "qwen2", tok, 6, ty, lead_space, 2, 5, -1 }, "merge 0 " },
		{ { "gpt2", "qwen2", tok, 6, ty, trail_space, 2, 5, -1 }, "not two tokens" },
		{ { "gpt2", "qwen2", tok, 6, ty, missing_part, 2, 5, -1 }, "refers to 'd'" },
		{ { "gpt2", "qwen2", tok, 6, ty, missing_result, 2, 5, -1 }, "refers to 'bc'" },
		{ { "gpt2", "qwen2", dup, 6, ty, mg, 2, 5, -1 }, "both 'a'" },
		{ { "gpt2", "qwen2", tok, 6, ty, mg, 2, 6, -1 }, "bos_token_id is 6" },
		{ { "gpt2", "qwen2", tok, 6, ty, mg, 2, 5, 2 }, "add_bos_token should be a bool" },
		/* chatglm-bpe has no default BOS; asking for one without its id is an error */
		{ { "gpt2", "chatglm-bpe", tok, 6, ty, mg, 2, -1, 1 }, "asks for a BOS" },
		{ { "bert", NULL, tok, 6, ty, mg, 2, 5, -1 }, "'bert'" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct spa_tokenizer *t;
		struct spa_errbuf err = {{0}};
		int rc = load_keys(vocab_keys, &cases[i].v, &t, &err);
		cr_assert_eq(rc, -SPA_EMODEL, "case %zu: rc %d (%s)", i, rc, err.msg);
		cr_assert_null(t, "case %zu", i);
		cr_assert(strstr(err.msg, cases[i].want), "case %zu: message '%s' lacks '%s'", i,
			  err.msg, cases[i].want);
	}

	/* The same vocabulary, well formed: merges by rank, and the defaults of llama.cpp
	 * (llama-bpe adds BOS, qwen2 does not). */
	struct vocab ok = { "gpt2", "qwen2", tok, 6, ty, mg, 2, 5, -1 };
	struct spa_tokenizer *t;
	struct spa_errbuf err = {{0}};
	int32_t ids[16];
	uint32_t n;
	cr_assert_eq(load_keys(vocab_keys, &ok, &t, &err), 0, "%s", err.msg);
	cr_assert(!spa_tokenizer_add_bos(t));
	cr_assert_eq(spa_tokenizer_encode(t, "abcab", SPA_TOK_ADD_SPECIAL, ids, 16, &n), 0);
	cr_assert(n == 2 && ids[0] == 4 && ids[1] == 2, "abc|ab: %u tokens", n);
	spa_tokenizer_destroy(t);
	ok.pre = "llama-bpe";
	cr_assert_eq(load_keys(vocab_keys, &ok, &t, &err), 0, "%s", err.msg);
	cr_assert(spa_tokenizer_add_bos(t));
	cr_assert_eq(spa_tokenizer_encode(t, "abcab", SPA_TOK_ADD_SPECIAL, ids, 16, &n), 0);
	cr_assert(n == 3 && ids[0] == 5 && ids[1] == 4 && ids[2] == 2);
	spa_tokenizer_destroy(t);
	ok.add_bos = 0;
	cr_assert_eq(load_keys(vocab_keys, &ok, &t, &err), 0, "%s", err.msg);
	cr_assert(!spa_tokenizer_add_bos(t));
	spa_tokenizer_destroy(t);

	/* "<|endoftext|>" typed normal is a control token all the same (as llama.cpp). */
	static const int32_t ty_normal[] = { 1, 1, 1, 1, 1, 1 };
	struct vocab eot = { "gpt2", "gpt-2", tok, 6, ty_normal, mg, 2, 5, -1 };
	cr_assert_eq(load_keys(vocab_keys, &eot, &t, &err), 0, "%s", err.msg);
	cr_assert_str_eq(spa_tokenizer_piece(t, -1, 5), "");
	cr_assert_eq(spa_tokenizer_encode(t, "a<|endoftext|>", SPA_TOK_PARSE_SPECIAL, ids, 16,
					  &n), 0);
	cr_assert(n == 2 && ids[0] == 0 && ids[1] == 5);
	spa_tokenizer_destroy(t);
}

Test(bpe, write_gives_the_same_tokenizer)
{
	static const char *const pres[] = { "llama-bpe", "chatglm-bpe", "deepseek-coder" };
	static int32_t a[4096], b[4096];
	for (size_t p = 0; p < sizeof pres / sizeof pres[0]; p++) {
		struct spa_tokenizer *t = synth_tok(pres[p]), *t2;
		struct spa_gguf_writer *w;
		struct spa_gguf *g;
		struct spa_errbuf err = {{0}};
		void *buf;
		size_t size;
		cr_assert_eq(spa_gguf_writer_create(&w), 0);
		cr_assert_eq(spa_tokenizer_write(t, w), 0);
		cr_assert_eq(spa_gguf_writer_write_mem(w, &buf, &size, &err), 0, "%s", err.msg);
		spa_gguf_writer_destroy(w);
		cr_assert_eq(spa_gguf_open_mem(&g, buf, size, &err), 0, "%s", err.msg);
		cr_assert_eq(spa_tokenizer_load(&t2, g, &err), 0, "%s", err.msg);
		cr_assert_str_eq(spa_tokenizer_pre(t2), pres[p]);
		cr_assert_eq(spa_tokenizer_bos(t2), spa_tokenizer_bos(t));
		cr_assert_eq(spa_tokenizer_eos(t2), spa_tokenizer_eos(t));
		cr_assert_eq(spa_tokenizer_add_bos(t2), spa_tokenizer_add_bos(t));
		for (size_t i = 0; i < BPE_N_TEXTS; i++) {
			uint32_t na, nb;
			cr_assert_eq(spa_tokenizer_encode(t, bpe_texts[i], tokenize_flags(t), a, 4096,
							  &na), 0);
			cr_assert_eq(spa_tokenizer_encode(t2, bpe_texts[i], tokenize_flags(t2), b,
							  4096, &nb), 0);
			cr_assert(na == nb && memcmp(a, b, na * sizeof *a) == 0, "%s text %zu",
				  pres[p], i);
		}
		spa_tokenizer_destroy(t2);
		spa_tokenizer_destroy(t);
		spa_gguf_close(g);
		free(buf);
	}
}

/* ---- programs ---- */

Test(bpe, spa_tokenize_prints_as_llama_tokenize)
{
	char cmd[2048], out[16384], path[160];
	const char *dir = tu_tmpdir();
	snprintf(path, sizeof path, "%s/v.gguf", dir);
	snprintf(cmd, sizeof cmd, "%s base --shape tiny --pre llama-bpe --vocab %u --vocab-only "
		 "-q -o %s", tu_program("spa-gen"), BPE_N_VOCAB, path);
	int st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 0, "spa-gen said: %s", out);
	cr_assert(strstr(out, "vocabulary only"), "%s", out);

	/* Text 0 of the cases ("Hello world") with llama.cpp's ids, as a Python list. */
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'Hello world' --ids", tu_program("spa-tokenize"),
		 path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	char want[256];
	int o = snprintf(want, sizeof want, "[");
	for (uint16_t i = 0; i < bpe_cases[0].n[0]; i++)
		o += snprintf(want + o, sizeof want - (size_t)o, "%s%d", i ? ", " : "",
			      bpe_cases[0].ids[i]);
	snprintf(want + o, sizeof want - (size_t)o, "]\n");
	cr_assert_str_eq(out, want);

	/* One token a line, control tokens spelled out; --no-bos drops the BOS. */
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'Hi'", tu_program("spa-tokenize"), path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	char line[64];
	snprintf(line, sizeof line, "%6d -> '<|begin_of_text|>'\n", bpe_cases[0].ids[0]);
	cr_assert(strncmp(out, line, strlen(line)) == 0, "%s", out);
	cr_assert(strstr(out, " -> 'Hi'\n") || strstr(out, " -> 'H'\n"), "%s", out);
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'Hi' --no-bos", tu_program("spa-tokenize"), path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	cr_assert_null(strstr(out, "begin_of_text"), "%s", out);

	/* Escapes, as llama-tokenize: "a\nb" is three bytes unless --no-escape. */
	int32_t ids[16];
	uint32_t n;
	struct spa_tokenizer *t = synth_tok("llama-bpe");
	cr_assert_eq(spa_tokenizer_encode(t, "a\nb", 0, ids, 16, &n), 0);
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'a\\nb' --ids --no-bos", tu_program("spa-tokenize"),
		 path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	o = snprintf(want, sizeof want, "[");
	for (uint32_t i = 0; i < n; i++)
		o += snprintf(want + o, sizeof want - (size_t)o, "%s%d", i ? ", " : "", ids[i]);
	snprintf(want + o, sizeof want - (size_t)o, "]\n");
	cr_assert_str_eq(out, want);
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'a\\nb' --ids --no-bos --no-escape",
		 tu_program("spa-tokenize"), path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	cr_assert_str_neq(out, want);
	spa_tokenizer_destroy(t);

	/* -f FILE, and a count. */
	char txt[160];
	snprintf(txt, sizeof txt, "%s/t.txt", dir);
	tu_write_file(txt, bpe_texts[4], strlen(bpe_texts[4]));
	snprintf(cmd, sizeof cmd, "%s -m %s -f %s --show-count", tu_program("spa-tokenize"), path,
		 txt);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	snprintf(want, sizeof want, "Total number of tokens: %u\n", bpe_cases[0].n[4]);
	cr_assert(strstr(out, want), "%s", out);

	/* Bad usage exits 2, files that are not tokenizers 1. */
	const struct {
		const char *args;
		int status;
		const char *want;
	} bad[] = {
		{ "-p hi", 2, "-m FILE" },
		{ "-m %s", 2, "one way" },
		{ "-m %s -p a -f b", 2, "one way" },
		{ "-m %s -p a --frob", 2, "--frob" },
		{ "-m %s -f /nonexistent.txt", 1, "nonexistent" },
		{ "-m /nonexistent.gguf -p a", 1, "nonexistent" },
		{ "-m %s -p 'a\\x00b'", 1, "NUL" },
		{ "--help", 0, "--no-bos" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char args[512];
		snprintf(args, sizeof args, bad[i].args, path);
		snprintf(cmd, sizeof cmd, "%s %s", tu_program("spa-tokenize"), args);
		st = tu_run(cmd, out, sizeof out, 1);
		cr_assert_eq(st, bad[i].status, "'%s' exited %d: %s", args, st, out);
		cr_assert(strstr(out, bad[i].want), "'%s' said '%s', lacking '%s'", args, out,
			  bad[i].want);
	}
	/* A GGUF without a tokenizer: a plugin's cloud half has none; use an empty GGUF. */
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	char empty[160];
	snprintf(empty, sizeof empty, "%s/empty.gguf", dir);
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_gguf_writer_set_str(w, "general.architecture", "llama"), 0);
	cr_assert_eq(spa_gguf_writer_write(w, empty, false, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	snprintf(cmd, sizeof cmd, "%s -m %s -p hi", tu_program("spa-tokenize"), empty);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 1, "%s", out);
	cr_assert(strstr(out, "tokenizer.ggml.model is missing"), "%s", out);
}

Test(bpe, a_bpe_model_runs_end_to_end)
{
	char cmd[2048], out[16384], path[160], plug[160];
	const char *dir = tu_tmpdir();
	snprintf(path, sizeof path, "%s/m.gguf", dir);
	snprintf(plug, sizeof plug, "%s/p.gguf", dir);
	snprintf(cmd, sizeof cmd, "%s base --shape tiny --tokenizer bpe --pre qwen2 -q -o %s",
		 tu_program("spa-gen"), path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "spa-gen said: %s", out);
	cr_assert(strstr(out, "tokenizer bpe qwen2"), "%s", out);

	struct spa_model *m;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load(&m, path, false, &err), 0, "%s", err.msg);
	cr_assert_str_eq(spa_tokenizer_pre(m->tok), "qwen2");
	cr_assert_eq(spa_tokenizer_n_vocab(m->tok), 1024);
	spa_model_destroy(m);

	/* spa-run prints the prompt's and the new tokens' text; --ids the ids. */
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'Once upon a time, 12345 caf\xc3\xa9s' -n 6 --ids",
		 tu_program("spa-run"), path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "spa-run said: %s", out);
	int n_ids = 0;
	for (char *s = out; *s; s++)
		n_ids += (*s >= '0' && *s <= '9') && (s == out || s[-1] == ' ');
	cr_assert_geq(n_ids, 6, "%s", out);
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'Once upon a time, 12345 caf\xc3\xa9s' -n 6",
		 tu_program("spa-run"), path);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "spa-run said: %s", out);
	cr_assert(strncmp(out, "Once upon a time, 12345 caf\xc3\xa9s", 28) == 0, "%s", out);

	/* A plugin carries the BPE tokenizer. */
	snprintf(cmd, sizeof cmd, "%s plugin --base %s --kind spa --rank 8 -q -o %s",
		 tu_program("spa-gen"), path, plug);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "spa-gen plugin said: %s", out);
	struct spa_plugin *p;
	cr_assert_eq(spa_plugin_load(&p, plug, &err), 0, "%s", err.msg);
	cr_assert_str_eq(spa_tokenizer_pre(p->tok), "qwen2");
	spa_plugin_destroy(p);
	snprintf(cmd, sizeof cmd, "%s -m %s -p 'x' --ids --no-bos", tu_program("spa-tokenize"),
		 plug);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	cr_assert_eq(out[0], '[', "%s", out);

	/* A prompt of no tokens (qwen2 adds no BOS) is refused, not run. */
	snprintf(cmd, sizeof cmd, "%s -m %s -p '' -n 2", tu_program("spa-run"), path);
	cr_assert_neq(tu_run(cmd, out, sizeof out, 1), 0, "%s", out);
	cr_assert(strstr(out, "no tokens"), "%s", out);
}

/* Every name docs/tokenizer.md lists is a pre-tokenizer that loads and encodes. */
Test(bpe, every_listed_pre_tokenizer_works)
{
	static const char *const names[] = {
		"default", "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe",
		"chatglm-bpe", "deepseek-llm", "deepseek-coder", "falcon", "starcoder", "refact",
		"command-r", "smollm", "codeshell", "exaone", "minerva-7b", "gpt-2", "phi-2",
		"jina-es", "jina-de", "gigachat", "jina-v1-en", "roberta-bpe", "mpt", "olmo", "jais",
		"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "poro-chat", "bloom",
		"gpt3-finnish", "viking", "tekken", "chameleon",
	};
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_tokenizer_write_synthetic_bpe(w, "no-such-pre", 4096, &err), -SPA_EUSAGE);
	cr_assert(strstr(err.msg, "no-such-pre") && strstr(err.msg, "llama-bpe, qwen2"), "%s",
		  err.msg);
	spa_gguf_writer_destroy(w);
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		const char *name = names[i];
		struct spa_tokenizer *t;
		struct spa_gguf *g;
		void *buf;
		size_t size;
		cr_assert_eq(spa_gguf_writer_create(&w), 0);
		cr_assert_eq(spa_tokenizer_write_synthetic_bpe(w, name, 512, &err), 0, "%s: %s",
			     name, err.msg);
		cr_assert_eq(spa_gguf_writer_write_mem(w, &buf, &size, &err), 0);
		spa_gguf_writer_destroy(w);
		cr_assert_eq(spa_gguf_open_mem(&g, buf, size, &err), 0);
		cr_assert_eq(spa_tokenizer_load(&t, g, &err), 0, "%s: %s", name, err.msg);
		cr_assert_str_eq(spa_tokenizer_pre(t), name);
		int32_t ids[256];
		uint32_t n;
		size_t len;
		char back[512];
		const char *text = "It's 2024: caf\xc3\xa9, \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80!";
		cr_assert_eq(spa_tokenizer_encode(t, text, 0, ids, 256, &n), 0, "%s", name);
		cr_assert_eq(spa_tokenizer_decode(t, ids, n, back, sizeof back, &len), 0);
		cr_assert_str_eq(back, text, "%s", name);
		spa_tokenizer_destroy(t);
		spa_gguf_close(g);
		free(buf);
	}
}
