/* spa: CPU kernels, scalar reference and run-time dispatch (see include/spa/kernels.h).
 *
 * Determinism is the contract: each output element of a matvec/matmul is one call of the
 * variant's dot routine on one thread (for the integer-dot types, on x quantized once per
 * call by the calling thread), so the bits do not depend on the thread count or on the batch
 * size, and the variant is fixed for the life of the process. */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

/* ---- conversions ---------------------------------------------------------------------- */

float spa_fp16_to_fp32(uint16_t h)
{
	return spa__fp16_to_fp32(h);
}

uint16_t spa_fp32_to_fp16(float f)
{
	uint32_t x = spa__f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	x &= 0x7fffffffu;

	if (x >= 0x7f800000u) {
		if (x == 0x7f800000u)
			return sign | 0x7c00;
		/* nan: keep the top of the payload; a payload that would truncate to zero
		 * would read as inf, so make it a quiet nan instead */
		uint16_t m = (uint16_t)((x >> 13) & 0x3ff);
		return sign | 0x7c00 | m | (m ? 0 : 0x200);
	}
	if (x >= 0x477ff000u) /* >= 65520: rounds (to even) past the largest half, 65504 */
		return sign | 0x7c00;
	if (x >= 0x38800000u) { /* normal half: rebias 127 -> 15, round 23 -> 10 bits */
		uint32_t r = x - 0x38000000u;
		r += 0xfffu + ((r >> 13) & 1);
		return sign | (uint16_t)(r >> 13);
	}
	if (x <= 0x33000000u) /* <= 2^-25, half the smallest subnormal: ties to even 0 */
		return sign;
	/* subnormal half: value = m * 2^(e-150), in units of 2^-24 = m >> (126 - e) */
	uint32_t e = x >> 23;
	uint32_t m = (x & 0x7fffffu) | 0x800000u;
	uint32_t shift = 126 - e; /* 14..24 */
	uint32_t q = m >> shift;
	uint32_t rem = m & ((1u << shift) - 1);
	uint32_t half = 1u << (shift - 1);
	if (rem > half || (rem == half && (q & 1)))
		q++; /* may carry into the smallest normal, which is the right encoding */
	return sign | (uint16_t)q;
}

float spa_bf16_to_fp32(uint16_t h)
{
	return spa__bf16_to_fp32(h);
}

uint16_t spa_fp32_to_bf16(float f)
{
	uint32_t x = spa__f32_bits(f);
	if ((x & 0x7fffffffu) > 0x7f800000u) { /* nan: as for fp16, never turn it into inf */
		uint16_t h = (uint16_t)(x >> 16);
		return (h & 0x7f) ? h : (uint16_t)(h | 0x40);
	}
	x += 0x7fffu + ((x >> 16) & 1); /* round to nearest even; overflow rounds to inf */
	return (uint16_t)(x >> 16);
}

/* ---- scalar row kernels ----------------------------------------------------------------
 * Eight partial sums, element i going to sum i % 8 (the tail too), combined as
 * ((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7)). Written so that the compiler can keep the eight sums
 * in one vector register; the order is what it is whether or not it does. */

#define SPA_DOT_SCALAR(name, wtype, conv)                                                  \
	float name(const void *w_, const float *x, size_t n)                               \
	{                                                                                  \
		const wtype *w = w_;                                                       \
		float s[8] = { 0 };                                                        \
		size_t i = 0;                                                              \
		for (; i + 8 <= n; i += 8)                                                 \
			for (int j = 0; j < 8; j++)                                        \
				s[j] += conv(w[i + j]) * x[i + j];                         \
		for (int j = 0; i + j < n; j++)                                            \
			s[j] += conv(w[i + j]) * x[i + j];                                 \
		return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));  \
	}

#define SPA_CONV_F32(v) (v)
SPA_DOT_SCALAR(spa_dot_f32_scalar, float, SPA_CONV_F32)
SPA_DOT_SCALAR(spa_dot_f16_scalar, uint16_t, spa__fp16_to_fp32)
SPA_DOT_SCALAR(spa_dot_bf16_scalar, uint16_t, spa__bf16_to_fp32)

void spa_dequant_f32_scalar(const void *src, float *dst, size_t n)
{
	memmove(dst, src, n * sizeof(float));
}

void spa_dequant_f16_scalar(const void *src, float *dst, size_t n)
{
	const uint16_t *h = src;
	for (size_t i = 0; i < n; i++)
		dst[i] = spa__fp16_to_fp32(h[i]);
}

void spa_dequant_bf16_scalar(const void *src, float *dst, size_t n)
{
	const uint16_t *h = src;
	for (size_t i = 0; i < n; i++)
		dst[i] = spa__bf16_to_fp32(h[i]);
}

void spa_wsum_scalar(float *out, const float *a, const float *v, size_t stride, uint32_t rows,
		     uint32_t n)
{
	for (uint32_t d = 0; d < n; d++)
		out[d] = 0.0f;
	for (uint32_t t = 0; t < rows; t++)
		for (uint32_t d = 0; d < n; d++)
			out[d] = out[d] + a[t] * v[(size_t)t * stride + d];
}

void spa_wsum_f16_scalar(float *out, const float *a, const uint16_t *v, size_t stride,
			 uint32_t rows, uint32_t n)
{
	for (uint32_t d = 0; d < n; d++)
		out[d] = 0.0f;
	for (uint32_t t = 0; t < rows; t++)
		for (uint32_t d = 0; d < n; d++)
			out[d] = out[d] + a[t] * spa__fp16_to_fp32(v[(size_t)t * stride + d]);
}

void spa_to_f16_scalar(uint16_t *dst, const float *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = spa_fp32_to_fp16(src[i]);
}

void spa_swiglu_scalar(float *out, const float *gate, const float *up, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		const float g = gate[i];
		out[i] = g / (1.0f + spa__expf(-g)) * up[i];
	}
}

double spa_exp_shift_scalar(float *x, float shift, uint32_t n)
{
	double sum = 0;
	for (uint32_t i = 0; i < n; i++) {
		x[i] = spa__expf(x[i] - shift);
		sum += x[i];
	}
	return sum;
}

const struct spa_kernels_ops spa_kernels_ops_scalar = {
	.name = "scalar",
	.dot = {
		[SPA_TYPE_F32] = spa_dot_f32_scalar,
		[SPA_TYPE_F16] = spa_dot_f16_scalar,
		[SPA_TYPE_BF16] = spa_dot_bf16_scalar,
		[SPA_TYPE_Q8_0] = spa_dot_q8_0_scalar,
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_scalar,
		[SPA_TYPE_Q4_K] = spa_dot_q4_K_scalar,
		[SPA_TYPE_Q6_K] = spa_dot_q6_K_scalar,
	},
	.dot_q8x = {
		[SPA_TYPE_Q8_0] = spa_dot_q8_0_q8x_scalar,
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_q8x_scalar,
		[SPA_TYPE_Q6_K] = spa_dot_q6_K_q8x_scalar,
	},
	.quantize_x = spa_quantize_x_scalar,
	.wsum = spa_wsum_scalar,
	.wsum_f16 = spa_wsum_f16_scalar,
	.to_f16 = spa_to_f16_scalar,
	.swiglu = spa_swiglu_scalar,
	.exp_shift = spa_exp_shift_scalar,
	.dot_q8x_packed = {
		[SPA_TYPE_Q4_0] = spa_dot_q4_0_q8x_packed_scalar,
	},
	.dequant_row = {
		[SPA_TYPE_F32] = spa_dequant_f32_scalar,
		[SPA_TYPE_F16] = spa_dequant_f16_scalar,
		[SPA_TYPE_BF16] = spa_dequant_bf16_scalar,
		[SPA_TYPE_Q8_0] = spa_dequant_q8_0_scalar,
		[SPA_TYPE_Q4_0] = spa_dequant_q4_0_scalar,
		[SPA_TYPE_Q4_K] = spa_dequant_q4_K_scalar,
		[SPA_TYPE_Q6_K] = spa_dequant_q6_K_scalar,
	},
	.gemm = {
		[SPA_TYPE_F16] = spa_gemm_f16_scalar,
		[SPA_TYPE_BF16] = spa_gemm_bf16_scalar,
	},
};

/* ---- dispatch ------------------------------------------------------------------------- */

int spa_kernels_cpu_has_avx2(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	       __builtin_cpu_supports("f16c");
}

static const struct spa_kernels_ops *chosen_ops;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose_ops(void)
{
	const char *env = getenv("SPA_KERNELS");
	int want_scalar = 0;

	if (env && *env && strcmp(env, "auto") != 0) {
		if (strcmp(env, "scalar") == 0)
			want_scalar = 1;
		else if (strcmp(env, "avx2") != 0)
			fprintf(stderr, "spa: SPA_KERNELS=%s is not a kernel variant (use scalar, "
				"avx2 or auto); choosing automatically\n", env);
	}
	/* Once per process: two processes of one machine (cloud and edge) then compute the
	 * same bits, which the split-equals-local invariant needs. */
	chosen_ops = !want_scalar && spa_kernels_cpu_has_avx2() ? &spa_kernels_ops_avx2
								  : &spa_kernels_ops_scalar;
}

const struct spa_kernels_ops *spa_kernels_ops(void)
{
	pthread_once(&chosen_once, choose_ops);
	return chosen_ops;
}

const char *spa_kernels_variant(void)
{
	return spa_kernels_ops()->name;
}

int spa_kernels_supports(enum spa_dtype type)
{
	switch (type) {
	case SPA_TYPE_F32:
	case SPA_TYPE_F16:
	case SPA_TYPE_BF16:
	case SPA_TYPE_Q8_0:
	case SPA_TYPE_Q4_0:
	case SPA_TYPE_Q4_K:
	case SPA_TYPE_Q6_K:
		return 1;
	default:
		return 0;
	}
}

/* A caller's bug found (after its assert): NaNs in y[0..n), not garbage; returns -1. */
static int nan_out(float *y, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		y[i] = NAN;
	return -1;
}

/* Callers check spa_kernels_supports() when they load the weights, so an unsupported type
 * here is a bug in the caller: assert, and leave NaNs if asserts are off. */
static int check_type(enum spa_dtype type, uint64_t n_elems, float *y, uint64_t n)
{
	if ((unsigned)type < SPA_TYPE_COUNT && spa_kernels_supports(type) &&
	    n_elems % spa_dtype_block_elems(type) == 0)
		return 0;
	assert(!"spa kernels: weight type not supported (check spa_kernels_supports) or a row "
		"not a multiple of its block (the GGUF reader refuses those)");
	return nan_out(y, n);
}

/* A packed matrix that spa_tensor_pack could not have made (or a row range of one that cuts a
 * group): a bug in the caller, as check_type. */
static int check_packed(const struct spa_tensor *w, float *y, uint64_t n)
{
	if (!w->packed || (spa_tensor_packable(w) && w->rows % SPA_PACK_ROWS == 0))
		return 0;
	assert(!"spa kernels: a packed matrix that spa_tensor_pack did not make, or a row range "
		"of one that does not start and end on a group of 8 rows");
	return nan_out(y, n);
}

void spa_dequant_row(enum spa_dtype type, const void *src, float *dst, uint64_t n)
{
	if (check_type(type, n, dst, n) < 0)
		return;
	spa_kernels_ops()->dequant_row[type](src, dst, n);
}

/* ---- packing ------------------------------------------------------------------------- */

bool spa_tensor_packable(const struct spa_tensor *t)
{
	return t->type == SPA_TYPE_Q4_0 && t->cols % SPA_QK4_0 == 0 && t->cols > 0 &&
	       t->cols <= SPA_MATVEC_X_MAX_COLS && t->rows >= SPA_PACK_ROWS;
}

int spa_tensor_pack(struct spa_tensor *t)
{
	uint64_t row_size = 0;
	if (t->packed)
		return 1;
	if (!spa_tensor_packable(t) || t->rows % SPA_PACK_ROWS || !t->data ||
	    spa_dtype_row_size(t->type, t->cols, &row_size) < 0)
		return 0;
	void *tmp = malloc(SPA_PACK_ROWS * row_size);
	if (!tmp)
		return -ENOMEM;
	spa_pack_q4_0_x8((void *)(uintptr_t)t->data, row_size, t->rows, tmp);
	free(tmp);
	t->packed = 1;
	return 1;
}

/* ---- matvec / matmul ------------------------------------------------------------------ */

/* Activations quantized for the integer dots live on the calling thread's stack, 80 KiB: one
 * vector of up to 64 Ki elements, or a batch in sub-batches that fit. Longer rows take the
 * dots that quantize x themselves, row by row (the same bits, only slower). */
#define XQ_MAX_BLOCKS 2048

/* A thread's share of a matrix-vector product's rows: front << 32 | back, rows [front, back)
 * not taken yet (see take_rows). */
#define SHARE_MAX_THREADS 32
struct row_share {
	_Alignas(64) atomic_uint_fast64_t v;
};

struct mm_job {
	spa_dot_fn dot;
	spa_dot_q8x_fn dot_q8x; /* non-NULL: rows times xq, else rows times x */
	spa_dot_rows_fn dot_rows;         /* optional, with dot */
	spa_dot_q8x_rows_fn dot_q8x_rows; /* optional, with dot_q8x */
	spa_dot_q8x_packed_fn packed;     /* a packed matrix: its kernel, with xq */
	spa_dot_q8x_rows8_fn dot_q8x_rows8; /* optional, with dot_q8x on file rows */
	spa_gemm_fn gemm;                 /* optional (matmul), with dot */
	spa_gemm_q8x_fn gemm_q8x;         /* optional (matmul), with dot_q8x or packed */
	unsigned group;                   /* rows are taken in multiples of this */
	const uint8_t *w;
	size_t row_size;
	uint64_t rows;
	uint64_t cols;
	const float *x;                 /* [n][cols] */
	const struct spa_block_q8x *xq; /* [n][cols / 32] */
	float *y;                       /* [n][rows] */
	uint32_t n;
	/* matvec (take_rows): every thread's share, or (more threads than SHARE_MAX_THREADS,
	 * more rows than 32 bits) the first row no thread has taken */
	bool shared;
	uint64_t chunk; /* rows a thread takes from its own share at a time */
	struct row_share share[SHARE_MAX_THREADS];
	atomic_uint_fast64_t next;
};

/* Contiguous share [*r0, *r1) of the rows for thread ith of nth, in whole groups of g rows
 * (the last group may be short). */
static void split_rows(uint64_t rows, unsigned g, int ith, int nth, uint64_t *r0, uint64_t *r1)
{
	const uint64_t units = (rows + g - 1) / g;
	uint64_t q = units / (uint64_t)nth, r = units % (uint64_t)nth;
	uint64_t i = (uint64_t)ith;
	uint64_t u0 = q * i + (i < r ? i : r), u1 = u0 + q + (i < r ? 1 : 0);
	*r0 = u0 * g < rows ? u0 * g : rows;
	*r1 = u1 * g < rows ? u1 * g : rows;
}

/* y element (vector b, row r): one dot call, whichever the thread or the batch. */
static inline float row_dot(const struct mm_job *j, uint32_t b, uint64_t r)
{
	const uint8_t *w = j->w + r * j->row_size;
	if (j->dot_q8x)
		return j->dot_q8x(w, j->xq + (uint64_t)b * (j->cols / SPA_QK8X), j->cols);
	return j->dot(w, j->x + (uint64_t)b * j->cols, j->cols);
}

/* y elements [r0, r1) of vector b, each with the bits of row_dot: a packed matrix a group per
 * call (r0 and r1 on group boundaries); otherwise SPA_DOT_ROWS8, then SPA_DOT_ROWS rows per call
 * where the variant has such kernels, the rest one row per call. */
static void rows_dot(const struct mm_job *j, uint32_t b, uint64_t r0, uint64_t r1, float *y)
{
	const struct spa_block_q8x *xq = j->dot_q8x ? j->xq + (uint64_t)b * (j->cols / SPA_QK8X)
						    : NULL;
	const float *x = j->x + (uint64_t)b * j->cols;
	uint64_t r = r0;
	if (j->packed) {
		for (; r + SPA_PACK_ROWS <= r1; r += SPA_PACK_ROWS)
			j->packed(j->w + r * j->row_size, xq, j->cols, y + r);
		return;
	}
	if (j->dot_q8x_rows8)
		for (; r + SPA_DOT_ROWS8 <= r1; r += SPA_DOT_ROWS8)
			j->dot_q8x_rows8(j->w + r * j->row_size, j->row_size, xq, j->cols, y + r);
	if (j->dot_q8x ? j->dot_q8x_rows != NULL : j->dot_rows != NULL) {
		for (; r + SPA_DOT_ROWS <= r1; r += SPA_DOT_ROWS) {
			const uint8_t *w = j->w + r * j->row_size;
			if (j->dot_q8x)
				j->dot_q8x_rows(w, j->row_size, xq, j->cols, y + r, SPA_DOT_ROWS);
			else
				j->dot_rows(w, j->row_size, x, j->cols, y + r, SPA_DOT_ROWS);
		}
	}
	for (; r < r1; r++)
		y[r] = row_dot(j, b, r);
}

/* The rows of a matrix-vector product, split for the pool (take_rows): each thread owns a
 * contiguous share, in whole groups of the job's kernel, and takes it from its front in chunks
 * of about SHARE_CHUNK_BYTES: one sequential stream per thread, which the hardware prefetcher
 * and the kernels' software prefetch follow across its chunks. A thread done with its share
 * takes ROWS_CHUNK_MIN rows at a time from the back of another's, so one that starts late
 * (woken after the caller began) or is preempted on a shared machine holds the others up for
 * a chunk at most. Guided self-scheduling from one counter (a shrinking part of what was left,
 * still the fallback: more threads than SHARE_MAX_THREADS) gave each thread a new stream per
 * chunk: default-shape Q4_0 on 2 threads decoded at 70 % of the machine's bandwidth against
 * 77 % with shares (bench/decode, alternated). Which thread computes a row does not change its
 * bits (each row has the single-row dot's bits). Return false when no rows are left. */
#define ROWS_CHUNK_MIN 16
#define SHARE_CHUNK_BYTES (64u << 10)
_Static_assert(ROWS_CHUNK_MIN % SPA_DOT_ROWS == 0 && ROWS_CHUNK_MIN % SPA_DOT_ROWS8 == 0 &&
		       ROWS_CHUNK_MIN % SPA_PACK_ROWS == 0,
	       "chunks of whole groups");

static bool next_rows(atomic_uint_fast64_t *next, uint64_t rows, unsigned group, int nth,
		      uint64_t *r0, uint64_t *r1)
{
	uint64_t r = atomic_load_explicit(next, memory_order_relaxed);
	for (;;) {
		if (r >= rows)
			return false;
		uint64_t take = (rows - r) / (2 * (uint64_t)nth);
		take = (take + group - 1) / group * group;
		if (take < ROWS_CHUNK_MIN)
			take = ROWS_CHUNK_MIN;
		if (take > rows - r)
			take = rows - r;
		if (atomic_compare_exchange_weak_explicit(next, &r, r + take, memory_order_relaxed,
							  memory_order_relaxed)) {
			*r0 = r;
			*r1 = r + take;
			return true;
		}
	}
}

/* Each of nth threads' share of j's rows (before the job runs). */
static void shares_init(struct mm_job *j, int nth)
{
	const uint64_t g = j->group, c = j->row_size ? SHARE_CHUNK_BYTES / j->row_size : 0;
	j->shared = nth <= SHARE_MAX_THREADS && j->rows <= UINT32_MAX;
	j->chunk = c < g ? g : c / g * g;
	atomic_store_explicit(&j->next, 0, memory_order_relaxed);
	for (int t = 0; j->shared && t < nth; t++) {
		uint64_t a, b;
		split_rows(j->rows, j->group, t, nth, &a, &b);
		atomic_store_explicit(&j->share[t].v, a << 32 | b, memory_order_relaxed);
	}
}

static bool take_rows(struct mm_job *j, int ith, int nth, uint64_t *r0, uint64_t *r1)
{
	if (!j->shared)
		return next_rows(&j->next, j->rows, j->group, nth, r0, r1);
	const uint64_t g = j->group, chunk = j->chunk;
	/* from the front of its own share */
	atomic_uint_fast64_t *own = &j->share[ith].v;
	uint64_t v = atomic_load_explicit(own, memory_order_relaxed);
	for (;;) {
		const uint64_t f = v >> 32, b = (uint32_t)v;
		if (f >= b)
			break;
		const uint64_t e = b - f > chunk ? f + chunk : b;
		if (atomic_compare_exchange_weak_explicit(own, &v, e << 32 | b, memory_order_relaxed,
							  memory_order_relaxed)) {
			*r0 = f;
			*r1 = e;
			return true;
		}
	}
	/* then from the back of the others' (a back that is not the matrix's last row is a
	 * multiple of the group, and so is every cut made here) */
	for (int d = 1; d < nth; d++) {
		atomic_uint_fast64_t *other = &j->share[(ith + d) % nth].v;
		v = atomic_load_explicit(other, memory_order_relaxed);
		for (;;) {
			const uint64_t f = v >> 32, b = (uint32_t)v;
			if (f >= b)
				break;
			uint64_t c = b - f > ROWS_CHUNK_MIN ? (b - ROWS_CHUNK_MIN) / g * g : f;
			c = c < f ? f : c;
			if (atomic_compare_exchange_weak_explicit(other, &v, f << 32 | c,
								  memory_order_relaxed,
								  memory_order_relaxed)) {
				*r0 = c;
				*r1 = b;
				return true;
			}
		}
	}
	return false;
}

static void matvec_worker(void *ctx, int ith, int nth)
{
	struct mm_job *j = ctx;
	uint64_t r0, r1;

	while (take_rows(j, ith, nth, &r0, &r1))
		rows_dot(j, 0, r0, r1, j->y);
}

/* The rows of a batch are taken as a matrix-vector product's (take_rows), a chunk of about
 * MM_CHUNK_BYTES of weights at a time: the chunk stays in L2 while every vector of the batch
 * goes past it, in the variant's matrix kernel where it has one (each weight block read and
 * unpacked once per register tile of vectors), else in its rows kernels vector by vector.
 * Each y element has the single-row dot's bits either way, whichever thread computes it. */
#define MM_CHUNK_BYTES (128u << 10)

static void matmul_worker(void *ctx, int ith, int nth)
{
	struct mm_job *j = ctx;
	uint64_t r0, r1;

	while (take_rows(j, ith, nth, &r0, &r1)) {
		const uint8_t *w = j->w + r0 * j->row_size;
		float *y = j->y + r0;
		if (j->gemm_q8x)
			j->gemm_q8x(w, j->row_size, r1 - r0, j->xq, j->cols, j->n, y, j->rows);
		else if (j->gemm && !j->dot_q8x)
			j->gemm(w, j->row_size, r1 - r0, j->x, j->cols, j->n, y, j->rows);
		else
			for (uint32_t b = 0; b < j->n; b++)
				rows_dot(j, b, r0, r1, j->y + (uint64_t)b * j->rows);
	}
}

static void mm_dispatch(struct spa_pool *pool, struct mm_job *j)
{
	shares_init(j, spa_pool_n_threads(pool));
	if (j->n == 1 || j->rows == 0) {
		spa_pool_run(pool, matvec_worker, j);
		return;
	}
	const uint64_t c = j->row_size ? MM_CHUNK_BYTES / j->row_size : j->group;
	j->chunk = c < j->group ? j->group : c / j->group * j->group;
	spa_pool_run(pool, matmul_worker, j);
}

/* The job of W times x (n vectors) with the variant's float-x kernels; the integer-dot ones
 * are set by the caller once x is quantized. */
static struct mm_job mm_job_of(const struct spa_kernels_ops *ops, const struct spa_tensor *w,
			       uint64_t row_size, const float *x, float *y, uint32_t n)
{
	return (struct mm_job){
		.dot = ops->dot[w->type],
		.dot_rows = ops->dot_rows[w->type],
		.gemm = ops->gemm[w->type],
		.w = w->data,
		.row_size = row_size,
		.rows = w->rows,
		.cols = w->cols,
		.x = x,
		.y = y,
		.n = n,
		.group = SPA_DOT_ROWS,
	};
}

/* Whether W's type has the quantized-x kernels, x's columns fit xq, and there are rows: the
 * products then run on x quantized once. A packed matrix always passes (spa_tensor_pack). */
static bool uses_xq(const struct spa_kernels_ops *ops, const struct spa_tensor *w)
{
	const uint64_t nbx = w->cols / SPA_QK8X;
	return ops->dot_q8x[w->type] && nbx > 0 && nbx <= XQ_MAX_BLOCKS && w->rows > 0;
}

/* Set the integer-dot kernels of j, its activations at xq. */
static void set_xq(const struct spa_kernels_ops *ops, const struct spa_tensor *w,
		   struct mm_job *j, const struct spa_block_q8x *xq)
{
	j->dot_q8x = ops->dot_q8x[w->type];
	j->dot_q8x_rows = ops->dot_q8x_rows[w->type];
	j->gemm_q8x = w->packed ? ops->gemm_q8x_packed[w->type] : ops->gemm_q8x[w->type];
	j->xq = xq;
	if (ops->dot_q8x_rows8[w->type] && !w->packed) { /* chunks of whole 8-row calls */
		j->dot_q8x_rows8 = ops->dot_q8x_rows8[w->type];
		j->group = SPA_DOT_ROWS8;
	}
	if (w->packed) { /* every variant has the packed kernels of what spa_tensor_pack packs */
		j->packed = ops->dot_q8x_packed[w->type];
		j->group = SPA_PACK_ROWS;
		assert(j->packed);
	}
}

/* W times x (n vectors). xq_given: x already quantized (n == 1, spa_matvec_x), else NULL. */
static void mm_run(const struct spa_kernels_ops *ops, struct spa_pool *pool,
		   const struct spa_tensor *w, const float *x, const struct spa_block_q8x *xq_given,
		   float *y, uint32_t n)
{
	uint64_t row_size = 0;
	if (check_type(w->type, w->cols, y, w->rows * (uint64_t)n) < 0 ||
	    check_packed(w, y, w->rows * (uint64_t)n) < 0 ||
	    spa_dtype_row_size(w->type, w->cols, &row_size) < 0)
		return;
	struct mm_job j = mm_job_of(ops, w, row_size, x, y, n);
	const uint64_t nbx = w->cols / SPA_QK8X;
	if (!uses_xq(ops, w)) {
		mm_dispatch(pool, &j);
		return;
	}
	if (xq_given) {
		set_xq(ops, w, &j, xq_given);
		mm_dispatch(pool, &j);
		return;
	}
	/* Quantize x once per call, before the rows are split across the pool: every thread
	 * reads the same blocks, so the bits do not depend on the thread count, and each
	 * element is dot_q8x(row, quantize_x(x)), the bits of dot(row, x). */
	struct spa_block_q8x xq[XQ_MAX_BLOCKS];
	const uint32_t per = (uint32_t)(XQ_MAX_BLOCKS / nbx);
	set_xq(ops, w, &j, xq);
	for (uint32_t b0 = 0; b0 < n; b0 += per) {
		const uint32_t nv = n - b0 < per ? n - b0 : per;
		for (uint32_t v = 0; v < nv; v++)
			ops->quantize_x(x + (uint64_t)(b0 + v) * w->cols, xq + v * nbx, w->cols,
					spa_xq_group(w->type));
		j.x = x + (uint64_t)b0 * w->cols;
		j.y = y + (uint64_t)b0 * w->rows;
		j.n = nv;
		mm_dispatch(pool, &j);
	}
}

/* ---- several matrices in one pool job (decode: q, k, v and a side tap; gate and up) -----
 * Each thread takes its share of every item's rows, so the pool wakes once instead of once
 * per matrix; with swiglu, gate and up have the same rows, so each thread's share of gate and
 * of up is the same range and it applies the SwiGLU to it too. */
#define XQ_DISTINCT 2 /* distinct quantized inputs per job (80 KiB of stack each) */

struct multi_job {
	struct mm_job j[SPA_MATVEC_MAX_ITEMS];
	const float *b[SPA_MATVEC_MAX_ITEMS];
	unsigned n;
	float *swiglu_out; /* non-NULL: out = swiglu(y_0, y_1) */
	spa_swiglu_fn swiglu;
};

static void multi_worker(void *ctx, int ith, int nth)
{
	struct multi_job *m = ctx;
	uint64_t r0 = 0, r1 = 0;
	if (m->swiglu_out) { /* gate and up of one chunk together, then its SwiGLU */
		struct mm_job *g = &m->j[0], *u = &m->j[1];
		while (take_rows(g, ith, nth, &r0, &r1)) {
			rows_dot(g, 0, r0, r1, g->y);
			rows_dot(u, 0, r0, r1, u->y);
			m->swiglu(m->swiglu_out + r0, g->y + r0, u->y + r0, (uint32_t)(r1 - r0));
		}
		return;
	}
	for (unsigned k = 0; k < m->n; k++) {
		struct mm_job *j = &m->j[k];
		while (take_rows(j, ith, nth, &r0, &r1)) {
			rows_dot(j, 0, r0, r1, j->y);
			if (m->b[k]) /* spa_matvec_f32's bias: after the dot */
				for (uint64_t r = r0; r < r1; r++)
					j->y[r] = j->y[r] + m->b[k][r];
		}
	}
}

static void multi_one_by_one(const struct spa_kernels_ops *ops, struct spa_pool *pool,
			     unsigned n, const struct spa_matvec_item *it)
{
	for (unsigned k = 0; k < n; k++) {
		mm_run(ops, pool, it[k].w, it[k].x, NULL, it[k].y, 1);
		if (it[k].b)
			for (uint64_t r = 0; r < it[k].w->rows; r++)
				it[k].y[r] = it[k].y[r] + it[k].b[r];
	}
}

static void multi_run(struct spa_pool *pool, unsigned n, const struct spa_matvec_item *it,
		      float *swiglu_out)
{
	const struct spa_kernels_ops *ops = spa_kernels_ops();
	struct multi_job m = { .n = n, .swiglu_out = swiglu_out, .swiglu = ops->swiglu };
	struct spa_block_q8x xq[XQ_DISTINCT][XQ_MAX_BLOCKS];
	const float *xq_of[XQ_DISTINCT] = { NULL };
	uint64_t xq_cols[XQ_DISTINCT] = { 0 };
	size_t xq_group[XQ_DISTINCT] = { 0 };
	unsigned n_xq = 0;
	if (n == 0 || n > SPA_MATVEC_MAX_ITEMS) {
		assert(!"spa_matvec_items: 1 to SPA_MATVEC_MAX_ITEMS items");
		return;
	}
	for (unsigned k = 0; k < n; k++) {
		const struct spa_tensor *w = it[k].w;
		uint64_t row_size = 0;
		if (check_type(w->type, w->cols, it[k].y, w->rows) < 0 ||
		    check_packed(w, it[k].y, w->rows) < 0 ||
		    spa_dtype_row_size(w->type, w->cols, &row_size) < 0)
			return;
		m.b[k] = it[k].b;
		m.j[k] = mm_job_of(ops, w, row_size, it[k].x, it[k].y, 1);
		if (!uses_xq(ops, w))
			continue;
		/* quantize each distinct x once (the bits do not depend on who reads it) */
		const size_t group = spa_xq_group(w->type);
		unsigned q = 0;
		while (q < n_xq && !(xq_of[q] == it[k].x && xq_cols[q] == w->cols &&
				     xq_group[q] == group))
			q++;
		if (q == n_xq) {
			if (n_xq == XQ_DISTINCT) {
				multi_one_by_one(ops, pool, n, it);
				if (swiglu_out)
					ops->swiglu(swiglu_out, it[0].y, it[1].y,
						    (uint32_t)it[0].w->rows);
				return;
			}
			ops->quantize_x(it[k].x, xq[q], w->cols, group);
			xq_of[q] = it[k].x;
			xq_cols[q] = w->cols;
			xq_group[q] = group;
			n_xq++;
		}
		set_xq(ops, w, &m.j[k], xq[q]);
	}
	if (swiglu_out) /* one chunking for both: whole groups of either */
		m.j[0].group = m.j[1].group = m.j[0].group > m.j[1].group ? m.j[0].group
									    : m.j[1].group;
	for (unsigned k = 0; k < n; k++)
		shares_init(&m.j[k], spa_pool_n_threads(pool));
	spa_pool_run(pool, multi_worker, &m);
}

void spa_matvec_items(struct spa_pool *pool, unsigned n, const struct spa_matvec_item *items)
{
	multi_run(pool, n, items, NULL);
}

void spa_matvec_swiglu(struct spa_pool *pool, const struct spa_tensor *w_gate,
		       const struct spa_tensor *w_up, const float *x, float *out, float *up)
{
	const struct spa_matvec_item it[2] = { { w_gate, x, NULL, out }, { w_up, x, NULL, up } };
	if (w_gate->rows != w_up->rows) {
		assert(!"spa_matvec_swiglu: gate and up have different row counts");
		nan_out(out, w_gate->rows);
		return;
	}
	multi_run(pool, 2, it, out);
}

void spa_matvec_ops(const struct spa_kernels_ops *ops, struct spa_pool *pool,
		    const struct spa_tensor *w, const float *x, float *y)
{
	mm_run(ops, pool, w, x, NULL, y, 1);
}

void spa_matmul_ops(const struct spa_kernels_ops *ops, struct spa_pool *pool,
		    const struct spa_tensor *w, const float *x, float *y, uint32_t n)
{
	if (n == 0)
		return;
	mm_run(ops, pool, w, x, NULL, y, n);
}

void spa_matvec(struct spa_pool *pool, const struct spa_tensor *w, const float *x, float *y)
{
	mm_run(spa_kernels_ops(), pool, w, x, NULL, y, 1);
}

_Static_assert(SPA_MATVEC_X_MAX_COLS / SPA_QK8X == XQ_MAX_BLOCKS &&
		       sizeof(struct spa_block_q8x) == 40,
	       "spa_matvec_x holds XQ_MAX_BLOCKS activation blocks");

void spa_matvec_x_prepare(struct spa_matvec_x *px, const float *x, uint64_t cols,
			  enum spa_dtype type)
{
	const size_t group = (unsigned)type < SPA_TYPE_COUNT ? spa_xq_group(type) : SPA_QK8X;
	px->x = x;
	px->cols = cols;
	px->group = group;
	/* mm_run's condition for quantizing, less the weight type's */
	px->quantized = cols % group == 0 && cols / SPA_QK8X > 0 &&
			cols / SPA_QK8X <= XQ_MAX_BLOCKS;
	if (px->quantized)
		spa_kernels_ops()->quantize_x(x, (struct spa_block_q8x *)(void *)px->xq, cols,
					      group);
}

void spa_matvec_x(struct spa_pool *pool, const struct spa_tensor *w, const struct spa_matvec_x *px,
		  float *y)
{
	if (w->cols != px->cols || (px->quantized && (unsigned)w->type < SPA_TYPE_COUNT &&
				    spa_kernels_ops()->dot_q8x[w->type] &&
				    spa_xq_group(w->type) != px->group)) {
		assert(!"spa_matvec_x: the matrix's columns or type are not the prepared x's");
		nan_out(y, w->rows);
		return;
	}
	mm_run(spa_kernels_ops(), pool, w, px->x,
	       px->quantized ? (const struct spa_block_q8x *)(const void *)px->xq : NULL, y, 1);
}

void spa_matmul(struct spa_pool *pool, const struct spa_tensor *w, const float *x, float *y,
		uint32_t n)
{
	spa_matmul_ops(spa_kernels_ops(), pool, w, x, y, n);
}

/* y[k] = the variant's dot of row k (type t, row_size bytes apart) with x, for k < rows: the
 * rows kernel on whole groups of SPA_DOT_ROWS, the single-row dot on the rest (the same
 * bits). */
static void float_rows(const struct spa_kernels_ops *ops, enum spa_dtype t, const void *w,
		       size_t row_size, const float *x, uint32_t n, float *y, uint32_t rows)
{
	spa_dot_rows_fn dot_rows = ops->dot_rows[t];
	const uint8_t *p = w;
	uint32_t r = 0;
	if (dot_rows)
		for (; r + SPA_DOT_ROWS <= rows; r += SPA_DOT_ROWS)
			dot_rows(p + r * row_size, row_size, x, n, y + r, SPA_DOT_ROWS);
	for (; r < rows; r++)
		y[r] = ops->dot[t](p + r * row_size, x, n);
}

static void f32_rows(const struct spa_kernels_ops *ops, const float *w, size_t stride,
		     const float *x, uint32_t n, float *y, uint32_t rows)
{
	float_rows(ops, SPA_TYPE_F32, w, stride * sizeof(float), x, n, y, rows);
}

/* y = W x (+ b), then relu when asked: the bias and the relu of each group of rows as it is
 * produced (still in registers' reach), not in passes over y afterwards. */
static void matvec_f32_run(const struct spa_kernels_ops *ops, const float *w, const float *b,
			   const float *x, float *y, uint32_t rows, uint32_t cols, bool relu)
{
	for (uint32_t r0 = 0; r0 < rows; r0 += SPA_DOT_ROWS) {
		const uint32_t n = rows - r0 < SPA_DOT_ROWS ? rows - r0 : SPA_DOT_ROWS;
		f32_rows(ops, w + (size_t)r0 * cols, cols, x, cols, y + r0, n);
		for (uint32_t r = r0; r < r0 + n; r++) {
			const float v = b ? y[r] + b[r] : y[r];
			y[r] = relu && !(v > 0.0f) ? 0.0f : v;
		}
	}
}

void spa_matvec_f32_ops(const struct spa_kernels_ops *ops, const float *w, const float *b,
			const float *x, float *y, uint32_t rows, uint32_t cols)
{
	matvec_f32_run(ops, w, b, x, y, rows, cols, false);
}

void spa_matvec_f32_relu(const float *w, const float *b, const float *x, float *y, uint32_t rows,
			 uint32_t cols)
{
	matvec_f32_run(spa_kernels_ops(), w, b, x, y, rows, cols, true);
}

void spa_matvec_f32(const float *w, const float *b, const float *x, float *y, uint32_t rows,
		    uint32_t cols)
{
	spa_matvec_f32_ops(spa_kernels_ops(), w, b, x, y, rows, cols);
}

float spa_dot_f32(const float *a, const float *b, uint32_t n)
{
	return spa_kernels_ops()->dot[SPA_TYPE_F32](a, b, n);
}

void spa_dot_f32_rows(const float *w, size_t stride, const float *x, uint32_t n, float *y,
		      uint32_t rows)
{
	f32_rows(spa_kernels_ops(), w, stride, x, n, y, rows);
}

/* ---- element-wise kernels (one implementation: their order does not depend on the ISA) -- */

void spa_rmsnorm_ops(const struct spa_kernels_ops *ops, float *out, const float *x,
		     const float *weight, uint32_t n, float eps)
{
	if (n == 0)
		return;
	float ss = ops->dot[SPA_TYPE_F32](x, x, n);
	float scale = 1.0f / sqrtf(ss / (float)n + eps);
	for (uint32_t i = 0; i < n; i++)
		out[i] = x[i] * scale * weight[i];
}

void spa_rmsnorm(float *out, const float *x, const float *weight, uint32_t n, float eps)
{
	spa_rmsnorm_ops(spa_kernels_ops(), out, x, weight, n, eps);
}

/* The rotary angle of pair i / 2 at pos, as cos and sin: in double from libm so that every
 * backend can reproduce them closely. spa_rope and spa_rope_table both use it (their bits). */
static inline void rope_angle(uint32_t i, uint32_t head_dim, uint32_t pos, float base, float *c,
			      float *s)
{
	double freq = pow((double)base, -(double)i / (double)head_dim);
	double ang = (double)pos * freq;
	*c = (float)cos(ang);
	*s = (float)sin(ang);
}

void spa_rope(float *x, uint32_t n_heads, uint32_t head_dim, uint32_t pos, float base)
{
	/* the per-pair loop outside, so that each cos/sin is computed once for all heads */
	for (uint32_t i = 0; i + 1 < head_dim; i += 2) {
		float c, s;
		rope_angle(i, head_dim, pos, base, &c, &s);
		for (uint32_t h = 0; h < n_heads; h++) {
			float *p = x + (uint64_t)h * head_dim + i;
			float a = p[0], b = p[1];
			p[0] = a * c - b * s;
			p[1] = a * s + b * c;
		}
	}
}

void spa_rope_table(float *cs, uint32_t head_dim, uint32_t pos, float base)
{
	for (uint32_t i = 0; i + 1 < head_dim; i += 2)
		rope_angle(i, head_dim, pos, base, &cs[i], &cs[i + 1]);
}

void spa_rope_apply(float *x, uint32_t n_heads, uint32_t head_dim, const float *cs)
{
	for (uint32_t h = 0; h < n_heads; h++) {
		float *p = x + (uint64_t)h * head_dim;
		for (uint32_t i = 0; i + 1 < head_dim; i += 2) {
			const float c = cs[i], s = cs[i + 1], a = p[i], b = p[i + 1];
			p[i] = a * c - b * s;
			p[i + 1] = a * s + b * c;
		}
	}
}

void spa_rope_table_ext(float *cs, const struct spa_rope_cfg *cfg, uint32_t pos)
{
	const bool plain = !cfg->freq_factors && cfg->freq_scale == 1.0f &&
			   cfg->attn_factor == 1.0f;
	for (uint32_t i = 0; i + 1 < cfg->n_rot; i += 2) {
		if (plain) { /* llama's default: spa_rope_table's bits */
			rope_angle(i, cfg->n_rot, pos, cfg->base, &cs[i], &cs[i + 1]);
			continue;
		}
		/* ggml_rope_ext's angle (theta / factor * freq_scale), in double as rope_angle */
		double ang = (double)pos * pow((double)cfg->base, -(double)i / (double)cfg->n_rot);
		if (cfg->freq_factors)
			ang /= (double)cfg->freq_factors[i / 2];
		ang *= (double)cfg->freq_scale;
		cs[i] = (float)cos(ang) * cfg->attn_factor;
		cs[i + 1] = (float)sin(ang) * cfg->attn_factor;
	}
}

void spa_rope_apply_ext(float *x, uint32_t n_heads, const struct spa_rope_cfg *cfg,
			const float *cs)
{
	const uint32_t hd = cfg->head_dim, n_rot = cfg->n_rot;
	if (!cfg->neox) {
		for (uint32_t h = 0; h < n_heads; h++) { /* spa_rope_apply's loop, to n_rot */
			float *p = x + (uint64_t)h * hd;
			for (uint32_t i = 0; i + 1 < n_rot; i += 2) {
				const float c = cs[i], s = cs[i + 1], a = p[i], b = p[i + 1];
				p[i] = a * c - b * s;
				p[i + 1] = a * s + b * c;
			}
		}
		return;
	}
	const uint32_t half = n_rot / 2;
	for (uint32_t h = 0; h < n_heads; h++) {
		float *p = x + (uint64_t)h * hd;
		for (uint32_t k = 0; k < half; k++) {
			const float c = cs[2 * k], s = cs[2 * k + 1], a = p[k], b = p[k + half];
			p[k] = a * c - b * s;
			p[k + half] = a * s + b * c;
		}
	}
}

void spa_softmax(float *x, uint32_t n)
{
	if (n == 0)
		return;
	float max = x[0];
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > max)
			max = x[i];
	if (max == -INFINITY) { /* all masked out: uniform rather than NaN */
		for (uint32_t i = 0; i < n; i++)
			x[i] = 1.0f / (float)n;
		return;
	}
	/* the sum in double: a 128k vocabulary still sums to 1 within float precision */
	const double sum = spa_kernels_ops()->exp_shift(x, max, n);
	float inv = (float)(1.0 / sum);
	for (uint32_t i = 0; i < n; i++)
		x[i] *= inv;
}

void spa_swiglu(float *out, const float *gate, const float *up, uint32_t n)
{
	spa_kernels_ops()->swiglu(out, gate, up, n);
}

void spa_weighted_sum(float *out, const float *a, const float *v, size_t stride, uint32_t rows,
		      uint32_t n)
{
	spa_kernels_ops()->wsum(out, a, v, stride, rows, n);
}

void spa_weighted_sum_f16(float *out, const float *a, const uint16_t *v, size_t stride,
			  uint32_t rows, uint32_t n)
{
	spa_kernels_ops()->wsum_f16(out, a, v, stride, rows, n);
}

void spa_dot_f16_rows(const uint16_t *w, size_t stride, const float *x, uint32_t n, float *y,
		      uint32_t rows)
{
	float_rows(spa_kernels_ops(), SPA_TYPE_F16, w, stride * sizeof(uint16_t), x, n, y, rows);
}

void spa_fp16_row(uint16_t *dst, const float *src, size_t n)
{
	spa_kernels_ops()->to_f16(dst, src, n);
}

uint32_t spa_argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;
	while (best < n && isnan(x[best])) /* NaNs never win, so never start from one */
		best++;
	if (best >= n)
		return 0;
	for (uint32_t i = best + 1; i < n; i++)
		if (x[i] > x[best]) /* strict: the lowest index wins ties */
			best = i;
	return best;
}
