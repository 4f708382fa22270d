#!/usr/bin/env bash
# Label smoothing's uniform term in the filtered dC and dBias (Engine.addUniformSmoothing) on the
# GPU machine's host kernels: `cce selfcheck` on the drawn cases that failed before the change
# (seeds 700000...) once per tile kernel, then `cce accuracy --label-smoothing 0.1 --bias` on
# bf16 and f16 (carry .gpu/bundle.tar.xz from scripts/device/stage_cce.sh). Logs under $OUT.
set -uo pipefail
source "$(dirname "$0")/bundle_env.sh"
CASES=${1:-1500}
for k in default avx512bf16 portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    for seed in 700000 702000; do
        echo "== kernel $k seed $seed"
        timeout 80 "$B/cce" selfcheck --cases "$CASES" --seed "$seed" > "$OUT/selfcheck-$k-$seed.txt" 2>&1
        echo "exit $? at $(( $(date +%s) - T0 )) s"; tail -2 "$OUT/selfcheck-$k-$seed.txt"
    done
done
unset CCE_KERNEL
for k in default portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    echo "== accuracy, kernel $k"
    timeout 60 "$B/cce" accuracy --tokens 1000 --dim 512 --vocab 32003 --dtypes bf16,f16 --data 4:1.5 --threads 16 \
        --label-smoothing 0.1 --bias > "$OUT/accuracy-smoothing-$k.txt" 2>&1
    echo "exit $? at $(( $(date +%s) - T0 )) s"; cat "$OUT/accuracy-smoothing-$k.txt"
done
echo "total $(( $(date +%s) - T0 )) s"
