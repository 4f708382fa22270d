// forward_lse.cu — the forward: per-row log-sum-exp of the logits and the indexed dot
// z_{i, t_i}, without ever storing the N x V logits.
//
// lse_tma_kernel (forward_tma.cu): on Hopper for 16-bit types, the per-split partials with the
//   operands brought in by the bulk tensor copy engine; the default there.
// lse_partial_kernel: the same partials with tiles loaded by cp.async (tiles.cuh): f32, other
//   GPUs, and CCE_FORWARD_CPASYNC=1. Grid (token blocks, vocabulary splits). A block owns 128 token rows
//   and a contiguous run of 128-wide vocabulary tiles; for each tile it computes the logit
//   tile (tiles.cuh), applies bias and softcap, and folds it into per-thread online
//   (max, sum exp, sum z) triples; the entry whose column is the row's target is written
//   to ztgt (exactly one block writes each row). At the end the 16 threads sharing a row
//   merge through shared memory and write one partial per (split, row).
// lse_finish_kernel: merges the splits of each row: lse, per-row loss.
// reduce_kernel: one block; sums the per-row losses in a fixed order (deterministic).
#include <cmath>
#include <cstdlib>

#include "forward.cuh"

namespace cce {

template <class T>
__global__ void __launch_bounds__(TileFor<T>::type::THREADS, TileFor<T>::type::MINB) lse_partial_kernel(FwdParams p) {
  using Tile = typename TileFor<T>::type;
  extern __shared__ __align__(16) char smem[];
  const T *E = static_cast<const T *>(p.E);
  const T *C = static_cast<const T *>(p.C);
  const T *bias = static_cast<const T *>(p.bias);
  Tile t;
  constexpr int BM = Tile::BM;
  const int64_t tok0 = int64_t(blockIdx.x) * BM;
  const int split = blockIdx.y;
  const int vt0 = split * p.tiles_per_split;
  const int vt1 = min(vt0 + p.tiles_per_split, p.ntiles);

  float m[Tile::R], s[Tile::R], zs[Tile::R];
  int tg[Tile::R];
#pragma unroll
  for (int r = 0; r < Tile::R; ++r) {
    m[r] = -INFINITY;
    s[r] = 0.f;
    zs[r] = 0.f;
    int64_t gr = tok0 + t.row(r);
    tg[r] = gr < p.N ? p.tgt[gr] : -1;
  }

  for (int vt = vt0; vt < vt1; ++vt) {
    const int64_t p0 = int64_t(vt) * kBN;
    t.run(E, p.N, tok0, C, nullptr, p0, p.V, p.D, smem);
    float bv[Tile::Cc], wv[Tile::Cc];
    bool in[Tile::Cc];
#pragma unroll
    for (int c = 0; c < Tile::Cc; ++c) {
      int64_t v = p0 + t.col(c);
      in[c] = v < p.V;
      bv[c] = (bias && in[c]) ? Elt<T>::load(bias[v]) : 0.f;
      wv[c] = (p.cw && in[c]) ? p.cw[v] : 1.f;
    }
#pragma unroll
    for (int r = 0; r < Tile::R; ++r) {
      float tmax = -INFINITY;
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) {
        float z = in[c] ? cap(t.at(r, c) + bv[c], p.softcap) : -INFINITY;
        t.at(r, c) = z;
        tmax = fmaxf(tmax, z);
      }
      float nm = fmaxf(m[r], tmax);
      float acc = (m[r] == -INFINITY) ? 0.f : s[r] * __expf(m[r] - nm);
      float zsum = 0.f;
#pragma unroll
      for (int c = 0; c < Tile::Cc; ++c) {
        float z = t.at(r, c);
        if (in[c]) {
          acc += __expf(z - nm);
          zsum += p.cw ? wv[c] * z : z;
          if (p0 + t.col(c) == tg[r]) p.ztgt[tok0 + t.row(r)] = z;
        }
      }
      m[r] = nm;
      s[r] = acc;
      zs[r] += zsum;
    }
  }

  // Merge the SLOTS threads that share each row.
  __syncthreads();
  float *red = reinterpret_cast<float *>(smem);  // [3][SLOTS][BM]
  const int sl = t.slot();
#pragma unroll
  for (int r = 0; r < Tile::R; ++r) {
    int row = t.row(r);
    red[(0 * Tile::SLOTS + sl) * BM + row] = m[r];
    red[(1 * Tile::SLOTS + sl) * BM + row] = s[r];
    red[(2 * Tile::SLOTS + sl) * BM + row] = zs[r];
  }
  __syncthreads();
  if (threadIdx.x < BM) {
    int row = threadIdx.x;
    int64_t gr = tok0 + row;
    if (gr < p.N) {
      float M = -INFINITY;
      for (int k = 0; k < Tile::SLOTS; ++k) M = fmaxf(M, red[(0 * Tile::SLOTS + k) * BM + row]);
      float S = 0.f, Z = 0.f;
      for (int k = 0; k < Tile::SLOTS; ++k) {
        float mk = red[(0 * Tile::SLOTS + k) * BM + row];
        if (mk != -INFINITY) S += red[(1 * Tile::SLOTS + k) * BM + row] * __expf(mk - M);
        Z += red[(2 * Tile::SLOTS + k) * BM + row];
      }
      p.part_m[int64_t(split) * p.N + gr] = M;
      p.part_s[int64_t(split) * p.N + gr] = S;
      p.part_z[int64_t(split) * p.N + gr] = Z;
    }
  }
}

__global__ void lse_finish_kernel(const float *__restrict__ pm, const float *__restrict__ ps,
                                  const float *__restrict__ pz, const float *__restrict__ ztgt,
                                  const int *__restrict__ tgt, int64_t N, int64_t V, int splits,
                                  float alpha, float zloss, const float *__restrict__ wt,
                                  const double *__restrict__ wstat, float *__restrict__ lse_out,
                                  float *__restrict__ loss_row) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float M = -INFINITY;
  for (int k = 0; k < splits; ++k) M = fmaxf(M, pm[k * N + i]);
  float S = 0.f, Z = 0.f;
  for (int k = 0; k < splits; ++k) {
    float mk = pm[k * N + i];
    if (mk != -INFINITY) S += ps[k * N + i] * __expf(mk - M);
    Z += pz[k * N + i];
  }
  float lse = M + logf(S);
  if (lse_out) lse_out[i] = lse;
  float loss = 0.f;
  if (tgt[i] >= 0 && wt) {  // class weights: Z is sum_v w_v z_v
    float w = wt[i];
    loss = w * ((1.f - alpha) * (lse - ztgt[i]) + zloss * lse * lse);
    if (alpha > 0.f) loss += alpha / static_cast<float>(V) * (static_cast<float>(wstat[0]) * lse - Z);
  } else if (tgt[i] >= 0) {
    loss = lse - (1.f - alpha) * ztgt[i] + zloss * lse * lse;
    if (alpha > 0.f) loss -= alpha / static_cast<float>(V) * Z;
  }
  loss_row[i] = loss;
}

// Sum (and mean over valid rows) in double, fixed order: deterministic.
// With class weights (wstat != null) the mean divides by wstat[1] = sum_i w_{t_i}.
__global__ void reduce_kernel(const float *__restrict__ loss_row, int64_t N, const int *count,
                              const double *wstat, int mean, float *__restrict__ out) {
  __shared__ double sh[1024];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) acc += loss_row[i];
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double v = sh[0];
    if (mean) v = v / (wstat ? wstat[1] : static_cast<double>(*count));  // 0 / 0 = NaN when every row is ignored
    out[0] = static_cast<float>(v);
  }
}

struct FwdPlan {
  int ntiles, splits, tiles_per_split;
};

// Vocabulary splits for token blocks of tile_m rows and tiles of tile_n entries.
static FwdPlan plan_forward(int64_t N, int64_t V, int tile_m, int tile_n, int sms) {
  FwdPlan f;
  f.ntiles = static_cast<int>((V + tile_n - 1) / tile_n);
  int64_t tblocks = (N + tile_m - 1) / tile_m;
  // About 16 blocks per multiprocessor in all: enough waves to hide the tail.
  int64_t want = (int64_t(sms) * 16 + tblocks - 1) / tblocks;
  if (want < 1) want = 1;
  if (want > f.ntiles) want = f.ntiles;
  if (want > 65535) want = 65535;
  f.tiles_per_split = static_cast<int>((f.ntiles + want - 1) / want);
  f.splits = (f.ntiles + f.tiles_per_split - 1) / f.tiles_per_split;
  return f;
}
// The bulk-copy kernel runs one block per multiprocessor, every block the same work but the
// last split's: blocks go in waves of `sms`, and a last wave that fills few of them idles the
// rest (N = 8192, V = 128256: 64 token blocks x 32 splits = 2048 blocks, 15.5 waves, so the
// call lasts 16 waves of 16 tiles where 15.5 would do). Among up to twice the splits of the
// plan above, take the one whose waves x (tiles per split + a block's ramp, about 1/20 of a
// tile) is least: there 63 splits of 8 tiles, 31 waves of 8.05. CCE_FORWARD_WAVE_PLAN=0 (read
// on every call) keeps the plan above.
static bool wave_plan() {
  const char *env = std::getenv("CCE_FORWARD_WAVE_PLAN");
  return !(env && env[0] == '0');
}
static FwdPlan plan_forward_waves(int64_t N, int64_t V, bool waves) {
  const int sms = sm_count();
  FwdPlan f = plan_forward(N, V, kTmaFM, kTmaFN, sms);
  if (!waves) return f;
  const int64_t tblocks = (N + kTmaFM - 1) / kTmaFM;
  auto cost = [&](int tps) {
    const int64_t splits = (f.ntiles + tps - 1) / tps;
    const int64_t waves = (tblocks * splits + sms - 1) / sms;
    return static_cast<double>(waves) * (tps + 0.05);
  };
  double best = cost(f.tiles_per_split);
  for (int s = 1; s <= 2 * f.splits && s <= f.ntiles && s <= 65535; ++s) {
    const int tps = (f.ntiles + s - 1) / s;
    const double c = cost(tps);
    if (c < best - 1e-9) {
      best = c;
      f.tiles_per_split = tps;
    }
  }
  f.splits = (f.ntiles + f.tiles_per_split - 1) / f.tiles_per_split;
  return f;
}
static FwdPlan plan_forward(int64_t N, int64_t V, bool tma) {
  return tma ? plan_forward_waves(N, V, wave_plan()) : plan_forward(N, V, kBM, kBN, sm_count());
}

struct FwdWs {
  int *tgt, *count;
  float *pm, *ps, *pz, *ztgt, *loss_row, *wt;
  double *wstat;
};

static FwdWs carve_forward(Carver &cv, int64_t N, const FwdPlan &f) {
  FwdWs w;
  w.count = cv.take<int>(1);
  w.wstat = cv.take<double>(2);  // class weights: W, sum_i w_{t_i}
  w.wt = cv.take<float>(N);      // class weights: w_{t_i}
  w.tgt = cv.take<int>(N);
  w.ztgt = cv.take<float>(N);
  w.loss_row = cv.take<float>(N);
  w.pm = cv.take<float>(size_t(f.splits) * N);
  w.ps = cv.take<float>(size_t(f.splits) * N);
  w.pz = cv.take<float>(size_t(f.splits) * N);
  return w;
}

template <class T>
static int launch_partial(const FwdParams &p, dim3 grid, cudaStream_t s) {
  using Tile = typename TileFor<T>::type;
  size_t smem = Tile::SMEM;
  size_t red = size_t(3) * Tile::SLOTS * Tile::BM * sizeof(float);
  if (red > smem) smem = red;
  CCE_CUDA(cudaFuncSetAttribute(lse_partial_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(smem)));
  grid.x = static_cast<unsigned>((p.N + Tile::BM - 1) / Tile::BM);
  lse_partial_kernel<T><<<grid, Tile::THREADS, smem, s>>>(p);
  CCE_LAUNCHED("lse_partial_kernel");
  return 0;
}

}  // namespace cce

using namespace cce;

extern "C" size_t cce_forward_workspace_size(int64_t N, int64_t D, int64_t V, int dtype,
                                             const cce_options *opt) {
  (void)D;
  (void)dtype;
  (void)opt;
  // Room for either kernel's partials, and either plan of the bulk-copy one's.
  FwdPlan f = plan_forward(N, V, false);
  for (bool waves : {false, true}) {
    const FwdPlan g = plan_forward_waves(N, V, waves);
    if (g.splits > f.splits) f = g;
  }
  Carver cv(nullptr);
  carve_forward(cv, N, f);
  return cv.used;
}

extern "C" int cce_forward(const void *E, const void *C, const void *bias, const int64_t *targets,
                           int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                           float *loss, float *lse, void *workspace, size_t workspace_bytes,
                           void *stream) {
  return cce_forward_weighted(E, C, bias, targets, N, D, V, dtype, nullptr, opt, loss, lse,
                              workspace, workspace_bytes, stream);
}

extern "C" int cce_forward_weighted(const void *E, const void *C, const void *bias,
                                    const int64_t *targets, int64_t N, int64_t D, int64_t V,
                                    int dtype, const float *weight, const cce_options *opt,
                                    float *loss, float *lse, void *workspace,
                                    size_t workspace_bytes, void *stream) {
  CCE_TRY(check_common(E, C, targets, N, D, V, dtype, opt));
  CCE_TRY(check_weight(weight));
  if (!loss) return fail(CCE_ERR_ARGUMENT, "loss must not be NULL");
  if (bias && reinterpret_cast<uintptr_t>(bias) % elt_size(dtype) != 0)
    return fail(CCE_ERR_ARGUMENT, "bias misaligned");
  Resolved r = resolve(opt);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool tma = tma_forward_usable(dtype);
  FwdPlan f = plan_forward(N, V, tma);
  if (!workspace || workspace_bytes < cce_forward_workspace_size(N, D, V, dtype, opt))
    return fail(CCE_ERR_WORKSPACE, "forward workspace too small");
  Carver cv(workspace);
  FwdWs w = carve_forward(cv, N, f);

  CCE_CUDA(cudaMemsetAsync(w.count, 0, sizeof(int), s));
  CCE_CUDA(cudaMemsetAsync(w.ztgt, 0, N * sizeof(float), s));
  launch_prep_targets(targets, N, V, r, w.tgt, w.count, s);
  CCE_LAUNCHED("prep_targets_kernel");
  if (weight) {
    launch_class_weight_terms(w.tgt, weight, N, V, w.wt, w.wstat, s);
    CCE_LAUNCHED("class_weight_terms_kernel");
  }

  FwdParams p;
  p.E = E;
  p.C = C;
  p.bias = bias;
  p.cw = weight;
  p.tgt = w.tgt;
  p.N = N;
  p.D = D;
  p.V = V;
  p.tiles_per_split = f.tiles_per_split;
  p.ntiles = f.ntiles;
  p.softcap = r.softcap;
  p.sum_z = r.alpha > 0.f;
  p.part_m = w.pm;
  p.part_s = w.ps;
  p.part_z = w.pz;
  p.ztgt = w.ztgt;
  dim3 grid(static_cast<unsigned>((N + kBM - 1) / kBM), static_cast<unsigned>(f.splits));
  if (tma) CCE_TRY(launch_partial_tma(p, dtype, f.splits, s));
  else if (dtype == CCE_F32) CCE_TRY(launch_partial<float>(p, grid, s));
  else if (dtype == CCE_F16) CCE_TRY(launch_partial<__half>(p, grid, s));
  else CCE_TRY(launch_partial<__nv_bfloat16>(p, grid, s));

  float *loss_row = r.reduction == CCE_REDUCE_NONE ? loss : w.loss_row;
  lse_finish_kernel<<<static_cast<unsigned>((N + 255) / 256), 256, 0, s>>>(
      w.pm, w.ps, w.pz, w.ztgt, w.tgt, N, V, f.splits, r.alpha, r.zloss, weight ? w.wt : nullptr,
      weight ? w.wstat : nullptr, lse, loss_row);
  CCE_LAUNCHED("lse_finish_kernel");
  if (r.reduction != CCE_REDUCE_NONE) {
    reduce_kernel<<<1, 1024, 0, s>>>(w.loss_row, N, w.count, weight ? w.wstat : nullptr,
                                     r.reduction == CCE_REDUCE_MEAN, loss);
    CCE_LAUNCHED("reduce_kernel");
  }
  return 0;
}
