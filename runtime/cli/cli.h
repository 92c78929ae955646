/* Helpers shared by the spa-* programs (runtime/cli/cli.c): option values checked with clear
 * errors. Each exits the program with status 2 and a message on bad input (programs only). */
#ifndef SPA_CLI_H
#define SPA_CLI_H

#include <stdint.h>

/* Program name for messages (set by cli_init from argv[0]). */
extern const char *cli_prog;
void cli_init(const char *argv0);
/* Print "PROG: message" to stderr and exit(status). */
void cli_die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Parse an option value or die naming the option: integer in [lo, hi], float in [lo, hi]. */
long long cli_int(const char *opt, const char *s, long long lo, long long hi);
double cli_float(const char *opt, const char *s, double lo, double hi);
/* Value of option argv[*i] (advances *i) or die "OPT needs a value". */
const char *cli_value(int argc, char **argv, int *i);

#endif
