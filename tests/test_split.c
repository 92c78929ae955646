/* Split equals local: cloud + edge processes over a real link generate exactly the tokens of
 * spa-run (the single-process reference), for every method, split, link and sampling mode; M
 * is counted as L, 2L, 1 and the side-path fraction; bad sessions are refused and the cloud
 * goes on serving. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "spa/spa.h"
#include "testutil.h"

#define N_TOK 12

static const char *prompt = "the cat sat on the mat and";

static const char *sampling[2] = {
	"",                                                  /* greedy */
	"--temp 0.9 --top-k 40 --top-p 0.95 --seed 1234",    /* seeded sampling */
};

static int next_port(void)
{
	static int n;
	return 21000 + (getpid() % 2000) * 4 + (n++ % 4); /* below the ephemeral range */
}

static void make_uri(char *uri, size_t size, const char *link)
{
	static int n;
	if (!strcmp(link, "shm"))
		snprintf(uri, size, "shm:/spa-test-%d-%d", (int)getpid(), n++);
	else if (!strcmp(link, "udp") || !strcmp(link, "udp-keys"))
		snprintf(uri, size, "udp://127.0.0.1:%d", next_port());
	else if (!strcmp(link, "udp-faults40"))
		/* the target: 10 % of every fault at once, on both sides */
		snprintf(uri, size, "'udp://127.0.0.1:%d?drop=0.1&dup=0.1&reorder=0.1&corrupt=0.1"
			 "&seed=%d'", next_port(), (int)getpid());
	else if (!strcmp(link, "udp-faults"))
		/* both ends get the query: each side's sends are duplicated and reordered. The
		 * URI goes into the programs' shell command lines: quoted for the '&'. */
		snprintf(uri, size, "'udp://127.0.0.1:%d?dup=0.05&reorder=0.1&seed=%d'",
			 next_port(), (int)getpid());
	else /* tcp, tcp-keys */
		snprintf(uri, size, "tcp://127.0.0.1:%d", next_port());
}

static pid_t clouds[8];
static int n_clouds;

/* Runs after every test, failed or not: no cloud outlives its test. */
static void kill_clouds(void)
{
	for (int i = 0; i < n_clouds; i++)
		if (clouds[i] > 0) {
			kill(clouds[i], SIGKILL);
			waitpid(clouds[i], NULL, 0);
		}
	n_clouds = 0;
}

TestSuite(split, .fini = kill_clouds);

static pid_t start_cloud(const char *uri, int sessions, const char *extra)
{
	char cmd[4096];
	/* Its output goes to a file, so that it never holds the test runner's pipes open. */
	snprintf(cmd, sizeof cmd, "exec %s -m %s --link %s -t 1 --sessions %d --timeout 10 -q %s "
		 ">%s/cloud.log 2>&1", tu_program("spa-cloud"), tu_tiny_model(), uri, sessions,
		 extra ? extra : "", tu_tmpdir());
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid > 0 && n_clouds < 8)
		clouds[n_clouds++] = pid;
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static int wait_cloud(pid_t pid, int seconds)
{
	for (int i = 0; i < seconds * 100; i++) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			for (int k = 0; k < n_clouds; k++)
				if (clouds[k] == pid)
					clouds[k] = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		}
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -2;
}

static const char *plugin_for(const char *method)
{
	if (!strcmp(method, "lora"))
		return tu_tiny_plugin("lora");
	if (!strcmp(method, "adapter"))
		return tu_tiny_plugin("adapter");
	return tu_tiny_plugin("side");
}

static void run_local(const char *method, const char *split, const char *merge,
		      const char *samp, char *ids, size_t cap)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "%s -m %s --plugin %s --method %s --split %s --merge %s -p '%s' "
		 "-n %d --ids -t 1 %s 2>/dev/null", tu_program("spa-run"), tu_tiny_model(),
		 plugin_for(method), method, split, merge, prompt, N_TOK, samp);
	int rc = tu_run(cmd, ids, cap, 0);
	cr_assert_eq(rc, 0, "spa-run failed (%d): %s", rc, cmd);
	cr_assert(strlen(ids) > 0, "spa-run printed no ids");
}

/* Runs the edge; returns its exit status; ids and the stats JSON text out. */
static int run_edge(const char *uri, const char *method, const char *split, const char *merge,
		    const char *samp, const char *plugin, char *ids, size_t cap, char *js,
		    size_t js_cap, char *errout, size_t err_cap)
{
	char *dir = tu_tmpdir();
	char cmd[4096], jpath[256], epath[256];
	snprintf(jpath, sizeof jpath, "%s/stats.json", dir);
	snprintf(epath, sizeof epath, "%s/stderr", dir);
	snprintf(cmd, sizeof cmd, "%s --link %s --plugin %s --method %s --split %s --merge %s "
		 "-p '%s' -n %d --ids --timeout 10 --stats-json %s %s 2>%s",
		 tu_program("spa-edge"), uri, plugin ? plugin : plugin_for(method), method, split,
		 merge, prompt, N_TOK, jpath, samp, epath);
	int rc = tu_run(cmd, ids, cap, 0);
	size_t n;
	char *t = tu_read_file(jpath, &n);
	if (js && js_cap) {
		snprintf(js, js_cap, "%s", t ? t : "");
	}
	free(t);
	t = tu_read_file(epath, &n);
	if (errout && err_cap)
		snprintf(errout, err_cap, "%s", t ? t : "");
	free(t);
	return rc;
}

static double json_num(const char *js, const char *key)
{
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\": ", key);
	const char *p = strstr(js, pat);
	cr_assert_not_null(p, "no %s in %s", key, js);
	return strtod(p + strlen(pat), NULL);
}

/* "-keys" links: keys made with spa-keygen, given to both programs (authenticated, sealed). */
static void keys_for(const char *link, char *cloud_opt, char *edge_opt, size_t cap)
{
	cloud_opt[0] = edge_opt[0] = 0;
	if (!strstr(link, "-keys"))
		return;
	const char *d = tu_tmpdir();
	char cmd[2048], out[512];
	snprintf(cmd, sizeof cmd, "rm -f %s/sc.* %s/se.*; %s -o %s/sc && %s -o %s/se", d, d,
		 tu_program("spa-keygen"), d, tu_program("spa-keygen"), d);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "spa-keygen: %s", out);
	snprintf(cloud_opt, cap, "--key %s/sc.key --allow %s/se.pub", d, d);
	snprintf(edge_opt, cap, "--key %s/se.key --cloud-pub %s/sc.pub", d, d);
}

static void check_method(const char *method, const char *link)
{
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	const char *splits[2] = {"cloud-linear", "edge-all"};
	char uri[128], ckeys[1024], ekeys[1024];
	make_uri(uri, sizeof uri, link);
	keys_for(link, ckeys, ekeys, sizeof ckeys);
	pid_t cloud = start_cloud(uri, 4, ckeys);
	for (int s = 0; s < 2; s++)
		for (int k = 0; k < 2; k++) {
			char want[4096], got[4096], js[4096], err[4096], eopt[2048];
			run_local(method, splits[s], "add", sampling[k], want, sizeof want);
			snprintf(eopt, sizeof eopt, "%s %s", sampling[k], ekeys);
			int rc = run_edge(uri, method, splits[s], "add", eopt, NULL, got,
					  sizeof got, js, sizeof js, err, sizeof err);
			cr_assert_eq(rc, 0, "spa-edge %s %s over %s failed: %s", method, splits[s],
				     link, err);
			cr_assert_str_eq(got, want, "%s %s %s over %s: edge+cloud gave\n%s\nspa-run "
					 "gave\n%s", method, splits[s], k ? "sampled" : "greedy", link,
					 got, want);
			double M = json_num(js, "M");
			double n_side = json_num(js, "n_side");
			double n_tok = json_num(js, "n_tokens");
			cr_assert_eq(n_tok, N_TOK);
			if (!strcmp(method, "lora"))
				cr_assert_eq(M, hp.n_layers, "lora M = %g, want L = %u", M, hp.n_layers);
			else if (!strcmp(method, "adapter"))
				cr_assert_eq(M, 2.0 * hp.n_layers, "adapter M = %g", M);
			else if (!strcmp(method, "lst"))
				cr_assert_eq(M, 1.0, "lst M = %g", M);
			else if (!strcmp(method, "spa")) {
				cr_assert_float_eq(M, n_side / N_TOK, 1e-3, "spa M = %g, side %g", M,
						   n_side);
				cr_assert(M < 1.0, "spa M = %g is not below 1", M);
			} else
				cr_assert_eq(M, 0.0);
			if (!strcmp(link, "udp-faults40"))
				/* the faults happened (and were made up for: the tokens) */
				cr_assert(json_num(js, "link_faults_injected") > 0, "%s", js);
		}
	cr_assert_eq(wait_cloud(cloud, 30), 0, "spa-cloud did not end cleanly");
}

Test(split, lora_shm) { check_method("lora", "shm"); }
Test(split, lora_tcp) { check_method("lora", "tcp"); }
Test(split, lora_tcp_with_keys) { check_method("lora", "tcp-keys"); }
Test(split, spa_udp_with_keys) { check_method("spa", "udp-keys"); }
Test(split, adapter_shm) { check_method("adapter", "shm"); }
Test(split, adapter_tcp) { check_method("adapter", "tcp"); }
Test(split, lst_shm) { check_method("lst", "shm"); }
Test(split, lst_tcp) { check_method("lst", "tcp"); }
Test(split, spa_shm) { check_method("spa", "shm"); }
Test(split, spa_tcp) { check_method("spa", "tcp"); }
Test(split, base_shm) { check_method("base", "shm"); }
Test(split, lora_udp) { check_method("lora", "udp"); }
Test(split, adapter_udp) { check_method("adapter", "udp"); }
Test(split, lst_udp) { check_method("lst", "udp"); }
Test(split, spa_udp) { check_method("spa", "udp"); }
Test(split, spa_udp_with_duplicated_and_reordered_frames) { check_method("spa", "udp-faults"); }
/* 10 % of frames dropped, 10 % duplicated, 10 % reordered and 10 % corrupted, on both sides:
 * retransmission makes up for all of it; the tokens are spa-run's. */
Test(split, lora_udp_losing_a_tenth_of_frames_each_way) { check_method("lora", "udp-faults40"); }
Test(split, adapter_udp_losing_a_tenth_of_frames_each_way)
{
	check_method("adapter", "udp-faults40");
}
Test(split, lst_udp_losing_a_tenth_of_frames_each_way) { check_method("lst", "udp-faults40"); }
Test(split, spa_udp_losing_a_tenth_of_frames_each_way) { check_method("spa", "udp-faults40"); }

Test(split, replace_merge_and_both_splits_agree)
{
	char uri[128];
	make_uri(uri, sizeof uri, "shm");
	pid_t cloud = start_cloud(uri, 2, NULL);
	char want[2][4096], got[4096], err[4096];
	const char *splits[2] = {"cloud-linear", "edge-all"};
	for (int s = 0; s < 2; s++) {
		run_local("spa", splits[s], "replace", "", want[s], sizeof want[s]);
		int rc = run_edge(uri, "spa", splits[s], "replace", "", NULL, got, sizeof got, NULL,
				  0, err, sizeof err);
		cr_assert_eq(rc, 0, "%s", err);
		cr_assert_str_eq(got, want[s]);
	}
	/* Both splits compute the same floats (RUNTIME.md §3), so the same tokens. */
	cr_assert_str_eq(want[0], want[1]);
	char add[4096];
	run_local("spa", "cloud-linear", "add", "", add, sizeof add);
	char base[4096];
	run_local("base", "cloud-linear", "add", "", base, sizeof base);
	/* The plugin matters: replace differs from the base model alone. */
	cr_assert_str_neq(want[0], base, "merge replace gave the base model's tokens");
	cr_assert_eq(wait_cloud(cloud, 30), 0);
}

Test(split, plugin_for_another_base_is_refused_and_cloud_goes_on)
{
	/* A base made with another seed and a plugin for it. */
	char *dir = tu_tmpdir();
	char other[256], plug[256];
	snprintf(other, sizeof other, "%s/other.gguf", dir);
	snprintf(plug, sizeof plug, "%s/other-side.gguf", dir);
	struct spa_hparams hp;
	struct spa_errbuf e = {{0}};
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	cr_assert_eq(spa_gen_base(&hp, SPA_TYPE_F32, 99, other, false, &e), 0, "%s", e.msg);
	struct spa_model *m = NULL;
	cr_assert_eq(spa_model_load(&m, other, false, &e), 0, "%s", e.msg);
	struct spa_plugin_gen_params gp = {.kind = SPA_PLUGIN_SIDE, .seed = 3,
					   .side_fraction = 0.5f};
	cr_assert_eq(spa_plugin_generate(m, &gp, plug, &e), 0, "%s", e.msg);
	spa_model_destroy(m);

	char uri[128];
	make_uri(uri, sizeof uri, "tcp");
	pid_t cloud = start_cloud(uri, 2, NULL);
	char got[4096], err[4096];
	int rc = run_edge(uri, "spa", "cloud-linear", "add", "", plug, got, sizeof got, NULL, 0,
			  err, sizeof err);
	cr_assert_eq(rc, 1, "a mismatched plugin was accepted: %s", err);
	cr_assert(strstr(err, "made for base model"), "unclear refusal: %s", err);
	/* spa-run refuses the pairing too. */
	char cmd[2048], out[4096];
	snprintf(cmd, sizeof cmd, "%s -m %s --plugin %s -n 2", tu_program("spa-run"),
		 tu_tiny_model(), plug);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 1, "%s", out);
	/* The cloud serves the next session. */
	char want[4096];
	run_local("lst", "cloud-linear", "add", "", want, sizeof want);
	rc = run_edge(uri, "lst", "cloud-linear", "add", "", NULL, got, sizeof got, NULL, 0, err,
		      sizeof err);
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_str_eq(got, want);
	cr_assert_eq(wait_cloud(cloud, 30), 0);
}

Test(split, malformed_hello_and_dead_edge_do_not_stop_the_cloud)
{
	char uri[128];
	make_uri(uri, sizeof uri, "shm");
	pid_t cloud = start_cloud(uri, 3, "--timeout 2");
	struct spa_errbuf e = {{0}};
	struct spa_link_opts lo = {0};

	/* 1: a HELLO with garbage in it: the cloud answers ERROR. */
	struct spa_link *l = NULL;
	cr_assert_eq(spa_link_connect(&l, uri, &lo, 5000000000ll, &e), 0, "%s", e.msg);
	uint8_t junk[56];
	memset(junk, 0x7f, sizeof junk);
	struct spa_msg m = {.type = SPA_MSG_HELLO};
	cr_assert_eq(spa_link_send(l, &m, junk, sizeof junk), 0);
	uint8_t buf[1024];
	struct spa_msg r;
	cr_assert_eq(spa_link_recv(l, &r, buf, sizeof buf, 5000000000ll), 0, "%s",
		     spa_link_error(l));
	cr_assert_eq(r.type, SPA_MSG_ERROR, "got %s", spa_msg_type_name(r.type));
	cr_assert(r.len > 0);
	spa_link_destroy(l);

	/* 2: an edge killed in the middle of a session: the cloud gives up on it. */
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "exec %s --link %s --plugin %s --method adapter -p '%s' -n 400 "
		 "--ids >/dev/null 2>&1", tu_program("spa-edge"), uri, tu_tiny_plugin("adapter"),
		 prompt);
	pid_t edge = fork();
	if (edge == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	usleep(300000);
	kill(edge, SIGKILL);
	waitpid(edge, NULL, 0);

	/* 3: a good session afterwards. */
	char want[4096], got[4096], err[4096];
	run_local("adapter", "cloud-linear", "add", "", want, sizeof want);
	int rc = run_edge(uri, "adapter", "cloud-linear", "add", "", NULL, got, sizeof got, NULL, 0,
			  err, sizeof err);
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_str_eq(got, want);
	cr_assert_eq(wait_cloud(cloud, 30), 0);
}

Test(split, too_long_a_request_is_refused_with_a_message)
{
	char uri[128];
	make_uri(uri, sizeof uri, "tcp");
	pid_t cloud = start_cloud(uri, 2, NULL);
	char got[4096], err[4096], cmd[4096];
	/* tiny's context is 512: 600 tokens cannot fit. */
	snprintf(cmd, sizeof cmd, "%s --link %s --plugin %s -n 600 --ids 2>&1", tu_program("spa-edge"),
		 uri, tu_tiny_plugin("side"));
	int rc = tu_run(cmd, err, sizeof err, 1);
	cr_assert_eq(rc, 1, "%s", err);
	cr_assert(strstr(err, "context"), "unclear refusal: %s", err);
	char want[4096];
	run_local("spa", "cloud-linear", "add", "", want, sizeof want);
	rc = run_edge(uri, "spa", "cloud-linear", "add", "", NULL, got, sizeof got, NULL, 0, err,
		      sizeof err);
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_str_eq(got, want);
	cr_assert_eq(wait_cloud(cloud, 30), 0);
}

/* Every weight format: a tiny model made in it, a side plugin made for it, and cloud + edge
 * over shm give exactly spa-run's tokens (greedy and sampled), for spa and lora. */
/* spa-cloud --mem-budget: half the model streamed per token, the same tokens as spa-run with
 * the whole model in memory, for a side method and a per-block one. */
Test(split, a_cloud_under_a_memory_budget_gives_the_same_tokens)
{
	struct stat st;
	cr_assert_eq(stat(tu_tiny_model(), &st), 0);
	char extra[64], uri[128];
	snprintf(extra, sizeof extra, "--mem-budget %lld", (long long)st.st_size / 2);
	make_uri(uri, sizeof uri, "shm");
	pid_t cloud = start_cloud(uri, 4, extra);
	const char *methods[2] = {"spa", "lora"};
	for (int k = 0; k < 2; k++)
		for (int s = 0; s < 2; s++) {
			char want[4096], got[4096], err[4096];
			run_local(methods[k], "cloud-linear", "add", sampling[s], want, sizeof want);
			int rc = run_edge(uri, methods[k], "cloud-linear", "add", sampling[s], NULL, got,
					  sizeof got, NULL, 0, err, sizeof err);
			cr_assert_eq(rc, 0, "%s under a budget: %s", methods[k], err);
			cr_assert_str_eq(got, want, "%s %s under a budget: edge+cloud gave\n%s\n"
					 "spa-run gave\n%s", methods[k], s ? "sampled" : "greedy", got,
					 want);
		}
	cr_assert_eq(wait_cloud(cloud, 30), 0, "spa-cloud did not end cleanly");
	/* the budget is applied: one too small is refused, with the least that works */
	char cmd[1024], out[2048];
	snprintf(cmd, sizeof cmd, "%s -m %s --link %s --mem-budget 4096 --sessions 1",
		 tu_program("spa-cloud"), tu_tiny_model(), uri);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 1, "%s", out);
	cr_assert(strstr(out, "memory budget of 4096 bytes") && strstr(out, "--mem-budget"), "%s",
		  out);
}

Test(split, every_weight_format)
{
	static const char *types[] = {"f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"};
	char *dir = tu_tmpdir();
	for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
		char base[256], side[256], lora[256], uri[128];
		snprintf(base, sizeof base, "%s/tiny-%s.gguf", dir, types[t]);
		snprintf(side, sizeof side, "%s/tiny-%s-side.gguf", dir, types[t]);
		snprintf(lora, sizeof lora, "%s/tiny-%s-lora.gguf", dir, types[t]);
		struct spa_hparams hp;
		struct spa_errbuf e = {{0}};
		int ty = spa_dtype_from_name(types[t]);
		cr_assert_geq(ty, 0);
		cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
		cr_assert_eq(spa_gen_base(&hp, (enum spa_dtype)ty, 1, base, false, &e), 0, "%s: %s",
			     types[t], e.msg);
		struct spa_model *m = NULL;
		cr_assert_eq(spa_model_load(&m, base, false, &e), 0, "%s: %s", types[t], e.msg);
		struct spa_plugin_gen_params gs = {.kind = SPA_PLUGIN_SIDE, .seed = 2,
						   .side_fraction = 0.5f};
		struct spa_plugin_gen_params gl = {.kind = SPA_PLUGIN_LORA, .seed = 2};
		cr_assert_eq(spa_plugin_generate(m, &gs, side, &e), 0, "%s", e.msg);
		cr_assert_eq(spa_plugin_generate(m, &gl, lora, &e), 0, "%s", e.msg);
		spa_model_destroy(m);

		make_uri(uri, sizeof uri, "shm");
		char cmd[4096];
		snprintf(cmd, sizeof cmd, "exec %s -m %s --link %s -t 1 --sessions 4 --timeout 10 -q "
			 ">%s/cloud-%s.log 2>&1", tu_program("spa-cloud"), base, uri, dir, types[t]);
		pid_t cloud = fork();
		cr_assert_geq(cloud, 0);
		if (cloud == 0) {
			execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
			_exit(127);
		}
		if (n_clouds < 8)
			clouds[n_clouds++] = cloud;
		const char *methods[2] = {"spa", "lora"};
		for (int k = 0; k < 2; k++)
			for (int s = 0; s < 2; s++) {
				const char *plug = k ? lora : side;
				char want[4096], got[4096], err[4096];
				snprintf(cmd, sizeof cmd, "%s -m %s --plugin %s --method %s -p '%s' -n %d "
					 "--ids -t 1 %s 2>/dev/null", tu_program("spa-run"), base, plug,
					 methods[k], prompt, N_TOK, sampling[s]);
				cr_assert_eq(tu_run(cmd, want, sizeof want, 0), 0, "%s: spa-run failed",
					     types[t]);
				int rc = run_edge(uri, methods[k], "cloud-linear", "add", sampling[s],
						  plug, got, sizeof got, NULL, 0, err, sizeof err);
				cr_assert_eq(rc, 0, "%s %s: %s", types[t], methods[k], err);
				cr_assert_str_eq(got, want, "%s %s %s: edge+cloud gave\n%s\nspa-run "
						 "gave\n%s", types[t], methods[k],
						 s ? "sampled" : "greedy", got, want);
			}
		cr_assert_eq(wait_cloud(cloud, 30), 0, "%s: spa-cloud did not end cleanly",
			     types[t]);
	}
}
