/* dpdk: a link over any DPDK ethdev port (docs/dpdk.md; real NICs: docs/real-nic.md).
 *
 * URIs (the driver gets the whole URI):
 *   memif:SOCKETPATH         a memif pair on one host: the listener is role=server, the
 *                            connector role=client; no hugepages, EAL arguments built here
 *   dpdk:DEV[?KEY=VAL&...]   DEV is af_packet, af_xdp or memif (a port this driver creates),
 *                            a PCI address (0000:03:00.0) or the name of an ethdev the EAL
 *                            arguments made (net_af_packet0). Keys of this driver: peer=MAC,
 *                            ethertype=0xNNNN, udp=PORT, ip=A.B.C.D, peer_ip=A.B.C.D, mtu=N,
 *                            role=server|client (memif); every other key goes to the PMD as
 *                            a device argument (iface=veth0, socket=/path, ...).
 *
 * Frame on the wire: Ethernet [+ IPv4 + UDP] + the frame the connection layer built (64-byte
 * spa header, payload). The driver recognises spa frames by EtherType (or UDP port) and the
 * header's magic and version, and sorts them by their connection id (bind_conn): several links
 * share a port (used from one thread), each with a queue of the frames that arrived for it while
 * another polled; a CONNECT of an id no link has yet waits in the port's accept queue for the
 * listener. The handshake, and the CLOSE that ends a connection, are the connection layer's
 * (runtime/conn.c), as on every transport.
 *
 * EAL starts once per process, at the first listen or connect (rte_eal_init), with the
 * arguments given through the prepare slot (spa_link_opts.eal) or, when none were given,
 * built here: --no-huge --no-pci -m 256 --file-prefix=spa-PID -l CPU. A port is
 * made once per process and reused by later sessions (listener and links share its queue).
 *
 * Zero copy on send: the link layer's header goes into a small head mbuf behind our headers;
 * the payload iovec is attached to a second mbuf as an external buffer (no memcpy), chained
 * after the head. send_frame returns only once the PMD has released that external buffer (its
 * free callback ran), because the caller may reuse its memory as soon as we return: memif,
 * af_packet and af_xdp copy the frame into their rings inside rte_eth_tx_burst and free the
 * mbufs there, so this costs nothing; a real NIC frees on TX completion, which we reap with
 * rte_eth_tx_done_cleanup while we wait. A PMD that cannot send chained mbufs (af_xdp in
 * 22.11), or a NIC when the payload is not DMA-mapped DPDK memory, gets the payload copied into
 * the head mbuf instead, and the copy is counted (copied_tx slot).
 *
 * Receive: rx_burst into a small cache-aligned array on the port; frames are handed out one at
 * a time, pointing into the mbuf (a chained mbuf is first linearised into a per-link buffer),
 * until release_frame frees it. Everything not ours is dropped and counted. Polling only: no
 * system call on the hot path (the link status check every ~1 ms reads the port's state).
 *
 * memif: every burst holds the PMD's own disconnect lock, so that a peer that dies mid-session
 * cannot have the rings unmapped under a burst (memif_ring_lock below). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <hwloc.h>
#include <rte_bus.h>
#include <rte_byteorder.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_memory.h>
#include <rte_spinlock.h>
#include <rte_version.h>
#include <rte_udp.h>

#include "spa/clock.h"
#include "spa/drv/link.h"
#include "spa/pin.h"
#include "dpdk.h"

#define ETH_LEN 14u
#define IPUDP_LEN 28u
#define MAX_HDR (ETH_LEN + IPUDP_LEN)
/* bytes of the spa header classify needs contiguous: magic, version, connection id */
#define SPA_HDR_PEEK (SPA_WIRE_CONN_OFF + 8)
#define STATIC_MTU 1500u
#define MAX_MTU 9702u
/* The vtable's max_frame: the largest frame of any dpdk link (MTU 9702, Ethernet framing);
 * link_max_frame gives each link its port's own, never larger. */
#define STATIC_MAX_FRAME MAX_MTU
#define MEMIF_MTU 9000u
#define MEMIF_BSIZE 9216u /* one memif buffer holds a whole 9000-byte-MTU frame */
#define RX_BURST 32
#define N_MBUF 2047u
#define N_EXT 255u
#define N_DESC 1024
#define CHECK_NS 1000000 /* link status checks while polling, ~1 ms apart */
#define MAX_PORTS 8
#define MAX_LINKS 32  /* links open on one port at once */
#define QLEN 256      /* frames waiting for a link (or the listener) that is not polling */
#define LINGER_NS 200000000ll /* memif client: longest wait for the peer's CLOSE at close */
#define QUIET_NS 500000000ll  /* memif server: longest wait for a client's hang-up */

struct dp_opts {
	char dev[128];      /* af_packet | af_xdp | memif | PCI address | ethdev name */
	char pmdargs[512];  /* ",k=v,..." for the PMD */
	int role;           /* memif: 0 unset, 1 server, 2 client */
	int have_peer;      /* peer MAC given */
	struct rte_ether_addr peer;
	uint16_t ethertype; /* host order */
	int udp;            /* UDP/IPv4 framing */
	uint16_t udp_port;
	uint32_t ip, peer_ip; /* network order; 0: not given */
	unsigned mtu;       /* 0: the port's (memif: MEMIF_MTU) */
};

/* Frames sorted to a link (or the listener) while another polled the port. */
struct dp_queue {
	struct rte_mbuf *m[QLEN];
	uint16_t head, tail;
};

struct dp_link;

/* A port, made once per process and shared by the listener and the links on it. */
struct dp_port {
	struct rte_mbuf *rx[RX_BURST] __rte_cache_aligned;
	uint16_t rx_n, rx_i;
	uint16_t port_id;
	int is_memif, is_pci;
	int zc;               /* chained external buffers allowed (PMD takes MULTI_SEGS) */
	int pmd_holds;        /* the PMD may keep mbufs after tx_burst (a real NIC) */
	unsigned mtu;
	struct rte_ether_addr mac;
	struct rte_mempool *pool, *ext_pool;
	int stopped;          /* memif client whose start found no server: connect retries */
	int listening;        /* a listener takes CONNECTs of new connections */
	struct dp_link *links[MAX_LINKS];
	int n_links;
	struct dp_queue acceptq;
	int64_t quiet_until;  /* memif server: no rx polling until the client's hang-up is done */
	rte_spinlock_t *ring_lock; /* memif: the PMD's lock its disconnect takes before it
				      unmaps the rings (memif_ring_lock); NULL: not found */
	char no_lock[96];     /* memif without ring_lock: why */
	int warned;           /* ... said once */
	struct spa_dpdk_stats drops; /* drop_* counters */
	char key[700];        /* what identifies it for reuse */
	char name[128];       /* ethdev name */
	char sock[128];       /* memif server: the socket file the PMD made, removed at exit */
	dev_t sock_dev;       /* ... if it is still that file (not a later server's) */
	ino_t sock_ino;
};

struct dp_link {
	struct spa_link_base base;
	struct dp_port *port;
	struct dp_opts o;
	uint64_t conn;         /* the connection it carries (bind_conn) */
	int bound;
	int is_listener_side;
	struct rte_ether_addr peer;
	uint32_t peer_ip;
	uint8_t tmpl[MAX_HDR]; /* encapsulation of a frame to the peer */
	unsigned hdr_len;
	size_t max_frame;
	int peer_closed;
	struct rte_mbuf *cur;  /* frame handed out by recv_frame */
	struct rte_mbuf *tx_h, *tx_x; /* memif: the head and external mbufs every frame reuses
					 (send_reuse) */
	struct rte_mbuf *tx_res; /* the frame being written in place (frame_reserve) */
	uint8_t *lin;          /* linearisation buffer, max_frame bytes */
	struct rte_mbuf_ext_shared_info shinfo;
	volatile int ext_out;  /* external buffers the PMD still holds */
	struct spa_dpdk_stats st;
	struct dp_queue q;     /* its frames taken off the port by another link */
};

struct dp_listener {
	struct spa_listener_base base;
	struct dp_port *port;
	struct dp_opts o;
	char uri[256];
};

static struct {
	pthread_mutex_t lock;
	int eal;                 /* 0: not started, 1: running, < 0: failed with this code */
	char eal_err[500];
	char *eal_args;          /* from prepare(), until EAL starts */
	int eal_ours;            /* we built the arguments (vdevs only: no PCI, no hugepages) */
	struct dp_port *ports[MAX_PORTS];
	int n_ports, n_made;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ---- URIs ------------------------------------------------------------------------------ */

#define FORMS                                                                                  \
	"expected memif:SOCKETPATH or dpdk:DEV[?KEY=VAL&...] with DEV af_packet, af_xdp, memif, " \
	"a PCI address (0000:03:00.0) or an ethdev name, and KEYs peer=MAC, ethertype=0xNNNN, " \
	"udp=PORT, ip=A.B.C.D, peer_ip=A.B.C.D, mtu=N, role=server|client, or the PMD's own "   \
	"(iface=NAME, socket=PATH, ...); see docs/dpdk.md"

static int is_pci_addr(const char *s, unsigned *dom, unsigned *bus, unsigned *dev, unsigned *fn)
{
	char tail;
	if (sscanf(s, "%x:%x:%x.%x%c", dom, bus, dev, fn, &tail) == 4)
		return 1;
	*dom = 0;
	return sscanf(s, "%x:%x.%x%c", bus, dev, fn, &tail) == 3;
}

static int parse_ip(const char *v, uint32_t *out)
{
	unsigned a, b, c, d;
	char tail;
	if (sscanf(v, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) != 4 || a > 255 || b > 255 ||
	    c > 255 || d > 255)
		return -1;
	*out = rte_cpu_to_be_32(a << 24 | b << 16 | c << 8 | d);
	return 0;
}

static int path_ok(const char *p)
{
	if (!*p || strlen(p) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return 0;
	for (; *p; p++)
		if (*p == ',' || *p == '?' || *p == '&' || *p == '=' || *p <= ' ')
			return 0;
	return 1;
}

static int opts_parse(const char *uri, struct dp_opts *o, struct spa_errbuf *err)
{
	memset(o, 0, sizeof *o);
	o->ethertype = SPA_DPDK_ETHERTYPE;
	char buf[512];
	if (strlen(uri) >= sizeof buf)
		return spa_err(err, -SPA_EUSAGE, "link URI too long: " FORMS);
	if (!strncmp(uri, "memif:", 6)) {
		const char *path = uri + 6;
		if (!path_ok(path))
			return spa_err(err, -SPA_EUSAGE,
				       "bad link URI \"%s\": the memif socket path must be 1-107 "
				       "characters without spaces or any of ,?&= (e.g. "
				       "memif:/tmp/spa.sock)",
				       uri);
		snprintf(o->dev, sizeof o->dev, "memif");
		snprintf(o->pmdargs, sizeof o->pmdargs, ",socket=%s", path);
		return 0;
	}
	if (strncmp(uri, "dpdk:", 5))
		return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": " FORMS, uri);
	snprintf(buf, sizeof buf, "%s", uri + 5);
	char *q = strchr(buf, '?');
	if (q)
		*q++ = 0;
	if (!*buf || strlen(buf) >= sizeof o->dev)
		return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": no DEV; " FORMS, uri);
	snprintf(o->dev, sizeof o->dev, "%s", buf);
	size_t pl = 0;
	char *save = NULL;
	for (char *kv = q ? strtok_r(q, "&", &save) : NULL; kv; kv = strtok_r(NULL, "&", &save)) {
		char *v = strchr(kv, '=');
		if (!v || v == kv || !v[1])
			return spa_err(err, -SPA_EUSAGE,
				       "bad link URI \"%s\": option \"%s\" is not KEY=VALUE; " FORMS, uri,
				       kv);
		*v++ = 0;
		if (!strcmp(kv, "peer")) {
			if (rte_ether_unformat_addr(v, &o->peer) < 0)
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": peer=%s is not a MAC address "
					       "(xx:xx:xx:xx:xx:xx)",
					       uri, v);
			o->have_peer = 1;
		} else if (!strcmp(kv, "ethertype")) {
			char *end;
			unsigned long t = strtoul(v, &end, 0);
			if (*end || t < 0x600 || t > 0xffff || t == 0x0800 || t == 0x86dd ||
			    t == 0x0806 || t == 0x8100)
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": ethertype=%s must be 0x0600..0xffff "
					       "and not IPv4, IPv6, ARP or VLAN (default 0x%04X)",
					       uri, v, SPA_DPDK_ETHERTYPE);
			o->ethertype = (uint16_t)t;
		} else if (!strcmp(kv, "udp")) {
			char *end;
			unsigned long p = strtoul(v, &end, 10);
			if (*end || p < 1 || p > 65535)
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": udp=%s is not a port 1-65535", uri, v);
			o->udp = 1;
			o->udp_port = (uint16_t)p;
		} else if (!strcmp(kv, "ip") || !strcmp(kv, "peer_ip")) {
			if (parse_ip(v, !strcmp(kv, "ip") ? &o->ip : &o->peer_ip))
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": %s=%s is not an IPv4 address", uri,
					       kv, v);
		} else if (!strcmp(kv, "mtu")) {
			char *end;
			unsigned long m = strtoul(v, &end, 10);
			if (*end || m < 576 || m > 9702)
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": mtu=%s must be 576..9702", uri, v);
			o->mtu = (unsigned)m;
		} else if (!strcmp(kv, "role")) {
			if (strcmp(v, "server") && strcmp(v, "client"))
				return spa_err(err, -SPA_EUSAGE,
					       "bad link URI \"%s\": role=%s must be server or client",
					       uri, v);
			o->role = !strcmp(v, "server") ? 1 : 2;
		} else {
			int k = snprintf(o->pmdargs + pl, sizeof o->pmdargs - pl, ",%s=%s", kv, v);
			if (k < 0 || (size_t)k >= sizeof o->pmdargs - pl)
				return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": too many options",
					       uri);
			pl += (size_t)k;
		}
	}
	if (o->udp && !o->ip)
		return spa_err(err, -SPA_EUSAGE,
			       "bad link URI \"%s\": udp=%u needs this side's address, ip=A.B.C.D", uri,
			       o->udp_port);
	if (!o->udp && (o->ip || o->peer_ip))
		return spa_err(err, -SPA_EUSAGE,
			       "bad link URI \"%s\": ip= and peer_ip= need UDP framing: add udp=PORT",
			       uri);
	if (o->role && strcmp(o->dev, "memif"))
		return spa_err(err, -SPA_EUSAGE, "bad link URI \"%s\": role= is for memif only", uri);
	return 0;
}

/* ---- EAL ------------------------------------------------------------------------------- */

static int dp_prepare(const struct spa_link_opts *o, struct spa_errbuf *err)
{
	if (!o || !o->eal || !*o->eal)
		return 0;
	pthread_mutex_lock(&g.lock);
	int rc = 0;
	if (g.eal == 1 || g.eal < 0) {
		if (g.eal_args && !strcmp(g.eal_args, o->eal))
			goto out;
		/* EAL cannot restart within a process: the first arguments stay. */
		rc = spa_err(err, -SPA_EUSAGE,
			     "dpdk: EAL already started in this process with other arguments; "
			     "give the same --eal to every dpdk link of a process");
		goto out;
	}
	free(g.eal_args);
	g.eal_args = strdup(o->eal);
	if (!g.eal_args)
		rc = spa_err(err, -ENOMEM, "dpdk: out of memory");
out:
	pthread_mutex_unlock(&g.lock);
	return rc;
}

/* Remove an EAL runtime folder (flat: config, fbarray_*, mp_socket). */
static void rm_runtime_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	char p[PATH_MAX];
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
			unlink(p);
		}
	closedir(d);
	rmdir(dir);
}

static void eal_atexit(void)
{
	const char *dir = rte_eal_get_runtime_dir();
	if (dir && strstr(dir, "/spa-"))
		rm_runtime_dir(dir);
	/* The memif PMD leaves its server socket files behind: remove ours (the ports live
	 * until exit), unless another process has made a new one at that path since. */
	for (int i = 0; i < g.n_ports; i++) {
		struct stat st;
		const struct dp_port *p = g.ports[i];
		if (p->sock[0] && !stat(p->sock, &st) && S_ISSOCK(st.st_mode) &&
		    st.st_dev == p->sock_dev && st.st_ino == p->sock_ino)
			unlink(p->sock);
	}
}

/* EAL leaves /var/run/dpdk/PREFIX behind (3 MB with --no-huge); remove ours at exit, and
 * those of spa processes that died without running their exit handlers. */
static void sweep_runtime_dirs(void)
{
	const char *base = getuid() == 0 ? "/var/run/dpdk" : getenv("XDG_RUNTIME_DIR");
	char root[1024];
	if (!base)
		base = "/tmp";
	snprintf(root, sizeof root, "%s%s", base, getuid() == 0 ? "" : "/dpdk");
	DIR *d = opendir(root);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		if (strncmp(e->d_name, "spa-", 4))
			continue;
		long pid = strtol(e->d_name + 4, &end, 10);
		if (*end || pid <= 0 || pid == getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		char p[PATH_MAX];
		snprintf(p, sizeof p, "%s/%s", root, e->d_name);
		rm_runtime_dir(p);
	}
	closedir(d);
}

/* The first CPU the calling thread may run on. */
static int first_cpu(const cpu_set_t *s)
{
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, s))
			return c;
	return 0;
}

/* Start EAL once per process. Called with g.lock held. */
static int eal_start(const struct dp_opts *o, struct spa_errbuf *err)
{
	if (g.eal == 1)
		return 0;
	if (g.eal < 0)
		return spa_err(err, g.eal, "%s", g.eal_err);
	cpu_set_t before;
	int have_before = !pthread_getaffinity_np(pthread_self(), sizeof before, &before);
	static char *argv[64];
	static char store[2048];
	int argc = 0;
	size_t used = 0;
#define ARG(...)                                                                               \
	do {                                                                                   \
		int k_ = snprintf(store + used, sizeof store - used, __VA_ARGS__);             \
		if (k_ < 0 || (size_t)k_ >= sizeof store - used || argc >= 62)                   \
			goto too_long;                                                         \
		argv[argc++] = store + used;                                                   \
		used += (size_t)k_ + 1;                                                        \
	} while (0)
	ARG("spa");
	int user_l = 0;
	if (g.eal_args) {
		char *a = strdup(g.eal_args), *save = NULL;
		if (!a)
			return spa_err(err, -ENOMEM, "dpdk: out of memory");
		for (char *t = strtok_r(a, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
			if (!strcmp(t, "-l") || !strncmp(t, "--lcores", 8) || !strcmp(t, "-c"))
				user_l = 1;
			ARG("%s", t);
		}
		free(a);
		g.eal_ours = 0;
	} else {
		int vdev_only = !is_pci_addr(o->dev, &(unsigned){0}, &(unsigned){0},
					     &(unsigned){0}, &(unsigned){0});
		if (vdev_only) {
			ARG("--no-huge");
			ARG("--no-pci");
			ARG("-m");
			ARG("256");
		} else {
			ARG("-a");
			ARG("%s", o->dev);
		}
		ARG("--file-prefix=spa-%d", (int)getpid());
		ARG("--no-telemetry");
		ARG("--log-level=%s", getenv("SPA_DPDK_LOG") ? getenv("SPA_DPDK_LOG") : "warning");
		g.eal_ours = vdev_only;
	}
	if (!user_l) {
		ARG("-l");
		ARG("%d", have_before ? first_cpu(&before) : 0);
	}
	argv[argc] = NULL;
	char line[1024];
	size_t ll = 0;
	for (int i = 1; i < argc && ll < sizeof line - 1; i++)
		ll += (size_t)snprintf(line + ll, sizeof line - ll, "%s%s", i > 1 ? " " : "", argv[i]);
	int n = rte_eal_init(argc, argv);
	if (n < 0) {
		int e = rte_errno;
		snprintf(g.eal_err, sizeof g.eal_err,
			 "dpdk: EAL could not start (%s) with \"%.*s\"; check the EAL arguments "
			 "(--eal), that you may use the memory asked for (root or CAP_IPC_LOCK, "
			 "hugepages unless --no-huge) and that DPDK's PMDs are installed "
			 "(/usr/lib/x86_64-linux-gnu/dpdk/pmds-*)",
			 rte_strerror(e), (int)(sizeof g.eal_err - 360), line);
		g.eal = -SPA_EUNSUPPORTED;
		return spa_err(err, g.eal, "%s", g.eal_err);
	}
	g.eal = 1;
	if (g.eal_ours) {
		atexit(eal_atexit);
		sweep_runtime_dirs();
	}
	/* The memif PMD writes its control socket without MSG_NOSIGNAL: a peer that hangs up at
	 * the wrong moment would kill this process with SIGPIPE. Ignore it unless the program
	 * chose a handler of its own. */
	struct sigaction sa;
	if (!sigaction(SIGPIPE, NULL, &sa) && sa.sa_handler == SIG_DFL)
		signal(SIGPIPE, SIG_IGN);
	/* Our own -l only names a CPU for EAL's bookkeeping: the thread keeps the binding the
	 * program chose (spa-cloud's and spa-edge's own pinning). */
	if (!user_l && have_before)
		pthread_setaffinity_np(pthread_self(), sizeof before, &before);
	return 0;
too_long:
	return spa_err(err, -SPA_EUSAGE, "dpdk: EAL arguments too long (at most 60, 2 KiB)");
#undef ARG
}

/* ---- ports ----------------------------------------------------------------------------- */

static void port_free(struct dp_port *p)
{
	if (!p)
		return;
	rte_mempool_free(p->pool);
	rte_mempool_free(p->ext_pool);
	rte_free(p);
}

/* A memif server whose socket file is left by a dead process: remove it, or bind fails. */
static void unlink_stale_socket(const char *path)
{
	struct stat st;
	if (stat(path, &st) || !S_ISSOCK(st.st_mode))
		return;
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%.107s", path);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) && errno == ECONNREFUSED)
		unlink(path);
	close(fd);
}

/* The memif socket=PATH of o's device arguments into path[128] (empty when there is none);
 * whether there is one. */
static bool memif_socket(const struct dp_opts *o, char path[128])
{
	const char *s = strstr(o->pmdargs, ",socket=");
	snprintf(path, 128, "%s", s ? s + 8 : "");
	path[strcspn(path, ",")] = 0;
	return s != NULL;
}

/* Is there a socket file for the memif client to connect to? (Starting a client port when
 * there is none makes the PMD log an error at each try.) */
static int memif_server_there(const struct dp_opts *o)
{
	char path[128];
	if (!memif_socket(o, path))
		return 1;
	struct stat st;
	return !stat(path, &st) && S_ISSOCK(st.st_mode);
}

/* ---- memif: bursts serialised with the PMD's disconnect --------------------------------- *
 *
 * DPDK 22.11's memif PMD handles its control socket in EAL's interrupt thread. When the peer
 * goes away (a DISCONNECT message, or the socket's end of file when the peer process died),
 * memif_disconnect() runs there: it marks the link down and the port not connected, takes the
 * port's control-channel lock (pmd_internals.cc_lock), closes the channel, releases it, and
 * then unmaps the shared-memory regions that hold the rings and buffers
 * (memif_free_regions). eth_memif_rx/tx check "connected" once, on entry, then work on the
 * rings: a polling thread that passed the check and was preempted (or is simply mid-copy)
 * when the interrupt thread unmaps faults (SIGSEGV) in the PMD. Checking the link state before
 * each burst only narrows the window; a peer killed mid-session still crashed the survivor.
 *
 * The fix: every burst on a memif port holds that same cc_lock (trylock; on failure a
 * disconnect is under way and the burst is skipped) and rechecks the link state under it.
 * memif_disconnect sets the link down before it takes the lock, and unmaps only after it
 * released it, so under the lock either the link reads down (we stay off the rings) or the
 * unmapping waits until our burst is over. The lock is the PMD's private state: it is found
 * through 22.11's layouts (rte_eth_devices[port].data->dev_private, struct pmd_internals of
 * drivers/net/memif/rte_eth_memif.h), each step checked against what we know independently
 * (the burst functions and queue arrays of the public rte_eth_fp_ops, the port's name, the
 * socket path, buffer size and ring counts we configured). Anything unexpected (another DPDK)
 * leaves ring_lock NULL: the old best effort, said at listen/connect. */

/* The head of DPDK 22.11's struct pmd_internals (memif), up to cfg. */
struct memif_pmd_2211 {
	uint32_t id;
	int role; /* 0 server, 1 client */
	uint32_t flags;
	char *socket_filename;
	char secret[24];
	void *cc;
	rte_spinlock_t cc_lock;
	char remote_name[RTE_DEV_NAME_MAX_LEN];
	char remote_if_name[RTE_DEV_NAME_MAX_LEN];
	struct {
		uint8_t log2_ring_size, num_c2s_rings, num_s2c_rings;
		uint16_t pkt_buffer_size;
	} cfg;
};

/* The head of struct rte_eth_dev: 6 fast-path function pointers, then data. */
struct ethdev_head_2211 {
	void *rx_pkt_burst, *tx_pkt_burst, *fn[4];
	uint8_t *data; /* struct rte_eth_dev_data: name[RTE_ETH_NAME_MAX_LEN] first */
};

static int readable(const void *a, size_t n)
{
	/* only DPDK's own memory is looked at; a NULL or odd pointer is refused */
	return a && !((uintptr_t)a & 7) && n;
}

/* The cc_lock of memif port port_id (role 0 server, 1 client, on socket sock_path), or NULL
 * with why filled. Control path. */
static rte_spinlock_t *memif_ring_lock(uint16_t port_id, int role, const char *sock_path,
				       char *why, size_t why_size)
{
#define NO(...) (snprintf(why, why_size, __VA_ARGS__), (rte_spinlock_t *)NULL)
	if (strncmp(rte_version(), "DPDK 22.11", 10))
		return NO("%s, not 22.11", rte_version());
	void *sym = dlsym(RTLD_DEFAULT, "rte_eth_devices");
	Dl_info di;
	const ElfW(Sym) *es = NULL;
	if (!sym || !dladdr1(sym, &di, (void **)&es, RTLD_DL_SYMENT) || !es ||
	    es->st_size % RTE_MAX_ETHPORTS)
		return NO("rte_eth_devices not found");
	size_t stride = es->st_size / RTE_MAX_ETHPORTS;
	if (stride < sizeof(struct ethdev_head_2211))
		return NO("rte_eth_devices has an unexpected size");
	const struct ethdev_head_2211 *dev =
		(const void *)((const uint8_t *)sym + stride * port_id);
	const struct rte_eth_fp_ops *fp = &rte_eth_fp_ops[port_id];
	if (dev->rx_pkt_burst != (void *)fp->rx_pkt_burst ||
	    dev->tx_pkt_burst != (void *)fp->tx_pkt_burst || !readable(dev->data, 1))
		return NO("rte_eth_dev layout differs");
	char name[RTE_ETH_NAME_MAX_LEN];
	if (rte_eth_dev_get_name_by_port(port_id, name) ||
	    strncmp((const char *)dev->data, name, sizeof name))
		return NO("rte_eth_dev_data layout differs (name)");
	/* rx_queues, tx_queues, two counts, sriov, then dev_private: find the queue arrays
	 * (rte_eth_fp_ops holds the same pointers), dev_private a little after them */
	const uint8_t *d = dev->data;
	size_t q = 0;
	for (size_t o = RTE_ETH_NAME_MAX_LEN; o <= 256; o += 8) {
		void *a, *b;
		memcpy(&a, d + o, 8);
		memcpy(&b, d + o + 8, 8);
		if (a == (void *)fp->rxq.data && b == (void *)fp->txq.data) {
			q = o;
			break;
		}
	}
	if (!q)
		return NO("rte_eth_dev_data layout differs (queues)");
	for (size_t o = q + 16; o <= q + 48; o += 8) {
		const struct memif_pmd_2211 *pmd;
		memcpy(&pmd, d + o, 8);
		if (!readable(pmd, sizeof *pmd) || rte_mem_virt2memseg_list(pmd) == NULL)
			continue; /* dev_private is rte_zmalloc'ed: DPDK memory */
		if (pmd->role != role || !readable(pmd->socket_filename, 1) ||
		    rte_mem_virt2memseg_list(pmd->socket_filename) == NULL ||
		    strncmp(pmd->socket_filename, sock_path, 108) || pmd->cfg.num_c2s_rings != 1 ||
		    pmd->cfg.num_s2c_rings != 1 || pmd->cfg.pkt_buffer_size != MEMIF_BSIZE ||
		    (pmd->cc_lock.locked & ~1))
			continue;
		return (rte_spinlock_t *)&pmd->cc_lock;
	}
	return NO("memif's pmd_internals not recognised");
#undef NO
}

/* memif: find the PMD's lock once the port is started (the burst functions and queue
 * arrays checked against are in place only then); a later start tries again. */
static void port_find_ring_lock(struct dp_port *p, const struct dp_opts *o, int role)
{
	if (p->ring_lock)
		return;
	if (p->stopped) {
		snprintf(p->no_lock, sizeof p->no_lock, "port not started");
		return;
	}
	char path[128];
	memif_socket(o, path);
	p->ring_lock = memif_ring_lock(p->port_id, role == 1 ? 0 : 1, path, p->no_lock,
				       sizeof p->no_lock);
}

/* Find or make the port for o; role 1 listener, 2 connector. Called with g.lock held. */
static int port_get(struct dp_port **out, const struct dp_opts *o, int listener, const char *uri,
		    struct spa_errbuf *err)
{
	int rc = eal_start(o, err);
	if (rc)
		return rc;
	int memif = !strcmp(o->dev, "memif");
	int role = o->role ? o->role : listener ? 1 : 2;
	char key[700];
	snprintf(key, sizeof key, "%s%s/%d", o->dev, o->pmdargs, memif ? role : 0);
	for (int i = 0; i < g.n_ports; i++)
		if (!strcmp(g.ports[i]->key, key)) {
			*out = g.ports[i];
			return 0;
		}
	if (g.n_ports == MAX_PORTS)
		return spa_err(err, -ENOSPC, "%s: this process already has %d dpdk ports", uri,
			       MAX_PORTS);

	struct dp_port *p = rte_zmalloc("spa-port", sizeof *p, RTE_CACHE_LINE_SIZE);
	if (!p)
		return spa_err(err, -ENOMEM, "%s: out of DPDK memory (EAL -m)", uri);
	snprintf(p->key, sizeof p->key, "%s", key);
	unsigned dom, bus, dev, fn;
	p->is_pci = is_pci_addr(o->dev, &dom, &bus, &dev, &fn);
	p->is_memif = memif;
	const char *vdrv = memif ? "net_memif"
			   : !strcmp(o->dev, "af_packet") ? "net_af_packet"
			   : !strcmp(o->dev, "af_xdp")	   ? "net_af_xdp"
							   : NULL;
	if (vdrv) {
		char devargs[768];
		snprintf(p->name, sizeof p->name, "%s_spa%d_%d", vdrv, (int)getpid() % 100000,
			 g.n_made++);
		if (memif) {
			char path[128];
			if (!memif_socket(o, path))
				return port_free(p), spa_err(err, -SPA_EUSAGE,
							  "%s: memif needs socket=PATH", uri);
			if (role == 1)
				unlink_stale_socket(path);
			snprintf(devargs, sizeof devargs, "%s,role=%s,socket-abstract=no,bsize=%u%s",
				 p->name, role == 1 ? "server" : "client", MEMIF_BSIZE, o->pmdargs);
		} else {
			snprintf(devargs, sizeof devargs, "%s%s", p->name, o->pmdargs);
		}
		rc = rte_dev_probe(devargs);
		if (rc < 0) {
			spa_err(err, rc < 0 ? rc : -ENODEV,
				"%s: DPDK could not create the %s port \"%s\" (%s); check the "
				"device arguments (%s) and that the PMD's plugin is installed%s",
				uri, vdrv, devargs, rte_strerror(-rc),
				memif ? "socket=PATH in a writable folder"
				      : "iface=NAME must be an existing interface of this network "
					"namespace",
				memif ? "" : "; af_packet and af_xdp need root (CAP_NET_RAW, "
					     "CAP_NET_ADMIN, CAP_BPF for af_xdp)");
			port_free(p);
			return rc;
		}
	} else {
		snprintf(p->name, sizeof p->name, "%s", o->dev);
		if (o->pmdargs[0])
			return port_free(p), spa_err(err, -SPA_EUSAGE,
						  "%s: device arguments (%s) only go with af_packet, "
						  "af_xdp or memif; give the others in --eal",
						  uri, o->pmdargs + 1);
	}
	if (rte_eth_dev_get_port_by_name(p->name, &p->port_id)) {
		if (!vdrv && p->is_pci && rte_dev_probe(p->name) == 0 &&
		    !rte_eth_dev_get_port_by_name(p->name, &p->port_id))
			goto found;
		spa_err(err, -ENODEV,
			"%s: no DPDK port named \"%s\"; %s", uri, p->name,
			p->is_pci ? "bind the NIC to vfio-pci (dpdk-devbind.py -b vfio-pci ADDR) and "
				    "give EAL -a ADDR (docs/real-nic.md)"
				  : "use af_packet, af_xdp, memif, a PCI address, or an ethdev "
				    "created by --vdev in --eal");
		port_free(p);
		return -ENODEV;
	}
found:;
	struct rte_eth_dev_info info;
	rc = rte_eth_dev_info_get(p->port_id, &info);
	if (rc) {
		spa_err(err, rc, "%s: cannot read port %s: %s", uri, p->name, rte_strerror(-rc));
		goto err;
	}
	p->zc = !!(info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS);
	p->pmd_holds = p->is_pci;
	/* memif has no wire: its "MTU" is what one buffer holds (ethdev reports 1500). */
	unsigned mtu = o->mtu ? o->mtu : memif ? MEMIF_MTU : 0;
	if (!mtu) {
		uint16_t m = 0;
		mtu = rte_eth_dev_get_mtu(p->port_id, &m) == 0 && m >= 576 ? m : STATIC_MTU;
	}
	if (memif && mtu + ETH_LEN > MEMIF_BSIZE) {
		rc = spa_err(err, -SPA_EUSAGE, "%s: mtu=%u exceeds memif's buffers (at most %u)",
			     uri, mtu, MEMIF_BSIZE - ETH_LEN);
		goto err;
	}
	p->mtu = mtu;
	unsigned room = (memif ? MEMIF_BSIZE : mtu + ETH_LEN + 64);
	if (room < 2048)
		room = 2048;
	char pname[64];
	snprintf(pname, sizeof pname, "spa-mb-%u", p->port_id);
	int sock = rte_eth_dev_socket_id(p->port_id);
	if (sock < 0)
		sock = SOCKET_ID_ANY;
	/* af_xdp takes this pool as its UMEM and fills its 2048-entry fill ring from it */
	unsigned n_mbuf = !strcmp(o->dev, "af_xdp") ? 4 * N_MBUF + 3 : N_MBUF;
	p->pool = rte_pktmbuf_pool_create(pname, n_mbuf, 64, 0,
					  (uint16_t)(room + RTE_PKTMBUF_HEADROOM), sock);
	snprintf(pname, sizeof pname, "spa-ext-%u", p->port_id);
	p->ext_pool = rte_pktmbuf_pool_create(pname, N_EXT, 32, 0, 0, sock);
	if (!p->pool || !p->ext_pool) {
		rc = spa_err(err, -ENOMEM,
			     "%s: cannot make the mbuf pools (%s): give EAL more memory (-m)", uri,
			     rte_strerror(rte_errno));
		goto err;
	}
	struct rte_eth_conf conf;
	memset(&conf, 0, sizeof conf);
	if (p->zc)
		conf.txmode.offloads = RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
	if (!memif && info.max_rx_pktlen >= mtu + ETH_LEN)
		conf.rxmode.mtu = mtu;
	if (!memif && mtu > 1500 && (info.rx_offload_capa & RTE_ETH_RX_OFFLOAD_SCATTER))
		conf.rxmode.offloads |= RTE_ETH_RX_OFFLOAD_SCATTER;
	rc = rte_eth_dev_configure(p->port_id, 1, 1, &conf);
	if (rc) {
		spa_err(err, rc, "%s: cannot configure port %s (MTU %u): %s", uri, p->name, mtu,
			rte_strerror(-rc));
		goto err;
	}
	uint16_t nrx = N_DESC, ntx = N_DESC;
	rte_eth_dev_adjust_nb_rx_tx_desc(p->port_id, &nrx, &ntx);
	struct rte_eth_txconf txc = info.default_txconf;
	txc.offloads = conf.txmode.offloads;
	rc = rte_eth_rx_queue_setup(p->port_id, 0, nrx, (unsigned)sock, NULL, p->pool);
	if (!rc)
		rc = rte_eth_tx_queue_setup(p->port_id, 0, ntx, (unsigned)sock, &txc);
	if (rc) {
		spa_err(err, rc, "%s: cannot set up the queues of port %s: %s", uri, p->name,
			rte_strerror(-rc));
		goto err;
	}
	if (!memif && !(info.max_rx_pktlen >= mtu + ETH_LEN) && (rc = rte_eth_dev_set_mtu(p->port_id, (uint16_t)mtu))) {
		spa_err(err, rc, "%s: port %s refuses MTU %u (%s): give a smaller mtu=", uri,
			p->name, mtu, rte_strerror(-rc));
		goto err;
	}
	if (memif && role == 2 && !memif_server_there(o)) {
		p->stopped = 1;
		rc = 0;
	} else {
		rc = rte_eth_dev_start(p->port_id);
	}
	if (rc && memif && role == 2) {
		/* the memif server is not there yet: connect retries the start */
		p->stopped = 1;
		rc = 0;
	}
	if (rc) {
		spa_err(err, rc, "%s: cannot start port %s: %s%s", uri, p->name, rte_strerror(-rc),
			memif && role == 1 ? " (is another process serving this memif socket?)" : "");
		goto err;
	}
	if (!memif)
		rte_eth_promiscuous_enable(p->port_id); /* peers may use a MAC we do not own */
	rte_eth_macaddr_get(p->port_id, &p->mac);
	if (memif)
		port_find_ring_lock(p, o, role);
	if (memif && role == 1) {
		struct stat st;
		memif_socket(o, p->sock);
		if (!p->sock[0] || stat(p->sock, &st) || !S_ISSOCK(st.st_mode)) {
			p->sock[0] = 0;
		} else {
			p->sock_dev = st.st_dev;
			p->sock_ino = st.st_ino;
		}
	}
	g.ports[g.n_ports++] = p;
	*out = p;
	return 0;
err:
	port_free(p);
	return rc ? rc : -EIO;
}

static int port_link_up(struct dp_port *p)
{
	struct rte_eth_link lk;
	if (rte_eth_link_get_nowait(p->port_id, &lk))
		return 1;
	return lk.link_status == RTE_ETH_LINK_UP;
}

/* rx/tx burst on the port's queue 0. On memif, under the PMD's cc_lock (memif_ring_lock
 * above): the rings cannot be unmapped under us. The burst itself then returns at once when
 * the port is no longer connected: memif_disconnect clears the flag eth_memif_rx/tx test on
 * entry before it takes the lock (and our trylock orders the two). Hot path. */
static inline uint16_t port_rx(struct dp_port *p, struct rte_mbuf **m, uint16_t n)
{
	rte_spinlock_t *lk = p->ring_lock;
	if (!lk)
		return rte_eth_rx_burst(p->port_id, 0, m, n);
	if (!rte_spinlock_trylock(lk))
		return 0; /* the PMD is disconnecting */
	uint16_t k = rte_eth_rx_burst(p->port_id, 0, m, n);
	rte_spinlock_unlock(lk);
	return k;
}

static inline uint16_t port_tx(struct dp_port *p, struct rte_mbuf **m, uint16_t n)
{
	rte_spinlock_t *lk = p->ring_lock;
	if (!lk)
		return rte_eth_tx_burst(p->port_id, 0, m, n);
	if (!rte_spinlock_trylock(lk))
		return 0;
	uint16_t k = rte_eth_tx_burst(p->port_id, 0, m, n);
	rte_spinlock_unlock(lk);
	return k;
}

static void warn_no_lock(struct dp_port *p, const char *uri)
{
	if (p->is_memif && !p->ring_lock && !p->warned) {
		p->warned = 1;
		fprintf(stderr, "spa dpdk: warning: %s: memif's disconnect lock not found (%s): a "
			"peer killed mid-session may crash this process (docs/dpdk.md)\n", uri,
			p->no_lock);
	}
}

/* hwloc placement: on a NIC, the calling (polling) thread moves to a core near it; else it
 * keeps its binding. Printed once per listen / connect. */
static void place(struct dp_port *p, const char *uri)
{
	char where[160], why[300] = "";
	unsigned dom, bus, dev, fn;
	if (p->is_pci && is_pci_addr(p->name, &dom, &bus, &dev, &fn)) {
		hwloc_topology_t t;
		if (!hwloc_topology_init(&t)) {
			hwloc_topology_set_io_types_filter(t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
			if (!hwloc_topology_load(t)) {
				hwloc_obj_t d = hwloc_get_pcidev_by_busid(t, dom, bus, dev, fn);
				hwloc_obj_t a = d ? hwloc_get_non_io_ancestor_obj(t, d) : NULL;
				if (a && a->cpuset) {
					hwloc_bitmap_t cur = hwloc_bitmap_alloc(), s = hwloc_bitmap_alloc();
					hwloc_get_cpubind(t, cur, HWLOC_CPUBIND_THREAD);
					hwloc_bitmap_and(s, cur, a->cpuset);
					if (hwloc_bitmap_iszero(s))
						hwloc_bitmap_copy(s, a->cpuset);
					hwloc_bitmap_singlify(s);
					int ok = !hwloc_set_cpubind(t, s, HWLOC_CPUBIND_THREAD);
					char cs[64];
					hwloc_bitmap_list_snprintf(cs, sizeof cs, a->cpuset);
					snprintf(why, sizeof why, "NIC %s is local to cpus %s%s", p->name, cs,
						 ok ? "" : " (could not bind there)");
					hwloc_bitmap_free(cur);
					hwloc_bitmap_free(s);
				} else {
					snprintf(why, sizeof why,
						 "hwloc does not know NIC %s's locality; binding kept",
						 p->name);
				}
			}
			hwloc_topology_destroy(t);
		}
	} else {
		snprintf(why, sizeof why, "no NIC named (%s); binding kept",
			 p->is_memif ? "memif" : "kernel interface");
	}
	spa_pin_describe(where, sizeof where);
	fprintf(stderr, "spa dpdk: %s on port %s (MTU %u, %s): polling thread on %s; %s\n", uri,
		p->name, p->mtu, p->zc ? "zero-copy send" : "send copies the payload: PMD takes no "
							    "chained mbufs",
		where, why);
	if (!p->stopped)
		warn_no_lock(p, uri);
}

/* ---- frames ---------------------------------------------------------------------------- */

/* Encapsulation of a frame to dst/dst_ip into h; returns its length. */
static unsigned encap(const struct dp_port *p, const struct dp_opts *o, uint8_t *h,
		      const struct rte_ether_addr *dst, uint32_t dst_ip)
{
	struct rte_ether_hdr *e = (struct rte_ether_hdr *)h;
	rte_ether_addr_copy(dst, &e->dst_addr);
	rte_ether_addr_copy(&p->mac, &e->src_addr);
	unsigned n = ETH_LEN;
	if (o->udp) {
		e->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
		struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(h + ETH_LEN);
		memset(ip, 0, sizeof *ip);
		ip->version_ihl = 0x45;
		ip->time_to_live = 64;
		ip->next_proto_id = IPPROTO_UDP;
		ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
		ip->src_addr = o->ip;
		ip->dst_addr = dst_ip;
		struct rte_udp_hdr *u = (struct rte_udp_hdr *)(ip + 1);
		u->src_port = u->dst_port = rte_cpu_to_be_16(o->udp_port);
		u->dgram_cksum = 0; /* optional in IPv4; the link layer's CRC32C covers the frame */
		n += IPUDP_LEN;
	} else {
		e->ether_type = rte_cpu_to_be_16(o->ethertype);
	}
	return n;
}

/* Fill in the IPv4/UDP lengths and checksum for a frame of total length len. */
static inline void encap_fix(const struct dp_opts *o, uint8_t *h, size_t len)
{
	if (!o->udp)
		return;
	struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(h + ETH_LEN);
	ip->total_length = rte_cpu_to_be_16((uint16_t)(len - ETH_LEN));
	ip->hdr_checksum = 0;
	ip->hdr_checksum = rte_ipv4_cksum(ip);
	struct rte_udp_hdr *u = (struct rte_udp_hdr *)(ip + 1);
	u->dgram_len = rte_cpu_to_be_16((uint16_t)(len - ETH_LEN - 20));
}

struct rx_info {
	uint64_t conn;        /* the frame's connection id */
	const uint8_t *frame; /* the spa frame (in the first segment when contiguous) */
	size_t len;           /* its bytes */
	struct rte_ether_addr src;
	uint32_t src_ip;
};

/* Classify one received mbuf: 0 ours (an spa frame of this wire version, info filled), or -1
 * dropped and counted. */
static int classify(struct dp_port *p, const struct dp_opts *o, struct rte_mbuf *m,
		    struct rx_info *ri)
{
	uint32_t plen = rte_pktmbuf_pkt_len(m), dl = rte_pktmbuf_data_len(m);
	unsigned need = ETH_LEN + (o->udp ? IPUDP_LEN : 0) + SPA_HDR_PEEK;
	if (plen < ETH_LEN) {
		p->drops.drop_short++;
		return -1;
	}
	if (dl < need && plen >= need) {
		/* headers split over segments: make them contiguous (rare: tiny first segments) */
		if (rte_pktmbuf_linearize(m)) {
			p->drops.drop_short++;
			return -1;
		}
		dl = rte_pktmbuf_data_len(m);
	}
	const uint8_t *d = rte_pktmbuf_mtod(m, const uint8_t *);
	const struct rte_ether_hdr *e = (const struct rte_ether_hdr *)d;
	uint16_t et = rte_be_to_cpu_16(e->ether_type);
	unsigned off = ETH_LEN;
	if (o->udp) {
		if (et != RTE_ETHER_TYPE_IPV4) {
			p->drops.drop_foreign++;
			return -1;
		}
		if (plen < ETH_LEN + IPUDP_LEN) {
			p->drops.drop_short++;
			return -1;
		}
		const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(d + ETH_LEN);
		const struct rte_udp_hdr *u = (const struct rte_udp_hdr *)(ip + 1);
		if (ip->version_ihl != 0x45 || ip->next_proto_id != IPPROTO_UDP ||
		    (ip->fragment_offset & rte_cpu_to_be_16(RTE_IPV4_HDR_MF_FLAG |
							    RTE_IPV4_HDR_OFFSET_MASK)) ||
		    u->dst_port != rte_cpu_to_be_16(o->udp_port) ||
		    (ip->dst_addr != o->ip)) {
			p->drops.drop_foreign++;
			return -1;
		}
		uint32_t tl = rte_be_to_cpu_16(ip->total_length);
		if (tl < IPUDP_LEN + SPA_HDR_PEEK || ETH_LEN + tl > plen ||
		    rte_be_to_cpu_16(u->dgram_len) != tl - 20) {
			p->drops.drop_short++;
			return -1;
		}
		plen = ETH_LEN + tl; /* Ethernet padding after the datagram is not ours */
		ri->src_ip = ip->src_addr;
		off += IPUDP_LEN;
	} else if (et != o->ethertype) {
		p->drops.drop_foreign++;
		return -1;
	}
	if (plen < off + SPA_HDR_PEEK) {
		p->drops.drop_short++;
		return -1;
	}
	const uint8_t *s = d + off;
	uint32_t magic;
	memcpy(&magic, s, 4);
	if (magic != SPA_WIRE_MAGIC || s[4] != SPA_WIRE_VERSION) {
		p->drops.drop_foreign++;
		return -1;
	}
	if (!rte_is_same_ether_addr(&e->dst_addr, &p->mac) &&
	    !rte_is_broadcast_ether_addr(&e->dst_addr)) {
		p->drops.drop_mac++;
		return -1;
	}
	memcpy(&ri->conn, s + SPA_WIRE_CONN_OFF, 8); /* little-endian, as this host */
	ri->frame = s;
	ri->len = plen - off;
	rte_ether_addr_copy(&e->src_addr, &ri->src);
	return 0;
}

/* Take the next mbuf off the port (burst cache); NULL when none is waiting. */
static inline struct rte_mbuf *port_next(struct dp_port *p)
{
	if (unlikely(p->quiet_until)) {
		/* The 22.11 memif PMD handles a client's hang-up in its interrupt thread and has
		 * crashed (EAL panic, "Error adding fd ... epoll_ctl") when the server kept
		 * polling meanwhile and the client process exited at once: after the last link
		 * of a memif server port closes, poll again only once the link is down. */
		if (port_link_up(p) && spa_clock_ns() < p->quiet_until)
			return NULL;
		p->quiet_until = 0;
	}
	if (p->rx_i == p->rx_n) {
		p->rx_i = 0;
		p->rx_n = 0;
		/* memif without the PMD's lock (memif_ring_lock): the link goes down before the
		 * rings go away; a read of the port's state narrows the race, no more */
		if (p->is_memif && !p->ring_lock && !port_link_up(p))
			return NULL;
		p->rx_n = port_rx(p, p->rx, RX_BURST);
		if (!p->rx_n)
			return NULL;
	}
	return p->rx[p->rx_i++];
}

/* ---- several links on a port: frames sorted by connection id ---------------------------- */

static inline int q_push(struct dp_queue *q, struct rte_mbuf *m)
{
	if ((uint16_t)(q->tail - q->head) == QLEN)
		return -1;
	q->m[q->tail++ & (QLEN - 1)] = m;
	return 0;
}

static inline struct rte_mbuf *q_pop(struct dp_queue *q)
{
	if (q->head == q->tail)
		return NULL;
	return q->m[q->head++ & (QLEN - 1)];
}

static void q_free(struct dp_queue *q)
{
	struct rte_mbuf *m;
	while ((m = q_pop(q)))
		rte_pktmbuf_free(m);
}

static struct dp_link *link_of(const struct dp_port *p, uint64_t conn)
{
	for (int i = 0; i < p->n_links; i++)
		if (p->links[i]->conn == conn && p->links[i]->bound)
			return p->links[i];
	return NULL;
}

/* Put a frame that is not the caller's where it belongs: the queue of the link of its
 * connection, or the listener's (a CONNECT of a new connection), or nowhere (dropped as
 * stale: a connection that has closed, or none). Returns 1 when m is me's, else 0. */
static int route(struct dp_port *p, const struct dp_link *me, struct rte_mbuf *m,
		 const struct rx_info *ri)
{
	if (me && me->bound && ri->conn == me->conn)
		return 1;
	struct dp_link *o = link_of(p, ri->conn);
	if (o) {
		if (q_push(&o->q, m))
			goto drop;
		return 0;
	}
	uint64_t id;
	if (p->listening && spa_wire_is_connect(ri->frame, ri->len, &id) &&
	    !q_push(&p->acceptq, m))
		return 0;
drop:
	p->drops.drop_stale++;
	rte_pktmbuf_free(m);
	return 0;
}

/* ---- fast path ------------------------------------------------------------------------- */

static void ext_free(void *addr, void *opaque)
{
	(void)addr;
	struct dp_link *l = opaque;
	l->ext_out--;
}

/* Hand frame *h to the port, waiting while its ring is full (or memif is not connected yet).
 * Returns 0 once sent, or -SPA_ECLOSED (the link marked closed, *h still the caller's) when
 * the port's link went down meanwhile. Hot path: the link state is read once per CHECK_NS. */
static int tx_wait(struct dp_link *l, struct rte_mbuf **h)
{
	struct dp_port *p = l->port;
	unsigned spins = 0;
	int64_t next_check = 0;
	while (port_tx(p, h, 1) == 0) {
		rte_pause();
		if (++spins & 255)
			continue;
		int64_t now = spa_clock_ns();
		if (now >= next_check) {
			next_check = now + CHECK_NS;
			if (!port_link_up(p)) {
				l->peer_closed = 1;
				return -SPA_ECLOSED;
			}
		}
	}
	return 0;
}

/* memif, a frame with a payload: the PMD copies the frame into its ring inside tx_burst and
 * frees the mbufs there, so one head mbuf and one external-buffer mbuf per link serve every
 * frame. Each goes out with a reference count of 2; the PMD's free drops it to 1, so neither
 * returns to its pool nor is the external buffer detached, and we own both again once
 * tx_burst returns: no pool operations, no attach/detach of a fresh mbuf per frame. The payload
 * is still attached, not copied (zero copy on send). */
static int send_reuse(struct dp_link *l, const struct iovec *iov)
{
	struct dp_port *p = l->port;
	if (unlikely(!l->tx_h)) {
		l->tx_h = rte_pktmbuf_alloc(p->pool);
		l->tx_x = rte_pktmbuf_alloc(p->ext_pool);
		if (!l->tx_h || !l->tx_x) {
			rte_pktmbuf_free(l->tx_h);
			rte_pktmbuf_free(l->tx_x);
			l->tx_h = l->tx_x = NULL;
			return -ENOBUFS;
		}
		l->shinfo.free_cb = ext_free;
		l->shinfo.fcb_opaque = l;
		rte_mbuf_ext_refcnt_set(&l->shinfo, 1);
	}
	struct rte_mbuf *h = l->tx_h, *x = l->tx_x;
	uint16_t hl = (uint16_t)(l->hdr_len + iov[0].iov_len), n = (uint16_t)iov[1].iov_len;
	h->data_off = RTE_PKTMBUF_HEADROOM;
	uint8_t *d = rte_pktmbuf_mtod(h, uint8_t *);
	memcpy(d, l->tmpl, l->hdr_len);
	encap_fix(&l->o, d, (size_t)hl + n);
	memcpy(d + l->hdr_len, iov[0].iov_base, iov[0].iov_len);
	h->data_len = hl;
	h->pkt_len = (uint32_t)hl + n;
	h->nb_segs = 2;
	h->next = x;
	/* attach the payload: the API the first time; afterwards x keeps the EXTBUF flag and the
	 * shared info (whose count stays 1: the PMD never frees x down to 0), and only the
	 * buffer moves */
	if (!RTE_MBUF_HAS_EXTBUF(x)) {
		rte_pktmbuf_attach_extbuf(x, iov[1].iov_base, RTE_BAD_IOVA, n, &l->shinfo);
	} else {
		x->buf_addr = iov[1].iov_base;
		rte_mbuf_iova_set(x, RTE_BAD_IOVA);
		x->buf_len = n;
		x->data_off = 0;
	}
	x->data_len = n;
	x->pkt_len = n;
	x->nb_segs = 1;
	x->next = NULL;
	rte_mbuf_refcnt_set(h, 2);
	rte_mbuf_refcnt_set(x, 2);
	if (tx_wait(l, &h) < 0)
		return -SPA_ECLOSED; /* h and x stay the link's (dp_close) */
	l->st.tx_zc_bytes += n;
	l->st.tx_frames++;
	return 0;
}

static int dp_send_frame(struct spa_link_base *b, const struct iovec *iov, int n_iov)
{
	struct dp_link *l = (struct dp_link *)b;
	struct dp_port *p = l->port;
	if (l->peer_closed)
		return -SPA_ECLOSED;
	size_t len = 0;
	for (int i = 0; i < n_iov; i++)
		len += iov[i].iov_len;
	/* The link layer gives its header + at most one payload slice; one external segment
	 * per frame is what the link's single shared info allows. */
	if (n_iov < 1 || n_iov > 2)
		return -EINVAL;
	if (len > l->max_frame)
		return -EMSGSIZE;
	if (p->is_memif && p->zc && n_iov == 2 && iov[1].iov_len)
		return send_reuse(l, iov);
	struct rte_mbuf *h = rte_pktmbuf_alloc(p->pool);
	if (!h)
		return -ENOBUFS;
	/* Headers (ours + the link layer's iov[0]) go into the head mbuf. */
	size_t inl = iov[0].iov_len;
	int zc = p->zc;
	if (!zc)
		inl = len; /* everything into the head: counted as copied below */
	/* (a frame is never shorter than Ethernet's minimum: 14 + 64 header bytes at least) */
	uint8_t *d = (uint8_t *)rte_pktmbuf_append(h, (uint16_t)(l->hdr_len + inl));
	if (!d) {
		rte_pktmbuf_free(h);
		return -EMSGSIZE;
	}
	memcpy(d, l->tmpl, l->hdr_len);
	encap_fix(&l->o, d, l->hdr_len + len);
	uint8_t *w = d + l->hdr_len;
	memcpy(w, iov[0].iov_base, iov[0].iov_len);
	w += iov[0].iov_len;
	for (int i = 1; i < n_iov; i++) {
		if (!iov[i].iov_len)
			continue;
		void *a = iov[i].iov_base;
		rte_iova_t iova = RTE_BAD_IOVA;
		int copy = !zc;
		if (zc && p->pmd_holds) {
			/* a NIC DMAs from the buffer: only DPDK (registered) memory has an IOVA */
			iova = rte_mem_virt2iova(a);
			copy = iova == RTE_BAD_IOVA;
		}
		if (copy) {
			if (zc && !rte_pktmbuf_append(h, (uint16_t)iov[i].iov_len)) {
				rte_pktmbuf_free(h);
				return -EMSGSIZE;
			}
			memcpy(w, a, iov[i].iov_len);
			w += iov[i].iov_len;
			l->st.tx_copied += iov[i].iov_len;
			continue;
		}
		struct rte_mbuf *x = rte_pktmbuf_alloc(p->ext_pool);
		if (!x) {
			rte_pktmbuf_free(h);
			return -ENOBUFS;
		}
		struct rte_mbuf_ext_shared_info *si = &l->shinfo;
		si->free_cb = ext_free;
		si->fcb_opaque = l;
		rte_mbuf_ext_refcnt_set(si, 1);
		rte_pktmbuf_attach_extbuf(x, a, iova, (uint16_t)iov[i].iov_len, si);
		x->data_len = (uint16_t)iov[i].iov_len;
		x->pkt_len = x->data_len;
		l->ext_out++;
		if (rte_pktmbuf_chain(h, x)) {
			rte_pktmbuf_free(x);
			rte_pktmbuf_free(h);
			return -EMSGSIZE;
		}
		l->st.tx_zc_bytes += iov[i].iov_len;
	}
	if (tx_wait(l, &h) < 0) {
		rte_pktmbuf_free(h);
		return -SPA_ECLOSED;
	}
	/* The caller may reuse the payload once we return: wait until the PMD let go of it. */
	unsigned spins = 0;
	while (l->ext_out) {
		rte_pause();
		if (p->pmd_holds && !(++spins & 63))
			rte_eth_tx_done_cleanup(p->port_id, 0, 0);
	}
	l->st.tx_frames++;
	return 0;
}

/* A frame written in place (a sealed one): the head mbuf with room for our encapsulation and
 * len bytes of frame, which the connection layer writes (seals) at *out; frame_commit sends
 * it. No copy of the payload but that pass. */
static int dp_frame_reserve(struct spa_link_base *b, size_t len, uint8_t **out)
{
	struct dp_link *l = (struct dp_link *)b;
	if (l->peer_closed)
		return -SPA_ECLOSED;
	if (len > l->max_frame)
		return -EMSGSIZE;
	struct rte_mbuf *h = rte_pktmbuf_alloc(l->port->pool);
	if (!h)
		return -ENOBUFS;
	uint8_t *d = (uint8_t *)rte_pktmbuf_append(h, (uint16_t)(l->hdr_len + len));
	if (!d) {
		rte_pktmbuf_free(h);
		return -EMSGSIZE;
	}
	memcpy(d, l->tmpl, l->hdr_len);
	encap_fix(&l->o, d, l->hdr_len + len);
	l->tx_res = h;
	*out = d + l->hdr_len;
	return 0;
}

static int dp_frame_commit(struct spa_link_base *b)
{
	struct dp_link *l = (struct dp_link *)b;
	struct rte_mbuf *h = l->tx_res;
	l->tx_res = NULL;
	if (tx_wait(l, &h) < 0) {
		rte_pktmbuf_free(h);
		return -SPA_ECLOSED;
	}
	l->st.tx_frames++;
	return 0;
}

/* The frame in m (classified as ri) handed out: in place when contiguous, else linearised
 * into the link's buffer. Returns 0, or -1 when it is too long (dropped). */
static int hand_out(struct dp_link *l, struct rte_mbuf *m, const struct rx_info *ri,
		    const uint8_t **frame, size_t *len)
{
	if (rte_pktmbuf_is_contiguous(m)) {
		*frame = ri->frame;
	} else {
		size_t off = (size_t)(ri->frame - rte_pktmbuf_mtod(m, uint8_t *));
		if (ri->len > l->max_frame) {
			l->port->drops.drop_short++;
			rte_pktmbuf_free(m);
			return -1;
		}
		*frame = rte_pktmbuf_read(m, (uint32_t)off, (uint32_t)ri->len, l->lin);
		if (*frame == l->lin)
			l->st.rx_linearised += ri->len;
	}
	*len = ri->len;
	l->cur = m;
	l->st.rx_frames++;
	return 0;
}

static int dp_recv_frame(struct spa_link_base *b, const uint8_t **frame, size_t *len,
			 int64_t deadline_ns)
{
	struct dp_link *l = (struct dp_link *)b;
	struct dp_port *p = l->port;
	if (l->cur) {
		rte_pktmbuf_free(l->cur);
		l->cur = NULL;
	}
	unsigned spins = 0;
	int64_t next_check = 0;
	for (;;) {
		if (l->peer_closed)
			return -SPA_ECLOSED;
		struct rte_mbuf *m = q_pop(&l->q);
		struct rx_info ri;
		if (m) {
			classify(p, &l->o, m, &ri); /* classified once already: cannot fail */
			if (!hand_out(l, m, &ri, frame, len))
				return 0;
			continue;
		}
		m = port_next(p);
		if (m) {
			if (classify(p, &l->o, m, &ri)) {
				rte_pktmbuf_free(m);
				continue;
			}
			if (route(p, l, m, &ri) && !hand_out(l, m, &ri, frame, len))
				return 0;
			continue;
		}
		rte_pause();
		if (++spins & 63)
			continue;
		int64_t now = spa_clock_ns();
		if (deadline_ns >= 0 && now >= deadline_ns)
			return -ETIMEDOUT;
		if (now >= next_check) {
			next_check = now + CHECK_NS;
			if (!port_link_up(p)) {
				/* memif: the peer disconnected (its process closed or died) */
				l->peer_closed = 1;
				return -SPA_ECLOSED;
			}
		}
	}
}

static void dp_release_frame(struct spa_link_base *b)
{
	struct dp_link *l = (struct dp_link *)b;
	if (l->cur) {
		rte_pktmbuf_free(l->cur);
		l->cur = NULL;
	}
}

static size_t dp_link_max_frame(struct spa_link_base *b)
{
	return ((struct dp_link *)b)->max_frame;
}

static uint64_t dp_copied_tx(struct spa_link_base *b)
{
	return ((struct dp_link *)b)->st.tx_copied;
}

static void dp_bind_conn(struct spa_link_base *b, uint64_t conn)
{
	struct dp_link *l = (struct dp_link *)b;
	l->conn = conn;
	l->bound = 1;
}

/* ---- control --------------------------------------------------------------------------- */

static int link_make(struct dp_link **out, struct dp_port *p, const struct dp_opts *o,
		     const struct rte_ether_addr *peer, uint32_t peer_ip, int listener_side,
		     const char *uri, struct spa_errbuf *err)
{
	if (p->n_links == MAX_LINKS)
		return spa_err(err, -EMFILE, "%s: %d links are open on port %s, the most one port "
			       "carries", uri, MAX_LINKS, p->name);
	struct dp_link *l = rte_zmalloc("spa-link", sizeof *l, RTE_CACHE_LINE_SIZE);
	if (!l)
		return spa_err(err, -ENOMEM, "%s: out of DPDK memory", uri);
	l->base.drv = &spa_drv_dpdk;
	l->base.local = p->is_memif;
	l->base.datagram = !p->is_memif; /* a wire (or its emulation) may lose frames */
	l->port = p;
	l->o = *o;
	l->peer = *peer;
	l->peer_ip = peer_ip;
	l->is_listener_side = listener_side;
	l->hdr_len = encap(p, o, l->tmpl, peer, peer_ip);
	l->max_frame = p->mtu - (o->udp ? IPUDP_LEN : 0);
	l->lin = malloc(l->max_frame);
	if (!l->lin) {
		rte_free(l);
		return spa_err(err, -ENOMEM, "%s: out of memory", uri);
	}
	p->links[p->n_links++] = l;
	*out = l;
	return 0;
}

/* memif client, its last link closing: stopping the port tears the rings down at once, and
 * frames still in them (the session's BYE, the connection's CLOSE) would never reach the peer.
 * Wait (at most LINGER_NS) for the peer's CLOSE of this connection, which it sends once it
 * has read ours, or for the link to go down. */
static void linger(struct dp_link *l)
{
	struct dp_port *p = l->port;
	int64_t end = spa_clock_ns() + LINGER_NS;
	while (spa_clock_ns() < end && port_link_up(p)) {
		struct rte_mbuf *m = port_next(p);
		if (!m) {
			rte_pause();
			continue;
		}
		struct rx_info ri;
		int ours = !classify(p, &l->o, m, &ri) && ri.conn == l->conn && l->bound;
		int close = ours && ri.len >= SPA_WIRE_HDR_SIZE && ri.frame[5] == SPA_MSG_CLOSE;
		rte_pktmbuf_free(m);
		if (close)
			return;
	}
}

static void dp_close(struct spa_link_base *b)
{
	struct dp_link *l = (struct dp_link *)b;
	if (!l)
		return;
	if (l->cur)
		rte_pktmbuf_free(l->cur);
	rte_pktmbuf_free(l->tx_res);
	q_free(&l->q);
	if (l->tx_h) {
		/* back to one reference each; x's free runs the shared info's callback once */
		rte_mbuf_refcnt_set(l->tx_h, 1);
		l->tx_h->next = NULL;
		l->tx_h->nb_segs = 1;
		rte_pktmbuf_free(l->tx_h);
		rte_mbuf_refcnt_set(l->tx_x, 1);
		rte_mbuf_ext_refcnt_set(&l->shinfo, 1);
		l->ext_out = 1;
		rte_pktmbuf_free(l->tx_x);
		l->ext_out = 0;
	}
	struct dp_port *p = l->port;
	if (p->is_memif && !l->is_listener_side && !p->stopped && p->n_links == 1 && l->bound &&
	    !l->peer_closed)
		linger(l);
	for (int i = 0; i < p->n_links; i++)
		if (p->links[i] == l) {
			p->links[i] = p->links[--p->n_links];
			break;
		}
	if (p->is_memif && l->is_listener_side && !p->n_links) {
		/* The client hangs up once its last link is closed (it waits for our CLOSE):
		 * let it, without polling the rings meanwhile (port_next), before this process
		 * may exit or accept the next (an exit is a hang-up too, under the client's rx
		 * polling). */
		int64_t end = spa_clock_ns() + QUIET_NS;
		while (port_link_up(p) && spa_clock_ns() < end)
			rte_pause();
		if (port_link_up(p))
			p->quiet_until = end;
	}
	if (p->is_memif && !l->is_listener_side && !p->stopped && !p->n_links) {
		/* A memif client leaves the server cleanly (DISCONNECT message) rather than by
		 * its process exiting, once its last link is closed. The next connect starts the
		 * port again. */
		rte_eth_dev_stop(p->port_id);
		p->stopped = 1;
	}
	free(l->lin);
	rte_free(l);
}

static int dp_listen(struct spa_listener_base **out, const char *uri, struct spa_errbuf *err)
{
	struct dp_listener *l = calloc(1, sizeof *l);
	if (!l)
		return spa_err(err, -ENOMEM, "%s: out of memory", uri);
	l->base.drv = &spa_drv_dpdk;
	snprintf(l->uri, sizeof l->uri, "%s", uri);
	int rc = opts_parse(uri, &l->o, err);
	if (rc)
		goto err;
	if (l->o.role == 2) {
		rc = spa_err(err, -SPA_EUSAGE, "%s: the listening side of memif is role=server", uri);
		goto err;
	}
	pthread_mutex_lock(&g.lock);
	rc = port_get(&l->port, &l->o, 1, uri, err);
	pthread_mutex_unlock(&g.lock);
	if (rc)
		goto err;
	if (l->port->listening) {
		rc = spa_err(err, -EADDRINUSE, "%s: port %s already has a listener in this process",
			     uri, l->port->name);
		goto err;
	}
	l->port->listening = 1;
	l->base.local = l->port->is_memif;
	place(l->port, uri);
	*out = &l->base;
	return 0;
err:
	free(l);
	return rc;
}

static int dp_accept(struct spa_listener_base *b, struct spa_link_base **out, int64_t timeout_ns,
		     struct spa_errbuf *err)
{
	struct dp_listener *L = (struct dp_listener *)b;
	struct dp_port *p = L->port;
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	unsigned spins = 0;
	for (;;) {
		struct rte_mbuf *m = q_pop(&p->acceptq);
		struct rx_info ri;
		if (!m) {
			m = port_next(p);
			if (m && classify(p, &L->o, m, &ri)) {
				rte_pktmbuf_free(m);
				continue;
			}
			if (m && !route(p, NULL, m, &ri))
				continue;
		}
		if (m) {
			classify(p, &L->o, m, &ri);
			uint64_t id;
			struct dp_link *o = link_of(p, ri.conn);
			if (o || !spa_wire_is_connect(ri.frame, ri.len, &id) ||
			    (L->o.have_peer && !rte_is_same_ether_addr(&ri.src, &L->o.peer))) {
				/* a repeated CONNECT of a connection made meanwhile goes to it */
				if (!o || q_push(&o->q, m)) {
					p->drops.drop_stale++;
					rte_pktmbuf_free(m);
				}
				continue;
			}
			struct dp_link *l;
			int rc = link_make(&l, p, &L->o, &ri.src, ri.src_ip, 1, L->uri, err);
			if (rc) {
				rte_pktmbuf_free(m);
				return rc;
			}
			dp_bind_conn(&l->base, ri.conn);
			q_push(&l->q, m); /* its first frame, for the connection layer */
			*out = &l->base;
			return 0;
		}
		rte_pause();
		if (!(++spins & 63) && deadline >= 0 && spa_clock_ns() >= deadline)
			return spa_err(err, -ETIMEDOUT, "%s: no edge connected in time", L->uri);
	}
}

static void dp_listener_close(struct spa_listener_base *b)
{
	/* The port stays for the process's later sessions (EAL cannot restart anyway). */
	struct dp_listener *L = (struct dp_listener *)b;
	if (!L)
		return;
	L->port->listening = 0;
	q_free(&L->port->acceptq);
	free(b);
}

static int dp_connect(struct spa_link_base **out, const char *uri, int64_t timeout_ns,
		      struct spa_errbuf *err)
{
	struct dp_opts o;
	int rc = opts_parse(uri, &o, err);
	if (rc)
		return rc;
	if (o.role == 1)
		return spa_err(err, -SPA_EUSAGE, "%s: the connecting side of memif is role=client",
			       uri);
	int memif = !strcmp(o.dev, "memif");
	if (!memif && !o.have_peer)
		return spa_err(err, -SPA_EUSAGE,
			       "%s: give the listener's MAC address as peer=xx:xx:xx:xx:xx:xx (the "
			       "next hop's with udp= across routers): it is never guessed",
			       uri);
	if (o.udp && !o.peer_ip)
		return spa_err(err, -SPA_EUSAGE, "%s: udp= needs the listener's peer_ip=A.B.C.D",
			       uri);
	struct dp_port *p;
	pthread_mutex_lock(&g.lock);
	rc = port_get(&p, &o, 0, uri, err);
	pthread_mutex_unlock(&g.lock);
	if (rc)
		return rc;
	place(p, uri);
	int64_t start = spa_clock_ns();
	int64_t deadline = timeout_ns < 0 ? -1 : start + timeout_ns;
	struct rte_ether_addr dst;
	if (o.have_peer)
		dst = o.peer;
	else
		memset(&dst, 0xff, sizeof dst); /* memif is point to point: broadcast reaches it */
	int64_t down_since = -1;
	/* memif: the client connects once, at start; retry while the server is not there yet.
	 * The handshake is the connection layer's, once the port is up. */
	for (;;) {
		int64_t now = spa_clock_ns();
		if (!p->stopped && port_link_up(p))
			break;
		if (deadline >= 0 && now >= deadline)
			return spa_err(err, -ETIMEDOUT,
				       "%s: the port did not come up in time%s", uri,
				       memif ? " (is spa-cloud listening on this memif socket?)"
					     : " (check the interface)");
		if (down_since < 0)
			down_since = now;
		if (memif && (p->stopped || now - down_since > 50000000) &&
		    memif_server_there(&o)) {
			if (!p->stopped)
				rte_eth_dev_stop(p->port_id);
			p->stopped = rte_eth_dev_start(p->port_id) != 0;
			port_find_ring_lock(p, &o, 2);
			down_since = now;
		}
		rte_delay_us_sleep(1000);
	}
	warn_no_lock(p, uri);
	struct dp_link *l;
	rc = link_make(&l, p, &o, &dst, o.peer_ip, 0, uri, err);
	if (rc)
		return rc;
	*out = &l->base;
	return 0;
}

/* ---- test hooks (dpdk.h) --------------------------------------------------------------- */

int spa_dpdk_link_stats(struct spa_link_base *b, struct spa_dpdk_stats *st)
{
	if (!b || b->drv != &spa_drv_dpdk)
		return -EINVAL;
	struct dp_link *l = (struct dp_link *)b;
	*st = l->st;
	st->drop_short = l->port->drops.drop_short;
	st->drop_foreign = l->port->drops.drop_foreign;
	st->drop_mac = l->port->drops.drop_mac;
	st->drop_stale = l->port->drops.drop_stale;
	return 0;
}

int spa_dpdk_send_raw(struct spa_link_base *b, const void *frame, size_t len)
{
	if (!b || b->drv != &spa_drv_dpdk || !len)
		return -EINVAL;
	struct dp_link *l = (struct dp_link *)b;
	struct rte_mbuf *m = rte_pktmbuf_alloc(l->port->pool);
	if (!m)
		return -ENOBUFS;
	uint8_t *d = (uint8_t *)rte_pktmbuf_append(m, (uint16_t)len);
	if (!d || len > 65535) {
		rte_pktmbuf_free(m);
		return -EINVAL;
	}
	memcpy(d, frame, len);
	for (int i = 0; i < 100000; i++)
		if (port_tx(l->port, &m, 1) == 1)
			return 0;
	rte_pktmbuf_free(m);
	return -EAGAIN;
}

int spa_dpdk_link_encap(struct spa_link_base *b, uint8_t *hdr, size_t cap)
{
	if (!b || b->drv != &spa_drv_dpdk)
		return -EINVAL;
	struct dp_link *l = (struct dp_link *)b;
	if (cap < l->hdr_len)
		return -ENOSPC;
	memcpy(hdr, l->tmpl, l->hdr_len);
	return (int)l->hdr_len;
}

/* Links share ports, and a port is used from one thread at a time: one guard for them all
 * (the connection layer's keeper thread takes it only when the application is in none). */
static struct spa_guard dpdk_guard;

const struct spa_link_driver spa_drv_dpdk = {
	.scheme = "dpdk",
	.max_frame = STATIC_MAX_FRAME,
	.guard = &dpdk_guard,
	.listen = dp_listen,
	.accept = dp_accept,
	.listener_close = dp_listener_close,
	.connect = dp_connect,
	.close = dp_close,
	.send_frame = dp_send_frame,
	.recv_frame = dp_recv_frame,
	.release_frame = dp_release_frame,
	.prepare = dp_prepare,
	.link_max_frame = dp_link_max_frame,
	.copied_tx = dp_copied_tx,
	.frame_reserve = dp_frame_reserve,
	.frame_commit = dp_frame_commit,
	.bind_conn = dp_bind_conn,
};
