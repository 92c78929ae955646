/* spa: GGUF files (version 2 and 3), strict reader and writer.
 *
 * The reader checks every count, length, offset, dimension and type against the file before
 * use and never allocates more than the file justifies; each failure returns -SPA_EFORMAT with
 * a message in the errbuf naming the file, what is wrong and where. Metadata and the tensor
 * table are parsed into memory at open; tensor data is read on request (io_uring).
 *
 * Layout (little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
 * (string key, u32 value type, value), then n_tensors (string name, u32 n_dims, u64 ne[n_dims],
 * u32 ggml type, u64 offset), padding to general.alignment (default 32), tensor data.
 * Strings are u64 length + bytes (no NUL). */
#ifndef SPA_GGUF_H
#define SPA_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "dtype.h"
#include "error.h"

enum spa_gguf_vtype {
	SPA_GGUF_UINT8 = 0,
	SPA_GGUF_INT8 = 1,
	SPA_GGUF_UINT16 = 2,
	SPA_GGUF_INT16 = 3,
	SPA_GGUF_UINT32 = 4,
	SPA_GGUF_INT32 = 5,
	SPA_GGUF_FLOAT32 = 6,
	SPA_GGUF_BOOL = 7,
	SPA_GGUF_STRING = 8,
	SPA_GGUF_ARRAY = 9,
	SPA_GGUF_UINT64 = 10,
	SPA_GGUF_INT64 = 11,
	SPA_GGUF_FLOAT64 = 12,
	SPA_GGUF_VTYPE_COUNT
};

struct spa_gguf_str {
	uint64_t len;
	char *data; /* NUL-terminated copy; may contain embedded NULs (len is authoritative) */
};

struct spa_gguf_kv {
	struct spa_gguf_str key;
	enum spa_gguf_vtype type;
	union {
		uint64_t u;  /* UINT8..UINT64, BOOL */
		int64_t i;   /* INT8..INT64 */
		double f;    /* FLOAT32, FLOAT64 */
		struct spa_gguf_str str;
		struct {
			enum spa_gguf_vtype type; /* element type; never ARRAY (nested arrays refused) */
			uint64_t n;
			/* n elements: packed little-endian values of the element type as in the file,
			 * or, for STRING, n struct spa_gguf_str. */
			void *data;
		} arr;
	} v;
};

struct spa_gguf_tensor {
	struct spa_gguf_str name;
	enum spa_dtype type;
	uint32_t n_dims;     /* 1..4 */
	uint64_t ne[4];      /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
	uint64_t n_elems;
	uint64_t offset;     /* from the start of the data section; aligned */
	uint64_t size;       /* bytes */
};

/* An opened GGUF file (or memory image). Fields are read-only for users. */
struct spa_gguf {
	char *path;          /* file name, or "<memory>" */
	int fd;              /* -1 for a memory image */
	const uint8_t *mem;  /* memory image, or NULL */
	uint32_t version;
	uint64_t n_kv;
	struct spa_gguf_kv *kv;
	uint64_t n_tensors;
	struct spa_gguf_tensor *tensors;
	uint64_t alignment;
	uint64_t data_offset; /* file offset of the data section */
	uint64_t data_size;   /* bytes from data_offset to the end of the last tensor */
	uint64_t file_size;
};

/* Open and validate a GGUF file: header, metadata, tensor table, and that every tensor lies
 * inside the file, aligned, without overlap. Returns 0 and *out (free with spa_gguf_close),
 * or a negative code with err filled. Not on the hot path; thread-safe on distinct files. */
int spa_gguf_open(struct spa_gguf **out, const char *path, struct spa_errbuf *err);
/* Same over a memory image (the caller keeps buf alive until spa_gguf_close). */
int spa_gguf_open_mem(struct spa_gguf **out, const void *buf, size_t size, struct spa_errbuf *err);
void spa_gguf_close(struct spa_gguf *g);

/* Lookups: NULL when absent. */
const struct spa_gguf_kv *spa_gguf_find_kv(const struct spa_gguf *g, const char *key);
const struct spa_gguf_tensor *spa_gguf_find_tensor(const struct spa_gguf *g, const char *name);

/* Typed getters. Integer getters accept any integer kv whose value fits; the float getter
 * accepts FLOAT32/FLOAT64. Return 0, -ENOENT when absent (err untouched), or -SPA_EMODEL with
 * a message when present with the wrong type or out of range. get_str returns a pointer into g. */
int spa_gguf_get_u32(const struct spa_gguf *g, const char *key, uint32_t *out, struct spa_errbuf *err);
int spa_gguf_get_u64(const struct spa_gguf *g, const char *key, uint64_t *out, struct spa_errbuf *err);
int spa_gguf_get_f32(const struct spa_gguf *g, const char *key, float *out, struct spa_errbuf *err);
int spa_gguf_get_str(const struct spa_gguf *g, const char *key, const char **out, struct spa_errbuf *err);
/* An array kv of element type `type` (any type when type == SPA_GGUF_VTYPE_COUNT). */
int spa_gguf_get_arr(const struct spa_gguf *g, const char *key, enum spa_gguf_vtype type,
		     const struct spa_gguf_kv **out, struct spa_errbuf *err);

/* Read the whole data section into a new 4096-byte aligned buffer (free with free()): data
 * in the page cache copied from a mapping under a read lease, data on disk read with
 * O_DIRECT io_uring (spa_uring_reader below: several reads in flight, short reads resumed),
 * as spa_gguf_load_data_opts' SPA_LOAD_AUTO decides. *out + t->offset is tensor
 * t; the bytes after the data section up to the next 4096 are zero. For a memory image,
 * copies. Progress goes to stderr when it is a terminal and show_progress. Returns 0 or a
 * negative code with err filled. Not on the hot path; thread-safe on distinct files. */
int spa_gguf_load_data(struct spa_gguf *g, void **out, size_t *out_size, bool show_progress,
		       struct spa_errbuf *err);
/* How spa_gguf_load_data_opts reads (docs/loading.md has the measurements behind the default). */
enum spa_load_mode {
	SPA_LOAD_AUTO = 0,     /* the measured default (docs/loading.md): SPA_LOAD_MAPPED when
				* most of the data is in the page cache (mincore), O_DIRECT
				* when it is not; the environment variable SPA_LOAD forces a
				* mode */
	SPA_LOAD_BUFFERED,     /* io_uring through the page cache, copied by the kernel's
				* workers on every CPU the caller may run on (they inherit its
				* affinity; inline on one CPU or with no_workers) */
	SPA_LOAD_DIRECT,       /* io_uring with O_DIRECT (buffered where the file refuses it) */
	SPA_LOAD_PREAD,        /* plain pread(), no io_uring */
	SPA_LOAD_MAPPED,       /* mmap of the page cache + memcpy on every CPU the caller may
				* run on, under a read lease (a writer or truncate waits for it,
				* no SIGBUS); buffered io_uring where no lease can be taken (a
				* file open for writing, not the caller's, no leases) and for
				* what is left when a writer breaks the lease */
};

struct spa_load_opts {
	enum spa_load_mode mode;
	unsigned depth;        /* reads in flight; 0: the default (SPA_URING_DEPTH) */
	size_t chunk;          /* bytes per read; 0: the default (SPA_URING_CHUNK). Mapped:
				* bytes per memcpy, the lease checked between them (0: 256 MiB) */
	bool fixed;            /* register the destination (READ_FIXED). Off by default: for a
				* one-shot load of a fresh buffer, pinning it costs more than it
				* saves (bench/load, docs/loading.md); the staging buffers of an
				* O_DIRECT load are always registered */
	bool show_progress;    /* a progress bar on stderr when it is a terminal */
	bool no_workers;       /* buffered: copy out of the page cache in the calling thread
				* (inline in io_uring_enter) instead of in io_uring's kernel
				* workers; they are not used anyway when the caller may run on
				* one CPU only (they inherit its affinity) */
	enum spa_load_mode *used; /* when not NULL: the mode that did the load (AUTO resolved;
				   * BUFFERED where MAPPED found no lease) */
	bool no_prefault;      /* spa_gguf_load_data[_opts]: before an O_DIRECT, pread or inline
				* buffered load, the new buffer is faulted in on every CPU the
				* caller may run on (MADV_POPULATE_WRITE); true: not */
};

/* spa_gguf_load_data with options (NULL: the defaults). SPA_LOAD_AUTO reads the environment
 * variable SPA_LOAD = mapped | buffered | direct | pread (so every program can be forced without a new
 * option) and SPA_LOAD_DEPTH = 1..256. The buffer is 4096-byte aligned; free it with free().
 * Returns 0 or a negative code with err filled. Not on the hot path; thread-safe on distinct
 * files. */
int spa_gguf_load_data_opts(struct spa_gguf *g, void **out, size_t *out_size,
			    const struct spa_load_opts *o, struct spa_errbuf *err);

/* The same into caller memory: dst holds at least cap >= g->data_size bytes (nothing is
 * written past data_size). Any alignment works; O_DIRECT reads go straight into dst when
 * dst and the data section's file offset agree modulo the O_DIRECT alignment (512 or 4096),
 * otherwise through staging buffers (one extra copy). Returns 0, -EINVAL (no dst, cap too
 * small) or a negative code with err filled; on failure dst's contents are unspecified. For a
 * buffer that outlives the model or is reused (a pool, huge pages, device-mapped memory),
 * and for comparing loaders into one destination (bench/load). */
int spa_gguf_load_data_into(struct spa_gguf *g, void *dst, size_t cap,
			    const struct spa_load_opts *o, struct spa_errbuf *err);

/* Read `size` bytes at data-section offset `off` with pread (small reads, fingerprints). */
int spa_gguf_pread(const struct spa_gguf *g, uint64_t off, void *dst, size_t size,
		   struct spa_errbuf *err);

/* ---------------------------------------------------------------- io_uring reader
 *
 * Asynchronous reads of a file into caller memory, several in flight: what
 * spa_gguf_load_data uses, and what the engine uses to stream blocks under a memory budget
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

/* Writer. Keys and tensors are written in the order they are added; tensors are aligned to
 * 32 bytes (general.alignment is not written unless set). Data is borrowed, or produced by a
 * fill callback at write time, so that files larger than memory can be written. */
struct spa_gguf_writer;
/* Fills dst with the tensor's `size` bytes; returns 0 or a negative code (fails the write). */
typedef int (*spa_gguf_fill_fn)(void *ctx, void *dst, size_t size);

/* The setters copy what they are given and return 0, -EINVAL (empty key, bad type, bool not
 * 0/1) or -ENOMEM. Setting a key again replaces its value (any type) in place, keeping the
 * key's position. Not thread-safe on one writer. */

int spa_gguf_writer_create(struct spa_gguf_writer **out);
void spa_gguf_writer_destroy(struct spa_gguf_writer *w);
int spa_gguf_writer_set_u32(struct spa_gguf_writer *w, const char *key, uint32_t v);
int spa_gguf_writer_set_i32(struct spa_gguf_writer *w, const char *key, int32_t v);
int spa_gguf_writer_set_u64(struct spa_gguf_writer *w, const char *key, uint64_t v);
int spa_gguf_writer_set_f32(struct spa_gguf_writer *w, const char *key, float v);
int spa_gguf_writer_set_bool(struct spa_gguf_writer *w, const char *key, bool v);
int spa_gguf_writer_set_str(struct spa_gguf_writer *w, const char *key, const char *v);
/* Array of n elements of scalar type `type` (packed LE values), copied. */
int spa_gguf_writer_set_arr(struct spa_gguf_writer *w, const char *key, enum spa_gguf_vtype type,
			    const void *data, uint64_t n);
int spa_gguf_writer_set_arr_str(struct spa_gguf_writer *w, const char *key,
				const char *const *strs, uint64_t n);
/* Copy a kv (any type, arrays included) from an opened file. */
int spa_gguf_writer_copy_kv(struct spa_gguf_writer *w, const struct spa_gguf_kv *kv);
/* Add a tensor whose data is borrowed (must live until write), or made by fill(ctx, dst, size)
 * at write time. ne[0] is the row dimension, as in the reader. Returns 0, -EEXIST for a name
 * already added, -EINVAL for a name of 0 or >= 64 bytes, n_dims outside 1..4, an ne of 0, an
 * unknown type, a row not a multiple of the type's block or a size that overflows. */
int spa_gguf_writer_add_tensor(struct spa_gguf_writer *w, const char *name, enum spa_dtype type,
			       uint32_t n_dims, const uint64_t *ne, const void *data);
int spa_gguf_writer_add_tensor_fn(struct spa_gguf_writer *w, const char *name,
				  enum spa_dtype type, uint32_t n_dims, const uint64_t *ne,
				  spa_gguf_fill_fn fill, void *ctx);
/* Write to path (atomically: a temporary file renamed into place), or to a new malloc'd buffer
 * (*out, free with free()). Progress to stderr when show_progress and it is a terminal. */
int spa_gguf_writer_write(struct spa_gguf_writer *w, const char *path, bool show_progress,
			  struct spa_errbuf *err);
int spa_gguf_writer_write_mem(struct spa_gguf_writer *w, void **out, size_t *out_size,
			      struct spa_errbuf *err);

#endif
