#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh):
# an A/B of one engine setting from the environment, bf16 N = 4096, D = 1024, V = 128256,
# LM-like, loss and loss+grad, alternating rounds, medians of 5 (3 below 16 threads); then one
# traced 16-thread loss+grad call of each value (per-worker busy and waiting times).
#   bash scripts/device/env_ab.sh NAME VARIABLE "VALUES" "THREAD COUNTS" ROUNDS
# e.g. NAME segments, VARIABLE CCE_VOCAB_SEGMENTS, VALUES "4 1", THREAD COUNTS "16 2", ROUNDS 3.
# The runs are bundles_ab.sh's, one configuration per value of the one bundle: lines on
# stdout (collect_bench.py), every run in $OUT/NAME_ab.json, the traces in $OUT/traces.txt.
set -uo pipefail
NAME=$1 VAR=$2 VALUES=$3 THREADS=$4 ROUNDS=$5
CONFIGS=$(for v in $VALUES; do printf '%s=.gpu/bundle.tar.xz,%s=%s ' "$v" "$VAR" "$v"; done)
AB_NAME=$NAME exec bash scripts/device/bundles_ab.sh "$CONFIGS" "$THREADS" "$ROUNDS"
