/* The io_uring reader: it returns exactly the file's bytes for random offsets and lengths
 * (unaligned, crossing 4 KiB, zero-length, several MiB) with every combination of queue depth,
 * O_DIRECT and registered buffers; short files; reads past the end refused; a file that
 * shrinks under the reader; the request table's limit; the pread mode. */
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

static struct spa_rng rng;
static uint64_t rnd(void)
{
	return spa_rng_next(&rng);
}

/* A file of `size` random bytes under a fresh temporary folder; returns its contents. */
static uint8_t *make_file(char *path, size_t cap, size_t size, uint64_t seed)
{
	snprintf(path, cap, "%s/data.bin", tu_tmpdir());
	uint8_t *b = malloc(size ? size : 1);
	cr_assert(b);
	spa_rng_seed(&rng, seed);
	for (size_t i = 0; i < size; i++)
		b[i] = (uint8_t)rnd();
	tu_write_file(path, b, size);
	return b;
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
	uint8_t *buf = tu_alloc_page(BUF_SIZE);
	if (fixed) {
		struct iovec iov = {.iov_base = buf, .iov_len = BUF_SIZE};
		cr_assert_eq(spa_uring_reader_register(r, &iov, 1, &err), 0, "%s", err.msg);
	}
	spa_rng_seed(&rng, 7 * depth + flags * 3 + fixed);
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

Test(uring, random_reads_depth1_buffered) { random_reads(1, 0, false, 64 << 10); }
Test(uring, random_reads_depth8_buffered) { random_reads(8, 0, false, 256 << 10); }
Test(uring, random_reads_depth1_direct) { random_reads(1, SPA_URING_DIRECT, false, 64 << 10); }
Test(uring, random_reads_depth8_direct) { random_reads(8, SPA_URING_DIRECT, false, 128 << 10); }
Test(uring, random_reads_depth1_fixed) { random_reads(1, 0, true, 1 << 20); }
Test(uring, random_reads_depth8_fixed) { random_reads(8, 0, true, 64 << 10); }
Test(uring, random_reads_depth8_direct_fixed) { random_reads(8, SPA_URING_DIRECT, true, 64 << 10); }
Test(uring, random_reads_depth1_direct_fixed) { random_reads(1, SPA_URING_DIRECT, true, 1 << 20); }
Test(uring, random_reads_depth8_async) { random_reads(8, SPA_URING_ASYNC, false, 64 << 10); }
Test(uring, random_reads_depth4_async_direct_fixed)
{
	random_reads(4, SPA_URING_ASYNC | SPA_URING_DIRECT, true, 128 << 10);
}

/* Reads sharing a tag are waited for together, whatever else is queued between them and in
 * whatever order the tags are waited for; a tag waited for is forgotten, the others stay. */
Test(uring, reads_sharing_a_tag_are_waited_for_together)
{
	char path[512];
	const uint8_t *ref = make_file(path, sizeof path, 1 << 20, 77);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, SPA_URING_ASYNC, &err), 0, "%s", err.msg);
	uint8_t *buf = tu_alloc_page(1 << 20);
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

Test(uring, direct_is_used_on_this_filesystem)
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
	uint8_t *buf = tu_alloc_page(1 << 20);
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
Test(uring, short_files)
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
			uint8_t *buf = tu_alloc_page(8192);
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

Test(uring, reads_past_the_end_are_refused)
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
Test(uring, file_that_shrinks_fails_clearly)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 1 << 20, 4);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 4, 0, &err), 0, "%s", err.msg);
	cr_assert_eq(truncate(path, 300000), 0);
	uint8_t *buf = tu_alloc_page(1 << 20);
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

Test(uring, request_table_limit_and_timeouts)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 4 << 20, 6);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 1, 0, &err), 0, "%s", err.msg);
	uint8_t *buf = tu_alloc_page(4 << 20);
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

Test(uring, pread_mode_and_bad_arguments)
{
	char path[512];
	uint8_t *ref = make_file(path, sizeof path, 3 << 20, 8);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct spa_errbuf err;
	struct spa_uring_reader *r;
	cr_assert_eq(spa_uring_reader_create(&r, fd, 0, SPA_URING_PREAD, &err), 0, "%s", err.msg);
	uint8_t *buf = tu_alloc_page(3 << 20);
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
