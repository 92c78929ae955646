/* spa: small helpers shared by the benchmarks in bench/ (bench/benchutil.c): a clock,
 * percentiles, thread pinning, a one-line machine description and a tiny JSON writer.
 *
 * Not part of libspa and never on a measured path except bu_now_ns() (a vDSO clock read).
 * Nothing here is thread-safe unless it says so. */
#ifndef SPA_BENCHUTIL_H
#define SPA_BENCHUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "spa/clock.h"

/* spa_clock_ns (spa/clock.h) as unsigned nanoseconds, for differences of timestamps. */
static inline uint64_t bu_now_ns(void)
{
	return (uint64_t)spa_clock_ns();
}

/* The pct-th percentile (0..100) of v[n], nearest-rank on the sorted values. Sorts v in
 * place (ascending). n == 0: returns 0. */
double bu_percentile(double *v, size_t n, double pct);
/* Sort v[n] ascending (what bu_percentile does); then bu_percentile_sorted is O(1). */
void bu_sort(double *v, size_t n);
double bu_percentile_sorted(const double *v, size_t n, double pct);

/* "CPU MODEL, N cores / M PUs, Linux RELEASE" into buf (always NUL-terminated). */
void bu_machine(char *buf, size_t size);
/* "load 1.23 0.98 0.75" (1/5/15-minute load averages) into buf. */
void bu_load(char *buf, size_t size);
/* The machine's CPU time so far, in clock ticks (/proc/stat's first line): all of it, and the
 * part stolen by the hypervisor for other guests. 0 when unreadable. */
struct bu_cpu_ticks {
	unsigned long long total, steal;
};
struct bu_cpu_ticks bu_cpu_ticks(void);
/* Percent of the CPU time between a and b that was stolen (-1: unknown). */
double bu_steal_pct(struct bu_cpu_ticks a, struct bu_cpu_ticks b);

/* Pin the calling thread to logical CPU cpu with hwloc (spa_pin_thread). Returns 0 or a
 * negative code. bu_pin_core(i): to the first PU of core i (modulo the core count), so two
 * threads given i = 0 and 1 sit on different cores; returns the OS CPU index or < 0. */
int bu_pin(int cpu);
int bu_pin_core(int i);

/* A tiny streaming JSON writer with a nesting stack that inserts the commas and escapes the
 * strings:
 *
 *   struct bu_json j;
 *   if (bu_json_open(&j, "out.json") < 0) ...      // writes nothing yet
 *   bu_json_obj_begin(&j, NULL);                   // {        (key NULL: top level / array)
 *   bu_json_str(&j, "machine", desc);              //  "machine":"..."
 *   bu_json_arr_begin(&j, "results");              //  ,"results":[
 *   for (...) {
 *           bu_json_obj_begin(&j, NULL);           //   {
 *           bu_json_str(&j, "link", "udp");
 *           bu_json_num(&j, "p50_us", 12.5);
 *           bu_json_obj_end(&j);                   //   }
 *   }
 *   bu_json_arr_end(&j);                           //  ]
 *   bu_json_obj_end(&j);                           // }
 *   if (bu_json_close(&j) < 0) ...                 // 0 or -errno (any write error)
 *
 * bu_json_raw writes text as one value (a comma is put before it when needed). */
#define BU_JSON_DEPTH 32
struct bu_json {
	FILE *f;
	int depth;
	unsigned char n_items[BU_JSON_DEPTH];   /* per level: 0 before the first member */
	int err;
};
int bu_json_open(struct bu_json *j, const char *path);
void bu_json_obj_begin(struct bu_json *j, const char *key);
void bu_json_obj_end(struct bu_json *j);
void bu_json_arr_begin(struct bu_json *j, const char *key);
void bu_json_arr_end(struct bu_json *j);
void bu_json_str(struct bu_json *j, const char *key, const char *val);
void bu_json_num(struct bu_json *j, const char *key, double val);   /* non-finite: null */
void bu_json_int(struct bu_json *j, const char *key, int64_t val);
void bu_json_raw(struct bu_json *j, const char *key, const char *text);
int bu_json_close(struct bu_json *j);

#endif
