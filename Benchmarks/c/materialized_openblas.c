// The materialized baseline in plain C with OpenBLAS: the yardstick for
// Sources/CutCrossEntropy/Materialized.swift (issue 12, item 5: the Swift baseline must stay
// within 1.1x of this program, so that no ratio against it flatters the engine).
//
// Per call, the same work as Materialized.compute with default options (mean reduction, no
// bias, no soft cap, no smoothing, every target active):
//   bf16 inputs: E and C converted to fresh Float32 copies by T threads;
//   logits = E·Cᵀ                  cblas_sgemm into a fresh N x V buffer (beta = 0);
//   per row (T threads):           m = max, lse = m + log Σ exp(z − m), loss_i = lse − z_t;
//   loss+grad, per row:            z ← exp(z − lse)/N, z_t −= 1/N   (softmax − one-hot, mean);
//   dE = G·C, dC = Gᵀ·E            cblas_sgemm into fresh N x D and V x D buffers (beta = 0);
//   everything freed before the clock stops (the Swift row frees its logits and gradients too).
// The Swift baseline does not chunk over tokens: one N x V matrix, three whole products.
//
// Data: LM-like (Docs/LMLIKE.md, S = 4, α = 1.5) from this program's own generator
// (xoshiro256**, Box–Muller): the same kind of data as `cce bench`, not the same numbers;
// the timing does not depend on the values beyond their distribution.
//
// Build and run (Benchmarks/scripts/fair_baseline.sh does both):
//   gcc -O2 -o materialized_openblas materialized_openblas.c -lopenblas -lpthread -lm
//   OPENBLAS_CORETYPE=SkylakeX ./materialized_openblas --tokens 1024 --dim 1024 --vocab 32768
//     (continued) --dtype bf16 --threads 2 --repeats 3
// Output: one line per kind, `key=value` fields (median and min wall seconds, the phases of
// the median run, peak extra resident MB of the call as `cce bench` measures it, and the
// process's peak RSS).

#define _GNU_SOURCE
#include <cblas.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

extern void openblas_set_num_threads(int);
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// ---- random numbers: xoshiro256**, seeded by SplitMix64 ----
static uint64_t rs[4];
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static void seed_rng(uint64_t seed) {
    for (int i = 0; i < 4; i++) {
        uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        rs[i] = z ^ (z >> 31);
    }
}
static uint64_t next_u64(void) {
    uint64_t r = rotl(rs[1] * 5, 7) * 9, t = rs[1] << 17;
    rs[2] ^= rs[0]; rs[3] ^= rs[1]; rs[1] ^= rs[2]; rs[0] ^= rs[3]; rs[2] ^= t; rs[3] = rotl(rs[3], 45);
    return r;
}
static double uniform(void) { return (double)(next_u64() >> 11) * 0x1.0p-53; }
static double normal(void) {   // Box–Muller, both values used
    static int have = 0;
    static double spare;
    if (have) { have = 0; return spare; }
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    double r = sqrt(-2 * log(u1));
    spare = r * sin(2 * M_PI * u2); have = 1;
    return r * cos(2 * M_PI * u2);
}

// bf16: the high half of a Float32, rounded to nearest even.
static uint16_t to_bf16(float x) {
    uint32_t u; memcpy(&u, &x, 4);
    if (x != x) return 0x7FC0;
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
static float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16; float x; memcpy(&x, &u, 4);
    return x;
}

// ---- the problem ----
typedef struct {
    int n, d, v, threads, bf16;
    const void *e, *c;   // storage: float* or uint16_t*
    const int32_t *targets;
} problem;

// Threads: T workers per parallel region, created and joined per call, as the Swift baseline's
// Workers.run does (worker 0 is the caller's thread).
typedef struct { void (*fn)(void *, int); void *arg; int w; } job;
static void *job_main(void *p) { job *j = p; j->fn(j->arg, j->w); return NULL; }
static void run_workers(int count, void (*fn)(void *, int), void *arg) {
    if (count <= 1) { fn(arg, 0); return; }
    pthread_t th[256]; job jobs[256];
    for (int w = 1; w < count; w++) {
        jobs[w] = (job){fn, arg, w};
        pthread_create(&th[w], NULL, job_main, &jobs[w]);
    }
    fn(arg, 0);
    for (int w = 1; w < count; w++) pthread_join(th[w], NULL);
}

// bf16 → Float32 copy, split into T contiguous chunks.
typedef struct { const uint16_t *src; float *dst; size_t count; int parts; } conv_args;
static void conv_worker(void *p, int w) {
    conv_args *a = p;
    size_t chunk = (a->count + a->parts - 1) / a->parts, s = (size_t)w * chunk, e = s + chunk;
    if (e > a->count) e = a->count;
    for (size_t i = s; i < e; i++) a->dst[i] = from_bf16(a->src[i]);
}
static float *float32_copy(const uint16_t *src, size_t count, int threads) {
    float *out = malloc(count * sizeof(float));
    conv_args a = {src, out, count, threads};
    run_workers(threads, conv_worker, &a);
    return out;
}

// Row softmax: rows interleaved over T workers (worker w takes rows w, w+T, …).
typedef struct {
    float *logits; const int32_t *targets; double *loss; int n, v, parts, grad; float scale;
} rows_args;
static void rows_worker(void *p, int w) {
    rows_args *a = p;
    for (int i = w; i < a->n; i += a->parts) {
        float *z = a->logits + (size_t)i * a->v;
        int t = a->targets[i];
        float m = -INFINITY;
        for (int j = 0; j < a->v; j++) m = z[j] > m ? z[j] : m;
        float s = 0;
        for (int j = 0; j < a->v; j++) s += expf(z[j] - m);
        float lse = m + logf(s);
        a->loss[i] = (double)(lse - z[t]);
        if (a->grad) {
            float g = a->scale;   // upstream 1, mean over N
            for (int j = 0; j < a->v; j++) z[j] = expf(z[j] - lse) * g;
            z[t] -= g;
        }
    }
}

typedef struct { double total, convert, logits, rows, de, dc, free; } phases;

static double compute(const problem *pb, int grad, phases *ph, size_t *out_bytes) {
    int n = pb->n, d = pb->d, v = pb->v, T = pb->threads;
    double t0 = now(), t;
    const float *e = pb->e, *c = pb->c;
    float *e32 = NULL, *c32 = NULL;
    if (pb->bf16) {
        e32 = float32_copy(pb->e, (size_t)n * d, T);
        c32 = float32_copy(pb->c, (size_t)v * d, T);
        e = e32; c = c32;
    }
    t = now(); ph->convert = t - t0; t0 = t;
    float *logits = malloc((size_t)n * v * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, v, d, 1, e, d, c, d, 0, logits, v);
    t = now(); ph->logits = t - t0; t0 = t;
    double *loss = malloc((size_t)n * sizeof(double));
    rows_args ra = {logits, pb->targets, loss, n, v, T < n ? T : n, grad, 1.0f / (float)n};
    run_workers(ra.parts, rows_worker, &ra);
    double total = 0;
    for (int i = 0; i < n; i++) total += loss[i];
    free(loss);
    t = now(); ph->rows = t - t0; t0 = t;
    float *dE = NULL, *dC = NULL;
    ph->de = ph->dc = 0;
    if (grad) {
        dE = malloc((size_t)n * d * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, v, 1, logits, v, c, d, 0, dE, d);
        t = now(); ph->de = t - t0; t0 = t;
        dC = malloc((size_t)v * d * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, v, d, n, 1, logits, v, e, d, 0, dC, d);
        t = now(); ph->dc = t - t0; t0 = t;
        *out_bytes = ((size_t)n * d + (size_t)v * d) * sizeof(float);
        // Touch the results so that nothing could be optimized away.
        volatile float sink = dE[0] + dC[(size_t)v * d - 1]; (void)sink;
    } else {
        *out_bytes = 0;
    }
    free(logits); free(e32); free(c32); free(dE); free(dC);
    t = now(); ph->free = t - t0;
    return total / n;
}

// ---- memory, measured as cce bench's MemoryProbe does ----
static long status_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256]; long kb = 0; size_t len = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, len)) { kb = atol(line + len); break; }
    fclose(f);
    return kb;
}
static void reset_peak(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) { fputs("5", f); fclose(f); }
}

// ---- LM-like data (Docs/LMLIKE.md) ----
static void make_data(int n, int d, int v, double S, double alpha, uint64_t seed, int bf16,
                      void **e_out, void **c_out, int32_t **t_out, int threads) {
    seed_rng(seed);
    int *rank = malloc((size_t)v * sizeof(int));
    for (int i = 0; i < v; i++) rank[i] = i + 1;
    for (int i = v - 1; i > 0; i--) { int j = (int)(uniform() * (i + 1)); int x = rank[i]; rank[i] = rank[j]; rank[j] = x; }
    float *c = malloc((size_t)v * d * sizeof(float)), *e = malloc((size_t)n * d * sizeof(float));
    double sc = 1.0 / sqrt((double)(d - 1));
    for (int r = 0; r < v; r++) {
        for (int k = 0; k < d - 1; k++) c[(size_t)r * d + k] = (float)(normal() * sc);
        c[(size_t)r * d + d - 1] = (float)(-alpha * log((double)rank[r]));
    }
    for (int r = 0; r < n; r++) {
        for (int k = 0; k < d - 1; k++) e[(size_t)r * d + k] = (float)(normal() * S);
        e[(size_t)r * d + d - 1] = 1;
    }
    free(rank);
    if (bf16) {   // round to bf16 before the targets are drawn
        for (size_t i = 0; i < (size_t)v * d; i++) c[i] = from_bf16(to_bf16(c[i]));
        for (size_t i = 0; i < (size_t)n * d; i++) e[i] = from_bf16(to_bf16(e[i]));
    }
    // Targets drawn from softmax(E_n·Cᵀ), 64 rows of logits at a time.
    int32_t *tg = malloc((size_t)n * sizeof(int32_t));
    openblas_set_num_threads(threads);
    int block = 64;
    float *z = malloc((size_t)block * v * sizeof(float));
    for (int r0 = 0; r0 < n; r0 += block) {
        int rows = n - r0 < block ? n - r0 : block;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, v, d, 1, e + (size_t)r0 * d, d, c, d, 0, z, v);
        for (int i = 0; i < rows; i++) {
            float *row = z + (size_t)i * v, m = -INFINITY;
            for (int j = 0; j < v; j++) m = row[j] > m ? row[j] : m;
            double s = 0;
            for (int j = 0; j < v; j++) s += exp((double)(row[j] - m));
            double u = uniform() * s, acc = 0;
            int t = v - 1;
            for (int j = 0; j < v; j++) { acc += exp((double)(row[j] - m)); if (acc >= u) { t = j; break; } }
            tg[r0 + i] = t;
        }
    }
    free(z);
    if (bf16) {
        uint16_t *cb = malloc((size_t)v * d * 2), *eb = malloc((size_t)n * d * 2);
        for (size_t i = 0; i < (size_t)v * d; i++) cb[i] = to_bf16(c[i]);
        for (size_t i = 0; i < (size_t)n * d; i++) eb[i] = to_bf16(e[i]);
        free(c); free(e);
        *c_out = cb; *e_out = eb;
    } else {
        *c_out = c; *e_out = e;
    }
    *t_out = tg;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr, "usage: materialized_openblas [--tokens N] [--dim D] [--vocab V] [--dtype f32|bf16] "
                    "[--threads T] [--repeats R] [--kinds loss,loss+grad] [--seed S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int n = 1024, d = 1024, v = 32768, threads = 2, repeats = 3, bf16 = 0;
    uint64_t seed = 0;
    const char *kinds = "loss,loss+grad";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) usage();
        if (!strcmp(a, "--tokens")) n = atoi(val);
        else if (!strcmp(a, "--dim")) d = atoi(val);
        else if (!strcmp(a, "--vocab")) v = atoi(val);
        else if (!strcmp(a, "--threads")) threads = atoi(val);
        else if (!strcmp(a, "--repeats")) repeats = atoi(val);
        else if (!strcmp(a, "--seed")) seed = strtoull(val, NULL, 10);
        else if (!strcmp(a, "--kinds")) kinds = val;
        else if (!strcmp(a, "--dtype")) {
            if (!strcmp(val, "bf16")) bf16 = 1; else if (!strcmp(val, "f32")) bf16 = 0; else usage();
        } else usage();
        i++;
    }
    if (n < 1 || d < 2 || v < 1 || threads < 1 || threads > 256 || repeats < 1) usage();
    // As cce bench's MemoryProbe: every block above 64 KiB is its own mapping, returned on free.
    mallopt(M_MMAP_THRESHOLD, 64 << 10);

    void *e, *c; int32_t *tg;
    make_data(n, d, v, 4.0, 1.5, seed, bf16, &e, &c, &tg, threads);
    problem pb = {n, d, v, threads, bf16, e, c, tg};
    openblas_set_num_threads(threads);
    printf("# c-openblas: N=%d D=%d V=%d %s threads=%d repeats=%d; OpenBLAS %s, core %s\n", n, d, v,
           bf16 ? "bf16" : "f32", threads, repeats, openblas_get_config(), openblas_get_corename());

    const char *names[2] = {"loss", "loss+grad"};
    for (int k = 0; k < 2; k++) {
        // Match whole comma-separated names only ("loss" must not match inside "loss+grad").
        int wanted = 0;
        const char *p = kinds;
        while (*p) {
            const char *q = strchr(p, ',');
            size_t len = q ? (size_t)(q - p) : strlen(p);
            if (len == strlen(names[k]) && !strncmp(p, names[k], len)) wanted = 1;
            if (!q) break;
            p = q + 1;
        }
        if (!wanted) continue;
        double times[64]; phases ph[64]; long peak_kb = 0; double loss = 0; size_t out = 0;
        int reps = repeats > 64 ? 64 : repeats;
        for (int r = 0; r < reps; r++) {
            malloc_trim(0);
            reset_peak();
            long before = status_kb("VmRSS:");
            double t0 = now();
            loss = compute(&pb, k == 1, &ph[r], &out);
            times[r] = now() - t0;
            ph[r].total = times[r];
            if (r == 0) peak_kb = status_kb("VmHWM:") - before;
        }
        double sorted[64];
        memcpy(sorted, times, sizeof(double) * reps);
        qsort(sorted, reps, sizeof(double), cmp_double);
        double median = sorted[reps / 2];
        int mi = 0;
        for (int r = 0; r < reps; r++) if (times[r] == median) mi = r;
        double peak_extra_mb = ((double)peak_kb * 1024 - (double)out) / 1e6;
        printf("c-openblas kind=%s median_s=%.4f min_s=%.4f loss=%.6f peak_extra_mb=%.2f "
               "convert_s=%.4f logits_s=%.4f rows_s=%.4f dE_s=%.4f dC_s=%.4f free_s=%.4f\n",
               names[k], median, sorted[0], loss, peak_extra_mb < 0 ? 0 : peak_extra_mb, ph[mi].convert,
               ph[mi].logits, ph[mi].rows, ph[mi].de, ph[mi].dc, ph[mi].free);
        fflush(stdout);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("c-openblas peak_rss_mb=%.1f\n", (double)ru.ru_maxrss / 1024.0);
    free(e); free(c); free(tg);
    return 0;
}
