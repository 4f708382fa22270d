"""Benchmark at the paper's Gemma 2 shape on LM-like data, side by side with PyTorch.

    python3 harness/bench_cuda.py [--N 8192 --D 2304 --V 256000 --S 4 --alpha 1.5 --reps 10]

Methods: this library (libcce_cuda.so through ctypes), PyTorch eager
(F.cross_entropy over materialized bf16 logits upcast to f32) and torch.compile of the same;
with --others also apple/ml-cross-entropy (`cut_cross_entropy.linear_cross_entropy` with impl
"cce", "cce_kahan_full_c", "cce_exact") and Liger Kernel's fused linear cross entropy, when
they can be imported (the device machine gets them as carried wheels / source); --host also
times the host entry point cce_host_run (host arrays in and out) and prints its report.
Times are medians of CUDA-event timings after warm-up; memory is the peak of
torch.cuda.max_memory_allocated over the operation minus what was allocated before it
(outputs and workspaces included, inputs excluded). Relative errors are
||x - truth|| / ||truth|| with the truth computed in float32 (no TF32) from the same bf16
inputs, reduction mean. Prints a markdown table last; --json writes the numbers.
"""
import argparse
import json
import math
import os
import statistics

import torch
import torch.nn.functional as F

import cce_ctypes as cce


def lm_like(N, D, V, S, alpha, seed, dtype):
    g = torch.Generator(device="cuda").manual_seed(seed)
    C = torch.randn(V, D, generator=g, device="cuda") / math.sqrt(D - 1)
    rank = torch.randperm(V, generator=g, device="cuda").double() + 1
    C[:, D - 1] = (-alpha * torch.log(rank)).float()
    E = torch.randn(N, D, generator=g, device="cuda") * S
    E[:, D - 1] = 1.0
    t = torch.empty(N, dtype=torch.long, device="cuda")
    ent = 0.0
    for i in range(0, N, 1024):
        lg = E[i:i + 1024] @ C.T
        p = torch.softmax(lg, -1)
        ent += float(-(p * torch.log_softmax(lg, -1)).sum())
        t[i:i + 1024] = torch.multinomial(p, 1, generator=g).squeeze(1)
        del lg, p
    Ed, Cd = E.to(dtype).contiguous(), C.to(dtype).contiguous()
    del E, C
    torch.cuda.empty_cache()
    return Ed, Cd, t, ent / N


def truth(E, C, t):
    """f32 loss, dE, dC of the mean loss, chunked over rows (no TF32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    Cf = C.float()
    N = E.shape[0]
    dE = torch.empty(N, E.shape[1], device="cuda")
    dC = torch.zeros_like(Cf)
    loss = 0.0
    for i in range(0, N, 1024):
        Ef = E[i:i + 1024].float()
        lg = Ef @ Cf.T
        lse = torch.logsumexp(lg, -1)
        loss += float((lse - lg.gather(1, t[i:i + 1024, None]).squeeze(1)).sum())
        dz = torch.exp(lg - lse[:, None])
        dz[torch.arange(dz.shape[0], device="cuda"), t[i:i + 1024]] -= 1
        dz /= N
        dE[i:i + 1024] = dz @ Cf
        dC += dz.T @ Ef
        del lg, dz
    del Cf
    torch.cuda.empty_cache()
    return loss / N, dE, dC


def rel(x, ref):
    return (torch.linalg.norm((x.float() - ref).reshape(-1)) / torch.linalg.norm(ref.reshape(-1))).item()


def timed(fn, reps, warm=2):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts), min(ts), max(ts)


def peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def bench_torch(name, lossfn, E, C, t, reps, full=True):
    Eg = E.detach().clone().requires_grad_()
    Cg = C.detach().clone().requires_grad_()

    def loss_only():
        with torch.no_grad():
            return lossfn(E, C, t)

    def loss_grad():
        Eg.grad = None
        Cg.grad = None
        l = lossfn(Eg, Cg, t)
        l.backward()
        return l

    holder = {}

    def prep_grad():
        Eg.grad = None
        Cg.grad = None
        holder["l"] = lossfn(Eg, Cg, t)

    def grad_only():
        Eg.grad = None
        Cg.grad = None
        holder["l"].backward(retain_graph=True)

    r = {"method": name}
    if full:
        r["loss_ms"] = timed(loss_only, reps)[0]
        r["loss_mb"] = peak_mb(loss_only)
        prep_grad()
        r["grad_ms"] = timed(grad_only, reps)[0]
        Eg.grad = None  # free the last gradients first, so that the peak counts the new ones
        Cg.grad = None
        r["grad_mb"] = peak_mb(lambda: grad_only())
        holder.clear()
    r["lg_ms"] = timed(loss_grad, reps)[0]
    Eg.grad = None
    Cg.grad = None
    r["lg_mb"] = peak_mb(loss_grad)
    return r, Eg.grad, Cg.grad


def other_methods():
    """(name, loss function of (E, C, targets)) for the competing libraries that import here."""
    out = []
    try:
        from cut_cross_entropy import linear_cross_entropy as lce

        for impl in ("cce", "cce_kahan_full_c", "cce_exact"):
            out.append((f"ml-cross-entropy {impl}", (lambda i: lambda e, c, tt: lce(e, c, tt, impl=i))(impl)))
    except Exception as ex:  # noqa: BLE001
        print(f"# ml-cross-entropy not available: {ex!r}", flush=True)
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as lflce

        out.append(("Liger fused linear CE", lambda e, c, tt: lflce(e, c, tt)))
    except Exception as ex:  # noqa: BLE001
        print(f"# Liger Kernel not available: {ex!r}", flush=True)
    return out


def bench_host(E, C, t, reps):
    """cce_host_run on host copies of the inputs: its report, and its dE / dC against the device path."""
    import numpy as np

    Eh = E.cpu().view(torch.int16).numpy().view(np.uint16)
    Ch = C.cpu().view(torch.int16).numpy().view(np.uint16)
    out = cce.host_run(Eh, Ch, t.cpu().numpy(), dtype=2, want=("dE", "dC"), repeats=reps)
    return out


def bench_cce(name, E, C, t, reps, full=True, **opts):
    one = torch.ones(1, device="cuda")

    def loss_only():
        return cce.forward(E, C, t, **opts)

    _, lse = loss_only()

    def grad_only():
        return cce.backward(E, C, t, lse, one, **opts)

    def loss_grad():
        l, s = cce.forward(E, C, t, **opts)
        return l, cce.backward(E, C, t, s, one, **opts)

    r = {"method": name}
    if full:
        r["loss_ms"] = timed(loss_only, reps)[0]
        r["loss_mb"] = peak_mb(loss_only)
        r["grad_ms"] = timed(grad_only, reps)[0]
        r["grad_mb"] = peak_mb(grad_only)
    r["lg_ms"] = timed(loss_grad, reps)[0]
    r["lg_mb"] = peak_mb(loss_grad)
    loss, lse = cce.forward(E, C, t, **opts)
    dE, dC, _, st = cce.backward(E, C, t, lse, one, stats=True, **opts)
    r["tiles_kept"] = st[1] / st[0]
    return r, loss, dE, dC


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--N", type=int, default=8192)
    ap.add_argument("--D", type=int, default=2304)
    ap.add_argument("--V", type=int, default=256000)
    ap.add_argument("--S", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=1.5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--variants", action="store_true", help="also time no-filter / no-sort / non-lean / ...")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only variants whose name has one")
    ap.add_argument("--stress", action="store_true", help="also run on flat data (S=2, alpha=1): loss+grad and errors")
    ap.add_argument("--others", action="store_true", help="also ml-cross-entropy and Liger, when importable")
    ap.add_argument("--host", action="store_true", help="also the host entry point cce_host_run")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    dtype = torch.bfloat16
    E, C, t, ent = lm_like(a.N, a.D, a.V, a.S, a.alpha, 0, dtype)
    print(f"# {torch.cuda.get_device_name()}  N={a.N} D={a.D} V={a.V} bf16  LM-like S={a.S} alpha={a.alpha} "
          f"entropy={ent:.2f} nats", flush=True)
    tl, tdE, tdC = truth(E, C, t)
    rows = []

    r, loss, dE, dC = bench_cce("cce_cuda (this)", E, C, t, a.reps)
    r.update(loss_err=abs(loss.item() - tl) / abs(tl), dE_err=rel(dE, tdE), dC_err=rel(dC, tdC))
    rows.append(r)
    print(r, flush=True)
    del dE, dC
    if a.variants:
        for name, kw in [("cce_cuda copies before wgmma (former order)", dict(_env="CCE_EARLY_LOAD")),
                         ("cce_cuda no dE staging (former chunks)", dict(_env="CCE_NO_DE_STAGING")),
                         ("cce_cuda eps 2^-10", dict(filter_eps=2.0 ** -10)),
                         ("cce_cuda no filter", dict(filter_eps=0.0)),
                         ("cce_cuda no filter, kernels (no cuBLAS)", dict(filter_eps=0.0, _env="CCE_DENSE_PRODUCTS=0")),
                         ("cce_cuda no sort", dict(sort_vocab=False)),
                         ("cce_cuda not lean", dict(lean_memory=False)),
                         ("cce_cuda chunk 6144 rows", dict(dc_chunk_rows=6144)),
                         ("cce_cuda forward by cp.async (former kernel)", dict(_env="CCE_FORWARD_CPASYNC")),
                         ("cce_cuda dz by cp.async (former kernel)", dict(_env="CCE_DZ_CPASYNC")),
                         ("cce_cuda products by cp.async (former kernel)", dict(_env="CCE_PRODUCTS_CPASYNC")),
                         ("(timing aid: dz stage only)", dict(_env="CCE_DEBUG_SKIP_PRODUCTS")),
                         ("(timing aid: dz stage only, cp.async)", dict(_env="CCE_DEBUG_SKIP_PRODUCTS,CCE_DZ_CPASYNC"))]:
            if a.only and not any(x in name for x in a.only.split(",")):
                continue
            env = [(v.split("=") + ["1"])[:2] for v in filter(None, kw.pop("_env", "").split(","))]  # NAME[=value]
            os.environ.update(dict(env))
            r, loss, dE, dC = bench_cce(name, E, C, t, a.reps, **kw)
            for v, _ in env:
                os.environ.pop(v)
            r.update(loss_err=abs(loss.item() - tl) / abs(tl), dE_err=rel(dE, tdE), dC_err=rel(dC, tdC))
            rows.append(r)
            print(r, flush=True)
            del dE, dC

    def eager(e, c, tt):
        return F.cross_entropy((e @ c.T).float(), tt)

    methods = []
    if not a.no_torch:
        methods = [("PyTorch eager", eager)]
        if not a.no_compile:
            methods.append(("torch.compile", torch.compile(eager)))
    if a.others:
        methods += other_methods()
    if methods:
        for name, fn in methods:
            try:
                r, dE, dC = bench_torch(name, fn, E, C, t, a.reps)
                with torch.no_grad():
                    lv = fn(E, C, t).item()
            except Exception as ex:  # noqa: BLE001  (report and go on)
                print(f"# {name} failed: {ex!r}", flush=True)
                torch.cuda.empty_cache()
                continue
            r.update(loss_err=abs(lv - tl) / abs(tl), dE_err=rel(dE, tdE), dC_err=rel(dC, tdC))
            rows.append(r)
            print(r, flush=True)
            del dE, dC
            torch.cuda.empty_cache()
    host = None
    if a.host:
        try:
            out = bench_host(E, C, t, a.reps)
            rep_ = out["report"]
            host = dict(rep_, loss_err=abs(float(out["loss"][0]) - tl) / abs(tl),
                        dE_err=rel(torch.from_numpy(out["dE"]).cuda(), tdE),
                        dC_err=rel(torch.from_numpy(out["dC"]).cuda(), tdC))
            del out
            print("cce_host_run report:", host, flush=True)
        except Exception as ex:  # noqa: BLE001
            print(f"# cce_host_run failed: {ex!r}", flush=True)

    print()
    print("| method | loss ms | loss MB | grad ms | grad MB | loss+grad ms | loss+grad MB | loss rel err | dE rel err | dC rel err | tiles kept |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "loss_ms" not in r:
            continue
        kept = f"{r['tiles_kept']:.3f}" if "tiles_kept" in r else ""
        print(f"| {r['method']} | {r['loss_ms']:.1f} | {r['loss_mb']:.0f} | {r['grad_ms']:.1f} | {r['grad_mb']:.0f} | "
              f"{r['lg_ms']:.1f} | {r['lg_mb']:.0f} | {r['loss_err']:.1e} | {r['dE_err']:.4f} | {r['dC_err']:.4f} | {kept} |")
    stress = []
    if a.stress:
        del E, C, t, tdE, tdC
        torch.cuda.empty_cache()
        E, C, t, ent2 = lm_like(a.N, a.D, a.V, 2.0, 1.0, 1, dtype)
        tl, tdE, tdC = truth(E, C, t)
        for name, kw in [("cce_cuda (this)", {}), ("cce_cuda no filter", dict(filter_eps=0.0)),
                         ("cce_cuda no filter, kernels (no cuBLAS)", dict(filter_eps=0.0, _env="CCE_DENSE_PRODUCTS=0"))]:
            env = [(v.split("=") + ["1"])[:2] for v in filter(None, kw.pop("_env", "").split(","))]
            os.environ.update(dict(env))
            r, loss, dE, dC = bench_cce(name, E, C, t, a.reps, full=False, **kw)
            for v, _ in env:
                os.environ.pop(v)
            r.update(loss_err=abs(loss.item() - tl) / abs(tl), dE_err=rel(dE, tdE), dC_err=rel(dC, tdC))
            stress.append(r)
            print(r, flush=True)
            del dE, dC
        for name, fn in methods:
            try:
                r, dE, dC = bench_torch(name, fn, E, C, t, a.reps, full=False)
                with torch.no_grad():
                    lv = fn(E, C, t).item()
            except Exception as ex:  # noqa: BLE001
                print(f"# {name} failed: {ex!r}", flush=True)
                torch.cuda.empty_cache()
                continue
            r.update(loss_err=abs(lv - tl) / abs(tl), dE_err=rel(dE, tdE), dC_err=rel(dC, tdC))
            stress.append(r)
            print(r, flush=True)
            del dE, dC
            torch.cuda.empty_cache()
        print()
        print(f"Flat stress data: S=2, alpha=1, entropy={ent2:.2f} nats")
        print()
        print("| method | loss+grad ms | loss+grad MB | loss rel err | dE rel err | dC rel err | tiles kept |")
        print("|---|---|---|---|---|---|---|")
        for r in stress:
            kept = f"{r['tiles_kept']:.3f}" if "tiles_kept" in r else ""
            print(f"| {r['method']} | {r['lg_ms']:.1f} | {r['lg_mb']:.0f} | {r['loss_err']:.1e} | {r['dE_err']:.4f} | "
                  f"{r['dC_err']:.4f} | {kept} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(shape=dict(N=a.N, D=a.D, V=a.V, S=a.S, alpha=a.alpha), entropy=ent, rows=rows,
                           stress=stress, host_run=host, device=torch.cuda.get_device_name(),
                           torch=torch.__version__), f, indent=1)


if __name__ == "__main__":
    main()
