/* spa: the wire format shared by every transport (runtime/wire.c). Spec: docs/wire-protocol.md.
 *
 * Every frame is a 56-byte little-endian header followed by payload_len bytes of payload.
 * A message larger than a link's frame limit travels as several frames (fragments) with the
 * same seq, frag_off giving each fragment's place in the msg_len-byte message. crc is CRC32C
 * (Castagnoli) over the header with crc = 0 followed by the frame's payload.
 *
 *   off size field
 *     0  4   magic        0x31415053 ("SPA1" as bytes 53 50 41 31)
 *     4  1   version      1
 *     5  1   type         enum spa_msg_type
 *     6  1   dtype        enum spa_wire_dtype of the payload
 *     7  1   flags        0 (reserved; receivers refuse other values)
 *     8  4   session      session id chosen by the cloud (0 in HELLO)
 *    12  4   seq          message sequence number, per direction, from 0
 *    16  4   pos          token position the message is about
 *    20  2   layer        block index (LORA_*, ADAPTER_*), else 0
 *    22  2   n_rows       positions carried (batched prefill), else 1
 *    24  4   payload_len  bytes of payload in this frame
 *    28  4   frag_off     offset of this fragment in the message
 *    32  4   msg_len      bytes of the whole message payload
 *    36  4   aux          replies: edge compute time in ns (saturating); ERROR: error code
 *    40  8   tx_ns        sender's CLOCK_MONOTONIC at send (link delay emulation, traces)
 *    48  4   crc          CRC32C
 *    52  4   reserved     0
 */
#ifndef SPA_WIRE_H
#define SPA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define SPA_WIRE_MAGIC 0x31415053u
#define SPA_WIRE_VERSION 1
#define SPA_WIRE_HDR_SIZE 56
#define SPA_WIRE_CRC_OFF 48 /* offset of the crc field in the header */
/* Largest message any spa peer accepts (UPLOAD of a 7B side plugin is ~20 MB). */
#define SPA_WIRE_MAX_MSG (256u << 20)

enum spa_msg_type {
	SPA_MSG_HELLO = 1,     /* edge -> cloud: method, split, merge, fingerprints */
	SPA_MSG_HELLO_OK = 2,  /* cloud -> edge: accepted; base model shape */
	SPA_MSG_UPLOAD = 3,    /* edge -> cloud: cloud-resident plugin weights (GGUF image) */
	SPA_MSG_PROMPT = 4,    /* edge -> cloud: token ids, n_gen, sampling parameters */
	SPA_MSG_TAPS = 5,      /* cloud -> edge: (L+1) x r taps (lst/spa, cloud-linear) */
	SPA_MSG_SIDE_OUT = 6,  /* edge -> cloud: relu(s), r values */
	SPA_MSG_LORA_X = 7,    /* cloud -> edge: n_rows x H normed inputs of block `layer` */
	SPA_MSG_LORA_D = 8,    /* edge -> cloud: n_rows x (H + kv_dim) deltas for q and v */
	SPA_MSG_ADAPTER_Y = 9, /* cloud -> edge: n_rows x H sublayer outputs */
	SPA_MSG_ADAPTER_D = 10,/* edge -> cloud: n_rows x H adapter deltas */
	SPA_MSG_TOKEN = 11,    /* cloud -> edge: one generated token id (streamed, never waited on) */
	SPA_MSG_HEARTBEAT = 12,
	SPA_MSG_ERROR = 13,    /* either way: aux = error code, payload = UTF-8 message */
	SPA_MSG_BYE = 14,      /* either way: the session ends cleanly */
	SPA_MSG_RESID = 15,    /* cloud -> edge: (L+1) x H (e, y_i) (lst/spa, edge-all) */
	SPA_MSG_SIDE_G = 16,   /* edge -> cloud: g, H values (edge-all) */
	SPA_MSG_DONE = 17,     /* cloud -> edge: generation finished; cloud-side statistics */
	SPA_MSG_TYPE_END
};

enum spa_wire_dtype { SPA_WIRE_BYTES = 0, SPA_WIRE_F32 = 1, SPA_WIRE_F16 = 2, SPA_WIRE_I32 = 3,
		      SPA_WIRE_DTYPE_END };

struct spa_wire_hdr {
	uint32_t magic;
	uint8_t version, type, dtype, flags;
	uint32_t session, seq, pos;
	uint16_t layer, n_rows;
	uint32_t payload_len, frag_off, msg_len, aux;
	uint64_t tx_ns;
	uint32_t crc, reserved;
};

/* Name of a message type ("TAPS"), "?" when unknown. */
const char *spa_msg_type_name(unsigned type);

/* CRC32C (Castagnoli, reflected, init ~0, final xor ~0): crc32c(0, "123456789", 9) = 0xe3069283.
 * Chain by passing the previous result as crc. Hardware instruction when the CPU has SSE4.2. */
uint32_t spa_crc32c(uint32_t crc, const void *buf, size_t len);

/* spa_crc32c of src, copying its len bytes to dst in the same pass (dst and src must not
 * overlap). Thread-safe; hot path (the receive side checks and places a payload with it). */
uint32_t spa_crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);

/* Encode h into 56 bytes at out (little-endian, crc field written as given). */
void spa_wire_hdr_encode(const struct spa_wire_hdr *h, uint8_t out[SPA_WIRE_HDR_SIZE]);
/* Decode and validate the fields that do not need the payload: magic, version, type, dtype,
 * flags, reserved, payload_len <= max_frame_payload, msg_len <= SPA_WIRE_MAX_MSG,
 * frag_off + payload_len <= msg_len. Returns 0 or -SPA_EPROTO with a message in err. */
int spa_wire_hdr_decode(const uint8_t in[SPA_WIRE_HDR_SIZE], struct spa_wire_hdr *h,
			size_t max_frame_payload, struct spa_errbuf *err);
/* CRC of a frame's header alone (crc field taken as 0): continue it over the payload with
 * spa_crc32c or spa_crc32c_copy to get spa_wire_frame_crc. */
uint32_t spa_wire_hdr_crc(const uint8_t hdr[SPA_WIRE_HDR_SIZE]);
/* Write crc into the crc field of an encoded header (little-endian, as the encoder). */
void spa_wire_hdr_set_crc(uint8_t hdr[SPA_WIRE_HDR_SIZE], uint32_t crc);
/* CRC of a frame: header bytes (crc field taken as 0) then payload. */
uint32_t spa_wire_frame_crc(const uint8_t hdr[SPA_WIRE_HDR_SIZE], const void *payload,
			    size_t payload_len);

#endif
