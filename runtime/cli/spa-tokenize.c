/* spa-tokenize: a text's tokens, printed as llama.cpp's llama-tokenize prints them.
 *
 *   spa-tokenize -m FILE (-p TEXT | -f FILE | --stdin) [--ids] [--no-bos] [--no-escape]
 *                [--no-parse-special] [--show-count]
 *
 * FILE is any GGUF with tokenizer keys: a model, a plugin or a vocabulary-only file. As
 * llama-tokenize: escapes in the text (\n, \t, \x41, ...) are processed unless --no-escape,
 * control tokens' text becomes the control token unless --no-parse-special, and the BOS (and
 * EOS) the vocabulary asks for are added unless --no-bos.
 * Exit status: 0 done, 1 the file or text could not be read or tokenized, 2 bad usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "spa/spa.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: %s -m FILE (-p TEXT | -f FILE | --stdin) [options]\n"
		"Print the tokens of a text as llama.cpp's llama-tokenize does: one token a line,\n"
		"'ID -> 'PIECE'', or with --ids the ids as a Python list ([1, 2, 3]).\n"
		"\n"
		"  -m, --model FILE      a GGUF with a tokenizer (model, plugin or vocabulary only)\n"
		"  -p, --prompt TEXT     the text\n"
		"  -f, --file FILE       read the text from FILE\n"
		"  --stdin               read the text from standard input\n"
		"  --ids                 print only the ids, as [1, 2, 3]\n"
		"  --no-bos              add no BOS (nor EOS), even where the vocabulary asks for it\n"
		"  --no-escape           take \\n, \\t, \\xNN... in the text literally\n"
		"  --no-parse-special    encode control tokens' text (\"<|endoftext|>\") as text\n"
		"  --show-count          print the number of tokens last\n"
		"  -h, --help            this help\n"
		"\n"
		"exit status: 0 done, 1 the file or text could not be used (the reason on stderr),\n"
		"2 usage error\n",
		cli_prog);
}

/* llama.cpp's string_process_escapes, byte for byte (\xNN needs a character after it). */
static size_t process_escapes(char *s, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\\' || i + 1 >= n) {
			s[o++] = s[i];
			continue;
		}
		char c = s[++i];
		switch (c) {
		case 'n': s[o++] = '\n'; break;
		case 'r': s[o++] = '\r'; break;
		case 't': s[o++] = '\t'; break;
		case '\'': s[o++] = '\''; break;
		case '"': s[o++] = '"'; break;
		case '\\': s[o++] = '\\'; break;
		default:
			if (c == 'x' && i + 2 < n) {
				char x[3] = { s[i + 1], s[i + 2], 0 }, *end;
				long v = strtol(x, &end, 16);
				if (end == x + 2) {
					i += 2;
					s[o++] = (char)v;
					break;
				}
			}
			s[o++] = '\\';
			s[o++] = c;
		}
	}
	return o;
}

/* The whole of f into a NUL-terminated buffer; NULL with errno on failure. */
static char *read_all(FILE *f, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n - 1, f);
		if (ferror(f)) {
			free(buf);
			errno = EIO;
			return NULL;
		}
		if (feof(f))
			break;
		if (n + 1 == cap) {
			char *b = realloc(buf, cap *= 2);
			if (!b)
				free(buf);
			buf = b;
		}
	}
	if (!buf)
		return NULL;
	buf[n] = 0;
	*len = n;
	return buf;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	const char *model = NULL, *prompt = NULL, *file = NULL;
	bool ids_only = false, no_bos = false, no_escape = false, no_parse_special = false;
	bool show_count = false, use_stdin = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
			model = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
			prompt = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
			file = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--stdin")) {
			use_stdin = true;
		} else if (!strcmp(a, "--ids")) {
			ids_only = true;
		} else if (!strcmp(a, "--no-bos")) {
			no_bos = true;
		} else if (!strcmp(a, "--no-escape")) {
			no_escape = true;
		} else if (!strcmp(a, "--no-parse-special")) {
			no_parse_special = true;
		} else if (!strcmp(a, "--show-count")) {
			show_count = true;
		} else {
			cli_die(2, "unknown option '%s' (see --help)", a);
		}
	}
	if (!model)
		cli_die(2, "-m FILE is required: the GGUF whose tokenizer to use");
	if ((prompt != NULL) + (file != NULL) + use_stdin != 1)
		cli_die(2, "give the text one way: -p TEXT, -f FILE or --stdin (see --help)");

	struct spa_gguf *g = NULL;
	struct spa_tokenizer *t = NULL;
	struct spa_errbuf err = {{0}};
	int rc = spa_gguf_open(&g, model, &err);
	if (rc == 0)
		rc = spa_tokenizer_load(&t, g, &err);
	spa_gguf_close(g);
	if (rc < 0)
		cli_die(1, "%s", err.msg[0] ? err.msg : spa_strerror(rc));

	char *text;
	size_t len;
	if (prompt) {
		len = strlen(prompt);
		text = strdup(prompt);
	} else {
		FILE *f = use_stdin ? stdin : fopen(file, "rb");
		if (!f)
			cli_die(1, "cannot open %s: %s", file, strerror(errno));
		text = read_all(f, &len);
		if (!text)
			cli_die(1, "cannot read %s: %s", use_stdin ? "standard input" : file,
				strerror(errno));
		if (!use_stdin)
			fclose(f);
	}
	if (!text)
		cli_die(1, "out of memory");
	if (!no_escape)
		len = process_escapes(text, len);
	text[len] = 0;
	if (strlen(text) != len)
		cli_die(1, "the text holds a NUL byte at offset %zu: spa-tokenize takes text",
			strlen(text));

	unsigned flags = no_parse_special ? 0 : SPA_TOK_PARSE_SPECIAL;
	if (!no_bos && spa_tokenizer_add_bos(t))
		flags |= SPA_TOK_ADD_SPECIAL; /* as llama-tokenize: add_special = add_bos */
	uint32_t n = 0;
	rc = spa_tokenizer_encode(t, text, flags, NULL, 0, &n);
	int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
	if (rc == -SPA_ETOOBIG && ids && n)
		rc = spa_tokenizer_encode(t, text, flags, ids, n, &n);
	if (rc < 0) {
		if (rc == -SPA_ETOOBIG)
			cli_die(1, "the text is %zu bytes: spa tokenizes texts of up to 16 MiB", len);
		cli_die(1, "cannot tokenize the text: %s", spa_strerror(rc));
	}

	if (ids_only)
		putchar('[');
	for (uint32_t i = 0; i < n; i++) {
		if (ids_only) {
			printf(i ? ", %d" : "%d", ids[i]);
			continue;
		}
		/* As llama-tokenize: the piece with control tokens spelled out, up to a NUL. */
		printf("%6d -> '%s'\n", ids[i], spa_tokenizer_token_text(t, ids[i], SPA_TOK_SPECIAL,
									NULL));
	}
	if (ids_only)
		puts("]");
	if (show_count)
		printf("Total number of tokens: %u\n", n);
	free(ids);
	free(text);
	spa_tokenizer_destroy(t);
	return fflush(stdout) == 0 ? 0 : 1;
}
