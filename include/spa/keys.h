/* spa: the static X25519 keys that authenticate cloud and edge (runtime/keys.c; how they are
 * used: docs/wire-protocol.md, "Keys").
 *
 * spa-keygen -o NAME writes NAME.key (the secret, mode 0600) and NAME.pub (the public key,
 * shareable). Both are one line of text:
 *
 *   NAME.key   spa-x25519-secret BASE64
 *   NAME.pub   spa-x25519-public BASE64 [comment]
 *
 * BASE64 is the 32-byte key in standard base64 (44 characters). A list of allowed keys (the
 * cloud's --allow) is any number of .pub lines, in one file or several; blank lines and lines
 * starting with '#' are skipped. Not on the hot path; thread-safe (no shared state). */
#ifndef SPA_KEYS_H
#define SPA_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define SPA_KEY_SIZE 32

/* A static key pair: the secret scalar and its public point. */
struct spa_key {
	uint8_t sk[SPA_KEY_SIZE];
	uint8_t pk[SPA_KEY_SIZE];
};

/* Make libsodium ready (once per process; thread-safe). Returns 0 or -SPA_EUNSUPPORTED. */
int spa_crypto_init(void);

/* A fresh random key pair (libsodium's generator). Returns 0 or a negative code. */
int spa_key_generate(struct spa_key *k);
/* Write k as NAME.key (mode 0600, refused if it exists: -EEXIST) and NAME.pub (comment: the
 * base name of NAME). Returns 0 or a negative code with err filled. */
int spa_key_write(const struct spa_key *k, const char *name, struct spa_errbuf *err);
/* Read a secret key file (its public key is computed). Refuses a file that others may read
 * (mode & 077), malformed content, a key of the wrong length. Returns 0, -SPA_EUSAGE, -errno,
 * with err filled. */
int spa_key_load(struct spa_key *k, const char *path, struct spa_errbuf *err);
/* Read one public key file (its first key line). Returns 0 or a negative code. */
int spa_pub_load(uint8_t pk[SPA_KEY_SIZE], const char *path, struct spa_errbuf *err);
/* Append the public keys of the comma-separated files in paths to *keys (n_keys x 32 bytes,
 * realloc'ed: the caller frees it). Returns 0 or a negative code with err filled. */
int spa_pub_load_list(uint8_t **keys, size_t *n_keys, const char *paths, struct spa_errbuf *err);
/* The base64 text of a public key, 44 characters + NUL, into out[45] (for messages). */
void spa_key_b64(const uint8_t pk[SPA_KEY_SIZE], char out[45]);

#endif
