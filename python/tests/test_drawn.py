"""Drawn cases through the Python package and the C ABI, against the independent Float64
reference (conftest.materialized).

Each seed draws a shape (N or B x T, D, V, on and off the tile edges), a storage type and
every option the NumPy path takes: reduction, shift, soft cap, label smoothing, z-loss, class
weights, bias, ignored targets, mode, filter, first-order correction, sorting, saved logits,
threads and an upstream gradient. The fixed tests of test_numpy.py choose each option; these
draw the combinations, so that what the wrapper and the C ABI pass (shapes, strides, option
fields, output shapes) is checked where nobody chose it; with torch, the first half also runs
through autograd. The Swift suite's FuzzTests do the same for the engine itself.

Budgets as Sources/CCEReference/SelfCheck.swift: exact mode 1e-12 (gradients 1e-12 + 1e-10
of the largest); otherwise loss and LSE 1e-5 + 1e-5 of the largest, gradients within
1e-6·max(1, N/64) + 1e-4 of the largest, and with a 16-bit type's filter (ε = 2^-12 or
2^-15) within 2e-2 relative norm (0.35 without the first-order correction).
CCE_PY_DRAWN_CASES draws more cases (default 40), CCE_PY_DRAWN_SEED starts elsewhere.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import cce_swift as cs
from conftest import BF16, assert_close, materialized, problem

CASES = int(os.environ.get("CCE_PY_DRAWN_CASES", "40"))
FIRST = int(os.environ.get("CCE_PY_DRAWN_SEED", "1"))


def draw(seed):
    """The case of `seed`: (problem arguments, engine options, reference options, grad_output)."""
    rng = np.random.default_rng(seed * 7919 + 11)

    def near(edges, limit):
        if rng.random() < 0.5:
            return int(min(limit, max(1, rng.choice(edges) + rng.integers(-1, 2))))
        return int(rng.integers(1, limit + 1))

    d = near([8, 16, 32], 40)
    v = near([16, 32, 64, 128, 256, 512], 700 if rng.random() < 0.7 else 2100)
    shift = 0
    if rng.random() < 0.35:
        lead = (int(rng.integers(1, 5)), near([6, 12, 32], 60))
        shift = int(rng.integers(0, 3))
    else:
        lead = (near([6, 12, 32, 96, 128, 174, 256], 300),)
    dtype = [np.float32, np.float16, BF16][int(rng.integers(0, 3))]
    if dtype is None:  # no ml_dtypes: bf16 cases become float32 ones
        dtype = np.float32
    bias = bool(rng.random() < 0.4)
    ignore = float(rng.random() * 0.4) if rng.random() < 0.3 else 0.0
    reduction = ["mean", "sum", "none"][int(rng.integers(0, 3))]
    ref = dict(reduction=reduction, shift=shift,
               softcap=float(1 + rng.random() * 29) if rng.random() < 0.3 else None,
               label_smoothing=float(rng.random() * 0.3) if rng.random() < 0.3 else 0.0,
               z_loss=float(1e-4 * 100 ** rng.random()) if rng.random() < 0.25 else 0.0,
               weight=(0.25 + rng.random(v) * 2).astype(np.float32) if rng.random() < 0.2 else None)
    mode = ["default"] * 7 + ["exact"] * 2 + ["kahan"]
    eng = dict(ref, mode=mode[int(rng.integers(0, len(mode)))],
               filter_eps=None if rng.random() < 0.25 else "auto",
               filter_correction=bool(rng.random() >= 0.15), sort_vocab=bool(rng.random() >= 0.15),
               saved_logits_per_row=[None, 0, int(rng.integers(1, 41))][int(rng.integers(0, 3))],
               threads=int(rng.integers(1, 4)))
    args = dict(d=d, v=v, seed=seed, dtype=dtype, bias=bias, ignore_fraction=ignore, lead=lead)
    positions = lead[:-1] + (max(0, lead[-1] - shift),)
    # float64 values, which float32 cannot hold: the exact mode keeps them (the C ABI's _f64 entry
    # points; with the float32 grad_loss of ABI 2 the exact cases were off by 1e-9 to 3e-8)
    grad_output = (rng.uniform(0.5, 1.5, positions) if reduction == "none" else float(rng.uniform(0.5, 1.5)))
    return args, eng, ref, grad_output


def relative_norm(got, want, budget, what):
    """‖got − want‖ / ‖want‖ ≤ budget; where want is all zero, every |got| ≤ 1e-6."""
    norm = np.linalg.norm(want)
    if norm == 0:
        assert np.max(np.abs(got), initial=0) <= 1e-6, f"{what}: nonzero where the reference is zero"
    else:
        err = np.linalg.norm(got - want) / norm
        assert err <= budget, f"{what}: relative error {err:.3e} > {budget}"


@pytest.mark.parametrize("seed", range(FIRST, FIRST + CASES))
def test_drawn_case_against_float64(seed):
    args, eng, ref, g = draw(seed)
    e, c, t, b = problem(**args)
    what = f"seed {seed}: {args['lead']} D={args['d']} V={args['v']} {np.dtype(args['dtype']).name} bias={args['bias']} {eng}"
    if args["lead"][-1] <= eng["shift"]:
        pytest.skip(f"{what}: no position left after the shift")
    loss, lse, grads = cs.linear_cross_entropy(e, c, t, bias=b, return_lse=True, return_grads=True, grad_output=g,
                                               **eng)
    r = materialized(e, c, t, bias=b, grad_output=g, **ref)
    n = int(np.prod(args["lead"]))
    if eng["mode"] == "exact":
        lb, gb = dict(atol=1e-12, rtol=1e-11), dict(atol=1e-12, rtol=1e-10)
    else:
        lb, gb = dict(atol=1e-5, rtol=1e-5), dict(atol=1e-6 * max(1.0, n / 64), rtol=1e-4)
    assert_close(loss, r["loss"], **lb, what=f"{what}: loss")
    assert_close(lse, r["lse"], **lb, what=f"{what}: lse")
    filtered16 = eng["mode"] != "exact" and np.dtype(args["dtype"]) != np.float32 and eng["filter_eps"] is not None
    pairs = [("dE", grads.e, r["dE"]), ("dC", grads.c, r["dC"])]
    if b is not None:
        pairs.append(("dBias", grads.bias, r["dBias"]))
    else:
        assert grads.bias is None, what
    for name, got, want in pairs:
        got = np.asarray(got, np.float64)
        assert got.shape == want.shape, f"{what}: {name} shape {got.shape} against {want.shape}"
        if filtered16:
            relative_norm(got, want, 2e-2 if eng["filter_correction"] else 0.35, f"{what}: {name}")
        else:
            assert_close(got, want, **gb, what=f"{what}: {name}")


@pytest.mark.parametrize("seed", range(FIRST, FIRST + max(1, CASES // 2)))
def test_drawn_case_through_torch(seed):
    """The same cases through the torch path (autograd: the gradients land in .grad, in the
    inputs' dtypes), half as many; skipped without torch. Gradients are rounded to their
    dtype: float32 ones are held to the budgets above, in the exact mode 1e-7 of the largest
    (one rounding, 2^-24 a value); 16-bit ones to a relative-norm budget: 2e-2 (0.35 with the
    plain filter) as above, 4e-3 where nothing is filtered (bf16's rounding, about 2^-9 a value)."""
    torch = pytest.importorskip("torch")
    args, eng, ref, g = draw(seed)
    e, c, t, b = problem(**args)
    what = f"seed {seed}: {args['lead']} D={args['d']} V={args['v']} {np.dtype(args['dtype']).name} bias={args['bias']} {eng}"
    if args["lead"][-1] <= eng["shift"]:
        pytest.skip(f"{what}: no position left after the shift")
    half = np.dtype(args["dtype"]) != np.float32
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}.get(np.dtype(args["dtype"]),
                                                                                             torch.bfloat16)

    def leaf(x):
        if x is None:
            return None
        return torch.from_numpy(np.asarray(x, np.float32)).to(tdtype).requires_grad_(True)

    E, C, B = leaf(e), leaf(c), leaf(b)
    kw = dict(eng)
    if kw["weight"] is not None:
        kw["weight"] = torch.from_numpy(kw["weight"])
    loss = cs.linear_cross_entropy(E, C, torch.from_numpy(t), bias=B, **kw)
    upstream = torch.from_numpy(g) if isinstance(g, np.ndarray) else g
    (loss * upstream).sum().backward()
    r = materialized(e, c, t, bias=b, grad_output=g, **ref)
    n = int(np.prod(args["lead"]))
    exact = eng["mode"] == "exact"
    lb = dict(atol=1e-12, rtol=1e-11) if exact else dict(atol=1e-5, rtol=1e-5)
    assert_close(loss.detach().double().numpy(), r["loss"], **lb, what=f"{what}: loss")
    pairs = [("dE", E.grad, r["dE"]), ("dC", C.grad, r["dC"])] + ([("dBias", B.grad, r["dBias"])] if b is not None else [])
    for name, got, want in pairs:
        got = got.double().numpy()
        if half:
            filtered = not exact and eng["filter_eps"] is not None
            relative_norm(got, want, (2e-2 if eng["filter_correction"] else 0.35) if filtered else 4e-3,
                          f"{what}: {name}")
        else:
            # float32 gradients: the exact mode's rounded once to float32 (2^-24 a value)
            gb = dict(atol=1e-12, rtol=1e-7) if exact else dict(atol=1e-6 * max(1.0, n / 64), rtol=1e-4)
            assert_close(got, want, **gb, what=f"{what}: {name}")
