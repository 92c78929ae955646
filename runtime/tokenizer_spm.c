/* spa: SentencePiece-style ("llama") tokenizer: the model's own part (runtime/tokenizer.c
 * loads what all tokenizers share and finds special tokens first).
 *
 * Encoding follows llama.cpp's SPM tokenizer (and llama2.c's encode): the text gets a leading
 * space, spaces become U+2581 "▁", the text is split into UTF-8 characters, and the adjacent
 * pair whose concatenation is a piece with the best score is merged (leftmost on ties) until no
 * pair is a piece. Characters left without a piece fall back to the byte tokens <0xNN>.
 * A priority queue of candidate pairs keeps long prompts O(n log n). */
#include "tokenizer_impl.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/gguf.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */
#define SPM_SPACE_LEN 3

static int32_t tok_lookup(const struct spa_tokenizer *t, const char *s, size_t n)
{
	return t->map.slot[tok_map_probe(&t->map, t->raw, t->raw_off, t->raw_len, s, n)];
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

int spm_load(struct spa_tokenizer *t, const struct spa_gguf *g, struct spa_errbuf *err)
{
	const char *path = g->path;
	const struct spa_gguf_kv *score_kv;
	uint32_t n = t->n_vocab;
	int rc = spa_gguf_get_arr(g, "tokenizer.ggml.scores", SPA_GGUF_FLOAT32, &score_kv, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.scores is missing: a SentencePiece "
			       "tokenizer needs a score per token", path);
	if (rc < 0)
		return rc;
	if (score_kv->v.arr.n != n)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.scores has %llu values for %u "
			       "tokens: the tokenizer is broken, convert the model again", path,
			       (unsigned long long)score_kv->v.arr.n, n);
	t->scores = malloc(n * sizeof *t->scores);
	t->text_off = malloc(n * sizeof *t->text_off);
	t->text_len = malloc(n * sizeof *t->text_len);
	if (!t->scores || !t->text_off || !t->text_len || tok_map_init(&t->map, n) < 0)
		return -ENOMEM;
	memcpy(t->scores, score_kv->v.arr.data, n * sizeof *t->scores);
	for (uint32_t i = 0; i < n; i++)
		if (!isfinite(t->scores[i]))
			return spa_err(err, -SPA_EMODEL, "%s: the score of token %u is not a finite "
				       "number: the tokenizer is broken", path, i);
	if (!t->file_types) {
		/* Older files: infer what token_type would have said. */
		for (uint32_t i = 0; i < n; i++)
			if (parse_byte_piece(t->raw + t->raw_off[i], t->raw_len[i]) >= 0)
				t->types[i] = TOK_BYTE;
		t->types[t->unk] = TOK_UNKNOWN;
		t->types[t->bos] = TOK_CONTROL;
		t->types[t->eos] = TOK_CONTROL;
	}

	/* Decoding only shrinks a piece, except an unknown token, which becomes 3 bytes. */
	uint64_t text_size = 0;
	for (uint32_t i = 0; i < n; i++)
		text_size += (t->types[i] == TOK_UNKNOWN ? 3 : t->raw_len[i]) + 1;
	t->text = malloc(text_size);
	if (!t->text)
		return -ENOMEM;
	for (int b = 0; b < 256; b++)
		t->byte_id[b] = -1;
	uint32_t o = 0;
	for (uint32_t i = 0; i < n; i++) {
		const char *s = t->raw + t->raw_off[i];
		uint32_t len = t->raw_len[i];
		if (t->types[i] == TOK_BYTE) {
			int b = parse_byte_piece(s, len);
			if (b < 0)
				return spa_err(err, -SPA_EMODEL, "%s: token %u is marked as a byte "
					       "token but is '%.40s', not <0xNN>: the tokenizer is "
					       "broken", path, i, s);
			if (t->byte_id[b] < 0)
				t->byte_id[b] = (int32_t)i;
		}
		/* Text merges only into ordinary pieces: "<s>" typed by a user stays text. */
		if (len > 0 && (t->types[i] == TOK_NORMAL || t->types[i] == TOK_UNDEFINED ||
				t->types[i] == TOK_USER)) {
			uint32_t slot = tok_map_probe(&t->map, t->raw, t->raw_off, t->raw_len, s, len);
			if (t->map.slot[slot] < 0) /* duplicates: the first id wins */
				t->map.slot[slot] = (int32_t)i;
		}
		t->text_off[i] = o;
		t->text_len[i] = (uint32_t)decode_piece(t, i, t->text + o);
		o += t->text_len[i] + 1;
	}
	return 0;
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

TOK_HEAP_DEFINE(heap, struct bigram, bigram_before)

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

int spm_encode(const struct spa_tokenizer *t, const char *text, size_t len, bool space_prefix,
	       struct tok_out *out)
{
	char *norm = NULL;
	struct sym *sym = NULL;
	struct bigram *heap = NULL;
	int rc = 0;

	if (len == 0)
		return 0;
	size_t n_space = 0;
	for (size_t i = 0; i < len; i++)
		n_space += text[i] == ' ';
	size_t pre = space_prefix ? SPM_SPACE_LEN : 0;
	size_t norm_len = len + pre + n_space * (SPM_SPACE_LEN - 1);
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

	memcpy(norm, SPM_SPACE, pre);
	size_t o = pre;
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
			tok_emit(out, id);
			continue;
		}
		for (uint32_t k = 0; k < sym[i].n; k++) {
			int32_t bid = t->byte_id[(unsigned char)norm[sym[i].off + k]];
			tok_emit(out, bid >= 0 ? bid : t->unk);
		}
	}
out:
	free(norm);
	free(sym);
	free(heap);
	return rc;
}

/* ---- write ---- */

int spm_write_keys(struct spa_gguf_writer *w, const char *const *pieces, const float *scores,
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

int spm_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w)
{
	const char **pieces = malloc(t->n_vocab * sizeof *pieces);
	if (!pieces)
		return -ENOMEM;
	for (uint32_t i = 0; i < t->n_vocab; i++)
		pieces[i] = t->raw + t->raw_off[i];
	int rc = spm_write_keys(w, pieces, t->scores, t->types, t->n_vocab, t->unk, t->bos, t->eos);
	free(pieces);
	return rc;
}
