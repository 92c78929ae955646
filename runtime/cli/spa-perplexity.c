/* spa-perplexity: the perplexity of a text under a base model, or under a method with its
 * plugin, by llama.cpp's llama-perplexity method (examples/perplexity/perplexity.cpp):
 *
 *   the text is tokenized whole (with the BOS the vocabulary asks for), cut into chunks of N
 *   tokens (no overlap, the tail dropped), each chunk run from position 0 with its first
 *   token replaced by BOS (when the vocabulary adds one), and the tokens of its second half
 *   scored: the positions first = N/2 .. N-2 predict the tokens N/2+1 .. N-1. The running
 *   estimate exp(mean NLL) is printed after each chunk as "[k]PPL,", then
 *   "Final estimate: PPL = X +/- E", E = PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count-1)).
 *
 * With --plugin the logits are the method's (spa_runner_score: the same runner code as
 * spa-run, the edge's side answered in this process). Exit status: 0 done, 1 the work failed,
 * 2 bad usage or input. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "spa/spa.h"

static void usage(void)
{
	printf("usage: spa-perplexity -m MODEL.gguf -f TEXT [-c N] [--chunks K]\n"
	       "                      [--plugin PLUGIN.gguf [--method M]] [options]\n"
	       "Perplexity of a text file, as llama.cpp's llama-perplexity computes it: chunks of N\n"
	       "tokens, each starting with BOS, the second half of each scored.\n\n"
	       "  -m, --model FILE      base model (GGUF: llama or qwen2)\n"
	       "  -f, --file TEXT       the text (UTF-8, up to 16 MiB)\n"
	       "  -c, --ctx-size N      tokens per chunk (even, 4 to the model's context; default\n"
	       "                        512)\n"
	       "  --chunks K            score the first K chunks only (default: all)\n"
	       "  --plugin FILE         a personal plugin for that base (spa-gen plugin): the\n"
	       "                        method's perplexity, computed in this process\n"
	       "  --method M            base | lora | adapter | lst | spa (default: the plugin's\n"
	       "                        kind, spa for a side plugin; lst takes the side path at\n"
	       "                        every position)\n"
	       "  --split X, --merge Y  side methods: cloud-linear | edge-all, add | replace\n"
	       "  -b, --batch N         positions per step (default: min(N, 512))\n"
	       "  -t, --threads N       compute threads (default: one per core)\n"
	       "  --mem-budget BYTES    keep at most this much of the model in memory (spa-run's)\n"
	       CLI_BACKEND_HELP);
}

/* log p(tok) from logits[n], as llama.cpp's log_softmax: the max in float, the sum of
 * expf(l - max) in double. */
static double log_softmax(const float *logits, uint32_t n, int32_t tok)
{
	float max = logits[0];
	for (uint32_t i = 1; i < n; i++)
		max = logits[i] > max ? logits[i] : max;
	double sum = 0.0;
	for (uint32_t i = 0; i < n; i++)
		sum += expf(logits[i] - max);
	return logits[tok] - max - log(sum);
}

/* The text file as a NUL-terminated string; dies saying why when it cannot be used. */
static char *read_text(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		cli_die(2, "-f %s: %s", path, strerror(errno));
	size_t cap = 1 << 16, n = 0, r;
	char *buf = malloc(cap + 1);
	while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
		n += r;
		if (n == cap) {
			char *b = realloc(buf, 2 * cap + 1);
			if (!b) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = b;
			cap *= 2;
		}
	}
	int bad = ferror(f);
	fclose(f);
	if (!buf)
		cli_die(1, "-f %s: out of memory", path);
	if (bad)
		cli_die(1, "-f %s: read error", path);
	buf[n] = 0;
	if (strlen(buf) != n)
		cli_die(2, "-f %s: a NUL byte at offset %zu: give a text file", path, strlen(buf));
	*len = n;
	return buf;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	const char *model_path = NULL, *text_path = NULL, *plugin_path = NULL, *backend = NULL;
	long long n_ctx = 512, n_chunks = -1, batch = 0;
	int threads = 0, v;
	uint64_t mem_budget = 0;
	bool have_method = false;
	struct spa_gen_cfg cfg = { .method = SPA_METHOD_BASE, .split = SPA_SPLIT_CLOUD_LINEAR,
				   .merge = SPA_MERGE_ADD, .sp = { .top_p = 1.0f } };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
			model_path = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
			text_path = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
			n_ctx = cli_int(a, cli_value(argc, argv, &i), 4, 1 << 24);
		} else if (!strcmp(a, "--chunks")) {
			n_chunks = cli_int(a, cli_value(argc, argv, &i), 1, 1 << 30);
		} else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) {
			batch = cli_int(a, cli_value(argc, argv, &i), 1, 1 << 24);
		} else if (!strcmp(a, "--plugin")) {
			plugin_path = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--method")) {
			const char *s = cli_value(argc, argv, &i);
			if ((v = spa_method_from_name(s)) < 0)
				cli_die(2, "--method: unknown method '%s' (base, lora, adapter, lst, "
					"spa)", s);
			cfg.method = (enum spa_method)v;
			have_method = true;
		} else if (!strcmp(a, "--split")) {
			const char *s = cli_value(argc, argv, &i);
			if ((v = spa_split_from_name(s)) < 0)
				cli_die(2, "--split: unknown split '%s' (cloud-linear, edge-all)", s);
			cfg.split = (enum spa_split)v;
		} else if (!strcmp(a, "--merge")) {
			const char *s = cli_value(argc, argv, &i);
			if ((v = spa_merge_from_name(s)) < 0)
				cli_die(2, "--merge: unknown merge '%s' (add, replace)", s);
			cfg.merge = (enum spa_merge)v;
		} else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
			threads = (int)cli_int(a, cli_value(argc, argv, &i), 1, 1024);
		} else if (!strcmp(a, "--mem-budget")) {
			mem_budget = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 0, INT64_MAX);
		} else if (!strcmp(a, "--backend")) {
			backend = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else {
			cli_die(2, "unknown option '%s' (see --help)", a);
		}
	}
	if (!model_path)
		cli_die(2, "no model: give -m MODEL.gguf");
	if (!text_path)
		cli_die(2, "no text: give -f TEXT (a UTF-8 file of at least two chunks of tokens)");
	if (n_ctx % 2)
		cli_die(2, "-c %lld: give an even chunk size (the second half of each chunk is "
			"scored, llama-perplexity's way)", n_ctx);
	if (!plugin_path && cfg.method != SPA_METHOD_BASE)
		cli_die(2, "method %s needs --plugin", spa_method_name(cfg.method));
	size_t text_len = 0;
	char *text = read_text(text_path, &text_len);

	struct spa_errbuf err = {{0}};
	struct spa_model *m = NULL;
	struct spa_plugin *p = NULL;
	struct spa_pool *pool = NULL;
	struct spa_backend *be = NULL;
	struct spa_edge *edge = NULL;
	struct spa_runner *run = NULL;
	int32_t *tokens = NULL;
	float *logits = NULL;
	int status = 1, rc;
	if ((rc = mem_budget ? spa_model_load_budget(&m, model_path, mem_budget, false, &err)
			     : spa_model_load(&m, model_path, false, &err)) < 0)
		cli_die(1, "%s", err.msg);
	if (n_ctx > m->hp.n_ctx || n_ctx > SPA_KV_CACHE_MAX_CTX) {
		const unsigned most = m->hp.n_ctx < SPA_KV_CACHE_MAX_CTX ? m->hp.n_ctx
									 : SPA_KV_CACHE_MAX_CTX;
		fprintf(stderr, "%s: -c %lld is more than the %u positions %s; give -c %u or less\n",
			cli_prog, n_ctx, most, most == m->hp.n_ctx ? "the model was trained on"
				: "the KV cache holds", most - most % 2);
		status = 2;
		goto out;
	}
	if (plugin_path) {
		if ((rc = spa_plugin_load(&p, plugin_path, &err)) < 0 ||
		    (rc = spa_plugin_check_base(p, m, &err)) < 0) {
			fprintf(stderr, "%s: %s\n", cli_prog, err.msg);
			status = rc == -SPA_EMISMATCH ? 2 : 1;
			goto out;
		}
		if (!have_method)
			cfg.method = p->kind == SPA_PLUGIN_SIDE ? SPA_METHOD_SPA
				   : p->kind == SPA_PLUGIN_LORA ? SPA_METHOD_LORA : SPA_METHOD_ADAPTER;
		if (cfg.method != SPA_METHOD_BASE &&
		    spa_method_plugin_kind(cfg.method) != (int)p->kind) {
			fprintf(stderr, "%s: method %s needs a %s plugin, %s is a %s plugin\n",
				cli_prog, spa_method_name(cfg.method),
				spa_plugin_kind_name(spa_method_plugin_kind(cfg.method)),
				plugin_path, spa_plugin_kind_name(p->kind));
			status = 2;
			goto out;
		}
	}

	/* the whole text, as llama.cpp's common_tokenize(text, add_special = true) */
	const double t_tok = spa_clock_s();
	const uint32_t cap = text_len + 2 < UINT32_MAX ? (uint32_t)text_len + 2 : UINT32_MAX;
	uint32_t n_tok = 0;
	if (!(tokens = malloc(sizeof *tokens * cap)))
		goto out;
	rc = spa_tokenizer_encode(m->tok, text, SPA_TOK_ADD_SPECIAL, tokens, cap, &n_tok);
	if (rc == -SPA_ETOOBIG) {
		fprintf(stderr, "%s: %s: %zu bytes, more than the tokenizer takes at once (16 MiB); "
			"give a shorter text\n", cli_prog, text_path, text_len);
		status = 2;
		goto out;
	}
	if (rc < 0) {
		fprintf(stderr, "%s: %s: cannot tokenize: %s\n", cli_prog, text_path,
			spa_strerror(rc));
		goto out;
	}
	fprintf(stderr, "%s: %s: %u tokens, tokenized in %.0f ms\n", cli_prog, text_path, n_tok,
		(spa_clock_s() - t_tok) * 1e3);
	if ((uint64_t)n_tok < 2 * (uint64_t)n_ctx) {
		fprintf(stderr, "%s: %s tokenizes to only %u tokens; a context of %lld needs at "
			"least %lld (two chunks): give a longer text or a smaller -c\n", cli_prog,
			text_path, n_tok, n_ctx, 2 * n_ctx);
		status = 2;
		goto out;
	}
	const uint32_t C = (uint32_t)n_ctx, first = C / 2;
	uint32_t n_chunk = n_tok / C;
	if (n_chunks > 0 && (uint64_t)n_chunks < n_chunk)
		n_chunk = (uint32_t)n_chunks;
	const uint32_t B = batch ? (uint32_t)(batch < C ? batch : C) : C < 512 ? C : 512;

	if (!threads)
		threads = spa_engine_default_threads(m);
	if ((rc = spa_pool_create(&pool, threads, NULL)) < 0) {
		fprintf(stderr, "%s: cannot start %d threads: %s\n", cli_prog, threads,
			spa_strerror(rc));
		goto out;
	}
	be = cli_backend(backend, pool);
	struct spa_local_xchg lx;
	const struct spa_xchg *x = NULL;
	if (p) {
		if ((rc = spa_edge_create(&edge, p, B)) < 0)
			goto out;
		spa_local_xchg_init(&lx, edge);
		x = &lx.x;
	}
	if ((rc = spa_runner_create(&run, m, p, &cfg, C, B, be, x, &err)) < 0) {
		fprintf(stderr, "%s: %s\n", cli_prog, err.msg);
		goto out;
	}
	const uint32_t V = m->hp.n_vocab, n_scored = C - 1 - first;
	if (!(logits = malloc(sizeof *logits * (size_t)n_scored * V))) {
		fprintf(stderr, "%s: no memory for %u x %u logits\n", cli_prog, n_scored, V);
		goto out;
	}
	const bool add_bos = spa_tokenizer_add_bos(m->tok);
	fprintf(stderr, "%s: calculating perplexity over %u chunks, n_ctx=%u, batch_size=%u, "
		"method %s\n", cli_prog, n_chunk, C, B, spa_method_name(cfg.method));

	double nll = 0.0, nll2 = 0.0, t_pass = 0.0;
	uint64_t count = 0, n_side = 0, n_xchg = 0;
	for (uint32_t i = 0; i < n_chunk; i++) {
		int32_t *chunk = tokens + (size_t)i * C;
		const int32_t keep = chunk[0];
		if (add_bos) /* BOS at each chunk's start, as llama.cpp (restored after) */
			chunk[0] = spa_tokenizer_bos(m->tok);
		struct spa_step_stats st;
		const double t0 = spa_clock_s();
		/* positions 0..C-2 run; first..C-2 give the logits that are scored */
		rc = spa_runner_score(run, chunk, C - 1, first, logits, &st);
		chunk[0] = keep;
		if (rc < 0) {
			fprintf(stderr, "\n%s: chunk %u: %s %s\n", cli_prog, i + 1,
				*spa_runner_error(run) ? spa_runner_error(run) : spa_strerror(rc),
				x ? lx.err.msg : "");
			goto out;
		}
		if (i == 0) {
			t_pass = spa_clock_s() - t0;
			fprintf(stderr, "%s: %.2f seconds per pass - ETA %.2f minutes\n", cli_prog,
				t_pass, t_pass * n_chunk / 60.0);
		}
		n_side += st.sigma;
		n_xchg += st.n_xchg;
		for (uint32_t j = 0; j < n_scored; j++) {
			const double lp = log_softmax(logits + (size_t)j * V, V,
						      chunk[first + j + 1]);
			nll += -lp;
			nll2 += lp * lp;
		}
		count += n_scored;
		printf("[%u]%.4lf,", i + 1, exp(nll / (double)count));
		fflush(stdout);
	}
	printf("\n");
	nll2 /= (double)count;
	nll /= (double)count;
	const double ppl = exp(nll);
	nll2 -= nll * nll;
	if (nll2 > 0)
		printf("Final estimate: PPL = %.4lf +/- %.5lf\n", ppl,
		       sqrt(nll2 / (double)(count - 1)) * ppl);
	else
		printf("Final estimate: PPL = %.4lf (no spread: every scored token had the same "
		       "probability)\n", ppl);
	fflush(stdout);
	if (cfg.method == SPA_METHOD_SPA || cfg.method == SPA_METHOD_LST)
		fprintf(stderr, "%s: method %s: %llu exchanges with the edge; %llu of %llu scored "
			"positions took the side path\n", cli_prog, spa_method_name(cfg.method),
			(unsigned long long)n_xchg, (unsigned long long)n_side,
			(unsigned long long)count);
	else if (p)
		fprintf(stderr, "%s: method %s: %llu exchanges with the edge (one per %s and "
			"batch)\n", cli_prog, spa_method_name(cfg.method),
			(unsigned long long)n_xchg,
			cfg.method == SPA_METHOD_LORA ? "block" : "sublayer");
	status = 0;
out:
	free(logits);
	free(tokens);
	free(text);
	spa_runner_destroy(run);
	spa_edge_destroy(edge);
	spa_backend_destroy(be);
	spa_pool_destroy(pool);
	spa_plugin_destroy(p);
	spa_model_destroy(m);
	return status;
}
