/* A model's weight stream under a memory budget, and the loader that makes it
 * (include/spa/wstream.h). */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "spa/clock.h"
#include "spa/error.h"
#include "spa/gguf.h"
#include "spa/kernels.h"
#include "spa/tokenizer.h"
#include "spa/wstream.h"

/* Streamed matrices travel in pieces of whole rows, about STREAM_PIECE bytes each, through a
 * ring of piece buffers of about STREAM_RING_BYTES (8 to 64 buffers). The ring is small enough
 * to stay in the last-level cache, so a streamed weight byte crosses the memory bus once (the
 * page-cache read), as a resident one does: the reader's copy lands in cache and the product
 * reads it from there. Two buffers of whole matrices would each go out to memory and back
 * (measured: half the I/O hidden at best, against the copy's own memory traffic). */
#define STREAM_PIECE (1024u << 10)
#define STREAM_RING_BYTES (8u << 20)
#define STREAM_RING_MIN 8
#define STREAM_RING_MAX 64
#define HUGE_ALIGN (2u << 20) /* a huge page */

/* A piece of a streamed matrix: rows r0..r1 of block l's matrix k, where they lie in the
 * file. */
struct stream_unit {
	uint64_t off;   /* file offset */
	uint64_t size;  /* bytes */
	uint32_t l, r0, r1;
	uint8_t k;
};

/* The streamed rows go through the ring: unit n of the endless sequence (the pieces of every
 * block matrix's streamed rows in forward order, then again for the next token) is read into
 * buffer n % n_slots with tag n, once unit n - n_slots is done with (stream_fill). So the
 * reads run up to a ring ahead of the products: a matrix's streamed pieces arrive while its
 * resident rows compute, and the next token's first pieces while the head, the sampling and
 * the exchanges run. */
struct spa_wstream {
	pthread_mutex_t lock;     /* held by the step that reads (spa_wstream_lock) */
	const struct spa_model *m;
	struct spa_uring_reader *rd;
	uint32_t n_units;           /* pieces of the streamed rows, a token's worth */
	struct stream_unit *units;
	uint8_t *ring;              /* n_slots buffers of slot_size, one allocation */
	uint8_t *slot[STREAM_RING_MAX];
	unsigned n_slots;
	uint64_t queued;            /* units queued so far: 0..queued-1 */
	uint64_t slot_size;
	uint8_t *streamed;          /* (L): the block has streamed rows */
	uint64_t most_rows;         /* of a streamed matrix */
	uint64_t seq;               /* next unit the forward consumes */
	int err;                    /* sticky: a failed read ends the stream */
	char errmsg[640];           /* why (spa_wstream_error) */
	/* token embedding read row by row when not resident */
	const struct spa_gguf *g;
	uint64_t embd_off;          /* data-section offset of token_embd */
	uint64_t embd_row_size;     /* bytes of a token_embd row; 0: resident */
	uint64_t bytes_per_token, bytes_read, wait_ns, n_forward;
};


/* Rows of a streamed matrix (size bytes, rows rows) per piece: about piece bytes, at least
 * one row. */
static uint64_t piece_rows(uint64_t size, uint64_t rows, uint64_t piece)
{
	uint64_t row = rows ? size / rows : size, n = row ? piece / row : rows;
	return n < 1 ? 1 : n > rows ? rows : n;
}

/* Bytes of the largest piece of such a matrix. */
static uint64_t piece_bytes(uint64_t size, uint64_t rows, uint64_t piece)
{
	return rows ? piece_rows(size, rows, piece) * (size / rows) : size;
}

/* Ring buffers for pieces of at most most bytes. */
static unsigned ring_slots(uint64_t most)
{
	uint64_t n = STREAM_RING_BYTES / (most ? most : 1);
	return n < STREAM_RING_MIN ? STREAM_RING_MIN : n > STREAM_RING_MAX ? STREAM_RING_MAX
									  : (unsigned)n;
}

/* End the stream with rc, keeping the reader's message (what failed, where, what to do). */
static void stream_fail(struct spa_wstream *st, int rc)
{
	st->err = rc;
	snprintf(st->errmsg, sizeof st->errmsg, "streaming the weights: %.580s",
		 *spa_uring_reader_errmsg(st->rd) ? spa_uring_reader_errmsg(st->rd)
						  : spa_strerror(rc));
}

/* Queue the reads of every unit whose buffer is free (unit n takes buffer n % n_slots, free
 * once unit n - n_slots is done), one submit for them all. */
static void stream_fill(struct spa_wstream *st)
{
	while (!st->err && st->queued < st->seq + st->n_slots) {
		const uint64_t n = st->queued++;
		const struct stream_unit *u = &st->units[n % st->n_units];
		int rc = spa_uring_read_async(st->rd, st->slot[n % st->n_slots], u->off, u->size, n);
		if (rc < 0)
			stream_fail(st, rc);
	}
}

static int stream_init(struct spa_wstream *st, const struct spa_model *m, uint32_t L,
		       const struct spa_gguf *g);

/* The stream of a model loaded under a budget (spa_model_load_budget): block matrices
 * without data (their first rows in m->res_part), and a token embedding without data. */
static int stream_create(struct spa_wstream **out, const struct spa_model *m)
{
	const uint32_t L = m->hp.n_layers;
	*out = NULL;
	const struct spa_gguf *g = m->gguf;
	if (!g || g->fd < 0 || !m->output.data || !m->output_norm)
		return -SPA_EUSAGE; /* only spa_model_load_budget makes such models */
	struct spa_wstream *st = calloc(1, sizeof *st);
	if (!st)
		return -ENOMEM;
	pthread_mutex_init(&st->lock, NULL);
	st->m = m;
	st->g = g;
	int rc = stream_init(st, m, L, g);
	if (rc < 0) {
		spa_wstream_destroy(st);
		return rc;
	}
	*out = st;
	return 0;
}

static int stream_init(struct spa_wstream *st, const struct spa_model *m, uint32_t L,
		       const struct spa_gguf *g)
{
	/* the streamed rows, checked against the file, cut into pieces: counted, then made */
	char name[96];
	uint64_t n = 0, most_rows = 0;
	for (int pass = 0; m->res_part && pass < 2; pass++) {
		for (uint32_t l = 0; l < L; l++)
			for (int k = 0; k < SPA_LAYER_MATS; k++) {
				const struct spa_tensor *t = spa_layer_mat(&m->layers[l], k);
				if (t->data)
					continue;
				snprintf(name, sizeof name, "blk.%u.%s.weight", l, spa_layer_mat_name(k));
				const struct spa_gguf_tensor *gt = spa_gguf_find_tensor(g, name);
				const uint64_t r_res = m->res_part[(size_t)l * SPA_LAYER_MATS + k].rows;
				if (!gt || gt->ne[1] != t->rows || r_res >= t->rows)
					return -SPA_EUSAGE;
				const uint64_t rows = t->rows, row = gt->size / rows,
					       rp = piece_rows(gt->size, rows, m->stream_piece);
				most_rows = rows > most_rows ? rows : most_rows;
				if (pass)
					st->streamed[l] = 1;
				for (uint64_t r0 = r_res; r0 < rows; r0 += rp, n++) {
					const uint64_t r1 = r0 + rp < rows ? r0 + rp : rows;
					if (!pass)
						continue;
					struct stream_unit *u = &st->units[n];
					*u = (struct stream_unit){
						.off = g->data_offset + gt->offset + r0 * row,
						.size = (r1 - r0) * row, .l = l, .r0 = (uint32_t)r0,
						.r1 = (uint32_t)r1, .k = (uint8_t)k };
					st->slot_size = u->size > st->slot_size ? u->size : st->slot_size;
					st->bytes_per_token += u->size;
				}
			}
		if (!pass) {
			if (n > UINT32_MAX || !(st->units = calloc(n ? n : 1, sizeof *st->units)) ||
			    !(st->streamed = calloc(L, 1)))
				return -ENOMEM;
			st->n_units = (uint32_t)n;
			n = 0;
		}
	}
	if (st->n_units) {
		/* the buffers the budget counted (spa_model_load_budget): no piece is larger */
		if (st->slot_size > m->stream_slot)
			return -SPA_EUSAGE;
		st->slot_size = m->stream_slot;
		st->n_slots = ring_slots(st->slot_size);
		/* One region on huge pages where the kernel gives them: the reader's copies into
		 * it ran 2-16 % faster than into 4 KiB pages (pread side by side; one TLB entry per 2 MiB). */
		const size_t ring = (size_t)st->n_slots * st->slot_size;
		if (posix_memalign((void **)&st->ring, HUGE_ALIGN, ring)) {
			st->ring = NULL;
			return -ENOMEM;
		}
		(void)madvise(st->ring, ring, MADV_HUGEPAGE); /* advice: 4 KiB pages otherwise */
		for (unsigned i = 0; i < st->n_slots; i++)
			st->slot[i] = st->ring + (size_t)i * st->slot_size;
		st->most_rows = most_rows;
		/* The whole ring in flight, one read per piece. IOSQE_ASYNC: the copies out of
		 * the page cache run on an io_uring kernel worker on the CPUs the pool leaves free
		 * (spa_uring_reader_spread_workers), not inline in this pinned compute thread's
		 * submit, in turn with its products (measured: the step took compute + I/O). */
		struct spa_errbuf err;
		int rc = spa_uring_reader_create(&st->rd, g->fd, st->n_slots,
						 SPA_URING_QUIET | SPA_URING_ASYNC, &err);
		if (rc < 0)
			return rc;
		if ((rc = spa_uring_reader_set_chunk(st->rd, st->slot_size)) < 0)
			return rc;
		/* the first reads are queued by spa_wstream_spread (a context's create), once the
		 * reader's workers know which CPUs to keep off, or by the first step */
	}
	if (!m->tok_embd.data) {
		const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, "token_embd.weight");
		if (!t || spa_dtype_row_size(t->type, t->ne[0], &st->embd_row_size) < 0)
			return -SPA_EUSAGE;
		st->embd_off = t->offset;
		st->bytes_per_token += st->embd_row_size;
	}
	return 0;
}


void spa_wstream_destroy(struct spa_wstream *st)
{
	if (!st)
		return;
	/* Waits for the reads still in flight into the slots before they are freed. */
	spa_uring_reader_destroy(st->rd);
	free(st->ring);
	free(st->units);
	free(st->streamed);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

void spa_wstream_lock(struct spa_wstream *st)
{
	pthread_mutex_lock(&st->lock); /* released by spa_wstream_unlock at the step's end */
}

void spa_wstream_unlock(struct spa_wstream *st)
{
	pthread_mutex_unlock(&st->lock);
}

bool spa_wstream_block_streamed(const struct spa_wstream *st, uint32_t l)
{
	return st && st->streamed && st->streamed[l];
}

uint64_t spa_wstream_most_rows(const struct spa_wstream *st)
{
	return st ? st->most_rows : 0;
}

uint64_t spa_wstream_embd_row_size(const struct spa_wstream *st)
{
	return st ? st->embd_row_size : 0;
}

int spa_wstream_err(const struct spa_wstream *st)
{
	return st ? st->err : 0;
}

const char *spa_wstream_error(const struct spa_wstream *st)
{
	return st ? st->errmsg : "";
}

void spa_wstream_spread(struct spa_wstream *st, const int *busy, unsigned n)
{
	if (!st || !st->rd)
		return;
	(void)spa_uring_reader_spread_workers(st->rd, busy, n); /* best effort */
	pthread_mutex_lock(&st->lock);
	stream_fill(st); /* the reads of the next step, in flight before it asks */
	pthread_mutex_unlock(&st->lock);
}

int spa_wstream_piece_get(struct spa_wstream *st, uint32_t l, int k, struct spa_tensor *w,
			  uint32_t *r0, uint32_t *r1)
{
	if (st->err)
		return st->err;
	const struct stream_unit *u = &st->units[st->seq % st->n_units];
	if (u->l != l || u->k != k) { /* the step and the stream disagree: a bug */
		st->err = -EPROTO;
		snprintf(st->errmsg, sizeof st->errmsg, "streaming the weights: block %u matrix %d "
			 "asked, block %u matrix %d next (an engine bug: please report it)", l, k,
			 u->l, u->k);
		return st->err;
	}
	if (st->seq >= st->queued)
		stream_fill(st);
	uint64_t t0 = spa_clock_ns();
	int rc = spa_uring_wait(st->rd, st->seq, -1);
	st->wait_ns += spa_clock_ns() - t0;
	if (rc < 0) {
		stream_fail(st, rc);
		return rc;
	}
	st->bytes_read += u->size;
	*w = *spa_layer_mat(&st->m->layers[l], k);
	w->rows = u->r1 - u->r0;
	w->data = st->slot[st->seq % st->n_slots];
	w->packed = 0; /* as the file holds them */
	*r0 = u->r0;
	*r1 = u->r1;
	return 0;
}

/* Done with the current piece. Its buffer is queued again once a quarter of the ring is free,
 * so that the reader's kernel worker, woken per submit, gets several pieces a time: a read
 * queued per freed buffer woke it for each (224 times a token at the default shape). */
void spa_wstream_piece_put(struct spa_wstream *st)
{
	st->seq++;
	if (st->queued - st->seq <= st->n_slots - st->n_slots / 4)
		stream_fill(st);
}

int spa_wstream_embd_row(struct spa_wstream *st, int32_t token, void *dst)
{
	struct spa_errbuf perr = {{0}};
	int rc = spa_gguf_pread(st->g, st->embd_off + (uint64_t)token * st->embd_row_size, dst,
				st->embd_row_size, &perr);
	if (rc < 0) {
		snprintf(st->errmsg, sizeof st->errmsg, "reading token %d's embedding row: %.540s",
			 token, *perr.msg ? perr.msg : spa_strerror(rc));
		return rc;
	}
	st->bytes_read += st->embd_row_size;
	return 0;
}

void spa_wstream_step_done(struct spa_wstream *st)
{
	st->n_forward++;
	if (!st->err)
		st->errmsg[0] = '\0'; /* a message left was an embedding read's, now past */
}

void spa_wstream_stats(const struct spa_model *m, struct spa_wstream_stats *out)
{
	const struct spa_wstream *st = m->stream;
	memset(out, 0, sizeof *out);
	out->resident_bytes = m->data_size;
	if (!st)
		return;
	for (uint32_t l = 0; st->streamed && l < m->hp.n_layers; l++)
		out->n_streamed_blocks += st->streamed[l];
	out->buffer_bytes = st->n_units ? st->n_slots * st->slot_size : 0;
	out->bytes_per_token = st->bytes_per_token;
	out->bytes_read = st->bytes_read;
	out->wait_ns = st->wait_ns;
	out->n_forward = st->n_forward;
}

int spa_wstream_probe(struct spa_wstream *st, uint64_t *ns)
{
	spa_wstream_lock(st);
	uint64_t t0 = spa_clock_ns(), wait0 = st->wait_ns, read0 = st->bytes_read;
	struct spa_tensor w;
	uint32_t r0, r1;
	for (uint32_t i = 0; i < st->n_units && !st->err; i++) {
		const struct stream_unit *u = &st->units[st->seq % st->n_units];
		if (spa_wstream_piece_get(st, u->l, u->k, &w, &r0, &r1) < 0)
			break;
		spa_wstream_piece_put(st);
	}
	*ns = spa_clock_ns() - t0;
	/* A probe is not a step: keep the counters about steps. */
	st->wait_ns = wait0;
	st->bytes_read = read0;
	int rc = st->err;
	spa_wstream_unlock(st);
	return rc;
}

static uint64_t align64(uint64_t n)
{
	return (n + 63) & ~63ull;
}

/* The piece size of streamed matrices: STREAM_PIECE (returns 0), or $SPA_STREAM_PIECE_KIB (a
 * tuning knob for other cache sizes, and the tests' way to cut small matrices into many
 * pieces; returns 1). */
static int stream_piece_size(uint64_t *out, struct spa_errbuf *err)
{
	*out = STREAM_PIECE;
	const char *v = getenv("SPA_STREAM_PIECE_KIB");
	if (!v || !*v)
		return 0;
	char *end;
	errno = 0;
	unsigned long long kib = strtoull(v, &end, 10);
	if (errno || *end || !isdigit((unsigned char)v[0]) || kib < 1 || kib > 65536)
		return spa_err(err, -SPA_EUSAGE, "SPA_STREAM_PIECE_KIB=%s: give a whole number of "
			       "KiB from 1 to 65536, or unset it for the default %u", v,
			       STREAM_PIECE >> 10);
	*out = (uint64_t)kib << 10;
	return 1;
}

int spa_model_load_budget(struct spa_model **out, const char *path, uint64_t mem_budget,
			  bool show_progress, struct spa_errbuf *err)
{
	*out = NULL;
	uint64_t piece;
	int rc = stream_piece_size(&piece, err);
	const bool piece_given = rc == 1;
	if (rc < 0)
		return rc;
	struct spa_gguf *g = NULL;
	struct spa_hparams hp;
	if ((rc = spa_gguf_open(&g, path, err)) < 0)
		return rc;
	if ((rc = spa_model_check(g, &hp, err)) < 0) {
		spa_gguf_close(g);
		return rc;
	}
	const uint32_t L = hp.n_layers;
	char name[96];
	const struct spa_gguf *gt = g; /* g moves into the model below */
#define FIND(...) (snprintf(name, sizeof name, __VA_ARGS__), spa_gguf_find_tensor(gt, name))
	const struct spa_gguf_tensor *t_embd = FIND("token_embd.weight");
	const struct spa_gguf_tensor *t_out = FIND("output.weight");
	const struct spa_gguf_tensor *t_onorm = FIND("output_norm.weight");
	/* base: resident whatever the budget (the norms and the LM head); blocks: the block
	 * matrices' bytes */
	uint64_t base = align64(t_onorm->size) + align64(t_out ? t_out->size : t_embd->size);
	uint64_t blocks = 0, blocks_al = 0;
	const struct spa_gguf_tensor *t_freqs = FIND("rope_freqs.weight");
	if (t_freqs)
		base += align64(t_freqs->size);
	for (uint32_t l = 0; l < L; l++) {
		base += align64(FIND("blk.%u.attn_norm.weight", l)->size) +
			align64(FIND("blk.%u.ffn_norm.weight", l)->size);
		for (int k = 0; k < SPA_LAYER_MATS; k++) { /* biases, where the file has them */
			const struct spa_gguf_tensor *t = FIND("blk.%u.%s.bias", l,
							       spa_layer_mat_name(k));
			base += t ? align64(t->size) : 0;
		}
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			const struct spa_gguf_tensor *t = FIND("blk.%u.%s.weight", l, spa_layer_mat_name(k));
			blocks += t->size;
			blocks_al += align64(t->size);
		}
	}
	const uint64_t total = base + blocks_al + (t_out ? align64(t_embd->size) : 0);
	if (mem_budget == 0 || mem_budget >= total) {
		spa_gguf_close(g);
		return spa_model_load(out, path, show_progress, err);
	}
	/* Every block matrix keeps the same share of its rows resident, the rest streamed: the
	 * reads then spread evenly over the forward, and a matrix's streamed rows are read
	 * while its resident rows (and the matrices before it) compute. The embedding is read a
	 * row per token (keeping it would cost the most for the least). Each resident part is
	 * 64-byte aligned: slack. The ring holds ring_slots() of the largest piece; under a
	 * tight budget the pieces shrink, down to 4 KiB (or a row), unless the size was given. */
	const uint64_t slack = 64ull * SPA_LAYER_MATS * L;
	uint64_t least, slot;
	for (;;) {
		uint64_t most = 0;
		for (uint32_t l = 0; l < L; l++)
			for (int k = 0; k < SPA_LAYER_MATS; k++) {
				const struct spa_gguf_tensor *t = FIND("blk.%u.%s.weight", l,
								       spa_layer_mat_name(k));
				const uint64_t pb = piece_bytes(t->size, t->ne[1], piece);
				most = pb > most ? pb : most;
			}
		slot = (most + 4095) & ~4095ull;
		least = base + ring_slots(slot) * slot + slack;
		if (least <= mem_budget || piece_given || piece <= 4096)
			break;
		piece /= 2;
	}
	if (mem_budget < least) {
		rc = spa_err(err, -SPA_EUSAGE, "%s: a memory budget of %" PRIu64 " bytes cannot hold "
			     "the LM head, the norms and the stream buffers (%" PRIu64 " bytes); give "
			     "--mem-budget %" PRIu64 " or more (the whole model is %" PRIu64 ")",
			     path, mem_budget, least, least, total);
		spa_gguf_close(g);
		return rc;
	}
	const uint64_t avail = mem_budget - least;

	struct spa_model *m = calloc(1, sizeof *m);
	if (!m) {
		spa_gguf_close(g);
		return spa_err(err, -ENOMEM, "%s: out of memory", path);
	}
	m->gguf = g;
	g = NULL;
	m->hp = hp;
	m->stream_piece = piece;
	m->stream_slot = slot;
	if (!(m->layers = calloc(L, sizeof *m->layers)) ||
	    !(m->res_part = calloc((size_t)L * SPA_LAYER_MATS, sizeof *m->res_part))) {
		rc = spa_err(err, -ENOMEM, "%s: out of memory", path);
		goto fail_m;
	}
	if ((rc = spa_tokenizer_load(&m->tok, m->gguf, err)) < 0 ||
	    (rc = spa_model_fingerprint(m->gguf, m->fingerprint, err)) < 0)
		goto fail_m;
	/* resident rows of each block matrix: rows x avail / blocks, rounded down */
	uint64_t res_size = base;
	for (uint32_t l = 0; l < L; l++)
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			const struct spa_gguf_tensor *t = FIND("blk.%u.%s.weight", l, spa_layer_mat_name(k));
			const uint64_t rows = t->ne[1];
			uint64_t r = (uint64_t)((unsigned __int128)rows * avail / blocks);
			r = r < rows ? r : rows;
			const struct spa_tensor whole = { t->type, t->ne[0], rows, NULL, 0 };
			if (r < rows && spa_tensor_packable(&whole)) /* whole groups: packed */
				r -= r % SPA_PACK_ROWS;
			m->res_part[(size_t)l * SPA_LAYER_MATS + k] =
				(struct spa_tensor){ t->type, t->ne[0], r, NULL, 0 };
			res_size += align64(r * (t->size / rows));
		}
	if (posix_memalign(&m->data, HUGE_ALIGN, res_size)) {
		m->data = NULL;
		rc = spa_err(err, -ENOMEM, "%s: no memory for %" PRIu64 " resident bytes", path,
			     res_size);
		goto fail_m;
	}
	/* Huge pages, as the whole model's loader has them (spa_gguf_load_data): on 4 KiB pages
	 * the products took a page walk every 4 KiB of weights, and the budget's resident rows
	 * computed slower than the same rows of the whole model. */
	(void)madvise(m->data, res_size, MADV_HUGEPAGE);
	m->data_size = res_size;
	/* Resident tensors and parts, packed; read with the loader's io_uring reader. */
	struct spa_uring_reader *rd = NULL;
	if ((rc = spa_uring_reader_create(&rd, m->gguf->fd, 8, SPA_URING_QUIET, err)) < 0)
		goto fail_m;
	uint8_t *p = m->data;
	uint64_t type_elems[SPA_TYPE_COUNT] = {0};
#define PLACE(t, len, dst) do { \
		m->n_params += (t)->n_elems; \
		if ((len) != 0 && ((rc = spa_uring_read_async(rd, p, m->gguf->data_offset + (t)->offset, \
							 (len), 0)) < 0 || \
			      (rc = spa_uring_wait(rd, 0, -1)) < 0)) { \
			spa_err(err, rc, "%s", spa_uring_reader_errmsg(rd)); \
			goto fail_rd; \
		} \
		dst = (void *)p; \
		p += align64(len); \
	} while (0)
#define MATRIX(t) ((struct spa_tensor){ (t)->type, (t)->ne[0], (t)->ne[1], NULL, 0 })
	void *vp;
	PLACE(t_onorm, t_onorm->size, vp);
	m->output_norm = vp;
	m->tok_embd = MATRIX(t_embd);
	m->tied = t_out == NULL;
	PLACE(t_out ? t_out : t_embd, (t_out ? t_out : t_embd)->size, vp);
	m->output = MATRIX(t_out ? t_out : t_embd);
	m->output.data = vp;
	if (m->tied)
		m->tok_embd.data = vp;
	else
		m->n_params += t_embd->n_elems;
	vp = NULL;
	if (t_freqs)
		PLACE(t_freqs, t_freqs->size, vp);
	for (uint32_t i = 0; vp && i < hp.n_rot / 2; i++)
		if (!isfinite(((const float *)vp)[i]) || ((const float *)vp)[i] <= 0.0f) {
			rc = spa_err(err, -SPA_EMODEL, "%s: rope_freqs.weight[%u] is %g, expected "
				     "a finite divisor > 0; the file is damaged", path, i,
				     (double)((const float *)vp)[i]);
			goto fail_rd;
		}
	m->rope = spa_model_rope(&m->hp, vp);
	for (uint32_t l = 0; l < L; l++) {
		struct spa_layer *ly = &m->layers[l];
		const struct spa_gguf_tensor *t = FIND("blk.%u.attn_norm.weight", l);
		PLACE(t, t->size, vp);
		ly->attn_norm = vp;
		t = FIND("blk.%u.ffn_norm.weight", l);
		PLACE(t, t->size, vp);
		ly->ffn_norm = vp;
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			t = FIND("blk.%u.%s.bias", l, spa_layer_mat_name(k));
			vp = NULL;
			if (t)
				PLACE(t, t->size, vp);
			ly->bias[k] = vp;
		}
		for (int k = 0; k < SPA_LAYER_MATS; k++) {
			t = FIND("blk.%u.%s.weight", l, spa_layer_mat_name(k));
			struct spa_tensor *dst = (struct spa_tensor *)spa_layer_mat(ly, k);
			struct spa_tensor *part = &m->res_part[(size_t)l * SPA_LAYER_MATS + k];
			*dst = MATRIX(t);
			type_elems[t->type] += t->n_elems;
			PLACE(t, part->rows * (t->size / t->ne[1]), vp);
			if (part->rows == dst->rows)
				dst->data = vp;     /* whole */
			else if (part->rows)
				part->data = vp;    /* the first rows; the others streamed */
		}
	}
	type_elems[t_embd->type] += t_embd->n_elems;
	if (t_out)
		type_elems[t_out->type] += t_out->n_elems;
#undef PLACE
#undef MATRIX
#undef FIND
	spa_uring_reader_destroy(rd);
	if ((rc = spa_model_pack(m, err)) < 0)
		goto fail_m;
	enum spa_dtype best = SPA_TYPE_F32;
	for (int i = 0; i < SPA_TYPE_COUNT; i++)
		if (type_elems[i] > type_elems[best])
			best = (enum spa_dtype)i;
	m->wtype = best;
	if ((rc = stream_create(&m->stream, m)) < 0) {
		spa_err(err, rc, "%s: cannot set up the weight stream: %s", path, spa_strerror(rc));
		goto fail_m;
	}
	if (show_progress)
		fprintf(stderr, "%s: %" PRIu64 " of %" PRIu64 " weight bytes resident: %.1f %% of "
			"each block matrix's rows, the rest streamed per token (memory budget "
			"%" PRIu64 ")\n", path, res_size, total,
			avail >= blocks ? 100.0 : 100.0 * (double)avail / (double)blocks, mem_budget);
	*out = m;
	return 0;
fail_rd:
	spa_uring_reader_destroy(rd);
fail_m:
	spa_model_destroy(m);
	return rc;
}

