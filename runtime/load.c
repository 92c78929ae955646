/* spa: loading a GGUF's tensor data (see include/spa/load.h): a mapped copy under a read
 * lease, buffered or O_DIRECT io_uring (uring.c), or pread, into a new buffer or caller
 * memory; SPA_LOAD_AUTO picks by what the page cache holds.
 *
 * Docs: docs/loading.md (the measurements behind each choice). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_impl.h"
#include "spa/load.h"
#include "spa/pin.h"

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
	unsigned n = spa_pin_n_allowed();
	if (n > LOAD_MAP_THREADS)
		n = LOAD_MAP_THREADS;
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
	    spa_pin_n_allowed() > 1)
		flags |= SPA_URING_ASYNC;
	if (fresh >= LOAD_MAP_ALIGN && !n_jobs && !(flags & SPA_URING_ASYNC) && !o->no_prefault &&
	    spa_pin_n_allowed() > 1)
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
