"""On the GPU machine: compiled (torch.compile) against eager for the CUDA path, bit for bit per
output, eager against eager, and a compiled step's time against eager at the Gemma 2 shape.

    CCE_CUDA_LIBRARY=cuda/libcce_cuda.so PYTHONPATH=python:python/tests python3 scripts/device/cuda_compile_check.py
"""
import time

import torch
import test_cuda as T

import cce_swift as cs

for dtype in (torch.float32, torch.bfloat16):
    for case in T.COMPILE_CASES:
        eager, comp = T._compiled_and_eager(dtype, case, "aot_eager")
        same = [None if x is None else bool(torch.equal(x, y)) for x, y in zip(eager, comp)]
        print(str(dtype)[6:], case, "bitwise loss/lse/dE/dC/dB:", same)
# eager twice: are the library's results run-to-run identical?
e1, _ = T._compiled_and_eager(torch.bfloat16, dict(reduction="mean", bias=True), "aot_eager")
e2, _ = T._compiled_and_eager(torch.bfloat16, dict(reduction="mean", bias=True), "aot_eager")
print("eager vs eager bitwise:", [None if x is None else bool(torch.equal(x, y)) for x, y in zip(e1, e2)])

# A compiled step (loss + backward) against eager, N = 8192, D = 2304, V = 256000, bf16, Gaussian data.
N, D, V = 8192, 2304, 256000
g = torch.Generator(device="cuda").manual_seed(0)
E = torch.randn(N, D, device="cuda", generator=g).bfloat16().requires_grad_(True)
C = (torch.randn(V, D, device="cuda", generator=g) / D**0.5).bfloat16().requires_grad_(True)
t = torch.randint(0, V, (N,), device="cuda", generator=g)


def step(E, C, t):
    loss = cs.linear_cross_entropy(E, C, t)
    loss.backward()
    return loss.detach()


cstep = torch.compile(step, fullgraph=False)
for name, f in (("eager", step), ("compiled", cstep), ("eager", step), ("compiled", cstep)):
    for _ in range(3):
        f(E, C, t)
        E.grad = C.grad = None
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        f(E, C, t)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
        E.grad = C.grad = None
    ts.sort()
    print(name, "loss+backward median ms %.2f" % (ts[5] * 1e3))
