"""A conformance suite for implementations of linear cross-entropy (GPU ports, fused kernels).

    python -m cce_swift.conformance module:function [--device cuda] [--dtypes f32,bf16] [--cases SUBSTR]
                                    [--json FILE] [--list]

runs `function` (the signature of linear_cross_entropy: e, c, targets, bias=None,
ignore_index=-100, softcap=None, reduction="mean", shift=0, label_smoothing=0.0, z_loss=0.0,
weight=None, filter_eps="auto", return_lse=False; only the options a case sets are passed)
over a fixed set of cases, on torch tensors, and prints a pass/fail table: for every case and
dtype the relative norm error of loss, dE, dC and dBias against the Float64 reference
(cce_swift.reference, the engine's exact mode, on the same rounded inputs), with the budget
its dtype gets. Gradients come from autograd on sum(loss * upstream), with a non-uniform
upstream for reduction="none". A case whose options the function does not accept
(TypeError, NotImplementedError, or a ValueError naming the option) is "unsupported", not a
failure. Exit status: 1 when any case fails or errors, else 0.

Budgets (relative norm error ||cand - ref|| / ||ref||, per dtype):
    float32   loss, lse 1e-5   dE, dC, dBias 1e-4
    float16   loss, lse 2e-3   dE, dC, dBias 1e-2
    bfloat16  loss, lse 1e-2   dE, dC, dBias 1e-2
The computation frameworks do without a fused kernel, F.cross_entropy((e @ c.T).float() + b)
with autograd (`baseline` below), meets them with a margin of 1.6x or more in float32 and
bfloat16 (worst: dE 6.1e-3 in bfloat16 at V = 2^15 + 1). In float16 it fails dE on the LM-like
cases (2.2e-2 and 6.6e-2): its logit gradient, divided by the token count and rounded to
float16, underflows (below 6e-8 it is 0), the reason float16 training needs loss scaling; a
kernel that keeps the logit gradient in float32 passes (this engine: 6e-4 at most).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import traceback
from dataclasses import dataclass, field

import numpy as np

BUDGETS = {
    "f32": {"loss": 1e-5, "lse": 1e-5, "grad": 1e-4},
    "f16": {"loss": 2e-3, "lse": 2e-3, "grad": 1e-2},
    "bf16": {"loss": 1e-2, "lse": 1e-2, "grad": 1e-2},
}


@dataclass
class Case:
    """One problem: shapes, data, options (only those set are passed to the function)."""

    name: str
    n: int = 37              # rows (the product of lead when lead is given)
    d: int = 19
    v: int = 301
    lead: tuple | None = None
    data: str = "gauss"      # gauss | lm2 | lm4 (LM-like, S = 2 flat, S = 4 peaked)
    bias: bool = False
    offset: float = 0.0      # added to every logit through a constant bias (bias=True)
    ignore: float = 0.1      # fraction of ignored targets
    options: dict = field(default_factory=dict)
    weight: bool = False
    dtypes: tuple = ("f32", "f16", "bf16")


def cases() -> list[Case]:
    out = [
        Case("plain"),
        Case("bias", bias=True),
        Case("sum", options=dict(reduction="sum")),
        Case("none", options=dict(reduction="none"), bias=True),
        Case("softcap", options=dict(softcap=5.0)),
        Case("softcap+zloss", options=dict(softcap=5.0, z_loss=1e-3), bias=True),
        Case("label smoothing", options=dict(label_smoothing=0.1)),
        Case("z-loss", options=dict(z_loss=1e-2)),
        Case("weight", weight=True),
        Case("weight+smoothing+none", weight=True, options=dict(label_smoothing=0.2, reduction="none")),
        Case("ignore_index=5", options=dict(ignore_index=5), ignore=0.0),
        Case("shift=1", lead=(4, 9), options=dict(shift=1)),
        Case("shift=2, padding, none", lead=(3, 12), ignore=0.3, options=dict(shift=2, reduction="none")),
        Case("filter_eps=None", options=dict(filter_eps=None)),
        Case("N=1", n=1, ignore=0.0),
        Case("V=1", v=1, ignore=0.0),
        Case("D=1", d=1),
        Case("all ignored", ignore=1.0),
        Case("all ignored, sum", ignore=1.0, options=dict(reduction="sum")),
        Case("offset +100", bias=True, offset=100.0),
        Case("offset -100, none", bias=True, offset=-100.0, options=dict(reduction="none")),
        Case("V=2^12+1", n=64, d=64, v=4097),
        Case("V=2^15+1 LM S=4", n=64, d=64, v=32769, data="lm4"),
        Case("LM flat S=2", n=256, d=128, v=8192, data="lm2"),
        Case("LM peaked S=4", n=256, d=128, v=8192, data="lm4"),
        Case("LM S=4 smoothing+zloss", n=256, d=128, v=8192, data="lm4",
             options=dict(label_smoothing=0.1, z_loss=1e-4)),
        Case("odd tiles", n=129, d=65, v=1025, bias=True),
    ]
    return out


def make_inputs(case: Case, seed: int):
    """Float32 numpy E, C, targets (int64), bias, weight of the case."""
    rng = np.random.default_rng(seed)
    shape = tuple(case.lead) if case.lead else (case.n,)
    n, d, v = int(np.prod(shape)), case.d, case.v
    if case.data == "gauss":
        e = rng.standard_normal(shape + (d,)).astype(np.float32)
        c = (rng.standard_normal((v, d)) * 2 / math.sqrt(d)).astype(np.float32)
        t = rng.integers(0, v, size=shape)
    else:  # LM-like (Docs/LMLIKE.md), alpha 1.5
        s = 2.0 if case.data == "lm2" else 4.0
        c = (rng.standard_normal((v, d)) / math.sqrt(max(d - 1, 1))).astype(np.float32)
        c[:, d - 1] = -1.5 * np.log(rng.permutation(v) + 1.0)
        e = (rng.standard_normal(shape + (d,)) * s).astype(np.float32)
        e[..., d - 1] = 1.0
        z = e.reshape(n, d).astype(np.float64) @ c.T.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        t = np.array([rng.choice(v, p=row) for row in p]).reshape(shape)
    ignore_index = case.options.get("ignore_index", -100)
    if case.ignore > 0:
        t = np.where(rng.random(shape) < case.ignore, ignore_index, t)
    b = None
    if case.bias:
        b = (rng.standard_normal(v) + case.offset).astype(np.float32)
    w = None
    if case.weight:
        w = (rng.random(v) * 2).astype(np.float32)
        w[::7] = 0
    return e, c, t.astype(np.int64), b, w


def _rounded(x, dtype):
    import torch

    return None if x is None else torch.from_numpy(x).to(dtype)


def run_case(fn, case: Case, dtype_name: str, device: str, seed: int = 0) -> dict:
    import torch

    from . import reference
    from .compare import compare

    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    e, c, t, b, w = make_inputs(case, seed)
    E, C, B = _rounded(e, dtype), _rounded(c, dtype), _rounded(b, dtype)
    opts = dict(case.options)
    reduction = opts.get("reduction", "mean")
    shift = int(opts.get("shift", 0))
    sliced = t.shape[:-1] + (t.shape[-1] - shift,)
    up = None
    if reduction == "none":
        up = np.linspace(0.5, 1.5, int(np.prod(sliced))).reshape(sliced).astype(np.float32)
        full = np.zeros(t.shape, np.float32)
        full[..., shift:] = up
        ref_up = full
    else:
        ref_up = None
    ref_opts = {k: opts[k] for k in ("ignore_index", "softcap", "reduction", "shift", "label_smoothing", "z_loss")
                if k in opts}
    ref = reference(E, C, t, B, w, grad_output=ref_up, **ref_opts)
    # The candidate, on the device, with gradients for e, c and bias.
    Ed = E.to(device).requires_grad_(True)
    Cd = C.to(device).requires_grad_(True)
    Bd = None if B is None else B.to(device).requires_grad_(True)
    kwargs = dict(opts)
    if Bd is not None:
        kwargs["bias"] = Bd
    if w is not None:
        kwargs["weight"] = torch.from_numpy(w).to(device)
    try:
        loss = fn(Ed, Cd, torch.from_numpy(t).to(device), **kwargs)
        if isinstance(loss, tuple):
            loss = loss[0]
        upt = torch.ones((), device=device) if up is None else torch.from_numpy(up).to(device)
        (loss.float() * upt).sum().backward()
    except (TypeError, NotImplementedError) as err:
        return {"status": "unsupported", "message": f"{type(err).__name__}: {err}"}
    except ValueError as err:
        text = str(err)
        if any(k in text for k in list(opts) + ["weight", "bias"]):
            return {"status": "unsupported", "message": f"ValueError: {text}"}
        return {"status": "error", "message": f"ValueError: {text}"}
    except Exception as err:  # noqa: BLE001 (a crash of the candidate is a result)
        return {"status": "error", "message": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=3)}

    def np64(x):
        return None if x is None else x.detach().to("cpu", torch.float64).numpy()

    cand = {"loss": np64(loss), "dE": np64(Ed.grad), "dC": np64(Cd.grad)}
    refd = {"loss": ref["loss"][..., shift:] if reduction == "none" else ref["loss"], "dE": ref["dE"], "dC": ref["dC"]}
    if Bd is not None:
        cand["dBias"], refd["dBias"] = np64(Bd.grad), ref["dBias"]
    missing = [k for k, x in cand.items() if x is None]
    if missing:
        return {"status": "error", "message": f"no gradient for {', '.join(missing)}"}
    bud = BUDGETS[dtype_name]
    budgets = {k: bud["grad"] for k in cand if k != "loss"}
    budgets["loss"] = bud["loss"]
    report = compare(refd, cand, budgets=budgets)
    rows = {r.name: {"relative": r.relative, "max_abs": r.max_abs, "budget": r.relative_budget,
                     "passed": r.passed, "problem": r.problem} for r in report.rows}
    return {"status": "pass" if report.passed else "FAIL", "tensors": rows}


def baseline(e, c, targets, bias=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
             label_smoothing=0.0, z_loss=0.0, weight=None, filter_eps="auto", return_lse=False):
    """The materialized computation in the inputs' dtype, as frameworks do it:
    F.cross_entropy((e @ c.T).float() + bias, ...), with apple's shift slicing and a z-loss
    weighted like the token's loss. filter_eps is ignored (nothing is filtered)."""
    import torch
    import torch.nn.functional as F

    if shift:
        e = e[..., :-shift, :]
        targets = targets[..., shift:]
    z = (e.reshape(-1, e.shape[-1]) @ c.T).float()
    if bias is not None:
        z = z + bias.float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    t = targets.reshape(-1)
    loss = F.cross_entropy(z, t, weight=None if weight is None else weight.float(), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none")
    active = t != ignore_index
    wt = torch.where(active, (weight.float() if weight is not None else torch.ones(c.shape[0], device=z.device))[
        t.clamp(min=0)], 0.0)
    lse = torch.logsumexp(z, -1)
    if z_loss:
        loss = loss + z_loss * wt * lse**2
    if reduction == "none":
        out = loss.reshape(targets.shape)
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss.sum() / wt.sum()
    if return_lse:
        return out, torch.where(active, lse, 0.0).reshape(targets.shape)
    return out


def load(spec: str):
    if ":" not in spec:
        raise SystemExit(f"expected module:function, got {spec!r}")
    mod, name = spec.split(":", 1)
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def table(results: list[dict]) -> str:
    lines = [f"{'case':28} {'dtype':5} {'status':11} {'loss':>20} {'dE':>20} {'dC':>20} {'dBias':>20}"]
    for r in results:
        cells = []
        for k in ("loss", "dE", "dC", "dBias"):
            x = r.get("tensors", {}).get(k)
            if x is None:
                cells.append(f"{'-':>20}")
            else:
                rel = x["relative"]
                mark = "" if x["passed"] else " !"
                cells.append(f"{rel:9.2e} ≤ {x['budget']:.0e}{mark}".rjust(20))
        status = r["status"]
        lines.append(f"{r['case'][:28]:28} {r['dtype']:5} {status:11} " + " ".join(cells))
        if status in ("error", "unsupported"):
            lines.append(f"{'':35}{r['message'][:110]}")
    counts = {s: sum(r["status"] == s for r in results) for s in ("pass", "FAIL", "error", "unsupported")}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)


def _write_json(path, function, device, results):
    with open(path, "w") as f:
        json.dump({"function": function, "device": device, "budgets": BUDGETS, "results": results}, f, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cce_swift.conformance",
                                 description="Run a linear_cross_entropy implementation over the conformance cases.")
    ap.add_argument("function", nargs="?", default="cce_swift:linear_cross_entropy",
                    help="module:function (default: this package's engine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="f32,f16,bf16")
    ap.add_argument("--cases", default="", help="only cases whose name contains this")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--list", action="store_true", help="list the cases")
    a = ap.parse_args(argv)
    selected = [c for c in cases() if a.cases in c.name]
    if a.list:
        for c in selected:
            print(f"{c.name:28} N={c.n if not c.lead else 'x'.join(map(str, c.lead))} D={c.d} V={c.v} "
                  f"data={c.data} bias={c.bias} offset={c.offset} ignore={c.ignore} weight={c.weight} {c.options}")
        return 0
    fn = load(a.function)
    dtypes = [x for x in a.dtypes.split(",") if x]
    for x in dtypes:
        if x not in BUDGETS:
            raise SystemExit(f"unknown dtype {x!r} (f32, f16, bf16)")
    results = []
    for case in selected:
        for dt in dtypes:
            if dt not in case.dtypes:
                continue
            r = run_case(fn, case, dt, a.device)
            r.update(case=case.name, dtype=dt)
            results.append(r)
            if a.json:  # written after every case, so that a run cut short keeps what it measured
                _write_json(a.json, a.function, a.device, results)
    print(f"{a.function} on {a.device}: relative norm error against the Float64 reference ≤ budget")
    print(table(results))
    if a.json:
        _write_json(a.json, a.function, a.device, results)
    return 1 if any(r["status"] in ("FAIL", "error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
