/* udp: links over kernel UDP sockets ("udp://HOST:PORT[?mtu=N]"), the baseline the DPDK path
 * is measured against and the fallback for networks without DPDK.
 *
 * One frame per datagram, exactly as built by the connection layer (64-byte header + payload
 * [+ tag]), at most max_frame = mtu - 28 bytes (IPv4: 20-byte IP + 8-byte UDP header; IPv6:
 * mtu - 48), so that a datagram is never fragmented by IP: the link layer fragments large
 * messages instead. mtu is 1500 unless the address says ?mtu=N (576..65535, e.g. 9000 for
 * jumbo frames or 65000 on loopback); the two sides use the smaller of their limits (the
 * handshake says which). The driver is SPA_DRV_DATAGRAM: the layers above cope with loss,
 * duplicates, reordering and noise (docs/wire-protocol.md).
 *
 * Connections: the listener binds one socket (SO_REUSEADDR). Its accept waits for a CONNECT
 * frame (spa_wire_is_connect) from a peer it does not serve yet, then opens a socket of its
 * own for that peer, bound to the same local address and port (the datagram's destination,
 * IP_PKTINFO, when the listener is bound to a wildcard) and connect()ed to the peer: the
 * kernel delivers a datagram to the socket that matches it most closely, so from then on that
 * peer's datagrams reach its connection's socket and nobody else's do, while new peers still
 * reach the listener's. Any number of connections may be open at once; the CONNECT is handed
 * to the connection layer as the new link's first frame. The handshake itself (ids, ACCEPT,
 * CLOSE) is the connection layer's, as on every transport. A CONNECT repeated before the
 * connected socket existed can still reach the listener's: connections it made are
 * remembered by peer and id until they close, and such a repeat is dropped there.
 *
 * UDP has no connection of its own: a peer that vanishes is noticed by the connection layer's
 * heartbeats, by its CLOSE, or as -SPA_ECLOSED once an ICMP port-unreachable comes back for
 * something sent to it (ECONNREFUSED on the connected socket). Before the peer's first frame,
 * ECONNREFUSED only means that nobody listens there yet: it is -ECONNREFUSED, and the
 * connecting side keeps trying.
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
#define MAX_CONNS 256           /* connections of one listener remembered at once */

struct peer_key {
	struct sockaddr_storage addr;
	socklen_t len;
	uint64_t conn;
};

/* The listener's socket and what it remembers of the connections it made. The links hold a
 * reference (one thread uses a listener and its links). */
struct udp_listener {
	struct spa_listener_base base;
	int fd;
	int refs;            /* the listener itself + each open link */
	int family;
	int wildcard;        /* bound to 0.0.0.0 or ::: each connection binds the datagram's
				destination address */
	struct sockaddr_storage local;
	socklen_t local_len;
	size_t max_frame;
	char addr[256];
	struct peer_key conns[MAX_CONNS];
	int n_conns;
	uint8_t buf[MAX_FRAME + 1];
};

struct udp_link {
	struct spa_link_base base;
	int fd;
	struct udp_listener *lst;   /* cloud: the listener (its table); edge: NULL */
	struct peer_key key;        /* cloud: this connection's entry in the table */
	size_t max_frame;
	int closed;                 /* the peer's port is closed */
	int heard;                  /* a datagram came from the peer */
	size_t pending;             /* a frame already in buf (the CONNECT taken by accept) */
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

static int sock_open(int family, int reuse)
{
	int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* Big buffers absorb a burst of fragments: UDP has no flow control, and a datagram that
	 * finds the receive buffer full is dropped. Privileged processes may exceed rmem_max. */
	int sz = SOCK_BUF, one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz))
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz))
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
	if (reuse)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	return fd;
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
	l->base.local = spa_sock_fd_local(fd, 1);
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
			/* an ICMP port-unreachable from an earlier datagram: the peer is gone (or,
			 * before it answered at all, not there yet) */
			if (!l->heard)
				return -ECONNREFUSED;
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
			l->heard = 1;
			/* An oversized datagram is handed up cut at max_frame + 1 bytes: its
			 * length then disagrees with any header, and the layers above drop it. */
			l->len = (size_t)k <= l->max_frame ? (size_t)k : l->max_frame + 1;
			*frame = l->buf;
			*len = l->len;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == ECONNREFUSED) {
			if (!l->heard)
				return -ECONNREFUSED;
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

static int is_wildcard(const struct sockaddr *a)
{
	if (a->sa_family == AF_INET)
		return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
	if (a->sa_family == AF_INET6)
		return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
	return 0;
}

static int udp_listen(struct spa_listener_base **out, const char *addr, struct spa_errbuf *err)
{
	struct addrinfo *res;
	unsigned mtu;
	int rc = resolve(addr, 1, &res, &mtu, err), fd = -1, e = 0, family = AF_INET;
	if (rc)
		return rc;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		fd = sock_open(a->ai_family, 1);
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
	l->local_len = sizeof l->local;
	getsockname(fd, (struct sockaddr *)&l->local, &l->local_len);
	l->base.local = spa_sock_is_loopback((struct sockaddr *)&l->local);
	l->wildcard = is_wildcard((struct sockaddr *)&l->local);
	if (l->wildcard) {
		/* learn each datagram's destination address, to bind its connection there */
		int one = 1;
		if (family == AF_INET)
			setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
		else
			setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
	}
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

static int known(const struct udp_listener *l, const struct sockaddr_storage *a, socklen_t al,
		 uint64_t conn)
{
	for (int i = 0; i < l->n_conns; i++)
		if (l->conns[i].conn == conn && l->conns[i].len == al &&
		    !memcmp(&l->conns[i].addr, a, al))
			return 1;
	return 0;
}

/* The local address a datagram was sent to (wildcard listener: from IP_PKTINFO), with the
 * listener's port, into *to. */
static void dest_addr(const struct udp_listener *l, struct msghdr *mh, struct sockaddr_storage *to,
		      socklen_t *tl)
{
	memcpy(to, &l->local, l->local_len);
	*tl = l->local_len;
	if (!l->wildcard)
		return;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
			struct in_pktinfo pi;
			memcpy(&pi, CMSG_DATA(c), sizeof pi);
			((struct sockaddr_in *)to)->sin_addr = pi.ipi_addr;
		} else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
			struct in6_pktinfo pi;
			memcpy(&pi, CMSG_DATA(c), sizeof pi);
			((struct sockaddr_in6 *)to)->sin6_addr = pi.ipi6_addr;
		}
	}
}

static int udp_accept(struct spa_listener_base *b, struct spa_link_base **out,
		      int64_t timeout_ns, struct spa_errbuf *err)
{
	struct udp_listener *l = (struct udp_listener *)b;
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	for (;;) {
		struct sockaddr_storage peer, to;
		socklen_t tl;
		union {
			struct cmsghdr align;
			uint8_t b[256];
		} cbuf;
		struct iovec iov = { l->buf, sizeof l->buf };
		struct msghdr mh = { .msg_name = &peer, .msg_namelen = sizeof peer, .msg_iov = &iov,
				     .msg_iovlen = 1, .msg_control = cbuf.b,
				     .msg_controllen = sizeof cbuf.b };
		ssize_t k = recvmsg(l->fd, &mh, MSG_DONTWAIT | MSG_TRUNC);
		if (k < 0) {
			if (errno == EINTR || errno == ECONNREFUSED)
				continue; /* ECONNREFUSED: an ICMP left over from an old peer */
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return spa_err(err, -errno, "udp://%s: receive failed: %s", l->addr,
					       strerror(errno));
			int rc = spa_sock_wait(l->fd, POLLIN, deadline);
			if (rc < 0)
				return spa_err(err, rc, "udp://%s: poll failed: %s", l->addr,
					       strerror(-rc));
			if (rc == 0)
				return spa_err(err, -ETIMEDOUT, "udp://%s: no edge connected in time",
					       l->addr);
			continue;
		}
		/* Anything but a new connection's CONNECT (strays, garbage, frames of a
		 * connection that has closed, a repeated CONNECT) is dropped here. */
		uint64_t conn;
		if ((size_t)k > l->max_frame || !spa_wire_is_connect(l->buf, (size_t)k, &conn) ||
		    known(l, &peer, mh.msg_namelen, conn))
			continue;
		if (l->n_conns == MAX_CONNS)
			return spa_err(err, -EMFILE, "udp://%s: %d connections are open on this "
				       "listener, the most it serves at once", l->addr, MAX_CONNS);
		dest_addr(l, &mh, &to, &tl);
		int fd = sock_open(l->family, 1);
		if (fd < 0)
			return spa_err(err, fd, "udp://%s: cannot open a socket: %s", l->addr,
				       strerror(-fd));
		if (bind(fd, (struct sockaddr *)&to, tl) ||
		    connect(fd, (struct sockaddr *)&peer, mh.msg_namelen)) {
			int e = errno;
			close(fd);
			return spa_err(err, -e, "udp://%s: cannot make the edge's socket: %s", l->addr,
				       strerror(e));
		}
		struct spa_link_base *lb;
		int rc = link_make(&lb, fd, l, l->max_frame);
		if (rc) {
			close(fd);
			return spa_err(err, rc, "udp://%s: out of memory", l->addr);
		}
		struct udp_link *ul = (struct udp_link *)lb;
		memcpy(ul->buf, l->buf, (size_t)k);
		ul->pending = (size_t)k;
		ul->heard = 1;
		ul->key = (struct peer_key){ .len = mh.msg_namelen, .conn = conn };
		memcpy(&ul->key.addr, &peer, mh.msg_namelen);
		l->conns[l->n_conns++] = ul->key;
		l->refs++;
		*out = lb;
		return 0;
	}
}

static void udp_listener_close(struct spa_listener_base *b)
{
	struct udp_listener *l = (struct udp_listener *)b;
	if (!l)
		return;
	listener_unref(l);
}

static int udp_connect(struct spa_link_base **out, const char *addr, int64_t timeout_ns,
		       struct spa_errbuf *err)
{
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	struct addrinfo *res = NULL;
	unsigned mtu = DEFAULT_MTU;
	int rc;
	/* A name that does not resolve yet may later: retry until the deadline. The first
	 * address (the resolver's order of preference) is the one used. */
	for (;;) {
		rc = resolve(addr, 0, &res, &mtu, err);
		if (!rc)
			break;
		if (rc != -EAGAIN || (deadline >= 0 && spa_clock_ns() >= deadline))
			return rc;
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);
	}
	const struct addrinfo *a = res;
	int fd = sock_open(a->ai_family, 0);
	if (fd < 0) {
		freeaddrinfo(res);
		return spa_err(err, fd, "udp://%s: cannot open a socket: %s", addr, strerror(-fd));
	}
	if (connect(fd, a->ai_addr, a->ai_addrlen)) {
		int e = errno;
		close(fd);
		freeaddrinfo(res);
		return spa_err(err, -e, "udp://%s: cannot connect: %s", addr, strerror(e));
	}
	size_t mf = frame_for(mtu, a->ai_family);
	freeaddrinfo(res);
	rc = link_make(out, fd, NULL, mf);
	if (rc) {
		close(fd);
		return spa_err(err, rc, "udp://%s: out of memory", addr);
	}
	return 0;
}

static void udp_close(struct spa_link_base *b)
{
	struct udp_link *l = (struct udp_link *)b;
	if (!l)
		return;
	close(l->fd);
	struct udp_listener *lst = l->lst;
	if (lst) {
		/* Forget the connection: the same peer may connect again. */
		for (int i = 0; i < lst->n_conns; i++)
			if (lst->conns[i].conn == l->key.conn && lst->conns[i].len == l->key.len &&
			    !memcmp(&lst->conns[i].addr, &l->key.addr, l->key.len)) {
				lst->conns[i] = lst->conns[--lst->n_conns];
				break;
			}
		listener_unref(lst);
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
