/* GGUF reader and writer: round trips of every value type and several tensor types, refusal
 * of malformed files (each class built by corrupting a valid file or by hand), the model-level
 * checks on a copied tiny model, and spa-inspect. */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spa/spa.h"
#include "testutil.h"

/* ---------------------------------------------------------------- helpers */

static struct spa_rng rng;
static uint64_t rnd(void)
{
	return spa_rng_next(&rng);
}

static void rnd_bytes(void *p, size_t n)
{
	uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)rnd();
}

/* Byte builder for hand-made files. */
struct hb {
	uint8_t buf[8192];
	size_t n;
};

static void hb_put(struct hb *h, const void *p, size_t n)
{
	cr_assert_leq(h->n + n, sizeof h->buf);
	memcpy(h->buf + h->n, p, n);
	h->n += n;
}
static void hb_u32(struct hb *h, uint32_t v) { hb_put(h, &v, 4); }
static void hb_u64(struct hb *h, uint64_t v) { hb_put(h, &v, 8); }
static void hb_str(struct hb *h, const char *s)
{
	hb_u64(h, strlen(s));
	hb_put(h, s, strlen(s));
}
static void hb_head(struct hb *h, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
	h->n = 0;
	hb_put(h, "GGUF", 4);
	hb_u32(h, version);
	hb_u64(h, n_tensors);
	hb_u64(h, n_kv);
}
static void hb_tensor(struct hb *h, const char *name, uint32_t n_dims, const uint64_t *ne,
		      uint32_t type, uint64_t offset)
{
	hb_str(h, name);
	hb_u32(h, n_dims);
	for (uint32_t d = 0; d < n_dims; d++)
		hb_u64(h, ne[d]);
	hb_u32(h, type);
	hb_u64(h, offset);
}
static void hb_pad(struct hb *h, size_t align, size_t data_bytes)
{
	while (h->n % align)
		h->buf[h->n++] = 0;
	for (size_t i = 0; i < data_bytes; i++)
		h->buf[h->n++] = (uint8_t)i;
}

/* Open buf both as a file and as a memory image: both must refuse it with -SPA_EFORMAT and a
 * message that names the file, the byte offset and contains `needle`. */
static void expect_bad(const void *buf, size_t size, const char *needle)
{
	char path[128];
	snprintf(path, sizeof path, "%s/bad.gguf", tu_tmpdir());
	tu_write_file(path, buf, size);
	struct spa_gguf *g = (void *)1;
	struct spa_errbuf err = {{0}};
	int rc = spa_gguf_open(&g, path, &err);
	cr_assert_eq(rc, -SPA_EFORMAT, "file: expected -SPA_EFORMAT for '%s', got %d (%s)", needle,
		     rc, err.msg);
	cr_assert_null(g);
	cr_assert_not_null(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
	cr_assert_eq(strncmp(err.msg, path, strlen(path)), 0, "message '%s' lacks the path",
		     err.msg);
	cr_assert_not_null(strstr(err.msg, "(at byte offset "), "message '%s' lacks the offset",
			   err.msg);
	cr_assert_not_null(strstr(err.msg, "); "), "message '%s' says not what to do", err.msg);

	memset(&err, 0, sizeof err);
	rc = spa_gguf_open_mem(&g, buf, size, &err);
	cr_assert_eq(rc, -SPA_EFORMAT, "mem: expected -SPA_EFORMAT for '%s', got %d (%s)", needle,
		     rc, err.msg);
	cr_assert_not_null(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
	cr_assert_eq(strncmp(err.msg, "<memory>: ", 10), 0);
	unlink(path);
}

/* Position of the first occurrence of s (as bytes) in buf. */
static size_t find(const uint8_t *buf, size_t size, const char *s)
{
	const uint8_t *p = memmem(buf, size, s, strlen(s));
	cr_assert_not_null(p, "'%s' not in the image", s);
	return (size_t)(p - buf);
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* A small valid image: kvs "k.num" (u32), "k.arr" (u32 array of 5), "k.strs" (2 strings),
 * "k.dupa"/"k.dupb" (u32), tensors "t.aa" (f32 [8]) and "t.ab" (f32 [4, 2]). */
static void *small_image(size_t *size)
{
	struct spa_gguf_writer *w;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "k.num", 7), 0);
	uint32_t arr[5] = {1, 2, 3, 4, 5};
	cr_assert_eq(spa_gguf_writer_set_arr(w, "k.arr", SPA_GGUF_UINT32, arr, 5), 0);
	const char *strs[] = {"alpha", "beta"};
	cr_assert_eq(spa_gguf_writer_set_arr_str(w, "k.strs", strs, 2), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "k.dupa", 1), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "k.dupb", 2), 0);
	static float a[8], b[8];
	tu_rand(a, 8, 3, 1.0f);
	tu_rand(b, 8, 4, 1.0f);
	uint64_t ne1[1] = {8}, ne2[2] = {4, 2};
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "t.aa", SPA_TYPE_F32, 1, ne1, a), 0);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "t.ab", SPA_TYPE_F32, 2, ne2, b), 0);
	void *img;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_writer_write_mem(w, &img, size, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	return img;
}

/* Offset of the n_dims field of tensor `name` in an image (just after its name). */
static size_t tensor_info(const uint8_t *img, size_t size, const char *name)
{
	return find(img, size, name) + strlen(name);
}

/* cr_assert helper: key equality as bytes. */
static bool str_eq_kv(const struct spa_gguf_kv *kv, const char *key)
{
	return kv->key.len == strlen(key) && memcmp(kv->key.data, key, kv->key.len) == 0;
}

/* ---------------------------------------------------------------- round trip */

struct fill_ctx {
	uint64_t seed;
	int calls;
	void *last_dst;
	int distinct_dst;
};

static int fill_rand(void *arg, void *dst, size_t size)
{
	struct fill_ctx *c = arg;
	struct spa_rng save = rng;
	spa_rng_seed(&rng, c->seed);
	rnd_bytes(dst, size);
	rng = save;
	if (c->last_dst != dst)
		c->distinct_dst++;
	c->last_dst = dst;
	c->calls++;
	return 0;
}

static int fill_fail(void *arg, void *dst, size_t size)
{
	(void)arg;
	(void)dst;
	(void)size;
	return -EIO;
}

#define N_SCALAR_ARRS 11
static const enum spa_gguf_vtype arr_types[N_SCALAR_ARRS] = {
	SPA_GGUF_UINT8, SPA_GGUF_INT8, SPA_GGUF_UINT16, SPA_GGUF_INT16, SPA_GGUF_UINT32,
	SPA_GGUF_INT32, SPA_GGUF_FLOAT32, SPA_GGUF_BOOL, SPA_GGUF_UINT64, SPA_GGUF_INT64,
	SPA_GGUF_FLOAT64,
};
static const size_t arr_esize[N_SCALAR_ARRS] = {1, 1, 2, 2, 4, 4, 4, 1, 8, 8, 8};

struct rt_tensor {
	const char *name;
	enum spa_dtype type;
	uint32_t n_dims;
	uint64_t ne[4];
	int use_fill;
	uint8_t *data;     /* expected bytes */
	size_t size;
	struct fill_ctx fc;
};

/* Everything the round trip writes; compared against what is read back. */
struct rt {
	uint8_t *arrs[N_SCALAR_ARRS];
	uint64_t arr_n[N_SCALAR_ARRS];
	char *strs[7];
	struct rt_tensor t[8];
	int n_t;
};

static void rt_build(struct rt *r, struct spa_gguf_writer *w)
{
	spa_rng_seed(&rng, 42);
	/* Scalars of every type: the six set_* helpers, then copy_kv for the rest. */
	cr_assert_eq(spa_gguf_writer_set_str(w, "general.architecture", "test-rt"), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "rt.u32", 4000000000u), 0);
	cr_assert_eq(spa_gguf_writer_set_i32(w, "rt.i32", -123456789), 0);
	cr_assert_eq(spa_gguf_writer_set_u64(w, "rt.u64", 0xfedcba9876543210ull), 0);
	cr_assert_eq(spa_gguf_writer_set_f32(w, "rt.f32", 3.25e-7f), 0);
	cr_assert_eq(spa_gguf_writer_set_bool(w, "rt.bool", true), 0);
	cr_assert_eq(spa_gguf_writer_set_str(w, "rt.str", "h\xc3\xa9llo \"world\"\n"), 0);
	struct spa_gguf_kv kv = {0};
	struct { const char *key; enum spa_gguf_vtype t; uint64_t u; int64_t i; double f; } ex[] = {
		{"rt.u8", SPA_GGUF_UINT8, 250, 0, 0}, {"rt.i8", SPA_GGUF_INT8, 0, -128, 0},
		{"rt.u16", SPA_GGUF_UINT16, 65535, 0, 0}, {"rt.i16", SPA_GGUF_INT16, 0, -300, 0},
		{"rt.i64", SPA_GGUF_INT64, 0, INT64_MIN + 5, 0},
		{"rt.f64", SPA_GGUF_FLOAT64, 0, 0, -1.0 / 3.0},
	};
	for (size_t k = 0; k < sizeof ex / sizeof ex[0]; k++) {
		kv.key.data = (char *)ex[k].key;
		kv.key.len = strlen(ex[k].key);
		kv.type = ex[k].t;
		if (ex[k].t == SPA_GGUF_FLOAT64)
			kv.v.f = ex[k].f;
		else if (ex[k].t == SPA_GGUF_INT8 || ex[k].t == SPA_GGUF_INT16 ||
			 ex[k].t == SPA_GGUF_INT64)
			kv.v.i = ex[k].i;
		else
			kv.v.u = ex[k].u;
		cr_assert_eq(spa_gguf_writer_copy_kv(w, &kv), 0);
	}
	/* Arrays of each scalar type, odd lengths (one empty). */
	for (int a = 0; a < N_SCALAR_ARRS; a++) {
		uint64_t n = a == 3 ? 0 : 1 + rnd() % 41;
		r->arr_n[a] = n;
		r->arrs[a] = malloc(n * arr_esize[a] + 1);
		rnd_bytes(r->arrs[a], n * arr_esize[a]);
		if (arr_types[a] == SPA_GGUF_BOOL)
			for (uint64_t i = 0; i < n; i++)
				r->arrs[a][i] &= 1;
		char key[32];
		snprintf(key, sizeof key, "rt.arr.%d", a);
		cr_assert_eq(spa_gguf_writer_set_arr(w, key, arr_types[a], r->arrs[a], n), 0);
	}
	/* Array of strings, an empty one and one with an embedded NUL among them. */
	for (int i = 0; i < 7; i++) {
		r->strs[i] = calloc(1, 64);
		if (i != 2)
			snprintf(r->strs[i], 64, "token-%d-%" PRIu64, i, rnd() % 100000);
	}
	cr_assert_eq(spa_gguf_writer_set_arr_str(w, "rt.strs", (const char *const *)r->strs, 7), 0);
	struct spa_gguf_kv nul = {0};
	nul.key.data = "rt.nul";
	nul.key.len = 6;
	nul.type = SPA_GGUF_STRING;
	nul.v.str.data = "a\0b";
	nul.v.str.len = 3;
	cr_assert_eq(spa_gguf_writer_copy_kv(w, &nul), 0);

	/* Tensors of several types and 1-4 dims, borrowed and filled. */
	struct rt_tensor ts[] = {
		{"vec.f32", SPA_TYPE_F32, 1, {37, 1, 1, 1}, 0, NULL, 0, {0}},
		{"mat.f16", SPA_TYPE_F16, 2, {13, 7, 1, 1}, 1, NULL, 0, {0}},
		{"mat.q8_0", SPA_TYPE_Q8_0, 2, {64, 3, 1, 1}, 0, NULL, 0, {0}},
		{"mat.q4_k", SPA_TYPE_Q4_K, 2, {256, 5, 1, 1}, 1, NULL, 0, {0}},
		{"cube.i32", SPA_TYPE_I32, 3, {3, 5, 2, 1}, 0, NULL, 0, {0}},
		{"hyper.bf16", SPA_TYPE_BF16, 4, {2, 3, 1, 5}, 1, NULL, 0, {0}},
		{"big.f32", SPA_TYPE_F32, 2, {1001, 2503, 1, 1}, 1, NULL, 0, {0}}, /* ~10 MB */
		{"one.q4_0", SPA_TYPE_Q4_0, 1, {32, 1, 1, 1}, 0, NULL, 0, {0}},
	};
	r->n_t = (int)(sizeof ts / sizeof ts[0]);
	for (int i = 0; i < r->n_t; i++) {
		struct rt_tensor *t = &r->t[i];
		*t = ts[i];
		uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3], sz;
		cr_assert_eq(spa_dtype_row_size(t->type, n, &sz), 0);
		t->size = sz;
		t->data = malloc(sz);
		t->fc.seed = 1000 + (uint64_t)i;
		struct spa_rng save = rng;
		spa_rng_seed(&rng, t->fc.seed);
		rnd_bytes(t->data, sz);
		rng = save;
		if (t->use_fill)
			cr_assert_eq(spa_gguf_writer_add_tensor_fn(w, t->name, t->type, t->n_dims,
								   t->ne, fill_rand, &t->fc), 0);
		else
			cr_assert_eq(spa_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims,
								t->ne, t->data), 0);
	}
}

static void rt_free(struct rt *r)
{
	for (int a = 0; a < N_SCALAR_ARRS; a++)
		free(r->arrs[a]);
	for (int i = 0; i < 7; i++)
		free(r->strs[i]);
	for (int i = 0; i < r->n_t; i++)
		free(r->t[i].data);
}

static void rt_check(const struct rt *r, struct spa_gguf *g)
{
	struct spa_errbuf err = {{0}};
	cr_assert_eq(g->version, 3);
	cr_assert_eq(g->alignment, 32);
	cr_assert_eq(g->n_kv, 7 + 6 + N_SCALAR_ARRS + 2);
	cr_assert_eq(g->n_tensors, (uint64_t)r->n_t);
	/* Insertion order. */
	cr_assert(str_eq_kv(&g->kv[0], "general.architecture"));
	cr_assert(str_eq_kv(&g->kv[1], "rt.u32"));
	cr_assert(str_eq_kv(&g->kv[g->n_kv - 1], "rt.nul"));

	uint32_t u32;
	uint64_t u64;
	float f;
	const char *s;
	cr_assert_eq(spa_gguf_get_u32(g, "rt.u32", &u32, &err), 0);
	cr_assert_eq(u32, 4000000000u);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.i32")->type, SPA_GGUF_INT32);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.i32")->v.i, -123456789);
	cr_assert_eq(spa_gguf_get_u64(g, "rt.u64", &u64, &err), 0);
	cr_assert_eq(u64, 0xfedcba9876543210ull);
	cr_assert_eq(spa_gguf_get_f32(g, "rt.f32", &f, &err), 0);
	cr_assert_eq(f, 3.25e-7f);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.bool")->type, SPA_GGUF_BOOL);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.bool")->v.u, 1);
	cr_assert_eq(spa_gguf_get_str(g, "rt.str", &s, &err), 0);
	cr_assert_str_eq(s, "h\xc3\xa9llo \"world\"\n");
	cr_assert_eq(spa_gguf_find_kv(g, "rt.u8")->v.u, 250);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.u8")->type, SPA_GGUF_UINT8);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.i8")->v.i, -128);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.u16")->v.u, 65535);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.i16")->v.i, -300);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.i64")->v.i, INT64_MIN + 5);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.f64")->type, SPA_GGUF_FLOAT64);
	cr_assert_eq(spa_gguf_find_kv(g, "rt.f64")->v.f, -1.0 / 3.0);
	const struct spa_gguf_kv *nul = spa_gguf_find_kv(g, "rt.nul");
	cr_assert_eq(nul->v.str.len, 3);
	cr_assert_eq(memcmp(nul->v.str.data, "a\0b", 4), 0);

	for (int a = 0; a < N_SCALAR_ARRS; a++) {
		char key[32];
		snprintf(key, sizeof key, "rt.arr.%d", a);
		const struct spa_gguf_kv *kv;
		cr_assert_eq(spa_gguf_get_arr(g, key, arr_types[a], &kv, &err), 0, "%s", key);
		cr_assert_eq(kv->v.arr.n, r->arr_n[a]);
		cr_assert_eq(memcmp(kv->v.arr.data, r->arrs[a], r->arr_n[a] * arr_esize[a]), 0);
	}
	const struct spa_gguf_kv *kv;
	cr_assert_eq(spa_gguf_get_arr(g, "rt.strs", SPA_GGUF_STRING, &kv, &err), 0);
	cr_assert_eq(kv->v.arr.n, 7);
	const struct spa_gguf_str *ss = kv->v.arr.data;
	for (int i = 0; i < 7; i++) {
		cr_assert_eq(ss[i].len, strlen(r->strs[i]));
		cr_assert_str_eq(ss[i].data, r->strs[i]);
	}

	void *data;
	size_t data_size;
	cr_assert_eq(spa_gguf_load_data(g, &data, &data_size, false, &err), 0, "%s", err.msg);
	cr_assert_eq((uintptr_t)data % 64, 0);
	cr_assert_eq(data_size, g->data_size);
	cr_assert_eq(g->data_offset % 32, 0);
	uint64_t prev_end = 0;
	for (int i = 0; i < r->n_t; i++) {
		const struct rt_tensor *rt = &r->t[i];
		const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, rt->name);
		cr_assert_not_null(t, "%s", rt->name);
		cr_assert_eq(t, &g->tensors[i]);
		cr_assert_eq(t->type, rt->type);
		cr_assert_eq(t->n_dims, rt->n_dims);
		for (int d = 0; d < 4; d++)
			cr_assert_eq(t->ne[d], rt->ne[d], "%s ne[%d]", rt->name, d);
		cr_assert_eq(t->n_elems, rt->ne[0] * rt->ne[1] * rt->ne[2] * rt->ne[3]);
		cr_assert_eq(t->size, rt->size);
		cr_assert_eq(t->offset % 32, 0);
		cr_assert_geq(t->offset, prev_end);
		cr_assert_lt(t->offset, prev_end + 32);
		prev_end = t->offset + t->size;
		cr_assert_eq(memcmp((uint8_t *)data + t->offset, rt->data, rt->size), 0,
			     "data of %s", rt->name);
		/* pread of an odd sub-range. */
		size_t off = rt->size / 3, n = rt->size - off - (rt->size > 7 ? 5 : 0);
		uint8_t *tmp = malloc(n + 1);
		cr_assert_eq(spa_gguf_pread(g, t->offset + off, tmp, n, &err), 0, "%s", err.msg);
		cr_assert_eq(memcmp(tmp, rt->data + off, n), 0);
		free(tmp);
	}
	cr_assert_eq(data_size, prev_end);
	uint8_t x;
	cr_assert_eq(spa_gguf_pread(g, g->file_size, &x, 1, &err), -EINVAL);
	cr_assert_eq(spa_gguf_pread(g, UINT64_MAX - 2, &x, 8, &err), -EINVAL);
	free(data);
	cr_assert_null(spa_gguf_find_kv(g, "rt.absent"));
	cr_assert_null(spa_gguf_find_tensor(g, "absent"));
	cr_assert_null(spa_gguf_find_kv(g, "rt.nu"));
}

Test(gguf, round_trip_every_type_file_and_memory)
{
	struct rt r = {0};
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	rt_build(&r, w);

	char path[128];
	snprintf(path, sizeof path, "%s/rt.gguf", tu_tmpdir());
	cr_assert_eq(spa_gguf_writer_write(w, path, false, &err), 0, "%s", err.msg);
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	cr_assert_neq(access(tmp, F_OK), 0, "the temporary file was left behind");
	/* The fill callbacks wrote into one reused buffer. */
	void *fill_dst = NULL;
	for (int i = 0; i < r.n_t; i++) {
		if (!r.t[i].use_fill)
			continue;
		cr_assert_eq(r.t[i].fc.calls, 1);
		if (fill_dst)
			cr_assert_eq(r.t[i].fc.last_dst, fill_dst);
		fill_dst = r.t[i].fc.last_dst;
	}

	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	cr_assert_geq(g->fd, 0);
	rt_check(&r, g);
	uint64_t file_size = g->file_size;
	spa_gguf_close(g);

	void *img;
	size_t img_size;
	cr_assert_eq(spa_gguf_writer_write_mem(w, &img, &img_size, &err), 0, "%s", err.msg);
	cr_assert_eq(img_size, file_size);
	size_t fsz;
	void *fbytes = tu_read_file(path, &fsz);
	cr_assert_eq(fsz, img_size);
	cr_assert_eq(memcmp(fbytes, img, img_size), 0, "write and write_mem differ");
	free(fbytes);
	cr_assert_eq(spa_gguf_open_mem(&g, img, img_size, &err), 0, "%s", err.msg);
	cr_assert_eq(g->fd, -1);
	cr_assert_str_eq(g->path, "<memory>");
	rt_check(&r, g);
	spa_gguf_close(g);
	free(img);
	spa_gguf_writer_destroy(w);
	rt_free(&r);
}

Test(gguf, writer_copy_replace_and_refusals)
{
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "a", 1), 0);
	cr_assert_eq(spa_gguf_writer_set_str(w, "b", "x"), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "c", 3), 0);
	/* Setting again replaces in place, with any type. */
	cr_assert_eq(spa_gguf_writer_set_str(w, "a", "replaced"), 0);
	uint64_t ne[2] = {32, 2};
	float d[64] = {0};
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "t", SPA_TYPE_F32, 2, ne, d), 0);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "t", SPA_TYPE_F32, 2, ne, d), -EEXIST);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", SPA_TYPE_F32, 0, ne, d), -EINVAL);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", SPA_TYPE_F32, 5, ne, d), -EINVAL);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", (enum spa_dtype)4, 2, ne, d), -EINVAL);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", SPA_TYPE_Q4_K, 2, ne, d), -EINVAL);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", SPA_TYPE_F32, 2, ne, NULL), -EINVAL);
	cr_assert_eq(spa_gguf_writer_add_tensor_fn(w, "u", SPA_TYPE_F32, 2, ne, NULL, NULL),
		     -EINVAL);
	uint64_t zero[2] = {32, 0};
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", SPA_TYPE_F32, 2, zero, d), -EINVAL);
	uint64_t huge[2] = {1ull << 40, 1ull << 40};
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "u", SPA_TYPE_F32, 2, huge, d), -EINVAL);
	char longname[80];
	memset(longname, 'n', 79);
	longname[79] = 0;
	cr_assert_eq(spa_gguf_writer_add_tensor(w, longname, SPA_TYPE_F32, 2, ne, d), -EINVAL);
	uint8_t bools[3] = {0, 2, 1};
	cr_assert_eq(spa_gguf_writer_set_arr(w, "bools", SPA_GGUF_BOOL, bools, 3), -EINVAL);
	cr_assert_eq(spa_gguf_writer_set_arr(w, "nest", SPA_GGUF_ARRAY, bools, 3), -EINVAL);
	cr_assert_eq(spa_gguf_writer_set_arr(w, "strs", SPA_GGUF_STRING, bools, 3), -EINVAL);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "", 1), -EINVAL);

	void *img;
	size_t size;
	cr_assert_eq(spa_gguf_writer_write_mem(w, &img, &size, &err), 0, "%s", err.msg);
	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open_mem(&g, img, size, &err), 0, "%s", err.msg);
	cr_assert_eq(g->n_kv, 3);
	cr_assert(str_eq_kv(&g->kv[0], "a"));
	cr_assert_eq(g->kv[0].type, SPA_GGUF_STRING);
	cr_assert_str_eq(g->kv[0].v.str.data, "replaced");
	cr_assert(str_eq_kv(&g->kv[2], "c"));
	/* copy_kv of everything into a second writer gives the same bytes. */
	struct spa_gguf_writer *w2;
	cr_assert_eq(spa_gguf_writer_create(&w2), 0);
	for (uint64_t i = 0; i < g->n_kv; i++)
		cr_assert_eq(spa_gguf_writer_copy_kv(w2, &g->kv[i]), 0);
	cr_assert_eq(spa_gguf_writer_add_tensor(w2, "t", SPA_TYPE_F32, 2, ne, d), 0);
	void *img2;
	size_t size2;
	cr_assert_eq(spa_gguf_writer_write_mem(w2, &img2, &size2, &err), 0);
	cr_assert_eq(size2, size);
	cr_assert_eq(memcmp(img, img2, size), 0);
	free(img2);
	spa_gguf_writer_destroy(w2);
	spa_gguf_close(g);
	free(img);

	/* A failing fill callback fails the write and leaves no file behind. */
	cr_assert_eq(spa_gguf_writer_add_tensor_fn(w, "f", SPA_TYPE_F32, 2, ne, fill_fail, NULL), 0);
	char path[128];
	snprintf(path, sizeof path, "%s/fail.gguf", tu_tmpdir());
	cr_assert_eq(spa_gguf_writer_write(w, path, false, &err), -EIO);
	cr_assert_not_null(strstr(err.msg, "'f'"), "%s", err.msg);
	cr_assert_neq(access(path, F_OK), 0);
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	cr_assert_neq(access(tmp, F_OK), 0);
	/* Unwritable folder: an error naming the path. */
	cr_assert_lt(spa_gguf_writer_write(w, "/nonexistent-dir/x.gguf", false, &err), 0);
	cr_assert_not_null(strstr(err.msg, "/nonexistent-dir/x.gguf"), "%s", err.msg);
	/* A bad general.alignment is refused at write time. */
	cr_assert_eq(spa_gguf_writer_set_u32(w, "general.alignment", 48), 0);
	cr_assert_eq(spa_gguf_writer_write_mem(w, &img, &size, &err), -SPA_EUSAGE);
	spa_gguf_writer_destroy(w);
	spa_gguf_writer_destroy(NULL);
}

Test(gguf, custom_alignment_and_getters)
{
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_gguf_writer_set_u32(w, "general.alignment", 256), 0);
	cr_assert_eq(spa_gguf_writer_set_i32(w, "neg", -1), 0);
	cr_assert_eq(spa_gguf_writer_set_u64(w, "big", 1ull << 40), 0);
	cr_assert_eq(spa_gguf_writer_set_str(w, "s", "str"), 0);
	cr_assert_eq(spa_gguf_writer_set_f32(w, "f", 1.5f), 0);
	struct spa_gguf_kv kv = {0};
	kv.key.data = "small";
	kv.key.len = 5;
	kv.type = SPA_GGUF_INT8;
	kv.v.i = 100;
	cr_assert_eq(spa_gguf_writer_copy_kv(w, &kv), 0);
	kv.key.data = "dbl";
	kv.key.len = 3;
	kv.type = SPA_GGUF_FLOAT64;
	kv.v.f = 1e300;
	cr_assert_eq(spa_gguf_writer_copy_kv(w, &kv), 0);
	uint32_t arr[3] = {1, 2, 3};
	cr_assert_eq(spa_gguf_writer_set_arr(w, "arr", SPA_GGUF_UINT32, arr, 3), 0);
	uint64_t ne[1] = {3};
	float d[3] = {1, 2, 3};
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "a", SPA_TYPE_F32, 1, ne, d), 0);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "b", SPA_TYPE_F32, 1, ne, d), 0);
	void *img;
	size_t size;
	cr_assert_eq(spa_gguf_writer_write_mem(w, &img, &size, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open_mem(&g, img, size, &err), 0, "%s", err.msg);
	cr_assert_eq(g->alignment, 256);
	cr_assert_eq(g->data_offset % 256, 0);
	cr_assert_eq(g->tensors[1].offset, 256);
	cr_assert_eq(size, g->data_offset + 512);

	uint32_t u32 = 77;
	uint64_t u64;
	float f;
	const char *s;
	const struct spa_gguf_kv *a;
	cr_assert_eq(spa_gguf_get_u32(g, "small", &u32, &err), 0);
	cr_assert_eq(u32, 100);
	cr_assert_eq(spa_gguf_get_u32(g, "absent", &u32, &err), -ENOENT);
	memset(&err, 0, sizeof err);
	cr_assert_eq(spa_gguf_get_u32(g, "neg", &u32, &err), -SPA_EMODEL);
	cr_assert_not_null(strstr(err.msg, "'neg' = -1 is out of range"), "%s", err.msg);
	cr_assert_eq(spa_gguf_get_u32(g, "big", &u32, &err), -SPA_EMODEL);
	cr_assert_eq(spa_gguf_get_u64(g, "big", &u64, &err), 0);
	cr_assert_eq(u64, 1ull << 40);
	cr_assert_eq(spa_gguf_get_u64(g, "neg", &u64, &err), -SPA_EMODEL);
	cr_assert_eq(spa_gguf_get_u32(g, "s", &u32, &err), -SPA_EMODEL);
	cr_assert_not_null(strstr(err.msg, "'s' has type string"), "%s", err.msg);
	cr_assert_eq(spa_gguf_get_u32(g, "f", &u32, &err), -SPA_EMODEL);
	cr_assert_eq(spa_gguf_get_f32(g, "f", &f, &err), 0);
	cr_assert_eq(f, 1.5f);
	cr_assert_eq(spa_gguf_get_f32(g, "dbl", &f, &err), -SPA_EMODEL);
	cr_assert_eq(spa_gguf_get_f32(g, "small", &f, &err), -SPA_EMODEL);
	cr_assert_eq(spa_gguf_get_str(g, "s", &s, &err), 0);
	cr_assert_str_eq(s, "str");
	cr_assert_eq(spa_gguf_get_str(g, "arr", &s, &err), -SPA_EMODEL);
	cr_assert_eq(spa_gguf_get_arr(g, "arr", SPA_GGUF_UINT32, &a, &err), 0);
	cr_assert_eq(a->v.arr.n, 3);
	cr_assert_eq(spa_gguf_get_arr(g, "arr", SPA_GGUF_VTYPE_COUNT, &a, &err), 0);
	cr_assert_eq(spa_gguf_get_arr(g, "arr", SPA_GGUF_STRING, &a, &err), -SPA_EMODEL);
	cr_assert_not_null(strstr(err.msg, "array of uint32"), "%s", err.msg);
	cr_assert_eq(spa_gguf_get_arr(g, "s", SPA_GGUF_VTYPE_COUNT, &a, &err), -SPA_EMODEL);
	spa_gguf_close(g);
	free(img);
}

Test(gguf, reads_version_2_and_empty_files)
{
	/* Hand-built v2 file: one kv, one tensor, data. */
	struct hb h;
	hb_head(&h, 2, 1, 1);
	hb_str(&h, "general.name");
	hb_u32(&h, SPA_GGUF_STRING);
	hb_str(&h, "v2");
	uint64_t ne[2] = {2, 3};
	hb_tensor(&h, "w", 2, ne, SPA_TYPE_F32, 0);
	hb_pad(&h, 32, 24);
	struct spa_gguf *g;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_open_mem(&g, h.buf, h.n, &err), 0, "%s", err.msg);
	cr_assert_eq(g->version, 2);
	cr_assert_eq(g->data_size, 24);
	void *data;
	size_t n;
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, &err), 0);
	cr_assert_eq(n, 24);
	for (int i = 0; i < 24; i++)
		cr_assert_eq(((uint8_t *)data)[i], i);
	free(data);
	spa_gguf_close(g);

	/* No kv, no tensor, no data section. */
	hb_head(&h, 3, 0, 0);
	cr_assert_eq(spa_gguf_open_mem(&g, h.buf, h.n, &err), 0, "%s", err.msg);
	cr_assert_eq(g->n_kv, 0);
	cr_assert_eq(g->n_tensors, 0);
	cr_assert_eq(g->data_size, 0);
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, &err), 0);
	cr_assert_eq(n, 0);
	free(data);
	spa_gguf_close(g);

	/* Not a regular file / absent file: errors naming the path. */
	cr_assert_eq(spa_gguf_open(&g, "/tmp", &err), -SPA_EFORMAT);
	cr_assert_not_null(strstr(err.msg, "not a regular file"), "%s", err.msg);
	cr_assert_eq(spa_gguf_open(&g, "/nonexistent/x.gguf", &err), -ENOENT);
	cr_assert_not_null(strstr(err.msg, "/nonexistent/x.gguf"), "%s", err.msg);
}

/* ---------------------------------------------------------------- malformed files */

Test(gguf, refuses_bad_magic_and_version)
{
	size_t size;
	uint8_t *img = small_image(&size);
	img[0] = 'X';
	expect_bad(img, size, "bad magic");
	img[0] = 'G';
	put32(img + 4, 1);
	expect_bad(img, size, "GGUF version 1 is not supported");
	put32(img + 4, 4);
	expect_bad(img, size, "bad version 4");
	put32(img + 4, 0);
	expect_bad(img, size, "bad version 0");
	put32(img + 4, 0x03000000);
	expect_bad(img, size, "big-endian");
	free(img);
}

Test(gguf, refuses_truncation_at_every_length)
{
	size_t size;
	uint8_t *img = small_image(&size);
	expect_bad(img, 10, "truncated header");
	expect_bad(img, 0, "truncated header");
	/* Cut so early that the counts cannot fit. */
	size_t k = find(img, size, "k.num");
	expect_bad(img, k + 2, "absurd counts");
	/* Cut inside the tensor table. */
	size_t t = tensor_info(img, size, "t.ab");
	expect_bad(img, t + 6, "file ends inside tensor 1 ('t.ab'): 8 bytes needed, 2 left");
	/* Cut inside a kv: its type field. */
	struct hb h;
	hb_head(&h, 3, 0, 2);
	hb_str(&h, "a");
	hb_u32(&h, SPA_GGUF_UINT64);
	hb_u64(&h, 1);
	hb_str(&h, "b");
	hb_u32(&h, SPA_GGUF_UINT32);
	expect_bad(h.buf, h.n - 1, "file ends inside kv 1 ('b'): 4 bytes needed, 3 left");
	/* ... and its value. */
	hb_u32(&h, 5);
	expect_bad(h.buf, h.n - 2, "file ends inside kv 1 ('b')");
	/* Every strict prefix fails cleanly with -SPA_EFORMAT; the whole image opens. */
	struct spa_errbuf err;
	struct spa_gguf *g;
	for (size_t n = 0; n < size; n++) {
		err.msg[0] = 0;
		cr_assert_eq(spa_gguf_open_mem(&g, img, n, &err), -SPA_EFORMAT, "prefix %zu", n);
		cr_assert_neq(err.msg[0], 0);
	}
	cr_assert_eq(spa_gguf_open_mem(&g, img, size, &err), 0, "%s", err.msg);
	spa_gguf_close(g);
	free(img);
}

Test(gguf, refuses_absurd_counts)
{
	size_t size;
	uint8_t *img = small_image(&size);
	put64(img + 16, 1ull << 60); /* n_kv */
	expect_bad(img, size, "absurd counts");
	put64(img + 16, UINT64_MAX);
	expect_bad(img, size, "absurd counts");
	put64(img + 16, 5);
	put64(img + 8, UINT64_MAX / 2); /* n_tensors */
	expect_bad(img, size, "absurd counts");
	/* Plausible each alone, impossible together. */
	put64(img + 8, (size - 24) / 32);
	put64(img + 16, (size - 24) / 13);
	expect_bad(img, size, "absurd counts");
	free(img);
}

Test(gguf, refuses_lengths_past_the_end)
{
	size_t size;
	uint8_t *img = small_image(&size);
	size_t k = find(img, size, "k.num") - 8;
	uint8_t save[8];
	memcpy(save, img + k, 8);
	put64(img + k, 1ull << 62);
	expect_bad(img, size, "string length 4611686018427387904 of the key");
	put64(img + k, size);
	expect_bad(img, size, "runs past the end of the file");
	memcpy(img + k, save, 8);
	/* The string-array length, then the u32-array length. */
	size_t s = find(img, size, "k.strs") + 6 + 4 + 4;
	put64(img + s, 1ull << 59);
	expect_bad(img, size, "array length 576460752303423488 of kv 2 ('k.strs') runs past");
	put64(img + s, 2);
	size_t a = find(img, size, "k.arr") + 5 + 4 + 4;
	put64(img + a, (size - a) / 4 + 1);
	expect_bad(img, size, "array length");
	put64(img + a, 5);
	/* A string element length inside the array. */
	size_t e = find(img, size, "alpha") - 8;
	put64(img + e, 1000000);
	expect_bad(img, size, "kv 2 ('k.strs') element 0");
	free(img);
}

Test(gguf, refuses_bad_value_types)
{
	size_t size;
	uint8_t *img = small_image(&size);
	size_t t = find(img, size, "k.num") + 5;
	put32(img + t, 13);
	expect_bad(img, size, "bad value type 13");
	put32(img + t, 0xffffffffu);
	expect_bad(img, size, "bad value type 4294967295");
	put32(img + t, SPA_GGUF_UINT32);
	/* Nested array: element type ARRAY. */
	size_t et = find(img, size, "k.arr") + 5 + 4;
	put32(img + et, SPA_GGUF_ARRAY);
	expect_bad(img, size, "nested array in kv 1 ('k.arr')");
	put32(img + et, 77);
	expect_bad(img, size, "array element type 77");
	free(img);

	/* Booleans other than 0/1, scalar and in an array. */
	struct hb h;
	hb_head(&h, 3, 0, 1);
	hb_str(&h, "flag");
	hb_u32(&h, SPA_GGUF_BOOL);
	uint8_t two = 2;
	hb_put(&h, &two, 1);
	expect_bad(h.buf, h.n, "bool value 2 of kv 0 ('flag') is neither 0 nor 1");
	hb_head(&h, 3, 0, 1);
	hb_str(&h, "flags");
	hb_u32(&h, SPA_GGUF_ARRAY);
	hb_u32(&h, SPA_GGUF_BOOL);
	hb_u64(&h, 4);
	uint8_t b[4] = {0, 1, 1, 9};
	hb_put(&h, b, 4);
	expect_bad(h.buf, h.n, "bool element 3 = 9");
	/* Empty key. */
	hb_head(&h, 3, 0, 1);
	hb_str(&h, "");
	hb_u32(&h, SPA_GGUF_UINT8);
	hb_put(&h, b, 1);
	expect_bad(h.buf, h.n, "empty key");
}

Test(gguf, refuses_bad_tensor_type_and_dims)
{
	size_t size;
	uint8_t *img = small_image(&size);
	size_t ti = tensor_info(img, size, "t.ab"); /* n_dims 2, ne 4, 2, type, offset */
	put32(img + ti + 4 + 16, 4);
	expect_bad(img, size, "bad tensor type 4 of tensor 1 ('t.ab')");
	put32(img + ti + 4 + 16, 31);
	expect_bad(img, size, "bad tensor type 31");
	put32(img + ti + 4 + 16, SPA_TYPE_F32);
	put32(img + ti, 0);
	expect_bad(img, size, "n_dims 0 of tensor 1 ('t.ab') is not in 1..4");
	put32(img + ti, 5);
	expect_bad(img, size, "n_dims 5");
	put32(img + ti, 2);
	put64(img + ti + 4, 0);
	expect_bad(img, size, "dimension 0 of tensor 1 ('t.ab') is 0");
	free(img);

	/* Hand-built: row not a multiple of the block, element count and byte size overflow. */
	struct hb h;
	uint64_t ne[4] = {48, 2, 1, 1};
	hb_head(&h, 3, 1, 0);
	hb_tensor(&h, "q", 2, ne, SPA_TYPE_Q8_0, 0);
	hb_pad(&h, 32, 64);
	expect_bad(h.buf, h.n, "row of 48 elements of tensor 0 ('q') is not a multiple of the "
		   "q8_0 block (32)");
	uint64_t ov[3] = {1ull << 32, 1ull << 32, 2};
	hb_head(&h, 3, 1, 0);
	hb_tensor(&h, "o", 2, ov, SPA_TYPE_F32, 0);
	hb_pad(&h, 32, 64);
	expect_bad(h.buf, h.n, "element count of tensor 0 ('o') overflows");
	hb_head(&h, 3, 1, 0);
	hb_tensor(&h, "o", 3, ov, SPA_TYPE_F32, 0);
	hb_pad(&h, 32, 64);
	expect_bad(h.buf, h.n, "overflows");
	uint64_t big[1] = {1ull << 62};
	hb_head(&h, 3, 1, 0);
	hb_tensor(&h, "s", 1, big, SPA_TYPE_F32, 0);
	hb_pad(&h, 32, 64);
	expect_bad(h.buf, h.n, "byte size of tensor 0 ('s')");
	/* Names: empty, and as long as ggml refuses. */
	hb_head(&h, 3, 1, 0);
	hb_tensor(&h, "", 1, ne, SPA_TYPE_F32, 0);
	hb_pad(&h, 32, 192);
	expect_bad(h.buf, h.n, "has a name of 0 bytes");
	char name[65];
	memset(name, 'x', 64);
	name[64] = 0;
	hb_head(&h, 3, 1, 0);
	hb_tensor(&h, name, 1, ne, SPA_TYPE_F32, 0);
	hb_pad(&h, 32, 192);
	expect_bad(h.buf, h.n, "has a name of 64 bytes");
}

Test(gguf, refuses_bad_offsets_and_overlap)
{
	size_t size;
	uint8_t *img = small_image(&size);
	size_t off = tensor_info(img, size, "t.ab") + 4 + 16 + 4;
	uint64_t good;
	memcpy(&good, img + off, 8);
	cr_assert_eq(good, 32);
	put64(img + off, 4096);
	expect_bad(img, size, "offset past end: tensor 1 ('t.ab'");
	put64(img + off, UINT64_MAX - 31);
	expect_bad(img, size, "offset past end");
	put64(img + off, 36);
	expect_bad(img, size, "misaligned offset 36 of tensor 1 ('t.ab')");
	put64(img + off, 0);
	expect_bad(img, size, "overlapping tensors: 't.aa' (data offset 0, 32 bytes) and 't.ab'");
	put64(img + off, good);
	/* The file cut inside the data section: the last tensor lies past the end. */
	expect_bad(img, size - 1, "offset past end: tensor 1 ('t.ab', 32 bytes at data offset 32)");
	free(img);

	/* Hand-built: a big tensor fully containing a small one placed after it in the table. */
	struct hb h;
	uint64_t ne_big[1] = {64}, ne_small[1] = {8};
	hb_head(&h, 3, 2, 0);
	hb_tensor(&h, "big", 1, ne_big, SPA_TYPE_F32, 0);
	hb_tensor(&h, "inner", 1, ne_small, SPA_TYPE_F32, 64);
	hb_pad(&h, 32, 256);
	expect_bad(h.buf, h.n, "overlapping tensors: 'big'");
}

Test(gguf, refuses_duplicates)
{
	size_t size;
	uint8_t *img = small_image(&size);
	size_t k = find(img, size, "k.dupb");
	img[k + 5] = 'a';
	expect_bad(img, size, "duplicate key 'k.dupa' (kv 3 and kv 4)");
	img[k + 5] = 'b';
	size_t t = find(img, size, "t.ab");
	img[t + 3] = 'a';
	expect_bad(img, size, "duplicate tensor name 't.aa' (tensors 0 and 1)");
	free(img);
}

Test(gguf, refuses_bad_alignment)
{
	struct hb h;
	const uint32_t bad[] = {0, 3, 48, 0x80000001u};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		hb_head(&h, 3, 0, 1);
		hb_str(&h, "general.alignment");
		hb_u32(&h, SPA_GGUF_UINT32);
		hb_u32(&h, bad[i]);
		char want[64];
		snprintf(want, sizeof want, "bad general.alignment %u: must be a power of two",
			 bad[i]);
		expect_bad(h.buf, h.n, want);
	}
	hb_head(&h, 3, 0, 1);
	hb_str(&h, "general.alignment");
	hb_u32(&h, SPA_GGUF_UINT64);
	hb_u64(&h, 64);
	expect_bad(h.buf, h.n, "bad general.alignment: type uint64, must be uint32");
	/* A valid 64 makes a 32-aligned tensor offset misaligned. */
	uint64_t ne[1] = {8};
	hb_head(&h, 3, 2, 1);
	hb_str(&h, "general.alignment");
	hb_u32(&h, SPA_GGUF_UINT32);
	hb_u32(&h, 64);
	hb_tensor(&h, "a", 1, ne, SPA_TYPE_F32, 0);
	hb_tensor(&h, "b", 1, ne, SPA_TYPE_F32, 32);
	hb_pad(&h, 64, 128);
	expect_bad(h.buf, h.n, "misaligned offset 32 of tensor 1 ('b'): not a multiple of the "
		   "alignment 64");
}

Test(gguf, random_corruption_never_crashes)
{
	size_t size;
	uint8_t *img = small_image(&size);
	uint8_t *mut = malloc(size);
	spa_rng_seed(&rng, 7);
	int refused = 0;
	for (int it = 0; it < 4000; it++) {
		memcpy(mut, img, size);
		int flips = 1 + (int)(rnd() % 4);
		for (int f = 0; f < flips; f++) {
			size_t at = rnd() % size;
			/* Half the time a plausible-looking number, else a random byte. */
			if (rnd() & 1 && at + 8 <= size)
				put64(mut + at, rnd() >> (rnd() % 64));
			else
				mut[at] = (uint8_t)rnd();
		}
		size_t n = rnd() % 8 ? size : rnd() % size;
		struct spa_gguf *g = NULL;
		struct spa_errbuf err = {{0}};
		int rc = spa_gguf_open_mem(&g, mut, n, &err);
		if (rc == 0) {
			/* Whatever opened is consistent. */
			for (uint64_t i = 0; i < g->n_tensors; i++) {
				const struct spa_gguf_tensor *t = &g->tensors[i];
				cr_assert_leq(g->data_offset + t->offset + t->size, n);
				cr_assert_eq(t->offset % g->alignment, 0);
			}
			void *d;
			size_t ds;
			cr_assert_eq(spa_gguf_load_data(g, &d, &ds, false, &err), 0);
			free(d);
			spa_gguf_close(g);
		} else {
			cr_assert_eq(rc, -SPA_EFORMAT, "rc %d: %s", rc, err.msg);
			cr_assert_neq(err.msg[0], 0);
			cr_assert_null(g);
			refused++;
		}
	}
	cr_assert_gt(refused, 1000);
	free(mut);
	free(img);
}

/* ---------------------------------------------------------------- model level */

struct edit {
	const char *kv_key;         /* set this u32 kv to kv_val */
	uint32_t kv_val;
	const char *drop;           /* drop this tensor */
	const char *reshape;        /* swap ne[0] and ne[1] of this tensor */
};

/* Copy the tiny model through the writer with one edit; returns the check's rc and message. */
static int copy_and_check(const struct edit *e, struct spa_errbuf *err)
{
	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open(&g, tu_tiny_model(), err), 0, "%s", err->msg);
	void *data;
	size_t n;
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, err), 0, "%s", err->msg);
	struct spa_gguf_writer *w;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	for (uint64_t i = 0; i < g->n_kv; i++)
		cr_assert_eq(spa_gguf_writer_copy_kv(w, &g->kv[i]), 0);
	if (e->kv_key) {
		cr_assert_not_null(spa_gguf_find_kv(g, e->kv_key), "%s", e->kv_key);
		cr_assert_eq(spa_gguf_writer_set_u32(w, e->kv_key, e->kv_val), 0);
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		if (e->drop && strcmp(t->name.data, e->drop) == 0)
			continue;
		uint64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
		if (e->reshape && strcmp(t->name.data, e->reshape) == 0) {
			cr_assert_gt(t->n_dims, 1);
			cr_assert_neq(ne[0], ne[1]);
			ne[0] = t->ne[1];
			ne[1] = t->ne[0];
		}
		cr_assert_eq(spa_gguf_writer_add_tensor(w, t->name.data, t->type, t->n_dims, ne,
							(uint8_t *)data + t->offset), 0);
	}
	char path[128];
	snprintf(path, sizeof path, "%s/edited.gguf", tu_tmpdir());
	cr_assert_eq(spa_gguf_writer_write(w, path, false, err), 0, "%s", err->msg);
	spa_gguf_writer_destroy(w);
	free(data);
	spa_gguf_close(g);

	cr_assert_eq(spa_gguf_open(&g, path, err), 0, "%s", err->msg);
	struct spa_hparams hp;
	memset(err, 0, sizeof *err);
	int rc = spa_model_check(g, &hp, err);
	spa_gguf_close(g);
	unlink(path);
	return rc;
}

Test(gguf, model_check_on_copies_of_the_tiny_model, .timeout = 60)
{
	struct spa_errbuf err = {{0}};
	struct edit none = {0};
	cr_assert_eq(copy_and_check(&none, &err), 0, "an unedited copy must pass: %s", err.msg);

	/* Wrong hyperparameters: 3 heads do not divide H = 128. */
	struct edit heads = {.kv_key = "llama.attention.head_count", .kv_val = 3};
	int rc = copy_and_check(&heads, &err);
	cr_assert(rc == -SPA_EMODEL || rc == -SPA_EFORMAT, "rc %d", rc);
	cr_assert_not_null(strstr(err.msg, "head"), "message: %s", err.msg);

	/* Missing tensor. */
	struct edit drop = {.drop = "blk.1.ffn_up.weight"};
	rc = copy_and_check(&drop, &err);
	cr_assert(rc == -SPA_EMODEL || rc == -SPA_EFORMAT, "rc %d", rc);
	cr_assert_not_null(strstr(err.msg, "blk.1.ffn_up.weight"), "message: %s", err.msg);

	/* Mis-shaped tensor. */
	struct edit shape = {.reshape = "blk.2.ffn_down.weight"};
	rc = copy_and_check(&shape, &err);
	cr_assert(rc == -SPA_EMODEL || rc == -SPA_EFORMAT, "rc %d", rc);
	cr_assert_not_null(strstr(err.msg, "blk.2.ffn_down.weight"), "message: %s", err.msg);
}

/* ---------------------------------------------------------------- spa-inspect */

Test(gguf, inspect_tiny_model_and_corrupted_file, .timeout = 60)
{
	const char *model = tu_tiny_model();
	const char *prog = tu_program("spa-inspect");
	cr_assert_eq(access(prog, X_OK), 0, "%s is not built", prog);
	static char out[1 << 20];
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "'%s' '%s'", prog, model);
	int st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 0, "exit %d: %s", st, out);
	cr_assert_not_null(strstr(out, "token_embd.weight"), "%s", out);
	cr_assert_not_null(strstr(out, "general.architecture = 'llama'"), "%s", out);
	cr_assert_not_null(strstr(out, "[string]"), "%s", out);
	cr_assert_not_null(strstr(out, "* totals: "), "%s", out);
	cr_assert_not_null(strstr(out, "OK: loadable llama model: L=4 H=128"), "%s", out);

	/* A plugin for it. */
	snprintf(cmd, sizeof cmd, "'%s' -q '%s'", prog, tu_tiny_plugin("side"));
	st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 0, "exit %d: %s", st, out);
	cr_assert_not_null(strstr(out, "OK: loadable spa plugin: kind side part full rank "), "%s",
			   out);

	/* Corrupted copy: exit 1 and the reader's message. */
	size_t size;
	uint8_t *img = tu_read_file(model, &size);
	cr_assert_not_null(img);
	char path[128];
	snprintf(path, sizeof path, "%s/bad.gguf", tu_tmpdir());
	put64(img + 16, 1ull << 58);
	tu_write_file(path, img, size);
	free(img);
	snprintf(cmd, sizeof cmd, "'%s' '%s'", prog, path);
	st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 1, "exit %d: %s", st, out);
	cr_assert_not_null(strstr(out, "absurd counts"), "%s", out);
	cr_assert_not_null(strstr(out, path), "%s", out);

	/* A valid GGUF that is not a model: exit 1. */
	struct spa_gguf_writer *w;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_gguf_writer_set_str(w, "general.architecture", "gpt2"), 0);
	cr_assert_eq(spa_gguf_writer_write(w, path, false, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 1, "exit %d: %s", st, out);
	cr_assert_not_null(strstr(out, "'gpt2'"), "%s", out);

	/* Usage. */
	snprintf(cmd, sizeof cmd, "'%s'", prog);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 2);
	snprintf(cmd, sizeof cmd, "'%s' --bogus x", prog);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 2);
	snprintf(cmd, sizeof cmd, "'%s' --help", prog);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0);
	cr_assert_not_null(strstr(out, "usage:"), "%s", out);
}
