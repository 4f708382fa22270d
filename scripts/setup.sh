#!/usr/bin/env bash
# Installs the Debian packages the build needs (OpenBLAS, libnuma, hwloc, pkg-config, and
# Open MPI for CCE across processes: libopenmpi-dev for the MPI shim libcce_mpi.so,
# openmpi-bin for mpirun, which the MPI tests launch) when they are missing. Needs root or
# sudo the first time; a no-op once they are there.
set -euo pipefail
need=()
for pkg in libopenblas-dev libnuma-dev libhwloc-dev pkg-config libopenmpi-dev openmpi-bin; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: the Swift toolchain (swift) is not on PATH" >&2; exit 1; }
