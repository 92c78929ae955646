/* spa: loading a GGUF's tensor data into memory (runtime/load.c): a mapped copy, buffered or
 * O_DIRECT io_uring (the reader of uring.h), or pread; docs/loading.md has the measurements
 * behind the default. */
#ifndef SPA_LOAD_H
#define SPA_LOAD_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"
#include "gguf.h"
#include "uring.h"

/* Read the whole data section into a new 4096-byte aligned buffer (free with free()): data
 * in the page cache copied from a mapping under a read lease, data on disk read with
 * O_DIRECT io_uring (spa_uring_reader of uring.h: several reads in flight, short reads resumed),
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

#endif
