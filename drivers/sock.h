/* Helpers shared by the kernel-socket drivers (drivers/tcp, drivers/udp). Internal. */
#ifndef SPA_DRIVERS_SOCK_H
#define SPA_DRIVERS_SOCK_H

#include <netdb.h>
#include <stdint.h>

#include "spa/error.h"

/* Resolve "HOST:PORT" or "[V6]:PORT" (checked by runtime/link.c; no query part) for a socket
 * of type socktype; scheme ("tcp", "udp") names the URI in messages. passive: for bind.
 * Returns 0 and *res (freeaddrinfo), or a negative code with err filled. */
int spa_sock_resolve(const char *scheme, const char *addr, int socktype, int passive,
		     struct addrinfo **res, struct spa_errbuf *err);

/* Wait for events on fd until deadline (CLOCK_MONOTONIC ns, < 0: forever). 1 when ready, 0 at
 * the deadline, or -errno. Not on the hot path's fast case: drivers spin first. */
int spa_sock_wait(int fd, short events, int64_t deadline);

/* Is a a loopback address (127.0.0.0/8, ::1, ::ffff:127.x)? */
int spa_sock_is_loopback(const struct sockaddr *a);
/* Is fd's own (peer 0) or its peer's (peer 1) address a loopback one? 0 when unknown. */
int spa_sock_fd_local(int fd, int peer);

#endif
