/* Helpers shared by the test suites. */
#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spa/spa.h"

const char *tu_build_dir(void)
{
	const char *d = getenv("SPA_BUILD_DIR");
	if (!d || !*d)
		cr_assert_fail("SPA_BUILD_DIR is not set: run the tests with `meson test`");
	return d;
}

const char *tu_program(const char *name)
{
	static char buf[PATH_MAX];
	snprintf(buf, sizeof buf, "%s/%s/%s", tu_build_dir(),
		 strcmp(name, "spa-lat") == 0 ? "bench" : "runtime/cli", name);
	return buf;
}

static void models_dir(char *buf, size_t size)
{
	snprintf(buf, size, "%s/tests/models", tu_build_dir());
	mkdir(buf, 0755);
}

const char *tu_tiny_model(void)
{
	static char path[PATH_MAX];
	char dir[PATH_MAX - 64];
	models_dir(dir, sizeof dir);
	snprintf(path, sizeof path, "%s/tiny-f32.gguf", dir);
	if (access(path, R_OK) == 0)
		return path;
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	int rc = spa_gen_base(&hp, SPA_TYPE_F32, 1, path, false, &err);
	if (rc < 0)
		cr_assert_fail("cannot make the tiny model: %s", err.msg);
	return path;
}

const char *tu_tiny_plugin(const char *kind)
{
	static char path[3][PATH_MAX];
	int k = strcmp(kind, "side") == 0 ? 0 : strcmp(kind, "lora") == 0 ? 1 : 2;
	char dir[PATH_MAX - 64];
	models_dir(dir, sizeof dir);
	snprintf(path[k], sizeof path[k], "%s/tiny-%s.gguf", dir, kind);
	if (access(path[k], R_OK) == 0)
		return path[k];
	const char *base = tu_tiny_model();
	struct spa_model *m = NULL;
	struct spa_errbuf err = {{0}};
	if (spa_model_load(&m, base, false, &err) < 0)
		cr_assert_fail("cannot load the tiny model: %s", err.msg);
	struct spa_plugin_gen_params gp = {
		.kind = (enum spa_plugin_kind)k, .seed = 2, .side_fraction = 0.5f,
	};
	int rc = spa_plugin_generate(m, &gp, path[k], &err);
	spa_model_destroy(m);
	if (rc < 0)
		cr_assert_fail("cannot make the tiny %s plugin: %s", kind, err.msg);
	return path[k];
}

/* The folders tu_tmpdir made in this process, removed when it exits (each test runs in its
 * own process) unless SPA_KEEP_TMP is set (to look at a failed test's files). */
static char *made[256];
static int n_made;
static pid_t made_by;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	remove(path);
	return 0;
}

static void rm_made(void)
{
	if (getpid() != made_by || getenv("SPA_KEEP_TMP"))
		return;
	for (int i = 0; i < n_made; i++)
		nftw(made[i], rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

char *tu_tmpdir(void)
{
	static char buf[8][64];
	static int i;
	char *b = buf[i++ % 8];
	snprintf(b, 64, "/tmp/spa-test-XXXXXX");
	if (!mkdtemp(b))
		cr_assert_fail("mkdtemp: %s", strerror(errno));
	if (made_by != getpid()) { /* a new test process: its own list */
		for (int k = 0; k < n_made; k++)
			free(made[k]);
		n_made = 0;
		if (!made_by)
			atexit(rm_made);
		made_by = getpid();
	}
	if (n_made < (int)(sizeof made / sizeof made[0]))
		made[n_made++] = strdup(b);
	return b;
}

int tu_run(const char *cmd, char *out, size_t cap, int want_stderr)
{
	char full[8192];
	snprintf(full, sizeof full, "%s%s", cmd, want_stderr ? " 2>&1" : "");
	FILE *f = popen(full, "r");
	if (!f)
		return -1;
	size_t n = 0;
	if (out && cap) {
		size_t r;
		while (n + 1 < cap && (r = fread(out + n, 1, cap - 1 - n, f)) > 0)
			n += r;
		out[n] = 0;
	}
	char sink[4096];
	while (fread(sink, 1, sizeof sink, f) > 0)
		;
	int st = pclose(f);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

void tu_rand(float *x, size_t n, uint64_t seed, float scale)
{
	struct spa_rng r;
	spa_rng_seed(&r, seed);
	for (size_t i = 0; i < n; i++)
		x[i] = spa_rng_uniform(&r) * scale;
}

void *tu_alloc_page(size_t size)
{
	void *p = NULL;
	cr_assert_eq(posix_memalign(&p, 4096, size ? size : 4096), 0);
	return p;
}

void tu_write_file(const char *path, const void *buf, size_t size)
{
	FILE *f = fopen(path, "wb");
	cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
	cr_assert_eq(fwrite(buf, 1, size, f), size);
	fclose(f);
}

void *tu_read_file(const char *path, size_t *size)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	if (b) {
		b[n] = 0;
		if (size)
			*size = (size_t)n;
	}
	return b;
}
