#!/usr/bin/env bash
# On the GPU machine's host: Float32 storage, builds of `cce` side by side (carry each bundle that
# cuda/make_swift_bundle.sh made, renamed), each beside the materialized baseline (OpenBLAS) in
# the same `cce bench` run: f32 N x D = 1024 x 1024 (N from $F32_TOKENS), V = 32768 (from
# $F32_VOCAB), LM-like, loss and loss+grad, alternating rounds, medians of 3.
#   bash scripts/device/f32_ab.sh "NAME=BUNDLE ..." "THREAD COUNTS" ROUNDS
# Lines on stdout: name, threads, round, then the materialized and cce rows of the bench's table.
set -uo pipefail
CONFIGS=$1 THREADS=$2 ROUNDS=$3
N=${F32_TOKENS:-1024} V=${F32_VOCAB:-32768}
# OpenBLAS 0.3.21 takes this host's Xeon for an SSE3 "Prescott" otherwise (Docs/BENCHMARKS.md).
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
grep -E "Model name|^CPU\(s\)|^Flags" <(lscpu) | cut -c1-120
T0=$(date +%s)
source "$(dirname "$0")/unpack_bundles.sh"
unpack_bundles "$CONFIGS"
for r in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    for c in $CONFIGS; do
      d=${DIR[${c#*=}]}
      echo "== ${c%%=*} t$t r$r at $(( $(date +%s) - T0 )) s"
      LD_LIBRARY_PATH="$d/lib" timeout 200 "$d/cce" bench --tokens "$N" --dim 1024 --vocab "$V" --dtype f32 \
        --threads "$t" --methods materialized,cce --kinds loss,loss+grad --repeats 3 2>&1 |
        grep -E "^(materialized|cce) |kernel|BLAS:" | sort -u
    done
  done
done
