/* spa: the io_uring reader (see include/spa/uring.h): asynchronous reads of a file into
 * caller memory, cut into pieces with several in flight, O_DIRECT where aligned, and a pread
 * fallback. Used by the loaders (load.c) and by the engine's weight stream. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spa/clock.h"
#include "spa/pin.h"
#include "spa/uring.h"

ssize_t spa_uring_pread(int fd, void *dst, size_t size, uint64_t off)
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
		unsigned w = spa_pin_n_allowed() < depth ? spa_pin_n_allowed() : depth;
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
	/* -ECANCELED: the thread that submitted the read exited (io_uring cancels a task's
	 * requests when it ends), and the reader is used from another thread now (the stream of
	 * a model whose contexts run on several threads): read it again from this one. */
	if (res == -EINTR || res == -EAGAIN || res == -ECANCELED) {
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
		ssize_t n = spa_uring_pread(r->fd, dst, len, off);
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

int spa_uring_wait(struct spa_uring_reader *r, uint64_t tag, int64_t timeout_ns)
{
	int64_t deadline = timeout_ns > 0 ? spa_clock_ns() + timeout_ns : 0;
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
			int64_t left = deadline - spa_clock_ns();
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
