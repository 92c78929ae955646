/* spa: CPU kernels (kernels/cpu/). Scalar references plus, where the CPU has them, AVX2/FMA/F16C
 * versions chosen at run time. All are on the hot path: no allocation, no locking.
 *
 * Determinism: every output element is produced by one thread with a fixed summation order
 * that does not depend on the thread count, so results are bit-identical across thread counts
 * and across processes on the same machine (the split-equals-local invariant relies on it). */
#ifndef SPA_KERNELS_H
#define SPA_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "pool.h"

/* A 2-D weight matrix in a GGUF type: `rows` rows of `cols` elements, each row
 * spa_dtype_row_size(type, cols) bytes, rows contiguous (GGUF ne[0] = cols, ne[1] = rows).
 * packed: 0, the rows as GGUF lays them out; 1, rearranged by spa_tensor_pack. */
struct spa_tensor {
	enum spa_dtype type;
	uint64_t cols;
	uint64_t rows;
	const void *data;
	int packed;
};

/* Rows per group of a packed matrix. */
#define SPA_PACK_ROWS 8
/* Rearrange a matrix's bytes in place into the layout its type's kernels read fastest, where
 * there is one: Q4_0 with cols <= SPA_MATVEC_X_MAX_COLS and rows a multiple of 8 (each group of
 * 8 rows has its blocks interleaved, so that one kernel call computes the 8 rows with their
 * scales in one load; the same bytes, the same size). spa_matvec, spa_matvec_x,
 * spa_matvec_items, spa_matvec_swiglu and spa_matmul give a packed matrix the bits they give
 * the unpacked one. A packed matrix's rows are no longer GGUF rows: no spa_dequant_row on them,
 * and a row range of it (data advanced by r0 rows' bytes) must start and end on a multiple of 8
 * rows. t->data must be writable. Returns 1 (packed, or already was), 0 (this type or shape has
 * no packed layout: left as it is) or -ENOMEM. Not on the hot path (load time). */
int spa_tensor_pack(struct spa_tensor *t);
/* Whether spa_tensor_pack has a layout for t's type and columns (its rows aside). */
bool spa_tensor_packable(const struct spa_tensor *t);

/* IEEE half <-> float, exact (round to nearest even for float -> half). */
float spa_fp16_to_fp32(uint16_t h);
uint16_t spa_fp32_to_fp16(float f);
float spa_bf16_to_fp32(uint16_t h);
uint16_t spa_fp32_to_bf16(float f);

/* Dequantize/convert one row of n elements of `type` starting at src into dst (float); n a
 * multiple of the type's block. Supported: the types spa_kernels_supports() accepts. The
 * quantized formats decode bit-exactly as ggml's dequantize_row_* (same float operations in
 * the same order). Hot path (embedding rows): no allocation; thread-safe. */
void spa_dequant_row(enum spa_dtype type, const void *src, float *dst, uint64_t n);
/* Whether the kernels can compute with this weight type: 1 for F32, F16, BF16, Q8_0, Q4_0,
 * Q4_K and Q6_K (ggml's block layouts, so GGUF files interoperate with llama.cpp), else 0. */
int spa_kernels_supports(enum spa_dtype type);

/* Quantize/convert n floats into dst (spa_dtype_row_size(type, n) bytes) with ggml's
 * reference quantizers (quantize_row_q8_0_ref, _q4_0_ref, _q4_K_ref, _q6_K_ref; F16/BF16
 * round to nearest even), so the bytes are those llama.cpp's quantizer writes without an
 * importance matrix. Returns 0; -SPA_EUNSUPPORTED for a type spa_kernels_supports() refuses;
 * -EINVAL when n is not a multiple of the type's block; -EDOM when src holds a NaN or an
 * infinity and type is a block format (nothing sensible to quantize; dst is then unspecified;
 * F16/BF16 keep them). Not on the hot path
 * (the k-quants search for scales); no allocation; thread-safe. */
int spa_quantize_row(enum spa_dtype type, const float *src, void *dst, uint64_t n);

/* The type a weight tensor gets in a model file of weight type `ftype`, following llama.cpp's
 * conventions in their simplest form: tensors with n_dims < 2 (norms, biases) stay F32; for
 * Q4_0 and Q4_K files token_embd.weight and output.weight are Q6_K (llama.cpp's Q4_0 keeps
 * output.weight in Q6_K and its Q4_K_M uses Q6_K for the most sensitive tensors); everything
 * else is ftype. A row length ne0 that is not a multiple of the chosen type's block falls back
 * as llama.cpp does: a 256-block k-quant to Q8_0 (llama.cpp: Q6_K -> Q8_0; its Q4_K -> Q5_0,
 * which spa does not have, so the nearest finer type), a 32-block type to F16. */
enum spa_dtype spa_quantize_tensor_type(enum spa_dtype ftype, const char *name, uint32_t n_dims,
					 uint64_t ne0);
/* llama.cpp's general.file_type (LLAMA_FTYPE) for a file of weight type ftype: ALL_F32 0,
 * MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7, MOSTLY_Q4_K_M 15, MOSTLY_Q6_K 18, MOSTLY_BF16
 * 32; -1 for any other type. */
int spa_quantize_ftype(enum spa_dtype ftype);

/* y[rows] = W x[cols]. Rows split across the pool. For Q8_0, Q4_0 and Q6_K weights x is first
 * quantized to 8 bits, with an f32 scale per block of 32 for Q8_0 and Q4_0 (as llama.cpp's
 * Q8_0 activations) and per 256 for Q6_K (as its Q8_K), and the rows are integer dot products,
 * so the activations take a rounding of at most half a step (amax / 254 over the scale's
 * elements) that F32/F16/BF16/Q4_K rows do not; x is quantized once per call, so the bits
 * still do not depend on the thread count. */
void spa_matvec(struct spa_pool *pool, const struct spa_tensor *w, const float *x, float *y);
/* x made ready once for several products with it (the greedy head's tiles, a streamed
 * matrix's resident part and pieces): spa_matvec_x_prepare quantizes x as spa_matvec would
 * (up to SPA_MATVEC_X_MAX_COLS columns; a longer x stays f32 only, as spa_matvec then does),
 * and spa_matvec_x(w, px) gives spa_matvec(w, x)'s bits for any w of x's column count. x must
 * not change in between. Hot path, no allocation. */
#define SPA_MATVEC_X_MAX_COLS (2048u * 32u)
struct spa_matvec_x {
	const float *x;
	uint64_t cols;
	int quantized;
	size_t group; /* elements per activation scale (the type's) */
	unsigned char xq[SPA_MATVEC_X_MAX_COLS / 32u * 40u] __attribute__((aligned(64)));
};
/* type: the weight type of the matrices it will multiply (the activations of Q6_K are
 * quantized with one scale per 256, of Q8_0 and Q4_0 per 32; spa_matvec_x refuses a matrix
 * of another kind, as one of another column count). */
void spa_matvec_x_prepare(struct spa_matvec_x *px, const float *x, uint64_t cols,
			  enum spa_dtype type);
void spa_matvec_x(struct spa_pool *pool, const struct spa_tensor *w, const struct spa_matvec_x *px,
		  float *y);
/* One matrix-vector product of a spa_matvec_items job: y = W x (+ b, added after the product
 * as spa_matvec_f32 does; b may be NULL). */
struct spa_matvec_item {
	const struct spa_tensor *w;
	const float *x;
	const float *b;
	float *y;
};
#define SPA_MATVEC_MAX_ITEMS 4
/* 1..SPA_MATVEC_MAX_ITEMS products (any types and shapes, x shared or not) in one pool job:
 * each thread takes its share of every item, so the pool wakes once (decode's q, k, v and a
 * side tap). Each y has the bits of spa_matvec (F32 with b: of spa_matvec_f32). y must not
 * alias any x. Not thread-safe on one pool; hot path, no allocation (up to 160 KiB of stack
 * for the quantized inputs). */
void spa_matvec_items(struct spa_pool *pool, unsigned n, const struct spa_matvec_item *items);
/* out = swiglu(W_gate x, W_up x) (spa_swiglu on the two products), one pool job: each thread
 * applies the SwiGLU to its own rows. up receives W_up x (rows floats of scratch); out may
 * not alias x. The bits of two spa_matvec calls and spa_swiglu. */
void spa_matvec_swiglu(struct spa_pool *pool, const struct spa_tensor *w_gate,
		       const struct spa_tensor *w_up, const float *x, float *out, float *up);
/* Y[n][rows] = X[n][cols] W^T, row-major, for a batch of n vectors (prefill). Same per-element
 * summation order as spa_matvec, so a batch gives the same bits as n single calls. */
void spa_matmul(struct spa_pool *pool, const struct spa_tensor *w, const float *x, float *y,
		uint32_t n);
/* Plain f32 row-major helpers for small plugin matrices (single thread):
 * y[rows] = W[rows][cols] x + b (b may be NULL). */
void spa_matvec_f32(const float *w, const float *b, const float *x, float *y, uint32_t rows,
		    uint32_t cols);
/* y = relu(W x + b): spa_matvec_f32's bits, then max(0, .). Single thread, hot path. */
void spa_matvec_f32_relu(const float *w, const float *b, const float *x, float *y, uint32_t rows,
			 uint32_t cols);

/* out = x / rms(x) * weight, n elements; out may alias x. */
void spa_rmsnorm(float *out, const float *x, const float *weight, uint32_t n, float eps);
/* Rotary embedding in place on n_heads heads of head_dim at position pos (Llama/GGUF "normal"
 * pairing: (x[2i], x[2i+1]) rotated by pos * base^(-2i/head_dim)). */
void spa_rope(float *x, uint32_t n_heads, uint32_t head_dim, uint32_t pos, float base);
/* spa_rope in two steps, for a position shared by many calls (every block's q and k):
 * spa_rope_table writes the head_dim cosines and sines (c0, s0, c1, s1, ...) of position pos
 * into cs, spa_rope_apply rotates with them. Together: spa_rope's bits. */
void spa_rope_table(float *cs, uint32_t head_dim, uint32_t pos, float base);
void spa_rope_apply(float *x, uint32_t n_heads, uint32_t head_dim, const float *cs);

/* The rotary embedding as GGUF models define it (ggml_rope_ext without YaRN). Pair k (k <
 * n_rot / 2) turns by the angle pos * base^(-2k / n_rot) / freq_factors[k] * freq_scale, its
 * cosine and sine multiplied by attn_factor; the pair is (x[2k], x[2k+1]) ("normal": llama)
 * or (x[k], x[k + n_rot/2]) (neox: qwen2); dimensions from n_rot to head_dim are left as they
 * are. With n_rot = head_dim, no factors, freq_scale = attn_factor = 1 and normal pairs it is
 * spa_rope, bit for bit. */
struct spa_rope_cfg {
	uint32_t head_dim;          /* dimensions of a head */
	uint32_t n_rot;             /* rotated dimensions: even, 2..head_dim */
	float base;                 /* frequency base (rope.freq_base) */
	float freq_scale;           /* 1 / the linear scaling factor (1: none) */
	float attn_factor;          /* cos and sin multiplied by it (1: none) */
	const float *freq_factors;  /* n_rot / 2 divisors of the frequencies (llama 3.1's
				     * rope_freqs), or NULL; borrowed */
	bool neox;                  /* pairs (k, k + n_rot/2) instead of (2k, 2k+1) */
};
/* cs[0..n_rot) = the cosines and sines (c0, s0, c1, s1, ...) of the n_rot / 2 pairs at pos. */
void spa_rope_table_ext(float *cs, const struct spa_rope_cfg *cfg, uint32_t pos);
/* Rotate n_heads heads of x (head h at x + h * head_dim) with a table of spa_rope_table_ext. */
void spa_rope_apply_ext(float *x, uint32_t n_heads, const struct spa_rope_cfg *cfg,
			const float *cs);
/* Numerically stable softmax in place. */
void spa_softmax(float *x, uint32_t n);
/* out[i] = silu(gate[i]) * up[i]; out may alias gate. */
void spa_swiglu(float *out, const float *gate, const float *up, uint32_t n);
/* Dot product with a fixed summation order (the one spa_matvec uses for F32). */
float spa_dot_f32(const float *a, const float *b, uint32_t n);
/* y[k] = spa_dot_f32(w + k * stride, x, n) for k < rows, with its bits, several rows per
 * kernel call (rows of a strided matrix: the attention scores over a KV cache). */
void spa_dot_f32_rows(const float *w, size_t stride, const float *x, uint32_t n, float *y,
		      uint32_t rows);
/* out[d] = sum over t < rows of a[t] * v[t * stride + d], for d < n: the rows of v (stride
 * floats apart) weighted by a (attention's values weighted by its probabilities). Each term one
 * multiply and one add, t ascending from 0: the same bits in every variant. out may not alias
 * a or v. Hot path, no allocation, single thread. */
void spa_weighted_sum(float *out, const float *a, const float *v, size_t stride, uint32_t rows,
		      uint32_t n);
/* The same on IEEE half rows (the KV cache): the terms a[t] * (float)v[...], the same bits in
 * every variant. */
void spa_weighted_sum_f16(float *out, const float *a, const uint16_t *v, size_t stride,
			  uint32_t rows, uint32_t n);
/* y[k] = dot of half row k (w + k * stride halves) with x, for k < rows: the bits of the
 * F16 matvec's dot (attention's scores over a half KV cache). */
void spa_dot_f16_rows(const uint16_t *w, size_t stride, const float *x, uint32_t n, float *y,
		      uint32_t rows);
/* dst[i] = spa_fp32_to_fp16(src[i]) for i < n (F16C's conversion where the CPU has it: the
 * same bits). */
void spa_fp16_row(uint16_t *dst, const float *src, size_t n);
/* Index of the largest element (the lowest index on ties). */
uint32_t spa_argmax(const float *x, uint32_t n);

/* Name of the kernel variant chosen at run time ("avx2-fma-f16c" or "scalar"). The choice is
 * made once per process, on first use: AVX2/FMA/F16C when the CPU has all three, unless the
 * environment variable SPA_KERNELS=scalar forces the portable one (SPA_KERNELS=auto or unset:
 * automatic). The variants sum in different orders, so processes that must agree bit for bit
 * (cloud and edge of one machine) must make the same choice. Thread-safe. */
const char *spa_kernels_variant(void);

#endif
