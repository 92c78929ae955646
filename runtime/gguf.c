/* GGUF files (version 2 and 3): strict reader, io_uring data loader, streaming writer.
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
#include <liburing.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spa/gguf.h"

/* Values are copied between the file and memory as bytes: little-endian hosts only. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "spa's GGUF code needs a little-endian host");

#define GGUF_VERSION_MIN 2
#define GGUF_VERSION_MAX 3
#define GGUF_VERSION_WRITE 3
#define GGUF_DEFAULT_ALIGN 32
#define GGUF_HEADER_SIZE 24     /* magic, version, n_tensors, n_kv */
#define GGUF_MAX_NAME 64        /* ggml's GGML_MAX_NAME: tensor names must be shorter */
#define GGUF_MIN_KV_BYTES 13    /* key length (8) + type (4) + the smallest value (1) */
#define GGUF_MIN_TENSOR_BYTES 32 /* name length (8), n_dims (4), one ne (8), type (4), offset (8) */
#define HDR_CHUNK (1u << 20)    /* header window: pread this much at a time */
#define LOAD_CHUNK (4u << 20)   /* one io_uring read */
#define LOAD_DEPTH 8            /* reads in flight */
#define DATA_ALIGN 64           /* the loaded data buffer: cache line, AVX-512 friendly */

#define HINT_TRUNC "the file is cut short: fetch it again or remake it"
#define HINT_PAST_END "the file is cut short or its tensor table is damaged: fetch it " \
		      "again or remake it"
#define HINT_BAD "the file is damaged or was written by a broken tool: remake it (spa-gen) " \
		 "or fetch it again"

/* ---------------------------------------------------------------- element types */

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

/* ---------------------------------------------------------------- value types */

static const char *const vtype_names[SPA_GGUF_VTYPE_COUNT] = {
	"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string",
	"array", "uint64", "int64", "float64",
};
/* Bytes of a scalar value in the file (0 for STRING and ARRAY). */
static const uint8_t vtype_size[SPA_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

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

static bool vtype_is_signed(enum spa_gguf_vtype t)
{
	return t == SPA_GGUF_INT8 || t == SPA_GGUF_INT16 || t == SPA_GGUF_INT32 ||
	       t == SPA_GGUF_INT64;
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

/* Encode the kv's scalar as little-endian bytes (inverse of scalar_decode). */
static void scalar_encode(const struct spa_gguf_kv *kv, uint8_t *p)
{
	switch (kv->type) {
	case SPA_GGUF_UINT8: case SPA_GGUF_BOOL: p[0] = (uint8_t)kv->v.u; break;
	case SPA_GGUF_INT8: p[0] = (uint8_t)(int8_t)kv->v.i; break;
	case SPA_GGUF_UINT16: { uint16_t x = (uint16_t)kv->v.u; memcpy(p, &x, 2); break; }
	case SPA_GGUF_INT16: { int16_t x = (int16_t)kv->v.i; memcpy(p, &x, 2); break; }
	case SPA_GGUF_UINT32: { uint32_t x = (uint32_t)kv->v.u; memcpy(p, &x, 4); break; }
	case SPA_GGUF_INT32: { int32_t x = (int32_t)kv->v.i; memcpy(p, &x, 4); break; }
	case SPA_GGUF_UINT64: memcpy(p, &kv->v.u, 8); break;
	case SPA_GGUF_INT64: memcpy(p, &kv->v.i, 8); break;
	case SPA_GGUF_FLOAT32: { float x = (float)kv->v.f; memcpy(p, &x, 4); break; }
	case SPA_GGUF_FLOAT64: memcpy(p, &kv->v.f, 8); break;
	default: break;
	}
}

/* ---------------------------------------------------------------- small helpers */

static void str_free(struct spa_gguf_str *s)
{
	free(s->data);
	s->data = NULL;
	s->len = 0;
}

static int str_dup(struct spa_gguf_str *dst, const char *src, uint64_t len)
{
	dst->data = malloc(len + 1);
	if (!dst->data)
		return -ENOMEM;
	memcpy(dst->data, src, len);
	dst->data[len] = 0;
	dst->len = len;
	return 0;
}

static bool str_eq(const struct spa_gguf_str *s, const char *z)
{
	size_t n = strlen(z);
	return s->len == n && memcmp(s->data, z, n) == 0;
}

static void kv_free(struct spa_gguf_kv *kv)
{
	str_free(&kv->key);
	if (kv->type == SPA_GGUF_STRING) {
		str_free(&kv->v.str);
	} else if (kv->type == SPA_GGUF_ARRAY) {
		if (kv->v.arr.type == SPA_GGUF_STRING && kv->v.arr.data) {
			struct spa_gguf_str *s = kv->v.arr.data;
			for (uint64_t i = 0; i < kv->v.arr.n; i++)
				free(s[i].data);
		}
		free(kv->v.arr.data);
		kv->v.arr.data = NULL;
	}
}

/* Deep copy of a kv (value only: the key is set by the caller). */
static int kv_copy_value(struct spa_gguf_kv *dst, const struct spa_gguf_kv *src)
{
	dst->type = src->type;
	if (src->type == SPA_GGUF_STRING)
		return str_dup(&dst->v.str, src->v.str.data, src->v.str.len);
	if (src->type != SPA_GGUF_ARRAY) {
		dst->v = src->v;
		return 0;
	}
	dst->v.arr.type = src->v.arr.type;
	dst->v.arr.n = 0;
	dst->v.arr.data = NULL;
	uint64_t n = src->v.arr.n;
	if (src->v.arr.type == SPA_GGUF_STRING) {
		if (n > SIZE_MAX / sizeof(struct spa_gguf_str))
			return -ENOMEM;
		struct spa_gguf_str *d = calloc(n ? n : 1, sizeof *d);
		if (!d)
			return -ENOMEM;
		dst->v.arr.data = d;
		dst->v.arr.n = n;
		const struct spa_gguf_str *s = src->v.arr.data;
		for (uint64_t i = 0; i < n; i++)
			if (str_dup(&d[i], s[i].data, s[i].len) < 0)
				return -ENOMEM; /* the caller frees the partial copy */
		return 0;
	}
	uint64_t es = vtype_size[src->v.arr.type];
	if (!es || n > SIZE_MAX / es)
		return -EINVAL;
	void *d = malloc(n && es ? n * es : 1);
	if (!d)
		return -ENOMEM;
	if (n)
		memcpy(d, src->v.arr.data, n * es);
	dst->v.arr.data = d;
	dst->v.arr.n = n;
	return 0;
}

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

static ssize_t pread_full(int fd, void *dst, size_t size, uint64_t off)
{
	size_t done = 0;
	while (done < size) {
		ssize_t r = pread(fd, (char *)dst + done, size - done, (off_t)(off + done));
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

/* ---------------------------------------------------------------- progress bar */

struct progress {
	bool on;
	const char *label;
	const char *path;
	uint64_t total;
	uint64_t done;
	int pct;
};

static void progress_init(struct progress *p, bool show, const char *label, const char *path,
			  uint64_t total)
{
	p->on = show && isatty(STDERR_FILENO);
	p->label = label;
	p->path = path;
	p->total = total;
	p->done = 0;
	p->pct = -1;
}

static void progress_add(struct progress *p, uint64_t n)
{
	p->done += n;
	if (!p->on)
		return;
	int pct = p->total ? (int)(p->done * 100 / p->total) : 100;
	if (pct == p->pct)
		return;
	p->pct = pct;
	char bar[41];
	int fill = pct * 40 / 100;
	memset(bar, '#', (size_t)fill);
	memset(bar + fill, ' ', (size_t)(40 - fill));
	bar[40] = 0;
	fprintf(stderr, "\r%s %s [%s] %3d%% %.1f/%.1f MB", p->label, p->path, bar, pct,
		p->done / 1e6, p->total / 1e6);
}

static void progress_end(struct progress *p)
{
	if (p->on && p->pct >= 0)
		fputc('\n', stderr);
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
			ssize_t r = pread_full(c->fd, c->win, want, c->pos);
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
		uint32_t blck = dtypes[type].blck;
		if (t->ne[0] % blck) {
			rc = cur_fail(c, at, HINT_BAD, "row of %" PRIu64 " elements of %s is not a "
				      "multiple of the %s block (%u)", t->ne[0], c->ctx,
				      dtypes[type].name, blck);
			goto out;
		}
		if (__builtin_mul_overflow(t->n_elems / blck, (uint64_t)dtypes[type].size,
					   &t->size) || t->size > c->size) {
			rc = cur_fail(c, at, HINT_BAD, "byte size of %s (%" PRIu64 " elements of %s) "
				      "overflows or exceeds the file size", c->ctx, t->n_elems,
				      dtypes[type].name);
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
	uint64_t v;
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
	ssize_t r = pread_full(g->fd, dst, size, g->data_offset + off);
	if (r < 0)
		return spa_err(err, (int)r, "%s: cannot read: %s (at byte offset %" PRIu64 "); check "
			       "the disk", g->path, strerror((int)-r), g->data_offset + off);
	if ((size_t)r < size)
		return spa_err(err, -SPA_EFORMAT, "%s: the file shrank after it was opened (at byte "
			       "offset %" PRIu64 "); do not modify a model while it is in use",
			       g->path, g->data_offset + off + (uint64_t)r);
	return 0;
}

static int load_fail_short(const struct spa_gguf *g, uint64_t off, struct spa_errbuf *err)
{
	return spa_err(err, -SPA_EFORMAT, "%s: the file ends early: it shrank after it was opened "
		       "(at byte offset %" PRIu64 "); do not modify a model while it is in use",
		       g->path, g->data_offset + off);
}

static int load_pread(struct spa_gguf *g, uint8_t *buf, uint64_t from, uint64_t size,
		      struct progress *pr, struct spa_errbuf *err)
{
	for (uint64_t off = from; off < size;) {
		size_t n = size - off < LOAD_CHUNK ? (size_t)(size - off) : LOAD_CHUNK;
		ssize_t r = pread_full(g->fd, buf + off, n, g->data_offset + off);
		if (r < 0)
			return spa_err(err, (int)r, "%s: cannot read: %s (at byte offset %" PRIu64
				       "); check the disk", g->path, strerror((int)-r),
				       g->data_offset + off);
		if ((size_t)r < n)
			return load_fail_short(g, off + (uint64_t)r, err);
		off += n;
		progress_add(pr, n);
	}
	return 0;
}

struct rd {
	uint64_t off;   /* into the buffer (= data-section offset) */
	uint64_t len;
	uint64_t done;
	bool busy;
};

static void rd_queue(struct io_uring *ring, int fd, uint8_t *buf, uint64_t data_offset,
		     struct rd *s, unsigned idx)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (!sqe) {
		/* SQ full: hand what is queued to the kernel to make room (depth == slots, so
		 * one submit always frees an entry). */
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	io_uring_prep_read(sqe, fd, buf + s->off + s->done, (unsigned)(s->len - s->done),
			   data_offset + s->off + s->done);
	io_uring_sqe_set_data64(sqe, idx);
}

/* Returns 0, a negative error, or 1 when io_uring cannot be used (the caller reads it all
 * with pread; nothing is in flight then), with the reason in *why. */
static int load_uring(struct spa_gguf *g, uint8_t *buf, uint64_t size, struct progress *pr,
		      struct spa_errbuf *err, int *why)
{
	struct io_uring ring;
	int rc = io_uring_queue_init(LOAD_DEPTH, &ring, 0);
	if (rc < 0) {
		*why = rc;
		return 1;
	}
	struct rd slot[LOAD_DEPTH] = {{0}};
	uint64_t next = 0, done = 0;
	unsigned inflight = 0;
	bool any_ok = false;
	rc = 0;
	while (done < size) {
		for (unsigned i = 0; i < LOAD_DEPTH && next < size; i++) {
			if (slot[i].busy)
				continue;
			uint64_t n = size - next < LOAD_CHUNK ? size - next : LOAD_CHUNK;
			slot[i] = (struct rd){.off = next, .len = n, .busy = true};
			next += n;
			rd_queue(&ring, g->fd, buf, g->data_offset, &slot[i], i);
			inflight++;
		}
		/* Submit and wait in one call: queued reads always reach the kernel before we
		 * sleep on their completions. */
		int s = io_uring_submit_and_wait(&ring, 1);
		if (s < 0 && s != -EINTR && s != -EAGAIN && s != -EBUSY) {
			rc = spa_err(err, s, "%s: io_uring submit failed: %s", g->path, strerror(-s));
			goto drain;
		}
		struct io_uring_cqe *cqe;
		if (io_uring_peek_cqe(&ring, &cqe) != 0)
			continue; /* interrupted before a completion: go round */
		unsigned idx = (unsigned)io_uring_cqe_get_data64(cqe);
		int res = cqe->res;
		io_uring_cqe_seen(&ring, cqe);
		struct rd *sl = &slot[idx];
		inflight--;
		if (res == -EINTR || res == -EAGAIN) {
			rd_queue(&ring, g->fd, buf, g->data_offset, sl, idx);
			inflight++;
			continue;
		}
		if (res < 0) {
			if (!any_ok && (res == -EINVAL || res == -EOPNOTSUPP)) {
				/* A kernel without IORING_OP_READ: use pread for all of it. */
				*why = res;
				rc = 1;
				goto drain;
			}
			rc = spa_err(err, res, "%s: cannot read: %s (at byte offset %" PRIu64 "); "
				     "check the disk", g->path, strerror(-res),
				     g->data_offset + sl->off + sl->done);
			goto drain;
		}
		if (res == 0) {
			rc = load_fail_short(g, sl->off + sl->done, err);
			goto drain;
		}
		any_ok = true;
		sl->done += (uint64_t)res;
		done += (uint64_t)res;
		progress_add(pr, (uint64_t)res);
		if (sl->done < sl->len) {
			/* Short read: resume where it stopped. */
			rd_queue(&ring, g->fd, buf, g->data_offset, sl, idx);
			inflight++;
		} else {
			sl->busy = false;
		}
	}
drain:
	/* Reads still in flight write into buf: wait for them before the caller frees it. */
	if (io_uring_submit(&ring) < 0)
		inflight -= io_uring_sq_ready(&ring); /* never reached the kernel */
	while (inflight) {
		struct io_uring_cqe *cqe;
		int w = io_uring_wait_cqe(&ring, &cqe);
		if (w == -EINTR || w == -EAGAIN)
			continue;
		if (w < 0)
			break;
		io_uring_cqe_seen(&ring, cqe);
		inflight--;
	}
	io_uring_queue_exit(&ring);
	return rc;
}

int spa_gguf_load_data(struct spa_gguf *g, void **out, size_t *out_size, bool show_progress,
		       struct spa_errbuf *err)
{
	*out = NULL;
	*out_size = 0;
	uint64_t size = g->data_size;
	if (size > SIZE_MAX - DATA_ALIGN)
		return spa_err(err, -SPA_ETOOBIG, "%s: data section of %" PRIu64 " bytes does not "
			       "fit in memory", g->path, size);
	size_t cap = ((size_t)size + DATA_ALIGN - 1) / DATA_ALIGN * DATA_ALIGN;
	uint8_t *buf = aligned_alloc(DATA_ALIGN, cap ? cap : DATA_ALIGN);
	if (!buf)
		return spa_err(err, -ENOMEM, "%s: cannot allocate %" PRIu64 " bytes for the tensor "
			       "data; use a smaller model or a machine with more memory", g->path,
			       size);
	memset(buf + size, 0, (cap ? cap : DATA_ALIGN) - (size_t)size);
	int rc = 0;
	if (g->mem) {
		if (size)
			memcpy(buf, g->mem + g->data_offset, (size_t)size);
	} else if (size) {
		struct progress pr;
		progress_init(&pr, show_progress, "loading", g->path, size);
		int why = 0;
		rc = load_uring(g, buf, size, &pr, err, &why);
		if (rc == 1) {
			static atomic_flag warned = ATOMIC_FLAG_INIT;
			if (!atomic_flag_test_and_set(&warned))
				fprintf(stderr, "spa: io_uring is not available (%s); reading tensor "
					"data with pread instead (slower)\n", strerror(-why));
			pr.done = 0;
			rc = load_pread(g, buf, 0, size, &pr, err);
		}
		progress_end(&pr);
	}
	if (rc < 0) {
		free(buf);
		return rc;
	}
	*out = buf;
	*out_size = (size_t)size;
	return 0;
}

/* ---------------------------------------------------------------- writer */

struct wtensor {
	struct spa_gguf_str name;
	enum spa_dtype type;
	uint32_t n_dims;
	uint64_t ne[4];
	uint64_t size;
	const void *data;
	spa_gguf_fill_fn fill;
	void *ctx;
};

struct spa_gguf_writer {
	struct spa_gguf_kv *kv;
	uint64_t n_kv, cap_kv;
	struct wtensor *t;
	uint64_t n_t, cap_t;
};

int spa_gguf_writer_create(struct spa_gguf_writer **out)
{
	*out = calloc(1, sizeof **out);
	return *out ? 0 : -ENOMEM;
}

void spa_gguf_writer_destroy(struct spa_gguf_writer *w)
{
	if (!w)
		return;
	for (uint64_t i = 0; i < w->n_kv; i++)
		kv_free(&w->kv[i]);
	free(w->kv);
	for (uint64_t i = 0; i < w->n_t; i++)
		str_free(&w->t[i].name);
	free(w->t);
	free(w);
}

/* Take ownership of the value in *val (type + v) under key: replaces the value of an existing
 * key in place (keeping its position), else appends. On failure val is freed. */
static int writer_put(struct spa_gguf_writer *w, const char *key, uint64_t key_len,
		      struct spa_gguf_kv *val)
{
	int rc = -EINVAL;
	if (!key || key_len == 0)
		goto fail;
	for (uint64_t i = 0; i < w->n_kv; i++) {
		struct spa_gguf_kv *kv = &w->kv[i];
		if (kv->key.len == key_len && memcmp(kv->key.data, key, key_len) == 0) {
			struct spa_gguf_str k = kv->key;
			kv->key.data = NULL;
			kv_free(kv);
			*kv = *val;
			kv->key = k;
			return 0;
		}
	}
	if (w->n_kv == w->cap_kv) {
		uint64_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
		void *p = realloc(w->kv, cap * sizeof *w->kv);
		rc = -ENOMEM;
		if (!p)
			goto fail;
		w->kv = p;
		w->cap_kv = cap;
	}
	struct spa_gguf_kv *kv = &w->kv[w->n_kv];
	*kv = *val;
	if ((rc = str_dup(&kv->key, key, key_len)) < 0)
		goto fail;
	w->n_kv++;
	return 0;
fail:
	val->key.data = NULL;
	kv_free(val);
	return rc;
}

static int set_scalar(struct spa_gguf_writer *w, const char *key, enum spa_gguf_vtype type,
		      uint64_t u, int64_t i, double f)
{
	struct spa_gguf_kv v = {.type = type};
	if (type == SPA_GGUF_FLOAT32 || type == SPA_GGUF_FLOAT64)
		v.v.f = f;
	else if (vtype_is_signed(type))
		v.v.i = i;
	else
		v.v.u = u;
	return writer_put(w, key, key ? strlen(key) : 0, &v);
}

int spa_gguf_writer_set_u32(struct spa_gguf_writer *w, const char *key, uint32_t v)
{
	return set_scalar(w, key, SPA_GGUF_UINT32, v, 0, 0);
}

int spa_gguf_writer_set_i32(struct spa_gguf_writer *w, const char *key, int32_t v)
{
	return set_scalar(w, key, SPA_GGUF_INT32, 0, v, 0);
}

int spa_gguf_writer_set_u64(struct spa_gguf_writer *w, const char *key, uint64_t v)
{
	return set_scalar(w, key, SPA_GGUF_UINT64, v, 0, 0);
}

int spa_gguf_writer_set_f32(struct spa_gguf_writer *w, const char *key, float v)
{
	return set_scalar(w, key, SPA_GGUF_FLOAT32, 0, 0, v);
}

int spa_gguf_writer_set_bool(struct spa_gguf_writer *w, const char *key, bool v)
{
	return set_scalar(w, key, SPA_GGUF_BOOL, v ? 1 : 0, 0, 0);
}

int spa_gguf_writer_set_str(struct spa_gguf_writer *w, const char *key, const char *s)
{
	if (!s)
		return -EINVAL;
	struct spa_gguf_kv v = {.type = SPA_GGUF_STRING};
	if (str_dup(&v.v.str, s, strlen(s)) < 0)
		return -ENOMEM;
	return writer_put(w, key, key ? strlen(key) : 0, &v);
}

int spa_gguf_writer_set_arr(struct spa_gguf_writer *w, const char *key, enum spa_gguf_vtype type,
			    const void *data, uint64_t n)
{
	if ((unsigned)type >= SPA_GGUF_VTYPE_COUNT || !vtype_size[type] || (n && !data))
		return -EINVAL;
	if (type == SPA_GGUF_BOOL)
		for (uint64_t i = 0; i < n; i++)
			if (((const uint8_t *)data)[i] > 1)
				return -EINVAL;
	struct spa_gguf_kv src = {.type = SPA_GGUF_ARRAY};
	src.v.arr.type = type;
	src.v.arr.n = n;
	src.v.arr.data = (void *)data;
	struct spa_gguf_kv v = {0};
	int rc = kv_copy_value(&v, &src);
	if (rc < 0) {
		kv_free(&v);
		return rc;
	}
	return writer_put(w, key, key ? strlen(key) : 0, &v);
}

int spa_gguf_writer_set_arr_str(struct spa_gguf_writer *w, const char *key,
				const char *const *strs, uint64_t n)
{
	if (n && !strs)
		return -EINVAL;
	if (n > SIZE_MAX / sizeof(struct spa_gguf_str))
		return -ENOMEM;
	struct spa_gguf_kv v = {.type = SPA_GGUF_ARRAY};
	v.v.arr.type = SPA_GGUF_STRING;
	struct spa_gguf_str *d = calloc(n ? n : 1, sizeof *d);
	if (!d)
		return -ENOMEM;
	v.v.arr.data = d;
	v.v.arr.n = n;
	for (uint64_t i = 0; i < n; i++) {
		if (!strs[i] || str_dup(&d[i], strs[i], strlen(strs[i])) < 0) {
			int rc = strs[i] ? -ENOMEM : -EINVAL;
			kv_free(&v);
			return rc;
		}
	}
	return writer_put(w, key, key ? strlen(key) : 0, &v);
}

int spa_gguf_writer_copy_kv(struct spa_gguf_writer *w, const struct spa_gguf_kv *kv)
{
	if (!kv || (unsigned)kv->type >= SPA_GGUF_VTYPE_COUNT || !kv->key.data)
		return -EINVAL;
	if (kv->type == SPA_GGUF_ARRAY &&
	    ((unsigned)kv->v.arr.type >= SPA_GGUF_VTYPE_COUNT || kv->v.arr.type == SPA_GGUF_ARRAY))
		return -EINVAL;
	struct spa_gguf_kv v = {0};
	int rc = kv_copy_value(&v, kv);
	if (rc < 0) {
		kv_free(&v);
		return rc;
	}
	return writer_put(w, kv->key.data, kv->key.len, &v);
}

static int writer_add(struct spa_gguf_writer *w, const char *name, enum spa_dtype type,
		      uint32_t n_dims, const uint64_t *ne, const void *data, spa_gguf_fill_fn fill,
		      void *ctx)
{
	if (!name || !*name || strlen(name) >= GGUF_MAX_NAME || n_dims < 1 || n_dims > 4 || !ne)
		return -EINVAL;
	uint64_t n = 1, size;
	for (uint32_t d = 0; d < n_dims; d++)
		if (ne[d] == 0 || __builtin_mul_overflow(n, ne[d], &n) || n > INT64_MAX)
			return -EINVAL;
	if (!spa_dtype_block_elems(type) || ne[0] % spa_dtype_block_elems(type))
		return -EINVAL;
	if (spa_dtype_row_size(type, n, &size) < 0 || size > SIZE_MAX)
		return -EINVAL;
	for (uint64_t i = 0; i < w->n_t; i++)
		if (str_eq(&w->t[i].name, name))
			return -EEXIST;
	if (w->n_t == w->cap_t) {
		uint64_t cap = w->cap_t ? 2 * w->cap_t : 32;
		void *p = realloc(w->t, cap * sizeof *w->t);
		if (!p)
			return -ENOMEM;
		w->t = p;
		w->cap_t = cap;
	}
	struct wtensor *t = &w->t[w->n_t];
	*t = (struct wtensor){.type = type, .n_dims = n_dims, .size = size, .data = data,
			      .fill = fill, .ctx = ctx};
	for (uint32_t d = 0; d < 4; d++)
		t->ne[d] = d < n_dims ? ne[d] : 1;
	if (str_dup(&t->name, name, strlen(name)) < 0)
		return -ENOMEM;
	w->n_t++;
	return 0;
}

int spa_gguf_writer_add_tensor(struct spa_gguf_writer *w, const char *name, enum spa_dtype type,
			       uint32_t n_dims, const uint64_t *ne, const void *data)
{
	if (!data)
		return -EINVAL;
	return writer_add(w, name, type, n_dims, ne, data, NULL, NULL);
}

int spa_gguf_writer_add_tensor_fn(struct spa_gguf_writer *w, const char *name,
				  enum spa_dtype type, uint32_t n_dims, const uint64_t *ne,
				  spa_gguf_fill_fn fill, void *ctx)
{
	if (!fill)
		return -EINVAL;
	return writer_add(w, name, type, n_dims, ne, NULL, fill, ctx);
}

/* Growable byte buffer for the header. */
struct bbuf {
	uint8_t *p;
	size_t n, cap;
	bool oom;
};

static void bb_put(struct bbuf *b, const void *src, size_t n)
{
	if (b->oom)
		return;
	if (n > b->cap - b->n) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap - b->n < n) {
			if (cap > SIZE_MAX / 2) {
				b->oom = true;
				return;
			}
			cap *= 2;
		}
		void *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, src, n);
	b->n += n;
}

static void bb_u32(struct bbuf *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(struct bbuf *b, uint64_t v) { bb_put(b, &v, 8); }

static void bb_str(struct bbuf *b, const struct spa_gguf_str *s)
{
	bb_u64(b, s->len);
	bb_put(b, s->data, (size_t)s->len);
}

/* The header (everything before the data section, padding included) and tensor offsets. */
static int writer_header(const struct spa_gguf_writer *w, struct bbuf *b, uint64_t *offsets,
			 uint64_t *align_out, uint64_t *data_size, struct spa_errbuf *err,
			 const char *path)
{
	uint64_t align = GGUF_DEFAULT_ALIGN;
	for (uint64_t i = 0; i < w->n_kv; i++) {
		const struct spa_gguf_kv *kv = &w->kv[i];
		if (!str_eq(&kv->key, "general.alignment"))
			continue;
		if (kv->type != SPA_GGUF_UINT32 || kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)))
			return spa_err(err, -SPA_EUSAGE, "%s: general.alignment must be a power-of-two "
				       "uint32", path);
		align = kv->v.u;
	}
	uint64_t off = 0;
	for (uint64_t i = 0; i < w->n_t; i++) {
		offsets[i] = off;
		uint64_t padded = (w->t[i].size + align - 1) & ~(align - 1);
		if (__builtin_add_overflow(off, padded, &off))
			return spa_err(err, -SPA_ETOOBIG, "%s: tensor data too large", path);
	}
	*data_size = off;
	*align_out = align;

	bb_put(b, "GGUF", 4);
	bb_u32(b, GGUF_VERSION_WRITE);
	bb_u64(b, w->n_t);
	bb_u64(b, w->n_kv);
	for (uint64_t i = 0; i < w->n_kv; i++) {
		const struct spa_gguf_kv *kv = &w->kv[i];
		uint8_t s[8];
		bb_str(b, &kv->key);
		bb_u32(b, kv->type);
		switch (kv->type) {
		case SPA_GGUF_STRING:
			bb_str(b, &kv->v.str);
			break;
		case SPA_GGUF_ARRAY:
			bb_u32(b, kv->v.arr.type);
			bb_u64(b, kv->v.arr.n);
			if (kv->v.arr.type == SPA_GGUF_STRING) {
				const struct spa_gguf_str *a = kv->v.arr.data;
				for (uint64_t k = 0; k < kv->v.arr.n; k++)
					bb_str(b, &a[k]);
			} else {
				bb_put(b, kv->v.arr.data, (size_t)(kv->v.arr.n *
								    vtype_size[kv->v.arr.type]));
			}
			break;
		default:
			scalar_encode(kv, s);
			bb_put(b, s, vtype_size[kv->type]);
		}
	}
	for (uint64_t i = 0; i < w->n_t; i++) {
		const struct wtensor *t = &w->t[i];
		bb_str(b, &t->name);
		bb_u32(b, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims; d++)
			bb_u64(b, t->ne[d]);
		bb_u32(b, t->type);
		bb_u64(b, offsets[i]);
	}
	static const uint8_t zero[64];
	while (!b->oom && b->n % align)
		bb_put(b, zero, (size_t)(align - b->n % align) < sizeof zero ?
		       (size_t)(align - b->n % align) : sizeof zero);
	if (b->oom)
		return spa_err(err, -ENOMEM, "%s: out of memory for the GGUF header", path);
	return 0;
}

/* Where written bytes go: a file descriptor or a preallocated memory image. */
struct sink {
	int fd;
	uint8_t *mem;
	uint64_t pos;
	const char *path;
	struct progress pr;
};

static int sink_put(struct sink *s, const void *p, uint64_t n, struct spa_errbuf *err)
{
	if (s->mem) {
		memcpy(s->mem + s->pos, p, (size_t)n);
		s->pos += n;
		return 0;
	}
	const uint8_t *b = p;
	while (n) {
		size_t k = n < (1u << 30) ? (size_t)n : (1u << 30);
		ssize_t r = write(s->fd, b, k);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			int e = errno;
			return spa_err(err, -e, "%s: cannot write: %s; check free space and "
				       "permissions", s->path, strerror(e));
		}
		b += r;
		n -= (uint64_t)r;
		s->pos += (uint64_t)r;
	}
	return 0;
}

static int sink_zeros(struct sink *s, uint64_t n, struct spa_errbuf *err)
{
	static const uint8_t zero[4096];
	while (n) {
		uint64_t k = n < sizeof zero ? n : sizeof zero;
		int rc = sink_put(s, zero, k, err);
		if (rc < 0)
			return rc;
		n -= k;
	}
	return 0;
}

/* Header, then each tensor's data (borrowed, or made by its fill callback into one reusable
 * buffer as large as the largest such tensor) padded with zeros to the alignment. */
static int writer_emit(struct spa_gguf_writer *w, struct sink *s, const struct bbuf *hdr,
		       uint64_t align, struct spa_errbuf *err)
{
	int rc = sink_put(s, hdr->p, hdr->n, err);
	if (rc < 0)
		return rc;
	uint64_t fill_max = 0;
	for (uint64_t i = 0; i < w->n_t; i++)
		if (w->t[i].fill && w->t[i].size > fill_max)
			fill_max = w->t[i].size;
	uint8_t *fbuf = NULL;
	if (fill_max) {
		fbuf = aligned_alloc(DATA_ALIGN, (size_t)((fill_max + DATA_ALIGN - 1) /
							   DATA_ALIGN * DATA_ALIGN));
		if (!fbuf)
			return spa_err(err, -ENOMEM, "%s: cannot allocate %" PRIu64 " bytes to make "
				       "a tensor", s->path, fill_max);
	}
	for (uint64_t i = 0; i < w->n_t; i++) {
		const struct wtensor *t = &w->t[i];
		const void *src = t->data;
		if (t->fill) {
			rc = t->fill(t->ctx, fbuf, (size_t)t->size);
			if (rc < 0) {
				rc = spa_err(err, rc, "%s: making tensor '%s' failed: %s", s->path,
					     t->name.data, spa_strerror(rc));
				goto out;
			}
			src = fbuf;
		}
		if ((rc = sink_put(s, src, t->size, err)) < 0)
			goto out;
		uint64_t pad = (align - t->size % align) % align;
		if ((rc = sink_zeros(s, pad, err)) < 0)
			goto out;
		progress_add(&s->pr, t->size);
	}
	rc = 0;
out:
	free(fbuf);
	return rc;
}

int spa_gguf_writer_write(struct spa_gguf_writer *w, const char *path, bool show_progress,
			  struct spa_errbuf *err)
{
	struct bbuf hdr = {0};
	uint64_t align, data_size;
	uint64_t *offsets = malloc((w->n_t ? w->n_t : 1) * sizeof *offsets);
	char *tmp = NULL;
	int fd = -1, rc;
	if (!offsets) {
		rc = spa_err(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	if ((rc = writer_header(w, &hdr, offsets, &align, &data_size, err, path)) < 0)
		goto out;
	size_t pl = strlen(path);
	tmp = malloc(pl + 8);
	if (!tmp) {
		rc = spa_err(err, -ENOMEM, "%s: out of memory", path);
		goto out;
	}
	memcpy(tmp, path, pl);
	/* A unique temporary name: two processes making the same file do not collide. */
	memcpy(tmp + pl, ".XXXXXX", 8);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd >= 0)
		fchmod(fd, 0644);
	if (fd < 0) {
		int e = errno;
		rc = spa_err(err, -e, "%s: cannot create: %s; check the folder exists and is "
			     "writable", tmp, strerror(e));
		goto out;
	}
	struct sink s = {.fd = fd, .path = tmp};
	progress_init(&s.pr, show_progress, "writing", path, data_size);
	rc = writer_emit(w, &s, &hdr, align, err);
	progress_end(&s.pr);
	if (rc < 0)
		goto out;
	/* Durable before it becomes visible under its name: a crash leaves the old file or the
	 * complete new one, never a torn one. */
	if (fsync(fd) < 0 && errno != EINVAL) {
		int e = errno;
		rc = spa_err(err, -e, "%s: cannot flush: %s; check free space", tmp, strerror(e));
		goto out;
	}
	int c = close(fd);
	fd = -1;
	if (c < 0) {
		int e = errno;
		rc = spa_err(err, -e, "%s: cannot write: %s; check free space", tmp, strerror(e));
		goto out;
	}
	if (rename(tmp, path) < 0) {
		int e = errno;
		rc = spa_err(err, -e, "%s: cannot rename %s into place: %s", path, tmp, strerror(e));
		goto out;
	}
	free(tmp);
	tmp = NULL;
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	if (tmp) {
		unlink(tmp);
		free(tmp);
	}
	free(hdr.p);
	free(offsets);
	return rc;
}

int spa_gguf_writer_write_mem(struct spa_gguf_writer *w, void **out, size_t *out_size,
			      struct spa_errbuf *err)
{
	struct bbuf hdr = {0};
	uint64_t align, data_size, total;
	uint8_t *mem = NULL;
	*out = NULL;
	*out_size = 0;
	uint64_t *offsets = malloc((w->n_t ? w->n_t : 1) * sizeof *offsets);
	int rc;
	if (!offsets) {
		rc = spa_err(err, -ENOMEM, "<memory>: out of memory");
		goto out;
	}
	if ((rc = writer_header(w, &hdr, offsets, &align, &data_size, err, "<memory>")) < 0)
		goto out;
	if (__builtin_add_overflow((uint64_t)hdr.n, data_size, &total) || total > SIZE_MAX) {
		rc = spa_err(err, -SPA_ETOOBIG, "<memory>: a GGUF image of this size does not fit "
			     "in memory");
		goto out;
	}
	mem = malloc((size_t)total);
	if (!mem) {
		rc = spa_err(err, -ENOMEM, "<memory>: cannot allocate %" PRIu64 " bytes", total);
		goto out;
	}
	struct sink s = {.fd = -1, .mem = mem, .path = "<memory>"};
	progress_init(&s.pr, false, "", "", 0);
	if ((rc = writer_emit(w, &s, &hdr, align, err)) < 0)
		goto out;
	*out = mem;
	*out_size = (size_t)total;
	mem = NULL;
	rc = 0;
out:
	free(mem);
	free(hdr.p);
	free(offsets);
	return rc;
}
