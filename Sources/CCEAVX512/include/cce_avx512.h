// AVX-512 tile products: the one place where the engine leaves Swift (cce_avx512.c says
// why). Two kernels, each chosen at run time from cpuid and never called otherwise:
//
// - cce_bf16_*: BFloat16 inputs multiplied with AVX512_BF16's vdpbf16ps over k-pairs.
// - cce_fma_*:  E rows in Float32 (the engine converts them once per token block) and C
//               rows stored as Float32, Float16 or BFloat16 (converted exactly while
//               packed), multiplied with 16-lane (512-bit) Float32 FMAs in the portable
//               Swift kernel's order (its bits, bit for bit).
//
// Both compute out[i·ldo + j] = Σ_k e_i[k]·c_j[k] for i < m, j < n, in Float32; rows
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

/// Rows of the register block (E rows per microkernel call and per panel-mask entry).
#define CCE_BF16_MR 12
/// Columns of the register block (C rows per packed panel): two 16-lane vectors.
#define CCE_BF16_NR 32
/// k-pairs per packed C panel: NR · KCP · 4 bytes = 32 KiB.
#define CCE_BF16_KCP 256

/// Words of E panels for m rows of d elements: ceil(m / MR) · MR · pairs(d).
size_t cce_bf16_row_panel_words(long m, long d);
/// Words of the C-panel scratch: NR · KCP.
size_t cce_bf16_column_panel_words(void);

/// Packs rows[0 ..< m] (bf16 bits, d elements each) into E panels at dst.
void cce_bf16_pack_rows(const uint16_t *const *rows, long m, long d, uint32_t *dst);

/// The tile product from E panels (cce_bf16_pack_rows, same d) and n bf16 C rows; panel is
/// the scratch (cce_bf16_column_panel_words() words; 64-byte aligned is best).
void cce_bf16_tile_product(const uint32_t *e_panels, long m, const uint16_t *const *c_rows, long n, long d,
                           float *out, long ldo, uint32_t *panel, const bool *panel_mask);

/// out[i] = Σ_k a_i[k] · b_i[k] for i < count (bf16 rows of d elements), bit for bit as
/// cce_bf16_tile_product computes the same pair of rows; 16 dot products per pass.
void cce_bf16_dots(const uint16_t *const *a, const uint16_t *const *b, long count, long d, float *out);

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

#ifdef __cplusplus
}
#endif

#endif
