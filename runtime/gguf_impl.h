/* spa: GGUF internals shared by the reader (gguf.c), the writer (gguf_write.c) and the
 * loaders (load.c): the format's constants, the strings and values both sides free and copy,
 * and the progress bar of a load or a write. Not installed, not part of the library's
 * contract. */
#ifndef SPA_GGUF_IMPL_H
#define SPA_GGUF_IMPL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Bytes of a scalar value in the file (0 for STRING and ARRAY). */
static const uint8_t vtype_size[SPA_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static inline bool vtype_is_signed(enum spa_gguf_vtype t)
{
	return t == SPA_GGUF_INT8 || t == SPA_GGUF_INT16 || t == SPA_GGUF_INT32 ||
	       t == SPA_GGUF_INT64;
}

static inline void str_free(struct spa_gguf_str *s)
{
	free(s->data);
	s->data = NULL;
	s->len = 0;
}

static inline int str_dup(struct spa_gguf_str *dst, const char *src, uint64_t len)
{
	dst->data = malloc(len + 1);
	if (!dst->data)
		return -ENOMEM;
	memcpy(dst->data, src, len);
	dst->data[len] = 0;
	dst->len = len;
	return 0;
}

static inline bool str_eq(const struct spa_gguf_str *s, const char *z)
{
	size_t n = strlen(z);
	return s->len == n && memcmp(s->data, z, n) == 0;
}

static inline void kv_free(struct spa_gguf_kv *kv)
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

/* ---- progress bar: on stderr when it is a terminal and the caller asks for it */

struct progress {
	bool on;
	const char *label;
	const char *path;
	uint64_t total;
	uint64_t done;
	int pct;
};

static inline void progress_init(struct progress *p, bool show, const char *label, const char *path,
			  uint64_t total)
{
	p->on = show && isatty(STDERR_FILENO);
	p->label = label;
	p->path = path;
	p->total = total;
	p->done = 0;
	p->pct = -1;
}

static inline void progress_add(struct progress *p, uint64_t n)
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

static inline void progress_end(struct progress *p)
{
	if (p->on && p->pct >= 0)
		fputc('\n', stderr);
}

#endif
