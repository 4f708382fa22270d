"""CUDA tensors through the CUDA library (cce_swift/_cuda.py). On a machine without a GPU only
the refusals run; with torch.cuda and libcce_cuda.so ($CCE_CUDA_LIBRARY or cuda/libcce_cuda.so)
the GPU results are checked against the CPU engine on the same values:

    CCE_CUDA_LIBRARY=cuda/libcce_cuda.so python -m pytest python/tests/test_cuda.py
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import cce_swift as cs  # noqa: E402
from cce_swift import _cuda  # noqa: E402
from conftest import assert_close  # noqa: E402


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
    (dict(weight=torch.ones(1000)), "per-class weight"),
    (dict(mode="exact"), "mode 'exact'"),
    (dict(filter_correction=False), "filter_correction=False"),
    (dict(check_finite=True), "check_finite"),
])
def test_what_the_cuda_library_lacks_is_refused(kw, match):
    e, c, t, b = small()
    weight = kw.pop("weight", None)
    base = dict(reduction="mean", shift=0, mode="default", return_lse=False)
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        _cuda.run(e, c, t, b, weight, **base)


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


@pytest.mark.skipif(not gpu_ready(), reason="no CUDA device or no libcce_cuda.so")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("opts", [dict(), dict(reduction="sum", softcap=20.0), dict(reduction="none", shift=1),
                                  dict(label_smoothing=0.1, z_loss=1e-4, shift=2)])
def test_gpu_agrees_with_the_cpu_engine(dtype, opts):
    e, c, t, b = small(dtype=dtype)
    outs = {}
    for device in ("cpu", "cuda"):
        E, C, B = (x.to(device).requires_grad_(True) for x in (e, c, b))
        loss, lse = cs.linear_cross_entropy(E, C, t.to(device), bias=B, return_lse=True, **opts)
        up = torch.linspace(0.5, 1.5, loss.numel(), device=device).reshape(loss.shape)
        (loss * up).sum().backward()
        outs[device] = [x.detach().float().cpu().numpy() for x in (loss, lse, E.grad, C.grad, B.grad)]
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-3, rtol=2e-2)
    for name, a, b_ in zip(("loss", "lse", "dE", "dC", "dBias"), outs["cuda"], outs["cpu"]):
        assert_close(a, b_, **tol, what=f"{name} {dtype} {opts}")
