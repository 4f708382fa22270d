"""Time and memory of the binding's bf16 call, first call apart, and what the process holds
after it (Docs/PYTHON.md, "a scratch that holds only the rows written"):

    python python/benchmarks/scratch_memory.py [--tokens 1024] [--release] [--calls 7]

One process: a first call, then calls-1 timed ones (loss = linear_cross_entropy(E, C, t);
loss.backward(), bf16 LM-like data of Benchmarks/scripts/pytorch_baseline.py, D = 1024,
V = 128256, 2 threads), each with its peak resident growth above its start; --release calls
cce_swift.release_scratch() after every call. Prints one line. Run it once per library
(CCE_CPU_LIBRARY=...) in alternating processes to compare builds.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Benchmarks", "scripts"))
import pytorch_baseline as pb  # noqa: E402
import torch  # noqa: E402

import cce_swift  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--release", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    e0, c0, _, t = pb.lm_like(torch, a.tokens, a.dim, a.vocab, 0)
    e = e0.to(torch.bfloat16).detach().requires_grad_()
    c = c0.to(torch.bfloat16).detach().requires_grad_()
    times, peaks, first = [], [], None
    start = pb.settle()
    for k in range(a.calls):
        e.grad = None
        c.grad = None
        rss = pb.settle()
        t0 = time.perf_counter()
        loss = cce_swift.linear_cross_entropy(e, c, t, threads=a.threads)
        loss.backward()
        dt = time.perf_counter() - t0
        if a.release:
            cce_swift.release_scratch()
        if k:
            times.append(dt)
            peaks.append(pb.peak_since(rss))
        else:
            first = (dt, pb.peak_since(rss))
    e.grad = None
    c.grad = None
    print(f"first {first[0]:.2f} s {first[1] / 1e6:.0f} MB; later median {statistics.median(times):.3f} s "
          f"min {min(times):.3f} peak {max(peaks) / 1e6:.0f} MB; held after (grads freed) "
          f"{(pb.settle() - start) / 1e6:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
