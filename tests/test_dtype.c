/* Element types: the table of block sizes and names against ggml's, the parser, and the row
 * sizes with their refusals. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "spa/spa.h"

Test(dtype, tables_match_ggml)
{
	/* ggml's (blck_size, type_size) for ids 0..30; 0 where ggml has no such type. */
	static const uint32_t want[31][2] = {
		{1, 4}, {1, 2}, {32, 18}, {32, 20}, {0, 0}, {0, 0}, {32, 22}, {32, 24}, {32, 34},
		{32, 36}, {256, 84}, {256, 110}, {256, 144}, {256, 176}, {256, 210}, {256, 292},
		{256, 66}, {256, 74}, {256, 98}, {256, 50}, {32, 18}, {256, 110}, {256, 82},
		{256, 136}, {1, 1}, {1, 2}, {1, 4}, {1, 8}, {1, 8}, {256, 56}, {1, 2},
	};
	for (int t = 0; t < 31; t++) {
		cr_assert_eq(spa_dtype_block_elems((enum spa_dtype)t), want[t][0], "type %d", t);
		cr_assert_eq(spa_dtype_block_size((enum spa_dtype)t), want[t][1], "type %d", t);
		cr_assert_eq(spa_dtype_name((enum spa_dtype)t) != NULL, want[t][0] != 0, "type %d", t);
		if (want[t][0])
			cr_assert_eq(spa_dtype_from_name(spa_dtype_name((enum spa_dtype)t)), t);
	}
	for (int t = 31; t < 300; t += 7) {
		cr_assert_eq(spa_dtype_block_elems((enum spa_dtype)t), 0);
		cr_assert_eq(spa_dtype_block_size((enum spa_dtype)t), 0);
		cr_assert_null(spa_dtype_name((enum spa_dtype)t));
	}
	cr_assert_eq(spa_dtype_block_elems((enum spa_dtype)-1), 0);
	cr_assert_str_eq(spa_dtype_name(SPA_TYPE_Q4_K), "q4_K");
	cr_assert_eq(spa_dtype_from_name("F16"), SPA_TYPE_F16);
	cr_assert_eq(spa_dtype_from_name("Q8_0"), SPA_TYPE_Q8_0);
	cr_assert_eq(spa_dtype_from_name("bf16"), SPA_TYPE_BF16);
	cr_assert_eq(spa_dtype_from_name("q4_2"), -SPA_EUSAGE);
	cr_assert_eq(spa_dtype_from_name(""), -SPA_EUSAGE);
	cr_assert_eq(spa_dtype_from_name(NULL), -SPA_EUSAGE);

	uint64_t sz = 0;
	cr_assert_eq(spa_dtype_row_size(SPA_TYPE_Q8_0, 4096, &sz), 0);
	cr_assert_eq(sz, 4096 / 32 * 34);
	cr_assert_eq(spa_dtype_row_size(SPA_TYPE_Q6_K, 512, &sz), 0);
	cr_assert_eq(sz, 2 * 210);
	cr_assert_eq(spa_dtype_row_size(SPA_TYPE_F32, 37, &sz), 0);
	cr_assert_eq(sz, 148);
	cr_assert_eq(spa_dtype_row_size(SPA_TYPE_Q4_0, 33, &sz), -SPA_EFORMAT);
	cr_assert_eq(spa_dtype_row_size(SPA_TYPE_F64, UINT64_MAX / 4, &sz), -SPA_EFORMAT);
	cr_assert_eq(spa_dtype_row_size((enum spa_dtype)4, 32, &sz), -SPA_EUNSUPPORTED);
}
