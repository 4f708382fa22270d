#!/usr/bin/env bash
# dBias's dropped-mass estimate (Backward.swift, DroppedBiasMass) on the GPU machine's host
# kernels: `cce selfcheck` at seeds 500000 and 911000 (911059 failed on dBias before the change)
# once per tile kernel, then `cce accuracy --bias` on bf16 and f16 with the default kernel and the
# portable one (carry .gpu/bundle.tar.xz from scripts/device/stage_cce.sh). Logs under $OUT.
CASES=${1:-1000} SEEDS="500000 911000" ACCURACY_ARGS="--bias" TAG=bias \
    exec bash "$(dirname "$0")/host_kernels_check.sh"
