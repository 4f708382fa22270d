# Sourced by the MPI device scripts: unpacks the bundles that scripts/device/make_mpi_bundle.sh
# made (.gpu/mpi/bundle.tar.xz into $B, .gpu/mpi/ompi.tar.xz into $M), puts Open MPI and the
# bundle's libraries on the paths, points cce at libcce_mpi.so, makes $OUT, and prints the CPU.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=/tmp/cce; mkdir -p $B; tar -xJf .gpu/mpi/bundle.tar.xz -C $B
M=/tmp/ompi; mkdir -p $M; tar -xJf .gpu/mpi/ompi.tar.xz -C $M; . $M/env.sh
export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$B/lib CCE_MPI_LIBRARY=$B/libcce_mpi.so OPENBLAS_CORETYPE=SkylakeX
export PMIX_MCA_pcompress_base_silence_warning=1
grep -E "Model name|^CPU\(s\)" <(lscpu); uptime
