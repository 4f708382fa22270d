// backward_wgmma.cu — stage 2 of the backward on Hopper (backward.cuh): the same gradient
// products as backward_products.cu through wgmma, for 16-bit types (built with
// CCE_USE_WGMMA, the sm_90a default).
#include <algorithm>

#include "backward.cuh"

namespace cce {

#if CCE_USE_WGMMA
// One block per (vocabulary tile or token block, 256 columns of D); two warpgroups, each
// owning 64 output rows x 256 columns (m64n256k16, 128 f32 accumulators per thread).
// Shared-memory images, 128-byte swizzled (chunk c of a 128-byte row r stored at c ^ (r % 8)):
//   dy tile:  2 blocks of 64 vocabulary columns, each 128 token rows x 128 bytes.
//             dE reads it K-major (rows = tokens = M); dC reads it MN-major (M = vocabulary).
//   operand:  4 blocks of 64 D columns, each 128 rows (K) x 128 bytes: MN-major B.
constexpr int kPDW = 256;
constexpr int kMaxFlags = 4096;  // kept flags held in shared memory (more: read from global)
constexpr int kBlk = 16384;  // one 128-row x 128-byte block of shared memory

// The wgmma of one kept tile (stage at sz, operand at so) into the warpgroup's accumulators.
template <class T>
__device__ __forceinline__ void wg_products_tile(float (&acc)[128], const char *sz, const char *so,
                                                 bool roleC, int wg) {
  constexpr int BLK = kBlk;
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
}

// What a products_wg_kernel block works on: dC (roleC: a vocabulary tile, running over the
// token blocks) or dE (a token block, running over the chunk's vocabulary tiles), columns
// [d0, d0 + 256) of D, `count` tiles, shared memory from `base`.
struct WgBlock {
  bool roleC;
  int owner, count;
  int64_t d0;
  char *base;
  // The first p.nC blocks of a launch take dC, one per (vocabulary tile, 256 columns), the rest
  // dE, one per (token block, 256 columns); both products kernels use this numbering.
  __device__ __forceinline__ WgBlock(const ProdParams &p, char *smem) : base(smem) {
    roleC = int(blockIdx.x) < p.nC;
    const int id = roleC ? blockIdx.x : blockIdx.x - p.nC;
    owner = id / p.DC;
    d0 = int64_t(id % p.DC) * kPDW;
    count = roleC ? p.NT : p.VTc;
  }
  // The staged tile of the block's k-th summand: token block k of the vocabulary tile (dC), or
  // vocabulary tile k of the token block (dE).
  __device__ __forceinline__ int64_t tile(const ProdParams &p, int k) const {
    return roleC ? int64_t(k) * p.VTc + owner : int64_t(owner) * p.VTc + k;
  }
};

// The products over the block's kept tiles, two stages deep: the wgmma of the current tile are
// issued first and the next tile's copies while they run, so the address arithmetic of those
// copies (C rows through perm: a dependent global load) hides behind the tensor cores. The
// barrier at the top of the next iteration also guarantees that both warpgroups are done with
// the stage about to be refilled. (p.early_load = 1, for measurement: the copies first, as
// before.) Ends with every copy landed.
template <class T, class NextKept, class Load>
__device__ __forceinline__ void wg_kept_tiles(float (&acc)[128], const ProdParams &p, const WgBlock &blk,
                                              int wg, const NextKept &next_kept, const Load &load) {
  constexpr int ZB = 2 * kBlk, STAGE = 6 * kBlk;
  const int count = blk.count;
  char *base = blk.base;
  int cur = next_kept(0);
  if (cur < count) load(0, cur);
  cp_async_commit();
  int buf = 0;
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
    wg_products_tile<T>(acc, sz, so, blk.roleC, wg);
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
}

// First-order part of the skipped tiles, 32 at a time through shared memory (at base): the
// tiles' row or column sums and the tile means of the operand, then rank-one updates of the
// accumulators (rows row0 and row0 + 8 of each column pair).
// `sync` synchronizes the 256 threads that hold the accumulators (the whole block here, the
// consumer warpgroups in products_tma_kernel).
struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

template <class KeptAt, class TileOf, class Sync = BlockSync>
__device__ __forceinline__ void wg_first_order(float (&acc)[128], const ProdParams &p, const WgBlock &blk,
                                               int row0, const KeptAt &kept_at, const TileOf &tile_of,
                                               const Sync &sync = Sync()) {
  const bool roleC = blk.roleC;
  const int count = blk.count;
  const int64_t d0 = blk.d0;
  char *base = blk.base;
  const int tid = threadIdx.x, lane = tid & 31;
  float *sv = reinterpret_cast<float *>(base);  // [32][128] row or column sums
  float *sm = sv + 32 * 128;                    // [32][256] tile means
  int *sf = reinterpret_cast<int *>(sm + 32 * 256);
  for (int k0 = 0; k0 < count; k0 += 32) {
    const int kn = min(32, count - k0);
    if (tid < 32) sf[tid] = tid < kn ? kept_at(k0 + tid) : 1;
    sync();
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
    sync();
    for (int i = 0; i < kn; ++i) {
      if (sf[i]) continue;
      float a0 = sv[i * 128 + row0], a1 = sv[i * 128 + row0 + 8];
      const float *m = sm + i * 256;
#pragma unroll
      for (int j = 0; j < 32; ++j) {  // the thread's columns colof(2j), colof(2j) + 1 (kernel)
        const float2 b = *reinterpret_cast<const float2 *>(m + j * 8 + (lane & 3) * 2);
        acc[j * 4 + 0] = fmaf(a0, b.x, acc[j * 4 + 0]);
        acc[j * 4 + 1] = fmaf(a0, b.y, acc[j * 4 + 1]);
        acc[j * 4 + 2] = fmaf(a1, b.x, acc[j * 4 + 2]);
        acc[j * 4 + 3] = fmaf(a1, b.y, acc[j * 4 + 3]);
      }
    }
    sync();
  }
}

// The accumulators times gmax into shared memory stg[128][256 + 4], then written out
// (write_products).
template <class T, class ColOf, class Sync = BlockSync>
__device__ __forceinline__ void wg_write(float (&acc)[128], const ProdParams &p, const WgBlock &blk,
                                         int row0, const ColOf &colof, const Sync &sync = Sync()) {
  const float gm = *p.gmax;
  float *stg = reinterpret_cast<float *>(blk.base);  // [128][kPDW + 4]
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int c = 0; c < 64; ++c) stg[(row0 + 8 * h) * (kPDW + 4) + colof(c)] = acc[(c >> 1) * 4 + h * 2 + (c & 1)] * gm;
  sync();
  write_products<T>(p, blk.roleC, blk.owner, blk.d0, kPDW, stg);
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1) products_wg_kernel(ProdParams p) {
  constexpr int BLK = kBlk;           // one 128-row x 128-byte block
  constexpr int ZB = 2 * BLK, STAGE = 6 * BLK;
  extern __shared__ __align__(16) char smem_raw[];
  char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const WgBlock blk(p, base);
  const bool roleC = blk.roleC;
  const int count = blk.count;
  const int64_t d0 = blk.d0;
  auto tile_of = [&](int k) { return blk.tile(p, k); };
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
  // (A lambda here rather than a function of its own: that variant compiled to other address
  // arithmetic, and splitting backward.cu was to leave the machine code as it was.)
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
  wg_kept_tiles<T>(acc, p, blk, wg, next_kept, load);
  __syncthreads();

  // accumulator element (r, c): row wg*64 + (warp%4)*16 + lane/4 + 8r, column col(c)
  const int row0 = wg * 64 + (warp & 3) * 16 + (lane >> 2);
  auto colof = [&](int c) { return (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); };

  wg_first_order(acc, p, blk, row0, kept_at, tile_of);

  wg_write<T>(acc, p, blk, row0, colof);
}
constexpr size_t kProductsWgSmem = size_t(2) * 6 * 16384 + 1024 + kMaxFlags * sizeof(int);

template <class T> ProductsKernel products_wgmma_for() {
  return ProductsKernel{products_wg_kernel<T>, kProductsWgSmem, kPDW};
}
template ProductsKernel products_wgmma_for<__half>();
template ProductsKernel products_wgmma_for<__nv_bfloat16>();

// ---- the same products through the bulk-copy ring (Hopper, 16-bit types) -------------------
//
// products_wg_kernel stages each kept tile by cp.async in two stages behind block-wide
// barriers, and ran at about a third of the tensor cores' rate. products_tma_kernel keeps its
// blocks, sums and epilogue but feeds the wgmma the way the forward does (tma.cuh): a producer
// warpgroup's one thread issues bulk tensor copies of each kept tile, in two steps of 64 along
// the summed dimension, into a 4-deep ring of 48 KiB slots; two consumer warpgroups wait on
// the slots' mbarriers and keep one wgmma group in flight, across tiles, with no block-wide
// barrier in the loop. A slot is 16 KiB of dy and 32 KiB of the operand, boxes of 64 x 64:
//   dE (A = dy, K-major): the 128 token rows of dy's 64 columns [64 h, 64 h + 64);
//      B = the chunk's C rows, gathered in sorted order by the dz stage (Cs), rows
//      [128 k + 64 h, +64) of tile k, as four 64-column blocks of D (MN-major);
//   dC (A = dyᵀ, MN-major): dy's token rows [64 h, +64) as two blocks of 64 vocabulary
//      columns (warpgroup wg takes block wg); B = E's rows [128 k + 64 h, +64) likewise.
// Rows past N or past the chunk and columns past D arrive as zeros. The same sums in the same
// order as products_wg_kernel's (tile by tile, 16 at a time along the summed dimension), so the
// same bits (harness/test_cuda.py compares them). The default where the bulk-copy dz stage runs;
// CCE_PRODUCTS_CPASYNC=1 (backward_launch.cu) selects products_wg_kernel instead.

struct ProdMaps {
  CUtensorMap dzA, dzB;  // staged dy tiles [0, split) and [split, ...): (tiles 128) x 128
  CUtensorMap E, Cs;     // E (N x D) and the chunk's gathered C rows, boxes of 64 x 64
};

constexpr int kPTABytes = 2 * 64 * 128;  // dy: two 64 x 64 boxes
constexpr int kPTStage = kPTABytes + 4 * 64 * 128;
static_assert(kPTStage == kTStageBytes, "the products' slots are the ring's");

template <class T>
__global__ void __launch_bounds__(kTThreads, 1) products_tma_kernel(const __grid_constant__ ProdMaps maps,
                                                                    ProdParams p) {
  extern __shared__ __align__(16) char smem_raw[];
  const TmaRing ring(smem_raw);
  int *s_kept = reinterpret_cast<int *>(ring.after());
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const WgBlock blk(p, ring.base);
  const bool roleC = blk.roleC;
  const int count = blk.count;
  auto tile_of = [&](int k) { return blk.tile(p, k); };
  const bool flags_in_smem = count <= kMaxFlags;
  if (tid == 0) ring.init();
  if (flags_in_smem)
    for (int k = tid; k < count; k += kTThreads) s_kept[k] = p.kept[tile_of(k)];
  __syncthreads();
  auto kept_at = [&](int k) { return flags_in_smem ? s_kept[k] : p.kept[tile_of(k)]; };
  auto next_kept = [&](int k) {
    while (k < count && !kept_at(k)) ++k;
    return k;
  };

  if (threadIdx.x >= 256) {  // the producer warpgroup: one thread issues every copy
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x != 256) return;
    const CUtensorMap *op = roleC ? &maps.E : &maps.Cs;
    int q = 0;
    for (int k = next_kept(0); k < count; k = next_kept(k + 1)) {
      const int64_t t = tile_of(k);
      const CUtensorMap *dz = t < p.split ? &maps.dzA : &maps.dzB;
      const int zr = static_cast<int>((t < p.split ? t : t - p.split) * kBM);
      for (int h = 0; h < 2; ++h, ++q) {
        const int st = q % kTStages;
        if (q >= kTStages) mbar_wait(&ring.empty[st], ((q / kTStages) - 1) & 1);
        char *sa = ring.base + st * kTStageBytes;
        uint64_t *full = &ring.full[st];
        mbar_expect_tx(full, kTStageBytes);
        if (roleC) {
          tma_load_2d(sa, dz, full, 0, zr + 64 * h);
          tma_load_2d(sa + 8192, dz, full, 64, zr + 64 * h);
        } else {
          tma_load_2d(sa, dz, full, 64 * h, zr);
          tma_load_2d(sa + 8192, dz, full, 64 * h, zr + 64);
        }
#pragma unroll
        for (int c = 0; c < 4; ++c)
          tma_load_2d(sa + kPTABytes + c * 8192, op, full, static_cast<int>(blk.d0) + 64 * c, k * kBM + 64 * h);
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  int q = 0;
  for (int k = next_kept(0); k < count; k = next_kept(k + 1)) {
    for (int h = 0; h < 2; ++h, ++q) {
      const int st = q % kTStages;
      mbar_wait(&ring.full[st], (q / kTStages) & 1);
      const char *sa = ring.base + st * kTStageBytes;
      const char *sb = sa + kPTABytes;
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
      if (roleC) {
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          Wgmma256<T, 1, 1>::run(acc, wg_desc2(sa + wg * 8192 + ks * 2048, 8192, 1024),
                                 wg_desc2(sb + ks * 2048, 8192, 1024));
      } else {
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          Wgmma256<T, 0, 1>::run(acc, wg_desc(sa + wg * 64 * 128 + ks * 32), wg_desc2(sb + ks * 2048, 8192, 1024));
      }
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
      if (q > 0 && lane == 0) mbar_arrive(&ring.empty[(q - 1) % kTStages]);
    }
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  // Every copy has landed (each slot was waited on): the ring is free for the epilogue.
  auto sync = [] { asm volatile("bar.sync 1, 256;\n" ::: "memory"); };
  sync();

  const int row0 = wg * 64 + (warp & 3) * 16 + (lane >> 2);
  auto colof = [&](int c) { return (c >> 1) * 8 + (lane & 3) * 2 + (c & 1); };
  wg_first_order(acc, p, blk, row0, kept_at, tile_of, sync);
  wg_write<T>(acc, p, blk, row0, colof, sync);
}

constexpr size_t kProductsTmaSmem = kTRingSmem + kMaxFlags * sizeof(int);
static_assert(size_t(kBM) * (kPDW + 4) * sizeof(float) <= size_t(kTStages) * kTStageBytes,
              "the epilogue's staging fits in the ring");

template <class T>
static int launch_products_tma_t(const ProdParams &p, const void *Cs, int dtype, int blocks, cudaStream_t s) {
  ProdMaps maps;
  const int64_t tiles = int64_t(p.NT) * p.VTc;
  const int64_t in_a = std::min<int64_t>(tiles, p.split), in_b = tiles - in_a;
  CCE_TRY(encode_rows(&maps.dzA, p.dz, dtype, in_a * kBM, kBN, 64));
  CCE_TRY(encode_rows(&maps.dzB, in_b > 0 ? p.dz2 : p.dz, dtype, (in_b > 0 ? in_b : in_a) * kBM, kBN, 64));
  CCE_TRY(encode_rows(&maps.E, p.E, dtype, p.N, p.D, 64));
  CCE_TRY(encode_rows(&maps.Cs, Cs, dtype, p.p_end - p.p_begin, p.D, 64));
  CCE_CUDA(cudaFuncSetAttribute(products_tma_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(kProductsTmaSmem)));
  products_tma_kernel<T><<<blocks, kTThreads, kProductsTmaSmem, s>>>(maps, p);
  CCE_LAUNCHED("products_tma_kernel");
  return 0;
}

int launch_products_tma(const ProdParams &p, const void *Cs, int dtype, int blocks, cudaStream_t s) {
  return dtype == CCE_BF16 ? launch_products_tma_t<__nv_bfloat16>(p, Cs, dtype, blocks, s)
                           : launch_products_tma_t<__half>(p, Cs, dtype, blocks, s);
}
#endif

}  // namespace cce
