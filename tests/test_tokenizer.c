/* Tests of the tokenizer (runtime/tokenizer.c), the synthetic base-model generator
 * (runtime/gen.c) and the spa-gen program. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "spa/spa.h"
#include "testutil.h"

#define SP "\xe2\x96\x81" /* "▁" */

/* ---- helpers ---- */

/* Image of a GGUF holding only what `keys` writes. */
static struct spa_gguf *open_keys(int (*keys)(struct spa_gguf_writer *, void *), void *arg,
				  void **buf)
{
	struct spa_gguf_writer *w;
	struct spa_gguf *g;
	struct spa_errbuf err = {{0}};
	size_t size;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(keys(w, arg), 0);
	cr_assert_eq(spa_gguf_writer_write_mem(w, buf, &size, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	cr_assert_eq(spa_gguf_open_mem(&g, *buf, size, &err), 0, "%s", err.msg);
	return g;
}

static int synth_keys(struct spa_gguf_writer *w, void *arg)
{
	return spa_tokenizer_write_synthetic(w, *(uint32_t *)arg);
}

static struct spa_gguf *synth_gguf(uint32_t n_vocab, void **buf)
{
	return open_keys(synth_keys, &n_vocab, buf);
}

static struct spa_tokenizer *synth_tok(uint32_t n_vocab)
{
	void *buf;
	struct spa_tokenizer *t;
	struct spa_errbuf err = {{0}};
	struct spa_gguf *g = synth_gguf(n_vocab, &buf);
	cr_assert_eq(spa_tokenizer_load(&t, g, &err), 0, "%s", err.msg);
	spa_gguf_close(g);
	free(buf);
	return t;
}

static const char *token_str(const struct spa_gguf *g, uint32_t i)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, "tokenizer.ggml.tokens");
	return ((const struct spa_gguf_str *)kv->v.arr.data)[i].data;
}

static int32_t find_id(const struct spa_gguf *g, const char *piece)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, "tokenizer.ggml.tokens");
	for (uint64_t i = 0; i < kv->v.arr.n; i++)
		if (strcmp(((const struct spa_gguf_str *)kv->v.arr.data)[i].data, piece) == 0)
			return (int32_t)i;
	return -1;
}

/* Concatenated pieces of ids, as a decoder prints them. */
static char *decode(const struct spa_tokenizer *t, const int32_t *ids, uint32_t n)
{
	size_t cap = 64, len = 0;
	char *s = malloc(cap);
	int32_t prev = -1;
	for (uint32_t i = 0; i < n; i++) {
		const char *p = spa_tokenizer_piece(t, prev, ids[i]);
		size_t pl = strlen(p);
		/* A <0x00> byte token decodes to "", so only NUL-free texts round-trip. */
		while (len + pl + 1 > cap)
			s = realloc(s, cap *= 2);
		memcpy(s + len, p, pl);
		len += pl;
		prev = ids[i];
	}
	s[len] = 0;
	return s;
}

static void check_roundtrip(const struct spa_tokenizer *t, const char *text)
{
	static int32_t ids[1 << 16];
	uint32_t n;
	for (int bos = 0; bos < 2; bos++) {
		cr_assert_eq(spa_tokenizer_encode(t, text, bos, ids, 1 << 16, &n), 0);
		if (bos)
			cr_assert(n >= 1 && ids[0] == spa_tokenizer_bos(t));
		for (uint32_t i = 0; i < n; i++)
			cr_assert(ids[i] >= 0 && (uint32_t)ids[i] < spa_tokenizer_n_vocab(t));
		char *back = decode(t, ids, n);
		cr_assert_str_eq(back, text, "round trip of '%s' (bos %d, %u tokens) gave '%s'",
				 text, bos, n, back);
		free(back);
	}
}

/* ---- synthetic vocabulary ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

Test(tokenizer, synthetic_vocab_has_exactly_n_unique_pieces)
{
	static const uint32_t sizes[] = { 300, 301, 1024, 4097, 32000 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		uint32_t n = sizes[k];
		void *buf;
		struct spa_gguf *g = synth_gguf(n, &buf);
		const struct spa_gguf_kv *tok = spa_gguf_find_kv(g, "tokenizer.ggml.tokens");
		const struct spa_gguf_kv *sc = spa_gguf_find_kv(g, "tokenizer.ggml.scores");
		const struct spa_gguf_kv *ty = spa_gguf_find_kv(g, "tokenizer.ggml.token_type");
		cr_assert(tok && sc && ty);
		cr_assert_eq(tok->v.arr.n, n);
		cr_assert_eq(sc->v.arr.n, n);
		cr_assert_eq(ty->v.arr.n, n);
		const char *model;
		cr_assert_eq(spa_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL), 0);
		cr_assert_str_eq(model, "llama");

		const char **s = malloc(n * sizeof *s);
		for (uint32_t i = 0; i < n; i++) {
			s[i] = token_str(g, i);
			cr_assert(strlen(s[i]) > 0);
		}
		qsort(s, n, sizeof *s, cmp_str);
		for (uint32_t i = 1; i < n; i++)
			cr_assert_str_neq(s[i - 1], s[i], "duplicate piece '%s' in %u", s[i], n);
		free(s);

		const int32_t *types = ty->v.arr.data;
		cr_assert_str_eq(token_str(g, 0), "<unk>");
		cr_assert_str_eq(token_str(g, 1), "<s>");
		cr_assert_str_eq(token_str(g, 2), "</s>");
		cr_assert_str_eq(token_str(g, 3), "<0x00>");
		cr_assert_str_eq(token_str(g, 258), "<0xFF>");
		cr_assert_str_eq(token_str(g, 259), SP);
		cr_assert_eq(types[0], 2);
		cr_assert_eq(types[1], 3);
		cr_assert_eq(types[2], 3);
		for (uint32_t i = 3; i < 259; i++)
			cr_assert_eq(types[i], 6);
		for (uint32_t i = 259; i < n; i++)
			cr_assert_eq(types[i], 1);
		uint32_t id;
		cr_assert_eq(spa_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id, NULL), 0);
		cr_assert_eq(id, 1);
		cr_assert_eq(spa_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id, NULL), 0);
		cr_assert_eq(id, 2);
		cr_assert_eq(spa_gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &id, NULL), 0);
		cr_assert_eq(id, 0);
		spa_gguf_close(g);
		free(buf);
	}
}

Test(tokenizer, synthetic_vocab_is_deterministic_and_nested)
{
	void *a, *b, *c;
	size_t na, nb;
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	for (int k = 0; k < 2; k++) {
		cr_assert_eq(spa_gguf_writer_create(&w), 0);
		cr_assert_eq(spa_tokenizer_write_synthetic(w, 32000), 0);
		cr_assert_eq(spa_gguf_writer_write_mem(w, k ? (void **)&b : (void **)&a,
						       k ? &nb : &na, &err), 0);
		spa_gguf_writer_destroy(w);
	}
	cr_assert_eq(na, nb);
	cr_assert(memcmp(a, b, na) == 0, "two synthetic vocabularies differ");
	free(a);
	free(b);

	/* A smaller vocabulary is the start of a larger one. */
	struct spa_gguf *big = synth_gguf(32000, &a), *small = synth_gguf(1024, &c);
	const struct spa_gguf_kv *sb = spa_gguf_find_kv(big, "tokenizer.ggml.scores");
	const struct spa_gguf_kv *ss = spa_gguf_find_kv(small, "tokenizer.ggml.scores");
	for (uint32_t i = 0; i < 1024; i++) {
		cr_assert_str_eq(token_str(big, i), token_str(small, i));
		cr_assert_eq(((const float *)sb->v.arr.data)[i], ((const float *)ss->v.arr.data)[i]);
	}
	spa_gguf_close(small);
	free(c);

	/* Prefix-closed and scored so that a longer piece beats its prefix: every piece is
	 * reachable by merges. */
	const float *scores = sb->v.arr.data;
	for (uint32_t i = 260; i < 32000; i++) {
		const char *p = token_str(big, i);
		size_t l = strlen(p);
		size_t cut = l - 1;
		while (cut > 0 && ((unsigned char)p[cut] & 0xc0) == 0x80)
			cut--;
		if (cut == 0)
			continue; /* a single character */
		char pre[64];
		cr_assert(cut < sizeof pre);
		memcpy(pre, p, cut);
		pre[cut] = 0;
		int32_t j = find_id(big, pre);
		cr_assert(j >= 0 && (uint32_t)j < i, "prefix '%s' of '%s' missing or later", pre, p);
		cr_assert_gt(scores[i], scores[j]);
	}
	cr_assert_geq(find_id(big, SP "the"), 0);
	cr_assert_geq(find_id(big, SP "of"), 0);
	spa_gguf_close(big);
	free(a);
}

Test(tokenizer, synthetic_refuses_too_small_vocab)
{
	struct spa_gguf_writer *w;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_tokenizer_write_synthetic(w, 299), -SPA_EUSAGE);
	cr_assert_eq(spa_tokenizer_write_synthetic(w, 0), -SPA_EUSAGE);
	spa_gguf_writer_destroy(w);
}

/* ---- encode / decode ---- */

static const char *const texts[] = {
	"Once upon a time",
	"the",
	"hello world",
	"The quick brown fox jumps over the lazy dog.",
	"xyzzy qwfp zzz",                    /* not words of the vocabulary */
	"Hello, World! (1+2)*3 = 9; {a:b} [c] <s> </s> ~`^_|\\\"'",
	"  two  leading and   multiple    spaces ",
	" ",
	"a",
	"h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93",  /* héllo wörld ✓: byte fallback */
	"\xf0\x9f\x98\x80 emoji and \xe4\xb8\xad\xe6\x96\x87",
	"tabs\tand\nnew\nlines\r\n",
	"bad utf-8: \xff\xfe \xc3 \x80 \xe2\x9c end",
	"",
};

Test(tokenizer, roundtrip_of_varied_texts)
{
	static const uint32_t sizes[] = { 300, 1024, 32000 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		struct spa_tokenizer *t = synth_tok(sizes[k]);
		cr_assert_eq(spa_tokenizer_n_vocab(t), sizes[k]);
		for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
			check_roundtrip(t, texts[i]);
		spa_tokenizer_destroy(t);
	}
}

Test(tokenizer, roundtrip_of_random_bytes)
{
	struct spa_tokenizer *t = synth_tok(32000);
	struct spa_rng r;
	spa_rng_seed(&r, 77);
	static const char alpha[] = "abcdefghijklmnopqrstuvwxyz   .,ETAOIN";
	char text[1200];
	for (int it = 0; it < 200; it++) {
		size_t len = spa_rng_next(&r) % (sizeof text - 1);
		for (size_t i = 0; i < len; i++) {
			uint64_t v = spa_rng_next(&r);
			/* Mostly letters and spaces (merges), some arbitrary bytes (fallback); never
			 * NUL (ends the text) nor 0xE2 (could spell "▁", which decodes as a space). */
			text[i] = v % 4 ? alpha[(v >> 8) % (sizeof alpha - 1)] :
				(char)(1 + (v >> 8) % 255);
			if ((unsigned char)text[i] == 0xe2)
				text[i] = 'e';
		}
		text[len] = 0;
		check_roundtrip(t, text);
	}
	spa_tokenizer_destroy(t);
}

Test(tokenizer, known_words_are_single_tokens)
{
	void *buf;
	struct spa_gguf *g = synth_gguf(32000, &buf);
	struct spa_tokenizer *t;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_tokenizer_load(&t, g, &err), 0, "%s", err.msg);
	int32_t ids[64];
	uint32_t n;

	cr_assert_eq(spa_tokenizer_encode(t, "the", false, ids, 64, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(ids[0], find_id(g, SP "the"));

	cr_assert_eq(spa_tokenizer_encode(t, "Once upon a time", true, ids, 64, &n), 0);
	cr_assert_eq(n, 5);
	cr_assert_eq(ids[0], 1);
	cr_assert_eq(ids[1], find_id(g, SP "Once"));
	cr_assert_eq(ids[2], find_id(g, SP "upon"));
	cr_assert_eq(ids[3], find_id(g, SP "a"));
	cr_assert_eq(ids[4], find_id(g, SP "time"));
	cr_assert_str_eq(spa_tokenizer_piece(t, ids[0], ids[1]), "Once");
	cr_assert_str_eq(spa_tokenizer_piece(t, ids[1], ids[2]), " upon");

	/* Words out of the vocabulary still become few tokens (letter strings), not bytes. */
	cr_assert_eq(spa_tokenizer_encode(t, "bqx", false, ids, 64, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(ids[0], find_id(g, SP "bqx"));

	/* Text characters never become control tokens. */
	cr_assert_eq(spa_tokenizer_encode(t, "<s>", false, ids, 64, &n), 0);
	for (uint32_t i = 0; i < n; i++)
		cr_assert(ids[i] != 1);

	/* "é" has no piece: its two bytes as byte tokens. */
	cr_assert_eq(spa_tokenizer_encode(t, "\xc3\xa9", false, ids, 64, &n), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(ids[0], find_id(g, SP));
	cr_assert_eq(ids[1], 3 + 0xc3);
	cr_assert_eq(ids[2], 3 + 0xa9);
	cr_assert_str_eq(spa_tokenizer_piece(t, ids[1], ids[2]), "\xa9");
	spa_tokenizer_destroy(t);
	spa_gguf_close(g);
	free(buf);
}

Test(tokenizer, encode_edges)
{
	struct spa_tokenizer *t = synth_tok(1024);
	int32_t ids[8];
	uint32_t n = 99;
	cr_assert_eq(spa_tokenizer_encode(t, "", true, ids, 8, &n), 0);
	cr_assert_eq(n, 1);
	cr_assert_eq(ids[0], 1);
	cr_assert_eq(spa_tokenizer_encode(t, "", false, ids, 8, &n), 0);
	cr_assert_eq(n, 0);
	cr_assert_eq(spa_tokenizer_encode(t, "", true, NULL, 0, &n), -SPA_ETOOBIG);
	cr_assert_eq(n, 1);

	/* Too small: says how many it needs, writes no more than asked. */
	const char *text = "\xe4\xb8\xad\xe6\x96\x87\xe4\xb8\xad"; /* 9 byte tokens + "▁" */
	ids[3] = -7;
	cr_assert_eq(spa_tokenizer_encode(t, text, true, ids, 3, &n), -SPA_ETOOBIG);
	cr_assert_eq(n, 11);
	cr_assert_eq(ids[3], -7);

	/* A text above the cap (16 MiB: spa-perplexity's corpora) is refused untokenized. */
	size_t big = (16u << 20) + 1;
	char *s = malloc(big + 1);
	memset(s, 'a', big);
	s[big] = 0;
	cr_assert_eq(spa_tokenizer_encode(t, s, false, ids, 8, &n), -SPA_ETOOBIG);
	free(s);

	cr_assert_eq(spa_tokenizer_bos(t), 1);
	cr_assert_eq(spa_tokenizer_eos(t), 2);
	cr_assert_str_eq(spa_tokenizer_piece(t, 5, 1), "");
	cr_assert_str_eq(spa_tokenizer_piece(t, 5, 2), "");
	cr_assert_str_eq(spa_tokenizer_piece(t, 5, -1), "");
	cr_assert_str_eq(spa_tokenizer_piece(t, 5, 1024), "");
	cr_assert_str_eq(spa_tokenizer_piece(t, 5, 3 + 'A'), "A");
	cr_assert_str_eq(spa_tokenizer_piece(t, 5, 259), " ");
	cr_assert_str_eq(spa_tokenizer_piece(t, 1, 259), "");
	spa_tokenizer_destroy(t);
}

Test(tokenizer, long_prompt_is_fast_and_roundtrips)
{
	struct spa_tokenizer *t = synth_tok(32000);
	size_t len = 200000;
	char *s = malloc(len + 1);
	struct spa_rng r;
	spa_rng_seed(&r, 5);
	for (size_t i = 0; i < len; i++) {
		uint64_t v = spa_rng_next(&r) % 27;
		s[i] = v == 26 ? ' ' : (char)('a' + v);
	}
	s[len] = 0;
	int32_t *ids = malloc((len + 2) * sizeof *ids);
	uint32_t n;
	cr_assert_eq(spa_tokenizer_encode(t, s, true, ids, (uint32_t)len + 2, &n), 0);
	cr_assert_lt(n, len / 2, "%u tokens for %zu letters: merges did not happen", n, len);
	char *back = decode(t, ids, n);
	cr_assert(strcmp(back, s) == 0);
	free(back);
	free(ids);
	free(s);
	spa_tokenizer_destroy(t);
}

/* ---- a hand-made vocabulary ---- */

struct vocab {
	const char *model;
	const char *const *tokens;
	uint32_t n_tokens;
	const float *scores;
	uint32_t n_scores;
	const int32_t *types;
	uint32_t n_types;
	int64_t bos; /* < 0: key absent */
};

static int vocab_keys(struct spa_gguf_writer *w, void *arg)
{
	const struct vocab *v = arg;
	int rc = 0;
	if (v->model)
		rc |= spa_gguf_writer_set_str(w, "tokenizer.ggml.model", v->model);
	if (v->tokens)
		rc |= spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", v->tokens, v->n_tokens);
	if (v->scores)
		rc |= spa_gguf_writer_set_arr(w, "tokenizer.ggml.scores", SPA_GGUF_FLOAT32,
					      v->scores, v->n_scores);
	if (v->types)
		rc |= spa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPA_GGUF_INT32,
					      v->types, v->n_types);
	if (v->bos >= 0)
		rc |= spa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
	return rc;
}

static int load_vocab(const struct vocab *v, struct spa_tokenizer **t, struct spa_errbuf *err)
{
	void *buf;
	struct spa_gguf *g = open_keys(vocab_keys, (void *)v, &buf);
	int rc = spa_tokenizer_load(t, g, err);
	spa_gguf_close(g);
	free(buf);
	return rc;
}

static const char *const abc_tokens[] = { "<unk>", "<s>", "</s>", SP, "a", "b", "c", "ab", "bc",
					  "abc" };
static const int32_t abc_types[] = { 2, 3, 3, 1, 1, 1, 1, 1, 1, 1 };

static void encode_abc(const float *scores, uint32_t n_tok, const char *text, int32_t *ids,
		       uint32_t *n)
{
	struct vocab v = { "llama", abc_tokens, n_tok, scores, n_tok, abc_types, n_tok, 1 };
	struct spa_tokenizer *t;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(load_vocab(&v, &t, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_tokenizer_encode(t, text, false, ids, 16, n), 0);
	spa_tokenizer_destroy(t);
}

Test(tokenizer, merges_pick_the_best_score)
{
	int32_t ids[16];
	uint32_t n;
	/* "bc" beats "ab": a | bc. */
	float s1[] = { 0, 0, 0, -1, -1, -1, -1, 1, 2 };
	encode_abc(s1, 9, "abc", ids, &n);
	cr_assert_eq(n, 3);
	cr_assert_eq(ids[0], 3);
	cr_assert_eq(ids[1], 4);
	cr_assert_eq(ids[2], 8);
	/* "ab" beats "bc": ab | c. */
	float s2[] = { 0, 0, 0, -1, -1, -1, -1, 2, 1 };
	encode_abc(s2, 9, "abc", ids, &n);
	cr_assert_eq(n, 3);
	cr_assert_eq(ids[1], 7);
	cr_assert_eq(ids[2], 6);
	/* A tie goes to the leftmost pair. */
	float s3[] = { 0, 0, 0, -1, -1, -1, -1, 1, 1 };
	encode_abc(s3, 9, "abc", ids, &n);
	cr_assert_eq(ids[1], 7);
	cr_assert_eq(ids[2], 6);
	encode_abc(s3, 9, "bcab", ids, &n);
	cr_assert_eq(n, 3);
	cr_assert_eq(ids[1], 8);
	cr_assert_eq(ids[2], 7);
	/* Merges go on: b+c, then a+bc. */
	float s4[] = { 0, 0, 0, -1, -1, -1, -1, 1, 2, 3 };
	encode_abc(s4, 10, "abc", ids, &n);
	cr_assert_eq(n, 2);
	cr_assert_eq(ids[1], 9);
	/* No piece and no byte tokens: <unk>. */
	encode_abc(s4, 10, "axc", ids, &n);
	cr_assert_eq(n, 4);
	cr_assert_eq(ids[1], 4);
	cr_assert_eq(ids[2], 0);
	cr_assert_eq(ids[3], 6);
}

Test(tokenizer, load_refuses_bad_tokenizers)
{
	static const char *const tok[] = { "<unk>", "<s>", "</s>", SP, "a" };
	static const float sc[] = { 0, 0, 0, 1, 1 };
	static const int32_t ty[] = { 2, 3, 3, 1, 1 };
	static const int32_t bad_ty[] = { 2, 3, 3, 9, 1 };
	static const int32_t byte_ty[] = { 2, 3, 3, 1, 6 };
	static const char *const nan_tok[] = { "<unk>", "<s>", "</s>", SP, "a" };
	static const float nan_sc[] = { 0, 0, 0, NAN, 1 };
	const struct {
		struct vocab v;
		const char *want;
	} cases[] = {
		{ { NULL, tok, 5, sc, 5, ty, 5, 1 }, "tokenizer.ggml.model" },
		{ { "gpt2", tok, 5, sc, 5, ty, 5, 1 }, "tokenizer.ggml.pre" },
		{ { "bert", tok, 5, sc, 5, ty, 5, 1 }, "'bert'" },
		{ { "llama", NULL, 0, sc, 5, ty, 5, 1 }, "tokenizer.ggml.tokens" },
		{ { "llama", tok, 5, NULL, 0, ty, 5, 1 }, "tokenizer.ggml.scores" },
		{ { "llama", tok, 5, sc, 4, ty, 5, 1 }, "4 values for 5 tokens" },
		{ { "llama", tok, 5, sc, 5, ty, 3, 1 }, "token_type" },
		{ { "llama", tok, 5, sc, 5, bad_ty, 5, 1 }, "type 9" },
		{ { "llama", tok, 5, sc, 5, byte_ty, 5, 1 }, "byte token" },
		{ { "llama", tok, 5, sc, 5, ty, 5, 5 }, "bos_token_id is 5" },
		{ { "llama", tok, 5, sc, 5, ty, 5, 1000000 }, "bos_token_id" },
		{ { "llama", nan_tok, 5, nan_sc, 5, ty, 5, 1 }, "finite" },
		{ { "llama", tok, 2, sc, 2, ty, 2, 1 }, "2 tokens" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct spa_tokenizer *t = (void *)1;
		struct spa_errbuf err = {{0}};
		int rc = load_vocab(&cases[i].v, &t, &err);
		cr_assert_eq(rc, -SPA_EMODEL, "case %zu: rc %d", i, rc);
		cr_assert_null(t, "case %zu", i);
		cr_assert(strstr(err.msg, cases[i].want), "case %zu: message '%s' lacks '%s'", i,
			  err.msg, cases[i].want);
	}
	/* Without token_type and ids the defaults of llama.cpp apply. */
	struct vocab ok = { "llama", tok, 5, sc, 5, NULL, 0, -1 };
	struct spa_tokenizer *t;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(load_vocab(&ok, &t, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_tokenizer_bos(t), 1);
	cr_assert_str_eq(spa_tokenizer_piece(t, 4, 1), "");
	cr_assert_str_eq(spa_tokenizer_piece(t, 4, 4), "a");
	spa_tokenizer_destroy(t);

	/* Short pieces typed unknown decode longer than they are ("▅", as llama.cpp). */
	static const char *const unk_tok[] = { "<unk>", "<s>", "</s>", "x", "y", "z" };
	static const float unk_sc[] = { 0, 0, 0, 0, 0, 0 };
	static const int32_t unk_ty[] = { 2, 3, 3, 2, 2, 2 };
	struct vocab uv = { "llama", unk_tok, 6, unk_sc, 6, unk_ty, 6, 1 };
	cr_assert_eq(load_vocab(&uv, &t, &err), 0, "%s", err.msg);
	for (int32_t i = 3; i < 6; i++)
		cr_assert_str_eq(spa_tokenizer_piece(t, 0, i), "\xe2\x96\x85");
	int32_t ids[8];
	uint32_t n;
	cr_assert_eq(spa_tokenizer_encode(t, "x", false, ids, 8, &n), 0);
	/* Neither "▁" nor "x" is a piece and there are no byte tokens: <unk> per byte. */
	cr_assert_eq(n, 4);
	for (uint32_t i = 0; i < n; i++)
		cr_assert_eq(ids[i], 0);
	spa_tokenizer_destroy(t);
}

Test(tokenizer, write_copies_the_tokenizer)
{
	struct spa_tokenizer *t = synth_tok(1024), *t2;
	struct spa_gguf_writer *w;
	struct spa_gguf *g;
	struct spa_errbuf err = {{0}};
	void *buf;
	size_t size;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_tokenizer_write(t, w), 0);
	cr_assert_eq(spa_gguf_writer_write_mem(w, &buf, &size, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);

	/* The same bytes as the synthetic writer produced. */
	void *buf2;
	struct spa_gguf *g2 = synth_gguf(1024, &buf2);
	cr_assert_eq(spa_gguf_open_mem(&g, buf, size, &err), 0, "%s", err.msg);
	cr_assert_eq(g->n_kv, g2->n_kv);
	for (uint32_t i = 0; i < 1024; i++)
		cr_assert_str_eq(token_str(g, i), token_str(g2, i));
	cr_assert_eq(spa_tokenizer_load(&t2, g, &err), 0, "%s", err.msg);
	const char *text = "The old man and the sea, 42 times!";
	int32_t a[64], b[64];
	uint32_t na, nb;
	cr_assert_eq(spa_tokenizer_encode(t, text, true, a, 64, &na), 0);
	cr_assert_eq(spa_tokenizer_encode(t2, text, true, b, 64, &nb), 0);
	cr_assert_eq(na, nb);
	cr_assert(memcmp(a, b, na * sizeof *a) == 0);
	spa_tokenizer_destroy(t2);
	spa_tokenizer_destroy(t);
	spa_gguf_close(g);
	spa_gguf_close(g2);
	free(buf);
	free(buf2);
}

/* ---- the generator ---- */

Test(tokenizer, gen_shapes)
{
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	cr_assert_eq(hp.n_layers, 4);
	cr_assert_eq(hp.n_embd, 128);
	cr_assert_eq(hp.n_ff, 344);
	cr_assert_eq(hp.n_heads, 4);
	cr_assert_eq(hp.n_kv_heads, 2);
	cr_assert_eq(hp.head_dim, 32);
	cr_assert_eq(hp.n_vocab, 1024);
	cr_assert_eq(hp.n_ctx, 512);
	cr_assert_float_eq(hp.rms_eps, 1e-5f, 1e-12);
	cr_assert_float_eq(hp.rope_base, 10000.0f, 1e-3);
	cr_assert_eq(spa_gen_shape("default", &hp), 0);
	cr_assert(hp.n_layers == 32 && hp.n_embd == 512 && hp.n_ff == 1376 && hp.n_heads == 8 &&
		  hp.n_kv_heads == 4 && hp.head_dim == 64 && hp.n_vocab == 32000 &&
		  hp.n_ctx == 2048);
	cr_assert_eq(spa_gen_shape("1b", &hp), 0);
	cr_assert(hp.n_layers == 8 && hp.n_embd == 2048 && hp.n_ff == 5632 && hp.n_heads == 16 &&
		  hp.n_kv_heads == 16 && hp.head_dim == 128 && hp.n_vocab == 32000);
	cr_assert_eq(spa_gen_shape("llama-7b", &hp), 0);
	cr_assert(hp.n_layers == 32 && hp.n_embd == 4096 && hp.n_ff == 11008 &&
		  hp.n_heads == 32 && hp.n_kv_heads == 32 && hp.head_dim == 128 &&
		  hp.n_vocab == 32000 && hp.n_ctx == 4096);
	cr_assert_eq(spa_gen_shape("huge", &hp), -SPA_EUSAGE);
	cr_assert_eq(spa_gen_shape("", &hp), -SPA_EUSAGE);
	cr_assert_eq(spa_gen_shape(NULL, &hp), -SPA_EUSAGE);
}

static uint64_t u32_key(const struct spa_gguf *g, const char *key)
{
	uint32_t v = 0;
	cr_assert_eq(spa_gguf_get_u32(g, key, &v, NULL), 0, "key %s", key);
	return v;
}

static void check_tensor(const struct spa_gguf *g, const char *name, enum spa_dtype type,
			 uint32_t n_dims, uint64_t ne0, uint64_t ne1)
{
	const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, name);
	cr_assert_not_null(t, "tensor %s missing", name);
	cr_assert_eq(t->type, type, "%s type %d", name, t->type);
	cr_assert_eq(t->n_dims, n_dims, "%s dims %u", name, t->n_dims);
	cr_assert_eq(t->ne[0], ne0, "%s ne0", name);
	cr_assert_eq(t->ne[1], ne1, "%s ne1", name);
}

/* Values of a tensor as floats (F32 or F16). */
static float *tensor_values(const struct spa_gguf *g, const char *name, uint64_t *n)
{
	const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, name);
	void *raw = malloc(t->size);
	cr_assert_eq(spa_gguf_pread(g, t->offset, raw, t->size, NULL), 0);
	float *v = malloc(t->n_elems * sizeof *v);
	spa_dequant_row(t->type, raw, v, t->n_elems);
	free(raw);
	*n = t->n_elems;
	return v;
}

static void check_range(const struct spa_gguf *g, const char *name, float lo, float hi,
			float min_spread)
{
	uint64_t n;
	float *v = tensor_values(g, name, &n);
	float mn = INFINITY, mx = -INFINITY;
	double sum = 0;
	for (uint64_t i = 0; i < n; i++) {
		cr_assert(isfinite(v[i]));
		mn = fminf(mn, v[i]);
		mx = fmaxf(mx, v[i]);
		sum += v[i];
	}
	cr_assert(mn >= lo && mx <= hi, "%s in [%g, %g], expected within [%g, %g]", name, mn,
		  mx, lo, hi);
	cr_assert(mx - mn >= min_spread, "%s spread %g", name, mx - mn);
	double mean = sum / (double)n, mid = (lo + hi) / 2.0;
	cr_assert(fabs(mean - mid) < (hi - lo) * 0.1, "%s mean %g", name, mean);
	free(v);
}

Test(tokenizer, gen_base_writes_a_llama_model)
{
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	char path[128];
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	snprintf(path, sizeof path, "%s/tiny.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 7, path, false, &err), 0, "%s", err.msg);

	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	const char *s;
	cr_assert_eq(spa_gguf_get_str(g, "general.architecture", &s, NULL), 0);
	cr_assert_str_eq(s, "llama");
	cr_assert_eq(spa_gguf_get_str(g, "general.name", &s, NULL), 0);
	cr_assert_eq(u32_key(g, "llama.block_count"), 4);
	cr_assert_eq(u32_key(g, "llama.embedding_length"), 128);
	cr_assert_eq(u32_key(g, "llama.feed_forward_length"), 344);
	cr_assert_eq(u32_key(g, "llama.attention.head_count"), 4);
	cr_assert_eq(u32_key(g, "llama.attention.head_count_kv"), 2);
	cr_assert_eq(u32_key(g, "llama.context_length"), 512);
	cr_assert_eq(u32_key(g, "llama.rope.dimension_count"), 32);
	cr_assert_eq(u32_key(g, "llama.vocab_size"), 1024);
	cr_assert_eq(u32_key(g, "general.file_type"), 0);
	float f;
	cr_assert_eq(spa_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, NULL), 0);
	cr_assert_float_eq(f, 1e-5f, 1e-12);
	cr_assert_eq(spa_gguf_get_f32(g, "llama.rope.freq_base", &f, NULL), 0);
	cr_assert_float_eq(f, 10000.0f, 1e-3);
	const struct spa_gguf_kv *tok = spa_gguf_find_kv(g, "tokenizer.ggml.tokens");
	cr_assert(tok && tok->v.arr.n == 1024);

	/* llama.cpp's names, order and shapes. */
	cr_assert_eq(g->n_tensors, 3 + 9 * 4);
	cr_assert_str_eq(g->tensors[0].name.data, "token_embd.weight");
	cr_assert_str_eq(g->tensors[1].name.data, "blk.0.attn_norm.weight");
	cr_assert_str_eq(g->tensors[9].name.data, "blk.0.ffn_down.weight");
	cr_assert_str_eq(g->tensors[10].name.data, "blk.1.attn_norm.weight");
	cr_assert_str_eq(g->tensors[37].name.data, "output_norm.weight");
	cr_assert_str_eq(g->tensors[38].name.data, "output.weight");
	check_tensor(g, "token_embd.weight", SPA_TYPE_F32, 2, 128, 1024);
	check_tensor(g, "output.weight", SPA_TYPE_F32, 2, 128, 1024);
	check_tensor(g, "output_norm.weight", SPA_TYPE_F32, 1, 128, 1);
	for (int i = 0; i < 4; i++) {
		char nm[64];
#define T(x) (snprintf(nm, sizeof nm, "blk.%d." x ".weight", i), nm)
		check_tensor(g, T("attn_norm"), SPA_TYPE_F32, 1, 128, 1);
		check_tensor(g, T("attn_q"), SPA_TYPE_F32, 2, 128, 128);
		check_tensor(g, T("attn_k"), SPA_TYPE_F32, 2, 128, 64);
		check_tensor(g, T("attn_v"), SPA_TYPE_F32, 2, 128, 64);
		check_tensor(g, T("attn_output"), SPA_TYPE_F32, 2, 128, 128);
		check_tensor(g, T("ffn_norm"), SPA_TYPE_F32, 1, 128, 1);
		check_tensor(g, T("ffn_gate"), SPA_TYPE_F32, 2, 128, 344);
		check_tensor(g, T("ffn_up"), SPA_TYPE_F32, 2, 128, 344);
		check_tensor(g, T("ffn_down"), SPA_TYPE_F32, 2, 344, 128);
#undef T
	}

	/* Value ranges: uniform in +-sqrt(3/fan_in) x gain, norms near 1. */
	float sh = sqrtf(3.0f / 128), sf = sqrtf(3.0f / 344), g2l = 1.0f / sqrtf(8.0f);
	check_range(g, "token_embd.weight", -1.0f, 1.0f, 1.9f);
	check_range(g, "blk.2.attn_q.weight", -sh, sh, 1.9f * sh);
	check_range(g, "blk.2.attn_output.weight", -sh * g2l, sh * g2l, 1.9f * sh * g2l);
	check_range(g, "blk.3.ffn_down.weight", -sf * g2l, sf * g2l, 1.9f * sf * g2l);
	check_range(g, "blk.1.ffn_norm.weight", 0.85f, 1.15f, 0.05f);
	check_range(g, "output.weight", -3 * sh, 3 * sh, 2.0f * sh);

	/* Tensors differ from one another (seeded per tensor). */
	uint64_t n1, n2;
	float *q0 = tensor_values(g, "blk.0.attn_q.weight", &n1);
	float *q1 = tensor_values(g, "blk.1.attn_q.weight", &n2);
	cr_assert(memcmp(q0, q1, n1 * sizeof *q0) != 0);
	free(q0);
	free(q1);

	/* The model loader accepts it. */
	struct spa_hparams back;
	cr_assert_eq(spa_model_check(g, &back, &err), 0, "%s", err.msg);
	cr_assert_eq(back.n_layers, 4);
	cr_assert_eq(back.n_kv_heads, 2);
	cr_assert_eq(back.head_dim, 32);
	spa_gguf_close(g);
	remove(path);
}

Test(tokenizer, gen_base_is_deterministic_in_the_seed)
{
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	char *dir = tu_tmpdir();
	char a[128], b[128], c[128], h[128];
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	snprintf(a, sizeof a, "%s/a.gguf", dir);
	snprintf(b, sizeof b, "%s/b.gguf", dir);
	snprintf(c, sizeof c, "%s/c.gguf", dir);
	snprintf(h, sizeof h, "%s/h.gguf", dir);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 11, a, false, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 11, b, false, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 12, c, false, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F16, 11, h, false, &err), 0, "%s", err.msg);
	size_t na, nb, nc, nh;
	char *da = tu_read_file(a, &na), *db = tu_read_file(b, &nb), *dc = tu_read_file(c, &nc);
	char *dh = tu_read_file(h, &nh);
	cr_assert(da && db && dc && dh);
	cr_assert_eq(na, nb);
	cr_assert(memcmp(da, db, na) == 0, "same seed, different files");
	cr_assert(na != nc || memcmp(da, dc, na) != 0, "other seed, same file");
	cr_assert_lt(nh, na * 6 / 10, "f16 file %zu bytes vs f32 %zu", nh, na);
	free(da);
	free(db);
	free(dc);
	free(dh);

	/* The F16 file holds the F32 file's values, rounded. */
	struct spa_gguf *g32, *g16;
	cr_assert_eq(spa_gguf_open(&g32, a, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gguf_open(&g16, h, &err), 0, "%s", err.msg);
	cr_assert_eq(u32_key(g16, "general.file_type"), 1);
	check_tensor(g16, "blk.0.attn_k.weight", SPA_TYPE_F16, 2, 128, 64);
	check_tensor(g16, "blk.0.attn_norm.weight", SPA_TYPE_F32, 1, 128, 1);
	uint64_t n1, n2;
	float *x = tensor_values(g32, "blk.3.ffn_up.weight", &n1);
	float *y = tensor_values(g16, "blk.3.ffn_up.weight", &n2);
	cr_assert_eq(n1, n2);
	for (uint64_t i = 0; i < n1; i++)
		cr_assert_float_eq(x[i], y[i], 1e-3f * fabsf(x[i]) + 1e-7f);
	free(x);
	free(y);
	spa_gguf_close(g32);
	spa_gguf_close(g16);
	remove(a);
	remove(b);
	remove(c);
	remove(h);
}

Test(tokenizer, gen_base_refuses_bad_shapes)
{
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	char path[128];
	snprintf(path, sizeof path, "%s/bad.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	hp.n_heads = 3;
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 1, path, false, &err), -SPA_EUSAGE);
	cr_assert(strlen(err.msg) > 0);
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	hp.n_vocab = 100;
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 1, path, false, &err), -SPA_EUSAGE);
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_Q5_1, 1, path, false, &err), -SPA_EUSAGE);
	struct stat st;
	cr_assert_neq(stat(path, &st), 0, "a refused model left a file");
	/* An unwritable place: an error with a message, not a crash. */
	memset(&err, 0, sizeof err);
	cr_assert_lt(spa_gen_base(&hp, SPA_TYPE_F32, 1, "/nonexistent-dir/x.gguf", false, &err), 0);
	cr_assert(strlen(err.msg) > 0);
}

/* ---- spa-gen ---- */

Test(tokenizer, spa_gen_base_program)
{
	char cmd[1024], out[4096], path[128];
	snprintf(path, sizeof path, "%s/m.gguf", tu_tmpdir());
	snprintf(cmd, sizeof cmd, "%s base --shape tiny --seed 3 -o %s", tu_program("spa-gen"),
		 path);
	int st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 0, "spa-gen said: %s", out);
	cr_assert(strstr(out, path), "output does not name the file: %s", out);
	cr_assert(strstr(out, "parameters"), "%s", out);

	/* The same bytes as the library call with the same seed. */
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	char ref[160];
	snprintf(ref, sizeof ref, "%s.ref", path);
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 3, ref, false, &err), 0, "%s", err.msg);
	size_t n1, n2;
	char *d1 = tu_read_file(path, &n1), *d2 = tu_read_file(ref, &n2);
	cr_assert(d1 && d2 && n1 == n2 && memcmp(d1, d2, n1) == 0);
	free(d1);
	free(d2);
	remove(ref);

	/* And a plugin for it. */
	char plug[160];
	snprintf(plug, sizeof plug, "%s.spa", path);
	snprintf(cmd, sizeof cmd, "%s plugin --base %s --kind spa --rank 8 --side-fraction 0.5 "
		 "-o %s", tu_program("spa-gen"), path, plug);
	st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 0, "spa-gen plugin said: %s", out);
	cr_assert(strstr(out, plug), "%s", out);
	struct spa_plugin *p;
	cr_assert_eq(spa_plugin_load(&p, plug, &err), 0, "%s", err.msg);
	cr_assert_eq(p->kind, SPA_PLUGIN_SIDE);
	cr_assert_eq(p->rank, 8);
	cr_assert_eq(p->n_layers, 4);
	spa_plugin_destroy(p);
	remove(plug);
	remove(path);
}

Test(tokenizer, spa_gen_bad_usage_exits_2)
{
	char cmd[1024], out[4096];
	const char *dir = tu_tmpdir();
	const struct {
		const char *args;
		int status;
		const char *want;
	} cases[] = {
		{ "", 2, "command" },
		{ "frobnicate", 2, "frobnicate" },
		{ "base --shape huge -o %s/x.gguf", 2, "huge" },
		{ "base --shape tiny", 2, "-o" },
		{ "base -o %s/x.gguf", 2, "--shape" },
		{ "base --shape tiny --type q5_1 -o %s/x.gguf", 2, "q5_1" },
		{ "base --shape tiny --seed -3 -o %s/x.gguf", 2, "--seed" },
		{ "base --shape tiny --bogus -o %s/x.gguf", 2, "--bogus" },
		{ "base --shape", 2, "needs a value" },
		{ "plugin --kind spa -o %s/p.gguf", 2, "--base" },
		{ "plugin --base %s/none.gguf --kind wat -o %s/p.gguf", 2, "wat" },
		{ "plugin --base %s/none.gguf --kind spa --side-fraction 1.5 -o %s/p.gguf", 2,
		  "--side-fraction" },
		{ "plugin --base %s/none.gguf --kind lora --rank 0 -o %s/p.gguf", 2, "--rank" },
		{ "plugin --base %s/none.gguf --kind lora -o %s/p.gguf", 1, "none.gguf" },
		{ "base --shape tiny -o /nonexistent-dir/x.gguf", 1, "nonexistent-dir" },
		{ "--help", 0, "spa-gen base" },
		{ "base --help", 0, "--shape" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char args[512];
		snprintf(args, sizeof args, cases[i].args, dir, dir);
		snprintf(cmd, sizeof cmd, "%s %s", tu_program("spa-gen"), args);
		int st = tu_run(cmd, out, sizeof out, 1);
		cr_assert_eq(st, cases[i].status, "'%s' exited %d: %s", args, st, out);
		cr_assert(strstr(out, cases[i].want), "'%s' said '%s', lacking '%s'", args, out,
			  cases[i].want);
	}
	struct stat st;
	char p[128];
	snprintf(p, sizeof p, "%s/x.gguf", dir);
	cr_assert_neq(stat(p, &st), 0, "a refused command wrote %s", p);
}

/* Control tokens in the text with SPA_TOK_PARSE_SPECIAL, and the space SentencePiece puts
 * before the text that follows them: the ids llama.cpp b4747's llama-tokenize gave on
 * spa-gen's tiny model (with and without --no-parse-special). */
Test(tokenizer, parse_special_as_llama_cpp)
{
	static const struct {
		const char *text;
		int32_t special[16], plain[24];
		uint32_t n_special, n_plain;
	} cases[] = {
		{ "<s>Hello</s> world<unk>x", { 1, 1, 387, 328, 335, 335, 338, 2, 259, 835, 0, 377 },
		  { 1, 259, 287, 342, 289, 299, 328, 335, 335, 338, 287, 274, 342, 289, 835, 287, 344,
		    337, 334, 289, 347 }, 12, 21 },
		{ "a <s> b<s>c", { 1, 354, 259, 1, 259, 355, 1, 356 },
		  { 1, 354, 259, 287, 342, 289, 355, 287, 342, 289, 326 }, 8, 11 },
		{ "</s>", { 1, 2 }, { 1, 259, 287, 274, 342, 289 }, 2, 6 },
	};
	struct spa_tokenizer *t = synth_tok(1024);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int32_t ids[32];
		uint32_t n;
		cr_assert_eq(spa_tokenizer_encode(t, cases[i].text,
						  SPA_TOK_ADD_SPECIAL | SPA_TOK_PARSE_SPECIAL, ids,
						  32, &n), 0);
		cr_assert_eq(n, cases[i].n_special, "'%s': %u tokens", cases[i].text, n);
		cr_assert(memcmp(ids, cases[i].special, n * sizeof *ids) == 0, "'%s'",
			  cases[i].text);
		cr_assert_eq(spa_tokenizer_encode(t, cases[i].text, SPA_TOK_ADD_SPECIAL, ids, 32,
						  &n), 0);
		cr_assert_eq(n, cases[i].n_plain, "'%s': %u tokens", cases[i].text, n);
		cr_assert(memcmp(ids, cases[i].plain, n * sizeof *ids) == 0, "'%s'", cases[i].text);
	}
	size_t len;
	cr_assert_str_eq(spa_tokenizer_token_text(t, 1, SPA_TOK_SPECIAL, &len), "<s>");
	cr_assert_eq(len, 3);
	cr_assert_str_eq(spa_tokenizer_token_text(t, 1, 0, &len), "");
	cr_assert_str_eq(spa_tokenizer_token_text(t, 0, SPA_TOK_SPECIAL, NULL), "<unk>");
	cr_assert_str_eq(spa_tokenizer_token_text(t, 835, 0, NULL), " world");
	cr_assert_str_eq(spa_tokenizer_model(t), "llama");
	cr_assert_null(spa_tokenizer_pre(t));
	spa_tokenizer_destroy(t);
}
