/* spa: persistent worker thread pool (kernels/cpu/pool.c).
 *
 * Threads are created once and pinned with hwloc; a job is a function run by every thread
 * with its index. Workers spin briefly waiting for work, then sleep, so an idle pool does not
 * burn cores. spa_pool_run is on the hot path (no allocation, no system call while workers
 * are spinning) and must be called from one thread at a time. */
#ifndef SPA_POOL_H
#define SPA_POOL_H

#include <stdint.h>

struct spa_pool;

/* fn(ctx, ith, nth) is called once for each ith in 0..nth-1, the caller's thread taking ith 0. */
typedef void (*spa_pool_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0: one per core. cpus: n_threads logical CPU indices to pin to, or NULL to pin
 * thread i to the i-th core that hwloc reports (the calling thread counts as thread 0 and is
 * pinned too). Returns 0 or -errno. */
int spa_pool_create(struct spa_pool **out, int n_threads, const int *cpus);
void spa_pool_destroy(struct spa_pool *p);
int spa_pool_n_threads(const struct spa_pool *p);
/* Run fn on every thread and wait for all. p may be NULL: fn(ctx, 0, 1) in the caller. */
void spa_pool_run(struct spa_pool *p, spa_pool_fn fn, void *ctx);

#endif
