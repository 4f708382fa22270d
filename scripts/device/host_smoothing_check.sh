#!/usr/bin/env bash
# Label smoothing's uniform term in the filtered dC and dBias (Engine.addUniformSmoothing) on the
# GPU machine's host kernels: `cce selfcheck` on the drawn cases that failed before the change
# (seeds 700000...) once per tile kernel, then `cce accuracy --label-smoothing 0.1 --bias` on
# bf16 and f16 (carry .gpu/bundle.tar.xz from scripts/device/stage_cce.sh). Logs under $OUT.
CASES=${1:-1500} SEEDS="700000 702000" ACCURACY_ARGS="--label-smoothing 0.1 --bias" TAG=smoothing \
    exec bash "$(dirname "$0")/host_kernels_check.sh"
