// tma.cuh — Hopper's bulk tensor copies (TMA) and the shared-memory barriers they complete on,
// as the forward (forward_tma.cu) and the backward's dz stage (backward_dz_tma.cu) use them.
//
// A tensor map describes a row-major (rows x D) 16-bit matrix as boxes of box_rows x 64
// elements: one 128-byte row slice per row, written into shared memory in the 128-byte
// swizzled K-major layout that wgmma's descriptors (tiles.cuh, wg_desc) name. Rows past the
// matrix and columns past D arrive as zeros. A copy completes on an mbarrier, which counts the
// bytes still to come (expect_tx) besides the arrivals.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include "tiles.cuh"

namespace cce {

// The tile both kernels compute: 128 tokens (two consumer warpgroups of 64 rows) x 256
// vocabulary rows (one wgmma m64n256k16 per warpgroup and 16 of D).
constexpr int kTmaFM = 128;
constexpr int kTmaFN = 256;

#if CCE_USE_WGMMA
constexpr int kTK = 64;  // D per ring slot: one 128-byte swizzle row of 16-bit values
constexpr int kTStages = 4;
constexpr int kTABytes = kTmaFM * kTK * 2;  // 16 KiB of E per slot
constexpr int kTBBytes = kTmaFN * kTK * 2;  // 32 KiB of C per slot
constexpr int kTStageBytes = kTABytes + kTBBytes;
constexpr int kTThreads = 384;  // consumer warpgroups 0 and 1, producer warpgroup 2
constexpr int kTConsumerWarps = 8;
// Shared memory of the ring and its barriers, with the slack to align the ring to 1024 bytes
// (the 128-byte swizzle's period); a kernel's own shared memory follows (TmaRing::after).
constexpr size_t kTRingSmem = size_t(kTStages) * kTStageBytes + 2 * kTStages * sizeof(uint64_t) + 1024;

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t *b, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(b)), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(uint64_t *b) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(b)) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(b)), "r"(bytes)
               : "memory");
}
// Spins until the barrier's phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint64_t *b, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred P1;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(smem_u32(b)),
      "r"(parity)
      : "memory");
}
// Tensor copy of the box at (c0 = column, c1 = row) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}

// The ring: kTStages slots of (E box, C box), `full` (the producer's expect_tx and the copies'
// bytes) and `empty` (one arrival per consumer warp) per slot. Step q of the block's sequence
// (tile q / KT, 64-wide slice q % KT of D) uses slot q % kTStages.
struct TmaRing {
  char *base;
  uint64_t *full, *empty;
  __device__ explicit TmaRing(char *smem_raw)
      : base(reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023))) {
    full = reinterpret_cast<uint64_t *>(base + kTStages * kTStageBytes);
    empty = full + kTStages;
  }
  __device__ char *after() const { return reinterpret_cast<char *>(empty + kTStages); }
  // By thread 0; the block synchronizes before first use.
  __device__ void init() const {
    for (int s = 0; s < kTStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kTConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
};

// The producer (one thread): ntiles tiles of KT steps each; tile i reads E rows [tok0, +128)
// and C rows [c0 + 256 i, +256).
__device__ __forceinline__ void tma_produce(const TmaRing &r, const CUtensorMap *mapE, const CUtensorMap *mapC,
                                            int tok0, int c0, int ntiles, int KT) {
  const int total = ntiles * KT;
  for (int q = 0; q < total; ++q) {
    const int s = q % kTStages;
    if (q >= kTStages) mbar_wait(&r.empty[s], ((q / kTStages) - 1) & 1);
    const int i = q / KT, kt = q % KT;
    char *sa = r.base + s * kTStageBytes;
    mbar_expect_tx(&r.full[s], kTStageBytes);
    tma_load_2d(sa, mapE, &r.full[s], kt * kTK, tok0);
    tma_load_2d(sa + kTABytes, mapC, &r.full[s], kt * kTK, c0 + i * kTmaFN);
  }
}

// The block's roles once the ring is set up: the producer warpgroup (threads 256..383) hands
// back registers, runs tma_produce in one thread and gets false; the consumer warpgroups take
// 232 registers a thread (for the 128 accumulators and the epilogue) and get true.
__device__ __forceinline__ bool tma_roles(const TmaRing &r, const CUtensorMap *mapE, const CUtensorMap *mapC,
                                          int tok0, int c0, int ntiles, int KT) {
  if (threadIdx.x >= 256) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x == 256) tma_produce(r, mapE, mapC, tok0, c0, ntiles, KT);
    return false;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  return true;
}

// Consumer warpgroup wg: one tile's KT steps added into acc (wgmma m64n256 layout: rows
// 64 wg + 16 (warp % 4) + lane / 4 + 8 r, columns tcol(lane, c)); q counts steps across the
// block's tiles. One wgmma group stays in flight; each slot is freed as soon as its group is
// done, the last one after the tile's final wait.
template <class T>
__device__ __forceinline__ void tma_consume(const TmaRing &r, float (&acc)[128], int &q, int KT, int wg) {
  const int lane = threadIdx.x & 31;
  for (int kt = 0; kt < KT; ++kt, ++q) {
    const int st = q % kTStages;
    mbar_wait(&r.full[st], (q / kTStages) & 1);
    const char *sa = r.base + st * kTStageBytes + wg * 64 * 128;
    const char *sb = r.base + st * kTStageBytes + kTABytes;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < kTK / 16; ++ks) Wgmma256<T, 0, 0>::run(acc, wg_desc(sa + ks * 32), wg_desc(sb + ks * 32));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    if (kt > 0 && lane == 0) mbar_arrive(&r.empty[(q - 1) % kTStages]);
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  if (lane == 0) mbar_arrive(&r.empty[(q - 1) % kTStages]);
}

// The accumulator layout: column of entry c (0..63) of a thread; acc index of (row r, entry c).
__device__ __forceinline__ int tcol(int lane, int c) { return (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); }
__device__ __forceinline__ float &tat(float (&acc)[128], int r, int c) { return acc[(c >> 1) * 4 + r * 2 + (c & 1)]; }

// The driver's tensor-map encoder, looked up once through the runtime (no -lcuda needed).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void *f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A row-major (rows x D) 16-bit matrix as boxes of box_rows x 64, 128-byte swizzled.
inline int encode_rows(CUtensorMap *map, const void *ptr, int dtype, int64_t rows, int64_t D, int box_rows) {
  cuuint64_t dims[2] = {static_cast<cuuint64_t>(D), static_cast<cuuint64_t>(rows)};
  cuuint64_t strides[1] = {static_cast<cuuint64_t>(D) * 2};
  cuuint32_t box[2] = {static_cast<cuuint32_t>(kTK), static_cast<cuuint32_t>(box_rows)};
  cuuint32_t estr[2] = {1, 1};
  CUresult rc = tensor_map_encoder()(
      map, dtype == CCE_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
      const_cast<void *>(ptr), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (rc != CUDA_SUCCESS) return fail(CCE_ERR_CUDA, "cuTensorMapEncodeTiled failed (" + std::to_string(rc) + ")");
  return 0;
}

// Compute capability 9.0 and the driver's encoder present.
inline bool tma_device() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0 && tensor_map_encoder() != nullptr;
}
#endif

}  // namespace cce
