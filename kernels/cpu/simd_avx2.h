/* spa: horizontal sums shared by the AVX2 kernel files (kernels_avx2.c, quant_avx2.c), both
 * compiled with -mavx2 -mfma -mf16c. Not for files built without them. */
#ifndef SPA_SIMD_AVX2_H
#define SPA_SIMD_AVX2_H

#include <immintrin.h>

/* The 8 lanes of v summed as ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)): part of every
 * AVX2 dot's fixed order. */
static inline float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* The 4 hsum8's of a, b, c, d into y[0..3], each with hsum8's association, so the same bits,
 * in 7 shuffles and 4 adds instead of 4 x (3 shuffles + 3 adds). */
static inline void hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d, float *y)
{
	/* lanes k + (k + 4): [a | b], [c | d] */
	__m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
				  _mm256_permute2f128_ps(a, b, 0x31));
	__m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20),
				  _mm256_permute2f128_ps(c, d, 0x31));
	/* (0 + 2), (1 + 3): [a02 a13 c02 c13 | b02 b13 d02 d13] */
	__m256 t = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
				 _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
	/* 0 + 1: [a c a c | b d b d] */
	__m256 r = _mm256_add_ps(_mm256_shuffle_ps(t, t, _MM_SHUFFLE(2, 0, 2, 0)),
				 _mm256_shuffle_ps(t, t, _MM_SHUFFLE(3, 1, 3, 1)));
	_mm_storeu_ps(y, _mm_unpacklo_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1)));
}

#endif
