/* spa: thread placement with hwloc (runtime/pin.c). Not on the hot path. */
#ifndef SPA_PIN_H
#define SPA_PIN_H

#include <stddef.h>

/* Pin the calling thread to logical CPU `cpu` (OS index). Returns 0 or -errno / -SPA_EUSAGE
 * when the CPU does not exist. */
int spa_pin_thread(int cpu);
/* Number of cores (physical) and of processing units the machine has. */
int spa_pin_n_cores(void);
int spa_pin_n_pus(void);
/* CPUs the calling thread may run on (its affinity mask; 1 when it cannot be read): the
 * kernel's io_uring workers and the loaders' copier threads are sized by it. */
unsigned spa_pin_n_allowed(void);
/* OS index of the first PU of the i-th core (i modulo the core count). */
int spa_pin_core_pu(int i);
/* Describe where the calling thread is bound ("cpu 1 (core 1, package 0)") into buf. */
void spa_pin_describe(char *buf, size_t size);

#endif
