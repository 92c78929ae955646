/* spa-quantize: convert a GGUF model to another weight type (ggml's formats, llama.cpp's rules).
 *
 *   spa-quantize [-t N] [--quiet] IN.gguf OUT.gguf TYPE
 *
 * Every kv is copied (general.file_type updated, general.quantization_version set for the
 * block formats); 2-D "*weight" tensors get the type spa_quantize_tensor_type() gives (norms
 * and other 1-D tensors F32); other tensors are copied. Tensors are converted one at a time
 * inside the writer's fill callback, from chunks of source rows read with pread, so memory
 * stays near the largest output tensor whatever the model's size. Rows are quantized in
 * parallel on a thread pool; each row's bytes do not depend on the thread count.
 *
 * Exit status: 0 done, 1 the work failed (message says why), 2 bad usage. */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "spa/spa.h"

static const char usage[] =
	"usage: spa-quantize [-t N] [--quiet] IN.gguf OUT.gguf TYPE\n"
	"\n"
	"Convert the weight matrices of a GGUF model to TYPE, in ggml's block formats (files\n"
	"that llama.cpp reads, quantized as llama.cpp's reference quantizers do):\n"
	"  f32, f16, bf16   plain floats\n"
	"  q8_0             8-bit, 32-element blocks (general.file_type 7, MOSTLY_Q8_0)\n"
	"  q4_0             4-bit, 32-element blocks; token_embd and output in q6_k (2)\n"
	"  q4_k             4-bit k-quant, 256-element blocks; token_embd and output in q6_k,\n"
	"                   as llama.cpp's Q4_K_M (15)\n"
	"  q6_k             6-bit k-quant, 256-element blocks (18)\n"
	"Norms and other 1-D tensors are stored in f32. A matrix whose rows do not fill whole\n"
	"blocks falls back, as in llama.cpp: a k-quant to q8_0, a 32-block type to f16 (a note\n"
	"names each such tensor). The source may be f32, f16 or bf16; an already quantized\n"
	"source is dequantized and quantized again, which adds error (a note says so): quantize\n"
	"from the f16/f32 original when you have it. Tensors already in their target type are\n"
	"copied unchanged.\n"
	"\n"
	"The converted model has a different fingerprint from the source, so plugins must be\n"
	"made (spa-gen plugin --base OUT.gguf) or trained for the quantized model itself.\n"
	"\n"
	"  -t, --threads N  threads that quantize rows (default: one per core)\n"
	"  -q, --quiet      no progress bar\n"
	"  -h, --help       this text\n"
	"\n"
	"Exit status: 0 done, 1 the conversion failed, 2 bad usage.\n";

/* Bytes of source rows read per chunk: large reads, bounded memory. */
#define CHUNK_BYTES (16u << 20)

struct qjob;

/* How one tensor is made: copied (src type == dst type) or converted row by row. */
struct qtensor {
	const struct spa_gguf_tensor *t;
	enum spa_dtype dst;
	bool copy;                  /* dst == source type: the bytes as they are */
	uint64_t ne0, rows;
	uint64_t src_row, dst_row;  /* bytes per row */
	uint64_t done_rows;         /* rows handed out so far */
	uint64_t q_off, q_len;      /* bytes of job->qbuf not yet handed out: [q_off, q_len) */
	struct qjob *job;
};

struct qjob {
	struct spa_gguf *g;
	struct spa_pool *pool;
	int n_threads;
	uint8_t *sbuf, *qbuf;  /* a chunk of source rows, and the same rows converted */
	float *fbuf;           /* n_threads rows of floats */
	uint64_t max_ne0;
	/* the chunk being converted (worker context) */
	const struct qtensor *cur;
	uint64_t chunk_rows;
	int err[64];           /* per thread: first error */
	uint64_t err_row[64];
	struct spa_errbuf *errbuf;
};

static void convert_worker(void *ctx, int ith, int nth)
{
	struct qjob *j = ctx;
	const struct qtensor *q = j->cur;
	uint64_t per = (j->chunk_rows + (uint64_t)nth - 1) / (uint64_t)nth;
	uint64_t r0 = per * (uint64_t)ith, r1 = r0 + per < j->chunk_rows ? r0 + per : j->chunk_rows;
	float *f = j->fbuf + (uint64_t)ith * j->max_ne0;

	j->err[ith] = 0;
	for (uint64_t r = r0; r < r1; r++) {
		spa_dequant_row(q->t->type, j->sbuf + r * q->src_row, f, q->ne0);
		int rc = spa_quantize_row(q->dst, f, j->qbuf + r * q->dst_row, q->ne0);
		if (rc < 0) {
			j->err[ith] = rc;
			j->err_row[ith] = q->done_rows + r;
			return;
		}
	}
}

/* Writer callback: the next `size` bytes of the converted tensor (the writer asks for the
 * whole tensor today; pieces of any size are handled). */
static int fill_tensor(void *ctx, void *dst, size_t size)
{
	struct qtensor *q = ctx;
	struct qjob *j = q->job;
	uint8_t *d = dst;

	while (size) {
		if (q->q_off == q->q_len) {
			uint64_t left = q->rows - q->done_rows;
			if (!left)
				return -EIO; /* asked for more than the tensor holds: a writer bug */
			uint64_t n = CHUNK_BYTES / q->src_row;
			n = n < 1 ? 1 : n > left ? left : n;
			/* a copy reads straight into the output chunk (same row size) */
			int rc = spa_gguf_pread(j->g, q->t->offset + q->done_rows * q->src_row,
						q->copy ? j->qbuf : j->sbuf, (size_t)(n * q->src_row),
						j->errbuf);
			if (rc < 0)
				return rc;
			j->cur = q;
			j->chunk_rows = n;
			if (!q->copy)
				spa_pool_run(j->pool, convert_worker, j);
			for (int i = 0; i < j->n_threads && !q->copy; i++) {
				if (j->err[i] == -EDOM)
					return spa_err(j->errbuf, -SPA_EFORMAT, "%s: tensor '%s' row %" PRIu64
						       " holds a NaN or an infinity, which cannot be "
						       "quantized; the source model is damaged",
						       j->g->path, q->t->name.data, j->err_row[i]);
				if (j->err[i] < 0)
					return j->err[i];
			}
			q->done_rows += n;
			q->q_off = 0;
			q->q_len = n * q->dst_row;
		}
		uint64_t k = q->q_len - q->q_off;
		if (k > size)
			k = size;
		memcpy(d, j->qbuf + q->q_off, (size_t)k);
		q->q_off += k;
		d += k;
		size -= k;
	}
	return 0;
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && !strcmp(s + n - m, suffix);
}

static int is_float_type(enum spa_dtype t)
{
	return t == SPA_TYPE_F32 || t == SPA_TYPE_F16 || t == SPA_TYPE_BF16;
}

int main(int argc, char **argv)
{
	const char *pos[3];
	int n_pos = 0, quiet = 0;
	long long n_threads = 0;

	cli_init(argv[0]);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(usage, stdout);
			return 0;
		} else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
			n_threads = cli_int(a, cli_value(argc, argv, &i), 1, 64);
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			quiet = 1;
		} else if (a[0] == '-' && a[1]) {
			cli_die(2, "unknown option '%s' (see --help)", a);
		} else if (n_pos < 3) {
			pos[n_pos++] = a;
		} else {
			cli_die(2, "too many arguments: '%s'; usage: spa-quantize IN.gguf OUT.gguf TYPE",
				a);
		}
	}
	if (n_pos < 3)
		cli_die(2, "missing %s; usage: spa-quantize IN.gguf OUT.gguf TYPE (see --help)",
			n_pos == 0 ? "IN.gguf, OUT.gguf and TYPE" : n_pos == 1 ? "OUT.gguf and TYPE"
									 : "TYPE");
	const char *in = pos[0], *out = pos[1];
	int ti = spa_dtype_from_name(pos[2]);
	if (ti < 0 || !spa_kernels_supports((enum spa_dtype)ti))
		cli_die(2, "TYPE '%s' is not a type spa can write: use f32, f16, bf16, q8_0, q4_0, "
			"q4_k or q6_k", pos[2]);
	const enum spa_dtype type = (enum spa_dtype)ti;

	struct spa_errbuf err = {{0}};
	struct spa_gguf *g = NULL;
	struct spa_gguf_writer *w = NULL;
	struct qtensor *qt = NULL;
	struct qjob job = { .errbuf = &err };
	int rc, n_requant = 0, status = 1;
	enum spa_dtype requant_from = SPA_TYPE_F32;
	double t0 = spa_clock_s();

	if ((rc = spa_gguf_open(&g, in, &err)) < 0)
		cli_die(1, "%s", err.msg[0] ? err.msg : spa_strerror(rc));
	job.g = g;
	if ((rc = spa_gguf_writer_create(&w)) < 0)
		goto oom;
	for (uint64_t i = 0; i < g->n_kv; i++)
		if ((rc = spa_gguf_writer_copy_kv(w, &g->kv[i])) < 0)
			goto oom;
	if ((rc = spa_gguf_writer_set_u32(w, "general.file_type",
					  (uint32_t)spa_quantize_ftype(type))) < 0)
		goto oom;
	/* ggml's GGML_QNT_VERSION, which llama.cpp's quantizer writes with block formats */
	if (!is_float_type(type) &&
	    (rc = spa_gguf_writer_set_u32(w, "general.quantization_version", 2)) < 0)
		goto oom;

	qt = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *qt);
	if (!qt)
		goto oom;
	uint64_t max_src_row = 0, n_by_type[SPA_TYPE_COUNT] = {0};
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		struct qtensor *q = &qt[i];
		const char *name = t->name.data;
		q->t = t;
		q->job = &job;
		q->ne0 = t->ne[0];
		q->rows = t->n_elems / t->ne[0];
		q->dst = t->type;
		if (t->n_dims < 2 || ends_with(name, "weight"))
			q->dst = spa_quantize_tensor_type(type, name, t->n_dims, t->ne[0]);
		if (t->n_dims >= 2 && q->dst != type && ends_with(name, "weight")) {
			/* the type before the block fallback (a row length of 0 fills any block) */
			enum spa_dtype rule = spa_quantize_tensor_type(type, name, t->n_dims, 0);
			if (q->dst != rule)
				fprintf(stderr, "%s: note: %s: rows of %" PRIu64 " elements do not fill "
					"whole %s blocks of %u: stored as %s\n", cli_prog, name, t->ne[0],
					spa_dtype_name(rule), spa_dtype_block_elems(rule),
					spa_dtype_name(q->dst));
		}
		if (q->dst != t->type) {
			if (!spa_kernels_supports(t->type)) {
				const char *tn = spa_dtype_name(t->type);
				spa_err(&err, -SPA_EUNSUPPORTED, "%s: tensor '%s' is %s, which spa cannot "
					"decode; convert from an f32, f16 or bf16 original", in, name,
					tn ? tn : "of an unknown type");
				goto fail;
			}
			if (!is_float_type(t->type)) {
				n_requant++;
				requant_from = t->type;
			}
		}
		if (spa_dtype_row_size(t->type, q->ne0, &q->src_row) < 0 ||
		    spa_dtype_row_size(q->dst, q->ne0, &q->dst_row) < 0) {
			spa_err(&err, -SPA_EFORMAT, "%s: tensor '%s': bad row of %" PRIu64 " elements",
				in, name, q->ne0);
			goto fail;
		}
		n_by_type[q->dst]++;
		/* same type: copied (dequantizing and quantizing again would not give the same
		 * bytes for block formats, and would only add error) */
		q->copy = q->dst == t->type;
		if (!q->copy)
			job.max_ne0 = q->ne0 > job.max_ne0 ? q->ne0 : job.max_ne0;
		rc = spa_gguf_writer_add_tensor_fn(w, name, q->dst, t->n_dims, t->ne, fill_tensor, q);
		if (rc < 0) {
			spa_err(&err, rc, "%s: cannot add tensor '%s': %s", out, name, spa_strerror(rc));
			goto fail;
		}
		max_src_row = q->src_row > max_src_row ? q->src_row : max_src_row;
	}
	if (n_requant)
		fprintf(stderr, "%s: note: %d tensor(s) were already quantized (%s...): they are "
			"dequantized and quantized again, which adds error; quantize from the f16/f32 "
			"original when you have it\n", cli_prog, n_requant,
			spa_dtype_name(requant_from));

	if ((rc = spa_pool_create(&job.pool, (int)n_threads, NULL)) < 0) {
		spa_err(&err, rc, "cannot start %lld threads: %s", n_threads, spa_strerror(rc));
		goto fail;
	}
	job.n_threads = spa_pool_n_threads(job.pool);
	if (job.n_threads > 64)
		job.n_threads = 64;
	/* a chunk holds at least one row */
	size_t sbytes = CHUNK_BYTES > max_src_row ? CHUNK_BYTES : (size_t)max_src_row;
	/* rows per chunk are CHUNK_BYTES / src_row per tensor: bound the converted size by the
	 * largest ratio of destination to source row */
	uint64_t qbytes = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		uint64_t n = qt[i].src_row ? CHUNK_BYTES / qt[i].src_row : 1;
		n = n < 1 ? 1 : n;
		if (n * qt[i].dst_row > qbytes)
			qbytes = n * qt[i].dst_row;
	}
	job.sbuf = malloc(sbytes);
	job.qbuf = malloc(qbytes ? (size_t)qbytes : 1);
	job.fbuf = malloc((size_t)(job.max_ne0 ? job.max_ne0 : 1) * sizeof(float) *
			  (size_t)job.n_threads);
	if (!job.sbuf || !job.qbuf || !job.fbuf)
		goto oom;
	rc = spa_gguf_writer_write(w, out, !quiet && isatty(2), &err);
	if (rc < 0)
		goto fail;
	double dt = spa_clock_s() - t0;

	struct spa_gguf *o = NULL;
	if ((rc = spa_gguf_open(&o, out, &err)) < 0) {
		fprintf(stderr, "%s: wrote %s but cannot read it back: %s\n", cli_prog, out, err.msg);
		goto done;
	}
	char mix[256];
	size_t ml = 0;
	mix[0] = 0;
	for (int t = 0; t < SPA_TYPE_COUNT; t++)
		if (n_by_type[t] && ml < sizeof mix)
			ml += (size_t)snprintf(mix + ml, sizeof mix - ml, "%s%" PRIu64 " %s",
					       ml ? ", " : "", n_by_type[t], spa_dtype_name(t));
	printf("%s (%.2f MB) -> %s (%.2f MB, %s, %.1f%% of the source): %" PRIu64 " tensors (%s) "
	       "in %.2f s (%.1f MB/s of source), %d threads\n", in, (double)g->file_size / 1e6,
	       out, (double)o->file_size / 1e6, spa_dtype_name(type),
	       100.0 * (double)o->file_size / (double)g->file_size, g->n_tensors, mix, dt,
	       (double)g->file_size / 1e6 / dt, job.n_threads);
	spa_gguf_close(o);
	status = 0;
	goto done;
oom:
	spa_err(&err, rc ? rc : -ENOMEM, "%s: out of memory", out);
fail:
	fprintf(stderr, "%s: %s\n", cli_prog, err.msg[0] ? err.msg : spa_strerror(rc));
done:
	spa_pool_destroy(job.pool);
	free(job.sbuf);
	free(job.qbuf);
	free(job.fbuf);
	free(qt);
	spa_gguf_writer_destroy(w);
	spa_gguf_close(g);
	return status;
}
