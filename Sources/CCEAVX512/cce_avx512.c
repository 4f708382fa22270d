// AVX-512 and AMX tile products: the one place where the engine leaves Swift.
//
// Why C. AVX512_BF16's `vdpbf16ps` (per 32-bit lane: acc += a.odd·b.odd, then
// acc += a.even·b.even, over pairs of bf16 values: 32 products per 512-bit instruction) has
// no spelling in Swift (nor have AMX's tile instructions): Swift's SIMD types have no bfloat element, and declaring the LLVM
// intrinsic from Swift (`@_silgen_name("llvm.x86.avx512bf16.dpbf16ps.512")`) crashes Swift
// 6.3.1's compiler ("Intrinsic has incorrect return type!": Swift passes SIMD values by
// address and has no <32 x bfloat> type). Nor can Swift enable a CPU feature for one
// function: its vector code follows the module's -target-cpu, so a portable (AVX2) build
// could not contain an AVX-512 path, and a native build splits 512-bit vectors in two. Here
// every function that uses AVX-512 carries a function-level target attribute: the file
// compiles under any -march, a plain x86-64 or AVX2 binary contains every kernel, and the
// Swift side calls them only after cce_avx512_supported() / cce_bf16_supported() /
// cce_amx_supported().
//
// The kernels (contract and layouts in cce_avx512.h):
//
// 1. bf16 dot product (cce_bf16_*). E is packed once per token block into MR = 32-row
//    panels of bf16 pairs, pair-major (word q·32 + t = token t's pair q), so that two
//    vector loads give 32 tokens' pair q. C is not packed: for every NR = 12 C rows the
//    microkernel broadcasts each row's pair q (one 32-bit load from the row itself) and
//    multiplies it into both vectors, over every E panel of the block in turn (the 12 rows,
//    24 KiB at D = 1024, stay in L1/L2 meanwhile; the next 12 rows are prefetched into L2).
//    The 32 x 12 microkernel keeps 24 accumulators in zmm registers: per pair, two loads of
//    E, 12 broadcasts of C, 24 vdpbf16ps; at the end it transposes them to token rows
//    (16 x 16 transposes, four vectors zero) and stores 12 columns a row. An earlier
//    version broadcast E and transposed C into 32-column panels for every token block: the
//    same bits, but the transposes cost about 5% of the tile products at 132-row blocks
//    (Docs/PERFORMANCE.md).
//    Summation order: each output is one chain over the pairs q = 0, 1, …, pairs(d) − 1,
//    from +0: s ← s + e[2q+1]·c[2q+1], then s ← s + e[2q]·c[2q], each step one Float32
//    rounding (to nearest even) of an exact product (a bf16 x bf16 product is exact in
//    Float32). That is what vdpbf16ps does per lane (measured bit for bit on an Intel Xeon
//    with AVX512_BF16); the instruction also reads subnormal inputs (bf16 elements and
//    the incoming sum) as zero and flushes subnormal results, the intermediate one too, to
//    zero, whatever MXCSR says.
//
// 2. Float32 FMA, 512-bit (cce_fma_*). The same structure with E read in place through a
//    table of Float32 row pointers (C of any storage type converted exactly while packed)
//    and a 12 x 32 microkernel of 24 zmm FMA accumulators. Summation order: each output is one FMA chain over
//    k = 0, 1, …, d − 1 from +0: the order of the portable Swift kernel (tileProduct,
//    sequentialDot), so the two give identical bits.
//
// 3. AMX tile products (cce_amx_*), for CPUs with AMX-BF16 (Sapphire Rapids and later):
//    E packed once per token block into 16-row x 32-element tiles, C rows transposed per 32
//    columns by bf16_pack_columns (the pair panel the bf16 kernel packs its E rows into:
//    AMX's B layout, 128 bytes a row), 32 x 32 output blocks in four accumulator tiles,
//    tdpbf16ps over 32-element chunks; whole blocks load and store their partial sums straight from and to out, edge
//    blocks go through a 32 x 32 scratch block. Summation order and flushes: cce_avx512.h.
//    The tile permission (Linux arch_prctl) is asked once per process; each product call
//    configures the tiles (ldtilecfg) and releases them (tilerelease) before it returns.
//    The AMX rank update (cce_amx_rank_update: dE += dy · C_block with C stored as bf16)
//    splits each Float32 dy into bf16 hi + lo (hi + lo = dy to 2^-17) and multiplies both
//    halves by the C rows packed as pairs of consecutive rows, 256 columns at a time.
//    Why not dC too: its chain runs over the tokens, and tdpbf16ps sums each 32-element
//    chunk on its own, so the chunks (the kept rows of a token block) would fix the bits
//    and those depend on the token block size, which follows the thread count; and dC's
//    updates are mostly a few columns, where 16-row tiles would be mostly padding.
//
// 4. The forward's LSE merge (cce_avx512_merge_row): the Swift merge with its exponential
//    on 16 lanes (Swift's SIMD8 exp compiles to 128-bit operations), bit for bit.
//
// In all, a chain crosses KC chunks through the stored Float32 partial (exact), chunks
// hold whole pairs, and padding (an odd d's last pair, rows beyond m, columns beyond n) is
// zeros that reach only outputs never stored: an output's bits depend only on its two rows
// and d, not on its position in the tile, on m, n, the chunking, the panel mask or the
// thread. cce_bf16_dots gives the bf16 kernel's bits for single dot products.

#include "cce_avx512.h"

#if defined(__x86_64__) || defined(__i386__)

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define CCE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define CCE_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define CCE_INLINE static inline __attribute__((always_inline)) CCE_AVX512
#define CCE_INLINE_BF16 static inline __attribute__((always_inline)) CCE_AVX512_BF16

#if CCE_FMA_NR != 32
#error "the fma microkernel is written for NR = 32"
#endif
#if CCE_BF16_MR != 32 || CCE_BF16_NR > 16
#error "the bf16 microkernel is written for 32-row E panels and at most 16 C rows"
#endif

// MARK: - CPU features

static unsigned long long read_xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

int cce_avx512_supported(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!(c & (1u << 27))) return 0;                 // OSXSAVE: xgetbv is usable
    if ((read_xcr0() & 0xE6) != 0xE6) return 0;      // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM state
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned int f = 1u << 16, bw = 1u << 30, vl = 1u << 31;
    return (b & (f | bw | vl)) == (f | bw | vl);
}

int cce_bf16_supported(void) {
    if (!cce_avx512_supported()) return 0;
    unsigned int maxSub, a, b, c, d;
    __cpuid_count(7, 0, maxSub, b, c, d);
    if (maxSub < 1) return 0;
    __cpuid_count(7, 1, a, b, c, d);
    return (a >> 5) & 1;                             // AVX512_BF16
}

int cce_cpu_is_amd(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    return b == 0x68747541 && d == 0x69746E65 && c == 0x444D4163;  // "Auth" "enti" "cAMD"
}

size_t cce_bf16_row_panel_words(long m, long d) {
    return (size_t)((m + CCE_BF16_MR - 1) / CCE_BF16_MR * CCE_BF16_MR * ((d + 1) / 2));
}
size_t cce_fma_column_panel_floats(void) { return (size_t)CCE_FMA_NR * CCE_FMA_KC; }

// MARK: - Loads and the 16 x 16 transpose

// Pairs q0 ..< q0 + 16 of a bf16 row of d elements as 16 words; zero past the row's end
// (the masked load touches no byte beyond element d − 1, and an odd d's last pair gets a
// zero high half). A NULL row gives zeros.
CCE_INLINE __m512i load_pairs(const uint16_t *row, long q0, long d) {
    if (!row) return _mm512_setzero_si512();
    long rem = d - 2 * q0;
    if (rem >= 32) return _mm512_loadu_si512((const void *)(row + 2 * q0));
    __mmask32 k = rem <= 0 ? 0 : (__mmask32)((1ull << rem) - 1);
    return _mm512_maskz_loadu_epi16(k, row + 2 * q0);
}

// Elements k0 ..< k0 + 16 of a row of d elements stored as `type`, as 16 Float32 (exact
// conversions), zero past the row's end (never read). A NULL row gives zeros.
CCE_INLINE __m512i load_floats(const void *row, int type, long k0, long d) {
    if (!row) return _mm512_setzero_si512();
    long rem = d - k0;
    __mmask16 k = rem >= 16 ? 0xFFFF : (rem <= 0 ? 0 : (__mmask16)((1u << rem) - 1));
    if (type == CCE_STORAGE_F32) return _mm512_maskz_loadu_epi32(k, (const float *)row + k0);
    __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)row + k0);
    if (type == CCE_STORAGE_BF16) return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    return _mm512_castps_si512(_mm512_cvtph_ps(h));
}

// In place: r[i] lane j ← r[j] lane i, for 16 vectors of 16 words.
CCE_INLINE void transpose16(__m512i r[16]) {
    __m512i t[16], u[4];
    for (int g = 0; g < 4; g++) {
        __m512i a = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
        __m512i b = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
        __m512i c = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
        __m512i d = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
        // t[4g + c], 128-bit lane L: rows 4g ..< 4g + 4 of column 4L + c.
        t[4 * g + 0] = _mm512_unpacklo_epi64(a, c);
        t[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
        t[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
        t[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
    }
    for (int c = 0; c < 4; c++) {
        // Column 4L + c: lane L of t[c], t[4 + c], t[8 + c], t[12 + c].
        u[0] = _mm512_shuffle_i32x4(t[c], t[4 + c], 0x44);
        u[1] = _mm512_shuffle_i32x4(t[c], t[4 + c], 0xEE);
        u[2] = _mm512_shuffle_i32x4(t[8 + c], t[12 + c], 0x44);
        u[3] = _mm512_shuffle_i32x4(t[8 + c], t[12 + c], 0xEE);
        r[0 + c] = _mm512_shuffle_i32x4(u[0], u[2], 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(u[0], u[2], 0xDD);
        r[8 + c] = _mm512_shuffle_i32x4(u[1], u[3], 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(u[1], u[3], 0xDD);
    }
}

// Column masks of a register block's two vectors for nc ≤ 32 valid columns.
static inline void column_masks(long nc, __mmask16 *k0, __mmask16 *k1) {
    *k0 = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1);
    *k1 = nc <= 16 ? 0 : (nc >= 32 ? 0xFFFF : (__mmask16)((1u << (nc - 16)) - 1));
}

// The microkernel: c[r·ldc + j] (+)= Σ_{q < kq} a[q·MR + r] ⊙ b[q·32 + j] for r < mc and
// the columns the masks allow, accumulating onto c when `acc`, else from +0. STEP(s, x, b)
// is one step of the chain (vdpbf16ps or an FMA), BCAST(v) broadcasts one element of a;
// WORD is the element type of a and b.
#define DEFINE_KERNEL(NAME, ATTR, MR, WORD, BCAST, STEP)                                                 \
    static inline __attribute__((always_inline)) ATTR void NAME(                                    \
        long kq, const WORD *a, const WORD *b, float *c, long ldc, int acc, long mc, __mmask16 k0,   \
        __mmask16 k1) {                                                                             \
        __m512 s0[MR], s1[MR];                                                                      \
        _Pragma("clang loop unroll(full)") for (int r = 0; r < MR; r++) {                           \
            if (acc && r < mc) {                                                                    \
                s0[r] = _mm512_maskz_loadu_ps(k0, c + r * ldc);                                     \
                s1[r] = _mm512_maskz_loadu_ps(k1, c + r * ldc + 16);                                \
            } else {                                                                                \
                s0[r] = _mm512_setzero_ps();                                                        \
                s1[r] = _mm512_setzero_ps();                                                        \
            }                                                                                       \
        }                                                                                           \
        for (long q = 0; q < kq; q++) {                                                             \
            __m512i b0 = _mm512_loadu_si512((const void *)(b + 32 * q));                            \
            __m512i b1 = _mm512_loadu_si512((const void *)(b + 32 * q + 16));                       \
            _Pragma("clang loop unroll(full)") for (int r = 0; r < MR; r++) {                       \
                __m512i x = BCAST(a[q * MR + r]);                                                   \
                s0[r] = STEP(s0[r], x, b0);                                                         \
                s1[r] = STEP(s1[r], x, b1);                                                         \
            }                                                                                       \
        }                                                                                           \
        _Pragma("clang loop unroll(full)") for (int r = 0; r < MR; r++) {                           \
            if (r < mc) {                                                                           \
                _mm512_mask_storeu_ps(c + r * ldc, k0, s0[r]);                                      \
                _mm512_mask_storeu_ps(c + r * ldc + 16, k1, s1[r]);                                 \
            }                                                                                       \
        }                                                                                           \
    }

// Empty sums: the rows a mask does not skip become zeros.
static void zero_rows(long m, long n, long mr, float *out, long ldo, const bool *panel_mask) {
    for (long i = 0; i < m; i++) {
        if (panel_mask && !panel_mask[i / mr]) continue;
        memset(out + i * ldo, 0, (size_t)n * sizeof(float));
    }
}

// MARK: - The bf16 dot-product kernel

#define DP_STEP(s, x, b) _mm512_dpbf16_ps((s), (__m512bh)(x), (__m512bh)(b))

// A C row's pair q as one word, read in place (C rows are 2-byte aligned).
typedef uint32_t cce_word_unaligned __attribute__((aligned(1), may_alias));

// Pairs q0 ..< q0 + kq of rows[0 ..< n] (n ≤ 32) into panel[q · 32 + j]; rows ≥ n zero.
// The same pairs of next[0 ..< nextN] (the following panel's rows) are prefetched meanwhile:
// the rows lie scattered in the sorted vocabulary order, 32 streams of one cache line per
// step, too many for the hardware prefetcher, and each would otherwise be a miss here.
CCE_INLINE void bf16_pack_columns(const uint16_t *const *rows, long n, long d, long q0, long kq, uint32_t *panel,
                                  const uint16_t *const *next, long nextN) {
    for (long qb = 0; qb < kq; qb += 16) {
        long qn = kq - qb < 16 ? kq - qb : 16;
        if (2 * (q0 + qb) < d)
            for (long j = 0; j < nextN; j++) _mm_prefetch((const char *)(next[j] + 2 * (q0 + qb)), _MM_HINT_T0);
        for (int half = 0; half < 2; half++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                long j = 16 * half + i;
                r[i] = load_pairs(j < n ? rows[j] : NULL, q0 + qb, d);
            }
            transpose16(r);
            for (long q = 0; q < qn; q++) _mm512_storeu_si512(panel + (qb + q) * 32 + 16 * half, r[q]);
        }
    }
}

// Lines t0 ..< t1 of rows[0 ..< n], taken column by column (line t: row t mod n, its
// (t / n)-th line), prefetched into L2.
CCE_INLINE void prefetch_lines(const uint16_t *const *rows, long n, long t0, long t1) {
    if (t0 >= t1) return;
    long row = t0 % n, offset = 64 * (t0 / n);
    for (long t = t0; t < t1; t++) {
        _mm_prefetch((const char *)rows[row] + offset, _MM_HINT_T1);
        if (++row == n) { row = 0; offset += 64; }
    }
}

CCE_AVX512_BF16
void cce_bf16_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst) {
    const long mr = CCE_BF16_MR, dp = (d + 1) / 2;
    for (long p = 0; p * mr < m; p++) {
        long rows_here = m - p * mr < mr ? m - p * mr : mr;
        bf16_pack_columns(rows + p * mr, rows_here, d, 0, dp, dst + p * mr * dp, NULL, 0);
    }
}

// The microkernel: out[t·ldo + v] = Σ_q e[q·32 + t] ⊙ c_v's pair q for t < mc, v < nc, from +0.
// The 12 C rows are broadcast a pair at a time from their own memory (the broadcast folds into
// vdpbf16ps's memory operand); the E panel's 32 tokens are two vectors; 24 accumulators, one
// per C row and half of the panel, are transposed to token rows at the end (16 x 16 with four
// zero vectors). An odd d's last pair reads c_v's last element alone (high half zero).
// (Not inlined, and its loop counts up to 0 over rows offset to their ends, so that the 24
// accumulators, two E vectors and a broadcast stay in the 32 vector registers and the 12 row
// pointers, the E pointer and the counter in general registers: no spills in the loop.)
static __attribute__((noinline)) CCE_AVX512_BF16 void bf16_kernel(const uint32_t *e, long d,
                                                                  const uint16_t *const c[CCE_BF16_NR], float *out,
                                                                  long ldo, long mc, __mmask16 columns) {
    __m512 s0[CCE_BF16_NR], s1[CCE_BF16_NR];
    const cce_word_unaligned *w[CCE_BF16_NR];
    const long whole = d / 2;
    _Pragma("clang loop unroll(full)") for (int v = 0; v < CCE_BF16_NR; v++) {
        s0[v] = _mm512_setzero_ps();
        s1[v] = _mm512_setzero_ps();
        w[v] = (const cce_word_unaligned *)c[v] + whole;
    }
    const uint32_t *ep = e;
    for (long q = -whole; q != 0; q++, ep += 32) {
        __m512i e0 = _mm512_loadu_si512((const void *)ep);
        __m512i e1 = _mm512_loadu_si512((const void *)(ep + 16));
        _Pragma("clang loop unroll(full)") for (int v = 0; v < CCE_BF16_NR; v++) {
            __m512i x = _mm512_set1_epi32((int)w[v][q]);
            s0[v] = DP_STEP(s0[v], e0, x);
            s1[v] = DP_STEP(s1[v], e1, x);
        }
    }
    if (d & 1) {
        __m512i e0 = _mm512_loadu_si512((const void *)ep);
        __m512i e1 = _mm512_loadu_si512((const void *)(ep + 16));
        _Pragma("clang loop unroll(full)") for (int v = 0; v < CCE_BF16_NR; v++) {
            __m512i x = _mm512_set1_epi32((int)c[v][d - 1]);
            s0[v] = DP_STEP(s0[v], e0, x);
            s1[v] = DP_STEP(s1[v], e1, x);
        }
    }
    // Through memory, so that the transpose's registers do not overlap the accumulators'.
    __attribute__((aligned(64))) float sums[2][CCE_BF16_NR][16];
    _Pragma("clang loop unroll(full)") for (int v = 0; v < CCE_BF16_NR; v++) {
        _mm512_store_ps(sums[0][v], s0[v]);
        _mm512_store_ps(sums[1][v], s1[v]);
    }
    for (int h = 0; h < 2; h++) {
        __m512i r[16];
        _Pragma("clang loop unroll(full)") for (int v = 0; v < 16; v++)
            r[v] = v < CCE_BF16_NR ? _mm512_load_si512((const void *)sums[h][v]) : _mm512_setzero_si512();
        transpose16(r);
        for (int t = 0; t < 16 && 16 * h + t < mc; t++)
            _mm512_mask_storeu_epi32(out + (16 * h + t) * ldo, columns, r[t]);
    }
}

CCE_AVX512_BF16
void cce_bf16_tile_product(const uint32_t *e_panels, long m, const uint16_t *const *c_rows, long n, long d,
                           float *out, long ldo, const bool *panel_mask, long lookahead) {
    const long mr = CCE_BF16_MR, nr = CCE_BF16_NR, dp = (d + 1) / 2, panels = (m + mr - 1) / mr;
    if (dp == 0) { zero_rows(m, n, mr, out, ldo, panel_mask); return; }
    const long lines_per_row = (4 * dp + 63) / 64;
    for (long j0 = 0; j0 < n; j0 += nr) {
        long nc = n - j0 < nr ? n - j0 : nr;
        // Past the last C row, its pointer again: read, never stored.
        const uint16_t *c[CCE_BF16_NR];
        for (long v = 0; v < nr; v++) c[v] = c_rows[j0 + (v < nc ? v : nc - 1)];
        __mmask16 columns = (__mmask16)((1u << nc) - 1);
        // The next C rows (the following ones, else the next call's first `lookahead`) lie
        // scattered in the sorted vocabulary order: their lines are prefetched into L2 a
        // share per E panel while these are multiplied.
        long nextN = n - j0 - nr < nr ? n - j0 - nr : nr;
        const uint16_t *const *next = c_rows + j0 + nr;
        if (nextN <= 0) { next = c_rows + n; nextN = lookahead < nr ? lookahead : nr; }
        long lines = nextN > 0 ? nextN * lines_per_row : 0;
        for (long p = 0; p < panels; p++) {
            prefetch_lines(next, nextN, lines * p / panels, lines * (p + 1) / panels);
            if (panel_mask && !panel_mask[p]) continue;
            long mc = m - p * mr < mr ? m - p * mr : mr;
            bf16_kernel(e_panels + p * mr * dp, d, c, out + p * mr * ldo + j0, ldo, mc, columns);
        }
    }
}

CCE_AVX512_BF16
void cce_bf16_dots(const uint16_t *const *a, const uint16_t *const *b, long count, long d, float *out) {
    const long dp = (d + 1) / 2;
    for (long i0 = 0; i0 < count; i0 += 16) {
        long cn = count - i0 < 16 ? count - i0 : 16;
        __m512 s = _mm512_setzero_ps();
        for (long q0 = 0; q0 < dp; q0 += 16) {
            __m512i ra[16], rb[16];
            for (int i = 0; i < 16; i++) {
                ra[i] = load_pairs(i < cn ? a[i0 + i] : NULL, q0, d);
                rb[i] = load_pairs(i < cn ? b[i0 + i] : NULL, q0, d);
            }
            transpose16(ra);
            transpose16(rb);
            long qn = dp - q0 < 16 ? dp - q0 : 16;
            for (long q = 0; q < qn; q++) s = DP_STEP(s, ra[q], rb[q]);
        }
        _mm512_mask_storeu_ps(out + i0, (__mmask16)((1u << cn) - 1), s);
    }
}

// MARK: - The AMX tile kernel

// Every function that touches a tile carries this attribute (the file compiles under any
// -march; the kernel runs only after cce_amx_supported()).
#define CCE_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
#define CCE_INLINE_AMX static inline __attribute__((always_inline)) CCE_AMX
// GCC spells the tile intrinsics as asm statements without memory operands: this barrier
// keeps ordinary loads and stores of the C panel and the edge block on their side of the
// tile loads and stores (free under clang, whose intrinsics say what they touch).
#define AMX_BARRIER() __asm__ volatile("" ::: "memory")

#if CCE_AMX_MR != 32 || CCE_AMX_NR != 32 || CCE_AMX_KCP % 16 != 0
#error "the AMX kernel is written for 32 x 32 blocks and KCP a multiple of 16"
#endif

static int amx_probe(void) {
    if (!cce_avx512_supported()) return 0;
    unsigned int maxLeaf = __get_cpuid_max(0, NULL), a, b, c, d;
    if (maxLeaf < 0x1D) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!((d >> 22) & 1) || !((d >> 24) & 1)) return 0;        // AMX-BF16, AMX-TILE
    if ((read_xcr0() & (3ull << 17)) != (3ull << 17)) return 0;  // XTILECFG, XTILEDATA state
    __cpuid_count(0x1D, 0, a, b, c, d);
    if (a < 1) return 0;                                          // palette 1 exists
    __cpuid_count(0x1D, 1, a, b, c, d);
    // Palette 1: bytes per tile, bytes per row, tile names, rows.
    if ((a >> 16) < 1024 || (b & 0xFFFF) < 64 || (b >> 16) < 8 || (c & 0xFFFF) < 16) return 0;
#if defined(__linux__)
    // Linux hands out the tile data state only on request (ARCH_REQ_XCOMP_PERM = 0x1023,
    // XFEATURE_XTILEDATA = 18), once per process for all its threads.
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0;
    unsigned long long perm = 0;                                  // ARCH_GET_XCOMP_PERM = 0x1022
    if (syscall(SYS_arch_prctl, 0x1022, &perm) != 0 || !((perm >> 18) & 1)) return 0;
    return 1;
#else
    return 0;
#endif
}

int cce_amx_supported(void) {
    static int state = -1;  // -1 unknown; asking twice at once is harmless
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (s < 0) {
        s = amx_probe();
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s;
}

size_t cce_amx_row_block_words(long m, long d) {
    return (size_t)((m + 31) / 32 * 32 * ((d + 31) / 32 * 16));
}
size_t cce_amx_scratch_words(void) { return (size_t)CCE_AMX_NR * CCE_AMX_KCP + 32 * 32; }

CCE_AVX512
void cce_amx_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst) {
    const long chunks = (d + 31) / 32, groups = (m + 31) / 32 * 2;
    for (long g = 0; g < groups; g++) {
        const uint16_t *row[16];
        for (int r = 0; r < 16; r++) row[r] = 16 * g + r < m ? rows[16 * g + r] : NULL;
        uint32_t *w = dst + g * chunks * 256;
        for (long c = 0; c < chunks; c++)  // one tile at a time: 1 KiB written in order
            for (int r = 0; r < 16; r++) _mm512_storeu_si512(w + c * 256 + r * 16, load_pairs(row[r], 16 * c, d));
    }
}

// The 32 x 32 tile configuration: tiles 0–3 accumulators (16 rows x 16 Float32), 4–5 the
// two A tiles (16 E rows x 16 pairs), 6–7 the two B tiles (16 pairs x 16 columns), all 16
// rows of 64 bytes.
typedef struct {
    uint8_t palette;
    uint8_t startRow;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) amx_config;

// Configures all eight tiles as 16 rows of 64 bytes (palette 1), the one shape every AMX
// kernel here uses; each kernel releases the tiles (tilerelease) before it returns.
CCE_INLINE_AMX void amx_configure(void) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    _tile_loadconfig(&cfg);
}

// One block: c (32 x 32 Float32, row stride ldc floats; only the halves in use) (+)= the
// rows' products over kt 16-pair chunks. a: the E tile of rows 16g.. at the first chunk
// (the next group's tile aStride words on); b: the C panel at the first chunk (word
// q·32 + j). RH, CH: 16-row and 16-column halves computed (1 or 2).
#define AMX_BLOCK(RH, CH)                                                                         \
    do {                                                                                          \
        const long ls = ldc * 4;                                                                  \
        if (acc) {                                                                                \
            _tile_loadd(0, c, ls);                                                                \
            if (CH > 1) _tile_loadd(1, c + 16, ls);                                               \
            if (RH > 1) _tile_loadd(2, c + 16 * ldc, ls);                                         \
            if (RH > 1 && CH > 1) _tile_loadd(3, c + 16 * ldc + 16, ls);                          \
        } else {                                                                                  \
            _tile_zero(0);                                                                        \
            if (CH > 1) _tile_zero(1);                                                            \
            if (RH > 1) _tile_zero(2);                                                            \
            if (RH > 1 && CH > 1) _tile_zero(3);                                                  \
        }                                                                                         \
        for (long t = 0; t < kt; t++) {                                                           \
            _tile_loadd(4, a + t * 256, 64);                                                      \
            if (RH > 1) _tile_loadd(5, a + aStride + t * 256, 64);                                \
            _tile_loadd(6, b + t * 512, 128);                                                     \
            if (CH > 1) _tile_loadd(7, b + t * 512 + 16, 128);                                    \
            _tile_dpbf16ps(0, 4, 6);                                                              \
            if (CH > 1) _tile_dpbf16ps(1, 4, 7);                                                  \
            if (RH > 1) _tile_dpbf16ps(2, 5, 6);                                                  \
            if (RH > 1 && CH > 1) _tile_dpbf16ps(3, 5, 7);                                        \
        }                                                                                         \
        _tile_stored(0, c, ls);                                                                   \
        if (CH > 1) _tile_stored(1, c + 16, ls);                                                  \
        if (RH > 1) _tile_stored(2, c + 16 * ldc, ls);                                            \
        if (RH > 1 && CH > 1) _tile_stored(3, c + 16 * ldc + 16, ls);                             \
    } while (0)

// out rows 0 ..< mc, columns 0 ..< nc (+)= the block's products: whole blocks straight
// from and to out, edge blocks through the 32 x 32 scratch block `edge` (only the valid
// part copied in and out).
CCE_INLINE_AMX void amx_block(const uint32_t *a, long aStride, const uint32_t *b, long kt, float *out, long ldo,
                              long mc, long nc, int acc, float *edge) {
    const int whole = mc == 32 && nc == 32;
    float *c = whole ? out : edge;
    const long ldc = whole ? ldo : 32;
    if (!whole && acc)
        for (long i = 0; i < mc; i++) memcpy(edge + i * 32, out + i * ldo, (size_t)nc * sizeof(float));
    AMX_BARRIER();
    if (mc > 16) {
        if (nc > 16) AMX_BLOCK(2, 2); else AMX_BLOCK(2, 1);
    } else {
        if (nc > 16) AMX_BLOCK(1, 2); else AMX_BLOCK(1, 1);
    }
    AMX_BARRIER();
    if (!whole)
        for (long i = 0; i < mc; i++) memcpy(out + i * ldo, edge + i * 32, (size_t)nc * sizeof(float));
}

CCE_AMX
void cce_amx_tile_product(const uint32_t *e_blocks, long m, const uint16_t *const *c_rows, long n, long d,
                          float *out, long ldo, uint32_t *scratch, const bool *panel_mask, long lookahead) {
    const long mr = CCE_AMX_MR, nr = CCE_AMX_NR, chunks = (d + 31) / 32, pairs = chunks * 16;
    if (d <= 0) { zero_rows(m, n, mr, out, ldo, panel_mask); return; }
    amx_configure();
    float *edge = (float *)(scratch + (long)nr * CCE_AMX_KCP);
    for (long q0 = 0; q0 < pairs; q0 += CCE_AMX_KCP) {
        long kq = pairs - q0 < CCE_AMX_KCP ? pairs - q0 : CCE_AMX_KCP;  // a multiple of 16
        for (long j0 = 0; j0 < n; j0 += nr) {
            long nc = n - j0 < nr ? n - j0 : nr;
            AMX_BARRIER();
            long nextN = n - j0 - nr < nr ? n - j0 - nr : nr;
            if (nextN <= 0) nextN = lookahead < nr ? lookahead : nr;  // the last panel: the next call's first
            bf16_pack_columns(c_rows + j0, nc, d, q0, kq, scratch, c_rows + j0 + nc, nextN);
            AMX_BARRIER();
            for (long p = 0; p * mr < m; p++) {
                if (panel_mask && !panel_mask[p]) continue;
                long mc = m - p * mr < mr ? m - p * mr : mr;
                const uint32_t *a = e_blocks + (2 * p * chunks + q0 / 16) * 256;
                amx_block(a, chunks * 256, scratch, kq / 16, out + p * mr * ldo + j0, ldo, mc, nc, q0 > 0, edge);
            }
        }
    }
    _tile_release();
}

// MARK: - The AMX rank update (the backward's dE product)

// Float32 x as hi + lo, both bf16 rounded to nearest even: hi = bf16(x), lo = bf16(x − hi)
// (x − hi is exact), so hi + lo = x to within 2^-17·|x|. Returns the 16 words' bf16 halves
// in order (16 x 16 bits) for hi, and writes lo's.
CCE_INLINE __m256i bf16_round(__m512 x) {
    __m512i bits = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}
CCE_INLINE __m256i bf16_split(__m512 x, __m256i *lo) {
    __m256i hi = bf16_round(x);
    __m512 h = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
    *lo = bf16_round(_mm512_sub_ps(x, h));
    return hi;
}

size_t cce_amx_rank_scratch_words(void) {
    return (size_t)16 * CCE_AMX_RANK_KMAX + (size_t)CCE_AMX_RANK_KMAX / 2 * CCE_AMX_RANK_JB + 16 * 64;
}

// One 16-row tile of A (rows as packed: word (t·2 + h)·256 for chunk t, half h) against the
// B tiles of up to 64 columns (four column tiles: word (t·tiles + j)·256 for chunk t, column
// tile j, `tiles` per chunk), onto the 16 x 64 Float32 block c (stride 64): per chunk, the hi
// products into every accumulator, then the lo products (so an accumulator's two steps are
// three instructions apart). CT: column tiles computed (1 to 4).
#define AMX_RANK_STRIP(CT)                                                                        \
    do {                                                                                          \
        if (blocked) {                                                                            \
            _tile_zero(0);                                                                        \
            if (CT > 1) _tile_zero(1);                                                            \
            if (CT > 2) _tile_zero(2);                                                            \
            if (CT > 3) _tile_zero(3);                                                            \
        } else {                                                                                  \
            _tile_loadd(0, c, 256);                                                               \
            if (CT > 1) _tile_loadd(1, c + 16, 256);                                              \
            if (CT > 2) _tile_loadd(2, c + 32, 256);                                              \
            if (CT > 3) _tile_loadd(3, c + 48, 256);                                              \
        }                                                                                         \
        for (long t = 0; t < kt; t++) {                                                           \
            const uint32_t *bt = b0 + t * tiles * 256;                                            \
            _tile_loadd(4, at + (t * 2) * 256, 64);                                               \
            _tile_loadd(5, at + (t * 2 + 1) * 256, 64);                                           \
            _tile_loadd(6, bt, 64);                   _tile_dpbf16ps(0, 4, 6);                    \
            if (CT > 1) { _tile_loadd(7, bt + 256, 64); _tile_dpbf16ps(1, 4, 7); }                \
            if (CT > 2) { _tile_loadd(6, bt + 512, 64); _tile_dpbf16ps(2, 4, 6); }                \
            if (CT > 3) { _tile_loadd(7, bt + 768, 64); _tile_dpbf16ps(3, 4, 7); }                \
            _tile_loadd(6, bt, 64);                   _tile_dpbf16ps(0, 5, 6);                    \
            if (CT > 1) { _tile_loadd(7, bt + 256, 64); _tile_dpbf16ps(1, 5, 7); }                \
            if (CT > 2) { _tile_loadd(6, bt + 512, 64); _tile_dpbf16ps(2, 5, 6); }                \
            if (CT > 3) { _tile_loadd(7, bt + 768, 64); _tile_dpbf16ps(3, 5, 7); }                \
        }                                                                                         \
        _tile_stored(0, c, 256);                                                                  \
        if (CT > 1) _tile_stored(1, c + 16, 256);                                                 \
        if (CT > 2) _tile_stored(2, c + 32, 256);                                                 \
        if (CT > 3) _tile_stored(3, c + 48, 256);                                                 \
    } while (0)

CCE_AMX
void cce_amx_rank_update(float *const *out, long m, const float *a, long ars, long aks, const uint16_t *const *b,
                         long k, long width, int blocked, uint32_t *scratch) {
    if (m <= 0 || width <= 0 || k > CCE_AMX_RANK_KMAX) return;
    const long chunks = (k + 31) / 32, kt = chunks;
    uint32_t *ap = scratch;                                        // A: one 16-row tile, hi and lo per chunk
    uint32_t *bp = scratch + 16 * CCE_AMX_RANK_KMAX;               // B: KMAX x JB columns in pairs
    float *c = (float *)(bp + CCE_AMX_RANK_KMAX / 2 * CCE_AMX_RANK_JB);  // 16 x 64 Float32
    // 16-bit lane n of the interleave of x (lanes 0–31) and y (32–63): x[16j + n/2] for even
    // n, y[16j + n/2] for odd n: column tile j's 16 pairs of the two rows.
    __m512i pick[2];
    for (int j = 0; j < 2; j++) {
        uint16_t idx[32];
        for (int n = 0; n < 32; n++) idx[n] = (uint16_t)((n & 1 ? 32 : 0) + 16 * j + n / 2);
        pick[j] = _mm512_loadu_si512(idx);
    }
    amx_configure();
    for (long j0 = 0; j0 < width; j0 += CCE_AMX_RANK_JB) {
        const long jn = width - j0 < CCE_AMX_RANK_JB ? width - j0 : CCE_AMX_RANK_JB;
        const long tiles = (jn + 15) / 16;
        // B: rows q, q + 1 of b interleaved into pairs, columns j0 ..< j0 + jn (each row read
        // as one contiguous stretch); zero past k and jn.
        for (long p = 0; p < chunks * 16; p++) {
            const long q = 2 * p, t = p / 16, row = p % 16;
            for (long jj = 0; jj < jn; jj += 32) {
                const long left = jn - jj;
                const __mmask32 cm = left >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << left) - 1);
                __m512i x = q < k ? _mm512_maskz_loadu_epi16(cm, b[q] + j0 + jj) : _mm512_setzero_si512();
                __m512i y = q + 1 < k ? _mm512_maskz_loadu_epi16(cm, b[q + 1] + j0 + jj) : _mm512_setzero_si512();
                uint32_t *w = bp + (t * tiles + jj / 16) * 256 + row * 16;
                _mm512_storeu_si512(w, _mm512_permutex2var_epi16(x, pick[0], y));
                if (jj + 16 < jn) _mm512_storeu_si512(w + 256, _mm512_permutex2var_epi16(x, pick[1], y));
            }
        }
        for (long r0 = 0; r0 < m; r0 += 16) {
            const long mc = m - r0 < 16 ? m - r0 : 16;
            // A rows r0 ..< r0 + mc as bf16 hi and lo, 32 elements of q per tile row; rows ≥ mc
            // and elements ≥ k zero. (Packed again for every column block: A is small.)
            for (long t = 0; t < chunks; t++)
                for (long r = 0; r < 16; r++) {
                    __m256i h0, h1, l0, l1;
                    if (r < mc) {
                        const float *x = a + (r0 + r) * ars + 32 * t * aks;
                        const long left = k - 32 * t;
                        __m512 x0, x1;
                        if (aks == 1) {
                            const __mmask32 km = left >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << left) - 1);
                            x0 = _mm512_maskz_loadu_ps((__mmask16)km, x);
                            x1 = _mm512_maskz_loadu_ps((__mmask16)(km >> 16), x + 16);
                        } else {
                            float v[32];
                            for (int q = 0; q < 32; q++) v[q] = q < left ? x[q * aks] : 0.0f;
                            x0 = _mm512_loadu_ps(v);
                            x1 = _mm512_loadu_ps(v + 16);
                        }
                        h0 = bf16_split(x0, &l0);
                        h1 = bf16_split(x1, &l1);
                    } else {
                        h0 = h1 = l0 = l1 = _mm256_setzero_si256();
                    }
                    uint32_t *hi = ap + (t * 2) * 256 + r * 16, *lo = ap + (t * 2 + 1) * 256 + r * 16;
                    _mm256_storeu_si256((__m256i *)hi, h0); _mm256_storeu_si256((__m256i *)(hi + 8), h1);
                    _mm256_storeu_si256((__m256i *)lo, l0); _mm256_storeu_si256((__m256i *)(lo + 8), l1);
                }
            const uint32_t *at = ap;
            for (long g = 0; g < tiles; g += 4) {
                const long ct = tiles - g < 4 ? tiles - g : 4, jc = j0 + 16 * g;
                const long nc = width - jc < 64 ? width - jc : 64;
                const __mmask64 all = nc >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << nc) - 1);
                const uint32_t *b0 = bp + g * 256;
                // The starting sums: +0 (blocked: the sum is added to out afterwards; the
                // accumulators start zeroed) or out's, through the block c.
                if (!blocked)
                    for (long r = 0; r < 16; r++)
                        for (int v = 0; v < 4; v++) {
                            __mmask16 kv = (__mmask16)(all >> (16 * v));
                            _mm512_storeu_ps(c + r * 64 + 16 * v,
                                             r < mc ? _mm512_maskz_loadu_ps(kv, out[r0 + r] + jc + 16 * v) : _mm512_setzero_ps());
                        }
                AMX_BARRIER();
                switch (ct) {
                case 4: AMX_RANK_STRIP(4); break;
                case 3: AMX_RANK_STRIP(3); break;
                case 2: AMX_RANK_STRIP(2); break;
                default: AMX_RANK_STRIP(1); break;
                }
                AMX_BARRIER();
                for (long r = 0; r < mc; r++)
                    for (int v = 0; v < 4 && 16 * v < nc; v++) {
                        __mmask16 kv = (__mmask16)(all >> (16 * v));
                        __m512 sum = _mm512_loadu_ps(c + r * 64 + 16 * v);
                        if (blocked) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(kv, out[r0 + r] + jc + 16 * v));
                        _mm512_mask_storeu_ps(out[r0 + r] + jc + 16 * v, kv, sum);
                    }
            }
        }
    }
    _tile_release();
}

// MARK: - The Float32 FMA kernel

// Elements k0 ..< k0 + kc of rows[0 ..< n] (n ≤ 32) into panel[k · 32 + j]; rows ≥ n zero.
CCE_INLINE void fma_pack_columns(const void *const *rows, int type, long n, long d, long k0, long kc, float *panel) {
    for (long kb = 0; kb < kc; kb += 16) {
        long kn = kc - kb < 16 ? kc - kb : 16;
        for (int half = 0; half < 2; half++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                long j = 16 * half + i;
                r[i] = load_floats(j < n ? rows[j] : NULL, type, k0 + kb, d);
            }
            transpose16(r);
            for (long k = 0; k < kn; k++) _mm512_storeu_si512(panel + (kb + k) * 32 + 16 * half, r[k]);
        }
    }
}

// The Float32 microkernel, reading E through a table of MR row pointers (the engine's token
// block, converted once to Float32 and never packed: measured as fast as packed panels):
// c[r·ldc + j] (+)= Σ_{q < kc} a_r[q] · b[q·32 + j], the 12 broadcasts from 12 rows.
CCE_INLINE void fma_kernel_rows(long kc, const float *const *a, const float *b, float *c, long ldc, int acc,
                                long mc, __mmask16 k0, __mmask16 k1) {
    __m512 s0[CCE_FMA_MR], s1[CCE_FMA_MR];
    _Pragma("clang loop unroll(full)") for (int r = 0; r < CCE_FMA_MR; r++) {
        if (acc && r < mc) {
            s0[r] = _mm512_maskz_loadu_ps(k0, c + r * ldc);
            s1[r] = _mm512_maskz_loadu_ps(k1, c + r * ldc + 16);
        } else {
            s0[r] = _mm512_setzero_ps();
            s1[r] = _mm512_setzero_ps();
        }
    }
    for (long q = 0; q < kc; q++) {
        __m512 b0 = _mm512_loadu_ps(b + 32 * q), b1 = _mm512_loadu_ps(b + 32 * q + 16);
        _Pragma("clang loop unroll(full)") for (int r = 0; r < CCE_FMA_MR; r++) {
            __m512 x = _mm512_set1_ps(a[r][q]);
            s0[r] = _mm512_fmadd_ps(x, b0, s0[r]);
            s1[r] = _mm512_fmadd_ps(x, b1, s1[r]);
        }
    }
    _Pragma("clang loop unroll(full)") for (int r = 0; r < CCE_FMA_MR; r++) {
        if (r < mc) {
            _mm512_mask_storeu_ps(c + r * ldc, k0, s0[r]);
            _mm512_mask_storeu_ps(c + r * ldc + 16, k1, s1[r]);
        }
    }
}

CCE_AVX512
void cce_fma_tile_product_rows(const float *const *e_rows, long m, const void *const *c_rows, int type, long n,
                               long d, float *out, long ldo, float *panel, const bool *panel_mask) {
    const long mr = CCE_FMA_MR, nr = CCE_FMA_NR;
    if (d == 0) { zero_rows(m, n, mr, out, ldo, panel_mask); return; }
    for (long k0 = 0; k0 < d; k0 += CCE_FMA_KC) {
        long kc = d - k0 < CCE_FMA_KC ? d - k0 : CCE_FMA_KC;
        for (long j0 = 0; j0 < n; j0 += nr) {
            long nc = n - j0 < nr ? n - j0 : nr;
            __mmask16 k0m, k1m;
            column_masks(nc, &k0m, &k1m);
            fma_pack_columns(c_rows + j0, type, nc, d, k0, kc, panel);
            for (long p = 0; p * mr < m; p++) {
                if (panel_mask && !panel_mask[p]) continue;
                long mc = m - p * mr < mr ? m - p * mr : mr;
                // Rows beyond m repeat the panel's first row: computed, never stored.
                const float *a[CCE_FMA_MR];
                for (long r = 0; r < mr; r++) a[r] = e_rows[p * mr + (r < mc ? r : 0)] + k0;
                fma_kernel_rows(kc, a, panel, out + p * mr * ldo + j0, ldo, k0 > 0, mc, k0m, k1m);
            }
        }
    }
}

// MARK: - The Float32 rank update (the backward's gradient products)

// out_r[j] (+)= Σ_{q < k} A(r, q) · b_q[j] for r < mc ≤ 12 and the columns j of one 32-wide
// chunk the masks allow, A(r, q) = a_r[q · aks] (a_r = a + r · ars). Each element is one
// FMA chain over q: from its stored value, or from +0 and then added to it (`blocked`),
// exactly as RankUpdate6x16.swift's kernel computes it lane by lane: the same bits.
CCE_INLINE __m512 load_row16(const void *row, int type, long j, __mmask16 k) {
    if (type == CCE_STORAGE_F32) return _mm512_maskz_loadu_ps(k, (const float *)row + j);
    __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)row + j);
    if (type == CCE_STORAGE_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

CCE_INLINE void rank_kernel(long k, const float *const *a, long aks, const void *const *b, int type, long j0,
                            float *const *out, int blocked, long mc, __mmask16 k0, __mmask16 k1) {
    __m512 s0[CCE_FMA_MR], s1[CCE_FMA_MR];
    _Pragma("clang loop unroll(full)") for (int r = 0; r < CCE_FMA_MR; r++) {
        if (!blocked && r < mc) {
            s0[r] = _mm512_maskz_loadu_ps(k0, out[r] + j0);
            s1[r] = _mm512_maskz_loadu_ps(k1, out[r] + j0 + 16);
        } else {
            s0[r] = _mm512_setzero_ps();
            s1[r] = _mm512_setzero_ps();
        }
    }
    for (long q = 0; q < k; q++) {
        // b rows stored as `type`, converted exactly while loaded.
        __m512 b0 = load_row16(b[q], type, j0, k0), b1 = load_row16(b[q], type, j0 + 16, k1);
        _Pragma("clang loop unroll(full)") for (int r = 0; r < CCE_FMA_MR; r++) {
            __m512 x = _mm512_set1_ps(a[r][q * aks]);
            s0[r] = _mm512_fmadd_ps(x, b0, s0[r]);
            s1[r] = _mm512_fmadd_ps(x, b1, s1[r]);
        }
    }
    _Pragma("clang loop unroll(full)") for (int r = 0; r < CCE_FMA_MR; r++) {
        if (r < mc) {
            if (blocked) {
                s0[r] = _mm512_add_ps(s0[r], _mm512_maskz_loadu_ps(k0, out[r] + j0));
                s1[r] = _mm512_add_ps(s1[r], _mm512_maskz_loadu_ps(k1, out[r] + j0 + 16));
            }
            _mm512_mask_storeu_ps(out[r] + j0, k0, s0[r]);
            _mm512_mask_storeu_ps(out[r] + j0 + 16, k1, s1[r]);
        }
    }
}

CCE_AVX512
void cce_fma_rank_update(float *const *out, long m, const float *a, long ars, long aks, const void *const *b,
                         int type, long k, long width, int blocked) {
    const long mr = CCE_FMA_MR;
    // Row groups outer: a group's out rows are read and written in order, one 128-byte
    // stretch after another (dC's rows lie scattered, so this is what lets the hardware
    // prefetcher follow them), while the b rows' stretches come back from L1 or L2.
    for (long r0 = 0; r0 < m; r0 += mr) {
        long mc = m - r0 < mr ? m - r0 : mr;
        // Rows beyond m repeat the group's first row: computed, never stored.
        const float *rows[CCE_FMA_MR];
        for (long r = 0; r < mr; r++) rows[r] = a + (r0 + (r < mc ? r : 0)) * ars;
        for (long j0 = 0; j0 < width; j0 += 32) {
            __mmask16 k0m, k1m;
            column_masks(width - j0 < 32 ? width - j0 : 32, &k0m, &k1m);
            rank_kernel(k, rows, aks, b, type, j0, out + r0, blocked, mc, k0m, k1m);
        }
    }
}

// The masks of a stretch of nc ≤ 256 columns in 16 registers of 16, and the prefetch of one
// scattered row's stretch (element size `size` bytes) into L1: for the 256-column loops below.
CCE_INLINE void stretch_masks(long nc, __mmask16 *k) {
    _Pragma("clang loop unroll(full)") for (int c = 0; c < 16; c++) {
        const long left = nc - 16 * c;
        k[c] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
}

CCE_INLINE void prefetch_stretch(const void *row, long j0, long nc, long size) {
    for (long q = j0 * size; q < (j0 + nc) * size; q += 64) _mm_prefetch((const char *)row + q, _MM_HINT_T0);
}

// out[j] = from + Σ_t w_t · b_t[j] over t < n for j < width, each element one FMA chain in t
// order, `from` being out's own values (accumulate) or +0, and w_t = values[t], or 1 where
// values is NULL (fma(1, x, s) rounds x + s once, as an addition does: the bits of adding the
// rows one after another). 256 columns a step in 16 registers: sixteen independent chains per
// t, each b_t read in 512-byte stretches (bf16) with the rows four steps ahead prefetched,
// since they lie scattered (64 columns a step in four chains took 1.4 times as long in a Zen 4
// loss+grad profile); `next` (or NULL), a row of `width` floats the caller goes on to, is
// prefetched a stretch at a time.
CCE_INLINE void stretch_chains(float *out, long n, const float *values, const void *const *b, int type, long width,
                               int accumulate, const float *next) {
    const long size = type == CCE_STORAGE_F32 ? 4 : 2;
    for (long j0 = 0; j0 < width; j0 += 256) {
        const long nc = width - j0 < 256 ? width - j0 : 256;
        __m512 s[16];
        __mmask16 k[16];
        stretch_masks(nc, k);
        if (next) prefetch_stretch(next, j0, nc, 4);
        _Pragma("clang loop unroll(full)") for (int c = 0; c < 16; c++)
            s[c] = accumulate ? _mm512_maskz_loadu_ps(k[c], out + j0 + 16 * c) : _mm512_setzero_ps();
        for (long t = 0; t < n; t++) {
            if (t + 4 < n) prefetch_stretch(b[t + 4], j0, nc, size);
            const __m512 x = _mm512_set1_ps(values ? values[t] : 1.0f);
            _Pragma("clang loop unroll(full)") for (int c = 0; c < 16; c++)
                if (16 * c < nc) s[c] = _mm512_fmadd_ps(x, load_row16(b[t], type, j0 + 16 * c, k[c]), s[c]);
        }
        _Pragma("clang loop unroll(full)") for (int c = 0; c < 16; c++)
            if (16 * c < nc) _mm512_mask_storeu_ps(out + j0 + 16 * c, k[c], s[c]);
    }
}

// The 32 bf16 columns c·32 ..< c·32 + 32 of a 256-column stretch with `left` columns left
// from c·32 on: the mask of their 16-bit elements, and of the two Float32 halves.
CCE_INLINE void pair_masks(long left, __mmask32 *k, __mmask16 *k0, __mmask16 *k1) {
    *k = left >= 32 ? ~(__mmask32)0 : left <= 0 ? 0 : (__mmask32)((1ull << left) - 1);
    *k0 = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    *k1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
}

// out[0 ..< 32] (as the masks allow) ← the columns whose even ones are in e and odd ones in o.
CCE_INLINE void store_interleaved(float *out, __m512 e, __m512 o, __mmask16 k0, __mmask16 k1) {
    const __m512i firsts = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i seconds = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_mask_storeu_ps(out, k0, _mm512_permutex2var_ps(e, firsts, o));
    _mm512_mask_storeu_ps(out + 16, k1, _mm512_permutex2var_ps(e, seconds, o));
}

// The bf16 rows' pairs, 32 columns to a 64-byte load: the pair's first element becomes a
// Float32 by a left shift, its second by masking the low half away (one operation for 16
// values where widening takes two, one of them a shuffle). out's 32 columns are split into
// their even and odd ones to match, and interleaved back at the end: every element is the
// same FMA chain over the same terms, in the same order, as in stretch_chains.
CCE_INLINE void sparse_update_bf16(float *out, long n, const float *values, const void *const *b, long width,
                                   const float *next) {
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odds = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (long j0 = 0; j0 < width; j0 += 256) {
        const long nc = width - j0 < 256 ? width - j0 : 256;
        __m512 e[8], o[8];
        __mmask32 k[8];
        __mmask16 k0[8], k1[8];
        if (next) prefetch_stretch(next, j0, nc, 4);
        _Pragma("clang loop unroll(full)") for (int c = 0; c < 8; c++) {
            pair_masks(nc - 32 * c, &k[c], &k0[c], &k1[c]);
            const __m512 lo = _mm512_maskz_loadu_ps(k0[c], out + j0 + 32 * c);
            const __m512 hi = _mm512_maskz_loadu_ps(k1[c], out + j0 + 32 * c + 16);
            e[c] = _mm512_permutex2var_ps(lo, evens, hi);
            o[c] = _mm512_permutex2var_ps(lo, odds, hi);
        }
        for (long t = 0; t < n; t++) {
            if (t + 4 < n) prefetch_stretch(b[t + 4], j0, nc, 2);
            const uint16_t *row = (const uint16_t *)b[t] + j0;
            const __m512 x = _mm512_set1_ps(values[t]);
            _Pragma("clang loop unroll(full)") for (int c = 0; c < 8; c++)
                if (32 * c < nc) {
                    const __m512i w = _mm512_maskz_loadu_epi16(k[c], row + 32 * c);
                    e[c] = _mm512_fmadd_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), e[c]);
                    o[c] = _mm512_fmadd_ps(x, _mm512_castsi512_ps(_mm512_and_si512(w, high)), o[c]);
                }
        }
        _Pragma("clang loop unroll(full)") for (int c = 0; c < 8; c++)
            if (32 * c < nc) store_interleaved(out + j0 + 32 * c, e[c], o[c], k0[c], k1[c]);
    }
}

// dC's sparse update: out[j] += Σ_t values[t] · b_t[j] over t < nnz, each element one FMA
// chain in t order. Given the nonzero terms of a dense chain in its order, this is the dense
// chain's sum bit for bit: a left-out term 0·b_q adds ±0, which leaves every value but −0
// unchanged, and a chain that starts from +0 (zeroed gradients) never reaches −0 (x + y is
// −0 only when both are −0).
CCE_AVX512
void cce_fma_sparse_update(float *out, long nnz, const float *values, const void *const *b, int type, long width,
                           const float *next) {
    switch (type) {  // one specialized loop per storage type
    case CCE_STORAGE_BF16: sparse_update_bf16(out, nnz, values, b, width, next); break;
    case CCE_STORAGE_F32: stretch_chains(out, nnz, values, b, CCE_STORAGE_F32, width, 1, next); break;
    default: stretch_chains(out, nnz, values, b, CCE_STORAGE_F16, width, 1, next); break;
    }
}

// The dropped-mass estimate's block sums: out[j] = Σ_{r < count} rows[r][j] for j < width, each
// element a chain of Float32 additions in r order from +0 (the rows stored as `type`,
// converted exactly while loaded): the bits of adding the converted rows one after another
// to a zeroed row. 256 columns at a time in 16 registers, so out is written once; the rows
// of the next steps are prefetched (they lie scattered, as in bf16_pack_columns).
CCE_INLINE void sum_rows(const void *const *rows, long count, const int type, long width, float *out) {
    stretch_chains(out, count, NULL, rows, type, width, 0, NULL);
}

// The bf16 case without widening shuffles: a 64-byte load holds 16 pairs; the pair's first
// element becomes a Float32 by a left shift, its second by masking the low half away, and
// the two are summed in separate registers (the same additions per element, in the same
// order), interleaved back into out at the end.
CCE_INLINE void sum_rows_bf16(const void *const *rows, long count, long width, float *out) {
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    for (long j0 = 0; j0 < width; j0 += 256) {
        const long nc = width - j0 < 256 ? width - j0 : 256;
        __m512 e[8], o[8];
        __mmask32 k[8];
        __mmask16 k0[8], k1[8];
        _Pragma("clang loop unroll(full)") for (int c = 0; c < 8; c++) {
            pair_masks(nc - 32 * c, &k[c], &k0[c], &k1[c]);
            e[c] = _mm512_setzero_ps(); o[c] = _mm512_setzero_ps();
        }
        for (long r = 0; r < count; r++) {
            const uint16_t *row = (const uint16_t *)rows[r] + j0;
            if (r + 4 < count) prefetch_stretch(rows[r + 4], j0, nc, 2);   // scattered rows (sorted order)
            _Pragma("clang loop unroll(full)") for (int c = 0; c < 8; c++)
                if (32 * c < nc) {
                    __m512i w = _mm512_maskz_loadu_epi16(k[c], row + 32 * c);
                    e[c] = _mm512_add_ps(e[c], _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
                    o[c] = _mm512_add_ps(o[c], _mm512_castsi512_ps(_mm512_and_si512(w, high)));
                }
        }
        _Pragma("clang loop unroll(full)") for (int c = 0; c < 8; c++)
            if (32 * c < nc) store_interleaved(out + j0 + 32 * c, e[c], o[c], k0[c], k1[c]);
    }
}

CCE_AVX512
void cce_sum_rows(const void *const *rows, long count, int type, long width, float *out) {
    switch (type) {  // one specialized loop per storage type
    case CCE_STORAGE_BF16: sum_rows_bf16(rows, count, width, out); break;
    case CCE_STORAGE_F32: sum_rows(rows, count, CCE_STORAGE_F32, width, out); break;
    default: sum_rows(rows, count, CCE_STORAGE_F16, width, out); break;
    }
}

// MARK: - The LSE merge (the forward's fold of a tile row, 512-bit exp)

// Exp.exp (CCEKernels/Exp.swift) on 16 lanes: the same operations per lane (Cody–Waite
// reduction, degree-6 Horner polynomial in fused multiply-adds, 2^n from the rounded
// bits), so every lane gives that function's bits.
CCE_INLINE __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.37626f);
    const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 · 2^23
    __m512 xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), x, lo);
    xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(xc, hi, _CMP_GT_OQ), xc, hi);
    __m512 t = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.442695040888963f)), magic);
    __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
    __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(127)), 23));
    __m512 y = _mm512_mul_ps(p, scale);
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), y, _mm512_setzero_ps());
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), y, _mm512_set1_ps(__builtin_inff()));
    y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, _mm512_set1_ps(__builtin_nanf("")));
    return y;
}

CCE_INLINE float exp1(float x) { return _mm512_cvtss_f32(exp16(_mm512_set1_ps(x))); }

CCE_AVX512
float cce_avx512_exp(float x) { return exp1(x); }

// The positions of a tile row's logits at or above a threshold (the fused forward's saved
// logits): one 16-lane compare and a compress-store of the lane indices per 16 values.
CCE_AVX512
long cce_avx512_select_above(const float *z, long count, float threshold, int32_t *positions) {
    const __m512 t = _mm512_set1_ps(threshold);
    __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16);
    long n = 0, p = 0;
    for (; p + 16 <= count; p += 16) {
        __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(z + p), t, _CMP_GE_OQ);
        if (k) {
            _mm512_mask_compressstoreu_epi32(positions + n, k, index);
            n += __builtin_popcount((unsigned)k);
        }
        index = _mm512_add_epi32(index, step);
    }
    for (; p < count; p++) if (z[p] >= threshold) positions[n++] = (int32_t)p;
    return n;
}

// mergeTileRow (CCEKernels/LSEMerge.swift) for Float, step for step: the maximum in eight
// lanes (a lane takes a later value only when it is larger; then the first largest lane;
// then the tail, where a later equal value wins, as Swift.max does), the exponentials 16
// at a time but summed into eight lanes in the Swift loop's order, the same lane reduction,
// the tail, and the Kahan addition.
CCE_AVX512
void cce_avx512_merge_row(const float *z, long count, float *max, float *sum, float *comp, float *tile_max,
                          float *log_sum) {
    const long c8 = count & ~7L;
    __m256 mv = _mm256_set1_ps(-__builtin_inff());
    long p = 0;
    for (; p < c8; p += 8) {
        __m256 x = _mm256_loadu_ps(z + p);
        mv = _mm256_blendv_ps(mv, x, _mm256_cmp_ps(x, mv, _CMP_GT_OQ));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    float m = lanes[0];
    for (int i = 1; i < 8; i++) if (lanes[i] > m) m = lanes[i];
    for (; p < count; p++) m = z[p] >= m ? z[p] : m;
    if (m == -__builtin_inff()) { *tile_max = m; *log_sum = m; return; }
    if (m > *max) {
        float scale = *max == -__builtin_inff() ? 0.0f : exp1(*max - m);
        *sum *= scale;
        *comp *= scale;
        *max = m;
    }
    const __m512 m16 = _mm512_set1_ps(*max);
    __m256 acc = _mm256_setzero_ps();
    p = 0;
    for (; p + 16 <= c8; p += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(z + p), m16));
        acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
        acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
    }
    if (p < c8) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(0xFF, z + p), m16));
        acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
        p += 8;
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    float q0 = h[0] + h[2], q1 = h[1] + h[3];
    float t = q0 + q1;
    for (; p < count; p++) t += exp1(z[p] - *max);
    float y = t - *comp, s = *sum + y;
    *comp = (s - *sum) - y;
    *sum = s;
    *tile_max = m;
    *log_sum = *max + logf(t);
}

#else  // not x86: neither kernel exists, and the feature queries say so.

int cce_avx512_supported(void) { return 0; }
int cce_bf16_supported(void) { return 0; }
int cce_cpu_is_amd(void) { return 0; }
size_t cce_bf16_row_panel_words(long m, long d) {
    return (size_t)((m + CCE_BF16_MR - 1) / CCE_BF16_MR * CCE_BF16_MR * ((d + 1) / 2));
}
size_t cce_fma_column_panel_floats(void) { return (size_t)CCE_FMA_NR * CCE_FMA_KC; }
void cce_bf16_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst) { __builtin_trap(); }
void cce_bf16_tile_product(const uint32_t *e_panels, long m, const uint16_t *const *c_rows, long n, long d,
                           float *out, long ldo, const bool *panel_mask, long lookahead) {
    __builtin_trap();
}
void cce_bf16_dots(const uint16_t *const *a, const uint16_t *const *b, long count, long d, float *out) {
    __builtin_trap();
}
void cce_fma_tile_product_rows(const float *const *e_rows, long m, const void *const *c_rows, int type, long n,
                               long d, float *out, long ldo, float *panel, const bool *panel_mask) { __builtin_trap(); }
void cce_fma_rank_update(float *const *out, long m, const float *a, long ars, long aks, const void *const *b,
                         int type, long k, long width, int blocked) { __builtin_trap(); }
void cce_fma_sparse_update(float *out, long nnz, const float *values, const void *const *b, int type, long width,
                           const float *next) {
    __builtin_trap();
}
void cce_sum_rows(const void *const *rows, long count, int type, long width, float *out) { __builtin_trap(); }
int cce_amx_supported(void) { return 0; }
float cce_avx512_exp(float x) { __builtin_trap(); }
long cce_avx512_select_above(const float *z, long count, float threshold, int32_t *positions) { __builtin_trap(); }
void cce_avx512_merge_row(const float *z, long count, float *max, float *sum, float *comp, float *tile_max,
                          float *log_sum) { __builtin_trap(); }
size_t cce_amx_row_block_words(long m, long d) { return (size_t)((m + 31) / 32 * 32 * ((d + 31) / 32 * 16)); }
size_t cce_amx_scratch_words(void) { return (size_t)CCE_AMX_NR * CCE_AMX_KCP + 32 * 32; }
void cce_amx_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst) { __builtin_trap(); }
void cce_amx_tile_product(const uint32_t *e_blocks, long m, const uint16_t *const *c_rows, long n, long d,
                          float *out, long ldo, uint32_t *scratch, const bool *panel_mask, long lookahead) { __builtin_trap(); }
size_t cce_amx_rank_scratch_words(void) {
    return (size_t)16 * CCE_AMX_RANK_KMAX + (size_t)CCE_AMX_RANK_KMAX / 2 * CCE_AMX_RANK_JB + 16 * 64;
}
void cce_amx_rank_update(float *const *out, long m, const float *a, long ars, long aks, const uint16_t *const *b,
                         long k, long width, int blocked, uint32_t *scratch) { __builtin_trap(); }

#endif
