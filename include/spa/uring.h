/* spa: the io_uring reader (runtime/uring.c).
 *
 * Asynchronous reads of a file into caller memory, several in flight: what
 * spa_gguf_load_data (load.h) uses, and what the engine uses to stream blocks under a memory budget
 * (queue block i+1's tensors, compute block i, then wait for block i+1).
 *
 *	struct spa_uring_reader *r;
 *	spa_uring_reader_create(&r, fd, 8, 0, &err);         // once, at session creation
 *	spa_uring_reader_register(r, &iov, 1);               // optional: staging buffers
 *	spa_uring_read_async(r, dst, file_off, len, 7);      // per tensor of block 7
 *	...compute block 6...
 *	spa_uring_wait(r, 7, -1);                            // block 7 is in memory
 *
 * A read is cut into pieces of at most `chunk` bytes; up to `depth` pieces are in flight and
 * the others queue inside the reader, in order, and are handed to the kernel as earlier ones
 * complete, inside spa_uring_poll / spa_uring_wait (there is no thread: to keep a deep
 * backlog moving during a long computation, call spa_uring_poll now and then, or choose
 * depth * chunk >= the bytes you queue). Short reads are resumed, EINTR and EAGAIN retried.
 *
 * O_DIRECT (SPA_URING_DIRECT): the reader opens its own O_DIRECT descriptor of the same file.
 * A piece goes direct when its file offset, length and destination are aligned to the file's
 * O_DIRECT alignment (statx STATX_DIOALIGN, else 4096) relative to each other: a read whose
 * destination and file offset agree modulo that alignment has its unaligned head and tail
 * read buffered and the middle direct; one whose do not is read buffered. When the
 * filesystem refuses O_DIRECT (EINVAL at open or on a read), the reader goes buffered for
 * good and says so in its stats.
 *
 * Registered buffers: reads whose destination lies inside memory given to
 * spa_uring_reader_register use IORING_OP_READ_FIXED (no page pinning per read).
 *
 * Threads: a reader is used by one thread at a time (no locks inside); distinct readers, on
 * the same fd or not, are independent. Hot path: spa_uring_read_async, spa_uring_poll and
 * spa_uring_wait never allocate, lock or log; read_async and poll do not block (one
 * io_uring_enter to submit), wait blocks until its reads complete or the timeout ends. When
 * io_uring cannot be set up at all (old kernel, seccomp), the reader falls back to pread
 * (stderr says so once per process, unless SPA_URING_QUIET): read_async then reads
 * synchronously and wait returns at once. */
#ifndef SPA_URING_H
#define SPA_URING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "error.h"

struct spa_uring_reader;

#define SPA_URING_DEPTH 8            /* default reads in flight */
#define SPA_URING_CHUNK (4u << 20)   /* default bytes per read piece */
#define SPA_URING_MAX_DEPTH 256
#define SPA_URING_MAX_REQS 256       /* reads queued and not yet waited for, at most */
#define SPA_URING_ALL UINT64_MAX     /* spa_uring_wait: every read queued so far */

enum {
	SPA_URING_DIRECT = 1u << 0,  /* O_DIRECT where aligned (see above) */
	SPA_URING_PREAD = 1u << 1,   /* no io_uring: synchronous pread (comparisons, tests) */
	SPA_URING_QUIET = 1u << 2,   /* no stderr line when falling back to pread */
	SPA_URING_ASYNC = 1u << 3,   /* buffered pieces go straight to io_uring's kernel workers
				      * (IOSQE_ASYNC), one worker per CPU the creating thread
				      * may run on (the workers inherit its affinity): copies
				      * from the page cache run on every such core instead of
				      * inline in submit. Faster warm on 2+ CPUs, slower from
				      * disk; see docs/loading.md */
};

struct spa_uring_stats {
	uint64_t bytes;          /* bytes read and completed */
	uint64_t bytes_direct;   /* of which with O_DIRECT */
	uint64_t pieces;         /* reads handed to the kernel (resubmissions included) */
	uint64_t pieces_fixed;   /* of which READ_FIXED */
	uint64_t short_reads;    /* short reads resumed */
	uint64_t retries;        /* EINTR / EAGAIN resubmitted */
	bool uring;              /* false: pread fallback */
	bool direct;             /* O_DIRECT in use (asked for and accepted so far) */
	int direct_refused;      /* the error that turned O_DIRECT off (-EINVAL...), or 0 */
	unsigned dio_align;      /* O_DIRECT alignment used (bytes) */
	unsigned workers;        /* SPA_URING_ASYNC: kernel workers allowed (one per CPU the
				  * creating thread may run on, at most depth); 0: not set */
};

/* Create a reader over fd (a regular file opened for reading; the caller keeps it open until
 * spa_uring_reader_destroy, and owns it). depth: pieces in flight, 1..SPA_URING_MAX_DEPTH
 * (0: SPA_URING_DEPTH). flags: SPA_URING_*. Returns 0 and *out, -EINVAL (not a regular
 * file, bad depth or flags), -ENOMEM, with err filled. Not on the hot path. A missing
 * io_uring is not an error (pread fallback; see spa_uring_reader_stats). */
int spa_uring_reader_create(struct spa_uring_reader **out, int fd, unsigned depth,
			    unsigned flags, struct spa_errbuf *err);
/* Wait for every read still in flight (they write into caller memory), then free the reader
 * and its O_DIRECT descriptor (not fd). NULL does nothing. */
void spa_uring_reader_destroy(struct spa_uring_reader *r);
/* Bytes per piece for reads queued from now on (rounded up to the O_DIRECT alignment;
 * 0: SPA_URING_CHUNK). Returns 0 or -EINVAL. */
int spa_uring_reader_set_chunk(struct spa_uring_reader *r, size_t chunk);
/* Give the calling thread's buffered reads (SPA_URING_ASYNC) one io_uring kernel worker that
 * runs on the CPUs outside busy[0..n_busy) (the compute threads' CPUs; every CPU when busy
 * covers them all or is NULL). The kernel makes its workers with the affinity of the thread
 * that submits, so a compute thread pinned to one core would otherwise copy its own reads on
 * that core, in turn with its work. The reader allows this thread on those CPUs for a
 * moment, makes the worker then (a one-byte read handed to the workers), limits the thread's
 * workers to that one (the kernel keeps a ring's last worker alive when idle) and puts the
 * affinity back. Call from the thread that will submit, before the first read. Returns 0,
 * -EBUSY (reads already queued), or a negative errno from an older kernel that refuses (the
 * reads work either way). The limit and the affinity belong to the thread (all its rings).
 * Not on the hot path. */
int spa_uring_reader_spread_workers(struct spa_uring_reader *r, const int *busy, unsigned n_busy);
/* Register destination memory (replaces an earlier registration; n == 0 unregisters). The
 * memory stays the caller's and must outlive the registration; it is pinned (RLIMIT_MEMLOCK
 * applies to non-root users). Regions are split into 1 GiB registrations internally.
 * Nothing may be in flight. Returns 0, -EBUSY (reads in flight), -EINVAL, -ENOMEM or the
 * kernel's error (err filled); on failure nothing is registered and reads still work.
 * A no-op returning 0 in pread mode. Not on the hot path. */
int spa_uring_reader_register(struct spa_uring_reader *r, const struct iovec *iov, unsigned n,
			      struct spa_errbuf *err);
/* Queue a read of len bytes at file offset off into dst (len 0 is allowed and completes at
 * once). dst must stay valid and untouched until the read's tag has been waited for. tag is
 * the caller's (anything but SPA_URING_ALL; several reads may share one). Returns 0, or:
 * -EINVAL when [off, off + len) is not inside the file (nothing queued; the message names
 * the file, the range and its size: spa_uring_reader_errmsg), -EBUSY when
 * SPA_URING_MAX_REQS reads are queued and not waited for (wait first), or, in pread mode,
 * the read's own error. Hot path; does not block (submits what fits in the queue). */
int spa_uring_read_async(struct spa_uring_reader *r, void *dst, uint64_t off, size_t len,
			 uint64_t tag);
/* Hand queued pieces to the kernel and reap completions, without blocking. Returns 0 or a
 * negative error of the ring itself (reads' own errors go to their wait). Hot path. */
int spa_uring_poll(struct spa_uring_reader *r);
/* Wait until every read queued with tag (every read: SPA_URING_ALL) has completed, then
 * forget them. timeout_ns < 0: no limit; 0: just check. Returns 0 when all succeeded, the
 * first failed read's error (-errno, or -SPA_EFORMAT when the file ended early; message in
 * spa_uring_reader_errmsg) after all of the tag's reads have ended anyway, -ETIME when the
 * timeout passed first (the reads stay queued: wait again), or -ENOENT when nothing with
 * that tag is queued (SPA_URING_ALL with nothing queued returns 0). Hot path (blocks by
 * design). */
int spa_uring_wait(struct spa_uring_reader *r, uint64_t tag, int64_t timeout_ns);
/* Counters since creation (copied into *st). Thread-safe only with the owning thread. */
void spa_uring_reader_stats(const struct spa_uring_reader *r, struct spa_uring_stats *st);
/* The last error's message ("" when none). Valid until the next call on r. */
const char *spa_uring_reader_errmsg(const struct spa_uring_reader *r);

/* Read size bytes at file offset off into dst with pread, resuming short reads and retrying
 * EINTR and EAGAIN: what a reader does without io_uring, and the GGUF reader's small reads.
 * Returns the bytes read (fewer than size only where the file ends) or -errno. Thread-safe;
 * blocks; not on the hot path. */
ssize_t spa_uring_pread(int fd, void *dst, size_t size, uint64_t off);

#endif
