/* `meson install`: libspa, its public headers and spa.pc install into a staging folder
 * (DESTDIR), and a program written against them, built with `pkg-config --cflags --libs spa`
 * as one builds against liburing, opens a model of the generator's and says what it holds,
 * through the installed library (not the build's). */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/spa.h"
#include "testutil.h"

static const char program[] =
	"#define _GNU_SOURCE\n"
	"#include <dlfcn.h>\n"
	"#include <stdio.h>\n"
	"#include <spa/spa.h>\n"
	"\n"
	"int main(int argc, char **argv)\n"
	"{\n"
	"	struct spa_errbuf err;\n"
	"	struct spa_gguf *g;\n"
	"	if (argc != 2 || spa_gguf_open(&g, argv[1], &err) < 0) {\n"
	"		fprintf(stderr, \"%s\\n\", argc == 2 ? err.msg : \"usage: use FILE\");\n"
	"		return 1;\n"
	"	}\n"
	"	const char *arch = \"?\";\n"
	"	uint32_t layers = 0;\n"
	"	if (spa_gguf_get_str(g, \"general.architecture\", &arch, &err) < 0 ||\n"
	"	    spa_gguf_get_u32(g, \"llama.block_count\", &layers, &err) < 0) {\n"
	"		fprintf(stderr, \"%s\\n\", err.msg);\n"
	"		return 1;\n"
	"	}\n"
	"	Dl_info where = {0};\n"
	"	dladdr(dlsym(RTLD_DEFAULT, \"spa_gguf_open\"), &where);\n"
	"	printf(\"tensors %llu layers %u arch %s type %s\\n\",\n"
	"	       (unsigned long long)g->n_tensors, layers, arch,\n"
	"	       spa_dtype_name(g->tensors[0].type));\n"
	"	printf(\"%s\\n\", where.dli_fname ? where.dli_fname : \"?\");\n"
	"	spa_gguf_close(g);\n"
	"	return 0;\n"
	"}\n";

/* The first line of a command's output (stderr included), without its newline. */
static void first_line(const char *cmd, char *out, size_t cap)
{
	int rc = tu_run(cmd, out, cap, 1);
	cr_assert_eq(rc, 0, "%s\nexited with %d:\n%s", cmd, rc, out);
	out[strcspn(out, "\n")] = 0;
}

Test(install, a_program_builds_against_the_installed_library_with_pkg_config, .timeout = 120)
{
	const char *meson = getenv("SPA_MESON"), *cc = getenv("SPA_CC");
	cr_assert(meson && cc, "SPA_MESON and SPA_CC are not set: run the tests with `meson test`");
	char *dir = tu_tmpdir();
	char dest[PATH_MAX], cmd[6 * PATH_MAX], out[8192];
	snprintf(dest, sizeof dest, "%s/dest", dir);
	snprintf(cmd, sizeof cmd, "'%s' install -C '%s' --no-rebuild --quiet --destdir '%s'",
		 meson, tu_build_dir(), dest);
	int rc = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(rc, 0, "%s\nexited with %d:\n%s", cmd, rc, out);

	/* what was installed: spa.pc, the shared library, the public headers and no others */
	char pc[PATH_MAX], lib[PATH_MAX];
	snprintf(cmd, sizeof cmd, "find '%s' -name spa.pc", dest);
	first_line(cmd, pc, sizeof pc);
	cr_assert(strstr(pc, "/pkgconfig/spa.pc"), "no spa.pc under %s: '%s'", dest, pc);
	*strrchr(pc, '/') = 0;
	snprintf(cmd, sizeof cmd, "find '%s' -name libspa.so", dest);
	first_line(cmd, lib, sizeof lib);
	cr_assert(*lib, "no libspa.so under %s", dest);
	*strrchr(lib, '/') = 0;
	snprintf(cmd, sizeof cmd, "cd '%s' && find . -path '*/include/*' -type f | sort", dest);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "%s", out);
	cr_assert(strstr(out, "/include/spa/spa.h\n"), "%s", out);
	cr_assert(strstr(out, "/include/spa/gguf.h\n"), "%s", out);
	cr_assert(strstr(out, "/include/spa/drv/link.h\n"), "%s", out);
	cr_assert(!strstr(out, "_impl.h") && !strstr(out, "simd_avx2.h"),
		  "internal headers were installed:\n%s", out);

	/* build the program with what pkg-config says, from the staged prefix only */
	char src[PATH_MAX], exe[PATH_MAX], flags[PATH_MAX];
	snprintf(src, sizeof src, "%s/use.c", dir);
	snprintf(exe, sizeof exe, "%s/use", dir);
	tu_write_file(src, program, strlen(program));
	snprintf(cmd, sizeof cmd, "PKG_CONFIG_LIBDIR='%s' PKG_CONFIG_PATH= PKG_CONFIG_SYSROOT_DIR='%s' "
		 "pkg-config --cflags --libs spa", pc, dest);
	first_line(cmd, flags, sizeof flags);
	cr_assert(strstr(flags, "-lspa"), "%s", flags);
	cr_assert(strstr(flags, dest), "pkg-config points outside the staged prefix: %s", flags);
	snprintf(cmd, sizeof cmd, "%s -Wall -Wextra -Werror '%s' -o '%s' %s", cc, src, exe, flags);
	rc = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(rc, 0, "%s\nexited with %d:\n%s", cmd, rc, out);

	/* run it on a model of the generator's, with the installed library */
	snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH='%s' '%s' '%s'", lib, exe, tu_tiny_model());
	rc = tu_run(cmd, out, sizeof out, 1);
	cr_assert_eq(rc, 0, "%s\nexited with %d:\n%s", cmd, rc, out);
	struct spa_hparams hp;
	cr_assert_eq(spa_gen_shape("tiny", &hp), 0);
	/* a llama model: token_embd, output_norm, output, and 9 tensors per block */
	char want[PATH_MAX + 256];
	snprintf(want, sizeof want, "tensors %u layers %u arch llama type f32\n%s/libspa.so",
		 3 + 9 * hp.n_layers, hp.n_layers, lib);
	cr_assert(strncmp(out, want, strlen(want)) == 0, "the program printed\n%s\nexpected\n%s"
		  "...", out, want);
}
