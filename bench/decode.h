/* bench/decode's shared parts (bench/decode.c, bench/decode_budget.c). */
#ifndef SPA_BENCH_DECODE_H
#define SPA_BENCH_DECODE_H

#include <stdbool.h>
#include <stdint.h>

#include "spa/spa.h"

#define MAX_LIST 8
#define SIDE_RANK 32
#define BUDGET_STEPS 96 /* steps of each side, at least, under a memory budget */

struct opts {
	const char *shapes[MAX_LIST];
	int n_shapes;
	const char *models[MAX_LIST]; /* --model files, measured instead of the shapes */
	int n_models;
	uint32_t batch[MAX_LIST];     /* --batch: sequences per batched step */
	int n_batch;
	const char *backend;          /* --backend (NULL: auto) */
	enum spa_dtype types[MAX_LIST];
	int n_types;
	int threads[MAX_LIST];
	int n_threads;
	uint32_t n_tok;
	uint32_t prefill[MAX_LIST];
	int n_prefill;
	bool mem_budget;
	const char *cache;
	const char *json;
	uint64_t bw_bytes;
};

struct row {
	const char *shape;           /* the shape, or the --model file's name */
	enum spa_dtype type;
	const char *backend;
	int threads;
	double tok_s, p50_ms, p99_ms, eff_gbs, machine_gbs, ratio, gflops, peak_gflops;
	double kernel_gbs; /* the format's matvec on weights in L2 */
	double kernel_file_gbs; /* the same on the rows as the file lays them out, where packed */
	double roof;       /* eff_gbs / min(machine_gbs, kernel_gbs) */
	double taps_fused_us, taps_unfused_us;   /* added to a step */
	double taps_tail_us;                     /* fused: left after the last block */
	double head_fused_us, head_unfused_us;
	double chain_fused_us, chain_unfused_us;
	double prefill_tok_s[MAX_LIST];
	double budget_tok_s[3], budget_hidden[3], budget_io_ms[3], budget_wait_ms[3];
	double budget_no_wait[3]; /* 1 - wait / io: the reads' time the compute did not wait */
	/* hidden with both sides' rows as the file lays them out (SPA_PACK=off), for a format
	 * packed at load; NAN otherwise */
	double budget_hidden_file[3];
	double budget_xcore_ns[3][2]; /* the cores' round trip before and after the pairs */
	int budget_ok[3];
	double batch_tok_s[MAX_LIST]; /* --batch: tokens/s of all n sequences together */
	double batch_p50_ms[MAX_LIST];
};

/* Greedy decode one step at a time, for measuring two engines in turns. */
struct stepper {
	struct spa_context *e;
	int32_t tok;
	uint64_t ns; /* the last step's time */
};

/* Reset e and run the 16-token prompt every measured decode starts from; then one greedy
 * step at a time (s->ns its time). */
int stepper_start(struct stepper *s, struct spa_context *e, uint32_t V);
int stepper_step(struct stepper *s);
/* The pct percentile of v[n] (sorted in place). */
double median_ns(uint64_t *v, uint32_t n, double pct);
int cmp_u64(const void *a, const void *b);

/* Whether any block matrix of m was packed at load. */
bool model_packed(const struct spa_model *m);
/* The budgets of --mem-budget against the whole model m (loaded from path), computed by be
 * over pool (bench/decode_budget.c). */
void budget_pairs(const struct opts *o, const char *path, const struct spa_model *m,
		  struct spa_pool *pool, struct spa_backend *be, bool file, struct row *w);

#endif
