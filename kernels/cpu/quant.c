/* spa: quantized weight formats, scalar reference (see kernels_impl.h for the block layouts).
 *
 * Q8_0, Q4_0, Q4_K and Q6_K in ggml's exact layouts. The quantizers are ports of ggml's
 * reference quantizers (ggml-quants.c: quantize_row_q8_0_ref, quantize_row_q4_0_ref,
 * quantize_row_q4_K_ref with make_qkx2_quants, quantize_row_q6_K_ref with make_qx_quants) and
 * the dequantizers ports of dequantize_row_*: the same float operations in the same order, so
 * that (built without FP contraction, as ggml's C reference is meant to be read) the bytes
 * match what llama.cpp's quantizer writes without an importance matrix and the decoded floats
 * match ggml's bit for bit.
 *
 * Q8_0 and Q4_0 rows are multiplied as llama.cpp does: x quantized to 8 bits per block of 32
 * and integer dots (a second rounding, of the activations, for a dot that is no longer
 * compute-bound), and so are Q6_K rows (the output matrix of Q4_0 and Q4_K files); the
 * Q4_K dots fuse dequantisation into the product and keep x in f32. Summation orders:
 * kernels_impl.h. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "kernels_impl.h"
#include "spa/error.h"

/* ---- helpers shared with ggml's reference --------------------------------------------- */

/* ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it quantizes to zeros. */
#define GROUP_MAX_EPS 1e-15f

/* ggml's nearest_int: round to nearest (ties to even) by the 1.5 * 2^23 trick; valid for
 * |fval| <= 4194303, which every caller guarantees for finite inputs. ggml asserts the range;
 * here an out-of-range value (only from non-finite inputs, which spa_quantize_row refuses)
 * gives a wrong level, never undefined behaviour. */
static inline int nearest_int(float fval)
{
	float val = fval + 12582912.f;
	int i;
	memcpy(&i, &val, sizeof i);
	return (i & 0x007fffff) - 0x00400000;
}

static inline int imin(int a, int b)
{
	return a < b ? a : b;
}

static inline int imax(int a, int b)
{
	return a > b ? a : b;
}

static inline float lanes_sum(const float s[8])
{
	return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

/* ---- Q8_0 -------------------------------------------------------------------------------- */

/* Port of ggml's quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) (half away from 0). */
void spa_quantize_q8_0_ref(const float *x, void *y_, size_t n)
{
	struct spa_block_q8_0 *y = y_;
	for (size_t i = 0; i < n / SPA_QK8_0; i++, x += SPA_QK8_0) {
		float amax = 0.0f;
		for (int j = 0; j < SPA_QK8_0; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		const float d = amax / ((1 << 7) - 1);
		const float id = d ? 1.0f / d : 0.0f;
		y[i].d = spa_fp32_to_fp16(d);
		for (int j = 0; j < SPA_QK8_0; j++)
			y[i].qs[j] = (int8_t)roundf(x[j] * id);
	}
}

/* Port of ggml's dequantize_row_q8_0. */
void spa_dequant_q8_0_scalar(const void *src, float *dst, size_t n)
{
	const struct spa_block_q8_0 *b = src;
	for (size_t i = 0; i < n / SPA_QK8_0; i++) {
		const float d = spa__fp16_to_fp32(b[i].d);
		for (int j = 0; j < SPA_QK8_0; j++)
			dst[i * SPA_QK8_0 + j] = b[i].qs[j] * d;
	}
}

/* ---- activations quantized for the integer dots (kernels_impl.h) --------------------------- */

/* Below this largest magnitude a block of activations counts as zero: 127 / amax stays finite
 * (ggml's quantizer divides by zero there), and such blocks add nothing a float sum of
 * magnitude >= 2^-100 could resolve. */
#define XQ_TINY 0x1p-100f
/* Blocks of x quantized at a time by the dots that take f32 x: 2.3 KiB of stack. */
#define XQ_CHUNK 64

void spa_quantize_x_scalar(const float *x, struct spa_block_q8x *y, size_t n, size_t group)
{
	float amax = 0.0f;
	int bad = 0;
	for (size_t i = 0; i < n / SPA_QK8X; i++, x += SPA_QK8X) {
		if (i * SPA_QK8X % group == 0) { /* the group's largest magnitude */
			amax = 0.0f;
			bad = 0;
			for (size_t j = 0; j < group; j++) {
				const float a = fabsf(x[j]);
				bad |= !(a <= FLT_MAX); /* NaN or infinity */
				amax = a > amax ? a : amax;
			}
		}
		y[i].sum = 0;
		if (bad || amax < XQ_TINY) {
			y[i].d = bad ? NAN : 0.0f;
			memset(y[i].qs, 0, sizeof y[i].qs);
			continue;
		}
		const float id = 127.0f / amax;
		y[i].d = amax / 127.0f;
		for (int j = 0; j < SPA_QK8X; j++) {
			const float v = x[j] * id; /* |v| <= 127 (1 + 2^-23)^2: rounds to <= 127 */
			y[i].qs[j] = (int8_t)nearest_int(v);
			y[i].sum += y[i].qs[j];
		}
	}
}

/* acc[l] += (d_w * d_x) * s[l] over nb blocks, s[l] the exact sum of elements 4l .. 4l + 3. */
static void dot_q8_0_q8x_acc(const struct spa_block_q8_0 *b, const struct spa_block_q8x *x,
			     size_t nb, float acc[8])
{
	for (size_t i = 0; i < nb; i++) {
		const float d = spa__fp16_to_fp32(b[i].d) * x[i].d;
		for (int l = 0; l < 8; l++) {
			int32_t s = 0;
			for (int k = 4 * l; k < 4 * l + 4; k++)
				s += (int32_t)b[i].qs[k] * x[i].qs[k];
			acc[l] += d * (float)s;
		}
	}
}

float spa_dot_q8_0_q8x_scalar(const void *w, const struct spa_block_q8x *x, size_t n)
{
	float acc[8] = { 0 };
	dot_q8_0_q8x_acc(w, x, n / SPA_QK8_0, acc);
	return lanes_sum(acc);
}

float spa_dot_q8_0_scalar(const void *w, const float *x, size_t n)
{
	const struct spa_block_q8_0 *b = w;
	struct spa_block_q8x xq[XQ_CHUNK];
	float acc[8] = { 0 };
	for (size_t i = 0; i < n / SPA_QK8_0; i += XQ_CHUNK) {
		size_t nb = n / SPA_QK8_0 - i < XQ_CHUNK ? n / SPA_QK8_0 - i : XQ_CHUNK;
		spa_quantize_x_scalar(x + i * SPA_QK8_0, xq, nb * SPA_QK8_0,
				      spa_xq_group(SPA_TYPE_Q8_0));
		dot_q8_0_q8x_acc(b + i, xq, nb, acc);
	}
	return lanes_sum(acc);
}

/* ---- Q4_0 -------------------------------------------------------------------------------- */

/* Port of ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, so that
 * value maps to level 0 exactly; q = min(15, trunc(x / d + 8.5)). */
void spa_quantize_q4_0_ref(const float *x, void *y_, size_t n)
{
	struct spa_block_q4_0 *y = y_;
	for (size_t i = 0; i < n / SPA_QK4_0; i++, x += SPA_QK4_0) {
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < SPA_QK4_0; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		const float d = max / -8;
		const float id = d ? 1.0f / d : 0.0f;
		y[i].d = spa_fp32_to_fp16(d);
		for (int j = 0; j < SPA_QK4_0 / 2; j++) {
			const float x0 = x[j] * id;
			const float x1 = x[SPA_QK4_0 / 2 + j] * id;
			/* x0 + 8.5 lies in [0.5, 16.5]: ggml's (int8_t) cast truncates as (int) does */
			const uint8_t xi0 = (uint8_t)imin(15, (int)(x0 + 8.5f));
			const uint8_t xi1 = (uint8_t)imin(15, (int)(x1 + 8.5f));
			y[i].qs[j] = (uint8_t)(xi0 | (xi1 << 4));
		}
	}
}

/* Port of ggml's dequantize_row_q4_0. */
void spa_dequant_q4_0_scalar(const void *src, float *dst, size_t n)
{
	const struct spa_block_q4_0 *b = src;
	for (size_t i = 0; i < n / SPA_QK4_0; i++) {
		const float d = spa__fp16_to_fp32(b[i].d);
		for (int j = 0; j < SPA_QK4_0 / 2; j++) {
			const int x0 = (b[i].qs[j] & 0x0F) - 8;
			const int x1 = (b[i].qs[j] >> 4) - 8;
			dst[i * SPA_QK4_0 + j] = x0 * d;
			dst[i * SPA_QK4_0 + j + SPA_QK4_0 / 2] = x1 * d;
		}
	}
}

/* Level j of a Q4_0 block: ((qs[j % 16] >> 4 (j / 16)) & 15) - 8. The block's exact sum s of
 * level * q, then acc = acc + (d_w * d_x) * (float)s (kernels_impl.h). */
static float dot_q4_0_q8x_acc(const struct spa_block_q4_0 *b, const struct spa_block_q8x *x,
			      size_t nb, float acc)
{
	for (size_t i = 0; i < nb; i++) {
		const float d = spa__fp16_to_fp32(b[i].d) * x[i].d;
		int32_t s = 0;
		for (int k = 0; k < SPA_QK4_0; k++)
			s += (((b[i].qs[k % 16] >> (4 * (k / 16))) & 15) - 8) * x[i].qs[k];
		acc = acc + d * (float)s;
	}
	return acc;
}

float spa_dot_q4_0_q8x_scalar(const void *w, const struct spa_block_q8x *x, size_t n)
{
	return dot_q4_0_q8x_acc(w, x, n / SPA_QK4_0, 0.0f);
}

float spa_dot_q4_0_scalar(const void *w, const float *x, size_t n)
{
	const struct spa_block_q4_0 *b = w;
	struct spa_block_q8x xq[XQ_CHUNK];
	float acc = 0.0f;
	for (size_t i = 0; i < n / SPA_QK4_0; i += XQ_CHUNK) {
		size_t nb = n / SPA_QK4_0 - i < XQ_CHUNK ? n / SPA_QK4_0 - i : XQ_CHUNK;
		spa_quantize_x_scalar(x + i * SPA_QK4_0, xq, nb * SPA_QK4_0,
				      spa_xq_group(SPA_TYPE_Q4_0));
		acc = dot_q4_0_q8x_acc(b + i, xq, nb, acc);
	}
	return acc;
}

/* ---- Q4_0 packed by 8 rows (struct spa_block_q4_0x8) -------------------------------------- */

const uint8_t spa_q4_0x8_row[8] = { 0, 1, 4, 5, 2, 3, 6, 7 };

void spa_pack_q4_0_x8(void *data, size_t row_size, uint64_t rows, void *tmp)
{
	const size_t nb = row_size / sizeof(struct spa_block_q4_0);
	for (uint64_t g = 0; g + SPA_PACK_ROWS <= rows; g += SPA_PACK_ROWS) {
		uint8_t *grp = (uint8_t *)data + g * row_size;
		struct spa_block_q4_0x8 *o = (struct spa_block_q4_0x8 *)(void *)grp;
		memcpy(tmp, grp, SPA_PACK_ROWS * row_size);
		for (size_t i = 0; i < nb; i++) {
			struct spa_block_q4_0x8 p;
			for (int l = 0; l < 8; l++) {
				const struct spa_block_q4_0 *b =
					(const struct spa_block_q4_0 *)(const void *)
						((const uint8_t *)tmp + spa_q4_0x8_row[l] * row_size) + i;
				p.d[l] = b->d;
			}
			for (int c = 0; c < 2; c++)
				for (int r = 0; r < 8; r++) {
					const struct spa_block_q4_0 *b =
						(const struct spa_block_q4_0 *)(const void *)
							((const uint8_t *)tmp + r * row_size) + i;
					memcpy(p.qs + 64 * c + 32 * (r / 4) + 8 * (r % 4),
					       b->qs + 8 * c, 8);
				}
			memcpy(&o[i], &p, sizeof p);
		}
	}
}

/* Lane l of the group: row spa_q4_0x8_row[l], its levels read back from the packed bytes,
 * with dot_q4_0_q8x_acc's operations. */
void spa_dot_q4_0_q8x_packed_scalar(const void *w, const struct spa_block_q8x *x, size_t n,
				    float *y)
{
	const struct spa_block_q4_0x8 *b = w;
	float acc[8] = { 0 };
	for (size_t i = 0; i < n / SPA_QK4_0; i++)
		for (int l = 0; l < 8; l++) {
			const int r = spa_q4_0x8_row[l];
			const uint8_t *q = b[i].qs + 32 * (r / 4) + 8 * (r % 4);
			const float d = spa__fp16_to_fp32(b[i].d[l]) * x[i].d;
			int32_t s = 0;
			for (int k = 0; k < SPA_QK4_0; k++) {
				const int byte = k % 16, c = byte / 8;
				s += (((q[64 * c + byte % 8] >> (4 * (k / 16))) & 15) - 8) * x[i].qs[k];
			}
			acc[l] = acc[l] + d * (float)s;
		}
	for (int l = 0; l < 8; l++)
		y[spa_q4_0x8_row[l]] = acc[l];
}

/* ---- Q4_K -------------------------------------------------------------------------------- */

/* Port of ggml's make_qkx2_quants: levels L[i] in 0..nmax and (scale, min) minimising the
 * weighted error of x ~ scale * L + min (min <= 0, returned negated in *the_min), by trying
 * nstep + 1 scales around the plain min/max one and solving the least-squares fit for each. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
			      float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
			      bool use_mad)
{
	float min = x[0];
	float max = x[0];
	float sum_w = weights[0];
	float sum_x = sum_w * x[0];
	for (int i = 1; i < n; ++i) {
		if (x[i] < min)
			min = x[i];
		if (x[i] > max)
			max = x[i];
		float w = weights[i];
		sum_w += w;
		sum_x += w * x[i];
	}
	if (min > 0)
		min = 0;
	if (max == min) {
		for (int i = 0; i < n; ++i)
			L[i] = 0;
		*the_min = -min;
		return 0.f;
	}
	float iscale = nmax / (max - min);
	float scale = 1 / iscale;
	float best_error = 0;
	for (int i = 0; i < n; ++i) {
		int l = nearest_int(iscale * (x[i] - min));
		L[i] = (uint8_t)imax(0, imin(nmax, l));
		float diff = scale * L[i] + min - x[i];
		diff = use_mad ? fabsf(diff) : diff * diff;
		float w = weights[i];
		best_error += w * diff;
	}
	if (nstep < 1) {
		*the_min = -min;
		return scale;
	}
	for (int is = 0; is <= nstep; ++is) {
		iscale = (rmin + rdelta * is + nmax) / (max - min);
		float sum_l = 0, sum_l2 = 0, sum_xl = 0;
		for (int i = 0; i < n; ++i) {
			int l = nearest_int(iscale * (x[i] - min));
			l = imax(0, imin(nmax, l));
			Laux[i] = (uint8_t)l;
			float w = weights[i];
			sum_l += w * l;
			sum_l2 += w * l * l;
			sum_xl += w * l * x[i];
		}
		float D = sum_w * sum_l2 - sum_l * sum_l;
		if (D > 0) {
			float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
			float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
			if (this_min > 0) {
				this_min = 0;
				this_scale = sum_xl / sum_l2;
			}
			float cur_error = 0;
			for (int i = 0; i < n; ++i) {
				float diff = this_scale * Laux[i] + this_min - x[i];
				diff = use_mad ? fabsf(diff) : diff * diff;
				float w = weights[i];
				cur_error += w * diff;
			}
			if (cur_error < best_error) {
				for (int i = 0; i < n; ++i)
					L[i] = Laux[i];
				best_error = cur_error;
				scale = this_scale;
				min = this_min;
			}
		}
	}
	*the_min = -min;
	return scale;
}

/* Port of ggml's quantize_row_q4_K_ref: per sub-block of 32 a (scale, min) pair from
 * make_qkx2_quants weighted by av_x + |x|; the 8 scales and 8 mins quantized to 6 bits against
 * the block's largest (d = max_scale / 63, dmin = max_min / 63); the levels then recomputed
 * from the quantized scales. */
void spa_quantize_q4_K_ref(const float *x, void *y_, size_t n)
{
	struct spa_block_q4_K *y = y_;
	uint8_t L[SPA_QK_K];
	uint8_t Laux[32];
	float weights[32];
	float mins[SPA_QK_K / 32];
	float scales[SPA_QK_K / 32];

	for (size_t i = 0; i < n / SPA_QK_K; i++, x += SPA_QK_K) {
		float max_scale = 0; /* the min is subtracted, so scales are never negative */
		float max_min = 0;
		for (int j = 0; j < SPA_QK_K / 32; ++j) {
			float sum_x2 = 0;
			for (int l = 0; l < 32; ++l)
				sum_x2 += x[32 * j + l] * x[32 * j + l];
			float av_x = sqrtf(sum_x2 / 32);
			for (int l = 0; l < 32; ++l)
				weights[l] = av_x + fabsf(x[32 * j + l]);
			scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j],
						     Laux, -1.f, 0.1f, 20, false);
			if (scales[j] > max_scale)
				max_scale = scales[j];
			if (mins[j] > max_min)
				max_min = mins[j];
		}

		float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
		float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
		for (int j = 0; j < SPA_QK_K / 32; ++j) {
			uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
			uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
			ls = (uint8_t)imin(63, ls);
			lm = (uint8_t)imin(63, lm);
			if (j < 4) {
				y[i].scales[j] = ls;
				y[i].scales[j + 4] = lm;
			} else {
				y[i].scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
				y[i].scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
				y[i].scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
			}
		}
		y[i].d = spa_fp32_to_fp16(max_scale / 63.f);
		y[i].dmin = spa_fp32_to_fp16(max_min / 63.f);

		uint8_t sc, m;
		for (int j = 0; j < SPA_QK_K / 32; ++j) {
			spa__q4k_scale_min(j, y[i].scales, &sc, &m);
			const float d = spa__fp16_to_fp32(y[i].d) * sc;
			if (!d)
				continue;
			const float dm = spa__fp16_to_fp32(y[i].dmin) * m;
			for (int ii = 0; ii < 32; ++ii) {
				int l = nearest_int((x[32 * j + ii] + dm) / d);
				L[32 * j + ii] = (uint8_t)imax(0, imin(15, l));
			}
		}

		uint8_t *q = y[i].qs;
		for (int j = 0; j < SPA_QK_K; j += 64) {
			for (int l = 0; l < 32; ++l)
				q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
			q += 32;
		}
	}
}

/* Port of ggml's dequantize_row_q4_K. */
void spa_dequant_q4_K_scalar(const void *src, float *dst, size_t n)
{
	const struct spa_block_q4_K *b = src;
	float *y = dst;
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		const uint8_t *q = b[i].qs;
		const float d = spa__fp16_to_fp32(b[i].d);
		const float min = spa__fp16_to_fp32(b[i].dmin);
		int is = 0;
		uint8_t sc, m;
		for (int j = 0; j < SPA_QK_K; j += 64) {
			spa__q4k_scale_min(is + 0, b[i].scales, &sc, &m);
			const float d1 = d * sc;
			const float m1 = min * m;
			spa__q4k_scale_min(is + 1, b[i].scales, &sc, &m);
			const float d2 = d * sc;
			const float m2 = min * m;
			for (int l = 0; l < 32; ++l)
				*y++ = d1 * (q[l] & 0xF) - m1;
			for (int l = 0; l < 32; ++l)
				*y++ = d2 * (q[l] >> 4) - m2;
			q += 32;
			is += 2;
		}
	}
}

float spa_dot_q4_K_scalar(const void *w, const float *x, size_t n)
{
	const struct spa_block_q4_K *b = w;
	float acc[8] = { 0 };
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		const float d = spa__fp16_to_fp32(b[i].d);
		const float dmin = spa__fp16_to_fp32(b[i].dmin);
		for (int j = 0; j < SPA_QK_K / 32; j++, x += 32) {
			uint8_t sc, m;
			spa__q4k_scale_min(j, b[i].scales, &sc, &m);
			const float d1 = d * sc, m1 = dmin * m;
			const uint8_t *q = b[i].qs + 32 * (j / 2);
			const int shift = 4 * (j & 1);
			float p[8], sx[8];
			for (int l = 0; l < 8; l++) {
				p[l] = (float)((q[l] >> shift) & 0xF) * x[l];
				sx[l] = x[l];
			}
			for (int k = 8; k < 32; k += 8) {
				for (int l = 0; l < 8; l++) {
					p[l] += (float)((q[k + l] >> shift) & 0xF) * x[k + l];
					sx[l] += x[k + l];
				}
			}
			for (int l = 0; l < 8; l++) {
				acc[l] += d1 * p[l];
				acc[l] -= m1 * sx[l];
			}
		}
	}
	return lanes_sum(acc);
}

/* ---- Q6_K -------------------------------------------------------------------------------- */

/* Port of ggml's make_qx_quants: signed levels (stored as L + nmax) and the scale that
 * minimises the weighted error, trying 18 scales around -nmax / max. rmse_type 1 and no
 * quant weights (weights x^2) is the only case Q6_K uses; the other modes are left out. */
static float make_qx_quants_rmse1(int n, int nmax, const float *x, int8_t *L)
{
	float max = 0;
	float amax = 0;
	for (int i = 0; i < n; ++i) {
		float ax = fabsf(x[i]);
		if (ax > amax) {
			amax = ax;
			max = x[i];
		}
	}
	if (amax < GROUP_MAX_EPS) { /* all zero */
		for (int i = 0; i < n; ++i)
			L[i] = 0;
		return 0.f;
	}
	float iscale = -nmax / max;
	float sumlx = 0;
	float suml2 = 0;
	for (int i = 0; i < n; ++i) {
		int l = nearest_int(iscale * x[i]);
		l = imax(-nmax, imin(nmax - 1, l));
		L[i] = (int8_t)(l + nmax);
		float w = x[i] * x[i];
		sumlx += w * x[i] * l;
		suml2 += w * l * l;
	}
	float scale = suml2 ? sumlx / suml2 : 0.0f;
	float best = scale * sumlx;
	for (int is = -9; is <= 9; ++is) {
		if (is == 0)
			continue;
		iscale = -(nmax + 0.1f * is) / max;
		sumlx = suml2 = 0;
		for (int i = 0; i < n; ++i) {
			int l = nearest_int(iscale * x[i]);
			l = imax(-nmax, imin(nmax - 1, l));
			float w = x[i] * x[i];
			sumlx += w * x[i] * l;
			suml2 += w * l * l;
		}
		if (suml2 > 0 && sumlx * sumlx > best * suml2) {
			for (int i = 0; i < n; ++i) {
				int l = nearest_int(iscale * x[i]);
				L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
			}
			scale = sumlx / suml2;
			best = scale * sumlx;
		}
	}
	return scale;
}

/* Port of ggml's quantize_row_q6_K_ref: a signed scale per sub-block of 16 from
 * make_qx_quants(16, 32, rmse_type 1), the 16 scales quantized to int8 against the largest
 * (d = max_scale / -128), then the 6-bit levels recomputed from the quantized scales. */
void spa_quantize_q6_K_ref(const float *x, void *y_, size_t n)
{
	struct spa_block_q6_K *y = y_;
	int8_t L[SPA_QK_K];
	float scales[SPA_QK_K / 16];

	for (size_t i = 0; i < n / SPA_QK_K; i++, x += SPA_QK_K) {
		float max_scale = 0;
		float max_abs_scale = 0;
		for (int ib = 0; ib < SPA_QK_K / 16; ++ib) {
			const float scale = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
			scales[ib] = scale;
			const float abs_scale = fabsf(scale);
			if (abs_scale > max_abs_scale) {
				max_abs_scale = abs_scale;
				max_scale = scale;
			}
		}
		if (max_abs_scale < GROUP_MAX_EPS) {
			memset(&y[i], 0, sizeof y[i]);
			y[i].d = spa_fp32_to_fp16(0.f);
			continue;
		}

		float iscale = -128.f / max_scale;
		y[i].d = spa_fp32_to_fp16(1 / iscale);
		for (int ib = 0; ib < SPA_QK_K / 16; ++ib)
			y[i].scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));

		for (int j = 0; j < SPA_QK_K / 16; ++j) {
			float d = spa__fp16_to_fp32(y[i].d) * y[i].scales[j];
			if (!d)
				continue;
			for (int ii = 0; ii < 16; ++ii) {
				int l = nearest_int(x[16 * j + ii] / d);
				l = imax(-32, imin(31, l));
				L[16 * j + ii] = (int8_t)(l + 32);
			}
		}

		uint8_t *ql = y[i].ql;
		uint8_t *qh = y[i].qh;
		for (int j = 0; j < SPA_QK_K; j += 128) {
			for (int l = 0; l < 32; ++l) {
				const uint8_t q1 = L[j + l + 0] & 0xF;
				const uint8_t q2 = L[j + l + 32] & 0xF;
				const uint8_t q3 = L[j + l + 64] & 0xF;
				const uint8_t q4 = L[j + l + 96] & 0xF;
				ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
				ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
				qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
						  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
			}
			ql += 64;
			qh += 32;
		}
	}
}

/* Port of ggml's dequantize_row_q6_K. Within each half (128 elements) of a block, byte l of
 * ql[0..31] holds elements l (low nibble) and 64 + l (high), byte l of ql[32..63] elements
 * 32 + l and 96 + l; qh[l] holds the high 2 bits of elements l, 32 + l, 64 + l, 96 + l. */
void spa_dequant_q6_K_scalar(const void *src, float *dst, size_t n)
{
	const struct spa_block_q6_K *b = src;
	float *y = dst;
	for (size_t i = 0; i < n / SPA_QK_K; i++) {
		const float d = spa__fp16_to_fp32(b[i].d);
		const uint8_t *ql = b[i].ql;
		const uint8_t *qh = b[i].qh;
		const int8_t *sc = b[i].scales;
		for (int k = 0; k < SPA_QK_K; k += 128) {
			for (int l = 0; l < 32; ++l) {
				int is = l / 16;
				const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
				const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
				const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
				const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
				y[l + 0] = d * sc[is + 0] * q1;
				y[l + 32] = d * sc[is + 2] * q2;
				y[l + 64] = d * sc[is + 4] * q3;
				y[l + 96] = d * sc[is + 6] * q4;
			}
			y += 128;
			ql += 64;
			qh += 32;
			sc += 8;
		}
	}
}

/* Level (0..63, before the -32) of element t (0..127) of a half block. */
static inline int q6_level(const uint8_t *ql, const uint8_t *qh, int t)
{
	const int g = t / 32, l = t % 32;
	return ((ql[l + 32 * (g & 1)] >> (4 * (g >> 1))) & 0xF) | (((qh[l] >> (2 * g)) & 3) << 4);
}

/* Over the 8 blocks of activations of each Q6_K block (one scale for the 8: spa_xq_group): x
 * block 4h + g is group g of half h (elements 32 g .. 32 g + 31 of the half), its first 16 in
 * sub-block 2 g (scale sc[8h + 2g]) and its last 16 in sub-block 2 g + 1. Per weight block the
 * exact int32 sum s of sc * (level - 32) * q over its 256 elements, then acc = acc + (d_w *
 * d_x) * (float)s, one accumulator. */
static float dot_q6_K_q8x_acc(const struct spa_block_q6_K *b, const struct spa_block_q8x *x,
			      size_t nb, float acc)
{
	for (size_t i = 0; i < nb; i++) {
		const float d = spa__fp16_to_fp32(b[i].d) * x->d; /* x's one scale for the block */
		int32_t s = 0; /* within 256 * 128 * 32 * 127 < 2^31: exact */
		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
			const int8_t *sc = b[i].scales + 8 * h;
			for (int g = 0; g < 4; g++, x++)
				for (int k = 0; k < 32; k++)
					s += sc[2 * g + k / 16] *
					     ((q6_level(ql, qh, 32 * g + k) - 32) * x->qs[k]);
		}
		acc = acc + d * (float)s;
	}
	return acc;
}

float spa_dot_q6_K_q8x_scalar(const void *w, const struct spa_block_q8x *x, size_t n)
{
	return dot_q6_K_q8x_acc(w, x, n / SPA_QK_K, 0.0f);
}

/* XQ_CHUNK (64) blocks of x are 8 Q6_K blocks. */
float spa_dot_q6_K_scalar(const void *w, const float *x, size_t n)
{
	const struct spa_block_q6_K *b = w;
	struct spa_block_q8x xq[XQ_CHUNK];
	const size_t per = XQ_CHUNK / (SPA_QK_K / SPA_QK8X);
	float acc = 0.0f;
	for (size_t i = 0; i < n / SPA_QK_K; i += per) {
		size_t nb = n / SPA_QK_K - i < per ? n / SPA_QK_K - i : per;
		spa_quantize_x_scalar(x + i * SPA_QK_K, xq, nb * SPA_QK_K,
				      spa_xq_group(SPA_TYPE_Q6_K));
		acc = dot_q6_K_q8x_acc(b + i, xq, nb, acc);
	}
	return acc;
}

/* ---- public: quantize a row, file-type rules ---------------------------------------------- */

int spa_quantize_row(enum spa_dtype type, const float *src, void *dst, uint64_t n)
{
	if ((unsigned)type >= SPA_TYPE_COUNT || !spa_kernels_supports(type))
		return -SPA_EUNSUPPORTED;
	uint32_t blck = spa_dtype_block_elems(type);
	if (!blck || n % blck)
		return -EINVAL;
	switch (type) {
	case SPA_TYPE_F32:
		memmove(dst, src, n * sizeof(float));
		return 0;
	case SPA_TYPE_F16:
		for (uint64_t i = 0; i < n; i++) {
			uint16_t h = spa_fp32_to_fp16(src[i]);
			memcpy((uint8_t *)dst + 2 * i, &h, 2);
		}
		return 0;
	case SPA_TYPE_BF16:
		for (uint64_t i = 0; i < n; i++) {
			uint16_t h = spa_fp32_to_bf16(src[i]);
			memcpy((uint8_t *)dst + 2 * i, &h, 2);
		}
		return 0;
	default:
		break;
	}
	for (uint64_t i = 0; i < n; i++)
		if (!isfinite(src[i]))
			return -EDOM;
	switch (type) {
	case SPA_TYPE_Q8_0:
		spa_quantize_q8_0_ref(src, dst, n);
		break;
	case SPA_TYPE_Q4_0:
		spa_quantize_q4_0_ref(src, dst, n);
		break;
	case SPA_TYPE_Q4_K:
		spa_quantize_q4_K_ref(src, dst, n);
		break;
	case SPA_TYPE_Q6_K:
		spa_quantize_q6_K_ref(src, dst, n);
		break;
	default:
		return -SPA_EUNSUPPORTED;
	}
	return 0;
}

enum spa_dtype spa_quantize_tensor_type(enum spa_dtype ftype, const char *name, uint32_t n_dims,
					 uint64_t ne0)
{
	if (n_dims < 2)
		return SPA_TYPE_F32;
	enum spa_dtype t = ftype;
	if ((ftype == SPA_TYPE_Q4_0 || ftype == SPA_TYPE_Q4_K) && name &&
	    (!strcmp(name, "token_embd.weight") || !strcmp(name, "output.weight")))
		t = SPA_TYPE_Q6_K;
	if (spa_dtype_block_elems(t) == SPA_QK_K && ne0 % SPA_QK_K)
		t = SPA_TYPE_Q8_0;
	if (spa_dtype_block_elems(t) == 32 && ne0 % 32)
		t = SPA_TYPE_F16;
	return t;
}

int spa_quantize_ftype(enum spa_dtype ftype)
{
	switch (ftype) {
	case SPA_TYPE_F32:
		return 0;
	case SPA_TYPE_F16:
		return 1;
	case SPA_TYPE_Q4_0:
		return 2;
	case SPA_TYPE_Q8_0:
		return 7;
	case SPA_TYPE_Q4_K:
		return 15; /* MOSTLY_Q4_K_M: Q4_K with Q6_K where spa_quantize_tensor_type says */
	case SPA_TYPE_Q6_K:
		return 18;
	case SPA_TYPE_BF16:
		return 32;
	default:
		return -1;
	}
}
