"""The PyTorch path inside torch.compile (cce_swift/_compile.py): a compiled function that calls
the loss traces it as the registered operators, with fullgraph=True and no graph break, and
gives the eager call's loss, lse and gradients bit for bit, for every reduction, with shift,
bias, class weights, label smoothing, return_lse, bf16 inputs and an upstream gradient other
than 1. The aot_eager backend runs Dynamo, the operators' fake tensors and AOTAutograd's
backward without generating C++; one test runs the default backend (inductor). Skipped
without torch >= 2.4."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import cce_swift as cs  # noqa: E402
from cce_swift import _compile, _lib  # noqa: E402

if not _compile.AVAILABLE:
    pytest.skip(f"torch {torch.__version__} has no torch.library.custom_op (needs >= 2.4)", allow_module_level=True)

from test_torch import tensors  # noqa: E402


def run(fn, e, c, t, b, upstream=1.0, **kw):
    """Loss (and lse), and the gradients of upstream · loss.sum() for e, c and b."""
    ps = [x.detach().clone().requires_grad_(True) if x is not None else None for x in (e, c, b)]
    out = fn(ps[0], ps[1], t, ps[2], **kw)
    loss, lse = out if isinstance(out, tuple) else (out, None)
    (upstream * loss.sum()).backward()
    return loss.detach(), lse, [None if p is None else p.grad for p in ps]


def compiled(backend="aot_eager"):
    torch._dynamo.reset()

    def f(e, c, t, b, **kw):
        return cs.linear_cross_entropy(e, c, t, bias=b, **kw)

    return torch.compile(f, backend=backend, fullgraph=True)


def eager(e, c, t, b, **kw):
    return cs.linear_cross_entropy(e, c, t, bias=b, **kw)


def assert_same(a, b):
    la, lsa, ga = a
    lb, lsb, gb = b
    assert torch.equal(la, lb), (la, lb)
    assert (lsa is None) == (lsb is None) and (lsa is None or torch.equal(lsa, lsb))
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), (x - y).abs().max()


CASES = [
    dict(reduction="mean"),
    dict(reduction="sum", label_smoothing=0.1, return_lse=True),
    dict(reduction="none", shift=1),
    dict(reduction="none", return_lse=True, filter_eps=None),
    dict(reduction="mean", mode="exact"),
    dict(reduction="mean", softcap=20.0, z_loss=1e-3, threads=2, filter_eps=2**-10),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_is_eager_bit_for_bit(kw, dtype):
    lead = (3, 13) if kw.get("shift") else None
    e, c, t, b = tensors(dtype=dtype, lead=lead)
    torch._dynamo.utils.counters.clear()
    got = run(compiled(), e, c, t, b, upstream=3.0, **kw)
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert_same(got, run(eager, e, c, t, b, upstream=3.0, **kw))


def test_weight_no_bias_and_part_of_the_gradients():
    e, c, t, _ = tensors(bias=False)
    w = torch.rand(c.shape[0]) + 0.5
    ps = [e.clone().requires_grad_(True), c.clone()]   # no gradient for c

    def loss(f):
        ps[0].grad = None
        out = f(ps[0], ps[1], t, None, weight=w)
        out.backward()
        return out.detach(), ps[0].grad.clone()

    (la, ga), (lb, gb) = loss(compiled()), loss(eager)
    assert torch.equal(la, lb) and torch.equal(ga, gb)


def test_no_grad_and_a_model_around_the_loss():
    """Under no_grad the operator computes no gradients; with a layer before it, the layer's
    gradient flows through the operator's backward as in eager mode."""
    e, c, t, b = tensors()
    with torch.no_grad():
        assert torch.equal(compiled()(e, c, t, b), eager(e, c, t, b))
    torch.manual_seed(0)
    lin = torch.nn.Linear(e.shape[-1], e.shape[-1])

    def f(e, c, t, b):
        return cs.linear_cross_entropy(torch.tanh(lin(e)), c, t, bias=b)

    grads = []
    for fn in (torch.compile(f, backend="aot_eager", fullgraph=True), f):
        lin.zero_grad()
        fn(e, c, t, b).backward()
        grads.append(lin.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def engine_error(fn, *args, **kw):
    """The message of the CCEValueError that fn raised: itself (the engine's check, when the
    operator runs) or named in Dynamo's TorchRuntimeError (a check of the fake tensors)."""
    with pytest.raises(Exception) as info:
        fn(*args, **kw)
    ex = info.value
    if isinstance(ex, _lib.CCEValueError):
        return str(ex)
    assert "got CCEValueError(" in str(ex), f"no CCEValueError in {ex!r}"
    return str(ex)


def test_bad_input_raises_the_engines_error():
    e, c, t, b = tensors()
    assert "reduction must be" in engine_error(compiled(), e, c, t, b, reduction="average")
    assert "invalid shape" in engine_error(compiled(), e, c[:, :-1], t, b)
    assert "filter" in engine_error(compiled(), e, c, t, b, filter_eps=-1.0)     # checked by the engine


def test_default_backend():
    """The default backend (inductor, which compiles C++ for the CPU) around the operators."""
    e, c, t, b = tensors()
    try:
        got = run(compiled("inductor"), e, c, t, b, reduction="sum")
    except Exception as ex:  # no C++ compiler that inductor can use
        if "InductorError" in type(ex).__name__ or "CppCompileError" in str(ex):
            pytest.skip(f"inductor cannot compile here: {str(ex).splitlines()[0][:200]}")
        raise
    assert_same(got, run(eager, e, c, t, b, reduction="sum"))
