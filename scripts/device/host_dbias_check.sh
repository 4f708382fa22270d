#!/usr/bin/env bash
# dBias's dropped-mass estimate (Backward.swift, DroppedBiasMass) on the GPU machine's host
# kernels: `cce selfcheck` at seeds 500000 and 911000 (911059 failed on dBias before the change)
# once per tile kernel, then `cce accuracy --bias` on bf16 and f16 with the default kernel and
# the portable one (carry .gpu/bundle.tar.xz from scripts/device/stage_cce.sh). Logs under $OUT.
set -uo pipefail
source "$(dirname "$0")/bundle_env.sh"
CASES=${1:-1000}
for k in default avx512bf16 portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    for seed in 500000 911000; do
        echo "== kernel $k seed $seed"
        timeout 80 "$B/cce" selfcheck --cases "$CASES" --seed "$seed" > "$OUT/selfcheck-$k-$seed.txt" 2>&1
        echo "exit $? at $(( $(date +%s) - T0 )) s"; tail -2 "$OUT/selfcheck-$k-$seed.txt"
    done
done
unset CCE_KERNEL
for k in default portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    echo "== accuracy, kernel $k"
    timeout 60 "$B/cce" accuracy --tokens 1000 --dim 512 --vocab 32003 --dtypes bf16,f16 --threads 16 --bias \
        > "$OUT/accuracy-bias-$k.txt" 2>&1
    echo "exit $? at $(( $(date +%s) - T0 )) s"
    grep -E "\| (default|default, plain filter \(no estimate\)) \|" "$OUT/accuracy-bias-$k.txt"
done
echo "total $(( $(date +%s) - T0 )) s"
