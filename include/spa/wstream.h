/* spa: a model's weight stream under a memory budget (runtime/wstream.c).
 *
 * spa_model_load_budget keeps part of every block matrix resident and makes the model's
 * stream, which reads the other rows from the file per token with io_uring, in pieces of
 * about 1 MiB through a ring of about 8 MiB that stays in the last-level cache: unit n of the
 * endless sequence of pieces (every block matrix's streamed rows in forward order, then again
 * for the next token) is read into buffer n % n_slots once unit n - n_slots is done with, so
 * the reads run up to a ring ahead of the products. The stream belongs to the model and is
 * shared by every context over it: a step takes it for its whole length (spa_wstream_lock),
 * so contexts used from several threads take turns, and a batched step over several
 * contexts reads the streamed weights once for all of them. */
#ifndef SPA_WSTREAM_H
#define SPA_WSTREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "kernels.h"
#include "model.h"

struct spa_wstream;

/* Load a model under a weight-memory budget of mem_budget bytes (0: no budget, the same as
 * spa_model_load). When the model does not fit, the norms and the LM head are read once, and
 * every block matrix keeps the same share of its rows resident (its first rows, in
 * m->res_part; the matrix's spa_tensor.data is NULL); the model's stream (m->stream) reads the
 * others per token. The token embedding is read one row per token. Results are bit-identical
 * to a fully loaded model. $SPA_STREAM_PIECE_KIB sets the piece size (1-65536 KiB); under a
 * tight budget the pieces shrink otherwise. Returns 0, or -SPA_EUSAGE when the budget cannot
 * hold the LM head, the norms and the ring (err says the least budget that works) or the
 * piece size is not valid, or the loader's errors. Free with spa_model_destroy. */
int spa_model_load_budget(struct spa_model **out, const char *path, uint64_t mem_budget,
			  bool show_progress, struct spa_errbuf *err);

/* Free the stream (spa_model_destroy calls it); waits for the reads in flight. NULL: nothing. */
void spa_wstream_destroy(struct spa_wstream *st);

/* A step holds the stream from its first piece to its last (pieces come in forward order).
 * Blocks while another thread's step holds it. */
void spa_wstream_lock(struct spa_wstream *st);
void spa_wstream_unlock(struct spa_wstream *st);

/* Whether block l has streamed rows. */
bool spa_wstream_block_streamed(const struct spa_wstream *st, uint32_t l);
/* The most rows of a streamed matrix (a batched step's scratch for a piece's products). */
uint64_t spa_wstream_most_rows(const struct spa_wstream *st);
/* Bytes of one token embedding row (0: the embedding is resident). */
uint64_t spa_wstream_embd_row_size(const struct spa_wstream *st);

/* The next piece of the stream, which must be block l's matrix k, waiting for its read: its
 * rows r0..r1 of the matrix as a tensor in *w (rows as the file lays them out), valid until
 * spa_wstream_piece_put. Returns 0, or the read's error (the stream then stays ended:
 * spa_wstream_error). Hot path; hold the lock. */
int spa_wstream_piece_get(struct spa_wstream *st, uint32_t l, int k, struct spa_tensor *w,
			  uint32_t *r0, uint32_t *r1);
void spa_wstream_piece_put(struct spa_wstream *st);
/* Token `token`'s embedding row as the file holds it into dst (embd_row_size bytes). Returns
 * 0 or the read's error (with spa_wstream_error's words). Hot path (one pread); hold the lock. */
int spa_wstream_embd_row(struct spa_wstream *st, int32_t token, void *dst);
/* A step that used the stream is over (counted in the stats). Hold the lock. */
void spa_wstream_step_done(struct spa_wstream *st);

/* The sticky error (0: fine) and its words ("" when none). */
int spa_wstream_err(const struct spa_wstream *st);
const char *spa_wstream_error(const struct spa_wstream *st);

/* Run the reads' copies (io_uring kernel workers) on CPUs other than busy[0..n) (the compute
 * threads'), best effort. Not on the hot path. */
void spa_wstream_spread(struct spa_wstream *st, const int *busy, unsigned n);

struct spa_wstream_stats {
	uint32_t n_streamed_blocks;   /* blocks with rows read per token (0: all resident) */
	uint64_t resident_bytes;      /* weights held by the model */
	uint64_t buffer_bytes;        /* the stream's buffers (the ring) */
	uint64_t bytes_per_token;     /* streamed bytes per step (embedding row included) */
	uint64_t bytes_read;          /* since load */
	uint64_t wait_ns;             /* steps blocked waiting for reads, since load */
	uint64_t n_forward;           /* steps that used the stream */
};
/* st NULL (a resident model): every figure 0 but resident_bytes, taken from m. */
void spa_wstream_stats(const struct spa_model *m, struct spa_wstream_stats *out);
/* Read one token's worth of streamed matrices with nothing computing (the I/O time alone,
 * bench/decode's "hidden"); *ns its wall time. The stream is left where it was (the next
 * token's reads queued); the stats do not count it. 0, or the read error. Takes the lock. */
int spa_wstream_probe(struct spa_wstream *st, uint64_t *ns);

#endif
