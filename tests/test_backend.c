/* Every op of every compute backend present (include/spa/drv/backend.h), in the manner of
 * ggml's test-backend-ops: random inputs at odd sizes, every weight type, against references
 * written here in double precision from the ops' definitions; the fused slots against the
 * generic paths bit for bit (a backend with its optional slots emptied takes them). A backend
 * this build or machine lacks (CUDA without a GPU) is skipped with a message saying so. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/drv/backend.h"
#include "spa/spa.h"
#include "testutil.h"

/* The backends under test: each kind this build has, and the CPU with its optional slots
 * emptied (the engine's generic paths). */
struct bk {
	struct spa_backend *be;
	struct spa_backend_ops generic_ops;
	struct spa_backend generic;
	struct spa_pool *pool;
};

static void bk_open(struct bk *b, enum spa_backend_kind kind)
{
	memset(b, 0, sizeof *b);
	struct spa_errbuf err = {{0}};
	if (!spa_backend_built(kind)) {
		cr_skip_test("backend %s: this build does not have it (%s)",
			     spa_backend_kind_name(kind),
			     kind == SPA_BACKEND_CUDA ? "built without nvcc's CUDA backend" : "?");
		return;
	}
	cr_assert_eq(spa_pool_create(&b->pool, 2, NULL), 0);
	int rc = spa_backend_create(&b->be, kind, b->pool, &err);
	if (rc == -SPA_EUNSUPPORTED) {
		cr_skip_test("backend %s: %s", spa_backend_kind_name(kind), err.msg);
		return;
	}
	cr_assert_eq(rc, 0, "%s", err.msg);
	b->generic_ops = *b->be->ops;
	b->generic_ops.matvec_items = NULL;
	b->generic_ops.matvec_swiglu = NULL;
	b->generic_ops.matvec_prepare = NULL;
	b->generic_ops.matvec_prepared = NULL;
	b->generic = *b->be;
	b->generic.ops = &b->generic_ops;
}

static void bk_close(struct bk *b)
{
	spa_backend_destroy(b->be);
	spa_pool_destroy(b->pool);
}

/* A backend buffer of n floats holding src (or zeros). */
static float *dev_f(struct spa_backend *be, const float *src, size_t n)
{
	void *p = NULL;
	cr_assert_eq(be->ops->buffer_alloc(be, n * sizeof(float), false, &p), 0);
	if (src)
		be->ops->upload(be, p, src, n * sizeof(float));
	return p;
}

static float *host_of(struct spa_backend *be, const float *dev, size_t n)
{
	float *h = malloc(n * sizeof *h);
	be->ops->download(be, h, dev, n * sizeof(float));
	return h;
}

/* |got - want| <= tol, with a message naming the op and the element. */
static void near(const char *what, size_t i, double got, double want, double tol)
{
	cr_assert(fabs(got - want) <= tol || (isnan(got) && isnan(want)),
		  "%s[%zu] = %.9g, the reference %.9g (tolerance %.3g)", what, i, got, want, tol);
}

/* ---------------------------------------------------------------- matmul, every type */

static const enum spa_dtype types[] = { SPA_TYPE_F32, SPA_TYPE_F16, SPA_TYPE_BF16,
					SPA_TYPE_Q8_0, SPA_TYPE_Q4_0, SPA_TYPE_Q4_K, SPA_TYPE_Q6_K };

/* Elements per activation scale of a type whose products quantize x (0: x stays float). */
static size_t act_group(enum spa_dtype t)
{
	return t == SPA_TYPE_Q6_K ? 256 : t == SPA_TYPE_Q8_0 || t == SPA_TYPE_Q4_0 ? 32 : 0;
}

struct wmat {
	struct spa_tensor t;
	void *bytes;
	double *w; /* the weights as the file holds them, dequantized */
};

static void wmat_make(struct wmat *m, enum spa_dtype type, uint64_t rows, uint64_t cols,
		      uint64_t seed, bool pack)
{
	uint64_t rs = 0;
	cr_assert_eq(spa_dtype_row_size(type, cols, &rs), 0);
	float *src = malloc(cols * sizeof *src), *deq = malloc(cols * sizeof *deq);
	m->bytes = malloc(rows * rs);
	m->w = malloc(rows * cols * sizeof *m->w);
	for (uint64_t r = 0; r < rows; r++) {
		tu_rand(src, cols, seed * 1000 + r, 1.0f);
		cr_assert_eq(spa_quantize_row(type, src, (uint8_t *)m->bytes + r * rs, cols), 0);
		spa_dequant_row(type, (uint8_t *)m->bytes + r * rs, deq, cols);
		for (uint64_t c = 0; c < cols; c++)
			m->w[r * cols + c] = deq[c];
	}
	m->t = (struct spa_tensor){ type, cols, rows, m->bytes, 0 };
	if (pack)
		cr_assert_eq(spa_tensor_pack(&m->t), 1, "%s %" PRIu64 "x%" PRIu64 " packs",
			     spa_dtype_name(type), rows, cols);
	free(src);
	free(deq);
}

static void wmat_free(struct wmat *m)
{
	free(m->bytes);
	free(m->w);
}

/* The product's reference and the bound of its error: float rows round once per add at most
 * (n ulps of the terms' magnitudes); quantized activations add at most half a step a value
 * (amax / 254 over the value's group) times |w|. */
static void ref_row(const struct wmat *m, uint64_t r, const float *x, double *y, double *tol)
{
	const uint64_t cols = m->t.cols;
	const size_t g = act_group(m->t.type);
	double s = 0, mag = 0, qerr = 0;
	for (uint64_t c0 = 0; c0 < cols; c0 += g ? g : cols) {
		const uint64_t c1 = g ? c0 + g : cols;
		double amax = 0, wabs = 0;
		for (uint64_t c = c0; c < c1; c++) {
			const double w = m->w[r * cols + c];
			s += w * x[c];
			mag += fabs(w * x[c]);
			wabs += fabs(w);
			amax = fmax(amax, fabs(x[c]));
		}
		if (g)
			qerr += amax / 254.0 * wabs;
	}
	*y = s;
	*tol = 1.01 * qerr + 1e-5 * mag + 1e-6;
}

static void check_matmul(struct spa_backend *be, enum spa_dtype type, uint64_t rows,
			 uint64_t cols, bool pack)
{
	struct wmat m;
	wmat_make(&m, type, rows, cols, rows * 31 + cols, pack);
	const uint32_t ns[] = { 1, 2, 3, 8, 17 };
	float *x = malloc(17 * cols * sizeof *x);
	tu_rand(x, 17 * cols, rows + cols, 2.0f);
	float *dx = dev_f(be, x, 17 * cols);
	float *one = NULL;
	for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
		const uint32_t n = ns[k];
		float *dy = dev_f(be, NULL, n * rows);
		be->ops->matmul(be, &m.t, dx, dy, n);
		float *y = host_of(be, dy, n * rows);
		char what[96];
		snprintf(what, sizeof what, "matmul %s%s %" PRIu64 "x%" PRIu64 " n=%u",
			 spa_dtype_name(type), pack ? " packed" : "", rows, cols, n);
		for (uint32_t v = 0; v < n; v++)
			for (uint64_t r = 0; r < rows; r++) {
				double want, tol;
				ref_row(&m, r, x + v * cols, &want, &tol);
				near(what, v * rows + r, y[v * rows + r], want, tol);
			}
		if (!one)
			one = y; /* n = 1: every batch's first vector has its bits */
		else {
			cr_assert_eq(memcmp(one, y, rows * sizeof *y), 0,
				     "%s: the batch's first vector differs from n = 1's bits", what);
			free(y);
		}
		be->ops->buffer_free(be, dy);
	}
	free(one);
	be->ops->buffer_free(be, dx);
	free(x);
	wmat_free(&m);
}

static void all_types(enum spa_backend_kind kind)
{
	struct bk b;
	bk_open(&b, kind);
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
		const enum spa_dtype t = types[i];
		const uint64_t blk = t == SPA_TYPE_Q4_K || t == SPA_TYPE_Q6_K ? 256 : 32;
		check_matmul(b.be, t, 37, blk * 3, false);
		check_matmul(b.be, t, 130, blk * 5, false);
		if (t == SPA_TYPE_F32 || t == SPA_TYPE_F16) /* not a whole block of 8 elements */
			check_matmul(b.be, t, 9, 77, false);
		if (t == SPA_TYPE_Q4_0)
			check_matmul(b.be, t, 72, 96, true);
	}
	bk_close(&b);
}

Test(backend, cpu_matmul_of_every_weight_type_matches_the_reference)
{
	all_types(SPA_BACKEND_CPU);
}

Test(backend, cuda_matmul_of_every_weight_type_matches_the_reference)
{
	all_types(SPA_BACKEND_CUDA);
}

/* ---------------------------------------------------------------- the other ops */

static void elementwise_ops(enum spa_backend_kind kind)
{
	struct bk b;
	bk_open(&b, kind);
	struct spa_backend *be = b.be;
	const uint32_t rows = 3, n = 77, heads = 5, hd = 14;
	float x[3 * 77], w[77], y[3 * 77], z[3 * 77];
	tu_rand(x, rows * n, 1, 3.0f);
	tu_rand(w, n, 2, 1.5f);
	tu_rand(y, rows * n, 3, 4.0f);
	float *dx = dev_f(be, x, rows * n), *dw = dev_f(be, w, n), *dy = dev_f(be, y, rows * n);
	float *dz = dev_f(be, NULL, rows * n);

	/* rmsnorm */
	be->ops->rmsnorm(be, dz, dx, dw, rows, n, 1e-5f);
	be->ops->download(be, z, dz, sizeof z);
	for (uint32_t r = 0; r < rows; r++) {
		double ss = 0;
		for (uint32_t i = 0; i < n; i++)
			ss += (double)x[r * n + i] * x[r * n + i];
		const double inv = 1.0 / sqrt(ss / n + 1e-5);
		for (uint32_t i = 0; i < n; i++)
			near("rmsnorm", r * n + i, z[r * n + i], x[r * n + i] * inv * w[i],
			     1e-5 * fabs(x[r * n + i] * inv * w[i]) + 1e-6);
	}
	/* swiglu (n elements over all rows) and add */
	be->ops->swiglu(be, dz, dx, dy, (uint64_t)rows * n);
	be->ops->download(be, z, dz, sizeof z);
	for (uint32_t i = 0; i < rows * n; i++) {
		const double s = (double)x[i] / (1.0 + exp(-(double)x[i])) * y[i];
		near("swiglu", i, z[i], s, 1e-5 * fabs(s) + 1e-6);
	}
	be->ops->add(be, dz, dx, (uint64_t)rows * n);
	float z2[3 * 77];
	be->ops->download(be, z2, dz, sizeof z2);
	for (uint32_t i = 0; i < rows * n; i++)
		cr_assert_eq(z2[i], z[i] + x[i], "add[%u]", i);

	/* matvec_f32 with a bias */
	float wm[5 * 77], bias[5], out[5];
	tu_rand(wm, 5 * n, 4, 1.0f);
	tu_rand(bias, 5, 5, 1.0f);
	be->ops->matvec_f32(be, wm, bias, x, out, 5, n);
	for (uint32_t r = 0; r < 5; r++) {
		double s = bias[r], mag = fabs(bias[r]);
		for (uint32_t i = 0; i < n; i++) {
			s += (double)wm[r * n + i] * x[i];
			mag += fabs((double)wm[r * n + i] * x[i]);
		}
		near("matvec_f32", r, out[r], s, 1e-5 * mag);
	}

	/* rope: three rows at positions 0, 7 and 1000, heads x hd each; llama's interleaved pairs
	 * over the whole head, then qwen2's NEOX pairs over 10 of the 14 dimensions with
	 * frequency divisors, a linear scale and an attention factor */
	const uint32_t pos[3] = { 0, 7, 1000 };
	const float ff[7] = { 1.0f, 1.5f, 2.0f, 3.0f, 5.0f, 8.0f, 8.0f };
	const struct spa_rope_cfg cfgs[2] = {
		{ .head_dim = hd, .n_rot = hd, .base = 10000.0f, .freq_scale = 1.0f,
		  .attn_factor = 1.0f },
		{ .head_dim = hd, .n_rot = 10, .base = 500000.0f, .freq_scale = 0.25f,
		  .attn_factor = 1.25f, .freq_factors = ff, .neox = true },
	};
	float q[3 * 5 * 14];
	float *dq = NULL, *dcs = dev_f(be, NULL, 3 * hd);
	for (int v = 0; v < 2; v++) {
		const struct spa_rope_cfg *cf = &cfgs[v];
		tu_rand(q, sizeof q / sizeof *q, 6 + v, 1.0f);
		dq = dev_f(be, q, sizeof q / sizeof *q);
		be->ops->rope_table(be, dcs, pos, 3, cf);
		be->ops->rope(be, dq, 3, heads * hd, heads, cf, dcs);
		float qr[3 * 5 * 14];
		be->ops->download(be, qr, dq, sizeof qr);
		const uint32_t half = cf->n_rot / 2;
		for (uint32_t r = 0; r < 3; r++)
			for (uint32_t h = 0; h < heads; h++) {
				const size_t row = (r * heads + h) * hd;
				for (uint32_t k = 0; k < half; k++) {
					double th = pos[r] * pow(cf->base, -2.0 * k / cf->n_rot);
					th = th / (cf->freq_factors ? cf->freq_factors[k] : 1.0) *
					     cf->freq_scale;
					const double c = cos(th) * cf->attn_factor;
					const double sn = sin(th) * cf->attn_factor;
					const size_t i0 = row + (cf->neox ? k : 2 * k);
					const size_t i1 = row + (cf->neox ? k + half : 2 * k + 1);
					near("rope", i0, qr[i0], q[i0] * c - q[i1] * sn, 2e-4);
					near("rope", i1, qr[i1], q[i0] * sn + q[i1] * c, 2e-4);
				}
				for (uint32_t i = cf->n_rot; i < hd; i++) /* not rotated */
					cr_assert_eq(qr[row + i], q[row + i], "rope: dimension %u moved", i);
			}
		if (v == 0)
			be->ops->buffer_free(be, dq);
	}
	be->ops->buffer_free(be, dq);
	be->ops->buffer_free(be, dcs);
	be->ops->buffer_free(be, dx);
	be->ops->buffer_free(be, dw);
	be->ops->buffer_free(be, dy);
	be->ops->buffer_free(be, dz);
	bk_close(&b);
}

Test(backend, cpu_norm_rope_swiglu_add_and_small_maps_match_the_reference)
{
	elementwise_ops(SPA_BACKEND_CPU);
}

Test(backend, cuda_norm_rope_swiglu_add_and_small_maps_match_the_reference)
{
	elementwise_ops(SPA_BACKEND_CUDA);
}

/* kv_store and attention: two sequences over their own caches, grouped-query (6 heads over 2
 * KV heads of 10), the second at a later position with 3 rows; the reference attends in double
 * to the keys and values rounded to half. */
static void attention_ops(enum spa_backend_kind kind)
{
	struct bk b;
	bk_open(&b, kind);
	struct spa_backend *be = b.be;
	const uint32_t L = 2, nkv = 2, hd = 10, nh = 6, kvd = nkv * hd, n_ctx = 40;
	cr_assert_eq(be->ops->reserve(be, n_ctx, 8), 0);
	struct spa_kv_cache kv[2];
	const uint32_t pos[2] = { 5, 21 }, ntok[2] = { 1, 3 };
	float *hk[2], *hv[2];
	for (int s = 0; s < 2; s++) {
		cr_assert_eq(spa_kv_cache_init(&kv[s], be, L, nkv, n_ctx, hd), 0);
		const uint32_t np = pos[s] + ntok[s];
		hk[s] = malloc(np * kvd * sizeof(float));
		hv[s] = malloc(np * kvd * sizeof(float));
		tu_rand(hk[s], np * kvd, 10 + s, 2.0f);
		tu_rand(hv[s], np * kvd, 20 + s, 2.0f);
		/* every position so far, in two stores, into block 1 */
		float *dk = dev_f(be, hk[s], np * kvd), *dv = dev_f(be, hv[s], np * kvd);
		cr_assert_eq(be->ops->kv_store(be, &kv[s], 1, 0, pos[s], dk, dv), 0);
		cr_assert_eq(be->ops->kv_store(be, &kv[s], 1, pos[s], ntok[s],
					       dk + pos[s] * kvd, dv + pos[s] * kvd), 0);
		be->ops->buffer_free(be, dk);
		be->ops->buffer_free(be, dv);
	}
	float q[4 * 6 * 10];
	tu_rand(q, sizeof q / sizeof *q, 30, 1.0f);
	float *dq = dev_f(be, q, 4 * nh * hd), *dout = dev_f(be, NULL, 4 * nh * hd);
	const struct spa_attn_seq seqs[2] = { { &kv[0], pos[0], ntok[0], dq, dout },
					      { &kv[1], pos[1], ntok[1], dq + nh * hd,
						dout + nh * hd } };
	be->ops->attention(be, seqs, 2, 1, nh);
	float out[4 * 6 * 10];
	be->ops->download(be, out, dout, sizeof out);
	for (int s = 0; s < 2; s++)
		for (uint32_t j = 0; j < ntok[s]; j++)
			for (uint32_t h = 0; h < nh; h++) {
				const uint32_t row = (s ? 1 : 0) + j, p = pos[s] + j, g = h / (nh / nkv);
				const float *qq = q + (row * nh + h) * hd;
				double sc[64], mx = -INFINITY, sum = 0;
				for (uint32_t t = 0; t <= p; t++) {
					double d = 0;
					for (uint32_t i = 0; i < hd; i++)
						d += qq[i] * (double)spa_fp16_to_fp32(spa_fp32_to_fp16(
							hk[s][t * kvd + g * hd + i]));
					sc[t] = d / sqrt((double)hd);
					mx = fmax(mx, sc[t]);
				}
				for (uint32_t t = 0; t <= p; t++)
					sum += (sc[t] = exp(sc[t] - mx));
				for (uint32_t i = 0; i < hd; i++) {
					double o = 0;
					for (uint32_t t = 0; t <= p; t++)
						o += sc[t] / sum * spa_fp16_to_fp32(spa_fp32_to_fp16(
							hv[s][t * kvd + g * hd + i]));
					near("attention", (row * nh + h) * hd + i,
					     out[(row * nh + h) * hd + i], o, 1e-5);
				}
			}
	/* the range check: 65504 is half's largest, 65520 rounds to an infinity */
	float big[20] = { 0 };
	big[3] = 65504.0f;
	float *db = dev_f(be, big, 20);
	cr_assert_eq(be->ops->kv_store(be, &kv[0], 0, 0, 1, db, db), 0);
	big[7] = -65520.0f;
	be->ops->upload(be, db, big, sizeof big);
	cr_assert_eq(be->ops->kv_store(be, &kv[0], 0, 0, 1, db, db), -SPA_EUNSUPPORTED);
	be->ops->buffer_free(be, db);
	be->ops->buffer_free(be, dq);
	be->ops->buffer_free(be, dout);
	for (int s = 0; s < 2; s++) {
		spa_kv_cache_fini(&kv[s]);
		free(hk[s]);
		free(hv[s]);
	}
	bk_close(&b);
}

Test(backend, cpu_kv_store_and_attention_over_several_caches_match_the_reference)
{
	attention_ops(SPA_BACKEND_CPU);
}

Test(backend, cuda_kv_store_and_attention_over_several_caches_match_the_reference)
{
	attention_ops(SPA_BACKEND_CUDA);
}

/* get_rows: each row as spa_dequant_row converts it. */
static void get_rows_op(enum spa_backend_kind kind)
{
	struct bk b;
	bk_open(&b, kind);
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
		const enum spa_dtype t = types[i];
		const uint64_t cols = t == SPA_TYPE_Q4_K || t == SPA_TYPE_Q6_K ? 512 : 96;
		struct wmat m;
		wmat_make(&m, t, 11, cols, 7, false);
		const int32_t ids[4] = { 10, 0, 3, 10 };
		float *d = dev_f(b.be, NULL, 4 * cols);
		b.be->ops->get_rows(b.be, &m.t, ids, 4, d);
		float *h = host_of(b.be, d, 4 * cols);
		for (int j = 0; j < 4; j++)
			for (uint64_t c = 0; c < cols; c++)
				cr_assert_eq((double)h[j * cols + c], m.w[ids[j] * cols + c],
					     "get_rows %s row %d col %" PRIu64, spa_dtype_name(t),
					     ids[j], c);
		free(h);
		b.be->ops->buffer_free(b.be, d);
		wmat_free(&m);
	}
	bk_close(&b);
}

Test(backend, cpu_get_rows_converts_every_weight_type)
{
	get_rows_op(SPA_BACKEND_CPU);
}

Test(backend, cuda_get_rows_converts_every_weight_type)
{
	get_rows_op(SPA_BACKEND_CUDA);
}

/* ---------------------------------------------------------------- fused slots */

/* The fused slots against the generic paths, bit for bit, and the greedy head against
 * argmax(matmul) with ties and NaNs. */
static void fused_ops(enum spa_backend_kind kind)
{
	struct bk b;
	bk_open(&b, kind);
	struct spa_backend *be = b.be, *gen = &b.generic;
	for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
		const enum spa_dtype t = types[ti];
		const uint64_t cols = t == SPA_TYPE_Q4_K || t == SPA_TYPE_Q6_K ? 256 : 64;
		struct wmat g, u, f32;
		wmat_make(&g, t, 72, cols, 40, false);
		wmat_make(&u, t, 72, cols, 41, t == SPA_TYPE_Q4_0);
		wmat_make(&f32, SPA_TYPE_F32, 9, cols, 42, false);
		float x[256], bias[9];
		tu_rand(x, cols, 43, 1.0f);
		tu_rand(bias, 9, 44, 1.0f);
		float *dx = dev_f(be, x, cols);
		float *a[4], *c[4];
		for (int k = 0; k < 4; k++) {
			a[k] = dev_f(be, NULL, 72);
			c[k] = dev_f(be, NULL, 72);
		}
		/* items: two matrices and a biased F32 one */
		const struct spa_matvec_item it[3] = { { &g.t, dx, NULL, a[0] },
						       { &u.t, dx, NULL, a[1] },
						       { &f32.t, dx, bias, a[2] } };
		const struct spa_matvec_item ig[3] = { { &g.t, dx, NULL, c[0] },
						       { &u.t, dx, NULL, c[1] },
						       { &f32.t, dx, bias, c[2] } };
		spa_backend_matvec_items(be, 3, it);
		spa_backend_matvec_items(gen, 3, ig);
		for (int k = 0; k < 3; k++) {
			float *p = host_of(be, a[k], 72), *r = host_of(be, c[k], 72);
			cr_assert_eq(memcmp(p, r, (k == 2 ? 9 : 72) * sizeof *p), 0,
				     "matvec_items %s item %d: not the generic path's bits",
				     spa_dtype_name(t), k);
			free(p);
			free(r);
		}
		/* swiglu */
		spa_backend_matvec_swiglu(be, &g.t, &u.t, dx, a[0], a[1]);
		spa_backend_matvec_swiglu(gen, &g.t, &u.t, dx, c[0], c[1]);
		float *p = host_of(be, a[0], 72), *r = host_of(be, c[0], 72);
		cr_assert_eq(memcmp(p, r, 72 * sizeof *p), 0, "matvec_swiglu %s", spa_dtype_name(t));
		free(p);
		free(r);
		/* prepared */
		spa_backend_matvec_prepare(be, dx, cols, t);
		spa_backend_matvec_prepared(be, &u.t, a[3]);
		spa_backend_matvec_prepare(gen, dx, cols, t);
		spa_backend_matvec_prepared(gen, &u.t, c[3]);
		p = host_of(be, a[3], 72);
		r = host_of(be, c[3], 72);
		cr_assert_eq(memcmp(p, r, 72 * sizeof *p), 0, "matvec_prepared %s", spa_dtype_name(t));
		free(p);
		free(r);
		for (int k = 0; k < 4; k++) {
			be->ops->buffer_free(be, a[k]);
			be->ops->buffer_free(be, c[k]);
		}
		be->ops->buffer_free(be, dx);

		/* the greedy head over 1300 rows (tiles and a short one), 5 vectors, with a tie
		 * between two rows of one vector and a NaN row for all */
		struct wmat h;
		wmat_make(&h, t, 1300, cols, 45, false);
		uint64_t rs = 0;
		spa_dtype_row_size(t, cols, &rs);
		memcpy((uint8_t *)h.bytes + 1000 * rs, (uint8_t *)h.bytes + 17 * rs, rs);
		float z[5 * 256];
		tu_rand(z, 5 * cols, 46, 1.0f);
		float *dz = dev_f(be, z, 5 * cols), *dl = dev_f(be, NULL, 5 * 1300);
		int32_t tok[5];
		be->ops->head_argmax(be, &h.t, dz, 5, tok);
		be->ops->matmul(be, &h.t, dz, dl, 5);
		float *l = host_of(be, dl, 5 * 1300);
		for (int v = 0; v < 5; v++) {
			const int32_t want = (int32_t)spa_argmax(l + v * 1300, 1300);
			cr_assert_eq(tok[v], want, "head_argmax %s vector %d: %d, argmax %d",
				     spa_dtype_name(t), v, tok[v], want);
			int32_t one;
			be->ops->head_argmax(be, &h.t, dz + v * cols, 1, &one);
			cr_assert_eq(one, want, "head_argmax %s of one vector", spa_dtype_name(t));
		}
		free(l);
		/* a z that makes row 17 (and its copy, row 1000) the largest: the lower wins */
		if (t == SPA_TYPE_F32) {
			for (uint64_t i = 0; i < cols; i++)
				z[i] = (float)h.w[17 * cols + i] * 100.0f;
			be->ops->upload(be, dz, z, cols * sizeof(float));
			be->ops->head_argmax(be, &h.t, dz, 1, tok);
			cr_assert_eq(tok[0], 17, "a tie goes to the lowest row, got %d", tok[0]);
			for (uint64_t i = 0; i < cols; i++)
				z[i] = NAN;
			be->ops->upload(be, dz, z, cols * sizeof(float));
			be->ops->head_argmax(be, &h.t, dz, 1, tok);
			cr_assert_eq(tok[0], 0, "all NaN gives 0, as spa_argmax");
		}
		be->ops->buffer_free(be, dz);
		be->ops->buffer_free(be, dl);
		wmat_free(&h);
		wmat_free(&g);
		wmat_free(&u);
		wmat_free(&f32);
	}
	bk_close(&b);
}

Test(backend, cpu_fused_slots_give_the_generic_paths_bits)
{
	fused_ops(SPA_BACKEND_CPU);
}

Test(backend, cuda_fused_slots_give_the_generic_paths_bits)
{
	fused_ops(SPA_BACKEND_CUDA);
}
