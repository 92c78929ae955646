/* The connection layer: one handshake, connection ids, keys, frame numbers, sealing and control
 * frames for every driver (include/spa/conn.h; spec: docs/wire-protocol.md, "Connections" and
 * "Keys").
 *
 * Handshake. The connecting side draws a random 64-bit connection id (getrandom) and sends
 * CONNECT, repeated with a growing interval until ACCEPT or CLOSE comes back or its time is up
 * (a datagram may be lost; on a stream a repeat is harmless). The listener's accept takes a
 * transport connection from its driver, waits a bounded time for its CONNECT, checks it and
 * answers ACCEPT, or CLOSE with the reason (the connecting side reports it). A repeated
 * CONNECT that reaches an accepted connection is answered with the same ACCEPT again. Both
 * sides' parameters (frame limit, receive window, AEAD suites) travel in the two messages;
 * each side then uses the smaller frame limit.
 *
 * Keys. With static keys on both sides, CONNECT and ACCEPT carry the two messages of a Noise
 * IK handshake (runtime/noise.c) whose payloads are the parameters: the listener learns and
 * checks the edge's key, the edge is sure of the listener's, and each direction gets a fresh
 * key. Every later frame, data or control, is then sealed: its payload encrypted and a tag
 * appended over header (associated data) and payload, with AEGIS-128L (32-byte tag; when the
 * libsodium of the build has it), AES-256-GCM or ChaCha20-Poly1305 (16-byte tags), all of
 * libsodium. The nonce is the frame's 64-bit number in its count (data or
 * control), so it is never repeated under a key. A frame that does not verify is dropped and
 * counted (auth_failed), never delivered; on a stream transport, where it cannot come again, it
 * ends the connection. Without keys a connection is allowed only where the peer is on this
 * host (the driver says so: shm, memif, loopback addresses), or with insecure.
 *
 * Frames. Data frames are numbered per direction from 0 (pkt), control frames apart (their own
 * counter, the handshake's being 0). A stream transport (shm, tcp) delivers frames in order,
 * and the receiver requires each next number exactly; a datagram transport, or any link whose
 * fault injector is on, is tolerant (the link reassembles in any order). Every frame must carry
 * the connection's id: on a stream another id ends the connection, on a datagram link it is
 * somebody else's frame and is dropped. */
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "spa/clock.h"
#include "spa/conn.h"
#include "spa/noise.h"
#include "spa/rel.h"
#include "spa/rng.h"

#define HDR SPA_WIRE_HDR_SIZE
#define PARAMS_SIZE 20u
#define MODE_PLAIN 0u          /* no keys: the payload is the parameters */
#define MODE_IK 1u             /* Noise IK: the payload is a Noise message carrying them */
#define HS_MAX (4 + PARAMS_SIZE + SPA_NOISE_MSG1_OVERHEAD) /* largest CONNECT/ACCEPT payload */
#define RETRY0_NS 20000000ll     /* first CONNECT repeat after 20 ms, then doubling ... */
#define RETRY_MAX_NS 500000000ll /* ... up to every 500 ms */
#define HANDSHAKE_NS 2000000000ll /* accept: longest wait for one transport's CONNECT */
#define CTL_PAYLOAD_MAX 512u     /* control frame payloads we read (CLOSE's text, ACK) */
/* Reliable connections (datagram transports, faults injected): */
#define REL_FRAME_MAX 65536u     /* frames at most this long (a loss resends one frame) */
#define REL_WINDOW_BYTES (8u << 20) /* each window holds about this much (at most 1024 frames) */
#define RTO0_NS 50000000ll       /* the retransmission timer before a round trip is measured */
#define RTO_MIN_NS 2000000ll     /* ... and its bounds */
#define RTO_MAX_NS 400000000ll
#define ACK_DELAY_NS 500000ll   /* a receiver that waits sends what it owes after 0.5 ms */
#define ACK_EVERY 8              /* frames taken without an ACK sent: send one (1/8 window) */
#define PROBE0_NS 2000000ll      /* a waiting receiver's first PROBE after 2 ms, then ... */
#define PROBE_MAX_NS 25000000ll  /* ... doubling up to every 25 ms */
#define LINGER_NS 1000000000ll   /* a closing side waits this long at most for its last ACK */

/* Liveness: */
#define DEAD_NS 90000000ll       /* a peer silent this long while we wait is dead (default: a
				  killed one is noticed within 100 ms, wake-ups included) */
#define DEAD_LOCAL_NS 1000000000ll /* ... when the peer is on this host (shm, memif, loopback),
				     whose transport says when it dies: silence there is a hung
				     peer, or a starved one on an overloaded host */
#define HB_DIV 8                 /* a side that sent nothing for dead / 8 sends a HEARTBEAT */
#define KEEPER_IDLE_NS 50000000ll /* the keeper looks at its connections at least this often */

#define SUITE_AES 1u           /* AES-256-GCM */
#define SUITE_CHACHA 2u        /* ChaCha20-Poly1305 (IETF) */
#define SUITE_AEGIS 4u         /* AEGIS-128L (libsodium 1.0.19 on), 32-byte tags */
#ifdef crypto_aead_aegis128l_KEYBYTES
#define HAVE_AEGIS 1
#else
#define HAVE_AEGIS 0
#endif
#define TAG_MAX 32

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* What each side says about itself in CONNECT and ACCEPT (docs/wire-protocol.md). */
struct params {
	uint32_t max_frame;  /* the sender's frame limit, header included */
	uint32_t window;     /* frames it keeps out of order (0: none) */
	uint32_t flags;      /* PF_* */
	uint32_t suites;     /* AEAD suites it takes (CONNECT) / the one chosen (ACCEPT) */
};
#define PF_TOLERANT 1u /* datagram transport or faults on: frames may come in any order */

/* One direction's AEAD key (the AES key schedule precomputed). */
struct aead {
	crypto_aead_aes256gcm_state aes; /* 16-byte aligned (its type says so) */
	uint8_t key[32];
};

struct spa_conn {
	struct aead tx_key, rx_key;
	struct spa_link_base *base;
	const struct spa_link_driver *drv;
	const struct spa_link_opts *opts;
	uint64_t id;
	int server;
	int datagram;            /* the driver may lose, repeat, reorder and forge frames */
	int reserve_plain;       /* plain frames too are written into the driver's memory */
	int tolerant;            /* frames in any order (datagram, or faults on) */
	unsigned suite;          /* SUITE_* when sealed, 0 when not */
	unsigned tag;            /* its tag's bytes (0: not sealed) */
	uint8_t flags;           /* of every frame sent: SEALED (and TAG32) */
	size_t max_frame;        /* agreed: header + payload (+ tag) */
	size_t max_payload;

	uint64_t tx_pkt, tx_ctl; /* next data / control frame number (stream; reliable: rel.nxt) */
	uint64_t rx_pkt;         /* next data frame number expected (stream; reliable: rel.next) */
	uint64_t rx_ctl;         /* control frames below this were seen */
	struct spa_rel rel;      /* tolerant (reliable) connections: windows, ACKs, timer */
	uint32_t since_ack;      /* data frames taken since the last ACK we sent */
	int64_t ack_sent_ns;     /* when */
	int64_t ack_at;          /* an ACK is owed: when a waiting receiver sends it (0: none) */
	int64_t probe_gap;       /* a receiver waiting: PROBE interval now (0: not probing) */
	int64_t probe_at;        /* ... and when the next one goes */
	uint8_t ackbuf[SPA_REL_ACK_SIZE(SPA_REL_ACK_MAX_WORDS)];
	uint8_t peer_key[32];    /* keyed: the peer's static public key */
	uint8_t hs_frame[HDR + HS_MAX]; /* CONNECT (edge) or ACCEPT (cloud), said again on a
					   repeat */
	size_t hs_len;
	uint8_t hs_e[32];        /* cloud: the ephemeral key of the CONNECT it answered */
	uint8_t *txbuf;          /* sealed frames built here when the driver has no memory of
				    its own to write them into (max_frame bytes) */
	uint8_t *rxbuf;          /* a verified frame's plaintext (spa_conn_check, control) */

	/* fault injection (opts.faults; off unless a probability is > 0) */
	int faulty;
	struct spa_link_faults faults;
	struct spa_rng rng;
	uint8_t *scratch;        /* max_frame bytes: a corrupted copy of a frame */
	uint8_t *held;           /* max_frame bytes: the frame held back (reorder) */
	size_t held_len;         /* its bytes (0: none held) */
	uint64_t copied_tx;      /* payload bytes copied here (injector, plain reliable frames) */

	/* liveness: HEARTBEATs, the silence that means the peer is dead, the keeper thread that
	 * speaks for the application while it is away from the link (spa_conn_enter) */
	int64_t dead_ns, hb_ns;  /* 0: off */
	int kernel_acks;         /* SPA_DRV_KERNEL_ACKS: no silence rule, no keeper */
	_Atomic int64_t last_tx_ns; /* our latest frame sent (read by the keeper unguarded) */
	int64_t last_rx_ns;      /* the peer's latest frame heard (a lower bound) */
	int64_t wait_since;      /* the current wait began */
	uint32_t rx_frames, rx_stamped; /* data frames handed up; ... when last_rx_ns was last
					   brought up to date for them */
	struct spa_guard *guard; /* who is in the connection: own_guard, or the driver's */
	struct spa_guard own_guard;
	struct spa_conn *k_next, *k_prev; /* the keeper's list */
	unsigned k_gen;          /* on it in this generation of the keeper (0: not on it) */

	int failed;              /* sticky error (0: healthy) */
	int peer_closed;         /* CLOSE received, or the transport is gone: say nothing more */
	int closed_sent;         /* our CLOSE went out */
	const char *uri;
	struct spa_link_stats *stats;
	struct spa_errbuf *err;
};

static int faults_on(const struct spa_link_faults *f)
{
	return f->drop > 0 || f->dup > 0 || f->reorder > 0 || f->corrupt > 0;
}

static inline void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- errors ---------------------------------------------------------------------------- */

static int vfail(struct spa_conn *c, int code, const char *fmt, va_list ap)
{
	if (c->failed)
		return c->failed;
	char msg[sizeof c->err->msg];
	vsnprintf(msg, sizeof msg, fmt, ap);
	/* Prefix the URI so the message says which link failed; a long cause is cut. */
	size_t u = strnlen(c->uri, 100);
	memcpy(c->err->msg, c->uri, u);
	c->err->msg[u] = ':';
	c->err->msg[u + 1] = ' ';
	size_t room = sizeof c->err->msg - u - 3, k = strnlen(msg, room);
	memcpy(c->err->msg + u + 2, msg, k);
	c->err->msg[u + 2 + k] = 0;
	c->failed = code;
	return code;
}

int spa_conn_fail(struct spa_conn *c, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = vfail(c, code, fmt, ap);
	va_end(ap);
	return rc;
}

static int drv_error(struct spa_conn *c, int rc, const char *what)
{
	if (rc == -SPA_ECLOSED) {
		c->peer_closed = 1;
		return spa_conn_fail(c, rc, "the peer closed the link or went away (%s)", what);
	}
	return spa_conn_fail(c, rc, "transport error while %s: %s", what, spa_strerror(rc));
}

/* ---- AEAD ------------------------------------------------------------------------------ */

static void key_set(struct aead *a, const uint8_t key[32], unsigned suite)
{
	memcpy(a->key, key, 32);
	if (suite == SUITE_AES)
		crypto_aead_aes256gcm_beforenm(&a->aes, key);
}

/* The 96-bit nonce of frame pkt of count kind (0 data, 1 control); AEGIS-128L's 128-bit one
 * is the same, zero-extended (nonce arrays are 16 bytes for that). */
static inline void nonce(uint8_t n[16], unsigned kind, uint64_t pkt)
{
	put32(n, kind);
	for (int i = 0; i < 8; i++)
		n[4 + i] = (uint8_t)(pkt >> (8 * i));
	memset(n + 12, 0, 4);
}

#if HAVE_AEGIS
static inline const uint8_t *aegis_nonce(const uint8_t n[16])
{
	return n;
}
#endif

/* Seal p[len] into out[len] and tag, the 64 header bytes hdr as associated data. */
static inline void seal(const struct spa_conn *c, unsigned kind, uint64_t pkt, const uint8_t *hdr,
			const uint8_t *p, size_t len, uint8_t *out, uint8_t *tag)
{
	uint8_t n[16];
	nonce(n, kind, pkt);
	if (c->suite == SUITE_AES)
		crypto_aead_aes256gcm_encrypt_detached_afternm(out, tag, NULL, p, len, hdr, HDR, NULL,
							       n, &c->tx_key.aes);
#if HAVE_AEGIS
	else if (c->suite == SUITE_AEGIS)
		crypto_aead_aegis128l_encrypt_detached(out, tag, NULL, p, len, hdr, HDR, NULL,
						       aegis_nonce(n), c->tx_key.key);
#endif
	else
		crypto_aead_chacha20poly1305_ietf_encrypt_detached(out, tag, NULL, p, len, hdr, HDR,
								   NULL, n, c->tx_key.key);
}

/* Open a sealed frame f (header, ciphertext, tag) into out. 0, or -1 when it does not verify
 * (out then holds nothing of use). */
static inline int open_frame(const struct spa_conn *c, unsigned kind, uint64_t pkt,
			     const uint8_t *f, size_t len, uint8_t *out)
{
	uint8_t n[16];
	nonce(n, kind, pkt);
	if (c->suite == SUITE_AES)
		return crypto_aead_aes256gcm_decrypt_detached_afternm(out, NULL, f + HDR, len,
								      f + HDR + len, f, HDR, n,
								      &c->rx_key.aes);
#if HAVE_AEGIS
	if (c->suite == SUITE_AEGIS)
		return crypto_aead_aegis128l_decrypt_detached(out, NULL, f + HDR, len, f + HDR + len,
							      f, HDR, aegis_nonce(n), c->rx_key.key);
#endif
	return crypto_aead_chacha20poly1305_ietf_decrypt_detached(out, NULL, f + HDR, len,
								  f + HDR + len, f, HDR, n,
								  c->rx_key.key);
}

/* The 64-bit frame number nearest to `near` whose low 32 bits are wire. */
static inline uint64_t pkt_expand(uint64_t near, uint32_t wire)
{
	uint64_t v = (near & ~0xffffffffull) | wire;
	if (v + 0x80000000ull < near && v + 0x100000000ull > v)
		v += 0x100000000ull;
	else if (v > near + 0x80000000ull && v >= 0x100000000ull)
		v -= 0x100000000ull;
	return v;
}

/* ---- sending --------------------------------------------------------------------------- */

static int send1(struct spa_conn *c, const uint8_t *f, size_t n)
{
	struct iovec iov = { (void *)f, n };
	return c->drv->send_frame(c->base, &iov, 1);
}

static int send2(struct spa_conn *c, const uint8_t *hb, const uint8_t *p, size_t n)
{
	struct iovec iov[2] = { { (void *)hb, HDR }, { (void *)p, n } };
	return c->drv->send_frame(c->base, iov, n ? 2 : 1);
}

/* The frame the injector held back, sent now (before a wait: nothing else may come after it). */
static int flush_held(struct spa_conn *c)
{
	if (!c->held_len)
		return 0;
	size_t n = c->held_len;
	c->held_len = 0;
	return send1(c, c->held, n);
}

/* Send one frame (hb: its 64 header bytes; p[n]: the rest, payload and any tag) through the
 * injector: one uniform draw per frame picks at most one fault, drop, dup, reorder, corrupt, in
 * that order of the probability ranges. A reordered frame is held (copied) and sent right after
 * the next frame of its message (the last frame of a message is never held: the injector
 * reorders fragments, not messages, see docs/wire-protocol.md). */
static int fault_send(struct spa_conn *c, const uint8_t *hb, const uint8_t *p, size_t n,
		      int last)
{
	/* (on a reliable connection a held frame also goes out when the sender starts waiting:
	 * flush_held) */
	const struct spa_link_faults *f = &c->faults;
	double u = (double)(spa_rng_next(&c->rng) >> 11) * 0x1p-53;
	enum { NONE, DROP, DUP, REORDER, CORRUPT } fault =
		u < f->drop ? DROP : (u -= f->drop) < f->dup ? DUP :
		(u -= f->dup) < f->reorder ? REORDER : (u -= f->reorder) < f->corrupt ? CORRUPT : NONE;
	if (fault == REORDER && ((last && !c->tolerant) || c->held_len))
		fault = NONE; /* (stream: nothing of this message comes after it to swap with) */
	int rc = 0;
	if (fault == DROP) {
		c->stats->faults_injected++;
	} else if (fault == DUP) {
		c->stats->faults_injected++;
		rc = send2(c, hb, p, n);
		if (!rc)
			rc = send2(c, hb, p, n);
	} else if (fault == REORDER) {
		c->stats->faults_injected++;
		memcpy(c->held, hb, HDR);
		memcpy(c->held + HDR, p, n);
		c->held_len = HDR + n;
		c->copied_tx += n;
		return 0;
	} else if (fault == CORRUPT) {
		/* flip one bit past the header in a copy (the caller's payload stays intact); an
		 * empty frame gets a bit of its header's tx_ns flipped instead (covered by the CRC
		 * or the tag) */
		uint64_t r = spa_rng_next(&c->rng);
		c->stats->faults_injected++;
		memcpy(c->scratch, hb, HDR);
		memcpy(c->scratch + HDR, p, n);
		c->copied_tx += n;
		if (n)
			c->scratch[HDR + (r >> 3) % n] ^= (uint8_t)(1u << (r & 7));
		else
			c->scratch[56 + (r & 7)] ^= (uint8_t)(1u << ((r >> 3) & 7));
		rc = send1(c, c->scratch, HDR + n);
	} else {
		rc = send2(c, hb, p, n);
	}
	if (!rc && c->held_len) {
		rc = send1(c, c->held, c->held_len);
		c->held_len = 0;
	}
	return rc;
}

static int pump(struct spa_conn *c, int64_t deadline);

/* Reliable: the frame is built in its send-window slot (sealed, or its CRC computed, in that
 * one pass over the payload), kept there until the peer acknowledges it, and sent from there
 * (and again from there if it is lost). A full window waits for acknowledgments. */
static int send_rel(struct spa_conn *c, struct spa_wire_hdr *h, const uint8_t *p, size_t len)
{
	struct spa_rel *r = &c->rel;
	while (!spa_rel_can_send(r)) {
		int rc = pump(c, -1);
		if (rc < 0)
			return rc;
	}
	uint8_t *w = spa_rel_slot(r, r->nxt);
	h->pkt = (uint32_t)r->nxt;
	h->ack = (uint32_t)r->next;
	spa_wire_hdr_encode(h, w);
	if (c->suite) {
		seal(c, 0, r->nxt, w, p, len, w + HDR, w + HDR + len);
	} else {
		/* the one copy of a reliable link's payload on send (counted): the frame must
		 * outlive the caller's buffer until it is acknowledged */
		h->crc = spa_crc32c_copy(spa_wire_hdr_crc(w), w + HDR, p, len);
		spa_wire_hdr_set_crc(w, h->crc);
		c->copied_tx += len;
	}
	size_t n = HDR + len + c->tag;
	spa_rel_sent(r, n, (int64_t)h->tx_ns);
	if (!spa_rel_gap(r))
		r->ack_due = 0; /* the header's ack says all there is to say */
	c->since_ack = 0;
	int rc = likely(!c->faulty) ? send2(c, w, w + HDR, n - HDR)
				    : fault_send(c, w, w + HDR, n - HDR, 0);
	/* a frame the kernel would not take now is in the window: the timer sends it again */
	return rc == -ENOBUFS || rc == -EAGAIN ? 0 : rc;
}

int spa_conn_send(struct spa_conn *c, struct spa_wire_hdr *h, const void *payload, size_t len)
{
	if (unlikely(c->failed))
		return c->failed;
	const uint8_t *p = payload;
	h->magic = SPA_WIRE_MAGIC;
	h->version = SPA_WIRE_VERSION;
	h->flags = c->flags;
	h->conn = c->id;
	h->pkt = (uint32_t)c->tx_pkt;
	h->ack = 0;
	h->payload_len = (uint32_t)len;
	h->tx_ns = (uint64_t)spa_clock_ns();
	h->crc = 0;
	atomic_store_explicit(&c->last_tx_ns, (int64_t)h->tx_ns, memory_order_relaxed);
	int last = h->frag_off + len >= h->msg_len, rc;
	if (c->tolerant) {
		rc = send_rel(c, h, p, len);
	} else if (likely(!c->faulty) && c->drv->frame_reserve && (c->suite || c->reserve_plain)) {
		/* the frame is written straight into the driver's memory (shm: its ring): the
		 * payload's CRC computed, or the payload sealed, in that copy's pass */
		uint8_t *w;
		rc = c->drv->frame_reserve(c->base, HDR + len + c->tag, &w);
		if (!rc) {
			spa_wire_hdr_encode(h, w);
			if (c->suite) {
				seal(c, 0, c->tx_pkt, w, p, len, w + HDR, w + HDR + len);
			} else {
				h->crc = spa_crc32c_copy(spa_wire_hdr_crc(w), w + HDR, p, len);
				spa_wire_hdr_set_crc(w, h->crc);
			}
			rc = c->drv->frame_commit(c->base);
		}
	} else if (c->suite) {
		uint8_t *w = c->txbuf;
		spa_wire_hdr_encode(h, w);
		seal(c, 0, c->tx_pkt, w, p, len, w + HDR, w + HDR + len);
		rc = send1(c, w, HDR + len + c->tag);
	} else {
		uint8_t hb[HDR];
		spa_wire_hdr_encode(h, hb);
		h->crc = spa_wire_frame_crc(hb, p, len); /* hb's crc field is 0 */
		spa_wire_hdr_set_crc(hb, h->crc);
		rc = likely(!c->faulty) ? send2(c, hb, p, len) : fault_send(c, hb, p, len, last);
	}
	if (unlikely(rc))
		return c->failed ? c->failed : drv_error(c, rc, "sending");
	c->tx_pkt++;
	return 0;
}

/* A control frame after the handshake (HEARTBEAT, ACK, CLOSE): its own count, sealed on a keyed
 * connection, through the injector when it is on. */
static int send_ctl(struct spa_conn *c, unsigned type, uint32_t aux, const void *payload,
		    size_t len)
{
	struct spa_wire_hdr h = {
		.magic = SPA_WIRE_MAGIC, .version = SPA_WIRE_VERSION, .type = (uint8_t)type,
		.dtype = SPA_WIRE_BYTES, .flags = c->flags, .conn = c->id,
		.pkt = (uint32_t)c->tx_ctl, .payload_len = (uint32_t)len, .msg_len = (uint32_t)len,
		.aux = aux, .n_rows = 1, .tx_ns = (uint64_t)spa_clock_ns(),
		.ack = c->tolerant && c->rel.w ? (uint32_t)c->rel.next : 0,
	};
	uint8_t f[HDR + CTL_PAYLOAD_MAX + TAG_MAX];
	if (len > CTL_PAYLOAD_MAX)
		return -EINVAL;
	atomic_store_explicit(&c->last_tx_ns, (int64_t)h.tx_ns, memory_order_relaxed);
	spa_wire_hdr_encode(&h, f);
	size_t n = len;
	if (c->suite) {
		seal(c, 1, c->tx_ctl, f, payload, len, f + HDR, f + HDR + len);
		n += c->tag;
	} else {
		memcpy(f + HDR, payload, len);
		spa_wire_hdr_set_crc(f, spa_wire_frame_crc(f, payload, len));
	}
	c->tx_ctl++;
	return c->faulty ? fault_send(c, f, f + HDR, n, 1) : send1(c, f, HDR + n);
}

/* A handshake frame (CONNECT, ACCEPT, a refusing CLOSE): control count 0, never sealed nor
 * faulted; copied to copy_to when given (to say it again). */
static int send_hs(struct spa_conn *c, unsigned type, uint32_t aux, const void *payload,
		   size_t len, uint8_t *copy_to)
{
	struct spa_wire_hdr h = {
		.magic = SPA_WIRE_MAGIC, .version = SPA_WIRE_VERSION, .type = (uint8_t)type,
		.dtype = SPA_WIRE_BYTES, .conn = c->id, .payload_len = (uint32_t)len,
		.msg_len = (uint32_t)len, .aux = aux, .n_rows = 1, .tx_ns = (uint64_t)spa_clock_ns(),
	};
	uint8_t hb[HDR];
	spa_wire_hdr_encode(&h, hb);
	spa_wire_hdr_set_crc(hb, spa_wire_frame_crc(hb, payload, len));
	if (copy_to) {
		memcpy(copy_to, hb, HDR);
		memcpy(copy_to + HDR, payload, len);
	}
	return send2(c, hb, payload, len);
}

/* ---- receiving ------------------------------------------------------------------------- */

#define BAD(code, ...) (c->stats->bad_frames++, spa_conn_fail(c, (code), __VA_ARGS__))
/* A datagram that is not a well-formed frame of ours: on a datagram transport it is noise from
 * the network (dropped and counted: 0); on a stream the stream is broken. */
#define MALFORMED(code, ...) (c->datagram ? (c->stats->bad_frames++, 0) : BAD(code, __VA_ARGS__))

static int crc_ok(const struct spa_wire_hdr *h, const uint8_t *f)
{
	return spa_crc32c(spa_wire_hdr_crc(f), f + HDR, h->payload_len) == h->crc;
}

#define CRC_FAIL(h, f)                                                                         \
	BAD(-SPA_ECRC,                                                                         \
	    "%s frame (seq %u, bytes %u..%u of %u) failed its CRC32C check (0x%08x, computed "   \
	    "0x%08x): the link corrupts data",                                                 \
	    spa_msg_type_name((h)->type), (h)->seq, (h)->frag_off,                              \
	    (h)->frag_off + (h)->payload_len, (h)->msg_len, (h)->crc,                          \
	    spa_crc32c(spa_wire_hdr_crc(f), (f) + HDR, (h)->payload_len))

/* A frame that failed its check (CRC or tag): dropped and counted. On a tolerant connection the
 * session goes on (1); on a stream it cannot come again, and the connection ends. */
static int check_failed(struct spa_conn *c, const struct spa_wire_hdr *h, const uint8_t *f)
{
	if (c->suite) {
		c->stats->auth_failed++;
		if (c->tolerant)
			return 1;
		return BAD(-SPA_EAUTH, "%s frame (seq %u, bytes %u..%u of %u) failed its "
			   "authentication tag: damaged or forged, dropped; the connection cannot "
			   "go on without it", spa_msg_type_name(h->type), h->seq, h->frag_off,
			   h->frag_off + h->payload_len, h->msg_len);
	}
	if (c->tolerant) {
		c->stats->bad_frames++;
		return 1;
	}
	return CRC_FAIL(h, f);
}

/* Send an ACK: what arrived (the next frame due, and the bitmap of those held past it). */
static int send_ack(struct spa_conn *c, int64_t now, uint32_t flags)
{
	size_t n = spa_rel_ack(&c->rel, c->ackbuf, flags);
	c->ack_sent_ns = now;
	c->ack_at = 0;
	c->since_ack = 0;
	c->stats->acks_tx++;
	return send_ctl(c, SPA_MSG_ACK, 0, c->ackbuf, n);
}

/* The peer's cumulative acknowledgment in a verified frame's header (its 32 low bits). */
static void take_ack(struct spa_conn *c, uint32_t wire, int64_t now)
{
	uint64_t a = pkt_expand(c->rel.una, wire);
	if (a <= c->rel.nxt)
		spa_rel_acked(&c->rel, a, now);
}

/* Send frame pkt again from its slot. */
static int resend(struct spa_conn *c, uint64_t pkt, int64_t now)
{
	size_t n = spa_rel_resend(&c->rel, pkt, now);
	if (!n)
		return 0; /* a raw frame of a test, not kept */
	const uint8_t *w = spa_rel_slot(&c->rel, pkt);
	c->stats->retransmits++;
	int rc = likely(!c->faulty) ? send2(c, w, w + HDR, n - HDR)
				    : fault_send(c, w, w + HDR, n - HDR, 0);
	return rc == -ENOBUFS || rc == -EAGAIN ? 0 : rc;
}

/* A control frame that came on an established connection. Returns 0 (handled) or a negative
 * code. */
static int on_ctl(struct spa_conn *c, const struct spa_wire_hdr *h, const uint8_t *f)
{
	const uint8_t *pl = f + HDR;
	if (h->type == SPA_MSG_CONNECT || h->type == SPA_MSG_ACCEPT) {
		/* a repeat of the handshake, never sealed */
		if ((h->flags & SPA_WIRE_SEALED) || !crc_ok(h, f)) {
			c->stats->bad_frames++;
			return 0;
		}
		/* the peer repeated its CONNECT before our ACCEPT reached it: say it again (best
		 * effort: a peer already gone is noticed when its frames run out); keyed, only to
		 * a repeat of the very CONNECT answered (its ephemeral key) */
		if (h->type == SPA_MSG_CONNECT && c->server && c->hs_len &&
		    (!c->suite || (h->payload_len >= 36 && !memcmp(pl + 4, c->hs_e, 32))))
			send1(c, c->hs_frame, c->hs_len);
		c->stats->dup_frames++;
		return 0;
	}
	uint64_t pkt = pkt_expand(c->rx_ctl, h->pkt);
	if (c->suite) {
		if (h->flags != c->flags || h->payload_len > CTL_PAYLOAD_MAX) {
			c->stats->bad_frames++;
			return c->tolerant ? 0 : spa_conn_fail(c, -SPA_EAUTH, "unsealed %s frame on an "
							       "authenticated connection",
							       spa_msg_type_name(h->type));
		}
		if (open_frame(c, 1, pkt, f, h->payload_len, c->rxbuf))
			return check_failed(c, h, f) == 1 ? 0 : c->failed;
		pl = c->rxbuf;
	} else if (!crc_ok(h, f)) {
		if (c->tolerant) {
			c->stats->bad_frames++;
			return 0;
		}
		return CRC_FAIL(h, f);
	}
	if (pkt < c->rx_ctl) {
		c->stats->dup_frames++; /* a repeat (or a replay) of one already seen */
		return 0;
	}
	c->rx_ctl = pkt + 1;
	c->last_rx_ns = spa_clock_ns();
	if (c->tolerant)
		take_ack(c, h->ack, c->last_rx_ns);
	switch (h->type) {
	case SPA_MSG_CLOSE: {
		/* Answer it once (best effort): the peer learns that its frames up to its CLOSE
		 * were read (a memif client waits for that before it tears its rings down). */
		if (!c->closed_sent) {
			c->closed_sent = 1;
			send_ctl(c, SPA_MSG_CLOSE, 0, NULL, 0);
		}
		c->peer_closed = 1;
		int len = (int)(h->payload_len > 300 ? 300 : h->payload_len);
		if (h->aux)
			return spa_conn_fail(c, -SPA_ECLOSED, "the peer closed the connection: %.*s "
					     "(%s)", len, (const char *)pl,
					     spa_strerror(-(int)h->aux));
		return spa_conn_fail(c, -SPA_ECLOSED, "the peer closed the link");
	}
	case SPA_MSG_ACK: {
		if (!c->tolerant)
			return 0;
		uint64_t retx[64];
		int64_t now = spa_clock_ns();
		int n = spa_rel_on_ack(&c->rel, pl, h->payload_len, now, RTO_MIN_NS / 2, retx, 64);
		if (n < 0) {
			c->stats->bad_frames++;
			return 0;
		}
		if (n)
			c->stats->nacks_rx++;
		for (int i = 0; i < n; i++) {
			int rc = resend(c, retx[i], now);
			if (rc)
				return drv_error(c, rc, "sending frames again");
		}
		return 0;
	}
	default: /* HEARTBEAT: nothing to do yet */
		return 0;
	}
}

/* A data frame of a reliable connection, number pkt: the next one due is handed up (unless
 * hand_up is 0: a sender waiting for its window takes it in like the others); one ahead of it
 * is checked straight into its receive-window slot and held; a repeat is counted and
 * acknowledged again; one past the window dropped. 1: f is the next one, handed up unchecked;
 * 0: consumed. */
static int rel_data(struct spa_conn *c, struct spa_frame *f, const uint8_t *fr, int hand_up)
{
	struct spa_rel *r = &c->rel;
	const struct spa_wire_hdr *h = &f->h;
	uint64_t pkt = pkt_expand(r->next, h->pkt);
	switch (spa_rel_classify(r, pkt)) {
	case SPA_REL_NEXT:
		if (hand_up) {
			f->raw = fr;
			f->verified = 0;
			f->plain = fr + HDR;
			f->pkt = pkt;
			f->held = 0;
			return 1;
		}
		/* held until the link asks for it */
		__attribute__((fallthrough));
	case SPA_REL_AHEAD: {
		uint8_t *slot = spa_rel_rx_slot(r, pkt);
		memcpy(slot, fr, HDR);
		if (c->suite ? open_frame(c, 0, pkt, fr, h->payload_len, slot + HDR)
			     : (!crc_ok(h, fr) ||
				(memcpy(slot + HDR, fr + HDR, h->payload_len), 0)))
			return check_failed(c, h, fr) == 1 ? 0 : c->failed;
		spa_rel_hold(r, pkt, slot, HDR + h->payload_len);
		int64_t now = spa_clock_ns();
		c->last_rx_ns = now;
		take_ack(c, h->ack, now);
		/* a gap: tell the sender what is missing, at most about twice a round trip */
		int64_t gap_ns = r->srtt ? r->srtt / 2 : 1000000;
		if (spa_rel_gap(r) && now - c->ack_sent_ns >= gap_ns) {
			c->stats->nacks_tx++;
			int rc = send_ack(c, now, 0);
			if (rc)
				return drv_error(c, rc, "sending an ACK");
		}
		return 0;
	}
	case SPA_REL_DUP: {
		c->stats->dup_frames++;
		r->ack_due = 1; /* the sender missed our acknowledgment */
		/* In request and reply, our acknowledgment rides on our reply: a repeated
		 * request says the reply was lost. Send it again now rather than at our timer,
		 * which the peer's compute between its messages makes long. */
		uint64_t old;
		int64_t now = spa_clock_ns();
		if (spa_rel_oldest(r, now, RTO_MIN_NS / 2, &old)) {
			int rc = resend(c, old, now);
			if (rc)
				return drv_error(c, rc, "sending a frame again");
		}
		return 0;
	}
	default: /* past the window: a sender that ignores it, or a forgery */
		c->stats->bad_frames++;
		return 0;
	}
}

/* Take one frame off the driver (until deadline) and classify it. Returns 1 with *f set (the
 * next data frame, handed up unchecked: take or check it, then release it), 0 (consumed:
 * control frame, noise, a datagram of another connection, a frame held or dropped), or a
 * negative code (-ETIMEDOUT, or the connection failed). */
static int frame_in(struct spa_conn *c, struct spa_frame *f, int64_t deadline, int hand_up)
{
	const uint8_t *fr;
	size_t flen;
	int rc = c->drv->recv_frame(c->base, &fr, &flen, deadline);
	if (rc == -ETIMEDOUT)
		return rc;
	if (rc)
		return drv_error(c, rc, "receiving");
	struct spa_wire_hdr *h = &f->h;
	struct spa_errbuf e;
	if (flen < HDR)
		rc = MALFORMED(-SPA_EPROTO,
			       "truncated frame: %zu bytes, shorter than the %d-byte header", flen,
			       HDR);
	else if ((rc = spa_wire_hdr_decode(fr, h, c->max_payload, &e)))
		rc = MALFORMED(rc, "%s", e.msg);
	else if (flen != spa_wire_frame_size(h))
		rc = MALFORMED(-SPA_EPROTO,
			       "truncated or padded %s frame: %zu bytes, but its header says %zu",
			       spa_msg_type_name(h->type), flen, spa_wire_frame_size(h));
	else if (h->conn != c->id) {
		/* on a datagram transport: another connection's (an old one's) frame */
		if (c->datagram)
			rc = (c->stats->bad_frames++, 0);
		else if (!c->suite && !crc_ok(h, fr))
			rc = CRC_FAIL(h, fr);
		else
			rc = BAD(-SPA_EPROTO, "%s frame for connection %016llx on connection %016llx",
				 spa_msg_type_name(h->type), (unsigned long long)h->conn,
				 (unsigned long long)c->id);
	} else if (spa_wire_is_ctl(h->type)) {
		rc = on_ctl(c, h, fr);
	} else if (h->flags != c->flags) {
		rc = c->tolerant ? (c->stats->bad_frames++, 0)
				 : BAD(-SPA_EAUTH, "%s %s frame on %s connection",
				       c->suite ? "unsealed" : "sealed", spa_msg_type_name(h->type),
				       c->suite ? "an authenticated" : "an unauthenticated");
	} else if (c->tolerant) {
		rc = rel_data(c, f, fr, hand_up);
		if (rc == 1) {
			c->rx_frames++;
			return 1;
		}
	} else if (h->pkt != (uint32_t)c->rx_pkt) {
		struct spa_frame t = { .h = *h, .raw = fr, .pkt = pkt_expand(c->rx_pkt, h->pkt) };
		rc = spa_conn_check(c, &t);
		if (!rc)
			rc = BAD(-SPA_EPROTO, "%s frame number %u, expected %u: frames were lost, "
				 "repeated or reordered", spa_msg_type_name(h->type), h->pkt,
				 (uint32_t)c->rx_pkt);
	} else {
		f->raw = fr;
		f->verified = 0;
		f->plain = fr + HDR;
		f->pkt = c->rx_pkt;
		f->held = 0;
		c->rx_frames++;
		return 1;
	}
	c->drv->release_frame(c->base);
	return rc;
}

/* Reliable: the retransmission timer, and an ACK after a run of frames taken without one (a
 * sender streaming a long message waits for it to slide its window). */
static int timers(struct spa_conn *c, int64_t now)
{
	uint64_t pkt;
	int rc = 0;
	if (spa_rel_timeout(&c->rel, now, &pkt)) {
		c->stats->timeouts++;
		rc = resend(c, pkt, now);
	}
	if (!rc && c->rel.ack_due && c->since_ack >= c->rel.w / ACK_EVERY)
		rc = send_ack(c, now, 0);
	return rc ? drv_error(c, rc, "sending") : 0;
}

/* Before a reliable connection waits: what it held back goes out, and what it owes the peer
 * (an ACK) once it has waited delay_ns: a wait between two frames of one message, or before a
 * reply that acknowledges in its header, is short and needs none. */
static int before_wait(struct spa_conn *c, int64_t now, int64_t delay_ns)
{
	int rc = flush_held(c);
	if (!c->rel.ack_due)
		c->ack_at = 0;
	else if (!c->ack_at)
		c->ack_at = now + delay_ns;
	if (!rc && c->rel.ack_due && now >= c->ack_at)
		rc = send_ack(c, now, 0);
	return rc ? drv_error(c, rc, "sending") : 0;
}

/* ---- liveness ------------------------------------------------------------------------- */

/* A HEARTBEAT (none once the peer is gone). A stream peer found gone this way may still have
 * frames on their way to us: the receive reports the end after them. */
static int send_heartbeat(struct spa_conn *c)
{
	if (c->peer_closed)
		return 0;
	c->stats->heartbeats_tx++;
	int rc = send_ctl(c, SPA_MSG_HEARTBEAT, 0, NULL, 0);
	if (rc == -SPA_ECLOSED && !c->datagram) {
		c->peer_closed = 1;
		return 0;
	}
	return rc ? drv_error(c, rc, "sending a heartbeat") : 0;
}

/* A side that waits for its peer sends a HEARTBEAT when it has sent nothing for hb_ns, and
 * takes a peer it has heard nothing from for dead_ns for dead (killed, hung, cut off). What
 * the peer sent while we were away is read before this is asked (waits try the driver first:
 * frames already there come at once; on reliable connections the keeper took them in).
 * Returns 0 or the failure. */
static int live(struct spa_conn *c, int64_t now)
{
	if (!c->dead_ns)
		return 0;
	int64_t since = c->last_rx_ns;
	if (now - since >= c->dead_ns && !c->kernel_acks) {
		c->peer_closed = 1; /* (a CLOSE to a dead peer would be in vain) */
		return spa_conn_fail(c, -SPA_ECLOSED, "the peer went silent: nothing heard for %lld "
				     "ms while waiting for it (dead, hung or cut off; the limit is "
				     "%lld ms, --dead-ms)", (long long)((now - since) / 1000000),
				     (long long)(c->dead_ns / 1000000));
	}
	if (now - atomic_load_explicit(&c->last_tx_ns, memory_order_relaxed) >= c->hb_ns)
		return send_heartbeat(c);
	return 0;
}

/* A wait begins (at wait_since): data frames handed up since the last one began came before
 * it (their times unread, to keep the clock off the path). */
static inline void heard_since(struct spa_conn *c)
{
	if (c->rx_frames != c->rx_stamped) {
		c->rx_stamped = c->rx_frames;
		if (c->wait_since > c->last_rx_ns)
			c->last_rx_ns = c->wait_since;
	}
}

/* When live() next has something to do (INT64_MAX: never). */
static inline int64_t live_until(const struct spa_conn *c)
{
	if (!c->dead_ns)
		return INT64_MAX;
	int64_t since = c->last_rx_ns;
	int64_t hb = atomic_load_explicit(&c->last_tx_ns, memory_order_relaxed) + c->hb_ns;
	return since + c->dead_ns < hb && !c->kernel_acks ? since + c->dead_ns : hb;
}

/* One turn of a reliable connection whose sender waits for its window (or, later, for the
 * peer): timers, then one frame or a wait until the next timer or deadline. */
static int pump(struct spa_conn *c, int64_t deadline)
{
	int64_t now = spa_clock_ns();
	int rc = timers(c, now);
	if (!rc)
		rc = before_wait(c, now, 0);
	if (!rc)
		rc = live(c, now);
	if (rc)
		return rc;
	int64_t until = spa_rel_next_timeout(&c->rel);
	if (live_until(c) < until)
		until = live_until(c);
	if (deadline >= 0 && deadline < until)
		until = deadline;
	struct spa_frame f;
	rc = frame_in(c, &f, until == INT64_MAX ? -1 : until, 0);
	return rc == -ETIMEDOUT && (deadline < 0 || spa_clock_ns() < deadline) ? 0 : rc;
}

/* A receiver that waits probes: an ACK flagged PROBE, first PROBE0_NS into the wait, then at
 * doubling intervals up to PROBE_MAX_NS, asks the peer to send again its oldest frame not
 * acknowledged. The last frame of a message (a reply's, often) has no successor whose arrival
 * would reveal its loss, and the sender's own timer, measured over round trips that include the
 * receiver's compute, may be long: the waiting side knows best that it waits. */
static int probe(struct spa_conn *c, int64_t now)
{
	if (!c->probe_gap) {
		c->probe_gap = PROBE0_NS;
		c->probe_at = now + PROBE0_NS;
		return 0;
	}
	if (now < c->probe_at)
		return 0;
	if (c->probe_gap < PROBE_MAX_NS)
		c->probe_gap = c->probe_gap * 2 > PROBE_MAX_NS ? PROBE_MAX_NS : c->probe_gap * 2;
	c->probe_at = now + c->probe_gap;
	c->stats->probes_tx++;
	int rc = send_ack(c, now, SPA_REL_ACK_PROBE);
	return rc ? drv_error(c, rc, "sending") : 0;
}

int spa_conn_recv(struct spa_conn *c, struct spa_frame *f, int64_t deadline_ns)
{
	if (unlikely(c->failed))
		return c->failed;
	if (!c->tolerant) {
		if (!deadline_ns || !c->dead_ns) {
			/* only what is there (the link's first try: no clock read), or no liveness */
			for (;;) {
				int rc = frame_in(c, f, deadline_ns, 1);
				if (rc)
					return rc < 0 ? rc : 0;
			}
		}
		c->wait_since = spa_clock_ns();
		heard_since(c);
		for (;;) {
			int64_t until = live_until(c);
			if (deadline_ns >= 0 && deadline_ns < until)
				until = deadline_ns;
			int rc = frame_in(c, f, until, 1);
			if (rc == 1)
				return 0;
			if (rc == -ETIMEDOUT) {
				int64_t now = spa_clock_ns();
				if (deadline_ns >= 0 && now >= deadline_ns)
					return rc;
				if ((rc = live(c, now)))
					return rc;
				continue;
			}
			if (rc < 0)
				return rc;
		}
	}
	struct spa_rel *r = &c->rel;
	c->wait_since = spa_clock_ns();
	heard_since(c);
	for (;;) {
		const uint8_t *fr;
		size_t n;
		if (spa_rel_peek(r, &fr, &n)) {
			/* held, checked: what we wrote there decodes */
			spa_wire_hdr_decode(fr, &f->h, c->max_payload, NULL);
			f->raw = fr;
			f->plain = fr + HDR;
			f->verified = 1;
			f->pkt = r->next;
			f->held = 1;
			c->probe_gap = 0;
			return 0;
		}
		int64_t now = spa_clock_ns();
		int rc = timers(c, now);
		if (!rc)
			rc = before_wait(c, now, ACK_DELAY_NS);
		if (!rc)
			rc = probe(c, now);
		if (!rc)
			rc = live(c, now);
		if (rc)
			return rc;
		int64_t until = spa_rel_next_timeout(r);
		if (c->probe_at < until)
			until = c->probe_at;
		if (live_until(c) < until)
			until = live_until(c);
		if (r->ack_due && c->ack_at < until)
			until = c->ack_at;
		if (deadline_ns >= 0 && deadline_ns < until)
			until = deadline_ns;
		rc = frame_in(c, f, until == INT64_MAX ? -1 : until, 1);
		if (rc == 1) {
			c->probe_gap = 0;
			return 0;
		}
		if (rc == -ETIMEDOUT && (deadline_ns < 0 || spa_clock_ns() < deadline_ns))
			continue;
		if (rc < 0)
			return rc;
	}
}

/* The 64-bit number of data frame f. */
static inline uint64_t data_pkt(const struct spa_conn *c, const struct spa_frame *f)
{
	(void)c;
	return f->pkt;
}

int spa_conn_take(struct spa_conn *c, struct spa_frame *f, void *dst)
{
	const struct spa_wire_hdr *h = &f->h;
	if (f->verified) {
		memcpy(dst, f->plain, h->payload_len);
		return 0;
	}
	if (c->suite) {
		/* decrypted straight into place; on a failure what was written there is not
		 * counted as received */
		if (open_frame(c, 0, data_pkt(c, f), f->raw, h->payload_len, dst))
			return check_failed(c, h, f->raw);
	} else {
		uint32_t crc = spa_crc32c_copy(spa_wire_hdr_crc(f->raw), dst, f->raw + HDR,
					       h->payload_len);
		if (crc != h->crc)
			return check_failed(c, h, f->raw);
	}
	f->verified = 1;
	return 0;
}

int spa_conn_check(struct spa_conn *c, struct spa_frame *f)
{
	if (f->verified)
		return 0;
	if (c->suite) {
		if (open_frame(c, 0, data_pkt(c, f), f->raw, f->h.payload_len, c->rxbuf))
			return check_failed(c, &f->h, f->raw);
		f->plain = c->rxbuf;
	} else if (!crc_ok(&f->h, f->raw)) {
		return check_failed(c, &f->h, f->raw);
	}
	f->verified = 1;
	return 0;
}

void spa_conn_release(struct spa_conn *c, struct spa_frame *f)
{
	if (!c->tolerant) {
		c->rx_pkt++;
		c->drv->release_frame(c->base);
		return;
	}
	if (f->verified) {
		if (!f->held)
			take_ack(c, f->h.ack, spa_clock_ns());
		spa_rel_delivered(&c->rel);
		c->since_ack++;
	} else {
		c->rel.ack_due = 1; /* it failed its check: the sender sends it again */
	}
	if (!f->held)
		c->drv->release_frame(c->base);
}

/* ---- the keeper ----------------------------------------------------------------------- */

/* One thread per process keeps the connections that have liveness on: when the application
 * has sent nothing on one for hb_ns (it computes, or waits elsewhere), the keeper enters it,
 * takes in what came (reliable: ACKs, PROBEs, data frames into the receive window), runs its
 * timers and sends what is owed and a HEARTBEAT, then leaves. The peer, waiting, hears it.
 *
 * Who is inside is settled without a lock on the application's side: an asymmetric Dekker.
 * The application stores app_in = 1 and then loads keeper_in with only a compiler barrier in
 * between; the keeper stores keeper_in = 1 and then runs membarrier(PRIVATE_EXPEDITED), which
 * puts a full memory barrier on every running thread of the process, before it loads app_in.
 * So at most one of them finds the other out and goes in. Without membarrier (an old kernel,
 * a seccomp filter) both sides use a full fence. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;     /* CLOCK_MONOTONIC */
	struct spa_conn *head;
	unsigned gen;          /* bumped in a forked child: the parent's list is not its own */
	int started;           /* the thread runs (in this process) */
} K = { .mu = PTHREAD_MUTEX_INITIALIZER, .gen = 1 };
atomic_int spa_guard_light; /* membarrier registered: the application's barrier is light */
static pthread_once_t k_once = PTHREAD_ONCE_INIT;

static void keeper_prepare(void)
{
	pthread_mutex_lock(&K.mu);
}
static void keeper_parent(void)
{
	pthread_mutex_unlock(&K.mu);
}
static void keeper_child(void)
{
	/* the child has no keeper thread and none of the parent's connections to keep */
	pthread_mutex_init(&K.mu, NULL);
	K.head = NULL;
	K.started = 0;
	K.gen++;
}
static void keeper_once(void)
{
	pthread_atfork(keeper_prepare, keeper_parent, keeper_child);
}

struct spa_guard *spa_conn_guard(struct spa_conn *c)
{
	return c->guard;
}

/* spa_guard_enter (include/spa/conn.h) found the keeper in: step back, wait, try again. */
void spa_guard_wait(struct spa_guard *g)
{
	for (;;) {
		atomic_store_explicit(&g->app_in, 0, memory_order_release);
		while (atomic_load_explicit(&g->keeper_in, memory_order_acquire))
			sched_yield();
		atomic_store_explicit(&g->app_in, 1, memory_order_relaxed);
		if (atomic_load_explicit(&spa_guard_light, memory_order_relaxed))
			atomic_signal_fence(memory_order_seq_cst);
		else
			atomic_thread_fence(memory_order_seq_cst);
		if (!atomic_load_explicit(&g->keeper_in, memory_order_acquire))
			return;
	}
}

/* The keeper's side: 1 when it is in (the application is not), else 0. */
static int keeper_try(struct spa_guard *g)
{
	atomic_store_explicit(&g->keeper_in, 1, memory_order_relaxed);
	if (atomic_load_explicit(&spa_guard_light, memory_order_relaxed))
		syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
	else
		atomic_thread_fence(memory_order_seq_cst);
	if (!atomic_load_explicit(&g->app_in, memory_order_acquire))
		return 1;
	atomic_store_explicit(&g->keeper_in, 0, memory_order_release);
	return 0;
}

/* Speak for an application that is away (the keeper is in c). */
static void keeper_work(struct spa_conn *c, int64_t now)
{
	if (c->failed || c->peer_closed)
		return;
	if (c->tolerant) {
		/* what came, into the window (bounded: the application may come back) */
		for (int i = 0; i < 256; i++) {
			struct spa_frame f;
			if (frame_in(c, &f, 0, 0) < 0)
				break;
		}
		if (c->failed || timers(c, now) || before_wait(c, now, ACK_DELAY_NS))
			return;
	}
	if (now - atomic_load_explicit(&c->last_tx_ns, memory_order_relaxed) >= c->hb_ns)
		send_heartbeat(c);
}

static void *keeper_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&K.mu);
	for (;;) {
		int64_t now = spa_clock_ns(), next = now + KEEPER_IDLE_NS;
		for (struct spa_conn *c = K.head; c; c = c->k_next) {
			int64_t due = atomic_load_explicit(&c->last_tx_ns, memory_order_relaxed) +
				      c->hb_ns;
			if (due <= now) {
				if (keeper_try(c->guard)) {
					keeper_work(c, now);
					atomic_store_explicit(&c->guard->keeper_in, 0,
							      memory_order_release);
					due = now + c->hb_ns;
				} else {
					due = now + c->hb_ns / 4; /* it is in: it speaks for itself */
				}
			}
			if (due < next)
				next = due;
		}
		struct timespec ts = { .tv_sec = next / 1000000000, .tv_nsec = next % 1000000000 };
		pthread_cond_timedwait(&K.cv, &K.mu, &ts);
	}
	return NULL;
}

/* Put c on the keeper's list (starting the thread the first time). Without a thread (it could
 * not start) the application's own waits still send HEARTBEATs. */
static void keeper_add(struct spa_conn *c)
{
	pthread_once(&k_once, keeper_once);
	pthread_mutex_lock(&K.mu);
	if (!K.started) {
		/* the light barrier only once the heavy one is sure to work (before any
		 * connection is kept) */
		if (!syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0))
			atomic_store(&spa_guard_light, 1);
		else
			atomic_store(&spa_guard_light, 0);
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&K.cv, &ca);
		pthread_condattr_destroy(&ca);
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		pthread_t t;
		K.started = !pthread_create(&t, &a, keeper_main, NULL);
		pthread_attr_destroy(&a);
	}
	c->k_prev = NULL;
	c->k_next = K.head;
	if (K.head)
		K.head->k_prev = c;
	K.head = c;
	c->k_gen = K.gen;
	pthread_cond_signal(&K.cv);
	pthread_mutex_unlock(&K.mu);
}

/* Take c off the list; once this returns the keeper is not in c (it works holding K.mu). */
static void keeper_del(struct spa_conn *c)
{
	if (!c->k_gen)
		return;
	pthread_mutex_lock(&K.mu);
	if (c->k_gen == K.gen) {
		if (c->k_prev)
			c->k_prev->k_next = c->k_next;
		else
			K.head = c->k_next;
		if (c->k_next)
			c->k_next->k_prev = c->k_prev;
	}
	c->k_gen = 0;
	pthread_mutex_unlock(&K.mu);
}

/* ---- handshake ------------------------------------------------------------------------- */

static void params_encode(const struct params *p, uint8_t b[PARAMS_SIZE])
{
	memset(b, 0, PARAMS_SIZE);
	put32(b + 0, p->max_frame);
	put32(b + 4, p->window);
	put32(b + 8, p->flags);
	put32(b + 12, p->suites);
}

static int params_decode(const uint8_t *b, size_t n, struct params *p, struct spa_errbuf *e)
{
	if (n != PARAMS_SIZE)
		return spa_err(e, -SPA_EPROTO, "handshake parameters of %zu bytes, expected %u", n,
			       PARAMS_SIZE);
	p->max_frame = get32(b);
	p->window = get32(b + 4);
	p->flags = get32(b + 8);
	p->suites = get32(b + 12);
	if (get32(b + 16))
		return spa_err(e, -SPA_EPROTO, "handshake parameters: reserved bytes are not 0");
	if (p->max_frame < HDR + TAG_MAX + 64 || p->flags & ~PF_TOLERANT ||
	    p->suites & ~(SUITE_AES | SUITE_CHACHA | SUITE_AEGIS))
		return spa_err(e, -SPA_EPROTO, "handshake parameters out of range (frame limit "
			       "%u, flags 0x%x, suites 0x%x)", p->max_frame, p->flags, p->suites);
	return 0;
}

static int conn_make(struct spa_conn **out, struct spa_link_base *base,
		     const struct spa_link_driver *drv, const struct spa_conn_cfg *cfg,
		     int server)
{
	struct spa_conn *c;
	if (posix_memalign((void **)&c, 64, sizeof *c))
		return -ENOMEM;
	memset(c, 0, sizeof *c);
	c->base = base;
	c->drv = drv;
	c->opts = cfg->opts;
	c->server = server;
	c->datagram = !!(drv->flags & SPA_DRV_DATAGRAM) || base->datagram;
	c->reserve_plain = !!(drv->flags & SPA_DRV_COPIES);
	c->faults = cfg->opts->faults;
	c->faulty = faults_on(&c->faults);
	c->tolerant = c->datagram || c->faulty;
	size_t mf = drv->link_max_frame ? drv->link_max_frame(base) : drv->max_frame;
	if (mf <= HDR + TAG_MAX || mf > drv->max_frame)
		mf = drv->max_frame;
	c->max_frame = mf;
	c->max_payload = mf - HDR;
	c->uri = cfg->uri;
	c->stats = cfg->stats;
	c->err = cfg->err;
	c->rx_ctl = 1;
	c->guard = drv->guard ? drv->guard : &c->own_guard;
	c->tx_ctl = 1;
	c->rxbuf = malloc(mf > HDR + CTL_PAYLOAD_MAX ? mf : HDR + CTL_PAYLOAD_MAX);
	if (!c->rxbuf) {
		free(c);
		return -ENOMEM;
	}
	*out = c;
	return 0;
}

/* Once per process: a link without keys says so. */
static void say_unauthenticated(const struct spa_conn *c)
{
	static atomic_int said;
	if (atomic_exchange(&said, 1))
		return;
	if (c->base->local)
		fprintf(stderr, "spa link: note: %s is not authenticated nor encrypted (no keys): "
			"allowed because the peer is on this host; give keys (spa-keygen; --key, "
			"--cloud-pub, --allow) to authenticate it\n", c->uri);
	else
		fprintf(stderr, "spa link: warning: %s is not authenticated nor encrypted "
			"(--insecure): anyone on the network can read it, or connect as an edge\n",
			c->uri);
}

/* After the handshake: the agreed frame limit, the keys, the injector's state. */
/* The window of a reliable connection whose frames are max_frame bytes. */
static uint32_t rel_window(size_t max_frame)
{
	size_t w = REL_WINDOW_BYTES / max_frame;
	return w < 16 ? 16 : w > 1024 ? 1024 : (uint32_t)w;
}

static int conn_ready(struct spa_conn *c, const struct params *peer, unsigned suite,
		      const uint8_t *tx_key, const uint8_t *rx_key)
{
	if (peer->max_frame < c->max_frame)
		c->max_frame = peer->max_frame;
	/* reliable when either side's transport may lose frames (or injects faults) */
	c->tolerant |= !!(peer->flags & PF_TOLERANT);
	if (c->tolerant && c->max_frame > REL_FRAME_MAX)
		c->max_frame = REL_FRAME_MAX;
	c->suite = suite;
	c->tag = !suite ? 0 : suite == SUITE_AEGIS ? SPA_WIRE_TAG32_SIZE : SPA_WIRE_TAG_SIZE;
	c->flags = !suite ? 0 : suite == SUITE_AEGIS ? SPA_WIRE_SEALED | SPA_WIRE_TAG32
						    : SPA_WIRE_SEALED;
	c->max_payload = c->max_frame - HDR - c->tag;
	if (suite) {
		key_set(&c->tx_key, tx_key, suite);
		key_set(&c->rx_key, rx_key, suite);
		if (!(c->txbuf = malloc(c->max_frame)))
			return spa_conn_fail(c, -ENOMEM, "out of memory");
	} else {
		say_unauthenticated(c);
	}
	if (c->faulty) {
		spa_rng_seed(&c->rng, c->faults.seed);
		c->scratch = malloc(c->max_frame);
		c->held = malloc(c->max_frame);
		if (!c->scratch || !c->held)
			return spa_conn_fail(c, -ENOMEM, "out of memory");
	}
	if (c->tolerant) {
		/* both sides come to the same window: the smaller of the two announced, each
		 * from its own frame limit */
		uint32_t w = rel_window(c->max_frame);
		if (peer->window && peer->window < w)
			w = peer->window;
		if (spa_rel_init(&c->rel, w, c->max_frame, RTO0_NS, RTO_MIN_NS, RTO_MAX_NS))
			return spa_conn_fail(c, -ENOMEM, "out of memory");
	}
	return 0;
}

/* The handshake is over and the connection goes to the application: liveness starts (the
 * silence limit opts.dead_ns, 0 meaning DEAD_NS or DEAD_LOCAL_NS, < 0 off; a HEARTBEAT after
 * an eighth of it, or of DEAD_NS when that is less, of our silence: a udp peer's death shows
 * in the ICMP they bring back) and the keeper keeps it. */
static void conn_live(struct spa_conn *c)
{
	int64_t d = c->opts->dead_ns;
	/* (emulated delay: a side spins through it in its receive, silent meanwhile) */
	int64_t delay = c->opts->delay_ns > 0 ? c->opts->delay_ns : 0;
	c->dead_ns = d < 0 ? 0 : d ? d : (c->base->local ? DEAD_LOCAL_NS : DEAD_NS) + 4 * delay;
	c->hb_ns = (c->dead_ns < DEAD_NS ? c->dead_ns : DEAD_NS) / HB_DIV;
	int64_t now = spa_clock_ns();
	atomic_store_explicit(&c->last_tx_ns, now, memory_order_relaxed);
	c->last_rx_ns = c->wait_since = now;
	if (!c->dead_ns)
		return;
	if (c->drv->flags & SPA_DRV_KERNEL_ACKS) {
		/* the kernels say when the peer is gone; our waits' HEARTBEATs let ours notice a
		 * host that stopped answering */
		c->kernel_acks = 1;
		if (c->drv->set_dead)
			c->drv->set_dead(c->base, c->dead_ns);
		return;
	}
	keeper_add(c);
}

/* The AEAD suites this side takes (opts.aead may insist on one). */
static unsigned my_suites(const struct spa_conn *c)
{
	unsigned aes = crypto_aead_aes256gcm_is_available() ? SUITE_AES : 0;
#if HAVE_AEGIS
	unsigned aegis = crypto_aead_aegis128l_KEYBYTES && aes ? SUITE_AEGIS : 0;
#else
	unsigned aegis = 0;
#endif
	switch (c->opts->aead) {
	case SPA_AEAD_AES256GCM:
		return aes;
	case SPA_AEAD_CHACHA20POLY1305:
		return SUITE_CHACHA;
	case SPA_AEAD_AEGIS128L:
		return aegis;
	default:
		return aegis | aes | SUITE_CHACHA;
	}
}

static void my_params(const struct spa_conn *c, struct params *p, unsigned suites)
{
	size_t mf = c->tolerant && c->max_frame > REL_FRAME_MAX ? REL_FRAME_MAX : c->max_frame;
	*p = (struct params){ .max_frame = (uint32_t)c->max_frame,
			      .window = rel_window(mf),
			      .flags = c->tolerant ? PF_TOLERANT : 0, .suites = suites };
}

static uint64_t random_id(void)
{
	uint64_t v = 0;
	while (!v)
		randombytes_buf(&v, sizeof v);
	return v;
}

/* The Noise prologue: binds the handshake to this connection's id. */
static void prologue(uint8_t out[12], uint64_t id)
{
	memcpy(out, "spa2", 4);
	for (int i = 0; i < 8; i++)
		out[4 + i] = (uint8_t)(id >> (8 * i));
}

/* A frame of the handshake: decoded, whole, its CRC checked, one piece. 1 when it is, 0 when
 * it is to be ignored (noise, another connection's, damaged). */
static int hs_frame(struct spa_conn *c, const uint8_t *fr, size_t flen, struct spa_wire_hdr *h)
{
	if (flen < HDR || spa_wire_hdr_decode(fr, h, c->max_payload, NULL) ||
	    flen != spa_wire_frame_size(h) || (h->flags & SPA_WIRE_SEALED) || !crc_ok(h, fr)) {
		c->stats->bad_frames++;
		return 0;
	}
	return 1;
}

/* Is this side allowed to run without keys on this transport? 0, or -SPA_EAUTH with the
 * reason in c's error. */
static int plain_allowed(struct spa_conn *c)
{
	if (c->base->local || c->opts->insecure)
		return 0;
	return spa_conn_fail(c, -SPA_EAUTH, "the peer is not on this host and this side has no "
			     "keys: give keys (spa-keygen -o NAME; the edge --key and --cloud-pub, "
			     "the cloud --key and --allow), or --insecure to run unauthenticated");
}

int spa_conn_connect(struct spa_conn **out, const struct spa_link_driver *drv, const char *addr,
		     const struct spa_conn_cfg *cfg, int64_t timeout_ns)
{
	const struct spa_link_opts *o = cfg->opts;
	int keyed = o->key && o->peer_pub;
	if (!!o->key != !!o->peer_pub)
		return spa_err(cfg->err, -SPA_EUSAGE, "%s: a keyed connection needs both this "
			       "side's key (--key) and the cloud's public key (--cloud-pub)",
			       cfg->uri);
	if (spa_crypto_init())
		return spa_err(cfg->err, -SPA_EUNSUPPORTED, "%s: libsodium could not start",
			       cfg->uri);
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	struct spa_link_base *base;
	int rc = drv->connect(&base, addr, timeout_ns, cfg->err);
	if (rc)
		return rc;
	struct spa_conn *c;
	if ((rc = conn_make(&c, base, drv, cfg, 0))) {
		drv->close(base);
		return spa_err(cfg->err, rc, "%s: out of memory", cfg->uri);
	}
	c->id = random_id();
	if (drv->bind_conn)
		drv->bind_conn(base, c->id);
	struct spa_noise hs;
	memset(&hs, 0, sizeof hs);
	struct params mine, peer;
	uint8_t pb[PARAMS_SIZE], msg[HS_MAX];
	size_t mlen;
	unsigned suites = keyed ? my_suites(c) : 0;
	if (keyed && !suites) {
		rc = spa_conn_fail(c, -SPA_EUNSUPPORTED, "the AEAD asked for (--aead) is not "
				   "available here (AES-NI missing, or aegis128l in a libsodium before "
				   "1.0.19): let the link choose");
		goto err;
	}
	if (!keyed && (rc = plain_allowed(c)))
		goto err;
	my_params(c, &mine, suites);
	params_encode(&mine, pb);
	put32(msg, keyed ? MODE_IK : MODE_PLAIN);
	if (keyed) {
		uint8_t pro[12];
		prologue(pro, c->id);
		if ((rc = spa_noise_init(&hs, 1, o->key, o->peer_pub, pro, sizeof pro, NULL)) ||
		    (rc = spa_noise_write1(&hs, pb, sizeof pb, msg + 4))) {
			rc = spa_conn_fail(c, rc, "the handshake's key exchange failed (the cloud's "
					   "public key is not a usable X25519 key?)");
			goto err;
		}
		mlen = 4 + SPA_NOISE_MSG1_OVERHEAD + PARAMS_SIZE;
	} else {
		memcpy(msg + 4, pb, sizeof pb);
		mlen = 4 + PARAMS_SIZE;
	}
	/* the CONNECT, kept to be said again byte for byte */
	rc = send_hs(c, SPA_MSG_CONNECT, 0, msg, mlen, c->hs_frame);
	c->hs_len = HDR + mlen;
	int64_t retry = RETRY0_NS, next = spa_clock_ns() + retry;
	for (;;) {
		if (rc && rc != -ECONNREFUSED) {
			rc = drv_error(c, rc, "sending the handshake");
			goto err;
		}
		int64_t now = spa_clock_ns();
		if (deadline >= 0 && now >= deadline) {
			rc = spa_conn_fail(c, -ETIMEDOUT, "no answer to the handshake (CONNECT) in "
					   "time: is the cloud listening there, and on this transport?");
			goto err;
		}
		if (now >= next) {
			rc = send1(c, c->hs_frame, c->hs_len);
			retry = retry * 2 < RETRY_MAX_NS ? retry * 2 : RETRY_MAX_NS;
			next = now + retry;
			continue;
		}
		int64_t until = deadline >= 0 && deadline < next ? deadline : next;
		const uint8_t *fr;
		size_t flen;
		rc = drv->recv_frame(base, &fr, &flen, until);
		if (rc == -ECONNREFUSED) {
			/* a datagram transport: nobody listens there yet; try again later */
			struct timespec ts = { 0, 5000000 };
			nanosleep(&ts, NULL);
			rc = 0;
			continue;
		}
		if (rc == -ETIMEDOUT) {
			rc = 0;
			continue;
		}
		if (rc) {
			rc = drv_error(c, rc, "waiting for the handshake's answer");
			goto err;
		}
		struct spa_wire_hdr h;
		int ok = hs_frame(c, fr, flen, &h) && h.conn == c->id;
		if (ok && h.type == SPA_MSG_CLOSE) {
			int code = h.aux ? -(int)h.aux : -SPA_EPEER;
			rc = spa_conn_fail(c, code == -SPA_ECLOSED ? -SPA_EPEER : code,
					   "the cloud refused the connection: %.*s",
					   (int)(h.payload_len > 400 ? 400 : h.payload_len),
					   (const char *)fr + HDR);
			drv->release_frame(base);
			goto err;
		}
		if (ok && h.type == SPA_MSG_ACCEPT) {
			struct spa_errbuf e = { "" };
			const uint8_t *p = fr + HDR;
			uint32_t mode = h.payload_len >= 4 ? get32(p) : ~0u;
			if (mode != (keyed ? MODE_IK : MODE_PLAIN)) {
				rc = spa_err(&e, -SPA_EPROTO, "it answered in mode %u to mode %u", mode,
					     keyed ? MODE_IK : MODE_PLAIN);
			} else if (keyed) {
				if (h.payload_len != 4 + SPA_NOISE_MSG2_OVERHEAD + PARAMS_SIZE ||
				    spa_noise_read2(&hs, p + 4, h.payload_len - 4, pb))
					rc = spa_err(&e, -SPA_EAUTH, "it does not prove the key pinned "
						     "with --cloud-pub (damaged, or not that cloud)");
				else
					rc = params_decode(pb, sizeof pb, &peer, &e);
			} else {
				rc = params_decode(p + 4, h.payload_len - 4, &peer, &e);
			}
			drv->release_frame(base);
			if (!rc && keyed && (!(peer.suites & my_suites(c)) ||
					     (peer.suites & (peer.suites - 1))))
				rc = spa_err(&e, -SPA_EPROTO, "it chose AEAD suites 0x%x", peer.suites);
			if (rc) {
				rc = spa_conn_fail(c, rc, "the cloud's ACCEPT: %s", e.msg);
				goto err;
			}
			break;
		}
		drv->release_frame(base);
	}
	if (keyed) {
		uint8_t i2r[32], r2i[32], hh[32];
		memcpy(c->peer_key, o->peer_pub, 32);
		spa_noise_split(&hs, i2r, r2i, hh);
		rc = conn_ready(c, &peer, peer.suites, i2r, r2i);
		sodium_memzero(i2r, sizeof i2r);
		sodium_memzero(r2i, sizeof r2i);
	} else {
		rc = conn_ready(c, &peer, 0, NULL, NULL);
	}
	if (rc)
		goto err;
	conn_live(c);
	*out = c;
	return 0;
err:
	if (keyed)
		spa_noise_wipe(&hs);
	c->failed = 0; /* the message is in cfg->err; say nothing more to the peer */
	c->peer_closed = 1;
	spa_conn_destroy(c, 0);
	return rc;
}

/* Refuse a handshake: CLOSE with the code and the reason (best effort), and fail c with them. */
static int refuse(struct spa_conn *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int refuse(struct spa_conn *c, int code, const char *fmt, ...)
{
	char why[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	send_hs(c, SPA_MSG_CLOSE, (uint32_t)(code < 0 ? -code : code), why, strlen(why), NULL);
	return spa_conn_fail(c, code, "refused a connection: %s", why);
}

static int allowed(const struct spa_link_opts *o, const uint8_t pk[32])
{
	int ok = 0;
	for (size_t i = 0; i < o->n_allow; i++)
		ok |= !sodium_memcmp(o->allow + 32 * i, pk, 32);
	return ok;
}

/* Run the listener's side of the handshake on a fresh transport connection. Returns 0 (the
 * connection is ready), or a negative code (refused or silent: drop it and go on). */
static int serve_handshake(struct spa_conn *c, int64_t deadline)
{
	const struct spa_link_opts *o = c->opts;
	const uint8_t *fr;
	size_t flen;
	struct spa_wire_hdr h;
	for (;;) {
		int rc = c->drv->recv_frame(c->base, &fr, &flen, deadline);
		if (rc)
			return rc;
		if (hs_frame(c, fr, flen, &h) && h.type == SPA_MSG_CONNECT && h.conn)
			break;
		c->drv->release_frame(c->base);
		if (!c->datagram)
			return -SPA_EPROTO; /* a stream that does not start with CONNECT */
	}
	c->id = h.conn;
	if (c->drv->bind_conn)
		c->drv->bind_conn(c->base, c->id);
	uint8_t in[HS_MAX], msg[HS_MAX], pb[PARAMS_SIZE];
	size_t n = h.payload_len;
	int too_long = n > sizeof in;
	if (!too_long)
		memcpy(in, fr + HDR, n);
	c->drv->release_frame(c->base);
	uint32_t mode = n >= 4 && !too_long ? get32(in) : ~0u;
	struct params peer, mine;
	struct spa_errbuf e = { "" };
	int rc;
	unsigned suite = 0;
	struct spa_noise hs;
	if (mode == MODE_PLAIN) {
		if (o->key)
			return refuse(c, -SPA_EAUTH, "this cloud authenticates its edges: give "
				      "spa-edge --key EDGE.key --cloud-pub CLOUD.pub (and the cloud "
				      "--allow EDGE.pub)");
		if (plain_allowed(c))
			return refuse(c, -SPA_EAUTH, "an unauthenticated connection from another "
				      "host: use keys, or give the cloud --insecure");
		if ((rc = params_decode(in + 4, n - 4, &peer, &e)))
			return refuse(c, rc, "%s", e.msg);
		my_params(c, &mine, 0);
		params_encode(&mine, msg + 4);
		n = 4 + PARAMS_SIZE;
	} else if (mode == MODE_IK) {
		if (!o->key)
			return refuse(c, -SPA_EAUTH, "this cloud has no key: start it with --key "
				      "CLOUD.key --allow EDGE.pub, or run the edge without --key and "
				      "--cloud-pub (same host only)");
		uint8_t pro[12];
		prologue(pro, c->id);
		if ((rc = spa_noise_init(&hs, 0, o->key, NULL, pro, sizeof pro, NULL)))
			return refuse(c, rc, "key exchange failed");
		if (n != 4 + SPA_NOISE_MSG1_OVERHEAD + PARAMS_SIZE ||
		    spa_noise_read1(&hs, in + 4, n - 4, pb)) {
			spa_noise_wipe(&hs);
			return refuse(c, -SPA_EAUTH, "the edge's CONNECT does not decrypt with this "
				      "cloud's key: the edge pins another cloud key (--cloud-pub), or "
				      "the message was damaged");
		}
		if (!allowed(o, hs.rs)) {
			char b64[45];
			spa_key_b64(hs.rs, b64);
			spa_noise_wipe(&hs);
			return refuse(c, -SPA_EAUTH, "edge key %s is not among this cloud's allowed "
				      "keys (--allow)", b64);
		}
		memcpy(c->peer_key, hs.rs, 32);
		memcpy(c->hs_e, in + 4, 32);
		if ((rc = params_decode(pb, sizeof pb, &peer, &e))) {
			spa_noise_wipe(&hs);
			return refuse(c, rc, "%s", e.msg);
		}
		unsigned common = my_suites(c) & peer.suites;
		suite = common & SUITE_AEGIS  ? SUITE_AEGIS
			: common & SUITE_AES  ? SUITE_AES
			: common & SUITE_CHACHA ? SUITE_CHACHA
						: 0;
		if (!suite) {
			spa_noise_wipe(&hs);
			return refuse(c, -SPA_EUNSUPPORTED, "no AEAD suite both sides take (edge 0x%x, "
				      "cloud 0x%x): let both sides choose (no --aead)", peer.suites,
				      my_suites(c));
		}
		my_params(c, &mine, suite);
		params_encode(&mine, pb);
		if ((rc = spa_noise_write2(&hs, pb, sizeof pb, msg + 4))) {
			spa_noise_wipe(&hs);
			return refuse(c, rc, "key exchange failed");
		}
		n = 4 + SPA_NOISE_MSG2_OVERHEAD + PARAMS_SIZE;
	} else {
		return refuse(c, -SPA_EPROTO, "handshake mode %d is not known to this build: run the "
			      "same spa version on both sides", (int)mode);
	}
	put32(msg, mode);
	c->hs_len = HDR + n;
	if ((rc = send_hs(c, SPA_MSG_ACCEPT, 0, msg, n, c->hs_frame))) {
		if (mode == MODE_IK)
			spa_noise_wipe(&hs);
		return rc;
	}
	if (mode == MODE_IK) {
		uint8_t i2r[32], r2i[32], hh[32];
		spa_noise_split(&hs, i2r, r2i, hh);
		rc = conn_ready(c, &peer, suite, r2i, i2r);
		sodium_memzero(i2r, sizeof i2r);
		sodium_memzero(r2i, sizeof r2i);
		return rc;
	}
	return conn_ready(c, &peer, 0, NULL, NULL);
}

int spa_conn_accept(struct spa_conn **out, const struct spa_link_driver *drv,
		    struct spa_listener_base *l, const struct spa_conn_cfg *cfg,
		    int64_t timeout_ns)
{
	if (spa_crypto_init())
		return spa_err(cfg->err, -SPA_EUNSUPPORTED, "%s: libsodium could not start",
			       cfg->uri);
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	for (;;) {
		int64_t left = deadline < 0 ? -1 : deadline - spa_clock_ns();
		if (deadline >= 0 && left <= 0)
			return spa_err(cfg->err, -ETIMEDOUT, "%s: no edge connected in time", cfg->uri);
		struct spa_link_base *base;
		int rc = drv->accept(l, &base, left, cfg->err);
		if (rc)
			return rc;
		struct spa_conn *c;
		if ((rc = conn_make(&c, base, drv, cfg, 1))) {
			drv->close(base);
			return spa_err(cfg->err, rc, "%s: out of memory", cfg->uri);
		}
		/* A transport connection that never says CONNECT must not hold the listener. */
		int64_t hs = spa_clock_ns() + HANDSHAKE_NS;
		if (deadline >= 0 && deadline < hs)
			hs = deadline;
		rc = serve_handshake(c, hs);
		if (!rc) {
			conn_live(c);
			*out = c;
			return 0;
		}
		if (rc == -ENOMEM) {
			spa_conn_destroy(c, 0);
			return spa_err(cfg->err, rc, "%s: out of memory", cfg->uri);
		}
		/* Refused or silent: say why on stderr, once per connection, and serve on. */
		if (c->failed && c->failed != -ETIMEDOUT)
			fprintf(stderr, "spa link: %s\n", c->err->msg);
		c->err->msg[0] = 0;
		c->peer_closed = 1;
		spa_conn_destroy(c, 0);
	}
}

/* A reliable connection closing cleanly: its frames not yet acknowledged are still only in
 * its window. Keep sending them again (and taking ACKs) until the peer has them all, a
 * failure, or LINGER_NS: a BYE sent just before closing arrives even over a lossy network. */
static void linger(struct spa_conn *c)
{
	/* about eight timeouts' worth (a loss or two), at least 50 ms, at most LINGER_NS: a
	 * peer that closed at once (its CLOSE lost) sends no more ACKs, and an ICMP
	 * unreachable may be rate-limited away */
	int64_t span = 8 * (c->rel.srtt + 4 * c->rel.rttvar);
	span = span < 50000000 ? 50000000 : span > LINGER_NS ? LINGER_NS : span;
	int64_t end = spa_clock_ns() + span;
	while (!c->failed && c->rel.una < c->rel.nxt && spa_clock_ns() < end)
		if (pump(c, end) < 0)
			break;
}

void spa_conn_destroy(struct spa_conn *c, int code)
{
	if (!c)
		return;
	keeper_del(c);
	if (c->tolerant && c->rel.w && !c->failed && !c->peer_closed && !code)
		linger(c);
	/* Tell the peer, unless it is gone or said so first: after a failure, with its code and
	 * message, so that the survivor says what ended the connection. What arrived last (a
	 * BYE) is acknowledged first: the peer's linger ends at once. */
	if (!c->peer_closed && !c->closed_sent && c->id && c->tolerant && c->rel.w &&
	    c->rel.ack_due)
		send_ack(c, spa_clock_ns(), 0);
	if (!c->peer_closed && !c->closed_sent && c->id) {
		c->closed_sent = 1;
		if (!code)
			code = c->failed;
		const char *why = c->failed ? c->err->msg : "";
		send_ctl(c, SPA_MSG_CLOSE, (uint32_t)(code < 0 ? -code : code), why,
			 strnlen(why, 400));
	}
	c->drv->close(c->base);
	spa_rel_fini(&c->rel);
	sodium_memzero(&c->tx_key, sizeof c->tx_key);
	sodium_memzero(&c->rx_key, sizeof c->rx_key);
	free(c->txbuf);
	free(c->rxbuf);
	free(c->scratch);
	free(c->held);
	free(c);
}

/* ---- facts ----------------------------------------------------------------------------- */

int spa_conn_failed(const struct spa_conn *c)
{
	return c->failed;
}

uint64_t spa_conn_id(const struct spa_conn *c)
{
	return c->id;
}

size_t spa_conn_max_payload(const struct spa_conn *c)
{
	return c->max_payload;
}

int spa_conn_tolerant(const struct spa_conn *c)
{
	return c->tolerant;
}

const char *spa_conn_aead(const struct spa_conn *c)
{
	return c->suite == SUITE_AEGIS ? "aegis128l" : c->suite == SUITE_AES ? "aes256gcm"
		: c->suite == SUITE_CHACHA ? "chacha20poly1305" : "none";
}

int spa_conn_peer_key(const struct spa_conn *c, uint8_t pk[32])
{
	if (!c->suite)
		return -ENOENT;
	memcpy(pk, c->peer_key, 32);
	return 0;
}

struct spa_link_base *spa_conn_base(struct spa_conn *c)
{
	return c->base;
}

uint64_t spa_conn_next_pkt(struct spa_conn *c)
{
	uint64_t p;
	spa_conn_enter(c);
	if (c->tolerant) {
		/* a number taken, its frame not kept: never sent again */
		p = c->rel.nxt;
		spa_rel_sent(&c->rel, 0, spa_clock_ns());
	} else {
		p = c->tx_pkt++;
	}
	spa_conn_leave(c);
	return p;
}

uint64_t spa_conn_copied_tx(const struct spa_conn *c)
{
	return c->copied_tx + (c->drv->copied_tx ? c->drv->copied_tx(c->base) : 0);
}
