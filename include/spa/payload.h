/* spa: the payloads of a session's control messages (runtime/payload.c): HELLO, HELLO_OK,
 * PROMPT and DONE, laid out as docs/wire-protocol.md ("Message payloads") says: little-endian,
 * fixed offsets, reserved bytes zero. The wire header (wire.h) frames them; the serve loops
 * (serve.h) send them and check them against the model and the plugin.
 *
 * Encoders write every byte of their fixed part and cannot fail. Decoders check the length and
 * what needs no other context, and return 0 or -SPA_EPROTO with a message in err (may be
 * NULL). All are thread-safe and allocate nothing; not on the hot path. */
#ifndef SPA_PAYLOAD_H
#define SPA_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "sampler.h"

#define SPA_PAYLOAD_HELLO_SIZE 56u
#define SPA_PAYLOAD_HELLO_OK_SIZE 64u
#define SPA_PAYLOAD_PROMPT_HDR 32u   /* then n_prompt int32 token ids */
#define SPA_PAYLOAD_DONE_HDR 144u    /* then n_tokens uint64 per-token wall times */

/* HELLO (edge -> cloud): the method, the plugin, and the base it was made for. */
struct spa_hello {
	uint8_t method, split, merge, kind;  /* enum spa_method, spa_split, spa_merge, plugin kind */
	uint32_t rank, n_layers, n_embd, kv_dim;
	char base_fp[17], plugin_fp[17];     /* 16 hex digits + NUL */
};
void spa_payload_encode_hello(const struct spa_hello *h, uint8_t out[SPA_PAYLOAD_HELLO_SIZE]);
/* Also refuses unknown method, split, merge or kind, a nonzero reserved field, a malformed
 * fingerprint, a method with the wrong plugin kind, and a rank outside 1..4096. */
int spa_payload_decode_hello(const uint8_t *b, size_t len, struct spa_hello *h,
			     struct spa_errbuf *err);

/* HELLO_OK (cloud -> edge): the session id and the base model's shape. */
struct spa_hello_ok {
	uint32_t session, n_layers, n_embd, kv_dim, n_vocab, n_ctx;
	uint32_t max_batch;                  /* rows per request at most (the prefill batch) */
	char base_fp[17];                    /* 16 hex digits + NUL */
	uint64_t n_params;                   /* the base model's */
};
void spa_payload_encode_hello_ok(const struct spa_hello_ok *h,
				 uint8_t out[SPA_PAYLOAD_HELLO_OK_SIZE]);
/* Checks the length; the edge compares the rest with its plugin. */
int spa_payload_decode_hello_ok(const uint8_t *b, size_t len, struct spa_hello_ok *h,
				struct spa_errbuf *err);

/* PROMPT (edge -> cloud): the prompt's token ids, how many tokens to make, and how to sample. */
struct spa_prompt {
	uint32_t n_prompt, n_gen;
	struct spa_sampler_params sp;
	const int32_t *ids;                  /* n_prompt ids; decode: points into the payload */
};
/* Bytes of a PROMPT of n_prompt tokens. */
size_t spa_payload_prompt_size(uint32_t n_prompt);
/* Writes spa_payload_prompt_size(p->n_prompt) bytes at out. */
void spa_payload_encode_prompt(const struct spa_prompt *p, uint8_t *out);
/* Also refuses n_prompt == 0 and a length other than the ids'. The range of the ids and the
 * context are the cloud's to check. */
int spa_payload_decode_prompt(const uint8_t *b, size_t len, struct spa_prompt *p,
			      struct spa_errbuf *err);

/* Statistics of a finished generation, measured on the cloud: what DONE carries. */
struct spa_gen_stats {
	uint32_t n_tokens, n_prompt;
	uint32_t n_xchg;          /* blocking exchanges during the n_tokens decode steps */
	uint32_t n_side;          /* tokens that took the side path (spa, lst) */
	uint64_t prefill_ns, prefill_xchg;
	uint64_t wall_ns;         /* sum of the decode steps' wall time */
	uint64_t xchg_ns;         /* wall time in blocking exchanges */
	uint64_t edge_ns;         /* edge compute inside them */
	uint64_t bytes_out, bytes_in; /* link bytes cloud->edge / edge->cloud during decode */
	uint64_t base_params, plugin_params;
	uint32_t n_layers;
	uint64_t *step_ns;        /* n_tokens per-token wall times (owned by the holder) */
	/* The cloud link's payload bytes copied on send / receive and its messages each way,
	 * over the whole session (zero-copy accounting; 0 in spa-run). */
	uint64_t cloud_copied_tx, cloud_copied_rx, cloud_msgs_tx, cloud_msgs_rx;
};
/* Bytes of a DONE for n_tokens tokens. */
size_t spa_payload_done_size(uint32_t n_tokens);
/* DONE (cloud -> edge): s's fields, then s->step_ns[s->n_tokens]; writes
 * spa_payload_done_size(s->n_tokens) bytes at out. */
void spa_payload_encode_done(const struct spa_gen_stats *s, uint8_t *out);
/* Checks the length against the token count it carries and fills s's fields but step_ns (left
 * as it is): the times are the n_tokens uint64 at b + SPA_PAYLOAD_DONE_HDR. */
int spa_payload_decode_done(const uint8_t *b, size_t len, struct spa_gen_stats *s,
			    struct spa_errbuf *err);

#endif
