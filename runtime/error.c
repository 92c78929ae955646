/* Error codes to words. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "spa/error.h"

static const char *const msgs[SPA_E_END - SPA_EFORMAT] = {
	[SPA_EFORMAT - SPA_EFORMAT] = "malformed file: it is not valid GGUF or is damaged; "
				      "remake it (spa-gen) or fetch it again",
	[SPA_EMODEL - SPA_EFORMAT] = "not a loadable model or plugin: check it with spa-inspect",
	[SPA_EMISMATCH - SPA_EFORMAT] = "plugin and base model do not belong together: make the "
					"plugin for this base (spa-gen plugin --base)",
	[SPA_EPROTO - SPA_EFORMAT] = "protocol error: malformed or unexpected message; check that "
				     "both sides run the same spa version",
	[SPA_ECRC - SPA_EFORMAT] = "message failed its CRC32C check: the link corrupts data",
	[SPA_ECLOSED - SPA_EFORMAT] = "the peer closed the link or went away",
	[SPA_EPEER - SPA_EFORMAT] = "the peer reported an error",
	[SPA_EUSAGE - SPA_EFORMAT] = "bad option or argument: see --help",
	[SPA_EUNSUPPORTED - SPA_EFORMAT] = "not supported by this build or machine",
	[SPA_ETOOBIG - SPA_EFORMAT] = "a size exceeds its limit",
	[SPA_EAUTH - SPA_EFORMAT] = "authentication failed: a key or a frame's tag did not "
				    "verify; check --key, --cloud-pub and --allow",
};

const char *spa_strerror(int err)
{
	if (err < 0)
		err = -err;
	if (err == 0)
		return "success";
	if (err >= SPA_EFORMAT && err < SPA_E_END)
		return msgs[err - SPA_EFORMAT];
	return strerror(err);
}

int spa_err(struct spa_errbuf *e, int code, const char *fmt, ...)
{
	if (e) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(e->msg, sizeof e->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}
