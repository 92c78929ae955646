/* shm: a same-host link over a POSIX shared-memory segment ("shm:/NAME" -> /dev/shm/spa-NAME).
 *
 * Segment layout (made by the listener, the cloud):
 *
 *   0        control block (4 KiB): magic "spa-shm1", version, sizes, the cloud's pid, the
 *            state word (edge pid + flags), the session generation, and for each ring its
 *            head and tail on cache lines of their own
 *   4096     ring 0 data, cloud -> edge, RING_SIZE bytes
 *   4096+RS  ring 1 data, edge -> cloud, RING_SIZE bytes
 *
 * Each ring is single-producer single-consumer. head and tail are byte counters that only grow
 * (the position is counter % RING_SIZE). A frame is stored contiguously as one record:
 * [u32 length][u32 0][frame bytes] padded to a multiple of 64, so the 56-byte wire header ends
 * at a cache-line boundary and the payload starts on one. A record never wraps: when it does
 * not fit before the end of the ring, the producer writes the wrap marker 0xffffffff as the
 * length and continues at position 0; it also wraps early, when the ring is empty and it is
 * past the first REWIND_AT bytes, so request/response traffic stays on warm lines. Receive is
 * zero copy: recv_frame hands out the ring memory and release_frame gives it back by advancing
 * tail.
 *
 * Sessions: the listener serves one edge at a time. An edge claims the segment with a CAS on
 * the state word (0 -> CLAIMED | pid); the listener's accept turns CLAIMED into ACCEPTED. Each
 * side's close sets its CLOSED flag; the next accept, once both sides of the previous session
 * are done (or the edge process is gone), resets the rings, bumps the generation and frees the
 * state word for the next edge.
 *
 * Waiting is busy polling (no system call per message). While it spins, every ~1 ms the
 * waiter checks the peer's CLOSED flag, the generation, and whether the peer process still
 * exists (kill(pid, 0), and /proc/PID/stat so that an unreaped zombie counts as gone), so a
 * crashed peer gives -SPA_ECLOSED instead of a hang. Pids mean something only when both sides
 * share a pid namespace, which sharing /dev/shm on one host normally implies. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "spa/clock.h"
#include "spa/drv/link.h"

#define SHM_MAGIC 0x316d68732d617073ull /* "spa-shm1" */
#define SHM_VERSION 1u
#define CTL_SIZE 4096u
#define RING_SIZE (8u << 20)
#define MAX_FRAME (1u << 20)
#define REC_HDR 8u
#define REC_ALIGN 64u
#define WRAP_MARK 0xffffffffu
/* A producer past REWIND_AT in its ring wraps early when the ring is empty (see send) */
#define REWIND_AT (256u << 10)
#define SEG_SIZE ((size_t)CTL_SIZE + 2 * (size_t)RING_SIZE)

/* state word: bits 0..31 the attached edge's pid, flags above */
#define ST_PID_MASK 0xffffffffull
#define ST_CLAIMED (1ull << 32)      /* an edge holds the segment */
#define ST_ACCEPTED (1ull << 33)     /* the cloud made a link for it */
#define ST_CLOUD_CLOSED (1ull << 34) /* the cloud's link (or the listener) closed */
#define ST_EDGE_CLOSED (1ull << 35)  /* the edge's link closed */
#define ST_GONE (1ull << 36)         /* the listener closed: no more sessions here */

#define RING_C2E 0
#define RING_E2C 1

#define CHECK_NS 1000000 /* liveness checks while spinning, ~1 ms apart */

struct shm_ring_idx {
	_Alignas(64) _Atomic uint64_t head; /* written by the producer only */
	_Alignas(64) _Atomic uint64_t tail; /* written by the consumer only */
};

struct shm_ctl {
	_Atomic uint64_t magic; /* stored last at listen (release): the rest is valid */
	uint32_t version, ctl_size, ring_size, max_frame;
	int32_t cloud_pid;
	_Alignas(64) _Atomic uint64_t state;
	_Atomic uint32_t gen;
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
	uint32_t gen;
	pid_t peer_pid;
	int peer_stat_fd;     /* /proc/PEER/stat, -1 when unavailable */
	uint64_t my_closed, peer_closed;
};

struct shm_listener {
	struct spa_listener_base base;
	int fd;
	void *map;
	struct shm_ctl *ctl;
	char path[256];
};

static inline uint64_t rec_size(size_t frame_len)
{
	return (REC_HDR + frame_len + REC_ALIGN - 1) & ~(uint64_t)(REC_ALIGN - 1);
}

static void shm_path(char *out, size_t size, const char *name)
{
	snprintf(out, size, "/spa-%s", name);
}

static void *seg_map(int fd)
{
	void *p = mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	return p == MAP_FAILED ? NULL : p;
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
 * -SPA_ECLOSED when the peer closed, went away, or the session was reset under us. */
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
	uint64_t s = atomic_load_explicit(&l->ctl->state, memory_order_acquire);
	if (s & l->peer_closed)
		return -SPA_ECLOSED;
	if (atomic_load_explicit(&l->ctl->gen, memory_order_relaxed) != l->gen)
		return -SPA_ECLOSED;
	if (!pid_alive(l->peer_pid, l->peer_stat_fd))
		return -SPA_ECLOSED;
	return 0;
}

/* Reserve room for a record of a len-byte frame at the producer's position (waiting while the
 * ring is full); *out is where the frame's bytes go. Publish with shm_publish. */
static int shm_reserve(struct shm_link *l, size_t len, uint8_t **out, uint64_t *rec_out)
{
	struct shm_dir *d = &l->tx;
	if (len > MAX_FRAME)
		return -EMSGSIZE;
	if (atomic_load_explicit(&l->ctl->state, memory_order_relaxed) & l->peer_closed)
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
	uint8_t *p = d->data + pos;
	uint32_t hdr[2] = { (uint32_t)len, 0 };
	memcpy(p, hdr, REC_HDR);
	*out = p + REC_HDR;
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

/* The frame is copied into the ring anyway: its CRC is computed in that same pass over the
 * payload (spa_crc32c_copy) rather than in a pass of the link layer's before it. */
static int shm_send_frame_crc(struct spa_link_base *b, const uint8_t *hdr, const void *payload,
			      size_t len)
{
	struct shm_link *l = (struct shm_link *)b;
	uint8_t *p;
	uint64_t rec;
	int rc = shm_reserve(l, SPA_WIRE_HDR_SIZE + len, &p, &rec);
	if (rc)
		return rc;
	memcpy(p, hdr, SPA_WIRE_HDR_SIZE);
	uint32_t crc = spa_crc32c_copy(spa_wire_hdr_crc(hdr), p + SPA_WIRE_HDR_SIZE, payload, len);
	spa_wire_hdr_set_crc(p, crc);
	shm_publish(l, rec);
	return 0;
}

static int shm_recv_frame(struct spa_link_base *b, const uint8_t **frame, size_t *len,
			  int64_t deadline_ns)
{
	struct shm_link *l = (struct shm_link *)b;
	struct shm_dir *d = &l->rx;
	struct shm_wait w = { 0, 0 };
	for (;;) {
		if (d->pos == d->cache)
			/* acquire: pairs with the producer's release store of head in
			 * shm_send_frame; the records up to head are fully written */
			d->cache = atomic_load_explicit(&d->idx->head, memory_order_acquire);
		if (d->pos != d->cache) {
			uint64_t pos = d->pos % RING_SIZE;
			uint32_t n;
			memcpy(&n, d->data + pos, 4);
			if (n == WRAP_MARK) {
				d->pos += RING_SIZE - pos;
				continue;
			}
			if (n > MAX_FRAME || pos + REC_HDR + n > RING_SIZE ||
			    d->cache - d->pos < rec_size(n))
				return -SPA_EPROTO; /* the peer wrote a malformed record */
			*frame = d->data + pos + REC_HDR;
			*len = n;
			/* Ask for the record's first lines at once: they sit in the producer's
			 * cache, and the CRC pass would otherwise miss on them one at a time (past
			 * 4 KiB the hardware prefetcher has caught on). */
			for (uint32_t o = 64; o < REC_HDR + n && o < 4096; o += 64)
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
	/* release: pairs with the producer's acquire load of tail in shm_send_frame; our reads
	 * of the record are done before it may reuse the space */
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
	l->map = map;
	l->ctl = c;
	l->tx.idx = &c->ring[txr];
	l->tx.data = data + (size_t)txr * RING_SIZE;
	l->tx.pos = atomic_load_explicit(&l->tx.idx->head, memory_order_relaxed);
	l->tx.cache = atomic_load_explicit(&l->tx.idx->tail, memory_order_acquire);
	l->rx.idx = &c->ring[rxr];
	l->rx.data = data + (size_t)rxr * RING_SIZE;
	l->rx.pos = atomic_load_explicit(&l->rx.idx->tail, memory_order_relaxed);
	l->rx.cache = l->rx.pos;
	l->gen = atomic_load_explicit(&c->gen, memory_order_acquire);
	l->peer_pid = peer;
	l->peer_stat_fd = open_stat(peer);
	l->my_closed = is_cloud ? ST_CLOUD_CLOSED : ST_EDGE_CLOSED;
	l->peer_closed = is_cloud ? ST_EDGE_CLOSED : ST_CLOUD_CLOSED;
	*out = l;
	return 0;
}

static void shm_close(struct spa_link_base *b)
{
	struct shm_link *l = (struct shm_link *)b;
	if (!l)
		return;
	/* release: pairs with the peer's acquire load of state in shm_idle; every frame we
	 * published is visible to it once it sees the flag */
	atomic_fetch_or_explicit(&l->ctl->state, l->my_closed, memory_order_release);
	if (l->peer_stat_fd >= 0)
		close(l->peer_stat_fd);
	munmap(l->map, SEG_SIZE);
	free(l);
}

static int shm_listen(struct spa_listener_base **out, const char *name, struct spa_errbuf *err)
{
	struct shm_listener *l = calloc(1, sizeof *l);
	if (!l)
		return spa_err(err, -ENOMEM, "shm:/%s: out of memory", name);
	l->base.drv = &spa_drv_shm;
	l->fd = -1;
	shm_path(l->path, sizeof l->path, name);
	int rc;

	/* A segment left by a crashed listener is stale: remove it. One whose listener is alive
	 * belongs to someone else: refuse rather than pull it from under them. */
	int old = shm_open(l->path, O_RDWR, 0);
	if (old >= 0) {
		struct stat st;
		if (!fstat(old, &st) && (size_t)st.st_size >= SEG_SIZE) {
			struct shm_ctl *c = mmap(NULL, CTL_SIZE, PROT_READ, MAP_SHARED, old, 0);
			if (c != MAP_FAILED) {
				int live = atomic_load(&c->magic) == SHM_MAGIC &&
					   !(atomic_load(&c->state) & ST_GONE) &&
					   pid_alive(c->cloud_pid, -1) && c->cloud_pid != getpid();
				pid_t owner = c->cloud_pid;
				munmap(c, CTL_SIZE);
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

	l->fd = shm_open(l->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (l->fd < 0) {
		rc = -errno;
		spa_err(err, rc, "shm:/%s: cannot create /dev/shm%s: %s", name, l->path,
			strerror(errno));
		goto err;
	}
	if (ftruncate(l->fd, (off_t)SEG_SIZE)) {
		rc = -errno;
		spa_err(err, rc, "shm:/%s: cannot size the segment to %zu bytes: %s (is /dev/shm "
			"full?)", name, SEG_SIZE, strerror(errno));
		goto err_unlink;
	}
	l->map = seg_map(l->fd);
	if (!l->map) {
		rc = -errno;
		spa_err(err, rc, "shm:/%s: cannot map the segment: %s", name, strerror(errno));
		goto err_unlink;
	}
	struct shm_ctl *c = l->ctl = l->map;
	c->version = SHM_VERSION;
	c->ctl_size = CTL_SIZE;
	c->ring_size = RING_SIZE;
	c->max_frame = MAX_FRAME;
	c->cloud_pid = getpid();
	atomic_store_explicit(&c->state, 0, memory_order_relaxed);
	atomic_store_explicit(&c->gen, 1, memory_order_relaxed);
	/* release: pairs with the acquire load of magic in shm_connect; the fields above are
	 * valid once the magic is */
	atomic_store_explicit(&c->magic, SHM_MAGIC, memory_order_release);
	*out = &l->base;
	return 0;

err_unlink:
	shm_unlink(l->path);
	close(l->fd);
err:
	free(l);
	return rc;
}

/* Make the segment ready for the next edge after a finished session. */
static void seg_reset(struct shm_ctl *c)
{
	for (int i = 0; i < 2; i++) {
		atomic_store_explicit(&c->ring[i].head, 0, memory_order_relaxed);
		atomic_store_explicit(&c->ring[i].tail, 0, memory_order_relaxed);
	}
	atomic_fetch_add_explicit(&c->gen, 1, memory_order_relaxed);
	/* release: pairs with the acquire of the edge's claiming CAS in shm_connect; it sees
	 * empty rings and the new generation */
	atomic_store_explicit(&c->state, 0, memory_order_release);
}

static int shm_accept(struct spa_listener_base *b, struct spa_link_base **out, int64_t timeout_ns,
		      struct spa_errbuf *err)
{
	struct shm_listener *l = (struct shm_listener *)b;
	struct shm_ctl *c = l->ctl;
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	for (;;) {
		/* acquire: pairs with the edge's claiming CAS (acq_rel) in shm_connect */
		uint64_t s = atomic_load_explicit(&c->state, memory_order_acquire);
		if (s & ST_ACCEPTED) {
			if (!(s & ST_CLOUD_CLOSED))
				return spa_err(err, -EBUSY,
					       "%s: the previous session's link is still open: "
					       "destroy it before accepting the next edge",
					       l->path);
			if ((s & ST_EDGE_CLOSED) || !pid_alive((pid_t)(s & ST_PID_MASK), -1)) {
				seg_reset(c);
				continue;
			}
			/* the previous edge is still draining what we sent: wait for it */
		} else if (s & ST_CLAIMED) {
			void *map = seg_map(l->fd);
			if (!map)
				return spa_err(err, -errno, "%s: cannot map the segment: %s", l->path,
					       strerror(errno));
			struct shm_link *k;
			pid_t edge = (pid_t)(s & ST_PID_MASK);
			if (link_make(&k, map, 1, edge)) {
				munmap(map, SEG_SIZE);
				return spa_err(err, -ENOMEM, "%s: out of memory", l->path);
			}
			/* An edge gone before we got here is still accepted: the link delivers
			 * what it sent, then reports -SPA_ECLOSED. */
			atomic_fetch_or_explicit(&c->state, ST_ACCEPTED, memory_order_acq_rel);
			*out = &k->base;
			return 0;
		}
		if (deadline >= 0 && spa_clock_ns() >= deadline)
			return spa_err(err, -ETIMEDOUT, "%s: no edge connected in time", l->path);
		sleep_us(20);
	}
}

static void shm_listener_close(struct spa_listener_base *b)
{
	struct shm_listener *l = (struct shm_listener *)b;
	if (!l)
		return;
	struct shm_ctl *c = l->ctl;
	uint64_t s = atomic_fetch_or_explicit(&c->state, ST_GONE, memory_order_acq_rel);
	/* An edge claimed but never accepted would wait forever: tell it the cloud closed. A
	 * link already accepted keeps working on its own mapping until destroyed. */
	if (!(s & ST_ACCEPTED))
		atomic_fetch_or_explicit(&c->state, ST_CLOUD_CLOSED, memory_order_release);
	munmap(l->map, SEG_SIZE);
	close(l->fd);
	shm_unlink(l->path);
	free(l);
}

static int shm_connect(struct spa_link_base **out, const char *name, int64_t timeout_ns,
		       struct spa_errbuf *err)
{
	char path[256];
	shm_path(path, sizeof path, name);
	int64_t deadline = timeout_ns < 0 ? -1 : spa_clock_ns() + timeout_ns;
	const char *why = "no cloud listens on it";
	pid_t me = getpid();
	int busy = 0;
	for (;; sleep_us(200)) {
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
		if (fstat(fd, &st) || (size_t)st.st_size < SEG_SIZE) {
			close(fd); /* still being sized by the listener */
			continue;
		}
		void *map = seg_map(fd);
		int e = errno;
		close(fd);
		if (!map)
			return spa_err(err, -e, "shm:/%s: cannot map the segment: %s", name,
				       strerror(e));
		struct shm_ctl *c = map;
		/* acquire: pairs with the release store of magic in shm_listen */
		uint64_t magic = atomic_load_explicit(&c->magic, memory_order_acquire);
		if (magic == 0) {
			munmap(map, SEG_SIZE);
			continue;
		}
		if (magic != SHM_MAGIC || c->version != SHM_VERSION || c->ring_size != RING_SIZE ||
		    c->max_frame != MAX_FRAME || c->ctl_size != CTL_SIZE) {
			munmap(map, SEG_SIZE);
			return spa_err(err, -SPA_EPROTO,
				       "shm:/%s: /dev/shm%s is not an spa shm segment of this version "
				       "(magic 0x%016llx, version %u): run the same spa version on "
				       "both sides, or remove the file",
				       name, path, (unsigned long long)magic, c->version);
		}
		uint64_t s = atomic_load_explicit(&c->state, memory_order_relaxed);
		if ((s & ST_GONE) || !pid_alive(c->cloud_pid, -1)) {
			busy = 0;
			why = "the segment there is stale (its cloud exited)";
			munmap(map, SEG_SIZE);
			continue;
		}
		uint64_t zero = 0;
		/* acq_rel: acquire pairs with the release store of state in seg_reset (empty rings);
		 * release pairs with the acquire load in shm_accept */
		if (!atomic_compare_exchange_strong_explicit(&c->state, &zero,
							     ST_CLAIMED | (uint64_t)(uint32_t)me,
							     memory_order_acq_rel,
							     memory_order_relaxed)) {
			busy = (zero & ST_CLAIMED) && !(zero & ST_EDGE_CLOSED);
			why = busy ? "another edge is attached to it (try again when it is done)"
				   : "the cloud has not accepted a new session yet (the previous "
				     "one is still being closed)";
			munmap(map, SEG_SIZE);
			continue;
		}
		struct shm_link *l;
		if (link_make(&l, map, 0, c->cloud_pid)) {
			atomic_fetch_or_explicit(&c->state, ST_EDGE_CLOSED, memory_order_release);
			munmap(map, SEG_SIZE);
			return spa_err(err, -ENOMEM, "shm:/%s: out of memory", name);
		}
		*out = &l->base;
		return 0;
	}
	return spa_err(err, busy ? -EBUSY : -ETIMEDOUT, "shm:/%s: cannot connect in time: %s", name, why);
}

const struct spa_link_driver spa_drv_shm = {
	.scheme = "shm",
	.max_frame = MAX_FRAME,
	.listen = shm_listen,
	.accept = shm_accept,
	.listener_close = shm_listener_close,
	.connect = shm_connect,
	.close = shm_close,
	.send_frame = shm_send_frame,
	.recv_frame = shm_recv_frame,
	.release_frame = shm_release_frame,
	.send_frame_crc = shm_send_frame_crc,
};
