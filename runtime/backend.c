/* Compute backends: choosing one (include/spa/backend.h) and the generic paths of the
 * optional ops (include/spa/drv/backend.h), made of the required ones with the same bits. */
#include <errno.h>
#include <string.h>

#include "spa/backend.h"
#include "spa/drv/backend.h"

static const char *const kind_names[SPA_BACKEND_KIND_COUNT] = { "auto", "cpu", "cuda" };

const char *spa_backend_kind_name(enum spa_backend_kind kind)
{
	return (unsigned)kind < SPA_BACKEND_KIND_COUNT ? kind_names[kind] : "?";
}

int spa_backend_parse(const char *s, enum spa_backend_kind *kind, struct spa_errbuf *err)
{
	for (int k = 0; s && k < SPA_BACKEND_KIND_COUNT; k++)
		if (strcmp(s, kind_names[k]) == 0) {
			*kind = (enum spa_backend_kind)k;
			return 0;
		}
	return spa_err(err, -SPA_EUSAGE, "backend '%s' is not one of cpu, cuda, auto",
		       s ? s : "(none)");
}

bool spa_backend_built(enum spa_backend_kind kind)
{
	/* The CUDA backend is its own piece of work (kernels/cuda/); until this build has it,
	 * only the CPU computes. */
	return kind == SPA_BACKEND_CPU || kind == SPA_BACKEND_AUTO;
}

int spa_backend_create(struct spa_backend **out, enum spa_backend_kind kind,
		       struct spa_pool *pool, struct spa_errbuf *err)
{
	*out = NULL;
	switch (kind) {
	case SPA_BACKEND_AUTO: /* no CUDA in this build: the CPU */
	case SPA_BACKEND_CPU: {
		int rc = spa_backend_cpu_create(out, pool);
		return rc < 0 ? spa_err(err, rc, "cannot create the CPU backend: out of memory")
			      : 0;
	}
	case SPA_BACKEND_CUDA:
		return spa_err(err, -SPA_EUNSUPPORTED, "this build of spa has no CUDA backend "
			       "(the GPU engine is not part of this version); use --backend cpu, "
			       "or auto to take the GPU when a build has one");
	default:
		return spa_err(err, -SPA_EUSAGE, "unknown backend kind %d", (int)kind);
	}
}

void spa_backend_destroy(struct spa_backend *be)
{
	if (be)
		be->ops->destroy(be);
}

const char *spa_backend_name(const struct spa_backend *be)
{
	return be->ops->name;
}

enum spa_backend_kind spa_backend_kind(const struct spa_backend *be)
{
	return be->kind;
}

/* ---------------------------------------------------------------- generic paths */

void spa_backend_matvec_items(struct spa_backend *be, unsigned n, const struct spa_matvec_item *it)
{
	if (be->ops->matvec_items) {
		be->ops->matvec_items(be, n, it);
		return;
	}
	for (unsigned k = 0; k < n; k++) {
		be->ops->matmul(be, it[k].w, it[k].x, it[k].y, 1);
		if (it[k].b)
			be->ops->add(be, it[k].y, it[k].b, it[k].w->rows);
	}
}

void spa_backend_matvec_swiglu(struct spa_backend *be, const struct spa_tensor *w_gate,
			       const struct spa_tensor *w_up, const float *x, float *out,
			       float *up)
{
	if (be->ops->matvec_swiglu) {
		be->ops->matvec_swiglu(be, w_gate, w_up, x, out, up);
		return;
	}
	be->ops->matmul(be, w_gate, x, out, 1);
	be->ops->matmul(be, w_up, x, up, 1);
	be->ops->swiglu(be, out, out, up, w_gate->rows);
}

void spa_backend_matvec_prepare(struct spa_backend *be, const float *x, uint64_t cols,
				enum spa_dtype type)
{
	if (be->ops->matvec_prepare)
		be->ops->matvec_prepare(be, x, cols, type);
	be->prep_x = x;
}

void spa_backend_matvec_prepared(struct spa_backend *be, const struct spa_tensor *w, float *y)
{
	if (be->ops->matvec_prepared)
		be->ops->matvec_prepared(be, w, y);
	else
		be->ops->matmul(be, w, be->prep_x, y, 1);
}
