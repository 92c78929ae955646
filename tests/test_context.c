/* Contexts over one model (runtime/context.c) and steps over several of them
 * (spa_engine_step): a batched step gives every sequence the bits of a step of its own, many
 * contexts run from several threads at once, a failing sequence leaves the others able to go
 * on. The reference is always the same model's single-context forward, which test_engine checks
 * against an independent forward pass. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

static struct spa_model *load(const char *path)
{
	struct spa_model *m = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load(&m, path, false, &err), 0, "%s", err.msg);
	return m;
}

/* A prompt of n tokens from a seed (ids in 1..V-1). */
static void prompt(int32_t *ids, uint32_t n, uint32_t V, uint32_t seed)
{
	for (uint32_t i = 0; i < n; i++)
		ids[i] = (int32_t)(1 + (seed * 7919u + i * 104729u) % (V - 1));
}

static void assert_same_floats(const float *a, const float *b, size_t n, const char *what)
{
	cr_assert_eq(memcmp(a, b, n * sizeof *a), 0, "%s differs from the single-context step",
		     what);
}

/* Greedy generation of n tokens after a prompt, one context alone: the reference. */
static void generate_alone(const struct spa_model *m, struct spa_backend *be, const int32_t *p,
			   uint32_t n_p, uint32_t n, int32_t *out)
{
	struct spa_context *c = NULL;
	cr_assert_eq(spa_context_create(&c, m, be, n_p + n + 1, n_p), 0);
	cr_assert_eq(spa_engine_forward(c, p, n_p, NULL), 0);
	for (uint32_t i = 0; i < n; i++) {
		spa_engine_head_argmax(c, NULL, &out[i]);
		cr_assert_eq(spa_engine_forward(c, &out[i], 1, NULL), 0);
	}
	spa_context_destroy(c);
}

#define NSEQ 5
#define NGEN 12

Test(context, a_batched_step_gives_each_sequence_its_own_bits)
{
	struct spa_model *m = load(tu_tiny_model());
	struct spa_pool *pool = NULL;
	cr_assert_eq(spa_pool_create(&pool, 2, NULL), 0);
	struct spa_backend *be = NULL;
	cr_assert_eq(spa_backend_create(&be, SPA_BACKEND_CPU, pool, NULL), 0);
	const uint32_t V = m->hp.n_vocab, H = m->hp.n_embd, L = m->hp.n_layers;
	/* sequences at different positions: prompts of 1, 3, 6, 10 and 17 tokens */
	const uint32_t n_p[NSEQ] = { 1, 3, 6, 10, 17 };
	int32_t p[NSEQ][17], ref[NSEQ][NGEN];
	struct spa_context *bc[NSEQ], *rc[NSEQ];
	for (int s = 0; s < NSEQ; s++) {
		prompt(p[s], n_p[s], V, (uint32_t)s + 1);
		generate_alone(m, be, p[s], n_p[s], NGEN, ref[s]);
		cr_assert_eq(spa_context_create(&bc[s], m, be, 64, 17), 0);
		cr_assert_eq(spa_context_create(&rc[s], m, be, 64, 17), 0);
	}
	struct spa_batch *b = NULL;
	cr_assert_eq(spa_batch_create(&b, m, be, 64, NSEQ), 0);
	/* step 1: every prompt at once (chunked prefill of five sequences in one step) */
	struct spa_seq seqs[NSEQ];
	for (int s = 0; s < NSEQ; s++) {
		seqs[s] = (struct spa_seq){ bc[s], p[s], n_p[s], NULL };
		cr_assert_eq(spa_engine_forward(rc[s], p[s], n_p[s], NULL), 0);
	}
	cr_assert_eq(spa_engine_step(b, seqs, NSEQ), 0);
	int32_t tok[NSEQ], rtok[NSEQ];
	for (uint32_t i = 0; i < NGEN; i++) {
		spa_batch_head_argmax(b, bc, NULL, NSEQ, tok);
		for (int s = 0; s < NSEQ; s++) {
			spa_engine_head_argmax(rc[s], NULL, &rtok[s]);
			cr_assert_eq(tok[s], rtok[s], "sequence %d token %u: batched head %d, alone %d",
				     s, i, tok[s], rtok[s]);
			cr_assert_eq(tok[s], ref[s][i], "sequence %d token %u", s, i);
			assert_same_floats(spa_context_final(bc[s]), spa_context_final(rc[s]), H,
					   "the final norm");
			assert_same_floats(spa_context_resid(bc[s]), spa_context_resid(rc[s]),
					   (L + 1ull) * H, "the residual record");
			cr_assert_eq(spa_context_pos(bc[s]), spa_context_pos(rc[s]));
		}
		/* one decode position each, all at different positions, in one step */
		for (int s = 0; s < NSEQ; s++) {
			seqs[s] = (struct spa_seq){ bc[s], &tok[s], 1, NULL };
			cr_assert_eq(spa_engine_forward(rc[s], &rtok[s], 1, NULL), 0);
		}
		cr_assert_eq(spa_engine_step(b, seqs, NSEQ), 0);
	}
	spa_batch_destroy(b);
	for (int s = 0; s < NSEQ; s++) {
		spa_context_destroy(bc[s]);
		spa_context_destroy(rc[s]);
	}
	spa_backend_destroy(be);
	spa_pool_destroy(pool);
	spa_model_destroy(m);
}

/* LoRA hooks in a batched step: each sequence's hook sees its own rows, and its deltas reach
 * only its own tokens (a per-sequence scale makes the deltas differ). */
struct lora_hook {
	const struct spa_plugin *p;
	float scale;
	uint32_t calls, rows;
	float scratch[64];
};

static int lora_hook(void *ctx, uint32_t layer, uint32_t n_tok, const float *x, float *dq,
		     float *dv)
{
	struct lora_hook *h = ctx;
	h->calls++;
	h->rows += n_tok;
	spa_plugin_lora(h->p, layer, n_tok, x, dq, dv, h->scratch);
	for (uint64_t i = 0; i < (uint64_t)n_tok * h->p->n_embd; i++)
		dq[i] *= h->scale;
	return 0;
}

Test(context, hooks_in_a_batched_step_see_only_their_own_rows)
{
	struct spa_model *m = load(tu_tiny_model());
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_plugin_load(&p, tu_tiny_plugin("lora"), &err), 0, "%s", err.msg);
	struct spa_backend *be = NULL;
	cr_assert_eq(spa_backend_create(&be, SPA_BACKEND_CPU, NULL, NULL), 0);
	struct spa_context *bc[3], *rc[3];
	struct lora_hook bh[3], rh[3];
	struct spa_engine_hooks bhk[3], rhk[3];
	int32_t p0[3][4];
	struct spa_seq seqs[3];
	for (int s = 0; s < 3; s++) {
		bh[s] = rh[s] = (struct lora_hook){ .p = p, .scale = 1.0f + (float)s };
		bhk[s] = (struct spa_engine_hooks){ .ctx = &bh[s], .lora = s == 1 ? NULL : lora_hook };
		rhk[s] = (struct spa_engine_hooks){ .ctx = &rh[s], .lora = s == 1 ? NULL : lora_hook };
		prompt(p0[s], 4, m->hp.n_vocab, 10u + (uint32_t)s);
		cr_assert_eq(spa_context_create(&bc[s], m, be, 16, 4), 0);
		cr_assert_eq(spa_context_create(&rc[s], m, be, 16, 4), 0);
		seqs[s] = (struct spa_seq){ bc[s], p0[s], (uint32_t)s + 1, &bhk[s] };
		cr_assert_eq(spa_engine_forward(rc[s], p0[s], (uint32_t)s + 1, &rhk[s]), 0);
	}
	struct spa_batch *b = NULL;
	cr_assert_eq(spa_batch_create(&b, m, be, 8, 3), 0);
	cr_assert_eq(spa_engine_step(b, seqs, 3), 0);
	for (int s = 0; s < 3; s++) {
		assert_same_floats(spa_context_final(bc[s]), spa_context_final(rc[s]),
				   m->hp.n_embd, "a hooked sequence's final norm");
		cr_assert_eq(bh[s].calls, rh[s].calls);
		cr_assert_eq(bh[s].rows, rh[s].rows, "sequence %d: its hook saw %u rows, alone %u",
			     s, bh[s].rows, rh[s].rows);
	}
	cr_assert_eq(bh[1].calls, 0, "the sequence without a hook had it called");
	spa_batch_destroy(b);
	for (int s = 0; s < 3; s++) {
		spa_context_destroy(bc[s]);
		spa_context_destroy(rc[s]);
	}
	spa_backend_destroy(be);
	spa_plugin_destroy(p);
	spa_model_destroy(m);
}

Test(context, a_step_refuses_what_does_not_fit_and_a_failure_advances_nobody)
{
	struct spa_model *m = load(tu_tiny_model()), *m2 = load(tu_tiny_model());
	struct spa_backend *be = NULL, *be2 = NULL;
	cr_assert_eq(spa_backend_create(&be, SPA_BACKEND_CPU, NULL, NULL), 0);
	cr_assert_eq(spa_backend_create(&be2, SPA_BACKEND_CPU, NULL, NULL), 0);
	struct spa_context *a = NULL, *c = NULL, *other = NULL, *elsewhere = NULL;
	cr_assert_eq(spa_context_create(&a, m, be, 8, 4), 0);
	cr_assert_eq(spa_context_create(&c, m, be, 8, 4), 0);
	cr_assert_eq(spa_context_create(&other, m2, be, 8, 4), 0);
	cr_assert_eq(spa_context_create(&elsewhere, m, be2, 8, 4), 0);
	struct spa_batch *b = NULL;
	cr_assert_eq(spa_batch_create(&b, m, be, 4, 2), 0);
	struct spa_batch *nb = NULL;
	cr_assert_eq(spa_batch_create(&nb, m, be, 4, 5), -SPA_EUSAGE, "more sequences than rows");
	cr_assert_null(nb);
	const int32_t t[5] = { 1, 2, 3, 4, 5 }, bad = (int32_t)m->hp.n_vocab;
	struct spa_seq twice[2] = { { a, t, 1, NULL }, { a, t, 1, NULL } };
	cr_assert_eq(spa_engine_step(b, twice, 2), -SPA_EUSAGE, "a context twice");
	struct spa_seq foreign[2] = { { a, t, 1, NULL }, { other, t, 1, NULL } };
	cr_assert_eq(spa_engine_step(b, foreign, 2), -SPA_EUSAGE, "another model's context");
	struct spa_seq away[2] = { { a, t, 1, NULL }, { elsewhere, t, 1, NULL } };
	cr_assert_eq(spa_engine_step(b, away, 2), -SPA_EUSAGE, "another backend's context");
	struct spa_seq many[2] = { { a, t, 3, NULL }, { c, t, 2, NULL } };
	cr_assert_eq(spa_engine_step(b, many, 2), -SPA_EUSAGE, "5 rows in a batch of 4");
	struct spa_seq oor[2] = { { a, t, 1, NULL }, { c, &bad, 1, NULL } };
	cr_assert_eq(spa_engine_step(b, oor, 2), -SPA_EUSAGE, "a token out of range");
	struct spa_seq three[3] = { { a, t, 1, NULL }, { c, t, 1, NULL }, { other, t, 1, NULL } };
	cr_assert_eq(spa_engine_step(b, three, 3), -SPA_EUSAGE, "3 sequences in a batch of 2");
	cr_assert_eq(spa_context_pos(a), 0);
	cr_assert_eq(spa_context_pos(c), 0);
	/* a key beyond half's range in one sequence: the step fails, nobody advances, the
	 * failing context says why, and the others run again without it with their own bits */
	struct spa_model *hot = load(tu_tiny_model());
	struct spa_context *h = NULL, *ref = NULL;
	float *wk = (float *)hot->layers[0].wk.data; /* F32 */
	for (uint64_t i = 0; i < hot->layers[0].wk.rows * hot->layers[0].wk.cols; i++)
		wk[i] *= 1e9f;
	struct spa_batch *bh = NULL;
	cr_assert_eq(spa_batch_create(&bh, hot, be, 4, 2), 0);
	struct spa_model *cold = load(tu_tiny_model());
	cr_assert_eq(spa_context_create(&h, hot, be, 8, 4), 0);
	cr_assert_eq(spa_context_create(&ref, cold, be, 8, 4), 0);
	struct spa_seq hs[1] = { { h, t, 2, NULL } };
	cr_assert_eq(spa_engine_step(bh, hs, 1), -SPA_EUNSUPPORTED);
	cr_assert_eq(spa_context_pos(h), 0);
	cr_assert(strstr(spa_context_error(h), "beyond 65504"), "%s", spa_context_error(h));
	spa_batch_destroy(bh);
	spa_context_destroy(h);
	spa_context_destroy(ref);
	spa_model_destroy(cold);
	spa_model_destroy(hot);
	spa_batch_destroy(b);
	spa_context_destroy(a);
	spa_context_destroy(c);
	spa_context_destroy(other);
	spa_context_destroy(elsewhere);
	spa_backend_destroy(be);
	spa_backend_destroy(be2);
	spa_model_destroy(m);
	spa_model_destroy(m2);
}

/* ---------------------------------------------------------------- threads */

struct gen_job {
	const struct spa_model *m;
	int threads;           /* the backend's pool: 0 for the calling thread alone */
	int32_t prompt[8];
	int32_t out[NGEN];
	int rc;
};

static void *gen_thread(void *arg)
{
	struct gen_job *j = arg;
	struct spa_pool *pool = NULL;
	struct spa_context *c = NULL;
	j->rc = -1;
	if (j->threads && spa_pool_create(&pool, j->threads, NULL) < 0)
		return NULL;
	if (spa_context_create_cpu(&c, j->m, pool, 32, 8) < 0)
		goto out;
	if ((j->rc = spa_engine_forward(c, j->prompt, 8, NULL)) < 0)
		goto out;
	for (int i = 0; i < NGEN; i++) {
		spa_engine_head_argmax(c, NULL, &j->out[i]);
		if ((j->rc = spa_engine_forward(c, &j->out[i], 1, NULL)) < 0)
			goto out;
	}
out:
	spa_context_destroy(c);
	spa_pool_destroy(pool);
	return NULL;
}

/* n threads at once, each its own context (and pool), over model m: each gives the tokens of
 * the same prompt generated alone on one thread. */
static void threads_agree(const struct spa_model *m, int n)
{
	struct gen_job jobs[4];
	pthread_t tid[4];
	cr_assert(n <= 4);
	for (int i = 0; i < n; i++) {
		jobs[i] = (struct gen_job){ .m = m, .threads = i % 2 ? 2 : 0 };
		prompt(jobs[i].prompt, 8, m->hp.n_vocab, 20u + (uint32_t)i);
	}
	for (int i = 0; i < n; i++)
		cr_assert_eq(pthread_create(&tid[i], NULL, gen_thread, &jobs[i]), 0);
	for (int i = 0; i < n; i++)
		pthread_join(tid[i], NULL);
	for (int i = 0; i < n; i++) {
		int32_t ref[NGEN];
		cr_assert_eq(jobs[i].rc, 0, "thread %d failed: %d", i, jobs[i].rc);
		generate_alone(m, NULL, jobs[i].prompt, 8, NGEN, ref);
		cr_assert_eq(memcmp(ref, jobs[i].out, sizeof ref), 0,
			     "thread %d's tokens differ from the same prompt's alone", i);
	}
}

Test(context, many_contexts_on_one_model_from_several_threads_give_their_own_tokens)
{
	struct spa_model *m = load(tu_tiny_model());
	threads_agree(m, 4);
	spa_model_destroy(m);
}

Test(context, contexts_over_a_streamed_model_take_turns_from_several_threads)
{
	struct spa_model *m = NULL;
	struct spa_errbuf err = {{0}};
	setenv("SPA_STREAM_PIECE_KIB", "16", 1); /* many pieces a matrix */
	cr_assert_eq(spa_model_load_budget(&m, tu_tiny_model(), 2u << 20, false, &err), 0, "%s",
		     err.msg);
	unsetenv("SPA_STREAM_PIECE_KIB");
	cr_assert_not_null(m->stream, "the tiny model was not streamed under 2 MiB");
	struct spa_model *whole = load(tu_tiny_model());
	/* the streamed model's tokens alone equal the whole model's, then from 3 threads */
	int32_t p8[8], a[NGEN], b[NGEN];
	prompt(p8, 8, m->hp.n_vocab, 5);
	generate_alone(whole, NULL, p8, 8, NGEN, a);
	generate_alone(m, NULL, p8, 8, NGEN, b);
	cr_assert_eq(memcmp(a, b, sizeof a), 0);
	threads_agree(m, 3);
	/* and a batched step over it reads the stream once for all its sequences */
	struct spa_backend *be = NULL;
	cr_assert_eq(spa_backend_create(&be, SPA_BACKEND_CPU, NULL, NULL), 0);
	struct spa_context *c[2];
	struct spa_wstream_stats s0, s1;
	for (int i = 0; i < 2; i++)
		cr_assert_eq(spa_context_create(&c[i], m, be, 16, 8), 0);
	struct spa_batch *bt = NULL;
	cr_assert_eq(spa_batch_create(&bt, m, be, 16, 2), 0);
	struct spa_seq seqs[2] = { { c[0], p8, 8, NULL }, { c[1], p8, 3, NULL } };
	spa_wstream_stats(m, &s0);
	cr_assert_eq(spa_engine_step(bt, seqs, 2), 0);
	spa_wstream_stats(m, &s1);
	cr_assert_eq(s1.n_forward, s0.n_forward + 1);
	cr_assert_eq(s1.bytes_read - s0.bytes_read,
		     s1.bytes_per_token - spa_wstream_embd_row_size(m->stream) +
			     11 * spa_wstream_embd_row_size(m->stream),
		     "one token's weights and 11 embedding rows");
	int32_t t0;
	spa_engine_head_argmax(c[0], NULL, &t0);
	cr_assert_eq(t0, a[0]);
	spa_batch_destroy(bt);
	for (int i = 0; i < 2; i++)
		spa_context_destroy(c[i]);
	spa_backend_destroy(be);
	spa_model_destroy(whole);
	spa_model_destroy(m);
}

Test(context, an_absent_backend_is_a_clear_error)
{
	struct spa_backend *be = NULL;
	struct spa_errbuf err = {{0}};
	enum spa_backend_kind k;
	cr_assert_eq(spa_backend_parse("tpu", &k, &err), -SPA_EUSAGE);
	cr_assert(strstr(err.msg, "cpu, cuda, auto"), "%s", err.msg);
	cr_assert_eq(spa_backend_parse("auto", &k, NULL), 0);
	cr_assert_eq(spa_backend_create(&be, k, NULL, &err), 0);
	cr_assert_str_eq(spa_backend_name(be), spa_backend_built(SPA_BACKEND_CUDA) ? "cuda" : "cpu");
	spa_backend_destroy(be);
	if (spa_backend_built(SPA_BACKEND_CUDA)) {
		cr_skip_test("this build has CUDA: the refusal of an absent one is not testable here");
		return;
	}
	cr_assert_eq(spa_backend_create(&be, SPA_BACKEND_CUDA, NULL, &err), -SPA_EUNSUPPORTED);
	cr_assert_null(be);
	cr_assert(strstr(err.msg, "--backend cpu"), "the message says what to do: %s", err.msg);
}
