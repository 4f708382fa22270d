#!/usr/bin/env bash
# Stages a `cce` for the GPU machine's host (no Swift there) into DIR: the executable built with
# the Swift standard library linked in statically (target CPU $CCE_TARGET_CPU, default haswell:
# the AVX-512 and AMX kernels are chosen at run time), stripped, and in DIR/lib the shared
# libraries it loads (from ldd) other than the C library's own. Used by cuda/make_swift_bundle.sh
# and scripts/device/make_mpi_bundle.sh.
#   scripts/device/stage_cce.sh DIR
set -euo pipefail
DIR=${1:?usage: stage_cce.sh DIR}
cd "$(dirname "$0")/../.."
CCE_TARGET_CPU=${CCE_TARGET_CPU:-haswell} nice -n 10 swift build -c release --static-swift-stdlib --product cce \
  --scratch-path .build-static
mkdir -p "$DIR/lib"
cp .build-static/release/cce "$DIR/cce"
strip "$DIR/cce"
for lib in $(ldd "$DIR/cce" | awk '/=> \// {print $3}' | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so'); do
  cp -L "$lib" "$DIR/lib/"
done
