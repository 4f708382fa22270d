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
python3 scripts/device/collect_bench.py "$OUT" '*_r*.json' scaling_h200_host_plain.json
for f in $OUT/*.err; do echo "== $f"; cat $f; done > $OUT/stderr3.txt; rm -f $OUT/*.err; grep -c . $OUT/stderr3.txt
