/* The connection layer: one handshake, connection ids, frame numbers and control frames for
 * every driver (include/spa/conn.h; spec: docs/wire-protocol.md, "Connections").
 *
 * Handshake. The connecting side draws a random 64-bit connection id (getrandom) and sends
 * CONNECT, repeated with a growing interval until ACCEPT or CLOSE comes back or its time is
 * up (a datagram may be lost; on a stream a repeat is harmless). The listener's accept takes a
 * transport connection from its driver, waits a bounded time for its CONNECT, checks it and
 * answers ACCEPT, or CLOSE with the reason (the connecting side reports it). A repeated
 * CONNECT that reaches an accepted connection is answered with the same ACCEPT again. Both
 * sides' parameters (frame limit, receive window) travel in the two messages; each side then
 * uses the smaller frame limit.
 *
 * Frames. Data frames are numbered per direction from 0 (pkt), control frames apart (their own
 * counter, the handshake's being 0). A stream transport (shm, tcp) delivers frames in order,
 * and the receiver requires each next number exactly; a datagram transport, or any link whose
 * fault injector is on, is tolerant (the link reassembles in any order). Every frame must carry
 * the connection's id: on a stream another id ends the connection, on a datagram link it is
 * somebody else's frame and is dropped. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "spa/clock.h"
#include "spa/conn.h"
#include "spa/rng.h"

#define HDR SPA_WIRE_HDR_SIZE
#define PARAMS_SIZE 24u
#define RETRY0_NS 20000000ll     /* first CONNECT repeat after 20 ms, then doubling ... */
#define RETRY_MAX_NS 500000000ll /* ... up to every 500 ms */
#define HANDSHAKE_NS 2000000000ll /* accept: longest wait for one transport's CONNECT */

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* What each side says about itself in CONNECT and ACCEPT (docs/wire-protocol.md). */
struct params {
	uint32_t mode;       /* 0: unauthenticated */
	uint32_t max_frame;  /* the sender's frame limit, header included */
	uint32_t window;     /* frames it keeps out of order (0: none) */
	uint32_t flags;      /* PF_* */
};
#define PF_TOLERANT 1u /* datagram transport or faults on: frames may come in any order */

/* A frame the injector held back, sent after the next frame of the same message. */
struct held {
	int on;
	uint8_t hb[HDR];
	const uint8_t *p;
	size_t n;
};

struct spa_conn {
	struct spa_link_base *base;
	const struct spa_link_driver *drv;
	uint64_t id;
	int server;
	int datagram;            /* the driver may lose, repeat, reorder and forge frames */
	int tolerant;            /* frames in any order (datagram, or faults on) */
	size_t max_frame;        /* agreed: header + payload */
	size_t max_payload;

	uint64_t tx_pkt, tx_ctl; /* next data / control frame number */
	uint64_t rx_pkt;         /* next data frame number expected (stream) */
	uint64_t rx_ctl;         /* control frames below this were seen */
	uint8_t accept_frame[HDR + PARAMS_SIZE + 8]; /* server: ACCEPT, said again on a repeat */
	size_t accept_len;

	/* fault injection (opts.faults; off unless a probability is > 0) */
	int faulty;
	struct spa_link_faults faults;
	struct spa_rng rng;
	uint8_t *scratch;        /* max_payload bytes: a corrupted copy of a payload */
	uint64_t copied_tx;      /* payload bytes the injector copied */
	struct held held;

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

int spa_conn_fail(struct spa_conn *c, int code, const char *fmt, ...)
{
	if (c->failed)
		return c->failed;
	va_list ap;
	char msg[sizeof c->err->msg];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
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

static int drv_error(struct spa_conn *c, int rc, const char *what)
{
	if (rc == -SPA_ECLOSED) {
		c->peer_closed = 1;
		return spa_conn_fail(c, rc, "the peer closed the link or went away (%s)", what);
	}
	return spa_conn_fail(c, rc, "transport error while %s: %s", what, spa_strerror(rc));
}

/* ---- sending --------------------------------------------------------------------------- */

static int send2(struct spa_conn *c, const uint8_t *hb, const uint8_t *p, size_t n)
{
	struct iovec iov[2] = { { (void *)hb, HDR }, { (void *)p, n } };
	return c->drv->send_frame(c->base, iov, n ? 2 : 1);
}

/* Send one frame through the injector: one uniform draw per frame picks at most one fault,
 * drop, dup, reorder, corrupt, in that order of the probability ranges. A reordered frame is
 * held and sent right after the next frame of its message (the last frame of a message is
 * never held: the injector reorders fragments, not messages, see docs/wire-protocol.md). */
static int fault_send(struct spa_conn *c, const uint8_t *hb, const uint8_t *p, size_t n,
		      int last)
{
	const struct spa_link_faults *f = &c->faults;
	struct held *hd = &c->held;
	double u = (double)(spa_rng_next(&c->rng) >> 11) * 0x1p-53;
	enum { NONE, DROP, DUP, REORDER, CORRUPT } fault =
		u < f->drop ? DROP : (u -= f->drop) < f->dup ? DUP :
		(u -= f->dup) < f->reorder ? REORDER : (u -= f->reorder) < f->corrupt ? CORRUPT : NONE;
	if (fault == REORDER && (last || hd->on))
		fault = NONE; /* nothing of this message comes after it to swap with */
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
		hd->on = 1;
		memcpy(hd->hb, hb, HDR);
		hd->p = p;
		hd->n = n;
		return 0;
	} else if (fault == CORRUPT) {
		/* flip one payload bit in a copy (the caller's payload stays intact); an empty
		 * payload gets a bit of its header's tx_ns flipped instead (covered by the CRC) */
		uint64_t r = spa_rng_next(&c->rng);
		c->stats->faults_injected++;
		if (n) {
			memcpy(c->scratch, p, n);
			c->copied_tx += n;
			c->scratch[(r >> 3) % n] ^= (uint8_t)(1u << (r & 7));
			rc = send2(c, hb, c->scratch, n);
		} else {
			uint8_t hc[HDR];
			memcpy(hc, hb, HDR);
			hc[56 + (r & 7)] ^= (uint8_t)(1u << ((r >> 3) & 7));
			rc = send2(c, hc, NULL, 0);
		}
	} else {
		rc = send2(c, hb, p, n);
	}
	if (!rc && hd->on) {
		hd->on = 0;
		rc = send2(c, hd->hb, hd->p, hd->n);
	}
	return rc;
}

int spa_conn_send(struct spa_conn *c, struct spa_wire_hdr *h, const void *payload, size_t len)
{
	if (unlikely(c->failed))
		return c->failed;
	const uint8_t *p = payload;
	uint8_t hb[HDR];
	h->magic = SPA_WIRE_MAGIC;
	h->version = SPA_WIRE_VERSION;
	h->flags = 0;
	h->conn = c->id;
	h->pkt = (uint32_t)c->tx_pkt;
	h->ack = 0;
	h->payload_len = (uint32_t)len;
	h->tx_ns = (uint64_t)spa_clock_ns();
	h->crc = 0;
	spa_wire_hdr_encode(h, hb);
	int rc;
	if (likely(!c->faulty) && c->drv->frame_reserve) {
		/* the frame is written straight into the driver's memory (shm: its ring), and
		 * the payload's CRC computed in that copy's pass */
		uint8_t *w;
		rc = c->drv->frame_reserve(c->base, HDR + len, &w);
		if (!rc) {
			memcpy(w, hb, HDR);
			h->crc = spa_crc32c_copy(spa_wire_hdr_crc(hb), w + HDR, p, len);
			spa_wire_hdr_set_crc(w, h->crc);
			rc = c->drv->frame_commit(c->base);
		}
	} else {
		h->crc = spa_wire_frame_crc(hb, p, len); /* hb's crc field is 0 */
		spa_wire_hdr_set_crc(hb, h->crc);
		if (likely(!c->faulty))
			rc = send2(c, hb, p, len);
		else
			rc = fault_send(c, hb, p, len, h->frag_off + len >= h->msg_len);
	}
	if (unlikely(rc))
		return drv_error(c, rc, "sending");
	c->tx_pkt++;
	return 0;
}

/* A control frame: header (ctl number, one piece) and payload, CRC; no fault injection for
 * the handshake (frames before the connection exists), the injector's for the others. */
static int send_ctl(struct spa_conn *c, unsigned type, uint32_t aux, const void *payload,
		    size_t len, uint8_t *copy_to)
{
	struct spa_wire_hdr h = {
		.magic = SPA_WIRE_MAGIC, .version = SPA_WIRE_VERSION, .type = (uint8_t)type,
		.dtype = SPA_WIRE_BYTES, .conn = c->id, .pkt = (uint32_t)c->tx_ctl,
		.payload_len = (uint32_t)len, .msg_len = (uint32_t)len, .aux = aux, .n_rows = 1,
		.tx_ns = (uint64_t)spa_clock_ns(),
	};
	uint8_t hb[HDR];
	spa_wire_hdr_encode(&h, hb);
	spa_wire_hdr_set_crc(hb, spa_wire_frame_crc(hb, payload, len));
	if (copy_to) {
		memcpy(copy_to, hb, HDR);
		memcpy(copy_to + HDR, payload, len);
	}
	if (type != SPA_MSG_CONNECT && type != SPA_MSG_ACCEPT)
		c->tx_ctl++;
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

/* A control frame that came on an established connection. Returns 0 (handled) or a negative
 * code. */
static int on_ctl(struct spa_conn *c, const struct spa_wire_hdr *h, const uint8_t *f)
{
	if (!crc_ok(h, f)) {
		if (c->tolerant) {
			c->stats->bad_frames++;
			return 0;
		}
		return CRC_FAIL(h, f);
	}
	switch (h->type) {
	case SPA_MSG_CONNECT:
		/* the peer repeated its CONNECT before our ACCEPT reached it: say it again (best
		 * effort: a peer already gone is noticed when its frames run out) */
		if (c->server && c->accept_len) {
			struct iovec iov = { c->accept_frame, c->accept_len };
			c->drv->send_frame(c->base, &iov, 1);
		}
		c->stats->dup_frames++;
		return 0;
	case SPA_MSG_ACCEPT:
		c->stats->dup_frames++; /* a repeat of the one that made this connection */
		return 0;
	case SPA_MSG_CLOSE: {
		/* Answer it once (best effort): the peer learns that its frames up to its CLOSE
		 * were read (a memif client waits for that before it tears its rings down). */
		if (!c->closed_sent) {
			c->closed_sent = 1;
			send_ctl(c, SPA_MSG_CLOSE, 0, NULL, 0, NULL);
		}
		c->peer_closed = 1;
		int len = (int)(h->payload_len > 300 ? 300 : h->payload_len);
		if (h->aux)
			return spa_conn_fail(c, -SPA_ECLOSED, "the peer closed the connection: %.*s "
					     "(%s)", len, (const char *)f + HDR,
					     spa_strerror(-(int)h->aux));
		return spa_conn_fail(c, -SPA_ECLOSED, "the peer closed the link");
	}
	default: /* HEARTBEAT, ACK: nothing to do yet */
		return 0;
	}
}

/* Take one frame off the driver and classify it. Returns 1 with *f set (a data frame to hand
 * up; release it), 0 (consumed: control frame, noise, a datagram of another connection), or a
 * negative code (-ETIMEDOUT, or the connection failed). */
static int frame_in(struct spa_conn *c, struct spa_frame *f, int64_t deadline)
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
			       "truncated or padded %s frame: %zu bytes, but its header says %d + %u",
			       spa_msg_type_name(h->type), flen, HDR, h->payload_len);
	else if (h->conn != c->id) {
		/* on a datagram transport: another connection's (an old one's) frame */
		if (c->datagram)
			rc = (c->stats->bad_frames++, 0);
		else if (!crc_ok(h, fr))
			rc = CRC_FAIL(h, fr);
		else
			rc = BAD(-SPA_EPROTO, "%s frame for connection %016llx on connection %016llx",
				 spa_msg_type_name(h->type), (unsigned long long)h->conn,
				 (unsigned long long)c->id);
	} else if (spa_wire_is_ctl(h->type)) {
		rc = on_ctl(c, h, fr);
	} else if (!c->tolerant && h->pkt != (uint32_t)c->rx_pkt) {
		rc = !crc_ok(h, fr) ? CRC_FAIL(h, fr)
				    : BAD(-SPA_EPROTO, "%s frame number %u, expected %u: frames were "
					  "lost, repeated or reordered", spa_msg_type_name(h->type),
					  h->pkt, (uint32_t)c->rx_pkt);
	} else {
		f->raw = fr;
		f->verified = 0;
		return 1;
	}
	c->drv->release_frame(c->base);
	return rc;
}

int spa_conn_recv(struct spa_conn *c, struct spa_frame *f, int64_t deadline_ns)
{
	if (unlikely(c->failed))
		return c->failed;
	for (;;) {
		int rc = frame_in(c, f, deadline_ns);
		if (rc)
			return rc < 0 ? rc : 0;
	}
}

int spa_conn_take(struct spa_conn *c, struct spa_frame *f, void *dst)
{
	const struct spa_wire_hdr *h = &f->h;
	if (f->verified) {
		memcpy(dst, f->raw + HDR, h->payload_len);
		return 0;
	}
	uint32_t crc = spa_crc32c_copy(spa_wire_hdr_crc(f->raw), dst, f->raw + HDR, h->payload_len);
	if (crc != h->crc)
		return CRC_FAIL(h, f->raw);
	f->verified = 1;
	return 0;
}

int spa_conn_check(struct spa_conn *c, struct spa_frame *f)
{
	if (f->verified)
		return 0;
	if (!crc_ok(&f->h, f->raw))
		return CRC_FAIL(&f->h, f->raw);
	f->verified = 1;
	return 0;
}

void spa_conn_release(struct spa_conn *c, struct spa_frame *f)
{
	(void)f;
	c->rx_pkt++;
	c->drv->release_frame(c->base);
}

/* ---- handshake ------------------------------------------------------------------------- */

static void params_encode(const struct params *p, uint8_t b[PARAMS_SIZE])
{
	memset(b, 0, PARAMS_SIZE);
	put32(b + 0, p->mode);
	put32(b + 4, p->max_frame);
	put32(b + 8, p->window);
	put32(b + 12, p->flags);
}

static int params_decode(const uint8_t *b, size_t n, struct params *p, struct spa_errbuf *e)
{
	if (n != PARAMS_SIZE)
		return spa_err(e, -SPA_EPROTO, "handshake parameters of %zu bytes, expected %u", n,
			       PARAMS_SIZE);
	p->mode = get32(b);
	p->max_frame = get32(b + 4);
	p->window = get32(b + 8);
	p->flags = get32(b + 12);
	if (get32(b + 16) || get32(b + 20))
		return spa_err(e, -SPA_EPROTO, "handshake parameters: reserved bytes are not 0");
	if (p->mode != 0)
		return spa_err(e, -SPA_EPROTO, "handshake mode %u is not known to this build: run "
			       "the same spa version on both sides", p->mode);
	if (p->max_frame < HDR + 64 || p->flags & ~PF_TOLERANT)
		return spa_err(e, -SPA_EPROTO, "handshake parameters out of range (frame limit "
			       "%u, flags 0x%x)", p->max_frame, p->flags);
	return 0;
}

static int conn_make(struct spa_conn **out, struct spa_link_base *base,
		     const struct spa_link_driver *drv, const struct spa_conn_cfg *cfg,
		     int server)
{
	struct spa_conn *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->base = base;
	c->drv = drv;
	c->server = server;
	c->datagram = !!(drv->flags & SPA_DRV_DATAGRAM);
	c->faults = cfg->opts->faults;
	c->faulty = faults_on(&c->faults);
	c->tolerant = c->datagram || c->faulty;
	size_t mf = drv->link_max_frame ? drv->link_max_frame(base) : drv->max_frame;
	if (mf <= HDR || mf > drv->max_frame)
		mf = drv->max_frame;
	c->max_frame = mf;
	c->max_payload = mf - HDR;
	c->uri = cfg->uri;
	c->stats = cfg->stats;
	c->err = cfg->err;
	c->rx_ctl = 1;
	c->tx_ctl = 1;
	*out = c;
	return 0;
}

/* After the handshake: the agreed frame limit, and the injector's state. */
static int conn_ready(struct spa_conn *c, const struct params *peer)
{
	if (peer->max_frame < c->max_frame) {
		c->max_frame = peer->max_frame;
		c->max_payload = c->max_frame - HDR;
	}
	if (c->faulty) {
		spa_rng_seed(&c->rng, c->faults.seed);
		c->scratch = malloc(c->max_payload ? c->max_payload : 1);
		if (!c->scratch)
			return spa_conn_fail(c, -ENOMEM, "out of memory");
	}
	return 0;
}

static void my_params(const struct spa_conn *c, struct params *p)
{
	*p = (struct params){ .mode = 0, .max_frame = (uint32_t)c->max_frame, .window = 0,
			      .flags = c->tolerant ? PF_TOLERANT : 0 };
}

static uint64_t random_id(void)
{
	uint64_t v = 0;
	while (!v)
		if (getrandom(&v, sizeof v, 0) != sizeof v)
			v = (uint64_t)spa_clock_ns() * 0x9e3779b97f4a7c15ull; /* no entropy source */
	return v;
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

int spa_conn_connect(struct spa_conn **out, const struct spa_link_driver *drv, const char *addr,
		     const struct spa_conn_cfg *cfg, int64_t timeout_ns)
{
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
	struct params mine, peer;
	uint8_t pb[PARAMS_SIZE];
	my_params(c, &mine);
	params_encode(&mine, pb);
	int64_t retry = RETRY0_NS, next = 0;
	for (;;) {
		int64_t now = spa_clock_ns();
		if (deadline >= 0 && now >= deadline) {
			rc = spa_conn_fail(c, -ETIMEDOUT, "no answer to the handshake (CONNECT) in "
					   "time: is the cloud listening there, and on this transport?");
			goto err;
		}
		if (now >= next) {
			rc = send_ctl(c, SPA_MSG_CONNECT, 0, pb, sizeof pb, NULL);
			if (rc && rc != -ECONNREFUSED) {
				rc = drv_error(c, rc, "sending the handshake");
				goto err;
			}
			next = now + retry;
			retry = retry * 2 < RETRY_MAX_NS ? retry * 2 : RETRY_MAX_NS;
		}
		int64_t until = deadline >= 0 && deadline < next ? deadline : next;
		const uint8_t *fr;
		size_t flen;
		rc = drv->recv_frame(base, &fr, &flen, until);
		if (rc == -ECONNREFUSED) {
			/* a datagram transport: nobody listens there yet; try again later */
			struct timespec ts = { 0, 5000000 };
			nanosleep(&ts, NULL);
			continue;
		}
		if (rc == -ETIMEDOUT)
			continue;
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
			struct spa_errbuf e;
			rc = params_decode(fr + HDR, h.payload_len, &peer, &e);
			drv->release_frame(base);
			if (rc) {
				rc = spa_conn_fail(c, rc, "the cloud's ACCEPT: %s", e.msg);
				goto err;
			}
			break;
		}
		drv->release_frame(base);
	}
	if ((rc = conn_ready(c, &peer)))
		goto err;
	*out = c;
	return 0;
err:
	c->failed = 0; /* the message is in cfg->err; say nothing more to the peer */
	c->peer_closed = 1;
	spa_conn_destroy(c, 0);
	return rc;
}

/* Refuse a handshake: CLOSE with the code and the reason (best effort). */
static void refuse(struct spa_conn *c, int code, const char *why)
{
	send_ctl(c, SPA_MSG_CLOSE, (uint32_t)(code < 0 ? -code : code), why, strlen(why), NULL);
}

/* Run the listener's side of the handshake on a fresh transport connection. Returns 0 (the
 * connection is ready), or a negative code (refused or silent: drop it and go on). */
static int serve_handshake(struct spa_conn *c, int64_t deadline)
{
	for (;;) {
		const uint8_t *fr;
		size_t flen;
		int rc = c->drv->recv_frame(c->base, &fr, &flen, deadline);
		if (rc)
			return rc;
		struct spa_wire_hdr h;
		if (!hs_frame(c, fr, flen, &h) || h.type != SPA_MSG_CONNECT || !h.conn) {
			c->drv->release_frame(c->base);
			if (!c->datagram)
				return -SPA_EPROTO; /* a stream that does not start with CONNECT */
			continue;
		}
		c->id = h.conn;
		if (c->drv->bind_conn)
			c->drv->bind_conn(c->base, c->id);
		struct params peer, mine;
		struct spa_errbuf e;
		rc = params_decode(fr + HDR, h.payload_len, &peer, &e);
		c->drv->release_frame(c->base);
		if (rc) {
			refuse(c, rc, e.msg);
			return rc;
		}
		my_params(c, &mine);
		uint8_t pb[PARAMS_SIZE];
		params_encode(&mine, pb);
		c->accept_len = HDR + PARAMS_SIZE;
		if ((rc = send_ctl(c, SPA_MSG_ACCEPT, 0, pb, sizeof pb, c->accept_frame)))
			return rc;
		return conn_ready(c, &peer);
	}
}

int spa_conn_accept(struct spa_conn **out, const struct spa_link_driver *drv,
		    struct spa_listener_base *l, const struct spa_conn_cfg *cfg,
		    int64_t timeout_ns)
{
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
			*out = c;
			return 0;
		}
		if (rc == -ENOMEM) {
			spa_conn_destroy(c, 0);
			return spa_err(cfg->err, rc, "%s: out of memory", cfg->uri);
		}
		c->peer_closed = 1;
		spa_conn_destroy(c, 0);
	}
}

void spa_conn_destroy(struct spa_conn *c, int code)
{
	if (!c)
		return;
	/* Tell the peer, unless it is gone or said so first: after a failure, with its code and
	 * message, so that the survivor says what ended the connection. */
	if (!c->peer_closed && !c->closed_sent && c->id) {
		c->closed_sent = 1;
		if (!code)
			code = c->failed;
		const char *why = c->failed ? c->err->msg : "";
		send_ctl(c, SPA_MSG_CLOSE, (uint32_t)(code < 0 ? -code : code), why,
			 strnlen(why, 400), NULL);
	}
	c->drv->close(c->base);
	free(c->scratch);
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

struct spa_link_base *spa_conn_base(struct spa_conn *c)
{
	return c->base;
}

uint64_t spa_conn_next_pkt(struct spa_conn *c)
{
	return c->tx_pkt++;
}

uint64_t spa_conn_copied_tx(const struct spa_conn *c)
{
	return c->copied_tx + (c->drv->copied_tx ? c->drv->copied_tx(c->base) : 0);
}
