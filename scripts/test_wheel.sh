#!/usr/bin/env bash
# The self-contained wheel, checked: scripts/build_wheel.sh, then a fresh virtual environment
# (.build-wheel/test-venv) with only the wheel, its PyPI dependencies and pytest, and the NumPy,
# apple-API, C-header and wheel tests run against it from the repository root (so that the
# installed package is imported, not python/cce_swift; CCE_CPU_LIBRARY unset). test_wheel.py
# checks that the process maps no Swift runtime and only the bundled copies of its libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.build-wheel/dist
scripts/build_wheel.sh "$OUT"
VENV=.build-wheel/test-venv
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$OUT"/cce_swift-*.whl pytest
env -u CCE_CPU_LIBRARY "$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_wheel.py \
  python/tests/test_numpy.py python/tests/test_apple_api.py python/tests/test_c_header.py
