#!/usr/bin/env bash
# Regenerates Docs/figures/*.svg from the measured JSON in Docs/bench/ (no benchmark is run).
# The output is deterministic: running it on an unchanged Docs/bench/ leaves git clean.
# Usage: Benchmarks/scripts/figures.sh        (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
plot=Benchmarks/scripts/plot.py
python3 "$plot" --kind loss+grad --methods materialized,cce,cce-nosort \
    --out Docs/figures/vocab-scaling-bf16-lossgrad.svg Docs/bench/n1024-d1024-v*-bf16.json
python3 "$plot" --kind loss --methods materialized,cce \
    --out Docs/figures/vocab-scaling-bf16-loss.svg Docs/bench/n1024-d1024-v*-bf16.json
