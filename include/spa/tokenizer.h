/* spa: SentencePiece-style tokenizer from GGUF tokenizer.ggml.* (runtime/tokenizer.c).
 *
 * tokenizer.ggml.model = "llama": tokens (string array), scores (f32 array), token_type (i32
 * array: 1 normal, 2 unknown, 3 control, 6 byte), bos/eos/unknown token ids. Encoding merges
 * adjacent pieces by best score (as llama.cpp's SPM tokenizer), with byte fallback <0xNN>;
 * spaces become U+2581 and a leading space is added. */
#ifndef SPA_TOKENIZER_H
#define SPA_TOKENIZER_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"

struct spa_gguf_writer;
struct spa_tokenizer;

/* Load and validate from an opened GGUF (copies what it needs; g may be closed after). */
int spa_tokenizer_load(struct spa_tokenizer **out, const struct spa_gguf *g,
		       struct spa_errbuf *err);
void spa_tokenizer_destroy(struct spa_tokenizer *t);
uint32_t spa_tokenizer_n_vocab(const struct spa_tokenizer *t);
int32_t spa_tokenizer_bos(const struct spa_tokenizer *t);
int32_t spa_tokenizer_eos(const struct spa_tokenizer *t);

/* Encode UTF-8 text (BOS first when add_bos) into ids[max_ids]; *n_ids set to the number of
 * tokens the text needs. Returns 0, -SPA_ETOOBIG when max_ids is too small (ids[0..max_ids)
 * filled) or the text is longer than 256 KiB, -ENOMEM. Invalid UTF-8 goes out as byte tokens.
 * Thread-safe (the tokenizer is read-only); allocates: not on the hot path. */
int spa_tokenizer_encode(const struct spa_tokenizer *t, const char *text, bool add_bos,
			 int32_t *ids, uint32_t max_ids, uint32_t *n_ids);
/* Text of token id when it follows prev (drops the leading space after BOS, or at the start of
 * the text when prev < 0; turns byte tokens into their byte, so a character split over byte
 * tokens comes out whole when the pieces are concatenated). Pointer valid for the tokenizer's
 * life; "" for control tokens, bad ids and <0x00>; "▅" for the unknown token, as llama.cpp. */
const char *spa_tokenizer_piece(const struct spa_tokenizer *t, int32_t prev, int32_t id);

/* Write this tokenizer's tokenizer.ggml.* keys into w (a plugin carries its base's tokenizer). */
int spa_tokenizer_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w);
/* Write a synthetic but valid llama tokenizer of n_vocab >= 300 tokens into w: <unk>, <s>,
 * </s>, the 256 byte tokens, then pieces (single characters, "▁"-prefixed English words and all
 * their prefixes, so that merges reach them) scored so longer pieces win. Deterministic. */
int spa_tokenizer_write_synthetic(struct spa_gguf_writer *w, uint32_t n_vocab);

#endif
