/* spa: error codes and error messages.
 *
 * Fallible functions return 0 or a negative code: -errno for system errors, -SPA_E* for the
 * project's own. spa_strerror() turns either into words that tell the user what to do.
 * Functions that parse outside input (files, packets, options) also take a struct spa_errbuf
 * (may be NULL) that receives the precise message: "what is wrong, and what to do". */
#ifndef SPA_ERROR_H
#define SPA_ERROR_H

#include <stddef.h>

enum {
	SPA_EFORMAT = 1000, /* malformed file (not valid GGUF, or inconsistent) */
	SPA_EMODEL,         /* valid GGUF, but not a loadable model or plugin */
	SPA_EMISMATCH,      /* plugin made for another base model, or wrong method */
	SPA_EPROTO,         /* malformed, unexpected or out-of-sequence message */
	SPA_ECRC,           /* message failed its CRC32C check */
	SPA_ECLOSED,        /* peer closed the link or went away */
	SPA_EPEER,          /* peer reported an error (ERROR message) */
	SPA_EUSAGE,         /* bad option or argument */
	SPA_EUNSUPPORTED,   /* valid request this build or machine cannot serve */
	SPA_ETOOBIG,        /* a size exceeds a configured limit */
	SPA_EAUTH,          /* authentication failed: a key or a frame's tag did not verify */
	SPA_E_END
};

/* Words for an error code (negative or positive). Never NULL; thread-safe. */
const char *spa_strerror(int err);

struct spa_errbuf {
	char msg[512];
};

/* Format a message into e (no-op when e is NULL). Returns code unchanged so that callers can
 * write `return spa_err(e, -SPA_EFORMAT, "...")`. */
int spa_err(struct spa_errbuf *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
