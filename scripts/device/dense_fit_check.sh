#!/usr/bin/env bash
# The dense path's chunk fitted to whole waves (backward_launch.cu, dense_chunk_tiles):
# harness/test_cuda.py with this build, then lib_ab.py without filtering, the build before
# (.gpu/base.so) against this one (.gpu/libcce_cuda.so), alternating processes, at the Gemma 2
# and Llama 3 shapes; then dense_stages.py at the Gemma 2 shape with the fit off
# (CCE_DENSE_FIT=0) and on, in that order. Carry .gpu. Logs under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
ROOT=$(pwd)
export CCE_LIB=$ROOT/.gpu/libcce_cuda.so PYTHONUNBUFFERED=1
cd cuda/harness
timeout 170 python3 test_cuda.py > "$OUT/test.log" 2>&1; echo "test rc=$? at $(( $(date +%s) - T0 )) s"
tail -1 "$OUT/test.log"; grep "NOT OK" "$OUT/test.log" | cut -c1-240 | head -20
for shape in 8192,2304,256000 8192,4096,128256; do
  timeout 150 python3 lib_ab.py "$ROOT/.gpu/base.so" "$CCE_LIB" --shape $shape --eps 0 --rounds 3 > "$OUT/ab_${shape//,/x}.log" 2>&1
  echo "ab $shape rc=$? at $(( $(date +%s) - T0 )) s"; cat "$OUT/ab_${shape//,/x}.log"
done
for fit in 0 1; do
  CCE_DENSE_FIT=$fit timeout 100 python3 dense_stages.py --shape 8192,2304,256000 --reps 8 --rounds 1 > "$OUT/stages_fit$fit.log" 2>&1
  echo "stages fit=$fit rc=$? at $(( $(date +%s) - T0 )) s"; cat "$OUT/stages_fit$fit.log"
done
# The filtered default with its chunks fitted the same way (CCE_FILTERED_FIT=1, measurement
# knob), same build for A and B, at the Gemma 2 shape.
timeout 150 python3 lib_ab.py "$CCE_LIB" "$CCE_LIB" --shape 8192,2304,256000 --rounds 3 --b-env CCE_FILTERED_FIT=1 > "$OUT/ab_filtered_fit.log" 2>&1
echo "filtered fit rc=$? at $(( $(date +%s) - T0 )) s"; cat "$OUT/ab_filtered_fit.log"
