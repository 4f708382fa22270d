// vocab_sort.cu — vocabulary order for gradient filtering.
//
// Significant softmax entries cluster on frequent tokens. Sorting the vocabulary by its
// average logit  a_v = C_v . mean_i(E_i) + b_v  (descending) puts them into the same
// vocabulary tiles, so that more of the remaining (token x vocabulary) tiles fall entirely
// below the filter threshold and are skipped. The order only moves work around: every
// gradient is still written to its own vocabulary row.
#include <algorithm>

#include <cub/cub.cuh>

#include "cce_common.cuh"

namespace cce {

// ---- column sums in a fixed order ------------------------------------------------------
// out[d] = scale * sum_i (wt ? wt[i] : 1) * X[i][d]. Atomic adds of per-slice sums would add the
// slices in whatever order the blocks finish, so the last bits (and, through the vocabulary
// order, which entries share a tile) would change from call to call. Instead each slice of rows
// writes its sum to part[slice][d] and a second kernel adds the slices in slice order.
template <class T>
__global__ void colsum_part_kernel(const T *__restrict__ X, const float *__restrict__ wt, int64_t rows,
                                   int64_t D, int64_t rows_per, float *__restrict__ part) {
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  const int64_t i0 = int64_t(blockIdx.y) * rows_per, i1 = min(i0 + rows_per, rows);
  float acc = 0.f;
  for (int64_t i = i0; i < i1; ++i) {
    const float x = Elt<T>::load(X[i * D + d]);
    acc += wt ? wt[i] * x : x;
  }
  part[int64_t(blockIdx.y) * D + d] = acc;
}

__global__ void colsum_finish_kernel(const float *__restrict__ part, int slices, int64_t D, float scale,
                                     float *__restrict__ out) {
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  float acc = 0.f;
  for (int k = 0; k < slices; ++k) acc += part[int64_t(k) * D + d];
  out[d] = acc * scale;
}

template <class T>
static int column_sums_t(const T *X, const float *wt, int64_t rows, int64_t D, float scale, float *out,
                         void *scratch, size_t scratch_bytes, cudaStream_t s) {
  if (rows <= 0) {  // (callers pass positive sizes; an empty sum is zero)
    CCE_CUDA(cudaMemsetAsync(out, 0, size_t(D) * sizeof(float), s));
    return 0;
  }
  // As many slices as the scratch holds, at most 1024 and at least 32 rows each.
  int64_t slices = std::min<int64_t>(int64_t(scratch_bytes / (size_t(D) * sizeof(float))), 1024);
  slices = std::max<int64_t>(1, std::min<int64_t>(slices, (rows + 31) / 32));
  if (size_t(slices) * D * sizeof(float) > scratch_bytes)
    return fail(CCE_ERR_WORKSPACE, "column sums: the scratch holds less than one slice of D floats");
  const int64_t rows_per = (rows + slices - 1) / slices;
  slices = std::max<int64_t>(1, (rows + rows_per - 1) / rows_per);
  float *part = static_cast<float *>(scratch);
  const unsigned gx = static_cast<unsigned>((D + 255) / 256);
  colsum_part_kernel<T><<<dim3(gx, static_cast<unsigned>(slices)), 256, 0, s>>>(X, wt, rows, D, rows_per, part);
  CCE_LAUNCHED("colsum_part_kernel");
  colsum_finish_kernel<<<gx, 256, 0, s>>>(part, static_cast<int>(slices), D, scale, out);
  CCE_LAUNCHED("colsum_finish_kernel");
  return 0;
}

int column_sums(const void *X, int dtype, const float *wt, int64_t rows, int64_t D, float scale, float *out,
                void *scratch, size_t scratch_bytes, cudaStream_t s) {
  if (dtype == CCE_F32)
    return column_sums_t(static_cast<const float *>(X), wt, rows, D, scale, out, scratch, scratch_bytes, s);
  if (dtype == CCE_F16)
    return column_sums_t(static_cast<const __half *>(X), wt, rows, D, scale, out, scratch, scratch_bytes, s);
  return column_sums_t(static_cast<const __nv_bfloat16 *>(X), wt, rows, D, scale, out, scratch, scratch_bytes, s);
}

// keys[v] = C_v . meanE + b_v; one warp per vocabulary row, 16-byte loads.
template <class T>
__global__ void avg_logit_kernel(const T *__restrict__ C, const T *__restrict__ bias,
                                 const float *__restrict__ meanE, int64_t V, int64_t D,
                                 float *__restrict__ keys, int *__restrict__ vals) {
  constexpr int VEC = 16 / sizeof(T);
  int64_t v = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (v >= V) return;
  const T *row = C + v * D;
  float acc = 0.f;
  for (int64_t d = int64_t(lane) * VEC; d < D; d += 32 * VEC) {
    uint4 raw = *reinterpret_cast<const uint4 *>(row + d);
    const T *x = reinterpret_cast<const T *>(&raw);
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc += Elt<T>::load(x[k]) * meanE[d + k];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    keys[v] = acc + (bias ? Elt<T>::load(bias[v]) : 0.f);
    vals[v] = static_cast<int>(v);
  }
}

__global__ void iota_kernel(int *__restrict__ perm, int64_t V) {
  int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v < V) perm[v] = static_cast<int>(v);
}

__global__ void invert_kernel(const int *__restrict__ perm, int64_t V, int *__restrict__ inv) {
  int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s < V) inv[perm[s]] = static_cast<int>(s);
}

size_t vocab_sort_temp_bytes(int64_t V) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, static_cast<const float *>(nullptr),
                                            static_cast<float *>(nullptr),
                                            static_cast<const int *>(nullptr),
                                            static_cast<int *>(nullptr), static_cast<int>(V));
  return bytes;
}

template <class T>
static int avg_logits(const T *E, const T *C, const T *bias, int64_t N, int64_t D, int64_t V,
                      float *meanE, float *keys, int *vals, void *scratch, size_t scratch_bytes, cudaStream_t s) {
  CCE_TRY(column_sums_t(E, nullptr, N, D, 1.f / static_cast<float>(N), meanE, scratch, scratch_bytes, s));
  unsigned g2 = static_cast<unsigned>((V * 32 + 255) / 256);
  avg_logit_kernel<T><<<g2, 256, 0, s>>>(C, bias, meanE, V, D, keys, vals);
  CCE_LAUNCHED("avg_logit_kernel");
  return 0;
}

int build_vocab_order(const void *E, const void *C, const void *bias, int dtype, int64_t N,
                      int64_t D, int64_t V, bool sort, int64_t seg, float *meanE, float *keys,
                      float *keys_out, int *vals, int *perm, int *invperm, void *temp,
                      size_t temp_bytes, void *scratch, size_t scratch_bytes, cudaStream_t s) {
  unsigned gv = static_cast<unsigned>((V + 255) / 256);
  if (!sort) {
    iota_kernel<<<gv, 256, 0, s>>>(perm, V);
    CCE_LAUNCHED("iota_kernel");
  } else {
    if (dtype == CCE_F32)
      CCE_TRY(avg_logits<float>((const float *)E, (const float *)C, (const float *)bias, N, D, V, meanE, keys, vals,
                                scratch, scratch_bytes, s));
    else if (dtype == CCE_F16)
      CCE_TRY(avg_logits<__half>((const __half *)E, (const __half *)C, (const __half *)bias, N, D, V, meanE, keys,
                                 vals, scratch, scratch_bytes, s));
    else
      CCE_TRY(avg_logits<__nv_bfloat16>((const __nv_bfloat16 *)E, (const __nv_bfloat16 *)C,
                                        (const __nv_bfloat16 *)bias, N, D, V, meanE, keys, vals, scratch,
                                        scratch_bytes, s));
    int64_t bounds[3] = {0, seg, V};
    for (int k = 0; k < 2; ++k) {
      int64_t b = bounds[k], n = bounds[k + 1] - b;
      if (n <= 0) continue;
      size_t tb = temp_bytes;
      CCE_CUDA(cub::DeviceRadixSort::SortPairsDescending(temp, tb, keys + b, keys_out + b, vals + b,
                                                         perm + b, static_cast<int>(n), 0, 32, s));
    }
  }
  invert_kernel<<<gv, 256, 0, s>>>(perm, V, invperm);
  CCE_LAUNCHED("invert_kernel");
  return 0;
}

}  // namespace cce
