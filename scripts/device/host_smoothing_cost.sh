#!/usr/bin/env bash
# What label smoothing's exact uniform term (Engine.addUniformSmoothing: one pass over dC)
# costs on the GPU machine's host: `cce bench --methods cce --kinds loss+grad` with
# --label-smoothing 0 and 0.1 in alternating processes, bf16 N 4096, D 1024, V 128256, at 16
# and 2 threads (carry .gpu/bundle.tar.xz from scripts/device/stage_cce.sh). Logs under $OUT.
set -uo pipefail
source "$(dirname "$0")/bundle_env.sh"
for threads in 16 2; do
    reps=5; [[ $threads == 2 ]] && reps=2
    for round in 1 2 3; do
        for a in 0 0.1; do
            timeout 100 "$B/cce" bench --methods cce --kinds loss+grad --tokens 4096 --dim 1024 --vocab 128256 \
                --threads $threads --repeats $reps --label-smoothing $a --json > "$OUT/t${threads}-r${round}-a${a}.json" 2> /dev/null
            echo "threads $threads round $round alpha $a rc $? at $(( $(date +%s) - T0 )) s: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['rows'][0]; print(r['median_seconds'], r['min_seconds'], r['peak_bytes'])" "$OUT/t${threads}-r${round}-a${a}.json" 2>&1)"
        done
    done
done
