"""The loss under torch.autocast("cpu", bfloat16) with float32 E and C (N 1024, D 1024, V 128256, LM-like,
loss and backward, 2 threads): as the call was before it followed autocast (the float32 tensors as
they are: the float32 path) and as it is (cast to bfloat16). Medians of 3 after a first call, two
alternating rounds. Run from the repository root: python python/benchmarks/autocast.py"""
import json
import statistics
import sys
import time

import torch

import cce_swift as cs
from cce_swift import _torch

sys.path.insert(0, "Benchmarks/scripts")
import pytorch_baseline as pb  # noqa: E402  (the LM-like data of the benchmarks)

N, D, V = 1024, 1024, 128256
e0, c0, _, t = pb.lm_like(torch, N, D, V, 0)
e0, c0 = e0.float().contiguous(), c0.float().contiguous()
def step(cast):
    e = e0.clone().requires_grad_(True); c = c0.clone().requires_grad_(True)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if cast:
            loss = cs.linear_cross_entropy(e, c, t, threads=2)
        else:   # what the call did before: the float32 tensors as they are
            saved = _torch.autocast
            _torch.autocast = lambda e, c, b: (e, c, b)
            try:
                loss = cs.linear_cross_entropy(e, c, t, threads=2)
            finally:
                _torch.autocast = saved
    loss.backward()
    return time.perf_counter() - t0, loss.item()
for rnd in range(2):
    for cast in (False, True):
        step(cast)
        ts = [step(cast) for _ in range(3)]
        print(json.dumps({"round": rnd + 1, "path": "bf16 (autocast cast, now)" if cast else "float32 (before)",
                          "median_s": statistics.median(x[0] for x in ts), "loss": ts[-1][1]}), flush=True)
