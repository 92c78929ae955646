/* spa: tensor element types: ggml's table of block sizes (see include/spa/dtype.h). */
#include <strings.h>

#include "spa/dtype.h"

static const struct {
	uint16_t blck;  /* elements per block */
	uint16_t size;  /* bytes per block */
	const char *name;
} dtypes[SPA_TYPE_COUNT] = {
	[0] = {1, 4, "f32"},        [1] = {1, 2, "f16"},
	[2] = {32, 18, "q4_0"},     [3] = {32, 20, "q4_1"},
	/* 4, 5: q4_2, q4_3, removed from ggml */
	[6] = {32, 22, "q5_0"},     [7] = {32, 24, "q5_1"},
	[8] = {32, 34, "q8_0"},     [9] = {32, 36, "q8_1"},
	[10] = {256, 84, "q2_K"},   [11] = {256, 110, "q3_K"},
	[12] = {256, 144, "q4_K"},  [13] = {256, 176, "q5_K"},
	[14] = {256, 210, "q6_K"},  [15] = {256, 292, "q8_K"},
	[16] = {256, 66, "iq2_xxs"}, [17] = {256, 74, "iq2_xs"},
	[18] = {256, 98, "iq3_xxs"}, [19] = {256, 50, "iq1_s"},
	[20] = {32, 18, "iq4_nl"},  [21] = {256, 110, "iq3_s"},
	[22] = {256, 82, "iq2_s"},  [23] = {256, 136, "iq4_xs"},
	[24] = {1, 1, "i8"},        [25] = {1, 2, "i16"},
	[26] = {1, 4, "i32"},       [27] = {1, 8, "i64"},
	[28] = {1, 8, "f64"},       [29] = {256, 56, "iq1_m"},
	[30] = {1, 2, "bf16"},
};

uint32_t spa_dtype_block_elems(enum spa_dtype t)
{
	return (unsigned)t < SPA_TYPE_COUNT ? dtypes[t].blck : 0;
}

uint32_t spa_dtype_block_size(enum spa_dtype t)
{
	return (unsigned)t < SPA_TYPE_COUNT ? dtypes[t].size : 0;
}

const char *spa_dtype_name(enum spa_dtype t)
{
	return (unsigned)t < SPA_TYPE_COUNT ? dtypes[t].name : NULL;
}

int spa_dtype_from_name(const char *name)
{
	if (!name)
		return -SPA_EUSAGE;
	for (int t = 0; t < SPA_TYPE_COUNT; t++)
		if (dtypes[t].name && strcasecmp(dtypes[t].name, name) == 0)
			return t;
	return -SPA_EUSAGE;
}

int spa_dtype_row_size(enum spa_dtype t, uint64_t n, uint64_t *out)
{
	uint32_t blck = spa_dtype_block_elems(t);
	if (!blck)
		return -SPA_EUNSUPPORTED;
	if (n % blck)
		return -SPA_EFORMAT;
	uint64_t size;
	if (__builtin_mul_overflow(n / blck, (uint64_t)dtypes[t].size, &size))
		return -SPA_EFORMAT;
	*out = size;
	return 0;
}
