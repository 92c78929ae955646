/* spa: the edge's responder (runtime/edge.c): the plugin's side of a method, answering one
 * request of the cloud's runner at a time, over a link (spa-edge, whose session loop is
 * spa_edge_run in serve.h) or in the same process (spa-run, through spa_local_xchg). */
#ifndef SPA_EDGE_H
#define SPA_EDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "plugin.h"
#include "runner.h"
#include "wire.h"

/* The edge's compute, answering one request. Scratch sized at create for max_batch rows
 * (0: SPA_RUNNER_DEFAULT_BATCH). Hot path. */
struct spa_edge;
int spa_edge_create(struct spa_edge **out, const struct spa_plugin *p, uint32_t max_batch);
void spa_edge_destroy(struct spa_edge *e);
/* Answer TAPS with spa_plugin_side_chain (unfused true, the default: measured faster on the
 * development machine) or with the fused chain spa_plugin_side_chain_fused (false); the bits
 * are the same. For bench/decode. */
void spa_edge_set_unfused(struct spa_edge *e, bool unfused);
/* in: the request's payload floats. Writes the reply's floats into out[out_cap], sets *n_out and
 * *reply. Returns 0, or -SPA_EPROTO when the request does not fit the plugin (wrong type for
 * the method, wrong size, layer out of range) with a message in err. */
int spa_edge_respond(struct spa_edge *e, enum spa_msg_type req, uint32_t layer, uint32_t n_rows,
		     const float *in, size_t n_in, float *out, size_t out_cap, size_t *n_out,
		     enum spa_msg_type *reply, struct spa_errbuf *err);
/* Floats in the reply to a request of n_rows rows (0 when req is not a request type). */
size_t spa_edge_reply_len(const struct spa_plugin *p, enum spa_msg_type req, uint32_t n_rows);

/* An in-process exchange for spa-run: calls spa_edge_respond directly. */
struct spa_local_xchg {
	struct spa_xchg x;
	struct spa_edge *edge;
	struct spa_errbuf err;
};
void spa_local_xchg_init(struct spa_local_xchg *lx, struct spa_edge *edge);

#endif
