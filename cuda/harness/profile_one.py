"""One forward + backward at the Gemma 2 shape on LM-like data, for Nsight Compute:
    ncu --clock-control none --kernel-name regex:products_wg --launch-skip 30 --launch-count 1 \
        --section SpeedOfLight python3 harness/profile_one.py
"""
import torch

import cce_ctypes as cce
from bench_cuda import lm_like

E, C, t, _ = lm_like(8192, 2304, 256000, 4.0, 1.5, 0, torch.bfloat16)
one = torch.ones(1, device="cuda")
for _ in range(2):
    loss, lse = cce.forward(E, C, t)
    cce.backward(E, C, t, lse, one)
torch.cuda.synchronize()
print("done", float(loss))
