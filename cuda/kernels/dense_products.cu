// dense_products.cu — stage 2 of the backward without filtering (backward.cuh): the two gradient
// products of a chunk as two dense cuBLAS GEMMs, when nothing is to be skipped.
//
// With filter_eps = 0 every tile is kept, so the work of stage 2 is two dense products:
//     dE[N x D]  += gmax · Z[N x K] · C[v0 .. v0 + K)            (f32 accumulator, beta = 1)
//     dC[v0 .. v0 + K) = gmax · Zᵀ · E[N x D]                      (input type, written once)
// where Z = dy / gmax is the chunk's K vocabulary columns of dy, which the dz stage then writes
// as one row-major matrix (DzParams::ldz) instead of tiles. No sort is needed (the vocabulary
// order only serves the filter), so a chunk's C rows and dC rows are contiguous rows of C and
// dC, read and written in place. cuBLAS runs these products near the tensor cores' rate, where
// the filtered products kernel, which also forms the skipped tiles' first-order parts, ran at
// about 37% of it (Docs/CUDA.md).
//
// cuBLAS is opened at run time (dlopen), so the library still needs only the driver at load
// time: $CCE_CUBLAS_LIBRARY, else libcublas.so.13, .so.12, .so (an already loaded one, such as
// PyTorch's, is found by its name). Without it the filtered kernels serve (with nothing
// skipped), as before. CCE_DENSE_PRODUCTS=0 turns this path off, for comparisons.
//
// Reproducibility: cuBLAS gives the same bits run to run on the same GPU model and library
// version (its documented guarantee for a fixed stream and workspace); the workspace we hand it
// is fixed per call (part of ours, so its memory is counted with ours).
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include <cublas_api.h>

#include "backward.cuh"

namespace cce {

namespace {

struct Cublas {
  using Create = cublasStatus_t (*)(cublasHandle_t *);
  using SetStream = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
  using SetPointerMode = cublasStatus_t (*)(cublasHandle_t, cublasPointerMode_t);
  using SetWorkspace = cublasStatus_t (*)(cublasHandle_t, void *, size_t);
  using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                    const void *, const void *, cudaDataType, int, const void *, cudaDataType,
                                    int, const void *, void *, cudaDataType, int, cublasComputeType_t,
                                    cublasGemmAlgo_t);
  Create create = nullptr;
  SetStream set_stream = nullptr;
  SetPointerMode set_pointer_mode = nullptr;
  SetWorkspace set_workspace = nullptr;
  GemmEx gemm = nullptr;
  bool ok = false;
};

const Cublas &cublas() {
  static Cublas lib;
  static std::once_flag once;
  std::call_once(once, [] {
    const char *names[] = {std::getenv("CCE_CUBLAS_LIBRARY"), "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (const char *name : names) {
      if (!name || !*name) continue;
      void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (!h) continue;
      lib.create = reinterpret_cast<Cublas::Create>(dlsym(h, "cublasCreate_v2"));
      lib.set_stream = reinterpret_cast<Cublas::SetStream>(dlsym(h, "cublasSetStream_v2"));
      lib.set_pointer_mode = reinterpret_cast<Cublas::SetPointerMode>(dlsym(h, "cublasSetPointerMode_v2"));
      lib.set_workspace = reinterpret_cast<Cublas::SetWorkspace>(dlsym(h, "cublasSetWorkspace_v2"));
      lib.gemm = reinterpret_cast<Cublas::GemmEx>(dlsym(h, "cublasGemmEx"));
      lib.ok = lib.create && lib.set_stream && lib.set_pointer_mode && lib.set_workspace && lib.gemm;
      if (lib.ok) return;
      dlclose(h);
    }
  });
  return lib;
}

// One handle per host thread and device (cuBLAS handles are not to be shared between threads
// that use them at once), created on first use.
cublasHandle_t handle_for_device() {
  constexpr int kMaxDevices = 64;
  thread_local cublasHandle_t handles[kMaxDevices] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return nullptr;
  if (!handles[dev] && cublas().create(&handles[dev]) != CUBLAS_STATUS_SUCCESS) handles[dev] = nullptr;
  return handles[dev];
}

__global__ void dense_constants_kernel(float *c) {
  c[0] = 1.f;
  c[1] = 0.f;
}

}  // namespace

bool dense_products_wanted(const Resolved &r, int dtype) {
  const char *v = std::getenv("CCE_DENSE_PRODUCTS");
  if (v && v[0] == '0') return false;
  return r.eps <= 0.f && dtype != CCE_F32 && tma_dz_usable(dtype) && cublas().ok;
}

int dense_constants(float *c, cudaStream_t s) {
  dense_constants_kernel<<<1, 1, 0, s>>>(c);
  CCE_LAUNCHED("dense_constants_kernel");
  return 0;
}

int dense_products(const DenseChunk &k, cudaStream_t s) {
  const Cublas &lib = cublas();
  cublasHandle_t h = handle_for_device();
  if (!h) return fail(CCE_ERR_CUDA, "cuBLAS: no handle for the dense products");
  const cudaDataType t = k.dtype == CCE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
  auto check = [](cublasStatus_t st, const char *what) {
    return st == CUBLAS_STATUS_SUCCESS ? 0 : fail(CCE_ERR_CUDA, std::string("cuBLAS ") + what + " failed, status " +
                                                                     std::to_string(static_cast<int>(st)));
  };
  CCE_TRY(check(lib.set_stream(h, s), "cublasSetStream"));
  CCE_TRY(check(lib.set_pointer_mode(h, CUBLAS_POINTER_MODE_DEVICE), "cublasSetPointerMode"));
  CCE_TRY(check(lib.set_workspace(h, k.ws, k.ws_bytes), "cublasSetWorkspace"));
  const size_t elt = elt_size(k.dtype);
  const int N = static_cast<int>(k.N), D = static_cast<int>(k.D), K = static_cast<int>(k.K);
  const int ldz = static_cast<int>(k.ldz);
  const char *c_rows = static_cast<const char *>(k.C) + size_t(k.v0) * k.D * elt;
  // Column-major views of the row-major arrays: dE_accᵀ (D x N) += C_chunkᵀ (D x K) · Zᵀ (K x N).
  if (k.dE_acc)
    CCE_TRY(check(lib.gemm(h, CUBLAS_OP_N, CUBLAS_OP_N, D, N, K, k.gmax, c_rows, t, D, k.Z, t, ldz, k.one,
                           k.dE_acc, CUDA_R_32F, D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "GEMM (dE)"));
  // dC_chunkᵀ (D x K) = Eᵀ (D x N) · Z (N x K), Z read through its transpose.
  if (k.dC)
    CCE_TRY(check(lib.gemm(h, CUBLAS_OP_N, CUBLAS_OP_T, D, K, N, k.gmax, k.E, t, D, k.Z, t, ldz, k.zero,
                           static_cast<char *>(k.dC) + size_t(k.v0) * k.D * elt, t, D, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT),
                  "GEMM (dC)"));
  return 0;
}

}  // namespace cce
