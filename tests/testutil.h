/* Helpers shared by the test suites (tests/testutil.c). */
#ifndef SPA_TESTUTIL_H
#define SPA_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* The meson build folder (SPA_BUILD_DIR, set by meson test). */
const char *tu_build_dir(void);
/* Path of a program of the build ("spa-run" -> BUILD/runtime/cli/spa-run). Static buffer. */
const char *tu_program(const char *name);
/* A tiny F32 base model made once per build folder by spa_gen_base (seed 1):
 * BUILD/tests/models/tiny-f32.gguf. Aborts the test when it cannot be made. */
const char *tu_tiny_model(void);
/* A plugin of kind "side" | "lora" | "adapter" for tu_tiny_model() (seed 2, side fraction 0.5),
 * made once: BUILD/tests/models/tiny-KIND.gguf. */
const char *tu_tiny_plugin(const char *kind);
/* A new empty temporary folder under /tmp, removed with its contents when the test's process
 * exits (kept when SPA_KEEP_TMP is set). Static buffer per call site ok. */
char *tu_tmpdir(void);
/* Run a shell command, capture stdout (and stderr when want_stderr) into out[cap] (NUL-ended).
 * Returns the exit status (0..255), or -1 when it could not run or was killed. */
int tu_run(const char *cmd, char *out, size_t cap, int want_stderr);
/* Fill x[n] with uniform floats in [-scale, scale) from a seed. */
void tu_rand(float *x, size_t n, uint64_t seed, float scale);
/* size bytes (4096 when 0) aligned to 4096, for free(); aborts the test when out of memory. */
void *tu_alloc_page(size_t size);
/* Write a buffer to a file; aborts the test on failure. */
void tu_write_file(const char *path, const void *buf, size_t size);
/* Read a whole file (malloc'd, NUL-terminated); *size set. NULL on failure. */
void *tu_read_file(const char *path, size_t *size);

#endif
