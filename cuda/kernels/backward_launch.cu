// backward_launch.cu — the host side of the backward (backward.cuh): the plan (lean layout,
// chunk sizes), the workspace, the launch sequence of one cce_backward call, the small kernels
// it launches besides the two stages (tile means, column sums, reductions, finishing dE and
// dbias), and the C entry points.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "backward.cuh"

namespace cce {

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
    // The group's rows (up to 32) eight at a time, their loads issued before their sums: the
    // same additions in the same order as one row at a time, with eight loads in flight
    // instead of one (the kernel was latency-bound: 6% of the SM peak and 16% of DRAM's under
    // ncu, 18 µs a launch for 14 MB at the Gemma 2 shape).
    const int64_t first = r0 + rg * 32, left = row_end - first;
    const int nr = left <= 0 ? 0 : left < 32 ? static_cast<int>(left) : 32;
    for (int b = 0; b < nr; b += 8) {
      uint4 raw[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (b + u < nr) {
          const int64_t r = first + b + u;
          raw[u] = *reinterpret_cast<const uint4 *>(X + (perm ? int64_t(perm[r]) : r) * D + d);
        }
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (b + u < nr) {
          const T *x = reinterpret_cast<const T *>(&raw[u]);
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] += Elt<T>::load(x[k]);
        }
      }
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

// dbias of the chunk's positions from the dz stage's column sums, the token blocks added in
// order (deterministic; the dz kernels used to add each block's sums atomically):
// db[perm[pos]] += gmax * sum_b Tc[b][tile][col] for pos in [p_begin, p_end).
__global__ void dbias_from_sums_kernel(const float *__restrict__ Tc, const int *__restrict__ perm,
                                       const float *__restrict__ gmax, int64_t p_begin, int64_t p_end,
                                       int NT, int vtc, float *__restrict__ db) {
  const int64_t pos = p_begin + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pos >= p_end) return;
  const int64_t j = (pos - p_begin) / kBN, c = (pos - p_begin) % kBN;
  float tot = 0.f;
  for (int b = 0; b < NT; ++b) tot += Tc[(int64_t(b) * vtc + j) * kBN + c];
  if (tot != 0.f) db[perm[pos]] += tot * *gmax;
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

// db[v] = acc[v] - u * (cw ? cw[v] : 1) * wsum (the uniform smoothing term, class-weighted)
template <class T>
__global__ void finish_db_kernel(const float *__restrict__ acc, int64_t V, const float *wsum, float u,
                                 const float *__restrict__ cw, T *__restrict__ db) {
  int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= V) return;
  float x = acc[v];
  if (wsum) x -= u * (cw ? cw[v] : 1.f) * wsum[0];
  db[v] = Elt<T>::store(x);
}

// ---- plan and workspace ---------------------------------------------------------------------

// Vocabulary tiles per chunk of the dense products: at most `room`, and of the even counts
// down to half of it the one whose dz stage costs least per column. That launch
// (launch_dz_tma) runs NT token blocks x the chunk's pairs of tiles at about one block a
// multiprocessor, so its time goes by waves x pairs a block; a chunk whose pairs do not
// share out evenly leaves multiprocessors idle in every chunk. At the Gemma 2 shape (N 8192,
// D 2304: 18 tiles fit dE's buffer, NT = 64, 132 SMs) 9 pairs run as 128 blocks of 5 and 4
// pairs, 87% of the slots busy; 8 pairs as 128 blocks of 4, 97%: loss + gradients without
// filtering 73.7 to 74.5 ms against 77.6 to 78.5 there (Docs/CUDA.md). (CCE_DENSE_FIT=0:
// `room`, for comparisons.) The filtered chunks fitted the same way were not faster.
static int dense_chunk_tiles(int NT, int room, int sms) {
  const char *v = std::getenv("CCE_DENSE_FIT");
  if ((v && v[0] == '0') || room < 4 || sms < 1) return room;
  auto cost = [&](int vt) {  // waves x pairs a block, per tile
    const int64_t pairs = (vt + 1) / 2;
    const int64_t ppb = std::max<int64_t>(1, std::min<int64_t>((NT * pairs + sms - 1) / sms, pairs));
    const int64_t blocks = NT * ((pairs + ppb - 1) / ppb);
    return double((blocks + sms - 1) / sms * ppb) / vt;
  };
  int best = room;
  for (int vt = room & ~1; vt >= std::max(2, room / 2); vt -= 2)
    if (cost(vt) < cost(best) * 0.99) best = vt;
  return best;
}

struct BwdPlan {
  bool lean;
  int64_t seg;  // first position of the last segment (V when not lean)
  int NT, VTc;  // token blocks; vocabulary tiles per chunk, staging in the workspace only
  int VTcBig;   // vocabulary tiles per chunk while dE's output buffer is free to stage in too
  size_t cub_bytes;
  bool tma;        // dz_tma_kernel: the chunk's C rows are gathered into a buffer of cs_rows rows
  int64_t cs_rows;
  bool dense;      // the dense products (dense_products.cu): no filter, no sort, cuBLAS GEMMs
  int VTcDense;    // their vocabulary tiles per chunk while dE's output buffer holds the chunk's dy
};

// The bulk-copy products (products_tma_kernel) run where the bulk-copy dz stage does, unless
// CCE_PRODUCTS_CPASYNC=1 asks for the cp.async wgmma products (products_wg_kernel). (They were
// opt-in for a while: repeated calls' dE differed in the last bits now and then. The cause was
// not that kernel but the order of atomic adds in the set-up's mean of E, which could swap
// near-tied vocabulary entries; those sums are now added in a fixed order, and both products
// kernels give the same bits, call after call: harness/repeat_backward.py.)
static bool tma_products_wanted() {
  const char *v = std::getenv("CCE_PRODUCTS_CPASYNC");
  return !(v && v[0] == '1');
}

static BwdPlan plan_backward(int64_t N, int64_t D, int64_t V, int dtype, const Resolved &r,
                             bool want_dE, bool want_dC, bool tma, bool de_staging = true) {
  BwdPlan b;
  const int64_t elt = int64_t(elt_size(dtype));
  int64_t rows = (N * 4 + elt - 1) / elt;  // rows of dC that hold the f32 dE accumulator
  rows = (rows + kBN - 1) / kBN * kBN;
  b.lean = r.lean && want_dE && want_dC && rows + kBN <= V;
  b.seg = b.lean ? V - rows : V;
  b.NT = static_cast<int>((N + kBM - 1) / kBM);
  int64_t vt_all = (V + kBN - 1) / kBN;
  // Until dE is finished, its output buffer (N x D elements = N D / 16384 whole tiles) is free:
  // the chunks before that stage there as well, so they are larger at no memory cost.
  // (CCE_NO_DE_STAGING=1, for measurement only, turns this off.)
  const char *nods = std::getenv("CCE_NO_DE_STAGING");
  const bool big = de_staging && want_dE && r.chunk_rows == 0 && !(nods && nods[0] == '1');
  const int64_t extra = big ? (N * D / kTileElems) / b.NT : 0;
  const int64_t tile_bytes = int64_t(b.NT) * kTileElems * elt, crow_bytes = int64_t(kBN) * D * elt;
  int64_t vtc;
  if (r.chunk_rows > 0) {
    vtc = (r.chunk_rows + kBN - 1) / kBN;
  } else if (!tma) {  // about 24 MiB of staged dy tiles
    vtc = (int64_t(24) << 20) / tile_bytes;
  } else {  // the same 24 MiB for the staged tiles and the gathered C rows of the larger chunks
    const int64_t room = (int64_t(24) << 20) - extra * crow_bytes;
    vtc = room / (tile_bytes + crow_bytes);
    // Where not even one tile fits (large D: at N = 8192, D = 4096 the gathered rows of the
    // larger chunks alone take 32 MiB), the chunks stage in the workspace only (8 tiles at that
    // shape; loss + gradients 80.1 ms against 87.4 with the cp.async stages and the larger
    // chunks), and the cp.async dz stage and its plan serve only where not even that leaves
    // one tile (or where CCE_PRODUCTS_CPASYNC=1 asks for the cp.async products).
    if (vtc < 1)
      return big && tma_products_wanted() ? plan_backward(N, D, V, dtype, r, want_dE, want_dC, true, false)
                                          : plan_backward(N, D, V, dtype, r, want_dE, want_dC, false);
  }
  b.VTc = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(vtc, vt_all)));
  b.VTcBig = static_cast<int>(std::min<int64_t>(b.VTc + extra, vt_all));
  b.cub_bytes = r.sort_vocab ? vocab_sort_temp_bytes(V) : 0;
  b.tma = tma;
  b.cs_rows = tma ? int64_t(b.VTcBig) * kBN : 0;
  // A dense chunk's dy is one [NT·128][K] matrix: in dE's buffer (N x D elements) while it is
  // free, else in the workspace's staging room (VTc tiles).
  b.dense = false;
  b.VTcDense = want_dE ? static_cast<int>(std::min<int64_t>(N * D / (int64_t(b.NT) * kTileElems), vt_all)) : 0;
  return b;
}

struct BwdWs {
  int *count, *tgt, *tpos, *perm, *invperm, *vals, *kept;
  unsigned long long *kept_count;
  float *w, *gmax, *keys, *keys_out, *meanE, *csum, *esum, *wsum, *db_acc, *dE_acc;
  float *S, *Tc, *cbar, *ebar;
  float *consts;  // the dense products' alpha / beta constants 1 and 0
  float *wt;      // class weights: w_{t_i}
  double *wstat;  // class weights: W, sum_i w_{t_i}
  void *dz, *cub;
  size_t dz_bytes;  // also the scratch of the set-up's column sums (at least D floats)
  void *cs;  // the chunk's C rows in sorted order (dz_tma_kernel)
};

static BwdWs carve_backward(Carver &cv, int64_t N, int64_t D, int64_t V, int dtype, const Resolved &r,
                            const BwdPlan &b, bool want_dE, bool want_dC, bool want_db) {
  BwdWs w = {};
  w.count = cv.take<int>(1);
  w.kept_count = cv.take<unsigned long long>(1);
  w.gmax = cv.take<float>(1);
  w.consts = cv.take<float>(2);
  w.wstat = cv.take<double>(2);
  w.wt = cv.take<float>(N);
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
  const size_t tiles = size_t(b.NT) * std::max(b.VTcBig, b.dense ? b.VTcDense : 0);
  w.dz_bytes = std::max(size_t(b.NT) * b.VTc * kTileElems * elt_size(dtype), size_t(D) * sizeof(float));
  w.dz = cv.take<char>(w.dz_bytes);
  w.kept = cv.take<int>(tiles);
  w.S = cv.take<float>(tiles * kBM);
  w.Tc = cv.take<float>(tiles * kBN);
  w.cbar = cv.take<float>(size_t(b.VTcBig) * D);
  w.ebar = cv.take<float>(size_t(b.NT) * D);
  if (b.tma) w.cs = cv.take<char>(size_t(b.cs_rows) * D * elt_size(dtype));
  return w;
}

// One cce_backward call for element type T, as named steps. Each step enqueues its work on the
// stream and returns 0 or an error status; run_backward calls them in the order of the work
// on the stream.
template <class T> struct BackwardRun {
  const void *E, *C, *bias;
  const int64_t *targets;
  const float *weight;  // class weights (V, device) or null
  int64_t N, D, V;
  int dtype;
  const Resolved &r;
  const BwdPlan &b;
  BwdWs &w;
  const float *lse, *grad_loss;
  void *dE, *dC, *dbias;
  cudaStream_t s;
  bool want_dE, want_dC, want_db;
  int NT, VTc;
  unsigned mean_gx;  // blocks over D of block_mean_kernel
  float u;           // a / V
  float *dE_acc = nullptr;
  DzParams zp = {};
  ProdParams pp = {};
  DzKernel dz = nullptr;
  size_t zsmem = DzLayout<T>::SMEM;
  ProductsKernel prod = {};
  bool skip_products = false;
  bool tma_products = false;  // products_tma_kernel (with the bulk-copy dz stage's gathered C rows)
  int64_t tiles_total = 0;

  BackwardRun(const void *E, const void *C, const void *bias, const int64_t *targets,
              const float *weight, int64_t N, int64_t D, int64_t V, int dtype, const Resolved &r,
              const BwdPlan &b, BwdWs &w, const float *lse, const float *grad_loss, void *dE,
              void *dC, void *dbias, cudaStream_t s)
      : E(E), C(C), bias(bias), targets(targets), weight(weight), N(N), D(D), V(V), dtype(dtype), r(r), b(b),
        w(w), lse(lse), grad_loss(grad_loss), dE(dE), dC(dC), dbias(dbias), s(s) {
    want_dE = dE != nullptr;
    want_dC = dC != nullptr;
    want_db = dbias != nullptr;
    NT = b.NT;
    VTc = b.VTc;
    constexpr int VEC = 16 / sizeof(T);
    mean_gx = static_cast<unsigned>((D / VEC + 63) / 64);
    u = r.alpha / static_cast<float>(V);
  }

  // Targets after shift / ignore, the rows' upstream weights and their largest magnitude
  // (gmax), the vocabulary order, the targets' sorted positions, and for dC the token-block
  // means of E (the first-order part of skipped tiles).
  int prepare_rows() {
    CCE_CUDA(cudaMemsetAsync(w.count, 0, sizeof(int), s));
    CCE_CUDA(cudaMemsetAsync(w.kept_count, 0, sizeof(unsigned long long), s));
    launch_prep_targets(targets, N, V, r, w.tgt, w.count, s);
    CCE_LAUNCHED("prep_targets_kernel");
    if (weight) {
      launch_class_weight_terms(w.tgt, weight, N, V, w.wt, w.wstat, s);
      CCE_LAUNCHED("class_weight_terms_kernel");
    }
    launch_row_weights(w.tgt, grad_loss, w.count, N, r.reduction, w.w, weight ? w.wstat : nullptr, s);
    CCE_LAUNCHED("row_weights_kernel");
    reduce_rows_kernel<<<1, 256, 0, s>>>(w.w, N, 1, w.gmax);
    CCE_LAUNCHED("reduce_rows_kernel(gmax)");
    CCE_TRY(build_vocab_order(E, C, bias, dtype, N, D, V, r.sort_vocab, b.seg, w.meanE, w.keys,
                              w.keys_out, w.vals, w.perm, w.invperm, w.cub, b.cub_bytes, w.dz, w.dz_bytes, s));
    tpos_kernel<<<static_cast<unsigned>((N + 255) / 256), 256, 0, s>>>(w.tgt, w.invperm, N, w.tpos);
    CCE_LAUNCHED("tpos_kernel");
    if (want_dC && !b.dense) {  // token-block means of E, for the first-order part of skipped tiles
      block_mean_kernel<T><<<dim3(mean_gx, NT), 256, 0, s>>>(static_cast<const T *>(E), nullptr, 0, N, D, w.ebar);
      CCE_LAUNCHED("block_mean_kernel(E)");
    }
    return 0;
  }

  // Label smoothing without softcap: sum_v C_v, sum_i g_i E_i and sum_i g_i, for the exact
  // rank-one terms of the uniform -a/V part.
  int uniform_sums() {
    if (!r.split_uniform) return 0;
    // sum_v w_v C_v and sum_i g_i E_i, in a fixed order (the staging buffer is still free)
    CCE_TRY(column_sums(C, dtype, weight, V, D, 1.f, w.csum, w.dz, w.dz_bytes, s));
    CCE_TRY(column_sums(E, dtype, w.w, N, D, 1.f, w.esum, w.dz, w.dz_bytes, s));
    reduce_rows_kernel<<<1, 256, 0, s>>>(w.w, N, 0, w.wsum);
    CCE_LAUNCHED("reduce_rows_kernel(wsum)");
    return 0;
  }

  // The dbias and f32 dE accumulators, zeroed; dE's lives in dC's buffer in the lean layout.
  int zero_accumulators() {
    if (want_db) CCE_CUDA(cudaMemsetAsync(w.db_acc, 0, V * sizeof(float), s));
    dE_acc = w.dE_acc;
    if (want_dE && b.lean)
      dE_acc = reinterpret_cast<float *>(static_cast<char *>(dC) + size_t(b.seg) * D * sizeof(T));
    if (want_dE) CCE_CUDA(cudaMemsetAsync(dE_acc, 0, size_t(N) * D * sizeof(float), s));
    return 0;
  }

  // The two stages' parameters, but for the chunk's range and staging buffers (chunks()).
  void set_params() {
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
    zp.cw = weight;
    zp.wt = weight ? w.wt : nullptr;
    zp.wstat = w.wstat;
    zp.u_all = u;
    zp.eps = r.eps;
    zp.dz = w.dz;
    zp.dz2 = w.dz;
    zp.split = INT64_MAX;
    zp.kept = w.kept;
    zp.S = w.S;
    zp.Tc = w.Tc;

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
    pp.cw = weight;
    pp.u = u;
    pp.N = N;
    pp.D = D;
    pp.NT = NT;
    pp.dE_acc = dE_acc;
    pp.dC = dC;
  }

  // The dz kernel and the products kernel (wgmma for 16-bit types on Hopper, unless
  // CCE_NO_WGMMA_PRODUCTS=1: then mma.sync), with their shared-memory limits raised; the
  // measurement knobs CCE_EARLY_LOAD and CCE_DEBUG_SKIP_PRODUCTS.
  int choose_kernels() {
    dz = dz_kernel_for<T>();
    prod = products_mma_for<T>();
#if CCE_USE_WGMMA
    const char *nowg = std::getenv("CCE_NO_WGMMA_PRODUCTS");  // 1: the mma.sync products instead
    // With the bulk-copy dz stage the wgmma products are fed by the copy engine too, unless
    // CCE_PRODUCTS_CPASYNC=1 (tma_products_wanted).
    if constexpr (sizeof(T) == 2) {
      if (!(nowg && nowg[0] == '1')) {
        prod = products_wgmma_for<T>();
        tma_products = b.tma && tma_products_wanted();
      }
    }
#endif
    pp.DC = static_cast<int>((D + prod.cols - 1) / prod.cols);
    const char *el = std::getenv("CCE_EARLY_LOAD");  // measurement only: the former loop order
    pp.early_load = el && el[0] == '1';
    CCE_CUDA(cudaFuncSetAttribute(dz, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(zsmem)));
    CCE_CUDA(cudaFuncSetAttribute(prod.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(prod.smem)));
    // Timing aid only (wrong gradients): CCE_DEBUG_SKIP_PRODUCTS=1 leaves out the products.
    const char *dbg = std::getenv("CCE_DEBUG_SKIP_PRODUCTS");
    skip_products = dbg && dbg[0] == '1';
    return 0;
  }

  // Sorted vocabulary positions [pb, pe) in chunks; per chunk the dz stage, then, when dE or dC
  // is computed, the C tile means (for dE) and the products. doB: the dz stage adds its column
  // sums to dbias; count: the tiles enter the statistics. big: dE's output buffer is still
  // free; stage the first N D / 16384 tiles of a chunk there.
  int chunks(int64_t pb, int64_t pe, bool doE, bool doC, bool doB, bool count, bool big) {
    if (b.dense) return dense_chunks(pb, pe, doE, doC, doB, count, big);
    const int PDC = pp.DC;
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
      zp.kept_count = count ? w.kept_count : nullptr;
      if (count) tiles_total += int64_t(NT) * vt;
      if (b.tma) {
        CCE_TRY(launch_dz_tma(zp, w.cs, dtype, vt, s));
      } else {
        dz<<<dim3((NT + DzLayout<T>::HB - 1) / DzLayout<T>::HB, vt), TileFor<T>::type::THREADS, zsmem, s>>>(zp);
        CCE_LAUNCHED("dz_kernel");
      }
      if (doB && want_db) {
        dbias_from_sums_kernel<<<static_cast<unsigned>((s1 - s0 + 255) / 256), 256, 0, s>>>(
            w.Tc, w.perm, w.gmax, s0, s1, NT, vt, w.db_acc);
        CCE_LAUNCHED("dbias_from_sums_kernel");
      }
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
      if (tma_products) {
        CCE_TRY(launch_products_tma(pp, w.cs, dtype, blocks, s));
        continue;
      }
      prod.fn<<<blocks, kThreads, prod.smem, s>>>(pp);
      CCE_LAUNCHED("products_kernel");
    }
    return 0;
  }

  // The same for the dense products (no filter, unsorted vocabulary): per chunk the dz stage
  // writes dy / gmax of every tile as one row-major matrix Z (in dE's buffer while it is free,
  // else in the workspace's staging room), the dz stage's column sums go to dbias, and two
  // cuBLAS GEMMs add Z · C_chunk to dE's accumulator and write dC's chunk rows.
  int dense_chunks(int64_t pb, int64_t pe, bool doE, bool doC, bool doB, bool count, bool big) {
    const bool in_dE = big && b.VTcDense >= 1 && r.chunk_rows == 0;  // (dc_chunk_rows: the workspace)
    const int vt_max = dense_chunk_tiles(NT, in_dE ? b.VTcDense : VTc, sm_count());
    void *Z = in_dE ? dE : w.dz;
    const int64_t ldz = int64_t(vt_max) * kBN;
    zp.dz = Z;
    zp.ldz = ldz;
    zp.c_direct = true;
    zp.split = INT64_MAX;
    for (int64_t s0 = pb; s0 < pe; s0 += ldz) {
      const int64_t s1 = std::min(s0 + ldz, pe);
      const int vt = static_cast<int>((s1 - s0 + kBN - 1) / kBN);
      zp.p_begin = s0;
      zp.p_end = s1;
      zp.kept_count = count ? w.kept_count : nullptr;
      if (count) tiles_total += int64_t(NT) * vt;
      CCE_TRY(launch_dz_tma(zp, w.cs, dtype, vt, s));
      if (doB && want_db) {
        dbias_from_sums_kernel<<<static_cast<unsigned>((s1 - s0 + 255) / 256), 256, 0, s>>>(
            w.Tc, w.perm, w.gmax, s0, s1, NT, vt, w.db_acc);
        CCE_LAUNCHED("dbias_from_sums_kernel");
      }
      if ((!doE && !doC) || skip_products) continue;
      DenseChunk k = {};
      k.E = E;
      k.C = C;
      k.Z = Z;
      k.dC = doC ? dC : nullptr;
      k.dE_acc = doE ? dE_acc : nullptr;
      k.gmax = w.gmax;
      k.one = w.consts;
      k.zero = w.consts + 1;
      k.N = N;
      k.D = D;
      k.K = s1 - s0;
      k.ldz = ldz;
      k.v0 = s0;
      k.dtype = dtype;
      k.ws = w.cs;
      k.ws_bytes = size_t(b.cs_rows) * D * elt_size(dtype);
      CCE_TRY(dense_products(k, s));
    }
    zp.ldz = 0;
    zp.c_direct = false;
    return 0;
  }

  // dE in the input type from its f32 accumulator (minus the uniform smoothing term).
  int finish_dE() {
    if (!want_dE) return 0;
    int64_t n = N * D;
    finish_dE_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(
        dE_acc, w.w, N, D, r.split_uniform ? w.csum : nullptr, u, static_cast<T *>(dE));
    CCE_LAUNCHED("finish_dE_kernel");
    return 0;
  }

  // dbias in the input type from its f32 accumulator (minus the uniform smoothing term).
  int finish_db() {
    if (!want_db) return 0;
    finish_db_kernel<T><<<static_cast<unsigned>((V + 255) / 256), 256, 0, s>>>(
        w.db_acc, V, r.split_uniform ? w.wsum : nullptr, u, weight, static_cast<T *>(dbias));
    CCE_LAUNCHED("finish_db_kernel");
    return 0;
  }

  // stats = {tiles of the passes that count, of which kept}; synchronizes the stream.
  int report(int64_t *stats) {
    unsigned long long kept = 0;
    CCE_CUDA(cudaMemcpyAsync(&kept, w.kept_count, sizeof(kept), cudaMemcpyDeviceToHost, s));
    CCE_CUDA(cudaStreamSynchronize(s));
    stats[0] = tiles_total;
    stats[1] = static_cast<int64_t>(kept);
    return 0;
  }
};

// The lean layout runs three passes over the vocabulary (A: [seg, V) for dE; B: [0, seg) for
// dE and dC; dE finished; C: [seg, V) for dC), the plain one a single pass.
template <class T>
static int run_backward(const void *E, const void *C, const void *bias, const int64_t *targets,
                        const float *weight, int64_t N, int64_t D, int64_t V, int dtype,
                        const Resolved &r, const BwdPlan &b, BwdWs &w, const float *lse,
                        const float *grad_loss, void *dE, void *dC, void *dbias, int64_t *stats,
                        cudaStream_t s) {
  BackwardRun<T> run(E, C, bias, targets, weight, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, s);
  const bool want_dE = run.want_dE, want_dC = run.want_dC, want_db = run.want_db;
  CCE_TRY(run.prepare_rows());
  if (b.dense) CCE_TRY(dense_constants(w.consts, s));
  CCE_TRY(run.uniform_sums());
  CCE_TRY(run.zero_accumulators());
  run.set_params();
  CCE_TRY(run.choose_kernels());
  if (b.lean) {
    CCE_TRY(run.chunks(b.seg, V, true, false, false, false, true));  // A
    CCE_TRY(run.chunks(0, b.seg, true, true, want_db, true, true));  // B
    CCE_TRY(run.finish_dE());
    CCE_TRY(run.chunks(b.seg, V, false, true, want_db, true, false)); // C
  } else {
    CCE_TRY(run.chunks(0, V, want_dE, want_dC, want_db, true, want_dE));
    CCE_TRY(run.finish_dE());
  }
  CCE_TRY(run.finish_db());
  if (stats) CCE_TRY(run.report(stats));
  return 0;
}

}  // namespace cce

using namespace cce;

extern "C" size_t cce_backward_workspace_size(int64_t N, int64_t D, int64_t V, int dtype,
                                              const cce_options *opt, int want_dE, int want_dC,
                                              int want_dbias) {
  Resolved r = resolve(opt);
  size_t need = 0;
  for (bool tma : {false, true}) {  // room for either dz kernel's plan
    if (tma && dtype == CCE_F32) continue;
    BwdPlan b = plan_backward(N, D, V, dtype, r, want_dE != 0, want_dC != 0, tma);
    b.dense = b.tma && r.eps <= 0.f;  // room for the dense products' chunks, should they serve
    Carver cv(nullptr);
    carve_backward(cv, N, D, V, dtype, r, b, want_dE != 0, want_dC != 0, want_dbias != 0);
    need = std::max(need, cv.used);
  }
  return need;
}

extern "C" int cce_backward(const void *E, const void *C, const void *bias, const int64_t *targets,
                            int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                            const float *lse, const float *grad_loss, void *dE, void *dC,
                            void *dbias, void *workspace, size_t workspace_bytes, int64_t *stats,
                            void *stream) {
  return cce_backward_weighted(E, C, bias, targets, N, D, V, dtype, nullptr, opt, lse, grad_loss,
                               dE, dC, dbias, workspace, workspace_bytes, stats, stream);
}

extern "C" int cce_backward_weighted(const void *E, const void *C, const void *bias,
                                     const int64_t *targets, int64_t N, int64_t D, int64_t V,
                                     int dtype, const float *weight, const cce_options *opt,
                                     const float *lse, const float *grad_loss, void *dE, void *dC,
                                     void *dbias, void *workspace, size_t workspace_bytes,
                                     int64_t *stats, void *stream) {
  CCE_TRY(check_common(E, C, targets, N, D, V, dtype, opt));
  CCE_TRY(check_weight(weight));
  if (!lse || !grad_loss) return fail(CCE_ERR_ARGUMENT, "lse and grad_loss must not be NULL");
  if ((reinterpret_cast<uintptr_t>(dE) | reinterpret_cast<uintptr_t>(dC)) % 16 != 0)
    return fail(CCE_ERR_ARGUMENT, "dE and dC must be 16-byte aligned");
  size_t need = cce_backward_workspace_size(N, D, V, dtype, opt, dE != nullptr, dC != nullptr,
                                            dbias != nullptr);
  if (!workspace || workspace_bytes < need)
    return fail(CCE_ERR_WORKSPACE, "backward workspace too small: need " + std::to_string(need) + " bytes");
  Resolved r = resolve(opt);
  // Without filtering, the dense products (cuBLAS) serve where they can; they need neither the
  // vocabulary order nor the uniform term kept out of the tiles (the term is then in dy).
  const bool dense = (dE || dC) && dense_products_wanted(r, dtype);
  if (dense) {
    r.sort_vocab = false;
    r.split_uniform = false;
  }
  BwdPlan b = plan_backward(N, D, V, dtype, r, dE != nullptr, dC != nullptr, tma_dz_usable(dtype));
  b.dense = dense && b.tma;
  Carver cv(workspace);
  BwdWs w = carve_backward(cv, N, D, V, dtype, r, b, dE != nullptr, dC != nullptr, dbias != nullptr);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == CCE_F32)
    return run_backward<float>(E, C, bias, targets, weight, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, stats, s);
  if (dtype == CCE_F16)
    return run_backward<__half>(E, C, bias, targets, weight, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, stats, s);
  return run_backward<__nv_bfloat16>(E, C, bias, targets, weight, N, D, V, dtype, r, b, w, lse, grad_loss, dE, dC, dbias, stats, s);
}
