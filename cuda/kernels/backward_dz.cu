// backward_dz.cu — stage 1 of the backward (backward.cuh): the dz tiles. A block recomputes
// its logit tile, turns it into dy in place, decides the filter, sums rows and columns, and
// writes the kept tiles, the sums, the kept flags and its share of dbias.
#include "backward.cuh"

namespace cce {

// Per-column terms of the thread's columns: inside the chunk, and the bias there.
template <class Tile> struct DzColTerms {
  float bv[Tile::Cc], uv[Tile::Cc];  // bias; the uniform smoothing term (times w_v with weights)
  bool in[Tile::Cc];
};

template <class T, class Tile>
__device__ __forceinline__ void dz_col_terms(DzColTerms<Tile> &cl, const DzParams &p, Tile &t,
                                             int64_t p0) {
  const T *bias = static_cast<const T *>(p.bias);
#pragma unroll
  for (int c = 0; c < Tile::Cc; ++c) {
    int64_t pos = p0 + t.col(c);
    cl.in[c] = pos < p.p_end;
    cl.bv[c] = (bias && cl.in[c]) ? Elt<T>::load(bias[p.perm[pos]]) : 0.f;
    cl.uv[c] = (p.cw && cl.in[c]) ? p.uniform * p.cw[p.perm[pos]] : p.uniform;
  }
}

// The logit tile becomes dy in place; returns whether an active entry of the thread's part is
// significant (a target, or |dz / g| >= eps).
template <class Tile>
__device__ __forceinline__ bool dz_values(Tile &t, const DzParams &p, int64_t p0,
                                          const DzRowTerms<Tile> &rw, const DzColTerms<Tile> &cl) {
  bool keep = false;
#pragma unroll
  for (int r = 0; r < Tile::R; ++r)
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      float z = cap(t.at(r, c) + cl.bv[c], p.softcap);
      bool on = rw.act[r] && cl.in[c];
      bool is_t = (p0 + t.col(c)) == rw.tp[r];
      float d = rw.coef[r] * __expf(z - rw.lse[r]) - cl.uv[c];
      if (is_t) d -= rw.tc[r];
      keep |= on && (is_t || fabsf(d) >= p.eps);
      float dy = 0.f;
      if (on) {
        dy = rw.w[r] * d;
        if (p.softcap > 0.f) {
          float q = z / p.softcap;
          dy *= 1.f - q * q;
        }
      }
      t.at(r, c) = dy;
    }
  return keep;
}

// Partial row and column sums of dy into shared memory, one row of partials per thread that
// shares the row (column): sRowP[slot][row] (Tile::RSLOTS x BM) and sColP[cslot][half][col]
// (Tile::CSLOTS x HB x 128). dz_kernel adds each row's (column's) partials in slot order, so the
// sums do not depend on timing (atomic adds would: the order in which threads got there).
template <class Tile>
__device__ __forceinline__ void dz_sums(Tile &t, float *sRowP, float *sColP, int half) {
  constexpr int BM = Tile::BM, CW = Tile::BM;  // a column's partials: HB x 128 = BM floats a slot
  if constexpr (Tile::SLOTS == 4) {
    // Warpgroup tile: a row lives in one quad of lanes (summed by shuffles: one slot), a
    // column in the 8 quads of each warp, and in the 8 warps of its 128-row half.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < Tile::R; ++r) {
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) s += t.at(r, c);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      if ((lane & 3) == 0) sRowP[t.row(r)] = s;
    }
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < Tile::R; ++r) s += t.at(r, c);
      s += __shfl_xor_sync(0xffffffffu, s, 4);
      s += __shfl_xor_sync(0xffffffffu, s, 8);
      s += __shfl_xor_sync(0xffffffffu, s, 16);
      if (lane < 4) sColP[(warp & 7) * CW + half * kBN + t.col(c)] = s;
    }
  } else {
#pragma unroll
    for (int r = 0; r < Tile::R; ++r) {
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) s += t.at(r, c);
      sRowP[t.slot() * BM + t.row(r)] = s;
    }
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < Tile::R; ++r) s += t.at(r, c);
      sColP[t.cslot() * CW + half * kBN + t.col(c)] = s;
    }
  }
}

// The thread's dy values into the block's shared-memory image sZ[row][LDZ] (input type).
template <class T, class L>
__device__ __forceinline__ void dz_tile_to_smem(typename L::Tile &t, T *sZ) {
#pragma unroll
  for (int r = 0; r < L::Tile::R; ++r)
#pragma unroll
    for (int c = 0; c < L::Tile::Cc; ++c) sZ[t.row(r) * L::LDZ + t.col(c)] = Elt<T>::store(t.at(r, c));
}

// The kept tiles from shared memory into the staging buffers (tile_ptr), 16 bytes per copy.
template <class T, class L>
__device__ __forceinline__ void dz_write_tiles(const DzParams &p, const T *sZ, const bool (&kept)[L::HB],
                                               int64_t b0, int64_t NT, int VTc, int j) {
  constexpr int HB = L::HB, NTH = L::Tile::THREADS;
  const int tid = threadIdx.x;
  constexpr int CPR = kBN * int(sizeof(T)) / 16;  // 16-byte chunks per row
#pragma unroll
  for (int h = 0; h < HB; ++h) {
    if (!kept[h] || b0 + h >= NT) continue;
    T *dst = tile_ptr<T>(p.dz, p.dz2, p.split, (b0 + h) * VTc + j);
    const T *src = sZ + h * kBM * L::LDZ;
    for (int q = tid; q < kBM * CPR; q += NTH) {
      int r = q / CPR, c = (q % CPR) * (16 / int(sizeof(T)));
      *reinterpret_cast<uint4 *>(dst + r * kBN + c) = *reinterpret_cast<const uint4 *>(src + r * L::LDZ + c);
    }
  }
}

#ifndef CCE_DZ_MINB
#define CCE_DZ_MINB TileFor<T>::type::MINB
#endif
// Block: HB consecutive 128-row token blocks x one 128-wide vocabulary tile.
template <class T>
__global__ void __launch_bounds__(TileFor<T>::type::THREADS, CCE_DZ_MINB) dz_kernel(DzParams p) {
  using L = DzLayout<T>;
  using Tile = typename L::Tile;
  constexpr int HB = L::HB, BM = Tile::BM, NTH = Tile::THREADS;
  extern __shared__ __align__(16) char smem[];
  float *sRowP = reinterpret_cast<float *>(smem + L::RING);  // [RSLOTS][BM] row sums' partials
  float *sColP = sRowP + Tile::RSLOTS * BM;                    // [CSLOTS][HB][128] column sums' partials
  int *sKeep = reinterpret_cast<int *>(sColP + Tile::CSLOTS * BM);  // [HB]
  const int tid = threadIdx.x;
  if (tid < HB) sKeep[tid] = 0;

  const int VTc = gridDim.y, j = blockIdx.y;
  const int64_t tok0 = int64_t(blockIdx.x) * BM;
  const int64_t p0 = p.p_begin + int64_t(j) * kBN;
  const int64_t NT = (p.N + kBM - 1) / kBM;
  Tile t;
  t.run(static_cast<const T *>(p.E), p.N, tok0, static_cast<const T *>(p.C), p.perm, p0, p.p_end,
        p.D, smem);

  const float gm = *p.gmax;
  DzRowTerms<Tile> rw;
  dz_row_terms(rw, p, t, tok0, gm > 0.f ? 1.f / gm : 0.f);
  DzColTerms<Tile> cl;
  dz_col_terms<T>(cl, p, t, p0);
  const bool keep = dz_values(t, p, p0, rw, cl);
  // Every row of a thread lies in the same 128-row half of the block.
  const int half = t.row(0) / kBM;
  if (keep) sKeep[half] = 1;
  dz_sums(t, sRowP, sColP, half);
  __syncthreads();  // sKeep and the partial sums complete
  bool kept[HB];
#pragma unroll
  for (int h = 0; h < HB; ++h) kept[h] = p.eps > 0.f ? sKeep[h] != 0 : true;
  T *sZ = reinterpret_cast<T *>(smem);  // the tile ring is free: t.run ended on a barrier
  if (p.eps > 0.f ? sKeep[half] != 0 : true) dz_tile_to_smem<T, L>(t, sZ);
  __syncthreads();
  const int64_t b0 = int64_t(blockIdx.x) * HB;
  // The row and column sums of the block's HB tiles (tile number (b0 + h) * VTc + j), each the
  // sum of its partials in slot order. (Left in the kernel: as a function of its own, the same
  // code compiles to other address arithmetic.)
  for (int i = tid; i < HB * kBM; i += NTH) {
    int h = i / kBM, r = i % kBM;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < Tile::RSLOTS; ++k) s += sRowP[k * BM + i];
    if (b0 + h < NT) p.S[((b0 + h) * VTc + j) * kBM + r] = s;
  }
  for (int i = tid; i < HB * kBN; i += NTH) {
    int h = i / kBN, c = i % kBN;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < Tile::CSLOTS; ++k) s += sColP[k * BM + i];
    if (b0 + h < NT) p.Tc[((b0 + h) * VTc + j) * kBN + c] = s;
  }
  if (tid < HB && b0 + tid < NT) {
    p.kept[(b0 + tid) * VTc + j] = kept[tid] ? 1 : 0;
    if (kept[tid] && p.kept_count) atomicAdd(p.kept_count, 1ull);
  }
  dz_write_tiles<T, L>(p, sZ, kept, b0, NT, VTc, j);
}

template <class T> DzKernel dz_kernel_for() { return dz_kernel<T>; }
template DzKernel dz_kernel_for<float>();
template DzKernel dz_kernel_for<__half>();
template DzKernel dz_kernel_for<__nv_bfloat16>();

}  // namespace cce
