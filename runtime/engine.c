/* The CPU decode engine: the Llama forward pass of RUNTIME.md §2, in the manner of llama2.c's
 * run.c. Every buffer is allocated in spa_engine_create; spa_engine_forward only computes.
 *
 * Determinism: the matrix kernels give bit-identical results for any thread count and for a
 * batch versus single vectors; the attention below gives each (position, head) pair to exactly
 * one thread with a fixed summation order, so the whole forward pass is bit-identical across
 * thread counts and across batched prefill versus token-by-token decoding. The split runtime
 * (cloud + edge must equal the local reference) relies on this. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "spa/engine.h"
#include "spa/error.h"
#include "spa/kernels.h"
#include "spa/pool.h"

/* Upper bound on the cache length: keeps every size product far from overflow. */
#define MAX_ENGINE_CTX (1u << 24)

struct spa_engine {
	const struct spa_model *m;
	struct spa_pool *pool;      /* borrowed; NULL = single thread */
	int n_threads;
	uint32_t n_ctx;
	uint32_t max_batch;
	uint32_t pos;               /* positions in the cache */
	uint32_t kv_dim;            /* n_kv_heads * head_dim */
	uint64_t embd_row_size;     /* bytes of one token_embd row */

	/* activations, each for max_batch positions, row-major */
	float *x;       /* (max_batch, H) residual stream */
	float *xb;      /* (max_batch, H) RMSNorm output */
	float *q;       /* (max_batch, H) queries */
	float *att;     /* (max_batch, H) attention output, before attn_output */
	float *proj;    /* (max_batch, H) attn_output / ffn_down output */
	float *delta;   /* (max_batch, H) adapter hook output */
	float *dq;      /* (max_batch, H) LoRA delta of q */
	float *dv;      /* (max_batch, kv_dim) LoRA delta of v */
	float *hb;      /* (max_batch, n_ff) gate, then SwiGLU */
	float *hb2;     /* (max_batch, n_ff) up */
	float *scores;  /* (n_threads, n_ctx) attention scores, one row per thread */

	float *k_cache; /* (L, n_ctx, kv_dim) */
	float *v_cache; /* (L, n_ctx, kv_dim) */

	float *resid;   /* (L + 1, H) e, y_0 .. y_{L-1} of the last position */
	float *f;       /* (H) final RMSNorm of the last position */
};

static float *alloc_f32(uint64_t n)
{
	void *p = NULL;
	uint64_t size = (n * sizeof(float) + 63) & ~(uint64_t)63;
	if (size == 0)
		size = 64;
	if (size > SIZE_MAX || posix_memalign(&p, 64, (size_t)size) != 0)
		return NULL;
	memset(p, 0, (size_t)size);
	return p;
}

void spa_engine_destroy(struct spa_engine *e)
{
	if (!e)
		return;
	float *bufs[] = { e->x, e->xb, e->q, e->att, e->proj, e->delta, e->dq, e->dv, e->hb,
			  e->hb2, e->scores, e->k_cache, e->v_cache, e->resid, e->f };
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
		free(bufs[i]);
	free(e);
}

int spa_engine_create(struct spa_engine **out, const struct spa_model *m, uint32_t n_ctx,
		      uint32_t max_batch, struct spa_pool *pool)
{
	*out = NULL;
	if (!m || n_ctx == 0 || n_ctx > MAX_ENGINE_CTX || max_batch == 0 || max_batch > n_ctx)
		return -SPA_EUSAGE;
	const struct spa_hparams *hp = &m->hp;
	struct spa_engine *e = calloc(1, sizeof *e);
	if (!e)
		return -ENOMEM;
	e->m = m;
	e->pool = pool;
	e->n_threads = pool ? spa_pool_n_threads(pool) : 1;
	if (e->n_threads < 1)
		e->n_threads = 1;
	e->n_ctx = n_ctx;
	e->max_batch = max_batch;
	e->kv_dim = hp->n_kv_heads * hp->head_dim;
	if (spa_dtype_row_size(m->tok_embd.type, hp->n_embd, &e->embd_row_size) < 0) {
		free(e);
		return -SPA_EUSAGE;
	}

	const uint64_t H = hp->n_embd, B = max_batch, KV = e->kv_dim;
	const uint64_t cache = (uint64_t)hp->n_layers * n_ctx * KV;
	if (!(e->x = alloc_f32(B * H)) || !(e->xb = alloc_f32(B * H)) ||
	    !(e->q = alloc_f32(B * H)) || !(e->att = alloc_f32(B * H)) ||
	    !(e->proj = alloc_f32(B * H)) || !(e->delta = alloc_f32(B * H)) ||
	    !(e->dq = alloc_f32(B * H)) || !(e->dv = alloc_f32(B * KV)) ||
	    !(e->hb = alloc_f32(B * hp->n_ff)) || !(e->hb2 = alloc_f32(B * hp->n_ff)) ||
	    !(e->scores = alloc_f32((uint64_t)e->n_threads * n_ctx)) ||
	    !(e->k_cache = alloc_f32(cache)) || !(e->v_cache = alloc_f32(cache)) ||
	    !(e->resid = alloc_f32((hp->n_layers + 1ull) * H)) || !(e->f = alloc_f32(H))) {
		spa_engine_destroy(e);
		return -ENOMEM;
	}
	*out = e;
	return 0;
}

void spa_engine_reset(struct spa_engine *e)
{
	e->pos = 0;
}

uint32_t spa_engine_pos(const struct spa_engine *e)
{
	return e->pos;
}

const float *spa_engine_final(const struct spa_engine *e)
{
	return e->f;
}

const float *spa_engine_resid(const struct spa_engine *e)
{
	return e->resid;
}

/* Y[n] = W X[n]: the single-vector kernel for decode, the batched one for prefill (the kernels
 * guarantee the same bits either way). */
static void mm(struct spa_engine *e, const struct spa_tensor *w, const float *x, float *y,
	       uint32_t n)
{
	if (n == 1)
		spa_matvec(e->pool, w, x, y);
	else
		spa_matmul(e->pool, w, x, y, n);
}

static void add_rows(float *y, const float *d, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		y[i] += d[i];
}

struct attn_job {
	struct spa_engine *e;
	uint32_t layer;
	uint32_t n_tok;
	uint32_t pos;   /* position of the first token of the batch */
};

/* Causal grouped-query attention for every (token, head) pair of the batch. Pair `it` goes to
 * thread it % nth; each pair is computed by one thread in a fixed order, so the result does
 * not depend on nth. */
static void attn_worker(void *ctx, int ith, int nth)
{
	const struct attn_job *job = ctx;
	struct spa_engine *e = job->e;
	const struct spa_hparams *hp = &e->m->hp;
	const uint32_t H = hp->n_embd, hd = hp->head_dim, kv_dim = e->kv_dim;
	const uint32_t group = hp->n_heads / hp->n_kv_heads;
	const float scale = 1.0f / sqrtf((float)hd);
	const float *kc = e->k_cache + (uint64_t)job->layer * e->n_ctx * kv_dim;
	const float *vc = e->v_cache + (uint64_t)job->layer * e->n_ctx * kv_dim;
	float *sc = e->scores + (uint64_t)ith * e->n_ctx;
	const uint32_t n_items = job->n_tok * hp->n_heads;

	for (uint32_t it = (uint32_t)ith; it < n_items; it += (uint32_t)nth) {
		const uint32_t j = it / hp->n_heads, h = it % hp->n_heads;
		const uint32_t p = job->pos + j;            /* absolute position */
		const uint32_t kvh = h / group;
		const float *q = e->q + (uint64_t)j * H + (uint64_t)h * hd;
		float *out = e->att + (uint64_t)j * H + (uint64_t)h * hd;

		for (uint32_t t = 0; t <= p; t++)
			sc[t] = spa_dot_f32(q, kc + (uint64_t)t * kv_dim + (uint64_t)kvh * hd, hd) *
				scale;
		spa_softmax(sc, p + 1);
		memset(out, 0, hd * sizeof(float));
		for (uint32_t t = 0; t <= p; t++) {
			const float *v = vc + (uint64_t)t * kv_dim + (uint64_t)kvh * hd;
			const float a = sc[t];
			for (uint32_t d = 0; d < hd; d++)
				out[d] += a * v[d];
		}
	}
}

static int call_adapter(struct spa_engine *e, const struct spa_engine_hooks *hooks,
			uint32_t layer, uint32_t which, uint32_t n_tok)
{
	if (!hooks || !hooks->adapter)
		return 0;
	const uint64_t n = (uint64_t)n_tok * e->m->hp.n_embd;
	memset(e->delta, 0, n * sizeof(float));
	int rc = hooks->adapter(hooks->ctx, layer, which, n_tok, e->proj, e->delta);
	if (rc != 0)
		return rc < 0 ? rc : -EINVAL;
	add_rows(e->proj, e->delta, n);
	return 0;
}

int spa_engine_forward(struct spa_engine *e, const int32_t *tokens, uint32_t n_tok,
		       const struct spa_engine_hooks *hooks)
{
	const struct spa_model *m = e->m;
	const struct spa_hparams *hp = &m->hp;
	const uint32_t H = hp->n_embd, L = hp->n_layers, F = hp->n_ff, kv_dim = e->kv_dim;
	const uint32_t pos = e->pos;
	int rc;

	if (!tokens || n_tok == 0 || n_tok > e->max_batch || n_tok > e->n_ctx - pos)
		return -SPA_EUSAGE;
	for (uint32_t j = 0; j < n_tok; j++)
		if (tokens[j] < 0 || (uint32_t)tokens[j] >= hp->n_vocab)
			return -SPA_EUSAGE;

	/* e: embedding rows, (n_tok, H) */
	for (uint32_t j = 0; j < n_tok; j++)
		spa_dequant_row(m->tok_embd.type,
				(const uint8_t *)m->tok_embd.data +
					(uint64_t)tokens[j] * e->embd_row_size,
				e->x + (uint64_t)j * H, H);
	const float *x_last = e->x + (uint64_t)(n_tok - 1) * H;
	memcpy(e->resid, x_last, H * sizeof(float));

	for (uint32_t l = 0; l < L; l++) {
		const struct spa_layer *ly = &m->layers[l];
		/* this layer's cache rows for the batch: (n_tok, kv_dim) */
		float *kc = e->k_cache + ((uint64_t)l * e->n_ctx + pos) * kv_dim;
		float *vc = e->v_cache + ((uint64_t)l * e->n_ctx + pos) * kv_dim;

		/* attention */
		for (uint32_t j = 0; j < n_tok; j++)
			spa_rmsnorm(e->xb + (uint64_t)j * H, e->x + (uint64_t)j * H, ly->attn_norm,
				    H, hp->rms_eps);
		mm(e, &ly->wq, e->xb, e->q, n_tok);
		mm(e, &ly->wk, e->xb, kc, n_tok);
		mm(e, &ly->wv, e->xb, vc, n_tok);
		if (hooks && hooks->lora) {
			memset(e->dq, 0, (uint64_t)n_tok * H * sizeof(float));
			memset(e->dv, 0, (uint64_t)n_tok * kv_dim * sizeof(float));
			rc = hooks->lora(hooks->ctx, l, n_tok, e->xb, e->dq, e->dv);
			if (rc != 0)
				return rc < 0 ? rc : -EINVAL;
			add_rows(e->q, e->dq, (uint64_t)n_tok * H);
			add_rows(vc, e->dv, (uint64_t)n_tok * kv_dim);
		}
		for (uint32_t j = 0; j < n_tok; j++) {
			spa_rope(e->q + (uint64_t)j * H, hp->n_heads, hp->head_dim, pos + j,
				 hp->rope_base);
			spa_rope(kc + (uint64_t)j * kv_dim, hp->n_kv_heads, hp->head_dim, pos + j,
				 hp->rope_base);
		}
		struct attn_job job = { .e = e, .layer = l, .n_tok = n_tok, .pos = pos };
		spa_pool_run(e->pool, attn_worker, &job);
		mm(e, &ly->wo, e->att, e->proj, n_tok);
		if ((rc = call_adapter(e, hooks, l, 0, n_tok)) < 0)
			return rc;
		add_rows(e->x, e->proj, (uint64_t)n_tok * H);

		/* SwiGLU feed-forward */
		for (uint32_t j = 0; j < n_tok; j++)
			spa_rmsnorm(e->xb + (uint64_t)j * H, e->x + (uint64_t)j * H, ly->ffn_norm,
				    H, hp->rms_eps);
		mm(e, &ly->w_gate, e->xb, e->hb, n_tok);
		mm(e, &ly->w_up, e->xb, e->hb2, n_tok);
		for (uint32_t j = 0; j < n_tok; j++)
			spa_swiglu(e->hb + (uint64_t)j * F, e->hb + (uint64_t)j * F,
				   e->hb2 + (uint64_t)j * F, F);
		mm(e, &ly->w_down, e->hb, e->proj, n_tok);
		if ((rc = call_adapter(e, hooks, l, 1, n_tok)) < 0)
			return rc;
		add_rows(e->x, e->proj, (uint64_t)n_tok * H);

		memcpy(e->resid + (uint64_t)(l + 1) * H, x_last, H * sizeof(float));
	}
	spa_rmsnorm(e->f, x_last, m->output_norm, H, hp->rms_eps);
	e->pos = pos + n_tok;
	return 0;
}

void spa_engine_logits(struct spa_engine *e, const float *z, float *logits)
{
	spa_matvec(e->pool, &e->m->output, z, logits);
}
