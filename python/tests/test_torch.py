"""The PyTorch path: gradients against torch autograd on the materialized logits (Float64),
no_grad, requires_grad subsets, the dtype of the returned gradients, no copy of contiguous
inputs, and errors. Skipped when torch is not installed (scripts/test_python.sh --torch)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import cce_swift as cs  # noqa: E402
from cce_swift import _lib  # noqa: E402
from conftest import assert_close, weights  # noqa: E402

GRAD = dict(atol=1e-6, rtol=1e-4)


def tensors(n=37, d=19, v=301, dtype=torch.float32, bias=True, lead=None, seed=0, ignore=0.1):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(lead) if lead else (n,)
    e = torch.randn(shape + (d,), generator=g).to(dtype)
    c = (torch.randn(v, d, generator=g) * 2 / d**0.5).to(dtype)
    t = torch.randint(0, v, shape, generator=g)
    t[torch.rand(shape, generator=g) < ignore] = -100
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    return e, c, t, b


def torch_reference(e, c, t, b=None, weight=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
                    label_smoothing=0.0, z_loss=0.0):
    """The loss from materialized Float64 logits with F.cross_entropy (apple's shift slicing),
    the z-loss added per token weighted by w_t (normalized like the mean)."""
    e, c = e.double(), c.double()
    if shift:
        e = e[..., :-shift, :]
        t = t[..., shift:]
    z = e.reshape(-1, e.shape[-1]) @ c.T
    if b is not None:
        z = z + b.double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    tf = t.reshape(-1)
    w = None if weight is None else torch.as_tensor(weight, dtype=torch.float64)
    loss = F.cross_entropy(z, tf, weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction="none")
    active = tf != ignore_index
    wt = torch.where(active, (w if w is not None else torch.ones(c.shape[0], dtype=torch.float64))[tf.clamp(min=0)], 0.0)
    lse = torch.logsumexp(z, dim=1)
    loss = loss + z_loss * wt * lse**2
    if reduction == "none":
        return loss.reshape(t.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / wt.sum()


def grads_of(loss_fn, *params):
    params = [p.detach().clone().requires_grad_(True) if p is not None else None for p in params]
    loss = loss_fn(*params)
    return loss, params


@pytest.mark.parametrize("softcap,smoothing,zloss,reduction,weighted",
                         list(itertools.product([None, 3.0], [0.0, 0.1], [0.0, 1e-3], ["mean", "sum", "none"], [False, True])))
def test_against_torch_autograd(softcap, smoothing, zloss, reduction, weighted):
    e, c, t, b = tensors(seed=1)
    w = torch.tensor(weights(301)) if weighted else None
    kw = dict(softcap=softcap, label_smoothing=smoothing, z_loss=zloss, reduction=reduction, weight=w)
    E, C, B = (x.clone().requires_grad_(True) for x in (e, c, b))
    loss = cs.linear_cross_entropy(E, C, t, bias=B, **kw)
    Er, Cr, Br = (x.double().requires_grad_(True) for x in (e, c, b))
    ref = torch_reference(Er, Cr, t, Br, **kw)
    up = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape) if reduction == "none" else torch.tensor(0.7)
    (loss * up).sum().backward()
    (ref * up.double()).sum().backward()
    assert loss.dtype == torch.float32 and loss.shape == ref.shape
    assert_close(loss.detach().numpy(), ref.detach().numpy(), atol=1e-5, rtol=1e-5, what="loss")
    for name, got, want in (("dE", E.grad, Er.grad), ("dC", C.grad, Cr.grad), ("dBias", B.grad, Br.grad)):
        assert got.dtype == torch.float32
        assert_close(got.numpy(), want.numpy(), **GRAD, what=name)


@pytest.mark.parametrize("shift", [1, 2])
def test_shift_ignore_and_none(shift):
    e, c, t, b = tensors(lead=(3, 8), seed=2)
    E, C = e.clone().requires_grad_(True), c.clone().requires_grad_(True)
    loss, lse = cs.linear_cross_entropy(E, C, t, shift=shift, reduction="none", return_lse=True)
    assert loss.shape == (3, 8 - shift) and lse.shape == (3, 8 - shift)
    assert not lse.requires_grad
    Er, Cr = e.double().requires_grad_(True), c.double().requires_grad_(True)
    ref = torch_reference(Er, Cr, t, shift=shift, reduction="none")
    up = torch.rand(loss.shape)
    (loss * up).sum().backward()
    (ref * up.double()).sum().backward()
    assert_close(loss.detach().numpy(), ref.detach().numpy(), atol=1e-5, rtol=1e-5, what="loss")
    assert_close(E.grad.numpy(), Er.grad.numpy(), **GRAD, what="dE")
    assert_close(C.grad.numpy(), Cr.grad.numpy(), **GRAD, what="dC")
    z = e.double()[..., :-shift, :] @ c.double().T
    want = torch.where(t[..., shift:] != -100, torch.logsumexp(z, -1), 0.0)
    assert_close(lse.numpy(), want.numpy(), atol=1e-5, rtol=1e-5, what="lse (0 where ignored)")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_against_float64_on_the_same_values(dtype):
    e, c, t, b = tensors(dtype=dtype, seed=3)
    E, C, B = (x.clone().requires_grad_(True) for x in (e, c, b))
    cs.linear_cross_entropy(E, C, t, bias=B, filter_eps=None, label_smoothing=0.1).backward()
    Er, Cr, Br = (x.double().requires_grad_(True) for x in (e, c, b))
    torch_reference(Er, Cr, t, Br, label_smoothing=0.1).backward()
    rel = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11   # rounding to the storage type on the way out
    for name, got, want in (("dE", E.grad, Er.grad), ("dC", C.grad, Cr.grad), ("dBias", B.grad, Br.grad)):
        assert got.dtype == dtype, name
        assert_close(got.double().numpy(), want.numpy(), atol=1e-6, rtol=rel, what=name)


def test_against_the_float64_reference():
    e, c, t, b = tensors(seed=4)
    w = weights(301)
    E, C, B = (x.clone().requires_grad_(True) for x in (e, c, b))
    cs.linear_cross_entropy(E, C, t, bias=B, weight=torch.tensor(w), softcap=5.0, z_loss=1e-3).backward()
    r = cs.reference(e, c, t, b, weight=w, softcap=5.0, z_loss=1e-3)
    assert_close(E.grad.numpy(), r["dE"], **GRAD, what="dE")
    assert_close(C.grad.numpy(), r["dC"], **GRAD, what="dC")
    assert_close(B.grad.numpy(), r["dBias"], **GRAD, what="dBias")
    exact = cs.linear_cross_entropy(e, c, t, bias=b, weight=torch.tensor(w), softcap=5.0, z_loss=1e-3, mode="exact")
    assert exact.dtype == torch.float64
    assert float(exact) == pytest.approx(float(r["loss"]), rel=1e-14)


def test_no_grad_and_no_requires_grad():
    e, c, t, b = tensors(seed=5)
    E = e.clone().requires_grad_(True)
    with torch.no_grad():
        loss = cs.linear_cross_entropy(E, c, t, bias=b)
    assert loss.grad_fn is None and not loss.requires_grad
    plain = cs.linear_cross_entropy(e, c, t, bias=b)
    assert plain.grad_fn is None
    assert float(loss) == float(plain)
    calls = []
    real = _lib.loss_and_gradients
    _lib.loss_and_gradients = lambda *a: calls.append(a) or real(*a)
    try:
        with torch.no_grad():
            cs.linear_cross_entropy(E, c, t, bias=b)
    finally:
        _lib.loss_and_gradients = real
    assert not calls, "no gradient is computed under no_grad"


@pytest.mark.parametrize("which", ["e", "c", "bias", "e+bias", "c+bias", "e+c"])
def test_requires_grad_subsets(which, monkeypatch):
    e, c, t, b = tensors(seed=6)
    E, C, B = e.clone(), c.clone(), b.clone()
    for name, x in (("e", E), ("c", C), ("bias", B)):
        if name in which.split("+"):
            x.requires_grad_(True)
    seen = {}
    real = _lib.loss_and_gradients

    def spy(*a):
        seen["dE"], seen["dC"], seen["dB"] = a[15], a[16], a[17]
        return real(*a)

    monkeypatch.setattr(_lib, "loss_and_gradients", spy)
    cs.linear_cross_entropy(E, C, t, bias=B).backward()
    Er, Cr, Br = (x.double().requires_grad_(True) for x in (e, c, b))
    torch_reference(Er, Cr, t, Br).backward()
    for name, x, ref, key in (("e", E, Er, "dE"), ("c", C, Cr, "dC"), ("bias", B, Br, "dB")):
        if name in which.split("+"):
            assert_close(x.grad.numpy(), ref.grad.numpy(), **GRAD, what=name)
            assert seen[key] is not None
        else:
            assert x.grad is None
            assert seen[key] is None, f"{key} is not asked of the engine"


def test_gradient_dtypes_follow_each_parameter():
    e, c, t, b = tensors(seed=7)
    E = e.clone().requires_grad_(True)
    C = c.to(torch.bfloat16).requires_grad_(True)
    B = b.to(torch.float16).requires_grad_(True)
    cs.linear_cross_entropy(E, C, t, bias=B).backward()
    assert (E.grad.dtype, C.grad.dtype, B.grad.dtype) == (torch.float32, torch.bfloat16, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_contiguous_inputs_are_not_copied_and_gradients_land_in_place(dtype, reduction, monkeypatch):
    """The engine is handed e's, c's and bias's own memory, and the gradient tensors it writes
    are the ones autograd stores as .grad."""
    e, c, t, b = tensors(dtype=dtype, seed=8)
    E, C, B = (x.clone().requires_grad_(True) for x in (e, c, b))
    seen = {}
    fwd, fused, bwd = _lib.forward, _lib.loss_and_gradients, _lib.backward

    def spy_fused(*a):
        seen.update(E=a[0].value, C=a[1].value, B=a[2].value, dE=a[15].value, dC=a[16].value, dB=a[17].value)
        return fused(*a)

    def spy_forward(*a):
        seen.update(E=a[0].value, C=a[1].value, B=a[2].value)
        return fwd(*a)

    def spy_backward(*a):
        seen.update(bE=a[1].value, bC=a[2].value, dE=a[5].value, dC=a[6].value, dB=a[7].value)
        return bwd(*a)

    monkeypatch.setattr(_lib, "loss_and_gradients", spy_fused)
    monkeypatch.setattr(_lib, "forward", spy_forward)
    monkeypatch.setattr(_lib, "backward", spy_backward)
    loss = cs.linear_cross_entropy(E, C, t, bias=B, reduction=reduction)
    assert (seen["E"], seen["C"], seen["B"]) == (E.data_ptr(), C.data_ptr(), B.data_ptr())
    loss.sum().backward()
    if reduction == "none":
        assert (seen["bE"], seen["bC"]) == (E.data_ptr(), C.data_ptr())
    assert (seen["dE"], seen["dC"], seen["dB"]) == (E.grad.data_ptr(), C.grad.data_ptr(), B.grad.data_ptr())


def test_non_contiguous_inputs_are_copied_or_refused():
    e, c, t, _ = tensors(seed=9, bias=False)
    ct = c.T.contiguous().T  # same values, column-major
    assert not ct.is_contiguous()
    C = ct.detach().requires_grad_(True)
    loss = cs.linear_cross_entropy(e, C, t)
    loss.backward()
    assert C.grad.shape == c.shape
    assert loss.item() == cs.linear_cross_entropy(e, c, t).item()
    with pytest.raises(ValueError, match="not contiguous and allow_copy is False"):
        cs.linear_cross_entropy(e, ct, t, allow_copy=False)


def test_upstream_gradient_scales_the_fused_gradients():
    e, c, t, _ = tensors(seed=10, bias=False)
    E1, E2 = e.clone().requires_grad_(True), e.clone().requires_grad_(True)
    cs.linear_cross_entropy(E1, c, t).backward()
    (3 * cs.linear_cross_entropy(E2, c, t)).backward()
    assert torch.allclose(E2.grad, 3 * E1.grad, rtol=1e-6, atol=0)


def test_errors():
    e, c, t, b = tensors(n=6, d=4, v=9, seed=11, ignore=0)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        cs.linear_cross_entropy(e.double(), c, t)
    with pytest.raises(TypeError, match="targets must be integers"):
        cs.linear_cross_entropy(e, c, t.float())
    with pytest.raises(TypeError, match="loss.backward"):
        cs.linear_cross_entropy(e, c, t, return_grads=True)
    t2 = t.clone(); t2[3] = 9
    with pytest.raises(ValueError, match=r"target out of range: targets\[3\] = 9"):
        cs.linear_cross_entropy(e.requires_grad_(True), c, t2)
    with pytest.raises(ValueError, match="invalid shape"):
        cs.linear_cross_entropy(e, c[:, :3], t)
    with pytest.raises(ValueError, match="labelSmoothing"):
        cs.linear_cross_entropy(e, c, t, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"classWeights\[2\]"):
        cs.linear_cross_entropy(e, c, t, weight=torch.tensor([1, 1, float("nan"), 1, 1, 1, 1, 1, 1]))
    E = e.detach().clone().requires_grad_(True)
    loss = cs.linear_cross_entropy(E, c, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_weight_matches_torch_exactly_in_float64_terms():
    """weight with label smoothing and ignore_index: PyTorch's weighted mean, to 1e-12 in exact mode."""
    e, c, t, b = tensors(seed=12)
    w = torch.tensor(weights(301), dtype=torch.float32)
    got = cs.linear_cross_entropy(e, c, t, bias=b, weight=w, label_smoothing=0.3, mode="exact")
    z = e.double() @ c.double().T + b.double()
    want = F.cross_entropy(z, t, weight=w.double(), label_smoothing=0.3)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    got = cs.linear_cross_entropy(e, c, t, bias=b, weight=w, label_smoothing=0.3, mode="exact", reduction="none")
    want = F.cross_entropy(z, t, weight=w.double(), label_smoothing=0.3, reduction="none")
    assert_close(got.numpy(), want.numpy(), atol=1e-12, rtol=1e-12, what="per-token")


def test_bf16_gradients_repeatable_with_kept_scratch():
    """bf16 gradients go through the library's kept Float32 scratch: the same bits on a first
    call, on a call that reuses the scratch, after a larger call and after release_scratch;
    the inputs (read in place by the engine) are unchanged."""
    e0, c0, t, b0 = tensors(n=41, d=23, v=517, dtype=torch.bfloat16, seed=3)
    before = (e0.clone(), c0.clone(), b0.clone())

    def grads():
        e, c, b = (x.clone().requires_grad_(True) for x in (e0, c0, b0))
        loss = cs.linear_cross_entropy(e, c, t, b, z_loss=1e-3)
        loss.backward()
        return loss.detach(), e.grad, c.grad, b.grad

    cs.release_scratch()
    first = grads()
    assert all(g.dtype == torch.bfloat16 for g in first[1:])
    again = grads()
    assert cs.release_scratch() > 0
    big_e, big_c, big_t, _ = tensors(n=50, d=23, v=900, dtype=torch.bfloat16, seed=4, bias=False)
    big_e.requires_grad_(True)
    cs.linear_cross_entropy(big_e, big_c, big_t).backward()
    after_big = grads()
    cs.release_scratch()
    after_release = grads()
    for other in (again, after_big, after_release):
        for x, y in zip(first, other):
            assert torch.equal(x.view(torch.int16) if x.dtype == torch.bfloat16 else x,
                               y.view(torch.int16) if y.dtype == torch.bfloat16 else y)
    for x, y in zip(before, (e0, c0, b0)):
        assert torch.equal(x.view(torch.int16), y.view(torch.int16))
    # And they are the float32 gradients (written in place: the NumPy path's) rounded once.
    import ml_dtypes

    def np_bf16(x):
        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)

    _, g = cs.linear_cross_entropy(np_bf16(e0), np_bf16(c0), t.numpy(), np_bf16(b0), z_loss=1e-3, return_grads=True)
    for ours, f32 in zip(first[1:], (g.e, g.c, g.bias)):
        assert f32.dtype == np.float32
        assert torch.equal(ours.view(torch.int16), torch.from_numpy(f32).to(torch.bfloat16).view(torch.int16))


def test_dtensor_inputs_are_refused_by_name(tmp_path):
    """A DTensor (here replicated over a one-rank gloo mesh, in a process of its own) is refused
    with a message naming the argument, not read through its data pointer."""
    import subprocess
    import sys

    code = ("import tempfile, torch, torch.distributed as dist\n"
            "dist.init_process_group('gloo', init_method='file://' + tempfile.mktemp(), rank=0, world_size=1)\n"
            "from torch.distributed.tensor import distribute_tensor, Replicate\n"
            "from torch.distributed.device_mesh import init_device_mesh\n"
            "import cce_swift as cs\n"
            "mesh = init_device_mesh('cpu', (1,))\n"
            "e, c, t = torch.randn(8, 4), torch.randn(10, 4), torch.randint(0, 10, (8,))\n"
            "try:\n    cs.linear_cross_entropy(e, distribute_tensor(c, mesh, [Replicate()]), t)\n"
            "except cs.CCEValueError as err:\n    print('refused:', err)\n"
            "dist.destroy_process_group()\n")
    try:
        import torch.distributed.tensor  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no torch.distributed.tensor")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "refused: c is a torch.distributed.tensor.DTensor" in out.stdout, out.stdout + out.stderr
