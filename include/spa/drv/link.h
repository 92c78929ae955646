/* spa: what a transport driver fills in (drivers/<name>/). Control operations (listen, accept,
 * connect, close) are apart from the fast path (send_frame, recv_frame, release_frame).
 *
 * A driver moves frames: one header + payload as built by runtime/link.c, never more than
 * max_frame bytes. It neither parses nor checks them beyond what it needs to delimit a frame
 * (a byte-stream driver reads the header's payload_len through spa_wire_hdr_decode). */
#ifndef SPA_DRV_LINK_H
#define SPA_DRV_LINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "../error.h"
#include "../link.h"

struct spa_link_driver;

/* Every driver's link and listener begin with these (the driver's own state follows). local:
 * set by the driver when the peers it reaches share this host (shm, memif, loopback
 * addresses): there a link may run unauthenticated (docs/wire-protocol.md, "Keys"). datagram:
 * set by a driver whose links differ (dpdk: memif is a stream, af_packet, af_xdp and NICs are
 * datagram transports), as SPA_DRV_DATAGRAM says for all of a driver's links. */
struct spa_link_base {
	const struct spa_link_driver *drv;
	int local;
	int datagram;
};
struct spa_listener_base {
	const struct spa_link_driver *drv;
	int local;
};

/* spa_link_driver.flags */
enum {
	/* Frames are datagrams: they may be lost, duplicated or reordered on the way, and
	 * anyone may send one to the port. The connection layer then retransmits what is lost,
	 * drops repeats (stats.dup_frames) and puts the order right, and drops a datagram that
	 * is not a well-formed frame of the connection (short, bad header, length not matching
	 * its header, failing its CRC or tag) as noise instead of ending the session
	 * (docs/wire-protocol.md, "Retransmission"). */
	SPA_DRV_DATAGRAM = 1u << 0,
	/* The driver copies every frame anyway (shm: into its ring): frame_reserve is the way
	 * to send plain frames too, with the CRC computed in the copy's pass. Without it
	 * frame_reserve serves only sealed frames (encrypted straight into the driver's
	 * memory), and plain ones go by send_frame (dpdk: the payload attached, not copied). */
	SPA_DRV_COPIES = 1u << 1,
	/* The peer's kernel acknowledges what we send and ends the connection when the peer
	 * process dies (tcp). Liveness then rests on it: a waiting side sends HEARTBEATs, and
	 * the driver gives up when they stay unacknowledged for the silence limit (set_dead),
	 * but nothing speaks for an application that is away (no keeper): data that reaches a
	 * socket its peer closed resets the connection, which can throw away the peer's last
	 * frames on their way to us. */
	SPA_DRV_KERNEL_ACKS = 1u << 2,
};

/* Who is inside a connection: its application thread (through the link) or the process's
 * keeper thread, which sends HEARTBEATs, ACKs and retransmissions while the application is
 * away (runtime/conn.c, spa_guard_enter). Zero-initialised. */
struct spa_guard {
	_Atomic int app_in, keeper_in;
};

struct spa_link_driver {
	const char *scheme;   /* "shm", "tcp", "udp" */
	size_t max_frame;     /* largest frame (header + payload) the driver moves (a link may
				 have a smaller one: link_max_frame below) */
	unsigned flags;       /* SPA_DRV_* */
	/* NULL: the driver's links are independent of one another (each may be used from its
	 * own thread), and each connection has a guard of its own. Else the one guard of all of
	 * the driver's links and listeners in the process (dpdk: links share ports, which are
	 * used from one thread at a time): link.c holds it around connect, accept, listen and
	 * close too. */
	struct spa_guard *guard;

	/* control */
	int (*listen)(struct spa_listener_base **out, const char *addr, struct spa_errbuf *err);
	int (*accept)(struct spa_listener_base *l, struct spa_link_base **out, int64_t timeout_ns,
		      struct spa_errbuf *err);
	void (*listener_close)(struct spa_listener_base *l);
	int (*connect)(struct spa_link_base **out, const char *addr, int64_t timeout_ns,
		       struct spa_errbuf *err);
	void (*close)(struct spa_link_base *l);

	/* fast path */
	/* Send one frame made of iov (total <= max_frame). Returns 0, -SPA_ECLOSED, -errno. */
	int (*send_frame)(struct spa_link_base *l, const struct iovec *iov, int n_iov);
	/* Poll for one frame until deadline_ns (CLOCK_MONOTONIC, < 0: forever). On 0, *frame and
	 * *len describe it, valid until release_frame (zero copy where the driver can: shm hands
	 * out ring memory). Returns 0, -ETIMEDOUT, -SPA_ECLOSED, -SPA_EPROTO, -errno. */
	int (*recv_frame)(struct spa_link_base *l, const uint8_t **frame, size_t *len,
			  int64_t deadline_ns);
	void (*release_frame)(struct spa_link_base *l);

	/* Optional slots (NULL in drivers that need none); runtime/link.c calls them when set. */
	/* Before listen or connect: the caller's link options (dpdk reads opts->eal). Not on the
	 * hot path. Returns 0 or a negative code with err filled. */
	int (*prepare)(const struct spa_link_opts *o, struct spa_errbuf *err);
	/* This link's frame limit where it depends on the link (dpdk: its port's MTU): link.c
	 * then uses it instead of max_frame (it is never larger). Both ends of a link get the
	 * same value when they are configured alike (same MTU). */
	size_t (*link_max_frame)(struct spa_link_base *l);
	/* Payload bytes the driver copied on send on this link so far (link.c adds them to
	 * spa_link_stats.copied_tx; 0 on a zero-copy path). Cheap; any thread of the link. */
	uint64_t (*copied_tx)(struct spa_link_base *l);
	/* Write a frame straight into the driver's memory (shm: its ring; dpdk: an mbuf):
	 * frame_reserve gives room for len bytes (<= max_frame) at *out, frame_commit sends what
	 * was written there. The connection layer then seals the payload, or computes its CRC
	 * (SPA_DRV_COPIES), in that copy's pass instead of a pass of its own. Nothing else is
	 * sent on the link between the two. Hot path; return as send_frame. */
	int (*frame_reserve)(struct spa_link_base *l, size_t len, uint8_t **out);
	int (*frame_commit)(struct spa_link_base *l);
	/* The connection id l carries, once the connection layer knows it (the connecting
	 * side: before its CONNECT; the accepting side: from the CONNECT). For drivers that
	 * sort the frames of several links on one port by id (dpdk). Not on the hot path. */
	void (*bind_conn)(struct spa_link_base *l, uint64_t conn);
	/* SPA_DRV_KERNEL_ACKS: the connection is dead when what we sent stays unacknowledged
	 * for about dead_ns (tcp: TCP_USER_TIMEOUT, 5 s at the least); the driver then returns
	 * -SPA_ECLOSED. */
	void (*set_dead)(struct spa_link_base *l, int64_t dead_ns);
};

extern const struct spa_link_driver spa_drv_shm;
extern const struct spa_link_driver spa_drv_tcp;
extern const struct spa_link_driver spa_drv_udp;
#ifdef SPA_HAVE_DPDK
/* dpdk:PORTSPEC and memif:SOCKETPATH; the address it gets is the whole URI. */
extern const struct spa_link_driver spa_drv_dpdk;
#endif

/* The driver-level link under a link (runtime/link.c). For tests and tools that must put raw
 * frames on the wire (corrupted, truncated, out of sequence) through base->drv->send_frame, or
 * take them off unchecked. The link keeps ownership; the pointer lives as long as l. */
struct spa_link_base *spa_link_driver_base(struct spa_link *l);

/* The two CRC32C implementations behind spa_crc32c (runtime/wire.c), exported so tests can
 * check that they agree: the table-driven one (any CPU) and the SSE4.2 crc32 instruction one
 * (falls back to the table when the CPU lacks SSE4.2; spa_crc32c_have_hw() says which: 1 when
 * the instruction is used). Same contract as spa_crc32c; thread-safe. */
uint32_t spa_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t spa_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int spa_crc32c_have_hw(void);

#endif
