#!/usr/bin/env bash
# Is the materialized baseline a fair one? (issue 12, item 5)
#
# Runs `cce bench --methods materialized` (Sources/CutCrossEntropy/Materialized.swift) and the
# plain C program Benchmarks/c/materialized_openblas.c (the same computation: bf16 → f32
# copies, logits by cblas_sgemm, row softmax on T threads, dE and dC by cblas_sgemm) in one
# script run, interleaved, same shape, same thread count, same OpenBLAS and kernel, and prints
# each round's times and the Swift / C ratios. The target: Swift / C ≤ 1.1 for loss+grad.
# The C program is built twice: `c` with gcc -O2 (scalar expf in the row pass, as a plain C
# program is), and `cvec` with -O2 -march=native -ffast-math -fvect-cost-model=dynamic (gcc
# vectorizes the row loops and calls glibc's vector expf, libmvec): the stricter yardstick.
# Each round runs the three programs in a rotated order (swift c cvec, c cvec swift, …), so
# that a drift in the machine's load does not always land on the same one.
#
#   usage: Benchmarks/scripts/fair_baseline.sh [--rounds R] [--repeats K] [--threads T]
#              [--shapes "N:D:V:dtype ..."] [--cce PATH] [--out DIR]
#   defaults: 3 rounds, 3 repeats per row (median), 2 threads, the shapes
#             1024:1024:32768:f32 1024:1024:32768:bf16 1024:1024:128256:bf16,
#             cce = .build/release/cce (build it first: swift build -c release), out = a temp dir.
#
# OPENBLAS_CORETYPE: Debian's OpenBLAS 0.3.21 does not recognize recent Intel CPUs and falls
# back to its SSE3 Prescott kernels, which would make both sides slow. Unless it is set, the
# script sets SkylakeX on AVX-512 CPUs and Haswell on AVX2 ones, for both programs.
# The C program is compiled with gcc -O2 against Debian's OpenBLAS (libopenblas-dev).
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=3 repeats=3 threads=2 cce=.build/release/cce out=""
shapes="1024:1024:32768:f32 1024:1024:32768:bf16 1024:1024:128256:bf16"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --shapes) shapes=$2; shift 2 ;;
        --cce) cce=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "fair_baseline: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$cce" ] || { echo "fair_baseline: $cce not found; run swift build -c release first" >&2; exit 1; }
[ -n "$out" ] || out=$(mktemp -d /tmp/fair-baseline.XXXXXX)
mkdir -p "$out"

if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
    fi
fi
export OPENBLAS_NUM_THREADS=$threads

bin=.build/fair-baseline/materialized_openblas
mkdir -p "$(dirname "$bin")"
gcc -O2 -Wall -o "$bin" Benchmarks/c/materialized_openblas.c -lopenblas -lpthread -lm
gcc -O2 -march=native -ffast-math -fvect-cost-model=dynamic -Wall -o "$bin-vec" \
    Benchmarks/c/materialized_openblas.c -lopenblas -lpthread -lm

{
    echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') (family $(lscpu | sed -n 's/^CPU family: *//p')" \
         "model $(lscpu | sed -n 's/^Model: *//p')), $(nproc) CPUs available;" \
         "flags: $(grep -m1 -o -w -E 'avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_NUM_THREADS=$threads threads=$threads" \
         "rounds=$rounds repeats=$repeats; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cce: $cce ($(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ', dirty'))"
} | tee "$out/machine.txt"

for shape in $shapes; do
    IFS=: read -r n d v dt <<< "$shape"
    tag="n$n-d$d-v$v-$dt"
    for r in $(seq 1 "$rounds"); do
        order=(swift c cvec swift c)
        for who in "${order[@]:$(( (r - 1) % 3 )):3}"; do
            case $who in
                swift) "$cce" bench --tokens "$n" --dim "$d" --vocab "$v" --dtype "$dt" --threads "$threads" \
                           --methods materialized --repeats "$repeats" --json \
                           > "$out/$tag-swift-$r.json" 2> "$out/$tag-swift-$r.log" ;;
                c) "$bin" --tokens "$n" --dim "$d" --vocab "$v" --dtype "$dt" --threads "$threads" \
                       --repeats "$repeats" > "$out/$tag-c-$r.txt" ;;
                cvec) "$bin-vec" --tokens "$n" --dim "$d" --vocab "$v" --dtype "$dt" --threads "$threads" \
                          --repeats "$repeats" > "$out/$tag-cvec-$r.txt" ;;
            esac
        done
        echo "  $tag round $r done ($(cut -d' ' -f1 /proc/loadavg))" >&2
    done
done

python3 - "$out" "$rounds" $shapes <<'PY'
import json, statistics, sys
out, rounds, shapes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def c_rows(path):
    rows = {}
    for line in open(path):
        if line.startswith("c-openblas kind="):
            f = dict(x.split("=", 1) for x in line.split()[1:])
            rows[f["kind"]] = f
    return rows
phase_keys = ("convert_s", "logits_s", "rows_s", "dE_s", "dC_s", "free_s")
print(f"\nSwift materialized (cce bench) against the C program (c: gcc -O2; cvec: vectorized row pass),")
print(f"medians of each row's repeats, s; peak extra MB of the call; raw output in {out}")
for shape in shapes:
    n, d, v, dt = shape.split(":")
    tag = f"n{n}-d{d}-v{v}-{dt}"
    print(f"\nN={n} D={d} V={v} {dt}")
    print(f"{'round':>5} {'kind':>10} {'swift':>8} {'c':>8} {'cvec':>8} {'sw/c':>6} {'sw/cvec':>7} {'sw MB':>7} {'c MB':>7}"
          f"  cvec phases: convert/logits/rows/dE/dC/free s")
    ratios = {(k, w): [] for k in ("loss", "loss+grad") for w in ("c", "cvec")}
    for r in range(1, rounds + 1):
        sw = {x["kind"]: x for x in json.load(open(f"{out}/{tag}-swift-{r}.json"))["rows"] if x["method"] == "materialized"}
        c, cv = c_rows(f"{out}/{tag}-c-{r}.txt"), c_rows(f"{out}/{tag}-cvec-{r}.txt")
        for kind in ("loss", "loss+grad"):
            s, cs, vs = sw[kind]["median_seconds"], float(c[kind]["median_s"]), float(cv[kind]["median_s"])
            ratios[(kind, "c")].append(s / cs); ratios[(kind, "cvec")].append(s / vs)
            ph = "/".join(cv[kind][k] for k in phase_keys)
            print(f"{r:>5} {kind:>10} {s:8.3f} {cs:8.3f} {vs:8.3f} {s / cs:6.3f} {s / vs:7.3f} "
                  f"{sw[kind]['peak_bytes'] / 1e6:7.1f} {float(c[kind]['peak_extra_mb']):7.1f}  {ph}")
    for kind in ("loss", "loss+grad"):
        for w in ("c", "cvec"):
            x = ratios[(kind, w)]
            print(f"  {kind:>9} Swift / {w:<4}: median of the per-round ratios {statistics.median(x):.3f}"
                  f" (rounds {', '.join(f'{y:.3f}' for y in x)})")
PY
