/* spa: GGUF files (version 2 and 3), strict reader (runtime/gguf.c) and writer
 * (runtime/gguf_write.c).
 *
 * The reader checks every count, length, offset, dimension and type against the file before
 * use and never allocates more than the file justifies; each failure returns -SPA_EFORMAT with
 * a message in the errbuf naming the file, what is wrong and where. Metadata and the tensor
 * table are parsed into memory at open; tensor data is read on request (spa_gguf_pread here,
 * the whole data section with the loaders of load.h).
 *
 * Layout (little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
 * (string key, u32 value type, value), then n_tensors (string name, u32 n_dims, u64 ne[n_dims],
 * u32 ggml type, u64 offset), padding to general.alignment (default 32), tensor data.
 * Strings are u64 length + bytes (no NUL). */
#ifndef SPA_GGUF_H
#define SPA_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

enum spa_gguf_vtype {
	SPA_GGUF_UINT8 = 0,
	SPA_GGUF_INT8 = 1,
	SPA_GGUF_UINT16 = 2,
	SPA_GGUF_INT16 = 3,
	SPA_GGUF_UINT32 = 4,
	SPA_GGUF_INT32 = 5,
	SPA_GGUF_FLOAT32 = 6,
	SPA_GGUF_BOOL = 7,
	SPA_GGUF_STRING = 8,
	SPA_GGUF_ARRAY = 9,
	SPA_GGUF_UINT64 = 10,
	SPA_GGUF_INT64 = 11,
	SPA_GGUF_FLOAT64 = 12,
	SPA_GGUF_VTYPE_COUNT
};

struct spa_gguf_str {
	uint64_t len;
	char *data; /* NUL-terminated copy; may contain embedded NULs (len is authoritative) */
};

struct spa_gguf_kv {
	struct spa_gguf_str key;
	enum spa_gguf_vtype type;
	union {
		uint64_t u;  /* UINT8..UINT64, BOOL */
		int64_t i;   /* INT8..INT64 */
		double f;    /* FLOAT32, FLOAT64 */
		struct spa_gguf_str str;
		struct {
			enum spa_gguf_vtype type; /* element type; never ARRAY (nested arrays refused) */
			uint64_t n;
			/* n elements: packed little-endian values of the element type as in the file,
			 * or, for STRING, n struct spa_gguf_str. */
			void *data;
		} arr;
	} v;
};

struct spa_gguf_tensor {
	struct spa_gguf_str name;
	enum spa_dtype type;
	uint32_t n_dims;     /* 1..4 */
	uint64_t ne[4];      /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
	uint64_t n_elems;
	uint64_t offset;     /* from the start of the data section; aligned */
	uint64_t size;       /* bytes */
};

/* An opened GGUF file (or memory image). Fields are read-only for users. */
struct spa_gguf {
	char *path;          /* file name, or "<memory>" */
	int fd;              /* -1 for a memory image */
	const uint8_t *mem;  /* memory image, or NULL */
	uint32_t version;
	uint64_t n_kv;
	struct spa_gguf_kv *kv;
	uint64_t n_tensors;
	struct spa_gguf_tensor *tensors;
	uint64_t alignment;
	uint64_t data_offset; /* file offset of the data section */
	uint64_t data_size;   /* bytes from data_offset to the end of the last tensor */
	uint64_t file_size;
};

/* Open and validate a GGUF file: header, metadata, tensor table, and that every tensor lies
 * inside the file, aligned, without overlap. Returns 0 and *out (free with spa_gguf_close),
 * or a negative code with err filled. Not on the hot path; thread-safe on distinct files. */
int spa_gguf_open(struct spa_gguf **out, const char *path, struct spa_errbuf *err);
/* Same over a memory image (the caller keeps buf alive until spa_gguf_close). */
int spa_gguf_open_mem(struct spa_gguf **out, const void *buf, size_t size, struct spa_errbuf *err);
void spa_gguf_close(struct spa_gguf *g);

/* Lookups: NULL when absent. */
const struct spa_gguf_kv *spa_gguf_find_kv(const struct spa_gguf *g, const char *key);
const struct spa_gguf_tensor *spa_gguf_find_tensor(const struct spa_gguf *g, const char *name);

/* Typed getters. Integer getters accept any integer kv whose value fits; the float getter
 * accepts FLOAT32/FLOAT64. Return 0, -ENOENT when absent (err untouched), or -SPA_EMODEL with
 * a message when present with the wrong type or out of range. get_str returns a pointer into g. */
int spa_gguf_get_u32(const struct spa_gguf *g, const char *key, uint32_t *out, struct spa_errbuf *err);
int spa_gguf_get_u64(const struct spa_gguf *g, const char *key, uint64_t *out, struct spa_errbuf *err);
int spa_gguf_get_f32(const struct spa_gguf *g, const char *key, float *out, struct spa_errbuf *err);
int spa_gguf_get_str(const struct spa_gguf *g, const char *key, const char **out, struct spa_errbuf *err);
/* An array kv of element type `type` (any type when type == SPA_GGUF_VTYPE_COUNT). */
int spa_gguf_get_arr(const struct spa_gguf *g, const char *key, enum spa_gguf_vtype type,
		     const struct spa_gguf_kv **out, struct spa_errbuf *err);

/* Read `size` bytes at data-section offset `off` with pread (small reads, fingerprints). */
int spa_gguf_pread(const struct spa_gguf *g, uint64_t off, void *dst, size_t size,
		   struct spa_errbuf *err);

/* Writer. Keys and tensors are written in the order they are added; tensors are aligned to
 * 32 bytes (general.alignment is not written unless set). Data is borrowed, or produced by a
 * fill callback at write time, so that files larger than memory can be written. */
struct spa_gguf_writer;
/* Fills dst with the tensor's `size` bytes; returns 0 or a negative code (fails the write). */
typedef int (*spa_gguf_fill_fn)(void *ctx, void *dst, size_t size);

/* The setters copy what they are given and return 0, -EINVAL (empty key, bad type, bool not
 * 0/1) or -ENOMEM. Setting a key again replaces its value (any type) in place, keeping the
 * key's position. Not thread-safe on one writer. */

int spa_gguf_writer_create(struct spa_gguf_writer **out);
void spa_gguf_writer_destroy(struct spa_gguf_writer *w);
int spa_gguf_writer_set_u32(struct spa_gguf_writer *w, const char *key, uint32_t v);
int spa_gguf_writer_set_i32(struct spa_gguf_writer *w, const char *key, int32_t v);
int spa_gguf_writer_set_u64(struct spa_gguf_writer *w, const char *key, uint64_t v);
int spa_gguf_writer_set_f32(struct spa_gguf_writer *w, const char *key, float v);
int spa_gguf_writer_set_bool(struct spa_gguf_writer *w, const char *key, bool v);
int spa_gguf_writer_set_str(struct spa_gguf_writer *w, const char *key, const char *v);
/* Array of n elements of scalar type `type` (packed LE values), copied. */
int spa_gguf_writer_set_arr(struct spa_gguf_writer *w, const char *key, enum spa_gguf_vtype type,
			    const void *data, uint64_t n);
int spa_gguf_writer_set_arr_str(struct spa_gguf_writer *w, const char *key,
				const char *const *strs, uint64_t n);
/* Copy a kv (any type, arrays included) from an opened file. */
int spa_gguf_writer_copy_kv(struct spa_gguf_writer *w, const struct spa_gguf_kv *kv);
/* Add a tensor whose data is borrowed (must live until write), or made by fill(ctx, dst, size)
 * at write time. ne[0] is the row dimension, as in the reader. Returns 0, -EEXIST for a name
 * already added, -EINVAL for a name of 0 or >= 64 bytes, n_dims outside 1..4, an ne of 0, an
 * unknown type, a row not a multiple of the type's block or a size that overflows. */
int spa_gguf_writer_add_tensor(struct spa_gguf_writer *w, const char *name, enum spa_dtype type,
			       uint32_t n_dims, const uint64_t *ne, const void *data);
int spa_gguf_writer_add_tensor_fn(struct spa_gguf_writer *w, const char *name,
				  enum spa_dtype type, uint32_t n_dims, const uint64_t *ne,
				  spa_gguf_fill_fn fill, void *ctx);
/* Write to path (atomically: a temporary file renamed into place), or to a new malloc'd buffer
 * (*out, free with free()). Progress to stderr when show_progress and it is a terminal. */
int spa_gguf_writer_write(struct spa_gguf_writer *w, const char *path, bool show_progress,
			  struct spa_errbuf *err);
int spa_gguf_writer_write_mem(struct spa_gguf_writer *w, void **out, size_t *out_size,
			      struct spa_errbuf *err);

#endif
