// prep.cu — error reporting, the options (defaults, and what follows from them), argument
// checks, and the per-row preparation kernels (effective targets after shift / ignore, per-row
// upstream gradient).
#include <cmath>
#include <cstdio>
#include <type_traits>

#include "cce_common.cuh"

namespace cce {

static thread_local std::string g_last_error;

void set_error(const std::string &msg) { g_last_error = msg; }
int fail(int code, const std::string &msg) {
  set_error(msg);
  return code;
}
int check_cuda(cudaError_t err, const char *what) {
  if (err == cudaSuccess) return 0;
  return fail(CCE_ERR_CUDA, std::string(what) + ": " + cudaGetErrorString(err));
}

Resolved resolve(const cce_options *opt) {
  cce_options d;
  cce_default_options(&d);
  const cce_options &o = opt ? *opt : d;
  Resolved r;
  r.ignore_index = o.ignore_index;
  r.reduction = o.reduction;
  r.shift = o.shift;
  r.batch = o.batch > 0 ? o.batch : 1;
  r.softcap = o.softcap;
  r.alpha = o.label_smoothing;
  r.zloss = o.z_loss;
  r.eps = o.filter_eps;  // resolved by the caller (cce_cuda.h); check_common rejects < 0 and NaN
  // The uniform -a/V part of dz is the same for every entry; without softcap its effect on
  // the gradients is a rank-one term computed exactly outside the tiles, so filtering sees
  // only the softmax part. With softcap it is multiplied by 1 - (z/s)^2 per entry, so it stays
  // in the tiles and no tile can be skipped.
  r.split_uniform = r.alpha > 0.f && r.softcap <= 0.f;
  if (r.alpha > 0.f && r.softcap > 0.f) r.eps = 0.f;
  r.sort_vocab = o.sort_vocab != 0;
  r.lean = o.lean_memory != 0;
  r.chunk_rows = o.dc_chunk_rows > 0 ? (o.dc_chunk_rows + 127) / 128 * 128 : 0;  // 0: automatic
  return r;
}

int check_common(const void *E, const void *C, const int64_t *targets, int64_t N, int64_t D,
                 int64_t V, int dtype, const cce_options *opt) {
  if (dtype != CCE_F32 && dtype != CCE_F16 && dtype != CCE_BF16)
    return fail(CCE_ERR_ARGUMENT, "dtype must be CCE_F32, CCE_F16 or CCE_BF16");
  if (!E || !C || !targets) return fail(CCE_ERR_ARGUMENT, "E, C and targets must not be NULL");
  if (N <= 0 || D <= 0 || V <= 0) return fail(CCE_ERR_ARGUMENT, "N, D and V must be positive");
  int64_t align = dtype == CCE_F32 ? 4 : 8;
  if (D % align != 0)
    return fail(CCE_ERR_ARGUMENT, "D must be a multiple of 8 (16-bit types) or 4 (f32)");
  if ((reinterpret_cast<uintptr_t>(E) | reinterpret_cast<uintptr_t>(C)) % 16 != 0)
    return fail(CCE_ERR_ARGUMENT, "E and C must be 16-byte aligned");
  if (V > INT32_MAX || N > INT32_MAX) return fail(CCE_ERR_ARGUMENT, "N and V must fit in int32");
  if (opt) {
    if (opt->reduction < 0 || opt->reduction > 2) return fail(CCE_ERR_ARGUMENT, "bad reduction");
    if (opt->shift < 0) return fail(CCE_ERR_ARGUMENT, "shift must be >= 0");
    int64_t B = opt->batch > 0 ? opt->batch : 1;
    if (N % B != 0) return fail(CCE_ERR_ARGUMENT, "N must be a multiple of batch");
    if (opt->label_smoothing < 0.f || opt->label_smoothing > 1.f)
      return fail(CCE_ERR_ARGUMENT, "label_smoothing must be in [0, 1]");
    if (opt->softcap < 0.f) return fail(CCE_ERR_ARGUMENT, "softcap must be >= 0");
    if (!(opt->filter_eps >= 0.f))
      return fail(CCE_ERR_ARGUMENT, "filter_eps must be >= 0 (0: no filtering; a threshold by "
                                    "element type is the caller's to pick)");
  }
  return 0;
}

int check_weight(const float *weight) {
  if (weight && reinterpret_cast<uintptr_t>(weight) % 4 != 0)
    return fail(CCE_ERR_ARGUMENT, "weight must be 4-byte aligned (V float32 values)");
  return 0;
}

// ---- kernels ------------------------------------------------------------------------

__global__ void prep_targets_kernel(const int64_t *__restrict__ targets, int64_t N, int64_t V,
                                    int64_t T, int shift, int64_t ignore, int *__restrict__ tgt,
                                    int *__restrict__ count) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int valid = 0;
  if (i < N) {
    int64_t j = i % T;
    int64_t t = ignore;
    if (j + shift < T) t = targets[i + shift];
    // Targets outside [0, V) other than ignore_index are treated as ignored (documented).
    valid = (t != ignore && t >= 0 && t < V);
    tgt[i] = valid ? static_cast<int>(t) : -1;
  }
  // one atomic per warp
  unsigned m = __ballot_sync(0xffffffffu, valid);
  if ((threadIdx.x & 31) == 0 && m) atomicAdd(count, __popc(m));
}

__global__ void row_weights_kernel(const int *__restrict__ tgt, const float *__restrict__ g,
                                   const int *__restrict__ count, int64_t N, int reduction,
                                   const double *__restrict__ wstat, float *__restrict__ w) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float v;
  if (reduction == CCE_REDUCE_NONE)
    v = g[i];
  else if (reduction == CCE_REDUCE_SUM)
    v = g[0];
  else if (wstat)  // weighted mean: divide by sum_i w_{t_i}; the loss is NaN at 0, the gradients 0
    v = wstat[1] > 0.0 ? static_cast<float>(static_cast<double>(g[0]) / wstat[1]) : 0.f;
  else
    v = g[0] / static_cast<float>(*count);
  w[i] = tgt[i] >= 0 ? v : 0.f;
}

// One block of 1024 threads: wt[i] = weight[tgt[i]] or 0, and the sums W and sum_i wt[i] in
// double, in a fixed order.
__global__ void class_weight_terms_kernel(const int *__restrict__ tgt, const float *__restrict__ weight,
                                          int64_t N, int64_t V, float *__restrict__ wt,
                                          double *__restrict__ wstat) {
  __shared__ double sh[2][1024];
  double a = 0.0, b = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) a += weight[v];
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    float x = tgt[i] >= 0 ? weight[tgt[i]] : 0.f;
    wt[i] = x;
    b += x;
  }
  sh[0][threadIdx.x] = a;
  sh[1][threadIdx.x] = b;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) {
      sh[0][threadIdx.x] += sh[0][threadIdx.x + k];
      sh[1][threadIdx.x] += sh[1][threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    wstat[0] = sh[0][0];
    wstat[1] = sh[1][0];
  }
}

void launch_prep_targets(const int64_t *targets, int64_t N, int64_t V, const Resolved &r,
                         int *tgt, int *count, cudaStream_t s) {
  int64_t T = N / r.batch;
  unsigned blocks = static_cast<unsigned>((N + 255) / 256);
  prep_targets_kernel<<<blocks, 256, 0, s>>>(targets, N, V, T, r.shift, r.ignore_index, tgt, count);
}

void launch_row_weights(const int *tgt, const float *grad_loss, const int *count, int64_t N,
                        int reduction, float *w, const double *wstat, cudaStream_t s) {
  unsigned blocks = static_cast<unsigned>((N + 255) / 256);
  row_weights_kernel<<<blocks, 256, 0, s>>>(tgt, grad_loss, count, N, reduction, wstat, w);
}

void launch_class_weight_terms(const int *tgt, const float *weight, int64_t N, int64_t V,
                               float *wt, double *wstat, cudaStream_t s) {
  class_weight_terms_kernel<<<1, 1024, 0, s>>>(tgt, weight, N, V, wt, wstat);
}

}  // namespace cce

extern "C" const char *cce_last_error(void) { return cce::g_last_error.c_str(); }

extern "C" void cce_default_options(cce_options *o) {
  if (!o) return;
  o->ignore_index = -100;
  o->reduction = CCE_REDUCE_MEAN;
  o->shift = 0;
  o->batch = 1;
  o->softcap = 0.f;
  o->label_smoothing = 0.f;
  o->z_loss = 0.f;
  o->filter_eps = 0.f;  // no filtering unless the caller passes a threshold
  o->sort_vocab = 1;
  o->lean_memory = 1;
  o->dc_chunk_rows = 0;
}

// The function types of cce_cuda.h, which callers that use dlsym (the Swift package) take the
// symbols as, match the declarations; the options keep their documented size.
static_assert(std::is_same<decltype(&cce_last_error), cce_last_error_fn>::value, "cce_last_error_fn");
static_assert(std::is_same<decltype(&cce_default_options), cce_default_options_fn>::value, "cce_default_options_fn");
static_assert(std::is_same<decltype(&cce_forward_workspace_size), cce_forward_workspace_size_fn>::value,
              "cce_forward_workspace_size_fn");
static_assert(std::is_same<decltype(&cce_forward), cce_forward_fn>::value, "cce_forward_fn");
static_assert(std::is_same<decltype(&cce_backward_workspace_size), cce_backward_workspace_size_fn>::value,
              "cce_backward_workspace_size_fn");
static_assert(std::is_same<decltype(&cce_backward), cce_backward_fn>::value, "cce_backward_fn");
static_assert(std::is_same<decltype(&cce_host_run), cce_host_run_fn>::value, "cce_host_run_fn");
static_assert(std::is_same<decltype(&cce_host_run_weighted), cce_host_run_weighted_fn>::value,
              "cce_host_run_weighted_fn");
static_assert(std::is_same<decltype(&cce_forward_weighted), cce_forward_weighted_fn>::value,
              "cce_forward_weighted_fn");
static_assert(std::is_same<decltype(&cce_backward_weighted), cce_backward_weighted_fn>::value,
              "cce_backward_weighted_fn");
static_assert(sizeof(cce_options) == 56, "cce_options is 56 bytes (cce_cuda.h)");
