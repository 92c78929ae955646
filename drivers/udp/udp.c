/* udp: a link over kernel UDP sockets ("udp://HOST:PORT[?mtu=N]"), the baseline the DPDK path
 * is measured against and the fallback for networks without DPDK.
 *
 * One frame per datagram, exactly as built by runtime/link.c (56-byte header + payload), at
 * most max_frame = mtu - 28 bytes (IPv4: 20-byte IP + 8-byte UDP header; IPv6: mtu - 48), so
 * that a datagram is never fragmented by IP: the link layer fragments large messages instead.
 * mtu is 1500 unless the address says ?mtu=N (576..65535, e.g. 9000 for jumbo frames or 65000
 * on loopback). The driver is SPA_DRV_DATAGRAM: the link layer copes with loss, duplicates,
 * reordering and noise (docs/wire-protocol.md).
 *
 * Control datagrams are 8 bytes, so never a frame (a frame has at least 56): a 4-byte tag and
 * a little-endian u32 (the sender's max_frame):
 *   "SPAK" knock: edge -> cloud, asks for a session (repeated until answered)
 *   "SPAA" ack:   cloud -> edge, the session is accepted
 *   "SPAN" nak:   cloud -> edge, refused: the two sides' max_frame differ (the u32 says the
 *                 cloud's), so frames would not fit
 *   "SPAC" close: either way, best effort, sent when a side closes its link
 * UDP has no connection, so "SPAC" is only a courtesy: a peer that vanished without it is
 * noticed by the session's timeout, or by an ICMP port-unreachable (ECONNREFUSED) after a send.
 *
 * The cloud binds one socket. Accept waits for a knock (or a first valid frame of session 0)
 * from a new peer, then connect()s the socket to that peer so that the kernel drops anyone
 * else's datagrams, and answers with an ack. The link shares the listener's socket (the two are
 * reference counted); closing the link disconnects it (AF_UNSPEC) so that the next accept sees
 * new peers: sessions one after another, as on shm and tcp.
 *
 * Fast path: the socket is non-blocking. Receive spins on recv(MSG_DONTWAIT) for up to 1 ms
 * without data, then sleeps in ppoll until data or the deadline, so that an idle wait does not
 * burn a core. Send gathers the frame's iovecs with sendmsg (no payload copy), waiting for
 * POLLOUT only when the socket buffer is full. Both buffers are raised to 4 MiB (the kernel
 * doubles it) so that a burst of fragments of a large message is not dropped. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "spa/clock.h"
#include "spa/drv/link.h"
#include "../sock.h"
#include "spa/wire.h"

#define HDR SPA_WIRE_HDR_SIZE
#define DEFAULT_MTU 1500
#define MIN_MTU 576
#define MAX_MTU 65535
#define MAX_FRAME (MAX_MTU - 28)
#define MAX_IOV 8
#define SOCK_BUF (4 << 20)
#define SPIN_NS 1000000ll       /* spin this long without data before sleeping in ppoll */
#define KNOCK_NS 50000000ll     /* resend a knock after this long without an answer */
#define CTL_SIZE 8

enum { CTL_KNOCK, CTL_ACK, CTL_NAK, CTL_CLOSE, CTL_N };
static const char ctl_tag[CTL_N][4] = { "SPAK", "SPAA", "SPAN", "SPAC" };

/* The cloud's socket, shared by its listener and the link of the session in progress. */
struct udp_listener {
	struct spa_listener_base base;
	int fd;
	int refs;          /* the listener itself + an open link (one thread uses both) */
	int busy;          /* a session's link is open */
	int family;
	size_t max_frame;
	char addr[256];
	uint8_t buf[MAX_FRAME + 1];
};

struct udp_link {
	struct spa_link_base base;
	int fd;
	struct udp_listener *lst;   /* cloud: the socket's owner; edge: NULL (own socket) */
	size_t max_frame;
	int closed;                 /* the peer said "SPAC" or its port is closed */
	size_t pending;             /* a frame already in buf (taken by accept) */
	size_t len;                 /* length of the frame handed out */
	uint8_t *buf;               /* max_frame + 1 bytes: one more shows an oversized datagram */
};

/* "HOST:PORT[?mtu=N]" or "[V6]:PORT[?mtu=N]" (already checked by runtime/link.c): the mtu
 * option, then the address. */
static int resolve(const char *addr, int passive, struct addrinfo **res, unsigned *mtu,
		   struct spa_errbuf *err)
{
	char a[256];
	snprintf(a, sizeof a, "%s", addr);
	*mtu = DEFAULT_MTU;
	char *q = strchr(a, '?');
	if (q) {
		*q++ = 0;
		char *end;
		if (strncmp(q, "mtu=", 4))
			return spa_err(err, -SPA_EUSAGE, "udp://%s: unknown option \"%s\": the "
				       "udp driver takes ?mtu=N", addr, q);
		unsigned long v = strtoul(q + 4, &end, 10);
		if (end == q + 4 || *end || v < MIN_MTU || v > MAX_MTU)
			return spa_err(err, -SPA_EUSAGE, "udp://%s: mtu must be a number in %d..%d",
				       addr, MIN_MTU, MAX_MTU);
		*mtu = (unsigned)v;
	}
	return spa_sock_resolve("udp", a, SOCK_DGRAM, passive, res, err);
}

static size_t frame_for(unsigned mtu, int family)
{
	return mtu - (family == AF_INET6 ? 48u : 28u);
}

static int sock_open(int family)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* Big buffers absorb a burst of fragments: UDP has no flow control, and a datagram that
	 * finds the receive buffer full is dropped. Privileged processes may exceed rmem_max. */
	int sz = SOCK_BUF;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz))
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz))
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
	return fd;
}

static void ctl_make(uint8_t out[CTL_SIZE], int kind, size_t max_frame)
{
	uint32_t v = (uint32_t)max_frame;
	memcpy(out, ctl_tag[kind], 4);
	for (int i = 0; i < 4; i++)
		out[4 + i] = (uint8_t)(v >> (8 * i));
}

/* The control datagram kind of p[n], or -1 when it is not one. */
static int ctl_kind(const uint8_t *p, size_t n, uint32_t *val)
{
	if (n != CTL_SIZE)
		return -1;
	for (int k = 0; k < CTL_N; k++)
		if (!memcmp(p, ctl_tag[k], 4)) {
			*val = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
			       (uint32_t)p[7] << 24;
			return k;
		}
	return -1;
}

static int link_make(struct spa_link_base **out, int fd, struct udp_listener *lst,
		     size_t max_frame)
{
	struct udp_link *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	l->buf = malloc(max_frame + 1);
	if (!l->buf) {
		free(l);
		return -ENOMEM;
	}
	l->base.drv = &spa_drv_udp;
	l->fd = fd;
	l->lst = lst;
	l->max_frame = max_frame;
	*out = &l->base;
	return 0;
}

/* ---- fast path ------------------------------------------------------------------------- */

static int udp_send_frame(struct spa_link_base *b, const struct iovec *iov, int n_iov)
{
	struct udp_link *l = (struct udp_link *)b;
	if (n_iov > MAX_IOV)
		return -EINVAL;
	if (l->closed)
		return -SPA_ECLOSED;
	struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n_iov };
	for (;;) {
		ssize_t k = sendmsg(l->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k >= 0)
			return 0; /* a datagram goes whole or not at all */
		if (errno == EINTR)
			continue;
		if (errno == ENOBUFS) { /* the device queue is full: let it drain a little */
			struct timespec ts = { 0, 20000 };
			nanosleep(&ts, NULL);
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int rc = spa_sock_wait(l->fd, POLLOUT, -1);
			if (rc < 0)
				return rc;
			continue;
		}
		if (errno == ECONNREFUSED) {
			/* an ICMP port-unreachable from an earlier datagram: the peer is gone */
			l->closed = 1;
			return -SPA_ECLOSED;
		}
		return -errno;
	}
}

static int udp_recv_frame(struct spa_link_base *b, const uint8_t **frame, size_t *len,
			  int64_t deadline_ns)
{
	struct udp_link *l = (struct udp_link *)b;
	if (l->closed)
		return -SPA_ECLOSED;
	if (l->pending) {
		l->len = l->pending;
		l->pending = 0;
		*frame = l->buf;
		*len = l->len;
		return 0;
	}
	int64_t idle_since = 0;
	for (;;) {
		ssize_t k = recv(l->fd, l->buf, l->max_frame + 1, MSG_DONTWAIT | MSG_TRUNC);
		if (k >= 0) {
			uint32_t v;
			switch (ctl_kind(l->buf, (size_t)k, &v)) {
			case CTL_CLOSE:
				l->closed = 1;
				return -SPA_ECLOSED;
			case CTL_KNOCK: /* a repeated knock, or an ack the edge got twice */
			case CTL_ACK:
			case CTL_NAK:
				continue;
			}
			/* An oversized datagram is handed up cut at max_frame + 1 bytes: its
			 * length then disagrees with any header, and the link layer drops it. */
			l->len = (size_t)k <= l->max_frame ? (size_t)k : l->max_frame + 1;
			*frame = l->buf;
			*len = l->len;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == ECONNREFUSED) {
			l->closed = 1;
			return -SPA_ECLOSED;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		/* Spin while data is likely to come soon, then sleep until it comes. */
		int64_t now = spa_clock_ns();
		if (deadline_ns >= 0 && now >= deadline_ns)
			return -ETIMEDOUT;
		if (!idle_since) {
			idle_since = now;
		} else if (now - idle_since > SPIN_NS) {
			int rc = spa_sock_wait(l->fd, POLLIN, deadline_ns);
			if (rc < 0)
				return rc;
			if (rc == 0)
				return -ETIMEDOUT;
			idle_since = 0;
		}
	}
}

static void udp_release_frame(struct spa_link_base *b)
{
	(void)b; /* the next recv overwrites buf */
}

static size_t udp_link_max_frame(struct spa_link_base *b)
{
	return ((struct udp_link *)b)->max_frame;
}

/* ---- control --------------------------------------------------------------------------- */

static int udp_listen(struct spa_listener_base **out, const char *addr, struct spa_errbuf *err)
{
	struct addrinfo *res;
	unsigned mtu;
	int rc = resolve(addr, 1, &res, &mtu, err), fd = -1, e = 0, family = AF_INET;
	if (rc)
		return rc;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		fd = sock_open(a->ai_family);
		if (fd < 0) {
			e = -fd;
			continue;
		}
		if (!bind(fd, a->ai_addr, a->ai_addrlen)) {
			family = a->ai_family;
			break;
		}
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return spa_err(err, -e, "udp://%s: cannot bind: %s%s", addr, strerror(e),
			       e == EADDRINUSE ? " (pick another port or stop the other server)" : "");
	struct udp_listener *l = calloc(1, sizeof *l);
	if (!l) {
		close(fd);
		return spa_err(err, -ENOMEM, "udp://%s: out of memory", addr);
	}
	l->base.drv = &spa_drv_udp;
	l->fd = fd;
	l->refs = 1;
	l->family = family;
	l->max_frame = frame_for(mtu, family);
	snprintf(l->addr, sizeof l->addr, "%s", addr);
	*out = &l->base;
	return 0;
}

static void listener_unref(struct udp_listener *l)
{
	if (--l->refs == 0) {
		close(l->fd);
		free(l);
	}
}

/* Is f[n] a valid first frame of a session (session 0, seq 0, first fragment, CRC)? */
static int is_first_frame(const uint8_t *f, size_t n, size_t max_frame)
{
	struct spa_wire_hdr h;
	if (n < HDR || spa_wire_hdr_decode(f, &h, max_frame - HDR, NULL))
		return 0;
	return n == HDR + (size_t)h.payload_len && h.session == 0 && h.seq == 0 &&
	       h.frag_off == 0 && spa_wire_frame_crc(f, f + HDR, h.payload_len) == h.crc;
}

static int udp_accept(struct spa_listener_base *b, struct spa_link_base **out,
		      int64_t timeout_ns, struct spa_errbuf *err)
{
	struct udp_listener *l = (struct udp_listener *)b;
	if (l->busy)
		return spa_err(err, -EBUSY, "udp://%s: the previous session's link is still open: "
			       "close it before accepting the next edge", l->addr);
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	uint8_t ctl[CTL_SIZE];
	for (;;) {
		struct sockaddr_storage peer;
		socklen_t pl = sizeof peer;
		ssize_t k = recvfrom(l->fd, l->buf, sizeof l->buf, MSG_DONTWAIT | MSG_TRUNC,
				     (struct sockaddr *)&peer, &pl);
		if (k < 0) {
			if (errno == EINTR || errno == ECONNREFUSED)
				continue; /* ECONNREFUSED: an ICMP left over from an old session */
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return spa_err(err, -errno, "udp://%s: receive failed: %s", l->addr,
					       strerror(errno));
			int rc = spa_sock_wait(l->fd, POLLIN, deadline);
			if (rc < 0)
				return spa_err(err, rc, "udp://%s: poll failed: %s", l->addr,
					       strerror(-rc));
			if (rc == 0)
				return spa_err(err, -ETIMEDOUT, "udp://%s: no edge knocked in time",
					       l->addr);
			continue;
		}
		/* Anything else on the port (strays, garbage, frames of an old session) is
		 * dropped here: it is not for a session. */
		uint32_t v;
		size_t pending = 0;
		int kind = ctl_kind(l->buf, (size_t)k, &v);
		if (kind == CTL_KNOCK && v != l->max_frame) {
			ctl_make(ctl, CTL_NAK, l->max_frame);
			sendto(l->fd, ctl, sizeof ctl, MSG_DONTWAIT, (struct sockaddr *)&peer, pl);
			continue;
		}
		if (kind != CTL_KNOCK) {
			if ((size_t)k > l->max_frame || !is_first_frame(l->buf, (size_t)k, l->max_frame))
				continue;
			pending = (size_t)k;
		}
		if (connect(l->fd, (struct sockaddr *)&peer, pl))
			return spa_err(err, -errno, "udp://%s: cannot connect to the edge: %s",
				       l->addr, strerror(errno));
		struct spa_link_base *lb;
		int rc = link_make(&lb, l->fd, l, l->max_frame);
		if (rc) {
			struct sockaddr un = { .sa_family = AF_UNSPEC };
			connect(l->fd, &un, sizeof un);
			return spa_err(err, rc, "udp://%s: out of memory", l->addr);
		}
		struct udp_link *ul = (struct udp_link *)lb;
		if (pending) {
			memcpy(ul->buf, l->buf, pending);
			ul->pending = pending;
		}
		ctl_make(ctl, CTL_ACK, l->max_frame);
		send(l->fd, ctl, sizeof ctl, MSG_DONTWAIT | MSG_NOSIGNAL);
		l->refs++;
		l->busy = 1;
		*out = lb;
		return 0;
	}
}

static void udp_listener_close(struct spa_listener_base *b)
{
	struct udp_listener *l = (struct udp_listener *)b;
	if (l)
		listener_unref(l);
}

/* One edge socket connected to a, knocking until an ack, a nak or the attempt's end. fd >= 0,
 * or -errno (-SPA_EUSAGE with err filled on a nak). */
static int try_connect(const struct addrinfo *a, unsigned mtu, int64_t deadline, size_t *mf,
		       const char *addr, struct spa_errbuf *err)
{
	int fd = sock_open(a->ai_family);
	if (fd < 0)
		return fd;
	if (connect(fd, a->ai_addr, a->ai_addrlen)) {
		int e = errno;
		close(fd);
		return -e;
	}
	*mf = frame_for(mtu, a->ai_family);
	uint8_t ctl[CTL_SIZE], in[64];
	int64_t end = spa_clock_ns() + 4 * KNOCK_NS;
	if (deadline >= 0 && deadline < end)
		end = deadline;
	int last = -ETIMEDOUT;
	do {
		ctl_make(ctl, CTL_KNOCK, *mf);
		if (send(fd, ctl, sizeof ctl, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
		    errno != ECONNREFUSED && errno != EAGAIN) {
			last = -errno;
			break;
		}
		int64_t until = spa_clock_ns() + KNOCK_NS;
		if (until > end)
			until = end;
		for (;;) {
			int rc = spa_sock_wait(fd, POLLIN, until);
			if (rc <= 0) {
				if (rc < 0)
					last = rc;
				break;
			}
			ssize_t k = recv(fd, in, sizeof in, MSG_DONTWAIT);
			if (k < 0) {
				if (errno == ECONNREFUSED) { /* nobody there yet */
					last = -ECONNREFUSED;
					/* wait out the rest of this knock's slot */
					struct timespec ts = { 0, 5000000 };
					nanosleep(&ts, NULL);
					break;
				}
				continue;
			}
			uint32_t v;
			int kind = ctl_kind(in, (size_t)k, &v);
			if (kind == CTL_ACK)
				return fd;
			if (kind == CTL_NAK) {
				close(fd);
				return spa_err(err, -SPA_EUSAGE,
					       "udp://%s: the cloud refused the session: its frames "
					       "are %u bytes and ours %zu: give both sides the same "
					       "?mtu=", addr, v, *mf);
			}
		}
	} while (spa_clock_ns() < end);
	close(fd);
	return last;
}

static int udp_connect(struct spa_link_base **out, const char *addr, int64_t timeout_ns,
		       struct spa_errbuf *err)
{
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	struct addrinfo *res = NULL;
	unsigned mtu = DEFAULT_MTU;
	int rc, last = -ECONNREFUSED;
	/* The cloud may start after the edge: knock until the deadline. */
	for (;;) {
		if (!res) {
			rc = resolve(addr, 0, &res, &mtu, err);
			if (rc && rc != -EAGAIN)
				return rc;
			if (rc)
				last = rc;
		}
		for (struct addrinfo *a = res; a; a = a->ai_next) {
			size_t mf = 0;
			int fd = try_connect(a, mtu, deadline, &mf, addr, err);
			if (fd == -SPA_EUSAGE) {
				freeaddrinfo(res);
				return fd;
			}
			if (fd >= 0) {
				freeaddrinfo(res);
				rc = link_make(out, fd, NULL, mf);
				if (rc) {
					close(fd);
					return spa_err(err, rc, "udp://%s: out of memory", addr);
				}
				return 0;
			}
			last = fd;
		}
		if (deadline >= 0 && spa_clock_ns() >= deadline)
			break;
	}
	if (res)
		freeaddrinfo(res);
	return spa_err(err, -ETIMEDOUT, "udp://%s: no answer to our knock in time (last error: "
		       "%s): is the cloud running and listening there?", addr, strerror(-last));
}

static void udp_close(struct spa_link_base *b)
{
	struct udp_link *l = (struct udp_link *)b;
	if (!l)
		return;
	uint8_t ctl[CTL_SIZE];
	if (!l->closed) {
		ctl_make(ctl, CTL_CLOSE, l->max_frame);
		send(l->fd, ctl, sizeof ctl, MSG_DONTWAIT | MSG_NOSIGNAL);
	}
	if (l->lst) {
		/* Hand the socket back to the listener: anyone may knock again. */
		struct sockaddr un = { .sa_family = AF_UNSPEC };
		connect(l->fd, &un, sizeof un);
		l->lst->busy = 0;
		listener_unref(l->lst);
	} else {
		close(l->fd);
	}
	free(l->buf);
	free(l);
}

const struct spa_link_driver spa_drv_udp = {
	.scheme = "udp",
	.max_frame = MAX_FRAME,
	.flags = SPA_DRV_DATAGRAM,
	.listen = udp_listen,
	.accept = udp_accept,
	.listener_close = udp_listener_close,
	.connect = udp_connect,
	.close = udp_close,
	.send_frame = udp_send_frame,
	.recv_frame = udp_recv_frame,
	.release_frame = udp_release_frame,
	.link_max_frame = udp_link_max_frame,
};
