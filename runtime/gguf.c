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
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
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
#define DATA_ALIGN 64           /* the loaded data buffer: cache line, AVX-512 friendly */

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

/* ---------------------------------------------------------------- io_uring reader */

#define URING_MAX_BUFS 64                  /* registrations (1 GiB each at most) */
#define URING_BUF_MAX (1ull << 30)         /* the kernel's limit on one registered buffer */
#define URING_CHUNK_MAX (1u << 30)

struct ur_req {
	uint64_t tag;
	uint64_t seq;       /* queue order: the first failure reported is the first queued */
	uint8_t *dst;
	uint64_t off, len;
	uint64_t planned;   /* bytes already cut into pieces */
	uint32_t pending;   /* pieces in flight */
	int err;
	bool used;
};

struct ur_slot {
	uint8_t *dst;
	uint64_t off;
	uint32_t len, done;
	uint32_t req;
	int buf_index;      /* registered buffer, or -1 */
	bool direct;
	bool busy;
};

struct spa_uring_reader {
	struct io_uring ring;
	bool uring;         /* false: pread fallback */
	bool draining;
	int fd, dfd;        /* dfd: our O_DIRECT descriptor, or -1 */
	uint64_t size;
	unsigned depth, flags, align;
	size_t chunk;
	unsigned inflight;  /* busy slots */
	uint64_t seq;
	struct ur_slot *slot;                  /* [depth] */
	struct ur_req req[SPA_URING_MAX_REQS];
	uint32_t freelist[SPA_URING_MAX_REQS];
	unsigned n_free;
	/* the requests in use, unordered, with their tags: a wait scans these few, not every
	 * request (two scans of the 256 took about 1 us a wait, 224 waits a token streaming
	 * the default shape) */
	uint32_t live[SPA_URING_MAX_REQS];
	uint64_t live_tag[SPA_URING_MAX_REQS];
	unsigned n_live;
	uint32_t q[SPA_URING_MAX_REQS];        /* requests with bytes not yet cut, in order */
	unsigned qh, qn;
	struct iovec bufs[URING_MAX_BUFS];
	unsigned n_bufs;
	struct spa_uring_stats st;
	char path[256];
	struct spa_errbuf err;
};

static void ur_path(struct spa_uring_reader *r)
{
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", r->fd);
	ssize_t n = readlink(link, r->path, sizeof r->path - 1);
	if (n <= 0)
		snprintf(r->path, sizeof r->path, "fd %d", r->fd);
	else
		r->path[n] = 0;
}

/* O_DIRECT: our own descriptor of the same file (the caller's fd keeps its flags), and the
 * alignment the filesystem asks for. Returns 0 or the reason it cannot be used. */
static int ur_open_direct(struct spa_uring_reader *r)
{
	struct statx sx;
	unsigned align = 4096;
	if (statx(r->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN)) {
		if (!sx.stx_dio_offset_align)
			return -EINVAL; /* the filesystem says: no O_DIRECT for this file */
		align = sx.stx_dio_offset_align > sx.stx_dio_mem_align ? sx.stx_dio_offset_align
									 : sx.stx_dio_mem_align;
		if (align < 512)
			align = 512;
	}
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", r->fd);
	int dfd = open(link, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	struct stat a, b;
	if (fstat(r->fd, &a) < 0 || fstat(dfd, &b) < 0 || a.st_dev != b.st_dev ||
	    a.st_ino != b.st_ino) {
		close(dfd);
		return -ENOENT; /* the name now points at another file */
	}
	r->dfd = dfd;
	r->align = align;
	return 0;
}

/* CPUs the calling thread may run on (io_uring's kernel workers inherit that mask). */
static unsigned ur_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) < 0)
		return 1;
	int n = CPU_COUNT(&set);
	return n > 0 ? (unsigned)n : 1;
}

int spa_uring_reader_create(struct spa_uring_reader **out, int fd, unsigned depth,
			    unsigned flags, struct spa_errbuf *err)
{
	*out = NULL;
	if (!depth)
		depth = SPA_URING_DEPTH;
	if (depth > SPA_URING_MAX_DEPTH)
		return spa_err(err, -EINVAL, "io_uring reader: depth %u is more than %u; use a "
			       "smaller queue depth", depth, SPA_URING_MAX_DEPTH);
	if (flags & ~(unsigned)(SPA_URING_DIRECT | SPA_URING_PREAD | SPA_URING_QUIET |
			       SPA_URING_ASYNC))
		return spa_err(err, -EINVAL, "io_uring reader: unknown flags 0x%x", flags);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) < 0)
		return spa_err(err, -EBADF, "io_uring reader: descriptor %d is not open", fd);
	if (!S_ISREG(sb.st_mode))
		return spa_err(err, -EINVAL, "io_uring reader: descriptor %d is not a regular file; "
			       "weights must be read from a file", fd);
	struct spa_uring_reader *r = calloc(1, sizeof *r);
	if (!r || !(r->slot = calloc(depth, sizeof *r->slot))) {
		free(r);
		return spa_err(err, -ENOMEM, "io_uring reader: out of memory");
	}
	r->fd = fd;
	r->dfd = -1;
	r->size = (uint64_t)sb.st_size;
	r->depth = depth;
	r->flags = flags;
	r->align = 4096;
	for (unsigned i = 0; i < SPA_URING_MAX_REQS; i++)
		r->freelist[i] = SPA_URING_MAX_REQS - 1 - i;
	r->n_free = SPA_URING_MAX_REQS;
	ur_path(r);
	if (!(flags & SPA_URING_PREAD)) {
		/* Completions without an interrupt of this thread (COOP_TASKRUN): the kernel
		 * flags them (TASKRUN_FLAG) and the reader collects them when it next polls or
		 * waits. Otherwise every read a kernel worker finishes would interrupt the
		 * thread, mid-product, to post it (measured: 8 % of a streaming decode's time
		 * in those interrupts). Kernels before 5.19: without. */
		int rc = io_uring_queue_init(depth, &r->ring, IORING_SETUP_COOP_TASKRUN |
							   IORING_SETUP_TASKRUN_FLAG);
		if (rc == -EINVAL)
			rc = io_uring_queue_init(depth, &r->ring, 0);
		if (rc == 0) {
			r->uring = true;
		} else if (!(flags & SPA_URING_QUIET)) {
			static atomic_flag warned = ATOMIC_FLAG_INIT;
			if (!atomic_flag_test_and_set(&warned))
				fprintf(stderr, "spa: io_uring is not available (%s); reading with "
					"pread instead (slower; check the kernel and its "
					"io_uring_disabled sysctl)\n", strerror(-rc));
		}
	}
	if ((flags & SPA_URING_ASYNC) && r->uring) {
		/* One kernel worker per CPU we may run on, at most one per piece in flight: the
		 * kernel's default (up to 4 per CPU) has them take turns on the same cores, which
		 * measured 15 % slower warm (docs/loading.md). Old kernels: their default. */
		unsigned w = ur_cpus() < depth ? ur_cpus() : depth;
		unsigned lim[2] = {w, w};
		if (io_uring_register_iowq_max_workers(&r->ring, lim) == 0)
			r->st.workers = w;
	}
	if ((flags & SPA_URING_DIRECT) && r->uring) {
		int rc = ur_open_direct(r);
		r->st.direct = rc == 0;
		r->st.direct_refused = rc;
	}
	r->st.uring = r->uring;
	r->st.dio_align = r->align;
	r->chunk = SPA_URING_CHUNK;
	*out = r;
	return 0;
}

int spa_uring_reader_spread_workers(struct spa_uring_reader *r, const int *busy, unsigned n_busy)
{
	if (!r->uring)
		return 0;
	if (r->inflight || r->n_free != SPA_URING_MAX_REQS)
		return -EBUSY; /* the worker must be made before any read */
	cpu_set_t mine, all;
	CPU_ZERO(&all);
	long n = sysconf(_SC_NPROCESSORS_CONF);
	for (long i = 0; i < n && i < CPU_SETSIZE; i++)
		CPU_SET((int)i, &all);
	/* The CPUs no compute thread holds, when there are any: a worker woken on a compute
	 * thread's CPU would copy in turn with its products. */
	cpu_set_t free_cpus = all;
	for (unsigned i = 0; busy && i < n_busy; i++)
		if (busy[i] >= 0 && busy[i] < CPU_SETSIZE)
			CPU_CLR(busy[i], &free_cpus);
	if (CPU_COUNT(&free_cpus) > 0)
		all = free_cpus;
	/* This thread allowed there for a moment: the worker made now takes that. */
	const bool widen = sched_getaffinity(0, sizeof mine, &mine) == 0 &&
			   sched_setaffinity(0, sizeof all, &all) == 0;
	/* One worker for the reads: the kernel keeps a ring's last worker alive when idle, so
	 * the one made here stays the one that copies (more, made later, would take this
	 * thread's pinned affinity). */
	unsigned max[2] = { 1, 1 };
	int rc = io_uring_register_iowq_max_workers(&r->ring, max);
	if (rc == 0)
		rc = io_uring_register_iowq_aff(&r->ring, sizeof all, &all);
	if (rc == 0) {
		/* make it: a one-byte read of the file handed to the workers (IOSQE_ASYNC; the
		 * same kind of work as the reads to come, so the same worker pool), waited for */
		struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
		struct io_uring_cqe *cqe;
		uint8_t byte;
		if (!sqe) {
			rc = -EBUSY;
		} else {
			io_uring_prep_read(sqe, r->fd, &byte, 1, 0);
			io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
			io_uring_sqe_set_data64(sqe, UINT64_MAX);
			rc = io_uring_submit_and_wait(&r->ring, 1);
			if (rc >= 0 && (rc = io_uring_wait_cqe(&r->ring, &cqe)) == 0)
				io_uring_cqe_seen(&r->ring, cqe);
		}
	}
	if (widen)
		(void)sched_setaffinity(0, sizeof mine, &mine);
	return rc < 0 ? rc : 0;
}

int spa_uring_reader_set_chunk(struct spa_uring_reader *r, size_t chunk)
{
	if (!chunk)
		chunk = SPA_URING_CHUNK;
	if (chunk > URING_CHUNK_MAX)
		return -EINVAL;
	r->chunk = (chunk + r->align - 1) / r->align * r->align;
	return 0;
}

static int ur_find_buf(const struct spa_uring_reader *r, const uint8_t *p, uint64_t len)
{
	for (unsigned i = 0; i < r->n_bufs; i++) {
		const uint8_t *b = r->bufs[i].iov_base;
		if (p >= b && (uint64_t)(p - b) <= r->bufs[i].iov_len &&
		    len <= r->bufs[i].iov_len - (uint64_t)(p - b))
			return (int)i;
	}
	return -1;
}

int spa_uring_reader_register(struct spa_uring_reader *r, const struct iovec *iov, unsigned n,
			      struct spa_errbuf *err)
{
	if (!r->uring)
		return 0;
	if (r->inflight || r->qn)
		return spa_err(err, -EBUSY, "io_uring reader: cannot register buffers with reads "
			       "in flight; wait for them first");
	if (r->n_bufs) {
		io_uring_unregister_buffers(&r->ring);
		r->n_bufs = 0;
	}
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++) {
		uint8_t *b = iov[i].iov_base;
		for (uint64_t left = iov[i].iov_len; left;) {
			if (k == URING_MAX_BUFS)
				return spa_err(err, -EINVAL, "io_uring reader: more than %u GiB of "
					       "registered buffers (or more than %u regions)",
					       URING_MAX_BUFS, URING_MAX_BUFS);
			uint64_t m = left < URING_BUF_MAX ? left : URING_BUF_MAX;
			r->bufs[k++] = (struct iovec){.iov_base = b, .iov_len = (size_t)m};
			b += m;
			left -= m;
		}
	}
	if (!k)
		return 0;
	int rc = io_uring_register_buffers(&r->ring, r->bufs, k);
	if (rc < 0)
		return spa_err(err, rc, "io_uring reader: cannot register %u buffers: %s%s", k,
			       strerror(-rc), rc == -ENOMEM ? " (raise RLIMIT_MEMLOCK: ulimit -l)"
							    : "");
	r->n_bufs = k;
	return 0;
}

static void ur_prep(struct spa_uring_reader *r, unsigned i)
{
	struct ur_slot *s = &r->slot[i];
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	if (!sqe) {
		/* Cannot happen (the SQ holds depth entries and at most depth slots wait in
		 * it), but a full SQ only needs a submit to make room. */
		io_uring_submit(&r->ring);
		sqe = io_uring_get_sqe(&r->ring);
	}
	int fd = s->direct ? r->dfd : r->fd;
	if (s->buf_index >= 0)
		io_uring_prep_read_fixed(sqe, fd, s->dst + s->done, s->len - s->done,
					 s->off + s->done, s->buf_index);
	else
		io_uring_prep_read(sqe, fd, s->dst + s->done, s->len - s->done, s->off + s->done);
	io_uring_sqe_set_data64(sqe, i);
	if ((r->flags & SPA_URING_ASYNC) && !s->direct)
		io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
	r->st.pieces++;
	r->st.pieces_fixed += s->buf_index >= 0;
}

static bool ur_aligned(const struct spa_uring_reader *r, const uint8_t *dst, uint64_t off,
		       uint64_t len)
{
	return ((uintptr_t)dst % r->align) == 0 && off % r->align == 0 && len % r->align == 0;
}

/* Cut the next piece of request q into free slot i. */
static void ur_cut(struct spa_uring_reader *r, struct ur_req *q, unsigned i)
{
	uint64_t p = q->off + q->planned, end = q->off + q->len, A = r->align, stop;
	bool direct = false;
	uint64_t a0 = (q->off + A - 1) / A * A, a1 = end / A * A;
	if (r->dfd >= 0 && ((uintptr_t)q->dst % A) == q->off % A && a0 < a1) {
		if (p < a0) {
			stop = a0;
		} else if (p < a1) {
			stop = a1 - p < r->chunk ? a1 : p + r->chunk;
			direct = true;
		} else {
			stop = end - p < r->chunk ? end : p + r->chunk;
		}
	} else {
		stop = end - p < r->chunk ? end : p + r->chunk;
	}
	struct ur_slot *s = &r->slot[i];
	*s = (struct ur_slot){.dst = q->dst + q->planned, .off = p, .len = (uint32_t)(stop - p),
			      .req = (uint32_t)(q - r->req), .direct = direct, .busy = true};
	s->buf_index = ur_find_buf(r, s->dst, s->len);
	q->planned += stop - p;
	q->pending++;
	r->inflight++;
	ur_prep(r, i);
}

/* Fill free slots with queued pieces, in order. */
static void ur_fill(struct spa_uring_reader *r)
{
	unsigned i = 0;
	while (r->qn && r->inflight < r->depth) {
		struct ur_req *q = &r->req[r->q[r->qh]];
		if (q->err || q->planned == q->len) {
			r->qh = (r->qh + 1) % SPA_URING_MAX_REQS;
			r->qn--;
			continue;
		}
		while (r->slot[i].busy)
			i++;
		ur_cut(r, q, i);
	}
}

static void ur_fail(struct spa_uring_reader *r, struct ur_req *q, int code, const char *fmt,
		    ...) __attribute__((format(printf, 4, 5)));
static void ur_fail(struct spa_uring_reader *r, struct ur_req *q, int code, const char *fmt, ...)
{
	if (q->err)
		return;
	q->err = code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->err.msg, sizeof r->err.msg, fmt, ap);
	va_end(ap);
}

static void ur_complete(struct spa_uring_reader *r, unsigned i, int res)
{
	struct ur_slot *s = &r->slot[i];
	struct ur_req *q = &r->req[s->req];
	if (r->draining)
		goto done;
	if (res == -EINTR || res == -EAGAIN) {
		r->st.retries++;
		ur_prep(r, i);
		return;
	}
	if (s->direct && (res == -EINVAL || res == -EOPNOTSUPP)) {
		/* The filesystem refuses O_DIRECT here: buffered from now on, this piece too. */
		close(r->dfd);
		r->dfd = -1;
		r->st.direct = false;
		r->st.direct_refused = res;
		s->direct = false;
		ur_prep(r, i);
		return;
	}
	if (res < 0) {
		ur_fail(r, q, res, "%s: cannot read %u bytes at offset %" PRIu64 ": %s; check the "
			"disk", r->path, s->len - s->done, s->off + s->done, strerror(-res));
		goto done;
	}
	if (res == 0) {
		ur_fail(r, q, -SPA_EFORMAT, "%s: the file ends at byte %" PRIu64 ", before the end "
			"of a read (%" PRIu64 "): it shrank after it was opened; do not modify a "
			"model while it is in use", r->path, s->off + s->done, q->off + q->len);
		goto done;
	}
	s->done += (uint32_t)res;
	r->st.bytes += (uint64_t)res;
	if (s->direct)
		r->st.bytes_direct += (uint64_t)res;
	if (s->done < s->len) {
		/* Short read: resume where it stopped (buffered if O_DIRECT lost alignment). */
		r->st.short_reads++;
		if (s->direct && !ur_aligned(r, s->dst + s->done, s->off + s->done, s->len - s->done))
			s->direct = false;
		ur_prep(r, i);
		return;
	}
done:
	s->busy = false;
	q->pending--;
	r->inflight--;
}

/* Submit what is queued in the SQ; reap every completion there is. */
static int ur_progress(struct spa_uring_reader *r)
{
	int rc = 0;
	if (io_uring_sq_ready(&r->ring)) {
		int s = io_uring_submit(&r->ring);
		if (s < 0 && s != -EINTR && s != -EAGAIN && s != -EBUSY)
			rc = spa_err(&r->err, s, "%s: io_uring submit failed: %s", r->path,
				     strerror(-s));
	}
	/* completions the kernel holds back for this thread (COOP_TASKRUN) */
	if (IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_TASKRUN)
		(void)io_uring_get_events(&r->ring);
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	io_uring_for_each_cqe(&r->ring, head, cqe) {
		ur_complete(r, (unsigned)io_uring_cqe_get_data64(cqe), cqe->res);
		n++;
	}
	io_uring_cq_advance(&r->ring, n);
	return rc;
}

int spa_uring_poll(struct spa_uring_reader *r)
{
	if (!r->uring)
		return 0;
	int rc = 0;
	for (int round = 0; round < 2; round++) {
		ur_fill(r);
		rc = ur_progress(r);
	}
	ur_fill(r);
	if (io_uring_sq_ready(&r->ring))
		io_uring_submit(&r->ring);
	return rc;
}

int spa_uring_read_async(struct spa_uring_reader *r, void *dst, uint64_t off, size_t len,
			 uint64_t tag)
{
	if (off > r->size || len > r->size - off)
		return spa_err(&r->err, -EINVAL, "%s: read of %zu bytes at offset %" PRIu64 " goes "
			       "past the end of the file (%" PRIu64 " bytes)", r->path, len, off,
			       r->size);
	if (tag == SPA_URING_ALL)
		return spa_err(&r->err, -EINVAL, "%s: SPA_URING_ALL is not a tag for a read",
			       r->path);
	if (!r->n_free)
		return spa_err(&r->err, -EBUSY, "%s: %u reads queued and not waited for; wait for "
			       "some first", r->path, SPA_URING_MAX_REQS);
	if (!r->uring && len) {
		ssize_t n = pread_full(r->fd, dst, len, off);
		if (n < 0)
			return spa_err(&r->err, (int)n, "%s: cannot read %zu bytes at offset %" PRIu64
				       ": %s; check the disk", r->path, len, off, strerror((int)-n));
		if ((size_t)n < len)
			return spa_err(&r->err, -SPA_EFORMAT, "%s: the file ends at byte %" PRIu64
				       ": it shrank after it was opened; do not modify a model "
				       "while it is in use", r->path, off + (uint64_t)n);
		r->st.bytes += len;
		r->st.pieces++;
	}
	uint32_t k = r->freelist[--r->n_free];
	struct ur_req *q = &r->req[k];
	*q = (struct ur_req){.tag = tag, .seq = r->seq++, .dst = dst, .off = off, .len = len,
			     .planned = r->uring ? 0 : len, .used = true};
	r->live[r->n_live] = k;
	r->live_tag[r->n_live++] = tag;
	if (q->planned < q->len) {
		r->q[(r->qh + r->qn) % SPA_URING_MAX_REQS] = k;
		r->qn++;
		ur_fill(r);
		if (io_uring_sq_ready(&r->ring))
			io_uring_submit(&r->ring); /* errors come back at poll / wait */
	}
	return 0;
}

static int64_t ur_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int spa_uring_wait(struct spa_uring_reader *r, uint64_t tag, int64_t timeout_ns)
{
	int64_t deadline = timeout_ns > 0 ? ur_now_ns() + timeout_ns : 0;
	for (;;) {
		int rc = r->uring ? spa_uring_poll(r) : 0;
		if (rc < 0)
			return rc;
		bool any = false, open = false;
		for (unsigned j = 0; j < r->n_live; j++) {
			if (tag != SPA_URING_ALL && r->live_tag[j] != tag)
				continue;
			const struct ur_req *q = &r->req[r->live[j]];
			any = true;
			if (q->pending || (!q->err && q->planned < q->len))
				open = true;
		}
		if (!any)
			return tag == SPA_URING_ALL ? 0 : -ENOENT;
		if (!open) {
			int err = 0;
			uint64_t first = UINT64_MAX;
			/* backwards: the last entry moved into a freed place was already seen */
			for (unsigned j = r->n_live; j-- > 0;) {
				if (tag != SPA_URING_ALL && r->live_tag[j] != tag)
					continue;
				const uint32_t k = r->live[j];
				struct ur_req *q = &r->req[k];
				if (q->err && q->seq < first) {
					first = q->seq;
					err = q->err;
				}
				q->used = false;
				r->freelist[r->n_free++] = k;
				r->n_live--;
				r->live[j] = r->live[r->n_live];
				r->live_tag[j] = r->live_tag[r->n_live];
			}
			return err;
		}
		if (timeout_ns == 0)
			return -ETIME;
		struct io_uring_cqe *cqe;
		int w;
		if (timeout_ns < 0) {
			w = io_uring_wait_cqe(&r->ring, &cqe);
		} else {
			int64_t left = deadline - ur_now_ns();
			if (left <= 0)
				return -ETIME;
			struct __kernel_timespec ts = {.tv_sec = left / 1000000000,
						       .tv_nsec = left % 1000000000};
			w = io_uring_wait_cqe_timeout(&r->ring, &cqe, &ts);
		}
		if (w < 0 && w != -ETIME && w != -EINTR && w != -EAGAIN)
			return spa_err(&r->err, w, "%s: io_uring wait failed: %s", r->path,
				       strerror(-w));
	}
}

void spa_uring_reader_stats(const struct spa_uring_reader *r, struct spa_uring_stats *st)
{
	*st = r->st;
}

const char *spa_uring_reader_errmsg(const struct spa_uring_reader *r)
{
	return r->err.msg;
}

void spa_uring_reader_destroy(struct spa_uring_reader *r)
{
	if (!r)
		return;
	if (r->uring) {
		/* Reads in flight write into caller memory: let them end before returning. */
		r->draining = true;
		if (io_uring_sq_ready(&r->ring) && io_uring_submit(&r->ring) < 0)
			r->inflight -= io_uring_sq_ready(&r->ring); /* never reached the kernel */
		while (r->inflight) {
			struct io_uring_cqe *cqe;
			int w = io_uring_wait_cqe(&r->ring, &cqe);
			if (w == -EINTR || w == -EAGAIN)
				continue;
			if (w < 0)
				break;
			ur_complete(r, (unsigned)io_uring_cqe_get_data64(cqe), cqe->res);
			io_uring_cqe_seen(&r->ring, cqe);
		}
		io_uring_queue_exit(&r->ring);
	}
	if (r->dfd >= 0)
		close(r->dfd);
	free(r->slot);
	free(r);
}

/* ---------------------------------------------------------------- data loading */

#define LOAD_ALIGN 4096 /* the loaded buffer: page aligned (O_DIRECT, huge pages) */

static int load_env(enum spa_load_mode *mode, unsigned *depth, struct spa_errbuf *err)
{
	const char *e = getenv("SPA_LOAD");
	if (*mode == SPA_LOAD_AUTO && e && *e && strcmp(e, "auto")) {
		if (!strcmp(e, "buffered"))
			*mode = SPA_LOAD_BUFFERED;
		else if (!strcmp(e, "direct"))
			*mode = SPA_LOAD_DIRECT;
		else if (!strcmp(e, "pread"))
			*mode = SPA_LOAD_PREAD;
		else if (!strcmp(e, "mapped"))
			*mode = SPA_LOAD_MAPPED;
		else
			return spa_err(err, -SPA_EUSAGE, "SPA_LOAD=%s: expected mapped, buffered, "
				       "direct, pread or auto", e);
	}
	const char *de = getenv("SPA_LOAD_DEPTH");
	if (!*depth && de && *de) {
		char *end;
		unsigned long d = strtoul(de, &end, 10);
		if (*end || d < 1 || d > SPA_URING_MAX_DEPTH)
			return spa_err(err, -SPA_EUSAGE, "SPA_LOAD_DEPTH=%s: expected 1..%u", de,
				       SPA_URING_MAX_DEPTH);
		*depth = (unsigned)d;
	}
	return 0;
}

/* Fraction of [off, off + size) of the file in the page cache, or -1 when it cannot be told:
 * mincore on a mapping that is never touched, over LOAD_RES_WINDOWS windows of
 * LOAD_RES_PAGES pages spread evenly (every page when the range is smaller). Sampled because
 * mincore of every page of an unmapped range looks each up in the page cache: 20-30 ms per
 * GB here, a fifth of a warm load. */
#define LOAD_RES_WINDOWS 256
#define LOAD_RES_PAGES 16

static double load_resident(int fd, uint64_t off, uint64_t size)
{
	uint64_t base = off / LOAD_ALIGN * LOAD_ALIGN, len = off + size - base;
	if (!size || len > SIZE_MAX)
		return -1;
	void *m = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, fd, (off_t)base);
	if (m == MAP_FAILED)
		return -1;
	uint64_t pages = (len + LOAD_ALIGN - 1) / LOAD_ALIGN, w = LOAD_RES_WINDOWS;
	uint64_t span = LOAD_RES_PAGES;
	if (pages <= w * span) {
		w = 1;
		span = pages;
	}
	unsigned char vec[LOAD_RES_WINDOWS * LOAD_RES_PAGES];
	uint64_t in = 0, seen = 0;
	double res = -1;
	for (uint64_t i = 0; i < w; i++) {
		uint64_t first = i * (pages / w), k = pages - first < span ? pages - first : span;
		for (uint64_t done = 0; done < k;) {
			uint64_t c = k - done < sizeof vec ? k - done : sizeof vec;
			uint64_t at = (first + done) * LOAD_ALIGN;
			uint64_t bytes = c * LOAD_ALIGN < len - at ? c * LOAD_ALIGN : len - at;
			if (mincore((uint8_t *)m + at, (size_t)bytes, vec) < 0)
				goto out;
			for (uint64_t j = 0; j < c; j++)
				in += vec[j] & 1;
			done += c;
		}
		seen += k;
	}
	res = (double)in / (double)seen;
out:
	munmap(m, (size_t)len);
	return res;
}

/* The bar at base + what reader r has read of its size bytes. */
static void load_progress(struct spa_uring_reader *r, struct progress *pr, uint64_t base,
			  uint64_t size)
{
	struct spa_uring_stats st;
	spa_uring_reader_stats(r, &st);
	uint64_t got = base + (st.bytes < size ? st.bytes : size);
	if (got > pr->done)
		progress_add(pr, got - pr->done);
}

/* O_DIRECT into a destination whose place does not agree with the file offset modulo the
 * O_DIRECT alignment (a data section that does not start on a block boundary, loaded into a
 * page-aligned buffer): the file is read aligned into `depth` registered staging buffers of
 * `chunk` bytes and copied to dst as each arrives, while the next reads are in flight. The
 * copy costs memory bandwidth only, which is 4x or more the disk's here. */
static int load_staged(struct spa_gguf *g, struct spa_uring_reader *r, uint8_t *dst,
		       uint8_t *stage, unsigned depth, size_t chunk, struct progress *pr,
		       struct spa_errbuf *err)
{
	uint64_t foff = g->data_offset, end = foff + g->data_size;
	uint64_t base = foff / LOAD_ALIGN * LOAD_ALIGN;
	uint64_t n = (end - base + chunk - 1) / chunk, issued = 0;
	struct iovec iov = {.iov_base = stage, .iov_len = (size_t)depth * chunk};
	spa_uring_reader_register(r, &iov, 1, NULL); /* plain reads when refused */
	int rc = 0;
	for (uint64_t k = 0; k < n; k++) {
		for (; issued < n && issued < k + depth; issued++) {
			uint64_t at = base + issued * chunk;
			size_t len = end - at < chunk ? (size_t)(end - at) : chunk;
			rc = spa_uring_read_async(r, stage + (issued % depth) * chunk, at, len,
						  issued);
			if (rc < 0)
				return spa_err(err, rc, "%s", spa_uring_reader_errmsg(r));
		}
		while ((rc = spa_uring_wait(r, k, 100000000)) == -ETIME)
			load_progress(r, pr, 0, g->data_size);
		if (rc < 0)
			return spa_err(err, rc, "%s", spa_uring_reader_errmsg(r));
		uint64_t at = base + k * chunk, stop = end - at < chunk ? end : at + chunk;
		uint64_t from = at < foff ? foff : at;
		memcpy(dst + (from - foff), stage + (k % depth) * chunk + (from - at),
		       (size_t)(stop - from));
		load_progress(r, pr, 0, g->data_size);
	}
	return 0;
}

/* Mapped copy (SPA_LOAD_MAPPED): the data section is mapped from the page cache and copied
 * into the destination with memcpy, by the calling thread and one helper thread per further
 * CPU it may run on (at most LOAD_MAP_THREADS in all), each its share in as few memcpy calls
 * as it can: LOAD_MAP_SEG bytes (or spa_load_opts.chunk) per memcpy (glibc's copy of
 * hundreds of MB streams with non-temporal stores; cut into 64 MiB pieces it was 25 %
 * slower). Faster than a read() or io_uring copy of warm data:
 * the kernel's copy_to_user goes one 4 KiB page at a time (10 GB/s per core here, where
 * memcpy from a mapping streams at 14-15 GB/s per core).
 *
 * A mapping turns a file that shrinks into SIGBUS, so the copy runs under a read lease
 * (F_SETLEASE) on a descriptor of our own: while it is held, whoever opens the file for
 * writing or truncates it waits for us to let go, up to /proc/sys/fs/lease-break-time
 * seconds (45 by default; below LOAD_MAP_BREAK_MIN no lease is taken). The lease's owner is
 * cleared once it is granted, so that a break sends no signal (SIGIO would end the
 * process); before each piece of at most LOAD_MAP_SEG bytes (well under a second to copy)
 * the copiers check F_GETLEASE, and on a break they stop, the mapping and the lease go,
 * and what is left is read with io_uring, which reports a file that shrank as an error. No
 * lease (a file someone has open for writing, not ours without CAP_LEASE, a filesystem
 * without leases): -EAGAIN, and the caller reads buffered instead. */
#define LOAD_MAP_SEG (256u << 20)
#define LOAD_MAP_THREADS 4
#define LOAD_MAP_BREAK_MIN 10       /* seconds */
#define LOAD_MAP_ALIGN (2u << 20)   /* map from a 2 MiB boundary: huge folios map whole */

/* Shares of total bytes for the copier threads: at most one per CPU the caller may run on
 * (LOAD_MAP_THREADS at most), each a multiple of LOAD_MAP_ALIGN, *per bytes (the last one
 * what is left). Returns the most shares there may be; cut [0, total) into pieces of *per
 * while any is left. */
static unsigned load_shares(uint64_t total, uint64_t *per)
{
	unsigned n = ur_cpus() < LOAD_MAP_THREADS ? ur_cpus() : LOAD_MAP_THREADS;
	*per = ((total + n - 1) / n + LOAD_MAP_ALIGN - 1) / LOAD_MAP_ALIGN * LOAD_MAP_ALIGN;
	return n;
}

/* fn on each of the k jobs (size bytes apart from jobs): the first on the calling thread, one
 * new thread each for the others; a job whose thread could not start runs on the caller. */
static void run_jobs(void *(*fn)(void *), void *jobs, size_t size, unsigned k)
{
	pthread_t th[LOAD_MAP_THREADS];
	bool started[LOAD_MAP_THREADS] = {false};
	uint8_t *j = jobs;
	for (unsigned i = 1; i < k; i++)
		started[i] = pthread_create(&th[i], NULL, fn, j + i * size) == 0;
	if (k)
		fn(j);
	for (unsigned i = 1; i < k; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			fn(j + i * size);
	}
}

static int load_shrank(const struct spa_gguf *g, uint64_t now, struct spa_errbuf *err)
{
	return spa_err(err, -SPA_EFORMAT, "%s: the file ends at byte %" PRIu64 ", before the end "
		       "of the data section (%" PRIu64 "): it shrank after it was opened; do not "
		       "modify a model while it is in use", g->path, now,
		       g->data_offset + g->data_size);
}

/* /proc/sys/fs/lease-break-time, or -1. */
static int lease_break_time(void)
{
	int fd = open("/proc/sys/fs/lease-break-time", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	char b[32];
	ssize_t n = read(fd, b, sizeof b - 1);
	close(fd);
	if (n <= 0)
		return -1;
	b[n] = 0;
	return atoi(b);
}

struct map_job {
	const uint8_t *src;
	uint8_t *dst;
	size_t len;
	size_t done;        /* bytes copied from the start of this share */
	size_t seg;         /* bytes per memcpy, the lease checked before each */
	int lfd;            /* the leased descriptor */
	atomic_bool *stop;
};

static void *map_copy(void *arg)
{
	struct map_job *j = arg;
	while (j->done < j->len && !atomic_load_explicit(j->stop, memory_order_relaxed)) {
		if (fcntl(j->lfd, F_GETLEASE) != F_RDLCK) {
			atomic_store(j->stop, true); /* a writer waits for us: let go */
			break;
		}
		size_t n = j->len - j->done < j->seg ? j->len - j->done : j->seg;
		memcpy(j->dst + j->done, j->src + j->done, n);
		j->done += n;
	}
	return NULL;
}

/* Returns 0 with *left = 0 when all of it was copied; 0 with the jobs' unfinished tails to
 * read otherwise (*left > 0, jobs[] filled, *n_jobs set); -EAGAIN when no lease (nothing
 * done); -SPA_EFORMAT (file shorter than the data section) with err filled. */
static int load_mapped(struct spa_gguf *g, uint8_t *dst, size_t seg, struct map_job *jobs,
		       unsigned *n_jobs, uint64_t *left, struct spa_errbuf *err)
{
	uint64_t off = g->data_offset, size = g->data_size;
	uint64_t base = off / LOAD_MAP_ALIGN * LOAD_MAP_ALIGN, len = off + size - base;
	*left = 0;
	*n_jobs = 0;
	if (len > SIZE_MAX || lease_break_time() < LOAD_MAP_BREAK_MIN)
		return -EAGAIN;
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", g->fd);
	int lfd = open(link, O_RDONLY | O_CLOEXEC);
	if (lfd < 0)
		return -EAGAIN;
	struct stat a, b;
	int rc = -EAGAIN;
	/* A signal that is ignored by default for the moment between the grant and clearing
	 * the owner (SIGIO's default is to end the process). */
	if (fstat(g->fd, &a) < 0 || fstat(lfd, &b) < 0 || a.st_dev != b.st_dev ||
	    a.st_ino != b.st_ino || fcntl(lfd, F_SETSIG, SIGURG) < 0 ||
	    fcntl(lfd, F_SETLEASE, F_RDLCK) < 0) {
		close(lfd);
		return -EAGAIN;
	}
	fcntl(lfd, F_SETOWN, 0);
	/* Under the lease nobody can be shrinking the file: its size now is the size while
	 * we copy. */
	if (fstat(lfd, &b) < 0)
		goto out;
	if ((uint64_t)b.st_size < off + size) {
		rc = load_shrank(g, (uint64_t)b.st_size, err);
		goto out;
	}
	uint8_t *m = mmap(NULL, (size_t)len, PROT_READ, MAP_SHARED, lfd, (off_t)base);
	if (m == MAP_FAILED)
		goto out;
	madvise(m, (size_t)len, MADV_SEQUENTIAL);
	/* One share per copier (huge pages of the destination are then faulted by one thread
	 * each). */
	atomic_bool stop = false;
	uint64_t per;
	unsigned n = load_shares(size, &per), k = 0;
	for (uint64_t at = 0; at < size && k < n; k++) {
		uint64_t l = per < size - at ? per : size - at;
		jobs[k] = (struct map_job){.src = m + (off - base) + at, .dst = dst + at,
					   .len = (size_t)l, .seg = seg, .lfd = lfd,
					   .stop = &stop};
		at += l;
	}
	run_jobs(map_copy, jobs, sizeof jobs[0], k);
	munmap(m, (size_t)len);
	for (unsigned i = 0; i < k; i++)
		*left += jobs[i].len - jobs[i].done;
	*n_jobs = k;
	rc = 0;
out:
	fcntl(lfd, F_SETLEASE, F_UNLCK);
	close(lfd);
	return rc;
}

/* Fault a fresh buffer in on every CPU the caller may run on (LOAD_MAP_THREADS at most), in
 * 2 MiB-multiple shares, before a load that would fault it in on one thread (O_DIRECT: the
 * submitting thread pins each piece's pages; pread; buffered inline). In this VM, memory
 * freed a while ago has gone back to the host and the first touch of each page costs a host
 * fault: 2-3 s per GB on one thread, 0.9-1.2 s on two. The mapped copy and the kernel
 * workers fault the buffer in on all CPUs as they copy, and are not preceded by this. */
struct fault_job {
	uint8_t *p;
	size_t n;
};

static void *load_fault(void *arg)
{
	struct fault_job *j = arg;
	if (madvise(j->p, j->n, MADV_POPULATE_WRITE) < 0) /* before Linux 5.14: touch */
		for (size_t i = 0; i < j->n; i += LOAD_ALIGN)
			((volatile uint8_t *)j->p)[i] = 0;
	return NULL;
}

static void load_prefault(uint8_t *buf, size_t cap)
{
	struct fault_job jobs[LOAD_MAP_THREADS];
	uint64_t per;
	unsigned n = load_shares(cap, &per), k = 0;
	for (size_t at = 0; at < cap && k < n; k++) {
		size_t l = per < cap - at ? (size_t)per : cap - at;
		jobs[k] = (struct fault_job){.p = buf + at, .n = l};
		at += l;
	}
	run_jobs(load_fault, jobs, sizeof jobs[0], k);
}

/* The strategy SPA_LOAD_AUTO picks, and why (docs/loading.md has the measurements):
 *  - data mostly in the page cache (mincore): mapped copy (load_mapped), as fast as
 *    mmap + memcpy on one CPU and faster on two, where one core copying in the kernel is
 *    0.55-0.8x of it; where no lease can be had, buffered io_uring with the copies done by
 *    the kernel's workers, one per CPU the caller may run on (inline on one CPU).
 *  - mostly not: O_DIRECT, 8 reads of 4 MiB in flight: the disk's full rate (2 GB/s here)
 *    with no page cache to allocate, where read() and buffered io_uring pay for fresh
 *    page-cache pages (0.3-0.7 GB/s in this VM once freed memory went back to the host). */
static int load_into(struct spa_gguf *g, uint8_t *dst, size_t fresh,
		     const struct spa_load_opts *o, struct progress *pr, struct spa_errbuf *err)
{
	enum spa_load_mode mode = o->mode;
	unsigned depth = o->depth;
	uint64_t size = g->data_size;
	int rc;
	if ((rc = load_env(&mode, &depth, err)) < 0)
		return rc;
	if (g->mem || !size) {
		if (size)
			memcpy(dst, g->mem + g->data_offset, (size_t)size);
		if (o->used)
			*o->used = mode == SPA_LOAD_AUTO ? SPA_LOAD_BUFFERED : mode;
		return 0;
	}
	struct stat sb;
	if (fstat(g->fd, &sb) == 0 && (uint64_t)sb.st_size < g->data_offset + size)
		return load_shrank(g, (uint64_t)sb.st_size, err);
	if (mode == SPA_LOAD_AUTO) {
		double res = load_resident(g->fd, g->data_offset, size);
		mode = res >= 0 && res < 0.5 ? SPA_LOAD_DIRECT : SPA_LOAD_MAPPED;
	}
	struct map_job jobs[LOAD_MAP_THREADS];
	unsigned n_jobs = 0;
	uint64_t left = 0;
	if (mode == SPA_LOAD_MAPPED) {
		size_t seg = o->chunk ? o->chunk : (size_t)LOAD_MAP_SEG;
		rc = load_mapped(g, dst, seg, jobs, &n_jobs, &left, err);
		if (rc == -EAGAIN) {
			mode = SPA_LOAD_BUFFERED; /* no lease: nothing was done */
		} else if (rc < 0) {
			return rc;
		} else {
			progress_add(pr, size - left);
			if (!left) {
				if (o->used)
					*o->used = SPA_LOAD_MAPPED;
				return 0;
			}
			/* A writer broke the lease: the rest, buffered (it may fail: shrank). */
		}
	}
	if (o->used)
		*o->used = mode;
	unsigned flags = mode == SPA_LOAD_DIRECT ? SPA_URING_DIRECT
		       : mode == SPA_LOAD_PREAD ? SPA_URING_PREAD : 0;
	if ((mode == SPA_LOAD_BUFFERED || mode == SPA_LOAD_MAPPED) && !o->no_workers &&
	    ur_cpus() > 1)
		flags |= SPA_URING_ASYNC;
	if (fresh >= LOAD_MAP_ALIGN && !n_jobs && !(flags & SPA_URING_ASYNC) && !o->no_prefault &&
	    ur_cpus() > 1)
		load_prefault(dst, fresh);
	struct spa_uring_reader *r = NULL;
	uint8_t *stage = NULL;
	if ((rc = spa_uring_reader_create(&r, g->fd, depth, flags, err)) < 0)
		return rc;
	/* The reader took the file's size; a writer may have cut it since the check above
	 * (or after breaking the mapped copy's lease). */
	if (fstat(g->fd, &sb) == 0 && (uint64_t)sb.st_size < g->data_offset + size) {
		rc = load_shrank(g, (uint64_t)sb.st_size, err);
		goto out;
	}
	size_t chunk = o->chunk ? o->chunk : SPA_URING_CHUNK;
	if ((rc = spa_uring_reader_set_chunk(r, chunk)) < 0) {
		rc = spa_err(err, rc, "%s: read size %zu is out of range (at most 1 GiB)", g->path,
			     o->chunk);
		goto out;
	}
	struct spa_uring_stats st;
	spa_uring_reader_stats(r, &st);
	chunk = (chunk + st.dio_align - 1) / st.dio_align * st.dio_align;
	if (n_jobs) {
		/* What the mapped copy left: each share's tail, in place. */
		for (unsigned i = 0; i < n_jobs && rc == 0; i++) {
			size_t t = jobs[i].len - jobs[i].done;
			uint64_t at = (uint64_t)(jobs[i].dst - dst) + jobs[i].done;
			if (t)
				rc = spa_uring_read_async(r, dst + at, g->data_offset + at, t, 0);
		}
		goto wait;
	}
	if (st.direct && ((uintptr_t)dst - g->data_offset) % st.dio_align) {
		unsigned n_stage = depth ? depth : SPA_URING_DEPTH;
		if (n_stage < 2)
			n_stage = 2;
		if (posix_memalign((void **)&stage, LOAD_ALIGN, (size_t)n_stage * chunk) != 0) {
			rc = spa_err(err, -ENOMEM, "%s: cannot allocate %u x %zu bytes of read "
				     "buffers", g->path, n_stage, chunk);
			goto out;
		}
		rc = load_staged(g, r, dst, stage, n_stage, chunk, pr, err);
		goto out;
	}
	if (o->fixed && mode != SPA_LOAD_PREAD) {
		/* The destination is the data's final place: register it (READ_FIXED). When
		 * the kernel refuses (memlock limit), plain reads do the same job. */
		struct iovec iov = {.iov_base = dst, .iov_len = (size_t)size};
		spa_uring_reader_register(r, &iov, 1, NULL);
	}
	/* In pread mode the read happens here, in one go; the bar shows it done. */
	rc = spa_uring_read_async(r, dst, g->data_offset, (size_t)size, 0);
wait:
	if (rc == -EINVAL) {
		/* Past the end of the file as the reader saw it: layout was checked at open. */
		rc = load_shrank(g, fstat(g->fd, &sb) == 0 ? (uint64_t)sb.st_size : 0, err);
		goto out;
	}
	if (rc < 0) {
		rc = spa_err(err, rc, "%s", spa_uring_reader_errmsg(r));
		goto out;
	}
	uint64_t before = pr->done;
	while ((rc = spa_uring_wait(r, 0, pr->on ? 100000000 : -1)) == -ETIME)
		load_progress(r, pr, before, n_jobs ? left : size);
	if (rc < 0) {
		rc = spa_err(err, rc, "%s", spa_uring_reader_errmsg(r));
		goto out;
	}
	load_progress(r, pr, before, n_jobs ? left : size);
out:
	spa_uring_reader_destroy(r); /* waits for reads in flight before their buffers go */
	free(stage);
	return rc;
}

int spa_gguf_load_data_into(struct spa_gguf *g, void *dst, size_t cap,
			    const struct spa_load_opts *o, struct spa_errbuf *err)
{
	static const struct spa_load_opts defaults;
	if (!o)
		o = &defaults;
	if (!dst && g->data_size)
		return spa_err(err, -EINVAL, "%s: no destination to load the tensor data into",
			       g->path);
	if (cap < g->data_size)
		return spa_err(err, -EINVAL, "%s: the destination holds %zu bytes, the data "
			       "section %" PRIu64 "; give a buffer of at least that size", g->path,
			       cap, g->data_size);
	struct progress pr;
	progress_init(&pr, o->show_progress, "loading", g->path, g->data_size);
	int rc = load_into(g, dst, 0, o, &pr, err);
	progress_end(&pr);
	return rc;
}

int spa_gguf_load_data_opts(struct spa_gguf *g, void **out, size_t *out_size,
			    const struct spa_load_opts *o, struct spa_errbuf *err)
{
	static const struct spa_load_opts defaults;
	if (!o)
		o = &defaults;
	*out = NULL;
	*out_size = 0;
	uint64_t size = g->data_size;
	if (size > SIZE_MAX - 2 * LOAD_ALIGN)
		return spa_err(err, -SPA_ETOOBIG, "%s: data section of %" PRIu64 " bytes does not "
			       "fit in memory", g->path, size);
	size_t cap = ((size_t)size + LOAD_ALIGN - 1) / LOAD_ALIGN * LOAD_ALIGN;
	if (!cap)
		cap = LOAD_ALIGN;
	uint8_t *buf = NULL;
	if (posix_memalign((void **)&buf, LOAD_ALIGN, cap) != 0)
		return spa_err(err, -ENOMEM, "%s: cannot allocate %" PRIu64 " bytes for the tensor "
			       "data; use a smaller model or a machine with more memory", g->path,
			       size);
	/* Huge pages: 512x fewer page faults while the buffer is first written. */
	madvise(buf, cap, MADV_HUGEPAGE);
	struct progress pr;
	progress_init(&pr, o->show_progress, "loading", g->path, size);
	int rc = load_into(g, buf, cap, o, &pr, err);
	progress_end(&pr);
	if (rc < 0) {
		free(buf);
		return rc;
	}
	memset(buf + size, 0, cap - (size_t)size);
	*out = buf;
	*out_size = (size_t)size;
	return 0;
}

int spa_gguf_load_data(struct spa_gguf *g, void **out, size_t *out_size, bool show_progress,
		       struct spa_errbuf *err)
{
	struct spa_load_opts o = {.show_progress = show_progress};
	return spa_gguf_load_data_opts(g, out, out_size, &o, err);
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
