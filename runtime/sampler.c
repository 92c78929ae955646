/* spa: token sampling (see include/spa/sampler.h).
 *
 * Pipeline for temp > 0: logits / temp -> top-k (the k largest, ties to the lower index) ->
 * softmax -> top-p (the smallest prefix of the probability-sorted tokens whose mass reaches
 * top_p) -> one uniform u in [0, 1) (53 bits) -> the first kept token whose cumulative mass
 * exceeds u times the kept mass. Every order is a total order (value, then index), so the same
 * logits, parameters and seed give the same token everywhere. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/kernels.h"
#include "spa/rng.h"
#include "spa/sampler.h"

/* ---- sampler -------------------------------------------------------------------------- */

struct cand {
	float v; /* scaled logit, then unnormalised probability */
	uint32_t i;
};

struct spa_sampler {
	uint32_t n_vocab;
	struct spa_sampler_params p;
	struct spa_rng rng;
	struct cand *c; /* [n_vocab] scratch */
};

/* Descending value, then ascending index: a total order (values are never NaN here). */
static int cand_cmp(const void *a_, const void *b_)
{
	const struct cand *a = a_, *b = b_;
	if (a->v != b->v)
		return a->v > b->v ? -1 : 1;
	return a->i < b->i ? -1 : a->i > b->i;
}

/* "a comes before b" in cand_cmp's order */
static inline int cand_before(const struct cand *a, const struct cand *b)
{
	return a->v > b->v || (a->v == b->v && a->i < b->i);
}

/* Sift down in a heap of k candidates. max = 0: a min-heap (root = the candidate that comes
 * last in cand_cmp's order), used to keep the k best; max = 1: a max-heap (root = the one that
 * comes first). */
static void sift_down(struct cand *h, uint32_t k, uint32_t j, int max)
{
	for (;;) {
		uint32_t l = 2 * j + 1, r = l + 1, m = j;
		if (l < k && (max ? cand_before(&h[l], &h[m]) : cand_before(&h[m], &h[l])))
			m = l;
		if (r < k && (max ? cand_before(&h[r], &h[m]) : cand_before(&h[m], &h[r])))
			m = r;
		if (m == j)
			return;
		struct cand t = h[j];
		h[j] = h[m];
		h[m] = t;
		j = m;
	}
}

/* The smallest prefix, in cand_cmp's order, of c[m] whose mass reaches target: moved to
 * c[0..returned count), in that order; *mass receives its mass. Heap selection costs
 * O(m + count log m), so a peaked distribution (a small nucleus) is cheap. */
static uint32_t nucleus(struct cand *c, uint32_t m, double target, double *mass)
{
	for (uint32_t j = m / 2; j-- > 0;)
		sift_down(c, m, j, 1);
	double cum = 0;
	uint32_t end = m; /* popped tokens collect in c[end..m), the best at c[m - 1] */
	while (end > 0) {
		struct cand t = c[0];
		c[0] = c[--end];
		c[end] = t;
		sift_down(c, end, 0, 1);
		cum += t.v;
		if (cum >= target)
			break;
	}
	uint32_t cnt = m - end;
	for (uint32_t a = end, b = m - 1; a < b; a++, b--) { /* best first */
		struct cand t = c[a];
		c[a] = c[b];
		c[b] = t;
	}
	memmove(c, c + end, cnt * sizeof(*c));
	*mass = cum;
	return cnt;
}

/* Keeps the k first candidates of c[n] in cand_cmp's order, sorted, in c[0..k). */
static void top_k(struct cand *c, uint32_t n, uint32_t k)
{
	for (uint32_t j = k / 2; j-- > 0;)
		sift_down(c, k, j, 0);
	for (uint32_t i = k; i < n; i++)
		if (cand_before(&c[i], &c[0])) {
			c[0] = c[i];
			sift_down(c, k, 0, 0);
		}
	qsort(c, k, sizeof(*c), cand_cmp);
}

int spa_sampler_create(struct spa_sampler **out, uint32_t n_vocab,
		       const struct spa_sampler_params *p)
{
	*out = NULL;
	if (n_vocab == 0 || !p)
		return -SPA_EUSAGE;
	if (!isfinite(p->temp) || p->temp < 0)
		return -SPA_EUSAGE; /* temperature must be a finite number >= 0 */
	if (isnan(p->top_p) || p->top_p <= 0)
		return -SPA_EUSAGE; /* top_p must be in (0, 1]; >= 1 turns it off */

	struct spa_sampler *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->c = malloc(sizeof(*s->c) * (size_t)n_vocab);
	if (!s->c) {
		free(s);
		return -ENOMEM;
	}
	s->n_vocab = n_vocab;
	s->p = *p;
	spa_rng_seed(&s->rng, p->seed);
	*out = s;
	return 0;
}

void spa_sampler_destroy(struct spa_sampler *s)
{
	if (!s)
		return;
	free(s->c);
	free(s);
}

int32_t spa_sampler_sample(struct spa_sampler *s, float *logits)
{
	uint32_t n = s->n_vocab;

	if (s->p.temp == 0)
		return (int32_t)spa_argmax(logits, n);

	struct cand *c = s->c;
	float max = -INFINITY;
	for (uint32_t i = 0; i < n; i++) {
		float v = logits[i] / s->p.temp;
		if (isnan(v))
			v = -INFINITY; /* a NaN logit is never picked (and keeps the order total) */
		c[i] = (struct cand){ v, i };
		if (v > max)
			max = v;
	}
	if (max == -INFINITY || max == INFINITY)
		return (int32_t)spa_argmax(logits, n); /* nothing to weigh: stay deterministic */

	uint32_t m = n;    /* candidates c[0..m) */
	int sorted = 0;
	if (s->p.top_k > 0 && s->p.top_k < n) {
		top_k(c, n, s->p.top_k);
		m = s->p.top_k;
		sorted = 1;
	}

	/* softmax, unnormalised: sum is the mass of c[0..m) */
	double sum = 0;
	for (uint32_t j = 0; j < m; j++) {
		c[j].v = expf(c[j].v - max);
		sum += c[j].v;
	}

	if (s->p.top_p < 1.0f && m > 1) {
		double target = (double)s->p.top_p * sum;
		if (!sorted) {
			/* Tokens below (1 - p) / (m - 1) of the mass cannot be in the nucleus: all
			 * of them together are less than 1 - p. Select among the others only. */
			double cut = (1.0 - (double)s->p.top_p) * sum / (double)(m - 1);
			if (cut > 1.0)
				cut = 1.0; /* the top token (exp(0) = 1) always stays */
			uint32_t k = 0;
			for (uint32_t j = 0; j < m; j++)
				if (c[j].v >= cut)
					c[k++] = c[j];
			m = nucleus(c, k, target, &sum);
		} else {
			double cum = 0;
			uint32_t j = 0;
			while (j < m) {
				cum += c[j++].v;
				if (cum >= target)
					break;
			}
			m = j;
			sum = cum;
		}
	}

	double u = (double)(spa_rng_next(&s->rng) >> 11) * 0x1.0p-53; /* [0, 1) */
	double r = u * sum, cum = 0;
	for (uint32_t j = 0; j < m; j++) {
		cum += c[j].v;
		if (cum > r)
			return (int32_t)c[j].i;
	}
	/* rounding left r at the very top of the mass: the last token with any */
	for (uint32_t j = m; j-- > 0;)
		if (c[j].v > 0)
			return (int32_t)c[j].i;
	return (int32_t)c[0].i;
}
