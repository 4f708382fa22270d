// AVX-512 and AMX tile products: the one place where the engine leaves Swift (cce_avx512.c
// says why). Three kernels, each chosen at run time from cpuid and never called otherwise:
//
// - cce_bf16_*: BFloat16 inputs multiplied with AVX512_BF16's vdpbf16ps over k-pairs.
// - cce_fma_*:  E rows in Float32 (the engine converts them once per token block) and C
//               rows stored as Float32, Float16 or BFloat16 (converted exactly while
//               packed), multiplied with 16-lane (512-bit) Float32 FMAs in the portable
//               Swift kernel's order (its bits, bit for bit).
// - cce_amx_*:  BFloat16 inputs multiplied by AMX tile products (tdpbf16ps), 32 x 32
//               output blocks (layouts and bits in its own section below).
//
// All compute out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n, in Float32; rows
// i ≥ m and columns j ≥ n of out are never read or written; a panel mask (NULL, or one
// flag per MR-row panel) skips panel p when mask[p] is false, leaving its out rows as they
// were. C rows are reached through a table of row pointers and never read past element
// d − 1.
//
// bf16 layouts (counts in 32-bit words; one word = one pair of bf16 elements, k = 2q in the
// low half and 2q + 1 in the high half; pairs(d) = (d + 1) / 2, an odd d padded with a zero
// high half):
//   E panels : ceil(m / MR) panels of MR rows; panel p at word p · MR · pairs(d); word
//              q · MR + r = row p·MR + r's pair q. Rows beyond m are zero.
//   C panel  : the scratch, NR x KCP words: word q · NR + j = row j's pair q0 + q, rebuilt
//              for every NR columns and KCP pairs.
// fma layouts (counts in Floats):
//   E rows   : read in place through a row table (no packing); the mask is per MR rows.
//   C panel  : the scratch, NR x KC floats: k · NR + j = row j's element k0 + k.
#ifndef CCE_AVX512_H
#define CCE_AVX512_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Storage types of the inputs (the engine's StorageType).
#define CCE_STORAGE_F32 0
#define CCE_STORAGE_F16 1
#define CCE_STORAGE_BF16 2

// MARK: - CPU features

/// 1 when the CPU has AVX512F, AVX512BW and AVX512VL and the OS saves the opmask and ZMM
/// state (XCR0 bits 1, 2, 5, 6, 7): the fma kernel can run. Cheap; callers cache it.
int cce_avx512_supported(void);

/// 1 when, in addition, the CPU has AVX512_BF16 (cpuid leaf 7 subleaf 1, EAX bit 5): the
/// bf16 kernel can run.
int cce_bf16_supported(void);

/// 1 for an AMD CPU ("AuthenticAMD"), else 0.
int cce_cpu_is_amd(void);

// MARK: - The bf16 dot-product kernel (vdpbf16ps)

/// Rows of the register block (E rows per microkernel call and per panel-mask entry): two
/// 16-lane vectors of tokens.
#define CCE_BF16_MR 32
/// Columns of the register block: C rows, each broadcast a pair at a time from its own memory.
#define CCE_BF16_NR 12

/// Words of E panels for m rows of d elements: ceil(m / MR) · MR · pairs(d).
size_t cce_bf16_row_panel_words(long m, long d);

/// Packs rows[0 ..< m] (bf16 bits, d elements each) into E panels at dst.
void cce_bf16_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst);

/// The tile product from E panels (cce_bf16_pack_rows, same d) and n bf16 C rows, read in
/// place. The `lookahead` rows after c_rows[n − 1] (at most CCE_BF16_NR: the next call's
/// first) are prefetched while the last C rows are multiplied.
void cce_bf16_tile_product(const uint32_t *e_panels, long m, const uint16_t *const *c_rows, long n, long d,
                           float *out, long ldo, const bool *panel_mask, long lookahead);

/// out[i] = Σ_k a_i[k] · b_i[k] for i < count (bf16 rows of d elements), bit for bit as
/// cce_bf16_tile_product computes the same pair of rows; 16 dot products per pass.
void cce_bf16_dots(const uint16_t *const *a, const uint16_t *const *b, long count, long d, float *out);

// MARK: - The AMX tile kernel (AMX-BF16)
//
// The contract of cce_bf16_tile_product (panel mask per 32 rows), computed by AMX tile
// products (tdpbf16ps): E
// packed once per token block into 16 x 32-element tiles, C rows transposed per 32 columns
// into a pair panel like the bf16 kernel's E panels (word q·32 + j = row j's pair q: AMX's VNNI B layout),
// 32 x 32 output blocks of four Float32 accumulator tiles. Layouts (32-bit words, one word
// = one pair of bf16 elements, k = 2q in the low half):
//   E blocks : rows padded to ceil(m / 32)·32, elements to chunks(d)·32 with chunks(d) =
//              ceil(d / 32); tile (g, c) of rows 16g ..< 16g + 16 and elements
//              32c ..< 32c + 32 at word (g·chunks(d) + c)·256, word r·16 + t = row 16g + r's
//              pair 16c + t. Padding is zero.
//   scratch  : CCE_AMX_NR x CCE_AMX_KCP words of C panel, then a 32 x 32 Float32 block for
//              the edges (cce_amx_scratch_words() words; 64-byte aligned is best).
// Bits: each output is a chain over 32-element chunks of k from +0, one tdpbf16ps each
// (crossing KCP chunks through the stored Float32 partial, exactly): it depends on the two
// rows and d only. One tdpbf16ps, measured bit for bit on a Xeon 6 (model 207):
// s ← s + (E + O), E and O the chunk's 16 even-element and 16 odd-element products each
// summed in order in Float32 from +0; every step one rounding to nearest even; bf16 inputs
// and the incoming s read subnormals as zero, subnormal results are flushed to zero.
// (Benchmarks/amx/amx_harness.c holds the measurements; amxDotEmulated the model.)

/// Rows per output block and per panel-mask entry.
#define CCE_AMX_MR 32
/// Columns per output block (C rows per packed panel).
#define CCE_AMX_NR 32
/// k-pairs per packed C panel (a multiple of 16): NR · KCP · 4 bytes = 128 KiB, in L2. Measured
/// on a Xeon 6 (model 207) at m = 258, n = 256: 1024 pairs beat 128, 256 and 512 (fewer
/// reloads of the accumulators; the tile loads come from L2 either way).
#ifndef CCE_AMX_KCP
#define CCE_AMX_KCP 1024
#endif

/// 1 when the CPU has AMX-TILE and AMX-BF16 (cpuid leaf 7 EDX bits 24, 22) with palette 1
/// of 8 tiles of 16 x 64 bytes, AVX512F/BW/VL (the packers), the OS enables the tile state
/// (XCR0 bits 17, 18) and, on Linux, grants this process the tile data (arch_prctl
/// ARCH_REQ_XCOMP_PERM, asked once). Else 0 (always 0 off Linux). Cached after the first call.
int cce_amx_supported(void);

/// Words of E blocks for m rows of d elements: ceil(m / 32)·32 · ceil(d / 32)·16.
size_t cce_amx_row_block_words(long m, long d);
/// Words of the scratch cce_amx_tile_product needs: NR · KCP + 32 · 32.
size_t cce_amx_scratch_words(void);

/// Packs rows[0 ..< m] (bf16 bits, d elements each, never read past element d − 1) into E
/// blocks at dst (cce_amx_row_block_words(m, d) words), zero-padded.
void cce_amx_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst);

/// The tile product from E blocks (cce_amx_pack_rows, same d) and n bf16 C rows: out[i·ldo
/// + j] for i < m, j < n; panel_mask NULL or one flag per 32 rows; scratch of
/// cce_amx_scratch_words() words. Requires cce_amx_supported(). c_rows[n ..< n + lookahead]
/// are the rows the next call will start with: prefetched (never read) during the last panel.
void cce_amx_tile_product(const uint32_t *e_blocks, long m, const uint16_t *const *c_rows, long n, long d,
                          float *out, long ldo, uint32_t *scratch, const bool *panel_mask, long lookahead);

/// The AMX rank update: the contract of cce_fma_rank_update (out_r[j] (+)= Σ_{q < k} A(r, q)·
/// b_q[j], A(r, q) = a[r·ars + q·aks], for r < m and j < width; with `blocked` the sum is
/// formed from +0 and then added to out, else formed onto out) with b rows stored as bf16
/// (exact) and k ≤ CCE_AMX_RANK_KMAX (larger k: nothing is done). Each A value is split into
/// two bf16 values, hi = bf16(x) and lo = bf16(x − hi), both rounded to nearest even, so
/// hi + lo = x to within 2^-17·|x|. Bits: per output element, one chain over the 32-element
/// chunks of q from the starting sum s: s ← s + (E_hi + O_hi), then s ← s + (E_lo + O_lo),
/// E and O the chunk's even- and odd-q products in order from +0 (one tdpbf16ps each, as in
/// cce_amx_tile_product, with its flushes of subnormals). So an element's bits depend on
/// its A row, the b rows, k and the starting sum only: not on m, width, the row or column
/// position, or the thread. scratch: cce_amx_rank_scratch_words() words, 64-byte aligned
/// is best. Requires cce_amx_supported().
#define CCE_AMX_RANK_KMAX 256
/// Columns of b packed at a time (each b row read as one stretch of JB elements).
#define CCE_AMX_RANK_JB 256
size_t cce_amx_rank_scratch_words(void);
void cce_amx_rank_update(float *const *out, long m, const float *a, long ars, long aks, const uint16_t *const *b,
                         long k, long width, int blocked, uint32_t *scratch);

// MARK: - The forward's LSE merge (512-bit)

/// mergeTileRow (CCEKernels/LSEMerge.swift) for Float32, bit for bit: folds z[0 ..< count]
/// into the running (max, sum, comp) and writes the row's largest logit and its own
/// log-sum-exp. The exponentials are Exp.exp's operations on 16 lanes. Requires
/// cce_avx512_supported().
void cce_avx512_merge_row(const float *z, long count, float *max, float *sum, float *comp, float *tile_max,
                          float *log_sum);
/// Exp.exp of one value (its bits), for tests.
float cce_avx512_exp(float x);
/// The positions p < count with z[p] >= threshold, increasing, into `positions`; returns
/// how many. Requires cce_avx512_supported().
long cce_avx512_select_above(const float *z, long count, float threshold, int32_t *positions);

// MARK: - The Float32 FMA kernel (512-bit)

/// Rows of the register block (and per panel-mask entry).
#define CCE_FMA_MR 12
/// Columns of the register block: two 16-lane vectors.
#define CCE_FMA_NR 32
/// k per packed C panel: NR · KC · 4 bytes = 32 KiB.
#define CCE_FMA_KC 256

/// Floats of the C-panel scratch: NR · KC.
size_t cce_fma_column_panel_floats(void);

/// The tile product of m E rows (Float32, d elements each, through a row table) and n C
/// rows stored as `type`; panel is the scratch (cce_fma_column_panel_floats() floats).
void cce_fma_tile_product_rows(const float *const *e_rows, long m, const void *const *c_rows, int type, long n,
                               long d, float *out, long ldo, float *panel, const bool *panel_mask);

/// The backward's rank update (RankUpdate6x16.swift's contract, its bits): out[r][j] += Σ_{q < k}
/// a[r·ars + q·aks] · b[q][j] for r < m, j < width, each element one FMA chain over q from its
/// stored value, or, with `blocked`, from +0 and then added to it. No scratch: A and the b
/// rows (stored as `type`, converted exactly while loaded) are read in place.
void cce_fma_rank_update(float *const *out, long m, const float *a, long ars, long aks, const void *const *b,
                         int type, long k, long width, int blocked);

/// dC's sparse update, one out row: out[j] += Σ_{t < nnz} values[t] · b[t][j] for j < width, each
/// element one FMA chain in t order from its stored value (the b rows stored as `type`,
/// converted exactly while loaded). With the nonzero terms of cce_fma_rank_update's chain for
/// that row, in order, it gives that chain's bits when the row holds no −0. `next` (or NULL):
/// the out row of the caller's next update, prefetched meanwhile (never read here).
void cce_fma_sparse_update(float *out, long nnz, const float *values, const void *const *b, int type, long width,
                           const float *next);

/// The dropped-mass estimate's block sums: out[j] = Σ_{r < count} rows[r][j] for j < width, each
/// element a chain of Float32 additions in r order from +0 (the rows stored as `type`,
/// converted exactly while loaded): the bits of adding the converted rows to a zeroed row one
/// after another.
void cce_sum_rows(const void *const *rows, long count, int type, long width, float *out);

#ifdef __cplusplus
}
#endif

#endif
