/* spa: CPU kernel internals (kernels/cpu/), shared by kernels.c, kernels_avx2.c and the tests.
 * Not installed, not part of the library's contract.
 *
 * A kernel variant is a table of the functions whose summation order depends on the
 * instruction set (the dot products) plus the row converters. spa_matvec & co. take their
 * functions from the variant chosen once per process (spa_kernels_ops()); the *_ops entry
 * points below let the tests run every variant the CPU can execute side by side.
 *
 * To add a weight format (Q8_0, Q4_0, ...): write its dot and dequant_row in kernels.c (and,
 * if worth it, in kernels_avx2.c), fill the slots of the tables and list it in
 * spa_kernels_supports(). Everything else (matvec, matmul, threading) is type-independent. */
#ifndef SPA_KERNELS_IMPL_H
#define SPA_KERNELS_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "spa/kernels.h"

/* Dot product of one weight row (n elements of the slot's type) with n floats. */
typedef float (*spa_dot_fn)(const void *w, const float *x, size_t n);
/* Convert n elements of the slot's type to float. */
typedef void (*spa_dequant_fn)(const void *src, float *dst, size_t n);

struct spa_kernels_ops {
	const char *name;
	spa_dot_fn dot[SPA_TYPE_COUNT];             /* NULL: type not supported */
	spa_dequant_fn dequant_row[SPA_TYPE_COUNT]; /* NULL: type not supported */
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
