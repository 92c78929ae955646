/* Personal plugins (runtime/plugin.c): names, the math against a double-precision reference
 * written here, the split identity (side_full == taps + chain + out, bit for bit), loading and
 * validation of generated and malformed files, base pairing, cloud parts, and the classifier
 * calibration of the generator. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

/* ---- names ---- */

Test(plugin, names_round_trip_and_parsers_refuse_unknown)
{
	for (int m = 0; m < SPA_METHOD_COUNT; m++)
		cr_assert_eq(spa_method_from_name(spa_method_name((enum spa_method)m)), m);
	for (int s = 0; s < SPA_SPLIT_COUNT; s++)
		cr_assert_eq(spa_split_from_name(spa_split_name((enum spa_split)s)), s);
	for (int m = 0; m < SPA_MERGE_COUNT; m++)
		cr_assert_eq(spa_merge_from_name(spa_merge_name((enum spa_merge)m)), m);
	cr_assert_str_eq(spa_method_name(SPA_METHOD_SPA), "spa");
	cr_assert_str_eq(spa_method_name(SPA_METHOD_LST), "lst");
	cr_assert_str_eq(spa_split_name(SPA_SPLIT_CLOUD_LINEAR), "cloud-linear");
	cr_assert_str_eq(spa_split_name(SPA_SPLIT_EDGE_ALL), "edge-all");
	cr_assert_str_eq(spa_merge_name(SPA_MERGE_REPLACE), "replace");
	cr_assert_str_eq(spa_plugin_kind_name(SPA_PLUGIN_SIDE), "side");
	cr_assert_str_eq(spa_plugin_kind_name(SPA_PLUGIN_LORA), "lora");
	cr_assert_str_eq(spa_plugin_kind_name(SPA_PLUGIN_ADAPTER), "adapter");
	const char *bad[] = { "", "SPA", "lora ", "cloud", "edge", "sum", "side-all" };
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		cr_assert_eq(spa_method_from_name(bad[i]), -SPA_EUSAGE, "%s", bad[i]);
		cr_assert_eq(spa_split_from_name(bad[i]), -SPA_EUSAGE, "%s", bad[i]);
		cr_assert_eq(spa_merge_from_name(bad[i]), -SPA_EUSAGE, "%s", bad[i]);
	}
	cr_assert_eq(spa_method_from_name(NULL), -SPA_EUSAGE);
	cr_assert_eq(spa_method_plugin_kind(SPA_METHOD_BASE), -SPA_EUSAGE);
	cr_assert_eq(spa_method_plugin_kind(SPA_METHOD_LORA), SPA_PLUGIN_LORA);
	cr_assert_eq(spa_method_plugin_kind(SPA_METHOD_ADAPTER), SPA_PLUGIN_ADAPTER);
	cr_assert_eq(spa_method_plugin_kind(SPA_METHOD_LST), SPA_PLUGIN_SIDE);
	cr_assert_eq(spa_method_plugin_kind(SPA_METHOD_SPA), SPA_PLUGIN_SIDE);
}

/* ---- plugins built by hand ---- */

/* A random plugin of kind k in one allocation (so that spa_plugin_destroy frees it). */
static struct spa_plugin *hand_plugin(enum spa_plugin_kind k, uint32_t L, uint32_t H,
				      uint32_t kv, uint32_t r, uint64_t seed)
{
	struct spa_plugin *p = calloc(1, sizeof *p);
	cr_assert_not_null(p);
	p->kind = k;
	p->part = SPA_PART_FULL;
	p->n_layers = L;
	p->n_embd = H;
	p->kv_dim = kv;
	p->rank = r;
	strcpy(p->base_fingerprint, "0123456789abcdef");
	strcpy(p->fingerprint, "fedcba9876543210");
	struct { float **slot; size_t n; float scale; } f[16];
	int nf = 0;
#define F(s, count, sc) f[nf++] = (typeof(f[0])){ &(s), (count), (sc) }
	if (k == SPA_PLUGIN_SIDE) {
		F(p->in_w, (size_t)r * H, 0.3f);
		F(p->in_b, r, 0.1f);
		F(p->tap_w, (size_t)L * r * H, 0.3f);
		F(p->tap_b, (size_t)L * r, 0.1f);
		F(p->up_w, (size_t)L * H * r, 0.5f);
		F(p->up_b, (size_t)L * H, 0.1f);
		F(p->down_w, (size_t)L * r * H, 0.2f);
		F(p->down_b, (size_t)L * r, 0.1f);
		F(p->out_w, (size_t)H * r, 0.4f);
		F(p->out_b, H, 0.1f);
		F(p->cls_w, 2 * (size_t)H, 0.3f);
		F(p->cls_b, 2, 0.1f);
	} else if (k == SPA_PLUGIN_LORA) {
		F(p->qa, (size_t)L * r * H, 0.3f);
		F(p->qb, (size_t)L * H * r, 0.3f);
		F(p->va, (size_t)L * r * H, 0.3f);
		F(p->vb, (size_t)L * kv * r, 0.3f);
	} else {
		for (int w = 0; w < 2; w++) {
			F(p->ad_dn_w[w], (size_t)L * r * H, 0.3f);
			F(p->ad_dn_b[w], (size_t)L * r, 0.1f);
			F(p->ad_up_w[w], (size_t)L * H * r, 0.3f);
			F(p->ad_up_b[w], (size_t)L * H, 0.1f);
		}
	}
#undef F
	size_t total = 0;
	for (int i = 0; i < nf; i++)
		total += f[i].n;
	float *mem = malloc(total * sizeof *mem);
	cr_assert_not_null(mem);
	p->mem = mem;
	for (int i = 0; i < nf; i++) {
		*f[i].slot = mem;
		tu_rand(mem, f[i].n, seed + (uint64_t)i * 7919, f[i].scale);
		mem += f[i].n;
	}
	return p;
}

/* y = W x + b in double (W rows x cols, float). */
static void ref_matvec(const float *w, const float *b, const double *x, double *y, uint32_t rows,
		       uint32_t cols)
{
	for (uint32_t i = 0; i < rows; i++) {
		double s = b ? b[i] : 0.0;
		for (uint32_t j = 0; j < cols; j++)
			s += (double)w[(size_t)i * cols + j] * x[j];
		y[i] = s;
	}
}

static void ref_relu(double *x, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		x[i] = x[i] > 0 ? x[i] : 0;
}

static void assert_close(const float *got, const double *want, size_t n, double tol,
			 const char *what)
{
	double scale = 0;
	for (size_t i = 0; i < n; i++)
		scale = fmax(scale, fabs(want[i]));
	for (size_t i = 0; i < n; i++)
		cr_assert(fabs((double)got[i] - want[i]) <= tol * (1.0 + scale),
			  "%s[%zu]: got %.9g, want %.9g", what, i, (double)got[i], want[i]);
}

/* The side network of RUNTIME.md §3 in double: taps, relu(s), g. */
static void ref_side(const struct spa_plugin *p, const float *resid, double *taps,
		     double *relu_s, double *g)
{
	const uint32_t L = p->n_layers, H = p->n_embd, r = p->rank;
	double *x = malloc(H * sizeof *x), *u = malloc(H * sizeof *u);
	double *s = malloc(r * sizeof *s), *d = malloc(r * sizeof *d);
	for (uint32_t l = 0; l <= L; l++) {
		for (uint32_t j = 0; j < H; j++)
			x[j] = resid[(size_t)l * H + j];
		if (l == 0)
			ref_matvec(p->in_w, p->in_b, x, taps, r, H);
		else
			ref_matvec(p->tap_w + (size_t)(l - 1) * r * H, p->tap_b + (size_t)(l - 1) * r,
				   x, taps + (size_t)l * r, r, H);
	}
	memcpy(s, taps, r * sizeof *s);
	for (uint32_t i = 0; i < L; i++) {
		ref_relu(s, r);
		ref_matvec(p->up_w + (size_t)i * H * r, p->up_b + (size_t)i * H, s, u, H, r);
		ref_relu(u, H);
		ref_matvec(p->down_w + (size_t)i * r * H, p->down_b + (size_t)i * r, u, d, r, H);
		for (uint32_t j = 0; j < r; j++)
			s[j] = taps[(size_t)(i + 1) * r + j] + s[j] + d[j];
	}
	for (uint32_t j = 0; j < r; j++)
		relu_s[j] = s[j] > 0 ? s[j] : 0;
	ref_matvec(p->out_w, p->out_b, relu_s, g, H, r);
	free(x);
	free(u);
	free(s);
	free(d);
}

Test(plugin, side_math_matches_double_reference_on_odd_sizes)
{
	const uint32_t shapes[][3] = { { 3, 37, 5 }, { 1, 17, 1 }, { 5, 64, 13 }, { 2, 129, 31 } };
	for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
		uint32_t L = shapes[c][0], H = shapes[c][1], r = shapes[c][2];
		struct spa_plugin *p = hand_plugin(SPA_PLUGIN_SIDE, L, H, H, r, 100 + c);
		float *resid = malloc((size_t)(L + 1) * H * sizeof *resid);
		tu_rand(resid, (size_t)(L + 1) * H, 7 + c, 1.5f);
		float *taps = malloc((size_t)(L + 1) * r * sizeof *taps);
		float *relu_s = malloc(r * sizeof *relu_s), *g = malloc(H * sizeof *g);
		float *scratch = malloc((r + H) * sizeof *scratch);
		double *wt = malloc((size_t)(L + 1) * r * sizeof *wt);
		double *ws = malloc(r * sizeof *ws), *wg = malloc(H * sizeof *wg);

		ref_side(p, resid, wt, ws, wg);
		spa_plugin_side_taps(p, resid, taps);
		assert_close(taps, wt, (size_t)(L + 1) * r, 1e-5, "taps");

		/* Chain and out from the reference's own taps, so each stage is judged alone. */
		double *rs2 = malloc(r * sizeof *rs2), *g2 = malloc(H * sizeof *g2);
		spa_plugin_side_chain(p, taps, relu_s, scratch);
		assert_close(relu_s, ws, r, 1e-4, "relu_s");
		for (uint32_t j = 0; j < r; j++) {
			cr_assert(relu_s[j] >= 0.0f);
			rs2[j] = relu_s[j];
		}
		spa_plugin_side_out(p, relu_s, g);
		ref_matvec(p->out_w, p->out_b, rs2, g2, H, r);
		assert_close(g, g2, H, 1e-5, "g");
		assert_close(g, wg, H, 1e-4, "g (end to end)");

		/* The gate on f = the last residual row. */
		const float *f = resid + (size_t)L * H;
		double x[2], fd[1024];
		for (uint32_t j = 0; j < H; j++)
			fd[j] = f[j];
		ref_matvec(p->cls_w, p->cls_b, fd, x, 2, H);
		float margin = NAN;
		int sigma = spa_plugin_gate(p, f, &margin);
		cr_assert(fabs(margin - (x[1] - x[0])) <= 1e-5 * (1 + fabs(x[0]) + fabs(x[1])));
		if (fabs(x[1] - x[0]) > 1e-4)
			cr_assert_eq(sigma, x[1] > x[0] ? 1 : 0);
		cr_assert_eq(spa_plugin_gate(p, f, NULL), sigma);
		/* A bias on class 1 above the margin flips the gate both ways. */
		float b1 = p->cls_b[1];
		p->cls_b[1] = b1 - margin - 1.0f;
		cr_assert_eq(spa_plugin_gate(p, f, NULL), 0);
		p->cls_b[1] = b1 - margin + 1.0f;
		cr_assert_eq(spa_plugin_gate(p, f, NULL), 1);

		free(rs2);
		free(g2);
		free(resid);
		free(taps);
		free(relu_s);
		free(g);
		free(scratch);
		free(wt);
		free(ws);
		free(wg);
		spa_plugin_destroy(p);
	}
}

Test(plugin, side_full_is_bitwise_taps_chain_out)
{
	const uint32_t shapes[][3] = { { 4, 45, 7 }, { 1, 9, 3 }, { 6, 128, 32 }, { 3, 33, 33 } };
	for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
		uint32_t L = shapes[c][0], H = shapes[c][1], r = shapes[c][2];
		struct spa_plugin *p = hand_plugin(SPA_PLUGIN_SIDE, L, H, H, r, 300 + c);
		size_t nres = (size_t)(L + 1) * H, nsc = (size_t)(L + 1) * r + r + H;
		float *resid = malloc(nres * sizeof *resid);
		float *taps = malloc((size_t)(L + 1) * r * sizeof *taps);
		float *relu_s = malloc(r * sizeof *relu_s);
		float *g1 = malloc(H * sizeof *g1), *g2 = malloc(H * sizeof *g2);
		float *sc1 = malloc((r + H) * sizeof *sc1), *sc2 = malloc(nsc * sizeof *sc2);
		for (int trial = 0; trial < 5; trial++) {
			tu_rand(resid, nres, 1000 * c + trial, 2.0f + trial);
			/* Garbage in the scratch must not leak into the result. */
			for (size_t i = 0; i < nsc; i++)
				sc2[i] = NAN;
			for (size_t i = 0; i < r + H; i++)
				sc1[i] = NAN;
			spa_plugin_side_taps(p, resid, taps);     /* cloud */
			spa_plugin_side_chain(p, taps, relu_s, sc1); /* edge */
			spa_plugin_side_out(p, relu_s, g1);       /* cloud */
			spa_plugin_side_full(p, resid, g2, sc2);  /* edge-all */
			cr_assert_eq(memcmp(g1, g2, H * sizeof *g1), 0,
				     "L=%u H=%u r=%u trial %d: the two splits differ", L, H, r, trial);
			for (uint32_t j = 0; j < H; j++)
				cr_assert(isfinite(g1[j]));
		}
		free(resid);
		free(taps);
		free(relu_s);
		free(g1);
		free(g2);
		free(sc1);
		free(sc2);
		spa_plugin_destroy(p);
	}
}

Test(plugin, lora_matches_double_reference)
{
	const uint32_t shapes[][5] = { /* L, H, kv, k, n_tok */
		{ 3, 37, 13, 5, 3 }, { 2, 64, 64, 8, 1 }, { 4, 50, 10, 1, 4 }, { 1, 21, 7, 21, 2 } };
	for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
		uint32_t L = shapes[c][0], H = shapes[c][1], kv = shapes[c][2], k = shapes[c][3];
		uint32_t n = shapes[c][4];
		struct spa_plugin *p = hand_plugin(SPA_PLUGIN_LORA, L, H, kv, k, 500 + c);
		float *x = malloc((size_t)n * H * sizeof *x);
		float *dq = malloc((size_t)n * H * sizeof *dq), *dv = malloc((size_t)n * kv * sizeof *dv);
		float *scratch = malloc(k * sizeof *scratch);
		double *xd = malloc(H * sizeof *xd), *t = malloc(k * sizeof *t);
		double *wq = malloc(H * sizeof *wq), *wv = malloc(kv * sizeof *wv);
		tu_rand(x, (size_t)n * H, 77 + c, 1.0f);
		for (uint32_t layer = 0; layer < L; layer++) {
			spa_plugin_lora(p, layer, n, x, dq, dv, scratch);
			for (uint32_t row = 0; row < n; row++) {
				for (uint32_t j = 0; j < H; j++)
					xd[j] = x[(size_t)row * H + j];
				ref_matvec(p->qa + (size_t)layer * k * H, NULL, xd, t, k, H);
				ref_matvec(p->qb + (size_t)layer * H * k, NULL, t, wq, H, k);
				ref_matvec(p->va + (size_t)layer * k * H, NULL, xd, t, k, H);
				ref_matvec(p->vb + (size_t)layer * kv * k, NULL, t, wv, kv, k);
				assert_close(dq + (size_t)row * H, wq, H, 1e-5, "dq");
				assert_close(dv + (size_t)row * kv, wv, kv, 1e-5, "dv");
			}
		}
		free(x);
		free(dq);
		free(dv);
		free(scratch);
		free(xd);
		free(t);
		free(wq);
		free(wv);
		spa_plugin_destroy(p);
	}
}

Test(plugin, adapter_matches_double_reference)
{
	const uint32_t shapes[][4] = { { 3, 37, 5, 3 }, { 2, 64, 16, 1 }, { 1, 19, 19, 5 } };
	for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
		uint32_t L = shapes[c][0], H = shapes[c][1], b = shapes[c][2], n = shapes[c][3];
		struct spa_plugin *p = hand_plugin(SPA_PLUGIN_ADAPTER, L, H, H, b, 700 + c);
		float *h = malloc((size_t)n * H * sizeof *h);
		float *delta = malloc((size_t)n * H * sizeof *delta);
		float *scratch = malloc(b * sizeof *scratch);
		double *hd = malloc(H * sizeof *hd), *t = malloc(b * sizeof *t);
		double *want = malloc(H * sizeof *want);
		tu_rand(h, (size_t)n * H, 99 + c, 2.0f);
		for (uint32_t layer = 0; layer < L; layer++)
			for (uint32_t which = 0; which < 2; which++) {
				spa_plugin_adapter(p, layer, which, n, h, delta, scratch);
				for (uint32_t row = 0; row < n; row++) {
					for (uint32_t j = 0; j < H; j++)
						hd[j] = h[(size_t)row * H + j];
					ref_matvec(p->ad_dn_w[which] + (size_t)layer * b * H,
						   p->ad_dn_b[which] + (size_t)layer * b, hd, t, b, H);
					ref_relu(t, b);
					ref_matvec(p->ad_up_w[which] + (size_t)layer * H * b,
						   p->ad_up_b[which] + (size_t)layer * H, t, want, H, b);
					assert_close(delta + (size_t)row * H, want, H, 1e-5, "delta");
				}
			}
		free(h);
		free(delta);
		free(scratch);
		free(hd);
		free(t);
		free(want);
		spa_plugin_destroy(p);
	}
}

/* ---- generated plugins ---- */

static struct spa_model *tiny_model(void)
{
	struct spa_model *m = NULL;
	struct spa_errbuf err = { { 0 } };
	int rc = spa_model_load(&m, tu_tiny_model(), false, &err);
	cr_assert_eq(rc, 0, "%s", err.msg);
	return m;
}

static struct spa_plugin *load_ok(const char *path)
{
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = { { 0 } };
	int rc = spa_plugin_load(&p, path, &err);
	cr_assert_eq(rc, 0, "%s: %s", path, err.msg);
	return p;
}

static bool is_hex16(const char *s)
{
	if (strlen(s) != 16)
		return false;
	for (int i = 0; i < 16; i++)
		if (!strchr("0123456789abcdef", s[i]))
			return false;
	return true;
}

Test(plugin, generated_plugins_load_and_validate)
{
	struct spa_model *m = tiny_model();
	const struct spa_hparams *hp = &m->hp;
	uint64_t L = hp->n_layers, H = hp->n_embd, kv = (uint64_t)hp->n_kv_heads * hp->head_dim;
	const char *kinds[] = { "side", "lora", "adapter" };
	for (int k = 0; k < 3; k++) {
		struct spa_plugin *p = load_ok(tu_tiny_plugin(kinds[k]));
		struct spa_errbuf err = { { 0 } };
		cr_assert_eq(p->kind, (enum spa_plugin_kind)k);
		cr_assert_eq(p->part, SPA_PART_FULL);
		cr_assert_eq(p->n_layers, L);
		cr_assert_eq(p->n_embd, H);
		cr_assert_eq(p->kv_dim, kv);
		cr_assert_str_eq(p->base_fingerprint, m->fingerprint);
		cr_assert(is_hex16(p->fingerprint), "%s", p->fingerprint);
		cr_assert_not_null(p->tok);
		cr_assert_eq(spa_tokenizer_n_vocab(p->tok), hp->n_vocab);
		cr_assert_eq(spa_plugin_check_base(p, m, &err), 0, "%s", err.msg);
		uint64_t r = p->rank, want;
		if (k == 0) {
			cr_assert_eq(r, H / 4 < 32 ? H / 4 : 32);
			want = (r * H + r) + L * (2 * (r * H + r) + H * r + H) + H * r + H + 2 * H + 2;
			cr_assert_not_null(p->up_w);
			cr_assert_null(p->qa);
			/* The bias is the calibration's, the rest random but not degenerate. */
			cr_assert_eq(p->cls_b[0], 0.0f);
			cr_assert(p->cls_b[1] != 0.0f);
		} else if (k == 1) {
			cr_assert_eq(r, 8);
			want = L * (r * H + H * r + r * H + kv * r);
			cr_assert_null(p->in_w);
		} else {
			cr_assert_eq(r, H / 4 < 16 ? H / 4 : 16);
			want = L * 2 * (r * H + r + H * r + H);
		}
		cr_assert_eq(p->n_params, want, "%s: n_params %llu, want %llu", kinds[k],
			     (unsigned long long)p->n_params, (unsigned long long)want);

		/* The same bytes from memory give the same plugin. */
		size_t size;
		void *img = tu_read_file(tu_tiny_plugin(kinds[k]), &size);
		cr_assert_not_null(img);
		struct spa_plugin *q = NULL;
		cr_assert_eq(spa_plugin_load_mem(&q, img, size, &err), 0, "%s", err.msg);
		free(img); /* load_mem copies what it keeps */
		cr_assert_str_eq(q->fingerprint, p->fingerprint);
		cr_assert_eq(q->n_params, p->n_params);
		const float *a = k == 0 ? p->out_w : k == 1 ? p->vb : p->ad_up_w[1];
		const float *b = k == 0 ? q->out_w : k == 1 ? q->vb : q->ad_up_w[1];
		size_t n = k == 0 ? H * r : k == 1 ? L * kv * r : L * H * r;
		cr_assert_eq(memcmp(a, b, n * sizeof *a), 0);
		spa_plugin_destroy(q);
		spa_plugin_destroy(p);
	}
	spa_model_destroy(m);
}

Test(plugin, generation_is_deterministic_in_seed)
{
	struct spa_model *m = tiny_model();
	char *dir = tu_tmpdir();
	char a[128], b[128], c[128];
	snprintf(a, sizeof a, "%s/a.gguf", dir);
	snprintf(b, sizeof b, "%s/b.gguf", dir);
	snprintf(c, sizeof c, "%s/c.gguf", dir);
	struct spa_errbuf err = { { 0 } };
	struct spa_plugin_gen_params gp = { .kind = SPA_PLUGIN_LORA, .rank = 3, .seed = 11,
					    .side_fraction = -1 };
	cr_assert_eq(spa_plugin_generate(m, &gp, a, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_plugin_generate(m, &gp, b, &err), 0, "%s", err.msg);
	gp.seed = 12;
	cr_assert_eq(spa_plugin_generate(m, &gp, c, &err), 0, "%s", err.msg);
	struct spa_plugin *pa = load_ok(a), *pb = load_ok(b), *pc = load_ok(c);
	cr_assert_eq(pa->rank, 3);
	cr_assert_str_eq(pa->fingerprint, pb->fingerprint);
	cr_assert_str_neq(pa->fingerprint, pc->fingerprint);
	spa_plugin_destroy(pa);
	spa_plugin_destroy(pb);
	spa_plugin_destroy(pc);
	spa_model_destroy(m);
}

Test(plugin, refuses_a_base_made_with_another_seed)
{
	char *dir = tu_tmpdir();
	char other[128];
	snprintf(other, sizeof other, "%s/other.gguf", dir);
	struct spa_hparams hp;
	struct spa_errbuf err = { { 0 } };
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 3, other, false, &err), 0, "%s", err.msg);
	struct spa_model *m = NULL;
	cr_assert_eq(spa_model_load(&m, other, false, &err), 0, "%s", err.msg);
	struct spa_plugin *p = load_ok(tu_tiny_plugin("side"));
	cr_assert_str_neq(p->base_fingerprint, m->fingerprint);
	err.msg[0] = 0;
	cr_assert_eq(spa_plugin_check_base(p, m, &err), -SPA_EMISMATCH);
	cr_assert_not_null(strstr(err.msg, p->base_fingerprint), "%s", err.msg);
	cr_assert_not_null(strstr(err.msg, m->fingerprint), "%s", err.msg);
	cr_assert_not_null(strstr(err.msg, "spa-gen plugin --base"), "%s", err.msg);

	/* Same fingerprint but another shape (a hand-edited header) is refused too. */
	strcpy(p->base_fingerprint, m->fingerprint);
	cr_assert_eq(spa_plugin_check_base(p, m, &err), 0, "%s", err.msg);
	p->n_layers++;
	cr_assert_eq(spa_plugin_check_base(p, m, &err), -SPA_EMISMATCH);
	spa_plugin_destroy(p);
	spa_model_destroy(m);
}

/* ---- cloud parts ---- */

static void chain_case(const struct spa_plugin *p, uint64_t seed)
{
	const uint32_t L = p->n_layers, r = p->rank;
	float *taps = malloc(sizeof(float) * (L + 1) * r);
	float *a = malloc(sizeof(float) * r), *b = malloc(sizeof(float) * r);
	float *s1 = malloc(sizeof(float) * spa_plugin_side_chain_fused_scratch(p));
	float *s2 = malloc(sizeof(float) * (r + p->n_embd));
	for (int it = 0; it < 20; it++) {
		tu_rand(taps, (size_t)(L + 1) * r, seed + (uint64_t)it, it % 2 ? 0.1f : 3.0f);
		spa_plugin_side_chain_fused(p, taps, a, s1);
		spa_plugin_side_chain(p, taps, b, s2);
		cr_assert_eq(memcmp(a, b, sizeof(float) * r), 0, "H %u r %u iteration %d",
			     p->n_embd, r, it);
	}
	/* relu_s may alias taps[0..r), as for spa_plugin_side_chain: the same bits as into a
	 * separate output (b) */
	memcpy(b, a, sizeof(float) * r);
	spa_plugin_side_chain_fused(p, taps, taps, s1);
	cr_assert_eq(memcmp(taps, b, sizeof(float) * r), 0, "H %u r %u aliased", p->n_embd, r);
	spa_plugin_side_chain(p, taps + 0, a, s2); /* taps[0..r) is now relu(s): just run it */
	(void)a;
	free(taps), free(a), free(b), free(s1), free(s2);
}

Test(plugin, fused_side_chain_equals_the_plugin_bit_for_bit)
{
	struct spa_plugin *p = load_ok(tu_tiny_plugin("side"));
	chain_case(p, 31);
	/* odd sizes: H with a partial group of 8 and not a multiple of 32, odd rank */
	const uint32_t dims[][3] = { { 3, 100, 5 }, { 2, 37, 1 }, { 1, 8, 3 }, { 2, 64, 32 } };
	for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
		struct spa_plugin q = { .kind = SPA_PLUGIN_SIDE, .n_layers = dims[d][0],
					.n_embd = dims[d][1], .rank = dims[d][2] };
		size_t L = q.n_layers, H = q.n_embd, r = q.rank;
		q.up_w = malloc(sizeof(float) * L * H * r);
		q.up_b = malloc(sizeof(float) * L * H);
		q.down_w = malloc(sizeof(float) * L * r * H);
		q.down_b = malloc(sizeof(float) * L * r);
		tu_rand(q.up_w, L * H * r, 40 + d, 0.7f);
		tu_rand(q.up_b, L * H, 50 + d, 0.2f);
		tu_rand(q.down_w, L * r * H, 60 + d, 0.3f);
		tu_rand(q.down_b, L * r, 70 + d, 0.2f);
		chain_case(&q, 80 + d);
		free(q.up_w), free(q.up_b), free(q.down_w), free(q.down_b);
	}
	spa_plugin_destroy(p);
}

static void check_cloud_part(const struct spa_plugin *p, enum spa_split s)
{
	struct spa_errbuf err = { { 0 } };
	void *img = NULL;
	size_t size = 0;
	cr_assert_eq(spa_plugin_write_cloud_part(p, s, &img, &size, &err), 0, "%s", err.msg);

	/* Exactly the tensors this split puts on the cloud, by name. */
	struct spa_gguf *g = NULL;
	cr_assert_eq(spa_gguf_open_mem(&g, img, size, &err), 0, "%s", err.msg);
	uint64_t L = p->n_layers;
	uint64_t want_n = s == SPA_SPLIT_EDGE_ALL ? 2 : 2 + 2 * L + 2 + 2;
	cr_assert_eq(g->n_tensors, want_n);
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const char *name = g->tensors[i].name.data;
		bool cls = strncmp(name, "side.cls.", 9) == 0;
		bool lin = strncmp(name, "side.in.", 8) == 0 || strncmp(name, "side.out.", 9) == 0 ||
			   (strncmp(name, "side.blk.", 9) == 0 && strstr(name, ".tap."));
		cr_assert(s == SPA_SPLIT_EDGE_ALL ? cls : cls || lin, "%s in a %s part", name,
			  spa_split_name(s));
	}
	const char *split = NULL;
	cr_assert_eq(spa_gguf_get_str(g, "spa.plugin.cloud_split", &split, &err), 0);
	cr_assert_str_eq(split, spa_split_name(s));
	cr_assert_null(spa_gguf_find_kv(g, "tokenizer.ggml.model"));
	spa_gguf_close(g);

	struct spa_plugin *q = NULL;
	cr_assert_eq(spa_plugin_load_mem(&q, img, size, &err), 0, "%s", err.msg);
	memset(img, 0xff, size); /* the loaded part owns copies */
	free(img);
	cr_assert_eq(q->part, SPA_PART_CLOUD);
	cr_assert_eq(q->kind, SPA_PLUGIN_SIDE);
	cr_assert_eq(q->rank, p->rank);
	cr_assert_eq(q->n_params, p->n_params);
	cr_assert_str_eq(q->fingerprint, p->fingerprint);
	cr_assert_str_eq(q->base_fingerprint, p->base_fingerprint);
	cr_assert_null(q->tok);
	/* The edge's private weights never reach the cloud. */
	cr_assert_null(q->up_w);
	cr_assert_null(q->up_b);
	cr_assert_null(q->down_w);
	cr_assert_null(q->down_b);
	size_t H = p->n_embd, r = p->rank;
	cr_assert_eq(memcmp(q->cls_w, p->cls_w, 2 * H * sizeof(float)), 0);
	cr_assert_eq(memcmp(q->cls_b, p->cls_b, 2 * sizeof(float)), 0);
	if (s == SPA_SPLIT_EDGE_ALL) {
		cr_assert_null(q->in_w);
		cr_assert_null(q->tap_w);
		cr_assert_null(q->out_w);
	} else {
		cr_assert_eq(memcmp(q->in_w, p->in_w, r * H * sizeof(float)), 0);
		cr_assert_eq(memcmp(q->in_b, p->in_b, r * sizeof(float)), 0);
		cr_assert_eq(memcmp(q->tap_w, p->tap_w, L * r * H * sizeof(float)), 0);
		cr_assert_eq(memcmp(q->tap_b, p->tap_b, L * r * sizeof(float)), 0);
		cr_assert_eq(memcmp(q->out_w, p->out_w, H * r * sizeof(float)), 0);
		cr_assert_eq(memcmp(q->out_b, p->out_b, H * sizeof(float)), 0);
	}
	spa_plugin_destroy(q);
}

Test(plugin, cloud_part_round_trip_both_splits)
{
	struct spa_plugin *p = load_ok(tu_tiny_plugin("side"));
	check_cloud_part(p, SPA_SPLIT_CLOUD_LINEAR);
	check_cloud_part(p, SPA_SPLIT_EDGE_ALL);
	spa_plugin_destroy(p);
	/* Odd sizes, by hand. */
	p = hand_plugin(SPA_PLUGIN_SIDE, 3, 37, 11, 5, 4242);
	p->n_params = 12345;
	check_cloud_part(p, SPA_SPLIT_CLOUD_LINEAR);
	check_cloud_part(p, SPA_SPLIT_EDGE_ALL);
	spa_plugin_destroy(p);

	/* Only side plugins have one. */
	struct spa_plugin *l = load_ok(tu_tiny_plugin("lora"));
	struct spa_errbuf err = { { 0 } };
	void *img = NULL;
	size_t size = 0;
	cr_assert_eq(spa_plugin_write_cloud_part(l, SPA_SPLIT_CLOUD_LINEAR, &img, &size, &err),
		     -SPA_EUSAGE);
	spa_plugin_destroy(l);
}

/* ---- malformed plugins ---- */

/* Rewrite a plugin file with one thing changed; returns a memory image (free()). */
struct mods {
	const char *drop_tensor;     /* leave this tensor out */
	const char *drop_kv_prefix;  /* leave out keys starting with this */
	const char *str_key, *str_val; /* set (or add) string keys */
	const char *str_key2, *str_val2;
	const char *str_key3, *str_val3;
	const char *u32_key;         /* set (or add) a u32 key */
	uint32_t u32_val;
	const char *reshape_tensor;  /* swap ne[0] and ne[1] (or make a vector 2-D) */
	const char *f16_tensor;      /* store this tensor as F16 */
	const char *extra_tensor;    /* add a stray 4-float tensor of this name */
};

static void *rewrite(const char *src, const struct mods *md, size_t *out_size)
{
	struct spa_errbuf err = { { 0 } };
	struct spa_gguf *g = NULL;
	void *data = NULL, *img = NULL;
	size_t data_size = 0;
	cr_assert_eq(spa_gguf_open(&g, src, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gguf_load_data(g, &data, &data_size, false, &err), 0, "%s", err.msg);
	struct spa_gguf_writer *w = NULL;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	const char *sk[3] = { md->str_key, md->str_key2, md->str_key3 };
	const char *sv[3] = { md->str_val, md->str_val2, md->str_val3 };
	bool str_done[3] = { false, false, false }, u32_done = false;
	for (uint64_t i = 0; i < g->n_kv; i++) {
		const struct spa_gguf_kv *kv = &g->kv[i];
		const char *key = kv->key.data;
		if (md->drop_kv_prefix && strncmp(key, md->drop_kv_prefix,
						  strlen(md->drop_kv_prefix)) == 0)
			continue;
		int si = -1;
		for (int j = 0; j < 3; j++)
			if (sk[j] && strcmp(key, sk[j]) == 0)
				si = j;
		if (si >= 0) {
			cr_assert_eq(spa_gguf_writer_set_str(w, key, sv[si]), 0);
			str_done[si] = true;
		} else if (md->u32_key && strcmp(key, md->u32_key) == 0) {
			cr_assert_eq(spa_gguf_writer_set_u32(w, key, md->u32_val), 0);
			u32_done = true;
		} else {
			cr_assert_eq(spa_gguf_writer_copy_kv(w, kv), 0);
		}
	}
	for (int j = 0; j < 3; j++)
		if (sk[j] && !str_done[j])
			cr_assert_eq(spa_gguf_writer_set_str(w, sk[j], sv[j]), 0);
	if (md->u32_key && !u32_done)
		cr_assert_eq(spa_gguf_writer_set_u32(w, md->u32_key, md->u32_val), 0);
	uint16_t *half = NULL;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		const char *name = t->name.data;
		const float *src_data = (const float *)((const char *)data + t->offset);
		uint64_t ne[4] = { t->ne[0], t->ne[1], t->ne[2], t->ne[3] };
		uint32_t nd = t->n_dims;
		if (md->drop_tensor && strcmp(name, md->drop_tensor) == 0)
			continue;
		if (md->reshape_tensor && strcmp(name, md->reshape_tensor) == 0) {
			if (nd == 1) {
				ne[1] = 1;
				nd = 2;
				ne[0] = t->ne[0] / 2;
				ne[1] = 2;
			} else {
				ne[0] = t->ne[1];
				ne[1] = t->ne[0];
			}
		}
		if (md->f16_tensor && strcmp(name, md->f16_tensor) == 0) {
			half = malloc(t->n_elems * sizeof *half);
			for (uint64_t j = 0; j < t->n_elems; j++)
				half[j] = spa_fp32_to_fp16(src_data[j]);
			cr_assert_eq(spa_gguf_writer_add_tensor(w, name, SPA_TYPE_F16, nd, ne, half), 0);
			continue;
		}
		cr_assert_eq(spa_gguf_writer_add_tensor(w, name, SPA_TYPE_F32, nd, ne, src_data), 0);
	}
	static const float stray[4] = { 1, 2, 3, 4 };
	if (md->extra_tensor) {
		uint64_t ne[1] = { 4 };
		cr_assert_eq(spa_gguf_writer_add_tensor(w, md->extra_tensor, SPA_TYPE_F32, 1, ne,
							stray), 0);
	}
	cr_assert_eq(spa_gguf_writer_write_mem(w, &img, out_size, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	free(half);
	free(data);
	spa_gguf_close(g);
	return img;
}

static void expect_refused(const char *src, const struct mods *md, const char *needle)
{
	size_t size = 0;
	void *img = rewrite(src, md, &size);
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = { { 0 } };
	int rc = spa_plugin_load_mem(&p, img, size, &err);
	free(img);
	cr_assert_eq(rc, -SPA_EMODEL, "expected -SPA_EMODEL (%s), got %d: %s", needle, rc, err.msg);
	cr_assert_null(p);
	cr_assert_not_null(strstr(err.msg, needle), "message lacks \"%s\": %s", needle, err.msg);
	cr_assert_not_null(strstr(err.msg, ": "), "%s", err.msg);
}

Test(plugin, malformed_plugins_are_refused_with_a_reason)
{
	const char *side = tu_tiny_plugin("side"), *lora = tu_tiny_plugin("lora");
	const char *adapter = tu_tiny_plugin("adapter");

	/* The unmodified rewrite loads: the refusals below are the modification's. */
	struct mods none = { 0 };
	size_t size = 0;
	void *img = rewrite(side, &none, &size);
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = { { 0 } };
	cr_assert_eq(spa_plugin_load_mem(&p, img, size, &err), 0, "%s", err.msg);
	spa_plugin_destroy(p);
	free(img);

	expect_refused(side, &(struct mods){ .drop_tensor = "side.blk.1.up.bias" },
		       "side.blk.1.up.bias");
	expect_refused(lora, &(struct mods){ .drop_tensor = "blk.0.lora_v_b" }, "blk.0.lora_v_b");
	expect_refused(side, &(struct mods){ .reshape_tensor = "side.blk.2.tap.weight" },
		       "side.blk.2.tap.weight");
	expect_refused(side, &(struct mods){ .reshape_tensor = "side.cls.bias" }, "side.cls.bias");
	expect_refused(adapter, &(struct mods){ .reshape_tensor = "blk.3.adapter_ffn.up.weight" },
		       "blk.3.adapter_ffn.up.weight");
	expect_refused(side, &(struct mods){ .f16_tensor = "side.in.weight" }, "f32");
	expect_refused(side, &(struct mods){ .str_key = "spa.plugin.kind", .str_val = "sidecar" },
		       "sidecar");
	/* A side plugin that claims to be LoRA has none of LoRA's tensors. */
	expect_refused(side, &(struct mods){ .str_key = "spa.plugin.kind", .str_val = "lora" },
		       "lora");
	expect_refused(side, &(struct mods){ .str_key = "spa.plugin.base_fingerprint",
					     .str_val = "0123456789ABCDEF" }, "base_fingerprint");
	expect_refused(side, &(struct mods){ .str_key = "spa.plugin.base_fingerprint",
					     .str_val = "0123456789abcde" }, "base_fingerprint");
	expect_refused(side, &(struct mods){ .drop_kv_prefix = "spa.plugin.base_fingerprint" },
		       "base_fingerprint");
	expect_refused(side, &(struct mods){ .str_key = "general.architecture",
					     .str_val = "llama" }, "spa-plugin");
	expect_refused(side, &(struct mods){ .u32_key = "spa.plugin.rank", .u32_val = 0 }, "rank");
	expect_refused(side, &(struct mods){ .u32_key = "spa.plugin.rank", .u32_val = 5000 },
		       "rank");
	expect_refused(lora, &(struct mods){ .u32_key = "spa.plugin.base.kv_length",
					     .u32_val = 100000 }, "kv_dim");
	expect_refused(side, &(struct mods){ .u32_key = "spa.plugin.base.block_count",
					     .u32_val = 0 }, "L=0");
	expect_refused(side, &(struct mods){ .str_key = "spa.plugin.part", .str_val = "half" },
		       "half");
	expect_refused(side, &(struct mods){ .drop_kv_prefix = "tokenizer." }, "tokenizer");
	expect_refused(lora, &(struct mods){ .extra_tensor = "blk.0.lora_k_a" }, "tensors");
	/* A full plugin relabelled as a cloud part carries the edge's weights: refused. */
	struct mods cloud = { .str_key = "spa.plugin.part", .str_val = "cloud",
			      .u32_key = "spa.plugin.n_params", .u32_val = 1 };
	expect_refused(side, &cloud, "cloud_split");
	cloud.str_key2 = "spa.plugin.cloud_split";
	cloud.str_val2 = "edge-all";
	cloud.str_key3 = "spa.plugin.fingerprint";
	cloud.str_val3 = "00000000deadbeef";
	expect_refused(side, &cloud, "tensors");
	cloud.str_val2 = "edge-most";
	expect_refused(side, &cloud, "edge-most");
}

Test(plugin, refuses_a_base_model_and_missing_files)
{
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = { { 0 } };
	int rc = spa_plugin_load(&p, tu_tiny_model(), &err);
	cr_assert_eq(rc, -SPA_EMODEL, "%d: %s", rc, err.msg);
	cr_assert_not_null(strstr(err.msg, "spa-plugin"), "%s", err.msg);
	cr_assert_null(p);
	rc = spa_plugin_load(&p, "/nonexistent/plugin.gguf", &err);
	cr_assert_lt(rc, 0);
	cr_assert_null(p);
	const char junk[] = "GGUF but not really a gguf file at all";
	rc = spa_plugin_load_mem(&p, junk, sizeof junk, &err);
	cr_assert_lt(rc, 0);
	cr_assert_null(p);
}

/* ---- calibration ---- */

static const char calib_prompt[] = "Hello world. The cat sat on the mat and looked at the sky.";

/* The calibration positions redone here: the prompt, then greedy tokens, one at a time. For
 * each, gate p on f; returns the count with sigma = 1. Also the mean squares of f and g. */
static uint32_t side_count(const struct spa_model *m, const struct spa_plugin *p, uint32_t n,
			   double *f_ms, double *g_ms)
{
	const uint32_t H = m->hp.n_embd, V = m->hp.n_vocab, L = m->hp.n_layers, r = p->rank;
	int32_t ids[256];
	uint32_t n_ids = 0;
	cr_assert_eq(spa_tokenizer_encode(m->tok, calib_prompt, true, ids, 256, &n_ids), 0);
	struct spa_context *e = NULL;
	cr_assert_eq(spa_context_create(&e, m, NULL, n, 1), 0);
	float *logits = malloc(V * sizeof *logits), *g = malloc(H * sizeof *g);
	float *scratch = malloc(((L + 1) * r + r + H) * sizeof *scratch);
	uint32_t count = 0;
	double fs = 0, gs = 0;
	int32_t tok = ids[0];
	for (uint32_t pos = 0; pos < n; pos++) {
		cr_assert_eq(spa_engine_forward(e, &tok, 1, NULL), 0);
		const float *f = spa_context_final(e);
		count += spa_plugin_gate(p, f, NULL) == 1;
		spa_plugin_side_full(p, spa_context_resid(e), g, scratch);
		for (uint32_t j = 0; j < H; j++) {
			fs += (double)f[j] * f[j];
			gs += (double)g[j] * g[j];
		}
		if (pos + 1 < n_ids) {
			tok = ids[pos + 1];
		} else {
			spa_engine_logits(e, f, logits);
			int32_t best = 0;
			for (uint32_t v = 1; v < V; v++)
				if (logits[v] > logits[best])
					best = (int32_t)v;
			tok = best;
		}
	}
	*f_ms = fs / ((double)n * H);
	*g_ms = gs / ((double)n * H);
	free(logits);
	free(g);
	free(scratch);
	spa_context_destroy(e);
	return count;
}

Test(plugin, calibration_sets_the_side_fraction)
{
	struct spa_model *m = tiny_model();
	char *dir = tu_tmpdir();
	const uint32_t n = 37;
	const float fractions[] = { 0.5f, 0.0f, 1.0f, 0.3f };
	for (size_t i = 0; i < sizeof fractions / sizeof *fractions; i++) {
		char path[128];
		snprintf(path, sizeof path, "%s/side-%zu.gguf", dir, i);
		struct spa_errbuf err = { { 0 } };
		struct spa_plugin_gen_params gp = {
			.kind = SPA_PLUGIN_SIDE, .rank = 7, .seed = 5 + i,
			.side_fraction = fractions[i], .calib_prompt = calib_prompt,
			.calib_tokens = n,
		};
		cr_assert_eq(spa_plugin_generate(m, &gp, path, &err), 0, "%s", err.msg);

		struct spa_gguf *g = NULL;
		cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
		float sf = -1;
		uint32_t cp = 0;
		cr_assert_eq(spa_gguf_get_f32(g, "spa.plugin.side_fraction", &sf, &err), 0);
		cr_assert_eq(spa_gguf_get_u32(g, "spa.plugin.calib_positions", &cp, &err), 0);
		cr_assert_eq(sf, fractions[i]);
		cr_assert_eq(cp, n);
		spa_gguf_close(g);

		struct spa_plugin *p = load_ok(path);
		cr_assert_eq(p->rank, 7);
		double f_ms, g_ms;
		uint32_t count = side_count(m, p, n, &f_ms, &g_ms);
		double got = (double)count / n;
		cr_assert(fabs(got - fractions[i]) <= 1.0 / n + 1e-9,
			  "fraction %g: %u of %u positions on the side path", (double)fractions[i],
			  count, n);
		if (fractions[i] == 0.0f)
			cr_assert_eq(count, 0);
		if (fractions[i] == 1.0f)
			cr_assert_eq(count, n);
		/* W_out is scaled so that the side output is about as large as f. */
		double ratio = sqrt(g_ms / f_ms);
		cr_assert(ratio > 0.5 && ratio < 2.0, "RMS(g)/RMS(f) = %g", ratio);
		spa_plugin_destroy(p);
	}

	/* Uncalibrated: no bias, no calibration keys. */
	char path[128];
	snprintf(path, sizeof path, "%s/side-raw.gguf", dir);
	struct spa_errbuf err = { { 0 } };
	struct spa_plugin_gen_params gp = { .kind = SPA_PLUGIN_SIDE, .seed = 9,
					    .side_fraction = -1.0f, .calib_tokens = 8 };
	cr_assert_eq(spa_plugin_generate(m, &gp, path, &err), 0, "%s", err.msg);
	struct spa_plugin *p = load_ok(path);
	cr_assert_eq(p->cls_b[0], 0.0f);
	cr_assert_eq(p->cls_b[1], 0.0f);
	spa_plugin_destroy(p);
	struct spa_gguf *g = NULL;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	cr_assert_null(spa_gguf_find_kv(g, "spa.plugin.side_fraction"));
	spa_gguf_close(g);
	spa_model_destroy(m);
}
