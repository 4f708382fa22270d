#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh):
# vocabulary segments (TilePlan.vocabSegments, 4 at V = 128256) against a token block's forward
# in one piece (CCE_VOCAB_SEGMENTS=1), bf16 N = 4096, D = 1024, V = 128256, LM-like, loss and
# loss+grad, at 16 and 2 threads, three alternating rounds, medians of 5 (3 at 2 threads); then
# one traced 16-thread loss+grad call of each (per-worker busy and waiting times). Lines on
# stdout (collect_bench.py), every run in $OUT/segments_ab.json, the traces in $OUT/traces.txt.
set -uo pipefail
source scripts/device/bundle_env.sh
one() {  # name segments threads repeats
  CCE_VOCAB_SEGMENTS=$2 timeout 200 "$B/cce" bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --threads $3 \
    --methods cce --kinds loss,loss+grad --repeats $4 --json > "$OUT/$1.json" 2> "$OUT/$1.err"
  echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"
}
for r in 1 2 3; do
  for g in 4 1; do one t16_g${g}_r$r $g 16 5; done
  for g in 4 1; do one t2_g${g}_r$r $g 2 3; done
done
for g in 4 1; do
  echo "== segments $g" >> "$OUT/traces.txt"
  CCE_VOCAB_SEGMENTS=$g CCE_TRACE=1 timeout 120 "$B/cce" bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 \
    --threads 16 --methods cce --kinds loss,loss+grad --repeats 3 2>&1 | grep "cce trace" >> "$OUT/traces.txt"
done
python3 scripts/device/collect_bench.py "$OUT" 't*_r*.json' segments_ab.json
cat "$OUT"/*.err 2>/dev/null | sort | uniq -c | head; rm -f "$OUT"/*.err "$OUT"/t*_r*.json
