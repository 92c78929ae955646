/* Tests of the CPU kernels, the thread pool and pinning (kernels/cpu/, runtime/pin.c).
 *
 * Every kernel variant the CPU can run (scalar always, AVX2/FMA/F16C when present) is checked
 * against a naive double-precision reference on random inputs of odd sizes. Error bounds: a
 * float dot of n terms summed in k-way partial sums has an error below
 * (n/k + log2(k) + 2) * eps * sum|a_i b_i|; we allow (n/8 + 8) * eps * sum|a_i b_i| with k = 8
 * for the scalar variant (the AVX2 one uses 32 partial sums, so this bound also holds). */
#include <criterion/criterion.h>
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spa/spa.h"
#include "testutil.h"

#include "../kernels/cpu/kernels_impl.h"

static const uint32_t sizes[] = { 1, 7, 8, 31, 32, 33, 63, 257, 1000, 4099 };
#define N_SIZES (sizeof(sizes) / sizeof(sizes[0]))

/* The variants this CPU can run. */
static int variants(const struct spa_kernels_ops **v)
{
	int n = 0;
	v[n++] = &spa_kernels_ops_scalar;
	if (spa_kernels_cpu_has_avx2())
		v[n++] = &spa_kernels_ops_avx2;
	return n;
}

static const enum spa_dtype types[] = { SPA_TYPE_F32, SPA_TYPE_F16, SPA_TYPE_BF16 };

static size_t elem_size(enum spa_dtype t)
{
	return t == SPA_TYPE_F32 ? 4 : 2;
}

/* Random weights of type t; wf receives the exact float value of each element. */
static void *make_weights(enum spa_dtype t, size_t n, uint64_t seed, float *wf)
{
	tu_rand(wf, n, seed, 1.0f);
	void *w = malloc(n * elem_size(t) + 1);
	cr_assert_not_null(w);
	for (size_t i = 0; i < n; i++) {
		if (t == SPA_TYPE_F32) {
			((float *)w)[i] = wf[i];
		} else if (t == SPA_TYPE_F16) {
			((uint16_t *)w)[i] = spa_fp32_to_fp16(wf[i]);
			wf[i] = spa_fp16_to_fp32(((uint16_t *)w)[i]);
		} else {
			((uint16_t *)w)[i] = spa_fp32_to_bf16(wf[i]);
			wf[i] = spa_bf16_to_fp32(((uint16_t *)w)[i]);
		}
	}
	return w;
}

static double dot_ref(const float *a, const float *b, size_t n, double *abs_sum)
{
	double s = 0, as = 0;
	for (size_t i = 0; i < n; i++) {
		s += (double)a[i] * b[i];
		as += fabs((double)a[i] * b[i]);
	}
	*abs_sum = as;
	return s;
}

static double dot_bound(size_t n, double abs_sum)
{
	return ((double)n / 8 + 8) * FLT_EPSILON * abs_sum + 1e-30;
}

/* ---- conversions ---------------------------------------------------------------------- */

static double half_value(uint16_t h)
{
	int e = (h >> 10) & 0x1f, m = h & 0x3ff;
	double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
	return (h & 0x8000) ? -v : v;
}

Test(kernels, fp16_all_halves_convert_exactly_and_round_trip)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float f = spa_fp16_to_fp32((uint16_t)h);
		int e = (h >> 10) & 0x1f, m = h & 0x3ff;
		if (e == 0x1f && m) {
			cr_assert(isnan(f), "half %04x is a NaN", h);
		} else if (e == 0x1f) {
			cr_assert(isinf(f) && (signbit(f) != 0) == ((h & 0x8000) != 0), "half %04x", h);
		} else {
			cr_assert_eq((double)f, half_value((uint16_t)h), "half %04x -> %a", h, f);
			cr_assert_eq(!!signbit(f), !!(h & 0x8000), "sign of half %04x", h);
		}
		cr_assert_eq(spa_fp32_to_fp16(f), h, "half %04x does not round-trip (%04x)", h,
			     spa_fp32_to_fp16(f));
	}
}

/* Between two neighbouring halves: the midpoint goes to the even one, a float above it up,
 * a float below it down. Covers every rounding boundary, subnormals and overflow included. */
Test(kernels, fp16_rounds_to_nearest_even_at_every_boundary)
{
	for (uint32_t h = 0; h < 0x7c00; h++) {
		for (int neg = 0; neg < 2; neg++) {
			uint16_t s = neg ? 0x8000 : 0;
			double lo = half_value((uint16_t)h);
			double hi = h + 1 == 0x7c00 ? 65536.0 : half_value((uint16_t)(h + 1));
			float mid = (float)((lo + hi) / 2);
			cr_assert_eq((double)mid, (lo + hi) / 2); /* exact in a float */
			if (neg)
				mid = -mid;
			uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
			cr_assert_eq(spa_fp32_to_fp16(mid), s | even, "midpoint after %04x", h);
			float up = nextafterf(mid, neg ? -INFINITY : INFINITY);
			float down = nextafterf(mid, 0);
			cr_assert_eq(spa_fp32_to_fp16(up), s | (h + 1), "above mid after %04x", h);
			cr_assert_eq(spa_fp32_to_fp16(down), s | h, "below mid after %04x", h);
		}
	}
	cr_assert_eq(spa_fp32_to_fp16(1e30f), 0x7c00);
	cr_assert_eq(spa_fp32_to_fp16(-INFINITY), 0xfc00);
	cr_assert_eq(spa_fp32_to_fp16(1e-30f), 0);
	cr_assert_eq(spa_fp32_to_fp16(-0.0f), 0x8000);
	cr_assert(isnan(spa_fp16_to_fp32(spa_fp32_to_fp16(NAN))));
	/* a float NaN whose payload lives only in the low bits must stay a NaN */
	uint32_t nb = 0x7f800001u;
	float fnan;
	memcpy(&fnan, &nb, 4);
	cr_assert(isnan(spa_fp16_to_fp32(spa_fp32_to_fp16(fnan))));
}

__attribute__((target("f16c"))) static uint16_t hw_fp16(float f)
{
	return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

Test(kernels, fp16_matches_the_f16c_instruction_on_random_floats)
{
	__builtin_cpu_init();
	if (!__builtin_cpu_supports("f16c"))
		cr_skip_test("this CPU has no F16C instruction to compare with");
	struct spa_rng r;
	spa_rng_seed(&r, 42);
	for (int i = 0; i < 2000000; i++) {
		uint32_t b = (uint32_t)spa_rng_next(&r);
		if (i & 1) /* half the time, near the half range where rounding is interesting */
			b = (b & 0x807fffffu) | ((100 + ((b >> 23) & 0xff) % 46) << 23);
		float f;
		memcpy(&f, &b, 4);
		if (isnan(f))
			continue; /* the instruction quiets NaNs; ours keeps the payload */
		cr_assert_eq(spa_fp32_to_fp16(f), hw_fp16(f), "float %08x", b);
	}
}

Test(kernels, bf16_all_values_round_trip_and_round_to_nearest_even)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float f = spa_bf16_to_fp32((uint16_t)h);
		uint32_t b;
		memcpy(&b, &f, 4);
		cr_assert_eq(b, h << 16);
		cr_assert_eq(spa_fp32_to_bf16(f), h, "bf16 %04x does not round-trip", h);
		if ((h & 0x7f80) == 0x7f80 || (h & 0x7fff) == 0x7f7f)
			continue; /* inf/nan, or the largest finite (its upper neighbour is inf) */
		/* midpoint to the next bf16 of the same sign: to even; above: up; below: down */
		uint32_t mb = (h << 16) | 0x8000;
		float mid;
		memcpy(&mid, &mb, 4);
		uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
		cr_assert_eq(spa_fp32_to_bf16(mid), even, "midpoint after bf16 %04x", h);
		mb++;
		memcpy(&mid, &mb, 4);
		cr_assert_eq(spa_fp32_to_bf16(mid), (uint16_t)(h + 1));
		mb -= 2;
		memcpy(&mid, &mb, 4);
		cr_assert_eq(spa_fp32_to_bf16(mid), (uint16_t)h);
	}
	cr_assert_eq(spa_fp32_to_bf16(FLT_MAX), 0x7f80); /* rounds past the largest bf16 */
	cr_assert(isnan(spa_bf16_to_fp32(spa_fp32_to_bf16(NAN))));
}

Test(kernels, dequant_rows_match_the_element_conversions_in_every_variant)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v);
	uint16_t all[65536];
	float out[65536];
	for (uint32_t h = 0; h < 65536; h++)
		all[h] = (uint16_t)h;
	for (int k = 0; k < nv; k++) {
		/* odd lengths and offsets: the vector loops and their tails */
		for (uint32_t len = 1; len < 40; len += 3) {
			v[k]->dequant_row[SPA_TYPE_F16](all + 0x3a01, out, len);
			for (uint32_t i = 0; i < len; i++)
				cr_assert_eq(out[i], spa_fp16_to_fp32(all[0x3a01 + i]));
		}
		v[k]->dequant_row[SPA_TYPE_F16](all, out, 65536);
		for (uint32_t h = 0; h < 65536; h++) {
			float ref = spa_fp16_to_fp32((uint16_t)h);
			if (isnan(ref))
				cr_assert(isnan(out[h]), "%s: half %04x", v[k]->name, h);
			else
				cr_assert_eq(memcmp(&out[h], &ref, 4), 0, "%s: half %04x", v[k]->name, h);
		}
		v[k]->dequant_row[SPA_TYPE_BF16](all, out, 65535);
		for (uint32_t h = 0; h < 65535; h++) {
			float ref = spa_bf16_to_fp32((uint16_t)h);
			cr_assert_eq(memcmp(&out[h], &ref, 4), 0, "%s: bf16 %04x", v[k]->name, h);
		}
		float src[33], dst[33];
		tu_rand(src, 33, 5, 3.0f);
		v[k]->dequant_row[SPA_TYPE_F32](src, dst, 33);
		cr_assert_eq(memcmp(src, dst, sizeof src), 0);
	}
	/* the public entry point uses the chosen variant */
	spa_dequant_row(SPA_TYPE_F16, all + 100, out, 7);
	for (int i = 0; i < 7; i++)
		cr_assert_eq(out[i], spa_fp16_to_fp32(all[100 + i]));
}

/* ---- dot, matvec, matmul ---------------------------------------------------------------- */

Test(kernels, dot_of_every_type_and_variant_matches_double_reference)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v);
	for (size_t s = 0; s < N_SIZES; s++) {
		uint32_t n = sizes[s];
		float *x = malloc(n * 4), *wf = malloc(n * 4);
		tu_rand(x, n, 100 + n, 2.0f);
		for (size_t t = 0; t < 3; t++) {
			void *w = make_weights(types[t], n, 200 + n, wf);
			double as, ref = dot_ref(wf, x, n, &as);
			for (int k = 0; k < nv; k++) {
				float got = v[k]->dot[types[t]](w, x, n);
				cr_assert(fabs(got - ref) <= dot_bound(n, as),
					  "%s %s n=%u: %.9g vs %.9g", v[k]->name,
					  spa_dtype_name(types[t]), n, got, ref);
			}
			free(w);
		}
		free(x);
		free(wf);
	}
	/* the public dot is the chosen variant's f32 dot, bit for bit */
	float a[257], b[257];
	tu_rand(a, 257, 1, 1.0f);
	tu_rand(b, 257, 2, 1.0f);
	float p = spa_dot_f32(a, b, 257), q = spa_kernels_ops()->dot[SPA_TYPE_F32](a, b, 257);
	cr_assert_eq(memcmp(&p, &q, 4), 0);
	cr_assert_eq(spa_dot_f32(a, b, 0), 0.0f);
}

/* Reference rows of a matrix: y[r] = sum_c w[r][c] x[c] in double. */
static void check_matvec(const char *what, const float *wf, const float *x, const float *y,
			 uint32_t rows, uint32_t cols)
{
	for (uint32_t r = 0; r < rows; r++) {
		double as, ref = dot_ref(wf + (size_t)r * cols, x, cols, &as);
		cr_assert(fabs(y[r] - ref) <= dot_bound(cols, as), "%s row %u: %.9g vs %.9g", what,
			  r, y[r], ref);
	}
}

Test(kernels, matvec_matches_reference_and_is_identical_for_1_2_3_threads)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v);
	struct spa_pool *pools[3] = { NULL };
	cr_assert_eq(spa_pool_create(&pools[1], 2, NULL), 0);
	cr_assert_eq(spa_pool_create(&pools[2], 3, NULL), 0);
	static const uint32_t rows_l[] = { 1, 5, 37, 130 };
	for (size_t s = 0; s < N_SIZES; s++)
		for (size_t ri = 0; ri < 4; ri++) {
			uint32_t cols = sizes[s], rows = rows_l[ri];
			float *wf = malloc((size_t)rows * cols * 4), *x = malloc(cols * 4);
			float *y[3];
			for (int i = 0; i < 3; i++)
				y[i] = malloc(rows * 4);
			tu_rand(x, cols, 7 * cols + rows, 1.5f);
			for (size_t t = 0; t < 3; t++) {
				void *w = make_weights(types[t], (size_t)rows * cols, cols + 31 * rows, wf);
				struct spa_tensor ten = { types[t], cols, rows, w, 0 };
				for (int k = 0; k < nv; k++) {
					for (int p = 0; p < 3; p++) {
						memset(y[p], 0xff, rows * 4);
						spa_matvec_ops(v[k], pools[p], &ten, x, y[p]);
					}
					char what[64];
					snprintf(what, sizeof what, "%s %s %ux%u", v[k]->name,
						 spa_dtype_name(types[t]), rows, cols);
					check_matvec(what, wf, x, y[0], rows, cols);
					cr_assert_eq(memcmp(y[0], y[1], rows * 4), 0, "%s: 1 vs 2 threads", what);
					cr_assert_eq(memcmp(y[0], y[2], rows * 4), 0, "%s: 1 vs 3 threads", what);
				}
				if (t == 0) { /* public entry point = chosen variant */
					spa_matvec(pools[1], &ten, x, y[1]);
					spa_matvec_ops(spa_kernels_ops(), NULL, &ten, x, y[0]);
					cr_assert_eq(memcmp(y[0], y[1], rows * 4), 0);
				}
				free(w);
			}
			for (int i = 0; i < 3; i++)
				free(y[i]);
			free(wf);
			free(x);
		}
	spa_pool_destroy(pools[1]);
	spa_pool_destroy(pools[2]);
}

/* Threads that take rows from each other's shares (more threads than cores: most start late
 * or are preempted, and the others take their rows from the back): every row once, with the
 * one-thread bits, for matvec, items and SwiGLU, on row counts that are not whole groups. */
Test(kernels, rows_taken_from_other_threads_shares_are_each_computed_once)
{
	struct spa_pool *pool = NULL;
	cr_assert_eq(spa_pool_create(&pool, 7, NULL), 0);
	const uint32_t cols = 96;
	static const uint32_t rows_l[] = { 3, 29, 203, 1001 };
	for (size_t ri = 0; ri < 4; ri++) {
		const uint32_t rows = rows_l[ri];
		float *wf = malloc((size_t)rows * cols * 4), *x = malloc(cols * 4);
		float *want = malloc(rows * 4), *want2 = malloc(rows * 4), *got = malloc(rows * 4);
		float *got2 = malloc(rows * 4), *up = malloc(rows * 4);
		cr_assert(wf && x && want && want2 && got && got2 && up);
		tu_rand(x, cols, 3 + rows, 1.0f);
		void *w = make_weights(SPA_TYPE_F16, (size_t)rows * cols, 5 + rows, wf);
		void *w2 = make_weights(SPA_TYPE_F32, (size_t)rows * cols, 9 + rows, wf);
		struct spa_tensor a = { SPA_TYPE_F16, cols, rows, w, 0 };
		struct spa_tensor b = { SPA_TYPE_F32, cols, rows, w2, 0 };
		spa_matvec(NULL, &a, x, want);
		spa_matvec(NULL, &b, x, want2);
		for (int rep = 0; rep < 30; rep++) {
			memset(got, 0xff, rows * 4);
			spa_matvec(pool, &a, x, got);
			cr_assert_eq(memcmp(got, want, rows * 4), 0, "matvec, %u rows, run %d", rows,
				     rep);
			memset(got, 0xff, rows * 4);
			memset(got2, 0xff, rows * 4);
			const struct spa_matvec_item it[2] = { { &a, x, NULL, got }, { &b, x, NULL, got2 } };
			spa_matvec_items(pool, 2, it);
			cr_assert_eq(memcmp(got, want, rows * 4), 0, "items, %u rows, run %d", rows, rep);
			cr_assert_eq(memcmp(got2, want2, rows * 4), 0, "items, %u rows, run %d", rows,
				     rep);
			memset(got, 0xff, rows * 4);
			spa_matvec_swiglu(pool, &a, &b, x, got, up);
			for (uint32_t r = 0; r < rows; r++) {
				float s;
				spa_swiglu(&s, &want[r], &want2[r], 1);
				cr_assert_eq(spa__f32_bits(got[r]), spa__f32_bits(s),
					     "swiglu, %u rows, row %u, run %d", rows, r, rep);
			}
		}
		free(w), free(w2), free(wf), free(x), free(want), free(want2), free(got), free(got2);
		free(up);
	}
	spa_pool_destroy(pool);
}

Test(kernels, matmul_gives_the_bits_of_repeated_matvec)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v);
	struct spa_pool *pool;
	cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);
	static const uint32_t shapes[][3] = { /* rows, cols, batch */
		{ 1, 1, 1 }, { 7, 33, 3 }, { 130, 257, 5 }, { 67, 1000, 9 }, { 3, 4099, 2 },
		{ 300, 64, 17 },
	};
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
		uint32_t rows = shapes[s][0], cols = shapes[s][1], n = shapes[s][2];
		float *wf = malloc((size_t)rows * cols * 4), *x = malloc((size_t)n * cols * 4);
		float *y = malloc((size_t)n * rows * 4), *y1 = malloc(rows * 4);
		tu_rand(x, (size_t)n * cols, s + 1, 1.0f);
		for (size_t t = 0; t < 3; t++) {
			void *w = make_weights(types[t], (size_t)rows * cols, s + 77, wf);
			struct spa_tensor ten = { types[t], cols, rows, w, 0 };
			for (int k = 0; k < nv; k++) {
				for (int threads = 0; threads < 2; threads++) {
					spa_matmul_ops(v[k], threads ? pool : NULL, &ten, x, y, n);
					for (uint32_t b = 0; b < n; b++) {
						spa_matvec_ops(v[k], NULL, &ten, x + (size_t)b * cols, y1);
						cr_assert_eq(memcmp(y + (size_t)b * rows, y1, rows * 4), 0,
							     "%s %s %ux%u batch %u/%u", v[k]->name,
							     spa_dtype_name(types[t]), rows, cols, b, n);
					}
				}
			}
			spa_matmul(pool, &ten, x, y, n);
			spa_matvec(NULL, &ten, x + (size_t)(n - 1) * cols, y1);
			cr_assert_eq(memcmp(y + (size_t)(n - 1) * rows, y1, rows * 4), 0);
			free(w);
		}
		free(wf);
		free(x);
		free(y);
		free(y1);
	}
	spa_pool_destroy(pool);
}

Test(kernels, matvec_f32_with_and_without_bias_uses_the_dot_order)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v);
	static const uint32_t shapes[][2] = { { 1, 1 }, { 2, 33 }, { 32, 4099 }, { 13, 7 } };
	for (size_t s = 0; s < 4; s++) {
		uint32_t rows = shapes[s][0], cols = shapes[s][1];
		float *w = malloc((size_t)rows * cols * 4), *x = malloc(cols * 4);
		float b[32], y[32], yb[32];
		tu_rand(w, (size_t)rows * cols, s, 1.0f);
		tu_rand(x, cols, s + 10, 1.0f);
		tu_rand(b, rows, s + 20, 1.0f);
		for (int k = 0; k < nv; k++) {
			spa_matvec_f32_ops(v[k], w, NULL, x, y, rows, cols);
			spa_matvec_f32_ops(v[k], w, b, x, yb, rows, cols);
			check_matvec(v[k]->name, w, x, y, rows, cols);
			for (uint32_t r = 0; r < rows; r++) {
				float d = v[k]->dot[SPA_TYPE_F32](w + (size_t)r * cols, x, cols);
				cr_assert_eq(y[r], d);
				cr_assert_eq(yb[r], d + b[r]);
			}
		}
		spa_matvec_f32(w, b, x, y, rows, cols);
		spa_matvec_f32_ops(spa_kernels_ops(), w, b, x, yb, rows, cols);
		cr_assert_eq(memcmp(y, yb, rows * 4), 0);
		spa_matvec_f32_relu(w, b, x, y, rows, cols);
		for (uint32_t r = 0; r < rows; r++)
			cr_assert_eq(y[r], yb[r] > 0.0f ? yb[r] : 0.0f, "relu row %u", r);
		free(w);
		free(x);
	}
}

/* The float rows kernels (4 rows, one shuffle reduction) give each row the single-row dot's
 * bits, for 1..4 rows, every float type and awkward lengths. */
Test(kernels, rows_kernels_give_each_row_the_single_row_bits)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v), checked = 0;
	for (int k = 0; k < nv; k++) {
		for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
			if (!v[k]->dot_rows[types[t]])
				continue;
			for (size_t si = 0; si < N_SIZES; si++) {
				const uint32_t n = sizes[si];
				float *wf = malloc(sizeof(float) * 5 * n), *x = malloc(sizeof(float) * n);
				cr_assert(wf && x);
				void *w = make_weights(types[t], (size_t)5 * n, 40 + si, wf);
				tu_rand(x, n, 50 + si, 1.0f);
				const size_t rs = n * elem_size(types[t]);
				for (unsigned nr = 1; nr <= SPA_DOT_ROWS; nr++) {
					float y[SPA_DOT_ROWS];
					v[k]->dot_rows[types[t]]((const uint8_t *)w + rs, rs, x, n, y, nr);
					for (unsigned r = 0; r < nr; r++) {
						float d = v[k]->dot[types[t]]((const uint8_t *)w + (1 + r) * rs,
									     x, n);
						cr_assert_eq(memcmp(&d, &y[r], 4), 0,
							     "%s %s n %u: %u rows, row %u: %a vs %a",
							     v[k]->name, spa_dtype_name(types[t]), n, nr, r,
							     (double)d, (double)y[r]);
						checked++;
					}
				}
				free(w);
				free(wf);
				free(x);
			}
		}
	}
	/* the public strided form (attention scores over a KV cache): any row count */
	const uint32_t n = 64, stride = 256, rows = 23;
	float *k = malloc(sizeof(float) * stride * rows), *q = malloc(sizeof(float) * n), y[23];
	cr_assert(k && q);
	tu_rand(k, (size_t)stride * rows, 61, 1.0f);
	tu_rand(q, n, 62, 1.0f);
	spa_dot_f32_rows(k + 64, stride, q, n, y, rows);
	for (uint32_t r = 0; r < rows; r++) {
		float d = spa_dot_f32(k + 64 + (size_t)r * stride, q, n);
		cr_assert_eq(memcmp(&d, &y[r], 4), 0, "strided row %u: %a vs %a", r, (double)d,
			     (double)y[r]);
	}
	/* and its half form (a half KV cache): the F16 dot's bits */
	uint16_t *kh = malloc(sizeof(uint16_t) * stride * rows);
	cr_assert(kh);
	spa_fp16_row(kh, k, (size_t)stride * rows);
	spa_dot_f16_rows(kh + 64, stride, q, n, y, rows);
	for (uint32_t r = 0; r < rows; r++) {
		float d = spa_kernels_ops()->dot[SPA_TYPE_F16](kh + 64 + (size_t)r * stride, q, n);
		cr_assert_eq(memcmp(&d, &y[r], 4), 0, "half strided row %u: %a vs %a", r,
			     (double)d, (double)y[r]);
	}
	free(kh);
	free(k);
	free(q);
	if (!spa_kernels_cpu_has_avx2())
		cr_skip_test("this CPU lacks AVX2/FMA/F16C: no rows kernels to check");
	cr_assert_gt(checked, 200, "only %d rows checked", checked);
}

Test(kernels, variant_is_avx2_when_the_cpu_has_it)
{
	const char *v = spa_kernels_variant();
	cr_assert_str_eq(v, spa_kernels_cpu_has_avx2() ? "avx2-fma-f16c" : "scalar");
	cr_assert_eq(spa_kernels_ops(), spa_kernels_ops()); /* fixed for the process */
	cr_assert(spa_kernels_supports(SPA_TYPE_F32) && spa_kernels_supports(SPA_TYPE_F16) &&
		  spa_kernels_supports(SPA_TYPE_BF16));
	cr_assert(!spa_kernels_supports(SPA_TYPE_Q5_K) && !spa_kernels_supports(SPA_TYPE_I8));
}

/* Criterion runs each test in its own process, so the variant is still unchosen here. */
Test(kernels, env_forces_the_scalar_variant)
{
	setenv("SPA_KERNELS", "scalar", 1);
	cr_assert_str_eq(spa_kernels_variant(), "scalar");
	float a[9], b[9];
	tu_rand(a, 9, 3, 1.0f);
	tu_rand(b, 9, 4, 1.0f);
	float p = spa_dot_f32(a, b, 9), q = spa_dot_f32_scalar(a, b, 9);
	cr_assert_eq(memcmp(&p, &q, 4), 0);
}

/* ---- element-wise kernels ------------------------------------------------------------- */

Test(kernels, rmsnorm_matches_reference_in_place_too)
{
	const struct spa_kernels_ops *v[2];
	int nv = variants(v);
	for (size_t s = 0; s < N_SIZES; s++) {
		uint32_t n = sizes[s];
		float *x = malloc(n * 4), *w = malloc(n * 4), *out = malloc(n * 4);
		tu_rand(x, n, n, 3.0f);
		tu_rand(w, n, n + 1, 1.0f);
		double ss = 0;
		for (uint32_t i = 0; i < n; i++)
			ss += (double)x[i] * x[i];
		double scale = 1.0 / sqrt(ss / n + 1e-5);
		for (int k = 0; k < nv; k++) {
			spa_rmsnorm_ops(v[k], out, x, w, n, 1e-5f);
			for (uint32_t i = 0; i < n; i++) {
				double ref = x[i] * scale * w[i];
				double tol = ((double)n / 8 + 8) * FLT_EPSILON / 2 + 4 * FLT_EPSILON;
				cr_assert(fabs(out[i] - ref) <= tol * fabs(ref) + 1e-30,
					  "%s n=%u i=%u: %g vs %g", v[k]->name, n, i, out[i], ref);
			}
		}
		spa_rmsnorm(out, x, w, n, 1e-5f);
		spa_rmsnorm(x, x, w, n, 1e-5f); /* aliasing */
		cr_assert_eq(memcmp(out, x, n * 4), 0);
		free(x);
		free(w);
		free(out);
	}
	float z[5] = { 0 }, one[5] = { 1, 1, 1, 1, 1 };
	spa_rmsnorm(z, z, one, 5, 1e-6f); /* all zeros: eps keeps it finite */
	for (int i = 0; i < 5; i++)
		cr_assert_eq(z[i], 0.0f);
}

Test(kernels, rope_rotates_adjacent_pairs_like_the_reference)
{
	static const uint32_t dims[][2] = { { 1, 2 }, { 3, 8 }, { 4, 64 }, { 2, 128 }, { 5, 6 } };
	static const uint32_t positions[] = { 0, 1, 7, 100, 4095, 100000 };
	for (size_t d = 0; d < 5; d++)
		for (size_t pi = 0; pi < 6; pi++) {
			uint32_t nh = dims[d][0], hd = dims[d][1], pos = positions[pi];
			float base = d & 1 ? 500000.0f : 10000.0f;
			size_t n = (size_t)nh * hd;
			float *x = malloc(n * 4), *x0 = malloc(n * 4);
			tu_rand(x0, n, d * 10 + pi, 2.0f);
			memcpy(x, x0, n * 4);
			spa_rope(x, nh, hd, pos, base);
			/* the table form (the engine's, once per position): the same bits */
			float *x2 = malloc(n * 4), *cs = malloc(hd * 4);
			memcpy(x2, x0, n * 4);
			spa_rope_table(cs, hd, pos, base);
			spa_rope_apply(x2, nh, hd, cs);
			cr_assert_eq(memcmp(x, x2, n * 4), 0, "table form differs: heads %u dim %u pos %u",
				     nh, hd, pos);
			free(x2);
			free(cs);
			for (uint32_t h = 0; h < nh; h++)
				for (uint32_t i = 0; i < hd / 2; i++) {
					double th = pos * pow(base, -2.0 * i / hd);
					const float *p = x0 + h * hd + 2 * i;
					double r0 = p[0] * cos(th) - p[1] * sin(th);
					double r1 = p[0] * sin(th) + p[1] * cos(th);
					double mag = fabs(p[0]) + fabs(p[1]);
					cr_assert(fabs(x[h * hd + 2 * i] - r0) <= 4e-7 * mag + 1e-30 &&
						  fabs(x[h * hd + 2 * i + 1] - r1) <= 4e-7 * mag + 1e-30,
						  "heads %u dim %u pos %u pair %u", nh, hd, pos, i);
				}
			if (pos == 0)
				cr_assert_eq(memcmp(x, x0, n * 4), 0);
			free(x);
			free(x0);
		}
}

Test(kernels, softmax_matches_reference_and_sums_to_one)
{
	for (size_t s = 0; s < N_SIZES; s++) {
		uint32_t n = sizes[s];
		float *x = malloc(n * 4);
		tu_rand(x, n, n * 3, 20.0f);
		double max = -INFINITY, sum = 0;
		for (uint32_t i = 0; i < n; i++)
			max = fmax(max, x[i]);
		double *ref = malloc(n * sizeof(double));
		float *x0 = malloc(n * 4);
		memcpy(x0, x, n * 4);
		for (uint32_t i = 0; i < n; i++)
			sum += ref[i] = exp(x[i] - max);
		spa_softmax(x, n);
		double got = 0;
		for (uint32_t i = 0; i < n; i++) {
			/* x - max rounds in float: exp amplifies that into |x - max| ulps */
			double tol = 8 * FLT_EPSILON + fabs(x0[i] - max) * FLT_EPSILON;
			cr_assert(fabs(x[i] - ref[i] / sum) <= tol * ref[i] / sum + 1e-30,
				  "n=%u i=%u: %.9g vs %.9g", n, i, x[i], ref[i] / sum);
			got += x[i];
		}
		cr_assert(fabs(got - 1.0) < 1e-5, "n=%u sums to %.9g", n, got);
		free(x);
		free(x0);
		free(ref);
	}
	float big[3] = { 1000.0f, 1000.0f, -INFINITY }; /* no overflow; masked entry gets 0 */
	spa_softmax(big, 3);
	cr_assert_eq(big[0], 0.5f);
	cr_assert_eq(big[1], 0.5f);
	cr_assert_eq(big[2], 0.0f);
}

Test(kernels, swiglu_matches_reference_in_place_too)
{
	for (size_t s = 0; s < N_SIZES; s++) {
		uint32_t n = sizes[s];
		float *g = malloc(n * 4), *u = malloc(n * 4), *out = malloc(n * 4);
		tu_rand(g, n, n, 12.0f);
		tu_rand(u, n, n + 5, 2.0f);
		spa_swiglu(out, g, u, n);
		for (uint32_t i = 0; i < n; i++) {
			double ref = g[i] / (1 + exp(-(double)g[i])) * u[i];
			cr_assert(fabs(out[i] - ref) <= 1e-6 * fabs(ref) + 1e-30);
		}
		spa_swiglu(g, g, u, n);
		cr_assert_eq(memcmp(g, out, n * 4), 0);
		free(g);
		free(u);
		free(out);
	}
}

/* The kernels' exp (spa__expf, vectorized in swiglu and softmax): within 2 ulp of exp over
 * the whole range where the result is a normal float (about 1 ulp measured over every 3e-6
 * relative step of it), exact at 0, and the documented values outside it. */
Test(kernels, exp_is_within_2_ulp_of_exp_with_its_limits)
{
	double worst = 0;
	int checked = 0;
	for (float x = SPA_EXP_LO; x <= SPA_EXP_HI; x += fmaxf(fabsf(x) * 1e-4f, 1e-5f)) {
		const double r = exp((double)x), ulp = ldexp(1.0, ilogb(r) - 23);
		const double err = fabs((double)spa__expf(x) - r) / ulp;
		cr_assert(err <= 2.0, "exp(%.9g): %.9g vs %.17g (%.2f ulp)", x, spa__expf(x), r, err);
		worst = fmax(worst, err);
		checked++;
	}
	cr_assert_geq(checked, 100000);
	cr_log_info("spa__expf: worst %.3f ulp over %d points", worst, checked);
	cr_assert_eq(spa__expf(0.0f), 1.0f);
	cr_assert_eq(spa__expf(-0.0f), 1.0f);
	cr_assert(isinf(spa__expf(88.5f)) && spa__expf(88.5f) > 0);
	cr_assert(isinf(spa__expf(INFINITY)) && spa__expf(INFINITY) > 0);
	cr_assert_eq(spa__expf(-87.5f), 0.0f);
	cr_assert_eq(spa__expf(-INFINITY), 0.0f);
	cr_assert(isnan(spa__expf(NAN)));
	cr_assert(spa__expf(SPA_EXP_LO) >= FLT_MIN * 0.99f);
	cr_assert(spa__expf(SPA_EXP_HI) < INFINITY);
}

/* swiglu and exp_shift (softmax's exponentials) of every variant: the scalar loop's bits on
 * random values across exp's range and at its limits, every length from 0 to 40 (the 8-lane
 * body and the tail), and exp_shift's double sum too. */
Test(kernels, swiglu_and_exp_shift_give_the_scalar_bits_in_every_variant)
{
	const struct spa_kernels_ops *v[2];
	const int nv = variants(v);
	enum { N = 40 };
	float g[N], u[N], want[N], got[N], xs[N];
	const float special[] = { 0.0f, -0.0f, 88.0f, -88.0f, 87.4f, -87.4f, 100.0f, -100.0f,
				  INFINITY, -INFINITY, 1e-30f, -1e-30f, 20.0f, -20.0f };
	int checked = 0;
	for (uint64_t seed = 1; seed <= 20; seed++) {
		tu_rand(g, N, seed, 95.0f);
		tu_rand(u, N, seed + 100, 3.0f);
		for (size_t k = 0; k < sizeof special / sizeof special[0]; k++)
			g[(seed * 7 + k * 3) % N] = special[k];
		for (uint32_t n = 0; n <= N; n++) {
			spa_swiglu_scalar(want, g, u, n);
			memcpy(xs, g, sizeof xs);
			const double sum_want = spa_exp_shift_scalar(xs, 1.5f, n);
			for (int i = 0; i < nv; i++) {
				memset(got, 0x7f, sizeof got);
				v[i]->swiglu(got, g, u, n);
				for (uint32_t k = 0; k < n; k++)
					cr_assert(spa__f32_bits(got[k]) == spa__f32_bits(want[k]) ||
							  (isnan(got[k]) && isnan(want[k])),
						  "%s swiglu(%.9g) n=%u: %.9g vs %.9g", v[i]->name,
						  g[k], n, got[k], want[k]);
				if (n < N)
					cr_assert_eq(spa__f32_bits(got[n]), 0x7f7f7f7fu);
				memcpy(got, g, sizeof got);
				const double sum = v[i]->exp_shift(got, 1.5f, n);
				cr_assert_eq(memcmp(got, xs, n * sizeof(float)), 0, "%s exp_shift n=%u",
					     v[i]->name, n);
				cr_assert(sum == sum_want || (isnan(sum) && isnan(sum_want)),
					  "%s exp_shift's sum", v[i]->name);
				checked++;
			}
		}
	}
	cr_assert_geq(checked, 20 * 41);
}

Test(kernels, argmax_takes_the_lowest_index_on_ties)
{
	float a[] = { 1, 3, 2, 3, 3 };
	cr_assert_eq(spa_argmax(a, 5), 1);
	float b[] = { -INFINITY, -INFINITY };
	cr_assert_eq(spa_argmax(b, 2), 0);
	float c[] = { NAN, 1, 5, NAN, 5 };
	cr_assert_eq(spa_argmax(c, 5), 2);
	float d[1000];
	tu_rand(d, 1000, 9, 1.0f);
	d[999] = d[400] = d[600] = 2.0f;
	cr_assert_eq(spa_argmax(d, 1000), 400);
	cr_assert_eq(spa_argmax(d, 1), 0);
}

/* ---- pool and pinning ----------------------------------------------------------------- */

struct count_job {
	atomic_int calls[8];
	atomic_int nth_seen;
	int sum[8]; /* each thread writes only its own slot */
};

static void count_fn(void *ctx, int ith, int nth)
{
	struct count_job *j = ctx;
	atomic_fetch_add(&j->calls[ith], 1);
	atomic_store(&j->nth_seen, nth);
	j->sum[ith] += ith + 1;
}

Test(kernels, pool_runs_every_thread_once_per_job_and_sleeps_and_wakes)
{
	for (int nt = 1; nt <= 4; nt++) {
		struct spa_pool *p;
		cr_assert_eq(spa_pool_create(&p, nt, NULL), 0);
		cr_assert_eq(spa_pool_n_threads(p), nt);
		struct count_job j = { 0 };
		for (int it = 0; it < 20000; it++) {
			spa_pool_run(p, count_fn, &j);
			if (it == 100 || it == 101)
				usleep(5000); /* past the spin window: the workers are asleep */
		}
		cr_assert_eq(atomic_load(&j.nth_seen), nt);
		for (int i = 0; i < nt; i++) {
			cr_assert_eq(atomic_load(&j.calls[i]), 20000, "threads %d: thread %d", nt, i);
			cr_assert_eq(j.sum[i], 20000 * (i + 1)); /* the caller sees the workers' writes */
		}
		spa_pool_destroy(p);
	}
	struct count_job j = { 0 };
	spa_pool_run(NULL, count_fn, &j);
	cr_assert_eq(atomic_load(&j.calls[0]), 1);
	cr_assert_eq(atomic_load(&j.nth_seen), 1);
	cr_assert_eq(spa_pool_n_threads(NULL), 1);
	spa_pool_destroy(NULL);
}

Test(kernels, pool_default_size_is_the_core_count_and_bad_cpus_are_refused)
{
	struct spa_pool *p;
	cr_assert_eq(spa_pool_create(&p, 0, NULL), 0);
	cr_assert_eq(spa_pool_n_threads(p), spa_pin_n_cores());
	spa_pool_destroy(p);

	int good[2] = { spa_pin_core_pu(0), spa_pin_core_pu(1) };
	cr_assert_eq(spa_pool_create(&p, 2, good), 0);
	struct count_job j = { 0 };
	spa_pool_run(p, count_fn, &j);
	cr_assert_eq(atomic_load(&j.calls[1]), 1);
	spa_pool_destroy(p);

	int bad[2] = { good[0], 100000 };
	p = (struct spa_pool *)1;
	cr_assert_eq(spa_pool_create(&p, 2, bad), -SPA_EUSAGE);
	cr_assert_null(p);
	int bad0[1] = { -3 };
	cr_assert_eq(spa_pool_create(&p, 1, bad0), -SPA_EUSAGE);
}

Test(kernels, pin_binds_the_thread_and_describes_it)
{
	int ncores = spa_pin_n_cores(), npus = spa_pin_n_pus();
	cr_assert_geq(ncores, 1);
	cr_assert_geq(npus, ncores);
	int last = spa_pin_core_pu(ncores - 1);
	cr_assert_geq(last, 0);
	cr_assert_eq(spa_pin_core_pu(ncores), spa_pin_core_pu(0)); /* modulo the core count */
	cr_assert_eq(spa_pin_thread(last), 0);
	char buf[128], want[32];
	spa_pin_describe(buf, sizeof buf);
	snprintf(want, sizeof want, "cpu %d (core ", last);
	cr_assert(strncmp(buf, want, strlen(want)) == 0, "describe says \"%s\"", buf);
	cr_assert(strstr(buf, "package") != NULL, "describe says \"%s\"", buf);
	cr_assert_eq(sched_getcpu(), last);
	cr_assert_eq(spa_pin_thread(1 << 20), -SPA_EUSAGE);
	cr_assert_eq(spa_pin_thread(-1), -SPA_EUSAGE);
	char tiny[4];
	spa_pin_describe(tiny, sizeof tiny); /* truncates, NUL-terminated */
	cr_assert_eq(strlen(tiny), 3);
}

/* The weighted sum of rows (attention's values): in every variant the bits of the plain loop
 * (out = 0, then out[d] = out[d] + a[t] * v[t][d], t ascending), for row lengths that leave
 * every kind of tail (1..70) and 0 to 9 rows of a strided matrix; and close to a double
 * reference. */
/* A weighted sum's n outputs have the plain loop's bits, and nothing is written past them
 * (got was filled with 0x7f before). */
static void check_wsum(const float *got, const float *want, uint32_t n, uint32_t rows,
		       const char *variant, const char *rows_type)
{
	cr_assert_eq(memcmp(got, want, n * sizeof(float)), 0, "%s: %u %s rows of %u", variant,
		     rows, rows_type, n);
	cr_assert_eq(spa__f32_bits(got[n]), 0x7f7f7f7fu, "%s wrote past n", variant);
}

Test(kernels, weighted_sum_gives_the_plain_loop_bits_in_every_variant)
{
	const struct spa_kernels_ops *v[2] = { &spa_kernels_ops_scalar, &spa_kernels_ops_avx2 };
	const int nv = spa_kernels_cpu_has_avx2() ? 2 : 1;
	const size_t stride = 83;
	float *m = malloc(sizeof(float) * stride * 9), a[9], want[80], got[80];
	cr_assert(m);
	tu_rand(m, stride * 9, 4, 3.0f);
	tu_rand(a, 9, 5, 1.0f);
	int checked = 0;
	for (uint32_t rows = 0; rows <= 9; rows++)
		for (uint32_t n = 1; n <= 70; n++) {
			for (uint32_t d = 0; d < n; d++) {
				float s = 0.0f;
				double r = 0.0;
				for (uint32_t t = 0; t < rows; t++) {
					s = s + a[t] * m[t * stride + d];
					r += (double)a[t] * m[t * stride + d];
				}
				want[d] = s;
				cr_assert(fabs(s - r) <= 1e-5 * (1 + fabs(r)), "%u rows, col %u", rows,
					  d);
			}
			for (int i = 0; i < nv; i++) {
				memset(got, 0x7f, sizeof got);
				v[i]->wsum(got, a, m, stride, rows, n);
				check_wsum(got, want, n, rows, v[i]->name, "float");
				checked++;
			}
			spa_weighted_sum(got, a, m, stride, rows, n);
			cr_assert_eq(memcmp(got, want, n * sizeof(float)), 0, "spa_weighted_sum");
		}
	cr_assert_geq(checked, 700);

	/* half rows (a half KV cache): each term a[t] * the half's value, the same bits */
	uint16_t *mh = malloc(sizeof(uint16_t) * stride * 9);
	cr_assert(mh);
	spa_fp16_row(mh, m, stride * 9);
	for (uint32_t rows = 0; rows <= 9; rows++)
		for (uint32_t n = 1; n <= 70; n++) {
			for (uint32_t d = 0; d < n; d++) {
				float s = 0.0f;
				for (uint32_t t = 0; t < rows; t++)
					s = s + a[t] * spa_fp16_to_fp32(mh[t * stride + d]);
				want[d] = s;
			}
			for (int i = 0; i < nv; i++) {
				memset(got, 0x7f, sizeof got);
				v[i]->wsum_f16(got, a, mh, stride, rows, n);
				check_wsum(got, want, n, rows, v[i]->name, "half");
			}
			spa_weighted_sum_f16(got, a, mh, stride, rows, n);
			cr_assert_eq(memcmp(got, want, n * sizeof(float)), 0, "spa_weighted_sum_f16");
		}
	free(mh);
	free(m);
}

/* spa_fp16_row in every variant: spa_fp32_to_fp16 of each element (every length to 40: the
 * 8-lane body and the tail), specials included. */
Test(kernels, fp16_row_gives_the_element_conversion_in_every_variant)
{
	const struct spa_kernels_ops *v[2];
	const int nv = variants(v);
	float x[40];
	uint16_t want[41], got[41];
	tu_rand(x, 40, 9, 70000.0f);
	const float special[] = { 0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f,
				  1e-8f, -6e-8f, 3e-5f, 1.0f / 3 };
	for (size_t k = 0; k < sizeof special / sizeof special[0]; k++)
		x[k * 3] = special[k];
	for (uint32_t n = 0; n <= 40; n++) {
		for (uint32_t i = 0; i < n; i++)
			want[i] = spa_fp32_to_fp16(x[i]);
		for (int i = 0; i < nv; i++) {
			memset(got, 0x7f, sizeof got);
			v[i]->to_f16(got, x, n);
			cr_assert_eq(memcmp(got, want, n * sizeof(uint16_t)), 0, "%s: n %u",
				     v[i]->name, n);
			cr_assert_eq(got[n], 0x7f7f, "%s wrote past n", v[i]->name);
		}
	}
}

Test(kernels, rope_ext_is_rope_by_default_and_ggml_rope_ext_otherwise)
{
	static const uint32_t positions[] = { 0, 1, 7, 100, 4095, 100000 };
	const uint32_t nh = 3, hd = 64;
	float ff[32];
	for (int k = 0; k < 32; k++)
		ff[k] = 1.0f + (float)(k * 7 % 13) * 0.5f;
	for (size_t pi = 0; pi < 6; pi++) {
		const uint32_t pos = positions[pi];
		float x0[3 * 64], x[3 * 64], x2[3 * 64], cs[64];
		tu_rand(x0, nh * hd, 70 + pi, 2.0f);
		/* llama's defaults: spa_rope's bits */
		const struct spa_rope_cfg def = { .head_dim = hd, .n_rot = hd, .base = 500000.0f,
						  .freq_scale = 1.0f, .attn_factor = 1.0f };
		memcpy(x, x0, sizeof x);
		memcpy(x2, x0, sizeof x);
		spa_rope(x, nh, hd, pos, def.base);
		spa_rope_table_ext(cs, &def, pos);
		spa_rope_apply_ext(x2, nh, &def, cs);
		cr_assert_eq(memcmp(x, x2, sizeof x), 0, "default differs at pos %u", pos);
		/* every option, each pairing, against the formula in double */
		for (int neox = 0; neox < 2; neox++) {
			const struct spa_rope_cfg c = { .head_dim = hd, .n_rot = 40, .base = 10000.0f,
							.freq_scale = 0.125f, .attn_factor = 0.75f,
							.freq_factors = ff, .neox = neox };
			memcpy(x, x0, sizeof x);
			spa_rope_table_ext(cs, &c, pos);
			spa_rope_apply_ext(x, nh, &c, cs);
			for (uint32_t h = 0; h < nh; h++) {
				const float *a = x0 + h * hd;
				const float *r = x + h * hd;
				for (uint32_t k = 0; k < 20; k++) {
					double th = pos * pow(10000.0, -2.0 * k / 40) / ff[k] * 0.125;
					const double co = cos(th) * 0.75, si = sin(th) * 0.75;
					const uint32_t i0 = neox ? k : 2 * k, i1 = neox ? k + 20 : 2 * k + 1;
					const double w0 = a[i0] * co - a[i1] * si;
					const double w1 = a[i0] * si + a[i1] * co;
					const double mag = fabs(a[i0]) + fabs(a[i1]);
					cr_assert(fabs(r[i0] - w0) <= 4e-7 * mag + 1e-30 &&
						  fabs(r[i1] - w1) <= 4e-7 * mag + 1e-30,
						  "neox %d pos %u pair %u: (%g, %g) vs (%g, %g)", neox, pos,
						  k, r[i0], r[i1], w0, w1);
				}
				/* dimensions 40.. are not rotated */
				cr_assert_eq(memcmp(r + 40, a + 40, 24 * sizeof(float)), 0);
			}
		}
	}
}
