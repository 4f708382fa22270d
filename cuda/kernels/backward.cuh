// backward.cuh — the backward pass, shared by its five files: the gradients of the loss with
// respect to E, C and the bias, with tile filtering, vocabulary sorting and float32
// accumulation, and no atomics on dE or dC.
//
//   backward_dz.cu        stage 1: dz tiles (dz_kernel)
//   backward_dz_tma.cu    stage 1 on Hopper for 16-bit types: the same tiles through the
//                         bulk-copy ring of tma.cuh from the chunk's gathered C rows (dz_tma_kernel)
//   backward_products.cu  stage 2: the gradient products, mma.sync / f32 FMA (products_kernel)
//   backward_wgmma.cu     stage 2 on Hopper: the same products through wgmma, staged by cp.async
//                         (products_wg_kernel) or fed by the bulk-copy ring (products_tma_kernel)
//   backward_launch.cu    the host side: plan, workspace, the launch sequence with its small
//                         kernels (means, sums, finishing), and the C entry points
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
#pragma once

#include "tma.cuh"

namespace cce {

constexpr int kTileElems = kBM * kBN;

// The staged dy tiles [NT][VTc] may span two buffers: tiles [0, split) in `a` (the caller's dE
// output, free until dE is finished), the rest in `b` (the workspace).
template <class T>
__device__ __forceinline__ T *tile_ptr(const void *a, const void *b, int64_t split, int64_t tile) {
  return tile < split ? const_cast<T *>(static_cast<const T *>(a)) + tile * kTileElems
                      : const_cast<T *>(static_cast<const T *>(b)) + (tile - split) * kTileElems;
}

// ---- stage 1: dz tiles (backward_dz.cu) ---------------------------------------------------

struct DzParams {
  const void *E, *C, *bias;
  const int *perm, *tpos;
  const float *lse, *w, *gmax;
  int64_t N, D;
  int64_t p_begin, p_end;  // sorted vocabulary positions of this chunk
  float softcap, uniform, one_minus_alpha, zloss2, eps;
  // Class weights (null without): cw[v] by vocabulary row, wt[i] = w_{t_i} per token row,
  // wstat[0] = W = sum_v w_v; u_all = a / V. Then, per entry,
  //   dz_iv = g_i [ (w_t (1 - a + 2 zl lse_i) + u_all W) p_iv - w_t (1 - a)[v = t_i] - uniform w_v ]
  const float *cw, *wt;
  const double *wstat;
  float u_all;
  void *dz;      // [NT][VTc][128][128] input type (f32 for f32): tiles [0, split) here,
  void *dz2;     //   the rest here, from tile `split` on (see tile_ptr)
  int64_t split;
  int *kept;     // [NT][VTc]
  float *S, *Tc; // [NT][VTc][128] row sums, column sums of dy / gmax (also dbias's source)
  unsigned long long *kept_count;  // or null
  // The dense products (dense_products.cu; bulk-copy dz stage only): ldz > 0 writes dy / gmax of
  // every tile as one row-major [NT·128][ldz] matrix at dz instead of tiles, and c_direct reads
  // the chunk's C rows in place (the unsorted order: perm is the identity), with no gather.
  int64_t ldz;
  bool c_direct;
};

template <class T> struct DzLayout {
  using Tile = typename TileFor<T>::type;
  static constexpr int HB = Tile::BM / kBM;              // 128-row token blocks per CUDA block
  static constexpr int LDZ = kBN + 16 / int(sizeof(T));  // 16-byte padded rows
  static constexpr size_t STAGE = size_t(Tile::BM) * LDZ * sizeof(T);
  static constexpr size_t RING = Tile::SMEM > STAGE ? Tile::SMEM : STAGE;
  // then the row sums' and column sums' partials (dz_sums) and the kept flags
  static constexpr size_t SMEM = RING + (size_t(Tile::RSLOTS + Tile::CSLOTS) * Tile::BM + 4) * sizeof(float);
};

// Per-row terms of the thread's rows: the upstream weight scaled by 1 / gmax (0 for ignored
// rows and rows past N, which makes them inactive), the target's sorted position, the lse and
// the z-loss factor 1 + 2 zl lse.
template <class Tile> struct DzRowTerms {
  float lse[Tile::R], w[Tile::R], coef[Tile::R], tc[Tile::R];
  int tp[Tile::R];
  bool act[Tile::R];
};

template <class Tile>
__device__ __forceinline__ void dz_row_terms(DzRowTerms<Tile> &rw, const DzParams &p, const Tile &t,
                                             int64_t tok0, float inv) {
#pragma unroll
  for (int r = 0; r < Tile::R; ++r) {
    int64_t gr = tok0 + t.row(r);
    rw.w[r] = gr < p.N ? p.w[gr] * inv : 0.f;
    rw.act[r] = rw.w[r] != 0.f;  // ignored rows and rows past N have w = 0
    rw.tp[r] = gr < p.N ? p.tpos[gr] : -1;
    rw.lse[r] = rw.act[r] ? p.lse[gr] : 0.f;
    if (p.wt) {  // class weights: w_t (1 - a + 2 zl lse) + (a / V) W, and w_t (1 - a) at the target
      float wt = gr < p.N ? p.wt[gr] : 0.f;
      rw.coef[r] = wt * (p.one_minus_alpha + p.zloss2 * rw.lse[r]) + p.u_all * static_cast<float>(p.wstat[0]);
      rw.tc[r] = wt * p.one_minus_alpha;
    } else {
      rw.coef[r] = 1.f + p.zloss2 * rw.lse[r];
      rw.tc[r] = p.one_minus_alpha;
    }
  }
}

// ---- stage 2: the gradient products (backward_products.cu, backward_wgmma.cu) -------------

struct ProdParams {
  const void *E, *C, *dz, *dz2;
  int64_t split;  // staged tiles [0, split) in dz, the rest in dz2
  const int *perm, *kept;
  const float *S, *Tc, *cbar, *ebar, *gmax, *esum;
  const float *cw;  // class weights or null: the uniform smoothing term of dC row v is u w_v esum
  float u;
  int64_t N, D, p_begin, p_end;
  int NT, VTc, DC, nC;  // token blocks, vocabulary tiles, column slices of D, dC blocks
  int early_load;       // wgmma products: issue the next tile's copies before this tile's wgmma
  float *dE_acc;        // [N][D] f32, or null
  void *dC;             // caller's dC (V, D), or null
};

constexpr int kPD = 128;  // columns of D per products_kernel block (products_wg_kernel: 256)

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
      const int64_t vrow = p.perm[pos];
      const float uw = p.cw ? p.u * p.cw[vrow] : p.u;
#pragma unroll
      for (int k = 0; k < 8; ++k)
        x[k] = stg[r * LDS + c + k] - (p.esum && col + k < p.D ? uw * p.esum[col + k] : 0.f);
      T *o = dC + vrow * p.D + col;
      if constexpr (sizeof(T) == 2) {
        union { uint4 u; T h[8]; } pk;
#pragma unroll
        for (int k = 0; k < 8; ++k) pk.h[k] = Elt<T>::store(x[k]);
        *reinterpret_cast<uint4 *>(o) = pk.u;
      } else {  // f32 allows D % 8 == 4: then the last chunk of a row has 4 columns, not 8
        reinterpret_cast<float4 *>(o)[0] = make_float4(x[0], x[1], x[2], x[3]);
        if (col + 4 < p.D) reinterpret_cast<float4 *>(o)[1] = make_float4(x[4], x[5], x[6], x[7]);
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

// ---- the kernels as the host sequence (backward_launch.cu) takes them ---------------------

using DzKernel = void (*)(DzParams);
template <class T> DzKernel dz_kernel_for();  // dz_kernel<T>

struct ProductsKernel {
  void (*fn)(ProdParams);
  size_t smem;  // dynamic shared memory per block
  int cols;     // columns of D per block
};
// dz_tma_kernel (backward_dz_tma.cu): whether it serves this call (a 16-bit type, sm_90a build,
// compute capability 9.0 device, CCE_DZ_CPASYNC unset), and its launch for the chunk
// [p.p_begin, p.p_end) of vtc tiles: the chunk's C rows gathered into Cs (at least
// (p_end - p_begin) x D elements), then the tiles.
bool tma_dz_usable(int dtype);
int launch_dz_tma(const DzParams &p, void *Cs, int dtype, int vtc, cudaStream_t s);
// products_tma_kernel (backward_wgmma.cu, sm_90a builds; CCE_PRODUCTS_CPASYNC=1 opts out): the wgmma
// products fed by the bulk-copy ring, for a 16-bit type when the dz stage has gathered the
// chunk's C rows into Cs;
// `blocks` as for the other products kernels (p.nC dC blocks, then the dE blocks).
int launch_products_tma(const ProdParams &p, const void *Cs, int dtype, int blocks, cudaStream_t s);
// products_kernel<T>: mma.sync for 16-bit types, f32 FMA for f32; kPD columns per block
template <class T> ProductsKernel products_mma_for();
#if CCE_USE_WGMMA
// products_wg_kernel<T>, 16-bit types only: wgmma, 256 columns per block
template <class T> ProductsKernel products_wgmma_for();
#endif

// The dense products (dense_products.cu): both products of a chunk of K vocabulary rows from
// v0 (unsorted order) as cuBLAS GEMMs over Z = dy / gmax ([N][ldz], row-major), alpha = *gmax:
// dE_acc += Z · C[v0, v0 + K) (when dE_acc), dC[v0, v0 + K) = Zᵀ · E (when dC). one and zero:
// the device constants 1 and 0 (dense_constants); ws: cuBLAS's workspace, part of ours.
struct DenseChunk {
  const void *E, *C, *Z;
  void *dC;
  float *dE_acc;
  const float *gmax, *one, *zero;
  int64_t N, D, K, ldz, v0;
  int dtype;
  void *ws;
  size_t ws_bytes;
};
// Whether the dense products serve this call: no filtering (r.eps = 0), a 16-bit type on the
// bulk-copy dz stage, cuBLAS found at run time, and CCE_DENSE_PRODUCTS not 0.
bool dense_products_wanted(const Resolved &r, int dtype);
int dense_constants(float *c, cudaStream_t s);  // c[0] = 1, c[1] = 0
int dense_products(const DenseChunk &k, cudaStream_t s);

}  // namespace cce
