/* spa: the reliability of a connection over a transport that may lose, repeat or reorder frames
 * (runtime/rel.c; used by runtime/conn.c; spec: docs/wire-protocol.md, "Retransmission").
 *
 * The bookkeeping only, no I/O: the send window keeps every data frame sent (its bytes, as they
 * went out, sealed or with their CRC) until the peer acknowledges it; the receive window keeps
 * the frames that came ahead of the next one due, checked, until the gap before them fills; an
 * ACK says what arrived (the next frame due, and a bitmap of those past it: its zero bits below
 * the highest set one are the gaps, the NACKs); the retransmission timer is set from the round
 * trip measured on frames acknowledged after a single send (RFC 6298, Karn's rule).
 *
 * Frame numbers are 64-bit here (the wire carries their low 32 bits). The windows are W frames
 * (a power of two): the sender never has more than W frames unacknowledged, so the receiver
 * takes any frame in [next due, next due + W). A struct spa_rel belongs to one connection, used
 * by one thread; nothing here allocates after spa_rel_init (the hot path). */
#ifndef SPA_REL_H
#define SPA_REL_H

#include <stddef.h>
#include <stdint.h>

#define SPA_REL_ACK_MAX_WORDS 32 /* bitmap words an ACK carries at most (2048 frames) */
#define SPA_REL_ACK_SIZE(n) (16 + 8 * (size_t)(n)) /* ACK payload of n bitmap words */
#define SPA_REL_ACK_PROBE 1u     /* ACK flag: the sender waits and has nothing past the bitmap */

struct spa_rel_tx {
	uint32_t len;       /* bytes of the frame kept (0: slot free) */
	uint8_t acked;      /* selectively acknowledged (beyond the cumulative point) */
	uint8_t n_tx;       /* times sent */
	int64_t first_ns;   /* first send */
	int64_t last_ns;    /* latest send */
};

struct spa_rel {
	uint32_t w;                 /* window, frames (power of two) */
	size_t slot_size;           /* bytes per slot (the connection's frame limit) */

	/* send side: frames [una, nxt) are out; slots hold them until acknowledged */
	uint64_t una, nxt;
	struct spa_rel_tx *tx;
	uint8_t *tx_mem;
	int64_t srtt, rttvar, rto;  /* ns; rto: the current timeout, backoff included */
	int64_t rto_base;           /* ... and without it (srtt + 4 rttvar, bounded) */
	int64_t rto_min, rto_max;

	/* receive side: frames below next are delivered (or handed up); slots hold frames
	 * that came ahead of it, checked */
	uint64_t next, hi;          /* hi: one past the highest frame number seen */
	uint32_t *rx_len;           /* bytes in the slot (0: empty) */
	uint8_t *rx_mem;
	uint32_t rx_held;           /* slots in use */
	int ack_due;                /* something arrived that the peer has not been told */

	uint64_t retransmits, acks_rx, dup_rx;
};

/* Set up windows of w frames (rounded down to a power of two, at least 16) of slot_size
 * bytes each, the timer at first rto0_ns within [rto_min_ns, rto_max_ns]. Returns 0 or
 * -ENOMEM. */
int spa_rel_init(struct spa_rel *r, uint32_t w, size_t slot_size, int64_t rto0_ns,
		 int64_t rto_min_ns, int64_t rto_max_ns);
void spa_rel_fini(struct spa_rel *r);

/* ---- send side ---- */

/* May another frame go out (fewer than w unacknowledged)? */
static inline int spa_rel_can_send(const struct spa_rel *r)
{
	return r->nxt - r->una < r->w;
}
/* The slot for the next frame (number r->nxt): slot_size bytes to build it in. */
static inline uint8_t *spa_rel_slot(const struct spa_rel *r, uint64_t pkt)
{
	return r->tx_mem + (size_t)(pkt & (r->w - 1)) * r->slot_size;
}
/* The next frame, len bytes, was built in its slot and sent at now: keep it. */
void spa_rel_sent(struct spa_rel *r, size_t len, int64_t now);
/* Take the peer's cumulative acknowledgment: every frame below next arrived. Frees their
 * slots, takes a round-trip sample from the newest of them when it was sent once. Returns the
 * frames newly acknowledged. */
uint64_t spa_rel_acked(struct spa_rel *r, uint64_t next, int64_t now);
/* Decode an ACK payload and take it (cumulative part and bitmap). Frames the bitmap shows
 * missing below the highest one that arrived, and last sent at least a round trip ago, are
 * written to retx[max] (oldest first): send them again. A PROBE (the peer waits, and has
 * nothing past what it says) adds the oldest frame still unacknowledged when it went out at
 * least probe_age_ns ago: its loss is the peer's wait. Returns the count, or -1 when the
 * payload is malformed (its length, flags, words, or an acknowledgment of frames never
 * sent). */
int spa_rel_on_ack(struct spa_rel *r, const uint8_t *p, size_t len, int64_t now,
		   int64_t probe_age_ns, uint64_t *retx, int max);
/* The retransmission timer: the oldest unacknowledged frame not selectively acknowledged,
 * when its last send is rto or more ago. The timer then backs off, doubling, up to 8 times its
 * base (and rto_max): losses here are the network's, not congestion's, and a long backoff
 * would leave a request and reply waiting through a run of bad luck. Progress (a cumulative
 * acknowledgment) takes the backoff away.
 * Returns 1 with *pkt, else 0. */
int spa_rel_timeout(struct spa_rel *r, int64_t now, uint64_t *pkt);
/* When the timer will next fire (INT64_MAX: nothing outstanding). */
int64_t spa_rel_next_timeout(const struct spa_rel *r);
/* The oldest frame out and not acknowledged in any way, when its last send is at least
 * min_age_ns ago: 1 with *pkt, else 0. */
int spa_rel_oldest(const struct spa_rel *r, int64_t now, int64_t min_age_ns, uint64_t *pkt);
/* Frame pkt is being sent again at now (its bytes are in its slot, its length returned). */
size_t spa_rel_resend(struct spa_rel *r, uint64_t pkt, int64_t now);

/* ---- receive side ---- */

/* Where data frame pkt stands: */
enum spa_rel_rx_kind {
	SPA_REL_NEXT,   /* the next one due: take it (spa_rel_delivered once it is in place) */
	SPA_REL_AHEAD,  /* ahead of it, in the window, not held yet: check it and spa_rel_hold */
	SPA_REL_DUP,    /* below next, or held already: a repeat (the peer lacks our ACK) */
	SPA_REL_BEYOND, /* past the window: the peer ignores it, drop it */
};
enum spa_rel_rx_kind spa_rel_classify(const struct spa_rel *r, uint64_t pkt);
/* Frame pkt's receive slot (slot_size bytes), to check a frame straight into. */
static inline uint8_t *spa_rel_rx_slot(const struct spa_rel *r, uint64_t pkt)
{
	return r->rx_mem + (size_t)(pkt & (r->w - 1)) * r->slot_size;
}
/* Keep frame pkt (AHEAD, checked: its bytes as they are to be handed up later) in its slot
 * (copied there unless frame is the slot already). */
void spa_rel_hold(struct spa_rel *r, uint64_t pkt, const uint8_t *frame, size_t len);
/* The frame at next, when it is held: 1 with *frame, *len (valid until spa_rel_delivered). */
int spa_rel_peek(const struct spa_rel *r, const uint8_t **frame, size_t *len);
/* The frame at next was handed up: next moves on (its slot, when it was held, is free). */
void spa_rel_delivered(struct spa_rel *r);
/* The ACK payload telling the peer what arrived (into out, SPA_REL_ACK_SIZE(max words)),
 * flags SPA_REL_ACK_*; returns its length. Clears ack_due. */
size_t spa_rel_ack(struct spa_rel *r, uint8_t *out, uint32_t flags);
/* A gap: frames held past the next one due, which has not come. */
static inline int spa_rel_gap(const struct spa_rel *r)
{
	return r->rx_held && !r->rx_len[r->next & (r->w - 1)];
}

#endif
