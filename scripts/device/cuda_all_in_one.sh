#!/usr/bin/env bash
# One device call: cuda_validate_all.sh, then the side-by-side runs of Docs/CUDA.md (Gemma 2 shape
# with flat data and the former kernels, Llama 3 shape; Liger Kernel and ml-cross-entropy from the
# wheels in .whl/: pip download --no-deps liger-kernel cut-cross-entropy), each under a time limit
# so that the whole stays inside one call. Carry .gpu/bundle.tar.xz and .whl.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
bash scripts/device/cuda_validate_all.sh
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > /dev/null 2>&1; export PYTHONPATH=/tmp/site
export CCE_LIB=cuda/libcce_cuda.so
nvidia-smi -L > "$OUT/device.txt"; lscpu | grep -E "Model name|^CPU\(s\)" >> "$OUT/device.txt"
left() { echo $(( 570 - ($(date +%s) - T0) )); }
timeout $(( $(left) * 6 / 10 )) python3 cuda/harness/bench_cuda.py --variants --only "cp.async (former" --stress --others \
  --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1; echo "gemma rc=$? at $(( $(date +%s) - T0 )) s"
timeout $(left) python3 cuda/harness/bench_cuda.py --N 8192 --D 4096 --V 128256 --others \
  --json "$OUT/bench_llama.json" > "$OUT/bench_llama.log" 2>&1; echo "llama rc=$? at $(( $(date +%s) - T0 )) s"
grep -E "^\|" "$OUT/bench.log" "$OUT/bench_llama.log" | cut -c1-220
