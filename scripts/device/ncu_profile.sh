#!/usr/bin/env bash
# Issue 15 profile: every kernel of two forward+backward calls of the CUDA library at the Gemma 2 shape (cuda/harness/profile_one.py) under ncu SpeedOfLight, filtered by name to the library's kernels and radix sorts (PyTorch's own reduce and sort kernels of the data generation match too: the summary, ncu_stages.py, keeps the second call only). Run on the GPU machine; it builds cuda/libcce_cuda.so first.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
cd cuda
T0=$(date +%s)
./build.sh > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - T0 )) s"
export CCE_LIB=$PWD/libcce_cuda.so CCE_CUDA_LIBRARY=$PWD/libcce_cuda.so PYTHONPATH=$PWD/harness
cd harness
timeout 250 ncu --clock-control none --section SpeedOfLight --csv --kernel-name-base function --kernel-name 'regex:^(avg_logit|block_mean|class_weight_terms|colsum|dz|finish_dE|finish_db|invert|iota|lse_finish|lse_partial|lse_tma|mean_rows|prep_targets|products|products_wg|reduce|reduce_rows|row_weights|tpos|fill)_kernel$|[Rr]adix' python3 profile_one.py > "$OUT/ncu_all.csv" 2> "$OUT/ncu_all.err"
echo "ncu rc=$? after $(( $(date +%s) - T0 )) s"; tail -3 "$OUT/ncu_all.err"
python3 ../../scripts/device/ncu_stages.py "$OUT/ncu_all.csv"
