#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/mpi from scripts/device/make_mpi_bundle.sh):
# the one-process fused call (each worker runs its token block's forward, then its backward)
# against the same call through the vocabulary-parallel path on one rank, no mpirun (the
# chunk's forwards, then the chunk's backwards handed out afresh, so a worker whose forward
# ended early can take another block's backward), 16 threads, bf16 loss and loss+grad,
# N=4096 D=1024 V=128256, LM-like data; three alternating rounds, medians of 5; then one
# traced call of each (CCE_TRACE=1).
set -uo pipefail
. scripts/device/mpi_setup.sh
T0=$(date +%s)
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 5 --threads 16 --json"
plain() { timeout 100 $B/cce bench $SHAPE --methods cce > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
phases() { timeout 100 $B/cce bench $SHAPE --parallel vocab > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
for r in 1 2 3; do plain plain_r$r; phases phases_r$r; done
{
  echo "== traced, one-process fused call"
  CCE_TRACE=1 timeout 60 $B/cce bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss+grad --repeats 1 --methods cce --threads 16 2>&1 | grep "cce trace"
  echo "== traced, one rank of the vocabulary-parallel path"
  CCE_TRACE=1 timeout 60 $B/cce bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss+grad --repeats 1 --parallel vocab --threads 16 2>&1 | grep "cce trace"
} > "$OUT/traces.txt" 2>&1
uptime
python3 scripts/device/collect_bench.py "$OUT" '*_r*.json' phases_ab.json
cat $OUT/*.err 2>/dev/null | sort | uniq -c | head; rm -f $OUT/*.err
