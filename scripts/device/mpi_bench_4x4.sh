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
python3 scripts/device/collect_bench.py "$OUT" '*_r*.json' scaling_h200_host.json
for f in $OUT/*.err; do echo "== $f"; cat $f; done > $OUT/stderr.txt; rm -f $OUT/*.err; grep -v "^==" $OUT/stderr.txt | sort | uniq -c | head -20
