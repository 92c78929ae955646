/* spa: tokenizers read from GGUF tokenizer.ggml.* keys (runtime/tokenizer*.c; docs/tokenizer.md).
 *
 * Two models, as llama.cpp reads them:
 *   "llama"  SentencePiece: tokens, scores (f32), token_type; adjacent pieces merge by best
 *            score, with byte fallback <0xNN>; spaces become U+2581 and a space is prefixed.
 *   "gpt2"   byte-level BPE: tokens, token_type, merges ("A B", by rank) and the pre-tokenizer
 *            named by tokenizer.ggml.pre (llama-bpe, qwen2, gpt-2, starcoder, falcon,
 *            deepseek-llm, deepseek-coder, mpt, refact, ...): its regular expressions (PCRE2)
 *            cut the text into words, each word's bytes are merged by rank.
 * Both: bos/eos/unknown/padding ids, add_bos_token/add_eos_token; control, unknown and
 * user-defined tokens are found in the text before the model sees it (user-defined always,
 * control and unknown with SPA_TOK_PARSE_SPECIAL), as llama.cpp's tokenizer_st_partition. */
#ifndef SPA_TOKENIZER_H
#define SPA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct spa_gguf_writer;
struct spa_tokenizer;

/* Flags of spa_tokenizer_encode and spa_tokenizer_token_text. */
enum spa_tok_flags {
	/* Encode: the special tokens the vocabulary asks for (add_bos_token, add_eos_token; for
	 * "llama" BOS by default, for "gpt2" as the pre-tokenizer says: llama-bpe yes). */
	SPA_TOK_ADD_SPECIAL = 1u << 0,
	/* Encode: the text of a control or unknown token ("<|endoftext|>", "<s>") becomes that
	 * token (llama.cpp's parse_special, what llama-tokenize does by default). Without it only
	 * user-defined tokens are found and control tokens' text is encoded as text. */
	SPA_TOK_PARSE_SPECIAL = 1u << 1,
	/* Token text: control and unknown tokens as their text, not "". */
	SPA_TOK_SPECIAL = 1u << 2,
};

/* Load and validate from an opened GGUF (copies what it needs; g may be closed after). Works
 * on any GGUF with tokenizer keys, a vocabulary-only file included. Returns 0, -ENOMEM, or
 * -SPA_EMODEL with err saying which key is missing or wrong and what to do. Not thread-safe
 * against itself on one g; the tokenizer it makes is read-only. */
int spa_tokenizer_load(struct spa_tokenizer **out, const struct spa_gguf *g,
		       struct spa_errbuf *err);
void spa_tokenizer_destroy(struct spa_tokenizer *t);
uint32_t spa_tokenizer_n_vocab(const struct spa_tokenizer *t);
/* Special ids, -1 when the vocabulary has none. */
int32_t spa_tokenizer_bos(const struct spa_tokenizer *t);
int32_t spa_tokenizer_eos(const struct spa_tokenizer *t);
/* Whether SPA_TOK_ADD_SPECIAL puts a BOS first. */
bool spa_tokenizer_add_bos(const struct spa_tokenizer *t);
/* "llama" or "gpt2"; the pre-tokenizer's name for "gpt2", NULL for "llama". */
const char *spa_tokenizer_model(const struct spa_tokenizer *t);
const char *spa_tokenizer_pre(const struct spa_tokenizer *t);

/* Encode UTF-8 text into ids[max_ids]; flags: SPA_TOK_*; *n_ids set to the number of tokens
 * the text needs. Returns 0, -SPA_ETOOBIG when max_ids is too small (ids[0..max_ids) filled)
 * or the text is longer than 16 MiB, -ENOMEM. Invalid UTF-8: byte tokens (llama), U+FFFD per
 * bad byte (gpt2, as llama.cpp). Passing true as flags adds the special tokens, as the bool
 * this argument once was. Thread-safe (the tokenizer is read-only); allocates: not on the
 * hot path. */
int spa_tokenizer_encode(const struct spa_tokenizer *t, const char *text, unsigned flags,
			 int32_t *ids, uint32_t max_ids, uint32_t *n_ids);
/* Text of token id when it follows prev, for printing tokens as they come: concatenated, the
 * pieces of an encoded text give the text back. llama: drops the leading space after BOS or
 * at the start (prev < 0), turns byte tokens into their byte; "" for control tokens, bad ids
 * and <0x00>; "▅" for the unknown token. gpt2: the bytes the token stands for (prev unused);
 * "" for control tokens and bad ids; a token for byte 0 reads as "" (use
 * spa_tokenizer_token_text for its length). Pointer valid for the tokenizer's life. */
const char *spa_tokenizer_piece(const struct spa_tokenizer *t, int32_t prev, int32_t id);
/* The bytes token id stands for, alone (no space dropped): llama.cpp's llama_token_to_piece
 * with lstrip 0; with SPA_TOK_SPECIAL control and unknown tokens give their own text. *len
 * (may be NULL) gets the length (the bytes may hold a NUL). "" for a bad id. Thread-safe. */
const char *spa_tokenizer_token_text(const struct spa_tokenizer *t, int32_t id, unsigned flags,
				     size_t *len);
/* Concatenated spa_tokenizer_piece of ids[0..n) (prev of the first: -1) into buf[size],
 * NUL-terminated; *len gets the text's length. Returns 0, or -SPA_ETOOBIG when size is not
 * above the length (buf holds what fitted). Thread-safe. */
int spa_tokenizer_decode(const struct spa_tokenizer *t, const int32_t *ids, uint32_t n,
			 char *buf, size_t size, size_t *len);

/* Write this tokenizer's tokenizer.ggml.* keys into w (a plugin carries its base's tokenizer):
 * the tokenizer they load is this one. 0 or -ENOMEM. */
int spa_tokenizer_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w);
/* Write a synthetic but valid llama tokenizer of n_vocab >= 300 tokens into w: <unk>, <s>,
 * </s>, the 256 byte tokens, then pieces (single characters, "▁"-prefixed English words and all
 * their prefixes, so that merges reach them) scored so longer pieces win. Deterministic. */
int spa_tokenizer_write_synthetic(struct spa_gguf_writer *w, uint32_t n_vocab);
/* Write a synthetic byte-level BPE tokenizer ("gpt2") for pre-tokenizer pre into w: the 256
 * byte characters in GPT-2's order, then the tokens of merges learned from a built-in mixed
 * corpus (English, contractions, numbers, code, accented Latin, CJK, emoji) cut into words by
 * that pre-tokenizer, then merges built from lowercase letter strings until n_vocab is
 * reached, then the control and user-defined tokens of the family (for llama-bpe
 * <|begin_of_text|>, <|end_of_text|>, ...; for gpt-2-like <|endoftext|>). n_vocab from 512
 * to 2^19. Deterministic. Returns 0, -SPA_EUSAGE (unknown pre or size: err says), -ENOMEM. */
int spa_tokenizer_write_synthetic_bpe(struct spa_gguf_writer *w, const char *pre,
				      uint32_t n_vocab, struct spa_errbuf *err);

#endif
