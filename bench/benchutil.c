/* spa: helpers shared by the benchmarks (see bench/benchutil.h). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

#include "benchutil.h"
#include "spa/pin.h"

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

void bu_sort(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
}

double bu_percentile_sorted(const double *v, size_t n, double pct)
{
	if (!n)
		return 0;
	if (pct <= 0)
		return v[0];
	if (pct >= 100)
		return v[n - 1];
	/* nearest rank: the smallest value with at least pct% of the samples at or below it */
	size_t rank = (size_t)ceil(pct / 100.0 * (double)n);
	return v[rank ? rank - 1 : 0];
}

double bu_percentile(double *v, size_t n, double pct)
{
	bu_sort(v, n);
	return bu_percentile_sorted(v, n, pct);
}

static void cpu_model(char *buf, size_t size)
{
	snprintf(buf, size, "unknown CPU");
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "model name", 10))
			continue;
		char *p = strchr(line, ':');
		if (!p)
			continue;
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		p[strcspn(p, "\n")] = 0;
		snprintf(buf, size, "%s", p);
		break;
	}
	fclose(f);
}

void bu_machine(char *buf, size_t size)
{
	char model[256];
	struct utsname u;
	cpu_model(model, sizeof(model));
	if (uname(&u) < 0)
		snprintf(u.release, sizeof(u.release), "?");
	snprintf(buf, size, "%s, %d cores / %d PUs, Linux %s", model, spa_pin_n_cores(),
		 spa_pin_n_pus(), u.release);
}

void bu_load(char *buf, size_t size)
{
	double l[3];
	if (getloadavg(l, 3) != 3)
		snprintf(buf, size, "load ?");
	else
		snprintf(buf, size, "load %.2f %.2f %.2f", l[0], l[1], l[2]);
}

struct bu_cpu_ticks bu_cpu_ticks(void)
{
	struct bu_cpu_ticks t = { 0, 0 };
	unsigned long long v[8] = { 0 };
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return t;
	/* cpu user nice system idle iowait irq softirq steal ... */
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			t.total += v[i];
		t.steal = v[7];
	}
	fclose(f);
	return t;
}

double bu_steal_pct(struct bu_cpu_ticks a, struct bu_cpu_ticks b)
{
	if (!a.total || b.total <= a.total || b.steal < a.steal)
		return -1;
	return 100.0 * (double)(b.steal - a.steal) / (double)(b.total - a.total);
}

int bu_pin(int cpu)
{
	return spa_pin_thread(cpu);
}

int bu_pin_core(int i)
{
	int cpu = spa_pin_core_pu(i);
	if (cpu < 0)
		return cpu;
	int rc = spa_pin_thread(cpu);
	return rc < 0 ? rc : cpu;
}

/* JSON */

int bu_json_open(struct bu_json *j, const char *path)
{
	memset(j, 0, sizeof(*j));
	j->f = fopen(path, "w");
	return j->f ? 0 : -errno;
}

static void json_escaped(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* Comma and key before a value at the current level. */
static int json_member(struct bu_json *j, const char *key)
{
	if (!j->f)
		return -1;
	if (j->depth > 0 && j->n_items[j->depth - 1]++)
		fputc(',', j->f);
	if (key) {
		json_escaped(j->f, key);
		fputc(':', j->f);
	}
	return 0;
}

static void json_open(struct bu_json *j, const char *key, char c)
{
	if (json_member(j, key) < 0)
		return;
	if (j->depth >= BU_JSON_DEPTH) {
		j->err = -E2BIG;
		return;
	}
	fputc(c, j->f);
	j->n_items[j->depth++] = 0;
}

static void json_close_level(struct bu_json *j, char c)
{
	if (!j->f || j->depth <= 0)
		return;
	j->depth--;
	fputc(c, j->f);
}

void bu_json_obj_begin(struct bu_json *j, const char *key) { json_open(j, key, '{'); }
void bu_json_obj_end(struct bu_json *j) { json_close_level(j, '}'); }
void bu_json_arr_begin(struct bu_json *j, const char *key) { json_open(j, key, '['); }
void bu_json_arr_end(struct bu_json *j) { json_close_level(j, ']'); }

void bu_json_str(struct bu_json *j, const char *key, const char *val)
{
	if (json_member(j, key) == 0)
		json_escaped(j->f, val ? val : "");
}

void bu_json_num(struct bu_json *j, const char *key, double val)
{
	if (json_member(j, key) < 0)
		return;
	if (isfinite(val))
		fprintf(j->f, "%.6g", val);
	else
		fputs("null", j->f);
}

void bu_json_int(struct bu_json *j, const char *key, int64_t val)
{
	if (json_member(j, key) == 0)
		fprintf(j->f, "%lld", (long long)val);
}

void bu_json_raw(struct bu_json *j, const char *key, const char *text)
{
	if (json_member(j, key) == 0)
		fputs(text, j->f);
}

int bu_json_close(struct bu_json *j)
{
	if (!j->f)
		return j->err ? j->err : -EBADF;
	fputc('\n', j->f);
	int err = j->err;
	if (ferror(j->f) && !err)
		err = -EIO;
	if (fclose(j->f) != 0 && !err)
		err = errno ? -errno : -EIO;
	j->f = NULL;
	return err;
}
