#!/usr/bin/env bash
# One process of 16 threads against vocabulary-parallel 4 ranks x 4 threads at each exchange
# chunk of CHUNKS (tokens), alternating, ROUNDS rounds (the chunks in reverse order every other
# round); bf16 N = 4096, D = 1024, V = 128256, LM-like. Environment variables named in PASS
# (e.g. "CCE_EXCHANGE_SEEDS") go to every rank as they are set here.
#   bash scripts/device/mpi_chunks_ab.sh "4096 2048 1024" 2
set -uo pipefail
CHUNKS=${1:-"4096 2048 1024"}; ROUNDS=${2:-2}; LIMIT=${3:-500}
. scripts/device/mpi_setup.sh
T0=$(date +%s)
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 5 --json"
PASS_FLAGS=""; for v in ${PASS:-}; do PASS_FLAGS="$PASS_FLAGS -x $v"; done
plain() { OPENBLAS_NUM_THREADS=16 timeout 100 $B/cce bench $SHAPE --methods cce --threads 16 > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
vocab() { local name=$1 chunk=$2; CCE_EXCHANGE_CHUNK=$chunk OPENBLAS_NUM_THREADS=4 timeout 100 mpirun -np 4 --map-by slot:PE=4 --bind-to core -x CCE_EXCHANGE_CHUNK -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x CCE_MPI_LIBRARY $PASS_FLAGS $B/cce bench --parallel vocab $SHAPE --threads 4 > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; }
for r in $(seq 1 $ROUNDS); do
  [ $(( $(date +%s) - T0 )) -gt $LIMIT ] && break
  plain plain_r$r
  list=$CHUNKS; [ $((r % 2)) -eq 0 ] && list=$(echo $CHUNKS | tr ' ' '\n' | tac | tr '\n' ' ')
  for c in $list; do [ $(( $(date +%s) - T0 )) -gt $LIMIT ] || vocab vocab${c}_r$r $c; done
done
uptime
python3 scripts/device/collect_bench.py "$OUT" '*_r*.json' mpi_chunks_ab.json
for f in $OUT/*.err; do echo "== $f"; cat $f; done > $OUT/stderr_chunks.txt; rm -f $OUT/*.err; grep -c . $OUT/stderr_chunks.txt
