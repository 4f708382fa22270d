#!/usr/bin/env bash
# Builds libcce_cuda.so from the CUDA sources in kernels/ (objects compiled in parallel), with
# the C ABI header from include/.
#   ./build.sh            -> ./libcce_cuda.so   (Hopper: sm_90a machine code)
#   CCE_OUT=name.so ./build.sh  -> another file name (objects under build/name/)
# Environment: NVCC (default: nvcc on PATH), CCE_ARCH (default: the -gencode for sm_90a, as
# HOPPER.md advises; e.g. CCE_ARCH="-gencode=arch=compute_80,code=sm_80" for an A100; the
# kernels use mma.sync, ldmatrix and cp.async, so sm_80 or newer), CCE_VERBOSE=1 for
# ptxas's register / shared-memory / spill report of every kernel.
# The CUDA runtime is linked statically (-cudart static, nvcc's default, named explicitly), so
# the library needs only the driver (libcuda.so) and the C/C++ runtime at load time, no
# libcudart.so; CCE_CUDART=shared links libcudart.so instead.
set -euo pipefail
cd "$(dirname "$0")"
NVCC=${NVCC:-nvcc}
ARCH=${CCE_ARCH:-"-gencode=arch=compute_90a,code=sm_90a"}
# CCE_WGMMA=1 (default with the sm_90a target) uses Hopper's wgmma for the logit tiles;
# CCE_WGMMA=0 keeps the mma.sync tile (any sm_80+ target).
WG=${CCE_WGMMA:-$([[ "$ARCH" == *90a* ]] && echo 1 || echo 0)}
FLAGS=(-O3 -std=c++17 -Xcompiler -fPIC,-O2 -lineinfo --expt-relaxed-constexpr -DCCE_USE_WGMMA=$WG -Iinclude ${CCE_NVCC_FLAGS:-} $ARCH)
if [[ "${CCE_VERBOSE:-0}" == 1 ]]; then FLAGS+=(-Xptxas -v); fi
OUTLIB=${CCE_OUT:-libcce_cuda.so}
BDIR=build/${OUTLIB%.so}
mkdir -p "$BDIR"
pids=()
SRCS=(prep forward_lse forward_tma vocab_sort backward_dz backward_dz_tma backward_products backward_wgmma backward_launch dense_products host)
for src in "${SRCS[@]}"; do
  "$NVCC" "${FLAGS[@]}" -c "kernels/$src.cu" -o "$BDIR/$src.o" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
OBJS=()
for src in "${SRCS[@]}"; do OBJS+=("$BDIR/$src.o"); done
CUDART=${CCE_CUDART:-static}
"$NVCC" -shared $ARCH -cudart "$CUDART" -o "$OUTLIB" "${OBJS[@]}" -ldl
echo "built $(pwd)/$OUTLIB (wgmma: $WG, cudart: $CUDART)"
