#!/usr/bin/env bash
# On the GPU machine's 16-core host: builds of `cce` side by side (carry each bundle that
# cuda/make_swift_bundle.sh made, renamed), each with its own engine settings from the
# environment, bf16 N = 4096, D = 1024, V = 128256, LM-like, loss and loss+grad, alternating
# rounds, medians of 5 (3 below 16 threads); then one traced 16-thread loss+grad call of each.
#   bash scripts/device/bundles_ab.sh "NAME=BUNDLE[,VAR=VALUE...] ..." "THREAD COUNTS" ROUNDS
# e.g. "base=.gpu/base.tar.xz new=.gpu/bundle.tar.xz seg16=.gpu/bundle.tar.xz,CCE_VOCAB_SEGMENTS=16" "16" 3.
# Lines on stdout (collect_bench.py), every run in $OUT/${AB_NAME:-bundles}_ab.json (the per-run
# files are removed: the device returns few files), the traces in $OUT/traces.txt. (env_ab.sh is this with one bundle and one setting's values.)
set -uo pipefail
CONFIGS=$1 THREADS=$2 ROUNDS=$3
OUT=${OUT:-out}; mkdir -p "$OUT"
grep -E "Model name|^CPU\(s\)" <(lscpu)
T0=$(date +%s)
source "$(dirname "$0")/unpack_bundles.sh"
unpack_bundles "$CONFIGS"
one() {  # config name threads repeats [extra environment]
  local spec=${1#*=}; local d=${DIR[${spec%%,*}]}; local vars=()
  [[ $spec == *,* ]] && IFS=, read -r -a vars <<< "${spec#*,}"
  env LD_LIBRARY_PATH="$d/lib" "${vars[@]}" "${@:5}" timeout 200 "$d/cce" bench --tokens 4096 --dim 1024 \
    --vocab 128256 --dtype bf16 --threads $3 --methods cce --kinds loss,loss+grad --repeats $4 --json
}
for r in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    for c in $CONFIGS; do
      n=t${t}_${c%%=*}_r$r
      one "$c" "$n" "$t" $([ "$t" -ge 16 ] && echo 5 || echo 3) > "$OUT/$n.json" 2> "$OUT/$n.err"
      echo "$n rc=$? at $(( $(date +%s) - T0 )) s"
    done
  done
done
for c in $CONFIGS; do
  echo "== ${c%%=*}" >> "$OUT/traces.txt"
  one "$c" trace 16 2 CCE_TRACE=1 2>&1 | grep -E "cce trace fused" >> "$OUT/traces.txt"
done
python3 scripts/device/collect_bench.py "$OUT" 't*_r*.json' "${AB_NAME:-bundles}_ab.json"
cat "$OUT"/*.err 2>/dev/null | sort | uniq -c | head; rm -f "$OUT"/*.err "$OUT"/t*_r*.json
