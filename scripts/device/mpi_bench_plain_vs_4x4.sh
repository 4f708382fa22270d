#!/usr/bin/env bash
# device call 3 (mpi-train helper): the one-process baseline through the engine's own path
# (cce bench --methods cce, 16 threads) against vocab-parallel 4 ranks x 4 threads; alternating.
set -uo pipefail
. scripts/device/mpi_setup.sh
T0=$(date +%s)
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 5 --json"
plain() { OPENBLAS_NUM_THREADS=16 timeout 100 $B/cce bench $SHAPE --methods cce --threads 16 > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
vocab() { OPENBLAS_NUM_THREADS=4 timeout 100 mpirun -np 4 --map-by slot:PE=4 --bind-to core -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x CCE_MPI_LIBRARY $B/cce bench --parallel vocab $SHAPE --threads 4 > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
plain plain_r1; vocab vocab_core_r3; plain plain_r2
[ $(( $(date +%s) - T0 )) -lt 80 ] && vocab vocab_core_r4
uptime
python3 - "$OUT" <<'PY'
import json, os, sys, glob
out = sys.argv[1]; runs = {}
for f in sorted(glob.glob(out + "/*_r*.json")):
    name = os.path.basename(f)[:-5]
    try: runs[name] = json.load(open(f))
    except Exception as e: print(name, "unreadable:", e); continue
    for row in runs[name]["rows"]:
        print(f'{name:16s} {row["kind"]:10s} median {row["median_seconds"]:.3f} min {row["min_seconds"]:.3f}', row.get("peak_bytes", ""), row.get("loss", ""))
json.dump(runs, open(out + "/scaling_h200_host_plain.json", "w"), indent=1, sort_keys=True)
for f in set(glob.glob(out + "/*_r*.json")): os.remove(f)
PY
for f in $OUT/*.err; do echo "== $f"; cat $f; done > $OUT/stderr3.txt; rm -f $OUT/*.err; grep -c . $OUT/stderr3.txt
