#!/usr/bin/env python3
"""Inputs for validating the CUDA engine through the Swift tool (cuda/swift_validate.sh).

Writes OUT/<case>/{E,C,T[,B]}.npy and OUT/<case>/args (extra `cce reference` options) for
every option set of `cce reference` x f32 / f16 / bf16, on LM-like data (Docs/LMLIKE.md)
with shapes that are not tile multiples. bf16 is stored as ml_dtypes writes it.
Needs numpy and ml_dtypes; run on the development machine, then carry OUT to the GPU machine.
"""
import os
import sys

import ml_dtypes
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else ".gpu/cases"
B, T, D, V = 3, 97, 136, 5003  # N = 291; D a multiple of 8 (the CUDA kernels' requirement)
rng = np.random.default_rng(7)
c = rng.standard_normal((V, D)) / np.sqrt(D - 1)
c[:, -1] = -1.5 * np.log(rng.permutation(V) + 1.0)
e = rng.standard_normal((B, T, D)) * 4.0
e[..., -1] = 1.0
logits = e.reshape(-1, D) @ c.T
p = np.exp(logits - logits.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
t = np.array([rng.choice(V, p=row) for row in p]).reshape(B, T)
t[rng.random((B, T)) < 0.1] = -100
bias = rng.standard_normal(V) * 0.5
weight = rng.uniform(0.0, 2.0, V)  # PyTorch's per-class weight (some near 0)
weight[rng.random(V) < 0.05] = 0.0

cases = {
    "mean": "",
    "sum-bias": "--reduction sum --bias",
    "none-ignore7": "--reduction none --ignore-index 7",
    "softcap": "--softcap 15",
    "smoothing": "--label-smoothing 0.1",
    "zloss": "--z-loss 1e-3",
    "shift": "--shift 1",
    "shift2-none": "--shift 2 --reduction none",
    "nosort-nofilter": "--no-sort --filter-eps none",
    "all-options": "--bias --softcap 20 --label-smoothing 0.05 --z-loss 1e-4 --shift 1 --reduction sum",
    "weight": "--weight",
    "weight-smoothing-zloss": "--weight --label-smoothing 0.1 --z-loss 1e-4 --bias",
}
types = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
t7 = t.copy()
t7[t7 == -100] = 7  # for the case where class 7 is the ignore index
for tname, dt in types.items():
    shared = os.path.join(out, f"data-{tname}")  # one copy of each array per type
    os.makedirs(shared, exist_ok=True)
    np.save(f"{shared}/E.npy", e.astype(np.float32).astype(dt))
    np.save(f"{shared}/C.npy", c.astype(np.float32).astype(dt))
    np.save(f"{shared}/B.npy", bias.astype(np.float32).astype(dt))
    np.save(f"{shared}/T.npy", t.astype(np.int64))
    np.save(f"{shared}/W.npy", weight.astype(np.float32))
    np.save(f"{shared}/T7.npy", t7.astype(np.int64))
    for cname, args in cases.items():
        d = os.path.join(out, f"{tname}-{cname}")
        os.makedirs(d, exist_ok=True)
        for f in ["E", "C", "B", "W"]:
            link = f"{d}/{f}.npy"
            if not os.path.lexists(link):
                os.symlink(f"../data-{tname}/{f}.npy", link)
        tl = f"{d}/T.npy"
        if not os.path.lexists(tl):
            os.symlink(f"../data-{tname}/{'T7' if 'ignore-index 7' in args else 'T'}.npy", tl)
        with open(f"{d}/args", "w") as f:
            f.write(args.replace("--bias", "--bias B.npy").replace("--weight", "--weight W.npy") + "\n")
print(f"{len(types) * len(cases)} cases in {out}")
