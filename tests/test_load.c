/* Weight loading: spa_gguf_load_data equal to pread of the data section in every load mode
 * and place, cold and warm, with and without a lease or prefaulting; a model that shrinks
 * fails clearly in every mode. */
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
	spa_rng_seed(&rng, seed);
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
	uint8_t *buf = tu_alloc_page(n + 3 * 4096);
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
	uint8_t *buf = tu_alloc_page(n);
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
