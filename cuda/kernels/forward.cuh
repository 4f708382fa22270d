// forward.cuh — what the forward's two files share: the parameters of the per-split
// log-sum-exp kernels (forward_lse.cu: mma.sync / wgmma tiles loaded by cp.async, and the
// f32 path; forward_tma.cu: Hopper, tiles loaded by the bulk tensor copy engine) and the
// entry point of the Hopper kernel.
#pragma once

#include "tma.cuh"

namespace cce {

// A block owns one token block and the vocabulary tiles [split * tiles_per_split, ...) of
// width `tile_n`; it writes one online-softmax partial (max, sum exp, sum z) per (split, row)
// and z at the row's target (exactly one block writes each row's).
struct FwdParams {
  const void *E, *C, *bias;
  const float *cw;  // per-class weights (V) or null: the smoothing sum is then sum_v w_v z_v
  const int *tgt;
  int64_t N, D, V;
  int tiles_per_split, ntiles;
  float softcap;
  int sum_z;                        // the smoothing sum is needed (label smoothing > 0)
  float *part_m, *part_s, *part_z;  // [splits][N]
  float *ztgt;                      // [N]
};

// Whether the bulk-copy forward serves this call: a 16-bit type, the library built for sm_90a
// (CCE_USE_WGMMA), a compute capability 9.0 device, the driver's tensor-map encoder found,
// and CCE_FORWARD_CPASYNC unset (that variable keeps the cp.async kernel, for measurement).
bool tma_forward_usable(int dtype);
// Launches the per-split partials on grid (ceil(N / kTmaFM), splits) with p.tiles_per_split
// tiles of kTmaFN entries each.
int launch_partial_tma(const FwdParams &p, int dtype, int splits, cudaStream_t s);

}  // namespace cce
