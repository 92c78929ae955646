/* spa: SentencePiece-style ("llama") tokenizer read from GGUF tokenizer.ggml.* keys.
 *
 * Encoding follows llama.cpp's SPM tokenizer (and llama2.c's encode): the text gets a leading
 * space, spaces become U+2581 "▁", the text is split into UTF-8 characters, and the adjacent
 * pair whose concatenation is a piece with the best score is merged (leftmost on ties) until no
 * pair is a piece. Characters left without a piece fall back to the byte tokens <0xNN>.
 * A priority queue of candidate pairs keeps long prompts O(n log n).
 *
 * Also here: spa_tokenizer_write_synthetic, the made-up but valid vocabulary that spa-gen puts
 * into synthetic base models (see the comment above it). */
#include "spa/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/gguf.h"

/* tokenizer.ggml.token_type values (llama.cpp's llama_token_type). */
enum {
	TOK_UNDEFINED = 0,
	TOK_NORMAL = 1,
	TOK_UNKNOWN = 2,
	TOK_CONTROL = 3,
	TOK_USER = 4,
	TOK_UNUSED = 5,
	TOK_BYTE = 6,
};

/* Far above any real SentencePiece vocabulary (Llama: 32000, Gemma: 256000); a file asking for
 * more is refused before anything is allocated for it. */
#define TOK_MAX_VOCAB (1u << 22)
/* Longest text spa_tokenizer_encode accepts: prompts, not corpora. */
#define TOK_MAX_TEXT (256u << 10)
/* Largest synthetic vocabulary: keeps its scores (length - index / 2^20) ordered by length. */
#define TOK_SYNTH_MAX_VOCAB (1u << 19)

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */
#define SPM_SPACE_LEN 3

/* ---- piece -> id map: open addressing over pieces stored elsewhere ---- */

struct tok_map {
	uint32_t mask;
	int32_t *slot; /* id, or -1 when empty */
};

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static int map_init(struct tok_map *m, uint32_t n)
{
	uint32_t size = 16;
	while (size < 2 * (uint64_t)n)
		size <<= 1;
	m->slot = malloc((size_t)size * sizeof *m->slot);
	if (!m->slot)
		return -ENOMEM;
	memset(m->slot, 0xff, (size_t)size * sizeof *m->slot);
	m->mask = size - 1;
	return 0;
}

/* Slot holding piece s[0..n) or the empty slot where it would go. */
static uint32_t map_probe(const struct tok_map *m, const char *arena, const uint32_t *off,
			  const uint32_t *len, const char *s, size_t n)
{
	uint32_t i = (uint32_t)fnv1a(s, n) & m->mask;
	for (;;) {
		int32_t id = m->slot[i];
		if (id < 0 || (len[id] == n && memcmp(arena + off[id], s, n) == 0))
			return i;
		i = (i + 1) & m->mask;
	}
}

/* ---- the tokenizer ---- */

struct spa_tokenizer {
	uint32_t n_vocab;
	int32_t bos, eos, unk;
	char *raw;          /* pieces as in the file, each NUL-terminated */
	uint32_t *raw_off;  /* [n_vocab] */
	uint32_t *raw_len;  /* [n_vocab] */
	char *text;         /* decoded pieces (what spa_tokenizer_piece returns) */
	uint32_t *text_off; /* [n_vocab] */
	float *scores;      /* [n_vocab] */
	int32_t *types;     /* [n_vocab] */
	int32_t byte_id[256]; /* id of <0xNN>, or -1 */
	struct tok_map map;   /* pieces that text can merge into (normal and user pieces) */
};

static int32_t tok_lookup(const struct spa_tokenizer *t, const char *s, size_t n)
{
	return t->map.slot[map_probe(&t->map, t->raw, t->raw_off, t->raw_len, s, n)];
}

/* "<0xNN>" (upper- or lower-case hex) -> NN, else -1. */
static int parse_byte_piece(const char *s, size_t n)
{
	if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	int v = 0;
	for (int i = 3; i < 5; i++) {
		char c = s[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 :
			c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

void spa_tokenizer_destroy(struct spa_tokenizer *t)
{
	if (!t)
		return;
	free(t->raw);
	free(t->raw_off);
	free(t->raw_len);
	free(t->text);
	free(t->text_off);
	free(t->scores);
	free(t->types);
	free(t->map.slot);
	free(t);
}

/* Optional u32 id key: default when absent, must be < n. */
static int load_id(const struct spa_gguf *g, const char *key, uint32_t def, uint32_t n,
		   int32_t *out, struct spa_errbuf *err)
{
	uint32_t v = def;
	int rc = spa_gguf_get_u32(g, key, &v, err);
	if (rc < 0 && rc != -ENOENT)
		return rc;
	if (v >= n)
		return spa_err(err, -SPA_EMODEL,
			       "%s: %s is %u but the vocabulary has %u tokens: the tokenizer is "
			       "broken, convert the model again", g->path, key, v, n);
	*out = (int32_t)v;
	return 0;
}

/* Decoded text of one token into dst (at most raw_len + 1 bytes, NUL included); returns the
 * bytes written without the NUL. */
static size_t decode_piece(const struct spa_tokenizer *t, uint32_t id, char *dst)
{
	const char *s = t->raw + t->raw_off[id];
	size_t n = t->raw_len[id], o = 0;
	switch (t->types[id]) {
	case TOK_CONTROL:
	case TOK_UNUSED:
		break;
	case TOK_UNKNOWN:
		/* What llama.cpp prints for <unk>: a visible block rather than nothing. */
		memcpy(dst, "\xe2\x96\x85", 3);
		o = 3;
		break;
	case TOK_BYTE:
		dst[o++] = (char)parse_byte_piece(s, n); /* checked at load */
		break;
	case TOK_USER:
		memcpy(dst, s, n);
		o = n;
		break;
	default:
		for (size_t i = 0; i < n;) {
			if (n - i >= SPM_SPACE_LEN && memcmp(s + i, SPM_SPACE, SPM_SPACE_LEN) == 0) {
				dst[o++] = ' ';
				i += SPM_SPACE_LEN;
			} else {
				dst[o++] = s[i++];
			}
		}
	}
	dst[o] = 0;
	return o;
}

int spa_tokenizer_load(struct spa_tokenizer **out, const struct spa_gguf *g,
		       struct spa_errbuf *err)
{
	const char *path = g->path;
	const char *model;
	const struct spa_gguf_kv *tok_kv, *score_kv, *type_kv = NULL;
	struct spa_tokenizer *t = NULL;
	int rc;

	*out = NULL;
	rc = spa_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: no tokenizer (tokenizer.ggml.model is missing): "
			       "use a GGUF file converted with its tokenizer", path);
	if (rc < 0)
		return rc;
	if (strcmp(model, "llama") != 0)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.model is '%s': only "
			       "SentencePiece tokenizers ('llama') are supported", path, model);

	rc = spa_gguf_get_arr(g, "tokenizer.ggml.tokens", SPA_GGUF_STRING, &tok_kv, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.tokens is missing: the file has "
			       "no vocabulary, convert the model again with its tokenizer", path);
	if (rc < 0)
		return rc;
	uint64_t n64 = tok_kv->v.arr.n;
	if (n64 < 3 || n64 > TOK_MAX_VOCAB)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.tokens has %llu tokens (expected "
			       "3 to %u): the vocabulary is broken", path, (unsigned long long)n64,
			       TOK_MAX_VOCAB);
	uint32_t n = (uint32_t)n64;

	rc = spa_gguf_get_arr(g, "tokenizer.ggml.scores", SPA_GGUF_FLOAT32, &score_kv, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.scores is missing: a SentencePiece "
			       "tokenizer needs a score per token", path);
	if (rc < 0)
		return rc;
	if (score_kv->v.arr.n != n)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.scores has %llu values for %u "
			       "tokens: the tokenizer is broken, convert the model again", path,
			       (unsigned long long)score_kv->v.arr.n, n);

	rc = spa_gguf_get_arr(g, "tokenizer.ggml.token_type", SPA_GGUF_INT32, &type_kv, err);
	if (rc == -ENOENT)
		type_kv = NULL;
	else if (rc < 0)
		return rc;
	else if (type_kv->v.arr.n != n)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.token_type has %llu values for "
			       "%u tokens: the tokenizer is broken, convert the model again", path,
			       (unsigned long long)type_kv->v.arr.n, n);

	t = calloc(1, sizeof *t);
	if (!t)
		return -ENOMEM;
	t->n_vocab = n;
	rc = load_id(g, "tokenizer.ggml.bos_token_id", 1, n, &t->bos, err);
	if (rc == 0)
		rc = load_id(g, "tokenizer.ggml.eos_token_id", 2, n, &t->eos, err);
	if (rc == 0)
		rc = load_id(g, "tokenizer.ggml.unknown_token_id", 0, n, &t->unk, err);
	if (rc < 0)
		goto err;

	const struct spa_gguf_str *strs = tok_kv->v.arr.data;
	uint64_t raw_size = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (strlen(strs[i].data) != strs[i].len) {
			rc = spa_err(err, -SPA_EMODEL, "%s: token %u of tokenizer.ggml.tokens contains "
				     "a NUL byte: the vocabulary is broken", path, i);
			goto err;
		}
		raw_size += strs[i].len + 1;
	}
	/* Offsets are 32-bit; the strings already sit in memory, so this only guards the type. */
	if (raw_size > UINT32_MAX) {
		rc = spa_err(err, -SPA_EMODEL, "%s: the vocabulary's pieces take %llu bytes, more "
			     "than 4 GiB: the tokenizer is broken", path, (unsigned long long)raw_size);
		goto err;
	}

	rc = -ENOMEM;
	t->raw = malloc(raw_size);
	t->raw_off = malloc(n * sizeof *t->raw_off);
	t->raw_len = malloc(n * sizeof *t->raw_len);
	t->text_off = malloc(n * sizeof *t->text_off);
	t->scores = malloc(n * sizeof *t->scores);
	t->types = malloc(n * sizeof *t->types);
	if (!t->raw || !t->raw_off || !t->raw_len || !t->text_off || !t->scores ||
	    !t->types || map_init(&t->map, n) < 0)
		goto err;

	uint32_t o = 0;
	for (uint32_t i = 0; i < n; i++) {
		memcpy(t->raw + o, strs[i].data, strs[i].len + 1);
		t->raw_off[i] = o;
		t->raw_len[i] = (uint32_t)strs[i].len;
		o += (uint32_t)strs[i].len + 1;
	}
	memcpy(t->scores, score_kv->v.arr.data, n * sizeof *t->scores);
	for (uint32_t i = 0; i < n; i++) {
		if (!isfinite(t->scores[i])) {
			rc = spa_err(err, -SPA_EMODEL, "%s: the score of token %u is not a finite "
				     "number: the tokenizer is broken", path, i);
			goto err;
		}
	}
	if (type_kv) {
		memcpy(t->types, type_kv->v.arr.data, n * sizeof *t->types);
		for (uint32_t i = 0; i < n; i++) {
			if (t->types[i] < TOK_UNDEFINED || t->types[i] > TOK_BYTE) {
				rc = spa_err(err, -SPA_EMODEL, "%s: token %u has type %d (expected 0 "
					     "to 6): the tokenizer is broken", path, i, t->types[i]);
				goto err;
			}
		}
	} else {
		/* Older files: infer what token_type would have said. */
		for (uint32_t i = 0; i < n; i++) {
			t->types[i] = parse_byte_piece(t->raw + t->raw_off[i], t->raw_len[i]) >= 0 ?
				TOK_BYTE : TOK_NORMAL;
		}
		t->types[t->unk] = TOK_UNKNOWN;
		t->types[t->bos] = TOK_CONTROL;
		t->types[t->eos] = TOK_CONTROL;
	}

	/* Decoding only shrinks a piece, except an unknown token, which becomes 3 bytes. */
	uint64_t text_size = 0;
	for (uint32_t i = 0; i < n; i++)
		text_size += (t->types[i] == TOK_UNKNOWN ? 3 : t->raw_len[i]) + 1;
	rc = -ENOMEM;
	t->text = malloc(text_size);
	if (!t->text)
		goto err;
	for (int b = 0; b < 256; b++)
		t->byte_id[b] = -1;
	o = 0;
	for (uint32_t i = 0; i < n; i++) {
		const char *s = t->raw + t->raw_off[i];
		uint32_t len = t->raw_len[i];
		if (t->types[i] == TOK_BYTE) {
			int b = parse_byte_piece(s, len);
			if (b < 0) {
				rc = spa_err(err, -SPA_EMODEL, "%s: token %u is marked as a byte token "
					     "but is '%.40s', not <0xNN>: the tokenizer is broken",
					     path, i, s);
				goto err;
			}
			if (t->byte_id[b] < 0)
				t->byte_id[b] = (int32_t)i;
		}
		/* Text merges only into ordinary pieces: "<s>" typed by a user stays text. */
		if (len > 0 && (t->types[i] == TOK_NORMAL || t->types[i] == TOK_UNDEFINED ||
				t->types[i] == TOK_USER)) {
			uint32_t slot = map_probe(&t->map, t->raw, t->raw_off, t->raw_len, s, len);
			if (t->map.slot[slot] < 0) /* duplicates: the first id wins */
				t->map.slot[slot] = (int32_t)i;
		}
		t->text_off[i] = o;
		o += (uint32_t)decode_piece(t, i, t->text + o) + 1;
	}
	*out = t;
	return 0;
err:
	spa_tokenizer_destroy(t);
	return rc;
}

uint32_t spa_tokenizer_n_vocab(const struct spa_tokenizer *t)
{
	return t->n_vocab;
}

int32_t spa_tokenizer_bos(const struct spa_tokenizer *t)
{
	return t->bos;
}

int32_t spa_tokenizer_eos(const struct spa_tokenizer *t)
{
	return t->eos;
}

const char *spa_tokenizer_piece(const struct spa_tokenizer *t, int32_t prev, int32_t id)
{
	if (id < 0 || (uint32_t)id >= t->n_vocab)
		return "";
	const char *s = t->text + t->text_off[id];
	/* SentencePiece's added leading space: not part of the text. prev < 0 means "start of
	 * text", which is where a prompt encoded without BOS begins. */
	if ((prev < 0 || prev == t->bos) && s[0] == ' ')
		s++;
	return s;
}

/* ---- encode ---- */

struct sym {
	uint32_t off, n;    /* bytes of the normalized text; n == 0 once merged away */
	int32_t prev, next; /* -1 at the ends */
};

struct bigram {
	float score;
	int32_t left, right;
	uint32_t size; /* bytes; stale when the symbols no longer add up to it */
};

/* Heap order: higher score first, then the leftmost pair. */
static int bigram_before(const struct bigram *a, const struct bigram *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(struct bigram *h, uint32_t *n, struct bigram b)
{
	uint32_t i = (*n)++;
	while (i > 0) {
		uint32_t p = (i - 1) / 2;
		if (!bigram_before(&b, &h[p]))
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = b;
}

static struct bigram heap_pop(struct bigram *h, uint32_t *n)
{
	struct bigram top = h[0], last = h[--*n];
	uint32_t i = 0;
	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && bigram_before(&h[c + 1], &h[c]))
			c++;
		if (!bigram_before(&h[c], &last))
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = last;
	return top;
}

static void try_bigram(const struct spa_tokenizer *t, const char *norm, const struct sym *sym,
		       int32_t l, int32_t r, struct bigram *heap, uint32_t *n_heap)
{
	if (l < 0 || r < 0)
		return;
	uint32_t size = sym[l].n + sym[r].n;
	int32_t id = tok_lookup(t, norm + sym[l].off, size);
	if (id < 0)
		return;
	heap_push(heap, n_heap, (struct bigram){ t->scores[id], l, r, size });
}

/* Bytes of the UTF-8 character at s, or 1 for a byte that does not start a valid one (it
 * then goes out as a byte token). */
static uint32_t utf8_char_len(const unsigned char *s, size_t avail)
{
	unsigned c = s[0];
	uint32_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
	if (n == 0 || n > avail)
		return 1;
	for (uint32_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 1;
	return n;
}

int spa_tokenizer_encode(const struct spa_tokenizer *t, const char *text, bool add_bos,
			 int32_t *ids, uint32_t max_ids, uint32_t *n_ids)
{
	char *norm = NULL;
	struct sym *sym = NULL;
	struct bigram *heap = NULL;
	uint32_t n = 0;
	int rc = 0;

	if (!t || !text || !n_ids || (!ids && max_ids))
		return -EINVAL;
	*n_ids = 0;
	size_t len = strlen(text);
	if (len > TOK_MAX_TEXT)
		return -SPA_ETOOBIG;
	if (add_bos) {
		if (n < max_ids)
			ids[n] = t->bos;
		n++;
	}
	if (len == 0)
		goto done;

	size_t n_space = 0;
	for (size_t i = 0; i < len; i++)
		n_space += text[i] == ' ';
	size_t norm_len = len + SPM_SPACE_LEN + n_space * (SPM_SPACE_LEN - 1);
	/* Each input byte starts at most one symbol, plus the added space. */
	size_t max_sym = len + 1;
	rc = -ENOMEM;
	norm = malloc(norm_len);
	sym = malloc(max_sym * sizeof *sym);
	/* Each merge adds at most two candidates to the n_sym - 1 initial ones. */
	heap = malloc(3 * max_sym * sizeof *heap);
	if (!norm || !sym || !heap)
		goto out;
	rc = 0;

	size_t o = 0;
	memcpy(norm, SPM_SPACE, SPM_SPACE_LEN);
	o = SPM_SPACE_LEN;
	for (size_t i = 0; i < len; i++) {
		if (text[i] == ' ') {
			memcpy(norm + o, SPM_SPACE, SPM_SPACE_LEN);
			o += SPM_SPACE_LEN;
		} else {
			norm[o++] = text[i];
		}
	}

	int32_t n_sym = 0;
	for (size_t i = 0; i < norm_len; n_sym++) {
		uint32_t cl = utf8_char_len((const unsigned char *)norm + i, norm_len - i);
		sym[n_sym] = (struct sym){ (uint32_t)i, cl, n_sym - 1, n_sym + 1 };
		i += cl;
	}
	sym[n_sym - 1].next = -1;

	uint32_t n_heap = 0;
	for (int32_t i = 0; i + 1 < n_sym; i++)
		try_bigram(t, norm, sym, i, i + 1, heap, &n_heap);
	while (n_heap) {
		struct bigram b = heap_pop(heap, &n_heap);
		struct sym *l = &sym[b.left], *r = &sym[b.right];
		if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
			continue;
		l->n += r->n;
		r->n = 0;
		l->next = r->next;
		if (r->next >= 0)
			sym[r->next].prev = b.left;
		try_bigram(t, norm, sym, l->prev, b.left, heap, &n_heap);
		try_bigram(t, norm, sym, b.left, l->next, heap, &n_heap);
	}

	for (int32_t i = 0; i >= 0; i = sym[i].next) {
		int32_t id = tok_lookup(t, norm + sym[i].off, sym[i].n);
		if (id >= 0) {
			if (n < max_ids)
				ids[n] = id;
			n++;
			continue;
		}
		for (uint32_t k = 0; k < sym[i].n; k++) {
			int32_t bid = t->byte_id[(unsigned char)norm[sym[i].off + k]];
			if (n < max_ids)
				ids[n] = bid >= 0 ? bid : t->unk;
			n++;
		}
	}
done:
	*n_ids = n;
	if (n > max_ids)
		rc = -SPA_ETOOBIG;
out:
	free(norm);
	free(sym);
	free(heap);
	return rc;
}

/* ---- write ---- */

static int write_keys(struct spa_gguf_writer *w, const char *const *pieces, const float *scores,
		      const int32_t *types, uint32_t n, int32_t unk, int32_t bos, int32_t eos)
{
	int rc = spa_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
	if (rc == 0)
		rc = spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", pieces, n);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr(w, "tokenizer.ggml.scores", SPA_GGUF_FLOAT32, scores, n);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPA_GGUF_INT32, types, n);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
	return rc;
}

int spa_tokenizer_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w)
{
	const char **pieces = malloc(t->n_vocab * sizeof *pieces);
	if (!pieces)
		return -ENOMEM;
	for (uint32_t i = 0; i < t->n_vocab; i++)
		pieces[i] = t->raw + t->raw_off[i];
	int rc = write_keys(w, pieces, t->scores, t->types, t->n_vocab, t->unk, t->bos, t->eos);
	free(pieces);
	return rc;
}

/* ---- synthetic vocabulary ----
 *
 * Order (a longer vocabulary extends a shorter one; every piece comes after its prefixes, so
 * the set stays reachable by pairwise merges at any size):
 *   0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>,
 *   "▁", the printable ASCII characters, "▁" + each letter,
 *   common English words as "▁word", each after its missing prefixes ("▁w", "▁wo", "▁wor"),
 *   then for k = 2, 3, ...: every lowercase k-letter string, then "▁" + each of them.
 * Scores: characters - index / 2^20, so longer pieces win and earlier ones break ties. */

static const char *const synth_words[] = {
	"the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
	"are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
	"had", "by", "not", "word", "but", "what", "some", "we", "can", "out", "other", "were",
	"all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which",
	"do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write",
	"would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has",
	"look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most",
	"people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down",
	"side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place",
	"made", "live", "where", "after", "back", "little", "only", "round", "man", "year",
	"came", "show", "every", "good", "me", "give", "our", "under", "name", "very", "through",
	"just", "form", "sentence", "great", "think", "say", "help", "low", "line", "differ",
	"turn", "cause", "much", "mean", "before", "move", "right", "boy", "old", "too", "same",
	"tell", "does", "set", "three", "want", "air", "well", "also", "play", "small", "end",
	"put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here",
	"must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went",
	"light", "kind", "off", "need", "house", "picture", "try", "us", "again", "animal",
	"point", "mother", "world", "near", "build", "self", "earth", "father", "head", "stand",
	"own", "page", "should", "country", "found", "answer", "school", "grow", "study", "still",
	"learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye",
	"never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard", "start",
	"might", "story", "saw", "far", "sea", "draw", "left", "late", "run", "while", "press",
	"close", "night", "real", "life", "few", "north", "open", "seem", "together", "next",
	"white", "children", "begin", "got", "walk", "example", "ease", "paper", "group",
	"always", "music", "those", "both", "mark", "often", "letter", "until", "mile", "river",
	"car", "feet", "care", "second", "book", "carry", "took", "science", "eat", "room",
	"friend", "began", "idea", "fish", "mountain", "stop", "once", "upon", "base", "hear",
	"horse", "cut", "sure", "watch", "color", "face", "wood", "main", "enough", "plain",
	"girl", "usual", "young", "ready", "above", "ever", "red", "list", "though", "feel",
	"talk", "bird", "soon", "body", "dog", "family", "direct", "pose", "leave", "song",
	"measure", "door", "product", "black", "short", "numeral", "class", "wind", "question",
	"happen", "complete", "ship", "area", "half", "rock", "order", "fire", "south", "problem",
	"piece", "told", "knew", "pass", "since", "top", "whole", "king", "space", "heard",
	"best", "hour", "better", "true", "during", "hundred", "five", "remember", "step",
	"early", "hold", "west", "ground", "interest", "reach", "fast", "verb", "sing", "listen",
	"six", "table", "travel", "less", "morning", "ten", "simple", "several", "toward", "war",
	"lay", "against", "pattern", "slow", "center", "love", "person", "money", "serve",
	"appear", "road", "map", "rain", "rule", "govern", "pull", "cold", "notice", "voice",
	"unit", "power", "town", "fine", "certain", "fly", "fall", "lead", "cry", "dark",
	"machine", "note", "wait", "plan", "figure", "star", "box", "noun", "field", "rest",
	"correct", "able", "pound", "done", "beauty", "drive", "stood", "contain", "front",
	"teach", "week", "final", "gave", "green", "oh", "quick", "develop", "ocean", "warm",
	"free", "minute", "strong", "special", "mind", "behind", "clear", "tail", "produce",
	"fact", "street", "inch", "multiply", "nothing", "course", "stay", "wheel", "full",
	"force", "blue", "object", "decide", "surface", "deep", "moon", "island", "foot",
	"system", "busy", "test", "record", "boat", "common", "gold", "possible", "plane",
	"model", "edge", "cloud", "network", "token", "language", "The", "It", "In", "A", "He",
	"She", "They", "We", "This", "There", "Once",
};

struct synth {
	uint32_t cap, n;
	char *arena;
	size_t arena_len, arena_cap;
	uint32_t *off, *len;
	float *scores;
	int32_t *types;
	struct tok_map map;
};

static void synth_free(struct synth *s)
{
	free(s->arena);
	free(s->off);
	free(s->len);
	free(s->scores);
	free(s->types);
	free(s->map.slot);
}

static uint32_t utf8_count(const char *p, size_t n)
{
	uint32_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)p[i] & 0xc0) != 0x80;
	return c;
}

/* Append a piece unless present; 0 or -ENOMEM. A full vocabulary ignores further pieces. */
static int synth_add(struct synth *s, const char *p, size_t n, int32_t type)
{
	if (s->n == s->cap)
		return 0;
	uint32_t slot = map_probe(&s->map, s->arena, s->off, s->len, p, n);
	if (s->map.slot[slot] >= 0)
		return 0;
	if (s->arena_len + n + 1 > s->arena_cap) {
		size_t cap = s->arena_cap ? s->arena_cap * 2 : 4096;
		while (cap < s->arena_len + n + 1)
			cap *= 2;
		char *a = realloc(s->arena, cap);
		if (!a)
			return -ENOMEM;
		s->arena = a;
		s->arena_cap = cap;
	}
	uint32_t id = s->n++;
	memcpy(s->arena + s->arena_len, p, n);
	s->arena[s->arena_len + n] = 0;
	s->off[id] = (uint32_t)s->arena_len;
	s->len[id] = (uint32_t)n;
	s->arena_len += n + 1;
	s->types[id] = type;
	s->scores[id] = type == TOK_NORMAL ?
		(float)utf8_count(p, n) - (float)id / (float)(1u << 20) : 0.0f;
	s->map.slot[slot] = (int32_t)id;
	return 0;
}

/* "▁" + word and, before it, each of its prefixes of two or more characters. */
static int synth_add_word(struct synth *s, const char *word)
{
	char buf[64];
	size_t wl = strlen(word);
	if (wl + SPM_SPACE_LEN > sizeof buf)
		return 0;
	memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
	memcpy(buf + SPM_SPACE_LEN, word, wl);
	for (size_t k = 1; k <= wl; k++) {
		int rc = synth_add(s, buf, SPM_SPACE_LEN + k, TOK_NORMAL);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int synth_build(struct synth *s, uint32_t n_vocab)
{
	char buf[32];
	int rc = -ENOMEM;

	memset(s, 0, sizeof *s);
	s->cap = n_vocab;
	s->off = malloc(n_vocab * sizeof *s->off);
	s->len = malloc(n_vocab * sizeof *s->len);
	s->scores = malloc(n_vocab * sizeof *s->scores);
	s->types = malloc(n_vocab * sizeof *s->types);
	if (!s->off || !s->len || !s->scores || !s->types || map_init(&s->map, n_vocab) < 0)
		goto err;

	rc = synth_add(s, "<unk>", 5, TOK_UNKNOWN);
	rc |= synth_add(s, "<s>", 3, TOK_CONTROL);
	rc |= synth_add(s, "</s>", 4, TOK_CONTROL);
	for (int b = 0; b < 256; b++) {
		snprintf(buf, sizeof buf, "<0x%02X>", b);
		rc |= synth_add(s, buf, 6, TOK_BYTE);
	}
	/* "▁" first among the pieces: without it a space would decode as its three raw bytes. */
	rc |= synth_add(s, SPM_SPACE, SPM_SPACE_LEN, TOK_NORMAL);
	for (char c = '!'; c <= '~'; c++)
		rc |= synth_add(s, &c, 1, TOK_NORMAL);
	for (int cs = 0; cs < 2; cs++) {
		for (char c = 'a'; c <= 'z'; c++) {
			memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
			buf[SPM_SPACE_LEN] = cs ? (char)(c - 'a' + 'A') : c;
			rc |= synth_add(s, buf, SPM_SPACE_LEN + 1, TOK_NORMAL);
		}
	}
	if (rc < 0)
		goto err;
	for (size_t i = 0; i < sizeof synth_words / sizeof synth_words[0]; i++)
		if ((rc = synth_add_word(s, synth_words[i])) < 0)
			goto err;
	/* Letter strings of growing length: plain, then "▁"-prefixed. 26^k outgrows any allowed
	 * n_vocab long before k reaches 8. */
	for (uint32_t k = 2; s->n < s->cap && k < 8; k++) {
		for (int sp = 0; sp < 2 && s->n < s->cap; sp++) {
			uint32_t pre = sp ? SPM_SPACE_LEN : 0;
			char idx[8] = {0};
			memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
			while (s->n < s->cap) {
				for (uint32_t j = 0; j < k; j++)
					buf[pre + j] = (char)('a' + idx[j]);
				if ((rc = synth_add(s, buf, pre + k, TOK_NORMAL)) < 0)
					goto err;
				int32_t j = (int32_t)k - 1;
				while (j >= 0 && ++idx[j] == 26)
					idx[j--] = 0;
				if (j < 0)
					break;
			}
		}
	}
	if (s->n == s->cap)
		return 0;
	rc = -SPA_EUNSUPPORTED; /* unreachable below TOK_SYNTH_MAX_VOCAB */
err:
	synth_free(s);
	return rc;
}

int spa_tokenizer_write_synthetic(struct spa_gguf_writer *w, uint32_t n_vocab)
{
	struct synth s;
	if (n_vocab < 300 || n_vocab > TOK_SYNTH_MAX_VOCAB)
		return -SPA_EUSAGE;
	int rc = synth_build(&s, n_vocab);
	if (rc < 0)
		return rc;
	const char **pieces = malloc(n_vocab * sizeof *pieces);
	rc = -ENOMEM;
	if (pieces) {
		for (uint32_t i = 0; i < n_vocab; i++)
			pieces[i] = s.arena + s.off[i];
		rc = write_keys(w, pieces, s.scores, s.types, n_vocab, 0, 1, 2);
		free(pieces);
	}
	synth_free(&s);
	return rc;
}
