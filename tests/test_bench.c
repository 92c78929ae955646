/* The benchmarks run and say what they measured: spa-lat, xport-rtt, decode and load, each
 * on the smallest settings, their JSON read back and checked for the figures a user reads
 * (counted M per method, every link and size, every budget, every reader). Speed itself is
 * not judged here: that is the benchmarks' job on a quiet machine (docs/benchmarks.md). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

/* Just past the n-th (0-based) "key": of a JSON text (both writers' styles, "key": v and
 * "key":v, spaces skipped); the test fails when there is none. */
static const char *jfind(const char *js, const char *key, int n)
{
	char pat[96];
	snprintf(pat, sizeof pat, "\"%s\":", key);
	const char *p = js;
	for (int i = 0; p && i <= n; i++) {
		p = strstr(p, pat);
		if (p && i < n)
			p += strlen(pat);
	}
	cr_assert_not_null(p, "no %d-th \"%s\" in the JSON", n, key);
	p += strlen(pat);
	while (*p == ' ')
		p++;
	return p;
}

/* The n-th value of "key": a number, NAN for null, or the test fails. */
static double jnum(const char *js, const char *key, int n)
{
	const char *p = jfind(js, key, n);
	if (!strncmp(p, "null", 4))
		return NAN;
	char *end;
	double v = strtod(p, &end);
	cr_assert(end != p, "\"%s\" #%d is not a number: %.20s", key, n, p);
	return v;
}

/* How many times "key" occurs. */
static int jcount(const char *js, const char *key)
{
	char pat[96];
	snprintf(pat, sizeof pat, "\"%s\":", key);
	int n = 0;
	for (const char *p = strstr(js, pat); p; p = strstr(p + 1, pat))
		n++;
	return n;
}

/* The n-th value of string "key", into out. */
static void jstr(const char *js, const char *key, int n, char *out, size_t size)
{
	const char *p = strchr(jfind(js, key, n), '"');
	cr_assert_not_null(p);
	const char *e = strchr(p + 1, '"');
	cr_assert_not_null(e);
	snprintf(out, size, "%.*s", (int)(e - p - 1), p + 1);
}

/* Run a benchmark (a shell command line), its output into dir/name.txt (shown when it fails);
 * the JSON it wrote to dir/name.json, NUL-terminated (free it). */
static char *run_bench(const char *dir, const char *name, const char *cmd)
{
	char line[2048], out[64];
	snprintf(line, sizeof line, "%s --json %s/%s.json >%s/%s.txt 2>&1", cmd, dir, name, dir,
		 name);
	int rc = tu_run(line, out, sizeof out, 0);
	char txt[512];
	snprintf(txt, sizeof txt, "cat %s/%s.txt >&2", dir, name);
	if (rc != 0)
		(void)!system(txt);
	cr_assert_eq(rc, 0, "%s: exit %d (its output above)", name, rc);
	char path[512];
	snprintf(path, sizeof path, "%s/%s.json", dir, name);
	char *js = tu_read_file(path, NULL);
	cr_assert_not_null(js, "%s wrote no %s", name, path);
	return js;
}

/* The test's folder and what the benchmark left in it. */
static void cleanup(const char *dir)
{
	char cmd[256];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	(void)!system(cmd);
}

static const char *bench_program(const char *name)
{
	static char buf[512];
	snprintf(buf, sizeof buf, "%s/bench/%s", tu_build_dir(), name);
	return buf;
}

Test(bench, spa_lat_counts_each_methods_waits_over_a_real_link)
{
	char *dir = tu_tmpdir(), cmd[1024];
	snprintf(cmd, sizeof cmd, "%s --shape tiny --tokens 6 --link shm --cache %s",
		 tu_program("spa-lat"), dir);
	char *js = run_bench(dir, "lat", cmd);
	const double L = jnum(js, "n_layers", 0);
	cr_assert_eq(L, 4, "the tiny model has 4 blocks: %g", L);
	cr_assert_geq(jcount(js, "method"), 4); /* the table per link; the first is shm's */
	const char *want[] = { "lora", "adapter", "lst", "spa" };
	for (int i = 0; i < 4; i++) {
		char m[32];
		jstr(js, "method", i, m, sizeof m);
		cr_assert_str_eq(m, want[i]);
		const double M = jnum(js, "M", i);
		/* the paper's table: L waits a token for LoRA, 2L for adapters, 1 for LST, < 1 */
		const double want_M[] = { L, 2 * L, 1, -1 };
		if (i < 3)
			cr_assert_eq(M, want_M[i], "%s: M = %g", m, M);
		else
			cr_assert(M >= 0 && M < 1, "spa: M = %g", M);
		cr_assert_gt(jnum(js, "total_ms", i), 0);
		cr_assert_eq(jnum(js, "cloud_copied_tx_per_msg", i), 0, "%s: zero-copy send", m);
	}
	free(js);
	cleanup(dir);
}

Test(bench, xport_rtt_times_every_link_and_size_in_rounds)
{
	char *dir = tu_tmpdir(), cmd[1024];
	snprintf(cmd, sizeof cmd, "%s --links shm,udp,tcp --sizes 64,2K --iters 40 --warmup 5 "
		 "--rounds 2 --evict 256K", bench_program("xport-rtt"));
	char *js = run_bench(dir, "xport", cmd);
	cr_assert_eq(jnum(js, "rounds", 0), 2);
	cr_assert_eq(jnum(js, "evict_bytes", 0), 256 << 10);
	/* each link as it is and keyed (AEAD), side by side */
	cr_assert_eq(jcount(js, "link"), 12, "3 links x 2 (AEAD off, on) x 2 sizes");
	cr_assert_eq(jcount(js, "reason"), 0, "nothing skipped or failed");
	const char *links[] = { "shm", "shm+aead", "udp", "udp+aead", "tcp", "tcp+aead" };
	const double sizes[] = { 64, 2048 };
	for (int i = 0; i < 12; i++) {
		char l[32], a[32];
		jstr(js, "link", i, l, sizeof l);
		jstr(js, "aead", i, a, sizeof a);
		cr_assert_str_eq(l, links[i / 2]);
		cr_assert_eq(!strcmp(a, "none"), !strstr(l, "+aead"), "%s: aead %s", l, a);
		cr_assert_eq(jnum(js, "size", i), sizes[i % 2]);
		const double p50 = jnum(js, "p50_us", i), p99 = jnum(js, "p99_us", i);
		cr_assert(p50 > 0 && p50 <= p99 && p99 <= jnum(js, "p999_us", i), "%s: %g %g", l,
			  p50, p99);
		const double r = jnum(js, "ratio_vs_udp", i);
		if (!strncmp(l, "udp", 3))
			cr_assert_eq(r, 1, "%s is its own reference", l);
		else
			cr_assert(r > 0, "%s: ratio %g", l, r);
	}
	free(js);
	cleanup(dir);
}

/* decode on the tiny shape, one thread, 4 steps, with the given type and options (models made
 * into dir): its JSON, holding one row that decoded. */
static char *run_decode(const char *dir, const char *type, const char *opts)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "%s --shape tiny --type %s -t 1 -n 4 --prefill 4 --bw-mib 64 %s "
		 "--cache %s", bench_program("decode"), type, opts, dir);
	char *js = run_bench(dir, "decode", cmd);
	cr_assert_eq(jcount(js, "shape"), 1);
	cr_assert_gt(jnum(js, "tok_s", 0), 0);
	return js;
}

Test(bench, decode_reports_speed_fusions_prefill_and_every_budget)
{
	char *dir = tu_tmpdir();
	char *js = run_decode(dir, "f32", "--mem-budget");
	cr_assert_gt(jnum(js, "machine_gbs", 0), 0);
	cr_assert_gt(jnum(js, "ratio", 0), 0);
	cr_assert_gt(jnum(js, "head_fused_us", 0), 0);
	cr_assert_eq(jcount(js, "percent"), 3, "100 %%, 50 %% and 25 %% budgets");
	const double pct[] = { 100, 50, 25 };
	for (int b = 0; b < 3; b++) {
		cr_assert_eq(jnum(js, "percent", b), pct[b]);
		const double h = jnum(js, "hidden", b);
		if (b == 0)
			cr_assert(isnan(h));
		else
			cr_assert(h >= 0 && h <= 1, "%g %%: hidden %g", pct[b], h);
		if (b)
			cr_assert_gt(jnum(js, "io_ms", b), 0, "%g %% budget streams", pct[b]);
		const double nw = jnum(js, "no_wait", b);
		cr_assert(b == 0 ? isnan(nw) : nw >= 0 && nw <= 1, "%g %%: no_wait %g", pct[b], nw);
	}
	/* the cores' round trip beside each budget that streams, where there are two CPUs */
	if (sysconf(_SC_NPROCESSORS_ONLN) >= 2) {
		cr_assert_eq(jcount(js, "xcore_ns_before"), 2);
		cr_assert_eq(jcount(js, "xcore_ns_after"), 2);
		for (int b = 0; b < 2; b++)
			cr_assert(jnum(js, "xcore_ns_before", b) > 0 &&
				  jnum(js, "xcore_ns_after", b) > 0, "budget %d", b);
	}
	cr_assert_eq(jcount(js, "hidden_file_layout"), 0, "F32 is not packed: nothing again");
	free(js);
	cleanup(dir);
}

/* A Q4_0 model is packed at load: decode reports its kernel packed and on the file's rows, and
 * under a budget the I/O hidden with both sides as the file lays them out too. */
Test(bench, decode_reports_what_packing_q4_0_gives)
{
	char *dir = tu_tmpdir();
	char *js = run_decode(dir, "q4_0", "--mem-budget");
	cr_assert_gt(jnum(js, "kernel_gbs", 0), 0);
	cr_assert_gt(jnum(js, "kernel_file_gbs", 0), 0);
	/* under a budget, hidden again with both sides as the file lays them out, for each
	 * budget that streams (25 % of the tiny Q4_0 model cannot hold its head and ring) */
	const int n = jcount(js, "percent");
	cr_assert_geq(n, 2, "the whole model and 50 %%");
	cr_assert_eq(jcount(js, "hidden_file_layout"), n - 1);
	for (int b = 0; b < n - 1; b++) {
		const double h = jnum(js, "hidden_file_layout", b);
		cr_assert(h >= 0 && h <= 1, "budget %d: %g", b, h);
	}
	free(js);
	cleanup(dir);
}

Test(bench, load_compares_the_readers_on_one_file)
{
	char *dir = tu_tmpdir(), cmd[1024];
	snprintf(cmd, sizeof cmd, "%s --file %s --reps 1 --no-cold", bench_program("load"),
		 tu_tiny_model());
	char *js = run_bench(dir, "load", cmd);
	const int n = jcount(js, "method");
	cr_assert_geq(n, 3);
	int seen = 0;
	for (int i = 0; i < n; i++) {
		char m[64], c[16];
		jstr(js, "method", i, m, sizeof m);
		jstr(js, "cache", i, c, sizeof c);
		cr_assert_str_eq(c, "warm");
		cr_assert_gt(jnum(js, "gbs", i), 0, "%s", m);
		seen |= (strcmp(m, "read") == 0) | (strcmp(m, "mmap-memcpy") == 0) << 1 |
			(strcmp(m, "gguf-load") == 0) << 2;
	}
	cr_assert_eq(seen, 7, "read, mmap-memcpy and gguf-load all measured");
	free(js);
	cleanup(dir);
}
