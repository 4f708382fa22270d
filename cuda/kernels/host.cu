// host.cu — cce_host_run: the host-memory convenience entry point for callers without CUDA
// headers (the Swift tool loads libcce_cuda.so with dlopen). It copies host arrays to the
// GPU, runs cce_forward / cce_backward on a stream of its own, copies the results back as
// float32, optionally times the calls with CUDA events, and frees everything it allocated.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cce_common.cuh"

namespace cce {
namespace {

// Device allocations freed in reverse order when the run ends, whatever the exit path.
struct DevicePool {
  std::vector<void *> ptrs;
  size_t extra_bytes = 0;  // bytes beyond the inputs (workspace, outputs, loss, lse, grad)
  ~DevicePool() {
    for (auto it = ptrs.rbegin(); it != ptrs.rend(); ++it) cudaFree(*it);
  }
  int alloc(void **p, size_t bytes, bool input, const char *what) {
    *p = nullptr;
    if (bytes == 0) return 0;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
      *p = nullptr;
      cudaGetLastError();
      return fail(CCE_ERR_CUDA, std::string("cudaMalloc(") + what + ", " + std::to_string(bytes) +
                                    " bytes): " + cudaGetErrorString(e));
    }
    ptrs.push_back(*p);
    if (!input) extra_bytes += bytes;
    return 0;
  }
};

struct StreamEvents {
  cudaStream_t s = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  ~StreamEvents() {
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    if (s) cudaStreamDestroy(s);
  }
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Typed device output -> host float32 (through a host staging copy for 16-bit types).
int copy_back_f32(float *host, const void *dev, int64_t count, int dtype, cudaStream_t s) {
  if (!host || !dev || count <= 0) return 0;
  if (dtype == CCE_F32) {
    CCE_CUDA(cudaMemcpyAsync(host, dev, size_t(count) * 4, cudaMemcpyDeviceToHost, s));
    CCE_CUDA(cudaStreamSynchronize(s));
    return 0;
  }
  std::vector<uint16_t> tmp(static_cast<size_t>(count));
  CCE_CUDA(cudaMemcpyAsync(tmp.data(), dev, size_t(count) * 2, cudaMemcpyDeviceToHost, s));
  CCE_CUDA(cudaStreamSynchronize(s));
  if (dtype == CCE_BF16) {
    for (int64_t i = 0; i < count; ++i) {
      uint32_t bits = uint32_t(tmp[size_t(i)]) << 16;
      std::memcpy(&host[i], &bits, 4);
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      __half_raw raw;
      raw.x = tmp[size_t(i)];
      host[i] = __half2float(__half(raw));
    }
  }
  return 0;
}

__global__ void fill_kernel(float *p, int64_t n, float v) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}

}  // namespace
}  // namespace cce

using namespace cce;

extern "C" int cce_host_run(const void *E, const void *C, const void *bias, const int64_t *targets,
                            int64_t N, int64_t D, int64_t V, int dtype, const cce_options *opt,
                            float *loss, float *lse, float *dE, float *dC, float *dbias,
                            int repeats, cce_host_report *report) {
  return cce_host_run_weighted(E, C, bias, targets, N, D, V, dtype, nullptr, opt, loss, lse, dE, dC, dbias,
                               repeats, report);
}

extern "C" int cce_host_run_weighted(const void *E, const void *C, const void *bias, const int64_t *targets,
                                     int64_t N, int64_t D, int64_t V, int dtype, const float *weight,
                                     const cce_options *opt, float *loss, float *lse, float *dE, float *dC,
                                     float *dbias, int repeats, cce_host_report *report) {
  if (dtype != CCE_F32 && dtype != CCE_F16 && dtype != CCE_BF16)
    return fail(CCE_ERR_ARGUMENT, "dtype must be CCE_F32, CCE_F16 or CCE_BF16");
  if (!E || !C || !targets) return fail(CCE_ERR_ARGUMENT, "E, C and targets must not be NULL");
  if (N <= 0 || D <= 0 || V <= 0) return fail(CCE_ERR_ARGUMENT, "N, D and V must be positive");
  if (repeats < 0) return fail(CCE_ERR_ARGUMENT, "repeats must be >= 0");
  if (report) {
    std::memset(report, 0, sizeof(*report));
    report->tiles_kept = -1.0;
  }
  const size_t es = elt_size(dtype);
  const int reduction = opt ? opt->reduction : CCE_REDUCE_MEAN;
  const int64_t nloss = reduction == CCE_REDUCE_NONE ? N : 1;
  const bool want_dE = dE != nullptr, want_dC = dC != nullptr, want_db = dbias != nullptr;
  const bool want_grad = want_dE || want_dC || want_db;

  StreamEvents se;
  CCE_CUDA(cudaStreamCreateWithFlags(&se.s, cudaStreamNonBlocking));
  cudaStream_t s = se.s;
  DevicePool pool;

  // Inputs.
  void *dEin = nullptr, *dCin = nullptr, *dbin = nullptr, *dtg = nullptr;
  CCE_TRY(pool.alloc(&dEin, size_t(N) * D * es, true, "E"));
  CCE_TRY(pool.alloc(&dCin, size_t(V) * D * es, true, "C"));
  if (bias) CCE_TRY(pool.alloc(&dbin, size_t(V) * es, true, "bias"));
  CCE_TRY(pool.alloc(&dtg, size_t(N) * sizeof(int64_t), true, "targets"));
  void *dw = nullptr;  // class weights: an input, checked on the host (the device entry points do not read them back)
  if (weight) {
    for (int64_t v = 0; v < V; ++v)
      if (!(weight[v] >= 0.f) || std::isinf(weight[v]))
        return fail(CCE_ERR_ARGUMENT, "weight[" + std::to_string(v) + "] = " + std::to_string(weight[v]) +
                                          " is not finite and >= 0");
    CCE_TRY(pool.alloc(&dw, size_t(V) * 4, true, "weight"));
    CCE_CUDA(cudaMemcpyAsync(dw, weight, size_t(V) * 4, cudaMemcpyHostToDevice, s));
  }
  const float *fw = static_cast<const float *>(dw);
  CCE_CUDA(cudaMemcpyAsync(dEin, E, size_t(N) * D * es, cudaMemcpyHostToDevice, s));
  CCE_CUDA(cudaMemcpyAsync(dCin, C, size_t(V) * D * es, cudaMemcpyHostToDevice, s));
  if (bias) CCE_CUDA(cudaMemcpyAsync(dbin, bias, size_t(V) * es, cudaMemcpyHostToDevice, s));
  CCE_CUDA(cudaMemcpyAsync(dtg, targets, size_t(N) * sizeof(int64_t), cudaMemcpyHostToDevice, s));

  // Outputs and workspace (one buffer serves the forward and then the backward).
  void *dloss = nullptr, *dlse = nullptr, *dgrad = nullptr, *ddE = nullptr, *ddC = nullptr,
       *ddb = nullptr, *ws = nullptr;
  CCE_TRY(pool.alloc(&dloss, size_t(nloss) * 4, false, "loss"));
  CCE_TRY(pool.alloc(&dlse, size_t(N) * 4, false, "lse"));
  size_t fws = cce_forward_workspace_size(N, D, V, dtype, opt);
  size_t bws = 0;
  if (want_grad) {
    CCE_TRY(pool.alloc(&dgrad, size_t(nloss) * 4, false, "grad_loss"));
    fill_kernel<<<unsigned((nloss + 255) / 256), 256, 0, s>>>(static_cast<float *>(dgrad), nloss, 1.f);
    CCE_LAUNCHED("fill_kernel");
    if (want_dE) CCE_TRY(pool.alloc(&ddE, size_t(N) * D * es, false, "dE"));
    if (want_dC) CCE_TRY(pool.alloc(&ddC, size_t(V) * D * es, false, "dC"));
    if (want_db) CCE_TRY(pool.alloc(&ddb, size_t(V) * es, false, "dbias"));
    bws = cce_backward_workspace_size(N, D, V, dtype, opt, want_dE, want_dC, want_db);
  }
  const size_t wsb = std::max(fws, bws);
  CCE_TRY(pool.alloc(&ws, wsb, false, "workspace"));

  float *flse = static_cast<float *>(dlse);
  const float *fgrad = static_cast<const float *>(dgrad);
  auto fwd = [&]() {
    return cce_forward_weighted(dEin, dCin, dbin, static_cast<const int64_t *>(dtg), N, D, V, dtype, fw, opt,
                                static_cast<float *>(dloss), flse, ws, wsb, s);
  };
  auto bwd = [&](int64_t *stats) {
    return cce_backward_weighted(dEin, dCin, dbin, static_cast<const int64_t *>(dtg), N, D, V, dtype, fw, opt,
                                 flse, fgrad, ddE, ddC, ddb, ws, wsb, stats, s);
  };

  // The run whose results are returned.
  CCE_TRY(fwd());
  int64_t stats[2] = {0, 0};
  if (want_grad) CCE_TRY(bwd(report ? stats : nullptr));
  CCE_CUDA(cudaStreamSynchronize(s));
  if (loss) CCE_CUDA(cudaMemcpy(loss, dloss, size_t(nloss) * 4, cudaMemcpyDeviceToHost));
  if (lse) CCE_CUDA(cudaMemcpy(lse, dlse, size_t(N) * 4, cudaMemcpyDeviceToHost));
  CCE_TRY(copy_back_f32(dE, ddE, N * D, dtype, s));
  CCE_TRY(copy_back_f32(dC, ddC, V * D, dtype, s));
  CCE_TRY(copy_back_f32(dbias, ddb, V, dtype, s));

  if (report) {
    cudaDeviceProp prop;
    int dev = 0;
    CCE_CUDA(cudaGetDevice(&dev));
    CCE_CUDA(cudaGetDeviceProperties(&prop, dev));
    std::strncpy(report->device_name, prop.name, sizeof(report->device_name) - 1);
    report->device_name[sizeof(report->device_name) - 1] = '\0';
    report->peak_device_mib = double(pool.extra_bytes) / (1024.0 * 1024.0);
    if (want_grad && stats[0] > 0) report->tiles_kept = double(stats[1]) / double(stats[0]);
  }

  if (repeats > 0) {
    CCE_CUDA(cudaEventCreate(&se.a));
    CCE_CUDA(cudaEventCreate(&se.b));
    auto time_it = [&](int which, double *out) -> int {
      // which: 0 forward, 1 backward, 2 forward + backward
      std::vector<double> ts;
      for (int k = 0; k < repeats; ++k) {
        CCE_CUDA(cudaEventRecord(se.a, s));
        if (which != 1) CCE_TRY(fwd());
        if (which != 0) CCE_TRY(bwd(nullptr));
        CCE_CUDA(cudaEventRecord(se.b, s));
        CCE_CUDA(cudaEventSynchronize(se.b));
        float ms = 0.f;
        CCE_CUDA(cudaEventElapsedTime(&ms, se.a, se.b));
        ts.push_back(ms);
      }
      *out = median(ts);
      return 0;
    };
    // Warm-up.
    CCE_TRY(fwd());
    if (want_grad) CCE_TRY(bwd(nullptr));
    CCE_CUDA(cudaStreamSynchronize(s));
    double f_ms = 0, b_ms = 0, fb_ms = 0;
    CCE_TRY(time_it(0, &f_ms));
    if (want_grad) {
      CCE_TRY(time_it(1, &b_ms));
      CCE_TRY(time_it(2, &fb_ms));
    } else {
      fb_ms = f_ms;
    }
    if (report) {
      report->forward_ms = f_ms;
      report->backward_ms = b_ms;
      report->loss_backward_ms = fb_ms;
    }
  }
  CCE_CUDA(cudaStreamSynchronize(s));
  return 0;
}
