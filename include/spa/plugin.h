/* spa: personal plugins (runtime/plugin.c): the SPA side network (also used by LST), LoRA and
 * Houlsby adapters, as RUNTIME.md §3-4 define them. Docs: docs/plugin-format.md.
 *
 * GGUF layout: general.architecture = "spa-plugin"; spa.plugin.kind = "side" | "lora" |
 * "adapter"; spa.plugin.part = "full" | "cloud" (the subset a cloud holds, sent in UPLOAD);
 * spa.plugin.rank (side width r, LoRA rank k, or adapter bottleneck b); spa.plugin.base_fingerprint
 * (16 hex digits, spa_model_fingerprint of the base it was made for); spa.plugin.base.block_count,
 * spa.plugin.base.embedding_length, spa.plugin.base.kv_length (L, H, kv_dim of that base);
 * a full plugin also carries the base's tokenizer (tokenizer.ggml.*). All tensors are F32.
 *   side:    side.in.weight (H->r), side.in.bias; side.blk.N.tap.weight (H->r), .tap.bias;
 *            side.blk.N.up.weight (U_i: r->H), .up.bias; side.blk.N.down.weight (D_i: H->r),
 *            .down.bias; side.out.weight (r->H), side.out.bias; side.cls.weight (H->2),
 *            side.cls.bias (2).
 *   lora:    blk.N.lora_q_a (H->k), blk.N.lora_q_b (k->H), blk.N.lora_v_a (H->k),
 *            blk.N.lora_v_b (k->kv_dim)  (the scale alpha/k is folded into b)
 *   adapter: blk.N.adapter_attn.down.weight (H->b), .down.bias, .up.weight (b->H), .up.bias;
 *            blk.N.adapter_ffn.* likewise.
 * A matrix "X->Y" is stored as GGUF ne = {X, Y} (Y rows of X), as a llama weight. */
#ifndef SPA_PLUGIN_H
#define SPA_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

struct spa_model;
struct spa_tokenizer;

enum spa_method { SPA_METHOD_BASE = 0, SPA_METHOD_LORA, SPA_METHOD_ADAPTER, SPA_METHOD_LST,
		  SPA_METHOD_SPA, SPA_METHOD_COUNT };
enum spa_split { SPA_SPLIT_CLOUD_LINEAR = 0, SPA_SPLIT_EDGE_ALL, SPA_SPLIT_COUNT };
enum spa_merge { SPA_MERGE_ADD = 0, SPA_MERGE_REPLACE, SPA_MERGE_COUNT };
enum spa_plugin_kind { SPA_PLUGIN_SIDE = 0, SPA_PLUGIN_LORA, SPA_PLUGIN_ADAPTER,
		       SPA_PLUGIN_KIND_COUNT };
enum spa_plugin_part { SPA_PART_FULL = 0, SPA_PART_CLOUD };

/* Names <-> values ("base", "lora", "adapter", "lst", "spa"; "cloud-linear", "edge-all";
 * "add", "replace"; "side", "lora", "adapter"). Parsers return the value or -SPA_EUSAGE. */
const char *spa_method_name(enum spa_method m);
int spa_method_from_name(const char *s);
const char *spa_split_name(enum spa_split s);
int spa_split_from_name(const char *s);
const char *spa_merge_name(enum spa_merge m);
int spa_merge_from_name(const char *s);
const char *spa_plugin_kind_name(enum spa_plugin_kind k);
/* The plugin kind a method needs (BASE: -SPA_EUSAGE). */
int spa_method_plugin_kind(enum spa_method m);
/* Whether a method runs the side network (lst, spa): its cloud holds part of the plugin and
 * its exchanges are TAPS or RESID. */
bool spa_method_is_side(enum spa_method m);

/* A plugin in memory. Matrices are row-major float [rows][cols]; per-block arrays are L
 * consecutive matrices. Pointers absent from a part are NULL. */
struct spa_plugin {
	enum spa_plugin_kind kind;
	enum spa_plugin_part part;
	uint32_t n_layers, n_embd, kv_dim; /* L, H, kv_dim of the base */
	uint32_t rank;                     /* r, k or b */
	char base_fingerprint[17];
	char fingerprint[17];              /* FNV-1a 64 of the tensor data, hex */
	uint64_t n_params;                 /* of the full plugin (from the file's tensor sizes) */
	struct spa_tokenizer *tok;         /* full plugins only */
	/* side */
	float *in_w, *in_b;       /* [r][H], [r] */
	float *tap_w, *tap_b;     /* L x [r][H], L x [r] */
	float *up_w, *up_b;       /* L x [H][r], L x [H]  (U_i) */
	float *down_w, *down_b;   /* L x [r][H], L x [r]  (D_i) */
	float *out_w, *out_b;     /* [H][r], [H] */
	float *cls_w, *cls_b;     /* [2][H], [2] */
	/* lora */
	float *qa, *qb, *va, *vb; /* L x [k][H], L x [H][k], L x [k][H], L x [kv][k] */
	/* adapter: which = 0 attention, 1 FFN */
	float *ad_dn_w[2], *ad_dn_b[2], *ad_up_w[2], *ad_up_b[2]; /* L x [b][H],[b],[H][b],[H] */
	void *mem;                /* owned storage */
};

/* Load and validate a plugin GGUF (every tensor present, F32, shaped for its L/H/rank). */
int spa_plugin_load(struct spa_plugin **out, const char *path, struct spa_errbuf *err);
/* Load from a memory image (UPLOAD). Copies what it keeps. */
int spa_plugin_load_mem(struct spa_plugin **out, const void *buf, size_t size,
			struct spa_errbuf *err);
void spa_plugin_destroy(struct spa_plugin *p);
/* Refuse (-SPA_EMISMATCH, with a message) a plugin made for another base: fingerprint and
 * L/H/kv_dim must match. */
int spa_plugin_check_base(const struct spa_plugin *p, const struct spa_model *m,
			  struct spa_errbuf *err);
/* Serialize the subset the cloud holds for a side plugin under split s (cloud-linear: in,
 * taps, out, classifier; edge-all: classifier only) as a GGUF image (*out, free()). */
int spa_plugin_write_cloud_part(const struct spa_plugin *p, enum spa_split s, void **out,
				size_t *out_size, struct spa_errbuf *err);

struct spa_plugin_gen_params {
	enum spa_plugin_kind kind;
	uint32_t rank;          /* 0: default (side r = 32, LoRA k = 8, adapter b = 16) */
	uint64_t seed;
	float side_fraction;    /* side: fraction of tokens to take the side path (calibrated);
				   < 0: leave b_c = 0 */
	const char *calib_prompt; /* NULL: a built-in sample prompt */
	uint32_t calib_tokens;  /* positions to calibrate on (0: 64) */
};
/* Make a plugin for base m with random weights (deterministic in seed), calibrate the
 * classifier bias, copy the tokenizer and fingerprint, and write it to path. */
int spa_plugin_generate(const struct spa_model *m, const struct spa_plugin_gen_params *gp,
			const char *path, struct spa_errbuf *err);

/* ---- the plugin's math (hot path: no allocation; scratch sizes given) ---- */

/* Cloud, side: taps t_in = W_in e + b_in, t_i = W_tap_i y_i + b_tap_i from resid = (e, y_0..y_{L-1})
 * ((L+1) x H) into taps ((L+1) x r). */
void spa_plugin_side_taps(const struct spa_plugin *p, const float *resid, float *taps);
/* Edge, side: the nonlinear chain from taps ((L+1) x r) to relu(s) (r). scratch: r + H floats. */
void spa_plugin_side_chain(const struct spa_plugin *p, const float *taps, float *relu_s,
			   float *scratch);
/* Edge, side: the same chain as one kernel: each block's U_i relu(s) with its bias and relu
 * applied as the rows come out of the kernels' 4-row dots, then D_i u, in the summation order
 * of spa_matvec_f32, so the bits equal spa_plugin_side_chain's. scratch:
 * spa_plugin_side_chain_fused_scratch(p) floats. relu_s may alias taps[0..r). Hot path,
 * single thread. */
void spa_plugin_side_chain_fused(const struct spa_plugin *p, const float *taps, float *relu_s,
				 float *scratch);
size_t spa_plugin_side_chain_fused_scratch(const struct spa_plugin *p);
/* Cloud, side: g = W_out relu_s + b_out (H). */
void spa_plugin_side_out(const struct spa_plugin *p, const float *relu_s, float *g);
/* Edge-all: the whole side network from resid to g (taps, chain, out): exactly the same
 * arithmetic as the three calls above. scratch: (L+1) x r + r + H floats. */
void spa_plugin_side_full(const struct spa_plugin *p, const float *resid, float *g,
			  float *scratch);
/* Cloud, classifier: sigma = argmax(W_c f + b_c) (0 base path, 1 side path); logit difference
 * (l1 - l0) in *margin when margin is not NULL. */
int spa_plugin_gate(const struct spa_plugin *p, const float *f, float *margin);
/* Edge, LoRA: for n_tok rows x (n_tok x H): dq = B_q A_q x (n_tok x H), dv = B_v A_v x
 * (n_tok x kv_dim). scratch: k floats. */
void spa_plugin_lora(const struct spa_plugin *p, uint32_t layer, uint32_t n_tok, const float *x,
		     float *dq, float *dv, float *scratch);
/* Edge, adapter: delta = up(relu(down h + b_dn)) + b_up for n_tok rows of h (n_tok x H).
 * scratch: b floats. */
void spa_plugin_adapter(const struct spa_plugin *p, uint32_t layer, uint32_t which,
			uint32_t n_tok, const float *h, float *delta, float *scratch);

#endif
