/* spa: the tokenizer's insides, shared by runtime/tokenizer*.c (not a public header).
 *
 *   tokenizer.c      loading (the keys both models share), special and added tokens, pieces,
 *                    the encode driver (special tokens first, then the model), writing
 *   tokenizer_spm.c  SentencePiece ("llama"): score-driven merges with byte fallback
 *   tokenizer_bpe.c  byte-level BPE ("gpt2"): pre-tokenizers (PCRE2), merges by rank
 *   tokenizer_gen.c  the synthetic vocabularies spa-gen writes (both models) */
#ifndef SPA_TOKENIZER_IMPL_H
#define SPA_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spa/error.h"
#include "spa/gguf.h"
#include "spa/tokenizer.h"

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

enum tok_kind {
	TOK_KIND_SPM, /* tokenizer.ggml.model "llama" */
	TOK_KIND_BPE, /* tokenizer.ggml.model "gpt2" */
};

/* Far above any real vocabulary (Llama 3: 128256, Gemma: 256000); a file asking for more is
 * refused before anything is allocated for it. */
#define TOK_MAX_VOCAB (1u << 22)
/* Longest text spa_tokenizer_encode accepts: a prompt, or a corpus for spa-perplexity (the
 * encoders take about 50 bytes of scratch per byte of text: 800 MB at the limit). */
#define TOK_MAX_TEXT (16u << 20)

/* piece -> id: open addressing over strings stored elsewhere (arena + off/len per id). */
struct tok_map {
	uint32_t mask;
	int32_t *slot; /* id, or -1 when empty */
};

uint64_t tok_hash(const char *s, size_t n);
/* Room for n entries; 0 or -ENOMEM. */
int tok_map_init(struct tok_map *m, uint32_t n);
/* Slot holding string s[0..n) or the empty slot where it would go. */
uint32_t tok_map_probe(const struct tok_map *m, const char *arena, const uint32_t *off,
		       const uint32_t *len, const char *s, size_t n);

/* The ids of one encode call: those past max are counted, not written. */
struct tok_out {
	int32_t *ids;
	uint32_t max, n;
};

static inline void tok_emit(struct tok_out *o, int32_t id)
{
	if (o->n < o->max)
		o->ids[o->n] = id;
	o->n++;
}

struct bpe;

struct spa_tokenizer {
	enum tok_kind kind;
	uint32_t n_vocab;
	int32_t bos, eos, unk, pad; /* -1: none */
	bool add_bos, add_eos, add_space_prefix;
	/* Which of the optional keys the file had (spa_tokenizer_write writes those back). */
	bool key_bos, key_eos, key_unk, key_pad, key_add_bos, key_add_eos, key_add_space;
	char *raw;            /* pieces as in the file, each NUL-terminated */
	uint32_t *raw_off;    /* [n_vocab] */
	uint32_t *raw_len;    /* [n_vocab] */
	char *text;           /* what each token prints (spa_tokenizer_piece), NUL-terminated */
	uint32_t *text_off;   /* [n_vocab] */
	uint32_t *text_len;   /* [n_vocab]; the text may hold NUL bytes (BPE byte 0) */
	float *scores;        /* [n_vocab]; SPM only (NULL for BPE) */
	int32_t *types;       /* [n_vocab] token_type, after llama.cpp's corrections */
	int32_t *file_types;  /* [n_vocab] token_type as in the file (NULL when absent) */
	int32_t byte_id[256]; /* SPM: id of <0xNN>, or -1 */
	struct tok_map map;   /* SPM: pieces text merges into; BPE: tokens by their bytes */
	/* Control, unknown and user-defined tokens, longest text first (ties: lower id first):
	 * what the encoder looks for in the text before the model sees it. */
	int32_t *special;
	uint32_t n_special;
	struct bpe *bpe;      /* BPE only */
};

/* tokenizer_spm.c: load the SentencePiece parts (scores, byte tokens, merge map, texts) of a
 * tokenizer whose common parts are loaded; encode one text fragment. */
int spm_load(struct spa_tokenizer *t, const struct spa_gguf *g, struct spa_errbuf *err);
int spm_encode(const struct spa_tokenizer *t, const char *s, size_t len, bool space_prefix,
	       struct tok_out *o);
int spm_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w);
/* The keys of a SentencePiece tokenizer, as spa has always written them. */
int spm_write_keys(struct spa_gguf_writer *w, const char *const *pieces, const float *scores,
		   const int32_t *types, uint32_t n, int32_t unk, int32_t bos, int32_t eos);

/* tokenizer_bpe.c: the same for byte-level BPE. */
int bpe_load(struct spa_tokenizer *t, const struct spa_gguf *g, struct spa_errbuf *err);
void bpe_destroy(struct bpe *b);
int bpe_encode(const struct spa_tokenizer *t, const char *s, size_t len, struct tok_out *o);
int bpe_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w);
const char *bpe_pre_name(const struct bpe *b);

/* A named pre-tokenizer (llama.cpp's tokenizer.ggml.pre) and its compiled regexes. */
struct bpe_pre;
struct bpe_splitter;
/* The pre-tokenizer called name, or NULL. */
const struct bpe_pre *bpe_pre_find(const char *name);
/* The main names spa knows (for messages). */
const char *bpe_pre_names(void);
/* Add BOS by default (llama.cpp's add_bos for this pre-tokenizer), merge whole words that are
 * tokens without merging (ignore_merges), have no default BOS. */
bool bpe_pre_add_bos(const struct bpe_pre *p);
bool bpe_pre_no_bos(const struct bpe_pre *p);
int bpe_splitter_create(struct bpe_splitter **out, const struct bpe_pre *p,
			struct spa_errbuf *err);
void bpe_splitter_destroy(struct bpe_splitter *s);
/* Split text[0..len) into words as llama.cpp's unicode_regex_split: the text is read as
 * codepoints (a byte that does not start valid UTF-8 becomes U+FFFD), each regex of the
 * pre-tokenizer splits every piece the previous one left into its matches and the gaps
 * between them, and each word is handed to fn as the UTF-8 of its codepoints. Stops at the
 * first fn that returns nonzero and returns that; 0 or -ENOMEM otherwise. Thread-safe. */
int bpe_split(const struct bpe_splitter *s, const char *text, size_t len,
	      int (*fn)(void *ctx, const char *word, size_t n), void *ctx);

/* GPT-2's bytes_to_unicode: the codepoint byte b stands for in a byte-level vocabulary. */
uint32_t bpe_byte_cpt(uint8_t b);
/* Append the UTF-8 of codepoint c (<= 0x10FFFF) to dst; returns the bytes written (1..4). */
size_t tok_utf8_put(char *dst, uint32_t c);

/* A binary min-heap of TYPE (the merges' candidate pairs, SentencePiece's and BPE's) ordered by
 * BEFORE(a, b) (a comes out first): NAME_push(h, &n, x) and NAME_pop(h, &n) (n > 0) on an
 * array the caller sizes. */
#define TOK_HEAP_DEFINE(name, type, before)                                              \
	static void name##_push(type *h, uint32_t *n, type x)                              \
	{                                                                                  \
		uint32_t i = (*n)++;                                                       \
		while (i > 0) {                                                            \
			uint32_t p = (i - 1) / 2;                                          \
			if (!before(&x, &h[p]))                                            \
				break;                                                     \
			h[i] = h[p];                                                       \
			i = p;                                                             \
		}                                                                          \
		h[i] = x;                                                                  \
	}                                                                                  \
	static type name##_pop(type *h, uint32_t *n)                                       \
	{                                                                                  \
		type top = h[0], last = h[--*n];                                           \
		uint32_t i = 0;                                                            \
		for (;;) {                                                                 \
			uint32_t c = 2 * i + 1;                                            \
			if (c >= *n)                                                       \
				break;                                                     \
			if (c + 1 < *n && before(&h[c + 1], &h[c]))                       \
				c++;                                                       \
			if (!before(&h[c], &last))                                         \
				break;                                                     \
			h[i] = h[c];                                                       \
			i = c;                                                             \
		}                                                                          \
		if (*n)                                                                    \
			h[i] = last;                                                       \
		return top;                                                                \
	}

#endif
