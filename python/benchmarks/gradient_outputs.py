"""What the C ABI's fused call costs per gradient output kind, at V = 128256, D = 1024 (bf16
inputs, LM-like data as overhead.py makes it), interleaved rounds:

    python python/benchmarks/gradient_outputs.py [--tokens 16] [--rounds 8]

(a) bf16 gradients into new tensors (what autograd's torch.empty_like hands the binding),
(b) bf16 gradients into tensors reused from the previous call, (c) f32 gradients into reused
tensors (the engine's own cost: no conversion, no new pages), (d) f32 gradients into new
tensors (page faults, as the Swift API's array-returning call has). A small N keeps the sweep
short, so that the per-call costs over V x D (conversion, page faults) stand out on a shared
machine. The first call, not counted, makes the library's kept Float32 scratch.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import lm_like  # noqa: E402

from cce_swift import _core, _lib  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    n, d, v = a.tokens, a.dim, a.vocab
    e, c, t = lm_like(n, d, v)
    opt = _core.make_options()

    def p(x):
        return ctypes.c_void_p(x.data_ptr())

    def call(dE, dC, code):
        t0 = time.perf_counter()
        _lib.loss_and_gradients(p(e), p(c), None, p(t), n, d, v, _lib.BF16, _lib.BF16, 0, None, ctypes.byref(opt),
                                None, None, None, p(dE), p(dC), None, code, code, 0, None)
        return time.perf_counter() - t0

    kept16 = (torch.zeros_like(e), torch.zeros_like(c))
    kept32 = (torch.zeros(n, d), torch.zeros(v, d))
    call(*kept16, _lib.BF16)
    kinds = {"a": "bf16 into new tensors", "b": "bf16 into reused tensors", "c": "f32 into reused tensors",
             "d": "f32 into new tensors"}
    times = {k: [] for k in kinds}
    for r in range(a.rounds):
        times["a"].append(call(torch.empty_like(e), torch.empty_like(c), _lib.BF16))
        times["b"].append(call(*kept16, _lib.BF16))
        times["c"].append(call(*kept32, 0))
        times["d"].append(call(torch.empty(n, d), torch.empty(v, d), 0))
        print(f"round {r + 1}: " + ", ".join(f"{k} {x[-1]:.3f} s" for k, x in times.items()), flush=True)
    for k, name in kinds.items():
        print(f"({k}) {name}: min {min(times[k]):.3f} s, median {statistics.median(times[k]):.3f} s")


if __name__ == "__main__":
    main()
