/* spa: the synthetic vocabularies spa-gen puts into its models (runtime/tokenizer_gen.c).
 *
 * SentencePiece ("llama"): English words and letter strings scored so that longer pieces win
 * (spa_tokenizer_write_synthetic). Byte-level BPE ("gpt2"): merges learned from a built-in
 * corpus cut into words by the chosen pre-tokenizer (spa_tokenizer_write_synthetic_bpe). Both
 * are deterministic: tests record what llama.cpp makes of them. */
#include "tokenizer_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spa/error.h"
#include "spa/gguf.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */
#define SPM_SPACE_LEN 3
/* Largest synthetic vocabulary: keeps its scores (length - index / 2^20) ordered by length. */
#define TOK_SYNTH_MAX_VOCAB (1u << 19)

/* ---- synthetic vocabulary ----
 *
 * Order (a longer vocabulary extends a shorter one; every piece comes after its prefixes, so
 * the set stays reachable by pairwise merges at any size):
 *   0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>,
 *   "▁", the printable ASCII characters, "▁" + each letter,
 *   common English words as "▁word", each after its missing prefixes ("▁w", "▁wo", "▁wor"),
 *   then for k = 2, 3, ...: every lowercase k-letter string, then "▁" + each of them.
 * Scores: characters - index / 2^20, so longer pieces win and earlier ones break ties. */

static const char *const synth_words[] = {
	"the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
	"are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
	"had", "by", "not", "word", "but", "what", "some", "we", "can", "out", "other", "were",
	"all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which",
	"do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write",
	"would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has",
	"look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most",
	"people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down",
	"side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place",
	"made", "live", "where", "after", "back", "little", "only", "round", "man", "year",
	"came", "show", "every", "good", "me", "give", "our", "under", "name", "very", "through",
	"just", "form", "sentence", "great", "think", "say", "help", "low", "line", "differ",
	"turn", "cause", "much", "mean", "before", "move", "right", "boy", "old", "too", "same",
	"tell", "does", "set", "three", "want", "air", "well", "also", "play", "small", "end",
	"put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here",
	"must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went",
	"light", "kind", "off", "need", "house", "picture", "try", "us", "again", "animal",
	"point", "mother", "world", "near", "build", "self", "earth", "father", "head", "stand",
	"own", "page", "should", "country", "found", "answer", "school", "grow", "study", "still",
	"learn", "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye",
	"never", "last", "let", "thought", "city", "tree", "cross", "farm", "hard", "start",
	"might", "story", "saw", "far", "sea", "draw", "left", "late", "run", "while", "press",
	"close", "night", "real", "life", "few", "north", "open", "seem", "together", "next",
	"white", "children", "begin", "got", "walk", "example", "ease", "paper", "group",
	"always", "music", "those", "both", "mark", "often", "letter", "until", "mile", "river",
	"car", "feet", "care", "second", "book", "carry", "took", "science", "eat", "room",
	"friend", "began", "idea", "fish", "mountain", "stop", "once", "upon", "base", "hear",
	"horse", "cut", "sure", "watch", "color", "face", "wood", "main", "enough", "plain",
	"girl", "usual", "young", "ready", "above", "ever", "red", "list", "though", "feel",
	"talk", "bird", "soon", "body", "dog", "family", "direct", "pose", "leave", "song",
	"measure", "door", "product", "black", "short", "numeral", "class", "wind", "question",
	"happen", "complete", "ship", "area", "half", "rock", "order", "fire", "south", "problem",
	"piece", "told", "knew", "pass", "since", "top", "whole", "king", "space", "heard",
	"best", "hour", "better", "true", "during", "hundred", "five", "remember", "step",
	"early", "hold", "west", "ground", "interest", "reach", "fast", "verb", "sing", "listen",
	"six", "table", "travel", "less", "morning", "ten", "simple", "several", "toward", "war",
	"lay", "against", "pattern", "slow", "center", "love", "person", "money", "serve",
	"appear", "road", "map", "rain", "rule", "govern", "pull", "cold", "notice", "voice",
	"unit", "power", "town", "fine", "certain", "fly", "fall", "lead", "cry", "dark",
	"machine", "note", "wait", "plan", "figure", "star", "box", "noun", "field", "rest",
	"correct", "able", "pound", "done", "beauty", "drive", "stood", "contain", "front",
	"teach", "week", "final", "gave", "green", "oh", "quick", "develop", "ocean", "warm",
	"free", "minute", "strong", "special", "mind", "behind", "clear", "tail", "produce",
	"fact", "street", "inch", "multiply", "nothing", "course", "stay", "wheel", "full",
	"force", "blue", "object", "decide", "surface", "deep", "moon", "island", "foot",
	"system", "busy", "test", "record", "boat", "common", "gold", "possible", "plane",
	"model", "edge", "cloud", "network", "token", "language", "The", "It", "In", "A", "He",
	"She", "They", "We", "This", "There", "Once",
};

struct synth {
	uint32_t cap, n;
	char *arena;
	size_t arena_len, arena_cap;
	uint32_t *off, *len;
	float *scores;
	int32_t *types;
	struct tok_map map;
};

static void synth_free(struct synth *s)
{
	free(s->arena);
	free(s->off);
	free(s->len);
	free(s->scores);
	free(s->types);
	free(s->map.slot);
}

static uint32_t utf8_count(const char *p, size_t n)
{
	uint32_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += ((unsigned char)p[i] & 0xc0) != 0x80;
	return c;
}

/* Append a piece unless present; 0 or -ENOMEM. A full vocabulary ignores further pieces. */
static int synth_add(struct synth *s, const char *p, size_t n, int32_t type)
{
	if (s->n == s->cap)
		return 0;
	uint32_t slot = tok_map_probe(&s->map, s->arena, s->off, s->len, p, n);
	if (s->map.slot[slot] >= 0)
		return 0;
	if (s->arena_len + n + 1 > s->arena_cap) {
		size_t cap = s->arena_cap ? s->arena_cap * 2 : 4096;
		while (cap < s->arena_len + n + 1)
			cap *= 2;
		char *a = realloc(s->arena, cap);
		if (!a)
			return -ENOMEM;
		s->arena = a;
		s->arena_cap = cap;
	}
	uint32_t id = s->n++;
	memcpy(s->arena + s->arena_len, p, n);
	s->arena[s->arena_len + n] = 0;
	s->off[id] = (uint32_t)s->arena_len;
	s->len[id] = (uint32_t)n;
	s->arena_len += n + 1;
	s->types[id] = type;
	s->scores[id] = type == TOK_NORMAL ?
		(float)utf8_count(p, n) - (float)id / (float)(1u << 20) : 0.0f;
	s->map.slot[slot] = (int32_t)id;
	return 0;
}

/* "▁" + word and, before it, each of its prefixes of two or more characters. */
static int synth_add_word(struct synth *s, const char *word)
{
	char buf[64];
	size_t wl = strlen(word);
	if (wl + SPM_SPACE_LEN > sizeof buf)
		return 0;
	memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
	memcpy(buf + SPM_SPACE_LEN, word, wl);
	for (size_t k = 1; k <= wl; k++) {
		int rc = synth_add(s, buf, SPM_SPACE_LEN + k, TOK_NORMAL);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int synth_build(struct synth *s, uint32_t n_vocab)
{
	char buf[32];
	int rc = -ENOMEM;

	memset(s, 0, sizeof *s);
	s->cap = n_vocab;
	s->off = malloc(n_vocab * sizeof *s->off);
	s->len = malloc(n_vocab * sizeof *s->len);
	s->scores = malloc(n_vocab * sizeof *s->scores);
	s->types = malloc(n_vocab * sizeof *s->types);
	if (!s->off || !s->len || !s->scores || !s->types || tok_map_init(&s->map, n_vocab) < 0)
		goto err;

	rc = synth_add(s, "<unk>", 5, TOK_UNKNOWN);
	rc |= synth_add(s, "<s>", 3, TOK_CONTROL);
	rc |= synth_add(s, "</s>", 4, TOK_CONTROL);
	for (int b = 0; b < 256; b++) {
		snprintf(buf, sizeof buf, "<0x%02X>", b);
		rc |= synth_add(s, buf, 6, TOK_BYTE);
	}
	/* "▁" first among the pieces: without it a space would decode as its three raw bytes. */
	rc |= synth_add(s, SPM_SPACE, SPM_SPACE_LEN, TOK_NORMAL);
	for (char c = '!'; c <= '~'; c++)
		rc |= synth_add(s, &c, 1, TOK_NORMAL);
	for (int cs = 0; cs < 2; cs++) {
		for (char c = 'a'; c <= 'z'; c++) {
			memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
			buf[SPM_SPACE_LEN] = cs ? (char)(c - 'a' + 'A') : c;
			rc |= synth_add(s, buf, SPM_SPACE_LEN + 1, TOK_NORMAL);
		}
	}
	if (rc < 0)
		goto err;
	for (size_t i = 0; i < sizeof synth_words / sizeof synth_words[0]; i++)
		if ((rc = synth_add_word(s, synth_words[i])) < 0)
			goto err;
	/* Letter strings of growing length: plain, then "▁"-prefixed. 26^k outgrows any allowed
	 * n_vocab long before k reaches 8. */
	for (uint32_t k = 2; s->n < s->cap && k < 8; k++) {
		for (int sp = 0; sp < 2 && s->n < s->cap; sp++) {
			uint32_t pre = sp ? SPM_SPACE_LEN : 0;
			char idx[8] = {0};
			memcpy(buf, SPM_SPACE, SPM_SPACE_LEN);
			while (s->n < s->cap) {
				for (uint32_t j = 0; j < k; j++)
					buf[pre + j] = (char)('a' + idx[j]);
				if ((rc = synth_add(s, buf, pre + k, TOK_NORMAL)) < 0)
					goto err;
				int32_t j = (int32_t)k - 1;
				while (j >= 0 && ++idx[j] == 26)
					idx[j--] = 0;
				if (j < 0)
					break;
			}
		}
	}
	if (s->n == s->cap)
		return 0;
	rc = -SPA_EUNSUPPORTED; /* unreachable below TOK_SYNTH_MAX_VOCAB */
err:
	synth_free(s);
	return rc;
}

int spa_tokenizer_write_synthetic(struct spa_gguf_writer *w, uint32_t n_vocab)
{
	struct synth s;
	if (n_vocab < 300 || n_vocab > TOK_SYNTH_MAX_VOCAB)
		return -SPA_EUSAGE;
	int rc = synth_build(&s, n_vocab);
	if (rc < 0)
		return rc;
	const char **pieces = malloc(n_vocab * sizeof *pieces);
	rc = -ENOMEM;
	if (pieces) {
		for (uint32_t i = 0; i < n_vocab; i++)
			pieces[i] = s.arena + s.off[i];
		rc = spm_write_keys(w, pieces, s.scores, s.types, n_vocab, 0, 1, 2);
		free(pieces);
	}
	synth_free(&s);
	return rc;
}


/* ---- synthetic byte-level BPE vocabulary ----
 *
 * Order: the 256 byte characters as GPT-2's vocabulary has them (bytes_to_unicode's order:
 * '!'..'~', '¡'..'¬', '®'..'ÿ', then the bytes that map above U+00FF), then one token per
 * learned merge: the corpus below, cut into words by the pre-tokenizer, merged by standard BPE
 * training (the most frequent adjacent pair, counted over all words; ties to the pair of lower
 * ids) while some pair occurs twice; then built merges: "Ġ" + each letter, then for k = 2, 3,
 * ...: each lowercase k-letter string (its first k-1 letters + its last), then "Ġ" + each; and
 * last the family's control and user-defined tokens. */

/* Mixed text that exercises what pre-tokenizers tell apart: contractions in both cases,
 * numbers of all lengths, runs of spaces, tabs and newlines, punctuation runs, code, accented
 * Latin, Greek, Cyrillic, CJK, Hangul, emoji. */
static const char bpe_corpus[] =
	"The quick brown fox jumps over the lazy dog. The dog didn't care; it's lazy and "
	"it'll stay that way. We're sure you've seen it, I'm told, and they'd agree.\n"
	"IT'S LOUD! WE'RE HERE, YOU'VE GOT MAIL, I'M OUT, THEY'LL KNOW, SHE'D SAY. Don'T "
	"shout: It'S fine, We'Re done.\n"
	"Once upon a time there was a little model that wanted to talk. It read the "
	"whole book, then the other book, and then it read them again and again.\n"
	"In 1969, 3 men flew 384400 km to the Moon; 12 of 24 walked there. Call 555-0123 or "
	"+1 (800) 123-4567 before 10:30 on 2024-02-29. Pi is 3.14159265, e is 2.71828, "
	"and 1000000 is a million; 7, 42, 256, 4096, 65536, 1234567890.\n"
	"    four spaces\ttab\t\ttabs\n\n\nthree newlines  two spaces   three spaces\r\n"
	"int main(void) {\n\tprintf(\"hello, world\\n\");\n\treturn 0;\n}\n"
	"def f(x, y=2):\n    return [i ** 2 for i in range(x) if i % y == 0]  # squares\n"
	"for (size_t i = 0; i < n; i++) a[i] += b[i] * 3;   // a += b*3\n"
	"{\"name\": \"spa\", \"tokens\": [1, 2, 3], \"ok\": true} <html><p>x &amp; y</p></html> "
	"https://example.org/a/b?c=d&e=f#g email@example.com ===> !!! ??? ... --- ***\n"
	"Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e, na\xc3\xafve fa\xc3\xa7" "ade, "
	"\xc3\xa0 la carte. M\xc3\xbcller gr\xc3\xbc\xc3\x9f" "t die Stra\xc3\x9f" "e, "
	"\xc3\xa4rgerlich \xc3\xb6" "fter \xc3\xbc" "ber. Ni\xc3\xb1o, a\xc3\xb1o, "
	"se\xc3\xb1or, \xc2\xbf" "c\xc3\xb3mo est\xc3\xa1s? \xc2\xa1Ol\xc3\xa9! "
	"\xc5\x81\xc3\xb3" "d\xc5\xba, za\xc5\xbc\xc3\xb3\xc5\x82\xc4\x87 g\xc4\x99\xc5\x9b"
	"l\xc4\x85 ja\xc5\xba\xc5\x84. Ti\xe1\xba\xbfng Vi\xe1\xbb\x87t.\n"
	"\xce\x93\xce\xb5\xce\xb9\xce\xac \xcf\x83\xce\xbf\xcf\x85 \xce\xba\xcf\x8c\xcf\x83"
	"\xce\xbc\xce\xb5. \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xd0\xbc\xd0\xb8"
	"\xd1\x80! \xd0\x9a\xd0\xb0\xd0\xba \xd0\xb4\xd0\xb5\xd0\xbb\xd0\xb0?\n"
	"\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xef\xbc\x81"
	"\xe6\x88\x91\xe4\xbb\xac\xe5\x9c\xa8\xe5\xad\xa6\xe4\xb9\xa0\xe4\xb8\xad\xe6\x96"
	"\x87\xe3\x80\x82\xe4\xbb\x8a\xe5\xa4\xa9\xe5\xa4\xa9\xe6\xb0\x94\xe5\xbe\x88\xe5"
	"\xa5\xbd\xe3\x80\x82 \xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf"
	"\xe3\x80\x81\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82\xe3\x82\xab\xe3\x82\xbf\xe3\x82"
	"\xab\xe3\x83\x8a\xe3\x81\xa8\xe3\x81\xb2\xe3\x82\x89\xe3\x81\x8c\xe3\x81\xaa\xe3"
	"\x80\x82 \xec\x95\x88\xeb\x85\x95\xed\x95\x98\xec\x84\xb8\xec\x9a\x94, \xec\x84"
	"\xb8\xea\xb3\x84! \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4\xeb\x8f\x84 \xec\x9e\x88"
	"\xec\x96\xb4\xec\x9a\x94.\n"
	"Emoji: \xf0\x9f\x98\x80 \xf0\x9f\x98\x82\xf0\x9f\x98\x82 \xf0\x9f\x91\x8d\xf0\x9f"
	"\x8f\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 "
	"\xf0\x9f\x87\xab\xf0\x9f\x87\xb7 \xe2\x9d\xa4\xef\xb8\x8f \xe2\x9c\x85 \xf0\x9f\x9a"
	"\x80\xf0\x9f\x9a\x80\xf0\x9f\x9a\x80 done.\n"
	"The end. The end, again: the model, the tokens, the words, the merges.\n";

/* Control and user-defined tokens of a family of pre-tokenizers (last in the vocabulary). */
struct bpe_family {
	const char *pre[8];
	const char *control[6];
	const char *user[3];
	int bos, eos; /* indices into control */
	int add_bos;  /* -1: leave the key out (the pre-tokenizer's default) */
};

static const struct bpe_family bpe_families[] = {
	{ { "llama3", "llama-v3", "llama-bpe", "falcon3", "tekken" },
	  { "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
	    "<|eot_id|>" },
	  { "<|python_tag|>", "<tool>" }, 0, 1, -1 },
	{ { "qwen2", "deepseek-r1-qwen", "megrez", "stablelm2" },
	  { "<|endoftext|>", "<|im_start|>", "<|im_end|>" },
	  { "<tool_call>", "</tool_call>" }, 0, 0, false },
	{ { "deepseek-llm", "deepseek-coder" },
	  { "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
	    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" },
	  { "<\xef\xbd\x9c" "User\xef\xbd\x9c>", "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>" }, 0,
	  1, true },
	{ { NULL }, /* everything else: GPT-2's single end-of-text token */
	  { "<|endoftext|>", "<|padding|>" },
	  { "<fim_prefix>", "[SPA]" }, 0, 0, -1 },
};

static const struct bpe_family *bpe_family_of(const char *pre)
{
	size_t n = sizeof bpe_families / sizeof bpe_families[0];
	for (size_t i = 0; i + 1 < n; i++)
		for (int k = 0; k < 8 && bpe_families[i].pre[k]; k++)
			if (strcmp(bpe_families[i].pre[k], pre) == 0)
				return &bpe_families[i];
	return &bpe_families[n - 1];
}

/* The vocabulary being built: token bytes (not yet spelled in the alphabet) and merges. */
struct btrain {
	uint32_t cap, n;            /* tokens */
	char *arena;
	size_t arena_len, arena_cap;
	uint32_t *off, *len;
	struct tok_map map;
	int32_t (*merge)[2];        /* [cap] left, right ids */
	uint32_t n_merges;
	/* the corpus: distinct words as token ids, with counts */
	int32_t *ids;               /* all words, concatenated */
	uint32_t *w_off, *w_len, *w_count, n_words;
	size_t n_ids, ids_cap;
	uint32_t words_cap;
	struct tok_map wmap;        /* words by their bytes, over words_arena */
	char *warena;
	size_t warena_len, warena_cap;
	uint32_t *wa_off, *wa_len;
};

static void btrain_free(struct btrain *b)
{
	free(b->arena);
	free(b->off);
	free(b->len);
	free(b->map.slot);
	free(b->merge);
	free(b->ids);
	free(b->w_off);
	free(b->w_len);
	free(b->w_count);
	free(b->wmap.slot);
	free(b->warena);
	free(b->wa_off);
	free(b->wa_len);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t c = *cap ? *cap : 256;
	while (c < need)
		c *= 2;
	void *q = realloc(*p, c * elem);
	if (!q)
		return -ENOMEM;
	*p = q;
	*cap = c;
	return 0;
}

/* Id of the token with bytes s[0..n): existing, or appended (-1 when the vocabulary is
 * full, -ENOMEM as -2). */
static int32_t btrain_token(struct btrain *b, const char *s, size_t n, bool add)
{
	uint32_t slot = tok_map_probe(&b->map, b->arena, b->off, b->len, s, n);
	if (b->map.slot[slot] >= 0 || !add)
		return b->map.slot[slot];
	if (b->n == b->cap)
		return -1;
	if (grow((void **)&b->arena, &b->arena_cap, b->arena_len + n, 1) < 0)
		return -2;
	uint32_t id = b->n++;
	memcpy(b->arena + b->arena_len, s, n);
	b->off[id] = (uint32_t)b->arena_len;
	b->len[id] = (uint32_t)n;
	b->arena_len += n;
	b->map.slot[slot] = (int32_t)id;
	return (int32_t)id;
}

static int btrain_word(void *ctx, const char *w, size_t n)
{
	struct btrain *b = ctx;
	uint32_t slot = tok_map_probe(&b->wmap, b->warena, b->wa_off, b->wa_len, w, n);
	if (b->wmap.slot[slot] >= 0) {
		b->w_count[b->wmap.slot[slot]]++;
		return 0;
	}
	if (b->n_words == b->words_cap)
		return -ENOMEM; /* sized for the corpus: cannot happen */
	if (grow((void **)&b->warena, &b->warena_cap, b->warena_len + n, 1) < 0 ||
	    grow((void **)&b->ids, &b->ids_cap, b->n_ids + n, sizeof *b->ids) < 0)
		return -ENOMEM;
	uint32_t k = b->n_words++;
	memcpy(b->warena + b->warena_len, w, n);
	b->wa_off[k] = (uint32_t)b->warena_len;
	b->wa_len[k] = (uint32_t)n;
	b->warena_len += n;
	b->wmap.slot[slot] = (int32_t)k;
	b->w_off[k] = (uint32_t)b->n_ids;
	b->w_len[k] = (uint32_t)n;
	b->w_count[k] = 1;
	for (size_t i = 0; i < n; i++) /* byte b is token bpe_order[b] */
		b->ids[b->n_ids++] = btrain_token(b, w + i, 1, false);
	return 0;
}

struct pcount {
	uint64_t key; /* l << 32 | r; UINT64_MAX: empty */
	uint32_t count;
};

/* Standard BPE training over the corpus words until no pair occurs twice or the vocabulary
 * has limit tokens. */
static int btrain_learn(struct btrain *b, uint32_t limit)
{
	uint32_t cap = 1;
	while (cap < 4 * (b->n_ids + 1))
		cap <<= 1;
	struct pcount *pc = malloc(cap * sizeof *pc);
	if (!pc)
		return -ENOMEM;
	while (b->n < limit) {
		for (uint32_t i = 0; i < cap; i++)
			pc[i].key = UINT64_MAX;
		uint64_t best = UINT64_MAX;
		uint32_t best_n = 0;
		/* Counts only grow, so the largest seen on the way is the largest at the end. */
		for (uint32_t w = 0; w < b->n_words; w++) {
			const int32_t *x = b->ids + b->w_off[w];
			for (uint32_t i = 0; i + 1 < b->w_len[w]; i++) {
				uint64_t key = (uint64_t)(uint32_t)x[i] << 32 | (uint32_t)x[i + 1];
				uint32_t s = (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 40) & (cap - 1);
				while (pc[s].key != UINT64_MAX && pc[s].key != key)
					s = (s + 1) & (cap - 1);
				if (pc[s].key == UINT64_MAX)
					pc[s] = (struct pcount){ key, 0 };
				pc[s].count += b->w_count[w];
				if (pc[s].count > best_n || (pc[s].count == best_n && key < best)) {
					best_n = pc[s].count;
					best = key;
				}
			}
		}
		if (best_n < 2)
			break;
		int32_t l = (int32_t)(best >> 32), r = (int32_t)(best & 0xffffffffu);
		char buf[512];
		size_t ll = b->len[l], rl = b->len[r];
		if (ll + rl > sizeof buf)
			break; /* words that long do not occur in the corpus */
		memcpy(buf, b->arena + b->off[l], ll);
		memcpy(buf + ll, b->arena + b->off[r], rl);
		int32_t m = btrain_token(b, buf, ll + rl, true);
		if (m == -2) {
			free(pc);
			return -ENOMEM;
		}
		b->merge[b->n_merges][0] = l;
		b->merge[b->n_merges][1] = r;
		b->n_merges++;
		for (uint32_t w = 0; w < b->n_words; w++) {
			int32_t *x = b->ids + b->w_off[w];
			uint32_t o = 0;
			for (uint32_t i = 0; i < b->w_len[w]; i++) {
				if (i + 1 < b->w_len[w] && x[i] == l && x[i + 1] == r) {
					x[o++] = m;
					i++;
				} else {
					x[o++] = x[i];
				}
			}
			b->w_len[w] = o;
		}
	}
	free(pc);
	return 0;
}

/* Add s as the merge (s minus its last byte, its last byte) unless s is a token. */
static int btrain_build(struct btrain *b, const char *s, size_t n)
{
	if (btrain_token(b, s, n, false) >= 0)
		return 0;
	int32_t l = btrain_token(b, s, n - 1, false), r = btrain_token(b, s + n - 1, 1, false);
	if (l < 0 || r < 0)
		return 0; /* its prefix did not fit: the vocabulary is full anyway */
	int32_t m = btrain_token(b, s, n, true);
	if (m == -2)
		return -ENOMEM;
	if (m < 0)
		return 0;
	b->merge[b->n_merges][0] = l;
	b->merge[b->n_merges][1] = r;
	b->n_merges++;
	return 0;
}

/* The bytes s[0..n) spelled in the byte alphabet, NUL-terminated, appended to *arena. */
static int spell(char **arena, size_t *len, size_t *cap, const char *s, size_t n,
		 uint32_t *off)
{
	if (grow((void **)arena, cap, *len + 2 * n + 1, 1) < 0)
		return -ENOMEM;
	*off = (uint32_t)*len;
	for (size_t i = 0; i < n; i++)
		*len += tok_utf8_put(*arena + *len, bpe_byte_cpt((uint8_t)s[i]));
	(*arena)[(*len)++] = 0;
	return 0;
}

int spa_tokenizer_write_synthetic_bpe(struct spa_gguf_writer *w, const char *pre_name,
				      uint32_t n_vocab, struct spa_errbuf *err)
{
	const struct bpe_pre *pre = bpe_pre_find(pre_name);
	if (!pre)
		return spa_err(err, -SPA_EUSAGE, "pre-tokenizer '%s' is not one spa knows: it knows %s",
			       pre_name ? pre_name : "(none)", bpe_pre_names());
	if (n_vocab < 512 || n_vocab > TOK_SYNTH_MAX_VOCAB)
		return spa_err(err, -SPA_EUSAGE, "a synthetic BPE vocabulary has 512 to %u tokens, "
			       "not %u", TOK_SYNTH_MAX_VOCAB, n_vocab);
	const struct bpe_family *fam = bpe_family_of(pre_name);
	uint32_t n_ctl = 0, n_user = 0;
	while (n_ctl < 6 && fam->control[n_ctl])
		n_ctl++;
	while (n_user < 3 && fam->user[n_user])
		n_user++;
	uint32_t n_plain = n_vocab - n_ctl - n_user;

	struct btrain b;
	struct bpe_splitter *sp = NULL;
	char *spelled = NULL, **pieces = NULL, **merges = NULL;
	uint32_t *sp_off = NULL, *mg_off = NULL;
	int32_t *types = NULL;
	size_t sp_len = 0, sp_cap = 0;
	int rc = -ENOMEM;
	memset(&b, 0, sizeof b);
	b.cap = n_plain;
	b.words_cap = sizeof bpe_corpus;
	b.off = malloc(n_plain * sizeof *b.off);
	b.len = malloc(n_plain * sizeof *b.len);
	b.merge = malloc(n_plain * sizeof *b.merge);
	b.w_off = malloc(b.words_cap * sizeof *b.w_off);
	b.w_len = malloc(b.words_cap * sizeof *b.w_len);
	b.w_count = malloc(b.words_cap * sizeof *b.w_count);
	b.wa_off = malloc(b.words_cap * sizeof *b.wa_off);
	b.wa_len = malloc(b.words_cap * sizeof *b.wa_len);
	if (!b.off || !b.len || !b.merge || !b.w_off || !b.w_len || !b.w_count || !b.wa_off ||
	    !b.wa_len || tok_map_init(&b.map, n_plain) < 0 ||
	    tok_map_init(&b.wmap, b.words_cap) < 0)
		goto out;

	/* The bytes, in GPT-2's order: those that stand for themselves first. */
	for (int pass = 0; pass < 2; pass++) {
		for (int c = 0; c < 256; c++) {
			char ch = (char)c;
			if ((bpe_byte_cpt((uint8_t)c) == (uint32_t)c) == (pass == 0) &&
			    btrain_token(&b, &ch, 1, true) < 0)
				goto out;
		}
	}
	if ((rc = bpe_splitter_create(&sp, pre, err)) < 0)
		goto out;
	if ((rc = bpe_split(sp, bpe_corpus, sizeof bpe_corpus - 1, btrain_word, &b)) < 0 ||
	    (rc = btrain_learn(&b, n_plain)) < 0)
		goto out;
	char s[16];
	for (char c = 'a'; c <= 'z' && b.n < b.cap; c++) {
		s[0] = ' ';
		s[1] = c;
		if ((rc = btrain_build(&b, s, 2)) < 0)
			goto out;
	}
	for (uint32_t k = 2; b.n < b.cap && k < 8; k++) {
		for (int spc = 0; spc < 2 && b.n < b.cap; spc++) {
			char idx[8] = {0};
			s[0] = ' ';
			while (b.n < b.cap) {
				for (uint32_t j = 0; j < k; j++)
					s[spc + j] = (char)('a' + idx[j]);
				if ((rc = btrain_build(&b, s, spc + k)) < 0)
					goto out;
				int32_t j = (int32_t)k - 1;
				while (j >= 0 && ++idx[j] == 26)
					idx[j--] = 0;
				if (j < 0)
					break;
			}
		}
	}
	rc = -ENOMEM;
	if (b.n != b.cap)
		goto out; /* unreachable: 26^7 letter strings outnumber any allowed vocabulary */

	pieces = malloc(n_vocab * sizeof *pieces);
	sp_off = malloc(n_vocab * sizeof *sp_off);
	types = malloc(n_vocab * sizeof *types);
	merges = malloc((b.n_merges + 1) * sizeof *merges);
	mg_off = malloc((b.n_merges + 1) * sizeof *mg_off);
	if (!pieces || !sp_off || !types || !merges || !mg_off)
		goto out;
	for (uint32_t i = 0; i < b.n; i++) {
		if (spell(&spelled, &sp_len, &sp_cap, b.arena + b.off[i], b.len[i], &sp_off[i]) < 0)
			goto out;
		types[i] = TOK_NORMAL;
	}
	for (uint32_t i = 0; i < b.n_merges; i++) {
		int32_t l = b.merge[i][0], r = b.merge[i][1];
		size_t a = sp_len;
		uint32_t o1, o2;
		if (spell(&spelled, &sp_len, &sp_cap, b.arena + b.off[l], b.len[l], &o1) < 0 ||
		    spell(&spelled, &sp_len, &sp_cap, b.arena + b.off[r], b.len[r], &o2) < 0)
			goto out;
		spelled[o2 - 1] = ' '; /* "A\0B\0" -> "A B\0" */
		mg_off[i] = (uint32_t)a;
	}
	for (uint32_t i = 0; i < n_ctl + n_user; i++) {
		const char *x = i < n_ctl ? fam->control[i] : fam->user[i - n_ctl];
		size_t xl = strlen(x);
		if (grow((void **)&spelled, &sp_cap, sp_len + xl + 1, 1) < 0)
			goto out;
		sp_off[n_plain + i] = (uint32_t)sp_len;
		memcpy(spelled + sp_len, x, xl + 1);
		sp_len += xl + 1;
		types[n_plain + i] = i < n_ctl ? TOK_CONTROL : TOK_USER;
	}
	for (uint32_t i = 0; i < n_vocab; i++)
		pieces[i] = spelled + sp_off[i];
	for (uint32_t i = 0; i < b.n_merges; i++)
		merges[i] = spelled + mg_off[i];

	rc = spa_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
	if (rc == 0)
		rc = spa_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre_name);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
						 (const char *const *)pieces, n_vocab);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", SPA_GGUF_INT32, types,
					     n_vocab);
	if (rc == 0)
		rc = spa_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges",
						 (const char *const *)merges, b.n_merges);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id",
					     n_plain + (uint32_t)fam->bos);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id",
					     n_plain + (uint32_t)fam->eos);
	if (rc == 0)
		rc = spa_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id",
					     n_plain + (uint32_t)fam->eos);
	if (rc == 0 && fam->add_bos >= 0)
		rc = spa_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", fam->add_bos);
out:
	bpe_splitter_destroy(sp);
	btrain_free(&b);
	free(spelled);
	free(pieces);
	free(sp_off);
	free(types);
	free(merges);
	free(mg_off);
	return rc;
}
