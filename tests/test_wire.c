/* Wire format: header layout and validation, CRC32C (runtime/wire.c). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "spa/drv/link.h"
#include "spa/error.h"
#include "spa/rng.h"
#include "spa/wire.h"

#define HDR_BYTES 64u

static struct spa_rng rng;
static uint64_t rnd(void)
{
	return spa_rng_next(&rng);
}
static uint32_t rnd_below(uint64_t n)
{
	return (uint32_t)(rnd() % n);
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

static struct spa_wire_hdr random_valid_hdr(size_t max_payload)
{
	struct spa_wire_hdr h = {
		.magic = SPA_WIRE_MAGIC,
		.version = SPA_WIRE_VERSION,
		.type = (uint8_t)(1 + rnd_below(SPA_MSG_TYPE_END - 1)),
		.dtype = (uint8_t)rnd_below(SPA_WIRE_DTYPE_END),
		.conn = rnd(),
		.pkt = (uint32_t)rnd(),
		.ack = (uint32_t)rnd(),
		.seq = (uint32_t)rnd(),
		.pos = (uint32_t)rnd(),
		.layer = (uint16_t)rnd(),
		.n_rows = (uint16_t)rnd(),
		.aux = (uint32_t)rnd(),
		.tx_ns = rnd(),
		.crc = (uint32_t)rnd(),
	};
	h.msg_len = rnd_below((uint64_t)SPA_WIRE_MAX_MSG + 1);
	h.payload_len = rnd_below((h.msg_len < max_payload ? h.msg_len : max_payload) + 1);
	h.frag_off = rnd_below((uint64_t)h.msg_len - h.payload_len + 1);
	if (spa_wire_is_ctl(h.type)) { /* control frames travel in one piece */
		h.msg_len = h.payload_len;
		h.frag_off = 0;
	}
	if (rnd() & 1) { /* sealed: a tag instead of the crc, 16 or 32 bytes */
		h.flags = SPA_WIRE_SEALED | (rnd() & 1 ? SPA_WIRE_TAG32 : 0);
		h.crc = 0;
	}
	return h;
}

Test(wire, header_round_trips_random_fields_in_documented_layout)
{
	spa_rng_seed(&rng, 0x9e3779b97f4a7c15ull);
	const size_t maxp = (1u << 20) - SPA_WIRE_HDR_SIZE;
	for (int it = 0; it < 5000; it++) {
		struct spa_wire_hdr h = random_valid_hdr(maxp), d;
		uint8_t b[SPA_WIRE_HDR_SIZE];
		cr_assert_eq(sizeof b, 64);
		memset(b, 0xa5, sizeof b);
		spa_wire_hdr_encode(&h, b);
		/* the byte layout wire.h documents */
		cr_assert_eq(b[0], 0x53);
		cr_assert_eq(b[1], 0x50);
		cr_assert_eq(b[2], 0x41);
		cr_assert_eq(b[3], 0x31);
		cr_assert_eq(b[4], 2);
		cr_assert_eq(b[4], h.version);
		cr_assert_eq(b[5], h.type);
		cr_assert_eq(b[6], h.dtype);
		cr_assert_eq(b[7], h.flags);
		cr_assert_eq(le64(b + 8), h.conn);
		cr_assert_eq(le32(b + 16), h.pkt);
		cr_assert_eq(le32(b + 20), h.ack);
		cr_assert_eq(le32(b + 24), h.seq);
		cr_assert_eq(le32(b + 28), h.pos);
		cr_assert_eq(b[32] | b[33] << 8, h.layer);
		cr_assert_eq(b[34] | b[35] << 8, h.n_rows);
		cr_assert_eq(le32(b + 36), h.payload_len);
		cr_assert_eq(le32(b + 40), h.frag_off);
		cr_assert_eq(le32(b + 44), h.msg_len);
		cr_assert_eq(le32(b + 48), h.aux);
		cr_assert_eq(le32(b + 52), h.crc);
		cr_assert_eq(le64(b + 56), h.tx_ns);
		cr_assert_eq(spa_wire_frame_size(&h),
			     HDR_BYTES + h.payload_len + (h.flags & SPA_WIRE_TAG32 ? 32u : h.flags ? 16u
											       : 0u));

		struct spa_errbuf e = { "" };
		cr_assert_eq(spa_wire_hdr_decode(b, &d, maxp, &e), 0, "%s", e.msg);
		cr_assert_eq(memcmp(&h, &d, sizeof h), 0, "decode(encode(h)) != h at iteration %d",
			     it);
	}
}

/* Decode h after one change; expect -SPA_EPROTO with word in the message. */
static void expect_refused(struct spa_wire_hdr h, size_t maxp, const char *word)
{
	uint8_t b[SPA_WIRE_HDR_SIZE];
	struct spa_wire_hdr d;
	struct spa_errbuf e = { "" };
	spa_wire_hdr_encode(&h, b);
	int rc = spa_wire_hdr_decode(b, &d, maxp, &e);
	cr_assert_eq(rc, -SPA_EPROTO, "expected -SPA_EPROTO (%s), got %d", word, rc);
	cr_assert(strstr(e.msg, word), "message \"%s\" does not mention \"%s\"", e.msg, word);
	/* NULL errbuf is allowed */
	cr_assert_eq(spa_wire_hdr_decode(b, &d, maxp, NULL), -SPA_EPROTO);
}

static void expect_ok(struct spa_wire_hdr h, size_t maxp)
{
	uint8_t b[SPA_WIRE_HDR_SIZE];
	struct spa_wire_hdr d;
	struct spa_errbuf e = { "" };
	spa_wire_hdr_encode(&h, b);
	cr_assert_eq(spa_wire_hdr_decode(b, &d, maxp, &e), 0, "%s", e.msg);
}

Test(wire, each_invalid_field_is_refused_with_a_message)
{
	spa_rng_seed(&rng, 12345);
	const size_t maxp = 1000;
	for (int it = 0; it < 200; it++) {
		struct spa_wire_hdr g = random_valid_hdr(maxp), h;
		expect_ok(g, maxp);

		h = g; h.magic = (uint32_t)rnd() | 1; if (h.magic == SPA_WIRE_MAGIC) h.magic ^= 2;
		expect_refused(h, maxp, "magic");
		h = g; h.magic = 0x53504131; /* byte-swapped magic: a big-endian writer */
		expect_refused(h, maxp, "magic");
		h = g; h.version = (uint8_t)(SPA_WIRE_VERSION + 1 + rnd_below(250));
		expect_refused(h, maxp, "version");
		h = g; h.version = 0;
		expect_refused(h, maxp, "version");
		h = g; h.type = 0;
		expect_refused(h, maxp, "type");
		h = g; h.type = (uint8_t)(SPA_MSG_TYPE_END + rnd_below(256 - SPA_MSG_TYPE_END));
		expect_refused(h, maxp, "type");
		h = g; h.dtype = (uint8_t)(SPA_WIRE_DTYPE_END + rnd_below(256 - SPA_WIRE_DTYPE_END));
		expect_refused(h, maxp, "dtype");
		h = g; h.flags = (uint8_t)(4 + rnd_below(252));
		expect_refused(h, maxp, "flags");
		h = g; h.flags = SPA_WIRE_TAG32; /* a tag length without a tag */
		expect_refused(h, maxp, "flags");
		h = g; h.flags = SPA_WIRE_SEALED; h.crc = (uint32_t)rnd() | 1;
		expect_refused(h, maxp, "sealed");
		h = g; h.type = (uint8_t)(SPA_MSG_CONNECT + rnd_below(4)); h.msg_len = 300;
		h.payload_len = 100; h.frag_off = rnd_below(2) * 100;
		expect_refused(h, maxp, "one piece");
		h = g; h.payload_len = (uint32_t)(maxp + 1 + rnd_below(1u << 30)); h.msg_len = SPA_WIRE_MAX_MSG; h.frag_off = 0;
		expect_refused(h, maxp, "payload bytes");
		h = g; h.msg_len = SPA_WIRE_MAX_MSG + 1 + rnd_below(1u << 30);
		expect_refused(h, maxp, "protocol limit");
		h = g; h.msg_len = rnd_below(1000); h.payload_len = 1 + rnd_below(maxp);
		h.frag_off = h.msg_len - (h.payload_len <= h.msg_len ? h.payload_len : h.msg_len) + 1;
		expect_refused(h, maxp, "outside");
		/* frag_off + payload_len wrapping around 2^32 must not pass */
		h = g; h.msg_len = 100; h.payload_len = 10; h.frag_off = 0xfffffffcu;
		expect_refused(h, maxp, "outside");
	}
}

Test(wire, boundary_values_are_accepted)
{
	struct spa_wire_hdr h = { .magic = SPA_WIRE_MAGIC, .version = SPA_WIRE_VERSION,
				  .type = SPA_MSG_DONE, .dtype = SPA_WIRE_DTYPE_END - 1 };
	h.msg_len = SPA_WIRE_MAX_MSG;
	h.payload_len = 777;
	h.frag_off = SPA_WIRE_MAX_MSG - 777;
	expect_ok(h, 777);
	/* the last type, a control frame, in one piece */
	h.type = SPA_MSG_TYPE_END - 1;
	h.msg_len = 777;
	h.frag_off = 0;
	h.flags = SPA_WIRE_SEALED;
	expect_ok(h, 777);
	h.flags = 0;
	h.type = SPA_MSG_DONE;
	h.type = 1;
	h.msg_len = h.payload_len = h.frag_off = 0;
	expect_ok(h, 0);
	h.layer = h.n_rows = 0xffff;
	h.pkt = h.ack = h.seq = h.pos = h.aux = h.crc = 0xffffffffu;
	h.tx_ns = h.conn = ~0ull;
	expect_ok(h, 0);
}

Test(wire, crc32c_known_vectors)
{
	static const uint8_t zeros[32], ones[32] = {
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	uint8_t inc[32], dec[32];
	for (int i = 0; i < 32; i++) {
		inc[i] = (uint8_t)i;
		dec[i] = (uint8_t)(31 - i);
	}
	uint32_t (*const fns[3])(uint32_t, const void *, size_t) = { spa_crc32c, spa_crc32c_sw,
								     spa_crc32c_hw };
	for (int f = 0; f < 3; f++) {
		cr_assert_eq(fns[f](0, "123456789", 9), 0xe3069283u, "impl %d", f);
		cr_assert_eq(fns[f](0, zeros, 32), 0x8a9136aau, "impl %d", f);
		/* RFC 3720 B.4 vectors */
		cr_assert_eq(fns[f](0, ones, 32), 0x62a8ab43u, "impl %d", f);
		cr_assert_eq(fns[f](0, inc, 32), 0x46dd794eu, "impl %d", f);
		cr_assert_eq(fns[f](0, dec, 32), 0x113fdb5cu, "impl %d", f);
		cr_assert_eq(fns[f](0, "", 0), 0u, "impl %d", f);
		/* chaining */
		uint32_t c = fns[f](0, "12345", 5);
		cr_assert_eq(fns[f](c, "6789", 4), 0xe3069283u, "impl %d", f);
	}
	if (!spa_crc32c_have_hw())
		cr_log_warn("CPU without SSE4.2: the hardware CRC32C path could not be checked");
}

/* spa_crc32c_copy (the receive path checks and places a payload with it, shm's send copies a
 * frame into its ring with it): the same CRC as the software reference, every byte copied and
 * none written outside dst, for every relative alignment of source and destination and for
 * lengths across the 3-way block sizes (64, 256, 8192 bytes, times 3). */
Test(wire, crc32c_copy_equals_crc_then_copy_at_every_alignment)
{
	spa_rng_seed(&rng, 4242);
	enum { N = 30000 };
	uint8_t *src = malloc(N + 64), *dst = malloc(N + 96);
	for (int i = 0; i < N + 64; i++)
		src[i] = (uint8_t)rnd();
	static const size_t edges[] = {0, 1, 7, 8, 9, 63, 64, 191, 192, 193, 767, 768, 769, 2048,
				       2104, 24575, 24576, 24577};
	for (int it = 0; it < 1500; it++) {
		size_t so = rnd_below(16), dof = rnd_below(16);
		size_t len = it < 18 * 4 ? edges[it % 18] : rnd_below(N);
		uint32_t seed = it & 1 ? (uint32_t)rnd() : 0;
		memset(dst, 0xa5, N + 96);
		uint32_t got = spa_crc32c_copy(seed, dst + 16 + dof, src + so, len);
		uint32_t want = spa_crc32c_sw(seed, src + so, len);
		cr_assert_eq(got, want, "len %zu src+%zu dst+%zu: 0x%08x, want 0x%08x", len, so, dof,
			     got, want);
		cr_assert(!memcmp(dst + 16 + dof, src + so, len), "len %zu: bytes differ", len);
		for (size_t i = 0; i < 16 + dof; i++)
			cr_assert_eq(dst[i], 0xa5, "written before dst (len %zu)", len);
		for (size_t i = 16 + dof + len; i < N + 96; i++)
			cr_assert_eq(dst[i], 0xa5, "written past dst (len %zu)", len);
	}
	free(src);
	free(dst);
}

Test(wire, crc32c_hardware_equals_software_on_odd_lengths_and_alignments)
{
	spa_rng_seed(&rng, 777);
	enum { N = 5000 };
	uint8_t *buf = malloc(N + 64);
	for (int i = 0; i < N + 64; i++)
		buf[i] = (uint8_t)rnd();
	for (int it = 0; it < 3000; it++) {
		size_t off = rnd_below(64);
		size_t len = it < 100 ? (size_t)it : rnd_below(N);
		uint32_t seed = it & 1 ? (uint32_t)rnd() : 0;
		uint32_t sw = spa_crc32c_sw(seed, buf + off, len);
		uint32_t hw = spa_crc32c_hw(seed, buf + off, len);
		cr_assert_eq(sw, hw, "len %zu off %zu: sw 0x%08x hw 0x%08x", len, off, sw, hw);
		cr_assert_eq(spa_crc32c(seed, buf + off, len), sw);
		/* chaining at a random split equals the whole */
		size_t cut = len ? rnd_below(len + 1) : 0;
		cr_assert_eq(spa_crc32c(spa_crc32c(seed, buf + off, cut), buf + off + cut, len - cut),
			     sw);
	}
	/* a single flipped bit always changes the CRC */
	for (int it = 0; it < 500; it++) {
		size_t len = 1 + rnd_below(N);
		uint32_t a = spa_crc32c(0, buf, len);
		size_t bit = rnd_below(len * 8);
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		cr_assert_neq(spa_crc32c(0, buf, len), a);
		buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	free(buf);
}

Test(wire, frame_crc_covers_header_with_crc_zeroed_and_payload)
{
	spa_rng_seed(&rng, 4242);
	uint8_t payload[333];
	for (size_t i = 0; i < sizeof payload; i++)
		payload[i] = (uint8_t)rnd();
	for (int it = 0; it < 200; it++) {
		struct spa_wire_hdr h = random_valid_hdr(333);
		uint8_t b[SPA_WIRE_HDR_SIZE], z[SPA_WIRE_HDR_SIZE + 333];
		spa_wire_hdr_encode(&h, b);
		size_t n = h.payload_len;
		memcpy(z, b, SPA_WIRE_HDR_SIZE);
		memset(z + 52, 0, 4); /* the crc field, at 52 in version 2 */
		memcpy(z + SPA_WIRE_HDR_SIZE, payload, n);
		uint32_t want = spa_crc32c(0, z, SPA_WIRE_HDR_SIZE + n);
		cr_assert_eq(spa_wire_frame_crc(b, payload, n), want);
		/* the value in the crc field does not matter */
		h.crc ^= 0xffffffffu;
		spa_wire_hdr_encode(&h, b);
		cr_assert_eq(spa_wire_frame_crc(b, payload, n), want);
		/* any other header byte does */
		int k = (int)rnd_below(SPA_WIRE_HDR_SIZE - 4);
		if (k >= 52)
			k += 4;
		b[k] ^= 0x10;
		cr_assert_neq(spa_wire_frame_crc(b, payload, n), want);
	}
}

Test(wire, message_type_names)
{
	cr_assert_str_eq(spa_msg_type_name(SPA_MSG_HELLO), "HELLO");
	cr_assert_str_eq(spa_msg_type_name(SPA_MSG_TAPS), "TAPS");
	cr_assert_str_eq(spa_msg_type_name(SPA_MSG_ADAPTER_D), "ADAPTER_D");
	cr_assert_str_eq(spa_msg_type_name(SPA_MSG_DONE), "DONE");
	cr_assert_str_eq(spa_msg_type_name(0), "?");
	cr_assert_str_eq(spa_msg_type_name(SPA_MSG_TYPE_END), "?");
	cr_assert_str_eq(spa_msg_type_name(~0u), "?");
	for (unsigned t = 1; t < SPA_MSG_TYPE_END; t++)
		cr_assert_str_neq(spa_msg_type_name(t), "?", "type %u has no name", t);
}

/* The hardware CRC runs three streams over blocks of 64, 256 and 8192 bytes: lengths around
 * and across those blocks (3 x 64, 3 x 256, 3 x 8192 and beyond) must still equal the
 * software CRC. */
Test(wire, crc32c_hardware_equals_software_across_its_block_sizes)
{
	if (!spa_crc32c_have_hw())
		cr_skip_test("no SSE4.2 crc32 instruction on this CPU");
	spa_rng_seed(&rng, 4242);
	enum { N = 100000 };
	uint8_t *buf = malloc(N + 64);
	for (int i = 0; i < N + 64; i++)
		buf[i] = (uint8_t)rnd();
	const size_t edges[] = {191, 192, 193, 383, 384, 576, 767, 768, 769, 1535, 1536, 2048,
				 24575, 24576, 24577, 49152,
				 49160, 75000, N};
	for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++)
		for (size_t off = 0; off < 9; off++) {
			uint32_t seed = (uint32_t)rnd();
			cr_assert_eq(spa_crc32c_hw(seed, buf + off, edges[e]),
				     spa_crc32c_sw(seed, buf + off, edges[e]), "len %zu off %zu",
				     edges[e], off);
		}
	for (int it = 0; it < 200; it++) {
		size_t off = rnd_below(64), len = rnd_below(N + 1);
		cr_assert_eq(spa_crc32c_hw(7, buf + off, len), spa_crc32c_sw(7, buf + off, len),
			     "len %zu off %zu", len, off);
	}
	free(buf);
}
