/* spa-perplexity (runtime/cli/spa-perplexity.c) and the runner's scoring of every position
 * (spa_runner_score), checked against a naive reference written here: each chunk decoded
 * token by token by the engine alone (spa_engine_forward, spa_engine_logits), the plugin's
 * math called directly (spa_plugin_lora / _adapter as engine hooks, spa_plugin_gate and
 * spa_plugin_side_full for the side network), log-softmax in double. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

/* ---------------------------------------------------------------- inputs */

/* A text of n_words words in sentences, from a fixed seed. */
static char *make_text(uint32_t n_words, uint64_t seed)
{
	static const char *const words[] = {
		"the", "little", "cat", "sat", "on", "a", "warm", "mat", "and", "looked", "at",
		"birds", "flying", "over", "green", "hills", "while", "children", "played", "near",
		"river", "with", "their", "friends", "until", "evening", "came", "slowly", "home",
		"tree", "house", "said", "mother", "because", "it", "was", "time", "to", "eat",
		"bread", "1984", "42", "don't", "we'll", "naïve", "café", "x = y + 1;",
	};
	const size_t nw = sizeof words / sizeof words[0];
	struct spa_rng r;
	spa_rng_seed(&r, seed);
	size_t cap = (size_t)n_words * 16 + 1, n = 0;
	char *s = malloc(cap);
	cr_assert(s);
	for (uint32_t i = 0; i < n_words; i++) {
		const char *w = words[spa_rng_next(&r) % nw];
		n += (size_t)snprintf(s + n, cap - n, "%s%s", w, i % 11 == 10 ? ".\n" : " ");
	}
	return s;
}

static void write_text(const char *path, const char *text)
{
	tu_write_file(path, text, strlen(text));
}

/* ---------------------------------------------------------------- the reference */

struct hook_ctx {
	const struct spa_plugin *p;
	float scratch[256];
};

static int ref_lora(void *ctx, uint32_t layer, uint32_t n_tok, const float *x, float *dq,
		    float *dv)
{
	struct hook_ctx *h = ctx;
	spa_plugin_lora(h->p, layer, n_tok, x, dq, dv, h->scratch);
	return 0;
}

static int ref_adapter(void *ctx, uint32_t layer, uint32_t which, uint32_t n_tok,
		       const float *x, float *delta)
{
	struct hook_ctx *h = ctx;
	spa_plugin_adapter(h->p, layer, which, n_tok, x, delta, h->scratch);
	return 0;
}

/* log-softmax of logits[n] at tok, in double. */
static double lsm(const float *logits, uint32_t n, int32_t tok)
{
	double max = logits[0], sum = 0;
	for (uint32_t i = 1; i < n; i++)
		max = fmax(max, logits[i]);
	for (uint32_t i = 0; i < n; i++)
		sum += exp((double)logits[i] - max);
	return (double)logits[tok] - max - log(sum);
}

struct ref_result {
	double ppl[16];   /* the running estimate after each chunk */
	double final, err;
	uint32_t n_chunks, n_side;
};

/* llama-perplexity's method over the text's tokens, decoding each chunk token by token. */
static void ref_perplexity(const char *model, const char *text, uint32_t C, uint32_t max_chunks,
			   const struct spa_plugin *p, enum spa_method method, enum spa_merge merge,
			   struct ref_result *out)
{
	struct spa_model *m = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load(&m, model, false, &err), 0, "%s", err.msg);
	const uint32_t H = m->hp.n_embd, L = m->hp.n_layers, V = m->hp.n_vocab;
	const size_t len = strlen(text);
	int32_t *toks = malloc((len + 2) * sizeof *toks);
	uint32_t n = 0;
	cr_assert_eq(spa_tokenizer_encode(m->tok, text, SPA_TOK_ADD_SPECIAL, toks,
					  (uint32_t)len + 2, &n), 0);
	struct spa_context *c = NULL;
	cr_assert_eq(spa_context_create(&c, m, NULL, C, 1), 0);
	struct hook_ctx hc = { .p = p };
	const struct spa_engine_hooks hooks = {
		.ctx = &hc,
		.lora = method == SPA_METHOD_LORA ? ref_lora : NULL,
		.adapter = method == SPA_METHOD_ADAPTER ? ref_adapter : NULL,
	};
	float *lg = malloc(V * sizeof(float)), *z = malloc(H * sizeof(float));
	float *g = malloc(H * sizeof(float));
	float *scratch = malloc(((L + 1) * 64 + 64 + H) * sizeof(float));
	uint32_t n_chunks = n / C;
	if (n_chunks > max_chunks)
		n_chunks = max_chunks;
	double nll = 0, nll2 = 0;
	uint64_t count = 0;
	memset(out, 0, sizeof *out);
	for (uint32_t k = 0; k < n_chunks; k++) {
		int32_t *ch = toks + (size_t)k * C;
		spa_context_reset(c);
		for (uint32_t j = 0; j + 1 < C; j++) {
			int32_t t = ch[j];
			if (j == 0 && spa_tokenizer_add_bos(m->tok))
				t = spa_tokenizer_bos(m->tok);
			cr_assert_eq(spa_engine_forward(c, &t, 1, method == SPA_METHOD_LORA ||
							method == SPA_METHOD_ADAPTER ? &hooks
										     : NULL), 0);
			if (j < C / 2)
				continue;
			const float *f = spa_context_final(c);
			const bool side = method == SPA_METHOD_SPA || method == SPA_METHOD_LST;
			const int sigma = !side ? 0 : method == SPA_METHOD_LST ? 1
						: spa_plugin_gate(p, f, NULL);
			memcpy(z, f, H * sizeof(float));
			if (sigma) {
				spa_plugin_side_full(p, spa_context_resid(c), g, scratch);
				for (uint32_t i = 0; i < H; i++)
					z[i] = merge == SPA_MERGE_ADD ? f[i] + g[i] : g[i];
				out->n_side++;
			}
			spa_engine_logits(c, z, lg);
			const double l = lsm(lg, V, ch[j + 1]);
			nll -= l;
			nll2 += l * l;
			count++;
		}
		out->ppl[k] = exp(nll / (double)count);
	}
	out->n_chunks = n_chunks;
	const double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
	out->final = exp(mean);
	out->err = sqrt(var / (double)(count - 1)) * out->final;
	free(lg), free(z), free(g), free(scratch), free(toks);
	spa_context_destroy(c);
	spa_model_destroy(m);
}

/* spa-perplexity's stdout: the running estimates and the final line. */
static void parse(const char *out, struct ref_result *r)
{
	memset(r, 0, sizeof *r);
	const char *s = out;
	unsigned k;
	double v;
	int used;
	while (sscanf(s, "[%u]%lf,%n", &k, &v, &used) == 2) {
		cr_assert_eq(k, r->n_chunks + 1, "chunk numbers: %s", out);
		r->ppl[r->n_chunks++] = v;
		s += used;
	}
	const char *f = strstr(out, "Final estimate: PPL = ");
	cr_assert(f, "no final estimate in: %s", out);
	cr_assert_eq(sscanf(f, "Final estimate: PPL = %lf +/- %lf", &r->final, &r->err), 2, "%s",
		     f);
}

static void near(double got, double want, const char *what)
{
	cr_assert(fabs(got - want) <= 1e-5 * fabs(want), "%s: %.6f, the reference %.6f", what,
		  got, want);
}

static void agree(const struct ref_result *got, const struct ref_result *want)
{
	cr_assert_eq(got->n_chunks, want->n_chunks);
	for (uint32_t k = 0; k < want->n_chunks; k++)
		near(got->ppl[k], want->ppl[k], "running estimate");
	near(got->final, want->final, "final PPL");
	near(got->err, want->err, "its error");
}

/* spa-perplexity on model and text with extra options; its stdout parsed into r. */
static void run_ppl(const char *model, const char *text_path, const char *opts,
		    struct ref_result *r, char *err_out, size_t err_cap)
{
	char cmd[2048], out[8192];
	snprintf(cmd, sizeof cmd, "%s -m %s -f %s %s 2>%s.err", tu_program("spa-perplexity"),
		 model, text_path, opts, text_path);
	int st = tu_run(cmd, out, sizeof out, 0);
	char ep[1100];
	snprintf(ep, sizeof ep, "%s.err", text_path);
	char *e = tu_read_file(ep, NULL);
	cr_assert_eq(st, 0, "%s: status %d: %s", cmd, st, e ? e : "");
	if (err_out)
		snprintf(err_out, err_cap, "%s", e ? e : "");
	free(e);
	parse(out, r);
}

/* ---------------------------------------------------------------- tests */

Test(perplexity, base_model_equals_the_naive_reference)
{
	const char *dir = tu_tmpdir();
	char text_path[256];
	snprintf(text_path, sizeof text_path, "%s/text.txt", dir);
	char *text = make_text(500, 1);
	write_text(text_path, text);
	struct ref_result want, got;
	ref_perplexity(tu_tiny_model(), text, 64, 4, NULL, SPA_METHOD_BASE, SPA_MERGE_ADD, &want);
	cr_assert_eq(want.n_chunks, 4, "the text is too short for 4 chunks");
	/* batches of 64 (the whole chunk), and of 7 */
	run_ppl(tu_tiny_model(), text_path, "-c 64 --chunks 4", &got, NULL, 0);
	agree(&got, &want);
	run_ppl(tu_tiny_model(), text_path, "-c 64 --chunks 4 -b 7 -t 2", &got, NULL, 0);
	agree(&got, &want);
	cr_log_info("tiny llama: PPL %.4f +/- %.4f over %u chunks of 64", want.final, want.err,
		    want.n_chunks);
	free(text);
}

Test(perplexity, qwen2_with_a_bpe_vocabulary_equals_the_naive_reference)
{
	/* qwen2's BPE vocabulary adds no BOS: the chunks start with their own first token */
	const char *dir = tu_tmpdir();
	char model[256], text_path[256];
	snprintf(model, sizeof model, "%s/qwen2.gguf", dir);
	snprintf(text_path, sizeof text_path, "%s/text.txt", dir);
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	hp.arch = SPA_ARCH_QWEN2;
	hp.rope_freq_scale = 0.5f;
	const struct spa_gen_tok tok = { "qwen2", false };
	const struct spa_gen_opts o = { .tok = &tok, .tied = true };
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gen_base_opts(&hp, SPA_TYPE_F16, 3, &o, model, false, &err), 0, "%s",
		     err.msg);
	char *text = make_text(400, 2);
	write_text(text_path, text);
	struct ref_result want, got;
	ref_perplexity(model, text, 48, 5, NULL, SPA_METHOD_BASE, SPA_MERGE_ADD, &want);
	cr_assert_eq(want.n_chunks, 5);
	run_ppl(model, text_path, "-c 48 --chunks 5", &got, NULL, 0);
	agree(&got, &want);
	free(text);
}

Test(perplexity, every_method_equals_the_naive_reference)
{
	const char *dir = tu_tmpdir();
	char text_path[256];
	snprintf(text_path, sizeof text_path, "%s/text.txt", dir);
	char *text = make_text(300, 3);
	write_text(text_path, text);
	static const struct {
		const char *kind, *opts;
		enum spa_method method;
		enum spa_merge merge;
	} cases[] = {
		{ "lora", "--method lora", SPA_METHOD_LORA, SPA_MERGE_ADD },
		{ "adapter", "", SPA_METHOD_ADAPTER, SPA_MERGE_ADD },
		{ "side", "", SPA_METHOD_SPA, SPA_MERGE_ADD },
		{ "side", "--method lst --merge replace -b 5", SPA_METHOD_LST, SPA_MERGE_REPLACE },
		{ "side", "--method spa --split edge-all", SPA_METHOD_SPA, SPA_MERGE_ADD },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct spa_plugin *p = NULL;
		struct spa_errbuf err = {{0}};
		const char *pp = tu_tiny_plugin(cases[i].kind);
		cr_assert_eq(spa_plugin_load(&p, pp, &err), 0, "%s", err.msg);
		struct ref_result want, got;
		ref_perplexity(tu_tiny_model(), text, 32, 3, p, cases[i].method, cases[i].merge,
			       &want);
		char opts[512], msg[2048];
		snprintf(opts, sizeof opts, "-c 32 --chunks 3 --plugin %s %s", pp, cases[i].opts);
		run_ppl(tu_tiny_model(), text_path, opts, &got, msg, sizeof msg);
		agree(&got, &want);
		if (cases[i].method == SPA_METHOD_SPA || cases[i].method == SPA_METHOD_LST) {
			/* how many scored positions took the side path: the reference's count */
			char words[128];
			snprintf(words, sizeof words, "%u of 45 scored positions took the side path",
				 want.n_side);
			cr_assert(strstr(msg, words), "expected '%s' in: %s", words, msg);
			cr_assert(cases[i].method == SPA_METHOD_LST ? want.n_side == 45
				  : want.n_side > 0 && want.n_side < 45, "side positions %u",
				  want.n_side);
		}
		spa_plugin_destroy(p);
	}
	free(text);
}

/* The rows spa_runner_score writes are what spa_runner_next picks from at each position: the
 * greedy token after prefilling the chunk up to it is the argmax of its row. */
Test(perplexity, every_scored_row_is_what_next_would_sample_from)
{
	struct spa_model *m = NULL;
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_model_load(&m, tu_tiny_model(), false, &err), 0, "%s", err.msg);
	cr_assert_eq(spa_plugin_load(&p, tu_tiny_plugin("side"), &err), 0, "%s", err.msg);
	struct spa_edge *edge = NULL;
	cr_assert_eq(spa_edge_create(&edge, p, 8), 0);
	struct spa_local_xchg lx;
	spa_local_xchg_init(&lx, edge);
	const struct spa_gen_cfg cfg = { .method = SPA_METHOD_SPA, .split = SPA_SPLIT_CLOUD_LINEAR,
					 .merge = SPA_MERGE_ADD, .sp = { .top_p = 1.0f } };
	struct spa_runner *r = NULL;
	cr_assert_eq(spa_runner_create(&r, m, p, &cfg, 24, 8, NULL, &lx.x, &err), 0, "%s",
		     err.msg);
	const uint32_t V = m->hp.n_vocab, n = 23, first = 6;
	int32_t ids[24];
	struct spa_rng rng;
	spa_rng_seed(&rng, 77);
	for (uint32_t i = 0; i < 24; i++)
		ids[i] = (int32_t)(spa_rng_next(&rng) % V);
	float *lg = malloc((size_t)(n - first) * V * sizeof(float));
	struct spa_step_stats st;
	cr_assert_eq(spa_runner_score(r, ids, n, first, lg, &st), 0);
	uint32_t side = 0;
	for (uint32_t j = first; j < n; j++) { /* a runner of its own for each prefix */
		struct spa_runner *r1 = NULL;
		struct spa_step_stats s1;
		int32_t tok;
		cr_assert_eq(spa_runner_create(&r1, m, p, &cfg, 24, 8, NULL, &lx.x, &err), 0);
		cr_assert_eq(spa_runner_prefill(r1, ids, j + 1, NULL), 0);
		cr_assert_eq(spa_runner_next(r1, &tok, &s1), 0);
		cr_assert_eq(tok, (int32_t)spa_argmax(lg + (size_t)(j - first) * V, V),
			     "position %u", j);
		side += s1.sigma;
		spa_runner_destroy(r1);
	}
	/* score after a prefill and a next: the same rows (it starts afresh) */
	int32_t tok;
	cr_assert_eq(spa_runner_prefill(r, ids, 9, NULL), 0);
	cr_assert_eq(spa_runner_next(r, &tok, NULL), 0);
	cr_assert_eq(st.sigma, side);
	cr_assert_eq(st.n_xchg, side, "one exchange per side-path position");
	cr_assert(side > 0 && side < n - first, "the gate took %u of %u", side, n - first);
	float *lg2 = malloc((size_t)(n - first) * V * sizeof(float));
	cr_assert_eq(spa_runner_score(r, ids, n, first, lg2, NULL), 0);
	cr_assert_eq(memcmp(lg, lg2, (size_t)(n - first) * V * sizeof(float)), 0);
	/* bad calls */
	cr_assert_eq(spa_runner_score(r, ids, 25, 0, lg2, NULL), -SPA_EUSAGE, "above n_ctx");
	cr_assert_eq(spa_runner_score(r, ids, 5, 5, lg2, NULL), -SPA_EUSAGE, "first >= n");
	cr_assert_eq(spa_runner_next(r, &tok, NULL), -SPA_EUSAGE, "no prefill after score");
	free(lg), free(lg2);
	spa_runner_destroy(r);
	spa_edge_destroy(edge);
	spa_plugin_destroy(p);
	spa_model_destroy(m);
}

/* Bad inputs: exit status 2 and words that say what to give. */
static void refused(const char *args, const char *words)
{
	char cmd[2048], out[8192];
	snprintf(cmd, sizeof cmd, "%s %s", tu_program("spa-perplexity"), args);
	int st = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(st, 2, "%s: status %d: %s", args, st, out);
	cr_assert(strstr(out, words), "%s: expected '%s' in: %s", args, words, out);
}

Test(perplexity, bad_inputs_are_refused_with_what_to_give)
{
	const char *dir = tu_tmpdir(), *model = tu_tiny_model();
	char shorter[256], text[256], empty[256], nul[256], other[256], args[2048];
	snprintf(shorter, sizeof shorter, "%s/short.txt", dir);
	snprintf(text, sizeof text, "%s/text.txt", dir);
	snprintf(empty, sizeof empty, "%s/empty.txt", dir);
	snprintf(nul, sizeof nul, "%s/nul.txt", dir);
	char *t = make_text(20, 4); /* fewer than 128 tokens */
	write_text(shorter, t);
	free(t);
	t = make_text(400, 5);
	write_text(text, t);
	free(t);
	write_text(empty, "");
	tu_write_file(nul, "one\0two", 7);

	snprintf(args, sizeof args, "-m %s -f %s -c 64", model, shorter);
	refused(args, "at least 128 (two chunks): give a longer text or a smaller -c");
	snprintf(args, sizeof args, "-m %s -f %s -c 64", model, empty);
	refused(args, "tokenizes to only 1 tokens");
	snprintf(args, sizeof args, "-m %s -f %s -c 63", model, text);
	refused(args, "-c 63: give an even chunk size");
	snprintf(args, sizeof args, "-m %s -f %s -c 1024", model, text);
	refused(args, "-c 1024 is more than the 512 positions the model was trained on; give "
		"-c 512 or less");
	snprintf(args, sizeof args, "-m %s -f %s -c 2", model, text);
	refused(args, "out of range");
	snprintf(args, sizeof args, "-m %s -f %s", model, nul);
	refused(args, "a NUL byte at offset 3");
	snprintf(args, sizeof args, "-m %s -f %s/none.txt", model, dir);
	refused(args, "none.txt: No such file");
	snprintf(args, sizeof args, "-m %s", model);
	refused(args, "no text: give -f TEXT");
	snprintf(args, sizeof args, "-m %s -f %s -c 64 --method lst", model, text);
	refused(args, "method lst needs --plugin");
	snprintf(args, sizeof args, "-m %s -f %s -c 64 --plugin %s --method lora", model, text,
		 tu_tiny_plugin("side"));
	refused(args, "method lora needs a lora plugin");

	/* a plugin made for another base */
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	snprintf(other, sizeof other, "%s/other.gguf", dir);
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 9, other, false, &err), 0, "%s", err.msg);
	snprintf(args, sizeof args, "-m %s -f %s -c 64 --plugin %s", other, text,
		 tu_tiny_plugin("lora"));
	refused(args, "fingerprint");
}
