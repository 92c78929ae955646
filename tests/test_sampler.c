/* Tests of the sampler (runtime/sampler.c). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

static struct spa_sampler *make(uint32_t n_vocab, float temp, uint32_t top_k, float top_p,
				uint64_t seed)
{
	struct spa_sampler *s;
	struct spa_sampler_params p = { .temp = temp, .top_k = top_k, .top_p = top_p, .seed = seed };
	cr_assert_eq(spa_sampler_create(&s, n_vocab, &p), 0);
	return s;
}

static int32_t sample_copy(struct spa_sampler *s, const float *logits, uint32_t n)
{
	float *tmp = malloc(n * sizeof(float));
	memcpy(tmp, logits, n * sizeof(float));
	int32_t t = spa_sampler_sample(s, tmp);
	free(tmp);
	return t;
}

static uint32_t ref_argmax(const float *x, uint32_t n)
{
	uint32_t b = 0;
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

Test(sampler, greedy_is_argmax_lowest_index_on_ties)
{
	static const uint32_t sizes[] = { 1, 7, 33, 1000, 32001 };
	for (size_t k = 0; k < 5; k++) {
		uint32_t n = sizes[k];
		float *l = malloc(n * sizeof(float));
		struct spa_sampler *s = make(n, 0.0f, 0, 1.0f, 7);
		for (int it = 0; it < 20; it++) {
			tu_rand(l, n, it * 100 + n, 10.0f);
			if (n > 3 && it % 2) /* a tie for the maximum */
				l[n / 2] = l[n - 1] = 11.0f;
			cr_assert_eq(sample_copy(s, l, n), (int32_t)ref_argmax(l, n));
		}
		spa_sampler_destroy(s);
		free(l);
	}
}

Test(sampler, same_seed_same_tokens_different_seeds_differ)
{
	const uint32_t n = 1000;
	float *l = malloc(n * sizeof(float));
	struct spa_sampler *a = make(n, 0.8f, 40, 0.9f, 99), *b = make(n, 0.8f, 40, 0.9f, 99);
	struct spa_sampler *c = make(n, 0.8f, 40, 0.9f, 100);
	struct spa_sampler *d = make(n, 1.0f, 0, 1.0f, 5), *e = make(n, 1.0f, 0, 1.0f, 5);
	int differ = 0;
	for (int it = 0; it < 300; it++) {
		tu_rand(l, n, it, 3.0f);
		int32_t ta = sample_copy(a, l, n);
		cr_assert_eq(ta, sample_copy(b, l, n), "step %d", it);
		differ += ta != sample_copy(c, l, n);
		cr_assert_eq(sample_copy(d, l, n), sample_copy(e, l, n));
		cr_assert(ta >= 0 && ta < (int32_t)n);
	}
	cr_assert_gt(differ, 30, "seeds 99 and 100 gave nearly the same tokens (%d/300)", differ);
	spa_sampler_destroy(a);
	spa_sampler_destroy(b);
	spa_sampler_destroy(c);
	spa_sampler_destroy(d);
	spa_sampler_destroy(e);
	spa_sampler_destroy(NULL);
	free(l);
}

Test(sampler, top_k_1_and_tiny_top_p_are_greedy)
{
	static const uint32_t sizes[] = { 1, 2, 7, 257, 5003 };
	for (size_t k = 0; k < 5; k++) {
		uint32_t n = sizes[k];
		float *l = malloc(n * sizeof(float));
		struct spa_sampler *sk = make(n, 1.5f, 1, 1.0f, k);
		struct spa_sampler *sp = make(n, 1.5f, 0, 1e-6f, k);
		struct spa_sampler *skp = make(n, 0.7f, 5, 1e-6f, k);
		for (int it = 0; it < 50; it++) {
			tu_rand(l, n, it * 7 + n, 4.0f);
			if (n > 2 && it % 3 == 0) /* tie for the top: the lower index is "greedy" */
				l[1] = l[n - 1] = 5.0f;
			int32_t g = (int32_t)ref_argmax(l, n);
			cr_assert_eq(sample_copy(sk, l, n), g, "top-k 1, n=%u", n);
			cr_assert_eq(sample_copy(sp, l, n), g, "top-p tiny, n=%u", n);
			cr_assert_eq(sample_copy(skp, l, n), g, "top-k 5 + top-p tiny, n=%u", n);
		}
		spa_sampler_destroy(sk);
		spa_sampler_destroy(sp);
		spa_sampler_destroy(skp);
		free(l);
	}
}

/* Pearson's statistic of counts against expected probabilities (cells with p = 0 must stay
 * empty). The bound is far in the tail (p < 1e-6 for these degrees of freedom), and the seed is
 * fixed, so the test cannot flake; a wrong distribution exceeds it by orders of magnitude. */
static void check_distribution(struct spa_sampler *s, const float *logits, const double *p,
			       uint32_t n, int draws)
{
	int counts[16] = { 0 };
	for (int i = 0; i < draws; i++) {
		int32_t t = sample_copy(s, logits, n);
		cr_assert(t >= 0 && t < (int32_t)n);
		counts[t]++;
	}
	double chi2 = 0;
	int df = -1;
	for (uint32_t i = 0; i < n; i++) {
		if (p[i] == 0) {
			cr_assert_eq(counts[i], 0, "token %u has probability 0 but was drawn", i);
			continue;
		}
		double e = p[i] * draws;
		chi2 += (counts[i] - e) * (counts[i] - e) / e;
		df++;
	}
	/* chi-square tail at 1e-6: about 24 (df 1) .. 42 (df 9); use 25 + 2 df */
	cr_assert(chi2 < 25 + 2.0 * df, "chi2 %.1f with %d degrees of freedom", chi2, df);
}

Test(sampler, draws_follow_the_softmax_with_temperature_top_k_and_top_p)
{
	const float logits[9] = { 1.0f, 2.5f, 0.0f, -1.0f, 2.0f, 0.5f, 2.5f, -3.0f, 1.5f };
	const uint32_t n = 9;
	double p[9];

	for (int ti = 0; ti < 2; ti++) {
		float temp = ti ? 0.5f : 1.0f;
		double z = 0;
		for (uint32_t i = 0; i < n; i++)
			z += p[i] = exp(logits[i] / temp);
		for (uint32_t i = 0; i < n; i++)
			p[i] /= z;
		struct spa_sampler *s = make(n, temp, 0, 1.0f, 1234 + ti);
		check_distribution(s, logits, p, n, 200000);
		spa_sampler_destroy(s);
	}

	/* top-k 3: the two 2.5s and the 2.0, renormalised */
	double z = 2 * exp(2.5) + exp(2.0);
	for (uint32_t i = 0; i < n; i++)
		p[i] = (i == 1 || i == 6) ? exp(2.5) / z : i == 4 ? exp(2.0) / z : 0;
	struct spa_sampler *s = make(n, 1.0f, 3, 1.0f, 77);
	check_distribution(s, logits, p, n, 100000);
	spa_sampler_destroy(s);

	/* top-p: probabilities 0.5, 0.3, 0.15, 0.05; p = 0.75 keeps the first two (0.8) */
	const float lp[4] = { logf(0.3f), logf(0.05f), logf(0.5f), logf(0.15f) };
	double pp[4] = { 0.3 / 0.8, 0, 0.5 / 0.8, 0 };
	s = make(4, 1.0f, 0, 0.75f, 78);
	check_distribution(s, lp, pp, 4, 100000);
	spa_sampler_destroy(s);
	/* p = 0.85 needs the third too (0.95) */
	double pp3[4] = { 0.3 / 0.95, 0, 0.5 / 0.95, 0.15 / 0.95 };
	s = make(4, 1.0f, 0, 0.85f, 79);
	check_distribution(s, lp, pp3, 4, 100000);
	spa_sampler_destroy(s);
	/* top-k 3 then top-p 0.7 of the renormalised (0.5, 0.3, 0.15)/0.95: 0.526 + 0.316 */
	double pk[4] = { 0.3 / 0.8, 0, 0.5 / 0.8, 0 };
	s = make(4, 1.0f, 3, 0.7f, 80);
	check_distribution(s, lp, pk, 4, 100000);
	spa_sampler_destroy(s);
}

Test(sampler, large_vocab_top_p_matches_the_full_sort_definition)
{
	/* The sampler sorts only the tokens that can be in the nucleus; check its nucleus is the
	 * one of the plain definition by sampling with top_p and checking membership. */
	const uint32_t n = 20000;
	float *l = malloc(n * sizeof(float));
	tu_rand(l, n, 5, 6.0f);
	double *pr = malloc(n * sizeof(double));
	uint32_t *idx = malloc(n * sizeof(uint32_t));
	double z = 0, max = -INFINITY;
	for (uint32_t i = 0; i < n; i++)
		max = fmax(max, l[i]);
	for (uint32_t i = 0; i < n; i++)
		z += pr[i] = exp(l[i] - max);
	/* the nucleus by the definition: repeatedly take the most probable token left (lowest
	 * index on ties) until the mass reaches top_p */
	char *in = calloc(n, 1);
	double cum = 0;
	uint32_t m = 0;
	while (cum < 0.5 * z) {
		uint32_t b = UINT32_MAX;
		for (uint32_t i = 0; i < n; i++)
			if (!in[i] && (b == UINT32_MAX || pr[i] > pr[b]))
				b = i;
		in[b] = 1;
		idx[m++] = b;
		cum += pr[b];
	}
	cr_assert_gt(m, 10);
	struct spa_sampler *s = make(n, 1.0f, 0, 0.5f, 3);
	int distinct = 0;
	for (int it = 0; it < 1000; it++) {
		int32_t t = sample_copy(s, l, n);
		cr_assert(in[t], "token %d is outside the nucleus of %u tokens", t, m);
		distinct += in[t] == 1;
		in[t] = 2;
	}
	cr_assert_gt(distinct, (int)m / 8, "only %d of the %u nucleus tokens drawn", distinct, m);
	spa_sampler_destroy(s);
	free(l);
	free(pr);
	free(idx);
	free(in);
}

Test(sampler, masked_and_nan_logits_are_never_drawn)
{
	float l[6] = { -INFINITY, 1.0f, NAN, 1.0f, -INFINITY, 0.5f };
	struct spa_sampler *s = make(6, 1.0f, 0, 1.0f, 11);
	struct spa_sampler *sk = make(6, 1.0f, 2, 1.0f, 11);
	int seen[6] = { 0 };
	for (int i = 0; i < 3000; i++) {
		int32_t t = sample_copy(s, l, 6);
		cr_assert(t == 1 || t == 3 || t == 5, "drew token %d", t);
		seen[t]++;
		int32_t tk = sample_copy(sk, l, 6);
		cr_assert(tk == 1 || tk == 3, "top-k 2 drew token %d", tk);
	}
	cr_assert(seen[1] > 0 && seen[3] > 0 && seen[5] > 0);
	/* everything masked: still a valid, deterministic token */
	struct spa_sampler *s3 = make(3, 1.0f, 0, 0.9f, 11);
	float all[3] = { -INFINITY, -INFINITY, -INFINITY };
	cr_assert_eq(sample_copy(s3, all, 3), 0);
	float nans[3] = { NAN, NAN, NAN };
	cr_assert_eq(sample_copy(s3, nans, 3), 0);
	spa_sampler_destroy(s3);
	spa_sampler_destroy(s);
	spa_sampler_destroy(sk);
}

Test(sampler, top_k_above_vocab_and_top_p_above_one_are_off)
{
	const uint32_t n = 101;
	float l[101];
	tu_rand(l, n, 8, 2.0f);
	struct spa_sampler *a = make(n, 0.9f, 0, 1.0f, 4), *b = make(n, 0.9f, 1000, 1.0f, 4);
	struct spa_sampler *c = make(n, 0.9f, n, 3.0f, 4);
	for (int i = 0; i < 500; i++) {
		int32_t t = sample_copy(a, l, n);
		cr_assert_eq(t, sample_copy(b, l, n));
		cr_assert_eq(t, sample_copy(c, l, n));
	}
	spa_sampler_destroy(a);
	spa_sampler_destroy(b);
	spa_sampler_destroy(c);
}

Test(sampler, invalid_parameters_are_refused)
{
	struct spa_sampler *s = (struct spa_sampler *)1;
	struct spa_sampler_params bad[] = {
		{ .temp = -0.1f, .top_p = 1.0f },
		{ .temp = NAN, .top_p = 1.0f },
		{ .temp = INFINITY, .top_p = 1.0f },
		{ .temp = 1.0f, .top_p = 0.0f },
		{ .temp = 1.0f, .top_p = -0.5f },
		{ .temp = 1.0f, .top_p = NAN },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		cr_assert_eq(spa_sampler_create(&s, 10, &bad[i]), -SPA_EUSAGE, "case %zu", i);
		cr_assert_null(s);
		s = (struct spa_sampler *)1;
	}
	struct spa_sampler_params ok = { .temp = 0.0f, .top_p = 1.0f };
	cr_assert_eq(spa_sampler_create(&s, 0, &ok), -SPA_EUSAGE); /* empty vocabulary */
	cr_assert_eq(spa_sampler_create(&s, 10, NULL), -SPA_EUSAGE);
	cr_assert_eq(spa_sampler_create(&s, 10, &ok), 0);
	spa_sampler_destroy(s);
}
