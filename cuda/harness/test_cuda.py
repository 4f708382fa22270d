"""Validates libcce_cuda.so against a float64 PyTorch truth that materializes the logits.

Every case runs for float32, float16 and bfloat16 inputs. The truth is computed in float64
from the same (already rounded) inputs, so the error measured is the kernels' own:
float32 accumulation, the gradient tile dy rounded to the input type before the two
gradient products (16-bit types only), tile filtering, and the final rounding of the
gradients to the input type.

Error budgets, ||x - truth|| / ||truth||:
    loss and lse:  1e-5 (f32), 1e-4 (f16, bf16)
    dE, dC, dbias: 1e-4 (f32), 4e-3 (f16), 1.6e-2 (bf16)
Outputs are poisoned with NaN first; a NaN anywhere fails.

    python3 harness/test_cuda.py   # prints one line per case and 'N passed, N failed'

The host entry point cce_host_run is checked too: numpy host arrays in, float32 host arrays
out, against the device path (cce_forward / cce_backward on the same inputs, which must agree
to the bit after the same float32 conversion) and against the float64 truth.
"""
import itertools
import os
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

import cce_ctypes as cce

BUDGET = {
    torch.float32: dict(loss=1e-5, grad=1e-4),
    torch.float16: dict(loss=1e-4, grad=4e-3),
    torch.bfloat16: dict(loss=1e-4, grad=1.6e-2),
}


def lm_like(N, D, V, S=4.0, alpha=1.5, seed=0, device="cuda"):
    """Docs/LMLIKE.md: peaked softmax with a Zipf-like prior scattered over the vocabulary."""
    g = torch.Generator(device=device).manual_seed(seed)
    C = torch.randn(V, D, generator=g, device=device) / math.sqrt(D - 1)
    rank = torch.randperm(V, generator=g, device=device).double() + 1
    C[:, D - 1] = (-alpha * torch.log(rank)).float()
    E = torch.randn(N, D, generator=g, device=device) * S
    E[:, D - 1] = 1.0
    logits = E @ C.T
    t = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    return E, C, t


def reference(E, C, bias, t, grad, o, weight=None):
    """float64 truth with autograd over materialized logits. With per-class weights w (W = sum w):
    loss_i = w_t [(1 - a)(lse - z_t) + zl lse^2] + (a / V)(W lse - sum_v w_v z_v), the mean over
    sum_i w_{t_i} (F.cross_entropy(weight=w, label_smoothing=a) plus the weighted z-loss)."""
    E64 = E.double().requires_grad_()
    C64 = C.double().requires_grad_()
    b64 = bias.double().requires_grad_() if bias is not None else None
    N = E.shape[0]
    V = C.shape[0]
    y = E64 @ C64.T
    if b64 is not None:
        y = y + b64
    s = o.get("softcap", 0.0)
    z = s * torch.tanh(y / s) if s else y
    B = o.get("batch", 1)
    T = N // B
    k = o.get("shift", 0)
    ign = o.get("ignore_index", -100)
    tt = t.view(B, T)
    eff = torch.full_like(tt, ign)
    eff[:, : T - k] = tt[:, k:]
    eff = eff.reshape(N)
    valid = (eff != ign) & (eff >= 0) & (eff < V)
    lse = torch.logsumexp(z, -1)
    zt = z.gather(1, torch.where(valid, eff, 0).unsqueeze(1)).squeeze(1)
    a = o.get("label_smoothing", 0.0)
    zl = o.get("z_loss", 0.0)
    if weight is None:
        rows = lse - (1 - a) * zt - a / V * z.sum(-1) + zl * lse * lse
        den = valid.sum()
    else:
        w = weight.double()
        wt = torch.where(valid, w[torch.where(valid, eff, 0)], torch.zeros_like(lse))
        rows = wt * ((1 - a) * (lse - zt) + zl * lse * lse) + a / V * (w.sum() * lse - (z * w).sum(-1))
        den = wt.sum()
    rows = torch.where(valid, rows, torch.zeros_like(rows))
    red = o.get("reduction", "mean")
    out = rows if red == "none" else rows.sum() if red == "sum" else rows.sum() / den
    out.backward(grad.double() if red == "none" else grad.double().reshape(()))
    return dict(loss=out.detach(), lse=lse.detach(), dE=E64.grad, dC=C64.grad,
                db=b64.grad if b64 is not None else None)


def rel(x, ref):
    x = x.double().reshape(-1)
    ref = ref.double().reshape(-1)
    if torch.isnan(x).any():
        return float("inf")
    d = torch.linalg.norm(x - ref).item()
    n = torch.linalg.norm(ref).item()
    return d / n if n > 0 else d


CASES = [
    ("mean", {}),
    ("sum+bias", dict(reduction="sum", bias=True)),
    ("none+ignore", dict(reduction="none", ignore=True)),
    ("softcap", dict(softcap=8.0)),
    ("smoothing", dict(label_smoothing=0.1)),
    ("smoothing+softcap", dict(label_smoothing=0.1, softcap=8.0, bias=True)),
    ("zloss", dict(z_loss=1e-2)),
    ("shift", dict(shift=1, batch=3, ignore=True)),
    ("shift2+none", dict(shift=2, batch=3, reduction="none")),
    ("nosort+nolean+nofilter", dict(sort_vocab=False, lean_memory=False, filter_eps=0.0)),
    ("nolean+bias", dict(lean_memory=False, bias=True, reduction="sum")),
    ("one-chunk", dict(dc_chunk_rows=1 << 20)),
    ("everything", dict(reduction="none", bias=True, ignore=True, softcap=10.0, label_smoothing=0.05,
                        z_loss=1e-3, shift=1, batch=3)),
    ("everything-nosoftcap", dict(reduction="mean", bias=True, ignore=True, label_smoothing=0.2,
                                  z_loss=1e-3, shift=1, batch=3)),
    # per-class weights (cce_forward_weighted / cce_backward_weighted)
    ("weight", dict(weight=True, ignore=True)),
    ("weight+bias+sum+nolean", dict(weight=True, bias=True, reduction="sum", lean_memory=False)),
    ("weight+smoothing+zloss", dict(weight=True, label_smoothing=0.1, z_loss=1e-2, bias=True)),
    ("weight+smoothing+softcap+none", dict(weight=True, label_smoothing=0.1, softcap=8.0, reduction="none",
                                           bias=True, ignore=True)),
    ("weight+everything", dict(weight=True, reduction="mean", bias=True, ignore=True, softcap=10.0,
                               label_smoothing=0.05, z_loss=1e-3, shift=1, batch=3)),
]


def run_case(name, spec, dtype, N=300, D=72, V=1000, seed=1):
    spec = dict(spec)
    use_bias = spec.pop("bias", False)
    ignore = spec.pop("ignore", False)
    use_weight = spec.pop("weight", False)
    spec.setdefault("dc_chunk_rows", 256)  # several f32 dC chunks at this size
    E, C, t = lm_like(N, D, V, seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 7)
    bias = (torch.randn(V, generator=g, device="cuda") * 0.5) if use_bias else None
    weight = None
    if use_weight:  # in [0, 2.5), every 11th class 0
        weight = torch.rand(V, generator=g, device="cuda") * 2.5
        weight[3::11] = 0
    if ignore:
        t[torch.rand(N, generator=g, device="cuda") < 0.2] = -100
    Ed, Cd = E.to(dtype).contiguous(), C.to(dtype).contiguous()
    bd = bias.to(dtype) if bias is not None else None
    red = spec.get("reduction", "mean")
    grad = (torch.rand(N, generator=g, device="cuda") + 0.5) if red == "none" else torch.tensor([1.7], device="cuda")
    ref = reference(Ed, Cd, bd, t, grad, spec, weight)
    loss, lse = cce.forward(Ed, Cd, t, bias=bd, weight=weight, **spec)
    dE, dC, db, st = cce.backward(Ed, Cd, t, lse, grad, bias=bd, want_dbias=use_bias, stats=True, poison=True,
                                  weight=weight, **spec)
    torch.cuda.synchronize()
    errs = dict(loss=rel(loss, ref["loss"]), lse=rel(lse, ref["lse"]), dE=rel(dE, ref["dE"]), dC=rel(dC, ref["dC"]))
    if use_bias:
        errs["db"] = rel(db, ref["db"])
    b = BUDGET[dtype]
    ok = all(errs[k] <= (b["loss"] if k in ("loss", "lse") else b["grad"]) for k in errs)
    return ok, errs, st


HOST_CASES = [
    ("host mean+bias", dict(bias=True), ("dE", "dC", "dbias"), 2),
    ("host none+ignore+shift", dict(reduction="none", ignore=True, shift=1, batch=3), ("dE", "dC", "dbias"), 0),
    ("host sum+softcap dE only", dict(reduction="sum", softcap=8.0), ("dE",), 1),
    ("host loss only", dict(ignore=True), (), 1),
]


def to_host(x):
    """A torch tensor as a host numpy array of its raw elements (bf16 as uint16 bit patterns)."""
    x = x.detach().cpu().contiguous()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def run_host_case(name, spec, want, repeats, dtype, N=300, D=72, V=1000, seed=5):
    spec = dict(spec)
    use_bias = spec.pop("bias", False)
    ignore = spec.pop("ignore", False)
    spec.setdefault("dc_chunk_rows", 256)
    E, C, t = lm_like(N, D, V, seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 7)
    bias = (torch.randn(V, generator=g, device="cuda") * 0.5) if use_bias else None
    if ignore:
        t[torch.rand(N, generator=g, device="cuda") < 0.2] = -100
    Ed, Cd = E.to(dtype).contiguous(), C.to(dtype).contiguous()
    bd = bias.to(dtype) if bias is not None else None
    red = spec.get("reduction", "mean")
    grad = torch.ones(N, device="cuda") if red == "none" else torch.ones(1, device="cuda")
    out = cce.host_run(to_host(Ed), to_host(Cd), to_host(t), bias=None if bd is None else to_host(bd),
                       dtype=cce.DTYPES[dtype], want=want, repeats=repeats, **spec)
    # device path, same inputs
    loss, lse = cce.forward(Ed, Cd, t, bias=bd, **spec)
    errs = {}
    same = dict(loss=rel(torch.from_numpy(out["loss"]), loss.reshape(-1).cpu()),
                lse=rel(torch.from_numpy(out["lse"]), lse.cpu()))
    ref = reference(Ed, Cd, bd, t, grad, spec)
    errs["loss"] = rel(torch.from_numpy(out["loss"]).cuda(), ref["loss"])
    errs["lse"] = rel(torch.from_numpy(out["lse"]).cuda(), ref["lse"])
    if want:
        dE, dC, db, _ = cce.backward(Ed, Cd, t, lse, grad, bias=bd, want_dE="dE" in want, want_dC="dC" in want,
                                     want_dbias="dbias" in want, **spec)
        for k, dev, tr in (("dE", dE, ref["dE"]), ("dC", dC, ref["dC"]),
                           ("dbias", db, ref["db"] if ref["db"] is not None else None)):
            if k not in want:
                continue
            hx = torch.from_numpy(out[k])
            same[k] = rel(hx, dev.float().cpu())
            if tr is not None:
                errs[k] = rel(hx.cuda(), tr)
            else:  # dbias without a bias: the gradient with respect to a zero bias
                r2 = reference(Ed, Cd, torch.zeros(V, dtype=dtype, device="cuda"), t, grad, spec)
                errs[k] = rel(hx.cuda(), r2["db"])
    b = BUDGET[dtype]
    rep = out["report"]
    ok = all(v <= 1e-6 for v in same.values())
    ok &= all(errs[k] <= (b["loss"] if k in ("loss", "lse") else b["grad"]) for k in errs)
    ok &= bool(np.isfinite(out["lse"]).all())  # ignored / unpaired rows too
    ok &= rep["peak_device_mib"] > 0 and len(rep["device_name"]) > 0
    if repeats > 0:
        ok &= rep["forward_ms"] > 0 and rep["loss_backward_ms"] > 0
        ok &= (rep["backward_ms"] > 0) == bool(want)
    else:
        ok &= rep["forward_ms"] == 0 and rep["loss_backward_ms"] == 0
    ok &= (0 < rep["tiles_kept"] <= 1) if want else rep["tiles_kept"] == -1
    msg = ("vs device " + " ".join(f"{k}={v:.1e}" for k, v in same.items()) + " | vs truth " +
           " ".join(f"{k}={v:.2e}" for k, v in errs.items()) +
           f" | fwd {rep['forward_ms']:.3f} ms bwd {rep['backward_ms']:.3f} ms f+b {rep['loss_backward_ms']:.3f} ms"
           f" peak {rep['peak_device_mib']:.2f} MiB kept {rep['tiles_kept']:.3f}")
    return ok, msg


def check(label, dtype, run):
    """Runs run() -> (ok, msg) and prints one line; an exception is a failure, reported."""
    try:
        ok, msg = run()
    except Exception as e:  # report and go on
        ok, msg = False, f"EXCEPTION {e!r}"
    print(f"{'OK    ' if ok else 'NOT OK'} {label:24s} {str(dtype):15s} {msg}", flush=True)
    return bool(ok)


def device_case(name, spec, dtype, **shape):
    """run_case as (ok, message): the errors against the truth and the tiles kept."""
    ok, errs, st = run_case(name, spec, dtype, **shape)
    return ok, " ".join(f"{k}={v:.2e}" for k, v in errs.items()) + f" tiles kept {st[1]}/{st[0]}"


def backward_inputs(dtype, N, D, V, seed, weight=False, **opts):
    """A backward's inputs on LM-like data in `dtype`: E, C, targets, a bias, class weights (or None),
    the forward's lse with `opts`, and an upstream gradient of 1.3."""
    E, C, t = lm_like(N, D, V, seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 11)
    bias = (torch.randn(V, generator=g, device="cuda") * 0.5).to(dtype)
    w = (torch.rand(V, generator=g, device="cuda") + 0.5) if weight else None
    Ed, Cd = E.to(dtype).contiguous(), C.to(dtype).contiguous()
    _, lse = cce.forward(Ed, Cd, t, bias=bias, weight=w, **opts)
    return Ed, Cd, t, bias, w, lse, torch.tensor([1.3], device="cuda")


def products_agree(dtype, N, D, V, seed):
    """(ok, message): dE, dC and dbias with the default bulk-copy products and with the cp.async ones
    (CCE_PRODUCTS_CPASYNC=1)."""
    Ed, Cd, t, bias, _, lse, grad = backward_inputs(dtype, N, D, V, seed, dc_chunk_rows=0)
    outs = []
    for env in ("1", None):
        if env:
            os.environ["CCE_PRODUCTS_CPASYNC"] = env
        try:
            dE, dC, db, st = cce.backward(Ed, Cd, t, lse, grad, bias=bias, want_dbias=True, stats=True, poison=True,
                                          dc_chunk_rows=0)
            torch.cuda.synchronize()
        finally:
            os.environ.pop("CCE_PRODUCTS_CPASYNC", None)
        outs.append((dE.float(), dC.float(), db.float()))
    diffs = [rel(a, b) for a, b in zip(outs[0], outs[1])]
    same = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
    ok = all(d <= 1e-6 for d in diffs) and all(torch.isfinite(x).all().item() for x in outs[0])
    return ok, ("bitwise equal" if same else "dE/dC/db rel diff " + " ".join(f"{d:.1e}" for d in diffs)) + \
        f", tiles kept {st[1]}/{st[0]}"


def dense_against_kernels(dtype, N, D, V, seed):
    """(ok, message): without filtering, dE, dC and dbias from the dense products (cuBLAS, the
    default there) and from the filtered path's kernels with nothing skipped (CCE_DENSE_PRODUCTS=0):
    both within the budget of the truth, and not the same bits (two summation orders: the dense
    path did run)."""
    Ed, Cd, t, bias, _, lse, grad = backward_inputs(dtype, N, D, V, seed, dc_chunk_rows=0, filter_eps=0.0)
    ref = reference(Ed, Cd, bias, t, grad, {})
    outs = []
    for env in (None, "0"):
        if env:
            os.environ["CCE_DENSE_PRODUCTS"] = env
        try:
            dE, dC, db, st = cce.backward(Ed, Cd, t, lse, grad, bias=bias, want_dbias=True, stats=True, poison=True,
                                          dc_chunk_rows=0, filter_eps=0.0)
            torch.cuda.synchronize()
        finally:
            os.environ.pop("CCE_DENSE_PRODUCTS", None)
        outs.append((dE, dC, db))
    errs = [[rel(x, r) for x, r in zip(o, (ref["dE"], ref["dC"], ref["db"]))] for o in outs]
    same = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
    ok = not same and all(e <= BUDGET[dtype]["grad"] for es in errs for e in es) and st[1] == st[0]
    return ok, ("SAME BITS (dense path not taken?)" if same else "") + \
        " dense dE/dC/db " + " ".join(f"{e:.2e}" for e in errs[0]) + \
        " | kernels " + " ".join(f"{e:.2e}" for e in errs[1]) + f", tiles kept {st[1]}/{st[0]}"


def repeatable(dtype, N, D, V, seed, calls=4, **opts):
    """(ok, message): the same backward `calls` times, each call's dE, dC and dbias bit for bit the
    first's (no atomic float adds: the set-up's column sums, the dz stage's sums and dbias are
    added in fixed orders)."""
    Ed, Cd, t, bias, weight, lse, grad = backward_inputs(dtype, N, D, V, seed, weight=opts.pop("weight", False),
                                                         **opts)
    first, differ = None, 0
    for _ in range(calls):
        dE, dC, db, st = cce.backward(Ed, Cd, t, lse, grad, bias=bias, weight=weight, want_dbias=True, stats=True,
                                      poison=True, **opts)
        torch.cuda.synchronize()
        out = [x.clone() for x in (dE, dC, db)]
        if first is None:
            first = out
        elif not all(torch.equal(a, b) for a, b in zip(out, first)):
            differ += 1
    return differ == 0, f"{differ} of {calls - 1} later calls differ, tiles kept {st[1]}/{st[0]}"


def raises(call, *needles):
    """(ok, "") where call() raises a RuntimeError whose message holds every needle."""
    try:
        call()
    except RuntimeError as e:
        return all(n in str(e) for n in needles), ""
    return False, "no error"


def main():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    for (name, spec), dtype in itertools.product(CASES, [torch.float32, torch.float16, torch.bfloat16]):
        results.append(check(name, dtype, lambda: device_case(name, spec, dtype)))
    # Larger shape on the tensor-core path: several token blocks and a filtered, sorted vocabulary;
    # then the same with class weights and smoothing (the exact rank-one smoothing term) and filtering.
    larger = dict(N=1000, D=392, V=20000, seed=3)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        results.append(check("larger N1000 D392 V20000", dtype,
                             lambda: device_case("larger", dict(dc_chunk_rows=0), dtype, **larger)))
        spec = dict(dc_chunk_rows=0, weight=True, label_smoothing=0.1, bias=True)
        results.append(check("larger weight+smoothing", dtype, lambda: device_case("larger", spec, dtype, **larger)))
    # Run to run, bit for bit: the same backward four times, with bias, class weights and label
    # smoothing (the smoothing's column sums), for each dtype; on both dz stages where they differ.
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in (larger, dict(N=700, D=200, V=9000, seed=4)):
            spec = dict(dc_chunk_rows=0, weight=True, label_smoothing=0.1)
            results.append(check(f"repeatable N{shape['N']} D{shape['D']}", dtype,
                                 lambda: repeatable(dtype, **shape, **spec)))
    os.environ["CCE_DZ_CPASYNC"] = "1"
    try:
        for dtype in (torch.bfloat16, torch.float16):
            results.append(check("repeatable, dz by cp.async", dtype,
                                 lambda: repeatable(dtype, **larger, dc_chunk_rows=0, label_smoothing=0.1)))
    finally:
        os.environ.pop("CCE_DZ_CPASYNC", None)
    # The products fed by the bulk-copy ring (the default on Hopper) against the cp.async wgmma
    # kernel (CCE_PRODUCTS_CPASYNC=1), same inputs: the same sums in the same order, so the same
    # bits (they once differed now and then: the set-up's atomic adds, since made ordered).
    for dtype in (torch.bfloat16, torch.float16):
        for shape in (larger, dict(N=700, D=200, V=9000, seed=4)):
            results.append(check(f"products tma=cp.async N{shape['N']} D{shape['D']}", dtype,
                                 lambda: products_agree(dtype, **shape)))
    # Without filtering on Hopper the dense products (cuBLAS GEMMs over an unsorted vocabulary)
    # serve the 16-bit types: every case again with filter_eps = 0, at the small shape (several
    # chunks in the workspace) and the larger one (chunks in dE's buffer); the dense path against
    # the kernels with nothing skipped; and run to run.
    for (name, spec), dtype in itertools.product(CASES, [torch.float16, torch.bfloat16]):
        spec = dict(spec, filter_eps=0.0)
        results.append(check("dense " + name, dtype, lambda: device_case(name, spec, dtype)))
    for dtype in (torch.bfloat16, torch.float16):
        spec = dict(dc_chunk_rows=0, weight=True, label_smoothing=0.1, bias=True, filter_eps=0.0)
        results.append(check("dense larger weight+smoothing", dtype,
                             lambda: device_case("larger", spec, dtype, **larger)))
        spec = dict(dc_chunk_rows=0, reduction="none", ignore=True, softcap=10.0, z_loss=1e-3, shift=1, batch=4,
                    filter_eps=0.0, lean_memory=False)
        results.append(check("dense larger everything nolean", dtype,
                             lambda: device_case("larger", spec, dtype, **larger)))
        for shape in (larger, dict(N=700, D=200, V=9000, seed=4)):
            results.append(check(f"dense vs kernels N{shape['N']} D{shape['D']}", dtype,
                                 lambda: dense_against_kernels(dtype, **shape)))
            spec = dict(dc_chunk_rows=0, weight=True, label_smoothing=0.1, filter_eps=0.0)
            results.append(check(f"dense repeatable N{shape['N']} D{shape['D']}", dtype,
                                 lambda: repeatable(dtype, **shape, **spec)))
    # float32 takes D a multiple of 4: D % 8 == 4 (the last 8-column chunk of a dC row is half full;
    # before the fix of write_products it wrote 4 columns into the next row).
    for name, spec in (("f32 D=20", dict(bias=True)), ("f32 D=20 nolean", dict(lean_memory=False)),
                       ("f32 D=20 weight+smoothing", dict(weight=True, label_smoothing=0.1, bias=True))):
        results.append(check(name, torch.float32, lambda: device_case(name, spec, torch.float32, D=20)))
    # The host entry point (numpy arrays in and out) against the device path and the truth.
    for (name, spec, want, reps), dtype in itertools.product(HOST_CASES, [torch.float32, torch.float16, torch.bfloat16]):
        results.append(check(name, dtype, lambda: run_host_case(name, spec, want, reps, dtype)))
    results.append(check("host N1000 D392 V20000", torch.bfloat16,
                         lambda: run_host_case("host larger", dict(dc_chunk_rows=0, bias=True), ("dE", "dC", "dbias"), 1,
                                               torch.bfloat16, **larger)))
    # A bad dtype comes back as CCE_ERR_ARGUMENT with a message.
    z = np.zeros((4, 8), np.float32)
    results.append(check("host bad-dtype error", "", lambda: raises(
        lambda: cce.host_run(z, np.zeros((10, 8), np.float32), np.zeros(4, np.int64), dtype=7), "cce error 1", "dtype")))
    # Argument errors come back as codes with a message.
    results.append(check("bad-D error", "", lambda: raises(
        lambda: cce.forward(torch.zeros(4, 6, device="cuda"), torch.zeros(10, 6, device="cuda"),
                            torch.zeros(4, dtype=torch.long, device="cuda")), "multiple")))
    # filter_eps is the caller's resolved threshold: a negative value (once "by type") is an error.
    results.append(check("negative filter_eps error", "", lambda: raises(
        lambda: cce.forward(torch.zeros(4, 8, device="cuda"), torch.zeros(10, 8, device="cuda"),
                            torch.zeros(4, dtype=torch.long, device="cuda"), filter_eps=-1.0),
        "cce error 1", "filter_eps")))
    passed = sum(results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
