/* Reliability bookkeeping: send and receive windows, ACKs, the retransmission timer
 * (include/spa/rel.h). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spa/rel.h"

static inline void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int spa_rel_init(struct spa_rel *r, uint32_t w, size_t slot_size, int64_t rto0_ns,
		 int64_t rto_min_ns, int64_t rto_max_ns)
{
	memset(r, 0, sizeof *r);
	uint32_t p = 16;
	while (p * 2 <= w && p * 2 <= 64u * SPA_REL_ACK_MAX_WORDS)
		p *= 2;
	r->w = p;
	r->slot_size = slot_size;
	r->tx = calloc(p, sizeof *r->tx);
	r->rx_len = calloc(p, sizeof *r->rx_len);
	r->tx_mem = malloc((size_t)p * slot_size);
	r->rx_mem = malloc((size_t)p * slot_size);
	if (!r->tx || !r->rx_len || !r->tx_mem || !r->rx_mem) {
		spa_rel_fini(r);
		return -ENOMEM;
	}
	r->rto_min = rto_min_ns;
	r->rto_max = rto_max_ns;
	r->rto = rto0_ns < rto_min_ns ? rto_min_ns : rto0_ns > rto_max_ns ? rto_max_ns : rto0_ns;
	r->rto_base = r->rto;
	return 0;
}

void spa_rel_fini(struct spa_rel *r)
{
	free(r->tx);
	free(r->rx_len);
	free(r->tx_mem);
	free(r->rx_mem);
	memset(r, 0, sizeof *r);
}

/* ---- send side ------------------------------------------------------------------------- */

static inline struct spa_rel_tx *txs(const struct spa_rel *r, uint64_t pkt)
{
	return &r->tx[pkt & (r->w - 1)];
}

void spa_rel_sent(struct spa_rel *r, size_t len, int64_t now)
{
	struct spa_rel_tx *t = txs(r, r->nxt);
	t->len = (uint32_t)len;
	t->acked = 0;
	t->n_tx = 1;
	t->first_ns = t->last_ns = now;
	r->nxt++;
}

/* RFC 6298: the round-trip sample rtt updates srtt, rttvar and the timeout. */
static void rtt_sample(struct spa_rel *r, int64_t rtt)
{
	if (rtt < 0)
		return;
	if (!r->srtt) {
		r->srtt = rtt ? rtt : 1;
		r->rttvar = rtt / 2;
	} else {
		int64_t d = r->srtt > rtt ? r->srtt - rtt : rtt - r->srtt;
		r->rttvar = (3 * r->rttvar + d) / 4;
		r->srtt = (7 * r->srtt + rtt) / 8;
	}
	int64_t rto = r->srtt + 4 * r->rttvar;
	r->rto = r->rto_base = rto < r->rto_min ? r->rto_min : rto > r->rto_max ? r->rto_max : rto;
}

uint64_t spa_rel_acked(struct spa_rel *r, uint64_t next, int64_t now)
{
	if (next <= r->una || next > r->nxt)
		return 0; /* old news, or frames never sent (the caller checks those) */
	const struct spa_rel_tx *last = txs(r, next - 1);
	/* Karn: a frame sent more than once gives no sample (which send was acknowledged?) */
	if (last->n_tx == 1)
		rtt_sample(r, now - last->first_ns);
	else
		r->rto = r->rto_base; /* progress: the backed-off timer comes back (as Linux does) */
	uint64_t n = next - r->una;
	for (uint64_t p = r->una; p < next; p++)
		txs(r, p)->len = 0;
	r->una = next;
	r->acks_rx++;
	return n;
}

int spa_rel_on_ack(struct spa_rel *r, const uint8_t *p, size_t len, int64_t now,
		   int64_t probe_age_ns, uint64_t *retx, int max)
{
	if (len < 16)
		return -1;
	uint64_t next = get64(p);
	uint32_t n = get32(p + 8), flags = get32(p + 12);
	if ((flags & ~SPA_REL_ACK_PROBE) || n > SPA_REL_ACK_MAX_WORDS ||
	    len != SPA_REL_ACK_SIZE(n) || next > r->nxt)
		return -1;
	/* selective part: frames past next that arrived; the highest first (a frame never sent
	 * makes the whole ACK malformed: nothing of it is taken) */
	uint64_t highest = 0;
	int any = 0;
	for (uint32_t k = n; k-- > 0;) {
		uint64_t bits = get64(p + 16 + 8 * (size_t)k);
		if (bits) {
			highest = next + 1 + 64ull * k + 63 - (uint64_t)__builtin_clzll(bits);
			any = 1;
			break;
		}
	}
	if (any && highest >= r->nxt)
		return -1;
	spa_rel_acked(r, next, now);
	for (uint32_t k = 0; any && k < n; k++) {
		uint64_t bits = get64(p + 16 + 8 * (size_t)k);
		for (; bits; bits &= bits - 1) {
			uint64_t pkt = next + 1 + 64ull * k + (uint64_t)__builtin_ctzll(bits);
			if (pkt >= r->una)
				txs(r, pkt)->acked = 1;
		}
	}
	int k = 0;
	if (any) {
		/* the gaps below the highest frame that arrived were lost: send them again,
		 * unless that was done less than a round trip ago (this ACK may predate it) */
		int64_t wait = r->srtt ? r->srtt : r->rto;
		for (uint64_t pkt = r->una; pkt < highest && k < max; pkt++) {
			const struct spa_rel_tx *t = txs(r, pkt);
			if (!t->acked && t->len && now - t->last_ns >= wait)
				retx[k++] = pkt;
		}
	}
	uint64_t old;
	if ((flags & SPA_REL_ACK_PROBE) && k < max && spa_rel_oldest(r, now, probe_age_ns, &old) &&
	    (!k || old > retx[k - 1]))
		retx[k++] = old;
	return k;
}

int64_t spa_rel_next_timeout(const struct spa_rel *r)
{
	for (uint64_t p = r->una; p < r->nxt; p++) {
		const struct spa_rel_tx *t = txs(r, p);
		if (!t->acked && t->len)
			return t->last_ns + r->rto;
	}
	return INT64_MAX;
}

int spa_rel_timeout(struct spa_rel *r, int64_t now, uint64_t *pkt)
{
	for (uint64_t p = r->una; p < r->nxt; p++) {
		const struct spa_rel_tx *t = txs(r, p);
		if (t->acked || !t->len)
			continue;
		if (now - t->last_ns < r->rto)
			return 0;
		*pkt = p;
		int64_t cap = 8 * r->rto_base < r->rto_max ? 8 * r->rto_base : r->rto_max;
		r->rto = r->rto * 2 > cap ? cap : r->rto * 2;
		return 1;
	}
	return 0;
}

int spa_rel_oldest(const struct spa_rel *r, int64_t now, int64_t min_age_ns, uint64_t *pkt)
{
	for (uint64_t p = r->una; p < r->nxt; p++) {
		const struct spa_rel_tx *t = txs(r, p);
		if (t->acked || !t->len)
			continue;
		if (now - t->last_ns < min_age_ns)
			return 0;
		*pkt = p;
		return 1;
	}
	return 0;
}

size_t spa_rel_resend(struct spa_rel *r, uint64_t pkt, int64_t now)
{
	struct spa_rel_tx *t = txs(r, pkt);
	t->last_ns = now;
	if (t->n_tx < UINT8_MAX)
		t->n_tx++;
	r->retransmits++;
	return t->len;
}

/* ---- receive side ---------------------------------------------------------------------- */

enum spa_rel_rx_kind spa_rel_classify(const struct spa_rel *r, uint64_t pkt)
{
	if (pkt < r->next)
		return SPA_REL_DUP;
	if (pkt - r->next >= r->w)
		return SPA_REL_BEYOND;
	if (pkt == r->next)
		return r->rx_len[pkt & (r->w - 1)] ? SPA_REL_DUP : SPA_REL_NEXT;
	return r->rx_len[pkt & (r->w - 1)] ? SPA_REL_DUP : SPA_REL_AHEAD;
}

void spa_rel_hold(struct spa_rel *r, uint64_t pkt, const uint8_t *frame, size_t len)
{
	size_t i = (size_t)(pkt & (r->w - 1));
	if (frame != r->rx_mem + i * r->slot_size)
		memcpy(r->rx_mem + i * r->slot_size, frame, len);
	r->rx_len[i] = (uint32_t)len;
	r->rx_held++;
	if (pkt >= r->hi)
		r->hi = pkt + 1;
	r->ack_due = 1;
}

int spa_rel_peek(const struct spa_rel *r, const uint8_t **frame, size_t *len)
{
	size_t i = (size_t)(r->next & (r->w - 1));
	if (!r->rx_len[i])
		return 0;
	*frame = r->rx_mem + i * r->slot_size;
	*len = r->rx_len[i];
	return 1;
}

void spa_rel_delivered(struct spa_rel *r)
{
	size_t i = (size_t)(r->next & (r->w - 1));
	if (r->rx_len[i]) {
		r->rx_len[i] = 0;
		r->rx_held--;
	}
	r->next++;
	if (r->next > r->hi)
		r->hi = r->next;
	r->ack_due = 1;
}

size_t spa_rel_ack(struct spa_rel *r, uint8_t *out, uint32_t flags)
{
	/* words up to the highest frame held */
	uint32_t n = 0;
	if (r->hi > r->next + 1) {
		uint64_t span = r->hi - r->next - 1;
		n = (uint32_t)((span + 63) / 64);
		if (n > SPA_REL_ACK_MAX_WORDS)
			n = SPA_REL_ACK_MAX_WORDS;
	}
	put64(out, r->next);
	for (int i = 0; i < 4; i++) {
		out[8 + i] = (uint8_t)(n >> (8 * i));
		out[12 + i] = (uint8_t)(flags >> (8 * i));
	}
	for (uint32_t k = 0; k < n; k++) {
		uint64_t bits = 0;
		for (uint32_t b = 0; b < 64; b++) {
			uint64_t pkt = r->next + 1 + 64ull * k + b;
			if (pkt - r->next < r->w && r->rx_len[pkt & (r->w - 1)])
				bits |= 1ull << b;
		}
		put64(out + 16 + 8 * (size_t)k, bits);
	}
	r->ack_due = 0;
	return SPA_REL_ACK_SIZE(n);
}
