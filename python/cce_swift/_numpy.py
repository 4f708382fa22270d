"""The NumPy path: arrays in, loss (and on request LSE and gradients) out."""
from __future__ import annotations

import ctypes
from typing import NamedTuple

import numpy as np

from . import _core, _lib

try:  # bfloat16 arrays come from ml_dtypes.
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    ml_dtypes = None
    BFLOAT16 = None


class Gradients(NamedTuple):
    """Gradients of the reduced loss with respect to e, c and bias (None without a bias)."""

    e: np.ndarray
    c: np.ndarray
    bias: np.ndarray | None


def dtype_code(dt: np.dtype, name: str) -> int:
    dt = np.dtype(dt)
    if dt == np.float32:
        return _lib.F32
    if dt == np.float16:
        return _lib.F16
    if BFLOAT16 is not None and dt == BFLOAT16:
        return _lib.BF16
    raise TypeError(f"{name} has dtype {dt}; the engine stores float32, float16 or bfloat16 (ml_dtypes.bfloat16)")


def output_code(dt: np.dtype, name: str) -> int:
    dt = np.dtype(dt)
    if dt == np.float64:
        return _lib.F64
    return dtype_code(dt, name)


def as_input(x, name: str, allow_copy: bool) -> np.ndarray:
    """x as a C-contiguous array of an engine storage type (no copy when it already is one)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    dtype_code(x.dtype, name)
    if not x.flags.c_contiguous or not x.flags.aligned:
        if not allow_copy:
            raise _lib.CCEValueError(f"{name} is not C-contiguous and allow_copy is False", 1)
        x = np.ascontiguousarray(x)
    return x


def as_targets(t) -> np.ndarray:
    if not isinstance(t, np.ndarray):
        t = np.asarray(t)
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"targets must be integers, got {t.dtype}")
    return np.ascontiguousarray(t, dtype=np.int64)


def as_weight(w) -> np.ndarray | None:
    if w is None:
        return None
    w = np.asarray(w)
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)
            or (BFLOAT16 is not None and w.dtype == BFLOAT16)):
        raise TypeError(f"weight must be floating point, got {w.dtype}")
    return np.ascontiguousarray(w, dtype=np.float32)


def ptr(a: np.ndarray | None):
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def upstream_array(grad_output, lay: _core.Layout, reduction: str) -> np.ndarray | None:
    """grad_output as the C ABI's grad_loss (float64, the _f64 entry points): one value for
    mean/sum, one per target position for none (given in the sliced shape [..., shift:]; the
    first `shift` positions get 0)."""
    if grad_output is None:
        return None
    g = np.asarray(grad_output, dtype=np.float64)
    if reduction != "none":
        if g.size != 1:
            raise _lib.CCEValueError(f"invalid upstream gradient: reduction {reduction} needs a scalar, got shape {g.shape}", 9)
        return np.ascontiguousarray(g.reshape(1))
    if g.shape != lay.sliced_shape:
        raise _lib.CCEValueError(f"invalid upstream gradient: shape {g.shape}, the loss has shape {lay.sliced_shape}", 9)
    full = np.zeros(lay.shape, dtype=np.float64)
    full[..., lay.shift:] = g
    return np.ascontiguousarray(full.reshape(-1))


def run(e, c, targets, bias, weight, *, reduction, shift, mode, return_lse, return_grads, grad_output,
        grad_dtype, allow_copy, **options):
    shift = _core.normalize_shift(shift)
    mode = _core.normalize_mode(mode)
    e = as_input(e, "e", allow_copy)
    c = as_input(c, "c", allow_copy)
    b = None if bias is None else as_input(bias, "bias", allow_copy)
    t = as_targets(targets)
    w = as_weight(weight)
    lay = _core.layout(e.shape, c.shape, t.shape, None if b is None else b.shape, None if w is None else w.shape, shift)
    opt = _core.make_options(reduction=reduction, shift=shift, mode=mode, batch=lay.batch, **options)
    exact = mode == "exact"
    loss = np.full(lay.n if reduction == "none" else 1, np.nan, dtype=np.float64)
    lse = np.full(lay.n, np.nan, dtype=np.float64) if return_lse else None
    e_code, c_code = dtype_code(e.dtype, "e"), dtype_code(c.dtype, "c")
    b_code = 0 if b is None else dtype_code(b.dtype, "bias")
    wp = None if w is None else ctypes.c_void_p(w.ctypes.data)
    grads = None
    if return_grads:
        def out_dtype(x):
            if grad_dtype is None:
                return np.float64 if exact else np.float32
            if isinstance(grad_dtype, str) and grad_dtype == "input":
                return x.dtype
            return np.dtype(grad_dtype)

        dE = np.empty(e.shape, dtype=out_dtype(e))
        dC = np.empty(c.shape, dtype=out_dtype(c))
        dB = None if b is None else np.empty(b.shape, dtype=out_dtype(b))
        g = upstream_array(grad_output, lay, reduction)
        _lib.loss_and_gradients(ptr(e), ptr(c), ptr(b), ptr(t), lay.n, lay.d, lay.v, e_code, c_code, b_code, wp,
                                ctypes.byref(opt), ptr(g), ptr(loss), ptr(lse), ptr(dE), ptr(dC), ptr(dB),
                                output_code(dE.dtype, "grad_dtype"), output_code(dC.dtype, "grad_dtype"),
                                0 if dB is None else output_code(dB.dtype, "grad_dtype"), None)
        grads = Gradients(dE, dC, dB)
    else:
        _lib.forward(ptr(e), ptr(c), ptr(b), ptr(t), lay.n, lay.d, lay.v, e_code, c_code, b_code, wp,
                     ctypes.byref(opt), ptr(loss), ptr(lse), None)
    return outputs(lay, reduction, exact, loss, lse, grads if return_grads else None)


def outputs(lay: _core.Layout, reduction: str, exact: bool, loss: np.ndarray, lse: np.ndarray | None,
            grads: Gradients | None):
    """What linear_cross_entropy returns for NumPy arrays: the loss (float32, float64 in the
    exact mode; per position [..., shift:] for none), then lse (0 where no loss) and the
    gradients when there are."""
    out_type = np.float64 if exact else np.float32
    if reduction == "none":
        loss_out = loss.reshape(lay.shape)[..., lay.shift:].astype(out_type)
    else:
        loss_out = out_type(loss[0])
    result = [loss_out]
    if lse is not None:
        lse = lse.reshape(lay.shape)[..., lay.shift:]
        result.append(np.where(np.isnan(lse), 0.0, lse).astype(out_type))  # 0 where no loss, as apple's
    if grads is not None:
        result.append(grads)
    return result[0] if len(result) == 1 else tuple(result)


def to_numpy(x) -> np.ndarray:
    """A numpy array of x's values (torch tensors included; bfloat16 as ml_dtypes.bfloat16)."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            if BFLOAT16 is None:
                raise TypeError("bfloat16 tensors need ml_dtypes")
            return x.contiguous().view(torch.int16).numpy().view(BFLOAT16)
        return x.numpy()
    return np.asarray(x)


def reference(e, c, targets, bias=None, weight=None, *, ignore_index=-100, softcap=None, reduction="mean",
              shift=0, label_smoothing=0.0, z_loss=0.0, grad_output=None, threads=None) -> dict:
    """Float64 loss, LSE and gradients of the engine's exact mode, as `cce reference` writes
    them: loss (0-d for mean and sum, the targets' shape for none), lse (the targets' shape,
    NaN where a position has no loss), dE, dC, dBias (with a bias); gradients of the reduced
    loss (for none, of the sum unless grad_output is given, in the targets' shape)."""
    e, c, t = to_numpy(e), to_numpy(c), to_numpy(targets)
    b = None if bias is None else to_numpy(bias)
    w = None if weight is None else to_numpy(weight)
    shift = _core.normalize_shift(shift)
    e = as_input(e, "e", True)
    c = as_input(c, "c", True)
    b = None if b is None else as_input(b, "bias", True)
    t = as_targets(t)
    w = as_weight(w)
    lay = _core.layout(e.shape, c.shape, t.shape, None if b is None else b.shape, None if w is None else w.shape, shift)
    opt = _core.make_options(ignore_index=ignore_index, softcap=softcap, reduction=reduction, shift=shift,
                             label_smoothing=label_smoothing, z_loss=z_loss, mode="exact", threads=threads,
                             batch=lay.batch)
    loss = np.full(lay.n if reduction == "none" else 1, np.nan)
    lse = np.full(lay.n, np.nan)
    dE, dC = np.empty(e.shape), np.empty(c.shape)
    dB = None if b is None else np.empty(b.shape)
    g = None
    if grad_output is not None:
        g = np.asarray(grad_output, dtype=np.float64)
        g = np.ascontiguousarray(g.reshape(-1) if reduction == "none" else g.reshape(1))
        if reduction == "none" and g.size != lay.n:
            raise _lib.CCEValueError(f"invalid upstream gradient: {g.size} values for {lay.n} target positions", 9)
    _lib.loss_and_gradients(ptr(e), ptr(c), ptr(b), ptr(t), lay.n, lay.d, lay.v, dtype_code(e.dtype, "e"),
                            dtype_code(c.dtype, "c"), 0 if b is None else dtype_code(b.dtype, "bias"),
                            None if w is None else ctypes.c_void_p(w.ctypes.data), ctypes.byref(opt), ptr(g),
                            ptr(loss), ptr(lse), ptr(dE), ptr(dC), ptr(dB), _lib.F64, _lib.F64, _lib.F64, None)
    out = {"loss": loss.reshape(lay.shape) if reduction == "none" else np.array(loss[0]),
           "lse": lse.reshape(lay.shape), "dE": dE, "dC": dC}
    if dB is not None:
        out["dBias"] = dB
    return out
