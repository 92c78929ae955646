/* GGUF files (version 2 and 3): the strict reader (the writer is gguf_write.c, the loaders
 * of the tensor data load.c).
 *
 * The reader trusts nothing in the file: every count, length and offset is checked against
 * the bytes that remain before anything is allocated or used, so a damaged or hostile file
 * costs at most memory proportional to its own size and ends in one clear message. The
 * header region (metadata + tensor table) is read through a bounded cursor that preads a
 * window of HDR_CHUNK bytes at a time: a 32000-token vocabulary is tens of MB, and the tensor
 * data behind it (gigabytes) is never mapped nor read at open.
 *
 * Docs: docs/gguf.md. */
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_impl.h"
#include "spa/uring.h"

#define HDR_CHUNK (1u << 20)    /* header window: pread this much at a time */

#define HINT_TRUNC "the file is cut short: fetch it again or remake it"
#define HINT_PAST_END "the file is cut short or its tensor table is damaged: fetch it " \
		      "again or remake it"
#define HINT_BAD "the file is damaged or was written by a broken tool: remake it (spa-gen) " \
		 "or fetch it again"

/* ---------------------------------------------------------------- value types */

static const char *const vtype_names[SPA_GGUF_VTYPE_COUNT] = {
	"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string",
	"array", "uint64", "int64", "float64",
};

static const char *vtype_name(uint32_t t)
{
	return t < SPA_GGUF_VTYPE_COUNT ? vtype_names[t] : "unknown";
}

static bool vtype_is_int(enum spa_gguf_vtype t)
{
	switch (t) {
	case SPA_GGUF_UINT8: case SPA_GGUF_INT8: case SPA_GGUF_UINT16: case SPA_GGUF_INT16:
	case SPA_GGUF_UINT32: case SPA_GGUF_INT32: case SPA_GGUF_UINT64: case SPA_GGUF_INT64:
		return true;
	default:
		return false;
	}
}

/* Decode a scalar from its little-endian bytes into the kv's union. */
static void scalar_decode(struct spa_gguf_kv *kv, const uint8_t *p)
{
	switch (kv->type) {
	case SPA_GGUF_UINT8: case SPA_GGUF_BOOL: kv->v.u = p[0]; break;
	case SPA_GGUF_INT8: kv->v.i = (int8_t)p[0]; break;
	case SPA_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); kv->v.u = x; break; }
	case SPA_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); kv->v.i = x; break; }
	case SPA_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); kv->v.u = x; break; }
	case SPA_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); kv->v.i = x; break; }
	case SPA_GGUF_UINT64: memcpy(&kv->v.u, p, 8); break;
	case SPA_GGUF_INT64: memcpy(&kv->v.i, p, 8); break;
	case SPA_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); kv->v.f = x; break; }
	case SPA_GGUF_FLOAT64: memcpy(&kv->v.f, p, 8); break;
	default: break;
	}
}

/* ---------------------------------------------------------------- small helpers */

static uint64_t fnv1a(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

/* Open-addressing set of strings (by index into a caller array), for duplicate detection in
 * O(n). Capacity is fixed at creation from a count the caller has already bounded. */
struct strset {
	uint64_t *slot; /* index + 1, 0 = empty */
	uint64_t mask;
};

static int strset_init(struct strset *s, uint64_t n)
{
	uint64_t cap = 16;
	while (cap < 2 * n)
		cap <<= 1;
	s->slot = calloc(cap, sizeof *s->slot);
	s->mask = cap - 1;
	return s->slot ? 0 : -ENOMEM;
}

/* Insert str (index idx; get(i) returns the string of index i). Returns the index of an
 * equal string already present, or -1 when inserted. */
static int64_t strset_insert(struct strset *s, const struct spa_gguf_str *str, uint64_t idx,
			     const struct spa_gguf_str *(*get)(const void *, uint64_t),
			     const void *arg)
{
	uint64_t h = fnv1a(str->data, str->len) & s->mask;
	for (;; h = (h + 1) & s->mask) {
		if (!s->slot[h]) {
			s->slot[h] = idx + 1;
			return -1;
		}
		const struct spa_gguf_str *o = get(arg, s->slot[h] - 1);
		if (o->len == str->len && memcmp(o->data, str->data, str->len) == 0)
			return (int64_t)(s->slot[h] - 1);
	}
}

static const struct spa_gguf_str *get_kv_key(const void *arg, uint64_t i)
{
	return &((const struct spa_gguf_kv *)arg)[i].key;
}

static const struct spa_gguf_str *get_tensor_name(const void *arg, uint64_t i)
{
	return &((const struct spa_gguf_tensor *)arg)[i].name;
}

/* Print a string for a message: at most 48 bytes, non-printable bytes as '?'. */
static const char *shown(const struct spa_gguf_str *s, char buf[64])
{
	size_t n = s->len < 48 ? (size_t)s->len : 48, j = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s->data[i];
		buf[j++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	if (s->len > n) {
		memcpy(buf + j, "...", 3);
		j += 3;
	}
	buf[j] = 0;
	return buf;
}

/* ---------------------------------------------------------------- reader: cursor */

struct cur {
	const char *path;
	struct spa_errbuf *err;
	int fd;
	const uint8_t *mem;   /* memory image, or NULL */
	uint64_t size;        /* file size */
	uint64_t pos;         /* next byte */
	uint8_t *win;         /* pread window (files) */
	uint64_t win_off;
	size_t win_len;
	char ctx[160];        /* what is being parsed, for messages */
};

static int cur_fail(struct cur *c, uint64_t off, const char *hint, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int cur_fail(struct cur *c, uint64_t off, const char *hint, const char *fmt, ...)
{
	char what[320];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	return spa_err(c->err, -SPA_EFORMAT, "%s: %s (at byte offset %" PRIu64 "); %s", c->path,
		       what, off, hint);
}

static uint64_t cur_left(const struct cur *c)
{
	return c->size - c->pos;
}

/* Copy n bytes at the cursor into dst and advance; a truncation error when the file ends. */
static int cur_read(struct cur *c, void *dst, uint64_t n)
{
	if (n > cur_left(c))
		return cur_fail(c, c->pos, HINT_TRUNC,
				"file ends inside %s: %" PRIu64 " bytes needed, %" PRIu64 " left",
				c->ctx, n, cur_left(c));
	if (c->mem) {
		memcpy(dst, c->mem + c->pos, n);
		c->pos += n;
		return 0;
	}
	uint8_t *d = dst;
	while (n) {
		if (c->pos < c->win_off || c->pos >= c->win_off + c->win_len) {
			size_t want = cur_left(c) < HDR_CHUNK ? (size_t)cur_left(c) : HDR_CHUNK;
			ssize_t r = spa_uring_pread(c->fd, c->win, want, c->pos);
			if (r < 0)
				return spa_err(c->err, (int)r, "%s: cannot read: %s (at byte offset %"
					       PRIu64 "); check the disk and permissions", c->path,
					       strerror((int)-r), c->pos);
			if ((size_t)r < want)
				return cur_fail(c, c->pos + (uint64_t)r, HINT_TRUNC,
						"the file shrank while being read");
			c->win_off = c->pos;
			c->win_len = want;
		}
		size_t in = (size_t)(c->win_off + c->win_len - c->pos);
		size_t k = n < in ? (size_t)n : in;
		memcpy(d, c->win + (c->pos - c->win_off), k);
		d += k;
		n -= k;
		c->pos += k;
	}
	return 0;
}

static int cur_u32(struct cur *c, uint32_t *v)
{
	return cur_read(c, v, 4);
}

static int cur_u64(struct cur *c, uint64_t *v)
{
	return cur_read(c, v, 8);
}

/* A string (u64 length + bytes) into s, NUL-terminated. The length is checked against the
 * bytes left before allocating. */
static int cur_str(struct cur *c, struct spa_gguf_str *s, const char *what)
{
	uint64_t at = c->pos, len;
	int rc = cur_u64(c, &len);
	if (rc < 0)
		return rc;
	if (len > cur_left(c))
		return cur_fail(c, at, HINT_BAD,
				"string length %" PRIu64 " of %s in %s runs past the end of the file "
				"(%" PRIu64 " bytes left)", len, what, c->ctx, cur_left(c));
	s->data = malloc(len + 1);
	if (!s->data)
		return spa_err(c->err, -ENOMEM, "%s: out of memory for a string of %" PRIu64
			       " bytes", c->path, len);
	s->len = len;
	s->data[len] = 0;
	return cur_read(c, s->data, len);
}

/* A value of type `type` (already read and checked < COUNT) into kv. */
static int cur_value(struct cur *c, struct spa_gguf_kv *kv)
{
	uint8_t b[8];
	int rc;
	uint64_t at = c->pos;
	if (kv->type == SPA_GGUF_STRING)
		return cur_str(c, &kv->v.str, "the value");
	if (kv->type != SPA_GGUF_ARRAY) {
		if ((rc = cur_read(c, b, vtype_size[kv->type])) < 0)
			return rc;
		if (kv->type == SPA_GGUF_BOOL && b[0] > 1)
			return cur_fail(c, at, HINT_BAD, "bool value %u of %s is neither 0 nor 1",
					b[0], c->ctx);
		scalar_decode(kv, b);
		return 0;
	}
	uint32_t et;
	if ((rc = cur_u32(c, &et)) < 0)
		return rc;
	if (et == SPA_GGUF_ARRAY)
		return cur_fail(c, at, HINT_BAD, "nested array in %s: GGUF arrays of arrays are "
				"not supported", c->ctx);
	if (et >= SPA_GGUF_VTYPE_COUNT)
		return cur_fail(c, at, HINT_BAD, "array element type %u of %s is not a GGUF value "
				"type (0..12)", et, c->ctx);
	kv->v.arr.type = (enum spa_gguf_vtype)et;
	uint64_t n, n_at = c->pos;
	if ((rc = cur_u64(c, &n)) < 0)
		return rc;
	/* Each element needs at least min_bytes in the file: refuse before allocating. */
	uint64_t min_bytes = et == SPA_GGUF_STRING ? 8 : vtype_size[et];
	if (n > cur_left(c) / min_bytes)
		return cur_fail(c, n_at, HINT_BAD,
				"array length %" PRIu64 " of %s runs past the end of the file "
				"(%" PRIu64 " elements of %s need at least %" PRIu64 " bytes each, %"
				PRIu64 " bytes left)", n, c->ctx, n, vtype_name(et), min_bytes,
				cur_left(c));
	if (et == SPA_GGUF_STRING) {
		struct spa_gguf_str *s = calloc(n ? n : 1, sizeof *s);
		if (!s)
			return spa_err(c->err, -ENOMEM, "%s: out of memory for %" PRIu64
				       " strings", c->path, n);
		kv->v.arr.data = s;
		kv->v.arr.n = n;
		size_t ctx_len = strlen(c->ctx);
		for (uint64_t i = 0; i < n; i++) {
			snprintf(c->ctx + ctx_len, sizeof c->ctx - ctx_len, " element %" PRIu64, i);
			if ((rc = cur_str(c, &s[i], "an array element")) < 0)
				return rc;
		}
		c->ctx[ctx_len] = 0;
		return 0;
	}
	uint8_t *d = malloc(n ? n * min_bytes : 1);
	if (!d)
		return spa_err(c->err, -ENOMEM, "%s: out of memory for an array of %" PRIu64
			       " bytes", c->path, n * min_bytes);
	kv->v.arr.data = d;
	kv->v.arr.n = n;
	uint64_t data_at = c->pos;
	if ((rc = cur_read(c, d, n * min_bytes)) < 0)
		return rc;
	if (et == SPA_GGUF_BOOL)
		for (uint64_t i = 0; i < n; i++)
			if (d[i] > 1)
				return cur_fail(c, data_at + i, HINT_BAD, "bool element %" PRIu64
						" = %u of %s is neither 0 nor 1", i, d[i], c->ctx);
	return 0;
}

/* ---------------------------------------------------------------- reader */

void spa_gguf_close(struct spa_gguf *g)
{
	if (!g)
		return;
	if (g->kv)
		for (uint64_t i = 0; i < g->n_kv; i++)
			kv_free(&g->kv[i]);
	free(g->kv);
	if (g->tensors)
		for (uint64_t i = 0; i < g->n_tensors; i++)
			str_free(&g->tensors[i].name);
	free(g->tensors);
	if (g->fd >= 0)
		close(g->fd);
	free(g->path);
	free(g);
}

static int cmp_by_offset(const void *a, const void *b, void *arg)
{
	const struct spa_gguf_tensor *t = arg;
	uint64_t x = t[*(const uint64_t *)a].offset, y = t[*(const uint64_t *)b].offset;
	return x < y ? -1 : x > y;
}

static int parse_kvs(struct spa_gguf *g, struct cur *c)
{
	struct strset set = {0};
	int rc = strset_init(&set, g->n_kv);
	if (rc < 0)
		return spa_err(c->err, rc, "%s: out of memory", c->path);
	for (uint64_t i = 0; i < g->n_kv; i++) {
		struct spa_gguf_kv *kv = &g->kv[i];
		char sb[64];
		uint64_t key_at = c->pos;
		snprintf(c->ctx, sizeof c->ctx, "the key of kv %" PRIu64, i);
		if ((rc = cur_str(c, &kv->key, "the key")) < 0)
			goto out;
		snprintf(c->ctx, sizeof c->ctx, "kv %" PRIu64 " ('%s')", i, shown(&kv->key, sb));
		if (kv->key.len == 0) {
			rc = cur_fail(c, key_at, HINT_BAD, "kv %" PRIu64 " has an empty key", i);
			goto out;
		}
		int64_t dup = strset_insert(&set, &kv->key, i, get_kv_key, g->kv);
		if (dup >= 0) {
			rc = cur_fail(c, key_at, HINT_BAD, "duplicate key '%s' (kv %" PRId64 " and kv %"
				      PRIu64 ")", sb, dup, i);
			goto out;
		}
		uint64_t type_at = c->pos;
		uint32_t type;
		if ((rc = cur_u32(c, &type)) < 0)
			goto out;
		if (type >= SPA_GGUF_VTYPE_COUNT) {
			rc = cur_fail(c, type_at, HINT_BAD, "bad value type %u of %s: GGUF value "
				      "types are 0..12", type, c->ctx);
			goto out;
		}
		kv->type = (enum spa_gguf_vtype)type;
		uint64_t val_at = c->pos;
		if ((rc = cur_value(c, kv)) < 0)
			goto out;
		if (str_eq(&kv->key, "general.alignment")) {
			if (kv->type != SPA_GGUF_UINT32) {
				rc = cur_fail(c, type_at, HINT_BAD, "bad general.alignment: type %s, "
					      "must be uint32", vtype_name(kv->type));
				goto out;
			}
			if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1))) {
				rc = cur_fail(c, val_at, HINT_BAD, "bad general.alignment %" PRIu64
					      ": must be a power of two", kv->v.u);
				goto out;
			}
			g->alignment = kv->v.u;
		}
	}
	rc = 0;
out:
	free(set.slot);
	return rc;
}

static int parse_tensors(struct spa_gguf *g, struct cur *c, uint64_t *info_at)
{
	struct strset set = {0};
	int rc = strset_init(&set, g->n_tensors);
	if (rc < 0)
		return spa_err(c->err, rc, "%s: out of memory", c->path);
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		struct spa_gguf_tensor *t = &g->tensors[i];
		char sb[64];
		uint64_t name_at = c->pos;
		snprintf(c->ctx, sizeof c->ctx, "the name of tensor %" PRIu64, i);
		if ((rc = cur_str(c, &t->name, "the name")) < 0)
			goto out;
		snprintf(c->ctx, sizeof c->ctx, "tensor %" PRIu64 " ('%s')", i, shown(&t->name, sb));
		if (t->name.len == 0 || t->name.len >= GGUF_MAX_NAME) {
			rc = cur_fail(c, name_at, HINT_BAD, "tensor %" PRIu64 " has a name of %" PRIu64
				      " bytes: ggml needs 1..%d", i, t->name.len, GGUF_MAX_NAME - 1);
			goto out;
		}
		int64_t dup = strset_insert(&set, &t->name, i, get_tensor_name, g->tensors);
		if (dup >= 0) {
			rc = cur_fail(c, name_at, HINT_BAD, "duplicate tensor name '%s' (tensors %"
				      PRId64 " and %" PRIu64 ")", sb, dup, i);
			goto out;
		}
		uint64_t at = c->pos;
		if ((rc = cur_u32(c, &t->n_dims)) < 0)
			goto out;
		if (t->n_dims < 1 || t->n_dims > 4) {
			rc = cur_fail(c, at, HINT_BAD, "n_dims %u of %s is not in 1..4", t->n_dims,
				      c->ctx);
			goto out;
		}
		t->n_elems = 1;
		for (uint32_t d = 0; d < 4; d++)
			t->ne[d] = 1;
		for (uint32_t d = 0; d < t->n_dims; d++) {
			at = c->pos;
			if ((rc = cur_u64(c, &t->ne[d])) < 0)
				goto out;
			if (t->ne[d] == 0) {
				rc = cur_fail(c, at, HINT_BAD, "dimension %u of %s is 0", d, c->ctx);
				goto out;
			}
			if (__builtin_mul_overflow(t->n_elems, t->ne[d], &t->n_elems) ||
			    t->n_elems > INT64_MAX) {
				rc = cur_fail(c, at, HINT_BAD, "element count of %s overflows "
					      "(dimension %u is %" PRIu64 ")", c->ctx, d, t->ne[d]);
				goto out;
			}
		}
		uint32_t type;
		at = c->pos;
		if ((rc = cur_u32(c, &type)) < 0)
			goto out;
		if (!spa_dtype_block_elems((enum spa_dtype)type)) {
			rc = cur_fail(c, at, HINT_BAD, "bad tensor type %u of %s: not a ggml type "
				      "this reader knows", type, c->ctx);
			goto out;
		}
		t->type = (enum spa_dtype)type;
		uint32_t blck = spa_dtype_block_elems(t->type);
		if (t->ne[0] % blck) {
			rc = cur_fail(c, at, HINT_BAD, "row of %" PRIu64 " elements of %s is not a "
				      "multiple of the %s block (%u)", t->ne[0], c->ctx,
				      spa_dtype_name(t->type), blck);
			goto out;
		}
		if (__builtin_mul_overflow(t->n_elems / blck, (uint64_t)spa_dtype_block_size(t->type),
					   &t->size) || t->size > c->size) {
			rc = cur_fail(c, at, HINT_BAD, "byte size of %s (%" PRIu64 " elements of %s) "
				      "overflows or exceeds the file size", c->ctx, t->n_elems,
				      spa_dtype_name(t->type));
			goto out;
		}
		info_at[i] = c->pos;
		if ((rc = cur_u64(c, &t->offset)) < 0)
			goto out;
		if (t->offset % g->alignment) {
			rc = cur_fail(c, info_at[i], HINT_BAD, "misaligned offset %" PRIu64 " of %s: "
				      "not a multiple of the alignment %" PRIu64, t->offset, c->ctx,
				      g->alignment);
			goto out;
		}
	}
	rc = 0;
out:
	free(set.slot);
	return rc;
}

/* Tensors inside the file and not overlapping. */
static int check_layout(struct spa_gguf *g, struct cur *c, const uint64_t *info_at)
{
	char sa[64], sb[64];
	uint64_t room = g->data_offset <= g->file_size ? g->file_size - g->data_offset : 0;
	g->data_size = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		if (t->offset > room || t->size > room - t->offset)
			return cur_fail(c, info_at[i], HINT_PAST_END,
					"offset past end: tensor %" PRIu64 " ('%s', %" PRIu64 " bytes "
					"at data offset %" PRIu64 ") ends past the end of the file (the "
					"data section holds %" PRIu64 " bytes)", i,
					shown(&t->name, sa), t->size, t->offset, room);
		if (t->offset + t->size > g->data_size)
			g->data_size = t->offset + t->size;
	}
	if (g->n_tensors < 2)
		return 0;
	uint64_t *ord = malloc(g->n_tensors * sizeof *ord);
	if (!ord)
		return spa_err(c->err, -ENOMEM, "%s: out of memory", c->path);
	for (uint64_t i = 0; i < g->n_tensors; i++)
		ord[i] = i;
	qsort_r(ord, g->n_tensors, sizeof *ord, cmp_by_offset, g->tensors);
	int rc = 0;
	for (uint64_t k = 0; k + 1 < g->n_tensors; k++) {
		const struct spa_gguf_tensor *a = &g->tensors[ord[k]], *b = &g->tensors[ord[k + 1]];
		if (a->offset + a->size > b->offset) {
			rc = cur_fail(c, info_at[ord[k + 1]], HINT_BAD,
				      "overlapping tensors: '%s' (data offset %" PRIu64 ", %" PRIu64
				      " bytes) and '%s' (data offset %" PRIu64 ")", shown(&a->name, sa),
				      a->offset, a->size, shown(&b->name, sb), b->offset);
			break;
		}
	}
	free(ord);
	return rc;
}

static int gguf_parse(struct spa_gguf *g, struct cur *c)
{
	uint8_t hdr[GGUF_HEADER_SIZE];
	int rc;
	snprintf(c->ctx, sizeof c->ctx, "the header");
	if (c->size < GGUF_HEADER_SIZE)
		return cur_fail(c, c->size, HINT_TRUNC, "truncated header: the file has %" PRIu64
				" bytes, a GGUF header needs %d", c->size, GGUF_HEADER_SIZE);
	if ((rc = cur_read(c, hdr, sizeof hdr)) < 0)
		return rc;
	if (memcmp(hdr, "GGUF", 4) != 0)
		return cur_fail(c, 0, "check the path: give a .gguf model or plugin file",
				"bad magic %02x %02x %02x %02x: not a GGUF file (expected 'GGUF')",
				hdr[0], hdr[1], hdr[2], hdr[3]);
	uint32_t version;
	uint64_t n_tensors, n_kv;
	memcpy(&version, hdr + 4, 4);
	memcpy(&n_tensors, hdr + 8, 8);
	memcpy(&n_kv, hdr + 16, 8);
	if (version == 1)
		return cur_fail(c, 4, "convert it to version 3 with a current llama.cpp (gguf-py)",
				"bad version: GGUF version 1 is not supported (it predates 64-bit "
				"counts)");
	if (version == __builtin_bswap32(2) || version == __builtin_bswap32(3))
		return cur_fail(c, 4, "convert it to a little-endian GGUF file",
				"bad version: this is a big-endian GGUF file (version %u byte-swapped)",
				__builtin_bswap32(version));
	if (version < GGUF_VERSION_MIN || version > GGUF_VERSION_MAX)
		return cur_fail(c, 4, "use a file of version 2 or 3 (convert it with llama.cpp)",
				"bad version %u: this reader knows GGUF versions 2 and 3", version);
	g->version = version;
	uint64_t left = cur_left(c), need_kv, need_t, need;
	if (n_kv > left / GGUF_MIN_KV_BYTES || n_tensors > left / GGUF_MIN_TENSOR_BYTES ||
	    __builtin_mul_overflow(n_kv, (uint64_t)GGUF_MIN_KV_BYTES, &need_kv) ||
	    __builtin_mul_overflow(n_tensors, (uint64_t)GGUF_MIN_TENSOR_BYTES, &need_t) ||
	    __builtin_add_overflow(need_kv, need_t, &need) || need > left)
		return cur_fail(c, 8, HINT_BAD, "absurd counts: n_tensors %" PRIu64 " and n_kv %"
				PRIu64 " cannot fit in the %" PRIu64 " bytes after the header",
				n_tensors, n_kv, left);
	g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
	g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
	uint64_t *info_at = malloc((n_tensors ? n_tensors : 1) * sizeof *info_at);
	if (!g->kv || !g->tensors || !info_at) {
		free(info_at);
		return spa_err(c->err, -ENOMEM, "%s: out of memory for %" PRIu64 " kvs and %"
			       PRIu64 " tensors", c->path, n_kv, n_tensors);
	}
	g->n_kv = n_kv;
	g->n_tensors = n_tensors;
	g->alignment = GGUF_DEFAULT_ALIGN;
	if ((rc = parse_kvs(g, c)) < 0 || (rc = parse_tensors(g, c, info_at)) < 0)
		goto out;
	/* header_end < file size, alignment <= 2^31: no overflow. */
	g->data_offset = (c->pos + g->alignment - 1) & ~(g->alignment - 1);
	rc = check_layout(g, c, info_at);
out:
	free(info_at);
	return rc;
}

static int gguf_open_common(struct spa_gguf **out, const char *path, int fd,
			    const void *mem, uint64_t size, struct spa_errbuf *err)
{
	struct spa_gguf *g = calloc(1, sizeof *g);
	if (!g) {
		if (fd >= 0)
			close(fd);
		return spa_err(err, -ENOMEM, "%s: out of memory", path);
	}
	g->fd = fd;
	g->mem = mem;
	g->file_size = size;
	g->path = strdup(path);
	if (!g->path) {
		spa_gguf_close(g);
		return spa_err(err, -ENOMEM, "%s: out of memory", path);
	}
	struct cur c = {
		.path = g->path, .err = err, .fd = fd, .mem = mem, .size = size,
	};
	if (!mem) {
		c.win = malloc(HDR_CHUNK);
		if (!c.win) {
			spa_gguf_close(g);
			return spa_err(err, -ENOMEM, "%s: out of memory", path);
		}
	}
	int rc = gguf_parse(g, &c);
	free(c.win);
	if (rc < 0) {
		spa_gguf_close(g);
		return rc;
	}
	*out = g;
	return 0;
}

int spa_gguf_open(struct spa_gguf **out, const char *path, struct spa_errbuf *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		return spa_err(err, -e, "%s: cannot open: %s; check the path and permissions", path,
			       strerror(e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return spa_err(err, -e, "%s: cannot stat: %s", path, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return spa_err(err, -SPA_EFORMAT, "%s: not a regular file (at byte offset 0); give "
			       "the path of a .gguf file", path);
	}
	return gguf_open_common(out, path, fd, NULL, (uint64_t)st.st_size, err);
}

int spa_gguf_open_mem(struct spa_gguf **out, const void *buf, size_t size, struct spa_errbuf *err)
{
	*out = NULL;
	if (!buf && size)
		return spa_err(err, -EINVAL, "<memory>: NULL buffer");
	static const uint8_t empty[1];
	return gguf_open_common(out, "<memory>", -1, buf ? buf : empty, size, err);
}

/* ---------------------------------------------------------------- lookups and getters */

const struct spa_gguf_kv *spa_gguf_find_kv(const struct spa_gguf *g, const char *key)
{
	for (uint64_t i = 0; i < g->n_kv; i++)
		if (str_eq(&g->kv[i].key, key))
			return &g->kv[i];
	return NULL;
}

const struct spa_gguf_tensor *spa_gguf_find_tensor(const struct spa_gguf *g, const char *name)
{
	for (uint64_t i = 0; i < g->n_tensors; i++)
		if (str_eq(&g->tensors[i].name, name))
			return &g->tensors[i];
	return NULL;
}

static int bad_type(const struct spa_gguf *g, const char *key, const struct spa_gguf_kv *kv,
		    const char *want, struct spa_errbuf *err)
{
	return spa_err(err, -SPA_EMODEL, "%s: key '%s' has type %s, expected %s; the file was not "
		       "made for spa (check it with spa-inspect)", g->path, key,
		       vtype_name(kv->type), want);
}

/* Any integer kv as a value in [0, max]. */
static int get_uint(const struct spa_gguf *g, const char *key, uint64_t max, const char *tname,
		    uint64_t *out, struct spa_errbuf *err)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, key);
	if (!kv)
		return -ENOENT;
	if (!vtype_is_int(kv->type))
		return bad_type(g, key, kv, "an integer", err);
	if (vtype_is_signed(kv->type) ? (kv->v.i < 0 || (uint64_t)kv->v.i > max) : kv->v.u > max) {
		char v[32];
		if (vtype_is_signed(kv->type))
			snprintf(v, sizeof v, "%" PRId64, kv->v.i);
		else
			snprintf(v, sizeof v, "%" PRIu64, kv->v.u);
		return spa_err(err, -SPA_EMODEL, "%s: key '%s' = %s is out of range for %s; the "
			       "file is damaged or not made for spa", g->path, key, v, tname);
	}
	*out = vtype_is_signed(kv->type) ? (uint64_t)kv->v.i : kv->v.u;
	return 0;
}

int spa_gguf_get_u32(const struct spa_gguf *g, const char *key, uint32_t *out,
		     struct spa_errbuf *err)
{
	uint64_t v = 0; /* set whenever rc == 0; initialised for -O3's flow analysis */
	int rc = get_uint(g, key, UINT32_MAX, "u32", &v, err);
	if (rc == 0)
		*out = (uint32_t)v;
	return rc;
}

int spa_gguf_get_u64(const struct spa_gguf *g, const char *key, uint64_t *out,
		     struct spa_errbuf *err)
{
	return get_uint(g, key, UINT64_MAX, "u64", out, err);
}

int spa_gguf_get_f32(const struct spa_gguf *g, const char *key, float *out,
		     struct spa_errbuf *err)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type != SPA_GGUF_FLOAT32 && kv->type != SPA_GGUF_FLOAT64)
		return bad_type(g, key, kv, "float32 or float64", err);
	if (isfinite(kv->v.f) && fabs(kv->v.f) > FLT_MAX)
		return spa_err(err, -SPA_EMODEL, "%s: key '%s' = %g is out of range for float32; "
			       "the file is damaged or not made for spa", g->path, key, kv->v.f);
	*out = (float)kv->v.f;
	return 0;
}

int spa_gguf_get_str(const struct spa_gguf *g, const char *key, const char **out,
		     struct spa_errbuf *err)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type != SPA_GGUF_STRING)
		return bad_type(g, key, kv, "string", err);
	*out = kv->v.str.data;
	return 0;
}

int spa_gguf_get_arr(const struct spa_gguf *g, const char *key, enum spa_gguf_vtype type,
		     const struct spa_gguf_kv **out, struct spa_errbuf *err)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, key);
	if (!kv)
		return -ENOENT;
	if (kv->type != SPA_GGUF_ARRAY)
		return bad_type(g, key, kv, "array", err);
	if (type != SPA_GGUF_VTYPE_COUNT && kv->v.arr.type != type)
		return spa_err(err, -SPA_EMODEL, "%s: key '%s' is an array of %s, expected an array "
			       "of %s; the file was not made for spa (check it with spa-inspect)",
			       g->path, key, vtype_name(kv->v.arr.type), vtype_name(type));
	*out = kv;
	return 0;
}

/* ---------------------------------------------------------------- data */

int spa_gguf_pread(const struct spa_gguf *g, uint64_t off, void *dst, size_t size,
		   struct spa_errbuf *err)
{
	uint64_t room = g->data_offset <= g->file_size ? g->file_size - g->data_offset : 0;
	if (off > room || size > room - off)
		return spa_err(err, -EINVAL, "%s: read of %zu bytes at data offset %" PRIu64
			       " is past the end of the file (data section: %" PRIu64 " bytes)",
			       g->path, size, off, room);
	if (g->mem) {
		memcpy(dst, g->mem + g->data_offset + off, size);
		return 0;
	}
	ssize_t r = spa_uring_pread(g->fd, dst, size, g->data_offset + off);
	if (r < 0)
		return spa_err(err, (int)r, "%s: cannot read: %s (at byte offset %" PRIu64 "); check "
			       "the disk", g->path, strerror((int)-r), g->data_offset + off);
	if ((size_t)r < size)
		return spa_err(err, -SPA_EFORMAT, "%s: the file shrank after it was opened (at byte "
			       "offset %" PRIu64 "); do not modify a model while it is in use",
			       g->path, g->data_offset + off + (uint64_t)r);
	return 0;
}
