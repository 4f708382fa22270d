#!/usr/bin/env bash
# Device run: builds libcce_cuda.so, then the run-to-run repeats, the harness, the Python tests
# and the Swift tool's cases (carry .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh). Logs in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
(cd cuda && ./build.sh) > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
mkdir -p .gpu && cp cuda/libcce_cuda.so .gpu/
export CCE_LIB=cuda/libcce_cuda.so
python3 cuda/harness/repeat_backward.py --calls 20 > "$OUT/repeat_f16.log" 2>&1
python3 cuda/harness/repeat_backward.py --calls 12 --dtype bf16 --N 1000 --D 392 --V 20000 --seed 3 > "$OUT/repeat_bf16.log" 2>&1
python3 cuda/harness/test_cuda.py > "$OUT/test.log" 2>&1; echo "harness rc=$? at $(( $(date +%s) - T0 )) s"
CCE_CUDA_LIBRARY=cuda/libcce_cuda.so PYTHONPATH=python python3 -m pytest -q python/tests/test_cuda.py \
  -k "not agrees_with_the_cpu_engine" > "$OUT/pytest.log" 2>&1; echo "pytest rc=$? at $(( $(date +%s) - T0 )) s"
[ -f .gpu/bundle.tar.xz ] && { CCE_VALIDATE_ONLY=1 OUT="$OUT" bash cuda/swift_validate.sh > "$OUT/validate.log" 2>&1;
  echo "swift validate rc=$? at $(( $(date +%s) - T0 )) s"; }
grep -E "later calls" "$OUT"/repeat_*.log | cut -c1-200
echo "harness OK: $(grep -c '^OK' "$OUT/test.log")"; grep "NOT OK" "$OUT/test.log" | cut -c1-200
tail -2 "$OUT/pytest.log"; grep -E "FAILED|VALIDATION" "$OUT/validate.log" | tail -3 || true
