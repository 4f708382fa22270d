#!/usr/bin/env bash
# One device run: the Swift tool (a static `cce`, carried) against the CUDA library.
#   1. every case of harness/make_swift_cases.py: `cce reference` on the CPU in exact mode (the Float64
#      truth) and in default mode, and `--backend cuda`; `cce compare` of cuda vs the truth with
#      budgets by type, and of cuda vs the CPU default mode (for information);
#   2. `cce bench --backend cuda` at the Gemma 2 shape (N=8192, D=2304, V=256000, bf16, LM-like);
#   3. the worked example (Docs/examples/check_against_reference.py --cuda, f32).
# CCE_VALIDATE_ONLY=1 runs step 1 only.
# Expects .gpu/bundle.tar.xz (cce, the shared libraries it needs, the cases) and
# .gpu/libcce_cuda.so; writes logs into $OUT (or ./out).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
G=/tmp/cce-gpu; rm -rf "$G"; mkdir -p "$G"
tar -xJf .gpu/bundle.tar.xz -C "$G"
export LD_LIBRARY_PATH="$G/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CCE_CUDA_LIBRARY="$PWD/.gpu/libcce_cuda.so"
CCE="$G/cce"
nvidia-smi -L | tee "$OUT/device.txt"
"$CCE" --help | head -3
fail=0
declare -A BUDGET=([f32]="--budget 1e-4 --budget loss=1e-6" [f16]="--budget 5e-3 --budget loss=1e-5" [bf16]="--budget 1.6e-2 --budget loss=1e-5")
{
for d in "$G"/cases/f*/ "$G"/cases/bf*/; do
  name=$(basename "$d"); type=${name%%-*}
  args=$(sed "s#B.npy#${d}B.npy#; s#W.npy#${d}W.npy#" "$d/args")
  in="--embeddings $d/E.npy --classifier $d/C.npy --targets $d/T.npy $args"
  echo "=== $name ($args)"
  "$CCE" reference $in --mode exact --out "$G/r/$name/truth" || { echo "FAILED: cpu exact"; fail=1; continue; }
  "$CCE" reference $in --out "$G/r/$name/cpu" || { echo "FAILED: cpu default"; fail=1; continue; }
  "$CCE" reference $in --backend cuda --out "$G/r/$name/cuda" || { echo "FAILED: cuda"; fail=1; continue; }
  echo "--- cuda vs Float64 truth"
  "$CCE" compare --reference "$G/r/$name/truth" --candidate "$G/r/$name/cuda" ${BUDGET[$type]} || fail=1
  echo "--- cuda vs CPU default mode"
  "$CCE" compare --reference "$G/r/$name/cpu" --candidate "$G/r/$name/cuda"
  echo "--- CPU default mode vs Float64 truth"
  "$CCE" compare --reference "$G/r/$name/truth" --candidate "$G/r/$name/cpu"
done
echo "VALIDATION: $([[ $fail == 0 ]] && echo all budgets held || echo A BUDGET FAILED)"
} 2>&1 | tee "$OUT/validate.log"
[[ "${CCE_VALIDATE_ONLY:-0}" == 1 ]] && exit 0   # the cases only, no benchmark or example
echo "=== cce bench --backend cuda, Gemma 2 shape" | tee "$OUT/bench.log"
"$CCE" bench --backend cuda --tokens 8192 --dim 2304 --vocab 256000 --dtype bf16 --repeats 10 2>&1 | tee -a "$OUT/bench.log"
"$CCE" bench --backend cuda --tokens 8192 --dim 2304 --vocab 256000 --dtype bf16 --repeats 10 --scale 2 --alpha 1 2>&1 | tee -a "$OUT/bench.log"
echo "=== worked example" | tee "$OUT/example.log"
python3 Docs/examples/check_against_reference.py --cce "$CCE" --cuda --dtype f32 2>&1 | tee -a "$OUT/example.log"
