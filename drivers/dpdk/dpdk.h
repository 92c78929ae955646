/* dpdk driver: what tests and tools may see of it beyond the vtable (drivers/dpdk/dpdk.c).
 * Plain C types only, so that a caller needs no DPDK header. Not on the hot path unless said.
 *
 * On the wire (docs/dpdk.md): Ethernet header, then optionally IPv4 (20 bytes, no options) +
 * UDP, then the spa frame (64-byte header + payload). Without UDP the EtherType is
 * SPA_DPDK_ETHERTYPE unless the URI names another. */
#ifndef SPA_DRV_DPDK_H
#define SPA_DRV_DPDK_H

#include <stddef.h>
#include <stdint.h>

#include "spa/drv/link.h"

/* IEEE 802 "local experimental EtherType 1" (IEEE Std 802): never assigned to a protocol. */
#define SPA_DPDK_ETHERTYPE 0x88B5
#define SPA_DPDK_UDP_PORT 4789u /* no default: shown in examples only */

/* Per-link counters of the driver (the link layer's own are in spa_link_stats). */
struct spa_dpdk_stats {
	uint64_t tx_frames, rx_frames;   /* DATA frames sent / handed to the link layer */
	uint64_t tx_zc_bytes;            /* payload bytes sent as external buffers (no copy) */
	uint64_t tx_copied;              /* payload bytes copied on send (PMD without chains) */
	uint64_t rx_linearised;          /* bytes copied to make a chained frame contiguous */
	/* frames taken off the port and dropped, never handed to the link layer (counted on
	 * the port: they may have arrived while another session or the listener polled) */
	uint64_t drop_short;             /* shorter than the headers they claim */
	uint64_t drop_foreign;           /* other EtherType / IP protocol / UDP port / spa magic
					    or wire version */
	uint64_t drop_mac;               /* destination MAC neither ours nor broadcast */
	uint64_t drop_stale;             /* our format, but no open connection's (nor a CONNECT
					    for the listener), or its link's queue was full */
};

/* Fill st with l's counters; l must be a dpdk link. Returns 0 or -EINVAL. */
int spa_dpdk_link_stats(struct spa_link_base *l, struct spa_dpdk_stats *st);
/* Put frame[len] on l's port as it is (a whole Ethernet frame, copied into an mbuf): for tests
 * that inject foreign, truncated or garbage frames. Returns 0, -EINVAL, -ENOBUFS, -EAGAIN. */
int spa_dpdk_send_raw(struct spa_link_base *l, const void *frame, size_t len);
/* The encapsulation l puts before each spa frame (Ethernet [+ IPv4 + UDP]) into hdr[cap]; returns its length or -ENOSPC. For tests that
 * build near-miss frames. */
int spa_dpdk_link_encap(struct spa_link_base *l, uint8_t *hdr, size_t cap);

#endif
