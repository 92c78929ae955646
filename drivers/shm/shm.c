/* shm: same-host links over POSIX shared memory ("shm:/NAME").
 *
 * Two kinds of segment:
 *
 *   /dev/shm/spa-NAME        the listener's (16 KiB): magic "spa-shm2", version, the cloud's pid,
 *                            a GONE flag, and N_SLOTS mailbox slots through which edges hand
 *                            their connection segments to the listener
 *   /dev/shm/spa-NAME.XXXX   one per connection, made by the edge (XXXX: 16 random hex
 *                            digits): a 4 KiB control block (magic "spa-shc2", version, sizes,
 *                            both pids, the CLOSED flags, and for each ring its head and tail
 *                            on cache lines of their own), then ring 0 (cloud -> edge) and ring
 *                            1 (edge -> cloud), RING_SIZE bytes each
 *
 * Connecting: the edge creates and maps its connection segment, claims a free slot of the
 * listener's with a compare-and-swap (0 -> CLAIMED | pid), writes the segment's name into it
 * and posts it (POSTED | pid, release). The listener's accept takes a posted slot, maps the
 * segment, removes its name (both sides have it mapped; nothing is left behind), records its
 * pid in it and frees the slot. That is all the driver does: the handshake (CONNECT/ACCEPT,
 * connection id) is the connection layer's (runtime/conn.c), over the rings, as on every
 * transport. Several connections may be open on one listener at once, each on its own rings.
 *
 * Each ring is single-producer single-consumer. head and tail are byte counters that only grow
 * (the position is counter % RING_SIZE). A record is a frame as the link built it, stored
 * contiguously from a 64-byte boundary and padded to a multiple of 64, so that the 64-byte wire
 * header fills one cache line and the payload starts on the next; its length is the frame's
 * own (header + payload_len [+ tag]; spa_wire_frame_size), read from the header. A record never wraps: when it does
 * not fit before the end of the ring, the producer writes the wrap marker 0xffffffff where a
 * frame's magic would be and continues at position 0; it also wraps early, when the ring is
 * empty and it is past the first REWIND_AT bytes, so request/response traffic stays on warm
 * lines. Receive is zero copy: recv_frame hands out the ring memory and release_frame gives it
 * back by advancing tail. A record whose header does not describe a frame (the peer's bug) is
 * handed up as its 64 header bytes, for the link to report, and ends the stream.
 *
 * Waiting is busy polling (no system call per message). While it spins, every ~1 ms the
 * waiter checks the peer's CLOSED flag, whether the peer process still exists (kill(pid, 0),
 * and /proc/PID/stat so that an unreaped zombie counts as gone) and, on an edge not yet taken
 * by the listener, whether the listener is still there, so a crashed peer gives -SPA_ECLOSED
 * instead of a hang. Pids mean something only when both sides share a pid namespace, which
 * sharing /dev/shm on one host normally implies. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "spa/clock.h"
#include "spa/drv/link.h"

#define LST_MAGIC 0x326d68732d617073ull /* "spa-shm2" */
#define SEG_MAGIC 0x326368732d617073ull /* "spa-shc2" */
#define SHM_VERSION 2u
#define LST_SIZE 16384u
#define N_SLOTS 48u
#define SEG_NAME 240u /* "/spa-" + a 200-character NAME + ".XXXX" fits */
#define CTL_SIZE 4096u
#define RING_SIZE (8u << 20)
#define MAX_FRAME (1u << 20)
#define REC_ALIGN 64u
#define WRAP_MARK 0xffffffffu
/* A producer past REWIND_AT in its ring wraps early when the ring is empty (see send) */
#define REWIND_AT (256u << 10)
#define SEG_SIZE ((size_t)CTL_SIZE + 2 * (size_t)RING_SIZE)

/* listener slot word: bits 0..31 the edge's pid, flags above */
#define SL_PID_MASK 0xffffffffull
#define SL_CLAIMED (1ull << 32)  /* an edge is writing its segment's name */
#define SL_POSTED (1ull << 33)   /* the name is there: the listener may take it */

/* connection segment: closed flags */
#define CL_CLOUD 1u
#define CL_EDGE 2u

#define RING_C2E 0
#define RING_E2C 1

#define CHECK_NS 1000000 /* liveness checks while spinning, ~1 ms apart */

struct shm_ring_idx {
	_Alignas(64) _Atomic uint64_t head; /* written by the producer only */
	_Alignas(64) _Atomic uint64_t tail; /* written by the consumer only */
};

struct shm_slot {
	_Alignas(64) _Atomic uint64_t word;
	char seg[SEG_NAME]; /* the connection segment's name, NUL-terminated */
};

struct shm_lst {
	_Atomic uint64_t magic; /* stored last at listen (release): the rest is valid */
	uint32_t version, n_slots;
	int32_t cloud_pid;
	_Atomic uint32_t gone;  /* the listener closed: no more connections here */
	struct shm_slot slot[N_SLOTS];
};
_Static_assert(sizeof(struct shm_lst) <= LST_SIZE, "listener segment exceeds its page");

struct shm_ctl {
	_Atomic uint64_t magic; /* stored last by the edge (release): the rest is valid */
	uint32_t version, ctl_size, ring_size, max_frame;
	int32_t edge_pid;
	_Atomic int32_t cloud_pid; /* 0 until the listener took the segment */
	_Alignas(64) _Atomic uint32_t closed;
	struct shm_ring_idx ring[2];
};
_Static_assert(sizeof(struct shm_ctl) <= CTL_SIZE, "control block exceeds its page");

/* One direction as seen by one side. */
struct shm_dir {
	struct shm_ring_idx *idx;
	uint8_t *data;
	uint64_t pos;   /* producer: our head; consumer: our tail */
	uint64_t cache; /* producer: last tail seen; consumer: last head seen */
	uint64_t rewind_next; /* producer: head from which to look again for an empty ring */
};

struct shm_link {
	struct spa_link_base base;
	void *map;
	struct shm_ctl *ctl;
	struct shm_dir tx, rx;
	uint32_t rx_pending;  /* bytes of the record handed out by recv_frame (0: none) */
	uint64_t tx_rec;      /* record reserved by frame_reserve (0: none) */
	int broken;           /* a malformed record: the stream is over */
	pid_t peer_pid;
	int peer_stat_fd;     /* /proc/PEER/stat, -1 when unavailable */
	uint32_t my_closed, peer_closed;
	struct shm_lst *lst;  /* edge: the listener's segment (GONE flag), until taken */
	char seg[SEG_NAME];   /* edge: its segment's name, removed at close if never taken */
};

struct shm_listener {
	struct spa_listener_base base;
	int fd;
	struct shm_lst *lst;
	char name[256];
	char path[256];
};

static inline uint64_t rec_size(size_t frame_len)
{
	return (frame_len + REC_ALIGN - 1) & ~(uint64_t)(REC_ALIGN - 1);
}

static void sleep_us(long us)
{
	struct timespec ts = { 0, us * 1000 };
	nanosleep(&ts, NULL);
}

/* Is process pid still running? A zombie (dead, not yet reaped) counts as gone. */
static int pid_alive(pid_t pid, int stat_fd)
{
	if (pid <= 0)
		return 0;
	if (kill(pid, 0) && errno == ESRCH)
		return 0;
	if (stat_fd >= 0) {
		char b[512];
		ssize_t n = pread(stat_fd, b, sizeof b - 1, 0);
		if (n <= 0)
			return 0; /* reaped: the kernel refuses reads of a dead task's stat */
		b[n] = 0;
		const char *rp = strrchr(b, ')'); /* comm may itself contain ')' */
		if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'))
			return 0;
	}
	return 1;
}

static int open_stat(pid_t pid)
{
	char p[64];
	snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
	return open(p, O_RDONLY | O_CLOEXEC);
}

/* ---- fast path ------------------------------------------------------------------------- */

struct shm_wait {
	unsigned spins;
	int64_t next_check;
};

/* One idle turn of a polling loop. Returns 0 to keep polling, -ETIMEDOUT at the deadline, or
 * -SPA_ECLOSED when the peer closed or went away. */
static int shm_idle(struct shm_link *l, struct shm_wait *w, int64_t deadline)
{
	__builtin_ia32_pause();
	if (++w->spins & 63)
		return 0;
	int64_t now = spa_clock_ns();
	if (deadline >= 0 && now >= deadline)
		return -ETIMEDOUT;
	if (now < w->next_check)
		return 0;
	w->next_check = now + CHECK_NS;
	/* acquire: pairs with the release fetch_or of the peer's close, so that frames it
	 * published before closing are visible to the caller's re-check of head */
	if (atomic_load_explicit(&l->ctl->closed, memory_order_acquire) & l->peer_closed)
		return -SPA_ECLOSED;
	if (l->lst && !atomic_load_explicit(&l->ctl->cloud_pid, memory_order_relaxed) &&
	    atomic_load_explicit(&l->lst->gone, memory_order_relaxed))
		return -SPA_ECLOSED; /* the listener closed before taking this connection */
	if (!pid_alive(l->peer_pid, l->peer_stat_fd))
		return -SPA_ECLOSED;
	return 0;
}

/* Reserve room for a record of a len-byte frame at the producer's position (waiting while the
 * ring is full); *out is where the frame's bytes go. Publish with shm_publish. */
static int shm_reserve(struct shm_link *l, size_t len, uint8_t **out, uint64_t *rec_out)
{
	struct shm_dir *d = &l->tx;
	if (len > MAX_FRAME || len < 4)
		return -EMSGSIZE;
	if (atomic_load_explicit(&l->ctl->closed, memory_order_relaxed) & l->peer_closed)
		return -SPA_ECLOSED;

	uint64_t rec = rec_size(len);
	uint64_t pos = d->pos % RING_SIZE;
	uint64_t contig = RING_SIZE - pos;
	int wrap = contig < rec;
	if (pos >= REWIND_AT && pos >= rec && d->pos >= d->rewind_next && !wrap) {
		/* Past the warm window: when the consumer has caught up (the ring is empty), wrap
		 * early, so that request/response traffic keeps reusing the first REWIND_AT bytes,
		 * lines still in cache, instead of walking cold lines through all 8 MiB (measured:
		 * ~0.25 us off a 2 KiB shm round trip). The wrap marker at pos is safe: the ring is
		 * empty and pos >= rec, so the record written at 0 cannot reach it. A busy
		 * stream (ring not empty) looks again only every REWIND_AT / 8 bytes, so it does not
		 * pull the consumer's tail line on every frame. */
		d->cache = atomic_load_explicit(&d->idx->tail, memory_order_acquire);
		wrap = d->cache == d->pos;
		if (!wrap)
			d->rewind_next = d->pos + REWIND_AT / 8;
	}
	uint64_t need = rec + (wrap ? contig : 0);
	struct shm_wait w = { 0, 0 };
	while (RING_SIZE - (d->pos - d->cache) < need) {
		/* acquire: pairs with the consumer's release store of tail in shm_release_frame;
		 * its reads of the records we are about to overwrite are finished */
		d->cache = atomic_load_explicit(&d->idx->tail, memory_order_acquire);
		if (RING_SIZE - (d->pos - d->cache) >= need)
			break;
		int rc = shm_idle(l, &w, -1);
		if (rc)
			return rc;
	}
	if (wrap) {
		uint32_t mark = WRAP_MARK;
		memcpy(d->data + pos, &mark, 4);
		d->pos += contig;
		pos = 0;
	}
	*out = d->data + pos;
	*rec_out = rec;
	return 0;
}

static inline void shm_publish(struct shm_link *l, uint64_t rec)
{
	struct shm_dir *d = &l->tx;
	d->pos += rec;
	/* release: pairs with the consumer's acquire load of head in shm_recv_frame; the record
	 * (and any wrap marker) is complete before the consumer can see it */
	atomic_store_explicit(&d->idx->head, d->pos, memory_order_release);
}

static int shm_send_frame(struct spa_link_base *b, const struct iovec *iov, int n_iov)
{
	struct shm_link *l = (struct shm_link *)b;
	size_t len = 0;
	for (int i = 0; i < n_iov; i++)
		len += iov[i].iov_len;
	uint8_t *p;
	uint64_t rec;
	int rc = shm_reserve(l, len, &p, &rec);
	if (rc)
		return rc;
	for (int i = 0; i < n_iov; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	shm_publish(l, rec);
	return 0;
}

/* The frame is written in place by the connection layer (its CRC computed in that copy's pass,
 * spa_crc32c_copy, rather than in a pass of its own before a copy here). */
static int shm_frame_reserve(struct spa_link_base *b, size_t len, uint8_t **out)
{
	struct shm_link *l = (struct shm_link *)b;
	return shm_reserve(l, len, out, &l->tx_rec);
}

static int shm_frame_commit(struct spa_link_base *b)
{
	struct shm_link *l = (struct shm_link *)b;
	shm_publish(l, l->tx_rec);
	l->tx_rec = 0;
	return 0;
}

/* The length of the frame a record at p holds (up to avail bytes published), or 0 when its
 * header does not describe one that fits. */
static size_t rec_frame_len(const uint8_t *p, uint64_t avail)
{
	uint32_t magic, plen;
	if (avail < SPA_WIRE_HDR_SIZE)
		return 0;
	memcpy(&magic, p, 4);
	memcpy(&plen, p + 36, 4);
	if (magic != SPA_WIRE_MAGIC || plen > MAX_FRAME)
		return 0;
	struct spa_wire_hdr h = { .payload_len = plen, .flags = p[7] };
	size_t n = spa_wire_frame_size(&h);
	return n <= MAX_FRAME && rec_size(n) <= avail ? n : 0;
}

static int shm_recv_frame(struct spa_link_base *b, const uint8_t **frame, size_t *len,
			  int64_t deadline_ns)
{
	struct shm_link *l = (struct shm_link *)b;
	struct shm_dir *d = &l->rx;
	struct shm_wait w = { 0, 0 };
	if (l->broken)
		return -SPA_EPROTO;
	for (;;) {
		if (d->pos == d->cache)
			/* acquire: pairs with the producer's release store of head in
			 * shm_publish; the records up to head are fully written */
			d->cache = atomic_load_explicit(&d->idx->head, memory_order_acquire);
		if (d->pos != d->cache) {
			uint64_t pos = d->pos % RING_SIZE;
			uint32_t magic;
			memcpy(&magic, d->data + pos, 4);
			if (magic == WRAP_MARK) {
				d->pos += RING_SIZE - pos;
				continue;
			}
			uint64_t avail = d->cache - d->pos;
			if (avail > RING_SIZE - pos)
				avail = RING_SIZE - pos;
			size_t n = rec_frame_len(d->data + pos, avail);
			*frame = d->data + pos;
			if (!n) {
				/* Not a frame: hand its header up for the link to report. */
				l->broken = 1;
				*len = avail < SPA_WIRE_HDR_SIZE ? (size_t)avail : SPA_WIRE_HDR_SIZE;
				l->rx_pending = 0;
				return 0;
			}
			*len = n;
			/* Ask for the record's first lines at once: they sit in the producer's
			 * cache, and the CRC pass would otherwise miss on them one at a time (past
			 * 4 KiB the hardware prefetcher has caught on). */
			for (uint32_t o = 64; o < n && o < 4096; o += 64)
				__builtin_prefetch(d->data + pos + o);
			l->rx_pending = (uint32_t)rec_size(n);
			return 0;
		}
		int rc = shm_idle(l, &w, deadline_ns);
		if (rc == -SPA_ECLOSED) {
			/* Deliver what the peer sent before it closed or died. */
			d->cache = atomic_load_explicit(&d->idx->head, memory_order_acquire);
			if (d->pos != d->cache)
				continue;
		}
		if (rc)
			return rc;
	}
}

static void shm_release_frame(struct spa_link_base *b)
{
	struct shm_link *l = (struct shm_link *)b;
	if (!l->rx_pending)
		return;
	l->rx.pos += l->rx_pending;
	l->rx_pending = 0;
	/* release: pairs with the producer's acquire load of tail in shm_reserve; our reads of
	 * the record are done before it may reuse the space */
	atomic_store_explicit(&l->rx.idx->tail, l->rx.pos, memory_order_release);
}

/* ---- control --------------------------------------------------------------------------- */

static int link_make(struct shm_link **out, void *map, int is_cloud, pid_t peer)
{
	struct shm_link *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	struct shm_ctl *c = map;
	uint8_t *data = (uint8_t *)map + CTL_SIZE;
	int txr = is_cloud ? RING_C2E : RING_E2C, rxr = is_cloud ? RING_E2C : RING_C2E;
	l->base.drv = &spa_drv_shm;
	l->base.local = 1;
	l->map = map;
	l->ctl = c;
	l->tx.idx = &c->ring[txr];
	l->tx.data = data + (size_t)txr * RING_SIZE;
	l->rx.idx = &c->ring[rxr];
	l->rx.data = data + (size_t)rxr * RING_SIZE;
	l->peer_pid = peer;
	l->peer_stat_fd = open_stat(peer);
	l->my_closed = is_cloud ? CL_CLOUD : CL_EDGE;
	l->peer_closed = is_cloud ? CL_EDGE : CL_CLOUD;
	*out = l;
	return 0;
}

static void shm_close(struct spa_link_base *b)
{
	struct shm_link *l = (struct shm_link *)b;
	if (!l)
		return;
	/* release: pairs with the peer's acquire load of closed in shm_idle; every frame we
	 * published is visible to it once it sees the flag */
	atomic_fetch_or_explicit(&l->ctl->closed, l->my_closed, memory_order_release);
	if (l->seg[0] && !atomic_load_explicit(&l->ctl->cloud_pid, memory_order_acquire))
		shm_unlink(l->seg); /* never taken by the listener: leave nothing behind */
	if (l->peer_stat_fd >= 0)
		close(l->peer_stat_fd);
	if (l->lst)
		munmap(l->lst, LST_SIZE);
	munmap(l->map, SEG_SIZE);
	free(l);
}

static void *map_fd(int fd, size_t size, int populate)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
	return p == MAP_FAILED ? NULL : p;
}

/* Remove connection segments of this listener's name whose edge process is gone (it died
 * between creating one and the listener taking it). */
static void sweep_segments(const char *name)
{
	DIR *dir = opendir("/dev/shm");
	if (!dir)
		return;
	char prefix[256];
	snprintf(prefix, sizeof prefix, "spa-%s.", name);
	size_t pl = strlen(prefix);
	struct dirent *e;
	while ((e = readdir(dir))) {
		if (strncmp(e->d_name, prefix, pl) || strlen(e->d_name) != pl + 16)
			continue;
		char path[300];
		snprintf(path, sizeof path, "/%s", e->d_name);
		int fd = shm_open(path, O_RDONLY, 0);
		if (fd < 0)
			continue;
		struct stat st;
		int stale = 0;
		if (!fstat(fd, &st) && (size_t)st.st_size >= CTL_SIZE) {
			struct shm_ctl *c = mmap(NULL, CTL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
			if (c != MAP_FAILED) {
				stale = atomic_load(&c->magic) == SEG_MAGIC && !pid_alive(c->edge_pid, -1);
				munmap(c, CTL_SIZE);
			}
		}
		close(fd);
		if (stale)
			shm_unlink(path);
	}
	closedir(dir);
}

static int shm_listen(struct spa_listener_base **out, const char *name, struct spa_errbuf *err)
{
	struct shm_listener *l = calloc(1, sizeof *l);
	if (!l)
		return spa_err(err, -ENOMEM, "shm:/%s: out of memory", name);
	l->base.drv = &spa_drv_shm;
	l->base.local = 1;
	l->fd = -1;
	snprintf(l->name, sizeof l->name, "%s", name);
	snprintf(l->path, sizeof l->path, "/spa-%s", name);
	int rc;

	/* A segment left by a crashed listener is stale: remove it. One whose listener is alive
	 * belongs to someone else: refuse rather than pull it from under them. */
	int old = shm_open(l->path, O_RDWR, 0);
	if (old >= 0) {
		struct stat st;
		if (!fstat(old, &st) && (size_t)st.st_size >= LST_SIZE) {
			struct shm_lst *c = mmap(NULL, LST_SIZE, PROT_READ, MAP_SHARED, old, 0);
			if (c != MAP_FAILED) {
				int live = atomic_load(&c->magic) == LST_MAGIC &&
					   !atomic_load(&c->gone) && pid_alive(c->cloud_pid, -1) &&
					   c->cloud_pid != getpid();
				pid_t owner = c->cloud_pid;
				munmap(c, LST_SIZE);
				if (live) {
					close(old);
					rc = spa_err(err, -EADDRINUSE,
						     "shm:/%s: another cloud (pid %d) already listens "
						     "on this name: pick another name or stop it",
						     name, (int)owner);
					goto err;
				}
			}
		}
		close(old);
		shm_unlink(l->path);
	}
	sweep_segments(name);

	l->fd = shm_open(l->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (l->fd < 0) {
		rc = -errno;
		spa_err(err, rc, "shm:/%s: cannot create /dev/shm%s: %s", name, l->path,
			strerror(errno));
		goto err;
	}
	if (ftruncate(l->fd, (off_t)LST_SIZE)) {
		rc = -errno;
		spa_err(err, rc, "shm:/%s: cannot size the segment: %s (is /dev/shm full?)", name,
			strerror(errno));
		goto err_unlink;
	}
	l->lst = map_fd(l->fd, LST_SIZE, 1);
	if (!l->lst) {
		rc = -errno;
		spa_err(err, rc, "shm:/%s: cannot map the segment: %s", name, strerror(errno));
		goto err_unlink;
	}
	struct shm_lst *c = l->lst;
	c->version = SHM_VERSION;
	c->n_slots = N_SLOTS;
	c->cloud_pid = getpid();
	/* release: pairs with the acquire load of magic in shm_connect; the fields above are
	 * valid once the magic is */
	atomic_store_explicit(&c->magic, LST_MAGIC, memory_order_release);
	*out = &l->base;
	return 0;

err_unlink:
	shm_unlink(l->path);
	close(l->fd);
err:
	free(l);
	return rc;
}

/* Take the segment a posted slot names: map it, check it, remove its name, tell the edge.
 * Returns 0 with *out, 1 when the slot held nothing usable (freed), or a negative code. */
static int take_slot(struct shm_listener *l, struct shm_slot *s, uint64_t word,
		     struct spa_link_base **out, struct spa_errbuf *err)
{
	char seg[SEG_NAME];
	memcpy(seg, s->seg, sizeof seg);
	seg[SEG_NAME - 1] = 0;
	pid_t edge = (pid_t)(word & SL_PID_MASK);
	int fd = shm_open(seg, O_RDWR | O_CLOEXEC, 0);
	/* release: pairs with the acquire CAS of an edge claiming the slot; we are done with
	 * its name */
	atomic_store_explicit(&s->word, 0, memory_order_release);
	if (fd < 0)
		return 1; /* the edge gave up and removed it */
	struct stat st;
	void *map = NULL;
	if (!fstat(fd, &st) && (size_t)st.st_size >= SEG_SIZE)
		map = map_fd(fd, SEG_SIZE, 1);
	close(fd);
	shm_unlink(seg);
	if (!map)
		return 1;
	struct shm_ctl *c = map;
	/* acquire: pairs with the edge's release store of magic in shm_connect */
	if (atomic_load_explicit(&c->magic, memory_order_acquire) != SEG_MAGIC ||
	    c->version != SHM_VERSION || c->ring_size != RING_SIZE || c->max_frame != MAX_FRAME ||
	    c->edge_pid != edge) {
		munmap(map, SEG_SIZE);
		return 1;
	}
	struct shm_link *k;
	if (link_make(&k, map, 1, edge)) {
		munmap(map, SEG_SIZE);
		return spa_err(err, -ENOMEM, "shm:/%s: out of memory", l->name);
	}
	/* release: pairs with the edge's acquire load of cloud_pid at close (its segment's name
	 * is ours to remove now) */
	atomic_store_explicit(&c->cloud_pid, getpid(), memory_order_release);
	*out = &k->base;
	return 0;
}

static int shm_accept(struct spa_listener_base *b, struct spa_link_base **out, int64_t timeout_ns,
		      struct spa_errbuf *err)
{
	struct shm_listener *l = (struct shm_listener *)b;
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	for (;;) {
		for (unsigned i = 0; i < N_SLOTS; i++) {
			struct shm_slot *s = &l->lst->slot[i];
			/* acquire: pairs with the edge's release store of POSTED: the name is
			 * complete */
			uint64_t w = atomic_load_explicit(&s->word, memory_order_acquire);
			if (w & SL_POSTED) {
				int rc = take_slot(l, s, w, out, err);
				if (rc <= 0)
					return rc;
			} else if ((w & SL_CLAIMED) && !pid_alive((pid_t)(w & SL_PID_MASK), -1)) {
				/* the edge died while claiming it */
				atomic_compare_exchange_strong(&s->word, &w, 0);
			}
		}
		if (deadline >= 0 && spa_clock_ns() >= deadline)
			return spa_err(err, -ETIMEDOUT, "shm:/%s: no edge connected in time",
				       l->name);
		sleep_us(20);
	}
}

static void shm_listener_close(struct spa_listener_base *b)
{
	struct shm_listener *l = (struct shm_listener *)b;
	if (!l)
		return;
	/* Edges posted but never taken see GONE and give up; links already accepted keep
	 * working on their own segments until destroyed. */
	atomic_store_explicit(&l->lst->gone, 1, memory_order_release);
	munmap(l->lst, LST_SIZE);
	close(l->fd);
	shm_unlink(l->path);
	free(l);
}

/* The edge's connection segment: made, sized, mapped and initialised under a fresh name. */
static int seg_create(char name[SEG_NAME], const char *lname, void **map, struct spa_errbuf *err)
{
	for (int tries = 0;; tries++) {
		uint64_t r;
		if (getrandom(&r, sizeof r, 0) != sizeof r)
			r = (uint64_t)spa_clock_ns() * 0x9e3779b97f4a7c15ull;
		int k = snprintf(name, SEG_NAME, "/spa-%s.%016llx", lname, (unsigned long long)r);
		if (k < 0 || k >= (int)SEG_NAME)
			return spa_err(err, -SPA_EUSAGE, "shm:/%s: the name is too long for a "
				       "connection segment (at most %u characters)", lname,
				       SEG_NAME - 23);
		int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 && errno == EEXIST && tries < 8)
			continue;
		if (fd < 0)
			return spa_err(err, -errno, "shm:/%s: cannot create /dev/shm%s: %s", lname,
				       name, strerror(errno));
		int rc = 0;
		if (ftruncate(fd, (off_t)SEG_SIZE))
			rc = spa_err(err, -errno, "shm:/%s: cannot size a %zu-byte segment: %s (is "
				     "/dev/shm full?)", lname, SEG_SIZE, strerror(errno));
		else if (!(*map = map_fd(fd, SEG_SIZE, 1)))
			rc = spa_err(err, -errno, "shm:/%s: cannot map the segment: %s", lname,
				     strerror(errno));
		close(fd);
		if (rc) {
			shm_unlink(name);
			return rc;
		}
		struct shm_ctl *c = *map;
		c->version = SHM_VERSION;
		c->ctl_size = CTL_SIZE;
		c->ring_size = RING_SIZE;
		c->max_frame = MAX_FRAME;
		c->edge_pid = getpid();
		/* release: pairs with the listener's acquire load in take_slot */
		atomic_store_explicit(&c->magic, SEG_MAGIC, memory_order_release);
		return 0;
	}
}

static int shm_connect(struct spa_link_base **out, const char *name, int64_t timeout_ns,
		       struct spa_errbuf *err)
{
	char path[256];
	snprintf(path, sizeof path, "/spa-%s", name);
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	const char *why = "no cloud listens on it";
	int busy = 0;
	struct shm_lst *lst = NULL;
	for (;; sleep_us(200)) {
		if (lst) {
			munmap(lst, LST_SIZE);
			lst = NULL;
		}
		if (deadline >= 0 && spa_clock_ns() >= deadline)
			break;
		int fd = shm_open(path, O_RDWR | O_CLOEXEC, 0);
		if (fd < 0) {
			if (errno == ENOENT)
				continue;
			return spa_err(err, -errno, "shm:/%s: cannot open /dev/shm%s: %s", name, path,
				       strerror(errno));
		}
		struct stat st;
		if (fstat(fd, &st) || (size_t)st.st_size < LST_SIZE) {
			close(fd); /* still being sized by the listener */
			continue;
		}
		lst = map_fd(fd, LST_SIZE, 0);
		int e = errno;
		close(fd);
		if (!lst)
			return spa_err(err, -e, "shm:/%s: cannot map the segment: %s", name,
				       strerror(e));
		/* acquire: pairs with the release store of magic in shm_listen */
		uint64_t magic = atomic_load_explicit(&lst->magic, memory_order_acquire);
		if (magic == 0)
			continue;
		if (magic != LST_MAGIC || lst->version != SHM_VERSION || lst->n_slots != N_SLOTS) {
			munmap(lst, LST_SIZE);
			return spa_err(err, -SPA_EPROTO,
				       "shm:/%s: /dev/shm%s is not an spa shm segment of this version "
				       "(magic 0x%016llx): run the same spa version on both sides, "
				       "or remove the file",
				       name, path, (unsigned long long)magic);
		}
		if (atomic_load(&lst->gone) || !pid_alive(lst->cloud_pid, -1)) {
			why = "the segment there is stale (its cloud exited)";
			continue;
		}
		/* A free slot: 0 -> CLAIMED | pid. acq_rel: acquire pairs with the listener's
		 * release store freeing it (it no longer reads the old name); release pairs with
		 * nothing yet (the name is posted below). */
		struct shm_slot *s = NULL;
		uint64_t me = (uint64_t)(uint32_t)getpid();
		for (unsigned i = 0; i < N_SLOTS && !s; i++) {
			uint64_t zero = 0;
			if (atomic_compare_exchange_strong_explicit(&lst->slot[i].word, &zero,
								    SL_CLAIMED | me,
								    memory_order_acq_rel,
								    memory_order_relaxed))
				s = &lst->slot[i];
		}
		if (!s) {
			busy = 1;
			why = "all its slots hold connections the cloud has not taken yet (try again)";
			continue;
		}
		char seg[SEG_NAME];
		void *map = NULL;
		int rc = seg_create(seg, name, &map, err);
		if (rc) {
			atomic_store_explicit(&s->word, 0, memory_order_release);
			munmap(lst, LST_SIZE);
			return rc;
		}
		struct shm_link *l;
		if (link_make(&l, map, 0, lst->cloud_pid)) {
			atomic_store_explicit(&s->word, 0, memory_order_release);
			shm_unlink(seg);
			munmap(map, SEG_SIZE);
			munmap(lst, LST_SIZE);
			return spa_err(err, -ENOMEM, "shm:/%s: out of memory", name);
		}
		memcpy(l->seg, seg, sizeof l->seg);
		l->lst = lst;
		memcpy(s->seg, seg, sizeof s->seg);
		/* release: pairs with the listener's acquire load of the slot in shm_accept; the
		 * name is complete */
		atomic_store_explicit(&s->word, SL_POSTED | me, memory_order_release);
		*out = &l->base;
		return 0;
	}
	return spa_err(err, busy ? -EBUSY : -ETIMEDOUT, "shm:/%s: cannot connect in time: %s", name,
		       why);
}

const struct spa_link_driver spa_drv_shm = {
	.scheme = "shm",
	.max_frame = MAX_FRAME,
	.flags = SPA_DRV_COPIES,
	.listen = shm_listen,
	.accept = shm_accept,
	.listener_close = shm_listener_close,
	.connect = shm_connect,
	.close = shm_close,
	.send_frame = shm_send_frame,
	.recv_frame = shm_recv_frame,
	.release_frame = shm_release_frame,
	.frame_reserve = shm_frame_reserve,
	.frame_commit = shm_frame_commit,
};
