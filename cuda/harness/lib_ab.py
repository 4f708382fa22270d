"""Two builds of the library side by side: loss + gradients (cce.forward then cce.backward, as
bench_cuda.py times them) in alternating processes, one build each, on the same LM-like bf16
inputs; medians of the timed calls after warm-up, and a hash of the outputs' bits, so that a
change meant to leave the results alone can be seen to.

    python3 lib_ab.py A.so B.so [--shape N,D,V] [--rounds 3] [--repeats 10] [--eps E] [--b-env KEY=VALUE]

--b-env sets an environment variable for B's processes only (A and B may be the same build).

--eps passes filter_eps = E to both calls (0: no filtering, the dense path).
"""
import argparse
import os
import subprocess
import sys

ONE = r'''
import os, statistics, torch
import cce_ctypes as cce
from bench_cuda import lm_like
N, D, V = (int(x) for x in os.environ["AB_SHAPE"].split(","))
E, C, t, _ = lm_like(N, D, V, 4.0, 1.5, 0, torch.bfloat16)
one = torch.ones(1, device="cuda")
kw = {"filter_eps": float(os.environ["AB_EPS"])} if os.environ.get("AB_EPS") else {}
def call():
    loss, lse = cce.forward(E, C, t, **kw)
    dE, dC, _, _ = cce.backward(E, C, t, lse, one, **kw)
    return loss, lse, dE, dC
for _ in range(2):
    call()
times = []
for _ in range(int(os.environ["AB_REPEATS"])):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); out = call(); b.record(); torch.cuda.synchronize()
    times.append(a.elapsed_time(b))
def bits(x):
    v = x.contiguous().view(torch.int16 if x.element_size() == 2 else torch.int32).to(torch.int64).reshape(-1)
    w = torch.arange(1, v.numel() + 1, device=v.device, dtype=torch.int64) % 1000003
    return int((v * w).sum()) & 0xFFFFFFFFFFFF
print(f"{statistics.median(times):.2f} {min(times):.2f} {'-'.join('%012x' % bits(x) for x in out)}")
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--shape", default="8192,2304,256000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--eps", default="")
    ap.add_argument("--b-env", action="append", default=[], help="KEY=VALUE set for B's processes only")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    hashes, times = {}, {"A": [], "B": []}
    for r in range(args.rounds):
        for tag, path in (("A", args.a), ("B", args.b)):
            env = dict(os.environ, CCE_LIB=path, AB_SHAPE=args.shape, AB_REPEATS=str(args.repeats), AB_EPS=args.eps,
                       PYTHONPATH=here)
            if tag == "B":
                env.update(kv.split("=", 1) for kv in args.b_env)
            out = subprocess.run([sys.executable, "-c", ONE], env=env, capture_output=True, text=True, cwd=here)
            if out.returncode != 0:
                print(out.stderr[-2000:])
                sys.exit(1)
            med, best, h = out.stdout.split()[-3:]
            times[tag].append(float(med))
            hashes.setdefault(tag, set()).add(h)
            print(f"round {r + 1} {tag}: loss+grad median {med} ms, min {best} ms, bits {h}", flush=True)
    same = hashes["A"] == hashes["B"] and len(hashes["A"]) == 1
    print(f"{args.shape}: A {sorted(times['A'])} B {sorted(times['B'])} ms; outputs "
          + ("bitwise the same in every process" if same else f"DIFFER: A {hashes['A']} B {hashes['B']}"))


if __name__ == "__main__":
    main()
