/* The CPU decode engine: the Llama forward pass of RUNTIME.md §2, in the manner of llama2.c's
 * run.c. Every buffer is allocated in spa_engine_create; spa_engine_forward only computes.
 *
 * Determinism: the matrix kernels give bit-identical results for any thread count and for a
 * batch versus single vectors; the attention below gives each (position, head) pair to exactly
 * one thread with a fixed summation order, so the whole forward pass is bit-identical across
 * thread counts and across batched prefill versus token-by-token decoding. The split runtime
 * (cloud + edge must equal the local reference) relies on this. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "spa/engine.h"
#include "spa/error.h"
#include "spa/gguf.h"
#include "spa/kernels.h"
#include "spa/pin.h"
#include "spa/plugin.h"
#include "spa/pool.h"
#include "spa/tokenizer.h"

/* Greedy head: rows per tile (2 KiB of logits per thread, in L1). */
#define HEAD_TILE 512u

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

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
struct engine_stream {
	struct spa_uring_reader *rd;
	uint32_t n_units;           /* pieces of the streamed rows, a token's worth */
	struct stream_unit *units;
	uint8_t *ring;              /* n_slots buffers of slot_size, one allocation */
	uint8_t *slot[STREAM_RING_MAX];
	unsigned n_slots;
	uint64_t queued;            /* units queued so far: 0..queued-1 */
	uint64_t slot_size;
	uint8_t *streamed;          /* (L): the block has streamed rows */
	float *part_y;              /* (max_batch, most rows of a matrix): batched parts */
	uint64_t seq;               /* next unit the forward consumes */
	int err;                    /* sticky: a failed read ends the stream */
	char errmsg[640];           /* why (spa_engine_error) */
	/* token embedding read row by row when not resident */
	const struct spa_gguf *g;
	uint64_t embd_off;          /* data-section offset of token_embd */
	uint8_t *embd_row;
	uint64_t bytes_per_token, bytes_read, wait_ns, n_forward;
};

/* Upper bound on the cache length: keeps every size product far from overflow. */
#define MAX_ENGINE_CTX (1u << 24)

struct spa_engine {
	const struct spa_model *m;
	struct spa_pool *pool;      /* borrowed; NULL = single thread */
	int n_threads;
	uint32_t n_ctx;
	uint32_t max_batch;
	uint32_t pos;               /* positions in the cache */
	uint32_t kv_dim;            /* n_kv_heads * head_dim */
	uint64_t embd_row_size;     /* bytes of one token_embd row */

	/* activations, each for max_batch positions, row-major */
	float *x;       /* (max_batch, H) residual stream */
	float *xb;      /* (max_batch, H) RMSNorm output */
	float *q;       /* (max_batch, H) queries */
	float *att;     /* (max_batch, H) attention output, before attn_output */
	float *proj;    /* (max_batch, H) attn_output / ffn_down output */
	float *delta;   /* (max_batch, H) adapter hook output */
	float *dq;      /* (max_batch, H) LoRA delta of q */
	float *dv;      /* (max_batch, kv_dim) LoRA delta of v */
	float *hb;      /* (max_batch, n_ff) gate, then SwiGLU */
	float *hb2;     /* (max_batch, n_ff) up */
	float *scores;  /* (n_threads, n_ctx) attention scores, one row per thread */

	/* the KV cache in IEEE half (as llama.cpp keeps it: half the memory and half the
	 * reads of attention, which at 2048 positions reads more bytes a token than the
	 * default shape's weights), each KV head's positions contiguous: attention reads one
	 * head's keys and values as one sequential stream (rows a whole cache row apart left it
	 * waiting on memory latency) */
	uint16_t *k_cache; /* (L, n_kv_heads, n_ctx, head_dim) */
	uint16_t *v_cache; /* (L, n_kv_heads, n_ctx, head_dim) */
	float *kb;      /* (max_batch, kv_dim) the batch's keys, before they go to the cache */
	float *vb;      /* (max_batch, kv_dim) its values */

	float *resid;   /* (L + 1, H) e, y_0 .. y_{L-1} of the last position */
	float *f;       /* (H) final RMSNorm of the last position */

	/* fused side maps (spa_engine_set_side) */
	const struct spa_plugin *side;
	float *taps;    /* borrowed: (L + 1, r) */
	bool gate_on;
	float gate[2];

	/* greedy head: per-thread best and tile, one cache line apart */
	struct head_best { float v; uint32_t i; bool any; char pad[52]; } *hbest;
	float *htile;   /* (n_threads, HEAD_TILE) */
	/* an input made ready once for several products (the head's tiles, a streamed
	 * matrix's parts) */
	struct spa_matvec_x *px;
	float *rope_cs; /* (max_batch, head_dim): cos, sin of each position in the batch */

	struct engine_stream st;
};

static void *alloc_zeroed(uint64_t size)
{
	void *p = NULL;
	size = (size + 63) & ~(uint64_t)63;
	if (size == 0)
		size = 64;
	if (size > SIZE_MAX || posix_memalign(&p, 64, (size_t)size) != 0)
		return NULL;
	memset(p, 0, (size_t)size);
	return p;
}

static float *alloc_f32(uint64_t n)
{
	return n > UINT64_MAX / sizeof(float) ? NULL : alloc_zeroed(n * sizeof(float));
}

void spa_engine_destroy(struct spa_engine *e)
{
	if (!e)
		return;
	void *bufs[] = { e->x, e->xb, e->q, e->att, e->proj, e->delta, e->dq, e->dv, e->hb,
			 e->hb2, e->scores, e->k_cache, e->v_cache, e->kb, e->vb, e->resid, e->f,
			 e->htile, e->rope_cs };
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
		free(bufs[i]);
	/* Waits for the reads still in flight into the slots before they are freed. */
	spa_uring_reader_destroy(e->st.rd);
	free(e->st.ring);
	free(e->st.units);
	free(e->st.part_y);
	free(e->st.streamed);
	free(e->st.embd_row);
	free(e->hbest);
	free(e->px);
	free(e);
}

static int stream_init(struct spa_engine *e);

int spa_engine_create(struct spa_engine **out, const struct spa_model *m, uint32_t n_ctx,
		      uint32_t max_batch, struct spa_pool *pool)
{
	*out = NULL;
	if (!m || n_ctx == 0 || n_ctx > MAX_ENGINE_CTX || max_batch == 0 || max_batch > n_ctx)
		return -SPA_EUSAGE;
	const struct spa_hparams *hp = &m->hp;
	struct spa_engine *e = calloc(1, sizeof *e);
	if (!e)
		return -ENOMEM;
	e->m = m;
	e->pool = pool;
	e->n_threads = pool ? spa_pool_n_threads(pool) : 1;
	if (e->n_threads < 1)
		e->n_threads = 1;
	e->n_ctx = n_ctx;
	e->max_batch = max_batch;
	e->kv_dim = hp->n_kv_heads * hp->head_dim;
	if (spa_dtype_row_size(m->tok_embd.type, hp->n_embd, &e->embd_row_size) < 0) {
		free(e);
		return -SPA_EUSAGE;
	}

	const uint64_t H = hp->n_embd, B = max_batch, KV = e->kv_dim;
	const uint64_t cache = (uint64_t)hp->n_layers * n_ctx * KV;
	if (!(e->x = alloc_f32(B * H)) || !(e->xb = alloc_f32(B * H)) ||
	    !(e->q = alloc_f32(B * H)) || !(e->att = alloc_f32(B * H)) ||
	    !(e->proj = alloc_f32(B * H)) || !(e->delta = alloc_f32(B * H)) ||
	    !(e->dq = alloc_f32(B * H)) || !(e->dv = alloc_f32(B * KV)) ||
	    !(e->hb = alloc_f32(B * hp->n_ff)) || !(e->hb2 = alloc_f32(B * hp->n_ff)) ||
	    !(e->scores = alloc_f32((uint64_t)e->n_threads * n_ctx)) ||
	    !(e->k_cache = alloc_zeroed(cache * sizeof(uint16_t))) ||
	    !(e->v_cache = alloc_zeroed(cache * sizeof(uint16_t))) ||
	    !(e->kb = alloc_f32(B * KV)) || !(e->vb = alloc_f32(B * KV)) ||
	    !(e->resid = alloc_f32((hp->n_layers + 1ull) * H)) || !(e->f = alloc_f32(H)) ||
	    !(e->htile = alloc_f32((uint64_t)e->n_threads * HEAD_TILE)) ||
	    !(e->px = aligned_alloc(64, sizeof *e->px)) ||
	    !(e->rope_cs = alloc_f32(B * hp->head_dim)) ||
	    posix_memalign((void **)&e->hbest, 64, sizeof *e->hbest * (size_t)e->n_threads)) {
		e->hbest = NULL;
		spa_engine_destroy(e);
		return -ENOMEM;
	}
	int rc = stream_init(e);
	if (rc < 0) {
		spa_engine_destroy(e);
		return rc;
	}
	*out = e;
	return 0;
}

void spa_engine_reset(struct spa_engine *e)
{
	e->pos = 0;
}

uint32_t spa_engine_pos(const struct spa_engine *e)
{
	return e->pos;
}

const float *spa_engine_final(const struct spa_engine *e)
{
	return e->f;
}

const float *spa_engine_resid(const struct spa_engine *e)
{
	return e->resid;
}

/* Y[n] = W X[n]: the single-vector kernel for decode, the batched one for prefill (the kernels
 * guarantee the same bits either way). */
static void mm(struct spa_engine *e, const struct spa_tensor *w, const float *x, float *y,
	       uint32_t n)
{
	if (n == 1)
		spa_matvec(e->pool, w, x, y);
	else
		spa_matmul(e->pool, w, x, y, n);
}


/* ---------------------------------------------------------------- streaming */

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
static void stream_fail(struct engine_stream *st, int rc)
{
	st->err = rc;
	snprintf(st->errmsg, sizeof st->errmsg, "streaming the weights: %.580s",
		 *spa_uring_reader_errmsg(st->rd) ? spa_uring_reader_errmsg(st->rd)
						  : spa_strerror(rc));
}

/* Queue the reads of every unit whose buffer is free (unit n takes buffer n % n_slots, free
 * once unit n - n_slots is done), one submit for them all. */
static void stream_fill(struct engine_stream *st)
{
	while (!st->err && st->queued < st->seq + st->n_slots) {
		const uint64_t n = st->queued++;
		const struct stream_unit *u = &st->units[n % st->n_units];
		int rc = spa_uring_read_async(st->rd, st->slot[n % st->n_slots], u->off, u->size, n);
		if (rc < 0)
			stream_fail(st, rc);
	}
}

/* The CPUs the pool's threads are pinned to (a thread allowed on several pins nothing). */
#define STREAM_MAX_BUSY 1024
struct pool_cpus_job {
	int cpu[STREAM_MAX_BUSY];
};

static void pool_cpus_worker(void *ctx, int ith, int nth)
{
	(void)nth;
	struct pool_cpus_job *j = ctx;
	cpu_set_t s;
	j->cpu[ith] = -1;
	if (sched_getaffinity(0, sizeof s, &s) == 0 && CPU_COUNT(&s) == 1)
		for (int c = 0; c < CPU_SETSIZE; c++)
			if (CPU_ISSET(c, &s))
				j->cpu[ith] = c;
}

static unsigned pool_cpus(struct spa_pool *pool, int *out)
{
	if (!pool || spa_pool_n_threads(pool) > STREAM_MAX_BUSY)
		return 0;
	struct pool_cpus_job j;
	spa_pool_run(pool, pool_cpus_worker, &j);
	unsigned n = (unsigned)spa_pool_n_threads(pool);
	memcpy(out, j.cpu, n * sizeof *out);
	return n;
}

/* Set up streaming when the model was loaded under a budget (spa_engine_model_load): block
 * matrices without data (their first rows in m->res_part), and a token embedding without
 * data. */
static int stream_init(struct spa_engine *e)
{
	const struct spa_model *m = e->m;
	const uint32_t L = m->hp.n_layers;
	struct engine_stream *st = &e->st;
	if (!m->res_part && m->tok_embd.data)
		return 0;
	const struct spa_gguf *g = m->gguf;
	if (!g || g->fd < 0 || !m->output.data || !m->output_norm)
		return -SPA_EUSAGE; /* only spa_engine_model_load makes such models */
	st->g = g;
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
		/* the buffers the budget counted (spa_engine_model_load): no piece is larger */
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
		if (!(st->part_y = malloc(sizeof(float) * e->max_batch * most_rows)))
			return -ENOMEM;
		/* The whole ring in flight, one read per piece. IOSQE_ASYNC: the copies out of
		 * the page cache run on an io_uring kernel worker on the CPUs the pool leaves free
		 * (spa_uring_reader_spread_workers), not inline in this pinned compute thread's
		 * submit, in turn with its products (measured: the step took compute + I/O). */
		struct spa_errbuf err;
		int rc = spa_uring_reader_create(&st->rd, g->fd, st->n_slots,
						 SPA_URING_QUIET | SPA_URING_ASYNC, &err);
		if (rc < 0)
			return rc;
		int busy[STREAM_MAX_BUSY];
		unsigned n_busy = pool_cpus(e->pool, busy);
		(void)spa_uring_reader_spread_workers(st->rd, busy, n_busy); /* best effort */
		if ((rc = spa_uring_reader_set_chunk(st->rd, st->slot_size)) < 0)
			return rc;
		stream_fill(st);
	}
	if (!m->tok_embd.data) {
		const struct spa_gguf_tensor *t = spa_gguf_find_tensor(g, "token_embd.weight");
		if (!t || !(st->embd_row = malloc(e->embd_row_size)))
			return t ? -ENOMEM : -SPA_EUSAGE;
		st->embd_off = t->offset;
		st->bytes_per_token += e->embd_row_size;
	}
	return 0;
}

/* The next piece of the stream (it must be block l's matrix k), waiting for its read; its
 * rows as a tensor in *w. NULL: the stream failed (st->err). Paired with piece_put. */
static const struct stream_unit *piece_get(struct spa_engine *e, uint32_t l, int k,
					   struct spa_tensor *w)
{
	struct engine_stream *st = &e->st;
	if (st->err)
		return NULL;
	const struct stream_unit *u = &st->units[st->seq % st->n_units];
	if (u->l != l || u->k != k) { /* the forward and the stream disagree: a bug */
		st->err = -EPROTO;
		snprintf(st->errmsg, sizeof st->errmsg, "streaming the weights: block %u matrix %d "
			 "asked, block %u matrix %d next (an engine bug: please report it)", l, k,
			 u->l, u->k);
		return NULL;
	}
	if (st->seq >= st->queued)
		stream_fill(st);
	uint64_t t0 = now_ns();
	int rc = spa_uring_wait(st->rd, st->seq, -1);
	st->wait_ns += now_ns() - t0;
	if (rc < 0) {
		stream_fail(st, rc);
		return NULL;
	}
	st->bytes_read += u->size;
	*w = *spa_layer_mat(&e->m->layers[l], k);
	w->rows = u->r1 - u->r0;
	w->data = st->slot[st->seq % st->n_slots];
	w->packed = 0; /* as the file holds them */
	return u;
}

/* Done with the current piece. Its buffer is queued again once a quarter of the ring is free,
 * so that the reader's kernel worker, woken per submit, gets several pieces a time: a read
 * queued per freed buffer woke it for each (224 times a token at the default shape). */
static void piece_put(struct engine_stream *st)
{
	st->seq++;
	if (st->queued - st->seq <= st->n_slots - st->n_slots / 4)
		stream_fill(st);
}

int spa_engine_default_threads(const struct spa_model *m)
{
	int n = spa_pin_n_cores();
	if (n <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n = c > 0 ? (int)c : 1;
	}
	/* the block rows' reads have a kernel worker to give a core to (the embedding's one row
	 * a token is read in the compute thread) */
	bool streams = false;
	for (uint32_t l = 0; m && m->res_part && l < m->hp.n_layers && !streams; l++)
		for (int k = 0; k < SPA_LAYER_MATS; k++)
			streams |= !spa_layer_mat(&m->layers[l], k)->data;
	if (streams && n > 1)
		n--;
	return n;
}

const char *spa_engine_error(const struct spa_engine *e)
{
	return e ? e->st.errmsg : "";
}

void spa_engine_stream_stats(const struct spa_engine *e, struct spa_engine_stream_stats *out)
{
	const struct engine_stream *st = &e->st;
	memset(out, 0, sizeof *out);
	for (uint32_t l = 0; st->streamed && l < e->m->hp.n_layers; l++)
		out->n_streamed_blocks += st->streamed[l];
	out->resident_bytes = e->m->data_size;
	out->buffer_bytes = st->n_units ? st->n_slots * st->slot_size : 0;
	out->bytes_per_token = st->bytes_per_token;
	out->bytes_read = st->bytes_read;
	out->wait_ns = st->wait_ns;
	out->n_forward = st->n_forward;
}

int spa_engine_stream_probe(struct spa_engine *e, uint64_t *ns)
{
	struct engine_stream *st = &e->st;
	uint64_t t0 = now_ns(), wait0 = st->wait_ns, read0 = st->bytes_read;
	struct spa_tensor w;
	for (uint32_t i = 0; i < st->n_units; i++) {
		const struct stream_unit *u = &st->units[st->seq % st->n_units];
		if (!piece_get(e, u->l, u->k, &w))
			return st->err;
		piece_put(st);
	}
	*ns = now_ns() - t0;
	/* A probe is not a forward: keep the forward's counters about forwards. */
	st->wait_ns = wait0;
	st->bytes_read = read0;
	return st->err;
}

static bool blk_streamed(const struct spa_engine *e, uint32_t l)
{
	return e->st.streamed && e->st.streamed[l];
}

/* Rows r0.. of Y[n][rows] = W X[n], from w (those rows of the matrix); for one vector, x
 * made ready in e->px (mmw). */
static void part_mm(struct spa_engine *e, const struct spa_tensor *w, uint64_t r0,
		    const float *x, float *y, uint64_t rows, uint32_t n)
{
	if (n == 1) {
		spa_matvec_x(e->pool, w, e->px, y + r0);
		return;
	}
	spa_matmul(e->pool, w, x, e->st.part_y, n);
	for (uint32_t j = 0; j < n; j++)
		memcpy(y + j * rows + r0, e->st.part_y + (uint64_t)j * w->rows,
		       w->rows * sizeof(float));
}

/* Y[n] = W X[n] with block l's matrix k: resident, or its resident rows and then its streamed
 * pieces as they arrive (each row has the bits of the whole product: rows do not depend on
 * each other). */
static int mmw(struct spa_engine *e, uint32_t l, int k, const float *x, float *y, uint32_t n)
{
	const struct spa_tensor *t = spa_layer_mat(&e->m->layers[l], k);
	if (t->data) {
		mm(e, t, x, y, n);
		return 0;
	}
	const struct spa_tensor *res = &e->m->res_part[(size_t)l * SPA_LAYER_MATS + k];
	if (n == 1) /* x quantized once for the resident part and every piece */
		spa_matvec_x_prepare(e->px, x, t->cols, t->type);
	if (res->rows)
		part_mm(e, res, 0, x, y, t->rows, n);
	for (uint64_t r = res->rows; r < t->rows;) {
		struct spa_tensor w;
		const struct stream_unit *u = piece_get(e, l, k, &w);
		if (!u)
			return e->st.err;
		part_mm(e, &w, u->r0, x, y, t->rows, n);
		r = u->r1;
		piece_put(&e->st);
	}
	return 0;
}

/* ---------------------------------------------------------------- budgeted loading */

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

int spa_engine_model_load(struct spa_model **out, const char *path, uint64_t mem_budget,
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
	for (uint32_t l = 0; l < L; l++) {
		base += align64(FIND("blk.%u.attn_norm.weight", l)->size) +
			align64(FIND("blk.%u.ffn_norm.weight", l)->size);
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
	for (uint32_t l = 0; l < L; l++) {
		struct spa_layer *ly = &m->layers[l];
		const struct spa_gguf_tensor *t = FIND("blk.%u.attn_norm.weight", l);
		PLACE(t, t->size, vp);
		ly->attn_norm = vp;
		t = FIND("blk.%u.ffn_norm.weight", l);
		PLACE(t, t->size, vp);
		ly->ffn_norm = vp;
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

static void add_rows(float *y, const float *d, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		y[i] += d[i];
}

/* KV head h of block l in a cache: its n_ctx rows of head_dim. */
static uint16_t *kv_head(const struct spa_engine *e, uint16_t *cache, uint32_t l, uint32_t h)
{
	return cache + ((uint64_t)l * e->m->hp.n_kv_heads + h) * e->n_ctx * e->m->hp.head_dim;
}

/* Whether a float of x rounds to an infinity in half (65520 and up: past 65504; or is one). */
static bool beyond_half(const float *x, uint64_t n)
{
	bool over = false;
	for (uint64_t i = 0; i < n; i++)
		over |= fabsf(x[i]) >= 65520.0f;
	return over;
}

/* The batch's keys and values (kb, vb: (n_tok, kv_dim)) into block l's cache at pos. A key or
 * value past half's range would turn attention to NaN and every token after it wrong: the
 * forward fails instead, saying so (-SPA_EUNSUPPORTED). */
static int kv_store(struct spa_engine *e, uint32_t l, uint32_t pos, uint32_t n_tok)
{
	const uint32_t hd = e->m->hp.head_dim;
	for (uint32_t h = 0; h < e->m->hp.n_kv_heads; h++)
		for (uint32_t j = 0; j < n_tok; j++) {
			const uint64_t src = (uint64_t)j * e->kv_dim + (uint64_t)h * hd;
			const uint64_t dst = (uint64_t)(pos + j) * hd;
			spa_fp16_row(kv_head(e, e->k_cache, l, h) + dst, e->kb + src, hd);
			spa_fp16_row(kv_head(e, e->v_cache, l, h) + dst, e->vb + src, hd);
		}
	const uint64_t n = (uint64_t)n_tok * e->kv_dim;
	if (!beyond_half(e->kb, n) && !beyond_half(e->vb, n))
		return 0;
	snprintf(e->st.errmsg, sizeof e->st.errmsg, "block %u at position %u: a key or value is "
		 "beyond 65504, the largest IEEE half the KV cache holds; this model's activations "
		 "are out of the range this engine supports (check the model file: its weights may "
		 "be corrupt or wrongly scaled)", l, pos);
	return -SPA_EUNSUPPORTED;
}

struct attn_job {
	struct spa_engine *e;
	uint32_t layer;
	uint32_t n_tok;
	uint32_t pos;   /* position of the first token of the batch */
};

/* Causal grouped-query attention for every (token, head) pair of the batch, each thread a
 * contiguous run of pairs; each pair is computed by one thread in a fixed order, so the
 * result does not depend on nth. */
static void attn_worker(void *ctx, int ith, int nth)
{
	const struct attn_job *job = ctx;
	struct spa_engine *e = job->e;
	const struct spa_hparams *hp = &e->m->hp;
	const uint32_t H = hp->n_embd, hd = hp->head_dim;
	const uint32_t group = hp->n_heads / hp->n_kv_heads;
	const float scale = 1.0f / sqrtf((float)hd);
	float *sc = e->scores + (uint64_t)ith * e->n_ctx;
	const uint32_t n_items = job->n_tok * hp->n_heads;

	/* contiguous shares: a thread's heads are neighbours, so the heads that share a KV head
	 * (grouped-query attention) read its rows once from memory, then from its caches */
	const uint32_t it0 = (uint32_t)((uint64_t)n_items * (uint32_t)ith / (uint32_t)nth);
	const uint32_t it1 = (uint32_t)((uint64_t)n_items * (uint32_t)(ith + 1) / (uint32_t)nth);
	for (uint32_t it = it0; it < it1; it++) {
		const uint32_t j = it / hp->n_heads, h = it % hp->n_heads;
		const uint32_t p = job->pos + j;            /* absolute position */
		const uint32_t kvh = h / group;
		const float *q = e->q + (uint64_t)j * H + (uint64_t)h * hd;
		float *out = e->att + (uint64_t)j * H + (uint64_t)h * hd;

		spa_dot_f16_rows(kv_head(e, e->k_cache, job->layer, kvh), hd, q, hd, sc, p + 1);
		for (uint32_t t = 0; t <= p; t++)
			sc[t] = sc[t] * scale;
		spa_softmax(sc, p + 1);
		spa_weighted_sum_f16(out, sc, kv_head(e, e->v_cache, job->layer, kvh), hd, p + 1,
				     hd);
	}
}

static int call_adapter(struct spa_engine *e, const struct spa_engine_hooks *hooks,
			uint32_t layer, uint32_t which, uint32_t n_tok)
{
	if (!hooks || !hooks->adapter)
		return 0;
	const uint64_t n = (uint64_t)n_tok * e->m->hp.n_embd;
	memset(e->delta, 0, n * sizeof(float));
	int rc = hooks->adapter(hooks->ctx, layer, which, n_tok, e->proj, e->delta);
	if (rc != 0)
		return rc < 0 ? rc : -EINVAL;
	add_rows(e->proj, e->delta, n);
	return 0;
}

/* Side tap i (0: W_in, i > 0: W_down of block i - 1) as a product item on x: the bits of
 * spa_matvec_f32(W, b, x, taps + i r, r, H). */
static void tap_item(const struct spa_engine *e, uint32_t i, const float *x, struct spa_tensor *t,
		     struct spa_matvec_item *it)
{
	const struct spa_plugin *sp = e->side;
	const uint32_t r = sp->rank, H = e->m->hp.n_embd;
	*t = (struct spa_tensor){ SPA_TYPE_F32, H, r,
				  i ? sp->tap_w + (size_t)(i - 1) * r * H : sp->in_w, 0 };
	*it = (struct spa_matvec_item){ t, x, i ? sp->tap_b + (size_t)(i - 1) * r : sp->in_b,
					e->taps + (size_t)i * r };
}

/* The pending tap, if any, on this thread alone. */
static void tap_alone(struct spa_engine *e, int *pending, const float *x)
{
	if (*pending < 0)
		return;
	struct spa_tensor t;
	struct spa_matvec_item it;
	tap_item(e, (uint32_t)*pending, x, &t, &it);
	spa_matvec_f32(it.w->data, it.b, x, it.y, (uint32_t)t.rows, (uint32_t)t.cols);
	*pending = -1;
}

int spa_engine_forward(struct spa_engine *e, const int32_t *tokens, uint32_t n_tok,
		       const struct spa_engine_hooks *hooks)
{
	const struct spa_model *m = e->m;
	const struct spa_hparams *hp = &m->hp;
	const uint32_t H = hp->n_embd, L = hp->n_layers, F = hp->n_ff, kv_dim = e->kv_dim;
	const uint32_t pos = e->pos;
	int rc;

	if (!tokens || n_tok == 0 || n_tok > e->max_batch || n_tok > e->n_ctx - pos)
		return -SPA_EUSAGE;
	for (uint32_t j = 0; j < n_tok; j++)
		if (tokens[j] < 0 || (uint32_t)tokens[j] >= hp->n_vocab)
			return -SPA_EUSAGE;

	if (e->st.err)
		return e->st.err;
	e->st.errmsg[0] = '\0'; /* the stream is fine: a message left is an earlier forward's */
	/* e: embedding rows, (n_tok, H) */
	for (uint32_t j = 0; j < n_tok; j++) {
		const uint8_t *row;
		if (m->tok_embd.data) {
			row = (const uint8_t *)m->tok_embd.data +
			      (uint64_t)tokens[j] * e->embd_row_size;
		} else {
			/* Under a memory budget the embedding stays on disk: one row per token. */
			struct spa_errbuf perr = {{0}};
			rc = spa_gguf_pread(e->st.g, e->st.embd_off +
					    (uint64_t)tokens[j] * e->embd_row_size, e->st.embd_row,
					    e->embd_row_size, &perr);
			if (rc < 0) {
				snprintf(e->st.errmsg, sizeof e->st.errmsg, "reading token %d's "
					 "embedding row: %.560s", tokens[j],
					 *perr.msg ? perr.msg : spa_strerror(rc));
				return rc;
			}
			e->st.bytes_read += e->embd_row_size;
			row = e->st.embd_row;
		}
		spa_dequant_row(m->tok_embd.type, row, e->x + (uint64_t)j * H, H);
	}
	const float *x_last = e->x + (uint64_t)(n_tok - 1) * H;
	memcpy(e->resid, x_last, H * sizeof(float));
	/* The TAPS payload fills up while the blocks run (spa_plugin_side_taps' products): tap i
	 * (0: t_in = W_in e, i > 0: block i-1's W_down y) becomes pending when its input is in
	 * x_last, and is computed in the next block's q, k, v pool job (x_last does not change
	 * before that block's attention), or alone when that block cannot take it; the last
	 * block's tap is all that is left after the blocks end. */
	int pending_tap = e->taps ? 0 : -1;

	/* the rotary angles of the batch's positions, once for every block */
	for (uint32_t j = 0; j < n_tok; j++)
		spa_rope_table(e->rope_cs + (uint64_t)j * hp->head_dim, hp->head_dim, pos + j,
			       hp->rope_base);
	for (uint32_t l = 0; l < L; l++) {
		const struct spa_layer *ly = &m->layers[l];
		/* the batch's keys and values: (n_tok, kv_dim), then into the cache */
		float *kc = e->kb, *vc = e->vb;

		/* attention */
		for (uint32_t j = 0; j < n_tok; j++)
			spa_rmsnorm(e->xb + (uint64_t)j * H, e->x + (uint64_t)j * H, ly->attn_norm,
				    H, hp->rms_eps);
		if (n_tok == 1 && !blk_streamed(e, l)) { /* resident: q, k, v (+ a tap), one pool job */
			struct spa_tensor tap;
			struct spa_matvec_item it[4] = { { &ly->wq, e->xb, NULL, e->q },
							  { &ly->wk, e->xb, NULL, kc },
							  { &ly->wv, e->xb, NULL, vc } };
			unsigned n_it = 3;
			if (pending_tap >= 0)
				tap_item(e, (uint32_t)pending_tap, x_last, &tap, &it[n_it++]);
			pending_tap = -1;
			spa_matvec_items(e->pool, n_it, it);
		} else {
			tap_alone(e, &pending_tap, x_last);
			if ((rc = mmw(e, l, 0, e->xb, e->q, n_tok)) < 0)
				return rc;
			if ((rc = mmw(e, l, 1, e->xb, kc, n_tok)) < 0)
				return rc;
			if ((rc = mmw(e, l, 2, e->xb, vc, n_tok)) < 0)
				return rc;
		}
		if (hooks && hooks->lora) {
			memset(e->dq, 0, (uint64_t)n_tok * H * sizeof(float));
			memset(e->dv, 0, (uint64_t)n_tok * kv_dim * sizeof(float));
			rc = hooks->lora(hooks->ctx, l, n_tok, e->xb, e->dq, e->dv);
			if (rc != 0)
				return rc < 0 ? rc : -EINVAL;
			add_rows(e->q, e->dq, (uint64_t)n_tok * H);
			add_rows(vc, e->dv, (uint64_t)n_tok * kv_dim);
		}
		for (uint32_t j = 0; j < n_tok; j++) {
			const float *cs = e->rope_cs + (uint64_t)j * hp->head_dim;
			spa_rope_apply(e->q + (uint64_t)j * H, hp->n_heads, hp->head_dim, cs);
			spa_rope_apply(kc + (uint64_t)j * kv_dim, hp->n_kv_heads, hp->head_dim, cs);
		}
		if ((rc = kv_store(e, l, pos, n_tok)) < 0)
			return rc;
		struct attn_job job = { .e = e, .layer = l, .n_tok = n_tok, .pos = pos };
		spa_pool_run(e->pool, attn_worker, &job);
		if ((rc = mmw(e, l, 3, e->att, e->proj, n_tok)) < 0)
			return rc;
		if ((rc = call_adapter(e, hooks, l, 0, n_tok)) < 0)
			return rc;
		add_rows(e->x, e->proj, (uint64_t)n_tok * H);

		/* SwiGLU feed-forward */
		for (uint32_t j = 0; j < n_tok; j++)
			spa_rmsnorm(e->xb + (uint64_t)j * H, e->x + (uint64_t)j * H, ly->ffn_norm,
				    H, hp->rms_eps);
		if (n_tok == 1 && !blk_streamed(e, l)) { /* gate, up and SwiGLU in one pool job */
			spa_matvec_swiglu(e->pool, &ly->w_gate, &ly->w_up, e->xb, e->hb, e->hb2);
		} else {
			if ((rc = mmw(e, l, 4, e->xb, e->hb, n_tok)) < 0)
				return rc;
			if ((rc = mmw(e, l, 5, e->xb, e->hb2, n_tok)) < 0)
				return rc;
			for (uint32_t j = 0; j < n_tok; j++)
				spa_swiglu(e->hb + (uint64_t)j * F, e->hb + (uint64_t)j * F,
					   e->hb2 + (uint64_t)j * F, F);
		}
		if ((rc = mmw(e, l, 6, e->hb, e->proj, n_tok)) < 0)
			return rc;
		if ((rc = call_adapter(e, hooks, l, 1, n_tok)) < 0)
			return rc;
		add_rows(e->x, e->proj, (uint64_t)n_tok * H);

		memcpy(e->resid + (uint64_t)(l + 1) * H, x_last, H * sizeof(float));
		/* block l's epilogue: its tap, into the outgoing payload with the next block */
		if (e->taps)
			pending_tap = (int)l + 1;
	}
	tap_alone(e, &pending_tap, x_last);
	spa_rmsnorm(e->f, x_last, m->output_norm, H, hp->rms_eps);
	if (e->gate_on)
		spa_matvec_f32(e->side->cls_w, e->side->cls_b, e->f, e->gate, 2, H);
	e->st.n_forward++;
	e->pos = pos + n_tok;
	return 0;
}

void spa_engine_logits(struct spa_engine *e, const float *z, float *logits)
{
	spa_matvec(e->pool, &e->m->output, z, logits);
}

/* ---------------------------------------------------------------- fused side maps */

int spa_engine_set_side(struct spa_engine *e, const struct spa_plugin *cp, float *taps)
{
	e->side = NULL;
	e->taps = NULL;
	e->gate_on = false;
	if (!cp)
		return 0;
	if (cp->kind != SPA_PLUGIN_SIDE || cp->n_layers != e->m->hp.n_layers ||
	    cp->n_embd != e->m->hp.n_embd)
		return -SPA_EUSAGE;
	if (taps && (!cp->in_w || !cp->in_b || !cp->tap_w || !cp->tap_b))
		return -SPA_EUSAGE;
	e->side = cp;
	e->taps = taps;
	e->gate_on = cp->cls_w && cp->cls_b;
	return 0;
}

int spa_engine_gate(const struct spa_engine *e, float *margin)
{
	if (!e->gate_on)
		return -SPA_EUSAGE;
	if (margin)
		*margin = e->gate[1] - e->gate[0];
	return e->gate[1] > e->gate[0] ? 1 : 0; /* spa_plugin_gate's rule */
}

/* ---------------------------------------------------------------- greedy head */

struct head_job {
	struct spa_engine *e;
	const struct spa_matvec_x *z; /* the input, made ready once for every tile */
	uint64_t row_size;
	atomic_uint next_tile; /* the first tile no thread has taken */
};

/* Threads take tiles of HEAD_TILE rows in turn from a shared counter (a thread that wakes
 * late or is preempted takes fewer), each running the kernels' own matvec single-threaded
 * over the tile: each logit is the same dot call as in spa_matvec, whatever the weight type.
 * A thread's tiles ascend, so its strict > keeps its lowest index among equal values. NaNs
 * never win (spa_argmax's rule). */
static void head_worker(void *ctx, int ith, int nth)
{
	struct head_job *j = ctx;
	struct spa_engine *e = j->e;
	const struct spa_tensor *w = &e->m->output;
	float *tile = e->htile + (uint64_t)ith * HEAD_TILE;
	struct head_best b = { .v = 0, .i = 0, .any = false };
	(void)nth;
	for (;;) {
		const uint64_t t0 = (uint64_t)atomic_fetch_add_explicit(&j->next_tile, 1,
									memory_order_relaxed) * HEAD_TILE;
		if (t0 >= w->rows)
			break;
		uint64_t n = w->rows - t0 < HEAD_TILE ? w->rows - t0 : HEAD_TILE;
		struct spa_tensor sub = { w->type, w->cols, n,
					  (const uint8_t *)w->data + t0 * j->row_size, 0 };
		spa_matvec_x(NULL, &sub, j->z, tile);
		for (uint64_t k = 0; k < n; k++) {
			float v = tile[k];
			if (isnan(v))
				continue;
			if (!b.any || v > b.v) { /* strict: the lowest index wins ties */
				b.v = v;
				b.i = (uint32_t)(t0 + k);
				b.any = true;
			}
		}
	}
	e->hbest[ith] = b;
}

void spa_engine_head_argmax(struct spa_engine *e, const float *z, int32_t *tok)
{
	const struct spa_tensor *w = &e->m->output;
	spa_matvec_x_prepare(e->px, z ? z : e->f, w->cols, w->type);
	struct head_job j = { .e = e, .z = e->px };
	spa_dtype_row_size(w->type, w->cols, &j.row_size);
	int nth = e->pool ? spa_pool_n_threads(e->pool) : 1;
	spa_pool_run(e->pool, head_worker, &j);
	/* the highest value; among equal ones the lowest index, whichever thread had it */
	struct head_best best = { .any = false };
	for (int t = 0; t < nth; t++) {
		const struct head_best *b = &e->hbest[t];
		if (b->any && (!best.any || b->v > best.v || (b->v == best.v && b->i < best.i)))
			best = *b;
	}
	*tok = best.any ? (int32_t)best.i : 0; /* all NaN: 0, as spa_argmax */
}
