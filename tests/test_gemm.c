/* Tests of the matrix kernels behind spa_matmul (kernels/cpu/gemm.c, gemm_avx2.c).
 *
 * The contract: every element of Y = X W^T has the bits of the variant's single-row dot on its
 * row and vector (so spa_matmul gives spa_matvec's bits on each vector, whatever the batch,
 * the tile or the thread). Each kernel of each variant the CPU can run is checked element by
 * element against the single-row dot, on random weights of every type at odd sizes (rows and
 * vectors that do not fill the register tiles, columns that do not fill the passes, the
 * pieces or the groups of 8), in strided outputs whose other elements must stay untouched;
 * the integer dots also against the scalar reference (the same bits in every variant), the
 * float ones against a double-precision sum. Then spa_matmul against spa_matvec through the
 * pool, and NaN and infinities in activations and weights. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

#include "../kernels/cpu/kernels_impl.h"

static const enum spa_dtype types[] = {
	SPA_TYPE_F32, SPA_TYPE_F16, SPA_TYPE_BF16, SPA_TYPE_Q8_0,
	SPA_TYPE_Q4_0, SPA_TYPE_Q4_K, SPA_TYPE_Q6_K,
};
#define N_TYPES (sizeof types / sizeof types[0])

/* The variants this CPU can run. */
static int variants(const struct spa_kernels_ops **v)
{
	int n = 0;
	v[n++] = &spa_kernels_ops_scalar;
	if (spa_kernels_cpu_has_avx2())
		v[n++] = &spa_kernels_ops_avx2;
	return n;
}

static uint64_t lcg(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return *s >> 33;
}

static uint64_t row_size(enum spa_dtype t, uint64_t cols)
{
	uint64_t rs = 0;
	cr_assert_eq(spa_dtype_row_size(t, cols, &rs), 0);
	return rs;
}

/* rows x cols weights of type t: float types from uniform floats, block types from random
 * bytes (every level and sub-block scale) with fp16 scales of modest size. */
static uint8_t *random_weights(enum spa_dtype t, uint64_t rows, uint64_t cols, uint64_t seed)
{
	const uint64_t rs = row_size(t, cols), size = rows * rs;
	uint8_t *w = malloc(size + 1);
	cr_assert(w);
	uint64_t st = seed;
	if (t == SPA_TYPE_F32 || t == SPA_TYPE_F16 || t == SPA_TYPE_BF16) {
		float *f = malloc(cols * sizeof(float));
		cr_assert(f);
		for (uint64_t r = 0; r < rows; r++) {
			tu_rand(f, cols, seed + r, 1.0f);
			cr_assert_eq(spa_quantize_row(t, f, w + r * rs, cols), 0);
		}
		free(f);
		return w;
	}
	for (uint64_t i = 0; i < size; i++)
		w[i] = (uint8_t)lcg(&st);
	/* the block's fp16 scales: d at 0 (Q8_0, Q4_0), d and dmin at 0 and 2 (Q4_K), d at 208
	 * (Q6_K) */
	const size_t bs = spa_dtype_block_size(t);
	const size_t at = t == SPA_TYPE_Q6_K ? 208 : 0, nd = t == SPA_TYPE_Q4_K ? 2 : 1;
	for (uint64_t b = 0; b < size / bs; b++)
		for (size_t k = 0; k < nd; k++) {
			uint16_t d = spa_fp32_to_fp16(((float)(lcg(&st) % 2001) - 1000.0f) * 1e-4f);
			memcpy(w + b * bs + at + 2 * k, &d, 2);
		}
	return w;
}

/* Activations: uniform, with some blocks of 32 zero, tiny (their quantized scale 0) or large. */
static void random_x(float *x, uint64_t n, uint64_t seed)
{
	tu_rand(x, n, seed, 1.0f);
	for (uint64_t b = 0; b < n / 32; b++) {
		const uint64_t k = (b + seed) % 9;
		for (int j = 0; j < 32; j++)
			x[32 * b + j] *= k == 1 ? 0.0f : k == 2 ? 0x1p-110f : k == 3 ? 1000.0f : 1.0f;
	}
}

static int block_type(enum spa_dtype t)
{
	return t != SPA_TYPE_F32 && t != SPA_TYPE_F16 && t != SPA_TYPE_BF16;
}

/* Column counts for a type: odd ones for the float types (partial groups of 8, tails after the
 * blocks of 32, pieces of the passes), whole blocks for the others (groups of 8 blocks,
 * several panels of 16). */
static size_t cols_of(enum spa_dtype t, uint64_t *cols)
{
	static const uint64_t f[] = { 1, 7, 8, 31, 40, 63, 96, 257, 520, 1029 };
	static const uint64_t q[] = { 32, 64, 96, 224, 512, 544, 1056 };
	static const uint64_t k[] = { 256, 512, 768, 4352 };
	const uint64_t *s = !block_type(t) ? f : (t == SPA_TYPE_Q4_K || t == SPA_TYPE_Q6_K) ? k : q;
	const size_t n = !block_type(t) ? sizeof f / 8 : s == k ? sizeof k / 8 : sizeof q / 8;
	memcpy(cols, s, n * sizeof *cols);
	return n;
}

/* The variant's single-row dot of row r (rs bytes apart from w) with vector v: on quantized
 * activations (xq, cols / 32 blocks per vector) where the type has them, else on x. */
static float dot_of(const struct spa_kernels_ops *ops, enum spa_dtype t, const uint8_t *w,
		    uint64_t rs, uint64_t r, const float *x, const struct spa_block_q8x *xq,
		    uint32_t v, uint64_t cols)
{
	if (ops->dot_q8x[t])
		return ops->dot_q8x[t](w + r * rs, xq + (uint64_t)v * (cols / 32), cols);
	return ops->dot[t](w + r * rs, x + (uint64_t)v * cols, cols);
}

#define GUARD 0x7fa5a5a5u /* a NaN pattern no kernel writes */

/* Run the variant's matrix kernel of type t (packed: on a packed copy) on rows x cols weights
 * and nvec vectors into y with a stride of rows + 3 columns, and check every element against
 * the single-row dot (and the scalar reference for the integer dots, a double sum for the
 * float ones) and every other element of y against the guard. Returns the elements checked. */
static int check_kernel(const struct spa_kernels_ops *ops, enum spa_dtype t, int packed,
			uint64_t rows, uint64_t cols, uint32_t nvec, uint64_t seed)
{
	const uint64_t rs = row_size(t, cols), ys = rows + 3;
	uint8_t *w = random_weights(t, rows, cols, seed);
	float *x = malloc(nvec * cols * sizeof(float));
	float *y = malloc((nvec * ys + 2) * sizeof(float));
	struct spa_block_q8x *xq = malloc((nvec * cols / 32 + 1) * sizeof *xq);
	cr_assert(x && y && xq);
	random_x(x, nvec * cols, seed + 7);
	if (ops->dot_q8x[t])
		for (uint32_t v = 0; v < nvec; v++)
			ops->quantize_x(x + v * cols, xq + v * (cols / 32), cols, spa_xq_group(t));
	for (uint64_t i = 0; i < nvec * ys + 2; i++)
		memcpy(&y[i], &(uint32_t){ GUARD }, 4);
	const uint8_t *wk = w;
	uint8_t *wp = NULL;
	if (packed) {
		wp = malloc(rows * rs);
		uint8_t *tmp = malloc(8 * rs);
		cr_assert(wp && tmp);
		memcpy(wp, w, rows * rs);
		spa_pack_q4_0_x8(wp, rs, rows, tmp);
		free(tmp);
		wk = wp;
	}
	float *yk = y + 1; /* not at an aligned address */
	if (packed)
		ops->gemm_q8x_packed[t](wk, rs, rows, xq, cols, nvec, yk, ys);
	else if (ops->dot_q8x[t])
		ops->gemm_q8x[t](wk, rs, rows, xq, cols, nvec, yk, ys);
	else
		ops->gemm[t](wk, rs, rows, x, cols, nvec, yk, ys);
	int checked = 0;
	for (uint32_t v = 0; v < nvec; v++)
		for (uint64_t r = 0; r < ys; r++) {
			const float got = yk[v * ys + r];
			if (r >= rows) {
				cr_assert_eq(spa__f32_bits(got), GUARD, "%s %s: y[%u][%llu] written",
					     ops->name, spa_dtype_name(t), v, (unsigned long long)r);
				continue;
			}
			const float want = dot_of(ops, t, w, rs, r, x, xq, v, cols);
			cr_assert_eq(spa__f32_bits(got), spa__f32_bits(want),
				     "%s %s%s %llux%llu, %u vectors: row %llu vector %u: %a, the dot "
				     "%a", ops->name, spa_dtype_name(t), packed ? " packed" : "",
				     (unsigned long long)rows, (unsigned long long)cols, nvec,
				     (unsigned long long)r, v, (double)got, (double)want);
			if (ops->dot_q8x[t]) { /* the integer dots: the scalar reference's bits */
				const float s = spa_kernels_ops_scalar.dot_q8x[t](
					w + r * rs, xq + v * (cols / 32), cols);
				cr_assert_eq(spa__f32_bits(got), spa__f32_bits(s),
					     "%s %s: row %llu vector %u: %a, the scalar dot %a",
					     ops->name, spa_dtype_name(t), (unsigned long long)r, v,
					     (double)got, (double)s);
			} else if (!block_type(t)) { /* the float ones: near the exact sum */
				float wf[1100];
				double sum = 0, abs = 0;
				spa_dequant_row(t, w + r * rs, wf, cols);
				for (uint64_t c = 0; c < cols; c++) {
					sum += (double)wf[c] * x[v * cols + c];
					abs += fabs((double)wf[c] * x[v * cols + c]);
				}
				cr_assert(fabs(got - sum) <= ((double)cols / 8 + 8) * FLT_EPSILON * abs +
								     1e-30,
					  "%s %s row %llu vector %u: %.9g, exactly %.9g", ops->name,
					  spa_dtype_name(t), (unsigned long long)r, v, (double)got, sum);
			}
			checked++;
		}
	cr_assert_eq(spa__f32_bits(y[0]), GUARD);
	cr_assert_eq(spa__f32_bits(y[nvec * ys + 1]), GUARD);
	free(w), free(wp), free(x), free(y), free(xq);
	return checked;
}

Test(gemm, every_kernel_gives_each_element_the_single_row_dot_bits)
{
	const struct spa_kernels_ops *v[2];
	const int nv = variants(v);
	static const uint64_t rows_l[] = { 1, 2, 3, 5, 8, 13, 16, 26, 40 };
	int checked = 0, kernels = 0;
	for (int k = 0; k < nv; k++)
		for (size_t ti = 0; ti < N_TYPES; ti++) {
			const enum spa_dtype t = types[ti];
			for (int packed = 0; packed < 2; packed++) {
				const int has = packed ? v[k]->gemm_q8x_packed[t] != NULL
					      : v[k]->dot_q8x[t] ? v[k]->gemm_q8x[t] != NULL
								 : v[k]->gemm[t] != NULL;
				if (!has)
					continue;
				kernels++;
				uint64_t cols[16];
				const size_t ncols = cols_of(t, cols);
				for (size_t c = 0; c < ncols; c++)
					for (size_t ri = 0; ri < sizeof rows_l / 8; ri++) {
						const uint64_t rows = packed ? 8 * (rows_l[ri] / 4 + 1)
									     : rows_l[ri];
						/* 1..17 vectors over the shapes, and two longer batches */
						const uint32_t nvec = (uint32_t)((c * 9 + ri) % 17 + 1);
						checked += check_kernel(v[k], t, packed, rows, cols[c], nvec,
									1000 * ti + 10 * c + ri);
					}
				checked += check_kernel(v[k], t, packed, packed ? 24 : 7, cols[1], 33,
							ti + 5);
				checked += check_kernel(v[k], t, packed, 16, cols[ncols - 1], 64, ti + 6);
			}
		}
	cr_assert_geq(kernels, 3, "only %d kernels", kernels);
	if (spa_kernels_cpu_has_avx2())
		cr_assert_geq(kernels, 2 + 8, "the AVX2 table lost kernels: %d", kernels);
	cr_assert_geq(checked, 50000, "only %d elements checked", checked);
}

/* spa_matmul on 1, 2 and 3 threads gives spa_matvec's bits on every vector, for every type
 * (Q4_0 packed and not), batches that fill the tiles and batches that do not, and an input
 * long enough that the activations are quantized in several sub-batches. */
Test(gemm, matmul_gives_matvec_bits_for_every_type_batch_and_thread_count)
{
	const struct spa_kernels_ops *v[2];
	const int nv = variants(v);
	struct spa_pool *pools[3];
	for (int p = 0; p < 3; p++)
		cr_assert_eq(spa_pool_create(&pools[p], p + 1, NULL), 0);
	static const uint32_t batches[] = { 2, 3, 8, 16, 17, 64 };
	for (size_t ti = 0; ti < N_TYPES; ti++)
		for (int packed = 0; packed < 2; packed++) {
			const enum spa_dtype t = types[ti];
			if (packed && t != SPA_TYPE_Q4_0)
				continue;
			const int kq = t == SPA_TYPE_Q4_K || t == SPA_TYPE_Q6_K;
			const uint64_t shapes[][2] = { { 136, kq ? 768 : 544 }, { 48, 4096 } };
			for (size_t s = 0; s < 2; s++) {
				const uint64_t rows = shapes[s][0], cols = shapes[s][1];
				const uint32_t nmax = s ? 40 : 64;
				uint8_t *w = random_weights(t, rows, cols, 31 * ti + s);
				struct spa_tensor ten = { t, cols, rows, w, 0 };
				if (packed)
					cr_assert_eq(spa_tensor_pack(&ten), 1);
				float *x = malloc(nmax * cols * sizeof(float));
				float *y = malloc(nmax * rows * sizeof(float)), *y1 = malloc(rows * 4);
				cr_assert(x && y && y1);
				random_x(x, nmax * cols, 17 * ti + s);
				for (int k = 0; k < nv; k++)
					for (size_t bi = 0; bi < sizeof batches / 4; bi++) {
						const uint32_t n = s ? (batches[bi] < nmax ? batches[bi] : nmax)
								     : batches[bi];
						for (int p = 0; p < 3; p++) {
							memset(y, 0xff, n * rows * sizeof(float));
							spa_matmul_ops(v[k], pools[p], &ten, x, y, n);
							for (uint32_t b = 0; b < n; b++) {
								spa_matvec_ops(v[k], NULL, &ten, x + b * cols, y1);
								cr_assert_eq(memcmp(y + b * rows, y1, rows * 4), 0,
									     "%s %s%s %llux%llu, %u vectors on "
									     "%d threads: vector %u",
									     v[k]->name, spa_dtype_name(t),
									     packed ? " packed" : "",
									     (unsigned long long)rows,
									     (unsigned long long)cols, n, p + 1,
									     b);
							}
						}
					}
				free(w), free(x), free(y), free(y1);
			}
		}
	for (int p = 0; p < 3; p++)
		spa_pool_destroy(pools[p]);
}

/* A NaN or an infinity in an activation, or in a weight (a float type's element, a block
 * type's scale), reaches the outputs as it reaches the single-row dot's, bit for bit. */
Test(gemm, nan_and_infinity_reach_the_outputs_as_in_the_dot)
{
	const struct spa_kernels_ops *v[2];
	const int nv = variants(v);
	const uint64_t rows = 19;
	const uint32_t n = 9;
	for (size_t ti = 0; ti < N_TYPES; ti++) {
		const enum spa_dtype t = types[ti];
		const uint64_t cols = t == SPA_TYPE_Q4_K || t == SPA_TYPE_Q6_K ? 512 : 96;
		const uint64_t rs = row_size(t, cols);
		uint8_t *w = random_weights(t, rows, cols, 900 + ti);
		/* rows 3 and 11: an infinity and a NaN, in an element or in block 1's scale */
		if (!block_type(t)) {
			const size_t es = t == SPA_TYPE_F32 ? 4 : 2;
			const uint32_t inf = t == SPA_TYPE_F32 ? 0x7f800000u
					     : t == SPA_TYPE_F16 ? 0x7c00u : 0x7f80u;
			const uint32_t nan = t == SPA_TYPE_F32 ? 0xffc00001u
					     : t == SPA_TYPE_F16 ? 0xfe01u : 0xffc1u;
			memcpy(w + 3 * rs + 40 * es, &inf, es);
			memcpy(w + 11 * rs + 41 * es, &nan, es);
		} else {
			const size_t bs = spa_dtype_block_size(t), at = t == SPA_TYPE_Q6_K ? 208 : 0;
			const uint16_t inf = 0x7c00, nan = 0x7e00;
			memcpy(w + 3 * rs + bs + at, &inf, 2);
			memcpy(w + 11 * rs + bs + at, &nan, 2);
		}
		struct spa_tensor ten = { t, cols, rows, w, 0 };
		float *x = malloc(n * cols * sizeof(float)), *y = malloc(n * rows * sizeof(float));
		float y1[19];
		cr_assert(x && y);
		random_x(x, n * cols, 77 + ti);
		x[2 * cols + 5] = NAN;       /* vector 2 */
		x[4 * cols + 70] = INFINITY; /* vector 4 */
		x[5 * cols + 3] = -INFINITY; /* vector 5, with row 3's infinity */
		for (int k = 0; k < nv; k++) {
			spa_matmul_ops(v[k], NULL, &ten, x, y, n);
			int special = 0;
			for (uint32_t b = 0; b < n; b++) {
				spa_matvec_ops(v[k], NULL, &ten, x + b * cols, y1);
				for (uint64_t r = 0; r < rows; r++) {
					cr_assert_eq(spa__f32_bits(y[b * rows + r]),
						     spa__f32_bits(y1[r]),
						     "%s %s row %llu vector %u: %a, matvec %a",
						     v[k]->name, spa_dtype_name(t),
						     (unsigned long long)r, b,
						     (double)y[b * rows + r], (double)y1[r]);
					special += !isfinite(y1[r]);
				}
			}
			cr_assert_geq(special, 3 * (int)rows, "%s %s: only %d outputs not finite",
				      v[k]->name, spa_dtype_name(t), special);
		}
		free(w), free(x), free(y);
	}
}
