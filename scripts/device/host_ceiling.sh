#!/usr/bin/env bash
# The GPU machine's host as a machine for threads: P copies of the same one-thread `cce bench`
# run at once (separate processes, no shared work, no hand-off), against one copy alone.
# If 16 copies each run slower than one, that is the host's ceiling for thread scaling (shared
# power, caches, memory), not the engine's scheduling. Then the engine's own 2 -> 16 threads
# at N = 4096, interleaved, and one traced 16-thread loss+grad call. Needs .gpu/bundle.tar.xz
# (cuda/make_swift_bundle.sh). Usage: host_ceiling.sh ["P values"] [rounds]. With the defaults
# the copies alone take most of a device call's 10 minutes (on 2026-12-03 the limit cut the
# traced call at the end; Docs/bench/h200host-ceiling-trace16.txt is from a second call).
set -uo pipefail
source scripts/device/bundle_env.sh
lscpu > "$OUT/lscpu.txt"
export OPENBLAS_NUM_THREADS=1   # the data generator's sgemm: one thread a process
PS=${1:-"1 2 8 16"}; ROUNDS=${2:-2}
COPIES=$(mktemp -d)   # the copies' JSON (only the summary goes to $OUT)
# A copy's work is a 256-token block: what each of 16 workers gets in a call at N = 4096.
SHAPE="--tokens 256 --dim 1024 --vocab 128256 --dtype bf16"
summary() {   # kind P round files...: the copies' medians
  python3 - "$@" <<'PY'
import json, statistics, sys
kind, p, rnd, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
t = []
for f in files:
    try:
        r = json.load(open(f))
        t += [x["median_seconds"] for x in r["rows"] if x["kind"] == kind]
    except Exception as e:
        print("unreadable", f, e)
if t:
    print(f"{kind:10s} copies {p:>2s} round {rnd}: median of copies {statistics.median(t):.3f} s, "
          f"min {min(t):.3f}, max {max(t):.3f} ({len(t)} copies)")
PY
}
for kind in loss loss+grad; do
  for r in $(seq 1 "$ROUNDS"); do
    for P in $PS; do
      for i in $(seq 1 "$P"); do
        "$B/cce" bench $SHAPE --threads 1 --methods cce --kinds "$kind" --repeats 9 --json \
          > "$COPIES/copy_${kind}_p${P}_r${r}_$i.json" 2>/dev/null &
      done
      wait
      summary "$kind" "$P" "$r" "$COPIES"/copy_${kind}_p${P}_r${r}_*.json | tee -a "$OUT/ceiling.txt"
    done
  done
done
echo "== the engine, 2 and 16 threads, N = 4096, interleaved" | tee -a "$OUT/ceiling.txt"
for r in $(seq 1 "$ROUNDS"); do
  for t in 16 2; do
    "$B/cce" bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --threads $t --methods cce \
      --kinds loss,loss+grad --repeats 3 2>/dev/null | grep -E "^cce " | sed "s/^/threads $t round $r: /" | tee -a "$OUT/ceiling.txt"
  done
done
echo "== one traced 16-thread loss+grad call" | tee -a "$OUT/ceiling.txt"
CCE_TRACE=1 "$B/cce" bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --threads 16 --methods cce \
  --kinds loss,loss+grad --repeats 1 2>&1 | grep "cce trace" | tee -a "$OUT/ceiling.txt"
echo "elapsed $(( $(date +%s) - T0 )) s"
