/* io_uring reader and weight loading: the reader returns exactly the file's bytes for random
 * offsets and lengths (unaligned, crossing 4 KiB, zero-length, several MiB) with every
 * combination of queue depth, O_DIRECT and registered buffers; short files; reads past the
 * end refused; a file that shrinks under the reader; the request table's limit; and
 * spa_gguf_load_data equal to pread of the data section in every load mode. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spa/spa.h"
#include "testutil.h"

static uint64_t rng_state;
static uint64_t rnd(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* A file of `size` random bytes under a fresh temporary folder; returns its contents. */
static uint8_t *make_file(char *path, size_t cap, size_t size, uint64_t seed)
{
	snprintf(path, cap, "%s/data.bin", tu_tmpdir());
	uint8_t *b = malloc(size ? size : 1);
	cr_assert(b);
	rng_state = seed;
	for (size_t i = 0; i < size; i++)
		b[i] = (uint8_t)rnd();
	tu_write_file(path, b, size);
	return b;
}

static void *alloc_page(size_t size)
{
	void *p = NULL;
	cr_assert_eq(posix_memalign(&p, 4096, size ? size : 4096), 0);
	return p;
}

#define FILE_SIZE ((9u << 20) + 12345u)
#define BUF_SIZE (16u << 20)

/* Random reads in batches of 1..12 with distinct tags, waited for one tag at a time or all
 * at once, into one destination buffer (registered or not). A read's destination keeps the
 * file offset's alignment half of the time, so that O_DIRECT has an aligned middle to read. */
static void random_reads(unsigned depth, unsigned flags, bool fixed, size_t chunk)
{
	bool direct = flags & SPA_URING_DIRECT;
	char path[512];
	const uint8_t *ref = make_file(path, sizeof path, FILE_SIZE, 42 + depth);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	struct spa_errbuf err = {{0}};
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, depth, flags, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_uring_reader_set_chunk(r, chunk), 0);
	uint8_t *buf = alloc_page(BUF_SIZE);
	if (fixed) {
		struct iovec iov = {.iov_base = buf, .iov_len = BUF_SIZE};
		cr_assert_eq(spa_uring_reader_register(r, &iov, 1, &err), 0, "%s", err.msg);
	}
	rng_state = 7 * depth + flags * 3 + fixed;
	for (int batch = 0; batch < 40; batch++) {
		unsigned n = 1 + (unsigned)(rnd() % 12);
		struct { size_t at; uint64_t off; size_t len; } rd[12];
		size_t used = 0;
		unsigned m = 0;
		for (unsigned i = 0; i < n; i++) {
			size_t len;
			switch (rnd() % 6) {
			case 0: len = 0; break;
			case 1: len = 1 + rnd() % 64; break;
			case 2: len = 1 + rnd() % 9000; break;          /* crosses 4 KiB pages */
			case 3: len = 4096 * (1 + rnd() % 8); break;
			case 4: len = 1 + rnd() % (1u << 20); break;
			default: len = 1 + rnd() % (3u << 20); break;   /* several pieces */
			}
			if (len > FILE_SIZE)
				len = FILE_SIZE;
			uint64_t off = rnd() % (FILE_SIZE - len + 1);
			if (rnd() % 4 == 0)
				off &= ~(uint64_t)4095;
			/* Next free place in buf, page aligned, plus off's alignment or random. */
			size_t at = (used + 4095) / 4096 * 4096;
			at += rnd() % 2 ? off % 4096 : rnd() % 4096;
			if (at + len > BUF_SIZE)
				break;
			used = at + len;
			rd[i].at = at;
			rd[i].off = off;
			rd[i].len = len;
			memset(buf + at, 0xA5, len);
			cr_assert_eq(spa_uring_read_async(r, buf + at, off, len, 100 + i), 0,
				     "%s", spa_uring_reader_errmsg(r));
			m = i + 1;
		}
		n = m;
		if (batch % 2) {
			cr_assert_eq(spa_uring_wait(r, SPA_URING_ALL, -1), 0, "%s",
				     spa_uring_reader_errmsg(r));
		} else {
			for (unsigned i = n; i-- > 0;)
				cr_assert_eq(spa_uring_wait(r, 100 + i, -1), 0, "%s",
					     spa_uring_reader_errmsg(r));
		}
		for (unsigned i = 0; i < n; i++)
			cr_assert_eq(memcmp(buf + rd[i].at, ref + rd[i].off, rd[i].len), 0,
				     "read %u of batch %d (%zu bytes at %" PRIu64 " into +%zu) differs",
				     i, batch, rd[i].len, rd[i].off, rd[i].at);
	}
	struct spa_uring_stats st;
	spa_uring_reader_stats(r, &st);
	cr_assert(st.uring, "io_uring is not available on this machine");
	if (fixed)
		cr_assert_gt(st.pieces_fixed, 0);
	else
		cr_assert_eq(st.pieces_fixed, 0);
	if (flags & SPA_URING_ASYNC)
		cr_assert(st.workers >= 1 && st.workers <= depth, "kernel workers: %u for depth %u",
			  st.workers, depth);
	else
		cr_assert_eq(st.workers, 0);
	if (direct && st.direct)
		cr_assert_gt(st.bytes_direct, 0, "O_DIRECT was accepted but never used");
	else
		cr_assert_eq(st.bytes_direct, 0);
	cr_assert_eq(spa_uring_wait(r, 1234, 0), -ENOENT);
	cr_assert_eq(spa_uring_wait(r, SPA_URING_ALL, 0), 0);
	spa_uring_reader_destroy(r);
	close(fd);
	free(buf);
	free((void *)ref);
}

Test(load, random_reads_depth1_buffered) { random_reads(1, 0, false, 64 << 10); }
Test(load, random_reads_depth8_buffered) { random_reads(8, 0, false, 256 << 10); }
Test(load, random_reads_depth1_direct) { random_reads(1, SPA_URING_DIRECT, false, 64 << 10); }
Test(load, random_reads_depth8_direct) { random_reads(8, SPA_URING_DIRECT, false, 128 << 10); }
Test(load, random_reads_depth1_fixed) { random_reads(1, 0, true, 1 << 20); }
Test(load, random_reads_depth8_fixed) { random_reads(8, 0, true, 64 << 10); }
Test(load, random_reads_depth8_direct_fixed) { random_reads(8, SPA_URING_DIRECT, true, 64 << 10); }
Test(load, random_reads_depth1_direct_fixed) { random_reads(1, SPA_URING_DIRECT, true, 1 << 20); }
Test(load, random_reads_depth8_async) { random_reads(8, SPA_URING_ASYNC, false, 64 << 10); }
Test(load, random_reads_depth4_async_direct_fixed)
{
	random_reads(4, SPA_URING_ASYNC | SPA_URING_DIRECT, true, 128 << 10);
}

/* Reads sharing a tag are waited for together, whatever else is queued between them and in
 * whatever order the tags are waited for; a tag waited for is forgotten, the others stay. */
Test(load, reads_sharing_a_tag_are_waited_for_together)
{
	char path[512];
	const uint8_t *ref = make_file(path, sizeof path, 1 << 20, 77);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, SPA_URING_ASYNC, &err), 0, "%s", err.msg);
	uint8_t *buf = alloc_page(1 << 20);
	const uint64_t tags[] = { 1, 2, 1, 3, 1, 2 };
	const size_t n = sizeof tags / sizeof tags[0], part = (1 << 20) / n / 4096 * 4096;
	for (int round = 0; round < 3; round++) {
		memset(buf, 0, 1 << 20);
		for (size_t i = 0; i < n; i++)
			cr_assert_eq(spa_uring_read_async(r, buf + i * part, i * part, part, tags[i]), 0,
				     "%s", spa_uring_reader_errmsg(r));
		const uint64_t order[3][3] = { { 1, 2, 3 }, { 3, 1, 2 }, { 2, 3, 1 } };
		for (int j = 0; j < 3; j++) {
			const uint64_t t = order[round][j];
			cr_assert_eq(spa_uring_wait(r, t, -1), 0, "%s", spa_uring_reader_errmsg(r));
			for (size_t i = 0; i < n; i++)
				if (tags[i] == t)
					cr_assert_eq(memcmp(buf + i * part, ref + i * part, part), 0,
						     "round %d: read %zu (tag %" PRIu64 ") not done", round,
						     i, t);
			/* (the tags waited for later are still known: their waits return 0) */
			cr_assert_eq(spa_uring_wait(r, t, 0), -ENOENT, "tag %" PRIu64 " forgotten", t);
		}
		cr_assert_eq(spa_uring_wait(r, SPA_URING_ALL, 0), 0, "nothing left");
	}
	spa_uring_reader_destroy(r);
	close(fd);
	free(buf);
	free((void *)ref);
}

Test(load, direct_is_used_on_this_filesystem)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 1 << 20, 5);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, SPA_URING_DIRECT, &err), 0, "%s", err.msg);
	struct spa_uring_stats st;
	spa_uring_reader_stats(r, &st);
	if (!st.direct) {
		spa_uring_reader_destroy(r);
		close(fd);
		free(ref);
		cr_skip_test("O_DIRECT is refused for files under %s (%s): nothing to check",
			     path, strerror(-st.direct_refused));
	}
	uint8_t *buf = alloc_page(1 << 20);
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 1 << 20, 1), 0);
	cr_assert_eq(spa_uring_wait(r, 1, -1), 0, "%s", spa_uring_reader_errmsg(r));
	cr_assert_eq(memcmp(buf, ref, 1 << 20), 0);
	spa_uring_reader_stats(r, &st);
	cr_assert_eq(st.bytes_direct, 1u << 20, "an aligned read should go all direct");
	spa_uring_reader_destroy(r);
	close(fd);
	free(buf);
	free(ref);
}

/* Files shorter than a page, and a page and a bit: only head and tail, no aligned middle. */
Test(load, short_files)
{
	static const size_t sizes[] = {1, 100, 4095, 4096, 4097, 5000, 8191};
	for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
		for (int direct = 0; direct < 2; direct++) {
			char path[512];
			size_t n = sizes[k];
			uint8_t *ref = make_file(path, sizeof path, n, 100 + k);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			struct spa_errbuf err;
			struct spa_uring_reader *r;
			cr_assert_eq(spa_uring_reader_create(&r, fd, 2, direct ? SPA_URING_DIRECT : 0,
							     &err), 0, "%s", err.msg);
			uint8_t *buf = alloc_page(8192);
			for (uint64_t off = 0; off < n; off += 1 + n / 3) {
				memset(buf, 0, 8192);
				cr_assert_eq(spa_uring_read_async(r, buf + off % 4096, off, n - off, 9),
					     0);
				cr_assert_eq(spa_uring_wait(r, 9, -1), 0, "%s",
					     spa_uring_reader_errmsg(r));
				cr_assert_eq(memcmp(buf + off % 4096, ref + off, n - off), 0,
					     "file of %zu bytes, read from %" PRIu64 ", direct %d", n,
					     off, direct);
			}
			/* The whole file, one read: exactly its size is allowed, one more is not. */
			cr_assert_eq(spa_uring_read_async(r, buf, 0, n, 1), 0);
			cr_assert_eq(spa_uring_read_async(r, buf, 0, n + 1, 2), -EINVAL);
			cr_assert_eq(spa_uring_wait(r, 1, -1), 0);
			cr_assert_eq(spa_uring_wait(r, 2, 0), -ENOENT, "a refused read is not queued");
			cr_assert_eq(memcmp(buf, ref, n), 0);
			spa_uring_reader_destroy(r);
			close(fd);
			free(buf);
			free(ref);
		}
	}
}

Test(load, reads_past_the_end_are_refused)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 10000, 3);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, 0, &err), 0, "%s", err.msg);
	uint8_t buf[64];
	cr_assert_eq(spa_uring_read_async(r, buf, 9990, 11, 1), -EINVAL);
	const char *m = spa_uring_reader_errmsg(r);
	cr_assert(strstr(m, "past the end of the file") && strstr(m, "data.bin") &&
		  strstr(m, "10000 bytes"), "unclear message: %s", m);
	cr_assert_eq(spa_uring_read_async(r, buf, 10001, 0, 1), -EINVAL);
	cr_assert_eq(spa_uring_read_async(r, buf, UINT64_MAX - 4, 8, 1), -EINVAL);
	cr_assert_eq(spa_uring_read_async(r, buf, 10000, 0, 1), 0, "empty read at the end");
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 8, SPA_URING_ALL), -EINVAL);
	cr_assert_eq(spa_uring_wait(r, 1, -1), 0);
	spa_uring_reader_destroy(r);
	close(fd);
	free(ref);
}

/* The file shrinks after the reader saw its size: the read fails at wait with a message. */
Test(load, file_that_shrinks_fails_clearly)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 1 << 20, 4);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, 0, &err), 0, "%s", err.msg);
	cr_assert_eq(truncate(path, 300000), 0);
	uint8_t *buf = alloc_page(1 << 20);
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 1 << 20, 5), 0);
	cr_assert_eq(spa_uring_wait(r, 5, -1), -SPA_EFORMAT);
	cr_assert(strstr(spa_uring_reader_errmsg(r), "shrank"), "%s", spa_uring_reader_errmsg(r));
	cr_assert_eq(memcmp(buf, ref, 300000), 0, "what the file still holds was read");
	cr_assert_eq(spa_uring_wait(r, 5, 0), -ENOENT, "a failed read is forgotten once reported");
	spa_uring_reader_destroy(r);
	close(fd);
	free(buf);
	free(ref);
}

Test(load, request_table_limit_and_timeouts)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 4 << 20, 6);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 1, 0, &err), 0, "%s", err.msg);
	uint8_t *buf = alloc_page(4 << 20);
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 4 << 20, 7), 0);
	struct iovec iov = {.iov_base = buf, .iov_len = 4 << 20};
	cr_assert_eq(spa_uring_reader_register(r, &iov, 1, &err), -EBUSY, "registered mid-read");
	for (unsigned i = 1; i < SPA_URING_MAX_REQS; i++)
		cr_assert_eq(spa_uring_read_async(r, buf, i, 0, i), 0);
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 1, 999), -EBUSY);
	cr_assert(strstr(spa_uring_reader_errmsg(r), "wait"));
	int w;
	while ((w = spa_uring_wait(r, 7, 1000)) == -ETIME)
		;
	cr_assert_eq(w, 0, "%s", spa_uring_reader_errmsg(r));
	cr_assert_eq(memcmp(buf, ref, 4 << 20), 0);
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 1, 999), 0, "a waited tag frees its entry");
	cr_assert_eq(spa_uring_wait(r, SPA_URING_ALL, -1), 0);
	/* Destroying with reads in flight waits for them (no use-after-free under ASan). */
	cr_assert_eq(spa_uring_read_async(r, buf, 0, 4 << 20, 8), 0);
	spa_uring_reader_destroy(r);
	close(fd);
	free(buf);
	free(ref);
}

Test(load, pread_mode_and_bad_arguments)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 3 << 20, 8);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 0, SPA_URING_PREAD, &err), 0, "%s", err.msg);
	uint8_t *buf = alloc_page(3 << 20);
	cr_assert_eq(spa_uring_read_async(r, buf + 1, 17, (3 << 20) - 17, 1), 0);
	cr_assert_eq(spa_uring_wait(r, 1, -1), 0);
	cr_assert_eq(memcmp(buf + 1, ref + 17, (3 << 20) - 17), 0);
	struct spa_uring_stats st;
	spa_uring_reader_stats(r, &st);
	cr_assert(!st.uring);
	spa_uring_reader_destroy(r);
	cr_assert_eq(spa_uring_reader_create(&r, fd, SPA_URING_MAX_DEPTH + 1, 0, &err), -EINVAL);
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, 1u << 20, &err), -EINVAL);
	cr_assert_eq(spa_uring_reader_create(&r, -1, 4, 0, &err), -EBADF);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	cr_assert_eq(spa_uring_reader_create(&r, pfd[0], 4, 0, &err), -EINVAL);
	cr_assert(strstr(err.msg, "not a regular file"), "%s", err.msg);
	close(pfd[0]);
	close(pfd[1]);
	spa_uring_reader_destroy(NULL);
	close(fd);
	free(buf);
	free(ref);
}

/* The data section of g as the file holds it now (malloc'ed; read with pread). */
static uint8_t *section_bytes(struct spa_gguf *g)
{
	struct spa_errbuf err;
	uint8_t *b = malloc(g->data_size ? g->data_size : 1);
	cr_assert_not_null(b);
	cr_assert_eq(spa_gguf_pread(g, 0, b, g->data_size, &err), 0, "%s", err.msg);
	return b;
}

/* spa_gguf_load_data in every mode gives the data section exactly as pread reads it. */
Test(load, load_data_equals_pread_in_every_mode)
{
	struct spa_errbuf err;
	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open(&g, tu_tiny_model(), &err), 0, "%s", err.msg);
	uint8_t *want = section_bytes(g);
	static const struct spa_load_opts opts[] = {
		{.mode = SPA_LOAD_AUTO},
		{.mode = SPA_LOAD_BUFFERED, .depth = 1},
		{.mode = SPA_LOAD_BUFFERED, .depth = 8, .chunk = 4096},
		{.mode = SPA_LOAD_BUFFERED, .depth = 3, .chunk = 8192, .fixed = true},
		{.mode = SPA_LOAD_DIRECT, .depth = 8, .chunk = 8192},
		{.mode = SPA_LOAD_DIRECT, .depth = 1, .fixed = true},
		{.mode = SPA_LOAD_PREAD},
	};
	for (size_t k = 0; k < sizeof opts / sizeof *opts; k++) {
		void *data;
		size_t n;
		cr_assert_eq(spa_gguf_load_data_opts(g, &data, &n, &opts[k], &err), 0, "mode %zu: %s",
			     k, err.msg);
		cr_assert_eq(n, g->data_size);
		cr_assert_eq((uintptr_t)data % 4096, 0);
		cr_assert_eq(memcmp(data, want, n), 0, "load mode %zu differs from pread", k);
		free(data);
	}
	void *data;
	size_t n;
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, &err), 0, "%s", err.msg);
	cr_assert_eq(memcmp(data, want, n), 0);
	free(data);
	setenv("SPA_LOAD", "sideways", 1);
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, &err), -SPA_EUSAGE);
	cr_assert(strstr(err.msg, "SPA_LOAD=sideways"), "%s", err.msg);
	setenv("SPA_LOAD", "direct", 1);
	setenv("SPA_LOAD_DEPTH", "2", 1);
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, &err), 0, "%s", err.msg);
	cr_assert_eq(memcmp(data, want, n), 0);
	free(data);
	setenv("SPA_LOAD_DEPTH", "0", 1);
	cr_assert_eq(spa_gguf_load_data(g, &data, &n, false, &err), -SPA_EUSAGE);
	unsetenv("SPA_LOAD");
	unsetenv("SPA_LOAD_DEPTH");
	spa_gguf_close(g);
	free(want);
}

/* The default mode on a file out of the page cache (O_DIRECT, staged through registered
 * buffers when the data section is not block aligned) and back in it (buffered). */
Test(load, auto_mode_cold_and_warm_gives_the_same_bytes)
{
	size_t size;
	void *file = tu_read_file(tu_tiny_model(), &size);
	cr_assert(file);
	char path[512];
	snprintf(path, sizeof path, "%s/cold.gguf", tu_tmpdir());
	tu_write_file(path, file, size);
	free(file);
	struct spa_errbuf err;
	struct spa_gguf *g;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	uint8_t *want = section_bytes(g);
	for (int cold = 1; cold >= 0; cold--) {
		if (cold) {
			cr_assert_eq(fdatasync(g->fd), 0);
			cr_assert_eq(posix_fadvise(g->fd, 0, 0, POSIX_FADV_DONTNEED), 0);
		}
		void *data;
		size_t n;
		struct spa_load_opts o = {.chunk = 64 << 10, .depth = 3};
		cr_assert_eq(spa_gguf_load_data_opts(g, &data, &n, &o, &err), 0, "%s", err.msg);
		cr_assert_eq(n, g->data_size);
		cr_assert_eq(memcmp(data, want, n), 0, "%s load differs", cold ? "cold" : "warm");
		free(data);
	}
	spa_gguf_close(g);
	free(want);
}

/* A GGUF file with two F32 tensors of odd sizes (random data, about `mb` MiB in all) under a
 * fresh temporary folder; the data section then starts at a 32-byte boundary, not a 512-byte
 * one (O_DIRECT stages) unless the header happens to end there. */
static void make_model(char *path, size_t cap, unsigned mb, uint64_t seed)
{
	snprintf(path, cap, "%s/big.gguf", tu_tmpdir());
	uint64_t ne0[1] = {((uint64_t)mb << 18) - 1234}, ne1[2] = {777, 3};
	float *a = malloc(ne0[0] * 4), *b = malloc(ne1[0] * ne1[1] * 4);
	cr_assert(a && b);
	rng_state = seed;
	for (uint64_t i = 0; i < ne0[0]; i++)
		a[i] = (float)(rnd() % 100000);
	for (uint64_t i = 0; i < ne1[0] * ne1[1]; i++)
		b[i] = (float)(rnd() % 100000);
	struct spa_gguf_writer *w;
	struct spa_errbuf err;
	cr_assert_eq(spa_gguf_writer_create(&w), 0);
	cr_assert_eq(spa_gguf_writer_set_str(w, "general.name", "load-test"), 0);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "a", SPA_TYPE_F32, 1, ne0, a), 0);
	cr_assert_eq(spa_gguf_writer_add_tensor(w, "b", SPA_TYPE_F32, 2, ne1, b), 0);
	cr_assert_eq(spa_gguf_writer_write(w, path, false, &err), 0, "%s", err.msg);
	spa_gguf_writer_destroy(w);
	free(a);
	free(b);
}

/* make_model, then the file opened (the test fails when it cannot be). */
static struct spa_gguf *open_model(char *path, size_t cap, unsigned mb, uint64_t seed)
{
	make_model(path, cap, mb, seed);
	struct spa_errbuf err;
	struct spa_gguf *g = NULL;
	cr_assert_eq(spa_gguf_open(&g, path, &err), 0, "%s", err.msg);
	return g;
}

static void drop_file(int fd)
{
	cr_assert_eq(fdatasync(fd), 0);
	cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
}

/* spa_gguf_load_data_into: every mode, into destinations at odd places (aligned like the
 * file offset or not), several MiB so that the mapped copy splits over threads and io_uring
 * cuts pieces; nothing is written past the data section; what AUTO picks warm and cold. */
Test(load, load_into_every_mode_and_place)
{
	char path[512];
	struct spa_errbuf err;
	struct spa_gguf *g = open_model(path, sizeof path, 9, 11);
	size_t n = g->data_size;
	uint8_t *want = section_bytes(g);
	uint8_t *buf = alloc_page(n + 3 * 4096);
	static const enum spa_load_mode modes[] = {SPA_LOAD_AUTO, SPA_LOAD_MAPPED,
		SPA_LOAD_BUFFERED, SPA_LOAD_DIRECT, SPA_LOAD_PREAD};
	size_t places[] = {0, 1, 4095, g->data_offset % 4096, 512 + g->data_offset % 512};
	for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
		for (size_t p = 0; p < sizeof places / sizeof *places; p++) {
			for (int workers = 0; workers < 2; workers++) {
				memset(buf, 0x5A, n + 3 * 4096);
				enum spa_load_mode used = (enum spa_load_mode)-1;
				struct spa_load_opts o = {.mode = modes[m], .no_workers = workers,
							  .chunk = p % 2 ? 1 << 20 : 0,
							  .used = &used};
				uint8_t *dst = buf + places[p];
				cr_assert_eq(spa_gguf_load_data_into(g, dst, n, &o, &err), 0,
					     "mode %d at +%zu: %s", modes[m], places[p], err.msg);
				cr_assert_eq(memcmp(dst, want, n), 0, "mode %d at +%zu differs",
					     modes[m], places[p]);
				for (size_t i = 0; i < places[p]; i++)
					cr_assert_eq(buf[i], 0x5A, "written before the destination");
				for (size_t i = places[p] + n; i < n + 3 * 4096; i++)
					cr_assert_eq(buf[i], 0x5A, "written past the data section");
				if (modes[m] == SPA_LOAD_AUTO)
					cr_assert_eq(used, SPA_LOAD_MAPPED, "warm: mapped copy, got %d",
						     used);
				else
					cr_assert_eq(used, modes[m]);
			}
		}
	}
	/* Cold: AUTO reads with O_DIRECT, staged when the place does not agree with the
	 * file offset, straight otherwise; mapped from disk works too (faults read it). */
	for (size_t p = 0; p < sizeof places / sizeof *places; p++) {
		for (int k = 0; k < 2; k++) {
			drop_file(g->fd);
			enum spa_load_mode used = (enum spa_load_mode)-1;
			struct spa_load_opts o = {.mode = k ? SPA_LOAD_MAPPED : SPA_LOAD_AUTO,
						  .used = &used};
			memset(buf, 0x5A, n + 3 * 4096);
			cr_assert_eq(spa_gguf_load_data_into(g, buf + places[p], n, &o, &err), 0,
				     "%s", err.msg);
			cr_assert_eq(memcmp(buf + places[p], want, n), 0, "cold load differs");
			cr_assert_eq(used, k ? SPA_LOAD_MAPPED : SPA_LOAD_DIRECT);
		}
	}
	cr_assert_eq(spa_gguf_load_data_into(g, buf, n - 1, NULL, &err), -EINVAL);
	cr_assert(strstr(err.msg, "holds") && strstr(err.msg, "big.gguf"), "%s", err.msg);
	cr_assert_eq(spa_gguf_load_data_into(g, NULL, n, NULL, &err), -EINVAL);
	cr_assert(strstr(err.msg, "no destination"), "%s", err.msg);
	spa_gguf_close(g);
	free(buf);
	free(want);
}

/* No lease while someone has the file open for writing: the mapped copy is not tried and the
 * load is buffered io_uring; the bytes are the same. */
Test(load, mapped_without_a_lease_reads_buffered)
{
	char path[512];
	struct spa_errbuf err;
	struct spa_gguf *g = open_model(path, sizeof path, 3, 12);
	uint8_t *want = section_bytes(g);
	int wfd = open(path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(wfd, 0);
	void *data;
	size_t n;
	enum spa_load_mode used = SPA_LOAD_AUTO;
	struct spa_load_opts o = {.mode = SPA_LOAD_MAPPED, .used = &used};
	cr_assert_eq(spa_gguf_load_data_opts(g, &data, &n, &o, &err), 0, "%s", err.msg);
	cr_assert_eq(used, SPA_LOAD_BUFFERED, "a lease was granted on a file open for writing");
	cr_assert_eq(memcmp(data, want, n), 0);
	free(data);
	close(wfd);
	o.used = &used;
	cr_assert_eq(spa_gguf_load_data_opts(g, &data, &n, &o, &err), 0, "%s", err.msg);
	cr_assert_eq(used, SPA_LOAD_MAPPED, "the writer is gone: the lease should be granted");
	cr_assert_eq(memcmp(data, want, n), 0);
	free(data);
	spa_gguf_close(g);
	free(want);
}

/* The file shrank after it was opened: every mode fails with -SPA_EFORMAT and a message
 * (the mapped copy sees the size under its lease: no SIGBUS). */
Test(load, model_that_shrank_fails_clearly_in_every_mode)
{
	char path[512];
	struct spa_errbuf err;
	struct spa_gguf *g = open_model(path, sizeof path, 2, 13);
	cr_assert_eq(truncate(path, (off_t)(g->data_offset + g->data_size / 2 + 3)), 0);
	static const enum spa_load_mode modes[] = {SPA_LOAD_AUTO, SPA_LOAD_MAPPED,
		SPA_LOAD_BUFFERED, SPA_LOAD_DIRECT, SPA_LOAD_PREAD};
	for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
		void *data = (void *)1;
		size_t n = 1;
		struct spa_load_opts o = {.mode = modes[m]};
		int rc = spa_gguf_load_data_opts(g, &data, &n, &o, &err);
		cr_assert_eq(rc, -SPA_EFORMAT, "mode %d: %d %s", modes[m], rc, rc ? err.msg : "");
		cr_assert(strstr(err.msg, "shrank") && strstr(err.msg, "big.gguf"), "mode %d: %s",
			  modes[m], err.msg);
		cr_assert_eq(data, NULL);
		cr_assert_eq(n, 0);
	}
	spa_gguf_close(g);
}

struct shrinker {
	const char *path;
	off_t to;
	int rc;
};

static void *shrink_soon(void *arg)
{
	struct shrinker *s = arg;
	usleep(2000);
	s->rc = truncate(s->path, s->to); /* waits while a read lease is held */
	return NULL;
}

/* A truncate while the mapped copy runs (the file cold, copied 256 KiB per memcpy, so that it
 * takes a while): it waits for the lease, the copy stops at the next piece, and the rest is
 * read with io_uring, which finds the file shorter. Either the load ended before the
 * truncate (0, all bytes right) or it fails with -SPA_EFORMAT; never SIGBUS. */
Test(load, truncate_during_a_mapped_copy_is_an_error_not_a_crash)
{
	int outcomes[2] = {0, 0};
	for (int round = 0; round < 6; round++) {
		char path[512];
		struct spa_errbuf err;
		struct spa_gguf *g = open_model(path, sizeof path, 24, 14);
		uint8_t *want = section_bytes(g);
		drop_file(g->fd);
		struct shrinker s = {.path = path, .to = (off_t)(g->data_offset + 4096)};
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, shrink_soon, &s), 0);
		void *data;
		size_t n;
		struct spa_load_opts o = {.mode = SPA_LOAD_MAPPED, .chunk = 256 << 10};
		int rc = spa_gguf_load_data_opts(g, &data, &n, &o, &err);
		pthread_join(th, NULL);
		cr_assert_eq(s.rc, 0, "the truncate failed: %s", strerror(errno));
		if (rc == 0) {
			cr_assert_eq(memcmp(data, want, n), 0, "a load that succeeded differs");
			free(data);
			outcomes[0]++;
		} else {
			cr_assert_eq(rc, -SPA_EFORMAT, "%s", err.msg);
			cr_assert(strstr(err.msg, "shrank"), "%s", err.msg);
			outcomes[1]++;
		}
		spa_gguf_close(g);
		free(want);
	}
	cr_log_info("truncate during mapped copy: %d loads ended first, %d saw the file shrink",
		    outcomes[0], outcomes[1]);
}

/* AUTO decides by the share of the data section in the page cache (sampled over the section
 * when it is larger than 16 MiB): a fifth resident reads O_DIRECT, four fifths mapped. */
Test(load, auto_picks_by_residency)
{
	char path[512];
	struct spa_errbuf err;
	struct spa_gguf *g = open_model(path, sizeof path, 40, 15);
	size_t n = g->data_size;
	uint8_t *want = malloc(n);
	uint8_t *buf = alloc_page(n);
	static const struct { double part; enum spa_load_mode mode; } cases[] = {
		{0.0, SPA_LOAD_DIRECT}, {0.2, SPA_LOAD_DIRECT}, {0.8, SPA_LOAD_MAPPED},
		{1.0, SPA_LOAD_MAPPED},
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		drop_file(g->fd);
		size_t part = (size_t)(cases[c].part * (double)n);
		/* no readahead: the kernel would otherwise cache more than the part read (its
		 * window grows past a fifth of a small file), and the residency would not be the
		 * case's */
		cr_assert_eq(posix_fadvise(g->fd, 0, 0, POSIX_FADV_RANDOM), 0);
		if (part)
			cr_assert_eq(spa_gguf_pread(g, 0, want, part, &err), 0, "%s", err.msg);
		cr_assert_eq(posix_fadvise(g->fd, 0, 0, POSIX_FADV_NORMAL), 0);
		enum spa_load_mode used = (enum spa_load_mode)-1;
		struct spa_load_opts o = {.used = &used};
		memset(buf, 0, n);
		cr_assert_eq(spa_gguf_load_data_into(g, buf, n, &o, &err), 0, "%s", err.msg);
		cr_assert_eq(used, cases[c].mode, "%.0f %% resident: mode %d, expected %d",
			     100 * cases[c].part, used, cases[c].mode);
		cr_assert_eq(spa_gguf_pread(g, 0, want, n, &err), 0, "%s", err.msg);
		cr_assert_eq(memcmp(buf, want, n), 0);
	}
	spa_gguf_close(g);
	free(buf);
	free(want);
}

/* spa_gguf_load_data_opts into its own buffer, with and without faulting it in on every CPU
 * first, in the modes that do that (O_DIRECT, pread, buffered inline) and those that do not
 * (mapped, buffered with kernel workers): the same bytes, the tail up to 4096 zeroed. */
Test(load, load_data_with_and_without_prefault)
{
	char path[512];
	struct spa_errbuf err;
	struct spa_gguf *g = open_model(path, sizeof path, 9, 16);
	uint8_t *want = section_bytes(g);
	static const struct spa_load_opts opts[] = {
		{.mode = SPA_LOAD_DIRECT}, {.mode = SPA_LOAD_PREAD},
		{.mode = SPA_LOAD_BUFFERED, .no_workers = true}, {.mode = SPA_LOAD_BUFFERED},
		{.mode = SPA_LOAD_MAPPED}, {.mode = SPA_LOAD_AUTO},
	};
	for (size_t k = 0; k < sizeof opts / sizeof *opts; k++) {
		for (int pf = 0; pf < 2; pf++) {
			struct spa_load_opts o = opts[k];
			o.no_prefault = pf;
			void *data;
			size_t n;
			cr_assert_eq(spa_gguf_load_data_opts(g, &data, &n, &o, &err), 0, "%s", err.msg);
			cr_assert_eq(n, g->data_size);
			cr_assert_eq(memcmp(data, want, n), 0, "mode %zu, no_prefault %d", k, pf);
			for (size_t i = n; i % 4096; i++)
				cr_assert_eq(((uint8_t *)data)[i], 0, "tail byte %zu not zero", i);
			free(data);
		}
	}
	spa_gguf_close(g);
	free(want);
}
