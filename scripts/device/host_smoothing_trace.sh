#!/usr/bin/env bash
# Phase traces (CCE_TRACE=1) of bf16 loss+grad with label smoothing 0 and 0.1 on the GPU
# machine's host, 2 threads, N 4096, D 1024, V 128256, alternating twice (carry
# .gpu/bundle.tar.xz from scripts/device/stage_cce.sh). Logs under $OUT.
set -uo pipefail
source "$(dirname "$0")/bundle_env.sh"
for round in 1 2; do
    for a in 0 0.1; do
        CCE_TRACE=1 timeout 60 "$B/cce" bench --methods cce --kinds loss+grad --tokens 4096 --dim 1024 --vocab 128256 \
            --threads 2 --repeats 2 --label-smoothing $a > "$OUT/trace-r$round-a$a.txt" 2>&1
        echo "round $round alpha $a rc $? at $(( $(date +%s) - T0 )) s"; grep -E "^cce |trace|worker|phase" "$OUT/trace-r$round-a$a.txt" | head -12
    done
done
