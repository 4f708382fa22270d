// backward_products.cu — stage 2 of the backward (backward.cuh): the gradient products
//   dC[vocab] = sum_b dyᵀ . E[tokens b]    dE[tokens] = sum_j dy . C[vocab j]
// over the kept tiles, plus the first-order part of the skipped ones, with mma.sync (16-bit
// types, TC fragments) or f32 FMA (f32). One block per (vocabulary tile, kPD columns of D) for
// dC, then one per (token block, same columns) for dE. On Hopper the 16-bit types use
// backward_wgmma.cu instead, unless CCE_NO_WGMMA_PRODUCTS=1.
#include "backward.cuh"

namespace cce {

// Accumulator views: TC 8 warps as 4 x 2 of 32 x 64; SIMT 256 threads of 8 x 8.
template <class T> struct PFrag {
  static constexpr int R = 4, Cc = 16, STAGES = 2;
  static constexpr int LD = kPD + 8;  // 272-byte rows: ldmatrix conflict-free
  float acc[2][8][4];
  int lane, wm, wn;
  __device__ PFrag() {
    lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    wm = warp >> 1;
    wn = warp & 1;
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 8; ++b)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;
  }
  __device__ __forceinline__ int row(int r) const { return wm * 32 + (r >> 1) * 16 + (lane >> 2) + (r & 1) * 8; }
  __device__ __forceinline__ int col(int c) const { return wn * 64 + (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); }
  __device__ __forceinline__ float &at(int r, int c) { return acc[r >> 1][c >> 1][(r & 1) * 2 + (c & 1)]; }

  // sZ: dy tile [tok][voc]; sO: operand [k][d] (C rows for dE, E rows for dC).
  template <bool kTransZ> __device__ void mma(const T *sZ, const T *sO) {
#pragma unroll
    for (int ks = 0; ks < 8; ++ks) {
      uint32_t af[2][4], bf[4][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        if (kTransZ)  // A = dyᵀ: rows are vocabulary, K is tokens
          ldsm_x4_t(af[mi], sZ + (ks * 16 + (lane & 7) + (lane >> 4) * 8) * LD + wm * 32 + mi * 16 + ((lane >> 3) & 1) * 8);
        else
          ldsm_x4(af[mi], sZ + (wm * 32 + mi * 16 + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8);
      }
#pragma unroll
      for (int pr = 0; pr < 4; ++pr)
        ldsm_x4_t(bf[pr], sO + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + wn * 64 + pr * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
          Mma<T>::run(acc[mi][ni], af[mi], bf[ni >> 1][(ni & 1) * 2], bf[ni >> 1][(ni & 1) * 2 + 1]);
    }
  }
};

template <> struct PFrag<float> {
  static constexpr int R = 8, Cc = 8, STAGES = 1;
  static constexpr int LD = kPD + 4;
  float acc[8][8];
  int ty, tx;
  __device__ PFrag() {
    ty = threadIdx.x >> 4;
    tx = threadIdx.x & 15;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
  }
  __device__ __forceinline__ int row(int r) const { return ty + 16 * r; }
  __device__ __forceinline__ int col(int c) const { return tx + 16 * c; }
  __device__ __forceinline__ float &at(int r, int c) { return acc[r][c]; }
  template <bool kTransZ> __device__ void mma(const float *sZ, const float *sO) {
    for (int k = 0; k < kBN; ++k) {
      float a[8], b[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = kTransZ ? sZ[k * LD + ty + 16 * i] : sZ[(ty + 16 * i) * LD + k];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = sO[k * LD + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
};

template <class T> constexpr size_t products_smem() {
  return size_t(PFrag<T>::STAGES) * 2 * kBM * PFrag<T>::LD * sizeof(T);
}

// First-order part of the skipped tiles: (row or column sums) x (tile mean of the operand).
template <class F, class TileOf>
__device__ __forceinline__ void products_first_order(F &f, const ProdParams &p, bool roleC, int64_t d0,
                                                     int count, const TileOf &tile_of) {
  for (int k = 0; k < count; ++k) {
    int64_t tt = tile_of(k);
    if (p.kept[tt]) continue;
    const float *vec = roleC ? p.Tc + tt * kBN : p.S + tt * kBM;  // indexed by output row
    const float *mean = roleC ? p.ebar + int64_t(k) * p.D : p.cbar + int64_t(k) * p.D;
    float a[F::R], b[F::Cc];
#pragma unroll
    for (int r = 0; r < F::R; ++r) a[r] = vec[f.row(r)];
#pragma unroll
    for (int c = 0; c < F::Cc; ++c) {
      int64_t col = d0 + f.col(c);
      b[c] = col < p.D ? mean[col] : 0.f;
    }
#pragma unroll
    for (int r = 0; r < F::R; ++r)
#pragma unroll
      for (int c = 0; c < F::Cc; ++c) f.at(r, c) = fmaf(a[r], b[c], f.at(r, c));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1) products_kernel(ProdParams p) {
  using F = PFrag<T>;
  constexpr int LD = F::LD, STG = F::STAGES;
  extern __shared__ __align__(16) char smem[];
  T *ring = reinterpret_cast<T *>(smem);  // [STG][2][128][LD]: dy tile, operand tile
  const bool roleC = int(blockIdx.x) < p.nC;
  const int id = roleC ? blockIdx.x : blockIdx.x - p.nC;
  const int owner = id / p.DC;           // vocabulary tile (dC) or token block (dE)
  const int64_t d0 = int64_t(id % p.DC) * kPD;
  const int count = roleC ? p.NT : p.VTc;
  auto tile_of = [&](int k) -> int64_t {
    return roleC ? int64_t(k) * p.VTc + owner : int64_t(owner) * p.VTc + k;
  };
  auto next_kept = [&](int k) {
    while (k < count && !p.kept[tile_of(k)]) ++k;
    return k;
  };
  const int tid = threadIdx.x;
  const T *E = static_cast<const T *>(p.E);
  const T *C = static_cast<const T *>(p.C);
  constexpr int CPR = kPD * int(sizeof(T)) / 16;  // 16-byte chunks per 128-wide row
  constexpr int EPC = 16 / int(sizeof(T));
  // (The copies stay a lambda: as a function of their own they compiled to other address
  // arithmetic, and splitting backward.cu was to leave the machine code as it was.)
  auto load = [&](int stage, int k) {
    T *sZ = ring + size_t(stage) * 2 * kBM * LD;
    T *sO = sZ + kBM * LD;
    const T *src = tile_ptr<T>(p.dz, p.dz2, p.split, tile_of(k));
    for (int q = tid; q < kBM * CPR; q += kThreads) {
      int r = q / CPR, c = (q % CPR) * EPC;
      cp_async16(sZ + r * LD + c, src + r * kBN + c, true);
      // operand row r: C row of vocabulary position (dE) or E row of token (dC)
      const T *orow;
      bool ok;
      if (roleC) {
        int64_t tok = int64_t(k) * kBM + r;
        ok = tok < p.N;
        orow = E + (ok ? tok : 0) * p.D;
      } else {
        int64_t pos = p.p_begin + int64_t(k) * kBN + r;
        ok = pos < p.p_end;
        orow = C + (ok ? int64_t(p.perm[pos]) : 0) * p.D;
      }
      ok = ok && d0 + c < p.D;
      cp_async16(sO + r * LD + c, ok ? (const void *)(orow + d0 + c) : (const void *)E, ok);
    }
  };

  F f;
  int cur = next_kept(0);
  if (STG == 2 && cur < count) load(0, cur);
  cp_async_commit();
  int buf = 0;
  while (cur < count) {
    int nxt = next_kept(cur + 1);
    if (STG == 2) {
      if (nxt < count) load(buf ^ 1, nxt);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      load(0, cur);
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();
    const T *sZ = ring + size_t(buf) * 2 * kBM * LD;
    if (roleC) f.template mma<true>(sZ, sZ + kBM * LD);
    else f.template mma<false>(sZ, sZ + kBM * LD);
    __syncthreads();
    cur = nxt;
    if (STG == 2) buf ^= 1;
  }
  cp_async_wait<0>();

  products_first_order(f, p, roleC, d0, count, tile_of);

  const float gm = *p.gmax;
  __syncthreads();
  float *stg = reinterpret_cast<float *>(smem);  // [128][kPD + 4]
#pragma unroll
  for (int r = 0; r < F::R; ++r)
#pragma unroll
    for (int c = 0; c < F::Cc; ++c) stg[f.row(r) * (kPD + 4) + f.col(c)] = f.at(r, c) * gm;
  __syncthreads();
  write_products<T>(p, roleC, owner, d0, kPD, stg);
}

template <class T> ProductsKernel products_mma_for() {
  return ProductsKernel{products_kernel<T>, products_smem<T>(), kPD};
}
template ProductsKernel products_mma_for<float>();
template ProductsKernel products_mma_for<__half>();
template ProductsKernel products_mma_for<__nv_bfloat16>();

}  // namespace cce
