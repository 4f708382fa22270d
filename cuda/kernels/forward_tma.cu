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
#include <cmath>
#include <cstdlib>

#include "forward.cuh"
#include "tma.cuh"

namespace cce {

#if CCE_USE_WGMMA
template <class T>
__global__ void __launch_bounds__(kTThreads, 1)
    lse_tma_kernel(const __grid_constant__ CUtensorMap mapE, const __grid_constant__ CUtensorMap mapC,
                   FwdParams p) {
  extern __shared__ __align__(16) char smem_raw[];
  const TmaRing ring(smem_raw);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
  const int tok0 = static_cast<int>(blockIdx.x) * kTmaFM;
  const int split = blockIdx.y;
  const int vt0 = split * p.tiles_per_split;
  const int vt1 = min(vt0 + p.tiles_per_split, p.ntiles);
  const int KT = static_cast<int>((p.D + kTK - 1) / kTK);
  if (tid == 0) ring.init();
  __syncthreads();

  if (!tma_roles(ring, &mapE, &mapC, tok0, vt0 * kTmaFN, vt1 - vt0, KT)) return;

  // consumers
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
    tma_consume<T>(ring, acc, q, KT, wg);

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

bool tma_forward_usable(int dtype) {
  return dtype != CCE_F32 && !std::getenv("CCE_FORWARD_CPASYNC") && tma_device();
}

template <class T> static int launch_tma(const FwdParams &p, int dtype, int splits, cudaStream_t s) {
  CUtensorMap mapE, mapC;
  CCE_TRY(encode_rows(&mapE, p.E, dtype, p.N, p.D, kTmaFM));
  CCE_TRY(encode_rows(&mapC, p.C, dtype, p.V, p.D, kTmaFN));
  CCE_CUDA(cudaFuncSetAttribute(lse_tma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(kTRingSmem)));
  dim3 grid(static_cast<unsigned>((p.N + kTmaFM - 1) / kTmaFM), static_cast<unsigned>(splits));
  lse_tma_kernel<T><<<grid, kTThreads, kTRingSmem, s>>>(mapE, mapC, p);
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
