#!/usr/bin/env bash
# Docs/SCALING.md "Later" (2026-12-01): one process of 16 threads against vocabulary-parallel 4 ranks x 4
# threads with the exchange chunk at 1024 and 4096 tokens, alternating, every call traced (CCE_TRACE);
# then f32 loss+grad against the materialized baseline at 2 and 16 threads (Docs/PERFORMANCE.md).
set -uo pipefail
. scripts/device/mpi_setup.sh
T0=$(date +%s)
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 3 --json"
plain() { CCE_TRACE=1 OPENBLAS_NUM_THREADS=16 timeout 100 $B/cce bench $SHAPE --methods cce --threads 16 > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
vocab() { local name=$1 chunk=$2; CCE_TRACE=1 CCE_EXCHANGE_CHUNK=$chunk OPENBLAS_NUM_THREADS=4 timeout 100 mpirun -np 4 --map-by slot:PE=4 --bind-to core -x CCE_TRACE -x CCE_EXCHANGE_CHUNK -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x CCE_MPI_LIBRARY $B/cce bench --parallel vocab $SHAPE --threads 4 > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; }
plain plain_r1; vocab vocab1024_r1 1024; vocab vocab4096_r1 4096; plain plain_r2; vocab vocab4096_r2 4096; vocab vocab1024_r2 1024
python3 scripts/device/collect_bench.py "$OUT" '*_r*.json'
for f in $OUT/*.err; do echo "== $f"; grep -E "trace" $f | grep fused | head -4 | cut -c1-400; done
echo "== f32 V=32768 N=1024, cce vs materialized"
for t in 2 16; do OPENBLAS_CORETYPE=SkylakeX "$B/cce" bench --tokens 1024 --dim 1024 --vocab 32768 --dtype f32 --threads $t --methods cce,materialized --kinds loss+grad --repeats 3 2>&1 | grep -E "^(cce|materialized) " | sed "s/^/t$t /"; done
uptime
