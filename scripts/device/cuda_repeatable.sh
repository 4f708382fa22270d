#!/usr/bin/env bash
# Device run (Docs/CUDA.md, "Run to run"): builds libcce_cuda.so, repeats backwards bit for bit
# (cuda/harness/repeat_backward.py, f16 and bf16), runs the harness and times the default
# against the bulk-copy products at the Gemma 2 shape. Output under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
(cd cuda && ./build.sh) > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
export CCE_LIB=cuda/libcce_cuda.so
python3 cuda/harness/repeat_backward.py --calls 30 > "$OUT/repeat_f16.log" 2>&1
python3 cuda/harness/repeat_backward.py --calls 20 --dtype bf16 --N 1000 --D 392 --V 20000 --seed 3 > "$OUT/repeat_bf16.log" 2>&1
echo "repeats done at $(( $(date +%s) - T0 )) s"
python3 cuda/harness/test_cuda.py > "$OUT/test.log" 2>&1
echo "harness rc=$? at $(( $(date +%s) - T0 )) s"
python3 cuda/harness/bench_cuda.py --no-torch --variants --only "bulk copy" --reps 10 --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? at $(( $(date +%s) - T0 )) s"
grep -E "differ|first call" "$OUT"/repeat_*.log | cut -c1-300
grep -c "^OK" "$OUT/test.log"; grep "NOT OK" "$OUT/test.log" | cut -c1-200; grep -E "repeatable|products tma" "$OUT/test.log" | cut -c1-160
grep -E "^\| cce" "$OUT/bench.log"
