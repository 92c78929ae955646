/* bench/load: reading a model file into memory, method against method on the same file in one
 * run, warm page cache and cold.
 *
 * Every method moves the whole file (offset 0 to its end) into one destination buffer,
 * allocated once, page aligned and written once before the first run so that page faults of
 * the destination are counted by no method (spa_gguf_load_data, listed apart, does count
 * its own allocation and faults: it is what a program pays). What each method counts:
 *   read            read() of 4 MiB at a time into the buffer
 *   uring-buf-dN    spa_uring_reader, buffered, N reads of 4 MiB in flight
 *   uring-buf-d8-fixed   same with the buffer registered (READ_FIXED)
 *   uring-async-dN  buffered, pieces handed to io_uring's kernel workers (IOSQE_ASYNC)
 *   uring-direct-dN O_DIRECT (the file and buffer are aligned alike: all of it direct)
 *   mmap-touch      mmap + read one byte per 4 KiB page + munmap (no copy: the data is
 *                   then in the page cache only, as a mapped loader uses it)
 *   mmap-memcpy     mmap + memcpy into the buffer + munmap (a mapped loader that wants its
 *                   own copy)
 *   alloc-fault     allocate the file's size, fault it in, free it: no I/O (see run_alloc)
 *   gguf-load       spa_gguf_open + spa_gguf_load_data_opts, default mode (buffered io_uring):
 *                   allocates its buffer, faults it in, reads the data section (all counted)
 *   gguf-load-direct   the same with O_DIRECT (staged through registered buffers)
 * the io_uring times include creating the reader (and registering) and destroying it.
 *
 * Cold: before each cold run the file's pages are dropped with posix_fadvise(DONTNEED)
 * (and /proc/sys/vm/drop_caches when writable); mincore() then counts what is still resident,
 * reported per run (the table shows the worst). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "benchutil.h"
#include "spa/spa.h"
#include "../runtime/cli/cli.h"

#define READ_CHUNK (4u << 20)
#define MAX_REPS 64

enum kind { K_READ, K_URING, K_MMAP_TOUCH, K_MMAP_COPY, K_ALLOC, K_GGUF };

struct method {
	const char *name;
	enum kind kind;
	unsigned depth;
	unsigned flags;
	bool fixed;
	bool cold_only;   /* O_DIRECT bypasses the cache: warm equals cold, measured cold only */
	double t[2][MAX_REPS];
	double resident[2]; /* worst fraction of the file resident before a cold run */
	bool skipped;
};

#define M(n, k, d, f, fx, co) {.name = n, .kind = k, .depth = d, .flags = f, .fixed = fx, \
				.cold_only = co}
static struct method methods[] = {
	M("read", K_READ, 0, 0, false, false),
	M("uring-buf-d1", K_URING, 1, 0, false, false),
	M("uring-buf-d4", K_URING, 4, 0, false, false),
	M("uring-buf-d8", K_URING, 8, 0, false, false),
	M("uring-buf-d8-fixed", K_URING, 8, 0, true, false),
	M("uring-async-d4", K_URING, 4, SPA_URING_ASYNC, false, false),
	M("uring-async-d8", K_URING, 8, SPA_URING_ASYNC, false, false),
	M("uring-direct-d4", K_URING, 4, SPA_URING_DIRECT, false, true),
	M("uring-direct-d8", K_URING, 8, SPA_URING_DIRECT, false, true),
	M("uring-direct-d8-fixed", K_URING, 8, SPA_URING_DIRECT, true, true),
	M("mmap-touch", K_MMAP_TOUCH, 0, 0, false, false),
	M("mmap-memcpy", K_MMAP_COPY, 0, 0, false, false),
	M("alloc-fault", K_ALLOC, 0, 0, false, false),
	M("gguf-load", K_GGUF, 0, SPA_LOAD_AUTO, false, false),
	M("gguf-load-direct", K_GGUF, 0, SPA_LOAD_DIRECT, false, true),
};
#define N_METHODS (sizeof methods / sizeof *methods)

static const char *path;
static uint64_t fsize;
static uint8_t *buf;
static size_t buf_cap;
static volatile uint64_t sink;
static char drop_how[160];
static size_t chunk;

static void usage(void)
{
	printf("usage: load [--file PATH] [--reps N] [--no-cold] [--only NAME[,NAME..]]\n"
	       "            [--chunk BYTES]\n"
	       "            [--shape NAME] [--type f32|f16] [--cpu N] [--json FILE]\n"
	       "Reads a model file with read(), io_uring (buffered, O_DIRECT, registered buffers)\n"
	       "and mmap, warm and cold page cache, and prints GB/s (median and the slow tail).\n"
	       "Without --file it makes a synthetic model (spa_gen_base, shape 1b, f16: 1.1 GB)\n"
	       "once under $XDG_CACHE_HOME/spa or ~/.cache/spa.\n"
	       "  --reps N     runs per method and cache state (default 5)\n"
	       "  --no-cold    warm cache only\n"
	       "  --chunk B    bytes per io_uring read (default: the reader's, 4 MiB)\n"
	       "  --cpu N      pin to this CPU (default: core 0)\n");
}

static int ensure_model(const char *shape, enum spa_dtype type, char *out, size_t cap)
{
	const char *base = getenv("XDG_CACHE_HOME");
	char dir[400];
	if (base && *base)
		snprintf(dir, sizeof dir, "%s/spa", base);
	else
		snprintf(dir, sizeof dir, "%s/.cache/spa", getenv("HOME") ? getenv("HOME") : "/tmp");
	char mk[450];
	snprintf(mk, sizeof mk, "mkdir -p '%s'", dir);
	if (system(mk) != 0)
		return -EIO;
	snprintf(out, cap, "%s/bench-load-%s-%s.gguf", dir, shape, spa_dtype_name(type));
	if (access(out, R_OK) == 0)
		return 0;
	struct spa_hparams hp;
	int rc = spa_gen_shape(shape, &hp);
	if (rc < 0)
		cli_die(2, "--shape %s: unknown shape (tiny, default, 1b, llama-7b)", shape);
	struct spa_errbuf err = {{0}};
	fprintf(stderr, "making %s (once)\n", out);
	rc = spa_gen_base(&hp, type, 1, out, true, &err);
	if (rc < 0)
		cli_die(1, "%s", err.msg);
	return 0;
}

/* Drop the file from the page cache; returns the resident fraction afterwards (mincore). */
static double residency(int fd)
{
	void *m = mmap(NULL, fsize, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return -1;
	size_t pg = 4096, n = (fsize + pg - 1) / pg, in = 0;
	unsigned char *v = malloc(n);
	if (v && mincore(m, fsize, v) == 0)
		for (size_t i = 0; i < n; i++)
			in += v[i] & 1;
	free(v);
	munmap(m, fsize);
	return (double)in / (double)n;
}

static double drop_cache(int fd)
{
	fdatasync(fd);
	int a = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	int dc = open("/proc/sys/vm/drop_caches", O_WRONLY);
	bool wrote = false;
	if (dc >= 0) {
		wrote = write(dc, "1\n", 2) == 2;
		close(dc);
	}
	snprintf(drop_how, sizeof drop_how, "posix_fadvise(DONTNEED) %s; drop_caches %s",
		 a == 0 ? "ok" : strerror(a), wrote ? "written" : "not writable here");
	return residency(fd);
}

static void warm_cache(int fd)
{
	for (uint64_t off = 0; off < fsize;) {
		ssize_t r = pread(fd, buf, READ_CHUNK, (off_t)off);
		if (r <= 0)
			break;
		off += (uint64_t)r;
	}
}

static int run_read(int fd)
{
	if (lseek(fd, 0, SEEK_SET) < 0)
		return -errno;
	for (uint64_t off = 0; off < fsize;) {
		size_t n = fsize - off < READ_CHUNK ? (size_t)(fsize - off) : READ_CHUNK;
		ssize_t r = read(fd, buf + off, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		off += (uint64_t)r;
	}
	return 0;
}

static int run_uring(int fd, const struct method *m)
{
	struct spa_errbuf err = {{0}};
	struct spa_uring_reader *r;
	int rc = spa_uring_reader_create(&r, fd, m->depth, m->flags | SPA_URING_QUIET, &err);
	if (rc < 0) {
		fprintf(stderr, "%s: %s\n", m->name, err.msg);
		return rc;
	}
	spa_uring_reader_set_chunk(r, chunk);
	if (m->fixed) {
		struct iovec iov = {.iov_base = buf, .iov_len = buf_cap};
		if ((rc = spa_uring_reader_register(r, &iov, 1, &err)) < 0)
			fprintf(stderr, "%s: %s\n", m->name, err.msg);
	}
	if (rc == 0)
		rc = spa_uring_read_async(r, buf, 0, (size_t)fsize, 1);
	if (rc == 0)
		rc = spa_uring_wait(r, 1, -1);
	if (rc < 0)
		fprintf(stderr, "%s: %s\n", m->name, spa_uring_reader_errmsg(r));
	struct spa_uring_stats st;
	spa_uring_reader_stats(r, &st);
	spa_uring_reader_destroy(r);
	if (rc == 0 && (m->flags & SPA_URING_DIRECT) && st.bytes_direct < fsize / 2)
		return 1; /* O_DIRECT refused: not what this row is about */
	return rc;
}

static int run_mmap(int fd, bool copy)
{
	uint8_t *p = mmap(NULL, fsize, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	madvise(p, fsize, MADV_SEQUENTIAL);
	if (copy) {
		memcpy(buf, p, fsize);
	} else {
		uint64_t s = 0;
		for (uint64_t off = 0; off < fsize; off += 4096)
			s += p[off];
		sink += s;
	}
	munmap(p, fsize);
	return 0;
}

/* What a loader pays for fresh memory alone: allocate the file's size, fault it in (huge
 * pages, as spa_gguf_load_data asks for), free it. In a VM whose host takes back free guest
 * memory, the first fresh gigabyte after a pause costs seconds; the rows after this one
 * then measure their reads, not that. */
static int run_alloc(void)
{
	void *p;
	if (posix_memalign(&p, 4096, buf_cap) != 0)
		return -ENOMEM;
	madvise(p, buf_cap, MADV_HUGEPAGE);
	memset(p, 1, buf_cap);
	sink += ((volatile uint8_t *)p)[buf_cap / 2];
	free(p);
	return 0;
}

static int run_gguf(const struct method *m)
{
	struct spa_errbuf err = {{0}};
	struct spa_gguf *g;
	int rc = spa_gguf_open(&g, path, &err);
	if (rc < 0) {
		fprintf(stderr, "gguf-load: %s\n", err.msg);
		return rc;
	}
	void *data;
	size_t n;
	struct spa_load_opts o = {.mode = (enum spa_load_mode)m->flags, .chunk = chunk};
	rc = spa_gguf_load_data_opts(g, &data, &n, &o, &err);
	if (rc < 0)
		fprintf(stderr, "gguf-load: %s\n", err.msg);
	else
		free(data);
	spa_gguf_close(g);
	return rc;
}

static int run_one(int fd, struct method *m)
{
	switch (m->kind) {
	case K_READ: return run_read(fd);
	case K_URING: return run_uring(fd, m);
	case K_MMAP_TOUCH: return run_mmap(fd, false);
	case K_MMAP_COPY: return run_mmap(fd, true);
	case K_ALLOC: return run_alloc();
	case K_GGUF: return run_gguf(m);
	}
	return -EINVAL;
}

static bool selected(const char *only, const char *name)
{
	if (!only)
		return true;
	size_t n = strlen(name);
	for (const char *p = only; (p = strstr(p, name)); p += n)
		if ((p == only || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
			return true;
	return false;
}

struct row {
	double med, p99, gbs_med, gbs_p99;
};

static struct row summarize(const struct method *m, int c, int reps)
{
	double t[MAX_REPS];
	memcpy(t, m->t[c], sizeof(double) * (size_t)reps);
	struct row r;
	r.med = bu_percentile(t, (size_t)reps, 50);
	r.p99 = bu_percentile(t, (size_t)reps, 99);
	r.gbs_med = fsize / r.med / 1e9;
	r.gbs_p99 = fsize / r.p99 / 1e9;
	return r;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	const char *json = NULL, *only = NULL, *shape = "1b";
	enum spa_dtype type = SPA_TYPE_F16;
	int reps = 5, cpu = -1;
	bool cold = true;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--file"))
			path = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--reps"))
			reps = (int)cli_int(a, cli_value(argc, argv, &i), 1, MAX_REPS);
		else if (!strcmp(a, "--json"))
			json = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--chunk"))
			chunk = (size_t)cli_int(a, cli_value(argc, argv, &i), 4096, 1 << 30);
		else if (!strcmp(a, "--only"))
			only = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--shape"))
			shape = cli_value(argc, argv, &i);
		else if (!strcmp(a, "--type")) {
			const char *v = cli_value(argc, argv, &i);
			int t = spa_dtype_from_name(v);
			if (t != SPA_TYPE_F32 && t != SPA_TYPE_F16)
				cli_die(2, "--type %s: expected f32 or f16", v);
			type = (enum spa_dtype)t;
		} else if (!strcmp(a, "--cpu"))
			cpu = cli_cpu(a, cli_value(argc, argv, &i));
		else if (!strcmp(a, "--no-cold"))
			cold = false;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	static char model[512];
	if (!path) {
		if (ensure_model(shape, type, model, sizeof model) < 0)
			cli_die(1, "cannot make a cache folder for the model; pass --file PATH");
		path = model;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode))
		cli_die(1, "%s: cannot open as a regular file: %s", path, strerror(errno));
	fsize = (uint64_t)sb.st_size;
	if (!fsize)
		cli_die(1, "%s: the file is empty", path);
	buf_cap = (fsize + 4095) / 4096 * 4096;
	if (posix_memalign((void **)&buf, 4096, buf_cap) != 0)
		cli_die(1, "cannot allocate %zu bytes for the destination", buf_cap);
	madvise(buf, buf_cap, MADV_HUGEPAGE);
	memset(buf, 0, buf_cap); /* fault the destination in once, for every method alike */
	int pinned = cpu >= 0 ? bu_pin(cpu) : bu_pin_core(0);

	char mach[256], load0[64], load1[64];
	bu_machine(mach, sizeof mach);
	bu_load(load0, sizeof load0);
	printf("machine: %s\nfile: %s (%.3f GB)\n%s, pinned: %s\n", mach, path, fsize / 1e9,
	       load0, pinned >= 0 ? "yes" : "no");
	fflush(stdout);

	for (int c = 0; c < (cold ? 2 : 1); c++) {
		for (size_t k = 0; k < N_METHODS; k++)
			methods[k].resident[c] = 0;
		/* Rounds: every method once per round, so slow drifts (other jobs) spread over
		 * all methods instead of landing on one. */
		for (int rep = 0; rep < reps; rep++) {
			for (size_t k = 0; k < N_METHODS; k++) {
				struct method *m = &methods[k];
				if (!selected(only, m->name) || m->skipped || (c == 0 && m->cold_only))
					continue;
				if (c == 0)
					warm_cache(fd);
				else {
					double res = drop_cache(fd);
					if (res > m->resident[c])
						m->resident[c] = res;
				}
				double t0 = bu_now_s();
				int rc = run_one(fd, m);
				double t1 = bu_now_s();
				if (rc != 0) {
					fprintf(stderr, "%s: skipped (%s)\n", m->name,
						rc > 0 ? "O_DIRECT refused by the file system"
						       : spa_strerror(rc));
					m->skipped = true;
					continue;
				}
				m->t[c][rep] = t1 - t0;
			}
		}
	}
	bu_load(load1, sizeof load1);
	if (cold)
		printf("cold: %s\n", drop_how);

	struct bu_json j;
	bool jok = json && bu_json_open(&j, json) == 0;
	if (json && !jok)
		cli_die(1, "%s: cannot write the JSON file", json);
	if (jok) {
		bu_json_obj_begin(&j, NULL);
		bu_json_str(&j, "machine", mach);
		bu_json_str(&j, "file", path);
		bu_json_int(&j, "file_bytes", (int64_t)fsize);
		bu_json_int(&j, "reps", reps);
		bu_json_str(&j, "load_before", load0);
		bu_json_str(&j, "load_after", load1);
		bu_json_str(&j, "cold_drop", cold ? drop_how : "none");
		bu_json_arr_begin(&j, "results");
	}
	printf("\n%-22s %-5s %9s %9s %9s %9s %9s\n", "method", "cache", "GB/s", "GB/s-p99",
	       "ms", "ms-p99", "resident");
	double best[2][N_METHODS];
	for (int c = 0; c < (cold ? 2 : 1); c++) {
		for (size_t k = 0; k < N_METHODS; k++) {
			struct method *m = &methods[k];
			best[c][k] = 0;
			if (!selected(only, m->name) || m->skipped || (c == 0 && m->cold_only))
				continue;
			struct row r = summarize(m, c, reps);
			best[c][k] = r.gbs_med;
			const char *cache = c ? "cold" : "warm";
			char res[16] = "-";
			if (c)
				snprintf(res, sizeof res, "%.1f%%", 100 * m->resident[c]);
			printf("%-22s %-5s %9.2f %9.2f %9.1f %9.1f %9s\n", m->name, cache, r.gbs_med,
			       r.gbs_p99, r.med * 1e3, r.p99 * 1e3, res);
			if (jok) {
				bu_json_obj_begin(&j, NULL);
				bu_json_str(&j, "method", m->name);
				bu_json_str(&j, "cache", cache);
				bu_json_num(&j, "gbs", r.gbs_med);
				bu_json_num(&j, "gbs_p99", r.gbs_p99);
				bu_json_num(&j, "ms_median", r.med * 1e3);
				bu_json_num(&j, "ms_p99", r.p99 * 1e3);
				if (c)
					bu_json_num(&j, "resident_before_max", m->resident[c]);
				bu_json_obj_end(&j);
			}
		}
	}
	if (jok)
		bu_json_arr_end(&j);
	/* Ratios against the targets (4): the best io_uring row against read() (and,
	 * warm, against the best of read() and mmap + memcpy, the methods that also leave the
	 * data in the program's own buffer); mmap-touch copies nothing, so it is shown apart. */
	printf("\n");
	for (int c = 0; c < (cold ? 2 : 1); c++) {
		double u = 0, ref = 0, touch = 0, gl = 0;
		size_t ui = 0, ri = 0;
		for (size_t k = 0; k < N_METHODS; k++) {
			const char *nm = methods[k].name;
			double v = best[c][k];
			if (!strncmp(nm, "uring-", 6) && v > u) {
				u = v;
				ui = k;
			}
			if ((!strcmp(nm, "read") || (c == 0 && !strcmp(nm, "mmap-memcpy"))) &&
			    v > ref) {
				ref = v;
				ri = k;
			}
			if (!strcmp(nm, "mmap-touch"))
				touch = v;
			if (!strcmp(nm, "gguf-load"))
				gl = v;
		}
		if (u <= 0 || ref <= 0)
			continue;
		const char *cs = c ? "cold" : "warm";
		double target = c ? 1.5 : 0.9;
		printf("%s: best io_uring %s %.2f GB/s vs %s %.2f GB/s: %.2fx (target >= %.1fx: "
		       "%s)\n", cs, methods[ui].name, u, methods[ri].name, ref, u / ref, target,
		       u / ref >= target ? "met" : "NOT met");
		if (gl > 0)
			printf("%s: gguf-load (default mode, allocation included) %.2f GB/s: %.2fx "
			       "%s\n", cs, gl, gl / ref, methods[ri].name);
		if (touch > 0)
			printf("%s: mmap-touch (no copy) %.2f GB/s: io_uring is %.2fx of it\n", cs,
			       touch, u / touch);
		if (jok) {
			char key[48];
			snprintf(key, sizeof key, "ratio_%s", cs);
			bu_json_num(&j, key, u / ref);
			snprintf(key, sizeof key, "ratio_%s_method", cs);
			bu_json_str(&j, key, methods[ui].name);
			snprintf(key, sizeof key, "ratio_%s_ref", cs);
			bu_json_str(&j, key, methods[ri].name);
			snprintf(key, sizeof key, "ratio_%s_gguf_load", cs);
			bu_json_num(&j, key, gl / ref);
			if (touch > 0) {
				snprintf(key, sizeof key, "ratio_%s_vs_mmap_touch", cs);
				bu_json_num(&j, key, u / touch);
			}
		}
	}
	printf("%s\n", load1);
	if (jok) {
		bu_json_obj_end(&j);
		if (bu_json_close(&j) < 0)
			cli_die(1, "%s: write failed", json);
	}
	close(fd);
	free(buf);
	return 0;
}
