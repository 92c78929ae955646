/* Model loader and CPU decode engine, checked against a naive reference forward pass written
 * here from RUNTIME.md §2 alone: double precision, plain loops over weights dequantized from the
 * GGUF file, every position recomputed from scratch on every call. It shares nothing with the
 * engine except reading the weights. */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spa/spa.h"
#include "testutil.h"

/* Criterion runs the tests of this file in parallel processes, and most of them want
 * tu_tiny_model(): make it once here, in the runner, before any test starts, so that they do
 * not race to write the same file. Same path and recipe as tests/testutil.c; failures are left
 * for the tests to report. */
ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
	(void)set;
	const char *b = getenv("SPA_BUILD_DIR");
	char dir[512], path[600];
	struct spa_hparams hp;
	if (!b || !*b || spa_gen_shape("tiny", &hp) < 0)
		return;
	snprintf(dir, sizeof dir, "%s/tests/models", b);
	mkdir(dir, 0755);
	snprintf(path, sizeof path, "%s/tiny-f32.gguf", dir);
	if (access(path, R_OK) != 0)
		spa_gen_base(&hp, SPA_TYPE_F32, 1, path, false, NULL);
}

/* ---------------------------------------------------------------- reference model */

struct rmat {
	uint64_t rows, cols;
	double *w; /* rows x cols */
};

struct rlayer {
	double *attn_norm, *ffn_norm;
	struct rmat wq, wk, wv, wo, gate, up, down;
	double *bias[7]; /* q, k, v, attn_output, ffn_gate, ffn_up, ffn_down; NULL: none */
};

struct ref {
	struct spa_hparams hp;
	struct rmat embd, out;
	double *out_norm;
	double *rope_freqs; /* n_rot / 2 divisors, or NULL */
	struct rlayer *l;
};

static double *read_tensor(struct spa_gguf *g, const char *name, uint64_t *rows, uint64_t *cols)
{
	const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, name);
	if (!t)
		return NULL;
	void *raw = malloc(t->size);
	cr_assert(raw);
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_pread(g, t->offset, raw, t->size, &err), 0, "%s", err.msg);
	double *d = malloc(t->n_elems * sizeof(double));
	cr_assert(d);
	for (uint64_t i = 0; i < t->n_elems; i++) {
		if (t->type == SPA_TYPE_F32)
			d[i] = ((const float *)raw)[i];
		else if (t->type == SPA_TYPE_F16)
			d[i] = spa_fp16_to_fp32(((const uint16_t *)raw)[i]);
		else if (t->type == SPA_TYPE_BF16)
			d[i] = spa_bf16_to_fp32(((const uint16_t *)raw)[i]);
		else
			cr_assert_fail("reference: unexpected type %d of %s", t->type, name);
	}
	free(raw);
	if (rows) {
		*cols = t->ne[0];
		*rows = t->ne[1];
	}
	return d;
}

static void ref_mat(struct spa_gguf *g, const char *name, struct rmat *m)
{
	m->w = read_tensor(g, name, &m->rows, &m->cols);
	cr_assert(m->w, "reference: no tensor %s", name);
}

static void ref_load(struct ref *r, const char *path)
{
	struct spa_gguf *g = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	memset(r, 0, sizeof *r);
	cr_assert_eq(spa_model_check(g, &r->hp, &err), 0, "%s", err.msg);
	ref_mat(g, "token_embd.weight", &r->embd);
	r->out.w = read_tensor(g, "output.weight", &r->out.rows, &r->out.cols);
	if (!r->out.w) { /* tied */
		r->out = r->embd;
	}
	r->out_norm = read_tensor(g, "output_norm.weight", NULL, NULL);
	r->rope_freqs = read_tensor(g, "rope_freqs.weight", NULL, NULL);
	r->l = calloc(r->hp.n_layers, sizeof *r->l);
	char n[64];
	static const char *const bias_names[7] = { "attn_q", "attn_k", "attn_v", "attn_output",
						   "ffn_gate", "ffn_up", "ffn_down" };
	for (uint32_t i = 0; i < r->hp.n_layers; i++) {
		struct rlayer *ly = &r->l[i];
#define N(s) (snprintf(n, sizeof n, "blk.%u." s ".weight", i), n)
		ly->attn_norm = read_tensor(g, N("attn_norm"), NULL, NULL);
		ly->ffn_norm = read_tensor(g, N("ffn_norm"), NULL, NULL);
		ref_mat(g, N("attn_q"), &ly->wq);
		ref_mat(g, N("attn_k"), &ly->wk);
		ref_mat(g, N("attn_v"), &ly->wv);
		ref_mat(g, N("attn_output"), &ly->wo);
		ref_mat(g, N("ffn_gate"), &ly->gate);
		ref_mat(g, N("ffn_up"), &ly->up);
		ref_mat(g, N("ffn_down"), &ly->down);
#undef N
		for (int k = 0; k < 7; k++) {
			snprintf(n, sizeof n, "blk.%u.%s.bias", i, bias_names[k]);
			ly->bias[k] = read_tensor(g, n, NULL, NULL);
		}
	}
	spa_gguf_close(g);
}

static void ref_free(struct ref *r)
{
	if (r->out.w != r->embd.w)
		free(r->out.w);
	free(r->embd.w);
	free(r->out_norm);
	for (uint32_t i = 0; i < r->hp.n_layers; i++) {
		struct rlayer *ly = &r->l[i];
		free(ly->attn_norm), free(ly->ffn_norm);
		free(ly->wq.w), free(ly->wk.w), free(ly->wv.w), free(ly->wo.w);
		free(ly->gate.w), free(ly->up.w), free(ly->down.w);
		for (int k = 0; k < 7; k++)
			free(ly->bias[k]);
	}
	free(r->rope_freqs);
	free(r->l);
}

static void rmv(const struct rmat *m, const double *x, double *y)
{
	for (uint64_t i = 0; i < m->rows; i++) {
		double s = 0;
		for (uint64_t c = 0; c < m->cols; c++)
			s += m->w[i * m->cols + c] * x[c];
		y[i] = s;
	}
}

static void rrms(const double *x, const double *w, double *y, uint32_t n, double eps)
{
	double ss = 0;
	for (uint32_t i = 0; i < n; i++)
		ss += x[i] * x[i];
	double k = 1.0 / sqrt(ss / n + eps);
	for (uint32_t i = 0; i < n; i++)
		y[i] = x[i] * k * w[i];
}

/* y += b (a bias, when there is one). */
static void radd(double *y, const double *b, uint64_t n)
{
	for (uint64_t i = 0; b && i < n; i++)
		y[i] += b[i];
}

/* The rotary embedding as ggml_rope_ext defines it: pair k of the first n_rot dimensions of
 * each head turns by pos * base^(-2k / n_rot) / rope_freqs[k] * freq_scale, cos and sin times
 * attn_factor; pairs (2k, 2k+1) for llama, (k, k + n_rot/2) for NEOX (qwen2). */
static void rrope(const struct ref *r, double *x, uint32_t n_heads, uint32_t pos)
{
	const struct spa_hparams *hp = &r->hp;
	const uint32_t hd = hp->head_dim, half = hp->n_rot / 2;
	for (uint32_t h = 0; h < n_heads; h++)
		for (uint32_t k = 0; k < half; k++) {
			double th = pos * pow(hp->rope_base, -2.0 * k / hp->n_rot);
			if (r->rope_freqs)
				th /= r->rope_freqs[k];
			th *= hp->rope_freq_scale;
			const double c = cos(th) * hp->rope_attn_factor;
			const double sn = sin(th) * hp->rope_attn_factor;
			double *p0 = x + h * hd + (hp->rope_neox ? k : 2 * k);
			double *p1 = x + h * hd + (hp->rope_neox ? k + half : 2 * k + 1);
			const double a = *p0, b = *p1;
			*p0 = a * c - b * sn;
			*p1 = a * sn + b * c;
		}
}

/* Test hooks: LoRA dq = s_l Bq (Aq x), dv = s_l Bv (Av x) with rank 2; adapter
 * delta = s Uw relu(Dw h) with bottleneck 4. The engine's hooks compute them in float, the
 * reference in double, from the same matrices. */
#define RANK 2
#define BOT 4
struct hookp {
	uint32_t H, kv_dim;
	float *aq, *bq, *av, *bv; /* (RANK,H) (H,RANK) (RANK,H) (kv_dim,RANK) */
	float *dw, *uw;           /* (BOT,H) (H,BOT) */
	bool lora, adapter;
	int fail_layer;           /* lora hook returns -EIO at this layer; -1 never */
	uint32_t n_lora_calls, n_adapter_calls, last_n_tok;
};

static void hookp_init(struct hookp *p, uint32_t H, uint32_t kv_dim)
{
	memset(p, 0, sizeof *p);
	p->H = H, p->kv_dim = kv_dim, p->fail_layer = -1;
	p->aq = malloc(RANK * H * sizeof(float)), p->bq = malloc(H * RANK * sizeof(float));
	p->av = malloc(RANK * H * sizeof(float)), p->bv = malloc(kv_dim * RANK * sizeof(float));
	p->dw = malloc(BOT * H * sizeof(float)), p->uw = malloc(H * BOT * sizeof(float));
	tu_rand(p->aq, RANK * H, 11, 0.2f), tu_rand(p->bq, H * RANK, 12, 0.5f);
	tu_rand(p->av, RANK * H, 13, 0.2f), tu_rand(p->bv, kv_dim * RANK, 14, 0.5f);
	tu_rand(p->dw, BOT * H, 15, 0.2f), tu_rand(p->uw, H * BOT, 16, 0.5f);
}

static void hookp_fini(struct hookp *p)
{
	free(p->aq), free(p->bq), free(p->av), free(p->bv), free(p->dw), free(p->uw);
}

static double lora_scale(uint32_t layer) { return 0.1 * (layer + 1); }
static double adapter_scale(uint32_t layer, uint32_t which) { return 0.05 * (layer + 1 + which); }

static void low_rank_f(const float *a, const float *b, uint32_t in, uint32_t r, uint32_t out,
		       const float *x, float *y, float s, bool relu)
{
	float t[8];
	for (uint32_t k = 0; k < r; k++) {
		float acc = 0;
		for (uint32_t c = 0; c < in; c++)
			acc += a[k * in + c] * x[c];
		t[k] = relu && acc < 0 ? 0 : acc;
	}
	for (uint32_t i = 0; i < out; i++) {
		float acc = 0;
		for (uint32_t k = 0; k < r; k++)
			acc += b[i * r + k] * t[k];
		y[i] = s * acc;
	}
}

static void low_rank_d(const float *a, const float *b, uint32_t in, uint32_t r, uint32_t out,
		       const double *x, double *y, double s, bool relu)
{
	double t[8];
	for (uint32_t k = 0; k < r; k++) {
		double acc = 0;
		for (uint32_t c = 0; c < in; c++)
			acc += a[k * in + c] * x[c];
		t[k] = relu && acc < 0 ? 0 : acc;
	}
	for (uint32_t i = 0; i < out; i++) {
		double acc = 0;
		for (uint32_t k = 0; k < r; k++)
			acc += b[i * r + k] * t[k];
		y[i] += s * acc; /* added in place */
	}
}

static int lora_hook(void *ctx, uint32_t layer, uint32_t n_tok, const float *x, float *dq,
		     float *dv)
{
	struct hookp *p = ctx;
	p->n_lora_calls++;
	p->last_n_tok = n_tok;
	if ((int)layer == p->fail_layer)
		return -EIO;
	for (uint32_t j = 0; j < n_tok; j++) {
		low_rank_f(p->aq, p->bq, p->H, RANK, p->H, x + j * p->H, dq + j * p->H,
			   (float)lora_scale(layer), false);
		low_rank_f(p->av, p->bv, p->H, RANK, p->kv_dim, x + j * p->H, dv + j * p->kv_dim,
			   (float)lora_scale(layer), false);
	}
	return 0;
}

static int adapter_hook(void *ctx, uint32_t layer, uint32_t which, uint32_t n_tok,
			const float *h, float *delta)
{
	struct hookp *p = ctx;
	p->n_adapter_calls++;
	for (uint32_t j = 0; j < n_tok; j++)
		low_rank_f(p->dw, p->uw, p->H, BOT, p->H, h + j * p->H, delta + j * p->H,
			   (float)adapter_scale(layer, which), true);
	return 0;
}

/* x rounded to IEEE half, as the engine's KV cache holds it (from the float it computed). */
static double half_round(double x)
{
	return spa_fp16_to_fp32(spa_fp32_to_fp16((float)x));
}

/* The whole sequence toks[0..n) from scratch; outputs for the last position. */
static void ref_forward(const struct ref *r, const int32_t *toks, uint32_t n,
			const struct hookp *hk, double *logits, double *resid, double *f)
{
	const struct spa_hparams *hp = &r->hp;
	const uint32_t H = hp->n_embd, hd = hp->head_dim, F = hp->n_ff;
	const uint32_t kvd = hp->n_kv_heads * hd, grp = hp->n_heads / hp->n_kv_heads;
	double *X = malloc((size_t)n * H * sizeof(double));
	double *Q = malloc((size_t)n * H * sizeof(double));
	double *K = malloc((size_t)n * kvd * sizeof(double));
	double *Vv = malloc((size_t)n * kvd * sizeof(double));
	double *xn = malloc(H * sizeof(double)), *o = malloc(H * sizeof(double));
	double *A = malloc((size_t)n * H * sizeof(double));
	double *g = malloc(F * sizeof(double)), *u = malloc(F * sizeof(double));
	double *sc = malloc(n * sizeof(double));

	for (uint32_t i = 0; i < n; i++)
		for (uint32_t c = 0; c < H; c++)
			X[(size_t)i * H + c] = r->embd.w[(size_t)toks[i] * H + c];
	memcpy(resid, X + (size_t)(n - 1) * H, H * sizeof(double));
	for (uint32_t l = 0; l < hp->n_layers; l++) {
		const struct rlayer *ly = &r->l[l];
		for (uint32_t i = 0; i < n; i++) {
			rrms(X + (size_t)i * H, ly->attn_norm, xn, H, hp->rms_eps);
			rmv(&ly->wq, xn, Q + (size_t)i * H);
			rmv(&ly->wk, xn, K + (size_t)i * kvd);
			rmv(&ly->wv, xn, Vv + (size_t)i * kvd);
			radd(Q + (size_t)i * H, ly->bias[0], H);
			radd(K + (size_t)i * kvd, ly->bias[1], kvd);
			radd(Vv + (size_t)i * kvd, ly->bias[2], kvd);
			if (hk && hk->lora) {
				low_rank_d(hk->aq, hk->bq, H, RANK, H, xn, Q + (size_t)i * H,
					   lora_scale(l), false);
				low_rank_d(hk->av, hk->bv, H, RANK, kvd, xn, Vv + (size_t)i * kvd,
					   lora_scale(l), false);
			}
			rrope(r, Q + (size_t)i * H, hp->n_heads, i);
			rrope(r, K + (size_t)i * kvd, hp->n_kv_heads, i);
			/* the engine keeps keys and values in half precision */
			for (uint32_t c = 0; c < kvd; c++) {
				K[(size_t)i * kvd + c] = half_round(K[(size_t)i * kvd + c]);
				Vv[(size_t)i * kvd + c] = half_round(Vv[(size_t)i * kvd + c]);
			}
		}
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t h = 0; h < hp->n_heads; h++) {
				const double *q = Q + (size_t)i * H + h * hd;
				uint32_t kh = h / grp;
				double mx = -INFINITY, sum = 0;
				for (uint32_t t = 0; t <= i; t++) {
					double s = 0;
					for (uint32_t d = 0; d < hd; d++)
						s += q[d] * K[(size_t)t * kvd + kh * hd + d];
					sc[t] = s / sqrt((double)hd);
					mx = fmax(mx, sc[t]);
				}
				for (uint32_t t = 0; t <= i; t++)
					sum += (sc[t] = exp(sc[t] - mx));
				for (uint32_t d = 0; d < hd; d++) {
					double s = 0;
					for (uint32_t t = 0; t <= i; t++)
						s += sc[t] / sum * Vv[(size_t)t * kvd + kh * hd + d];
					A[(size_t)i * H + h * hd + d] = s;
				}
			}
		for (uint32_t i = 0; i < n; i++) {
			double *x = X + (size_t)i * H;
			rmv(&ly->wo, A + (size_t)i * H, o);
			radd(o, ly->bias[3], H);
			if (hk && hk->adapter) {
				double hin[512];
				memcpy(hin, o, H * sizeof(double));
				low_rank_d(hk->dw, hk->uw, H, BOT, H, hin, o, adapter_scale(l, 0), true);
			}
			for (uint32_t c = 0; c < H; c++)
				x[c] += o[c];
			rrms(x, ly->ffn_norm, xn, H, hp->rms_eps);
			rmv(&ly->gate, xn, g);
			rmv(&ly->up, xn, u);
			radd(g, ly->bias[4], F);
			radd(u, ly->bias[5], F);
			for (uint32_t c = 0; c < F; c++)
				g[c] = g[c] / (1.0 + exp(-g[c])) * u[c];
			rmv(&ly->down, g, o);
			radd(o, ly->bias[6], H);
			if (hk && hk->adapter) {
				double hin[512];
				memcpy(hin, o, H * sizeof(double));
				low_rank_d(hk->dw, hk->uw, H, BOT, H, hin, o, adapter_scale(l, 1), true);
			}
			for (uint32_t c = 0; c < H; c++)
				x[c] += o[c];
		}
		memcpy(resid + (size_t)(l + 1) * H, X + (size_t)(n - 1) * H, H * sizeof(double));
	}
	rrms(X + (size_t)(n - 1) * H, r->out_norm, f, H, hp->rms_eps);
	rmv(&r->out, f, logits);
	free(X), free(Q), free(K), free(Vv), free(xn), free(o), free(A), free(g), free(u);
	free(sc);
}

/* ---------------------------------------------------------------- helpers */

static struct spa_model *load(const char *path)
{
	struct spa_model *m = NULL;
	struct spa_errbuf err = {{0}};
	int rc = spa_model_load(&m, path, false, &err);
	cr_assert_eq(rc, 0, "load %s: %s", path, err.msg);
	return m;
}

static void rand_tokens(int32_t *t, uint32_t n, uint32_t V, uint64_t seed)
{
	struct spa_rng r;
	spa_rng_seed(&r, seed);
	for (uint32_t i = 0; i < n; i++)
		t[i] = (int32_t)(spa_rng_next(&r) % V);
}

/* Relative to the logit scale: max |a - b| / max(1, max |b|). */
static double rel_diff(const float *a, const double *b, uint32_t n)
{
	double md = 0, mb = 1;
	for (uint32_t i = 0; i < n; i++) {
		md = fmax(md, fabs(a[i] - b[i]));
		mb = fmax(mb, fabs(b[i]));
	}
	return md / mb;
}

/* Float engine vs double reference, over 4 F32 blocks: observed ~1e-5 (the keys and values
 * rounded to half in both, from float in the engine and from double in the reference, can
 * round apart by one half ulp); allow 1e-4. */
#define TOL_F32 1e-4
/* F16 weights: the kernels may round activations to f16 for the dot products. */
#define TOL_F16 1e-2

/* Run toks through the engine in batches of `chunk` (a last smaller one allowed), comparing
 * logits, resid and f with the reference after every call. Returns the worst relative diff. */
static double run_vs_ref(const char *path, const int32_t *toks, uint32_t n, uint32_t chunk,
			 struct hookp *hk, double tol)
{
	struct spa_model *m = load(path);
	struct ref r;
	ref_load(&r, path);
	const uint32_t H = m->hp.n_embd, V = m->hp.n_vocab, L = m->hp.n_layers;
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, 64, chunk), 0);
	struct spa_engine_hooks hooks = {
		.ctx = hk,
		.lora = hk && hk->lora ? lora_hook : NULL,
		.adapter = hk && hk->adapter ? adapter_hook : NULL,
	};
	float *lg = malloc(V * sizeof(float));
	double *rl = malloc(V * sizeof(double)), *rr = malloc((L + 1) * H * sizeof(double));
	double *rf = malloc(H * sizeof(double));
	double worst = 0;
	for (uint32_t i = 0; i < n;) {
		uint32_t c = n - i < chunk ? n - i : chunk;
		cr_assert_eq(spa_engine_forward(e, toks + i, c, hk ? &hooks : NULL), 0);
		i += c;
		cr_assert_eq(spa_context_pos(e), i);
		spa_engine_logits(e, spa_context_final(e), lg);
		ref_forward(&r, toks, i, hk, rl, rr, rf);
		double d = rel_diff(lg, rl, V);
		cr_assert_lt(d, tol, "logits after %u tokens: relative diff %g", i, d);
		cr_assert_lt(rel_diff(spa_context_resid(e), rr, (L + 1) * H), tol, "resid at %u", i);
		cr_assert_lt(rel_diff(spa_context_final(e), rf, H), tol, "final at %u", i);
		worst = fmax(worst, d);
	}
	free(lg), free(rl), free(rr), free(rf);
	spa_context_destroy(e);
	spa_model_destroy(m);
	ref_free(&r);
	return worst;
}

/* Copy a GGUF file with one change. */
struct edit {
	const char *drop_tensor;   /* leave this tensor out */
	const char *swap_tensor;   /* write this 2-D tensor with ne0 and ne1 exchanged */
	const char *drop_kv;       /* leave this key out */
	const char *u32_key;       /* then set this key ... */
	uint32_t u32_val;
	const char *str_key;
	const char *str_val;
};

static void rewrite(const char *src, const char *dst, const struct edit *ed)
{
	struct spa_gguf *g = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_open(&g, src, &err), 0, "%s", err.msg);
	void *data = NULL;
	size_t size = 0;
	cr_assert_eq(spa_gguf_load_data(g, &data, &size, false, &err), 0, "%s", err.msg);
	struct spa_gguf_writer *w = NULL;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	for (uint64_t i = 0; i < g->n_kv; i++) {
		const char *k = g->kv[i].key.data;
		if ((ed->drop_kv && !strcmp(k, ed->drop_kv)) || (ed->u32_key && !strcmp(k, ed->u32_key)) ||
		    (ed->str_key && !strcmp(k, ed->str_key)))
			continue;
		cr_assert_eq(spa_gguf_writer_copy_kv(w, &g->kv[i]), 0);
	}
	if (ed->u32_key)
		cr_assert_eq(spa_gguf_writer_set_u32(w, ed->u32_key, ed->u32_val), 0);
	if (ed->str_key)
		cr_assert_eq(spa_gguf_writer_set_str(w, ed->str_key, ed->str_val), 0);
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		if (ed->drop_tensor && !strcmp(t->name.data, ed->drop_tensor))
			continue;
		uint64_t ne[4] = { t->ne[0], t->ne[1], t->ne[2], t->ne[3] };
		if (ed->swap_tensor && !strcmp(t->name.data, ed->swap_tensor)) {
			ne[0] = t->ne[1];
			ne[1] = t->ne[0];
		}
		cr_assert_eq(spa_gguf_writer_add_tensor(w, t->name.data, t->type, t->n_dims, ne,
							(const uint8_t *)data + t->offset), 0);
	}
	cr_assert_eq(spa_gguf_writer_write(w, dst, false, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	free(data);
	spa_gguf_close(g);
}

/* spa_model_check on a file; returns its code, message in err. */
static int check_file(const char *path, struct spa_errbuf *err)
{
	struct spa_gguf *g = NULL;
	cr_assert_eq(spa_gguf_open(&g, path, err), 0, "%s", err->msg);
	struct spa_hparams hp;
	int rc = spa_model_check(g, &hp, err);
	spa_gguf_close(g);
	return rc;
}

/* ---------------------------------------------------------------- model */

Test(engine, model_loads_tiny_with_its_metadata)
{
	struct spa_model *m = load(tu_tiny_model());
	struct spa_hparams want;
	cr_assert_eq(spa_gen_shape("tiny", &want), 0);
	const struct spa_hparams *hp = &m->hp;
	cr_assert_eq(hp->n_layers, want.n_layers);
	cr_assert_eq(hp->n_embd, want.n_embd);
	cr_assert_eq(hp->n_ff, want.n_ff);
	cr_assert_eq(hp->n_heads, want.n_heads);
	cr_assert_eq(hp->n_kv_heads, want.n_kv_heads);
	cr_assert_eq(hp->head_dim, want.n_embd / want.n_heads);
	cr_assert_eq(hp->n_vocab, want.n_vocab);
	cr_assert_eq(hp->n_ctx, want.n_ctx);
	cr_assert_float_eq(hp->rms_eps, 1e-5f, 1e-12);
	cr_assert_float_eq(hp->rope_base, 10000.0f, 1e-3);
	cr_assert_eq(m->wtype, SPA_TYPE_F32);
	cr_assert(!m->tied);
	cr_assert_eq(spa_tokenizer_n_vocab(m->tok), hp->n_vocab);
	/* n_params = every tensor's elements */
	uint64_t H = hp->n_embd, F = hp->n_ff, KV = (uint64_t)hp->n_kv_heads * hp->head_dim;
	uint64_t want_params = 2 * H * hp->n_vocab + H +
			       hp->n_layers * (2 * H + 2 * H * H + 2 * H * KV + 3 * H * F);
	cr_assert_eq(m->n_params, want_params);
	/* the data pointers land on the file's tensors */
	struct spa_gguf *g = m->gguf;
	const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, "blk.3.ffn_down.weight");
	float probe[16];
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_pread(g, t->offset + 4 * 100, probe, sizeof probe, &err), 0);
	cr_assert_eq(memcmp(probe, (const float *)m->layers[3].w_down.data + 100, sizeof probe), 0);
	cr_assert_eq(m->layers[3].w_down.cols, F);
	cr_assert_eq(m->layers[3].w_down.rows, H);
	cr_assert_eq(m->layers[1].wk.rows, KV);
	spa_model_destroy(m);
	spa_model_destroy(NULL);
}

Test(engine, check_refuses_a_missing_tensor)
{
	char path[256];
	snprintf(path, sizeof path, "%s/m.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path, &(struct edit){ .drop_tensor = "blk.2.ffn_up.weight" });
	struct spa_errbuf err = {{0}};
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "'blk.2.ffn_up.weight' is missing"), "%s", err.msg);
	struct spa_model *m = (void *)1;
	cr_assert_eq(spa_model_load(&m, path, false, &err), -SPA_EMODEL);
	cr_assert_null(m);
}

Test(engine, check_refuses_a_wrong_shape)
{
	char path[256];
	snprintf(path, sizeof path, "%s/m.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path, &(struct edit){ .swap_tensor = "blk.3.attn_k.weight" });
	struct spa_errbuf err = {{0}};
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "tensor 'blk.3.attn_k.weight' has shape [64, 128], expected "
			 "[128, 64]"), "%s", err.msg);
}

Test(engine, check_refuses_bad_metadata)
{
	const char *dir = tu_tmpdir();
	char path[256];
	struct spa_errbuf err = {{0}};
	snprintf(path, sizeof path, "%s/a.gguf", dir);
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .str_key = "general.architecture", .str_val = "gpt2" });
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "'gpt2'"), "%s", err.msg);

	snprintf(path, sizeof path, "%s/b.gguf", dir);
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .u32_key = "llama.attention.head_count", .u32_val = 3 });
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "not divisible"), "%s", err.msg);

	snprintf(path, sizeof path, "%s/c.gguf", dir);
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .u32_key = "llama.attention.head_count_kv", .u32_val = 3 });
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "KV head"), "%s", err.msg);

	snprintf(path, sizeof path, "%s/d.gguf", dir);
	rewrite(tu_tiny_model(), path, &(struct edit){ .drop_kv = "llama.block_count" });
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "llama.block_count"), "%s", err.msg);

	/* more blocks promised than present: the first missing one is named */
	snprintf(path, sizeof path, "%s/e.gguf", dir);
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .u32_key = "llama.block_count", .u32_val = 5 });
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "'blk.4.attn_norm.weight' is missing"), "%s", err.msg);

	/* a vocabulary size that disagrees with the tensors */
	snprintf(path, sizeof path, "%s/f.gguf", dir);
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .u32_key = "llama.vocab_size", .u32_val = 1000 });
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "token_embd.weight"), "%s", err.msg);
}

Test(engine, fingerprint_is_stable_and_tells_models_apart)
{
	struct spa_model *a = load(tu_tiny_model()), *b = load(tu_tiny_model());
	cr_assert_eq(strlen(a->fingerprint), 16);
	for (int i = 0; i < 16; i++)
		cr_assert(strchr("0123456789abcdef", a->fingerprint[i]));
	cr_assert_str_eq(a->fingerprint, b->fingerprint);
	char fp[17];
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_fingerprint(a->gguf, fp, &err), 0);
	cr_assert_str_eq(fp, a->fingerprint);

	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	char path[256];
	snprintf(path, sizeof path, "%s/seed3.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 3, path, false, &err), 0, "%s", err.msg);
	struct spa_model *c = load(path);
	cr_assert_str_neq(c->fingerprint, a->fingerprint);
	spa_model_destroy(a), spa_model_destroy(b), spa_model_destroy(c);
}

/* ---------------------------------------------------------------- engine vs reference */

Test(engine, token_by_token_matches_reference)
{
	int32_t toks[10];
	rand_tokens(toks, 10, 1024, 7);
	toks[0] = 1;
	double d = run_vs_ref(tu_tiny_model(), toks, 10, 1, NULL, TOL_F32);
	cr_log_info("token by token: worst relative logit diff %g", d);
}

Test(engine, batch_then_decode_matches_reference)
{
	int32_t toks[12];
	rand_tokens(toks, 12, 1024, 8);
	/* batches of 7, then 5 (the engine's max_batch is 7) */
	run_vs_ref(tu_tiny_model(), toks, 12, 7, NULL, TOL_F32);
	/* prefill 7, then token by token */
	struct spa_model *m = load(tu_tiny_model());
	struct ref r;
	ref_load(&r, tu_tiny_model());
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, 32, 7), 0);
	float lg[1024];
	double rl[1024], rr[5 * 128], rf[128];
	cr_assert_eq(spa_engine_forward(e, toks, 7, NULL), 0);
	for (uint32_t i = 7; i <= 12; i++) {
		if (i > 7)
			cr_assert_eq(spa_engine_forward(e, toks + i - 1, 1, NULL), 0);
		spa_engine_logits(e, spa_context_final(e), lg);
		ref_forward(&r, toks, i, NULL, rl, rr, rf);
		cr_assert_lt(rel_diff(lg, rl, 1024), TOL_F32, "after %u tokens", i);
	}
	spa_context_destroy(e);
	spa_model_destroy(m);
	ref_free(&r);
}

Test(engine, tied_output_uses_the_embedding)
{
	char path[256];
	snprintf(path, sizeof path, "%s/tied.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path, &(struct edit){ .drop_tensor = "output.weight" });
	struct spa_model *m = load(path);
	cr_assert(m->tied);
	cr_assert_eq(m->output.data, m->tok_embd.data);
	spa_model_destroy(m);
	int32_t toks[5] = { 1, 500, 77, 1023, 3 };
	run_vs_ref(path, toks, 5, 2, NULL, TOL_F32);
}

static void run_bits(const struct spa_model *m, struct spa_pool *pool, const int32_t *toks,
		     const uint32_t *chunks, uint32_t n_chunks, float *logits, float *resid,
		     float *f)
{
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create_cpu(&e, m, pool, 40, 16), 0);
	uint32_t at = 0;
	for (uint32_t c = 0; c < n_chunks; c++) {
		cr_assert_eq(spa_engine_forward(e, toks + at, chunks[c], NULL), 0);
		at += chunks[c];
	}
	spa_engine_logits(e, spa_context_final(e), logits);
	memcpy(resid, spa_context_resid(e), (m->hp.n_layers + 1) * m->hp.n_embd * sizeof(float));
	memcpy(f, spa_context_final(e), m->hp.n_embd * sizeof(float));
	spa_context_destroy(e);
}

Test(engine, batched_prefill_equals_token_by_token_bit_for_bit)
{
	struct spa_model *m = load(tu_tiny_model());
	const uint32_t V = m->hp.n_vocab, RS = (m->hp.n_layers + 1) * m->hp.n_embd;
	int32_t toks[23];
	rand_tokens(toks, 23, V, 9);
	const uint32_t ones[23] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
				    1, 1, 1 };
	const uint32_t mixed[] = { 13, 1, 9 }, mixed2[] = { 16, 7 }, mixed3[] = { 3, 11, 1, 1, 7 };
	float l1[1024], l2[1024], f1[128], f2[128];
	float *r1 = malloc(RS * sizeof(float)), *r2 = malloc(RS * sizeof(float));
	run_bits(m, NULL, toks, ones, 23, l1, r1, f1);
	const uint32_t *plans[] = { mixed, mixed2, mixed3 };
	const uint32_t n_plans[] = { 3, 2, 5 };
	for (int p = 0; p < 3; p++) {
		run_bits(m, NULL, toks, plans[p], n_plans[p], l2, r2, f2);
		cr_assert_eq(memcmp(l1, l2, sizeof l1), 0, "logits, plan %d", p);
		cr_assert_eq(memcmp(r1, r2, RS * sizeof(float)), 0, "resid, plan %d", p);
		cr_assert_eq(memcmp(f1, f2, sizeof f1), 0, "final, plan %d", p);
	}
	free(r1), free(r2);
	spa_model_destroy(m);
}

Test(engine, thread_counts_give_identical_bits)
{
	struct spa_model *m = load(tu_tiny_model());
	const uint32_t RS = (m->hp.n_layers + 1) * m->hp.n_embd;
	int32_t toks[19];
	rand_tokens(toks, 19, m->hp.n_vocab, 10);
	const uint32_t plan[] = { 15, 1, 1, 1, 1 };
	float l[3][1024], f[3][128];
	float *r[3];
	struct spa_pool *p1 = NULL, *p2 = NULL;
	cr_assert_eq(spa_pool_create(&p1, 1, NULL), 0);
	cr_assert_eq(spa_pool_create(&p2, 2, NULL), 0);
	struct spa_pool *pools[3] = { NULL, p1, p2 };
	for (int i = 0; i < 3; i++) {
		r[i] = malloc(RS * sizeof(float));
		run_bits(m, pools[i], toks, plan, 5, l[i], r[i], f[i]);
	}
	for (int i = 1; i < 3; i++) {
		cr_assert_eq(memcmp(l[0], l[i], sizeof l[0]), 0, "logits, pool %d", i);
		cr_assert_eq(memcmp(r[0], r[i], RS * sizeof(float)), 0, "resid, pool %d", i);
		cr_assert_eq(memcmp(f[0], f[i], sizeof f[0]), 0, "final, pool %d", i);
	}
	for (int i = 0; i < 3; i++)
		free(r[i]);
	spa_pool_destroy(p1);
	spa_pool_destroy(p2);
	spa_model_destroy(m);
}

Test(engine, resid_starts_with_the_embedding_and_final_is_its_rmsnorm)
{
	struct spa_model *m = load(tu_tiny_model());
	const uint32_t H = m->hp.n_embd, L = m->hp.n_layers;
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, 16, 4), 0);
	const int32_t toks[6] = { 5, 900, 1023, 0, 42, 17 };
	cr_assert_eq(spa_engine_forward(e, toks, 4, NULL), 0);
	cr_assert_eq(spa_engine_forward(e, toks + 4, 2, NULL), 0);
	const float *res = spa_context_resid(e);
	/* e of the last position: row 17 of token_embd, exactly */
	cr_assert_eq(memcmp(res, (const float *)m->tok_embd.data + 17 * H, H * sizeof(float)), 0);
	/* f = RMSNorm_final(y_{L-1}) */
	double ss = 0;
	for (uint32_t i = 0; i < H; i++)
		ss += (double)res[L * H + i] * res[L * H + i];
	double k = 1.0 / sqrt(ss / H + m->hp.rms_eps);
	const float *f = spa_context_final(e);
	for (uint32_t i = 0; i < H; i++)
		cr_assert_float_eq(f[i], res[L * H + i] * k * m->output_norm[i],
				   1e-5 * (1 + fabs(f[i])), "f[%u]", i);
	/* blocks change the stream */
	cr_assert_neq(memcmp(res, res + H, H * sizeof(float)), 0);
	spa_context_destroy(e);
	spa_model_destroy(m);
}

Test(engine, lora_hook_matches_reference)
{
	struct hookp hk;
	hookp_init(&hk, 128, 64);
	hk.lora = true;
	int32_t toks[9];
	rand_tokens(toks, 9, 1024, 21);
	run_vs_ref(tu_tiny_model(), toks, 9, 4, &hk, TOL_F32);
	cr_assert_eq(hk.n_lora_calls, 3 * 4, "one call per block per forward");
	cr_assert_eq(hk.last_n_tok, 1);
	/* the deltas matter: without them the reference differs */
	struct ref r;
	ref_load(&r, tu_tiny_model());
	double a[1024], b[1024], rr[5 * 128], rf[128];
	ref_forward(&r, toks, 9, &hk, a, rr, rf);
	ref_forward(&r, toks, 9, NULL, b, rr, rf);
	double md = 0;
	for (int i = 0; i < 1024; i++)
		md = fmax(md, fabs(a[i] - b[i]));
	cr_assert_gt(md, 1e-2);
	ref_free(&r);
	hookp_fini(&hk);
}

Test(engine, adapter_hook_matches_reference)
{
	struct hookp hk;
	hookp_init(&hk, 128, 64);
	hk.adapter = true;
	int32_t toks[8];
	rand_tokens(toks, 8, 1024, 22);
	run_vs_ref(tu_tiny_model(), toks, 8, 3, &hk, TOL_F32);
	cr_assert_eq(hk.n_adapter_calls, 3 * 4 * 2, "two calls per block per forward");
	hk.lora = true;
	hk.n_adapter_calls = 0;
	run_vs_ref(tu_tiny_model(), toks, 8, 8, &hk, TOL_F32);
	cr_assert_eq(hk.n_adapter_calls, 4 * 2);
	hookp_fini(&hk);
}

Test(engine, hook_error_aborts_the_forward)
{
	struct spa_model *m = load(tu_tiny_model());
	struct hookp hk;
	hookp_init(&hk, 128, 64);
	hk.lora = true;
	hk.fail_layer = 2;
	struct spa_engine_hooks hooks = { .ctx = &hk, .lora = lora_hook };
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, 16, 4), 0);
	const int32_t toks[3] = { 1, 2, 3 };
	cr_assert_eq(spa_engine_forward(e, toks, 3, &hooks), -EIO);
	cr_assert_eq(hk.n_lora_calls, 3, "stopped at the failing block");
	cr_assert_eq(spa_context_pos(e), 0);
	/* the failed call left nothing behind: the engine still matches a fresh one */
	float a[1024], b[1024];
	cr_assert_eq(spa_engine_forward(e, toks, 3, NULL), 0);
	spa_engine_logits(e, spa_context_final(e), a);
	struct spa_context *e2 = NULL;
	cr_assert_eq(spa_context_create(&e2, m, NULL, 16, 4), 0);
	cr_assert_eq(spa_engine_forward(e2, toks, 3, NULL), 0);
	spa_engine_logits(e2, spa_context_final(e2), b);
	cr_assert_eq(memcmp(a, b, sizeof a), 0);
	spa_context_destroy(e);
	spa_context_destroy(e2);
	hookp_fini(&hk);
	spa_model_destroy(m);
}

Test(engine, refuses_bad_calls_without_harm)
{
	struct spa_model *m = load(tu_tiny_model());
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, 5, 6), -SPA_EUSAGE, "batch above context");
	cr_assert_null(e);
	cr_assert_eq(spa_context_create(&e, m, NULL, 0, 1), -SPA_EUSAGE);
	cr_assert_eq(spa_context_create(&e, m, NULL, 5, 0), -SPA_EUSAGE);
	cr_assert_eq(spa_context_create(&e, m, NULL, 5, 3), 0);
	const int32_t toks[6] = { 1, 2, 3, 4, 5, 6 };
	cr_assert_eq(spa_engine_forward(e, toks, 4, NULL), -SPA_EUSAGE, "batch too big");
	cr_assert_eq(spa_engine_forward(e, toks, 0, NULL), -SPA_EUSAGE, "empty batch");
	cr_assert_eq(spa_engine_forward(e, NULL, 1, NULL), -SPA_EUSAGE);
	const int32_t bad[3][2] = { { 1, -1 }, { 1024, 2 }, { 3, INT32_MAX } };
	for (int i = 0; i < 3; i++)
		cr_assert_eq(spa_engine_forward(e, bad[i], 2, NULL), -SPA_EUSAGE, "token %d", i);
	cr_assert_eq(spa_context_pos(e), 0);
	cr_assert_eq(spa_engine_forward(e, toks, 3, NULL), 0);
	cr_assert_eq(spa_engine_forward(e, toks, 3, NULL), -SPA_EUSAGE, "cache full");
	cr_assert_eq(spa_context_pos(e), 3);
	cr_assert_eq(spa_engine_forward(e, toks, 2, NULL), 0);
	cr_assert_eq(spa_context_pos(e), 5);
	cr_assert_eq(spa_engine_forward(e, toks, 1, NULL), -SPA_EUSAGE, "cache full");
	/* reset: the same tokens give the same bits again */
	float a[1024], b[1024];
	spa_engine_logits(e, spa_context_final(e), a);
	spa_context_reset(e);
	cr_assert_eq(spa_context_pos(e), 0);
	cr_assert_eq(spa_engine_forward(e, toks, 3, NULL), 0);
	cr_assert_eq(spa_engine_forward(e, toks, 2, NULL), 0);
	spa_engine_logits(e, spa_context_final(e), b);
	cr_assert_eq(memcmp(a, b, sizeof a), 0);
	spa_context_destroy(e);
	spa_context_destroy(NULL);
	spa_model_destroy(m);
}

/* Keys past IEEE half's range (a corrupt or wrongly scaled model) would turn attention to NaN
 * and every token after it wrong: the forward fails, says why, and does not advance; with
 * the weights back, the same engine decodes the bits of a fresh one. */
Test(engine, a_key_beyond_the_half_cache_range_fails_the_forward_and_says_why)
{
	struct spa_model *m = load(tu_tiny_model());
	struct spa_tensor *wk = &m->layers[1].wk;
	cr_assert_eq(wk->type, SPA_TYPE_F32, "the tiny model is F32");
	const size_t n = (size_t)wk->rows * wk->cols;
	float *w = (float *)(uintptr_t)wk->data; /* the loader's own copy */
	float *keep = malloc(n * sizeof(float));
	cr_assert(keep);
	memcpy(keep, w, n * sizeof(float));
	struct spa_context *e = NULL, *fresh = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, 8, 2), 0);
	const int32_t toks[2] = { 5, 9 };
	cr_assert_eq(spa_engine_forward(e, toks, 1, NULL), 0);
	for (size_t i = 0; i < n; i++)
		w[i] *= 1e7f;
	cr_assert_eq(spa_engine_forward(e, toks + 1, 1, NULL), -SPA_EUNSUPPORTED);
	cr_assert_eq(spa_context_pos(e), 1, "nothing advanced");
	cr_assert(strstr(spa_context_error(e), "65504") && strstr(spa_context_error(e), "block 1"),
		  "%s", spa_context_error(e));
	memcpy(w, keep, n * sizeof(float));
	cr_assert_eq(spa_engine_forward(e, toks + 1, 1, NULL), 0);
	cr_assert_str_eq(spa_context_error(e), "");
	cr_assert_eq(spa_context_create(&fresh, m, NULL, 8, 2), 0);
	cr_assert_eq(spa_engine_forward(fresh, toks, 2, NULL), 0);
	cr_assert_eq(memcmp(spa_context_final(e), spa_context_final(fresh),
			    m->hp.n_embd * sizeof(float)), 0);
	spa_context_destroy(fresh);
	spa_context_destroy(e);
	spa_model_destroy(m);
	free(keep);
}

Test(engine, f16_model_agrees_with_its_reference)
{
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	char path[256];
	struct spa_errbuf err = {{0}};
	snprintf(path, sizeof path, "%s/f16.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F16, 1, path, false, &err), 0, "%s", err.msg);
	struct spa_model *m = load(path);
	cr_assert_eq(m->wtype, SPA_TYPE_F16);
	cr_assert_eq(m->layers[0].wq.type, SPA_TYPE_F16);
	spa_model_destroy(m);
	int32_t toks[7];
	rand_tokens(toks, 7, hp.n_vocab, 23);
	double d = run_vs_ref(path, toks, 7, 3, NULL, TOL_F16);
	cr_log_info("f16: worst relative logit diff %g", d);
}

/* ---------------------------------------------------------------- fused kernels */

static struct spa_plugin *load_side(void)
{
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_plugin_load(&p, tu_tiny_plugin("side"), &err), 0, "%s", err.msg);
	return p;
}

Test(engine, fused_taps_and_gate_equal_the_plugin_bit_for_bit)
{
	struct spa_model *m = load(tu_tiny_model());
	struct spa_plugin *p = load_side();
	const uint32_t L = m->hp.n_layers, H = m->hp.n_embd, r = p->rank;
	struct spa_pool *pool = NULL;
	cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create_cpu(&e, m, pool, 64, 16), 0);
	float *taps = calloc((L + 1) * r, sizeof(float)), *ref = calloc((L + 1) * r, sizeof(float));
	cr_assert_eq(spa_context_set_side(e, p, taps), 0);
	int32_t toks[40];
	rand_tokens(toks, 40, m->hp.n_vocab, 17);
	const uint32_t plan[] = { 13, 1, 1, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1 };
	uint32_t at = 0, n_side = 0;
	for (uint32_t c = 0; c < sizeof plan / sizeof plan[0]; c++) {
		cr_assert_eq(spa_engine_forward(e, toks + at, plan[c], NULL), 0);
		at += plan[c];
		spa_plugin_side_taps(p, spa_context_resid(e), ref);
		cr_assert_eq(memcmp(taps, ref, (L + 1) * r * sizeof(float)), 0,
			     "taps differ after forward %u", c);
		float m1, m2;
		int s1 = spa_context_gate(e, &m1), s2 = spa_plugin_gate(p, spa_context_final(e), &m2);
		cr_assert_eq(s1, s2, "gate after forward %u", c);
		cr_assert_eq(memcmp(&m1, &m2, sizeof m1), 0, "gate margin after forward %u", c);
		n_side += (uint32_t)s1;
	}
	(void)H;
	/* the classifier is calibrated to a fraction 0.5: both outcomes were checked */
	cr_assert(n_side > 0 && n_side < sizeof plan / sizeof plan[0], "sigma %u", n_side);
	/* off again: the buffer is left alone */
	cr_assert_eq(spa_context_set_side(e, NULL, NULL), 0);
	memset(taps, 0x5a, (L + 1) * r * sizeof(float));
	cr_assert_eq(spa_engine_forward(e, toks, 1, NULL), 0);
	cr_assert_eq(((uint8_t *)taps)[0], 0x5a);
	cr_assert_eq(spa_context_gate(e, NULL), -SPA_EUSAGE);
	free(taps), free(ref);
	spa_context_destroy(e);
	spa_pool_destroy(pool);
	spa_plugin_destroy(p);
	spa_model_destroy(m);
}

/* The head over a hand-made LM head: random rows, then exact ties (copies of the best row,
 * placed on both sides of the thread split) and NaN rows. */
Test(engine, fused_argmax_equals_argmax_of_the_logits)
{
	struct spa_model *m = load(tu_tiny_model());
	const uint32_t H = m->hp.n_embd, V = 1000 + 37; /* not a multiple of the tile */
	float *w = malloc(sizeof(float) * H * V), *z = malloc(sizeof(float) * H);
	float *logits = malloc(sizeof(float) * V);
	tu_rand(w, (size_t)H * V, 5, 1.0f);
	struct spa_model mm = *m;
	mm.output = (struct spa_tensor){ SPA_TYPE_F32, H, V, w, 0 };
	struct spa_pool *pools[3] = { NULL, NULL, NULL };
	cr_assert_eq(spa_pool_create(&pools[1], 2, NULL), 0);
	cr_assert_eq(spa_pool_create(&pools[2], 3, NULL), 0);
	uint32_t n_checked = 0;
	for (int pi = 0; pi < 3; pi++) {
		struct spa_context *e = NULL;
		cr_assert_eq(spa_context_create_cpu(&e, &mm, pools[pi], 8, 1), 0);
		for (uint64_t it = 0; it < 300; it++) {
			tu_rand(z, H, 100 + it, it % 3 == 0 ? 1e-3f : 2.0f);
			if (it == 150) { /* ties: the winner copied before and after the split */
				spa_engine_logits(e, z, logits);
				uint32_t best = spa_argmax(logits, V);
				memcpy(w + (size_t)(V - 3) * H, w + (size_t)best * H, H * sizeof(float));
				memcpy(w + (size_t)(V / 2) * H, w + (size_t)best * H, H * sizeof(float));
				if (best > 0)
					memcpy(w + (size_t)(best - 1) * H, w + (size_t)best * H,
					       H * sizeof(float));
			}
			if (it == 200) /* a NaN row */
				w[(size_t)7 * H] = NAN;
			spa_engine_logits(e, z, logits);
			int32_t tok = -1;
			spa_engine_head_argmax(e, z, &tok);
			cr_assert_eq((uint32_t)tok, spa_argmax(logits, V), "iteration %" PRIu64
				     ", %d threads", it, pi + 1);
			n_checked++;
		}
		/* z = 0: every logit ties at 0 (argmax 0) */
		memset(z, 0, sizeof(float) * H);
		w[(size_t)7 * H] = 1.0f;
		int32_t tok = -1;
		spa_engine_head_argmax(e, z, &tok);
		spa_engine_logits(e, z, logits);
		cr_assert_eq((uint32_t)tok, spa_argmax(logits, V));
		spa_context_destroy(e);
	}
	cr_assert_eq(n_checked, 900);
	spa_pool_destroy(pools[1]);
	spa_pool_destroy(pools[2]);
	free(w), free(z), free(logits);
	spa_model_destroy(m);
}

/* ---------------------------------------------------------------- streaming */

static uint64_t file_data_size(const char *path)
{
	struct spa_gguf *g = NULL;
	cr_assert_eq(spa_gguf_open(&g, path, NULL), 0);
	uint64_t n = g->data_size;
	spa_gguf_close(g);
	return n;
}

Test(engine, streamed_under_a_budget_equals_loaded_bit_for_bit)
{
	const char *path = tu_tiny_model();
	struct spa_model *m = load(path);
	const uint32_t V = m->hp.n_vocab, L = m->hp.n_layers;
	const uint64_t size = file_data_size(path);
	int32_t toks[24];
	rand_tokens(toks, 24, V, 23);
	const uint32_t plan[] = { 9, 1, 1, 5, 1, 1, 1, 1, 1, 1, 1, 1 };
	const size_t n_plan = sizeof plan / sizeof plan[0];
	float *ref = malloc(sizeof(float) * V * n_plan), *got = malloc(sizeof(float) * V);
	struct spa_plugin *side = load_side();
	float *taps = calloc((size_t)(L + 1) * side->rank, sizeof(float));
	float *tref = calloc((size_t)(L + 1) * side->rank, sizeof(float));
	struct spa_pool *pool = NULL;
	cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create_cpu(&e, m, pool, 32, 16), 0);
	uint32_t at = 0;
	for (size_t c = 0; c < n_plan; c++) {
		cr_assert_eq(spa_engine_forward(e, toks + at, plan[c], NULL), 0);
		spa_engine_logits(e, spa_context_final(e), ref + c * V);
		at += plan[c];
	}
	spa_context_destroy(e);

	/* the default pieces (a matrix's streamed rows in one or two), and 1 KiB pieces: many
	 * per matrix, one row each for ffn_down (1376-byte rows) */
	const uint32_t pct[] = { 50, 25, 50, 25 };
	for (int b = 0; b < 4; b++) {
		if (b == 2)
			setenv("SPA_STREAM_PIECE_KIB", "1", 1);
		struct spa_model *ms = NULL;
		struct spa_errbuf err = {{0}};
		cr_assert_eq(spa_model_load_budget(&ms, path, size * pct[b] / 100, false, &err), 0,
			     "%u %%: %s", pct[b], err.msg);
		cr_assert_str_eq(ms->fingerprint, m->fingerprint);
		cr_assert_eq(ms->n_params, m->n_params);
		cr_assert(ms->data_size <= size * pct[b] / 100);
		cr_assert_eq(spa_context_create_cpu(&e, ms, pool, 32, 16), 0);
		struct spa_wstream_stats st;
		spa_wstream_stats(spa_context_model(e), &st);
		cr_assert(st.n_streamed_blocks > 0 && st.n_streamed_blocks <= L, "%u %%: %u blocks",
			  pct[b], st.n_streamed_blocks);
		cr_assert(ms->data_size + st.buffer_bytes <= size * pct[b] / 100);
		if (b >= 2) /* 4 KiB buffers (a page each), 8 to 64 of them */
			cr_assert_leq(st.buffer_bytes, 64 * 4096, "%" PRIu64, st.buffer_bytes);
		/* the fused taps too: resident blocks take them in their pool jobs, streamed ones
		 * alone */
		const uint32_t r = side->rank;
		cr_assert_eq(spa_context_set_side(e, side, taps), 0);
		at = 0;
		for (size_t c = 0; c < n_plan; c++) {
			cr_assert_eq(spa_engine_forward(e, toks + at, plan[c], NULL), 0);
			spa_engine_logits(e, spa_context_final(e), got);
			cr_assert_eq(memcmp(got, ref + c * V, sizeof(float) * V), 0,
				     "%u %% budget: logits differ after forward %zu", pct[b], c);
			spa_plugin_side_taps(side, spa_context_resid(e), tref);
			cr_assert_eq(memcmp(taps, tref, (L + 1) * r * sizeof(float)), 0,
				     "%u %% budget: taps differ after forward %zu", pct[b], c);
			at += plan[c];
			if (c == 3) { /* a probe in between leaves the stream where it was */
				uint64_t ns;
				cr_assert_eq(spa_wstream_probe(spa_context_model(e)->stream, &ns), 0);
			}
		}
		spa_wstream_stats(spa_context_model(e), &st);
		cr_assert_eq(st.n_forward, n_plan);
		cr_assert(st.bytes_read >= n_plan * (st.bytes_per_token - ms->hp.n_embd * 4));
		spa_context_destroy(e);
		spa_model_destroy(ms);
	}
	spa_pool_destroy(pool);
	free(ref), free(got), free(taps), free(tref);
	spa_plugin_destroy(side);
	spa_model_destroy(m);
}

/* Logits of forwards of 12, 1, 1, 5 and 1 tokens of toks through m (2 threads). */
static void q4_logits(struct spa_model *m, struct spa_pool *pool, const int32_t *toks,
		      float *out)
{
	static const uint32_t plan[] = { 12, 1, 1, 5, 1 };
	const uint32_t V = m->hp.n_vocab;
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create_cpu(&e, m, pool, 32, 16), 0);
	uint32_t at = 0;
	for (size_t c = 0; c < 5; c++) {
		cr_assert_eq(spa_engine_forward(e, toks + at, plan[c], NULL), 0, "%s",
			     spa_context_error(e));
		spa_engine_logits(e, spa_context_final(e), out + c * V);
		at += plan[c];
	}
	spa_context_destroy(e);
}

/* A Q4_0 model's matrices are packed at load (SPA_PACK=off keeps the file's layout) and give
 * the same logits bit for bit either way; under a budget the resident rows are whole packed
 * groups and the streamed pieces, read as the file holds them, still give the same bits. A bad
 * SPA_PACK is refused with what to give. */
Test(engine, a_packed_q4_0_model_gives_the_bits_of_the_file_layout)
{
	char path[600];
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	snprintf(path, sizeof path, "%s/tiny-q4_0.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_Q4_0, 1, path, false, &err), 0, "%s", err.msg);
	const uint32_t V = hp.n_vocab;
	int32_t toks[20];
	rand_tokens(toks, 20, V, 5);
	float *ref = malloc(sizeof(float) * V * 5), *got = malloc(sizeof(float) * V * 5);
	struct spa_pool *pool = NULL;
	cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);

	setenv("SPA_PACK", "off", 1);
	struct spa_model *m = load(path);
	cr_assert_eq(m->layers[0].wq.type, SPA_TYPE_Q4_0);
	cr_assert_eq(m->layers[0].wq.packed, 0);
	q4_logits(m, pool, toks, ref);
	spa_model_destroy(m);

	setenv("SPA_PACK", "on", 1);
	m = load(path);
	for (uint32_t l = 0; l < hp.n_layers; l++) {
		const struct spa_layer *ly = &m->layers[l];
		cr_assert(ly->wq.packed && ly->wk.packed && ly->wv.packed && ly->wo.packed &&
			  ly->w_gate.packed && ly->w_up.packed, "block %u", l);
		/* ffn_down's rows of 344 are no Q4_0 (F16 in the file): as they are */
		cr_assert(ly->w_down.type != SPA_TYPE_Q4_0 && !ly->w_down.packed);
	}
	cr_assert_eq(m->output.packed, 0, "the head and the embedding keep GGUF rows");
	q4_logits(m, pool, toks, got);
	cr_assert_eq(memcmp(ref, got, sizeof(float) * V * 5), 0, "packed vs file layout");
	const uint64_t size = file_data_size(path);
	spa_model_destroy(m);

	const uint32_t pct[] = { 75, 50, 60 }; /* the Q6_K head is 40 % of this file */
	for (int b = 0; b < 3; b++) {
		if (b == 2)
			setenv("SPA_STREAM_PIECE_KIB", "1", 1);
		struct spa_model *ms = NULL;
		cr_assert_eq(spa_model_load_budget(&ms, path, size * pct[b] / 100, false, &err), 0,
			     "%u %%: %s", pct[b], err.msg);
		int parts = 0;
		for (uint32_t i = 0; i < hp.n_layers * SPA_LAYER_MATS; i++) {
			const struct spa_tensor *p = &ms->res_part[i];
			if (p->type != SPA_TYPE_Q4_0 || !p->rows)
				continue;
			cr_assert_eq(p->rows % SPA_PACK_ROWS, 0, "part %u: %" PRIu64 " rows", i,
				     p->rows);
			cr_assert(p->packed, "part %u", i);
			parts++;
		}
		cr_assert_gt(parts, 0, "%u %%: no packed resident part", pct[b]);
		q4_logits(ms, pool, toks, got);
		cr_assert_eq(memcmp(ref, got, sizeof(float) * V * 5), 0, "%u %% budget", pct[b]);
		spa_model_destroy(ms);
	}
	unsetenv("SPA_STREAM_PIECE_KIB");

	setenv("SPA_PACK", "maybe", 1);
	m = NULL;
	cr_assert_eq(spa_model_load(&m, path, false, &err), -SPA_EUSAGE);
	cr_assert(strstr(err.msg, "SPA_PACK=maybe") && strstr(err.msg, "on") &&
		  strstr(err.msg, "off"), "%s", err.msg);
	cr_assert_null(m);
	unsetenv("SPA_PACK");
	spa_pool_destroy(pool);
	free(ref), free(got);
}

/* The model file shrinks under a streaming engine: the forward that needs the lost rows fails
 * with the read's error, and every later one too (the stream is over), never a crash nor a
 * token from stale buffers. */
Test(engine, a_model_file_that_shrinks_while_streaming_ends_the_stream_clearly)
{
	char path[256], cmd[600];
	snprintf(path, sizeof path, "%s/m.gguf", tu_tmpdir());
	snprintf(cmd, sizeof cmd, "cp '%s' '%s'", tu_tiny_model(), path);
	cr_assert_eq(system(cmd), 0);
	const uint64_t size = file_data_size(path);
	struct spa_model *ms = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load_budget(&ms, path, size / 2, false, &err), 0, "%s", err.msg);
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, ms, NULL, 32, 1), 0);
	int32_t tok = 1;
	for (int i = 0; i < 3; i++)
		cr_assert_eq(spa_engine_forward(e, &tok, 1, NULL), 0);
	cr_assert_str_eq(spa_context_error(e), "");
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(truncate(path, st.st_size / 2), 0);
	int rc = 0, n = 0;
	while (rc == 0 && n < 4) { /* the ring may hold a token's pieces read before */
		rc = spa_engine_forward(e, &tok, 1, NULL);
		n++;
	}
	cr_assert(rc == -SPA_EFORMAT, "a forward over the shrunk file: %d after %d", rc, n);
	const char *msg = spa_context_error(e);
	cr_assert(strstr(msg, path) && strstr(msg, "shrank"), "the message: %s", msg);
	cr_assert_eq(spa_engine_forward(e, &tok, 1, NULL), rc, "the stream stays ended");
	spa_context_destroy(e);
	spa_model_destroy(ms);
}

Test(engine, a_streaming_model_leaves_a_core_to_the_reads_by_default)
{
	const char *path = tu_tiny_model();
	struct spa_model *full = load(path), *ms = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load_budget(&ms, path, file_data_size(path) / 2, false, &err), 0,
		     "%s", err.msg);
	const int cores = spa_engine_default_threads(full);
	cr_assert_geq(cores, 1);
	cr_assert_eq(spa_engine_default_threads(ms), cores > 1 ? cores - 1 : 1);
	spa_model_destroy(ms);
	/* a byte short of the whole model (small pieces: a small ring): only the embedding is
	 * left on disk, a row a token read in the compute thread: every core computes */
	setenv("SPA_STREAM_PIECE_KIB", "4", 1);
	struct spa_gguf *g = NULL;
	cr_assert_eq(spa_gguf_open(&g, path, NULL), 0);
	uint64_t total = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++)
		total += (g->tensors[i].size + 63) & ~63ull;
	spa_gguf_close(g);
	cr_assert_eq(spa_model_load_budget(&ms, path, total - 1, false, &err), 0, "%s", err.msg);
	cr_assert_null(ms->tok_embd.data, "the embedding is streamed");
	for (uint32_t l = 0; l < ms->hp.n_layers; l++)
		cr_assert_not_null(ms->layers[l].w_down.data, "block %u is resident", l);
	cr_assert_eq(spa_engine_default_threads(ms), cores);
	/* and it decodes as the whole model does */
	const uint32_t V = full->hp.n_vocab;
	float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
	struct spa_context *ef = NULL, *es = NULL;
	cr_assert_eq(spa_context_create(&ef, full, NULL, 8, 1), 0);
	cr_assert_eq(spa_context_create(&es, ms, NULL, 8, 1), 0);
	for (int32_t tok = 3; tok < 6; tok++) {
		cr_assert_eq(spa_engine_forward(ef, &tok, 1, NULL), 0);
		cr_assert_eq(spa_engine_forward(es, &tok, 1, NULL), 0);
		spa_engine_logits(ef, spa_context_final(ef), a);
		spa_engine_logits(es, spa_context_final(es), b);
		cr_assert_eq(memcmp(a, b, sizeof(float) * V), 0, "token %d", tok);
	}
	spa_context_destroy(ef);
	spa_context_destroy(es);
	free(a), free(b);
	spa_model_destroy(ms);
	spa_model_destroy(full);
}

/* The streaming reads' kernel worker runs off the pool's CPUs: with the one compute thread
 * pinned to CPU 0, the process's io_uring worker may not run there. */
Test(engine, the_streaming_worker_keeps_off_the_compute_cores)
{
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		cr_skip_test("one CPU: the worker has nowhere else to go");
	const int cpu0 = 0;
	struct spa_pool *pool = NULL;
	if (spa_pool_create(&pool, 1, &cpu0) < 0)
		cr_skip_test("cannot pin a thread to CPU 0 here");
	const char *path = tu_tiny_model();
	struct spa_model *ms = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load_budget(&ms, path, file_data_size(path) / 2, false, &err), 0,
		     "%s", err.msg);
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create_cpu(&e, ms, pool, 8, 1), 0);
	int32_t tok = 1;
	cr_assert_eq(spa_engine_forward(e, &tok, 1, NULL), 0);
	int workers = 0;
	DIR *d = opendir("/proc/self/task");
	cr_assert_not_null(d);
	for (struct dirent *t; (t = readdir(d));) {
		char p[300], comm[64] = "";
		snprintf(p, sizeof p, "/proc/self/task/%s/comm", t->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		if (!fgets(comm, sizeof comm, f))
			comm[0] = 0;
		fclose(f);
		if (strncmp(comm, "iou-wrk", 7))
			continue;
		cpu_set_t set;
		cr_assert_eq(sched_getaffinity(atoi(t->d_name), sizeof set, &set), 0);
		cr_assert(!CPU_ISSET(0, &set), "io_uring worker %s may run on the compute CPU 0",
			  t->d_name);
		workers++;
	}
	closedir(d);
	if (!workers)
		cr_skip_test("no io_uring worker thread seen (an older kernel names them otherwise)");
	spa_context_destroy(e);
	spa_model_destroy(ms);
	spa_pool_destroy(pool);
}

Test(engine, a_bad_stream_piece_size_is_refused_with_what_to_give)
{
	const char *path = tu_tiny_model();
	const uint64_t size = file_data_size(path);
	const char *bad[] = { "0", "-4", "1k", "", "65537", "99999999999999999999" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		setenv("SPA_STREAM_PIECE_KIB", bad[i], 1);
		struct spa_model *ms = NULL;
		struct spa_errbuf err = {{0}};
		int rc = spa_model_load_budget(&ms, path, size / 2, false, &err);
		if (!*bad[i]) { /* empty: as unset */
			cr_assert_eq(rc, 0, "%s", err.msg);
			spa_model_destroy(ms);
			continue;
		}
		cr_assert_eq(rc, -SPA_EUSAGE, "'%s': %d", bad[i], rc);
		cr_assert_null(ms);
		cr_assert(strstr(err.msg, "SPA_STREAM_PIECE_KIB") && strstr(err.msg, "1 to 65536"),
			  "%s", err.msg);
	}
}

Test(engine, too_small_a_budget_is_refused_with_the_least_that_works)
{
	const char *path = tu_tiny_model();
	struct spa_model *ms = NULL;
	struct spa_errbuf err = {{0}};
	int rc = spa_model_load_budget(&ms, path, 4096, false, &err);
	cr_assert_eq(rc, -SPA_EUSAGE);
	cr_assert_null(ms);
	cr_assert(strstr(err.msg, "--mem-budget"), "%s", err.msg);
	/* the whole model or more: an ordinary load */
	cr_assert_eq(spa_model_load_budget(&ms, path, 1ull << 40, false, &err), 0, "%s", err.msg);
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, ms, NULL, 8, 1), 0);
	struct spa_wstream_stats st;
	spa_wstream_stats(spa_context_model(e), &st);
	cr_assert_eq(st.n_streamed_blocks, 0);
	cr_assert_eq(st.bytes_per_token, 0);
	spa_context_destroy(e);
	spa_model_destroy(ms);
}

/* ---------------------------------------------------------------- architectures */

/* A tiny model of an architecture variant, made at test time. */
struct variant {
	const char *name;
	enum spa_arch arch;
	uint32_t n_rot;          /* 0: every dimension */
	float freq_scale;        /* 0: none */
	float attn_factor;       /* 0: none */
	struct spa_gen_opts o;
};

static const struct variant variants[] = {
	{ "qwen2", SPA_ARCH_QWEN2, 0, 0, 0, { 0 } },
	{ "llama rope_freqs", SPA_ARCH_LLAMA, 0, 0, 0, { .rope_freqs = true } },
	{ "llama linear scaling", SPA_ARCH_LLAMA, 0, 0.25f, 1.25f, { 0 } },
	{ "llama biases, half rotated", SPA_ARCH_LLAMA, 16, 0, 0, { .biases = true } },
	{ "qwen2 all of it", SPA_ARCH_QWEN2, 12, 0.5f, 0, { .rope_freqs = true, .tied = true } },
};
#define N_VARIANTS (sizeof variants / sizeof variants[0])

static void variant_file(const struct variant *v, char *path, size_t size)
{
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	hp.arch = v->arch;
	hp.n_rot = v->n_rot;
	hp.rope_freq_scale = v->freq_scale;
	hp.rope_attn_factor = v->attn_factor;
	snprintf(path, size, "%s/variant.gguf", tu_tmpdir());
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gen_base_opts(&hp, SPA_TYPE_F32, 5, &v->o, path, false, &err), 0,
		     "%s: %s", v->name, err.msg);
}

Test(engine, every_architecture_matches_the_reference)
{
	for (size_t i = 0; i < N_VARIANTS; i++) {
		const struct variant *v = &variants[i];
		char path[256];
		variant_file(v, path, sizeof path);
		struct spa_model *m = load(path);
		cr_assert_eq(m->hp.arch, v->arch, "%s", v->name);
		cr_assert_eq(m->hp.rope_neox, v->arch == SPA_ARCH_QWEN2, "%s", v->name);
		cr_assert_eq(m->hp.n_rot, v->n_rot ? v->n_rot : m->hp.head_dim, "%s", v->name);
		cr_assert_eq(m->tied, v->o.tied, "%s", v->name);
		cr_assert_eq(m->rope.freq_factors != NULL, v->o.rope_freqs, "%s", v->name);
		cr_assert_eq(m->layers[1].bias[0] != NULL,
			     v->arch == SPA_ARCH_QWEN2 || v->o.biases, "%s", v->name);
		cr_assert_eq(m->layers[1].bias[6] != NULL, v->o.biases, "%s", v->name);
		spa_model_destroy(m);
		int32_t toks[30];
		rand_tokens(toks, 30, 1024, 20 + i);
		/* token by token, then batches of 7 */
		double d1 = run_vs_ref(path, toks, 30, 1, NULL, TOL_F32);
		double d2 = run_vs_ref(path, toks, 30, 7, NULL, TOL_F32);
		cr_log_info("%s: worst relative logit diff %g (decode), %g (batches)", v->name, d1,
			    d2);
	}
}

Test(engine, every_architecture_with_lora_and_adapter_matches_the_reference)
{
	struct hookp hk;
	hookp_init(&hk, 128, 64);
	hk.lora = hk.adapter = true;
	for (size_t i = 0; i < N_VARIANTS; i += 4) { /* qwen2, and all of it */
		char path[256];
		variant_file(&variants[i], path, sizeof path);
		int32_t toks[7];
		rand_tokens(toks, 7, 1024, 30 + i);
		run_vs_ref(path, toks, 7, 3, &hk, TOL_F32);
	}
	hookp_fini(&hk);
}

/* The bits of one variant: prefill plans, thread counts, a batched step of several contexts,
 * the budget's stream: each the bits of decoding token by token alone. */
Test(engine, every_architecture_keeps_its_bits_across_plans_batches_and_streaming)
{
	for (size_t i = 0; i < N_VARIANTS; i++) {
		const struct variant *v = &variants[i];
		char path[256];
		variant_file(v, path, sizeof path);
		struct spa_model *m = load(path);
		const uint32_t V = m->hp.n_vocab, RS = (m->hp.n_layers + 1) * m->hp.n_embd;
		int32_t toks[21];
		rand_tokens(toks, 21, V, 40 + i);
		uint32_t ones[21];
		for (int k = 0; k < 21; k++)
			ones[k] = 1;
		const uint32_t mixed[] = { 13, 1, 7 };
		float l1[1024], l2[1024], f1[128], f2[128];
		float *r1 = malloc(RS * sizeof(float)), *r2 = malloc(RS * sizeof(float));
		run_bits(m, NULL, toks, ones, 21, l1, r1, f1);
		struct spa_pool *pool = NULL;
		cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);
		run_bits(m, pool, toks, mixed, 3, l2, r2, f2);
		cr_assert_eq(memcmp(l1, l2, sizeof l1), 0, "%s: logits", v->name);
		cr_assert_eq(memcmp(r1, r2, RS * sizeof(float)), 0, "%s: resid", v->name);

		/* three contexts in one step: 21 tokens of this one, 1 and 5 of others */
		struct spa_backend *be = NULL;
		cr_assert_eq(spa_backend_create(&be, SPA_BACKEND_CPU, pool, NULL), 0);
		struct spa_batch *b = NULL;
		cr_assert_eq(spa_batch_create(&b, m, be, 32, 3), 0);
		struct spa_context *c[3];
		for (int k = 0; k < 3; k++)
			cr_assert_eq(spa_context_create(&c[k], m, be, 40, 21), 0);
		int32_t other[6];
		rand_tokens(other, 6, V, 50 + i);
		const struct spa_seq seqs[3] = { { c[1], other, 1, NULL }, { c[0], toks, 21, NULL },
						 { c[2], other + 1, 5, NULL } };
		cr_assert_eq(spa_engine_step(b, seqs, 3), 0);
		spa_engine_logits(c[0], spa_context_final(c[0]), l2);
		cr_assert_eq(memcmp(l1, l2, sizeof l1), 0, "%s: batched step", v->name);
		for (int k = 0; k < 3; k++)
			spa_context_destroy(c[k]);
		spa_batch_destroy(b);
		spa_backend_destroy(be);

		/* under a memory budget (biases and rope_freqs resident, block rows streamed) */
		struct spa_model *ms = NULL;
		struct spa_errbuf err = {{0}};
		cr_assert_eq(spa_model_load_budget(&ms, path, file_data_size(path) / 2, false,
						   &err), 0, "%s", err.msg);
		cr_assert(ms->stream, "%s: nothing streamed", v->name);
		cr_assert_eq(ms->rope.freq_factors != NULL, v->o.rope_freqs);
		run_bits(ms, pool, toks, mixed, 3, l2, r2, f2);
		cr_assert_eq(memcmp(l1, l2, sizeof l1), 0, "%s: streamed", v->name);
		spa_model_destroy(ms);
		spa_pool_destroy(pool);
		free(r1), free(r2);
		spa_model_destroy(m);
	}
}

Test(engine, every_position_out_of_a_batch_has_the_bits_of_its_own_step)
{
	char path[256];
	variant_file(&variants[4], path, sizeof path);
	struct spa_model *m = load(path);
	const uint32_t H = m->hp.n_embd, L = m->hp.n_layers, V = m->hp.n_vocab;
	int32_t toks[13];
	rand_tokens(toks, 13, V, 60);
	struct spa_context *one = NULL, *all = NULL;
	cr_assert_eq(spa_context_create(&one, m, NULL, 32, 1), 0);
	cr_assert_eq(spa_context_create(&all, m, NULL, 32, 9), 0);
	float *fr = malloc(9 * H * sizeof(float)), *rr = malloc(9 * (L + 1) * H * sizeof(float));
	float *lg = malloc(9 * V * sizeof(float)), *l1 = malloc(V * sizeof(float));
	cr_assert_eq(spa_context_set_outputs(all, NULL, rr), -SPA_EUSAGE);
	cr_assert_eq(spa_context_set_outputs(all, fr, rr), 0);
	/* 4, then 9 positions; each checked against decoding alone */
	for (uint32_t at = 0, n = 4; at < 13; at += n, n = 9) {
		cr_assert_eq(spa_engine_forward(all, toks + at, n, NULL), 0);
		spa_engine_logits_rows(all, fr, n, lg);
		for (uint32_t j = 0; j < n; j++) {
			cr_assert_eq(spa_engine_forward(one, toks + at + j, 1, NULL), 0);
			cr_assert_eq(memcmp(fr + j * H, spa_context_final(one), H * sizeof(float)),
				     0, "final of position %u", at + j);
			cr_assert_eq(memcmp(rr + (size_t)j * (L + 1) * H, spa_context_resid(one),
					    (L + 1) * H * sizeof(float)), 0, "resid of %u", at + j);
			spa_engine_logits(one, spa_context_final(one), l1);
			cr_assert_eq(memcmp(lg + (size_t)j * V, l1, V * sizeof(float)), 0,
				     "logits of position %u", at + j);
		}
		/* the last position's own outputs as ever */
		cr_assert_eq(memcmp(spa_context_final(all), fr + (n - 1) * H, H * sizeof(float)), 0);
	}
	/* off again: the buffers stay as they were */
	cr_assert_eq(spa_context_set_outputs(all, NULL, NULL), 0);
	fr[0] = 1234.5f;
	cr_assert_eq(spa_engine_forward(all, toks, 1, NULL), 0);
	cr_assert_eq(fr[0], 1234.5f);
	free(fr), free(rr), free(lg), free(l1);
	spa_context_destroy(one);
	spa_context_destroy(all);
	spa_model_destroy(m);
}

/* A tiny file with its metadata edited; spa_model_check's verdict and words. */
static void refused(const struct edit *ed, const char *words)
{
	char path[256];
	snprintf(path, sizeof path, "%s/m.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path, ed);
	struct spa_errbuf err = {{0}};
	cr_assert_eq(check_file(path, &err), -SPA_EMODEL, "expected a refusal with '%s'", words);
	cr_assert(strstr(err.msg, words), "'%s' not in: %s", words, err.msg);
}

Test(engine, what_the_architectures_do_not_define_is_refused_by_name)
{
	refused(&(struct edit){ .str_key = "general.architecture", .str_val = "phi3" },
		"architecture is 'phi3'");
	refused(&(struct edit){ .str_key = "llama.rope.scaling.type", .str_val = "yarn" },
		"not 'yarn'");
	refused(&(struct edit){ .str_key = "llama.rope.scaling.type", .str_val = "longrope" },
		"not 'longrope'");
	refused(&(struct edit){ .u32_key = "llama.attention.key_length", .u32_val = 64 },
		"llama.attention.key_length is 64");
	refused(&(struct edit){ .u32_key = "llama.attention.value_length", .u32_val = 16 },
		"llama.attention.value_length is 16");
	refused(&(struct edit){ .u32_key = "llama.rope.dimension_count", .u32_val = 33 },
		"llama.rope.dimension_count is 33");
	refused(&(struct edit){ .u32_key = "llama.rope.dimension_count", .u32_val = 64 },
		"llama.rope.dimension_count is 64");
	/* key_length equal to the heads' width is fine */
	char path[256];
	snprintf(path, sizeof path, "%s/k.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .u32_key = "llama.attention.key_length", .u32_val = 32 });
	struct spa_errbuf err = {{0}};
	cr_assert_eq(check_file(path, &err), 0, "%s", err.msg);
	/* "none" scaling: a factor is ignored, as llama.cpp does */
	snprintf(path, sizeof path, "%s/n.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .str_key = "llama.rope.scaling.type", .str_val = "none" });
	struct spa_gguf *g = NULL;
	struct spa_hparams hp;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0);
	cr_assert_eq(spa_model_check(g, &hp, &err), 0, "%s", err.msg);
	cr_assert_eq(hp.rope_freq_scale, 1.0f);
	spa_gguf_close(g);

	/* qwen2 without a q bias; a rope_freqs of the wrong length */
	struct variant q = variants[0];
	variant_file(&q, path, sizeof path);
	char p2[300];
	snprintf(p2, sizeof p2, "%s.nobias", path);
	rewrite(path, p2, &(struct edit){ .drop_tensor = "blk.2.attn_q.bias" });
	cr_assert_eq(check_file(p2, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "'blk.2.attn_q.bias' is missing"), "%s", err.msg);
	variant_file(&variants[1], path, sizeof path);
	snprintf(p2, sizeof p2, "%s.dims", path);
	rewrite(path, p2, &(struct edit){ .u32_key = "llama.rope.dimension_count", .u32_val = 16 });
	cr_assert_eq(check_file(p2, &err), -SPA_EMODEL);
	cr_assert(strstr(err.msg, "'rope_freqs.weight' has shape [16], expected [8]"), "%s",
		  err.msg);
}

Test(engine, a_llama_file_keeps_its_fingerprint_and_variants_get_their_own)
{
	/* the tiny model's fingerprint as it was before architectures were read (plugins made
	 * for it then still pair with it) */
	struct spa_model *m = load(tu_tiny_model());
	cr_assert_str_eq(m->fingerprint, "49772e7a6ca7fbcf");
	char path[256];
	struct spa_errbuf err = {{0}};
	snprintf(path, sizeof path, "%s/scaled.gguf", tu_tmpdir());
	rewrite(tu_tiny_model(), path,
		&(struct edit){ .str_key = "llama.rope.scaling.type", .str_val = "none" });
	struct spa_model *n = load(path);
	/* "none" computes as llama's default: the same fingerprint */
	cr_assert_str_eq(m->fingerprint, n->fingerprint);
	spa_model_destroy(n);
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	hp.rope_freq_scale = 0.5f;
	snprintf(path, sizeof path, "%s/half.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 1, path, false, &err), 0, "%s", err.msg);
	n = load(path);
	/* the same tensors, another rotary embedding: another model */
	cr_assert_str_neq(m->fingerprint, n->fingerprint);
	spa_model_destroy(n);
	spa_model_destroy(m);
}
