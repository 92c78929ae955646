/* spa: the connection layer (runtime/conn.c), between the link (runtime/link.c: messages) and
 * the transport drivers (drivers/: frames). Spec: docs/wire-protocol.md, "Connections".
 *
 * One handshake for every driver: the connecting side picks a random 64-bit connection id and
 * sends CONNECT; the listener answers ACCEPT (or CLOSE, refusing it with a reason). Both then
 * number their frames per direction (pkt), check the connection id of every frame they
 * receive, and close with CLOSE. Control frames (CONNECT, ACCEPT, ACK, HEARTBEAT, CLOSE) are
 * handled here and never reach the link. The seeded fault injector sits here too, on the
 * frames handed to the driver. With keys (opts.key and the peer's), the handshake is a Noise IK
 * key exchange and every later frame is sealed (AEAD); see runtime/conn.c.
 *
 * A connection is used by one application thread at a time, inside spa_conn_enter and
 * spa_conn_leave (runtime/link.c does it at each of its calls). While the application is away
 * from the connection (computing), the process's keeper thread speaks for it: HEARTBEATs, and
 * on reliable connections ACKs, retransmissions and the peer's frames taken into the receive
 * window (docs/wire-protocol.md, "Liveness"). Send and receive are on the hot path: no
 * allocation, no logging, no locks (the guard costs the application two plain stores and a
 * load); a fault ends the connection with a negative code and a message (the caller's errbuf,
 * given at creation). */
#ifndef SPA_CONN_H
#define SPA_CONN_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "drv/link.h"
#include "error.h"
#include "link.h"
#include "wire.h"

struct spa_conn;

/* What the link hands down at creation. Borrowed: they must outlive the connection. */
struct spa_conn_cfg {
	const struct spa_link_opts *opts; /* faults, keys, insecure, aead */
	const char *uri;                  /* names the link in messages */
	struct spa_link_stats *stats;     /* counters the connection adds to */
	struct spa_errbuf *err;           /* its messages */
};

/* A data frame handed up by spa_conn_recv, valid until spa_conn_release. */
struct spa_frame {
	struct spa_wire_hdr h;  /* decoded and checked (decode, connection id, order) */
	const uint8_t *raw;     /* the frame as received: header, then payload (and tag) */
	int verified;           /* checked (CRC, or tag: then decrypted) */
	const uint8_t *plain;   /* verified: its payload in the clear */
	uint64_t pkt;           /* its 64-bit frame number (reliable connections) */
	int held;               /* it came from the receive window (reliable), not the driver */
};

/* Edge: make the transport connection (drv->connect on addr) and run the handshake, waiting up
 * to timeout_ns (< 0: forever) for the listener. Returns 0, -ETIMEDOUT, -SPA_EPEER (refused:
 * the listener's reason in err), or another negative code; err filled. Not on the hot path. */
int spa_conn_connect(struct spa_conn **out, const struct spa_link_driver *drv, const char *addr,
		     const struct spa_conn_cfg *cfg, int64_t timeout_ns);
/* Cloud: wait up to timeout_ns for a transport connection on l (drv->accept) whose handshake
 * succeeds; a connecting side that fails its handshake is answered with CLOSE and the wait
 * goes on. Returns 0, -ETIMEDOUT or a negative code with cfg->err filled. */
int spa_conn_accept(struct spa_conn **out, const struct spa_link_driver *drv,
		    struct spa_listener_base *l, const struct spa_conn_cfg *cfg,
		    int64_t timeout_ns);
/* Send CLOSE (aux = code, positive or 0) when the connection is healthy, close the transport
 * and free. NULL: nothing. */
void spa_conn_destroy(struct spa_conn *c, int code);

/* Send one data frame: h's type, dtype, seq, pos, layer, n_rows, payload_len (= len),
 * frag_off, msg_len and aux as given; conn, pkt, ack, flags, crc and tx_ns are filled here
 * (and h updated). payload must stay valid until the call returns. Returns 0 or a negative
 * code (the connection has failed). Hot path. */
int spa_conn_send(struct spa_conn *c, struct spa_wire_hdr *h, const void *payload, size_t len);
/* The next data frame until deadline_ns (CLOCK_MONOTONIC; < 0: forever; 0: only what is
 * there). Control frames are handled on the way. Its payload is checked (CRC) by
 * spa_conn_take or spa_conn_check. Returns 0, -ETIMEDOUT, or a negative code (failed). */
int spa_conn_recv(struct spa_conn *c, struct spa_frame *f, int64_t deadline_ns);
/* Copy f's payload to dst, checking its CRC (or opening it: AEAD) in the same pass, unless
 * spa_conn_check did. Returns 0, or 1 when the frame
 * failed its check and was dropped (counted; receive the next one), or a negative code (the
 * connection failed: on a link that cannot lose frames, a damaged one ends it). */
int spa_conn_take(struct spa_conn *c, struct spa_frame *f, void *dst);
/* Check f without placing it (a frame the link refuses on its header: was it damaged? or a
 * frame of a tolerant link, checked before anything in it is trusted).
 * Returns 0 (intact), 1 (damaged and dropped) or a negative code, as spa_conn_take. */
int spa_conn_check(struct spa_conn *c, struct spa_frame *f);
/* Done with f (the driver may reuse its memory). */
void spa_conn_release(struct spa_conn *c, struct spa_frame *f);

/* Mark the connection failed with code and a message (the first error stays). Returns code. */
int spa_conn_fail(struct spa_conn *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The sticky error code (0 while healthy). Hot path. */
int spa_conn_failed(const struct spa_conn *c);

/* The application thread enters a connection before it sends, receives, takes or releases
 * frames on it, or touches its driver (tests: raw frames), and leaves it after: the keeper
 * thread acts on it only between. Waits (yielding) while the keeper is inside, which lasts
 * microseconds. Hot path (two plain stores, one load). spa_guard_*: the same on a guard
 * (spa_conn_guard: the connection's, the driver's when it has one). */
void spa_guard_wait(struct spa_guard *g);
extern atomic_int spa_guard_light; /* the keeper's barrier is membarrier: ours a compiler one */
static inline void spa_guard_enter(struct spa_guard *g)
{
	atomic_store_explicit(&g->app_in, 1, memory_order_relaxed);
	if (__builtin_expect(atomic_load_explicit(&spa_guard_light, memory_order_relaxed), 1))
		atomic_signal_fence(memory_order_seq_cst);
	else
		atomic_thread_fence(memory_order_seq_cst);
	if (__builtin_expect(atomic_load_explicit(&g->keeper_in, memory_order_acquire), 0))
		spa_guard_wait(g);
}
static inline void spa_guard_leave(struct spa_guard *g)
{
	atomic_store_explicit(&g->app_in, 0, memory_order_release);
}
struct spa_guard *spa_conn_guard(struct spa_conn *c);
static inline void spa_conn_enter(struct spa_conn *c)
{
	spa_guard_enter(spa_conn_guard(c));
}
static inline void spa_conn_leave(struct spa_conn *c)
{
	spa_guard_leave(spa_conn_guard(c));
}

/* Facts about an established connection. Thread-safe, constant after the handshake. */
uint64_t spa_conn_id(const struct spa_conn *c);
/* Payload bytes one frame carries (the agreed frame limit less header and tag). */
size_t spa_conn_max_payload(const struct spa_conn *c);
/* Does the connection take frames in any order (datagram transport, or faults on)? */
int spa_conn_tolerant(const struct spa_conn *c);
/* "aes256gcm", "chacha20poly1305" or "none". */
const char *spa_conn_aead(const struct spa_conn *c);
/* The peer's static public key when keyed: 0, else -ENOENT. */
int spa_conn_peer_key(const struct spa_conn *c, uint8_t pk[32]);
/* The connection under a link (runtime/link.c), for tests and tools. */
struct spa_conn *spa_link_conn(struct spa_link *l);
/* The driver-level link under it (tests: raw frames). */
struct spa_link_base *spa_conn_base(struct spa_conn *c);
/* Take the next data frame number as if a frame had been sent (tests that put raw frames on
 * the wire through the driver). */
uint64_t spa_conn_next_pkt(struct spa_conn *c);
/* Payload bytes copied on send so far (the injector's and the driver's). */
uint64_t spa_conn_copied_tx(const struct spa_conn *c);

#endif
