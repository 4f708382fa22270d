// The AMX tile loop's ceiling on this CPU, apart from the engine (Docs/PERFORMANCE.md, "Latest"):
// per-thread rates with T threads busy at once (T = 1, 2, 4, ... up to the CPU count), each
// thread pinned to CPU i:
//   amx-reg : tdpbf16ps on tiles already loaded (the tile unit alone)
//   amx-l1  : the kernel's step (two A tiles, two B tiles, four tdpbf16ps) with both operands in L1
//   amx-Bl1 : A tiles from a 512 KiB block (L2), B tiles from a 16 KiB panel (L1)
//   amx-l2  : the engine kernel's pattern: A from a 512 KiB block, B from a 64 KiB panel
//   gather  : 2 KiB rows of a shared 262 MB array in a shuffled order (the sorted-vocabulary
//             gather of C), 64-byte loads, in GB/s
// Each (mode, T) runs three times after a warm-up of every core's tile unit (a cold unit runs
// slower at first); the round with the fastest slowest thread is printed: "min" is that
// thread's rate (it ran while every other did), "all" the round's sum.
//
//   cc -O2 -pthread amx_ceiling.c -o amx_ceiling && ./amx_ceiling
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define V 128256  // classifier rows of the gather
#define RB 2048   // bytes a row (D = 1024 bf16 values)

typedef struct {
    uint8_t palette, start, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) tile_config;

enum { AMX_REG, AMX_L2, GATHER, AMX_B_L1, AMX_L1, MODES };
static const char *names[MODES] = {"amx-reg TFLOP/s", "amx-l2 TFLOP/s", "gather GB/s", "amx-Bl1 TFLOP/s", "amx-l1 TFLOP/s"};

static char *rowsC;
static int *perm, mode;
static pthread_barrier_t start;
static double rate[1024];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void *work(void *arg) {
    long id = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(id, &set);
    sched_setaffinity(0, sizeof set, &set);
    syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
    char *a = aligned_alloc(4096, 1 << 20), *b = aligned_alloc(4096, 1 << 17);
    memset(a, 0, 1 << 20);
    memset(b, 0, 1 << 17);
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) { c.colsb[t] = 64; c.rows[t] = 16; }
    _tile_loadconfig(&c);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, a, 64); _tile_loadd(5, a, 64); _tile_loadd(6, b, 128); _tile_loadd(7, b, 128);
    // A: asz bytes of 16-row tiles, the second row group `as` bytes on; B: bsz bytes of panel.
    long asz = mode == AMX_L1 ? 40 << 10 : 512 << 10, as = mode == AMX_L1 ? 4096 : 32768;
    long bsz = mode == AMX_L2 ? 64 << 10 : 16 << 10;
    pthread_barrier_wait(&start);
    double t0 = now(), work;
    if (mode != GATHER) {
        long iters = 1500000, ao = 0, bo = 0;
        for (long i = 0; i < iters; i++) {
            if (mode != AMX_REG) {
                _tile_loadd(4, a + ao, 64);
                _tile_loadd(5, a + ao + as, 64);
                _tile_loadd(6, b + bo, 128);
                _tile_loadd(7, b + bo + 64, 128);
                ao += 1024;
                if (ao + as + 1024 > asz) ao = 0;
                bo += 2048;
                if (bo + 2048 > bsz) bo = 0;
            }
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
        work = iters * 4.0 * 16 * 16 * 32 * 2 / 1e12;  // TFLOP
    } else {
        __m512i acc = _mm512_setzero_si512();
        for (long q = 0; q < V; q++) {
            const char *r = rowsC + (size_t)perm[(id * 997 + q) % V] * RB;
            for (int l = 0; l < RB; l += 64) acc = _mm512_add_epi32(acc, _mm512_loadu_si512(r + l));
        }
        int lanes[16];
        _mm512_storeu_si512(lanes, acc);
        if (lanes[0] == 12345) printf(" ");  // keeps the loads
        work = (double)V * RB / 1e9;  // GB
    }
    rate[id] = work / (now() - t0);
    _tile_release();
    free(a);
    free(b);
    return NULL;
}

int main(void) {
    rowsC = aligned_alloc(4096, (size_t)V * RB);
    memset(rowsC, 1, (size_t)V * RB);
    perm = malloc(V * sizeof(int));
    for (int i = 0; i < V; i++) perm[i] = i;
    srand(1);
    for (int i = V - 1; i > 0; i--) {
        int j = rand() % (i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int cpus = (int)sysconf(_SC_NPROCESSORS_ONLN), order[] = {AMX_REG, AMX_L1, AMX_B_L1, AMX_L2, GATHER};
    if (cpus > 1024) cpus = 1024;
    for (int o = -1; o < MODES; o++) {  // o = -1: the warm-up
        mode = order[o < 0 ? 0 : o];
        for (int T = o < 0 ? cpus : 1; T <= cpus; T *= 2) {
            double best[3] = {0, 0, 0};  // min, max, sum of the round with the largest min
            for (int round = 0; round < (o < 0 ? 1 : 3); round++) {
                pthread_t threads[1024];
                pthread_barrier_init(&start, NULL, T);
                for (long i = 0; i < T; i++) pthread_create(&threads[i], NULL, work, (void *)i);
                for (int i = 0; i < T; i++) pthread_join(threads[i], NULL);
                pthread_barrier_destroy(&start);
                double lo = 1e30, hi = 0, sum = 0;
                for (int i = 0; i < T; i++) {
                    lo = rate[i] < lo ? rate[i] : lo;
                    hi = rate[i] > hi ? rate[i] : hi;
                    sum += rate[i];
                }
                if (lo > best[0]) { best[0] = lo; best[1] = hi; best[2] = sum; }
            }
            if (o >= 0) printf("%-16s T=%2d per thread min %.2f max %.2f, all %.2f\n", names[mode], T, best[0], best[1], best[2]);
        }
    }
    return 0;
}
