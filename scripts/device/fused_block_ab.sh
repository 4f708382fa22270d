#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh):
# the fused call's rows-in-flight limit (TilePlan.limitingRowsInFlight, floor 128 rows) against
# the plan's blocks (CCE_FUSED_BLOCK_FLOOR=65536 turns the limit off) where the limit applies on
# this host: N = 8192 at 16 threads (128-row blocks instead of 256) and N = 1024 at 2 threads;
# bf16 D = 1024, V = 128256, LM-like, loss+grad; three alternating rounds, medians of 5 (3 at
# 2 threads). JSON rows in $OUT, a summary on stdout.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
B=$(mktemp -d); tar -xJf .gpu/bundle.tar.xz -C "$B"
export LD_LIBRARY_PATH="$B/lib"
grep -E "Model name|^CPU\(s\)" <(lscpu)
T0=$(date +%s)
one() {  # name floor tokens threads repeats
  CCE_FUSED_BLOCK_FLOOR=$2 timeout 150 "$B/cce" bench --tokens $3 --dim 1024 --vocab 128256 --dtype bf16 --threads $4 \
    --methods cce --kinds loss+grad --repeats $5 --json > "$OUT/$1.json" 2> "$OUT/$1.err"
  echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"
}
for r in 1 2 3; do
  for f in 128 65536; do one n8192_t16_f${f}_r$r $f 8192 16 5; done
  for f in 128 65536; do one n1024_t2_f${f}_r$r $f 1024 2 3; done
done
python3 - "$OUT" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "n*_r*.json"))):
    try: r = json.load(open(path))
    except Exception as e: print(os.path.basename(path), "unreadable", e); continue
    for x in r["rows"]:
        if x["kind"] == "loss+grad":
            print(os.path.basename(path), x.get("kernel"), "median %.3f min %.3f s" % (x["median_seconds"], x["min_seconds"]),
                  "peak %.1f later %.1f MB" % (x["peak_bytes"] / 1e6, (x.get("later_peak_bytes") or 0) / 1e6), "|", r.get("filter"))
PY
cat "$OUT"/*.err 2>/dev/null | sort | uniq -c | head; rm -f "$OUT"/*.err
