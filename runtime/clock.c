/* spa: the clock (see include/spa/clock.h). */
#include <time.h>

#include "spa/clock.h"

int64_t spa_clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

double spa_clock_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
