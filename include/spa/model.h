/* spa: a Llama-family base model loaded from GGUF (runtime/model.c).
 *
 * Architectures (general.architecture), as llama.cpp reads them (docs/gguf.md):
 *   "llama"  Llama 2 and 3 (with llama 3.1's rope_freqs.weight), Mistral, TinyLlama, SmolLM
 *            (tied embeddings), ...: interleaved rotary pairs; optional biases on q, k, v,
 *            attn_output and the FFN's three matrices.
 *   "qwen2"  Qwen2 and 2.5: biases on q, k and v (required), NEOX rotary pairs (i, i + n/2).
 * Tensor names as GGUF: token_embd.weight, blk.N.attn_norm, attn_q, attn_k, attn_v,
 * attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down (".weight", and ".bias" where present),
 * output_norm, output.weight (absent: tied to token_embd), rope_freqs.weight. Keys <arch>.:
 * block_count, embedding_length, feed_forward_length, attention.head_count,
 * attention.head_count_kv, attention.layer_norm_rms_epsilon, attention.key_length and
 * value_length (must be embedding_length / head_count), rope.freq_base, rope.dimension_count,
 * rope.scaling.type (linear or none) with rope.scaling.factor or the older rope.scale_linear,
 * rope.scaling.attn_factor, context_length, and the tokenizer (tokenizer.ggml.*). Norm weights
 * and biases are F32; matrices any type the kernels support. Anything else (another
 * architecture, YaRN or LongRoPE scaling, heads of another width) is refused by name. */
#ifndef SPA_MODEL_H
#define SPA_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "kernels.h"
#include "load.h"

struct spa_tokenizer;
struct spa_wstream;

enum spa_arch {
	SPA_ARCH_LLAMA = 0,
	SPA_ARCH_QWEN2,
	SPA_ARCH_COUNT
};
/* "llama", "qwen2" (general.architecture); "?" for another value. */
const char *spa_arch_name(enum spa_arch arch);

struct spa_hparams {
	uint32_t n_layers;   /* L */
	uint32_t n_embd;     /* H */
	uint32_t n_ff;
	uint32_t n_heads;
	uint32_t n_kv_heads;
	uint32_t head_dim;   /* n_embd / n_heads */
	uint32_t n_vocab;    /* V */
	uint32_t n_ctx;      /* trained context length */
	float rms_eps;
	float rope_base;
	/* Zero in the fields below means the default (llama, all of each head rotated, no
	 * scaling) wherever a struct is filled by hand (spa-gen); spa_model_check fills them. */
	enum spa_arch arch;
	uint32_t n_rot;          /* rotated dimensions of a head (rope.dimension_count) */
	bool rope_neox;          /* NEOX pairs (qwen2) instead of interleaved ones (llama) */
	float rope_freq_scale;   /* 1 / rope.scaling.factor (linear scaling) */
	float rope_attn_factor;  /* rope.scaling.attn_factor */
};

#define SPA_LAYER_MATS 7

struct spa_layer {
	const float *attn_norm;  /* (H) */
	struct spa_tensor wq;    /* (H -> H) */
	struct spa_tensor wk;    /* (H -> kv_dim) */
	struct spa_tensor wv;    /* (H -> kv_dim) */
	struct spa_tensor wo;    /* (H -> H) */
	const float *ffn_norm;   /* (H) */
	struct spa_tensor w_gate;/* (H -> n_ff) */
	struct spa_tensor w_up;  /* (H -> n_ff) */
	struct spa_tensor w_down;/* (n_ff -> H) */
	/* bias[k]: the bias of matrix k (spa_layer_mat's order: q, k, v, attn_output, ffn_gate,
	 * ffn_up, ffn_down), F32, one per row of it; NULL when the file has none (qwen2 has q, k
	 * and v). */
	const float *bias[SPA_LAYER_MATS];
};

/* The matrices of a block, in the order the forward uses them (k = 0..SPA_LAYER_MATS-1): wq, wk,
 * wv, wo, w_gate, w_up, w_down, and their GGUF names' stems (attn_q ... ffn_down, in
 * "blk.N.<stem>.weight", their biases "blk.N.<stem>.bias"). */
const struct spa_tensor *spa_layer_mat(const struct spa_layer *ly, int k);
const char *spa_layer_mat_name(int k);

struct spa_model {
	struct spa_hparams hp;
	struct spa_tensor tok_embd;  /* (V rows of H) */
	const float *output_norm;    /* (H) */
	struct spa_tensor output;    /* (H -> V); same data as tok_embd when tied */
	bool tied;
	struct spa_layer *layers;    /* L */
	/* The rotary embedding of every block (its freq_factors: rope_freqs.weight, n_rot / 2
	 * F32 divisors, in the model's data; NULL when the file has none). */
	struct spa_rope_cfg rope;
	enum spa_dtype wtype;        /* type of most matrices (for reports) */
	uint64_t n_params;
	char fingerprint[17];        /* 16 hex digits, see spa_model_fingerprint */
	struct spa_tokenizer *tok;
	struct spa_gguf *gguf;
	void *data;                  /* tensor data (owned) */
	size_t data_size;
	/* Under a memory budget (spa_model_load_budget, include/spa/wstream.h): a block matrix
	 * whose data is NULL keeps its first rows resident, in res_part[SPA_LAYER_MATS * layer +
	 * k] (k as spa_layer_mat; rows 0 when none), and the model's stream reads the others per
	 * token in pieces of about stream_piece bytes, through a ring of buffers of stream_slot
	 * bytes each (counted in the budget). NULL when every matrix is resident. */
	struct spa_tensor *res_part;
	uint64_t stream_piece, stream_slot;
	struct spa_wstream *stream;  /* owned; NULL when nothing is streamed */
};

/* Check that an opened GGUF is a loadable llama model (architecture, hyperparameters in range
 * and consistent, every tensor present with the right shape and a supported type, tokenizer
 * valid) without reading tensor data. Fills hp. Returns 0 or -SPA_EMODEL/-SPA_EFORMAT. */
int spa_model_check(const struct spa_gguf *g, struct spa_hparams *hp, struct spa_errbuf *err);
/* The rotary embedding of a model of hyperparameters hp (defaults where hp leaves zeros), with
 * freq_factors (rope_freqs.weight: n_rot / 2 floats, borrowed) or NULL. */
struct spa_rope_cfg spa_model_rope(const struct spa_hparams *hp, const float *freq_factors);
/* Open, check and load a model (data read with io_uring). Not thread-safe against destroy. */
int spa_model_load(struct spa_model **out, const char *path, bool show_progress,
		   struct spa_errbuf *err);
void spa_model_destroy(struct spa_model *m);

/* Pack every resident block matrix, or the resident rows of a streamed one, for the kernels
 * (spa_tensor_pack: Q4_0 today), unless the environment says SPA_PACK=off (on: the default).
 * The loaders call it; the model's products keep their bits either way. Returns 0,
 * -SPA_EUSAGE for another SPA_PACK value, or -ENOMEM. */
int spa_model_pack(struct spa_model *m, struct spa_errbuf *err);

/* 64-bit FNV-1a over the hyperparameters (the architecture and rotary settings too when they
 * are not llama's defaults, so a llama file's fingerprint is what it always was), the tensor
 * table (names, types, shapes) and, for each tensor, its first and last 4 KiB of data, as 16
 * lowercase hex digits + NUL. Identifies a base model for plugin pairing without hashing
 * gigabytes. Reads with pread. */
int spa_model_fingerprint(const struct spa_gguf *g, char out[17], struct spa_errbuf *err);

#endif
