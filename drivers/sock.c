/* Helpers shared by the kernel-socket drivers: address resolution and waiting on a socket. */
#include "sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "spa/clock.h"
#include "spa/drv/link.h"

/* "HOST:PORT" or "[V6]:PORT" into host and port. */
static int split_addr(const char *scheme, const char *addr, char *host, size_t host_size,
		      char *port, size_t port_size, struct spa_errbuf *err)
{
	const char *colon = strrchr(addr, ':');
	const char *h = addr;
	if (!colon)
		return spa_err(err, -SPA_EUSAGE, "%s://%s: expected HOST:PORT", scheme, addr);
	size_t hlen = (size_t)(colon - addr);
	if (addr[0] == '[') {
		if (hlen < 2 || addr[hlen - 1] != ']')
			return spa_err(err, -SPA_EUSAGE, "%s://%s: expected [IPV6]:PORT", scheme,
				       addr);
		h = addr + 1;
		hlen -= 2;
	}
	if (hlen == 0 || hlen >= host_size || strlen(colon + 1) >= port_size)
		return spa_err(err, -SPA_EUSAGE, "%s://%s: expected HOST:PORT", scheme, addr);
	memcpy(host, h, hlen);
	host[hlen] = 0;
	strcpy(port, colon + 1);
	return 0;
}

int spa_sock_resolve(const char *scheme, const char *addr, int socktype, int passive,
		     struct addrinfo **res, struct spa_errbuf *err)
{
	char host[256], port[16];
	int rc = split_addr(scheme, addr, host, sizeof host, port, sizeof port, err);
	if (rc)
		return rc;
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = socktype,
		.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0),
	};
	rc = getaddrinfo(host, port, &hints, res);
	if (rc == EAI_SYSTEM)
		return spa_err(err, -errno, "%s://%s: cannot resolve \"%s\": %s", scheme, addr,
			       host, strerror(errno));
	if (rc)
		return spa_err(err, rc == EAI_AGAIN ? -EAGAIN : -EHOSTUNREACH,
			       "%s://%s: cannot resolve \"%s\": %s: check the host name", scheme,
			       addr, host, gai_strerror(rc));
	return 0;
}

int spa_sock_wait(int fd, short events, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		struct timespec ts, *tp = NULL;
		if (deadline >= 0) {
			int64_t left = deadline - spa_clock_ns();
			if (left <= 0)
				return 0;
			ts = (struct timespec){ left / 1000000000, left % 1000000000 };
			tp = &ts;
		}
		int n = ppoll(&p, 1, tp, NULL);
		if (n > 0)
			return 1;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

int spa_sock_is_loopback(const struct sockaddr *a)
{
	if (a->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
	if (a->sa_family == AF_INET6) {
		const struct in6_addr *v6 = &((const struct sockaddr_in6 *)a)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(v6))
			return 1;
		return IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127;
	}
	return 0;
}

int spa_sock_fd_local(int fd, int peer)
{
	struct sockaddr_storage a;
	socklen_t al = sizeof a;
	if ((peer ? getpeername(fd, (struct sockaddr *)&a, &al)
		  : getsockname(fd, (struct sockaddr *)&a, &al)))
		return 0;
	return spa_sock_is_loopback((const struct sockaddr *)&a);
}
