"""Time and memory of the binding's bf16 call, first call apart, and what the process holds
after it (Docs/PYTHON.md, "a scratch that holds only the rows written"):

    python python/benchmarks/scratch_memory.py [--tokens 1024] [--release] [--alternate] [--calls 7]

One process: a first call, then calls-1 timed ones (loss = linear_cross_entropy(E, C, t);
loss.backward(), bf16 LM-like data of Benchmarks/scripts/pytorch_baseline.py, D = 1024,
V = 128256, 2 threads), each with its peak resident growth above its start; --release calls
cce_swift.release_scratch() after every call; --alternate alternates two batches of tokens
for the same classifier (E and targets drawn again by the same recipe: the rows written differ
in part, as in training from step to step); --other-classifier alternates two whole problems
(seeds 0 and 1, whose frequent classes differ: nearly all other rows each call, a worst case).
Prints one line. Run it once per library
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
    ap.add_argument("--alternate", action="store_true")
    ap.add_argument("--other-classifier", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    problems = []
    e0, c0, _, t = pb.lm_like(torch, a.tokens, a.dim, a.vocab, 0)
    problems.append((e0, c0, t))
    if a.other_classifier:
        e1, c1, _, t1 = pb.lm_like(torch, a.tokens, a.dim, a.vocab, 1)
        problems.append((e1, c1, t1))
    elif a.alternate:   # pb.lm_like's E and targets again, for the same C
        g = torch.Generator().manual_seed(1)
        e1 = pb.lm_like_embeddings(torch, a.tokens, a.dim, g)
        problems.append((e1, c0, pb.lm_like_targets(torch, e1, c0, None, g)))
    problems = [(e.to(torch.bfloat16).detach().requires_grad_(), c.to(torch.bfloat16).detach().requires_grad_(), t)
                for e, c, t in problems]
    times, peaks, first = [], [], None
    start = pb.settle()
    for k in range(a.calls):
        e, c, t = problems[k % len(problems)]
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
    for e, c, _ in problems:
        e.grad = None
        c.grad = None
    print(f"first {first[0]:.2f} s {first[1] / 1e6:.0f} MB; later median {statistics.median(times):.3f} s "
          f"min {min(times):.3f} peak {max(peaks) / 1e6:.0f} MB; held after (grads freed) "
          f"{(pb.settle() - start) / 1e6:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
