#!/usr/bin/env bash
# Packs what the MPI runs on the GPU machine's host need (that machine has no Swift, no
# Open MPI and no network), into .gpu/mpi/ (ignored by git):
#   bundle.tar.xz  a statically linked `cce` (target CPU haswell; the AVX-512 and AMX kernels
#                  are chosen at run time), the shared libraries it loads (from ldd), and
#                  libcce_mpi.so compiled with mpicc (the SwiftPM product links libswiftCore,
#                  which is not there);
#   ompi.tar.xz    Debian bookworm's Open MPI 4.1.4 (openmpi-bin, libopenmpi3, openmpi-common,
#                  libpmix2 from `apt-get download`, unpacked with dpkg -x) without the
#                  components that need InfiniBand, UCX, libfabric or PSM, plus libevent,
#                  hwloc, libudev and libmunge, and env.sh (ompi_env.sh here), which points
#                  OPAL_PREFIX, PATH and LD_LIBRARY_PATH at the unpacked folder and selects
#                  one host's transports (plm isolated: no ssh; btl self,vader: shared
#                  memory without CMA).
# Then, with the device tool: carry [".gpu/mpi"] and run scripts/device/mpi_check.sh (the OS,
# the CPU, mpirun with 4 ranks), mpi_bench_4x4.sh, mpi_bench_plain_vs_4x4.sh or
# mpi_bench_chunks.sh, as `bash scripts/device/NAME.sh` from the repository root (the benches
# source mpi_setup.sh). Tested here in a mount namespace that hides the system's Open MPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p .gpu/mpi
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-common-dir)/info/exclude"

# cce, static
bash scripts/device/stage_cce.sh "$W/cce"
mpicc -shared -fPIC -O2 -I Sources/CCEMPIShim/include Sources/CCEMPIShim/cce_mpi.c -o "$W/cce/libcce_mpi.so"
tar -cJf .gpu/mpi/bundle.tar.xz -C "$W/cce" .

# Open MPI, relocatable
mkdir -p "$W/debs" "$W/ompi"
(cd "$W/debs" && apt-get download openmpi-bin libopenmpi3 openmpi-common libpmix2)
for f in "$W"/debs/*.deb; do dpkg -x "$f" "$W/debs/root"; done
S=$W/ompi
cp -a "$W/debs/root/usr" "$S/"
rm -rf "$S/usr/share/doc" "$S/usr/share/man" "$S"/usr/bin/mpijava*
ln -sf orterun "$S/usr/bin/mpirun"; ln -sf orterun "$S/usr/bin/mpiexec"
(cd "$S/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3" &&
 rm -f ./*ucx* ./*ofi* ./*psm* mca_btl_openib.so mca_pml_cm.so ./mca_*monitoring* ./mca_*slurm* ./mca_*flux* \
       ./mca_*jsm* mca_io_romio321.so mca_reachable_netlink.so ./mca_memheap* ./mca_scoll* ./mca_spml* ./mca_sshmem* \
       ./mca_atomic* mca_topo_treematch.so)
(cd "$S/usr/lib/x86_64-linux-gnu" &&
 rm -f libmca_common_ucx* libmca_common_ofi* libmca_common_verbs* libmca_common_monitoring* libmpi_java* \
       libmpi_mpifh* libmpi_usempi* liboshmem* libompitrace*)
mkdir -p "$S/deps"
for l in libevent_core-2.1.so.7 libevent_pthreads-2.1.so.7 libhwloc.so.15 libudev.so.1 libmunge.so.2; do
  cp -L "/usr/lib/x86_64-linux-gnu/$l" "$S/deps/"
done
cp "$ROOT/scripts/device/ompi_env.sh" "$S/env.sh"
mpicc -O2 "$ROOT/scripts/device/mpi_hello.c" -o "$S/hello"
tar -cJf .gpu/mpi/ompi.tar.xz -C "$S" .
cp scripts/device/mpi_*.sh .gpu/mpi/
ls -la .gpu/mpi
