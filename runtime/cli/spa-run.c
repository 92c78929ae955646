/* spa-run: base model + plugin in one process, no link: the reference that cloud + edge must
 * reproduce token for token. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "spa/spa.h"

static void usage(void)
{
	printf("usage: spa-run -m BASE.gguf [--plugin PLUGIN.gguf --method M] [options]\n"
	       "Generate with the base model alone or with a plugin, in one process.\n\n"
	       "  -m, --model FILE      base model (GGUF, llama architecture)\n"
	       "  --plugin FILE         personal plugin made for that base (spa-gen plugin)\n"
	       "  -t, --threads N       compute threads (default: one per core; one fewer when\n"
	       "                        --mem-budget streams, leaving a core to the reads)\n"
	       "  --mem-budget BYTES    keep at most this much of the model in memory; the rest of\n"
	       "                        each block matrix is streamed from disk per token (default\n"
	       "                        0: all in memory; leave a core for the reads with -t)\n"
	       CLI_BACKEND_HELP
	       "%s", cli_gen_help);
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	struct cli_gen g;
	cli_gen_defaults(&g);
	const char *model_path = NULL, *plugin_path = NULL, *backend = NULL;
	int threads = 0;
	uint64_t mem_budget = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (cli_gen_option(&g, argc, argv, &i))
			continue;
		if (!strcmp(a, "-m") || !strcmp(a, "--model"))
			model_path = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--mem-budget"))
			mem_budget = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 0, INT64_MAX);
		else if (!strcmp(a, "--plugin"))
			plugin_path = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--backend"))
			backend = cli_value(argc, argv, &i);
		else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
			threads = (int)cli_int(a, cli_value(argc, argv, &i), 1, 1024);
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	if (!model_path)
		cli_die(2, "no model: give -m BASE.gguf (make one with `spa-gen base -o BASE.gguf`)");

	struct spa_errbuf err = {{0}};
	struct spa_model *m = NULL;
	struct spa_plugin *p = NULL;
	struct spa_pool *pool = NULL;
	struct spa_backend *be = NULL;
	struct spa_edge *edge = NULL;
	struct spa_runner *run = NULL;
	int32_t *ids = NULL;
	uint64_t *steps = NULL;
	int status = 1, rc;
	if ((rc = mem_budget ? spa_model_load_budget(&m, model_path, mem_budget, true, &err)
				: spa_model_load(&m, model_path, true, &err)) < 0)
		cli_die(1, "%s", err.msg);
	if (plugin_path) {
		if ((rc = spa_plugin_load(&p, plugin_path, &err)) < 0) {
			fprintf(stderr, "spa-run: %s\n", err.msg);
			goto out;
		}
		if ((rc = spa_plugin_check_base(p, m, &err)) < 0) {
			fprintf(stderr, "spa-run: %s\n", err.msg);
			goto out;
		}
		if (!g.have_method)
			g.cfg.method = p->kind == SPA_PLUGIN_SIDE ? SPA_METHOD_SPA
				     : p->kind == SPA_PLUGIN_LORA ? SPA_METHOD_LORA
								  : SPA_METHOD_ADAPTER;
		if (g.cfg.method != SPA_METHOD_BASE &&
		    spa_method_plugin_kind(g.cfg.method) != (int)p->kind) {
			fprintf(stderr, "spa-run: method %s needs a %s plugin, %s is a %s plugin\n",
				spa_method_name(g.cfg.method),
				spa_plugin_kind_name(spa_method_plugin_kind(g.cfg.method)),
				plugin_path, spa_plugin_kind_name(p->kind));
			goto out;
		}
	} else if (g.cfg.method != SPA_METHOD_BASE) {
		fprintf(stderr, "spa-run: method %s needs --plugin\n", spa_method_name(g.cfg.method));
		goto out;
	}
	if (!threads)
		threads = spa_engine_default_threads(m);
	if ((rc = spa_pool_create(&pool, threads, NULL)) < 0) {
		fprintf(stderr, "spa-run: cannot start %d threads: %s\n", threads, spa_strerror(rc));
		goto out;
	}
	be = cli_backend(backend, pool);

	uint32_t cap = m->hp.n_ctx, n_prompt = 0;
	ids = malloc(sizeof *ids * cap);
	if (!ids)
		goto out;
	if ((rc = spa_tokenizer_encode(m->tok, g.prompt, SPA_TOK_ADD_SPECIAL, ids, cap,
				       &n_prompt)) == 0 && n_prompt == 0) {
		fprintf(stderr, "spa-run: the prompt gives no tokens (the model adds no BOS): give "
			"a non-empty prompt with -p\n");
		goto out;
	}
	if (rc < 0 ||
	    (uint64_t)n_prompt + g.n_gen > m->hp.n_ctx) {
		fprintf(stderr, "spa-run: prompt (%u tokens) + %u tokens exceed the context of %u\n",
			n_prompt, g.n_gen, m->hp.n_ctx);
		goto out;
	}
	struct spa_local_xchg lx;
	const struct spa_xchg *x = NULL;
	if (p) {
		if ((rc = spa_edge_create(&edge, p, 64)) < 0)
			goto out;
		spa_local_xchg_init(&lx, edge);
		x = &lx.x;
	}
	if ((rc = spa_runner_create(&run, m, p, &g.cfg, n_prompt + g.n_gen, 64, be, x, &err)) <
	    0) {
		fprintf(stderr, "spa-run: %s\n", err.msg);
		goto out;
	}
	struct spa_gen_stats s = {.n_prompt = n_prompt, .n_layers = m->hp.n_layers,
				  .base_params = m->n_params, .plugin_params = p ? p->n_params : 0};
	steps = calloc(g.n_gen ? g.n_gen : 1, sizeof *steps);
	s.step_ns = steps;
	struct spa_step_stats st;
	if ((rc = spa_runner_prefill(run, ids, n_prompt, &st)) < 0) {
		if (*spa_runner_error(run))
			fprintf(stderr, "spa-run: prefill: %s\n", spa_runner_error(run));
		else
			fprintf(stderr, "spa-run: prefill: %s %s\n", spa_strerror(rc),
				x ? lx.err.msg : "");
		goto out;
	}
	s.prefill_ns = st.wall_ns;
	s.prefill_xchg = st.n_xchg;
	struct cli_printer pr = {.tok = m->tok, .ids = g.ids, .prev = ids[n_prompt - 1]};
	if (!g.ids)
		fputs(g.prompt, stdout);
	for (uint32_t i = 0; i < g.n_gen; i++) {
		int32_t tok;
		if ((rc = spa_runner_next(run, &tok, &st)) < 0) {
			if (*spa_runner_error(run))
				fprintf(stderr, "\nspa-run: token %u: %s\n", i, spa_runner_error(run));
			else
				fprintf(stderr, "\nspa-run: token %u: %s %s\n", i, spa_strerror(rc),
					x ? lx.err.msg : "");
			goto out;
		}
		steps[i] = st.wall_ns;
		s.wall_ns += st.wall_ns;
		s.xchg_ns += st.xchg_ns;
		s.edge_ns += st.edge_ns;
		s.n_xchg += st.n_xchg;
		s.n_side += st.sigma;
		cli_print_token(&pr, tok);
	}
	s.n_tokens = g.n_gen;
	putchar('\n');
	fflush(stdout);
	cli_report(&g, &s, s.wall_ns, NULL, "none", g.stats_json);
	status = 0;
out:
	free(steps);
	free(ids);
	spa_runner_destroy(run);
	spa_edge_destroy(edge);
	spa_backend_destroy(be);
	spa_pool_destroy(pool);
	spa_plugin_destroy(p);
	spa_model_destroy(m);
	return status;
}
