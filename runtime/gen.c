/* spa: synthetic Llama base models with random weights (spa-gen base).
 *
 * The file is what llama.cpp's converter writes for a Llama model: the same keys, tensor
 * names, order and shapes, so other GGUF tools read it. Weights are random but shaped so that
 * a forward pass behaves like a trained model numerically: the residual stream keeps an RMS
 * near 1 over all blocks (each block's output projections are scaled by 1/sqrt(2L)), attention
 * scores have unit variance, and the logits spread over a few units so that greedy tokens vary
 * and sampling is not trivial. Each tensor's values depend only on (seed, tensor index), and
 * are produced by a fill callback while the file is written: the 7B shape never holds more
 * than what the writer asks for at once.
 *
 * Quantized and BF16 models draw the same f32 values as the F32 model of the same seed, row by
 * row, and quantize each row inside the fill callback (spa_quantize_row, ggml's reference
 * quantizers); which tensor gets which type follows llama.cpp (spa_quantize_tensor_type). */
#include "spa/gen.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spa/error.h"
#include "spa/gguf.h"
#include "spa/kernels.h"
#include "spa/rng.h"
#include "spa/tokenizer.h"

int spa_gen_shape(const char *name, struct spa_hparams *hp)
{
	static const struct {
		const char *name;
		uint32_t L, H, ff, heads, kv, vocab, ctx;
	} shapes[] = {
		{ "tiny", 4, 128, 344, 4, 2, 1024, 512 },
		{ "default", 32, 512, 1376, 8, 4, 32000, 2048 },
		{ "1b", 8, 2048, 5632, 16, 16, 32000, 2048 },
		{ "llama-7b", 32, 4096, 11008, 32, 32, 32000, 4096 },
	};
	for (size_t i = 0; name && i < sizeof shapes / sizeof shapes[0]; i++) {
		if (strcmp(name, shapes[i].name) != 0)
			continue;
		*hp = (struct spa_hparams){
			.n_layers = shapes[i].L,
			.n_embd = shapes[i].H,
			.n_ff = shapes[i].ff,
			.n_heads = shapes[i].heads,
			.n_kv_heads = shapes[i].kv,
			.head_dim = shapes[i].H / shapes[i].heads,
			.n_vocab = shapes[i].vocab,
			.n_ctx = shapes[i].ctx,
			.rms_eps = 1e-5f,
			.rope_base = 10000.0f,
			.arch = SPA_ARCH_LLAMA,
			.n_rot = shapes[i].H / shapes[i].heads,
			.rope_freq_scale = 1.0f,
			.rope_attn_factor = 1.0f,
		};
		return 0;
	}
	return -SPA_EUSAGE;
}

/* How a tensor's values are drawn. */
enum fill_kind {
	FILL_UNIFORM, /* uniform in +-scale */
	FILL_NORM,    /* 1 + uniform in +-scale */
};

struct gen_progress {
	const char *path;
	uint64_t done, total; /* bytes */
	int shown;            /* last percentage printed, -1 before the first */
};

/* One row of f32 values and its quantized bytes, shared by the row-wise fills (the writer
 * calls them one tensor after the other, never two at once). */
struct row_scratch {
	float *f;       /* [max ne0] */
	uint8_t *q;     /* [max row bytes] */
};

struct fill_ctx {
	struct spa_rng rng;
	const float *vals;   /* values given (rope_freqs), not drawn; NULL: drawn */
	uint64_t n_vals;     /* of vals handed out */
	enum fill_kind kind;
	enum spa_dtype type;
	float scale;
	uint64_t ne0;        /* row length */
	uint64_t row_size;   /* bytes of a row in type */
	uint64_t q_left;     /* bytes of scratch->q not yet handed out (a row split by a call) */
	struct row_scratch *scratch;
	uint8_t carry[4];  /* bytes of the element a previous call split */
	uint32_t n_carry;  /* of carry[] not yet handed out (taken from its end) */
	struct gen_progress *prog;
};

static inline float fill_value(struct fill_ctx *c)
{
	if (c->vals)
		return c->vals[c->n_vals++];
	float u = spa_rng_uniform(&c->rng) * c->scale;
	return c->kind == FILL_NORM ? 1.0f + u : u;
}

static void fill_elems(struct fill_ctx *c, uint8_t *dst, size_t n)
{
	if (c->type == SPA_TYPE_F16) {
		for (size_t i = 0; i < n; i++) {
			uint16_t h = spa_fp32_to_fp16(fill_value(c));
			memcpy(dst + 2 * i, &h, 2);
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			float f = fill_value(c);
			memcpy(dst + 4 * i, &f, 4);
		}
	}
}

static void progress_add(struct gen_progress *p, size_t bytes)
{
	if (!p)
		return;
	p->done += bytes;
	int pct = p->total ? (int)(p->done * 100 / p->total) : 100;
	if (pct == p->shown)
		return;
	p->shown = pct;
	fprintf(stderr, "\rwriting %s: %3d%% (%.1f of %.1f MB)", p->path, pct,
		(double)p->done / 1e6, (double)p->total / 1e6);
	if (pct >= 100)
		fputc('\n', stderr);
}

/* Writer callback for the row-wise types: draw a row of f32 values, quantize it, hand out its
 * bytes; a row split across two calls is carried over in the scratch. */
static int gen_fill_rows(struct fill_ctx *c, uint8_t *d, size_t size)
{
	struct row_scratch *sc = c->scratch;
	size_t left = size;
	while (left) {
		if (!c->q_left) {
			for (uint64_t i = 0; i < c->ne0; i++)
				sc->f[i] = fill_value(c);
			int rc = spa_quantize_row(c->type, sc->f, sc->q, c->ne0);
			if (rc < 0)
				return rc;
			c->q_left = c->row_size;
		}
		size_t k = left < c->q_left ? left : (size_t)c->q_left;
		memcpy(d, sc->q + (c->row_size - c->q_left), k);
		d += k;
		left -= k;
		c->q_left -= k;
		progress_add(c->prog, k);
	}
	return 0;
}

/* Writer callback: the next `size` bytes of the tensor. The writer may ask in pieces of any
 * size, so an element split across two calls is carried over. F32 and F16 are written element
 * by element (the files of earlier versions, byte for byte); other types row by row. */
static int gen_fill(void *ctx, void *dst, size_t size)
{
	struct fill_ctx *c = ctx;
	if (c->type != SPA_TYPE_F32 && c->type != SPA_TYPE_F16)
		return gen_fill_rows(c, dst, size);
	uint8_t *d = dst;
	size_t es = c->type == SPA_TYPE_F16 ? 2 : 4, left = size, shown = 0;

	while (left && c->n_carry) {
		*d++ = c->carry[es - c->n_carry--];
		left--;
	}
	/* In slices, so that progress moves within the big matrices of the 7B shape. */
	for (size_t whole = left / es; whole;) {
		size_t k = whole < (1u << 22) ? whole : (1u << 22);
		fill_elems(c, d, k);
		d += k * es;
		left -= k * es;
		whole -= k;
		progress_add(c->prog, k * es);
		shown += k * es;
	}
	if (left) {
		fill_elems(c, c->carry, 1);
		c->n_carry = (uint32_t)es;
		while (left) {
			*d++ = c->carry[es - c->n_carry--];
			left--;
		}
	}
	progress_add(c->prog, size - shown);
	return 0;
}

static int check_hparams(const struct spa_hparams *hp, enum spa_dtype type,
			 struct spa_errbuf *err)
{
	if ((unsigned)type >= SPA_TYPE_COUNT || !spa_kernels_supports(type))
		return spa_err(err, -SPA_EUSAGE, "spa_gen_base: weight type %s cannot be "
			       "generated: use f32, f16, bf16, q8_0, q4_0, q4_k or q6_k",
			       spa_dtype_name(type) ? spa_dtype_name(type) : "?");
	if (!hp->n_layers || !hp->n_embd || !hp->n_ff || !hp->n_heads || !hp->n_kv_heads ||
	    !hp->n_ctx || hp->n_layers > 4096 || hp->n_embd > 65536 || hp->n_ff > 262144 ||
	    hp->n_embd % hp->n_heads || hp->n_heads % hp->n_kv_heads ||
	    hp->head_dim != hp->n_embd / hp->n_heads || hp->head_dim % 2 ||
	    hp->n_vocab < 300 || hp->n_vocab > (1u << 19) ||
	    !(hp->rms_eps > 0) || !(hp->rope_base > 0) || (unsigned)hp->arch >= SPA_ARCH_COUNT ||
	    hp->n_rot % 2 || hp->n_rot > hp->head_dim || !(hp->rope_freq_scale >= 0) ||
	    !(hp->rope_freq_scale <= 1e6f) || !(hp->rope_attn_factor >= 0) ||
	    !(hp->rope_attn_factor <= 1e6f))
		return spa_err(err, -SPA_EUSAGE, "spa_gen_base: inconsistent shape (L %u, H %u, FFN "
			       "%u, heads %u/%u, head_dim %u, rotated %u, vocab %u): H must split "
			       "into an even head_dim, heads into KV groups, the rotated dimensions "
			       "be even and at most head_dim, and vocab be 300 to 524288",
			       hp->n_layers, hp->n_embd, hp->n_ff, hp->n_heads, hp->n_kv_heads,
			       hp->head_dim, hp->n_rot, hp->n_vocab);
	return 0;
}

struct gen_tensor {
	char name[48];
	uint32_t seed_id;   /* its values' stream (the base tensors keep theirs whatever is added) */
	const float *vals;  /* given values, or NULL */
	enum spa_dtype type;
	uint64_t ne[2];
	uint32_t n_dims;
	enum fill_kind kind;
	float scale;
	uint64_t row_size;
};

int spa_gen_base(const struct spa_hparams *hp, enum spa_dtype type, uint64_t seed,
		 const char *path, bool show_progress, struct spa_errbuf *err)
{
	return spa_gen_base_opts(hp, type, seed, NULL, path, show_progress, err);
}

int spa_gen_base_tok(const struct spa_hparams *hp, enum spa_dtype type, uint64_t seed,
		     const struct spa_gen_tok *tok, const char *path, bool show_progress,
		     struct spa_errbuf *err)
{
	const struct spa_gen_opts o = { .tok = tok };
	return spa_gen_base_opts(hp, type, seed, &o, path, show_progress, err);
}

/* llama 3.1's rope_freqs as convert_hf_to_gguf.py computes them (rope_scaling: factor 8,
 * low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192): pair k's
 * divisor, 1 for short wavelengths, 8 for long ones, smoothly in between. */
static void llama3_rope_freqs(float *ff, uint32_t n_rot, float base)
{
	const double factor = 8.0, low = 1.0, high = 4.0, old_ctx = 8192.0;
	const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
	for (uint32_t k = 0; k < n_rot / 2; k++) {
		const double freq = 1.0 / pow((double)base, (double)(2 * k) / (double)n_rot);
		const double wavelen = 2.0 * M_PI / freq;
		double f;
		if (wavelen < high_wavelen) {
			f = 1.0;
		} else if (wavelen > low_wavelen) {
			f = factor;
		} else {
			const double smooth = (old_ctx / wavelen - low) / (high - low);
			f = 1.0 / ((1.0 - smooth) / factor + smooth);
		}
		ff[k] = (float)f;
	}
}

int spa_gen_base_opts(const struct spa_hparams *hp_in, enum spa_dtype type, uint64_t seed,
		      const struct spa_gen_opts *o, const char *path, bool show_progress,
		      struct spa_errbuf *err)
{
	static const struct spa_gen_opts none = { 0 };
	const struct spa_gen_tok *tok = o ? o->tok : NULL;
	float *freqs = NULL;
	if (!o)
		o = &none;
	struct spa_hparams hpv = *hp_in, *hp = &hpv;
	if (!hp->n_rot)
		hp->n_rot = hp->head_dim;
	if (hp->rope_freq_scale == 0.0f)
		hp->rope_freq_scale = 1.0f;
	if (hp->rope_attn_factor == 0.0f)
		hp->rope_attn_factor = 1.0f;

	struct spa_gguf_writer *w = NULL;
	struct gen_tensor *tens = NULL;
	struct fill_ctx *ctx = NULL;
	struct row_scratch scratch = { NULL, NULL };
	struct gen_progress prog = { path, 0, 0, -1 };
	char name[48];
	int rc;

	rc = check_hparams(hp, type, err);
	if (rc < 0)
		return rc;

	const uint32_t L = hp->n_layers;
	const uint64_t H = hp->n_embd, F = hp->n_ff, V = hp->n_vocab;
	const uint64_t kv_dim = (uint64_t)hp->n_kv_heads * hp->head_dim;
	const bool qwen2 = hp->arch == SPA_ARCH_QWEN2;
	const uint32_t n_bias = qwen2 ? 3 : o->biases ? 7 : 0; /* per block */
	const uint32_t n_base = 9 * L + 3;
	const uint32_t n_max = n_base + (o->rope_freqs ? 1 : 0) + n_bias * L;
	uint32_t n_extra = 0; /* tensors beyond the base ones, for their seeds */
	const float res_gain = 1.0f / sqrtf(2.0f * (float)L);
	/* uniform(+-sqrt(3/fan_in)) has variance 1/fan_in: unit-variance outputs for unit inputs. */
	const float s_h = sqrtf(3.0f / (float)H), s_f = sqrtf(3.0f / (float)F);
	/* Logits with a standard deviation of about 2 (the final norm makes f's RMS about 1). */
	const float out_gain = 2.0f;
	const float norm_noise = 0.1f;

	rc = -ENOMEM;
	tens = calloc(n_max, sizeof *tens);
	ctx = calloc(n_max, sizeof *ctx);
	if (!tens || !ctx)
		goto err;
	uint32_t t = 0, base_id = 0;
#define TENSOR(nm, ty, n0, n1, nd, k, sc) do {                                   \
		snprintf(tens[t].name, sizeof tens[t].name, "%s", nm);           \
		tens[t].seed_id = base_id++;                                     \
		tens[t].type = spa_quantize_tensor_type(ty, tens[t].name, nd, n0);\
		tens[t].ne[0] = n0;                                              \
		tens[t].ne[1] = n1;                                              \
		tens[t].n_dims = nd;                                             \
		tens[t].kind = k;                                                \
		tens[t].scale = sc;                                              \
		t++;                                                             \
	} while (0)
	/* tied: the embedding is the head too, drawn small (half a matrix's scale): the last
	 * token's own row adds |e|^2 to its logit, and larger rows made greedy decoding repeat
	 * it forever */
	TENSOR("token_embd.weight", type, H, V, 2, FILL_UNIFORM, o->tied ? 0.5f * s_h : 1.0f);
	if (o->rope_freqs) {
		if (!(freqs = malloc(hp->n_rot / 2 * sizeof *freqs)))
			goto err;
		llama3_rope_freqs(freqs, hp->n_rot, hp->rope_base);
		base_id--; /* an extra: not a base tensor's stream */
		TENSOR("rope_freqs.weight", SPA_TYPE_F32, hp->n_rot / 2, 1, 1, FILL_UNIFORM, 0.0f);
		tens[t - 1].seed_id = n_base + n_extra++;
		tens[t - 1].vals = freqs;
	}
	for (uint32_t i = 0; i < L; i++) {
		static const char *const nm[9] = {
			"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
			"ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
		};
#define BLK(j) (snprintf(name, sizeof name, "blk.%u.%s.weight", i, nm[j]), name)
		TENSOR(BLK(0), SPA_TYPE_F32, H, 1, 1, FILL_NORM, norm_noise);
		TENSOR(BLK(1), type, H, H, 2, FILL_UNIFORM, s_h);
		TENSOR(BLK(2), type, H, kv_dim, 2, FILL_UNIFORM, s_h);
		TENSOR(BLK(3), type, H, kv_dim, 2, FILL_UNIFORM, s_h);
		TENSOR(BLK(4), type, H, H, 2, FILL_UNIFORM, s_h * res_gain);
		TENSOR(BLK(5), SPA_TYPE_F32, H, 1, 1, FILL_NORM, norm_noise);
		TENSOR(BLK(6), type, H, F, 2, FILL_UNIFORM, s_h);
		TENSOR(BLK(7), type, H, F, 2, FILL_UNIFORM, s_h);
		TENSOR(BLK(8), type, F, H, 2, FILL_UNIFORM, s_f * res_gain);
#undef BLK
		/* biases (F32): q, k, v in qwen2; every matrix's with o->biases */
		static const char *const bn[7] = { "attn_q", "attn_k", "attn_v", "attn_output",
						   "ffn_gate", "ffn_up", "ffn_down" };
		const uint64_t brows[7] = { H, kv_dim, kv_dim, H, F, F, H };
		for (uint32_t k = 0; k < n_bias; k++) {
			snprintf(name, sizeof name, "blk.%u.%s.bias", i, bn[k]);
			base_id--;
			/* the output projections' biases small, as their weights (residual gain) */
			TENSOR(name, SPA_TYPE_F32, brows[k], 1, 1, FILL_UNIFORM,
			       k == 3 || k == 6 ? 0.5f * res_gain : 0.5f);
			tens[t - 1].seed_id = n_base + n_extra++;
		}
	}
	TENSOR("output_norm.weight", SPA_TYPE_F32, H, 1, 1, FILL_NORM, norm_noise);
	if (!o->tied)
		TENSOR("output.weight", type, H, V, 2, FILL_UNIFORM, s_h * out_gain);
#undef TENSOR
	const uint32_t n_tens = t;

	rc = spa_gguf_writer_create(&w);
	if (rc < 0)
		goto err;
	char gname[96], k[96];
	const char *an = spa_arch_name(hp->arch);
#define KEY(sfx) (snprintf(k, sizeof k, "%s." sfx, an), k)
	snprintf(gname, sizeof gname, "spa synthetic %s L%u H%u V%u seed %llu", an, L,
		 (unsigned)H, (unsigned)V, (unsigned long long)seed);
	rc = spa_gguf_writer_set_str(w, "general.architecture", an);
	if (rc == 0)
		rc = spa_gguf_writer_set_str(w, "general.name", gname);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("context_length"), hp->n_ctx);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("embedding_length"), hp->n_embd);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("block_count"), hp->n_layers);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("feed_forward_length"), hp->n_ff);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("rope.dimension_count"), hp->n_rot);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("attention.head_count"), hp->n_heads);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("attention.head_count_kv"), hp->n_kv_heads);
	if (rc == 0)
		rc = spa_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"),
					     hp->rms_eps);
	if (rc == 0)
		rc = spa_gguf_writer_set_f32(w, KEY("rope.freq_base"), hp->rope_base);
	if (rc == 0 && hp->rope_freq_scale != 1.0f)
		rc = spa_gguf_writer_set_str(w, KEY("rope.scaling.type"), "linear");
	if (rc == 0 && hp->rope_freq_scale != 1.0f)
		rc = spa_gguf_writer_set_f32(w, KEY("rope.scaling.factor"),
					     1.0f / hp->rope_freq_scale);
	if (rc == 0 && hp->rope_attn_factor != 1.0f)
		rc = spa_gguf_writer_set_f32(w, KEY("rope.scaling.attn_factor"),
					     hp->rope_attn_factor);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, KEY("vocab_size"), hp->n_vocab);
#undef KEY
	/* llama.cpp's llama_ftype (0 all F32, 1 mostly F16, 7 mostly Q8_0, ...). */
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "general.file_type",
					     (uint32_t)spa_quantize_ftype(type));
	if (rc == 0)
		rc = spa_gguf_writer_set_u64(w, "spa.gen.seed", seed);
	if (rc == 0 && tok && tok->pre) {
		struct spa_errbuf terr = {{0}};
		if ((rc = spa_tokenizer_write_synthetic_bpe(w, tok->pre, hp->n_vocab, &terr)) < 0) {
			spa_err(err, rc, "%s: %s", path, terr.msg[0] ? terr.msg : spa_strerror(rc));
			goto err;
		}
	} else if (rc == 0) {
		rc = spa_tokenizer_write_synthetic(w, hp->n_vocab);
	}
	if (rc < 0) {
		spa_err(err, rc, "%s: cannot describe the model: %s", path, spa_strerror(rc));
		goto err;
	}

	uint64_t max_ne0 = 0, max_row = 0;
	for (uint32_t i = 0; i < n_tens; i++) {
		uint64_t rs;
		if (spa_dtype_row_size(tens[i].type, tens[i].ne[0], &rs) < 0) {
			rc = spa_err(err, -SPA_EUSAGE, "%s: tensor %s: %llu is not a multiple of the %s "
				     "block", path, tens[i].name, (unsigned long long)tens[i].ne[0],
				     spa_dtype_name(tens[i].type));
			goto err;
		}
		tens[i].row_size = rs;
		max_ne0 = tens[i].ne[0] > max_ne0 ? tens[i].ne[0] : max_ne0;
		max_row = rs > max_row ? rs : max_row;
	}
	rc = -ENOMEM;
	scratch.f = malloc(max_ne0 * sizeof(float));
	scratch.q = malloc(max_row);
	if (!scratch.f || !scratch.q) {
		spa_err(err, rc, "%s: out of memory", path);
		goto err;
	}
	/* A vocabulary-only file: the metadata and the tokenizer, as llama.cpp's --vocab-only. */
	for (uint32_t i = 0; i < (tok && tok->vocab_only ? 0 : n_tens); i++) {
		struct fill_ctx *c = &ctx[i];
		/* Per-tensor stream: the same tensor gets the same values whatever comes before. */
		spa_rng_seed(&c->rng, seed ^ (0x9e3779b97f4a7c15ull * (tens[i].seed_id + 1)));
		c->vals = tens[i].vals;
		c->kind = tens[i].kind;
		c->type = tens[i].type;
		c->scale = tens[i].scale;
		c->prog = show_progress && isatty(2) ? &prog : NULL; /* a bar only on a terminal */
		c->ne0 = tens[i].ne[0];
		c->row_size = tens[i].row_size;
		c->scratch = &scratch;
		prog.total += tens[i].row_size * tens[i].ne[1];
		rc = spa_gguf_writer_add_tensor_fn(w, tens[i].name, tens[i].type, tens[i].n_dims,
						   tens[i].ne, gen_fill, c);
		if (rc < 0) {
			spa_err(err, rc, "%s: cannot add tensor %s: %s", path, tens[i].name,
				spa_strerror(rc));
			goto err;
		}
	}
	rc = spa_gguf_writer_write(w, path, false, err);
	if (rc < 0 && show_progress && prog.shown >= 0 && prog.shown < 100)
		fputc('\n', stderr);
err:
	spa_gguf_writer_destroy(w);
	free(freqs);
	free(scratch.f);
	free(scratch.q);
	free(ctx);
	free(tens);
	return rc;
}
