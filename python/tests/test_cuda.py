"""CUDA tensors through the CUDA library (cce_swift/_cuda.py). On a machine without a GPU only
the refusals and the checks of the per-class weight run; with torch.cuda and libcce_cuda.so
($CCE_CUDA_LIBRARY or cuda/libcce_cuda.so) the GPU results are checked, for every option and
dtype, against the Float64 reference (conftest.materialized: the full logits in float64 NumPy,
on the same rounded inputs) and against the CPU engine:

    CCE_CUDA_LIBRARY=cuda/libcce_cuda.so python -m pytest python/tests/test_cuda.py
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cce_swift as cs  # noqa: E402
from cce_swift import _cuda  # noqa: E402
from conftest import assert_close, materialized, weights  # noqa: E402


def small(device="cpu", dtype=torch.float32, bias=True, lead=(4, 16), v=1000, d=64):
    g = torch.Generator().manual_seed(0)
    e = torch.randn(*lead, d, generator=g)
    c = torch.randn(v, d, generator=g) / d**0.5
    t = torch.randint(0, v, lead, generator=g)
    t[..., 3] = -100
    b = torch.randn(v, generator=g) if bias else None
    to = (lambda x: None if x is None else x.to(device=device, dtype=dtype))
    return to(e), to(c), t.to(device), to(b)


@pytest.mark.parametrize("kw,match", [
    (dict(mode="exact"), "mode 'exact'"),
    (dict(filter_correction=False), "filter_correction=False"),
    (dict(check_finite=True), "check_finite"),
    (dict(saved_logits_per_row=0), "saved_logits_per_row"),
])
def test_what_the_cuda_library_lacks_is_refused(kw, match):
    e, c, t, b = small()
    base = dict(reduction="mean", shift=0, mode="default", return_lse=False)
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        _cuda.run(e, c, t, b, None, **base)


@pytest.mark.parametrize("weight,exc,match", [
    (np.r_[np.ones(999), -1.0], ValueError, r"classWeights must be >= 0 \(classWeights\[999\] = -1.0\)"),
    (np.r_[np.ones(5), np.nan, np.ones(994)], ValueError, r"non-finite value: classWeights\[5\]"),
    (np.r_[np.ones(3), np.inf, np.ones(996)], ValueError, r"non-finite value: classWeights\[3\]"),
    (np.ones(999), ValueError, r"weight must be \(V\) = \(1000,\), got \(999,\)"),
    (np.ones((1000, 1)), ValueError, r"weight must be \(V\)"),
    (np.ones(1000, complex), TypeError, "weight must be real"),
])
def test_bad_class_weights_are_refused_before_the_gpu(weight, exc, match):
    """The library cannot look at device values without synchronizing: the binding checks them, with
    the CPU engine's wording, before anything is launched (these run without a GPU)."""
    e, c, t, b = small()
    with pytest.raises(exc, match=match):
        _cuda.run(e, c, t, b, torch.as_tensor(weight), reduction="mean", shift=0, mode="default", return_lse=False)


def test_missing_cuda_library_is_a_runtime_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CCE_CUDA_LIBRARY", str(tmp_path / "none.so"))
    monkeypatch.setattr(_cuda, "_lib_cuda", None)
    monkeypatch.setattr(_cuda, "__file__", str(tmp_path / "pkg" / "cce_swift" / "_cuda.py"))
    with pytest.raises(RuntimeError, match="CUDA tensors need the CUDA library"):
        _cuda.library()


def gpu_ready():
    if not torch.cuda.is_available():
        return False
    try:
        _cuda.library()
        return True
    except RuntimeError:
        return False


gpu = pytest.mark.skipif(not gpu_ready(), reason="no CUDA device or no libcce_cuda.so")
DEV = "cuda"  # the tests below, called directly with DEV = "cpu", check themselves on the CPU engine


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum", softcap=20.0), dict(reduction="none", shift=1),
                                  dict(label_smoothing=0.1, z_loss=1e-4, shift=2)])
def test_gpu_agrees_with_the_cpu_engine(dtype, opts):
    e, c, t, b = small(dtype=dtype)
    outs = {}
    for device in ("cpu", "cuda"):
        # detach: on the CPU, .to("cpu") is e itself; without it e would become the leaf and the CUDA
        # copies non-leaves with no .grad
        E, C, B = (x.detach().to(device).requires_grad_(True) for x in (e, c, b))
        loss, lse = cs.linear_cross_entropy(E, C, t.to(device), bias=B, return_lse=True, **opts)
        up = torch.linspace(0.5, 1.5, loss.numel(), device=device).reshape(loss.shape)
        (loss * up).sum().backward()
        outs[device] = [x.detach().float().cpu().numpy() for x in (loss, lse, E.grad, C.grad, B.grad)]
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-3, rtol=2e-2)
    for name, a, b_ in zip(("loss", "lse", "dE", "dC", "dBias"), outs["cuda"], outs["cpu"]):
        assert_close(a, b_, **tol, what=f"{name} {dtype} {opts}")


# ---- every option and dtype against the Float64 reference ---------------------------------------

# Budgets on ||gpu - ref|| / ||ref|| (those of cce_swift.conformance).
BUDGETS = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 1e-2), torch.bfloat16: (1e-2, 1e-2)}

OPTIONS = {
    "plain": dict(),
    "bias": dict(bias=True),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none", bias=True),
    "softcap": dict(softcap=5.0),
    "z-loss": dict(z_loss=1e-2),
    "smoothing": dict(label_smoothing=0.1, bias=True),
    "smoothing+softcap": dict(label_smoothing=0.2, softcap=4.0),
    "softcap+zloss+none": dict(softcap=5.0, z_loss=1e-3, reduction="none", bias=True),
    "weight": dict(weight=True),
    "weight+bias+sum": dict(weight=True, bias=True, reduction="sum"),
    "weight+smoothing": dict(weight=True, label_smoothing=0.2, bias=True),
    "weight+smoothing+softcap+zloss+none": dict(weight=True, label_smoothing=0.1, softcap=5.0, z_loss=1e-3,
                                                reduction="none", bias=True),
    "weight+zloss+shift": dict(weight=True, z_loss=1e-3, shift=1),
    "ignore_index=7": dict(ignore_index=7),
    "shift=2 none": dict(shift=2, reduction="none"),
    "filter_eps=None": dict(filter_eps=None),
    "filter_eps=2^-20": dict(filter_eps=2.0**-20),
    "sort_vocab=False": dict(sort_vocab=False),
    "D=19 (padded)": dict(d=19, bias=True),
}


def gpu_problem(dtype, *, bias=False, weight=False, d=64, v=1531, lead=(3, 45), ignore_index=-100, seed=3):
    """Rounded to dtype, then the same values in float64 for the reference. v and N = 135 are not
    multiples of the 128-wide tiles; the last two dimensions make batches for shift."""
    rng = np.random.default_rng(seed)
    e = torch.from_numpy(rng.standard_normal(lead + (d,)).astype(np.float32)).to(dtype)
    c = torch.from_numpy((rng.standard_normal((v, d)) * 2 / math.sqrt(d)).astype(np.float32)).to(dtype)
    t = rng.integers(0, v, size=lead)
    t[rng.random(lead) < 0.1] = ignore_index
    t[0, 0] = 7  # the target 7 exists (ignore_index=7 case)
    b = torch.from_numpy(rng.standard_normal(v).astype(np.float32)).to(dtype) if bias else None
    w = weights(v) if weight else None
    return e, c, torch.from_numpy(t.astype(np.int64)), b, w


def rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    assert a.shape == ref.shape, (a.shape, ref.shape)
    assert np.all(np.isfinite(a)), "non-finite values"
    den = np.linalg.norm(ref)
    return np.linalg.norm(a - ref) / (den if den > 0 else 1.0)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_against_the_float64_reference(name, dtype):
    o = dict(OPTIONS[name])
    bias, weight, d = o.pop("bias", False), o.pop("weight", False), o.pop("d", 64)
    e, c, t, b, w = gpu_problem(dtype, bias=bias, weight=weight, d=d, ignore_index=o.get("ignore_index", -100))
    reduction, shift = o.get("reduction", "mean"), o.get("shift", 0)
    ref_opts = {k: o[k] for k in ("ignore_index", "softcap", "reduction", "shift", "label_smoothing", "z_loss")
                if k in o}
    up = None
    if reduction == "none":
        up = np.linspace(0.5, 1.5, t[..., shift:].numel()).reshape(t[..., shift:].shape)
    f64 = (lambda x: None if x is None else x.to(torch.float64).numpy())
    ref = materialized(f64(e), f64(c), t.numpy(), f64(b), w, grad_output=up, **ref_opts)

    E = e.to(DEV).requires_grad_(True)
    C = c.to(DEV).requires_grad_(True)
    B = None if b is None else b.to(DEV).requires_grad_(True)
    W = None if w is None else torch.from_numpy(w).to(DEV)
    loss, lse = cs.linear_cross_entropy(E, C, t.to(DEV), bias=B, weight=W, return_lse=True, **o)
    upt = torch.ones((), device=DEV) if up is None else torch.from_numpy(up).float().to(DEV)
    (loss.float() * upt).sum().backward()
    for x, like in ((E.grad, E), (C.grad, C)) + (() if B is None else ((B.grad, B),)):
        assert x is not None and x.dtype == like.dtype and x.shape == like.shape

    lb, gb = BUDGETS[dtype]
    got = {"loss": rel(loss.detach().double().cpu().numpy(), ref["loss"]),
           "lse": rel(lse.detach().double().cpu().numpy(), ref["lse"]),
           "dE": rel(E.grad.double().cpu().numpy(), ref["dE"]),
           "dC": rel(C.grad.double().cpu().numpy(), ref["dC"])}
    if B is not None:
        got["dBias"] = rel(B.grad.double().cpu().numpy(), ref["dBias"])
    budget = {k: (lb if k in ("loss", "lse") else gb) for k in got}
    over = {k: f"{got[k]:.2e} > {budget[k]:.0e}" for k in got if not got[k] <= budget[k]}
    print(f"{name} {dtype}: " + " ".join(f"{k} {x:.2e}" for k, x in got.items()))
    assert not over, f"{name} {dtype}: {over}"


@gpu
def test_weighted_mean_divides_by_the_target_weights():
    """Σ w_t loss_t / Σ w_t, as F.cross_entropy(weight=...) on the materialized logits."""
    e, c, t, b, w = gpu_problem(torch.float32, weight=True, bias=True)
    e, c, b, t = e.to(DEV), c.to(DEV), b.to(DEV), t.to(DEV)
    W = torch.from_numpy(w).to(DEV)
    loss = cs.linear_cross_entropy(e, c, t, bias=b, weight=W)
    z = (e.double().reshape(-1, e.shape[-1]) @ c.double().T) + b.double()
    want = torch.nn.functional.cross_entropy(z, t.reshape(-1), weight=W.double())
    assert abs(loss.item() - want.item()) <= 1e-5 * abs(want.item())
    # weights of ones give the unweighted loss
    ones = cs.linear_cross_entropy(e, c, t, bias=b, weight=torch.ones_like(W))
    plain = cs.linear_cross_entropy(e, c, t, bias=b)
    assert abs(ones.item() - plain.item()) <= 1e-6 * abs(plain.item())


@gpu
def test_zero_target_weights_give_nan_loss_and_zero_gradients():
    e, c, t, b, _ = gpu_problem(torch.float32, bias=True)
    W = torch.zeros(c.shape[0], device=DEV)
    E = e.to(DEV).requires_grad_(True)
    C = c.to(DEV).requires_grad_(True)
    loss = cs.linear_cross_entropy(E, C, t.to(DEV), weight=W)
    assert torch.isnan(loss)
    loss.backward()
    assert torch.count_nonzero(E.grad) == 0 and torch.count_nonzero(C.grad) == 0
    s = cs.linear_cross_entropy(e.to(DEV), c.to(DEV), t.to(DEV), weight=W, reduction="sum")
    assert s.item() == 0.0


@gpu
def test_gradient_subsets_and_no_grad():
    e, c, t, b, w = gpu_problem(torch.bfloat16, bias=True, weight=True)
    W = torch.from_numpy(w).to(DEV)
    full = {}
    E, C, B = (x.detach().clone().to(DEV).requires_grad_(True) for x in (e, c, b))
    cs.linear_cross_entropy(E, C, t.to(DEV), bias=B, weight=W).backward()
    full = {"E": E.grad, "C": C.grad, "B": B.grad}
    for want in ("E", "C", "B"):
        xs = {k: x.detach().clone().to(DEV).requires_grad_(k == want) for k, x in zip("ECB", (e, c, b))}
        cs.linear_cross_entropy(xs["E"], xs["C"], t.to(DEV), bias=xs["B"], weight=W).backward()
        for k, x in xs.items():
            if k == want:  # other passes and sums in another order (dbias: atomics): equal to rounding
                err = (x.grad.float() - full[k].float()).norm() / full[k].float().norm()
                assert err <= 1e-2, (k, float(err))
            else:
                assert x.grad is None
    with torch.no_grad():
        x = cs.linear_cross_entropy(E, C, t.to(DEV), bias=B, weight=W)
    assert not x.requires_grad


COMPILE_CASES = [
    dict(reduction="mean"),
    dict(reduction="sum", label_smoothing=0.1, return_lse=True, bias=True),
    dict(reduction="none", shift=1, upstream=True),
    dict(reduction="mean", weight=True, softcap=20.0, z_loss=1e-4),
]


def _compiled_and_eager(dtype, case, backend):
    """The loss, lse and gradients of one call, eager and under torch.compile(fullgraph=True): a graph
    break inside the loss fails the compiled call."""
    case = dict(case)
    use_bias, use_weight, up = case.pop("bias", False), case.pop("weight", False), case.pop("upstream", False)
    e, c, t, b, w = gpu_problem(dtype, bias=use_bias, weight=use_weight)
    W = None if w is None else torch.from_numpy(w).to(DEV)

    def f(E, C, T, B):
        return cs.linear_cross_entropy(E, C, T, bias=B, weight=W, **case)

    torch._dynamo.reset()
    results = []
    for fn in (f, torch.compile(f, backend=backend, fullgraph=True)):
        ps = [None if x is None else x.detach().clone().to(DEV).requires_grad_(True) for x in (e, c, b)]
        out = fn(ps[0], ps[1], t.to(DEV), ps[2])
        loss, lse = out if isinstance(out, tuple) else (out, None)
        weights_up = torch.linspace(0.5, 1.5, loss.numel(), device=DEV).reshape(loss.shape) if up else 1.0
        (weights_up * loss).sum().backward()
        results.append([loss.detach(), lse] + [None if p is None else p.grad for p in ps])
    return results


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", COMPILE_CASES)
def test_cuda_inside_torch_compile(dtype, case):
    """CUDA tensors inside torch.compile go through the registered operators cce_swift::cuda_loss and
    cuda_grads (cce_swift/_compile.py): no graph break (fullgraph=True), and the eager call's values
    bit for bit: the library adds every sum in a fixed order (no floating-point atomics), so the
    same operator calls on the same inputs give the same bits."""
    eager, compiled = _compiled_and_eager(dtype, case, "aot_eager")
    for name, x, y in zip(("loss", "lse", "dE", "dC", "dB"), eager, compiled):
        assert (x is None) == (y is None), name
        if x is None:
            continue
        assert x.shape == y.shape and x.dtype == y.dtype, (name, x.shape, y.shape, x.dtype, y.dtype)
        if not torch.equal(x, y):
            err = float((x.double() - y.double()).norm() / max(float(x.double().norm()), 1e-30))
            raise AssertionError(f"{name} differs from the eager call's (relative {err:.1e})")


@gpu
def test_cuda_inside_torch_compile_default_backend():
    """The same through inductor, which compiles the code around the operators."""
    eager, compiled = _compiled_and_eager(torch.bfloat16, dict(reduction="mean", bias=True), "inductor")
    for x, y in zip(eager, compiled):
        if x is not None:
            err = float((x.double() - y.double()).norm() / max(float(x.double().norm()), 1e-30))
            assert err <= 1e-2, err
