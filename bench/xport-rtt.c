/* xport-rtt: round-trip time of one message each way over every link this build has, side by
 * side in one run, with each one's ratio to kernel UDP at the same size.
 *
 * For each link two processes are forked: the cloud side (it listens, sends, waits for the
 * echo, and times it) and the echo peer (the edge: it connects and sends every message back).
 * Processes rather than threads because the DPDK EAL is once per process (and cannot survive a
 * fork, so this process never starts it: each link gets fresh processes), and because that is
 * how cloud and edge run. The two are pinned with hwloc to the first PUs of two different
 * cores. Per link and size: warm-ups, then --iters timed round trips; p50, p99, p99.9 in us.
 * The cloud side hands its results back through a shared anonymous mapping. The links run in
 * turn --rounds times (every link once per round): each figure is the median over the rounds,
 * and a ratio to UDP is the median of the rounds' ratios (each from one round, taken minutes
 * apart at most), so that a slow spell of a shared host touches one round, not one link.
 *
 * dpdk-af_packet, dpdk-af_xdp and udp-veth run over a veth pair between two network
 * namespaces made here when run as root (names carry the pid, MTU 1500, 10.77.0.1/24 and
 * 10.77.0.2/24 on the two ends, only inside those namespaces): the cloud side joins namespace
 * A, the echo peer namespace B (setns). udp-veth is kernel UDP over that same pair, the
 * like-for-like baseline of the two DPDK rows. The namespaces (and with them the pair) are
 * deleted at the end, on an error exit and on SIGINT/SIGTERM/SIGHUP. Where the pair cannot be
 * made (not root, no ip command, the kernel refuses), those rows print why and the rest runs. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/cli/cli.h"
#include "benchutil.h"
#include "spa/clock.h"
#include "spa/drv/link.h"
#include "spa/keys.h"
#include "spa/link.h"
#include "spa/pin.h"

#define SEC 1000000000ll
#define MAX_LINKS 32
#define MAX_SIZES 16
#define ERR_LEN 512
#define MAX_ROUNDS 15

/* --evict: bytes the cloud side reads between round trips (0: none), as a decode step
 * streams weights between exchanges and leaves the link's state cold in the caches. */
static size_t evict_bytes;

/* Read buf[n] a cache line at a time (the compiler may not drop it). */
static void evict(const uint8_t *buf, size_t n)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < n; i += 64)
		sum += buf[i];
	__asm__ volatile("" : : "r"(sum));
}

/* The links, in table order. In a URI, {pid}, {port} and the veth pair's {va}, {vb} (interface
 * names), {maca} (A's MAC) and {ipa} (A's address) are filled in per run. Adding a link is one
 * line; `needs` names a driver that must be built for it; `peer_uri` is the echo peer's URI
 * when it differs from the cloud side's; `veth`: the cloud side runs in namespace A and the
 * peer in B. */
struct link_def {
	const char *name;
	const char *uri;      /* the cloud side's (listen) */
	const char *peer_uri; /* the echo peer's (connect); NULL: uri */
	const char *needs;    /* NULL, or "dpdk" */
	const char *skip;     /* a reason it cannot run here, or NULL */
	int veth;
	int auth;             /* keyed: authenticated and sealed (AEAD), "NAME+aead" */
};
static struct link_def links[MAX_LINKS] = {
	{ "shm", "shm:/xport-{pid}", NULL, NULL, NULL, 0, 0 },
	{ "dpdk-memif", "memif:/tmp/xport-{pid}.sock", NULL, "dpdk", NULL, 0, 0 },
	{ "dpdk-af_packet", "dpdk:af_packet?iface={va}", "dpdk:af_packet?iface={vb}&peer={maca}",
	  "dpdk", NULL, 1, 0 },
	{ "dpdk-af_xdp", "dpdk:af_xdp?iface={va}", "dpdk:af_xdp?iface={vb}&peer={maca}", "dpdk",
	  NULL, 1, 0 },
	{ "udp", "udp://127.0.0.1:{port}", NULL, NULL, NULL, 0, 0 },
	{ "udp-veth", "udp://{ipa}:{port}", NULL, NULL, NULL, 1, 0 },
	{ "udp-64k", "udp://127.0.0.1:{port}?mtu=65000", NULL, NULL, NULL, 0, 0 },
	{ "tcp", "tcp://127.0.0.1:{port}", NULL, NULL, NULL, 0, 0 },
};
static int n_links = 8;

struct result {
	const char *link;
	size_t size;
	double p50, p99, p999;
	int ok;
	char aead[20];        /* the link's AEAD ("none" when unauthenticated) */
};

/* The two sides' keys, made before any fork. Plain links run unauthenticated (--insecure:
 * the veth rows reach another address); "+aead" links with these keys. */
static struct spa_key cloud_key, edge_key;

static void side_opts(struct spa_link_opts *o, int auth, int cloud)
{
	memset(o, 0, sizeof *o);
	if (!auth)
		o->insecure = true;
	else if (cloud)
		*o = (struct spa_link_opts){ .key = &cloud_key, .allow = edge_key.pk, .n_allow = 1 };
	else
		*o = (struct spa_link_opts){ .key = &edge_key, .peer_pub = cloud_key.pk };
}

/* What the two forked sides of one link hand back (a MAP_SHARED anonymous mapping). */
struct shared {
	char cloud_err[ERR_LEN];
	char peer_err[ERR_LEN];
	struct result res[MAX_SIZES];
};

static int have_driver(const char *needs)
{
	if (!needs)
		return 1;
#ifdef SPA_HAVE_DPDK
	if (!strcmp(needs, "dpdk"))
		return 1; /* built in with libdpdk */
#endif
	return 0;
}

/* ---- the veth pair --------------------------------------------------------------------- */

/* Everything the teardown needs is in plain static storage, so the signal handler can use it:
 * it only calls fork, execve, open, dup2, waitpid and kill (async-signal-safe). */
static struct {
	int tried, up;
	pid_t owner;              /* only this process tears down (children exit with _exit) */
	char reason[ERR_LEN];     /* why there is no pair */
	char ip[256];             /* path of the ip command */
	char ns[2][32];           /* namespaces to delete (set before each is made) */
	char ifn[2][16];          /* interface names (at most 15 characters) */
	char mac[2][18];
	char addr[2][16];
} vp;
static volatile pid_t kids[2]; /* the running link's two sides, for the signal handler */

static int find_ip(char *out, size_t size)
{
	const char *path = getenv("PATH");
	char dirs[1024];
	snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin:/usr/bin:/bin", path ? path : "");
	char *save = NULL;
	for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		snprintf(out, size, "%s/ip", d);
		if (*d && !access(out, X_OK))
			return 0;
	}
	return -1;
}

/* Run the ip command with argv made of the space-separated words of fmt (no word has spaces);
 * its output goes to out (first line, may be NULL). Returns its exit status, or -1. */
static int ip_run(char *out, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int ip_run(char *out, size_t size, const char *fmt, ...)
{
	char cmd[512], *argv[32];
	int argc = 0;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	argv[argc++] = "ip";
	char *save = NULL;
	for (char *t = strtok_r(cmd, " ", &save); t && argc < 31; t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	argv[argc] = NULL;
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC))
		return -1;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -1;
	}
	if (pid == 0) {
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		execv(vp.ip, argv);
		_exit(127);
	}
	close(pfd[1]);
	char buf[1024];
	size_t n = 0;
	ssize_t k;
	while ((k = read(pfd[0], buf + n, sizeof buf - 1 - n)) > 0 ||
	       (k < 0 && errno == EINTR))
		n += k > 0 ? (size_t)k : 0;
	close(pfd[0]);
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	if (out && size) {
		n = strlen(buf) < size ? strlen(buf) : size - 1;
		memcpy(out, buf, n);
		out[n] = 0;
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Delete the namespaces (the veth pair goes with them). Async-signal-safe. */
static void veth_teardown(void)
{
	if (getpid() != vp.owner)
		return;
	for (int i = 0; i < 2; i++) {
		if (!vp.ns[i][0])
			continue;
		pid_t pid = fork();
		if (pid == 0) {
			int fd = open("/dev/null", O_WRONLY);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
			char *argv[] = { "ip", "netns", "del", vp.ns[i], NULL };
			execv(vp.ip, argv);
			_exit(127);
		}
		if (pid > 0)
			while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
			}
		vp.ns[i][0] = 0;
	}
	vp.up = 0;
}

static void on_signal(int sig)
{
	for (int i = 0; i < 2; i++)
		if (kids[i] > 0) {
			kill(kids[i], SIGKILL);
			waitpid(kids[i], NULL, 0);
			kids[i] = 0;
		}
	veth_teardown();
	signal(sig, SIG_DFL);
	raise(sig);
}

/* The signals that end a run: each stops the running link's two sides and deletes the veth
 * pair's namespaces before the process dies of it. */
static void signals_catch(void)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

static void signals_block(int block, sigset_t *old)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(block ? SIG_BLOCK : SIG_SETMASK, block ? &set : old, block ? old : NULL);
}

static int veth_fail(const char *what, const char *out)
{
	snprintf(vp.reason, sizeof vp.reason, "%s%s%.200s", what, out && *out ? ": " : "",
		 out ? out : "");
	veth_teardown();
	return -1;
}

/* Make the two namespaces and the pair once, at the first link that needs them. 0, or -1 with
 * vp.reason set. */
static int veth_setup(void)
{
	if (vp.tried)
		return vp.up ? 0 : -1;
	vp.tried = 1;
	if (geteuid() != 0)
		return veth_fail("needs root to make a veth pair in two network namespaces "
				 "(ip netns, CAP_NET_ADMIN, CAP_NET_RAW): not root", NULL);
	if (find_ip(vp.ip, sizeof vp.ip))
		return veth_fail("no ip command (iproute2) in PATH, /usr/sbin or /sbin: install "
				 "iproute2", NULL);
	int id = (int)getpid();
	unsigned h = (unsigned)id & 0xffffu;
	for (int i = 0; i < 2; i++) {
		snprintf(vp.ifn[i], sizeof vp.ifn[i], "xrtt%c%d", 'a' + i, id % 10000000);
		snprintf(vp.mac[i], sizeof vp.mac[i], "02:78:72:%02x:%02x:%02x", h >> 8, h & 0xff,
			 i + 1);
		snprintf(vp.addr[i], sizeof vp.addr[i], "10.77.0.%d", i + 1);
	}
	char out[ERR_LEN];
	for (int i = 0; i < 2; i++) {
		/* recorded first, so that a signal during `ip netns add` still deletes it */
		snprintf(vp.ns[i], sizeof vp.ns[i], "xport-rtt-%c-%d", 'a' + i, id);
		if (ip_run(out, sizeof out, "netns add %s", vp.ns[i])) {
			vp.ns[i][0] = 0;
			return veth_fail("cannot make a network namespace (ip netns add)", out);
		}
	}
	/* made inside A, so a parallel run can never clash on the interface names */
	if (ip_run(out, sizeof out, "-n %s link add %s address %s type veth peer name %s address "
		   "%s netns %s", vp.ns[0], vp.ifn[0], vp.mac[0], vp.ifn[1], vp.mac[1], vp.ns[1]))
		return veth_fail("cannot make a veth pair between the namespaces (ip link add "
				 "type veth)", out);
	for (int i = 0; i < 2; i++) {
		if (ip_run(out, sizeof out, "-n %s link set %s mtu 1500 up", vp.ns[i], vp.ifn[i]) ||
		    ip_run(out, sizeof out, "-n %s link set lo up", vp.ns[i]) ||
		    ip_run(out, sizeof out, "-n %s addr add %s/24 dev %s", vp.ns[i], vp.addr[i],
			   vp.ifn[i]))
			return veth_fail("cannot bring the veth pair up", out);
	}
	vp.up = 1;
	return 0;
}

/* Join namespace A (side 0) or B (side 1). 0 or -errno. */
static int veth_enter(int side)
{
	char p[128];
	snprintf(p, sizeof p, "/run/netns/%s", vp.ns[side]);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = setns(fd, CLONE_NEWNET) ? -errno : 0;
	close(fd);
	return rc;
}

/* ---- one link -------------------------------------------------------------------------- */

static void uri_fill(char *out, size_t size, const char *tmpl, int port)
{
	char pid[16], prt[16];
	snprintf(pid, sizeof pid, "%d", (int)getpid());
	snprintf(prt, sizeof prt, "%d", port);
	const char *keys[][2] = { { "{pid}", pid }, { "{port}", prt }, { "{va}", vp.ifn[0] },
				  { "{vb}", vp.ifn[1] }, { "{maca}", vp.mac[0] },
				  { "{ipa}", vp.addr[0] } };
	size_t o = 0;
	for (const char *t = tmpl; *t && o + 1 < size;) {
		size_t k = 0, nk = sizeof keys / sizeof keys[0];
		while (k < nk && strncmp(t, keys[k][0], strlen(keys[k][0])))
			k++;
		if (k < nk) {
			o += (size_t)snprintf(out + o, size - o, "%s", keys[k][1]);
			o = o < size ? o : size - 1;
			t += strlen(keys[k][0]);
		} else {
			out[o++] = *t++;
		}
	}
	out[o < size ? o : size - 1] = 0;
}

/* The echo peer: connect, send every message back until BYE. */
static int echo_peer(const char *uri, int auth, size_t cap, char *err)
{
	struct spa_link *l;
	struct spa_errbuf e = { "" };
	struct spa_link_opts o;
	side_opts(&o, auth, 0);
	if (spa_link_connect(&l, uri, &o, 20 * SEC, &e)) {
		snprintf(err, ERR_LEN, "echo peer: %s", e.msg);
		return 1;
	}
	uint8_t *buf = malloc(cap);
	int rc = buf ? 0 : -ENOMEM;
	while (!rc) {
		struct spa_msg m;
		rc = spa_link_recv(l, &m, buf, cap, 30 * SEC);
		if (rc || m.type == SPA_MSG_BYE)
			break;
		m.type = SPA_MSG_SIDE_OUT;
		rc = spa_link_send(l, &m, buf, m.len);
	}
	if (rc)
		snprintf(err, ERR_LEN, "echo peer: %s", spa_link_error(l));
	spa_link_destroy(l);
	free(buf);
	return rc ? 1 : 0;
}

/* The cloud side: listen, then all sizes in one session. Fills res[n_sizes]; 0 or 1 with err
 * set. */
static int cloud_side(const char *uri, int auth, const size_t *sizes, int n_sizes, int iters,
		      int warm, size_t cap, struct result *res, char *err)
{
	struct spa_listener *lst = NULL;
	struct spa_link *l = NULL;
	struct spa_errbuf e = { "" };
	struct spa_link_opts o;
	side_opts(&o, auth, 1);
	int rc = spa_link_listen(&lst, uri, &o, &e);
	if (!rc)
		rc = spa_link_accept(lst, &l, 20 * SEC, &e);
	if (rc) {
		snprintf(err, ERR_LEN, "%s", e.msg);
		spa_listener_destroy(lst);
		return 1;
	}
	uint8_t *out = malloc(cap), *in = malloc(cap);
	uint8_t *ev = evict_bytes ? malloc(evict_bytes) : NULL;
	double *samples = malloc((size_t)iters * sizeof *samples);
	if (!out || !in || !samples || (evict_bytes && !ev))
		rc = -ENOMEM;
	else if (ev)
		memset(ev, 1, evict_bytes);
	for (size_t i = 0; !rc && i < cap; i++)
		out[i] = (uint8_t)(i * 131 + 7);
	for (int s = 0; s < n_sizes && !rc; s++) {
		struct spa_msg m = { .type = SPA_MSG_TAPS, .dtype = SPA_WIRE_F32, .n_rows = 1 };
		for (int i = 0; i < warm + iters && !rc; i++) {
			if (ev)
				evict(ev, evict_bytes);
			uint64_t t0 = (uint64_t)spa_clock_ns();
			rc = spa_link_send(l, &m, out, sizes[s]);
			struct spa_msg r;
			if (!rc)
				rc = spa_link_recv(l, &r, in, cap, 10 * SEC);
			uint64_t t1 = (uint64_t)spa_clock_ns();
			if (!rc && r.len != sizes[s])
				rc = -SPA_EPROTO;
			if (i >= warm)
				samples[i - warm] = (double)(t1 - t0) * 1e-3;
		}
		if (rc) {
			snprintf(err, ERR_LEN, "at %zu B: %s", sizes[s],
				 rc == -ENOMEM ? "out of memory" : spa_link_error(l));
			break;
		}
		res[s].size = sizes[s];
		snprintf(res[s].aead, sizeof res[s].aead, "%s", spa_link_aead(l));
		bu_sort(samples, (size_t)iters);
		res[s].p50 = bu_percentile_sorted(samples, (size_t)iters, 50);
		res[s].p99 = bu_percentile_sorted(samples, (size_t)iters, 99);
		res[s].p999 = bu_percentile_sorted(samples, (size_t)iters, 99.9);
		res[s].ok = 1;
	}
	if (!rc) {
		struct spa_msg bye = { .type = SPA_MSG_BYE };
		spa_link_send(l, &bye, NULL, 0);
	}
	spa_link_destroy(l);
	spa_listener_destroy(lst);
	free(out);
	free(in);
	free(ev);
	free(samples);
	return rc ? 1 : 0;
}

/* Fork one side (called with the signals blocked, so that kids[] always names every child):
 * reset the signals the parent catches, join the namespace, pin, run. */
static pid_t fork_side(int side, const struct link_def *d, int cpu, char *err,
		       sigset_t *old_mask)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid != 0) {
		if (pid > 0)
			kids[side] = pid;
		return pid;
	}
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	signals_block(0, old_mask);
	if (d->veth) {
		int rc = veth_enter(side);
		if (rc) {
			snprintf(err, ERR_LEN, "cannot join network namespace %s: %s", vp.ns[side],
				 strerror(-rc));
			_exit(1);
		}
	}
	if (cpu >= 0)
		bu_pin(cpu);
	return 0;
}

static int exit_ok(int st)
{
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* One link: both sides forked, all sizes in one session. Fills res[n_sizes]; returns 0, or -1
 * with the reason in why[ERR_LEN]. */
static int run_link(const struct link_def *d, int port, const size_t *sizes, int n_sizes,
		    int iters, int warm, int cpu0, int cpu1, struct result *res, char *why)
{
	size_t cap = 0;
	for (int s = 0; s < n_sizes; s++)
		if (sizes[s] > cap)
			cap = sizes[s];
	cap = cap ? cap : 1;
	char uri[512], peer_uri[512];
	uri_fill(uri, sizeof uri, d->uri, port);
	uri_fill(peer_uri, sizeof peer_uri, d->peer_uri ? d->peer_uri : d->uri, port);
	struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		snprintf(why, ERR_LEN, "cannot map shared memory: %s", strerror(errno));
		return -1;
	}
	memset(sh, 0, sizeof *sh);

	sigset_t old;
	signals_block(1, &old);
	pid_t peer = fork_side(1, d, cpu1, sh->peer_err, &old);
	if (peer == 0)
		_exit(echo_peer(peer_uri, d->auth, cap, sh->peer_err));
	pid_t cloud = peer > 0 ? fork_side(0, d, cpu0, sh->cloud_err, &old) : -1;
	if (cloud == 0)
		_exit(cloud_side(uri, d->auth, sizes, n_sizes, iters, warm, cap, sh->res,
				 sh->cloud_err));
	if (peer < 0 || cloud < 0) {
		snprintf(sh->cloud_err, ERR_LEN, "fork: %s", strerror(errno));
		if (kids[1] > 0)
			kill(kids[1], SIGKILL);
	}
	signals_block(0, &old);

	/* Wait for both; when one side fails, the other is stopped (it would wait for
	 * its timeout). */
	int cst = -1, pst = -1;
	while (kids[0] > 0 || kids[1] > 0) {
		int st;
		pid_t p = waitpid(-1, &st, 0);
		if (p < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		int side = p == kids[0] ? 0 : p == kids[1] ? 1 : -1;
		if (side < 0)
			continue;
		kids[side] = 0;
		*(side ? &pst : &cst) = st;
		if (!exit_ok(st) && kids[!side] > 0)
			kill(kids[!side], SIGKILL);
	}
	int ok = exit_ok(cst) && exit_ok(pst);
	if (!ok) {
		/* the peer's reason first: a peer that cannot connect leaves the cloud side
		 * waiting, and it is then stopped */
		if (sh->peer_err[0] && sh->cloud_err[0])
			snprintf(why, ERR_LEN, "%.240s; cloud side: %.240s", sh->peer_err,
				 sh->cloud_err);
		else
			snprintf(why, ERR_LEN, "%s", sh->peer_err[0] ? sh->peer_err
				 : sh->cloud_err[0] ? sh->cloud_err : "a side died without saying why");
	}
	for (int s = 0; s < n_sizes; s++) {
		res[s] = sh->res[s];
		res[s].link = d->name;
	}
	munmap(sh, sizeof *sh);
	/* The sides _exit(): a memif server's socket file is left for us to remove. */
	if (!strncmp(uri, "memif:", 6)) {
		struct stat st;
		if (!stat(uri + 6, &st) && S_ISSOCK(st.st_mode))
			unlink(uri + 6);
	}
	if (d->veth && vp.up) /* af_xdp leaves no XDP program behind for the next link */
		for (int i = 0; i < 2; i++)
			ip_run(NULL, 0, "-n %s link set dev %s xdp off", vp.ns[i], vp.ifn[i]);
	return ok ? 0 : -1;
}

static void usage(void)
{
	printf("usage: xport-rtt [options]\n"
	       "Round-trip time (one message each way, echo peer in a forked process on another\n"
	       "core) over every link this build has, with each one's ratio to kernel UDP.\n"
	       "  --links LIST     comma-separated link names (default: all): ");
	for (int i = 0; i < n_links; i++)
		printf("%s%s", links[i].name, i + 1 < n_links ? "," : "\n");
	printf("  --sizes LIST     message sizes in bytes, K/M suffixes allowed (default:\n"
	       "                   64,2K,8K,270K)\n"
	       "  --iters N        timed round trips per link and size (default 2000)\n"
	       "  --rounds N       run the links in turn N times; figures are medians over the\n"
	       "                   rounds, a ratio the median of the rounds' ratios (default 3)\n"
	       "  --warmup N       untimed round trips first (default 200)\n"
	       "  --evict BYTES    the cloud side reads BYTES of other memory before each round\n"
	       "                   trip (K/M suffixes), as a decode step does between exchanges:\n"
	       "                   the link's state then starts cold in the caches (default 0)\n"
	       "  --uri NAME=URI   run link NAME over URI ({pid}, {port} are filled in), both\n"
	       "                   sides in this network namespace: adds a link, or replaces\n"
	       "                   one's URI\n"
	       "  --port N         first TCP/UDP port to use (default 17000 + pid %% 1000 x 8)\n"
	       "  --aead MODE      off: the links as they are (unauthenticated); on: each link\n"
	       "                   keyed, its frames sealed (AEAD), named NAME+aead; both (the\n"
	       "                   default): each link twice, side by side\n"
	       "  --json FILE      write {\"results\":[{\"link\",\"size\",\"p50_us\",\"p99_us\",\n"
	       "                   \"p999_us\",\"ratio_vs_udp\"}],\"not_run\":[{\"link\",\"reason\"}]};\n"
	       "                   ratio_vs_udp = udp p50 / this link's p50 at the same size\n"
	       "                   (> 1: faster than kernel UDP; +aead links against udp+aead);\n"
	       "                   veth links add ratio_vs_udp_veth; each result names its \"aead\"\n"
	       "dpdk-af_packet, dpdk-af_xdp and udp-veth need root: they run over a veth pair\n"
	       "between two network namespaces made (and deleted) here, MTU 1500, addresses\n"
	       "10.77.0.1/24 (cloud side) and 10.77.0.2/24 (peer) inside those namespaces only.\n");
}

static size_t parse_size(const char *opt, const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || *s == '-')
		cli_die(2, "%s: \"%s\" is not a size (bytes, or with a K or M suffix)", opt, s);
	if (*end == 'K' || *end == 'k')
		v <<= 10, end++;
	else if (*end == 'M' || *end == 'm')
		v <<= 20, end++;
	if (*end || v > (1024ull << 20))
		cli_die(2, "%s: \"%s\" is not a size up to 1024M", opt, s);
	return (size_t)v;
}

int main(int argc, char **argv)
{
	cli_init(argv[0]);
	size_t sizes[MAX_SIZES] = { 64, 2048, 8192, 270 * 1024 };
	int n_sizes = 4, iters = 2000, warm = 200, rounds = 3;
	int port = 17000 + (int)(getpid() % 1000) * 8;
	const char *json = NULL, *only = NULL, *aead = "both";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage();
			return 0;
		} else if (!strcmp(a, "--links")) {
			only = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--sizes")) {
			char *list = strdup(cli_value(argc, argv, &i)), *save = NULL;
			n_sizes = 0;
			for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
				if (n_sizes == MAX_SIZES)
					cli_die(2, "--sizes: at most %d sizes", MAX_SIZES);
				sizes[n_sizes++] = parse_size("--sizes", t);
				if (sizes[n_sizes - 1] > (64u << 20))
					cli_die(2, "--sizes: \"%s\" is over 64M", t);
			}
			if (!n_sizes)
				cli_die(2, "--sizes: empty list");
			free(list);
		} else if (!strcmp(a, "--iters")) {
			iters = (int)cli_int(a, cli_value(argc, argv, &i), 1, 10000000);
		} else if (!strcmp(a, "--rounds")) {
			rounds = (int)cli_int(a, cli_value(argc, argv, &i), 1, MAX_ROUNDS);
		} else if (!strcmp(a, "--evict")) {
			evict_bytes = parse_size("--evict", cli_value(argc, argv, &i));
		} else if (!strcmp(a, "--warmup")) {
			warm = (int)cli_int(a, cli_value(argc, argv, &i), 0, 10000000);
		} else if (!strcmp(a, "--port")) {
			port = (int)cli_int(a, cli_value(argc, argv, &i), 1024, 65000);
		} else if (!strcmp(a, "--uri")) {
			const char *v = cli_value(argc, argv, &i), *eq = strchr(v, '=');
			if (!eq || eq == v || !eq[1])
				cli_die(2, "--uri: expected NAME=URI, got \"%s\"", v);
			int k = 0;
			while (k < n_links && (strncmp(links[k].name, v, (size_t)(eq - v)) ||
					       links[k].name[eq - v]))
				k++;
			if (k == n_links) {
				if (n_links == MAX_LINKS)
					cli_die(2, "--uri: at most %d links", MAX_LINKS);
				links[n_links++].name = strndup(v, (size_t)(eq - v));
			}
			links[k].uri = eq + 1;
			links[k].peer_uri = NULL;
			links[k].skip = NULL;
			links[k].veth = 0;
		} else if (!strcmp(a, "--json")) {
			json = cli_value(argc, argv, &i);
		} else if (!strcmp(a, "--aead")) {
			aead = cli_value(argc, argv, &i);
			if (strcmp(aead, "off") && strcmp(aead, "on") && strcmp(aead, "both"))
				cli_die(2, "--aead: \"%s\" is not off, on or both", aead);
		} else {
			cli_die(2, "unknown option %s (try --help)", a);
		}
	}
	/* --links: check every name first */
	int selected[MAX_LINKS];
	for (int k = 0; k < n_links; k++)
		selected[k] = !only;
	if (only) {
		char *list = strdup(only), *save = NULL;
		for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			int k = 0;
			while (k < n_links && strcmp(links[k].name, t))
				k++;
			if (k == n_links)
				cli_die(2, "--links: unknown link \"%s\" (try --help)", t);
			selected[k] = 1;
		}
		free(list);
	}
	/* --aead: the keyed twin of each selected link (after it in the table) */
	if (strcmp(aead, "off")) {
		if (spa_key_generate(&cloud_key) || spa_key_generate(&edge_key))
			cli_die(1, "cannot make keys (libsodium)");
		struct link_def all[MAX_LINKS];
		int sel[MAX_LINKS], n = 0;
		for (int k = 0; k < n_links; k++) {
			if (n + 2 > MAX_LINKS)
				cli_die(2, "too many links for --aead %s", aead);
			int plain = !strcmp(aead, "both");
			all[n] = links[k];
			sel[n++] = selected[k] && plain;
			all[n] = links[k];
			all[n].auth = 1;
			char name[64];
			snprintf(name, sizeof name, "%s+aead", links[k].name);
			all[n].name = strdup(name);
			sel[n++] = selected[k];
		}
		memcpy(links, all, sizeof all[0] * (size_t)n);
		memcpy(selected, sel, sizeof sel[0] * (size_t)n);
		n_links = n;
	}

	char machine[512], load[64], where[128];
	bu_machine(machine, sizeof machine);
	bu_load(load, sizeof load);
	int cpu0 = spa_pin_core_pu(0), cpu1 = spa_pin_core_pu(1);
	if (cpu1 == cpu0) /* one core: the peer shares it */
		cpu1 = spa_pin_n_pus() > 1 ? (cpu0 + 1) % spa_pin_n_pus() : cpu0;
	bu_pin(cpu0);
	spa_pin_describe(where, sizeof where);
	printf("machine: %s\n%s\ncloud side: %s; echo peer: cpu %d\n", machine, load, where, cpu1);
	printf("%d round trips per link and size after %d warm-ups, %d round(s) of all links; "
	       "times in us\n", iters, warm, rounds);
	if (evict_bytes)
		printf("the cloud side reads %zu bytes of other memory before each round trip\n",
		       evict_bytes);
	printf("\n");

	/* from here on, an exit or a fatal signal cleans up after itself */
	vp.owner = getpid();
	atexit(veth_teardown);
	signals_catch();
	/* round r's results in rr[r]; res: the medians over the rounds where the link ran */
	struct result *res = calloc((size_t)MAX_LINKS * MAX_SIZES, sizeof *res);
	struct result *rr = calloc((size_t)rounds * MAX_LINKS * MAX_SIZES, sizeof *rr);
	char (*why)[ERR_LEN] = calloc(MAX_LINKS, sizeof *why);
	if (!res || !rr || !why)
		cli_die(1, "out of memory");
	/* the UDP rows each link is compared with (plain, and +aead) */
	int udp_k[2] = { -1, -1 }, veth_k[2] = { -1, -1 };
	/* the hypervisor's steal per round: a round that a busy host slowed says so */
	double steal[MAX_ROUNDS];
	for (int r = 0; r < rounds; r++) {
		if (rounds > 1)
			printf("round %d of %d\n", r + 1, rounds);
		const struct bu_cpu_ticks t0 = bu_cpu_ticks();
		for (int k = 0; k < n_links; k++) {
			if (!selected[k] || why[k][0])
				continue;
			const struct link_def *d = &links[k];
			if (!have_driver(d->needs))
				snprintf(why[k], ERR_LEN, "skipped: driver not built (%s)", d->needs);
			else if (d->skip || !d->uri)
				snprintf(why[k], ERR_LEN, "skipped: %s", d->skip ? d->skip : "no URI");
			else if (d->veth && veth_setup())
				snprintf(why[k], ERR_LEN, "skipped: %.480s", vp.reason);
			if (why[k][0]) {
				printf("%-20s %s\n", d->name, why[k]);
				continue;
			}
			printf("%-20s ...\n", d->name);
			char msg[ERR_LEN];
			if (run_link(d, port + k, sizes, n_sizes, iters, warm, cpu0, cpu1,
				     rr + ((size_t)r * MAX_LINKS + k) * MAX_SIZES, msg)) {
				snprintf(why[k], ERR_LEN, "failed%s: %.440s", r ? " in a later round" : "",
					 msg);
				printf("%-20s %s\n", d->name, why[k]);
			} else if (!strcmp(d->name, "udp") || !strcmp(d->name, "udp+aead")) {
				udp_k[d->auth] = k;
			} else if (!strcmp(d->name, "udp-veth") || !strcmp(d->name, "udp-veth+aead")) {
				veth_k[d->auth] = k;
			}
		}
		steal[r] = bu_steal_pct(t0, bu_cpu_ticks());
	}
	veth_teardown();
	/* medians over the rounds; ratios: the median of each round's own ratio */
	double *ratio = calloc((size_t)MAX_LINKS * MAX_SIZES, sizeof *ratio);
	double *vratio = calloc((size_t)MAX_LINKS * MAX_SIZES, sizeof *vratio);
	if (!ratio || !vratio)
		cli_die(1, "out of memory");
	for (int k = 0; k < n_links; k++)
		for (int s = 0; s < n_sizes && !why[k][0]; s++) {
			double p50[MAX_ROUNDS], p99[MAX_ROUNDS], p999[MAX_ROUNDS];
			double ru[MAX_ROUNDS], rv[MAX_ROUNDS];
			int n = 0, nu = 0, nv = 0;
			for (int r = 0; r < rounds; r++) {
				const struct result *x = &rr[((size_t)r * MAX_LINKS + k) * MAX_SIZES + s];
				if (!x->ok)
					continue;
				res[k * MAX_SIZES + s] = *x;
				p50[n] = x->p50, p99[n] = x->p99, p999[n] = x->p999, n++;
				int uk = udp_k[links[k].auth], vk = veth_k[links[k].auth];
				const struct result *u = uk >= 0 && !why[uk][0]
					? &rr[((size_t)r * MAX_LINKS + uk) * MAX_SIZES + s] : NULL;
				const struct result *v = vk >= 0 && !why[vk][0] && links[k].veth
					? &rr[((size_t)r * MAX_LINKS + vk) * MAX_SIZES + s] : NULL;
				if (u && u->ok)
					ru[nu++] = u->p50 / x->p50;
				if (v && v->ok)
					rv[nv++] = v->p50 / x->p50;
			}
			struct result *m = &res[k * MAX_SIZES + s];
			m->ok = n > 0;
			if (n) {
				m->p50 = bu_percentile(p50, n, 50);
				m->p99 = bu_percentile(p99, n, 50);
				m->p999 = bu_percentile(p999, n, 50);
			}
			ratio[k * MAX_SIZES + s] = nu ? bu_percentile(ru, nu, 50) : 0.0 / 0.0;
			vratio[k * MAX_SIZES + s] = nv ? bu_percentile(rv, nv, 50) : 0.0 / 0.0;
		}

	printf("\n%-20s %9s %10s %10s %10s %11s %12s\n", "link", "size", "p50", "p99", "p99.9",
	       "vs udp p50", "vs udp-veth");
	struct bu_json j;
	int jrc = json ? bu_json_open(&j, json) : 0;
	if (jrc < 0)
		cli_die(1, "--json %s: cannot write: %s", json, strerror(-jrc));
	if (json) {
		bu_json_obj_begin(&j, NULL);
		bu_json_str(&j, "machine", machine);
		bu_json_str(&j, "load", load);
		bu_json_int(&j, "iters", iters);
		bu_json_int(&j, "rounds", rounds);
		bu_json_int(&j, "evict_bytes", (int64_t)evict_bytes);
		bu_json_arr_begin(&j, "steal_pct");
		for (int r = 0; r < rounds; r++)
			bu_json_num(&j, NULL, steal[r]);
		bu_json_arr_end(&j);
		bu_json_arr_begin(&j, "results");
	}
	for (int k = 0; k < n_links; k++) {
		if (why[k][0]) {
			printf("%-20s %9s %s\n", links[k].name, "-", why[k]);
			continue;
		}
		for (int s = 0; s < n_sizes; s++) {
			const struct result *r = &res[k * MAX_SIZES + s];
			if (!r->ok)
				continue;
			const double ru = ratio[k * MAX_SIZES + s], rv = vratio[k * MAX_SIZES + s];
			const int has_v = veth_k[links[k].auth] >= 0 && links[k].veth;
			char rs[32] = "-", vs[32] = "";
			if (ru == ru)
				snprintf(rs, sizeof rs, "%.2fx", ru);
			if (rv == rv)
				snprintf(vs, sizeof vs, "%.2fx", rv);
			printf("%-20s %9zu %10.2f %10.2f %10.2f %11s %12s\n", r->link, r->size, r->p50,
			       r->p99, r->p999, rs, vs);
			if (json) {
				bu_json_obj_begin(&j, NULL);
				bu_json_str(&j, "link", r->link);
				bu_json_str(&j, "aead", r->aead);
				bu_json_int(&j, "size", (int64_t)r->size);
				bu_json_num(&j, "p50_us", r->p50);
				bu_json_num(&j, "p99_us", r->p99);
				bu_json_num(&j, "p999_us", r->p999);
				bu_json_num(&j, "ratio_vs_udp", ru);
				if (has_v)
					bu_json_num(&j, "ratio_vs_udp_veth", rv);
				bu_json_obj_end(&j);
			}
		}
	}
	if (json) {
		bu_json_arr_end(&j);
		bu_json_arr_begin(&j, "not_run");
		for (int k = 0; k < n_links; k++)
			if (why[k][0]) {
				bu_json_obj_begin(&j, NULL);
				bu_json_str(&j, "link", links[k].name);
				bu_json_str(&j, "reason", why[k]);
				bu_json_obj_end(&j);
			}
		bu_json_arr_end(&j);
		bu_json_obj_end(&j);
		jrc = bu_json_close(&j);
		if (jrc < 0)
			cli_die(1, "--json %s: write failed: %s", json, strerror(-jrc));
	}
	printf("\nCPU time stolen by the hypervisor per round (%%):");
	for (int r = 0; r < rounds; r++)
		printf(steal[r] < 0 ? " ?" : " %.1f", steal[r]);
	bu_load(load, sizeof load);
	printf("\nafter: %s\n", load);
	free(res);
	free(rr);
	free(ratio);
	free(vratio);
	free(why);
	return 0;
}
