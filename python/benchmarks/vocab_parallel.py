"""Time, memory and traffic of vocab_parallel_options against one process (Docs/PYTHON.md,
"Vocabulary parallel"):

    python python/benchmarks/vocab_parallel.py --ranks 2 --threads 1 [--tokens 4096] [--calls 5]
    python python/benchmarks/vocab_parallel.py --ranks 1 --threads 2 --plain
    mpirun -np 2 python python/benchmarks/vocab_parallel.py --mpi --threads 1     # NumPy arrays, mpi4py

Launches --ranks processes of itself (a gloo group through a file in /tmp), each holding its
share of the classifier's rows, on bf16 LM-like data (Benchmarks/scripts/pytorch_baseline.py,
D = 1024, V = 128256 by default); each rank runs --calls steps of loss = linear_cross_entropy(
e, c_shard, t, vocab_parallel_options=...); loss.backward(), the first apart. --plain runs the
ordinary call in one process instead. Prints one line per rank: median and minimum seconds a
step, the peak resident growth above the step's start (MB; the gradients it returns
included: dE of N x D in bf16, the shard's dC), and the bytes the rank sent a step through
the exchanges and through dE's ordered sum. Run the two forms alternately to compare. --mpi
(under mpirun, with mpi4py) runs each rank on NumPy arrays with comm.allgather as the gather;
its peak counts the NumPy gradients it returns (dE of N x D in float32, the shard's dC in float32).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Benchmarks", "scripts"))
import pytorch_baseline as pb  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import cce_swift  # noqa: E402
from cce_swift import _shards  # noqa: E402


def measure(step, calls: int, prepare=lambda: ()) -> dict:
    """`calls` runs of step(*prepare()) (prepare's arguments made before the timing; step
    returns what must live until the peak is read), the first apart: median and minimum
    seconds, the largest peak resident growth above a call's start (MB), and what the last
    call sent through the gathers (_shards.traffic)."""
    times, peaks = [], []
    for k in range(calls):
        args = prepare()
        before = dict(_shards.traffic)
        rss = pb.settle()
        t0 = time.perf_counter()
        kept = step(*args)
        dt = time.perf_counter() - t0
        peak = pb.peak_since(rss)
        sent = {key: _shards.traffic[key] - before[key] for key in before}
        del args, kept
        if k > 0:
            times.append(dt)
            peaks.append(peak)
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mb": max(peaks) / 1e6, "sent": sent}


def mpi_main(a):
    """One rank under mpirun: NumPy arrays, mpi4py's allgather."""
    import ml_dtypes
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    e0, c0, _, t = pb.lm_like(torch, a.tokens, a.dim, a.vocab, 0)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    as_bf16 = (lambda x: x.to(torch.bfloat16).view(torch.int16).numpy().view(bf16))
    vp = cce_swift.VocabParallelOptions.from_rank(a.vocab, comm.rank, comm.size, gather=comm.allgather)
    e, c, t = as_bf16(e0), as_bf16(c0[vp.start:vp.stop].contiguous()), t.numpy()
    del e0, c0
    losses = []

    def step():
        loss, grads = cce_swift.linear_cross_entropy(e, c, t, threads=a.threads, vocab_parallel_options=vp,
                                                     return_grads=True)
        losses.append(float(loss))
        return grads

    result = measure(step, a.calls)
    line = json.dumps({"rank": comm.rank, "ranks": comm.size, "threads": a.threads, "numpy_mpi4py": True,
                       "loss": losses[-1], **result, "shard": [vp.start, vp.stop]})
    for r, text in enumerate(comm.gather(line, root=0) or []):
        print(text, flush=True)


def rank_main(a):
    if not a.plain:
        dist.init_process_group("gloo", init_method=f"file://{a.init}", rank=a.rank, world_size=a.ranks)
    e0, c0, _, t = pb.lm_like(torch, a.tokens, a.dim, a.vocab, 0)
    e0, c0 = e0.to(torch.bfloat16), c0.to(torch.bfloat16)
    vp = None if a.plain else cce_swift.VocabParallelOptions.from_vocab(a.vocab)
    c_mine = c0 if a.plain else c0[vp.start:vp.stop].clone()
    del c0
    def step(e, c):
        loss = cce_swift.linear_cross_entropy(e, c, t, threads=a.threads, vocab_parallel_options=vp)
        loss.backward()
        return loss

    result = measure(step, a.calls, prepare=lambda: (e0.clone().requires_grad_(True), c_mine.clone().requires_grad_(True)))
    print(json.dumps({"rank": a.rank, "ranks": 1 if a.plain else a.ranks, "threads": a.threads, **result,
                      "shard": None if vp is None else [vp.start, vp.stop]}), flush=True)
    if not a.plain:
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--plain", action="store_true", help="the ordinary call in one process")
    p.add_argument("--mpi", action="store_true", help="under mpirun: NumPy arrays and mpi4py's allgather")
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--init", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.mpi:
        return mpi_main(a)
    if a.rank is not None or a.plain:
        a.rank = a.rank or 0
        return rank_main(a)
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        args = [sys.executable, os.path.abspath(__file__), "--ranks", str(a.ranks), "--threads", str(a.threads),
                "--tokens", str(a.tokens), "--dim", str(a.dim), "--vocab", str(a.vocab), "--calls", str(a.calls),
                "--init", init]
        procs = [subprocess.Popen(args + ["--rank", str(r)], stdout=subprocess.PIPE, text=True) for r in range(a.ranks)]
        outs = [q.communicate()[0] for q in procs]
    if any(q.returncode != 0 for q in procs):
        sys.exit("a rank failed")
    for out in outs:
        print(out.strip())


if __name__ == "__main__":
    main()
