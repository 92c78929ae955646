/* spa: CPU kernel internals (kernels/cpu/), shared by kernels.c, kernels_avx2.c and the tests.
 * Not installed, not part of the library's contract.
 *
 * A kernel variant is a table of the functions whose summation order depends on the
 * instruction set (the dot products) plus the row converters. spa_matvec & co. take their
 * functions from the variant chosen once per process (spa_kernels_ops()); the *_ops entry
 * points below let the tests run every variant the CPU can execute side by side.
 *
 * To add a weight format: write its dot and dequant_row (quant.c, and, if worth it,
 * quant_avx2.c), fill the slots of both tables and list it in spa_kernels_supports().
 * Everything else (matvec, matmul, threading) is type-independent; a matrix kernel for
 * batches (gemm*, gemm_avx2.c) is optional: without one, matmul runs the rows kernels
 * vector by vector. */
#ifndef SPA_KERNELS_IMPL_H
#define SPA_KERNELS_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "spa/kernels.h"

/* Dot product of one weight row (n elements of the slot's type) with n floats. */
typedef float (*spa_dot_fn)(const void *w, const float *x, size_t n);
/* Convert n elements of the slot's type to float. */
typedef void (*spa_dequant_fn)(const void *src, float *dst, size_t n);

/* Activations quantized for the integer dots (llama.cpp's vec_dot_type Q8_0, with an f32
 * scale instead of its fp16 one: the product d_w * d_x then rounds once, not twice): 32 levels
 * in -127..127 and their scale, value j = qs[j] * d; sum = the sum of the 32 levels (Q4_0's
 * offset of 8 is then one subtraction per block, as llama.cpp's Q8_1 carries its sum). */
#define SPA_QK8X 32
struct spa_block_q8x {
	float d;
	int8_t qs[SPA_QK8X];
	int32_t sum;
};
_Static_assert(sizeof(struct spa_block_q8x) == 40, "block_q8x is a float, 32 levels and a sum");

/* Dot product of one weight row (n elements of the slot's type) with n activations already
 * quantized by the variant's quantize_x (n / 32 blocks) with the type's group
 * (spa_xq_group). */
typedef float (*spa_dot_q8x_fn)(const void *w, const struct spa_block_q8x *x, size_t n);
/* Quantize n floats into n / 32 blocks of activations, one scale for each group of `group`
 * elements (a multiple of 32 that divides n): amax / 127 over the group, given to each of its
 * blocks. A group with a NaN or an infinity gets the scale NaN, one below 2^-100 the scale 0
 * (levels 0 in both). */
typedef void (*spa_quantize_x_fn)(const float *x, struct spa_block_q8x *y, size_t n,
				  size_t group);
/* The activations' group of a type with integer dots: Q6_K's 256 (llama.cpp's Q8_K: one
 * scale per weight block, so a block's products add up in integers before one float
 * multiply, instead of eight), 32 for the others (Q8_0, Q4_0: the weight block's size). */
static inline size_t spa_xq_group(enum spa_dtype t)
{
	return t == SPA_TYPE_Q6_K ? 256 : 32;
}

/* Rows kernels: nrows (1..SPA_DOT_ROWS) consecutive weight rows, row_size bytes apart, each
 * times the same x, into y[0..nrows-1]. y[k] has exactly the bits of the slot's single-row
 * dot on row k (the rows are interleaved for instruction-level parallelism and share the
 * loads of x and the reduction of the lanes; each row's own operations are unchanged). */
#define SPA_DOT_ROWS 4
typedef void (*spa_dot_rows_fn)(const void *w, size_t row_size, const float *x, size_t n,
				float *y, unsigned nrows);
typedef void (*spa_dot_q8x_rows_fn)(const void *w, size_t row_size,
				    const struct spa_block_q8x *x, size_t n, float *y,
				    unsigned nrows);

/* Packed kernels (spa_tensor_pack): one group of SPA_PACK_ROWS rows of a packed matrix (the
 * group's bytes at w) times x, into y[0..SPA_PACK_ROWS-1]; y[k] has the bits of the slot's
 * single-row dot on row k as the file holds it. */
typedef void (*spa_dot_q8x_packed_fn)(const void *w, const struct spa_block_q8x *x, size_t n,
				      float *y);

/* out[d] = sum over t < rows of a[t] * v[t * stride + d], d < n (spa_weighted_sum). */
typedef void (*spa_wsum_fn)(float *out, const float *a, const float *v, size_t stride,
			    uint32_t rows, uint32_t n);
typedef void (*spa_wsum_f16_fn)(float *out, const float *a, const uint16_t *v, size_t stride,
				uint32_t rows, uint32_t n);
typedef void (*spa_to_f16_fn)(uint16_t *dst, const float *src, size_t n);
/* out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + spa__expf(-gate[i])) * up[i]; out may
 * alias gate. */
typedef void (*spa_swiglu_fn)(float *out, const float *gate, const float *up, uint32_t n);
/* x[i] = spa__expf(x[i] - shift), returning the sum of the results added in double, i
 * ascending. */
typedef double (*spa_exp_shift_fn)(float *x, float shift, uint32_t n);

/* Optional 8-row kernels on rows as the file lays them out (row_size bytes apart):
 * y[0..SPA_DOT_ROWS8-1], each with the single-row dot's bits. */
#define SPA_DOT_ROWS8 8
typedef void (*spa_dot_q8x_rows8_fn)(const void *w, size_t row_size,
				     const struct spa_block_q8x *x, size_t n, float *y);

/* Matrix kernels (spa_matmul): rows [0, nrows) of a matrix (row_size bytes apart) times nvec
 * vectors, y[v * ys + r] = dot(row r, vector v), each with the bits of the slot's single-row
 * dot (spa_dot_fn: x holds the vectors, n floats apart; spa_dot_q8x_fn: xq holds them
 * quantized, n / 32 blocks apart). The kernel tiles rows and vectors in registers, so each
 * weight block is read and unpacked once for several vectors; the caller gives it a block of
 * rows that fits in L2, and every vector. For a packed matrix (spa_tensor_pack) w is the start
 * of a group and nrows a multiple of SPA_PACK_ROWS. No allocation; thread-safe on disjoint
 * y. */
typedef void (*spa_gemm_fn)(const void *w, size_t row_size, size_t nrows, const float *x,
			    size_t n, uint32_t nvec, float *y, size_t ys);
typedef void (*spa_gemm_q8x_fn)(const void *w, size_t row_size, size_t nrows,
				const struct spa_block_q8x *xq, size_t n, uint32_t nvec, float *y,
				size_t ys);

struct spa_kernels_ops {
	const char *name;
	spa_dot_fn dot[SPA_TYPE_COUNT];             /* NULL: type not supported */
	spa_dequant_fn dequant_row[SPA_TYPE_COUNT]; /* NULL: type not supported */
	/* Types whose dot quantizes the activations (Q8_0, Q4_0, Q6_K): dot[t](w, x, n) gives the bits
	 * of dot_q8x[t](w, quantize_x(x), n), so spa_matvec quantizes x once per call and runs
	 * dot_q8x on every row; NULL for the types that keep x in f32. */
	spa_dot_q8x_fn dot_q8x[SPA_TYPE_COUNT];
	spa_quantize_x_fn quantize_x;
	/* Optional (NULL: matvec calls the single-row slot row by row; same bits either way). */
	spa_dot_rows_fn dot_rows[SPA_TYPE_COUNT];
	spa_dot_q8x_rows_fn dot_q8x_rows[SPA_TYPE_COUNT];
	/* Types spa_tensor_pack packs (Q4_0), in every variant: a packed matrix has no other
	 * kernel. */
	spa_dot_q8x_packed_fn dot_q8x_packed[SPA_TYPE_COUNT];
	spa_dot_q8x_rows8_fn dot_q8x_rows8[SPA_TYPE_COUNT]; /* optional */
	/* Optional matrix kernels (NULL: matmul runs the rows kernels vector by vector; the same
	 * bits either way): gemm with dot, gemm_q8x with dot_q8x, gemm_q8x_packed on a packed
	 * matrix. */
	spa_gemm_fn gemm[SPA_TYPE_COUNT];
	spa_gemm_q8x_fn gemm_q8x[SPA_TYPE_COUNT];
	spa_gemm_q8x_fn gemm_q8x_packed[SPA_TYPE_COUNT];
	spa_wsum_fn wsum;
	spa_wsum_f16_fn wsum_f16;
	spa_to_f16_fn to_f16;
	spa_swiglu_fn swiglu;
	spa_exp_shift_fn exp_shift;
};

/* The portable variant (kernels.c): plain C, 8 independent partial sums so that compilers
 * can vectorize it, combined pairwise. */
extern const struct spa_kernels_ops spa_kernels_ops_scalar;
/* AVX2 + FMA + F16C (kernels_avx2.c): only call when spa_kernels_cpu_has_avx2() says so. */
extern const struct spa_kernels_ops spa_kernels_ops_avx2;

/* Whether this CPU can run spa_kernels_ops_avx2 (avx2, fma and f16c). */
int spa_kernels_cpu_has_avx2(void);
/* The variant chosen for this process (on first use, once): AVX2 when the CPU has it, unless
 * the environment says SPA_KERNELS=scalar. Thread-safe. */
const struct spa_kernels_ops *spa_kernels_ops(void);

/* The public kernels with an explicit variant (the public ones call these with
 * spa_kernels_ops()). */
void spa_matvec_ops(const struct spa_kernels_ops *ops, struct spa_pool *pool,
		    const struct spa_tensor *w, const float *x, float *y);
void spa_matmul_ops(const struct spa_kernels_ops *ops, struct spa_pool *pool,
		    const struct spa_tensor *w, const float *x, float *y, uint32_t n);
void spa_matvec_f32_ops(const struct spa_kernels_ops *ops, const float *w, const float *b,
			const float *x, float *y, uint32_t rows, uint32_t cols);
void spa_rmsnorm_ops(const struct spa_kernels_ops *ops, float *out, const float *x,
		     const float *weight, uint32_t n, float eps);

/* Scalar row kernels, also used by the AVX2 table for the types it does not specialise. */
float spa_dot_f32_scalar(const void *w, const float *x, size_t n);
float spa_dot_f16_scalar(const void *w, const float *x, size_t n);
float spa_dot_bf16_scalar(const void *w, const float *x, size_t n);
void spa_dequant_f32_scalar(const void *src, float *dst, size_t n);
void spa_dequant_f16_scalar(const void *src, float *dst, size_t n);
void spa_dequant_bf16_scalar(const void *src, float *dst, size_t n);
void spa_wsum_scalar(float *out, const float *a, const float *v, size_t stride, uint32_t rows,
		     uint32_t n);
void spa_wsum_f16_scalar(float *out, const float *a, const uint16_t *v, size_t stride,
			 uint32_t rows, uint32_t n);
void spa_to_f16_scalar(uint16_t *dst, const float *src, size_t n);
void spa_swiglu_scalar(float *out, const float *gate, const float *up, uint32_t n);
double spa_exp_shift_scalar(float *x, float shift, uint32_t n);

/* Matrix kernels (gemm.c: the scalar variant's; gemm_avx2.c). */
void spa_gemm_f16_scalar(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
			 uint32_t nvec, float *y, size_t ys);
void spa_gemm_bf16_scalar(const void *w, size_t row_size, size_t nrows, const float *x,
			  size_t n, uint32_t nvec, float *y, size_t ys);
void spa_gemm_f32_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
		       uint32_t nvec, float *y, size_t ys);
void spa_gemm_f16_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
		       uint32_t nvec, float *y, size_t ys);
void spa_gemm_bf16_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
			uint32_t nvec, float *y, size_t ys);
void spa_gemm_q8_0_q8x_avx2(const void *w, size_t row_size, size_t nrows,
			    const struct spa_block_q8x *x, size_t n, uint32_t nvec, float *y,
			    size_t ys);
void spa_gemm_q4_0_q8x_avx2(const void *w, size_t row_size, size_t nrows,
			    const struct spa_block_q8x *x, size_t n, uint32_t nvec, float *y,
			    size_t ys);
void spa_gemm_q4_0_q8x_packed_avx2(const void *w, size_t row_size, size_t nrows,
				   const struct spa_block_q8x *x, size_t n, uint32_t nvec,
				   float *y, size_t ys);
void spa_gemm_q6_K_q8x_avx2(const void *w, size_t row_size, size_t nrows,
			    const struct spa_block_q8x *x, size_t n, uint32_t nvec, float *y,
			    size_t ys);
void spa_gemm_q4_K_avx2(const void *w, size_t row_size, size_t nrows, const float *x, size_t n,
			uint32_t nvec, float *y, size_t ys);

/* exp(x) as the kernels compute it, the same bits in every variant (the AVX2 one computes
 * these operations 8 lanes at a time; libm's expf differs between libraries and cannot be
 * vectorized with its bits): Cephes' expf, range reduction to r = x - n ln 2 (ln 2 in two
 * parts) and a degree-7 polynomial in r evaluated with FMAs, times 2^n; within 2 ulp of exp
 * (tested against double). x > SPA_EXP_HI: +inf; x < SPA_EXP_LO (results below FLT_MIN):
 * 0; NaN: NaN. FMAs are fmaf(): one rounding whether or not the build has FMA instructions. */
#define SPA_EXP_HI 88.0f
#define SPA_EXP_LO -87.3365f
#define SPA_EXP_LOG2E 1.44269504088896341f
#define SPA_EXP_C1 0.693359375f
#define SPA_EXP_C2 -2.12194440e-4f
#define SPA_EXP_P0 1.9875691500e-4f
#define SPA_EXP_P1 1.3981999507e-3f
#define SPA_EXP_P2 8.3334519073e-3f
#define SPA_EXP_P3 4.1665795894e-2f
#define SPA_EXP_P4 1.6666665459e-1f
#define SPA_EXP_P5 5.0000001201e-1f

static inline float spa__expf(float x)
{
	if (x != x)
		return x + x;
	if (x > SPA_EXP_HI)
		return __builtin_inff();
	if (x < SPA_EXP_LO)
		return 0.0f;
	const float fx = __builtin_floorf(__builtin_fmaf(x, SPA_EXP_LOG2E, 0.5f));
	float r = __builtin_fmaf(fx, -SPA_EXP_C1, x);
	r = __builtin_fmaf(fx, -SPA_EXP_C2, r);
	const float z = r * r;
	float y = __builtin_fmaf(SPA_EXP_P0, r, SPA_EXP_P1);
	y = __builtin_fmaf(y, r, SPA_EXP_P2);
	y = __builtin_fmaf(y, r, SPA_EXP_P3);
	y = __builtin_fmaf(y, r, SPA_EXP_P4);
	y = __builtin_fmaf(y, r, SPA_EXP_P5);
	y = __builtin_fmaf(y, z, r);
	y = y + 1.0f;
	const uint32_t bits = (uint32_t)((int32_t)fx + 127) << 23;
	float p2;
	__builtin_memcpy(&p2, &bits, sizeof p2);
	return y * p2;
}

/* ---- quantized formats (quant.c, quant_avx2.c) ------------------------------------------
 * ggml's block layouts (ggml-common.h), byte for byte: a row of n elements is n / QK blocks,
 * little-endian, with no padding (the sizes are asserted below and match spa_dtype_block_size).
 * Half-precision scales are IEEE binary16 bit patterns. */
#define SPA_QK8_0 32
#define SPA_QK4_0 32
#define SPA_QK_K 256

struct spa_block_q8_0 {   /* value j = qs[j] * d */
	uint16_t d;
	int8_t qs[SPA_QK8_0];
};
struct spa_block_q4_0 {   /* value j = ((qs[j % 16] >> (4 * (j / 16))) & 15) - 8) * d */
	uint16_t d;
	uint8_t qs[SPA_QK4_0 / 2];
};
/* 8 sub-blocks of 32: value = d * sc[j] * q - dmin * m[j], q 4 bits; the 6-bit sc and m of the
 * sub-blocks are packed in scales[12] (spa__q4k_scale_min); byte l of qs[32 c .. 32 c + 31]
 * holds element 64 c + l in its low nibble and element 64 c + 32 + l in its high one. */
struct spa_block_q4_K {
	uint16_t d;
	uint16_t dmin;
	uint8_t scales[12];
	uint8_t qs[SPA_QK_K / 2];
};
/* 16 sub-blocks of 16: value = d * scales[j] * (q - 32), q 6 bits: low 4 in ql, high 2 in qh
 * (see spa_dequant_q6_K_scalar for the bit positions). */
struct spa_block_q6_K {
	uint8_t ql[SPA_QK_K / 2];
	uint8_t qh[SPA_QK_K / 4];
	int8_t scales[SPA_QK_K / 16];
	uint16_t d;
};
_Static_assert(sizeof(struct spa_block_q8_0) == 34, "block_q8_0 is 34 bytes in ggml");
_Static_assert(sizeof(struct spa_block_q4_0) == 18, "block_q4_0 is 18 bytes in ggml");
/* Q4_0 packed (spa_tensor_pack): 8 rows' blocks i side by side, 8 x 18 bytes, so that one
 * group of 8 rows is nb of these, the same bytes as its 8 rows. Lane l holds row
 * spa_q4_0x8_row[l] (the order in which the AVX2 kernel's pairwise sums come out): d[l] its
 * scale; qs[64 c + 32 h + 8 r + k] = byte 8 c + k of the qs of row 4 h + r (c, h in 0..1, r in
 * 0..3, k in 0..7), so a 32-byte load holds 8 bytes of 4 rows: elements 8c..8c+7 in the low
 * nibbles, 16+8c..16+8c+7 in the high ones. */
struct spa_block_q4_0x8 {
	uint16_t d[8];
	uint8_t qs[128];
};
_Static_assert(sizeof(struct spa_block_q4_0x8) == 8 * 18, "8 Q4_0 blocks");
extern const uint8_t spa_q4_0x8_row[8];
/* Pack rows 0..rows-1 (rows a multiple of 8) of a Q4_0 matrix of row_size bytes per row in
 * place; tmp holds 8 * row_size bytes. */
void spa_pack_q4_0_x8(void *data, size_t row_size, uint64_t rows, void *tmp);
_Static_assert(sizeof(struct spa_block_q4_K) == 144, "block_q4_K is 144 bytes in ggml");
_Static_assert(sizeof(struct spa_block_q6_K) == 210, "block_q6_K is 210 bytes in ggml");

/* ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j (0..7) of a q4_K block. */
static inline void spa__q4k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
		*m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
	}
}

/* Integer dots of Q8_0 and Q4_0 rows with quantized activations (ggml's
 * ggml_vec_dot_q8_0_q8_0 and ggml_vec_dot_q4_0_q8_0). Activations: per block of 32,
 * amax = max |x|; d = amax / 127, id = 127 / amax, q = x * id rounded to nearest even (the
 * product, then the rounding: no fused operation), so |q| <= 127; a block whose amax is below
 * 2^-100 (ggml would divide by zero or overflow id) quantizes to zeros with d = 0, and one
 * holding a NaN or an infinity to zeros with d = NaN, so that the NaN reaches the output.
 * Dot (Q8_0): per block, 8 exact int32 lane sums s[l] = sum of w[4l + k] * q[4l + k],
 * k = 0..3, then acc[l] = acc[l] + (d_w * d_x) * (float)s[l] (one multiply of the scales, one
 * multiply, one add: three roundings, no FMA), blocks in order; lanes combined as in the f32
 * dot. Dot (Q4_0): per block the exact int32 sum s of all 32 (level - 8) * q, then one
 * accumulator acc = acc + (d_w * d_x) * (float)s, blocks in order: a row is then one lane of
 * the packed 8-row kernel, whose lanes are rows. The scalar and AVX2 versions perform these
 * float operations identically (and the project builds with -ffp-contract=off), so they give
 * the same bits; so do their quantizers. */
void spa_quantize_x_scalar(const float *x, struct spa_block_q8x *y, size_t n, size_t group);
void spa_quantize_x_avx2(const float *x, struct spa_block_q8x *y, size_t n, size_t group);
float spa_dot_q8_0_q8x_scalar(const void *w, const struct spa_block_q8x *x, size_t n);
float spa_dot_q4_0_q8x_scalar(const void *w, const struct spa_block_q8x *x, size_t n);
float spa_dot_q8_0_q8x_avx2(const void *w, const struct spa_block_q8x *x, size_t n);
float spa_dot_q4_0_q8x_avx2(const void *w, const struct spa_block_q8x *x, size_t n);
/* Q6_K (the head of Q4_0 and Q4_K files), on activations with one scale per 256
 * (spa_xq_group): per weight block the exact int32 sum s of sub-block scale * (level - 32) *
 * q over its 256 elements, then acc = acc + (d_w * d_x) * (float)s with d_w the block's fp16
 * d, one accumulator. */
float spa_dot_q6_K_q8x_scalar(const void *w, const struct spa_block_q8x *x, size_t n);
float spa_dot_q6_K_q8x_avx2(const void *w, const struct spa_block_q8x *x, size_t n);
void spa_dot_q6_K_q8x_rows_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				size_t n, float *y, unsigned nrows);
/* Their rows versions (the spa_dot_q8x_rows_fn contract). */
void spa_dot_q8_0_q8x_rows_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				size_t n, float *y, unsigned nrows);
void spa_dot_q4_0_q8x_rows_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				size_t n, float *y, unsigned nrows);
void spa_dot_q4_0_q8x_rows8_avx2(const void *w, size_t row_size, const struct spa_block_q8x *x,
				 size_t n, float *y);
/* Packed Q4_0 (the spa_dot_q8x_packed_fn contract). */
void spa_dot_q4_0_q8x_packed_scalar(const void *w, const struct spa_block_q8x *x, size_t n,
				    float *y);
void spa_dot_q4_0_q8x_packed_avx2(const void *w, const struct spa_block_q8x *x, size_t n,
				  float *y);

/* The quantized row kernels. Q8_0, Q4_0 and Q6_K dots with f32 x: quantize x block by block
 * with the variant's quantizer and run the integer dot (the bits of dot_q8x on
 * quantize_x(x)). Q4_K dot: the weight row (n elements, a multiple of the block) times
 * n floats, dequantisation fused in: each block's integer levels are converted to float in
 * registers and multiplied with x; the block's scale multiplies the block's partial sums
 * (value = scale * level, so sum(scale * q * x) = scale * sum(q * x), up to rounding). Order
 * (scalar): 8 lane sums p[l] over a sub-block, element k*8+l into p[l] (k ascending), then
 * acc[l] += scale * p[l], acc[l] -= min * sum of x in lane l; lanes combined as in the f32
 * dot. The AVX2 version keeps exactly this structure with lanes as vector lanes and fused
 * multiply-adds, so it differs from the scalar one by rounding only.
 * Dequant: bit-exact to ggml's dequantize_row_*. */
float spa_dot_q8_0_scalar(const void *w, const float *x, size_t n);
float spa_dot_q4_0_scalar(const void *w, const float *x, size_t n);
float spa_dot_q4_K_scalar(const void *w, const float *x, size_t n);
float spa_dot_q6_K_scalar(const void *w, const float *x, size_t n);
void spa_dequant_q8_0_scalar(const void *src, float *dst, size_t n);
void spa_dequant_q4_0_scalar(const void *src, float *dst, size_t n);
void spa_dequant_q4_K_scalar(const void *src, float *dst, size_t n);
void spa_dequant_q6_K_scalar(const void *src, float *dst, size_t n);
/* quant_avx2.c (compiled with -mavx2 -mfma -mf16c). */
float spa_dot_q8_0_avx2(const void *w, const float *x, size_t n);
float spa_dot_q4_0_avx2(const void *w, const float *x, size_t n);
float spa_dot_q4_K_avx2(const void *w, const float *x, size_t n);
float spa_dot_q6_K_avx2(const void *w, const float *x, size_t n);

/* ggml's reference quantizers (quantize_row_*_ref), n a multiple of the block; inputs finite. */
void spa_quantize_q8_0_ref(const float *x, void *y, size_t n);
void spa_quantize_q4_0_ref(const float *x, void *y, size_t n);
void spa_quantize_q4_K_ref(const float *x, void *y, size_t n);
void spa_quantize_q6_K_ref(const float *x, void *y, size_t n);

/* Exact conversions, inline so that the row kernels of both files can use them. */
static inline float spa__f32_from_bits(uint32_t u)
{
	union { uint32_t u; float f; } v = { .u = u };
	return v.f;
}

static inline uint32_t spa__f32_bits(float f)
{
	union { float f; uint32_t u; } v = { .f = f };
	return v.u;
}

/* Branch-free (selects only) so that the scalar row loops vectorize:
 * normal: rebias the exponent 15 -> 127; inf/nan: exponent all ones, payload kept (no float
 * arithmetic touches it, so a signalling nan stays signalling); subnormal: m * 2^-24, exact. */
static inline float spa__fp16_to_fp32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t em = h & 0x7fffu;
	uint32_t e = h & 0x7c00u;
	uint32_t bits = (em << 13) + (112u << 23);
	uint32_t is_special = 0u - (uint32_t)(e == 0x7c00u); /* all ones or zero: masks */
	uint32_t is_sub = 0u - (uint32_t)(e == 0);
	bits += is_special & (112u << 23);
	float sub = (float)(int32_t)(em & 0x3ffu) * 0x1.0p-24f;
	uint32_t mag = (spa__f32_bits(sub) & is_sub) | (bits & ~is_sub);
	return spa__f32_from_bits(sign | mag);
}

static inline float spa__bf16_to_fp32(uint16_t h)
{
	return spa__f32_from_bits((uint32_t)h << 16);
}

#endif
