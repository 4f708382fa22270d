#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/mpi from scripts/device/make_mpi_bundle.sh):
# one process of 16 threads against vocabulary-parallel 4 ranks x 4 threads with the saved
# logits (the default) and without them (CCE_SAVED_PER_ROW=0 on every rank), bf16 loss+grad,
# N=4096 D=1024 V=128256, LM-like data; two alternating rounds, medians of 5 each.
set -uo pipefail
. scripts/device/mpi_setup.sh
T0=$(date +%s)
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 5 --json"
plain() { OPENBLAS_NUM_THREADS=16 timeout 100 $B/cce bench $SHAPE --methods cce --threads 16 > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
vocab() { local name=$1 room=$2; OPENBLAS_NUM_THREADS=4 CCE_SAVED_PER_ROW=$room timeout 100 mpirun -np 4 --map-by slot:PE=4 --bind-to core -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x CCE_MPI_LIBRARY -x CCE_SAVED_PER_ROW $B/cce bench --parallel vocab $SHAPE --threads 4 > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; }
for r in 1 2; do
  plain plain_r$r; vocab saved_r$r 2048; vocab recompute_r$r 0
done
# Float32 storage (nearly every row segment kept) against the materialized baseline, with the
# chosen kernel (512-bit FMA) and the portable one (dC's updates from the token block's slices).
for t in 2 16; do for k in auto portable; do
  echo "== f32 N=1024 V=32768, $t threads, kernel $k"
  K=""; [ $k = auto ] || K="CCE_KERNEL=$k"
  env $K timeout 60 $B/cce bench --tokens 1024 --dim 1024 --vocab 32768 --dtype f32 --threads $t --methods cce,materialized --kinds loss,loss+grad --repeats 3 2>&1 | grep -E "^(cce|materialized) "
done; done
uptime
python3 scripts/device/collect_bench.py "$OUT" '*_r*.json' mpi_saved_ab.json
for f in $OUT/*.err; do echo "== $f"; cat $f; done > $OUT/stderr.txt; rm -f $OUT/*.err; grep -v "^==" $OUT/stderr.txt | sort | uniq -c | head -20
