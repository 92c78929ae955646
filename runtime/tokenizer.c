/* spa: tokenizers from GGUF tokenizer.ggml.* keys: what SentencePiece ("llama") and byte-level
 * BPE ("gpt2") share.
 *
 * Loading reads the keys both models have (tokens, token_type, the special ids and add_*
 * flags) the way llama.cpp's llama_vocab::impl::load does, then hands over to the model's own
 * loader (tokenizer_spm.c, tokenizer_bpe.c). Encoding first cuts the text at the special and
 * added tokens (llama.cpp's tokenizer_st_partition: longest token first, every occurrence,
 * left to right), then gives each stretch of plain text to the model's encoder. */
#include "tokenizer_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/gguf.h"

/* ---- shared helpers ---- */

uint64_t tok_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

int tok_map_init(struct tok_map *m, uint32_t n)
{
	uint32_t size = 16;
	while (size < 2 * (uint64_t)n)
		size <<= 1;
	m->slot = malloc((size_t)size * sizeof *m->slot);
	if (!m->slot)
		return -ENOMEM;
	memset(m->slot, 0xff, (size_t)size * sizeof *m->slot);
	m->mask = size - 1;
	return 0;
}

uint32_t tok_map_probe(const struct tok_map *m, const char *arena, const uint32_t *off,
		       const uint32_t *len, const char *s, size_t n)
{
	uint32_t i = (uint32_t)tok_hash(s, n) & m->mask;
	for (;;) {
		int32_t id = m->slot[i];
		if (id < 0 || (len[id] == n && memcmp(arena + off[id], s, n) == 0))
			return i;
		i = (i + 1) & m->mask;
	}
}

size_t tok_utf8_put(char *dst, uint32_t c)
{
	if (c < 0x80) {
		dst[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		dst[0] = (char)(0xc0 | (c >> 6));
		dst[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		dst[0] = (char)(0xe0 | (c >> 12));
		dst[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		dst[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	dst[0] = (char)(0xf0 | (c >> 18));
	dst[1] = (char)(0x80 | ((c >> 12) & 0x3f));
	dst[2] = (char)(0x80 | ((c >> 6) & 0x3f));
	dst[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

/* ---- load ---- */

void spa_tokenizer_destroy(struct spa_tokenizer *t)
{
	if (!t)
		return;
	free(t->raw);
	free(t->raw_off);
	free(t->raw_len);
	free(t->text);
	free(t->text_off);
	free(t->text_len);
	free(t->scores);
	free(t->types);
	free(t->file_types);
	free(t->map.slot);
	free(t->special);
	bpe_destroy(t->bpe);
	free(t);
}

/* Optional u32 id key: *id keeps its default when absent; present, it must be < n. */
static int load_id(const struct spa_gguf *g, const char *key, uint32_t n, int32_t *id,
		   bool *present, struct spa_errbuf *err)
{
	uint32_t v;
	int rc = spa_gguf_get_u32(g, key, &v, err);
	if (rc == -ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	if (v >= n)
		return spa_err(err, -SPA_EMODEL,
			       "%s: %s is %u but the vocabulary has %u tokens: the tokenizer is "
			       "broken, convert the model again", g->path, key, v, n);
	*id = (int32_t)v;
	*present = true;
	return 0;
}

/* Optional bool key (llama.cpp's add_bos_token and friends). */
static int load_bool(const struct spa_gguf *g, const char *key, bool *v, bool *present,
		     struct spa_errbuf *err)
{
	const struct spa_gguf_kv *kv = spa_gguf_find_kv(g, key);
	if (!kv)
		return 0;
	if (kv->type != SPA_GGUF_BOOL)
		return spa_err(err, -SPA_EMODEL, "%s: %s should be a bool: the tokenizer is "
			       "broken, convert the model again", g->path, key);
	*v = kv->v.u != 0;
	*present = true;
	return 0;
}

/* llama.cpp marks tokens with these texts as control tokens whatever their token_type says
 * (end of generation, fill-in-the-middle): llama_vocab::impl::load's "auto-detect". */
static const char *const control_names[] = {
	"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
	"<EOT>",
};
/* These only while the matching id key is absent (keys: eot, fim pre/suf/mid/pad/rep/sep). */
static const struct {
	const char *key, *alt_key;
	const char *names[5];
} control_by_key[] = {
	{ "tokenizer.ggml.eot_token_id", NULL,
	  { "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>" } },
	{ "tokenizer.ggml.eot_token_id", NULL,
	  { "<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" } },
	{ "tokenizer.ggml.eom_token_id", NULL, { "<|eom_id|>" } },
	{ "tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id",
	  { "<|fim_prefix|>", "<fim-prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
	    "<PRE>" } },
	{ "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id",
	  { "<|fim_suffix|>", "<fim-suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
	    "<SUF>" } },
	{ "tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id",
	  { "<|fim_middle|>", "<fim-middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
	    "<MID>" } },
	{ "tokenizer.ggml.fim_pad_token_id", NULL, { "<|fim_pad|>", "<fim-pad>", "<PAD>" } },
	{ "tokenizer.ggml.fim_rep_token_id", NULL,
	  { "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>" } },
	{ "tokenizer.ggml.fim_sep_token_id", NULL, { "<|file_sep|>" } },
};

static bool name_in(const char *s, uint32_t n, const char *const *names, size_t n_names)
{
	for (size_t i = 0; i < n_names; i++)
		if (names[i] && strlen(names[i]) == n && memcmp(names[i], s, n) == 0)
			return true;
	return false;
}

static void fix_control_types(struct spa_tokenizer *t, const struct spa_gguf *g)
{
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		const char *s = t->raw + t->raw_off[i];
		uint32_t n = t->raw_len[i];
		if (n < 5 || s[0] != '<')
			continue;
		bool ctl = name_in(s, n, control_names,
				   sizeof control_names / sizeof control_names[0]);
		for (size_t k = 0; !ctl && k < sizeof control_by_key / sizeof control_by_key[0];
		     k++) {
			if (spa_gguf_find_kv(g, control_by_key[k].key) ||
			    (control_by_key[k].alt_key &&
			     spa_gguf_find_kv(g, control_by_key[k].alt_key)))
				continue;
			ctl = name_in(s, n, control_by_key[k].names, 5);
		}
		if (ctl)
			t->types[i] = TOK_CONTROL;
	}
}

static int cmp_special(const void *a, const void *b, void *arg)
{
	const struct spa_tokenizer *t = arg;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	if (t->raw_len[x] != t->raw_len[y])
		return t->raw_len[x] > t->raw_len[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int build_special(struct spa_tokenizer *t)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		int32_t ty = t->types[i];
		n += t->raw_len[i] > 0 && (ty == TOK_CONTROL || ty == TOK_USER || ty == TOK_UNKNOWN);
	}
	t->special = malloc((n ? n : 1) * sizeof *t->special);
	if (!t->special)
		return -ENOMEM;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		int32_t ty = t->types[i];
		if (t->raw_len[i] > 0 && (ty == TOK_CONTROL || ty == TOK_USER || ty == TOK_UNKNOWN))
			t->special[t->n_special++] = (int32_t)i;
	}
	qsort_r(t->special, t->n_special, sizeof *t->special, cmp_special, t);
	return 0;
}

int spa_tokenizer_load(struct spa_tokenizer **out, const struct spa_gguf *g,
		       struct spa_errbuf *err)
{
	const char *path = g->path;
	const char *model;
	const struct spa_gguf_kv *tok_kv, *type_kv = NULL;
	struct spa_tokenizer *t = NULL;
	enum tok_kind kind;
	int rc;

	*out = NULL;
	rc = spa_gguf_get_str(g, "tokenizer.ggml.model", &model, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: no tokenizer (tokenizer.ggml.model is missing): "
			       "use a GGUF file converted with its tokenizer", path);
	if (rc < 0)
		return rc;
	if (strcmp(model, "llama") == 0)
		kind = TOK_KIND_SPM;
	else if (strcmp(model, "gpt2") == 0)
		kind = TOK_KIND_BPE;
	else
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.model is '%s': spa reads "
			       "SentencePiece ('llama') and byte-level BPE ('gpt2') tokenizers only",
			       path, model);

	rc = spa_gguf_get_arr(g, "tokenizer.ggml.tokens", SPA_GGUF_STRING, &tok_kv, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.tokens is missing: the file has "
			       "no vocabulary, convert the model again with its tokenizer", path);
	if (rc < 0)
		return rc;
	uint64_t n64 = tok_kv->v.arr.n;
	if (n64 < 3 || n64 > TOK_MAX_VOCAB)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.tokens has %llu tokens (expected "
			       "3 to %u): the vocabulary is broken", path, (unsigned long long)n64,
			       TOK_MAX_VOCAB);
	uint32_t n = (uint32_t)n64;

	rc = spa_gguf_get_arr(g, "tokenizer.ggml.token_type", SPA_GGUF_INT32, &type_kv, err);
	if (rc == -ENOENT)
		type_kv = NULL;
	else if (rc < 0)
		return rc;
	else if (type_kv->v.arr.n != n)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.token_type has %llu values for "
			       "%u tokens: the tokenizer is broken, convert the model again", path,
			       (unsigned long long)type_kv->v.arr.n, n);

	t = calloc(1, sizeof *t);
	if (!t)
		return -ENOMEM;
	t->kind = kind;
	t->n_vocab = n;
	t->pad = -1;
	/* llama.cpp's defaults: SentencePiece <unk> <s> </s> = 0 1 2; BPE 11 for both BOS and
	 * EOS (GPT-2's converter history), no unknown token. */
	if (kind == TOK_KIND_SPM) {
		t->unk = 0;
		t->bos = 1;
		t->eos = 2;
		t->add_bos = true;
		t->add_space_prefix = true;
	} else {
		t->unk = -1;
		t->bos = t->eos = n > 11 ? 11 : -1;
	}
	if ((rc = load_id(g, "tokenizer.ggml.bos_token_id", n, &t->bos, &t->key_bos, err)) < 0 ||
	    (rc = load_id(g, "tokenizer.ggml.eos_token_id", n, &t->eos, &t->key_eos, err)) < 0 ||
	    (rc = load_id(g, "tokenizer.ggml.unknown_token_id", n, &t->unk, &t->key_unk,
			  err)) < 0 ||
	    (rc = load_id(g, "tokenizer.ggml.padding_token_id", n, &t->pad, &t->key_pad,
			  err)) < 0 ||
	    (rc = load_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix,
			    &t->key_add_space, err)) < 0)
		goto err;

	const struct spa_gguf_str *strs = tok_kv->v.arr.data;
	uint64_t raw_size = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (strlen(strs[i].data) != strs[i].len) {
			rc = spa_err(err, -SPA_EMODEL, "%s: token %u of tokenizer.ggml.tokens contains "
				     "a NUL byte: the vocabulary is broken", path, i);
			goto err;
		}
		raw_size += strs[i].len + 1;
	}
	/* Offsets are 32-bit; the strings already sit in memory, so this only guards the type. */
	if (raw_size > UINT32_MAX) {
		rc = spa_err(err, -SPA_EMODEL, "%s: the vocabulary's pieces take %llu bytes, more "
			     "than 4 GiB: the tokenizer is broken", path, (unsigned long long)raw_size);
		goto err;
	}
	rc = -ENOMEM;
	t->raw = malloc(raw_size);
	t->raw_off = malloc(n * sizeof *t->raw_off);
	t->raw_len = malloc(n * sizeof *t->raw_len);
	t->types = malloc(n * sizeof *t->types);
	if (!t->raw || !t->raw_off || !t->raw_len || !t->types)
		goto err;
	uint32_t o = 0;
	for (uint32_t i = 0; i < n; i++) {
		memcpy(t->raw + o, strs[i].data, strs[i].len + 1);
		t->raw_off[i] = o;
		t->raw_len[i] = (uint32_t)strs[i].len;
		o += (uint32_t)strs[i].len + 1;
	}

	if (type_kv) {
		t->file_types = malloc(n * sizeof *t->file_types);
		if (!t->file_types)
			goto err;
		memcpy(t->types, type_kv->v.arr.data, n * sizeof *t->types);
		for (uint32_t i = 0; i < n; i++) {
			if (t->types[i] < TOK_UNDEFINED || t->types[i] > TOK_BYTE) {
				rc = spa_err(err, -SPA_EMODEL, "%s: token %u has type %d (expected 0 "
					     "to 6): the tokenizer is broken", path, i, t->types[i]);
				goto err;
			}
		}
		memcpy(t->file_types, t->types, n * sizeof *t->types);
	} else {
		for (uint32_t i = 0; i < n; i++)
			t->types[i] = TOK_NORMAL;
	}
	fix_control_types(t, g);

	rc = kind == TOK_KIND_SPM ? spm_load(t, g, err) : bpe_load(t, g, err);
	if (rc < 0)
		goto err;
	if ((rc = load_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, &t->key_add_bos,
			    err)) < 0 ||
	    (rc = load_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, &t->key_add_eos,
			    err)) < 0)
		goto err;
	if ((t->add_bos && t->bos < 0) || (t->add_eos && t->eos < 0)) {
		rc = spa_err(err, -SPA_EMODEL, "%s: the tokenizer asks for a %s token but has none "
			     "(set tokenizer.ggml.%s_token_id, or tokenizer.ggml.add_%s_token to "
			     "false)", path, t->add_bos && t->bos < 0 ? "BOS" : "EOS",
			     t->add_bos && t->bos < 0 ? "bos" : "eos",
			     t->add_bos && t->bos < 0 ? "bos" : "eos");
		goto err;
	}
	if ((rc = build_special(t)) < 0)
		goto err;
	*out = t;
	return 0;
err:
	spa_tokenizer_destroy(t);
	return rc;
}

uint32_t spa_tokenizer_n_vocab(const struct spa_tokenizer *t)
{
	return t->n_vocab;
}

int32_t spa_tokenizer_bos(const struct spa_tokenizer *t)
{
	return t->bos;
}

int32_t spa_tokenizer_eos(const struct spa_tokenizer *t)
{
	return t->eos;
}

bool spa_tokenizer_add_bos(const struct spa_tokenizer *t)
{
	return t->add_bos;
}

const char *spa_tokenizer_model(const struct spa_tokenizer *t)
{
	return t->kind == TOK_KIND_SPM ? "llama" : "gpt2";
}

const char *spa_tokenizer_pre(const struct spa_tokenizer *t)
{
	return t->kind == TOK_KIND_BPE ? bpe_pre_name(t->bpe) : NULL;
}

/* ---- pieces ---- */

const char *spa_tokenizer_piece(const struct spa_tokenizer *t, int32_t prev, int32_t id)
{
	if (id < 0 || (uint32_t)id >= t->n_vocab)
		return "";
	const char *s = t->text + t->text_off[id];
	/* SentencePiece's added leading space: not part of the text. prev < 0 means "start of
	 * text", which is where a prompt encoded without BOS begins. */
	if (t->kind == TOK_KIND_SPM && t->add_space_prefix && (prev < 0 || prev == t->bos) &&
	    s[0] == ' ')
		s++;
	return s;
}

const char *spa_tokenizer_token_text(const struct spa_tokenizer *t, int32_t id, unsigned flags,
				     size_t *len)
{
	if (id < 0 || (uint32_t)id >= t->n_vocab) {
		if (len)
			*len = 0;
		return "";
	}
	int32_t ty = t->types[id];
	if ((flags & SPA_TOK_SPECIAL) && (ty == TOK_CONTROL || ty == TOK_UNKNOWN)) {
		if (len)
			*len = t->raw_len[id];
		return t->raw + t->raw_off[id];
	}
	if (len)
		*len = t->text_len[id];
	return t->text + t->text_off[id];
}

int spa_tokenizer_decode(const struct spa_tokenizer *t, const int32_t *ids, uint32_t n,
			 char *buf, size_t size, size_t *len)
{
	size_t o = 0;
	int32_t prev = -1;
	for (uint32_t i = 0; i < n; i++) {
		const char *s = spa_tokenizer_piece(t, prev, ids[i]);
		size_t l = ids[i] >= 0 && (uint32_t)ids[i] < t->n_vocab ?
			t->text_len[ids[i]] - (size_t)(s - (t->text + t->text_off[ids[i]])) : 0;
		if (o + l < size)
			memcpy(buf + o, s, l);
		else if (o < size)
			memcpy(buf + o, s, size - o);
		o += l;
		prev = ids[i];
	}
	if (size)
		buf[o < size ? o : size - 1] = 0;
	*len = o;
	return o < size ? 0 : -SPA_ETOOBIG;
}

/* ---- encode ---- */

/* A stretch of the text (id < 0) or a special token found in it. */
struct frag {
	uint32_t off, len;
	int32_t id;
};

/* Cut the text at every occurrence of each special token, longest token first (what
 * llama.cpp's tokenizer_st_partition does). *frags is malloc'd. */
static int partition(const struct spa_tokenizer *t, const char *text, uint32_t len,
		     bool parse_special, struct frag **frags, uint32_t *n_frags)
{
	uint32_t n = 0;
	struct frag *f = malloc(sizeof *f), *g = NULL;
	if (!f)
		return -ENOMEM;
	if (len)
		f[n++] = (struct frag){ 0, len, -1 };
	for (uint32_t k = 0; k < t->n_special && n; k++) {
		int32_t id = t->special[k];
		if (!parse_special && t->types[id] != TOK_USER)
			continue;
		const char *tok = t->raw + t->raw_off[id];
		uint32_t tl = t->raw_len[id];
		/* Splitting adds at most 2 fragments per occurrence. */
		uint32_t gcap = n, gn = 0;
		for (uint32_t i = 0; i < n; i++) {
			if (f[i].id >= 0 || f[i].len < tl)
				continue;
			const char *p = text + f[i].off, *end = p + f[i].len;
			while ((p = memmem(p, (size_t)(end - p), tok, tl)))
				gcap += 2, p += tl;
		}
		if (gcap == n)
			continue;
		g = malloc(gcap * sizeof *g);
		if (!g) {
			free(f);
			return -ENOMEM;
		}
		for (uint32_t i = 0; i < n; i++) {
			if (f[i].id >= 0 || f[i].len < tl) {
				g[gn++] = f[i];
				continue;
			}
			const char *s = text + f[i].off, *end = s + f[i].len, *p;
			while ((p = memmem(s, (size_t)(end - s), tok, tl))) {
				if (p > s)
					g[gn++] = (struct frag){ (uint32_t)(s - text),
								 (uint32_t)(p - s), -1 };
				g[gn++] = (struct frag){ (uint32_t)(p - text), tl, id };
				s = p + tl;
			}
			if (s < end)
				g[gn++] = (struct frag){ (uint32_t)(s - text), (uint32_t)(end - s), -1 };
		}
		free(f);
		f = g;
		n = gn;
	}
	*frags = f;
	*n_frags = n;
	return 0;
}

int spa_tokenizer_encode(const struct spa_tokenizer *t, const char *text, unsigned flags,
			 int32_t *ids, uint32_t max_ids, uint32_t *n_ids)
{
	if (!t || !text || !n_ids || (!ids && max_ids))
		return -EINVAL;
	*n_ids = 0;
	size_t len = strlen(text);
	if (len > TOK_MAX_TEXT)
		return -SPA_ETOOBIG;
	struct tok_out o = { ids, max_ids, 0 };
	struct frag *f;
	uint32_t n_f;
	int rc = partition(t, text, (uint32_t)len, flags & SPA_TOK_PARSE_SPECIAL, &f, &n_f);
	if (rc < 0)
		return rc;
	if ((flags & SPA_TOK_ADD_SPECIAL) && t->add_bos)
		tok_emit(&o, t->bos);
	bool prev_special = true; /* SentencePiece: a space before text that follows a token */
	for (uint32_t i = 0; i < n_f && rc == 0; i++) {
		if (f[i].id >= 0) {
			tok_emit(&o, f[i].id);
			prev_special = true;
		} else if (t->kind == TOK_KIND_SPM) {
			rc = spm_encode(t, text + f[i].off, f[i].len,
					t->add_space_prefix && prev_special, &o);
			prev_special = false;
		} else {
			rc = bpe_encode(t, text + f[i].off, f[i].len, &o);
		}
	}
	free(f);
	if (rc < 0)
		return rc;
	if ((flags & SPA_TOK_ADD_SPECIAL) && t->add_eos)
		tok_emit(&o, t->eos);
	*n_ids = o.n;
	return o.n > max_ids ? -SPA_ETOOBIG : 0;
}

/* ---- write ---- */

int spa_tokenizer_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w)
{
	int rc = t->kind == TOK_KIND_SPM ? spm_write(t, w) : bpe_write(t, w);
	if (rc == 0 && t->key_pad)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)t->pad);
	if (rc == 0 && t->key_add_space)
		rc = spa_gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix",
					      t->add_space_prefix);
	/* BPE's defaults depend on the pre-tokenizer: always written, so they cannot drift. */
	if (rc == 0 && (t->key_add_bos || t->kind == TOK_KIND_BPE))
		rc = spa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", t->add_bos);
	if (rc == 0 && (t->key_add_eos || t->kind == TOK_KIND_BPE))
		rc = spa_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", t->add_eos);
	return rc;
}
