#!/usr/bin/env bash
# The dense path's chunk fitted to whole waves (backward_launch.cu, dense_chunk_tiles): the
# checks and A/B of dense_ab.sh (harness/test_cuda.py with this build, then the build before,
# .gpu/base.so, against this one without filtering at the Llama 3 and Gemma 2 shapes), then
# dense_stages.py at the Gemma 2 shape with the fit off (CCE_DENSE_FIT=0) and on. (The run of
# 2026-12-05 also timed the filtered chunks fitted the same way, through a measurement knob
# since taken out.) Carry .gpu. Logs under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
bash "$(dirname "$0")/dense_ab.sh"
export CCE_LIB=$(pwd)/.gpu/libcce_cuda.so PYTHONUNBUFFERED=1
cd cuda/harness
for fit in 0 1; do
  CCE_DENSE_FIT=$fit timeout 100 python3 dense_stages.py --shape 8192,2304,256000 --reps 8 --rounds 1 > "$OUT/stages_fit$fit.log" 2>&1
  echo "stages fit=$fit rc=$? at $(( $(date +%s) - T0 )) s"; cat "$OUT/stages_fit$fit.log"
done
