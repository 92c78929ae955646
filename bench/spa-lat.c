/* spa-lat: the paper's table 1 (M, inference, network and total latency of LoRA / Adapter /
 * LST / SPA) with measured numbers: a spa-cloud and a spa-edge process per method, over a real
 * link, on a model it makes (once, then cached) when none is given. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/cli/cli.h"
#include "spa/spa.h"

#define MAX_METHODS 5
#define MAX_LINKS 4

struct row {
	enum spa_method method;
	double param_pct, M, infer_ms, net_ms, total_ms, p50, p99, out_pt, in_pt, cloud_ms, edge_ms;
	double cc_tx, cc_rx, ec_tx, ec_rx; /* payload bytes copied per message, each side */
	unsigned n_side, n_xchg;
};

static const char *default_prompt =
	"The quick brown fox jumps over the lazy dog. Once upon a time, in a small town by the sea,";

static void usage(void)
{
	printf("usage: spa-lat [options]\n"
	       "Reproduce the paper's table 1 with measured numbers: for each method, a spa-cloud\n"
	       "and a spa-edge process generate --tokens tokens over a real link.\n\n"
	       "  --methods LIST        comma list of lora, adapter, lst, spa, base\n"
	       "                        (default lora,adapter,lst,spa)\n"
	       "  --link L              memif, shm, udp, tcp, all, or a full URI (default: memif\n"
	       "                        when DPDK's EAL can start here, else shm)\n"
	       "  --tokens N            tokens per method (default 50)\n"
	       "  --net-delay-us US     one-way delay tau added inside the link (default 0)\n"
	       "  --model FILE          base model (default: made and cached: --shape, --type)\n"
	       "  --shape S             shape of the made model: tiny, default, 1b, llama-7b\n"
	       "                        (default: default)\n"
	       "  --type T              weights of the made model: f32, f16, bf16, q8_0, q4_0, q4_k,\n"
	       "                        q6_k (default f16)\n"
	       "  --split X             cloud-linear | edge-all (default cloud-linear)\n"
	       "  --merge Y             add | replace (default add)\n"
	       "  --side-fraction F     SPA classifier calibration target (default 0.6)\n"
	       "  --prompt TEXT         the fixed prompt\n"
	       "  --threads N           cloud compute threads (default 1: the edge gets a core)\n"
	       "  --backend B           the cloud's compute backend: cpu, cuda or auto (default\n"
	       "                        auto: the GPU when this build has CUDA and one answers)\n"
	       "  --cloud-cpu N --edge-cpu N   CPUs to pin to (default 0 and the last CPU)\n"
	       "  --cache DIR           where made models live (default $SPA_CACHE_DIR or\n"
	       "                        ~/.cache/spa)\n"
	       "  --json FILE           write the table as JSON\n");
}

static char bin_dir[PATH_MAX + 64];

static void find_programs(void)
{
	const char *env = getenv("SPA_BIN_DIR");
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (env && *env) {
		snprintf(bin_dir, sizeof bin_dir, "%s", env);
		return;
	}
	if (n <= 0)
		cli_die(1, "cannot find my own path; set SPA_BIN_DIR to the folder of spa-cloud");
	self[n] = 0;
	*strrchr(self, '/') = 0;
	char try[PATH_MAX + 64];
	self[PATH_MAX - 64] = 0; /* room for the suffixes below */
	snprintf(try, sizeof try, "%s/../runtime/cli/spa-cloud", self);
	if (access(try, X_OK) == 0) {
		snprintf(bin_dir, sizeof bin_dir, "%s/../runtime/cli", self);
		return;
	}
	snprintf(try, sizeof try, "%s/spa-cloud", self);
	if (access(try, X_OK) == 0) {
		snprintf(bin_dir, sizeof bin_dir, "%s", self);
		return;
	}
	cli_die(1, "cannot find spa-cloud beside %s or in ../runtime/cli; set SPA_BIN_DIR", self);
}

static void mkdirs(const char *path)
{
	char b[PATH_MAX];
	snprintf(b, sizeof b, "%s", path);
	for (char *p = b + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			mkdir(b, 0755);
			*p = '/';
		}
	if (mkdir(b, 0755) < 0 && errno != EEXIST)
		cli_die(1, "cannot create %s: %s", b, strerror(errno));
}

static pid_t spawn(char *const argv[], const char *out_path, const char *err_path)
{
	pid_t pid = fork();
	if (pid < 0)
		cli_die(1, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (out_path && !freopen(out_path, "w", stdout))
			_exit(127);
		if (err_path && !freopen(err_path, "w", stderr))
			_exit(127);
		execv(argv[0], argv);
		fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

static void show_file(const char *path)
{
	size_t n;
	FILE *f = fopen(path, "r");
	char buf[4096];
	if (!f)
		return;
	while ((n = fread(buf, 1, sizeof buf, f)) > 0)
		fwrite(buf, 1, n, stderr);
	fclose(f);
}

static double json_num(const char *js, const char *key)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\": ", key);
	const char *p = strstr(js, pat);
	return p ? strtod(p + strlen(pat), NULL) : -1;
}

/* Whether a memif link can be set up here: DPDK built in and EAL able to start. Probed in a
 * child process, since EAL starts once per process and spa-lat itself does not need it. */
static bool memif_usable(char *why, size_t size)
{
	int fds[2];
	if (pipe(fds) < 0) {
		snprintf(why, size, "pipe: %s", strerror(errno));
		return false;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		if (!freopen("/dev/null", "w", stderr)) /* the driver's placement line */
			_exit(2);
		char uri[128];
		snprintf(uri, sizeof uri, "memif:/tmp/spa-lat-probe-%d.sock", (int)getpid());
		struct spa_listener *l = NULL;
		struct spa_errbuf e = {{0}};
		int rc = spa_link_listen(&l, uri, NULL, &e);
		if (rc < 0 && write(fds[1], e.msg, strlen(e.msg)) < 0)
			_exit(2);
		spa_listener_destroy(l);
		_exit(rc < 0 ? 1 : 0);
	}
	close(fds[1]);
	ssize_t n = pid > 0 ? read(fds[0], why, size - 1) : -1;
	why[n > 0 ? n : 0] = 0;
	close(fds[0]);
	int st = 1;
	if (pid > 0) {
		waitpid(pid, &st, 0);
		/* the child _exit()ed: the socket file its memif server made is ours to remove */
		char path[128];
		snprintf(path, sizeof path, "/tmp/spa-lat-probe-%d.sock", (int)pid);
		unlink(path);
	}
	if (pid > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return true;
	if (!why[0])
		snprintf(why, size, "the probe could not start EAL");
	return false;
}

static const char *method_title(enum spa_method m)
{
	static const char *t[] = {"Base", "LoRA", "Adapter", "LST", "SPA"};
	return t[m];
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	enum spa_method methods[MAX_METHODS] = {SPA_METHOD_LORA, SPA_METHOD_ADAPTER, SPA_METHOD_LST,
						SPA_METHOD_SPA};
	int n_methods = 4;
	const char *links[MAX_LINKS] = {"auto"};
	int n_links = 1;
	unsigned tokens = 50, threads = 1;
	long delay_us = 0;
	const char *model = NULL, *shape = "default", *json = NULL, *cache = NULL;
	const char *backend = "auto";
	const char *prompt = default_prompt;
	enum spa_dtype type = SPA_TYPE_F16;
	enum spa_split split = SPA_SPLIT_CLOUD_LINEAR;
	enum spa_merge merge = SPA_MERGE_ADD;
	double side_fraction = 0.6;
	int n_pus = spa_pin_n_pus();
	int cloud_cpu = 0, edge_cpu = n_pus > 1 ? n_pus - 1 : 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int v;
		if (!strcmp(a, "--methods")) {
			char *list = strdup(cli_value(argc, argv, &i)), *save = NULL;
			n_methods = 0;
			for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
				if ((v = spa_method_from_name(t)) < 0)
					cli_die(2, "--methods: unknown method '%s' (lora, adapter, "
						"lst, spa, base)", t);
				if (n_methods == MAX_METHODS)
					cli_die(2, "--methods: at most %d", MAX_METHODS);
				methods[n_methods++] = (enum spa_method)v;
			}
			free(list);
			if (!n_methods)
				cli_die(2, "--methods: empty list");
		} else if (!strcmp(a, "--link")) {
			const char *s = cli_value(argc, argv, &i);
			if (!strcmp(s, "all")) {
				links[0] = "memif";
				links[1] = "shm";
				links[2] = "udp";
				links[3] = "tcp";
				n_links = 4;
			} else {
				links[0] = s;
				n_links = 1;
			}
		} else if (!strcmp(a, "--tokens"))
			tokens = (unsigned)cli_int(a, cli_value(argc, argv, &i), 1, 100000);
		else if (!strcmp(a, "--net-delay-us"))
			delay_us = (long)cli_int(a, cli_value(argc, argv, &i), 0, 10000000);
		else if (!strcmp(a, "--model"))
			model = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--shape"))
			shape = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--type")) {
			const char *s = cli_value(argc, argv, &i);
			v = spa_dtype_from_name(s);
			if (v < 0 || !spa_kernels_supports((enum spa_dtype)v))
				cli_die(2, "--type: '%s' is not one of f32, f16, bf16, q8_0, q4_0, q4_k, "
					"q6_k", s);
			type = (enum spa_dtype)v;
		} else if (!strcmp(a, "--split")) {
			const char *s = cli_value(argc, argv, &i);
			if ((v = spa_split_from_name(s)) < 0)
				cli_die(2, "--split: unknown split '%s' (cloud-linear, edge-all)", s);
			split = (enum spa_split)v;
		} else if (!strcmp(a, "--merge")) {
			const char *s = cli_value(argc, argv, &i);
			if ((v = spa_merge_from_name(s)) < 0)
				cli_die(2, "--merge: unknown merge '%s' (add, replace)", s);
			merge = (enum spa_merge)v;
		} else if (!strcmp(a, "--side-fraction"))
			side_fraction = cli_float(a, cli_value(argc, argv, &i), 0, 1);
		else if (!strcmp(a, "--prompt"))
			prompt = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--threads"))
			threads = (unsigned)cli_int(a, cli_value(argc, argv, &i), 1, 256);
		else if (!strcmp(a, "--backend"))
			backend = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--cloud-cpu"))
			cloud_cpu = cli_cpu(a, cli_value(argc, argv, &i));
		else if (!strcmp(a, "--edge-cpu"))
			edge_cpu = cli_cpu(a, cli_value(argc, argv, &i));
		else if (!strcmp(a, "--cache"))
			cache = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--json"))
			json = cli_value(argc, argv, &i);
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	find_programs();

	/* The model and its plugins: made once, then cached. */
	char cache_dir[PATH_MAX - 256], model_path[PATH_MAX], plug[SPA_PLUGIN_KIND_COUNT][PATH_MAX + 64];
	if (!cache) {
		const char *env = getenv("SPA_CACHE_DIR"), *home = getenv("HOME");
		if (env && *env)
			snprintf(cache_dir, sizeof cache_dir, "%s", env);
		else
			snprintf(cache_dir, sizeof cache_dir, "%s/.cache/spa", home ? home : "/tmp");
	} else
		snprintf(cache_dir, sizeof cache_dir, "%s", cache);
	mkdirs(cache_dir);
	struct spa_errbuf err = {{0}};
	if (model)
		snprintf(model_path, sizeof model_path, "%s", model);
	else {
		struct spa_hparams hp;
		if (spa_gen_shape(shape, &hp) < 0)
			cli_die(2, "--shape: unknown shape '%s' (tiny, default, 1b, llama-7b)", shape);
		snprintf(model_path, sizeof model_path, "%s/base-%s-%s-seed1.gguf", cache_dir, shape,
			 spa_dtype_name(type));
		if (access(model_path, R_OK) != 0) {
			fprintf(stderr, "spa-lat: making the %s base model (%s) once: %s\n", shape,
				spa_dtype_name(type), model_path);
			if (spa_gen_base(&hp, type, 1, model_path, true, &err) < 0)
				cli_die(1, "%s", err.msg);
		}
	}
	struct spa_model *m = NULL;
	if (spa_model_load(&m, model_path, false, &err) < 0)
		cli_die(1, "%s", err.msg);
	for (int k = 0; k < SPA_PLUGIN_KIND_COUNT; k++) {
		bool needed = false;
		for (int j = 0; j < n_methods; j++)
			needed |= methods[j] != SPA_METHOD_BASE &&
				  spa_method_plugin_kind(methods[j]) == k;
		snprintf(plug[k], sizeof plug[k], "%s/plugin-%s-%s-f%.2f.gguf", cache_dir,
			 spa_plugin_kind_name((enum spa_plugin_kind)k), m->fingerprint,
			 k == SPA_PLUGIN_SIDE ? side_fraction : 0.0);
		if (!needed || access(plug[k], R_OK) == 0)
			continue;
		fprintf(stderr, "spa-lat: making the %s plugin once: %s\n",
			spa_plugin_kind_name((enum spa_plugin_kind)k), plug[k]);
		struct spa_plugin_gen_params gp = {.kind = (enum spa_plugin_kind)k, .seed = 7,
						   .side_fraction = (float)side_fraction};
		if (spa_plugin_generate(m, &gp, plug[k], &err) < 0)
			cli_die(1, "%s", err.msg);
	}
	struct spa_hparams hp = m->hp;
	uint64_t base_params = m->n_params;
	char fp[17];
	memcpy(fp, m->fingerprint, 17);
	enum spa_dtype wtype = m->wtype;
	spa_model_destroy(m);

	struct utsname un;
	uname(&un);
	char tmpl[] = "/tmp/spa-lat-XXXXXX";
	if (!mkdtemp(tmpl))
		cli_die(1, "mkdtemp: %s", strerror(errno));
	/* the backend the cloud will take (an unavailable one fails here, with why) */
	struct spa_backend *be_probe = cli_backend(backend, NULL);
	const char *be_name = spa_backend_name(be_probe);
	FILE *jf = NULL;
	if (json && !(jf = fopen(json, "w")))
		cli_die(1, "cannot write %s: %s", json, strerror(errno));
	if (jf)
		fprintf(jf, "{\"n_layers\": %u, \"n_tokens\": %u, \"net_delay_us\": %ld, "
			"\"model\": \"%s\", \"split\": \"%s\", \"merge\": \"%s\", \"backend\": "
			"\"%s\", \"machine\": \"%s %s, %d cpus, kernels %s\", \"tables\": [",
			hp.n_layers, tokens, delay_us, model_path, spa_split_name(split),
			spa_merge_name(merge), be_name, un.nodename, un.machine, n_pus,
			spa_kernels_variant());

	int status = 0, n_tables = 0, last_n = 0;
	struct row last_rows[MAX_METHODS];
	char last_scheme[16] = "";
	for (int li = 0; li < n_links; li++) {
		char uri[256];
		const char *link = links[li];
		if (!strcmp(link, "auto") || !strcmp(link, "memif")) {
			/* The fastest link: DPDK memif when EAL can start here, else shm. */
			char why[600];
			if (memif_usable(why, sizeof why))
				link = "memif";
			else if (!strcmp(link, "memif")) {
				fprintf(stderr, "spa-lat: skipping memif: %s\n", why);
				continue;
			} else {
				fprintf(stderr, "spa-lat: using shm, not DPDK memif: %s\n", why);
				link = "shm";
			}
		}
		if (!strcmp(link, "memif"))
			snprintf(uri, sizeof uri, "memif:/tmp/spa-lat-%d.sock", (int)getpid());
		else if (!strcmp(link, "udp"))
			snprintf(uri, sizeof uri, "udp://127.0.0.1:%d", 20000 + (int)getpid() % 20000);
		else if (!strcmp(link, "shm"))
			snprintf(uri, sizeof uri, "shm:/spa-lat-%d", (int)getpid());
		else if (!strcmp(link, "tcp"))
			snprintf(uri, sizeof uri, "tcp://127.0.0.1:%d", 20000 + (int)getpid() % 20000);
		else
			snprintf(uri, sizeof uri, "%s", link);
		char scheme[16];
		snprintf(scheme, sizeof scheme, "%.*s", (int)strcspn(uri, ":"), uri);

		char cloud_bin[PATH_MAX + 128], edge_bin[PATH_MAX + 128], cerr_path[PATH_MAX];
		char s_threads[16], s_cpu[16], s_delay[32], s_sessions[16], s_ecpu[16], s_tok[16];
		snprintf(cloud_bin, sizeof cloud_bin, "%s/spa-cloud", bin_dir);
		snprintf(edge_bin, sizeof edge_bin, "%s/spa-edge", bin_dir);
		snprintf(cerr_path, sizeof cerr_path, "%s/cloud-%s.log", tmpl, scheme);
		snprintf(s_threads, sizeof s_threads, "%u", threads);
		snprintf(s_cpu, sizeof s_cpu, "%d", cloud_cpu);
		snprintf(s_ecpu, sizeof s_ecpu, "%d", edge_cpu);
		snprintf(s_delay, sizeof s_delay, "%ld", delay_us);
		snprintf(s_sessions, sizeof s_sessions, "%d", n_methods);
		snprintf(s_tok, sizeof s_tok, "%u", tokens);
		char *cargv[] = {cloud_bin, "-m", model_path, "--link", uri, "-t", s_threads,
				 "--backend", (char *)be_name, "--net-delay-us", s_delay, "--sessions", s_sessions, "-q",
				 /* one thread: pinned to --cloud-cpu; more: the pool's own placement */
				 threads == 1 ? "--cpu" : NULL, s_cpu, NULL};
		pid_t cloud = spawn(cargv, NULL, cerr_path);

		struct row rows[MAX_METHODS];
		int n_rows = 0;
		for (int j = 0; j < n_methods; j++) {
			enum spa_method me = methods[j];
			char js[PATH_MAX], eerr[PATH_MAX];
			snprintf(js, sizeof js, "%s/%s-%s.json", tmpl, scheme, spa_method_name(me));
			snprintf(eerr, sizeof eerr, "%s/%s-%s.log", tmpl, scheme, spa_method_name(me));
			const char *pl = me == SPA_METHOD_BASE ? plug[SPA_PLUGIN_SIDE]
							       : plug[spa_method_plugin_kind(me)];
			if (me == SPA_METHOD_BASE && access(pl, R_OK) != 0)
				pl = plug[SPA_PLUGIN_LORA];
			char *eargv[] = {edge_bin, "--link", uri, "--plugin", (char *)pl, "--method",
					 (char *)spa_method_name(me), "-p", (char *)prompt, "-n", s_tok,
					 "--split", (char *)spa_split_name(split), "--merge",
					 (char *)spa_merge_name(merge), "--ids", "--stats-json", js,
					 "--cpu", s_ecpu, "--net-delay-us", s_delay, NULL};
			fprintf(stderr, "spa-lat: %s over %s: %u tokens ...\n", method_title(me), uri,
				tokens);
			pid_t e = spawn(eargv, "/dev/null", eerr);
			int st;
			waitpid(e, &st, 0);
			char *j_text = NULL;
			FILE *f = fopen(js, "r");
			if (f) {
				j_text = calloc(1, 8192);
				if (fread(j_text, 1, 8191, f) == 0) {
					free(j_text);
					j_text = NULL;
				}
				fclose(f);
			}
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || !j_text) {
				fprintf(stderr, "spa-lat: the edge for %s failed; its output:\n",
					spa_method_name(me));
				show_file(eerr);
				fprintf(stderr, "spa-lat: the cloud's output:\n");
				show_file(cerr_path);
				free(j_text);
				status = 1;
				break;
			}
			struct row *r = &rows[n_rows++];
			r->method = me;
			r->param_pct = json_num(j_text, "param_pct");
			r->M = json_num(j_text, "M");
			r->infer_ms = json_num(j_text, "infer_ms");
			r->net_ms = json_num(j_text, "net_ms");
			r->total_ms = json_num(j_text, "total_ms");
			r->p50 = json_num(j_text, "token_ms_p50");
			r->p99 = json_num(j_text, "token_ms_p99");
			r->out_pt = json_num(j_text, "bytes_out_per_token");
			r->in_pt = json_num(j_text, "bytes_in_per_token");
			r->cloud_ms = json_num(j_text, "cloud_ms");
			r->edge_ms = json_num(j_text, "edge_ms");
			r->n_side = (unsigned)json_num(j_text, "n_side");
			r->cc_tx = json_num(j_text, "cloud_copied_tx_per_msg");
			r->cc_rx = json_num(j_text, "cloud_copied_rx_per_msg");
			r->ec_tx = json_num(j_text, "edge_copied_tx_per_msg");
			r->ec_rx = json_num(j_text, "edge_copied_rx_per_msg");
			r->n_xchg = (unsigned)json_num(j_text, "n_xchg");
			free(j_text);
		}
		int st;
		if (status) {
			kill(cloud, SIGTERM);
			waitpid(cloud, &st, 0);
			break;
		}
		waitpid(cloud, &st, 0);

		printf("\nspa-lat: %u tokens per method, base %s (L=%u, H=%u, %s, %.1fM params, "
		       "fingerprint %s)\n", tokens, shape && !model ? shape : model_path, hp.n_layers,
		       hp.n_embd, spa_dtype_name(wtype), base_params / 1e6, fp);
		printf("link %s, net delay tau = %ld us one way, split %s, merge %s; cloud on %s, "
		       "%u thread(s) on cpu %d, edge on cpu %d; %s %s, kernels %s\n\n", uri,
		       delay_us, spa_split_name(split), spa_merge_name(merge), be_name, threads,
		       cloud_cpu, edge_cpu, un.nodename, un.machine, spa_kernels_variant());
		printf("%-8s %7s %7s %11s %10s %11s %9s %9s %10s %10s\n", "Method", "%Param", "M",
		       "Infer.(ms)", "Net.(ms)", "Total(ms)", "p50(ms)", "p99(ms)", "B/tok out",
		       "B/tok in");
		for (int j = 0; j < n_rows; j++) {
			struct row *r = &rows[j];
			printf("%-8s %7.3f %7.3f %11.2f %10.2f %11.2f %9.3f %9.3f %10.0f %10.0f\n",
			       method_title(r->method), r->param_pct, r->M, r->infer_ms, r->net_ms,
			       r->total_ms, r->p50, r->p99, r->out_pt, r->in_pt);
		}
		printf("\nInfer. = cloud compute + edge compute, Net. = blocking exchange wall time - "
		       "edge compute,\nTotal = wall time of the %u decode steps; M = blocking "
		       "exchanges / tokens, counted.\n", tokens);
		printf("Payload bytes copied per message (zero copy: 0 on send, at most the payload on "
		       "receive):\n");
		for (int j = 0; j < n_rows; j++)
			printf("  %-8s cloud send %.0f, edge receive %.0f; edge send %.0f, cloud receive "
			       "%.0f\n", method_title(rows[j].method), rows[j].cc_tx, rows[j].ec_rx,
			       rows[j].ec_tx, rows[j].cc_rx);
		for (int j = 0; j < n_rows; j++)
			if (rows[j].method == SPA_METHOD_SPA)
				printf("SPA side path: %u of %u tokens (classifier calibrated to %.2f)\n",
				       rows[j].n_side, tokens, side_fraction);
		fflush(stdout);
		if (jf) {
			fprintf(jf, "%s{\"link\": \"%s\", \"methods\": [", n_tables ? ", " : "",
				scheme);
			for (int j = 0; j < n_rows; j++) {
				struct row *r = &rows[j];
				fprintf(jf, "%s{\"method\": \"%s\", \"param_pct\": %.4f, \"M\": %.4f, "
					"\"infer_ms\": %.3f, \"net_ms\": %.3f, \"total_ms\": %.3f, "
					"\"token_ms_p50\": %.3f, \"token_ms_p99\": %.3f, "
					"\"bytes_out_per_token\": %.1f, \"bytes_in_per_token\": %.1f, "
					"\"cloud_ms\": %.3f, \"edge_ms\": %.3f, \"n_side\": %u, "
					"\"cloud_copied_tx_per_msg\": %.1f, \"edge_copied_rx_per_msg\": %.1f, "
					"\"edge_copied_tx_per_msg\": %.1f, \"cloud_copied_rx_per_msg\": %.1f}",
					j ? ", " : "", spa_method_name(r->method), r->param_pct, r->M,
					r->infer_ms, r->net_ms, r->total_ms, r->p50, r->p99, r->out_pt,
					r->in_pt, r->cloud_ms, r->edge_ms, r->n_side, r->cc_tx, r->ec_rx,
					r->ec_tx, r->cc_rx);
			}
			fprintf(jf, "]}");
		}
		memcpy(last_rows, rows, sizeof rows);
		last_n = n_rows;
		snprintf(last_scheme, sizeof last_scheme, "%s", scheme);
		n_tables++;
	}
	if (jf && !status) {
		/* The last table's rows also go at the top level: {n_layers, n_tokens, link, methods}. */
		fprintf(jf, "], \"link\": \"%s\", \"methods\": [", last_scheme);
		for (int j = 0; j < last_n; j++) {
			struct row *r = &last_rows[j];
			fprintf(jf, "%s{\"method\": \"%s\", \"param_pct\": %.4f, \"M\": %.4f, "
				"\"infer_ms\": %.3f, \"net_ms\": %.3f, \"total_ms\": %.3f, "
				"\"token_ms_p50\": %.3f, \"token_ms_p99\": %.3f, "
				"\"bytes_out_per_token\": %.1f, \"bytes_in_per_token\": %.1f}",
				j ? ", " : "", spa_method_name(r->method), r->param_pct, r->M,
				r->infer_ms, r->net_ms, r->total_ms, r->p50, r->p99, r->out_pt, r->in_pt);
		}
		fprintf(jf, "]}\n");
	}
	if (jf)
		fclose(jf);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
	if (!status && system(cmd) != 0)
		fprintf(stderr, "spa-lat: could not remove %s\n", tmpl);
	spa_backend_destroy(be_probe);
	return status;
}
