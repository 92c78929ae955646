/* spa-cloud: serves the frozen base model to edges over a link, one session after another. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "spa/spa.h"

static void usage(void)
{
	printf("usage: spa-cloud -m BASE.gguf --link URI [options]\n"
	       "Serve the base model to spa-edge sessions, one after another.\n\n"
	       "  -m, --model FILE      base model (GGUF, llama architecture)\n"
	       "  --link URI            shm:/NAME (same host), tcp://HOST:PORT, udp://HOST:PORT (listen\n"
	       "                        address), memif:SOCKET or dpdk:PORTSPEC (docs/dpdk.md)\n"
	       "  -t, --threads N       compute threads (default: one per core; one fewer when\n"
	       "                        --mem-budget streams, leaving a core to the reads)\n"
	       "  --cpu LIST            pin the compute threads to these CPUs (e.g. 0 or 0,2,3)\n"
	       "  --sessions N          exit after N sessions (default 0: serve forever)\n"
	       "  --mem-budget BYTES    keep at most this much of the model in memory; the rest of\n"
	       "                        each block matrix is streamed from disk per token (default\n"
	       "                        0: all in memory; leave a core for the reads with -t)\n"
	       CLI_BACKEND_HELP
	       "  --net-delay-us US     emulated one-way link delay added to every message received\n"
	       "  --dead-ms MS          a peer heard from not at all for MS while waiting for it is\n"
	       "                        dead: the session ends (default 90, so that a dead peer\n"
	       "                        is noticed within 100 ms; 1000 on this host, where the\n"
	       "                        link itself says when the peer dies; 0: off)\n"
	       "  --eal \"ARGS\"         DPDK EAL arguments for a dpdk: link (DPDK's conventions)\n"
	       "  --timeout S           longest wait for an edge message in a session (default 30)\n"
	       "  --batch N             prompt prefill batch (default 64)\n"
	       "  -q, --quiet           no per-session lines\n"
	       "%s", cli_auth_help_cloud);
}

/* The serve loop's lines, after this program's name. */
static void log_line(void *ctx, const char *line)
{
	(void)ctx;
	fprintf(stderr, "%s: %s\n", cli_prog, line);
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	const char *model_path = NULL, *backend = NULL;
	struct spa_cloud_opts o = {.timeout_ns = 30000000000ll};
	int threads = 0, n_cpus = 0, cpus[256];
	uint64_t mem_budget = 0;
	struct cli_auth auth = {0};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (cli_auth_option(&auth, argc, argv, &i))
			continue;
		if (!strcmp(a, "-m") || !strcmp(a, "--model"))
			model_path = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--link"))
			o.uri = cli_value(argc, argv, &i);
		else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
			threads = (int)cli_int(a, cli_value(argc, argv, &i), 1, 256);
		else if (!strcmp(a, "--cpu")) {
			char *list = strdup(cli_value(argc, argv, &i)), *save = NULL;
			for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
				if (n_cpus == 256)
					cli_die(2, "--cpu: too many CPUs");
				cpus[n_cpus++] = cli_cpu("--cpu", t);
			}
			free(list);
		} else if (!strcmp(a, "--sessions"))
			o.max_sessions = (uint32_t)cli_int(a, cli_value(argc, argv, &i), 0, 1 << 30);
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
		else if (!strcmp(a, "--backend"))
			backend = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--mem-budget"))
			mem_budget = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 0, INT64_MAX);
		else if (!strcmp(a, "--batch"))
			o.max_batch = (uint32_t)cli_int(a, cli_value(argc, argv, &i), 1, 4096);
		else if (!strcmp(a, "-q") || !strcmp(a, "--quiet"))
			o.quiet = true;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	if (!model_path)
		cli_die(2, "no model: give -m BASE.gguf");
	if (!o.uri)
		cli_die(2, "no link: give --link shm:/NAME or --link tcp://HOST:PORT");
	if (n_cpus && threads && threads != n_cpus)
		cli_die(2, "--threads %d but --cpu lists %d CPUs", threads, n_cpus);
	if (n_cpus)
		threads = n_cpus;
	cli_auth_apply(&auth, &o.link, true);

	struct spa_errbuf err = {{0}};
	struct spa_model *m = NULL;
	if ((mem_budget ? spa_model_load_budget(&m, model_path, mem_budget, !o.quiet, &err)
			: spa_model_load(&m, model_path, !o.quiet, &err)) < 0)
		cli_die(1, "%s", err.msg);
	if (!threads)
		threads = spa_engine_default_threads(m);
	struct spa_pool *pool = NULL;
	int rc = spa_pool_create(&pool, threads, n_cpus ? cpus : NULL);
	if (rc < 0) {
		spa_model_destroy(m);
		cli_die(1, "cannot start the compute threads: %s", spa_strerror(rc));
	}
	struct spa_backend *be = cli_backend(backend, pool);
	if (!o.quiet) {
		char where[128];
		spa_pin_describe(where, sizeof where);
		fprintf(stderr, "spa-cloud: backend %s, %d compute thread(s), kernels %s, main "
			"thread on %s\n", spa_backend_name(be), spa_pool_n_threads(pool),
			spa_kernels_variant(), where);
	}
	o.log = log_line;
	rc = spa_cloud_serve(m, be, &o, &err);
	spa_backend_destroy(be);
	spa_pool_destroy(pool);
	spa_model_destroy(m);
	if (rc < 0)
		cli_die(1, "%s", err.msg);
	return 0;
}
