/* Noise_IK_25519_ChaChaPoly_SHA256 (include/spa/noise.h), after the Noise Protocol Framework,
 * revision 34: sections 5.1 (CipherState), 5.2 (SymmetricState), 5.3 (HandshakeState), 4.3
 * (HKDF over HMAC-SHA-256), 12.3 (ChaChaPoly: 96-bit nonce = 32 zero bits + 64-bit
 * little-endian counter). */
#include <string.h>

#include <sodium.h>

#include "spa/error.h"
#include "spa/noise.h"

#define NAME "Noise_IK_25519_ChaChaPoly_SHA256" /* exactly HASHLEN bytes: h = name */
_Static_assert(sizeof NAME - 1 == 32, "protocol name is not HASHLEN long");

static void hmac(uint8_t out[32], const uint8_t key[32], const uint8_t *a, size_t na,
		 const uint8_t *b, size_t nb)
{
	crypto_auth_hmacsha256_state st;
	crypto_auth_hmacsha256_init(&st, key, 32);
	crypto_auth_hmacsha256_update(&st, a, na);
	if (nb)
		crypto_auth_hmacsha256_update(&st, b, nb);
	crypto_auth_hmacsha256_final(&st, out);
	sodium_memzero(&st, sizeof st);
}

/* HKDF(ck, ikm, 2): o1, o2 */
static void hkdf2(const uint8_t ck[32], const uint8_t *ikm, size_t n, uint8_t o1[32],
		  uint8_t o2[32])
{
	uint8_t tk[32], one = 1, two = 2;
	hmac(tk, ck, ikm, n, NULL, 0);
	hmac(o1, tk, &one, 1, NULL, 0);
	hmac(o2, tk, o1, 32, &two, 1);
	sodium_memzero(tk, sizeof tk);
}

static void mix_hash(struct spa_noise *hs, const uint8_t *data, size_t n)
{
	crypto_hash_sha256_state st;
	crypto_hash_sha256_init(&st);
	crypto_hash_sha256_update(&st, hs->h, 32);
	crypto_hash_sha256_update(&st, data, n);
	crypto_hash_sha256_final(&st, hs->h);
}

static void mix_key(struct spa_noise *hs, const uint8_t ikm[32])
{
	uint8_t ck[32];
	hkdf2(hs->ck, ikm, 32, ck, hs->k);
	memcpy(hs->ck, ck, 32);
	sodium_memzero(ck, sizeof ck);
	hs->n = 0;
	hs->has_k = 1;
}

static void nonce(uint8_t out[12], uint64_t n)
{
	memset(out, 0, 4);
	for (int i = 0; i < 8; i++)
		out[4 + i] = (uint8_t)(n >> (8 * i));
}

/* EncryptAndHash: out gets len + 16 bytes (len when there is no key yet). */
static size_t encrypt_hash(struct spa_noise *hs, const uint8_t *p, size_t len, uint8_t *out)
{
	size_t n = len;
	if (hs->has_k) {
		uint8_t nc[12];
		unsigned long long cl;
		nonce(nc, hs->n++);
		crypto_aead_chacha20poly1305_ietf_encrypt(out, &cl, p, len, hs->h, 32, NULL, nc,
							  hs->k);
		n = (size_t)cl;
	} else {
		memmove(out, p, len);
	}
	mix_hash(hs, out, n);
	return n;
}

/* DecryptAndHash: in[n] (with its tag when keyed) into out. 0 or -SPA_EPROTO. */
static int decrypt_hash(struct spa_noise *hs, const uint8_t *in, size_t n, uint8_t *out)
{
	if (hs->has_k) {
		uint8_t nc[12];
		unsigned long long ml;
		if (n < 16)
			return -SPA_EPROTO;
		nonce(nc, hs->n);
		if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &ml, NULL, in, n, hs->h, 32, nc,
							      hs->k))
			return -SPA_EPROTO;
		hs->n++;
	} else {
		memmove(out, in, n);
	}
	mix_hash(hs, in, n);
	return 0;
}

/* MixKey(DH(sk, pk)); a low-order point (an all-zero result) is refused. */
static int mix_dh(struct spa_noise *hs, const uint8_t sk[32], const uint8_t pk[32])
{
	uint8_t ss[32];
	int rc = crypto_scalarmult_curve25519(ss, sk, pk);
	if (!rc)
		mix_key(hs, ss);
	sodium_memzero(ss, sizeof ss);
	return rc ? -SPA_EPROTO : 0;
}

int spa_noise_init(struct spa_noise *hs, int initiator, const struct spa_key *s,
		   const uint8_t rs[32], const void *prologue, size_t n, const uint8_t e_sk[32])
{
	if (sodium_init() < 0)
		return -SPA_EUNSUPPORTED;
	memset(hs, 0, sizeof *hs);
	hs->initiator = initiator;
	hs->s = *s;
	memcpy(hs->h, NAME, 32);
	memcpy(hs->ck, hs->h, 32);
	mix_hash(hs, prologue, n);
	/* pre-message "<- s": the responder's static key */
	if (initiator) {
		memcpy(hs->rs, rs, 32);
		mix_hash(hs, rs, 32);
	} else {
		mix_hash(hs, s->pk, 32);
	}
	if (e_sk)
		memcpy(hs->e_sk, e_sk, 32);
	else
		randombytes_buf(hs->e_sk, 32);
	return crypto_scalarmult_curve25519_base(hs->e_pk, hs->e_sk) ? -SPA_EPROTO : 0;
}

int spa_noise_write1(struct spa_noise *hs, const void *payload, size_t len, uint8_t *out)
{
	/* -> e */
	memcpy(out, hs->e_pk, 32);
	mix_hash(hs, hs->e_pk, 32);
	/* es */
	if (mix_dh(hs, hs->e_sk, hs->rs))
		return -SPA_EPROTO;
	/* s */
	size_t k = 32 + encrypt_hash(hs, hs->s.pk, 32, out + 32);
	/* ss */
	if (mix_dh(hs, hs->s.sk, hs->rs))
		return -SPA_EPROTO;
	encrypt_hash(hs, payload, len, out + k);
	return 0;
}

int spa_noise_read1(struct spa_noise *hs, const uint8_t *msg, size_t n, uint8_t *payload)
{
	if (n < SPA_NOISE_MSG1_OVERHEAD)
		return -SPA_EPROTO;
	memcpy(hs->re, msg, 32);
	mix_hash(hs, hs->re, 32);
	if (mix_dh(hs, hs->s.sk, hs->re) || decrypt_hash(hs, msg + 32, 48, hs->rs) ||
	    mix_dh(hs, hs->s.sk, hs->rs) || decrypt_hash(hs, msg + 80, n - 80, payload))
		return -SPA_EPROTO;
	return 0;
}

int spa_noise_write2(struct spa_noise *hs, const void *payload, size_t len, uint8_t *out)
{
	memcpy(out, hs->e_pk, 32);
	mix_hash(hs, hs->e_pk, 32);
	/* ee, se (the responder: DH(e, rs)) */
	if (mix_dh(hs, hs->e_sk, hs->re) || mix_dh(hs, hs->e_sk, hs->rs))
		return -SPA_EPROTO;
	encrypt_hash(hs, payload, len, out + 32);
	return 0;
}

int spa_noise_read2(struct spa_noise *hs, const uint8_t *msg, size_t n, uint8_t *payload)
{
	if (n < SPA_NOISE_MSG2_OVERHEAD)
		return -SPA_EPROTO;
	memcpy(hs->re, msg, 32);
	mix_hash(hs, hs->re, 32);
	/* ee, se (the initiator: DH(s, re)) */
	if (mix_dh(hs, hs->e_sk, hs->re) || mix_dh(hs, hs->s.sk, hs->re) ||
	    decrypt_hash(hs, msg + 32, n - 32, payload))
		return -SPA_EPROTO;
	return 0;
}

void spa_noise_split(struct spa_noise *hs, uint8_t i2r[32], uint8_t r2i[32], uint8_t hash[32])
{
	hkdf2(hs->ck, NULL, 0, i2r, r2i);
	memcpy(hash, hs->h, 32);
	spa_noise_wipe(hs);
}

void spa_noise_wipe(struct spa_noise *hs)
{
	sodium_memzero(hs, sizeof *hs);
}
