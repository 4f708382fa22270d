#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/mpi from scripts/device/make_mpi_bundle.sh):
# one process of 16 threads with the token blocks the plan picks (at most 288 rows: one
# 256-row block per worker at N = 4096) against smaller blocks (CCE_TOKEN_BLOCK_MAX = 128 and
# 64: two and four blocks per worker, handed out by a counter, so a fast worker can take a
# slow one's), bf16 loss and loss+grad, N=4096 D=1024 V=128256, LM-like data; three
# alternating rounds, medians of 5 each; then one traced call of each (CCE_TRACE=1).
set -uo pipefail
. scripts/device/mpi_setup.sh
T0=$(date +%s)
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss,loss+grad --repeats 5 --methods cce --threads 16 --json"
one() { OPENBLAS_NUM_THREADS=16 CCE_TOKEN_BLOCK_MAX=$2 timeout 100 $B/cce bench $SHAPE > "$OUT/$1.json" 2> "$OUT/$1.err"; echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"; }
for r in 1 2 3; do for nb in 288 128 64; do one nb${nb}_r$r $nb; done; done
for nb in 288 128; do
  echo "== traced, CCE_TOKEN_BLOCK_MAX=$nb"
  CCE_TRACE=1 CCE_TOKEN_BLOCK_MAX=$nb timeout 60 $B/cce bench --tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss+grad --repeats 1 --methods cce --threads 16 2>&1 | grep -vE "^\s*$" | tail -n 40
done > "$OUT/traces.txt" 2>&1
uptime
python3 scripts/device/collect_bench.py "$OUT" 'nb*_r*.json' token_block_ab.json
cat $OUT/*.err 2>/dev/null | sort | uniq -c | head; rm -f $OUT/*.err
