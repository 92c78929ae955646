/* spa: the clock (runtime/clock.c): CLOCK_MONOTONIC, read through the vDSO. Every timeout,
 * deadline, delay and measurement of the library, its programs and its benchmarks reads it
 * here. */
#ifndef SPA_CLOCK_H
#define SPA_CLOCK_H

#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds. Thread-safe; no system call (vDSO); fine on the hot path. */
int64_t spa_clock_ns(void);
/* The same in seconds. */
double spa_clock_s(void);

#endif
