/* bench/decode: decode and prefill speed of the engine against what the machine allows.
 *
 * For each shape x weight type x thread count, in one run and on one thread pool:
 *   - the machine's read bandwidth: a parallel streaming read-and-sum over a buffer far
 *     bigger than the caches, with the same threads (the roofline of a memory-bound decode),
 *     one pass right after every decode step: the ratio is the median over the steps of
 *     (bytes / step time) / (the bandwidth of the pass after it), so that a busy moment of a
 *     shared machine slows both sides of a ratio alike;
 *   - the FMA peak: independent 8-lane FMA chains on every thread (the roofline of prefill);
 *   - the format's own compute ceiling: its matvec on weights that stay in L2 (kern GB/s); a
 *     format whose ceiling is below the machine's bandwidth is compute-bound here, and %roof
 *     compares the decode with the lower of the two;
 *   - decode tokens/s (greedy, median and p99 of the step), the effective bandwidth = weight
 *     bytes read per token x tokens/s, its ratio to the read bandwidth, and GFLOP/s;
 *   - the fusions of RUNTIME.md §3 side by side on the same tokens: taps computed inside
 *     the forward (each in the next block's q/k/v pool job; what they add to the forward,
 *     and the tail left after the last block: its tap and the gate) vs spa_plugin_side_taps
 *     after the forward, the greedy head vs V logits +
 *     argmax, the edge's fused side chain vs spa_plugin_side_chain;
 *   - prefill tokens/s for prompts of 16, 64 and 256 tokens (one batched forward);
 *   - with --batch: tokens/s of batched steps of n sequences at different positions (one
 *     spa_engine_step and the batched greedy head a step), all n counted;
 *   - with --mem-budget: tokens/s with 100 %, 50 % and 25 % of the model's weight bytes in
 *     memory (the rest streamed per token with io_uring), each budget's steps (at least 96
 *     of each, whatever -n) taken in turns with the whole model's, and the share of the I/O
 *     hidden behind compute: 1 - (median step added by streaming) / (the reads of a token
 *     alone, nothing computing); beside it 1 - wait / io, the share of the reads' time the
 *     compute thread did not wait for; for a format packed at load (Q4_0) the first measure
 *     again with both sides' rows as the file lays them out (SPA_PACK=off), since streamed
 *     rows are always computed that way; and before and after each budget's steps, a cache
 *     line's round trip between the compute CPU and the reader's (a VM's host may move its
 *     vCPUs apart, onto different last-level caches, and streaming then hides less).
 * Models are made once with spa_gen_base into a cache folder (--cache). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../runtime/cli/cli.h"
#include "benchutil.h"
#include "decode.h"
#include "spa/spa.h"

static void usage(void)
{
	printf("usage: decode [options]\n"
	       "Decode/prefill speed of the engine against the machine's read bandwidth and FMA\n"
	       "peak, fused vs unfused kernels, batched steps, and streaming under a memory budget.\n\n"
	       "  --shape A,B       model shapes (tiny, default, 1b, llama-7b; default: default)\n"
	       "  --type A,B        weight types (f32, f16, bf16, q8_0, ...; default: f16)\n"
	       "  --model F,G       measure these GGUF files instead (any llama model; its file\n"
	       "                    name in the shape column, its weight type in the type column)\n"
	       "  -t, --threads A,B thread counts (default: one per core)\n"
	       "  -n, --tokens N    decode steps per measurement (default 32)\n"
	       "  --prefill A,B     prompt lengths for prefill (default 16,64,256)\n"
	       "  --batch A,B       also batched steps of A, B sequences (e.g. 1,4,8,16): tokens/s\n"
	       "                    of all of them together\n"
	       "  --backend B       compute backend: cpu, cuda or auto (default auto)\n"
	       "  --mem-budget      also run at 100 %%, 50 %% and 25 %% of the model in memory\n"
	       "  --cache DIR       where generated models are kept (default $SPA_CACHE_DIR/decode\n"
	       "                    or ~/.cache/spa/decode)\n"
	       "  --bw-mib N        buffer of the read-bandwidth test (default 1024 MiB)\n"
	       "  --json FILE       write the results as JSON\n");
}

static int split_list(char *s, char **out, int max)
{
	int n = 0;
	for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) {
		if (n == max)
			cli_die(2, "too many list items (at most %d)", max);
		out[n++] = tok;
	}
	return n;
}

static enum spa_dtype parse_type(const char *s)
{
	for (int t = 0; t < SPA_TYPE_COUNT; t++) {
		const char *n = spa_dtype_name((enum spa_dtype)t);
		if (n && !strcasecmp(n, s))
			return (enum spa_dtype)t;
	}
	cli_die(2, "--type %s: not a GGUF type name (f32, f16, bf16, q8_0, q4_0, ...)", s);
}

/* ---------------------------------------------------------------- machine rooflines */

struct bw_job {
	const float *buf;
	uint64_t n;       /* floats */
	float sums[64];   /* one per thread, so the reads cannot be optimised away */
};

#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
#endif
static void bw_worker(void *ctx, int ith, int nth)
{
	struct bw_job *j = ctx;
	uint64_t per = (j->n / (uint64_t)nth) & ~63ull;
	const float *p = j->buf + per * (uint64_t)ith;
#if defined(__x86_64__)
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	for (uint64_t i = 0; i < per; i += 32) {
		a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
		a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
		a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
		a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
	}
	float t[8];
	_mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	float s = 0;
	for (int k = 0; k < 8; k++)
		s += t[k];
#else
	float s = 0;
	for (uint64_t i = 0; i < per; i++)
		s += p[i];
#endif
	j->sums[ith & 63] = s;
}

/* GB/s of a parallel read over size bytes (median of 5 passes after one warm pass). */
static double machine_read_gbs(struct spa_pool *pool, float *buf, uint64_t size)
{
	struct bw_job j = { .buf = buf, .n = size / sizeof(float) };
	spa_pool_run(pool, bw_worker, &j);
	double v[5];
	for (int r = 0; r < 5; r++) {
		uint64_t t0 = bu_now_ns();
		spa_pool_run(pool, bw_worker, &j);
		v[r] = (double)size / (double)(bu_now_ns() - t0);
	}
	return bu_percentile(v, 5, 50);
}

struct fma_job {
	uint64_t iters;
	float out[64];
};

#define FMA_CHAINS 10
#if defined(__x86_64__)
__attribute__((target("avx2,fma")))
#endif
static void fma_worker(void *ctx, int ith, int nth)
{
	(void)nth;
	struct fma_job *j = ctx;
#if defined(__x86_64__)
	__m256 a[FMA_CHAINS];
	const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
	for (int k = 0; k < FMA_CHAINS; k++)
		a[k] = _mm256_set1_ps((float)(k + ith));
	for (uint64_t i = 0; i < j->iters; i++)
		for (int k = 0; k < FMA_CHAINS; k++)
			a[k] = _mm256_fmadd_ps(a[k], m, c);
	__m256 s = a[0];
	for (int k = 1; k < FMA_CHAINS; k++)
		s = _mm256_add_ps(s, a[k]);
	float t[8];
	_mm256_storeu_ps(t, s);
	j->out[ith & 63] = t[0];
#else
	float a = (float)ith;
	for (uint64_t i = 0; i < j->iters * FMA_CHAINS * 8; i++)
		a = a * 0.999999f + 1e-7f;
	j->out[ith & 63] = a;
#endif
}

/* GFLOP/s of the FMA loop on every thread (best of 5: a peak). */
static double machine_fma_gflops(struct spa_pool *pool, int nth)
{
	struct fma_job j = { .iters = 20u << 20 };
	double best = 0;
	for (int r = 0; r < 5; r++) {
		uint64_t t0 = bu_now_ns();
		spa_pool_run(pool, fma_worker, &j);
		double g = 2.0 * 8 * FMA_CHAINS * (double)j.iters * nth / (double)(bu_now_ns() - t0);
		best = g > best ? g : best;
	}
	return best;
}

int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The format's own compute ceiling: the decode's largest matrix (block 0's FFN gate) cut to
 * the rows that fit in half of each thread's L2, multiplied by a vector again and again, so
 * that no byte comes from memory: GB/s of weights through the kernels with these threads.
 * Where it is below the machine's read bandwidth the format is compute-bound here. */
static double kernel_cache_gbs(struct spa_pool *pool, const struct spa_model *m, int nth,
			       bool file_layout)
{
	const struct spa_tensor *g = &m->layers[0].w_gate;
	uint64_t rs = 0;
	if (!g->data || spa_dtype_row_size(g->type, g->cols, &rs) < 0 || rs == 0)
		return NAN;
	uint64_t rows = ((256u << 10) * (uint64_t)nth) / rs;
	rows = rows < 8 ? 8 : rows > g->rows ? g->rows : rows;
	if (g->packed) /* whole groups */
		rows -= rows % SPA_PACK_ROWS;
	struct spa_tensor t = *g;
	t.rows = rows;
	void *file_rows = NULL;
	if (file_layout) { /* the same rows as the file holds them, read back from it */
		const struct spa_gguf_tensor *gt = spa_gguf_find_tensor(m->gguf,
									 "blk.0.ffn_gate.weight");
		struct spa_errbuf err = {{0}};
		if (!g->packed || !gt || !(file_rows = malloc(rows * rs)) ||
		    spa_gguf_pread(m->gguf, gt->offset, file_rows, rows * rs, &err) < 0) {
			free(file_rows);
			return NAN;
		}
		t.data = file_rows;
		t.packed = 0;
	}
	float *x = calloc(g->cols, sizeof(float)), *y = calloc(rows, sizeof(float));
	for (uint64_t i = 0; i < g->cols; i++)
		x[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
	uint64_t v[15];
	for (int r = 0; r < 15; r++) {
		uint64_t t0 = bu_now_ns();
		for (int k = 0; k < 50; k++)
			spa_matvec(pool, &t, x, y);
		v[r] = bu_now_ns() - t0;
	}
	free(x);
	free(y);
	free(file_rows);
	qsort(v, 15, sizeof v[0], cmp_u64);
	return (double)rs * (double)rows * 50 / (double)v[7];
}

/* ---------------------------------------------------------------- models */

static int model_path(const struct opts *o, const char *shape, enum spa_dtype type, char *path,
		      size_t size)
{
	struct spa_hparams hp;
	if (spa_gen_shape(shape, &hp) < 0)
		cli_die(2, "--shape %s: unknown (tiny, default, 1b, llama-7b)", shape);
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", o->cache);
	for (char *p = dir + 1; *p; p++) /* mkdir -p */
		if (*p == '/') {
			*p = 0;
			mkdir(dir, 0755);
			*p = '/';
		}
	mkdir(dir, 0755);
	snprintf(path, size, "%s/%s-%s.gguf", o->cache, shape, spa_dtype_name(type));
	if (access(path, R_OK) == 0)
		return 0;
	struct spa_errbuf err = {{0}};
	fprintf(stderr, "decode: making %s (once)\n", path);
	int rc = spa_gen_base(&hp, type, 1, path, false, &err);
	if (rc < 0) {
		unlink(path);
		fprintf(stderr, "decode: cannot make a %s model of type %s: %s\n", shape,
			spa_dtype_name(type), err.msg);
	}
	return rc;
}

/* Weight bytes one decode step reads: every block matrix, the norms, the LM head, one
 * embedding row. */
static uint64_t bytes_per_token(const struct spa_model *m)
{
	const struct spa_hparams *hp = &m->hp;
	uint64_t row, n = 0;
	for (uint32_t l = 0; l < hp->n_layers; l++) {
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			const struct spa_tensor *t = spa_layer_mat(&m->layers[l], k);
			spa_dtype_row_size(t->type, t->cols, &row);
			n += row * t->rows;
		}
		n += 2ull * hp->n_embd * sizeof(float);
	}
	spa_dtype_row_size(m->output.type, m->output.cols, &row);
	n += row * m->output.rows + hp->n_embd * sizeof(float);
	spa_dtype_row_size(m->tok_embd.type, m->tok_embd.cols, &row);
	return n + row;
}

static uint64_t flops_per_token(const struct spa_model *m)
{
	const struct spa_hparams *hp = &m->hp;
	uint64_t kv = (uint64_t)hp->n_kv_heads * hp->head_dim;
	uint64_t per_blk = 2ull * hp->n_embd * (2ull * hp->n_embd + 2 * kv + 3ull * hp->n_ff);
	return per_blk * hp->n_layers + 2ull * hp->n_embd * hp->n_vocab;
}

/* One pass of the read-bandwidth test between decode steps (bw_gbs non-NULL): the machine's
 * bandwidth is then measured at the same moments as the decode, so that the noise of a
 * shared machine touches both sides of each ratio alike. */
struct bw_between {
	struct spa_pool *pool;
	float *buf;
	uint64_t size;
	double *gbs; /* [n] */
};

static void bw_worker(void *ctx, int ith, int nth);

/* Reset e and run the 16-token prompt every measured decode starts from. */
int stepper_start(struct stepper *s, struct spa_context *e, uint32_t V)
{
	int32_t prompt[16];
	for (int i = 0; i < 16; i++)
		prompt[i] = (int32_t)((i * 7919u + 13) % V);
	*s = (struct stepper){ .e = e, .tok = prompt[15] };
	spa_context_reset(e);
	return spa_engine_forward(e, prompt, 16, NULL);
}

int stepper_step(struct stepper *s)
{
	uint64_t t0 = bu_now_ns();
	int rc = spa_engine_forward(s->e, &s->tok, 1, NULL);
	if (rc == 0)
		spa_engine_head_argmax(s->e, NULL, &s->tok);
	s->ns = bu_now_ns() - t0;
	return rc;
}

/* Greedy decode of n steps after a 16-token prompt; per-step ns into steps[n] (and, with bw,
 * one read-bandwidth pass after each step). The head is the fused one. With side set, the
 * taps and the gate are fused into every forward. */
static int decode_steps_bw(struct spa_context *e, uint32_t V, uint32_t n, uint64_t *steps,
			   const struct bw_between *bw)
{
	struct stepper st;
	int rc = stepper_start(&st, e, V);
	for (uint32_t i = 0; rc == 0 && i < n; i++) {
		if ((rc = stepper_step(&st)) < 0)
			break;
		steps[i] = st.ns;
		if (bw) {
			struct bw_job j = { .buf = bw->buf, .n = bw->size / sizeof(float) };
			uint64_t b0 = bu_now_ns();
			spa_pool_run(bw->pool, bw_worker, &j);
			bw->gbs[i] = (double)bw->size / (double)(bu_now_ns() - b0);
		}
	}
	return rc;
}

double median_ns(uint64_t *v, uint32_t n, double pct)
{
	qsort(v, n, sizeof *v, cmp_u64);
	uint32_t k = (uint32_t)ceil(pct / 100.0 * n);
	return (double)v[k ? k - 1 : 0];
}

/* The side plugin of the fusions' rows, made once per base model (by its fingerprint). */
static int make_plugin(const struct opts *o, const struct spa_model *m, struct spa_plugin **p)
{
	char path[512];
	snprintf(path, sizeof path, "%s/side-%s.gguf", o->cache, m->fingerprint);
	struct spa_errbuf err = {{0}};
	if (access(path, R_OK) != 0) {
		struct spa_plugin_gen_params gp = { .kind = SPA_PLUGIN_SIDE, .rank = SIDE_RANK,
						    .seed = 2, .side_fraction = 0.5f,
						    .calib_tokens = 8 };
		if (spa_plugin_generate(m, &gp, path, &err) < 0) {
			fprintf(stderr, "decode: side plugin: %s\n", err.msg);
			return -1;
		}
	}
	if (spa_plugin_load(p, path, &err) < 0) {
		fprintf(stderr, "decode: %s\n", err.msg);
		return -1;
	}
	return 0;
}

/* Batched steps of n sequences (one context each, at different positions after prompts of
 * 16 + i tokens): tokens/s of all n together, from the median step (one spa_engine_step and
 * the batched greedy head), over o->n_tok steps. */
static void measure_batch(const struct opts *o, const struct spa_model *m, struct spa_backend *be,
			  uint32_t n, double *tok_s, double *p50_ms)
{
	const uint32_t V = m->hp.n_vocab, n_ctx = 16 + n + o->n_tok + 8;
	struct spa_context **c = calloc(n, sizeof *c);
	struct spa_seq *seqs = calloc(n, sizeof *seqs);
	int32_t *tok = calloc(n, sizeof *tok), prompt[16 + 64];
	uint64_t *v = calloc(o->n_tok, sizeof *v);
	struct spa_batch *b = NULL;
	*tok_s = *p50_ms = NAN;
	if (!c || !seqs || !tok || !v || spa_batch_create(&b, m, be, n, n) < 0)
		cli_die(1, "out of memory for a batch of %u", n);
	for (uint32_t i = 0; i < n; i++) {
		const uint32_t np = 16 + i % 64;
		for (uint32_t k = 0; k < np; k++)
			prompt[k] = (int32_t)((k * 7919u + 13 + i * 31u) % V);
		if (spa_context_create(&c[i], m, be, n_ctx, np) < 0 ||
		    spa_engine_forward(c[i], prompt, np, NULL) < 0)
			cli_die(1, "cannot start sequence %u of a batch of %u", i, n);
	}
	spa_batch_head_argmax(b, c, NULL, n, tok);
	int rc = 0;
	for (uint32_t s = 0; rc == 0 && s < o->n_tok; s++) {
		for (uint32_t i = 0; i < n; i++)
			seqs[i] = (struct spa_seq){ c[i], &tok[i], 1, NULL };
		uint64_t t0 = bu_now_ns();
		if ((rc = spa_engine_step(b, seqs, n)) == 0)
			spa_batch_head_argmax(b, c, NULL, n, tok);
		v[s] = bu_now_ns() - t0;
	}
	if (rc == 0) {
		*p50_ms = median_ns(v, o->n_tok, 50) / 1e6;
		*tok_s = n * 1e3 / *p50_ms;
	} else {
		fprintf(stderr, "decode: batch of %u: the step failed (%d)\n", n, rc);
	}
	for (uint32_t i = 0; i < n; i++)
		spa_context_destroy(c[i]);
	spa_batch_destroy(b);
	free(c), free(seqs), free(tok), free(v);
}

/* One row: the model at path (made for shape x type, or a --model file named label). */
static void measure(const struct opts *o, const char *label, const char *path, int nth,
		    float *bwbuf, struct row *w)
{
	memset(w, 0, sizeof *w);
	for (int b = 0; b < 3; b++)
		w->budget_hidden_file[b] = w->budget_xcore_ns[b][0] = w->budget_xcore_ns[b][1] = NAN;
	w->shape = label;
	struct spa_errbuf err = {{0}};
	struct spa_model *m = NULL;
	struct spa_pool *pool = NULL;
	struct spa_context *e = NULL;
	struct spa_plugin *p = NULL;
	uint64_t *steps = calloc(o->n_tok, sizeof *steps);
	if (spa_model_load(&m, path, false, &err) < 0)
		cli_die(1, "%s", err.msg);
	w->type = m->wtype;
	if (spa_pool_create(&pool, nth, NULL) < 0)
		cli_die(1, "cannot start %d threads", nth);
	struct spa_backend *be = cli_backend(o->backend, pool);
	w->backend = spa_backend_name(be);
	w->threads = spa_pool_n_threads(pool);
	(void)machine_read_gbs(pool, bwbuf, o->bw_bytes); /* warm: the buffer's pages faulted in */
	w->peak_gflops = machine_fma_gflops(pool, w->threads);
	w->kernel_gbs = kernel_cache_gbs(pool, m, w->threads, false);
	w->kernel_file_gbs = kernel_cache_gbs(pool, m, w->threads, true);

	const uint32_t V = m->hp.n_vocab, H = m->hp.n_embd, L = m->hp.n_layers;
	uint32_t max_p = 16;
	for (int i = 0; i < o->n_prefill; i++)
		max_p = o->prefill[i] > max_p ? o->prefill[i] : max_p;
	if (spa_context_create(&e, m, be, max_p + o->n_tok + 8, max_p) < 0)
		cli_die(1, "cannot create a context of %u positions", max_p + o->n_tok + 8);

	/* decode, fused head, no plugin: the base model's speed */
	double *bw_gbs = calloc(o->n_tok, sizeof *bw_gbs), *ratios = calloc(o->n_tok, sizeof *ratios);
	const struct bw_between bwb = { pool, bwbuf, o->bw_bytes, bw_gbs };
	if (!bw_gbs || !ratios || decode_steps_bw(e, V, o->n_tok, steps, &bwb) < 0)
		cli_die(1, "decode failed");
	/* the ratio of each step to the bandwidth pass right after it, then their median */
	for (uint32_t i = 0; i < o->n_tok; i++)
		ratios[i] = (double)bytes_per_token(m) / (double)steps[i] / bw_gbs[i];
	w->ratio = bu_percentile(ratios, o->n_tok, 50);
	w->machine_gbs = bu_percentile(bw_gbs, o->n_tok, 50);
	free(bw_gbs);
	free(ratios);
	w->p50_ms = median_ns(steps, o->n_tok, 50) / 1e6;
	w->p99_ms = median_ns(steps, o->n_tok, 99) / 1e6;
	w->tok_s = 1e3 / w->p50_ms;
	w->eff_gbs = (double)bytes_per_token(m) * w->tok_s / 1e9;
	w->gflops = (double)flops_per_token(m) * w->tok_s / 1e9;
	w->roof = w->eff_gbs / (w->kernel_gbs < w->machine_gbs ? w->kernel_gbs : w->machine_gbs);

	/* fusions, side by side on the same states */
	if (make_plugin(o, m, &p) == 0) {
		float *taps = calloc((size_t)(L + 1) * p->rank, sizeof(float));
		float *logits = malloc(sizeof(float) * V);
		uint64_t *tf = calloc(o->n_tok, 8), *tu = calloc(o->n_tok, 8);
		uint64_t *tp = calloc(o->n_tok, 8);
		uint64_t *hf = calloc(o->n_tok, 8), *hu = calloc(o->n_tok, 8);
		int32_t tok = 1;
		spa_context_reset(e);
		for (uint32_t i = 0; i < o->n_tok; i++) {
			/* taps: forward with them fused minus forward without, interleaved;
			 * unfused: the extra pass after the forward */
			spa_context_set_side(e, p, taps);
			uint64_t t0 = bu_now_ns();
			spa_engine_forward(e, &tok, 1, NULL);
			uint64_t t1 = bu_now_ns();
			spa_context_set_side(e, NULL, NULL);
			spa_engine_forward(e, &tok, 1, NULL);
			uint64_t t2 = bu_now_ns();
			spa_plugin_side_taps(p, spa_context_resid(e), taps);
			spa_plugin_gate(p, spa_context_final(e), NULL);
			uint64_t t3 = bu_now_ns();
			tf[i] = t1 - t0;
			tp[i] = t2 - t1;
			tu[i] = t3 - t2;
			/* the one run second finds part of the head in the last-level cache: take
			 * turns */
			int32_t a = -1, b = -2;
			uint64_t ta = 0, tb = 0;
			for (int k = 0; k < 2; k++) {
				t0 = bu_now_ns();
				if ((k ^ (int)i) & 1) {
					spa_engine_logits(e, spa_context_final(e), logits);
					b = (int32_t)spa_argmax(logits, V);
					tb = bu_now_ns() - t0;
				} else {
					spa_engine_head_argmax(e, NULL, &a);
					ta = bu_now_ns() - t0;
				}
			}
			if (a != b)
				cli_die(1, "fused head gave %d, the logits' argmax %d", a, b);
			hf[i] = ta;
			hu[i] = tb;
			tok = a;
		}
		/* what the taps add to a forward (medians of the forwards with and without,
		 * interleaved: may come out slightly negative in noise), and the part left after
		 * the last block: its own tap and the gate (the unfused path: all L + 1 taps and
		 * the gate, after the forward) */
		w->taps_fused_us = (median_ns(tf, o->n_tok, 50) - median_ns(tp, o->n_tok, 50)) / 1e3;
		{
			const uint32_t r = p->rank;
			uint64_t c0 = bu_now_ns();
			for (int k = 0; k < 200; k++) {
				spa_matvec_f32(p->tap_w + (size_t)(L - 1) * r * H,
					       p->tap_b + (size_t)(L - 1) * r, spa_context_resid(e) + (size_t)L * H,
					       taps + (size_t)L * r, r, H);
				spa_plugin_gate(p, spa_context_final(e), NULL);
			}
			w->taps_tail_us = (double)(bu_now_ns() - c0) / 200 / 1e3;
		}
		w->taps_unfused_us = median_ns(tu, o->n_tok, 50) / 1e3;
		w->head_fused_us = median_ns(hf, o->n_tok, 50) / 1e3;
		w->head_unfused_us = median_ns(hu, o->n_tok, 50) / 1e3;
		/* the edge's chain on the last taps */
		float *scr = malloc(sizeof(float) * (spa_plugin_side_chain_fused_scratch(p) + H + p->rank));
		float rs[SIDE_RANK * 4];
		uint64_t c0 = bu_now_ns();
		for (int i = 0; i < 200; i++)
			spa_plugin_side_chain_fused(p, taps, rs, scr);
		uint64_t c1 = bu_now_ns();
		for (int i = 0; i < 200; i++)
			spa_plugin_side_chain(p, taps, rs, scr);
		uint64_t c2 = bu_now_ns();
		w->chain_fused_us = (double)(c1 - c0) / 200 / 1e3;
		w->chain_unfused_us = (double)(c2 - c1) / 200 / 1e3;
		free(scr), free(taps), free(logits), free(tf), free(tu), free(hf), free(hu), free(tp);
		spa_context_set_side(e, NULL, NULL);
	}

	/* prefill: one batched forward of the whole prompt, median of 3 */
	int32_t *prompt = malloc(sizeof(int32_t) * max_p);
	for (uint32_t i = 0; i < max_p; i++)
		prompt[i] = (int32_t)((i * 104729u + 7) % V);
	for (int k = 0; k < o->n_prefill; k++) {
		uint64_t v[3];
		for (int r = 0; r < 3; r++) {
			spa_context_reset(e);
			uint64_t t0 = bu_now_ns();
			spa_engine_forward(e, prompt, o->prefill[k], NULL);
			v[r] = bu_now_ns() - t0;
		}
		w->prefill_tok_s[k] = o->prefill[k] / (median_ns(v, 3, 50) / 1e9);
	}
	free(prompt);
	spa_context_destroy(e);
	for (int k = 0; k < o->n_batch; k++)
		measure_batch(o, m, be, o->batch[k], &w->batch_tok_s[k], &w->batch_p50_ms[k]);

	/* Streaming under a budget: 50 % and 25 % of the weight bytes, each measured in turns
	 * with the whole model (one step of each, the order swapped every step), so that the
	 * host's noise touches both sides of the "added" time alike. A format packed at load
	 * (Q4_0) is measured again with both sides as the file lays them out (SPA_PACK=off):
	 * streamed rows are always computed that way, so against the packed whole model the
	 * "added" time holds a slower kernel beside the reads. */
	if (o->mem_budget) {
		budget_pairs(o, path, m, pool, be, false, w);
		if (model_packed(m)) {
			const char *was = getenv("SPA_PACK");
			char keep[16] = "";
			if (was)
				snprintf(keep, sizeof keep, "%s", was);
			setenv("SPA_PACK", "off", 1);
			struct spa_model *mf = NULL;
			if (spa_model_load(&mf, path, false, &err) < 0)
				cli_die(1, "%s", err.msg);
			budget_pairs(o, path, mf, pool, be, true, w);
			spa_model_destroy(mf);
			if (was)
				setenv("SPA_PACK", keep, 1);
			else
				unsetenv("SPA_PACK");
		}
	}
	spa_plugin_destroy(p);
	spa_backend_destroy(be);
	spa_pool_destroy(pool);
	spa_model_destroy(m);
	free(steps);
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	/* Models live with spa-lat's: $SPA_CACHE_DIR, else ~/.cache/spa/decode. */
	static char cache[400];
	const char *env = getenv("SPA_CACHE_DIR"), *home = getenv("HOME");
	if (env && *env)
		snprintf(cache, sizeof cache, "%s/decode", env);
	else
		snprintf(cache, sizeof cache, "%s/.cache/spa/decode", home ? home : "/tmp");
	struct opts o = { .n_tok = 32, .cache = cache, .bw_bytes = 1024ull << 20 };
	char *list[MAX_LIST];
	/* each list option's copy, which the parsed lists point into (a repeated option
	 * replaces it) */
	char *owned[6] = { NULL };
#define LIST_OF(k, v) (free(owned[k]), owned[k] = strdup(v))
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--shape")) {
			o.n_shapes = split_list(LIST_OF(0, cli_value(argc, argv, &i)), list, MAX_LIST);
			for (int k = 0; k < o.n_shapes; k++)
				o.shapes[k] = list[k];
		} else if (!strcmp(a, "--type")) {
			o.n_types = split_list(LIST_OF(1, cli_value(argc, argv, &i)), list, MAX_LIST);
			for (int k = 0; k < o.n_types; k++)
				o.types[k] = parse_type(list[k]);
		} else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
			o.n_threads = split_list(LIST_OF(2, cli_value(argc, argv, &i)), list, MAX_LIST);
			for (int k = 0; k < o.n_threads; k++)
				o.threads[k] = (int)cli_int(a, list[k], 1, 1024);
		} else if (!strcmp(a, "-n") || !strcmp(a, "--tokens")) {
			o.n_tok = (uint32_t)cli_int(a, cli_value(argc, argv, &i), 4, 4096);
		} else if (!strcmp(a, "--prefill")) {
			o.n_prefill = split_list(LIST_OF(3, cli_value(argc, argv, &i)), list, MAX_LIST);
			for (int k = 0; k < o.n_prefill; k++)
				o.prefill[k] = (uint32_t)cli_int(a, list[k], 1, 4096);
		} else if (!strcmp(a, "--model")) {
			o.n_models = split_list(LIST_OF(4, cli_value(argc, argv, &i)), list, MAX_LIST);
			for (int k = 0; k < o.n_models; k++)
				o.models[k] = list[k];
		} else if (!strcmp(a, "--batch")) {
			o.n_batch = split_list(LIST_OF(5, cli_value(argc, argv, &i)), list, MAX_LIST);
			for (int k = 0; k < o.n_batch; k++)
				o.batch[k] = (uint32_t)cli_int(a, list[k], 1, 256);
		} else if (!strcmp(a, "--backend")) {
			o.backend = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--mem-budget")) {
			o.mem_budget = true;
		} else if (!strcmp(a, "--cache")) {
			o.cache = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--bw-mib")) {
			o.bw_bytes = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 64, 65536) << 20;
		} else if (!strcmp(a, "--json")) {
			o.json = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else {
			cli_die(2, "unknown option '%s' (see --help)", a);
		}
	}
	if (!o.n_shapes)
		o.shapes[o.n_shapes++] = "default";
	if (!o.n_types)
		o.types[o.n_types++] = SPA_TYPE_F16;
	if (!o.n_threads)
		o.threads[o.n_threads++] = 0;
	if (!o.n_prefill) {
		o.prefill[0] = 16, o.prefill[1] = 64, o.prefill[2] = 256;
		o.n_prefill = 3;
	}
	float *bwbuf = NULL;
	if (posix_memalign((void **)&bwbuf, 64, o.bw_bytes))
		cli_die(1, "no memory for the %" PRIu64 " MiB bandwidth buffer", o.bw_bytes >> 20);
	for (uint64_t i = 0; i < o.bw_bytes / 4; i++)
		bwbuf[i] = (float)(i & 1023);

	char mach[256], load0[64], load1[64];
	bu_machine(mach, sizeof mach);
	bu_load(load0, sizeof load0);
	printf("machine: %s\nkernels: %s\n%s at start\n\n", mach, spa_kernels_variant(), load0);

	/* the rows: every --model file, or every shape x type (made once into the cache) */
	int n_rows = (o.n_models ? o.n_models : o.n_shapes * o.n_types) * o.n_threads;
	struct row *rows = calloc((size_t)n_rows, sizeof *rows);
	char (*labels)[64] = calloc(MAX_LIST, sizeof *labels);
	int n = 0;
	for (int f = 0; f < o.n_models; f++) {
		const char *base = strrchr(o.models[f], '/');
		snprintf(labels[f], sizeof labels[f], "%s", base ? base + 1 : o.models[f]);
		char *dot = strstr(labels[f], ".gguf");
		if (dot && dot[5] == '\0')
			*dot = '\0';
		for (int k = 0; k < o.n_threads; k++)
			measure(&o, labels[f], o.models[f], o.threads[k], bwbuf, &rows[n++]);
	}
	for (int s = 0; !o.n_models && s < o.n_shapes; s++)
		for (int t = 0; t < o.n_types; t++) {
			char path[512];
			if (model_path(&o, o.shapes[s], o.types[t], path, sizeof path) < 0)
				continue;
			for (int k = 0; k < o.n_threads; k++)
				measure(&o, o.shapes[s], path, o.threads[k], bwbuf, &rows[n++]);
		}
	bu_load(load1, sizeof load1);

	int sw = 8; /* the shape column: as wide as the longest --model name */
	for (int i = 0; i < n; i++)
		sw = (int)strlen(rows[i].shape) > sw ? (int)strlen(rows[i].shape) : sw;
	printf("decode (greedy, %u steps after a 16-token prompt; tok/s from the median step;\n ratio: median over the steps of step bandwidth / the read pass right after it)\n",
	       o.n_tok);
	printf("%-*s %-5s %3s %8s %8s %8s %9s %9s %6s %9s %6s %8s %8s %6s\n", sw, "shape", "type",
	       "thr", "tok/s", "p50 ms", "p99 ms", "eff GB/s", "mach GB/s", "ratio", "kern GB/s",
	       "%roof", "GFLOP/s", "peak", "%peak");
	for (int i = 0; i < n; i++) {
		struct row *w = &rows[i];
		if (!w->threads)
			continue;
		printf("%-*s %-5s %3d %8.2f %8.2f %8.2f %9.2f %9.2f %5.0f%% %9.2f %5.0f%% %8.2f %8.2f "
		       "%5.0f%%\n", sw, w->shape, spa_dtype_name(w->type), w->threads, w->tok_s, w->p50_ms,
		       w->p99_ms, w->eff_gbs, w->machine_gbs, 100 * w->ratio, w->kernel_gbs,
		       100 * w->roof, w->gflops, w->peak_gflops, 100 * w->gflops / w->peak_gflops);
	}
	printf("kern GB/s: the format's matvec on weights held in L2 (its compute ceiling with these\n"
	       "threads); %%roof: eff GB/s / the lower of mach and kern GB/s (a format whose kern is\n"
	       "below mach is compute-bound here); peak: an FMA loop\n");
	for (int i = 0; i < n; i++)
		if (rows[i].threads && rows[i].kernel_file_gbs > 0)
			printf("packed at load (%s %s, %d threads): kern %.2f GB/s against %.2f GB/s on "
			       "the rows as the file lays them out (%.2fx)\n", rows[i].shape,
			       spa_dtype_name(rows[i].type), rows[i].threads, rows[i].kernel_gbs,
			       rows[i].kernel_file_gbs, rows[i].kernel_gbs / rows[i].kernel_file_gbs);
	printf("\nfusions (median per token, same run, same states)\n");
	printf("%-*s %-5s %3s %14s %14s %14s %14s %14s %14s %14s\n", sw, "shape", "type", "thr",
	       "taps in fwd us", "taps tail us", "taps after us", "head fused us",
	       "head logits us", "chain fused us", "chain plain us");
	for (int i = 0; i < n; i++) {
		struct row *w = &rows[i];
		if (!w->threads)
			continue;
		printf("%-*s %-5s %3d %14.1f %14.1f %14.1f %14.1f %14.1f %14.2f %14.2f\n", sw, w->shape,
		       spa_dtype_name(w->type), w->threads, w->taps_fused_us, w->taps_tail_us,
		       w->taps_unfused_us, w->head_fused_us, w->head_unfused_us, w->chain_fused_us,
		       w->chain_unfused_us);
	}
	printf("\nprefill (one batched forward, median of 3)\n%-*s %-5s %3s", sw, "shape", "type",
	       "thr");
	for (int k = 0; k < o.n_prefill; k++)
		printf("  %6u tok/s", o.prefill[k]);
	printf("\n");
	for (int i = 0; i < n; i++) {
		struct row *w = &rows[i];
		if (!w->threads)
			continue;
		printf("%-*s %-5s %3d", sw, w->shape, spa_dtype_name(w->type), w->threads);
		for (int k = 0; k < o.n_prefill; k++)
			printf("  %12.1f", w->prefill_tok_s[k]);
		printf("\n");
	}
	if (o.n_batch) {
		printf("\nbatched steps (n sequences at different positions, one position each a step:\n"
		       "one spa_engine_step and the batched greedy head; tok/s of all n, median step)\n"
		       "%-*s %-5s %3s", sw, "shape", "type", "thr");
		for (int k = 0; k < o.n_batch; k++)
			printf("  n=%-3u tok/s", o.batch[k]);
		printf("  x of n=%u\n", o.batch[0]);
		for (int i = 0; i < n; i++) {
			struct row *w = &rows[i];
			if (!w->threads)
				continue;
			printf("%-*s %-5s %3d", sw, w->shape, spa_dtype_name(w->type), w->threads);
			for (int k = 0; k < o.n_batch; k++)
				printf("  %11.1f", w->batch_tok_s[k]);
			printf("  ");
			for (int k = 1; k < o.n_batch; k++)
				printf(" %.2fx", w->batch_tok_s[k] / w->batch_tok_s[0]);
			printf("\n");
		}
	}
	const int pct[3] = { 100, 50, 25 };
	if (o.mem_budget) {
		printf("\nmemory budget (weights streamed per token from the page cache with io_uring)\n");
		printf("%-*s %-5s %3s %6s %8s %10s %10s %8s %8s %8s %10s\n", sw, "shape", "type", "thr",
		       "budget", "tok/s", "io ms/tok", "wait ms", "hidden", "no wait", "as file",
		       "x-core ns");
		for (int i = 0; i < n; i++)
			for (int b = 0; b < 3; b++) {
				struct row *w = &rows[i];
				if (!w->threads || !w->budget_ok[b])
					continue;
				char file[16] = "       -";
				if (b && !isnan(w->budget_hidden_file[b]))
					snprintf(file, sizeof file, "%7.0f%%",
						 100 * w->budget_hidden_file[b]);
				char xc[24] = "-";
				if (b && !isnan(w->budget_xcore_ns[b][0]) &&
				    !isnan(w->budget_xcore_ns[b][1]))
					snprintf(xc, sizeof xc, "%.0f/%.0f", w->budget_xcore_ns[b][0],
						 w->budget_xcore_ns[b][1]);
				printf("%-*s %-5s %3d %5d%% %8.2f %10.2f %10.2f %7.0f%% %7.0f%% %s %10s\n",
				       sw, w->shape, spa_dtype_name(w->type), w->threads, pct[b],
				       w->budget_tok_s[b], w->budget_io_ms[b], w->budget_wait_ms[b],
				       isnan(w->budget_hidden[b]) ? 100.0 : 100 * w->budget_hidden[b],
				       isnan(w->budget_no_wait[b]) ? 100.0 : 100 * w->budget_no_wait[b],
				       file, xc);
			}
		printf("hidden: 1 - (step added by streaming) / (io ms/tok: the reads alone); each\n"
		       "budget's steps taken in turns with the whole model's. The reads' copies run on\n"
		       "a core the compute threads leave free; with a thread on every core they take\n"
		       "turns with the products (spa-run and spa-cloud leave a core when streaming).\n"
		       "no wait: 1 - wait / io, the share of the reads' time the compute thread did not\n"
		       "wait for them; what separates it from hidden is compute that streaming made\n"
		       "slower (rows computed as the file lays them out where the resident ones are\n"
		       "packed; the copies' memory traffic beside the products').\n"
		       "as file: hidden again with the whole model's rows also as the file lays them\n"
		       "out (SPA_PACK=off on both sides), for formats packed at load (Q4_0): the\n"
		       "reads' own cost, without the packed kernel's lead over the file-layout one,\n"
		       "which streamed rows cannot use; - where nothing is packed (hidden is that).\n"
		       "x-core ns: a cache line's round trip between the compute CPU and the reader's,\n"
		       "before/after the budget's steps: about 100 when they share a last-level cache;\n"
		       "several hundred when a VM's host has put them on different ones, and then the\n"
		       "ring's copies no longer reach the compute core from cache and less hides.\n");
	}
	printf("\n%s at end\n", load1);

	if (o.json) {
		struct bu_json j;
		if (bu_json_open(&j, o.json) < 0)
			cli_die(1, "cannot write %s: %s", o.json, strerror(errno));
		bu_json_obj_begin(&j, NULL);
		bu_json_str(&j, "machine", mach);
		bu_json_str(&j, "kernels", spa_kernels_variant());
		bu_json_str(&j, "load_start", load0);
		bu_json_str(&j, "load_end", load1);
		bu_json_arr_begin(&j, "results");
		for (int i = 0; i < n; i++) {
			struct row *w = &rows[i];
			if (!w->threads)
				continue;
			bu_json_obj_begin(&j, NULL);
			bu_json_str(&j, "shape", w->shape);
			bu_json_str(&j, "type", spa_dtype_name(w->type));
			bu_json_str(&j, "backend", w->backend);
			bu_json_int(&j, "threads", w->threads);
			bu_json_num(&j, "tok_s", w->tok_s);
			bu_json_num(&j, "eff_gbs", w->eff_gbs);
			bu_json_num(&j, "machine_gbs", w->machine_gbs);
			bu_json_num(&j, "ratio", w->ratio);
			bu_json_num(&j, "p50_ms", w->p50_ms);
			bu_json_num(&j, "p99_ms", w->p99_ms);
			bu_json_num(&j, "gflops", w->gflops);
			bu_json_num(&j, "peak_gflops", w->peak_gflops);
			bu_json_num(&j, "kernel_gbs", w->kernel_gbs);
			if (w->kernel_file_gbs > 0)
				bu_json_num(&j, "kernel_file_gbs", w->kernel_file_gbs);
			bu_json_num(&j, "roof", w->roof);
			bu_json_obj_begin(&j, "fusion");
			bu_json_num(&j, "taps_fused_us", w->taps_fused_us);
			bu_json_num(&j, "taps_unfused_us", w->taps_unfused_us);
			bu_json_num(&j, "taps_tail_us", w->taps_tail_us);
			bu_json_num(&j, "head_fused_us", w->head_fused_us);
			bu_json_num(&j, "head_unfused_us", w->head_unfused_us);
			bu_json_num(&j, "chain_fused_us", w->chain_fused_us);
			bu_json_num(&j, "chain_unfused_us", w->chain_unfused_us);
			bu_json_obj_end(&j);
			bu_json_arr_begin(&j, "prefill");
			for (int k = 0; k < o.n_prefill; k++) {
				bu_json_obj_begin(&j, NULL);
				bu_json_int(&j, "tokens", o.prefill[k]);
				bu_json_num(&j, "tok_s", w->prefill_tok_s[k]);
				bu_json_obj_end(&j);
			}
			bu_json_arr_end(&j);
			bu_json_arr_begin(&j, "batch");
			for (int k = 0; k < o.n_batch; k++) {
				bu_json_obj_begin(&j, NULL);
				bu_json_int(&j, "n", o.batch[k]);
				bu_json_num(&j, "tok_s", w->batch_tok_s[k]);
				bu_json_num(&j, "p50_ms", w->batch_p50_ms[k]);
				bu_json_obj_end(&j);
			}
			bu_json_arr_end(&j);
			if (o.mem_budget) {
				bu_json_arr_begin(&j, "mem_budget");
				for (int b = 0; b < 3; b++) {
					if (!w->budget_ok[b])
						continue;
					bu_json_obj_begin(&j, NULL);
					bu_json_int(&j, "percent", pct[b]);
					bu_json_num(&j, "tok_s", w->budget_tok_s[b]);
					bu_json_num(&j, "io_ms", w->budget_io_ms[b]);
					bu_json_num(&j, "wait_ms", w->budget_wait_ms[b]);
					bu_json_num(&j, "hidden", w->budget_hidden[b]);
					bu_json_num(&j, "no_wait", w->budget_no_wait[b]);
					if (!isnan(w->budget_xcore_ns[b][0]))
						bu_json_num(&j, "xcore_ns_before",
							    w->budget_xcore_ns[b][0]);
					if (!isnan(w->budget_xcore_ns[b][1]))
						bu_json_num(&j, "xcore_ns_after",
							    w->budget_xcore_ns[b][1]);
					if (!isnan(w->budget_hidden_file[b]))
						bu_json_num(&j, "hidden_file_layout",
							    w->budget_hidden_file[b]);
					bu_json_obj_end(&j);
				}
				bu_json_arr_end(&j);
			}
			bu_json_obj_end(&j);
		}
		bu_json_arr_end(&j);
		bu_json_obj_end(&j);
		if (bu_json_close(&j) < 0)
			cli_die(1, "writing %s failed", o.json);
	}
	free(rows);
	free(labels);
	free(bwbuf);
	for (int k = 0; k < 6; k++)
		free(owned[k]);
	return 0;
#undef LIST_OF
}
