/* The reliability bookkeeping (runtime/rel.c): windows, ACK encoding and decoding, NACKs,
 * PROBEs, the retransmission timer (RFC 6298, Karn), and the checks on a peer's ACK. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "spa/rel.h"

#define MS 1000000ll

static struct spa_rel r;

static void setup(void)
{
	cr_assert_eq(spa_rel_init(&r, 64, 256, 50 * MS, 2 * MS, 400 * MS), 0);
}

static void teardown(void)
{
	spa_rel_fini(&r);
}

TestSuite(rel, .init = setup, .fini = teardown);

/* Send n frames of one byte each (the byte: the frame number) at time t. */
static void send_n(int n, int64_t t)
{
	for (int i = 0; i < n; i++) {
		uint8_t *s = spa_rel_slot(&r, r.nxt);
		s[0] = (uint8_t)r.nxt;
		spa_rel_sent(&r, 1, t);
	}
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* An ACK payload: next, flags, and the frames past next that arrived. */
static size_t make_ack(uint8_t *out, uint64_t next, uint32_t flags, const uint64_t *got, int n)
{
	uint32_t words = 0;
	for (int i = 0; i < n; i++) {
		uint32_t w = (uint32_t)((got[i] - next - 1) / 64 + 1);
		if (w > words)
			words = w;
	}
	memset(out, 0, SPA_REL_ACK_SIZE(words));
	put64(out, next);
	memcpy(out + 8, &words, 4);
	memcpy(out + 12, &flags, 4);
	for (int i = 0; i < n; i++) {
		uint64_t b = got[i] - next - 1;
		out[16 + 8 * (b / 64) + (b % 64) / 8] |= (uint8_t)(1u << (b % 8));
	}
	return SPA_REL_ACK_SIZE(words);
}

Test(rel, window_is_a_power_of_two_of_at_least_16)
{
	struct spa_rel q;
	cr_assert_eq(spa_rel_init(&q, 100, 64, 0, 1, 2), 0);
	cr_assert_eq(q.w, 64);
	spa_rel_fini(&q);
	cr_assert_eq(spa_rel_init(&q, 3, 64, 0, 1, 2), 0);
	cr_assert_eq(q.w, 16);
	spa_rel_fini(&q);
	cr_assert_eq(spa_rel_init(&q, 1u << 20, 64, 0, 1, 2), 0);
	cr_assert_eq(q.w, 64u * SPA_REL_ACK_MAX_WORDS, "an ACK must cover the whole window");
	spa_rel_fini(&q);
}

Test(rel, a_full_window_stops_the_sender_and_a_cumulative_ack_frees_it)
{
	send_n(64, 0);
	cr_assert_not(spa_rel_can_send(&r));
	cr_assert_eq(spa_rel_acked(&r, 10, 5 * MS), 10);
	cr_assert(spa_rel_can_send(&r));
	cr_assert_eq(r.una, 10);
	/* old news and frames never sent change nothing */
	cr_assert_eq(spa_rel_acked(&r, 5, 6 * MS), 0);
	cr_assert_eq(spa_rel_acked(&r, 65, 6 * MS), 0);
	cr_assert_eq(r.una, 10);
}

Test(rel, rtt_samples_set_the_timer_as_rfc6298_says)
{
	cr_assert_eq(r.rto, 50 * MS);
	send_n(1, 0);
	spa_rel_acked(&r, 1, 10 * MS);
	cr_assert_eq(r.srtt, 10 * MS);
	cr_assert_eq(r.rttvar, 5 * MS);
	cr_assert_eq(r.rto, 30 * MS);
	send_n(1, 20 * MS);
	spa_rel_acked(&r, 2, 22 * MS); /* 2 ms */
	/* rttvar = 3/4 * 5 + 1/4 * |10 - 2| = 5.75; srtt = 7/8 * 10 + 1/8 * 2 = 9 */
	cr_assert_eq(r.srtt, 9 * MS);
	cr_assert_eq(r.rttvar, 5750000);
	cr_assert_eq(r.rto, 9 * MS + 4 * 5750000);
}

Test(rel, karn_no_sample_from_a_frame_sent_twice)
{
	send_n(1, 0);
	spa_rel_acked(&r, 1, 4 * MS);
	int64_t srtt = r.srtt;
	send_n(1, 10 * MS);
	cr_assert_eq(spa_rel_resend(&r, 1, 60 * MS), 1);
	spa_rel_acked(&r, 2, 61 * MS); /* 1 ms after the resend, 51 after the first: no sample */
	cr_assert_eq(r.srtt, srtt);
	cr_assert_eq(r.retransmits, 1);
}

Test(rel, the_timer_fires_on_the_oldest_and_backs_off_to_eight_times_its_base)
{
	send_n(3, 0);
	uint64_t pkt;
	int64_t next = spa_rel_next_timeout(&r);
	cr_assert_eq(next, 50 * MS);
	cr_assert_eq(spa_rel_timeout(&r, 49 * MS, &pkt), 0);
	cr_assert_eq(spa_rel_timeout(&r, 50 * MS, &pkt), 1);
	cr_assert_eq(pkt, 0);
	int64_t t = 50 * MS;
	for (int i = 0; i < 10; i++) {
		spa_rel_resend(&r, pkt, t);
		t += r.rto;
		cr_assert_eq(spa_rel_timeout(&r, t, &pkt), 1);
	}
	cr_assert_eq(r.rto, 400 * MS, "capped by rto_max (8 x 50 ms)");
	/* progress brings it back */
	spa_rel_acked(&r, 1, t + MS);
	cr_assert_eq(r.rto, 50 * MS);
	cr_assert_eq(spa_rel_next_timeout(&r) != INT64_MAX, 1);
	spa_rel_acked(&r, 3, t + 2 * MS);
	cr_assert_eq(spa_rel_next_timeout(&r), INT64_MAX);
}

Test(rel, nacked_gaps_are_sent_again_once_a_round_trip)
{
	send_n(10, 0);
	/* the peer has 0..2, then 5 and 7: 3, 4 and 6 are missing (8 and 9 may be in flight) */
	uint8_t ack[SPA_REL_ACK_SIZE(SPA_REL_ACK_MAX_WORDS)];
	uint64_t got[] = {5, 7}, retx[16];
	size_t n = make_ack(ack, 3, 0, got, 2);
	int k = spa_rel_on_ack(&r, ack, n, 20 * MS, MS, retx, 16);
	cr_assert_eq(k, 3);
	cr_assert_eq(retx[0], 3);
	cr_assert_eq(retx[1], 4);
	cr_assert_eq(retx[2], 6);
	for (int i = 0; i < k; i++)
		spa_rel_resend(&r, retx[i], 20 * MS);
	/* the same ACK again, right away: they were just sent, nothing again yet */
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, 21 * MS, MS, retx, 16), 0);
	/* 3 and 4 arrive: the timer skips 5, selectively acknowledged, and fires on 6 */
	n = make_ack(ack, 5, 0, got + 1, 1);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, 25 * MS, MS, retx, 16), 0);
	uint64_t pkt;
	cr_assert_eq(spa_rel_timeout(&r, 20 * MS + r.rto - 1, &pkt), 0);
	cr_assert_eq(spa_rel_timeout(&r, 20 * MS + r.rto, &pkt), 1);
	cr_assert_eq(pkt, 6);
}

Test(rel, a_probe_asks_for_the_oldest_frame_not_acknowledged)
{
	send_n(4, 0);
	uint8_t ack[SPA_REL_ACK_SIZE(1)];
	uint64_t retx[4];
	size_t n = make_ack(ack, 2, SPA_REL_ACK_PROBE, NULL, 0);
	/* 2 went out 0.5 ms ago: maybe in flight, not yet */
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, MS / 2, MS, retx, 4), 0);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, 3 * MS, MS, retx, 4), 1);
	cr_assert_eq(retx[0], 2);
	/* without the flag, no */
	send_n(0, 0);
	n = make_ack(ack, 2, 0, NULL, 0);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, 9 * MS, MS, retx, 4), 0);
}

Test(rel, malformed_acks_are_refused)
{
	send_n(4, 0);
	uint8_t ack[SPA_REL_ACK_SIZE(SPA_REL_ACK_MAX_WORDS + 1)];
	uint64_t retx[4], got[] = {3};
	size_t n = make_ack(ack, 1, 0, got, 1);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n - 1, MS, MS, retx, 4), -1, "short");
	cr_assert_eq(spa_rel_on_ack(&r, ack, 15, MS, MS, retx, 4), -1, "no room for the head");
	n = make_ack(ack, 5, 0, NULL, 0);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, MS, MS, retx, 4), -1, "acknowledges unsent");
	uint64_t far[] = {4};
	n = make_ack(ack, 1, 0, far, 1);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, MS, MS, retx, 4), -1, "bitmap past sent");
	n = make_ack(ack, 1, 2, NULL, 0);
	cr_assert_eq(spa_rel_on_ack(&r, ack, n, MS, MS, retx, 4), -1, "unknown flag");
	memset(ack, 0, sizeof ack);
	uint32_t words = SPA_REL_ACK_MAX_WORDS + 1;
	memcpy(ack + 8, &words, 4);
	cr_assert_eq(spa_rel_on_ack(&r, ack, SPA_REL_ACK_SIZE(words), MS, MS, retx, 4), -1,
		     "too many words");
	cr_assert_eq(r.una, 0, "nothing of a refused ACK was taken");
}

Test(rel, the_receiver_holds_frames_ahead_and_hands_them_up_in_order)
{
	cr_assert_eq(spa_rel_classify(&r, 0), SPA_REL_NEXT);
	cr_assert_eq(spa_rel_classify(&r, 2), SPA_REL_AHEAD);
	cr_assert_eq(spa_rel_classify(&r, 64), SPA_REL_BEYOND);
	uint8_t b = 2;
	spa_rel_hold(&r, 2, &b, 1);
	cr_assert_eq(spa_rel_classify(&r, 2), SPA_REL_DUP, "held already");
	cr_assert(spa_rel_gap(&r));
	const uint8_t *f;
	size_t len;
	cr_assert_eq(spa_rel_peek(&r, &f, &len), 0, "0 has not come");
	/* the ACK: next 0, frame 2 (bit 1) */
	uint8_t ack[SPA_REL_ACK_SIZE(SPA_REL_ACK_MAX_WORDS)];
	size_t n = spa_rel_ack(&r, ack, 0);
	cr_assert_eq(n, SPA_REL_ACK_SIZE(1));
	cr_assert_eq(ack[0], 0);
	cr_assert_eq(ack[16], 2);
	/* 0 comes and is handed up in place; 1 is held; then 1 and 2 come out of the window */
	spa_rel_delivered(&r);
	cr_assert_eq(spa_rel_classify(&r, 0), SPA_REL_DUP);
	b = 1;
	spa_rel_hold(&r, 1, &b, 1);
	cr_assert_not(spa_rel_gap(&r));
	for (uint8_t want = 1; want <= 2; want++) {
		cr_assert_eq(spa_rel_peek(&r, &f, &len), 1);
		cr_assert_eq(len, 1);
		cr_assert_eq(f[0], want);
		spa_rel_delivered(&r);
	}
	cr_assert_eq(spa_rel_peek(&r, &f, &len), 0);
	cr_assert_eq(r.rx_held, 0);
	n = spa_rel_ack(&r, ack, SPA_REL_ACK_PROBE);
	cr_assert_eq(n, SPA_REL_ACK_SIZE(0));
	cr_assert_eq(ack[0], 3);
	cr_assert_eq(ack[12], SPA_REL_ACK_PROBE);
	cr_assert_eq(r.ack_due, 0);
}

Test(rel, an_ack_written_by_one_side_is_read_by_the_other)
{
	/* sender q sends 0..99; the receiver r gets all but 10, 40 and 70 */
	struct spa_rel q;
	cr_assert_eq(spa_rel_init(&q, 128, 16, 50 * MS, 2 * MS, 400 * MS), 0);
	spa_rel_fini(&r);
	cr_assert_eq(spa_rel_init(&r, 128, 16, 50 * MS, 2 * MS, 400 * MS), 0);
	for (int i = 0; i < 100; i++)
		spa_rel_sent(&q, 1, 0);
	for (uint64_t p = 0; p < 100; p++) {
		if (p == 10 || p == 40 || p == 70)
			continue;
		uint8_t b = (uint8_t)p;
		if (spa_rel_classify(&r, p) == SPA_REL_NEXT)
			spa_rel_delivered(&r);
		else
			spa_rel_hold(&r, p, &b, 1);
	}
	uint8_t ack[SPA_REL_ACK_SIZE(SPA_REL_ACK_MAX_WORDS)];
	size_t n = spa_rel_ack(&r, ack, 0);
	uint64_t retx[8];
	int k = spa_rel_on_ack(&q, ack, n, 10 * MS, MS, retx, 8);
	cr_assert_eq(k, 3);
	cr_assert_eq(retx[0], 10);
	cr_assert_eq(retx[1], 40);
	cr_assert_eq(retx[2], 70);
	cr_assert_eq(q.una, 10);
	spa_rel_fini(&q);
}

Test(rel, frame_numbers_past_32_bits_work)
{
	struct spa_rel q;
	cr_assert_eq(spa_rel_init(&q, 16, 16, 50 * MS, 2 * MS, 400 * MS), 0);
	q.una = q.nxt = q.next = q.hi = 0xfffffff8ull;
	for (int i = 0; i < 16; i++)
		spa_rel_sent(&q, 1, 0);
	cr_assert_eq(spa_rel_acked(&q, 0x100000004ull, MS), 12);
	cr_assert_eq(spa_rel_classify(&q, 0x100000000ull), SPA_REL_AHEAD);
	spa_rel_fini(&q);
}
