"""What the NumPy and PyTorch paths share: argument checking, shapes, the options struct."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from . import _lib


@dataclass
class Layout:
    """How the arrays are laid out for the C ABI: E as N = batch·T rows of D, C as V rows of D,
    targets as N positions; `shape` is the targets' shape and `shift` the pairing offset."""

    n: int
    d: int
    v: int
    batch: int
    shape: tuple
    shift: int

    @property
    def sliced_shape(self) -> tuple:
        """Shape of per-position outputs after apple/ml-cross-entropy's [..., shift:] slice."""
        if self.shift == 0:
            return self.shape
        return self.shape[:-1] + (max(self.shape[-1] - self.shift, 0),)


def shape_text(s) -> str:
    s = tuple(s)
    return f"({s[0]},)" if len(s) == 1 else "(" + ", ".join(str(x) for x in s) + ")"


def layout(e_shape, c_shape, t_shape, b_shape, w_shape, shift) -> Layout:
    """Checks the shapes the C ABI cannot see (it takes N, D, V) and returns the layout.
    Raises CCEValueError with the engine's wording."""
    e_shape, c_shape, t_shape = tuple(e_shape), tuple(c_shape), tuple(t_shape)

    def bad(msg):
        return _lib.CCEValueError("invalid shape: " + msg, 4)

    if len(e_shape) < 2:
        raise bad(f"embeddings must be (..., D), got {shape_text(e_shape)}")
    if len(c_shape) != 2:
        raise bad(f"classifier must be (V, D), got {shape_text(c_shape)}")
    d, v = e_shape[-1], c_shape[0]
    if c_shape[1] != d:
        raise bad(f"embeddings have D = {d} but the classifier {shape_text(c_shape)} has D = {c_shape[1]}")
    if t_shape != e_shape[:-1]:
        raise bad(f"targets have shape {shape_text(t_shape)} but embeddings {shape_text(e_shape)} need "
                  f"{shape_text(e_shape[:-1])}")
    if b_shape is not None and tuple(b_shape) != (v,):
        raise bad(f"bias must be (V) = ({v},), got {shape_text(b_shape)}")
    if w_shape is not None and tuple(w_shape) != (v,):
        raise bad(f"weight must be (V) = ({v},), got {shape_text(w_shape)}")
    n = math.prod(e_shape[:-1])
    batch = 1
    if shift != 0 and len(e_shape) > 2:
        batch = math.prod(e_shape[:-2])
        if batch == 0:
            batch = 1
    return Layout(n=n, d=d, v=v, batch=batch, shape=t_shape, shift=shift)


def normalize_mode(mode: str) -> str:
    m = _lib.MODE_ALIASES.get(mode, mode)
    if m not in _lib.MODES:
        raise _lib.CCEValueError(
            f"invalid option: mode must be one of {', '.join(repr(k) for k in _lib.MODES)} "
            f"(or apple/ml-cross-entropy's {', '.join(repr(k) for k in _lib.MODE_ALIASES if k.startswith('cce'))}), "
            f"got {mode!r}", 8)
    return m


class LinearCrossEntropyImpl(enum.IntEnum):
    """apple/ml-cross-entropy's impl choices, under its names (`impl=` takes a member or its
    name in lower case); apple_options maps each onto this engine's mode and filter."""
    CCE = enum.auto()
    TORCH_COMPILE = enum.auto()
    CCE_KAHAN_FULL_C = enum.auto()
    CCE_KAHAN_FULL_E = enum.auto()
    CCE_EXACT = enum.auto()
    CCE_KAHAN_FULL_C_FULL_E = enum.auto()
    CCE_KAHAN_FULL = enum.auto()


# apple/ml-cross-entropy's impl presets (its CCEPresets) as this engine's (mode, whether the
# preset turns the filter off). cce_exact is this engine's exact mode (Float64 tiles and sums,
# no filter), more accurate than apple's Float32 one.
APPLE_IMPLS = {"cce": None, "cce_kahan": ("kahan", False), "cce_kahan_full_c": ("kahan-full-c", False),
               "cce_kahan_full_e": ("kahan-full-e", False), "cce_kahan_full": ("kahan", True),
               "cce_kahan_full_c_full_e": ("kahan", True), "cce_exact": ("exact", False)}


def apple_options(mode, impl, accum_e_fp32: bool, accum_c_fp32: bool, filter_e_grad: bool, filter_c_grad: bool,
                  filter_eps):
    """(mode, filter_eps) from apple/ml-cross-entropy's impl and accumulation and filter flags,
    or from this package's mode (not both). The engine always accumulates in Float32 (Float64
    in the exact mode), so accum_*_fp32 asks for more: the Kahan-compensated gradients of mode
    "kahan" (both dE and dC). filter_e_grad=False (or filter_c_grad=False) is mode
    "kahan-full-e" ("kahan-full-c"): that gradient unfiltered, compensated; both False is no
    filter. A preset impl overrides the flags, as in apple's."""
    name = impl.name.lower() if hasattr(impl, "name") else impl
    flags = (bool(accum_e_fp32), bool(accum_c_fp32), bool(filter_e_grad), bool(filter_c_grad))
    if mode is not None:
        if name != "cce" or flags != (False, False, True, True):
            raise _lib.CCEValueError("invalid option: pass mode, or apple/ml-cross-entropy's impl, accum_e_fp32, "
                                     "accum_c_fp32, filter_e_grad and filter_c_grad, not both", 8)
        return normalize_mode(mode), filter_eps
    if name not in APPLE_IMPLS:
        other = " (apple's torch.compile path; this package runs its own engine)" if name == "torch_compile" else ""
        raise _lib.CCEValueError(f"invalid option: impl must be one of {', '.join(repr(k) for k in APPLE_IMPLS)}, "
                                 f"got {impl!r}{other}", 8)
    preset = APPLE_IMPLS[name]
    if preset is not None:
        return preset[0], None if preset[1] else filter_eps
    accum_e, accum_c, filter_e, filter_c = flags
    if not filter_e and not filter_c:
        return ("kahan" if accum_e or accum_c else "default"), None
    if not filter_e:
        return "kahan-full-e", filter_eps
    if not filter_c:
        return "kahan-full-c", filter_eps
    return ("kahan" if accum_e or accum_c else "default"), filter_eps


def normalize_shift(shift) -> int:
    if isinstance(shift, bool):
        return int(shift)
    if not isinstance(shift, int) and not (hasattr(shift, "__index__")):
        raise TypeError(f"shift must be an int or a bool, got {type(shift).__name__}")
    return int(shift)


def make_options(*, ignore_index=-100, softcap=None, reduction="mean", shift=0, label_smoothing=0.0,
                 z_loss=0.0, filter_eps="auto", mode="default", filter_correction=True, sort_vocab=True,
                 threads=None, check_finite=False, saved_logits_per_row=None, batch=1) -> _lib.Options:
    """The cce_cpu_options struct for these arguments (the engine validates the values)."""
    o = _lib.default_options()
    o.ignore_index = int(ignore_index)
    if reduction not in _lib.REDUCTIONS:
        raise _lib.CCEValueError(f"invalid option: reduction must be 'mean', 'sum' or 'none', got {reduction!r}", 8)
    o.reduction = _lib.REDUCTIONS[reduction]
    o.shift = int(shift)
    o.batch = int(batch)
    if softcap is not None:
        softcap = float(softcap)
        if softcap == 0:  # 0 would mean "off" in the struct; the Swift API rejects it.
            raise _lib.CCEValueError(f"invalid option: softcap must be finite and > 0 (got {softcap})", 8)
        o.softcap = softcap
    o.label_smoothing = float(label_smoothing)
    o.z_loss = float(z_loss)
    if filter_eps is None:
        o.filter_eps_mode = _lib.EPS_NONE
    elif isinstance(filter_eps, str):
        if filter_eps != "auto":
            raise _lib.CCEValueError(f"invalid option: filter_eps must be 'auto', None or a number >= 0, got {filter_eps!r}", 8)
        o.filter_eps_mode = _lib.EPS_AUTO
    else:
        o.filter_eps_mode = _lib.EPS_VALUE
        o.filter_eps = float(filter_eps)
    o.mode = _lib.MODES[normalize_mode(mode)]
    o.filter_correction = int(bool(filter_correction))
    o.sort_vocab = int(bool(sort_vocab))
    if threads is not None:
        threads = int(threads)
        if threads == 0:  # 0 would mean "every CPU" in the struct; the Swift API rejects it.
            raise _lib.CCEValueError("invalid option: threads must be >= 1 (got 0)", 8)
        o.threads = threads
    o.check_finite = int(bool(check_finite))
    if saved_logits_per_row is not None:  # None: the engine's default
        o.saved_logits_per_row = int(saved_logits_per_row)
    return o
