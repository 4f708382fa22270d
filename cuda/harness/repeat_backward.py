#!/usr/bin/env python3
"""Run-to-run check of the backward: the same inputs, many calls, each call's gradients against
the first call of its configuration, bit for bit (and each configuration's first call against
the default's).

    CCE_LIB=cuda/libcce_cuda.so python3 cuda/harness/repeat_backward.py [--calls 40] [--dtype f16]

Configurations: the default (bulk-copy products on Hopper), the cp.async products
(CCE_PRODUCTS_CPASYNC=1), the default without dE's staging (CCE_NO_DE_STAGING=1) and without the
lean layout, and the cp.async dz stage (CCE_DZ_CPASYNC=1), so that a difference can be placed.
(Written to find why repeated calls once differed in dE's last bits: the set-up's mean of E was
summed by atomic adds, and a last-bit change could swap near-tied vocabulary entries.)
For each call that differs it prints how many elements of dE, dC and dbias differ and where the
first dE ones are (token row, column; their token block of 128 rows and 64-column box).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cce_ctypes as cce  # noqa: E402
from test_cuda import backward_inputs  # noqa: E402

CONFIGS = [
    ("default", {}, {}),
    ("cp.async products", {"CCE_PRODUCTS_CPASYNC": "1"}, {}),
    ("default, no dE staging", {"CCE_NO_DE_STAGING": "1"}, {}),
    ("default, not lean", {}, {"lean_memory": False}),
    ("cp.async dz stage", {"CCE_DZ_CPASYNC": "1"}, {}),
    ("default, again", {}, {}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16"])
    ap.add_argument("--N", type=int, default=700)
    ap.add_argument("--D", type=int, default=200)
    ap.add_argument("--V", type=int, default=9000)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--poison", type=int, default=1)
    a = ap.parse_args()
    dtype = torch.float16 if a.dtype == "f16" else torch.bfloat16
    Ed, Cd, t, bias, _, lse, grad = backward_inputs(dtype, a.N, a.D, a.V, a.seed, dc_chunk_rows=0)
    ref0 = None
    print(f"{a.dtype} N {a.N} D {a.D} V {a.V} seed {a.seed}, {a.calls} calls a configuration, poison {a.poison}")
    for name, env, kw in CONFIGS:
        for k, v in env.items():
            os.environ[k] = v
        try:
            differing, ref = 0, None
            for call in range(a.calls):
                dE, dC, db, st = cce.backward(Ed, Cd, t, lse, grad, bias=bias, want_dbias=True, stats=True,
                                              poison=bool(a.poison), dc_chunk_rows=0, **kw)
                torch.cuda.synchronize()
                out = (dE.view(torch.int16).clone(), dC.view(torch.int16).clone(), db.view(torch.int16).clone())
                if ref is None:
                    ref = out
                    if ref0 is None:
                        ref0 = out
                    n0 = [int((x != y).sum().item()) for x, y in zip(out, ref0)]
                    print(f"  {name}: first call against the first configuration's: dE {n0[0]} dC {n0[1]} "
                          f"dbias {n0[2]} elements differ; tiles kept {st[1]}/{st[0]}")
                    continue
                n = [int((x != y).sum().item()) for x, y in zip(out, ref)]
                if any(n):
                    differing += 1
                    where = (out[0] != ref[0]).nonzero()[:8].tolist()
                    vals = [(float(dE[r, c]), float(ref[0].view(dtype)[r, c])) for r, c in where[:3]]
                    print(f"  {name}: call {call}: dE {n[0]} dC {n[1]} dbias {n[2]} differ; dE at "
                          + " ".join(f"({r},{c}|blk {r // 128},box {c // 64})" for r, c in where)
                          + f" values {vals}")
            print(f"{name:28s}: {differing} of {a.calls - 1} later calls differ in dE, dC or dbias from its first")
        finally:
            for k in env:
                os.environ.pop(k, None)


if __name__ == "__main__":
    main()
