#!/usr/bin/env bash
# A change to the dense path (filter_eps = 0): harness/test_cuda.py with this build, then
# lib_ab.py without filtering at the Llama 3 and Gemma 2 shapes, the build before
# (.gpu/base.so) against this one (.gpu/libcce_cuda.so), alternating processes, with a hash of
# the outputs' bits. Carry both builds. Logs under $OUT (named without commas).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
ROOT=$(pwd)
export CCE_LIB=$ROOT/.gpu/libcce_cuda.so PYTHONUNBUFFERED=1
cd cuda/harness
timeout 150 python3 test_cuda.py > "$OUT/test.log" 2>&1; echo "test rc=$? at $(( $(date +%s) - T0 )) s"
tail -1 "$OUT/test.log"; grep "NOT OK" "$OUT/test.log" | cut -c1-240 | head -20
for shape in 8192,4096,128256 8192,2304,256000; do
  timeout 150 python3 lib_ab.py "$ROOT/.gpu/base.so" "$CCE_LIB" --shape $shape --eps 0 --rounds 3 > "$OUT/ab_${shape//,/x}.log" 2>&1
  echo "ab $shape rc=$? at $(( $(date +%s) - T0 )) s"; cat "$OUT/ab_${shape//,/x}.log"
done
