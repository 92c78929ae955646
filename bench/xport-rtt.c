/* xport-rtt: round-trip time of one message each way over every link this build has, side by
 * side in one run, with each one's ratio to kernel UDP at the same size.
 *
 * For each link a child process is forked as the echo peer (the edge: it connects and sends
 * every message back), and this process is the cloud (it listens, sends, waits for the echo).
 * Processes rather than threads because the DPDK EAL is once per process, and because that is
 * how cloud and edge run. The two are pinned with hwloc to the first PUs of two different
 * cores. Per link and size: warm-ups, then --iters timed round trips; p50, p99, p99.9 in us. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/cli/cli.h"
#include "benchutil.h"
#include "spa/drv/link.h"
#include "spa/link.h"
#include "spa/pin.h"

#define SEC 1000000000ll
#define MAX_LINKS 16
#define MAX_SIZES 16

/* The links, in table order. {pid} and {port} in a URI are filled in per run. Adding a link
 * is one line; `needs` names a driver that must be built for it. */
struct link_def {
	const char *name;
	const char *uri;
	const char *needs;   /* NULL, or "dpdk" */
	const char *skip;    /* a reason it cannot run here, or NULL */
};
static struct link_def links[MAX_LINKS] = {
	{ "shm", "shm:/xport-{pid}", NULL, NULL },
	{ "dpdk-memif", "memif:/tmp/xport-{pid}.sock", "dpdk", NULL },
	{ "dpdk-af_packet", NULL, "dpdk", "needs a veth pair: give --uri dpdk-af_packet=URI "
	  "(docs/dpdk.md)" },
	{ "dpdk-af_xdp", NULL, "dpdk", "needs a veth pair and AF_XDP: give --uri "
	  "dpdk-af_xdp=URI (docs/dpdk.md)" },
	{ "udp", "udp://127.0.0.1:{port}", NULL, NULL },
	{ "udp-64k", "udp://127.0.0.1:{port}?mtu=65000", NULL, NULL },
	{ "tcp", "tcp://127.0.0.1:{port}", NULL, NULL },
};
static int n_links = 7;

struct result {
	const char *link;
	size_t size;
	double p50, p99, p999;
	int ok;
};

static int have_driver(const char *needs)
{
	if (!needs)
		return 1;
#ifdef SPA_HAVE_DPDK
	if (!strcmp(needs, "dpdk"))
		return &spa_drv_dpdk != NULL;
#endif
	return 0;
}

static void uri_fill(char *out, size_t size, const char *tmpl, int port)
{
	char tmp[512];
	snprintf(tmp, sizeof tmp, "%s", tmpl);
	char *p;
	while ((p = strstr(tmp, "{pid}")) || (p = strstr(tmp, "{port}"))) {
		char rest[512];
		int is_pid = !strncmp(p, "{pid}", 5);
		snprintf(rest, sizeof rest, "%s", p + (is_pid ? 5 : 6));
		snprintf(p, sizeof tmp - (size_t)(p - tmp), "%d%s", is_pid ? (int)getpid() : port,
			 rest);
	}
	snprintf(out, size, "%s", tmp);
}

/* The echo peer: connect, send every message back until BYE. */
static int echo_peer(const char *uri, int cpu, size_t cap)
{
	if (cpu >= 0)
		bu_pin(cpu);
	struct spa_link *l;
	struct spa_errbuf e = { "" };
	if (spa_link_connect(&l, uri, NULL, 20 * SEC, &e)) {
		fprintf(stderr, "xport-rtt: echo peer: %s\n", e.msg);
		return 1;
	}
	uint8_t *buf = malloc(cap);
	int rc = 0;
	for (;;) {
		struct spa_msg m;
		rc = spa_link_recv(l, &m, buf, cap, 30 * SEC);
		if (rc) {
			fprintf(stderr, "xport-rtt: echo peer: %s\n", spa_link_error(l));
			break;
		}
		if (m.type == SPA_MSG_BYE)
			break;
		m.type = SPA_MSG_SIDE_OUT;
		rc = spa_link_send(l, &m, buf, m.len);
		if (rc) {
			fprintf(stderr, "xport-rtt: echo peer: %s\n", spa_link_error(l));
			break;
		}
	}
	spa_link_destroy(l);
	free(buf);
	return rc ? 1 : 0;
}

/* One link: all sizes in one session. Fills res[n_sizes]; returns 0 or -1 (message printed). */
static int run_link(const struct link_def *d, const char *uri, const size_t *sizes, int n_sizes,
		    int iters, int warm, int cpu0, int cpu1, struct result *res, double *samples)
{
	size_t cap = 0;
	for (int s = 0; s < n_sizes; s++)
		if (sizes[s] > cap)
			cap = sizes[s];
	cap = cap ? cap : 1;
	fflush(NULL);
	pid_t child = fork();
	if (child < 0)
		return -1;
	if (child == 0)
		_exit(echo_peer(uri, cpu1, cap));

	struct spa_listener *lst = NULL;
	struct spa_link *l = NULL;
	struct spa_errbuf e = { "" };
	int rc = spa_link_listen(&lst, uri, NULL, &e);
	if (!rc)
		rc = spa_link_accept(lst, &l, 20 * SEC, &e);
	if (rc) {
		printf("%-15s failed: %s\n", d->name, e.msg);
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		spa_listener_destroy(lst);
		return -1;
	}
	uint8_t *out = malloc(cap), *in = malloc(cap);
	for (size_t i = 0; i < cap; i++)
		out[i] = (uint8_t)(i * 131 + 7);
	for (int s = 0; s < n_sizes && !rc; s++) {
		struct spa_msg m = { .type = SPA_MSG_TAPS, .dtype = SPA_WIRE_F32, .n_rows = 1 };
		for (int i = 0; i < warm + iters && !rc; i++) {
			uint64_t t0 = bu_now_ns();
			rc = spa_link_send(l, &m, out, sizes[s]);
			struct spa_msg r;
			if (!rc)
				rc = spa_link_recv(l, &r, in, cap, 10 * SEC);
			uint64_t t1 = bu_now_ns();
			if (!rc && r.len != sizes[s])
				rc = -SPA_EPROTO;
			if (i >= warm)
				samples[i - warm] = (double)(t1 - t0) * 1e-3;
		}
		if (rc) {
			printf("%-15s %8zu  failed: %s\n", d->name, sizes[s], spa_link_error(l));
			break;
		}
		res[s].link = d->name;
		res[s].size = sizes[s];
		bu_sort(samples, (size_t)iters);
		res[s].p50 = bu_percentile_sorted(samples, (size_t)iters, 50);
		res[s].p99 = bu_percentile_sorted(samples, (size_t)iters, 99);
		res[s].p999 = bu_percentile_sorted(samples, (size_t)iters, 99.9);
		res[s].ok = 1;
	}
	if (!rc) {
		struct spa_msg bye = { .type = SPA_MSG_BYE };
		spa_link_send(l, &bye, NULL, 0);
	} else {
		kill(child, SIGKILL);
	}
	int st = 0;
	waitpid(child, &st, 0);
	spa_link_destroy(l);
	spa_listener_destroy(lst);
	free(out);
	free(in);
	(void)cpu0;
	return rc ? -1 : 0;
}

static void usage(void)
{
	printf("usage: xport-rtt [options]\n"
	       "Round-trip time (one message each way, echo peer in a forked process on another\n"
	       "core) over every link this build has, with each one's ratio to kernel UDP.\n"
	       "  --links LIST     comma-separated link names (default: all): ");
	for (int i = 0; i < n_links; i++)
		printf("%s%s", links[i].name, i + 1 < n_links ? "," : "\n");
	printf("  --sizes LIST     message sizes in bytes, K/M suffixes allowed (default:\n"
	       "                   64,2K,8K,270K)\n"
	       "  --iters N        timed round trips per link and size (default 2000)\n"
	       "  --warmup N       untimed round trips first (default 200)\n"
	       "  --uri NAME=URI   run link NAME over URI ({pid}, {port} are filled in): adds a\n"
	       "                   link, or gives one its URI (dpdk-af_packet=dpdk:...)\n"
	       "  --port N         first TCP/UDP port to use (default 17000 + pid %% 1000 x 8)\n"
	       "  --json FILE      write {\"results\":[{\"link\",\"size\",\"p50_us\",\"p99_us\",\n"
	       "                   \"p999_us\",\"ratio_vs_udp\"}]}; ratio_vs_udp = udp p50 / this\n"
	       "                   link's p50 at the same size (> 1: faster than kernel UDP)\n");
}

static size_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s)
		cli_die(2, "--sizes: \"%s\" is not a size (bytes, or with a K or M suffix)", s);
	if (*end == 'K' || *end == 'k')
		v <<= 10, end++;
	else if (*end == 'M' || *end == 'm')
		v <<= 20, end++;
	if (*end || v > (64u << 20))
		cli_die(2, "--sizes: \"%s\" is not a size up to 64M", s);
	return (size_t)v;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	size_t sizes[MAX_SIZES] = { 64, 2048, 8192, 270 * 1024 };
	int n_sizes = 4, iters = 2000, warm = 200, port = 17000 + (int)(getpid() % 1000) * 8;
	const char *json = NULL, *only = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else if (!strcmp(a, "--links")) {
			only = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--sizes")) {
			char *list = strdup(cli_value(argc, argv, &i)), *save = NULL;
			n_sizes = 0;
			for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
				if (n_sizes == MAX_SIZES)
					cli_die(2, "--sizes: at most %d sizes", MAX_SIZES);
				sizes[n_sizes++] = parse_size(t);
			}
			if (!n_sizes)
				cli_die(2, "--sizes: empty list");
			free(list);
		} else if (!strcmp(a, "--iters")) {
			iters = (int)cli_int(a, cli_value(argc, argv, &i), 1, 10000000);
		} else if (!strcmp(a, "--warmup")) {
			warm = (int)cli_int(a, cli_value(argc, argv, &i), 0, 10000000);
		} else if (!strcmp(a, "--port")) {
			port = (int)cli_int(a, cli_value(argc, argv, &i), 1024, 65000);
		} else if (!strcmp(a, "--uri")) {
			const char *v = cli_value(argc, argv, &i), *eq = strchr(v, '=');
			if (!eq || eq == v || !eq[1])
				cli_die(2, "--uri: expected NAME=URI, got \"%s\"", v);
			int k = 0;
			while (k < n_links && (strncmp(links[k].name, v, (size_t)(eq - v)) ||
					       links[k].name[eq - v]))
				k++;
			if (k == n_links) {
				if (n_links == MAX_LINKS)
					cli_die(2, "--uri: at most %d links", MAX_LINKS);
				links[n_links++].name = strndup(v, (size_t)(eq - v));
			}
			links[k].uri = eq + 1;
			links[k].skip = NULL;
		} else if (!strcmp(a, "--json")) {
			json = cli_value(argc, argv, &i);
		} else {
			cli_die(2, "unknown option %s (try --help)", a);
		}
	}
	/* --links: check every name first */
	int selected[MAX_LINKS];
	for (int k = 0; k < n_links; k++)
		selected[k] = !only;
	if (only) {
		char *list = strdup(only), *save = NULL;
		for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			int k = 0;
			while (k < n_links && strcmp(links[k].name, t))
				k++;
			if (k == n_links)
				cli_die(2, "--links: unknown link \"%s\" (try --help)", t);
			selected[k] = 1;
		}
		free(list);
	}

	char machine[512], load[64], where[128];
	bu_machine(machine, sizeof machine);
	bu_load(load, sizeof load);
	int cpu0 = spa_pin_core_pu(0), cpu1 = spa_pin_core_pu(1);
	if (cpu1 == cpu0) /* one core: the peer shares it */
		cpu1 = spa_pin_n_pus() > 1 ? (cpu0 + 1) % spa_pin_n_pus() : cpu0;
	bu_pin(cpu0);
	spa_pin_describe(where, sizeof where);
	printf("machine: %s\n%s\ncloud side: %s; echo peer: cpu %d\n", machine, load, where, cpu1);
	printf("%d round trips per link and size after %d warm-ups; times in us\n\n", iters, warm);

	struct result *res = calloc((size_t)MAX_LINKS * MAX_SIZES, sizeof *res);
	double *samples = malloc((size_t)iters * sizeof *samples);
	int udp_k = -1;
	for (int k = 0; k < n_links; k++) {
		if (!selected[k])
			continue;
		const struct link_def *d = &links[k];
		if (!have_driver(d->needs)) {
			printf("%-15s skipped: driver not built (%s)\n", d->name, d->needs);
			continue;
		}
		if (d->skip || !d->uri) {
			printf("%-15s skipped: %s\n", d->name, d->skip ? d->skip : "no URI");
			continue;
		}
		char uri[512];
		uri_fill(uri, sizeof uri, d->uri, port + k);
		if (run_link(d, uri, sizes, n_sizes, iters, warm, cpu0, cpu1, res + k * MAX_SIZES,
			     samples) == 0 && !strcmp(d->name, "udp"))
			udp_k = k;
	}

	printf("\n%-15s %9s %10s %10s %10s %12s\n", "link", "size", "p50", "p99", "p99.9",
	       "vs udp p50");
	struct bu_json j;
	int jrc = json ? bu_json_open(&j, json) : 0;
	if (jrc < 0)
		cli_die(1, "--json %s: cannot write: %s", json, strerror(-jrc));
	if (json) {
		bu_json_obj_begin(&j, NULL);
		bu_json_str(&j, "machine", machine);
		bu_json_str(&j, "load", load);
		bu_json_int(&j, "iters", iters);
		bu_json_arr_begin(&j, "results");
	}
	for (int k = 0; k < n_links; k++)
		for (int s = 0; s < n_sizes; s++) {
			const struct result *r = &res[k * MAX_SIZES + s];
			if (!r->ok)
				continue;
			const struct result *u = udp_k >= 0 ? &res[udp_k * MAX_SIZES + s] : NULL;
			double ratio = u && u->ok ? u->p50 / r->p50 : 0.0 / 0.0;
			char rs[32] = "-";
			if (ratio == ratio)
				snprintf(rs, sizeof rs, "%.2fx", ratio);
			printf("%-15s %9zu %10.2f %10.2f %10.2f %12s\n", r->link, r->size, r->p50, r->p99,
			       r->p999, rs);
			if (json) {
				bu_json_obj_begin(&j, NULL);
				bu_json_str(&j, "link", r->link);
				bu_json_int(&j, "size", (int64_t)r->size);
				bu_json_num(&j, "p50_us", r->p50);
				bu_json_num(&j, "p99_us", r->p99);
				bu_json_num(&j, "p999_us", r->p999);
				bu_json_num(&j, "ratio_vs_udp", ratio);
				bu_json_obj_end(&j);
			}
		}
	if (json) {
		bu_json_arr_end(&j);
		bu_json_obj_end(&j);
		jrc = bu_json_close(&j);
		if (jrc < 0)
			cli_die(1, "--json %s: write failed: %s", json, strerror(-jrc));
	}
	bu_load(load, sizeof load);
	printf("\nafter: %s\n", load);
	free(res);
	free(samples);
	return 0;
}
