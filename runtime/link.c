/* The link layer: URIs, framing, fragmentation, reassembly and checks over a frame driver
 * (include/spa/drv/link.h; spec: docs/wire-protocol.md).
 *
 * The layer is transport-neutral: a driver moves frames of at most max_frame bytes in order,
 * and everything the protocol promises (CRC, sequence, session, fragment rules, delay
 * emulation) is checked here, once, for every driver. Send gathers header + payload slice with
 * an iovec, so the link never copies a payload on send; receive copies each fragment's payload
 * once, from the driver's frame (ring memory for shm) into the caller's buffer. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "spa/drv/link.h"
#include "spa/link.h"

#define HDR SPA_WIRE_HDR_SIZE

struct spa_link {
	struct spa_link_base *base;
	const struct spa_link_driver *drv;
	struct spa_link_opts opts;
	size_t max_payload;          /* per frame: drv->max_frame - header */

	uint32_t tx_seq, rx_seq;     /* next sequence number each way */
	uint32_t session;            /* learnt from HELLO_OK (sent or received); 0: not yet */

	/* reassembly of the message being received (survives a -ETIMEDOUT) */
	int rx_active;
	struct spa_wire_hdr rx_first; /* first fragment's header */
	uint32_t rx_got;              /* payload bytes in place so far */
	uint64_t rx_last_tx_ns;       /* tx_ns of the latest fragment (delay emulation) */
	void *rx_buf;                 /* buffer the partial message lies in */

	int failed;                   /* sticky error (0: healthy) */
	struct spa_link_stats stats;
	char uri[256];
	struct spa_errbuf err;
};

struct spa_listener {
	struct spa_listener_base *base;
	const struct spa_link_driver *drv;
	struct spa_link_opts opts;
	char uri[256];
};

int64_t spa_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct spa_link_base *spa_link_driver_base(struct spa_link *l)
{
	return l->base;
}

/* ---- URIs ------------------------------------------------------------------------------ */

#define URI_FORMS                                                                              \
	"expected shm:/NAME or shm:NAME (NAME: 1-200 letters, digits, '.', '_', '-') or "      \
	"tcp://HOST:PORT (HOST: an IPv4 address, an [IPv6] address in brackets or a host "    \
	"name; PORT: 1-65535)"

static int is_name_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

/* Split a URI into its driver and the address that driver gets: shm -> "NAME",
 * tcp -> "HOST:PORT" or "[V6]:PORT" as written. */
static int uri_parse(const char *uri, const struct spa_link_driver **drv, char *addr,
		     size_t addr_size, struct spa_errbuf *err)
{
	if (!uri)
		return spa_err(err, -SPA_EUSAGE, "no link URI given: " URI_FORMS);
	size_t n = strlen(uri);
	if (n >= addr_size)
		return spa_err(err, -SPA_EUSAGE, "link URI is %zu characters, too long: " URI_FORMS,
			       n);
	if (!strncmp(uri, "shm:", 4)) {
		const char *name = uri + 4;
		if (*name == '/')
			name++;
		size_t k = strlen(name);
		if (k == 0 || k > 200)
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": %s shm name; " URI_FORMS,
				       uri, k ? "too long a" : "empty");
		for (size_t i = 0; i < k; i++)
			if (!is_name_char((unsigned char)name[i]))
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": character '%c' not allowed in "
					       "a shm name; " URI_FORMS,
					       uri, name[i]);
		*drv = &spa_drv_shm;
		memcpy(addr, name, k + 1);
		return 0;
	}
	if (!strncmp(uri, "tcp://", 6)) {
		const char *host = uri + 6, *colon;
		size_t hlen;
		if (*host == '[') {
			const char *close = strchr(host, ']');
			if (!close || close[1] != ':')
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": an IPv6 address must be written "
					       "[ADDR]:PORT; " URI_FORMS,
					       uri);
			for (const char *p = host + 1; p < close; p++)
				if (!strchr("0123456789abcdefABCDEF:.", *p))
					return spa_err(err, -SPA_EUSAGE,
						       "bad link URI \"%s\": '%c' in an IPv6 "
						       "address; " URI_FORMS,
						       uri, *p);
			hlen = (size_t)(close - host) + 1;
			colon = close + 1;
			if (hlen < 3)
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": empty IPv6 address; " URI_FORMS,
					       uri);
		} else {
			colon = strchr(host, ':');
			if (!colon)
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": no :PORT; " URI_FORMS, uri);
			hlen = (size_t)(colon - host);
			if (hlen == 0)
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": no HOST; " URI_FORMS,
					       uri);
			for (size_t i = 0; i < hlen; i++)
				if (!is_name_char((unsigned char)host[i]))
					return spa_err(err, -SPA_EUSAGE,
						       "bad link URI \"%s\": character '%c' not "
						       "allowed in a host; " URI_FORMS,
						       uri, host[i]);
		}
		const char *port = colon + 1;
		unsigned long v = 0;
		size_t plen = strlen(port);
		if (plen == 0 || plen > 5)
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": bad PORT; " URI_FORMS,
				       uri);
		for (size_t i = 0; i < plen; i++) {
			if (port[i] < '0' || port[i] > '9')
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": PORT \"%s\" is not a number; " URI_FORMS,
					       uri, port);
			v = v * 10 + (unsigned long)(port[i] - '0');
		}
		if (v < 1 || v > 65535)
			return spa_err(err, -SPA_EUSAGE,
				       "bad link URI \"%s\": PORT %lu out of range; " URI_FORMS, uri, v);
		*drv = &spa_drv_tcp;
		memcpy(addr, host, strlen(host) + 1);
		return 0;
	}
	return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": unknown transport; " URI_FORMS, uri);
}

static void opts_fill(struct spa_link_opts *dst, const struct spa_link_opts *o)
{
	if (o)
		*dst = *o;
	else
		memset(dst, 0, sizeof *dst);
	if (dst->max_msg == 0 || dst->max_msg > SPA_WIRE_MAX_MSG)
		dst->max_msg = SPA_WIRE_MAX_MSG;
	if (dst->delay_ns < 0)
		dst->delay_ns = 0;
}

/* ---- control --------------------------------------------------------------------------- */

int spa_link_listen(struct spa_listener **out, const char *uri, const struct spa_link_opts *o,
		    struct spa_errbuf *err)
{
	const struct spa_link_driver *drv;
	char addr[256];
	int rc = uri_parse(uri, &drv, addr, sizeof addr, err);
	if (rc)
		return rc;
	struct spa_listener *l = calloc(1, sizeof *l);
	if (!l)
		return spa_err(err, -ENOMEM, "%s: out of memory", uri);
	l->drv = drv;
	opts_fill(&l->opts, o);
	snprintf(l->uri, sizeof l->uri, "%s", uri);
	rc = drv->listen(&l->base, addr, err);
	if (rc)
		goto err;
	*out = l;
	return 0;
err:
	free(l);
	return rc;
}

static int link_wrap(struct spa_link **out, struct spa_link_base *base,
		     const struct spa_link_driver *drv, const struct spa_link_opts *o,
		     const char *uri, struct spa_errbuf *err)
{
	struct spa_link *l = calloc(1, sizeof *l);
	if (!l) {
		drv->close(base);
		return spa_err(err, -ENOMEM, "%s: out of memory", uri);
	}
	l->base = base;
	l->drv = drv;
	l->opts = *o;
	l->max_payload = drv->max_frame - HDR;
	snprintf(l->uri, sizeof l->uri, "%s", uri);
	*out = l;
	return 0;
}

int spa_link_accept(struct spa_listener *l, struct spa_link **out, int64_t timeout_ns,
		    struct spa_errbuf *err)
{
	struct spa_link_base *base;
	int rc = l->drv->accept(l->base, &base, timeout_ns, err);
	if (rc)
		return rc;
	return link_wrap(out, base, l->drv, &l->opts, l->uri, err);
}

void spa_listener_destroy(struct spa_listener *l)
{
	if (!l)
		return;
	l->drv->listener_close(l->base);
	free(l);
}

int spa_link_connect(struct spa_link **out, const char *uri, const struct spa_link_opts *o,
		     int64_t timeout_ns, struct spa_errbuf *err)
{
	const struct spa_link_driver *drv;
	char addr[256];
	struct spa_link_opts opts;
	int rc = uri_parse(uri, &drv, addr, sizeof addr, err);
	if (rc)
		return rc;
	opts_fill(&opts, o);
	struct spa_link_base *base;
	rc = drv->connect(&base, addr, timeout_ns, err);
	if (rc)
		return rc;
	return link_wrap(out, base, drv, &opts, uri, err);
}

void spa_link_destroy(struct spa_link *l)
{
	if (!l)
		return;
	l->drv->close(l->base);
	free(l);
}

const struct spa_link_stats *spa_link_stats(const struct spa_link *l)
{
	return &l->stats;
}

const char *spa_link_error(const struct spa_link *l)
{
	return l->err.msg;
}

const char *spa_link_scheme(const struct spa_link *l)
{
	return l->drv->scheme;
}

/* ---- fast path ------------------------------------------------------------------------- */

/* Record the first error: the link is unusable afterwards and every call returns it. */
__attribute__((format(printf, 3, 4)))
static int link_fail(struct spa_link *l, int code, const char *fmt, ...)
{
	va_list ap;
	char msg[sizeof l->err.msg];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* Prefix the URI so the message says which link failed; a long cause is cut. */
	size_t u = strnlen(l->uri, 100);
	memcpy(l->err.msg, l->uri, u);
	l->err.msg[u] = ':';
	l->err.msg[u + 1] = ' ';
	size_t room = sizeof l->err.msg - u - 3, k = strnlen(msg, room);
	memcpy(l->err.msg + u + 2, msg, k);
	l->err.msg[u + 2 + k] = 0;
	l->failed = code;
	return code;
}

static int drv_error(struct spa_link *l, int rc, const char *what)
{
	if (rc == -SPA_ECLOSED)
		return link_fail(l, rc, "the peer closed the link or went away (%s)", what);
	return link_fail(l, rc, "transport error while %s: %s", what, spa_strerror(rc));
}

int spa_link_send(struct spa_link *l, const struct spa_msg *m, const void *payload, size_t len)
{
	if (l->failed)
		return l->failed;
	if (m->type == 0 || m->type >= SPA_MSG_TYPE_END || m->dtype >= SPA_WIRE_DTYPE_END)
		return link_fail(l, -SPA_EUSAGE,
				 "refusing to send a message of type %u, dtype %u: not defined by "
				 "the protocol (a bug in the caller)",
				 m->type, m->dtype);
	if (len > SPA_WIRE_MAX_MSG)
		return link_fail(l, -SPA_ETOOBIG,
				 "refusing to send a %s message of %zu bytes: the protocol limit is %u",
				 spa_msg_type_name(m->type), len, SPA_WIRE_MAX_MSG);

	struct spa_wire_hdr h = {
		.magic = SPA_WIRE_MAGIC, .version = SPA_WIRE_VERSION, .type = m->type,
		.dtype = m->dtype, .flags = 0, .session = m->session, .seq = l->tx_seq,
		.pos = m->pos, .layer = m->layer, .n_rows = m->n_rows, .msg_len = (uint32_t)len,
		.aux = m->aux, .reserved = 0,
	};
	uint8_t hb[HDR];
	struct iovec iov[2];
	size_t off = 0;
	do {
		size_t chunk = len - off < l->max_payload ? len - off : l->max_payload;
		const uint8_t *p = (const uint8_t *)payload + off;
		h.payload_len = (uint32_t)chunk;
		h.frag_off = (uint32_t)off;
		h.tx_ns = (uint64_t)spa_now_ns();
		h.crc = 0;
		spa_wire_hdr_encode(&h, hb);
		h.crc = spa_crc32c(spa_crc32c(0, hb, HDR), p, chunk);
		spa_wire_hdr_encode(&h, hb);
		iov[0] = (struct iovec){ hb, HDR };
		iov[1] = (struct iovec){ (void *)p, chunk };
		int rc = l->drv->send_frame(l->base, iov, chunk ? 2 : 1);
		if (rc)
			return drv_error(l, rc, "sending");
		l->stats.frames_tx++;
		l->stats.bytes_tx += HDR + chunk;
		off += chunk;
	} while (off < len);
	l->stats.msgs_tx++;
	l->tx_seq++;
	/* The cloud names the session in its HELLO_OK; from then on the peer must use it. */
	if (m->type == SPA_MSG_HELLO_OK && m->session && !l->session)
		l->session = m->session;
	return 0;
}

/* Refuse a frame: counts it, and fails the link. */
#define BAD(code, ...) (l->stats.bad_frames++, link_fail(l, (code), __VA_ARGS__))

/* Check one frame and copy its payload into place. Returns 1 when the message is complete,
 * 0 when more fragments are due, or a negative code (the link has failed). */
static int rx_frame(struct spa_link *l, const uint8_t *f, size_t flen, void *buf, size_t cap)
{
	struct spa_wire_hdr h;
	struct spa_errbuf e;
	if (flen < HDR)
		return BAD(-SPA_EPROTO, "truncated frame: %zu bytes, shorter than the %d-byte header",
			   flen, HDR);
	int rc = spa_wire_hdr_decode(f, &h, l->max_payload, &e);
	if (rc)
		return BAD(rc, "%s", e.msg);
	if (flen != HDR + (size_t)h.payload_len)
		return BAD(-SPA_EPROTO,
			   "truncated or padded %s frame: %zu bytes, but its header says %d + %u",
			   spa_msg_type_name(h.type), flen, HDR, h.payload_len);
	uint32_t crc = spa_wire_frame_crc(f, f + HDR, h.payload_len);
	if (crc != h.crc)
		return BAD(-SPA_ECRC,
			   "%s frame (seq %u, bytes %u..%u of %u) failed its CRC32C check "
			   "(0x%08x, computed 0x%08x): the link corrupts data",
			   spa_msg_type_name(h.type), h.seq, h.frag_off, h.frag_off + h.payload_len,
			   h.msg_len, h.crc, crc);
	if (l->session) {
		if (h.session != l->session)
			return BAD(-SPA_EPROTO, "%s frame for session %u on session %u",
				   spa_msg_type_name(h.type), h.session, l->session);
	} else if (h.session && h.type != SPA_MSG_HELLO_OK && h.type != SPA_MSG_ERROR) {
		/* Before HELLO_OK only the cloud's answers to HELLO may name a session: the
		 * HELLO_OK that sets it, or the ERROR that refuses it. */
		return BAD(-SPA_EPROTO,
			   "%s frame names session %u before the cloud's HELLO_OK set one",
			   spa_msg_type_name(h.type), h.session);
	}
	if (h.seq != l->rx_seq)
		return BAD(-SPA_EPROTO,
			   "%s frame has sequence number %u, expected %u: %s",
			   spa_msg_type_name(h.type), h.seq, l->rx_seq,
			   l->rx_active ? "the rest of a fragmented message was lost"
					: "messages were lost, repeated or reordered");

	if (!l->rx_active) {
		if (h.msg_len > l->opts.max_msg)
			return BAD(-SPA_ETOOBIG,
				   "%s message of %u bytes exceeds this side's limit of %zu bytes",
				   spa_msg_type_name(h.type), h.msg_len, l->opts.max_msg);
		if (h.msg_len > cap)
			return BAD(-SPA_ETOOBIG,
				   "%s message of %u bytes does not fit the %zu-byte receive buffer",
				   spa_msg_type_name(h.type), h.msg_len, cap);
		if (h.frag_off != 0)
			return BAD(-SPA_EPROTO,
				   "%s message (seq %u) starts at byte %u: its first fragment was lost",
				   spa_msg_type_name(h.type), h.seq, h.frag_off);
		l->rx_first = h;
		l->rx_got = 0;
		l->rx_active = 1;
		l->rx_buf = buf;
	} else {
		const struct spa_wire_hdr *a = &l->rx_first;
		if (h.msg_len != a->msg_len || h.type != a->type || h.dtype != a->dtype ||
		    h.pos != a->pos || h.layer != a->layer || h.n_rows != a->n_rows ||
		    h.aux != a->aux || h.session != a->session)
			return BAD(-SPA_EPROTO,
				   "fragment of %s message seq %u disagrees with the first one "
				   "(type %s, msg_len %u vs %u, or pos/layer/rows/aux/session differ)",
				   spa_msg_type_name(a->type), h.seq, spa_msg_type_name(h.type),
				   h.msg_len, a->msg_len);
		if (h.frag_off > l->rx_got)
			return BAD(-SPA_EPROTO,
				   "%s message seq %u: gap, fragment at byte %u but only %u received",
				   spa_msg_type_name(h.type), h.seq, h.frag_off, l->rx_got);
		if (h.frag_off < l->rx_got)
			return BAD(-SPA_EPROTO,
				   "%s message seq %u: fragment at byte %u overlaps the %u bytes "
				   "received",
				   spa_msg_type_name(h.type), h.seq, h.frag_off, l->rx_got);
	}
	if (h.payload_len == 0 && h.msg_len != 0)
		return BAD(-SPA_EPROTO, "%s message seq %u: empty fragment",
			   spa_msg_type_name(h.type), h.seq);

	memcpy((uint8_t *)l->rx_buf + h.frag_off, f + HDR, h.payload_len);
	l->stats.copied_rx += h.payload_len;
	l->stats.frames_rx++;
	l->stats.bytes_rx += flen;
	l->rx_got += h.payload_len;
	l->rx_last_tx_ns = h.tx_ns;
	return l->rx_got == h.msg_len;
}

int spa_link_recv(struct spa_link *l, struct spa_msg *m, void *buf, size_t cap,
		  int64_t timeout_ns)
{
	if (l->failed)
		return l->failed;
	if (l->rx_active && (buf != l->rx_buf || cap < l->rx_first.msg_len))
		return link_fail(l, -SPA_EUSAGE,
				 "receive resumed with another buffer after a timeout in the middle "
				 "of a fragmented message: pass the same buffer again");
	int64_t deadline = timeout_ns < 0 ? -1 : spa_now_ns() + timeout_ns;
	for (;;) {
		const uint8_t *f;
		size_t flen;
		int rc = l->drv->recv_frame(l->base, &f, &flen, deadline);
		if (rc == -ETIMEDOUT)
			return rc; /* partial reassembly state is kept for the next call */
		if (rc)
			return drv_error(l, rc, "receiving");
		rc = rx_frame(l, f, flen, buf, cap);
		l->drv->release_frame(l->base);
		if (rc < 0)
			return rc;
		if (rc == 1)
			break;
	}

	const struct spa_wire_hdr *h = &l->rx_first;
	if (l->opts.delay_ns > 0) {
		/* Emulated one-way delay: hand the message over no earlier than the last frame's
		 * send time + delay (same-host CLOCK_MONOTONIC). A spin, not a sleep: the wake-up
		 * jitter of a sleep would swamp the microsecond delays this models. */
		int64_t due = (int64_t)l->rx_last_tx_ns + l->opts.delay_ns;
		while (spa_now_ns() < due)
			__builtin_ia32_pause();
	}
	if (h->type == SPA_MSG_HELLO_OK && !l->session)
		l->session = h->session;
	m->type = h->type;
	m->dtype = h->dtype;
	m->session = h->session;
	m->seq = h->seq;
	m->pos = h->pos;
	m->layer = h->layer;
	m->n_rows = h->n_rows;
	m->aux = h->aux;
	m->tx_ns = h->tx_ns;
	m->len = h->msg_len;
	m->payload = buf;
	l->rx_active = 0;
	l->rx_seq++;
	l->stats.msgs_rx++;
	return 0;
}
