/* Helpers shared by the spa-* programs. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cli_prog = "spa";

void cli_init(const char *argv0)
{
	const char *s = strrchr(argv0, '/');
	cli_prog = s ? s + 1 : argv0;
}

void cli_die(int status, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: ", cli_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(status);
}

long long cli_int(const char *opt, const char *s, long long lo, long long hi)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 0);
	if (errno || end == s || *end)
		cli_die(2, "%s: '%s' is not an integer", opt, s);
	if (v < lo || v > hi)
		cli_die(2, "%s: %lld is out of range [%lld, %lld]", opt, v, lo, hi);
	return v;
}

double cli_float(const char *opt, const char *s, double lo, double hi)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || isnan(v))
		cli_die(2, "%s: '%s' is not a number", opt, s);
	if (v < lo || v > hi)
		cli_die(2, "%s: %g is out of range [%g, %g]", opt, v, lo, hi);
	return v;
}

const char *cli_value(int argc, char **argv, int *i)
{
	if (*i + 1 >= argc)
		cli_die(2, "%s needs a value (see --help)", argv[*i]);
	return argv[++*i];
}
