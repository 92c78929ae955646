/* Static X25519 key files (include/spa/keys.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "spa/keys.h"

#define SECRET_TAG "spa-x25519-secret"
#define PUBLIC_TAG "spa-x25519-public"
#define B64_LEN 44 /* 32 bytes, standard base64 with padding */

int spa_crypto_init(void)
{
	/* sodium_init is thread-safe and returns 1 when already done */
	return sodium_init() < 0 ? -SPA_EUNSUPPORTED : 0;
}

int spa_key_generate(struct spa_key *k)
{
	int rc = spa_crypto_init();
	if (rc)
		return rc;
	randombytes_buf(k->sk, sizeof k->sk);
	return crypto_scalarmult_curve25519_base(k->pk, k->sk) ? -SPA_EUNSUPPORTED : 0;
}

void spa_key_b64(const uint8_t pk[SPA_KEY_SIZE], char out[45])
{
	sodium_bin2base64(out, B64_LEN + 1, pk, SPA_KEY_SIZE, sodium_base64_VARIANT_ORIGINAL);
}

static int write_file(const char *path, mode_t mode, const char *text, struct spa_errbuf *err)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return spa_err(err, -errno, "%s: cannot create it: %s%s", path, strerror(errno),
			       errno == EEXIST ? " (remove it first, or pick another name)" : "");
	size_t n = strlen(text);
	ssize_t w = write(fd, text, n);
	int e = errno;
	if (close(fd) || w != (ssize_t)n) {
		unlink(path);
		return spa_err(err, -(e ? e : EIO), "%s: cannot write it: %s", path,
			       strerror(e ? e : EIO));
	}
	return 0;
}

int spa_key_write(const struct spa_key *k, const char *name, struct spa_errbuf *err)
{
	char path[4096], line[256], b64[B64_LEN + 1];
	const char *base = strrchr(name, '/');
	base = base ? base + 1 : name;
	if (!*base || strlen(name) > sizeof path - 8)
		return spa_err(err, -SPA_EUSAGE, "key name \"%s\" is empty or too long", name);
	int rc = spa_crypto_init();
	if (rc)
		return spa_err(err, rc, "libsodium could not start");
	snprintf(path, sizeof path, "%s.key", name);
	sodium_bin2base64(b64, sizeof b64, k->sk, SPA_KEY_SIZE, sodium_base64_VARIANT_ORIGINAL);
	snprintf(line, sizeof line, SECRET_TAG " %s\n", b64);
	rc = write_file(path, 0600, line, err);
	sodium_memzero(line, sizeof line);
	sodium_memzero(b64, sizeof b64);
	if (rc)
		return rc;
	snprintf(path, sizeof path, "%s.pub", name);
	spa_key_b64(k->pk, b64);
	snprintf(line, sizeof line, PUBLIC_TAG " %s %s\n", b64, base);
	if ((rc = write_file(path, 0644, line, err))) {
		snprintf(path, sizeof path, "%s.key", name);
		unlink(path);
	}
	return rc;
}

/* Read up to cap - 1 bytes of path into buf (NUL-terminated). */
static int read_small(const char *path, char *buf, size_t cap, struct stat *st,
		      struct spa_errbuf *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return spa_err(err, -errno, "%s: cannot open it: %s", path, strerror(errno));
	if (fstat(fd, st)) {
		int e = errno;
		close(fd);
		return spa_err(err, -e, "%s: cannot stat it: %s", path, strerror(e));
	}
	ssize_t n = read(fd, buf, cap - 1);
	int e = errno;
	close(fd);
	if (n < 0)
		return spa_err(err, -e, "%s: cannot read it: %s", path, strerror(e));
	buf[n] = 0;
	if ((size_t)n == cap - 1)
		return spa_err(err, -SPA_EUSAGE, "%s: longer than a key file can be (%zu bytes "
			       "read): is it the right file?", path, cap - 1);
	return 0;
}

/* Parse "TAG BASE64[ comment]" at *s (one line; advances *s past it). 1 parsed, 0 a blank or
 * comment line, or a negative code with err filled. */
static int parse_line(const char **s, const char *tag, uint8_t key[SPA_KEY_SIZE],
		      const char *path, int line_no, struct spa_errbuf *err)
{
	const char *p = *s, *end = strchr(p, '\n');
	if (!end)
		end = p + strlen(p);
	*s = *end ? end + 1 : end;
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
		p++;
	if (p == end || *p == '#')
		return 0;
	size_t tl = strlen(tag);
	if ((size_t)(end - p) < tl + 1 || memcmp(p, tag, tl) || (p[tl] != ' ' && p[tl] != '\t'))
		return spa_err(err, -SPA_EUSAGE,
			       "%s:%d: not an spa %s key line (expected \"%s BASE64\"; make keys "
			       "with spa-keygen -o NAME)", path, line_no,
			       strcmp(tag, SECRET_TAG) ? "public" : "secret", tag);
	p += tl;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	const char *b = p;
	while (p < end && *p != ' ' && *p != '\t' && *p != '\r')
		p++;
	size_t bin_len = 0;
	if (sodium_base642bin(key, SPA_KEY_SIZE, b, (size_t)(p - b), NULL, &bin_len, NULL,
			      sodium_base64_VARIANT_ORIGINAL) ||
	    bin_len != SPA_KEY_SIZE)
		return spa_err(err, -SPA_EUSAGE,
			       "%s:%d: the key is not %d bytes of base64 (%d characters): the file "
			       "is damaged; make keys with spa-keygen -o NAME", path, line_no,
			       SPA_KEY_SIZE, B64_LEN);
	return 1;
}

int spa_key_load(struct spa_key *k, const char *path, struct spa_errbuf *err)
{
	char buf[1024];
	struct stat st;
	int rc = spa_crypto_init();
	if (rc)
		return spa_err(err, rc, "libsodium could not start");
	if ((rc = read_small(path, buf, sizeof buf, &st, err)))
		return rc;
	if (st.st_mode & 077) {
		sodium_memzero(buf, sizeof buf);
		return spa_err(err, -SPA_EUSAGE, "%s: a secret key that others may read (mode %04o): "
			       "chmod 600 %s, and make a new key if it may have been seen", path,
			       (unsigned)(st.st_mode & 07777), path);
	}
	const char *s = buf;
	int line = 1;
	for (; *s; line++) {
		rc = parse_line(&s, SECRET_TAG, k->sk, path, line, err);
		if (rc)
			break;
	}
	sodium_memzero(buf, sizeof buf);
	if (rc < 0)
		return rc;
	if (rc == 0)
		return spa_err(err, -SPA_EUSAGE, "%s: no key in it (make one with spa-keygen -o NAME)",
			       path);
	if (crypto_scalarmult_curve25519_base(k->pk, k->sk))
		return spa_err(err, -SPA_EUSAGE, "%s: not a usable X25519 secret key", path);
	return 0;
}

/* Append every key line of path. */
static int load_pubs(uint8_t **keys, size_t *n, const char *path, int first_only,
		     struct spa_errbuf *err)
{
	char buf[65536];
	struct stat st;
	int rc = read_small(path, buf, sizeof buf, &st, err);
	if (rc)
		return rc;
	const char *s = buf;
	size_t found = 0;
	for (int line = 1; *s; line++) {
		uint8_t k[SPA_KEY_SIZE];
		rc = parse_line(&s, PUBLIC_TAG, k, path, line, err);
		if (rc < 0)
			return rc;
		if (!rc)
			continue;
		uint8_t *nk = realloc(*keys, (*n + 1) * SPA_KEY_SIZE);
		if (!nk)
			return spa_err(err, -ENOMEM, "out of memory");
		*keys = nk;
		memcpy(nk + *n * SPA_KEY_SIZE, k, SPA_KEY_SIZE);
		(*n)++;
		found++;
		if (first_only)
			break;
	}
	if (!found)
		return spa_err(err, -SPA_EUSAGE, "%s: no public key in it (expected lines \""
			       PUBLIC_TAG " BASE64\", made by spa-keygen)", path);
	return 0;
}

int spa_pub_load(uint8_t pk[SPA_KEY_SIZE], const char *path, struct spa_errbuf *err)
{
	uint8_t *keys = NULL;
	size_t n = 0;
	int rc = spa_crypto_init();
	if (!rc)
		rc = load_pubs(&keys, &n, path, 1, err);
	if (!rc)
		memcpy(pk, keys, SPA_KEY_SIZE);
	free(keys);
	return rc;
}

int spa_pub_load_list(uint8_t **keys, size_t *n_keys, const char *paths, struct spa_errbuf *err)
{
	int rc = spa_crypto_init();
	if (rc)
		return spa_err(err, rc, "libsodium could not start");
	char *list = strdup(paths), *save = NULL;
	if (!list)
		return spa_err(err, -ENOMEM, "out of memory");
	for (char *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save))
		if ((rc = load_pubs(keys, n_keys, p, 0, err)))
			break;
	free(list);
	if (!rc && !*n_keys)
		rc = spa_err(err, -SPA_EUSAGE, "no public key files named in \"%s\"", paths);
	return rc;
}
