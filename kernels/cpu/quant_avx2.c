/* spa: AVX2 + FMA + F16C dot products for the quantized formats (compiled with -mavx2 -mfma
 * -mf16c; only reached through spa_kernels_ops_avx2, which kernels.c selects when the CPU has
 * all three).
 *
 * Q8_0, Q4_0 and Q6_K: integer dots with quantized activations, as ggml's
 * ggml_vec_dot_q8_0_q8_0 and ggml_vec_dot_q4_0_q8_0 (maddubs, with the sign trick for Q8_0,
 * madd; Q6_K madds by its sub-block scales), the same float operations as the scalar versions
 * in quant.c, so the same bits. Q4_0 and Q6_K reduce each block to one exact int32 total per
 * row, so their multi-row kernels (4 rows; Q4_0 packed, 8) do the float part once for all
 * their rows, a row per lane.
 * Q4_K: the structure of the scalar references (kernels_impl.h describes it): the 8
 * lane sums of a (sub-)block are one __m256, started with a multiply and continued with FMAs,
 * then folded into the accumulator with one FMA by the block's scale; x stays in f32. */
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "kernels_impl.h"
#include "simd_avx2.h"

static inline float half(uint16_t h)
{
	return _cvtsh_ss(h); /* F16C: exact, as spa__fp16_to_fp32 */
}

/* 8 signed bytes (the low 8 of v) as floats. */
static inline __m256 i8_ps(__m128i v)
{
	return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}

/* ---- integer dots with quantized activations (kernels_impl.h gives the arithmetic) ---- */

#define XQ_TINY 0x1p-100f /* as quant.c */

static inline int32_t hsum_i32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}
#define XQ_CHUNK 64

void spa_quantize_x_avx2(const float *x, struct spa_block_q8x *y, size_t n, size_t group)
{
	const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	const __m256 fmax = _mm256_set1_ps(FLT_MAX);
	const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
	float amax = 0.0f;
	int bad = 0;
	for (size_t i = 0; i < n / SPA_QK8X; i++, x += SPA_QK8X) {
		if (i * SPA_QK8X % group == 0) { /* the group's largest magnitude */
			__m256 m = _mm256_setzero_ps(), nf = _mm256_setzero_ps();
			for (size_t j = 0; j < group; j += 8) {
				const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask);
				/* NaN or infinity: not (a <= FLT_MAX), unordered compares true */
				nf = _mm256_or_ps(nf, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
				m = _mm256_max_ps(m, a); /* exact in any order */
			}
			__m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
			m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
			m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
			amax = _mm_cvtss_f32(m4);
			bad = _mm256_movemask_ps(nf);
		}
		const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
		const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
		if (bad || amax < XQ_TINY) {
			y[i].d = bad ? NAN : 0.0f;
			memset(y[i].qs, 0, sizeof y[i].qs);
			y[i].sum = 0;
			continue;
		}
		const __m256 id = _mm256_set1_ps(127.0f / amax);
		y[i].d = amax / 127.0f;
		/* x * id, then round to nearest even (the MXCSR default, as nearest_int) */
		__m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id));
		__m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id));
		__m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id));
		__m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id));
		y[i].sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i0, i1),
						     _mm256_add_epi32(i2, i3)));
		/* the packs work per 128-bit half: 0-3 8-11 16-19 24-27 4-7 12-15 20-23 28-31 */
		i0 = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
		_mm256_storeu_si256((__m256i *)y[i].qs, _mm256_permutevar8x32_epi32(i0, perm));
	}
}

/* The 8 exact int32 lane sums of 32 products w[j] * q[j] (lane l: j = 4l .. 4l + 3), as
 * floats. maddubs multiplies unsigned by signed bytes, so w's sign moves to q: |w| <= 128 and
 * |q| <= 127 keep each pair sum within int16 (2 * 128 * 127 = 32512), no saturation. */
static inline __m256 lane_sums(__m256i w, __m256i q)
{
	const __m256i aw = _mm256_sign_epi8(w, w);
	const __m256i sq = _mm256_sign_epi8(q, w);
	const __m256i p16 = _mm256_maddubs_epi16(aw, sq);
	return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

/* One row's block term of Q8_0 against x block (q its levels, xd its scale). */
static inline __m256 q8_0_term(const struct spa_block_q8_0 *b, __m256i q, float xd)
{
	return _mm256_mul_ps(_mm256_set1_ps(half(b->d) * xd),
			     lane_sums(_mm256_loadu_si256((const __m256i *)b->qs), q));
}

static inline __m256 dot_q8_0_q8x_acc(const struct spa_block_q8_0 *b,
				      const struct spa_block_q8x *x, size_t nb, __m256 acc)
{
	for (size_t i = 0; i < nb; i++)
		acc = _mm256_add_ps(acc, q8_0_term(&b[i],
						   _mm256_loadu_si256((const __m256i *)x[i].qs),
						   x[i].d));
	return acc;
}

/* Q4_0's levels of one block: the 16 bytes in both halves, the upper shifted by 4: low
 * nibbles (elements 0..15) in bytes 0..15, high nibbles (16..31) in bytes 16..31. */
static inline __m256i q4_0_levels(const struct spa_block_q4_0 *b)
{
	const __m256i sh = _mm256_setr_epi64x(0, 0, 4, 4);
	__m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b->qs));
	return _mm256_and_si256(_mm256_srlv_epi64(raw, sh), _mm256_set1_epi8(0x0F));
}

/* The 8 int32 lane sums of u * q, u Q4_0's unsigned levels (0..15) of block b: maddubs takes
 * them unsigned, no sign trick; pair sums within 2 * 15 * 127. The offset of 8 comes off the
 * block's total: sum (u - 8) q = sum u q - 8 x.sum. */
static inline __m256i q4_0_uq(const struct spa_block_q4_0 *b, __m256i q)
{
	return _mm256_madd_epi16(_mm256_maddubs_epi16(q4_0_levels(b), q), _mm256_set1_epi16(1));
}

static inline float dot_q4_0_q8x_acc(const struct spa_block_q4_0 *b,
				     const struct spa_block_q8x *x, size_t nb, float acc)
{
	for (size_t i = 0; i < nb; i++) {
		const __m256i q = _mm256_loadu_si256((const __m256i *)x[i].qs);
		const int32_t s = hsum_i32(q4_0_uq(&b[i], q)) - 8 * x[i].sum;
		acc = acc + half(b[i].d) * x[i].d * (float)s;
	}
	return acc;
}

float spa_dot_q8_0_q8x_avx2(const void *w, const struct spa_block_q8x *x, size_t n)
{
	return hsum8(dot_q8_0_q8x_acc(w, x, n / SPA_QK8_0, _mm256_setzero_ps()));
}

float spa_dot_q4_0_q8x_avx2(const void *w, const struct spa_block_q8x *x, size_t n)
{
	return dot_q4_0_q8x_acc(w, x, n / SPA_QK4_0, 0.0f);
}

/* Four interleaved rows are four short streams that the hardware prefetchers learn too late
 * (measured: a 4-row kernel over a matrix in DRAM ran 0.6-0.85x the speed of the sequential
 * row-by-row one). So prefetch the next four rows, which lie right after them, at the pace
 * the current four are read: iteration i of a block of bsize bytes covers 4 * bsize bytes of
 * the next group. */
static inline void prefetch_next_rows(const uint8_t *next, size_t i, size_t bsize)
{
	const uint8_t *a = next + 4 * i * bsize;
	for (size_t k = 0; k < 4 * bsize; k += 64)
		_mm_prefetch((const char *)a + k, _MM_HINT_T0);
}

/* Fewer than four rows (the end of a thread's share): each by the single-row kernel. Returns
 * whether it did them. */
static inline bool rows_one_by_one(float (*dot)(const void *, const struct spa_block_q8x *,
						size_t),
				   const uint8_t *p, size_t row_size,
				   const struct spa_block_q8x *x, size_t n, float *y, unsigned nrows)
{
	if (nrows == 4)
		return false;
	for (unsigned k = 0; k < nrows; k++)
		y[k] = dot(p + k * row_size, x, n);
	return true;
}

/* Row k of the four at p. */
#define ROW(p, k) ((const void *)((p) + (k) * row_size))

/* The totals of four rows' 8 int32 lane sums, [r0 r1 r2 r3]: pairwise sums within each
 * 128-bit half, then the halves added (exact, in integers). */
static inline __m128i totals4(__m256i p0, __m256i p1, __m256i p2, __m256i p3)
{
	const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
	return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Four rows' fp16 block scales as floats, in one conversion. */
static inline __m128 halves4(uint16_t d0, uint16_t d1, uint16_t d2, uint16_t d3)
{
	return _mm_cvtph_ps(_mm_setr_epi16((short)d0, (short)d1, (short)d2, (short)d3, 0, 0, 0, 0));
}

/* Four rows at once: four independent accumulator chains (one row's chain alone is bound by
 * the latency of its add), one load of each activation block for the four. */
void spa_dot_q8_0_q8x_rows_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				size_t n, float *y, unsigned nrows)
{
	const uint8_t *p = w;
	if (rows_one_by_one(spa_dot_q8_0_q8x_avx2, p, row_size, x, n, y, nrows))
		return;
	const struct spa_block_q8_0 *b0 = ROW(p, 0), *b1 = ROW(p, 1);
	const struct spa_block_q8_0 *b2 = ROW(p, 2), *b3 = ROW(p, 3);
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	for (size_t i = 0; i < n / SPA_QK8_0; i++) {
		prefetch_next_rows(p + 4 * row_size, i, sizeof *b0);
		const __m256i q = _mm256_loadu_si256((const __m256i *)x[i].qs);
		const float xd = x[i].d;
		a0 = _mm256_add_ps(a0, q8_0_term(&b0[i], q, xd));
		a1 = _mm256_add_ps(a1, q8_0_term(&b1[i], q, xd));
		a2 = _mm256_add_ps(a2, q8_0_term(&b2[i], q, xd));
		a3 = _mm256_add_ps(a3, q8_0_term(&b3[i], q, xd));
	}
	hsum8x4(a0, a1, a2, a3, y);
}

/* Q4_0, four rows: each row's block total as one lane (the pairwise sums of the four rows'
 * lane sums), so the float part (scales, convert, multiply, add) is one 4-lane operation for
 * the four; lane k has dot_q4_0_q8x_acc's operations on row k. */
void spa_dot_q4_0_q8x_rows_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				size_t n, float *y, unsigned nrows)
{
	const uint8_t *p = w;
	if (rows_one_by_one(spa_dot_q4_0_q8x_avx2, p, row_size, x, n, y, nrows))
		return;
	const struct spa_block_q4_0 *b0 = ROW(p, 0), *b1 = ROW(p, 1);
	const struct spa_block_q4_0 *b2 = ROW(p, 2), *b3 = ROW(p, 3);
	__m128 acc = _mm_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK4_0; i++) {
		prefetch_next_rows(p + 4 * row_size, i, sizeof *b0);
		const __m256i q = _mm256_loadu_si256((const __m256i *)x[i].qs);
		const __m128i s = _mm_sub_epi32(totals4(q4_0_uq(&b0[i], q), q4_0_uq(&b1[i], q),
							q4_0_uq(&b2[i], q), q4_0_uq(&b3[i], q)),
						_mm_set1_epi32(8 * x[i].sum));
		const __m128 d = _mm_mul_ps(halves4(b0[i].d, b1[i].d, b2[i].d, b3[i].d),
					    _mm_set1_ps(x[i].d));
		acc = _mm_add_ps(acc, _mm_mul_ps(d, _mm_cvtepi32_ps(s)));
	}
	_mm_storeu_ps(y, acc);
}

/* Packed Q4_0 (struct spa_block_q4_0x8): per block, four 32-byte loads hold the 8 rows'
 * levels (4 rows x 8 bytes each); x's 8-byte runs are broadcast to the rows' lanes; maddubs
 * of the low and the high nibbles, added in int16 (four pair sums: within 4 * 2 * 15 * 127 =
 * 15240), madd to int32 and one pairwise add give one total per row, lanes in
 * spa_q4_0x8_row's order; then the scales of the 8 rows are one fp16 load. Lane l: the
 * operations of dot_q4_0_q8x_acc on row spa_q4_0x8_row[l]. */
static inline __m256i bcast8(const int8_t *q)
{
	int64_t v;
	memcpy(&v, q, sizeof v);
	return _mm256_set1_epi64x(v);
}

/* the int16 pair sums of 4 rows: bytes of elements 8c.. (lo) and 16+8c.. (hi), c = 0 at a,
 * c = 1 at b */
static inline __m256i q4_0x8_half(__m256i a, __m256i b, __m256i x0, __m256i x1, __m256i x2,
				  __m256i x3)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	const __m256i lo_a = _mm256_and_si256(a, m4);
	const __m256i hi_a = _mm256_and_si256(_mm256_srli_epi16(a, 4), m4);
	const __m256i lo_b = _mm256_and_si256(b, m4);
	const __m256i hi_b = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
	return _mm256_add_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo_a, x0),
						 _mm256_maddubs_epi16(hi_a, x2)),
				_mm256_add_epi16(_mm256_maddubs_epi16(lo_b, x1),
						 _mm256_maddubs_epi16(hi_b, x3)));
}

/* One block of 8 rows added to acc: v0r = bytes 0-7 and v1r = bytes 8-15 of the levels of rows
 * 0-3 (r = 0) and 4-7 (r = 1), 4 rows x 8 bytes each; dh the 8 rows' fp16 scales, both in
 * spa_q4_0x8_row's lane order; xi the block's activations. */
static inline __m256 q4_0x8_block(__m256i v00, __m256i v10, __m256i v01, __m256i v11, __m128i dh,
				  const struct spa_block_q8x *xi, __m256 acc)
{
	const __m256i ones = _mm256_set1_epi16(1);
	const __m256i x0 = bcast8(xi->qs), x1 = bcast8(xi->qs + 8);
	const __m256i x2 = bcast8(xi->qs + 16), x3 = bcast8(xi->qs + 24);
	const __m256i s03 = _mm256_madd_epi16(q4_0x8_half(v00, v10, x0, x1, x2, x3), ones);
	const __m256i s47 = _mm256_madd_epi16(q4_0x8_half(v01, v11, x0, x1, x2, x3), ones);
	const __m256i s = _mm256_sub_epi32(_mm256_hadd_epi32(s03, s47),
					   _mm256_set1_epi32(8 * xi->sum));
	const __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(dh), _mm256_set1_ps(xi->d));
	return _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(s)));
}

/* The 8 lanes [r0 r1 r4 r5 r2 r3 r6 r7] into y in row order (the permutation is its own
 * inverse). */
static inline void q4_0x8_store(__m256 acc, float *y)
{
	_mm256_storeu_ps(y, _mm256_permutevar8x32_ps(acc, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7)));
}

/* Three cache lines from a: the 144 bytes of an 8-row block (some lines twice). */
static inline void prefetch144(const char *a)
{
	_mm_prefetch(a, _MM_HINT_T0);
	_mm_prefetch(a + 64, _MM_HINT_T0);
	_mm_prefetch(a + 128, _MM_HINT_T0);
}

/* Q4_0 as the file lays it out, 8 rows at once (streamed pieces; SPA_PACK=off): the packed
 * kernel's arithmetic on registers assembled from the rows: rows 0 and 2 in the two halves of
 * one register, 1 and 3 in another, so that one unpack of their 64-bit halves gives the packed
 * layout's 4 rows x 8 bytes; the 8 scales gathered in the packed lane order. Lane l: the
 * operations of dot_q4_0_q8x_acc on row spa_q4_0x8_row[l]. */
static inline void q4_0_file_pair(const uint8_t *b, size_t rs, __m256i *lo8, __m256i *hi8)
{
	/* rows 0..3 of b (each block's 16 level bytes after its fp16 scale) */
	const __m256i a = _mm256_loadu2_m128i((const __m128i *)(b + 2 * rs + 2),
					      (const __m128i *)(b + 2));
	const __m256i c = _mm256_loadu2_m128i((const __m128i *)(b + 3 * rs + 2),
					      (const __m128i *)(b + rs + 2));
	*lo8 = _mm256_unpacklo_epi64(a, c); /* bytes 0-7 of rows 0, 1 | 2, 3 */
	*hi8 = _mm256_unpackhi_epi64(a, c); /* bytes 8-15 */
}

static inline uint16_t q4_0_d(const uint8_t *b)
{
	uint16_t d;
	memcpy(&d, b, sizeof d);
	return d;
}

void spa_dot_q4_0_q8x_rows8_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				 size_t n, float *y)
{
	const uint8_t *p = w;
	const size_t rs = row_size;
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK4_0; i++) {
		const uint8_t *b = p + i * sizeof(struct spa_block_q4_0);
		/* the next 8 rows, at the pace these are read */
		prefetch144((const char *)(p + 8 * rs) + 8 * sizeof(struct spa_block_q4_0) * i);
		__m256i v00, v10, v01, v11;
		q4_0_file_pair(b, rs, &v00, &v10);
		q4_0_file_pair(b + 4 * rs, rs, &v01, &v11);
		const __m128i dh = _mm_setr_epi16(
			(short)q4_0_d(b), (short)q4_0_d(b + rs), (short)q4_0_d(b + 4 * rs),
			(short)q4_0_d(b + 5 * rs), (short)q4_0_d(b + 2 * rs),
			(short)q4_0_d(b + 3 * rs), (short)q4_0_d(b + 6 * rs),
			(short)q4_0_d(b + 7 * rs));
		acc = q4_0x8_block(v00, v10, v01, v11, dh, &x[i], acc);
	}
	q4_0x8_store(acc, y);
}

/* A packed matrix is one sequential stream per thread share: prefetched this far ahead (the
 * hardware's stream prefetcher alone left DRAM idle at the start of each of the many short
 * streams of a decode step: measured on bench/decode, 1024-2048 bytes gave +15-20 % tok/s at
 * 1b and +30 % at the default shape against none; the ends of a share prefetch a little past
 * it, harmlessly). */
#define PACKED_AHEAD 1536

void spa_dot_q4_0_q8x_packed_avx2(const void *w, const struct spa_block_q8x *x, size_t n,
				  float *y)
{
	const struct spa_block_q4_0x8 *b = w;
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK4_0; i++) {
		const uint8_t *qs = b[i].qs;
		prefetch144((const char *)(b + i) + PACKED_AHEAD);
		acc = q4_0x8_block(_mm256_loadu_si256((const __m256i *)qs),        /* rows 0-3 */
				   _mm256_loadu_si256((const __m256i *)(qs + 64)),
				   _mm256_loadu_si256((const __m256i *)(qs + 32)), /* rows 4-7 */
				   _mm256_loadu_si256((const __m256i *)(qs + 96)),
				   _mm_loadu_si128((const __m128i *)b[i].d), &x[i], acc);
	}
	q4_0x8_store(acc, y);
}

float spa_dot_q8_0_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q8_0 *b = w;
	struct spa_block_q8x xq[XQ_CHUNK];
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK8_0; i += XQ_CHUNK) {
		size_t nb = n / SPA_QK8_0 - i < XQ_CHUNK ? n / SPA_QK8_0 - i : XQ_CHUNK;
		spa_quantize_x_avx2(x + i * SPA_QK8_0, xq, nb * SPA_QK8_0,
				    spa_xq_group(SPA_TYPE_Q8_0));
		acc = dot_q8_0_q8x_acc(b + i, xq, nb, acc);
	}
	return hsum8(acc);
}

float spa_dot_q4_0_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q4_0 *b = w;
	struct spa_block_q8x xq[XQ_CHUNK];
	float acc = 0.0f;
	for (size_t i = 0; i < n / SPA_QK4_0; i += XQ_CHUNK) {
		size_t nb = n / SPA_QK4_0 - i < XQ_CHUNK ? n / SPA_QK4_0 - i : XQ_CHUNK;
		spa_quantize_x_avx2(x + i * SPA_QK4_0, xq, nb * SPA_QK4_0,
				    spa_xq_group(SPA_TYPE_Q4_0));
		acc = dot_q4_0_q8x_acc(b + i, xq, nb, acc);
	}
	return acc;
}

/* ---- Q4_K: x in f32 ------------------------------------------------------------- */

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

/* Q6_K (quant.c's dot_q6_K_q8x_acc): the 8 int32 lane sums of sc * (level - 32) * q over
 * group k (0..3) of half h of block b, q x block 4h + k, q32 = maddubs(32, q) (shared by the
 * rows), s16 the group's two sub-block scales as int16 (first 16 elements | last 16). The
 * levels (0..63) come unsigned for maddubs: (g - 32) q = g q - 32 q, pair sums within
 * 2 * 63 * 127 and 2 * 32 * 127, the difference too; madd by the scales stays within int32. */
static inline __m256i q6_K_group(const struct spa_block_q6_K *b, int h, int k, __m256i q,
				 __m256i q32, __m256i s16)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
	const __m256i l = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32 * (k & 1)));
	const __m256i hb = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
	const __m256i lo = k < 2 ? _mm256_and_si256(l, m4)
				 : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
	const __m256i hs = k == 0 ? _mm256_slli_epi16(hb, 4)
			 : k == 1 ? _mm256_slli_epi16(hb, 2)
			 : k == 2 ? hb
				  : _mm256_srli_epi16(hb, 2);
	const __m256i g = _mm256_or_si256(lo, _mm256_and_si256(hs, m30));
	return _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(g, q), q32), s16);
}

/* Half h's 8 sub-block scales of b as int16, in both 128-bit lanes. */
static inline __m256i q6_K_scales(const struct spa_block_q6_K *b, int h)
{
	return _mm256_broadcastsi128_si256(
		_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(b->scales + 8 * h))));
}

/* Group k's scales out of q6_K_scales: int16 element 2k in the low lane, 2k + 1 in the high. */
static inline __m256i q6_K_pick(__m256i sc, int k)
{
	const __m256i m = _mm256_setr_epi8(4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
					   4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
					   4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3,
					   4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2,
					   4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3,
					   4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3);
	return _mm256_shuffle_epi8(sc, m);
}

static inline float dot_q6_K_q8x_acc(const struct spa_block_q6_K *b,
				     const struct spa_block_q8x *x, size_t nb, float acc)
{
	const __m256i c32 = _mm256_set1_epi8(32);
	for (size_t i = 0; i < nb; i++) {
		const float d = half(b[i].d) * x->d; /* x's one scale for the block */
		__m256i t = _mm256_setzero_si256();
		for (int h = 0; h < 2; h++) {
			const __m256i sc = q6_K_scales(&b[i], h);
#pragma GCC unroll 4
			for (int k = 0; k < 4; k++, x++) {
				const __m256i q = _mm256_loadu_si256((const __m256i *)x->qs);
				t = _mm256_add_epi32(t, q6_K_group(&b[i], h, k, q,
								   _mm256_maddubs_epi16(c32, q),
								   q6_K_pick(sc, k)));
			}
		}
		acc = acc + d * (float)hsum_i32(t);
	}
	return acc;
}

/* Four rows: as the Q4_0 four-row kernel, each row's group total one lane of a 4-lane float
 * operation; the four rows' scales of a block converted in one. */
void spa_dot_q6_K_q8x_rows_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				size_t n, float *y, unsigned nrows)
{
	const uint8_t *p = w;
	if (rows_one_by_one(spa_dot_q6_K_q8x_avx2, p, row_size, x, n, y, nrows))
		return;
	const struct spa_block_q6_K *b0 = ROW(p, 0), *b1 = ROW(p, 1);
	const struct spa_block_q6_K *b2 = ROW(p, 2), *b3 = ROW(p, 3);
	const __m256i c32 = _mm256_set1_epi8(32);
	__m128 acc = _mm_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		prefetch_next_rows(p + 4 * row_size, i, sizeof *b0);
		const struct spa_block_q8x *xb = x + i * (SPA_QK_K / SPA_QK8X);
		const __m128 d = _mm_mul_ps(halves4(b0[i].d, b1[i].d, b2[i].d, b3[i].d),
					    _mm_set1_ps(xb->d));
		__m256i t0 = _mm256_setzero_si256(), t1 = t0, t2 = t0, t3 = t0;
		for (int h = 0; h < 2; h++) {
			const __m256i sc0 = q6_K_scales(&b0[i], h), sc1 = q6_K_scales(&b1[i], h);
			const __m256i sc2 = q6_K_scales(&b2[i], h), sc3 = q6_K_scales(&b3[i], h);
#pragma GCC unroll 4 /* k constant: the picks' masks and the groups' shifts */
			for (int k = 0; k < 4; k++) {
				const struct spa_block_q8x *xk = xb + 4 * h + k;
				const __m256i q = _mm256_loadu_si256((const __m256i *)xk->qs);
				const __m256i q32 = _mm256_maddubs_epi16(c32, q);
				t0 = _mm256_add_epi32(t0, q6_K_group(&b0[i], h, k, q, q32,
								     q6_K_pick(sc0, k)));
				t1 = _mm256_add_epi32(t1, q6_K_group(&b1[i], h, k, q, q32,
								     q6_K_pick(sc1, k)));
				t2 = _mm256_add_epi32(t2, q6_K_group(&b2[i], h, k, q, q32,
								     q6_K_pick(sc2, k)));
				t3 = _mm256_add_epi32(t3, q6_K_group(&b3[i], h, k, q, q32,
								     q6_K_pick(sc3, k)));
			}
		}
		const __m128i s = totals4(t0, t1, t2, t3);
		acc = _mm_add_ps(acc, _mm_mul_ps(d, _mm_cvtepi32_ps(s)));
	}
	_mm_storeu_ps(y, acc);
}

float spa_dot_q6_K_q8x_avx2(const void *w, const struct spa_block_q8x *x, size_t n)
{
	return dot_q6_K_q8x_acc(w, x, n / SPA_QK_K, 0.0f);
}

float spa_dot_q6_K_avx2(const void *w, const float *x, size_t n)
{
	const struct spa_block_q6_K *b = w;
	struct spa_block_q8x xq[XQ_CHUNK];
	const size_t per = XQ_CHUNK / (SPA_QK_K / SPA_QK8X);
	float acc = 0.0f;
	for (size_t i = 0; i < n / SPA_QK_K; i += per) {
		size_t nb = n / SPA_QK_K - i < per ? n / SPA_QK_K - i : per;
		spa_quantize_x_avx2(x + i * SPA_QK_K, xq, nb * SPA_QK_K,
				    spa_xq_group(SPA_TYPE_Q6_K));
		acc = dot_q6_K_q8x_acc(b + i, xq, nb, acc);
	}
	return acc;
}
