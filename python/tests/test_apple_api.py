"""apple/ml-cross-entropy's call works unchanged: its positional order, its impl names (as text
or as its LinearCrossEntropyImpl enum) and its accum_*_fp32 / filter_*_grad flags, each mapped
onto this engine's mode and filter, bit for bit; and the clear errors where they cannot be."""
from __future__ import annotations

import enum
import inspect

import numpy as np
import pytest

import cce_swift as cs
from conftest import BF16, problem

# apple/ml-cross-entropy's linear_cross_entropy, its parameters in order.
APPLE = ["e", "c", "targets", "bias", "ignore_index", "softcap", "reduction", "shift", "return_lse", "filter_eps",
         "accum_e_fp32", "accum_c_fp32", "filter_e_grad", "filter_c_grad", "impl", "vocab_parallel_options"]


class AppleImpl(enum.IntEnum):   # apple's own enum, as a caller importing it would pass it
    CCE = enum.auto()
    TORCH_COMPILE = enum.auto()
    CCE_KAHAN_FULL_C = enum.auto()
    CCE_KAHAN_FULL_E = enum.auto()
    CCE_EXACT = enum.auto()
    CCE_KAHAN_FULL_C_FULL_E = enum.auto()
    CCE_KAHAN_FULL = enum.auto()


def test_the_impl_enum_has_apples_members():
    assert [m.name for m in cs.LinearCrossEntropyImpl] == [m.name for m in AppleImpl]


def test_positional_parameters_are_apples():
    names = [p.name for p in inspect.signature(cs.linear_cross_entropy).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert names == APPLE


def call(**kw):
    dtype = BF16 if BF16 is not None else np.float32
    e, c, t, b = problem(n=70, d=24, v=517, seed=4, dtype=dtype, bias=True)
    return cs.linear_cross_entropy(e, c, t, b, return_grads=True, threads=1, **kw)


def same(a, b):
    (la, ga), (lb, gb) = a, b
    return np.array_equal(la, lb) and all(np.array_equal(x, y) for x, y in ((ga.e, gb.e), (ga.c, gb.c), (ga.bias, gb.bias)))


@pytest.mark.parametrize("apple,ours", [
    (dict(impl="cce"), dict(mode="default")),
    (dict(impl=AppleImpl.CCE), dict()),
    (dict(impl="cce_kahan_full_c"), dict(mode="kahan-full-c")),
    (dict(impl=AppleImpl.CCE_KAHAN_FULL_E), dict(mode="kahan-full-e")),
    (dict(impl="cce_kahan_full"), dict(mode="kahan", filter_eps=None)),
    (dict(impl=AppleImpl.CCE_KAHAN_FULL_C_FULL_E), dict(mode="kahan", filter_eps=None)),
    (dict(impl="cce_exact"), dict(mode="exact")),
    (dict(impl=cs.LinearCrossEntropyImpl.CCE_KAHAN_FULL_C), dict(mode="kahan-full-c")),
    (dict(accum_e_fp32=True), dict(mode="kahan")),
    (dict(accum_c_fp32=True, filter_eps=2.0 ** -10), dict(mode="kahan", filter_eps=2.0 ** -10)),
    (dict(filter_e_grad=False), dict(mode="kahan-full-e")),
    (dict(filter_c_grad=False, accum_e_fp32=True), dict(mode="kahan-full-c")),
    (dict(filter_e_grad=False, filter_c_grad=False), dict(filter_eps=None)),
    (dict(filter_e_grad=False, filter_c_grad=False, accum_c_fp32=True), dict(mode="kahan", filter_eps=None)),
])
def test_apple_options_give_the_modes_bits(apple, ours):
    assert same(call(**apple), call(**ours))


def test_the_flags_change_the_call():
    """The mapping is not a no-op: an unfiltered dE and Kahan sums differ from the default."""
    assert not same(call(filter_e_grad=False), call())
    assert not same(call(impl="cce_exact"), call())


def test_errors_name_the_problem():
    with pytest.raises(cs.CCEValueError, match="pass mode, or apple"):
        call(mode="kahan", impl="cce_kahan_full_c")
    with pytest.raises(cs.CCEValueError, match="pass mode, or apple"):
        call(mode="default", filter_e_grad=False)
    with pytest.raises(cs.CCEValueError, match="torch.compile path"):
        call(impl=AppleImpl.TORCH_COMPILE)
    with pytest.raises(cs.CCEValueError, match="impl must be one of"):
        call(impl="cce_fast")


def test_return_lse_in_apples_position():
    e, c, t, _ = problem(n=30, d=8, v=101, seed=2)
    loss, lse = cs.linear_cross_entropy(e, c, t, None, -100, None, "mean", 0, True)
    assert lse.shape == t.shape and np.isfinite(loss)


def test_torch_call_as_apple_writes_it():
    torch = pytest.importorskip("torch")
    e, c, t, _ = problem(n=30, d=8, v=101, seed=2)
    e, c, t = torch.from_numpy(e).requires_grad_(), torch.from_numpy(c).requires_grad_(), torch.from_numpy(t)
    loss, lse = cs.linear_cross_entropy(e, c, t, None, -100, None, "mean", 0, True, "auto", False, False, True, False,
                                        "cce")
    loss.backward()
    e2, c2 = e.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    cs.linear_cross_entropy(e2, c2, t, mode="kahan-full-c").backward()
    assert torch.equal(e.grad, e2.grad) and torch.equal(c.grad, c2.grad) and lse.shape == t.shape


def test_the_module_as_apple_writes_it():
    torch = pytest.importorskip("torch")
    e, c, t, b = problem(n=30, d=8, v=101, seed=2, bias=True)
    e, c, t, b = (torch.from_numpy(x) for x in (e, c, t, b))
    module = cs.LinearCrossEntropy(reduction="sum", shift=1, impl="cce_kahan_full_e", return_lse=True,
                                   label_smoothing=0.1)
    loss, lse = module(e.reshape(3, 10, 8), c, t.reshape(3, 10), b)
    want, want_lse = cs.linear_cross_entropy(e.reshape(3, 10, 8), c, t.reshape(3, 10), b, reduction="sum", shift=1,
                                             mode="kahan-full-e", return_lse=True, label_smoothing=0.1)
    assert torch.equal(loss, want) and torch.equal(lse, want_lse)
    with pytest.raises(cs.CCEValueError, match="impl must be one of"):
        cs.LinearCrossEntropy(impl="cce_fast")
    names = [p.name for p in inspect.signature(cs.LinearCrossEntropy.__init__).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD][1:]
    assert names == ["ignore_index", "softcap", "reduction", "shift", "filter_eps", "accum_e_fp32", "accum_c_fp32",
                     "filter_e_grad", "filter_c_grad", "impl", "return_lse"]   # apple's module, in order
