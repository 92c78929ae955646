/* spa: thread placement with hwloc (see include/spa/pin.h).
 *
 * The topology is discovered once per process (lazily, under pthread_once) and then only read,
 * which hwloc allows from several threads at once. */
#include <errno.h>
#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>

#include "spa/error.h"
#include "spa/pin.h"

static hwloc_topology_t topo;
static int topo_rc; /* 0, or -errno when hwloc could not load the topology */
static pthread_once_t topo_once = PTHREAD_ONCE_INIT;

static void topo_load(void)
{
	if (hwloc_topology_init(&topo) < 0) {
		topo_rc = errno ? -errno : -ENOMEM;
		return;
	}
	if (hwloc_topology_load(topo) < 0) {
		topo_rc = errno ? -errno : -EIO;
		hwloc_topology_destroy(topo);
	}
}

static int get_topo(void)
{
	pthread_once(&topo_once, topo_load);
	return topo_rc;
}

int spa_pin_thread(int cpu)
{
	int rc = get_topo();
	if (rc < 0)
		return rc;
	if (cpu < 0)
		return -SPA_EUSAGE;
	hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)cpu);
	if (!pu)
		return -SPA_EUSAGE;
	if (hwloc_set_cpubind(topo, pu->cpuset, HWLOC_CPUBIND_THREAD) < 0)
		return errno ? -errno : -EINVAL;
	return 0;
}

int spa_pin_n_pus(void)
{
	int rc = get_topo();
	if (rc < 0)
		return rc;
	int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
	return n > 0 ? n : 1;
}

unsigned spa_pin_n_allowed(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) < 0)
		return 1;
	int n = CPU_COUNT(&set);
	return n > 0 ? (unsigned)n : 1;
}

int spa_pin_n_cores(void)
{
	int rc = get_topo();
	if (rc < 0)
		return rc;
	/* some virtual machines expose no core level: count PUs then */
	int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
	return n > 0 ? n : spa_pin_n_pus();
}

int spa_pin_core_pu(int i)
{
	int rc = get_topo();
	if (rc < 0)
		return rc;
	int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
	hwloc_obj_type_t type = HWLOC_OBJ_CORE;
	if (n <= 0) {
		type = HWLOC_OBJ_PU;
		n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
		if (n <= 0)
			return -ENODEV;
	}
	if (i < 0)
		i = -i;
	hwloc_obj_t o = hwloc_get_obj_by_type(topo, type, (unsigned)(i % n));
	if (!o || !o->cpuset)
		return -ENODEV;
	/* cpusets are indexed by OS index: the first bit is the first PU's */
	return hwloc_bitmap_first(o->cpuset);
}

void spa_pin_describe(char *buf, size_t size)
{
	if (!buf || size == 0)
		return;
	if (get_topo() < 0) {
		snprintf(buf, size, "cpu ? (no topology)");
		return;
	}
	hwloc_bitmap_t set = hwloc_bitmap_alloc();
	if (!set) {
		snprintf(buf, size, "cpu ? (out of memory)");
		return;
	}
	if (hwloc_get_cpubind(topo, set, HWLOC_CPUBIND_THREAD) < 0) {
		snprintf(buf, size, "cpu ? (cannot read the binding)");
		goto out;
	}
	if (hwloc_bitmap_weight(set) != 1) {
		char list[256];
		hwloc_bitmap_list_snprintf(list, sizeof list, set);
		snprintf(buf, size, "cpus %s (not pinned to one cpu)", list);
		goto out;
	}
	int cpu = hwloc_bitmap_first(set);
	hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)cpu);
	hwloc_obj_t core = pu ? hwloc_get_ancestor_obj_by_type(topo, HWLOC_OBJ_CORE, pu) : NULL;
	hwloc_obj_t pkg = pu ? hwloc_get_ancestor_obj_by_type(topo, HWLOC_OBJ_PACKAGE, pu) : NULL;
	char core_s[16] = "?", pkg_s[16] = "?";
	if (core)
		snprintf(core_s, sizeof core_s, "%u", core->logical_index);
	if (pkg)
		snprintf(pkg_s, sizeof pkg_s, "%u", pkg->logical_index);
	snprintf(buf, size, "cpu %d (core %s, package %s)", cpu, core_s, pkg_s);
out:
	hwloc_bitmap_free(set);
}
