// libnuma (Debian: libnuma-dev): interleaved and node-local placement, and the CPU
// affinity calls (libnuma's wrappers, so no _GNU_SOURCE is needed).
#include <numa.h>

// CPUs this process may run on, or -1.
static inline int cce_allowed_cpu_count(void) {
    struct bitmask *m = numa_allocate_cpumask();
    if (!m) return -1;
    int n = numa_sched_getaffinity(0, m) < 0 ? -1 : (int)numa_bitmask_weight(m);
    numa_free_cpumask(m);
    return n;
}

// Pins the calling thread to the index-th CPU (mod count) of the process's allowed set.
static inline int cce_pin_current_thread(int index) {
    struct bitmask *m = numa_allocate_cpumask();
    if (!m) return -1;
    int rc = -1;
    if (numa_sched_getaffinity(0, m) >= 0) {
        int n = (int)numa_bitmask_weight(m), want = n > 0 ? index % n : 0, seen = 0;
        for (unsigned cpu = 0; n > 0 && cpu < m->size; cpu++) {
            if (!numa_bitmask_isbitset(m, cpu)) continue;
            if (seen++ == want) {
                numa_bitmask_clearall(m);
                numa_bitmask_setbit(m, cpu);
                rc = numa_sched_setaffinity(0, m);
                break;
            }
        }
    }
    numa_free_cpumask(m);
    return rc;
}

// glibc allocator controls for the memory probe (CCERuntime/MemoryProbe.swift).
#include <malloc.h>
static inline void cce_malloc_fix_mmap_threshold(int bytes) { mallopt(M_MMAP_THRESHOLD, bytes); }
static inline void cce_malloc_trim(void) { malloc_trim(0); }

// Interleaves the pages of [addr, addr + len) over all NUMA nodes, moving pages that are
// already placed (mbind with MPOL_MF_MOVE). Returns 0, or -1 where that fails.
#include <numaif.h>
#include <unistd.h>
static inline int cce_interleave_pages(void *addr, unsigned long len) {
    if (numa_available() < 0 || !numa_all_nodes_ptr) return -1;
    unsigned long page = (unsigned long)sysconf(_SC_PAGESIZE);
    unsigned long start = (unsigned long)addr & ~(page - 1);
    unsigned long end = ((unsigned long)addr + len + page - 1) & ~(page - 1);
    return (int)mbind((void *)start, end - start, MPOL_INTERLEAVE, numa_all_nodes_ptr->maskp,
                      numa_all_nodes_ptr->size + 1, MPOL_MF_MOVE);
}

// Zeroes [addr, addr + bytes) with non-temporal stores where the CPU has them (x86-64: SSE2's
// streaming stores, which write whole lines to memory without reading them first or filling
// the caches), else with memset. For zeroing a large buffer in pieces between compute-bound
// work (CCERuntime/Chores.swift): the pieces neither evict the caches' working set nor wait
// for each line to be read. The stores are fenced before returning.
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif
static inline void cce_stream_zero(void *addr, unsigned long bytes) {
#if defined(__x86_64__)
    char *p = (char *)addr, *end = p + bytes;
    while (p < end && ((unsigned long)p & 15)) *p++ = 0;
    const __m128i z = _mm_setzero_si128();
    for (; p + 64 <= end; p += 64) {
        _mm_stream_si128((__m128i *)p, z);
        _mm_stream_si128((__m128i *)(p + 16), z);
        _mm_stream_si128((__m128i *)(p + 32), z);
        _mm_stream_si128((__m128i *)(p + 48), z);
    }
    for (; p < end; p++) *p = 0;
    _mm_sfence();
#else
    memset(addr, 0, bytes);
#endif
}
