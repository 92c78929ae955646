/* Llama-family base model from GGUF: check the file against its architecture's conventions
 * ("llama", "qwen2": include/spa/model.h), load its tensor data in one io_uring pass, and point
 * struct spa_model at it.
 *
 * The check is strict and done before any tensor data is read: a file whose metadata promises
 * one size and whose tensors have another is refused with a message naming the tensor, instead
 * of crashing in a kernel later. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/gguf.h"
#include "spa/kernels.h"
#include "spa/model.h"
#include "spa/wstream.h"
#include "spa/tokenizer.h"

/* Sanity bounds: far above any Llama made so far, low enough that products of them cannot
 * overflow 64-bit sizes and that a corrupt header cannot make us allocate absurd buffers. */
#define MAX_LAYERS   1024u
#define MAX_EMBD     65536u
#define MAX_FF       (1u << 20)
#define MAX_HEADS    1024u
#define MAX_VOCAB    (1u << 22)
#define MAX_CTX      (1u << 24)

static const char *const arch_names[SPA_ARCH_COUNT] = { "llama", "qwen2" };

const char *spa_arch_name(enum spa_arch arch)
{
	return (unsigned)arch < SPA_ARCH_COUNT ? arch_names[arch] : "?";
}

/* "<arch>.<suffix>": the metadata keys of an architecture. */
static const char *akey(char *buf, size_t size, enum spa_arch arch, const char *suffix)
{
	snprintf(buf, size, "%s.%s", arch_names[arch], suffix);
	return buf;
}

/* Read a u32 key; -ENOENT leaves *out at its default. */
static int get_u32(const struct spa_gguf *g, const char *key, uint32_t *out, bool required,
		   struct spa_errbuf *err)
{
	int rc = spa_gguf_get_u32(g, key, out, err);
	if (rc == -ENOENT) {
		if (!required)
			return 0;
		return spa_err(err, -SPA_EMODEL, "%s: metadata key '%s' is missing; the file is not "
			       "a complete model (remake it with spa-gen or a GGUF converter)",
			       g->path, key);
	}
	return rc;
}

/* Read an f32 key; *found (may be NULL) says whether it was there. */
static int get_f32(const struct spa_gguf *g, const char *key, float *out, bool *found,
		   struct spa_errbuf *err)
{
	int rc = spa_gguf_get_f32(g, key, out, err);
	if (found)
		*found = rc == 0;
	return rc == -ENOENT ? 0 : rc;
}

/* The rotary embedding's keys: rope.dimension_count, the scaling (type and factor, the older
 * scale_linear), attn_factor; as llama.cpp's llama_model::load_hparams reads them. */
static int read_rope(const struct spa_gguf *g, struct spa_hparams *hp, struct spa_errbuf *err)
{
	char k[96];
	const enum spa_arch a = hp->arch;
	int rc;
	hp->n_rot = hp->head_dim;
	if ((rc = get_u32(g, akey(k, sizeof k, a, "rope.dimension_count"), &hp->n_rot, false,
			  err)) < 0)
		return rc;
	if (hp->n_rot == 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
		return spa_err(err, -SPA_EMODEL, "%s: %s is %u; the rotated dimensions must be even "
			       "and 2..%u (the head dimension)", g->path, k, hp->n_rot,
			       hp->head_dim);
	hp->rope_neox = a == SPA_ARCH_QWEN2; /* llama.cpp's LLAMA_ROPE_TYPE_NEOX for qwen2 */

	const char *type = "linear"; /* llama.cpp's default when the key is absent */
	rc = spa_gguf_get_str(g, akey(k, sizeof k, a, "rope.scaling.type"), &type, err);
	if (rc < 0 && rc != -ENOENT)
		return rc;
	const bool none = strcmp(type, "none") == 0;
	if (!none && strcmp(type, "linear") != 0)
		return spa_err(err, -SPA_EMODEL, "%s: %s is '%s'; spa supports linear rope "
			       "scaling (and none), not '%s' (YaRN, LongRoPE and the like are not "
			       "implemented): use a model without it", g->path, k, type, type);
	float factor = 0.0f;
	bool found = false;
	if ((rc = get_f32(g, akey(k, sizeof k, a, "rope.scaling.factor"), &factor, &found,
			  err)) < 0)
		return rc;
	if (!found && (rc = get_f32(g, akey(k, sizeof k, a, "rope.scale_linear"), &factor,
				    &found, err)) < 0)
		return rc;
	if (!isfinite(factor) || factor < 0.0f)
		return spa_err(err, -SPA_EMODEL, "%s: %s is %g, expected a positive factor (or 0: "
			       "none)", g->path, k, (double)factor);
	/* llama.cpp: a factor of 0 is none; type "none" never scales */
	hp->rope_freq_scale = none || factor == 0.0f ? 1.0f : 1.0f / factor;
	hp->rope_attn_factor = 1.0f;
	if ((rc = get_f32(g, akey(k, sizeof k, a, "rope.scaling.attn_factor"),
			  &hp->rope_attn_factor, NULL, err)) < 0)
		return rc;
	if (!isfinite(hp->rope_attn_factor) || hp->rope_attn_factor <= 0.0f)
		return spa_err(err, -SPA_EMODEL, "%s: %s is %g, expected a finite value > 0",
			       g->path, k, (double)hp->rope_attn_factor);
	if (!isfinite(hp->rope_freq_scale) || hp->rope_freq_scale <= 0.0f)
		return spa_err(err, -SPA_EMODEL, "%s: rope scaling factor %g is out of range",
			       g->path, (double)factor);
	return 0;
}

/* The hyperparameters alone (metadata, no tensors, no tokenizer): shared by the check and the
 * fingerprint. */
static int read_hparams(const struct spa_gguf *g, struct spa_hparams *hp, struct spa_errbuf *err)
{
	const char *arch = NULL;
	int rc = spa_gguf_get_str(g, "general.architecture", &arch, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: no general.architecture key; the file is not a "
			       "model (a plugin or other GGUF?); give a llama base model", g->path);
	if (rc < 0)
		return rc;
	memset(hp, 0, sizeof *hp);
	while (hp->arch < SPA_ARCH_COUNT && strcmp(arch, arch_names[hp->arch]) != 0)
		hp->arch++;
	if (hp->arch == SPA_ARCH_COUNT)
		return spa_err(err, -SPA_EMODEL, "%s: architecture is '%s'; spa runs 'llama' (Llama "
			       "2 and 3, Mistral, TinyLlama, SmolLM) and 'qwen2' (Qwen2, Qwen2.5) "
			       "models, not '%s'", g->path, arch, arch);
	const enum spa_arch a = hp->arch;
	char k[96];

	hp->rms_eps = 1e-5f;
	hp->rope_base = 10000.0f;
	hp->n_ctx = 2048;
	if ((rc = get_u32(g, akey(k, sizeof k, a, "block_count"), &hp->n_layers, true, err)) < 0 ||
	    (rc = get_u32(g, akey(k, sizeof k, a, "embedding_length"), &hp->n_embd, true,
			  err)) < 0 ||
	    (rc = get_u32(g, akey(k, sizeof k, a, "feed_forward_length"), &hp->n_ff, true,
			  err)) < 0 ||
	    (rc = get_u32(g, akey(k, sizeof k, a, "attention.head_count"), &hp->n_heads, true,
			  err)) < 0)
		return rc;
	hp->n_kv_heads = hp->n_heads;
	if ((rc = get_u32(g, akey(k, sizeof k, a, "attention.head_count_kv"), &hp->n_kv_heads,
			  false, err)) < 0 ||
	    (rc = get_u32(g, akey(k, sizeof k, a, "context_length"), &hp->n_ctx, false,
			  err)) < 0 ||
	    (rc = get_f32(g, akey(k, sizeof k, a, "attention.layer_norm_rms_epsilon"),
			  &hp->rms_eps, NULL, err)) < 0 ||
	    (rc = get_f32(g, akey(k, sizeof k, a, "rope.freq_base"), &hp->rope_base, NULL,
			  err)) < 0)
		return rc;

	rc = spa_gguf_get_u32(g, akey(k, sizeof k, a, "vocab_size"), &hp->n_vocab, err);
	if (rc == -ENOENT) {
		const struct spa_gguf_kv *kv = NULL;
		rc = spa_gguf_get_arr(g, "tokenizer.ggml.tokens", SPA_GGUF_STRING, &kv, err);
		if (rc == -ENOENT)
			return spa_err(err, -SPA_EMODEL, "%s: neither %s.vocab_size nor "
				       "tokenizer.ggml.tokens is present; the model has no vocabulary",
				       g->path, arch_names[a]);
		if (rc < 0)
			return rc;
		if (kv->v.arr.n > MAX_VOCAB)
			return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.tokens has %" PRIu64
				       " entries, more than the %u supported", g->path, kv->v.arr.n,
				       MAX_VOCAB);
		hp->n_vocab = (uint32_t)kv->v.arr.n;
	} else if (rc < 0) {
		return rc;
	}

#define RANGE(v, hi, what) \
	if ((v) == 0 || (v) > (hi)) \
		return spa_err(err, -SPA_EMODEL, "%s: %s%s is %u, expected 1..%u; the metadata is " \
			       "damaged or the model is not supported", g->path, \
			       *(what) == '.' ? arch_names[a] : "", what, (unsigned)(v), \
			       (unsigned)(hi))
	RANGE(hp->n_layers, MAX_LAYERS, ".block_count");
	RANGE(hp->n_embd, MAX_EMBD, ".embedding_length");
	RANGE(hp->n_ff, MAX_FF, ".feed_forward_length");
	RANGE(hp->n_heads, MAX_HEADS, ".attention.head_count");
	RANGE(hp->n_kv_heads, hp->n_heads, ".attention.head_count_kv");
	RANGE(hp->n_vocab, MAX_VOCAB, "the vocabulary size");
	RANGE(hp->n_ctx, MAX_CTX, ".context_length");
#undef RANGE
	if (hp->n_embd % hp->n_heads != 0)
		return spa_err(err, -SPA_EMODEL, "%s: embedding length %u is not divisible by the "
			       "head count %u; the metadata is inconsistent", g->path, hp->n_embd,
			       hp->n_heads);
	if (hp->n_heads % hp->n_kv_heads != 0)
		return spa_err(err, -SPA_EMODEL, "%s: head count %u is not a multiple of the KV head "
			       "count %u (grouped-query attention needs whole groups)", g->path,
			       hp->n_heads, hp->n_kv_heads);
	hp->head_dim = hp->n_embd / hp->n_heads;
	/* Heads as wide as embedding / heads (what the engine computes); llama.cpp reads
	 * key_length and value_length for models whose heads are not (Mistral Nemo). */
	static const char *const head_keys[2] = { "attention.key_length",
						  "attention.value_length" };
	for (int i = 0; i < 2; i++) {
		uint32_t v = hp->head_dim;
		if ((rc = get_u32(g, akey(k, sizeof k, a, head_keys[i]), &v, false, err)) < 0)
			return rc;
		if (v != hp->head_dim)
			return spa_err(err, -SPA_EMODEL, "%s: %s is %u but the embedding %u "
				       "over %u heads is %u: heads of another width than the "
				       "embedding's share are not supported", g->path, k, v,
				       hp->n_embd, hp->n_heads, hp->head_dim);
	}
	if (hp->head_dim % 2 != 0)
		return spa_err(err, -SPA_EMODEL, "%s: head dimension %u (embedding %u / %u heads) is "
			       "odd; rotary embeddings need an even head dimension", g->path,
			       hp->head_dim, hp->n_embd, hp->n_heads);
	if (!isfinite(hp->rms_eps) || hp->rms_eps <= 0.0f || hp->rms_eps >= 1.0f)
		return spa_err(err, -SPA_EMODEL, "%s: %s.attention.layer_norm_rms_epsilon is %g, "
			       "expected in (0, 1)", g->path, arch_names[a], (double)hp->rms_eps);
	if (!isfinite(hp->rope_base) || hp->rope_base <= 1.0f)
		return spa_err(err, -SPA_EMODEL, "%s: %s.rope.freq_base is %g, expected a finite "
			       "value > 1", g->path, arch_names[a], (double)hp->rope_base);
	return read_rope(g, hp, err);
}

static void fmt_shape(char *buf, size_t size, const uint64_t *ne, uint32_t n_dims)
{
	size_t n = 0;
	n += (size_t)snprintf(buf + n, size - n, "[");
	for (uint32_t i = 0; i < n_dims && n < size; i++)
		n += (size_t)snprintf(buf + n, size - n, "%s%" PRIu64, i ? ", " : "", ne[i]);
	if (n < size)
		snprintf(buf + n, size - n, "]");
}

/* Find `name` and check its shape (ne0 x ne1; ne1 == 0 for a vector) and type (F32 when
 * f32_only, else any type the kernels compute with). */
static int check_tensor(const struct spa_gguf *g, const char *name, uint64_t ne0, uint64_t ne1,
			bool f32_only, bool optional, const struct spa_gguf_tensor **out,
			struct spa_errbuf *err)
{
	const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, name);
	*out = t;
	if (!t) {
		if (optional)
			return 0;
		return spa_err(err, -SPA_EMODEL, "%s: tensor '%s' is missing; the file is not a "
			       "complete model", g->path, name);
	}
	uint64_t want[4] = { ne0, ne1 ? ne1 : 1, 1, 1 };
	bool ok = true;
	for (int i = 0; i < 4; i++)
		ok = ok && t->ne[i] == want[i];
	if (!ok) {
		char have[128], exp[64];
		fmt_shape(have, sizeof have, t->ne, t->n_dims);
		fmt_shape(exp, sizeof exp, want, ne1 ? 2 : 1);
		return spa_err(err, -SPA_EMODEL, "%s: tensor '%s' has shape %s, expected %s; the file "
			       "is not a model of the size its metadata says", g->path, name,
			       have, exp);
	}
	const char *tn = spa_dtype_name(t->type);
	if (f32_only && t->type != SPA_TYPE_F32)
		return spa_err(err, -SPA_EMODEL, "%s: tensor '%s' has type %s, expected f32 (norm "
			       "weights are kept in f32); reconvert the model", g->path, name,
			       tn ? tn : "unknown");
	if (!f32_only && !spa_kernels_supports(t->type))
		return spa_err(err, -SPA_EMODEL, "%s: tensor '%s' has type %s, which this build "
			       "cannot compute with; convert it with spa-quantize to f32, f16, bf16, "
			       "q8_0, q4_0, q4_k or q6_k",
			       g->path, name, tn ? tn : "unknown");
	if (t->type == SPA_TYPE_F32 && (t->offset % sizeof(float)) != 0)
		return spa_err(err, -SPA_EMODEL, "%s: tensor '%s' is not 4-byte aligned in the file "
			       "(general.alignment %" PRIu64 "); rewrite it with the default alignment",
			       g->path, name, g->alignment);
	return 0;
}

/* Every tensor the forward pass reads. With m non-NULL, also wire the model to data. */
static int check_tensors(const struct spa_gguf *g, const struct spa_hparams *hp,
			 struct spa_model *m, uint8_t *data, struct spa_errbuf *err)
{
	const uint64_t H = hp->n_embd, V = hp->n_vocab, F = hp->n_ff;
	const uint64_t KV = (uint64_t)hp->head_dim * hp->n_kv_heads;
	const struct spa_gguf_tensor *t;
	uint64_t n_params = 0;
	uint64_t type_elems[SPA_TYPE_COUNT] = {0};
	char name[96];
	int rc;

#define MAT(dst, tname, ne0, ne1) do { \
		if ((rc = check_tensor(g, tname, ne0, ne1, false, false, &t, err)) < 0) \
			return rc; \
		n_params += t->n_elems; \
		type_elems[t->type] += t->n_elems; \
		if (m) \
			dst = (struct spa_tensor){ t->type, t->ne[0], t->ne[1], data + t->offset, 0 }; \
	} while (0)
#define VEC(dst, tname, ne0) do { \
		if ((rc = check_tensor(g, tname, ne0, 0, true, false, &t, err)) < 0) \
			return rc; \
		n_params += t->n_elems; \
		if (m) \
			dst = (const float *)(const void *)(data + t->offset); \
	} while (0)

	struct spa_tensor tmp;
	MAT(tmp, "token_embd.weight", H, V);
	if (m)
		m->tok_embd = tmp;
	const float *vtmp = NULL;
	VEC(vtmp, "output_norm.weight", H);
	if (m)
		m->output_norm = vtmp;
	if ((rc = check_tensor(g, "output.weight", H, V, false, true, &t, err)) < 0)
		return rc;
	if (t) {
		n_params += t->n_elems;
		type_elems[t->type] += t->n_elems;
	}
	if (m) {
		m->tied = t == NULL;
		m->output = t ? (struct spa_tensor){ t->type, t->ne[0], t->ne[1], data + t->offset, 0 }
			      : m->tok_embd;
	}

	/* llama 3.1's frequency divisors, one tensor for every block */
	if ((rc = check_tensor(g, "rope_freqs.weight", hp->n_rot / 2, 0, true, true, &t, err)) < 0)
		return rc;
	if (t) {
		n_params += t->n_elems;
		const float *ff = m ? (const float *)(const void *)(data + t->offset) : NULL;
		for (uint32_t i = 0; ff && i < hp->n_rot / 2; i++)
			if (!isfinite(ff[i]) || ff[i] <= 0.0f)
				return spa_err(err, -SPA_EMODEL, "%s: rope_freqs.weight[%u] is %g, "
					       "expected a finite divisor > 0; the file is damaged",
					       g->path, i, (double)ff[i]);
	}
	if (m)
		m->rope = spa_model_rope(hp, t ? (const float *)(const void *)(data + t->offset)
					       : NULL);

	for (uint32_t l = 0; l < hp->n_layers; l++) {
		struct spa_layer dummy, *ly = m ? &m->layers[l] : &dummy;
#define NAME(s) (snprintf(name, sizeof name, "blk.%u." s ".weight", l), name)
		VEC(ly->attn_norm, NAME("attn_norm"), H);
		MAT(ly->wq, NAME("attn_q"), H, H);
		MAT(ly->wk, NAME("attn_k"), H, KV);
		MAT(ly->wv, NAME("attn_v"), H, KV);
		MAT(ly->wo, NAME("attn_output"), H, H);
		VEC(ly->ffn_norm, NAME("ffn_norm"), H);
		MAT(ly->w_gate, NAME("ffn_gate"), H, F);
		MAT(ly->w_up, NAME("ffn_up"), H, F);
		MAT(ly->w_down, NAME("ffn_down"), F, H);
#undef NAME
		/* biases: q, k and v required in qwen2, any of them optional in llama */
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			const uint64_t rows = k == 1 || k == 2 ? KV : k == 4 || k == 5 ? F : H;
			const bool required = hp->arch == SPA_ARCH_QWEN2 && k < 3;
			snprintf(name, sizeof name, "blk.%u.%s.bias", l, spa_layer_mat_name(k));
			if ((rc = check_tensor(g, name, rows, 0, true, !required, &t, err)) < 0)
				return rc;
			if (t)
				n_params += t->n_elems;
			ly->bias[k] = t && m ? (const float *)(const void *)(data + t->offset) : NULL;
		}
	}
#undef MAT
#undef VEC
	if (m) {
		m->n_params = n_params;
		/* The type holding the most elements among the matrices (for reports). */
		enum spa_dtype best = SPA_TYPE_F32;
		for (int i = 0; i < SPA_TYPE_COUNT; i++)
			if (type_elems[i] > type_elems[best])
				best = (enum spa_dtype)i;
		m->wtype = best;
	}
	return 0;
}

/* Check, and hand back the tokenizer when tok is non-NULL (the loader keeps it). */
static int check(const struct spa_gguf *g, struct spa_hparams *hp, struct spa_tokenizer **tok,
		 struct spa_errbuf *err)
{
	int rc = read_hparams(g, hp, err);
	if (rc < 0)
		return rc;
	if ((rc = check_tensors(g, hp, NULL, NULL, err)) < 0)
		return rc;
	struct spa_tokenizer *t = NULL;
	if ((rc = spa_tokenizer_load(&t, g, err)) < 0)
		return rc;
	uint32_t n = spa_tokenizer_n_vocab(t);
	if (n != hp->n_vocab) {
		spa_tokenizer_destroy(t);
		return spa_err(err, -SPA_EMODEL, "%s: the tokenizer has %u tokens but the model's "
			       "vocabulary is %u; the file mixes two models", g->path, n,
			       hp->n_vocab);
	}
	if (tok)
		*tok = t;
	else
		spa_tokenizer_destroy(t);
	return 0;
}

int spa_model_check(const struct spa_gguf *g, struct spa_hparams *hp, struct spa_errbuf *err)
{
	struct spa_hparams tmp;
	return check(g, hp ? hp : &tmp, NULL, err);
}

int spa_model_load(struct spa_model **out, const char *path, bool show_progress,
		   struct spa_errbuf *err)
{
	struct spa_model *m = calloc(1, sizeof *m);
	int rc;
	*out = NULL;
	if (!m)
		return spa_err(err, -ENOMEM, "%s: out of memory", path);
	if ((rc = spa_gguf_open(&m->gguf, path, err)) < 0)
		goto err;
	if ((rc = check(m->gguf, &m->hp, &m->tok, err)) < 0)
		goto err;
	m->layers = calloc(m->hp.n_layers, sizeof *m->layers);
	if (!m->layers) {
		rc = spa_err(err, -ENOMEM, "%s: out of memory", path);
		goto err;
	}
	if ((rc = spa_model_fingerprint(m->gguf, m->fingerprint, err)) < 0)
		goto err;
	/* Released by spa_model_destroy (free). */
	if ((rc = spa_gguf_load_data(m->gguf, &m->data, &m->data_size, show_progress, err)) < 0)
		goto err;
	/* The check above already passed: this only wires the pointers. */
	if ((rc = check_tensors(m->gguf, &m->hp, m, m->data, err)) < 0 ||
	    (rc = spa_model_pack(m, err)) < 0)
		goto err;
	*out = m;
	return 0;
err:
	spa_model_destroy(m);
	return rc;
}

struct spa_rope_cfg spa_model_rope(const struct spa_hparams *hp, const float *freq_factors)
{
	return (struct spa_rope_cfg){
		.head_dim = hp->head_dim,
		.n_rot = hp->n_rot ? hp->n_rot : hp->head_dim,
		.base = hp->rope_base,
		.freq_scale = hp->rope_freq_scale > 0.0f ? hp->rope_freq_scale : 1.0f,
		.attn_factor = hp->rope_attn_factor > 0.0f ? hp->rope_attn_factor : 1.0f,
		.freq_factors = freq_factors,
		.neox = hp->rope_neox,
	};
}

const struct spa_tensor *spa_layer_mat(const struct spa_layer *ly, int k)
{
	const struct spa_tensor *t[SPA_LAYER_MATS] = { &ly->wq, &ly->wk, &ly->wv, &ly->wo,
						       &ly->w_gate, &ly->w_up, &ly->w_down };
	return t[k];
}

const char *spa_layer_mat_name(int k)
{
	static const char *const names[SPA_LAYER_MATS] = {
		"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
	};
	return names[k];
}

int spa_model_pack(struct spa_model *m, struct spa_errbuf *err)
{
	const char *e = getenv("SPA_PACK");
	if (e && *e && strcmp(e, "on") != 0) {
		if (strcmp(e, "off") == 0)
			return 0;
		return spa_err(err, -SPA_EUSAGE, "SPA_PACK=%s: give on (the default: matrices "
			       "packed for the kernels at load) or off (kept as the file lays them "
			       "out)", e);
	}
	for (uint32_t l = 0; l < m->hp.n_layers; l++)
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			/* the model's own matrix (whole), or its resident rows */
			struct spa_tensor *u = (struct spa_tensor *)spa_layer_mat(&m->layers[l], k);
			if (!u->data && m->res_part)
				u = &m->res_part[(size_t)l * SPA_LAYER_MATS + k];
			if (u->data && spa_tensor_pack(u) < 0)
				return spa_err(err, -ENOMEM, "%s: out of memory packing "
					       "blk.%u.%s.weight", m->gguf ? m->gguf->path : "model",
					       l, spa_layer_mat_name(k));
		}
	return 0;
}

void spa_model_destroy(struct spa_model *m)
{
	if (!m)
		return;
	spa_wstream_destroy(m->stream); /* before the file it reads and the tensors it points at */
	spa_tokenizer_destroy(m->tok);
	spa_gguf_close(m->gguf);
	free(m->layers);
	free(m->res_part);
	free(m->data);
	free(m);
}

/* FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3), fed bytes in this order:
 *   1. the hyperparameters as 10 little-endian u32: n_layers, n_embd, n_ff, n_heads,
 *      n_kv_heads, head_dim, n_vocab, n_ctx, then the IEEE-754 bits of rms_eps and rope_base;
 *      then, unless the model is llama with every head dimension rotated, interleaved and
 *      unscaled, 5 more: the architecture (0 llama, 1 qwen2), n_rot, neox (0/1), the bits of
 *      rope_freq_scale and rope_attn_factor;
 *   2. for every tensor in file order: u64 LE name length, the name bytes, u32 LE type,
 *      u32 LE n_dims, ne[0..3] as 4 u64 LE (unused dims 1);
 *   3. for every tensor in file order: its first min(4096, size) bytes, then its last
 *      min(4096, size) bytes (the two overlap for tensors under 8 KiB; hashed anyway).
 * Printed as 16 lowercase hex digits. Any implementation on any host gives the same value. */
#define FNV_BASIS 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define FP_CHUNK 4096u

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= FNV_PRIME;
	}
	return h;
}

static uint64_t fnv_u32(uint64_t h, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24) };
	return fnv(h, b, 4);
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
	h = fnv_u32(h, (uint32_t)v);
	return fnv_u32(h, (uint32_t)(v >> 32));
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	return u;
}

int spa_model_fingerprint(const struct spa_gguf *g, char out[17], struct spa_errbuf *err)
{
	struct spa_hparams hp;
	int rc = read_hparams(g, &hp, err);
	if (rc < 0)
		return rc;
	uint64_t h = FNV_BASIS;
	const uint32_t hv[10] = { hp.n_layers, hp.n_embd, hp.n_ff, hp.n_heads, hp.n_kv_heads,
				  hp.head_dim, hp.n_vocab, hp.n_ctx, f32_bits(hp.rms_eps),
				  f32_bits(hp.rope_base) };
	for (int i = 0; i < 10; i++)
		h = fnv_u32(h, hv[i]);
	/* what llama's defaults leave out (a llama file's fingerprint stays what it was) */
	if (hp.arch != SPA_ARCH_LLAMA || hp.n_rot != hp.head_dim || hp.rope_neox ||
	    hp.rope_freq_scale != 1.0f || hp.rope_attn_factor != 1.0f) {
		const uint32_t ext[5] = { (uint32_t)hp.arch, hp.n_rot, hp.rope_neox,
					  f32_bits(hp.rope_freq_scale), f32_bits(hp.rope_attn_factor) };
		for (int i = 0; i < 5; i++)
			h = fnv_u32(h, ext[i]);
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		h = fnv_u64(h, t->name.len);
		h = fnv(h, t->name.data, t->name.len);
		h = fnv_u32(h, (uint32_t)t->type);
		h = fnv_u32(h, t->n_dims);
		for (int d = 0; d < 4; d++)
			h = fnv_u64(h, t->ne[d]);
	}
	uint8_t buf[FP_CHUNK];
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		size_t n = t->size < FP_CHUNK ? (size_t)t->size : FP_CHUNK;
		if (n == 0)
			continue;
		if ((rc = spa_gguf_pread(g, t->offset, buf, n, err)) < 0)
			return rc;
		h = fnv(h, buf, n);
		if ((rc = spa_gguf_pread(g, t->offset + t->size - n, buf, n, err)) < 0)
			return rc;
		h = fnv(h, buf, n);
	}
	snprintf(out, 17, "%016" PRIx64, h);
	return 0;
}
