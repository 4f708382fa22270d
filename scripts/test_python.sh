#!/usr/bin/env bash
# The Python package's tests (python/, import name cce_swift), on a fresh clone:
# a virtual environment in .build/python-venv, `pip install ./python` (which builds the Swift
# library libcce_cpu.so with `swift build -c release --product cce_cpu` and ships it in the
# package), then pytest over python/tests.
#
#   scripts/test_python.sh               NumPy, C header and compare tests (torch tests skipped)
#   scripts/test_python.sh --torch       also the PyTorch tests: installs torch first
#   scripts/test_python.sh --torch=auto  installs torch only when a CPU wheel is at hand (a
#                                        torch-*+cpu wheel in pip's find-links folder: 51 s,
#                                        0.9 GB here); else the PyTorch tests are skipped
#
# torch: $CCE_TORCH names what to install (default: that +cpu wheel when pip's find-links
# folder has one, else "torch", which on PyPI is the CUDA build: 4 min 40 s and 5.3 GB here).
# Needs the Swift toolchain and the Debian packages of scripts/setup.sh; run that first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CCE_PYTHON_VENV:-.build/python-venv}
WITH_TORCH=0
for arg in "$@"; do
  case "$arg" in
    --torch) WITH_TORCH=1 ;;
    --torch=auto) WITH_TORCH=auto ;;
    *) echo "usage: scripts/test_python.sh [--torch | --torch=auto]" >&2; exit 2 ;;
  esac
done

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q pytest
# mpi4py (a PyPI wheel that finds the system's libmpi at run time) for the tests of the NumPy
# vocabulary-parallel path under a real mpirun; they skip without it.
if command -v mpirun >/dev/null; then
  "${PIP[@]}" install -q mpi4py || echo "test_python.sh: mpi4py did not install; its mpirun tests are skipped"
fi
if [ "$WITH_TORCH" != 0 ]; then
  spec=${CCE_TORCH:-}
  if [ -z "$spec" ]; then
    for dir in ${PIP_FIND_LINKS:-}; do
      wheel=$(ls "$dir"/torch-*+cpu-*.whl 2>/dev/null | head -n 1 || true)
      if [ -n "$wheel" ]; then
        spec="torch==$(basename "$wheel" | cut -d- -f2)"
        break
      fi
    done
    if [ -z "$spec" ] && [ "$WITH_TORCH" = 1 ]; then spec=torch; fi
  fi
  if [ -n "$spec" ]; then
    echo "test_python.sh: installing $spec"
    "${PIP[@]}" install -q "$spec"
  else
    echo "test_python.sh: no CPU wheel of torch at hand; the PyTorch tests are skipped (--torch installs torch from PyPI)"
  fi
fi
echo "test_python.sh: pip install ./python (builds libcce_cpu with swift build -c release)"
"${PIP[@]}" install -q ./python
# From the repository root, so that the installed package (not python/cce_swift) is imported.
"$VENV/bin/python" -m pytest python/tests -q -p no:cacheprovider
