// hwloc (Debian: libhwloc-dev): cache sizes and core counts for the tile planner.
#include <hwloc.h>
// hwloc_get_type_depth etc. are functions; these wrappers give Swift the few inline helpers it needs.
static inline int cce_hwloc_cache_size(hwloc_topology_t topo, int level, unsigned long long *size) {
    hwloc_obj_type_t type;
    switch (level) {
    case 1: type = HWLOC_OBJ_L1CACHE; break;
    case 2: type = HWLOC_OBJ_L2CACHE; break;
    case 3: type = HWLOC_OBJ_L3CACHE; break;
    default: return -1;
    }
    hwloc_obj_t obj = hwloc_get_next_obj_by_type(topo, type, NULL);
    if (!obj || !obj->attr) return -1;
    *size = obj->attr->cache.size;
    return 0;
}
static inline int cce_hwloc_count(hwloc_topology_t topo, hwloc_obj_type_t type) {
    return hwloc_get_nbobjs_by_type(topo, type);
}
