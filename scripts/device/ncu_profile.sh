#!/usr/bin/env bash
# Issue 15 profile: every kernel of one forward+backward call of the CUDA library
# (cuda/harness/profile_one.py; ncu replays each kernel on its own with the caches flushed, so
# a warm-up call changes nothing) under ncu SpeedOfLight, filtered by name to the library's
# kernels and radix sorts (PyTorch's own reduce and sort kernels of the data generation match
# too: the summary, ncu_stages.py, keeps the call's kernels, by kernel and by stage). ncu takes
# about four minutes a call at these shapes, so one shape a device call: the Gemma 2 one by
# default, CCE_PROFILE_SHAPES="8192,4096,128256" for Llama 3 (a list runs one after another);
# CCE_PROFILE_CALLS=2 adds a warm-up call, CCE_NCU_TIMEOUT moves the 330 s limit a shape.
# Run on the GPU machine; it builds cuda/libcce_cuda.so first.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
cd cuda
T0=$(date +%s)
./build.sh > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - T0 )) s"
export CCE_LIB=$PWD/libcce_cuda.so CCE_CUDA_LIBRARY=$PWD/libcce_cuda.so PYTHONPATH=$PWD/harness
cd harness
KERNELS='regex:^(avg_logit|block_mean|class_weight_terms|colsum_finish|colsum_part|dbias_from_sums|dz|dz_tma|finish_dE|finish_db|gather_rows|invert|iota|lse_finish|lse_partial|lse_tma|prep_targets|products|products_tma|products_wg|reduce|reduce_rows|row_weights|tpos|fill)_kernel$|[Rr]adix'
export CCE_PROFILE_CALLS=${CCE_PROFILE_CALLS:-1}
for shape in ${CCE_PROFILE_SHAPES:-8192,2304,256000}; do
  tag=${shape//,/x}
  CCE_PROFILE_SHAPE=$shape python3 profile_one.py > "$OUT/plain_$tag.txt" 2>&1
  kept=$(sed -n 's/.*tiles=\([0-9]*\) kept=\([0-9]*\).*/\2 \1/p' "$OUT/plain_$tag.txt" | awk '{print $1 / $2}')
  echo "== $shape: $(tail -1 "$OUT/plain_$tag.txt"), kept fraction $kept"
  CCE_PROFILE_SHAPE=$shape timeout ${CCE_NCU_TIMEOUT:-330} ncu --clock-control none --section SpeedOfLight --csv --print-units base --kernel-name-base function \
    --kernel-name "$KERNELS" python3 profile_one.py > "$OUT/ncu_$tag.csv" 2>> "$OUT/plain_$tag.txt"
  echo "ncu rc=$? after $(( $(date +%s) - T0 )) s"; tail -2 "$OUT/plain_$tag.txt"
  python3 ../../scripts/device/ncu_stages.py "$OUT/ncu_$tag.csv" ${shape//,/ } "${kept:-0}" | tee "$OUT/stages_$tag.txt"
done
