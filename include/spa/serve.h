/* spa: serving (runtime/serve.c): the cloud's serve loop, which takes sessions one after
 * another and runs each with a runner whose exchange crosses the link, and the edge's session
 * loop, which answers the cloud's requests with its responder (edge.h) until DONE. The
 * messages and their order are docs/wire-protocol.md's ("A session"); their payloads,
 * payload.h's. */
#ifndef SPA_SERVE_H
#define SPA_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "error.h"
#include "link.h"
#include "model.h"
#include "payload.h"
#include "plugin.h"
#include "pool.h"
#include "runner.h"

struct spa_cloud_opts {
	const char *uri;
	struct spa_link_opts link;
	uint32_t max_sessions;    /* 0: serve forever */
	int64_t timeout_ns;       /* longest wait for an edge message inside a session */
	uint32_t max_batch;       /* prefill batch (0: SPA_RUNNER_DEFAULT_BATCH) */
	bool quiet;               /* no log lines for serving and for sessions done */
	/* Where the serve loop reports (one line per call, no newline): what it serves, each
	 * session done, each session that failed and why. Called from the serving thread; NULL:
	 * no lines. spa-cloud prints them on stderr after its name. */
	void (*log)(void *ctx, const char *line);
	void *log_ctx;
};
/* Serve sessions one after another until max_sessions have ended (or forever). A session that
 * fails is ended with an ERROR to its edge and a line to o->log; serving goes on. Returns 0,
 * or a negative code when the link cannot be set up. */
int spa_cloud_serve(const struct spa_model *m, struct spa_backend *be,
		    const struct spa_cloud_opts *o, struct spa_errbuf *err);

struct spa_edge_opts {
	const char *uri;
	struct spa_link_opts link;
	struct spa_gen_cfg cfg;
	uint32_t n_gen;
	int64_t timeout_ns;       /* connect, and each wait for the cloud */
	void (*on_token)(void *ctx, int32_t id);  /* as tokens arrive */
	void *ctx;
};
struct spa_edge_result {
	struct spa_gen_stats cloud; /* from DONE (step_ns malloc'd: free it) */
	struct spa_link_stats link;
	uint64_t edge_compute_ns;   /* measured here */
	uint64_t wall_ns;           /* PROMPT sent .. DONE received */
	uint64_t first_token_ns;    /* PROMPT sent .. first TOKEN */
	int32_t *tokens;            /* n_gen ids (malloc'd: free it) */
	uint32_t n_tokens;
	uint32_t session;
};
/* Run one session as the edge: HELLO, UPLOAD, PROMPT, answer requests, collect tokens. Returns
 * 0, or a negative code with err filled (the cloud's ERROR message included). */
int spa_edge_run(const struct spa_plugin *p, const int32_t *prompt, uint32_t n_prompt,
		 const struct spa_edge_opts *o, struct spa_edge_result *res, struct spa_errbuf *err);

/* Percentile (0..100) of n values (sorted copy; n > 0). */
uint64_t spa_percentile_u64(const uint64_t *v, uint32_t n, double pct);

#endif
