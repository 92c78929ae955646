/* spa: the scalar variant's matrix kernels for spa_matmul (the spa_gemm_fn contract in
 * kernels_impl.h).
 *
 * F16 and BF16: a piece of a row is converted to float once for up to GEMM_VECS vectors, then
 * each vector's dot goes on with the single-row dot's operations (spa_dot_f16_scalar: element
 * i into partial sum i % 8, a multiply then an add; the pieces are multiples of 8 long, so
 * element i keeps its sum). The conversion is exact, so the products are the dot's: the same
 * bits, with the conversion (most of the scalar dot's work) done once per row and piece
 * instead of once per vector. The other types have no scalar matrix kernel: matmul runs
 * their dots vector by vector. */
#include "kernels_impl.h"

#define GEMM_PIECE 256 /* elements converted at a time (1 KiB of floats) */
#define GEMM_VECS 16   /* vectors per conversion */

static inline void gemm_half(float (*conv)(uint16_t), const void *w, size_t row_size,
			     size_t nrows, const float *x, size_t n, uint32_t nvec, float *y,
			     size_t ys)
{
	float wf[GEMM_PIECE];
	for (size_t r = 0; r < nrows; r++) {
		const uint16_t *row = (const uint16_t *)(const void *)((const uint8_t *)w +
								      r * row_size);
		for (uint32_t v0 = 0; v0 < nvec; v0 += GEMM_VECS) {
			const uint32_t nv = nvec - v0 < GEMM_VECS ? nvec - v0 : GEMM_VECS;
			float s[GEMM_VECS][8] = { { 0 } };
			for (size_t i0 = 0; i0 < n; i0 += GEMM_PIECE) {
				const size_t m = n - i0 < GEMM_PIECE ? n - i0 : GEMM_PIECE;
				for (size_t i = 0; i < m; i++)
					wf[i] = conv(row[i0 + i]);
				for (uint32_t v = 0; v < nv; v++) {
					const float *xv = x + (size_t)(v0 + v) * n + i0;
					size_t i = 0;
					for (; i + 8 <= m; i += 8)
						for (int j = 0; j < 8; j++)
							s[v][j] += wf[i + j] * xv[i + j];
					for (int j = 0; i + j < m; j++)
						s[v][j] += wf[i + j] * xv[i + j];
				}
			}
			for (uint32_t v = 0; v < nv; v++) {
				const float *t = s[v];
				y[(size_t)(v0 + v) * ys + r] = ((t[0] + t[4]) + (t[2] + t[6])) +
							       ((t[1] + t[5]) + (t[3] + t[7]));
			}
		}
	}
}

static float conv_f16(uint16_t h)
{
	return spa__fp16_to_fp32(h);
}

static float conv_bf16(uint16_t h)
{
	return spa__bf16_to_fp32(h);
}

void spa_gemm_f16_scalar(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
			 uint32_t nvec, float *y, size_t ys)
{
	gemm_half(conv_f16, w, row_size, nrows, x, n, nvec, y, ys);
}

void spa_gemm_bf16_scalar(const void *w, size_t row_size, size_t nrows, const float *x,
			  size_t n, uint32_t nvec, float *y, size_t ys)
{
	gemm_half(conv_bf16, w, row_size, nrows, x, n, nvec, y, ys);
}
