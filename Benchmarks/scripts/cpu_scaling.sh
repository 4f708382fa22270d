#!/usr/bin/env bash
# CPU measurements on a many-core machine without Swift (the GPU machine's host), from the
# static bundle cuda/make_swift_bundle.sh packs: `cce bench` at N=4096, D=1024, V=128256
# bf16 with 16 and 2 threads (each kernel in one run), then PyTorch eager and torch.compile
# at the same shape and thread counts (pytorch_baseline.py --compare). Results in $OUT (or
# ./out): bench_tT.json, torch_tT.txt, lscpu.txt.
#   usage: bash Benchmarks/scripts/cpu_scaling.sh [.gpu/bundle.tar.xz]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out}; mkdir -p "$OUT"
B=$(mktemp -d); tar -xJf "${1:-.gpu/bundle.tar.xz}" -C "$B"
export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
lscpu > "$OUT/lscpu.txt"
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16"
"$B/cce" bench $SHAPE --threads 16 --methods cce,cce-avx512fma,cce-portable --kinds loss,loss+grad --repeats 3 \
  --json > "$OUT/bench_t16.json" 2> "$OUT/bench_t16.log"
"$B/cce" bench $SHAPE --threads 2 --methods cce,cce-avx512fma --kinds loss,loss+grad --repeats 2 \
  --json > "$OUT/bench_t2.json" 2> "$OUT/bench_t2.log"
for t in 16 2; do
  python3 Benchmarks/scripts/pytorch_baseline.py --compare "$OUT/bench_t$t.json" --threads $t \
    --methods torch-compile,torch-eager --repeats 3 > "$OUT/torch_t$t.txt" 2>&1
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for t in (16, 2):
    r = json.load(open(f"{out}/bench_t{t}.json"))
    for x in r["rows"]:
        print(t, x["method"], x["kind"], x.get("kernel"), round(x["median_seconds"], 3), round(x["peak_bytes"] / 1e6, 1))
    print(t, "filter:", r.get("filter"), "| BLAS:", r.get("blas"))
PY
tail -n 15 "$OUT/torch_t16.txt" "$OUT/torch_t2.txt"
