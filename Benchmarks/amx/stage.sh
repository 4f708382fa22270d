#!/bin/bash
# Copies what run.sh needs into DIR (e.g. a git-ignored folder a device machine receives).
set -e
here="$(cd "$(dirname "$0")" && pwd)"; root="$here/../.."
dir="$1"; mkdir -p "$dir/include"
cp "$here/amx_harness.c" "$here/run.sh" "$root/Sources/CCEAVX512/cce_avx512.c" "$dir/"
cp "$root/Sources/CCEAVX512/include/cce_avx512.h" "$dir/include/"
# The harness includes the kernel from its place in the repository; in DIR it sits beside it.
sed -i 's|#include "../../Sources/CCEAVX512/cce_avx512.c"|#include "cce_avx512.c"|' "$dir/amx_harness.c"
