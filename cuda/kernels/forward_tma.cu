// forward_tma.cu — the forward's per-split log-sum-exp on Hopper, with the operands brought in
// by the bulk tensor copy engine (TMA) and the work split between warpgroups by role.
//
// A block of three warpgroups owns 128 token rows and a run of 256-wide vocabulary tiles:
//   producer (warpgroup 2, one thread): for every (tile, 64-wide step of D) it waits until the
//     ring slot is free (`empty`), announces the bytes to come (`full`, expect_tx) and issues
//     two tensor copies, E[rows, k:k+64] (128 x 128 bytes) and C[tile rows, k:k+64]
//     (256 x 128 bytes), straight into the 128-byte swizzled K-major layout that wgmma reads.
//     The copy engine zero-fills rows past N or V and columns past D.
//   consumers (warpgroups 0 and 1, 64 token rows each): wait for the slot (`full`), issue four
//     wgmma m64n256k16 (128 float32 accumulators a thread), keep one group in flight and free
//     the previous slot as soon as its group is done. After a tile's last step they fold the
//     tile into per-thread online (max, sum exp, sum z) triples, as forward_lse.cu does, while
//     the producer already fills the ring with the next tile.
// Compared with the cp.async tile (tiles.cuh, WgTile), no thread spends issue slots or
// registers on address arithmetic, no block-wide barrier separates the steps, the tensor
// cores are fed across tile boundaries, and the 4-deep ring (192 KiB) keeps three steps of
// copies in flight.
//
// The partials have forward_lse.cu's meaning and layout; lse_finish_kernel merges them.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <cstdlib>

#include "forward.cuh"

namespace cce {

#if CCE_USE_WGMMA
constexpr int kTK = 64;                                   // D per ring slot: one 128-byte swizzle row
constexpr int kTStages = 4;
constexpr int kTABytes = kTmaFM * kTK * 2;                // 16 KiB of E
constexpr int kTBBytes = kTmaFN * kTK * 2;                // 32 KiB of C
constexpr int kTStageBytes = kTABytes + kTBBytes;
constexpr int kTThreads = 384;                            // 2 consumer warpgroups + 1 producer
constexpr int kTConsumerWarps = 8;
constexpr size_t kTSmem = size_t(kTStages) * kTStageBytes + 2 * kTStages * sizeof(uint64_t) + 1024;

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

// The consumer thread's view of its accumulators (wgmma m64n256 layout): rows
// row0 + 8 r (r = 0, 1), columns col(c) (c = 0..63); four lanes (lane % 4) share a row.
__device__ __forceinline__ int tcol(int lane, int c) { return (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); }
__device__ __forceinline__ float &tat(float (&acc)[128], int r, int c) { return acc[(c >> 1) * 4 + r * 2 + (c & 1)]; }

template <class T>
__global__ void __launch_bounds__(kTThreads, 1)
    lse_tma_kernel(const __grid_constant__ CUtensorMap mapE, const __grid_constant__ CUtensorMap mapC,
                   FwdParams p) {
  extern __shared__ __align__(16) char smem_raw[];
  char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t *full = reinterpret_cast<uint64_t *>(base + kTStages * kTStageBytes);
  uint64_t *empty = full + kTStages;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int tok0 = static_cast<int>(blockIdx.x) * kTmaFM;
  const int split = blockIdx.y;
  const int vt0 = split * p.tiles_per_split;
  const int vt1 = min(vt0 + p.tiles_per_split, p.ntiles);
  const int KT = static_cast<int>((p.D + kTK - 1) / kTK);
  if (tid == 0) {
    for (int s = 0; s < kTStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kTConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 2) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (tid == 256) {
      const int total = (vt1 - vt0) * KT;
      for (int q = 0; q < total; ++q) {
        const int s = q % kTStages;
        if (q >= kTStages) mbar_wait(&empty[s], ((q / kTStages) - 1) & 1);
        const int vt = vt0 + q / KT, kt = q % KT;
        char *sa = base + s * kTStageBytes;
        mbar_expect_tx(&full[s], kTStageBytes);
        tma_load_2d(sa, &mapE, &full[s], kt * kTK, tok0);
        tma_load_2d(sa + kTABytes, &mapC, &full[s], kt * kTK, vt * kTmaFN);
      }
    }
    return;
  }

  // consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int row0 = wg * 64 + (warp & 3) * 16 + (lane >> 2);
  const T *bias = static_cast<const T *>(p.bias);
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  float m[2], s[2], zs[2];
  int tg[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    m[r] = -INFINITY;
    s[r] = 0.f;
    zs[r] = 0.f;
    const int64_t gr = int64_t(tok0) + row0 + 8 * r;
    tg[r] = gr < p.N ? p.tgt[gr] : -1;
  }

  int q = 0;
  for (int vt = vt0; vt < vt1; ++vt) {
    for (int kt = 0; kt < KT; ++kt, ++q) {
      const int st = q % kTStages;
      mbar_wait(&full[st], (q / kTStages) & 1);
      const char *sa = base + st * kTStageBytes + wg * 64 * 128;
      const char *sb = base + st * kTStageBytes + kTABytes;
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int ks = 0; ks < kTK / 16; ++ks) Wgmma256<T, 0, 0>::run(acc, wg_desc(sa + ks * 32), wg_desc(sb + ks * 32));
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
      if (kt > 0 && lane == 0) mbar_arrive(&empty[(q - 1) % kTStages]);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    if (lane == 0) mbar_arrive(&empty[(q - 1) % kTStages]);

    // Epilogue: bias, softcap and the columns past V (-inf), then the online fold.
    const int64_t p0 = int64_t(vt) * kTmaFN;
    if (bias || p.softcap > 0.f || p0 + kTmaFN > p.V) {
#pragma unroll
      for (int c = 0; c < 64; ++c) {
        const int64_t v = p0 + tcol(lane, c);
        const bool in = v < p.V;
        const float b = (bias && in) ? Elt<T>::load(bias[v]) : 0.f;
#pragma unroll
        for (int r = 0; r < 2; ++r) tat(acc, r, c) = in ? cap(tat(acc, r, c) + b, p.softcap) : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tmax = -INFINITY;
#pragma unroll
      for (int c = 0; c < 64; ++c) tmax = fmaxf(tmax, tat(acc, r, c));
      const float nm = fmaxf(m[r], tmax);
      float sum = (m[r] == -INFINITY) ? 0.f : s[r] * __expf(m[r] - nm);
#pragma unroll
      for (int c = 0; c < 64; ++c) sum += __expf(tat(acc, r, c) - nm);
      m[r] = nm;
      s[r] = sum;
      const int64_t j = int64_t(tg[r]) - p0;  // the target's column in this tile
      if (tg[r] >= 0 && j >= 0 && j < kTmaFN && ((j & 7) >> 1) == (lane & 3)) {
        const int cj = static_cast<int>((j >> 3) * 2 + (j & 1));
#pragma unroll
        for (int c = 0; c < 64; ++c)
          if (c == cj) p.ztgt[int64_t(tok0) + row0 + 8 * r] = tat(acc, r, c);
      }
    }
    if (p.sum_z) {
#pragma unroll
      for (int c = 0; c < 64; ++c) {
        const int64_t v = p0 + tcol(lane, c);
        if (v < p.V) {
          const float w = p.cw ? p.cw[v] : 1.f;
#pragma unroll
          for (int r = 0; r < 2; ++r) zs[r] += w * tat(acc, r, c);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  }

  // Merge the four lanes that share each row.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float M = m[r];
    M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, 1));
    M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, 2));
    float S = (m[r] == -INFINITY) ? 0.f : s[r] * __expf(m[r] - M);
    S += __shfl_xor_sync(0xffffffffu, S, 1);
    S += __shfl_xor_sync(0xffffffffu, S, 2);
    float Z = zs[r];
    Z += __shfl_xor_sync(0xffffffffu, Z, 1);
    Z += __shfl_xor_sync(0xffffffffu, Z, 2);
    const int64_t gr = int64_t(tok0) + row0 + 8 * r;
    if ((lane & 3) == 0 && gr < p.N) {
      p.part_m[int64_t(split) * p.N + gr] = M;
      p.part_s[int64_t(split) * p.N + gr] = S;
      p.part_z[int64_t(split) * p.N + gr] = Z;
    }
  }
}

// The driver's tensor-map encoder, looked up once through the runtime (no -lcuda needed).
static PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
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
static int encode_rows(CUtensorMap *map, const void *ptr, int dtype, int64_t rows, int64_t D, int box_rows) {
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

bool tma_forward_usable(int dtype) {
  if (dtype == CCE_F32 || std::getenv("CCE_FORWARD_CPASYNC")) return false;
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0 && tensor_map_encoder() != nullptr;
}

template <class T> static int launch_tma(const FwdParams &p, int dtype, int splits, cudaStream_t s) {
  CUtensorMap mapE, mapC;
  CCE_TRY(encode_rows(&mapE, p.E, dtype, p.N, p.D, kTmaFM));
  CCE_TRY(encode_rows(&mapC, p.C, dtype, p.V, p.D, kTmaFN));
  CCE_CUDA(cudaFuncSetAttribute(lse_tma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(kTSmem)));
  dim3 grid(static_cast<unsigned>((p.N + kTmaFM - 1) / kTmaFM), static_cast<unsigned>(splits));
  lse_tma_kernel<T><<<grid, kTThreads, kTSmem, s>>>(mapE, mapC, p);
  CCE_LAUNCHED("lse_tma_kernel");
  return 0;
}

int launch_partial_tma(const FwdParams &p, int dtype, int splits, cudaStream_t s) {
  return dtype == CCE_BF16 ? launch_tma<__nv_bfloat16>(p, dtype, splits, s)
                           : launch_tma<__half>(p, dtype, splits, s);
}
#else
bool tma_forward_usable(int) { return false; }
int launch_partial_tma(const FwdParams &, int, int, cudaStream_t) {
  return fail(CCE_ERR_CUDA, "the bulk-copy forward needs the sm_90a build");
}
#endif

}  // namespace cce
