#!/usr/bin/env bash
# One device call for the dense products (cuda/kernels/dense_products.cu): harness/test_cuda.py
# with the carried build, the two builds A/B on the default (filtered) path, which must keep its
# bits, then bench_cuda.py's "no filter" rows (dense products against the kernels with nothing
# skipped) at the Gemma 2 and Llama 3 shapes, LM-like and flat data. Carry .gpu/libcce_cuda.so
# (this build) and .gpu/base.so (the build before). Logs under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( ${CCE_CALL_SECONDS:-580} - ($(date +%s) - T0) )); }
ROOT=$(pwd)
export CCE_LIB=$ROOT/.gpu/libcce_cuda.so PYTHONUNBUFFERED=1
cd cuda/harness
nvidia-smi -L > "$OUT/device.txt"
python3 - >> "$OUT/device.txt" 2>&1 <<'PY'
import torch, ctypes
torch.zeros(1, device="cuda") @ torch.zeros(1, 1, device="cuda")
print("torch", torch.__version__, "cuda", torch.version.cuda)
print([l.split()[-1] for l in open("/proc/self/maps") if "cublas" in l][:2])
PY
cat "$OUT/device.txt"
timeout $(( $(left) * 3 / 10 )) python3 test_cuda.py > "$OUT/test.log" 2>&1; echo "test rc=$? at $(( $(date +%s) - T0 )) s"
tail -1 "$OUT/test.log"; grep "NOT OK" "$OUT/test.log" | cut -c1-240 | head -20; grep "dense vs\|dense rep" "$OUT/test.log" | cut -c1-240
timeout $(( $(left) * 3 / 10 )) python3 lib_ab.py "$ROOT/.gpu/base.so" "$CCE_LIB" --rounds 2 > "$OUT/ab_gemma.log" 2>&1
echo "ab rc=$? at $(( $(date +%s) - T0 )) s"; tail -4 "$OUT/ab_gemma.log"
timeout $(( $(left) / 2 )) python3 bench_cuda.py --no-torch --variants --only "no filter" --stress \
  --json "$OUT/dense_gemma.json" > "$OUT/dense_gemma.log" 2>&1; echo "gemma rc=$? at $(( $(date +%s) - T0 )) s"
timeout $(left) python3 bench_cuda.py --N 8192 --D 4096 --V 128256 --no-torch --variants --only "no filter" --stress \
  --json "$OUT/dense_llama.json" > "$OUT/dense_llama.log" 2>&1; echo "llama rc=$? at $(( $(date +%s) - T0 )) s"
grep -E "^\|" "$OUT/dense_gemma.log" "$OUT/dense_llama.log" | cut -c1-200
