"""Shared helpers: random problems and an independent Float64 materialized reference in NumPy."""
from __future__ import annotations

import numpy as np
import pytest

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None


def problem(n=37, d=19, v=301, seed=1, dtype=np.float32, bias=False, ignore_fraction=0.1, lead=None):
    """E (lead..., D) or (N, D), C (V, D), targets, bias: Gaussian, logits spread over a few units."""
    rng = np.random.default_rng(seed)
    shape = tuple(lead) if lead else (n,)
    e = rng.standard_normal(shape + (d,)).astype(np.float32)
    c = (rng.standard_normal((v, d)) * 2 / np.sqrt(d)).astype(np.float32)
    t = rng.integers(0, v, size=shape)
    t[rng.random(shape) < ignore_fraction] = -100
    b = rng.standard_normal(v).astype(np.float32) if bias else None
    cast = (lambda x: None if x is None else x.astype(dtype))
    return cast(e), cast(c), t.astype(np.int64), cast(b)


def weights(v, seed=5):
    rng = np.random.default_rng(seed)
    w = (rng.random(v) * 2.5).astype(np.float32)
    w[3::11] = 0
    return w


def materialized(e, c, t, bias=None, weight=None, ignore_index=-100, softcap=None, reduction="mean", shift=0,
                 label_smoothing=0.0, z_loss=0.0, grad_output=None):
    """Float64 loss (apple's shapes: [..., shift:] for none), lse (0 where no loss), and the
    gradients of sum(loss * grad_output) with respect to e, c, bias, from the full logits.
    Label smoothing and weight as torch.nn.functional.cross_entropy; z-loss weighted by w_t."""
    e64, c64 = np.asarray(e, np.float64), np.asarray(c, np.float64)
    b64 = None if bias is None else np.asarray(bias, np.float64)
    d = e64.shape[-1]
    v = c64.shape[0]
    T = e64.shape[-2] if e64.ndim >= 2 else 1
    E = e64.reshape(-1, T, d)
    tt = np.asarray(t).reshape(-1, T)
    w = np.ones(v) if weight is None else np.asarray(weight, np.float64)
    a = label_smoothing
    B = E.shape[0]
    out_shape = tuple(np.shape(t)[:-1]) + (T - shift,)
    rows = E[:, : T - shift, :].reshape(-1, d) if shift else E.reshape(-1, d)
    tg = tt[:, shift:].reshape(-1)
    y = rows @ c64.T + (0 if b64 is None else b64)
    z = softcap * np.tanh(y / softcap) if softcap else y
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    active = tg != ignore_index
    ti = np.where(active, tg, 0)
    wt = np.where(active, w[ti], 0.0)
    zt = z[np.arange(len(tg)), ti]
    loss = wt * ((1 - a) * (lse - zt) + z_loss * lse**2) + active * (a / v) * (w.sum() * lse - (z * w).sum(axis=1))
    if reduction == "none":
        g = np.ones(len(tg)) if grad_output is None else np.asarray(grad_output, np.float64).reshape(-1)
        out = loss.reshape(out_shape)
    else:
        g0 = 1.0 if grad_output is None else float(grad_output)
        div = wt.sum() if reduction == "mean" else 1.0
        out = loss.sum() / div if (reduction != "mean" or div > 0) else np.nan
        g = np.full(len(tg), g0 / div if (reduction != "mean" or div > 0) else 0.0)
    p = np.exp(z - lse[:, None])
    coef = wt * (1 - a + 2 * z_loss * lse) + active * a * w.sum() / v
    dz = coef[:, None] * p - active[:, None] * (a / v) * w[None, :]
    dz[np.arange(len(tg)), ti] -= (1 - a) * wt
    if softcap:
        dz *= 1 - (z / softcap) ** 2
    dy = dz * g[:, None]
    dRows = dy @ c64
    dE = np.zeros_like(E)
    if shift:
        dE[:, : T - shift, :] = dRows.reshape(B, T - shift, d)
    else:
        dE = dRows.reshape(B, T, d)
    lse_out = np.where(active, lse, 0.0).reshape(out_shape)
    return {"loss": out, "lse": lse_out, "dE": dE.reshape(np.shape(e)), "dC": dy.T @ rows,
            "dBias": None if bias is None else dy.sum(axis=0)}


def assert_close(actual, expected, atol, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = np.nanmax(np.abs(expected)) if np.any(~np.isnan(expected)) else 0.0  # all NaN: the mean of no token
    err = np.abs(actual - expected)
    both_nan = np.isnan(actual) & np.isnan(expected)
    err = np.where(both_nan, 0.0, err)
    worst = np.nanmax(np.where(np.isnan(err), np.inf, err)) if err.size else 0.0
    budget = atol + rtol * scale
    assert worst <= budget, f"{what}: max error {worst:.3e} > budget {budget:.3e}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
