/* Quantized weight formats (kernels/cpu/quant.c, quant_avx2.c), spa-gen --type and
 * spa-quantize: layouts and known answers derived by hand from ggml's formulas, round-trip
 * error bounds, SIMD against scalar, determinism of matvec/matmul, models in every type. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/cpu/kernels_impl.h"
#include "spa/spa.h"
#include "testutil.h"

static const enum spa_dtype all_types[] = {
	SPA_TYPE_F32, SPA_TYPE_F16, SPA_TYPE_BF16, SPA_TYPE_Q8_0,
	SPA_TYPE_Q4_0, SPA_TYPE_Q4_K, SPA_TYPE_Q6_K,
};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static void *quantize(enum spa_dtype t, const float *x, uint64_t n)
{
	uint64_t size;
	cr_assert_eq(spa_dtype_row_size(t, n, &size), 0);
	void *q = malloc(size);
	cr_assert(q);
	cr_assert_eq(spa_quantize_row(t, x, q, n), 0, "%s", spa_dtype_name(t));
	return q;
}

Test(quant, supports_the_seven_formats)
{
	for (size_t i = 0; i < N_TYPES; i++)
		cr_assert_eq(spa_kernels_supports(all_types[i]), 1, "%s",
			     spa_dtype_name(all_types[i]));
	cr_assert_eq(spa_kernels_supports(SPA_TYPE_Q5_K), 0);
	cr_assert_eq(spa_kernels_supports(SPA_TYPE_Q4_1), 0);
	float x[32] = { 0 };
	uint8_t buf[64];
	cr_assert_eq(spa_quantize_row(SPA_TYPE_Q5_0, x, buf, 32), -SPA_EUNSUPPORTED);
	cr_assert_eq(spa_quantize_row(SPA_TYPE_Q8_0, x, buf, 31), -EINVAL);
	cr_assert_eq(spa_quantize_row(SPA_TYPE_Q4_K, x, buf, 32), -EINVAL);
	x[5] = NAN;
	cr_assert_eq(spa_quantize_row(SPA_TYPE_Q8_0, x, buf, 32), -EDOM);
	x[5] = INFINITY;
	cr_assert_eq(spa_quantize_row(SPA_TYPE_Q4_0, x, buf, 32), -EDOM);
}

/* ---- known answers ----------------------------------------------------------------------
 * x[i] = i - 16. Q8_0 (quantize_row_q8_0_ref): amax 16, d = 16/127 -> fp16 0x3008
 * (1032 * 2^-13 = 0.1259765625); id = 1 / float(16/127) = 7.9375 exactly, so
 * q[i] = roundf(7.9375 (i - 16)), half away from zero (i = 8: -63.5 -> -64; i = 24: 64). */
Test(quant, q8_0_known_answer)
{
	static const int8_t want[32] = {
		-127, -119, -111, -103, -95, -87, -79, -71, -64, -56, -48, -40, -32, -24, -16, -8,
		0, 8, 16, 24, 32, 40, 48, 56, 64, 71, 79, 87, 95, 103, 111, 119,
	};
	float x[32], y[32];
	for (int i = 0; i < 32; i++)
		x[i] = (float)(i - 16);
	struct spa_block_q8_0 *b = quantize(SPA_TYPE_Q8_0, x, 32);
	const uint8_t *raw = (const uint8_t *)b;
	cr_assert_eq(raw[0], 0x08);
	cr_assert_eq(raw[1], 0x30);
	cr_assert_eq(memcmp(raw + 2, want, 32), 0);
	spa_dequant_row(SPA_TYPE_Q8_0, b, y, 32);
	for (int i = 0; i < 32; i++)
		cr_assert_eq(y[i], (float)want[i] * 0.1259765625f, "y[%d] = %a", i, (double)y[i]);
	free(b);

	/* amax 127: d = 1 exactly (0x3c00), levels = the values */
	x[0] = -127.0f;
	b = quantize(SPA_TYPE_Q8_0, x, 32);
	raw = (const uint8_t *)b;
	cr_assert_eq(raw[0], 0x00);
	cr_assert_eq(raw[1], 0x3c);
	for (int i = 0; i < 32; i++)
		cr_assert_eq(b->qs[i], (int8_t)x[i]);
	free(b);
}

/* Q4_0 (quantize_row_q4_0_ref) of x[i] = i - 16: the value of largest magnitude is -16 (the
 * first), d = -16 / -8 = 2 (fp16 0x4000), id = 0.5; level = min(15, trunc(x / 2 + 8.5)):
 * element j (0..15): trunc(j/2 + 0.5) = (j + 1) / 2; element 16 + j: min(15, 8 + (j + 1) / 2).
 * Byte j = low | high << 4. Decoded: (level - 8) * 2. */
Test(quant, q4_0_known_answer)
{
	float x[32], y[32];
	for (int i = 0; i < 32; i++)
		x[i] = (float)(i - 16);
	struct spa_block_q4_0 *b = quantize(SPA_TYPE_Q4_0, x, 32);
	const uint8_t *raw = (const uint8_t *)b;
	cr_assert_eq(raw[0], 0x00);
	cr_assert_eq(raw[1], 0x40);
	for (int j = 0; j < 16; j++) {
		int lo = (j + 1) / 2, hi = 8 + (j + 1) / 2 > 15 ? 15 : 8 + (j + 1) / 2;
		cr_assert_eq(b->qs[j], (uint8_t)(lo | hi << 4), "byte %d: %02x", j, b->qs[j]);
	}
	static const uint8_t want[16] = { 0x80, 0x91, 0x91, 0xa2, 0xa2, 0xb3, 0xb3, 0xc4,
					  0xc4, 0xd5, 0xd5, 0xe6, 0xe6, 0xf7, 0xf7, 0xf8 };
	cr_assert_eq(memcmp(b->qs, want, 16), 0);
	spa_dequant_row(SPA_TYPE_Q4_0, b, y, 32);
	for (int j = 0; j < 16; j++) {
		cr_assert_eq(y[j], (float)(((want[j] & 15) - 8) * 2));
		cr_assert_eq(y[16 + j], (float)(((want[j] >> 4) - 8) * 2));
	}
	cr_assert_eq(y[0], -16.0f);
	cr_assert_eq(y[31], 14.0f);
	free(b);
}

/* Q4_K (quantize_row_q4_K_ref) of x[32 j + l] = l mod 16: every sub-block spans 0..15, so
 * make_qkx2_quants finds scale 1, min 0 with zero error (no other try can beat zero); the
 * 6-bit scales are all 63 (d = fp16(1/63) = 0x2410 = 1040 * 2^-16), the mins 0 (dmin 0).
 * Packing: scales[0..3] = 63 | (63 >> 4) << 6 = 0xff, scales[4..7] = 0 (mins),
 * scales[8..11] = 63 & 15 = 0x0f. Levels: nearest_int(x / (63 d)) = x, byte l of chunk c =
 * (l mod 16) | (l mod 16) << 4. Decoded: (63 d) * q - 0. */
Test(quant, q4_K_known_answer)
{
	float x[256], y[256];
	for (int i = 0; i < 256; i++)
		x[i] = (float)(i % 16);
	struct spa_block_q4_K *b = quantize(SPA_TYPE_Q4_K, x, 256);
	cr_assert_eq(b->d, 0x2410, "d %04x", b->d);
	cr_assert_eq(b->dmin, 0x0000);
	static const uint8_t want_sc[12] = { 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
					     0x0f, 0x0f, 0x0f, 0x0f };
	cr_assert_eq(memcmp(b->scales, want_sc, 12), 0);
	for (int i = 0; i < 128; i++)
		cr_assert_eq(b->qs[i], (uint8_t)((i % 16) | (i % 16) << 4), "qs[%d] %02x", i,
			     b->qs[i]);
	spa_dequant_row(SPA_TYPE_Q4_K, b, y, 256);
	const float d1 = (1040.0f / 65536.0f) * 63.0f; /* d * sc, as ggml computes it */
	for (int i = 0; i < 256; i++)
		cr_assert_eq(y[i], d1 * (float)(i % 16) - 0.0f);
	free(b);
}

/* Q6_K (quantize_row_q6_K_ref) of a constant 1: make_qx_quants(16, 32) gives iscale -32,
 * levels -32, scale sumlx / suml2 = -512 / 16384 = -1/32 (no other try is strictly better);
 * iscale = -128 / (-1/32) = 4096, d = fp16(1/4096) = 0x0c00, scales = nearest_int(-128) = -128;
 * levels nearest_int(1 / (2^-12 * -128)) = -32 -> stored 0: ql, qh all zero. Decoded:
 * 2^-12 * -128 * (0 - 32) = 1 exactly. */
Test(quant, q6_K_known_answer)
{
	float x[256], y[256];
	for (int i = 0; i < 256; i++)
		x[i] = 1.0f;
	struct spa_block_q6_K *b = quantize(SPA_TYPE_Q6_K, x, 256);
	cr_assert_eq(b->d, 0x0c00, "d %04x", b->d);
	for (int i = 0; i < 16; i++)
		cr_assert_eq(b->scales[i], -128);
	for (int i = 0; i < 128; i++)
		cr_assert_eq(b->ql[i], 0);
	for (int i = 0; i < 64; i++)
		cr_assert_eq(b->qh[i], 0);
	spa_dequant_row(SPA_TYPE_Q6_K, b, y, 256);
	for (int i = 0; i < 256; i++)
		cr_assert_eq(y[i], 1.0f);
	free(b);

	/* all zeros: a zero block (ggml's memset branch) that decodes to zeros */
	for (int i = 0; i < 256; i++)
		x[i] = 0.0f;
	b = quantize(SPA_TYPE_Q6_K, x, 256);
	static const uint8_t zero[210];
	cr_assert_eq(memcmp(b, zero, 210), 0);
	free(b);
}

/* ---- decoding against the layout, element by element ----------------------------------
 * An independent reading of each block layout (ggml-common.h), one element at a time, with
 * ggml's float expressions: the row decoders must give the same bits. */
static float ref_elem(enum spa_dtype t, const void *row, uint64_t i)
{
	const uint8_t *r = row;
	switch (t) {
	case SPA_TYPE_Q8_0: {
		const struct spa_block_q8_0 *b = (const void *)(r + (i / 32) * 34);
		return b->qs[i % 32] * spa_fp16_to_fp32(b->d);
	}
	case SPA_TYPE_Q4_0: {
		const struct spa_block_q4_0 *b = (const void *)(r + (i / 32) * 18);
		int j = (int)(i % 32), q = (b->qs[j % 16] >> (j < 16 ? 0 : 4)) & 15;
		return (q - 8) * spa_fp16_to_fp32(b->d);
	}
	case SPA_TYPE_Q4_K: {
		const struct spa_block_q4_K *b = (const void *)(r + (i / 256) * 144);
		int e = (int)(i % 256), sub = e / 32, c = e / 64, l = e % 32;
		uint8_t sc, m;
		spa__q4k_scale_min(sub, b->scales, &sc, &m);
		int q = (b->qs[32 * c + l] >> (sub % 2 ? 4 : 0)) & 15;
		float d1 = spa_fp16_to_fp32(b->d) * sc, m1 = spa_fp16_to_fp32(b->dmin) * m;
		return d1 * q - m1;
	}
	case SPA_TYPE_Q6_K: {
		const struct spa_block_q6_K *b = (const void *)(r + (i / 256) * 210);
		int e = (int)(i % 256), h = e / 128, t2 = e % 128, g = t2 / 32, l = t2 % 32;
		int lo = (b->ql[64 * h + l + (g % 2 ? 32 : 0)] >> (g >= 2 ? 4 : 0)) & 15;
		int hi = (b->qh[32 * h + l] >> (2 * g)) & 3;
		int8_t q = (int8_t)((lo | hi << 4) - 32);
		return spa_fp16_to_fp32(b->d) * b->scales[e / 16] * q;
	}
	default:
		cr_assert_fail("no reference for %s", spa_dtype_name(t));
		return 0;
	}
}

static const enum spa_dtype qtypes[] = { SPA_TYPE_Q8_0, SPA_TYPE_Q4_0, SPA_TYPE_Q4_K,
					 SPA_TYPE_Q6_K };
#define N_QTYPES (sizeof qtypes / sizeof qtypes[0])

Test(quant, dequant_matches_the_layout_bit_for_bit)
{
	const uint64_t n = 4096;
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	cr_assert(x && y);
	/* uneven magnitudes so that scales and mins vary, negative and positive sub-blocks */
	tu_rand(x, n, 11, 1.0f);
	for (uint64_t i = 0; i < n; i++)
		x[i] = x[i] * (1.0f + (float)(i % 97) / 10.0f) + ((i / 64) % 3 == 0 ? 0.5f : 0.0f);
	for (size_t k = 0; k < N_QTYPES; k++) {
		void *q = quantize(qtypes[k], x, n);
		spa_dequant_row(qtypes[k], q, y, n);
		for (uint64_t i = 0; i < n; i++) {
			float r = ref_elem(qtypes[k], q, i);
			cr_assert_eq(memcmp(&r, &y[i], 4), 0, "%s element %llu: %a vs %a",
				     spa_dtype_name(qtypes[k]), (unsigned long long)i, (double)y[i],
				     (double)r);
		}
		free(q);
	}
	free(x);
	free(y);
}

/* ---- round-trip error ------------------------------------------------------------------ */

Test(quant, round_trip_error_within_bounds)
{
	/* Bounds on the relative RMS error sqrt(sum (y - x)^2 / sum x^2) for weights drawn
	 * uniformly (the generator's distribution) and for Gaussian-like sums of four: a little
	 * above what the formats reach (measured: see the cr_log lines). */
	static const struct {
		enum spa_dtype t;
		double bound;
	} cases[] = {
		{ SPA_TYPE_F32, 0.0 },     { SPA_TYPE_F16, 0.001 },  { SPA_TYPE_BF16, 0.005 },
		{ SPA_TYPE_Q8_0, 0.01 },   { SPA_TYPE_Q4_0, 0.12 },  { SPA_TYPE_Q4_K, 0.08 },
		{ SPA_TYPE_Q6_K, 0.03 },
	};
	const uint64_t n = 256 * 64;
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	float *t = malloc(n * sizeof(float));
	cr_assert(x && y && t);
	for (int dist = 0; dist < 2; dist++) {
		tu_rand(x, n, 21 + (uint64_t)dist, 0.05f);
		if (dist == 1) {
			for (int k = 0; k < 3; k++) {
				tu_rand(t, n, 100 + (uint64_t)k, 0.05f);
				for (uint64_t i = 0; i < n; i++)
					x[i] += t[i];
			}
		}
		for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
			void *q = quantize(cases[c].t, x, n);
			spa_dequant_row(cases[c].t, q, y, n);
			double e2 = 0, x2 = 0;
			for (uint64_t i = 0; i < n; i++) {
				e2 += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
				x2 += (double)x[i] * x[i];
			}
			double rel = sqrt(e2 / x2);
			cr_log_info("%s %s: relative RMS error %.5f", dist ? "gauss" : "uniform",
				    spa_dtype_name(cases[c].t), rel);
			cr_assert_leq(rel, cases[c].bound, "%s: relative RMS error %g > %g",
				      spa_dtype_name(cases[c].t), rel, cases[c].bound);
			free(q);
		}
	}
	free(x);
	free(y);
	free(t);
}

/* ---- dots: SIMD against scalar, against a double reference ---------------------------- */

/* |got - ref| <= rel * sum |w_i x_i|: the error of a float sum is bounded relative to the sum
 * of the magnitudes of its terms, not to the (possibly cancelling) result. */
static void check_dot(const char *what, enum spa_dtype t, uint64_t n, float got, double ref,
		      double mag, double rel)
{
	cr_assert(fabs((double)got - ref) <= rel * mag + 1e-30, "%s %s n=%llu: %.9g vs %.9g "
		  "(error %.3g of %.3g)", what, spa_dtype_name(t), (unsigned long long)n,
		  (double)got, ref, fabs((double)got - ref), mag);
}

/* x quantized for the integer dots of type t (scalar quantizer), then decoded: q * d. */
static float *dequant_q8x(const float *x, uint64_t n, enum spa_dtype t)
{
	struct spa_block_q8x *q = malloc(n / 32 * sizeof *q);
	float *y = malloc(n * sizeof(float));
	cr_assert(q && y);
	spa_quantize_x_scalar(x, q, n, spa_xq_group(t));
	for (uint64_t i = 0; i < n; i++)
		y[i] = q[i / 32].qs[i % 32] * q[i / 32].d;
	free(q);
	return y;
}

Test(quant, simd_dot_matches_scalar)
{
	static const uint64_t sizes[] = { 32, 64, 256, 4096, 11008 };
	const struct spa_kernels_ops *sc = &spa_kernels_ops_scalar;
	int simd = spa_kernels_cpu_has_avx2();
	if (!simd)
		cr_log_warn("this CPU lacks AVX2/FMA/F16C: only the scalar dots are checked");
	for (size_t k = 0; k < N_TYPES; k++) {
		enum spa_dtype t = all_types[k];
		for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
			uint64_t n = sizes[s];
			if (n % spa_dtype_block_elems(t))
				continue;
			float *w = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
			float *wd = malloc(n * sizeof(float));
			cr_assert(w && x && wd);
			for (int rep = 0; rep < 3; rep++) {
				tu_rand(w, n, 1000 + n + (uint64_t)rep, 1.0f);
				tu_rand(x, n, 2000 + n + (uint64_t)rep, 1.0f);
				void *q = quantize(t, w, n);
				spa_dequant_row(t, q, wd, n);
				/* Q8_0 and Q4_0 multiply with x quantized to 8 bits: the reference
				 * takes the activations the dot sees */
				const float *xr = x;
				float *xd = NULL;
				if (sc->dot_q8x[t]) {
					xd = dequant_q8x(x, n, t);
					xr = xd;
				}
				double ref = 0, mag = 0;
				for (uint64_t i = 0; i < n; i++) {
					ref += (double)wd[i] * xr[i];
					mag += fabs((double)wd[i] * xr[i]);
				}
				free(xd);
				float s_dot = sc->dot[t](q, x, n);
				check_dot("scalar", t, n, s_dot, ref, mag, 1e-5);
				if (simd) {
					float a_dot = spa_kernels_ops_avx2.dot[t](q, x, n);
					check_dot("avx2", t, n, a_dot, ref, mag, 1e-5);
					check_dot("avx2-vs-scalar", t, n, a_dot, s_dot, mag, 2e-5);
				}
				free(q);
			}
			free(w);
			free(x);
			free(wd);
		}
	}
}

/* ---- integer dots with quantized activations ------------------------------------------ */

/* n activations with blocks of very different magnitudes, some exactly zero, some below the
 * quantizer's 2^-100 floor, and exact ties (x * id = k + 0.5 once scaled). */
static void awkward_x(float *x, uint64_t n, uint64_t seed)
{
	tu_rand(x, n, seed, 1.0f);
	for (uint64_t b = 0; b < n / 32; b++) {
		float *xb = x + 32 * b;
		switch ((b + seed) % 7) {
		case 1:
			memset(xb, 0, 32 * sizeof(float));
			break;
		case 2:
			for (int j = 0; j < 32; j++)
				xb[j] *= 0x1p-110f;
			break;
		case 3:
			for (int j = 0; j < 32; j++)
				xb[j] *= 1000.0f;
			break;
		case 4: /* amax 127: id = 1, x = k + 0.5 are ties, rounded to even */
			for (int j = 0; j < 32; j++)
				xb[j] = (float)(j - 16) + 0.5f;
			xb[0] = -127.0f;
			break;
		default:
			break;
		}
	}
}

/* Random weight rows: Q8_0 with arbitrary bytes (levels -128 too, which no ggml quantizer
 * writes but a file may hold), Q4_0 and Q6_K with arbitrary levels; random finite fp16
 * scales. */
static void *random_qrow(enum spa_dtype t, uint64_t n, uint64_t seed)
{
	uint64_t size;
	struct spa_rng st;
	spa_rng_seed(&st, seed);
	cr_assert_eq(spa_dtype_row_size(t, n, &size), 0);
	uint8_t *r = malloc(size);
	cr_assert(r);
	for (uint64_t i = 0; i < size; i++)
		r[i] = (uint8_t)spa_rng_next(&st);
	/* the fp16 scale: at the start of a Q8_0/Q4_0 block, at the end of a Q6_K one (whose
	 * int8 sub-block scales stay arbitrary, -128 included) */
	size_t bs = t == SPA_TYPE_Q8_0 ? 34 : t == SPA_TYPE_Q4_0 ? 18 : 210;
	size_t at = t == SPA_TYPE_Q6_K ? 208 : 0;
	for (uint64_t b = 0; b < size / bs; b++) {
		uint16_t d = spa_fp32_to_fp16(((float)(spa_rng_next(&st) % 2001) - 1000.0f) * 1e-4f);
		memcpy(r + b * bs + at, &d, 2);
	}
	return r;
}

/* Integer weight of element j of 32-element block b of a row, and its float scale: the level
 * and d for Q8_0 and Q4_0, (level - 32) * sub-block scale and d for Q6_K. */
static int qlevel(enum spa_dtype t, const void *row, uint64_t b, int j, float *d)
{
	if (t == SPA_TYPE_Q6_K) {
		const struct spa_block_q6_K *q = (const struct spa_block_q6_K *)row + b / 8;
		int e = (int)(b % 8) * 32 + j, h = e / 128, t2 = e % 128, g = t2 / 32, l = t2 % 32;
		int lo = (q->ql[64 * h + l + (g % 2 ? 32 : 0)] >> (g >= 2 ? 4 : 0)) & 15;
		int hi = (q->qh[32 * h + l] >> (2 * g)) & 3;
		*d = spa_fp16_to_fp32(q->d);
		return ((lo | hi << 4) - 32) * q->scales[e / 16];
	}
	if (t == SPA_TYPE_Q8_0) {
		const struct spa_block_q8_0 *q = (const struct spa_block_q8_0 *)row + b;
		*d = spa_fp16_to_fp32(q->d);
		return q->qs[j];
	}
	const struct spa_block_q4_0 *q = (const struct spa_block_q4_0 *)row + b;
	*d = spa_fp16_to_fp32(q->d);
	return ((q->qs[j % 16] >> (4 * (j / 16))) & 15) - 8;
}

static const uint64_t int_blocks[] = { 1, 2, 3, 7, 8, 9, 63, 64, 65, 127, 129, 344, 2047,
				       2048, 2049, 2056 };
/* The types with integer dots; Q6_K rows take block counts that are multiples of 8. */
static const enum spa_dtype int_types[] = { SPA_TYPE_Q8_0, SPA_TYPE_Q4_0, SPA_TYPE_Q6_K };
#define N_INT_TYPES 3
#define INT_SKIP(t, nb) ((t) == SPA_TYPE_Q6_K && (nb) % 8)

Test(quant, integer_dots_scalar_and_avx2_give_the_same_bits)
{
	if (!spa_kernels_cpu_has_avx2())
		cr_skip_test("this CPU lacks AVX2/FMA/F16C: no second variant to compare");
	const struct spa_kernels_ops *sc = &spa_kernels_ops_scalar, *av = &spa_kernels_ops_avx2;
	const enum spa_dtype *ts = int_types;
	for (size_t s = 0; s < sizeof int_blocks / sizeof int_blocks[0]; s++) {
		uint64_t nb = int_blocks[s], n = 32 * nb;
		float *x = malloc(n * sizeof(float));
		struct spa_block_q8x *qs = malloc(nb * sizeof *qs), *qa = malloc(nb * sizeof *qa);
		cr_assert(x && qs && qa);
		for (int rep = 0; rep < 3; rep++) {
			awkward_x(x, n, 31 * nb + (uint64_t)rep);
			for (size_t group = 32; group <= 256; group *= 8) {
				if (n % group)
					continue;
				sc->quantize_x(x, qs, n, group);
				av->quantize_x(x, qa, n, group);
				cr_assert_eq(memcmp(qs, qa, nb * sizeof *qs), 0,
					     "quantize_x: scalar and avx2 differ, %llu blocks in "
					     "groups of %zu", (unsigned long long)nb, group);
			}
			for (size_t k = 0; k < N_INT_TYPES; k++) {
				if (INT_SKIP(ts[k], nb))
					continue;
				sc->quantize_x(x, qs, n, spa_xq_group(ts[k]));
				void *w = random_qrow(ts[k], n, 77 * nb + k + (uint64_t)rep);
				float a = sc->dot_q8x[ts[k]](w, qs, n);
				float b = av->dot_q8x[ts[k]](w, qs, n);
				cr_assert_eq(memcmp(&a, &b, 4), 0, "%s %llu blocks: %a vs %a",
					     spa_dtype_name(ts[k]), (unsigned long long)nb,
					     (double)a, (double)b);
				/* the f32-x dots quantize x themselves: the same bits */
				float c = sc->dot[ts[k]](w, x, n), e = av->dot[ts[k]](w, x, n);
				cr_assert_eq(memcmp(&a, &c, 4), 0, "%s scalar dot vs dot_q8x",
					     spa_dtype_name(ts[k]));
				cr_assert_eq(memcmp(&a, &e, 4), 0, "%s avx2 dot vs dot_q8x",
					     spa_dtype_name(ts[k]));
				free(w);
			}
		}
		free(x);
		free(qs);
		free(qa);
	}
}

/* The rows kernels (4 rows interleaved, prefetching the next 4) give each row the bits of the
 * single-row dot, for 1..4 rows and awkward row lengths, with the rows packed at their real
 * stride (the next group read ahead is the rest of the matrix, or past its end). */
Test(quant, rows_kernels_give_each_row_the_single_row_bits)
{
	if (!spa_kernels_cpu_has_avx2())
		cr_skip_test("this CPU lacks AVX2/FMA/F16C: no rows kernels to check");
	const struct spa_kernels_ops *av = &spa_kernels_ops_avx2;
	int checked = 0;
	for (size_t s = 0; s < sizeof int_blocks / sizeof int_blocks[0]; s++) {
		uint64_t nb = int_blocks[s], n = 32 * nb;
		float *x = malloc(n * sizeof(float));
		struct spa_block_q8x *xq = malloc(nb * sizeof *xq);
		cr_assert(x && xq);
		awkward_x(x, n, 5 * nb + 1);
		for (size_t k = 0; k < N_INT_TYPES; k++) {
			const enum spa_dtype t = int_types[k];
			if (INT_SKIP(t, nb) || !av->dot_q8x_rows[t])
				continue;
			av->quantize_x(x, xq, n, spa_xq_group(t));
			uint64_t rs = 0;
			cr_assert_eq(spa_dtype_row_size(t, n, &rs), 0);
			uint8_t *w = malloc(7 * rs);
			cr_assert(w);
			for (int r = 0; r < 7; r++) {
				void *row = random_qrow(t, n, 991 * nb + 13 * k + (uint64_t)r);
				memcpy(w + r * rs, row, rs);
				free(row);
			}
			for (unsigned nrows = 1; nrows <= SPA_DOT_ROWS; nrows++) {
				for (unsigned r0 = 0; r0 + nrows <= 7; r0 += 3) {
					float y[SPA_DOT_ROWS];
					av->dot_q8x_rows[t](w + r0 * rs, rs, xq, n, y, nrows);
					for (unsigned r = 0; r < nrows; r++) {
						float a = av->dot_q8x[t](w + (r0 + r) * rs, xq, n);
						cr_assert_eq(memcmp(&a, &y[r], 4), 0,
							     "%s %llu blocks, %u rows, row %u: %a vs %a",
							     spa_dtype_name(t), (unsigned long long)nb,
							     nrows, r0 + r, (double)a, (double)y[r]);
						checked++;
					}
				}
			}
			free(w);
		}
		free(x);
		free(xq);
	}
	cr_assert_gt(checked, 400, "only %d rows checked", checked);
}

/* Several matrices in one pool job (q, k, v; gate and up with the SwiGLU applied per thread)
 * give the bits of separate spa_matvec calls and spa_swiglu, for mixed types (a Q4_K_M file
 * mixes Q4_K and Q6_K) and 1 to 3 threads. */
Test(quant, multi_matvec_and_fused_swiglu_give_the_bits_of_separate_calls)
{
	const enum spa_dtype ts[] = { SPA_TYPE_Q8_0, SPA_TYPE_Q4_0, SPA_TYPE_Q6_K, SPA_TYPE_F16,
				      SPA_TYPE_F32, SPA_TYPE_Q4_K };
	const uint64_t cols = 512, rows[3] = { 37, 64, 129 };
	float *x = malloc(sizeof(float) * cols);
	cr_assert(x);
	awkward_x(x, cols, 3);
	for (int nth = 1; nth <= 3; nth++) {
		struct spa_pool *pool = NULL;
		cr_assert_eq(spa_pool_create(&pool, nth, NULL), 0);
		for (size_t a = 0; a < sizeof ts / sizeof ts[0]; a++) {
			const enum spa_dtype tk[3] = { ts[a], ts[(a + 1) % 6], ts[(a + 2) % 6] };
			struct spa_tensor w[3];
			float *y[3], *ref[3];
			for (int k = 0; k < 3; k++) {
				uint64_t rs = 0;
				cr_assert_eq(spa_dtype_row_size(tk[k], cols, &rs), 0);
				uint8_t *d = malloc(rs * rows[k]);
				for (uint64_t r = 0; r < rows[k]; r++) {
					void *row = random_qrow(tk[k] == SPA_TYPE_F16 || tk[k] == SPA_TYPE_F32 ||
								tk[k] == SPA_TYPE_Q4_K ? SPA_TYPE_Q8_0 : tk[k],
								cols, 100 * a + 10 * k + r);
					/* float and Q4_K rows: any bytes that decode to finite values */
					if (tk[k] == SPA_TYPE_F16 || tk[k] == SPA_TYPE_F32 ||
					    tk[k] == SPA_TYPE_Q4_K) {
						float f[512];
						awkward_x(f, cols, 7 * r + k);
						if (tk[k] == SPA_TYPE_F32)
							memcpy(d + r * rs, f, rs);
						else if (tk[k] == SPA_TYPE_F16)
							for (uint64_t c = 0; c < cols; c++)
								((uint16_t *)(d + r * rs))[c] =
									spa_fp32_to_fp16(f[c]);
						else
							spa_quantize_q4_K_ref(f, d + r * rs, cols);
					} else {
						memcpy(d + r * rs, row, rs);
					}
					free(row);
				}
				w[k] = (struct spa_tensor){ tk[k], cols, rows[k], d, 0 };
				y[k] = malloc(sizeof(float) * rows[k]);
				ref[k] = malloc(sizeof(float) * rows[k]);
				spa_matvec(pool, &w[k], x, ref[k]);
			}
			const struct spa_matvec_item it[3] = { { &w[0], x, NULL, y[0] },
							       { &w[1], x, NULL, y[1] },
							       { &w[2], x, NULL, y[2] } };
			spa_matvec_items(pool, 3, it);
			for (int k = 0; k < 3; k++)
				cr_assert_eq(memcmp(y[k], ref[k], sizeof(float) * rows[k]), 0,
					     "multi: matrix %d (%s), %d threads", k,
					     spa_dtype_name(tk[k]), nth);
			/* gate and up: the same rows */
			struct spa_tensor up = w[1];
			up.rows = rows[0];
			float *ru = malloc(sizeof(float) * rows[0]), *o = malloc(sizeof(float) * rows[0]);
			float *u = malloc(sizeof(float) * rows[0]), *ro = malloc(sizeof(float) * rows[0]);
			spa_matvec(pool, &up, x, ru);
			spa_swiglu(ro, ref[0], ru, (uint32_t)rows[0]);
			spa_matvec_swiglu(pool, &w[0], &up, x, o, u);
			cr_assert_eq(memcmp(u, ru, sizeof(float) * rows[0]), 0, "swiglu: up");
			cr_assert_eq(memcmp(o, ro, sizeof(float) * rows[0]), 0,
				     "swiglu: out (%s, %s), %d threads", spa_dtype_name(tk[0]),
				     spa_dtype_name(tk[1]), nth);
			free(ru), free(o), free(u), free(ro);
			for (int k = 0; k < 3; k++) {
				free((void *)w[k].data);
				free(y[k]);
				free(ref[k]);
			}
		}
		spa_pool_destroy(pool);
	}
	free(x);
}

/* The activation quantizer: |x - q d| <= d / 2 (plus the rounding of x * id), |q| <= 127,
 * zero blocks below the floor, NaN scale (and so NaN dots) for non-finite input. */
Test(quant, activation_quantizer_rounds_to_nearest_within_half_a_step)
{
	const struct spa_kernels_ops *v[2] = { &spa_kernels_ops_scalar, &spa_kernels_ops_avx2 };
	int nv = spa_kernels_cpu_has_avx2() ? 2 : 1;
	const uint64_t nb = 700, n = 32 * nb;
	float *x = malloc(n * sizeof(float));
	struct spa_block_q8x *q = malloc(nb * sizeof *q);
	cr_assert(x && q);
	awkward_x(x, n, 5);
	for (int k = 0; k < nv; k++) {
		v[k]->quantize_x(x, q, n, 32);
		for (uint64_t b = 0; b < nb; b++) {
			float amax = 0;
			for (int j = 0; j < 32; j++)
				amax = fmaxf(amax, fabsf(x[32 * b + j]));
			if (amax < 0x1p-100f) {
				cr_assert_eq(q[b].d, 0.0f);
				for (int j = 0; j < 32; j++)
					cr_assert_eq(q[b].qs[j], 0);
				continue;
			}
			cr_assert_eq(q[b].d, amax / 127.0f);
			for (int j = 0; j < 32; j++) {
				double e = fabs((double)x[32 * b + j] - (double)q[b].qs[j] * q[b].d);
				cr_assert(q[b].qs[j] >= -127 && q[b].qs[j] <= 127);
				cr_assert(e <= 0.5 * q[b].d * (1 + 1e-5), "%s block %llu elem %d: "
					  "%a -> %d * %a", v[k]->name, (unsigned long long)b, j,
					  (double)x[32 * b + j], q[b].qs[j], (double)q[b].d);
			}
			if ((b + 5) % 7 == 4) { /* the ties block: d = id = 1, k + 0.5 to even */
				cr_assert_eq(q[b].d, 1.0f);
				for (int j = 1; j < 32; j++)
					cr_assert_eq(q[b].qs[j], (int)nearbyint((j - 16) + 0.5),
						     "%s: %g -> %d", v[k]->name, (j - 16) + 0.5,
						     q[b].qs[j]);
			}
		}
		float y[64];
		for (int j = 0; j < 64; j++)
			y[j] = (float)j;
		y[40] = NAN;
		struct spa_block_q8x qn[2];
		v[k]->quantize_x(y, qn, 64, 32);
		cr_assert(qn[0].d > 0 && isnan(qn[1].d), "%s", v[k]->name);
		y[40] = -INFINITY;
		v[k]->quantize_x(y, qn, 64, 32);
		cr_assert(isnan(qn[1].d));
		void *w = random_qrow(SPA_TYPE_Q8_0, 64, 3);
		cr_assert(isnan(v[k]->dot[SPA_TYPE_Q8_0](w, y, 64)), "%s", v[k]->name);
		free(w);
	}
	free(x);
	free(q);
}

/* Against the exact value of what the dot computes: sum over blocks of d_w d_x sum(q_w q_x)
 * in double (exact: integers and products of two floats). Each block's float term carries two
 * roundings (d_w * d_x, times the integer sum), each lane sum of nb terms nb - 1 more, the
 * final combination of the 8 lanes 3: |error| <= (nb + 5) 2^-24 sum |term|. */
Test(quant, integer_dots_match_exact_reference_within_rounding_bound)
{
	const struct spa_kernels_ops *v[2] = { &spa_kernels_ops_scalar, &spa_kernels_ops_avx2 };
	int nv = spa_kernels_cpu_has_avx2() ? 2 : 1;
	const enum spa_dtype *ts = int_types;
	for (size_t s = 0; s < sizeof int_blocks / sizeof int_blocks[0]; s++) {
		uint64_t nb = int_blocks[s], n = 32 * nb;
		float *x = malloc(n * sizeof(float));
		struct spa_block_q8x *q = malloc(nb * sizeof *q);
		cr_assert(x && q);
		awkward_x(x, n, 1000 + nb);
		for (size_t k = 0; k < N_INT_TYPES; k++) {
			if (INT_SKIP(ts[k], nb))
				continue;
			spa_quantize_x_scalar(x, q, n, spa_xq_group(ts[k]));
			void *w = random_qrow(ts[k], n, 5000 + nb + k);
			double ref = 0, mag = 0;
			for (uint64_t b = 0; b < nb; b++) {
				float dw;
				int64_t sum = 0;
				for (int j = 0; j < 32; j++)
					sum += (int64_t)qlevel(ts[k], w, b, j, &dw) * q[b].qs[j];
				double term = (double)dw * (double)q[b].d * (double)sum;
				ref += term;
				for (int j = 0; j < 32; j++)
					mag += fabs((double)dw * q[b].d * qlevel(ts[k], w, b, j, &dw) *
						    q[b].qs[j]);
			}
			double bound = (double)(nb + 5) * 0x1p-24 * mag;
			for (int i = 0; i < nv; i++) {
				float got = v[i]->dot_q8x[ts[k]](w, q, n);
				cr_assert(fabs((double)got - ref) <= bound, "%s %s %llu blocks: %.9g "
					  "vs %.9g (bound %.3g)", v[i]->name, spa_dtype_name(ts[k]),
					  (unsigned long long)nb, (double)got, ref, bound);
			}
			free(w);
		}
		free(x);
		free(q);
	}
}

/* Rows long enough for the activation buffer to matter: 128 blocks (a batch goes through in
 * sub-batches of 16), and 2056 blocks (past the 64 Ki-element buffer: the dots quantize x
 * row by row). Matvec bit-identical for 1, 2, 3 threads, each element the bits of dot_q8x on
 * quantize_x(x); matmul of a batch the bits of repeated matvec. */
Test(quant, integer_matvec_and_matmul_bits_for_long_rows_and_batches)
{
	const struct spa_kernels_ops *v[2] = { &spa_kernels_ops_scalar, &spa_kernels_ops_avx2 };
	int nv = spa_kernels_cpu_has_avx2() ? 2 : 1;
	struct spa_pool *pools[3];
	for (int p = 0; p < 3; p++)
		cr_assert_eq(spa_pool_create(&pools[p], p + 1, NULL), 0);
	static const uint64_t shapes[][3] = { /* cols, rows, batch */
		{ 4096, 37, 37 }, { 32 * 2056, 5, 3 }, { 256, 9, 70 }, { 32, 9, 70 },
	};
	const enum spa_dtype *ts = int_types;
	for (size_t sh = 0; sh < 4; sh++) {
		uint64_t cols = shapes[sh][0], rows = shapes[sh][1];
		uint32_t nbat = (uint32_t)shapes[sh][2];
		float *x = malloc(nbat * cols * sizeof(float));
		float *y1 = malloc(rows * 4), *yp = malloc(rows * 4), *ym = malloc(nbat * rows * 4);
		struct spa_block_q8x *q = malloc(cols / 32 * sizeof *q);
		cr_assert(x && y1 && yp && ym && q);
		awkward_x(x, nbat * cols, 9 + sh);
		for (size_t k = 0; k < N_INT_TYPES; k++) {
			if (INT_SKIP(ts[k], cols / 32))
				continue;
			uint64_t rs;
			cr_assert_eq(spa_dtype_row_size(ts[k], cols, &rs), 0);
			uint8_t *w = random_qrow(ts[k], cols * rows, 40 + sh + k);
			struct spa_tensor tw = { ts[k], cols, rows, w, 0 };
			for (int i = 0; i < nv; i++) {
				const struct spa_kernels_ops *ops = v[i];
				spa_matvec_ops(ops, pools[0], &tw, x, y1);
				ops->quantize_x(x, q, cols, spa_xq_group(ts[k]));
				for (uint64_t r = 0; r < rows; r++) {
					float d = ops->dot_q8x[ts[k]](w + r * rs, q, cols);
					cr_assert_eq(memcmp(&d, &y1[r], 4), 0, "%s %s row %llu",
						     ops->name, spa_dtype_name(ts[k]),
						     (unsigned long long)r);
				}
				for (int p = 1; p < 3; p++) {
					spa_matvec_ops(ops, pools[p], &tw, x, yp);
					cr_assert_eq(memcmp(y1, yp, rows * 4), 0, "%s %s: %d threads",
						     ops->name, spa_dtype_name(ts[k]), p + 1);
				}
				for (int p = 0; p < 3; p += 2) {
					spa_matmul_ops(ops, pools[p], &tw, x, ym, nbat);
					for (uint32_t b = 0; b < nbat; b++) {
						spa_matvec_ops(ops, pools[1], &tw, x + b * cols, yp);
						cr_assert_eq(memcmp(ym + b * rows, yp, rows * 4), 0,
							     "%s %s %llux%llu: matmul vector %u",
							     ops->name, spa_dtype_name(ts[k]),
							     (unsigned long long)rows,
							     (unsigned long long)cols, b);
					}
				}
			}
			free(w);
		}
		free(x);
		free(y1);
		free(yp);
		free(ym);
		free(q);
	}
	for (int p = 0; p < 3; p++)
		spa_pool_destroy(pools[p]);
}

Test(quant, dispatch_is_fixed_per_process)
{
	const struct spa_kernels_ops *a = spa_kernels_ops(), *b = spa_kernels_ops();
	cr_assert_eq(a, b);
	cr_assert_str_eq(spa_kernels_variant(), a->name);
	cr_assert(a == &spa_kernels_ops_scalar || a == &spa_kernels_ops_avx2);
	for (size_t k = 0; k < N_TYPES; k++) {
		cr_assert(a->dot[all_types[k]], "%s", spa_dtype_name(all_types[k]));
		cr_assert(a->dequant_row[all_types[k]], "%s", spa_dtype_name(all_types[k]));
		cr_assert(spa_kernels_ops_scalar.dot[all_types[k]]);
		cr_assert(spa_kernels_ops_avx2.dot[all_types[k]]);
	}
	if (spa_kernels_cpu_has_avx2() && !getenv("SPA_KERNELS"))
		cr_assert_eq(a, &spa_kernels_ops_avx2);
}

/* ---- matvec / matmul determinism --------------------------------------------------------- */

Test(quant, matvec_bit_identical_across_threads_and_matmul)
{
	const uint64_t cols = 512, rows = 67; /* odd row count: uneven thread shares */
	const uint32_t nb = 5;
	float *w = malloc(cols * rows * sizeof(float)), *x = malloc(nb * cols * sizeof(float));
	cr_assert(w && x);
	tu_rand(w, cols * rows, 5, 1.0f);
	tu_rand(x, nb * cols, 6, 1.0f);
	struct spa_pool *pools[3];
	for (int p = 0; p < 3; p++)
		cr_assert_eq(spa_pool_create(&pools[p], p + 1, NULL), 0);
	const struct spa_kernels_ops *variants[2] = { &spa_kernels_ops_scalar,
						      &spa_kernels_ops_avx2 };
	int n_var = spa_kernels_cpu_has_avx2() ? 2 : 1;
	for (size_t k = 0; k < N_TYPES; k++) {
		enum spa_dtype t = all_types[k];
		uint64_t rs;
		cr_assert_eq(spa_dtype_row_size(t, cols, &rs), 0);
		uint8_t *data = malloc(rs * rows);
		cr_assert(data);
		for (uint64_t r = 0; r < rows; r++)
			cr_assert_eq(spa_quantize_row(t, w + r * cols, data + r * rs, cols), 0);
		struct spa_tensor tw = { t, cols, rows, data, 0 };
		for (int v = 0; v < n_var; v++) {
			const struct spa_kernels_ops *ops = variants[v];
			float y1[67], yp[67], ym[5 * 67];
			spa_matvec_ops(ops, pools[0], &tw, x, y1);
			for (uint64_t r = 0; r < rows; r++) {
				float d = ops->dot[t](data + r * rs, x, cols);
				cr_assert_eq(memcmp(&d, &y1[r], 4), 0, "row %llu", (unsigned long long)r);
			}
			for (int p = 1; p < 3; p++) {
				spa_matvec_ops(ops, pools[p], &tw, x, yp);
				cr_assert_eq(memcmp(y1, yp, sizeof y1), 0, "%s %s: %d threads differ",
					     spa_dtype_name(t), ops->name, p + 1);
			}
			for (int p = 0; p < 3; p++) {
				spa_matmul_ops(ops, pools[p], &tw, x, ym, nb);
				for (uint32_t b = 0; b < nb; b++) {
					spa_matvec_ops(ops, NULL, &tw, x + b * cols, yp);
					cr_assert_eq(memcmp(ym + b * rows, yp, rows * 4), 0,
						     "%s %s: matmul vector %u differs from matvec",
						     spa_dtype_name(t), ops->name, b);
				}
			}
		}
		free(data);
	}
	for (int p = 0; p < 3; p++)
		spa_pool_destroy(pools[p]);
	free(w);
	free(x);
}

/* ---- models in every type ---------------------------------------------------------------- */

/* A small shape whose rows fill 256-element blocks, so the k-quants are really used. */
static void small_shape(struct spa_hparams *hp)
{
	*hp = (struct spa_hparams){
		.n_layers = 2, .n_embd = 256, .n_ff = 512, .n_heads = 4, .n_kv_heads = 2,
		.head_dim = 64, .n_vocab = 512, .n_ctx = 64, .rms_eps = 1e-5f,
		.rope_base = 10000.0f,
	};
}

static float *run_logits(const char *path, uint32_t n_vocab)
{
	struct spa_model *m = NULL;
	struct spa_context *e = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load(&m, path, false, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_context_create(&e, m, NULL, 32, 8), 0);
	const int32_t toks[6] = { 1, 17, 300, 42, 99, 7 };
	cr_assert_eq(spa_engine_forward(e, toks, 6, NULL), 0);
	float *lg = malloc(n_vocab * sizeof(float));
	cr_assert(lg);
	spa_engine_logits(e, spa_context_final(e), lg);
	spa_context_destroy(e);
	spa_model_destroy(m);
	return lg;
}

static double cosine(const float *a, const float *b, uint32_t n)
{
	double ab = 0, aa = 0, bb = 0;
	for (uint32_t i = 0; i < n; i++) {
		ab += (double)a[i] * b[i];
		aa += (double)a[i] * a[i];
		bb += (double)b[i] * b[i];
	}
	return ab / sqrt(aa * bb);
}

Test(quant, models_in_every_type_run_close_to_f32)
{
	/* loose bounds on the cosine of the logits against the f32 model (random weights are
	 * harder on quantization than trained ones: no outliers to protect, all error adds) */
	static const struct {
		enum spa_dtype t;
		double min_cos;
	} cases[] = {
		{ SPA_TYPE_F16, 0.9999 }, { SPA_TYPE_BF16, 0.9995 }, { SPA_TYPE_Q8_0, 0.998 },
		{ SPA_TYPE_Q6_K, 0.995 }, { SPA_TYPE_Q4_K, 0.98 },  { SPA_TYPE_Q4_0, 0.97 },
	};
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	char path[256];
	const char *dir = tu_tmpdir();
	small_shape(&hp);
	snprintf(path, sizeof path, "%s/f32.gguf", dir);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 3, path, false, &err), 0, "%s", err.msg);
	float *ref = run_logits(path, hp.n_vocab);
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		enum spa_dtype t = cases[c].t;
		snprintf(path, sizeof path, "%s/%s.gguf", dir, spa_dtype_name(t));
		cr_assert_eq(spa_gen_base(&hp, t, 3, path, false, &err), 0, "%s", err.msg);
		struct spa_gguf *g;
		cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
		uint32_t ft = 99;
		cr_assert_eq(spa_gguf_get_u32(g, "general.file_type", &ft, &err), 0);
		cr_assert_eq((int)ft, spa_quantize_ftype(t));
		const struct spa_gguf_tensor *q = spa_gguf_find_tensor(g, "blk.0.attn_q.weight");
		const struct spa_gguf_tensor *o = spa_gguf_find_tensor(g, "output.weight");
		const struct spa_gguf_tensor *nrm = spa_gguf_find_tensor(g, "blk.1.ffn_norm.weight");
		cr_assert(q && o && nrm);
		cr_assert_eq(q->type, t, "%s: attn_q is %s", spa_dtype_name(t),
			     spa_dtype_name(q->type));
		cr_assert_eq(nrm->type, SPA_TYPE_F32);
		enum spa_dtype want_out = t == SPA_TYPE_Q4_0 || t == SPA_TYPE_Q4_K ? SPA_TYPE_Q6_K : t;
		cr_assert_eq(o->type, want_out, "%s: output is %s", spa_dtype_name(t),
			     spa_dtype_name(o->type));
		spa_gguf_close(g);

		float *lg = run_logits(path, hp.n_vocab);
		double cs = cosine(ref, lg, hp.n_vocab);
		cr_log_info("%s: cosine of the logits against f32 %.6f", spa_dtype_name(t), cs);
		cr_assert_geq(cs, cases[c].min_cos, "%s: cosine %g < %g", spa_dtype_name(t), cs,
			      cases[c].min_cos);
		free(lg);
	}
	free(ref);
}

Test(quant, tiny_shape_falls_back_where_rows_do_not_fill_blocks)
{
	/* tiny: H 128 (not a multiple of 256), FFN 344 (not a multiple of 32) */
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	char path[256];
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	snprintf(path, sizeof path, "%s/t.gguf", tu_tmpdir());
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_Q4_K, 1, path, false, &err), 0, "%s", err.msg);
	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gguf_find_tensor(g, "blk.0.attn_q.weight")->type, SPA_TYPE_Q8_0);
	cr_assert_eq(spa_gguf_find_tensor(g, "blk.0.ffn_down.weight")->type, SPA_TYPE_F16);
	cr_assert_eq(spa_gguf_find_tensor(g, "output.weight")->type, SPA_TYPE_Q8_0);
	struct spa_hparams hp2;
	cr_assert_eq(spa_model_check(g, &hp2, &err), 0, "%s", err.msg);
	spa_gguf_close(g);
}

/* ---- spa-quantize ------------------------------------------------------------------------ */

Test(quant, spa_quantize_round_trip)
{
	char cmd[1024], out[8192], dst[256];
	const char *src = tu_tiny_model();
	snprintf(dst, sizeof dst, "%s/q8.gguf", tu_tmpdir());
	snprintf(cmd, sizeof cmd, "%s --quiet -t 2 %s %s q8_0", tu_program("spa-quantize"), src,
		 dst);
	int st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 0, "%s", out);
	cr_assert(strstr(out, "q8_0"), "%s", out);
	cr_assert(strstr(out, "ffn_down"), "no note on the f16 fallback: %s", out);

	struct spa_errbuf err = {{0}};
	struct spa_gguf *g, *s;
	struct spa_hparams hp;
	cr_assert_eq(spa_gguf_open(&g, dst, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gguf_open(&s, src, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_model_check(g, &hp, &err), 0, "%s", err.msg);
	uint32_t ft = 0;
	cr_assert_eq(spa_gguf_get_u32(g, "general.file_type", &ft, &err), 0);
	cr_assert_eq(ft, 7);
	cr_assert_eq(g->n_kv, s->n_kv + 1, "kvs: %llu vs %llu (+ quantization_version)",
		     (unsigned long long)g->n_kv, (unsigned long long)s->n_kv);
	cr_assert_eq(g->n_tensors, s->n_tensors);
	cr_assert_eq(spa_gguf_find_tensor(g, "blk.0.attn_q.weight")->type, SPA_TYPE_Q8_0);
	cr_assert_eq(spa_gguf_find_tensor(g, "token_embd.weight")->type, SPA_TYPE_Q8_0);
	cr_assert_eq(spa_gguf_find_tensor(g, "blk.0.ffn_down.weight")->type, SPA_TYPE_F16);
	cr_assert_eq(spa_gguf_find_tensor(g, "blk.0.attn_norm.weight")->type, SPA_TYPE_F32);

	/* the bytes are those spa_quantize_row makes of the source rows */
	const struct spa_gguf_tensor *tq = spa_gguf_find_tensor(g, "blk.2.attn_k.weight");
	const struct spa_gguf_tensor *ts = spa_gguf_find_tensor(s, "blk.2.attn_k.weight");
	float *f = malloc(ts->size);
	uint8_t *b = malloc(tq->size), *want = malloc(tq->size);
	cr_assert(f && b && want);
	cr_assert_eq(spa_gguf_pread(s, ts->offset, f, ts->size, &err), 0);
	cr_assert_eq(spa_gguf_pread(g, tq->offset, b, tq->size, &err), 0);
	cr_assert_eq(spa_quantize_row(SPA_TYPE_Q8_0, f, want, ts->n_elems), 0);
	cr_assert_eq(memcmp(b, want, tq->size), 0);
	free(f);
	free(b);
	free(want);
	spa_gguf_close(s);
	spa_gguf_close(g);

	/* the same conversion as spa-gen --type q8_0 of the same seed */
	char gen[256];
	snprintf(gen, sizeof gen, "%s/gen-q8.gguf", tu_tmpdir());
	snprintf(cmd, sizeof cmd, "%s base --shape tiny --type q8_0 --seed 1 --quiet -o %s",
		 tu_program("spa-gen"), gen);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "%s", out);
	struct spa_gguf *gq, *gg;
	cr_assert_eq(spa_gguf_open(&gq, dst, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gguf_open(&gg, gen, &err), 0, "%s", err.msg);
	cr_assert_eq(gq->n_tensors, gg->n_tensors);
	for (uint64_t i = 0; i < gq->n_tensors; i++) {
		const struct spa_gguf_tensor *a = &gq->tensors[i];
		const struct spa_gguf_tensor *c = spa_gguf_find_tensor(gg, a->name.data);
		cr_assert(c && c->type == a->type && c->size == a->size, "%s", a->name.data);
		uint8_t *ba = malloc(a->size), *bc = malloc(c->size);
		cr_assert(ba && bc);
		cr_assert_eq(spa_gguf_pread(gq, a->offset, ba, a->size, &err), 0);
		cr_assert_eq(spa_gguf_pread(gg, c->offset, bc, c->size, &err), 0);
		cr_assert_eq(memcmp(ba, bc, a->size), 0, "%s differs from spa-gen's", a->name.data);
		free(ba);
		free(bc);
	}
	spa_gguf_close(gq);
	spa_gguf_close(gg);

	/* and it runs */
	snprintf(cmd, sizeof cmd, "%s -m %s -n 4 --ids", tu_program("spa-run"), dst);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "%s", out);

	/* requantizing a quantized model: a note, and a loadable file */
	char dst2[256];
	snprintf(dst2, sizeof dst2, "%s/q4.gguf", tu_tmpdir());
	snprintf(cmd, sizeof cmd, "%s --quiet %s %s q4_0", tu_program("spa-quantize"), dst, dst2);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "%s", out);
	cr_assert(strstr(out, "already quantized"), "%s", out);
	cr_assert_eq(spa_gguf_open(&g, dst2, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_model_check(g, &hp, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_gguf_find_tensor(g, "blk.0.attn_q.weight")->type, SPA_TYPE_Q4_0);
	cr_assert_eq(spa_gguf_find_tensor(g, "output.weight")->type, SPA_TYPE_Q8_0);
	spa_gguf_close(g);
}

Test(quant, spa_quantize_usage_errors)
{
	char cmd[1024], out[4096];
	const char *dir = tu_tmpdir();
	const struct {
		const char *args;
		int status;
		const char *want;
	} cases[] = {
		{ "%s %s/o.gguf q5_1", 2, "q5_1" },
		{ "%s %s/o.gguf wat", 2, "wat" },
		{ "%s %s/o.gguf", 2, "TYPE" },
		{ "", 2, "IN.gguf" },
		{ "--bogus %s %s/o.gguf q8_0", 2, "--bogus" },
		{ "-t 0 %s %s/o.gguf q8_0", 2, "-t" },
		{ "/nonexistent.gguf %s/o.gguf q8_0", 1, "nonexistent" },
		{ "--help", 0, "fingerprint" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char args[512];
		if (strstr(cases[i].args, "nonexistent"))
			snprintf(args, sizeof args, cases[i].args, dir);
		else
			snprintf(args, sizeof args, cases[i].args, tu_tiny_model(), dir);
		snprintf(cmd, sizeof cmd, "%s %s", tu_program("spa-quantize"), args);
		int st = tu_run(cmd, out, sizeof out, 1);
		cr_assert_eq(st, cases[i].status, "'%s' exited %d: %s", args, st, out);
		cr_assert(strstr(out, cases[i].want), "'%s' said '%s', lacking '%s'", args, out,
			  cases[i].want);
	}
	char p[256];
	snprintf(p, sizeof p, "%s/o.gguf", dir);
	cr_assert_eq(access(p, F_OK), -1, "a refused command wrote %s", p);
}

/* spa_matvec_x: x made ready once gives spa_matvec's bits for every type, on the whole matrix
 * and on row ranges of it (the greedy head's tiles, a streamed matrix's parts), with and
 * without a pool; a column count past SPA_MATVEC_X_MAX_COLS keeps x in f32 as spa_matvec
 * does. */
Test(quant, a_prepared_input_gives_matvec_bits_on_every_type_and_row_range)
{
	struct spa_pool *pool = NULL;
	cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);
	struct spa_matvec_x *px = aligned_alloc(64, sizeof *px);
	cr_assert_not_null(px);
	static const uint64_t shapes[][2] = { { 37, 256 }, { 130, 1024 },
					      { 5, SPA_MATVEC_X_MAX_COLS + 256 } };
	for (size_t s = 0; s < 3; s++) {
		const uint64_t rows = shapes[s][0], cols = shapes[s][1];
		float *wf = malloc(rows * cols * 4), *x = malloc(cols * 4);
		float *want = malloc(rows * 4), *got = malloc(rows * 4);
		tu_rand(wf, rows * cols, 11 + s, 1.0f);
		tu_rand(x, cols, 21 + s, 2.0f);
		for (size_t t = 0; t < N_TYPES; t++) {
			spa_matvec_x_prepare(px, x, cols, all_types[t]);
			cr_assert_eq(px->quantized, cols <= SPA_MATVEC_X_MAX_COLS);
			void *w = quantize(all_types[t], wf, rows * cols);
			uint64_t row_size;
			cr_assert_eq(spa_dtype_row_size(all_types[t], cols, &row_size), 0);
			struct spa_tensor ten = { all_types[t], cols, rows, w, 0 };
			spa_matvec(NULL, &ten, x, want);
			for (int p = 0; p < 2; p++) {
				memset(got, 0xff, rows * 4);
				spa_matvec_x(p ? pool : NULL, &ten, px, got);
				cr_assert_eq(memcmp(got, want, rows * 4), 0, "%s %llux%llu",
					     spa_dtype_name(all_types[t]), (unsigned long long)rows,
					     (unsigned long long)cols);
			}
			for (uint64_t r0 = 0; r0 < rows; r0 += 3) { /* parts of 1 to 7 rows */
				const uint64_t n = rows - r0 < 1 + r0 % 7 ? rows - r0 : 1 + r0 % 7;
				struct spa_tensor sub = { all_types[t], cols, n,
							  (const uint8_t *)w + r0 * row_size, 0 };
				spa_matvec_x(NULL, &sub, px, got + r0);
				cr_assert_eq(memcmp(got + r0, want + r0, n * 4), 0, "%s rows %llu+%llu",
					     spa_dtype_name(all_types[t]), (unsigned long long)r0,
					     (unsigned long long)n);
			}
			free(w);
		}
		free(wf), free(x), free(want), free(got);
	}
	free(px);
	spa_pool_destroy(pool);
}

/* A Q4_0 matrix of rows random rows (cols a multiple of 32), malloc'd. */
static uint8_t *random_q4_0(uint64_t rows, uint64_t cols, uint64_t seed)
{
	uint64_t rs;
	cr_assert_eq(spa_dtype_row_size(SPA_TYPE_Q4_0, cols, &rs), 0);
	uint8_t *w = malloc(rows * rs);
	cr_assert(w);
	for (uint64_t r = 0; r < rows; r++) {
		void *row = random_qrow(SPA_TYPE_Q4_0, cols, seed + 31 * r);
		memcpy(w + r * rs, row, rs);
		free(row);
	}
	return w;
}

/* The packed kernels give each of the 8 rows the bits of the single-row dot on the row as the
 * file holds it, in both variants, for awkward row lengths (1 to 2056 blocks); so do the 8-row
 * kernels on the file's rows. */
Test(quant, packed_q4_0_kernels_give_each_row_the_single_row_bits)
{
	const struct spa_kernels_ops *v[2] = { &spa_kernels_ops_scalar, &spa_kernels_ops_avx2 };
	const int nv = spa_kernels_cpu_has_avx2() ? 2 : 1;
	int checked = 0;
	for (size_t s = 0; s < sizeof int_blocks / sizeof int_blocks[0]; s++) {
		const uint64_t nb = int_blocks[s], n = 32 * nb, rs = nb * 18;
		float *x = malloc(n * sizeof(float));
		struct spa_block_q8x *xq = malloc(nb * sizeof *xq);
		uint8_t *w = random_q4_0(16, n, 7 * nb), *pk = malloc(16 * rs), *tmp = malloc(8 * rs);
		cr_assert(x && xq && pk && tmp);
		memcpy(pk, w, 16 * rs);
		spa_pack_q4_0_x8(pk, rs, 16, tmp);
		cr_assert_neq(memcmp(pk, w, 16 * rs), 0, "packing moved no byte");
		awkward_x(x, n, 3 * nb + 2);
		for (int i = 0; i < nv; i++) {
			v[i]->quantize_x(x, xq, n, 32);
			for (int g = 0; g < 2; g++) {
				float y[8];
				v[i]->dot_q8x_packed[SPA_TYPE_Q4_0](pk + g * 8 * rs, xq, n, y);
				for (int r = 0; r < 8; r++) {
					const float a = v[i]->dot_q8x[SPA_TYPE_Q4_0](w + (8 * g + r) * rs,
										     xq, n);
					cr_assert_eq(memcmp(&a, &y[r], 4), 0,
						     "%s %llu blocks, row %d: %a vs %a", v[i]->name,
						     (unsigned long long)nb, 8 * g + r, (double)a,
						     (double)y[r]);
					checked++;
				}
			}
		}
		/* the 8-row kernels on the rows as the file lays them out, where a variant has
		 * one (the next 8 rows prefetched: the matrix's rest, or past its end) */
		for (int i = 0; i < nv; i++) {
			if (!v[i]->dot_q8x_rows8[SPA_TYPE_Q4_0])
				continue;
			v[i]->quantize_x(x, xq, n, 32);
			for (int g = 0; g < 2; g++) {
				float y[8];
				v[i]->dot_q8x_rows8[SPA_TYPE_Q4_0](w + g * 8 * rs, rs, xq, n, y);
				for (int r = 0; r < 8; r++) {
					const float a = v[i]->dot_q8x[SPA_TYPE_Q4_0](w + (8 * g + r) * rs,
										     xq, n);
					cr_assert_eq(memcmp(&a, &y[r], 4), 0,
						     "%s rows8 %llu blocks, row %d", v[i]->name,
						     (unsigned long long)nb, 8 * g + r);
					checked++;
				}
			}
		}
		free(x), free(xq), free(w), free(pk), free(tmp);
	}
	cr_assert_geq(checked, 16 * 16, "only %d rows checked", checked);
}

/* A packed Q4_0 matrix gives every product entry point the bits of the unpacked one: matvec
 * (1 to 3 threads), matmul, matvec_x on whole matrices and on row ranges of whole groups,
 * several matrices in one job (packed beside unpacked and other types) and the fused SwiGLU
 * with a packed gate and an unpacked up (and the reverse); in both variants where the entry
 * point takes one. spa_tensor_pack packs only what it can. */
Test(quant, packed_q4_0_matrices_give_the_unpacked_bits)
{
	const struct spa_kernels_ops *v[2] = { &spa_kernels_ops_scalar, &spa_kernels_ops_avx2 };
	const int nv = spa_kernels_cpu_has_avx2() ? 2 : 1;
	struct spa_pool *pools[3];
	for (int p = 0; p < 3; p++)
		cr_assert_eq(spa_pool_create(&pools[p], p + 1, NULL), 0);
	struct spa_matvec_x *px = aligned_alloc(64, sizeof *px);
	cr_assert_not_null(px);
	static const uint64_t shapes[][2] = { { 8, 32 }, { 64, 512 }, { 136, 4096 }, { 48, 11008 } };
	for (size_t s = 0; s < 4; s++) {
		const uint64_t rows = shapes[s][0], cols = shapes[s][1], rs = cols / 32 * 18;
		const uint32_t nbat = 5;
		uint8_t *w = random_q4_0(rows, cols, 100 + s), *wp = malloc(rows * rs);
		float *x = malloc(nbat * cols * 4), *want = malloc(nbat * rows * 4);
		float *got = malloc(nbat * rows * 4), *u = malloc(rows * 4), *o = malloc(rows * 4);
		float *wu = malloc(rows * 4), *wo = malloc(rows * 4);
		cr_assert(wp && x && want && got && u && o && wu && wo);
		memcpy(wp, w, rows * rs);
		awkward_x(x, nbat * cols, 50 + s);
		struct spa_tensor t = { SPA_TYPE_Q4_0, cols, rows, w, 0 };
		struct spa_tensor tp = { SPA_TYPE_Q4_0, cols, rows, wp, 0 };
		cr_assert_eq(spa_tensor_pack(&tp), 1);
		cr_assert_eq(tp.packed, 1);
		cr_assert_eq(spa_tensor_pack(&tp), 1, "packing twice is packing once");
		for (int i = 0; i < nv; i++) {
			for (int p = 0; p < 3; p++) {
				spa_matvec_ops(v[i], pools[0], &t, x, want);
				spa_matvec_ops(v[i], pools[p], &tp, x, got);
				cr_assert_eq(memcmp(want, got, rows * 4), 0, "%s %llux%llu matvec, "
					     "%d threads", v[i]->name, (unsigned long long)rows,
					     (unsigned long long)cols, p + 1);
				spa_matmul_ops(v[i], pools[0], &t, x, want, nbat);
				spa_matmul_ops(v[i], pools[p], &tp, x, got, nbat);
				cr_assert_eq(memcmp(want, got, nbat * rows * 4), 0, "%s matmul, %d "
					     "threads", v[i]->name, p + 1);
			}
		}
		/* the process's variant from here on */
		spa_matvec(NULL, &t, x, want);
		spa_matvec_x_prepare(px, x, cols, SPA_TYPE_Q4_0);
		spa_matvec_x(pools[1], &tp, px, got);
		cr_assert_eq(memcmp(want, got, rows * 4), 0, "matvec_x");
		for (uint64_t r0 = 0; r0 < rows; r0 += 8) { /* ranges of 1 to 3 groups */
			const uint64_t n = rows - r0 < 8 * (1 + r0 % 3) ? rows - r0 : 8 * (1 + r0 % 3);
			struct spa_tensor sub = tp;
			sub.rows = n;
			sub.data = wp + r0 * rs;
			memset(got, 0xff, n * 4);
			spa_matvec_x(NULL, &sub, px, got);
			cr_assert_eq(memcmp(want + r0, got, n * 4), 0, "rows %llu+%llu",
				     (unsigned long long)r0, (unsigned long long)n);
		}
		/* items: packed, unpacked and Q8_0 of the same x in one job */
		uint8_t *w8 = random_qrow(SPA_TYPE_Q8_0, cols * 3, 9 + s);
		struct spa_tensor t8 = { SPA_TYPE_Q8_0, cols, 3, w8, 0 };
		float y8[3], r8[3];
		spa_matvec(NULL, &t8, x, r8);
		const struct spa_matvec_item it[3] = { { &tp, x, NULL, got }, { &t, x, NULL, u },
						       { &t8, x, NULL, y8 } };
		spa_matvec_items(pools[2], 3, it);
		cr_assert_eq(memcmp(want, got, rows * 4), 0, "items: packed");
		cr_assert_eq(memcmp(want, u, rows * 4), 0, "items: unpacked");
		cr_assert_eq(memcmp(r8, y8, sizeof r8), 0, "items: Q8_0");
		/* SwiGLU with the gate and up as the same matrix: packed gate, unpacked up and
		 * the reverse (the rows chunked in whole groups of either) */
		spa_matvec(NULL, &t, x, wu);
		spa_swiglu(wo, wu, wu, (uint32_t)rows);
		for (int k = 0; k < 2; k++) {
			spa_matvec_swiglu(pools[k + 1], k ? &t : &tp, k ? &tp : &t, x, o, u);
			cr_assert_eq(memcmp(u, wu, rows * 4), 0, "swiglu %d: up", k);
			cr_assert_eq(memcmp(o, wo, rows * 4), 0, "swiglu %d: out", k);
		}
		free(w), free(wp), free(w8), free(x), free(want), free(got), free(u), free(o);
		free(wu), free(wo);
	}
	/* what has no packed layout stays as it is */
	uint8_t *w = random_q4_0(12, 64, 5), *copy = malloc(12 * 36);
	memcpy(copy, w, 12 * 36);
	struct spa_tensor odd = { SPA_TYPE_Q4_0, 64, 12, w, 0 };
	cr_assert_eq(spa_tensor_pack(&odd), 0, "12 rows: not whole groups of 8");
	cr_assert_eq(odd.packed, 0);
	cr_assert_eq(memcmp(copy, w, 12 * 36), 0);
	struct spa_tensor q8 = { SPA_TYPE_Q8_0, 64, 8, w, 0 };
	cr_assert_eq(spa_tensor_pack(&q8), 0, "Q8_0 has no packed layout");
	cr_assert_not(spa_tensor_packable(&(struct spa_tensor){ SPA_TYPE_Q4_0,
								SPA_MATVEC_X_MAX_COLS + 32, 8,
								NULL, 0 }));
	free(w), free(copy), free(px);
	for (int p = 0; p < 3; p++)
		spa_pool_destroy(pools[p]);
}

/* Q6_K's activations have one scale per 256 elements, Q8_0's and Q4_0's per 32: an x
 * prepared for one is refused for the other (a debug build's assert; NaN rows otherwise),
 * never multiplied with the wrong scales. */
static void matvec_x_of_another_group(void)
{
	const uint64_t cols = 512, rows = 8;
	float x[512], wf[8 * 512], y[8];
	tu_rand(x, cols, 1, 1.0f);
	tu_rand(wf, rows * cols, 2, 1.0f);
	void *w = quantize(SPA_TYPE_Q6_K, wf, rows * cols);
	struct spa_tensor t = { SPA_TYPE_Q6_K, cols, rows, w, 0 };
	struct spa_matvec_x *px = aligned_alloc(64, sizeof *px);
	cr_assert(px);
	spa_matvec_x_prepare(px, x, cols, SPA_TYPE_Q6_K);
	spa_matvec_x(NULL, &t, px, y);
	float want[8];
	spa_matvec(NULL, &t, x, want);
	cr_assert_eq(memcmp(y, want, sizeof y), 0, "prepared for its own type: spa_matvec's bits");
	spa_matvec_x_prepare(px, x, cols, SPA_TYPE_Q4_0);
	spa_matvec_x(NULL, &t, px, y);
	for (uint64_t r = 0; r < rows; r++)
		cr_assert(isnan(y[r]), "row %llu of a refused product", (unsigned long long)r);
	free(px);
	free(w);
}

#ifdef NDEBUG
Test(quant, matvec_x_refuses_a_matrix_of_another_activation_group)
{
	matvec_x_of_another_group();
}
#else
Test(quant, matvec_x_refuses_a_matrix_of_another_activation_group, .signal = SIGABRT)
{
	matvec_x_of_another_group();
}
#endif
