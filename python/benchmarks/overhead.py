"""The binding's overhead: a PyTorch call (loss + backward) at the Gemma 2 shape beside the
Swift API's time for the same work, interleaved and repeated.

    python python/benchmarks/overhead.py [--tokens 1024 --dim 1024 --vocab 128256 --rounds 5] [--bench]
    python python/benchmarks/overhead.py --paired --rounds 20

--paired: only the in-process comparison. Each round runs the PyTorch call and the same C ABI
call writing Float32 gradients into buffers kept across rounds (the work `cce bench` times),
in alternating order; it prints the ratios of the minima, medians and sums, and the median of
the per-round ratios.

Data: LM-like (Docs/LMLIKE.md: S = 4, alpha = 1.5), bfloat16, generated with torch's RNG as
cuda/bench_cuda.py does, and written as .npy files so that `cce reference` (mode default,
which times its lossAndGradients call and writes the time into meta.json) runs the Swift API
on exactly the same arrays. With --bench each round also runs `cce bench --methods cce --kinds
loss+grad --repeats 1` (its own LM-like data: the same statistics, other values). The machine
is shared: compare minimums and medians over the rounds.

The Python time is `loss = linear_cross_entropy(E, C, t); loss.backward()` with E and C
requiring gradients (bf16 gradients written into the tensors autograd returns). The C ABI's
call is also timed alone ("engine call": engine, conversion of the outputs), and both the
Python call and the Swift API's call are also measured in CPU time (every thread of the
process, user and system; `cce reference` writes it as cpu_seconds), which a loaded machine
disturbs less than wall time.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cce_swift as cs
from cce_swift import _core, _lib
from cce_swift._numpy import BFLOAT16

ROOT = Path(__file__).resolve().parents[2]


def lm_like(n, d, v, s=4.0, alpha=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(v, d, generator=g) / math.sqrt(d - 1)
    rank = torch.randperm(v, generator=g).double() + 1
    c[:, d - 1] = (-alpha * torch.log(rank)).float()
    e = torch.randn(n, d, generator=g) * s
    e[:, d - 1] = 1.0
    e, c = e.to(torch.bfloat16), c.to(torch.bfloat16)
    t = torch.empty(n, dtype=torch.long)
    for i in range(0, n, 256):
        p = torch.softmax(e[i:i + 256].float() @ c.float().T, -1)
        t[i:i + 256] = torch.multinomial(p, 1, generator=g).squeeze(1)
    return e.contiguous(), c.contiguous(), t


def summary(xs):
    return f"min {min(xs):.3f} s, median {statistics.median(xs):.3f} s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bench", action="store_true", help="also run cce bench each round")
    ap.add_argument("--paired", action="store_true",
                    help="only the in-process comparison: each round the PyTorch call, then the same C ABI call "
                         "into Float32 gradient buffers kept across rounds (what cce bench times)")
    ap.add_argument("--cce", default=str(ROOT / ".build" / "release" / "cce"))
    a = ap.parse_args()
    e, c, t = lm_like(a.tokens, a.dim, a.vocab)
    if a.paired:
        return paired(e, c, t, a)
    tmp = Path(tempfile.mkdtemp(prefix="cce-overhead-"))
    np.save(tmp / "E.npy", e.view(torch.int16).numpy().view(BFLOAT16))
    np.save(tmp / "C.npy", c.view(torch.int16).numpy().view(BFLOAT16))
    np.save(tmp / "T.npy", t.numpy())
    print(f"library {cs.library_path()}; torch {torch.__version__}; data in {tmp}")

    engine_times = []
    real = _lib.loss_and_gradients

    def timed(*args):
        t0 = time.perf_counter()
        real(*args)
        engine_times.append(time.perf_counter() - t0)

    py, ref, bench = [], [], []
    py_cpu, ref_cpu = [], []   # CPU time (every thread) of the same calls: less sensitive to a loaded machine
    E = e.clone().requires_grad_(True)
    C = c.clone().requires_grad_(True)
    for r in range(a.rounds):
        E.grad = C.grad = None
        _lib.loss_and_gradients = timed
        t0, c0 = time.perf_counter(), time.process_time()
        loss = cs.linear_cross_entropy(E, C, t)
        loss.backward()
        py.append(time.perf_counter() - t0)
        py_cpu.append(time.process_time() - c0)
        _lib.loss_and_gradients = real
        assert E.grad.dtype == torch.bfloat16 and C.grad.dtype == torch.bfloat16
        subprocess.run([a.cce, "reference", "--embeddings", str(tmp / "E.npy"), "--classifier", str(tmp / "C.npy"),
                        "--targets", str(tmp / "T.npy"), "--out", str(tmp / "out")], check=True, capture_output=True)
        meta = json.loads((tmp / "out" / "meta.json").read_text())
        ref.append(float(meta["seconds"]))
        ref_cpu.append(float(meta.get("cpu_seconds", "nan")))
        line = (f"round {r + 1}: python {py[-1]:.3f} s (engine call {engine_times[-1]:.3f} s, CPU {py_cpu[-1]:.3f} s), "
                f"Swift API on the same data (cce reference) {ref[-1]:.3f} s (CPU {ref_cpu[-1]:.3f} s)")
        if a.bench:
            out = subprocess.run([a.cce, "bench", "--tokens", str(a.tokens), "--dim", str(a.dim), "--vocab",
                                  str(a.vocab), "--dtype", "bf16", "--methods", "cce", "--kinds", "loss+grad",
                                  "--repeats", "1", "--json"], capture_output=True, text=True, check=True)
            rep = json.loads(out.stdout)
            bench.append([x for x in rep["rows"] if x["kind"] == "loss+grad"][0]["median_seconds"])
            line += f", cce bench {bench[-1]:.3f} s ({rep.get('filter')})"
        print(line, flush=True)
    # The filter's work on this data, from the C ABI's statistics.
    st = (ctypes.c_int64 * 5)()
    opt = _core.make_options()
    dE, dC = torch.empty_like(e), torch.empty_like(c)

    def p(x):
        return ctypes.c_void_p(x.data_ptr())

    real(p(e), p(c), None, p(t), a.tokens, a.dim, a.vocab, _lib.BF16, _lib.BF16, 0, None, ctypes.byref(opt), None,
         None, None, p(dE), p(dC), None, _lib.BF16, _lib.BF16, 0, st)
    print(f"filter on this data: kept {100 * st[3] / max(1, st[2]):.2f}% of row segments "
          f"({100 * st[4] / max(1, st[2]):.2f}% not recomputed)")
    print(f"python: {summary(py)}; engine call: {summary(engine_times)}; cce reference: {summary(ref)}"
          + (f"; cce bench: {summary(bench)}" if bench else ""))
    print(f"python / cce reference: min {min(py) / min(ref):.3f}, median {statistics.median(py) / statistics.median(ref):.3f};"
          f" python - engine call (median): {statistics.median(py) - statistics.median(engine_times):.4f} s")
    print(f"CPU time: python {summary(py_cpu)}; cce reference {summary(ref_cpu)}; python / cce reference: "
          f"min {min(py_cpu) / min(ref_cpu):.3f}, median {statistics.median(py_cpu) / statistics.median(ref_cpu):.3f}")


def paired(e, c, t, a):
    """PyTorch call against the engine's own call (gradients into kept Float32 buffers, as `cce
    bench` times it) in the same process, alternating, so that both see the same machine load."""
    opt = _core.make_options()
    dE32 = torch.zeros(e.shape, dtype=torch.float32)
    dC32 = torch.zeros(c.shape, dtype=torch.float32)
    loss = torch.empty(1, dtype=torch.float64)

    def p(x):
        return ctypes.c_void_p(x.data_ptr())

    def engine_call():
        _lib.loss_and_gradients(p(e), p(c), None, p(t), a.tokens, a.dim, a.vocab, _lib.BF16, _lib.BF16, 0, None,
                                ctypes.byref(opt), None, p(loss), None, p(dE32), p(dC32), None, _lib.F32, _lib.F32,
                                0, None)

    E = e.clone().requires_grad_(True)
    C = c.clone().requires_grad_(True)
    engine_call()   # warm-up: the kept buffers and the library's pages
    py, eng = [], []

    def python_call():
        E.grad = C.grad = None
        t0 = time.perf_counter()
        out = cs.linear_cross_entropy(E, C, t)
        out.backward()
        py.append(time.perf_counter() - t0)
        assert E.grad.dtype == torch.bfloat16 and C.grad.dtype == torch.bfloat16

    def timed_engine_call():
        t0 = time.perf_counter()
        engine_call()
        eng.append(time.perf_counter() - t0)

    python_call()   # the first call of a process also allocates and faults in the kept scratch
    print(f"first python call (the library's scratch allocated): {py.pop():.3f} s", flush=True)
    for r in range(a.rounds):   # the order alternates, so that neither call always follows the other
        for f in ((python_call, timed_engine_call) if r % 2 == 0 else (timed_engine_call, python_call)):
            f()
        print(f"round {r + 1}: python {py[-1]:.3f} s, engine into kept f32 buffers {eng[-1]:.3f} s, "
              f"ratio {py[-1] / eng[-1]:.3f}", flush=True)
    ratios = [x / y for x, y in zip(py, eng)]
    print(f"python: {summary(py)}; engine into kept f32 buffers: {summary(eng)}")
    print(f"python / engine: ratio of the minima {min(py) / min(eng):.3f}, of the medians "
          f"{statistics.median(py) / statistics.median(eng):.3f}, of the sums {sum(py) / sum(eng):.3f}; "
          f"median of the per-round ratios {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
