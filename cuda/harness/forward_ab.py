"""The forward's two Hopper kernels side by side in one process: the bulk-copy one
(forward_tma.cu, the default on sm_90a) and the cp.async one (forward_lse.cu, chosen with
CCE_FORWARD_CPASYNC=1, read on every call), plus torch.compile's forward over materialized
logits for reference.

    python3 harness/forward_ab.py [--N 8192 --D 2304 --V 256000 --reps 15] [--json out.json]
        [--b-env NAME=VALUE]   (side B: another setting the library reads on every call,
                                e.g. CCE_FORWARD_WAVE_PLAN=0, the vocabulary splits before
                                they were fitted to whole waves)

Checks first that both kernels give the same loss and lse (within float32 reordering) on
shapes that are not tile multiples, with every forward option; then times both, alternating,
on LM-like bf16 data at the given shape (medians of CUDA-event timings after warm-up).
"""
import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F

import cce_ctypes as cce
from bench_cuda import lm_like, timed


# The environment variable that selects side B (read by the library on every call):
# CCE_FORWARD_CPASYNC=1 (the cp.async kernel), or --b-env NAME=VALUE.
B_ENV = ("CCE_FORWARD_CPASYNC", "1")


def side(b):
    if b:
        os.environ[B_ENV[0]] = B_ENV[1]
    else:
        os.environ.pop(B_ENV[0], None)


def both(fn):
    side(False)
    a = fn()
    side(True)
    b = fn()
    side(False)
    return a, b


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def agreement():
    """Worst relative difference of loss and lse between the two kernels over odd shapes and options."""
    worst = 0.0
    g = torch.Generator(device="cuda").manual_seed(7)
    cases = [
        (257, 136, 1000, {}),
        (300, 2304, 5003, {}),
        (129, 64, 257, {"softcap": 20.0}),
        (513, 200, 3001, {"label_smoothing": 0.1, "z_loss": 1e-3}),
        (1000, 72, 777, {"ignore_index": 3, "shift": 1, "reduction": "none"}),
        (64, 4096, 70000, {"reduction": "sum"}),
    ]
    for dtype in (torch.bfloat16, torch.float16):
        for N, D, V, opts in cases:
            E = (torch.randn(N, D, generator=g, device="cuda") * 2).to(dtype)
            C = (torch.randn(V, D, generator=g, device="cuda") / D ** 0.5).to(dtype)
            bias = (torch.randn(V, generator=g, device="cuda")).to(dtype) if V % 2 else None
            t = torch.randint(0, V, (N,), generator=g, device="cuda")
            w = torch.rand(V, generator=g, device="cuda") + 0.5 if N == 513 else None
            (la, sa), (lb, sb) = both(lambda: cce.forward(E, C, t, bias=bias, weight=w, **opts))
            d = max(rel(la, lb), rel(sa, sb))
            print(f"  {str(dtype)[6:]:9} N={N:5} D={D:5} V={V:6} {opts} bias={bias is not None} "
                  f"weights={w is not None}: rel diff loss/lse {d:.2e}", flush=True)
            worst = max(worst, d)
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--N", type=int, default=8192)
    ap.add_argument("--D", type=int, default=2304)
    ap.add_argument("--V", type=int, default=256000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--b-env", default="CCE_FORWARD_CPASYNC=1",
                    help="NAME=VALUE that selects side B (default: the cp.async kernel)")
    a = ap.parse_args()
    global B_ENV
    B_ENV = tuple(a.b_env.split("=", 1))
    print(torch.cuda.get_device_name(), flush=True)
    worst = agreement()
    print(f"worst relative difference between the kernels: {worst:.2e}", flush=True)
    E, C, t, ent = lm_like(a.N, a.D, a.V, 4.0, 1.5, 0, torch.bfloat16)
    fwd = lambda: cce.forward(E, C, t)
    out = {"shape": [a.N, a.D, a.V], "entropy": ent, "worst_rel_diff": worst}
    names = ("tma", "cpasync") if B_ENV == ("CCE_FORWARD_CPASYNC", "1") else ("default", "=".join(B_ENV))
    rounds = {names[0]: [], names[1]: []}  # (median, min, max) of each round
    out["b_env"] = "=".join(B_ENV)
    for _ in range(3):  # alternate in rounds: the machine's state drifts
        side(False)
        rounds[names[0]].append(timed(fwd, a.reps, warm=3))
        side(True)
        rounds[names[1]].append(timed(fwd, a.reps, warm=3))
    side(False)
    flops = 2.0 * a.N * a.D * a.V
    for name, rs in rounds.items():
        med = statistics.median(r[0] for r in rs)
        lo, hi = min(r[1] for r in rs), max(r[2] for r in rs)
        out[name] = {"median_ms": med, "min_ms": lo, "max_ms": hi, "tflops": flops / med / 1e9}
        print(f"forward {name:8}: median of round medians {med:.2f} ms (min {lo:.2f}, max {hi:.2f}), "
              f"{flops / med / 1e9:.0f} TFLOP/s", flush=True)
    if not a.no_compile:
        def ref(E, C, t):
            return F.cross_entropy((E @ C.T).float(), t)
        comp = torch.compile(ref)
        with torch.no_grad():
            med, lo, _ = timed(lambda: comp(E, C, t), a.reps, warm=3)
        out["torch_compile"] = {"median_ms": med, "min_ms": lo}
        print(f"torch.compile forward: median {med:.2f} ms", flush=True)
        la = cce.forward(E, C, t)[0]
        print(f"loss cce {float(la):.6f} torch {float(comp(E, C, t)):.6f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
