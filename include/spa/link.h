/* spa: links between cloud and edge (runtime/link.c over the drivers in drivers/).
 *
 * URIs: shm:/NAME (same host, shared-memory rings), tcp://HOST:PORT, udp://HOST:PORT (kernel
 * datagrams; ?mtu=N, 576..65535, sets the IP MTU the frames fit, 1500 by default), and, when
 * built, the DPDK driver's dpdk:... and memif:... Every shm/tcp/udp URI may end in a query that
 * turns the seeded fault injector on: ?drop=P&dup=P&reorder=P&corrupt=P&seed=N
 * (docs/wire-protocol.md). The cloud listens and accepts one edge at a time; the edge connects.
 * A link moves whole messages: it frames them (header + CRC32C, docs/wire-protocol.md),
 * fragments those larger than the driver's frame limit, reassembles and checks them on
 * receipt (magic, version, lengths, CRC, sequence), and can add an emulated one-way delay.
 * Send and receive are on the hot path: no allocation, no logging; a fault ends the session
 * with a negative code and a message in spa_link_error(). */
#ifndef SPA_LINK_H
#define SPA_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "keys.h"
#include "wire.h"

struct spa_link;
struct spa_listener;

/* Seeded fault injection inside the link (this kernel has no netem): each frame handed to the
 * driver is, independently, dropped, duplicated, held back and sent after the next one
 * (reorder), or has one payload bit flipped, with these probabilities. All 0: off. One draw
 * per frame picks at most one fault, so the sum must be <= 1 (else -SPA_EUSAGE). The same
 * seed gives the same faults. Only fragments within a message are reordered. Counted in
 * spa_link_stats.faults_injected. A link with faults on receives like a datagram link (out
 * of order, duplicates dropped): give the faults to both ends of a shm or tcp link. */
struct spa_link_faults {
	double drop, dup, reorder, corrupt;
	uint64_t seed;
};

/* AEAD of a keyed link's frames (spa_link_opts.aead). By default the first both sides take of:
 * AEGIS-128L (when the libsodium of both builds has it, 1.0.19 on, and the CPUs have AES-NI),
 * AES-256-GCM (AES-NI and PCLMUL), ChaCha20-Poly1305 (IETF; always). A side may insist on one. */
enum spa_aead { SPA_AEAD_AUTO = 0, SPA_AEAD_AES256GCM = 1, SPA_AEAD_CHACHA20POLY1305 = 2,
		SPA_AEAD_AEGIS128L = 3 };

struct spa_link_opts {
	int64_t delay_ns;   /* emulated one-way delay added by the receiver: a frame is handed
			       over no earlier than its tx_ns + delay_ns (same-host clocks) */
	size_t max_msg;     /* largest message this side will accept (0: SPA_WIRE_MAX_MSG) */
	const char *eal;    /* dpdk: EAL arguments (DPDK's conventions); NULL: built from the URI */
	struct spa_link_faults faults;
	/* Liveness (docs/wire-protocol.md, "Liveness"): a peer heard from not at all for this
	 * long while this side waits for it is dead (-SPA_ECLOSED). 0: 90 ms, or 1 s when the
	 * peer is on this host (its transport says when it dies); < 0: off. Each side sends a
	 * HEARTBEAT after an eighth of it (11.25 ms at most) without sending, from its own
	 * waits or, while the application is away from the link, from the keeper thread. */
	int64_t dead_ns;
	/* Authentication (docs/wire-protocol.md, "Keys"). key: this side's static key pair
	 * (include/spa/keys.h); the connecting side also pins the listener's public key
	 * (peer_pub, 32 bytes), the listener accepts the connecting sides whose public keys are
	 * among allow (n_allow x 32 bytes). Borrowed: they must outlive the listener / link.
	 * Without keys a link is unauthenticated and unencrypted: allowed only where the peer
	 * is on this host (shm, memif, loopback addresses), else refused unless insecure. */
	const struct spa_key *key;
	const uint8_t *peer_pub;
	const uint8_t *allow;
	size_t n_allow;
	bool insecure;
	enum spa_aead aead;
};

struct spa_link_stats {
	uint64_t msgs_tx, msgs_rx;
	uint64_t bytes_tx, bytes_rx;   /* header + payload bytes of every frame */
	uint64_t frames_tx, frames_rx;
	uint64_t bad_frames;           /* frames refused (bad header, CRC, sequence) */
	uint64_t copied_rx;            /* payload bytes copied on receive */
	uint64_t copied_tx;            /* payload bytes copied on send (0 on zero-copy paths) */
	uint64_t dup_frames;           /* duplicate frames suppressed */
	uint64_t faults_injected;      /* frames the fault injector dropped/duplicated/... */
	uint64_t auth_failed;          /* frames whose AEAD tag did not verify: dropped */
	/* reliable links (datagram transports, faults injected; docs/wire-protocol.md) */
	uint64_t retransmits;          /* data frames sent again (NACKed or timed out) */
	uint64_t timeouts;             /* ... of them after the retransmission timer */
	uint64_t acks_tx;              /* ACK frames sent */
	uint64_t nacks_tx, nacks_rx;   /* ... that reported gaps (sent, received) */
	uint64_t probes_tx;            /* ... that a waiting receiver sent (PROBE) */
	uint64_t heartbeats_tx;        /* HEARTBEAT frames sent (liveness) */
};

/* One received message. payload points into the caller's buffer. */
struct spa_msg {
	uint8_t type, dtype;
	uint32_t seq, pos;
	uint16_t layer, n_rows;
	uint32_t aux;
	uint64_t tx_ns;
	uint32_t len;     /* payload bytes */
	void *payload;
};

/* Cloud: start listening on uri. Returns 0 or a negative code with err filled. */
int spa_link_listen(struct spa_listener **out, const char *uri, const struct spa_link_opts *o,
		    struct spa_errbuf *err);
/* Wait up to timeout_ns (< 0: forever) for an edge. Returns 0, -ETIMEDOUT, or an error. */
int spa_link_accept(struct spa_listener *l, struct spa_link **out, int64_t timeout_ns,
		    struct spa_errbuf *err);
void spa_listener_destroy(struct spa_listener *l);
/* Edge: connect to a listening cloud (waits up to timeout_ns for it to appear). */
int spa_link_connect(struct spa_link **out, const char *uri, const struct spa_link_opts *o,
		     int64_t timeout_ns, struct spa_errbuf *err);
/* Close (the peer sees -SPA_ECLOSED on its next receive) and free. NULL: nothing. */
void spa_link_destroy(struct spa_link *l);

/* Send a message: hdr fields type, dtype, pos, layer, n_rows, aux are taken from m (m->len and
 * m->payload ignored); seq and tx_ns are filled by the link. type is a session's message (not
 * a connection-layer control frame: -SPA_EUSAGE). Blocks only while the
 * peer's ring is full or the socket buffer is. Returns 0 or a negative code. */
int spa_link_send(struct spa_link *l, const struct spa_msg *m, const void *payload, size_t len);
/* Receive the next message into buf[cap] (reassembling fragments). Waits up to timeout_ns
 * (< 0: forever). Returns 0, -ETIMEDOUT, -SPA_ECLOSED, -SPA_EPROTO, -SPA_ECRC, -SPA_ETOOBIG
 * (message larger than cap). After an error other than -ETIMEDOUT the link is unusable. */
int spa_link_recv(struct spa_link *l, struct spa_msg *m, void *buf, size_t cap,
		  int64_t timeout_ns);

const struct spa_link_stats *spa_link_stats(const struct spa_link *l);
/* The last error's message ("" when none). */
const char *spa_link_error(const struct spa_link *l);
/* Scheme of the link ("shm", "tcp", "udp", ...). */
const char *spa_link_scheme(const struct spa_link *l);
/* Payload bytes one frame of this link carries (its frame limit less the 56-byte header): a
 * message of n bytes travels as max(1, ceil(n / this)) frames. Thread-safe, constant. */
size_t spa_link_max_payload(const struct spa_link *l);
/* The AEAD sealing the link's frames: "aegis128l", "aes256gcm", "chacha20poly1305", or "none" (an
 * unauthenticated link). Thread-safe, constant. */
const char *spa_link_aead(const struct spa_link *l);
/* The peer's static public key (authenticated links): 0 and pk, or -ENOENT. */
int spa_link_peer_key(const struct spa_link *l, uint8_t pk[SPA_KEY_SIZE]);
/* The link's connection id: random, 64 bits, chosen by the connecting side at the handshake
 * (docs/wire-protocol.md). Thread-safe, constant. */
uint64_t spa_link_conn_id(const struct spa_link *l);

#endif
