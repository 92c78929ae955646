/* spa: byte-level BPE tokenizer ("gpt2"), as llama.cpp's llm_tokenizer_bpe.
 *
 * A text fragment (what is left between special tokens) is read as codepoints, cut into words
 * by the pre-tokenizer that tokenizer.ggml.pre names (llama.cpp's regular expressions for it,
 * run with PCRE2; see bpe_split), and each word's UTF-8 bytes are merged pairwise, the pair of
 * lowest merge rank first (leftmost on ties), until no adjacent pair has a merge.
 *
 * A byte-level vocabulary spells byte b as the character bpe_byte_cpt(b) (GPT-2's
 * bytes_to_unicode: printable Latin-1 as itself, the rest from U+0100 on). This file works on
 * the bytes themselves: each token whose text is all such characters is keyed by the bytes it
 * stands for, symbols carry token ids, and merges are looked up by (left id, right id).
 *
 * How llama.cpp's splitting is matched exactly:
 *  - bad UTF-8 becomes U+FFFD byte by byte, with llama.cpp's decoder (unicode_cpt_from_utf8);
 *  - whitespace is llama.cpp's set (U+0009..000D, U+0020, U+0085, U+00A0, U+1680,
 *    U+2000..200A, U+2028, U+2029, U+202F, U+205F, U+3000): the subject handed to PCRE2 has
 *    each non-ASCII one replaced by U+000B, as llama.cpp does before std::regex, and \s is
 *    ASCII-only (PCRE2_UTF without PCRE2_UCP), so \s means exactly that set;
 *  - \p{L}, \p{N}, \p{P} are PCRE2's Unicode properties, as llama.cpp's tables give them
 *    (the two agree but for characters assigned after PCRE2's Unicode version);
 *  - each regex splits every piece the previous one left, keeping matches and the gaps
 *    between them; $ is the end of the piece (PCRE2_DOLLAR_ENDONLY). */
#include "tokenizer_impl.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/gguf.h"

/* ---- pre-tokenizers: llama.cpp's regex lists (src/llama-vocab.cpp, llm_tokenizer_bpe) ---- */

static const char *const re_llama3[] = {
	"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{"
	"L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
static const char *const re_deepseek_llm[] = {
	"[\r\n]",
	"\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ"
	"-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-"
	"ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
	"\\s?[!-/:-~！-／：-～‘-‟　-。]+",
	"\\s+$",
	"[一-龥ࠀ-一가-퟿]+",
	"\\p{N}+",
};
static const char *const re_deepseek_coder[] = {
	"[\r\n]",
	"\\s?\\p{L}+",
	"\\s?\\p{P}+",
	"[一-龥ࠀ-一가-퟿]+",
	"\\p{N}",
};
static const char *const re_falcon[] = {
	"[\\p{P}\\$\\+<=>\\^~\\|`]+",
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
	"[0-9][0-9][0-9]",
};
static const char *const re_starcoder[] = {
	"\\p{N}",
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
};
static const char *const re_gpt2[] = {
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
};
static const char *const re_qwen2[] = {
	"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{"
	"L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
static const char *const re_bloom[] = {
	" ?[^(\\s|.,!?…。，、।۔،)]+",
};
static const char *const re_viking[] = {
	" ?[^(\\s|.,!?…。，、।۔،)]+",
	"\\p{N}",
};
static const char *const re_tekken[] = {
	"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}"
	"\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+["
	"\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
static const char *const re_chameleon[] = {
	"<sentinel:[0-9]+>",
	"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
	"([\\t\\n]|    |  )",
	"\\p{N}",
	"[\\p{P}!-/:-@\\[-`{-~]",
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
};
static const char *const re_default[] = {
	"[\\p{P}\\$\\+<=>\\^~\\|]+",
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)",
	"\\p{N}+",
	"[0-9][0-9][0-9]",
};

enum {
	PRE_ADD_BOS = 1u << 0,       /* add_bos_token defaults to true */
	PRE_IGNORE_MERGES = 1u << 1, /* a word that is a token goes out whole, unmerged */
	PRE_NO_BOS = 1u << 2,        /* no default BOS id */
};

struct bpe_pre {
	const char *name;
	const char *const *re;
	uint32_t n_re;
	unsigned flags;
};

#define RE(x) x, sizeof x / sizeof x[0]

/* llama.cpp's names (llama_vocab::impl::load) and what each implies. Left out: names whose
 * tokenizers need more than a regex (jina-v2-*: <mask> strips spaces; deepseek-v3: \p{S} as
 * llama.cpp's tables have it, without '~'). */
static const struct bpe_pre pres[] = {
	{ "default", RE(re_default), 0 },
	{ "llama3", RE(re_llama3), PRE_ADD_BOS | PRE_IGNORE_MERGES },
	{ "llama-v3", RE(re_llama3), PRE_ADD_BOS | PRE_IGNORE_MERGES },
	{ "llama-bpe", RE(re_llama3), PRE_ADD_BOS | PRE_IGNORE_MERGES },
	{ "falcon3", RE(re_llama3), PRE_ADD_BOS | PRE_IGNORE_MERGES },
	{ "dbrx", RE(re_llama3), 0 },
	{ "smaug-bpe", RE(re_llama3), 0 },
	{ "chatglm-bpe", RE(re_llama3), PRE_NO_BOS },
	{ "deepseek-llm", RE(re_deepseek_llm), 0 },
	{ "deepseek-coder", RE(re_deepseek_coder), 0 },
	{ "falcon", RE(re_falcon), 0 },
	{ "starcoder", RE(re_starcoder), 0 },
	{ "refact", RE(re_starcoder), 0 },
	{ "command-r", RE(re_starcoder), 0 },
	{ "smollm", RE(re_starcoder), 0 },
	{ "codeshell", RE(re_starcoder), 0 },
	{ "exaone", RE(re_starcoder), 0 },
	{ "minerva-7b", RE(re_starcoder), 0 },
	{ "gpt-2", RE(re_gpt2), 0 },
	{ "phi-2", RE(re_gpt2), 0 },
	{ "jina-es", RE(re_gpt2), 0 },
	{ "jina-de", RE(re_gpt2), 0 },
	{ "gigachat", RE(re_gpt2), 0 },
	{ "jina-v1-en", RE(re_gpt2), 0 },
	{ "roberta-bpe", RE(re_gpt2), 0 },
	{ "mpt", RE(re_gpt2), 0 },
	{ "olmo", RE(re_gpt2), 0 },
	{ "jais", RE(re_gpt2), 0 },
	{ "qwen2", RE(re_qwen2), 0 },
	{ "deepseek-r1-qwen", RE(re_qwen2), 0 },
	{ "megrez", RE(re_qwen2), 0 },
	{ "stablelm2", RE(re_qwen2), 0 },
	{ "poro-chat", RE(re_bloom), 0 },
	{ "bloom", RE(re_bloom), 0 },
	{ "gpt3-finnish", RE(re_bloom), 0 },
	{ "viking", RE(re_viking), 0 },
	{ "tekken", RE(re_tekken), PRE_ADD_BOS | PRE_IGNORE_MERGES },
	{ "chameleon", RE(re_chameleon), PRE_ADD_BOS },
};

const struct bpe_pre *bpe_pre_find(const char *name)
{
	for (size_t i = 0; name && i < sizeof pres / sizeof pres[0]; i++)
		if (strcmp(pres[i].name, name) == 0)
			return &pres[i];
	return NULL;
}

const char *bpe_pre_names(void)
{
	return "llama-bpe, qwen2, gpt-2, starcoder, falcon, deepseek-llm, deepseek-coder, mpt, "
	       "refact, default and 28 more llama.cpp names (docs/tokenizer.md lists them)";
}

bool bpe_pre_add_bos(const struct bpe_pre *p)
{
	return p->flags & PRE_ADD_BOS;
}

bool bpe_pre_no_bos(const struct bpe_pre *p)
{
	return p->flags & PRE_NO_BOS;
}

/* ---- byte-level alphabet ---- */

/* GPT-2's bytes_to_unicode: printable Latin-1 stands for itself, the other bytes take
 * U+0100 upwards in byte order. */
uint32_t bpe_byte_cpt(uint8_t b)
{
	if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae)
		return b;
	uint32_t n = 0;
	for (uint32_t c = 0; c < b; c++)
		n += !((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || c >= 0xae);
	return 256 + n;
}

#define BPE_ALPHA_END 0x144 /* 256 + 68: past the last character of the alphabet */

/* The byte codepoint c stands for, or -1 when c is not in the alphabet. */
static int byte_of_cpt(uint32_t c)
{
	static int16_t inv[BPE_ALPHA_END];
	static int ready;
	if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
		int16_t tmp[BPE_ALPHA_END];
		for (int i = 0; i < BPE_ALPHA_END; i++)
			tmp[i] = -1;
		for (int b = 0; b < 256; b++)
			tmp[bpe_byte_cpt((uint8_t)b)] = (int16_t)b;
		/* Racing first calls write the same values. */
		memcpy(inv, tmp, sizeof inv);
		__atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
	}
	return c < BPE_ALPHA_END ? inv[c] : -1;
}

/* One codepoint as llama.cpp's unicode_cpt_from_utf8 reads it: a byte that does not start a
 * complete sequence is U+FFFD and one byte long; lead bytes are not checked further (C0 80 is
 * U+0000). Above U+10FFFF (where llama.cpp stops with an error): U+FFFD. */
static uint32_t llama_cpt(const unsigned char *s, size_t len, size_t *i)
{
	unsigned c = s[*i];
	uint32_t v, n;
	if (!(c & 0x80)) {
		(*i)++;
		return c;
	}
	if (!(c & 0x40))
		goto bad;
	if (!(c & 0x20)) {
		n = 2;
		v = c & 0x1f;
	} else if (!(c & 0x10)) {
		n = 3;
		v = c & 0x0f;
	} else if (!(c & 0x08)) {
		n = 4;
		v = c & 0x07;
	} else {
		goto bad;
	}
	if (*i + n - 1 >= len)
		goto bad;
	for (uint32_t k = 1; k < n; k++) {
		if ((s[*i + k] & 0xc0) != 0x80)
			goto bad;
		v = v << 6 | (s[*i + k] & 0x3f);
	}
	*i += n;
	return v > 0x10ffff ? 0xfffd : v;
bad:
	(*i)++;
	return 0xfffd;
}

/* llama.cpp's whitespace (unicode_set_whitespace: Unicode's White_Space). */
static bool llama_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
	       c == 0x205f || c == 0x3000;
}

/* ---- splitting ---- */

#define BPE_MAX_RE 8

struct bpe_splitter {
	const struct bpe_pre *pre;
	pcre2_code *re[BPE_MAX_RE];
	uint32_t n_re;
};

void bpe_splitter_destroy(struct bpe_splitter *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->n_re; i++)
		pcre2_code_free(s->re[i]);
	free(s);
}

int bpe_splitter_create(struct bpe_splitter **out, const struct bpe_pre *p,
			struct spa_errbuf *err)
{
	struct bpe_splitter *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->pre = p;
	for (uint32_t i = 0; i < p->n_re && i < BPE_MAX_RE; i++) {
		int ec;
		PCRE2_SIZE eo;
		s->re[i] = pcre2_compile((PCRE2_SPTR)p->re[i], PCRE2_ZERO_TERMINATED,
					 PCRE2_UTF | PCRE2_DOLLAR_ENDONLY, &ec, &eo, NULL);
		if (!s->re[i]) {
			PCRE2_UCHAR msg[160];
			pcre2_get_error_message(ec, msg, sizeof msg);
			bpe_splitter_destroy(s);
			return spa_err(err, -SPA_EUNSUPPORTED, "pre-tokenizer '%s': PCRE2 refuses its "
				       "regex %u at offset %zu (%s): install a PCRE2 built with "
				       "Unicode support", p->name, i, (size_t)eo, (const char *)msg);
		}
		s->n_re++;
		/* Optional: without JIT the interpreter runs the same expression. */
		pcre2_jit_compile(s->re[i], PCRE2_JIT_COMPLETE);
	}
	*out = s;
	return 0;
}

struct seg {
	uint32_t off, n; /* codepoints */
};

int bpe_split(const struct bpe_splitter *s, const char *text, size_t len,
	      int (*fn)(void *ctx, const char *word, size_t n), void *ctx)
{
	const unsigned char *u = (const unsigned char *)text;
	uint32_t *cpt = malloc((len + 1) * sizeof *cpt);
	uint32_t *coff = malloc((len + 2) * sizeof *coff);
	uint32_t *b2c = malloc((4 * len + 2) * sizeof *b2c);
	char *sub = malloc(4 * len + 1), *word = malloc(4 * len + 1);
	struct seg *a = malloc((len + 1) * sizeof *a), *b = malloc((len + 1) * sizeof *b);
	pcre2_match_data *md = pcre2_match_data_create(32, NULL);
	int rc = -ENOMEM;
	if (!cpt || !coff || !b2c || !sub || !word || !a || !b || !md)
		goto out;

	uint32_t n = 0;
	for (size_t i = 0; i < len;)
		cpt[n++] = llama_cpt(u, len, &i);
	/* The subject PCRE2 sees: llama.cpp's whitespace outside ASCII as U+000B; surrogates
	 * (which llama.cpp's decoder lets through) as a private-use character, which is
	 * likewise neither letter, number, punctuation nor space. */
	uint32_t o = 0;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t c = cpt[k];
		if (c >= 0x80 && llama_space(c))
			c = 0x0b;
		else if (c >= 0xd800 && c <= 0xdfff)
			c = 0xe000;
		coff[k] = o;
		b2c[o] = k;
		o += (uint32_t)tok_utf8_put(sub + o, c);
	}
	coff[n] = o;
	b2c[o] = n;

	uint32_t na = 0, nb;
	if (n)
		a[na++] = (struct seg){ 0, n };
	for (uint32_t r = 0; r < s->n_re; r++) {
		nb = 0;
		for (uint32_t j = 0; j < na; j++) {
			uint32_t base = coff[a[j].off];
			PCRE2_SPTR subj = (PCRE2_SPTR)sub + base;
			size_t sl = coff[a[j].off + a[j].n] - base, start = 0, prev = 0;
			while (start < sl) {
				int m = pcre2_match(s->re[r], subj, sl, start, PCRE2_NO_UTF_CHECK, md,
						    NULL);
				if (m == PCRE2_ERROR_JIT_STACKLIMIT)
					m = pcre2_match(s->re[r], subj, sl, start,
							PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
				if (m == PCRE2_ERROR_NOMATCH)
					break;
				if (m < 0) {
					rc = m == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -SPA_ETOOBIG;
					goto out;
				}
				PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
				if (ov[1] == ov[0]) { /* none of llama.cpp's regexes matches empty */
					start = ov[0] + 1;
					while (start < sl && (subj[start] & 0xc0) == 0x80)
						start++;
					continue;
				}
				if (ov[0] > prev)
					b[nb++] = (struct seg){ b2c[base + prev],
								(uint32_t)(b2c[base + ov[0]] -
									   b2c[base + prev]) };
				b[nb++] = (struct seg){ b2c[base + ov[0]],
							b2c[base + ov[1]] - b2c[base + ov[0]] };
				prev = start = ov[1];
			}
			if (prev < sl)
				b[nb++] = (struct seg){ b2c[base + prev],
							(uint32_t)(b2c[base + sl] - b2c[base + prev]) };
		}
		struct seg *t = a;
		a = b;
		b = t;
		na = nb;
	}
	rc = 0;
	for (uint32_t j = 0; j < na && rc == 0; j++) {
		size_t wl = 0;
		for (uint32_t k = a[j].off; k < a[j].off + a[j].n; k++)
			wl += tok_utf8_put(word + wl, cpt[k]);
		rc = fn(ctx, word, wl);
	}
out:
	pcre2_match_data_free(md);
	free(cpt);
	free(coff);
	free(b2c);
	free(sub);
	free(word);
	free(a);
	free(b);
	return rc;
}

/* ---- the vocabulary ---- */

struct bpe_pair {
	uint64_t key;      /* left id << 32 | right id; 0 with rank < 0: empty */
	int32_t rank, id;  /* merge rank (its index), id of the merged token */
};

struct bpe {
	char *pre_name;                /* as the file spells it */
	const struct bpe_pre *pre;
	struct bpe_splitter *split;
	char *merges;                  /* the merges as in the file, each NUL-terminated */
	uint32_t *merge_off, n_merges;
	char *key;                     /* the bytes each token stands for */
	uint32_t *key_off, *key_len;   /* key_len 0: not spelled in the byte alphabet */
	int32_t byte_tok[256];         /* token of the single byte b, or -1 */
	int32_t raw1[256];             /* token whose text is the one byte b (llama.cpp's
					* fallback for a byte without a token), or -1 */
	struct bpe_pair *pairs;
	uint32_t pair_mask;
};

void bpe_destroy(struct bpe *b)
{
	if (!b)
		return;
	free(b->pre_name);
	bpe_splitter_destroy(b->split);
	free(b->merges);
	free(b->merge_off);
	free(b->key);
	free(b->key_off);
	free(b->key_len);
	free(b->pairs);
	free(b);
}

const char *bpe_pre_name(const struct bpe *b)
{
	return b->pre_name;
}

static uint32_t pair_slot(const struct bpe *b, uint64_t key)
{
	uint32_t i = (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & b->pair_mask;
	while (b->pairs[i].rank >= 0 && b->pairs[i].key != key)
		i = (i + 1) & b->pair_mask;
	return i;
}

static int32_t key_lookup(const struct spa_tokenizer *t, const char *s, size_t n)
{
	const struct bpe *b = t->bpe;
	return t->map.slot[tok_map_probe(&t->map, b->key, b->key_off, b->key_len, s, n)];
}

/* Token text -> the bytes it stands for into dst; false when a character is not in the
 * alphabet (or the text is not UTF-8). */
static bool text_to_bytes(const char *s, size_t n, char *dst, uint32_t *len)
{
	size_t i = 0;
	uint32_t o = 0;
	while (i < n) {
		int b = byte_of_cpt(llama_cpt((const unsigned char *)s, n, &i));
		if (b < 0)
			return false;
		dst[o++] = (char)b;
	}
	*len = o;
	return true;
}

/* What a token prints, as llama.cpp's token_to_piece (special = false) for a BPE vocabulary:
 * normal tokens their bytes (a character outside the alphabet as llama_decode_text spells
 * it), user-defined tokens their text, every other type nothing. Returns the length; dst
 * NULL: just measure. */
static size_t token_piece(const struct spa_tokenizer *t, uint32_t id, char *dst)
{
	const char *s = t->raw + t->raw_off[id];
	size_t n = t->raw_len[id], o = 0;
	if (t->types[id] == TOK_USER) {
		if (dst)
			memcpy(dst, s, n);
		return n;
	}
	if (t->types[id] != TOK_NORMAL)
		return 0;
	for (size_t i = 0; i < n;) {
		uint32_t c = llama_cpt((const unsigned char *)s, n, &i);
		int b = byte_of_cpt(c);
		if (b >= 0) {
			if (dst)
				dst[o] = (char)b;
			o++;
			continue;
		}
		char u[4], buf[64];
		size_t ul = tok_utf8_put(u, c > 0x10ffff ? 0xfffd : c);
		int k = snprintf(buf, sizeof buf, "[UNK_BYTE_0x");
		for (size_t j = 0; j < ul; j++)
			k += snprintf(buf + k, sizeof buf - (size_t)k, "%02x", (unsigned char)u[j]);
		if (dst) {
			memcpy(dst + o, buf, (size_t)k);
			memcpy(dst + o + k, s, n);
			dst[o + k + n] = ']';
		}
		o += (size_t)k + n + 1;
	}
	return o;
}

int bpe_load(struct spa_tokenizer *t, const struct spa_gguf *g, struct spa_errbuf *err)
{
	const char *path = g->path, *pre_name;
	const struct spa_gguf_kv *mkv;
	struct tok_map raw = { 0, NULL };
	char *cat = NULL;
	uint32_t n = t->n_vocab;
	int rc = spa_gguf_get_str(g, "tokenizer.ggml.pre", &pre_name, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.pre is missing: a BPE ('gpt2') "
			       "tokenizer needs its pre-tokenizer's name; convert the model again "
			       "with a current llama.cpp convert_hf_to_gguf.py", path);
	if (rc < 0)
		return rc;
	const struct bpe_pre *pre = bpe_pre_find(pre_name);
	if (!pre)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.pre is '%.64s', a pre-tokenizer "
			       "spa does not know: it knows %s", path, pre_name, bpe_pre_names());
	rc = spa_gguf_get_arr(g, "tokenizer.ggml.merges", SPA_GGUF_STRING, &mkv, err);
	if (rc == -ENOENT)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.merges is missing: a BPE "
			       "('gpt2') tokenizer needs its merges; convert the model again with "
			       "its tokenizer", path);
	if (rc < 0)
		return rc;
	if (mkv->v.arr.n > TOK_MAX_VOCAB * 4ull)
		return spa_err(err, -SPA_EMODEL, "%s: tokenizer.ggml.merges has %llu merges, more "
			       "than spa takes (%u): the tokenizer is broken", path,
			       (unsigned long long)mkv->v.arr.n, TOK_MAX_VOCAB * 4);

	struct bpe *b = calloc(1, sizeof *b);
	if (!b)
		return -ENOMEM;
	t->bpe = b;
	b->pre = pre;
	if (!(b->pre_name = strdup(pre_name)))
		return -ENOMEM;
	if ((rc = bpe_splitter_create(&b->split, pre, err)) < 0)
		return rc;
	if (pre->flags & PRE_ADD_BOS)
		t->add_bos = true;
	if ((pre->flags & PRE_NO_BOS) && !t->key_bos)
		t->bos = -1;

	/* Tokens by their text (for the merges), each text once, as llama.cpp insists. */
	rc = -ENOMEM;
	if (tok_map_init(&raw, n) < 0)
		goto out;
	for (uint32_t i = 0; i < n; i++) {
		if (!t->raw_len[i])
			continue; /* llama.cpp renames it "[EMPTY_i]": it matches nothing */
		uint32_t s = tok_map_probe(&raw, t->raw, t->raw_off, t->raw_len,
					   t->raw + t->raw_off[i], t->raw_len[i]);
		if (raw.slot[s] >= 0) {
			rc = spa_err(err, -SPA_EMODEL, "%s: tokens %d and %u of tokenizer.ggml.tokens "
				     "are both '%.40s': the vocabulary is broken, convert the model "
				     "again", path, raw.slot[s], i, t->raw + t->raw_off[i]);
			goto out;
		}
		raw.slot[s] = (int32_t)i;
	}

	/* Tokens by the bytes they stand for. */
	b->key = malloc((size_t)t->raw_off[n - 1] + t->raw_len[n - 1] + 1);
	b->key_off = malloc(n * sizeof *b->key_off);
	b->key_len = malloc(n * sizeof *b->key_len);
	if (!b->key || !b->key_off || !b->key_len || tok_map_init(&t->map, n) < 0)
		goto out;
	uint32_t o = 0;
	for (uint32_t i = 0; i < n; i++) {
		b->key_off[i] = o;
		if (!t->raw_len[i] || !text_to_bytes(t->raw + t->raw_off[i], t->raw_len[i],
						     b->key + o, &b->key_len[i])) {
			b->key_len[i] = 0;
			continue;
		}
		uint32_t s = tok_map_probe(&t->map, b->key, b->key_off, b->key_len, b->key + o,
					   b->key_len[i]);
		t->map.slot[s] = (int32_t)i; /* distinct texts give distinct bytes */
		o += b->key_len[i];
	}
	for (int c = 0; c < 256; c++) {
		char ch = (char)c;
		b->byte_tok[c] = key_lookup(t, &ch, 1);
		b->raw1[c] = raw.slot[tok_map_probe(&raw, t->raw, t->raw_off, t->raw_len, &ch, 1)];
	}

	/* Merges: "A B", A, B and AB all tokens; the first of two equal pairs wins. */
	const struct spa_gguf_str *ms = mkv->v.arr.data;
	b->n_merges = (uint32_t)mkv->v.arr.n;
	uint64_t msize = 0;
	size_t longest = 0;
	for (uint32_t i = 0; i < b->n_merges; i++) {
		msize += ms[i].len + 1;
		longest = ms[i].len > longest ? ms[i].len : longest;
	}
	uint32_t cap = 16;
	while (cap < 2 * (uint64_t)b->n_merges)
		cap <<= 1;
	b->merges = malloc(msize ? msize : 1);
	b->merge_off = malloc((b->n_merges + 1) * sizeof *b->merge_off);
	b->pairs = malloc(cap * sizeof *b->pairs);
	cat = malloc(longest + 1);
	if (!b->merges || !b->merge_off || !b->pairs || !cat || msize > UINT32_MAX)
		goto out;
	b->pair_mask = cap - 1;
	for (uint32_t i = 0; i < cap; i++)
		b->pairs[i] = (struct bpe_pair){ 0, -1, -1 };
	o = 0;
	for (uint32_t i = 0; i < b->n_merges; i++) {
		const char *s = ms[i].data;
		size_t len = ms[i].len;
		b->merge_off[i] = o;
		memcpy(b->merges + o, s, len + 1);
		o += (uint32_t)len + 1;
		const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
		if (strlen(s) != len || !sp || sp == s + len - 1) {
			rc = spa_err(err, -SPA_EMODEL, "%s: merge %u of tokenizer.ggml.merges is "
				     "'%.60s', not two tokens separated by a space: the tokenizer "
				     "is broken, convert the model again", path, i, s);
			goto out;
		}
		size_t ll = (size_t)(sp - s), rl = len - ll - 1;
		memcpy(cat, s, ll);
		memcpy(cat + ll, sp + 1, rl);
		int32_t l = raw.slot[tok_map_probe(&raw, t->raw, t->raw_off, t->raw_len, s, ll)];
		int32_t r = raw.slot[tok_map_probe(&raw, t->raw, t->raw_off, t->raw_len, sp + 1,
						   rl)];
		int32_t m = raw.slot[tok_map_probe(&raw, t->raw, t->raw_off, t->raw_len, cat,
						   ll + rl)];
		if (l < 0 || r < 0 || m < 0) {
			rc = spa_err(err, -SPA_EMODEL, "%s: merge %u of tokenizer.ggml.merges ('%.60s') "
				     "refers to '%.*s', which is not a token: the merges do not "
				     "belong to this vocabulary, convert the model again", path, i,
				     s, l < 0 ? (int)ll : r < 0 ? (int)rl : (int)(ll + rl),
				     l < 0 ? s : r < 0 ? sp + 1 : cat);
			goto out;
		}
		uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
		uint32_t slot = pair_slot(b, key);
		if (b->pairs[slot].rank < 0)
			b->pairs[slot] = (struct bpe_pair){ key, (int32_t)i, m };
	}
	b->merge_off[b->n_merges] = o;

	/* What each token prints. */
	uint64_t text_size = 0;
	t->text_off = malloc(n * sizeof *t->text_off);
	t->text_len = malloc(n * sizeof *t->text_len);
	if (!t->text_off || !t->text_len)
		goto out;
	for (uint32_t i = 0; i < n; i++)
		text_size += token_piece(t, i, NULL) + 1;
	if (text_size > UINT32_MAX || !(t->text = malloc(text_size)))
		goto out;
	o = 0;
	for (uint32_t i = 0; i < n; i++) {
		t->text_off[i] = o;
		t->text_len[i] = (uint32_t)token_piece(t, i, t->text + o);
		t->text[o + t->text_len[i]] = 0;
		o += t->text_len[i] + 1;
	}
	rc = 0;
out:
	free(raw.slot);
	free(cat);
	return rc;
}

/* ---- encode ---- */

struct bsym {
	uint32_t off, n;    /* bytes of the word; n == 0 once merged away */
	int32_t id;         /* token of these bytes, or -1 (a byte without a token) */
	int32_t prev, next; /* -1 at the ends */
};

struct bbig {
	int32_t rank, left, right, id;
	uint32_t size; /* bytes; stale when the symbols no longer add up to it */
};

/* Heap order: lowest rank first, then the leftmost pair (llama.cpp's llm_bigram_bpe). */
static int bbig_before(const struct bbig *a, const struct bbig *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

TOK_HEAP_DEFINE(bheap, struct bbig, bbig_before)

struct enc_ctx {
	const struct spa_tokenizer *t;
	struct tok_out *o;
	struct bsym *sym;
	struct bbig *heap;
	size_t cap; /* symbols the buffers hold */
};

static void try_pair(struct enc_ctx *c, int32_t l, int32_t r, uint32_t *n_heap)
{
	const struct bpe *b = c->t->bpe;
	if (l < 0 || r < 0 || c->sym[l].id < 0 || c->sym[r].id < 0)
		return;
	uint64_t key = (uint64_t)(uint32_t)c->sym[l].id << 32 | (uint32_t)c->sym[r].id;
	const struct bpe_pair *p = &b->pairs[pair_slot(b, key)];
	if (p->rank < 0)
		return;
	bheap_push(c->heap, n_heap, (struct bbig){ p->rank, l, r, p->id,
						   c->sym[l].n + c->sym[r].n });
}

static int encode_word(void *ctx, const char *w, size_t n)
{
	struct enc_ctx *c = ctx;
	const struct spa_tokenizer *t = c->t;
	const struct bpe *b = t->bpe;
	if (n == 0)
		return 0;
	if (b->pre->flags & PRE_IGNORE_MERGES) {
		int32_t id = key_lookup(t, w, n);
		if (id >= 0) {
			tok_emit(c->o, id);
			return 0;
		}
	}
	if (n > c->cap) {
		size_t cap = n > 2 * c->cap ? n : 2 * c->cap;
		struct bsym *s = realloc(c->sym, cap * sizeof *s);
		if (!s)
			return -ENOMEM;
		c->sym = s;
		struct bbig *h = realloc(c->heap, 3 * cap * sizeof *h);
		if (!h)
			return -ENOMEM;
		c->heap = h;
		c->cap = cap;
	}
	struct bsym *sym = c->sym;
	for (size_t i = 0; i < n; i++)
		sym[i] = (struct bsym){ (uint32_t)i, 1, b->byte_tok[(unsigned char)w[i]],
					(int32_t)i - 1, (int32_t)i + 1 };
	sym[n - 1].next = -1;
	uint32_t n_heap = 0;
	for (size_t i = 0; i + 1 < n; i++)
		try_pair(c, (int32_t)i, (int32_t)i + 1, &n_heap);
	while (n_heap) {
		struct bbig x = bheap_pop(c->heap, &n_heap);
		struct bsym *l = &sym[x.left], *r = &sym[x.right];
		if (l->n == 0 || r->n == 0 || l->n + r->n != x.size)
			continue;
		l->n += r->n;
		l->id = x.id;
		r->n = 0;
		l->next = r->next;
		if (r->next >= 0)
			sym[r->next].prev = x.left;
		try_pair(c, l->prev, x.left, &n_heap);
		try_pair(c, x.left, l->next, &n_heap);
	}
	for (int32_t i = 0; i >= 0; i = sym[i].next) {
		if (sym[i].id >= 0) {
			tok_emit(c->o, sym[i].id);
			continue;
		}
		/* A byte whose character is not a token: llama.cpp looks up each byte of the
		 * character's UTF-8 as a token of its own and drops those that are not. */
		char u[4];
		size_t ul = tok_utf8_put(u, bpe_byte_cpt((uint8_t)w[sym[i].off]));
		for (size_t k = 0; k < ul; k++)
			if (b->raw1[(unsigned char)u[k]] >= 0)
				tok_emit(c->o, b->raw1[(unsigned char)u[k]]);
	}
	return 0;
}

int bpe_encode(const struct spa_tokenizer *t, const char *s, size_t len, struct tok_out *o)
{
	struct enc_ctx c = { t, o, NULL, NULL, 0 };
	int rc = bpe_split(t->bpe->split, s, len, encode_word, &c);
	free(c.sym);
	free(c.heap);
	return rc;
}

/* ---- write ---- */

int bpe_write(const struct spa_tokenizer *t, struct spa_gguf_writer *w)
{
	const struct bpe *b = t->bpe;
	uint32_t n = t->n_vocab;
	const char **pieces = malloc((n > b->n_merges ? n : b->n_merges + 1) * sizeof *pieces);
	if (!pieces)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		pieces[i] = t->raw + t->raw_off[i];
	int rc = spa_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
	if (rc == 0)
		rc = spa_gguf_writer_set_str(w, "tokenizer.ggml.pre", b->pre_name);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", pieces, n);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPA_GGUF_INT32,
					     t->types, n);
	for (uint32_t i = 0; i < b->n_merges; i++)
		pieces[i] = b->merges + b->merge_off[i];
	if (rc == 0)
		rc = spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", pieces, b->n_merges);
	if (rc == 0 && t->bos >= 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)t->bos);
	if (rc == 0 && t->eos >= 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)t->eos);
	if (rc == 0 && t->unk >= 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)t->unk);
	free(pieces);
	return rc;
}
