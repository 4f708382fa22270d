// backward.cu — gradients of the loss with respect to E, C and the bias, with tile
// filtering, vocabulary sorting and float32 accumulation, and no atomics on dE or dC.
//
// The vocabulary, in sorted order, is processed in chunks of VTc tiles of 128 positions.
// For each chunk, two launches:
//
//   dz_kernel        grid (token blocks NT) x (VTc): recompute the logit tile (tiles.cuh) and
//                      dz_iv = g_i [ (1 + 2 zl lse_i) p_iv - (1 - a)[v = t_i] - a/V ]
//                      dy_iv = dz_iv (1 - (z_iv / s)^2) under softcap,  p = exp(z - lse)
//                    A tile is kept unless every active |dz / g| < eps and no row's target
//                    lies in it. Kept tiles store dy / gmax in the input type (a staging
//                    buffer of NT x VTc tiles); every tile stores its 128 row sums and 128
//                    column sums of dy / gmax; the column sums also go to dbias (exact).
//   products kernel  one block per (vocabulary tile, 256 columns of D; 128 on the mma.sync path)
//                    for dC, then one per (token block, same columns) for dE; each sums over its kept tiles
//                      dC[vocab] = sum_b dyᵀ . E[tokens b]    dE[tokens] = sum_j dy . C[vocab j]
//                    in f32 registers (tensor cores for 16-bit inputs), and for each skipped
//                    tile adds its first-order part, the row / column sums times the mean of
//                    the tile's C rows / E rows, so that filtering drops only what deviates
//                    from the tile mean. dC is written once, finished; dE is added into an
//                    f32 accumulator owned by that block (no atomics anywhere).
//
// gmax = max_i |g_i| scales dy into the 16-bit range (it is exact for mean and sum, where
// every g_i is equal). In the lean layout the f32 dE accumulator lives inside the caller's dC
// buffer, in the rows of the last vocabulary segment [seg, V), whose own dC comes last:
//   pass A: positions [seg, V), dE only;  pass B: [0, seg), dE + dC;  dE finished;
//   pass C: [seg, V), dC only.
// Staging: until dE is finished (passes A and B, or the single pass), the caller's dE buffer is
// unused, so the staged tiles of a chunk fill it first (N D / 16384 whole tiles) and the
// workspace's ~24 MiB after it: chunks of 30 instead of 12 vocabulary tiles at the Gemma 2
// shape, at no extra memory; pass C stages in the workspace alone.
// The wgmma products kernel issues a tile's wgmma before the copies of the next tile, and those
// copies use per-thread offsets computed once (each thread always moves the same 16-byte column
// chunk); the address arithmetic of the copies was the products' bottleneck (24 -> 31 % issue
// utilisation, 125 -> 99 ms for loss + gradients at the Gemma 2 shape).
// When a > 0 without softcap, the -a/V term is left out of the tiles and added exactly:
//   dE_i -= g_i a/V sum_v C_v,  dC_v -= a/V sum_i g_i E_i,  dbias_v -= a/V sum_i g_i.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "tiles.cuh"

namespace cce {

constexpr int kTileElems = kBM * kBN;

// The staged dy tiles [NT][VTc] may span two buffers: tiles [0, split) in `a` (the caller's dE
// output, free until dE is finished), the rest in `b` (the workspace).
template <class T>
__device__ __forceinline__ T *tile_ptr(const void *a, const void *b, int64_t split, int64_t tile) {
  return tile < split ? const_cast<T *>(static_cast<const T *>(a)) + tile * kTileElems
                      : const_cast<T *>(static_cast<const T *>(b)) + (tile - split) * kTileElems;
}

// ---- stage 1: dz tiles ------------------------------------------------------------------

struct DzParams {
  const void *E, *C, *bias;
  const int *perm, *tpos;
  const float *lse, *w, *gmax;
  int64_t N, D;
  int64_t p_begin, p_end;  // sorted vocabulary positions of this chunk
  float softcap, uniform, one_minus_alpha, zloss2, eps;
  void *dz;      // [NT][VTc][128][128] input type (f32 for f32): tiles [0, split) here,
  void *dz2;     //   the rest here, from tile `split` on (see tile_ptr)
  int64_t split;
  int *kept;     // [NT][VTc]
  float *S, *Tc; // [NT][VTc][128] row sums, column sums of dy / gmax
  float *db_acc; // [V] or null
  unsigned long long *kept_count;  // or null
};

template <class T> struct DzLayout {
  using Tile = typename TileFor<T>::type;
  static constexpr int HB = Tile::BM / kBM;              // 128-row token blocks per CUDA block
  static constexpr int LDZ = kBN + 16 / int(sizeof(T));  // 16-byte padded rows
  static constexpr size_t STAGE = size_t(Tile::BM) * LDZ * sizeof(T);
  static constexpr size_t RING = Tile::SMEM > STAGE ? Tile::SMEM : STAGE;
  static constexpr size_t SMEM = RING + (Tile::BM + HB * kBN + 4) * sizeof(float);
};

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
  float *sRow = reinterpret_cast<float *>(smem + L::RING);  // [BM]
  float *sCol = sRow + BM;                                    // [HB][128]
  int *sKeep = reinterpret_cast<int *>(sCol + HB * kBN);      // [HB]
  const int tid = threadIdx.x;
  for (int i = tid; i < BM + HB * kBN + HB; i += NTH) sRow[i] = 0.f;  // sKeep: 0 bits too

  const int VTc = gridDim.y, j = blockIdx.y;
  const int64_t tok0 = int64_t(blockIdx.x) * BM;
  const int64_t p0 = p.p_begin + int64_t(j) * kBN;
  const int64_t NT = (p.N + kBM - 1) / kBM;
  Tile t;
  t.run(static_cast<const T *>(p.E), p.N, tok0, static_cast<const T *>(p.C), p.perm, p0, p.p_end,
        p.D, smem);

  const float gm = *p.gmax;
  const float inv = gm > 0.f ? 1.f / gm : 0.f;
  float lse[Tile::R], w[Tile::R], coef[Tile::R];
  int tp[Tile::R];
  bool act[Tile::R];
#pragma unroll
  for (int r = 0; r < Tile::R; ++r) {
    int64_t gr = tok0 + t.row(r);
    w[r] = gr < p.N ? p.w[gr] * inv : 0.f;
    act[r] = w[r] != 0.f;  // ignored rows and rows past N have w = 0
    tp[r] = gr < p.N ? p.tpos[gr] : -1;
    lse[r] = act[r] ? p.lse[gr] : 0.f;
    coef[r] = 1.f + p.zloss2 * lse[r];
  }
  const T *bias = static_cast<const T *>(p.bias);
  float bv[Tile::Cc];
  bool in[Tile::Cc];
#pragma unroll
  for (int c = 0; c < Tile::Cc; ++c) {
    int64_t pos = p0 + t.col(c);
    in[c] = pos < p.p_end;
    bv[c] = (bias && in[c]) ? Elt<T>::load(bias[p.perm[pos]]) : 0.f;
  }
  bool keep = false;
#pragma unroll
  for (int r = 0; r < Tile::R; ++r)
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      float z = cap(t.at(r, c) + bv[c], p.softcap);
      bool on = act[r] && in[c];
      bool is_t = (p0 + t.col(c)) == tp[r];
      float d = coef[r] * __expf(z - lse[r]) - p.uniform;
      if (is_t) d -= p.one_minus_alpha;
      keep |= on && (is_t || fabsf(d) >= p.eps);
      float dy = 0.f;
      if (on) {
        dy = w[r] * d;
        if (p.softcap > 0.f) {
          float q = z / p.softcap;
          dy *= 1.f - q * q;
        }
      }
      t.at(r, c) = dy;
    }
  // Every row of a thread lies in the same 128-row half of the block.
  const int half = t.row(0) / kBM;
  if (keep) sKeep[half] = 1;

  if constexpr (Tile::SLOTS == 4) {
    // Warpgroup tile: a row lives in one quad of lanes, a column in the 8 quads of each warp.
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < Tile::R; ++r) {
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) s += t.at(r, c);
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      if ((lane & 3) == 0) sRow[t.row(r)] = s;
    }
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < Tile::R; ++r) s += t.at(r, c);
      s += __shfl_xor_sync(0xffffffffu, s, 4);
      s += __shfl_xor_sync(0xffffffffu, s, 8);
      s += __shfl_xor_sync(0xffffffffu, s, 16);
      if (lane < 4 && s != 0.f) atomicAdd(&sCol[half * kBN + t.col(c)], s);
    }
  } else {
#pragma unroll
    for (int r = 0; r < Tile::R; ++r) {
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) s += t.at(r, c);
      if (s != 0.f) atomicAdd(&sRow[t.row(r)], s);
    }
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < Tile::R; ++r) s += t.at(r, c);
      if (s != 0.f) atomicAdd(&sCol[half * kBN + t.col(c)], s);
    }
  }
  __syncthreads();  // sKeep complete
  bool kept[HB];
#pragma unroll
  for (int h = 0; h < HB; ++h) kept[h] = p.eps > 0.f ? sKeep[h] != 0 : true;
  T *sZ = reinterpret_cast<T *>(smem);  // the tile ring is free: t.run ended on a barrier
  if (p.eps > 0.f ? sKeep[half] != 0 : true) {
#pragma unroll
    for (int r = 0; r < Tile::R; ++r)
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) sZ[t.row(r) * L::LDZ + t.col(c)] = Elt<T>::store(t.at(r, c));
  }
  __syncthreads();
  const int64_t b0 = int64_t(blockIdx.x) * HB;
  for (int i = tid; i < HB * kBM; i += NTH) {
    int h = i / kBM, r = i % kBM;
    if (b0 + h < NT) p.S[((b0 + h) * VTc + j) * kBM + r] = sRow[i];
  }
  for (int c = tid; c < kBN; c += NTH) {
    float tot = 0.f;
#pragma unroll
    for (int h = 0; h < HB; ++h) {
      float s = sCol[h * kBN + c];
      tot += s;
      if (b0 + h < NT) p.Tc[((b0 + h) * VTc + j) * kBN + c] = s;
    }
    int64_t pos = p0 + c;
    if (p.db_acc && pos < p.p_end && tot != 0.f) atomicAdd(&p.db_acc[p.perm[pos]], tot * gm);
  }
  if (tid < HB && b0 + tid < NT) {
    p.kept[(b0 + tid) * VTc + j] = kept[tid] ? 1 : 0;
    if (kept[tid] && p.kept_count) atomicAdd(p.kept_count, 1ull);
  }
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

// ---- stage 2: the gradient products ------------------------------------------------------

struct ProdParams {
  const void *E, *C, *dz, *dz2;
  int64_t split;  // staged tiles [0, split) in dz, the rest in dz2
  const int *perm, *kept;
  const float *S, *Tc, *cbar, *ebar, *gmax, *esum;
  float u;
  int64_t N, D, p_begin, p_end;
  int NT, VTc, DC, nC;  // token blocks, vocabulary tiles, 128-column slices of D, dC blocks
  int early_load;       // wgmma products: issue the next tile's copies before this tile's wgmma
  float *dE_acc;        // [N][D] f32, or null
  void *dC;             // caller's dC (V, D), or null
};

constexpr int kPD = 128;  // columns of D per products block

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


// Products epilogue, shared by both products kernels: the block's f32 result, already scaled by
// gmax, sits in shared memory stg[128][width + 4]. dC rows are finished here (minus the uniform
// smoothing term) with 16-byte stores; dE rows are added into the f32 accumulator with float4
// read-modify-writes, eight loads in flight before the first store.
template <class T>
__device__ void write_products(const ProdParams &p, bool roleC, int owner, int64_t d0, int width,
                               const float *stg) {
  const int LDS = width + 4, tid = threadIdx.x;
  if (roleC) {
    const int CH = width / 8;
    T *dC = static_cast<T *>(p.dC);
    for (int q = tid; q < kBM * CH; q += kThreads) {
      int r = q / CH, c = (q % CH) * 8;
      int64_t pos = p.p_begin + int64_t(owner) * kBN + r;
      int64_t col = d0 + c;
      if (pos >= p.p_end || col >= p.D) continue;
      float x[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) x[k] = stg[r * LDS + c + k] - (p.esum ? p.u * p.esum[col + k] : 0.f);
      T *o = dC + int64_t(p.perm[pos]) * p.D + col;
      if constexpr (sizeof(T) == 2) {
        union { uint4 u; T h[8]; } pk;
#pragma unroll
        for (int k = 0; k < 8; ++k) pk.h[k] = Elt<T>::store(x[k]);
        *reinterpret_cast<uint4 *>(o) = pk.u;
      } else {
        reinterpret_cast<float4 *>(o)[0] = make_float4(x[0], x[1], x[2], x[3]);
        reinterpret_cast<float4 *>(o)[1] = make_float4(x[4], x[5], x[6], x[7]);
      }
    }
  } else {
    const int CH = width / 4;
    constexpr int B = 8;
    for (int q0 = tid; q0 < kBM * CH; q0 += kThreads * B) {
      float4 g[B];
      float *addr[B];
      bool ok[B];
#pragma unroll
      for (int b = 0; b < B; ++b) {
        int q = q0 + b * kThreads;
        int r = q / CH, c = (q % CH) * 4;
        int64_t tok = int64_t(owner) * kBM + r;
        ok[b] = q < kBM * CH && tok < p.N && d0 + c < p.D;
        addr[b] = p.dE_acc + (ok[b] ? tok * p.D + d0 + c : 0);
        if (ok[b]) g[b] = *reinterpret_cast<const float4 *>(addr[b]);
      }
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (!ok[b]) continue;
        int q = q0 + b * kThreads;
        int r = q / CH, c = (q % CH) * 4;
        const float *sv = stg + r * LDS + c;
        g[b].x += sv[0]; g[b].y += sv[1]; g[b].z += sv[2]; g[b].w += sv[3];
        *reinterpret_cast<float4 *>(addr[b]) = g[b];
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1) products_kernel(ProdParams p) {
  using F = PFrag<T>;
  constexpr int LD = F::LD, STG = F::STAGES;
  extern __shared__ __align__(16) char smem[];
  T *ring = reinterpret_cast<T *>(smem);  // [STG][2][128][LD]: dy tile, operand tile
  const int tid = threadIdx.x;
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
  const T *E = static_cast<const T *>(p.E);
  const T *C = static_cast<const T *>(p.C);
  constexpr int CPR = kPD * int(sizeof(T)) / 16;  // 16-byte chunks per 128-wide row
  constexpr int EPC = 16 / int(sizeof(T));
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

  // First-order part of the skipped tiles: (row or column sums) x (tile mean of the operand).
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


#if CCE_USE_WGMMA
// ---- stage 2 on Hopper: the same products through wgmma -------------------------------------
//
// One block per (vocabulary tile or token block, 256 columns of D); two warpgroups, each
// owning 64 output rows x 256 columns (m64n256k16, 128 f32 accumulators per thread).
// Shared-memory images, 128-byte swizzled (chunk c of a 128-byte row r stored at c ^ (r % 8)):
//   dy tile:  2 blocks of 64 vocabulary columns, each 128 token rows x 128 bytes.
//             dE reads it K-major (rows = tokens = M); dC reads it MN-major (M = vocabulary).
//   operand:  4 blocks of 64 D columns, each 128 rows (K) x 128 bytes: MN-major B.
constexpr int kPDW = 256;
constexpr int kMaxFlags = 4096;  // kept flags held in shared memory (more: read from global)

template <class T>
__global__ void __launch_bounds__(kThreads, 1) products_wg_kernel(ProdParams p) {
  constexpr int BLK = 16384;          // one 128-row x 128-byte block
  constexpr int ZB = 2 * BLK, STAGE = 6 * BLK;
  extern __shared__ __align__(16) char smem_raw[];
  char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const bool roleC = int(blockIdx.x) < p.nC;
  const int id = roleC ? blockIdx.x : blockIdx.x - p.nC;
  const int owner = id / p.DC;
  const int64_t d0 = int64_t(id % p.DC) * kPDW;
  const int count = roleC ? p.NT : p.VTc;
  auto tile_of = [&](int k) -> int64_t {
    return roleC ? int64_t(k) * p.VTc + owner : int64_t(owner) * p.VTc + k;
  };
  // The kept flags of this block's tiles, read once into shared memory (after the stages).
  int *s_kept = reinterpret_cast<int *>(base + 2 * STAGE);
  const bool flags_in_smem = count <= kMaxFlags;
  if (flags_in_smem)
    for (int k = tid; k < count; k += kThreads) s_kept[k] = p.kept[tile_of(k)];
  __syncthreads();
  auto kept_at = [&](int k) { return flags_in_smem ? s_kept[k] : p.kept[tile_of(k)]; };
  auto next_kept = [&](int k) {
    while (k < count && !kept_at(k)) ++k;
    return k;
  };
  const T *E = static_cast<const T *>(p.E);
  const T *C = static_cast<const T *>(p.C);
  // Tile loads. Each thread copies the same 16-byte column chunk of rows r0 + 16 i (dy: 128 rows x
  // 16 chunks) and r0 + 8 i (operand: 128 rows x 32 chunks), so the swizzled shared-memory
  // offsets and the column part of the addresses are computed once; only the row bases change.
  const int dyc = tid & 15, dyr = tid >> 4;
  const int dyoff = (dyc >> 3) * BLK + dyr * 128 + (((dyc & 7) ^ (dyr & 7)) << 4);
  const int opc = tid & 31, opr = tid >> 5;
  const int opoff = (opc >> 3) * BLK + opr * 128 + (((opc & 7) ^ (opr & 7)) << 4);
  const int64_t opcol = d0 + opc * 8;
  const bool colok = opcol < p.D;
  auto load = [&](int stage, int k) {
    char *sz = base + stage * STAGE;
    char *so = sz + ZB;
    const T *src = tile_ptr<T>(p.dz, p.dz2, p.split, tile_of(k)) + dyr * kBN + dyc * 8;
#pragma unroll
    for (int i = 0; i < 8; ++i) cp_async16(sz + dyoff + i * 2048, src + i * 16 * kBN, true);
    if (roleC) {  // E rows of token block k
      const int64_t tok0 = int64_t(k) * kBM + opr;
      const T *rp = E + (tok0 < p.N ? tok0 : 0) * p.D + opcol;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const bool ok = colok && tok0 + 8 * i < p.N;
        cp_async16(so + opoff + i * 1024, ok ? (const void *)(rp + int64_t(8 * i) * p.D) : (const void *)E, ok);
      }
    } else {      // C rows of the vocabulary positions of tile k (through perm)
      const int64_t pos0 = p.p_begin + int64_t(k) * kBN + opr;
      int pv[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) pv[i] = pos0 + 8 * i < p.p_end ? p.perm[pos0 + 8 * i] : -1;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const bool ok = colok && pv[i] >= 0;
        cp_async16(so + opoff + i * 1024, ok ? (const void *)(C + int64_t(pv[i]) * p.D + opcol) : (const void *)E, ok);
      }
    }
  };

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  int cur = next_kept(0);
  if (cur < count) load(0, cur);
  cp_async_commit();
  int buf = 0;
  // Two stages. The wgmma of the current tile are issued first and the next tile's copies while
  // they run, so the address arithmetic of those copies (C rows through perm: a dependent
  // global load) hides behind the tensor cores. The barrier at the top of the next iteration
  // also guarantees that both warpgroups are done with the stage about to be refilled.
  // (p.early_load = 1, for measurement: the copies first, as before.)
  while (cur < count) {
    int nxt = next_kept(cur + 1);
    if (p.early_load) {
      if (nxt < count) load(buf ^ 1, nxt);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const char *sz = base + buf * STAGE;
    const char *so = sz + ZB;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    if (roleC) {  // A = dyᵀ, MN-major (M = vocabulary)
#pragma unroll
      for (int ks = 0; ks < 8; ++ks)
        Wgmma256<T, 1, 1>::run(acc, wg_desc2(sz + wg * BLK + ks * 2048, BLK, 1024),
                               wg_desc2(so + ks * 2048, BLK, 1024));
    } else {      // A = dy, K-major (K = vocabulary)
#pragma unroll
      for (int ks = 0; ks < 8; ++ks)
        Wgmma256<T, 0, 1>::run(acc, wg_desc2(sz + (ks >> 2) * BLK + wg * 64 * 128 + (ks & 3) * 32, 16, 1024),
                               wg_desc2(so + ks * 2048, BLK, 1024));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    if (!p.early_load) {
      if (nxt < count) load(buf ^ 1, nxt);
      cp_async_commit();
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    if (p.early_load) __syncthreads();
    cur = nxt;
    buf ^= 1;
  }
  cp_async_wait<0>();
  __syncthreads();

  // accumulator element (r, c): row wg*64 + (warp%4)*16 + lane/4 + 8r, column col(c)
  const int row0 = wg * 64 + (warp & 3) * 16 + (lane >> 2);
  auto colof = [&](int c) { return (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); };

  // First-order part of the skipped tiles, 32 at a time through shared memory.
  float *sv = reinterpret_cast<float *>(base);  // [32][128] row or column sums
  float *sm = sv + 32 * 128;                    // [32][256] tile means
  int *sf = reinterpret_cast<int *>(sm + 32 * 256);
  for (int k0 = 0; k0 < count; k0 += 32) {
    const int kn = min(32, count - k0);
    if (tid < 32) sf[tid] = tid < kn ? kept_at(k0 + tid) : 1;
    __syncthreads();
    // all loads of the block in flight together (fixed trip counts, predicated)
#pragma unroll 4
    for (int it = 0; it < 16; ++it) {
      int q = tid + it * kThreads, i = q >> 7, r = q & 127;
      float v = 0.f;
      if (!sf[i]) {
        int64_t tt = tile_of(k0 + i);
        v = roleC ? p.Tc[tt * kBN + r] : p.S[tt * kBM + r];
      }
      sv[q] = v;
    }
#pragma unroll 4
    for (int it = 0; it < 32; ++it) {
      int q = tid + it * kThreads, i = q >> 8, c = q & 255;
      int64_t col = d0 + c;
      float v = 0.f;
      if (!sf[i] && col < p.D) v = (roleC ? p.ebar : p.cbar)[int64_t(k0 + i) * p.D + col];
      sm[q] = v;
    }
    __syncthreads();
    for (int i = 0; i < kn; ++i) {
      if (sf[i]) continue;
      float a0 = sv[i * 128 + row0], a1 = sv[i * 128 + row0 + 8];
      const float *m = sm + i * 256;
#pragma unroll
      for (int j = 0; j < 32; ++j) {  // columns colof(2j), colof(2j) + 1
        const float2 b = *reinterpret_cast<const float2 *>(m + j * 8 + (lane & 3) * 2);
        acc[j * 4 + 0] = fmaf(a0, b.x, acc[j * 4 + 0]);
        acc[j * 4 + 1] = fmaf(a0, b.y, acc[j * 4 + 1]);
        acc[j * 4 + 2] = fmaf(a1, b.x, acc[j * 4 + 2]);
        acc[j * 4 + 3] = fmaf(a1, b.y, acc[j * 4 + 3]);
      }
    }
    __syncthreads();
  }

  const float gm = *p.gmax;
  float *stg = reinterpret_cast<float *>(base);  // [128][kPDW + 4]
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int c = 0; c < 64; ++c) stg[(row0 + 8 * h) * (kPDW + 4) + colof(c)] = acc[(c >> 1) * 4 + h * 2 + (c & 1)] * gm;
  __syncthreads();
  write_products<T>(p, roleC, owner, d0, kPDW, stg);
}
constexpr size_t kProductsWgSmem = size_t(2) * 6 * 16384 + 1024 + kMaxFlags * sizeof(int);
#endif

// ---- small kernels ---------------------------------------------------------------------------

// out[j][d] = mean over the rows of block j of X (rows row_begin + 128 j .. , below row_end,
// through perm when given). Block: 256 threads = 4 row groups x 64 column groups of 16 bytes.
template <class T>
__global__ void block_mean_kernel(const T *__restrict__ X, const int *__restrict__ perm,
                                  int64_t row_begin, int64_t row_end, int64_t D,
                                  float *__restrict__ out) {
  constexpr int VEC = 16 / sizeof(T);
  __shared__ float sh[4][64][VEC];
  const int j = blockIdx.y, cg = threadIdx.x & 63, rg = threadIdx.x >> 6;
  const int64_t d = (int64_t(blockIdx.x) * 64 + cg) * VEC;
  const int64_t r0 = row_begin + int64_t(j) * 128;
  float acc[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
  if (d < D) {
    for (int i = rg * 32; i < rg * 32 + 32; ++i) {
      int64_t r = r0 + i;
      if (r >= row_end) break;
      int64_t xr = perm ? perm[r] : r;
      uint4 raw = *reinterpret_cast<const uint4 *>(X + xr * D + d);
      const T *x = reinterpret_cast<const T *>(&raw);
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] += Elt<T>::load(x[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) sh[rg][cg][k] = acc[k];
  __syncthreads();
  if (rg == 0 && d < D) {
    int64_t n = row_end - r0;
    if (n > 128) n = 128;
    float inv = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      out[int64_t(j) * D + d + k] = (sh[0][cg][k] + sh[1][cg][k] + sh[2][cg][k] + sh[3][cg][k]) * inv;
  }
}

__global__ void tpos_kernel(const int *__restrict__ tgt, const int *__restrict__ invperm, int64_t N,
                            int *__restrict__ tpos) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < N) tpos[i] = tgt[i] >= 0 ? invperm[tgt[i]] : -1;
}

// out[d] += sum over a slice of rows of (wt ? wt[i] : 1) * X[i][d]
template <class T>
__global__ void colsum_kernel(const T *__restrict__ X, const float *__restrict__ wt, int64_t rows,
                              int64_t D, int64_t rows_per, float *__restrict__ out) {
  int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  int64_t i0 = int64_t(blockIdx.y) * rows_per, i1 = min(i0 + rows_per, rows);
  float acc = 0.f;
  for (int64_t i = i0; i < i1; ++i) {
    float x = Elt<T>::load(X[i * D + d]);
    acc += wt ? wt[i] * x : x;
  }
  atomicAdd(&out[d], acc);
}

// out[0] = sum x (when !absmax) or max |x|; one block of 256 threads, fixed order.
__global__ void reduce_rows_kernel(const float *__restrict__ x, int64_t n, int absmax, float *__restrict__ out) {
  __shared__ float sh[256];
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += 256) acc = absmax ? fmaxf(acc, fabsf(x[i])) : acc + x[i];
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int k = 128; k > 0; k >>= 1) {
    if (threadIdx.x < k) sh[threadIdx.x] = absmax ? fmaxf(sh[threadIdx.x], sh[threadIdx.x + k]) : sh[threadIdx.x] + sh[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = sh[0];
}

// dE[i][d] = acc[i][d] - u * w[i] * csum[d]
template <class T>
__global__ void finish_dE_kernel(const float *__restrict__ acc, const float *__restrict__ w,
                                 int64_t N, int64_t D, const float *__restrict__ csum, float u,
                                 T *__restrict__ dE) {
  int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= N * D) return;
  float v = acc[idx];
  if (csum) v -= u * w[idx / D] * csum[idx % D];
  dE[idx] = Elt<T>::store(v);
}

template <class T>
__global__ void finish_db_kernel(const float *__restrict__ acc, int64_t V, const float *wsum, float u,
                                 T *__restrict__ db) {
  int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= V) return;
  float x = acc[v];
  if (wsum) x -= u * wsum[0];
  db[v] = Elt<T>::store(x);
}

// ---- plan and workspace ---------------------------------------------------------------------

struct BwdPlan {
  bool lean;
  int64_t seg;  // first position of the last segment (V when not lean)
  int NT, VTc;  // token blocks; vocabulary tiles per chunk, staging in the workspace only
  int VTcBig;   // vocabulary tiles per chunk while dE's output buffer is free to stage in too
  size_t cub_bytes;
};

static BwdPlan plan_backward(int64_t N, int64_t D, int64_t V, int dtype, const Resolved &r,
                             bool want_dE, bool want_dC) {
  BwdPlan b;
  const int64_t elt = int64_t(elt_size(dtype));
  int64_t rows = (N * 4 + elt - 1) / elt;  // rows of dC that hold the f32 dE accumulator
  rows = (rows + kBN - 1) / kBN * kBN;
  b.lean = r.lean && want_dE && want_dC && rows + kBN <= V;
  b.seg = b.lean ? V - rows : V;
  b.NT = static_cast<int>((N + kBM - 1) / kBM);
  int64_t vt_all = (V + kBN - 1) / kBN;
  int64_t vtc;
  if (r.chunk_rows > 0) {
    vtc = (r.chunk_rows + kBN - 1) / kBN;
  } else {  // about 24 MiB of staged dy tiles
    vtc = (int64_t(24) << 20) / (int64_t(b.NT) * kTileElems * elt);
  }
  b.VTc = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(vtc, vt_all)));
  // Until dE is finished, its output buffer (N x D elements = N D / 16384 whole tiles) is free:
  // the chunks before that stage there as well, so they are larger at no memory cost.
  // (CCE_NO_DE_STAGING=1, for measurement only, turns this off.)
  const char *nods = std::getenv("CCE_NO_DE_STAGING");
  b.VTcBig = b.VTc;
  if (want_dE && r.chunk_rows == 0 && !(nods && nods[0] == '1')) {
    int64_t extra = (N * D / kTileElems) / b.NT;
    b.VTcBig = static_cast<int>(std::min<int64_t>(b.VTc + extra, vt_all));
  }
  b.cub_bytes = r.sort_vocab ? vocab_sort_temp_bytes(V) : 0;
  (void)D;
  return b;
}

struct BwdWs {
  int *count, *tgt, *tpos, *perm, *invperm, *vals, *kept;
  unsigned long long *kept_count;
  float *w, *gmax, *keys, *keys_out, *meanE, *csum, *esum, *wsum, *db_acc, *dE_acc;
  float *S, *Tc, *cbar, *ebar;
  void *dz, *cub;
};

static BwdWs carve_backward(Carver &cv, int64_t N, int64_t D, int64_t V, int dtype, const Resolved &r,
                            const BwdPlan &b, bool want_dE, bool want_dC, bool want_db) {
  BwdWs w = {};
  w.count = cv.take<int>(1);
  w.kept_count = cv.take<unsigned long long>(1);
  w.gmax = cv.take<float>(1);
  w.tgt = cv.take<int>(N);
  w.tpos = cv.take<int>(N);
  w.w = cv.take<float>(N);
  w.perm = cv.take<int>(V);
  w.invperm = cv.take<int>(V);
  if (r.sort_vocab) {
    w.keys = cv.take<float>(V);
    w.keys_out = cv.take<float>(V);
    w.vals = cv.take<int>(V);
    w.meanE = cv.take<float>(D);
    w.cub = cv.take<char>(b.cub_bytes);
  }
  if (r.split_uniform) {
    w.csum = cv.take<float>(D);
    w.esum = cv.take<float>(D);
    w.wsum = cv.take<float>(1);
  }
  if (want_db) w.db_acc = cv.take<float>(V);
  if (want_dE && !b.lean) w.dE_acc = cv.take<float>(size_t(N) * D);
  const size_t tiles = size_t(b.NT) * b.VTcBig;
  w.dz = cv.take<char>(size_t(b.NT) * b.VTc * kTileElems * elt_size(dtype));
  w.kept = cv.take<int>(tiles);
  w.S = cv.take<float>(tiles * kBM);
  w.Tc = cv.take<float>(tiles * kBN);
  w.cbar = cv.take<float>(size_t(b.VTcBig) * D);
  w.ebar = cv.take<float>(size_t(b.NT) * D);
  return w;
}

template <class T>
static int run_backward(const void *E, const void *C, const void *bias, const int64_t *targets,
                        int64_t N, int64_t D, int64_t V, int dtype, const Resolved &r,
                        const BwdPlan &b, BwdWs &w, const float *lse, const float *grad_loss,
                        void *dE, void *dC, void *dbias, int64_t *stats, cudaStream_t s) {
  const bool want_dE = dE != nullptr, want_dC = dC != nullptr, want_db = dbias != nullptr;
  const int NT = b.NT, VTc = b.VTc;
  const int DC = static_cast<int>((D + kPD - 1) / kPD);
  constexpr int VEC = 16 / sizeof(T);
  const unsigned mean_gx = static_cast<unsigned>((D / VEC + 63) / 64);

  CCE_CUDA(cudaMemsetAsync(w.count, 0, sizeof(int), s));
  CCE_CUDA(cudaMemsetAsync(w.kept_count, 0, sizeof(unsigned long long), s));
  launch_prep_targets(targets, N, V, r, w.tgt, w.count, s);
  CCE_LAUNCHED("prep_targets_kernel");
  launch_row_weights(w.tgt, grad_loss, w.count, N, r.reduction, w.w, s);
  CCE_LAUNCHED("row_weights_kernel");
  reduce_rows_kernel<<<1, 256, 0, s>>>(w.w, N, 1, w.gmax);
  CCE_LAUNCHED("reduce_rows_kernel(gmax)");
  CCE_TRY(build_vocab_order(E, C, bias, dtype, N, D, V, r.sort_vocab, b.seg, w.meanE, w.keys,
                            w.keys_out, w.vals, w.perm, w.invperm, w.cub, b.cub_bytes, s));
  tpos_kernel<<<static_cast<unsigned>((N + 255) / 256), 256, 0, s>>>(w.tgt, w.invperm, N, w.tpos);
  CCE_LAUNCHED("tpos_kernel");
  if (want_dC) {  // token-block means of E, for the first-order part of skipped tiles
    block_mean_kernel<T><<<dim3(mean_gx, NT), 256, 0, s>>>(static_cast<const T *>(E), nullptr, 0, N, D, w.ebar);
    CCE_LAUNCHED("block_mean_kernel(E)");
  }

  const float u = r.alpha / static_cast<float>(V);
  if (r.split_uniform) {
    CCE_CUDA(cudaMemsetAsync(w.csum, 0, D * sizeof(float), s));
    CCE_CUDA(cudaMemsetAsync(w.esum, 0, D * sizeof(float), s));
    const int64_t rp = 1024;
    dim3 gc(static_cast<unsigned>((D + 255) / 256), static_cast<unsigned>((V + rp - 1) / rp));
    colsum_kernel<T><<<gc, 256, 0, s>>>(static_cast<const T *>(C), nullptr, V, D, rp, w.csum);
    CCE_LAUNCHED("colsum_kernel(C)");
    dim3 ge(static_cast<unsigned>((D + 255) / 256), static_cast<unsigned>((N + rp - 1) / rp));
    colsum_kernel<T><<<ge, 256, 0, s>>>(static_cast<const T *>(E), w.w, N, D, rp, w.esum);
    CCE_LAUNCHED("colsum_kernel(E)");
    reduce_rows_kernel<<<1, 256, 0, s>>>(w.w, N, 0, w.wsum);
    CCE_LAUNCHED("reduce_rows_kernel(wsum)");
  }
  if (want_db) CCE_CUDA(cudaMemsetAsync(w.db_acc, 0, V * sizeof(float), s));
  float *dE_acc = w.dE_acc;
  if (want_dE && b.lean)
    dE_acc = reinterpret_cast<float *>(static_cast<char *>(dC) + size_t(b.seg) * D * sizeof(T));
  if (want_dE) CCE_CUDA(cudaMemsetAsync(dE_acc, 0, size_t(N) * D * sizeof(float), s));

  DzParams zp = {};
  zp.E = E;
  zp.C = C;
  zp.bias = bias;
  zp.perm = w.perm;
  zp.tpos = w.tpos;
  zp.lse = lse;
  zp.w = w.w;
  zp.gmax = w.gmax;
  zp.N = N;
  zp.D = D;
  zp.softcap = r.softcap;
  zp.uniform = r.split_uniform ? 0.f : u;
  zp.one_minus_alpha = 1.f - r.alpha;
  zp.zloss2 = 2.f * r.zloss;
  zp.eps = r.eps;
  zp.dz = w.dz;
  zp.dz2 = w.dz;
  zp.split = INT64_MAX;
  zp.kept = w.kept;
  zp.S = w.S;
  zp.Tc = w.Tc;

  ProdParams pp = {};
  pp.E = E;
  pp.C = C;
  pp.dz = w.dz;
  pp.dz2 = w.dz;
  pp.split = INT64_MAX;
  pp.perm = w.perm;
  pp.kept = w.kept;
  pp.S = w.S;
  pp.Tc = w.Tc;
  pp.cbar = w.cbar;
  pp.ebar = w.ebar;
  pp.gmax = w.gmax;
  pp.esum = r.split_uniform ? w.esum : nullptr;
  pp.u = u;
  pp.N = N;
  pp.D = D;
  pp.NT = NT;
  pp.DC = DC;
  pp.dE_acc = dE_acc;
  pp.dC = dC;

  constexpr size_t zsmem = DzLayout<T>::SMEM;
  size_t psmem = products_smem<T>();
  void (*prod)(ProdParams) = products_kernel<T>;
#if CCE_USE_WGMMA
  const char *nowg = std::getenv("CCE_NO_WGMMA_PRODUCTS");  // 1: the mma.sync products instead
  if constexpr (sizeof(T) == 2) if (!(nowg && nowg[0] == '1')) {
    prod = products_wg_kernel<T>;
    psmem = kProductsWgSmem;
    pp.DC = static_cast<int>((D + kPDW - 1) / kPDW);
  }
#endif
  const int PDC = pp.DC;
  const char *el = std::getenv("CCE_EARLY_LOAD");  // measurement only: the former loop order
  pp.early_load = el && el[0] == '1';
  CCE_CUDA(cudaFuncSetAttribute(dz_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(zsmem)));
  CCE_CUDA(cudaFuncSetAttribute(prod, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(psmem)));
  int64_t tiles_total = 0;
  // Timing aid only (wrong gradients): CCE_DEBUG_SKIP_PRODUCTS=1 leaves out the products.
  const char *dbg = std::getenv("CCE_DEBUG_SKIP_PRODUCTS");
  const bool skip_products = dbg && dbg[0] == '1';
  // big: dE's output buffer is still free; stage the first N D / 16384 tiles of a chunk there.
  auto run_range = [&](int64_t pb, int64_t pe, bool doE, bool doC, bool doB, bool count, bool big) -> int {
    const bool use_dE = big && b.VTcBig > VTc;
    const int64_t step = int64_t(use_dE ? b.VTcBig : VTc) * kBN;
    zp.dz = use_dE ? dE : w.dz;
    pp.dz = zp.dz;
    zp.split = use_dE ? N * D / kTileElems : INT64_MAX;
    pp.split = zp.split;
    for (int64_t s0 = pb; s0 < pe; s0 += step) {
      int64_t s1 = std::min(s0 + step, pe);
      int vt = static_cast<int>((s1 - s0 + kBN - 1) / kBN);
      zp.p_begin = s0;
      zp.p_end = s1;
      zp.db_acc = doB ? w.db_acc : nullptr;
      zp.kept_count = count ? w.kept_count : nullptr;
      if (count) tiles_total += int64_t(NT) * vt;
      dz_kernel<T><<<dim3((NT + DzLayout<T>::HB - 1) / DzLayout<T>::HB, vt), TileFor<T>::type::THREADS, zsmem, s>>>(zp);
      CCE_LAUNCHED("dz_kernel");
      if ((!doE && !doC) || skip_products) continue;
      if (doE) {  // vocabulary-tile means of C, for the first-order part of skipped tiles
        block_mean_kernel<T><<<dim3(mean_gx, vt), 256, 0, s>>>(static_cast<const T *>(C), w.perm, s0, s1, D, w.cbar);
        CCE_LAUNCHED("block_mean_kernel(C)");
      }
      pp.p_begin = s0;
      pp.p_end = s1;
      pp.VTc = vt;
      pp.nC = doC ? vt * PDC : 0;
      int blocks = pp.nC + (doE ? NT * PDC : 0);
      prod<<<blocks, kThreads, psmem, s>>>(pp);
      CCE_LAUNCHED("products_kernel");
    }
    return 0;
  };
  auto finish_dE = [&]() -> int {
    if (!want_dE) return 0;
    int64_t n = N * D;
    finish_dE_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(
        dE_acc, w.w, N, D, r.split_uniform ? w.csum : nullptr, u, static_cast<T *>(dE));
    CCE_LAUNCHED("finish_dE_kernel");
    return 0;
  };

  if (b.lean) {
    CCE_TRY(run_range(b.seg, V, true, false, false, false, true));  // A
    CCE_TRY(run_range(0, b.seg, true, true, want_db, true, true));  // B
    CCE_TRY(finish_dE());
    CCE_TRY(run_range(b.seg, V, false, true, want_db, true, false)); // C
  } else {
    CCE_TRY(run_range(0, V, want_dE, want_dC, want_db, true, want_dE));
    CCE_TRY(finish_dE());
  }
  if (want_db) {
    finish_db_kernel<T><<<static_cast<unsigned>((V + 255) / 256), 256, 0, s>>>(
        w.db_acc, V, r.split_uniform ? w.wsum : nullptr, u, static_cast<T *>(dbias));
    CCE_LAUNCHED("finish_db_kernel");
  }
  if (stats) {
    unsigned long long kept = 0;
    CCE_CUDA(cudaMemcpyAsync(&kept, w.kept_count, sizeof(kept), cudaMemcpyDeviceToHost, s));
    CCE_CUDA(cudaStreamSynchronize(s));
    stats[0] = tiles_total;
    stats[1] = static_cast<int64_t>(kept);
  }
  return 0;
}

}  // namespace cce

using namespace cce;

extern "C" size_t cce_backward_workspace_size(int64_t N, int64_t D, int64_t V, int dtype,
                                              const cce_options *opt, int want_dE, int want_dC,
                                              int want_dbias) {
  Resolved r = resolve(opt, dtype);
  BwdPlan b = plan_backward(N, D, V, dtype, r, want_dE != 0, want_dC != 0);
  Carver cv(nullptr);
  carve_backward(cv, N, D, V, dtype, r, b, want_dE != 0, want_dC != 0, want_dbias != 0);
  return cv.used;
}

extern "C" int cce_backward(const void *E, const void *C, const void *bias, const int64_t *targets,
                            int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                            const float *lse, const float *grad_loss, void *dE, void *dC,
                            void *dbias, void *workspace, size_t workspace_bytes, int64_t *stats,
                            void *stream) {
  CCE_TRY(check_common(E, C, targets, N, D, V, dtype, opt));
  if (!lse || !grad_loss) return fail(CCE_ERR_ARGUMENT, "lse and grad_loss must not be NULL");
  if ((reinterpret_cast<uintptr_t>(dE) | reinterpret_cast<uintptr_t>(dC)) % 16 != 0)
    return fail(CCE_ERR_ARGUMENT, "dE and dC must be 16-byte aligned");
  size_t need = cce_backward_workspace_size(N, D, V, dtype, opt, dE != nullptr, dC != nullptr,
                                            dbias != nullptr);
  if (!workspace || workspace_bytes < need)
    return fail(CCE_ERR_WORKSPACE, "backward workspace too small: need " + std::to_string(need) + " bytes");
  Resolved r = resolve(opt, dtype);
  BwdPlan b = plan_backward(N, D, V, dtype, r, dE != nullptr, dC != nullptr);
  Carver cv(workspace);
  BwdWs w = carve_backward(cv, N, D, V, dtype, r, b, dE != nullptr, dC != nullptr, dbias != nullptr);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == CCE_F32)
    return run_backward<float>(E, C, bias, targets, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, stats, s);
  if (dtype == CCE_F16)
    return run_backward<__half>(E, C, bias, targets, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, stats, s);
  return run_backward<__nv_bfloat16>(E, C, bias, targets, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, stats, s);
}
