#!/usr/bin/env bash
# Docs/PERFORMANCE.md side-by-side run on the GPU machine's host: `cce bench` then
# Benchmarks/scripts/pytorch_baseline.py --compare (torch.compile) at 16 and 2 threads, bf16
# N=4096 D=1024 V=128256; then f32 against the materialized baseline. Needs .gpu/bundle.tar.xz
# (cuda/make_swift_bundle.sh); with the device tool: carry it and run this script.
set -uo pipefail
source scripts/device/bundle_env.sh
lscpu > "$OUT/lscpu.txt"
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16"
"$B/cce" bench $SHAPE --threads 16 --methods cce --kinds loss,loss+grad --repeats 5 --json > "$OUT/bench_t16.json" 2> "$OUT/bench_t16.log"
python3 Benchmarks/scripts/pytorch_baseline.py --compare "$OUT/bench_t16.json" --threads 16 --methods torch-compile --repeats 3 > "$OUT/torch_t16.txt" 2>&1
"$B/cce" bench $SHAPE --threads 2 --methods cce --kinds loss,loss+grad --repeats 3 --json > "$OUT/bench_t2.json" 2> "$OUT/bench_t2.log"
python3 Benchmarks/scripts/pytorch_baseline.py --compare "$OUT/bench_t2.json" --threads 2 --methods torch-compile --repeats 2 > "$OUT/torch_t2.txt" 2>&1
for t in 16 2; do python3 - "$OUT/bench_t$t.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for x in r["rows"]:
    print(r.get("threads"), x["method"], x["kind"], x.get("kernel"), round(x["median_seconds"], 3), round(x["min_seconds"], 3) if "min_seconds" in x else "", round(x["peak_bytes"] / 1e6, 1))
print("filter:", r.get("filter"))
PY
tail -n 12 "$OUT/torch_t$t.txt"; done
echo "== f32 V=32768 N=1024, 2 and 16 threads, cce vs materialized (OpenBLAS SkylakeX)"
for t in 2 16; do OPENBLAS_CORETYPE=SkylakeX "$B/cce" bench --tokens 1024 --dim 1024 --vocab 32768 --dtype f32 --threads $t --methods cce,materialized --kinds loss+grad --repeats 3 2>&1 | grep -E "^(cce|materialized) "; done
