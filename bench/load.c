/* bench/load: reading a model file into memory, method against method on the same file in one
 * run, warm page cache and cold.
 *
 * Every method moves its bytes into the same kind of destination: by default one buffer,
 * allocated once, page aligned, asked for huge pages and written once before the first run,
 * so that no method pays for page faults of the destination; with --fresh, a new buffer per
 * run (posix_memalign + MADV_HUGEPAGE, never written before), its allocation, faults and
 * free counted in every method's time. What each method does:
 *   read            read() of 4 MiB at a time, the whole file
 *   uring-buf-dN    spa_uring_reader, buffered, N reads of 4 MiB in flight, copied inline
 *   uring-async-dN  the same, copied by io_uring's kernel workers (SPA_URING_ASYNC: one
 *                   worker per CPU this process may run on)
 *   uring-direct-dN O_DIRECT (the file and buffer are aligned alike: all of it direct)
 *   mmap-touch      mmap + read one byte per 4 KiB page + munmap (no copy and no
 *                   destination: the data is then in the page cache only)
 *   mmap-memcpy     mmap + memcpy into the destination + munmap
 *   gguf-load       spa_gguf_load_data_into, default mode (SPA_LOAD_AUTO: mincore picks
 *                   the mapped copy warm, O_DIRECT cold), the data section only, into the
 *                   same destination: the loader the targets are about
 *   gguf-load-buffered  the same forced to SPA_LOAD_BUFFERED (warm only): buffered io_uring,
 *                   copied by the kernel's workers (what the default did before the mapped
 *                   copy, and its fallback when no lease can be taken)
 *   gguf-load-alloc spa_gguf_load_data_opts, default mode: allocates its own buffer every
 *                   time whatever --fresh says, faults it in on every CPU, loads (what a
 *                   program pays)
 *   gguf-load-alloc-nopf  the same with no_prefault (the load faults the buffer in)
 *   alloc-fault     allocate the file's size, fault it in, free it: no I/O
 * the io_uring times include creating the reader and destroying it; the model's header is
 * parsed once, before all runs. GB/s is the bytes each method moves (the file, or its data
 * section for the gguf rows) over its time.
 *
 * Rounds: every method once per round, the starting method rotating from round to round,
 * so that drifts (other jobs on the machine) spread over all methods. Warm: the file is
 * read once before each run. Cold: before each run the file's pages are dropped with
 * posix_fadvise(DONTNEED) and /proc/sys/vm/drop_caches (when writable); mincore() then
 * counts what is still resident (the table shows the worst). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"
#include "spa/spa.h"
#include "../runtime/cli/cli.h"

#define READ_CHUNK (4u << 20)
#define MAX_REPS 64

#define NO_PREFAULT 0x100 /* gguf rows: flags = mode | this */

enum kind { K_READ, K_URING, K_MMAP_TOUCH, K_MMAP_COPY, K_ALLOC, K_GGUF, K_GGUF_ALLOC };

struct method {
	const char *name;
	enum kind kind;
	unsigned depth;
	unsigned flags;
	bool cold_only;   /* O_DIRECT bypasses the cache: warm equals cold, measured cold only */
	bool warm_only;   /* gguf-load-buffered: cold, the loader goes O_DIRECT anyway */
	double t[2][MAX_REPS];
	double resident[2]; /* worst fraction of the file resident before a cold run */
	bool skipped;
	int used[2];        /* gguf rows: the mode spa_gguf_load_data used last, per cache state */
};

#define M(n, k, d, f, co, wo) {.name = n, .kind = k, .depth = d, .flags = f, .cold_only = co, \
			       .warm_only = wo}
static struct method methods[] = {
	M("read", K_READ, 0, 0, false, false),
	M("uring-buf-d8", K_URING, 8, 0, false, false),
	M("uring-async-d8", K_URING, 8, SPA_URING_ASYNC, false, false),
	M("uring-direct-d8", K_URING, 8, SPA_URING_DIRECT, true, false),
	M("uring-direct-d16", K_URING, 16, SPA_URING_DIRECT, true, false),
	M("mmap-touch", K_MMAP_TOUCH, 0, 0, false, false),
	M("mmap-memcpy", K_MMAP_COPY, 0, 0, false, false),
	M("gguf-load", K_GGUF, 0, 0, false, false),
	M("gguf-load-buffered", K_GGUF, 0, SPA_LOAD_BUFFERED, false, true),
	M("gguf-load-alloc", K_GGUF_ALLOC, 0, 0, false, false),
	M("gguf-load-alloc-nopf", K_GGUF_ALLOC, 0, NO_PREFAULT, false, false),
	M("alloc-fault", K_ALLOC, 0, 0, false, false),
};
#define N_METHODS (sizeof methods / sizeof *methods)

static const char *path;
static uint64_t fsize;
static uint8_t *buf;      /* the destination of this run */
static uint8_t *prebuf;   /* the destination faulted in once (without --fresh) */
static size_t buf_cap;
static bool fresh;
static struct spa_gguf *model;
static volatile uint64_t sink;
static char drop_how[160];
static size_t chunk;
static double settle = 3;

static void usage(void)
{
	printf("usage: load [--file PATH] [--reps N] [--no-cold] [--fresh] [--only NAME[,NAME..]]\n"
	       "            [--settle MS] [--chunk BYTES] [--shape NAME] [--type f32|f16] [--cpu N] [--json FILE]\n"
	       "Reads a model file with read(), io_uring (buffered, kernel workers, O_DIRECT), mmap\n"
	       "and spa_gguf_load_data, warm and cold page cache, and prints GB/s (median and the\n"
	       "slow tail) and the ratios the issue's targets are about.\n"
	       "Without --file it makes a synthetic model (spa_gen_base, shape 1b, f16: 1.1 GB)\n"
	       "once under $XDG_CACHE_HOME/spa or ~/.cache/spa.\n"
	       "  --reps N     runs per method and cache state (default 5)\n"
	       "  --no-cold    warm cache only\n"
	       "  --settle MS  after dropping the cache, wait this long before a cold run (default\n"
	       "               3000): in a VM with free page reporting the freed page cache goes\n"
	       "               back to the host within ~2 s; without the wait, whether the next\n"
	       "               buffered read finds its memory still backed depends on timing\n"
	       "  --fresh      a new destination buffer per run, its page faults counted (default:\n"
	       "               one buffer faulted in before all runs)\n"
	       "  --chunk B    bytes per io_uring read (default: the reader's, 4 MiB)\n"
	       "  --cpu N      pin to this CPU (default: not pinned; io_uring's kernel workers\n"
	       "               inherit the pin, so pinned the loader copies on that CPU only)\n");
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
	snprintf(drop_how, sizeof drop_how, "posix_fadvise(DONTNEED) %s; drop_caches %s; "
		 "then %.1f s settle", a == 0 ? "ok" : strerror(a),
		 wrote ? "written" : "not writable here", settle);
	if (settle > 0) {
		struct timespec ts = {.tv_sec = (time_t)settle,
				      .tv_nsec = (long)((settle - (double)(time_t)settle) * 1e9)};
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	return residency(fd);
}

static void warm_cache(int fd)
{
	static uint8_t scratch[READ_CHUNK];
	for (uint64_t off = 0; off < fsize;) {
		ssize_t r = pread(fd, scratch, READ_CHUNK, (off_t)off);
		if (r <= 0)
			break;
		off += (uint64_t)r;
	}
}

static uint64_t method_bytes(const struct method *m)
{
	if (m->kind == K_GGUF || m->kind == K_GGUF_ALLOC)
		return model->data_size;
	return fsize;
}

/* The destination of one run: the buffer faulted in once, or (--fresh) a new one. */
static int dest_get(void)
{
	if (!fresh) {
		buf = prebuf;
		return 0;
	}
	void *p;
	if (posix_memalign(&p, 4096, buf_cap) != 0)
		return -ENOMEM;
	madvise(p, buf_cap, MADV_HUGEPAGE);
	buf = p;
	return 0;
}

static void dest_put(void)
{
	if (fresh)
		free(buf);
	buf = NULL;
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

static int run_gguf(struct method *m, int c)
{
	struct spa_errbuf err = {{0}};
	enum spa_load_mode used = SPA_LOAD_AUTO;
	struct spa_load_opts o = {.mode = (enum spa_load_mode)(m->flags & 0xff), .chunk = chunk,
				  .used = &used, .no_prefault = m->flags & NO_PREFAULT};
	int rc;
	if (m->kind == K_GGUF) {
		rc = spa_gguf_load_data_into(model, buf, buf_cap, &o, &err);
	} else {
		void *data;
		size_t n;
		rc = spa_gguf_load_data_opts(model, &data, &n, &o, &err);
		if (rc == 0)
			free(data);
	}
	if (rc < 0)
		fprintf(stderr, "%s: %s\n", m->name, err.msg);
	m->used[c] = (int)used;
	return rc;
}

static const char *mode_name(int mode)
{
	switch (mode) {
	case SPA_LOAD_BUFFERED: return "buffered io_uring";
	case SPA_LOAD_DIRECT: return "O_DIRECT io_uring";
	case SPA_LOAD_PREAD: return "pread";
	case SPA_LOAD_MAPPED: return "mapped copy";
	}
	return "?";
}

static int run_one(int fd, struct method *m, int c)
{
	bool dest = m->kind != K_MMAP_TOUCH && m->kind != K_ALLOC && m->kind != K_GGUF_ALLOC;
	if (dest && dest_get() < 0)
		return -ENOMEM;
	int rc = -EINVAL;
	switch (m->kind) {
	case K_READ: rc = run_read(fd); break;
	case K_URING: rc = run_uring(fd, m); break;
	case K_MMAP_TOUCH: rc = run_mmap(fd, false); break;
	case K_MMAP_COPY: rc = run_mmap(fd, true); break;
	case K_ALLOC: rc = run_alloc(); break;
	case K_GGUF: case K_GGUF_ALLOC: rc = run_gguf(m, c); break;
	}
	if (dest)
		dest_put();
	return rc;
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
	r.gbs_med = (double)method_bytes(m) / r.med / 1e9;
	r.gbs_p99 = (double)method_bytes(m) / r.p99 / 1e9;
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
		else if (!strcmp(a, "--fresh"))
			fresh = true;
		else if (!strcmp(a, "--settle"))
			settle = (double)cli_int(a, cli_value(argc, argv, &i), 0, 600000) / 1000;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else
			cli_die(2, "unknown option '%s' (see --help)", a);
	}
	static char model_path[512];
	if (!path) {
		if (ensure_model(shape, type, model_path, sizeof model_path) < 0)
			cli_die(1, "cannot make a cache folder for the model; pass --file PATH");
		path = model_path;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode))
		cli_die(1, "%s: cannot open as a regular file: %s", path, strerror(errno));
	fsize = (uint64_t)sb.st_size;
	if (!fsize)
		cli_die(1, "%s: the file is empty", path);
	buf_cap = (fsize + 4095) / 4096 * 4096;
	struct spa_errbuf err = {{0}};
	if (spa_gguf_open(&model, path, &err) < 0)
		cli_die(1, "%s", err.msg);
	if (!fresh) {
		if (posix_memalign((void **)&prebuf, 4096, buf_cap) != 0)
			cli_die(1, "cannot allocate %zu bytes for the destination", buf_cap);
		madvise(prebuf, buf_cap, MADV_HUGEPAGE);
		memset(prebuf, 0, buf_cap); /* faulted in once, for every method alike */
	}
	int pinned = cpu >= 0 ? bu_pin(cpu) : -1;
	if (cpu >= 0 && pinned < 0)
		cli_die(1, "cannot pin to CPU %d", cpu);

	char mach[256], load0[64], load1[64];
	bu_machine(mach, sizeof mach);
	bu_load(load0, sizeof load0);
	printf("machine: %s\nfile: %s (%.3f GB, data section %.3f GB at offset %" PRIu64 ")\n"
	       "%s, pinned: %s, destination: %s\n", mach, path, fsize / 1e9,
	       model->data_size / 1e9, model->data_offset, load0,
	       pinned >= 0 ? "yes" : "no", fresh ? "fresh per run (--fresh)" : "faulted in once");
	fflush(stdout);

	for (int c = 0; c < (cold ? 2 : 1); c++) {
		for (size_t k = 0; k < N_METHODS; k++)
			methods[k].resident[c] = 0;
		for (int rep = 0; rep < reps; rep++) {
			for (size_t i = 0; i < N_METHODS; i++) {
				struct method *m = &methods[(i + (size_t)rep) % N_METHODS];
				if (!selected(only, m->name) || m->skipped ||
				    (c == 0 && m->cold_only) || (c == 1 && m->warm_only))
					continue;
				if (c == 0)
					warm_cache(fd);
				else {
					double res = drop_cache(fd);
					if (res > m->resident[c])
						m->resident[c] = res;
				}
				double t0 = spa_clock_s();
				int rc = run_one(fd, m, c);
				double t1 = spa_clock_s();
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
		bu_json_str(&j, "destination", fresh ? "fresh" : "faulted");
		bu_json_int(&j, "pinned_cpu", pinned >= 0 ? cpu : -1);
		bu_json_arr_begin(&j, "results");
	}
	printf("\n%-22s %-5s %9s %9s %9s %9s %9s\n", "method", "cache", "GB/s", "GB/s-p99",
	       "ms", "ms-p99", "resident");
	double best[2][N_METHODS];
	for (int c = 0; c < (cold ? 2 : 1); c++) {
		for (size_t k = 0; k < N_METHODS; k++) {
			struct method *m = &methods[k];
			best[c][k] = 0;
			if (!selected(only, m->name) || m->skipped || (c == 0 && m->cold_only) ||
			    (c == 1 && m->warm_only))
				continue;
			struct row r = summarize(m, c, reps);
			best[c][k] = r.gbs_med;
			const char *cache = c ? "cold" : "warm";
			char res[16] = "-";
			if (c)
				snprintf(res, sizeof res, "%.1f%%", 100 * m->resident[c]);
			char how[48] = "";
			if (m->kind == K_GGUF || m->kind == K_GGUF_ALLOC)
				snprintf(how, sizeof how, "  (%s)", mode_name(m->used[c]));
			printf("%-22s %-5s %9.2f %9.2f %9.1f %9.1f %9s%s\n", m->name, cache,
			       r.gbs_med, r.gbs_p99, r.med * 1e3, r.p99 * 1e3, res, how);
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
	/* Ratios against the targets (4, item 5): cold, against read(); warm, against the
	 * best of read() and mmap + memcpy (the methods that also leave the data in the
	 * destination; mmap-touch copies nothing, so it is shown apart). For the default loader
	 * (gguf-load) and for the best io_uring row. */
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
		if (ref <= 0)
			continue;
		const char *cs = c ? "cold" : "warm";
		double target = c ? 1.5 : 0.9;
		if (gl > 0)
			printf("%s: default loader gguf-load %.2f GB/s vs %s %.2f GB/s: %.2fx (target "
			       ">= %.1fx: %s)\n", cs, gl, methods[ri].name, ref, gl / ref, target,
			       gl / ref >= target ? "met" : "NOT met");
		if (u > 0)
			printf("%s: best io_uring row %s %.2f GB/s vs %s %.2f GB/s: %.2fx (target "
			       ">= %.1fx: %s)\n", cs, methods[ui].name, u, methods[ri].name, ref,
			       u / ref, target, u / ref >= target ? "met" : "NOT met");
		if (touch > 0 && gl > 0)
			printf("%s: mmap-touch (no copy, no destination) %.2f GB/s: gguf-load is "
			       "%.2fx of it\n", cs, touch, gl / touch);
		if (jok) {
			char key[48];
			snprintf(key, sizeof key, "ratio_%s_ref", cs);
			bu_json_str(&j, key, methods[ri].name);
			if (gl > 0) {
				snprintf(key, sizeof key, "ratio_%s_gguf_load", cs);
				bu_json_num(&j, key, gl / ref);
			}
			if (u > 0) {
				snprintf(key, sizeof key, "ratio_%s", cs);
				bu_json_num(&j, key, u / ref);
				snprintf(key, sizeof key, "ratio_%s_method", cs);
				bu_json_str(&j, key, methods[ui].name);
			}
			if (touch > 0 && gl > 0) {
				snprintf(key, sizeof key, "ratio_%s_gguf_load_vs_mmap_touch", cs);
				bu_json_num(&j, key, gl / touch);
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
	free(prebuf);
	spa_gguf_close(model);
	return 0;
}
