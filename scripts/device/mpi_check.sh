#!/usr/bin/env bash
# device call 1 (mpi-train helper): OS, CPU, and Open MPI carried in .gpu/mpi/ompi.tar.xz.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cat /etc/os-release | head -2; ldd --version | head -1; uname -a; nproc
lscpu > "$OUT/lscpu.txt"; grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node" "$OUT/lscpu.txt"
grep -o -w -E "avx512f|avx512_bf16|amx_bf16|amx_tile" "$OUT/lscpu.txt" | sort -u | tr '\n' ' '; echo
python3 -c "import ml_dtypes, numpy; print('ml_dtypes', ml_dtypes.__version__, 'numpy', numpy.__version__)"
df -h /dev/shm /tmp | tail -2
M=/tmp/ompi; mkdir -p $M; tar -xJf .gpu/mpi/ompi.tar.xz -C $M; . $M/env.sh
mpirun --version | head -1
for btl in self,vader self,tcp; do
  echo "== btl $btl"; OMPI_MCA_btl=$btl timeout 60 mpirun -np 4 --bind-to none $M/hello 2>&1 | tail -5
  echo "== btl $btl bind core"; OMPI_MCA_btl=$btl timeout 60 mpirun -np 4 --map-by slot:PE=4 --bind-to core --report-bindings $M/hello 2>&1 | tail -8
done
OMPI_MCA_btl_vader_single_copy_mechanism=cma timeout 60 mpirun -np 4 --bind-to none $M/hello 2>&1 | tail -3
