#!/bin/bash
# Builds and runs amx_harness.c on a machine with AMX and a C compiler (no Swift needed),
# from a folder holding amx_harness.c, run.sh, cce_avx512.c and include/cce_avx512.h
# (Benchmarks/amx/stage.sh DIR makes one). Prints the CPU, the compiler, the checks, the
# hardware's rounding (special cases and a sweep of models), the timings (1 thread, then
# THREADS, default 16, at once), and the AMX product alone in interleaved short rounds for
# the default build (KCP = 1024 pairs) and KCP = 256.
cd "$(dirname "$0")"
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) (family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')); AMX flags: $(grep -m1 flags /proc/cpuinfo | grep -o 'amx[a-z0-9_]*' | tr '\n' ' ')"
lscpu | grep -E '^CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|L1d|L2|L3|MHz|Hypervisor'
CC=$(for c in clang gcc cc; do command -v $c >/dev/null && { echo $c; break; }; done)
echo "== compiler: $($CC --version | head -1)"
FLAGS="-O2 -std=gnu11 -w -Iinclude"
$CC $FLAGS amx_harness.c -o h -lm -lpthread &
$CC $FLAGS -DCCE_AMX_KCP=256 amx_harness.c -o hkc -lm -lpthread &
wait
[ -x h ] || { echo "build failed"; $CC $FLAGS amx_harness.c -o h -lm -lpthread; exit 1; }
echo "== checks, rounding, timings"
./h all ${THREADS:-16}
echo "== the AMX product alone, interleaved: default, KCP 256"
for i in 1 2 3; do ./h quick | grep quick; ./hkc quick | grep quick; done
exit 0
