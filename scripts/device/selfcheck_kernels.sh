#!/usr/bin/env bash
# `cce selfcheck` on the GPU machine's host, once per tile kernel it runs (carry
# .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh). Usage: selfcheck_kernels.sh [cases] [seed]
# Writes $OUT/selfcheck-<kernel>.txt; the same cases for every kernel.
set -uo pipefail
source "$(dirname "$0")/bundle_env.sh"
CASES=${1:-1000}; SEED=${2:-1}
for k in default amx avx512bf16 avx512fma portable; do
    if [[ $k == default ]]; then unset CCE_KERNEL; else export CCE_KERNEL=$k; fi
    echo "== kernel $k"
    timeout 150 "$B/cce" selfcheck --cases "$CASES" --seed "$SEED" > "$OUT/selfcheck-$k.txt" 2>&1
    echo "exit $?"; tail -3 "$OUT/selfcheck-$k.txt"
done
unset CCE_KERNEL
echo "total $(( $(date +%s) - T0 )) s"
