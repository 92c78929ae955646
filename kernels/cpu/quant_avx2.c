/* spa: AVX2 + FMA + F16C dot products for the quantized formats (compiled with -mavx2 -mfma
 * -mf16c; only reached through spa_kernels_ops_avx2, which kernels.c selects when the CPU has
 * all three).
 *
 * Same structure as the scalar references in quant.c (kernels_impl.h describes it): the 8
 * lane sums of a (sub-)block are one __m256, started with a multiply and continued with FMAs,
 * then folded into the accumulator with one FMA by the block's scale. The levels are widened
 * to int32 and converted to float (exact), so x stays in f32 and nothing is quantized on the
 * activation side. */
#include <immintrin.h>

#include "kernels_impl.h"

static inline float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

static inline float half(uint16_t h)
{
	return _cvtsh_ss(h); /* F16C: exact, as spa__fp16_to_fp32 */
}

/* 8 signed bytes (the low 8 of v) as floats. */
static inline __m256 i8_ps(__m128i v)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

/* 32 bytes of levels (element k of the sub-block in byte k) times x[0..31]: the lane sums. */
static inline __m256 dot32_i8(__m256i q, const float *x)
{
	__m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
	__m256 p = _mm256_mul_ps(i8_ps(lo), _mm256_loadu_ps(x));
	p = _mm256_fmadd_ps(i8_ps(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(x + 8), p);
	p = _mm256_fmadd_ps(i8_ps(hi), _mm256_loadu_ps(x + 16), p);
	return _mm256_fmadd_ps(i8_ps(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(x + 24), p);
}

float spa_dot_q8_0_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q8_0 *b = w;
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK8_0; i++, x += SPA_QK8_0) {
		__m256i q = _mm256_loadu_si256((const __m256i *)b[i].qs);
		acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b[i].d)), dot32_i8(q, x), acc);
	}
	return hsum8(acc);
}

float spa_dot_q4_0_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q4_0 *b = w;
	const __m128i m4 = _mm_set1_epi8(0x0F), c8 = _mm_set1_epi8(8);
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK4_0; i++, x += SPA_QK4_0) {
		__m128i raw = _mm_loadu_si128((const __m128i *)b[i].qs);
		__m128i lo = _mm_sub_epi8(_mm_and_si128(raw, m4), c8);                     /* 0..15 */
		__m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), c8); /* 16..31 */
		acc = _mm256_fmadd_ps(_mm256_set1_ps(half(b[i].d)),
				      dot32_i8(_mm256_set_m128i(hi, lo), x), acc);
	}
	return hsum8(acc);
}

/* 32 unsigned nibbles (one per byte) times x[0..31], and the lane sums of x. */
static inline __m256 dot32_u4(__m256i q, const float *x, __m256 *sx)
{
	__m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
	__m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
	__m256 x2 = _mm256_loadu_ps(x + 16), x3 = _mm256_loadu_ps(x + 24);
	*sx = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), x2), x3);
	__m256 p = _mm256_mul_ps(i8_ps(lo), x0);
	p = _mm256_fmadd_ps(i8_ps(_mm_srli_si128(lo, 8)), x1, p);
	p = _mm256_fmadd_ps(i8_ps(hi), x2, p);
	return _mm256_fmadd_ps(i8_ps(_mm_srli_si128(hi, 8)), x3, p);
}

float spa_dot_q4_K_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q4_K *b = w;
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		const float d = half(b[i].d), dmin = half(b[i].dmin);
		for (int c = 0; c < 4; c++, x += 64) {
			__m256i raw = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
			__m256i lo = _mm256_and_si256(raw, m4);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
			uint8_t sc, m;
			__m256 sx;

			spa__q4k_scale_min(2 * c, b[i].scales, &sc, &m);
			__m256 p = dot32_u4(lo, x, &sx);
			acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc), p, acc);
			acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * m), sx, acc);

			spa__q4k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
			p = dot32_u4(hi, x + 32, &sx);
			acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc), p, acc);
			acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * m), sx, acc);
		}
	}
	return hsum8(acc);
}

/* 16 signed levels (bytes of v) times x[0..15]: the lane sums of one Q6_K sub-block. */
static inline __m256 dot16_i8(__m128i v, const float *x)
{
	__m256 p = _mm256_mul_ps(i8_ps(v), _mm256_loadu_ps(x));
	return _mm256_fmadd_ps(i8_ps(_mm_srli_si128(v, 8)), _mm256_loadu_ps(x + 8), p);
}

float spa_dot_q6_K_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q6_K *b = w;
	const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
	const __m256i c32 = _mm256_set1_epi8(32);
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		const float d = half(b[i].d);
		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
			const int8_t *sc = b[i].scales + 8 * h;
			__m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
			__m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
			__m256i hb = _mm256_loadu_si256((const __m256i *)qh);
			/* group g: elements 32 g .. 32 g + 31 of the half, levels minus 32 */
			__m256i g[4];
			g[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
					       _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
			g[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
					       _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
			g[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
					       _mm256_and_si256(hb, m30));
			g[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
					       _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
			for (int k = 0; k < 4; k++, x += 32) {
				__m256i q = _mm256_sub_epi8(g[k], c32);
				__m256 p0 = dot16_i8(_mm256_castsi256_si128(q), x);
				__m256 p1 = dot16_i8(_mm256_extracti128_si256(q, 1), x + 16);
				acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * k]), p0, acc0);
				acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * sc[2 * k + 1]), p1, acc1);
			}
		}
	}
	return hsum8(_mm256_add_ps(acc0, acc1));
}
