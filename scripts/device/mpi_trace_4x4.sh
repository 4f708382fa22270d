#!/usr/bin/env bash
# On the GPU machine's 16-core host (carry .gpu/mpi from scripts/device/make_mpi_bundle.sh):
# where a vocabulary-parallel step's time goes. CCE_TRACE=1 on one process of 16 threads and on
# 4 ranks x 4 threads (each rank's engine call: set-up, each chunk's forward, exchange and
# backward; the per-worker forward / dC / waiting times of the one-process sweep), bf16
# loss+grad, N=4096 D=1024 V=128256, LM-like data, three calls each.
set -uo pipefail
. scripts/device/mpi_setup.sh
SHAPE="--tokens 4096 --dim 1024 --vocab 128256 --dtype bf16 --kinds loss+grad --repeats 2"
for r in 1 2; do
  echo "== 1 x 16, round $r"
  CCE_TRACE=1 OPENBLAS_NUM_THREADS=16 timeout 100 $B/cce bench $SHAPE --methods cce --threads 16 2>&1 | grep -E "cce trace|^cce "
  echo "== 4 x 4 vocabulary-parallel, round $r"
  CCE_TRACE=1 OPENBLAS_NUM_THREADS=4 timeout 100 mpirun -np 4 --map-by slot:PE=4 --bind-to core -x CCE_TRACE -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE -x CCE_MPI_LIBRARY $B/cce bench --parallel vocab $SHAPE --threads 4 2>&1 | grep -E "cce trace|^loss|^ "
done
uptime
