/* tcp: links over kernel TCP connections ("tcp://HOST:PORT"), the baseline and fallback. The
 * listener accepts any number of connections, one TCP connection each.
 *
 * Frames follow each other on the byte stream with nothing in between: the receiver reads the
 * 64-byte header exactly, decodes it with spa_wire_hdr_decode to learn the frame's size
 * (spa_wire_frame_size: payload_len, and the tag of a sealed frame), then reads exactly that
 * much into a per-link buffer of MAX_FRAME bytes, which recv_frame hands out. A header that
 * does not decode means the stream has lost its framing: the driver hands those 64 bytes up as
 * a (short) frame so that the link layer reports precisely what is wrong, and refuses
 * everything after.
 *
 * The socket is non-blocking. Receive spins on recv(MSG_DONTWAIT) for up to SPIN_NS without
 * data, then sleeps in ppoll until data or the deadline, keeping a partly read frame for the
 * next call after -ETIMEDOUT. The spin is what makes a round trip cost ~15 us instead of
 * ~110 us: a thread asleep in ppoll pays the scheduler wake-up and the CPU's idle-state exit
 * (tens of us each) on every message, while a request/response peer nearly always answers
 * within the spin; an idle link still sleeps after SPIN_NS, so it burns no core. Each recv
 * asks for everything the buffer can take (READ_AHEAD at most past the current frame), so a
 * small frame costs one system call, not two (header, then payload); bytes of the next frame
 * stay at buf + start until it is read, and are moved to the front only when the rest of the
 * buffer cannot hold that frame. Send gathers the frame's iovecs with one sendmsg
 * (MSG_NOSIGNAL), resuming after partial writes and EINTR and waiting for POLLOUT when the
 * socket buffer is full. TCP_NODELAY is on: a frame is sent as soon as it is written (no
 * Nagle wait for the ACK of the previous one). */
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "spa/clock.h"
#include "spa/drv/link.h"
#include "../sock.h"

#define HDR SPA_WIRE_HDR_SIZE
#define MAX_FRAME (1u << 20)
#define MAX_IOV 8
#define ATTEMPT_NS 500000000ll /* longest wait for one connect attempt */
#define BACKLOG 16
#define CLOSE_WAIT_NS 2000000000ll /* close: wait this long at most for the peer to have it all */
#define CLOSE_STALL_NS 50000000ll  /* ... and this long for any progress */
#define USER_TIMEOUT_MIN_MS 5000u  /* a dead peer host: given up on after this at the least */
#define SPIN_NS 1000000ll      /* spin this long without data before sleeping in ppoll */
#define READ_AHEAD 65536u      /* read at most this much past the current frame */

struct tcp_link {
	struct spa_link_base base;
	int fd;
	int broken;      /* the stream lost its framing: no more frames */
	size_t start;    /* the current frame begins at buf + start */
	size_t have;     /* bytes read from start on (may run past the current frame) */
	size_t need;     /* bytes the current frame has (HDR until the header is in) */
	int handed;      /* the frame at buf + start is handed out until release_frame */
	uint8_t *buf;    /* MAX_FRAME bytes */
};

struct tcp_listener {
	struct spa_listener_base base;
	int fd;
	char addr[256];
};

static int sock_setup(int fd)
{
	int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one))
		return -errno;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK))
		return -errno;
	return 0;
}

static int link_make(struct spa_link_base **out, int fd)
{
	struct tcp_link *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	l->buf = malloc(MAX_FRAME);
	if (!l->buf) {
		free(l);
		return -ENOMEM;
	}
	l->base.drv = &spa_drv_tcp;
	l->base.local = spa_sock_fd_local(fd, 1);
	l->fd = fd;
	l->need = HDR;
	*out = &l->base;
	return 0;
}

/* ---- fast path ------------------------------------------------------------------------- */

static int tcp_send_frame(struct spa_link_base *b, const struct iovec *iov_in, int n_iov)
{
	struct tcp_link *l = (struct tcp_link *)b;
	struct iovec iov[MAX_IOV];
	if (n_iov > MAX_IOV)
		return -EINVAL;
	size_t total = 0;
	int n = 0;
	for (int i = 0; i < n_iov; i++) {
		total += iov_in[i].iov_len;
		if (iov_in[i].iov_len)
			iov[n++] = iov_in[i];
	}
	if (total > MAX_FRAME)
		return -EMSGSIZE;
	struct iovec *v = iov;
	while (n > 0) {
		struct msghdr mh = { .msg_iov = v, .msg_iovlen = (size_t)n };
		ssize_t k = sendmsg(l->fd, &mh, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				int rc = spa_sock_wait(l->fd, POLLOUT, -1);
				if (rc < 0)
					return rc;
				continue;
			}
			if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN ||
			    errno == ETIMEDOUT)
				return -SPA_ECLOSED;
			return -errno;
		}
		size_t done = (size_t)k;
		while (n > 0 && done >= v->iov_len) {
			done -= v->iov_len;
			v++;
			n--;
		}
		if (n > 0) {
			v->iov_base = (uint8_t *)v->iov_base + done;
			v->iov_len -= done;
		}
	}
	return 0;
}

static int tcp_recv_frame(struct spa_link_base *b, const uint8_t **frame, size_t *len,
			  int64_t deadline_ns)
{
	struct tcp_link *l = (struct tcp_link *)b;
	int64_t idle_since = 0;
	if (l->broken)
		return -SPA_EPROTO;
	while (!l->handed) {
		if (l->have < l->need) {
			if (l->start + l->need > MAX_FRAME) {
				/* The frame would run off the buffer's end: move what we have of
				 * it to the front (rare: only after read-ahead). */
				memmove(l->buf, l->buf + l->start, l->have);
				l->start = 0;
			}
			size_t room = MAX_FRAME - l->start - l->have;
			size_t want = l->need - l->have + READ_AHEAD;
			ssize_t k = recv(l->fd, l->buf + l->start + l->have, want < room ? want : room,
					 MSG_DONTWAIT);
			if (k == 0)
				return -SPA_ECLOSED; /* EOF; mid-frame too: the peer went away */
			if (k > 0) {
				l->have += (size_t)k;
				idle_since = 0;
				continue;
			}
			if (errno == EINTR)
				continue;
			if (errno == ECONNRESET || errno == ETIMEDOUT)
				return -SPA_ECLOSED; /* reset, or unacknowledged too long (set_dead) */
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -errno;
			/* Spin while data is likely to come soon, then sleep until it comes. */
			int64_t now = spa_clock_ns();
			if (deadline_ns >= 0 && now >= deadline_ns)
				return -ETIMEDOUT; /* the partial frame is kept */
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
			continue;
		}
		if (l->need == HDR) {
			struct spa_wire_hdr h;
			if (spa_wire_hdr_decode(l->buf + l->start, &h, MAX_FRAME - HDR, NULL) ||
			    spa_wire_frame_size(&h) > MAX_FRAME) {
				/* Lost framing: let the link layer decode and report it. */
				l->broken = 1;
				l->handed = 1;
				break;
			}
			l->need = spa_wire_frame_size(&h);
			if (l->have < l->need)
				continue;
		}
		l->handed = 1;
	}
	*frame = l->buf + l->start;
	*len = l->need;
	return 0;
}

static void tcp_release_frame(struct spa_link_base *b)
{
	struct tcp_link *l = (struct tcp_link *)b;
	l->handed = 0;
	if (l->have > l->need) { /* read-ahead: the next frame starts right after */
		l->start += l->need;
		l->have -= l->need;
	} else {
		l->start = 0;
		l->have = 0;
	}
	l->need = HDR;
}

/* ---- control --------------------------------------------------------------------------- */

static int tcp_listen(struct spa_listener_base **out, const char *addr, struct spa_errbuf *err)
{
	struct addrinfo *res;
	int rc = spa_sock_resolve("tcp", addr, SOCK_STREAM, 1, &res, err), fd = -1, e = 0;
	if (rc)
		return rc;
	for (struct addrinfo *a = res; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    a->ai_protocol);
		if (fd < 0) {
			e = errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (!bind(fd, a->ai_addr, a->ai_addrlen) && !listen(fd, BACKLOG))
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return spa_err(err, -e, "tcp://%s: cannot listen: %s%s", addr, strerror(e),
			       e == EADDRINUSE ? " (pick another port or stop the other server)" : "");
	struct tcp_listener *l = calloc(1, sizeof *l);
	if (!l) {
		close(fd);
		return spa_err(err, -ENOMEM, "tcp://%s: out of memory", addr);
	}
	l->base.drv = &spa_drv_tcp;
	l->base.local = spa_sock_fd_local(fd, 0);
	l->fd = fd;
	snprintf(l->addr, sizeof l->addr, "%s", addr);
	*out = &l->base;
	return 0;
}

static int tcp_accept(struct spa_listener_base *b, struct spa_link_base **out, int64_t timeout_ns,
		      struct spa_errbuf *err)
{
	struct tcp_listener *l = (struct tcp_listener *)b;
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0) {
			int rc = sock_setup(fd);
			if (!rc)
				rc = link_make(out, fd);
			if (rc) {
				close(fd);
				return spa_err(err, rc, "tcp://%s: cannot set up the connection: %s",
					       l->addr, strerror(-rc));
			}
			return 0;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return spa_err(err, -errno, "tcp://%s: accept failed: %s", l->addr,
				       strerror(errno));
		int rc = spa_sock_wait(l->fd, POLLIN, deadline);
		if (rc < 0)
			return spa_err(err, rc, "tcp://%s: poll failed: %s", l->addr, strerror(-rc));
		if (rc == 0)
			return spa_err(err, -ETIMEDOUT, "tcp://%s: no edge connected in time",
				       l->addr);
	}
}

static void tcp_listener_close(struct spa_listener_base *b)
{
	struct tcp_listener *l = (struct tcp_listener *)b;
	if (!l)
		return;
	close(l->fd);
	free(l);
}

/* One non-blocking connect attempt to a, bounded by deadline. fd >= 0 or -errno. */
static int try_connect(const struct addrinfo *a, int64_t deadline)
{
	int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			a->ai_protocol);
	if (fd < 0)
		return -errno;
	if (connect(fd, a->ai_addr, a->ai_addrlen)) {
		if (errno != EINPROGRESS) {
			int e = errno;
			close(fd);
			return -e;
		}
		/* A SYN lost to a full accept queue is only retried by the kernel after a second
		 * or more: bound each attempt and start afresh instead. */
		int64_t cap = spa_clock_ns() + ATTEMPT_NS;
		int rc = spa_sock_wait(fd, POLLOUT, deadline >= 0 && deadline < cap ? deadline : cap);
		int soerr = 0;
		socklen_t sl = sizeof soerr;
		if (rc <= 0) {
			close(fd);
			return rc ? rc : -ETIMEDOUT;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
			close(fd);
			return -(soerr ? soerr : errno);
		}
	}
	/* With nobody listening yet on a port inside the ephemeral range, a retried connect can
	 * pick that very port as its source and connect to itself (TCP simultaneous open). */
	struct sockaddr_storage me, peer;
	socklen_t ml = sizeof me, pl = sizeof peer;
	if (!getsockname(fd, (struct sockaddr *)&me, &ml) &&
	    !getpeername(fd, (struct sockaddr *)&peer, &pl) && ml == pl && !memcmp(&me, &peer, ml)) {
		close(fd);
		return -ECONNREFUSED;
	}
	return fd;
}

static int tcp_connect(struct spa_link_base **out, const char *addr, int64_t timeout_ns,
		       struct spa_errbuf *err)
{
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	struct addrinfo *res = NULL;
	int rc, last = -ECONNREFUSED;
	/* The cloud may start after the edge: retry until the deadline. */
	for (;;) {
		if (!res) {
			rc = spa_sock_resolve("tcp", addr, SOCK_STREAM, 0, &res, err);
			if (rc && rc != -EAGAIN)
				return rc;
			if (rc)
				last = rc;
		}
		for (struct addrinfo *a = res; a; a = a->ai_next) {
			int fd = try_connect(a, deadline);
			if (fd >= 0) {
				freeaddrinfo(res);
				rc = sock_setup(fd);
				if (!rc)
					rc = link_make(out, fd);
				if (rc) {
					close(fd);
					return spa_err(err, rc, "tcp://%s: cannot set up the "
						       "connection: %s", addr, strerror(-rc));
				}
				return 0;
			}
			last = fd;
		}
		if (deadline >= 0 && spa_clock_ns() >= deadline)
			break;
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	if (res)
		freeaddrinfo(res);
	return spa_err(err, -ETIMEDOUT, "tcp://%s: cannot connect in time (last error: %s): is "
		       "the cloud running and listening there?", addr, strerror(-last));
}

static void tcp_close(struct spa_link_base *b)
{
	struct tcp_link *l = (struct tcp_link *)b;
	if (!l)
		return;
	/* A graceful end: FIN after our data, and the socket stays open until the peer's
	 * kernel has all of it (SIOCOUTQ 0; at most CLOSE_WAIT_NS), reading and dropping what
	 * the peer sends meanwhile (its HEARTBEATs). A socket closed with data unread, or that
	 * receives data once closed, resets the connection (RST), and a reset throws away what
	 * we sent last and the peer has not got yet. */
	shutdown(l->fd, SHUT_WR);
	int64_t now = spa_clock_ns(), end = now + CLOSE_WAIT_NS, moved = now;
	int last = -1;
	for (;;) {
		uint8_t junk[4096];
		ssize_t k;
		while ((k = recv(l->fd, junk, sizeof junk, MSG_DONTWAIT)) > 0)
			;
		int outq = 0;
		now = spa_clock_ns();
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ||
		    ioctl(l->fd, SIOCOUTQ, &outq) || outq <= 0 || now >= end)
			break; /* the peer closed or reset, or has everything, or time is up */
		if (outq != last) {
			last = outq;
			moved = now;
		} else if (now - moved >= CLOSE_STALL_NS) {
			break; /* the peer does not read now (nor, likely, send) */
		}
		struct pollfd p = { .fd = l->fd, .events = POLLIN };
		poll(&p, 1, 1);
	}
	close(l->fd);
	free(l->buf);
	free(l);
}

/* TCP_USER_TIMEOUT: the kernel gives up on the connection when what we sent stays
 * unacknowledged this long. Linux applies it to zero-window probes too, so a peer that only
 * reads slowly (it computes) would be given up on: never less than USER_TIMEOUT_MIN_MS. */
static void tcp_set_dead(struct spa_link_base *b, int64_t dead_ns)
{
	struct tcp_link *l = (struct tcp_link *)b;
	unsigned ms = (unsigned)(dead_ns / 1000000);
	if (ms < USER_TIMEOUT_MIN_MS)
		ms = USER_TIMEOUT_MIN_MS;
	setsockopt(l->fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
}

const struct spa_link_driver spa_drv_tcp = {
	.scheme = "tcp",
	.max_frame = MAX_FRAME,
	.flags = SPA_DRV_KERNEL_ACKS,
	.set_dead = tcp_set_dead,
	.listen = tcp_listen,
	.accept = tcp_accept,
	.listener_close = tcp_listener_close,
	.connect = tcp_connect,
	.close = tcp_close,
	.send_frame = tcp_send_frame,
	.recv_frame = tcp_recv_frame,
	.release_frame = tcp_release_frame,
};
