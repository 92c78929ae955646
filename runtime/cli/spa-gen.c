/* spa-gen: make synthetic base models and personal plugins for tests and benchmarks.
 *
 *   spa-gen base --shape tiny|default|1b|llama-7b [--type TYPE] [--seed N]
 *                [--tokenizer spm|bpe] [--pre NAME] [--vocab N] [--vocab-only]
 *                [--arch llama|qwen2] [--rope-freqs] [--rope-scale F] [--rope-dims N]
 *                [--biases] [--tied] -o FILE
 *   spa-gen plugin --base FILE --kind spa|lst|lora|adapter [--rank N] [--side-fraction F]
 *                  [--calib-prompt TEXT] [--seed N] -o FILE
 *
 * Exit status: 0 done, 1 the work failed (message says why), 2 bad usage. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "spa/spa.h"

static const char usage[] =
	"usage: spa-gen base --shape SHAPE [--type TYPE] [--seed N] [--tokenizer spm|bpe]\n"
	"                    [--pre NAME] [--vocab N] [--vocab-only] [--arch llama|qwen2]\n"
	"                    [--rope-freqs] [--rope-scale F] [--rope-dims N] [--biases]\n"
	"                    [--tied] [--quiet] -o FILE\n"
	"       spa-gen plugin --base FILE --kind spa|lst|lora|adapter [--rank N]\n"
	"                      [--side-fraction F] [--calib-prompt TEXT] [--seed N] [--quiet]\n"
	"                      -o FILE\n"
	"\n"
	"base    write a llama- or qwen2-architecture GGUF model with random weights\n"
	"        (deterministic in the seed) and a synthetic tokenizer.\n"
	"        --shape  tiny      4 blocks, H 128, FFN 344, 4/2 heads, vocab 1024 (~4 MB f32)\n"
	"                 default   32 blocks, H 512, FFN 1376, 8/4 heads, vocab 32000\n"
	"                 1b        8 blocks, H 2048, FFN 5632, 16 heads, vocab 32000\n"
	"                 llama-7b  32 blocks, H 4096, FFN 11008, 32 heads, vocab 32000 (~13 GB f16)\n"
	"        --type   weight type of the matrices: f32 (default), f16, bf16, q8_0, q4_0,\n"
	"                 q4_k or q6_k (ggml's block formats). Norms stay f32; as llama.cpp\n"
	"                 does, q4_0 and q4_k files keep token_embd and output in q6_k, and a\n"
	"                 matrix whose rows do not fill whole blocks falls back to q8_0 (k-quants)\n"
	"                 or f16. Values are the f32 model's of the same seed, quantized.\n"
	"        --tokenizer  spm: SentencePiece (\"llama\", default); bpe: byte-level BPE\n"
	"                 (\"gpt2\") with merges learned from a built-in mixed corpus\n"
	"        --pre    the BPE pre-tokenizer, llama.cpp's name (default llama-bpe; also\n"
	"                 qwen2, gpt-2, starcoder, falcon, deepseek-llm, deepseek-coder, mpt,\n"
	"                 refact, ...); implies --tokenizer bpe\n"
	"        --vocab N    vocabulary size instead of the shape's (300+; bpe 512+)\n"
	"        --vocab-only the metadata and tokenizer without tensors (for spa-tokenize\n"
	"                 and llama.cpp's llama-tokenize)\n"
	"        --arch   llama (default) or qwen2 (qwen2.* keys, q/k/v biases, NEOX rotary\n"
	"                 pairs; give it a BPE tokenizer, e.g. --pre qwen2)\n"
	"        --rope-freqs  llama 3.1's rope_freqs.weight (frequency divisors 1..8)\n"
	"        --rope-scale F  linear rope scaling by F (rope.scaling.type linear, factor F)\n"
	"        --rope-dims N   rotate N dimensions of each head (even; default all)\n"
	"        --biases llama: a bias on every matrix (q, k, v, attn_output, the FFN's)\n"
	"        --tied   no output.weight: the LM head is the token embedding (as SmolLM)\n"
	"plugin  write a personal plugin for a base model, with random weights:\n"
	"        --kind   spa (side network + classifier), lst (side network, always used),\n"
	"                 lora (rank-k q/v updates), adapter (Houlsby bottlenecks)\n"
	"        --rank   side width r, LoRA rank k or adapter bottleneck b\n"
	"                 (default 32, 8, 16; 1 to 4096)\n"
	"        --side-fraction  spa: fraction of tokens the classifier sends to the side\n"
	"                 path, calibrated on a prompt (0 to 1, default 0.6)\n"
	"        --calib-prompt   text to calibrate on (default: a built-in sample)\n"
	"common  --seed N (default 1), -o FILE (required), --quiet (no progress), --help\n";

/* Tensor parameters and file size of a written GGUF (opening it also checks it reads back). */
static int file_stats(const char *path, uint64_t *n_params, uint64_t *size,
		      struct spa_errbuf *err)
{
	struct spa_gguf *g;
	int rc = spa_gguf_open(&g, path, err);
	if (rc < 0)
		return rc;
	*n_params = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++)
		*n_params += g->tensors[i].n_elems;
	*size = g->file_size;
	spa_gguf_close(g);
	return 0;
}

static void fmt_count(char *buf, size_t size, uint64_t n)
{
	if (n >= 1000000000ull)
		snprintf(buf, size, "%.2f B", (double)n / 1e9);
	else if (n >= 1000000ull)
		snprintf(buf, size, "%.2f M", (double)n / 1e6);
	else if (n >= 1000ull)
		snprintf(buf, size, "%.1f K", (double)n / 1e3);
	else
		snprintf(buf, size, "%llu", (unsigned long long)n);
}

static int cmd_base(int argc, char **argv)
{
	const char *shape = NULL, *out = NULL;
	enum spa_dtype type = SPA_TYPE_F32;
	uint64_t seed = 1;
	int quiet = 0;
	const char *tokenizer = NULL;
	long long vocab = 0;
	struct spa_gen_tok tok = { NULL, false };
	struct spa_gen_opts opts = { .tok = &tok };
	const char *arch = NULL;
	double rope_scale = 0;
	long long rope_dims = 0;

	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--shape")) {
			shape = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--type")) {
			const char *v = cli_value(argc, argv, &i);
			int t = spa_dtype_from_name(v);
			if (t < 0 || !spa_kernels_supports((enum spa_dtype)t))
				cli_die(2, "--type: '%s' cannot be generated: use f32, f16, bf16, q8_0, "
					"q4_0, q4_k or q6_k", v);
			type = (enum spa_dtype)t;
		} else if (!strcmp(a, "--seed")) {
			seed = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 0, LLONG_MAX);
		} else if (!strcmp(a, "--tokenizer")) {
			tokenizer = cli_value(argc, argv, &i);
			if (strcmp(tokenizer, "spm") != 0 && strcmp(tokenizer, "bpe") != 0)
				cli_die(2, "--tokenizer: '%s' is not spm or bpe", tokenizer);
		} else if (!strcmp(a, "--pre")) {
			tok.pre = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--vocab")) {
			vocab = cli_int(a, cli_value(argc, argv, &i), 300, 1 << 19);
		} else if (!strcmp(a, "--vocab-only")) {
			tok.vocab_only = true;
		} else if (!strcmp(a, "--arch")) {
			arch = cli_value(argc, argv, &i);
			if (strcmp(arch, "llama") != 0 && strcmp(arch, "qwen2") != 0)
				cli_die(2, "--arch: '%s' is not llama or qwen2", arch);
		} else if (!strcmp(a, "--rope-freqs")) {
			opts.rope_freqs = true;
		} else if (!strcmp(a, "--rope-scale")) {
			rope_scale = cli_float(a, cli_value(argc, argv, &i), 1.0, 1e6);
		} else if (!strcmp(a, "--rope-dims")) {
			rope_dims = cli_int(a, cli_value(argc, argv, &i), 2, 65536);
		} else if (!strcmp(a, "--biases")) {
			opts.biases = true;
		} else if (!strcmp(a, "--tied")) {
			opts.tied = true;
		} else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
			out = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			quiet = 1;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(usage, stdout);
			return 0;
		} else {
			cli_die(2, "base: unknown option '%s' (see --help)", a);
		}
	}
	if (!shape)
		cli_die(2, "base: --shape is required: tiny, default, 1b or llama-7b");
	if (!out)
		cli_die(2, "base: -o FILE is required: where to write the model");
	struct spa_hparams hp;
	if (spa_gen_shape(shape, &hp) < 0)
		cli_die(2, "--shape: unknown shape '%s': use tiny, default, 1b or llama-7b", shape);

	if (vocab)
		hp.n_vocab = (uint32_t)vocab;
	if (arch && !strcmp(arch, "qwen2")) {
		hp.arch = SPA_ARCH_QWEN2;
		if (opts.biases)
			cli_die(2, "--biases is for llama: qwen2 has its q, k and v biases always");
	}
	if (rope_scale)
		hp.rope_freq_scale = (float)(1.0 / rope_scale);
	if (rope_dims) {
		if (rope_dims % 2 || rope_dims > hp.head_dim)
			cli_die(2, "--rope-dims: %lld must be even and at most the head dimension %u",
				rope_dims, hp.head_dim);
		hp.n_rot = (uint32_t)rope_dims;
	}
	if (tokenizer && !strcmp(tokenizer, "spm") && tok.pre)
		cli_die(2, "--pre names a BPE pre-tokenizer: it does not go with --tokenizer spm");
	if (tokenizer && !strcmp(tokenizer, "bpe") && !tok.pre)
		tok.pre = "llama-bpe";

	struct spa_errbuf err = {{0}};
	double t0 = spa_clock_s();
	int rc = spa_gen_base_opts(&hp, type, seed, &opts, out, !quiet && isatty(2), &err);
	if (rc < 0)
		cli_die(1, "%s", err.msg[0] ? err.msg : spa_strerror(rc));
	double dt = spa_clock_s() - t0;
	uint64_t n_params, size;
	if (file_stats(out, &n_params, &size, &err) < 0)
		cli_die(1, "wrote %s but cannot read it back: %s", out, err.msg);
	char np[32];
	fmt_count(np, sizeof np, n_params);
	printf("wrote %s: %.2f MB, %s base model '%s' (L %u, H %u, FFN %u, heads %u/%u, vocab %u, "
	       "ctx %u), %s, %s parameters, seed %llu, tokenizer %s%s%s, in %.2f s\n", out,
	       (double)size / 1e6, spa_arch_name(hp.arch), shape, hp.n_layers, hp.n_embd, hp.n_ff,
	       hp.n_heads, hp.n_kv_heads, hp.n_vocab, hp.n_ctx, spa_dtype_name(type), np,
	       (unsigned long long)seed, tok.pre ? "bpe " : "spm", tok.pre ? tok.pre : "",
	       tok.vocab_only ? " (vocabulary only)" : "", dt);
	return 0;
}

static int cmd_plugin(int argc, char **argv)
{
	const char *base = NULL, *kind = NULL, *out = NULL, *calib = NULL;
	long long rank = 0;
	double fraction = 0.6;
	int have_fraction = 0, quiet = 0;
	uint64_t seed = 1;

	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--base")) {
			base = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--kind")) {
			kind = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--rank")) {
			rank = cli_int(a, cli_value(argc, argv, &i), 1, 4096);
		} else if (!strcmp(a, "--side-fraction")) {
			fraction = cli_float(a, cli_value(argc, argv, &i), 0.0, 1.0);
			have_fraction = 1;
		} else if (!strcmp(a, "--calib-prompt")) {
			calib = cli_value(argc, argv, &i);
			if (!*calib)
				cli_die(2, "--calib-prompt: the text is empty");
		} else if (!strcmp(a, "--seed")) {
			seed = (uint64_t)cli_int(a, cli_value(argc, argv, &i), 0, LLONG_MAX);
		} else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
			out = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
			quiet = 1;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(usage, stdout);
			return 0;
		} else {
			cli_die(2, "plugin: unknown option '%s' (see --help)", a);
		}
	}
	if (!base)
		cli_die(2, "plugin: --base FILE is required: the base model the plugin is for");
	if (!kind)
		cli_die(2, "plugin: --kind is required: spa, lst, lora or adapter");
	if (!out)
		cli_die(2, "plugin: -o FILE is required: where to write the plugin");

	struct spa_plugin_gen_params gp = {
		.rank = (uint32_t)rank, .seed = seed, .side_fraction = (float)fraction,
		.calib_prompt = calib,
	};
	if (!strcmp(kind, "spa")) {
		gp.kind = SPA_PLUGIN_SIDE;
	} else if (!strcmp(kind, "lst")) {
		/* LST always takes the side path: no classifier bias to calibrate. */
		gp.kind = SPA_PLUGIN_SIDE;
		gp.side_fraction = -1.0f;
	} else if (!strcmp(kind, "lora")) {
		gp.kind = SPA_PLUGIN_LORA;
	} else if (!strcmp(kind, "adapter")) {
		gp.kind = SPA_PLUGIN_ADAPTER;
	} else {
		cli_die(2, "--kind: unknown kind '%s': use spa, lst, lora or adapter", kind);
	}
	if (have_fraction && strcmp(kind, "spa") != 0)
		fprintf(stderr, "%s: note: --side-fraction only applies to --kind spa; ignored\n",
			cli_prog);

	struct spa_errbuf err = {{0}};
	struct spa_model *m = NULL;
	double t0 = spa_clock_s();
	int rc = spa_model_load(&m, base, !quiet && isatty(2), &err);
	if (rc < 0)
		cli_die(1, "%s", err.msg[0] ? err.msg : spa_strerror(rc));
	rc = spa_plugin_generate(m, &gp, out, &err);
	uint64_t base_params = m->n_params;
	spa_model_destroy(m);
	if (rc < 0)
		cli_die(1, "%s", err.msg[0] ? err.msg : spa_strerror(rc));
	double dt = spa_clock_s() - t0;

	struct spa_gguf *g;
	if (spa_gguf_open(&g, out, &err) < 0)
		cli_die(1, "wrote %s but cannot read it back: %s", out, err.msg);
	uint64_t n_params = 0, size = g->file_size;
	uint32_t prank = 0;
	for (uint64_t i = 0; i < g->n_tensors; i++)
		n_params += g->tensors[i].n_elems;
	spa_gguf_get_u32(g, "spa.plugin.rank", &prank, NULL);
	spa_gguf_close(g);

	char np[32];
	fmt_count(np, sizeof np, n_params);
	printf("wrote %s: %.2f MB, %s plugin (%s), rank %u, %s parameters (%.3f%% of the base), "
	       "for %s, seed %llu, in %.2f s\n", out, (double)size / 1e6,
	       spa_plugin_kind_name(gp.kind), kind, prank, np,
	       base_params ? 100.0 * (double)n_params / (double)base_params : 0.0, base,
	       (unsigned long long)seed, dt);
	return 0;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	if (argc < 2)
		cli_die(2, "missing command: base or plugin (see --help)");
	const char *cmd = argv[1];
	if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
		fputs(usage, stdout);
		return 0;
	}
	if (!strcmp(cmd, "base"))
		return cmd_base(argc, argv);
	if (!strcmp(cmd, "plugin"))
		return cmd_plugin(argc, argv);
	cli_die(2, "unknown command '%s': use base or plugin (see --help)", cmd);
}
