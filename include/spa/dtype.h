/* spa: tensor element types (runtime/dtype.c): ggml's numbering and block sizes, shared by
 * the GGUF reader and writer, the kernels and the loaders. The table is fixed at build time:
 * every function here is thread-safe, allocates nothing and may be called on the hot path. */
#ifndef SPA_DTYPE_H
#define SPA_DTYPE_H

#include <stdint.h>

#include "error.h"

/* Tensor element types: ggml's numbering, so files interoperate with other GGUF tools. */
enum spa_dtype {
	SPA_TYPE_F32 = 0,
	SPA_TYPE_F16 = 1,
	SPA_TYPE_Q4_0 = 2,
	SPA_TYPE_Q4_1 = 3,
	SPA_TYPE_Q5_0 = 6,
	SPA_TYPE_Q5_1 = 7,
	SPA_TYPE_Q8_0 = 8,
	SPA_TYPE_Q8_1 = 9,
	SPA_TYPE_Q2_K = 10,
	SPA_TYPE_Q3_K = 11,
	SPA_TYPE_Q4_K = 12,
	SPA_TYPE_Q5_K = 13,
	SPA_TYPE_Q6_K = 14,
	SPA_TYPE_Q8_K = 15,
	SPA_TYPE_I8 = 24,
	SPA_TYPE_I16 = 25,
	SPA_TYPE_I32 = 26,
	SPA_TYPE_I64 = 27,
	SPA_TYPE_F64 = 28,
	SPA_TYPE_BF16 = 30,
	SPA_TYPE_COUNT = 31
};

/* Elements per block and bytes per block of a type (1 and sizeof for plain types); 0 when the
 * type is unknown to ggml. spa_dtype_name: "f32", "q8_0", ... or NULL when unknown. */
uint32_t spa_dtype_block_elems(enum spa_dtype t);
uint32_t spa_dtype_block_size(enum spa_dtype t);
const char *spa_dtype_name(enum spa_dtype t);
/* Parse "f32", "F16", "q8_0" ...; returns the type or -SPA_EUSAGE. */
int spa_dtype_from_name(const char *name);
/* Bytes of n elements of type t into *out: -SPA_EFORMAT when n is not a multiple of the block
 * or the size overflows, -SPA_EUNSUPPORTED for an unknown type. */
int spa_dtype_row_size(enum spa_dtype t, uint64_t n, uint64_t *out);

#endif
