/* The CPU compute backend (include/spa/drv/backend.h): the ops of a step over the CPU kernels
 * (kernels.c and the variant chosen at run time) and a thread pool. Backend addresses are host
 * pointers. Every op gives the bits the kernels give, for any thread count. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "spa/drv/backend.h"
#include "spa/kernels.h"
#include "spa/kv_cache.h"
#include "spa/pool.h"

/* Greedy head: rows per tile (2 KiB of logits per thread and vector, in L1). */
#define HEAD_TILE 512u
#define HUGE_ALIGN (2u << 20)

/* A thread's best row so far in the greedy head, one cache line each. */
struct head_best {
	float v;
	uint32_t i;
	bool any;
	char pad[52];
};

struct cpu_backend {
	struct spa_backend base;
	struct spa_pool *pool;         /* borrowed; NULL: the calling thread alone */
	/* scratch, grown by reserve */
	uint32_t n_ctx, max_rows;
	float *scores;                 /* (n_threads, n_ctx): attention scores, a row a thread */
	float *htile;                  /* (n_threads, max_rows, HEAD_TILE): the head's logits */
	struct head_best *hbest;       /* (n_threads, max_rows) */
	struct spa_matvec_x *px;       /* the input made ready by matvec_prepare / the head */
};

static struct cpu_backend *cpu(struct spa_backend *be)
{
	return (struct cpu_backend *)be;
}

/* ---------------------------------------------------------------- control */

static int cpu_buffer_alloc(struct spa_backend *be, size_t size, bool huge, void **out)
{
	(void)be;
	void *p = NULL;
	const size_t align = huge ? HUGE_ALIGN : 64;
	size = (size + 63) & ~(size_t)63;
	if (size == 0)
		size = 64;
	if (size < 64 || posix_memalign(&p, align, size) != 0)
		return -ENOMEM;
	if (huge) /* advice: 4 KiB pages otherwise */
		(void)madvise(p, size, MADV_HUGEPAGE);
	memset(p, 0, size);
	*out = p;
	return 0;
}

static void cpu_buffer_free(struct spa_backend *be, void *buf)
{
	(void)be;
	free(buf);
}

static void cpu_copy(struct spa_backend *be, void *dst, const void *src, size_t size)
{
	(void)be;
	if (dst != src)
		memcpy(dst, src, size);
}

static int cpu_reserve(struct spa_backend *be, uint32_t n_ctx, uint32_t max_rows)
{
	struct cpu_backend *c = cpu(be);
	const uint64_t nth = (uint64_t)be->n_threads;
	if (n_ctx > c->n_ctx) {
		float *s = NULL;
		if (posix_memalign((void **)&s, 64, nth * n_ctx * sizeof(float)))
			return -ENOMEM;
		free(c->scores);
		c->scores = s;
		c->n_ctx = n_ctx;
	}
	if (max_rows > c->max_rows) {
		float *t = NULL;
		struct head_best *b = NULL;
		if (posix_memalign((void **)&t, 64, nth * max_rows * HEAD_TILE * sizeof(float)))
			return -ENOMEM;
		if (posix_memalign((void **)&b, 64, nth * max_rows * sizeof *b)) {
			free(t);
			return -ENOMEM;
		}
		free(c->htile);
		free(c->hbest);
		c->htile = t;
		c->hbest = b;
		c->max_rows = max_rows;
	}
	return 0;
}

static void cpu_destroy(struct spa_backend *be)
{
	struct cpu_backend *c = cpu(be);
	free(c->scores);
	free(c->htile);
	free(c->hbest);
	free(c->px);
	free(c);
}

/* The CPUs the pool's threads are pinned to (a thread allowed on several pins nothing). */
#define BUSY_MAX 1024
struct busy_job {
	int cpu[BUSY_MAX];
};

static void busy_worker(void *ctx, int ith, int nth)
{
	(void)nth;
	struct busy_job *j = ctx;
	cpu_set_t s;
	j->cpu[ith] = -1;
	if (sched_getaffinity(0, sizeof s, &s) == 0 && CPU_COUNT(&s) == 1)
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &s))
				j->cpu[ith] = c;
}

static unsigned cpu_busy_cpus(struct spa_backend *be, int *cpus, unsigned max)
{
	struct spa_pool *pool = cpu(be)->pool;
	if (!pool || spa_pool_n_threads(pool) > BUSY_MAX)
		return 0;
	struct busy_job j;
	spa_pool_run(pool, busy_worker, &j);
	unsigned n = 0;
	for (int t = 0; t < spa_pool_n_threads(pool) && n < max; t++)
		cpus[n++] = j.cpu[t];
	return n;
}

/* ---------------------------------------------------------------- step ops */

static void cpu_get_rows(struct spa_backend *be, const struct spa_tensor *w, const int32_t *ids,
			 uint32_t n, float *out)
{
	(void)be;
	uint64_t row_size = 0;
	spa_dtype_row_size(w->type, w->cols, &row_size);
	for (uint32_t j = 0; j < n; j++)
		spa_dequant_row(w->type, (const uint8_t *)w->data + (uint64_t)ids[j] * row_size,
				out + (uint64_t)j * w->cols, w->cols);
}

static void cpu_matmul(struct spa_backend *be, const struct spa_tensor *w, const float *x,
		       float *y, uint32_t n)
{
	if (n == 1)
		spa_matvec(cpu(be)->pool, w, x, y);
	else
		spa_matmul(cpu(be)->pool, w, x, y, n);
}

static void cpu_rmsnorm(struct spa_backend *be, float *out, const float *x, const float *weight,
			uint32_t n_rows, uint32_t n, float eps)
{
	(void)be;
	for (uint32_t j = 0; j < n_rows; j++)
		spa_rmsnorm(out + (uint64_t)j * n, x + (uint64_t)j * n, weight, n, eps);
}

static void cpu_rope_table(struct spa_backend *be, float *cs, const uint32_t *pos,
			   uint32_t n_rows, const struct spa_rope_cfg *cfg)
{
	(void)be;
	for (uint32_t j = 0; j < n_rows; j++)
		spa_rope_table_ext(cs + (uint64_t)j * cfg->n_rot, cfg, pos[j]);
}

static void cpu_rope(struct spa_backend *be, float *x, uint32_t n_rows, uint32_t stride,
		     uint32_t n_heads, const struct spa_rope_cfg *cfg, const float *cs)
{
	(void)be;
	for (uint32_t j = 0; j < n_rows; j++)
		spa_rope_apply_ext(x + (uint64_t)j * stride, n_heads, cfg,
				   cs + (uint64_t)j * cfg->n_rot);
}

/* Whether a float of x rounds to an infinity in half (65520 and up: past 65504; or is one). */
static bool beyond_half(const float *x, uint64_t n)
{
	bool over = false;
	for (uint64_t i = 0; i < n; i++)
		over |= fabsf(x[i]) >= 65520.0f;
	return over;
}

static int cpu_kv_store(struct spa_backend *be, struct spa_kv_cache *kv, uint32_t layer,
			uint32_t pos, uint32_t n_tok, const float *k, const float *v)
{
	(void)be;
	const uint32_t hd = kv->head_dim, kv_dim = kv->n_kv_heads * hd;
	for (uint32_t h = 0; h < kv->n_kv_heads; h++)
		for (uint32_t j = 0; j < n_tok; j++) {
			const uint64_t src = (uint64_t)j * kv_dim + (uint64_t)h * hd;
			const uint64_t dst = (uint64_t)(pos + j) * hd;
			spa_fp16_row(spa_kv_cache_head(kv, kv->k, layer, h) + dst, k + src, hd);
			spa_fp16_row(spa_kv_cache_head(kv, kv->v, layer, h) + dst, v + src, hd);
		}
	const uint64_t n = (uint64_t)n_tok * kv_dim;
	return beyond_half(k, n) || beyond_half(v, n) ? -SPA_EUNSUPPORTED : 0;
}

struct attn_job {
	struct cpu_backend *c;
	const struct spa_attn_seq *seqs;
	uint32_t n_seq;
	uint32_t layer;
	uint32_t n_heads;
	uint32_t n_items;  /* (row, head) pairs of every sequence */
};

/* Causal grouped-query attention for every (row, head) pair of the step, each thread a
 * contiguous run of pairs (so the heads that share a KV head, grouped-query attention, read its
 * rows once from memory, then from its caches); each pair is computed by one thread in a fixed
 * order, so the result depends neither on the thread count nor on the other sequences. */
static void attn_worker(void *ctx, int ith, int nth)
{
	const struct attn_job *job = ctx;
	const uint32_t n_heads = job->n_heads;
	float *sc = job->c->scores + (uint64_t)ith * job->c->n_ctx;
	const uint32_t it0 = (uint32_t)((uint64_t)job->n_items * (uint32_t)ith / (uint32_t)nth);
	const uint32_t it1 = (uint32_t)((uint64_t)job->n_items * (uint32_t)(ith + 1) / (uint32_t)nth);
	uint32_t s = 0, first = 0; /* the sequence of pair it, and its first pair */
	for (uint32_t it = it0; it < it1; it++) {
		while (it >= first + job->seqs[s].n_tok * n_heads)
			first += job->seqs[s++].n_tok * n_heads;
		const struct spa_attn_seq *sq = &job->seqs[s];
		const struct spa_kv_cache *kv = sq->cache;
		const uint32_t hd = kv->head_dim, group = n_heads / kv->n_kv_heads;
		const uint32_t j = (it - first) / n_heads, h = (it - first) % n_heads;
		const uint32_t p = sq->pos + j; /* absolute position */
		const float scale = 1.0f / sqrtf((float)hd);
		const uint64_t row = (uint64_t)j * n_heads * hd + (uint64_t)h * hd;
		const float *q = sq->q + row;
		float *out = sq->out + row;
		const uint16_t *kh = spa_kv_cache_head(kv, kv->k, job->layer, h / group);
		const uint16_t *vh = spa_kv_cache_head(kv, kv->v, job->layer, h / group);

		spa_dot_f16_rows(kh, hd, q, hd, sc, p + 1);
		for (uint32_t t = 0; t <= p; t++)
			sc[t] = sc[t] * scale;
		spa_softmax(sc, p + 1);
		spa_weighted_sum_f16(out, sc, vh, hd, p + 1, hd);
	}
}

static void cpu_attention(struct spa_backend *be, const struct spa_attn_seq *seqs,
			  uint32_t n_seq, uint32_t layer, uint32_t n_heads)
{
	struct attn_job job = { .c = cpu(be), .seqs = seqs, .n_seq = n_seq, .layer = layer,
				.n_heads = n_heads };
	for (uint32_t s = 0; s < n_seq; s++)
		job.n_items += seqs[s].n_tok * n_heads;
	spa_pool_run(cpu(be)->pool, attn_worker, &job);
}

static void cpu_swiglu(struct spa_backend *be, float *out, const float *gate, const float *up,
		       uint64_t n)
{
	(void)be;
	/* elementwise: any cut gives the same bits; in pieces that fit its uint32_t count */
	for (uint64_t i = 0; i < n; i += 1u << 30) {
		const uint64_t k = n - i < (1u << 30) ? n - i : (1u << 30);
		spa_swiglu(out + i, gate + i, up + i, (uint32_t)k);
	}
}

static void cpu_add(struct spa_backend *be, float *y, const float *x, uint64_t n)
{
	(void)be;
	for (uint64_t i = 0; i < n; i++)
		y[i] += x[i];
}

static void cpu_matvec_f32(struct spa_backend *be, const float *w, const float *b,
			   const float *x, float *y, uint32_t rows, uint32_t cols)
{
	(void)be;
	spa_matvec_f32(w, b, x, y, rows, cols);
}

static void cpu_matvec_items(struct spa_backend *be, unsigned n, const struct spa_matvec_item *it)
{
	spa_matvec_items(cpu(be)->pool, n, it);
}

static void cpu_matvec_swiglu(struct spa_backend *be, const struct spa_tensor *w_gate,
			      const struct spa_tensor *w_up, const float *x, float *out, float *up)
{
	spa_matvec_swiglu(cpu(be)->pool, w_gate, w_up, x, out, up);
}

static void cpu_matvec_prepare(struct spa_backend *be, const float *x, uint64_t cols,
			       enum spa_dtype type)
{
	spa_matvec_x_prepare(cpu(be)->px, x, cols, type);
}

static void cpu_matvec_prepared(struct spa_backend *be, const struct spa_tensor *w, float *y)
{
	spa_matvec_x(cpu(be)->pool, w, cpu(be)->px, y);
}

/* ---------------------------------------------------------------- greedy head */

struct head_job {
	struct cpu_backend *c;
	const struct spa_tensor *w;
	const float *z;                /* n vectors of w->cols */
	uint32_t n;
	uint64_t row_size;
	atomic_uint next_tile;         /* the first tile no thread has taken */
};

/* Threads take tiles of HEAD_TILE rows in turn from a shared counter (a thread that wakes
 * late or is preempted takes fewer), each running the kernels' own products single-threaded
 * over the tile: each logit is the same dot call as in spa_matvec, whatever the weight type
 * (one vector: its input made ready once in px for every tile; several: spa_matmul on the
 * tile, which reads the tile once for all of them). A thread's tiles ascend, so its strict >
 * keeps its lowest index among equal values. NaNs never win (spa_argmax's rule). */
static void head_worker(void *ctx, int ith, int nth)
{
	struct head_job *j = ctx;
	struct cpu_backend *c = j->c;
	const struct spa_tensor *w = j->w;
	float *tile = c->htile + (uint64_t)ith * c->max_rows * HEAD_TILE;
	struct head_best *best = c->hbest + (uint64_t)ith * c->max_rows;
	(void)nth;
	for (uint32_t v = 0; v < j->n; v++)
		best[v] = (struct head_best){ .any = false };
	for (;;) {
		const uint64_t t0 = (uint64_t)atomic_fetch_add_explicit(&j->next_tile, 1,
									memory_order_relaxed) * HEAD_TILE;
		if (t0 >= w->rows)
			break;
		const uint64_t n = w->rows - t0 < HEAD_TILE ? w->rows - t0 : HEAD_TILE;
		const struct spa_tensor sub = { w->type, w->cols, n,
						(const uint8_t *)w->data + t0 * j->row_size, 0 };
		if (j->n == 1)
			spa_matvec_x(NULL, &sub, c->px, tile);
		else
			spa_matmul(NULL, &sub, j->z, tile, j->n);
		for (uint32_t v = 0; v < j->n; v++) {
			struct head_best *b = &best[v];
			const float *tv = tile + (uint64_t)v * n;
			for (uint64_t k = 0; k < n; k++) {
				const float x = tv[k];
				if (isnan(x))
					continue;
				if (!b->any || x > b->v) { /* strict: the lowest index wins ties */
					b->v = x;
					b->i = (uint32_t)(t0 + k);
					b->any = true;
				}
			}
		}
	}
}

static void cpu_head_argmax(struct spa_backend *be, const struct spa_tensor *w, const float *z,
			    uint32_t n, int32_t *tok)
{
	struct cpu_backend *c = cpu(be);
	struct head_job j = { .c = c, .w = w, .z = z, .n = n };
	if (n == 0)
		return;
	if (n > c->max_rows) { /* more vectors than reserved: one at a time, the same bits */
		for (uint32_t v = 0; v < n; v++)
			cpu_head_argmax(be, w, z + (uint64_t)v * w->cols, 1, tok + v);
		return;
	}
	spa_dtype_row_size(w->type, w->cols, &j.row_size);
	if (n == 1)
		spa_matvec_x_prepare(c->px, z, w->cols, w->type);
	spa_pool_run(c->pool, head_worker, &j);
	/* the highest value; among equal ones the lowest index, whichever thread had it */
	for (uint32_t v = 0; v < n; v++) {
		struct head_best best = { .any = false };
		for (int t = 0; t < be->n_threads; t++) {
			const struct head_best *b = &c->hbest[(uint64_t)t * c->max_rows + v];
			if (b->any && (!best.any || b->v > best.v ||
				       (b->v == best.v && b->i < best.i)))
				best = *b;
		}
		tok[v] = best.any ? (int32_t)best.i : 0; /* all NaN: 0, as spa_argmax */
	}
}

static const struct spa_backend_ops cpu_ops = {
	.name = "cpu",
	.destroy = cpu_destroy,
	.buffer_alloc = cpu_buffer_alloc,
	.buffer_free = cpu_buffer_free,
	.upload = cpu_copy,
	.download = cpu_copy,
	.reserve = cpu_reserve,
	.busy_cpus = cpu_busy_cpus,
	.get_rows = cpu_get_rows,
	.matmul = cpu_matmul,
	.rmsnorm = cpu_rmsnorm,
	.rope_table = cpu_rope_table,
	.rope = cpu_rope,
	.kv_store = cpu_kv_store,
	.attention = cpu_attention,
	.swiglu = cpu_swiglu,
	.add = cpu_add,
	.matvec_f32 = cpu_matvec_f32,
	.matvec_items = cpu_matvec_items,
	.matvec_swiglu = cpu_matvec_swiglu,
	.matvec_prepare = cpu_matvec_prepare,
	.matvec_prepared = cpu_matvec_prepared,
	.head_argmax = cpu_head_argmax,
};

int spa_backend_cpu_create(struct spa_backend **out, struct spa_pool *pool)
{
	*out = NULL;
	struct cpu_backend *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->base = (struct spa_backend){ .ops = &cpu_ops, .kind = SPA_BACKEND_CPU,
					.host_visible = true,
					.n_threads = pool ? spa_pool_n_threads(pool) : 1 };
	if (c->base.n_threads < 1)
		c->base.n_threads = 1;
	c->pool = pool;
	if (posix_memalign((void **)&c->px, 64, sizeof *c->px) ||
	    cpu_reserve(&c->base, 1, 1) < 0) {
		cpu_destroy(&c->base);
		return -ENOMEM;
	}
	*out = &c->base;
	return 0;
}
