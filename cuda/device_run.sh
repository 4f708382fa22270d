#!/usr/bin/env bash
# One device run: (build if the carried library does not load), tests, side-by-side benchmark.
# Run from the repository root on the GPU machine:  bash cuda/device_run.sh
# Optional: wheels / source of the competing libraries under .whl/ (Liger Kernel as a wheel,
# apple/ml-cross-entropy's package folder under .whl/ext/). Logs go to $OUT (or cuda/results/run).
set -uo pipefail
OUT=${OUT:-$(pwd)/cuda/results/run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$(pwd)/.whl/ext${PYTHONPATH:+:$PYTHONPATH}
fi
cd cuda
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
nvcc --version | tail -1 | tee -a "$OUT/device.txt"
if ! python3 -c "import ctypes; ctypes.CDLL('./libcce_cuda.so').cce_host_run" 2>/dev/null; then
  echo "building here"; ./build.sh 2>&1 | grep -v C75 | tail -3 || exit 1
fi
readelf -d libcce_cuda.so | grep NEEDED | tee -a "$OUT/device.txt"
sha256sum libcce_cuda.so kernels/*.cu kernels/*.cuh include/*.h harness/*.py build.sh >> "$OUT/device.txt"
python3 harness/test_cuda.py 2>&1 | tee "$OUT/test.log"
python3 harness/bench_cuda.py --variants --stress --others --host ${BENCH_ARGS:-} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
