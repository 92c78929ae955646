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

#endif
