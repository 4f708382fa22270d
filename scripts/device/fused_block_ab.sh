#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh):
# the fused call's rows-in-flight limit (TilePlan.limitingRowsInFlight, floor 128 rows) against
# the plan's blocks (CCE_FUSED_BLOCK_FLOOR=65536 turns the limit off), bf16 D = 1024,
# V = 128256, LM-like, loss+grad, three alternating rounds, medians of 5 (3 at 2 threads):
# N = 1024 at 2 threads, where the limit applies (128-row blocks instead of 256), and N = 8192
# at 16 threads, where it applied before it was bounded to 4 threads (both sides now run the
# plan's 256-row blocks there: the pair checks that). Lines on stdout (collect_bench.py), every
# run in $OUT/fused_block_ab.json.
set -uo pipefail
source scripts/device/bundle_env.sh
one() {  # name floor tokens threads repeats
  CCE_FUSED_BLOCK_FLOOR=$2 timeout 150 "$B/cce" bench --tokens $3 --dim 1024 --vocab 128256 --dtype bf16 --threads $4 \
    --methods cce --kinds loss+grad --repeats $5 --json > "$OUT/$1.json" 2> "$OUT/$1.err"
  echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"
}
for r in 1 2 3; do
  for f in 128 65536; do one n8192_t16_f${f}_r$r $f 8192 16 5; done
  for f in 128 65536; do one n1024_t2_f${f}_r$r $f 1024 2 3; done
done
python3 scripts/device/collect_bench.py "$OUT" 'n*_r*.json' fused_block_ab.json
cat "$OUT"/*.err 2>/dev/null | sort | uniq -c | head; rm -f "$OUT"/*.err
