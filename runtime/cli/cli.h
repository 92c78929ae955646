/* Helpers shared by the spa-* programs (runtime/cli/cli.c): option values checked with clear
 * errors. Each exits the program with status 2 and a message on bad input (programs only). */
#ifndef SPA_CLI_H
#define SPA_CLI_H

#include <stdbool.h>
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



#include "spa/edge.h"
#include "spa/serve.h"

/* The generation options spa-run and spa-edge share. */
struct cli_gen {
	const char *prompt;
	uint32_t n_gen;
	struct spa_gen_cfg cfg;
	bool ids;                 /* print token ids instead of text */
	const char *stats_json;   /* write a JSON summary here */
	bool have_method;
};
/* Defaults: prompt "Once upon a time", 32 tokens, method base, cloud-linear, add, greedy,
 * seed 0. */
void cli_gen_defaults(struct cli_gen *g);
/* If argv[*i] is one of -p/--prompt, -n/--tokens, --method, --split, --merge, --seed, --temp,
 * --top-k, --top-p, --ids, --stats-json: parse it (advancing *i) and return true. */
bool cli_gen_option(struct cli_gen *g, int argc, char **argv, int *i);
/* Help text for those options. */
extern const char cli_gen_help[];
/* The compute backend that --backend names (cpu, cuda, auto; NULL: auto) over pool, or exit
 * (2: not a backend's name, 1: unavailable here) saying why. Free with spa_backend_destroy. */
struct spa_backend *cli_backend(const char *name, struct spa_pool *pool);
/* Help line for --backend. */
#define CLI_BACKEND_HELP \
	"  --backend B           compute backend: cpu, cuda or auto (default: auto, the GPU when\n" \
	"                        this build has CUDA and a device answers, else the CPU)\n"
/* Parse a --cpu value (a logical CPU number), checking that it exists. */
int cli_cpu(const char *opt, const char *s);

/* Print text or ids as tokens arrive. */
struct cli_printer {
	const struct spa_tokenizer *tok;
	bool ids;
	int32_t prev;
	uint32_t n;
};
void cli_print_token(void *ctx, int32_t id);
/* Print the summary line(s) to stderr and, when path is set, the JSON summary. */
int cli_report(const struct cli_gen *g, const struct spa_gen_stats *s, uint64_t edge_wall_ns,
	       const struct spa_link_stats *link, const char *link_name, const char *path);

/* The key options of spa-cloud and spa-edge: --key, --cloud-pub (edge), --allow (cloud),
 * --insecure, --aead. */
struct cli_auth {
	const char *key_path, *cloud_pub, *allow, *aead;
	bool insecure;
	struct spa_key key;
	uint8_t pub[SPA_KEY_SIZE];
	uint8_t *allow_keys;
	size_t n_allow;
};
extern const char cli_auth_help_cloud[], cli_auth_help_edge[];
/* If argv[*i] is one of them: take it (advancing *i) and return true. */
bool cli_auth_option(struct cli_auth *a, int argc, char **argv, int *i);
/* Check the combination, load the key files (dies with the file's error) and set o's key
 * fields (a must outlive o's links). */
void cli_auth_apply(struct cli_auth *a, struct spa_link_opts *o, bool cloud);
#endif
