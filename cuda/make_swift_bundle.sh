#!/usr/bin/env bash
# Packs what cuda/swift_validate.sh needs on a GPU machine that has no Swift:
#   .gpu/bundle.tar.xz  a statically linked `cce` (Swift runtime and Foundation inside;
#                       target CPU haswell so that it runs on the GPU machine's CPU), the
#                       shared libraries it still loads (OpenBLAS, hwloc, libnuma and their
#                       own dependencies, from ldd), and the validation cases;
#   .gpu/libcce_cuda.so the CUDA library (run cuda/build.sh first).
# Then, with the device tool: carry [".gpu/bundle.tar.xz", ".gpu/libcce_cuda.so"] and run
# `bash cuda/swift_validate.sh`. Needs numpy and ml_dtypes for the cases.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$(mktemp -d)
trap 'rm -rf "$B"' EXIT
bash scripts/device/stage_cce.sh "$B"
python3 cuda/harness/make_swift_cases.py "$B/cases"
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
tar -cJf .gpu/bundle.tar.xz -C "$B" .
if [[ -f cuda/libcce_cuda.so ]]; then cp cuda/libcce_cuda.so .gpu/; else echo "note: build cuda/libcce_cuda.so with cuda/build.sh"; fi
ls -la .gpu/bundle.tar.xz "$B/lib"
