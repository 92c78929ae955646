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

#include "spa/pin.h"
#include "spa/tokenizer.h"

const char cli_gen_help[] =
	"  -p, --prompt TEXT     prompt (default \"Once upon a time\")\n"
	"  -n, --tokens N        tokens to generate (default 32)\n"
	"  --method M            base | lora | adapter | lst | spa (default: base, or the\n"
	"                        plugin's kind: spa for a side plugin)\n"
	"  --split X             cloud-linear | edge-all (side methods; default cloud-linear)\n"
	"  --merge Y             add | replace (side methods; default add)\n"
	"  --temp T              sampling temperature (default 0: greedy)\n"
	"  --top-k K             keep the K most likely tokens (default 0: off)\n"
	"  --top-p P             nucleus sampling threshold (default 1: off)\n"
	"  --seed S              sampling seed (default 0)\n"
	"  --ids                 print token ids on one line instead of text\n"
	"  --stats-json FILE     write the run's figures as JSON\n";

void cli_gen_defaults(struct cli_gen *g)
{
	memset(g, 0, sizeof *g);
	g->prompt = "Once upon a time";
	g->n_gen = 32;
	g->cfg.method = SPA_METHOD_BASE;
	g->cfg.split = SPA_SPLIT_CLOUD_LINEAR;
	g->cfg.merge = SPA_MERGE_ADD;
	g->cfg.sp.top_p = 1.0f;
}

bool cli_gen_option(struct cli_gen *g, int argc, char **argv, int *i)
{
	const char *a = argv[*i];
	int v;
	if (!strcmp(a, "-p") || !strcmp(a, "--prompt"))
		g->prompt = cli_value(argc, argv, i);
	else if (!strcmp(a, "-n") || !strcmp(a, "--tokens"))
		g->n_gen = (uint32_t)cli_int(a, cli_value(argc, argv, i), 0, 1 << 20);
	else if (!strcmp(a, "--method")) {
		const char *s = cli_value(argc, argv, i);
		if ((v = spa_method_from_name(s)) < 0)
			cli_die(2, "--method: unknown method '%s' (base, lora, adapter, lst, spa)", s);
		g->cfg.method = (enum spa_method)v;
		g->have_method = true;
	} else if (!strcmp(a, "--split")) {
		const char *s = cli_value(argc, argv, i);
		if ((v = spa_split_from_name(s)) < 0)
			cli_die(2, "--split: unknown split '%s' (cloud-linear, edge-all)", s);
		g->cfg.split = (enum spa_split)v;
	} else if (!strcmp(a, "--merge")) {
		const char *s = cli_value(argc, argv, i);
		if ((v = spa_merge_from_name(s)) < 0)
			cli_die(2, "--merge: unknown merge '%s' (add, replace)", s);
		g->cfg.merge = (enum spa_merge)v;
	} else if (!strcmp(a, "--temp"))
		g->cfg.sp.temp = (float)cli_float(a, cli_value(argc, argv, i), 0, 100);
	else if (!strcmp(a, "--top-k"))
		g->cfg.sp.top_k = (uint32_t)cli_int(a, cli_value(argc, argv, i), 0, 1 << 22);
	else if (!strcmp(a, "--top-p"))
		g->cfg.sp.top_p = (float)cli_float(a, cli_value(argc, argv, i), 1e-6, 1);
	else if (!strcmp(a, "--seed"))
		g->cfg.sp.seed = (uint64_t)cli_int(a, cli_value(argc, argv, i), 0, INT64_MAX);
	else if (!strcmp(a, "--ids"))
		g->ids = true;
	else if (!strcmp(a, "--stats-json"))
		g->stats_json = cli_value(argc, argv, i);
	else
		return false;
	return true;
}

int cli_cpu(const char *opt, const char *s)
{
	int n = spa_pin_n_pus();
	return (int)cli_int(opt, s, 0, n > 0 ? n - 1 : 0);
}

void cli_print_token(void *ctx, int32_t id)
{
	struct cli_printer *p = ctx;
	if (p->ids)
		printf(p->n ? " %d" : "%d", id);
	else
		fputs(spa_tokenizer_piece(p->tok, p->prev, id), stdout);
	fflush(stdout);
	p->prev = id;
	p->n++;
}

static double per_msg(uint64_t bytes, uint64_t msgs)
{
	return msgs ? (double)bytes / msgs : 0;
}

int cli_report(const struct cli_gen *g, const struct spa_gen_stats *s, uint64_t edge_wall_ns,
	       const struct spa_link_stats *link, const char *link_name, const char *path)
{
	double n = s->n_tokens ? s->n_tokens : 1;
	double M = s->n_xchg / n;
	double infer = (s->wall_ns - s->xchg_ns + s->edge_ns) / 1e6;
	double net = (s->xchg_ns - s->edge_ns) / 1e6;
	double total = s->wall_ns / 1e6;
	double p50 = spa_percentile_u64(s->step_ns, s->n_tokens, 50) / 1e6;
	double p99 = spa_percentile_u64(s->step_ns, s->n_tokens, 99) / 1e6;
	double pct = s->base_params ? 100.0 * s->plugin_params / s->base_params : 0;
	double tok_s = s->wall_ns ? s->n_tokens / (s->wall_ns / 1e9) : 0;
	fprintf(stderr,
		"\n%s: %u tokens (%u prompt), %s, %.1f tok/s; M = %.3f (%u exchanges, %u side "
		"path); inference %.2f ms, network %.2f ms, total %.2f ms; per token p50 %.2f ms "
		"p99 %.2f ms; bytes/token out %.0f in %.0f; link %s\n", cli_prog, s->n_tokens,
		s->n_prompt, spa_method_name(g->cfg.method), tok_s, M, s->n_xchg, s->n_side, infer,
		net, total, p50, p99, s->bytes_out / n, s->bytes_in / n, link_name);
	if (!path)
		return 0;
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "%s: cannot write %s: %s\n", cli_prog, path, strerror(errno));
		return -errno;
	}
	fprintf(f,
		"{\"method\": \"%s\", \"split\": \"%s\", \"merge\": \"%s\", \"link\": \"%s\", "
		"\"n_layers\": %u, \"n_tokens\": %u, \"n_prompt\": %u, \"param_pct\": %.4f, "
		"\"M\": %.4f, \"n_xchg\": %u, \"n_side\": %u, \"infer_ms\": %.3f, "
		"\"cloud_ms\": %.3f, \"edge_ms\": %.3f, \"net_ms\": %.3f, \"total_ms\": %.3f, "
		"\"token_ms_p50\": %.3f, \"token_ms_p99\": %.3f, \"bytes_out_per_token\": %.1f, "
		"\"bytes_in_per_token\": %.1f, \"prefill_ms\": %.3f, \"prefill_xchg\": %llu, "
		"\"tok_s\": %.2f, \"edge_wall_ms\": %.3f, \"link_bytes_tx\": %llu, "
		"\"link_bytes_rx\": %llu, \"cloud_copied_tx_per_msg\": %.1f, "
		"\"cloud_copied_rx_per_msg\": %.1f, \"edge_copied_tx_per_msg\": %.1f, "
		"\"edge_copied_rx_per_msg\": %.1f, \"link_faults_injected\": %llu, "
		"\"link_retransmits\": %llu, \"link_dup_frames\": %llu, \"link_bad_frames\": %llu, "
		"\"link_auth_failed\": %llu}\n",
		spa_method_name(g->cfg.method), spa_split_name(g->cfg.split),
		spa_merge_name(g->cfg.merge), link_name, s->n_layers, s->n_tokens, s->n_prompt, pct,
		M, s->n_xchg, s->n_side, infer, (s->wall_ns - s->xchg_ns) / 1e6, s->edge_ns / 1e6,
		net, total, p50, p99, s->bytes_out / n, s->bytes_in / n, s->prefill_ns / 1e6,
		(unsigned long long)s->prefill_xchg, tok_s, edge_wall_ns / 1e6,
		(unsigned long long)(link ? link->bytes_tx : 0),
		(unsigned long long)(link ? link->bytes_rx : 0),
		per_msg(s->cloud_copied_tx, s->cloud_msgs_tx),
		per_msg(s->cloud_copied_rx, s->cloud_msgs_rx),
		link ? per_msg(link->copied_tx, link->msgs_tx) : 0,
		link ? per_msg(link->copied_rx, link->msgs_rx) : 0,
		(unsigned long long)(link ? link->faults_injected : 0),
		(unsigned long long)(link ? link->retransmits : 0),
		(unsigned long long)(link ? link->dup_frames : 0),
		(unsigned long long)(link ? link->bad_frames : 0),
		(unsigned long long)(link ? link->auth_failed : 0));
	fclose(f);
	return 0;
}

struct spa_backend *cli_backend(const char *name, struct spa_pool *pool)
{
	struct spa_errbuf err = {{0}};
	enum spa_backend_kind kind = SPA_BACKEND_AUTO;
	if (name && spa_backend_parse(name, &kind, &err) < 0)
		cli_die(2, "--backend: %s", err.msg);
	struct spa_backend *be = NULL;
	if (spa_backend_create(&be, kind, pool, &err) < 0)
		cli_die(1, "--backend %s: %s", spa_backend_kind_name(kind), err.msg);
	return be;
}

/* ---- keys (spa-cloud, spa-edge) ---------------------------------------------------------- */

#include "spa/keys.h"

const char cli_auth_help_cloud[] =
	"  --key FILE            this cloud's secret key (spa-keygen -o NAME makes NAME.key and\n"
	"                        NAME.pub): links are authenticated and encrypted\n"
	"  --allow LIST          the edges' public keys it accepts: .pub files, comma-separated\n"
	"                        (a file may hold several key lines)\n"
	"  --insecure            allow an unauthenticated listener on an address other hosts can\n"
	"                        reach (without keys, only shm, memif and loopback are allowed)\n"
	"  --aead NAME           aegis128l, aes256gcm or chacha20poly1305 (default: the first\n"
	"                        both sides take: AEGIS-128L with libsodium 1.0.19 on and\n"
	"                        AES-NI, AES-256-GCM with AES-NI, else ChaCha20-Poly1305)\n";

const char cli_auth_help_edge[] =
	"  --key FILE            this edge's secret key (spa-keygen -o NAME)\n"
	"  --cloud-pub FILE      the cloud's public key (its NAME.pub): the link is refused\n"
	"                        unless the cloud proves it holds that key\n"
	"  --insecure            allow an unauthenticated link to another host (without keys,\n"
	"                        only shm, memif and loopback are allowed)\n"
	"  --aead NAME           aegis128l, aes256gcm or chacha20poly1305 (default: the\n"
	"                        cloud's choice)\n";

bool cli_auth_option(struct cli_auth *a, int argc, char **argv, int *i)
{
	const char *o = argv[*i];
	if (!strcmp(o, "--key"))
		a->key_path = cli_value(argc, argv, i);
	else if (!strcmp(o, "--cloud-pub"))
		a->cloud_pub = cli_value(argc, argv, i);
	else if (!strcmp(o, "--allow"))
		a->allow = cli_value(argc, argv, i);
	else if (!strcmp(o, "--insecure"))
		a->insecure = true;
	else if (!strcmp(o, "--aead"))
		a->aead = cli_value(argc, argv, i);
	else
		return false;
	return true;
}

void cli_auth_apply(struct cli_auth *a, struct spa_link_opts *o, bool cloud)
{
	struct spa_errbuf err = {{0}};
	if (cloud && a->cloud_pub)
		cli_die(2, "--cloud-pub is the edge's option (the cloud gives --allow)");
	if (!cloud && a->allow)
		cli_die(2, "--allow is the cloud's option (the edge gives --cloud-pub)");
	if (a->key_path && cloud && !a->allow)
		cli_die(2, "--key needs --allow EDGE.pub[,...]: the edges' public keys");
	if (a->key_path && !cloud && !a->cloud_pub)
		cli_die(2, "--key needs --cloud-pub CLOUD.pub: the cloud's public key");
	if (!a->key_path && (a->allow || a->cloud_pub))
		cli_die(2, "%s needs --key FILE: this side's own secret key (spa-keygen -o NAME)",
			a->allow ? "--allow" : "--cloud-pub");
	if (a->key_path && spa_key_load(&a->key, a->key_path, &err) < 0)
		cli_die(2, "%s", err.msg);
	if (a->cloud_pub && spa_pub_load(a->pub, a->cloud_pub, &err) < 0)
		cli_die(2, "%s", err.msg);
	if (a->allow && spa_pub_load_list(&a->allow_keys, &a->n_allow, a->allow, &err) < 0)
		cli_die(2, "%s", err.msg);
	if (a->aead && strcmp(a->aead, "aes256gcm") && strcmp(a->aead, "chacha20poly1305") &&
	    strcmp(a->aead, "aegis128l"))
		cli_die(2, "--aead: '%s' is not aegis128l, aes256gcm or chacha20poly1305", a->aead);
	o->key = a->key_path ? &a->key : NULL;
	o->peer_pub = a->cloud_pub ? a->pub : NULL;
	o->allow = a->allow_keys;
	o->n_allow = a->n_allow;
	o->insecure = a->insecure;
	o->aead = !a->aead ? SPA_AEAD_AUTO
		  : !strcmp(a->aead, "aes256gcm") ? SPA_AEAD_AES256GCM
		  : !strcmp(a->aead, "aegis128l") ? SPA_AEAD_AEGIS128L : SPA_AEAD_CHACHA20POLY1305;
}
