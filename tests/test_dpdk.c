/* The dpdk driver (drivers/dpdk/dpdk.c) through the real link API: a memif pair between two
 * processes (EAL is per process, so the cloud side is a forked child) round-trips messages of
 * random sizes and of exact multiples of the frame payload and one byte over, with the bytes
 * compared and no payload byte copied on send; foreign, truncated and garbage frames put on the
 * port are dropped and counted without disturbing the session; sessions follow one another on
 * one port, two connections share one at once, and a vanished peer gives -SPA_ECLOSED; af_packet and af_xdp over a veth pair in two
 * network namespaces the test makes; split equals local over memif for every method; and
 * peers killed with SIGKILL mid-generation (edges, then clouds) never crash or hang the
 * survivor, which reports the error, and the next session's tokens equal spa-run's.
 * A quick RTT figure for 64 B and 2 KiB goes to stderr (a timing, never asserted). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spa/drv/link.h"
#include "spa/spa.h"
#include "testutil.h"

#ifndef SPA_HAVE_DPDK

Test(dpdk, skipped_without_dpdk)
{
	cr_skip_test("DPDK is not built: libdpdk was not found when meson configured this build "
		     "(install libdpdk-dev and reconfigure)");
}

#else

#include "../drivers/dpdk/dpdk.h"

#define HDR SPA_WIRE_HDR_SIZE
#define CAP (1u << 20)
#define AUX_STATS 0x57a75u /* HEARTBEAT with this aux: the cloud answers with its stats */
#define TMO 20000000000ll

static pid_t kids[8];
static int n_kids;
static char netns[2][64];

static void cleanup(void)
{
	for (int i = 0; i < n_kids; i++)
		if (kids[i] > 0) {
			kill(kids[i], SIGKILL);
			waitpid(kids[i], NULL, 0);
		}
	n_kids = 0;
	for (int i = 0; i < 2; i++)
		if (netns[i][0]) {
			char cmd[160];
			snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null", netns[i]);
			if (system(cmd)) {
			}
			netns[i][0] = 0;
		}
}

TestSuite(dpdk, .fini = cleanup);

static pid_t fork_kid(void)
{
	fflush(NULL);
	pid_t pid = fork();
	cr_assert_geq(pid, 0);
	if (pid > 0 && n_kids < 8)
		kids[n_kids++] = pid;
	return pid;
}

static int wait_kid(pid_t pid, int seconds)
{
	for (int i = 0; i <= seconds * 100; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			for (int k = 0; k < n_kids; k++)
				if (kids[k] == pid)
					kids[k] = 0;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
		}
		usleep(10000);
	}
	return -2;
}

/* The cloud side, in the child: serve `sessions` sessions, echoing every message back (same
 * type and fields), answering a stats request with its driver counters; a BYE ends a session.
 * die_after > 0: exit abruptly (no close) after that many messages. Returns an exit code. */
/* Link options of the two sides: none on memif (same host), keys over veth (another host's
 * address as far as the link can tell). */
static const struct spa_link_opts *serve_opts, *conn_opts;

static int echo_serve(const char *uri, int sessions, int die_after)
{
	struct spa_errbuf err = {{0}};
	struct spa_listener *L;
	if (spa_link_listen(&L, uri, serve_opts, &err)) {
		fprintf(stderr, "cloud: %s\n", err.msg);
		return 10;
	}
	uint8_t *buf = malloc(CAP);
	int n = 0;
	for (int s = 0; s < sessions; s++) {
		struct spa_link *l;
		if (spa_link_accept(L, &l, TMO, &err)) {
			fprintf(stderr, "cloud: accept: %s\n", err.msg);
			return 11;
		}
		for (;;) {
			struct spa_msg m;
			int rc = spa_link_recv(l, &m, buf, CAP, TMO);
			if (rc == -SPA_ECLOSED)
				break;
			if (rc) {
				fprintf(stderr, "cloud: recv: %s\n", spa_link_error(l));
				return 12;
			}
			if (m.type == SPA_MSG_BYE)
				break;
			if (die_after && ++n == die_after)
				_exit(0); /* the process vanishes: no BYE, no close */
			if (m.type == SPA_MSG_HELLO && m.aux == AUX_STATS) {
				struct spa_dpdk_stats st;
				spa_dpdk_link_stats(spa_link_driver_base(l), &st);
				rc = spa_link_send(l, &m, &st, sizeof st);
			} else {
				rc = spa_link_send(l, &m, buf, m.len);
			}
			if (rc) {
				fprintf(stderr, "cloud: send: %s\n", spa_link_error(l));
				return 13;
			}
		}
		spa_link_destroy(l);
	}
	spa_listener_destroy(L);
	free(buf);
	return 0;
}

/* Connect, or skip the test when EAL cannot start here. */
static struct spa_link *edge_connect(const char *uri)
{
	struct spa_errbuf err = {{0}};
	struct spa_link *l = NULL;
	int rc = spa_link_connect(&l, uri, conn_opts, TMO, &err);
	if (rc == -SPA_EUNSUPPORTED && strstr(err.msg, "EAL could not start"))
		cr_skip_test("%s", err.msg);
	cr_assert_eq(rc, 0, "connect %s: %s", uri, err.msg);
	return l;
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	struct spa_rng r;
	spa_rng_seed(&r, seed);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(spa_rng_next(&r) >> 24);
}

/* Send len bytes, get them back, compare. */
static void round_trip(struct spa_link *l, uint8_t *tx, uint8_t *rx, size_t len, uint64_t seed)
{
	fill(tx, len, seed);
	struct spa_msg m = {.type = SPA_MSG_LORA_X, .dtype = 0, .pos = (uint32_t)seed,
			    .layer = 3, .n_rows = 1, .aux = (uint32_t)len};
	cr_assert_eq(spa_link_send(l, &m, tx, len), 0, "send %zu: %s", len, spa_link_error(l));
	struct spa_msg r;
	int rc = spa_link_recv(l, &r, rx, CAP, TMO);
	cr_assert_eq(rc, 0, "recv of the %zu-byte echo: %s", len, spa_link_error(l));
	cr_assert_eq(r.type, SPA_MSG_LORA_X);
	cr_assert_eq(r.len, len, "echo of %zu bytes came back with %u", len, r.len);
	cr_assert_eq(r.pos, (uint32_t)seed);
	cr_assert_eq(r.aux, (uint32_t)len);
	cr_assert(!memcmp(tx, rx, len), "the %zu-byte echo differs from what was sent", len);
}

static struct spa_dpdk_stats peer_stats(struct spa_link *l)
{
	struct spa_msg m = {.type = SPA_MSG_HELLO, .aux = AUX_STATS};
	cr_assert_eq(spa_link_send(l, &m, NULL, 0), 0);
	struct spa_dpdk_stats st;
	struct spa_msg r;
	cr_assert_eq(spa_link_recv(l, &r, &st, sizeof st, TMO), 0, "%s", spa_link_error(l));
	cr_assert_eq(r.len, sizeof st);
	return st;
}

static void say_bye(struct spa_link *l)
{
	struct spa_msg m = {.type = SPA_MSG_BYE};
	cr_assert_eq(spa_link_send(l, &m, NULL, 0), 0, "%s", spa_link_error(l));
}

static void memif_uri(char *uri, size_t size)
{
	static int n;
	snprintf(uri, size, "memif:%s/m%d.sock", tu_tmpdir(), n++);
}

/* Payload per frame: *b what link.c uses (the link's own limit), *a the driver's static
 * max_frame; the sizes below cover both. */
static void payload_sizes(struct spa_link *l, size_t *a, size_t *b)
{
	struct spa_link_base *base = spa_link_driver_base(l);
	*a = base->drv->max_frame - HDR;
	*b = (base->drv->link_max_frame ? base->drv->link_max_frame(base) : base->drv->max_frame) -
	     HDR;
}

static void check_round_trips(const char *uri, int n_random)
{
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	struct spa_link *l = edge_connect(uri);
	size_t mp[2];
	payload_sizes(l, &mp[0], &mp[1]);
	struct spa_rng rng;
	spa_rng_seed(&rng, 7);
	size_t sizes[64];
	int n = 0;
	sizes[n++] = 0;
	sizes[n++] = 1;
	sizes[n++] = 64;
	sizes[n++] = 2048;
	for (int j = 0; j < 2; j++)
		for (size_t k = 1; k <= 3; k++) {
			sizes[n++] = k * mp[j];
			sizes[n++] = k * mp[j] + 1;
			sizes[n++] = k * mp[j] - 1;
		}
	sizes[n++] = 270 * 1024;
	for (int i = 0; i < n_random; i++)
		sizes[n++] = spa_rng_next(&rng) % (300 * 1024);
	for (int i = 0; i < n; i++)
		round_trip(l, tx, rx, sizes[i], (uint64_t)i + 1);
	const struct spa_link_stats *ls = spa_link_stats(l);
	struct spa_link_base *base = spa_link_driver_base(l);
	struct spa_dpdk_stats st;
	cr_assert_eq(spa_dpdk_link_stats(base, &st), 0);
	cr_assert_eq(ls->copied_tx + base->drv->copied_tx(base), 0,
		     "%llu payload bytes copied on send over %s: zero copy expected",
		     (unsigned long long)(ls->copied_tx + base->drv->copied_tx(base)), uri);
	cr_assert_gt(st.tx_zc_bytes, 0, "no payload went out as an external buffer");
	cr_assert_eq(st.rx_linearised, 0);
	struct spa_dpdk_stats ps = peer_stats(l);
	cr_assert_eq(ps.tx_copied, 0, "the cloud side copied %llu payload bytes on send",
		     (unsigned long long)ps.tx_copied);
	say_bye(l);
	spa_link_destroy(l);
	free(tx);
	free(rx);
}

Test(dpdk, memif_round_trips_random_and_edge_sizes_without_copy)
{
	char uri[256];
	memif_uri(uri, sizeof uri);
	pid_t kid = fork_kid();
	if (kid == 0)
		_exit(echo_serve(uri, 1, 0));
	check_round_trips(uri, 24);
	cr_assert_eq(wait_kid(kid, 20), 0, "the cloud side failed (its stderr says why)");
}

/* One Ethernet frame from parts. */
static size_t frame(uint8_t *f, const void *a, size_t na, const void *b, size_t nb)
{
	memcpy(f, a, na);
	if (nb)
		memcpy(f + na, b, nb);
	return na + nb;
}

Test(dpdk, foreign_truncated_and_garbage_frames_are_dropped_and_counted)
{
	char uri[256];
	memif_uri(uri, sizeof uri);
	pid_t kid = fork_kid();
	if (kid == 0)
		_exit(echo_serve(uri, 1, 0));
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	struct spa_link *l = edge_connect(uri);
	struct spa_link_base *base = spa_link_driver_base(l);
	round_trip(l, tx, rx, 1000, 1);
	struct spa_dpdk_stats before = peer_stats(l);

	uint8_t enc[128], f[2048], junk[600], spa[SPA_WIRE_HDR_SIZE];
	int hl = spa_dpdk_link_encap(base, enc, sizeof enc);
	cr_assert_gt(hl, 13);
	fill(junk, sizeof junk, 99);
	/* the start of an spa header of this wire version, for another connection */
	memset(spa, 0, sizeof spa);
	struct spa_wire_hdr sh = {.magic = SPA_WIRE_MAGIC, .version = SPA_WIRE_VERSION,
				  .type = SPA_MSG_TAPS, .conn = spa_link_conn_id(l) ^ 0x5a5a,
				  .payload_len = 100, .msg_len = 100};
	spa_wire_hdr_encode(&sh, spa);
	size_t n;
	/* 1. another EtherType (IPv6) */
	memcpy(f, enc, (size_t)hl);
	f[12] = 0x86, f[13] = 0xdd;
	n = frame(f, f, (size_t)hl, junk, 200);
	cr_assert_eq(spa_dpdk_send_raw(base, f, n), 0);
	/* 2. truncated: Ethernet header and the first 6 bytes of an spa header */
	n = frame(f, enc, (size_t)hl, spa, 6);
	cr_assert_eq(spa_dpdk_send_raw(base, f, n), 0);
	/* 3. shorter than an Ethernet header */
	cr_assert_eq(spa_dpdk_send_raw(base, junk, 9), 0);
	/* 4. garbage after our EtherType (no spa magic) */
	n = frame(f, enc, (size_t)hl, junk, 300);
	cr_assert_eq(spa_dpdk_send_raw(base, f, n), 0);
	/* 5. ours, but for another connection */
	n = frame(f, enc, (size_t)hl, spa, sizeof spa);
	memcpy(f + n, junk, 100);
	cr_assert_eq(spa_dpdk_send_raw(base, f, n + 100), 0);
	/* 6. ours, but to another MAC */
	memcpy(f, enc, (size_t)hl);
	f[0] = 0x02, f[5] ^= 0x11;
	n = frame(f, f, (size_t)hl, spa, sizeof spa);
	cr_assert_eq(spa_dpdk_send_raw(base, f, n), 0);
	/* 7. pure garbage */
	cr_assert_eq(spa_dpdk_send_raw(base, junk, sizeof junk), 0);

	/* The session goes on, and the cloud counted every one of them. */
	for (int i = 0; i < 4; i++)
		round_trip(l, tx, rx, 777 + 3000 * (size_t)i, 10 + (uint64_t)i);
	struct spa_dpdk_stats after = peer_stats(l);
	cr_assert_eq(after.drop_foreign - before.drop_foreign, 3,
		     "foreign frames dropped: %llu, want 3 (IPv6, bad magic, garbage)",
		     (unsigned long long)(after.drop_foreign - before.drop_foreign));
	cr_assert_eq(after.drop_short - before.drop_short, 2, "short frames dropped: %llu, want 2",
		     (unsigned long long)(after.drop_short - before.drop_short));
	cr_assert_eq(after.drop_stale - before.drop_stale, 1);
	cr_assert_eq(after.drop_mac - before.drop_mac, 1);
	cr_assert_eq(spa_link_stats(l)->bad_frames, 0);
	say_bye(l);
	spa_link_destroy(l);
	cr_assert_eq(wait_kid(kid, 20), 0, "the cloud side failed");
	free(tx);
	free(rx);
}

Test(dpdk, sessions_follow_one_another_on_one_port)
{
	char uri[256];
	memif_uri(uri, sizeof uri);
	pid_t kid = fork_kid();
	if (kid == 0)
		_exit(echo_serve(uri, 3, 0));
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	/* Sessions 1 and 2 from this process on one port, the third... */
	for (int s = 0; s < 2; s++) {
		struct spa_link *l = edge_connect(uri);
		for (int i = 0; i < 5; i++)
			round_trip(l, tx, rx, 100 + 5000 * (size_t)i, (uint64_t)(s * 10 + i));
		say_bye(l);
		spa_link_destroy(l);
	}
	/* ...closes without a BYE message: the connection's CLOSE ends the cloud's session. */
	struct spa_link *l = edge_connect(uri);
	round_trip(l, tx, rx, 4096, 77);
	spa_link_destroy(l);
	cr_assert_eq(wait_kid(kid, 20), 0, "the cloud side failed");
	free(tx);
	free(rx);
}

/* Two connections at once over one memif pair (one port each side), interleaved: each gets its
 * own echoes; the cloud side's listener serves both at once. */
static int echo_two(const char *uri)
{
	struct spa_errbuf err = {{0}};
	struct spa_listener *L;
	if (spa_link_listen(&L, uri, NULL, &err)) {
		fprintf(stderr, "cloud: %s\n", err.msg);
		return 10;
	}
	struct spa_link *l[2];
	for (int k = 0; k < 2; k++)
		if (spa_link_accept(L, &l[k], TMO, &err)) {
			fprintf(stderr, "cloud: accept: %s\n", err.msg);
			return 11;
		}
	/* a buffer per link: a receive that times out mid-message goes on in the same one */
	uint8_t *bufs[2] = {malloc(CAP), malloc(CAP)};
	int open = 3;
	while (open) {
		for (int k = 0; k < 2; k++) {
			if (!(open & (1 << k)))
				continue;
			struct spa_msg m;
			uint8_t *buf = bufs[k];
			int rc = spa_link_recv(l[k], &m, buf, CAP, 1000000);
			if (rc == -ETIMEDOUT)
				continue;
			if (rc || m.type == SPA_MSG_BYE) {
				if (rc)
					fprintf(stderr, "cloud: recv: %s\n", spa_link_error(l[k]));
				open &= ~(1 << k);
				continue;
			}
			m.aux = (uint32_t)spa_link_conn_id(l[k]);
			if (spa_link_send(l[k], &m, buf, m.len))
				return 13;
		}
	}
	for (int k = 0; k < 2; k++) {
		spa_link_destroy(l[k]);
		free(bufs[k]);
	}
	spa_listener_destroy(L);
	return 0;
}

Test(dpdk, two_connections_at_once_over_one_memif_pair)
{
	char uri[256];
	memif_uri(uri, sizeof uri);
	pid_t kid = fork_kid();
	if (kid == 0)
		_exit(echo_two(uri));
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	struct spa_link *l[2] = {edge_connect(uri), edge_connect(uri)};
	cr_assert_neq(spa_link_conn_id(l[0]), spa_link_conn_id(l[1]));
	for (int i = 0; i < 12; i++) {
		size_t n[2] = {100 + 3000 * (size_t)i, 9000 - 500 * (size_t)i};
		for (int k = 0; k < 2; k++) {
			fill(tx, n[k], (uint64_t)(i * 2 + k));
			struct spa_msg m = {.type = SPA_MSG_TAPS, .pos = (uint32_t)(i * 2 + k)};
			cr_assert_eq(spa_link_send(l[k], &m, tx, n[k]), 0, "%s",
				     spa_link_error(l[k]));
		}
		for (int k = 1; k >= 0; k--) {
			struct spa_msg r;
			cr_assert_eq(spa_link_recv(l[k], &r, rx, CAP, TMO), 0, "%s",
				     spa_link_error(l[k]));
			fill(tx, n[k], (uint64_t)(i * 2 + k));
			cr_assert_eq(r.aux, (uint32_t)spa_link_conn_id(l[k]), "another's reply");
			cr_assert_eq(r.pos, (uint32_t)(i * 2 + k));
			cr_assert_eq(r.len, n[k]);
			cr_assert(!memcmp(tx, rx, n[k]), "connection %d, message %d differs", k, i);
		}
	}
	for (int k = 0; k < 2; k++) {
		say_bye(l[k]);
		spa_link_destroy(l[k]);
	}
	cr_assert_eq(wait_kid(kid, 20), 0, "the cloud side failed");
	free(tx);
	free(rx);
}

/* (A test of its own: a child forked after EAL started in its parent has no EAL threads.) */
Test(dpdk, a_vanished_peer_gives_closed)
{
	/* A cloud that vanishes mid-session: the edge sees -SPA_ECLOSED, not a hang. */
	char uri[256];
	memif_uri(uri, sizeof uri);
	pid_t kid = fork_kid();
	if (kid == 0)
		_exit(echo_serve(uri, 1, 2));
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	struct spa_link *l = edge_connect(uri);
	round_trip(l, tx, rx, 100, 1);
	fill(tx, 100, 2);
	struct spa_msg m = {.type = SPA_MSG_LORA_X};
	cr_assert_eq(spa_link_send(l, &m, tx, 100), 0);
	struct spa_msg r;
	int rc = spa_link_recv(l, &r, rx, CAP, TMO);
	cr_assert_eq(rc, -SPA_ECLOSED, "recv after the cloud vanished gave %d (%s), want "
		     "-SPA_ECLOSED", rc, spa_link_error(l));
	spa_link_destroy(l);
	free(tx);
	free(rx);
}

Test(dpdk, bad_uris_are_refused_with_a_message)
{
	static const struct {
		const char *uri, *want;
	} cases[] = {
		{"memif:", "socket path"},
		{"memif:/tmp/a,b", "socket path"},
		{"dpdk:", "no DEV"},
		{"dpdk:af_packet?iface=x&peer=zz", "not a MAC"},
		{"dpdk:af_packet?iface=x&ethertype=0x800", "ethertype"},
		{"dpdk:af_packet?iface=x&udp=99999", "udp="},
		{"dpdk:af_packet?iface=x&udp=9000", "ip=A.B.C.D"},
		{"dpdk:af_packet?iface=x&peer_ip=1.2.3.4", "need UDP"},
		{"dpdk:af_packet?iface=x&mtu=70000", "mtu="},
		{"dpdk:af_packet?iface=x&role=server", "memif only"},
		{"dpdk:af_packet?iface=x", "peer="},
		{"dpdk:af_packet?novalue", "KEY=VALUE"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct spa_errbuf err = {{0}};
		struct spa_link *l = NULL;
		int rc = spa_link_connect(&l, cases[i].uri, NULL, 1000000000, &err);
		cr_assert_eq(rc, -SPA_EUSAGE, "%s: rc %d (%s)", cases[i].uri, rc, err.msg);
		cr_assert(strstr(err.msg, cases[i].want), "%s: message \"%s\" lacks \"%s\"",
			  cases[i].uri, err.msg, cases[i].want);
	}
}

/* ---- a quick RTT figure (printed, never asserted) -------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

Test(dpdk, memif_rtt_is_printed)
{
	char uri[256];
	memif_uri(uri, sizeof uri);
	pid_t kid = fork_kid();
	if (kid == 0) {
		if (spa_pin_n_pus() > 1)
			spa_pin_thread(0);
		_exit(echo_serve(uri, 1, 0));
	}
	if (spa_pin_n_pus() > 1)
		spa_pin_thread(1);
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	struct spa_link *l = edge_connect(uri);
	enum { N = 20000 };
	size_t mp0, mp;
	payload_sizes(l, &mp0, &mp);
	int64_t *t = malloc(N * sizeof *t);
	size_t sizes[2] = {64, 2048};
	for (int k = 0; k < 2; k++) {
		fill(tx, sizes[k], 5);
		struct spa_msg m = {.type = SPA_MSG_SIDE_OUT};
		for (int i = -1000; i < N; i++) {
			int64_t t0 = spa_clock_ns();
			cr_assert_eq(spa_link_send(l, &m, tx, sizes[k]), 0);
			struct spa_msg r;
			cr_assert_eq(spa_link_recv(l, &r, rx, CAP, TMO), 0, "%s", spa_link_error(l));
			if (i >= 0)
				t[i] = spa_clock_ns() - t0;
		}
		qsort(t, N, sizeof *t, cmp_i64);
		fprintf(stderr, "dpdk memif RTT %4zu B: p50 %.2f us, p99 %.2f us (%d round trips, "
			"link payload per frame %zu)\n", sizes[k], t[N / 2] / 1e3,
			t[N * 99 / 100] / 1e3, N, mp);
	}
	say_bye(l);
	spa_link_destroy(l);
	cr_assert_eq(wait_kid(kid, 20), 0);
	free(t);
	free(tx);
	free(rx);
}

/* ---- af_packet / af_xdp over a veth pair in two namespaces ----------------------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	char out[512];
	return tu_run(cmd, out, sizeof out, 1);
}

static void enter_ns(const char *name)
{
	char p[128];
	snprintf(p, sizeof p, "/run/netns/%s", name);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0, "open %s", p);
	cr_assert_eq(setns(fd, CLONE_NEWNET), 0, "setns %s: %s", name, strerror(errno));
	close(fd);
}

/* Make two namespaces joined by a veth pair (MTU 1500); skip when this machine cannot. */
static void make_veth(char *mac_a, size_t cap)
{
	if (geteuid() != 0)
		cr_skip_test("af_packet over veth needs root (ip netns, CAP_NET_RAW): not root");
	int id = (int)getpid();
	snprintf(netns[0], sizeof netns[0], "spa-a-%d", id);
	snprintf(netns[1], sizeof netns[1], "spa-b-%d", id);
	if (sh("ip netns add %s && ip netns add %s", netns[0], netns[1])) {
		netns[0][0] = netns[1][0] = 0;
		cr_skip_test("cannot create network namespaces here (ip netns add failed)");
	}
	/* the pair is made inside namespace A, so parallel runs never clash on the names */
	if (sh("ip -n %s link add spa-va type veth peer name spa-vb netns %s && "
	       "ip -n %s link set spa-va mtu 1500 up && ip -n %s link set spa-vb mtu 1500 up && "
	       "ip -n %s link set lo up && ip -n %s link set lo up",
	       netns[0], netns[1], netns[0], netns[1], netns[0], netns[1]))
		cr_skip_test("cannot create a veth pair between namespaces here");
	char out[64];
	char cmd[256];
	snprintf(cmd, sizeof cmd, "ip netns exec %s cat /sys/class/net/spa-va/address", netns[0]);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 0), 0);
	out[strcspn(out, "\n")] = 0;
	snprintf(mac_a, cap, "%s", out);
}

static void check_veth(const char *pmd, const char *lextra, const char *cextra, int allow_copy)
{
	char mac[64], luri[256], curi[256];
	/* over a network: authenticated, each side's key made here before the fork */
	static struct spa_key ck, ek;
	static struct spa_link_opts so, co;
	cr_assert_eq(spa_key_generate(&ck), 0);
	cr_assert_eq(spa_key_generate(&ek), 0);
	so = (struct spa_link_opts){.key = &ck, .allow = ek.pk, .n_allow = 1};
	co = (struct spa_link_opts){.key = &ek, .peer_pub = ck.pk};
	serve_opts = &so;
	conn_opts = &co;
	make_veth(mac, sizeof mac);
	snprintf(luri, sizeof luri, "dpdk:%s?iface=spa-va%s", pmd, lextra);
	snprintf(curi, sizeof curi, "dpdk:%s?iface=spa-vb&peer=%s%s", pmd, mac, cextra);
	pid_t kid = fork_kid();
	if (kid == 0) {
		enter_ns(netns[0]);
		_exit(echo_serve(luri, 1, 0));
	}
	enter_ns(netns[1]);
	struct spa_errbuf err = {{0}};
	struct spa_link *l = NULL;
	int rc = spa_link_connect(&l, curi, conn_opts, 10000000000ll, &err);
	if (rc) {
		int st = wait_kid(kid, 1);
		cr_skip_test("%s over veth cannot run here: %s (cloud side exit %d)", pmd, err.msg,
			     st);
	}
	uint8_t *tx = malloc(CAP), *rx = malloc(CAP);
	size_t mp[2];
	payload_sizes(l, &mp[0], &mp[1]);
	struct spa_rng rng;
	spa_rng_seed(&rng, 3);
	size_t sizes[] = {0, 1, 64, 2048, mp[0], mp[0] + 1, 2 * mp[0], 2 * mp[0] + 1, mp[1],
			  mp[1] + 1, 3 * mp[1], 8192, 100000};
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
		round_trip(l, tx, rx, sizes[i], i + 1);
	for (int i = 0; i < 10; i++)
		round_trip(l, tx, rx, spa_rng_next(&rng) % 60000, 100 + (uint64_t)i);
	struct spa_link_base *base = spa_link_driver_base(l);
	if (!allow_copy)
		cr_assert_eq(base->drv->copied_tx(base), 0);
	say_bye(l);
	spa_link_destroy(l);
	cr_assert_eq(wait_kid(kid, 20), 0, "the cloud side failed");
	free(tx);
	free(rx);
}

Test(dpdk, af_packet_over_veth_in_two_namespaces)
{
	check_veth("af_packet", "", "", 0);
}

Test(dpdk, af_packet_with_udp_framing_over_veth)
{
	check_veth("af_packet", "&udp=47000&ip=10.9.0.1", "&udp=47000&ip=10.9.0.2&peer_ip=10.9.0.1", 0);
}

Test(dpdk, af_xdp_over_veth_in_two_namespaces)
{
	/* af_xdp in DPDK 22.11 sends no chained mbufs: the driver copies there, and counts it */
	check_veth("af_xdp", "", "", 1);
}

/* ---- liveness: a killed peer is noticed within 100 ms --------------------------------- */

/* The cloud side (an echo server, forked into namespace kid_ns when given) is killed while we
 * wait: the milliseconds from SIGKILL to our -SPA_ECLOSED. Before that each side is away from
 * the link for 300 ms in turn (three times the silence limit): neither is taken for dead. */
static double kill_notice_ms(const char *luri, const char *curi, const char *kid_ns,
			     const char *our_ns)
{
	pid_t kid = fork_kid();
	if (kid == 0) {
		if (kid_ns)
			enter_ns(kid_ns);
		_exit(echo_serve(luri, 1, 0));
	}
	if (our_ns)
		enter_ns(our_ns);
	uint8_t tx[256], rx[256];
	struct spa_link *l = edge_connect(curi);
	round_trip(l, tx, rx, 100, 1);
	usleep(300000); /* we compute: our keeper speaks for us */
	round_trip(l, tx, rx, 100, 2);
	struct spa_msg m;
	/* the cloud waits for us (its waits send HEARTBEATs), we wait for it */
	cr_assert_eq(spa_link_recv(l, &m, rx, sizeof rx, 300000000), -ETIMEDOUT, "%s",
		     spa_link_error(l));
	int64_t t0 = spa_clock_ns();
	kill(kid, SIGKILL);
	int rc = spa_link_recv(l, &m, rx, sizeof rx, TMO);
	double ms = (double)(spa_clock_ns() - t0) / 1e6;
	cr_assert_eq(rc, -SPA_ECLOSED, "%d %s", rc, spa_link_error(l));
	fprintf(stderr, "liveness: %s, cloud killed: noticed after %.1f ms: %s\n", curi, ms,
		spa_link_error(l));
	spa_link_destroy(l);
	wait_kid(kid, 10);
	return ms;
}

/* memif: the PMD sees its peer's socket close (link down, read every ~1 ms). */
Test(dpdk, a_killed_memif_peer_is_noticed_within_100_ms)
{
	char uri[256];
	memif_uri(uri, sizeof uri);
	double ms = kill_notice_ms(uri, uri, NULL, NULL);
	cr_assert_leq(ms, 100.0, "a killed memif peer was noticed after %.1f ms", ms);
}

/* af_packet: no wire signal; the peer's HEARTBEATs stop, and 90 ms after the last one heard
 * it is dead. */
Test(dpdk, a_killed_af_packet_peer_is_noticed_within_100_ms)
{
	char mac[64], luri[256], curi[256];
	make_veth(mac, sizeof mac);
	static struct spa_key ck, ek;
	static struct spa_link_opts so, co;
	cr_assert_eq(spa_key_generate(&ck), 0);
	cr_assert_eq(spa_key_generate(&ek), 0);
	so = (struct spa_link_opts){.key = &ck, .allow = ek.pk, .n_allow = 1};
	co = (struct spa_link_opts){.key = &ek, .peer_pub = ck.pk};
	serve_opts = &so;
	conn_opts = &co;
	snprintf(luri, sizeof luri, "dpdk:af_packet?iface=spa-va");
	snprintf(curi, sizeof curi, "dpdk:af_packet?iface=spa-vb&peer=%s", mac);
	double ms = kill_notice_ms(luri, curi, netns[0], netns[1]);
	/* (the silence is counted from the last HEARTBEAT heard, 0 to 11.25 ms before the kill;
	 * 10 ms are left for the wake-up of a loaded machine) */
	cr_assert_leq(ms, 100.0, "a killed af_packet peer was noticed after %.1f ms", ms);
}

/* ---- split equals local over memif (spa-cloud and spa-edge as programs) ------------------ */

#define N_TOK 12
static const char *prompt = "the cat sat on the mat and";
static const char *sampling[2] = {"", "--temp 0.9 --top-k 40 --top-p 0.95 --seed 1234"};

static const char *plugin_for(const char *method)
{
	if (!strcmp(method, "lora"))
		return tu_tiny_plugin("lora");
	if (!strcmp(method, "adapter"))
		return tu_tiny_plugin("adapter");
	return tu_tiny_plugin("side");
}

/* Cloud and edge as programs over the given URIs (each side's command prefixed, e.g. with
 * `ip netns exec NS`); for both splits and both sampling modes their tokens must equal
 * spa-run's. */
/* Extra options of spa-cloud and spa-edge (keys, over a network). */
static const char *cloud_keys = "", *edge_keys = "";

static void check_split_over(const char *method, const char *cloud_uri, const char *edge_uri,
			     const char *cloud_pre, const char *edge_pre, const char *dir)
{
	char cmd[4096];
	snprintf(cmd, sizeof cmd, "exec %s%s -m %s --link '%s' -t 1 --sessions 4 --timeout 20 -q "
		 "%s >%s/cloud.log 2>&1", cloud_pre, tu_program("spa-cloud"), tu_tiny_model(),
		 cloud_uri, cloud_keys, dir);
	pid_t cloud = fork_kid();
	if (cloud == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	const char *splits[2] = {"cloud-linear", "edge-all"};
	for (int sp = 0; sp < 2; sp++)
		for (int k = 0; k < 2; k++) {
			char want[4096], got[4096], err[4096];
			snprintf(cmd, sizeof cmd, "%s -m %s --plugin %s --method %s --split %s -p '%s' "
				 "-n %d --ids -t 1 %s 2>/dev/null", tu_program("spa-run"),
				 tu_tiny_model(), plugin_for(method), method, splits[sp], prompt, N_TOK,
				 sampling[k]);
			cr_assert_eq(tu_run(cmd, want, sizeof want, 0), 0, "spa-run failed: %s", cmd);
			snprintf(cmd, sizeof cmd, "%s%s --link '%s' --plugin %s --method %s --split %s "
				 "-p '%s' -n %d --ids --timeout 20 %s %s 2>%s/edge.err", edge_pre,
				 tu_program("spa-edge"), edge_uri, plugin_for(method), method,
				 splits[sp], prompt, N_TOK, sampling[k], edge_keys, dir);
			int rc = tu_run(cmd, got, sizeof got, 0);
			snprintf(cmd, sizeof cmd, "%s/edge.err", dir);
			size_t n;
			char *e = tu_read_file(cmd, &n);
			snprintf(err, sizeof err, "%s", e ? e : "");
			free(e);
			if (rc && strstr(err, "EAL could not start"))
				cr_skip_test("%s", err);
			cr_assert_eq(rc, 0, "spa-edge %s %s over %s failed: %s", method, splits[sp],
				     edge_uri, err);
			cr_assert_str_eq(got, want, "%s %s %s over %s: edge+cloud gave\n%s\nspa-run "
					 "gave\n%s", method, splits[sp], k ? "sampled" : "greedy",
					 edge_uri, got, want);
		}
	cr_assert_eq(wait_kid(cloud, 30), 0, "spa-cloud over %s did not end cleanly (see %s/"
		     "cloud.log)", cloud_uri, dir);
}

static void check_split(const char *method)
{
	char uri[256], *dir = tu_tmpdir();
	snprintf(uri, sizeof uri, "memif:%s/split.sock", dir);
	check_split_over(method, uri, uri, "", "", dir);
	/* the cloud, the memif server, ended cleanly: its socket file went with it */
	struct stat st;
	cr_assert_neq(stat(uri + 6, &st), 0, "spa-cloud left its memif socket %s behind", uri + 6);
}

/* The same over af_packet: the cloud in one namespace, the edge in the other, joined by a
 * veth pair (MTU 1500, so the larger messages travel as several frames). */
Test(dpdk, split_equals_local_over_af_packet_on_veth)
{
	char mac[64], curi[256], euri[256], cpre[128], epre[128];
	make_veth(mac, sizeof mac);
	snprintf(curi, sizeof curi, "dpdk:af_packet?iface=spa-va");
	snprintf(euri, sizeof euri, "dpdk:af_packet?iface=spa-vb&peer=%s", mac);
	snprintf(cpre, sizeof cpre, "ip netns exec %s ", netns[0]);
	snprintf(epre, sizeof epre, "ip netns exec %s ", netns[1]);
	/* over a network: with keys (spa-keygen), authenticated and sealed */
	static char ck[1024], ek[1024];
	char cmd[2048], out[1024];
	const char *d = tu_tmpdir();
	snprintf(cmd, sizeof cmd, "%s -o %s/vc && %s -o %s/ve", tu_program("spa-keygen"), d,
		 tu_program("spa-keygen"), d);
	cr_assert_eq(tu_run(cmd, out, sizeof out, 1), 0, "spa-keygen: %s", out);
	snprintf(ck, sizeof ck, "--key %s/vc.key --allow %s/ve.pub", d, d);
	snprintf(ek, sizeof ek, "--key %s/ve.key --cloud-pub %s/vc.pub", d, d);
	cloud_keys = ck;
	edge_keys = ek;
	const char *methods[] = {"lora", "adapter", "lst", "spa"};
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		check_split_over(methods[i], curi, euri, cpre, epre, tu_tmpdir());
	/* and losing, repeating, reordering and damaging a tenth of frames each, both ways */
	snprintf(curi, sizeof curi, "dpdk:af_packet?iface=spa-va&drop=0.1&dup=0.1&reorder=0.1"
		 "&corrupt=0.1&seed=5");
	snprintf(euri, sizeof euri, "dpdk:af_packet?iface=spa-vb&peer=%s&drop=0.1&dup=0.1"
		 "&reorder=0.1&corrupt=0.1&seed=6", mac);
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		check_split_over(methods[i], curi, euri, cpre, epre, tu_tmpdir());
}

/* The target over memif: 10 % of frames dropped, duplicated, reordered and corrupted at
 * once on both sides; retransmission makes up for it, the tokens are spa-run's. */
static void check_split_faults(const char *method)
{
	char uri[512];
	snprintf(uri, sizeof uri, "memif:%s/f.sock?drop=0.1&dup=0.1&reorder=0.1&corrupt=0.1&seed=%d",
		 tu_tmpdir(), (int)getpid());
	check_split_over(method, uri, uri, "", "", tu_tmpdir());
}

Test(dpdk, split_equals_local_over_memif_losing_a_tenth_of_frames_each_way)
{
	const char *methods[] = {"lora", "adapter", "lst", "spa"};
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		check_split_faults(methods[i]);
}

Test(dpdk, split_equals_local_over_memif_lora) { check_split("lora"); }
Test(dpdk, split_equals_local_over_memif_adapter) { check_split("adapter"); }
Test(dpdk, split_equals_local_over_memif_lst) { check_split("lst"); }
Test(dpdk, split_equals_local_over_memif_spa) { check_split("spa"); }

/* ---- a peer killed mid-session (SIGKILL) ------------------------------------------------ */

/* Start `sh -c "exec CMD"` in the background. */
static pid_t spawn(const char *cmd)
{
	pid_t pid = fork_kid();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* Wait until the file has at least n bytes (the edge streams its token ids); 0 or -1. */
static int wait_bytes(const char *path, size_t n, int seconds)
{
	for (int i = 0; i < seconds * 1000; i++) {
		size_t got = 0;
		char *b = tu_read_file(path, &got);
		free(b);
		if (b && got >= n)
			return 0;
		usleep(1000);
	}
	return -1;
}

static void kill_kid(pid_t pid)
{
	kill(pid, SIGKILL);
	int st = wait_kid(pid, 10);
	cr_assert_eq(st, 100 + SIGKILL, "the process to kill ended with %d instead", st);
}

static int count_str(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

#define N_KILL 6
#define KILL_ARGS "--method lora -p 'the cat sat on the mat and' -n 400 --ids --net-delay-us 300"

/* The tokens of spa-run for the split check below (greedy lora). */
static void want_tokens(char *want, size_t cap)
{
	char cmd[2048];
	snprintf(cmd, sizeof cmd, "%s -m %s --plugin %s --method lora -p '%s' -n %d --ids -t 1 "
		 "2>/dev/null", tu_program("spa-run"), tu_tiny_model(), tu_tiny_plugin("lora"),
		 prompt, N_TOK);
	cr_assert_eq(tu_run(cmd, want, cap, 0), 0, "spa-run failed: %s", cmd);
}

/* One edge session that must succeed with spa-run's tokens. */
static void edge_equals_local(const char *uri, const char *dir, const char *want)
{
	char cmd[4096], got[4096];
	snprintf(cmd, sizeof cmd, "%s --link '%s' --plugin %s --method lora -p '%s' -n %d --ids "
		 "--timeout 20 2>%s/edge-last.err", tu_program("spa-edge"), uri,
		 tu_tiny_plugin("lora"), prompt, N_TOK, dir);
	int rc = tu_run(cmd, got, sizeof got, 0);
	snprintf(cmd, sizeof cmd, "%s/edge-last.err", dir);
	size_t n;
	char *e = tu_read_file(cmd, &n);
	if (rc && e && strstr(e, "EAL could not start"))
		cr_skip_test("%s", e);
	cr_assert_eq(rc, 0, "the edge after the killed sessions failed: %s", e ? e : "");
	free(e);
	cr_assert_str_eq(got, want, "after the killed sessions the edge got\n%s\nspa-run gave\n%s",
			 got, want);
}

/* Edge k mid-generation: wait until it printed some tokens to out (more each round, so the
 * kills land at different points of the exchanges); skip when its EAL could not start (err
 * says), fail when it printed none in 20 s. */
static void wait_tokens(const char *out, const char *err_path, int k)
{
	if (!wait_bytes(out, 8 + 7 * (size_t)k, 20))
		return;
	size_t n;
	char *e = tu_read_file(err_path, &n);
	if (e && strstr(e, "EAL could not start"))
		cr_skip_test("%s", e);
	cr_assert_fail("edge %d printed no tokens: %s", k, e ? e : "");
}

/* Edges killed with SIGKILL while they generate: the cloud (the survivor) says each session
 * ended because the peer went away, never crashes or hangs, and serves the next edge with
 * tokens equal to spa-run's. The edges slow their own replies (--net-delay-us), so the cloud
 * is polling its memif rings when the edge dies: the moment DPDK 22.11's memif PMD unmaps
 * them in its interrupt thread (docs/dpdk.md, "Known limits"). */
Test(dpdk, killed_edges_never_crash_the_cloud_which_serves_the_next, .timeout = 120)
{
	char uri[256], cmd[4096], want[4096], *dir = tu_tmpdir();
	snprintf(uri, sizeof uri, "memif:%s/kill.sock", dir);
	want_tokens(want, sizeof want);
	snprintf(cmd, sizeof cmd, "exec %s -m %s --link '%s' -t 1 --sessions %d --timeout 20 -q "
		 ">%s/cloud.log 2>&1", tu_program("spa-cloud"), tu_tiny_model(), uri, N_KILL + 1,
		 dir);
	pid_t cloud = spawn(cmd);
	for (int k = 0; k < N_KILL; k++) {
		char out[512];
		snprintf(out, sizeof out, "%s/edge%d.out", dir, k);
		snprintf(cmd, sizeof cmd, "exec %s --link '%s' --plugin %s " KILL_ARGS
			 " --timeout 20 >%s 2>%s/edge%d.err", tu_program("spa-edge"), uri,
			 tu_tiny_plugin("lora"), out, dir, k);
		pid_t edge = spawn(cmd);
		snprintf(cmd, sizeof cmd, "%s/edge%d.err", dir, k);
		wait_tokens(out, cmd, k);
		kill_kid(edge);
		int st = wait_kid(cloud, 0);
		cr_assert_eq(st, -2, "the cloud ended (%d; >100: a signal) when edge %d was killed",
			     st, k);
	}
	edge_equals_local(uri, dir, want);
	int st = wait_kid(cloud, 30);
	snprintf(cmd, sizeof cmd, "%s/cloud.log", dir);
	size_t n;
	char *log = tu_read_file(cmd, &n);
	cr_assert_eq(st, 0, "spa-cloud ended with %d (>100: signal) after %d killed edges:\n%s", st,
		     N_KILL, log ? log : "");
	cr_assert(!strstr(log, "lock not found"), "the memif guard is off:\n%s", log);
	cr_assert_eq(count_str(log, "the peer closed the link or went away"), N_KILL,
		     "the cloud should say of each of the %d killed sessions that the peer went "
		     "away:\n%s", N_KILL, log);
	free(log);
}

/* The reverse: the cloud killed while an edge generates. The edge (the survivor) exits with
 * the error, not a signal, and soon; a new cloud on the same socket then serves correctly. */
Test(dpdk, a_killed_cloud_never_crashes_or_hangs_the_edge, .timeout = 120)
{
	char uri[256], cmd[4096], want[4096], *dir = tu_tmpdir();
	snprintf(uri, sizeof uri, "memif:%s/kill.sock", dir);
	want_tokens(want, sizeof want);
	for (int k = 0; k < N_KILL; k++) {
		snprintf(cmd, sizeof cmd, "exec %s -m %s --link '%s' -t 1 --timeout 20 -q "
			 ">%s/cloud%d.log 2>&1", tu_program("spa-cloud"), tu_tiny_model(), uri, dir,
			 k);
		pid_t cloud = spawn(cmd);
		char out[512], errp[512];
		snprintf(out, sizeof out, "%s/edge%d.out", dir, k);
		snprintf(errp, sizeof errp, "%s/edge%d.err", dir, k);
		/* the edge waits for the cloud's socket (connect retries) */
		snprintf(cmd, sizeof cmd, "exec %s --link '%s' --plugin %s --timeout 20 " KILL_ARGS
			 " >%s 2>%s", tu_program("spa-edge"), uri, tu_tiny_plugin("lora"), out, errp);
		pid_t edge = spawn(cmd);
		wait_tokens(out, errp, k);
		kill_kid(cloud);
		int st = wait_kid(edge, 10);
		size_t n;
		char *e = tu_read_file(errp, &n);
		cr_assert_eq(st, 1, "the edge whose cloud was killed ended with %d (want 1; >100: a "
			     "signal, -2: still running after 10 s):\n%s", st, e ? e : "");
		cr_assert(e && strstr(e, "the peer closed the link or went away"),
			  "the edge should say the cloud went away:\n%s", e ? e : "");
		cr_assert(!strstr(e, "lock not found"), "the memif guard is off:\n%s", e);
		free(e);
	}
	snprintf(cmd, sizeof cmd, "exec %s -m %s --link '%s' -t 1 --sessions 1 --timeout 20 -q "
		 ">%s/cloud.log 2>&1", tu_program("spa-cloud"), tu_tiny_model(), uri, dir);
	pid_t cloud = spawn(cmd);
	edge_equals_local(uri, dir, want);
	cr_assert_eq(wait_kid(cloud, 30), 0, "the last cloud did not end cleanly");
}

#endif
