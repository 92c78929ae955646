/* The handshake's key exchange (runtime/noise.c): Noise_IK_25519_ChaChaPoly_SHA256 against the
 * cacophony test vectors (the Noise community's reference vectors, as shipped with the snow and
 * noiseprotocol libraries: the same static and ephemeral keys give byte for byte the same two
 * handshake messages, handshake hash and transport keys), then handshakes with random keys,
 * and every way a message can be wrong. */
#include <criterion/criterion.h>
#include <string.h>

#include <sodium.h>

#include "spa/error.h"
#include "spa/noise.h"

static void unhex(const char *h, uint8_t *out, size_t n)
{
	cr_assert_eq(strlen(h), 2 * n, "hex of %zu bytes expected", n);
	size_t got;
	cr_assert_eq(sodium_hex2bin(out, n, h, 2 * n, NULL, &got, NULL), 0);
	cr_assert_eq(got, n);
}

/* cacophony.txt, protocol_name Noise_IK_25519_ChaChaPoly_SHA256 */
static const char *const V_PROLOGUE = "4a6f686e2047616c74";
static const char *const V_INIT_STATIC =
	"e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1";
static const char *const V_INIT_EPHEMERAL =
	"893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a";
static const char *const V_INIT_REMOTE_STATIC =
	"31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62";
static const char *const V_RESP_STATIC =
	"4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893";
static const char *const V_RESP_EPHEMERAL =
	"bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b";
static const char *const V_HASH =
	"0b0f68fb0c27e03ce9b97565995ed4838cc0581b762ef72b062f6a546419fad7";
static const struct {
	const char *payload, *ciphertext;
} V_MSG[6] = {
	{ "4c756477696720766f6e204d69736573",
	  "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944718da798efbcd9152852"
	  "0204f904b9bd6c7413dccdc214d951e15253e39987f18146e8cd0873654207148333479d4d16c289f029"
	  "4b29960a72f48e0b7bba2e89083169825e59642148d492020664ccf7" },
	{ "4d757272617920526f746862617264",
	  "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088435361e70b2ed446e6c9ec38"
	  "7d1d6b3b840f194e373979d241b203c4acafccf5" },
	{ "462e20412e20486179656b", "050e9f3c8fac16b68dbce8f8c4bfbf6617c897f9ada4aa29aa19c8" },
	{ "4361726c204d656e676572", "344233a6cabb7141d80f3da2fedc311d9646bbb0f505afe403a667" },
	{ "4a65616e2d426170746973746520536179",
	  "62cdeeb172ad7ade7aa7d9e069da5790f12331bfa00177787a1d0810c67dc3b2b4" },
	{ "457567656e2042f6686d20766f6e2042617765726b",
	  "029bead1b40992327044d409d9a1f3ad8f36c3c452775d557e18bbeb2e8dfcead32d514024" },
};

static void key_from(struct spa_key *k, const char *hex)
{
	unhex(hex, k->sk, 32);
	cr_assert_eq(crypto_scalarmult_curve25519_base(k->pk, k->sk), 0);
}

/* Noise transport encryption (ChaChaPoly, empty associated data), to check the split keys. */
static void transport(const uint8_t key[32], uint64_t n, const char *payload_hex,
		      const char *want_hex)
{
	uint8_t p[64], want[80], got[80], nc[12] = { 0 };
	size_t pl = strlen(payload_hex) / 2;
	unhex(payload_hex, p, pl);
	unhex(want_hex, want, pl + 16);
	for (int i = 0; i < 8; i++)
		nc[4 + i] = (uint8_t)(n >> (8 * i));
	unsigned long long cl;
	crypto_aead_chacha20poly1305_ietf_encrypt(got, &cl, p, pl, NULL, 0, NULL, nc, key);
	cr_assert_eq(cl, pl + 16);
	cr_assert_eq(memcmp(got, want, pl + 16), 0, "a transport message differs from the vector's");
}

Test(noise, ik_sha256_matches_the_cacophony_vector)
{
	cr_assert_geq(sodium_init(), 0);
	struct spa_key is, rsk;
	uint8_t prologue[9], rs_pub[32], ie[32], re[32];
	unhex(V_PROLOGUE, prologue, sizeof prologue);
	key_from(&is, V_INIT_STATIC);
	key_from(&rsk, V_RESP_STATIC);
	unhex(V_INIT_REMOTE_STATIC, rs_pub, 32);
	cr_assert_eq(memcmp(rs_pub, rsk.pk, 32), 0, "the vector's responder key");
	unhex(V_INIT_EPHEMERAL, ie, 32);
	unhex(V_RESP_EPHEMERAL, re, 32);

	struct spa_noise a, b;
	cr_assert_eq(spa_noise_init(&a, 1, &is, rs_pub, prologue, sizeof prologue, ie), 0);
	cr_assert_eq(spa_noise_init(&b, 0, &rsk, NULL, prologue, sizeof prologue, re), 0);

	uint8_t p[64], m1[160], want[160], got[64];
	size_t pl = strlen(V_MSG[0].payload) / 2;
	unhex(V_MSG[0].payload, p, pl);
	unhex(V_MSG[0].ciphertext, want, pl + SPA_NOISE_MSG1_OVERHEAD);
	cr_assert_eq(spa_noise_write1(&a, p, pl, m1), 0);
	cr_assert_eq(memcmp(m1, want, pl + SPA_NOISE_MSG1_OVERHEAD), 0,
		     "message 1 differs from the vector's");
	cr_assert_eq(spa_noise_read1(&b, m1, pl + SPA_NOISE_MSG1_OVERHEAD, got), 0);
	cr_assert_eq(memcmp(got, p, pl), 0);
	cr_assert_eq(memcmp(b.rs, is.pk, 32), 0, "the responder learns the initiator's key");

	pl = strlen(V_MSG[1].payload) / 2;
	unhex(V_MSG[1].payload, p, pl);
	unhex(V_MSG[1].ciphertext, want, pl + SPA_NOISE_MSG2_OVERHEAD);
	cr_assert_eq(spa_noise_write2(&b, p, pl, m1), 0);
	cr_assert_eq(memcmp(m1, want, pl + SPA_NOISE_MSG2_OVERHEAD), 0,
		     "message 2 differs from the vector's");
	cr_assert_eq(spa_noise_read2(&a, m1, pl + SPA_NOISE_MSG2_OVERHEAD, got), 0);
	cr_assert_eq(memcmp(got, p, pl), 0);

	uint8_t ai2r[32], ar2i[32], ah[32], bi2r[32], br2i[32], bh[32], vh[32];
	spa_noise_split(&a, ai2r, ar2i, ah);
	spa_noise_split(&b, bi2r, br2i, bh);
	unhex(V_HASH, vh, 32);
	cr_assert_eq(memcmp(ah, vh, 32), 0, "handshake hash differs from the vector's");
	cr_assert_eq(memcmp(bh, vh, 32), 0);
	cr_assert_eq(memcmp(ai2r, bi2r, 32), 0);
	cr_assert_eq(memcmp(ar2i, br2i, 32), 0);
	cr_assert_neq(memcmp(ai2r, ar2i, 32), 0, "the two directions share a key");
	/* the vector's transport messages: initiator's at 2, 4; responder's at 3, 5 */
	transport(ai2r, 0, V_MSG[2].payload, V_MSG[2].ciphertext);
	transport(ar2i, 0, V_MSG[3].payload, V_MSG[3].ciphertext);
	transport(ai2r, 1, V_MSG[4].payload, V_MSG[4].ciphertext);
	transport(ar2i, 1, V_MSG[5].payload, V_MSG[5].ciphertext);
}

struct pair {
	struct spa_key i, r;
	struct spa_noise a, b;
	uint8_t m1[256], m2[256];
};

static void start(struct pair *p, const uint8_t *pin)
{
	cr_assert_eq(spa_key_generate(&p->i), 0);
	cr_assert_eq(spa_key_generate(&p->r), 0);
	static const char pro[] = "spa2test";
	cr_assert_eq(spa_noise_init(&p->a, 1, &p->i, pin ? pin : p->r.pk, pro, 8, NULL), 0);
	cr_assert_eq(spa_noise_init(&p->b, 0, &p->r, NULL, pro, 8, NULL), 0);
}

Test(noise, random_keys_agree_and_every_damaged_byte_is_refused)
{
	for (int it = 0; it < 20; it++) {
		struct pair p;
		start(&p, NULL);
		uint8_t pay[20], got[20];
		randombytes_buf(pay, sizeof pay);
		size_t n1 = sizeof pay + SPA_NOISE_MSG1_OVERHEAD;
		cr_assert_eq(spa_noise_write1(&p.a, pay, sizeof pay, p.m1), 0);
		/* a flipped bit anywhere in message 1 but the ephemeral key's last (clamped) bit
		 * makes the responder refuse it */
		struct spa_noise b2 = p.b;
		int pos = (int)randombytes_uniform((uint32_t)n1), bit = (int)randombytes_uniform(8);
		if (pos == 31 && bit == 7)
			bit = 6;
		p.m1[pos] ^= (uint8_t)(1 << bit);
		cr_assert_eq(spa_noise_read1(&b2, p.m1, n1, got), -SPA_EPROTO,
			     "message 1 with byte %d bit %d flipped was taken", pos, bit);
		p.m1[pos] ^= (uint8_t)(1 << bit);
		cr_assert_eq(spa_noise_read1(&p.b, p.m1, n1, got), 0);
		cr_assert_eq(memcmp(got, pay, sizeof pay), 0);
		cr_assert_eq(memcmp(p.b.rs, p.i.pk, 32), 0);
		size_t n2 = sizeof pay + SPA_NOISE_MSG2_OVERHEAD;
		cr_assert_eq(spa_noise_write2(&p.b, pay, sizeof pay, p.m2), 0);
		struct spa_noise a2 = p.a;
		pos = (int)randombytes_uniform((uint32_t)n2);
		bit = (pos == 31) ? 3 : (int)randombytes_uniform(8);
		p.m2[pos] ^= (uint8_t)(1 << bit);
		cr_assert_eq(spa_noise_read2(&a2, p.m2, n2, got), -SPA_EPROTO,
			     "message 2 with byte %d bit %d flipped was taken", pos, bit);
		p.m2[pos] ^= (uint8_t)(1 << bit);
		cr_assert_eq(spa_noise_read2(&p.a, p.m2, n2, got), 0);
		uint8_t k[4][32], h[2][32];
		spa_noise_split(&p.a, k[0], k[1], h[0]);
		spa_noise_split(&p.b, k[2], k[3], h[1]);
		cr_assert_eq(memcmp(k[0], k[2], 32), 0);
		cr_assert_eq(memcmp(k[1], k[3], 32), 0);
		cr_assert_eq(memcmp(h[0], h[1], 32), 0);
		/* short messages */
		cr_assert_eq(spa_noise_read1(&b2, p.m1, SPA_NOISE_MSG1_OVERHEAD - 1, got),
			     -SPA_EPROTO);
	}
}

Test(noise, an_initiator_pinning_another_key_is_refused_by_the_responder)
{
	struct spa_key other;
	cr_assert_eq(spa_key_generate(&other), 0);
	struct pair p;
	start(&p, other.pk); /* the edge pins a key that is not the responder's */
	uint8_t pay[8] = "params!", got[8];
	cr_assert_eq(spa_noise_write1(&p.a, pay, 8, p.m1), 0);
	cr_assert_eq(spa_noise_read1(&p.b, p.m1, 8 + SPA_NOISE_MSG1_OVERHEAD, got), -SPA_EPROTO);
}

Test(noise, a_responder_without_the_pinned_key_cannot_answer)
{
	/* An impostor responder that read message 1 somehow (it cannot: it lacks the pinned
	 * static secret) is modelled by one whose static key differs: its message 2 is refused. */
	struct pair p, q;
	start(&p, NULL);
	start(&q, NULL);
	uint8_t pay[8] = "params!", got[8];
	cr_assert_eq(spa_noise_write1(&q.a, pay, 8, q.m1), 0);
	cr_assert_eq(spa_noise_read1(&q.b, q.m1, 8 + SPA_NOISE_MSG1_OVERHEAD, got), 0);
	cr_assert_eq(spa_noise_write2(&q.b, pay, 8, q.m2), 0);
	cr_assert_eq(spa_noise_write1(&p.a, pay, 8, p.m1), 0);
	cr_assert_eq(spa_noise_read2(&p.a, q.m2, 8 + SPA_NOISE_MSG2_OVERHEAD, got), -SPA_EPROTO);
}

Test(noise, low_order_points_are_refused)
{
	struct pair p;
	start(&p, NULL);
	uint8_t m[8 + SPA_NOISE_MSG1_OVERHEAD] = { 0 }, got[8];
	/* an all-zero ephemeral key: the DH result is zero */
	cr_assert_eq(spa_noise_read1(&p.b, m, sizeof m, got), -SPA_EPROTO);
}
