/* spa-edge: the user's device. Holds the plugin, the tokenizer and the prompt; asks a spa-cloud
 * for the base model's work and answers its requests. Needs no base model file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "spa/spa.h"

static void usage(void)
{
	printf("usage: spa-edge --link URI --plugin PLUGIN.gguf --method M -p PROMPT -n N [options]\n"
	       "Generate text with a personal plugin, the base model running in a spa-cloud.\n\n"
	       "  --link URI            shm:/NAME, tcp://HOST:PORT, udp://HOST:PORT, memif:SOCKET or\n"
	       "                        dpdk:PORTSPEC of the cloud (docs/dpdk.md)\n"
	       "  --plugin FILE         personal plugin (spa-gen plugin); carries the tokenizer\n"
	       "  --cpu N               pin the edge's compute thread to CPU N (hwloc; default: the\n"
	       "                        last CPU)\n"
	       "  --net-delay-us US     emulated one-way link delay added to every message received\n"
	       "  --dead-ms MS          a peer heard from not at all for MS while waiting for it is\n"
	       "                        dead: the session ends (default 90, so that a dead peer\n"
	       "                        is noticed within 100 ms; 1000 on this host, where the\n"
	       "                        link itself says when the peer dies; 0: off)\n"
	       "  --eal \"ARGS\"         DPDK EAL arguments for a dpdk: link (DPDK's conventions)\n"
	       "  --timeout S           longest wait for the cloud (connect and each message; "
	       "default 60)\n"
	       "%s%s", cli_gen_help, cli_auth_help_edge);
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	struct cli_gen g;
	cli_gen_defaults(&g);
	struct spa_edge_opts o = {.timeout_ns = 60000000000ll};
	const char *plugin_path = NULL;
	int cpu = -1;
	struct cli_auth auth = {0};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (cli_gen_option(&g, argc, argv, &i) || cli_auth_option(&auth, argc, argv, &i))
			continue;
		if (!strcmp(a, "--link"))
			o.uri = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--plugin"))
			plugin_path = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--cpu"))
			cpu = cli_cpu(a, cli_value(argc, argv, &i));
		else if (!strcmp(a, "--eal"))
			o.link.eal = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--net-delay-us"))
			o.link.delay_ns = cli_int(a, cli_value(argc, argv, &i), 0, 10000000) * 1000;
		else if (!strcmp(a, "--dead-ms")) {
			int64_t ms = cli_int(a, cli_value(argc, argv, &i), 0, 3600000);
			o.link.dead_ns = ms ? ms * 1000000 : -1;
		}
		else if (!strcmp(a, "--timeout"))
			o.timeout_ns = (int64_t)(cli_float(a, cli_value(argc, argv, &i), 0.001, 86400) *
						 1e9);
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	if (!o.uri)
		cli_die(2, "no link: give --link shm:/NAME or --link tcp://HOST:PORT");
	if (!plugin_path)
		cli_die(2, "no plugin: give --plugin PLUGIN.gguf (make one with spa-gen plugin)");
	cli_auth_apply(&auth, &o.link, false);

	struct spa_errbuf err = {{0}};
	struct spa_plugin *p = NULL;
	if (spa_plugin_load(&p, plugin_path, &err) < 0)
		cli_die(1, "%s", err.msg);
	if (!g.have_method)
		g.cfg.method = p->kind == SPA_PLUGIN_SIDE ? SPA_METHOD_SPA
			     : p->kind == SPA_PLUGIN_LORA ? SPA_METHOD_LORA : SPA_METHOD_ADAPTER;
	/* The compute thread is always pinned: by default to the last CPU, away from a cloud's
	 * pool, which starts at CPU 0 when both run on one host. */
	if (cpu < 0)
		cpu = spa_pin_n_pus() > 0 ? spa_pin_n_pus() - 1 : 0;
	{
		int rc = spa_pin_thread(cpu);
		if (rc < 0)
			cli_die(1, "cannot pin to CPU %d: %s", cpu, spa_strerror(rc));
	}
	char where[128];
	spa_pin_describe(where, sizeof where);
	fprintf(stderr, "spa-edge: plugin %s (%s, rank %u, for base %s), compute thread on %s\n",
		plugin_path, spa_plugin_kind_name(p->kind), p->rank, p->base_fingerprint, where);

	uint32_t cap = 1u << 16, n_prompt = 0;
	int32_t *ids = malloc(sizeof *ids * cap);
	if (!ids || spa_tokenizer_encode(p->tok, g.prompt, SPA_TOK_ADD_SPECIAL, ids, cap,
				     &n_prompt) < 0)
		cli_die(1, "cannot tokenize the prompt (longer than %u tokens?)", cap);
	if (n_prompt == 0)
		cli_die(2, "the prompt gives no tokens (the model adds no BOS): give a non-empty "
			"prompt with -p");

	struct cli_printer pr = {.tok = p->tok, .ids = g.ids, .prev = ids[n_prompt - 1]};
	o.cfg = g.cfg;
	o.n_gen = g.n_gen;
	o.on_token = cli_print_token;
	o.ctx = &pr;
	if (!g.ids)
		fputs(g.prompt, stdout);
	fflush(stdout);
	struct spa_edge_result res;
	int rc = spa_edge_run(p, ids, n_prompt, &o, &res, &err);
	putchar('\n');
	fflush(stdout);
	if (rc < 0) {
		fprintf(stderr, "spa-edge: %s\n", err.msg);
		free(ids);
		spa_plugin_destroy(p);
		return 1;
	}
	fprintf(stderr, "spa-edge: session %u, edge compute %.2f ms, first token after %.2f ms, "
		"%.1f tok/s end to end\n", res.session, res.edge_compute_ns / 1e6,
		res.first_token_ns / 1e6, res.n_tokens / (res.wall_ns / 1e9));
	char scheme[16];
	snprintf(scheme, sizeof scheme, "%.*s", (int)strcspn(o.uri, ":"), o.uri);
	rc = cli_report(&g, &res.cloud, res.wall_ns, &res.link, scheme, g.stats_json);
	free(res.tokens);
	free(res.cloud.step_ns);
	free(ids);
	spa_plugin_destroy(p);
	return rc < 0 ? 1 : 0;
}
