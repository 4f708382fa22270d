#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh):
# an A/B of one engine setting from the environment, bf16 N = 4096, D = 1024, V = 128256,
# LM-like, loss and loss+grad, alternating rounds, medians of 5 (3 below 16 threads); then one
# traced 16-thread loss+grad call of each value (per-worker busy and waiting times).
#   bash scripts/device/env_ab.sh NAME VARIABLE "VALUES" "THREAD COUNTS" ROUNDS
# e.g. NAME segments, VARIABLE CCE_VOCAB_SEGMENTS, VALUES "4 1", THREAD COUNTS "16 2", ROUNDS 3.
# Lines on stdout (collect_bench.py), every run in $OUT/NAME_ab.json, the traces in
# $OUT/traces.txt.
set -uo pipefail
NAME=$1 VAR=$2 VALUES=$3 THREADS=$4 ROUNDS=$5
source scripts/device/bundle_env.sh
one() {  # name value threads repeats
  env "$VAR=$2" timeout 200 "$B/cce" bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --threads $3 \
    --methods cce --kinds loss,loss+grad --repeats $4 --json > "$OUT/$1.json" 2> "$OUT/$1.err"
  echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"
}
for r in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    for v in $VALUES; do one t${t}_${v}_r$r "$v" "$t" $([ "$t" -ge 16 ] && echo 5 || echo 3); done
  done
done
for v in $VALUES; do
  echo "== $VAR=$v" >> "$OUT/traces.txt"
  env "$VAR=$v" CCE_TRACE=1 timeout 120 "$B/cce" bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 \
    --threads 16 --methods cce --kinds loss,loss+grad --repeats 3 2>&1 | grep -E "cce trace|^cce " >> "$OUT/traces.txt"
done
python3 scripts/device/collect_bench.py "$OUT" 't*_r*.json' "${NAME}_ab.json"
cat "$OUT"/*.err 2>/dev/null | sort | uniq -c | head; rm -f "$OUT"/*.err "$OUT"/t*_r*.json
