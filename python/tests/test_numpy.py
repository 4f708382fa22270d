"""The NumPy path against an independent Float64 materialized reference (conftest.materialized)
and the engine's own Float64 exact mode (cce_swift.reference); dtypes, shapes, errors.

Budgets as the Swift OracleAgreementTests: float32 storage, default mode: loss 1e-5 + 1e-5·max,
gradients 1e-6 + 1e-4·max; exact mode 1e-12. Half-precision inputs are compared with the
reference on the same (rounded) values, so the same budgets hold.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import cce_swift as cs
from conftest import BF16, assert_close, materialized, problem, weights

LOSS = dict(atol=1e-5, rtol=1e-5)
GRAD = dict(atol=1e-6, rtol=1e-4)


def check(e, c, t, b=None, grad_output=None, exact=False, **kw):
    loss, lse, g = cs.linear_cross_entropy(e, c, t, bias=b, return_lse=True, return_grads=True,
                                           grad_output=grad_output, mode="exact" if exact else "default", **kw)
    r = materialized(e, c, t, bias=b, grad_output=grad_output, **{k: v for k, v in kw.items() if k != "filter_eps"})
    lb, gb = (dict(atol=1e-12, rtol=1e-11), dict(atol=1e-12, rtol=1e-10)) if exact else (LOSS, GRAD)
    name = str(kw)
    assert_close(loss, r["loss"], **lb, what=f"{name} loss")
    assert_close(lse, r["lse"], **lb, what=f"{name} lse")
    assert_close(g.e, r["dE"], **gb, what=f"{name} dE")
    assert_close(g.c, r["dC"], **gb, what=f"{name} dC")
    if b is not None:
        assert_close(g.bias, r["dBias"], **gb, what=f"{name} dBias")
    else:
        assert g.bias is None
    return loss, lse, g


@pytest.mark.parametrize("softcap,smoothing,zloss,reduction,weighted",
                         list(itertools.product([None, 3.0], [0.0, 0.1], [0.0, 1e-3], ["mean", "sum", "none"], [False, True])))
def test_every_option_against_float64(softcap, smoothing, zloss, reduction, weighted):
    e, c, t, b = problem(bias=True, seed=3)
    g = np.linspace(0.5, 1.5, t.size).reshape(t.shape).astype(np.float32) if reduction == "none" else 0.7
    check(e, c, t, b, grad_output=g, softcap=softcap, label_smoothing=smoothing, z_loss=zloss, reduction=reduction,
          weight=weights(301) if weighted else None)


@pytest.mark.parametrize("shift", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_shift_over_sequences(shift, reduction):
    e, c, t, b = problem(lead=(4, 9), seed=4, bias=True)
    loss, lse, g = check(e, c, t, b, shift=shift, reduction=reduction, label_smoothing=0.1, weight=weights(301))
    if reduction == "none":
        assert loss.shape == (4, 9 - shift)
    assert lse.shape == (4, 9 - shift)
    assert np.all(g.e[:, 9 - shift:, :] == 0), "rows without a target get no gradient"


def test_shift_with_more_leading_dimensions():
    e, c, t, _ = problem(lead=(2, 3, 7), seed=5)
    check(e, c, t, shift=2, reduction="none")
    check(e, c, t, shift=True)


@pytest.mark.parametrize("mode", ["default", "kahan", "kahan-full-e", "kahan-full-c", "exact",
                                  "cce", "cce_kahan_full_c", "cce_exact"])
def test_modes(mode):
    e, c, t, b = problem(bias=True, seed=6)
    loss, lse, g = cs.linear_cross_entropy(e, c, t, bias=b, mode=mode, return_lse=True, return_grads=True,
                                           label_smoothing=0.2, softcap=4.0, z_loss=1e-3, weight=weights(301))
    r = materialized(e, c, t, bias=b, label_smoothing=0.2, softcap=4.0, z_loss=1e-3, weight=weights(301))
    exact = mode in ("exact", "cce_exact")
    assert g.e.dtype == (np.float64 if exact else np.float32)
    assert isinstance(loss, np.float64 if exact else np.float32)
    gb = dict(atol=1e-12, rtol=1e-10) if exact else GRAD
    assert_close(g.e, r["dE"], **gb, what=f"{mode} dE")
    assert_close(g.c, r["dC"], **gb, what=f"{mode} dC")
    assert_close(g.bias, r["dBias"], **gb, what=f"{mode} dBias")


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_half_precision_inputs(dtype):
    if dtype is None:
        pytest.skip("ml_dtypes not installed (bfloat16 arrays)")
    e, c, t, b = problem(bias=True, seed=7, dtype=dtype)
    check(e, c, t, b, label_smoothing=0.1, weight=weights(301), filter_eps=None)
    loss, g = cs.linear_cross_entropy(e, c, t, bias=b, return_grads=True, grad_dtype="input")
    assert g.e.dtype == dtype and g.c.dtype == dtype and g.bias.dtype == dtype
    r = materialized(e, c, t, bias=b)
    # Rounded to the storage type on the way out: within its half ulp of the Float32 result.
    rel = 2.0**-8 if dtype == BF16 else 2.0**-11
    assert_close(g.e, r["dE"], atol=1e-6, rtol=rel, what="dE in storage type")
    # Mixed storage types: E float32, C bfloat16.
    e32 = e.astype(np.float32)
    check(e32, c, t, b, filter_eps=None)


def test_input_dtype_gradients_repeat_with_smoothing():
    """Gradients in bf16 call after call with label smoothing, where the engine adds the
    smoothing term to every dC row after its sweep: each call equals the float32 gradients
    rounded to bf16 (the library's float32 scratch for dC is converted and zeroed again row
    by row; a row left out of that would carry into the next call)."""
    if BF16 is None:
        pytest.skip("ml_dtypes not installed (bfloat16 arrays)")
    rng = np.random.default_rng(1)
    n, d, v = 200, 32, 3001
    e = (rng.standard_normal((n, d)) * 2).astype(BF16)
    c = (rng.standard_normal((v, d)) * 0.5).astype(BF16)
    c[:, -1] = (-1.5 * np.log(np.arange(1, v + 1))).astype(BF16)   # a frequency prior: filtering
    e[:, -1] = 1
    t = rng.integers(0, 50, n)
    b = (rng.standard_normal(v) * 0.1).astype(BF16)
    run = (lambda dt: cs.linear_cross_entropy(e, c, t, b, label_smoothing=0.1, return_grads=True, grad_dtype=dt)[1])
    g32 = run(None)
    for call in range(3):
        g = run("input")
        for name in ("e", "c", "bias"):
            got, want = getattr(g, name), getattr(g32, name).astype(BF16)
            assert got.dtype == BF16
            assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), f"call {call}: {name}"


def test_degenerate_shapes():
    for n, d, v in [(1, 1, 301), (37, 19, 1), (1, 1, 1), (5, 33, 17)]:
        e, c, t, _ = problem(n=n, d=d, v=v, seed=n + v, ignore_fraction=0)
        check(e, c, t)


def test_all_targets_ignored():
    e, c, _, _ = problem(n=8, d=5, v=11)
    t = np.full(8, -100)
    loss, g = cs.linear_cross_entropy(e, c, t, return_grads=True)
    assert np.isnan(loss)
    assert not g.e.any() and not g.c.any()
    assert cs.linear_cross_entropy(e, c, t, reduction="sum") == 0


def test_reference_is_float64_exact_and_shaped_like_cce_reference():
    e, c, t, b = problem(bias=True, lead=(3, 6), seed=8)
    r = cs.reference(e, c, t, b, shift=1, reduction="none", label_smoothing=0.1, weight=weights(301))
    m = materialized(e, c, t, bias=b, shift=1, reduction="none", label_smoothing=0.1, weight=weights(301))
    assert set(r) == {"loss", "lse", "dE", "dC", "dBias"}
    assert all(x.dtype == np.float64 for x in r.values())
    assert r["loss"].shape == (3, 6) and r["lse"].shape == (3, 6)
    assert np.all(r["loss"][:, 0] == 0) and np.all(np.isnan(r["lse"][:, 0]))
    assert_close(r["loss"][:, 1:], m["loss"], atol=1e-12, rtol=1e-12, what="loss")
    assert_close(r["dE"], m["dE"], atol=1e-12, rtol=1e-10, what="dE")
    assert_close(r["dC"], m["dC"], atol=1e-12, rtol=1e-10, what="dC")
    assert_close(r["dBias"], m["dBias"], atol=1e-12, rtol=1e-10, what="dBias")
    mean = cs.reference(e, c, t, b)
    assert mean["loss"].shape == ()


def test_threads_give_identical_bits():
    e, c, t, b = problem(n=200, d=24, v=700, bias=True, seed=9)
    runs = [cs.linear_cross_entropy(e, c, t, bias=b, threads=k, return_grads=True, softcap=8.0) for k in (1, 2, 3)]
    for loss, g in runs[1:]:
        assert loss == runs[0][0]
        assert np.array_equal(g.e, runs[0][1].e) and np.array_equal(g.c, runs[0][1].c)


def test_non_contiguous_inputs():
    e, c, t, _ = problem(seed=10)
    big = np.zeros((c.shape[0], c.shape[1] * 2), dtype=np.float32)
    big[:, ::2] = c
    strided = big[:, ::2]
    assert not strided.flags.c_contiguous
    assert cs.linear_cross_entropy(e, strided, t) == cs.linear_cross_entropy(e, c, t)
    with pytest.raises(ValueError, match="not C-contiguous"):
        cs.linear_cross_entropy(e, strided, t, allow_copy=False)


def bad(exc, match, *args, **kw):
    with pytest.raises(exc, match=match):
        cs.linear_cross_entropy(*args, **kw)


def test_bad_input_raises_with_the_engine_message():
    e, c, t, b = problem(n=6, d=4, v=9, ignore_fraction=0, bias=True)
    bad(TypeError, "float32, float16 or bfloat16", e.astype(np.float64), c, t)
    bad(TypeError, "targets must be integers", e, c, t.astype(np.float32))
    bad(TypeError, "numpy array", e.tolist(), c, t)
    bad(ValueError, r"invalid shape: embeddings have D = 4 but the classifier \(9, 3\)", e, c[:, :3], t)
    bad(ValueError, r"targets have shape \(5,\)", e, c, t[:5])
    bad(ValueError, r"bias must be \(V\)", e, c, t, bias=b[:8])
    bad(ValueError, r"weight must be \(V\)", e, c, t, weight=np.ones(8))
    t2 = t.copy(); t2[2] = 9
    bad(ValueError, r"target out of range: targets\[2\] = 9 is outside \[0, 9\)", e, c, t2)
    bad(ValueError, "empty input", e[:0], c, t[:0])
    bad(ValueError, "labelSmoothing must be in", e, c, t, label_smoothing=1.5)
    bad(ValueError, "softcap must be finite and > 0", e, c, t, softcap=-1.0)
    bad(ValueError, "softcap must be finite and > 0", e, c, t, softcap=0)
    bad(ValueError, "zLoss must be finite", e, c, t, z_loss=-1.0)
    bad(ValueError, "shift must be >= 0", e, c, t, shift=-1)
    bad(ValueError, "filter epsilon must be finite", e, c, t, filter_eps=-1.0)
    bad(ValueError, "filter_eps must be 'auto', None", e, c, t, filter_eps="high")
    bad(ValueError, "reduction must be", e, c, t, reduction="avg")
    bad(ValueError, "mode must be one of", e, c, t, mode="fast")
    bad(ValueError, "threads must be >= 1", e, c, t, threads=0)
    bad(ValueError, "threads must be >= 1", e, c, t, threads=-2)
    bad(ValueError, "savedLogitsPerRow must be in 0...65536", e, c, t, saved_logits_per_row=70000)
    w = np.ones(9, np.float32); w[4] = np.nan
    bad(ValueError, r"non-finite value: classWeights\[4\]", e, c, t, weight=w)
    bad(ValueError, "classWeights must be >= 0", e, c, t, weight=-np.ones(9))
    e2 = e.copy(); e2[1, 2] = np.inf
    bad(ValueError, r"non-finite value: embeddings\[6\]", e2, c, t, check_finite=True)
    bad(ValueError, "reduction none needs a scalar|shape", e, c, t, reduction="none", return_grads=True, grad_output=1.0)
    bad(ValueError, "needs a scalar", e, c, t, return_grads=True, grad_output=np.ones(6))
    with pytest.raises(cs.CCEValueError) as info:
        cs.linear_cross_entropy(e, c, t2)
    assert info.value.status == 6  # CCE_CPU_ERR_TARGET


def test_missing_library_is_a_runtime_error(tmp_path):
    """With no library to load: RuntimeError naming where it looked (in a fresh interpreter,
    the package copied away from the checkout so that no build folder is found)."""
    import shutil

    pkg = tmp_path / "cce_swift"
    shutil.copytree(os.path.dirname(cs.__file__), pkg, ignore=shutil.ignore_patterns("*.so", "*.dylib", "__pycache__"))
    code = ("import numpy as np, cce_swift as cs\n"
            "try:\n    cs.linear_cross_entropy(np.ones((2, 2), np.float32), np.ones((3, 2), np.float32), np.zeros(2, int))\n"
            "except RuntimeError as e:\n    print('RuntimeError:', e)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CCE_CPU_LIBRARY=str(tmp_path / "nowhere.so"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RuntimeError: cannot load the CPU engine's library" in out.stdout
    assert "nowhere.so: no such file" in out.stdout


def test_older_library_is_refused_with_its_abi_version(tmp_path):
    """A library of an older C ABI (version 2: no _f64 entry points) is refused with a message
    naming the versions, not an undefined-symbol error (a stand-in library in a fresh
    interpreter, the package copied away from the checkout as above)."""
    import shutil

    pkg = tmp_path / "cce_swift"
    shutil.copytree(os.path.dirname(cs.__file__), pkg, ignore=shutil.ignore_patterns("*.so", "*.dylib", "__pycache__"))
    (tmp_path / "old.so").write_bytes(b"")
    code = ("import ctypes, numpy as np\n"
            "class F:\n    def __init__(self, v=0): self.v = v\n    def __call__(self, *a): return self.v\n"
            "class Old:\n    def __init__(self, path):\n"
            "        for n in ('cce_cpu_last_error', 'cce_cpu_default_options', 'cce_cpu_forward', 'cce_cpu_backward',\n"
            "                  'cce_cpu_state_free', 'cce_cpu_loss_and_gradients'):\n            setattr(self, n, F())\n"
            "        self.cce_cpu_abi_version = F(2)\n"
            "ctypes.CDLL = Old\n"
            "import cce_swift as cs\n"
            "try:\n    cs.linear_cross_entropy(np.ones((2, 2), np.float32), np.ones((3, 2), np.float32), np.zeros(2, int))\n"
            "except RuntimeError as e:\n    print('RuntimeError:', e)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CCE_CPU_LIBRARY=str(tmp_path / "old.so"))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "old.so: ABI version 2, this binding needs 3" in out.stdout, out.stdout


def test_weighted_mean_divides_by_the_weights_of_the_targets():
    e, c, t, _ = problem(n=20, d=6, v=13, seed=11, ignore_fraction=0.2)
    w = weights(13)
    per_token = cs.linear_cross_entropy(e, c, t, weight=w, reduction="none", mode="exact")
    mean = cs.linear_cross_entropy(e, c, t, weight=w, mode="exact")
    active = t != -100
    assert mean == pytest.approx(per_token.sum() / w[t[active]].astype(np.float64).sum(), rel=1e-14)
    plain = cs.linear_cross_entropy(e, c, t, reduction="none", mode="exact")
    assert np.allclose(per_token[active], w[t[active]] * plain[active], rtol=1e-13, atol=0)
