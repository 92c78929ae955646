/* Key files (runtime/keys.c) and spa-keygen: written, read back to the same keys, and every
 * malformed or unsafe file refused with a message naming the file. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "spa/keys.h"
#include "testutil.h"

static void path_of(char *out, size_t n, const char *name)
{
	snprintf(out, n, "%s/%s", tu_tmpdir(), name);
}

static void put(const char *path, const char *text, mode_t mode)
{
	unlink(path);
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

Test(keys, written_keys_read_back_the_same)
{
	char name[512], p[600];
	for (int i = 0; i < 5; i++) {
		snprintf(name, sizeof name, "%s/k%d", tu_tmpdir(), i);
		struct spa_key k, back;
		cr_assert_eq(spa_key_generate(&k), 0);
		struct spa_errbuf e = { "" };
		cr_assert_eq(spa_key_write(&k, name, &e), 0, "%s", e.msg);
		snprintf(p, sizeof p, "%s.key", name);
		struct stat st;
		cr_assert_eq(stat(p, &st), 0);
		cr_assert_eq(st.st_mode & 0777, 0600, "the secret key file is mode %o", st.st_mode);
		cr_assert_eq(spa_key_load(&back, p, &e), 0, "%s", e.msg);
		cr_assert_eq(memcmp(back.sk, k.sk, 32), 0);
		cr_assert_eq(memcmp(back.pk, k.pk, 32), 0, "the public key is derived again");
		uint8_t pub[32];
		snprintf(p, sizeof p, "%s.pub", name);
		cr_assert_eq(spa_pub_load(pub, p, &e), 0, "%s", e.msg);
		cr_assert_eq(memcmp(pub, k.pk, 32), 0);
		/* never overwritten */
		cr_assert_lt(spa_key_write(&k, name, &e), 0);
		cr_assert(strstr(e.msg, "exists"), "%s", e.msg);
	}
}

Test(keys, an_allow_list_takes_several_files_and_lines)
{
	char a[512], b[512], list[1100];
	path_of(a, sizeof a, "allow-a.pub");
	path_of(b, sizeof b, "allow-b.pub");
	uint8_t want[3][32];
	char line[3][128], b64[45];
	for (int i = 0; i < 3; i++) {
		struct spa_key k;
		cr_assert_eq(spa_key_generate(&k), 0);
		memcpy(want[i], k.pk, 32);
		spa_key_b64(k.pk, b64);
		snprintf(line[i], sizeof line[i], "spa-x25519-public %s edge%d\n", b64, i);
	}
	char text[600];
	snprintf(text, sizeof text, "# two edges\n%s\n%s", line[0], line[1]);
	put(a, text, 0644);
	put(b, line[2], 0644);
	snprintf(list, sizeof list, "%s,%s", a, b);
	uint8_t *keys = NULL;
	size_t n = 0;
	struct spa_errbuf e = { "" };
	cr_assert_eq(spa_pub_load_list(&keys, &n, list, &e), 0, "%s", e.msg);
	cr_assert_eq(n, 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(memcmp(keys + 32 * i, want[i], 32), 0);
	free(keys);
}

Test(keys, bad_files_are_refused_with_the_reason)
{
	char p[512];
	path_of(p, sizeof p, "bad.key");
	struct spa_key k;
	struct spa_errbuf e = { "" };
	static const struct {
		const char *text, *word;
		mode_t mode;
	} cases[] = {
		{ "spa-x25519-secret AAAA\n", "base64", 0600 },
		{ "spa-x25519-public uj6Geid3HdntEyX2v7sF9jVhyQr96MaIx6+jVQ65CFs=\n", "secret", 0600 },
		{ "hello\n", "not an spa", 0600 },
		{ "\n# nothing\n", "no key", 0600 },
		{ "spa-x25519-secret uj6Geid3HdntEyX2v7sF9jVhyQr96MaIx6+jVQ65CFs=\n", "others may read",
		  0644 },
		{ "spa-x25519-secret uj6Geid3HdntEyX2v7sF9jVhyQr96MaIx6+jVQ65CF!\n", "base64", 0600 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		put(p, cases[i].text, cases[i].mode);
		e.msg[0] = 0;
		cr_assert_lt(spa_key_load(&k, p, &e), 0, "case %zu was taken", i);
		cr_assert(strstr(e.msg, cases[i].word) && strstr(e.msg, p),
			  "case %zu: \"%s\" lacks \"%s\" or the path", i, e.msg, cases[i].word);
	}
	cr_assert_lt(spa_key_load(&k, "/nonexistent/x.key", &e), 0);
	cr_assert(strstr(e.msg, "/nonexistent/x.key"), "%s", e.msg);
	uint8_t pk[32];
	put(p, "spa-x25519-secret uj6Geid3HdntEyX2v7sF9jVhyQr96MaIx6+jVQ65CFs=\n", 0600);
	cr_assert_lt(spa_pub_load(pk, p, &e), 0, "a secret key taken as a public one");
	uint8_t *keys = NULL;
	size_t n = 0;
	cr_assert_lt(spa_pub_load_list(&keys, &n, "", &e), 0);
	free(keys);
}

Test(keys, spa_keygen_makes_the_two_files)
{
	char name[512], cmd[2048], out[1024], p[600];
	snprintf(name, sizeof name, "%s/gen", tu_tmpdir());
	snprintf(cmd, sizeof cmd, "%s -o %s", tu_program("spa-keygen"), name);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0, "%s", out);
	struct spa_key k;
	uint8_t pub[32];
	struct spa_errbuf e = { "" };
	snprintf(p, sizeof p, "%s.key", name);
	cr_assert_eq(spa_key_load(&k, p, &e), 0, "%s", e.msg);
	snprintf(p, sizeof p, "%s.pub", name);
	cr_assert_eq(spa_pub_load(pub, p, &e), 0, "%s", e.msg);
	cr_assert_eq(memcmp(pub, k.pk, 32), 0);
	char b64[45];
	spa_key_b64(pub, b64);
	cr_assert(strstr(out, b64), "spa-keygen prints the public key: %s", out);
	/* a second run refuses to overwrite */
	cr_assert_neq(tu_run(cmd, out, sizeof out, 0), 0);
}
