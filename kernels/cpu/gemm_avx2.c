/* spa: AVX2 + FMA + F16C matrix kernels for spa_matmul (compiled with -mavx2 -mfma -mf16c;
 * only reached through spa_kernels_ops_avx2).
 *
 * A kernel computes a block of Y = X W^T: rows [0, nrows) of the weights times nvec vectors,
 * in register tiles of R rows x V vectors. Each weight group is loaded and unpacked once per
 * tile for its V vectors, each activation group once for its R rows. Every element keeps the
 * bits of the variant's single-row dot (kernels_avx2.c, quant_avx2.c) on its row and vector:
 * a tile only interleaves operations of independent accumulator chains, and each chain performs
 * the dot's operations in the dot's order.
 *
 * Float weights (F32, F16, BF16): the dot sums element i into accumulator (i / 8) % 4, lane
 * i % 8, over the blocks of 32, and its tail into accumulator 0. The four accumulators of a
 * pair are four independent chains, so a tile runs four passes over its columns, pass k being
 * accumulator k of every pair: one register per pair, 12 pairs (3 rows x 4 vectors) in 12
 * registers, with the 3 unpacked weight groups and an activation group beside them. The passes
 * go over the columns in pieces of FCHUNK blocks (the tile's rows and vectors of a piece stay
 * in L1 for its four passes), keeping the accumulators in memory in between; the combination
 * (a0 + a1) + (a2 + a3) and the lanes' fixed reduction end the tile. */
#include <immintrin.h>
#include <string.h>

#include "kernels_impl.h"
#include "simd_avx2.h"

#define AI static inline __attribute__((always_inline))

/* The tiles prefetch the rows of the tile PF_TILES tiles on (the rows after theirs: a thread
 * reads its chunk and then the next one of its share in order), a few lines per iteration so
 * that the requests are spread over the tile: with a few vectors the first tile over a chunk
 * reads its rows from memory, and the hardware's prefetchers alone left it waiting on them
 * (F16, 4 and 8 vectors over a 64 MiB matrix, one thread: about 27 and 36 GFLOP/s without,
 * 45-57 and 50-57 with, from one to six tiles ahead; the spread mattered more than the
 * distance). */
#define PF_TILES 2
#define UNROLL _Pragma("GCC unroll 8")

/* ---- float weights ---------------------------------------------------------------------- */

enum { FT_F32, FT_F16, FT_BF16 };

/* 8 weights from element i of a row of type t, as floats (the dots' loads, so the same
 * values). */
AI __m256 fload(const int t, const uint8_t *w, size_t i)
{
	if (t == FT_F32)
		return _mm256_loadu_ps((const float *)(const void *)w + i);
	const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(w + 2 * i));
	if (t == FT_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Blocks of 32 columns per piece of a tile's passes: 3 F16 rows and 4 vectors of 512 columns
 * are 11 KiB, which stay in the 32 KiB L1 for the four passes. */
#define FCHUNK 16
/* Largest tile: rows for 4 vectors (3), vectors (4). */
#define FMAX_R 5
#define FMAX_V 4

/* Elements [i, n) (fewer than 8) of the R rows and V vectors, zero-padded into one group
 * each, into accumulator 0 of every pair: the dots' partial group. */
AI void ftile_partial(const int t, const int R, const int V, const uint8_t *w, size_t rs,
		      const float *x, size_t n, size_t i, __m256 acc[FMAX_R][FMAX_V])
{
	const size_t es = t == FT_F32 ? 4 : 2;
	_Alignas(32) uint8_t wb[FMAX_R][32];
	_Alignas(32) float xb[8];
	UNROLL for (int r = 0; r < R; r++) {
		memset(wb[r], 0, sizeof wb[r]);
		memcpy(wb[r], w + r * rs + i * es, (n - i) * es);
	}
	UNROLL for (int v = 0; v < V; v++) {
		memset(xb, 0, sizeof xb);
		memcpy(xb, x + v * n + i, (n - i) * sizeof(float));
		const __m256 xv = _mm256_load_ps(xb);
		UNROLL for (int r = 0; r < R; r++)
			acc[r][v] = _mm256_fmadd_ps(fload(t, wb[r], 0), xv, acc[r][v]);
	}
}

/* One tile: rows 0..R-1 (rs bytes apart) times vectors 0..V-1 (n floats apart), y[v * ys + r]
 * each with the bits of the single-row dot (lanes_* and hsum8 in kernels_avx2.c). */
AI void ftile(const int t, const int R, const int V, const uint8_t *w, size_t rs,
	      const float *x, size_t n, float *y, size_t ys)
{
	__m256 part[4][FMAX_R][FMAX_V]; /* [accumulator][row][vector] */
	const size_t nb = n / 32, es = t == FT_F32 ? 4 : 2;
	UNROLL for (int k = 0; k < 4; k++)
		UNROLL for (int r = 0; r < R; r++)
			UNROLL for (int v = 0; v < V; v++)
				part[k][r][v] = _mm256_setzero_ps();
	for (size_t c0 = 0; c0 < nb; c0 += FCHUNK) {
		const size_t c1 = nb - c0 < FCHUNK ? nb : c0 + FCHUNK;
		UNROLL for (int k = 0; k < 4; k++) {
			__m256 acc[FMAX_R][FMAX_V];
			UNROLL for (int r = 0; r < R; r++)
				UNROLL for (int v = 0; v < V; v++)
					acc[r][v] = part[k][r][v];
			for (size_t b = c0; b < c1; b++) {
				const size_t i = 32 * b + 8 * k;
				__m256 wv[FMAX_R];
				/* the rows of the tile after next, spread evenly over this tile's
				 * 4 * nb iterations: 8 * es * R bytes each */
				const size_t slot = 4 * c0 + (size_t)k * (c1 - c0) + (b - c0);
				UNROLL for (size_t l = 0; l < 8 * es * R; l += 64)
					_mm_prefetch((const char *)w + PF_TILES * R * rs +
							     slot * 8 * es * R + l,
						     _MM_HINT_T0);
				UNROLL for (int r = 0; r < R; r++)
					wv[r] = fload(t, w + r * rs, i);
				UNROLL for (int v = 0; v < V; v++) {
					const __m256 xv = _mm256_loadu_ps(x + v * n + i);
					UNROLL for (int r = 0; r < R; r++)
						acc[r][v] = _mm256_fmadd_ps(wv[r], xv, acc[r][v]);
				}
			}
			UNROLL for (int r = 0; r < R; r++)
				UNROLL for (int v = 0; v < V; v++)
					part[k][r][v] = acc[r][v];
		}
	}
	/* the tail: the remaining whole groups of 8, then the partial one, into accumulator 0 */
	size_t i = 32 * nb;
	for (; i + 8 <= n; i += 8) {
		__m256 wv[FMAX_R];
		UNROLL for (int r = 0; r < R; r++)
			wv[r] = fload(t, w + r * rs, i);
		UNROLL for (int v = 0; v < V; v++) {
			const __m256 xv = _mm256_loadu_ps(x + v * n + i);
			UNROLL for (int r = 0; r < R; r++)
				part[0][r][v] = _mm256_fmadd_ps(wv[r], xv, part[0][r][v]);
		}
	}
	if (i < n)
		ftile_partial(t, R, V, w, rs, x, n, i, part[0]);
	/* (a0 + a1) + (a2 + a3), then the lanes, four vectors of a row at a time */
	UNROLL for (int r = 0; r < R; r++) {
		__m256 s[4];
		float o[4];
		UNROLL for (int v = 0; v < 4; v++)
			s[v] = v < V ? _mm256_add_ps(_mm256_add_ps(part[0][r][v], part[1][r][v]),
						     _mm256_add_ps(part[2][r][v], part[3][r][v]))
				     : _mm256_setzero_ps();
		hsum8x4(s[0], s[1], s[2], s[3], o);
		UNROLL for (int v = 0; v < V; v++)
			y[v * ys + r] = o[v];
	}
}

typedef void (*ftile_fn)(const uint8_t *w, size_t rs, const float *x, size_t n, float *y,
			 size_t ys);

/* The tiles of a type: [V][R], R up to frows[V]. */
#define FTILE(name, t, R, V)                                                               \
	static void name##_##R##x##V(const uint8_t *w, size_t rs, const float *x, size_t n,  \
				     float *y, size_t ys)                                  \
	{                                                                                  \
		ftile(t, R, V, w, rs, x, n, y, ys);                                        \
	}
#define FTILES(name, t)                                                                    \
	FTILE(name, t, 1, 1) FTILE(name, t, 2, 1) FTILE(name, t, 3, 1) FTILE(name, t, 4, 1)  \
	FTILE(name, t, 1, 2) FTILE(name, t, 2, 2) FTILE(name, t, 3, 2) FTILE(name, t, 4, 2)  \
	FTILE(name, t, 5, 2) FTILE(name, t, 1, 3) FTILE(name, t, 2, 3) FTILE(name, t, 3, 3)  \
	FTILE(name, t, 4, 3) FTILE(name, t, 1, 4) FTILE(name, t, 2, 4) FTILE(name, t, 3, 4)  \
	static const ftile_fn name##_tiles[FMAX_V + 1][FMAX_R + 1] = {                    \
		[1] = { NULL, name##_1x1, name##_2x1, name##_3x1, name##_4x1 },            \
		[2] = { NULL, name##_1x2, name##_2x2, name##_3x2, name##_4x2, name##_5x2 }, \
		[3] = { NULL, name##_1x3, name##_2x3, name##_3x3, name##_4x3 },            \
		[4] = { NULL, name##_1x4, name##_2x4, name##_3x4 },                        \
	};

/* Rows per tile for V vectors: what the 16 registers hold without spilling (R x V
 * accumulators, R weight groups and an activation group). */
static const unsigned frows[FMAX_V + 1] = { 0, 4, 5, 3, 3 };

FTILES(tile_f32, FT_F32)
FTILES(tile_f16, FT_F16)
FTILES(tile_bf16, FT_BF16)

/* Vectors per tile for the nvec - v0 left: 4, and the last 1..3 as they come. Then, for those
 * vectors, the rows in tiles of rows[V] and the last smaller one. Vectors outside, rows
 * inside: the tile's activations stay in L1 while the rows (an L2-sized block from the
 * caller) go past them. */
static void gemm_float(const ftile_fn tiles[FMAX_V + 1][FMAX_R + 1],
		       const unsigned rows[FMAX_V + 1], const void *w, size_t row_size,
		       size_t nrows, const float *x, size_t n, uint32_t nvec, float *y, size_t ys)
{
	const uint8_t *p = w;
	for (uint32_t v0 = 0; v0 < nvec;) {
		const unsigned V = nvec - v0 < FMAX_V ? nvec - v0 : FMAX_V;
		const unsigned rt = rows[V];
		for (size_t r0 = 0; r0 < nrows; r0 += rt) {
			const unsigned R = nrows - r0 < rt ? (unsigned)(nrows - r0) : rt;
			tiles[V][R](p + r0 * row_size, row_size, x + (size_t)v0 * n, n,
				    y + (size_t)v0 * ys + r0, ys);
		}
		v0 += V;
	}
}

void spa_gemm_f32_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
		       uint32_t nvec, float *y, size_t ys)
{
	gemm_float(tile_f32_tiles, frows, w, row_size, nrows, x, n, nvec, y, ys);
}

void spa_gemm_f16_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
		       uint32_t nvec, float *y, size_t ys)
{
	gemm_float(tile_f16_tiles, frows, w, row_size, nrows, x, n, nvec, y, ys);
}

void spa_gemm_bf16_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
			uint32_t nvec, float *y, size_t ys)
{
	gemm_float(tile_bf16_tiles, frows, w, row_size, nrows, x, n, nvec, y, ys);
}

/* ---- Q8_0 on quantized activations ----------------------------------------------------
 * The dot (quant_avx2.c, spa_dot_q8_0_q8x_avx2): per block, the 8 exact int32 lane sums of
 * w * q (maddubs of |w| and q signed by w, madd), as floats, times d_w * d_x (one multiply of
 * the scales), added to one 8-lane accumulator, blocks in order, then hsum8. A tile keeps one
 * accumulator per pair: R x V of them, with each row's |w| and scale unpacked once per block
 * for the V vectors. */

#define QMAX_R 4
#define QMAX_V 8

AI void q8_0_tile(const int R, const int V, const uint8_t *w, size_t rs,
		  const struct spa_block_q8x *x, size_t nb, float *y, size_t ys)
{
	__m256 acc[QMAX_R][QMAX_V];
	UNROLL for (int r = 0; r < R; r++)
		UNROLL for (int v = 0; v < V; v++)
			acc[r][v] = _mm256_setzero_ps();
	const __m256i ones = _mm256_set1_epi16(1);
	for (size_t i = 0; i < nb; i++) {
		__m256i wq[QMAX_R], aw[QMAX_R];
		__m256 dw[QMAX_R];
		UNROLL for (size_t l = 0; l < R * sizeof(struct spa_block_q8_0); l += 64)
			_mm_prefetch((const char *)w + PF_TILES * R * rs +
					     i * R * sizeof(struct spa_block_q8_0) + l,
				     _MM_HINT_T0);
		UNROLL for (int r = 0; r < R; r++) {
			const struct spa_block_q8_0 *b = (const struct spa_block_q8_0 *)(const void *)
								 (w + r * rs) + i;
			wq[r] = _mm256_loadu_si256((const __m256i *)(const void *)b->qs);
			aw[r] = _mm256_sign_epi8(wq[r], wq[r]);
			dw[r] = _mm256_set1_ps(_cvtsh_ss(b->d));
		}
		UNROLL for (int v = 0; v < V; v++) {
			const struct spa_block_q8x *xb = x + v * nb + i;
			const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)xb->qs);
			const __m256 xd = _mm256_set1_ps(xb->d);
			UNROLL for (int r = 0; r < R; r++) {
				const __m256i p = _mm256_madd_epi16(
					_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(q, wq[r])), ones);
				acc[r][v] = _mm256_add_ps(acc[r][v],
							  _mm256_mul_ps(_mm256_mul_ps(dw[r], xd),
									_mm256_cvtepi32_ps(p)));
			}
		}
	}
	UNROLL for (int r = 0; r < R; r++)
		UNROLL for (int v = 0; v < V; v++)
			y[v * ys + r] = hsum8(acc[r][v]);
}

typedef void (*qtile_fn)(const uint8_t *w, size_t rs, const struct spa_block_q8x *x, size_t nb,
			 float *y, size_t ys);

#define QTILE(name, fn, R, V)                                                              \
	static void name##_##R##x##V(const uint8_t *w, size_t rs,                          \
				     const struct spa_block_q8x *x, size_t nb, float *y,    \
				     size_t ys)                                            \
	{                                                                                  \
		fn(R, V, w, rs, x, nb, y, ys);                                             \
	}

/* The tiles of a kernel, [V][R] for V = 1..4 and R = 1..QMAX_R. */
#define QTILES(name, fn)                                                                   \
	QTILE(name, fn, 1, 1) QTILE(name, fn, 2, 1) QTILE(name, fn, 3, 1) QTILE(name, fn, 4, 1) \
	QTILE(name, fn, 1, 2) QTILE(name, fn, 2, 2) QTILE(name, fn, 3, 2) QTILE(name, fn, 4, 2) \
	QTILE(name, fn, 1, 3) QTILE(name, fn, 2, 3) QTILE(name, fn, 3, 3) QTILE(name, fn, 4, 3) \
	QTILE(name, fn, 1, 4) QTILE(name, fn, 2, 4) QTILE(name, fn, 3, 4) QTILE(name, fn, 4, 4) \
	static const qtile_fn name##_tiles[5][QMAX_R + 1] = {                               \
		[1] = { NULL, name##_1x1, name##_2x1, name##_3x1, name##_4x1 },            \
		[2] = { NULL, name##_1x2, name##_2x2, name##_3x2, name##_4x2 },            \
		[3] = { NULL, name##_1x3, name##_2x3, name##_3x3, name##_4x3 },            \
		[4] = { NULL, name##_1x4, name##_2x4, name##_3x4, name##_4x4 },            \
	};

/* Vectors 4 at a time, then the rows in tiles of rows[V]. */
static void gemm_q8x(const qtile_fn tiles[5][QMAX_R + 1], const unsigned rows[5],
		     const void *w, size_t row_size, size_t nrows,
		     const struct spa_block_q8x *x, size_t nb, uint32_t nvec, float *y, size_t ys)
{
	const uint8_t *p = w;
	for (uint32_t v0 = 0; v0 < nvec;) {
		const unsigned V = nvec - v0 < 4 ? nvec - v0 : 4;
		const unsigned rt = rows[V];
		for (size_t r0 = 0; r0 < nrows; r0 += rt) {
			const unsigned R = nrows - r0 < rt ? (unsigned)(nrows - r0) : rt;
			tiles[V][R](p + r0 * row_size, row_size, x + (size_t)v0 * nb, nb,
				    y + (size_t)v0 * ys + r0, ys);
		}
		v0 += V;
	}
}

QTILES(tile_q8_0, q8_0_tile)
/* Rows per tile for V vectors: 12 pairs at most (the 16 registers also hold the rows' |w|
 * and scales, the vector's levels and temporaries). */
static const unsigned q8_0_rows[5] = { 0, 4, 4, 4, 3 };

void spa_gemm_q8_0_q8x_avx2(const void *w, size_t row_size, size_t nrows,
			    const struct spa_block_q8x *x, size_t n, uint32_t nvec, float *y,
			    size_t ys)
{
	gemm_q8x(tile_q8_0_tiles, q8_0_rows, w, row_size, nrows, x, n / SPA_QK8_0, nvec, y, ys);
}

/* ---- Q4_0 on quantized activations, 8 rows at a time ------------------------------------
 * The packed kernel's arithmetic (quant_avx2.c, q4_0x8_block): 4 rows x 8 level bytes per
 * register, the activations' 8-byte runs broadcast to the 4 rows, maddubs, the int16 sums
 * added, madd, one pairwise add: one exact total per row, lanes in spa_q4_0x8_row's order;
 * then the float part for the 8 rows at once. A tile unpacks a block of 8 rows (the nibbles,
 * the scales) once for V vectors, and reads each vector's broadcast runs from a panel made
 * once per vector and block for every group of rows: so the 8 level registers, the
 * accumulators and a few temporaries are all it keeps in registers. The rows come packed
 * (spa_tensor_pack) or as the file lays them out (assembled as the 8-row kernel does). */

/* A vector's block, ready for the tile: the 4 runs of 8 levels, each broadcast to a register,
 * 8 * its sum and its scale, each in every lane. */
struct q4_0_xpanel {
	__m256i run[4];
	__m256i sum8;
	__m256 d;
};

/* Blocks of a vector per panel (and so per piece of a tile's columns): 4 vectors' panels
 * are 12 KiB. */
#define Q4P 16

static void q4_0_panel(const struct spa_block_q8x *x, size_t nb, struct q4_0_xpanel *p)
{
	for (size_t i = 0; i < nb; i++) {
		int64_t r[4];
		memcpy(r, x[i].qs, sizeof r);
		for (int k = 0; k < 4; k++)
			p[i].run[k] = _mm256_set1_epi64x(r[k]);
		p[i].sum8 = _mm256_set1_epi32(8 * x[i].sum);
		p[i].d = _mm256_set1_ps(x[i].d);
	}
}

/* The levels of block i of 8 rows: the packed block's four 32-byte loads, or the same bytes
 * assembled from the file's rows (q4_0_file_pair in quant_avx2.c); and their 8 scales in the
 * lane order. */
AI void q4_0x8_load(const int packed, const uint8_t *w, size_t rs, size_t i, __m256i v[4],
		    __m128i *dh)
{
	if (packed) {
		const struct spa_block_q4_0x8 *b = (const struct spa_block_q4_0x8 *)(const void *)w + i;
		v[0] = _mm256_loadu_si256((const __m256i *)(const void *)b->qs);        /* 0-3 */
		v[1] = _mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 64));
		v[2] = _mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 32)); /* 4-7 */
		v[3] = _mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 96));
		*dh = _mm_loadu_si128((const __m128i *)(const void *)b->d);
		return;
	}
	const uint8_t *b = w + i * sizeof(struct spa_block_q4_0);
	for (int h = 0; h < 2; h++) { /* rows 4h .. 4h + 3: 0 and 2 in one register, 1 and 3 */
		const uint8_t *g = b + 4 * h * rs;
		const __m256i a = _mm256_loadu2_m128i((const __m128i *)(const void *)(g + 2 * rs + 2),
						      (const __m128i *)(const void *)(g + 2));
		const __m256i c = _mm256_loadu2_m128i((const __m128i *)(const void *)(g + 3 * rs + 2),
						      (const __m128i *)(const void *)(g + rs + 2));
		v[2 * h] = _mm256_unpacklo_epi64(a, c);     /* bytes 0-7 of the 4 rows */
		v[2 * h + 1] = _mm256_unpackhi_epi64(a, c); /* bytes 8-15 */
	}
	uint16_t d[8];
	for (int l = 0; l < 8; l++)
		memcpy(&d[l], b + spa_q4_0x8_row[l] * rs, sizeof d[l]);
	*dh = _mm_loadu_si128((const __m128i *)(const void *)d);
}

/* Blocks [0, nb) of a group of 8 rows (the piece's blocks: w and p at the piece's first) times
 * V vectors, into acc[v] (lanes in spa_q4_0x8_row's order). */
AI void q4_0x8_tile(const int packed, const int V, const uint8_t *w, size_t rs,
		    const struct q4_0_xpanel *p, size_t nb, size_t pstride, __m256 acc[4])
{
	const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
	for (size_t i = 0; i < nb; i++) {
		__m256i v[4], lo[4], hi[4];
		__m128i dh;
		/* the group PF_TILES on: 144 bytes a block (its 8 rows, in either layout) */
		UNROLL for (int l = 0; l < 3; l++)
			_mm_prefetch((const char *)w + PF_TILES * 8 * rs +
					     sizeof(struct spa_block_q4_0x8) * i + 64 * l,
				     _MM_HINT_T0);
		q4_0x8_load(packed, w, rs, i, v, &dh);
		UNROLL for (int k = 0; k < 4; k++) {
			lo[k] = _mm256_and_si256(v[k], m4);
			hi[k] = _mm256_and_si256(_mm256_srli_epi16(v[k], 4), m4);
		}
		const __m256 d = _mm256_cvtph_ps(dh);
		UNROLL for (int t = 0; t < V; t++) {
			const struct q4_0_xpanel *x = p + t * pstride + i;
			__m256i s[2];
			UNROLL for (int h = 0; h < 2; h++) /* rows 0-3, 4-7 */
				s[h] = _mm256_madd_epi16(
					_mm256_add_epi16(
						_mm256_add_epi16(
							_mm256_maddubs_epi16(lo[2 * h], x->run[0]),
							_mm256_maddubs_epi16(hi[2 * h], x->run[2])),
						_mm256_add_epi16(
							_mm256_maddubs_epi16(lo[2 * h + 1], x->run[1]),
							_mm256_maddubs_epi16(hi[2 * h + 1], x->run[3]))),
					ones);
			const __m256i tot = _mm256_sub_epi32(_mm256_hadd_epi32(s[0], s[1]), x->sum8);
			acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(d, x->d),
								     _mm256_cvtepi32_ps(tot)));
		}
	}
}

/* The 8 lanes [r0 r1 r4 r5 r2 r3 r6 r7] to row order and back (the permutation is its own
 * inverse). */
AI __m256 q4_0x8_order(__m256 a)
{
	return _mm256_permutevar8x32_ps(a, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
}

/* Groups [0, ngroups) of 8 rows times V vectors over the panel's piece of nb blocks: each
 * group's accumulators start from 0 on the first piece, else from y (where the last piece
 * left them, in row order), and go back to y. */
AI void q4_0x8_piece(const int packed, const int V, const uint8_t *w, size_t rs,
		     size_t ngroups, const struct q4_0_xpanel *p, size_t nb, size_t pstride,
		     int first, float *y, size_t ys)
{
	for (size_t g = 0; g < ngroups; g++) {
		const uint8_t *wg = w + g * 8 * rs;
		float *yg = y + 8 * g;
		__m256 acc[4];
		UNROLL for (int t = 0; t < V; t++)
			acc[t] = first ? _mm256_setzero_ps()
				       : q4_0x8_order(_mm256_loadu_ps(yg + t * ys));
		q4_0x8_tile(packed, V, wg, rs, p, nb, pstride, acc);
		UNROLL for (int t = 0; t < V; t++)
			_mm256_storeu_ps(yg + t * ys, q4_0x8_order(acc[t]));
	}
}

typedef void (*q4_0_piece_fn)(const uint8_t *w, size_t rs, size_t ngroups,
			      const struct q4_0_xpanel *p, size_t nb, size_t pstride, int first,
			      float *y, size_t ys);

#define Q4PIECE(name, packed, V)                                                           \
	static void name##_##V(const uint8_t *w, size_t rs, size_t ngroups,               \
			       const struct q4_0_xpanel *p, size_t nb, size_t pstride,     \
			       int first, float *y, size_t ys)                             \
	{                                                                                  \
		q4_0x8_piece(packed, V, w, rs, ngroups, p, nb, pstride, first, y, ys);     \
	}
#define Q4PIECES(name, packed)                                                             \
	Q4PIECE(name, packed, 1) Q4PIECE(name, packed, 2) Q4PIECE(name, packed, 3)         \
	Q4PIECE(name, packed, 4)                                                           \
	static const q4_0_piece_fn name##_v[5] = { NULL, name##_1, name##_2, name##_3,     \
						   name##_4 };

Q4PIECES(q4_0x8_packed, 1)
Q4PIECES(q4_0x8_file, 0)

/* Groups of 8 rows (ngroups of them, 8 * rs bytes apart in either layout, a block of the
 * group bsize bytes after the last) times nvec vectors: 4 vectors at a time, their columns in
 * pieces of Q4P blocks (a panel each), every group over each piece. */
static void gemm_q4_0x8(const q4_0_piece_fn piece[5], size_t bsize, const uint8_t *w,
			size_t rs, size_t ngroups, const struct spa_block_q8x *x, size_t nb,
			uint32_t nvec, float *y, size_t ys)
{
	struct q4_0_xpanel panel[4 * Q4P];
	if (ngroups == 0)
		return;
	for (uint32_t v0 = 0; v0 < nvec;) {
		const unsigned V = nvec - v0 < 4 ? nvec - v0 : 4;
		for (size_t i0 = 0; i0 < nb; i0 += Q4P) {
			const size_t np = nb - i0 < Q4P ? nb - i0 : Q4P;
			for (unsigned t = 0; t < V; t++)
				q4_0_panel(x + (size_t)(v0 + t) * nb + i0, np, panel + t * Q4P);
			piece[V](w + i0 * bsize, rs, ngroups, panel, np, Q4P,
				 i0 == 0, y + (size_t)v0 * ys, ys);
		}
		v0 += V;
	}
}

void spa_gemm_q4_0_q8x_packed_avx2(const void *w, size_t row_size, size_t nrows,
				   const struct spa_block_q8x *x, size_t n, uint32_t nvec,
				   float *y, size_t ys)
{
	gemm_q4_0x8(q4_0x8_packed_v, sizeof(struct spa_block_q4_0x8), w, row_size,
		    nrows / SPA_PACK_ROWS, x, n / SPA_QK4_0, nvec, y, ys);
}

/* The file's rows: groups of 8 as above, the last nrows % 8 by the 4-row and single-row
 * kernels, vector by vector (the same bits). */
void spa_gemm_q4_0_q8x_avx2(const void *w, size_t row_size, size_t nrows,
			    const struct spa_block_q8x *x, size_t n, uint32_t nvec, float *y,
			    size_t ys)
{
	const size_t nb = n / SPA_QK4_0, r8 = nrows / 8 * 8;
	gemm_q4_0x8(q4_0x8_file_v, sizeof(struct spa_block_q4_0), w, row_size, nrows / 8, x, nb,
		    nvec, y, ys);
	for (uint32_t v = 0; v < nvec; v++) {
		size_t r = r8;
		for (; r + 4 <= nrows; r += 4)
			spa_dot_q4_0_q8x_rows_avx2((const uint8_t *)w + r * row_size, row_size,
						   x + (size_t)v * nb, n, y + (size_t)v * ys + r, 4);
		for (; r < nrows; r++)
			y[(size_t)v * ys + r] = spa_dot_q4_0_q8x_avx2(
				(const uint8_t *)w + r * row_size, x + (size_t)v * nb, n);
	}
}

/* ---- Q6_K on quantized activations --------------------------------------------------------
 * The dot (quant_avx2.c, dot_q6_K_q8x_acc): per weight block of 256 the exact int32 total of
 * sub-block scale * (level - 32) * q, in 8 int32 lanes per group of 32, then one float
 * accumulator per row: acc + (d_w * d_x) * (float)total. A tile unpacks each row's levels and
 * scales of a group once for its V vectors; the totals of its R x V pairs (up to 8) are the
 * lanes of one register for the float part. */

/* Levels (0..63) of group k (0..3) of half h of block b: ql's nibble and qh's two bits, as
 * q6_K_group in quant_avx2.c. */
AI __m256i q6_K_levels(const struct spa_block_q6_K *b, int h, int k)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
	const __m256i l = _mm256_loadu_si256((const __m256i *)(const void *)(b->ql + 64 * h +
									      32 * (k & 1)));
	const __m256i hb = _mm256_loadu_si256((const __m256i *)(const void *)(b->qh + 32 * h));
	const __m256i lo = k < 2 ? _mm256_and_si256(l, m4)
				 : _mm256_and_si256(_mm256_srli_epi16(l, 4), m4);
	const __m256i hs = k == 0 ? _mm256_slli_epi16(hb, 4)
			 : k == 1 ? _mm256_slli_epi16(hb, 2)
			 : k == 2 ? hb
				  : _mm256_srli_epi16(hb, 2);
	return _mm256_or_si256(lo, _mm256_and_si256(hs, m30));
}

AI __m256i q6_K_scales8(const struct spa_block_q6_K *b, int h)
{
	return _mm256_broadcastsi128_si256(
		_mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)(b->scales + 8 * h))));
}

AI __m256i q6_K_pick8(__m256i sc, int k)
{
	const __m256i m = _mm256_setr_epi8(4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
					   4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
					   4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3,
					   4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2,
					   4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3,
					   4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3);
	return _mm256_shuffle_epi8(sc, m);
}

/* The 8 int32 totals of t[0..7] (each the sum of its lanes), in order. */
AI __m256i totals8(const __m256i t[8])
{
	const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(t[0], t[1]),
					    _mm256_hadd_epi32(t[2], t[3]));
	const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(t[4], t[5]),
					    _mm256_hadd_epi32(t[6], t[7]));
	return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
				_mm256_permute2x128_si256(a, b, 0x31));
}

#define Q6MAX_R 2

/* Pair (r, v) is lane v * R + r. */
AI void q6_K_tile(const int R, const int V, const uint8_t *w, size_t rs,
		  const struct spa_block_q8x *x, size_t nb, float *y, size_t ys)
{
	const size_t nbk = nb / (SPA_QK_K / SPA_QK8X); /* weight blocks */
	const __m256i c32 = _mm256_set1_epi8(32);
	__m256 acc = _mm256_setzero_ps();
	for (size_t i = 0; i < nbk; i++) {
		const struct spa_block_q6_K *b[Q6MAX_R];
		__m256i t[8];
		float dw[8], xd[8];
		UNROLL for (int r = 0; r < R; r++)
			b[r] = (const struct spa_block_q6_K *)(const void *)(w + r * rs) + i;
		UNROLL for (size_t l = 0; l < R * sizeof(struct spa_block_q6_K); l += 64)
			_mm_prefetch((const char *)w + PF_TILES * R * rs +
					     i * R * sizeof(struct spa_block_q6_K) + l,
				     _MM_HINT_T0);
		UNROLL for (int l = 0; l < 8; l++)
			t[l] = _mm256_setzero_si256();
		UNROLL for (int h = 0; h < 2; h++) {
			__m256i sc[Q6MAX_R];
			UNROLL for (int r = 0; r < R; r++)
				sc[r] = q6_K_scales8(b[r], h);
			UNROLL for (int k = 0; k < 4; k++) {
				__m256i g[Q6MAX_R], s16[Q6MAX_R];
				UNROLL for (int r = 0; r < R; r++) {
					g[r] = q6_K_levels(b[r], h, k);
					s16[r] = q6_K_pick8(sc[r], k);
				}
				UNROLL for (int v = 0; v < V; v++) {
					const struct spa_block_q8x *xk = x + v * nb + 8 * i + 4 * h + k;
					const __m256i q = _mm256_loadu_si256(
						(const __m256i *)(const void *)xk->qs);
					const __m256i q32 = _mm256_maddubs_epi16(c32, q);
					UNROLL for (int r = 0; r < R; r++)
						t[v * R + r] = _mm256_add_epi32(
							t[v * R + r],
							_mm256_madd_epi16(
								_mm256_sub_epi16(
									_mm256_maddubs_epi16(g[r], q),
									q32),
								s16[r]));
				}
			}
		}
		UNROLL for (int l = 0; l < 8; l++) {
			dw[l] = l < R * V ? _cvtsh_ss(b[l % R]->d) : 0.0f;
			xd[l] = l < R * V ? x[(l / R) * nb + 8 * i].d : 0.0f;
		}
		const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(dw), _mm256_loadu_ps(xd));
		acc = _mm256_add_ps(acc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(totals8(t))));
	}
	float o[8];
	_mm256_storeu_ps(o, acc);
	UNROLL for (int v = 0; v < V; v++)
		UNROLL for (int r = 0; r < R; r++)
			y[v * ys + r] = o[v * R + r];
}

QTILE(tile_q6_K, q6_K_tile, 1, 1) QTILE(tile_q6_K, q6_K_tile, 2, 1)
QTILE(tile_q6_K, q6_K_tile, 1, 2) QTILE(tile_q6_K, q6_K_tile, 2, 2)
QTILE(tile_q6_K, q6_K_tile, 1, 3) QTILE(tile_q6_K, q6_K_tile, 2, 3)
QTILE(tile_q6_K, q6_K_tile, 1, 4) QTILE(tile_q6_K, q6_K_tile, 2, 4)
static const qtile_fn tile_q6_K_tiles[5][QMAX_R + 1] = {
	[1] = { NULL, tile_q6_K_1x1, tile_q6_K_2x1 },
	[2] = { NULL, tile_q6_K_1x2, tile_q6_K_2x2 },
	[3] = { NULL, tile_q6_K_1x3, tile_q6_K_2x3 },
	[4] = { NULL, tile_q6_K_1x4, tile_q6_K_2x4 },
};
static const unsigned q6_K_rows[5] = { 0, 2, 2, 2, 2 };

void spa_gemm_q6_K_q8x_avx2(const void *w, size_t row_size, size_t nrows,
			    const struct spa_block_q8x *x, size_t n, uint32_t nvec, float *y,
			    size_t ys)
{
	gemm_q8x(tile_q6_K_tiles, q6_K_rows, w, row_size, nrows, x, n / SPA_QK8X, nvec, y, ys);
}

/* ---- Q4_K on f32 activations -----------------------------------------------------------
 * The dot (quant_avx2.c, spa_dot_q4_K_avx2): per sub-block of 32, p = the 32 levels times x in
 * 8 lanes (a multiply, then three FMAs), sx = x's lane sums; acc = fma(d * sc, p, acc), then
 * acc = fnmadd(dmin * m, sx, acc): one accumulator per pair. A tile converts each row's levels
 * of a sub-block to float once for its V vectors, and each vector's sums once for its R
 * rows. */

#define Q4KMAX_R 2

AI void q4_K_tile(const int R, const int V, const uint8_t *w, size_t rs, const float *x,
		  size_t n, float *y, size_t ys)
{
	const __m256i m4 = _mm256_set1_epi8(0x0F);
	__m256 acc[Q4KMAX_R][4];
	UNROLL for (int r = 0; r < R; r++)
		UNROLL for (int v = 0; v < V; v++)
			acc[r][v] = _mm256_setzero_ps();
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		const struct spa_block_q4_K *b[Q4KMAX_R];
		UNROLL for (int r = 0; r < R; r++)
			b[r] = (const struct spa_block_q4_K *)(const void *)(w + r * rs) + i;
		UNROLL for (size_t l = 0; l < R * sizeof(struct spa_block_q4_K); l += 64)
			_mm_prefetch((const char *)w + PF_TILES * R * rs +
					     i * R * sizeof(struct spa_block_q4_K) + l,
				     _MM_HINT_T0);
		for (int j = 0; j < 8; j++) { /* sub-block j: nibbles j & 1 of qs[32 (j / 2) ..] */
			__m256 lv[Q4KMAX_R][4], ds[Q4KMAX_R], dm[Q4KMAX_R];
			UNROLL for (int r = 0; r < R; r++) {
				const __m256i raw = _mm256_loadu_si256(
					(const __m256i *)(const void *)(b[r]->qs + 32 * (j / 2)));
				const __m256i q = j & 1 ? _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4)
							: _mm256_and_si256(raw, m4);
				const __m128i lo = _mm256_castsi256_si128(q);
				const __m128i hi = _mm256_extracti128_si256(q, 1);
				lv[r][0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
				lv[r][1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
				lv[r][2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
				lv[r][3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
				uint8_t sc, m;
				spa__q4k_scale_min(j, b[r]->scales, &sc, &m);
				ds[r] = _mm256_set1_ps(_cvtsh_ss(b[r]->d) * sc);
				dm[r] = _mm256_set1_ps(_cvtsh_ss(b[r]->dmin) * m);
			}
			UNROLL for (int v = 0; v < V; v++) {
				const float *xj = x + v * n + SPA_QK_K * i + 32 * j;
				const __m256 x0 = _mm256_loadu_ps(xj), x1 = _mm256_loadu_ps(xj + 8);
				const __m256 x2 = _mm256_loadu_ps(xj + 16), x3 = _mm256_loadu_ps(xj + 24);
				const __m256 sx = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), x2),
								x3);
				UNROLL for (int r = 0; r < R; r++) {
					__m256 p = _mm256_mul_ps(lv[r][0], x0);
					p = _mm256_fmadd_ps(lv[r][1], x1, p);
					p = _mm256_fmadd_ps(lv[r][2], x2, p);
					p = _mm256_fmadd_ps(lv[r][3], x3, p);
					acc[r][v] = _mm256_fmadd_ps(ds[r], p, acc[r][v]);
					acc[r][v] = _mm256_fnmadd_ps(dm[r], sx, acc[r][v]);
				}
			}
		}
	}
	UNROLL for (int r = 0; r < R; r++)
		UNROLL for (int v = 0; v < V; v++)
			y[v * ys + r] = hsum8(acc[r][v]);
}

#define FTILE_Q4K(R, V)                                                                    \
	static void tile_q4_K_##R##x##V(const uint8_t *w, size_t rs, const float *x, size_t n, \
					float *y, size_t ys)                               \
	{                                                                                  \
		q4_K_tile(R, V, w, rs, x, n, y, ys);                                       \
	}
FTILE_Q4K(1, 1) FTILE_Q4K(2, 1) FTILE_Q4K(1, 2) FTILE_Q4K(2, 2)
FTILE_Q4K(1, 3) FTILE_Q4K(2, 3) FTILE_Q4K(1, 4) FTILE_Q4K(2, 4)

static const ftile_fn tile_q4_K_tiles[FMAX_V + 1][FMAX_R + 1] = {
	[1] = { NULL, tile_q4_K_1x1, tile_q4_K_2x1 },
	[2] = { NULL, tile_q4_K_1x2, tile_q4_K_2x2 },
	[3] = { NULL, tile_q4_K_1x3, tile_q4_K_2x3 },
	[4] = { NULL, tile_q4_K_1x4, tile_q4_K_2x4 },
};
static const unsigned q4_K_rows[FMAX_V + 1] = { 0, 2, 2, 1, 1 };

void spa_gemm_q4_K_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
			uint32_t nvec, float *y, size_t ys)
{
	gemm_float(tile_q4_K_tiles, q4_K_rows, w, row_size, nrows, x, n, nvec, y, ys);
}
