/* spa: persistent worker thread pool (see include/spa/pool.h).
 *
 * Dispatch: the caller publishes (fn, ctx), then bumps a generation counter; workers wait for
 * the generation to change, run fn, and count themselves done. A waiting worker spins on the
 * counter for SPA_POOL_SPIN_NS (a decode step issues its next job well within that), then
 * sleeps on a futex on the same counter. The caller only makes the FUTEX_WAKE system call when
 * a worker announced it is going to sleep, so back-to-back jobs cost no system call. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spa/clock.h"
#include "spa/error.h"
#include "spa/pin.h"
#include "spa/pool.h"

#define SPA_POOL_SPIN_NS 100000 /* 100 us */
#define SPA_POOL_MAX_THREADS 1024
#define CACHE_LINE 64

struct spa_pool_worker {
	struct spa_pool *pool;
	pthread_t tid;
	int ith;
	int cpu;     /* when has_cpu; otherwise best effort on the ith core */
	int has_cpu;
	int pin_rc;  /* written before the worker counts itself started */
	int started; /* pthread_create succeeded (join it) */
} __attribute__((aligned(CACHE_LINE)));

struct spa_pool {
	int n_threads;
	uint64_t spin_ns; /* 0 when oversubscribed: a spinning thread would hold a core that
			   * a thread with work needs */
	struct spa_pool_worker *workers; /* [n_threads], [0] unused: the caller is thread 0 */

	/* job: written by the caller before the release of gen (paired with the workers'
	 * acquire of gen) */
	_Alignas(CACHE_LINE) spa_pool_fn fn;
	void *ctx;
	int stop;

	_Alignas(CACHE_LINE) atomic_uint gen;   /* futex word */
	_Alignas(CACHE_LINE) atomic_int n_done; /* workers done with the current job */
	_Alignas(CACHE_LINE) atomic_int n_sleeping;
};

static long futex(atomic_uint *uaddr, int op, unsigned val)
{
	return syscall(SYS_futex, (unsigned *)uaddr, op, val, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Wait for gen to move past `seen`; returns the new value. */
static unsigned wait_gen(struct spa_pool *p, unsigned seen)
{
	unsigned g;
	uint64_t deadline = 0;

	for (unsigned spins = 0;; spins++) {
		g = atomic_load_explicit(&p->gen, memory_order_acquire);
		if (g != seen)
			return g;
		if (!p->spin_ns)
			break;
		if ((spins & 63) == 63) {
			uint64_t t = (uint64_t)spa_clock_ns();
			if (!deadline)
				deadline = t + p->spin_ns;
			else if (t >= deadline)
				break;
		}
		cpu_relax();
	}
	/* Dekker with spa_pool_run: we announce (seq_cst) then re-check gen; the caller bumps
	 * gen (seq_cst) then reads n_sleeping. One of the two sees the other. */
	atomic_fetch_add(&p->n_sleeping, 1);
	while ((g = atomic_load(&p->gen)) == seen)
		futex(&p->gen, FUTEX_WAIT_PRIVATE, seen); /* returns at once if gen moved */
	atomic_fetch_sub(&p->n_sleeping, 1);
	return g;
}

static void *worker_main(void *arg)
{
	struct spa_pool_worker *w = arg;
	struct spa_pool *p = w->pool;
	unsigned seen = 0;

	w->pin_rc = spa_pin_thread(w->has_cpu ? w->cpu : spa_pin_core_pu(w->ith));
	atomic_fetch_add_explicit(&p->n_done, 1, memory_order_release); /* started */

	for (;;) {
		seen = wait_gen(p, seen);
		if (p->stop)
			break;
		p->fn(p->ctx, w->ith, p->n_threads);
		/* release: the job's writes are visible to the caller's acquire of n_done */
		atomic_fetch_add_explicit(&p->n_done, 1, memory_order_release);
	}
	return NULL;
}

/* Spin: the workers finish their shares at about the same time as the caller. Only when the
 * pool has more threads than free cores does this take long; then yield the core to them. */
static void wait_done(struct spa_pool *p, int n)
{
	uint64_t deadline = 0;

	for (unsigned spins = 0; atomic_load_explicit(&p->n_done, memory_order_acquire) != n;
	     spins++) {
		if (!p->spin_ns) {
			sched_yield();
			continue;
		}
		if ((spins & 63) == 63) {
			uint64_t t = (uint64_t)spa_clock_ns();
			if (!deadline)
				deadline = t + p->spin_ns;
			else if (t >= deadline) {
				sched_yield();
				continue;
			}
		}
		cpu_relax();
	}
}

/* Publish a job (or the stop order) and wake whoever sleeps. */
static void publish(struct spa_pool *p)
{
	atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
	atomic_fetch_add(&p->gen, 1); /* seq_cst: see wait_gen */
	if (atomic_load(&p->n_sleeping) > 0)
		futex(&p->gen, FUTEX_WAKE_PRIVATE, INT_MAX);
}

static void stop_workers(struct spa_pool *p)
{
	p->stop = 1;
	publish(p);
	for (int i = 1; i < p->n_threads; i++)
		if (p->workers[i].started)
			pthread_join(p->workers[i].tid, NULL);
}

int spa_pool_create(struct spa_pool **out, int n_threads, const int *cpus)
{
	struct spa_pool *p;
	int rc, n_started = 0;

	*out = NULL;
	if (n_threads <= 0) {
		n_threads = spa_pin_n_cores();
		if (n_threads <= 0) {
			long n = sysconf(_SC_NPROCESSORS_ONLN);
			n_threads = n > 0 ? (int)n : 1;
		}
	}
	if (n_threads > SPA_POOL_MAX_THREADS)
		return -SPA_EUSAGE;

	if (posix_memalign((void **)&p, CACHE_LINE, sizeof(*p)))
		return -ENOMEM;
	int n_cpus = spa_pin_n_pus(); /* those this process may use (hwloc's default) */
	*p = (struct spa_pool){ .n_threads = n_threads,
				.spin_ns = n_threads > n_cpus ? 0 : SPA_POOL_SPIN_NS };
	atomic_init(&p->gen, 0);
	atomic_init(&p->n_done, 0);
	atomic_init(&p->n_sleeping, 0);
	if (posix_memalign((void **)&p->workers, CACHE_LINE,
			   sizeof(*p->workers) * (size_t)n_threads)) {
		free(p);
		return -ENOMEM;
	}

	/* The caller is thread 0. An explicit CPU list must be honoured; the default placement
	 * is best effort (a container's cpuset may forbid some cores, and an unpinned pool still
	 * computes the same bits). */
	memset(p->workers, 0, sizeof(*p->workers) * (size_t)n_threads);
	rc = spa_pin_thread(cpus ? cpus[0] : spa_pin_core_pu(0));
	if (rc < 0 && cpus)
		goto err;
	rc = 0;

	for (int i = 1; i < n_threads; i++) {
		struct spa_pool_worker *w = &p->workers[i];
		*w = (struct spa_pool_worker){ .pool = p, .ith = i, .cpu = cpus ? cpus[i] : -1,
						 .has_cpu = cpus != NULL };
		rc = -pthread_create(&w->tid, NULL, worker_main, w);
		if (rc < 0)
			break;
		w->started = 1;
		n_started++;
	}
	wait_done(p, n_started); /* every worker has pinned itself and waits on gen */
	if (rc == 0 && cpus)
		for (int i = 1; i < n_threads; i++)
			if (p->workers[i].pin_rc < 0) {
				rc = p->workers[i].pin_rc;
				break;
			}
	if (rc < 0) {
		stop_workers(p);
		goto err;
	}
	*out = p;
	return 0;
err:
	free(p->workers);
	free(p);
	return rc;
}

void spa_pool_destroy(struct spa_pool *p)
{
	if (!p)
		return;
	stop_workers(p);
	free(p->workers);
	free(p);
}

int spa_pool_n_threads(const struct spa_pool *p)
{
	return p ? p->n_threads : 1;
}

void spa_pool_run(struct spa_pool *p, spa_pool_fn fn, void *ctx)
{
	if (!p || p->n_threads == 1) {
		fn(ctx, 0, 1);
		return;
	}
	p->fn = fn;
	p->ctx = ctx;
	publish(p);
	fn(ctx, 0, p->n_threads);
	wait_done(p, p->n_threads - 1);
}
