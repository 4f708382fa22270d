"""One forward + backward on LM-like data, for Nsight Compute (twice, the first as warm-up,
unless CCE_PROFILE_CALLS says otherwise: ncu replays each kernel on its own, so one call is
enough where time is short). The shape is the Gemma 2 one unless CCE_PROFILE_SHAPE says
"N,D,V" (e.g. 8192,4096,128256 for Llama 3):
    ncu --clock-control none --kernel-name regex:products_tma --launch-skip 30 --launch-count 1 \
        --section SpeedOfLight python3 harness/profile_one.py
It prints the kept fraction of the backward's tiles (the library's statistics) after the calls.
"""
import os

import torch

import cce_ctypes as cce
from bench_cuda import lm_like

N, D, V = (int(x) for x in os.environ.get("CCE_PROFILE_SHAPE", "8192,2304,256000").split(","))
E, C, t, _ = lm_like(N, D, V, 4.0, 1.5, 0, torch.bfloat16)
one = torch.ones(1, device="cuda")
for _ in range(int(os.environ.get("CCE_PROFILE_CALLS", "2"))):
    loss, lse = cce.forward(E, C, t)
    _, _, _, stats = cce.backward(E, C, t, lse, one, stats=True)
torch.cuda.synchronize()
print(f"done N={N} D={D} V={V} loss={float(loss):.6f} tiles={stats[0]} kept={stats[1]}")
