/* spa: compute backends (runtime/backend.c; the CPU's in kernels/cpu/backend.c). A backend
 * runs the ops of a decode or prefill step (include/spa/drv/backend.h lists them) on one
 * device: the CPU with a thread pool, or a GPU. Contexts (include/spa/context.h) are created
 * on a backend and computed there.
 *
 * A backend instance is used by one thread at a time (it runs its own pool and keeps scratch):
 * contexts used from several threads at once each take a backend of their own, over one copy
 * of the model's weights. */
#ifndef SPA_BACKEND_H
#define SPA_BACKEND_H

#include <stdbool.h>

#include "error.h"
#include "pool.h"

enum spa_backend_kind {
	SPA_BACKEND_AUTO = 0, /* CUDA when this build has it and a device is present, else CPU */
	SPA_BACKEND_CPU,
	SPA_BACKEND_CUDA,
	SPA_BACKEND_KIND_COUNT
};

struct spa_backend;

/* "auto", "cpu", "cuda" -> *kind. Returns 0, or -SPA_EUSAGE with a message in err naming the
 * choices. */
int spa_backend_parse(const char *s, enum spa_backend_kind *kind, struct spa_errbuf *err);
const char *spa_backend_kind_name(enum spa_backend_kind kind);

/* A backend of the given kind. The CPU computes with pool (borrowed, may be NULL: the calling
 * thread alone). AUTO takes CUDA when this build has the CUDA backend and a device answers,
 * else the CPU. CUDA that this build lacks, or with no device, is -SPA_EUNSUPPORTED with err
 * saying why and what to do (never an abort). Returns 0, -SPA_EUNSUPPORTED, -ENOMEM. Not
 * thread-safe against destroy; free with spa_backend_destroy (NULL does nothing). */
int spa_backend_create(struct spa_backend **out, enum spa_backend_kind kind,
		       struct spa_pool *pool, struct spa_errbuf *err);
void spa_backend_destroy(struct spa_backend *be);

/* "cpu" or "cuda"; the kind an AUTO backend became. */
const char *spa_backend_name(const struct spa_backend *be);
enum spa_backend_kind spa_backend_kind(const struct spa_backend *be);
/* Whether this build has the backend (CUDA: compiled with nvcc); a device may still be
 * missing at run time. */
bool spa_backend_built(enum spa_backend_kind kind);

#endif
