"""CUDA tensors through the project's CUDA library (cuda/, libcce_cuda.so, ABI cuda/cce_cuda.h):
cce_forward in the autograd forward, cce_backward in the backward, on the current stream, with
workspaces allocated by torch.

Found through $CCE_CUDA_LIBRARY (as the Swift tool finds it), then libcce_cuda.so beside this
file, then cuda/libcce_cuda.so of the checkout this file sits in. Per-class weights go through
cce_forward_weighted / cce_backward_weighted (checked here first: a vector of V finite values
>= 0, as the CPU engine requires; a library built before those entry points raises
RuntimeError). What the CUDA library does not have raises ValueError: modes other than
"default", E / C / bias of different dtypes, filter_correction=False (the GPU always adds its
first-order estimate), check_finite. D that is not a multiple of 4 (float32) or 8 (16-bit
types), which the library refuses, is padded with zero columns (a copy of E and C).
ε is passed resolved (auto: 2^-28 / 2^-15 / 2^-12 by dtype; None: 0, no filtering), which the
current and the announced cce_options.filter_eps both read the same way.

Not tested on this repository's CI machines (no GPU): see Docs/PYTHON.md for the command that
checks it on a GPU machine.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import torch

from . import _core, _lib

DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
AUTO_EPS = {torch.float32: 2.0**-28, torch.float16: 2.0**-15, torch.bfloat16: 2.0**-12}


class Options(ctypes.Structure):
    """cce_options of cce_cuda.h (56 bytes)."""

    _fields_ = [
        ("ignore_index", ctypes.c_int64),
        ("reduction", ctypes.c_int32),
        ("shift", ctypes.c_int32),
        ("batch", ctypes.c_int64),
        ("softcap", ctypes.c_float),
        ("label_smoothing", ctypes.c_float),
        ("z_loss", ctypes.c_float),
        ("filter_eps", ctypes.c_float),
        ("sort_vocab", ctypes.c_int32),
        ("lean_memory", ctypes.c_int32),
        ("dc_chunk_rows", ctypes.c_int64),
    ]


assert ctypes.sizeof(Options) == 56

_lib_cuda = None
_lock = threading.Lock()


def library() -> ctypes.CDLL:
    global _lib_cuda
    if _lib_cuda is not None:
        return _lib_cuda
    with _lock:
        if _lib_cuda is not None:
            return _lib_cuda
        here = Path(__file__).resolve().parent
        candidates = [Path(p) for p in [os.environ.get("CCE_CUDA_LIBRARY")] if p]
        candidates += [here / "libcce_cuda.so", here.parent.parent / "cuda" / "libcce_cuda.so"]
        reasons = []
        for path in candidates:
            if not path.exists():
                reasons.append(f"{path}: no such file")
                continue
            try:
                L = ctypes.CDLL(str(path))
            except OSError as e:
                reasons.append(f"{path}: {e}")
                continue
            vp, i64, sz, op = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.POINTER(Options)
            L.cce_last_error.restype = ctypes.c_char_p
            L.cce_default_options.argtypes = [op]
            L.cce_forward_workspace_size.restype = sz
            L.cce_forward_workspace_size.argtypes = [i64, i64, i64, ctypes.c_int, op]
            L.cce_forward.restype = ctypes.c_int
            L.cce_forward.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, op, vp, vp, vp, sz, vp]
            L.cce_backward_workspace_size.restype = sz
            L.cce_backward_workspace_size.argtypes = [i64, i64, i64, ctypes.c_int, op, ctypes.c_int, ctypes.c_int,
                                                      ctypes.c_int]
            L.cce_backward.restype = ctypes.c_int
            L.cce_backward.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, op, vp, vp, vp, vp, vp, vp, sz,
                                       ctypes.POINTER(ctypes.c_int64), vp]
            # per-class weights (cce_cuda.h: cce_forward_weighted / cce_backward_weighted), when present
            L.has_weighted = hasattr(L, "cce_forward_weighted") and hasattr(L, "cce_backward_weighted")
            if L.has_weighted:
                L.cce_forward_weighted.restype = ctypes.c_int
                L.cce_forward_weighted.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, vp, op, vp, vp, vp,
                                                   sz, vp]
                L.cce_backward_weighted.restype = ctypes.c_int
                L.cce_backward_weighted.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, vp, op, vp, vp, vp,
                                                    vp, vp, vp, sz, ctypes.POINTER(ctypes.c_int64), vp]
            L.path = str(path)
            _lib_cuda = L
            return L
        raise _lib.CCERuntimeError("CUDA tensors need the CUDA library (build it with cuda/build.sh and set "
                                   "CCE_CUDA_LIBRARY): " + "; ".join(reasons), 11)


def _check(rc: int) -> None:
    if rc != 0:
        msg = (library().cce_last_error() or b"").decode("utf-8", "replace")
        if rc == 1:
            raise _lib.CCEValueError(f"CUDA engine: {msg}", 1)
        raise _lib.CCERuntimeError(f"CUDA engine (status {rc}): {msg}", 11)


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


class _Call:
    def __init__(self, e, c, bias, targets, shift, reduction, *, ignore_index, softcap, label_smoothing, z_loss,
                 filter_eps, sort_vocab):
        self.lay = _core.layout(e.shape, c.shape, targets.shape, None if bias is None else bias.shape, None, shift)
        self.reduction = reduction
        self.dtype = DTYPES[e.dtype]
        self.ignore_index = ignore_index
        o = Options()
        library().cce_default_options(ctypes.byref(o))
        if reduction not in _lib.REDUCTIONS:
            raise _lib.CCEValueError(f"invalid option: reduction must be 'mean', 'sum' or 'none', got {reduction!r}", 8)
        o.ignore_index, o.reduction, o.shift, o.batch = int(ignore_index), _lib.REDUCTIONS[reduction], shift, self.lay.batch
        if softcap is not None and not float(softcap) > 0:
            raise _lib.CCEValueError(f"invalid option: softcap must be finite and > 0 (got {softcap})", 8)
        o.softcap = 0.0 if softcap is None else float(softcap)
        o.label_smoothing, o.z_loss = float(label_smoothing), float(z_loss)
        if filter_eps is None:
            eps = 0.0
        elif isinstance(filter_eps, str):
            if filter_eps != "auto":
                raise _lib.CCEValueError(f"invalid option: filter_eps must be 'auto', None or a number >= 0, got {filter_eps!r}", 8)
            eps = AUTO_EPS[e.dtype]
        else:
            eps = float(filter_eps)
            if not eps >= 0:
                raise _lib.CCEValueError(f"invalid option: filter epsilon must be finite and >= 0 (got {eps})", 8)
        o.filter_eps = eps
        o.sort_vocab = int(bool(sort_vocab))
        self.opt = o


def outputs(lay, reduction, ignore_index, loss_rows, lse_rows, targets):
    """The library's per-row loss (or the reduced one) and lse as the caller's positions: row j of a
    sequence holds the value of target j + shift; lse 0 at ignored positions."""
    keep = lay.shape[-1] - lay.shift

    def rows_to_positions(x):
        return x.view(lay.shape)[..., :keep]

    loss = rows_to_positions(loss_rows) if reduction == "none" else loss_rows[0]
    lse = None
    if lse_rows is not None:
        lse = torch.where(targets[..., lay.shift:] != ignore_index, rows_to_positions(lse_rows), 0.0)
    return loss, lse


def forward(call, e, c, bias, targets, weight):
    """cce_forward (or its weighted twin): the loss rows (N, or 1 when reduced) and the lse rows (N), float32."""
    lay = call.lay
    lib = library()
    ws = torch.empty(lib.cce_forward_workspace_size(lay.n, lay.d, lay.v, call.dtype, ctypes.byref(call.opt)),
                     dtype=torch.uint8, device=e.device)
    loss = torch.empty(lay.n if call.reduction == "none" else 1, dtype=torch.float32, device=e.device)
    lse = torch.empty(lay.n, dtype=torch.float32, device=e.device)
    flat = targets.reshape(-1)
    if weight is None:
        _check(lib.cce_forward(_ptr(e), _ptr(c), _ptr(bias), _ptr(flat), lay.n, lay.d, lay.v, call.dtype,
                               ctypes.byref(call.opt), _ptr(loss), _ptr(lse), _ptr(ws), ws.numel(), _stream()))
    else:
        _check(lib.cce_forward_weighted(_ptr(e), _ptr(c), _ptr(bias), _ptr(flat), lay.n, lay.d, lay.v,
                                        call.dtype, _ptr(weight), ctypes.byref(call.opt), _ptr(loss), _ptr(lse),
                                        _ptr(ws), ws.numel(), _stream()))
    return loss, lse


def upstream(lay, reduction, grad_loss, device):
    """The upstream gradient as the library takes it: one value per row for reduction none (zeros
    on the rows that hold no position), else one value."""
    if reduction == "none":
        g = torch.zeros(lay.shape, dtype=torch.float32, device=device)
        g[..., : lay.shape[-1] - lay.shift] = grad_loss.to(torch.float32)
        return g.reshape(-1).contiguous()
    return grad_loss.reshape(1).to(torch.float32).contiguous()


def backward(call, e, c, bias, targets, weight, lse, g, need_e, need_c, need_b):
    """cce_backward (or its weighted twin) for upstream g (see upstream): dE, dC, dB, None where not asked."""
    lay = call.lay
    lib = library()
    need_b = need_b and bias is not None
    ws = torch.empty(lib.cce_backward_workspace_size(lay.n, lay.d, lay.v, call.dtype, ctypes.byref(call.opt),
                                                     int(need_e), int(need_c), int(need_b)),
                     dtype=torch.uint8, device=e.device)
    dE = torch.empty_like(e) if need_e else None
    dC = torch.empty_like(c) if need_c else None
    dB = torch.empty_like(bias) if need_b else None
    flat = targets.reshape(-1)
    if weight is None:
        _check(lib.cce_backward(_ptr(e), _ptr(c), _ptr(bias), _ptr(flat), lay.n, lay.d, lay.v, call.dtype,
                                ctypes.byref(call.opt), _ptr(lse), _ptr(g), _ptr(dE), _ptr(dC), _ptr(dB),
                                _ptr(ws), ws.numel(), None, _stream()))
    else:
        _check(lib.cce_backward_weighted(_ptr(e), _ptr(c), _ptr(bias), _ptr(flat), lay.n, lay.d, lay.v,
                                         call.dtype, _ptr(weight), ctypes.byref(call.opt), _ptr(lse), _ptr(g),
                                         _ptr(dE), _ptr(dC), _ptr(dB), _ptr(ws), ws.numel(), None, _stream()))
    return dE, dC, dB


class CudaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e, c, bias, targets, weight, call, return_lse):
        loss, lse = forward(call, e, c, bias, targets, weight)
        ctx.call = call
        ctx.save_for_backward(e, c, bias, targets, lse, weight)
        out, lse_out = outputs(call.lay, call.reduction, call.ignore_index, loss, lse if return_lse else None, targets)
        if lse_out is None:
            return out
        ctx.mark_non_differentiable(lse_out)
        return out, lse_out

    @staticmethod
    def backward(ctx, grad_loss, *grad_lse):
        call = ctx.call
        e, c, bias, targets, lse, weight = ctx.saved_tensors
        g = upstream(call.lay, call.reduction, grad_loss, e.device)
        dE, dC, dB = backward(call, e, c, bias, targets, weight, lse, g, *ctx.needs_input_grad[:3])
        return dE, dC, dB, None, None, None, None


def run(e, c, targets, bias, weight, *, reduction, shift, mode, return_lse, ignore_index=-100, softcap=None,
        label_smoothing=0.0, z_loss=0.0, filter_eps="auto", filter_correction=True, sort_vocab=True, threads=None,
        check_finite=False, saved_logits_per_row=None):
    def unsupported(what):
        raise _lib.CCEValueError(f"the CUDA library has no {what}; use CPU tensors for it", 8)

    if _core.normalize_mode(mode) != "default":
        unsupported(f"mode {mode!r} (it accumulates in float32 only)")
    if not filter_correction:
        unsupported("filter_correction=False (it always adds the first-order estimate of skipped tiles)")
    if check_finite:
        unsupported("check_finite")
    if saved_logits_per_row is not None:
        unsupported("saved_logits_per_row (its backward is a separate call)")
    for name, x in (("c", c), ("targets", targets), ("bias", bias), ("weight", weight)):
        if isinstance(x, torch.Tensor) and x.device != e.device:
            raise _lib.CCEValueError(f"{name} is on {x.device}, e on {e.device}", 1)
    if e.dtype not in DTYPES:
        raise TypeError(f"e has dtype {e.dtype}; the CUDA engine takes float32, float16 or bfloat16")
    for name, x in (("c", c), ("bias", bias)):
        if x is not None and x.dtype != e.dtype:
            raise TypeError(f"the CUDA engine needs e, c and bias in one dtype ({name} is {x.dtype}, e {e.dtype})")
    shift = _core.normalize_shift(shift)
    if e.dim() >= 1 and c.dim() == 2 and e.shape[-1] == c.shape[1]:
        # The library takes D a multiple of 4 (float32) or 8 (16-bit types), for its 16-byte row
        # loads. Zero columns change no logit: pad E and C with them (a copy, through autograd, so
        # the padded columns' gradients are dropped).
        align = 4 if e.dtype == torch.float32 else 8
        pad = -e.shape[-1] % align
        if pad:
            e = torch.nn.functional.pad(e, (0, pad))
            c = torch.nn.functional.pad(c, (0, pad))
    e, c = e.contiguous(), c.contiguous()
    bias = None if bias is None else bias.contiguous()
    targets = targets.to(torch.int64).contiguous()
    from . import _compile

    compiling = _compile.compiling()
    if weight is not None:
        # Its values are looked at on the host: here, or, while torch.compile traces (where that
        # would break the graph), when the operator runs.
        weight = _class_weight(weight, c.shape[0] if c.dim() == 2 else None, e.device, values=not compiling)
    options = dict(ignore_index=ignore_index, softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss,
                   filter_eps=filter_eps, sort_vocab=sort_vocab)
    if compiling:   # torch.compile is tracing: the registered operators (_compile.py)
        return _compile.cuda_run(e, c, bias, targets, weight, reduction=reduction, shift=shift,
                                 return_lse=return_lse, **options)
    call = make_call(e, c, bias, targets, weight, shift, reduction, options)
    return CudaFunction.apply(e, c, bias, targets, weight, call, return_lse)


def make_call(e, c, bias, targets, weight, shift, reduction, options):
    """The call's layout and library options, after the checks that need the library."""
    call = _Call(e, c, bias, targets, shift, reduction, **options)
    if weight is not None:
        if tuple(weight.shape) != (call.lay.v,):
            raise _lib.CCEValueError(f"invalid shape: weight must be (V) = ({call.lay.v},), got "
                                     f"{_core.shape_text(weight.shape)}", 4)
        if not getattr(library(), "has_weighted", False):
            raise _lib.CCERuntimeError(f"the CUDA library {library().path} predates per-class weights (no "
                                       "cce_forward_weighted): rebuild it with cuda/build.sh", 11)
    return call


def _class_weight(weight, v, device, values=True):
    """The per-class weight as the library takes it: float32, contiguous, on e's device, and (with
    `values`) every value finite and >= 0 (checked here, as the CPU engine checks them; this reads
    one flag back from the GPU)."""
    if not isinstance(weight, torch.Tensor):
        weight = torch.as_tensor(weight)
    if weight.dtype.is_complex or weight.dtype == torch.bool:
        raise TypeError(f"weight must be real numbers, got {weight.dtype}")
    w = weight.detach().to(device=device, dtype=torch.float32).contiguous()
    if w.dim() != 1 or (v is not None and w.shape[0] != v):
        raise _lib.CCEValueError(f"invalid shape: weight must be (V) = ({v},), got {_core.shape_text(w.shape)}", 4)
    return check_weight_values(w) if values else w


def check_weight_values(w):
    """w itself, after checking that every value is finite and >= 0."""
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0, 0])
        raise _lib.CCEValueError(f"non-finite value: classWeights[{i}] is NaN or infinite", 7)
    if bool((w < 0).any()):
        i = int((w < 0).nonzero()[0, 0])
        raise _lib.CCEValueError(f"invalid option: classWeights must be >= 0 (classWeights[{i}] = {float(w[i])})", 8)
    return w
