#!/usr/bin/env bash
# A backward change checked on the GPU machine's host kernels (carry .gpu/bundle.tar.xz from
# scripts/device/stage_cce.sh): `cce selfcheck --cases CASES` at each seed of SEEDS once per tile
# kernel (the default AMX one, avx512bf16, portable), then `cce accuracy` with ACCURACY_ARGS on
# bf16 and f16 with the default kernel and the portable one. Logs under $OUT, named by TAG.
#   CASES=1000 SEEDS="500000 911000" ACCURACY_ARGS="--bias" TAG=bias bash host_kernels_check.sh
set -uo pipefail
source "$(dirname "$0")/bundle_env.sh"
CASES=${CASES:-1500}; SEEDS=${SEEDS:-700000 702000}; ACCURACY_ARGS=${ACCURACY_ARGS:-}; TAG=${TAG:-run}
for k in default avx512bf16 portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    for seed in $SEEDS; do
        echo "== kernel $k seed $seed"
        timeout 80 "$B/cce" selfcheck --cases "$CASES" --seed "$seed" > "$OUT/selfcheck-$k-$seed.txt" 2>&1
        echo "exit $? at $(( $(date +%s) - T0 )) s"; tail -2 "$OUT/selfcheck-$k-$seed.txt"
    done
done
unset CCE_KERNEL
for k in default portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    echo "== accuracy, kernel $k"
    # shellcheck disable=SC2086
    timeout 60 "$B/cce" accuracy --tokens 1000 --dim 512 --vocab 32003 --dtypes bf16,f16 --data 4:1.5 --threads 16 \
        $ACCURACY_ARGS > "$OUT/accuracy-$TAG-$k.txt" 2>&1
    echo "exit $? at $(( $(date +%s) - T0 )) s"; cat "$OUT/accuracy-$TAG-$k.txt"
done
echo "total $(( $(date +%s) - T0 )) s"
