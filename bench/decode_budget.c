/* bench/decode's memory budgets: streaming at 50 % and 25 % of the weights in memory, in
 * turns with the whole model, and the cores' distance that decides how much of it hides. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../runtime/cli/cli.h"
#include "benchutil.h"
#include "decode.h"

/* ---------------------------------------------------------------- the cores' distance */

/* A cache line passed back and forth between two CPUs: about 100 ns a round trip (as measured
 * here) when they share a last-level cache, several hundred when they do not. A VM's host may
 * move its vCPUs between the caches of different core complexes while a benchmark runs (seen
 * here: 83 ns, then 450 ns for seconds, in a bare ping-pong); streaming, whose ring is written
 * by the reader's core and read by the compute core, hides much less of its I/O then (the
 * same 1b q8_0 decode at 50 %: 23 ms a step, or 32 ms while the cores were apart). Printed
 * beside each budget. */
struct xcore {
	_Alignas(64) atomic_uint_fast64_t line;
	int cpu_echo, cpu_ping;
	double ns; /* out: mean round trip, NAN when it could not be measured */
};

#define XCORE_STOP UINT64_MAX
#define XCORE_TRIPS 20000

static void *xcore_echo(void *arg)
{
	struct xcore *x = arg;
	(void)spa_pin_thread(x->cpu_echo); /* unpinned, the measure is only less telling */
	for (;;) {
		uint_fast64_t v = atomic_load_explicit(&x->line, memory_order_acquire);
		if (v == XCORE_STOP)
			return NULL;
		if (v & 1)
			atomic_store_explicit(&x->line, v + 1, memory_order_release);
	}
}

static void *xcore_ping(void *arg)
{
	struct xcore *x = arg;
	x->ns = NAN;
	if (spa_pin_thread(x->cpu_ping) < 0)
		return NULL;
	uint64_t t0 = bu_now_ns();
	for (uint_fast64_t i = 0; i < XCORE_TRIPS; i++) {
		atomic_store_explicit(&x->line, 2 * i + 1, memory_order_release);
		for (uint32_t spin = 0;
		     atomic_load_explicit(&x->line, memory_order_acquire) != 2 * i + 2;)
			if ((++spin & 0xFFFFF) == 0 && bu_now_ns() - t0 > 1000000000u)
				return NULL; /* the echo never ran: no measure */
	}
	x->ns = (double)(bu_now_ns() - t0) / XCORE_TRIPS;
	return NULL;
}

/* The round trip between the CPU of the pool's first thread and the first other online CPU
 * (where the stream's reader copies when the pool leaves it one); NAN on one CPU. */
static void pool_cpu_worker(void *ctx, int ith, int nth)
{
	(void)nth;
	if (ith == 0)
		*(int *)ctx = sched_getcpu();
}

static double xcore_rtt_ns(struct spa_pool *pool)
{
	int a = -1;
	spa_pool_run(pool, pool_cpu_worker, &a);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (a < 0 || n < 2)
		return NAN;
	struct xcore x = { .cpu_ping = a, .cpu_echo = a == 0 ? 1 : 0, .ns = NAN };
	atomic_init(&x.line, 0);
	pthread_t te, tp;
	if (pthread_create(&te, NULL, xcore_echo, &x) != 0)
		return NAN;
	if (pthread_create(&tp, NULL, xcore_ping, &x) == 0)
		pthread_join(tp, NULL);
	atomic_store_explicit(&x.line, XCORE_STOP, memory_order_release);
	pthread_join(te, NULL);
	return x.ns;
}

/* Whether any block matrix of m was packed at load. */
bool model_packed(const struct spa_model *m)
{
	for (uint32_t l = 0; l < m->hp.n_layers; l++)
		for (int k = 0; k < SPA_LAYER_MATS; k++)
			if (spa_layer_mat(&m->layers[l], k)->packed)
				return true;
	return false;
}

/* The budgets of --mem-budget against the whole model m (loaded from path), on be: per
 * budget, at least BUDGET_STEPS steps of each side in turns, then the reads alone (median
 * of 9 probes). file: m and the budgeted models were loaded with SPA_PACK=off, and only
 * "hidden" is kept (w->budget_hidden_file). */
void budget_pairs(const struct opts *o, const char *path, const struct spa_model *m,
		  struct spa_pool *pool, struct spa_backend *be, bool file, struct row *w)
{
	/* at least BUDGET_STEPS pairs: "hidden" is a difference of two medians divided by a
	 * third, and fewer steps left it swinging by tens of points on a shared host */
	const uint32_t nb = o->n_tok > BUDGET_STEPS ? o->n_tok : BUDGET_STEPS;
	const uint32_t V = m->hp.n_vocab;
	struct spa_errbuf err = {{0}};
	struct spa_gguf *g = NULL;
	spa_gguf_open(&g, path, NULL);
	uint64_t size = g ? g->data_size : 0;
	spa_gguf_close(g);
	const int pct[3] = { 100, 50, 25 };
	uint64_t *full = calloc(2 * nb, 8), *part = calloc(nb, 8);
	uint32_t n_full = 0;
	struct spa_context *ef = NULL;
	if (!full || !part || spa_context_create(&ef, m, be, 16 + nb + 8, 16) < 0)
		cli_die(1, "out of memory");
	for (int b = 1; b < 3; b++) {
		struct spa_model *ms = NULL;
		if (spa_model_load_budget(&ms, path, size * (uint64_t)pct[b] / 100, false, &err) < 0) {
			fprintf(stderr, "decode: %d %% budget: %s\n", pct[b], err.msg);
			continue;
		}
		struct spa_context *es = NULL;
		struct stepper sf, sb;
		int rc = spa_context_create(&es, ms, be, 16 + nb + 8, 16);
		const double x0 = file ? NAN : xcore_rtt_ns(pool); /* kept for the first pass */
		if (rc == 0)
			rc = stepper_start(&sf, ef, V) < 0 ? -1 : stepper_start(&sb, es, V);
		for (uint32_t i = 0; rc == 0 && i < nb; i++) {
			struct stepper *first = i & 1 ? &sb : &sf, *second = i & 1 ? &sf : &sb;
			if ((rc = stepper_step(first)) == 0)
				rc = stepper_step(second);
			full[n_full + i] = sf.ns;
			part[i] = sb.ns;
		}
		if (rc == 0) {
			struct spa_wstream_stats st;
			spa_wstream_stats(spa_context_model(es), &st);
			double wait = (double)st.wait_ns / (double)st.n_forward;
			uint64_t probe[9] = { 0 };
			for (int i = 0; i < 9 && st.n_streamed_blocks; i++)
				spa_wstream_probe(spa_context_model(es)->stream, &probe[i]);
			double io = median_ns(probe, 9, 50);
			double t_full = median_ns(full + n_full, nb, 50);
			double t_part = median_ns(part, nb, 50);
			n_full += nb;
			/* hidden = 1 - (step time added by streaming) / (I/O time alone): buffered
			 * reads of cached pages may be copied inside the submit on the compute
			 * thread, which the wait counter alone would miss */
			double hidden = io > 0 ? 1.0 - (t_part - t_full) / io : NAN;
			hidden = hidden < 0 ? 0 : hidden > 1 ? 1 : hidden;
			if (file) {
				w->budget_hidden_file[b] = hidden;
			} else {
				w->budget_xcore_ns[b][0] = x0;
				w->budget_xcore_ns[b][1] = xcore_rtt_ns(pool);
				w->budget_ok[b] = 1;
				w->budget_tok_s[b] = 1e9 / t_part;
				w->budget_io_ms[b] = io / 1e6;
				w->budget_wait_ms[b] = wait / 1e6;
				w->budget_hidden[b] = hidden;
				w->budget_no_wait[b] = io > 0 ? 1.0 - wait / io : NAN;
				if (w->budget_no_wait[b] < 0)
					w->budget_no_wait[b] = 0;
			}
		} else {
			fprintf(stderr, "decode: %d %% budget: the decode failed (%d)\n", pct[b], rc);
		}
		spa_context_destroy(es);
		spa_model_destroy(ms);
	}
	if (n_full && !file) { /* the whole model's row: every one of its paired steps */
		w->budget_ok[0] = 1;
		w->budget_tok_s[0] = 1e9 / median_ns(full, n_full, 50);
		w->budget_hidden[0] = NAN;
		w->budget_no_wait[0] = NAN;
	}
	spa_context_destroy(ef);
	free(full);
	free(part);
}

