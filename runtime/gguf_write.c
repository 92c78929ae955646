/* GGUF writer (see include/spa/gguf.h): keys and tensors in the order they are added, the
 * data borrowed or made by a fill callback at write time (files larger than memory), written
 * atomically (a temporary file renamed into place) or into a memory image.
 *
 * Docs: docs/gguf.md. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_impl.h"

#define DATA_ALIGN 64           /* the fill buffer: cache line, AVX-512 friendly */

/* Encode the kv's scalar as little-endian bytes (inverse of the reader's scalar_decode). */
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
