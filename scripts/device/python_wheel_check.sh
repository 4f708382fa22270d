#!/usr/bin/env bash
# The self-contained wheel on the GPU machine's host, which has Python and PyTorch but no Swift
# and no network. Before the run, here:
#   scripts/build_wheel.sh .gpu/wheel && pip download -q pytest -d .gpu/wheel
# and carry .gpu. Installs the wheel (--no-deps: numpy and torch are the host's) and pytest into
# a folder on PYTHONPATH, then runs the engine's Python tests that need no Swift
# tool (NumPy, PyTorch, torch.compile, autocast, apple's API, vocabulary-parallel over gloo and
# over threads, the wheel's own check) on the host's AVX-512 / AMX kernels, and the binding's
# paired overhead benchmark at N 4096 with every CPU. Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt" 2>&1
# A folder on PYTHONPATH rather than a venv (the host's Python may lack the venv module): the
# wheel (--no-deps: numpy and torch are the host's) and pytest.
SITE=${SITE:-/tmp/cce-site}
rm -rf "$SITE"
python3 -m pip install -q --no-index --find-links .gpu/wheel --target "$SITE" pytest > "$OUT/install.txt" 2>&1
python3 -m pip install -q --no-deps --no-index --target "$SITE" .gpu/wheel/cce_swift-*.whl >> "$OUT/install.txt" 2>&1
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)" >> "$OUT/install.txt" 2>&1
tail -3 "$OUT/install.txt"
env -u CCE_CPU_LIBRARY PYTHONPATH="$SITE" python3 -m pytest -q -p no:cacheprovider -rs python/tests/test_wheel.py \
  python/tests/test_numpy.py python/tests/test_torch.py python/tests/test_compile.py python/tests/test_autocast.py \
  python/tests/test_apple_api.py python/tests/test_vocab_parallel.py python/tests/test_vocab_parallel_numpy.py \
  > "$OUT/tests.txt" 2>&1
tail -4 "$OUT/tests.txt"
env -u CCE_CPU_LIBRARY PYTHONPATH="$SITE" python3 python/benchmarks/overhead.py --paired --tokens 4096 --rounds 5 \
  > "$OUT/overhead-4096.txt" 2>&1
tail -8 "$OUT/overhead-4096.txt"
