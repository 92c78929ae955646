/* spa: the handshake's key exchange, Noise_IK_25519_ChaChaPoly_SHA256 (runtime/noise.c; the
 * Noise Protocol Framework, revision 34, over libsodium's X25519, ChaCha20-Poly1305 (IETF),
 * SHA-256 and HMAC-SHA-256). Checked against the cacophony test vector (tests/test_noise.c).
 *
 * IK: the initiator (the edge) knows the responder's (the cloud's) static public key.
 *   <- s                      (known in advance, hashed first)
 *   -> e, es, s, ss           CONNECT: the edge's ephemeral and, encrypted, its static key
 *   <- e, ee, se              ACCEPT
 * The responder learns the initiator's static key from the first message (rs below) and checks
 * it against its allowed keys; the initiator is sure of the responder once the second message
 * decrypts. Both then split two 32-byte keys, one per direction, with forward secrecy (ee, se).
 * Not on the hot path; one state per handshake, not thread-safe. */
#ifndef SPA_NOISE_H
#define SPA_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "keys.h"

#define SPA_NOISE_MSG1_OVERHEAD (32 + 48 + 16) /* e, encrypted s, payload tag */
#define SPA_NOISE_MSG2_OVERHEAD (32 + 16)      /* e, payload tag */

struct spa_noise {
	uint8_t ck[32], h[32], k[32];
	uint64_t n;
	int has_k, initiator;
	struct spa_key s;               /* our static key pair */
	uint8_t e_sk[32], e_pk[32];     /* our ephemeral key pair */
	uint8_t rs[32], re[32];         /* the peer's static and ephemeral public keys */
};

/* Start a handshake. s: our static key pair; rs: the responder's static public key (initiator
 * only; NULL for the responder); prologue[n] is hashed in first (both sides must give the same
 * bytes). e_sk: our ephemeral secret, or NULL for a random one (tests give the vector's).
 * Returns 0 or a negative code. */
int spa_noise_init(struct spa_noise *hs, int initiator, const struct spa_key *s,
		   const uint8_t rs[32], const void *prologue, size_t n, const uint8_t e_sk[32]);
/* Initiator: write the first message (payload[len] encrypted in it) into out (len +
 * SPA_NOISE_MSG1_OVERHEAD bytes). Returns 0 or a negative code. */
int spa_noise_write1(struct spa_noise *hs, const void *payload, size_t len, uint8_t *out);
/* Responder: read the first message (n bytes) and its payload into payload (n -
 * SPA_NOISE_MSG1_OVERHEAD bytes). Afterwards hs->rs is the initiator's static key. Returns 0,
 * or -SPA_EPROTO (too short, a low-order key, or a tag that does not verify: damaged, or
 * encrypted to another static key than ours). */
int spa_noise_read1(struct spa_noise *hs, const uint8_t *msg, size_t n, uint8_t *payload);
/* Responder: write the second message (len + SPA_NOISE_MSG2_OVERHEAD bytes). */
int spa_noise_write2(struct spa_noise *hs, const void *payload, size_t len, uint8_t *out);
/* Initiator: read the second message. Returns 0 or -SPA_EPROTO (as read1: damaged, or not
 * from the holder of the responder's static key). */
int spa_noise_read2(struct spa_noise *hs, const uint8_t *msg, size_t n, uint8_t *payload);
/* After the second message: the initiator-to-responder and responder-to-initiator keys, and
 * the handshake hash (binds everything said). Wipes the state's secrets. */
void spa_noise_split(struct spa_noise *hs, uint8_t i2r[32], uint8_t r2i[32], uint8_t hash[32]);
/* Wipe a state (after a failure). */
void spa_noise_wipe(struct spa_noise *hs);

#endif
