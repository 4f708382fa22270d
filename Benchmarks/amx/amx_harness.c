// A standalone C harness for the AMX tile kernel (Sources/CCEAVX512/cce_avx512.c), for a
// machine with AMX and a C compiler but no Swift: the same properties the Swift tests check
// (BF16KernelTests / AMXKernelTests), the hardware's rounding, and GFLOP/s against the
// AVX-512 kernels. It includes the kernel's source, so it sees its helpers.
//
//   cc -O2 -Iinclude amx_harness.c -o amx_harness -lm -lpthread
//   ./amx_harness [all | bench | rounding]
//
// With -DAMX_EMULATE the tile instructions are replaced by the scalar model of tdpbf16ps
// below (amx_model_step, measured bit for bit): the kernel's layouts, edges, masks and bits
// can then be checked on a CPU without AMX (the timings mean nothing there).

#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// The model of tdpbf16ps measured on a Xeon 6 (model 207), bit for bit: per output, the 16
// even-element products and the 16 odd-element products each summed in pair order in
// Float32 (from +0, one rounding to nearest even a step), then acc + (even + odd), two more
// roundings. bf16 inputs and the incoming acc read subnormals as zero; every rounded result
// that is subnormal becomes zero.
static float amx_daz_bf16(uint16_t h) {
    if ((h & 0x7F80) == 0) h &= 0x8000;
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static float amx_ftz(float x) { return fpclassify(x) == FP_SUBNORMAL ? copysignf(0, x) : x; }
static float amx_model_step(float acc, const uint16_t *a, const uint16_t *b) {  // 32 elements each
    float e = 0, o = 0;
    for (int k = 0; k < 16; k++) {
        e = amx_ftz(fmaf(amx_daz_bf16(a[2 * k]), amx_daz_bf16(b[2 * k]), e));
        o = amx_ftz(fmaf(amx_daz_bf16(a[2 * k + 1]), amx_daz_bf16(b[2 * k + 1]), o));
    }
    return amx_ftz(amx_ftz(acc) + amx_ftz(e + o));
}

#ifdef AMX_EMULATE
#undef _tile_loadconfig
#undef _tile_release
#undef _tile_zero
#undef _tile_loadd
#undef _tile_stored
#undef _tile_dpbf16ps
static unsigned char emu_tile[8][16][64];
static void emu_load(int t, const void *base, long stride) {
    for (int r = 0; r < 16; r++) memcpy(emu_tile[t][r], (const char *)base + r * stride, 64);
}
static void emu_store(int t, void *base, long stride) {
    for (int r = 0; r < 16; r++) memcpy((char *)base + r * stride, emu_tile[t][r], 64);
}
static void emu_dp(int c, int a, int b) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s;
            uint16_t x[32], y[32];
            memcpy(&s, &emu_tile[c][i][4 * j], 4);
            for (int k = 0; k < 16; k++) {
                memcpy(&x[2 * k], &emu_tile[a][i][4 * k], 4);
                memcpy(&y[2 * k], &emu_tile[b][k][4 * j], 4);
            }
            s = amx_model_step(s, x, y);
            memcpy(&emu_tile[c][i][4 * j], &s, 4);
        }
}
#define _tile_loadconfig(p) ((void)(p))
#define _tile_release() ((void)0)
#define _tile_zero(t) memset(emu_tile[t], 0, 1024)
#define _tile_loadd(t, base, stride) emu_load(t, base, stride)
#define _tile_stored(t, base, stride) emu_store(t, base, stride)
#define _tile_dpbf16ps(c, a, b) emu_dp(c, a, b)
#endif

#include "../../Sources/CCEAVX512/cce_avx512.c"

// MARK: - Data

static uint64_t rng_state;
static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform(void) { return (double)(rnd() >> 11) * 0x1p-53 * 2 - 1; }

static uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7FFFFFFF) > 0x7F800000) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t fbits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

// count rows of d bf16 elements, contiguous; with guard, the last row ends at a PROT_NONE page.
typedef struct {
    long count, d;
    uint16_t *bits;
    const uint16_t **rows;
    void *map;
    size_t mapped;
} Rows;

static Rows make_rows(long count, long d, uint64_t seed, int wide, int guard) {
    Rows r = {count, d, NULL, NULL, NULL, 0};
    size_t bytes = (size_t)(count * d > 0 ? count * d : 1) * 2;
    if (guard) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = (bytes + page - 1) / page;
        r.mapped = (pages + 1) * page;
        r.map = mmap(NULL, r.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect((char *)r.map + pages * page, page, PROT_NONE);
        r.bits = (uint16_t *)((char *)r.map + pages * page - bytes);
    } else {
        r.map = aligned_alloc(64, (bytes + 63) / 64 * 64);
        r.bits = r.map;
    }
    rng_state = seed;
    for (long i = 0; i < count * d; i++) {
        double x = uniform();
        if (wide) x *= ldexp(1, (int)(rnd() % 41) - 20);
        r.bits[i] = to_bf16((float)x);
    }
    r.rows = malloc(sizeof(void *) * (size_t)(count > 0 ? count : 1));
    for (long i = 0; i < count; i++) r.rows[i] = r.bits + i * d;
    return r;
}
static void free_rows(Rows *r) {
    if (r->mapped) munmap(r->map, r->mapped); else free(r->map);
    free(r->rows);
}

// The AMX tile (m x n at ldo, extra NaN rows below and NaN beyond n) of e rows e0.. and c rows c0...
static float *amx_tile(const Rows *e, long e0, long m, const Rows *c, long c0, long n, long ldo, long extra,
                       const bool *mask) {
    long d = e->d;
    uint32_t *blocks = aligned_alloc(64, (cce_amx_row_block_words(m, d) * 4 + 63) / 64 * 64 + 64);
    for (size_t w = 0; w < cce_amx_row_block_words(m, d); w++) blocks[w] = 0xDEADBEEF;
    uint32_t *scratch = aligned_alloc(64, cce_amx_scratch_words() * 4);
    for (size_t w = 0; w < cce_amx_scratch_words(); w++) scratch[w] = 0x7FC00001;  // NaN garbage
    float *out = malloc(sizeof(float) * (size_t)((m + extra) * ldo));
    for (long i = 0; i < (m + extra) * ldo; i++) out[i] = NAN;
    cce_amx_pack_rows(e->rows + e0, m, d, blocks);
    cce_amx_tile_product(blocks, m, c->rows + c0, n, d, out, ldo, scratch, mask, 0);
    free(blocks);
    free(scratch);
    return out;
}

// MARK: - References: Float64, and models of tdpbf16ps

static double ref_dot(const uint16_t *a, const uint16_t *b, long d, double *absSum) {
    double s = 0, t = 0;
    for (long k = 0; k < d; k++) {
        double p = (double)from_bf16(a[k]) * from_bf16(b[k]);
        s += p;
        t += fabs(p);
    }
    *absSum = t;
    return s;
}

#ifdef NO_FLOAT128
typedef long double wide_t;
#else
typedef __float128 wide_t;
#endif

// Models of one tdpbf16ps element: acc + Σ_{k<16} (a[2k]·b[2k] + a[2k+1]·b[2k+1]).
enum { M_AMX, M_SEQ_EVEN, M_SEQ_ODD, M_PAIR_EXACT, M_PAIR_ROUNDED, M_ALL_EXACT, M_ALL_ROUNDED, M_TREE, M_COUNT };
static const char *model_names[M_COUNT] = {"AMX model (even/odd chains)", "seq even-first", "seq odd-first",
                                           "pair exact", "pair rounded", "all-32 exact", "all-32 rounded", "tree"};
static int model_ftz = 1, model_daz = 1;

static float in_bf16(uint16_t h) {
    if (model_daz && (h & 0x7F80) == 0) h &= 0x8000;
    return from_bf16(h);
}
static float rnd32(wide_t x) {
    float f = (float)x;
    if (model_ftz && fpclassify(f) == FP_SUBNORMAL) f = copysignf(0, f);
    return f;
}
static float model_step(int model, float acc, const uint16_t *a, const uint16_t *b) {
    if (model == M_AMX) return amx_model_step(acc, a, b);
    float p[32];
    for (int k = 0; k < 32; k++) p[k] = in_bf16(a[k]) * in_bf16(b[k]);  // exact (but for under/overflow)
    switch (model) {
    case M_SEQ_EVEN:
    case M_SEQ_ODD:
        for (int k = 0; k < 16; k++) {  // fused: exact products, one rounding per step
            int first = model == M_SEQ_EVEN ? 2 * k : 2 * k + 1, second = 4 * k + 1 - first;
            acc = rnd32(fmaf(in_bf16(a[first]), in_bf16(b[first]), acc));
            acc = rnd32(fmaf(in_bf16(a[second]), in_bf16(b[second]), acc));
        }
        return acc;
    case M_PAIR_EXACT:
        for (int k = 0; k < 16; k++) acc = rnd32((wide_t)acc + (wide_t)p[2 * k] + (wide_t)p[2 * k + 1]);
        return acc;
    case M_PAIR_ROUNDED:
        for (int k = 0; k < 16; k++) acc = rnd32((wide_t)acc + rnd32((wide_t)p[2 * k] + (wide_t)p[2 * k + 1]));
        return acc;
    case M_ALL_EXACT:
    case M_ALL_ROUNDED: {
        wide_t s = 0;
        for (int k = 0; k < 32; k++) s += (wide_t)p[k];
        return model == M_ALL_EXACT ? rnd32((wide_t)acc + s) : rnd32((wide_t)acc + rnd32(s));
    }
    default: {  // pairwise tree of the 32 products, each add one rounding, then onto acc
        for (int w = 16; w >= 1; w /= 2)
            for (int k = 0; k < w; k++) p[k] = rnd32((wide_t)p[2 * k] + (wide_t)p[2 * k + 1]);
        return rnd32((wide_t)acc + p[0]);
    }
    }
}
// A whole dot product as the kernel computes it: 32-element chunks (zero-padded), from +0.
static float model_dot(int model, const uint16_t *a, const uint16_t *b, long d) {
    float acc = 0;
    for (long k0 = 0; k0 < d; k0 += 32) {
        uint16_t ca[32] = {0}, cb[32] = {0};
        long kn = d - k0 < 32 ? d - k0 : 32;
        memcpy(ca, a + k0, (size_t)kn * 2);
        memcpy(cb, b + k0, (size_t)kn * 2);
        acc = model_step(model, acc, ca, cb);
    }
    return acc;
}

// MARK: - Checks

static long failures = 0;
#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            if (failures++ < 20) { printf("FAIL: " __VA_ARGS__); printf("\n"); } \
        }                                                                 \
    } while (0)

static const long depths[] = {1, 2, 3, 17, 31, 32, 33, 255, 256, 257, 1023, 2048, 2100};
#define NDEPTHS (long)(sizeof depths / sizeof depths[0])

static long model_mismatch[M_COUNT];
static long model_outputs = 0, amx_model_mismatch = 0, all_outputs = 0;

// Reference budget, sentinels, and the models, on shapes around the 16 / 32 block edges.
static void check_reference(void) {
    static const long ms[] = {1, 2, 5, 7, 13, 15, 16, 17, 31, 32, 33, 47, 48, 49, 65, 150, 258};
    static const long ns[] = {1, 3, 9, 16, 17, 31, 32, 33, 40, 47, 64, 65, 256, 100, 37, 5, 70};
    double worst = 0;
    for (long di = 0; di < NDEPTHS; di++) {
        long d = depths[di];
        for (long s = 0; s < (long)(sizeof ms / sizeof ms[0]); s++) {
            long m = ms[s], n = ns[(s + di) % (long)(sizeof ns / sizeof ns[0])];
            if (m * n * d > 20000000) n = 37;
            Rows e = make_rows(m, d, (uint64_t)(1000 * d + 2 * s), s % 3 == 1, 0);
            Rows c = make_rows(n, d, (uint64_t)(1000 * d + 2 * s + 1), 0, 0);
            long ldo = n + 3;
            float *out = amx_tile(&e, 0, m, &c, 0, n, ldo, 1, NULL);
            for (long i = 0; i < m; i++) {
                for (long j = 0; j < n; j++) {
                    double abs_sum, ref = ref_dot(e.rows[i], c.rows[j], d, &abs_sum);
                    float got = out[i * ldo + j];
                    all_outputs++;
                    double err = fabs((double)got - ref);
                    double budget = 2 * (double)d * 0x1p-24 * abs_sum + 2 * (double)d * 0x1p-126;
                    CHECK(err <= budget, "m=%ld n=%ld d=%ld (%ld,%ld): %.9g vs %.17g (budget %.3g)", m, n, d, i, j,
                          got, ref, budget);
                    if (abs_sum > 0) worst = fmax(worst, err / ((double)d * 0x1p-24 * abs_sum));
                    if (fbits(model_dot(M_AMX, e.rows[i], c.rows[j], d)) != fbits(got)) amx_model_mismatch++;
                    if (i < 8 && j < 8) {
                        model_outputs++;
                        for (int md = 0; md < M_COUNT; md++)
                            if (fbits(model_dot(md, e.rows[i], c.rows[j], d)) != fbits(got)) model_mismatch[md]++;
                    }
                }
                for (long j = n; j < ldo; j++) CHECK(isnan(out[i * ldo + j]), "column %ld >= n written", j);
            }
            for (long j = 0; j < ldo; j++) CHECK(isnan(out[m * ldo + j]), "row m written (m=%ld n=%ld d=%ld)", m, n, d);
            free(out);
            free_rows(&e);
            free_rows(&c);
        }
    }
    printf("reference: max |out - ref| / (d 2^-24 sum|ab|) = %.4f (budget 2)\n", worst);
    printf("AMX model vs AMX, every output of these tiles: %ld mismatches of %ld\n", amx_model_mismatch, all_outputs);
    printf("models vs AMX, whole dot products (%ld outputs): ", model_outputs);
    for (int md = 0; md < M_COUNT; md++) printf("%s %ld; ", model_names[md], model_mismatch[md]);
    printf("\n");
}

static void check_mask(void) {
    long m = 3 * 32 + 5, n = 37, d = 257, ldo = 40;
    Rows e = make_rows(m, d, 7, 0, 0), c = make_rows(n, d, 8, 0, 0);
    float *full = amx_tile(&e, 0, m, &c, 0, n, ldo, 1, NULL);
    bool mask[4] = {true, false, false, true};
    float *part = amx_tile(&e, 0, m, &c, 0, n, ldo, 1, mask);
    for (long i = 0; i < m; i++)
        for (long j = 0; j < ldo; j++) {
            if (mask[i / 32] && j < n) CHECK(fbits(part[i * ldo + j]) == fbits(full[i * ldo + j]), "mask (%ld,%ld)", i, j);
            else CHECK(isnan(part[i * ldo + j]), "skipped row %ld / column %ld written", i, j);
        }
    bool none[4] = {false, false, false, false};
    float *z = amx_tile(&e, 0, m, &c, 0, n, ldo, 1, none);
    for (long i = 0; i < (m + 1) * ldo; i++) CHECK(isnan(z[i]), "all-false mask wrote %ld", i);
    // d = 0: zeros, the mask honoured.
    Rows e0 = make_rows(m, 0, 1, 0, 0), c0 = make_rows(n, 0, 2, 0, 0);
    float *zz = amx_tile(&e0, 0, m, &c0, 0, n, ldo, 1, mask);
    for (long i = 0; i < m; i++)
        for (long j = 0; j < ldo; j++)
            CHECK(mask[i / 32] && j < n ? fbits(zz[i * ldo + j]) == 0 : isnan(zz[i * ldo + j]), "d=0 (%ld,%ld)", i, j);
    free(full); free(part); free(z); free(zz);
    free_rows(&e); free_rows(&c); free_rows(&e0); free_rows(&c0);
    printf("panel mask: checked\n");
}

static void check_position(void) {
    static const long pd[] = {17, 1023, 2100, 4200};
    for (int di = 0; di < 4; di++) {
        long d = pd[di], m = 150, n = 256;
        Rows e = make_rows(m, d, 21, 1, 0), c = make_rows(n, d, 22, 0, 0);
        float *full = amx_tile(&e, 0, m, &c, 0, n, n, 0, NULL);
        static const long sub[][4] = {{5, 17, 3, 29}, {0, 1, 255, 1}, {149, 1, 0, 256}, {13, 13, 40, 33},
                                      {100, 50, 200, 56}, {31, 40, 31, 40}, {1, 32, 1, 32}, {16, 16, 16, 16}};
        for (int s = 0; s < 8; s++) {
            long i0 = sub[s][0], mm = sub[s][1], j0 = sub[s][2], nn = sub[s][3];
            float *t = amx_tile(&e, i0, mm, &c, j0, nn, nn, 0, NULL);
            for (long i = 0; i < mm; i++)
                for (long j = 0; j < nn; j++)
                    CHECK(fbits(t[i * nn + j]) == fbits(full[(i0 + i) * n + j0 + j]),
                          "d=%ld element (%ld,%ld) at (%ld,%ld) of %ldx%ld", d, i0 + i, j0 + j, i, j, mm, nn);
            free(t);
        }
        free(full);
        free_rows(&e); free_rows(&c);
    }
    printf("position independence: checked\n");
}

static void check_layout_and_guard(void) {
    static const long ld[] = {1, 3, 17, 31, 32, 33, 255, 256, 1023};
    for (int di = 0; di < 9; di++) {
        long d = ld[di], m = 32 + 5, chunks = (d + 31) / 32;
        Rows e = make_rows(m, d, (uint64_t)d, 0, 1);
        size_t words = cce_amx_row_block_words(m, d);
        CHECK(words == (size_t)(64 * chunks * 16), "block words d=%ld", d);
        uint32_t *b = malloc(words * 4);
        for (size_t w = 0; w < words; w++) b[w] = 0xDEADBEEF;
        cce_amx_pack_rows(e.rows, m, d, b);
        for (long g = 0; g < 4; g++)
            for (long cc = 0; cc < chunks; cc++)
                for (long r = 0; r < 16; r++)
                    for (long t = 0; t < 16; t++) {
                        long i = 16 * g + r, q = 16 * cc + t;
                        uint16_t lo = i < m && 2 * q < d ? e.bits[i * d + 2 * q] : 0;
                        uint16_t hi = i < m && 2 * q + 1 < d ? e.bits[i * d + 2 * q + 1] : 0;
                        CHECK(b[(g * chunks + cc) * 256 + r * 16 + t] == ((uint32_t)lo | (uint32_t)hi << 16),
                              "layout d=%ld group %ld chunk %ld row %ld pair %ld", d, g, cc, r, t);
                    }
        free(b);
        Rows c = make_rows(33, d, (uint64_t)d + 1, 0, 1);
        float *out = amx_tile(&e, 0, m, &c, 0, 33, 33, 0, NULL);
        long is[2] = {0, m - 1}, js[2] = {0, 32};
        for (int a = 0; a < 2; a++)
            for (int bb = 0; bb < 2; bb++) {
                double s, ref = ref_dot(e.rows[is[a]], c.rows[js[bb]], d, &s);
                CHECK(fabs(out[is[a] * 33 + js[bb]] - ref) <= 2 * d * 0x1p-24 * s, "guard d=%ld", d);
            }
        free(out);
        free_rows(&e); free_rows(&c);
    }
    printf("layout, zero padding, guard pages: checked\n");
}

// MARK: - The instruction itself: models and subnormals

#ifndef AMX_EMULATE
CCE_AMX static void one_tdp(const float *acc, const uint16_t *a, const uint16_t *b, float *out) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 3; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    _tile_loadconfig(&cfg);
    _tile_loadd(0, acc, 64);
    _tile_loadd(1, a, 64);
    _tile_loadd(2, b, 64);
    _tile_dpbf16ps(0, 1, 2);
    _tile_stored(0, out, 64);
    _tile_release();
}
#else
static void one_tdp(const float *acc, const uint16_t *a, const uint16_t *b, float *out) {
    memcpy(emu_tile[0], acc, 1024);
    memcpy(emu_tile[1], a, 1024);
    memcpy(emu_tile[2], b, 1024);
    emu_dp(0, 1, 2);
    memcpy(out, emu_tile[0], 1024);
}
#endif

// acc: 16 x 16 Float32; a: 16 rows x 32 bf16 (pair k = elements 2k, 2k + 1); b: 16 pair-rows x
// 16 columns x 2 bf16. Output (i, j) = acc(i, j) + Σ_k a(i, 2k..) · b(k, j, ..).
static void gather(const uint16_t *a, const uint16_t *b, int i, int j, uint16_t *x, uint16_t *y) {
    for (int k = 0; k < 16; k++) {
        x[2 * k] = a[i * 32 + 2 * k]; x[2 * k + 1] = a[i * 32 + 2 * k + 1];
        y[2 * k] = b[k * 32 + 2 * j]; y[2 * k + 1] = b[k * 32 + 2 * j + 1];
    }
}

static uint16_t bf16_pow2(int e, int neg) { return (uint16_t)((neg ? 0x8000 : 0) | ((e + 127) << 7)); }

static void check_rounding(void) {
    // Random tiles whose every sum is exact in the wide type: inputs ±(1 + f/128)·2^e with
    // e in [-6, 6], accumulators of 24 bits with exponents in [-3, 12].
    static float acc[256], out[256];
    static uint16_t a[512], b[512];
    long mism[M_COUNT] = {0}, total = 0, ulps_hist[4] = {0};
    rng_state = 4242;
    for (int trial = 0; trial < 400; trial++) {
        for (int i = 0; i < 512; i++) {
            uint64_t r = rnd();
            a[i] = (uint16_t)(((r & 1) << 15) | ((uint64_t)((int)(r >> 1) % 13 - 6 + 127) << 7) | ((r >> 8) & 0x7F));
            r = rnd();
            b[i] = (uint16_t)(((r & 1) << 15) | ((uint64_t)((int)(r >> 1) % 13 - 6 + 127) << 7) | ((r >> 8) & 0x7F));
            if (trial % 4 == 1 && (rnd() & 3) == 0) a[i] = 0;  // some zero products
        }
        for (int i = 0; i < 256; i++) {
            uint64_t r = rnd();
            acc[i] = trial % 4 == 0 ? 0.0f : ldexpf((float)((r >> 40) & 0xFFFFFF) * 0x1p-24f + 1, (int)(r % 16) - 3)
                                              * ((r >> 20) & 1 ? -1 : 1);
        }
        one_tdp(acc, a, b, out);
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                uint16_t x[32], y[32];
                gather(a, b, i, j, x, y);
                total++;
                for (int md = 0; md < M_COUNT; md++) {
                    float v = model_step(md, acc[i * 16 + j], x, y);
                    if (fbits(v) != fbits(out[i * 16 + j])) mism[md]++;
                    if (md == M_ALL_EXACT) {
                        long du = labs((long)fbits(v) - (long)fbits(out[i * 16 + j]));
                        ulps_hist[du == 0 ? 0 : du == 1 ? 1 : du <= 4 ? 2 : 3]++;
                    }
                }
            }
    }
    printf("tdpbf16ps vs models, %ld random outputs (exact in the wide type): ", total);
    for (int md = 0; md < M_COUNT; md++) printf("%s %ld; ", model_names[md], mism[md]);
    printf("\n  vs all-32 exact: 0 ulp %ld, 1 ulp %ld, 2-4 ulp %ld, more %ld\n", ulps_hist[0], ulps_hist[1],
           ulps_hist[2], ulps_hist[3]);

    // Special cases: element (0, 0) with the products listed, the rest zero.
    struct { const char *what; float acc; int np; uint16_t pa[4], pb[4]; } cases[] = {
        {"DAZ input: bf16 0x0001 x 2^100 (exact 2^-33)", 0, 1, {0x0001}, {bf16_pow2(100, 0)}},
        {"product 2^-70 x 2^-70 = 2^-140, acc 0", 0, 1, {bf16_pow2(-70, 0)}, {bf16_pow2(-70, 0)}},
        {"acc 2^-120 + product 2^-140 (exact 2^-120(1+2^-20))", 0x1p-120f, 1, {bf16_pow2(-70, 0)}, {bf16_pow2(-70, 0)}},
        {"acc 2^-130 (subnormal), no products", 0x1p-130f, 0, {0}, {0}},
        {"acc 2^-127 (subnormal) + 2^-126 (exact 1.5 2^-126)", 0x1p-127f, 1, {bf16_pow2(-63, 0)}, {bf16_pow2(-63, 0)}},
        {"acc 2^-125 - 1.5 2^-126 (exact 2^-127)", 0x1p-125f, 1, {0xBFC0 - (127 << 7) + ((127 - 63) << 7)}, {bf16_pow2(-63, 0)}},
        {"acc 1 + 2^-24 (tie: RNE 1)", 1.0f, 1, {bf16_pow2(-12, 0)}, {bf16_pow2(-12, 0)}},
        {"acc 1+2^-23 + 2^-24 (tie: RNE 1+2^-22)", 1.0f + 0x1p-23f, 1, {bf16_pow2(-12, 0)}, {bf16_pow2(-12, 0)}},
        {"acc 1 + 2^-24(1+2^-7) (above tie: RNE 1+2^-23)", 1.0f, 1, {0x3F81 - (12 << 7)}, {bf16_pow2(-12, 0)}},
        {"acc -1 - 2^-24(1+2^-7) (RNE -(1+2^-23))", -1.0f, 1, {0xBF81 - (12 << 7)}, {bf16_pow2(-12, 0)}},
        {"acc 0: 2^30 + 1 - 2^30 (pairs 0: even, odd; 1: even)", 0, 3, {bf16_pow2(15, 0), 0x3F80, bf16_pow2(15, 1)},
         {bf16_pow2(15, 0), 0x3F80, bf16_pow2(15, 0)}},
        {"acc 0: 1 + 2^30 - 2^30 (even 1, odd 2^30, next even -2^30)", 0, 3, {0x3F80, bf16_pow2(15, 0), bf16_pow2(15, 1)},
         {0x3F80, bf16_pow2(15, 0), bf16_pow2(15, 0)}},
        {"acc 2^30: + 1 then - 2^30 in one instruction", 0x1p30f, 2, {0x3F80, bf16_pow2(15, 1)}, {0x3F80, bf16_pow2(15, 0)}},
        {"acc 1: 4 products of 2^-25 (exact 1 + 2^-23)", 1.0f, 4, {bf16_pow2(-12, 0), bf16_pow2(-12, 0), bf16_pow2(-12, 0), bf16_pow2(-12, 0)},
         {bf16_pow2(-13, 0), bf16_pow2(-13, 0), bf16_pow2(-13, 0), bf16_pow2(-13, 0)}},
        {"overflow: 2^127 x 2^1 (inf?)", 0, 1, {bf16_pow2(127, 0)}, {bf16_pow2(1, 0)}},
        {"2^127 x 2 + (-2^127 x 2) in one pair", 0, 2, {bf16_pow2(127, 0), bf16_pow2(127, 1)}, {bf16_pow2(1, 0), bf16_pow2(1, 0)}},
    };
    printf("special cases (element (0,0); products at elements 0, 1, 2, 3 = pair 0 even/odd, pair 1 even/odd):\n");
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++) {
        memset(acc, 0, sizeof acc); memset(a, 0, sizeof a); memset(b, 0, sizeof b);
        acc[0] = cases[s].acc;
        for (int k = 0; k < cases[s].np; k++) { a[k] = cases[s].pa[k]; b[(k / 2) * 32 + (k % 2)] = cases[s].pb[k]; }
        one_tdp(acc, a, b, out);
        uint16_t x[32], y[32];
        gather(a, b, 0, 0, x, y);
        printf("  %-58s -> %-14a", cases[s].what, (double)out[0]);
        for (int md = 0; md < M_COUNT; md++) printf(" %c", fbits(model_step(md, acc[0], x, y)) == fbits(out[0]) ? '=' : 'x');
        printf("\n");
    }
    printf("  (= / x: the models in order: ");
    for (int md = 0; md < M_COUNT; md++) printf("%s, ", model_names[md]);
    printf("with DAZ inputs and FTZ results)\n");
}

// MARK: - A sweep of hardware models of tdpbf16ps (exact fixed-point arithmetic)
//
// The probe's values are bf16 of exponents in [-12, 12] and accumulators of exponents in
// [-3, 20]: every product and sum is an integer multiple of 2^-80 below 2^110, so __int128
// holds them exactly. A model reduces the 16 even-element and 16 odd-element products (or
// all 32) to a sum, then combines it with the accumulator, with one Float32 rounding (to
// nearest even) or an alignment to the largest term (keeping w bits, the rest truncated
// toward zero, toward -inf, or rounded) at each stage.

typedef __int128 fx;
#define FX_S 80
static int fx_msb(fx x) {
    unsigned __int128 u = x < 0 ? (unsigned __int128)(-x) : (unsigned __int128)x;
    if (!u) return -1;
    uint64_t hi = (uint64_t)(u >> 64);
    return hi ? 127 - __builtin_clzll(hi) : 63 - __builtin_clzll((uint64_t)u);
}
static fx fx_r32(fx x) {  // round to 24 significant bits, nearest even
    int L = fx_msb(x);
    if (L <= 23) return x;
    int s = L - 23;
    unsigned __int128 u = x < 0 ? (unsigned __int128)(-x) : (unsigned __int128)x, q = u >> s, rem = u - (q << s),
                      half = (unsigned __int128)1 << (s - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    fx r = (fx)(q << s);
    return x < 0 ? -r : r;
}
enum { A_TZ, A_FLOOR, A_RNE };
static fx fx_align(const fx *v, int n, int w, int mode) {
    int emax = -1;
    for (int i = 0; i < n; i++) { int L = fx_msb(v[i]); if (L > emax) emax = L; }
    int s = emax - w + 1;
    fx sum = 0;
    for (int i = 0; i < n; i++) {
        fx x = v[i];
        if (s > 0 && x) {
            if (mode == A_FLOOR) x = (x >> s) << s;
            else {
                unsigned __int128 u = x < 0 ? (unsigned __int128)(-x) : (unsigned __int128)x, q = u >> s;
                if (mode == A_RNE) {
                    unsigned __int128 rem = u - (q << s), half = (unsigned __int128)1 << (s - 1);
                    if (rem > half || (rem == half && (q & 1))) q++;
                }
                x = x < 0 ? -(fx)(q << s) : (fx)(q << s);
            }
        }
        sum += x;
    }
    return sum;
}
static fx fx_bf16(uint16_t h) {  // the bf16's value (exponent in [-12, 12] or zero) at scale 2^-80 / 2^-7
    if ((h & 0x7F80) == 0) return 0;
    fx m = 128 + (h & 0x7F);
    return (h & 0x8000) ? -m : m;  // times 2^(e - 7)
}
static int bf16_exp(uint16_t h) { return ((h >> 7) & 0xFF) - 127; }
static fx fx_product(uint16_t a, uint16_t b) {
    fx p = fx_bf16(a) * fx_bf16(b);
    if (!p) return 0;
    int sh = bf16_exp(a) + bf16_exp(b) - 14 + FX_S;
    return p * ((fx)1 << sh);
}
static fx fx_float(float f) {
    if (f == 0) return 0;
    int e;
    float m = frexpf(fabsf(f), &e);  // f = m 2^e, m in [0.5, 1)
    fx q = (fx)(m * 0x1p24f);        // 24-bit integer
    int sh = e - 24 + FX_S;
    fx r = q * ((fx)1 << sh);
    return f < 0 ? -r : r;
}
static uint32_t fx_bits(fx x) {  // an already-rounded value as Float32 bits
    if (!x) return 0;
    int L = fx_msb(x), sh = L > 23 ? L - 23 : 0;
    unsigned __int128 u = x < 0 ? (unsigned __int128)(-x) : (unsigned __int128)x;
    float f = ldexpf((float)(uint32_t)(u >> sh), sh - FX_S);
    if (x < 0) f = -f;
    return fbits(f);
}

typedef struct { int split, gmeth, gw, gmode, gr, cmeth, cw, cmode; } Model;
enum { G_EXACT, G_ALIGN, G_TREE, G_SEQ };
enum { C_R2, C_EXACT3, C_SEQ_E, C_SEQ_O, C_ALIGN3, C_TREEG, C_CHAIN };
static fx group_sum(const Model *md, const fx *v, int n) {
    fx s = 0, t[32];
    switch (md->gmeth) {
    case G_EXACT: for (int i = 0; i < n; i++) s += v[i]; break;
    case G_ALIGN: s = fx_align(v, n, md->gw, md->gmode); break;
    case G_TREE:
        memcpy(t, v, sizeof(fx) * (size_t)n);
        for (int w = n / 2; w >= 1; w /= 2) for (int k = 0; k < w; k++) t[k] = fx_r32(t[2 * k] + t[2 * k + 1]);
        return t[0];
    default: for (int i = 0; i < n; i++) s = fx_r32(s + v[i]); return s;
    }
    return md->gr ? fx_r32(s) : s;
}
// Groups: split 1 = all 32 products; 2 = even / odd elements; 4 = parity x pairs 0-7 / 8-15;
// 8 = parity x four quarters of the pairs. Group g holds products in element order.
static fx model_apply(const Model *md, fx acc, const fx *p /* 32 products, element order */) {
    if (md->cmeth == C_CHAIN) {  // one chain from acc, element order, one rounding a step
        for (int k = 0; k < 32; k++) acc = fx_r32(acc + p[k]);
        return acc;
    }
    int ng = md->split, size = 32 / ng;
    fx g[9], v[32];
    for (int gi = 0; gi < ng; gi++) {
        int n = 0;
        for (int k = 0; k < 32; k++) {
            int parity = k & 1, q = k >> 1;
            int gk = ng == 1 ? 0 : ng == 2 ? parity : ng == 4 ? parity + 2 * (q / 8) : parity + 2 * (q / 4);
            if (gk == gi) v[n++] = p[k];
        }
        (void)size;
        g[gi] = group_sum(md, v, n);
    }
    fx sum = 0;
    for (int gi = 0; gi < ng; gi++) sum += g[gi];
    switch (md->cmeth) {
    case C_R2: return fx_r32(acc + fx_r32(sum));
    case C_EXACT3: return fx_r32(acc + sum);
    case C_SEQ_E: return fx_r32(fx_r32(acc + g[0]) + g[1]);
    case C_SEQ_O: return fx_r32(fx_r32(acc + g[1]) + g[0]);
    case C_TREEG:
        for (int w = ng / 2; w >= 1; w /= 2) for (int k = 0; k < w; k++) g[k] = fx_r32(g[2 * k] + g[2 * k + 1]);
        return fx_r32(acc + g[0]);
    default:
        g[ng] = acc;
        return fx_r32(fx_align(g, ng + 1, md->cw, md->cmode));
    }
}
static void model_name(const Model *md, char *buf) {
    static const char *gm[] = {"exact", "align", "tree32", "seq32"}, *cm[] = {"r(acc+r(sum))", "r(acc+sum)",
                                "r(r(acc+E)+O)", "r(r(acc+O)+E)", "align", "r(acc+tree32)", "chain from acc"},
                      *am[] = {"tz", "floor", "rne"};
    char g[64], c[64];
    if (md->gmeth == G_ALIGN) snprintf(g, sizeof g, "align%d-%s%s", md->gw, am[md->gmode], md->gr ? "+r32" : "");
    else snprintf(g, sizeof g, "%s%s", gm[md->gmeth], md->gmeth == G_EXACT && md->gr ? "+r32" : "");
    if (md->cmeth == C_ALIGN3) snprintf(c, sizeof c, "align(acc, groups) w%d-%s", md->cw, am[md->cmode]);
    else snprintf(c, sizeof c, "%s", cm[md->cmeth]);
    sprintf(buf, "%d group(s), each %s; combine %s", md->split, g, c);
}

#define SWEEP_TILES 240
static void sweep_models(void) {
    // Data: tiles of acc, a, b and the hardware's out; three kinds of trial.
    static float acc[SWEEP_TILES][256], out[SWEEP_TILES][256];
    static uint16_t a[SWEEP_TILES][512], b[SWEEP_TILES][512];
    rng_state = 777;
    for (int t = 0; t < SWEEP_TILES; t++) {
        int range = t % 3 == 0 ? 6 : 12;
        for (int i = 0; i < 512; i++) {
            uint64_t r = rnd();
            a[t][i] = (uint16_t)(((r & 1) << 15) | ((uint64_t)((int)((r >> 1) % (2 * range + 1)) - range + 127) << 7) | ((r >> 12) & 0x7F));
            r = rnd();
            b[t][i] = (uint16_t)(((r & 1) << 15) | ((uint64_t)((int)((r >> 1) % (2 * range + 1)) - range + 127) << 7) | ((r >> 12) & 0x7F));
            if (t % 5 == 1 && (rnd() & 3) == 0) a[t][i] = 0;
        }
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                uint64_t r = rnd();
                float x = ldexpf((float)((r >> 40) & 0xFFFFFF) * 0x1p-24f + 1, (int)(r % 24) - 3) * ((r >> 20) & 1 ? -1 : 1);
                if (t % 4 == 0) x = 0;
                if (t % 4 == 3) {  // cancel the products' sum, nearly
                    double s = 0;
                    for (int k = 0; k < 32; k++) s += (double)from_bf16(a[t][i * 32 + k]) * from_bf16(b[t][(k / 2) * 32 + 2 * j + k % 2]);
                    x = (float)(-s * (1 + ((double)(r % 1000) - 500) * 1e-6));
                    if (fabsf(x) < 0x1p-3f || fabsf(x) > 0x1p20f) x = 0;
                }
                acc[t][i * 16 + j] = x;
            }
        one_tdp(acc[t], a[t], b[t], out[t]);
    }
    // The models.
    static Model models[8192];
    int nm = 0;
    static const int ws[] = {24, 25, 26, 27, 28, 32};
    static const int splits[] = {1, 2, 4, 8};
    for (int si = 0; si < 4; si++)
        for (int gmeth = 0; gmeth < 4; gmeth++)
            for (int gwi = 0; gwi < (gmeth == G_ALIGN ? 6 : 1); gwi++)
                for (int gmode = 0; gmode < (gmeth == G_ALIGN ? 3 : 1); gmode++)
                    for (int gr = 0; gr < (gmeth <= G_ALIGN ? 2 : 1); gr++)
                        for (int cmeth = 0; cmeth < 6; cmeth++)
                            for (int cwi = 0; cwi < (cmeth == C_ALIGN3 ? 6 : 1); cwi++)
                                for (int cmode = 0; cmode < (cmeth == C_ALIGN3 ? 3 : 1); cmode++) {
                                    int split = splits[si];
                                    if (split != 2 && (cmeth == C_SEQ_E || cmeth == C_SEQ_O)) continue;
                                    if (split == 1 && (cmeth == C_TREEG || cmeth == C_EXACT3)) continue;
                                    models[nm++] = (Model){split, gmeth, ws[gwi], gmode, gr, cmeth, ws[cwi], cmode};
                                }
    models[nm++] = (Model){1, G_SEQ, 0, 0, 0, C_CHAIN, 0, 0};
    static long mism[8192], hist[8192][4];
    static fx pr[SWEEP_TILES][256][32], ac[SWEEP_TILES][256];
    for (int t = 0; t < SWEEP_TILES; t++)
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                for (int k = 0; k < 32; k++) pr[t][i * 16 + j][k] = fx_product(a[t][i * 32 + k], b[t][(k / 2) * 32 + 2 * j + k % 2]);
                ac[t][i * 16 + j] = fx_float(acc[t][i * 16 + j]);
            }
    // Sanity: the fixed-point exact model against the wide-type one on tile 0.
    long sane = 0;
    for (int e = 0; e < 256; e++) {
        uint16_t x[32], y[32];
        gather(a[0], b[0], e / 16, e % 16, x, y);
        Model ex = {2, G_EXACT, 0, 0, 0, C_EXACT3, 0, 0};
        if (fx_bits(model_apply(&ex, ac[0][e], pr[0][e])) != fbits(model_step(M_ALL_EXACT, acc[0][e], x, y))) sane++;
    }
    // Screen every model on the first 8 tiles, then the best 40 on all.
    for (int md = 0; md < nm; md++)
        for (int t = 0; t < 8; t++)
            for (int e = 0; e < 256; e++)
                if (fx_bits(model_apply(&models[md], ac[t][e], pr[t][e])) != fbits(out[t][e])) mism[md]++;
    int order[8192];
    for (int i = 0; i < nm; i++) order[i] = i;
    for (int i = 0; i < nm && i < 40; i++)
        for (int j = i + 1; j < nm; j++)
            if (mism[order[j]] < mism[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    int top = nm < 40 ? nm : 40;
    for (int r = 0; r < top; r++) {
        int md = order[r];
        mism[md] = 0;
        for (int t = 0; t < SWEEP_TILES; t++)
            for (int e = 0; e < 256; e++) {
                uint32_t v = fx_bits(model_apply(&models[md], ac[t][e], pr[t][e])), o = fbits(out[t][e]);
                if (v != o) mism[md]++;
                long du = labs((long)v - (long)o);
                hist[md][du == 0 ? 0 : du == 1 ? 1 : du <= 4 ? 2 : 3]++;
            }
    }
    for (int i = 0; i < top; i++)
        for (int j = i + 1; j < top; j++)
            if (mism[order[j]] < mism[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    printf("model sweep: %d models, %d outputs (fixed-point sanity mismatches %ld); best:\n", nm, SWEEP_TILES * 256, sane);
    for (int r = 0; r < 12 && r < nm; r++) {
        char name[160];
        model_name(&models[order[r]], name);
        long *h = hist[order[r]];
        printf("  %6ld mismatches (1 ulp %ld, 2-4 %ld, more %ld)  %s\n", mism[order[r]], h[1], h[2], h[3], name);
    }
    // Per trial kind for the best.
    int best = order[0];
    long kind[4] = {0};
    for (int t = 0; t < SWEEP_TILES; t++)
        for (int e = 0; e < 256; e++)
            if (fx_bits(model_apply(&models[best], ac[t][e], pr[t][e])) != fbits(out[t][e])) kind[t % 4]++;
    printf("  best model's mismatches by trial kind (acc 0 / random / random / cancelling): %ld %ld %ld %ld\n",
           kind[0], kind[1], kind[2], kind[3]);
}

// MARK: - Timing

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
    long m, n, d;
    Rows e, c;
    uint32_t *blocks, *scratch, *panels;
    float *efloat, *fpanel, *out;
    const float **erows;
} Bench;

static void bench_init(Bench *b, long m, long n, long d, uint64_t seed) {
    b->m = m; b->n = n; b->d = d;
    b->e = make_rows(m, d, seed, 0, 0);
    b->c = make_rows(n, d, seed + 1, 0, 0);
    b->blocks = aligned_alloc(64, cce_amx_row_block_words(m, d) * 4);
    b->scratch = aligned_alloc(64, cce_amx_scratch_words() * 4);
    b->panels = aligned_alloc(64, (cce_bf16_row_panel_words(m, d) * 4 + 63) / 64 * 64);
    b->efloat = aligned_alloc(64, (size_t)(m * d) * 4);
    b->fpanel = aligned_alloc(64, cce_fma_column_panel_floats() * 4);
    b->out = aligned_alloc(64, (size_t)(m * n) * 4);
    b->erows = malloc(sizeof(float *) * (size_t)m);
    for (long i = 0; i < m; i++) b->erows[i] = b->efloat + i * d;
}

enum { K_AMX, K_AMX_PACK, K_AMX_BOTH, K_CPACK, K_DP, K_DP_BOTH, K_FMA, K_FMA_CONV, K_COUNT };
static const char *kernel_names[K_COUNT] = {"amx product", "amx pack E", "amx pack+product", "(C panels alone)",
                                            "avx512bf16 product", "avx512bf16 pack+product", "fma512 product",
                                            "fma512 E->f32"};

CCE_AVX512 static void bench_once(Bench *b, int k) {
    long m = b->m, n = b->n, d = b->d;
    switch (k) {
    case K_AMX_BOTH: cce_amx_pack_rows(b->e.rows, m, d, b->blocks); /* fallthrough */
    case K_AMX: cce_amx_tile_product(b->blocks, m, b->c.rows, n, d, b->out, n, b->scratch, NULL, 0); break;
    case K_AMX_PACK: cce_amx_pack_rows(b->e.rows, m, d, b->blocks); break;
    case K_CPACK: {  // the AMX product's C packing alone: every 32-column panel, every KCP chunk
        long pairs = (d + 31) / 32 * 16;
        for (long q0 = 0; q0 < pairs; q0 += CCE_AMX_KCP)
            for (long j0 = 0; j0 < n; j0 += 32)
                bf16_pack_columns(b->c.rows + j0, n - j0 < 32 ? n - j0 : 32, d, q0,
                                  pairs - q0 < CCE_AMX_KCP ? pairs - q0 : CCE_AMX_KCP, b->scratch, NULL, 0);
        break;
    }
    case K_DP_BOTH: cce_bf16_pack_rows(b->e.rows, m, d, b->panels); /* fallthrough */
    case K_DP: cce_bf16_tile_product(b->panels, m, b->c.rows, n, d, b->out, n, NULL, 0); break;
    case K_FMA_CONV:
        for (long i = 0; i < m * d; i++) b->efloat[i] = from_bf16(b->e.bits[i]);
        break;
    case K_FMA:
        cce_fma_tile_product_rows(b->erows, m, (const void *const *)b->c.rows, CCE_STORAGE_BF16, n, d, b->out, n,
                                  b->fpanel, NULL);
        break;
    }
}

static double bench_time(Bench *b, int k, double seconds) {
    bench_once(b, k);
    double t0 = now();
    long reps = 0;
    while (now() - t0 < seconds / 10) { bench_once(b, k); reps++; }
    if (reps < 1) reps = 1;
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        double t = now();
        for (long r = 0; r < reps; r++) bench_once(b, k);
        double per = (now() - t) / (double)reps;
        if (per < best) best = per;
    }
    return best;
}

typedef struct { Bench b; int k; long reps; double seconds; pthread_barrier_t *bar; } ThreadJob;
static void *thread_main(void *arg) {
    ThreadJob *j = arg;
    if (j->k == K_AMX || j->k == K_AMX_BOTH) cce_amx_supported();
    bench_once(&j->b, j->k);
    pthread_barrier_wait(j->bar);
    double t = now();
    for (long r = 0; r < j->reps; r++) bench_once(&j->b, j->k);
    j->seconds = now() - t;
    return NULL;
}

static uint64_t hash_out(const float *o, long count) {
    uint64_t h = 1469598103934665603ull;
    for (long i = 0; i < count; i++) { h ^= fbits(o[i]); h *= 1099511628211ull; }
    return h;
}

static void bench(int threads) {
    static const long ds[] = {1024, 2048};
    long m = 258, n = 256;
    for (int di = 0; di < 2; di++) {
        long d = ds[di];
        Bench b;
        bench_init(&b, m, n, d, 77);
        for (long i = 0; i < m * d; i++) b.efloat[i] = from_bf16(b.e.bits[i]);
        cce_amx_pack_rows(b.e.rows, m, d, b.blocks);
        cce_bf16_pack_rows(b.e.rows, m, d, b.panels);
        double flop = 2.0 * (double)m * (double)n * (double)d;
        bench_once(&b, K_AMX);
        printf("m=%ld n=%ld d=%ld (KCP %d), amx output hash %016llx\n", m, n, d, CCE_AMX_KCP,
               (unsigned long long)hash_out(b.out, m * n));
        for (int k = 0; k < K_COUNT; k++) {
            double t = bench_time(&b, k, 0.4);
            printf("  1 thread  %-26s %9.1f us  %8.1f GFLOP/s\n", kernel_names[k], t * 1e6, flop / t * 1e-9);
        }
        if (threads > 1) {
            int ks[3] = {K_AMX, K_DP, K_FMA};
            ThreadJob *jobs = calloc((size_t)threads, sizeof *jobs);
            pthread_t *tid = calloc((size_t)threads, sizeof *tid);
            for (int t = 0; t < threads; t++) {
                bench_init(&jobs[t].b, m, n, d, 100 + (uint64_t)t);
                for (long i = 0; i < m * d; i++) jobs[t].b.efloat[i] = from_bf16(jobs[t].b.e.bits[i]);
                cce_amx_pack_rows(jobs[t].b.e.rows, m, d, jobs[t].b.blocks);
                cce_bf16_pack_rows(jobs[t].b.e.rows, m, d, jobs[t].b.panels);
            }
            for (int kk = 0; kk < 3; kk++) {
                pthread_barrier_t bar;
                pthread_barrier_init(&bar, NULL, (unsigned)threads);
                double single = bench_time(&b, ks[kk], 0.1);
                long reps = (long)(0.4 / single) + 1;
                for (int t = 0; t < threads; t++) { jobs[t].k = ks[kk]; jobs[t].reps = reps; jobs[t].bar = &bar; }
                for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, thread_main, &jobs[t]);
                double worst = 0;
                for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); if (jobs[t].seconds > worst) worst = jobs[t].seconds; }
                printf("  %d threads %-26s %9.1f us  %8.1f GFLOP/s per core (slowest thread)\n", threads,
                       kernel_names[ks[kk]], worst / (double)reps * 1e6, flop * (double)reps / worst * 1e-9);
                pthread_barrier_destroy(&bar);
            }
        }
    }
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}
// The AMX product alone, 40 rounds of about 10 ms: the best and the median round.
static void quick(void) {
    static const long ds[] = {1024, 2048};
    for (int di = 0; di < 2; di++) {
        Bench b;
        long m = 258, n = 256, d = ds[di];
        bench_init(&b, m, n, d, 77);
        cce_amx_pack_rows(b.e.rows, m, d, b.blocks);
        double flop = 2.0 * (double)m * (double)n * (double)d, r[40];
        bench_once(&b, K_AMX);
        double t0 = now();
        long reps = 0;
        while (now() - t0 < 0.01) { bench_once(&b, K_AMX); reps++; }
        for (int k = 0; k < 40; k++) {
            double t = now();
            for (long i = 0; i < reps; i++) bench_once(&b, K_AMX);
            r[k] = (now() - t) / (double)reps;
        }
        qsort(r, 40, sizeof r[0], cmp_double);
        printf("  quick d=%ld KCP %d: amx product best %.1f us (%.0f GFLOP/s), median %.1f us (%.0f GFLOP/s)\n",
               d, CCE_AMX_KCP, r[0] * 1e6, flop / r[0] * 1e-9, r[20] * 1e6, flop / r[20] * 1e-9);
    }
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    int threads = argc > 2 ? atoi(argv[2]) : 1;
#ifndef AMX_EMULATE
    unsigned a, bb, c, d;
    __cpuid_count(7, 0, a, bb, c, d);
    printf("cpuid 7.0 EDX amx-bf16 %u amx-tile %u; XCR0 tile bits %llu; cce_amx_supported %d; avx512bf16 %d\n",
           (d >> 22) & 1, (d >> 24) & 1, (read_xcr0() >> 17) & 3, cce_amx_supported(), cce_bf16_supported());
    if (!cce_amx_supported()) { printf("no AMX: nothing to run\n"); return 2; }
#else
    printf("AMX EMULATED (scalar model): layouts and edges only\n");
#endif
    if (!strcmp(what, "all") || !strcmp(what, "rounding")) check_rounding();
    if (!strcmp(what, "all") || !strcmp(what, "rounding") || !strcmp(what, "sweep")) sweep_models();
    if (!strcmp(what, "all")) {
        check_layout_and_guard();
        check_mask();
        check_position();
        check_reference();
        printf("correctness: %ld failures\n", failures);
    }
    if (!strcmp(what, "all") || !strcmp(what, "bench")) bench(threads);
    if (!strcmp(what, "quick")) quick();
    return failures ? 1 : 0;
}
