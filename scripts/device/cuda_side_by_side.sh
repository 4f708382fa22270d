#!/usr/bin/env bash
# Device run: the side-by-side benchmarks of Docs/CUDA.md at the Gemma 2 shape (LM-like and flat
# data, with the former kernels as variants) and at the Llama 3 shape, with Liger Kernel and
# ml-cross-entropy installed from wheels carried in .whl/ (pip download --no-deps liger-kernel
# cut-cross-entropy). Logs and JSON in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
(cd cuda && ./build.sh) > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
export CCE_LIB=cuda/libcce_cuda.so
nvidia-smi -L > "$OUT/device.txt"; lscpu | grep -E "Model name|^CPU\(s\)" >> "$OUT/device.txt"
timeout 330 python3 cuda/harness/bench_cuda.py --variants --only "cp.async (former" --stress --others \
  --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1; echo "gemma rc=$? at $(( $(date +%s) - T0 )) s"
timeout 200 python3 cuda/harness/bench_cuda.py --N 8192 --D 4096 --V 128256 --others \
  --json "$OUT/bench_llama.json" > "$OUT/bench_llama.log" 2>&1; echo "llama rc=$? at $(( $(date +%s) - T0 )) s"
grep -E "^\|" "$OUT/bench.log" "$OUT/bench_llama.log" | cut -c1-220
