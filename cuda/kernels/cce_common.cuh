// cce_common.cuh — shared pieces: element types, error reporting, workspace carving,
// and the small per-row preparation kernels used by the forward and the backward.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <string>

#include "cce_cuda.h"

namespace cce {

// ---- element types ---------------------------------------------------------------

template <class T> struct Elt;
template <> struct Elt<float> {
  static __device__ __forceinline__ float load(float x) { return x; }
  static __device__ __forceinline__ float store(float x) { return x; }
};
template <> struct Elt<__half> {
  static __device__ __forceinline__ float load(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half store(float x) { return __float2half_rn(x); }
};
template <> struct Elt<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

inline size_t elt_size(int dtype) { return dtype == CCE_F32 ? 4 : 2; }

// Multiprocessors of the current device (132 when it cannot be asked): the grids' wave size.
inline int sm_count() {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

// ---- errors ------------------------------------------------------------------------

void set_error(const std::string &msg);
int fail(int code, const std::string &msg);
// Checks the last launch / runtime call; returns 0 or CCE_ERR_CUDA with the message set.
int check_cuda(cudaError_t err, const char *what);

#define CCE_TRY(expr)                     \
  do {                                    \
    int _rc = (expr);                     \
    if (_rc != 0) return _rc;             \
  } while (0)
#define CCE_CUDA(call) CCE_TRY(::cce::check_cuda((call), #call))
#define CCE_LAUNCHED(name) CCE_TRY(::cce::check_cuda(cudaGetLastError(), name))

// ---- workspace carving -------------------------------------------------------------

// Hands out 256-byte aligned pieces of one buffer; with base == nullptr it only counts.
struct Carver {
  char *base;
  size_t used = 0;
  explicit Carver(void *b) : base(static_cast<char *>(b)) {}
  template <class X> X *take(size_t count) {
    size_t off = (used + 255) & ~size_t(255);
    used = off + count * sizeof(X);
    return base ? reinterpret_cast<X *>(base + off) : nullptr;
  }
};

// ---- options ------------------------------------------------------------------------

struct Resolved {
  int64_t ignore_index;
  int reduction;
  int shift;
  int64_t batch;
  float softcap;
  float alpha;
  float zloss;
  float eps;           // effective filter threshold (0 = no filtering)
  bool split_uniform;  // add the -a/V term analytically instead of inside the tiles
  bool sort_vocab;
  bool lean;
  int64_t chunk_rows;  // 0: automatic
};
Resolved resolve(const cce_options *opt);  // the options as given, defaults for NULL

int check_common(const void *E, const void *C, const int64_t *targets, int64_t N, int64_t D,
                 int64_t V, int dtype, const cce_options *opt);
int check_weight(const float *weight);  // alignment only (the values are the caller's to check)

// ---- per-row preparation (prep.cu) --------------------------------------------------

// tgt[i] = effective target of row i (after shift), or -1 when ignored; *count += valid rows.
void launch_prep_targets(const int64_t *targets, int64_t N, int64_t V, const Resolved &r,
                         int *tgt, int *count, cudaStream_t s);
// w[i] = upstream gradient of row i's loss (0 for ignored rows). With class weights
// (wstat != null) MEAN divides by wstat[1] = sum_i w_{t_i} instead of the count (and gives 0
// when that is 0).
void launch_row_weights(const int *tgt, const float *grad_loss, const int *count, int64_t N,
                        int reduction, float *w, const double *wstat, cudaStream_t s);
// Per-class weights (cce_forward_weighted): wt[i] = weight[tgt[i]] (0 for ignored rows), and
// in one block, in a fixed order (deterministic), wstat[0] = W = sum_v weight[v],
// wstat[1] = sum_i wt[i].
void launch_class_weight_terms(const int *tgt, const float *weight, int64_t N, int64_t V,
                               float *wt, double *wstat, cudaStream_t s);

// ---- vocabulary order (vocab_sort.cu) ---------------------------------------------

// CUB temporary storage for sorting up to V keys.
size_t vocab_sort_temp_bytes(int64_t V);
// perm[s] = vocabulary row at sorted position s; invperm is its inverse. With sort, the
// positions [0, seg) and [seg, V) are each ordered by average logit C_v . mean(E) + b_v,
// descending (two segments so that the lean backward can treat [seg, V) apart); without,
// perm is the identity. The scratch pointers may be null when sort is false; `scratch` (at
// least D floats) serves column_sums.
int build_vocab_order(const void *E, const void *C, const void *bias, int dtype, int64_t N,
                      int64_t D, int64_t V, bool sort, int64_t seg, float *meanE, float *keys,
                      float *keys_out, int *vals, int *perm, int *invperm, void *temp,
                      size_t temp_bytes, void *scratch, size_t scratch_bytes, cudaStream_t s);
// out[d] = scale * sum_i (wt ? wt[i] : 1) * X[i][d] over `rows` rows of D elements of `dtype`, in a
// fixed order (deterministic, unlike atomic adds): slices of rows summed into `scratch` (as many
// slices of D floats as it holds, at most 1024), then the slices added in order.
int column_sums(const void *X, int dtype, const float *wt, int64_t rows, int64_t D, float scale, float *out,
                void *scratch, size_t scratch_bytes, cudaStream_t s);

}  // namespace cce
