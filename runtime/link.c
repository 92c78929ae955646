/* The link layer: URIs, messages, fragmentation, reassembly and checks over a connection
 * (runtime/conn.c, which runs the handshake and numbers, checks and injects faults into
 * frames over a driver of include/spa/drv/link.h; spec: docs/wire-protocol.md).
 *
 * The layer is transport-neutral: everything the protocol promises about messages (sequence,
 * fragment rules, delay emulation) is checked here, once, for every driver. Send hands each
 * fragment to the connection, which gathers header and payload slice with an iovec or writes
 * them straight into the driver's memory, so the link never copies a payload on send; receive
 * copies each fragment's payload once, from the driver's frame (ring memory for shm) into the
 * caller's buffer, checking it in the same pass.
 *
 * Frames come up from the connection in order, each once: stream transports (shm, tcp) deliver
 * them so, and over datagram transports (udp, dpdk but memif) or with the fault injector on,
 * the connection retransmits what is lost and puts repeats and reordering right
 * (runtime/rel.c). The receiver requires exactly the next fragment of the next message. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/clock.h"
#include "spa/conn.h"
#include "spa/drv/link.h"
#include "spa/link.h"

#define HDR SPA_WIRE_HDR_SIZE

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

struct spa_link {
	struct spa_conn *conn;
	const struct spa_link_driver *drv;
	struct spa_link_opts opts;
	size_t max_payload;          /* per frame: the agreed frame limit less the header */

	uint32_t tx_seq, rx_seq;     /* next sequence number each way */
	int reliable;                /* the connection puts lost, repeated and reordered frames
					right (datagram transport or faults on) */

	/* reassembly of the message being received (survives a -ETIMEDOUT) */
	int rx_active;
	struct spa_wire_hdr rx_first; /* header of the first fragment */
	uint32_t rx_got;              /* payload bytes in place so far */
	uint64_t rx_last_tx_ns;       /* latest tx_ns of the message's fragments (delay) */
	void *rx_buf;                 /* buffer the partial message lies in */

	struct spa_link_stats stats;
	char uri[256];
	struct spa_errbuf err;
};

struct spa_listener {
	struct spa_listener_base *base;
	const struct spa_link_driver *drv;
	struct spa_link_opts opts;
	char uri[256];
	struct spa_link_stats stats; /* handshakes that failed */
	struct spa_errbuf err;
};

static int link_fail(struct spa_link *l, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

struct spa_link_base *spa_link_driver_base(struct spa_link *l)
{
	return spa_conn_base(l->conn);
}

struct spa_conn *spa_link_conn(struct spa_link *l)
{
	return l->conn;
}

/* ---- URIs ------------------------------------------------------------------------------ */

#define URI_FORMS                                                                              \
	"expected shm:/NAME or shm:NAME (NAME: 1-200 letters, digits, '.', '_', '-'), "        \
	"tcp://HOST:PORT or udp://HOST:PORT (HOST: an IPv4 address, an [IPv6] address in "     \
	"brackets or a host name; PORT: 1-65535), each optionally followed by "               \
	"?KEY=VALUE&...: drop, dup, reorder, corrupt (fault probabilities 0..1), seed "        \
	"(an integer) and, for udp, mtu (576-65535)"

static int is_name_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

/* Check "HOST:PORT" or "[V6]:PORT" (hp[n], not NUL-terminated at n). */
static int hostport_check(const char *uri, const char *host, size_t n, struct spa_errbuf *err)
{
	const char *end = host + n, *colon;
	size_t hlen;
	if (n && *host == '[') {
		const char *close = memchr(host, ']', n);
		if (!close || close + 1 >= end || close[1] != ':')
			return spa_err(err, -SPA_EUSAGE,
				       "bad link URI \"%s\": an IPv6 address must be written "
				       "[ADDR]:PORT; " URI_FORMS,
				       uri);
		for (const char *p = host + 1; p < close; p++)
			if (!strchr("0123456789abcdefABCDEF:.", *p))
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": '%c' in an IPv6 address; " URI_FORMS,
					       uri, *p);
		hlen = (size_t)(close - host) + 1;
		colon = close + 1;
		if (hlen < 3)
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": empty IPv6 address; " URI_FORMS,
				       uri);
	} else {
		colon = memchr(host, ':', n);
		if (!colon)
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": no :PORT; " URI_FORMS, uri);
		hlen = (size_t)(colon - host);
		if (hlen == 0)
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": no HOST; " URI_FORMS, uri);
		for (size_t i = 0; i < hlen; i++)
			if (!is_name_char((unsigned char)host[i]))
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": character '%c' not allowed in a "
					       "host; " URI_FORMS,
					       uri, host[i]);
	}
	const char *port = colon + 1;
	size_t plen = (size_t)(end - port);
	unsigned long v = 0;
	if (plen == 0 || plen > 5)
		return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": bad PORT; " URI_FORMS, uri);
	for (size_t i = 0; i < plen; i++) {
		if (port[i] < '0' || port[i] > '9')
			return spa_err(err, -SPA_EUSAGE,
				       "bad link URI \"%s\": PORT \"%.*s\" is not a number; " URI_FORMS,
				       uri, (int)plen, port);
		v = v * 10 + (unsigned long)(port[i] - '0');
	}
	if (v < 1 || v > 65535)
		return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": PORT %lu out of range; " URI_FORMS,
			       uri, v);
	return 0;
}

/* The ?KEY=VALUE&... part: fault injection for every scheme, mtu for udp (left in mtu). */
static int query_parse(const char *uri, const char *q, int is_udp, struct spa_link_faults *f,
		       int *have_faults, unsigned long *mtu, struct spa_errbuf *err)
{
	*have_faults = 0;
	*mtu = 0;
	while (*q) {
		size_t n = strcspn(q, "&");
		char kv[64], *eq, *end;
		if (n == 0 || n >= sizeof kv)
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": empty or overlong "
				       "option; " URI_FORMS, uri);
		memcpy(kv, q, n);
		kv[n] = 0;
		q += n + (q[n] == '&');
		eq = strchr(kv, '=');
		if (!eq || eq == kv || !eq[1])
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": option \"%s\" is not "
				       "KEY=VALUE; " URI_FORMS, uri, kv);
		*eq = 0;
		const char *val = eq + 1;
		double *prob = !strcmp(kv, "drop") ? &f->drop : !strcmp(kv, "dup") ? &f->dup :
			       !strcmp(kv, "reorder") ? &f->reorder :
			       !strcmp(kv, "corrupt") ? &f->corrupt : NULL;
		errno = 0;
		if (prob) {
			double v = strtod(val, &end);
			if (*end || errno || !(v >= 0 && v <= 1))
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": %s=%s is not a "
					       "probability in 0..1; " URI_FORMS, uri, kv, val);
			*prob = v;
			*have_faults = 1;
		} else if (!strcmp(kv, "seed")) {
			unsigned long long v = strtoull(val, &end, 0);
			if (*end || errno || *val == '-')
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": seed=%s is not an "
					       "unsigned integer; " URI_FORMS, uri, val);
			f->seed = v;
			*have_faults = 1;
		} else if (!strcmp(kv, "mtu")) {
			if (!is_udp)
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": mtu applies to "
					       "udp:// links only; " URI_FORMS, uri);
			unsigned long v = strtoul(val, &end, 10);
			if (*end || errno || *val == '-' || v < 576 || v > 65535)
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": mtu=%s is not in "
					       "576..65535; " URI_FORMS, uri, val);
			*mtu = v;
		} else {
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": unknown option \"%s\"; "
				       URI_FORMS, uri, kv);
		}
	}
	return 0;
}

/* A URI of a driver that checks its own addresses (dpdk:, memif:): the fault injector's keys
 * (drop, dup, reorder, corrupt, seed) are taken out of its query, the rest is the driver's. */
static int own_query(const char *uri, const char *q, char *addr, size_t addr_size,
		     struct spa_link_faults *f, int *have_faults, struct spa_errbuf *err)
{
	size_t base = q ? (size_t)(q - uri) : strlen(uri), o = base;
	memcpy(addr, uri, base);
	addr[base] = 0;
	if (!q)
		return 0;
	for (const char *p = q + 1; *p;) {
		size_t k = strcspn(p, "&");
		char kv[64];
		int fault = 0;
		static const char *const keys[] = { "drop=", "dup=", "reorder=", "corrupt=", "seed=" };
		for (int i = 0; i < 5; i++)
			fault |= !strncmp(p, keys[i], strlen(keys[i]));
		if (fault) {
			if (k >= sizeof kv)
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": overlong option",
					       uri);
			memcpy(kv, p, k);
			kv[k] = 0;
			unsigned long mtu;
			int had;
			int rc = query_parse(uri, kv, 0, f, &had, &mtu, err);
			if (rc)
				return rc;
			*have_faults |= had;
		} else {
			if (o + k + 2 > addr_size)
				return spa_err(err, -SPA_EUSAGE, "link URI \"%s\" is too long", uri);
			char sep = o == base ? '?' : '&';
			addr[o++] = sep;
			memcpy(addr + o, p, k);
			o += k;
			addr[o] = 0;
		}
		p += k + (p[k] == '&');
	}
	return 0;
}

/* Split a URI into its driver, the address that driver gets (shm -> "NAME", tcp -> "HOST:PORT"
 * or "[V6]:PORT" as written, udp -> the same plus "?mtu=N" when given) and the fault
 * injection its query asks for (*have_faults: 1 when it named any). */
static int uri_parse(const char *uri, const struct spa_link_driver **drv, char *addr,
		     size_t addr_size, struct spa_link_faults *faults, int *have_faults,
		     struct spa_errbuf *err)
{
	*have_faults = 0;
	if (!uri)
		return spa_err(err, -SPA_EUSAGE, "no link URI given: " URI_FORMS);
	size_t n = strlen(uri);
	if (n >= addr_size)
		return spa_err(err, -SPA_EUSAGE, "link URI is %zu characters, too long: " URI_FORMS,
			       n);
	const char *q = strchr(uri, '?');
	size_t base_len = q ? (size_t)(q - uri) : n;
	unsigned long mtu = 0;
	int is_shm = !strncmp(uri, "shm:", 4), is_tcp = !strncmp(uri, "tcp://", 6),
	    is_udp = !strncmp(uri, "udp://", 6);
	if ((is_shm || is_tcp || is_udp) && q) {
		if (!q[1])
			return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": empty query after "
				       "'?'; " URI_FORMS, uri);
		int rc = query_parse(uri, q + 1, is_udp, faults, have_faults, &mtu, err);
		if (rc)
			return rc;
	}
	if (is_shm) {
		const char *name = uri + 4;
		if (*name == '/')
			name++;
		size_t k = base_len - (size_t)(name - uri);
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
		memcpy(addr, name, k);
		addr[k] = 0;
		return 0;
	}
	if (is_tcp || is_udp) {
		const char *host = uri + 6;
		size_t k = base_len - 6;
		int rc = hostport_check(uri, host, k, err);
		if (rc)
			return rc;
		*drv = is_tcp ? &spa_drv_tcp : &spa_drv_udp;
		memcpy(addr, host, k);
		addr[k] = 0;
		if (mtu)
			snprintf(addr + k, addr_size - k, "?mtu=%lu", mtu);
		return 0;
	}
	/* Drivers that check their own addresses get the whole URI. */
	static const struct {
		const char *prefix;
		const struct spa_link_driver *drv;
	} own[] = {
#ifdef SPA_HAVE_DPDK
		{"dpdk:", &spa_drv_dpdk},
		{"memif:", &spa_drv_dpdk},
#endif
		{NULL, NULL},
	};
	for (size_t i = 0; own[i].prefix; i++)
		if (!strncmp(uri, own[i].prefix, strlen(own[i].prefix))) {
			*drv = own[i].drv;
			return own_query(uri, q, addr, addr_size, faults, have_faults, err);
		}
#ifndef SPA_HAVE_DPDK
	if (!strncmp(uri, "dpdk:", 5) || !strncmp(uri, "memif:", 6))
		return spa_err(err, -SPA_EUNSUPPORTED, "link URI \"%s\": this build has no DPDK "
			       "driver (libdpdk was not found when it was built: install libdpdk-dev "
			       "and rebuild)", uri);
#endif
	return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": unknown transport; " URI_FORMS, uri);
}

static int opts_fill(struct spa_link_opts *dst, const struct spa_link_opts *o,
		     const struct spa_link_faults *uri_faults, int have_faults, const char *uri,
		     struct spa_errbuf *err)
{
	if (o)
		*dst = *o;
	else
		memset(dst, 0, sizeof *dst);
	if (dst->max_msg == 0 || dst->max_msg > SPA_WIRE_MAX_MSG)
		dst->max_msg = SPA_WIRE_MAX_MSG;
	if (dst->delay_ns < 0)
		dst->delay_ns = 0;
	if (have_faults)
		dst->faults = *uri_faults; /* the URI's query wins over the caller's options */
	const struct spa_link_faults *f = &dst->faults;
	double sum = f->drop + f->dup + f->reorder + f->corrupt;
	if (!(f->drop >= 0 && f->dup >= 0 && f->reorder >= 0 && f->corrupt >= 0 && sum <= 1))
		return spa_err(err, -SPA_EUSAGE, "%s: fault probabilities drop %g, dup %g, reorder "
			       "%g, corrupt %g: each must be in 0..1 and their sum at most 1 (one "
			       "fault at most per frame)", uri, f->drop, f->dup, f->reorder,
			       f->corrupt);
	return 0;
}

/* ---- control --------------------------------------------------------------------------- */

/* A driver whose links share state (dpdk's ports) has one guard for them all: held around
 * what touches that state outside a connection's own calls (spa_guard_enter). */
static inline void drv_enter(const struct spa_link_driver *drv)
{
	if (drv->guard)
		spa_guard_enter(drv->guard);
}

static inline void drv_leave(const struct spa_link_driver *drv)
{
	if (drv->guard)
		spa_guard_leave(drv->guard);
}

int spa_link_listen(struct spa_listener **out, const char *uri, const struct spa_link_opts *o,
		    struct spa_errbuf *err)
{
	const struct spa_link_driver *drv;
	struct spa_link_faults uf = { 0 };
	char addr[256];
	int have_faults;
	int rc = uri_parse(uri, &drv, addr, sizeof addr, &uf, &have_faults, err);
	if (rc)
		return rc;
	struct spa_listener *l = calloc(1, sizeof *l);
	if (!l)
		return spa_err(err, -ENOMEM, "%s: out of memory", uri);
	l->drv = drv;
	rc = opts_fill(&l->opts, o, &uf, have_faults, uri, err);
	if (rc)
		goto err;
	snprintf(l->uri, sizeof l->uri, "%s", uri);
	if (drv->prepare && (rc = drv->prepare(&l->opts, err)))
		goto err;
	if (l->opts.key && !l->opts.n_allow) {
		rc = spa_err(err, -SPA_EUSAGE, "%s: a cloud with a key accepts the edges whose public "
			     "keys it is given: add --allow EDGE.pub[,...]", uri);
		goto err;
	}
	if (!l->opts.key && (l->opts.n_allow || l->opts.peer_pub)) {
		rc = spa_err(err, -SPA_EUSAGE, "%s: allowed keys without this side's own key: add "
			     "--key CLOUD.key", uri);
		goto err;
	}
	drv_enter(drv);
	rc = drv->listen(&l->base, addr, err);
	drv_leave(drv);
	if (rc)
		goto err;
	if (!l->opts.key && !l->opts.insecure && !l->base->local) {
		drv_enter(drv);
		drv->listener_close(l->base);
		drv_leave(drv);
		rc = spa_err(err, -SPA_EAUTH, "%s: an unauthenticated listener on an address other "
			     "hosts can reach: give keys (spa-keygen -o NAME; --key CLOUD.key "
			     "--allow EDGE.pub), or --insecure, or listen on a loopback address",
			     uri);
		goto err;
	}
	*out = l;
	return 0;
err:
	free(l);
	return rc;
}

static int link_new(struct spa_link **out, const struct spa_link_driver *drv,
		    const struct spa_link_opts *o, const char *uri, struct spa_errbuf *err)
{
	struct spa_link *l = calloc(1, sizeof *l);
	if (!l)
		return spa_err(err, -ENOMEM, "%s: out of memory", uri);
	l->drv = drv;
	l->opts = *o;
	snprintf(l->uri, sizeof l->uri, "%s", uri);
	*out = l;
	return 0;
}

/* After the handshake: the frame limit. */
static int link_ready(struct spa_link *l, struct spa_errbuf *err)
{
	(void)err;
	l->max_payload = spa_conn_max_payload(l->conn);
	l->reliable = spa_conn_tolerant(l->conn);
	return 0;
}

int spa_link_accept(struct spa_listener *ls, struct spa_link **out, int64_t timeout_ns,
		    struct spa_errbuf *err)
{
	struct spa_link *l = NULL;
	int rc = link_new(&l, ls->drv, &ls->opts, ls->uri, err);
	if (rc)
		return rc;
	struct spa_conn_cfg cfg = { .opts = &l->opts, .uri = l->uri, .stats = &l->stats,
				    .err = &l->err };
	drv_enter(ls->drv);
	rc = spa_conn_accept(&l->conn, ls->drv, ls->base, &cfg, timeout_ns);
	drv_leave(ls->drv);
	if (rc) {
		spa_err(err, rc, "%s", l->err.msg);
		free(l);
		return rc;
	}
	if ((rc = link_ready(l, err)))
		return rc;
	*out = l;
	return 0;
}

void spa_listener_destroy(struct spa_listener *l)
{
	if (!l)
		return;
	drv_enter(l->drv);
	l->drv->listener_close(l->base);
	drv_leave(l->drv);
	free(l);
}

int spa_link_connect(struct spa_link **out, const char *uri, const struct spa_link_opts *o,
		     int64_t timeout_ns, struct spa_errbuf *err)
{
	const struct spa_link_driver *drv;
	struct spa_link_faults uf = { 0 };
	char addr[256];
	struct spa_link_opts opts;
	int have_faults;
	int rc = uri_parse(uri, &drv, addr, sizeof addr, &uf, &have_faults, err);
	if (rc)
		return rc;
	rc = opts_fill(&opts, o, &uf, have_faults, uri, err);
	if (rc)
		return rc;
	if (drv->prepare && (rc = drv->prepare(&opts, err)))
		return rc;
	struct spa_link *l = NULL;
	if ((rc = link_new(&l, drv, &opts, uri, err)))
		return rc;
	struct spa_conn_cfg cfg = { .opts = &l->opts, .uri = l->uri, .stats = &l->stats,
				    .err = &l->err };
	drv_enter(drv);
	rc = spa_conn_connect(&l->conn, drv, addr, &cfg, timeout_ns);
	drv_leave(drv);
	if (rc) {
		spa_err(err, rc, "%s", l->err.msg);
		free(l);
		return rc;
	}
	if ((rc = link_ready(l, err)))
		return rc;
	*out = l;
	return 0;
}

void spa_link_destroy(struct spa_link *l)
{
	if (!l)
		return;
	/* (a connection's own guard needs no entering here: destroy takes it off the keeper's
	 * list first) */
	drv_enter(l->drv);
	spa_conn_destroy(l->conn, 0);
	drv_leave(l->drv);
	free(l);
}

const struct spa_link_stats *spa_link_stats(const struct spa_link *l)
{
	/* copied_tx: the injector's copies plus the driver's (read when asked, off the path) */
	struct spa_link *m = (struct spa_link *)l;
	m->stats.copied_tx = spa_conn_copied_tx(l->conn);
	return &l->stats;
}

size_t spa_link_max_payload(const struct spa_link *l)
{
	return l->max_payload;
}

const char *spa_link_error(const struct spa_link *l)
{
	return l->err.msg;
}

const char *spa_link_scheme(const struct spa_link *l)
{
	return l->drv->scheme;
}

uint64_t spa_link_conn_id(const struct spa_link *l)
{
	return spa_conn_id(l->conn);
}

const char *spa_link_aead(const struct spa_link *l)
{
	return spa_conn_aead(l->conn);
}

int spa_link_peer_key(const struct spa_link *l, uint8_t pk[SPA_KEY_SIZE])
{
	return spa_conn_peer_key(l->conn, pk);
}

/* ---- errors ---------------------------------------------------------------------------- */

/* Record the first error: the link (its connection) is unusable afterwards and every call
 * returns it. */
static int link_fail(struct spa_link *l, int code, const char *fmt, ...)
{
	va_list ap;
	char msg[sizeof l->err.msg];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return spa_conn_fail(l->conn, code, "%s", msg);
}

/* ---- fast path ------------------------------------------------------------------------- */

static int link_send(struct spa_link *l, const struct spa_msg *m, const void *payload,
		     size_t len)
{
	int rc = spa_conn_failed(l->conn);
	if (rc)
		return rc;
	if (m->type == 0 || m->type >= SPA_MSG_TYPE_END || spa_wire_is_ctl(m->type) ||
	    m->dtype >= SPA_WIRE_DTYPE_END)
		return link_fail(l, -SPA_EUSAGE,
				 "refusing to send a message of type %u, dtype %u: not a message of "
				 "the protocol's sessions (a bug in the caller)",
				 m->type, m->dtype);
	if (len > SPA_WIRE_MAX_MSG)
		return link_fail(l, -SPA_ETOOBIG,
				 "refusing to send a %s message of %zu bytes: the protocol limit is %u",
				 spa_msg_type_name(m->type), len, SPA_WIRE_MAX_MSG);

	struct spa_wire_hdr h = {
		.type = m->type, .dtype = m->dtype, .seq = l->tx_seq, .pos = m->pos,
		.layer = m->layer, .n_rows = m->n_rows, .msg_len = (uint32_t)len, .aux = m->aux,
	};
	size_t off = 0;
	do {
		size_t chunk = len - off < l->max_payload ? len - off : l->max_payload;
		h.frag_off = (uint32_t)off;
		rc = spa_conn_send(l->conn, &h, (const uint8_t *)payload + off, chunk);
		if (rc)
			return rc;
		l->stats.frames_tx++;
		l->stats.bytes_tx += HDR + chunk;
		off += chunk;
	} while (off < len);
	l->stats.msgs_tx++;
	l->tx_seq++;
	return 0;
}

/* Refuse a frame: counts it, and fails the link. */
#define BAD(code, ...) (l->stats.bad_frames++, link_fail(l, (code), __VA_ARGS__))

/* A frame the link refuses on its header: when it is damaged, that is what is reported (or,
 * on a link that recovers lost frames, it is dropped and comes again); else the refusal. */
#define BAD_HDR(code, ...)                                                                     \
	((rc = spa_conn_check(l->conn, fr)) ? (rc < 0 ? rc : 0) : BAD(code, __VA_ARGS__))

/* Check one frame and copy its payload into place. The connection hands frames up in order,
 * each once (a reliable one has put lost, repeated and reordered ones right); the reassembly
 * state changes only once the payload is in place and checked. Returns 1 when the message is
 * complete, 0 when more fragments are due (or the frame failed its check and was dropped, to
 * come again), or a negative code (the link has failed). */
static int rx_frame(struct spa_link *l, struct spa_frame *fr, void *buf, size_t cap)
{
	const struct spa_wire_hdr *h = &fr->h;
	int rc, first = !l->rx_active;
	if (h->seq != l->rx_seq)
		return BAD_HDR(-SPA_EPROTO,
			   "%s frame has sequence number %u, expected %u: %s",
			   spa_msg_type_name(h->type), h->seq, l->rx_seq,
			   l->rx_active ? "the rest of a fragmented message was lost"
					: "messages were lost, repeated or reordered");
	if (first) {
		if (h->msg_len > l->opts.max_msg)
			return BAD_HDR(-SPA_ETOOBIG,
				   "%s message of %u bytes exceeds this side's limit of %zu bytes",
				   spa_msg_type_name(h->type), h->msg_len, l->opts.max_msg);
		if (h->msg_len > cap)
			return BAD_HDR(-SPA_ETOOBIG,
				   "%s message of %u bytes does not fit the %zu-byte receive buffer",
				   spa_msg_type_name(h->type), h->msg_len, cap);
		if (h->frag_off != 0)
			return BAD_HDR(-SPA_EPROTO,
				   "%s message (seq %u) starts at byte %u: its first fragment was lost",
				   spa_msg_type_name(h->type), h->seq, h->frag_off);
	} else {
		const struct spa_wire_hdr *a = &l->rx_first;
		if (h->msg_len != a->msg_len || h->type != a->type || h->dtype != a->dtype ||
		    h->pos != a->pos || h->layer != a->layer || h->n_rows != a->n_rows ||
		    h->aux != a->aux)
			return BAD_HDR(-SPA_EPROTO,
				   "fragment of %s message seq %u disagrees with the first one "
				   "(type %s, msg_len %u vs %u, or pos/layer/rows/aux differ)",
				   spa_msg_type_name(a->type), h->seq, spa_msg_type_name(h->type),
				   h->msg_len, a->msg_len);
		if (h->frag_off > l->rx_got)
			return BAD_HDR(-SPA_EPROTO,
				   "%s message seq %u: gap, fragment at byte %u but only %u received",
				   spa_msg_type_name(h->type), h->seq, h->frag_off, l->rx_got);
		if (h->frag_off < l->rx_got)
			return BAD_HDR(-SPA_EPROTO,
				   "%s message seq %u: fragment at byte %u overlaps the %u bytes "
				   "received", spa_msg_type_name(h->type), h->seq, h->frag_off,
				   l->rx_got);
	}
	if (h->payload_len == 0 && h->msg_len != 0)
		return BAD_HDR(-SPA_EPROTO, "%s message seq %u: empty fragment",
			   spa_msg_type_name(h->type), h->seq);
	void *dst = (uint8_t *)(first ? buf : l->rx_buf) + h->frag_off;
	if ((rc = spa_conn_take(l->conn, fr, dst)))
		return rc < 0 ? rc : 0;
	if (first) {
		l->rx_first = *h;
		l->rx_got = 0;
		l->rx_last_tx_ns = 0;
		l->rx_active = 1;
		l->rx_buf = buf;
	}
	l->stats.copied_rx += h->payload_len;
	l->stats.frames_rx++;
	l->stats.bytes_rx += HDR + h->payload_len;
	l->rx_got += h->payload_len;
	if (h->tx_ns > l->rx_last_tx_ns)
		l->rx_last_tx_ns = h->tx_ns;
	return l->rx_got == h->msg_len;
}

#undef BAD_HDR

static int link_recv(struct spa_link *l, struct spa_msg *m, void *buf, size_t cap,
		     int64_t timeout_ns)
{
	int rc = spa_conn_failed(l->conn);
	if (rc)
		return rc;
	if (l->rx_active && (buf != l->rx_buf || cap < l->rx_first.msg_len))
		return link_fail(l, -SPA_EUSAGE,
				 "receive resumed with another buffer after a timeout in the middle "
				 "of a fragmented message: pass the same buffer again");
	/* A first try with a deadline already past (0) reads no clock: a frame that is there
	 * (or comes within the driver's first spins) needs none. Only then is the real
	 * deadline computed (one clock read, ~30 ns here, off the common path). Reliable
	 * links compute it at once: their timers read the clock anyway. */
	int64_t deadline = timeout_ns < 0 ? -1 : l->reliable ? spa_clock_ns() + timeout_ns : 0;
	for (;;) {
		struct spa_frame fr;
		rc = spa_conn_recv(l->conn, &fr, deadline);
		if (rc == -ETIMEDOUT && deadline == 0 && timeout_ns > 0) {
			deadline = spa_clock_ns() + timeout_ns;
			continue;
		}
		if (rc)
			return rc; /* -ETIMEDOUT: partial reassembly state is kept for the next call */
		rc = rx_frame(l, &fr, buf, cap);
		spa_conn_release(l->conn, &fr);
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
		while (spa_clock_ns() < due)
			__builtin_ia32_pause();
	}
	m->type = h->type;
	m->dtype = h->dtype;
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

/* The application's calls: inside the connection's guard (the keeper stays out meanwhile). */
int spa_link_send(struct spa_link *l, const struct spa_msg *m, const void *payload, size_t len)
{
	spa_conn_enter(l->conn);
	int rc = link_send(l, m, payload, len);
	spa_conn_leave(l->conn);
	return rc;
}

int spa_link_recv(struct spa_link *l, struct spa_msg *m, void *buf, size_t cap,
		  int64_t timeout_ns)
{
	spa_conn_enter(l->conn);
	int rc = link_recv(l, m, buf, cap, timeout_ns);
	spa_conn_leave(l->conn);
	return rc;
}
