"""Inside torch.autocast the loss takes e, c and bias as the region's matrix products would:
cast to its dtype (bfloat16 on the CPU by default, float16 where asked), so a model with
float32 weights trained under autocast gets the engine's 16-bit path, bit for bit the call on
cast inputs, with gradients back in the inputs' own dtypes; float64 inputs and calls outside
a region are left alone; the same under torch.compile and with the module."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import cce_swift as cs  # noqa: E402
from cce_swift import _compile  # noqa: E402


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(96, 40, generator=g, dtype=dtype)
    c = torch.randn(1501, 40, generator=g, dtype=dtype) * 0.4
    b = torch.randn(1501, generator=g, dtype=dtype) * 0.1
    t = torch.randint(0, 1501, (96,), generator=g)
    t[::9] = -100
    return e, c, b, t


def grads(fn, e, c, b, t, **kw):
    ps = [x.detach().clone().requires_grad_(True) for x in (e, c, b)]
    loss = fn(ps[0], ps[1], t, ps[2], **kw)
    loss.backward()
    return loss.detach(), [p.grad for p in ps]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_casts_to_its_dtype(dtype):
    e, c, b, t = inputs()
    with torch.autocast("cpu", dtype=dtype):
        loss, g = grads(cs.linear_cross_entropy, e, c, b, t, label_smoothing=0.05)
    want, g16 = grads(cs.linear_cross_entropy, e.to(dtype), c.to(dtype), b.to(dtype), t, label_smoothing=0.05)
    assert torch.equal(loss, want)
    for got, w in zip(g, g16):
        assert got.dtype == torch.float32 and torch.equal(got, w.float())
    # Not the float32 call: that one filters at 2^-28 and multiplies in float32.
    plain, _ = grads(cs.linear_cross_entropy, e, c, b, t, label_smoothing=0.05)
    assert not torch.equal(loss, plain)


def test_float64_and_no_region_are_left_alone():
    # autocast leaves float64 alone, and the engine takes no float64 tensors: the same error
    # inside a region as outside, not a silent cast.
    e, c, b, t = inputs(torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="float64"):
        cs.linear_cross_entropy(e, c, t, b)
    e, c, b, t = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        off, g_off = grads(cs.linear_cross_entropy, e, c, b, t)
    plain, g_plain = grads(cs.linear_cross_entropy, e, c, b, t)
    assert torch.equal(off, plain) and g_off[0].dtype == torch.float32


def test_module_and_compile_under_autocast():
    e, c, b, t = inputs()
    module = cs.LinearCrossEntropy(reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, ge = grads(lambda e, c, t, b: module(e, c, t, b), e, c, b, t)
    want, gw = grads(cs.linear_cross_entropy, e.bfloat16(), c.bfloat16(), b.bfloat16(), t, reduction="sum")
    assert torch.equal(eager, want) and torch.equal(ge[1], gw[1].float())
    if not _compile.AVAILABLE:
        pytest.skip("torch.compile's operators need torch >= 2.4")
    compiled = torch.compile(lambda e, c, t, b: cs.linear_cross_entropy(e, c, t, b, reduction="sum"),
                             backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, gc = grads(compiled, e, c, b, t)
    assert torch.equal(got, want) and all(torch.equal(x, y.float()) for x, y in zip(gc, gw))
