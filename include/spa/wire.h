/* spa: the wire format shared by every transport (runtime/wire.c). Spec: docs/wire-protocol.md.
 *
 * Version 2. Every frame is a 64-byte little-endian header followed by payload_len bytes of
 * payload and, in a sealed frame (flags & SPA_WIRE_SEALED), a 16-byte AEAD tag (32 with
 * SPA_WIRE_TAG32). A message
 * larger than a link's frame limit travels as several frames (fragments) with the same seq,
 * frag_off giving each fragment's place in the msg_len-byte message. Frames are numbered per
 * direction (pkt) by the connection layer (runtime/conn.c), which also owns conn, ack and the
 * tag: it runs the handshake, seals and opens frames, acknowledges and retransmits them.
 *
 *   off size field
 *     0  4   magic        0x31415053 ("SPA1" as bytes 53 50 41 31)
 *     4  1   version      2
 *     5  1   type         enum spa_msg_type
 *     6  1   dtype        enum spa_wire_dtype of the payload
 *     7  1   flags        SPA_WIRE_SEALED, SPA_WIRE_TAG32; other bits 0 (receivers refuse
 *                         them)
 *     8  8   conn         connection id, random, chosen by the connecting side
 *    16  4   pkt          frame number in this direction (low 32 bits; data and control
 *                         frames count apart)
 *    20  4   ack          reliable connections: every data frame of the other direction below
 *                         this has arrived (low 32 bits); else 0
 *    24  4   seq          message sequence number, per direction, from 0
 *    28  4   pos          token position the message is about
 *    32  2   layer        block index (LORA_*, ADAPTER_*), else 0
 *    34  2   n_rows       positions carried (batched prefill), else 1
 *    36  4   payload_len  bytes of payload in this frame (the tag not counted)
 *    40  4   frag_off     offset of this fragment in the message
 *    44  4   msg_len      bytes of the whole message payload
 *    48  4   aux          replies: edge compute time in ns (saturating); ERROR, CLOSE: code
 *    52  4   crc          CRC32C of header (crc = 0) and payload; 0 in a sealed frame
 *    56  8   tx_ns        sender's CLOCK_MONOTONIC at send (link delay emulation, traces)
 */
#ifndef SPA_WIRE_H
#define SPA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define SPA_WIRE_MAGIC 0x31415053u
#define SPA_WIRE_VERSION 2
#define SPA_WIRE_HDR_SIZE 64
#define SPA_WIRE_CRC_OFF 52 /* offset of the crc field in the header */
#define SPA_WIRE_CONN_OFF 8 /* offset of the connection id */
#define SPA_WIRE_TAG_SIZE 16 /* AEAD tag after the payload of a sealed frame ... */
#define SPA_WIRE_TAG32_SIZE 32 /* ... or, with SPA_WIRE_TAG32, this long (AEGIS-128L) */
/* Largest message any spa peer accepts (UPLOAD of a 7B side plugin is ~20 MB). */
#define SPA_WIRE_MAX_MSG (256u << 20)

/* flags */
#define SPA_WIRE_SEALED 0x01u /* payload encrypted, a 16-byte tag follows it; crc is 0 */
#define SPA_WIRE_TAG32 0x02u  /* (sealed only) the tag is 32 bytes */

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
	SPA_MSG_HEARTBEAT = 12,/* either way, connection layer: I am alive (control frame) */
	SPA_MSG_ERROR = 13,    /* either way: aux = error code, payload = UTF-8 message */
	SPA_MSG_BYE = 14,      /* either way: the session ends cleanly */
	SPA_MSG_RESID = 15,    /* cloud -> edge: (L+1) x H (e, y_i) (lst/spa, edge-all) */
	SPA_MSG_SIDE_G = 16,   /* edge -> cloud: g, H values (edge-all) */
	SPA_MSG_DONE = 17,     /* cloud -> edge: generation finished; cloud-side statistics */
	/* connection layer (runtime/conn.c): control frames, one frame each, never delivered
	 * to the link's user */
	SPA_MSG_CONNECT = 18,  /* connecting side -> listener: handshake, first message */
	SPA_MSG_ACCEPT = 19,   /* listener -> connecting side: handshake, second message */
	SPA_MSG_ACK = 20,      /* either way: frames received, and the gaps (NACK) */
	SPA_MSG_CLOSE = 21,    /* either way: the connection is closed (aux: error code or 0) */
	SPA_MSG_TYPE_END
};

enum spa_wire_dtype { SPA_WIRE_BYTES = 0, SPA_WIRE_F32 = 1, SPA_WIRE_F16 = 2, SPA_WIRE_I32 = 3,
		      SPA_WIRE_DTYPE_END };

struct spa_wire_hdr {
	uint32_t magic;
	uint8_t version, type, dtype, flags;
	uint64_t conn;
	uint32_t pkt, ack;
	uint32_t seq, pos;
	uint16_t layer, n_rows;
	uint32_t payload_len, frag_off, msg_len, aux;
	uint32_t crc;
	uint64_t tx_ns;
};

/* Is type a connection-layer control frame (HEARTBEAT, CONNECT, ACCEPT, ACK, CLOSE)? */
static inline int spa_wire_is_ctl(unsigned type)
{
	return type == SPA_MSG_HEARTBEAT || (type >= SPA_MSG_CONNECT && type < SPA_MSG_TYPE_END);
}

/* Bytes of a frame with this decoded header: header, payload and, when sealed, the tag. */
static inline size_t spa_wire_frame_size(const struct spa_wire_hdr *h)
{
	return SPA_WIRE_HDR_SIZE + (size_t)h->payload_len +
	       (!(h->flags & SPA_WIRE_SEALED) ? 0 : (h->flags & SPA_WIRE_TAG32) ? SPA_WIRE_TAG32_SIZE
										: SPA_WIRE_TAG_SIZE);
}

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
 * flags, payload_len <= max_frame_payload, msg_len <= SPA_WIRE_MAX_MSG, frag_off +
 * payload_len <= msg_len, a control frame in one piece, crc 0 in a sealed frame. Returns 0 or
 * -SPA_EPROTO with a message in err (may be NULL). Thread-safe; hot path. */
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
/* Is f[len] a well-formed CONNECT frame (decodes, one piece, its size, its CRC)? 1 and *conn
 * (its connection id) when it is, else 0. For drivers that must tell a new connection from
 * noise before the connection layer runs (udp, dpdk: accept). Thread-safe. */
int spa_wire_is_connect(const uint8_t *f, size_t len, uint64_t *conn);

#endif
