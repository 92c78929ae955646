/* spa-inspect: dump a GGUF file (as llama.cpp's gguf-dump does) and check that spa can load it.
 *
 * The dump comes from the strict reader (runtime/gguf.c); the verdict from the loader's own
 * checks: spa_plugin_load for general.architecture "spa-plugin", spa_model_check for any other
 * (llama and qwen2 load; another architecture is refused with its name).
 * Exit status: 0 loadable, 1 not (the reason on stderr), 2 usage. */
#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "spa/gguf.h"
#include "spa/model.h"
#include "spa/plugin.h"

static const char *const vtype_names[SPA_GGUF_VTYPE_COUNT] = {
	"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string",
	"array", "uint64", "int64", "float64",
};
static const uint8_t vtype_size[SPA_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: %s [options] FILE\n"
		"Print a GGUF file's header, metadata and tensor table (like llama.cpp's gguf-dump),\n"
		"then check it as spa's loader would: a llama base model or an spa plugin.\n"
		"\n"
		"options:\n"
		"  -n, --array-items N  array elements shown per key (default 8, 0..100000)\n"
		"  -q, --quiet          print only the verdict\n"
		"  -h, --help           this help\n"
		"\n"
		"exit status: 0 loadable, 1 not loadable (the reason on stderr), 2 usage error\n",
		cli_prog);
}

/* A string with C escapes, at most max bytes of it (then "..."), quoted or bare (keys). */
static void put_str(const struct spa_gguf_str *s, uint64_t max, bool quote)
{
	uint64_t n = s->len < max ? s->len : max;
	if (quote)
		putchar('\'');
	for (uint64_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s->data[i];
		switch (c) {
		case '\n': fputs("\\n", stdout); break;
		case '\t': fputs("\\t", stdout); break;
		case '\r': fputs("\\r", stdout); break;
		case '\\': fputs("\\\\", stdout); break;
		case '\'': fputs("\\'", stdout); break;
		default:
			if (c < 0x20 || c == 0x7f)
				printf("\\x%02x", c);
			else
				putchar(c); /* UTF-8 bytes pass through */
		}
	}
	if (quote)
		putchar('\'');
	if (s->len > n)
		printf("... (%" PRIu64 " bytes)", s->len);
}

/* One scalar of type t from its little-endian bytes. */
static void put_scalar(enum spa_gguf_vtype t, const uint8_t *p)
{
	union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
		uint64_t u64; int64_t i64; float f32; double f64; } v;
	memcpy(&v, p, vtype_size[t]);
	switch (t) {
	case SPA_GGUF_UINT8: printf("%u", v.u8); break;
	case SPA_GGUF_INT8: printf("%d", v.i8); break;
	case SPA_GGUF_UINT16: printf("%u", v.u16); break;
	case SPA_GGUF_INT16: printf("%d", v.i16); break;
	case SPA_GGUF_UINT32: printf("%" PRIu32, v.u32); break;
	case SPA_GGUF_INT32: printf("%" PRId32, v.i32); break;
	case SPA_GGUF_UINT64: printf("%" PRIu64, v.u64); break;
	case SPA_GGUF_INT64: printf("%" PRId64, v.i64); break;
	case SPA_GGUF_FLOAT32: printf("%.9g", v.f32); break;
	case SPA_GGUF_FLOAT64: printf("%.17g", v.f64); break;
	case SPA_GGUF_BOOL: fputs(v.u8 ? "true" : "false", stdout); break;
	default: break;
	}
}

static void put_kv(uint64_t idx, const struct spa_gguf_kv *kv, uint64_t max_items)
{
	char tname[16];
	uint64_t count = 1;
	if (kv->type == SPA_GGUF_ARRAY) {
		snprintf(tname, sizeof tname, "[%s]", vtype_names[kv->v.arr.type]);
		count = kv->v.arr.n;
	} else {
		snprintf(tname, sizeof tname, "%s", vtype_names[kv->type]);
	}
	printf("%6" PRIu64 ": %-10s | %8" PRIu64 " | ", idx, tname, count);
	put_str(&kv->key, 200, false);
	fputs(" = ", stdout);
	switch (kv->type) {
	case SPA_GGUF_STRING:
		put_str(&kv->v.str, 60, true);
		break;
	case SPA_GGUF_ARRAY: {
		uint64_t n = kv->v.arr.n < max_items ? kv->v.arr.n : max_items;
		putchar('[');
		for (uint64_t i = 0; i < n; i++) {
			if (i)
				fputs(", ", stdout);
			if (kv->v.arr.type == SPA_GGUF_STRING)
				put_str(&((const struct spa_gguf_str *)kv->v.arr.data)[i], 32,
						true);
			else
				put_scalar(kv->v.arr.type, (const uint8_t *)kv->v.arr.data +
					   i * vtype_size[kv->v.arr.type]);
		}
		if (kv->v.arr.n > n)
			printf("%s... %" PRIu64 " more", n ? ", " : "", kv->v.arr.n - n);
		putchar(']');
		break;
	}
	case SPA_GGUF_FLOAT32: printf("%.9g", kv->v.f); break;
	case SPA_GGUF_FLOAT64: printf("%.17g", kv->v.f); break;
	case SPA_GGUF_BOOL: fputs(kv->v.u ? "true" : "false", stdout); break;
	case SPA_GGUF_INT8: case SPA_GGUF_INT16: case SPA_GGUF_INT32: case SPA_GGUF_INT64:
		printf("%" PRId64, kv->v.i);
		break;
	default:
		printf("%" PRIu64, kv->v.u);
	}
	putchar('\n');
}

static void dump(const struct spa_gguf *g, uint64_t max_items)
{
	printf("%s: GGUF version %" PRIu32 ", %" PRIu64 " tensors, %" PRIu64 " key/value pairs, "
	       "alignment %" PRIu64 ", data offset %" PRIu64 ", file size %" PRIu64 "\n",
	       g->path, g->version, g->n_tensors, g->n_kv, g->alignment, g->data_offset,
	       g->file_size);
	printf("* %" PRIu64 " key/value pairs:\n", g->n_kv);
	for (uint64_t i = 0; i < g->n_kv; i++)
		put_kv(i + 1, &g->kv[i], max_items);
	printf("* %" PRIu64 " tensors:\n", g->n_tensors);
	printf("%6s  %-32s %-8s %-28s %12s %12s\n", "index", "name", "type", "shape", "offset",
	       "size");
	uint64_t params = 0, bytes = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct spa_gguf_tensor *t = &g->tensors[i];
		char shape[96];
		int n = snprintf(shape, sizeof shape, "[");
		for (uint32_t d = 0; d < t->n_dims; d++)
			n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%" PRIu64,
				      d ? ", " : "", t->ne[d]);
		snprintf(shape + n, sizeof shape - (size_t)n, "]");
		printf("%6" PRIu64 ": %-32s %-8s %-28s %12" PRIu64 " %12" PRIu64 "\n", i,
		       t->name.data, spa_dtype_name(t->type), shape, t->offset, t->size);
		params += t->n_elems;
		bytes += t->size;
	}
	printf("* totals: %" PRIu64 " parameters (%.2f M), %" PRIu64 " bytes of tensor data "
	       "(%.2f MB)\n", params, params / 1e6, bytes, bytes / 1e6);
}

static int check_model(const struct spa_gguf *g)
{
	struct spa_hparams hp;
	struct spa_errbuf err = {{0}};
	int rc = spa_model_check(g, &hp, &err);
	if (rc < 0) {
		fprintf(stderr, "%s: not loadable: %s\n", cli_prog,
			err.msg[0] ? err.msg : spa_strerror(rc));
		return 1;
	}
	printf("OK: loadable %s model: L=%" PRIu32 " H=%" PRIu32 " ff=%" PRIu32 " heads=%" PRIu32
	       " kv_heads=%" PRIu32 " head_dim=%" PRIu32 " vocab=%" PRIu32 " ctx=%" PRIu32
	       " rms_eps=%g rope_base=%g", spa_arch_name(hp.arch), hp.n_layers, hp.n_embd, hp.n_ff,
	       hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.n_vocab, hp.n_ctx, hp.rms_eps,
	       hp.rope_base);
	/* what llama's defaults leave out, only when there */
	if (hp.n_rot != hp.head_dim)
		printf(" rope_dims=%" PRIu32, hp.n_rot);
	if (hp.rope_neox)
		printf(" rope=neox");
	if (hp.rope_freq_scale != 1.0f)
		printf(" rope_scale=linear:%g", 1.0 / hp.rope_freq_scale);
	if (hp.rope_attn_factor != 1.0f)
		printf(" rope_attn_factor=%g", hp.rope_attn_factor);
	if (spa_gguf_find_tensor(g, "rope_freqs.weight"))
		printf(" rope_freqs");
	unsigned n_bias = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const char *n = g->tensors[i].name.data;
		size_t len = strlen(n);
		n_bias += len > 5 && !strcmp(n + len - 5, ".bias");
	}
	if (n_bias)
		printf(" biases=%u", n_bias);
	if (!spa_gguf_find_tensor(g, "output.weight"))
		printf(" tied");
	printf("\n");
	return 0;
}

static int check_plugin(const char *path)
{
	struct spa_plugin *p = NULL;
	struct spa_errbuf err = {{0}};
	int rc = spa_plugin_load(&p, path, &err);
	if (rc < 0) {
		fprintf(stderr, "%s: not loadable: %s\n", cli_prog,
			err.msg[0] ? err.msg : spa_strerror(rc));
		return 1;
	}
	printf("OK: loadable spa plugin: kind %s part %s rank %" PRIu32 " base fingerprint %s "
	       "(base L=%" PRIu32 " H=%" PRIu32 " kv_dim=%" PRIu32 "), %" PRIu64 " parameters, "
	       "fingerprint %s\n", spa_plugin_kind_name(p->kind),
	       p->part == SPA_PART_FULL ? "full" : "cloud", p->rank, p->base_fingerprint,
	       p->n_layers, p->n_embd, p->kv_dim, p->n_params, p->fingerprint);
	spa_plugin_destroy(p);
	return 0;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	const char *path = NULL;
	uint64_t max_items = 8;
	int quiet = 0, opts_done = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (opts_done || a[0] != '-' || !a[1]) {
			if (path)
				cli_die(2, "one FILE only: got '%s' and '%s' (see --help)", path, a);
			path = a;
		} else if (strcmp(a, "--") == 0) {
			opts_done = 1;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "-n") == 0 || strcmp(a, "--array-items") == 0) {
			max_items = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 0, 100000);
		} else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
			quiet = 1;
		} else {
			cli_die(2, "unknown option '%s' (see --help)", a);
		}
	}
	if (!path) {
		usage(stderr);
		return 2;
	}

	struct spa_gguf *g = NULL;
	struct spa_errbuf err = {{0}};
	int rc = spa_gguf_open(&g, path, &err);
	if (rc < 0) {
		fprintf(stderr, "%s: %s\n", cli_prog, err.msg[0] ? err.msg : spa_strerror(rc));
		return 1;
	}
	if (!quiet)
		dump(g, max_items);

	const char *arch = NULL;
	rc = spa_gguf_get_str(g, "general.architecture", &arch, &err);
	int status;
	if (rc == -ENOENT) {
		fprintf(stderr, "%s: %s: valid GGUF but no general.architecture key: not a model or "
			"plugin spa can load\n", cli_prog, path);
		status = 1;
	} else if (rc < 0) {
		fprintf(stderr, "%s: %s\n", cli_prog, err.msg);
		status = 1;
	} else if (strcmp(arch, "spa-plugin") != 0) {
		status = check_model(g); /* llama, qwen2; another architecture refused by name */
	} else {
		status = check_plugin(path);
	}
	spa_gguf_close(g);
	return status;
}
