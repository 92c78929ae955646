/* spa: synthetic base models (runtime/gen.c): llama- or qwen2-architecture GGUF files with
 * random weights and a synthetic tokenizer, for tests and benchmarks (spa-gen base). */
#ifndef SPA_GEN_H
#define SPA_GEN_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "model.h"

/* Shapes: "tiny" (4 blocks, H 128, FFN 344, 4 heads, 2 KV heads, vocab 1024, ctx 512: ~4 MB
 * in F32), "default" (32 blocks, H 512, FFN 1376, 8 heads, 4 KV heads, vocab 32000, ctx 2048),
 * "1b" (8 blocks, H 2048, FFN 5632, 16 heads, 16 KV heads, vocab 32000), "llama-7b" (32 blocks,
 * H 4096, FFN 11008, 32 heads, 32 KV heads, vocab 32000, ctx 4096). rms_eps 1e-5, rope 10000.
 * Returns 0 or -SPA_EUSAGE for an unknown name. */
int spa_gen_shape(const char *name, struct spa_hparams *hp);

/* Write a base model of shape hp with weights of type `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_K
 * or Q6_K, per tensor as spa_quantize_tensor_type says: norms F32, token_embd and output Q6_K
 * for the 4-bit types, rows that do not fill whole blocks in Q8_0/F16), random
 * and deterministic in seed (matrices uniform in +-sqrt(3/fan_in)·gain, norms near 1), untied
 * output.weight, and a synthetic tokenizer of hp->n_vocab tokens. Streams tensor data, so the
 * 7B shape does not need its size in memory. Progress on stderr when show_progress. */
int spa_gen_base(const struct spa_hparams *hp, enum spa_dtype type, uint64_t seed,
		 const char *path, bool show_progress, struct spa_errbuf *err);

/* Which tokenizer spa_gen_base_tok writes, and whether the tensors too. */
struct spa_gen_tok {
	const char *pre;  /* NULL: the synthetic SentencePiece tokenizer; else a synthetic
			   * byte-level BPE ("gpt2") for this pre-tokenizer (llama.cpp's name:
			   * llama-bpe, qwen2, gpt-2, ...), n_vocab >= 512 */
	bool vocab_only;  /* the metadata and tokenizer, no tensors (as llama.cpp's vocab files) */
};
/* spa_gen_base with a choice of tokenizer (tok NULL: as spa_gen_base). Same returns; an
 * unknown pre-tokenizer or too small a vocabulary is -SPA_EUSAGE with err saying so. */
int spa_gen_base_tok(const struct spa_hparams *hp, enum spa_dtype type, uint64_t seed,
		     const struct spa_gen_tok *tok, const char *path, bool show_progress,
		     struct spa_errbuf *err);

/* The architecture's parts beyond the shape. hp->arch picks llama or qwen2 (keys "qwen2.*",
 * q/k/v biases drawn uniform in +-0.5, NEOX rotary pairs); hp->n_rot (rope.dimension_count,
 * 0: head_dim), hp->rope_freq_scale (< 1: rope.scaling.type linear with factor 1 /
 * freq_scale; 0 or 1: no scaling keys) and hp->rope_attn_factor (!= 1: written) as given. */
struct spa_gen_opts {
	const struct spa_gen_tok *tok; /* NULL: SentencePiece */
	/* rope_freqs.weight: llama 3.1's divisors as its converter computes them (factor 8,
	 * low 1, high 4, original context 8192) for this head dimension and base */
	bool rope_freqs;
	bool biases;    /* llama: every matrix's bias too (q, k, v, attn_output, the FFN's) */
	bool tied;      /* no output.weight: the LM head is token_embd (SmolLM, Qwen2.5 0.5B) */
};
/* spa_gen_base with those options (o NULL: as spa_gen_base). Same returns. */
int spa_gen_base_opts(const struct spa_hparams *hp, enum spa_dtype type, uint64_t seed,
		      const struct spa_gen_opts *o, const char *path, bool show_progress,
		      struct spa_errbuf *err);

#endif
