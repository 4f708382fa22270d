#!/usr/bin/env bash
# device call 2 (mpi-train helper): issue 14's same-machine target on the 16-core host.
# 1 process x 16 threads against vocab-parallel 4 ranks x 4 threads (and token-parallel 4x4),
# bf16 loss+grad, N=4096 D=1024 V=128256, LM-like data; alternating rounds in one run.
set -uo pipefail
. scripts/device/mpi_setup.sh
SHAPE=${SHAPE:-"--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 3 --json"}
one() { OPENBLAS_NUM_THREADS=16 timeout 150 $B/cce bench --parallel vocab $SHAPE --threads 16 > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$?"; }
par() { local name=$1 scheme=$2; shift 2; OPENBLAS_NUM_THREADS=4 timeout 150 mpirun -np 4 "$@" -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x CCE_MPI_LIBRARY $B/cce bench --parallel $scheme $SHAPE --threads 4 > "$OUT/$name.json" 2> "$OUT/$name.err"; local rc=$?; echo "$name rc=$rc"; return $rc; }
for r in 1 2; do
  one one_r$r
  par vocab_none_r$r vocab --bind-to none
  par vocab_core_r$r vocab --map-by slot:PE=4 --bind-to core
done
par tokens_core_r1 tokens --map-by slot:PE=4 --bind-to core || par tokens_none_r1 tokens --bind-to none
uptime
python3 - "$OUT" <<'PY'
import json, os, sys, glob
out = sys.argv[1]; runs = {}
for f in sorted(glob.glob(out + "/*.json")):
    name = os.path.basename(f)[:-5]
    try: runs[name] = json.load(open(f))
    except Exception as e: print(name, "unreadable:", e, open(f[:-5] + ".err").read()[-600:]); continue
    for row in runs[name]["rows"]:
        print(f'{name:16s} {runs[name]["ranks"]}x{runs[name]["threads_per_rank"]} {row["kind"]:10s} median {row["median_seconds"]:.3f} min {row["min_seconds"]:.3f} loss {row["loss"]:.6f} ' +
              " ".join(f'r{x["rank"]}:peak {x["peak_bytes"]/1e6:.1f}MB sent {x["sent_bytes"]/1e6:.2f}MB comm {x["communication_seconds_per_step"]:.3f}s cpu {x["cpu_seconds_per_step"]:.2f}s' for x in row["ranks"]))
json.dump(runs, open(out + "/scaling_h200_host.json", "w"), indent=1, sort_keys=True)
for f in set(glob.glob(out + "/*_r*.json")): os.remove(f)
PY
for f in $OUT/*.err; do echo "== $f"; cat $f; done > $OUT/stderr.txt; rm -f $OUT/*.err; grep -v "^==" $OUT/stderr.txt | sort | uniq -c | head -20
