"""The PyTorch path: a torch.autograd.Function over the CPU engine (CUDA tensors go to the
CUDA library, _cuda.py; while torch.compile traces, the registered operators of _compile.py).

Contiguous float32 / float16 / bfloat16 tensors are handed to the engine by their data
pointers, without a copy. Gradients are written by the engine into tensors of each
parameter's dtype, and those are the tensors autograd gets back. For reduction mean and sum
the fused call computes the gradients in the forward (upstream 1) and the backward scales
them by the upstream gradient when it is not 1; for reduction none the forward keeps the
engine's O(N) state and the backward runs with the per-position upstream gradient.
"""
from __future__ import annotations

import ctypes

import torch

from . import _compile, _core, _lib

DTYPES = {torch.float32: _lib.F32, torch.float16: _lib.F16, torch.bfloat16: _lib.BF16, torch.float64: _lib.F64}


def dtype_code(t: torch.Tensor, name: str) -> int:
    code = DTYPES.get(t.dtype)
    if code is None or code == _lib.F64:
        raise TypeError(f"{name} has dtype {t.dtype}; the engine stores float32, float16 or bfloat16")
    return code


def as_input(t: torch.Tensor | None, name: str, allow_copy: bool) -> torch.Tensor | None:
    """t itself when contiguous (no copy), else a contiguous copy if allowed."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtype_code(t, name)
    if not t.is_contiguous():
        if not allow_copy:
            raise _lib.CCEValueError(f"{name} is not contiguous and allow_copy is False", 1)
        t = t.contiguous()
    return t


def ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def ptrs(*ts):
    return tuple(ptr(t) for t in ts)


def grad_codes(*grads):
    """The C ABI's dtype codes of the gradient buffers (0 for one not asked for)."""
    return tuple(0 if g is None else DTYPES[g.dtype] for g in grads)


class _Call:
    """Everything about one call except the tensors: layout, options, codes."""

    def __init__(self, e, c, bias, targets, weight, shift, mode, reduction, options):
        self.lay = _core.layout(e.shape, c.shape, targets.shape, None if bias is None else bias.shape,
                                None if weight is None else weight.shape, shift)
        self.reduction = reduction
        self.exact = mode == "exact"
        self.opt = _core.make_options(reduction=reduction, shift=shift, mode=mode, batch=self.lay.batch, **options)
        self.codes = (dtype_code(e, "e"), dtype_code(c, "c"), 0 if bias is None else dtype_code(bias, "bias"))
        self.out_dtype = torch.float64 if self.exact else torch.float32

    def loss_buffers(self, return_lse: bool):
        n = self.lay.n
        loss = torch.empty(n if self.reduction == "none" else 1, dtype=torch.float64)
        lse = torch.empty(n, dtype=torch.float64) if return_lse else None
        return loss, lse

    # What LinearCrossEntropyFunction asks of a call (the vocabulary-parallel call, _vocab_parallel.py,
    # answers the same three).
    def forward_only(self, e, c, bias, targets, weight, return_lse, state=False):
        return forward_only(self, e, c, bias, targets, weight, return_lse, state)

    def fused(self, e, c, bias, targets, weight, need, return_lse, upstream=None):
        """loss, lse and (dE, dC, dB) in the inputs' dtypes (None where not in `need`);
        `upstream` as fused's."""
        loss, lse, *grads = fused(self, e, c, bias, targets, weight, need, return_lse, upstream)
        return loss, lse, tuple(grads)

    def backward(self, state, e, c, bias, full, need):
        """(dE, dC, dB) from a forward's state and the per-position upstream gradient `full`."""
        dE = torch.empty_like(e) if need[0] else None
        dC = torch.empty_like(c) if need[1] else None
        dB = torch.empty_like(bias) if need[2] and bias is not None else None
        _lib.backward(state.handle, *ptrs(e, c, bias, full, dE, dC, dB), *grad_codes(dE, dC, dB), None)
        return dE, dC, dB

    def outputs(self, loss, lse):
        lay = self.lay
        if self.reduction == "none":
            out = loss.view(lay.shape)[..., lay.shift:].to(self.out_dtype)
        else:
            out = loss[0].to(self.out_dtype)
        if lse is not None:
            lse = lse.view(lay.shape)[..., lay.shift:]
            lse = torch.nan_to_num(lse, nan=0.0).to(self.out_dtype)  # 0 where no loss, as apple's
        return out, lse


def fused(call: _Call, e, c, bias, targets, weight, need, return_lse=False, upstream=None):
    """The fused call (cce_cpu_loss_and_gradients): loss, lse (when asked) and the gradients
    in `need` = (e, c, bias) flags, each in its input's dtype; `upstream`: the per-position
    upstream gradient of reduction none as a contiguous float64 tensor (None: ones)."""
    loss, lse = call.loss_buffers(return_lse)
    dE = torch.empty_like(e) if need[0] else None
    dC = torch.empty_like(c) if need[1] else None
    dB = torch.empty_like(bias) if need[2] and bias is not None else None
    lay = call.lay
    _lib.loss_and_gradients(*ptrs(e, c, bias, targets), lay.n, lay.d, lay.v, *call.codes, ptr(weight),
                            ctypes.byref(call.opt), ptr(upstream), ptr(loss), ptr(lse), *ptrs(dE, dC, dB),
                            *grad_codes(dE, dC, dB), None)
    return loss, lse, dE, dC, dB


def upstream_rows(lay, grad_loss):
    """Reduction none's upstream gradient at every row (0 at the first `shift` of a sequence),
    float64 and contiguous, as the library's _f64 entry points take it."""
    full = torch.zeros(lay.shape, dtype=torch.float64)
    full[..., lay.shift:] = grad_loss.to(torch.float64)
    return full.contiguous()


def forward_only(call: _Call, e, c, bias, targets, weight, return_lse, state=False):
    loss, lse = call.loss_buffers(return_lse)
    handle = ctypes.c_void_p() if state else None
    lay = call.lay
    _lib.forward(ptr(e), ptr(c), ptr(bias), ptr(targets), lay.n, lay.d, lay.v, *call.codes, ptr(weight),
                 ctypes.byref(call.opt), ptr(loss), ptr(lse), None if handle is None else ctypes.byref(handle))
    return loss, lse, (_lib.State(handle) if state else None)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """loss (and lse, not differentiable) of the CPU engine, with gradients for e, c and bias:
    through `call`'s forward_only, fused and backward (_Call, or _vocab_parallel._ShardCall)."""

    @staticmethod
    def forward(ctx, e, c, bias, targets, weight, call, return_lse):
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        ctx.call = call
        ctx.set_materialize_grads(False)
        if call.reduction == "none":
            loss, lse, ctx.state = call.forward_only(e, c, bias, targets, weight, return_lse, state=True)
            ctx.save_for_backward(e, c, bias)
            ctx.grads = None
        else:
            loss, lse, ctx.grads = call.fused(e, c, bias, targets, weight, need, return_lse)
        out, lse_out = call.outputs(loss, lse)
        if lse_out is None:
            return out
        ctx.mark_non_differentiable(lse_out)
        return out, lse_out

    @staticmethod
    def backward(ctx, grad_loss, *grad_lse):
        call = ctx.call
        if grad_loss is None:
            return None, None, None, None, None, None, None
        if getattr(ctx, "used", False):
            raise RuntimeError("cce_swift: a second backward through the same loss is not supported "
                               "(the gradients were handed to autograd by the first one); call the loss again")
        ctx.used = True
        if ctx.grads is not None:
            dE, dC, dB = ctx.grads
            ctx.grads = None
            g = float(grad_loss)
            if g != 1.0:
                for x in (dE, dC, dB):
                    if x is not None:
                        x.mul_(g)
            return dE, dC, dB, None, None, None, None
        e, c, bias = ctx.saved_tensors
        full = upstream_rows(call.lay, grad_loss)
        state, ctx.state = ctx.state, None
        dE, dC, dB = call.backward(state, e, c, bias, full, ctx.needs_input_grad[:3])
        del state
        return dE, dC, dB, None, None, None, None


def refuse_dtensors(**tensors) -> None:
    """A torch.distributed DTensor holds only this rank's part of its values, and its data
    pointer is not the whole tensor's: refused by name, as apple/ml-cross-entropy refuses it,
    instead of failing deeper with a message about a NULL input."""
    for name, x in tensors.items():
        if type(x).__name__ == "DTensor":
            raise _lib.CCEValueError(
                f"{name} is a torch.distributed.tensor.DTensor, which the engine cannot read: pass "
                f"{name}.full_tensor(), or split the classifier with vocab_parallel_options", 1)


def autocast_dtype(device_type: str):
    """The dtype torch.autocast gives matrix products on this device type, or None outside an
    autocast region."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except (TypeError, AttributeError):   # torch < 2.4: one function per device type
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
        return None


def autocast(e, c, bias):
    """Inside torch.autocast, e, c and bias as the region's matrix products would take them:
    cast (differentiably, so the gradients come back in the inputs' own dtypes) to its dtype,
    bfloat16 on the CPU by default; float64 tensors are left alone, as autocast leaves them. So
    a model trained under autocast with float32 weights gets the engine's bf16 path (its
    bf16 filter and speed), as apple/ml-cross-entropy does on the GPU. Outside: unchanged."""
    device = next((x.device.type for x in (e, c) if isinstance(x, torch.Tensor)), None)
    dtype = None if device is None else autocast_dtype(device)
    if dtype is None:
        return e, c, bias

    def cast(x):
        eligible = isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype not in (torch.float64, dtype)
        return x.to(dtype) if eligible else x
    return cast(e), cast(c), cast(bias)


def prepared(e, c, targets, bias, weight, shift, mode, allow_copy):
    """The inputs as the C ABI takes them (contiguous; int64 targets, float32 weight) and the
    shift and mode normalized; TypeError or CCEValueError for what cannot be."""
    shift = _core.normalize_shift(shift)
    mode = _core.normalize_mode(mode)
    e = as_input(e, "e", allow_copy)
    c = as_input(c, "c", allow_copy)
    bias = as_input(bias, "bias", allow_copy)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dtype.is_complex:
        raise TypeError(f"targets must be integers, got {targets.dtype}")
    targets = targets.to(torch.int64).contiguous()
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight)
        weight = weight.detach().to(torch.float32).contiguous()
    return e, c, targets, bias, weight, shift, mode


def run(e, c, targets, bias, weight, *, reduction, shift, mode, return_lse, allow_copy, **options):
    if e.is_cuda or c.is_cuda:
        from . import _cuda

        return _cuda.run(e, c, targets, bias, weight, reduction=reduction, shift=shift, mode=mode,
                         return_lse=return_lse, **options)
    for name, x in (("c", c), ("targets", targets), ("bias", bias), ("weight", weight)):
        if isinstance(x, torch.Tensor) and x.device != e.device:
            raise _lib.CCEValueError(f"{name} is on {x.device}, e on {e.device}", 1)
    e, c, targets, bias, weight, shift, mode = prepared(e, c, targets, bias, weight, shift, mode, allow_copy)
    if _compile.compiling():   # torch.compile is tracing: the registered operators (_compile.py)
        return _compile.run(e, c, bias, targets, weight, reduction=reduction, shift=shift, mode=mode,
                            return_lse=return_lse, **options)
    call = _Call(e, c, bias, targets, weight, shift, mode, reduction, options)
    wants_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (e, c, bias))
    if not wants_grad:
        loss, lse, _ = forward_only(call, e, c, bias, targets, weight, return_lse)
        out, lse_out = call.outputs(loss, lse)
        return (out, lse_out) if return_lse else out
    return LinearCrossEntropyFunction.apply(e, c, bias, targets, weight, call, return_lse)


class LinearCrossEntropy(torch.nn.Module):
    """apple/ml-cross-entropy's module: the options at construction (apple's, in its order,
    then this package's keyword-only ones), forward(e, c, targets, bias=None) calls
    linear_cross_entropy with them."""

    def __init__(self, ignore_index=-100, softcap=None, reduction="mean", shift=0, filter_eps="auto",
                 accum_e_fp32=False, accum_c_fp32=False, filter_e_grad=True, filter_c_grad=True, impl="cce",
                 return_lse=False, **options):
        super().__init__()
        self.ignore_index, self.softcap, self.reduction, self.shift = ignore_index, softcap, reduction, shift
        self.filter_eps, self.accum_e_fp32, self.accum_c_fp32 = filter_eps, accum_e_fp32, accum_c_fp32
        self.filter_e_grad, self.filter_c_grad, self.impl, self.return_lse = filter_e_grad, filter_c_grad, impl, return_lse
        self.options = options
        # Bad options fail here, not at the first forward.
        _core.apple_options(options.get("mode"), impl, accum_e_fp32, accum_c_fp32, filter_e_grad, filter_c_grad,
                            filter_eps)

    def forward(self, e, c, targets, bias=None):
        from . import linear_cross_entropy

        return linear_cross_entropy(e, c, targets, bias, ignore_index=self.ignore_index, softcap=self.softcap,
                                    reduction=self.reduction, shift=self.shift, filter_eps=self.filter_eps,
                                    accum_e_fp32=self.accum_e_fp32, accum_c_fp32=self.accum_c_fp32,
                                    filter_e_grad=self.filter_e_grad, filter_c_grad=self.filter_c_grad,
                                    impl=self.impl, return_lse=self.return_lse, **self.options)
