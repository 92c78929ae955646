/* spa: AVX2 + FMA + F16C row kernels (compiled with -mavx2 -mfma -mf16c; kernels.c only
 * selects this table when __builtin_cpu_supports says the CPU has all three).
 *
 * Summation order of every dot here: four 8-lane FMA accumulators over blocks of 32
 * (element i goes to accumulator (i / 8) % 4, lane i % 8); then the remaining whole groups
 * of 8 into accumulator 0, the last partial group (zero-padded) into accumulator 0;
 * combine (a0 + a1) + (a2 + a3), then the lanes (l + h for the 128-bit halves, then
 * (0+2, 1+3), then 0+1). Fixed for a given n, so matvec, matmul and spa_dot_f32 agree. */
#include <immintrin.h>
#include <string.h>

#include "kernels_impl.h"
#include "simd_avx2.h"

/* The 8 floats of group i of a row of any type, converted. */
static inline __m256 load_f32(const void *w, size_t i)
{
	return _mm256_loadu_ps((const float *)w + i);
}

static inline __m256 load_f16(const void *w, size_t i)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}

static inline __m256 load_bf16(const void *w, size_t i)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* Software prefetch PREFETCH_AHEAD bytes ahead of the row being read, a 64-byte line per line
 * read: the hardware's stream prefetcher alone leaves DRAM idle at the start of each short
 * stream (a decode step starts about 160 of them, a matrix share per thread; measured on
 * bench/decode: F16 +5 to +10 % tok/s at the default shape, 1024 against 0 and 2048). */
#define PREFETCH_AHEAD 1024
#define PFW(w, i, wtype)                                                                   \
	do {                                                                               \
		const char *pf_ = (const char *)((const wtype *)(w) + (i)) + PREFETCH_AHEAD; \
		_mm_prefetch(pf_, _MM_HINT_T0);                                            \
		if (sizeof(wtype) == 4) /* 128 bytes an iteration */                       \
			_mm_prefetch(pf_ + 64, _MM_HINT_T0);                               \
	} while (0)

/* One row's 8 lane sums before the final hsum8, in the order the file's header gives. Partial
 * group of rem < 8 elements at i: copied into zeroed buffers (zeros add nothing, and 0 * 0
 * cannot make a NaN) so that nothing is read past the end of either array. */
#define SPA_DOT_AVX2_LANES(name, wtype, load)                                              \
	static inline __m256 name(const void *w, const float *x, size_t n)                 \
	{                                                                                  \
		__m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                 \
		__m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                 \
		size_t i = 0;                                                              \
		for (; i + 32 <= n; i += 32) {                                             \
			PFW(w, i, wtype);                                                  \
			a0 = _mm256_fmadd_ps(load(w, i), _mm256_loadu_ps(x + i), a0);      \
			a1 = _mm256_fmadd_ps(load(w, i + 8), _mm256_loadu_ps(x + i + 8), a1); \
			a2 = _mm256_fmadd_ps(load(w, i + 16), _mm256_loadu_ps(x + i + 16), a2); \
			a3 = _mm256_fmadd_ps(load(w, i + 24), _mm256_loadu_ps(x + i + 24), a3); \
		}                                                                          \
		for (; i + 8 <= n; i += 8)                                                 \
			a0 = _mm256_fmadd_ps(load(w, i), _mm256_loadu_ps(x + i), a0);      \
		if (i < n) {                                                               \
			wtype wb[8] = { 0 };                                               \
			float xb[8] = { 0 };                                               \
			memcpy(wb, (const wtype *)w + i, (n - i) * sizeof(wtype));         \
			memcpy(xb, x + i, (n - i) * sizeof(float));                        \
			a0 = _mm256_fmadd_ps(load(wb, 0), _mm256_loadu_ps(xb), a0);        \
		}                                                                          \
		return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));        \
	}

SPA_DOT_AVX2_LANES(lanes_f32, float, load_f32)
SPA_DOT_AVX2_LANES(lanes_f16, uint16_t, load_f16)
SPA_DOT_AVX2_LANES(lanes_bf16, uint16_t, load_bf16)

/* Rows kernels for the float types: each row's loop as in the single-row dot, one after the
 * other (so the reads stay sequential), and the four reductions in one shuffle tree; the call
 * and the reduction were most of a short row's time (a 32-wide side adapter row, a 64-wide
 * attention head). */
#define SPA_DOT_ROWS_AVX2(name, lanes)                                                     \
	static void name(const void *w, size_t row_size, const float *x, size_t n, float *y, \
			 unsigned nrows)                                                   \
	{                                                                                  \
		const uint8_t *p = w;                                                      \
		__m256 v[4];                                                               \
		float t[4];                                                                \
		for (unsigned k = 0; k < 4; k++)                                           \
			v[k] = k < nrows ? lanes(p + k * row_size, x, n) : _mm256_setzero_ps(); \
		hsum8x4(v[0], v[1], v[2], v[3], t);                                        \
		memcpy(y, t, nrows * sizeof(float));                                       \
	}

SPA_DOT_ROWS_AVX2(dot_f32_rows_avx2, lanes_f32)
SPA_DOT_ROWS_AVX2(dot_f16_rows_avx2, lanes_f16)
SPA_DOT_ROWS_AVX2(dot_bf16_rows_avx2, lanes_bf16)

static float dot_f32_avx2(const void *w, const float *x, size_t n)
{
	return hsum8(lanes_f32(w, x, n));
}

static float dot_f16_avx2(const void *w, const float *x, size_t n)
{
	return hsum8(lanes_f16(w, x, n));
}

static float dot_bf16_avx2(const void *w, const float *x, size_t n)
{
	return hsum8(lanes_bf16(w, x, n));
}

static void dequant_f16_avx2(const void *src, float *dst, size_t n)
{
	const uint16_t *h = src;
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
	for (; i < n; i++)
		dst[i] = spa__fp16_to_fp32(h[i]);
}

static void dequant_bf16_avx2(const void *src, float *dst, size_t n)
{
	const uint16_t *h = src;
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, load_bf16(h, i));
	for (; i < n; i++)
		dst[i] = spa__bf16_to_fp32(h[i]);
}

/* spa_wsum_scalar's operations (a multiply, then an add; no FMA) on 32 or 8 columns at a time,
 * the sums held in registers across the rows; the last columns as the scalar code. */
#define SPA_WSUM_AVX2(name, vtype, load, tail)                                             \
	static void name(float *out, const float *a, const vtype *v, size_t stride,        \
			 uint32_t rows, uint32_t n)                                        \
	{                                                                                  \
		uint32_t d = 0;                                                            \
		for (; d + 32 <= n; d += 32) {                                             \
			__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;        \
			for (uint32_t t = 0; t < rows; t++) {                              \
				const vtype *r = v + (size_t)t * stride + d;               \
				const __m256 w = _mm256_set1_ps(a[t]);                     \
				s0 = _mm256_add_ps(s0, _mm256_mul_ps(w, load(r, 0)));      \
				s1 = _mm256_add_ps(s1, _mm256_mul_ps(w, load(r, 8)));      \
				s2 = _mm256_add_ps(s2, _mm256_mul_ps(w, load(r, 16)));     \
				s3 = _mm256_add_ps(s3, _mm256_mul_ps(w, load(r, 24)));     \
			}                                                                  \
			_mm256_storeu_ps(out + d, s0);                                     \
			_mm256_storeu_ps(out + d + 8, s1);                                 \
			_mm256_storeu_ps(out + d + 16, s2);                                \
			_mm256_storeu_ps(out + d + 24, s3);                                \
		}                                                                          \
		for (; d + 8 <= n; d += 8) {                                               \
			__m256 s0 = _mm256_setzero_ps();                                   \
			for (uint32_t t = 0; t < rows; t++)                                \
				s0 = _mm256_add_ps(s0, _mm256_mul_ps(_mm256_set1_ps(a[t]), \
						   load(v + (size_t)t * stride + d, 0)));  \
			_mm256_storeu_ps(out + d, s0);                                     \
		}                                                                          \
		if (d < n)                                                                 \
			tail(out + d, a, v + d, stride, rows, n - d);                      \
	}

SPA_WSUM_AVX2(wsum_avx2, float, load_f32, spa_wsum_scalar)
SPA_WSUM_AVX2(wsum_f16_avx2, uint16_t, load_f16, spa_wsum_f16_scalar)

static void to_f16_avx2(uint16_t *dst, const float *src, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i),
				 _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	if (i < n)
		spa_to_f16_scalar(dst + i, src + i, n - i);
}

/* spa__expf's operations on 8 lanes (the same bits: its clamps as compares and blends, and
 * a NaN passes through the arithmetic). */
static inline __m256 exp8(__m256 x)
{
	const __m256 hi = _mm256_set1_ps(SPA_EXP_HI), lo = _mm256_set1_ps(SPA_EXP_LO);
	/* in range for the integer part (min and max return x itself when it is NaN) */
	const __m256 c = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
	const __m256 fx = _mm256_floor_ps(
		_mm256_fmadd_ps(c, _mm256_set1_ps(SPA_EXP_LOG2E), _mm256_set1_ps(0.5f)));
	__m256 r = _mm256_fmadd_ps(fx, _mm256_set1_ps(-SPA_EXP_C1), c);
	r = _mm256_fmadd_ps(fx, _mm256_set1_ps(-SPA_EXP_C2), r);
	const __m256 z = _mm256_mul_ps(r, r);
	__m256 y = _mm256_fmadd_ps(_mm256_set1_ps(SPA_EXP_P0), r, _mm256_set1_ps(SPA_EXP_P1));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(SPA_EXP_P2));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(SPA_EXP_P3));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(SPA_EXP_P4));
	y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(SPA_EXP_P5));
	y = _mm256_fmadd_ps(y, z, r);
	y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
	const __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
	__m256 e = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
	e = _mm256_blendv_ps(e, _mm256_set1_ps(__builtin_inff()),
			     _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
	return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), e);
}

static void swiglu_avx2(float *out, const float *gate, const float *up, uint32_t n)
{
	uint32_t i = 0;
	for (; i + 8 <= n; i += 8) {
		const __m256 g = _mm256_loadu_ps(gate + i);
		const __m256 e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f))) /* -g */;
		const __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
		_mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
	}
	if (i < n)
		spa_swiglu_scalar(out + i, gate + i, up + i, n - i);
}

static double exp_shift_avx2(float *x, float shift, uint32_t n)
{
	double sum = 0;
	uint32_t i = 0;
	for (; i + 8 <= n; i += 8) {
		_mm256_storeu_ps(x + i,
				 exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(shift))));
		for (int k = 0; k < 8; k++)
			sum += x[i + k];
	}
	for (; i < n; i++) {
		x[i] = spa__expf(x[i] - shift);
		sum += x[i];
	}
	return sum;
}

const struct spa_kernels_ops spa_kernels_ops_avx2 = {
	.name = "avx2-fma-f16c",
	.dot = {
		[SPA_TYPE_F32] = dot_f32_avx2,
		[SPA_TYPE_F16] = dot_f16_avx2,
		[SPA_TYPE_BF16] = dot_bf16_avx2,
		[SPA_TYPE_Q8_0] = spa_dot_q8_0_avx2,
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_avx2,
		[SPA_TYPE_Q4_K] = spa_dot_q4_K_avx2,
		[SPA_TYPE_Q6_K] = spa_dot_q6_K_avx2,
	},
	.dot_q8x = {
		[SPA_TYPE_Q8_0] = spa_dot_q8_0_q8x_avx2,
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_q8x_avx2,
		[SPA_TYPE_Q6_K] = spa_dot_q6_K_q8x_avx2,
	},
	.quantize_x = spa_quantize_x_avx2,
	.wsum = wsum_avx2,
	.wsum_f16 = wsum_f16_avx2,
	.to_f16 = to_f16_avx2,
	.swiglu = swiglu_avx2,
	.exp_shift = exp_shift_avx2,
	.dot_rows = {
		[SPA_TYPE_F32] = dot_f32_rows_avx2,
		[SPA_TYPE_F16] = dot_f16_rows_avx2,
		[SPA_TYPE_BF16] = dot_bf16_rows_avx2,
	},
	.dot_q8x_rows = {
		[SPA_TYPE_Q8_0] = spa_dot_q8_0_q8x_rows_avx2,
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_q8x_rows_avx2,
		[SPA_TYPE_Q6_K] = spa_dot_q6_K_q8x_rows_avx2,
	},
	.dot_q8x_packed = {
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_q8x_packed_avx2,
	},
	.dot_q8x_rows8 = {
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_q8x_rows8_avx2,
	},
	.gemm = {
		[SPA_TYPE_F32] = spa_gemm_f32_avx2,
		[SPA_TYPE_F16] = spa_gemm_f16_avx2,
		[SPA_TYPE_BF16] = spa_gemm_bf16_avx2,
		[SPA_TYPE_Q4_K] = spa_gemm_q4_K_avx2,
	},
	.gemm_q8x = {
		[SPA_TYPE_Q8_0] = spa_gemm_q8_0_q8x_avx2,
		[SPA_TYPE_Q4_0] = spa_gemm_q4_0_q8x_avx2,
		[SPA_TYPE_Q6_K] = spa_gemm_q6_K_q8x_avx2,
	},
	.gemm_q8x_packed = {
		[SPA_TYPE_Q4_0] = spa_gemm_q4_0_q8x_packed_avx2,
	},
	/* The quantized rows decode with the scalar ports of ggml's dequantize_row_*: only
	 * embedding rows are dequantized (one per token), and the scalar code is bit-exact to
	 * ggml by construction. */
	.dequant_row = {
		[SPA_TYPE_F32] = spa_dequant_f32_scalar,
		[SPA_TYPE_F16] = dequant_f16_avx2,
		[SPA_TYPE_BF16] = dequant_bf16_avx2,
		[SPA_TYPE_Q8_0] = spa_dequant_q8_0_scalar,
		[SPA_TYPE_Q4_0] = spa_dequant_q4_0_scalar,
		[SPA_TYPE_Q4_K] = spa_dequant_q4_K_scalar,
		[SPA_TYPE_Q6_K] = spa_dequant_q6_K_scalar,
	},
};
