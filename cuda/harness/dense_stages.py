"""Where the dense backward's time goes (filter_eps = 0, cuBLAS products), by subtraction, in one
process: the forward alone; loss + gradients; the same with CCE_DEBUG_SKIP_PRODUCTS=1 (the dz
stage and the set-up, no products: wrong gradients, timing only); each with the lean layout
(the f32 dE accumulator inside dC's buffer: three passes) and without (one pass, the
accumulator in the workspace). Beside them the filtered default. Medians of --reps calls after
warm-up, rounds alternating; peak extra memory per configuration.

    python3 dense_stages.py [--shape N,D,V] [--reps 10] [--rounds 2]
"""
import argparse
import os
import statistics

import torch

import cce_ctypes as cce
from bench_cuda import lm_like


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8192,4096,128256")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    N, D, V = (int(x) for x in args.shape.split(","))
    E, C, t, _ = lm_like(N, D, V, 4.0, 1.5, 0, torch.bfloat16)
    one = torch.ones(1, device="cuda")

    def fwd(kw):
        return cce.forward(E, C, t, **kw)

    def full(kw):
        loss, lse = cce.forward(E, C, t, **kw)
        return cce.backward(E, C, t, lse, one, **kw)

    configs = [
        ("forward (default)", fwd, {}, {}),
        ("filtered default", full, {}, {}),
        ("dense, lean", full, {"filter_eps": 0.0}, {}),
        ("dense, lean, no products", full, {"filter_eps": 0.0}, {"CCE_DEBUG_SKIP_PRODUCTS": "1"}),
        ("dense, not lean", full, {"filter_eps": 0.0, "lean_memory": False}, {}),
        ("dense, not lean, no products", full, {"filter_eps": 0.0, "lean_memory": False}, {"CCE_DEBUG_SKIP_PRODUCTS": "1"}),
    ]
    times = {name: [] for name, *_ in configs}
    peaks = {}
    base = torch.cuda.memory_allocated()
    for r in range(args.rounds):
        for name, fn, kw, env in configs:
            for k, v in env.items():
                os.environ[k] = v
            for _ in range(2):
                fn(kw)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(args.reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(); out = fn(kw); b.record(); torch.cuda.synchronize()
                times[name].append(a.elapsed_time(b))
                del out
            peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
            for k in env:
                del os.environ[k]
    print(f"{torch.cuda.get_device_name()}, bf16 LM-like N {N} D {D} V {V}, medians of {args.reps} x {args.rounds} rounds")
    for name, *_ in configs:
        ts = times[name]
        print(f"  {name:32s} {statistics.median(ts):7.2f} ms (min {min(ts):7.2f})  peak extra {peaks[name]:7.0f} MiB")


if __name__ == "__main__":
    main()
